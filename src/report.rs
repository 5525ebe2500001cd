//! Renders plans and root lists for people (text) and programs (paths,
//! JSON). Pure: strings in, strings out; the caller writes them.

use std::collections::BTreeMap;
use std::fmt::Write;

use crate::plan::Plan;
use crate::roots::{Root, RootKind};

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

/// `--format paths`: one absolute path per line, sorted.
pub fn paths(plan: &Plan) -> String {
    let mut out = String::with_capacity(plan.delete.len() * 64);
    for d in &plan.delete {
        out.push_str(&d.path);
        out.push('\n');
    }
    out
}

/// The default human summary.
pub fn text(plan: &Plan, largest: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "storegc plan for {} ({})",
        plan.store_dir, plan.created
    );
    let _ = writeln!(
        out,
        "settings: keep-outputs = {}, keep-derivations = {}{}",
        plan.settings.keep_outputs,
        plan.settings.keep_derivations,
        plan.settings
            .policy
            .as_deref()
            .map(|p| format!(", policy {p}"))
            .unwrap_or_default()
    );
    let _ = writeln!(
        out,
        "to delete: {} paths, {} (narSize)",
        plan.totals.paths,
        human_bytes(plan.totals.nar_bytes)
    );
    for (reason, (n, bytes)) in by_reason(plan) {
        let _ = writeln!(
            out,
            "  {reason:<28} {n:>8} paths {:>12}",
            human_bytes(bytes)
        );
    }
    let k = &plan.kept;
    let kept_total = k.total();
    let _ = writeln!(
        out,
        "kept: {} paths, {}",
        kept_total.paths,
        human_bytes(kept_total.bytes)
    );
    for (what, t) in kept_rows(plan) {
        let _ = writeln!(
            out,
            "  {what:<28} {:>8} paths {:>12}",
            t.paths,
            human_bytes(t.bytes)
        );
    }
    if let Some(b) = &plan.budget {
        if b.already_met {
            let _ = writeln!(out, "budget: until-free already met, nothing to delete");
        } else {
            let _ = writeln!(
                out,
                "budget: {} of {} deletable",
                human_bytes(b.limit),
                human_bytes(b.candidates.bytes)
            );
        }
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    let _ = writeln!(out, "roots: {}", plan.roots.len());
    for (kind, n) in count_kinds(&plan.roots) {
        let _ = writeln!(out, "  {:<28} {n:>8}", kind.as_str());
    }
    if !plan.expired_roots.is_empty() {
        let _ = writeln!(out, "expired roots: {}", plan.expired_roots.len());
        for e in &plan.expired_roots {
            let _ = writeln!(out, "  {} ({})", e.link, e.why);
        }
    }
    if !plan.delete.is_empty() {
        let _ = writeln!(out, "largest deletions:");
        for d in largest_first(plan).into_iter().take(largest) {
            let _ = writeln!(out, "  {:>10}  {}", human_bytes(d.nar_size), d.path);
        }
    }
    out
}

/// `--format markdown`: the text report as tables, for a CI job summary.
pub fn markdown(plan: &Plan, largest: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "## storegc plan for `{}`\n", plan.store_dir);
    let _ = writeln!(
        out,
        "Made {} with keep-outputs = {}, keep-derivations = {}{}.\n",
        plan.created,
        plan.settings.keep_outputs,
        plan.settings.keep_derivations,
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
    if !plan.expired_roots.is_empty() {
        let _ = writeln!(out, "### Expired roots\n\n| link | why |\n|---|---|");
        for e in &plan.expired_roots {
            let _ = writeln!(out, "| `{}` | {} |", e.link, e.why);
        }
        out.push('\n');
    }
    if !plan.delete.is_empty() {
        let _ = writeln!(
            out,
            "### Largest deletions\n\n| size | path | reason |\n|---:|---|---|"
        );
        for d in largest_first(plan).into_iter().take(largest) {
            let _ = writeln!(
                out,
                "| {} | `{}` | {} |",
                human_bytes(d.nar_size),
                d.path,
                d.reason
            );
        }
        out.push('\n');
    }
    for w in &plan.warnings {
        let _ = writeln!(out, "> warning: {w}");
    }
    out
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
fn kept_rows(plan: &Plan) -> Vec<(&'static str, crate::policy::Tally)> {
    let k = &plan.kept;
    [
        ("by Nix roots", k.nix_roots),
        ("by closure lists", k.closure_lists),
        ("by protect.paths", k.protected_paths),
        ("by protect.names", k.protected_names),
        ("not selected by the policy", k.unselected),
        ("left by the budget", k.budget),
    ]
    .into_iter()
    .filter(|(_, t)| t.paths > 0)
    .collect()
}

/// Deletions by size, largest first, ties by path.
fn largest_first(plan: &Plan) -> Vec<&crate::plan::Deletion> {
    let mut big: Vec<_> = plan.delete.iter().collect();
    big.sort_by(|a, b| {
        b.nar_size
            .cmp(&a.nar_size)
            .then_with(|| a.path.cmp(&b.path))
    });
    big
}

fn count_kinds(roots: &[Root]) -> BTreeMap<RootKind, usize> {
    let mut m = BTreeMap::new();
    for r in roots {
        *m.entry(r.kind).or_insert(0) += 1;
    }
    m
}

/// `storegc roots` as text: `LINK -> TARGET (kind)`, sorted.
pub fn roots_text(roots: &[Root]) -> String {
    let mut out = String::new();
    for r in roots {
        let _ = writeln!(out, "{} -> {} ({})", r.link, r.target, r.kind.as_str());
    }
    out
}

/// `storegc roots --format json`.
pub fn roots_json(roots: &[Root]) -> String {
    #[derive(serde::Serialize)]
    struct Out<'a> {
        roots: &'a [Root],
    }
    let mut s = serde_json::to_string_pretty(&Out { roots }).expect("roots serialise");
    s.push('\n');
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_sizes() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 << 30), "3.0 GiB");
    }
}
