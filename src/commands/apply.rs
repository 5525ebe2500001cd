//! `storegc apply PLAN`: the deleting command.

use std::fmt::Write;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::Result;

use crate::apply::{apply, ApplyOptions, ApplyReport, Progress};
use crate::cli::{ApplyArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::progress::{DeletionBar, Printer};
use crate::report::human_bytes;

/// Paths and bytes deleted, chunk by chunk, on a terminal only.
struct Bar(DeletionBar);

impl Progress for Bar {
    fn start(&self, paths: u64, bytes: u64) {
        self.0.start(paths, bytes);
    }
    fn advance(&self, paths: u64, bytes: u64) {
        self.0.advance(paths, bytes);
    }
}

/// SIGINT/SIGTERM set the stop flag; apply stops between batches. Each
/// signal says at once, on stderr, what happens: the first that apply
/// finishes the current batch and stops, a later one that it still does
/// (a batch is never cut short: its database rows and files go together).
fn watch_signals() -> Result<Arc<AtomicBool>> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [SIGINT, SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM])?;
    std::thread::spawn(move || {
        for (n, _) in signals.forever().enumerate() {
            eprintln!("{}", stop_message(n));
        }
    });
    Ok(stop)
}

/// What the `n`th stop signal (from 0) means, in words.
fn stop_message(n: usize) -> &'static str {
    if n == 0 {
        "storegc: interrupted: stopping after the current batch (what it deletes stays deleted; run apply again to finish)"
    } else {
        "storegc: interrupted again: still finishing the current batch, then stopping; no valid path is left without its files either way (rows go before files)"
    }
}

pub fn run(global: &GlobalArgs, args: &ApplyArgs) -> Result<ExitCode> {
    let (started, clock) = (super::now(), std::time::Instant::now());
    let mut report = None;
    let result = apply_and_report(global, args, &mut report);
    let Some(file) = &args.metrics else {
        return result;
    };
    // The plan again, for the reasons of what was deleted; a plan apply
    // refused may not parse, and then only the run is reported.
    let plan: Option<crate::plan::Plan> = std::fs::read(&args.plan)
        .ok()
        .and_then(|bytes| serde_json::from_slice(&bytes).ok());
    let run = crate::metrics::Run {
        command: "apply",
        policy: plan.as_ref().and_then(|p| p.settings.policy.clone()),
        started,
        duration: clock.elapsed(),
        exit: *result.as_ref().unwrap_or(&ExitCode::BadInput),
    };
    let metrics = crate::metrics::apply(&run, plan.as_ref(), report.as_ref());
    match crate::metrics::write(file, &metrics.render()) {
        Ok(()) => result,
        // Deletions may have happened: the report is out, so say it and
        // exit 1 rather than 2 ("nothing changed").
        Err(e) => {
            eprintln!("storegc: {e}");
            result.map(|_| ExitCode::Partial)
        }
    }
}

/// Applies the plan, prints the report and leaves it in `out`.
fn apply_and_report(
    global: &GlobalArgs,
    args: &ApplyArgs,
    out: &mut Option<ApplyReport>,
) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let stop = watch_signals()?;
    let opts = ApplyOptions {
        max_plan_age: args.max_plan_age,
        dry_run: args.dry_run,
        nix_store: args.nix_store.clone(),
        // apply's re-check of `protect.build-closures` needs the outputs.
        load: crate::load::LoadOptions {
            derivation_outputs: true,
            ..super::load_options(global)
        },
        batch_bytes: args.batch_bytes,
        delete_with: args.delete_with,
        lock_timeout: args
            .lock_timeout
            .unwrap_or(ApplyOptions::default().lock_timeout),
        chunk_size: args.chunk_size,
        allow_incomplete_roots: args.allow_incomplete_roots,
        vacuum: args.vacuum.vacuum,
        ..ApplyOptions::default()
    };
    let bar = Bar(Printer::new(global.quiet, global.verbose).deletion_bar());
    let mut report = apply(&args.plan, &settings, &opts, &stop, super::now(), &bar)?;
    bar.0.bar.finish_and_clear();
    let remote = std::env::var("NIX_REMOTE").ok();
    let writable = is_writable(&settings.state_dir);
    report.deleted_by = deleted_by(args.delete_with, remote.as_deref(), writable);
    if let Err(e) = update_dead_since(&args.plan, &report) {
        report.errors.push(format!("{e:#}"));
    }
    for e in &report.errors {
        eprintln!("storegc: {e}");
    }
    super::write_report(args.format, &report, text)?;
    let code = if report.failed.is_empty() && report.errors.is_empty() && !report.interrupted {
        ExitCode::Success
    } else {
        ExitCode::Partial
    };
    *out = Some(report);
    Ok(code)
}

