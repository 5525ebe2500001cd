//! The decision: which valid paths a policy lets go, and why.
//!
//! Pure: no file system, no clock. `now` and the size of and space
//! available on the store's filesystem come from the caller, the on-disk facts from
//! [`crate::policy::inputs::gather`].
//!
//! 1. Expire roots: a generation link of a `[[generations]]` profile that
//!    is not the current generation, not among the `keep-newest` highest
//!    numbers, and not younger than `keep-since`; an auto root whose outer
//!    link matches `[auto-roots].match` and is at least `older-than` old.
//!    No other root ever expires.
//! 2. Keep set = closure over the liveness graph (references plus the
//!    keep-* edges) of the remaining roots, the protected paths, and every
//!    path the `[select]` conditions do not match. Delete set = the rest,
//!    which is closed under referrers by construction.
//! 3. Budget: a referrer-closed prefix of the delete set in `order`, see
//!    [`crate::policy::budget::take`]. An expired root whose target the
//!    budget leaves is dropped from the expired roots: it stays this time
//!    (so when `until-free` is already met, no root is removed either).

use std::fmt;

use serde::{Deserialize, Serialize};

use super::budget;
use super::file::{Origin, Policy};
use super::group;
use super::inputs::{PolicyInputs, RootFact};
use crate::db::{origin, Snapshot};
use crate::graph::Graph;
use crate::paths::{PathId, NO_PATH};
use crate::roots::Root;
use crate::store_path::name_of;

/// Which rule let a deleted path go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Reason {
    /// No root reaches it (and it matched `[select]`).
    Unreachable,
    /// Only an expired generation kept it.
    ExpiredGeneration,
    /// Only an expired auto root (and no expired generation) kept it.
    ExpiredAutoRoot,
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Unreachable => "unreachable",
            Reason::ExpiredGeneration => "expired-generation",
            Reason::ExpiredAutoRoot => "expired-auto-root",
        }
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a root was expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Expiry {
    /// Generation `generation` of `profile`, its link `age_secs` old.
    Generation {
        profile: String,
        generation: u64,
        age_secs: i64,
    },
    /// An auto root whose outer link matched `pattern`, `age_secs` old.
    AutoRoot { pattern: String, age_secs: i64 },
}

impl fmt::Display for Expiry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let days = |s: i64| s / 86400;
        match self {
            Expiry::Generation {
                profile,
                generation,
                age_secs,
            } => {
                write!(
                    f,
                    "generation {generation} of {profile}, {} days old",
                    days(*age_secs)
                )
            }
            Expiry::AutoRoot { pattern, age_secs } => {
                write!(
                    f,
                    "auto root matching \"{pattern}\", {} days old",
                    days(*age_secs)
                )
            }
        }
    }
}

/// A root the policy expired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExpiredRoot {
    /// Index into the roots slice.
    pub root: usize,
    /// The root's link (for an auto root, the outer link, e.g. a `result`).
    pub link: String,
    /// The link to remove to let the root go: the generation link, or the
    /// auto root's entry under `gcroots/auto` (never the user's own link).
    pub remove: String,
    pub why: Expiry,
}

/// A number of paths and their narSize sum; adds up with `+=`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tally {
    pub paths: u64,
    pub bytes: u64,
}

impl Tally {
    pub fn add(&mut self, bytes: u64) {
        self.paths += 1;
        self.bytes = self.bytes.saturating_add(bytes);
    }
}

impl std::ops::AddAssign for Tally {
    fn add_assign(&mut self, o: Tally) {
        self.paths += o.paths;
        self.bytes = self.bytes.saturating_add(o.bytes);
    }
}

/// Why each kept path is kept. Each path is counted once, under the first
/// of these that keeps it, in this order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kept {
    /// The closure of the remaining Nix roots.
    pub nix_roots: Tally,
    /// Then the closure of the closure lists' paths.
    pub closure_lists: Tally,
    /// Then the closure of `protect.paths`.
    pub protected_paths: Tally,
    /// Then the closure of the paths matching `protect.names`.
    pub protected_names: Tally,
    /// Then the closure of the build closures of the listed paths
    /// (`protect.build-closures`).
    pub build_closures: Tally,
    /// Then the closure of the paths `[select]` did not match.
    pub unselected: Tally,
    /// Then the closure of the paths the rollback window keeps
    /// (`select.dead-for`).
    pub window: Tally,
    /// Deletable, but left by the budget.
    pub budget: Tally,
}

impl Kept {
    pub fn total(&self) -> Tally {
        let mut t = self.nix_roots;
        for x in [
            self.closure_lists,
            self.protected_paths,
            self.protected_names,
            self.build_closures,
            self.unselected,
            self.window,
            self.budget,
        ] {
            t += x;
        }
        t
    }
}

/// Deleted paths per [`Reason`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ByReason {
    pub unreachable: Tally,
    pub expired_generation: Tally,
    pub expired_auto_root: Tally,
}

impl ByReason {
    pub fn get(&self, r: Reason) -> Tally {
        match r {
            Reason::Unreachable => self.unreachable,
            Reason::ExpiredGeneration => self.expired_generation,
            Reason::ExpiredAutoRoot => self.expired_auto_root,
        }
    }

    fn get_mut(&mut self, r: Reason) -> &mut Tally {
        match r {
            Reason::Unreachable => &mut self.unreachable,
            Reason::ExpiredGeneration => &mut self.expired_generation,
            Reason::ExpiredAutoRoot => &mut self.expired_auto_root,
        }
    }

    pub fn total(&self) -> Tally {
        let mut t = self.unreachable;
        t += self.expired_generation;
        t += self.expired_auto_root;
        t
    }
}

/// How the budget was applied.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BudgetOutcome {
    /// The bytes the budget allowed: `max-freed`, or `until-free` minus the
    /// space available, whichever is smaller.
    pub limit: u64,
    /// `until-free` was already met: nothing is deleted.
    pub already_met: bool,
    /// The delete set before the budget.
    pub candidates: Tally,
}

/// What the rollback window did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct WindowOutcome {
    /// `select.dead-for`, in seconds.
    pub dead_for_secs: u64,
    /// There was no state yet: every deletable path starts its window now.
    pub first_run: bool,
    /// Paths seen deletable now (what the next state records).
    pub tracked: u64,
}

/// The policy's verdict on one snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Decision {
    /// The paths to delete, sorted by id; closed under referrers.
    pub delete: Vec<PathId>,
    /// Parallel to `delete`.
    pub reasons: Vec<Reason>,
    /// Sorted by root index.
    pub expired_roots: Vec<ExpiredRoot>,
    pub kept: Kept,
    pub by_reason: ByReason,
    /// `None` without a budget.
    pub budget: Option<BudgetOutcome>,
    /// With `select.dead-for`: the paths deletable before the window,
    /// `[select]` and the budget (not kept by a remaining root or a
    /// protection), sorted by id; the next dead-since state records them.
    pub dead: Vec<PathId>,
    /// `None` without `select.dead-for`.
    pub window: Option<WindowOutcome>,
    pub warnings: Vec<String>,
}

/// Keep-set categories, in the order they claim paths (0: not kept).
const NIX_ROOTS: u8 = 1;
const CLOSURE_LISTS: u8 = 2;
const PROTECTED_PATHS: u8 = 3;
const PROTECTED_NAMES: u8 = 4;
const BUILD_CLOSURES: u8 = 5;
const UNSELECTED: u8 = 6;
const WINDOW: u8 = 7;

