//! The `nix-store --delete` deleter (`apply --delete-with nix-store`):
//! batches sized from ARG_MAX go to Nix, which re-checks liveness under its
//! own GC lock. A refused path is kept with everything it keeps and the
//! rest of its batch is tried again. The process is run by [`super::nix`].

use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::delete::{Deleter, Target};
use super::nix::{self, DeleteOutcome};
use super::{order, ApplyError, ApplyOptions, ApplyReport};
use crate::paths::PathId;
use crate::settings::Settings;

/// The backend: the binary and its argument budget; with `--vacuum`, what
/// the vacuum at the end needs.
pub struct NixStore {
    bin: PathBuf,
    budget: usize,
    vacuum: Option<(Settings, Duration, Duration)>,
}

impl NixStore {
    pub fn new(bin: PathBuf, settings: &Settings, opts: &ApplyOptions) -> NixStore {
        let budget = nix::arg_budget(&bin, settings);
        let vacuum = opts
            .vacuum
            .then(|| (settings.clone(), opts.lock_timeout, opts.load.busy_timeout));
        NixStore {
            bin,
            budget,
            vacuum,
        }
    }
}

impl Deleter for NixStore {
    fn limits(&self, _: &Target, opts: &ApplyOptions) -> (usize, usize) {
        let bytes = opts.batch_bytes.map_or(self.budget, |b| b.min(self.budget));
        (opts.batch_paths, bytes)
    }

    /// Each refusal drops a path, so the retry loop ends.
    fn delete_batch(
        &mut self,
        t: &Target,
        mut todo: Vec<PathId>,
        deletable: &mut [bool],
        report: &mut ApplyReport,
    ) -> Result<Vec<PathId>, ApplyError> {
        let mut survivors = Vec::new();
        while !todo.is_empty() {
            let args: Vec<String> = todo.iter().map(|&id| t.path(id)).collect();
            let outcome = nix::delete(&self.bin, t.settings, &args)
                .map_err(|e| ApplyError::Spawn(self.bin.clone(), e))?;
            let (gone, remaining): (Vec<PathId>, Vec<PathId>) = todo
                .iter()
                .partition(|&&id| std::fs::symlink_metadata(t.path(id)).is_err());
            t.record_deleted(&gone, report);
            match outcome {
                DeleteOutcome::Done => {
                    survivors.extend(remaining);
                    break;
                }
                DeleteOutcome::Alive(paths) => {
                    match refused(t, &paths, &remaining, deletable, report) {
                        Some(rest) => todo = rest,
                        None => {
                            let msg = format!("nix-store refused {}", paths.join(" "));
                            t.record_failed(&remaining, &msg, report);
                            survivors.extend(remaining);
                            break;
                        }
                    }
                }
                DeleteOutcome::Failed(_) if t.stop.load(Ordering::SeqCst) => {
                    // A signal for the whole group (systemd's stop) cut Nix
                    // short too: what is left goes on the next run.
                    report.interrupted = true;
                    survivors.extend(remaining);
                    break;
                }
                DeleteOutcome::Failed(msg) => {
                    t.record_failed(&remaining, &msg, report);
                    survivors.extend(remaining);
                    break;
                }
            }
        }
        Ok(survivors)
    }

    /// `--vacuum`: under Nix's GC lock with its socket served (a builder
    /// that finds the lock held talks to the socket), as the engine does.
    fn finish(&mut self, _: &Target, report: &mut ApplyReport) {
        let Some((settings, lock_timeout, busy)) = &self.vacuum else {
            return;
        };
        let vacuum = super::engine::Engine::start(settings, *lock_timeout, *busy)
            .map_err(|e| e.to_string())
            .and_then(|e| e.vacuum().map_err(|e| e.to_string()));
        match vacuum {
            Ok(v) => report.vacuum = Some(v),
            Err(e) => report.errors.push(format!("vacuum: {e}")),
        }
    }
}

/// Nix refused `paths` as alive: keeps those of `remaining` with what they
/// keep and returns the rest to try again, or `None` when Nix named none
/// of them (then the batch fails).
fn refused(
    t: &Target,
    paths: &[String],
    remaining: &[PathId],
    deletable: &mut [bool],
    report: &mut ApplyReport,
) -> Option<Vec<PathId>> {
    tracing::warn!(
        ?paths,
        "nix-store refused: still alive; keeping them and what they keep"
    );
    let snap = &t.state.snap;
    let ids: Vec<PathId> = paths
        .iter()
        .filter_map(|p| {
            // Lix names basenames, Nix full paths.
            let b = t.settings.store_dir.store_path_of(p).unwrap_or(p.as_str());
            snap.paths.lookup(b)
        })
        .filter(|&id| deletable[id as usize] && remaining.contains(&id))
        .collect();
    if ids.is_empty() {
        return None;
    }
    for v in order::drop_kept(&t.state.graph, deletable, &ids) {
        report.skipped_live.push(t.path(v));
    }
    Some(
        remaining
            .iter()
            .copied()
            .filter(|&v| deletable[v as usize])
            .collect(),
    )
}
