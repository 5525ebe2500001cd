//! The liveness graph: one compressed-row adjacency over dense path ids,
//! where an edge `u -> v` means "while `u` is alive, `v` is alive".
//!
//! Edges are the store references plus the two kinds Nix adds from
//! `nix.conf` (Nix `src/libstore/gc.cc`, `computeFSClosure`):
//! - `keep-derivations`: an output keeps its deriver (the `.drv` named in
//!   its `ValidPaths.deriver`, when that `.drv` is valid);
//! - `keep-outputs`: a `.drv` keeps its valid outputs listed in
//!   `DerivationOutputs`.
//!
//! On the keep-derivations edge, Nix's two traversals disagree in one corner
//! case: marking alive follows `deriver` alone, while the deletion walk also
//! asks that the `.drv` list the output in `DerivationOutputs`; which one
//! wins depends on directory order. We take the first, the superset, so
//! storegc never calls dead what Nix may keep.
//!
//! [`Graph`] implements petgraph's visit traits, so petgraph's algorithms
//! (dominators, reference searches in tests) run on it directly.

use std::sync::atomic::{AtomicBool, Ordering};

use petgraph::visit::{
    GraphBase, IntoNeighbors, IntoNodeIdentifiers, NodeCount, NodeIndexable, Visitable,
};
use rayon::prelude::*;

use crate::db::Snapshot;
use crate::paths::{PathId, NO_PATH};
use crate::settings::GcSettings;

/// Why one path keeps another.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum EdgeKind {
    Reference,
    KeepDerivations,
    KeepOutputs,
}

/// Adjacency in compressed rows: successors of `u` are
/// `targets[start[u]..start[u + 1]]`.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    start: Vec<u32>,
    targets: Vec<PathId>,
}

impl Graph {
    /// Builds the graph from a snapshot and Nix's keep-* settings.
    ///
    /// Cost: O(n + e) time, one pass; memory 4 bytes a node and 4 an edge.
    pub fn build(snap: &Snapshot, gc: GcSettings) -> Graph {
        let n = snap.len();
        let extra = if gc.keep_derivations { n } else { 0 }
            + if gc.keep_outputs {
                snap.drv_outputs.len()
            } else {
                0
            };
        let mut start = Vec::with_capacity(n + 1);
        let mut targets = Vec::with_capacity(snap.ref_targets.len() + extra);
        let mut outs = snap.drv_outputs.iter().peekable();
        start.push(0u32);
        for u in 0..n as PathId {
            targets.extend_from_slice(snap.references(u));
            if gc.keep_derivations {
                let d = snap.deriver[u as usize];
                if d != NO_PATH && d != u {
                    targets.push(d);
                }
            }
            while let Some(&&(drv, out)) = outs.peek() {
                if drv != u {
                    break;
                }
                if gc.keep_outputs && out != u {
                    targets.push(out);
                }
                outs.next();
            }
            start.push(targets.len() as u32);
        }
        Graph { start, targets }
    }

    /// A graph from explicit edges (tests, generators).
    pub fn from_edges(n: usize, edges: &[(PathId, PathId)]) -> Graph {
        let (start, targets) = crate::db::compress_rows(n, edges);
        Graph { start, targets }
    }

    pub fn node_count(&self) -> usize {
        self.start.len().saturating_sub(1)
    }

    pub fn edge_count(&self) -> usize {
        self.targets.len()
    }

    /// What `u` keeps alive.
    #[inline]
    pub fn successors(&self, u: PathId) -> &[PathId] {
        let i = u as usize;
        &self.targets[self.start[i] as usize..self.start[i + 1] as usize]
    }

    /// The subgraph induced by the ids where `keep(id)` holds, with ids
    /// renumbered densely; returns it and the original id of each new one.
    /// O(n + e).
    pub fn induced(&self, keep: impl Fn(PathId) -> bool) -> (Graph, Vec<PathId>) {
        let mut new_id = vec![NO_PATH; self.node_count()];
        let mut old: Vec<PathId> = Vec::new();
        for u in 0..self.node_count() as PathId {
            if keep(u) {
                new_id[u as usize] = old.len() as PathId;
                old.push(u);
            }
        }
        let mut edges = Vec::new();
        for (nu, &u) in old.iter().enumerate() {
            for &v in self.successors(u) {
                let nv = new_id[v as usize];
                if nv != NO_PATH {
                    edges.push((nu as PathId, nv));
                }
            }
        }
        (Graph::from_edges(old.len(), &edges), old)
    }

