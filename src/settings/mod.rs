//! Where the store is and how Nix is configured, resolved in one place:
//! command-line flags first, then `NIX_STORE_DIR`, `NIX_STATE_DIR`,
//! `NIX_CONF_DIR` (then `$NIX_CONF_DIR/nix.conf`, the user's config files
//! and `NIX_CONFIG`, in the order Nix reads them), then Nix's defaults.
//!
//! Only the settings that change liveness are read from `nix.conf`:
//! `keep-outputs` and `keep-derivations` (and their old `gc-` aliases), and
//! whether `ca-derivations` is on. Nix versions read nix.conf a little
//! differently (see `dialect`); the configuration is read once per dialect
//! and the reading that keeps more paths wins, with a warning.
//!
//! - `files`: which files are read;
//! - `conf`: the nix.conf language;
//! - `dialect`: the version differences.

mod conf;
mod dialect;
mod files;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store_path::StoreDir;
use conf::{Source, State};
use dialect::{Dialect, DIALECTS};

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("{file}:{line}: {msg}")]
    Conf {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{0}: cannot read ({1})")]
    Read(PathBuf, std::io::Error),
    #[error("cannot determine user's home directory (HOME unset, no passwd entry)")]
    NoHome,
    /// An include line's own error, before the file and line are known.
    #[error("{0}")]
    Include(String),
}

/// The process environment as far as settings are concerned; passed in so
/// tests can fix it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
    /// The effective user id, which Nix compares with `$HOME`'s owner.
    pub euid: u32,
    /// The effective user's home in the passwd database.
    pub passwd_home: Option<String>,
}

impl Env {
    pub fn from_process() -> Env {
        // SAFETY: geteuid has no preconditions.
        let euid = unsafe { libc::geteuid() };
        Env {
            vars: std::env::vars().collect(),
            euid,
            passwd_home: passwd_home(euid),
        }
    }

    /// A variable that is set and not empty (where Nix treats empty as
    /// unset: the store, state and conf dirs since 2.18).
    pub fn get(&self, key: &str) -> Option<&str> {
        self.var(key).filter(|v| !v.is_empty())
    }

    /// A variable that is set, maybe to the empty string.
    pub fn var(&self, key: &str) -> Option<&str> {
        self.vars.get(key).map(String::as_str)
    }
}

/// `getpwuid_r(euid)`'s home folder, as Nix's `getHomeOf`.
fn passwd_home(euid: u32) -> Option<String> {
    let mut buf = vec![0 as libc::c_char; 16384];
    // SAFETY: all-zero is a valid `passwd` (null pointers, zero ids).
    let mut pw: libc::passwd = unsafe { std::mem::zeroed() };
    let mut out: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: the pointers are valid for the call; `buf` outlives `pw`'s use.
    let rc = unsafe { libc::getpwuid_r(euid, &mut pw, buf.as_mut_ptr(), buf.len(), &mut out) };
    if rc != 0 || out.is_null() || pw.pw_dir.is_null() {
        return None;
    }
    // SAFETY: pw_dir points into `buf`, NUL-terminated.
    let dir = unsafe { std::ffi::CStr::from_ptr(pw.pw_dir) };
    let dir = dir.to_string_lossy().into_owned();
    (!dir.is_empty()).then_some(dir)
}

/// Flags that override the environment.
#[derive(Debug, Clone, Default)]
pub struct Overrides {
    pub store_dir: Option<PathBuf>,
    pub state_dir: Option<PathBuf>,
    /// A `nix.conf` file to read instead of `$NIX_CONF_DIR/nix.conf`.
    pub nix_conf: Option<PathBuf>,
}

/// The liveness-relevant Nix settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct GcSettings {
    pub keep_outputs: bool,
    pub keep_derivations: bool,
}

impl Default for GcSettings {
    fn default() -> Self {
        GcSettings {
            keep_outputs: false,
            keep_derivations: true,
        }
    }
}

