//! Where the store is and how Nix is configured, resolved in one place:
//! command-line flags first, then `NIX_STORE_DIR`, `NIX_STATE_DIR`,
//! `NIX_CONF_DIR` (and the user's config files and `NIX_CONFIG`, in the
//! order Nix reads them), then Nix's defaults.
//!
//! Only the settings that change liveness are read from `nix.conf`:
//! `keep-outputs` and `keep-derivations` (and their old `gc-` aliases).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::store_path::StoreDir;

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
}

/// The process environment as far as settings are concerned; passed in so
/// tests can fix it.
#[derive(Debug, Clone, Default)]
pub struct Env {
    pub vars: BTreeMap<String, String>,
}

impl Env {
    pub fn from_process() -> Env {
        Env {
            vars: std::env::vars().collect(),
        }
    }

    pub fn get(&self, key: &str) -> Option<&str> {
        self.vars
            .get(key)
            .map(String::as_str)
            .filter(|v| !v.is_empty())
    }
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
}

impl Settings {
    pub fn resolve(flags: &Overrides, env: &Env) -> Result<Settings, SettingsError> {
        let store_dir = flags
            .store_dir
            .clone()
            .or_else(|| env.get("NIX_STORE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/nix/store"));
        let state_dir = flags
            .state_dir
            .clone()
            .or_else(|| env.get("NIX_STATE_DIR").map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from("/nix/var/nix"));

        let mut files = Vec::new();
        match &flags.nix_conf {
            Some(f) => files.push(f.clone()),
            None => {
                let conf_dir = env.get("NIX_CONF_DIR").unwrap_or("/etc/nix");
                files.push(Path::new(conf_dir).join("nix.conf"));
                files.extend(user_conf_files(env));
            }
        }
        let mut gc = GcSettings::default();
        let mut read = Vec::new();
        for f in files {
            match std::fs::read_to_string(&f) {
                Ok(text) => {
                    apply_conf(&text, &f, &mut gc, 0)?;
                    read.push(f);
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && flags.nix_conf.is_none() => {}
                Err(e) => return Err(SettingsError::Read(f, e)),
            }
        }
        if flags.nix_conf.is_none() {
            if let Some(text) = env.get("NIX_CONFIG") {
                apply_conf(text, Path::new("NIX_CONFIG"), &mut gc, 0)?;
            }
        }
        Ok(Settings {
            store_dir: StoreDir::new(store_dir.to_string_lossy().into_owned()),
            state_dir,
            gc,
            conf_files: read,
        })
    }
}

/// The user configuration files Nix reads after the system one:
/// `NIX_USER_CONF_FILES` (colon-separated) if set, else `nix/nix.conf` in
/// each of `XDG_CONFIG_DIRS` (reversed, so the first wins) and then
/// `XDG_CONFIG_HOME` (default `~/.config`).
fn user_conf_files(env: &Env) -> Vec<PathBuf> {
    if let Some(list) = env.get("NIX_USER_CONF_FILES") {
        return list
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect();
    }
    let mut dirs: Vec<PathBuf> = env
        .get("XDG_CONFIG_DIRS")
        .unwrap_or("/etc/xdg")
        .split(':')
        .filter(|s| !s.is_empty())
        .map(PathBuf::from)
        .collect();
    dirs.reverse();
    let home = env
        .get("XDG_CONFIG_HOME")
        .map(PathBuf::from)
        .or_else(|| env.get("HOME").map(|h| Path::new(h).join(".config")));
    dirs.extend(home);
    dirs.into_iter()
        .map(|d| d.join("nix").join("nix.conf"))
        .collect()
}

fn parse_bool(v: &str, file: &Path, line: usize, key: &str) -> Result<bool, SettingsError> {
    match v {
        // As Nix's `BaseSetting<bool>::set` reads them.
        "true" | "yes" | "1" => Ok(true),
        "false" | "no" | "0" => Ok(false),
        _ => Err(SettingsError::Conf {
            file: file.to_path_buf(),
            line,
            msg: format!("{key}: expected 'true' or 'false', got '{v}'"),
        }),
    }
}

/// Applies one configuration text the way Nix's `applyConfig` reads it:
/// `#` starts a comment, `name = value`, `include`/`!include` of another
/// file (relative to this one; `!include` tolerates a missing file).
/// Settings other than the keep-* ones are ignored.
fn apply_conf(
    text: &str,
    file: &Path,
    gc: &mut GcSettings,
    depth: u32,
) -> Result<(), SettingsError> {
    for (i, raw) in text.lines().enumerate() {
        let line_no = i + 1;
        let line = raw.split('#').next().unwrap_or("");
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        if words[0] == "include" || words[0] == "!include" {
            if words.len() != 2 || depth > 16 {
                return Err(SettingsError::Conf {
                    file: file.to_path_buf(),
                    line: line_no,
                    msg: "illegal include line".into(),
                });
            }
            let inc = file.parent().unwrap_or(Path::new("/")).join(words[1]);
            match std::fs::read_to_string(&inc) {
                Ok(t) => apply_conf(&t, &inc, gc, depth + 1)?,
                Err(e) if words[0] == "!include" && e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(SettingsError::Read(inc, e)),
            }
            continue;
        }
        if words.len() < 2 || words[1] != "=" {
            return Err(SettingsError::Conf {
                file: file.to_path_buf(),
                line: line_no,
                msg: "illegal configuration line".into(),
            });
        }
        let value = words[2..].join(" ");
        let key = words[0].strip_prefix("extra-").unwrap_or(words[0]);
        match key {
            "keep-outputs" | "gc-keep-outputs" => {
                gc.keep_outputs = parse_bool(&value, file, line_no, key)?
            }
            "keep-derivations" | "gc-keep-derivations" => {
                gc.keep_derivations = parse_bool(&value, file, line_no, key)?
            }
            _ => {}
        }
    }
    Ok(())
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
}
