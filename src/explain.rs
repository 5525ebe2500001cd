//! Why is a path alive? The shortest chain of real edges from a root (or
//! from another labelled source) down to the path.
//!
//! "Why is this path alive?" is the question Nix users ask most about
//! garbage collection. The answer a person can check is a chain: the root's
//! link, the root's store path, then each store path down to the one asked
//! about, every step an edge Nix itself follows (a reference, or the
//! keep-derivations / keep-outputs edge of `nix.conf`). One breadth-first
//! search from every source at once gives the shortest such chain.
//!
//! Sources are either roots or labelled seed paths, so the same search
//! explains paths the policy protects ("kept by closure list X", "not
//! selected by the policy") as well as paths Nix keeps.
//!
//! The search is deterministic: sources are taken in their sorted order
//! (roots by index, and `StoreState::roots` is sorted by link, before seeds
//! by label), successors in id order. Pure: no file system, no clock.

use hashbrown::HashMap;
use serde::Serialize;

use crate::db::Snapshot;
use crate::graph::{edge_kind, EdgeKind, Graph};
use crate::paths::{PathId, NO_PATH};
use crate::settings::GcSettings;

/// Where a chain starts.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    /// A GC root: an index into `StoreState::roots`.
    Root(usize),
    /// A path kept for another reason, named by `label` (a closure list, a
    /// policy rule, "not selected by the policy").
    Seed { label: String },
}

/// One store path of a chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Step {
    pub path: PathId,
    /// The kind of the edge from the previous step to this one; `None` for
    /// the first step (the source's own path).
    pub edge: Option<EdgeKind>,
}

/// A shortest chain from a source to a target: `steps[0]` is the path the
/// source holds, the last step is the target, and each step is kept alive
/// by the one before it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Chain {
    pub source: Source,
    pub steps: Vec<Step>,
}

/// The shortest chain from any of `sources` to `target`, or `None` when no
/// source reaches it (or `target` is not a node).
///
/// `graph` must be `Graph::build(snap, gc)`: each step's edge kind comes
/// from [`edge_kind`] on `snap` and `gc`, preferring a reference when an
/// edge is of several kinds. Sources whose path is not a node are ignored;
/// a source may share its path with others.
///
/// Invariant: the chain has `d + 1` steps, where `d` is the least number
/// of edges from any source's path to `target`; its source is the first,
/// in sorted `(Source, path)` order, of the sources at that distance; the
/// same inputs give the same chain.
///
/// Cost: one multi-source BFS, stopping when `target` is found: O(n + e)
/// time, 4 bytes a node, plus O(s log s) to sort s sources.
pub fn shortest_chain(
    graph: &Graph,
    snap: &Snapshot,
    gc: GcSettings,
    sources: &[(Source, PathId)],
    target: PathId,
) -> Option<Chain> {
    if target as usize >= graph.node_count() {
        return None;
    }
    let order = source_order(graph, sources);
    let parent = search(graph, sources, &order, Some(target));
    if parent[target as usize] == NO_PATH {
        return None;
    }
    let steps = steps_to(&parent, snap, gc, target);
    let start = steps[0].path;
    let first = order.iter().copied().find(|&i| sources[i].1 == start)?;
    Some(Chain {
        source: sources[first].0.clone(),
        steps,
    })
}

/// The shortest-chain forest of one full search, to explain many paths
/// with one BFS (reports that explain every protected path, or say which
/// source keeps each one).
///
/// Same order, chains and invariant as [`shortest_chain`], which is this
/// search stopped early.
#[derive(Debug)]
pub struct Reach<'a> {
    sources: &'a [(Source, PathId)],
    /// BFS parent of each reached node; a source's path is its own parent;
    /// `NO_PATH` when unreached.
    parent: Vec<PathId>,
    /// The first source, in sorted order, of each source path.
    first_source: HashMap<PathId, usize>,
}

