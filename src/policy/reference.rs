//! The policy file format in words, one entry per key: the source of
//! `storegc man policy` (storegc-policy(5)). Kept beside the parser so a
//! key added there without a line here fails the tests below.

use clap_mangen::roff::{bold, italic, roman, Roff};

/// One key of the policy file.
pub struct KeyDoc {
    /// `table.key`, or `key` at the top level.
    pub key: &'static str,
    /// The TOML type it takes.
    pub value: &'static str,
    pub meaning: &'static str,
}

/// Every key the parser accepts, in the order a policy file is read.
pub const KEYS: &[KeyDoc] = &[
    KeyDoc {
        key: "description",
        value: "string",
        meaning: "Shown by storegc policy check and recorded in plans.",
    },
    KeyDoc {
        key: "protect.closure-lists",
        value: "array of file names",
        meaning: "Files with one store path a line (# starts a comment); each listed path is kept with its whole closure. Relative names resolve against the policy file's folder. A missing file makes plan fail (policy check warns); a listed path that is not valid yet is a warning.",
    },
    KeyDoc {
        key: "protect.paths",
        value: "array of store paths",
        meaning: "Store paths kept with their closures.",
    },
    KeyDoc {
        key: "protect.names",
        value: "array of globs",
        meaning: "Paths whose name (the part after the hash) matches are kept with their closures.",
    },
    KeyDoc {
        key: "protect.build-closures",
        value: "boolean (default false)",
        meaning: "Also keep, for every path of the closure lists and protect.paths, its deriver's closure (input derivations, sources) and the valid outputs of every .drv in it, with their closures: what the next build of the same configuration needs without rebuilding or fetching. Counted as kept by build closures.",
    },
    KeyDoc {
        key: "select.origin",
        value: "\"any\", \"local\" or \"substituted\"",
        meaning: "Which unrooted paths may go: built here (ultimate, no signatures), fetched from a cache (signed), or any.",
    },
    KeyDoc {
        key: "select.older-than",
        value: "duration (\"14d\", \"2h 30m\")",
        meaning: "Only paths registered at least this long ago may go.",
    },
    KeyDoc {
        key: "select.dead-for",
        value: "duration",
        meaning: "The rollback window: a path goes only once storegc has seen it deletable (no remaining root or protection keeps it) for at least this long without a break. The dates are kept in $NIX_STATE_DIR/storegc/dead-since (plan --state-file), written by plan --out and apply, never by a plain plan; a path that is live again loses its date. Without a state file nothing goes by this rule (first run). A corrupt or foreign state file stops plan and apply (exit 2). A root whose target the window keeps is not expired.",
    },
    KeyDoc {
        key: "select.names",
        value: "array of globs",
        meaning: "Only paths whose name matches may go (default: any name).",
    },
    KeyDoc {
        key: "select.exclude-names",
        value: "array of globs",
        meaning: "Paths whose name matches never go (they stay, their closures need not).",
    },
    KeyDoc {
        key: "generations.profile",
        value: "path of a profile link",
        meaning: "One [[generations]] table per profile: its old generation links expire. Relative names resolve against the Nix state directory; profiles under ~/.local/state/nix/profiles (Nix 2.14+) are named by absolute path. The current generation never expires.",
    },
    KeyDoc {
        key: "generations.keep-newest",
        value: "integer, 0 or more",
        meaning: "The N highest-numbered generations stay. A [[generations]] table needs keep-newest or keep-since; keep-newest = 0 says on purpose that every generation but the current one may expire.",
    },
    KeyDoc {
        key: "generations.keep-since",
        value: "duration",
        meaning: "Generations whose link is younger than this stay.",
    },
    KeyDoc {
        key: "auto-roots.older-than",
        value: "duration",
        meaning: "Indirect roots registered under gcroots/auto (result links) whose link is at least this old expire. Generations of a profile are never auto roots.",
    },
    KeyDoc {
        key: "auto-roots.match",
        value: "array of globs",
        meaning: "Only auto roots whose link path matches expire (\"*/result\", \"/var/lib/gitea-runner/*/result-*\").",
    },
    KeyDoc {
        key: "auto-roots.keep-newest",
        value: "integer, 0 or more",
        meaning: "The N newest (by link mtime) matching links of each group never expire, whatever their age.",
    },
    KeyDoc {
        key: "auto-roots.group-by",
        value: "\"folder\" (default) or a pattern with ( ) captures",
        meaning: "How keep-newest groups links: by the link's folder, or by what the ( ) parts of a pattern on the whole link path match (\"/var/lib/gitea-runner/*/(*)/(*)/**\": owner and repository). In a pattern * and ? stay within one path component and ** crosses /. A link the pattern does not match is a group of its own (a plan warning says so). Needs keep-newest.",
    },
    KeyDoc {
        key: "budget.max-freed",
        value: "size (\"100GiB\"), bytes, or a percentage of the store's filesystem (\"10%\")",
        meaning: "Stop once this much (narSize) is freed; the last group taken (a path with its referrers) may go over. A percentage is of the filesystem's size (statvfs); when that cannot be measured, nothing is deleted.",
    },
    KeyDoc {
        key: "budget.until-free",
        value: "size, bytes, or a percentage of the store's filesystem (\"15%\")",
        meaning: "Only free until the store's filesystem has this much available (a percentage is of the filesystem's size); nothing is deleted when it has already, or when free space cannot be measured.",
    },
    KeyDoc {
        key: "budget.order",
        value: "\"oldest-first\" or \"largest-first\"",
        meaning: "Which deletable paths the budget takes first.",
    },
];

