//! `storegc apply`: the only code that deletes. Its steps, each a module:
//! 1. [`check`]: the plan, against this store and the clock; [`protect`]
//!    re-reads the plan's policy and closure lists;
//! 2. [`remove`]: the roots the plan expired, each only if it still points
//!    where the plan saw it;
//! 3. [`recheck`]: the store read again; every planned path that became
//!    live or that the policy protects now is kept;
//! 4. [`delete`]: the rest in referrers-first batches ([`order`]), through
//!    one of two deleters: `nix-store --delete` ([`nix_store`]) or
//!    storegc's own engine under Nix's GC protocol ([`engine`]).
//!
//! Stopping (SIGINT/SIGTERM) takes effect between batches; every batch is
//! closed under referrers, so the store is consistent after each one, and a
//! second `apply` of the same plan finishes the job.

pub mod check;
pub mod delete;
pub mod engine;
pub mod nix;
pub mod nix_store;
pub mod order;
pub mod protect;
pub mod recheck;
pub mod remove;
pub mod repair;
pub mod scc;

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use serde::Serialize;

use crate::load::{load, LoadError, LoadOptions, StoreState};
use crate::settings::Settings;
use check::PlanError;

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
    #[error("{0}: cannot read the store folder ({1})")]
    Store(PathBuf, std::io::Error),
}

/// Which deleter takes the batches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum DeleteWith {
    /// `nix-store --delete`, batch by batch
    NixStore,
    /// storegc's own engine, under Nix's collector protocol (the `engine`
    /// module)
    #[default]
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
    /// Vacuum the database at the end, under the GC lock, when a quarter
    /// of it is free (see [`engine::Engine::vacuum`]).
    pub vacuum: bool,
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
            delete_with: DeleteWith::Storegc,
            lock_timeout: Duration::from_secs(u64::MAX / 4),
            chunk_size: 50_000,
            allow_incomplete_roots: false,
            vacuum: false,
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
    /// Store entries without a database row that nothing held, removed by
    /// the engine (left by a crash between a commit and its files, or by
    /// failed builds), sorted.
    pub orphans_removed: Vec<String>,
    /// What `--vacuum` found and did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<engine::Vacuum>,
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

/// Callbacks for progress (the command layer draws bars): paths and
/// narSize bytes, in total and as each batch is deleted.
pub trait Progress {
    fn start(&self, _paths: u64, _bytes: u64) {}
    fn advance(&self, _paths: u64, _bytes: u64) {}
}

impl Progress for () {}

/// Applies a plan file: [`check`] the plan, [`remove`] the roots it
/// expired, [`recheck`] the store as it is now, then [`delete`] with the
/// chosen deleter. `stop` is set by the signal handler; `now` comes from
/// the caller.
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
    let (plan, _lock) = prepare(plan_file, settings, opts, now)?;
    // The engine's lock and gc-socket come before every root is read.
    let mut deleter = delete::start(settings, opts)?;
    let mut report = ApplyReport {
        dry_run: opts.dry_run,
        ..ApplyReport::default()
    };
    // The fresh scan that confirms every root removal; bad input (an
    // unreadable store) fails here, before anything changed.
    let before = load(settings, &opts.load)?;
    check_roots_complete(&before, opts, &mut report)?;
    let protection = reload_policy(&plan, &before, settings, &mut report)?;
    let dropped = remove::remove_roots(
        &plan.expired_roots,
        settings,
        &before,
        opts.dry_run,
        &mut report,
    );
    let current = match recheck::current_store(before, &dropped, settings, opts) {
        Ok(c) => c,
        Err(e) => return fail_late(report, e.into()),
    };
    let mut deletable = recheck::recheck(&plan, &current, settings, &mut report);
    report.kept_protected_now = protection.keep(&current.state, settings, &mut deletable);
    let target = delete::Target {
        state: &current.state,
        settings,
        stop,
        progress,
    };
    match delete::delete_all(deleter.as_mut(), &target, &mut deletable, opts, &mut report) {
        Ok(()) => Ok(finish(report)),
        Err(e) => fail_late(report, e),
    }
}

/// The plan, checked against this store and the clock; in a real run also
/// the apply lock. Nothing has changed yet.
fn prepare(
    plan_file: &Path,
    settings: &Settings,
    opts: &ApplyOptions,
    now: i64,
) -> Result<(crate::plan::Plan, Option<std::fs::File>), ApplyError> {
    let plan = check::read_plan(plan_file)?;
    check::check_plan(&plan, plan_file, settings, now, opts.max_plan_age)?;
    if opts.dry_run {
        return Ok((plan, None));
    }
    Ok((plan, Some(take_lock(&settings.state_dir)?)))
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

/// One apply at a time per store: an exclusive `flock` on
/// `$NIX_STATE_DIR/storegc/apply.lock`, refused (not waited for) when held.
pub(crate) fn take_lock(state_dir: &Path) -> Result<std::fs::File, ApplyError> {
    let dir = state_dir.join("storegc");
    let path = dir.join("apply.lock");
    std::fs::create_dir_all(&dir).map_err(|e| ApplyError::Lock(path.clone(), e))?;
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| ApplyError::Lock(path.clone(), e))?;
    match crate::flock::try_lock_exclusive(&file) {
        Ok(true) => Ok(file),
        Ok(false) => Err(ApplyError::Busy(path)),
        Err(e) => Err(ApplyError::Lock(path, e)),
    }
}