/// Evaluates `policy` on a snapshot.
///
/// `root_ids` are [`crate::roots::resolve`]'s `(root index, id)` pairs;
/// `now` is in Unix seconds; `space` is the store's filesystem as statvfs
/// saw it (needed only for `until-free` and percentages: without it nothing
/// is deleted under those, with a warning; see [`budget::limit`]).
///
/// Invariants: no deleted path is reachable in `graph` from a kept one;
/// with [`Policy::default`] the delete set is exactly the complement of
/// the paths reachable from all roots. Cost: O(n + e) time for the keep set
/// (one labelling DFS) and the reasons, O(n · globs) name matching, plus
/// the budget's O(n log n + e) (building `graph.reversed()` only then);
/// O(n) bytes of labels.
#[allow(clippy::too_many_arguments)]
pub fn evaluate(
    snap: &Snapshot,
    graph: &Graph,
    roots: &[Root],
    root_ids: &[(usize, PathId)],
    policy: &Policy,
    inputs: &PolicyInputs,
    now: i64,
    space: Option<budget::Space>,
) -> Decision {
    let n = snap.len();
    debug_assert_eq!(graph.node_count(), n, "graph and snapshot disagree");
    let mut decision = Decision {
        warnings: inputs.warnings.clone(),
        ..Decision::default()
    };

    // 1. Expired roots.
    let mut expired_gen = vec![false; roots.len()];
    let mut expired_auto = vec![false; roots.len()];
    let newest = newest_auto_roots(roots, policy, inputs, &mut decision.warnings);
    for (i, root) in roots.iter().enumerate() {
        if newest[i] {
            continue;
        }
        if let Some(why) = expiry(
            root,
            inputs.root_facts.get(i).copied().unwrap_or_default(),
            policy,
            inputs,
            now,
        ) {
            match why {
                Expiry::Generation { .. } => expired_gen[i] = true,
                Expiry::AutoRoot { .. } => expired_auto[i] = true,
            }
            let remove = match why {
                Expiry::AutoRoot { .. } => root.via.clone().unwrap_or_else(|| root.link.clone()),
                Expiry::Generation { .. } => root.link.clone(),
            };
            decision.expired_roots.push(ExpiredRoot {
                root: i,
                link: root.link.clone(),
                remove,
                why,
            });
        }
    }
    let expired = |i: usize| {
        expired_gen.get(i).copied().unwrap_or(false)
            || expired_auto.get(i).copied().unwrap_or(false)
    };

    // 2. Keep set, labelled by the first category that claims each path.
    let mut label = vec![0u8; n];
    let remaining: Vec<PathId> = root_ids
        .iter()
        .filter(|&&(i, _)| !expired(i))
        .map(|&(_, id)| id)
        .collect();
    mark(graph, &mut label, &remaining, NIX_ROOTS);
    mark(graph, &mut label, &inputs.closure_list_ids, CLOSURE_LISTS);
    mark(
        graph,
        &mut label,
        &inputs.protected_path_ids,
        PROTECTED_PATHS,
    );
    if !policy.protect.names.is_empty() {
        let named: Vec<PathId> = (0..n as PathId)
            .filter(|&id| {
                label[id as usize] == 0
                    && policy.protect.names.is_match(name_of(snap.paths.get(id)))
            })
            .collect();
        mark(graph, &mut label, &named, PROTECTED_NAMES);
    }
    if policy.protect.build_closures {
        let mut listed = inputs.closure_list_ids.clone();
        listed.extend(&inputs.protected_path_ids);
        mark(
            graph,
            &mut label,
            &build_closure(snap, &listed),
            BUILD_CLOSURES,
        );
    }
    if policy.select.dead_for.is_some() {
        decision.dead = (0..n as PathId)
            .filter(|&id| label[id as usize] == 0)
            .collect();
    }
    let unselected: Vec<PathId> = (0..n as PathId)
        .filter(|&id| label[id as usize] == 0 && !selected(snap, id, policy, now))
        .collect();
    mark(graph, &mut label, &unselected, UNSELECTED);
    if let Some(d) = policy.select.dead_for {
        let w = Window {
            graph,
            root_ids,
            dead_for: secs(d),
            now,
        };
        w.keep(inputs, &mut label, &mut decision);
        w.unexpire(&decision.expired_roots, &mut expired_gen, &mut expired_auto);
    }

    let in_set: Vec<bool> = label.iter().map(|&l| l == 0).collect();
    let candidates: Vec<PathId> = (0..n as PathId).filter(|&id| in_set[id as usize]).collect();

    // 3. Budget.
    let b = &policy.budget;
    decision.delete = match budget::limit(b, space, &mut decision.warnings) {
        None => candidates.clone(),
        Some(budget::Limit {
            bytes: limit,
            already_met,
        }) => {
            let mut outcome = BudgetOutcome {
                limit,
                already_met,
                candidates: Tally::default(),
            };
            for &id in &candidates {
                outcome.candidates.add(snap.nar_size[id as usize]);
            }
            decision.budget = Some(outcome);
            if limit == 0 {
                Vec::new()
            } else {
                budget::take(
                    snap,
                    &graph.reversed(),
                    &in_set,
                    &candidates,
                    b.order,
                    limit,
                )
            }
        }
    };

    // Reasons: reachable within the delete set from an expired generation's
    // target, else from an expired auto root's, else unreachable.
    let mut reason = vec![Reason::Unreachable; n];
    let mut seen = vec![false; n];
    for (flags, r) in [
        (&expired_gen, Reason::ExpiredGeneration),
        (&expired_auto, Reason::ExpiredAutoRoot),
    ] {
        let starts: Vec<PathId> = root_ids
            .iter()
            .filter(|&&(i, id)| flags.get(i).copied().unwrap_or(false) && in_set[id as usize])
            .map(|&(_, id)| id)
            .collect();
        let mut stack = Vec::new();
        for id in starts {
            if !seen[id as usize] {
                seen[id as usize] = true;
                stack.push(id);
            }
        }
        while let Some(u) = stack.pop() {
            reason[u as usize] = r;
            for &v in graph.successors(u) {
                if in_set[v as usize] && !seen[v as usize] {
                    seen[v as usize] = true;
                    stack.push(v);
                }
            }
        }
    }
    decision.reasons = decision
        .delete
        .iter()
        .map(|&id| reason[id as usize])
        .collect();

    // Accounting.
    let mut deleted = vec![false; n];
    for (&id, &r) in decision.delete.iter().zip(&decision.reasons) {
        deleted[id as usize] = true;
        decision
            .by_reason
            .get_mut(r)
            .add(snap.nar_size[id as usize]);
    }
    // Under a budget, a root is expired only when the budget deletes its
    // target: one whose target the budget leaves (or something else keeps)
    // stays this time, so its closure stays whole, and when the budget
    // takes nothing (until-free already met) no root goes either. Nothing
    // taken is reachable from a kept root (taken groups carry all their
    // referrers). O(roots) with a bitmap.
    if decision.budget.is_some() {
        let mut freed = vec![false; roots.len()];
        for &(i, id) in root_ids {
            if i < freed.len() && deleted[id as usize] {
                freed[i] = true;
            }
        }
        decision.expired_roots.retain(|e| freed[e.root]);
    }
    let k = &mut decision.kept;
    for id in 0..n {
        let size = snap.nar_size[id];
        match label[id] {
            NIX_ROOTS => k.nix_roots.add(size),
            CLOSURE_LISTS => k.closure_lists.add(size),
            PROTECTED_PATHS => k.protected_paths.add(size),
            PROTECTED_NAMES => k.protected_names.add(size),
            BUILD_CLOSURES => k.build_closures.add(size),
            UNSELECTED => k.unselected.add(size),
            WINDOW => k.window.add(size),
            _ if !deleted[id] => k.budget.add(size),
            _ => {}
        }
    }
    decision
}

/// The rollback window's part of [`evaluate`].
struct Window<'a> {
    graph: &'a Graph,
    root_ids: &'a [(usize, PathId)],
    dead_for: i64,
    now: i64,
}

impl Window<'_> {
    /// Labels the closure of every dead path whose date (from the state)
    /// is missing or younger than the window, and drops the expired roots
    /// whose target is such a path (a rollback within the window still
    /// finds its generation; the target's closure is kept, by the window or
    /// by an earlier category). O(n + e + r log n).
    fn keep(&self, inputs: &PolicyInputs, label: &mut [u8], decision: &mut Decision) {
        let young = |id: PathId| {
            let since = inputs.dead_since.get(id as usize).copied().flatten();
            self.now.saturating_sub(since.unwrap_or(self.now)) < self.dead_for
        };
        let kept: Vec<PathId> = (decision.dead.iter().copied())
            .filter(|&id| label[id as usize] == 0 && young(id))
            .collect();
        mark(self.graph, label, &kept, WINDOW);
        decision.window = Some(WindowOutcome {
            dead_for_secs: self.dead_for as u64,
            first_run: inputs.dead_since_missing,
            tracked: decision.dead.len() as u64,
        });
        let target: std::collections::HashMap<usize, PathId> =
            self.root_ids.iter().copied().collect();
        let dead = &decision.dead;
        decision.expired_roots.retain(|e| {
            !target
                .get(&e.root)
                .is_some_and(|&t| young(t) && dead.binary_search(&t).is_ok())
        });
    }

    /// Resets the expired-root flags to the roots still expired.
    fn unexpire(&self, expired: &[ExpiredRoot], gen: &mut [bool], auto: &mut [bool]) {
        gen.iter_mut()
            .chain(auto.iter_mut())
            .for_each(|f| *f = false);
        for e in expired {
            match e.why {
                Expiry::Generation { .. } => gen[e.root] = true,
                Expiry::AutoRoot { .. } => auto[e.root] = true,
            }
        }
    }
}

