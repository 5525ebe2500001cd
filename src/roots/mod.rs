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
///
/// Declared so that, for one link found both directly and through another
/// link (a profile's generation, reached also via the profile link), the
/// direct kind sorts first and is the one reports name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RootKind {
    /// A link or file under `gcroots/` pointing into the store.
    Gcroot,
    /// A link or file under `profiles/`.
    Profile,
    /// A link under `gcroots/` (usually `gcroots/auto`) pointing outside the
    /// store to another link that points into the store.
    Indirect,
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

/// One root as `nix-store --gc --print-roots` counts roots: a link and the
/// store path it holds, once, with every way the scan reached it. A
/// profile's generation under `profiles/` is found directly, through the
/// profile's own link and (Nix 2.8's `nix-env -p`) through `gcroots/auto`:
/// one root, not three.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct ListedRoot {
    pub link: String,
    pub target: String,
    /// The most direct kind found ([`RootKind`]'s order).
    pub kind: RootKind,
    /// The entries that point to `link` (for indirect roots), sorted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub via: Vec<String>,
}

/// Merges roots by `(link, target)`: the first kind in [`RootKind`]'s
/// order, and every `via`. Output sorted by link and target. O(r log r).
pub fn list(roots: &[Root]) -> Vec<ListedRoot> {
    let mut sorted: Vec<&Root> = roots.iter().collect();
    sorted.sort();
    let mut out: Vec<ListedRoot> = Vec::new();
    for r in sorted {
        match out.last_mut() {
            Some(l) if l.link == r.link && l.target == r.target => {
                l.kind = l.kind.min(r.kind);
                l.via.extend(r.via.iter().cloned());
            }
            _ => out.push(ListedRoot {
                link: r.link.clone(),
                target: r.target.clone(),
                kind: r.kind,
                via: r.via.iter().cloned().collect(),
            }),
        }
    }
    for l in &mut out {
        l.via.sort();
        l.via.dedup();
    }
    out
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

/// Why a root scan stopped. Every variant names the path at fault; the
/// command layer exits 2 on any of them, since a plan built on an
/// incomplete set of roots could delete a live path.
#[derive(Debug, thiserror::Error)]
pub enum RootsError {
    /// Permission denied on a possible root. Nix's collector skips such
    /// entries (`EACCES` is one of the errors `findRoots` ignores); a tool
    /// that plans deletions must not, so the scan stops here instead.
    /// (Runtime roots are the exception: other users' processes are
    /// skipped on `EACCES`, as in Nix.)
    #[error("{0}: cannot read GC root ({1})")]
    Unreadable(PathBuf, std::io::Error),
    /// Any other I/O failure than a file vanishing mid-scan (`ENOENT`,
    /// `ENOTDIR`; for `/proc` also `ESRCH`), which Nix aborts on as well.
    #[error("{0}: cannot scan for GC roots ({1})")]
    Scan(PathBuf, std::io::Error),
}

impl RootsError {
    /// Wraps an I/O error at `path`: `EACCES` becomes [`Unreadable`],
    /// anything else [`Scan`]. O(1).
    ///
    /// [`Unreadable`]: RootsError::Unreadable
    /// [`Scan`]: RootsError::Scan
    fn io(path: impl Into<PathBuf>, err: std::io::Error) -> RootsError {
        if err.raw_os_error() == Some(libc::EACCES) {
            RootsError::Unreadable(path.into(), err)
        } else {
            RootsError::Scan(path.into(), err)
        }
    }
}

/// Whether `err` carries one of the `errnos`. O(len(errnos)).
fn errno_is(err: &std::io::Error, errnos: &[i32]) -> bool {
    err.raw_os_error().is_some_and(|e| errnos.contains(&e))
}

/// Whether `text` lies inside the store dir, compared as raw bytes the way
/// Nix's `isInStore` compares a link's text: it must start with
/// `<store>/` and have at least one byte after the slash. No `..` or `.`
/// is resolved and a relative text is never in the store. O(len(store)).
fn in_store(store_dir: &StoreDir, text: &[u8]) -> bool {
    text.strip_prefix(store_dir.as_str().as_bytes())
        .and_then(|rest| rest.strip_prefix(b"/"))
        .is_some_and(|rest| !rest.is_empty())
}

/// The absolute store path (`<store>/<hash>-<name>`) that `text` lies in,
/// as Nix's `toStorePath` finds it: the first component below the store
/// dir, validated as a basename. `None` when `text` is not in the store or
/// that component is not a valid basename (Nix's `BadStorePath`, which its
/// scanners ignore). The text is taken as is: no trimming, so a trailing
/// newline right after the basename makes it invalid, as in Nix. Bytes
/// after the first component need not be UTF-8. O(len(text)).
fn store_path_in(store_dir: &StoreDir, text: &[u8]) -> Option<String> {
    if !in_store(store_dir, text) {
        return None;
    }
    let start = store_dir.as_str().len() + 1;
    let end = text[start..]
        .iter()
        .position(|&c| c == b'/')
        .map_or(text.len(), |i| start + i);
    let prefix = std::str::from_utf8(&text[..end]).ok()?;
    let base = store_dir.store_path_of(prefix).ok()?;
    Some(store_dir.join(base))
}

/// Every root of the three sources, and what the scan could not see.
#[derive(Debug, Default, Clone)]
pub struct FoundRoots {
    /// Sorted and deduplicated.
    pub roots: Vec<Root>,
    /// Processes whose runtime roots could not be read (see
    /// [`runtime::RuntimeRoots::denied`]); sorted pids.
    pub unreadable_processes: Vec<u32>,
}

impl FoundRoots {
    /// The warning a plan carries when processes could not be read, or
    /// `None` when the scan saw every process. O(1).
    pub fn incomplete_warning(&self) -> Option<String> {
        incomplete_warning(&self.unreadable_processes)
    }
}

/// Says that the runtime roots of `pids` are unknown (not running as
/// root), with an example, or `None` for no pids. O(1).
pub fn incomplete_warning(pids: &[u32]) -> Option<String> {
    let first = pids.first()?;
    let n = pids.len();
    let s = if n == 1 { "" } else { "es" };
    Some(format!(
        "roots incomplete: {n} process{s} could not be read (e.g. /proc/{first}: permission denied; \
         run as root to see every root): a path only such a process uses may be planned; \
         apply refuses to delete unless --allow-incomplete-roots"
    ))
}

/// Scans all three sources. Results are sorted and deduplicated.
pub fn find_roots(src: &RootSources) -> Result<FoundRoots, RootsError> {
    let mut roots = gcroots::find(&src.store_dir, &src.state_dir)?;
    let mut unreadable_processes = Vec::new();
    if let Some(proc_dir) = &src.proc_dir {
        let runtime = runtime::find(&src.store_dir, proc_dir)?;
        roots.extend(runtime.roots);
        unreadable_processes = runtime.denied;
    }
    roots.extend(temp::find(&src.store_dir, &src.state_dir)?);
    roots.sort();
    roots.dedup();
    Ok(FoundRoots {
        roots,
        unreadable_processes,
    })
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeSet;
    use std::fs;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::symlink;
    use std::path::Path;
    use std::process::{Command, Output};

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    /// A generation found directly under `profiles/`, through the
    /// profile's link and through `gcroots/auto` is one root, profile
    /// kind, with both entries as `via`; other links stay apart.
    #[test]
    fn list_merges_one_link_reached_three_ways() {
        let target = format!("/nix/store/{H}-system");
        let root = |link: &str, kind, via: Option<&str>| Root {
            link: link.into(),
            target: target.clone(),
            kind,
            via: via.map(str::to_string),
        };
        let gen = "/v/profiles/system-1-link";
        let roots = vec![
            root(gen, RootKind::Indirect, Some("/v/gcroots/auto/abc")),
            root(
                "/home/u/result",
                RootKind::Indirect,
                Some("/v/gcroots/auto/def"),
            ),
            root(gen, RootKind::Profile, None),
            root(gen, RootKind::Indirect, Some("/v/profiles/system")),
            root(gen, RootKind::Indirect, Some("/v/gcroots/auto/abc")),
        ];
        let listed = list(&roots);
        assert_eq!(
            listed,
            vec![
                ListedRoot {
                    link: "/home/u/result".into(),
                    target: target.clone(),
                    kind: RootKind::Indirect,
                    via: vec!["/v/gcroots/auto/def".into()],
                },
                ListedRoot {
                    link: gen.into(),
                    target: target.clone(),
                    kind: RootKind::Profile,
                    via: vec!["/v/gcroots/auto/abc".into(), "/v/profiles/system".into()],
                },
            ]
        );
    }

    #[test]
    fn store_path_in_takes_the_first_component_as_is() {
        let sd = StoreDir::new("/nix/store");
        let t = |s: &[u8]| store_path_in(&sd, s);
        let p = format!("/nix/store/{H}-x");
        assert_eq!(t(p.as_bytes()), Some(p.clone()));
        assert_eq!(t(format!("{p}/bin/\u{1F600}").as_bytes()), Some(p.clone()));
        let mut non_utf8 = format!("{p}/").into_bytes();
        non_utf8.push(0xff);
        assert_eq!(t(&non_utf8), Some(p.clone()));
        assert_eq!(t(format!("{p}\n").as_bytes()), None);
        assert_eq!(t(format!("{p}/x\n").as_bytes()), Some(p.clone()));
        assert_eq!(t(format!("/nix/store//{H}-x").as_bytes()), None);
        assert_eq!(t(format!("/nix/store/../store/{H}-x").as_bytes()), None);
        assert_eq!(t(format!("nix/store/{H}-x").as_bytes()), None);
        assert_eq!(t(b"/nix/store/"), None);
        assert!(in_store(&sd, b"/nix/store/x"));
        assert!(!in_store(&sd, b"/nix/store/"));
        assert!(!in_store(&sd, b"/nix/storex/a"));
        assert!(!in_store(&sd, b"../store/a"));
    }

    #[test]
    fn permission_denied_maps_to_unreadable() {
        let eacces = std::io::Error::from_raw_os_error(libc::EACCES);
        assert!(matches!(
            RootsError::io("/x", eacces),
            RootsError::Unreadable(p, _) if p == Path::new("/x")
        ));
        let eio = std::io::Error::from_raw_os_error(libc::EIO);
        assert!(matches!(RootsError::io("/x", eio), RootsError::Scan(..)));
    }

    /// A private Nix store under `root`, driven by the real `nix-store`.
    struct NixStore {
        root: PathBuf,
    }

    impl NixStore {
        fn store_dir(&self) -> String {
            format!("{}/nix/store", self.root.display())
        }

        fn state_dir(&self) -> PathBuf {
            self.root.join("nix/var/nix")
        }

        fn run(&self, args: &[&str]) -> Output {
            let r = self.root.display();
            let out = Command::new("nix-store")
                .args(args)
                .env("NIX_STORE_DIR", self.store_dir())
                .env("NIX_STATE_DIR", self.state_dir())
                .env("NIX_LOG_DIR", format!("{r}/nix/var/log/nix"))
                .env("NIX_CONF_DIR", format!("{r}/etc"))
                .env("NIX_REMOTE", "")
                .env_remove("NIX_CONFIG")
                .output()
                .expect("running nix-store");
            assert!(
                out.status.success(),
                "nix-store {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            out
        }

        /// Adds a file or symlink at `src` to the store; returns its path.
        fn add(&self, src: &Path) -> String {
            let out = self.run(&["--add", src.to_str().unwrap()]);
            String::from_utf8(out.stdout).unwrap().trim().to_string()
        }
    }

    /// Compares our gcroots + temp scans with `nix-store --gc --print-roots`
    /// on a real private store, over every kind of on-disk root.
    #[test]
    fn scans_agree_with_nix_store_print_roots() {
        if Command::new("nix-store").arg("--version").output().is_err() {
            eprintln!("note: nix-store not on PATH; skipping the comparison with Nix");
            return;
        }
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::write(
            root.join("etc/nix.conf"),
            "sandbox = false\nbuild-users-group =\nsubstituters =\n",
        )
        .unwrap();
        let nix = NixStore { root: root.clone() };
        nix.run(&["--init"]);

        let src = root.join("src");
        fs::create_dir_all(&src).unwrap();
        let mut valid = BTreeSet::new();
        let mut add = |name: &str| {
            fs::write(src.join(name), name).unwrap();
            let p = nix.add(&src.join(name));
            valid.insert(p.clone());
            p
        };
        let [direct, sub, nested, file, indirect, twohop, profile, temp, stale_temp, inner] = [
            "direct",
            "sub",
            "nested",
            "file",
            "indirect",
            "twohop",
            "profile",
            "temp",
            "stale-temp",
            "inner",
        ]
        .map(&mut add);
        // A store path that is itself a symlink to another store path.
        symlink(&inner, src.join("link")).unwrap();
        let link_path = nix.add(&src.join("link"));
        valid.insert(link_path.clone());

        let state = nix.state_dir();
        let gc = state.join("gcroots");
        let home = root.join("home");
        fs::create_dir_all(gc.join("auto")).unwrap();
        fs::create_dir_all(gc.join("a/b")).unwrap();
        fs::create_dir_all(&home).unwrap();
        let base = |p: &str| p.rsplit('/').next().unwrap().to_string();

        symlink(&direct, gc.join("direct")).unwrap();
        symlink(format!("{sub}/bin/missing"), gc.join("sub")).unwrap();
        symlink(&nested, gc.join("a/b/nested")).unwrap();
        fs::write(gc.join("a").join(base(&file)), "").unwrap();
        symlink(&indirect, home.join("result")).unwrap();
        symlink(home.join("result"), gc.join("auto/good")).unwrap();
        symlink("../../../../../home/result", gc.join("auto/relative")).unwrap();
        fs::write(home.join("plain"), "").unwrap();
        symlink(home.join("plain"), gc.join("auto/nonlink")).unwrap();
        symlink(&twohop, home.join("hop2")).unwrap();
        symlink(home.join("hop2"), home.join("hop1")).unwrap();
        symlink(home.join("hop1"), gc.join("auto/twohop")).unwrap();
        symlink(home.join("gone"), gc.join("auto/stale")).unwrap();
        symlink(format!("../../../store/{}", base(&direct)), gc.join("rel")).unwrap();
        symlink(
            format!("../../../store/{}", base(&link_path)),
            gc.join("rel-link"),
        )
        .unwrap();
        symlink(
            format!("{}/{H}-never-added", nix.store_dir()),
            gc.join("invalid"),
        )
        .unwrap();
        let prof = state.join("profiles/per-user/u");
        fs::create_dir_all(&prof).unwrap();
        symlink(&profile, prof.join("profile-1-link")).unwrap();
        symlink("profile-1-link", prof.join("profile")).unwrap();

        // Temp roots: one held by this process, one stale.
        let temproots = state.join("temproots");
        fs::create_dir_all(&temproots).unwrap();
        let pid = std::process::id();
        fs::write(temproots.join(pid.to_string()), format!("{temp}\0")).unwrap();
        let held = fs::File::open(temproots.join(pid.to_string())).unwrap();
        // SAFETY: flock on our own fd.
        assert_eq!(unsafe { libc::flock(held.as_raw_fd(), libc::LOCK_EX) }, 0);
        fs::write(temproots.join("999999999"), format!("{stale_temp}\0")).unwrap();

        // Scan before Nix runs: Nix removes the stale link and temp file.
        let store_dir = StoreDir::new(nix.store_dir());
        let ours: BTreeSet<(String, String)> = gcroots::find(&store_dir, &state)
            .unwrap()
            .into_iter()
            .chain(temp::find(&store_dir, &state).unwrap())
            .filter(|r| {
                // Candidates Nix skips as invalid; `resolve` drops them.
                let ok = valid.contains(&r.target);
                assert!(ok || r.target.ends_with("-never-added"), "{r:?}");
                ok
            })
            .map(|r| (r.link, r.target))
            .collect();
        assert!(ours.contains(&(format!("{{temp:{pid}}}"), temp.clone())));

        let out = nix.run(&["--gc", "--print-roots"]);
        drop(held);
        let theirs: BTreeSet<(String, String)> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("/proc/"))
            .map(|l| {
                let (link, target) = l.split_once(" -> ").expect(l);
                (link.to_string(), target.to_string())
            })
            .collect();
        assert_eq!(ours, theirs);

        // And the expected set, spelled out, so agreement is not vacuous.
        let g = |p: &str| gc.join(p).display().to_string();
        let want: BTreeSet<(String, String)> = [
            (g("direct"), direct),
            (g("sub"), sub),
            (g("a/b/nested"), nested),
            (gc.join("a").join(base(&file)).display().to_string(), file),
            (home.join("result").display().to_string(), indirect),
            (link_path.clone(), inner),
            (prof.join("profile-1-link").display().to_string(), profile),
            (format!("{{temp:{pid}}}"), temp),
        ]
        .into_iter()
        .collect();
        assert_eq!(ours, want);
    }
}
