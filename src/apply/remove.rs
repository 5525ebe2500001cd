//! Removing the roots a plan expired: only what a fresh root scan still
//! finds, of the kind the plan names, and only through directory handles.
//!
//! A plan is a file anyone with write access to the report folder can edit,
//! so nothing in it is trusted: a link is removed only if
//! - its path is lexically canonical (absolute; no `.`, `..`, `//` or
//!   trailing slash), and
//! - it is an entry directly in `$NIX_STATE_DIR/gcroots/auto` (an auto
//!   root), or a `<profile>-<N>-link` in its profile's own folder that is
//!   not the profile's current generation (a generation), and
//! - the scan made just before removal found it as a root holding the
//!   store path the plan names, and it still reads what the plan saw.
//!
//! The removal opens every folder from `/` down with `O_NOFOLLOW`, then
//! `unlinkat`s the entry in the last one, so a folder swapped for a symlink
//! meanwhile is not followed.

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::plan::{ExpiredKind, ExpiredRoot};
use crate::roots::{Root, RootKind};
use crate::store_path::StoreDir;

/// Why a path is not lexically canonical, if it is not. O(len).
pub fn not_canonical(path: &str) -> Option<&'static str> {
    let Some(rest) = path.strip_prefix('/') else {
        return Some("not an absolute path");
    };
    if rest.is_empty() {
        return Some("is the root folder");
    }
    for comp in rest.split('/') {
        match comp {
            "" if path.ends_with('/') => return Some("has a trailing slash"),
            "" => return Some("has an empty component (//)"),
            "." => return Some("has a '.' component"),
            ".." => return Some("has a '..' component"),
            _ => {}
        }
    }
    None
}

/// `(folder, name)` of a canonical path. O(len).
fn split(path: &str) -> (&str, &str) {
    let i = path.rfind('/').unwrap_or(0);
    (if i == 0 { "/" } else { &path[..i] }, &path[i + 1..])
}

