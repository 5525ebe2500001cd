//! Nix's collector protocol, as `src/libstore/gc.cc` speaks it: the
//! exclusive `flock` on `$NIX_STATE_DIR/gc.lock` (a builder that cannot take
//! it shared knows a collector runs) and the `gc-socket/socket` server
//! through which such builders register temp roots while we delete.
//!
//! A client writes a store path and `\n` per root and waits for the byte
//! `1`. The server adds the path's hash part to [`TempRoots`] first; if that
//! hash part is pending (being deleted right now) it answers only once the
//! deletion finished, so the client then sees the path gone.

use std::collections::HashSet;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("{0}: cannot open Nix's GC lock ({1})")]
    Lock(PathBuf, std::io::Error),
    #[error("{0}: another garbage collector still holds Nix's GC lock after {1:?}")]
    LockTimeout(PathBuf, Duration),
    #[error("{0}: cannot serve Nix's gc-socket ({1})")]
    Socket(PathBuf, std::io::Error),
}

/// Nix's GC lock, held exclusively until dropped.
#[derive(Debug)]
pub struct GcLock {
    _file: std::fs::File,
}

/// Takes `$NIX_STATE_DIR/gc.lock` with an exclusive `flock` (what Nix 2.8's
/// `lockFile` uses), waiting at most `timeout` and saying once on stderr
/// that it waits.
pub fn take_gc_lock(state_dir: &Path, timeout: Duration) -> Result<GcLock, ProtocolError> {
    let path = state_dir.join("gc.lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .read(true)
        .write(true)
        .open(&path)
        .map_err(|e| ProtocolError::Lock(path.clone(), e))?;
    let start = Instant::now();
    let mut told = false;
    loop {
        match crate::flock::try_lock_exclusive(&file) {
            Ok(true) => return Ok(GcLock { _file: file }),
            Ok(false) => {}
            Err(e) => return Err(ProtocolError::Lock(path, e)),
        }
        if start.elapsed() >= timeout {
            return Err(ProtocolError::LockTimeout(path, timeout));
        }
        if !told {
            eprintln!("storegc: waiting for Nix's GC lock {}...", path.display());
            told = true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The hash parts clients registered, and the ones being deleted now.
#[derive(Debug, Default)]
pub struct TempRoots {
    state: Mutex<RootState>,
    done: Condvar,
}

#[derive(Debug, Default)]
pub struct RootState {
    pub roots: HashSet<String>,
    pub pending: HashSet<String>,
}

impl TempRoots {
    /// The state, for a check-then-mark-pending step done atomically.
    pub fn lock(&self) -> MutexGuard<'_, RootState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registers a client's root: waits while it is pending, then adds it.
    pub fn add(&self, hash: &str) {
        let mut s = self.lock();
        while s.pending.contains(hash) {
            s = self.done.wait(s).unwrap_or_else(|p| p.into_inner());
        }
        s.roots.insert(hash.to_string());
    }

    /// The pending deletions finished (files gone): wakes waiting clients.
    pub fn finish_pending(&self) {
        self.lock().pending.clear();
        self.done.notify_all();
    }
}

/// The running gc-socket server; stops and removes the socket when dropped.
pub struct Server {
    path: PathBuf,
    /// `path`, or when that is too long for a socket address, the same
    /// socket through `/proc/self/fd/<dir>/socket` (see [`short_path`]).
    addr: PathBuf,
    _dir: Option<std::fs::File>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub roots: Arc<TempRoots>,
}

/// Creates `$NIX_STATE_DIR/gc-socket/socket` (mode 0666, replacing a stale
/// one) and serves it in a thread, one thread per client.
pub fn serve(state_dir: &Path, store_dir: &str) -> Result<Server, ProtocolError> {
    let dir = state_dir.join("gc-socket");
    let path = dir.join("socket");
    let err = |e| ProtocolError::Socket(path.clone(), e);
    std::fs::create_dir_all(&dir).map_err(err)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(err(e)),
        _ => {}
    }
    let (addr, dir_fd) = short_path(&dir, &path).map_err(err)?;
    let listener = UnixListener::bind(&addr).map_err(err)?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666)).map_err(err)?;
    let roots = Arc::new(TempRoots::default());
    let stop = Arc::new(AtomicBool::new(false));
    let (r, s, store) = (Arc::clone(&roots), Arc::clone(&stop), store_dir.to_string());
    let thread = std::thread::spawn(move || accept_loop(listener, &r, &s, &store));
    Ok(Server {
        path,
        addr,
        _dir: dir_fd,
        stop,
        thread: Some(thread),
        roots,
    })
}

/// A socket address is at most 107 bytes; Nix binds a longer path from
/// inside its folder. The same folder reached through an open descriptor,
/// `/proc/self/fd/<fd>/socket`, is short whatever the state dir.
fn short_path(dir: &Path, path: &Path) -> std::io::Result<(PathBuf, Option<std::fs::File>)> {
    if path.as_os_str().len() < 100 {
        return Ok((path.to_path_buf(), None));
    }
    let d = std::fs::File::open(dir)?;
    let name = path.file_name().unwrap_or_default().to_string_lossy();
    let short = PathBuf::from(format!("/proc/self/fd/{}/{name}", d.as_raw_fd()));
    Ok((short, Some(d)))
}

fn accept_loop(listener: UnixListener, roots: &Arc<TempRoots>, stop: &AtomicBool, store: &str) {
    for conn in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(conn) = conn else { continue };
        let (r, store) = (Arc::clone(roots), store.to_string());
        std::thread::spawn(move || serve_client(conn, &r, &store));
    }
}

