//! Reads the Nix store database (`$NIX_STATE_DIR/db/db.sqlite`, schema 10)
//! into a [`Snapshot`]: every valid path as a dense id, its metadata in flat
//! vectors, and its references in compressed rows.
//!
//! Everything is read inside one read transaction, so a build registering
//! paths beside us cannot tear the snapshot (the daemon writes in WAL mode;
//! a reader sees one consistent state). The database is opened read-only.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use crate::paths::{PathId, PathTable, NO_PATH};
use crate::store_path::{name_of, parse_basename, StoreDir};

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
    /// Not root, the db folder not writable, and a write-ahead log with
    /// commits but no `-shm` index beside the database: SQLite cannot read
    /// the log without creating the index.
    #[error(
        "{0}: the database has a write-ahead log that SQLite can read only where it may create \
         db.sqlite-shm beside it; run as root (or as the store's owner)"
    )]
    WalUnreadable(PathBuf),
    /// Read without locks (no WAL, folder not writable), the database file
    /// changed under every try: no consistent snapshot.
    #[error("{0}: the database kept changing while it was read without locks; try again, or run as root")]
    Unsettled(PathBuf),
    #[error("{db}: Refs holds id {id}, outside the range storegc reads (0 to 4294967294)")]
    IdRange { db: PathBuf, id: i64 },
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
    /// Whether some of [`Snapshot::drv_outputs`] came from `Realisations`
    /// rows matched to derivations by name (see [`ca_name_key`]).
    pub ca_by_name: bool,
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
///
/// A reader that may not write the db folder (not root) and finds no
/// `-wal`/`-shm` files (Nix idle) cannot open the database the usual way
/// (SQLite must create the `-shm` index: `SQLITE_READONLY_DIRECTORY`);
/// then [`read_unlocked`] reads it.
pub fn read_snapshot_with(
    state_dir: &Path,
    store_dir: &StoreDir,
    busy_timeout: Duration,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    match read_snapshot_parallel(state_dir, store_dir, busy_timeout, derivation_outputs) {
        Err(DbError::Sqlite { source, .. }) if is_read_only(&source) => {
            read_unlocked(state_dir, store_dir, derivation_outputs)
        }
        other => other,
    }
}

/// `SQLITE_READONLY` (any extended code): SQLite needed to write, here
/// to create the WAL index beside a read-only connection's database.
fn is_read_only(e: &rusqlite::Error) -> bool {
    e.sqlite_error_code() == Some(rusqlite::ErrorCode::ReadOnly)
}

