//! Store entries that no database row names: what a crash between a
//! chunk's commit and its files leaves (rows go first, so the files stay),
//! and what failed builds leave (`.lock`, `.chroot`, `.check`). Nix's
//! whole-store collector removes them (`gc.cc`, the pass over the store
//! folder); so does the engine, at the end of `apply` and in `storegc
//! repair`, always under Nix's GC lock with the gc-socket served.
//!
//! An entry without a row may also be a path being built or added right
//! now, so one is removed only when all of these hold:
//! - its name is a store path's (`<hash>-<name>`), or it starts with
//!   `tmp-` (a temporary folder newer Nix makes in the store) and an
//!   exclusive `flock` on it can be taken (its maker holds one while it
//!   uses it); any other name is left alone;
//! - no root of any kind (a temp-root file, `/proc`, gcroots) names its
//!   hash part, and no gc-socket client has sent it — checked and marked
//!   pending atomically, so a client asking now waits until it is gone;
//! - the database has no row for it, asked just before;
//! - no lock file of its hash part (`<hash>-*.lock`, the entry itself
//!   when it is one) is held: Nix's builders hold `<out>.lock` while they
//!   build, and `.chroot`/`.check` folders share that hash. A removed lock
//!   file is first marked stale (a byte written), as Nix's
//!   `deleteLockFile` does, so a process that opened it before sees it.

use std::collections::{HashMap, HashSet};
use std::fs::File;
use std::io::Write;
use std::path::Path;

use rusqlite::Connection;

use super::files::remove_tree;
use super::protocol::TempRoots;

/// What one pass removed.
#[derive(Debug, Default)]
pub struct Swept {
    /// Basenames removed, sorted.
    pub removed: Vec<String>,
    /// Bytes freed (allocated blocks, hard links once).
    pub freed: u64,
    /// Entries that could not be removed, with why (sorted).
    pub errors: Vec<String>,
}

/// Everything [`sweep`] needs to decide.
pub struct Guards<'a> {
    pub conn: &'a Connection,
    pub store_dir: &'a str,
    /// Hash parts of every root found (valid or not).
    pub root_hashes: &'a HashSet<String>,
    /// Basenames the snapshot knows as valid (skipped without a query).
    pub known_valid: &'a dyn Fn(&str) -> bool,
    pub temp_roots: &'a TempRoots,
}

/// One pass over the store folder (see the module doc). O(entries) plus
/// one indexed query per entry the snapshot does not know.
pub fn sweep(g: &Guards) -> std::io::Result<Swept> {
    let mut names: Vec<String> = std::fs::read_dir(g.store_dir)?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort_unstable();
    let mut locks: HashMap<String, Vec<String>> = HashMap::new();
    for n in names.iter().filter(|n| n.ends_with(".lock")) {
        if let Ok(b) = crate::store_path::parse_basename(n) {
            locks.entry(b.hash.to_string()).or_default().push(n.clone());
        }
    }
    let mut out = Swept::default();
    for name in names {
        let result = if name.starts_with("tmp-") {
            remove_tmp(g.store_dir, &name)
        } else {
            remove_if_orphan(g, &name, &locks)
        };
        match result {
            Ok(Some(bytes)) => {
                out.freed += bytes;
                out.removed.push(name);
                super::pause::at("orphans");
            }
            Ok(None) => {}
            Err(e) => out.errors.push(format!("{}/{name}: {e}", g.store_dir)),
        }
    }
    Ok(out)
}

/// A `tmp-*` entry, removed only while we hold its lock. `None`: kept.
fn remove_tmp(store_dir: &str, name: &str) -> std::io::Result<Option<u64>> {
    let path = Path::new(store_dir).join(name);
    let Ok(file) = File::open(&path) else {
        return Ok(None);
    };
    if !try_lock(&file) {
        tracing::debug!(%name, "skipping a locked temporary folder");
        return Ok(None);
    }
    let freed = remove_tree(&path)?;
    drop(file);
    Ok(Some(freed))
}

/// A store-path-named entry without a row that nothing holds, removed.
/// `None`: kept (a valid path, a root, a held lock, not a store path).
fn remove_if_orphan(
    g: &Guards,
    name: &str,
    locks: &HashMap<String, Vec<String>>,
) -> std::io::Result<Option<u64>> {
    if name.starts_with('.') || (g.known_valid)(name) {
        return Ok(None);
    }
    let Ok(base) = crate::store_path::parse_basename(name) else {
        return Ok(None);
    };
    if g.root_hashes.contains(base.hash) || !mark_pending(g.temp_roots, base.hash) {
        return Ok(None);
    }
    let no_locks = Vec::new();
    let lock_names = locks.get(base.hash).unwrap_or(&no_locks);
    let result = remove_unheld(g, name, lock_names);
    g.temp_roots.finish_pending();
    result
}

