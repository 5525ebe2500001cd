//! The plan: what may be deleted and why, as data. Built by a pure function
//! from the snapshot, the roots and the decision; serialised as versioned
//! JSON for `storegc apply` and for reports.
//!
//! The file format is its own: every type serialised here is defined here
//! (roots, tallies, budget), converted explicitly from the root scanner's
//! and the policy's types, so a change inside those modules cannot change
//! the file `apply` reads without a change here and a new [`PLAN_VERSION`].

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::db::Snapshot;
use crate::policy::{BudgetOutcome, ByReason, Decision, InputFile, InputKind, Kept, Tally};
use crate::roots::{ListedRoot, Root, RootKind};
use crate::settings::GcSettings;
use crate::store_path::StoreDir;

/// Version of the plan format; `apply` refuses any other. 2: the plan's
/// own types (same field names as 1's). 3: `inputs`, the digest of every
/// file the policy read, which `apply` compares and re-reads (a plan
/// without it cannot say what it was made from, so 2 is refused).
pub const PLAN_VERSION: u32 = 3;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub version: u32,
    pub store_dir: String,
    pub state_dir: String,
    /// When the plan was made (RFC 3339, UTC).
    pub created: String,
    pub settings: PlanSettings,
    /// Every file the policy read: the policy file first, then each
    /// closure list in policy order. Empty without a policy.
    pub inputs: Vec<PlanInput>,
    /// Every root found, sorted.
    pub roots: Vec<PlanRoot>,
    /// Roots the policy expired (generation links, auto roots).
    #[serde(default)]
    pub expired_roots: Vec<ExpiredRoot>,
    /// Paths to delete, sorted by path.
    pub delete: Vec<Deletion>,
    pub totals: Totals,
    /// What the policy kept, per protection (each path counted once).
    #[serde(default)]
    pub kept: PlanKept,
    /// Deleted paths per reason.
    #[serde(default)]
    pub by_reason: PlanByReason,
    /// How the budget was applied, if there was one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<PlanBudget>,
    /// Processes whose runtime roots could not be read (storegc was not
    /// root): the plan may hold paths only they use. 0 (left out of the
    /// file) when every process was read.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub unreadable_processes: u64,
    /// The rollback window (`select.dead-for`), if the policy has one;
    /// `apply` re-reads its state file and keeps what it keeps then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<PlanWindow>,
    /// Warnings from the policy's inputs (e.g. a closure-list path that is
    /// not valid yet).
    #[serde(default)]
    pub warnings: Vec<String>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlanSettings {
    pub keep_outputs: bool,
    pub keep_derivations: bool,
    /// `experimental-features` holds `ca-derivations`.
    #[serde(default)]
    pub ca_derivations: bool,
    /// The policy file, if any (absolute).
    #[serde(default)]
    pub policy: Option<String>,
}

/// One file the policy read, and the SHA-256 of the bytes it parsed.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanInput {
    pub kind: PlanInputKind,
    /// The file as opened (absolute).
    pub path: String,
    /// Lower-case hex.
    pub sha256: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PlanInputKind {
    Policy,
    ClosureList,
}

impl PlanInputKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanInputKind::Policy => "policy",
            PlanInputKind::ClosureList => "closure list",
        }
    }
}

impl From<&InputFile> for PlanInput {
    fn from(f: &InputFile) -> PlanInput {
        PlanInput {
            kind: match f.kind {
                InputKind::Policy => PlanInputKind::Policy,
                InputKind::ClosureList => PlanInputKind::ClosureList,
            },
            path: absolute(&f.path),
            sha256: f.sha256.clone(),
        }
    }
}

/// `path` made absolute against the working directory (lexically, as
/// the policy engine opened it); unchanged if that cannot be done.
pub fn absolute(path: &std::path::Path) -> String {
    std::path::absolute(path)
        .unwrap_or_else(|_| path.to_path_buf())
        .display()
        .to_string()
}

/// One root as the plan records it (what `storegc roots` found).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PlanRoot {
    /// What holds the path (see [`Root::link`]).
    pub link: String,
    /// The store path held.
    pub target: String,
    /// The most direct way the link was found.
    pub kind: PlanRootKind,
    /// The entries (under `gcroots/`, `profiles/`) pointing to `link`,
    /// sorted; a plan of an earlier storegc holds one as a string.
    #[serde(
        default,
        skip_serializing_if = "Vec::is_empty",
        deserialize_with = "one_or_many"
    )]
    pub via: Vec<String>,
}

