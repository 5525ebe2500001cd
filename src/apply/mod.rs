//! `storegc apply`: the only code that deletes. It checks the plan,
//! re-reads the plan's policy and closure lists (see [`protect`]), removes
//! the roots the plan expired (each only if it still points where the plan
//! saw it), re-reads the store and its roots, keeps every planned path that
//! became live or that the policy protects now, and deletes the rest
//! through `nix-store --delete` in referrers-first batches.
//!
//! Stopping (SIGINT/SIGTERM) takes effect between batches; every batch is
//! closed under referrers, so the store is consistent after each one, and a
//! second `apply` of the same plan finishes the job.

pub mod check;
pub mod engine;
pub mod nix;
pub mod order;
pub mod protect;
pub mod remove;
pub mod scc;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::load::{available_bytes, load, LoadError, LoadOptions, StoreState};
use crate::paths::{PathId, NO_PATH};
use crate::plan::ExpiredRoot;
use crate::settings::Settings;
use check::PlanError;
use nix::DeleteOutcome;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Load(#[from] LoadError),
    /// The plan's policy or a closure list, re-read, is bad or gone.
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyError),
    #[error("{0}: another storegc apply is running on this store")]
    Busy(PathBuf),
    #[error("{0}: cannot take the apply lock ({1})")]
    Lock(PathBuf, std::io::Error),
    #[error("nix-store not found on PATH (use --nix-store)")]
    NoNixStore,
    #[error("{0}: cannot run nix-store ({1})")]
    Spawn(PathBuf, std::io::Error),
    #[error(transparent)]
    Engine(#[from] engine::EngineError),
    /// The fresh scan could not read every process's runtime roots.
    #[error(
        "roots incomplete: {count} process{} could not be read (e.g. /proc/{first}: permission denied); \
         run apply as root, or pass --allow-incomplete-roots to delete anyway",
        if *count == 1 { "" } else { "es" }
    )]
    IncompleteRoots { count: usize, first: u32 },
}

/// Which deleter takes the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeleteWith {
    /// `nix-store --delete`, batch by batch
    #[default]
    NixStore,
    /// storegc's own engine (Nix's collector protocol, see [`engine`])
    Storegc,
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub max_plan_age: Duration,
    pub dry_run: bool,
    pub nix_store: Option<PathBuf>,
    pub load: LoadOptions,
    /// Paths per `nix-store --delete` call.
    pub batch_paths: usize,
    /// At most this many bytes of arguments per call; never more than
    /// [`nix::arg_budget`] (ARG_MAX minus the environment) leaves.
    pub batch_bytes: Option<usize>,
    pub delete_with: DeleteWith,
    /// How long the engine waits for Nix's GC lock.
    pub lock_timeout: Duration,
    /// Paths per engine chunk (one SQLite transaction each).
    pub chunk_size: usize,
    /// Delete even when some processes' runtime roots could not be read.
    pub allow_incomplete_roots: bool,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_plan_age: Duration::from_secs(24 * 3600),
            dry_run: false,
            nix_store: None,
            load: LoadOptions::default(),
            batch_paths: 20_000,
            batch_bytes: None,
            delete_with: DeleteWith::NixStore,
            lock_timeout: Duration::from_secs(u64::MAX / 4),
            chunk_size: 50_000,
            allow_incomplete_roots: false,
        }
    }
}

/// What happened, for the report. Lists are sorted.
#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub dry_run: bool,
    /// Who deleted and where: storegc's engine on the local store, or
    /// `nix-store --delete` locally or through the daemon (set by the
    /// command layer, which knows the environment).
    pub deleted_by: String,
    pub deleted: Vec<String>,
    pub deleted_nar_bytes: u64,
    /// Filesystem bytes available after minus before (statvfs); 0 in a dry
    /// run or when statvfs failed (then with a warning).
    pub freed_fs_bytes: i64,
    /// Bytes the engine freed on disk (allocated blocks, hard links once);
    /// 0 with `nix-store`.
    pub freed_disk_bytes: u64,
    /// Planned paths that are live now (a new root or referrer), with
    /// everything they keep.
    pub skipped_live: Vec<String>,
    /// Planned paths that were no longer valid.
    pub already_gone: usize,
    /// Planned paths the policy's current inputs protect ("kept: protected
    /// now"), with everything they keep.
    pub kept_protected_now: Vec<String>,
    /// Policy inputs whose digest differs from the plan's.
    pub inputs_changed: Vec<protect::InputChange>,
    pub failed: Vec<Failure>,
    pub roots_removed: Vec<String>,
    /// Expired roots left in place, with the reason.
    pub roots_kept: Vec<(String, String)>,
    /// Stopped by a signal before the last batch.
    pub interrupted: bool,
    /// Errors after something had changed (exit 1).
    pub errors: Vec<String>,
    /// E.g. the free space could not be measured.
    pub warnings: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct Failure {
    pub path: String,
    pub error: String,
}

