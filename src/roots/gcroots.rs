//! Roots registered on disk: everything under `$NIX_STATE_DIR/gcroots` and
//! `$NIX_STATE_DIR/profiles`, found the way Nix 2.8's `findRoots` finds
//! them, so that storegc never considers dead a path Nix would keep.
//!
//! The walk follows Nix exactly:
//! - entries are typed with `lstat` semantics (the `d_type` of the
//!   directory entry), so a symlink to a directory is a link, never a
//!   directory to descend into;
//! - a link whose text is in the store (compared as text, as Nix's
//!   `isInStore` does; a relative text never is) roots the store path it
//!   lies in, sub-path or not, existing or not;
//! - any other link is an indirect root: its target, made absolute against
//!   the link's folder and normalised lexically, must itself be a symlink
//!   whose text is in the store. One hop only. A missing target is stale
//!   and ignored (Nix would remove it under `gcroots/auto`; this scan only
//!   reads), a target that is not a symlink is ignored;
//! - a regular file whose name is a store path basename roots that path;
//! - things vanishing mid-walk (`ENOENT`, `ENOTDIR`) are skipped.
//!
//! Unlike Nix, permission denied is an error ([`RootsError::Unreadable`]):
//! a root that cannot be read cannot be honoured.

use std::ffi::OsStr;
use std::fs::{self, FileType};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use super::{errno_is, in_store, store_path_in, Root, RootKind, RootsError};
use crate::store_path::{parse_basename, StoreDir};

/// Errors Nix's `findRoots` treats as "the entry went away".
const VANISHED: &[i32] = &[libc::ENOENT, libc::ENOTDIR];

/// Finds the roots under `state_dir/gcroots` (kind [`RootKind::Gcroot`],
/// or [`RootKind::Indirect`] for indirect links) and `state_dir/profiles`
/// ([`RootKind::Profile`], or `Indirect`). Candidates only: targets are
/// not checked for validity (see [`super::resolve`]). Missing directories
/// yield no roots. Read-only.
///
/// Cost: one `readdir` per directory and one `lstat`/`readlink` per entry,
/// plus one `lstat` and at most one `readlink` per indirect link; O(n log n)
/// to sort the n roots found.
///
/// # Errors
/// [`RootsError::Unreadable`] on permission denied anywhere in the walk
/// (including the target of an indirect link); [`RootsError::Scan`] on any
/// other I/O error than a vanished entry.
pub fn find(store_dir: &StoreDir, dir: &Path) -> Result<Vec<Root>, RootsError> {
    let state_dir = canonical_state_dir(dir);
    let mut walk = Walk {
        store_dir,
        kind: RootKind::Gcroot,
        roots: Vec::new(),
    };
    walk.scan(state_dir.join("gcroots"), None)?;
    walk.kind = RootKind::Profile;
    walk.scan(state_dir.join("profiles"), None)?;
    let mut roots = walk.roots;
    roots.sort();
    roots.dedup();
    Ok(roots)
}

/// `dir` made absolute and normalised lexically, as Nix canonicalises its
/// state dir, so that links read as `nix-store --gc --print-roots` prints
/// them. No symlink is resolved. O(len(dir)); reads the working directory
/// only when `dir` is relative.
pub(crate) fn canonical_state_dir(dir: &Path) -> PathBuf {
    let abs = std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf());
    PathBuf::from(OsStr::from_bytes(&canon_path(abs.as_os_str().as_bytes())))
}

/// Lexical normalisation of an absolute path as Nix's `canonPath` does it
/// without resolving symlinks: repeated slashes and `.` dropped, `..`
/// removes the previous component (none above `/`), no trailing slash.
/// O(len(path)).
fn canon_path(path: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(path.len() + 1);
    for comp in path.split(|&c| c == b'/') {
        match comp {
            b"" | b"." => {}
            b".." => {
                if let Some(i) = out.iter().rposition(|&c| c == b'/') {
                    out.truncate(i);
                }
            }
            _ => {
                out.push(b'/');
                out.extend_from_slice(comp);
            }
        }
    }
    if out.is_empty() {
        out.push(b'/');
    }
    out
}

/// What `link`'s text points to, made absolute against `link`'s folder and
/// normalised (Nix's `absPath(target, dirOf(link))`). O(len).
fn absolute_target(link: &Path, text: &[u8]) -> PathBuf {
    let joined = if text.first() == Some(&b'/') {
        text.to_vec()
    } else {
        let folder = link.parent().unwrap_or(Path::new("/"));
        let mut joined = folder.as_os_str().as_bytes().to_vec();
        joined.push(b'/');
        joined.extend_from_slice(text);
        joined
    };
    PathBuf::from(OsStr::from_bytes(&canon_path(&joined)))
}

/// An I/O failure during the walk, with the path it happened at.
type Failure = (PathBuf, std::io::Error);