/// Resolved locations and settings.
#[derive(Debug, Clone)]
pub struct Settings {
    pub store_dir: StoreDir,
    pub state_dir: PathBuf,
    pub gc: GcSettings,
    /// The configuration files that were read, in order.
    pub conf_files: Vec<PathBuf>,
    /// `experimental-features` holds `ca-derivations`.
    pub ca_derivations: bool,
    /// What Nix would warn about, and where Nix versions disagree.
    pub warnings: Vec<String>,
}

impl Settings {
    pub fn resolve(flags: &Overrides, env: &Env) -> Result<Settings, SettingsError> {
        let store_dir = flags
            .store_dir
            .clone()
            .or_else(|| env.get("NIX_STORE_DIR").map(PathBuf::from))
            .or_else(|| env.get("NIX_STORE").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/nix/store"));
        let state_dir = flags
            .state_dir
            .clone()
            .or_else(|| env.get("NIX_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/nix/var/nix"));
        let readings: Vec<_> = DIALECTS.iter().map(|d| (d, read(d, flags, env))).collect();
        let conf = combine(readings)?;
        Ok(Settings {
            store_dir: StoreDir::new(store_dir.to_string_lossy().into_owned()),
            state_dir,
            gc: conf.gc,
            conf_files: conf.files,
            ca_derivations: conf.ca_derivations,
            warnings: conf.warnings,
        })
    }
}

/// Reads the configuration as one dialect does: the system file, the user
/// files last-listed first (so the first listed wins), then `NIX_CONFIG`.
/// With `--nix-conf FILE`, only that file, which must exist.
fn read(d: &Dialect, flags: &Overrides, env: &Env) -> Result<State, SettingsError> {
    let mut st = State::default();
    if let Some(f) = &flags.nix_conf {
        let text = std::fs::read(f).map_err(|e| SettingsError::Read(f.clone(), e))?;
        return apply_file(f, &text, Source::System(f), d, st);
    }
    let conf_dir = env.get("NIX_CONF_DIR").unwrap_or("/etc/nix");
    let system = Path::new(conf_dir).join("nix.conf");
    st = read_file(&system, Source::System(&system), d, st)?;
    let home = files::home(d, env);
    for f in files::user_conf_files(d, env)?.iter().rev() {
        st = read_file(f, Source::User(f, home.as_deref()), d, st)?;
    }
    if let Some(text) = env.var("NIX_CONFIG") {
        conf::apply(text, Source::Var, d, &mut st, 0)?;
    }
    Ok(st)
}

/// A file Nix reads if it can: any read error skips it.
fn read_file(f: &Path, src: Source, d: &Dialect, st: State) -> Result<State, SettingsError> {
    match std::fs::read(f) {
        Ok(text) => apply_file(f, &text, src, d, st),
        Err(_) => Ok(st),
    }
}

fn apply_file(
    f: &Path,
    text: &[u8],
    src: Source,
    d: &Dialect,
    mut st: State,
) -> Result<State, SettingsError> {
    st.files.push(f.to_path_buf());
    conf::apply(&String::from_utf8_lossy(text), src, d, &mut st, 0)?;
    Ok(st)
}

/// One reading from all dialects' readings: each setting at the value that
/// keeps more (true) if any dialect reads it so, with a warning naming the
/// disagreement. Dialects that refuse the configuration are left out (with
/// a warning) unless all do. O(dialects).
fn combine(
    readings: Vec<(&Dialect, Result<State, SettingsError>)>,
) -> Result<State, SettingsError> {
    let mut ok: Vec<(&Dialect, State)> = Vec::new();
    let mut failed: Vec<(&Dialect, SettingsError)> = Vec::new();
    for (d, r) in readings {
        match r {
            Ok(s) => ok.push((d, s)),
            Err(e) => failed.push((d, e)),
        }
    }
    if ok.is_empty() {
        return Err(failed.swap_remove(0).1);
    }
    let mut warnings: Vec<String> = failed
        .iter()
        .map(|(d, e)| {
            format!(
                "Nix versions disagree on the configuration: {} refuses it ({e}); using the other versions' reading",
                d.name
            )
        })
        .collect();
    let mut out = State {
        gc: GcSettings {
            keep_outputs: keep_more(&ok, "keep-outputs", |s| s.gc.keep_outputs, &mut warnings),
            keep_derivations: keep_more(
                &ok,
                "keep-derivations",
                |s| s.gc.keep_derivations,
                &mut warnings,
            ),
        },
        ca_derivations: keep_more(&ok, "ca-derivations", |s| s.ca_derivations, &mut warnings),
        ..State::default()
    };
    for (_, s) in &ok {
        push_new(&mut out.files, &s.files);
        push_new(&mut out.warnings, &s.warnings);
    }
    out.warnings.extend(warnings);
    Ok(out)
}

/// True if any reading says true; a warning when they disagree.
fn keep_more(
    ok: &[(&Dialect, State)],
    name: &str,
    get: impl Fn(&State) -> bool,
    warnings: &mut Vec<String>,
) -> bool {
    let names = |v: bool| -> Vec<&str> {
        ok.iter()
            .filter(|(_, s)| get(s) == v)
            .map(|(d, _)| d.name)
            .collect()
    };
    let (on, off) = (names(true), names(false));
    if !on.is_empty() && !off.is_empty() {
        warnings.push(format!(
            "Nix versions disagree on {name} ({}: true; {}: false): using {name} = true, which keeps more",
            on.join(", "),
            off.join(", ")
        ));
    }
    !on.is_empty()
}

/// Appends the items of `new` not yet in `list`, in order.
fn push_new<T: PartialEq + Clone>(list: &mut Vec<T>, new: &[T]) {
    for x in new {
        if !list.contains(x) {
            list.push(x.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Env::default()
        }
    }

    #[test]
    fn defaults_without_environment() {
        let s = Settings::resolve(
            &Overrides::default(),
            &env(&[("NIX_CONF_DIR", "/nonexistent"), ("HOME", "/nonexistent")]),
        )
        .unwrap();
        assert_eq!(s.store_dir.as_str(), "/nix/store");
        assert_eq!(s.state_dir, PathBuf::from("/nix/var/nix"));
        assert_eq!(s.gc, GcSettings::default());
    }

    #[test]
    fn conf_dir_then_nix_config_override() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("nix.conf"),
            "# c\nkeep-outputs = true\nsandbox = false\ninclude extra.conf\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("extra.conf"),
            "gc-keep-derivations = false\n",
        )
        .unwrap();
        let d = dir.path().to_str().unwrap();
        let s = Settings::resolve(
            &Overrides::default(),
            &env(&[
                ("NIX_CONF_DIR", d),
                ("NIX_STORE_DIR", "/s/store/"),
                ("HOME", "/nonexistent"),
            ]),
        )
        .unwrap();
        assert_eq!(s.store_dir.as_str(), "/s/store");
        assert!(s.gc.keep_outputs);
        assert!(!s.gc.keep_derivations);
        let s = Settings::resolve(
            &Overrides::default(),
            &env(&[
                ("NIX_CONF_DIR", d),
                (
                    "NIX_CONFIG",
                    "keep-outputs = false\nkeep-derivations = true",
                ),
                ("HOME", "/nonexistent"),
            ]),
        )
        .unwrap();
        assert!(!s.gc.keep_outputs);
        assert!(s.gc.keep_derivations);
    }

