//! A read-only store made writable, as Nix does (`makeStoreWritable` in
//! `local-store.cc`, and `nix`'s `main` entering a private mount namespace
//! first): NixOS mounts `/nix/store` as a read-only bind mount, so when
//! `statvfs` says the store is read-only the engine moves into a private
//! mount namespace (`unshare(CLONE_NEWNS)`), makes every mount in it
//! private (nothing it does propagates back to the host), and remounts the
//! store's bind mount read-write there. Only this process (and the threads
//! it starts afterwards) sees the writable store; it needs
//! `CAP_SYS_ADMIN`.
//!
//! A mount namespace belongs to a thread: the calling thread moves, the
//! threads that exist already do not. The engine calls this first, on the
//! thread that removes rows and sweeps, and starts its file-removal pool
//! after it.

use std::ffi::CString;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("{0}: the store is read-only and cannot be made writable: {1} ({2}; needs CAP_SYS_ADMIN, as Nix does)")]
    Remount(PathBuf, &'static str, std::io::Error),
    #[error("{0}: the store is read-only, also after remounting its bind mount read-write (a read-only filesystem)")]
    StillReadOnly(PathBuf),
}

/// Whether the filesystem holding `dir` is mounted read-only. An error
/// reading it counts as writable (the deletions will say what is wrong).
pub fn read_only(dir: &Path) -> bool {
    let Ok(c) = CString::new(dir.as_os_str().as_encoded_bytes()) else {
        return false;
    };
    // SAFETY: statvfs into a zeroed struct we own.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    unsafe { libc::statvfs(c.as_ptr(), &mut st) == 0 && st.f_flag & libc::ST_RDONLY != 0 }
}

/// Makes `store` writable for this thread (see the module doc); a no-op
/// when it is writable. Returns whether it remounted.
pub fn make_store_writable(store: &Path) -> Result<bool, MountError> {
    if !read_only(store) {
        return Ok(false);
    }
    let fail = |what, e| MountError::Remount(store.to_path_buf(), what, e);
    let target = CString::new(store.as_os_str().as_encoded_bytes())
        .map_err(|e| fail("a NUL in the path", std::io::Error::other(e)))?;
    let none = c"none";
    // SAFETY: plain syscalls with valid C strings.
    unsafe {
        if libc::unshare(libc::CLONE_NEWNS) != 0 {
            return Err(fail(
                "unshare(CLONE_NEWNS)",
                std::io::Error::last_os_error(),
            ));
        }
        let root = c"/";
        let flags = libc::MS_REC | libc::MS_PRIVATE;
        if libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return Err(fail(
                "making mounts private",
                std::io::Error::last_os_error(),
            ));
        }
        let flags = libc::MS_REMOUNT | libc::MS_BIND;
        if libc::mount(
            std::ptr::null(),
            target.as_ptr(),
            none.as_ptr(),
            flags,
            std::ptr::null(),
        ) != 0
        {
            return Err(fail(
                "remounting read-write",
                std::io::Error::last_os_error(),
            ));
        }
    }
    if read_only(store) {
        return Err(MountError::StillReadOnly(store.to_path_buf()));
    }
    tracing::info!(store = %store.display(), "remounted the store read-write in a private mount namespace");
    Ok(true)
}