/// A string or a list of strings, as a list.
fn one_or_many<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

impl From<&ListedRoot> for PlanRoot {
    fn from(r: &ListedRoot) -> PlanRoot {
        PlanRoot {
            link: r.link.clone(),
            target: r.target.clone(),
            kind: r.kind.into(),
            via: r.via.clone(),
        }
    }
}

/// The kind of a recorded root, in [`RootKind`]'s order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PlanRootKind {
    Gcroot,
    Profile,
    Indirect,
    Runtime,
    Temp,
}

impl From<RootKind> for PlanRootKind {
    fn from(k: RootKind) -> PlanRootKind {
        match k {
            RootKind::Gcroot => PlanRootKind::Gcroot,
            RootKind::Profile => PlanRootKind::Profile,
            RootKind::Indirect => PlanRootKind::Indirect,
            RootKind::Runtime => PlanRootKind::Runtime,
            RootKind::Temp => PlanRootKind::Temp,
        }
    }
}

impl PlanRootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PlanRootKind::Gcroot => "gcroot",
            PlanRootKind::Profile => "profile",
            PlanRootKind::Indirect => "indirect",
            PlanRootKind::Runtime => "runtime",
            PlanRootKind::Temp => "temp",
        }
    }
}

/// Paths and narSize bytes.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanTally {
    pub paths: u64,
    pub bytes: u64,
}

impl From<Tally> for PlanTally {
    fn from(t: Tally) -> PlanTally {
        PlanTally {
            paths: t.paths,
            bytes: t.bytes,
        }
    }
}

impl std::ops::AddAssign for PlanTally {
    fn add_assign(&mut self, o: PlanTally) {
        self.paths = self.paths.saturating_add(o.paths);
        self.bytes = self.bytes.saturating_add(o.bytes);
    }
}

/// What the policy kept, per protection (see [`Kept`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanKept {
    pub nix_roots: PlanTally,
    pub closure_lists: PlanTally,
    pub protected_paths: PlanTally,
    pub protected_names: PlanTally,
    /// `protect.build-closures` (absent when nothing).
    #[serde(default, skip_serializing_if = "PlanTally::is_zero")]
    pub build_closures: PlanTally,
    pub unselected: PlanTally,
    /// The rollback window, `select.dead-for` (absent when nothing).
    #[serde(default, skip_serializing_if = "PlanTally::is_zero")]
    pub window: PlanTally,
    pub budget: PlanTally,
}

/// The rollback window as planned.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanWindow {
    /// `select.dead-for`, in seconds.
    pub dead_for_secs: u64,
    /// The dead-since state file read (and, by `plan --out`, written).
    pub state_file: String,
    /// There was no state yet: nothing goes by the window this time.
    pub first_run: bool,
    /// Paths seen deletable now, each with its date in the state.
    pub tracked_paths: u64,
}

impl From<Kept> for PlanKept {
    fn from(k: Kept) -> PlanKept {
        PlanKept {
            nix_roots: k.nix_roots.into(),
            closure_lists: k.closure_lists.into(),
            protected_paths: k.protected_paths.into(),
            protected_names: k.protected_names.into(),
            build_closures: k.build_closures.into(),
            unselected: k.unselected.into(),
            window: k.window.into(),
            budget: k.budget.into(),
        }
    }
}

impl PlanKept {
    /// Every kept path, once.
    pub fn total(&self) -> PlanTally {
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

impl PlanTally {
    pub fn is_zero(&self) -> bool {
        self.paths == 0 && self.bytes == 0
    }
}

/// Deleted paths per reason (see [`ByReason`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanByReason {
    pub unreachable: PlanTally,
    pub expired_generation: PlanTally,
    pub expired_auto_root: PlanTally,
}

impl From<ByReason> for PlanByReason {
    fn from(b: ByReason) -> PlanByReason {
        PlanByReason {
            unreachable: b.unreachable.into(),
            expired_generation: b.expired_generation.into(),
            expired_auto_root: b.expired_auto_root.into(),
        }
    }
}

/// How the budget was applied (see [`BudgetOutcome`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlanBudget {
    pub limit: u64,
    pub already_met: bool,
    pub candidates: PlanTally,
}

impl From<BudgetOutcome> for PlanBudget {
    fn from(b: BudgetOutcome) -> PlanBudget {
        PlanBudget {
            limit: b.limit,
            already_met: b.already_met,
            candidates: b.candidates.into(),
        }
    }
}