/// Whether this process may write `dir` (`access(W_OK)`), as Nix's
/// `auto` store decides between the local store and the daemon.
fn is_writable(dir: &std::path::Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: c is a valid C string.
    unsafe { libc::access(c.as_ptr(), libc::R_OK | libc::W_OK) == 0 }
}

/// Who deleted, in words: storegc's engine works on the local store;
/// `nix-store` deletes where `NIX_REMOTE` sends it, and when that is unset
/// or `auto`, locally if the state dir is writable, else through the
/// daemon (as Nix's `auto` store decides; a `store` line in nix.conf
/// overrides both).
fn deleted_by(with: crate::apply::DeleteWith, remote: Option<&str>, writable: bool) -> String {
    use crate::apply::DeleteWith;
    match (with, remote.unwrap_or("")) {
        (DeleteWith::Storegc, _) => {
            "storegc's engine, on the local store (Nix's GC lock and gc-socket)".into()
        }
        (DeleteWith::NixStore, "daemon") => {
            "nix-store --delete, through the Nix daemon (NIX_REMOTE=daemon)".into()
        }
        (DeleteWith::NixStore, r) if r.starts_with("unix://") || r.starts_with("ssh") => {
            format!("nix-store --delete, through the store at {r} (NIX_REMOTE)")
        }
        (DeleteWith::NixStore, "local") => {
            "nix-store --delete, on the local store (NIX_REMOTE=local)".into()
        }
        (DeleteWith::NixStore, "" | "auto") if writable => {
            "nix-store --delete, on the local store (the state dir is writable)".into()
        }
        (DeleteWith::NixStore, "" | "auto") => {
            "nix-store --delete, through the Nix daemon (the state dir is not writable)".into()
        }
        (DeleteWith::NixStore, r) => format!("nix-store --delete, on the store {r} (NIX_REMOTE)"),
    }
}

