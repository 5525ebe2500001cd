//! Renders plans and root lists for people (text, markdown) and programs
//! (paths, JSON). Pure: strings in, strings out; the caller writes them.
//! No clock either: an age is the plan's `created` minus a path's
//! registration time.
//!
//! The text report fits an 80-column terminal ([`TEXT_WIDTH`]): the
//! largest deletions are named by basename under the store directory the
//! header names, long paths are cut in the middle with `…`
//! ([`shorten_path`] keeps a store path's hash start and name end), and
//! long messages wrap.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::plan::{Deletion, ExpiredKind, Plan, PlanRoot, PlanRootKind};
use crate::roots::ListedRoot;
use crate::store_path::{parse_basename, StoreDir, HASH_LEN};

/// Columns of the text report.
pub const TEXT_WIDTH: usize = 80;

/// Marks where a shortened string was cut.
const ELLIPSIS: char = '…';

/// Characters of its hash a shortened store basename keeps at least.
const MIN_HASH: usize = 8;

/// Bytes as a human size (binary units).
pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = bytes as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{bytes} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

/// An age in seconds in words, in its largest whole unit: `23 days ago`,
/// `1 hour ago`, `just now`; `in the future` for a negative age (a clock
/// that went back between registering and planning).
pub fn human_age(secs: i64) -> String {
    const UNITS: [(i64, &str); 3] = [(86_400, "day"), (3_600, "hour"), (60, "minute")];
    if secs < 0 {
        return "in the future".to_string();
    }
    for (len, unit) in UNITS {
        let n = secs / len;
        if n > 0 {
            let s = if n == 1 { "" } else { "s" };
            return format!("{n} {unit}{s} ago");
        }
    }
    "just now".to_string()
}

/// The plan's `created` in Unix seconds, `None` when it is not RFC 3339.
fn created_secs(plan: &Plan) -> Option<i64> {
    let t = humantime::parse_rfc3339(&plan.created).ok()?;
    let d = t.duration_since(std::time::UNIX_EPOCH).ok()?;
    i64::try_from(d.as_secs()).ok()
}

/// How long before the plan was made `d` was registered, in words.
fn registered_ago(created: Option<i64>, d: &Deletion) -> String {
    match created {
        Some(c) => human_age(c.saturating_sub(d.registration_time)),
        None => "?".to_string(),
    }
}

/// `--format paths`: one absolute path per line, sorted.
pub fn paths(plan: &Plan) -> String {
    let mut out = String::with_capacity(plan.delete.len() * 64);
    for d in &plan.delete {
        out.push_str(&d.path);
        out.push('\n');
    }
    out
}