/// The state of one walk: where the store is, what kind of root direct
/// entries make, and the roots found so far.
struct Walk<'a> {
    store_dir: &'a StoreDir,
    kind: RootKind,
    roots: Vec<Root>,
}

impl Walk<'_> {
    /// Scans `path` (of type `ty`, or unknown) and, for a directory, its
    /// entries recursively. A vanished entry drops only itself (and its
    /// subtree), as each of Nix's recursive calls catches its own errors.
    /// Cost: see [`find`]; recursion depth is the directory depth.
    fn scan(&mut self, path: PathBuf, ty: Option<FileType>) -> Result<(), RootsError> {
        let children = match self.visit(&path, ty) {
            Ok(children) => children,
            Err((_, err)) if errno_is(&err, VANISHED) => return Ok(()),
            Err((at, err)) => return Err(RootsError::io(at, err)),
        };
        for (child, ty) in children {
            self.scan(child, ty)?;
        }
        Ok(())
    }

    /// Handles one entry: records the roots it makes, and returns the
    /// entries to descend into when it is a directory. Directory entries
    /// are listed in full before any is visited, as Nix does. O(entries).
    fn visit(
        &mut self,
        path: &Path,
        ty: Option<FileType>,
    ) -> Result<Vec<(PathBuf, Option<FileType>)>, Failure> {
        let at = |err| (path.to_path_buf(), err);
        let ty = match ty {
            Some(ty) => ty,
            None => fs::symlink_metadata(path).map_err(at)?.file_type(),
        };
        if ty.is_dir() {
            let mut children = Vec::new();
            for entry in fs::read_dir(path).map_err(at)? {
                let entry = entry.map_err(at)?;
                // An unknown type is looked up (lstat) when the entry is
                // visited, so a failure there drops the entry only.
                children.push((entry.path(), entry.file_type().ok()));
            }
            return Ok(children);
        }
        if ty.is_symlink() {
            self.visit_link(path)?;
        } else if ty.is_file() {
            let name = path.file_name().map(OsStrExt::as_bytes).unwrap_or(b"");
            if let Some(base) = std::str::from_utf8(name)
                .ok()
                .filter(|b| parse_basename(b).is_ok())
            {
                self.push(path, self.store_dir.join(base), self.kind, None);
            }
        }
        Ok(Vec::new())
    }

    /// A symlink: a direct root when its text is in the store, else an
    /// indirect one followed for one hop. Cost: one `readlink`, plus one
    /// `lstat` and one `readlink` for an indirect link.
    fn visit_link(&mut self, link: &Path) -> Result<(), Failure> {
        let text = fs::read_link(link).map_err(|e| (link.to_path_buf(), e))?;
        let text = text.as_os_str().as_bytes();
        if in_store(self.store_dir, text) {
            // In the store but not a valid store path: ignored, like Nix's
            // `BadStorePath`; such a link is never followed further.
            if let Some(target) = store_path_in(self.store_dir, text) {
                self.push(link, target, self.kind, None);
            }
            return Ok(());
        }
        let outer = absolute_target(link, text);
        let at = |err| (outer.clone(), err);
        let meta = match fs::symlink_metadata(&outer) {
            // Stale: Nix removes it under gcroots/auto; we only read.
            Err(err) if errno_is(&err, VANISHED) => return Ok(()),
            other => other.map_err(at)?,
        };
        if !meta.file_type().is_symlink() {
            return Ok(());
        }
        let text2 = fs::read_link(&outer).map_err(at)?;
        if let Some(target) = store_path_in(self.store_dir, text2.as_os_str().as_bytes()) {
            let via = link.to_string_lossy().into_owned();
            self.push(&outer, target, RootKind::Indirect, Some(via));
        }
        Ok(())
    }

    /// Records one root. O(len(link)).
    fn push(&mut self, link: &Path, target: String, kind: RootKind, via: Option<String>) {
        self.roots.push(Root {
            link: link.to_string_lossy().into_owned(),
            target,
            kind,
            via,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{symlink, PermissionsExt};

    const H1: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const H2: &str = "11111111111111111111111111111111";
    const H3: &str = "22222222222222222222222222222222";
    const H4: &str = "33333333333333333333333333333333";
    const H5: &str = "44444444444444444444444444444444";
    const H6: &str = "55555555555555555555555555555555";
    const H7: &str = "66666666666666666666666666666666";

    struct Fixture {
        _tmp: tempfile::TempDir,
        root: String,
        store: StoreDir,
        state: PathBuf,
    }

    fn fixture() -> Fixture {
        let tmp = tempfile::tempdir().unwrap();
        let root = canonical_state_dir(tmp.path())
            .to_string_lossy()
            .into_owned();
        let store = StoreDir::new(format!("{root}/store"));
        let state = PathBuf::from(format!("{root}/state"));
        fs::create_dir_all(store.as_str()).unwrap();
        fs::create_dir_all(state.join("gcroots/auto")).unwrap();
        fs::create_dir_all(state.join("profiles")).unwrap();
        fs::create_dir_all(format!("{root}/home")).unwrap();
        Fixture {
            _tmp: tmp,
            root,
            store,
            state,
        }
    }

    fn root(link: String, target: String, kind: RootKind, via: Option<String>) -> Root {
        Root {
            link,
            target,
            kind,
            via,
        }
    }

    #[test]
    fn finds_every_kind_of_gcroot() {
        let f = fixture();
        let (st, gc, home) = (
            f.store.as_str(),
            format!("{}/gcroots", f.state.display()),
            format!("{}/home", f.root),
        );
        let p = |h: &str, n: &str| format!("{st}/{h}-{n}");
        fs::create_dir_all(p(H1, "direct")).unwrap();

        // Direct link.
        symlink(p(H1, "direct"), format!("{gc}/direct")).unwrap();
        // Sub-path link; the sub-path does not exist.
        symlink(format!("{}/bin/tool", p(H2, "sub")), format!("{gc}/sub")).unwrap();
        // Nested directories.
        fs::create_dir_all(format!("{gc}/a/b/c")).unwrap();
        symlink(p(H3, "nested"), format!("{gc}/a/b/c/deep")).unwrap();
        // Regular file named like a store path, and one that is not.
        fs::write(format!("{gc}/a/{H4}-file"), "").unwrap();
        fs::write(format!("{gc}/a/not-a-store-path"), "").unwrap();
        // Indirect, good.
        symlink(p(H5, "indirect"), format!("{home}/result")).unwrap();
        symlink(format!("{home}/result"), format!("{gc}/auto/good")).unwrap();
        // Indirect via a relative, non-canonical text.
        symlink("../../../home/./result", format!("{gc}/auto/relative")).unwrap();
        // Indirect, stale: must be ignored and left in place.
        symlink(format!("{home}/gone"), format!("{gc}/auto/stale")).unwrap();
        // Indirect to a non-link.
        fs::write(format!("{home}/plain"), "").unwrap();
        symlink(format!("{home}/plain"), format!("{gc}/auto/nonlink")).unwrap();
        // Two hops: hop1 -> hop2 -> store; not followed.
        symlink(p(H6, "twohop"), format!("{home}/hop2")).unwrap();
        symlink(format!("{home}/hop2"), format!("{home}/hop1")).unwrap();
        symlink(format!("{home}/hop1"), format!("{gc}/auto/twohop")).unwrap();
        // Relative text into the store: not in the store as text, and the
        // store path it reaches is not a symlink, so no root (as in Nix).
        fs::create_dir_all(p(H7, "rel")).unwrap();
        let rel = format!("../../store/{H7}-rel");
        symlink(&rel, format!("{gc}/rel")).unwrap();
        // In the store but a bad basename: ignored.
        symlink(format!("{st}/not-a-path"), format!("{gc}/bad")).unwrap();
        symlink(format!("{st}/{H1}-x\n"), format!("{gc}/newline")).unwrap();
        // A symlinked directory full of roots is not descended into.
        fs::create_dir_all(format!("{home}/more")).unwrap();
        symlink(p(H1, "hidden"), format!("{home}/more/r")).unwrap();
        symlink(format!("{home}/more"), format!("{gc}/linked-dir")).unwrap();

        let roots = find(&f.store, &f.state).unwrap();
        let mut want = vec![
            root(
                format!("{gc}/direct"),
                p(H1, "direct"),
                RootKind::Gcroot,
                None,
            ),
            root(format!("{gc}/sub"), p(H2, "sub"), RootKind::Gcroot, None),
            root(
                format!("{gc}/a/b/c/deep"),
                p(H3, "nested"),
                RootKind::Gcroot,
                None,
            ),
            root(
                format!("{gc}/a/{H4}-file"),
                p(H4, "file"),
                RootKind::Gcroot,
                None,
            ),
            root(
                format!("{home}/result"),
                p(H5, "indirect"),
                RootKind::Indirect,
                Some(format!("{gc}/auto/good")),
            ),
            root(
                format!("{home}/result"),
                p(H5, "indirect"),
                RootKind::Indirect,
                Some(format!("{gc}/auto/relative")),
            ),
        ];
        want.sort();
        assert_eq!(roots, want);
        // Nothing was removed.
        assert!(fs::symlink_metadata(format!("{gc}/auto/stale")).is_ok());
    }

    #[test]
    fn profiles_are_profile_roots_and_relative_generation_links_indirect() {
        let f = fixture();
        let prof = format!("{}/profiles", f.state.display());
        let target = format!("{}/{H1}-env", f.store);
        fs::create_dir_all(format!("{prof}/per-user/u")).unwrap();
        symlink(&target, format!("{prof}/per-user/u/profile-3-link")).unwrap();
        symlink("profile-3-link", format!("{prof}/per-user/u/profile")).unwrap();
        let roots = find(&f.store, &f.state).unwrap();
        let gen = format!("{prof}/per-user/u/profile-3-link");
        let mut want = vec![
            root(gen.clone(), target.clone(), RootKind::Profile, None),
            root(
                gen,
                target,
                RootKind::Indirect,
                Some(format!("{prof}/per-user/u/profile")),
            ),
        ];
        want.sort();
        assert_eq!(roots, want);
    }

    #[test]
    fn store_path_that_is_a_symlink_is_followed_as_an_indirect_target() {
        // Nix resolves a relative link to `<store>/<h>-link`; when that
        // store path is itself a symlink into the store, its target roots.
        let f = fixture();
        let gc = format!("{}/gcroots", f.state.display());
        let inner = format!("{}/{H2}-inner", f.store);
        let outer = format!("{}/{H1}-link", f.store);
        symlink(&inner, &outer).unwrap();
        symlink(format!("../../store/{H1}-link"), format!("{gc}/rel")).unwrap();
        let roots = find(&f.store, &f.state).unwrap();
        assert_eq!(
            roots,
            vec![root(
                outer,
                inner,
                RootKind::Indirect,
                Some(format!("{gc}/rel"))
            )]
        );
    }

    #[test]
    fn missing_state_dirs_yield_no_roots() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new("/nix/store");
        assert_eq!(find(&store, &tmp.path().join("none")).unwrap(), vec![]);
    }

    #[test]
    fn gcroots_that_is_itself_a_symlink_is_not_descended_into() {
        // Nix lstat()s `gcroots` itself: a symlink there is a (useless)
        // indirect link, never a directory to walk.
        let f = fixture();
        let elsewhere = format!("{}/elsewhere", f.root);
        fs::create_dir_all(&elsewhere).unwrap();
        symlink(format!("{}/{H1}-x", f.store), format!("{elsewhere}/r")).unwrap();
        fs::remove_dir_all(f.state.join("gcroots")).unwrap();
        symlink(&elsewhere, f.state.join("gcroots")).unwrap();
        assert_eq!(find(&f.store, &f.state).unwrap(), vec![]);
    }

    #[test]
    fn permission_denied_is_an_error_naming_the_path() {
        let f = fixture();
        let locked = f.state.join("gcroots/locked");
        fs::create_dir_all(&locked).unwrap();
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o000)).unwrap();
        let res = find(&f.store, &f.state);
        fs::set_permissions(&locked, fs::Permissions::from_mode(0o755)).unwrap();
        // root bypasses permissions: nothing to check then; the same case
        // runs as `nobody` through the binary in tests/bad_input.rs
        // (unreadable_gcroots_folder).
        if unsafe { libc::geteuid() } == 0 {
            return;
        }
        match res {
            Err(RootsError::Unreadable(path, _)) => assert_eq!(path, locked),
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }

    #[test]
    fn unreadable_indirect_target_is_an_error() {
        // Nix ignores EACCES from pathExists(target); we refuse to plan.
        let f = fixture();
        let private = format!("{}/home/private", f.root);
        fs::create_dir_all(&private).unwrap();
        symlink(format!("{}/{H1}-x", f.store), format!("{private}/result")).unwrap();
        symlink(format!("{private}/result"), f.state.join("gcroots/auto/p")).unwrap();
        fs::set_permissions(&private, fs::Permissions::from_mode(0o000)).unwrap();
        let res = find(&f.store, &f.state);
        fs::set_permissions(&private, fs::Permissions::from_mode(0o755)).unwrap();
        // As root (which reads it): tests/bad_input.rs runs this case as
        // `nobody` (unreadable_indirect_root_target).
        if unsafe { libc::geteuid() } == 0 {
            assert_eq!(res.unwrap().len(), 1);
            return;
        }
        match res {
            Err(RootsError::Unreadable(path, _)) => {
                assert_eq!(path, PathBuf::from(format!("{private}/result")))
            }
            other => panic!("expected Unreadable, got {other:?}"),
        }
    }

    #[test]
    fn canon_path_matches_nix_canon_path() {
        for (input, want) in [
            ("/", "/"),
            ("//a//b/", "/a/b"),
            ("/a/./b/../c", "/a/c"),
            ("/../..", "/"),
            ("/a/b/../../..", "/"),
            ("/a/..b/.c", "/a/..b/.c"),
        ] {
            assert_eq!(canon_path(input.as_bytes()), want.as_bytes(), "{input}");
        }
        assert_eq!(
            absolute_target(Path::new("/s/gcroots/auto/x"), b"../../../home/r"),
            PathBuf::from("/home/r")
        );
    }
}