/// What says a file did not change: inode, size, mtime (ns).
fn stamp(path: &Path) -> Result<(u64, u64, i64, i64), DbError> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).map_err(|e| DbError::StateDir(path.to_path_buf(), e))?;
    Ok((m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// Reads a WAL database whose folder we may not write, when no
/// write-ahead log is beside it: with SQLite's `immutable` flag (no locks,
/// no `-shm`), which reads the main file alone. That file holds every
/// commit while there is no log, and Nix writes it only when it
/// checkpoints a log; new commits go to a new log first. So a read during
/// which the file's inode, size and mtime stayed the same is one
/// consistent state: the state before any commit still in the log.
/// Otherwise it is read again (four tries). A log with commits but no
/// `-shm` (a crashed writer's leftover) cannot be read this way:
/// [`DbError::WalUnreadable`].
///
/// Cost: one [`read_snapshot_from`] per try, on one thread.
pub fn read_unlocked(
    state_dir: &Path,
    store_dir: &StoreDir,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    let path = db_path(state_dir);
    let wal = path.with_extension("sqlite-wal");
    for attempt in 0..4 {
        if std::fs::metadata(&wal).is_ok_and(|m| m.len() > 0) {
            return Err(DbError::WalUnreadable(path));
        }
        let before = stamp(&path)?;
        let snap = {
            let conn = open_immutable(&path)?;
            read_snapshot_from(&conn, &path, store_dir, derivation_outputs)?
        };
        if stamp(&path)? == before {
            return Ok(snap);
        }
        tracing::debug!(
            attempt,
            "the database changed while read without locks; retrying"
        );
    }
    Err(DbError::Unsettled(path))
}

/// Opens `path` read-only with `immutable=1`: no locks, no `-shm`.
fn open_immutable(path: &Path) -> Result<Connection, DbError> {
    let sql = |source| DbError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let uri = format!(
        "file:{}?mode=ro&immutable=1",
        uri_escape(&path.to_string_lossy())
    );
    Connection::open_with_flags(
        uri,
        OpenFlags::SQLITE_OPEN_READ_ONLY
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_URI,
    )
    .map_err(sql)
}

/// Escapes a file name for a SQLite URI (`%`, `?`, `#` and anything not
/// printable ASCII as `%XX`). O(len).
fn uri_escape(p: &str) -> String {
    let mut out = String::with_capacity(p.len());
    for b in p.bytes() {
        if b.is_ascii_graphic() && !matches!(b, b'%' | b'?' | b'#') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// [`read_snapshot_with`] on an open connection, on one thread; `db` names
/// it in errors. This is the reference the parallel reader is tested
/// against.
pub fn read_snapshot_from(
    conn: &Connection,
    db: &Path,
    store_dir: &StoreDir,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    let r = Reader { db, store_dir };
    r.begin(conn)?;
    let result = (|| {
        let mut part = r.paths(conn)?;
        let refs = r.refs(conn)?;
        if derivation_outputs {
            r.derivation_outputs(conn, &mut part)?;
        }
        Ok(part.finish(&refs))
    })();
    r.end(conn, result)
}

/// Reads the snapshot with two connections side by side: `ValidPaths`
/// (and `DerivationOutputs`) on one, `Refs` on the other, then assembles
/// them.
///
/// Both read transactions must see the same database state, or the graph
/// could be torn and a live path deleted. Proof: a third connection reads
/// `PRAGMA data_version` before the two transactions start and again after
/// both have started (each has read a page, so its snapshot is fixed). The
/// value changes whenever another connection commits, so when the two
/// readings are equal no commit happened in between, and both snapshots
/// are the state at the first reading. Otherwise both transactions are
/// ended and the protocol is tried again; after a few tries the reader
/// falls back to one connection ([`read_snapshot_from`]).
///
/// Cost: the work of [`read_snapshot_from`], spread over two threads (the
/// `Refs` scan is as long as the `ValidPaths` scan on real stores).
pub fn read_snapshot_parallel(
    state_dir: &Path,
    store_dir: &StoreDir,
    busy_timeout: Duration,
    derivation_outputs: bool,
) -> Result<Snapshot, DbError> {
    read_parallel(
        state_dir,
        store_dir,
        busy_timeout,
        derivation_outputs,
        &|| {},
    )
}

/// [`read_snapshot_parallel`] with a hook run between the two
/// transactions' starts, where a concurrent commit would tear the
/// snapshot (tests commit there).
fn read_parallel(
    state_dir: &Path,
    store_dir: &StoreDir,
    busy_timeout: Duration,
    derivation_outputs: bool,
    between: &dyn Fn(),
) -> Result<Snapshot, DbError> {
    let path = db_path(state_dir);
    let r = Reader {
        db: &path,
        store_dir,
    };
    let (a, b, check) = (
        open(state_dir, busy_timeout)?,
        open(state_dir, busy_timeout)?,
        open(state_dir, busy_timeout)?,
    );
    for attempt in 0..4 {
        let before = r.data_version(&check)?;
        r.begin(&a)?;
        between();
        if let Err(e) = r.begin(&b) {
            return r.end(&a, Err(e));
        }
        if r.data_version(&check)? != before {
            tracing::debug!(
                attempt,
                "a commit came between the two read transactions; retrying"
            );
            r.end(&a, Ok(()))?;
            r.end(&b, Ok(()))?;
            continue;
        }
        // Connections are Send, not Sync: each moves to its thread and back.
        let r = &r;
        let ((a2, part), (b2, refs)) = rayon::join(
            move || {
                let part = r.paths(&a).and_then(|mut part| {
                    if derivation_outputs {
                        r.derivation_outputs(&a, &mut part)?;
                    }
                    Ok(part)
                });
                (a, part)
            },
            move || {
                let refs = r.refs(&b);
                (b, refs)
            },
        );
        let part = r.end(&a2, part)?;
        let refs = r.end(&b2, refs)?;
        return Ok(part.finish(&refs));
    }
    read_snapshot_from(&a, &path, store_dir, derivation_outputs)
}

/// Database ids (`ValidPaths.id`) to dense ids, sized by the number of
/// rows, not by the highest id: `ValidPaths.id` only grows, so a host with
/// years of churn has a few hundred thousand paths with ids in the hundreds
/// of millions.
///
/// The ids are kept sorted with their dense ids beside them, plus a bucket
/// index on the high bits: bucket `k` holds the ids in
/// `[k << shift, (k + 1) << shift)`, and `shift` is chosen so there are at
/// most about two buckets a row. A lookup reads one bucket's bounds and
/// scans the (on average fewer than two) ids in it; a store whose ids
/// cluster unevenly costs at most a binary search inside a bucket.
/// Memory: 16 bytes a row for the pairs plus at most 8 bytes a row for
/// the buckets.
#[derive(Debug, Default)]
pub struct IdIndex {
    /// `(database id, dense id)`, sorted by database id, ids unique.
    pairs: Vec<(i64, PathId)>,
    /// `bucket[k]..bucket[k + 1]` is the range of `pairs` in bucket `k`.
    bucket: Vec<u32>,
    shift: u32,
}

impl IdIndex {
    /// Builds the index from `(database id, dense id)` pairs (any order;
    /// ids must be unique, as `ValidPaths.id` is the primary key).
    /// O(n log n) when unsorted, O(n) when sorted (the scan order).
    pub fn new(mut pairs: Vec<(i64, PathId)>) -> IdIndex {
        if !pairs.windows(2).all(|w| w[0].0 <= w[1].0) {
            pairs.sort_unstable_by_key(|p| p.0);
        }
        let max = pairs.last().map_or(0, |p| p.0.max(0) as u64);
        let want = (2 * pairs.len() as u64).max(1);
        let mut shift = 0;
        while (max >> shift) >= want {
            shift += 1;
        }
        let buckets = (max >> shift) as usize + 1;
        let mut bucket = vec![0u32; buckets + 1];
        for &(id, _) in &pairs {
            if id >= 0 {
                bucket[((id as u64) >> shift) as usize + 1] += 1;
            }
        }
        // Negative ids (never seen) sort first and stay before bucket 0.
        bucket[0] = pairs.iter().take_while(|p| p.0 < 0).count() as u32;
        for k in 0..buckets {
            bucket[k + 1] += bucket[k];
        }
        IdIndex {
            pairs,
            bucket,
            shift,
        }
    }

    /// The dense id of a database id, or [`NO_PATH`] when no row has it.
    pub fn dense(&self, id: i64) -> PathId {
        let range = if id < 0 {
            0..self.bucket[0] as usize
        } else {
            let k = ((id as u64) >> self.shift) as usize;
            match (self.bucket.get(k), self.bucket.get(k + 1)) {
                (Some(&a), Some(&b)) => a as usize..b as usize,
                _ => return NO_PATH,
            }
        };
        let slice = &self.pairs[range];
        if slice.len() <= 4 {
            slice.iter().find(|p| p.0 == id).map_or(NO_PATH, |p| p.1)
        } else {
            slice
                .binary_search_by_key(&id, |p| p.0)
                .map_or(NO_PATH, |i| slice[i].1)
        }
    }

    /// Bytes held (for the memory test).
    pub fn heap_bytes(&self) -> usize {
        self.pairs.capacity() * std::mem::size_of::<(i64, PathId)>()
            + self.bucket.capacity() * std::mem::size_of::<u32>()
    }
}

/// The `ValidPaths` half of a snapshot, before references are attached.
struct PathsPart {
    snap: Snapshot,
    /// Database id to dense id.
    ids: IdIndex,
}

impl PathsPart {
    fn dense(&self, id: i64) -> PathId {
        self.ids.dense(id)
    }

    /// Attaches the references (database ids) as compressed rows. O(n + e).
    fn finish(mut self, refs: &[(u32, u32)]) -> Snapshot {
        let edges: Vec<(PathId, PathId)> = refs
            .iter()
            .map(|&(a, b)| (self.dense(a as i64), self.dense(b as i64)))
            // A dangling reference cannot happen under the schema's
            // foreign keys; if it does, the edge cannot keep anything alive.
            .filter(|&(a, b)| a != NO_PATH && b != NO_PATH)
            .collect();
        (self.snap.ref_start, self.snap.ref_targets) = compress_rows(self.snap.paths.len(), &edges);
        debug_assert!(self.snap.paths.iter().all(|b| parse_basename(b).is_ok()));
        self.snap
    }
}

/// The queries, with the database named in their errors.
struct Reader<'a> {
    db: &'a Path,
    store_dir: &'a StoreDir,
}

impl Reader<'_> {
    fn sql(&self, source: rusqlite::Error) -> DbError {
        DbError::Sqlite {
            path: self.db.to_path_buf(),
            source,
        }
    }

    fn foreign(&self, p: &str) -> DbError {
        DbError::ForeignPath {
            db: self.db.to_path_buf(),
            path: p.to_string(),
            store_dir: self.store_dir.to_string(),
        }
    }

    /// An integer column (or NULL), without rusqlite's generic conversion.
    fn int(&self, row: &rusqlite::Row<'_>, i: usize) -> Result<Option<i64>, DbError> {
        row.get_ref_unwrap(i)
            .as_i64_or_null()
            .map_err(|e| self.sql(e.into()))
    }

    /// Starts a read transaction and fixes its snapshot (a deferred
    /// transaction takes its snapshot at its first read).
    fn begin(&self, conn: &Connection) -> Result<(), DbError> {
        conn.execute_batch("BEGIN DEFERRED")
            .map_err(|e| self.sql(e))?;
        conn.query_row(
            "SELECT count(*) FROM (SELECT 1 FROM ValidPaths LIMIT 1)",
            [],
            |_| Ok(()),
        )
        .map_err(|e| self.sql(e))
    }

    /// Ends a read transaction. Ending one cannot lose anything; its
    /// failure is only worth reporting when the read itself went well.
    fn end<T>(&self, conn: &Connection, result: Result<T, DbError>) -> Result<T, DbError> {
        let end = conn.execute_batch("COMMIT").map_err(|e| self.sql(e));
        let v = result?;
        end?;
        Ok(v)
    }

    fn data_version(&self, conn: &Connection) -> Result<i64, DbError> {
        conn.query_row("PRAGMA data_version", [], |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

    /// Every `ValidPaths` row, in database id order. One scan; the name
    /// arena, flat vectors, and derivers resolved through the hash index.
    fn paths(&self, conn: &Connection) -> Result<PathsPart, DbError> {
        let mut s = Snapshot::default();
        let mut ids: Vec<(i64, PathId)> = Vec::new();
        // Deriver basenames, resolved once every path has an id.
        let mut deriver_names = PathTable::default();
        let mut deriver_of: Vec<u32> = Vec::new();
        let mut stmt = conn
            .prepare(
                "SELECT id, path, registrationTime, deriver, narSize, ultimate, \
                 (sigs IS NOT NULL AND sigs != '') FROM ValidPaths",
            )
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let id = self.int(row, 0)?.unwrap_or(-1);
            let full = row
                .get_ref_unwrap(1)
                .as_str()
                .map_err(|e| self.sql(e.into()))?;
            let base = self
                .store_dir
                .store_path_of(full)
                .map_err(|_| self.foreign(full))?;
            if base.len() + self.store_dir.as_str().len() + 1 != full.len() {
                return Err(self.foreign(full));
            }
            ids.push((id, s.paths.push(base)));
            s.registration_time.push(self.int(row, 2)?.unwrap_or(0));
            let deriver = row
                .get_ref_unwrap(3)
                .as_str_or_null()
                .map_err(|e| self.sql(e.into()))?;
            deriver_of.push(match deriver.map(|d| self.store_dir.store_path_of(d)) {
                Some(Ok(b)) => deriver_names.push(b),
                _ => NO_PATH,
            });
            s.nar_size
                .push(self.int(row, 4)?.unwrap_or(0).max(0) as u64);
            let ultimate = self.int(row, 5)?.unwrap_or(0) == 1;
            let signed = self.int(row, 6)?.unwrap_or(0) != 0;
            s.origin.push(
                if ultimate { origin::ULTIMATE } else { 0 }
                    | if signed { origin::SIGNED } else { 0 },
            );
        }
        drop(rows);
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
        Ok(PathsPart {
            snap: s,
            ids: IdIndex::new(ids),
        })
    }

    /// Every `Refs` row as database ids. One scan, 8 bytes a reference.
    fn refs(&self, conn: &Connection) -> Result<Vec<(u32, u32)>, DbError> {
        let mut refs = Vec::new();
        let mut stmt = conn
            .prepare("SELECT referrer, reference FROM Refs")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        // Ids are kept in 32 bits (4 billion registrations is far beyond
        // any store). One that does not fit is refused rather than dropped:
        // a dropped reference could let a live path be deleted.
        let id = |v: Option<i64>| match v {
            Some(v) => u32::try_from(v)
                .ok()
                .filter(|&v| v != u32::MAX)
                .ok_or_else(|| DbError::IdRange {
                    db: self.db.to_path_buf(),
                    id: v,
                }),
            None => Ok(u32::MAX),
        };
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            refs.push((id(self.int(row, 0)?)?, id(self.int(row, 1)?)?));
        }
        Ok(refs)
    }

    /// `(drv, output)` pairs whose output is valid, sorted.
    fn derivation_outputs(&self, conn: &Connection, part: &mut PathsPart) -> Result<(), DbError> {
        let mut stmt = conn
            .prepare("SELECT drv, path FROM DerivationOutputs")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        let mut pairs = Vec::new();
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let drv = part.dense(self.int(row, 0)?.unwrap_or(-1));
            let out = row
                .get_ref_unwrap(1)
                .as_str()
                .map_err(|e| self.sql(e.into()))?;
            if drv == NO_PATH {
                continue;
            }
            if let Some(o) = self
                .store_dir
                .store_path_of(out)
                .ok()
                .and_then(|b| part.snap.paths.lookup(b))
            {
                pairs.push((drv, o));
            }
        }
        let by_name = self.realisations(conn, part, &mut pairs)?;
        part.snap.ca_by_name = by_name;
        self.build_trace(conn, part, &mut pairs)?;
        pairs.sort_unstable();
        pairs.dedup();
        part.snap.drv_outputs = pairs;
        Ok(())
    }

    /// The column names of `table`, empty when it does not exist.
    fn columns(&self, conn: &Connection, table: &str) -> Result<Vec<String>, DbError> {
        let mut stmt = conn
            .prepare(&format!("PRAGMA table_info({table})"))
            .map_err(|e| self.sql(e))?;
        let names = stmt
            .query_map([], |r| r.get::<_, String>(1))
            .map_err(|e| self.sql(e))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| self.sql(e))?;
        Ok(names)
    }

    /// A path column that holds either a `ValidPaths.id` or a store path.
    fn path_cell(&self, part: &PathsPart, row: &rusqlite::Row<'_>, i: usize) -> PathId {
        match row.get_ref_unwrap(i) {
            rusqlite::types::ValueRef::Integer(id) => part.dense(id),
            rusqlite::types::ValueRef::Text(t) => std::str::from_utf8(t)
                .ok()
                .and_then(|p| self.store_dir.store_path_of(p).ok())
                .and_then(|b| part.snap.paths.lookup(b))
                .unwrap_or(NO_PATH),
            _ => NO_PATH,
        }
    }

    /// Content-addressed outputs from `Realisations` (Nix 2.4 to 2.34),
    /// whose `drvPath` is `<hash modulo>!<output>`: matching it exactly
    /// needs the derivation parsed and hashed, so a derivation named
    /// `N.drv` is paired with every realised output named as Nix names
    /// that derivation's outputs (see [`ca_name_key`]). That keeps at
    /// least what Nix keeps. Returns whether any row was paired. O(n + r).
    fn realisations(
        &self,
        conn: &Connection,
        part: &PathsPart,
        pairs: &mut Vec<(PathId, PathId)>,
    ) -> Result<bool, DbError> {
        let cols = self.columns(conn, "Realisations")?;
        if !["outputName", "outputPath"]
            .iter()
            .all(|c| cols.iter().any(|n| n == c))
        {
            return Ok(false);
        }
        let paths = &part.snap.paths;
        let mut drvs: HashMap<&str, Vec<PathId>> = HashMap::new();
        for (i, base) in paths.iter().enumerate() {
            if let Some(name) = name_of(base).strip_suffix(".drv") {
                drvs.entry(name).or_default().push(i as PathId);
            }
        }
        let mut stmt = conn
            .prepare("SELECT outputName, outputPath FROM Realisations")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        let mut matched = false;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let out = self.path_cell(part, row, 1);
            let Ok(Some(output)) = row.get_ref_unwrap(0).as_str_or_null() else {
                continue;
            };
            if out == NO_PATH {
                continue;
            }
            let key = ca_name_key(name_of(paths.get(out)), output);
            for &d in key.and_then(|k| drvs.get(k)).into_iter().flatten() {
                pairs.push((d, out));
                matched = true;
            }
        }
        Ok(matched)
    }

    /// Content-addressed outputs from `BuildTraceV3` (Nix 2.35 on), whose
    /// `drvPath` names the derivation itself: matched exactly.
    fn build_trace(
        &self,
        conn: &Connection,
        part: &PathsPart,
        pairs: &mut Vec<(PathId, PathId)>,
    ) -> Result<(), DbError> {
        let cols = self.columns(conn, "BuildTraceV3")?;
        if !["drvPath", "outputPath"]
            .iter()
            .all(|c| cols.iter().any(|n| n == c))
        {
            return Ok(());
        }
        let mut stmt = conn
            .prepare("SELECT drvPath, outputPath FROM BuildTraceV3")
            .map_err(|e| self.sql(e))?;
        let mut rows = stmt.query([]).map_err(|e| self.sql(e))?;
        while let Some(row) = rows.next().map_err(|e| self.sql(e))? {
            let (drv, out) = (self.path_cell(part, row, 0), self.path_cell(part, row, 1));
            if drv != NO_PATH && out != NO_PATH {
                pairs.push((drv, out));
            }
        }
        Ok(())
    }
}