/// Whether `name` is `<profile>-<N>-link` for decimal `N`. O(len).
fn is_generation_name(name: &str, profile: &str) -> bool {
    name.strip_prefix(profile)
        .and_then(|r| r.strip_prefix('-'))
        .and_then(|r| r.strip_suffix("-link"))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

/// Whether the link still reads what the plan saw (for a clear reason in
/// the report; the removal checks again through its folder handle).
pub fn confirm_points_to(e: &ExpiredRoot) -> Result<(), String> {
    match std::fs::read_link(&e.link) {
        Ok(t) if t.as_os_str().as_bytes() == e.points_to.as_bytes() => Ok(()),
        Ok(t) => Err(format!(
            "now points to {} (planned: {})",
            t.display(),
            e.points_to
        )),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Err("gone already".into()),
        Err(err) => Err(format!("cannot read link: {err}")),
    }
}

/// Checks an expired root against the plan's rules and the roots found by
/// a fresh scan (`roots`), before anything is read from disk. `state_dir`
/// is the canonical state dir the scan used. Pure; O(r).
pub fn confirm_planned(
    e: &ExpiredRoot,
    state_dir: &str,
    store_dir: &StoreDir,
    roots: &[Root],
) -> Result<(), String> {
    if let Some(why) = not_canonical(&e.link) {
        return Err(format!("not removed: the path {why}"));
    }
    if store_dir
        .store_path_of(&e.target)
        .map(|b| store_dir.join(b))
        != Ok(e.target.clone())
    {
        return Err(format!(
            "not removed: target {} is not a store path",
            e.target
        ));
    }
    let (folder, name) = split(&e.link);
    let found = match e.kind {
        ExpiredKind::AutoRoot => {
            if folder != format!("{state_dir}/gcroots/auto") {
                return Err(format!(
                    "not removed: an auto root must be directly in {state_dir}/gcroots/auto"
                ));
            }
            roots.iter().any(|r| {
                r.target == e.target
                    && (r.via.as_deref() == Some(e.link.as_str())
                        || (r.link == e.link && r.kind == RootKind::Gcroot))
            })
        }
        ExpiredKind::Generation => {
            let Some(profile) = &e.profile else {
                return Err("not removed: generation without its profile in the plan".into());
            };
            if let Some(why) = not_canonical(profile) {
                return Err(format!("not removed: the profile path {why}"));
            }
            let (pfolder, pname) = split(profile);
            if pfolder != folder || !is_generation_name(name, pname) {
                return Err(format!(
                    "not removed: not a generation link ({pname}-<N>-link) of profile {profile}"
                ));
            }
            roots
                .iter()
                .any(|r| r.link == e.link && r.target == e.target && r.kind != RootKind::Temp)
        }
    };
    if !found {
        return Err(format!(
            "not removed: a fresh root scan does not find it holding {}",
            e.target
        ));
    }
    Ok(())
}

/// Reads the disk for what [`confirm_planned`] cannot see: a generation
/// must not be its profile's current one, an auto root's outer link must
/// still hold the planned store path. O(1) syscalls.
pub fn confirm_on_disk(e: &ExpiredRoot, store_dir: &StoreDir) -> Result<(), String> {
    match e.kind {
        ExpiredKind::Generation => {
            let profile = e.profile.as_deref().unwrap_or("");
            let current = std::fs::read_link(profile)
                .map_err(|err| format!("cannot read profile {profile}: {err}"))?;
            let current = current.as_os_str().as_bytes();
            let (folder, name) = split(&e.link);
            let abs = if current.first() == Some(&b'/') {
                current.to_vec()
            } else {
                [folder.as_bytes(), b"/", current].concat()
            };
            // Conservative: the same name anywhere counts as current.
            let cur_name = current.rsplit(|&c| c == b'/').next().unwrap_or(b"");
            if abs == e.link.as_bytes() || cur_name == name.as_bytes() {
                return Err("it is the profile's current generation".into());
            }
        }
        ExpiredKind::AutoRoot => {
            // The entry's text is the outer link's path, which a rebuild
            // (`nix-build -o result` again) keeps: the outer link must still
            // hold the store path the plan saw.
            let now = std::fs::read_link(&e.points_to)
                .map_err(|err| format!("cannot read {}: {err}", e.points_to))?;
            let held = now.to_str().and_then(|t| store_dir.store_path_of(t).ok());
            let planned = store_dir.store_path_of(&e.target).ok();
            if held.is_none() || held != planned {
                return Err(format!(
                    "{} now points to {} (planned: {})",
                    e.points_to,
                    now.display(),
                    e.target
                ));
            }
        }
    }
    Ok(())
}

/// Opens the folder `path` (canonical) by walking from `/` with
/// `O_NOFOLLOW` at every step. O(depth) syscalls.
fn open_dir_nofollow(path: &str) -> std::io::Result<OwnedFd> {
    let open = |dir: Option<&OwnedFd>, name: &str| -> std::io::Result<OwnedFd> {
        let c = CString::new(name).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        let flags = libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC;
        let at = dir.map_or(libc::AT_FDCWD, |d| d.as_raw_fd());
        // SAFETY: c is a valid C string; at is AT_FDCWD or an fd we own.
        let fd = unsafe { libc::openat(at, c.as_ptr(), flags) };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd was just returned by openat and is owned by no one else.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let mut dir = open(None, "/")?;
    for comp in path.split('/').filter(|c| !c.is_empty()) {
        dir = open(Some(&dir), comp)?;
    }
    Ok(dir)
}

/// Removes the link `path` (canonical) if it still reads `points_to`,
/// through a handle on its folder. `Ok(false)`: it was gone already.
pub fn remove_link(path: &str, points_to: &str) -> Result<bool, String> {
    let (folder, name) = split(path);
    let dir = open_dir_nofollow(folder).map_err(|e| format!("cannot open {folder}: {e}"))?;
    let c = CString::new(name).map_err(|_| "a NUL byte in the name".to_string())?;
    let mut buf = vec![0u8; 4096];
    // SAFETY: dir is open, c a valid C string, buf writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            c.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    if n < 0 {
        let err = std::io::Error::last_os_error();
        return match err.raw_os_error() {
            Some(libc::ENOENT) => Ok(false),
            Some(libc::EINVAL) => Err("not a symbolic link".into()),
            _ => Err(format!("cannot read link: {err}")),
        };
    }
    let text = &buf[..n as usize];
    if text != points_to.as_bytes() {
        return Err(format!(
            "now points to {} (planned: {points_to})",
            Path::new(std::ffi::OsStr::from_bytes(text)).display()
        ));
    }
    // SAFETY: as above; flags 0 never removes a folder.
    if unsafe { libc::unlinkat(dir.as_raw_fd(), c.as_ptr(), 0) } != 0 {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() == Some(libc::ENOENT) {
            return Ok(false);
        }
        return Err(format!("cannot remove: {err}"));
    }
    Ok(true)
}

/// Removes (in a dry run: pretends to) the expired roots that the fresh
/// scan in `before` confirms (see [`remove`]); the others are kept and
/// reported with why. Returns the links removed.
pub fn remove_roots(
    expired: &[ExpiredRoot],
    settings: &crate::settings::Settings,
    before: &crate::load::StoreState,
    dry_run: bool,
    report: &mut super::ApplyReport,
) -> std::collections::HashSet<String> {
    let state_dir = crate::roots::gcroots::canonical_state_dir(&settings.state_dir);
    let state_dir = state_dir.to_string_lossy();
    let mut dropped = std::collections::HashSet::new();
    for e in expired {
        let checked = confirm_planned(e, &state_dir, &settings.store_dir, &before.roots)
            .or_else(|why| confirm_points_to(e).and(Err(why)))
            .and_then(|()| confirm_on_disk(e, &settings.store_dir));
        let removed = checked.and_then(|()| {
            if dry_run {
                Ok(true)
            } else {
                remove_link(&e.link, &e.points_to)
            }
        });
        match removed {
            Ok(_) => {
                dropped.insert(e.link.clone());
                report.roots_removed.push(e.link.clone());
            }
            Err(why) => report.roots_kept.push((e.link.clone(), why)),
        }
    }
    dropped
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    const T: &str = "/s/store/0123456789abcdfghijklmnpqrsvwxyz-t";

    fn gen(link: &str, profile: &str) -> ExpiredRoot {
        ExpiredRoot {
            link: link.into(),
            points_to: T.into(),
            target: T.into(),
            kind: ExpiredKind::Generation,
            profile: Some(profile.into()),
            why: String::new(),
        }
    }

    fn auto(link: &str) -> ExpiredRoot {
        ExpiredRoot {
            kind: ExpiredKind::AutoRoot,
            profile: None,
            points_to: "/home/u/result".into(),
            ..gen(link, "")
        }
    }

    fn root(link: &str, kind: RootKind, via: Option<&str>) -> Root {
        Root {
            link: link.into(),
            target: T.into(),
            kind,
            via: via.map(Into::into),
        }
    }

    #[test]
    fn only_canonical_absolute_paths() {
        assert_eq!(not_canonical("/v/gcroots/auto/x"), None);
        assert!(not_canonical("v/x").is_some());
        assert!(not_canonical("/").is_some());
        assert!(not_canonical("/v/../x").unwrap().contains(".."));
        assert!(not_canonical("/v/./x").unwrap().contains("'.'"));
        assert!(not_canonical("/v//x").unwrap().contains("//"));
        assert!(not_canonical("/v/x/").unwrap().contains("trailing"));
    }

    #[test]
    fn generation_names() {
        assert!(is_generation_name("p-12-link", "p"));
        assert!(!is_generation_name("p-link", "p"));
        assert!(!is_generation_name("p-1x-link", "p"));
        assert!(!is_generation_name("q-1-link", "p"));
        assert!(!is_generation_name("p", "p"));
    }

    #[test]
    fn confirms_only_what_the_scan_found_of_the_planned_kind() {
        let sd = StoreDir::new("/s/store");
        let state = "/v";
        let roots = vec![
            root("/v/profiles/p-1-link", RootKind::Profile, None),
            root("/v/profiles/q-3-link", RootKind::Profile, None),
            root(
                "/home/u/result",
                RootKind::Indirect,
                Some("/v/gcroots/auto/h"),
            ),
            root("/v/gcroots/auto/d", RootKind::Gcroot, None),
            root("/v/gcroots/other", RootKind::Gcroot, None),
        ];
        let ok = |e: &ExpiredRoot| confirm_planned(e, state, &sd, &roots);
        ok(&gen("/v/profiles/p-1-link", "/v/profiles/p")).unwrap();
        ok(&auto("/v/gcroots/auto/h")).unwrap();
        ok(&auto("/v/gcroots/auto/d")).unwrap();
        // Another profile's generation under p's name.
        assert!(ok(&gen("/v/profiles/q-3-link", "/v/profiles/p")).is_err());
        // The profile's own link.
        assert!(ok(&gen("/v/profiles/p", "/v/profiles/p")).is_err());
        // A generation in another folder than its profile.
        assert!(ok(&gen("/v/other/p-1-link", "/v/profiles/p")).is_err());
        // A generation listed as an auto root, a gcroot outside auto.
        assert!(ok(&auto("/v/profiles/p-1-link")).is_err());
        assert!(ok(&auto("/v/gcroots/other")).is_err());
        // Not found by the scan, or holding another path.
        assert!(ok(&gen("/v/profiles/p-2-link", "/v/profiles/p"))
            .unwrap_err()
            .contains("fresh root scan"));
        let mut e = gen("/v/profiles/p-1-link", "/v/profiles/p");
        e.target = "/s/store/11111111111111111111111111111111-u".into();
        assert!(ok(&e).is_err());
        // Anything outside the state dir, or not canonical.
        assert!(ok(&auto("/etc/gcroots/auto/h")).is_err());
        assert!(ok(&auto("/v/gcroots/auto/../auto/h")).is_err());
        assert!(ok(&gen("/v/profiles/./p-1-link", "/v/profiles/p")).is_err());
    }

    #[test]
    fn current_generation_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        let sd = StoreDir::new("/s/store");
        symlink("p-2-link", dir.path().join("p")).unwrap();
        let profile = format!("{d}/p");
        assert!(
            confirm_on_disk(&gen(&format!("{d}/p-2-link"), &profile), &sd)
                .unwrap_err()
                .contains("current")
        );
        confirm_on_disk(&gen(&format!("{d}/p-1-link"), &profile), &sd).unwrap();
    }

    #[test]
    fn removes_through_handles_and_only_what_still_reads_as_planned() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_str().unwrap();
        std::fs::create_dir(dir.path().join("real")).unwrap();
        let link = format!("{d}/real/l");
        symlink(T, &link).unwrap();
        assert!(remove_link(&link, "/elsewhere")
            .unwrap_err()
            .contains("now points"));
        // A folder on the way swapped for a symlink is not followed.
        symlink(dir.path().join("real"), dir.path().join("swapped")).unwrap();
        assert!(remove_link(&format!("{d}/swapped/l"), T).is_err());
        assert!(std::fs::symlink_metadata(&link).is_ok());
        // A regular file is not a link.
        std::fs::write(dir.path().join("real/f"), "x").unwrap();
        assert!(remove_link(&format!("{d}/real/f"), T).is_err());
        assert_eq!(remove_link(&link, T), Ok(true));
        assert!(std::fs::symlink_metadata(&link).is_err());
        assert_eq!(remove_link(&link, T), Ok(false));
    }
}
