//! Policies on a real Nix store shaped like a fleet's binary cache that is
//! also a native CI runner: three hosts whose systems share a glibc-like
//! base and libraries, six CI commits spread over a month (each rebuilding
//! part of the graph: new content, new output paths), paths substituted
//! from an upstream cache (signed, not built here), a system profile with
//! one generation per commit (rolled back once), `result` roots left by CI
//! jobs, and a closure list naming every host's current system, one host
//! lagging behind and one entry not built yet.
//!
//! storegc's plan is checked against the semantics of the policy engine
//! computed here, independently, from the store database and from Nix's
//! own `--print-roots`: the delete set, the expired roots, each deleted
//! path's reason and the kept tallies must be exactly those. Then against
//! Nix itself: once the expired roots are gone the plan is a subset of
//! `nix-store --gc --print-dead`, and `storegc apply` of the plan leaves a
//! store that `nix-store --verify` calls clean, with every protected
//! closure whole. Budgets (`--max-freed`, `--until-free`) and bad policy
//! input through the binary are checked on the same kind of store; two
//! small regression tests pin bugs the scenario found (a generation link
//! that is also a `gcroots/auto` root, `until-free` already met).
//!
//! Registration times, link ages and signatures are set by hand after the
//! builds (Nix stamps everything "now" and signs nothing here): the
//! database is rewritten with rusqlite while no Nix process runs, and link
//! mtimes with `touch -h`. Everything random is seeded; rerun a seed with
//! `STOREGC_POLICY_SEED=<seed> cargo test --test policy_nix`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{run_ok, GcConf, NixRoot, NixStore, Rng, Snapshot};
use serde_json::Value;

const DAY: i64 = 86_400;
const HOUR: i64 = 3_600;

/// Age in days of each CI commit when the scenario is built, oldest first.
/// None is within a day of the 14-day and 20-day thresholds below.
const COMMIT_AGES: [i64; 6] = [31, 25, 19, 13, 7, 1];
/// `select.older-than` and `auto-roots.older-than`, in days.
const OLDER_THAN_DAYS: i64 = 14;
/// `generations.keep-newest`.
const KEEP_NEWEST: usize = 1;
/// `generations.keep-since`, in days.
const KEEP_SINCE_DAYS: i64 = 20;
/// This host: its system profile gets one generation per commit.
const CACHE_HOST: &str = "nix-cache02";
/// The host whose closure-list entry is an older system...
const LAGGING_HOST: &str = "web01";
/// ...the one of this commit.
const LAGGING_COMMIT: usize = 1;
/// The commit this host's profile is rolled back to: its generation
/// (`commit + 1`) is the current one, and not the newest.
const ROLLBACK_COMMIT: usize = 4;
/// The default seed (any seed gives the same shape; versions, jitter and
/// hashes differ).
const SEED: u64 = 20_260_301;

/// A package of the fleet. Its output names `deps` (run-time references);
/// `build_only` are inputs its output does not mention.
struct Package {
    name: &'static str,
    deps: &'static [&'static str],
    build_only: &'static [&'static str],
    /// Bytes of filler, so sizes differ.
    pad: usize,
    /// Has a `dev` output (headers) besides `out`.
    dev: bool,
}

const PACKAGES: [Package; 9] = [
    Package {
        name: "glibc",
        deps: &[],
        build_only: &[],
        pad: 24_000,
        dev: false,
    },
    Package {
        name: "zlib",
        deps: &["glibc"],
        build_only: &[],
        pad: 3_000,
        dev: false,
    },
    Package {
        name: "openssl",
        deps: &["glibc"],
        build_only: &[],
        pad: 9_000,
        dev: true,
    },
    Package {
        name: "python",
        deps: &["glibc", "zlib", "openssl"],
        build_only: &["openssl.dev"],
        pad: 16_000,
        dev: false,
    },
    Package {
        name: "nginx",
        deps: &["glibc", "zlib", "openssl"],
        build_only: &["openssl.dev"],
        pad: 5_000,
        dev: false,
    },
    Package {
        name: "postgresql",
        deps: &["glibc", "openssl"],
        build_only: &[],
        pad: 12_000,
        dev: false,
    },
    Package {
        name: "harmonia",
        deps: &["glibc", "openssl"],
        build_only: &[],
        pad: 4_000,
        dev: false,
    },
    Package {
        name: "forgejo-runner",
        deps: &["glibc"],
        build_only: &[],
        pad: 7_000,
        dev: false,
    },
    Package {
        name: "nixos-exporter",
        deps: &["glibc"],
        build_only: &[],
        pad: 2_000,
        dev: false,
    },
];

/// The fleet: each host's system refers to these packages (and glibc).
const HOSTS: [(&str, &[&str]); 3] = [
    (
        CACHE_HOST,
        &["nginx", "harmonia", "forgejo-runner", "nixos-exporter"],
    ),
    ("db01", &["postgresql", "python", "nixos-exporter"]),
    (LAGGING_HOST, &["nginx", "python"]),
];

fn seed() -> u64 {
    match std::env::var("STOREGC_POLICY_SEED") {
        Ok(s) if !s.trim().is_empty() => {
            s.trim().parse().expect("STOREGC_POLICY_SEED must be a u64")
        }
        _ => SEED,
    }
}

fn unix_now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock after 1970")
        .as_secs() as i64
}

/// `touch -h -d @time link`: sets a link's own mtime.
fn set_link_mtime(link: &Path, time: i64) {
    run_ok(
        Command::new("touch")
            .args(["-h", "-d"])
            .arg(format!("@{time}"))
            .arg(link),
    );
}

fn lstat_mtime(p: &Path) -> i64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::symlink_metadata(p)
        .unwrap_or_else(|e| panic!("lstat {}: {e}", p.display()))
        .mtime()
}

fn read_link(p: &Path) -> String {
    std::fs::read_link(p)
        .unwrap_or_else(|e| panic!("readlink {}: {e}", p.display()))
        .display()
        .to_string()
}

/// The name part of a store path (after `<hash>-`).
fn name_of(path: &str) -> &str {
    let base = path.rsplit('/').next().unwrap_or(path);
    base.get(33..).unwrap_or(base)
}

/// The package's name at version `v`.
fn package_name(p: &Package, v: u32) -> String {
    if p.name == "glibc" {
        format!("glibc-2.{}", 37 + v)
    } else {
        format!("{}-1.{v}", p.name)
    }
}

/// The fleet's configuration at one commit, as a Nix expression:
/// `packages.<name>`, `hosts.<host>` (the system toplevels) and
/// `cancelled` (a CI job only ever instantiated).
fn expression(builder: &str, rev: usize, versions: &BTreeMap<&str, u32>) -> String {
    let mut s = String::from("let\n");
    let _ = writeln!(s, "  builder = builtins.storePath \"{builder}\";");
    s.push_str(
        "  mk = args: derivation ({ system = builtins.currentSystem; inherit builder; } // args);\n",
    );
    for p in &PACKAGES {
        let name = package_name(p, versions[p.name]);
        let refs: String = p.deps.iter().map(|d| format!(" ${{{d}}}")).collect();
        let mut attrs = format!(
            "name = \"{name}\"; text_out = \"{name}{refs}\\n{}\\n\";",
            "x".repeat(p.pad)
        );
        if p.dev {
            attrs.push_str(
                " outputs = [ \"out\" \"dev\" ]; text_dev = \"headers of ${placeholder \"out\"}\\n\";",
            );
        }
        if !p.build_only.is_empty() {
            let ins: Vec<String> = p.build_only.iter().map(|d| format!("${{{d}}}")).collect();
            let _ = write!(attrs, " build_inputs = \"{}\";", ins.join(" "));
        }
        let _ = writeln!(s, "  {} = mk {{ {attrs} }};", p.name);
    }
    for (host, pkgs) in HOSTS {
        let refs: String = pkgs.iter().map(|d| format!(" ${{{d}}}")).collect();
        let _ = writeln!(
            s,
            "  conf-{host} = builtins.toFile \"configuration-{host}\" \"hostName={host} rev=r{rev}\\n\";"
        );
        let _ = writeln!(
            s,
            "  etc-{host} = mk {{ name = \"etc-{host}\"; kind_out = \"dir\"; text_out = \"etc of {host} ${{conf-{host}}}{refs}\\n\"; }};"
        );
        let _ = writeln!(
            s,
            "  system-{host} = mk {{ name = \"nixos-system-{host}-r{rev}\"; kind_out = \"dir\"; text_out = \"system {host} r{rev} ${{etc-{host}}} ${{glibc}}{refs}\\n\"; }};"
        );
    }
    let _ = writeln!(
        s,
        "  cancelled = mk {{ name = \"nixos-exporter-pr{rev}\"; text_out = \"pr build r{rev} ${{glibc}}\\n\"; }};"
    );
    let names: Vec<&str> = PACKAGES.iter().map(|p| p.name).collect();
    let _ = writeln!(s, "in {{\n  packages = {{ inherit {}; }};", names.join(" "));
    let hosts: Vec<String> = HOSTS
        .iter()
        .map(|(h, _)| format!("{h} = system-{h};"))
        .collect();
    let _ = writeln!(s, "  hosts = {{ {} }};", hosts.join(" "));
    s.push_str("  inherit cancelled;\n}\n");
    s
}

