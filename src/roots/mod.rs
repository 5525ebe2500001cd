//! Every GC root Nix honours, found the way Nix finds them
//! (`src/libstore/gc.cc`: `findRoots`, `findRuntimeRoots`,
//! `findTempRoots`):
//!
//! - [`gcroots`]: `$NIX_STATE_DIR/gcroots` and `$NIX_STATE_DIR/profiles`,
//!   recursively (direct links, indirect links with one hop, regular files
//!   named like store paths);
//! - [`runtime`]: `/proc/PID/{exe,cwd,fd/*,maps,environ}` and the three
//!   kernel files;
//! - [`temp`]: `$NIX_STATE_DIR/temproots/PID` files whose owner holds its
//!   lock.
//!
//! The scan only reads: it never removes stale links or stale temp-root
//! files as Nix's collector does. It yields candidates; [`resolve`] then
//! keeps those whose store path is valid in a database snapshot (roots are
//! scanned before the database is read, as Nix does).

pub mod gcroots;
pub mod runtime;
pub mod temp;

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::paths::{PathId, PathTable};
use crate::store_path::{hash_of, StoreDir};

/// What kind of root holds a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// A link or file under `gcroots/` pointing into the store.
    Gcroot,
    /// A link under `gcroots/` (usually `gcroots/auto`) pointing outside the
    /// store to another link that points into the store.
    Indirect,
    /// A link or file under `profiles/`.
    Profile,
    /// Held by a running process or a kernel setting.
    Runtime,
    /// A temporary root of a running Nix process.
    Temp,
}

impl RootKind {
    pub fn as_str(self) -> &'static str {
        match self {
            RootKind::Gcroot => "gcroot",
            RootKind::Indirect => "indirect",
            RootKind::Profile => "profile",
            RootKind::Runtime => "runtime",
            RootKind::Temp => "temp",
        }
    }
}

/// One root as found on disk or in `/proc`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Root {
    /// What holds the path, as `nix-store --gc --print-roots` names it: the
    /// link (for an indirect root, the outer link it points to, e.g. a
    /// user's `result`), the `/proc/PID/...` file, or `{temp:PID}`.
    pub link: String,
    /// The absolute store path held (`<store>/<hash>-<name>`, never a
    /// sub-path).
    pub target: String,
    pub kind: RootKind,
    /// For an indirect root: the entry under `gcroots/` that points to
    /// `link`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<String>,
}

/// Where to look for roots.
#[derive(Debug, Clone)]
pub struct RootSources {
    pub store_dir: StoreDir,
    pub state_dir: PathBuf,
    /// Usually `/proc`; `None` skips runtime roots (tests of the other
    /// kinds, never the command line).
    pub proc_dir: Option<PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    #[error("{0}: cannot read GC root ({1})")]
    Unreadable(PathBuf, std::io::Error),
}

/// Scans all three sources. Results are sorted and deduplicated.
pub fn find_roots(src: &RootSources) -> Result<Vec<Root>, RootsError> {
    let mut roots = gcroots::find(&src.store_dir, &src.state_dir)?;
    if let Some(proc_dir) = &src.proc_dir {
        roots.extend(runtime::find(&src.store_dir, proc_dir)?);
    }
    roots.extend(temp::find(&src.store_dir, &src.state_dir)?);
    roots.sort();
    roots.dedup();
    Ok(roots)
}

/// The ids of the roots' store paths that are valid in `paths`; roots whose
/// target is not valid are skipped, as Nix skips them. Temp roots match by
/// hash part only, as in Nix. Returns `(root index, id)` pairs.
pub fn resolve(roots: &[Root], store_dir: &StoreDir, paths: &PathTable) -> Vec<(usize, PathId)> {
    roots
        .iter()
        .enumerate()
        .filter_map(|(i, r)| {
            let base = store_dir.store_path_of(&r.target).ok()?;
            let id = match r.kind {
                RootKind::Temp => paths.lookup_hash(hash_of(base)),
                _ => paths.lookup(base),
            }?;
            Some((i, id))
        })
        .collect()
}