/// The default human summary; every line fits [`TEXT_WIDTH`] columns.
///
/// Totals, bytes per reason and per protection, the budget, warnings
/// (wrapped), the roots per kind, the expired roots (the link, then why,
/// on its own line), and the `largest` largest deletions with their size,
/// their age when planned and their basename. Cost: O(d log d) for d
/// deletions (sorting by size).
pub fn text(plan: &Plan, largest: usize) -> String {
    let mut out = Lines::default();
    let created = plan.created.as_str();
    let room = TEXT_WIDTH.saturating_sub("storegc plan for  ()".len() + width_of(created));
    out.line(format!(
        "storegc plan for {} ({created})",
        shorten_path(&plan.store_dir, room.max(MIN_HASH))
    ));
    out.line(format!(
        "settings: keep-outputs = {}, keep-derivations = {}{}",
        plan.settings.keep_outputs,
        plan.settings.keep_derivations,
        ca_note(plan)
    ));
    if let Some(p) = plan.settings.policy.as_deref() {
        out.line(format!(
            "policy: {}",
            shorten_path(p, TEXT_WIDTH - "policy: ".len())
        ));
    }
    out.line(format!(
        "to delete: {} paths, {} (narSize)",
        plan.totals.paths,
        human_bytes(plan.totals.nar_bytes)
    ));
    for (reason, (n, bytes)) in by_reason(plan) {
        out.line(format!(
            "  {reason:<28} {n:>8} paths {:>12}",
            human_bytes(bytes)
        ));
    }
    let kept_total = plan.kept.total();
    out.line(format!(
        "kept: {} paths, {}",
        kept_total.paths,
        human_bytes(kept_total.bytes)
    ));
    for (what, t) in kept_rows(plan) {
        out.line(format!(
            "  {what:<28} {:>8} paths {:>12}",
            t.paths,
            human_bytes(t.bytes)
        ));
    }
    if let Some(w) = window_line(plan) {
        for l in wrap(&w, TEXT_WIDTH, "  ") {
            out.line(l);
        }
    }
    if let Some(b) = &plan.budget {
        if b.already_met {
            out.line("budget: until-free already met, nothing to delete".to_string());
        } else {
            for l in budget_line(b.limit, plan.totals.nar_bytes, b.candidates.bytes) {
                out.line(l);
            }
        }
    }
    for w in &plan.warnings {
        for l in wrap(&format!("warning: {w}"), TEXT_WIDTH, "  ") {
            out.line(l);
        }
    }
    out.line(format!(
        "roots: {} (links as nix-store --gc --print-roots lists them)",
        plan.roots.len()
    ));
    for (kind, n) in count_kinds(&plan.roots) {
        out.line(format!("  {:<28} {n:>8}", kind.as_str()));
    }
    if !plan.expired_roots.is_empty() {
        out.line(format!("expired roots: {}", plan.expired_roots.len()));
        // A generation by its link; an auto root by the link it points to
        // (a `result`), which says more than its `gcroots/auto` entry.
        // Sorted by that name.
        let mut expired: Vec<(&str, &str)> = plan
            .expired_roots
            .iter()
            .map(|e| match e.kind {
                ExpiredKind::Generation => (e.link.as_str(), e.why.as_str()),
                ExpiredKind::AutoRoot => (e.points_to.as_str(), e.why.as_str()),
            })
            .collect();
        expired.sort_unstable();
        for (name, why) in expired {
            out.line(format!("  {}", shorten_path(name, TEXT_WIDTH - 2)));
            out.line(format!("    {}", ellipsize(why, TEXT_WIDTH - 4)));
        }
    }
    if !plan.delete.is_empty() {
        out.line(largest_rows(plan, largest));
    }
    out.0
}

/// What the budget does, in words: the limit, what the plan frees, and
/// why that may be more than the limit (a path goes with the paths that
/// still need it). O(1).
fn budget_line(limit: u64, frees: u64, deletable: u64) -> Vec<String> {
    let (l, f, d) = (
        human_bytes(limit),
        human_bytes(frees),
        human_bytes(deletable),
    );
    if frees > limit {
        vec![
            format!("budget {l}: frees {f}, the smallest group that reaches it"),
            format!("  (a path goes with its referrers), of {d} deletable"),
        ]
    } else if frees < deletable {
        vec![format!("budget {l}: frees {f} of {d} deletable")]
    } else {
        vec![format!("budget {l}: frees {f}, everything deletable")]
    }
}

/// The "largest deletions" table: size, age and basename, aligned, the
/// basename shortened to what the other columns leave.
fn largest_rows(plan: &Plan, largest: usize) -> String {
    let big: Vec<&Deletion> = largest_first(plan).into_iter().take(largest).collect();
    let created = created_secs(plan);
    let store = StoreDir::new(plan.store_dir.as_str());
    let rows: Vec<(String, String, &str)> = big
        .iter()
        .map(|d| {
            let base = store.is_in_store(&d.path).unwrap_or(&d.path);
            (human_bytes(d.nar_size), registered_ago(created, d), base)
        })
        .collect();
    let size_w = rows.iter().map(|r| r.0.len()).max().unwrap_or(0).max(10);
    let age_w = rows.iter().map(|r| r.1.len()).max().unwrap_or(0).max(10);
    let name_w = TEXT_WIDTH.saturating_sub(2 + size_w + 2 + age_w + 2);
    let mut out = format!(
        "largest deletions ({} of {}):\n  {:>size_w$}  {:<age_w$}  {}",
        rows.len(),
        plan.delete.len(),
        "size",
        "registered",
        "store path"
    );
    let shown = rows.len();
    for (size, age, base) in rows {
        let _ = write!(
            out,
            "\n  {size:>size_w$}  {age:<age_w$}  {}",
            shorten_path(base, name_w)
        );
    }
    if plan.delete.len() > shown {
        let _ = write!(out, "\n  … and {} more", plan.delete.len() - shown);
    }
    out
}

