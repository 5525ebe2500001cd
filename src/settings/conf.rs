//! The nix.conf language, as Nix's `applyConfig` reads it: lines split at
//! `\n`, `#` starts a comment anywhere, words split at space, tab, `\r`;
//! `name = value...`; `include F` / `!include F` (relative to the
//! including file's folder; `!include` tolerates a missing file; a file
//! that exists but cannot be read is skipped). Only the liveness settings
//! are kept: `keep-outputs`, `keep-derivations` (and `gc-` aliases) and
//! whether `experimental-features` holds `ca-derivations`.

use std::path::{Path, PathBuf};

use super::dialect::Dialect;
use super::{GcSettings, SettingsError};

/// Where a configuration text came from.
#[derive(Debug, Clone, Copy)]
pub enum Source<'a> {
    /// The system file (`$NIX_CONF_DIR/nix.conf` or `--nix-conf`).
    System(&'a Path),
    /// A user file; `home` is what Lix substitutes for `~/`.
    User(&'a Path, Option<&'a str>),
    /// The `NIX_CONFIG` variable.
    Var,
}

impl Source<'_> {
    fn path(&self) -> &Path {
        match self {
            Source::System(p) | Source::User(p, _) => p,
            Source::Var => Path::new("NIX_CONFIG"),
        }
    }
}

/// The liveness settings as one dialect has read them so far.
#[derive(Debug, Clone, Default)]
pub struct State {
    pub gc: GcSettings,
    pub ca_derivations: bool,
    /// What Nix warns about (deduplicated, in order of first sight).
    pub warnings: Vec<String>,
    /// Every file read, includes too, in order.
    pub files: Vec<PathBuf>,
}

impl State {
    fn warn(&mut self, w: String) {
        if !self.warnings.contains(&w) {
            self.warnings.push(w);
        }
    }
}

const MAX_DEPTH: u32 = 64;

/// Applies one configuration text (and what it includes) to `st`.
pub fn apply(
    text: &str,
    src: Source,
    d: &Dialect,
    st: &mut State,
    depth: u32,
) -> Result<(), SettingsError> {
    for (i, raw) in text.split('\n').enumerate() {
        let at = |msg: String| conf_error(src.path(), i + 1, msg);
        let line = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = line
            .split([' ', '\t', '\r'])
            .filter(|w| !w.is_empty())
            .collect();
        match words.as_slice() {
            [] => {}
            [_] => return Err(at(format!("illegal configuration line '{line}'"))),
            ["include" | "!include", f] => {
                if depth >= MAX_DEPTH {
                    return Err(at(format!("includes nest deeper than {MAX_DEPTH}")));
                }
                let ignore_missing = words[0] == "!include";
                include(f, ignore_missing, src, d, st, depth).map_err(|e| match e {
                    SettingsError::Include(m) => at(m),
                    e => e,
                })?;
            }
            ["include" | "!include", ..] => {
                return Err(at(format!("illegal configuration line '{line}'")))
            }
            [name, "=", value @ ..] => set(name, &value.join(" "), d, st).map_err(at)?,
            _ => return Err(at(format!("illegal configuration line '{line}'"))),
        }
    }
    Ok(())
}

fn conf_error(file: &Path, line: usize, msg: String) -> SettingsError {
    SettingsError::Conf {
        file: file.to_path_buf(),
        line,
        msg,
    }
}

/// Reads an included file, if it is there.
fn include(
    f: &str,
    ignore_missing: bool,
    src: Source,
    d: &Dialect,
    st: &mut State,
    depth: u32,
) -> Result<(), SettingsError> {
    let target = include_path(f, src, d)?;
    if std::fs::symlink_metadata(&target).is_err() {
        if ignore_missing {
            return Ok(());
        }
        return Err(SettingsError::Include(format!(
            "file '{}' included from '{}' not found",
            target.display(),
            src.path().display()
        )));
    }
    let Ok(bytes) = std::fs::read(&target) else {
        return Ok(()); // Nix skips a file it cannot read
    };
    st.files.push(target.clone());
    let inner = match src {
        Source::User(_, home) => Source::User(&target, home),
        _ => Source::System(&target),
    };
    apply(&String::from_utf8_lossy(&bytes), inner, d, st, depth + 1)
}

