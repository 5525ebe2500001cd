//! `storegc apply`: the only code that deletes. It checks the plan,
//! removes the roots the plan expired (each only if it still points where
//! the plan saw it), re-reads the store and its roots, keeps every planned
//! path that became live, and deletes the rest through `nix-store
//! --delete` in referrers-first batches.
//!
//! Stopping (SIGINT/SIGTERM) takes effect between batches; every batch is
//! closed under referrers, so the store is consistent after each one, and a
//! second `apply` of the same plan finishes the job.

pub mod check;
pub mod nix;
pub mod order;

use std::collections::HashSet;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::Serialize;

use crate::graph::live_set_sequential;
use crate::load::{available_bytes, load, LoadError, LoadOptions};
use crate::paths::{PathId, NO_PATH};
use crate::plan::{ExpiredKind, ExpiredRoot};
use crate::settings::Settings;
use check::PlanError;
use nix::DeleteOutcome;

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Load(#[from] LoadError),
    #[error("{0}: another storegc apply is running on this store")]
    Busy(PathBuf),
    #[error("{0}: cannot take the apply lock ({1})")]
    Lock(PathBuf, std::io::Error),
    #[error("nix-store not found on PATH (use --nix-store)")]
    NoNixStore,
    #[error("{0}: cannot run nix-store ({1})")]
    Spawn(PathBuf, std::io::Error),
}

#[derive(Debug, Clone)]
pub struct ApplyOptions {
    pub max_plan_age: Duration,
    pub dry_run: bool,
    pub nix_store: Option<PathBuf>,
    pub load: LoadOptions,
    /// Paths per `nix-store --delete` call.
    pub batch_paths: usize,
    /// Bytes of arguments per call (under ARG_MAX with room for the
    /// environment).
    pub batch_bytes: usize,
}

impl Default for ApplyOptions {
    fn default() -> Self {
        ApplyOptions {
            max_plan_age: Duration::from_secs(24 * 3600),
            dry_run: false,
            nix_store: None,
            load: LoadOptions::default(),
            batch_paths: 20_000,
            batch_bytes: 1 << 20,
        }
    }
}