    /// The reverse graph (who keeps `v` alive). O(n + e).
    pub fn reversed(&self) -> Graph {
        let mut edges = Vec::with_capacity(self.targets.len());
        for u in 0..self.node_count() as PathId {
            edges.extend(self.successors(u).iter().map(|&v| (v, u)));
        }
        Graph::from_edges(self.node_count(), &edges)
    }
}

/// Which kind of edge `from -> to` is, preferring a reference. `None` when
/// the graph has no such edge under these settings.
pub fn edge_kind(snap: &Snapshot, gc: GcSettings, from: PathId, to: PathId) -> Option<EdgeKind> {
    if snap.references(from).binary_search(&to).is_ok() {
        Some(EdgeKind::Reference)
    } else if gc.keep_derivations && snap.deriver[from as usize] == to {
        Some(EdgeKind::KeepDerivations)
    } else if gc.keep_outputs && snap.drv_outputs.binary_search(&(from, to)).is_ok() {
        Some(EdgeKind::KeepOutputs)
    } else {
        None
    }
}

/// Everything reachable from `roots`, one thread: an explicit-stack DFS.
///
/// Cost: O(n + e) time, n bytes. Invariant: `live[v]` iff some root reaches
/// `v`. This is the reference the parallel version is tested against.
pub fn live_set_sequential(g: &Graph, roots: &[PathId]) -> Vec<bool> {
    let mut live = vec![false; g.node_count()];
    let mut stack: Vec<PathId> = Vec::new();
    for &r in roots {
        if !live[r as usize] {
            live[r as usize] = true;
            stack.push(r);
        }
    }
    while let Some(u) = stack.pop() {
        for &v in g.successors(u) {
            if !live[v as usize] {
                live[v as usize] = true;
                stack.push(v);
            }
        }
    }
    live
}

/// Frontiers below this size are expanded on one thread.
const PAR_FRONTIER: usize = 4096;

/// Everything reachable from `roots`, frontier-parallel BFS on rayon.
///
/// Each level's frontier is split across threads; a node is claimed by the
/// thread whose atomic swap flips its flag, so each node is expanded once.
/// Cost: O(n + e) work, O(depth) synchronisation points. Same result as
/// [`live_set_sequential`].
pub fn live_set_parallel(g: &Graph, roots: &[PathId]) -> Vec<bool> {
    let live: Vec<AtomicBool> = (0..g.node_count())
        .map(|_| AtomicBool::new(false))
        .collect();
    let claim = |v: PathId| {
        !live[v as usize].load(Ordering::Relaxed) && !live[v as usize].swap(true, Ordering::Relaxed)
    };
    let mut frontier: Vec<PathId> = roots.iter().copied().filter(|&r| claim(r)).collect();
    while !frontier.is_empty() {
        frontier = if frontier.len() < PAR_FRONTIER {
            let mut next = Vec::new();
            for &u in &frontier {
                next.extend(g.successors(u).iter().copied().filter(|&v| claim(v)));
            }
            next
        } else {
            frontier
                .par_chunks(1024)
                .flat_map_iter(|chunk| {
                    let mut next = Vec::new();
                    for &u in chunk {
                        next.extend(g.successors(u).iter().copied().filter(|&v| claim(v)));
                    }
                    next
                })
                .collect()
        };
    }
    live.into_iter().map(AtomicBool::into_inner).collect()
}

// petgraph visit traits, so petgraph's algorithms run on the graph as is.

impl GraphBase for Graph {
    type NodeId = PathId;
    type EdgeId = (PathId, PathId);
}

impl<'a> IntoNeighbors for &'a Graph {
    type Neighbors = std::iter::Copied<std::slice::Iter<'a, PathId>>;
    fn neighbors(self, a: PathId) -> Self::Neighbors {
        self.successors(a).iter().copied()
    }
}

impl IntoNodeIdentifiers for &Graph {
    type NodeIdentifiers = std::ops::Range<PathId>;
    fn node_identifiers(self) -> Self::NodeIdentifiers {
        0..self.node_count() as PathId
    }
}

impl Visitable for Graph {
    type Map = fixedbitset::FixedBitSet;
    fn visit_map(&self) -> Self::Map {
        fixedbitset::FixedBitSet::with_capacity(self.node_count())
    }
    fn reset_map(&self, map: &mut Self::Map) {
        map.clear();
        map.grow(self.node_count());
    }
}

impl NodeCount for Graph {
    fn node_count(&self) -> usize {
        Graph::node_count(self)
    }
}