/// Where `include f` points: relative to the including file's folder;
/// Lix 2.92+ expands `~/` in user files and refuses `~` elsewhere.
fn include_path(f: &str, src: Source, d: &Dialect) -> Result<PathBuf, SettingsError> {
    let refuse = |m: String| Err(SettingsError::Include(m));
    if d.tilde_includes {
        if matches!(src, Source::Var) {
            return refuse(format!("can only include configuration '{f}' from files"));
        }
        if let Some(rest) = f.strip_prefix("~/") {
            return match src {
                Source::User(_, Some(home)) => Ok(Path::new(home).join(rest)),
                _ => refuse(format!("`~` path not allowed: {f}")),
            };
        }
        if f.starts_with('~') {
            return refuse(format!("`~` paths must start with `~/`: {f}"));
        }
    }
    if f.starts_with('/') {
        return Ok(PathBuf::from(f));
    }
    match src {
        // Nix makes it absolute against ".", which its canonPath refuses.
        Source::Var => refuse(format!("not an absolute path: './{f}'")),
        _ => Ok(src.path().parent().unwrap_or(Path::new("")).join(f)),
    }
}

/// One `name = value` line.
fn set(name: &str, value: &str, d: &Dialect, st: &mut State) -> Result<(), String> {
    match name {
        "keep-outputs" | "gc-keep-outputs" => st.gc.keep_outputs = parse_bool(name, value)?,
        "keep-derivations" | "gc-keep-derivations" => {
            st.gc.keep_derivations = parse_bool(name, value)?
        }
        "experimental-features" => st.ca_derivations = has_ca(value, d, st),
        "extra-experimental-features" => st.ca_derivations |= has_ca(value, d, st),
        // Booleans are not appendable: Nix calls these unknown and
        // ignores them.
        "extra-keep-outputs"
        | "extra-gc-keep-outputs"
        | "extra-keep-derivations"
        | "extra-gc-keep-derivations" => st.warn(format!("unknown setting '{name}'")),
        _ => {}
    }
    Ok(())
}

fn has_ca(value: &str, d: &Dialect, st: &mut State) -> bool {
    let listed = value
        .split([' ', '\t', '\r'])
        .any(|w| w == "ca-derivations");
    if listed && !d.knows_ca {
        st.warn("unknown experimental feature 'ca-derivations'".into());
    }
    listed && d.knows_ca
}

/// As Nix's `BaseSetting<bool>` parses (all versions, Lix too).
fn parse_bool(name: &str, v: &str) -> Result<bool, String> {
    match v {
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(format!("Boolean setting '{name}' has invalid value '{v}'")),
    }
}

#[cfg(test)]
mod tests {
    use super::super::dialect::DIALECTS;
    use super::*;

    fn read(text: &str, d: usize) -> Result<State, SettingsError> {
        let mut st = State::default();
        apply(text, Source::Var, &DIALECTS[d], &mut st, 0)?;
        Ok(st)
    }

    #[test]
    fn comments_aliases_and_words() {
        let st = read(
            "# x\n gc-keep-outputs\t= yes # c\r\nkeep-derivations = 0\n",
            0,
        )
        .unwrap();
        assert!(st.gc.keep_outputs);
        assert!(!st.gc.keep_derivations);
        let st = read("keep-outputs = true\ngc-keep-outputs = no\n", 0).unwrap();
        assert!(!st.gc.keep_outputs);
    }

