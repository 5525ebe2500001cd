//! Reads the Nix store database (`$NIX_STATE_DIR/db/db.sqlite`, schema 10)
//! into a [`Snapshot`]: every valid path as a dense id, its metadata in flat
//! vectors, and its references in compressed rows.
//!
//! Everything is read inside one read transaction, so a build registering
//! paths beside us cannot tear the snapshot (the daemon writes in WAL mode;
//! a reader sees one consistent state). The database is opened read-only.

use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::paths::{PathId, PathTable, NO_PATH};
use crate::store_path::{parse_basename, StoreDir};

/// The only database schema this tool understands.
pub const SCHEMA_VERSION: u32 = 10;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("{0}: state directory does not exist or is not readable ({1})")]
    StateDir(PathBuf, std::io::Error),
    #[error("{0}: cannot read the schema version ({1})")]
    SchemaFile(PathBuf, std::io::Error),
    #[error(
        "{path}: unsupported Nix database schema '{found}' (storegc reads schema {SCHEMA_VERSION})"
    )]
    UnsupportedSchema { path: PathBuf, found: String },
    #[error("{0}: database does not exist")]
    Missing(PathBuf),
    #[error("{path}: cannot read the Nix database")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
    #[error("{db}: path '{path}' is not a store path under {store_dir} (wrong --store-dir?)")]
    ForeignPath {
        db: PathBuf,
        path: String,
        store_dir: String,
    },
}

/// Bits of [`Snapshot::origin`].
pub mod origin {
    /// `ultimate = 1`: built on this host.
    pub const ULTIMATE: u8 = 1;
    /// `sigs` is non-empty: carries signatures (substituted or signed).
    pub const SIGNED: u8 = 2;
}

/// One consistent read of the store database.
///
/// Ids are dense (`0..len`) and assigned in database id order. Every vector
/// is indexed by id.
#[derive(Debug, Default, Clone)]
pub struct Snapshot {
    pub paths: PathTable,
    pub nar_size: Vec<u64>,
    pub registration_time: Vec<i64>,
    /// The valid deriver of each path, or [`NO_PATH`] when it has none or
    /// the deriver is not valid.
    pub deriver: Vec<PathId>,
    /// [`origin`] bits.
    pub origin: Vec<u8>,
    /// Compressed rows of references: the references of `i` are
    /// `ref_targets[ref_start[i]..ref_start[i + 1]]`; self references are
    /// dropped (they never change liveness).
    pub ref_start: Vec<u32>,
    pub ref_targets: Vec<PathId>,
    /// `(drv, output)` pairs from `DerivationOutputs` whose output is valid,
    /// sorted.
    pub drv_outputs: Vec<(PathId, PathId)>,
}

impl Snapshot {
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    pub fn is_empty(&self) -> bool {
        self.paths.len() == 0
    }

    /// The references of `id`, without itself.
    pub fn references(&self, id: PathId) -> &[PathId] {
        let i = id as usize;
        &self.ref_targets[self.ref_start[i] as usize..self.ref_start[i + 1] as usize]
    }

    /// Builds a snapshot from plain rows (tests and the generator use this;
    /// the database reader goes through the same assembly).
    pub fn from_rows(
        rows: Vec<PathRow>,
        refs: &[(PathId, PathId)],
        drv_outputs: Vec<(PathId, PathId)>,
    ) -> Snapshot {
        let mut s = Snapshot::default();
        let mut derivers = Vec::with_capacity(rows.len());
        for r in rows {
            s.paths.push(&r.basename);
            s.nar_size.push(r.nar_size);
            s.registration_time.push(r.registration_time);
            s.origin.push(r.origin);
            derivers.push(r.deriver);
        }
        s.paths.build_index();
        s.deriver = derivers
            .iter()
            .map(|d| {
                d.as_deref()
                    .and_then(|d| s.paths.lookup(d))
                    .unwrap_or(NO_PATH)
            })
            .collect();
        (s.ref_start, s.ref_targets) = compress_rows(s.paths.len(), refs);
        let mut drv_outputs = drv_outputs;
        drv_outputs.sort_unstable();
        drv_outputs.dedup();
        s.drv_outputs = drv_outputs;
        s
    }
}

/// One `ValidPaths` row in the form the snapshot keeps.
#[derive(Debug, Clone, Default)]
pub struct PathRow {
    pub basename: String,
    pub nar_size: u64,
    pub registration_time: i64,
    /// Basename of the deriver, if any.
    pub deriver: Option<String>,
    pub origin: u8,
}

