//! Snapshot tests of the reports people read: `storegc plan` as text,
//! markdown and JSON (without a policy, and with one that uses closure
//! lists, `[select]`, generations, auto roots and a budget), `storegc
//! roots --sizes`, and `storegc explain` (text and JSON) of a live path
//! (its chain has a reference and a keep-derivations edge), a protected
//! one, and two deletable ones (unreachable; let go with an expired
//! generation). Each runs the real binary on the same synthetic store
//! (fixed seed, fixed "now"), written afresh in a temporary folder.
//!
//! What changes from run to run is filtered out before comparing: the
//! temporary folder (`[ROOT]`), the plan's creation time (`[CREATED]`, the
//! binary reads the clock) and every age, since ages are measured from
//! that clock (`[AGE] ago`). The store's "now" lies in 1990, so every
//! path and link is thousands of days old whatever the clock says: the
//! policy's "older than 14 days" holds for all of them, and the age column
//! keeps its width for a few centuries.
//!
//! The JSON plan lists about 1,300 deletions; its snapshot keeps the first
//! and last three, and in their place the count and a digest of the whole
//! list (the test also checks that the totals add up to the list).
//!
//! A mismatch fails the test (insta's default, in CI and out of it). After
//! an intended change: `INSTA_UPDATE=always cargo test --test reports`,
//! read the `.snap` files' diff, and commit them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use storegc::synth::{generate, SynthSpec, SynthStore};

/// 1990-01-01T00:00:00Z.
const NOW: i64 = 631_152_000;
const SEED: u64 = 5;
const PATHS: usize = 2_000;

/// The temporary folder's name: a fixed parent and prefix, and six random
/// characters, so every path has the same length in every run (the text
/// report's column widths depend on it).
const TMP_PARENT: &str = "/tmp";
const TMP_PREFIX: &str = "sg";

