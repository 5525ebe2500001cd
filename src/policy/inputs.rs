//! What a policy needs from outside the store database, read once: the
//! closure-list files, each `[[generations]]` profile's generation links
//! (readlink of the profile, lstat of each `<profile>-<N>-link`), and the
//! lstat of every auto root's outer link. This is the only IO of the policy
//! engine; [`crate::policy::eval`] then works on the facts gathered here.
//!
//! Anything that can only make the policy delete *less* (a listed path not
//! valid yet, a profile that does not exist, an outer link that vanished)
//! is a warning; anything that means the policy says something else than
//! its author meant (a list line that is not a store path of this store, a
//! list file that cannot be read) is an error.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use super::digest::{sha256_hex, InputFile, InputKind};
use super::file::{Located, Policy};
use super::PolicyError;
use crate::db::Snapshot;
use crate::paths::PathId;
use crate::roots::{Root, RootKind};
use crate::store_path::StoreDir;

/// The facts gathered for one evaluation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyInputs {
    /// Valid paths named by the closure lists, sorted, deduplicated.
    pub closure_list_ids: Vec<PathId>,
    /// Valid paths named by `protect.paths`, sorted, deduplicated.
    pub protected_path_ids: Vec<PathId>,
    /// One entry per `[[generations]]`, in policy order.
    pub profiles: Vec<ProfileFacts>,
    /// One entry per root, parallel to the roots slice (missing entries
    /// count as [`RootFact::Plain`]).
    pub root_facts: Vec<RootFact>,
    /// The closure lists read, in policy order, with their digests.
    pub files: Vec<InputFile>,
    /// With `select.dead-for`: per id, since when the path has been seen
    /// deletable (from the dead-since state; `None`: not before). Filled
    /// by the command layer, which reads the state file.
    pub dead_since: Vec<Option<i64>>,
    /// There was no state file: the rollback window's first run.
    pub dead_since_missing: bool,
    pub warnings: Vec<String>,
}

/// One profile as found on disk.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileFacts {
    /// The profile link, absolute.
    pub profile: PathBuf,
    /// The generation the profile link points to; `None` when that is not
    /// known (missing profile, link not to a generation): then no
    /// generation of this profile expires.
    pub current: Option<u64>,
    /// Every generation number with a link on disk, ascending.
    pub generations: Vec<u64>,
}

/// What the policy needs to know about one root.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RootFact {
    /// Neither a generation of a listed profile nor an auto root.
    #[default]
    Plain,
    /// The root's link is generation `number` of `profiles[profile]`.
    Generation {
        profile: usize,
        number: u64,
        mtime: i64,
    },
    /// An indirect root registered under `gcroots/auto`; `mtime` is the
    /// outer link's lstat mtime (`None` if it could not be read).
    AutoRoot { mtime: Option<i64> },
}