    /// Regression: storegc applied `extra-keep-derivations = false`; Nix
    /// warns "unknown setting" and ignores it.
    #[test]
    fn extra_boolean_is_an_ignored_unknown_setting() {
        let st = read(
            "extra-keep-derivations = false\nextra-gc-keep-outputs = true\nextra-keep-derivations = no\n",
            0,
        )
        .unwrap();
        assert_eq!(st.gc, GcSettings::default());
        assert_eq!(
            st.warnings,
            [
                "unknown setting 'extra-keep-derivations'",
                "unknown setting 'extra-gc-keep-outputs'"
            ]
        );
    }

    #[test]
    fn bad_lines_and_booleans_are_errors() {
        for bad in [
            "keep-outputs",
            "keep-outputs true",
            "keep-outputs = on",
            "keep-outputs =",
        ] {
            assert!(read(bad, 0).is_err(), "{bad}");
        }
        assert!(read("include a b", 0).is_err());
        assert!(read("sandbox = false\nx = a b c", 0).is_ok());
    }

    #[test]
    fn experimental_features_replace_and_append() {
        let st = read("experimental-features = nix-command ca-derivations", 0).unwrap();
        assert!(st.ca_derivations);
        let st = read(
            "experimental-features = ca-derivations\nexperimental-features = flakes",
            0,
        )
        .unwrap();
        assert!(!st.ca_derivations);
        let st = read(
            "experimental-features = flakes\nextra-experimental-features = ca-derivations",
            0,
        )
        .unwrap();
        assert!(st.ca_derivations);
        // Lix 2.94 removed the feature.
        let st = read("experimental-features = ca-derivations", 6).unwrap();
        assert!(!st.ca_derivations);
        assert_eq!(st.warnings.len(), 1);
    }

    #[test]
    fn includes_are_relative_to_the_including_file() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).unwrap();
        std::fs::write(sub.join("a.conf"), "include b.conf\n!include gone.conf\n").unwrap();
        std::fs::write(sub.join("b.conf"), "keep-outputs = true\n").unwrap();
        let top = dir.path().join("nix.conf");
        let mut st = State::default();
        apply(
            "include sub/a.conf",
            Source::System(&top),
            &DIALECTS[0],
            &mut st,
            0,
        )
        .unwrap();
        assert!(st.gc.keep_outputs);
        assert_eq!(st.files, [sub.join("a.conf"), sub.join("b.conf")]);
        let err = apply(
            "include nope.conf",
            Source::System(&top),
            &DIALECTS[0],
            &mut st,
            0,
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("nix.conf:1:") && err.contains("not found"),
            "{err}"
        );
    }

    #[test]
    fn include_cycle_is_an_error_not_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("loop.conf");
        std::fs::write(&f, "include loop.conf\n").unwrap();
        let mut st = State::default();
        assert!(apply(
            "include loop.conf",
            Source::System(&f),
            &DIALECTS[0],
            &mut st,
            0
        )
        .is_err());
    }

    #[test]
    fn lix_expands_tilde_in_user_files_only() {
        let dir = tempfile::tempdir().unwrap();
        let home = dir.path().to_str().unwrap();
        std::fs::write(dir.path().join("k.conf"), "keep-outputs = true\n").unwrap();
        let user = dir.path().join("u/nix.conf");
        let src = Source::User(&user, Some(home));
        let mut st = State::default();
        apply("!include ~/k.conf", src, &DIALECTS[5], &mut st, 0).unwrap();
        assert!(st.gc.keep_outputs);
        let mut st = State::default();
        apply("!include ~/k.conf", src, &DIALECTS[3], &mut st, 0).unwrap();
        assert!(
            !st.gc.keep_outputs,
            "Nix reads u/~/k.conf, which is missing"
        );
        let sys = Source::System(&user);
        assert!(apply("!include ~/k.conf", sys, &DIALECTS[5], &mut st, 0).is_err());
        assert!(
            read("!include /x", 5).is_err(),
            "Lix: no includes in NIX_CONFIG"
        );
        assert!(read("!include /nonexistent-x", 0).is_ok());
    }
}