impl NodeIndexable for Graph {
    fn node_bound(&self) -> usize {
        Graph::node_count(self)
    }
    fn to_index(&self, a: PathId) -> usize {
        a as usize
    }
    fn from_index(&self, i: usize) -> PathId {
        i as PathId
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use petgraph::visit::Dfs;
    use proptest::prelude::*;

    fn naive_live(n: usize, edges: &[(PathId, PathId)], roots: &[PathId]) -> Vec<bool> {
        // Reference: petgraph's own DFS over a petgraph::Graph built edge by edge.
        let mut pg = petgraph::Graph::<(), ()>::new();
        let ids: Vec<_> = (0..n).map(|_| pg.add_node(())).collect();
        for &(a, b) in edges {
            pg.add_edge(ids[a as usize], ids[b as usize], ());
        }
        let mut live = vec![false; n];
        for &r in roots {
            let mut dfs = Dfs::new(&pg, ids[r as usize]);
            while let Some(v) = dfs.next(&pg) {
                live[v.index()] = true;
            }
        }
        live
    }

    fn graph_strategy() -> impl Strategy<Value = (usize, Vec<(PathId, PathId)>, Vec<PathId>)> {
        (1usize..300).prop_flat_map(|n| {
            let e = proptest::collection::vec((0..n as PathId, 0..n as PathId), 0..n * 3);
            let r = proptest::collection::vec(0..n as PathId, 0..8);
            (Just(n), e, r)
        })
    }

    proptest! {
        #[test]
        fn liveness_equals_naive_reference((n, edges, roots) in graph_strategy()) {
            let g = Graph::from_edges(n, &edges);
            let want = naive_live(n, &edges, &roots);
            prop_assert_eq!(&live_set_sequential(&g, &roots), &want);
            prop_assert_eq!(&live_set_parallel(&g, &roots), &want);
        }

        #[test]
        fn nothing_reachable_from_a_root_is_dead((n, edges, roots) in graph_strategy()) {
            let g = Graph::from_edges(n, &edges);
            let live = live_set_parallel(&g, &roots);
            for &(a, b) in &edges {
                prop_assert!(!live[a as usize] || live[b as usize]);
            }
            for &r in &roots {
                prop_assert!(live[r as usize]);
            }
        }
    }

    #[test]
    fn parallel_path_handles_wide_frontiers() {
        // A root fanning out to many nodes exercises the rayon branch.
        let n = 20_000;
        let mut edges: Vec<(PathId, PathId)> = (1..10_000).map(|v| (0, v)).collect();
        edges.extend((1..10_000).map(|v| (v, v + 10_000)));
        let g = Graph::from_edges(n, &edges);
        assert_eq!(live_set_parallel(&g, &[0]), live_set_sequential(&g, &[0]));
        assert_eq!(
            live_set_parallel(&g, &[0]).iter().filter(|&&b| b).count(),
            19_999
        );
    }

    #[test]
    fn keep_settings_add_edges() {
        use crate::db::{PathRow, Snapshot};
        let b = |c: char, n: &str| format!("{}-{n}", c.to_string().repeat(32));
        let rows = vec![
            PathRow {
                basename: b('a', "x.drv"),
                ..Default::default()
            },
            PathRow {
                basename: b('b', "x"),
                deriver: Some(b('a', "x.drv")),
                ..Default::default()
            },
            PathRow {
                basename: b('c', "x-dev"),
                deriver: Some(b('a', "x.drv")),
                ..Default::default()
            },
        ];
        let snap = Snapshot::from_rows(rows, &[], vec![(0, 1), (0, 2)]);
        let none = GcSettings {
            keep_outputs: false,
            keep_derivations: false,
        };
        assert_eq!(Graph::build(&snap, none).edge_count(), 0);
        let kd = Graph::build(
            &snap,
            GcSettings {
                keep_outputs: false,
                keep_derivations: true,
            },
        );
        assert_eq!(kd.successors(1), &[0]);
        assert_eq!(kd.successors(0), &[] as &[PathId]);
        let ko = Graph::build(
            &snap,
            GcSettings {
                keep_outputs: true,
                keep_derivations: false,
            },
        );
        assert_eq!(ko.successors(0), &[1, 2]);
        assert_eq!(
            edge_kind(
                &snap,
                GcSettings {
                    keep_outputs: true,
                    keep_derivations: true
                },
                0,
                2
            ),
            Some(EdgeKind::KeepOutputs)
        );
        assert_eq!(edge_kind(&snap, none, 0, 2), None);
    }
}