/// Gathers the inputs. Relative closure-list paths resolve against the
/// policy file's folder, relative profiles against `state_dir`.
///
/// Cost: reads each list file once, one readlink per profile, one directory
/// listing and one lstat per generation link, one lstat per auto root (only
/// when the policy has `[auto-roots]`); O(roots) hash lookups.
pub fn gather(
    policy: &Policy,
    roots: &[Root],
    snap: &Snapshot,
    store_dir: &StoreDir,
    state_dir: &Path,
) -> Result<PolicyInputs, PolicyError> {
    let mut inputs = PolicyInputs::default();
    let policy_dir = policy.file.parent().unwrap_or(Path::new(""));

    for list in &policy.protect.closure_lists {
        let path = policy_dir.join(&list.value);
        let text = std::fs::read_to_string(&path).map_err(|io| PolicyError::Read {
            file: policy.file.clone(),
            line: list.line,
            key: "protect.closure-lists".into(),
            path: path.clone(),
            io,
        })?;
        inputs.files.push(InputFile {
            kind: InputKind::ClosureList,
            path: path.clone(),
            sha256: sha256_hex(text.as_bytes()),
        });
        for (i, raw) in text.lines().enumerate() {
            let entry = raw.split('#').next().unwrap_or("").trim();
            if entry.is_empty() {
                continue;
            }
            let at = Located {
                value: entry.to_string(),
                line: i + 1,
            };
            if let Some(id) = lookup(
                &at,
                &path,
                "protect.closure-lists",
                snap,
                store_dir,
                &mut inputs.warnings,
            )? {
                inputs.closure_list_ids.push(id);
            }
        }
    }
    for p in &policy.protect.paths {
        if let Some(id) = lookup(
            p,
            &policy.file,
            "protect.paths",
            snap,
            store_dir,
            &mut inputs.warnings,
        )? {
            inputs.protected_path_ids.push(id);
        }
    }
    for ids in [&mut inputs.closure_list_ids, &mut inputs.protected_path_ids] {
        ids.sort_unstable();
        ids.dedup();
    }

    // Generation links of every profile, keyed by their normalised path.
    let mut links: HashMap<PathBuf, (usize, u64, i64)> = HashMap::new();
    for (k, g) in policy.generations.iter().enumerate() {
        let profile = normalize(&state_dir.join(&g.profile.value));
        if let Some(j) = inputs.profiles.iter().position(|p| p.profile == profile) {
            return Err(PolicyError::invalid(
                &policy.file,
                g.profile.line,
                "generations.profile",
                format!(
                    "{} is the same profile as the [[generations]] on line {}",
                    profile.display(),
                    policy.generations[j].profile.line
                ),
            ));
        }
        let (facts, found) = read_profile(&profile, &mut inputs.warnings);
        for (number, link, mtime) in found {
            links.insert(link, (k, number, mtime));
        }
        inputs.profiles.push(facts);
    }

    let auto_dir = normalize(&state_dir.join("gcroots").join("auto"));
    inputs.root_facts = roots
        .iter()
        .map(|r| {
            if matches!(r.kind, RootKind::Runtime | RootKind::Temp) {
                return RootFact::Plain;
            }
            if let Some(&(profile, number, mtime)) = links.get(&normalize(Path::new(&r.link))) {
                return RootFact::Generation {
                    profile,
                    number,
                    mtime,
                };
            }
            let is_auto = r.kind == RootKind::Indirect
                && r.via
                    .as_deref()
                    .is_some_and(|v| normalize(Path::new(v)).starts_with(&auto_dir));
            // A generation of a profile (since Nix 2.14 profiles live in
            // `~/.local/state/nix/profiles` and are rooted only through
            // `gcroots/auto`) is never an auto root: only `[[generations]]`
            // expires it, and never its current one.
            if !is_auto || policy.auto_roots.is_none() || is_profile_generation(Path::new(&r.link))
            {
                return RootFact::Plain;
            }
            match std::fs::symlink_metadata(&r.link) {
                Ok(m) => RootFact::AutoRoot {
                    mtime: Some(m.mtime()),
                },
                Err(e) => {
                    inputs.warnings.push(format!(
                        "{}: cannot read auto root's link, kept ({e})",
                        r.link
                    ));
                    RootFact::AutoRoot { mtime: None }
                }
            }
        })
        .collect();
    Ok(inputs)
}

/// Checks one listed path against the store: an error when it is not a
/// store path of this store, a warning (and `None`) when it is not valid.
fn lookup(
    entry: &Located<String>,
    file: &Path,
    key: &str,
    snap: &Snapshot,
    store_dir: &StoreDir,
    warnings: &mut Vec<String>,
) -> Result<Option<PathId>, PolicyError> {
    let text = entry.value.as_str();
    let base = store_dir
        .store_path_of(text)
        .ok()
        .filter(|b| store_dir.join(b) == text)
        .ok_or_else(|| {
            PolicyError::invalid(
                file,
                entry.line,
                key,
                format!("'{text}' is not a store path in {store_dir}"),
            )
        })?;
    let id = snap.paths.lookup(base);
    if id.is_none() {
        warnings.push(format!(
            "{}:{}: {key}: {text} is not valid in the store (not built yet?); nothing to protect for it",
            file.display(),
            entry.line
        ));
    }
    Ok(id)
}