/// Callbacks for progress (the command layer draws bars).
pub trait Progress {
    fn start(&self, _paths: u64) {}
    fn advance(&self, _paths: u64) {}
}

impl Progress for () {}

/// Applies a plan file. `stop` is set by the signal handler; `now` comes
/// from the caller.
///
/// An error before anything changed is returned (exit 2, "nothing
/// changed"); once a root is removed or a batch deleted, every later error
/// goes into [`ApplyReport::errors`] instead, so the report is not lost.
pub fn apply(
    plan_file: &Path,
    settings: &Settings,
    opts: &ApplyOptions,
    stop: &AtomicBool,
    now: i64,
    progress: &dyn Progress,
) -> Result<ApplyReport, ApplyError> {
    let (plan, nix_store, _lock) = prepare(plan_file, settings, opts, now)?;
    // The engine's lock and gc-socket come before every root is read.
    let engine = match (opts.delete_with, opts.dry_run) {
        (DeleteWith::Storegc, false) => Some(std::cell::RefCell::new(engine::Engine::start(
            settings,
            opts.lock_timeout,
            opts.load.busy_timeout,
        )?)),
        _ => None,
    };
    let mut report = ApplyReport {
        dry_run: opts.dry_run,
        ..ApplyReport::default()
    };
    // The fresh scan that confirms every root removal; bad input (an
    // unreadable store) fails here, before anything changed.
    let before = load(settings, &opts.load)?;
    check_roots_complete(&before, opts, &mut report)?;
    let protection = reload_policy(&plan, &before, settings, &mut report)?;
    let dropped = remove_roots(
        &plan.expired_roots,
        settings,
        &before,
        opts.dry_run,
        &mut report,
    );
    let current = match current_store(before, &dropped, settings, opts) {
        Ok(c) => c,
        Err(e) => return fail_late(report, e.into()),
    };
    let mut deletable = recheck(&plan, &current, settings, &mut report);
    report.kept_protected_now = protection.keep(&current.state, settings, &mut deletable);
    let deleter = Deleter {
        nix_store: nix_store.as_deref(),
        engine: engine.as_ref(),
        state: &current.state,
        settings,
        stop,
        progress,
    };
    match delete_all(&deleter, &mut deletable, opts, &mut report) {
        Ok(()) => Ok(finish(report)),
        Err(e) => fail_late(report, e),
    }
}

/// The plan, checked against this store and the clock; in a real run also
/// `nix-store` and the apply lock. Nothing has changed yet.
fn prepare(
    plan_file: &Path,
    settings: &Settings,
    opts: &ApplyOptions,
    now: i64,
) -> Result<(crate::plan::Plan, Option<PathBuf>, Option<std::fs::File>), ApplyError> {
    let plan = check::read_plan(plan_file)?;
    check::check_plan(&plan, plan_file, settings, now, opts.max_plan_age)?;
    if opts.dry_run {
        return Ok((plan, None, None));
    }
    let lock = take_lock(&settings.state_dir)?;
    if opts.delete_with == DeleteWith::Storegc {
        return Ok((plan, None, Some(lock)));
    }
    let nix_store = nix::find_nix_store(opts.nix_store.as_deref()).ok_or(ApplyError::NoNixStore)?;
    Ok((plan, Some(nix_store), Some(lock)))
}

/// Refuses a real run whose fresh scan could not read every process's
/// runtime roots (not running as root), unless allowed; a dry run or an
/// allowed run carries the warning instead. Nothing has changed yet.
fn check_roots_complete(
    state: &StoreState,
    opts: &ApplyOptions,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let Some(warning) = state.incomplete_roots_warning() else {
        return Ok(());
    };
    if !opts.dry_run && !opts.allow_incomplete_roots {
        return Err(ApplyError::IncompleteRoots {
            count: state.unreadable_processes.len(),
            first: state.unreadable_processes[0],
        });
    }
    report.warnings.push(warning);
    Ok(())
}

/// The plan's policy and closure lists re-read against the fresh scan
/// (see [`protect`]); what changed since the plan goes in the report. A
/// policy that no longer loads is refused here, before anything changed.
fn reload_policy(
    plan: &crate::plan::Plan,
    before: &StoreState,
    settings: &Settings,
    report: &mut ApplyReport,
) -> Result<protect::Protection, ApplyError> {
    let (protection, changed) = protect::reload(plan, before, settings)?;
    for c in &changed {
        tracing::warn!(path = %c.path, "policy input changed since the plan");
    }
    report.inputs_changed = changed;
    Ok(protection)
}

