//! `storegc apply` on tampered plans, against real Nix: a plan is a file
//! anyone who can write the report folder can edit, so apply must trust
//! nothing in it.
//!
//! - Expired roots it may not remove (a link outside the state dir, a path
//!   with `..` or `//`, another profile's current generation under this
//!   profile's name, a profile's own link, a current generation listed as
//!   an auto root or as a generation, a gcroot outside `gcroots/auto`):
//!   apply runs, keeps each, and names it in the report with why.
//! - Deletions it must refuse (a path outside the store, a path with
//!   `/../`, narSizes that overflow or wrap around to the stated totals,
//!   duplicate entries, duplicate expired roots, another plan version):
//!   exit 2, one line naming the culprit, nothing changed.
//! - A live path listed for deletion is kept (Nix's live set is intact).
//!
//! After all of it every victim link and every path Nix considered live
//! before are still there.
//!
//! Then a failure after the first batch: a stand-in `nix-store` on PATH
//! deletes the first batch through the real one and fails the second
//! (once with Nix's kind of error, once by vanishing so it cannot be
//! started): exit 1, with the report of what was done.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use common::NixStore;
use serde_json::{json, Value};

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

impl Run {
    fn show(&self) -> String {
        format!(
            "exit {:?}\nstdout:\n{}\nstderr:\n{}",
            self.code, self.stdout, self.stderr
        )
    }

    fn report(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("report is not JSON ({e}): {}", self.show()))
    }
}

