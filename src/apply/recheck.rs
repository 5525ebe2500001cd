//! The re-check step of apply: after root removal, the store is read
//! again (a real run honours every root found then) and only the planned
//! paths that are still valid and dead in the current graph may go, closed
//! under referrers. Pure once the store is read.

use std::collections::HashSet;

use super::{order, ApplyOptions, ApplyReport};
use crate::load::{load, LoadError, StoreState};
use crate::paths::{PathId, NO_PATH};
use crate::settings::Settings;

/// The store as apply deletes from it, with the roots that hold paths now.
pub struct Current {
    pub state: StoreState,
    pub roots: Vec<PathId>,
}

/// The store after root removal. A real run that removed roots reads the
/// store again and honours every root found, including one re-created
/// meanwhile (`nix-build -o result` again makes the same `gcroots/auto`
/// entry). A dry run (or a run that removed nothing) reuses `before`; in a
/// dry run the links it would remove are still on disk, so their roots are
/// left out.
pub fn current_store(
    before: StoreState,
    dropped: &HashSet<String>,
    settings: &Settings,
    opts: &ApplyOptions,
) -> Result<Current, LoadError> {
    let state = if opts.dry_run || dropped.is_empty() {
        before
    } else {
        load(settings, &opts.load)?
    };
    let roots = roots_now(&state, &ignored_links(opts.dry_run, dropped));
    Ok(Current { state, roots })
}

/// The links whose roots the re-check leaves out: in a dry run the ones it
/// would have removed (still on disk); in a real run none, since the store
/// was read again after removal and a link found then is a root now.
fn ignored_links(dry_run: bool, dropped: &HashSet<String>) -> HashSet<String> {
    if dry_run {
        dropped.clone()
    } else {
        HashSet::new()
    }
}

/// The ids held by the roots in `state`, except those whose link (or, for
/// an indirect root, whose `gcroots` entry) is in `ignore`. O(r).
fn roots_now(state: &StoreState, ignore: &HashSet<String>) -> Vec<PathId> {
    state
        .root_ids
        .iter()
        .filter(|&&(i, _)| {
            let r = &state.roots[i];
            !(ignore.contains(&r.link) || r.via.as_ref().is_some_and(|v| ignore.contains(v)))
        })
        .map(|&(_, id)| id)
        .collect()
}

/// Which planned paths may still go: valid now and dead in the current
/// graph, closed under referrers. Reports the others.
pub fn recheck(
    plan: &crate::plan::Plan,
    current: &Current,
    settings: &Settings,
    report: &mut ApplyReport,
) -> Vec<bool> {
    let state = &current.state;
    let n = state.snap.len();
    let mut planned = vec![false; n];
    for d in &plan.delete {
        let id = settings
            .store_dir
            .store_path_of(&d.path)
            .ok()
            .and_then(|b| state.snap.paths.lookup(b))
            .unwrap_or(NO_PATH);
        if id == NO_PATH {
            report.already_gone += 1;
        } else {
            planned[id as usize] = true;
        }
    }
    let deletable = order::recheck(&state.graph, &planned, &current.roots);
    for id in 0..n {
        if planned[id] && !deletable[id] {
            report
                .skipped_live
                .push(settings.store_dir.join(state.snap.paths.get(id as PathId)));
        }
    }
    deletable
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins a bug: the dry run's filter ran in real runs too, so a
    /// `gcroots/auto` entry re-created by `nix-build -o result` between
    /// removal and the re-scan was ignored and its new build deleted.
    #[test]
    fn a_real_run_honours_every_root_found_after_removal() {
        let dropped = HashSet::from(["/v/gcroots/auto/h".to_string()]);
        assert!(ignored_links(false, &dropped).is_empty());
        assert_eq!(ignored_links(true, &dropped), dropped);
    }
}