/// How the scenario marks a path's origin in the database, by name:
/// `Some((sigs, ultimate))`, or `None` to leave it as Nix wrote it.
fn origin_override(name: &str) -> Option<(String, Option<i64>)> {
    if name.ends_with(".drv") {
        return None;
    }
    const UPSTREAM: &str = "cache.nixos.org-1:ZH3X0dbl7kXG6SS7ST2WzFqdN1Fz7vAHM0xRJ8UPGjN1RnqCHyHxKkNdz6bQ0ZxTgvSDTiFFx21HwGoOGPBWCA==";
    const COMMUNITY: &str =
        "nix-community.cachix.org-1:mB9FSh9qf2dCimDSUo8Zy7bkq5CX+/rkCWyvRCYg3Fs=";
    const HERE: &str = "nix-cache02-1:Bx1E2fs0IuK9k3gTSHx6dbZRkC7tmFJr4gV4cTO8LW6DkH1dAxXkJkq9ZbWQ0lCvJ0bKc9TGm1XjZp6xNHaXDg==";
    let package = |p: &str| name.starts_with(&format!("{p}-"));
    if package("glibc") || package("openssl") {
        // Substituted: signed upstream, not built here.
        Some((UPSTREAM.into(), Some(0)))
    } else if package("zlib") {
        // Substituted, `ultimate` NULL as older Nix wrote it.
        Some((format!("{UPSTREAM} {COMMUNITY}"), None))
    } else if package("nginx") {
        // Built here and signed by this cache: local.
        Some((HERE.into(), Some(1)))
    } else if package("python") {
        // Neither signed nor built here (copied in unsigned): local.
        Some((String::new(), Some(0)))
    } else {
        None
    }
}

/// One CI commit as built.
struct Commit {
    time: i64,
    /// Host -> its system toplevel at this commit.
    systems: BTreeMap<&'static str, String>,
}

/// A generation link of the system profile.
struct Generation {
    number: u64,
    link: PathBuf,
}

/// The built scenario. Ages are relative to the clock when it was built.
struct Fleet {
    seed: u64,
    commits: Vec<Commit>,
    profile: PathBuf,
    generations: Vec<Generation>,
    current_generation: u64,
    /// Valid paths named by the closure list, in list order.
    listed: Vec<String>,
    /// The list's well-formed entry that is not valid.
    missing_listed: String,
    policy_file: PathBuf,
    store: NixStore,
}

impl Fleet {
    /// Builds the scenario: about 30 Nix invocations.
    fn build(seed: u64) -> Fleet {
        eprintln!(
            "policy_nix: seed {seed} (rerun: STOREGC_POLICY_SEED={seed} cargo test --test policy_nix)"
        );
        let store = NixStore::new();
        let mut rng = Rng::new(seed);
        let now = unix_now();
        let t = store.root().to_path_buf();
        let builder = store.builder().to_string();
        let profile = store.profiles_dir().join("system");
        let os = |s: &str| OsString::from(s);

        // Stage 0: what exists before the first commit; stage k + 1: commit k.
        let mut stage: BTreeMap<String, usize> =
            Db::read(&store).paths.into_iter().map(|p| (p, 0)).collect();
        let mut versions: BTreeMap<&str, u32> = PACKAGES.iter().map(|p| (p.name, 0)).collect();
        let mut commits: Vec<Commit> = Vec::new();
        let mut links: Vec<(PathBuf, i64)> = Vec::new();
        for (k, age) in COMMIT_AGES.iter().enumerate() {
            let time = now - age * DAY + rng.below(2 * HOUR as usize) as i64;
            if k > 0 {
                for p in &PACKAGES {
                    let bump = match (p.name, k) {
                        // A mass rebuild.
                        ("glibc", _) => k == 2,
                        // The CI repository's own app.
                        ("nixos-exporter", _) => true,
                        // So that every origin rule has old paths to judge.
                        ("nginx" | "python" | "zlib", 1) | ("python", 3) => true,
                        _ => rng.chance(0.35),
                    };
                    if bump {
                        *versions.get_mut(p.name).expect("package") += 1;
                    }
                }
            }
            let expr = t.join(format!("fleet-r{k}.nix"));
            std::fs::write(&expr, expression(&builder, k, &versions)).expect("writing fleet");
            let ci = t.join("ci").join(format!("r{k}"));
            let nix_build = |attr: &str, link: &Path| {
                std::fs::create_dir_all(link.parent().expect("parent")).expect("mkdir");
                store.run(
                    "nix-build",
                    &[
                        expr.as_os_str(),
                        OsStr::new("--quiet"),
                        OsStr::new("-A"),
                        OsStr::new(attr),
                        OsStr::new("-o"),
                        link.as_os_str(),
                    ],
                );
            };
            // CI: every host's system, the exporter app, sometimes headers.
            let mut systems = BTreeMap::new();
            for (host, _) in HOSTS {
                let link = ci.join(format!("system-{host}")).join("result");
                nix_build(&format!("hosts.{host}"), &link);
                systems.insert(host, read_link(&link));
                links.push((link, time + HOUR));
            }
            let link = ci.join("nixos-exporter").join("result");
            nix_build("packages.nixos-exporter", &link);
            links.push((link, time + HOUR));
            if k == 0 || k == 4 {
                let link = ci.join("openssl").join("result");
                nix_build("packages.openssl.dev", &link);
                let dev = ci.join("openssl").join("result-dev");
                assert!(dev.is_symlink(), "nix-build made no {}", dev.display());
                links.push((dev, time + HOUR));
            }
            if k == 0 {
                // A developer's own `result`, outside the CI folders: old,
                // but not matched by the policy.
                let link = t.join("home/ops/postgresql/result");
                nix_build("packages.postgresql", &link);
                links.push((link, time + HOUR));
                // A plain root, never expired: the harmonia this host pins.
                let out = store.run(
                    "nix-build",
                    &[
                        expr.as_os_str(),
                        OsStr::new("--quiet"),
                        OsStr::new("--no-out-link"),
                        OsStr::new("-A"),
                        OsStr::new("packages.harmonia"),
                    ],
                );
                store.add_gcroot_link("pinned/harmonia", out.trim());
            }
            // A pull-request job cancelled after evaluation: a .drv only.
            store.run(
                "nix-instantiate",
                &[expr.clone().into_os_string(), os("-A"), os("cancelled")],
            );
            // A CI log added to the store, referenced by nothing.
            store.add_text(&format!("ci-log-r{k}"), &format!("log of r{k}\n"));
            // Deploy this host.
            store.set_profile(&profile, &systems[CACHE_HOST]);
            for p in Db::read(&store).paths {
                stage.entry(p).or_insert(k + 1);
            }
            commits.push(Commit { time, systems });
        }
        // A bad deploy, rolled back: the current generation is not the newest.
        store.run(
            "nix-env",
            &[
                os("-p"),
                profile.clone().into_os_string(),
                os("--switch-generation"),
                os(&(ROLLBACK_COMMIT + 1).to_string()),
            ],
        );
        let current_generation = ROLLBACK_COMMIT as u64 + 1;
        assert_eq!(
            read_link(&profile),
            format!("system-{current_generation}-link"),
            "the rollback did not take"
        );

        // Link ages.
        let mut generations = Vec::new();
        for (k, c) in commits.iter().enumerate() {
            let number = k as u64 + 1;
            let link = store.profiles_dir().join(format!("system-{number}-link"));
            assert_eq!(
                read_link(&link),
                c.systems[CACHE_HOST],
                "generation {number}"
            );
            set_link_mtime(&link, c.time + 2 * HOUR);
            generations.push(Generation { number, link });
        }
        for (link, time) in &links {
            set_link_mtime(link, *time);
        }

        // Registration times and origins (no Nix process runs now).
        let conn = rusqlite::Connection::open(store.db_path()).expect("opening db.sqlite");
        {
            let mut q = conn
                .prepare("SELECT path, deriver, ultimate FROM ValidPaths")
                .expect("query");
            let rows = q
                .query_map([], |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, Option<String>>(1)?,
                        r.get::<_, Option<i64>>(2)?,
                    ))
                })
                .expect("query")
                .collect::<Result<Vec<_>, _>>()
                .expect("rows");
            // Nix marks what it built here as ultimate.
            for (path, deriver, ultimate) in &rows {
                if deriver.is_some() && !path.ends_with(".drv") {
                    assert_eq!(*ultimate, Some(1), "{path} was built here, not ultimate");
                }
            }
        }
        let tx = conn.unchecked_transaction().expect("transaction");
        for (path, &s) in &stage {
            let time = if s == 0 {
                commits[0].time - DAY
            } else {
                commits[s - 1].time + rng.below(HOUR as usize) as i64
            };
            tx.execute(
                "UPDATE ValidPaths SET registrationTime = ?1 WHERE path = ?2",
                rusqlite::params![time, path],
            )
            .expect("setting registrationTime");
            if let Some((sigs, ultimate)) = origin_override(name_of(path)) {
                tx.execute(
                    "UPDATE ValidPaths SET sigs = ?1, ultimate = ?2 WHERE path = ?3",
                    rusqlite::params![sigs, ultimate, path],
                )
                .expect("setting sigs");
            }
        }
        tx.commit().expect("commit");
        drop(conn);

        // The closure list (next to the policy, named relatively) and the
        // policy.
        let dir = t.join("etc/storegc");
        std::fs::create_dir_all(&dir).expect("mkdir");
        let last = commits.last().expect("commits");
        let mut list = String::from("# nixosConfigurations.<host>.config.system.build.toplevel\n");
        let mut listed = Vec::new();
        for (host, _) in HOSTS {
            if host == LAGGING_HOST {
                let p = &commits[LAGGING_COMMIT].systems[host];
                let _ = writeln!(list, "{p}   # {host} is still on r{LAGGING_COMMIT}");
                listed.push(p.clone());
            } else {
                let _ = writeln!(list, "{}", last.systems[host]);
                listed.push(last.systems[host].clone());
            }
        }
        const NIX_BASE32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let hash: String = (0..32).map(|_| NIX_BASE32[rng.below(32)] as char).collect();
        let missing_listed = format!(
            "{}/{hash}-nixos-system-new01-r{}",
            store.store_dir.display(),
            commits.len() - 1
        );
        let _ = writeln!(list, "\n# a new host, not built yet\n{missing_listed}");
        std::fs::write(dir.join("nixos-configurations.txt"), list).expect("writing the list");
        let ci = t.join("ci");
        let policy = format!(
            r#"description = "{CACHE_HOST}: binary cache + native CI runner (test fleet)"

[protect]
closure-lists = ["nixos-configurations.txt"]

[select]
origin = "local"
older-than = "{OLDER_THAN_DAYS}d"

[[generations]]
profile = "{}"
keep-newest = {KEEP_NEWEST}
keep-since = "{KEEP_SINCE_DAYS}d"

[auto-roots]
older-than = "{OLDER_THAN_DAYS}d"
match = ["{ci}/*/result", "{ci}/*/result-*"]
"#,
            profile.display(),
            ci = ci.display()
        );
        let policy_file = dir.join("policy.toml");
        std::fs::write(&policy_file, policy).expect("writing the policy");

        Fleet {
            seed,
            commits,
            profile,
            generations,
            current_generation,
            listed,
            missing_listed,
            policy_file,
            store,
        }
    }

    /// Whether the policy's `[auto-roots]` match an outer link.
    fn matches_auto(&self, outer: &str) -> bool {
        let ci = format!("{}/ci/", self.store.root().display());
        outer.starts_with(&ci)
            && (outer.ends_with("/result")
                || outer
                    .rsplit('/')
                    .next()
                    .is_some_and(|f| f.starts_with("result-")))
    }

    /// `storegc ARGS` (the policy and `--format json` added), which must
    /// succeed; the plan and stderr.
    fn plan(&self, extra: &[&str]) -> (Value, String) {
        let mut args: Vec<OsString> = vec![
            "plan".into(),
            "--policy".into(),
            self.policy_file.clone().into(),
            "--format".into(),
            "json".into(),
        ];
        args.extend(extra.iter().map(OsString::from));
        let out = self.store.storegc(&args).output().expect("running storegc");
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            out.status.success(),
            "storegc {args:?} failed ({}): {stderr}",
            out.status
        );
        let plan = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("plan JSON: {e}"));
        (plan, stderr)
    }
}

