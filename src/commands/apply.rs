//! `storegc apply PLAN`: the deleting command.

use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;
use indicatif::ProgressBar;

use crate::apply::{apply, ApplyOptions, ApplyReport, Progress};
use crate::cli::{ApplyArgs, GlobalArgs, TextOrJson};
use crate::exit::ExitCode;
use crate::progress::Printer;
use crate::report::human_bytes;

struct Bar(ProgressBar);

impl Progress for Bar {
    fn start(&self, paths: u64) {
        self.0.set_length(paths);
    }
    fn advance(&self, paths: u64) {
        self.0.inc(paths);
    }
}

pub fn run(global: &GlobalArgs, args: &ApplyArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    // SIGINT/SIGTERM set the flag; apply stops between batches.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let opts = ApplyOptions {
        max_plan_age: args.max_plan_age,
        dry_run: args.dry_run,
        nix_store: args.nix_store.clone(),
        load: super::load_options(global),
        batch_bytes: args.batch_bytes,
        ..ApplyOptions::default()
    };
    let bar = Bar(Printer::new(global.quiet, global.verbose).bar(0, "deleting"));
    let report = apply(&args.plan, &settings, &opts, &stop, super::now(), &bar)?;
    bar.0.finish_and_clear();
    for e in &report.errors {
        eprintln!("storegc: {e}");
    }
    let text = match args.format {
        TextOrJson::Text => text(&report),
        TextOrJson::Json => serde_json::to_string_pretty(&report)? + "\n",
    };
    super::write_stdout(&text)?;
    Ok(
        if report.failed.is_empty() && report.errors.is_empty() && !report.interrupted {
            ExitCode::Success
        } else {
            ExitCode::Partial
        },
    )
}

/// The statvfs before/after difference, said as what it is: not what
/// the deletions freed (that is the narSize line) but the change of the
/// filesystem's free space, which includes other writers and Nix's
/// `db/reserved`.
fn fs_change(freed: i64) -> String {
    let sign = if freed < 0 { "-" } else { "+" };
    format!(
        "filesystem free space changed by {sign}{}, which includes other writers and Nix's db/reserved",
        human_bytes(freed.unsigned_abs())
    )
}

fn text(r: &ApplyReport) -> String {
    let mut out = String::new();
    let verb = if r.dry_run { "would delete" } else { "deleted" };
    let _ = writeln!(
        out,
        "{verb}: {} paths, {} (narSize)",
        r.deleted.len(),
        human_bytes(r.deleted_nar_bytes)
    );
    if !r.dry_run {
        let _ = writeln!(out, "{}", fs_change(r.freed_fs_bytes));
    }
    let _ = writeln!(out, "kept because live now: {} paths", r.skipped_live.len());
    let _ = writeln!(out, "already gone: {} paths", r.already_gone);
    let _ = writeln!(out, "roots removed: {}", r.roots_removed.len());
    for l in &r.roots_removed {
        let _ = writeln!(out, "  {l}");
    }
    for (l, why) in &r.roots_kept {
        let _ = writeln!(out, "  kept {l}: {why}");
    }
    if !r.failed.is_empty() {
        let _ = writeln!(out, "failed: {} paths", r.failed.len());
        for f in r.failed.iter().take(20) {
            let _ = writeln!(out, "  {}: {}", f.path, f.error);
        }
    }
    for w in &r.warnings {
        let _ = writeln!(out, "warning: {w}");
    }
    for e in &r.errors {
        let _ = writeln!(out, "error (after changes; see above what was done): {e}");
    }
    if r.interrupted {
        let _ = writeln!(out, "interrupted: run apply again to finish");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::fs_change;

    #[test]
    fn fs_change_says_what_it_measures_with_its_sign() {
        let grew = fs_change(3 * 1024 * 1024);
        assert!(
            grew.starts_with("filesystem free space changed by +"),
            "{grew}"
        );
        assert!(grew.contains("db/reserved"), "{grew}");
        let shrank = fs_change(-8 * 1024 * 1024);
        assert!(shrank.contains("by -"), "{shrank}");
        assert_ne!(grew, shrank);
    }
}