/// Reads a profile: the generation its link points to, and every
/// `<name>-<N>-link` beside it with its lstat mtime.
fn read_profile(
    profile: &Path,
    warnings: &mut Vec<String>,
) -> (ProfileFacts, Vec<(u64, PathBuf, i64)>) {
    let mut facts = ProfileFacts {
        profile: profile.to_path_buf(),
        ..ProfileFacts::default()
    };
    let (Some(dir), Some(name)) = (
        profile.parent(),
        profile.file_name().and_then(|n| n.to_str()),
    ) else {
        warnings.push(format!(
            "{}: not a profile path; no generation expires",
            profile.display()
        ));
        return (facts, Vec::new());
    };
    match std::fs::read_link(profile) {
        Ok(target) => {
            facts.current = target
                .file_name()
                .and_then(|f| f.to_str())
                .and_then(|f| generation_number(name, f));
            if facts.current.is_none() {
                warnings.push(format!(
                    "{}: points to {}, not to a generation link; no generation of it expires",
                    profile.display(),
                    target.display()
                ));
            }
        }
        Err(e) => warnings.push(format!(
            "{}: cannot read profile link ({e}); no generation of it expires",
            profile.display()
        )),
    }
    let mut found = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let file_name = entry.file_name();
                let Some(number) = file_name.to_str().and_then(|f| generation_number(name, f))
                else {
                    continue;
                };
                let link = dir.join(&file_name);
                match std::fs::symlink_metadata(&link) {
                    Ok(m) => found.push((number, link, m.mtime())),
                    // Vanished since the listing: it is no root either.
                    Err(_) => continue,
                }
            }
        }
        Err(e) => {
            warnings.push(format!(
                "{}: cannot list generations ({e}); none expires",
                dir.display()
            ));
            facts.current = None;
        }
    }
    found.sort_unstable();
    facts.generations = found.iter().map(|g| g.0).collect();
    (facts, found)
}

/// Whether `link` is `<dir>/<name>-<N>-link` and `<dir>/<name>` is a
/// profile: a symlink to one of its own generation links (any of them, so
/// `link` may be the current generation or an older one). Cost: one
/// `readlink`.
fn is_profile_generation(link: &Path) -> bool {
    let (Some(dir), Some(file)) = (link.parent(), link.file_name().and_then(|f| f.to_str())) else {
        return false;
    };
    let Some((name, _)) = file
        .strip_suffix("-link")
        .and_then(|rest| rest.rsplit_once('-'))
    else {
        return false;
    };
    if name.is_empty() || generation_number(name, file).is_none() {
        return false;
    }
    std::fs::read_link(dir.join(name)).is_ok_and(|target| {
        target
            .file_name()
            .and_then(|f| f.to_str())
            .and_then(|f| generation_number(name, f))
            .is_some()
    })
}

/// `N` when `file` is `<profile>-<N>-link`, as Nix names generations.
fn generation_number(profile: &str, file: &str) -> Option<u64> {
    let n = file
        .strip_prefix(profile)?
        .strip_prefix('-')?
        .strip_suffix("-link")?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    n.parse().ok()
}