// ---------------------------------------------------------------------------
// The semantics, computed independently of storegc

/// The store database as this test reads it.
struct Db {
    /// Sorted.
    paths: Vec<String>,
    index: HashMap<String, usize>,
    registration: Vec<i64>,
    nar_size: Vec<u64>,
    substituted: Vec<bool>,
    /// References, without self references.
    references: Vec<Vec<usize>>,
    /// keep-derivations: an output's deriver, when valid, listing the
    /// output in DerivationOutputs.
    deriver: Vec<Option<usize>>,
    /// keep-outputs: a `.drv`'s valid outputs per DerivationOutputs.
    outputs: Vec<Vec<usize>>,
}

impl Db {
    fn read(store: &NixStore) -> Db {
        let conn = rusqlite::Connection::open_with_flags(
            store.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening db.sqlite");
        let tx = conn.unchecked_transaction().expect("read transaction");
        type Row = (
            i64,
            String,
            i64,
            Option<String>,
            i64,
            Option<i64>,
            Option<String>,
        );
        let mut rows: Vec<Row> = tx
            .prepare(
                "SELECT id, path, registrationTime, deriver, narSize, ultimate, sigs FROM ValidPaths",
            )
            .expect("query")
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        rows.sort_by(|a, b| a.1.cmp(&b.1));
        let n = rows.len();
        let index: HashMap<String, usize> = rows
            .iter()
            .enumerate()
            .map(|(i, r)| (r.1.clone(), i))
            .collect();
        let by_id: HashMap<i64, usize> = rows.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
        let mut references = vec![Vec::new(); n];
        let refs: Vec<(i64, i64)> = tx
            .prepare("SELECT referrer, reference FROM Refs")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        for (a, b) in refs {
            let (a, b) = (by_id[&a], by_id[&b]);
            if a != b {
                references[a].push(b);
            }
        }
        let drv_outputs: Vec<(i64, String)> = tx
            .prepare("SELECT drv, path FROM DerivationOutputs")
            .expect("query")
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .expect("query")
            .collect::<Result<_, _>>()
            .expect("rows");
        let mut listed: BTreeSet<(usize, String)> = BTreeSet::new();
        let mut outputs = vec![Vec::new(); n];
        for (drv, out) in drv_outputs {
            let Some(&d) = by_id.get(&drv) else { continue };
            if let Some(&o) = index.get(&out) {
                outputs[d].push(o);
            }
            listed.insert((d, out));
        }
        let deriver = rows
            .iter()
            .map(|r| {
                let d = *index.get(r.3.as_ref()?)?;
                listed.contains(&(d, r.1.clone())).then_some(d)
            })
            .collect();
        Db {
            registration: rows.iter().map(|r| r.2).collect(),
            nar_size: rows.iter().map(|r| r.4 as u64).collect(),
            substituted: rows
                .iter()
                .map(|r| r.6.as_deref().is_some_and(|s| !s.is_empty()) && r.5 != Some(1))
                .collect(),
            paths: rows.into_iter().map(|r| r.1).collect(),
            index,
            references,
            deriver,
            outputs,
        }
    }

    fn id(&self, path: &str) -> usize {
        *self
            .index
            .get(path)
            .unwrap_or_else(|| panic!("{path} is not valid"))
    }

    /// The liveness edges under nix.conf's settings.
    fn edges(&self, keep_outputs: bool, keep_derivations: bool) -> Vec<Vec<usize>> {
        let mut e = self.references.clone();
        for (i, out) in e.iter_mut().enumerate() {
            if keep_derivations {
                out.extend(self.deriver[i]);
            }
            if keep_outputs {
                out.extend(&self.outputs[i]);
            }
        }
        e
    }

    fn set(&self, ids: impl IntoIterator<Item = usize>) -> BTreeSet<String> {
        ids.into_iter().map(|i| self.paths[i].clone()).collect()
    }

    fn tally(&self, ids: impl IntoIterator<Item = usize>) -> (u64, u64) {
        ids.into_iter()
            .fold((0, 0), |(n, b), i| (n + 1, b + self.nar_size[i]))
    }
}

/// Marks everything reachable from `seeds` through `allowed` paths.
fn reach(edges: &[Vec<usize>], seeds: &[usize], allowed: &[bool], seen: &mut [bool]) {
    let mut stack: Vec<usize> = Vec::new();
    for &s in seeds {
        if allowed[s] && !seen[s] {
            seen[s] = true;
            stack.push(s);
        }
    }
    while let Some(u) = stack.pop() {
        for &v in &edges[u] {
            if allowed[v] && !seen[v] {
                seen[v] = true;
                stack.push(v);
            }
        }
    }
}

/// What a plan must say.
#[derive(Debug, Default)]
struct Expected {
    /// Path -> reason.
    delete: BTreeMap<String, &'static str>,
    /// (link to remove, kind, target).
    expired: BTreeSet<(String, String, String)>,
    /// Outer links (or generation links) of the expired roots, as Nix's
    /// `--print-roots` names them.
    expired_nix_links: BTreeSet<String>,
    /// Per kept category: (paths, bytes).
    kept: BTreeMap<&'static str, (u64, u64)>,
    /// The closure of the remaining Nix roots (what Nix keeps once the
    /// expired roots are gone).
    nix_live: BTreeSet<String>,
}

/// The knobs the checks vary.
#[derive(Debug, Clone, Copy)]
struct Rules {
    older_than: i64,
    keep_outputs: bool,
    keep_derivations: bool,
}

/// The plan the semantics of issue 3 define, from the database, Nix's
/// roots and the link ages on disk, at time `now`.
fn expected(fleet: &Fleet, db: &Db, roots: &BTreeSet<NixRoot>, now: i64, rules: Rules) -> Expected {
    let mut ex = Expected::default();
    let n = db.paths.len();
    // Expired generations.
    let mut gen_links = BTreeSet::new();
    for g in &fleet.generations {
        let newer = fleet
            .generations
            .iter()
            .filter(|o| o.number > g.number)
            .count();
        let age = now - lstat_mtime(&g.link);
        if g.number != fleet.current_generation
            && newer >= KEEP_NEWEST
            && age >= KEEP_SINCE_DAYS * DAY
        {
            gen_links.insert(g.link.display().to_string());
            ex.expired.insert((
                g.link.display().to_string(),
                "generation".into(),
                read_link(&g.link),
            ));
        }
    }
    // Expired auto roots.
    let mut auto_links = BTreeSet::new();
    let auto_dir = fleet.store.gcroots_dir().join("auto");
    for e in std::fs::read_dir(&auto_dir).expect("gcroots/auto") {
        let entry = e.expect("entry").path();
        let outer = PathBuf::from(read_link(&entry));
        let outer_s = outer.display().to_string();
        if fleet.matches_auto(&outer_s)
            && outer.is_symlink()
            && now - lstat_mtime(&outer) >= OLDER_THAN_DAYS * DAY
        {
            ex.expired.insert((
                entry.display().to_string(),
                "auto-root".into(),
                read_link(&outer),
            ));
            auto_links.insert(outer_s);
        }
    }
    ex.expired_nix_links = gen_links.union(&auto_links).cloned().collect();

    let id = |p: &str| db.id(p);
    let (mut remaining, mut gen_targets, mut auto_targets) = (vec![], vec![], vec![]);
    for r in roots {
        let t = id(&r.target);
        if gen_links.contains(&r.link) {
            gen_targets.push(t);
        } else if auto_links.contains(&r.link) {
            auto_targets.push(t);
        } else {
            remaining.push(t);
        }
    }
    let edges = db.edges(rules.keep_outputs, rules.keep_derivations);
    let all = vec![true; n];
    let mut keep = vec![false; n];
    // Each category claims what the earlier ones did not.
    let claim = |seeds: &[usize], keep: &mut Vec<bool>| {
        let before = keep.clone();
        reach(&edges, seeds, &all, keep);
        db.tally((0..n).filter(|&i| keep[i] && !before[i]))
    };
    ex.kept.insert("nix_roots", claim(&remaining, &mut keep));
    ex.nix_live = db.set((0..n).filter(|&i| keep[i]));
    let listed: Vec<usize> = fleet.listed.iter().map(|p| id(p)).collect();
    ex.kept.insert("closure_lists", claim(&listed, &mut keep));
    let unselected: Vec<usize> = (0..n)
        .filter(|&i| db.substituted[i] || now - db.registration[i] < rules.older_than)
        .collect();
    ex.kept.insert("unselected", claim(&unselected, &mut keep));
    for name in ["protected_paths", "protected_names", "budget"] {
        ex.kept.insert(name, (0, 0));
    }

    // Reasons: within the delete set, from expired generations' targets,
    // then from expired auto roots' targets; the rest is unreachable.
    let dead: Vec<bool> = keep.iter().map(|k| !k).collect();
    let mut by_gen = vec![false; n];
    reach(&edges, &gen_targets, &dead, &mut by_gen);
    let mut by_auto = by_gen.clone();
    reach(&edges, &auto_targets, &dead, &mut by_auto);
    for i in (0..n).filter(|&i| dead[i]) {
        let reason = if by_gen[i] {
            "expired-generation"
        } else if by_auto[i] {
            "expired-auto-root"
        } else {
            "unreachable"
        };
        ex.delete.insert(db.paths[i].clone(), reason);
    }
    ex
}

/// A plan's JSON, taken apart.
struct PlanView {
    delete: BTreeMap<String, String>,
    expired: BTreeSet<(String, String, String)>,
    json: Value,
}

impl PlanView {
    fn new(json: Value) -> PlanView {
        let s = |v: &Value, k: &str| {
            v[k].as_str()
                .unwrap_or_else(|| panic!("plan entry without {k}: {v}"))
                .to_string()
        };
        let delete = json["delete"]
            .as_array()
            .expect("plan.delete")
            .iter()
            .map(|d| (s(d, "path"), s(d, "reason")))
            .collect();
        let listed: Vec<(String, String, String)> = json["expired_roots"]
            .as_array()
            .expect("plan.expired_roots")
            .iter()
            .map(|e| (s(e, "link"), s(e, "kind"), s(e, "target")))
            .collect();
        let expired: BTreeSet<(String, String, String)> = listed.iter().cloned().collect();
        // Each link to remove is listed once (apply removes it once; a
        // second entry reports it "kept: gone already").
        assert_eq!(
            listed.len(),
            expired.len(),
            "the plan lists an expired root twice: {listed:#?}"
        );
        PlanView {
            delete,
            expired,
            json,
        }
    }