impl<'a> Reach<'a> {
    /// Searches from every source. Cost: O(n + e) time, 4 bytes a node,
    /// plus O(s log s) to sort s sources.
    pub fn new(graph: &Graph, sources: &'a [(Source, PathId)]) -> Reach<'a> {
        let order = source_order(graph, sources);
        let parent = search(graph, sources, &order, None);
        let mut first_source = HashMap::new();
        for &i in &order {
            first_source.entry(sources[i].1).or_insert(i);
        }
        Reach {
            sources,
            parent,
            first_source,
        }
    }

    /// Whether some source reaches `path`. O(1).
    pub fn reaches(&self, path: PathId) -> bool {
        self.parent
            .get(path as usize)
            .is_some_and(|&p| p != NO_PATH)
    }

    /// The source whose chain reaches `path`. O(chain length).
    pub fn source_of(&self, path: PathId) -> Option<&'a Source> {
        if !self.reaches(path) {
            return None;
        }
        let mut v = path;
        while self.parent[v as usize] != v {
            v = self.parent[v as usize];
        }
        let i = *self.first_source.get(&v)?;
        Some(&self.sources[i].0)
    }

    /// The shortest chain to `target`, as [`shortest_chain`] gives it.
    /// `snap` and `gc` must be those the graph was built from.
    /// O(chain length × log degree).
    pub fn chain(&self, snap: &Snapshot, gc: GcSettings, target: PathId) -> Option<Chain> {
        let source = self.source_of(target)?.clone();
        Some(Chain {
            source,
            steps: steps_to(&self.parent, snap, gc, target),
        })
    }
}

/// Indices of the sources whose path is a node, in sorted `(Source,
/// path)` order. O(s log s).
fn source_order(graph: &Graph, sources: &[(Source, PathId)]) -> Vec<usize> {
    let n = graph.node_count();
    let mut order: Vec<usize> = (0..sources.len())
        .filter(|&i| (sources[i].1 as usize) < n)
        .collect();
    order.sort_by(|&a, &b| sources[a].cmp(&sources[b]).then(a.cmp(&b)));
    order
}

/// Multi-source BFS: the parent of each reached node (a source's path is
/// its own parent; `NO_PATH` when unreached). Sources enter the queue in
/// `order`; each node's successors are visited in id order. Stops as soon
/// as `stop` is reached.
///
/// Invariant: a node's BFS depth is its least distance from any source,
/// and the queue stays sorted by (depth, rank of the node's source), so
/// each node's source is the first-ranked source at that least distance.
/// Cost: O(n + e), plus sorting rows the graph does not keep sorted.
fn search(
    graph: &Graph,
    sources: &[(Source, PathId)],
    order: &[usize],
    stop: Option<PathId>,
) -> Vec<PathId> {
    let mut parent = vec![NO_PATH; graph.node_count()];
    let mut queue: Vec<PathId> = Vec::new();
    for &i in order {
        let p = sources[i].1;
        if parent[p as usize] == NO_PATH {
            parent[p as usize] = p;
            queue.push(p);
        }
    }
    let found = |parent: &[PathId]| stop.is_some_and(|t| parent[t as usize] != NO_PATH);
    if found(&parent) {
        return parent;
    }
    let mut row: Vec<PathId> = Vec::new();
    let mut head = 0;
    while let Some(&u) = queue.get(head) {
        head += 1;
        let mut succ = graph.successors(u);
        if !succ.windows(2).all(|w| w[0] <= w[1]) {
            row.clear();
            row.extend_from_slice(succ);
            row.sort_unstable();
            succ = &row;
        }
        for &v in succ {
            if parent[v as usize] == NO_PATH {
                parent[v as usize] = u;
                queue.push(v);
                if stop == Some(v) {
                    return parent;
                }
            }
        }
    }
    parent
}