/// `, ca-derivations on` when the plan was made with CA derivations on
/// (nothing when off, the usual case).
fn ca_note(plan: &Plan) -> &'static str {
    if plan.settings.ca_derivations {
        ", ca-derivations on"
    } else {
        ""
    }
}

/// `--format markdown`: the text report as tables, for a CI job summary.
pub fn markdown(plan: &Plan, largest: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## storegc plan for `{}`\n", plan.store_dir);
    let _ = writeln!(
        out,
        "Made {} with keep-outputs = {}, keep-derivations = {}{}{}.\n",
        plan.created,
        plan.settings.keep_outputs,
        plan.settings.keep_derivations,
        ca_note(plan),
        plan.settings
            .policy
            .as_deref()
            .map(|p| format!(", policy `{p}`"))
            .unwrap_or_default()
    );
    let _ = writeln!(out, "| | paths | size (narSize) |\n|---|---:|---:|");
    let _ = writeln!(
        out,
        "| **to delete** | {} | {} |",
        plan.totals.paths,
        human_bytes(plan.totals.nar_bytes)
    );
    for (reason, t) in by_reason(plan) {
        let _ = writeln!(out, "| delete: {reason} | {} | {} |", t.0, human_bytes(t.1));
    }
    let kept = plan.kept.total();
    let _ = writeln!(
        out,
        "| **kept** | {} | {} |",
        kept.paths,
        human_bytes(kept.bytes)
    );
    for (what, t) in kept_rows(plan) {
        let _ = writeln!(
            out,
            "| kept {what} | {} | {} |",
            t.paths,
            human_bytes(t.bytes)
        );
    }
    out.push('\n');
    if let Some(w) = window_line(plan) {
        let _ = writeln!(out, "{w}\n");
    }
    if !plan.expired_roots.is_empty() {
        let _ = writeln!(out, "### Expired roots\n\n| link | why |\n|---|---|");
        for e in &plan.expired_roots {
            let _ = writeln!(out, "| `{}` | {} |", e.link, e.why);
        }
        out.push('\n');
    }
    if !plan.delete.is_empty() {
        let created = created_secs(plan);
        let _ = writeln!(
            out,
            "### Largest deletions\n\n| size | path | reason | registered |\n|---:|---|---|---|"
        );
        for d in largest_first(plan).into_iter().take(largest) {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} | {} |",
                human_bytes(d.nar_size),
                d.path,
                d.reason,
                registered_ago(created, d)
            );
        }
        out.push('\n');
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "> warning: {w}");
    }
    out
}

/// The rollback window in words: its length, how much it kept, and on a
/// first run (no state yet) that nothing goes by it this time.
fn window_line(plan: &Plan) -> Option<String> {
    let w = plan.window.as_ref()?;
    let days = crate::policy::format_duration(std::time::Duration::from_secs(w.dead_for_secs));
    let kept = plan.kept.window;
    let mut line = format!(
        "rollback window {days}: kept {} paths, {}; {} paths tracked in {}",
        kept.paths,
        human_bytes(kept.bytes),
        w.tracked_paths,
        w.state_file
    );
    if w.first_run {
        line.push_str(
            " (first run: no state yet, every deletable path starts its window now, nothing goes by it)",
        );
    }
    Some(line)
}

/// Deleted paths and bytes per reason, sorted by reason.
fn by_reason(plan: &Plan) -> BTreeMap<&str, (u64, u64)> {
    let mut m: BTreeMap<&str, (u64, u64)> = BTreeMap::new();
    for d in &plan.delete {
        let e = m.entry(d.reason.as_str()).or_default();
        e.0 += 1;
        e.1 += d.nar_size;
    }
    m
}

/// The non-empty protections, in the order the policy counts them.
fn kept_rows(plan: &Plan) -> Vec<(&'static str, crate::plan::PlanTally)> {
    let k = &plan.kept;
    [
        ("by Nix roots", k.nix_roots),
        ("by closure lists", k.closure_lists),
        ("by protect.paths", k.protected_paths),
        ("by protect.names", k.protected_names),
        ("by build closures", k.build_closures),
        ("not selected by the policy", k.unselected),
        ("by the rollback window", k.window),
        ("left by the budget", k.budget),
    ]
    .into_iter()
    .filter(|(_, t)| t.paths > 0)
    .collect()
}