    fn paths(&self) -> BTreeSet<String> {
        self.delete.keys().cloned().collect()
    }

    /// A `{paths, bytes}` tally of the plan, by JSON pointer
    /// (`/kept/budget`).
    fn tally(&self, pointer: &str) -> (u64, u64) {
        let v = self
            .json
            .pointer(pointer)
            .unwrap_or_else(|| panic!("plan without {pointer}"));
        (
            v["paths"].as_u64().expect("tally paths"),
            v["bytes"].as_u64().expect("tally bytes"),
        )
    }
}

/// `a` and `b` differ: a readable account, names first.
fn difference(a_name: &str, a: &BTreeSet<String>, b_name: &str, b: &BTreeSet<String>) -> String {
    let show = |s: Vec<&String>| {
        let mut v: Vec<String> = s.iter().map(|p| name_of(p).to_string()).collect();
        v.sort();
        let more = v.len().saturating_sub(40);
        v.truncate(40);
        format!(
            "{v:?}{}",
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        )
    };
    format!(
        "only in {a_name} ({}): {}\nonly in {b_name} ({}): {}",
        a.difference(b).count(),
        show(a.difference(b).collect()),
        b.difference(a).count(),
        show(b.difference(a).collect())
    )
}

/// Checks a policy plan against the semantics: (a) the delete set, (c)
/// protected closures, (d) reasons, expired roots and tallies.
fn check_plan(
    fleet: &Fleet,
    db: &Db,
    plan: &PlanView,
    ex: &Expected,
    protected: &BTreeSet<String>,
    what: &str,
) {
    let ctx = format!(
        "{what} (seed {}, store {})",
        fleet.seed,
        fleet.store.root().display()
    );
    let want: BTreeSet<String> = ex.delete.keys().cloned().collect();
    let got = plan.paths();
    assert!(
        want == got,
        "{ctx}: the delete set differs from the semantics\n{}",
        difference("the semantics", &want, "storegc", &got)
    );
    // (c) no protected closure loses a path.
    let broken: BTreeSet<String> = got.intersection(protected).cloned().collect();
    assert!(
        broken.is_empty(),
        "{ctx}: protected paths in the plan: {broken:?}"
    );
    // (d) reasons.
    for (p, reason) in &ex.delete {
        assert_eq!(plan.delete[p], *reason, "{ctx}: reason of {}", name_of(p));
    }
    assert_eq!(plan.expired, ex.expired, "{ctx}: expired roots");
    for e in plan.json["expired_roots"].as_array().expect("expired") {
        let link = Path::new(e["link"].as_str().expect("link"));
        assert_eq!(
            e["points_to"].as_str(),
            Some(read_link(link).as_str()),
            "{ctx}: points_to of {}",
            link.display()
        );
        if e["kind"] == "generation" {
            assert_eq!(
                e["profile"].as_str(),
                Some(fleet.profile.display().to_string().as_str()),
                "{ctx}: profile of {}",
                link.display()
            );
        }
    }
    // Sizes and times per deletion come from the database.
    for d in plan.json["delete"].as_array().expect("delete") {
        let i = db.id(d["path"].as_str().expect("path"));
        assert_eq!(d["nar_size"].as_u64(), Some(db.nar_size[i]), "{ctx}: {d}");
        assert_eq!(
            d["registration_time"].as_i64(),
            Some(db.registration[i]),
            "{ctx}: {d}"
        );
    }
    // Tallies: kept per category, deleted per reason, and they add up.
    for (name, want) in &ex.kept {
        assert_eq!(
            plan.tally(&format!("/kept/{name}")),
            *want,
            "{ctx}: kept.{name}"
        );
    }
    let mut total = (0, 0);
    for (key, reason) in [
        ("unreachable", "unreachable"),
        ("expired_generation", "expired-generation"),
        ("expired_auto_root", "expired-auto-root"),
    ] {
        let ids = ex
            .delete
            .iter()
            .filter(|(_, r)| **r == reason)
            .map(|(p, _)| db.id(p));
        let want = db.tally(ids);
        assert_eq!(
            plan.tally(&format!("/by_reason/{key}")),
            want,
            "{ctx}: by_reason.{key}"
        );
        total = (total.0 + want.0, total.1 + want.1);
    }
    let totals = &plan.json["totals"];
    assert_eq!(
        (totals["paths"].as_u64(), totals["nar_bytes"].as_u64()),
        (Some(total.0), Some(total.1)),
        "{ctx}: totals"
    );
    let kept: (u64, u64) = ex.kept.values().fold((0, 0), |a, k| (a.0 + k.0, a.1 + k.1));
    assert_eq!(
        (kept.0 + total.0, kept.1 + total.1),
        db.tally(0..db.paths.len()),
        "{ctx}: kept + deleted is not every valid path"
    );
    assert!(
        plan.json["warnings"]
            .as_array()
            .expect("warnings")
            .iter()
            .any(|w| w
                .as_str()
                .is_some_and(|w| w.contains(&fleet.missing_listed))),
        "{ctx}: no warning about {}: {}",
        fleet.missing_listed,
        plan.json["warnings"]
    );
}

/// `nix-store -qR` of every listed path: the closures the policy protects.
fn protected_closures(fleet: &Fleet) -> BTreeSet<String> {
    let mut args = vec!["-qR"];
    args.extend(fleet.listed.iter().map(String::as_str));
    fleet
        .store
        .nix_store(&args)
        .lines()
        .map(str::to_string)
        .collect()
}

fn nix_verify(store: &NixStore) {
    let out = store.try_run("nix-store", &["--verify", "--check-contents"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "nix-store --verify failed: {stderr}");
    let bad: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error")
                || l.contains("warning")
                || l.contains("disappeared")
                || l.contains("invalid")
        })
        .collect();
    assert!(bad.is_empty(), "nix-store --verify complained: {bad:?}");
}

