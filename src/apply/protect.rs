//! Apply's second look at the plan's policy. Between `plan` and `apply` a
//! CI job may rewrite a closure list (or someone the policy file); apply
//! re-reads the policy and every closure list against the store as it is
//! now, and keeps every planned path they protect now, with its closure.
//! Only protection is re-evaluated: `[select]`, `[[generations]]` and the
//! budget can only have let the plan delete *less*, and apply never deletes
//! more than the plan lists. A policy that no longer loads, or a closure
//! list that cannot be read or names a path outside the store, is refused
//! before anything changes. The rollback window and build closures
//! (`select.dead-for`, `protect.build-closures`) are protections too: a
//! planned path the window keeps now (its state re-read) or that a listed
//! path's build closure holds now stays.

use std::collections::{BTreeMap, HashSet};

use serde::Serialize;

use super::order;
use crate::load::StoreState;
use crate::paths::PathId;
use crate::plan::{Plan, PlanInput};
use crate::policy::{self, Policy, PolicyError};
use crate::settings::Settings;
use crate::store_path::name_of;

/// An input whose digest differs from the plan's, or that only one of the
/// two read.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct InputChange {
    /// `policy` or `closure-list`.
    pub kind: crate::plan::PlanInputKind,
    pub path: String,
    /// The plan's digest (`None`: the plan did not read this file).
    pub planned: Option<String>,
    /// The digest now (`None`: the current policy does not read it).
    pub now: Option<String>,
}

/// What the current policy protects, as far as apply needs it.
#[derive(Debug, Default)]
pub struct Protection {
    /// `None` when the plan was made without a policy.
    policy: Option<Policy>,
    /// Basenames named by the closure lists and `protect.paths` that were
    /// valid when apply read them.
    listed: HashSet<String>,
    /// The plan's rollback window, its state as apply reads it now.
    window: Option<Window>,
}

/// The rollback window at apply time: a planned path whose date in the
/// state (re-read now) is missing or younger than `dead_for` at the plan's
/// time stays, so a state rewritten since the plan (the path was live
/// again) cannot let it go early.
#[derive(Debug)]
struct Window {
    dead_for: i64,
    /// The plan's `created`.
    at: i64,
    /// `None`: the state file is gone (everything counts as new).
    state: Option<crate::deadsince::DeadSince>,
}

impl Window {
    fn keeps(&self, base: &str) -> bool {
        let hash = crate::store_path::hash_of(base);
        match self.state.as_ref().and_then(|s| s.get(hash)) {
            Some(t) => self.at.saturating_sub(t) < self.dead_for,
            None => true,
        }
    }

    /// Reads the state the plan names. Bad state is refused (exit 2)
    /// before anything changes.
    fn read(plan: &Plan) -> Result<Option<Window>, PolicyError> {
        let Some(w) = &plan.window else {
            return Ok(None);
        };
        let at = humantime::parse_rfc3339(&plan.created)
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or(i64::MIN, |d| d.as_secs() as i64);
        let state = crate::deadsince::load(std::path::Path::new(&w.state_file), &plan.store_dir)?;
        Ok(Some(Window {
            dead_for: i64::try_from(w.dead_for_secs).unwrap_or(i64::MAX),
            at,
            state,
        }))
    }
}

/// Re-reads the plan's policy and its closure lists against `before` (the
/// scan made before anything changes), and returns the inputs whose
/// digests changed since the plan, sorted. Cost: the policy engine's
/// [`policy::gather`], plus O(i log i) for i inputs.
pub fn reload(
    plan: &Plan,
    before: &StoreState,
    settings: &Settings,
) -> Result<(Protection, Vec<InputChange>), PolicyError> {
    let Some(file) = &plan.settings.policy else {
        return Ok((Protection::default(), Vec::new()));
    };
    let policy = policy::load_policy(std::path::Path::new(file))?;
    let inputs = policy::gather(
        &policy,
        &before.roots,
        &before.snap,
        &settings.store_dir,
        &settings.state_dir,
    )?;
    let now: Vec<PlanInput> = policy::digest::files_read(&policy, &inputs)
        .iter()
        .map(PlanInput::from)
        .collect();
    let listed = (inputs.closure_list_ids.iter())
        .chain(&inputs.protected_path_ids)
        .map(|&id| before.snap.paths.get(id).to_string())
        .collect();
    let protection = Protection {
        policy: Some(policy),
        listed,
        window: Window::read(plan)?,
    };
    Ok((protection, changes(&plan.inputs, &now)))
}

