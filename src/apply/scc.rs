//! Strongly connected components without recursion (petgraph's
//! `tarjan_scc` recurses and overflows the stack on a deep chain).

use crate::graph::Graph;
use crate::paths::PathId;

const UNSEEN: u32 = u32::MAX;

/// Tarjan's algorithm with an explicit stack. Components come in
/// post-order, as petgraph's: each after every component it reaches.
/// O(n + e) time, O(n) memory, constant call depth.
pub fn sccs(g: &Graph) -> Vec<Vec<PathId>> {
    let n = g.node_count();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<PathId> = Vec::new();
    let mut out = Vec::new();
    let mut next = 0u32;
    // (node, position in its successor list)
    let mut work: Vec<(PathId, usize)> = Vec::new();
    for s in 0..n as PathId {
        if index[s as usize] != UNSEEN {
            continue;
        }
        work.push((s, 0));
        while let Some(&mut (u, ref mut pos)) = work.last_mut() {
            let ui = u as usize;
            if *pos == 0 && index[ui] == UNSEEN {
                index[ui] = next;
                low[ui] = next;
                next += 1;
                stack.push(u);
                on_stack[ui] = true;
            }
            let succ = g.successors(u);
            if let Some(&v) = succ.get(*pos) {
                *pos += 1;
                let vi = v as usize;
                if index[vi] == UNSEEN {
                    work.push((v, 0));
                } else if on_stack[vi] {
                    low[ui] = low[ui].min(index[vi]);
                }
                continue;
            }
            work.pop();
            if let Some(&(p, _)) = work.last() {
                low[p as usize] = low[p as usize].min(low[ui]);
            }
            if low[ui] == index[ui] {
                let mut comp = Vec::new();
                while let Some(w) = stack.pop() {
                    on_stack[w as usize] = false;
                    comp.push(w);
                    if w == u {
                        break;
                    }
                }
                out.push(comp);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_chain_a_million_deep_does_not_overflow_the_stack() {
        let n = 1_000_000;
        let edges: Vec<(PathId, PathId)> = (0..n - 1).map(|i| (i, i + 1)).collect();
        let g = Graph::from_edges(n as usize, &edges);
        let c = sccs(&g);
        assert_eq!(c.len(), n as usize);
        // Post-order: the end of the chain first.
        assert_eq!(c[0], vec![n - 1]);
        assert_eq!(c[n as usize - 1], vec![0]);
    }

    proptest! {
        #[test]
        fn same_components_and_order_property_as_petgraph(
            n in 1usize..60,
            raw in proptest::collection::vec((0u32..60, 0u32..60), 0..200),
        ) {
            let edges: Vec<(PathId, PathId)> = raw.into_iter()
                .filter(|&(a, b)| (a as usize) < n && (b as usize) < n)
                .collect();
            let g = Graph::from_edges(n, &edges);
            let norm = |mut v: Vec<Vec<PathId>>| {
                for c in &mut v { c.sort_unstable(); }
                v.sort();
                v
            };
            let ours = sccs(&g);
            let theirs: Vec<Vec<PathId>> = petgraph::algo::tarjan_scc(&g);
            let mut comp_of = vec![0usize; n];
            for (i, c) in ours.iter().enumerate() {
                for &v in c { comp_of[v as usize] = i; }
            }
            // Post-order: an edge never leads to a later component.
            for &(a, b) in &edges {
                prop_assert!(comp_of[b as usize] <= comp_of[a as usize]);
            }
            prop_assert_eq!(norm(ours), norm(theirs));
        }
    }
}
