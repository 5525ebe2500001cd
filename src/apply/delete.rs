//! The last step of apply: the re-checked deletable set, cut into
//! referrers-first batches, handed batch by batch to one of the deleters
//! behind [`Deleter`] (`nix-store --delete`, see [`super::nix_store`], or
//! storegc's own engine, see [`super::engine`]; a dry run only counts).
//!
//! Stopping (SIGINT/SIGTERM) takes effect between batches: a batch is never
//! cut short, and every batch is closed under referrers, so the store is
//! consistent after each one and running apply again finishes the job.

use std::sync::atomic::{AtomicBool, Ordering};

use super::{order, ApplyError, ApplyOptions, ApplyReport, DeleteWith, Failure, Progress};
use crate::load::{available_bytes, StoreState};
use crate::paths::PathId;
use crate::settings::Settings;

/// What every deleter works on: the store as re-read, and the run's
/// stop flag and progress.
pub struct Target<'a> {
    pub state: &'a StoreState,
    pub settings: &'a Settings,
    pub stop: &'a AtomicBool,
    pub progress: &'a dyn Progress,
}

impl Target<'_> {
    /// The full store path of `id`.
    pub fn path(&self, id: PathId) -> String {
        self.settings.store_dir.join(self.state.snap.paths.get(id))
    }

    /// Records `ids` as deleted (report and progress).
    pub fn record_deleted(&self, ids: &[PathId], report: &mut ApplyReport) {
        let mut bytes = 0u64;
        for &id in ids {
            report.deleted.push(self.path(id));
            bytes = bytes.saturating_add(self.state.snap.nar_size[id as usize]);
        }
        report.deleted_nar_bytes = report.deleted_nar_bytes.saturating_add(bytes);
        self.progress.advance(ids.len() as u64, bytes);
    }

    /// Records `ids` as failed with `msg`.
    pub fn record_failed(&self, ids: &[PathId], msg: &str, report: &mut ApplyReport) {
        for &id in ids {
            report.failed.push(Failure {
                path: self.path(id),
                error: msg.to_string(),
            });
        }
    }
}

/// One way of deleting a referrers-first batch.
pub trait Deleter {
    /// At most this many paths, and bytes of argument text, per batch.
    fn limits(&self, target: &Target, opts: &ApplyOptions) -> (usize, usize);

    /// Deletes `todo` (closed under referrers once the earlier batches are
    /// gone); refused paths leave `deletable` with what they keep. Returns
    /// the batch's paths still on disk. An error stops the run.
    fn delete_batch(
        &mut self,
        target: &Target,
        todo: Vec<PathId>,
        deletable: &mut [bool],
        report: &mut ApplyReport,
    ) -> Result<Vec<PathId>, ApplyError>;

    /// After the last batch (also after a stop): the engine's clean-up.
    fn finish(&mut self, _target: &Target, _report: &mut ApplyReport) {}
}

/// A dry run: every batch counts as deleted.
struct DryRun;

impl Deleter for DryRun {
    fn limits(&self, _: &Target, _: &ApplyOptions) -> (usize, usize) {
        (usize::MAX, usize::MAX)
    }

    fn delete_batch(
        &mut self,
        target: &Target,
        todo: Vec<PathId>,
        _: &mut [bool],
        report: &mut ApplyReport,
    ) -> Result<Vec<PathId>, ApplyError> {
        target.record_deleted(&todo, report);
        Ok(Vec::new())
    }
}

/// The deleter `opts` asks for, started: the engine takes Nix's GC lock and
/// serves its socket here, before apply reads any root.
pub fn start(settings: &Settings, opts: &ApplyOptions) -> Result<Box<dyn Deleter>, ApplyError> {
    if opts.dry_run {
        return Ok(Box::new(DryRun));
    }
    Ok(match opts.delete_with {
        DeleteWith::NixStore => {
            let bin = super::nix::find_nix_store(opts.nix_store.as_deref())
                .ok_or(ApplyError::NoNixStore)?;
            Box::new(super::nix_store::NixStore::new(bin, settings, opts))
        }
        DeleteWith::Storegc => {
            let mut e =
                super::engine::Engine::start(settings, opts.lock_timeout, opts.load.busy_timeout)?;
            e.vacuum_at_end = opts.vacuum;
            Box::new(e)
        }
    })
}

/// Deletes the deletable paths batch by batch, referrers first, stopping
/// between batches on a signal. After a batch with refusals or failures,
/// one re-check drops everything the paths left behind keep. O(n + e)
/// plus the deleter's work.
pub fn delete_all(
    deleter: &mut dyn Deleter,
    target: &Target,
    deletable: &mut [bool],
    opts: &ApplyOptions,
    report: &mut ApplyReport,
) -> Result<(), ApplyError> {
    let (state, settings) = (target.state, target.settings);
    let (max_paths, max_bytes) = deleter.limits(target, opts);
    let batches = order::batches(&state.graph, deletable, max_paths, max_bytes, |id| {
        settings.store_dir.as_str().len() + 1 + state.snap.paths.get(id).len() + super::nix::PTR
    });
    let total: usize = batches.iter().map(Vec::len).sum();
    let bytes = batches
        .iter()
        .flatten()
        .map(|&id| state.snap.nar_size[id as usize])
        .fold(0u64, u64::saturating_add);
    target.progress.start(total as u64, bytes);
    tracing::info!(paths = total, batches = batches.len(), "deleting");
    let before = available_bytes(settings.store_dir.as_str());
    let mut result = Ok(());
    for batch in batches {
        if target.stop.load(Ordering::SeqCst) {
            report.interrupted = true;
            break;
        }
        let todo: Vec<PathId> = batch
            .into_iter()
            .filter(|&id| deletable[id as usize])
            .collect();
        match deleter.delete_batch(target, todo, deletable, report) {
            Ok(survivors) => {
                for id in order::drop_kept(&state.graph, deletable, &survivors) {
                    if !survivors.contains(&id) {
                        report.skipped_live.push(target.path(id));
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
    if result.is_ok() {
        deleter.finish(target, report);
    }
    if !opts.dry_run {
        measure_fs(settings, before, report);
    }
    result
}

/// The statvfs change of the store's filesystem, or a warning.
fn measure_fs(settings: &Settings, before: Option<u64>, report: &mut ApplyReport) {
    match (before, available_bytes(settings.store_dir.as_str())) {
        (Some(b), Some(a)) => report.freed_fs_bytes = a as i64 - b as i64,
        _ => report
            .warnings
            .push("cannot measure the space available on the store's filesystem".into()),
    }
}
