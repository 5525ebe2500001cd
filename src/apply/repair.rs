//! `storegc repair`: what the engine does at the end of every apply, on
//! its own: under Nix's GC lock with the gc-socket served, removes store
//! entries without a database row that nothing holds (what a crash between
//! a chunk's commit and its files leaves; see [`super::engine::orphans`]),
//! then `.links` entries no file uses, and with `--vacuum` vacuums the
//! database. Deletes no valid path.

use std::time::Duration;

use serde::Serialize;

use super::engine::{Engine, Vacuum};
use super::ApplyError;
use crate::load::{load, LoadOptions};
use crate::settings::Settings;

#[derive(Debug, Clone)]
pub struct RepairOptions {
    pub lock_timeout: Duration,
    pub load: LoadOptions,
    pub vacuum: bool,
}

/// What repair removed. Lists are sorted.
#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    /// Store entries without a database row, removed.
    pub orphans_removed: Vec<String>,
    /// Bytes freed on disk (allocated blocks, hard links once).
    pub freed_disk_bytes: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub vacuum: Option<Vacuum>,
    /// Errors after something may have changed (exit 1).
    pub errors: Vec<String>,
}

/// Runs repair. An error before anything changed (the apply lock, the GC
/// lock, an unreadable store) is returned (exit 2); later ones go into the
/// report.
pub fn repair(settings: &Settings, opts: &RepairOptions) -> Result<RepairReport, ApplyError> {
    let _apply_lock = super::take_lock(&settings.state_dir)?;
    let engine = Engine::start(settings, opts.lock_timeout, opts.load.busy_timeout)?;
    let state = load(settings, &opts.load)?;
    let dir = settings.store_dir.as_str();
    let swept = engine
        .sweep_orphans(&state)
        .map_err(|e| ApplyError::Store(dir.into(), e))?;
    let mut report = RepairReport {
        orphans_removed: swept.removed.iter().map(|n| format!("{dir}/{n}")).collect(),
        freed_disk_bytes: swept.freed,
        errors: swept.errors,
        ..RepairReport::default()
    };
    match engine.sweep_links() {
        Ok(b) => report.freed_disk_bytes += b,
        Err(e) => report.errors.push(format!("{dir}/.links: {e}")),
    }
    if opts.vacuum {
        match engine.vacuum() {
            Ok(v) => report.vacuum = Some(v),
            Err(e) => report.errors.push(format!("vacuum: {e}")),
        }
    }
    Ok(report)
}