/// `storegc-policy(5)`. Deterministic: no date.
pub fn man_page() -> String {
    let mut page = Roff::default();
    page.control("TH", ["storegc-policy", "5", "", "", "storegc manual"])
        .control("SH", ["NAME"])
        .text([roman(
            "storegc-policy - the policy file of storegc plan --policy",
        )])
        .control("SH", ["DESCRIPTION"])
        .text([roman(
            "A policy is a TOML file. Nix's roots are always honoured; a policy can only \
             expire generation links and auto roots, protect paths Nix would delete, and \
             choose which of the remaining unrooted paths go. Every key is optional. \
             Bad input stops storegc with exit status 2 and one line naming the file, \
             line and key.",
        )])
        .control("SH", ["KEYS"]);
    for k in KEYS {
        page.control("TP", [])
            .text([bold(k.key), roman(" ("), italic(k.value), roman(")")])
            .text([roman(k.meaning)]);
    }
    page.control("SH", ["EXAMPLE"])
        .control("nf", [])
        .text([roman(EXAMPLE)])
        .control("fi", [])
        .control("SH", ["SEE ALSO"])
        .text([bold("storegc"), roman("(1)")]);
    page.render()
}

/// A policy using every key (checked to parse).
pub const EXAMPLE: &str = r#"description = "binary cache + native CI runner"
[protect]
closure-lists = ["/var/lib/storegc/nixos-configurations.txt"]
paths = []
names = ["*-source"]
build-closures = true
[select]
origin = "local"
older-than = "14d"
dead-for = "7d"
names = ["*"]
exclude-names = ["*.drv"]
[[generations]]
profile = "/nix/var/nix/profiles/system"
keep-newest = 5
keep-since = "30d"
[auto-roots]
older-than = "14d"
match = ["*/result", "*/result-*"]
keep-newest = 3
group-by = "/var/lib/gitea-runner/*/(*)/(*)/**"
[budget]
max-freed = "100GiB"
until-free = "15%"
order = "oldest-first"
"#;

#[cfg(test)]
mod tests {
    use super::*;

    /// `table.key` for every key of a TOML text.
    fn keys_of(text: &str) -> Vec<String> {
        let value: toml::Table = toml::from_str(text).unwrap();
        let mut keys = Vec::new();
        for (k, v) in &value {
            match v {
                toml::Value::Table(t) => keys.extend(t.keys().map(|s| format!("{k}.{s}"))),
                toml::Value::Array(a) if a.iter().all(|x| x.is_table()) => {
                    for t in a.iter().filter_map(|x| x.as_table()) {
                        keys.extend(t.keys().map(|s| format!("{k}.{s}")));
                    }
                }
                _ => keys.push(k.clone()),
            }
        }
        keys.sort();
        keys.dedup();
        keys
    }

    #[test]
    fn the_example_uses_every_documented_key_and_parses() {
        let mut documented: Vec<String> = KEYS.iter().map(|k| k.key.to_string()).collect();
        documented.sort();
        assert_eq!(keys_of(EXAMPLE), documented);
        super::super::file::parse_policy(EXAMPLE, std::path::Path::new("example.toml"))
            .expect("the man page's example parses");
    }

    #[test]
    fn an_undocumented_key_is_refused_in_every_table() {
        for table in [
            "",
            "[protect]\n",
            "[select]\n",
            "[auto-roots]\nolder-than = \"1d\"\nmatch = []\n",
            "[budget]\n",
            "[[generations]]\nprofile = \"p\"\nkeep-newest = 1\n",
        ] {
            let text = format!("{table}undocumented = 1\n");
            assert!(
                super::super::file::parse_policy(&text, std::path::Path::new("x.toml")).is_err(),
                "accepted {text:?}"
            );
        }
    }

    #[test]
    fn man_page_names_every_key() {
        let page = man_page();
        assert!(page.contains("\n.TH storegc-policy 5 "), "{page}");
        for k in KEYS {
            assert!(page.contains(&k.key.replace('-', "\\-")), "{}", k.key);
        }
    }
}
