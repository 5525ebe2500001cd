//! `storegc apply` through the Nix daemon: a real `nix-daemon` serves the
//! private temp store (as the user running the tests), and apply's
//! `nix-store --delete` goes to it with `NIX_REMOTE=daemon` or
//! `NIX_REMOTE=unix://<socket>`. The daemon re-checks liveness itself, so
//! its refusals come back over the socket, worded by the daemon's Nix.
//!
//! Covered: the same results as in local mode with a root added between
//! plan and apply (the surviving valid set is what Nix keeps); a path that
//! became live after apply's re-check is refused by the daemon and
//! reported kept, not failed; Ctrl-C while the daemon deletes leaves a
//! store Nix verifies, and a second apply finishes. Also here: every
//! refusal wording storegc knows (Nix 2.8, Nix 2.26 to 2.35, Lix 2.93+,
//! and "error: " prefixes repeated by a daemon), printed by a stand-in
//! `nix-store` on PATH, keeps the paths it names and what they keep.

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use apply_support::*;
use common::NixStore;
use serde_json::Value;

/// A `nix-daemon` on a harness store, in its own process group; killed
/// (the whole group, workers too) and reaped on drop, also when the test
/// panics.
struct Daemon {
    child: Child,
    socket: PathBuf,
}

impl Daemon {
    /// Starts the daemon and waits (up to 30 s) for its socket.
    fn start(store: &NixStore) -> Daemon {
        let socket = store.state_dir.join("daemon-socket/socket");
        let child = store
            .command("nix-daemon")
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting nix-daemon");
        let mut d = Daemon { child, socket };
        let start = Instant::now();
        while !d.socket.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("nix-daemon exited before making its socket: {st}");
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "no daemon socket at {} after 30 s",
                d.socket.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        d
    }