/// Atomically: not sent through the gc-socket, and now pending.
fn mark_pending(roots: &TempRoots, hash: &str) -> bool {
    let mut s = roots.lock();
    if s.roots.contains(hash) {
        return false;
    }
    s.pending.insert(hash.to_string());
    true
}

/// The row check and the lock checks (every `.lock` of the hash, held
/// by us until the entry is gone), then the removal.
fn remove_unheld(g: &Guards, name: &str, lock_names: &[String]) -> std::io::Result<Option<u64>> {
    let path = format!("{}/{name}", g.store_dir);
    if has_row(g.conn, &path).map_err(std::io::Error::other)? {
        return Ok(None);
    }
    let mut held = Vec::new();
    for l in lock_names {
        let lp = format!("{}/{l}", g.store_dir);
        match std::fs::OpenOptions::new().write(true).open(&lp) {
            Ok(f) if !try_lock(&f) => return Ok(None),
            Ok(mut f) => {
                if l == name {
                    // Stale mark, as Nix's deleteLockFile: a waiter sees it.
                    f.write_all(b"d")?;
                }
                held.push(f);
            }
            Err(_) => {}
        }
    }
    let freed = remove_tree(Path::new(&path))?;
    drop(held);
    Ok(Some(freed))
}

fn has_row(conn: &Connection, path: &str) -> rusqlite::Result<bool> {
    let mut q = conn.prepare_cached("SELECT 1 FROM ValidPaths WHERE path = ?1")?;
    q.exists([path])
}

/// A non-blocking exclusive `flock` (what Nix's `lockFile` takes); an
/// error counts as not taken.
fn try_lock(f: &File) -> bool {
    crate::flock::try_lock_exclusive(f).unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    const H1: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const H2: &str = "1123456789abcdfghijklmnpqrsvwxyz";
    const H3: &str = "2123456789abcdfghijklmnpqrsvwxyz";
    const H4: &str = "3123456789abcdfghijklmnpqrsvwxyz";
    const H5: &str = "4123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn removes_only_unheld_entries_without_a_row() {
        let t = tempfile::tempdir().unwrap();
        let store = t.path().join("store");
        let s = store.to_str().unwrap().to_string();
        std::fs::create_dir(&store).unwrap();
        let mk = |n: &str| std::fs::create_dir_all(store.join(n).join("sub")).unwrap();
        let (valid, orphan, rooted, building, sent) = (
            format!("{H1}-valid"),
            format!("{H2}-orphan"),
            format!("{H3}-rooted"),
            format!("{H4}-building"),
            format!("{H5}-sent"),
        );
        for n in [&valid, &orphan, &rooted, &building, &sent] {
            mk(n);
        }
        mk(&format!("{building}.chroot"));
        mk("tmp-free");
        mk("tmp-held");
        mk("add-123-0");
        mk(".links");
        let stale_lock = format!("{H2}-old.lock");
        std::fs::write(store.join(&stale_lock), b"").unwrap();
        let held = File::create(store.join(format!("{building}.lock"))).unwrap();
        assert!(try_lock(&held));
        let tmp_held = File::open(store.join("tmp-held")).unwrap();
        assert!(try_lock(&tmp_held));
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE ValidPaths (id INTEGER PRIMARY KEY, path TEXT)")
            .unwrap();
        conn.execute(
            "INSERT INTO ValidPaths (path) VALUES (?1)",
            [format!("{s}/{valid}")],
        )
        .unwrap();
        let temp_roots = TempRoots::default();
        temp_roots.add(H5);
        let root_hashes = HashSet::from([H3.to_string()]);
        let swept = sweep(&Guards {
            conn: &conn,
            store_dir: &s,
            root_hashes: &root_hashes,
            known_valid: &|_| false,
            temp_roots: &temp_roots,
        })
        .unwrap();
        let mut want = vec![orphan.clone(), stale_lock, "tmp-free".to_string()];
        want.sort();
        assert_eq!(swept.removed, want);
        assert!(swept.errors.is_empty(), "{:?}", swept.errors);
        let chroot = format!("{building}.chroot");
        for kept in [
            &valid,
            &rooted,
            &building,
            &chroot,
            &sent,
            "tmp-held",
            "add-123-0",
            ".links",
        ] {
            assert!(store.join(kept).exists(), "{kept} removed");
        }
        assert!(!store.join(&orphan).exists());
        assert!(temp_roots.lock().pending.is_empty());
    }
}