/// `storegc apply PLAN --format json`, which must succeed.
fn apply(store: &NixStore, plan_file: &Path) -> Value {
    let out = store
        .storegc(&[
            OsStr::new("apply"),
            plan_file.as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ])
        .output()
        .expect("running storegc apply");
    assert!(
        out.status.success(),
        "storegc apply failed ({}): {}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("apply JSON: {e}"))
}

fn strings(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| s.as_str().expect("a string").to_string())
        .collect()
}

/// Checks an apply report: exactly `plan` deleted, its expired roots
/// removed, nothing skipped, failed or kept.
fn check_apply_report(report: &Value, plan: &PlanView) {
    assert_eq!(
        strings(&report["deleted"]),
        plan.paths(),
        "apply deleted something else than the plan: {report}"
    );
    let links: BTreeSet<String> = plan.expired.iter().map(|e| e.0.clone()).collect();
    assert_eq!(
        strings(&report["roots_removed"]),
        links,
        "roots removed: {report}"
    );
    for key in ["skipped_live", "failed", "roots_kept"] {
        assert_eq!(
            report[key].as_array().map(Vec::len),
            Some(0),
            "apply {key}: {report}"
        );
    }
    assert_eq!(report["already_gone"].as_u64(), Some(0), "{report}");
    assert_eq!(report["interrupted"].as_bool(), Some(false), "{report}");
}

// ---------------------------------------------------------------------------
// The tests

