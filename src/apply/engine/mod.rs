//! storegc's own deletion engine (`apply --delete-with storegc`), step by
//! step as Nix's collector in `src/libstore/gc.cc`:
//!
//! 1. take `$NIX_STATE_DIR/gc.lock` exclusively ([`protocol::take_gc_lock`]);
//! 2. serve `gc-socket/socket` for the whole run ([`protocol::serve`]),
//!    *before* apply re-reads every root and the database;
//! 3. per chunk (referrers first): keep every path a client rooted
//!    meanwhile, and what it keeps; mark the rest pending; delete their
//!    rows in one SQLite write transaction (`Refs` of the referrer side,
//!    then `ValidPaths`; foreign keys on, so a path still referenced by a
//!    valid path fails the whole chunk and nothing is committed); only
//!    after the commit remove their files, in parallel;
//! 4. at the end, unless stopped, one pass over the store folder removing
//!    entries without a database row that nothing holds ([`orphans`]: what
//!    a crash between a commit and its files leaves), then one pass over
//!    `.links` ([`files::sweep_links`]).
//!
//! Rows before files, always: a valid path never lacks its files, also
//! after a SIGKILL.

mod backend;
pub mod files;
pub mod mount;
pub mod orphans;
pub mod pause;
pub mod protocol;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rayon::prelude::*;
use rusqlite::{Connection, TransactionBehavior};

