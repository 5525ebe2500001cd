//! `storegc apply` re-reads the plan's policy, against real Nix.
//!
//! A fleet of three host systems (each `nixos-system-<host>` referring to
//! its own `app-<host>` and a shared glibc) is built; the policy protects
//! the closure list `fleet.txt`, which names web01 only when the plan is
//! made. Then, between plan and apply:
//! - the CI job rewrites the list to name web02 as well: web02's system
//!   and its closure survive the apply, reported as "kept: protected now",
//!   the list's changed digest is reported, db01 still goes;
//! - the policy file gains `protect.names`: the policy's digest change is
//!   reported and the newly protected path survives;
//! - the policy file is made invalid, removed, or its closure list
//!   removed: exit 2, one line naming the file (and line and key), and the
//!   store and state dir are unchanged.
//!
//! Never is anything deleted that the plan did not list.

mod common;

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use common::{NixStore, Snapshot};
use serde_json::Value;
use sha2::{Digest, Sha256};

const HOSTS: [&str; 3] = ["web01", "web02", "db01"];

/// The fleet's expression: `<host>` is each host's system toplevel.
fn expression(builder: &str) -> String {
    let mut s = String::from("let\n");
    let _ = writeln!(s, "  builder = builtins.storePath \"{builder}\";");
    s.push_str(
        "  mk = args: derivation ({ system = builtins.currentSystem; inherit builder; } // args);\n",
    );
    s.push_str("  glibc = mk { name = \"glibc-2.40\"; text_out = \"libc\\n\"; };\n");
    for h in HOSTS {
        let _ = writeln!(
            s,
            "  app-{h} = mk {{ name = \"app-{h}\"; text_out = \"app of {h} ${{glibc}}\\n\"; }};"
        );
        let _ = writeln!(
            s,
            "  {h} = mk {{ name = \"nixos-system-{h}\"; kind_out = \"dir\"; text_out = \"system {h} ${{app-{h}}} ${{glibc}}\\n\"; }};"
        );
    }
    let _ = writeln!(s, "in {{ inherit {}; }}", HOSTS.join(" "));
    s
}

struct Fleet {
    store: NixStore,
    policy: PathBuf,
    list: PathBuf,
    plan: PathBuf,
    /// Each host's system toplevel, in [`HOSTS`] order.
    systems: Vec<String>,
}

impl Fleet {
    /// Builds the fleet (nothing rooted), writes the policy and a closure
    /// list naming web01, and plans.
    fn new() -> Fleet {
        let store = NixStore::new();
        let expr = store.root().join("fleet.nix");
        std::fs::write(&expr, expression(store.builder())).expect("writing fleet.nix");
        let systems = HOSTS
            .iter()
            .map(|h| {
                store
                    .run(
                        "nix-build",
                        &[
                            expr.as_os_str(),
                            OsStr::new("--no-out-link"),
                            OsStr::new("--quiet"),
                            OsStr::new("-A"),
                            OsStr::new(h),
                        ],
                    )
                    .trim()
                    .to_string()
            })
            .collect();
        let policy = store.root().join("policy.toml");
        std::fs::write(&policy, "[protect]\nclosure-lists = [\"fleet.txt\"]\n").expect("policy");
        let list = store.root().join("fleet.txt");
        let plan = store.root().join("plan.json");
        let fleet = Fleet {
            store,
            policy,
            list,
            plan,
            systems,
        };
        fleet.write_list(&[0]);
        fleet.make_plan();
        fleet
    }

    fn write_list(&self, hosts: &[usize]) {
        let text: String = hosts
            .iter()
            .map(|&h| format!("{}\n", self.systems[h]))
            .collect();
        std::fs::write(&self.list, text).expect("writing fleet.txt");
    }

    fn make_plan(&self) {
        common::run_ok(&mut self.store.storegc(&[
            OsStr::new("--quiet"),
            OsStr::new("plan"),
            OsStr::new("--policy"),
            self.policy.as_os_str(),
            OsStr::new("--format"),
            OsStr::new("paths"),
            OsStr::new("--out"),
            self.plan.as_os_str(),
        ]));
    }

    fn plan_json(&self) -> Value {
        serde_json::from_str(&std::fs::read_to_string(&self.plan).expect("plan"))
            .expect("plan JSON")
    }

    fn planned(&self) -> BTreeSet<String> {
        let paths: Vec<Value> = self.plan_json()["delete"]
            .as_array()
            .expect("delete")
            .iter()
            .map(|d| d["path"].clone())
            .collect();
        strings(&paths)
    }