/// An error after the plan checks: returned as is while nothing changed,
/// else recorded in the report (exit 1).
fn fail_late(mut report: ApplyReport, err: ApplyError) -> Result<ApplyReport, ApplyError> {
    let touched = !report.roots_removed.is_empty() || !report.deleted.is_empty();
    let changed = !report.dry_run && touched;
    if !changed {
        return Err(err);
    }
    report.errors.push(err.to_string());
    Ok(finish(report))
}

/// Sorts the report's lists.
fn finish(mut report: ApplyReport) -> ApplyReport {
    report.deleted.sort();
    report.skipped_live.sort();
    report.skipped_live.dedup();
    report.kept_protected_now.sort();
    report.roots_removed.sort();
    report.roots_kept.sort();
    report.failed.sort_by(|a, b| a.path.cmp(&b.path));
    report
}

/// Removes (in a dry run: pretends to) the expired roots that the fresh
/// scan in `before` confirms (see [`remove`]); the others are kept and
/// reported with why. Returns the links removed.
fn remove_roots(
    expired: &[ExpiredRoot],
    settings: &Settings,
    before: &StoreState,
    dry_run: bool,
    report: &mut ApplyReport,
) -> HashSet<String> {
    let state_dir = crate::roots::gcroots::canonical_state_dir(&settings.state_dir);
    let state_dir = state_dir.to_string_lossy();
    let mut dropped = HashSet::new();
    for e in expired {
        let checked = remove::confirm_planned(e, &state_dir, &settings.store_dir, &before.roots)
            .or_else(|why| remove::confirm_points_to(e).and(Err(why)))
            .and_then(|()| remove::confirm_on_disk(e, &settings.store_dir));
        let removed = checked.and_then(|()| {
            if dry_run {
                Ok(true)
            } else {
                remove::remove_link(&e.link, &e.points_to)
            }
        });
        match removed {
            Ok(_) => {
                dropped.insert(e.link.clone());
                report.roots_removed.push(e.link.clone());
            }
            Err(why) => report.roots_kept.push((e.link.clone(), why)),
        }
    }
    dropped
}

/// The store as apply deletes from it, with the roots that hold paths now.
struct Current {
    state: StoreState,
    roots: Vec<PathId>,
}

/// The store after root removal. A real run that removed roots reads the
/// store again and honours every root found, including one re-created
/// meanwhile (`nix-build -o result` again makes the same `gcroots/auto`
/// entry). A dry run (or a run that removed nothing) reuses `before`; in a
/// dry run the links it would remove are still on disk, so their roots are
/// left out.
fn current_store(
    before: StoreState,
    dropped: &HashSet<String>,
    settings: &Settings,
    opts: &ApplyOptions,
) -> Result<Current, LoadError> {
    let state = if opts.dry_run || dropped.is_empty() {
        before
    } else {
        load(settings, &opts.load)?
    };
    let roots = roots_now(&state, &ignored_links(opts.dry_run, dropped));
    Ok(Current { state, roots })
}

/// The links whose roots the re-check leaves out: in a dry run the ones it
/// would have removed (still on disk); in a real run none, since the store
/// was read again after removal and a link found then is a root now.
fn ignored_links(dry_run: bool, dropped: &HashSet<String>) -> HashSet<String> {
    if dry_run {
        dropped.clone()
    } else {
        HashSet::new()
    }
}

/// The ids held by the roots in `state`, except those whose link (or, for
/// an indirect root, whose `gcroots` entry) is in `ignore`. O(r).
fn roots_now(state: &StoreState, ignore: &HashSet<String>) -> Vec<PathId> {
    state
        .root_ids
        .iter()
        .filter(|&&(i, _)| {
            let r = &state.roots[i];
            !(ignore.contains(&r.link) || r.via.as_ref().is_some_and(|v| ignore.contains(v)))
        })
        .map(|&(_, id)| id)
        .collect()
}

/// Which planned paths may still go: valid now and dead in the current
/// graph, closed under referrers. Reports the others.
fn recheck(
    plan: &crate::plan::Plan,
    current: &Current,
    settings: &Settings,
    report: &mut ApplyReport,
) -> Vec<bool> {
    let state = &current.state;
    let n = state.snap.len();
    let mut planned = vec![false; n];
    for d in &plan.delete {
        let id = settings
            .store_dir
            .store_path_of(&d.path)
            .ok()
            .and_then(|b| state.snap.paths.lookup(b))
            .unwrap_or(NO_PATH);
        if id == NO_PATH {
            report.already_gone += 1;
        } else {
            planned[id as usize] = true;
        }
    }
    let deletable = order::recheck(&state.graph, &planned, &current.roots);
    for id in 0..n {
        if planned[id] && !deletable[id] {
            report
                .skipped_live
                .push(settings.store_dir.join(state.snap.paths.get(id as PathId)));
        }
    }
    deletable
}