/// One client: a root per line, answered `1` each. A line that is not a
/// store path ends the connection (Nix logs and drops it too).
fn serve_client(conn: UnixStream, roots: &TempRoots, store: &str) {
    let Ok(mut out) = conn.try_clone() else {
        return;
    };
    for line in BufReader::new(conn).lines() {
        let Ok(line) = line else { return };
        let Some(hash) = hash_part(&line, store) else {
            tracing::warn!(%line, "gc-socket client sent a path outside the store");
            return;
        };
        roots.add(hash);
        tracing::debug!(%hash, "temp root from the gc-socket");
        if out.write_all(b"1").is_err() {
            return;
        }
    }
}

/// `<store>/<hash>-name[/...]` to its hash part.
fn hash_part<'a>(path: &'a str, store: &str) -> Option<&'a str> {
    let rest = path.strip_prefix(store)?.strip_prefix('/')?;
    let base = rest.split('/').next()?;
    let hash = base.split('-').next()?;
    (hash.len() == 32 && base.len() > 33).then_some(hash)
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag.
        let _ = UnixStream::connect(&self.addr);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    fn ask(sock: &Path, path: &str) -> u8 {
        let mut c = UnixStream::connect(sock).unwrap();
        c.write_all(format!("{path}\n").as_bytes()).unwrap();
        let mut b = [0u8];
        c.read_exact(&mut b).unwrap();
        b[0]
    }

    #[test]
    fn a_client_root_is_added_before_the_answer() {
        let t = tempfile::tempdir().unwrap();
        let server = serve(t.path(), "/s/store").unwrap();
        let sock = t.path().join("gc-socket/socket");
        let mode = std::fs::metadata(&sock).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o666);
        let p = format!("/s/store/{H}-hello/bin/x");
        let got = std::thread::spawn(move || ask(&sock, &p)).join().unwrap();
        assert_eq!(got, b'1');
        assert!(server.roots.lock().roots.contains(H));
    }

    #[test]
    fn a_pending_root_is_answered_only_after_the_deletion() {
        let t = tempfile::tempdir().unwrap();
        let server = serve(t.path(), "/s/store").unwrap();
        server.roots.lock().pending.insert(H.to_string());
        let sock = t.path().join("gc-socket/socket");
        let (tx, rx) = std::sync::mpsc::channel();
        let client = std::thread::spawn(move || {
            tx.send(ask(&sock, &format!("/s/store/{H}-hello"))).unwrap()
        });
        assert!(
            rx.recv_timeout(Duration::from_millis(300)).is_err(),
            "answered while pending"
        );
        assert!(!server.roots.lock().roots.contains(H));
        server.roots.finish_pending();
        assert_eq!(rx.recv_timeout(Duration::from_secs(5)).unwrap(), b'1');
        client.join().unwrap();
        assert!(server.roots.lock().roots.contains(H));
    }

    #[test]
    fn the_lock_times_out_while_held_and_is_taken_once_free() {
        let t = tempfile::tempdir().unwrap();
        let held = take_gc_lock(t.path(), Duration::ZERO).unwrap();
        let e = take_gc_lock(t.path(), Duration::from_millis(100)).unwrap_err();
        assert!(matches!(e, ProtocolError::LockTimeout(..)), "{e}");
        drop(held);
        take_gc_lock(t.path(), Duration::ZERO).unwrap();
    }

    /// Pins a bug: a state dir deeper than a socket address can name made
    /// the engine refuse to start ("path must be shorter than SUN_LEN").
    #[test]
    fn a_socket_path_longer_than_a_socket_address_is_served() {
        let t = tempfile::tempdir().unwrap();
        let state = t.path().join("s".repeat(120));
        let server = serve(&state, "/s/store").unwrap();
        let sock = state.join("gc-socket/socket");
        assert!(sock.as_os_str().len() > 108 && sock.exists());
        let short = server.addr.clone();
        let p = format!("/s/store/{H}-hello");
        let got = std::thread::spawn(move || ask(&short, &p)).join().unwrap();
        assert_eq!(got, b'1');
        assert!(server.roots.lock().roots.contains(H));
        drop(server);
        assert!(!sock.exists());
    }

    #[test]
    fn hash_parts_of_store_paths_only() {
        assert_eq!(hash_part(&format!("/s/store/{H}-a/b"), "/s/store"), Some(H));
        assert_eq!(hash_part(&format!("/s/other/{H}-a"), "/s/store"), None);
        assert_eq!(hash_part("/s/store/short-a", "/s/store"), None);
    }
}
