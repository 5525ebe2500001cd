//! Store paths as typed values: a store directory, and the basename of a
//! path inside it split into its hash part and its name.
//!
//! Parsing happens once, at the edges (database rows, root links, policy
//! files); the hot loops downstream only see dense integer ids.

use std::fmt;

/// Nix's base-32 alphabet (no `e`, `o`, `u`, `t`).
const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";

/// Byte classes for the checks below: one table lookup a byte (parsing
/// runs once per database row, so this is on the load's hot path).
const BASE32_CHAR: u8 = 1;
const NAME_CHAR: u8 = 2;
static CLASS: [u8; 256] = {
    let mut t = [0u8; 256];
    let mut i = 0;
    while i < NIX_BASE32.len() {
        t[NIX_BASE32[i] as usize] |= BASE32_CHAR;
        i += 1;
    }
    let mut c = 0usize;
    while c < 256 {
        let b = c as u8;
        if b.is_ascii_alphanumeric() || matches!(b, b'+' | b'-' | b'.' | b'_' | b'?' | b'=') {
            t[c] |= NAME_CHAR;
        }
        c += 1;
    }
    t
};
/// Length of the hash part of a store path basename.
pub const HASH_LEN: usize = 32;
/// Longest name part Nix accepts.
const MAX_NAME_LEN: usize = 211;

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StorePathError {
    #[error("'{0}' is not in the store directory {1}")]
    NotInStore(String, String),
    #[error("'{0}' is not a store path basename (expected <32-char hash>-<name>)")]
    BadBasename(String),
}

/// The store directory, e.g. `/nix/store`, without a trailing slash.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreDir(String);

impl StoreDir {
    /// Takes the directory as given, dropping trailing slashes.
    pub fn new(dir: impl Into<String>) -> StoreDir {
        let mut dir = dir.into();
        while dir.len() > 1 && dir.ends_with('/') {
            dir.pop();
        }
        StoreDir(dir)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `path` lies inside the store directory (at any depth), as
    /// Nix's `isInStore` decides.
    pub fn is_in_store<'a>(&self, path: &'a str) -> Option<&'a str> {
        let rest = path.strip_prefix(self.0.as_str())?.strip_prefix('/')?;
        (!rest.is_empty()).then_some(rest)
    }

    /// The basename of the store path that `path` lies in (`<store>/<base>`
    /// or `<store>/<base>/sub/dir`), validated. `path` must be absolute and
    /// canonical as Nix compares it (no `..` resolution is done, like Nix).
    pub fn store_path_of<'a>(&self, path: &'a str) -> Result<&'a str, StorePathError> {
        let rest = self
            .is_in_store(path)
            .ok_or_else(|| StorePathError::NotInStore(path.to_string(), self.0.clone()))?;
        let base = match rest.as_bytes().iter().position(|&b| b == b'/') {
            Some(i) => &rest[..i],
            None => rest,
        };
        parse_basename(base)?;
        Ok(base)
    }

    /// `<store>/<basename>`.
    pub fn join(&self, basename: &str) -> String {
        let mut s = String::with_capacity(self.0.len() + 1 + basename.len());
        s.push_str(&self.0);
        s.push('/');
        s.push_str(basename);
        s
    }
}

impl fmt::Display for StoreDir {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// A validated basename split into hash part and name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Basename<'a> {
    pub hash: &'a str,
    pub name: &'a str,
}

/// Checks a basename exactly as Nix 2.8's `StorePath` constructor does:
/// 32 base-32 characters, any one character (normally `-`), then a name of
/// 1 to 211 characters from `[0-9a-zA-Z+-._?=]`. Newer Nix also rejects
/// names starting with a dot; 2.8 accepts them, and so do we, since
/// accepting more names can only find more roots.
pub fn parse_basename(base: &str) -> Result<Basename<'_>, StorePathError> {
    let bad = || StorePathError::BadBasename(base.to_string());
    let bytes = base.as_bytes();
    if bytes.len() < HASH_LEN + 2 || !base.is_char_boundary(HASH_LEN + 1) {
        return Err(bad());
    }
    if !bytes[..HASH_LEN]
        .iter()
        .all(|&c| CLASS[c as usize] & BASE32_CHAR != 0)
    {
        return Err(bad());
    }
    let name = &base[HASH_LEN + 1..];
    if name.len() > MAX_NAME_LEN || !name.bytes().all(is_name_char) {
        return Err(bad());
    }
    Ok(Basename {
        hash: &base[..HASH_LEN],
        name,
    })
}

fn is_name_char(c: u8) -> bool {
    CLASS[c as usize] & NAME_CHAR != 0
}

/// The name part of a basename already known to be valid.
pub fn name_of(base: &str) -> &str {
    base.get(HASH_LEN + 1..).unwrap_or("")
}

/// The hash part of a basename already known to be valid.
pub fn hash_of(base: &str) -> &str {
    base.get(..HASH_LEN).unwrap_or(base)
}

/// Whether a basename names a derivation (`.drv`).
pub fn is_derivation(base: &str) -> bool {
    base.ends_with(".drv")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H: &str = "0123456789abcdfghijklmnpqrsvwxyz";

    #[test]
    fn parses_valid_basenames() {
        let base = format!("{H}-hello-2.12");
        let b = parse_basename(&base).unwrap();
        assert_eq!(b.hash, H);
        assert_eq!(b.name, "hello-2.12");
        assert!(parse_basename(&format!("{H}-a+b_c?=d")).is_ok());
        // Nix 2.8 accepts a leading dot and does not check the separator.
        assert!(parse_basename(&format!("{H}-.hidden")).is_ok());
        assert_eq!(parse_basename(&format!("{H}_x")).unwrap().name, "x");
    }

    #[test]
    fn rejects_bad_basenames() {
        for bad in [
            "short-name".to_string(),
            H.to_string(),
            format!("{H}-"),
            format!("{H}-sp ace"),
            format!("{}e-x", &H[..31]),
            format!("{H}x"),
        ] {
            assert!(parse_basename(&bad).is_err(), "{bad} accepted");
        }
    }

    #[test]
    fn store_path_of_handles_sub_paths() {
        let sd = StoreDir::new("/nix/store/");
        let p = format!("/nix/store/{H}-x/bin/tool");
        assert_eq!(sd.store_path_of(&p).unwrap(), format!("{H}-x"));
        assert!(sd.store_path_of("/nix/storex/a").is_err());
        assert!(sd.store_path_of("/nix/store").is_err());
        assert!(sd.store_path_of("/nix/store/notapath").is_err());
        assert_eq!(sd.join(&format!("{H}-x")), format!("/nix/store/{H}-x"));
    }
}