    /// The `NIX_REMOTE` values that reach this daemon.
    fn remotes(&self) -> [String; 2] {
        [
            "daemon".to_string(),
            format!("unix://{}", self.socket.display()),
        ]
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let pgid = self.child.id() as i32;
        // SAFETY: killpg on the process group we created for the daemon.
        unsafe { libc::killpg(pgid, libc::SIGKILL) };
        let _ = self.child.wait();
        let start = Instant::now();
        while group_alive(pgid) && start.elapsed() < Duration::from_secs(30) {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Every later storegc (and Nix) command of `store` talks to the daemon
/// through `remote`.
fn through(store: &NixStore, remote: &str) {
    store.set_extra_env(&[("NIX_REMOTE", remote)]);
}

/// Back to local mode (`NIX_REMOTE=`), for the oracle.
fn local(store: &NixStore) {
    store.set_extra_env(&[]);
}

#[test]
fn root_added_between_plan_and_apply_through_the_daemon() {
    if !common::nix_available("root_added_between_plan_and_apply_through_the_daemon") {
        return;
    }
    for (k, remote_kind) in [0usize, 1].into_iter().enumerate() {
        let b = built(901 + k as u64, 24, common::GcConf::default());
        let daemon = Daemon::start(&b.store);
        let remote = daemon.remotes()[remote_kind].clone();
        let file = b.plan_file("plan.json");
        let plan = planned(&make_plan(&b.store, &file, &[]));
        let (p, keep) = b.richest_planned_output(&plan);
        b.store.add_gcroot_link("late/new", &p);
        let dead_now = b.store.print_dead_valid();
        assert!(!dead_now.contains(&p), "Nix should see the new root");
        let valid = b.store.valid_paths();
        let want = and(&plan, &dead_now);
        eprintln!(
            "apply_daemon: NIX_REMOTE={remote}, {} planned, {} dead now",
            plan.len(),
            want.len()
        );

        through(&b.store, &remote);
        let run = apply(&b.store, &file, &[]);
        local(&b.store);
        let report = run.expect_code(0).report();
        assert_same("deleted", &want, &strs(&report["deleted"]));
        // The report says where the deleting happened.
        let by = report["deleted_by"].as_str().unwrap_or_default();
        assert!(
            by.starts_with("nix-store --delete, through the"),
            "deleted_by: {by}\n{}",
            run.show()
        );
        assert_same(
            "kept because live now",
            &minus(&plan, &dead_now),
            &strs(&report["skipped_live"]),
        );
        assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
        let after = b.store.valid_paths();
        assert_same("valid after apply", &minus(&valid, &want), &after);
        assert!(minus(&keep, &after).is_empty(), "the new root lost paths");
        assert!(b.store.print_dead_valid().is_empty());
        assert_verify_clean(&b.store, true);
        drop(daemon);

        // With the daemon gone the same settings reach nothing: proof that
        // the deletions above went through it.
        let b2 = built(951 + k as u64, 12, common::GcConf::default());
        let file = b2.plan_file("plan.json");
        let plan = planned(&make_plan(&b2.store, &file, &[]));
        let gone_daemon = remote.replace(
            &*b.store.state_dir.to_string_lossy(),
            &b2.store.state_dir.to_string_lossy(),
        );
        through(&b2.store, &gone_daemon);
        let run = apply(&b2.store, &file, &[]);
        local(&b2.store);
        let report = run.report();
        assert_eq!(report["deleted"], Value::Array(vec![]), "{}", run.show());
        assert_eq!(
            report["failed"].as_array().map(Vec::len),
            Some(plan.len()),
            "{}",
            run.show()
        );
        assert_ne!(run.code, Some(0), "{}", run.show());
    }
}

/// A root that appears after apply's re-check, while apply is about to
/// call Nix: the daemon refuses the path, its answer comes back over the
/// socket, and apply keeps the path and what it keeps, and deletes the
/// rest.
#[test]
fn refusal_relayed_by_the_daemon_keeps_the_path() {
    if !common::nix_available("refusal_relayed_by_the_daemon_keeps_the_path") {
        return;
    }
    let b = built(961, 24, common::GcConf::default());
    let daemon = Daemon::start(&b.store);
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let (p, keep) = b.richest_planned_output(&plan);
    let valid = b.store.valid_paths();

    let wrap = Wrap::new(&b.store);
    wrap.hold_before(1);
    through(&b.store, &daemon.remotes()[0]);
    let mut running = spawn_apply(&b.store, &file, Some(&wrap));
    local(&b.store);
    running.wait_until("the first nix-store call", || wrap.started(1));
    b.store.add_gcroot_link("late/while-deleting", &p);
    let dead_now = b.store.print_dead_valid();
    wrap.release_before(1);
    let run = running.finish();
    let report = run.expect_code(0).report();

    let want = and(&plan, &dead_now);
    assert_same("deleted", &want, &strs(&report["deleted"]));
    assert!(wrap.calls() >= 2, "no retry after the refusal");
    assert!(
        strs(&report["skipped_live"]).contains(&p),
        "{p} not reported kept: {}",
        run.show()
    );
    assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
    let after = b.store.valid_paths();
    assert_same("valid after apply", &minus(&valid, &want), &after);
    assert!(minus(&keep, &after).is_empty(), "the new root lost paths");
    assert_verify_clean(&b.store, false);
    drop(daemon);
}

/// Ctrl-C (SIGINT to apply's process group) while the daemon deletes the
/// first batch: apply stops with exit 1 and says so, the store stays
/// valid for Nix, and a second apply through the daemon finishes.
#[test]
fn ctrl_c_while_the_daemon_deletes_stops_safely() {
    if !common::nix_available("ctrl_c_while_the_daemon_deletes_stops_safely") {
        return;
    }
    let big = big(971);
    let daemon = Daemon::start(&big.store);
    let wrap = Wrap::new(&big.store);
    through(&big.store, &daemon.remotes()[1]);
    let mut running = spawn_apply(&big.store, &big.file, Some(&wrap));
    running.wait_until("the first nix-store call", || wrap.started(1));
    let batch = wrap.paths(1);
    running.wait_until("the daemon's first deletion", || {
        batch.iter().any(|p| !exists(p))
    });
    running.signal_group(libc::SIGINT);
    let run = running.finish();
    let report = run.expect_code(1).report();
    assert_eq!(report["interrupted"], Value::Bool(true), "{}", run.show());
    assert_eq!(wrap.calls(), 1, "apply went on after SIGINT");
    eprintln!(
        "apply_daemon: Ctrl-C after {} deletions, {} reported failed; first: {}",
        report["deleted"].as_array().map_or(0, Vec::len),
        report["failed"].as_array().map_or(0, Vec::len),
        report["failed"][0]
    );
    // Whatever the daemon's worker still does, it does under the GC lock,
    // which --verify waits for.
    local(&big.store);
    assert_verify_clean(&big.store, false);
    through(&big.store, &daemon.remotes()[0]);
    let again = apply(&big.store, &big.file, &[]);
    local(&big.store);
    let report = again.expect_code(0).report();
    assert_eq!(report["failed"], Value::Array(vec![]), "{}", again.show());
    assert_only_live_left(&big.store, &big.live);
    assert_verify_clean(&big.store, false);
    drop(daemon);
}

// ---------------------------------------------------------------------------
// Refusal wordings, from a stand-in nix-store on PATH

/// A `nix-store` that, on its first call, prints `text` (with `@1@`,
/// `@2@` replaced by the paths given) on stderr and exits 1 without
/// deleting anything; later calls run the real one.
const STAND_IN_SH: &str = r#"#!/bin/sh
d="$STOREGC_TEST_STAND_IN"
if [ ! -e "$d/called" ]; then
  : > "$d/called"
  cat "$d/text" >&2
  exit 1
fi
exec "$STOREGC_TEST_REAL_NIX_STORE" "$@"
"#;

/// How a wording names the refused paths.
#[derive(Clone, Copy, Debug)]
enum Naming {
    Full,
    Base,
}

fn wordings() -> Vec<(&'static str, Naming, usize, &'static str)> {
    vec![
        (
            "Nix 2.8",
            Naming::Full,
            1,
            "finding garbage collector roots...\nerror: Cannot delete path '@1@' since it is still alive. To find out why, use: nix-store --query --roots\n",
        ),
        (
            "Nix 2.26 to 2.35",
            Naming::Full,
            1,
            "error: Cannot delete path '@1@' since it is still alive. To find out why, use: nix-store --query --roots and nix-store --query --referrers\n",
        ),
        (
            "Nix through a daemon",
            Naming::Full,
            1,
            "error: error: Cannot delete path '@1@' since it is still alive. To find out why, use: nix-store --query --roots and nix-store --query --referrers\n",
        ),
        (
            "Lix 2.93+",
            Naming::Base,
            2,
            "error: Cannot delete some of the given paths because they are still alive. Paths not deleted:\n  @1@\n  @2@\nTo find out why, use nix-store --query --roots and nix-store --query --referrers.\n",
        ),
        (
            "Lix through a daemon",
            Naming::Base,
            2,
            "error: error: Cannot delete some of the given paths because they are still alive. Paths not deleted:\n  @1@\n  @2@\nTo find out why, use nix-store --query --roots and nix-store --query --referrers.\n",
        ),
    ]
}

#[test]
fn every_refusal_wording_keeps_the_paths_it_names() {
    if !common::nix_available("every_refusal_wording_keeps_the_paths_it_names") {
        return;
    }
    let real = real_nix_store();
    for (k, (who, naming, count, text)) in wordings().into_iter().enumerate() {
        let b = built(981 + k as u64, 24, common::GcConf::default());
        let file = b.plan_file("plan.json");
        let plan = planned(&make_plan(&b.store, &file, &[]));
        let mut named: Vec<String> = b
            .outputs()
            .into_iter()
            .filter(|p| plan.contains(p))
            .collect();
        assert!(named.len() >= count, "too few planned outputs");
        // The first and the last by name: far apart in the graph.
        let last = named.pop().expect("an output");
        named.truncate(count - 1);
        named.push(last);
        let shown: Vec<String> = named
            .iter()
            .map(|p| match naming {
                Naming::Full => p.clone(),
                Naming::Base => base_of(p),
            })
            .collect();
        let mut message = text.to_string();
        for (i, s) in shown.iter().enumerate() {
            message = message.replace(&format!("@{}@", i + 1), s);
        }
        let dir = b.store.root().join("stand-in");
        std::fs::create_dir_all(&dir).expect("creating the stand-in folder");
        std::fs::write(dir.join("text"), &message).expect("writing the wording");
        let script = dir.join("nix-store");
        std::fs::write(&script, STAND_IN_SH).expect("writing the stand-in");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the stand-in");

        let named: BTreeSet<String> = named.into_iter().collect();
        let kept = and(&plan, &liveness_closure(&b.store, &named));
        let want = minus(&plan, &kept);
        let valid = b.store.valid_paths();

        let path = std::env::join_paths(
            std::iter::once(dir.clone()).chain(std::env::split_paths(&common::search_path())),
        )
        .expect("PATH");
        let path = path.to_string_lossy().into_owned();
        let real_s = real.to_string_lossy().into_owned();
        let dir_s = dir.to_string_lossy().into_owned();
        b.store.set_extra_env(&[
            ("PATH", &path),
            ("STOREGC_TEST_STAND_IN", &dir_s),
            ("STOREGC_TEST_REAL_NIX_STORE", &real_s),
        ]);
        let run = apply(&b.store, &file, &[]);
        local(&b.store);
        assert!(dir.join("called").exists(), "{who}: stand-in not used");
        let report = run.expect_code(0).report();
        assert_eq!(
            report["failed"],
            Value::Array(vec![]),
            "{who}: {}",
            run.show()
        );
        assert_same(
            &format!("{who}: kept"),
            &kept,
            &strs(&report["skipped_live"]),
        );
        assert_same(&format!("{who}: deleted"), &want, &strs(&report["deleted"]));
        assert_same(
            &format!("{who}: valid after"),
            &minus(&valid, &want),
            &b.store.valid_paths(),
        );
    }
}

fn base_of(p: &str) -> String {
    Path::new(p)
        .file_name()
        .expect("a store path")
        .to_string_lossy()
        .into_owned()
}