/// The name `N` of the derivation `N.drv` whose output `output_name` is
/// named `name`: Nix names output `out` of `N` as `N` and any other output
/// `o` as `N-o`, content-addressed or not. `None` when `name` cannot be
/// such an output.
pub fn ca_name_key<'a>(name: &'a str, output_name: &str) -> Option<&'a str> {
    if output_name == "out" {
        return Some(name);
    }
    name.strip_suffix(output_name)?.strip_suffix('-')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::synth::{generate, SynthSpec};

    const H1: &str = "00000000000000000000000000000001";
    const H2: &str = "00000000000000000000000000000002";
    const H3: &str = "00000000000000000000000000000003";
    const H4: &str = "00000000000000000000000000000004";

    /// A hand-made database: `a.drv` (id 1), its CA outputs `a` (2) and
    /// `a-dev` (3), and an unrelated `b` (4); `extra` creates the CA table.
    fn ca_db(extra: &str) -> (Connection, StoreDir) {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(&format!(
            "CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT, \
             registrationTime INTEGER, deriver TEXT, narSize INTEGER, \
             ultimate INTEGER, sigs TEXT);
             CREATE TABLE Refs (referrer INTEGER, reference INTEGER);
             CREATE TABLE DerivationOutputs (drv INTEGER, id TEXT, path TEXT);
             INSERT INTO ValidPaths VALUES
               (1, '/s/{H1}-a.drv', 0, NULL, 1, 0, NULL),
               (2, '/s/{H2}-a', 0, NULL, 1, 0, NULL),
               (3, '/s/{H3}-a-dev', 0, NULL, 1, 0, NULL),
               (4, '/s/{H4}-b', 0, NULL, 1, 0, NULL);
             {extra}"
        ))
        .unwrap();
        (c, StoreDir::new("/s"))
    }

    fn pairs_of(c: &Connection, sd: &StoreDir) -> (Vec<(String, String)>, bool) {
        let s = read_snapshot_from(c, Path::new("db"), sd, true).unwrap();
        let name = |i: PathId| name_of(s.paths.get(i)).to_string();
        let p = s
            .drv_outputs
            .iter()
            .map(|&(d, o)| (name(d), name(o)))
            .collect();
        (p, s.ca_by_name)
    }

    #[test]
    fn realisations_pair_outputs_with_derivations_by_name() {
        let (c, sd) = ca_db(
            "CREATE TABLE Realisations (id INTEGER PRIMARY KEY, drvPath TEXT, \
             outputName TEXT, outputPath INTEGER, signatures TEXT);
             INSERT INTO Realisations VALUES
               (1, 'sha256:x!out', 'out', 2, NULL),
               (2, 'sha256:x!dev', 'dev', 3, NULL),
               (3, 'sha256:y!out', 'dev', 4, NULL);",
        );
        let (p, by_name) = pairs_of(&c, &sd);
        let want = [("a.drv", "a"), ("a.drv", "a-dev")];
        let want: Vec<_> = want.iter().map(|&(a, b)| (a.into(), b.into())).collect();
        assert_eq!(p, want);
        assert!(by_name);
    }

    #[test]
    fn build_trace_pairs_outputs_exactly_and_no_table_pairs_nothing() {
        let (c, sd) = ca_db(&format!(
            "CREATE TABLE BuildTraceV3 (id INTEGER PRIMARY KEY, drvPath TEXT, \
             outputName TEXT, outputPath TEXT, signature TEXT);
             INSERT INTO BuildTraceV3 VALUES (1, '/s/{H1}-a.drv', 'x', '/s/{H4}-b', NULL);"
        ));
        let (p, by_name) = pairs_of(&c, &sd);
        assert_eq!(p, vec![("a.drv".to_string(), "b".to_string())]);
        assert!(!by_name);
        let (c, sd) = ca_db("");
        assert_eq!(pairs_of(&c, &sd), (vec![], false));
    }

    #[test]
    fn ca_name_key_strips_the_output_name() {
        assert_eq!(ca_name_key("a", "out"), Some("a"));
        assert_eq!(ca_name_key("a-dev", "dev"), Some("a"));
        assert_eq!(ca_name_key("adev", "dev"), None);
        assert_eq!(ca_name_key("b", "dev"), None);
    }

    fn synth_store(paths: usize) -> (tempfile::TempDir, crate::synth::SynthStore, StoreDir) {
        synth_sparse(paths, 0)
    }

    fn synth_sparse(
        paths: usize,
        sparse_ids: u64,
    ) -> (tempfile::TempDir, crate::synth::SynthStore, StoreDir) {
        let dir = tempfile::tempdir().unwrap();
        let spec = SynthSpec {
            paths,
            sparse_ids,
            write_files: false,
            now: 1_800_000_000,
            ..SynthSpec::default()
        };
        let st = generate(&dir.path().join("s"), &spec).unwrap();
        let sd = StoreDir::new(st.store_dir.display().to_string());
        (dir, st, sd)
    }

    fn same(a: &Snapshot, b: &Snapshot) {
        assert_eq!(
            a.paths.iter().collect::<Vec<_>>(),
            b.paths.iter().collect::<Vec<_>>()
        );
        assert_eq!(a.nar_size, b.nar_size);
        assert_eq!(a.registration_time, b.registration_time);
        assert_eq!(a.deriver, b.deriver);
        assert_eq!(a.origin, b.origin);
        assert_eq!(a.ref_start, b.ref_start);
        assert_eq!(a.ref_targets, b.ref_targets);
        assert_eq!(a.drv_outputs, b.drv_outputs);
    }

    #[test]
    fn parallel_reader_equals_the_one_connection_reader() {
        let (_d, st, sd) = synth_store(3000);
        let t = Duration::from_secs(1);
        for outputs in [false, true] {
            let conn = open(&st.state_dir, t).unwrap();
            let one = read_snapshot_from(&conn, &db_path(&st.state_dir), &sd, outputs).unwrap();
            let two = read_snapshot_parallel(&st.state_dir, &sd, t, outputs).unwrap();
            same(&one, &two);
            assert_eq!(one.len(), 3000);
            assert!(!one.ref_targets.is_empty());
            assert_eq!(one.drv_outputs.is_empty(), !outputs);
        }
    }

    #[test]
    fn data_version_sees_other_connections_commits() {
        let (_d, st, sd) = synth_store(200);
        let r = Reader {
            db: &db_path(&st.state_dir),
            store_dir: &sd,
        };
        let check = open(&st.state_dir, Duration::from_secs(1)).unwrap();
        let d0 = r.data_version(&check).unwrap();
        assert_eq!(r.data_version(&check).unwrap(), d0, "no commit, no change");
        let w = Connection::open(db_path(&st.state_dir)).unwrap();
        w.execute(
            "UPDATE ValidPaths SET narSize = narSize + 1 WHERE id = 1",
            [],
        )
        .unwrap();
        assert_ne!(
            r.data_version(&check).unwrap(),
            d0,
            "a commit must change it"
        );
    }

    /// A commit between the two transactions' starts (forced by the hook)
    /// must never yield a torn snapshot: the reader retries (or falls back
    /// to one connection). The commit removes a reference E -> F and a path
    /// Y together, so in any consistent snapshot Y is valid exactly when
    /// E -> F exists; `ValidPaths` from before the commit with `Refs` from
    /// after it would show Y without the reference.
    #[test]
    fn commit_between_the_two_transactions_is_detected() {
        let (_d, st, sd) = synth_store(300);
        let db = db_path(&st.state_dir);
        let base = read_snapshot_from(
            &open(&st.state_dir, Duration::from_secs(1)).unwrap(),
            &db,
            &sd,
            false,
        )
        .unwrap();
        let w = Connection::open(&db).unwrap();
        let id_of = |base_name: &str| -> i64 {
            w.query_row(
                "SELECT id FROM ValidPaths WHERE path = ?1",
                [sd.join(base_name)],
                |r| r.get(0),
            )
            .unwrap()
        };
        let mut referenced = vec![false; base.len()];
        for &t in &base.ref_targets {
            referenced[t as usize] = true;
        }
        let e = (0..base.len() as PathId)
            .find(|&i| !base.references(i).is_empty())
            .unwrap();
        let f = base.references(e)[0];
        let y = (0..base.len() as PathId)
            .find(|&i| !referenced[i as usize] && i != e)
            .unwrap();
        let (e_name, f_name, y_name) = (
            base.paths.get(e).to_string(),
            base.paths.get(f).to_string(),
            base.paths.get(y).to_string(),
        );
        let (e_db, f_db, y_db) = (id_of(&e_name), id_of(&f_name), id_of(&y_name));
        let fired = std::cell::Cell::new(false);
        let commit = || {
            if fired.replace(true) {
                return;
            }
            w.execute_batch("BEGIN").unwrap();
            w.execute(
                "DELETE FROM Refs WHERE referrer = ?1 AND reference = ?2",
                [e_db, f_db],
            )
            .unwrap();
            w.execute("DELETE FROM Refs WHERE referrer = ?1", [y_db])
                .unwrap();
            w.execute("DELETE FROM ValidPaths WHERE id = ?1", [y_db])
                .unwrap();
            w.execute_batch("COMMIT").unwrap();
        };
        let snap =
            read_parallel(&st.state_dir, &sd, Duration::from_secs(1), false, &commit).unwrap();
        assert!(fired.get(), "the hook never ran");
        let y_valid = snap.paths.lookup(&y_name).is_some();
        let (e2, f2) = (
            snap.paths.lookup(&e_name).unwrap(),
            snap.paths.lookup(&f_name).unwrap(),
        );
        let edge = snap.references(e2).contains(&f2);
        assert_eq!(
            y_valid, edge,
            "torn snapshot: ValidPaths and Refs from different states"
        );
    }

    /// Ids spread up to 200,000,000 over 300 rows read exactly like the
    /// dense ids of the same store, and the id index is sized by the rows
    /// (it was a table of 200,000,001 entries, 800 MB).
    #[test]
    fn sparse_ids_read_like_dense_ones_with_memory_by_row_count() {
        let (_d1, dense, sd1) = synth_sparse(300, 0);
        let (_d2, sparse, sd2) = synth_sparse(300, 200_000_000);
        let t = Duration::from_secs(1);
        let conn = open(&sparse.state_dir, t).unwrap();
        let max: i64 = conn
            .query_row("SELECT max(id) FROM ValidPaths", [], |r| r.get(0))
            .unwrap();
        assert_eq!(max, 200_000_000);
        let db = db_path(&sparse.state_dir);
        let r = Reader {
            db: &db,
            store_dir: &sd2,
        };
        r.begin(&conn).unwrap();
        let part = r.paths(&conn).unwrap();
        r.end(&conn, Ok(())).unwrap();
        assert!(
            part.ids.heap_bytes() < 300 * 64,
            "id index holds {} bytes for 300 rows",
            part.ids.heap_bytes()
        );
        // Same store apart from the directory: compare by basename.
        for outputs in [false, true] {
            let a = read_snapshot_parallel(&dense.state_dir, &sd1, t, outputs).unwrap();
            let b = read_snapshot_parallel(&sparse.state_dir, &sd2, t, outputs).unwrap();
            same(&a, &b);
            assert!(!b.ref_targets.is_empty());
        }
    }

    #[test]
    fn id_index_finds_every_id_and_only_those() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        // Uniform, clustered (one bucket holds most), tiny and dense.
        let uniform: Vec<i64> = (0..5000).map(|_| (next() % 50_000_000) as i64).collect();
        let mut clustered: Vec<i64> = (0..2000).map(|i| 40_000_000 + i).collect();
        clustered.extend([1, 7, 3_000_000_000]);
        let dense: Vec<i64> = (1..=1000).collect();
        for mut ids in [uniform, clustered, dense, vec![5], vec![]] {
            ids.sort_unstable();
            ids.dedup();
            let mut pairs: Vec<(i64, PathId)> = ids
                .iter()
                .enumerate()
                .map(|(i, &d)| (d, i as PathId))
                .collect();
            pairs.reverse();
            let idx = IdIndex::new(pairs);
            assert!(idx.heap_bytes() <= ids.len() * 48 + 64);
            for (i, &d) in ids.iter().enumerate() {
                assert_eq!(idx.dense(d), i as PathId, "id {d}");
                if ids.binary_search(&(d + 1)).is_err() {
                    assert_eq!(idx.dense(d + 1), NO_PATH, "id {}", d + 1);
                }
            }
            for d in [-1, 0, i64::MAX, 4_000_000_000] {
                if ids.binary_search(&d).is_err() {
                    assert_eq!(idx.dense(d), NO_PATH, "id {d}");
                }
            }
        }
    }

    /// `Refs` rows naming ids that are not in `ValidPaths` (the foreign
    /// keys forbid it) are dropped, not a panic; an id beyond 32 bits is
    /// refused with the database named.
    #[test]
    fn refs_outside_valid_paths_do_not_panic() {
        let (_d, st, sd) = synth_sparse(300, 200_000_000);
        let db = db_path(&st.state_dir);
        let w = Connection::open(&db).unwrap();
        w.execute_batch(
            "PRAGMA foreign_keys = OFF; \
             INSERT INTO Refs VALUES (199999999, 200000000); \
             INSERT INTO Refs VALUES (200000000, 400000000); \
             INSERT INTO Refs VALUES (3, 5);",
        )
        .unwrap();
        let t = Duration::from_secs(1);
        let base = read_snapshot_parallel(&st.state_dir, &sd, t, true).unwrap();
        assert_eq!(base.len(), 300);
        w.execute("INSERT INTO Refs VALUES (200000000, 5000000000)", [])
            .unwrap();
        let e = read_snapshot_parallel(&st.state_dir, &sd, t, true).unwrap_err();
        let msg = e.to_string();
        assert!(
            msg.contains("5000000000") && msg.contains("db.sqlite"),
            "{msg}"
        );
    }

    #[test]
    fn compress_rows_sorts_dedups_and_drops_self_edges() {
        let (start, targets) = compress_rows(3, &[(0, 2), (0, 1), (0, 2), (1, 1), (2, 0)]);
        assert_eq!(start, vec![0, 2, 2, 3]);
        assert_eq!(targets, vec![1, 2, 0]);
    }
}
