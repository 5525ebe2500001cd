//! The pure half of `apply`: which planned paths may still go, given the
//! store as it is now, and in what order and batches they go to Nix.

use crate::graph::{live_set_parallel, Graph};
use crate::paths::PathId;

/// What may be deleted now: the planned paths that are still dead, shrunk
/// so the set is closed under referrers in the current graph.
///
/// `planned[id]` marks the plan's paths (by their current ids); `roots` are
/// the roots found now. The keep set is the closure of the roots and of
/// every path that is not planned; its complement is returned, so a root
/// that appeared after planning, or a new referrer of a planned path, keeps
/// that path and everything it keeps. O(n + e).
pub fn recheck(graph: &Graph, planned: &[bool], roots: &[PathId]) -> Vec<bool> {
    let mut seeds: Vec<PathId> = roots.to_vec();
    seeds.extend((0..graph.node_count() as PathId).filter(|&id| !planned[id as usize]));
    let keep = live_set_parallel(graph, &seeds);
    keep.into_iter().map(|k| !k).collect()
}

/// Drops from `deletable` every path that `survivors` (planned paths Nix
/// refused or failed to delete, still on disk) keep: their closure. Returns
/// the paths dropped that were deletable, survivors included, sorted. One
/// pass for any number of survivors: O(n + e).
pub fn drop_kept(graph: &Graph, deletable: &mut [bool], survivors: &[PathId]) -> Vec<PathId> {
    if survivors.is_empty() {
        return Vec::new();
    }
    let keep = live_set_parallel(graph, survivors);
    let mut dropped = Vec::new();
    for (id, k) in keep.into_iter().enumerate() {
        if k && deletable[id] {
            deletable[id] = false;
            dropped.push(id as PathId);
        }
    }
    dropped
}

/// Cuts the deletable set into batches for `nix-store --delete`, referrers
/// first: every path comes in the same batch as, or a later batch than,
/// every deletable path that keeps it, so each batch is closed under
/// referrers once the earlier ones are gone (what Nix requires). Cycles
/// (a `.drv` and its outputs under both keep-* settings) stay in one batch.
///
/// A batch holds at most `max_paths` paths and at most `max_bytes` bytes of
/// argument text (`arg_len(id)` + 1 per path), so it fits under ARG_MAX.
/// Cost: O(n + e) for the induced subgraph and Tarjan's SCCs (iterative,
/// see [`super::scc`]).
pub fn batches(
    graph: &Graph,
    deletable: &[bool],
    max_paths: usize,
    max_bytes: usize,
    arg_len: impl Fn(PathId) -> usize,
) -> Vec<Vec<PathId>> {
    let (sub, old) = graph.induced(|id| deletable[id as usize]);
    // Tarjan yields SCCs in post-order: a component after everything it
    // keeps. Referrers first is the reverse.
    let sccs = super::scc::sccs(&sub);
    let mut out: Vec<Vec<PathId>> = Vec::new();
    let mut cur: Vec<PathId> = Vec::new();
    let mut cur_bytes = 0usize;
    for scc in sccs.into_iter().rev() {
        let mut ids: Vec<PathId> = scc.into_iter().map(|n| old[n as usize]).collect();
        ids.sort_unstable();
        let bytes: usize = ids.iter().map(|&id| arg_len(id) + 1).sum();
        if !cur.is_empty() && (cur.len() + ids.len() > max_paths || cur_bytes + bytes > max_bytes) {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur.extend(ids);
        cur_bytes += bytes;
    }
    if !cur.is_empty() {
        out.push(cur);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn recheck_keeps_new_roots_and_new_referrers() {
        // 0 -> 1 -> 2, 3 -> 2; planned {1, 2, 3}
        let g = Graph::from_edges(4, &[(0, 1), (1, 2), (3, 2)]);
        let planned = [false, true, true, true];
        // 0 is not planned (kept), so 1 and 2 stay; 3 goes.
        assert_eq!(recheck(&g, &planned, &[]), vec![false, false, false, true]);
        let planned = [true, true, true, true];
        // 3 became a root: 2 stays with it.
        assert_eq!(recheck(&g, &planned, &[3]), vec![true, true, false, false]);
    }

    #[test]
    fn drop_kept_drops_the_closure_of_the_survivors_only() {
        // 0 -> 1 -> 2, 3 -> 4; all deletable, 1 survived a refused batch.
        let g = Graph::from_edges(5, &[(0, 1), (1, 2), (3, 4)]);
        let mut d = vec![true; 5];
        assert_eq!(drop_kept(&g, &mut d, &[1]), vec![1, 2]);
        assert_eq!(d, vec![true, false, false, true, true]);
        assert!(drop_kept(&g, &mut d, &[]).is_empty());
    }

    #[test]
    fn batches_go_referrers_first_and_keep_cycles_whole() {
        // 0 -> 1 -> 2, 2 <-> 3 (a cycle), 4 alone
        let g = Graph::from_edges(5, &[(0, 1), (1, 2), (2, 3), (3, 2)]);
        let all = [true; 5];
        let b = batches(&g, &all, 2, usize::MAX, |_| 10);
        let pos = |id: PathId| b.iter().position(|batch| batch.contains(&id)).unwrap();
        assert!(pos(0) <= pos(1) && pos(1) <= pos(2));
        assert_eq!(pos(2), pos(3), "a cycle is split: {b:?}");
        assert_eq!(b.iter().map(Vec::len).sum::<usize>(), 5);
        // Byte limit: each path takes 11 bytes, so 2 fit in 25.
        let b = batches(&g, &[true, true, false, false, true], 100, 25, |_| 10);
        assert!(b.iter().all(|x| x.len() <= 2));
    }

    proptest! {
        #[test]
        fn every_batch_is_closed_under_referrers_after_earlier_ones(
            n in 1usize..120,
            raw in proptest::collection::vec((0u32..120, 0u32..120), 0..300),
            mask in proptest::collection::vec(any::<bool>(), 120),
            max_paths in 1usize..20,
        ) {
            let edges: Vec<(PathId, PathId)> = raw.into_iter()
                .filter(|&(a, b)| (a as usize) < n && (b as usize) < n)
                .collect();
            let g = Graph::from_edges(n, &edges);
            let planned: Vec<bool> = mask[..n].to_vec();
            let deletable = recheck(&g, &planned, &[]);
            // Closed under referrers: a kept node never keeps a deletable one.
            for &(a, b) in &edges {
                prop_assert!(deletable[a as usize] || !deletable[b as usize]);
            }
            let bs = batches(&g, &deletable, max_paths, usize::MAX, |_| 1);
            let mut gone = vec![false; n];
            for batch in &bs {
                for &id in batch { gone[id as usize] = true; }
                // After this batch, nothing still present keeps a gone path.
                for &(a, b) in &edges {
                    prop_assert!(!gone[b as usize] || gone[a as usize]);
                }
            }
            prop_assert_eq!(gone, deletable);
        }
    }
}