/// The steps from `target`'s source path down to `target`, following
/// `parent`, each labelled with its edge kind. O(length × log degree).
fn steps_to(parent: &[PathId], snap: &Snapshot, gc: GcSettings, target: PathId) -> Vec<Step> {
    let mut path = vec![target];
    let mut v = target;
    while parent[v as usize] != v {
        v = parent[v as usize];
        path.push(v);
    }
    path.reverse();
    let mut steps = Vec::with_capacity(path.len());
    steps.push(Step {
        path: path[0],
        edge: None,
    });
    for w in path.windows(2) {
        let edge = edge_kind(snap, gc, w[0], w[1]);
        debug_assert!(edge.is_some(), "graph not built from this snapshot");
        steps.push(Step { path: w[1], edge });
    }
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PathRow;
    use proptest::prelude::*;

    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

    /// A valid basename for id `i`: a hash part spelling `i` in base 32.
    fn basename(i: usize, name: &str) -> String {
        let mut hash = vec![b'0'; 32];
        let mut x = i;
        for c in hash.iter_mut().rev() {
            *c = ALPHABET[x % 32];
            x /= 32;
        }
        format!("{}-{name}", String::from_utf8(hash).unwrap())
    }

    /// A snapshot of `n` paths with the given references, derivers (by id)
    /// and `(drv, output)` pairs.
    fn snapshot(
        n: usize,
        refs: &[(PathId, PathId)],
        derivers: &[Option<PathId>],
        outputs: &[(PathId, PathId)],
    ) -> Snapshot {
        let rows = (0..n)
            .map(|i| PathRow {
                basename: basename(i, &format!("p{i}")),
                nar_size: 1,
                deriver: derivers
                    .get(i)
                    .copied()
                    .flatten()
                    .map(|d| basename(d as usize, &format!("p{d}"))),
                ..Default::default()
            })
            .collect();
        Snapshot::from_rows(rows, refs, outputs.to_vec())
    }

    const BOTH: GcSettings = GcSettings {
        keep_outputs: true,
        keep_derivations: true,
    };

    fn paths(chain: &Chain) -> Vec<PathId> {
        chain.steps.iter().map(|s| s.path).collect()
    }

    fn edges(chain: &Chain) -> Vec<Option<EdgeKind>> {
        chain.steps.iter().map(|s| s.edge).collect()
    }

    /// 0: profile closure top, references 1 (an output of drv 2);
    /// 2 (a .drv) has outputs 1 and 3; 3 references 4; 5 is unreachable.
    fn drv_store() -> Snapshot {
        snapshot(
            6,
            &[(0, 1), (3, 4)],
            &[None, Some(2), None, Some(2), None, None],
            &[(2, 1), (2, 3)],
        )
    }

    #[test]
    fn chain_follows_keep_derivations_and_keep_outputs_edges() {
        let snap = drv_store();
        let graph = Graph::build(&snap, BOTH);
        let sources = [(Source::Root(0), 0)];
        let chain = shortest_chain(&graph, &snap, BOTH, &sources, 4).unwrap();
        assert_eq!(chain.source, Source::Root(0));
        assert_eq!(paths(&chain), [0, 1, 2, 3, 4]);
        assert_eq!(
            edges(&chain),
            [
                None,
                Some(EdgeKind::Reference),
                Some(EdgeKind::KeepDerivations),
                Some(EdgeKind::KeepOutputs),
                Some(EdgeKind::Reference),
            ]
        );
        let reach = Reach::new(&graph, &sources);
        assert_eq!(reach.chain(&snap, BOTH, 4), Some(chain));
        assert!(!reach.reaches(5));
    }

    #[test]
    fn without_keep_settings_the_drv_is_not_reached() {
        let snap = drv_store();
        let gc = GcSettings {
            keep_outputs: false,
            keep_derivations: false,
        };
        let graph = Graph::build(&snap, gc);
        let sources = [(Source::Root(0), 0)];
        assert_eq!(shortest_chain(&graph, &snap, gc, &sources, 2), None);
        assert_eq!(shortest_chain(&graph, &snap, gc, &sources, 4), None);
        // keep-derivations alone reaches the .drv but not its other output.
        let kd = GcSettings::default();
        let graph = Graph::build(&snap, kd);
        let chain = shortest_chain(&graph, &snap, kd, &sources, 2).unwrap();
        assert_eq!(paths(&chain), [0, 1, 2]);
        assert_eq!(shortest_chain(&graph, &snap, kd, &sources, 3), None);
    }

    #[test]
    fn unreachable_or_unknown_target_gives_none() {
        let snap = drv_store();
        let graph = Graph::build(&snap, BOTH);
        let sources = [(Source::Root(0), 0)];
        assert_eq!(shortest_chain(&graph, &snap, BOTH, &sources, 5), None);
        assert_eq!(shortest_chain(&graph, &snap, BOTH, &sources, 99), None);
        assert_eq!(shortest_chain(&graph, &snap, BOTH, &[], 0), None);
        assert_eq!(
            shortest_chain(&graph, &snap, BOTH, &[(Source::Root(0), 99)], 0),
            None
        );
    }

    #[test]
    fn a_source_path_is_a_one_step_chain() {
        let snap = drv_store();
        let graph = Graph::build(&snap, BOTH);
        let sources = [(
            Source::Seed {
                label: "closure list ci".into(),
            },
            5,
        )];
        let chain = shortest_chain(&graph, &snap, BOTH, &sources, 5).unwrap();
        assert_eq!(chain.source, sources[0].0);
        assert_eq!(
            chain.steps,
            [Step {
                path: 5,
                edge: None
            }]
        );
    }

    #[test]
    fn ties_go_to_the_first_source_in_sorted_order() {
        // Roots 3 and 1 both hold 0; a seed holds 1, the root 2 holds 4;
        // 0 -> 2, 1 -> 2: root 1 wins 2, as the smaller index.
        let snap = snapshot(5, &[(0, 2), (1, 2), (4, 1)], &[], &[]);
        let graph = Graph::build(&snap, BOTH);
        let seed = Source::Seed {
            label: "not selected by the policy".into(),
        };
        let sources = [
            (seed.clone(), 1),
            (Source::Root(3), 0),
            (Source::Root(1), 0),
            (Source::Root(2), 4),
        ];
        let chain = shortest_chain(&graph, &snap, BOTH, &sources, 2).unwrap();
        assert_eq!(chain.source, Source::Root(1));
        assert_eq!(paths(&chain), [0, 2]);
        // Path 1 is held by the seed at distance 0, before root 2's edge.
        let chain = shortest_chain(&graph, &snap, BOTH, &sources, 1).unwrap();
        assert_eq!(chain.source, seed);
        // The same answer from the full search, run after run.
        for _ in 0..3 {
            let reach = Reach::new(&graph, &sources);
            assert_eq!(reach.source_of(2), Some(&Source::Root(1)));
            assert_eq!(reach.chain(&snap, BOTH, 1).unwrap().source, seed);
        }
    }

    /// Everything a random case needs: path count, references, derivers,
    /// `(drv, output)` pairs, settings, sources and a target.
    type Case = (
        usize,
        Vec<(PathId, PathId)>,
        Vec<Option<PathId>>,
        Vec<(PathId, PathId)>,
        (bool, bool),
        Vec<(u8, PathId)>,
        PathId,
    );

    fn case_strategy() -> impl Strategy<Value = Case> {
        (1usize..50).prop_flat_map(|n| {
            let id = 0..n as PathId;
            (
                Just(n),
                proptest::collection::vec((id.clone(), id.clone()), 0..n * 2),
                proptest::collection::vec(proptest::option::of(id.clone()), n),
                proptest::collection::vec((id.clone(), id.clone()), 0..n),
                (any::<bool>(), any::<bool>()),
                proptest::collection::vec((0u8..6, id.clone()), 0..5),
                id,
            )
        })
    }

    fn source(k: u8) -> Source {
        match k {
            0..=3 => Source::Root(k as usize),
            _ => Source::Seed {
                label: format!("seed {k}"),
            },
        }
    }

    /// The edge kind decided from the raw rows, independently of the graph.
    fn naive_kind(
        refs: &[(PathId, PathId)],
        derivers: &[Option<PathId>],
        outputs: &[(PathId, PathId)],
        gc: GcSettings,
        (a, b): (PathId, PathId),
    ) -> Option<EdgeKind> {
        if a == b {
            None
        } else if refs.contains(&(a, b)) {
            Some(EdgeKind::Reference)
        } else if gc.keep_derivations && derivers[a as usize] == Some(b) {
            Some(EdgeKind::KeepDerivations)
        } else if gc.keep_outputs && outputs.contains(&(a, b)) {
            Some(EdgeKind::KeepOutputs)
        } else {
            None
        }
    }

    /// Least edge counts from `from` by repeated relaxation over every
    /// pair of paths (O(n³), no BFS).
    fn naive_distances(
        n: usize,
        is_edge: &impl Fn(PathId, PathId) -> bool,
        from: &[PathId],
    ) -> Vec<u32> {
        let mut dist = vec![u32::MAX; n];
        for &s in from {
            dist[s as usize] = 0;
        }
        let mut changed = true;
        while changed {
            changed = false;
            for a in 0..n {
                for b in 0..n {
                    let through = dist[a].saturating_add(1);
                    if dist[a] != u32::MAX && through < dist[b] && is_edge(a as u32, b as u32) {
                        dist[b] = through;
                        changed = true;
                    }
                }
            }
        }
        dist
    }

    proptest! {
        #[test]
        fn chains_are_real_shortest_and_deterministic(
            (n, refs, derivers, outputs, (ko, kd), picks, target) in case_strategy()
        ) {
            let gc = GcSettings { keep_outputs: ko, keep_derivations: kd };
            let snap = snapshot(n, &refs, &derivers, &outputs);
            let graph = Graph::build(&snap, gc);
            let sources: Vec<(Source, PathId)> =
                picks.iter().map(|&(k, p)| (source(k), p)).collect();
            let kind = |a, b| naive_kind(&refs, &derivers, &outputs, gc, (a, b));
            let is_edge = |a, b| kind(a, b).is_some();
            let all: Vec<PathId> = sources.iter().map(|s| s.1).collect();
            let want = naive_distances(n, &is_edge, &all)[target as usize];

            let chain = shortest_chain(&graph, &snap, gc, &sources, target);
            prop_assert_eq!(&shortest_chain(&graph, &snap, gc, &sources, target), &chain);
            let reach = Reach::new(&graph, &sources);
            prop_assert_eq!(&reach.chain(&snap, gc, target), &chain);
            prop_assert_eq!(reach.reaches(target), chain.is_some());
            let Some(chain) = chain else {
                prop_assert_eq!(want, u32::MAX);
                return Ok(());
            };
            prop_assert_eq!(chain.steps.len() as u32 - 1, want);
            prop_assert_eq!(chain.steps[0].edge, None);
            prop_assert_eq!(chain.steps.last().unwrap().path, target);
            for w in chain.steps.windows(2) {
                prop_assert_eq!(w[1].edge, kind(w[0].path, w[1].path));
                prop_assert!(w[1].edge.is_some());
            }
            // The source holds the first path and is the first, in sorted
            // order, of the sources at the least distance.
            let mut ranked = sources.clone();
            ranked.sort();
            let best = ranked
                .iter()
                .find(|s| naive_distances(n, &is_edge, &[s.1])[target as usize] == want)
                .unwrap();
            prop_assert_eq!(&chain.source, &best.0);
            prop_assert_eq!(chain.steps[0].path, best.1);
        }
    }
}

