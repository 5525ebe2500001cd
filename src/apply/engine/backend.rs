//! The engine as one of apply's deleters ([`Deleter`]): chunks of
//! `--chunk-size` paths, each one database transaction, then the chunk's
//! files; at the end the `.links` pass.

use super::Engine;
use crate::apply::delete::{Deleter, Target};
use crate::apply::{ApplyError, ApplyOptions, ApplyReport};
use crate::paths::PathId;

impl Deleter for Engine {
    fn limits(&self, _: &Target, opts: &ApplyOptions) -> (usize, usize) {
        (opts.chunk_size.max(1), usize::MAX)
    }

    /// Returns the chunk's paths still valid (a failed transaction).
    fn delete_batch(
        &mut self,
        t: &Target,
        todo: Vec<PathId>,
        deletable: &mut [bool],
        report: &mut ApplyReport,
    ) -> Result<Vec<PathId>, ApplyError> {
        let snap = &t.state.snap;
        let out = self.delete_chunk(&todo, &t.state.graph, deletable, |id| {
            snap.paths.get(id).to_string()
        });
        for &id in &out.kept {
            report.skipped_live.push(t.path(id));
        }
        report.freed_disk_bytes += out.freed_bytes;
        t.record_deleted(&out.deleted, report);
        for (id, e) in &out.file_errors {
            report
                .errors
                .push(format!("{}: invalid now, files left: {e}", t.path(*id)));
        }
        let nothing_changed = report.deleted.is_empty() && report.roots_removed.is_empty();
        Ok(match out.failed {
            Some((_, msg)) if nothing_changed => {
                return Err(super::EngineError::FirstChunk(msg).into());
            }
            Some((ids, msg)) => {
                tracing::warn!(%msg, "chunk rolled back");
                t.record_failed(&ids, &msg, report);
                ids
            }
            None => Vec::new(),
        })
    }

    /// Unless stopped: the entries without a row; then `.links`.
    fn finish(&mut self, t: &Target, report: &mut ApplyReport) {
        if !t.stop.load(std::sync::atomic::Ordering::SeqCst) {
            match self.sweep_orphans(t.state) {
                Ok(s) => {
                    report.freed_disk_bytes += s.freed;
                    let dir = t.settings.store_dir.as_str();
                    report.orphans_removed =
                        s.removed.iter().map(|n| format!("{dir}/{n}")).collect();
                    report.errors.extend(s.errors);
                }
                Err(e) => report
                    .errors
                    .push(format!("{}: {e}", t.settings.store_dir.as_str())),
            }
        }
        match self.sweep_links() {
            Ok(b) => report.freed_disk_bytes += b,
            Err(e) => report
                .errors
                .push(format!("{}/.links: {e}", t.settings.store_dir.as_str())),
        }
        if self.vacuum_at_end {
            match self.vacuum() {
                Ok(v) => report.vacuum = Some(v),
                Err(e) => report.errors.push(format!("vacuum: {e}")),
            }
        }
    }
}