fn apply_with(store: &NixStore, plan: &Path, extra: &[&str], path_env: Option<&str>) -> Run {
    let mut args = vec!["--quiet", "apply", plan.to_str().expect("utf-8 path")];
    args.extend(["--format", "json"]);
    if path_env.is_some() && !extra.contains(&"--delete-with") {
        // A stand-in nix-store on PATH: its backend.
        args.extend(["--delete-with", "nix-store"]);
    }
    args.extend(extra);
    let mut cmd = store.storegc(&args);
    if let Some(p) = path_env {
        cmd.env("PATH", p);
    }
    let out = cmd.output().expect("running storegc apply");
    Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

fn apply(store: &NixStore, plan: &Path) -> Run {
    apply_with(store, plan, &[], None)
}

fn make_plan(store: &NixStore, file: &Path) -> Value {
    common::run_ok(&mut store.storegc(&[
        "--quiet",
        "plan",
        "--format",
        "paths",
        "--out",
        file.to_str().expect("utf-8 path"),
    ]));
    serde_json::from_str(&std::fs::read_to_string(file).expect("plan")).expect("plan JSON")
}

fn write(dir: &Path, name: &str, v: &Value) -> PathBuf {
    let f = dir.join(name);
    std::fs::write(&f, serde_json::to_string_pretty(v).expect("json")).expect("write plan");
    f
}

fn s(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

fn read_link(p: &Path) -> String {
    s(&std::fs::read_link(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
}

/// An expired-root entry as a plan writes one.
fn expired(kind: &str, link: &str, points_to: &str, target: &str, profile: Option<&str>) -> Value {
    let mut e = json!({
        "link": link, "points_to": points_to, "target": target,
        "kind": kind, "why": "tampered",
    });
    if let Some(p) = profile {
        e["profile"] = Value::from(p);
    }
    e
}

/// Recomputes the totals after the delete list was edited (wrapping, as
/// a forger would).
fn fix_totals(v: &mut Value) {
    let d = v["delete"].as_array().expect("delete").clone();
    let bytes = d.iter().fold(0u64, |a, x| {
        a.wrapping_add(x["nar_size"].as_u64().expect("size"))
    });
    v["totals"] = json!({"paths": d.len(), "nar_bytes": bytes});
}

#[test]
fn tampered_plans_remove_no_victim_and_delete_nothing_live() {
    if !common::nix_available("tampered_plans_remove_no_victim_and_delete_nothing_live") {
        return;
    }
    let store = NixStore::new();
    let t = store.root().to_path_buf();
    let profiles = store.profiles_dir();
    let (p, q) = (profiles.join("p"), profiles.join("q"));
    let a = store.add_text("a", "a\n");
    let b = store.add_text("b", "b\n");
    let c = store.add_text("c", "c\n");
    let d = store.add_text("d", "d\n");
    let e = store.add_text("e", "e\n");
    let f = store.add_text("f", "f\n");
    store.set_profile(&p, &a);
    store.set_profile(&p, &b); // p-2-link current
    store.set_profile(&q, &c); // q-1-link current
    let kept = store.add_gcroot_link("kept", &e);
    let result = t.join("work/result");
    store.add_root_via_nix(&f, &result);
    let auto_dir = store.gcroots_dir().join("auto");
    let auto_entry = std::fs::read_dir(&auto_dir)
        .expect("gcroots/auto")
        .flatten()
        .map(|x| x.path())
        .find(|x| std::fs::read_link(x).is_ok_and(|l| l == result))
        .expect("the auto entry of work/result");
    // A link outside the state dir (not a root: any symlink on the machine).
    let victim = t.join("victim/link");
    store.symlink(&victim, &d);
    store.add_text("g1", "garbage 1\n");
    store.add_text("g2", "garbage 2\n");

    let dir = t.join("plans");
    std::fs::create_dir_all(&dir).expect("plans folder");
    let base = make_plan(&store, &dir.join("plan.json"));
    assert!(base["delete"].as_array().expect("delete").len() >= 2);
    let live_before = store.print_live();
    let (pl, ql) = (s(&p), s(&q));
    let gen = |prof: &Path, n: u32| {
        s(&prof.with_file_name(format!(
            "{}-{n}-link",
            prof.file_name().expect("name").to_string_lossy()
        )))
    };

    // -- Deletions and plan shapes that are refused: exit 2, culprit named.
    let first = base["delete"][0].clone();
    let first_path = first["path"].as_str().expect("path").to_string();
    let mut refused: Vec<(&str, Value, String)> = Vec::new();
    let mut v = base.clone();
    v["delete"][0]["path"] = Value::from(s(&victim));
    refused.push(("outside-store", v, s(&victim)));
    let mut v = base.clone();
    let sneaky = format!(
        "{first_path}/../{}",
        Path::new(&a).file_name().unwrap().to_string_lossy()
    );
    v["delete"][0]["path"] = Value::from(sneaky.clone());
    refused.push(("dotdot", v, sneaky));
    let mut v = base.clone();
    v["delete"][0]["nar_size"] = Value::from(u64::MAX);
    refused.push(("overflow", v, "overflow".into()));
    let mut v = base.clone();
    v["delete"][0]["nar_size"] = Value::from(u64::MAX);
    fix_totals(&mut v);
    refused.push(("wrapping", v, "overflow".into()));
    let mut v = base.clone();
    v["delete"].as_array_mut().unwrap().push(first.clone());
    fix_totals(&mut v);
    refused.push((
        "duplicate-deletion",
        v,
        format!("'{first_path}' is listed twice"),
    ));
    let mut v = base.clone();
    let g1 = expired("generation", &gen(&p, 1), &a, &a, Some(&pl));
    v["expired_roots"] = json!([g1.clone(), g1]);
    refused.push(("duplicate-root", v, gen(&p, 1)));
    let mut v = base.clone();
    v["version"] = Value::from(2);
    refused.push((
        "version",
        v,
        "version 2, this storegc reads version 3".into(),
    ));

    let before_store = common::Snapshot::of(&store.store_dir);
    let before_state = store.state_snapshot();
    for (name, v, culprit) in &refused {
        let file = write(&dir, &format!("{name}.json"), v);
        let run = apply(&store, &file);
        assert_eq!(run.code, Some(2), "{name}: exit 2 expected: {}", run.show());
        assert_eq!(
            run.stderr.lines().count(),
            1,
            "{name}: one line: {}",
            run.show()
        );
        assert!(
            run.stderr.contains(&s(&file)) && run.stderr.contains(culprit.as_str()),
            "{name}: stderr should name {} and {culprit}: {}",
            file.display(),
            run.show()
        );
    }
    let diff = before_store.diff(&common::Snapshot::of(&store.store_dir));
    assert!(diff.is_empty(), "a refused plan changed the store:\n{diff}");
    let diff = before_state.diff(&store.state_snapshot());
    assert!(
        diff.is_empty(),
        "a refused plan changed the state dir:\n{diff}"
    );

    // -- Expired roots that must be kept, each named with why.
    let auto = s(&auto_entry);
    let kept_cases: Vec<(&str, Value)> = vec![
        (
            "outside-state",
            expired("auto-root", &s(&victim), &d, &d, None),
        ),
        (
            "dotdot-link",
            expired(
                "auto-root",
                &format!("{}/../kept", s(&auto_dir)),
                &e,
                &e,
                None,
            ),
        ),
        (
            "double-slash",
            expired(
                "auto-root",
                &auto.replace("/auto/", "/auto//"),
                &s(&result),
                &f,
                None,
            ),
        ),
        (
            "other-profile-current",
            expired("generation", &gen(&q, 1), &c, &c, Some(&pl)),
        ),
        (
            "profile-own-link",
            expired("generation", &pl, "p-2-link", &b, Some(&pl)),
        ),
        (
            "current-as-auto-root",
            expired("auto-root", &gen(&p, 2), &b, &b, None),
        ),
        (
            "current-generation",
            expired("generation", &gen(&p, 2), &b, &b, Some(&pl)),
        ),
        (
            "gcroot-as-auto-root",
            expired("auto-root", &s(&kept), &e, &e, None),
        ),
        (
            "q-current-own-profile",
            expired("generation", &gen(&q, 1), &c, &c, Some(&ql)),
        ),
    ];
    // Each alone (one link may be listed once), with a live path listed
    // for deletion too (p's current generation).
    for (name, e) in &kept_cases {
        let mut v = base.clone();
        v["expired_roots"] = json!([e]);
        v["delete"].as_array_mut().unwrap().push(
            json!({"path": b, "nar_size": 1, "registration_time": 0, "reason": "unreachable"}),
        );
        fix_totals(&mut v);
        let file = write(&dir, &format!("{name}.json"), &v);
        let run = apply(&store, &file);
        assert_eq!(run.code, Some(0), "{name}: {}", run.show());
        let report = run.report();
        assert_eq!(report["roots_removed"], json!([]), "{name}: {}", run.show());
        let link = e["link"].as_str().unwrap();
        let kept_report = report["roots_kept"].as_array().expect("roots_kept");
        let why = kept_report
            .iter()
            .find(|k| k[0] == link)
            .and_then(|k| k[1].as_str())
            .unwrap_or_else(|| panic!("{name}: {link} not reported as kept: {}", run.show()));
        assert!(!why.is_empty(), "{name}: no reason");
        assert!(
            report["skipped_live"]
                .as_array()
                .unwrap()
                .contains(&Value::from(b.clone())),
            "{name}: the live path should be reported kept: {}",
            run.show()
        );
    }

    // Every victim and everything Nix called live is still there.
    assert_eq!(read_link(&victim), d);
    assert_eq!(read_link(&kept), e);
    assert_eq!(read_link(&p), "p-2-link");
    assert_eq!(read_link(&q), "q-1-link");
    assert_eq!(read_link(Path::new(&gen(&p, 2))), b);
    assert_eq!(read_link(Path::new(&gen(&q, 1))), c);
    assert_eq!(read_link(&auto_entry), s(&result));
    let missing: BTreeSet<&String> = live_before
        .iter()
        .filter(|x| std::fs::symlink_metadata(x).is_err())
        .collect();
    assert!(missing.is_empty(), "live paths deleted: {missing:?}");
    // The garbage went.
    assert!(store.print_dead_valid().is_empty(), "garbage left");
}

/// A stand-in `nix-store`: call 1 runs the real one; call 2 fails like Nix
/// (`fail`) or the script removes itself after call 1 so the next call
/// cannot start (`vanish`).
const STAND_IN: &str = r#"#!/bin/sh
dir=$(dirname "$0")
n=$(cat "$dir/calls" 2>/dev/null || echo 0)
n=$((n + 1))
echo "$n" > "$dir/calls"
if [ "$n" -ge 2 ]; then
  echo "error: stand-in failure of call $n" >&2
  exit 1
fi
"$REAL_NIX_STORE" "$@"
rc=$?
if [ "$MODE" = vanish ]; then rm -f "$0"; fi
exit $rc
"#;

fn real_nix_store() -> String {
    let path = std::env::var_os("PATH").expect("PATH");
    std::env::split_paths(&path)
        .map(|d| d.join("nix-store"))
        .find(|p| p.is_file())
        .map(|p| s(&p))
        .expect("nix-store on PATH")
}

fn failure_after_first_batch(mode: &str) {
    use std::os::unix::fs::PermissionsExt;
    let store = NixStore::new();
    let garbage: BTreeSet<String> = (0..4)
        .map(|i| store.add_text(&format!("g{i}"), &format!("garbage {i}\n")))
        .collect();
    let plan = store.root().join("plan.json");
    make_plan(&store, &plan);
    let bin = store.root().join("stand-in");
    std::fs::create_dir_all(&bin).expect("stand-in folder");
    let script = bin.join("nix-store");
    std::fs::write(&script, STAND_IN).expect("stand-in script");
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    let path = format!("{}:{}", s(&bin), std::env::var("PATH").expect("PATH"));
    let mut cmd = store.storegc(&[
        "--quiet",
        "apply",
        plan.to_str().unwrap(),
        "--format",
        "json",
        "--batch-bytes",
        "1",
        "--delete-with",
        "nix-store",
    ]);
    cmd.env("PATH", &path)
        .env("REAL_NIX_STORE", real_nix_store())
        .env("MODE", mode);
    let out = cmd.output().expect("running storegc apply");
    let run = Run {
        code: out.status.code(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    assert_eq!(run.code, Some(1), "{mode}: exit 1 expected: {}", run.show());
    let report = run.report();
    let deleted: BTreeSet<String> = report["deleted"]
        .as_array()
        .expect("deleted")
        .iter()
        .map(|x| x.as_str().unwrap().to_string())
        .collect();
    assert_eq!(deleted.len(), 1, "{mode}: the first batch: {}", run.show());
    assert!(deleted.is_subset(&garbage));
    for g in &garbage {
        assert_eq!(
            std::fs::symlink_metadata(g).is_ok(),
            !deleted.contains(g),
            "{mode}: {g} reported otherwise than on disk"
        );
    }
    match mode {
        "fail" => {
            let failed = report["failed"].as_array().expect("failed");
            assert!(!failed.is_empty(), "{}", run.show());
            assert!(
                failed[0]["error"]
                    .as_str()
                    .unwrap()
                    .contains("stand-in failure"),
                "{}",
                run.show()
            );
        }
        _ => {
            let errors = report["errors"].as_array().expect("errors");
            assert_eq!(errors.len(), 1, "{}", run.show());
            assert!(
                errors[0].as_str().unwrap().contains("cannot run nix-store"),
                "{}",
                run.show()
            );
            assert!(
                run.stderr.contains("cannot run nix-store"),
                "{}",
                run.show()
            );
        }
    }
}

#[test]
fn nix_store_failing_the_second_batch_exits_1_with_the_report() {
    if !common::nix_available("nix_store_failing_the_second_batch_exits_1_with_the_report") {
        return;
    }
    failure_after_first_batch("fail");
}

#[test]
fn nix_store_gone_after_the_first_batch_exits_1_with_the_report() {
    if !common::nix_available("nix_store_gone_after_the_first_batch_exits_1_with_the_report") {
        return;
    }
    failure_after_first_batch("vanish");
}