use crate::graph::Graph;
use crate::paths::PathId;
use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error(transparent)]
    Protocol(#[from] protocol::ProtocolError),
    #[error("{0}: cannot open the store database for writing ({1})")]
    Db(PathBuf, rusqlite::Error),
    #[error("{0}: the store database is read-only to this process")]
    ReadOnlyDb(PathBuf),
    /// The first chunk's transaction failed (e.g. the database stayed
    /// locked past the busy timeout): nothing was deleted.
    #[error("{0}; nothing was deleted")]
    FirstChunk(String),
    #[error(transparent)]
    Mount(#[from] mount::MountError),
    #[error("cannot start threads to remove files ({0})")]
    Pool(#[from] rayon::ThreadPoolBuildError),
    #[error("{0}: cannot delete from the store ({1})")]
    Store(PathBuf, std::io::Error),
}

/// The engine while it runs: Nix's GC lock, the socket server, and a
/// writable connection to the store database.
pub struct Engine {
    conn: Connection,
    db: PathBuf,
    store_dir: String,
    server: protocol::Server,
    /// Removes files; started after the store was made writable, so its
    /// threads share that mount namespace.
    pool: rayon::ThreadPool,
    _lock: protocol::GcLock,
    /// `--vacuum`: [`Engine::vacuum`] after the last chunk.
    pub vacuum_at_end: bool,
}

/// What `--vacuum` found and did (database pages, in bytes).
#[derive(Debug, Clone, Copy, serde::Serialize)]
pub struct Vacuum {
    /// Whether it ran: only when at least a quarter of the pages are free.
    pub done: bool,
    pub bytes_before: u64,
    pub free_bytes_before: u64,
    pub bytes_after: u64,
}

/// How one chunk ended. Ids are the snapshot's.
#[derive(Debug, Default)]
pub struct ChunkOutcome {
    /// Rows deleted and files removed (or removal tried, see `file_errors`).
    pub deleted: Vec<PathId>,
    /// Rooted through the gc-socket meanwhile, with what they keep.
    pub kept: Vec<PathId>,
    /// The transaction failed: nothing of the chunk was committed.
    pub failed: Option<(Vec<PathId>, String)>,
    /// Invalid now, but some files could not be removed (garbage, safe).
    pub file_errors: Vec<(PathId, String)>,
    /// Bytes freed on disk (allocated blocks, hard links counted once).
    pub freed_bytes: u64,
}

impl Engine {
    /// Steps 1 and 2: a read-only store made writable ([`mount`]), the
    /// lock (waiting at most `lock_timeout`), the server, and the database
    /// connection.
    pub fn start(
        settings: &Settings,
        lock_timeout: Duration,
        busy_timeout: Duration,
    ) -> Result<Engine, EngineError> {
        mount::make_store_writable(Path::new(settings.store_dir.as_str()))?;
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(rayon::current_num_threads())
            .build()?;
        let lock = protocol::take_gc_lock(&settings.state_dir, lock_timeout)?;
        let server = protocol::serve(&settings.state_dir, settings.store_dir.as_str())?;
        pause::at("socket");
        let store = Path::new(settings.store_dir.as_str());
        check_writable(store).map_err(|e| EngineError::Store(store.to_path_buf(), e))?;
        let db = crate::db::db_path(&settings.state_dir);
        let conn = open_writable(&db, busy_timeout).map_err(|e| EngineError::Db(db.clone(), e))?;
        if conn
            .is_readonly(rusqlite::DatabaseName::Main)
            .unwrap_or(true)
        {
            return Err(EngineError::ReadOnlyDb(db));
        }
        Ok(Engine {
            conn,
            db,
            store_dir: settings.store_dir.as_str().to_string(),
            server,
            pool,
            _lock: lock,
            vacuum_at_end: false,
        })
    }

    /// Step 3 for one chunk in referrers-first order. `name(id)` is the
    /// path's basename; `deletable` loses what the gc-socket rooted.
    pub fn delete_chunk(
        &mut self,
        chunk: &[PathId],
        graph: &Graph,
        deletable: &mut [bool],
        name: impl Fn(PathId) -> String,
    ) -> ChunkOutcome {
        let mut out = ChunkOutcome::default();
        let started = std::time::Instant::now();
        let (todo, paths) = loop {
            let todo = self.mark_pending(chunk, graph, deletable, &name, &mut out);
            let paths: Vec<String> = todo
                .iter()
                .map(|&id| format!("{}/{}", self.store_dir, name(id)))
                .collect();
            match delete_rows(&mut self.conn, &paths) {
                Ok(()) => break (todo, paths),
                // A path registered meanwhile refers to these (e.g. a
                // `.drv` naming them, written by a client whose root is
                // that `.drv`): keep them and what they keep, as Nix's
                // collector does, and try the rest again. Each round
                // keeps at least one path, so this ends.
                Err(RowsError::Referenced(idx)) => {
                    self.server.roots.finish_pending();
                    let ids: Vec<PathId> = idx.iter().map(|&i| todo[i]).collect();
                    out.kept
                        .extend(super::order::drop_kept(graph, deletable, &ids));
                }
                Err(RowsError::Sql(e)) => {
                    self.server.roots.finish_pending();
                    out.failed = Some((todo, format!("{}: {e}", self.db.display())));
                    return out;
                }
            }
        };
        let committed = started.elapsed();
        let removed = self.pool.install(|| remove_files(&paths));
        self.server.roots.finish_pending();
        tracing::debug!(
            paths = todo.len(),
            rows_s = committed.as_secs_f64(),
            files_s = (started.elapsed() - committed).as_secs_f64(),
            "chunk deleted"
        );
        for (&id, r) in todo.iter().zip(removed) {
            match r {
                Ok(b) => out.freed_bytes += b,
                Err(e) => out.file_errors.push((id, e.to_string())),
            }
        }
        out.deleted = todo;
        out
    }

    /// Under the temp-root lock: drops the chunk's paths that clients
    /// rooted (and their closure) and marks the rest pending, so a client
    /// asking for one now waits until its files are gone.
    fn mark_pending(
        &self,
        chunk: &[PathId],
        graph: &Graph,
        deletable: &mut [bool],
        name: &impl Fn(PathId) -> String,
        out: &mut ChunkOutcome,
    ) -> Vec<PathId> {
        let mut state = self.server.roots.lock();
        let hash = |id: PathId| crate::store_path::hash_of(&name(id)).to_string();
        let rooted: Vec<PathId> = chunk
            .iter()
            .copied()
            .filter(|&id| deletable[id as usize] && state.roots.contains(&hash(id)))
            .collect();
        out.kept
            .extend(super::order::drop_kept(graph, deletable, &rooted));
        let todo: Vec<PathId> = chunk
            .iter()
            .copied()
            .filter(|&id| deletable[id as usize])
            .collect();
        state.pending.extend(todo.iter().map(|&id| hash(id)));
        todo
    }

    /// Step 4: store entries without a row that nothing holds; `state`
    /// gives the roots found with the server up.
    pub fn sweep_orphans(
        &self,
        state: &crate::load::StoreState,
    ) -> std::io::Result<orphans::Swept> {
        let root_hashes: HashSet<String> = state
            .roots
            .iter()
            .filter_map(|r| r.target.rsplit('/').next())
            .map(|b| crate::store_path::hash_of(b).to_string())
            .collect();
        let known_valid = |name: &str| state.snap.paths.lookup(name).is_some();
        orphans::sweep(&orphans::Guards {
            conn: &self.conn,
            store_dir: &self.store_dir,
            root_hashes: &root_hashes,
            known_valid: &known_valid,
            temp_roots: &self.server.roots,
        })
    }

    /// `--vacuum`: rebuilds the database file when at least a quarter of
    /// its pages are free, still under the GC lock. Not by default: in WAL
    /// mode the rebuilt database passes through the WAL, which grows as big
    /// as the database and stays so while any reader holds a snapshot.
    pub fn vacuum(&self) -> rusqlite::Result<Vacuum> {
        let pages = |c: &Connection| -> rusqlite::Result<(u64, u64, u64)> {
            let get = |p: &str| c.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
            Ok((
                get("page_count")? as u64,
                get("freelist_count")? as u64,
                get("page_size")? as u64,
            ))
        };
        let (count, free, size) = pages(&self.conn)?;
        let mut out = Vacuum {
            done: false,
            bytes_before: count * size,
            free_bytes_before: free * size,
            bytes_after: count * size,
        };
        if free.saturating_mul(4) >= count && count > 0 && free > 0 {
            self.conn.execute_batch("VACUUM")?;
            let (count, _, size) = pages(&self.conn)?;
            out.done = true;
            out.bytes_after = count * size;
        }
        Ok(out)
    }

    /// Step 4: the `.links` pass; bytes freed.
    pub fn sweep_links(&self) -> std::io::Result<u64> {
        files::sweep_links(Path::new(&self.store_dir))
    }
}

/// A committed chunk's files: the first path's alone (the test hook's
/// `files` point comes after it), the rest in parallel.
fn remove_files(paths: &[String]) -> Vec<std::io::Result<u64>> {
    let Some((first, rest)) = paths.split_first() else {
        return Vec::new();
    };
    let mut out = vec![files::remove_tree(Path::new(first))];
    pause::at("files");
    out.par_extend(rest.par_iter().map(|p| files::remove_tree(Path::new(p))));
    out
}

/// Whether we may remove entries of the store dir (`access(W_OK)`: a
/// read-only mount or another owner fails here, before any row goes,
/// instead of leaving invalidated paths' files behind).
fn check_writable(store: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(store.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// A read-write connection, proven able to write: an empty write
/// transaction waits at most the busy timeout for a writer holding the
/// database, so a database locked past it is refused before anything
/// changed rather than failing every chunk.
fn open_writable(db: &Path, busy_timeout: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open_with_flags(
        db,
        rusqlite::OpenFlags::SQLITE_OPEN_READ_WRITE | rusqlite::OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(busy_timeout)?;
    conn.execute_batch("PRAGMA foreign_keys = ON; BEGIN IMMEDIATE; ROLLBACK;")?;
    Ok(conn)
}

/// Why a chunk's transaction was rolled back.
#[derive(Debug)]
enum RowsError {
    /// These paths (indices into the chunk) have a referrer outside the
    /// chunk in the database now: registered after the snapshot.
    Referenced(Vec<usize>),
    Sql(rusqlite::Error),
}

impl From<rusqlite::Error> for RowsError {
    fn from(e: rusqlite::Error) -> Self {
        RowsError::Sql(e)
    }
}

/// One write transaction: the chunk's `Refs` (referrer side) and then its
/// `ValidPaths` rows. Inside it, before anything is deleted, every path's
/// referrers are read from the database as it is now: one outside the
/// chunk (a path registered after the snapshot) rolls the chunk back with
/// [`RowsError::Referenced`]. Any error rolls the whole chunk back.
fn delete_rows(conn: &mut Connection, paths: &[String]) -> Result<(), RowsError> {
    let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
    {
        let mut id_of = tx.prepare_cached("SELECT id FROM ValidPaths WHERE path = ?1")?;
        let mut ids = Vec::with_capacity(paths.len());
        for (i, p) in paths.iter().enumerate() {
            match id_of.query_row([p], |r| r.get::<_, i64>(0)) {
                Ok(id) => ids.push((i, id)),
                Err(rusqlite::Error::QueryReturnedNoRows) => {}
                Err(e) => return Err(e.into()),
            }
        }
        let in_chunk: std::collections::HashSet<i64> = ids.iter().map(|&(_, id)| id).collect();
        let mut referrers = tx.prepare_cached("SELECT referrer FROM Refs WHERE reference = ?1")?;
        let mut referenced = Vec::new();
        for &(i, id) in &ids {
            let mut rows = referrers.query([id])?;
            while let Some(r) = rows.next()? {
                if !in_chunk.contains(&r.get::<_, i64>(0)?) {
                    referenced.push(i);
                    break;
                }
            }
        }
        if !referenced.is_empty() {
            return Err(RowsError::Referenced(referenced));
        }
        let mut refs = tx.prepare_cached("DELETE FROM Refs WHERE referrer = ?1")?;
        for &(_, id) in &ids {
            refs.execute([id])?;
        }
        let mut valid = tx.prepare_cached("DELETE FROM ValidPaths WHERE id = ?1")?;
        for &(_, id) in &ids {
            valid.execute([id])?;
        }
    }
    pause::at("transaction");
    Ok(tx.commit()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn db() -> Connection {
        let c = Connection::open_in_memory().unwrap();
        c.execute_batch(
            "PRAGMA foreign_keys = ON;
             CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
             CREATE TABLE Refs (referrer INTEGER NOT NULL, reference INTEGER NOT NULL,
               PRIMARY KEY (referrer, reference),
               FOREIGN KEY (referrer) REFERENCES ValidPaths(id) ON DELETE CASCADE,
               FOREIGN KEY (reference) REFERENCES ValidPaths(id) ON DELETE RESTRICT);
             INSERT INTO ValidPaths VALUES (1, '/s/a'), (2, '/s/b'), (3, '/s/c');
             INSERT INTO Refs VALUES (1, 2), (2, 2), (3, 2);",
        )
        .unwrap();
        c
    }

    fn count(c: &Connection) -> i64 {
        c.query_row("SELECT count(*) FROM ValidPaths", [], |r| r.get(0))
            .unwrap()
    }

    #[test]
    fn vacuum_only_runs_when_a_quarter_of_the_pages_are_free() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("var");
        std::fs::create_dir_all(state.join("db")).unwrap();
        let db = crate::db::db_path(&state);
        let c = Connection::open(&db).unwrap();
        c.execute_batch(
            "CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT UNIQUE NOT NULL);
             WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 20000)
             INSERT INTO ValidPaths (path) SELECT printf('/s/%064d', i) FROM n;",
        )
        .unwrap();
        let settings = crate::settings::Settings {
            store_dir: crate::store_path::StoreDir::new(t.path().join("store").to_str().unwrap()),
            state_dir: state.clone(),
            gc: Default::default(),
            conf_files: vec![],
            ca_derivations: false,
            warnings: vec![],
        };
        std::fs::create_dir_all(t.path().join("store")).unwrap();
        let e = Engine::start(&settings, Duration::ZERO, Duration::from_secs(1)).unwrap();
        let v = e.vacuum().unwrap();
        assert!(!v.done && v.free_bytes_before == 0, "{v:?}");
        c.execute_batch("DELETE FROM ValidPaths WHERE id > 5000")
            .unwrap();
        let v = e.vacuum().unwrap();
        assert!(v.done, "{v:?}");
        assert!(v.bytes_after * 2 < v.bytes_before, "{v:?}");
        // A tenth free: not worth a WAL as big as the database.
        c.execute_batch("DELETE FROM ValidPaths WHERE id > 4500")
            .unwrap();
        let v = e.vacuum().unwrap();
        assert!(!v.done && v.free_bytes_before > 0, "{v:?}");
        assert_eq!(v.bytes_after, v.bytes_before);
    }

    #[test]
    fn a_chunk_with_a_still_referenced_path_commits_nothing() {
        let mut c = db();
        // b is still referenced by c, which stays: the whole chunk is
        // rolled back, naming b (index 1).
        match delete_rows(&mut c, &["/s/a".into(), "/s/b".into()]) {
            Err(RowsError::Referenced(idx)) => assert_eq!(idx, vec![1]),
            other => panic!("{other:?}"),
        }
        assert_eq!(count(&c), 3);
        delete_rows(
            &mut c,
            &[
                "/s/a".into(),
                "/s/c".into(),
                "/s/b".into(),
                "/s/gone".into(),
            ],
        )
        .unwrap();
        assert_eq!(count(&c), 0);
    }
}