/// Deletions by size, largest first, ties by path.
fn largest_first(plan: &Plan) -> Vec<&Deletion> {
    let mut big: Vec<_> = plan.delete.iter().collect();
    big.sort_by(|a, b| {
        b.nar_size
            .cmp(&a.nar_size)
            .then_with(|| a.path.cmp(&b.path))
    });
    big
}

fn count_kinds(roots: &[PlanRoot]) -> BTreeMap<PlanRootKind, usize> {
    let mut m = BTreeMap::new();
    for r in roots {
        *m.entry(r.kind).or_insert(0) += 1;
    }
    m
}

/// `storegc roots` as text: `LINK -> TARGET (kind)`, then `via ENTRY`
/// for each entry that points to the link; one line per root as
/// `nix-store --gc --print-roots` counts them, sorted.
pub fn roots_text(roots: &[ListedRoot]) -> String {
    let mut out = String::new();
    for r in roots {
        let _ = write!(out, "{} -> {} ({}", r.link, r.target, r.kind.as_str());
        for v in &r.via {
            let _ = write!(out, ", via {v}");
        }
        out.push_str(")\n");
    }
    out
}

/// `storegc roots --format json`.
pub fn roots_json(roots: &[ListedRoot]) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        roots: &'a [ListedRoot],
    }
    let mut s = serde_json::to_string_pretty(&Out { roots }).expect("roots serialise");
    s.push('\n');
    s
}

// ---------------------------------------------------------------------------
// Fitting text into columns. Widths count characters: store paths are
// ASCII, and `…` takes one column.

/// Text made of lines, each cut to [`TEXT_WIDTH`] should a caller have
/// missed one (the cut is then in the middle, with [`ellipsize`]).
#[derive(Debug, Default)]
struct Lines(String);

impl Lines {
    /// Appends `text` (one line or several) and a newline.
    fn line(&mut self, text: String) {
        for l in text.split('\n') {
            self.0.push_str(&ellipsize(l, TEXT_WIDTH));
            self.0.push('\n');
        }
    }
}

fn width_of(s: &str) -> usize {
    s.chars().count()
}

/// The first `n` characters of `s`.
fn head(s: &str, n: usize) -> &str {
    match s.char_indices().nth(n) {
        Some((i, _)) => &s[..i],
        None => s,
    }
}

/// The last `n` characters of `s`.
fn tail(s: &str, n: usize) -> &str {
    let len = width_of(s);
    match s.char_indices().nth(len.saturating_sub(n)) {
        Some((i, _)) => &s[i..],
        None => "",
    }
}

/// `s` in at most `width` characters: unchanged when it fits, else its
/// first `keep` characters, `…`, and as much of its end as fits.
fn cut(s: &str, width: usize, keep: usize) -> String {
    if width_of(s) <= width {
        return s.to_string();
    }
    if width == 0 {
        return String::new();
    }
    let keep = keep.min(width - 1);
    let mut out = String::with_capacity(width + 2);
    out.push_str(head(s, keep));
    out.push(ELLIPSIS);
    out.push_str(tail(s, width - 1 - keep));
    out
}

/// `s` in at most `width` characters, cut in the middle.
pub fn ellipsize(s: &str, width: usize) -> String {
    cut(s, width, width.saturating_sub(1) / 2)
}

/// A path in exactly `width` characters when it does not fit in `width`
/// (unchanged when it does), cut in the middle so that its end stays
/// readable:
/// - the start of the path, `…`, then its whole last component, when that
///   leaves room for at least one character of the start;
/// - else `…/` and the last component itself cut: a store path basename
///   keeps the start of its hash (at least 8 characters, more when the
///   name leaves room) and the end of its name; any other name keeps its
///   first third and its end.
///
/// A bare basename (no `/`) is cut the same way, without the `…/`.
pub fn shorten_path(path: &str, width: usize) -> String {
    if width_of(path) <= width {
        return path.to_string();
    }
    let Some(slash) = path.rfind('/') else {
        return shorten_name(path, width);
    };
    let base = &path[slash + 1..];
    let b = width_of(base);
    if b + 2 <= width {
        let mut out = head(path, width - 1 - b).to_string();
        out.push(ELLIPSIS);
        out.push_str(base);
        return out;
    }
    if width < 3 {
        return shorten_name(base, width);
    }
    let mut out = String::from("…/");
    out.push_str(&shorten_name(base, width - 2));
    out
}

