//! Exclusive `flock(2)` locks on open files, the kind Nix's `lockFile`
//! takes (gc.lock, temp roots, a build's `.lock`): the one place storegc
//! calls `flock`. Each call retries on `EINTR` and is O(1).

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd as _;

fn flock(file: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a file descriptor we own; no memory involved.
        if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
            return Ok(());
        }
        let err = io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EINTR) {
            return Err(err);
        }
    }
}

/// Tries a non-blocking exclusive lock: `Ok(true)` when taken, `Ok(false)`
/// when another open file description holds a lock.
pub fn try_lock_exclusive(file: &File) -> io::Result<bool> {
    match flock(file, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => Ok(true),
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => Ok(false),
        Err(e) => Err(e),
    }
}

/// Takes an exclusive lock, waiting for its holder.
pub fn lock_exclusive(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_EX)
}

/// Releases a lock this file description holds.
pub fn unlock(file: &File) -> io::Result<()> {
    flock(file, libc::LOCK_UN)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_held_lock_is_refused_then_taken_once_released() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("l");
        let a = File::create(&path).unwrap();
        let b = File::open(&path).unwrap();
        lock_exclusive(&a).unwrap();
        assert!(!try_lock_exclusive(&b).unwrap());
        unlock(&a).unwrap();
        assert!(try_lock_exclusive(&b).unwrap());
        assert!(!try_lock_exclusive(&a).unwrap());
    }
}