/// The whole binary-cache scenario: plans under two nix.conf settings and
/// an `--older-than` override match the semantics; the plan is within
/// Nix's dead set once its expired roots are gone; apply deletes exactly
/// it, and the store stays clean with every protected closure whole.
#[test]
fn binary_cache_fleet() {
    if !common::nix_available("binary_cache_fleet") {
        return;
    }
    let start = std::time::Instant::now();
    let fleet = Fleet::build(seed());
    let store = &fleet.store;
    eprintln!("policy_nix: scenario built in {:?}", start.elapsed());
    let db = Db::read(store);
    let roots = store.print_roots();
    assert!(
        roots.iter().all(|r| r.category() == "link"),
        "unexpected runtime or temp roots: {roots:?}"
    );
    let protected = protected_closures(&fleet);
    let lagging = &fleet.commits[LAGGING_COMMIT].systems[LAGGING_HOST];
    let lagging_closure: BTreeSet<String> = store
        .nix_store(&["-qR", lagging])
        .lines()
        .map(str::to_string)
        .collect();
    let valid: BTreeSet<String> = db.paths.iter().cloned().collect();
    assert_eq!(
        valid,
        store.valid_paths(),
        "the database and Nix disagree on validity"
    );

    // The model of liveness agrees with Nix before anything expires, under
    // both settings checked below.
    let all_roots: Vec<usize> = roots.iter().map(|r| db.id(&r.target)).collect();
    let confs = [
        GcConf {
            keep_outputs: Some(true),
            keep_derivations: Some(false),
        },
        GcConf::default(),
    ];
    for conf in confs {
        store.set_conf(conf);
        let (ko, kd) = conf.effective();
        let mut live = vec![false; db.paths.len()];
        reach(
            &db.edges(ko, kd),
            &all_roots,
            &vec![true; db.paths.len()],
            &mut live,
        );
        let dead: BTreeSet<String> = db.set((0..db.paths.len()).filter(|&i| !live[i]));
        let nix = store.print_dead_valid();
        assert!(
            nix == dead,
            "the test's liveness model is wrong under {conf}:\n{}",
            difference("the model", &dead, "nix", &nix)
        );
    }

    // (a, c, d) under keep-outputs = true, keep-derivations = false.
    store.set_conf(confs[0]);
    let now = unix_now();
    let rules = Rules {
        older_than: OLDER_THAN_DAYS * DAY,
        keep_outputs: true,
        keep_derivations: false,
    };
    let (json, _) = fleet.plan(&[]);
    let ex = expected(&fleet, &db, &roots, now, rules);
    check_plan(
        &fleet,
        &db,
        &PlanView::new(json),
        &ex,
        &protected,
        "keep-outputs plan",
    );

    // (a, c, d) with Nix's defaults and `--older-than 3d` from the command line.
    store.set_conf(GcConf::default());
    let rules = Rules {
        older_than: 3 * DAY,
        keep_outputs: false,
        keep_derivations: true,
    };
    let (json, _) = fleet.plan(&["--older-than", "3d"]);
    let ex = expected(&fleet, &db, &roots, unix_now(), rules);
    check_plan(
        &fleet,
        &db,
        &PlanView::new(json),
        &ex,
        &protected,
        "--older-than 3d plan",
    );

    // (a, c, d) with Nix's defaults and the policy as written: the plan
    // that is then applied.
    let rules = Rules {
        older_than: OLDER_THAN_DAYS * DAY,
        ..rules
    };
    let plan_file = store.root().join("plans/plan.json");
    std::fs::create_dir_all(plan_file.parent().expect("parent")).expect("mkdir");
    let now = unix_now();
    let (json, stderr) = fleet.plan(&["--out", plan_file.to_str().expect("utf-8")]);
    let ex = expected(&fleet, &db, &roots, now, rules);
    let plan = PlanView::new(json);
    check_plan(&fleet, &db, &plan, &ex, &protected, "policy plan");
    assert!(
        stderr.contains(&fleet.missing_listed),
        "the invalid listed path is not warned about on stderr: {stderr}"
    );
    let written: Value =
        serde_json::from_slice(&std::fs::read(&plan_file).expect("reading --out")).expect("JSON");
    assert_eq!(written, plan.json, "--out wrote another plan than stdout");
    let deleted = plan.paths();
    assert!(
        lagging_closure.is_disjoint(&deleted),
        "the lagging host's system closure loses {:?}",
        lagging_closure.intersection(&deleted).collect::<Vec<_>>()
    );
    // The scenario exercises every rule (else it would prove little).
    for reason in ["expired-generation", "expired-auto-root", "unreachable"] {
        assert!(
            ex.delete.values().any(|r| *r == reason),
            "no path deleted as {reason}"
        );
    }
    for kind in ["generation", "auto-root"] {
        assert!(ex.expired.iter().any(|e| e.1 == kind), "no {kind} expired");
    }
    assert!(ex.kept["closure_lists"].0 > 0 && ex.kept["unselected"].0 > 0);
    // Origins: an old substituted path that only `origin = "local"` keeps;
    // old outputs signed but built here (nginx) and neither signed nor
    // built here (python) are local, so they go.
    assert!(
        (0..db.paths.len()).any(|i| db.substituted[i]
            && !ex.nix_live.contains(&db.paths[i])
            && !protected.contains(&db.paths[i])
            && now - db.registration[i] >= OLDER_THAN_DAYS * DAY),
        "no old substituted path outside every root and list"
    );
    for local in ["nginx-", "python-"] {
        assert!(
            ex.delete
                .keys()
                .any(|p| name_of(p).starts_with(local) && !p.ends_with(".drv")),
            "no {local}* output deleted"
        );
    }
    assert!(
        !ex.nix_live.contains(lagging),
        "the lagging system should be kept by the closure list alone"
    );
    eprintln!(
        "policy_nix: {} valid paths, {} deleted ({} expired roots), kept {:?}",
        db.paths.len(),
        deleted.len(),
        ex.expired.len(),
        ex.kept
    );

    // (b) With the expired roots removed by hand, Nix calls the plan dead,
    // and calls dead exactly what the model says it no longer keeps.
    let mut removed = Vec::new();
    for (link, _, _) in &plan.expired {
        let link = PathBuf::from(link);
        removed.push((link.clone(), read_link(&link)));
        std::fs::remove_file(&link).expect("removing an expired root");
    }
    let roots_after: BTreeSet<String> = store.print_roots().into_iter().map(|r| r.link).collect();
    let roots_before: BTreeSet<String> = roots.iter().map(|r| r.link.clone()).collect();
    let want: BTreeSet<String> = roots_before
        .difference(&ex.expired_nix_links)
        .cloned()
        .collect();
    assert_eq!(
        roots_after, want,
        "Nix's roots once the expired ones are gone"
    );
    let dead = store.print_dead_valid();
    assert!(
        deleted.is_subset(&dead),
        "planned but alive for Nix: {:?}",
        deleted.difference(&dead).collect::<Vec<_>>()
    );
    let model_dead: BTreeSet<String> = valid.difference(&ex.nix_live).cloned().collect();
    assert!(
        dead == model_dead,
        "Nix's dead set once the expired roots are gone:\n{}",
        difference("the model", &model_dead, "nix", &dead)
    );
    // Put them back for apply, which removes them itself.
    for (link, target) in &removed {
        std::os::unix::fs::symlink(target, link).expect("restoring an expired root");
    }

    // (e) apply through real nix-store --delete.
    let report = apply(store, &plan_file);
    check_apply_report(&report, &plan);
    nix_verify(store);
    let left = store.valid_paths();
    let want: BTreeSet<String> = valid.difference(&deleted).cloned().collect();
    assert!(
        left == want,
        "valid paths after apply:\n{}",
        difference("expected", &want, "store", &left)
    );
    let protected_after = protected_closures(&fleet);
    assert_eq!(protected_after, protected, "a protected closure changed");
    assert!(store.invalid_among(&protected).is_empty());
    assert!(store.invalid_among(&lagging_closure).is_empty());
    // What Nix would still collect is what the policy alone kept.
    let dead_after = store.print_dead_valid();
    let policy_kept: BTreeSet<String> = want.difference(&ex.nix_live).cloned().collect();
    assert!(
        dead_after == policy_kept,
        "Nix's dead set after apply:\n{}",
        difference("kept by the policy only", &policy_kept, "nix", &dead_after)
    );
    // A second plan finds nothing more to do.
    let (json, _) = fleet.plan(&[]);
    let again = PlanView::new(json);
    assert!(
        again.delete.is_empty() && again.expired.is_empty(),
        "second plan: {}",
        again.json
    );
    eprintln!("policy_nix: binary_cache_fleet took {:?}", start.elapsed());
}

