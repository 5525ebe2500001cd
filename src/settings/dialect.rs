//! The Nix versions whose reading of nix.conf differs in a way that can
//! change liveness, as data: each `Dialect` says which rules one range of
//! versions follows. `mod.rs` reads the configuration once per dialect and
//! keeps the reading that keeps more paths.
//!
//! Found by reading `globals.cc`, `users.cc`, `config.cc` in NixOS/nix
//! (2.8.0 to master) and Lix (2.90 to main).

/// How a folder and a name are joined when the folder is an empty string
/// (e.g. `XDG_CONFIG_HOME=""`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Join {
    /// String concatenation `dir + "/nix.conf"`: `""` gives `/nix.conf`
    /// (Nix to 2.32, Lix).
    Concat,
    /// `std::filesystem::path` `/`: `""` gives `nix.conf`, relative to the
    /// working folder (Nix 2.33+).
    Fs,
}

/// One range of Nix versions and the rules it reads nix.conf by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dialect {
    pub name: &'static str,
    /// `$HOME` not owned by the effective user is replaced by the passwd
    /// entry's home (Nix 2.10+, Lix).
    pub home_must_be_owned: bool,
    /// `NIX_CONFIG_HOME` replaces `~/.config/nix` (Nix 2.25+).
    pub nix_config_home: bool,
    pub join: Join,
    /// `include ~/x` in user files means `$HOME/x`; `~` in the system file
    /// and any include in `NIX_CONFIG` are errors (Lix 2.92+).
    pub tilde_includes: bool,
    /// A missing home (no `HOME`, no passwd entry) skips `~/.config`
    /// instead of failing (Lix).
    pub home_optional: bool,
    /// `ca-derivations` is a known experimental feature (all but Lix 2.94+).
    pub knows_ca: bool,
}

const NIX: Dialect = Dialect {
    name: "Nix 2.8-2.9",
    home_must_be_owned: false,
    nix_config_home: false,
    join: Join::Concat,
    tilde_includes: false,
    home_optional: false,
    knows_ca: true,
};

const LIX: Dialect = Dialect {
    name: "Lix 2.90-2.91",
    home_must_be_owned: true,
    home_optional: true,
    ..NIX
};

/// Every dialect, oldest Nix first, then Lix.
pub const DIALECTS: [Dialect; 7] = [
    NIX,
    Dialect {
        name: "Nix 2.10-2.24",
        home_must_be_owned: true,
        ..NIX
    },
    Dialect {
        name: "Nix 2.25-2.32",
        home_must_be_owned: true,
        nix_config_home: true,
        ..NIX
    },
    Dialect {
        name: "Nix 2.33+",
        home_must_be_owned: true,
        nix_config_home: true,
        join: Join::Fs,
        ..NIX
    },
    LIX,
    Dialect {
        name: "Lix 2.92-2.93",
        tilde_includes: true,
        ..LIX
    },
    Dialect {
        name: "Lix 2.94+",
        tilde_includes: true,
        knows_ca: false,
        ..LIX
    },
];

impl Join {
    /// `dir` joined with `name` the way this dialect does it.
    pub fn join(self, dir: &str, name: &str) -> String {
        match (self, dir.is_empty()) {
            (Join::Fs, true) => name.to_string(),
            _ if dir.ends_with('/') && self == Join::Fs => format!("{dir}{name}"),
            _ => format!("{dir}/{name}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_folder_joins_to_root_or_relative() {
        assert_eq!(Join::Concat.join("", "nix.conf"), "/nix.conf");
        assert_eq!(Join::Fs.join("", "nix.conf"), "nix.conf");
        assert_eq!(Join::Fs.join("/a", "nix.conf"), "/a/nix.conf");
    }

    #[test]
    fn names_are_unique() {
        let names: std::collections::BTreeSet<_> = DIALECTS.iter().map(|d| d.name).collect();
        assert_eq!(names.len(), DIALECTS.len());
    }
}