/// A root the policy lets go; `apply` removes `link` only if it still reads
/// `points_to`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct ExpiredRoot {
    /// The link that goes: a generation link, or a `gcroots/auto` entry.
    pub link: String,
    /// What `link` pointed to when planned (its `readlink` text).
    pub points_to: String,
    /// The store path the root held.
    pub target: String,
    pub kind: ExpiredKind,
    /// For a generation: the profile link, whose current generation is
    /// never removed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub profile: Option<String>,
    /// Why it expired, in words.
    pub why: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ExpiredKind {
    Generation,
    AutoRoot,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Deletion {
    pub path: String,
    pub nar_size: u64,
    pub registration_time: i64,
    /// Which rule let it go, e.g. `unreachable`.
    pub reason: String,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    pub paths: u64,
    pub nar_bytes: u64,
}

impl std::ops::AddAssign<&Deletion> for Totals {
    fn add_assign(&mut self, d: &Deletion) {
        self.paths += 1;
        self.nar_bytes += d.nar_size;
    }
}

/// The plan's warning when `Realisations` rows were paired with
/// derivations by name rather than by hash modulo.
pub const CA_BY_NAME_WARNING: &str =
    "ca-derivations: outputs matched to derivations by name; keeps at least what Nix keeps";

/// Everything about a plan that is not derived from the graph.
#[derive(Debug, Clone)]
pub struct PlanMeta {
    pub store_dir: StoreDir,
    pub state_dir: String,
    /// Seconds since the epoch; the caller reads the clock.
    pub now: i64,
    pub gc: GcSettings,
    pub ca_derivations: bool,
    pub policy: Option<String>,
    /// The files the policy read (see [`Plan::inputs`]).
    pub inputs: Vec<PlanInput>,
    /// Warnings from reading nix.conf; they come first in the plan's.
    pub settings_warnings: Vec<String>,
    /// Processes whose runtime roots could not be read, sorted; a warning
    /// leads the plan's when there are any.
    pub unreadable_processes: Vec<u32>,
    /// The dead-since state file, when the policy has a rollback window.
    pub state_file: Option<String>,
}

impl Plan {
    /// Assembles a plan from the policy's decision. Pure; O(d log d) for d
    /// deletions (a parallel sort of ids by basename), then one string
    /// per deletion.
    pub fn build(
        meta: &PlanMeta,
        snap: &Snapshot,
        roots: &[Root],
        expired: Vec<ExpiredRoot>,
        decision: &Decision,
    ) -> Plan {
        // Sort by basename (the same order as by full path, all sharing the
        // store dir) before any string is built. The key packs the first 8
        // bytes of the basename big-endian, so integer order is byte order
        // and almost every comparison is one integer compare; equal keys
        // fall back to the whole basename.
        let key = |k: usize| {
            let b = snap.paths.get(decision.delete[k]).as_bytes();
            let mut w = [0u8; 8];
            let n = b.len().min(8);
            w[..n].copy_from_slice(&b[..n]);
            u64::from_be_bytes(w)
        };
        let mut keyed: Vec<(u64, usize)> = (0..decision.delete.len())
            .into_par_iter()
            .map(|k| (key(k), k))
            .collect();
        keyed.par_sort_unstable_by(|&(ka, a), &(kb, b)| {
            ka.cmp(&kb).then_with(|| {
                snap.paths
                    .get(decision.delete[a])
                    .cmp(snap.paths.get(decision.delete[b]))
            })
        });
        let deletions: Vec<Deletion> = keyed
            .into_par_iter()
            .map(|(_, k)| {
                let id = decision.delete[k];
                Deletion {
                    path: meta.store_dir.join(snap.paths.get(id)),
                    nar_size: snap.nar_size[id as usize],
                    registration_time: snap.registration_time[id as usize],
                    reason: decision.reasons[k].as_str().to_string(),
                }
            })
            .collect();
        let mut totals = Totals::default();
        for d in &deletions {
            totals += d;
        }
        let roots: Vec<PlanRoot> = crate::roots::list(roots)
            .iter()
            .map(PlanRoot::from)
            .collect();
        // One entry per link: Nix 2.8's `nix-env -p` also registers each
        // generation under gcroots/auto, so a generation is found twice.
        let mut expired_roots = expired;
        expired_roots.sort();
        expired_roots.dedup_by(|a, b| a.link == b.link);
        Plan {
            version: PLAN_VERSION,
            store_dir: meta.store_dir.to_string(),
            state_dir: meta.state_dir.clone(),
            created: format_time(meta.now),
            settings: PlanSettings {
                keep_outputs: meta.gc.keep_outputs,
                keep_derivations: meta.gc.keep_derivations,
                ca_derivations: meta.ca_derivations,
                policy: meta.policy.clone(),
            },
            inputs: meta.inputs.clone(),
            roots,
            expired_roots,
            delete: deletions,
            totals,
            kept: decision.kept.into(),
            by_reason: decision.by_reason.into(),
            budget: decision.budget.map(PlanBudget::from),
            window: decision.window.map(|w| PlanWindow {
                dead_for_secs: w.dead_for_secs,
                state_file: meta.state_file.clone().unwrap_or_default(),
                first_run: w.first_run,
                tracked_paths: w.tracked,
            }),
            unreadable_processes: meta.unreadable_processes.len() as u64,
            warnings: crate::roots::incomplete_warning(&meta.unreadable_processes)
                .into_iter()
                .chain(meta.settings_warnings.iter().cloned())
                .chain(decision.warnings.iter().cloned())
                .chain(
                    (snap.ca_by_name && meta.gc.keep_outputs)
                        .then(|| CA_BY_NAME_WARNING.to_string()),
                )
                .collect(),
        }
    }
}

/// RFC 3339 (UTC, seconds) of a unix time.
pub fn format_time(unix: i64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(unix.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PathRow;
    use crate::policy::Reason;

    #[test]
    fn build_sorts_and_totals() {
        let rows = vec![
            PathRow {
                basename: format!("{}-b", "b".repeat(32)),
                nar_size: 10,
                registration_time: 5,
                ..Default::default()
            },
            PathRow {
                basename: format!("{}-a", "a".repeat(32)),
                nar_size: 7,
                registration_time: 6,
                ..Default::default()
            },
        ];
        let snap = Snapshot::from_rows(rows, &[], vec![]);
        let meta = PlanMeta {
            store_dir: StoreDir::new("/s"),
            state_dir: "/v".into(),
            now: 86_400,
            gc: GcSettings::default(),
            ca_derivations: false,
            policy: None,
            inputs: vec![],
            settings_warnings: vec!["s".into()],
            unreadable_processes: vec![],
            state_file: None,
        };
        let decision = Decision {
            delete: vec![0, 1],
            reasons: vec![Reason::Unreachable; 2],
            ..Decision::default()
        };
        let plan = Plan::build(&meta, &snap, &[], vec![], &decision);
        assert_eq!(plan.delete[0].path, format!("/s/{}-a", "a".repeat(32)));
        assert_eq!(
            plan.totals,
            Totals {
                paths: 2,
                nar_bytes: 17
            }
        );
        assert_eq!(plan.created, "1970-01-02T00:00:00Z");
        assert_eq!(plan.warnings, vec!["s".to_string()]);
        let json = serde_json::to_string(&plan).unwrap();
        assert!(!json.contains("unreadable_processes"), "{json}");
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
        // Processes that could not be read: counted, and the first warning.
        let meta = PlanMeta {
            unreadable_processes: vec![1, 7],
            ..meta
        };
        let plan = Plan::build(&meta, &snap, &[], vec![], &decision);
        assert_eq!(plan.unreadable_processes, 2);
        assert!(
            plan.warnings[0]
                .starts_with("roots incomplete: 2 processes could not be read (e.g. /proc/1:"),
            "{:?}",
            plan.warnings
        );
        assert_eq!(plan.warnings[1], "s");
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(serde_json::from_str::<Plan>(&json).unwrap(), plan);
    }

    /// A plan of an earlier storegc names one `via` as a string; it reads
    /// as a list of one, and an absent one as none.
    #[test]
    fn a_root_via_reads_as_a_string_or_a_list() {
        let one: PlanRoot = serde_json::from_str(
            r#"{"link": "/l", "target": "/t", "kind": "indirect", "via": "/v/gcroots/auto/x"}"#,
        )
        .unwrap();
        assert_eq!(one.via, vec!["/v/gcroots/auto/x".to_string()]);
        let many: PlanRoot = serde_json::from_str(
            r#"{"link": "/l", "target": "/t", "kind": "profile", "via": ["/a", "/b"]}"#,
        )
        .unwrap();
        assert_eq!(many.via.len(), 2);
        let none: PlanRoot =
            serde_json::from_str(r#"{"link": "/l", "target": "/t", "kind": "gcroot"}"#).unwrap();
        assert!(none.via.is_empty());
    }
}