/// `--max-freed` and `--until-free` on the same kind of store: budgeted
/// plans are closed under referrers (and the keep-* edges), grow with the
/// budget, stay within the unbudgeted plan, expire only the roots whose
/// targets they take, and real Nix deletes them.
#[test]
fn budgets() {
    if !common::nix_available("budgets") {
        return;
    }
    let start = std::time::Instant::now();
    let fleet = Fleet::build(seed() ^ 1);
    let store = &fleet.store;
    let db = Db::read(store);
    let edges = db.edges(false, true);
    let (json, _) = fleet.plan(&[]);
    let full = PlanView::new(json);
    let all = full.paths();
    let total = full.json["totals"]["nar_bytes"].as_u64().expect("bytes");
    assert!(all.len() > 10 && !full.expired.is_empty());
    let ctx = format!("seed {}, store {}", fleet.seed, store.root().display());

    let check_budget = |plan: &PlanView, limit: u64, what: &str| {
        let taken = plan.paths();
        assert!(
            taken.is_subset(&all),
            "{ctx}: {what} deletes beyond the plan"
        );
        // Closed under referrers, and under the keep-derivations edges.
        for (u, out) in edges.iter().enumerate() {
            for &v in out {
                if taken.contains(&db.paths[v]) {
                    assert!(
                        taken.contains(&db.paths[u]),
                        "{ctx}: {what} deletes {} but keeps {}, which {} it",
                        name_of(&db.paths[v]),
                        name_of(&db.paths[u]),
                        if db.references[u].contains(&v) {
                            "refers to"
                        } else {
                            "is derived by"
                        }
                    );
                }
            }
        }
        let bytes: u64 = plan.json["totals"]["nar_bytes"].as_u64().expect("bytes");
        assert!(
            bytes >= limit.min(total),
            "{ctx}: {what} frees {bytes} < {limit}"
        );
        let budget = &plan.json["budget"];
        assert_eq!(
            budget["limit"].as_u64(),
            Some(limit),
            "{ctx}: {what}: {budget}"
        );
        assert_eq!(
            budget["already_met"].as_bool(),
            Some(false),
            "{ctx}: {what}"
        );
        assert_eq!(
            (
                budget["candidates"]["paths"].as_u64(),
                budget["candidates"]["bytes"].as_u64()
            ),
            (Some(all.len() as u64), Some(total)),
            "{ctx}: {what}: candidates"
        );
        let left: Vec<usize> = all.difference(&taken).map(|p| db.id(p)).collect();
        assert_eq!(
            plan.tally("/kept/budget"),
            db.tally(left.iter().copied()),
            "{ctx}: {what}: kept.budget"
        );
        // Reasons as in the full plan.
        for (p, r) in &plan.delete {
            assert_eq!(
                *r,
                full.delete[p],
                "{ctx}: {what}: reason of {}",
                name_of(p)
            );
        }
        // Under a budget, a root expires only when the budget deletes its
        // target: it stays when the budget leaves its target, and when
        // something else keeps that target (removing it would free nothing).
        let want: BTreeSet<(String, String, String)> = full
            .expired
            .iter()
            .filter(|e| taken.contains(&e.2))
            .cloned()
            .collect();
        assert_eq!(plan.expired, want, "{ctx}: {what}: expired roots");
    };

    let mut previous = BTreeSet::new();
    let mut quarter = None;
    for (num, den) in [(1, 4), (1, 2), (9, 10)] {
        let limit = total * num / den;
        let (json, _) = fleet.plan(&["--max-freed", &limit.to_string()]);
        let plan = PlanView::new(json);
        check_budget(&plan, limit, &format!("--max-freed {limit}"));
        let taken = plan.paths();
        assert!(
            previous.is_subset(&taken),
            "{ctx}: a larger budget deleted less"
        );
        assert!(taken.len() < all.len() || num * 10 >= den * 9);
        previous = taken;
        quarter.get_or_insert(limit);
    }
    let limit = quarter.expect("a limit");
    let (json, _) = fleet.plan(&[
        "--max-freed",
        &limit.to_string(),
        "--order",
        "largest-first",
    ]);
    check_budget(&PlanView::new(json), limit, "largest-first");

    // until-free beyond any disk: everything; already met: nothing.
    let (json, _) = fleet.plan(&["--until-free", "1000PiB"]);
    let huge = PlanView::new(json);
    assert_eq!(huge.paths(), all, "{ctx}: --until-free 1000PiB");
    // Under a budget, only roots whose target the budget deletes expire.
    let freeing: BTreeSet<_> = full
        .expired
        .iter()
        .filter(|e| all.contains(&e.2))
        .cloned()
        .collect();
    assert_eq!(huge.expired, freeing, "{ctx}: --until-free 1000PiB");
    assert_eq!(huge.json["budget"]["already_met"].as_bool(), Some(false));
    let (json, _) = fleet.plan(&["--until-free", "1"]);
    let met = PlanView::new(json);
    // "until-free already met means nothing to delete", and eval.rs adds
    // "so when until-free is already met, no root is removed either".
    assert!(
        met.delete.is_empty() && met.expired.is_empty(),
        "{ctx}: --until-free 1 (already met) still expires roots: {:?}",
        met.expired
    );
    assert_eq!(met.json["budget"]["already_met"].as_bool(), Some(true));
    assert_eq!(
        met.tally("/kept/budget"),
        (all.len() as u64, total),
        "{ctx}: --until-free 1: kept.budget"
    );

    // Real Nix deletes the quarter budget; the rest is the next plan.
    let plan_file = store.root().join("budget-plan.json");
    let (json, _) = fleet.plan(&[
        "--max-freed",
        &limit.to_string(),
        "--out",
        plan_file.to_str().expect("utf-8"),
    ]);
    let budgeted = PlanView::new(json);
    let report = apply(store, &plan_file);
    check_apply_report(&report, &budgeted);
    nix_verify(store);
    let (json, _) = fleet.plan(&[]);
    let rest = PlanView::new(json);
    let want: BTreeSet<String> = all.difference(&budgeted.paths()).cloned().collect();
    assert!(
        rest.paths() == want,
        "{ctx}: the plan after the budgeted apply:\n{}",
        difference("full minus budgeted", &want, "storegc", &rest.paths())
    );
    let want: BTreeSet<_> = full
        .expired
        .difference(&budgeted.expired)
        .cloned()
        .collect();
    assert_eq!(
        rest.expired, want,
        "{ctx}: expired roots after the budgeted apply"
    );
    eprintln!("policy_nix: budgets took {:?}", start.elapsed());
}