/// A generated store in a temporary folder, removed on drop.
struct Fixture {
    dir: tempfile::TempDir,
    store: SynthStore,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::Builder::new()
            .prefix(TMP_PREFIX)
            .rand_bytes(6)
            .tempdir_in(TMP_PARENT)
            .expect("creating a temp dir in /tmp");
        assert_eq!(
            dir.path().as_os_str().len(),
            TMP_PARENT.len() + 1 + TMP_PREFIX.len() + 6,
            "the temp folder's name has a fixed length"
        );
        let spec = SynthSpec {
            paths: PATHS,
            seed: SEED,
            now: NOW,
            ..SynthSpec::default()
        };
        let store = generate(dir.path(), &spec).expect("generating the store");
        Fixture { dir, store }
    }

    fn root(&self) -> &Path {
        self.dir.path()
    }

    /// `storegc ARGS...` pointed at this store, with the user's own Nix
    /// configuration and storegc's log settings out of the way; its stdout,
    /// which must be UTF-8, after checking it succeeded.
    fn storegc(&self, args: &[&str]) -> String {
        let t = self.root();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_storegc"));
        cmd.args(args)
            .envs(self.store.env())
            .env("HOME", t)
            .env("XDG_CONFIG_HOME", t.join("xdg"))
            .env("XDG_CONFIG_DIRS", t.join("xdg"))
            .env_remove("NIX_CONFIG")
            .env_remove("NIX_USER_CONF_FILES")
            .env_remove("STOREGC_LOG")
            .current_dir(t)
            .stdin(Stdio::null());
        let out = cmd.output().expect("running storegc");
        assert!(
            out.status.success(),
            "storegc {args:?} failed ({}):\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).expect("storegc printed UTF-8")
    }

    /// The database of the store, read-only.
    fn db(&self) -> rusqlite::Connection {
        rusqlite::Connection::open_with_flags(
            self.store.state_dir.join("db/db.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening the store database")
    }

    /// The first (by path) reference of `referrer` whose path ends with
    /// `suffix`.
    fn reference_named(&self, referrer: &str, suffix: &str) -> String {
        let db = self.db();
        let mut q = db
            .prepare(
                "SELECT v.path FROM Refs r JOIN ValidPaths v ON v.id = r.reference \
                 JOIN ValidPaths t ON t.id = r.referrer WHERE t.path = ?1 ORDER BY v.path",
            )
            .expect("query");
        let refs: Vec<String> = q
            .query_map([referrer], |row| row.get(0))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        refs.into_iter()
            .find(|p| p.ends_with(suffix))
            .unwrap_or_else(|| panic!("{referrer} has no reference named *{suffix}"))
    }

    /// The `deriver` column of `path`.
    fn deriver_of(&self, path: &str) -> String {
        self.db()
            .query_row(
                "SELECT deriver FROM ValidPaths WHERE path = ?1",
                [path],
                |row| row.get(0),
            )
            .unwrap_or_else(|e| panic!("{path}: no deriver: {e}"))
    }

    /// The policy of the `with_policy` snapshots, written beside the store
    /// with its closure list. It protects one unrooted old system (and
    /// names a path that is not valid, for a warning), selects only local
    /// paths, keeps the two newest system generations, expires CI results
    /// but not releases, and frees at most 1.7 GiB (of 1.8 deletable),
    /// oldest paths first: enough to expire roots of both kinds.
    fn write_policy(&self) -> PathBuf {
        let t = self.root();
        let list = t.join("hosts.txt");
        let missing = format!(
            "{}/00000000000000000000000000000000-not-built-yet",
            self.store.store_dir.display()
        );
        std::fs::write(
            &list,
            format!(
                "# other hosts' systems\n{}\n{missing}\n",
                self.store.garbage_toplevels[0]
            ),
        )
        .expect("writing the closure list");
        let policy = t.join("policy.toml");
        std::fs::write(
            &policy,
            r#"description = "snapshot test: cache + CI runner, 1.7 GiB at most"
[protect]
closure-lists = ["hosts.txt"]
[select]
origin = "local"
older-than = "14d"
[[generations]]
profile = "profiles/system"
keep-newest = 2
[auto-roots]
older-than = "14d"
match = ["*/ci/*/result"]
[budget]
max-freed = "1.5GiB"
order = "oldest-first"
"#,
        )
        .expect("writing the policy");
        policy
    }
}

/// The temporary folder: `/tmp/sg` and six random characters.
const ROOT_PATTERN: &str = r"/tmp/sg[0-9A-Za-z]{6}";

/// Runs `f` with the filters that make a report stable.
fn with_filters(f: impl FnOnce()) {
    let mut settings = insta::Settings::clone_current();
    settings.add_filter(ROOT_PATTERN, "[ROOT]");
    settings.add_filter(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z", "[CREATED]");
    settings.add_filter(r"\b\d+ (day|hour|minute)s? (ago|old)\b", "[AGE] $2");
    // Digests of policy inputs, whose text holds the temporary root.
    settings.add_filter(r#""sha256": "[0-9a-f]{64}""#, r#""sha256": "[SHA256]""#);
    // Where the tests run, root itself may be denied a process (a
    // container's pid 1): the plan then says its roots are incomplete,
    // which depends on the machine, not on the store. Text (wrapped),
    // markdown and JSON (the count, and the warning in its list).
    settings.add_filter(r"(?m)^(> )?warning: roots incomplete: .*\n(?:  .*\n)*", "");
    settings.add_filter(r#"(?m)^  "unreadable_processes": \d+,\n"#, "");
    settings.add_filter(r#"(?m)^    "roots incomplete: [^"]*",?\n"#, "");
    settings.add_filter(r#""warnings": \[\n  \]"#, r#""warnings": []"#);
    settings.set_prepend_module_to_snapshot(false);
    settings.bind(f);
}

/// Checks what the filters cannot repair: a temporary folder's name cut by
/// the text report's shortening would leave random characters behind. Only
/// basenames (no `/`) may be cut here.
fn assert_no_cut_paths(text: &str) {
    for l in text.lines() {
        if l.contains('…') {
            assert!(
                !l.contains('/'),
                "a path was cut, so the snapshot depends on the temp folder's name:\n{l}"
            );
        }
        assert!(l.chars().count() <= 80, "wider than 80 columns:\n{l}");
    }
}

/// A 64-bit FNV-1a digest in hex: stable across Rust versions, unlike
/// the standard library's hasher.
fn fnv1a(data: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The JSON plan as printed, but with its `delete` list cut to the first
/// and last three entries and a line in their place saying how many were
/// left out, with a digest of the whole list; after checking that the
/// list is sorted and the totals add up to it.
fn json_plan_for_snapshot(json: &str) -> String {
    let v: serde_json::Value = serde_json::from_str(json).expect("plan JSON");
    let delete = v["delete"].as_array().expect("delete list");
    let bytes: u64 = delete
        .iter()
        .map(|d| d["nar_size"].as_u64().expect("nar_size"))
        .sum();
    assert_eq!(v["totals"]["paths"].as_u64(), Some(delete.len() as u64));
    assert_eq!(v["totals"]["nar_bytes"].as_u64(), Some(bytes));
    let paths: Vec<&str> = delete
        .iter()
        .map(|d| d["path"].as_str().expect("path"))
        .collect();
    assert!(paths.windows(2).all(|w| w[0] < w[1]), "delete list sorted");

    // The pretty printer puts the list's entries, objects, at 4 spaces.
    let lines: Vec<&str> = json.lines().collect();
    let open = lines
        .iter()
        .position(|l| *l == "  \"delete\": [")
        .expect("a delete list");
    let close = open
        + lines[open..]
            .iter()
            .position(|l| l.starts_with("  ]"))
            .expect("the delete list's end");
    let mut entries: Vec<&[&str]> = Vec::new();
    let mut start = open + 1;
    for (i, l) in lines.iter().enumerate().take(close).skip(open + 1) {
        if l.starts_with("    }") {
            entries.push(&lines[start..=i]);
            start = i + 1;
        }
    }
    assert_eq!(entries.len(), delete.len(), "one object per deletion");
    let n = entries.len();
    if n <= 6 {
        return json.to_string();
    }
    let digest = fnv1a(without_root(&lines[open + 1..close].join("\n")).as_bytes());
    let mut out: Vec<String> = lines[..=open].iter().map(|l| l.to_string()).collect();
    out.extend(
        entries[..3]
            .iter()
            .flat_map(|e| e.iter().map(|l| l.to_string())),
    );
    out.push(format!(
        "    \"[{} more deletions; FNV-1a of the whole list: {digest}]\",",
        n - 6
    ));
    out.extend(
        entries[n - 3..]
            .iter()
            .flat_map(|e| e.iter().map(|l| l.to_string())),
    );
    out.extend(lines[close..].iter().map(|l| l.to_string()));
    out.join("\n") + "\n"
}

/// `text` with the temporary folder's name replaced by `[ROOT]`, as the
/// snapshot filter does.
fn without_root(text: &str) -> String {
    let marker = format!("{TMP_PARENT}/{TMP_PREFIX}");
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(&marker) {
        out.push_str(&rest[..i]);
        out.push_str("[ROOT]");
        rest = rest[i + marker.len()..].get(6..).unwrap_or("");
    }
    out.push_str(rest);
    out
}

#[test]
fn plan_without_policy() {
    let fx = Fixture::new();
    let text = fx.storegc(&["plan"]);
    assert_no_cut_paths(&text);
    let markdown = fx.storegc(&["plan", "--format", "markdown"]);
    let json = json_plan_for_snapshot(&fx.storegc(&["plan", "--format", "json"]));
    with_filters(|| {
        insta::assert_snapshot!("plan_text", text);
        insta::assert_snapshot!("plan_markdown", markdown);
        insta::assert_snapshot!("plan_json", json);
    });
}

#[test]
fn plan_with_policy() {
    let fx = Fixture::new();
    let policy = fx.write_policy();
    let policy = policy.to_str().expect("UTF-8 temp path");
    let text = fx.storegc(&["plan", "--policy", policy]);
    assert_no_cut_paths(&text);
    let markdown = fx.storegc(&["plan", "--policy", policy, "--format", "markdown"]);
    let json =
        json_plan_for_snapshot(&fx.storegc(&["plan", "--policy", policy, "--format", "json"]));
    // What the policy is there to show.
    for (what, needle) in [
        ("closure list", "by closure lists"),
        ("select", "not selected by the policy"),
        ("budget", "left by the budget"),
        ("generations", "expired-generation"),
        ("auto roots", "auto root matching"),
        ("warning", "warning: "),
    ] {
        assert!(text.contains(needle), "no {what} in the report:\n{text}");
    }
    with_filters(|| {
        insta::assert_snapshot!("plan_policy_text", text);
        insta::assert_snapshot!("plan_policy_markdown", markdown);
        insta::assert_snapshot!("plan_policy_json", json);
    });
}

#[test]
fn roots_with_sizes() {
    let fx = Fixture::new();
    let text = fx.storegc(&["roots", "--sizes"]);
    with_filters(|| insta::assert_snapshot!("roots_sizes_text", text));
}

#[test]
fn explain_live_protected_and_deletable() {
    let fx = Fixture::new();
    let policy = fx.write_policy();
    let policy = policy.to_str().expect("UTF-8 temp path");
    // Live: the `.drv` of the current system's `system-path`, kept by a
    // reference and a keep-derivations edge below the profile's link.
    let current = fx.store.toplevels.last().expect("a system generation");
    let system_path = fx.reference_named(current, "-system-path");
    let live = fx.deriver_of(&system_path);
    // Protected: the `etc` of the system the closure list names.
    let protected = fx.reference_named(&fx.store.garbage_toplevels[0], "-etc");
    // Deletable: the largest deletion without a policy (unreachable), and
    // the largest one the policy's expired generations let go.
    let largest = |plan: &str, reason: &str| -> String {
        let plan: serde_json::Value = serde_json::from_str(plan).expect("plan JSON");
        plan["delete"]
            .as_array()
            .expect("delete list")
            .iter()
            .filter(|d| d["reason"] == reason)
            .max_by_key(|d| {
                (
                    d["nar_size"].as_u64(),
                    d["path"].as_str().map(str::to_string),
                )
            })
            .and_then(|d| d["path"].as_str())
            .unwrap_or_else(|| panic!("no deletion for {reason}"))
            .to_string()
    };
    let unreachable = largest(&fx.storegc(&["plan", "--format", "json"]), "unreachable");
    let expired = largest(
        &fx.storegc(&["plan", "--policy", policy, "--format", "json"]),
        "expired-generation",
    );
    let cases = [
        ("explain_live", &live, None, "live", 2),
        (
            "explain_protected",
            &protected,
            Some(policy),
            "protected",
            1,
        ),
        ("explain_unreachable", &unreachable, None, "deletable", 0),
        ("explain_expired", &expired, Some(policy), "deletable", 0),
    ];
    for (name, path, policy, status, edges) in cases {
        let mut args = vec!["explain", path.as_str()];
        if let Some(p) = policy {
            args.extend(["--policy", p]);
        }
        let text = fx.storegc(&args);
        args.extend(["--format", "json"]);
        let json = fx.storegc(&args);
        let v: serde_json::Value = serde_json::from_str(&json).expect("explain JSON");
        assert_eq!(v["status"], status, "{path}: {v:#}");
        let chain = v["chain"].as_array().expect("chain");
        assert_eq!(chain.len().saturating_sub(1), edges, "{path}: {v:#}");
        with_filters(|| {
            insta::assert_snapshot!(format!("{name}_text"), text);
            insta::assert_snapshot!(format!("{name}_json"), json);
        });
    }
}
