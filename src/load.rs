//! The input end of the pipeline: roots and the database snapshot, read
//! side by side, then the liveness graph. The only file-system reading that
//! `plan` does happens here (and in the policy's inputs), including the
//! free space on the store's filesystem that `until-free` and `apply`'s
//! report need.

use std::path::PathBuf;
use std::time::Duration;

use crate::db::{self, DbError, Snapshot};
use crate::graph::Graph;
use crate::paths::PathId;
use crate::roots::{self, Root, RootSources, RootsError};
use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Roots(#[from] RootsError),
    /// The store directory is not there: a wrong `--store-dir` or
    /// `NIX_STORE_DIR`, said before the database is blamed for it.
    #[error("{0}: store directory does not exist (check --store-dir or NIX_STORE_DIR)")]
    NoStoreDir(PathBuf),
}

/// The store as read at one moment.
#[derive(Debug)]
pub struct StoreState {
    pub snap: Snapshot,
    /// Every root found, sorted (valid or not).
    pub roots: Vec<Root>,
    /// `(index into roots, id)` for the roots whose path is valid.
    pub root_ids: Vec<(usize, PathId)>,
    pub graph: Graph,
    /// Processes whose runtime roots could not be read (not running as
    /// root): the roots are incomplete when this is not empty. Sorted.
    pub unreadable_processes: Vec<u32>,
}

impl StoreState {
    /// The plan warning for processes whose roots could not be read, if
    /// any (see [`roots::incomplete_warning`]).
    pub fn incomplete_roots_warning(&self) -> Option<String> {
        roots::incomplete_warning(&self.unreadable_processes)
    }

    /// The roots `nix-store --gc --print-roots` lists: those whose store
    /// path is valid, and every temp root (Nix lists temp roots without
    /// checking validity). Sorted, as `roots` is. O(r).
    pub fn reported_roots(&self) -> Vec<Root> {
        let mut valid = vec![false; self.roots.len()];
        for &(i, _) in &self.root_ids {
            valid[i] = true;
        }
        self.roots
            .iter()
            .zip(valid)
            .filter(|(r, v)| *v || r.kind == crate::roots::RootKind::Temp)
            .map(|(r, _)| r.clone())
            .collect()
    }

    /// The distinct ids held by roots.
    pub fn root_paths(&self) -> Vec<PathId> {
        let mut ids: Vec<PathId> = self.root_ids.iter().map(|&(_, id)| id).collect();
        ids.sort_unstable();
        ids.dedup();
        ids
    }
}

/// Options of the load step.
#[derive(Debug, Clone)]
pub struct LoadOptions {
    pub busy_timeout: Duration,
    /// `/proc` normally; `None` skips runtime roots.
    pub proc_dir: Option<PathBuf>,
    /// Read `DerivationOutputs` even without keep-outputs (for
    /// `protect.build-closures`); the graph still follows nix.conf.
    pub derivation_outputs: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        LoadOptions {
            busy_timeout: Duration::from_secs(5),
            proc_dir: Some(PathBuf::from("/proc")),
            derivation_outputs: false,
        }
    }
}

/// Scans the roots and reads the database in parallel, then builds the
/// graph. The database check (schema, existence) runs first so bad input
/// fails before any scanning.
pub fn load(settings: &Settings, opts: &LoadOptions) -> Result<StoreState, LoadError> {
    db::check_schema(&settings.state_dir)?;
    let store_dir = PathBuf::from(settings.store_dir.to_string());
    if !store_dir.is_dir() {
        return Err(LoadError::NoStoreDir(store_dir));
    }
    let sources = RootSources {
        store_dir: settings.store_dir.clone(),
        state_dir: settings.state_dir.clone(),
        proc_dir: opts.proc_dir.clone(),
    };
    let (roots, snap) = rayon::join(
        || {
            let _s = tracing::info_span!("roots").entered();
            roots::find_roots(&sources)
        },
        || {
            let _s = tracing::info_span!("database").entered();
            db::read_snapshot_with(
                &settings.state_dir,
                &settings.store_dir,
                opts.busy_timeout,
                settings.gc.keep_outputs || opts.derivation_outputs,
            )
        },
    );
    let snap = snap?;
    let roots::FoundRoots {
        roots,
        unreadable_processes,
    } = roots?;
    let root_ids = roots::resolve(&roots, &settings.store_dir, &snap.paths);
    let graph = tracing::info_span!("graph").in_scope(|| Graph::build(&snap, settings.gc));
    tracing::info!(
        paths = snap.len(),
        references = snap.ref_targets.len(),
        roots = roots.len(),
        valid_roots = root_ids.len(),
        "loaded"
    );
    Ok(StoreState {
        snap,
        roots,
        root_ids,
        graph,
        unreadable_processes,
    })
}

/// Bytes available to unprivileged users on the filesystem holding `dir`
/// (statvfs `f_bavail * f_frsize`); `None` if it cannot be read, which is
/// "unknown", never "full".
pub fn available_bytes(dir: &str) -> Option<u64> {
    let c = std::ffi::CString::new(dir).ok()?;
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    (st.f_bavail as u64).checked_mul(st.f_frsize as u64)
}