/// After a run, the rollback window's state forgets what apply deleted
/// and what it found live again (a deleted path that comes back is new).
/// Nothing to forget (or a dry run): the state is left as `plan --out`
/// wrote it. Only with a plan made under `select.dead-for`.
fn update_dead_since(plan_file: &std::path::Path, report: &ApplyReport) -> Result<()> {
    if report.dry_run || (report.deleted.is_empty() && report.skipped_live.is_empty()) {
        return Ok(());
    }
    let plan = crate::apply::check::read_plan(plan_file)?;
    let Some(w) = &plan.window else {
        return Ok(());
    };
    let file = std::path::Path::new(&w.state_file);
    let _lock = crate::deadsince::lock_for_update(file)?;
    let Some(mut state) = crate::deadsince::load(file, &plan.store_dir)? else {
        return Ok(());
    };
    let hashes = (report.deleted.iter())
        .chain(&report.skipped_live)
        .map(|p| crate::store_path::hash_of(p.rsplit('/').next().unwrap_or(p)));
    state.forget(hashes);
    state.save(file)?;
    Ok(())
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
    if !r.dry_run {
        let _ = writeln!(out, "deleted by: {}", r.deleted_by);
    }
    let _ = writeln!(
        out,
        "{verb}: {} paths, {} (narSize)",
        r.deleted.len(),
        human_bytes(r.deleted_nar_bytes)
    );
    if !r.dry_run {
        let _ = writeln!(out, "{}", fs_change(r.freed_fs_bytes));
    }
    if r.freed_disk_bytes > 0 {
        let _ = writeln!(
            out,
            "freed on disk (allocated blocks): {}",
            human_bytes(r.freed_disk_bytes)
        );
    }
    let _ = writeln!(out, "kept because live now: {} paths", r.skipped_live.len());
    protection(&mut out, r);
    let _ = writeln!(out, "already gone: {} paths", r.already_gone);
    let removed = if r.dry_run {
        "roots that would be removed"
    } else {
        "roots removed"
    };
    let _ = writeln!(out, "{removed}: {}", r.roots_removed.len());
    for l in &r.roots_removed {
        let _ = writeln!(out, "  {l}");
    }
    let (gone, kept): (Vec<_>, Vec<_>) = r
        .roots_kept
        .iter()
        .partition(|(_, why)| why == "gone already");
    if !kept.is_empty() {
        let _ = writeln!(out, "roots kept: {}", kept.len());
        for (l, why) in kept {
            let _ = writeln!(out, "  {l}: {why}");
        }
    }
    if !gone.is_empty() {
        let _ = writeln!(out, "roots gone already: {}", gone.len());
        for (l, _) in gone {
            let _ = writeln!(out, "  {l}");
        }
    }
    if !r.failed.is_empty() {
        let _ = writeln!(out, "failed: {} paths", r.failed.len());
        for f in r.failed.iter().take(20) {
            let _ = writeln!(out, "  {}: {}", f.path, f.error);
        }
    }
    orphans(&mut out, &r.orphans_removed);
    if let Some(v) = &r.vacuum {
        let _ = writeln!(out, "{}", vacuum(v));
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

/// Store entries without a database row that the engine removed.
pub fn orphans(out: &mut String, removed: &[String]) {
    if removed.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "removed without a database row (left by a crash or a failed build): {}",
        removed.len()
    );
    for p in removed.iter().take(20) {
        let _ = writeln!(out, "  {p}");
    }
}

/// What `--vacuum` did, in words.
pub fn vacuum(v: &crate::apply::engine::Vacuum) -> String {
    let free = human_bytes(v.free_bytes_before);
    let size = human_bytes(v.bytes_before);
    if v.done {
        format!(
            "database vacuumed: {size} -> {} ({free} were free)",
            human_bytes(v.bytes_after)
        )
    } else {
        format!("database not vacuumed: {free} of {size} free, less than a quarter")
    }
}

/// The policy's second look: inputs changed since the plan, and the
/// planned paths they protect now.
fn protection(out: &mut String, r: &ApplyReport) {
    let short = |d: &Option<String>| {
        d.as_deref()
            .map_or("none".into(), |d| d.chars().take(12).collect::<String>())
    };
    for c in &r.inputs_changed {
        let _ = writeln!(
            out,
            "changed since the plan: {} {} (sha256 {} -> {})",
            c.kind.as_str(),
            c.path,
            short(&c.planned),
            short(&c.now)
        );
    }
    let _ = writeln!(
        out,
        "kept: protected now: {} paths",
        r.kept_protected_now.len()
    );
    for p in r.kept_protected_now.iter().take(20) {
        let _ = writeln!(out, "  {p}");
    }
}

#[cfg(test)]
mod tests {
    use super::fs_change;

    #[test]
    fn a_dry_run_says_would_and_gone_roots_have_their_own_heading() {
        let r = super::ApplyReport {
            dry_run: true,
            roots_removed: vec!["/s/gcroots/auto/a".into()],
            roots_kept: vec![
                ("/s/gcroots/auto/b".into(), "gone already".into()),
                (
                    "/s/p-2-link".into(),
                    "the profile's current generation".into(),
                ),
            ],
            ..Default::default()
        };
        let t = super::text(&r);
        assert!(t.contains("would delete: 0 paths"), "{t}");
        assert!(
            t.contains("roots that would be removed: 1\n  /s/gcroots/auto/a\n"),
            "{t}"
        );
        assert!(
            t.contains("roots kept: 1\n  /s/p-2-link: the profile's current generation\n"),
            "{t}"
        );
        assert!(
            t.contains("roots gone already: 1\n  /s/gcroots/auto/b\n"),
            "{t}"
        );
        assert!(!t.contains("filesystem free space"), "{t}");
    }

    #[test]
    fn stop_messages_say_what_happens() {
        assert!(super::stop_message(0).contains("stopping after the current batch"));
        assert!(super::stop_message(1).contains("still finishing the current batch"));
        assert_eq!(super::stop_message(1), super::stop_message(5));
    }

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
