//! The budget: a prefix of the delete set, taken in a fixed order, that is
//! still closed under referrers, so `nix-store --delete` accepts it; and
//! the byte limit it works to, from `max-freed` and `until-free` given in
//! bytes or as a percentage of the store's filesystem.
//!
//! Pure: the filesystem's size and the space available on it are
//! [`Space`], measured by the command layer (statvfs) and passed in.

use std::fmt;

use super::file::{Budget, Order};
use super::units::{format_size, parse_size};
use crate::db::Snapshot;
use crate::graph::Graph;
use crate::paths::PathId;

/// Millionths of the filesystem's size in one percent.
const PPM_PER_PERCENT: u64 = 10_000;

/// A budget amount: bytes, or a share of the store's filesystem.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Amount {
    Bytes(u64),
    /// Millionths of the filesystem's size (`"15%"` is 150,000), at most
    /// 1,000,000.
    Share(u64),
}

/// The store's filesystem as statvfs saw it: `size` is `f_blocks *
/// f_frsize`, `available` is `f_bavail * f_frsize` (what unprivileged
/// writers may still use).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Space {
    pub size: u64,
    pub available: u64,
}

impl Amount {
    /// `"15%"`, `"12.5%"` (at most four decimals, at most `100%`), or a
    /// size as [`parse_size`] reads it. The error is the reason, without
    /// the input.
    pub fn parse(text: &str) -> Result<Amount, String> {
        let t = text.trim();
        let Some(number) = t.strip_suffix('%') else {
            return parse_size(t).map(Amount::Bytes);
        };
        let number = number.trim();
        let (whole, fraction) = number.split_once('.').unwrap_or((number, ""));
        let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
        if whole.is_empty() || !digits(whole) || !digits(fraction) || fraction.len() > 4 {
            return Err(
                "expected a percentage such as \"15%\" or \"12.5%\" (at most 4 decimals)".into(),
            );
        }
        let scale = 10u64.pow(fraction.len() as u32);
        let ppm = whole
            .parse::<u64>()
            .ok()
            .and_then(|w| w.checked_mul(PPM_PER_PERCENT))
            .map(|w| w + fraction.parse::<u64>().unwrap_or(0) * PPM_PER_PERCENT / scale);
        match ppm {
            Some(p) if p <= 100 * PPM_PER_PERCENT => Ok(Amount::Share(p)),
            _ => Err("more than 100% of the filesystem".into()),
        }
    }

    /// The amount in bytes: a share of `size` rounded down.
    pub fn bytes(self, size: u64) -> u64 {
        match self {
            Amount::Bytes(b) => b,
            Amount::Share(ppm) => (size as u128 * ppm as u128 / 1_000_000) as u64,
        }
    }

    pub fn is_share(self) -> bool {
        matches!(self, Amount::Share(_))
    }
}

impl fmt::Display for Amount {
    /// `100 GiB`, or `15%` / `12.5%` of the store's filesystem.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Amount::Bytes(b) => f.write_str(&format_size(b)),
            Amount::Share(ppm) => {
                let whole = ppm / PPM_PER_PERCENT;
                let frac = ppm % PPM_PER_PERCENT;
                if frac == 0 {
                    write!(f, "{whole}%")
                } else {
                    let digits = format!("{frac:04}");
                    write!(f, "{whole}.{}%", digits.trim_end_matches('0'))
                }
            }
        }
    }
}

/// The byte limit a budget sets on one run, and whether `until-free` was
/// already met (then the limit is 0).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limit {
    pub bytes: u64,
    pub already_met: bool,
}

/// The limit `budget` sets, given the filesystem as measured (`None`: not
/// measurable). `None` without `max-freed` and `until-free`. Without a
/// measurement, `until-free` and a percentage `max-freed` give 0 (nothing
/// deleted) and a warning: unknown space is never taken as room to free.
/// O(1).
pub fn limit(budget: &Budget, space: Option<Space>, warnings: &mut Vec<String>) -> Option<Limit> {
    let (max_freed, until_free) = (budget.max_freed, budget.until_free);
    if max_freed.is_none() && until_free.is_none() {
        return None;
    }
    let needs_space = until_free.is_some() || max_freed.is_some_and(Amount::is_share);
    let space = match space {
        Some(s) => s,
        None if needs_space => {
            warnings.push(
                "the budget needs the size or the free space of the store's filesystem, which cannot be measured; nothing is deleted"
                    .into(),
            );
            return Some(Limit {
                bytes: 0,
                already_met: false,
            });
        }
        None => Space {
            size: 0,
            available: 0,
        },
    };
    let mut bytes = max_freed.map(|m| m.bytes(space.size));
    let mut already_met = false;
    if let Some(want) = until_free.map(|u| u.bytes(space.size)) {
        already_met = space.available >= want;
        let short = want.saturating_sub(space.available);
        bytes = Some(bytes.map_or(short, |b| b.min(short)));
    }
    Some(Limit {
        bytes: bytes.unwrap_or(0),
        already_met,
    })
}

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