/// Runs `storegc args` expecting bad input: exit 2, one line on stderr
/// holding every one of `needles`, nothing on stdout, nothing written.
fn expect_bad_policy(store: &NixStore, args: &[OsString], needles: &[String], out_file: &Path) {
    let watched = store.root();
    let before = Snapshot::of(watched).ignoring_sqlite_index_in(&store.state_dir.join("db"));
    let out: Output = store.storegc(args).output().expect("running storegc");
    let after = Snapshot::of(watched).ignoring_sqlite_index_in(&store.state_dir.join("db"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!(
        "storegc {args:?}\nexit: {}\nstdout: {:?}\nstderr: {stderr:?}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
    assert_eq!(out.status.code(), Some(2), "exit code 2 expected: {what}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "one line on stderr expected: {what}"
    );
    assert!(!stderr.contains("panicked"), "{what}");
    for n in needles {
        assert!(
            stderr.contains(n.as_str()),
            "stderr should hold {n:?}: {what}"
        );
    }
    assert!(out.stdout.is_empty(), "nothing on stdout expected: {what}");
    assert!(!out_file.exists(), "a plan was written: {what}");
    let diff = before.diff(&after);
    assert!(diff.is_empty(), "storegc wrote:\n{diff}{what}");
}

/// Bad policy input through the binary: each mistake exits 2 with one
/// line naming the file, the line and the key, and changes nothing.
#[test]
fn bad_policy_input() {
    if !common::nix_available("bad_policy_input") {
        return;
    }
    let store = NixStore::new();
    let valid = store.add_text("hello", "hello\n");
    store.add_gcroot_link("hello", &valid);
    let unrooted = store.add_text("scratch", "scratch\n");
    let dir = store.root().join("etc/storegc");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let policy = dir.join("policy.toml");
    let fleet_list = dir.join("fleet.txt");
    std::fs::write(&fleet_list, format!("# fleet\n{valid}\n")).expect("writing a list");
    let out_file = store.root().join("out/plan.json");
    std::fs::create_dir_all(out_file.parent().expect("parent")).expect("mkdir");
    let p = policy.display().to_string();
    let with_list = "[protect]\nclosure-lists = [\"fleet.txt\"]\n".to_string();
    let l = fleet_list.display().to_string();

    // (policy text, list text, line and key expected, whether `policy
    // check` sees it too)
    let cases: Vec<(String, Option<String>, Vec<String>, bool)> = vec![
        (
            "[select]\norigin = \"local\nolder-than = \"14d\"\n".into(),
            None,
            vec![format!("{p}:2: select.origin: ")],
            true,
        ),
        (
            "[select]\norigin = \"local\"\nolder_than = \"14d\"\n".into(),
            None,
            vec![format!("{p}:3: select.older_than: "), "unknown field".into()],
            true,
        ),
        (
            "[[generations]]\nprofile = \"profiles/system\"\nkeep-since = \"30 dayz\"\n".into(),
            None,
            vec![format!("{p}:3: generations.keep-since: "), "30 dayz".into()],
            true,
        ),
        (
            "[budget]\norder = \"largest-first\"\nmax-freed = \"10 GiBs\"\n".into(),
            None,
            vec![format!("{p}:3: budget.max-freed: "), "10 GiBs".into()],
            true,
        ),
        (
            "[auto-roots]\nolder-than = \"14d\"\nmatch = [\n  \"*/result\",\n  \"*/result-[\",\n]\n".into(),
            None,
            vec![format!("{p}:5: auto-roots.match: "), "*/result-[".into()],
            true,
        ),
        (
            "[select]\norigin = \"remote\"\n".into(),
            None,
            vec![format!("{p}:2: select.origin: "), "remote".into()],
            true,
        ),
        (
            "[protect]\nclosure-lists = [\n  \"fleet.txt\",\n  \"missing.txt\",\n]\n".into(),
            Some(format!("{valid}\n")),
            vec![
                format!("{p}:4: protect.closure-lists: "),
                dir.join("missing.txt").display().to_string(),
            ],
            false,
        ),
        (
            with_list.clone(),
            Some("# fleet\n\nnixos-system-web01\n".into()),
            vec![format!("{l}:3: protect.closure-lists: "), "nixos-system-web01".into()],
            false,
        ),
        (
            with_list.clone(),
            Some(format!(
                "# fleet\n{valid}\n/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web01  # wrong store\n"
            )),
            vec![
                format!("{l}:3: protect.closure-lists: "),
                "/nix/store/0123456789abcdfghijklmnpqrsvwxyz-nixos-system-web01".into(),
            ],
            false,
        ),
    ];
    for (text, list, needles, check_too) in cases {
        std::fs::write(&policy, &text).expect("writing the policy");
        if let Some(list) = list {
            std::fs::write(&fleet_list, list).expect("writing the list");
        }
        let plan: Vec<OsString> = [
            "plan",
            "--policy",
            &p,
            "--format",
            "json",
            "--out",
            out_file.to_str().expect("utf-8"),
        ]
        .iter()
        .map(OsString::from)
        .collect();
        expect_bad_policy(&store, &plan, &needles, &out_file);
        if check_too {
            let check: Vec<OsString> = ["policy", "check", &p].iter().map(OsString::from).collect();
            expect_bad_policy(&store, &check, &needles, &out_file);
        }
    }
    // Nothing was deleted: the rooted path and the unrooted one alike.
    assert!(store.invalid_among(&[valid, unrooted]).is_empty());
}

/// A store with profile `system` at generations 1 -> a, 2 -> b (made by
/// `nix-env -p`, which also registers each generation link in
/// `gcroots/auto`), and a policy file with `text`; returns the store, the
/// policy and the two paths.
fn two_generations(policy: &str) -> (NixStore, PathBuf, String, String) {
    let store = NixStore::new();
    let a = store.add_text("a", "a\n");
    let b = store.add_text("b", "b\n");
    let profile = store.profiles_dir().join("system");
    store.set_profile(&profile, &a);
    store.set_profile(&profile, &b);
    let file = store.root().join("policy.toml");
    std::fs::write(&file, policy).expect("writing the policy");
    (store, file, a, b)
}

fn plan_with(store: &NixStore, policy: &Path, extra: &[&str]) -> PlanView {
    let mut args: Vec<OsString> = vec![
        "plan".into(),
        "--policy".into(),
        policy.into(),
        "--format".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let out = store.storegc(&args).output().expect("running storegc");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    PlanView::new(serde_json::from_slice(&out.stdout).expect("plan JSON"))
}

/// Regression: a generation link is a root twice over (the profile scan,
/// and the `gcroots/auto` entry `nix-env` makes for it); expiring it must
/// list it once in the plan, and `apply` must report it removed, not also
/// "kept: gone already".
#[test]
fn generation_that_is_also_an_auto_root_expires_once() {
    if !common::nix_available("generation_that_is_also_an_auto_root_expires_once") {
        return;
    }
    let (store, policy, a, _) =
        two_generations("[[generations]]\nprofile = \"profiles/system\"\nkeep-newest = 1\n");
    let gen1 = store.profiles_dir().join("system-1-link");
    let auto: Vec<String> = std::fs::read_dir(store.gcroots_dir().join("auto"))
        .expect("gcroots/auto")
        .map(|e| read_link(&e.expect("entry").path()))
        .collect();
    assert!(
        auto.contains(&gen1.display().to_string()),
        "nix-env made no gcroots/auto entry for {}: {auto:?}",
        gen1.display()
    );
    let out = store
        .storegc(&[
            OsStr::new("plan"),
            OsStr::new("--policy"),
            policy.as_os_str(),
            OsStr::new("--format"),
            OsStr::new("json"),
        ])
        .output()
        .expect("running storegc");
    let json: Value = serde_json::from_slice(&out.stdout).expect("plan JSON");
    let links: Vec<&str> = json["expired_roots"]
        .as_array()
        .expect("expired_roots")
        .iter()
        .map(|e| e["link"].as_str().expect("link"))
        .collect();
    assert_eq!(links, [gen1.display().to_string()], "expired roots");
    let plan = plan_with(&store, &policy, &[]);
    assert_eq!(plan.paths(), BTreeSet::from([a]));
}

/// Regression: with `until-free` already met nothing is deleted and, as
/// eval.rs promises, no root is removed either, including an expired
/// auto root whose target something else keeps.
#[test]
fn until_free_already_met_expires_no_root() {
    if !common::nix_available("until_free_already_met_expires_no_root") {
        return;
    }
    let store = NixStore::new();
    let a = store.add_text("a", "a\n");
    let result = store.root().join("ci/job/result");
    store.add_root_via_nix(&a, &result);
    set_link_mtime(&result, unix_now() - 30 * DAY);
    store.add_gcroot_link("pin-a", &a);
    let policy = store.root().join("policy.toml");
    std::fs::write(
        &policy,
        "[auto-roots]\nolder-than = \"14d\"\nmatch = [\"*/result\"]\n",
    )
    .expect("writing the policy");
    // Without a budget the auto root expires (and nothing is deleted: a
    // plain root keeps its target).
    let plan = plan_with(&store, &policy, &[]);
    assert!(plan.delete.is_empty());
    assert_eq!(plan.expired.len(), 1, "{}", plan.json);
    let plan = plan_with(&store, &policy, &["--until-free", "1"]);
    assert!(plan.delete.is_empty());
    assert_eq!(plan.json["budget"]["already_met"].as_bool(), Some(true));
    assert!(
        plan.expired.is_empty(),
        "until-free is met, yet the plan removes {:?}",
        plan.expired
    );
}

/// Regression: a profile under `~/.local/state/nix/profiles` (where
/// `nix-env`/`nix profile` put them since Nix 2.14) is rooted only through
/// `gcroots/auto`, and `[auto-roots]` expired its generations, the current
/// one included. They are generations: the auto rule keeps every one of
/// them, and `[[generations]]` naming the profile expires the old ones.
#[test]
fn modern_profile_generations_are_not_auto_roots() {
    if !common::nix_available("modern_profile_generations_are_not_auto_roots") {
        return;
    }
    let store = NixStore::new();
    let profile = store.root().join("home/.local/state/nix/profiles/profile");
    std::fs::create_dir_all(profile.parent().expect("parent")).expect("profiles folder");
    let gens: Vec<String> = (0..3)
        .map(|i| {
            let p = store.add_text(&format!("g{i}"), &format!("generation {i}\n"));
            store.set_profile(&profile, &p);
            p
        })
        .collect();
    let result = store.root().join("ci/result");
    let ci = store.add_text("ci", "ci\n");
    store.add_root_via_nix(&ci, &result);
    let policy = store.root().join("policy.toml");
    let auto = "[auto-roots]\nolder-than = \"0s\"\nmatch = [\"*\"]\n";
    std::fs::write(&policy, auto).expect("writing the policy");
    let plan = plan_with(&store, &policy, &[]);
    // (kind, target) of each expired root.
    let expired_of = |plan: &PlanView| -> BTreeSet<(String, String)> {
        plan.expired
            .iter()
            .map(|e| (e.1.clone(), e.2.clone()))
            .collect()
    };
    let auto_ci = ("auto-root".to_string(), ci.clone());
    assert_eq!(
        expired_of(&plan),
        BTreeSet::from([auto_ci.clone()]),
        "{}",
        plan.json
    );
    assert_eq!(plan.paths(), BTreeSet::from([ci.clone()]));

    let text = format!(
        "[[generations]]\nprofile = \"{}\"\nkeep-newest = 2\n{auto}",
        profile.display()
    );
    std::fs::write(&policy, text).expect("writing the policy");
    let plan = plan_with(&store, &policy, &[]);
    assert_eq!(
        expired_of(&plan),
        BTreeSet::from([("generation".to_string(), gens[0].clone()), auto_ci]),
        "{}",
        plan.json
    );
    assert_eq!(plan.paths(), BTreeSet::from([gens[0].clone(), ci]));
    // Nothing Nix keeps once the expired links are gone is planned.
    std::fs::remove_file(&result).expect("removing result");
    std::fs::remove_file(profile.with_file_name("profile-1-link")).expect("removing gen 1");
    assert!(plan.paths().is_subset(&store.print_dead_valid()));
}