/// Counting sort of `(from, to)` edges into compressed rows, dropping self
/// edges and duplicates. O(n + e) time, one pass to count, one to fill.
pub fn compress_rows(n: usize, edges: &[(PathId, PathId)]) -> (Vec<u32>, Vec<PathId>) {
    let mut start = vec![0u32; n + 1];
    for &(a, b) in edges {
        if a != b {
            start[a as usize + 1] += 1;
        }
    }
    for i in 0..n {
        start[i + 1] += start[i];
    }
    let mut fill = start.clone();
    let mut targets = vec![0 as PathId; start[n] as usize];
    for &(a, b) in edges {
        if a != b {
            let slot = &mut fill[a as usize];
            targets[*slot as usize] = b;
            *slot += 1;
        }
    }
    // Sort and dedup each row; rows are short, so this is cheap.
    let mut out_start = Vec::with_capacity(n + 1);
    let mut w = 0usize;
    out_start.push(0u32);
    for i in 0..n {
        let (s, e) = (start[i] as usize, start[i + 1] as usize);
        targets[s..e].sort_unstable();
        let mut last = None;
        for k in s..e {
            let t = targets[k];
            if last != Some(t) {
                targets[w] = t;
                w += 1;
                last = Some(t);
            }
        }
        out_start.push(w as u32);
    }
    targets.truncate(w);
    (out_start, targets)
}

/// Where the database lives under a state directory.
pub fn db_path(state_dir: &Path) -> PathBuf {
    state_dir.join("db").join("db.sqlite")
}

/// Checks the state directory and the schema version file.
pub fn check_schema(state_dir: &Path) -> Result<(), DbError> {
    std::fs::read_dir(state_dir).map_err(|e| DbError::StateDir(state_dir.to_path_buf(), e))?;
    let schema_path = state_dir.join("db").join("schema");
    let text = std::fs::read_to_string(&schema_path)
        .map_err(|e| DbError::SchemaFile(schema_path.clone(), e))?;
    let found = text.trim();
    if found.parse::<u32>() != Ok(SCHEMA_VERSION) {
        return Err(DbError::UnsupportedSchema {
            path: schema_path,
            found: found.chars().take(40).collect(),
        });
    }
    Ok(())
}