    #[test]
    fn bad_boolean_names_file_and_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("nix.conf");
        std::fs::write(&f, "\nkeep-outputs = maybe\n").unwrap();
        let err = Settings::resolve(
            &Overrides {
                nix_conf: Some(f.clone()),
                ..Default::default()
            },
            &Env::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains(&format!("{}:2:", f.display())), "{err}");
        assert!(err.contains("keep-outputs"), "{err}");
    }
    fn resolve(pairs: &[(&str, &str)]) -> Settings {
        Settings::resolve(&Overrides::default(), &env(pairs)).unwrap()
    }

    /// Regression: storegc let the last of `NIX_USER_CONF_FILES` win.
    #[test]
    fn first_user_conf_file_wins() {
        let dir = tempfile::tempdir().unwrap();
        let a = dir.path().join("a.conf");
        let b = dir.path().join("b.conf");
        std::fs::write(&a, "keep-derivations = false\n").unwrap();
        std::fs::write(&b, "keep-derivations = true\nkeep-outputs = true\n").unwrap();
        let list = format!("{}:{}", a.display(), b.display());
        let s = resolve(&[
            ("NIX_CONF_DIR", "/nonexistent"),
            ("NIX_USER_CONF_FILES", &list),
        ]);
        assert!(!s.gc.keep_derivations);
        assert!(s.gc.keep_outputs);
        assert_eq!(s.conf_files, [b, a]);
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
    }

    /// Regression: the extra- warning reaches the resolved settings.
    #[test]
    fn extra_boolean_warning_is_carried_out() {
        let s = resolve(&[
            ("NIX_CONF_DIR", "/nonexistent"),
            ("NIX_USER_CONF_FILES", ""),
            ("NIX_CONFIG", "extra-keep-derivations = false"),
        ]);
        assert!(s.gc.keep_derivations);
        assert_eq!(s.warnings, ["unknown setting 'extra-keep-derivations'"]);
    }

    #[test]
    fn versions_disagreeing_keep_more_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let n = dir.path().join("n");
        std::fs::create_dir(&n).unwrap();
        std::fs::write(
            n.join("nix.conf"),
            "keep-outputs = true\nexperimental-features = ca-derivations\n",
        )
        .unwrap();
        let s = resolve(&[
            ("NIX_CONF_DIR", "/nonexistent"),
            ("HOME", "/nonexistent"),
            ("XDG_CONFIG_DIRS", ""),
            ("NIX_CONFIG_HOME", n.to_str().unwrap()),
        ]);
        assert!(s.gc.keep_outputs);
        assert!(s.ca_derivations);
        let w = s.warnings.join("\n");
        assert!(
            w.contains("Nix versions disagree on keep-outputs (Nix 2.25-2.32, Nix 2.33+: true;")
                && w.contains("using keep-outputs = true, which keeps more"),
            "{w}"
        );
    }

    #[test]
    fn a_dialect_that_refuses_is_left_out_with_a_warning() {
        let s = resolve(&[
            ("NIX_CONF_DIR", "/nonexistent"),
            ("NIX_USER_CONF_FILES", ""),
            (
                "NIX_CONFIG",
                "!include /nonexistent.conf\nkeep-outputs = true",
            ),
        ]);
        assert!(s.gc.keep_outputs);
        assert!(
            s.warnings
                .iter()
                .any(|w| w.contains("Lix 2.92-2.93 refuses it")),
            "{:?}",
            s.warnings
        );
        // Refused by all: an error naming the line.
        let e = Settings::resolve(
            &Overrides::default(),
            &env(&[
                ("NIX_CONF_DIR", "/nonexistent"),
                ("NIX_USER_CONF_FILES", ""),
                ("NIX_CONFIG", "keep-outputs = maybe"),
            ]),
        )
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("NIX_CONFIG:1:"), "{e}");
    }

    #[test]
    fn empty_store_vars_are_unset_but_nix_store_is_read() {
        let s = resolve(&[
            ("NIX_STORE_DIR", ""),
            ("NIX_STORE", "/o/store"),
            ("NIX_CONF_DIR", "/nonexistent"),
            ("NIX_USER_CONF_FILES", ""),
        ]);
        assert_eq!(s.store_dir.as_str(), "/o/store");
    }
}