/// What the delete step works on.
struct Deleter<'a> {
    nix_store: Option<&'a Path>,
    engine: Option<&'a std::cell::RefCell<engine::Engine>>,
    state: &'a StoreState,
    settings: &'a Settings,
    stop: &'a AtomicBool,
    progress: &'a dyn Progress,
}

impl Deleter<'_> {
    fn path(&self, id: PathId) -> String {
        self.settings.store_dir.join(self.state.snap.paths.get(id))
    }
}

/// Deletes the deletable paths batch by batch, referrers first, stopping
/// between batches on a signal. After a batch with refusals or failures,
/// one re-check drops everything the paths left behind keep.
fn delete_all(
    d: &Deleter,
    deletable: &mut [bool],
    opts: &ApplyOptions,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let (state, settings) = (d.state, d.settings);
    let budget = nix::arg_budget(d.nix_store.unwrap_or(Path::new("nix-store")), settings);
    let (max_paths, max_bytes) = match d.engine {
        Some(_) => (opts.chunk_size.max(1), usize::MAX),
        None => (
            opts.batch_paths,
            opts.batch_bytes.map_or(budget, |b| b.min(budget)),
        ),
    };
    let batches = order::batches(&state.graph, deletable, max_paths, max_bytes, |id| {
        settings.store_dir.as_str().len() + 1 + state.snap.paths.get(id).len() + nix::PTR
    });
    let total: usize = batches.iter().map(Vec::len).sum();
    d.progress.start(total as u64);
    tracing::info!(paths = total, batches = batches.len(), "deleting");
    let before = available_bytes(settings.store_dir.as_str());
    let mut result = Ok(());
    for batch in batches {
        if d.stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let todo: Vec<PathId> = batch
            .into_iter()
            .filter(|&id| deletable[id as usize])
            .collect();
        match delete_batch(d, todo, deletable, report) {
            Ok(survivors) => {
                for id in order::drop_kept(&state.graph, deletable, &survivors) {
                    if !survivors.contains(&id) {
                        report.skipped_live.push(d.path(id));
                    }
                }
            }
            Err(e) => {
                result = Err(e);
                break;
            }
        }
        if report.interrupted {
            break;
        }
    }
    if let Some(e) = d.engine {
        match e.borrow().sweep_links() {
            Ok(b) => report.freed_disk_bytes += b,
            Err(e) => report
                .errors
                .push(format!("{}/.links: {e}", settings.store_dir.as_str())),
        }
    }
    if !opts.dry_run {
        match (before, available_bytes(settings.store_dir.as_str())) {
            (Some(b), Some(a)) => report.freed_fs_bytes = a as i64 - b as i64,
            _ => report
                .warnings
                .push("cannot measure the space available on the store's filesystem".into()),
        }
    }
    result
}