/// Opens the database read-only with a busy timeout.
///
/// Read-only means no page of `db.sqlite` is ever written by us (not even
/// a WAL checkpoint on close, which a read-write connection would do).
/// Like any SQLite reader of a WAL database, the connection needs the
/// `db.sqlite-shm` index and `db.sqlite-wal` beside it; when Nix is idle
/// and they are absent, SQLite creates them (empty), and Nix's next write
/// reuses them.
pub fn open(state_dir: &Path, busy_timeout: Duration) -> Result<Connection, DbError> {
    check_schema(state_dir)?;
    let path = db_path(state_dir);
    if !path.exists() {
        return Err(DbError::Missing(path));
    }
    let sql = |source| DbError::Sqlite {
        path: path.clone(),
        source,
    };
    let conn = Connection::open_with_flags(
        &path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .map_err(sql)?;
    conn.busy_timeout(busy_timeout).map_err(sql)?;
    Ok(conn)
}

/// Reads the whole snapshot inside one read transaction.
///
/// Cost: one sequential scan of `ValidPaths`, `Refs` and
/// `DerivationOutputs`; O(n + e) memory in flat vectors, no per-path
/// allocation beyond the shared name arena.
pub fn read_snapshot(
    state_dir: &Path,
    store_dir: &StoreDir,
    busy_timeout: Duration,
) -> Result<Snapshot, DbError> {
    read_snapshot_with(state_dir, store_dir, busy_timeout, true)
}

/// [`read_snapshot`], reading `DerivationOutputs` only when asked:
/// liveness needs it only under `keep-outputs` (the keep-derivations edge
/// comes from `ValidPaths.deriver`), and it is about half as many rows as
/// `ValidPaths`, each with a path to parse. Without it,
/// [`Snapshot::drv_outputs`] is empty.
pub fn read_snapshot_with(
    state_dir: &Path,
    store_dir: &StoreDir,
    busy_timeout: Duration,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    let conn = open(state_dir, busy_timeout)?;
    let path = db_path(state_dir);
    read_snapshot_from(&conn, &path, store_dir, derivation_outputs)
}

/// [`read_snapshot_with`] on an open connection; `db` names it in errors.
pub fn read_snapshot_from(
    conn: &Connection,
    db: &Path,
    store_dir: &StoreDir,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    let sql = |source| DbError::Sqlite {
        path: db.to_path_buf(),
        source,
    };
    let foreign = |p: &str| DbError::ForeignPath {
        db: db.to_path_buf(),
        path: p.to_string(),
        store_dir: store_dir.to_string(),
    };
    // An integer column (or NULL), without rusqlite's generic conversion.
    let int = |row: &rusqlite::Row<'_>, i: usize| -> Result<Option<i64>, DbError> {
        row.get_ref_unwrap(i)
            .as_i64_or_null()
            .map_err(|e| sql(e.into()))
    };
    conn.execute_batch("BEGIN DEFERRED").map_err(sql)?;
    let result = (|| {
        let max_id: i64 = conn
            .query_row("SELECT coalesce(max(id), 0) FROM ValidPaths", [], |r| {
                r.get(0)
            })
            .map_err(sql)?;
        let count: i64 = conn
            .query_row("SELECT count(*) FROM ValidPaths", [], |r| r.get(0))
            .map_err(sql)?;
        let mut s = Snapshot::default();
        let n = count as usize;
        s.nar_size.reserve(n);
        s.registration_time.reserve(n);
        s.origin.reserve(n);
        let mut db_to_dense = vec![NO_PATH; max_id as usize + 1];
        // Deriver basenames, resolved once every path has an id.
        let mut deriver_names = PathTable::default();
        let mut deriver_of: Vec<u32> = Vec::with_capacity(n);

        let mut stmt = conn
            .prepare(
                "SELECT id, path, registrationTime, deriver, narSize, ultimate, \
                 (sigs IS NOT NULL AND sigs != '') FROM ValidPaths",
            )
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let id = int(row, 0)?.unwrap_or(-1);
            let full = row.get_ref_unwrap(1).as_str().map_err(|e| sql(e.into()))?;
            let base = store_dir.store_path_of(full).map_err(|_| foreign(full))?;
            if base.len() + store_dir.as_str().len() + 1 != full.len() {
                return Err(foreign(full));
            }
            let dense = s.paths.push(base);
            if id < 0 || id > max_id {
                return Err(foreign(full));
            }
            db_to_dense[id as usize] = dense;
            s.registration_time.push(int(row, 2)?.unwrap_or(0));
            let deriver = row.get_ref_unwrap(3);
            let d = match deriver.as_str_or_null().map_err(|e| sql(e.into()))? {
                Some(d) => match store_dir.store_path_of(d) {
                    Ok(b) => deriver_names.push(b),
                    Err(_) => NO_PATH,
                },
                None => NO_PATH,
            };
            deriver_of.push(d);
            s.nar_size.push(int(row, 4)?.unwrap_or(0).max(0) as u64);
            let ultimate = int(row, 5)?.unwrap_or(0) == 1;
            let signed = int(row, 6)?.unwrap_or(0) != 0;
            s.origin.push(
                if ultimate { origin::ULTIMATE } else { 0 }
                    | if signed { origin::SIGNED } else { 0 },
            );
        }
        drop(rows);
        drop(stmt);
        s.paths.build_index();
        s.deriver = deriver_of
            .iter()
            .map(|&d| {
                if d == NO_PATH {
                    NO_PATH
                } else {
                    s.paths.lookup(deriver_names.get(d)).unwrap_or(NO_PATH)
                }
            })
            .collect();
        drop(deriver_names);

        let dense = |id: i64| -> PathId {
            if id < 0 || id as usize >= db_to_dense.len() {
                NO_PATH
            } else {
                db_to_dense[id as usize]
            }
        };
        let mut edges: Vec<(PathId, PathId)> = Vec::new();
        let mut stmt = conn
            .prepare("SELECT referrer, reference FROM Refs")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let (a, b) = (
                dense(int(row, 0)?.unwrap_or(-1)),
                dense(int(row, 1)?.unwrap_or(-1)),
            );
            // A dangling reference cannot happen under the schema's foreign
            // keys; if it does, the edge cannot keep anything alive.
            if a != NO_PATH && b != NO_PATH {
                edges.push((a, b));
            }
        }
        drop(rows);
        drop(stmt);
        (s.ref_start, s.ref_targets) = compress_rows(s.paths.len(), &edges);
        drop(edges);

        if !derivation_outputs {
            return Ok(s);
        }
        let mut stmt = conn
            .prepare("SELECT drv, path FROM DerivationOutputs")
            .map_err(sql)?;
        let mut rows = stmt.query([]).map_err(sql)?;
        while let Some(row) = rows.next().map_err(sql)? {
            let drv = dense(int(row, 0)?.unwrap_or(-1));
            let out = row.get_ref_unwrap(1).as_str().map_err(|e| sql(e.into()))?;
            if drv == NO_PATH {
                continue;
            }
            if let Ok(base) = store_dir.store_path_of(out) {
                if let Some(o) = s.paths.lookup(base) {
                    s.drv_outputs.push((drv, o));
                }
            }
        }
        s.drv_outputs.sort_unstable();
        s.drv_outputs.dedup();
        Ok(s)
    })();
    // Ending a read transaction cannot lose anything; a failure here is
    // only worth reporting when the read itself went well.
    let end = conn.execute_batch("COMMIT").map_err(sql);
    let s = result?;
    end?;
    debug_assert!(s.paths.iter().all(|b| parse_basename(b).is_ok()));
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compress_rows_sorts_dedups_and_drops_self_edges() {
        let (start, targets) = compress_rows(3, &[(0, 2), (0, 1), (0, 2), (1, 1), (2, 0)]);
        assert_eq!(start, vec![0, 2, 2, 3]);
        assert_eq!(targets, vec![1, 2, 0]);
    }
}