/// A path component in at most `width` characters; see [`shorten_path`].
fn shorten_name(name: &str, width: usize) -> String {
    let n = width_of(name);
    if n <= width || width == 0 {
        return cut(name, width, 0);
    }
    let keep = if parse_basename(name).is_ok() {
        // The whole `-name` when it fits after MIN_HASH hash characters;
        // the hash start and the name's end otherwise.
        let dash_name = n - HASH_LEN;
        (width - 1)
            .saturating_sub(dash_name)
            .clamp(MIN_HASH, HASH_LEN)
    } else {
        (width - 1) / 3
    };
    // At least one character of the end, when there is room for it.
    cut(name, width, keep.min(width.saturating_sub(2)))
}

/// `text` wrapped at spaces into lines of at most `width` characters, the
/// lines after the first indented by `indent`; a word longer than a line
/// is split. Runs of spaces count as one.
fn wrap(text: &str, width: usize, indent: &str) -> Vec<String> {
    let mut lines = Vec::new();
    let mut line = String::new();
    let mut len = 0;
    // Whether `line` holds no word yet.
    let mut fresh = true;
    for word in text.split(' ').filter(|w| !w.is_empty()) {
        let mut word = word;
        while !word.is_empty() {
            let w = width_of(word);
            let sep = usize::from(!fresh);
            if len + sep + w <= width {
                if !fresh {
                    line.push(' ');
                }
                line.push_str(word);
                len += sep + w;
                fresh = false;
                break;
            }
            if fresh {
                // Longer than a whole line: fill this one with its start.
                let part = head(word, width.saturating_sub(len).max(1));
                line.push_str(part);
                word = &word[part.len()..];
            }
            lines.push(std::mem::replace(&mut line, indent.to_string()));
            len = width_of(indent);
            fresh = true;
        }
    }
    if !fresh || lines.is_empty() {
        lines.push(line);
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Deletion, ExpiredRoot, PlanSettings, Totals, PLAN_VERSION};
    use proptest::prelude::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }

    #[test]
    fn human_ages() {
        assert_eq!(human_age(-5), "in the future");
        assert_eq!(human_age(0), "just now");
        assert_eq!(human_age(59), "just now");
        assert_eq!(human_age(60), "1 minute ago");
        assert_eq!(human_age(7_199), "1 hour ago");
        assert_eq!(human_age(7_200), "2 hours ago");
        assert_eq!(human_age(86_400), "1 day ago");
        assert_eq!(human_age(23 * 86_400 + 3_600), "23 days ago");
    }

    const HASH: &str = "l16ky9b229dkwdbz0v3qzmyc4r0i2r20";

    fn store_path(store: &str, name: &str) -> String {
        format!("{store}/{HASH}-{name}")
    }

    #[test]
    fn short_paths_are_left_alone() {
        let p = store_path("/nix/store", "hello-2.12");
        assert_eq!(shorten_path(&p, 80), p);
        assert_eq!(shorten_path(&p, width_of(&p)), p);
    }

    #[test]
    fn long_folders_are_cut_before_the_whole_basename() {
        let store = format!("/{}/nix/store", "deep".repeat(20));
        let p = store_path(&store, "hello-2.12");
        let s = shorten_path(&p, 60);
        assert_eq!(width_of(&s), 60);
        assert!(s.starts_with("/deepdeep"), "{s}");
        assert!(s.ends_with(&format!("…{HASH}-hello-2.12")), "{s}");
    }

    #[test]
    fn long_basenames_keep_the_hash_start_and_the_name_end() {
        let name = format!("{}-docker-image.tar.gz", "x".repeat(150));
        let p = store_path("/nix/store", &name);
        let s = shorten_path(&p, 40);
        assert_eq!(width_of(&s), 40);
        assert_eq!(s, format!("…/{}…{}", &HASH[..8], tail(&name, 29)));
        assert!(s.ends_with("-docker-image.tar.gz"));
        // A bare basename: as much hash as the whole name leaves room for.
        let base = format!("{HASH}-docker-image-homelab-deploy.tar.gz");
        let s = shorten_path(&base, 52);
        assert_eq!(
            s,
            format!("{}…-docker-image-homelab-deploy.tar.gz", &HASH[..16])
        );
        // Never fewer than 8 hash characters.
        let s = shorten_path(&base, 30);
        assert_eq!(s, format!("{}…{}", &HASH[..8], tail(&base, 21)));
    }

    #[test]
    fn cuts_respect_tiny_widths_and_non_ascii() {
        assert_eq!(shorten_path("/a/bcdef", 0), "");
        assert_eq!(shorten_path("/a/bcdef", 1), "…");
        assert_eq!(shorten_path("/a/bcdef", 3), "…/…");
        assert_eq!(ellipsize("ééééééé", 5), "éé…éé");
        assert_eq!(width_of(&ellipsize("ééééééé", 4)), 4);
    }

    #[test]
    fn wrapping_keeps_words_and_splits_long_ones() {
        let w = wrap("warning: a b c", 80, "  ");
        assert_eq!(w, ["warning: a b c"]);
        let w = wrap("warning: one two three four", 12, "  ");
        assert_eq!(w, ["warning: one", "  two three", "  four"]);
        let long = "x".repeat(30);
        let w = wrap(&format!("warning: {long} end"), 12, "  ");
        assert!(w.iter().all(|l| width_of(l) <= 12), "{w:?}");
        assert_eq!(w.concat().replace(' ', ""), format!("warning:{long}end"));
    }

    /// A plan whose every path, message and name is as long as it gets.
    fn plan_with(store: &str, name_len: usize, msg: &str) -> Plan {
        let name = |i: usize| {
            let mut n = format!("p{i}-");
            n.push_str(&"n".repeat(name_len.saturating_sub(n.len()).max(1)));
            n
        };
        let delete = (0..25)
            .map(|i| Deletion {
                path: store_path(store, &name(i)),
                nar_size: (i as u64 + 1) << 33,
                registration_time: 1_000_000 - i as i64 * 90_000,
                reason: if i % 2 == 0 {
                    "unreachable"
                } else {
                    "expired-generation"
                }
                .to_string(),
            })
            .collect::<Vec<_>>();
        let totals = Totals {
            paths: delete.len() as u64,
            nar_bytes: delete.iter().map(|d| d.nar_size).sum(),
        };
        let state = format!("{store}-state/nix");
        let expired = |kind, link: String| ExpiredRoot {
            points_to: format!("{store}-home/ci/{msg}/result"),
            target: store_path(store, &name(1)),
            profile: Some(format!("{state}/profiles/{msg}")),
            why: match kind {
                ExpiredKind::Generation => {
                    format!("generation 12 of {state}/profiles/{msg}, 40 days old")
                }
                ExpiredKind::AutoRoot => {
                    format!("auto root matching \"*/ci/{msg}/result\", 40 days old")
                }
            },
            link,
            kind,
        };
        Plan {
            version: PLAN_VERSION,
            store_dir: store.to_string(),
            state_dir: state.clone(),
            created: "1970-01-12T13:46:40Z".to_string(),
            settings: PlanSettings {
                ca_derivations: false,
                keep_outputs: true,
                keep_derivations: false,
                policy: Some(format!("{store}-etc/storegc/{msg}.toml")),
            },
            inputs: vec![],
            roots: vec![PlanRoot {
                link: format!("{state}/profiles/{msg}"),
                target: store_path(store, &name(0)),
                kind: PlanRootKind::Profile,
                via: vec![],
            }],
            expired_roots: vec![
                expired(
                    ExpiredKind::Generation,
                    format!("{state}/profiles/{msg}-12-link"),
                ),
                expired(
                    ExpiredKind::AutoRoot,
                    format!("{state}/gcroots/auto/{HASH}"),
                ),
            ],
            delete,
            totals,
            kept: Default::default(),
            by_reason: Default::default(),
            budget: None,
            unreadable_processes: 0,
            window: None,
            warnings: vec![format!("closure list {store}/{msg}: not valid {msg}")],
        }
    }

    fn assert_fits(report: &str) {
        for l in report.lines() {
            assert!(
                width_of(l) <= TEXT_WIDTH,
                "{} columns: {l}\n{report}",
                width_of(l)
            );
        }
    }

    #[test]
    fn text_report_fits_80_columns_with_very_long_paths() {
        let store = format!("/{}/nix/store", "very-long-folder-name/".repeat(12));
        let plan = plan_with(&store, 211, &"m".repeat(150));
        let report = text(&plan, 20);
        assert_fits(&report);
        // Twenty rows, largest first, each with its age and its basename
        // cut to keep the hash start and the name end.
        let rows: Vec<&str> = report
            .lines()
            .skip_while(|l| !l.starts_with("largest deletions (20 of 25):"))
            .skip(2)
            .take_while(|l| l.starts_with("   "))
            .collect();
        assert_eq!(rows.len(), 20, "{report}");
        // A cut list says how much was left out.
        assert!(report.contains("\n  … and 5 more\n"), "{report}");
        assert!(
            rows[0].starts_with("   200.0 GiB  25 days ago  "),
            "{report}"
        );
        assert!(rows[0].contains(&format!("  {}…", &HASH[..8])), "{report}");
        assert!(rows[0].ends_with("nnnn"), "{report}");
        // Columns line up: every basename starts in the same column.
        let col = |l: &str| l.find(&HASH[..MIN_HASH]).expect("hash in row");
        assert!(rows.iter().all(|l| col(l) == col(rows[0])), "{report}");
        assert!(report.contains("\n    generation 12 of "), "{report}");
        assert!(report.contains("\n    auto root matching "), "{report}");
    }

    #[test]
    fn budget_line_says_what_will_be_freed() {
        assert_eq!(
            budget_line(1024, 201_011, 500_000),
            [
                "budget 1.0 KiB: frees 196.3 KiB, the smallest group that reaches it",
                "  (a path goes with its referrers), of 488.3 KiB deletable"
            ]
        );
        assert_eq!(
            budget_line(1 << 30, 2048, 4096),
            ["budget 1.0 GiB: frees 2.0 KiB of 4.0 KiB deletable"]
        );
        assert_eq!(
            budget_line(1 << 30, 4096, 4096),
            ["budget 1.0 GiB: frees 4.0 KiB, everything deletable"]
        );
    }

    #[test]
    fn text_report_of_a_plain_plan_is_not_cut() {
        let plan = plan_with("/nix/store", 20, "x");
        let report = text(&plan, 3);
        assert_fits(&report);
        assert!(report.contains("\n  … and 22 more\n"), "{report}");
        assert!(
            !report.replace("… and 22 more", "").contains(ELLIPSIS),
            "{report}"
        );
        assert!(report.starts_with("storegc plan for /nix/store (1970-01-12T13:46:40Z)\n"));
        assert!(
            report.contains(&format!("   200.0 GiB  25 days ago  {HASH}-p24-n")),
            "{report}"
        );
        assert!(
            report.contains("largest deletions (3 of 25):\n"),
            "{report}"
        );
        assert!(
            report.contains("  /nix/store-home/ci/x/result\n"),
            "{report}"
        );
        assert!(report
            .contains("\n    generation 12 of /nix/store-state/nix/profiles/x, 40 days old\n"));
    }

    proptest! {
        #[test]
        fn text_report_always_fits(
            store_len in 1usize..400,
            name_len in 1usize..212,
            msg_len in 1usize..300,
        ) {
            let store = format!("/{}", "s".repeat(store_len));
            let plan = plan_with(&store, name_len, &"m".repeat(msg_len));
            let report = text(&plan, 20);
            for l in report.lines() {
                prop_assert!(width_of(l) <= TEXT_WIDTH, "{l}");
            }
        }

        #[test]
        fn shortened_paths_fit_and_keep_both_ends(
            folder in "[a-z/]{0,200}",
            name in "[a-z0-9.-]{1,211}",
            width in 3usize..120,
        ) {
            let p = format!("/{folder}/{HASH}-{name}");
            let s = shorten_path(&p, width);
            prop_assert!(width_of(&s) <= width);
            if width_of(&p) <= width {
                prop_assert_eq!(&s, &p);
            } else {
                prop_assert_eq!(width_of(&s), width);
                if width >= 4 {
                    prop_assert_eq!(s.chars().last(), p.chars().last());
                }
                // Room for `…/`, the hash start, `…` and a character.
                if width > 2 + MIN_HASH + 1 {
                    prop_assert!(s.contains(&HASH[..MIN_HASH]), "{}", s);
                }
            }
        }
    }
}