/// What happened, for the report. Lists are sorted.
#[derive(Debug, Default, Serialize)]
pub struct ApplyReport {
    pub dry_run: bool,
    pub deleted: Vec<String>,
    pub deleted_nar_bytes: u64,
    /// Filesystem bytes available after minus before (statvfs); 0 in a dry
    /// run.
    pub freed_fs_bytes: i64,
    /// Planned paths that are live now (a new root or referrer), with
    /// everything they keep.
    pub skipped_live: Vec<String>,
    /// Planned paths that were no longer valid.
    pub already_gone: usize,
    pub failed: Vec<Failure>,
    pub roots_removed: Vec<String>,
    /// Expired roots left in place, with the reason.
    pub roots_kept: Vec<(String, String)>,
    /// Stopped by a signal before the last batch.
    pub interrupted: bool,
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
pub fn apply(
    plan_file: &Path,
    settings: &Settings,
    opts: &ApplyOptions,
    stop: &AtomicBool,
    now: i64,
    progress: &dyn Progress,
) -> Result<ApplyReport, ApplyError> {
    let plan = check::read_plan(plan_file)?;
    check::check_plan(&plan, plan_file, settings, now, opts.max_plan_age)?;
    let nix_store = if opts.dry_run {
        None
    } else {
        Some(nix::find_nix_store(opts.nix_store.as_deref()).ok_or(ApplyError::NoNixStore)?)
    };
    let _lock = if opts.dry_run {
        None
    } else {
        Some(take_lock(&settings.state_dir)?)
    };

    let mut report = ApplyReport {
        dry_run: opts.dry_run,
        ..ApplyReport::default()
    };
    // Bad input must change nothing: make sure the store can be read
    // before any root goes (the re-check below reads it again, after).
    if !plan.expired_roots.is_empty() && !opts.dry_run {
        load(settings, &opts.load)?;
    }
    // Roots: remove (or, in a dry run, pretend to remove) the expired ones.
    let mut dropped_links: HashSet<String> = HashSet::new();
    for e in &plan.expired_roots {
        match may_remove(e, &settings.store_dir) {
            Ok(()) => {
                if !opts.dry_run {
                    if let Err(err) = std::fs::remove_file(&e.link) {
                        if err.kind() != std::io::ErrorKind::NotFound {
                            report
                                .roots_kept
                                .push((e.link.clone(), format!("cannot remove: {err}")));
                            continue;
                        }
                    }
                }
                dropped_links.insert(e.link.clone());
                report.roots_removed.push(e.link.clone());
            }
            Err(why) => report.roots_kept.push((e.link.clone(), why)),
        }
    }

    // The store as it is now.
    let state = load(settings, &opts.load)?;
    let n = state.snap.len();
    let roots: Vec<PathId> = state
        .root_ids
        .iter()
        .filter(|&&(i, _)| {
            // In a dry run the expired links are still on disk.
            let r = &state.roots[i];
            !(dropped_links.contains(&r.link)
                || r.via.as_ref().is_some_and(|v| dropped_links.contains(v)))
        })
        .map(|&(_, id)| id)
        .collect();
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
    let mut deletable = order::recheck(&state.graph, &planned, &roots);
    for id in 0..n {
        if planned[id] && !deletable[id] {
            report
                .skipped_live
                .push(settings.store_dir.join(state.snap.paths.get(id as PathId)));
        }
    }
    let batches = order::batches(
        &state.graph,
        &deletable,
        opts.batch_paths,
        opts.batch_bytes,
        |id| settings.store_dir.as_str().len() + 1 + state.snap.paths.get(id).len(),
    );
    let total: usize = batches.iter().map(Vec::len).sum();
    progress.start(total as u64);
    tracing::info!(paths = total, batches = batches.len(), "deleting");

    let before = available_bytes(settings.store_dir.as_str());
    for batch in batches {
        if stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let mut todo: Vec<PathId> = batch
            .into_iter()
            .filter(|&id| deletable[id as usize])
            .collect();
        let Some(nix_store) = &nix_store else {
            for &id in &todo {
                report
                    .deleted
                    .push(settings.store_dir.join(state.snap.paths.get(id)));
                report.deleted_nar_bytes += state.snap.nar_size[id as usize];
            }
            progress.advance(todo.len() as u64);
            continue;
        };
        // Each refusal drops one live path and what it keeps, so this ends.
        while !todo.is_empty() {
            let args: Vec<String> = todo
                .iter()
                .map(|&id| settings.store_dir.join(state.snap.paths.get(id)))
                .collect();
            let outcome = nix::delete(nix_store, settings, &args)
                .map_err(|e| ApplyError::Spawn(nix_store.clone(), e))?;
            let mut remaining = Vec::new();
            for (&id, path) in todo.iter().zip(&args) {
                if std::fs::symlink_metadata(path).is_err() {
                    report.deleted.push(path.clone());
                    report.deleted_nar_bytes += state.snap.nar_size[id as usize];
                    progress.advance(1);
                } else {
                    remaining.push(id);
                }
            }
            match outcome {
                DeleteOutcome::Done => break,
                DeleteOutcome::Alive(paths) => {
                    tracing::warn!(
                        ?paths,
                        "nix-store refused: still alive; keeping them and what they keep"
                    );
                    let ids: Vec<PathId> = paths
                        .iter()
                        .filter_map(|p| {
                            // Lix names basenames, Nix full paths.
                            let b = settings.store_dir.store_path_of(p).unwrap_or(p.as_str());
                            state.snap.paths.lookup(b)
                        })
                        .filter(|&id| deletable[id as usize])
                        .collect();
                    if ids.is_empty() {
                        fail_all(
                            &mut report,
                            &remaining,
                            &state,
                            settings,
                            &format!("nix-store refused {}", paths.join(" ")),
                        );
                        break;
                    }
                    let keep = live_set_sequential(&state.graph, &ids);
                    for (v, k) in keep.iter().enumerate() {
                        if *k && deletable[v] {
                            deletable[v] = false;
                            report
                                .skipped_live
                                .push(settings.store_dir.join(state.snap.paths.get(v as PathId)));
                        }
                    }
                    todo = remaining
                        .into_iter()
                        .filter(|&v| deletable[v as usize])
                        .collect();
                }
                DeleteOutcome::Failed(_) if stop.load(Ordering::SeqCst) => {
                    // A signal for the whole group (systemd's stop) cut Nix
                    // short too: what is left goes on the next run.
                    report.interrupted = true;
                    break;
                }
                DeleteOutcome::Failed(msg) => {
                    fail_all(&mut report, &remaining, &state, settings, &msg);
                    for &v in &remaining {
                        deletable[v as usize] = false;
                    }
                    break;
                }
            }
        }
    }
    if !opts.dry_run {
        let after = available_bytes(settings.store_dir.as_str());
        report.freed_fs_bytes = after as i64 - before as i64;
    }
    report.deleted.sort();
    report.skipped_live.sort();
    report.skipped_live.dedup();
    report.roots_removed.sort();
    report.roots_kept.sort();
    report.failed.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(report)
}

fn fail_all(
    report: &mut ApplyReport,
    ids: &[PathId],
    state: &crate::load::StoreState,
    settings: &Settings,
    msg: &str,
) {
    for &id in ids {
        report.failed.push(Failure {
            path: settings.store_dir.join(state.snap.paths.get(id)),
            error: msg.to_string(),
        });
    }
}

/// Whether an expired root may be removed now: it must still be a link
/// reading what the plan saw, and a generation must not be its profile's
/// current one.
fn may_remove(e: &ExpiredRoot, store_dir: &crate::store_path::StoreDir) -> Result<(), String> {
    let target = match std::fs::read_link(&e.link) {
        Ok(t) => t,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Err("gone already".into()),
        Err(err) => return Err(format!("cannot read link: {err}")),
    };
    if target.as_os_str() != e.points_to.as_str() {
        return Err(format!(
            "now points to {} (planned: {})",
            target.display(),
            e.points_to
        ));
    }
    if e.kind == ExpiredKind::AutoRoot {
        // The entry's text is the outer link's path, which a rebuild
        // (`nix-build -o result` again) keeps: the outer link must still
        // hold the store path the plan saw, or the user's new build would
        // lose its root.
        let now = std::fs::read_link(&e.points_to)
            .map_err(|err| format!("cannot read {}: {err}", e.points_to))?;
        let held = now.to_str().and_then(|t| store_dir.store_path_of(t).ok());
        let planned = store_dir.store_path_of(&e.target).ok();
        if held.is_none() || held != planned {
            return Err(format!(
                "{} now points to {} (planned: {})",
                e.points_to,
                now.display(),
                e.target
            ));
        }
    }
    if e.kind == ExpiredKind::Generation {
        let Some(profile) = &e.profile else {
            return Err("generation without its profile in the plan".into());
        };
        let current = std::fs::read_link(profile)
            .map_err(|err| format!("cannot read profile {profile}: {err}"))?;
        let current_abs = Path::new(profile)
            .parent()
            .unwrap_or(Path::new("/"))
            .join(&current);
        if current_abs == Path::new(&e.link) || current.as_os_str() == e.link.as_str() {
            return Err("it is the profile's current generation".into());
        }
    }
    Ok(())
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