/// `p` made absolute and normalised lexically the way the roots scanner
/// spells links (Nix's `canonPath`): repeated slashes and `.` dropped, `..`
/// removing the previous component, no symlink resolved. Reads the working
/// directory only when `p` is relative. O(len).
fn normalize(p: &Path) -> PathBuf {
    let abs = std::path::absolute(p).unwrap_or_else(|_| p.to_path_buf());
    let mut out = PathBuf::new();
    for c in abs.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PathRow;
    use crate::policy::file::parse_policy;
    use std::os::unix::fs::symlink;

    const SD: &str = "/nix/store";

    fn base(c: char, name: &str) -> String {
        format!("{}-{name}", c.to_string().repeat(32))
    }

    fn snap() -> Snapshot {
        let rows = ['a', 'b', 'c']
            .iter()
            .map(|&c| PathRow {
                basename: base(c, "p"),
                ..Default::default()
            })
            .collect();
        Snapshot::from_rows(rows, &[], vec![])
    }

    fn policy_in(dir: &Path, text: &str) -> Policy {
        let file = dir.join("p.toml");
        std::fs::write(&file, text).unwrap();
        parse_policy(text, &file).unwrap()
    }

    #[test]
    fn closure_list_entries_comments_and_invalid_paths() {
        let dir = tempfile::tempdir().unwrap();
        let list = format!(
            "# hosts\n{SD}/{}  # host a\n\n   \n{SD}/{}\n{SD}/{}\n{SD}/{}\n",
            base('b', "p"),
            base('a', "p"),
            base('z', "p"),
            base('a', "p")
        );
        std::fs::write(dir.path().join("hosts.txt"), list).unwrap();
        let p = policy_in(dir.path(), "[protect]\nclosure-lists = [\"hosts.txt\"]\n");
        let inputs = gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path()).unwrap();
        assert_eq!(inputs.closure_list_ids, vec![0, 1]);
        assert_eq!(inputs.warnings.len(), 1, "{:?}", inputs.warnings);
        assert!(
            inputs.warnings[0].contains("hosts.txt:6: protect.closure-lists:"),
            "{:?}",
            inputs.warnings
        );
    }

    /// Each closure list read is recorded with the digest of the bytes
    /// parsed, in policy order; editing a list changes only its digest.
    #[test]
    fn closure_lists_read_are_recorded_with_their_digests() {
        let dir = tempfile::tempdir().unwrap();
        let (one, two) = (dir.path().join("one.txt"), dir.path().join("two.txt"));
        std::fs::write(&one, format!("{SD}/{}\n", base('a', "p"))).unwrap();
        std::fs::write(&two, "# empty\n").unwrap();
        let p = policy_in(
            dir.path(),
            "[protect]\nclosure-lists = [\"two.txt\", \"one.txt\"]\n",
        );
        let digests = || {
            let inputs = gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path()).unwrap();
            assert!(inputs
                .files
                .iter()
                .all(|f| f.kind == InputKind::ClosureList));
            let paths: Vec<_> = inputs.files.iter().map(|f| f.path.clone()).collect();
            assert_eq!(paths, vec![two.clone(), one.clone()]);
            inputs
                .files
                .into_iter()
                .map(|f| f.sha256)
                .collect::<Vec<_>>()
        };
        let before = digests();
        assert_eq!(
            before[1],
            sha256_hex(std::fs::read(&one).unwrap().as_slice())
        );
        std::fs::write(&one, format!("{SD}/{}\n", base('b', "p"))).unwrap();
        let after = digests();
        assert_eq!(before[0], after[0]);
        assert_ne!(before[1], after[1]);
        assert_eq!(
            p.sha256,
            sha256_hex(&std::fs::read(dir.path().join("p.toml")).unwrap())
        );
    }

    #[test]
    fn closure_list_line_outside_the_store_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("l.txt"),
            format!("{SD}/{}\n/other/store/{}\n", base('a', "p"), base('b', "p")),
        )
        .unwrap();
        let p = policy_in(dir.path(), "[protect]\nclosure-lists = [\"l.txt\"]\n");
        let err = gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path())
            .unwrap_err()
            .to_string();
        let want = format!(
            "{}:2: protect.closure-lists: '/other/store/",
            dir.path().join("l.txt").display()
        );
        assert!(err.starts_with(&want), "{err}");
        // A sub-path is not a store path either.
        std::fs::write(
            dir.path().join("l.txt"),
            format!("{SD}/{}/bin\n", base('a', "p")),
        )
        .unwrap();
        assert!(gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path()).is_err());
    }

    #[test]
    fn missing_closure_list_names_policy_line_and_key() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy_in(
            dir.path(),
            "\n[protect]\nclosure-lists = [\n  \"missing.txt\",\n]\n",
        );
        let err = gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path())
            .unwrap_err()
            .to_string();
        let want = format!(
            "{}:4: protect.closure-lists: cannot read '",
            dir.path().join("p.toml").display()
        );
        assert!(err.starts_with(&want), "{err}");
        assert!(!err.contains('\n'));
    }

    #[test]
    fn protect_paths_are_checked_against_the_store() {
        let dir = tempfile::tempdir().unwrap();
        let p = policy_in(
            dir.path(),
            &format!(
                "[protect]\npaths = [\"{SD}/{}\", \"{SD}/{}\"]\n",
                base('c', "p"),
                base('y', "p")
            ),
        );
        let inputs = gather(&p, &[], &snap(), &StoreDir::new(SD), dir.path()).unwrap();
        assert_eq!(inputs.protected_path_ids, vec![2]);
        assert_eq!(inputs.warnings.len(), 1);
        let err = gather(&p, &[], &snap(), &StoreDir::new("/gnu/store"), dir.path())
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("p.toml:2: protect.paths: '/nix/store/"),
            "{err}"
        );
    }

    fn root(link: &Path, kind: RootKind, via: Option<&Path>) -> Root {
        Root {
            link: link.display().to_string(),
            target: format!("{SD}/{}", base('a', "p")),
            kind,
            via: via.map(|v| v.display().to_string()),
        }
    }

    #[test]
    fn profiles_generations_and_auto_roots() {
        let state = tempfile::tempdir().unwrap();
        let profiles = state.path().join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        for n in [1, 2, 10] {
            symlink(
                format!("{SD}/{}", base('a', "p")),
                profiles.join(format!("system-{n}-link")),
            )
            .unwrap();
        }
        symlink("system-2-link", profiles.join("system")).unwrap();
        // Not generations of "system".
        symlink("x", profiles.join("system-x-link")).unwrap();
        symlink("x", profiles.join("systemd-3-link")).unwrap();
        let auto = state.path().join("gcroots/auto");
        std::fs::create_dir_all(&auto).unwrap();
        let result = state.path().join("result");
        symlink(format!("{SD}/{}", base('a', "p")), &result).unwrap();

        let p = policy_in(
            state.path(),
            "[[generations]]\nprofile = \"profiles/system\"\nkeep-newest = 0\n[[generations]]\nprofile = \"profiles/absent\"\nkeep-newest = 0\n\
             [auto-roots]\nolder-than = \"1d\"\nmatch = [\"*\"]\n",
        );
        let roots = vec![
            root(&profiles.join("system-1-link"), RootKind::Profile, None),
            root(
                &profiles.join("./system-2-link"),
                RootKind::Indirect,
                Some(&profiles.join("system")),
            ),
            root(&result, RootKind::Indirect, Some(&auto.join("abc"))),
            root(
                &state.path().join("gone"),
                RootKind::Indirect,
                Some(&auto.join("def")),
            ),
            root(
                &result,
                RootKind::Indirect,
                Some(&state.path().join("gcroots/other")),
            ),
            root(&profiles.join("system-1-link"), RootKind::Runtime, None),
        ];
        let inputs = gather(&p, &roots, &snap(), &StoreDir::new(SD), state.path()).unwrap();
        assert_eq!(inputs.profiles[0].current, Some(2));
        assert_eq!(inputs.profiles[0].generations, vec![1, 2, 10]);
        assert_eq!(inputs.profiles[0].profile, profiles.join("system"));
        assert_eq!(inputs.profiles[1].current, None);
        let mtime = |p: &Path| std::fs::symlink_metadata(p).unwrap().mtime();
        assert_eq!(
            inputs.root_facts,
            vec![
                RootFact::Generation {
                    profile: 0,
                    number: 1,
                    mtime: mtime(&profiles.join("system-1-link"))
                },
                RootFact::Generation {
                    profile: 0,
                    number: 2,
                    mtime: mtime(&profiles.join("system-2-link"))
                },
                RootFact::AutoRoot {
                    mtime: Some(mtime(&result))
                },
                RootFact::AutoRoot { mtime: None },
                RootFact::Plain,
                RootFact::Plain,
            ]
        );
        // The absent profile and the vanished auto link are warnings.
        assert_eq!(inputs.warnings.len(), 2, "{:?}", inputs.warnings);
    }

    /// Regression: since Nix 2.14 a profile under
    /// `~/.local/state/nix/profiles` is rooted only through `gcroots/auto`,
    /// and `[auto-roots]` expired its generations, the current one too.
    /// They are generations: `[[generations]]` can name them, and the auto
    /// rule never touches them.
    #[test]
    fn modern_profiles_reached_through_auto_are_generations() {
        let state = tempfile::tempdir().unwrap();
        let home = state.path().join("home/.local/state/nix/profiles");
        std::fs::create_dir_all(&home).unwrap();
        for n in [1, 2, 3] {
            symlink(
                format!("{SD}/{}", base('a', "p")),
                home.join(format!("profile-{n}-link")),
            )
            .unwrap();
            symlink(
                format!("{SD}/{}", base('a', "p")),
                home.join(format!("other-{n}-link")),
            )
            .unwrap();
        }
        symlink("profile-3-link", home.join("profile")).unwrap();
        symlink("other-2-link", home.join("other")).unwrap();
        // A link named like a generation, with no profile beside it.
        symlink(format!("{SD}/{}", base('a', "p")), home.join("lone-1-link")).unwrap();
        let auto = state.path().join("gcroots/auto");
        let via = |n: &str| Some(auto.join(n));
        let p = policy_in(
            state.path(),
            &format!(
                "[[generations]]\nprofile = \"{}\"\nkeep-newest = 1\n[auto-roots]\nolder-than = \"0s\"\nmatch = [\"*\"]\n",
                home.join("profile").display()
            ),
        );
        let roots: Vec<Root> = [
            "profile-2-link",
            "profile-3-link",
            "other-1-link",
            "other-2-link",
            "lone-1-link",
        ]
        .iter()
        .enumerate()
        .map(|(i, l)| {
            root(
                &home.join(l),
                RootKind::Indirect,
                via(&i.to_string()).as_deref(),
            )
        })
        .collect();
        let inputs = gather(&p, &roots, &snap(), &StoreDir::new(SD), state.path()).unwrap();
        assert_eq!(inputs.profiles[0].current, Some(3));
        let kinds: Vec<&str> = inputs
            .root_facts
            .iter()
            .map(|f| match f {
                RootFact::Plain => "plain",
                RootFact::Generation { .. } => "generation",
                RootFact::AutoRoot { .. } => "auto",
            })
            .collect();
        assert_eq!(
            kinds,
            ["generation", "generation", "plain", "plain", "auto"]
        );
    }

    #[test]
    fn same_profile_twice_is_an_error() {
        let state = tempfile::tempdir().unwrap();
        let p = policy_in(
            state.path(),
            &format!("[[generations]]\nprofile = \"profiles/system\"\nkeep-newest = 0\n[[generations]]\nprofile = \"{}/profiles/./system\"\nkeep-newest = 0\n", state.path().display()),
        );
        let err = gather(&p, &[], &snap(), &StoreDir::new(SD), state.path())
            .unwrap_err()
            .to_string();
        assert!(err.contains("p.toml:5: generations.profile: "), "{err}");
    }

    #[test]
    fn paths_are_compared_as_the_roots_scanner_spells_them() {
        assert_eq!(
            normalize(Path::new("/a//b/./c/../d/")),
            PathBuf::from("/a/b/d")
        );
        assert_eq!(normalize(Path::new("/../x")), PathBuf::from("/x"));
        assert!(normalize(Path::new("rel/x")).is_absolute());
    }

    #[test]
    fn generation_numbers_follow_nix_link_names() {
        assert_eq!(generation_number("system", "system-12-link"), Some(12));
        assert_eq!(generation_number("system", "system--link"), None);
        assert_eq!(generation_number("system", "system-1a-link"), None);
        assert_eq!(generation_number("system", "systemd-1-link"), None);
        assert_eq!(generation_number("system", "system-1-link.tmp"), None);
    }
}