    /// `storegc apply PLAN` with `extra`: exit code, stdout, stderr.
    fn apply(&self, extra: &[&str]) -> (Option<i32>, String, String) {
        let mut args = vec![
            OsStr::new("--quiet"),
            OsStr::new("apply"),
            self.plan.as_os_str(),
        ];
        args.extend(extra.iter().map(OsStr::new));
        let out = self
            .store
            .storegc(&args)
            .output()
            .expect("running storegc apply");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn apply_json(&self) -> Value {
        let (code, out, err) = self.apply(&["--format", "json"]);
        assert_eq!(code, Some(0), "apply failed:\n{out}\n{err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("apply JSON ({e}): {out}"))
    }

    /// `nix-store -qR` of a path: its closure.
    fn closure(&self, path: &str) -> BTreeSet<String> {
        self.store
            .nix_store(&["-qR", path])
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// The store and the state dir, less what any reader or apply's own
    /// lock may touch (SQLite's WAL index; the lock file, made first here).
    fn snapshot(&self) -> (Snapshot, Snapshot) {
        let lock = self.store.state_dir.join("storegc");
        std::fs::create_dir_all(&lock).expect("lock folder");
        if !lock.join("apply.lock").exists() {
            std::fs::write(lock.join("apply.lock"), "").expect("lock file");
        }
        // What Nix's GC protocol makes, which storegc's engine (the
        // default deleter) takes before it reads the policy again, as any
        // Nix collector does: gc.lock and the gc-socket folder (its socket
        // is removed when the engine stops).
        let gc = self.store.state_dir.join("gc-socket");
        std::fs::create_dir_all(&gc).expect("gc-socket folder");
        if !self.store.state_dir.join("gc.lock").exists() {
            std::fs::write(self.store.state_dir.join("gc.lock"), "").expect("gc.lock");
        }
        let db = self.store.state_dir.join("db");
        (
            Snapshot::of(&self.store.store_dir),
            self.store
                .state_snapshot()
                .ignoring_sqlite_index_in(&db)
                .ignoring_mtime_of(&gc),
        )
    }

    fn assert_unchanged(&self, before: &(Snapshot, Snapshot), what: &str) {
        let now = self.snapshot();
        let d = before.0.diff(&now.0);
        assert!(d.is_empty(), "{what} changed the store:\n{d}");
        let d = before.1.diff(&now.1);
        assert!(d.is_empty(), "{what} changed the state dir:\n{d}");
    }
}

fn strings(v: &[Value]) -> BTreeSet<String> {
    v.iter()
        .map(|x| x.as_str().expect("a string").to_string())
        .collect()
}

fn list(v: &Value) -> BTreeSet<String> {
    strings(v.as_array().unwrap_or_else(|| panic!("not a list: {v}")))
}

fn sha256(file: &Path) -> String {
    let bytes = std::fs::read(file).expect("reading an input");
    Sha256::digest(bytes)
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The plan records the policy and the list with the digests of their
/// bytes, policy first.
fn check_recorded_inputs(f: &Fleet) {
    let plan = f.plan_json();
    let inputs: Vec<(String, String, String)> = plan["inputs"]
        .as_array()
        .expect("inputs")
        .iter()
        .map(|i| {
            let s = |k: &str| i[k].as_str().expect(k).to_string();
            (s("kind"), s("path"), s("sha256"))
        })
        .collect();
    let want = vec![
        (
            "policy".into(),
            f.policy.display().to_string(),
            sha256(&f.policy),
        ),
        (
            "closure-list".into(),
            f.list.display().to_string(),
            sha256(&f.list),
        ),
    ];
    assert_eq!(inputs, want);
    assert_eq!(plan["settings"]["policy"], f.policy.display().to_string());
}

#[test]
fn closure_list_rewritten_after_plan_keeps_the_newly_protected() {
    if !common::nix_available("closure_list_rewritten_after_plan_keeps_the_newly_protected") {
        return;
    }
    let f = Fleet::new();
    check_recorded_inputs(&f);
    let planned = f.planned();
    let (web01, web02, db01) = (&f.systems[0], &f.systems[1], &f.systems[2]);
    let web02_closure = f.closure(web02);
    let db01_only: BTreeSet<String> = f
        .closure(db01)
        .difference(&f.closure(web01))
        .cloned()
        .collect();
    assert!(
        f.closure(web01).is_disjoint(&planned),
        "the list protects web01"
    );
    let web02_only: BTreeSet<String> = web02_closure
        .difference(&f.closure(web01))
        .cloned()
        .collect();
    assert!(web02_only.len() >= 2 && web02_only.is_subset(&planned));
    assert!(db01_only.len() >= 2 && db01_only.is_subset(&planned));
    let planned_list_sha = sha256(&f.list);

    // CI names web02 as well.
    f.write_list(&[0, 1]);
    let (code, text, err) = f.apply(&["--dry-run"]);
    assert_eq!(code, Some(0), "{text}{err}");
    let protected_now = web02_only;
    let dry_kept: usize = text
        .lines()
        .find_map(|l| l.strip_prefix("kept: protected now: "))
        .and_then(|l| l.strip_suffix(" paths"))
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no 'kept: protected now' line:\n{text}"));
    assert!(
        text.contains(&format!(
            "changed since the plan: closure list {}",
            f.list.display()
        )),
        "{text}"
    );

    let report = f.apply_json();
    let kept = list(&report["kept_protected_now"]);
    let deleted = list(&report["deleted"]);
    let valid = f.store.valid_paths();
    assert!(
        deleted.is_subset(&planned),
        "deleted more than the plan said"
    );
    assert!(kept.is_subset(&planned));
    assert!(
        protected_now.is_subset(&kept),
        "not reported as protected now: {:?}",
        protected_now.difference(&kept)
    );
    assert!(
        web02_closure.is_subset(&valid),
        "web02's closure lost: {:?}",
        web02_closure.difference(&valid)
    );
    assert!(kept.is_subset(&valid));
    assert!(
        db01_only.is_subset(&deleted) && db01_only.is_disjoint(&valid),
        "db01 still goes"
    );
    assert!(kept.is_disjoint(&list(&report["skipped_live"])));
    assert_eq!(kept.len(), dry_kept, "the dry run said otherwise:\n{text}");
    let changes = report["inputs_changed"].as_array().expect("inputs_changed");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["kind"], "closure-list");
    assert_eq!(changes[0]["path"], f.list.display().to_string());
    assert_eq!(changes[0]["planned"], planned_list_sha);
    assert_eq!(changes[0]["now"], sha256(&f.list));
}

#[test]
fn policy_changed_after_plan_is_reported_and_protects_more() {
    if !common::nix_available("policy_changed_after_plan_is_reported_and_protects_more") {
        return;
    }
    let f = Fleet::new();
    let planned = f.planned();
    let planned_policy_sha = sha256(&f.policy);
    let db01 = &f.systems[2];
    let app = f
        .closure(db01)
        .into_iter()
        .find(|p| p.ends_with("-app-db01"))
        .expect("app-db01");
    assert!(planned.contains(&app) && planned.contains(db01));
    std::fs::write(
        &f.policy,
        "[protect]\nclosure-lists = [\"fleet.txt\"]\nnames = [\"app-db01\"]\n",
    )
    .expect("policy");

    let report = f.apply_json();
    let kept = list(&report["kept_protected_now"]);
    let deleted = list(&report["deleted"]);
    assert!(kept.contains(&app), "{report}");
    assert!(f.store.valid_paths().contains(&app));
    assert!(deleted.contains(db01), "its referrer still goes: {report}");
    assert!(deleted.is_subset(&planned));
    let changes = report["inputs_changed"].as_array().expect("inputs_changed");
    assert_eq!(changes.len(), 1, "{changes:?}");
    assert_eq!(changes[0]["kind"], "policy");
    assert_eq!(changes[0]["path"], f.policy.display().to_string());
    assert_eq!(changes[0]["planned"], planned_policy_sha);
    assert_eq!(changes[0]["now"], sha256(&f.policy));
}

/// What is broken, how, and what the one line of stderr must hold.
type Case<'a> = (&'static str, Box<dyn Fn() + 'a>, Vec<String>);

#[test]
fn policy_invalid_or_gone_at_apply_changes_nothing() {
    if !common::nix_available("policy_invalid_or_gone_at_apply_changes_nothing") {
        return;
    }
    let f = Fleet::new();
    let good = std::fs::read_to_string(&f.policy).expect("policy");
    let before = f.snapshot();
    let p = f.policy.display().to_string();
    let l = f.list.display().to_string();
    let cases: Vec<Case> = vec![
        (
            "an invalid policy",
            Box::new(|| std::fs::write(&f.policy, "[protect]\nclosure-lists = 3\n").unwrap()),
            vec![format!("{p}:2: protect.closure-lists: ")],
        ),
        (
            "an unknown key",
            Box::new(|| std::fs::write(&f.policy, "[protect]\nclosure-list = []\n").unwrap()),
            vec![format!("{p}:2: "), "closure-list".into()],
        ),
        (
            "a removed policy",
            Box::new(|| std::fs::remove_file(&f.policy).unwrap()),
            vec![format!("{p}: cannot read '{p}'")],
        ),
        (
            "a removed closure list",
            Box::new(|| {
                std::fs::write(&f.policy, &good).unwrap();
                std::fs::remove_file(&f.list).unwrap();
            }),
            vec![format!("{p}:2: protect.closure-lists: cannot read '{l}'")],
        ),
    ];
    for (what, break_it, needles) in cases {
        break_it();
        let (code, out, err) = f.apply(&[]);
        assert_eq!(code, Some(2), "{what}: {out}{err}");
        let lines: Vec<&str> = err.lines().collect();
        assert_eq!(lines.len(), 1, "{what}: one line: {err}");
        for n in &needles {
            assert!(lines[0].contains(n.as_str()), "{what}: {n:?} not in {err}");
        }
        f.assert_unchanged(&before, what);
    }
}