/// The inputs that differ between the plan's and the current list, by
/// kind and path, sorted. Pure.
pub fn changes(planned: &[PlanInput], now: &[PlanInput]) -> Vec<InputChange> {
    type Key = (crate::plan::PlanInputKind, String);
    let mut both: BTreeMap<Key, (Option<String>, Option<String>)> = BTreeMap::new();
    for p in planned {
        both.entry((p.kind, p.path.clone())).or_default().0 = Some(p.sha256.clone());
    }
    for n in now {
        both.entry((n.kind, n.path.clone())).or_default().1 = Some(n.sha256.clone());
    }
    both.into_iter()
        .filter(|(_, (p, n))| p != n)
        .map(|((kind, path), (planned, now))| InputChange {
            kind,
            path,
            planned,
            now,
        })
        .collect()
}

impl Protection {
    /// Drops from `deletable` every path the current policy protects (a
    /// listed path, a path matching `protect.names`) and everything it
    /// keeps in `state`'s graph. Returns the paths dropped, sorted. Only
    /// deletable paths need checking: the others already keep their
    /// closures. O(n · globs) for the names, O(n + e) for the closure.
    pub fn keep(
        &self,
        state: &StoreState,
        settings: &Settings,
        deletable: &mut [bool],
    ) -> Vec<String> {
        let Some(policy) = &self.policy else {
            return Vec::new();
        };
        let names = &policy.protect.names;
        let window = |base: &str| self.window.as_ref().is_some_and(|w| w.keeps(base));
        let mut seeds: Vec<PathId> = (0..deletable.len() as PathId)
            .filter(|&id| deletable[id as usize])
            .filter(|&id| {
                let base = state.snap.paths.get(id);
                self.listed.contains(base)
                    || (!names.is_empty() && names.is_match(name_of(base)))
                    || window(base)
            })
            .collect();
        if policy.protect.build_closures {
            let listed: Vec<PathId> = (self.listed.iter())
                .filter_map(|b| state.snap.paths.lookup(b))
                .collect();
            seeds.extend(
                policy::build_closure(&state.snap, &listed)
                    .into_iter()
                    .filter(|&id| deletable[id as usize]),
            );
        }
        order::drop_kept(&state.graph, deletable, &seeds)
            .into_iter()
            .map(|id| settings.store_dir.join(state.snap.paths.get(id)))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::PlanInputKind;

    fn input(kind: PlanInputKind, path: &str, sha: &str) -> PlanInput {
        PlanInput {
            kind,
            path: path.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn changes_name_the_inputs_that_differ() {
        let planned = [
            input(PlanInputKind::Policy, "/p.toml", "1"),
            input(PlanInputKind::ClosureList, "/a.txt", "2"),
            input(PlanInputKind::ClosureList, "/gone.txt", "3"),
        ];
        let now = [
            input(PlanInputKind::Policy, "/p.toml", "1"),
            input(PlanInputKind::ClosureList, "/a.txt", "9"),
            input(PlanInputKind::ClosureList, "/new.txt", "4"),
        ];
        let c = changes(&planned, &now);
        let seen: Vec<_> = c
            .iter()
            .map(|c| (c.path.as_str(), c.planned.as_deref(), c.now.as_deref()))
            .collect();
        assert_eq!(
            seen,
            vec![
                ("/a.txt", Some("2"), Some("9")),
                ("/gone.txt", Some("3"), None),
                ("/new.txt", None, Some("4")),
            ]
        );
        assert!(changes(&planned, &planned).is_empty());
    }
}