/// Whether and why a path stays or goes, for `storegc explain`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// A Nix root (one the policy does not expire) keeps it.
    Live,
    /// Nix would let it go, the policy keeps it.
    Protected,
    /// The plan deletes it.
    Deletable,
}

/// One step of an explanation, with the path spelled out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NamedStep {
    pub path: String,
    /// The edge from the previous step (`None` on the first).
    pub edge: Option<EdgeKind>,
}

/// The answer to "why is this path alive (or not)?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Explanation {
    pub path: String,
    pub status: Status,
    /// What starts the chain: a root's link, or a policy rule's label.
    pub source: Option<String>,
    /// From the source's store path down to `path`; empty when deletable.
    pub chain: Vec<NamedStep>,
    /// Why: the root's kind, the protection, or the deletion reason.
    pub reason: String,
}

/// What the policy decided, for explaining kept-but-not-live paths.
pub struct PolicyView<'a> {
    pub policy: &'a crate::policy::Policy,
    pub inputs: &'a crate::policy::PolicyInputs,
    pub decision: &'a crate::policy::Decision,
    pub now: i64,
}

/// Explains `target`: first a chain from a Nix root the policy keeps; else
/// (with a policy) a chain from what the policy protects or does not
/// select; else the reason it is deleted.
///
/// Cost: at most five multi-source BFS, O(n + e) each, plus O(n · globs)
/// to find the paths `protect.names` and `[select]` name. Pure.
#[allow(clippy::too_many_arguments)]
pub fn explain(
    snap: &Snapshot,
    graph: &Graph,
    gc: GcSettings,
    store_dir: &crate::store_path::StoreDir,
    roots: &[crate::roots::Root],
    root_ids: &[(usize, PathId)],
    view: Option<&PolicyView<'_>>,
    target: PathId,
) -> Explanation {
    let name = |id: PathId| store_dir.join(snap.paths.get(id));
    let named = |chain: &Chain| {
        chain
            .steps
            .iter()
            .map(|s| NamedStep {
                path: name(s.path),
                edge: s.edge,
            })
            .collect::<Vec<_>>()
    };
    let expired: Vec<usize> = view
        .map(|v| v.decision.expired_roots.iter().map(|e| e.root).collect())
        .unwrap_or_default();
    let sources: Vec<(Source, PathId)> = root_ids
        .iter()
        .filter(|(i, _)| !expired.contains(i))
        .map(|&(i, id)| (Source::Root(i), id))
        .collect();
    if let Some(chain) = shortest_chain(graph, snap, gc, &sources, target) {
        let Source::Root(i) = chain.source else {
            unreachable!("only roots are sources here")
        };
        return Explanation {
            path: name(target),
            status: Status::Live,
            source: Some(roots[i].link.clone()),
            chain: named(&chain),
            reason: format!("kept by root ({})", roots[i].kind.as_str()),
        };
    }
    if let Some(v) = view {
        if let Ok(k) = v.decision.delete.binary_search(&target) {
            return Explanation {
                path: name(target),
                status: Status::Deletable,
                source: None,
                chain: vec![],
                reason: v.decision.reasons[k].as_str().to_string(),
            };
        }
        // In the order the policy's accounting claims paths, so explain
        // and the report name the same protection.
        let names = &v.policy.protect.names;
        let by_name = || {
            (0..snap.len() as PathId)
                .filter(|&id| {
                    !names.is_empty()
                        && names.is_match(crate::store_path::name_of(snap.paths.get(id)))
                })
                .collect::<Vec<_>>()
        };
        let unselected = || {
            (0..snap.len() as PathId)
                .filter(|&id| !crate::policy::eval::selected(snap, id, v.policy, v.now))
                .collect::<Vec<_>>()
        };
        let build = || {
            if !v.policy.protect.build_closures {
                return Vec::new();
            }
            let mut listed = v.inputs.closure_list_ids.clone();
            listed.extend(&v.inputs.protected_path_ids);
            crate::policy::build_closure(snap, &listed)
        };
        // The deletable paths whose date in the state is younger than
        // the window (or missing).
        let window = || match v.policy.select.dead_for {
            Some(d) => (v.decision.dead.iter().copied())
                .filter(|&id| {
                    let since = v.inputs.dead_since.get(id as usize).copied().flatten();
                    (v.now.saturating_sub(since.unwrap_or(v.now)) as u64) < d.as_secs()
                })
                .collect(),
            None => Vec::new(),
        };
        let categories: [(&str, &dyn Fn() -> Vec<PathId>); 6] = [
            ("protect.closure-lists", &|| {
                v.inputs.closure_list_ids.clone()
            }),
            ("protect.paths", &|| v.inputs.protected_path_ids.clone()),
            ("protect.names", &by_name),
            ("protect.build-closures", &build),
            ("not selected by the policy ([select])", &unselected),
            ("the rollback window (select.dead-for)", &window),
        ];
        for (label, ids) in categories {
            let seeds: Vec<(Source, PathId)> = ids()
                .into_iter()
                .map(|id| {
                    (
                        Source::Seed {
                            label: label.to_string(),
                        },
                        id,
                    )
                })
                .collect();
            if let Some(chain) = shortest_chain(graph, snap, gc, &seeds, target) {
                return Explanation {
                    path: name(target),
                    status: Status::Protected,
                    source: Some(label.to_string()),
                    chain: named(&chain),
                    reason: format!("kept by {label}"),
                };
            }
        }
        return Explanation {
            path: name(target),
            status: Status::Protected,
            source: None,
            chain: vec![],
            reason: "left by the budget".into(),
        };
    }
    Explanation {
        path: name(target),
        status: Status::Deletable,
        source: None,
        chain: vec![],
        reason: "unreachable".into(),
    }
}