/// Per root, whether `[auto-roots] keep-newest` keeps it: among the
/// newest links of its group (see [`super::group`]). A warning names each
/// link the group-by pattern does not match. O(r log r).
fn newest_auto_roots(
    roots: &[Root],
    policy: &Policy,
    inputs: &PolicyInputs,
    warnings: &mut Vec<String>,
) -> Vec<bool> {
    let Some(rule) = policy.auto_roots.as_ref() else {
        return vec![false; roots.len()];
    };
    let Some(keep) = rule.keep_newest else {
        return vec![false; roots.len()];
    };
    let candidates: Vec<(usize, &str, i64)> = roots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| match inputs.root_facts.get(i) {
            Some(RootFact::AutoRoot { mtime: Some(m) }) if rule.match_.is_match(&r.link) => {
                Some((i, r.link.as_str(), *m))
            }
            _ => None,
        })
        .collect();
    let (kept, unmatched) = group::newest_per_group(&candidates, &rule.group_by, keep, roots.len());
    for link in unmatched {
        warnings.push(format!(
            "{link}: auto-roots.group-by \"{}\" does not match this link; it is a group of its own (kept by keep-newest)",
            rule.group_by.as_str()
        ));
    }
    kept
}

/// The build closures of `toplevels`: each one's valid deriver, that
/// `.drv`'s closure over references (input derivations, sources, the
/// builder), and the valid outputs (`DerivationOutputs`) of every `.drv`
/// in it, sorted. What the next build of the same configuration needs
/// without rebuilding or fetching. O(n + e + o) for o output rows.
pub fn build_closure(snap: &Snapshot, toplevels: &[PathId]) -> Vec<PathId> {
    let n = snap.len();
    let mut seen = vec![false; n];
    let mut stack = Vec::new();
    for &t in toplevels {
        let d = snap.deriver.get(t as usize).copied().unwrap_or(NO_PATH);
        if d != NO_PATH && !seen[d as usize] {
            seen[d as usize] = true;
            stack.push(d);
        }
    }
    while let Some(u) = stack.pop() {
        for &v in snap.references(u) {
            if !seen[v as usize] {
                seen[v as usize] = true;
                stack.push(v);
            }
        }
    }
    let mut out: Vec<PathId> = (0..n as PathId).filter(|&id| seen[id as usize]).collect();
    out.extend(
        (snap.drv_outputs.iter())
            .filter(|&&(drv, _)| seen[drv as usize])
            .map(|&(_, o)| o),
    );
    out.sort_unstable();
    out.dedup();
    out
}

/// Whether the policy expires `root`, and why. O(log g) for a generation's
/// rank among the profile's g generations.
fn expiry(
    root: &Root,
    fact: RootFact,
    policy: &Policy,
    inputs: &PolicyInputs,
    now: i64,
) -> Option<Expiry> {
    match fact {
        RootFact::Plain => None,
        RootFact::Generation {
            profile,
            number,
            mtime,
        } => {
            let rule = policy.generations.get(profile)?;
            let facts = inputs.profiles.get(profile)?;
            let current = facts.current?;
            if number == current {
                return None;
            }
            if let Some(keep) = rule.keep_newest {
                let newer =
                    facts.generations.len() - facts.generations.partition_point(|&g| g <= number);
                if newer < keep as usize {
                    return None;
                }
            }
            let age = now.saturating_sub(mtime);
            if rule.keep_since.is_some_and(|d| age < secs(d)) {
                return None;
            }
            Some(Expiry::Generation {
                profile: facts.profile.display().to_string(),
                generation: number,
                age_secs: age,
            })
        }
        RootFact::AutoRoot { mtime } => {
            let rule = policy.auto_roots.as_ref()?;
            let age = now.saturating_sub(mtime?);
            let pattern = rule.match_.first_match(&root.link)?;
            (age >= secs(rule.older_than)).then(|| Expiry::AutoRoot {
                pattern: pattern.to_string(),
                age_secs: age,
            })
        }
    }
}

/// Whether every `[select]` condition holds for `id`. O(globs).
pub fn selected(snap: &Snapshot, id: PathId, policy: &Policy, now: i64) -> bool {
    let s = &policy.select;
    let i = id as usize;
    if s.origin == Origin::Local && is_substituted(snap.origin[i]) {
        return false;
    }
    if let Some(d) = s.older_than {
        if now.saturating_sub(snap.registration_time[i]) < secs(d) {
            return false;
        }
    }
    if s.names.is_none() && s.exclude_names.is_empty() {
        return true;
    }
    let name = name_of(snap.paths.get(id));
    let wanted = match &s.names {
        Some(g) => g.is_match(name),
        None => true,
    };
    wanted && !s.exclude_names.is_match(name)
}

/// Substituted: carries signatures and was not built here.
fn is_substituted(bits: u8) -> bool {
    bits & origin::SIGNED != 0 && bits & origin::ULTIMATE == 0
}

fn secs(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_secs()).unwrap_or(i64::MAX)
}

