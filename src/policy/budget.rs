//! The budget: a prefix of the delete set, taken in a fixed order, that is
//! still closed under referrers, so `nix-store --delete` accepts it.

use super::file::Order;
use crate::db::Snapshot;
use crate::graph::Graph;
use crate::paths::PathId;

/// Candidates in the order the budget takes them: oldest-first is by
/// registration time then id, largest-first by narSize (descending) then id.
/// O(k log k).
pub fn ordered(snap: &Snapshot, candidates: &[PathId], order: Order) -> Vec<PathId> {
    let mut v = candidates.to_vec();
    match order {
        Order::OldestFirst => {
            v.sort_unstable_by_key(|&id| (snap.registration_time[id as usize], id))
        }
        Order::LargestFirst => {
            v.sort_unstable_by_key(|&id| (std::cmp::Reverse(snap.nar_size[id as usize]), id))
        }
    }
    v
}

/// Takes candidates in `order`, each with every not-yet-taken ancestor
/// (its referrers in `reversed`, transitively, within `in_set`), until the
/// bytes taken reach `limit`; the last group may overshoot, as Nix's
/// `--max-freed` does. Returns the taken ids, sorted.
///
/// Invariants: when `in_set` is closed under referrers, so is the result
/// (a group brings all its ancestors); the sequence of groups does not
/// depend on `limit`, so a larger limit takes a superset.
/// Cost: O(k log k) to order the k candidates, then O(n + e) in all, since
/// each path joins at most one group and its in-edges are read once.
pub fn take(
    snap: &Snapshot,
    reversed: &Graph,
    in_set: &[bool],
    candidates: &[PathId],
    order: Order,
    limit: u64,
) -> Vec<PathId> {
    let mut taken = vec![false; in_set.len()];
    let mut out = Vec::new();
    let mut total: u64 = 0;
    let mut stack = Vec::new();
    for c in ordered(snap, candidates, order) {
        if total >= limit {
            break;
        }
        if taken[c as usize] {
            continue;
        }
        taken[c as usize] = true;
        stack.push(c);
        while let Some(u) = stack.pop() {
            total = total.saturating_add(snap.nar_size[u as usize]);
            out.push(u);
            for &r in reversed.successors(u) {
                if in_set[r as usize] && !taken[r as usize] {
                    taken[r as usize] = true;
                    stack.push(r);
                }
            }
        }
    }
    out.sort_unstable();
    out
}