/// One batch through `nix-store --delete` (in a dry run: counted as
/// deleted). A refusal drops the refused path and what it keeps, and the
/// rest of the batch is tried again; each refusal drops a path, so this
/// ends. Returns the batch's paths still on disk (refused or failed).
fn delete_batch(
    d: &Deleter,
    mut todo: Vec<PathId>,
    deletable: &mut [bool],
    report: &mut ApplyReport,
) -> Result<Vec<PathId>, ApplyError> {
    let snap = &d.state.snap;
    if let Some(e) = d.engine {
        return Ok(engine_batch(
            d,
            &mut e.borrow_mut(),
            &todo,
            deletable,
            report,
        ));
    }
    let Some(nix_store) = d.nix_store else {
        for &id in &todo {
            report.deleted.push(d.path(id));
            report.deleted_nar_bytes = report
                .deleted_nar_bytes
                .saturating_add(snap.nar_size[id as usize]);
        }
        d.progress.advance(todo.len() as u64);
        return Ok(Vec::new());
    };
    let mut survivors = Vec::new();
    while !todo.is_empty() {
        let args: Vec<String> = todo.iter().map(|&id| d.path(id)).collect();
        let outcome = nix::delete(nix_store, d.settings, &args)
            .map_err(|e| ApplyError::Spawn(nix_store.to_path_buf(), e))?;
        let mut remaining = Vec::new();
        for (&id, path) in todo.iter().zip(&args) {
            if std::fs::symlink_metadata(path).is_err() {
                report.deleted.push(path.clone());
                report.deleted_nar_bytes = report
                    .deleted_nar_bytes
                    .saturating_add(snap.nar_size[id as usize]);
                d.progress.advance(1);
            } else {
                remaining.push(id);
            }
        }
        match outcome {
            DeleteOutcome::Done => {
                survivors.extend(remaining);
                break;
            }
            DeleteOutcome::Alive(paths) => {
                tracing::warn!(
                    ?paths,
                    "nix-store refused: still alive; keeping them and what they keep"
                );
                let ids: Vec<PathId> = paths
                    .iter()
                    .filter_map(|p| {
                        // Lix names basenames, Nix full paths.
                        let b = d.settings.store_dir.store_path_of(p).unwrap_or(p.as_str());
                        snap.paths.lookup(b)
                    })
                    .filter(|&id| deletable[id as usize] && remaining.contains(&id))
                    .collect();
                if ids.is_empty() {
                    let msg = format!("nix-store refused {}", paths.join(" "));
                    fail_all(d, report, &remaining, &msg);
                    survivors.extend(remaining);
                    break;
                }
                for v in order::drop_kept(&d.state.graph, deletable, &ids) {
                    report.skipped_live.push(d.path(v));
                }
                todo = remaining
                    .into_iter()
                    .filter(|&v| deletable[v as usize])
                    .collect();
            }
            DeleteOutcome::Failed(_) if d.stop.load(Ordering::SeqCst) => {
                // A signal for the whole group (systemd's stop) cut Nix
                // short too: what is left goes on the next run.
                report.interrupted = true;
                survivors.extend(remaining);
                break;
            }
            DeleteOutcome::Failed(msg) => {
                fail_all(d, report, &remaining, &msg);
                survivors.extend(remaining);
                break;
            }
        }
    }
    Ok(survivors)
}

/// One chunk through the engine; returns the chunk's paths still valid.
fn engine_batch(
    d: &Deleter,
    engine: &mut engine::Engine,
    todo: &[PathId],
    deletable: &mut [bool],
    report: &mut ApplyReport,
) -> Vec<PathId> {
    let snap = &d.state.snap;
    let out = engine.delete_chunk(todo, &d.state.graph, deletable, |id| {
        snap.paths.get(id).to_string()
    });
    for &id in &out.kept {
        report.skipped_live.push(d.path(id));
    }
    for &id in &out.deleted {
        report.deleted.push(d.path(id));
        report.deleted_nar_bytes = report
            .deleted_nar_bytes
            .saturating_add(snap.nar_size[id as usize]);
    }
    d.progress.advance(out.deleted.len() as u64);
    report.freed_disk_bytes += out.freed_bytes;
    for (id, e) in &out.file_errors {
        report
            .errors
            .push(format!("{}: invalid now, files left: {e}", d.path(*id)));
    }
    match out.failed {
        Some((ids, msg)) => {
            tracing::warn!(%msg, "chunk rolled back");
            fail_all(d, report, &ids, &msg);
            ids
        }
        None => Vec::new(),
    }
}

fn fail_all(d: &Deleter, report: &mut ApplyReport, ids: &[PathId], msg: &str) {
    for &id in ids {
        report.failed.push(Failure {
            path: d.path(id),
            error: msg.to_string(),
        });
    }
}

/// One apply at a time per store: an exclusive `flock` on
/// `$NIX_STATE_DIR/storegc/apply.lock`, refused (not waited for) when held.
fn take_lock(state_dir: &Path) -> Result<std::fs::File, ApplyError> {
    let dir = state_dir.join("storegc");
    let path = dir.join("apply.lock");
    std::fs::create_dir_all(&dir).map_err(|e| ApplyError::Lock(path.clone(), e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ApplyError::Lock(path.clone(), e))?;
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
        let err = std::io::Error::last_os_error();
        return Err(if err.raw_os_error() == Some(libc::EWOULDBLOCK) {
            ApplyError::Busy(path)
        } else {
            ApplyError::Lock(path, err)
        });
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Pins a bug: the dry run's filter ran in real runs too, so a
    /// `gcroots/auto` entry re-created by `nix-build -o result` between
    /// removal and the re-scan was ignored and its new build deleted.
    #[test]
    fn a_real_run_honours_every_root_found_after_removal() {
        let dropped = HashSet::from(["/v/gcroots/auto/h".to_string()]);
        assert!(ignored_links(false, &dropped).is_empty());
        assert_eq!(ignored_links(true, &dropped), dropped);
    }
}
