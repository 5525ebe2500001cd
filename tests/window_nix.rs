//! The rollback window (`[select] dead-for`) through the real binary on
//! real Nix stores: the state file `plan --out` writes and `apply` updates,
//! time passing (simulated by writing the state file with older dates, in
//! the documented format, by an encoder of this test's own), a path found
//! live again losing its date, and a corrupt, truncated, foreign or
//! future-version state refused with exit 2, one line and nothing deleted.
//! The day-by-day semantics with the clock as an input are in
//! `src/policy/eval.rs` (`rollback_window_over_simulated_days`).

mod common;

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use common::NixStore;
use serde_json::Value;
use sha2::{Digest, Sha256};

const DAY: i64 = 86_400;

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

/// The state file format, written independently of storegc:
/// magic, version 1, store dir, count, sorted (hash, i64) entries, SHA-256.
fn encode(store_dir: &str, entries: &[(String, i64)], version: u32) -> Vec<u8> {
    let mut sorted = entries.to_vec();
    sorted.sort();
    let mut out = b"SGCDEAD\0".to_vec();
    out.extend_from_slice(&version.to_le_bytes());
    out.extend_from_slice(&(store_dir.len() as u32).to_le_bytes());
    out.extend_from_slice(store_dir.as_bytes());
    out.extend_from_slice(&(sorted.len() as u64).to_le_bytes());
    for (hash, time) in &sorted {
        assert_eq!(hash.len(), 32);
        out.extend_from_slice(hash.as_bytes());
        out.extend_from_slice(&time.to_le_bytes());
    }
    let check = Sha256::digest(&out);
    out.extend_from_slice(&check);
    out
}

/// The entries of a state file, read independently of storegc.
fn decode(bytes: &[u8]) -> (String, Vec<(String, i64)>) {
    assert_eq!(&bytes[..8], b"SGCDEAD\0");
    let body = &bytes[..bytes.len() - 32];
    assert_eq!(&Sha256::digest(body)[..], &bytes[bytes.len() - 32..]);
    let u32_at = |i: usize| u32::from_le_bytes(body[i..i + 4].try_into().unwrap()) as usize;
    assert_eq!(u32_at(8), 1, "version");
    let len = u32_at(12);
    let store = String::from_utf8(body[16..16 + len].to_vec()).unwrap();
    let mut at = 16 + len;
    let count = u64::from_le_bytes(body[at..at + 8].try_into().unwrap()) as usize;
    at += 8;
    let entries: Vec<(String, i64)> = (0..count)
        .map(|k| {
            let e = &body[at + k * 40..at + k * 40 + 40];
            (
                String::from_utf8(e[..32].to_vec()).unwrap(),
                i64::from_le_bytes(e[32..].try_into().unwrap()),
            )
        })
        .collect();
    assert_eq!(at + count * 40, body.len());
    (store, entries)
}

fn hash_of(path: &str) -> String {
    path.rsplit('/').next().unwrap()[..32].to_string()
}

struct Case {
    store: NixStore,
    policy: PathBuf,
    state: PathBuf,
    plan_file: PathBuf,
    /// Unrooted (`nix-store --add`: no references between them).
    top: String,
    dep: String,
    /// Rooted.
    rooted: String,
}

impl Case {
    fn new() -> Case {
        let store = NixStore::new();
        let dep = store.add_text("dep", "dep\n");
        let top = store.add_text("top", "top\n");
        let rooted = store.add_text("rooted", "rooted\n");
        store.add_gcroot_link("pin", &rooted);
        let policy = store.root().join("policy.toml");
        std::fs::write(
            &policy,
            "description = \"window\"\n[select]\ndead-for = \"7d\"\n",
        )
        .unwrap();
        Case {
            state: store.state_dir.join("storegc/dead-since"),
            plan_file: store.root().join("plan.json"),
            policy,
            store,
            top,
            dep,
            rooted,
        }
    }