#[cfg(test)]
mod tests {
    use super::*;

    fn budget(max_freed: Option<&str>, until_free: Option<&str>) -> Budget {
        let amount = |t: &str| Amount::parse(t).unwrap();
        Budget {
            max_freed: max_freed.map(amount),
            until_free: until_free.map(amount),
            order: Order::default(),
        }
    }

    const GIB: u64 = 1 << 30;

    #[test]
    fn percentages_parse_and_print() {
        assert_eq!(Amount::parse("15%"), Ok(Amount::Share(150_000)));
        assert_eq!(Amount::parse(" 12.5 %"), Ok(Amount::Share(125_000)));
        assert_eq!(Amount::parse("0.0001%"), Ok(Amount::Share(1)));
        assert_eq!(Amount::parse("100%"), Ok(Amount::Share(1_000_000)));
        assert_eq!(Amount::parse("0%"), Ok(Amount::Share(0)));
        assert_eq!(Amount::parse("100GiB"), Ok(Amount::Bytes(100 * GIB)));
        assert_eq!(Amount::Share(125_000).to_string(), "12.5%");
        assert_eq!(Amount::Share(150_000).to_string(), "15%");
        assert_eq!(Amount::Share(1).to_string(), "0.0001%");
        assert_eq!(Amount::Bytes(2 * GIB).to_string(), "2 GiB");
        for bad in [
            "%",
            "-5%",
            "100.0001%",
            "101%",
            "1e2%",
            "12.34567%",
            "x%",
            ".5%",
            "5%%",
            "99999999999999999999%",
        ] {
            assert!(Amount::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn a_share_is_of_the_filesystem_size_rounded_down() {
        assert_eq!(Amount::Share(100_000).bytes(1000), 100);
        assert_eq!(Amount::Share(150_000).bytes(999), 149);
        assert_eq!(Amount::Share(1_000_000).bytes(u64::MAX), u64::MAX);
        assert_eq!(Amount::Bytes(7).bytes(1000), 7);
    }

    #[test]
    fn limits_from_bytes_and_percentages() {
        let space = Some(Space {
            size: 1000,
            available: 100,
        });
        let mut w = Vec::new();
        let lim = |b: &Budget, w: &mut Vec<String>| limit(b, space, w);
        assert_eq!(lim(&budget(None, None), &mut w), None);
        let l = |bytes, already_met| Some(Limit { bytes, already_met });
        assert_eq!(lim(&budget(Some("10%"), None), &mut w), l(100, false));
        assert_eq!(lim(&budget(Some("42"), None), &mut w), l(42, false));
        // until-free 15% of 1000 with 100 available: 50 short.
        assert_eq!(lim(&budget(None, Some("15%")), &mut w), l(50, false));
        assert_eq!(lim(&budget(Some("4%"), Some("15%")), &mut w), l(40, false));
        assert_eq!(lim(&budget(Some("10%"), Some("15%")), &mut w), l(50, false));
        // Already met.
        assert_eq!(lim(&budget(None, Some("10%")), &mut w), l(0, true));
        assert_eq!(lim(&budget(Some("5%"), Some("100")), &mut w), l(0, true));
        assert!(w.is_empty(), "{w:?}");
    }

    #[test]
    fn unmeasured_space_deletes_nothing_under_a_share_or_until_free() {
        let mut w = Vec::new();
        let zero = Some(Limit {
            bytes: 0,
            already_met: false,
        });
        assert_eq!(limit(&budget(Some("10%"), None), None, &mut w), zero);
        assert_eq!(
            limit(&budget(Some("1GiB"), Some("1GiB")), None, &mut w),
            zero
        );
        assert_eq!(w.len(), 2);
        // Bytes alone need no measurement.
        assert_eq!(
            limit(&budget(Some("1GiB"), None), None, &mut w),
            Some(Limit {
                bytes: GIB,
                already_met: false
            })
        );
        assert_eq!(w.len(), 2);
    }
}