/// Labels every unlabelled path reachable from `seeds` (through unlabelled
/// paths) with `category`: an explicit-stack DFS. Run once per category in
/// order, the union of the labels is the closure of all seeds, and each
/// path carries the first category whose closure holds it. O(n + e) over
/// all calls together.
fn mark(graph: &Graph, label: &mut [u8], seeds: &[PathId], category: u8) {
    let mut stack = Vec::new();
    for &s in seeds {
        if label[s as usize] == 0 {
            label[s as usize] = category;
            stack.push(s);
        }
    }
    while let Some(u) = stack.pop() {
        for &v in graph.successors(u) {
            if label[v as usize] == 0 {
                label[v as usize] = category;
                stack.push(v);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use proptest::prelude::*;

    use super::*;
    use crate::db::PathRow;
    use crate::graph::{live_set_parallel, live_set_sequential};
    use crate::policy::budget::Amount;
    use crate::policy::file::{
        AutoRoots, Budget, Generations, Globs, Located, Order, Protect, Select,
    };
    use crate::policy::inputs::ProfileFacts;
    use crate::roots::RootKind;
    use crate::settings::GcSettings;

    const DAY: i64 = 86400;
    const NOW: i64 = 1000 * DAY;
    const PROFILE: &str = "/nix/var/nix/profiles/system";

    /// A basename with a unique hash for each `i`.
    fn base(i: usize, name: &str) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut hash = [b'0'; 32];
        let mut x = i;
        for c in hash.iter_mut().rev() {
            *c = ALPHABET[x % 32];
            x /= 32;
        }
        format!("{}-{name}", std::str::from_utf8(&hash).unwrap())
    }

    fn days(d: i64) -> Duration {
        Duration::from_secs(d as u64 * DAY as u64)
    }

    fn globs(patterns: &[&str]) -> Globs {
        Globs::new(patterns).unwrap()
    }

    /// A hand-built store with roots and gathered facts.
    #[derive(Default)]
    struct Fixture {
        rows: Vec<PathRow>,
        refs: Vec<(PathId, PathId)>,
        roots: Vec<Root>,
        root_ids: Vec<(usize, PathId)>,
        inputs: PolicyInputs,
    }

    impl Fixture {
        /// Adds a path `age` days old; names must be unique.
        fn path(&mut self, name: &str, size: u64, age: i64, origin: u8) -> PathId {
            let id = self.rows.len();
            self.rows.push(PathRow {
                basename: base(id, name),
                nar_size: size,
                registration_time: NOW - age * DAY,
                deriver: None,
                origin,
            });
            id as PathId
        }

        /// A local path, 100 days old, of size 1.
        fn old(&mut self, name: &str) -> PathId {
            self.path(name, 1, 100, 0)
        }

        fn refer(&mut self, from: PathId, to: PathId) {
            self.refs.push((from, to));
        }

        fn derived_from(&mut self, out: PathId, drv: PathId) {
            self.rows[out as usize].deriver = Some(self.rows[drv as usize].basename.clone());
        }

        fn root(
            &mut self,
            id: PathId,
            link: &str,
            kind: RootKind,
            via: Option<&str>,
            fact: RootFact,
        ) -> usize {
            let i = self.roots.len();
            self.roots.push(Root {
                link: link.into(),
                target: format!("/nix/store/{}", self.rows[id as usize].basename),
                kind,
                via: via.map(Into::into),
            });
            self.root_ids.push((i, id));
            self.inputs.root_facts.push(fact);
            i
        }

        fn gcroot(&mut self, id: PathId) -> usize {
            let link = format!("/nix/var/nix/gcroots/r{}", self.roots.len());
            self.root(id, &link, RootKind::Gcroot, None, RootFact::Plain)
        }

        /// Generation `n` of [`PROFILE`], its link `age` days old.
        fn generation(&mut self, id: PathId, n: u64, age: i64) -> usize {
            let link = format!("{PROFILE}-{n}-link");
            let fact = RootFact::Generation {
                profile: 0,
                number: n,
                mtime: NOW - age * DAY,
            };
            self.root(id, &link, RootKind::Profile, None, fact)
        }

        fn run(&self, policy: &Policy, available: Option<u64>) -> (Snapshot, Decision) {
            let snap = Snapshot::from_rows(self.rows.clone(), &self.refs, vec![]);
            let graph = Graph::build(&snap, GcSettings::default());
            let d = evaluate(
                &snap,
                &graph,
                &self.roots,
                &self.root_ids,
                policy,
                &self.inputs,
                NOW,
                available.map(|available| budget::Space {
                    size: 1000,
                    available,
                }),
            );
            assert_eq!(d.delete.len(), d.reasons.len());
            assert!(d.delete.windows(2).all(|w| w[0] < w[1]));
            let mut all = Tally::default();
            snap.nar_size.iter().for_each(|&s| all.add(s));
            let mut accounted = d.kept.total();
            accounted += d.by_reason.total();
            assert_eq!(accounted, all, "sizes not conserved");
            (snap, d)
        }

        /// Names of the deleted paths.
        fn deleted(&self, policy: &Policy) -> Vec<String> {
            self.deleted_with(policy, None)
        }

        fn deleted_with(&self, policy: &Policy, available: Option<u64>) -> Vec<String> {
            let (snap, d) = self.run(policy, available);
            d.delete
                .iter()
                .map(|&id| name_of(snap.paths.get(id)).to_string())
                .collect()
        }
    }

    fn generations_policy(keep_newest: Option<u32>, keep_since: Option<Duration>) -> Policy {
        Policy {
            generations: vec![Generations {
                profile: Located::new(PROFILE.into()),
                keep_newest,
                keep_since,
            }],
            ..Policy::default()
        }
    }

    /// Five generations, `sys-N` with link N days... `10 - N` days old;
    /// generation 3 is current.
    fn five_generations() -> Fixture {
        let mut f = Fixture::default();
        let lib = f.old("lib");
        for n in 1..=5u64 {
            let sys = f.old(&format!("sys-{n}"));
            f.refer(sys, lib);
            f.generation(sys, n, 10 - n as i64);
        }
        f.inputs.profiles = vec![ProfileFacts {
            profile: PROFILE.into(),
            current: Some(3),
            generations: vec![1, 2, 3, 4, 5],
        }];
        f
    }

    fn expired_generations(f: &Fixture, policy: &Policy) -> Vec<u64> {
        let (_, d) = f.run(policy, None);
        d.expired_roots
            .iter()
            .map(|e| match &e.why {
                Expiry::Generation {
                    generation,
                    profile,
                    ..
                } => {
                    assert_eq!(profile, PROFILE);
                    assert_eq!(e.remove, e.link);
                    *generation
                }
                other => panic!("{other:?}"),
            })
            .collect()
    }

    #[test]
    fn default_policy_deletes_exactly_the_unreachable() {
        let mut f = Fixture::default();
        let (a, b, c, d) = (f.old("a"), f.old("b"), f.old("c"), f.old("d"));
        f.refer(a, b);
        f.refer(c, a);
        f.gcroot(a);
        f.generation(d, 1, 500);
        let (_, dec) = f.run(&Policy::default(), None);
        assert_eq!(dec.delete, vec![c]);
        assert_eq!(dec.reasons, vec![Reason::Unreachable]);
        assert!(dec.expired_roots.is_empty());
        assert_eq!(dec.kept.nix_roots, Tally { paths: 3, bytes: 3 });
        assert_eq!(dec.budget, None);
    }

    #[test]
    fn current_generation_is_never_expired() {
        let f = five_generations();
        assert_eq!(
            expired_generations(&f, &generations_policy(Some(0), None)),
            vec![1, 2, 4, 5]
        );
        assert_eq!(
            expired_generations(&f, &generations_policy(None, Some(days(0)))),
            vec![1, 2, 4, 5]
        );
        assert_eq!(
            f.deleted(&generations_policy(Some(0), None)),
            vec!["sys-1", "sys-2", "sys-4", "sys-5"]
        );
    }

    #[test]
    fn keep_newest_keeps_the_highest_numbers() {
        let f = five_generations();
        assert_eq!(
            expired_generations(&f, &generations_policy(Some(1), None)),
            vec![1, 2, 4]
        );
        assert_eq!(
            expired_generations(&f, &generations_policy(Some(3), None)),
            vec![1, 2]
        );
        assert!(expired_generations(&f, &generations_policy(Some(5), None)).is_empty());
        assert!(expired_generations(&f, &generations_policy(Some(100), None)).is_empty());
    }

    #[test]
    fn keep_since_keeps_younger_links() {
        // Links are 9, 8, 7, 6, 5 days old.
        let f = five_generations();
        assert_eq!(
            expired_generations(&f, &generations_policy(None, Some(days(7)))),
            vec![1, 2]
        );
        assert_eq!(
            expired_generations(&f, &generations_policy(None, Some(days(6)))),
            vec![1, 2, 4]
        );
        // Both rules must let a generation go.
        assert_eq!(
            expired_generations(&f, &generations_policy(Some(4), Some(days(1)))),
            vec![1]
        );
        assert_eq!(
            expired_generations(&f, &generations_policy(Some(1), Some(days(9)))),
            vec![1]
        );
        assert!(expired_generations(&f, &generations_policy(Some(0), Some(days(10)))).is_empty());
    }

    #[test]
    fn unknown_current_generation_expires_nothing() {
        let mut f = five_generations();
        f.inputs.profiles[0].current = None;
        assert!(expired_generations(&f, &generations_policy(Some(0), None)).is_empty());
        // No [[generations]] at all: generation links are plain roots.
        let f = five_generations();
        assert!(f.deleted(&Policy::default()).is_empty());
    }

    #[test]
    fn every_root_on_an_expired_generation_link_goes_and_other_roots_stay() {
        let mut f = five_generations();
        // The same generation link found twice (directly and through a
        // profile link), and a gcroot holding generation 1's system.
        let sys1 = f.root_ids[0].1;
        let sys2 = f.root_ids[1].1;
        f.root(
            sys2,
            &format!("{PROFILE}-2-link"),
            RootKind::Indirect,
            Some("/nix/var/nix/profiles/other"),
            RootFact::Generation {
                profile: 0,
                number: 2,
                mtime: NOW - 8 * DAY,
            },
        );
        f.gcroot(sys1);
        let p = generations_policy(Some(0), None);
        let (_, d) = f.run(&p, None);
        let roots: Vec<usize> = d.expired_roots.iter().map(|e| e.root).collect();
        assert_eq!(roots, vec![0, 1, 3, 4, 5]);
        assert_eq!(f.deleted(&p), vec!["sys-2", "sys-4", "sys-5"]);
        assert!(d.reasons.iter().all(|&r| r == Reason::ExpiredGeneration));
        assert_eq!(d.by_reason.expired_generation, Tally { paths: 3, bytes: 3 });
    }

    fn auto_fixture() -> (Fixture, Vec<usize>) {
        let mut f = Fixture::default();
        let mut roots = Vec::new();
        for (i, (link, age)) in [
            ("/home/u/p/result", Some(20)),
            ("/home/u/p/result-dev", Some(20)),
            ("/home/u/p/keep", Some(20)),
            ("/home/u/q/result", Some(2)),
            ("/home/u/gone/result", None),
        ]
        .into_iter()
        .enumerate()
        {
            let out = f.old(&format!("out-{i}"));
            let dep = f.old(&format!("dep-{i}"));
            f.refer(out, dep);
            let via = format!("/nix/var/nix/gcroots/auto/{i}");
            let fact = RootFact::AutoRoot {
                mtime: age.map(|a: i64| NOW - a * DAY),
            };
            roots.push(f.root(out, link, RootKind::Indirect, Some(&via), fact));
        }
        // A plain root whose link would match: never expired.
        let held = f.old("held");
        f.root(
            held,
            "/home/u/x/result",
            RootKind::Gcroot,
            None,
            RootFact::Plain,
        );
        (f, roots)
    }

    fn auto_policy() -> Policy {
        Policy {
            auto_roots: Some(AutoRoots {
                older_than: days(14),
                match_: globs(&["*/result", "*/result-*"]),
                keep_newest: None,
                group_by: crate::policy::GroupBy::Folder,
            }),
            ..Policy::default()
        }
    }

    #[test]
    fn auto_roots_expire_on_match_and_age_only() {
        let (f, _) = auto_fixture();
        let (_, d) = f.run(&auto_policy(), None);
        assert_eq!(
            d.expired_roots,
            vec![
                ExpiredRoot {
                    root: 0,
                    link: "/home/u/p/result".into(),
                    remove: "/nix/var/nix/gcroots/auto/0".into(),
                    why: Expiry::AutoRoot {
                        pattern: "*/result".into(),
                        age_secs: 20 * DAY
                    },
                },
                ExpiredRoot {
                    root: 1,
                    link: "/home/u/p/result-dev".into(),
                    remove: "/nix/var/nix/gcroots/auto/1".into(),
                    why: Expiry::AutoRoot {
                        pattern: "*/result-*".into(),
                        age_secs: 20 * DAY
                    },
                },
            ]
        );
        assert_eq!(
            f.deleted(&auto_policy()),
            vec!["out-0", "dep-0", "out-1", "dep-1"]
        );
        assert!(d.reasons.iter().all(|&r| r == Reason::ExpiredAutoRoot));
        // Without [auto-roots] nothing expires.
        assert!(f.deleted(&Policy::default()).is_empty());
    }

    #[test]
    fn reasons_prefer_generation_then_auto_root_then_unreachable() {
        let mut f = Fixture::default();
        let shared = f.old("shared");
        let sys = f.old("sys");
        let res = f.old("res");
        f.old("stray");
        let cur = f.old("cur");
        f.refer(sys, shared);
        f.refer(res, shared);
        f.generation(sys, 1, 50);
        f.generation(cur, 2, 1);
        let via = "/nix/var/nix/gcroots/auto/x";
        f.root(
            res,
            "/w/result",
            RootKind::Indirect,
            Some(via),
            RootFact::AutoRoot {
                mtime: Some(NOW - 50 * DAY),
            },
        );
        f.inputs.profiles = vec![ProfileFacts {
            profile: PROFILE.into(),
            current: Some(2),
            generations: vec![1, 2],
        }];
        let mut p = auto_policy();
        p.generations = generations_policy(Some(0), None).generations;
        let (snap, d) = f.run(&p, None);
        let got: Vec<(&str, Reason)> = d
            .delete
            .iter()
            .zip(&d.reasons)
            .map(|(&id, &r)| (name_of(snap.paths.get(id)), r))
            .collect();
        assert_eq!(
            got,
            vec![
                ("shared", Reason::ExpiredGeneration),
                ("sys", Reason::ExpiredGeneration),
                ("res", Reason::ExpiredAutoRoot),
                ("stray", Reason::Unreachable),
            ]
        );
        assert_eq!(
            d.by_reason.get(Reason::ExpiredAutoRoot),
            Tally { paths: 1, bytes: 1 }
        );
        assert_eq!(Reason::ExpiredAutoRoot.to_string(), "expired-auto-root");
        assert_eq!(
            serde_json::to_string(&Reason::ExpiredGeneration).unwrap(),
            "\"expired-generation\""
        );
    }

    #[test]
    fn origin_local_keeps_substituted_paths() {
        let mut f = Fixture::default();
        f.path("built", 1, 100, origin::ULTIMATE);
        f.path("substituted", 1, 100, origin::SIGNED);
        f.path(
            "built-and-signed",
            1,
            100,
            origin::ULTIMATE | origin::SIGNED,
        );
        f.path("evaluated", 1, 100, 0);
        let mut p = Policy::default();
        assert_eq!(f.deleted(&p).len(), 4);
        p.select.origin = Origin::Local;
        assert_eq!(
            f.deleted(&p),
            vec!["built", "built-and-signed", "evaluated"]
        );
        assert_eq!(
            f.run(&p, None).1.kept.unselected,
            Tally { paths: 1, bytes: 1 }
        );
    }

    #[test]
    fn older_than_uses_registration_time() {
        let mut f = Fixture::default();
        f.path("d20", 1, 20, 0);
        f.path("d14", 1, 14, 0);
        f.path("d13", 1, 13, 0);
        let p = Policy {
            select: Select {
                older_than: Some(days(14)),
                ..Select::default()
            },
            ..Policy::default()
        };
        assert_eq!(f.deleted(&p), vec!["d20", "d14"]);
    }

    #[test]
    fn names_and_exclude_names_match_the_name_part() {
        let mut f = Fixture::default();
        for name in ["hello-ci-1", "hello-ci-1.drv", "world", "ci-x"] {
            f.old(name);
        }
        let mut p = Policy::default();
        p.select.names = Some(globs(&["*-ci-*"]));
        assert_eq!(f.deleted(&p), vec!["hello-ci-1", "hello-ci-1.drv"]);
        p.select.exclude_names = globs(&["*.drv"]);
        assert_eq!(f.deleted(&p), vec!["hello-ci-1"]);
        p.select.names = None;
        assert_eq!(f.deleted(&p), vec!["hello-ci-1", "world", "ci-x"]);
        // The hash part is not matched.
        p.select.names = Some(globs(&["0*"]));
        assert!(f.deleted(&p).is_empty());
        p.select.names = Some(globs(&[]));
        assert!(f.deleted(&p).is_empty());
    }

    #[test]
    fn protected_paths_keep_their_closures() {
        let mut f = Fixture::default();
        let host = f.path("host-system", 100, 100, 0);
        let lib = f.path("lib", 10, 100, 0);
        let extra = f.path("extra", 7, 100, 0);
        let lib2 = f.path("lib2", 3, 100, 0);
        let src = f.path("foo-source", 5, 100, 0);
        let junk = f.path("junk", 1, 100, 0);
        f.refer(host, lib);
        f.refer(extra, lib2);
        f.refer(extra, lib);
        f.refer(src, lib2);
        f.inputs.closure_list_ids = vec![host];
        let mut p = Policy::default();
        assert_eq!(f.deleted(&p), vec!["extra", "lib2", "foo-source", "junk"]);
        // Without the policy naming them, the gathered ids alone protect.
        f.inputs.protected_path_ids = vec![extra];
        p.protect.names = globs(&["*-source"]);
        let (_, d) = f.run(&p, None);
        assert_eq!(d.delete, vec![junk]);
        assert_eq!(
            d.kept.closure_lists,
            Tally {
                paths: 2,
                bytes: 110
            }
        );
        assert_eq!(
            d.kept.protected_paths,
            Tally {
                paths: 2,
                bytes: 10
            }
        );
        assert_eq!(d.kept.protected_names, Tally { paths: 1, bytes: 5 });
        assert_eq!(d.kept.nix_roots, Tally::default());
        // Protection applies even when a kept root would also keep it: the
        // root's closure is counted first.
        f.gcroot(lib);
        let (_, d) = f.run(&p, None);
        assert_eq!(
            d.kept.nix_roots,
            Tally {
                paths: 1,
                bytes: 10
            }
        );
        assert_eq!(
            d.kept.closure_lists,
            Tally {
                paths: 1,
                bytes: 100
            }
        );
        let _ = src;
    }

    #[test]
    fn closure_follows_references_and_keep_derivations_edges() {
        let mut f = Fixture::default();
        let src = f.path("src", 1, 30, 0);
        let drv = f.path("new.drv", 1, 30, 0);
        let out = f.path("new", 1, 0, origin::ULTIMATE);
        let lib = f.path("lib", 1, 30, 0);
        let old_drv = f.path("old.drv", 1, 30, 0);
        let old_out = f.path("old", 1, 30, origin::ULTIMATE);
        f.refer(drv, src);
        f.refer(out, lib);
        f.derived_from(out, drv);
        f.derived_from(old_out, old_drv);
        f.refer(old_drv, src);
        // "new" is too young to select; it keeps its reference (lib), its
        // deriver (keep-derivations) and the deriver's reference (src).
        let p = Policy {
            select: Select {
                older_than: Some(days(1)),
                ..Select::default()
            },
            ..Policy::default()
        };
        assert_eq!(f.deleted(&p), vec!["old.drv", "old"]);
        let (_, d) = f.run(&p, None);
        assert_eq!(d.kept.unselected, Tally { paths: 4, bytes: 4 });
        let _ = (old_drv, old_out);
    }

    /// Candidates a(10, 40 days), b(50, 30 days), c(5, 10 days, refers to
    /// a), d(30, 20 days).
    fn budget_fixture() -> Fixture {
        let mut f = Fixture::default();
        let a = f.path("a", 10, 40, 0);
        f.path("b", 50, 30, 0);
        let c = f.path("c", 5, 10, 0);
        f.path("d", 30, 20, 0);
        f.refer(c, a);
        f
    }

    fn budget(max_freed: Option<u64>, until_free: Option<u64>, order: Order) -> Policy {
        Policy {
            budget: Budget {
                max_freed: max_freed.map(Amount::Bytes),
                until_free: until_free.map(Amount::Bytes),
                order,
            },
            ..Policy::default()
        }
    }

    #[test]
    fn budget_oldest_first_takes_referrers_along() {
        let f = budget_fixture();
        let o = Order::OldestFirst;
        assert!(f.deleted(&budget(Some(0), None, o)).is_empty());
        assert_eq!(f.deleted(&budget(Some(1), None, o)), vec!["a", "c"]);
        assert_eq!(f.deleted(&budget(Some(15), None, o)), vec!["a", "c"]);
        assert_eq!(f.deleted(&budget(Some(16), None, o)), vec!["a", "b", "c"]);
        assert_eq!(f.deleted(&budget(Some(66), None, o)).len(), 4);
        let (_, d) = f.run(&budget(Some(16), None, o), None);
        assert_eq!(
            d.kept.budget,
            Tally {
                paths: 1,
                bytes: 30
            }
        );
        assert_eq!(
            d.budget,
            Some(BudgetOutcome {
                limit: 16,
                already_met: false,
                candidates: Tally {
                    paths: 4,
                    bytes: 95
                }
            })
        );
    }

    #[test]
    fn budget_largest_first() {
        let f = budget_fixture();
        let o = Order::LargestFirst;
        assert_eq!(f.deleted(&budget(Some(40), None, o)), vec!["b"]);
        assert_eq!(f.deleted(&budget(Some(60), None, o)), vec!["b", "d"]);
        assert_eq!(
            f.deleted(&budget(Some(81), None, o)),
            vec!["a", "b", "c", "d"]
        );
    }

    #[test]
    fn until_free_counts_from_the_space_available() {
        let f = budget_fixture();
        let o = Order::LargestFirst;
        // Already met: nothing.
        assert!(f
            .deleted_with(&budget(None, Some(100), o), Some(100))
            .is_empty());
        let (_, d) = f.run(&budget(None, Some(100), o), Some(150));
        assert!(d.delete.is_empty());
        assert!(d.budget.unwrap().already_met);
        // 30 bytes short.
        assert_eq!(
            f.deleted_with(&budget(None, Some(130), o), Some(100)),
            vec!["b"]
        );
        assert_eq!(
            f.deleted_with(&budget(None, Some(190), o), Some(100)),
            vec!["a", "b", "c", "d"]
        );
        // The smaller of both limits wins.
        assert_eq!(
            f.deleted_with(&budget(Some(20), Some(190), Order::OldestFirst), Some(100)),
            vec!["a", "b", "c"]
        );
        assert_eq!(
            f.deleted_with(&budget(Some(20), Some(105), Order::OldestFirst), Some(100)),
            vec!["a", "c"]
        );
        // Unknown space: nothing, with a warning.
        let (_, d) = f.run(&budget(None, Some(130), o), None);
        assert!(d.delete.is_empty());
        assert_eq!(d.warnings.len(), 1);
    }

    #[test]
    fn budget_keeps_the_roots_of_what_it_leaves() {
        let f = five_generations();
        let mut p = generations_policy(Some(0), None);
        p.budget.max_freed = Some(Amount::Bytes(2));
        let (_, d) = f.run(&p, None);
        assert_eq!(f.deleted(&p), vec!["sys-1", "sys-2"]);
        assert_eq!(
            d.expired_roots.iter().map(|e| e.root).collect::<Vec<_>>(),
            vec![0, 1]
        );
        p.budget.until_free = Some(Amount::Bytes(10));
        let (_, d) = f.run(&p, Some(10));
        assert!(d.delete.is_empty());
        assert!(d.expired_roots.is_empty());
    }

    /// Evaluates `f` at `now` with a dead-since state, returning the
    /// decision and the next state (what `plan --out` saves).
    fn window_day(
        f: &Fixture,
        policy: &Policy,
        state: Option<&crate::deadsince::DeadSince>,
        now: i64,
    ) -> (Decision, crate::deadsince::DeadSince) {
        let snap = Snapshot::from_rows(f.rows.clone(), &f.refs, vec![]);
        let graph = Graph::build(&snap, GcSettings::default());
        let empty = crate::deadsince::DeadSince::new("/nix/store");
        let mut inputs = f.inputs.clone();
        inputs.dead_since = state.unwrap_or(&empty).since_by_id(&snap);
        inputs.dead_since_missing = state.is_none();
        let d = evaluate(
            &snap,
            &graph,
            &f.roots,
            &f.root_ids,
            policy,
            &inputs,
            now,
            None,
        );
        let next = state.unwrap_or(&empty).next(&snap, &d.dead, now);
        (d, next)
    }

    /// The simulated days: a path dead on days 1-6, live on day 7
    /// (a root holds it), dead again from day 8 goes only on day 15 under
    /// `dead-for = "7d"`; the first run deletes nothing by the rule.
    #[test]
    fn rollback_window_over_simulated_days() {
        let mut dead = Fixture::default();
        let x = dead.old("x");
        let dep = dead.old("dep");
        dead.refer(x, dep);
        let mut live = Fixture {
            rows: dead.rows.clone(),
            refs: dead.refs.clone(),
            ..Fixture::default()
        };
        live.gcroot(x);
        let mut policy = Policy::default();
        policy.select.dead_for = Some(days(7));
        let mut state = None;
        let mut gone_on = Vec::new();
        for day in 1..=16i64 {
            let now = NOW + day * DAY;
            let f = if day == 7 { &live } else { &dead };
            let (d, next) = window_day(f, &policy, state.as_ref(), now);
            let w = d.window.expect("window outcome");
            assert_eq!(w.first_run, day == 1, "day {day}");
            assert_eq!(w.dead_for_secs, 7 * DAY as u64);
            let kept_by_window = d.kept.window.paths;
            if d.delete.is_empty() {
                if day != 7 {
                    assert_eq!(kept_by_window, 2, "day {day}: the window keeps x and dep");
                }
            } else {
                assert_eq!(d.delete, vec![x, dep], "day {day}");
                assert_eq!(kept_by_window, 0);
                gone_on.push(day);
            }
            if day == 7 {
                assert!(d.dead.is_empty(), "live on day 7");
                assert_eq!(next.len(), 0, "live again: the dates go");
            }
            state = Some(next);
        }
        // Day 15 is 7 days after day 8; on day 16 (no apply ran) it is
        // still deletable.
        assert_eq!(gone_on, vec![15, 16]);
    }

    /// The window keeps the closure of what it keeps, and a root whose
    /// target it keeps is not expired (a rollback still finds it).
    #[test]
    fn rollback_window_keeps_closures_and_the_roots_of_what_it_keeps() {
        let mut f = five_generations();
        let lib2 = f.old("lib2");
        let sys1 = f.root_ids[0].1;
        f.refer(sys1, lib2);
        let mut p = generations_policy(Some(0), None);
        p.select.dead_for = Some(days(7));
        let (d, state) = window_day(&f, &p, None, NOW);
        assert!(d.delete.is_empty());
        assert!(d.expired_roots.is_empty(), "{:?}", d.expired_roots);
        // sys-1, sys-2, sys-4, sys-5 and lib2 are dead (expired generations);
        // lib is held by the current generation.
        assert_eq!(d.dead.len(), 5);
        assert_eq!(d.kept.window, Tally { paths: 5, bytes: 5 });
        let (d, _) = window_day(&f, &p, Some(&state), NOW + 7 * DAY);
        assert_eq!(f.deleted(&generations_policy(Some(0), None)).len(), 5);
        assert_eq!(d.delete.len(), 5);
        assert_eq!(d.expired_roots.len(), 4);
        assert!(d.reasons.iter().all(|&r| r == Reason::ExpiredGeneration));
    }

    /// The N newest auto roots of each group stay whatever their age.
    #[test]
    fn keep_newest_per_group_of_auto_roots() {
        let mut f = Fixture::default();
        // (link, age in days): repo a has four results, repo b one.
        let links = [
            ("/ci/a/1/result", 40),
            ("/ci/a/2/result", 30),
            ("/ci/a/3/result", 20),
            ("/ci/a/4/result", 2),
            ("/ci/b/1/result", 50),
        ];
        for (i, (link, age)) in links.iter().enumerate() {
            let out = f.old(&format!("out-{i}"));
            let via = format!("/nix/var/nix/gcroots/auto/{i}");
            let fact = RootFact::AutoRoot {
                mtime: Some(NOW - age * DAY),
            };
            f.root(out, link, RootKind::Indirect, Some(&via), fact);
        }
        let rule = |keep: Option<u32>, group_by: &str| Policy {
            auto_roots: Some(AutoRoots {
                older_than: days(14),
                match_: globs(&["*/result"]),
                keep_newest: keep,
                group_by: crate::policy::GroupBy::parse(group_by).unwrap(),
            }),
            ..Policy::default()
        };
        assert_eq!(
            f.deleted(&rule(None, "folder")),
            vec!["out-0", "out-1", "out-2", "out-4"]
        );
        // By folder every link is its own group: all stay.
        assert!(f.deleted(&rule(Some(1), "folder")).is_empty());
        // By repository: a keeps results 4 and 3, b keeps its only one.
        assert_eq!(
            f.deleted(&rule(Some(2), "/ci/(*)/**")),
            vec!["out-0", "out-1"]
        );
        let (_, d) = f.run(&rule(Some(0), "/ci/(*)/**"), None);
        assert_eq!(d.expired_roots.len(), 4);
        // A link the pattern does not match is its own group, with a warning.
        let (_, d) = f.run(&rule(Some(1), "/ci/(a)/*/result"), None);
        assert_eq!(d.expired_roots.len(), 3, "{:?}", d.expired_roots);
        assert_eq!(d.warnings.len(), 1, "{:?}", d.warnings);
        assert!(d.warnings[0].starts_with("/ci/b/1/result: "));
    }

    /// `build-closures`: the listed toplevel's deriver, the `.drv`'s
    /// closure and the valid outputs of every `.drv` in it stay, with
    /// their closures; outputs of unrelated derivations do not.
    #[test]
    fn build_closures_keep_what_the_next_build_needs() {
        let mut f = Fixture::default();
        let src = f.old("src");
        let dep_drv = f.old("dep.drv");
        let dep = f.old("dep");
        let dep_lib = f.old("dep-lib");
        let top_drv = f.old("top.drv");
        let top = f.old("top");
        let other_drv = f.old("other.drv");
        let other = f.old("other");
        f.refer(dep_drv, src);
        f.refer(dep, dep_lib);
        f.refer(top_drv, dep_drv);
        f.derived_from(top, top_drv);
        f.derived_from(dep, dep_drv);
        f.derived_from(other, other_drv);
        f.inputs.closure_list_ids = vec![top];
        let outputs = vec![(dep_drv, dep), (top_drv, top), (other_drv, other)];
        let snap = Snapshot::from_rows(f.rows.clone(), &f.refs, outputs);
        assert_eq!(
            build_closure(&snap, &[top]),
            vec![src, dep_drv, dep, top_drv, top]
        );
        let graph = Graph::build(
            &snap,
            GcSettings {
                keep_outputs: false,
                keep_derivations: false,
            },
        );
        let mut p = Policy::default();
        let run = |p: &Policy| {
            evaluate(
                &snap,
                &graph,
                &f.roots,
                &f.root_ids,
                p,
                &f.inputs,
                NOW,
                None,
            )
        };
        assert_eq!(
            run(&p).delete,
            vec![src, dep_drv, dep, dep_lib, top_drv, other_drv, other]
        );
        p.protect.build_closures = true;
        let d = run(&p);
        assert_eq!(d.delete, vec![other_drv, other]);
        assert_eq!(d.kept.build_closures, Tally { paths: 5, bytes: 5 });
        assert_eq!(d.kept.closure_lists, Tally { paths: 1, bytes: 1 });
    }

    // Property tests on random graphs and random policies.

    const NAMES: [&str; 4] = ["a", "b-source", "c.drv", "d-ci"];
    const PATTERNS: [&str; 4] = ["*-source", "*.drv", "d-*", "*"];

    #[derive(Debug, Clone)]
    struct Case {
        n: usize,
        edges: Vec<(PathId, PathId)>,
        /// Per path: size, age in days, origin bits, name index.
        meta: Vec<(u64, i64, u8, usize)>,
        /// Per root: path, fact kind (0 plain, 1 generation, 2 auto), link age.
        roots: Vec<(PathId, u8, i64)>,
        current: u64,
        origin_local: bool,
        older_than: Option<i64>,
        names: Option<Vec<usize>>,
        exclude: Vec<usize>,
        protect_names: Vec<usize>,
        listed: Vec<PathId>,
        protected: Vec<PathId>,
        keep_newest: Option<u32>,
        keep_since: Option<i64>,
        auto_older_than: Option<i64>,
        order: bool,
    }

    fn case() -> impl Strategy<Value = Case> {
        (1usize..50)
            .prop_flat_map(|n| {
                let id = 0..n as PathId;
                let pats = proptest::collection::vec(0..PATTERNS.len(), 0..3);
                (
                    (
                        Just(n),
                        proptest::collection::vec((id.clone(), id.clone()), 0..n * 3),
                        proptest::collection::vec(
                            (0u64..1000, 0i64..60, 0u8..4, 0..NAMES.len()),
                            n,
                        ),
                        proptest::collection::vec((id.clone(), 0u8..3, 0i64..60), 0..8),
                        0u64..9,
                    ),
                    (
                        any::<bool>(),
                        proptest::option::of(0i64..60),
                        proptest::option::of(pats.clone()),
                        pats.clone(),
                        pats,
                        proptest::collection::vec(id.clone(), 0..3),
                        proptest::collection::vec(id, 0..3),
                    ),
                    (
                        proptest::option::of(0u32..4),
                        proptest::option::of(0i64..60),
                        proptest::option::of(0i64..60),
                        any::<bool>(),
                    ),
                )
            })
            .prop_map(
                |(
                    (n, edges, meta, roots, current),
                    (local, older, names, exclude, pnames, listed, protected),
                    (kn, ks, auto, order),
                )| Case {
                    n,
                    edges,
                    meta,
                    roots,
                    current,
                    origin_local: local,
                    older_than: older,
                    names,
                    exclude,
                    protect_names: pnames,
                    listed,
                    protected,
                    keep_newest: kn,
                    keep_since: ks,
                    auto_older_than: auto,
                    order,
                },
            )
    }

    struct Built {
        snap: Snapshot,
        graph: Graph,
        roots: Vec<Root>,
        root_ids: Vec<(usize, PathId)>,
        inputs: PolicyInputs,
        policy: Policy,
    }

    fn pick(ix: &[usize]) -> Globs {
        globs(&ix.iter().map(|&i| PATTERNS[i]).collect::<Vec<_>>())
    }

    fn build(c: &Case) -> Built {
        let rows = c
            .meta
            .iter()
            .enumerate()
            .map(|(i, &(size, age, origin, name))| PathRow {
                basename: base(i, NAMES[name]),
                nar_size: size,
                registration_time: NOW - age * DAY,
                deriver: None,
                origin,
            })
            .collect();
        let snap = Snapshot::from_rows(rows, &c.edges, vec![]);
        let graph = Graph::from_edges(c.n, &c.edges);
        let mut inputs = PolicyInputs::default();
        let mut roots = Vec::new();
        let mut generations = Vec::new();
        for (i, &(_, kind, age)) in c.roots.iter().enumerate() {
            let mtime = NOW - age * DAY;
            let (link, kind, via, fact) = match kind {
                1 => {
                    let number = i as u64 + 1;
                    generations.push(number);
                    (
                        format!("{PROFILE}-{number}-link"),
                        RootKind::Profile,
                        None,
                        RootFact::Generation {
                            profile: 0,
                            number,
                            mtime,
                        },
                    )
                }
                2 => (
                    format!("/w/{i}/result"),
                    RootKind::Indirect,
                    Some(format!("/auto/{i}")),
                    RootFact::AutoRoot { mtime: Some(mtime) },
                ),
                _ => (
                    format!("/gcroots/{i}"),
                    RootKind::Gcroot,
                    None,
                    RootFact::Plain,
                ),
            };
            roots.push(Root {
                link,
                target: String::new(),
                kind,
                via,
            });
            inputs.root_facts.push(fact);
        }
        inputs.profiles = vec![ProfileFacts {
            profile: PROFILE.into(),
            current: Some(c.current),
            generations,
        }];
        inputs.closure_list_ids = c.listed.clone();
        inputs.protected_path_ids = c.protected.clone();
        let root_ids = c.roots.iter().enumerate().map(|(i, r)| (i, r.0)).collect();
        let policy = Policy {
            protect: Protect {
                names: pick(&c.protect_names),
                ..Protect::default()
            },
            select: Select {
                origin: if c.origin_local {
                    Origin::Local
                } else {
                    Origin::Any
                },
                older_than: c.older_than.map(days),
                names: c.names.as_deref().map(pick),
                exclude_names: pick(&c.exclude),
                dead_for: None,
            },
            generations: vec![Generations {
                profile: Located::new(PROFILE.into()),
                keep_newest: c.keep_newest,
                keep_since: c.keep_since.map(days),
            }],
            auto_roots: c.auto_older_than.map(|d| AutoRoots {
                older_than: days(d),
                match_: globs(&["*/result"]),
                keep_newest: None,
                group_by: crate::policy::GroupBy::Folder,
            }),
            budget: Budget {
                order: if c.order {
                    Order::LargestFirst
                } else {
                    Order::OldestFirst
                },
                ..Budget::default()
            },
            ..Policy::default()
        };
        Built {
            snap,
            graph,
            roots,
            root_ids,
            inputs,
            policy,
        }
    }

    fn run(b: &Built, policy: &Policy) -> Decision {
        evaluate(
            &b.snap,
            &b.graph,
            &b.roots,
            &b.root_ids,
            policy,
            &b.inputs,
            NOW,
            None,
        )
    }

    fn as_set(n: usize, ids: &[PathId]) -> Vec<bool> {
        let mut v = vec![false; n];
        ids.iter().for_each(|&i| v[i as usize] = true);
        v
    }

    proptest! {
        #[test]
        fn no_deleted_path_is_reachable_from_a_kept_one(c in case()) {
            let b = build(&c);
            let d = run(&b, &b.policy);
            let del = as_set(c.n, &d.delete);
            for &(u, v) in &c.edges {
                prop_assert!(!del[v as usize] || del[u as usize], "{} kept, refers to deleted {}", u, v);
            }
            let expired: Vec<usize> = d.expired_roots.iter().map(|e| e.root).collect();
            for &(i, id) in &b.root_ids {
                prop_assert!(expired.contains(&i) || !del[id as usize]);
            }
            for &id in c.listed.iter().chain(&c.protected) {
                prop_assert!(!del[id as usize]);
            }
            for &id in &d.delete {
                let (_, age, origin, name) = c.meta[id as usize];
                prop_assert!(!(c.origin_local && is_substituted(origin)));
                prop_assert!(c.older_than.map_or(true, |o| age >= o));
                prop_assert!(!b.policy.protect.names.is_match(NAMES[name]));
            }
            // The same set as a naive closure of all seeds at once.
            let mut seeds: Vec<PathId> = b.root_ids.iter().filter(|(i, _)| !expired.contains(i)).map(|&(_, id)| id).collect();
            seeds.extend(&c.listed);
            seeds.extend(&c.protected);
            seeds.extend((0..c.n as PathId).filter(|&id| {
                b.policy.protect.names.is_match(NAMES[c.meta[id as usize].3]) || !selected(&b.snap, id, &b.policy, NOW)
            }));
            let keep = live_set_sequential(&b.graph, &seeds);
            let want: Vec<PathId> = (0..c.n as PathId).filter(|&id| !keep[id as usize]).collect();
            prop_assert_eq!(&d.delete, &want);
            let mut accounted = d.kept.total();
            accounted += d.by_reason.total();
            prop_assert_eq!(accounted.paths, c.n as u64);
        }

        #[test]
        fn budgeted_plan_is_closed_under_referrers_and_monotone(c in case(), l1 in 0u64..6000, l2 in 0u64..6000) {
            let b = build(&c);
            let full = as_set(c.n, &run(&b, &b.policy).delete);
            let (lo, hi) = (l1.min(l2), l1.max(l2));
            let mut p = b.policy.clone();
            p.budget.max_freed = Some(Amount::Bytes(lo));
            let small = run(&b, &p);
            p.budget.max_freed = Some(Amount::Bytes(hi));
            let large = run(&b, &p);
            let (s, l) = (as_set(c.n, &small.delete), as_set(c.n, &large.delete));
            for &(u, v) in &c.edges {
                prop_assert!(!s[v as usize] || s[u as usize]);
                prop_assert!(!l[v as usize] || l[u as usize]);
            }
            for id in 0..c.n {
                prop_assert!(!s[id] || l[id], "larger budget dropped {}", id);
                prop_assert!(!l[id] || full[id]);
            }
            for e in &small.expired_roots {
                let id = b.root_ids[e.root].1 as usize;
                prop_assert!(s[id] || !full[id], "expired root {} holds a path the budget left", e.root);
            }
            let freed: u64 = small.delete.iter().map(|&id| b.snap.nar_size[id as usize]).sum();
            let candidates: u64 = (0..c.n).filter(|&i| full[i]).map(|i| b.snap.nar_size[i]).sum();
            // Enough is taken, unless the candidates run out.
            prop_assert!(freed >= lo.min(candidates));
            prop_assert_eq!(small.reasons.len(), small.delete.len());
        }

        #[test]
        fn rollback_window_only_narrows_and_stays_closed(
            c in case(),
            window in 0i64..20,
            dates in proptest::collection::vec(proptest::option::of(0i64..40), 50),
        ) {
            let mut b = build(&c);
            let without = as_set(c.n, &run(&b, &b.policy).delete);
            let mut p = b.policy.clone();
            p.select.dead_for = Some(days(window));
            b.inputs.dead_since = (0..c.n).map(|i| dates[i].map(|d| NOW - d * DAY)).collect();
            let d = run(&b, &p);
            let del = as_set(c.n, &d.delete);
            for &(u, v) in &c.edges {
                prop_assert!(!del[v as usize] || del[u as usize], "{} kept, refers to deleted {}", u, v);
            }
            for &id in &d.delete {
                prop_assert!(without[id as usize], "the window deleted {} the policy keeps", id);
                // Age in days; no date means first seen now.
                let age = dates[id as usize].unwrap_or(0);
                prop_assert!(age >= window, "{} deleted within the window", id);
                prop_assert!(d.dead.binary_search(&id).is_ok());
            }
            // No expired root holds a path the window keeps.
            for e in &d.expired_roots {
                let id = b.root_ids[e.root].1 as usize;
                let young = dates[id].unwrap_or(0) < window;
                prop_assert!(!(d.dead.contains(&(id as PathId)) && young && !del[id]), "root {} expired, its target kept by the window", e.root);
            }
            let mut accounted = d.kept.total();
            accounted += d.by_reason.total();
            prop_assert_eq!(accounted.paths, c.n as u64);
        }

        #[test]
        fn default_policy_is_nix_liveness(c in case()) {
            let mut b = build(&c);
            // What gather finds for the default policy: nothing protected.
            b.inputs.closure_list_ids.clear();
            b.inputs.protected_path_ids.clear();
            let d = run(&b, &Policy::default());
            let ids: Vec<PathId> = b.root_ids.iter().map(|r| r.1).collect();
            let live = live_set_parallel(&b.graph, &ids);
            let dead: Vec<PathId> = (0..c.n as PathId).filter(|&id| !live[id as usize]).collect();
            prop_assert_eq!(d.delete, dead);
            prop_assert!(d.expired_roots.is_empty());
            prop_assert!(d.reasons.iter().all(|&r| r == Reason::Unreachable));
        }
    }
}