    /// `storegc plan --policy P --format json [--out plan.json]`.
    fn plan(&self, out: bool) -> Value {
        let mut args: Vec<OsString> = vec![
            "plan".into(),
            "--policy".into(),
            self.policy.clone().into(),
            "--format".into(),
            "json".into(),
        ];
        if out {
            args.extend(["--out".into(), self.plan_file.clone().into()]);
        }
        let o = self.store.storegc(&args).output().unwrap();
        assert!(
            o.status.success(),
            "plan failed: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn planned(plan: &Value) -> BTreeSet<String> {
        plan["delete"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["path"].as_str().unwrap().to_string())
            .collect()
    }

    fn state_entries(&self) -> Vec<(String, i64)> {
        let (store, entries) = decode(&std::fs::read(&self.state).unwrap());
        assert_eq!(store, self.store.store_dir.display().to_string());
        entries
    }

    /// Moves every date in the state `days` into the past.
    fn age_state(&self, days: i64) {
        let entries: Vec<(String, i64)> = self
            .state_entries()
            .into_iter()
            .map(|(h, t)| (h, t - days * DAY))
            .collect();
        let sd = self.store.store_dir.display().to_string();
        std::fs::write(&self.state, encode(&sd, &entries, 1)).unwrap();
    }
}

/// First run: nothing goes by the window and the report says so; a plain
/// plan writes no state, `plan --out` does; once the dates are 7 days old
/// the paths go, apply deletes them and the state forgets them.
#[test]
fn window_keeps_then_lets_go_and_apply_updates_the_state() {
    if !common::nix_available("window_keeps_then_lets_go_and_apply_updates_the_state") {
        return;
    }
    let c = Case::new();
    let dead: BTreeSet<String> = c.store.print_dead_valid();
    assert!(dead.contains(&c.top) && dead.contains(&c.dep) && !dead.contains(&c.rooted));

    let plan = c.plan(false);
    assert!(!c.state.exists(), "a plain plan wrote the state");
    assert!(Case::planned(&plan).is_empty(), "{plan}");
    assert_eq!(plan["window"]["first_run"], true, "{plan}");
    assert_eq!(
        plan["kept"]["window"]["paths"].as_u64(),
        Some(dead.len() as u64)
    );
    // The text report says it is the first run and how much was kept.
    let text = c
        .store
        .storegc(&[
            OsString::from("plan"),
            "--policy".into(),
            c.policy.clone().into(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&text.stdout).replace("\n  ", " ");
    assert!(text.contains("rollback window 7 days: kept"), "{text}");
    assert!(text.contains("first run: no state yet"), "{text}");
    assert!(text.contains("by the rollback window"), "{text}");
    let md = c
        .store
        .storegc(&[
            OsString::from("plan"),
            "--policy".into(),
            c.policy.clone().into(),
            "--format".into(),
            "markdown".into(),
        ])
        .output()
        .unwrap();
    let md = String::from_utf8_lossy(&md.stdout);
    assert!(md.contains("| kept by the rollback window | 2 |"), "{md}");
    assert!(md.contains("rollback window 7 days: kept 2 paths"), "{md}");

    // explain names the window as what keeps a deletable path.
    let ex = c
        .store
        .storegc(&[
            OsString::from("explain"),
            c.top.clone().into(),
            "--policy".into(),
            c.policy.clone().into(),
            "--format".into(),
            "json".into(),
        ])
        .output()
        .unwrap();
    let ex: Value = serde_json::from_slice(&ex.stdout).expect("explain JSON");
    assert_eq!(ex["status"], "protected", "{ex}");
    assert_eq!(
        ex["reason"], "kept by the rollback window (select.dead-for)",
        "{ex}"
    );

    let before = now();
    let plan = c.plan(true);
    let after = now();
    assert!(Case::planned(&plan).is_empty());
    let entries = c.state_entries();
    let hashes: BTreeSet<String> = entries.iter().map(|e| e.0.clone()).collect();
    let want: BTreeSet<String> = dead.iter().map(|p| hash_of(p)).collect();
    assert_eq!(hashes, want, "the state records exactly Nix's dead paths");
    assert!(entries.iter().all(|e| (before..=after).contains(&e.1)));

    // Six days later: still kept, not a first run any more.
    c.age_state(6);
    let plan = c.plan(true);
    assert!(Case::planned(&plan).is_empty(), "{plan}");
    assert_eq!(plan["window"]["first_run"], false);
    // A seventh day: everything dead goes, nothing Nix keeps.
    c.age_state(1);
    let plan = c.plan(true);
    assert_eq!(Case::planned(&plan), dead, "{plan}");
    assert!(plan["kept"].get("window").is_none(), "{plan}");
    let o = c
        .store
        .storegc(&[
            OsString::from("apply"),
            c.plan_file.clone().into(),
            "--format".into(),
            "json".into(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(c
        .store
        .invalid_among(std::slice::from_ref(&c.rooted))
        .is_empty());
    assert_eq!(c.store.invalid_among(&dead).len(), dead.len());
    assert!(
        c.state_entries().is_empty(),
        "apply left deleted paths in the state: {:?}",
        c.state_entries()
    );
}

/// A path that is live again loses its date: rooted for one plan, it
/// starts afresh when the root goes, so an old date cannot let it go.
#[test]
fn a_path_live_again_loses_its_date() {
    if !common::nix_available("a_path_live_again_loses_its_date") {
        return;
    }
    let c = Case::new();
    c.plan(true);
    c.age_state(30);
    let link = c.store.add_gcroot_link("top", &c.top);
    let plan = c.plan(true);
    assert_eq!(Case::planned(&plan), BTreeSet::from([c.dep.clone()]));
    let hashes: Vec<String> = c.state_entries().into_iter().map(|e| e.0).collect();
    assert_eq!(hashes, [hash_of(&c.dep)], "top, live, lost its date");
    std::fs::remove_file(link).unwrap();
    let before = now();
    let plan = c.plan(true);
    assert_eq!(
        Case::planned(&plan),
        BTreeSet::from([c.dep.clone()]),
        "{plan}"
    );
    let top = c
        .state_entries()
        .into_iter()
        .find(|e| e.0 == hash_of(&c.top));
    assert!(
        top.is_some_and(|e| e.1 >= before),
        "top's date did not start afresh"
    );
}

/// apply re-reads the state: a path whose date was renewed after the plan
/// (it was live again in between) is kept, not deleted.
#[test]
fn apply_keeps_what_the_window_keeps_at_apply_time() {
    if !common::nix_available("apply_keeps_what_the_window_keeps_at_apply_time") {
        return;
    }
    let c = Case::new();
    c.plan(true);
    c.age_state(8);
    let plan = c.plan(true);
    assert_eq!(Case::planned(&plan).len(), 2);
    // Since the plan: top was seen live again, and has a new date.
    let sd = c.store.store_dir.display().to_string();
    let entries = vec![(hash_of(&c.dep), now() - 8 * DAY), (hash_of(&c.top), now())];
    std::fs::write(&c.state, encode(&sd, &entries, 1)).unwrap();
    let o = c
        .store
        .storegc(&[
            OsString::from("apply"),
            c.plan_file.clone().into(),
            "--format".into(),
            "json".into(),
        ])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let report: Value = serde_json::from_slice(&o.stdout).unwrap();
    let kept: Vec<&str> = report["kept_protected_now"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert_eq!(kept, [c.top.as_str()], "{report}");
    assert!(c
        .store
        .invalid_among(std::slice::from_ref(&c.top))
        .is_empty());
    assert_eq!(c.store.invalid_among(std::slice::from_ref(&c.dep)).len(), 1);
    // The state forgot the deleted dep; top keeps its new date.
    let left: Vec<String> = c.state_entries().into_iter().map(|e| e.0).collect();
    assert_eq!(left, [hash_of(&c.top)]);
}

/// Runs `storegc ARGS` expecting exit 2 with one line naming the state
/// file and `needle`.
fn expect_refused(c: &Case, args: &[OsString], needle: &str) {
    let o = c.store.storegc(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].contains(&c.state.display().to_string()) && lines[0].contains(needle),
        "{needle:?} not in {stderr}"
    );
}

/// Corrupt, truncated, foreign-store and future-version states: plan and
/// apply exit 2 with one line naming the file; nothing is deleted and the
/// state is left as it was.
#[test]
fn bad_state_files_are_refused() {
    if !common::nix_available("bad_state_files_are_refused") {
        return;
    }
    let c = Case::new();
    c.plan(true);
    c.age_state(10);
    let plan = c.plan(true);
    assert_eq!(Case::planned(&plan).len(), 2);
    let good = std::fs::read(&c.state).unwrap();
    let sd = c.store.store_dir.display().to_string();
    let entries = c.state_entries();
    let mut flipped = good.clone();
    flipped[good.len() - 40] ^= 0x20;
    let plan_args: Vec<OsString> = vec![
        "plan".into(),
        "--policy".into(),
        c.policy.clone().into(),
        "--out".into(),
        c.store.root().join("other.json").into(),
    ];
    let apply_args: Vec<OsString> = vec!["apply".into(), c.plan_file.clone().into()];
    for (bytes, needle) in [
        (flipped, "corrupt: checksum mismatch"),
        (good[..good.len() - 7].to_vec(), "corrupt"),
        (good[..10].to_vec(), "corrupt"),
        (b"not a state\n".to_vec(), "bad magic"),
        (encode(&sd, &entries, 2), "version 2"),
        (
            encode("/other/nix/store", &entries, 1),
            "made for store /other/nix/store",
        ),
    ] {
        std::fs::write(&c.state, &bytes).unwrap();
        expect_refused(&c, &plan_args, needle);
        expect_refused(&c, &apply_args, needle);
        assert_eq!(
            std::fs::read(&c.state).unwrap(),
            bytes,
            "{needle}: state changed"
        );
        assert!(!c.store.root().join("other.json").exists());
        assert!(
            c.store
                .invalid_among(&[c.top.clone(), c.dep.clone()])
                .is_empty(),
            "{needle}: something was deleted"
        );
    }
    // An explicit --state-file that is bad is named too.
    let other = c.store.root().join("elsewhere/dead-since");
    std::fs::create_dir_all(other.parent().unwrap()).unwrap();
    std::fs::write(&other, b"junk").unwrap();
    let o = c
        .store
        .storegc(&[
            OsString::from("plan"),
            "--policy".into(),
            c.policy.clone().into(),
            "--state-file".into(),
            other.clone().into(),
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains(&other.display().to_string()));
    let _ = Path::new("");
}

/// Holds the state's update lock (`<state>.lock`, exclusive `flock`) as
/// another storegc run would, until dropped.
fn hold_update_lock(state: &std::path::Path) -> std::fs::File {
    use std::os::fd::AsRawFd as _;
    let mut name = state.as_os_str().to_owned();
    name.push(".lock");
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(std::path::PathBuf::from(name))
        .unwrap();
    // SAFETY: flock on a descriptor we own.
    assert_eq!(unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) }, 0);
    f
}

/// Starts storegc with `args` while the update lock is held: it must wait
/// for the lock, then finish once it is let go.
fn waits_for_the_update_lock(c: &Case, args: &[OsString]) {
    let lock = hold_update_lock(&c.state);
    let mut child = common::Holder::of(
        c.store
            .storegc(args)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    std::thread::sleep(std::time::Duration::from_millis(700));
    assert!(
        child.running(),
        "{args:?} did not wait for the state's lock"
    );
    drop(lock);
    assert!(
        child.wait().success(),
        "{args:?} failed after the lock was let go"
    );
}

/// `plan --out` and `apply` hold the state's update lock from reading the
/// state to writing it back, so one never overwrites what the other wrote
/// in between (a timer's plan and a low-disk apply, say).
#[test]
fn plan_out_and_apply_wait_for_the_state_lock() {
    if !common::nix_available("plan_out_and_apply_wait_for_the_state_lock") {
        return;
    }
    let c = Case::new();
    c.plan(true);
    c.age_state(8);
    assert_eq!(Case::planned(&c.plan(true)).len(), 2);
    waits_for_the_update_lock(&c, &["apply".into(), c.plan_file.clone().into()]);
    assert!(c.state_entries().is_empty(), "apply's update was lost");
    assert_eq!(
        c.store.invalid_among(&[c.top.clone(), c.dep.clone()]).len(),
        2
    );
    std::fs::remove_file(&c.state).unwrap();
    let plan_out: Vec<OsString> = vec![
        "plan".into(),
        "--policy".into(),
        c.policy.clone().into(),
        "--out".into(),
        c.plan_file.clone().into(),
    ];
    waits_for_the_update_lock(&c, &plan_out);
    assert!(c.state.exists(), "plan --out wrote no state");
}
