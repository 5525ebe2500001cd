//! Which configuration files Nix reads, per dialect: the user's home (with
//! Nix's `$HOME` ownership rule), then the user files from
//! `NIX_USER_CONF_FILES` or the XDG folders, in the order Nix applies them.
//!
//! Empty and unset differ here, as in Nix: `NIX_USER_CONF_FILES=""` means
//! no user files, `XDG_CONFIG_DIRS=""` no XDG folders, and an empty
//! `XDG_CONFIG_HOME`/`NIX_CONFIG_HOME`/`HOME` is an empty folder name.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use super::dialect::Dialect;
use super::{Env, SettingsError};

/// The user's home as Nix's `getHome` finds it: `$HOME` (if set; Nix 2.10+
/// and Lix: only if it does not exist or belongs to the effective user,
/// and can be stat'ed), else the passwd entry's home. `None`: no home.
pub fn home(d: &Dialect, env: &Env) -> Option<String> {
    let from_env = env
        .var("HOME")
        .filter(|h| !d.home_must_be_owned || owned(h, env.euid));
    from_env
        .map(str::to_string)
        .or_else(|| env.passwd_home.clone())
}

fn owned(home: &str, euid: u32) -> bool {
    match std::fs::metadata(home) {
        Ok(m) => m.uid() == euid,
        Err(e) => e.kind() == std::io::ErrorKind::NotFound,
    }
}

fn need_home(d: &Dialect, env: &Env) -> Result<String, SettingsError> {
    home(d, env).ok_or(SettingsError::NoHome)
}

/// The user configuration files, in the order Nix lists them (the first
/// wins: Nix applies them in reverse).
pub fn user_conf_files(d: &Dialect, env: &Env) -> Result<Vec<PathBuf>, SettingsError> {
    if let Some(list) = env.var("NIX_USER_CONF_FILES") {
        // Nix 2.34+ turns an empty entry into ".", a folder it cannot read;
        // older ones drop it: the same outcome.
        return Ok(list
            .split(':')
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .collect());
    }
    let mut dirs = Vec::new();
    if let Some(h) = config_home(d, env)? {
        dirs.push(h);
    }
    for x in env.var("XDG_CONFIG_DIRS").unwrap_or("/etc/xdg").split(':') {
        if !x.is_empty() {
            dirs.push(d.join.join(x, "nix"));
        }
    }
    Ok(dirs
        .iter()
        .map(|dir| PathBuf::from(d.join.join(dir, "nix.conf")))
        .collect())
}

/// The user's own nix config folder (`~/.config/nix`); `None` when Lix
/// finds no home.
fn config_home(d: &Dialect, env: &Env) -> Result<Option<String>, SettingsError> {
    if d.nix_config_home {
        if let Some(dir) = env.var("NIX_CONFIG_HOME") {
            return Ok(Some(dir.to_string()));
        }
    }
    let xdg = match env.var("XDG_CONFIG_HOME") {
        Some(x) => x.to_string(),
        None if d.home_optional => match home(d, env) {
            Some(h) => d.join.join(&h, ".config"),
            None => return Ok(None),
        },
        None => d.join.join(&need_home(d, env)?, ".config"),
    };
    Ok(Some(d.join.join(&xdg, "nix")))
}

#[cfg(test)]
mod tests {
    use super::super::dialect::DIALECTS;
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        Env {
            vars: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            euid: 0,
            passwd_home: Some("/pw".into()),
        }
    }

    fn files(d: usize, e: &Env) -> Vec<String> {
        user_conf_files(&DIALECTS[d], e)
            .unwrap()
            .iter()
            .map(|p| p.display().to_string())
            .collect()
    }

    #[test]
    fn xdg_home_then_xdg_dirs() {
        let e = env(&[("HOME", "/h"), ("XDG_CONFIG_DIRS", "/a::/b")]);
        for d in 0..DIALECTS.len() {
            assert_eq!(
                files(d, &e),
                [
                    "/h/.config/nix/nix.conf",
                    "/a/nix/nix.conf",
                    "/b/nix/nix.conf"
                ]
            );
        }
        let e = env(&[("HOME", "/h")]);
        assert_eq!(files(0, &e)[1], "/etc/xdg/nix/nix.conf");
    }

    /// Regression: storegc treated these set-but-empty variables as unset.
    #[test]
    fn empty_user_files_and_empty_xdg_dirs_mean_none() {
        let e = env(&[("NIX_USER_CONF_FILES", ""), ("HOME", "/h")]);
        assert!(files(0, &e).is_empty());
        let e = env(&[("XDG_CONFIG_DIRS", ""), ("HOME", "/h")]);
        assert_eq!(files(0, &e), ["/h/.config/nix/nix.conf"]);
    }

    #[test]
    fn empty_xdg_config_home_is_root_or_relative() {
        let e = env(&[("XDG_CONFIG_HOME", ""), ("XDG_CONFIG_DIRS", "")]);
        assert_eq!(files(0, &e), ["/nix/nix.conf"]);
        assert_eq!(files(3, &e), ["nix/nix.conf"]);
    }

    #[test]
    fn nix_config_home_only_from_2_25() {
        let e = env(&[
            ("NIX_CONFIG_HOME", "/n"),
            ("HOME", "/h"),
            ("XDG_CONFIG_DIRS", ""),
        ]);
        assert_eq!(files(1, &e), ["/h/.config/nix/nix.conf"]);
        assert_eq!(files(2, &e), ["/n/nix.conf"]);
        assert_eq!(files(4, &e), ["/h/.config/nix/nix.conf"]);
    }

    #[test]
    fn unset_home_uses_passwd_and_no_home_fails_nix_not_lix() {
        let mut e = env(&[("XDG_CONFIG_DIRS", "")]);
        assert_eq!(files(0, &e), ["/pw/.config/nix/nix.conf"]);
        e.passwd_home = None;
        assert!(matches!(
            user_conf_files(&DIALECTS[0], &e),
            Err(SettingsError::NoHome)
        ));
        assert!(files(4, &e).is_empty());
    }

    #[test]
    fn unowned_home_is_used_by_2_8_only() {
        let dir = tempfile::tempdir().unwrap();
        let h = dir.path().to_str().unwrap();
        let mut e = env(&[("HOME", h), ("XDG_CONFIG_DIRS", "")]);
        e.euid = std::fs::metadata(h).unwrap().uid() + 1;
        assert_eq!(files(0, &e), [format!("{h}/.config/nix/nix.conf")]);
        assert_eq!(files(1, &e), ["/pw/.config/nix/nix.conf"]);
        assert_eq!(files(4, &e), ["/pw/.config/nix/nix.conf"]);
        // A HOME that does not exist is kept.
        let e = env(&[("HOME", "/nonexistent-h"), ("XDG_CONFIG_DIRS", "")]);
        assert_eq!(files(1, &e), ["/nonexistent-h/.config/nix/nix.conf"]);
    }
}
