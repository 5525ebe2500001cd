//! `storegc apply --delete-with storegc`, the deletion engine of storegc's
//! own, against real Nix: on identical random stores it leaves exactly the
//! valid set the `nix-store` backend leaves, `nix-store --verify
//! --check-contents` is clean afterwards and Nix finds none of the planned
//! paths dead any more; a held `gc.lock` with `--lock-timeout` exits 2 with
//! nothing deleted; a client that roots a planned path through the
//! gc-socket while the engine runs keeps it; a read-only store (a
//! read-only bind mount, as on NixOS) is made writable in a private mount
//! namespace, and without CAP_SYS_ADMIN the run is refused with nothing
//! deleted.

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use apply_support::*;
use common::GcConf;
use serde_json::Value;

/// Builds the same random store twice, applies the same kind of plan with
/// each backend, and compares what is left.
#[test]
fn both_backends_leave_the_same_valid_set() {
    if !common::nix_available("both_backends_leave_the_same_valid_set") {
        return;
    }
    let confs = [
        GcConf::default(),
        GcConf {
            keep_outputs: Some(true),
            keep_derivations: Some(true),
        },
    ];
    for (k, conf) in confs.into_iter().enumerate() {
        let seed = 301 + k as u64;
        let mut left = Vec::new();
        for backend in ["nix-store", "storegc"] {
            let b = built(seed, 24, conf);
            let live = b.store.print_live();
            let dead = b.store.print_dead_valid();
            let file = b.plan_file("plan.json");
            let plan = make_plan(&b.store, &file, &[]);
            assert_same("plan vs --print-dead", &dead, &planned(&plan));
            let run = apply(
                &b.store,
                &file,
                &["--delete-with", backend, "--chunk-size", "5"],
            );
            let report = run.expect_code(0).report();
            assert_same(
                &format!("{backend}: deleted vs planned"),
                &dead,
                &strs(&report["deleted"]),
            );
            assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
            assert_only_live_left(&b.store, &live);
            assert_verify_clean(&b.store, true);
            let dead_after = b.store.print_dead_valid();
            assert!(
                dead_after.is_disjoint(&dead),
                "{backend}: Nix still finds planned paths: {dead_after:?}"
            );
            // Store paths by name only (the part after the hash): the two
            // stores live in different folders, so their hashes differ.
            let names: BTreeSet<String> = b
                .store
                .valid_paths()
                .iter()
                .map(|p| {
                    let base = p.rsplit('/').next().unwrap_or(p);
                    base.get(33..).unwrap_or(base).to_string()
                })
                .collect();
            left.push(names);
        }
        assert_eq!(left[0], left[1], "the backends left different valid sets");
    }
}

/// Holds `gc.lock` as a running Nix collector would: `apply --lock-timeout`
/// gives up, exit 2, and deletes nothing.
#[test]
fn held_gc_lock_times_out_and_nothing_is_deleted() {
    if !common::nix_available("held_gc_lock_times_out_and_nothing_is_deleted") {
        return;
    }
    let b = built(311, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let lock = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(b.store.state_dir.join("gc.lock"))
        .expect("opening gc.lock");
    // SAFETY: flock on our own fd.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let valid = b.store.valid_paths();
    let started = Instant::now();
    let run = apply(
        &b.store,
        &file,
        &["--delete-with", "storegc", "--lock-timeout", "1s"],
    );
    run.expect_code(2);
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "did not wait"
    );
    assert!(run.stderr.contains("gc.lock"), "{}", run.show());
    drop(lock);
    assert_same(
        "valid after a timed-out apply",
        &valid,
        &b.store.valid_paths(),
    );
}

/// A client that roots a planned path through Nix's gc-socket while the
/// engine holds the lock keeps that path (and its closure): the engine
/// adds it to its temp roots before it answers.
#[test]
fn a_root_sent_through_the_gc_socket_keeps_its_path() {
    if !common::nix_available("a_root_sent_through_the_gc_socket_keeps_its_path") {
        return;
    }
    let b = built(321, 24, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    let (target, closure) = b.richest_planned_output(&planned(&plan));
    // Take gc.lock first, so apply waits for it; connect once its socket
    // is up, while it still waits on nothing else.
    let socket = b.store.state_dir.join("gc-socket/socket");
    let _ = std::fs::remove_file(&socket);
    let args = apply_args(&file, &["--delete-with", "storegc", "--chunk-size", "1"]);
    let mut child = b
        .store
        .storegc(&args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting apply");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut conn = loop {
        if let Ok(c) = std::os::unix::net::UnixStream::connect(&socket) {
            break c;
        }
        if Instant::now() > deadline || child.try_wait().ok().flatten().is_some() {
            let _ = child.kill();
            let _ = child.wait();
            panic!("the engine's gc-socket never came up");
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    conn.write_all(format!("{target}\n").as_bytes())
        .expect("sending a root");
    let mut ack = [0u8; 1];
    conn.read_exact(&mut ack).expect("reading the answer");
    assert_eq!(ack[0], b'1');
    let out = child.wait_with_output().expect("waiting for apply");
    let stderr = String::from_utf8_lossy(&out.stderr);
    // The path was acknowledged: either it was already gone (the client
    // would rebuild it) or it and its closure are valid and complete.
    eprintln!("gc-socket root {target}: kept = {}", exists(&target));
    if exists(&target) {
        let valid = b.store.valid_paths();
        for p in &closure {
            assert!(
                valid.contains(p),
                "{p} (closure of {target}) lost: {stderr}"
            );
        }
        assert_verify_clean(&b.store, true);
    }
    drop(conn);
}

/// Runs apply in a mount namespace of its own where the store is a
/// read-only bind mount (as NixOS mounts /nix/store), optionally without
/// CAP_SYS_ADMIN. The script exits 97 if the store is writable there.
fn apply_on_read_only_store(b: &Built, plan: &std::path::Path, with_cap: bool) -> Run {
    let script = r#"store=$1; shift
mount --bind "$store" "$store" && mount -o remount,bind,ro "$store" || exit 96
touch "$store/.rw-probe" 2>/dev/null && exit 97
exec "$@""#;
    let store = b.store.store_dir.to_str().expect("utf-8 store dir");
    let mut args: Vec<std::ffi::OsString> = [
        "-m",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
        store,
    ]
    .map(Into::into)
    .to_vec();
    if !with_cap {
        args.extend(
            [
                "setpriv",
                "--bounding-set",
                "-sys_admin",
                "--inh-caps",
                "-sys_admin",
            ]
            .map(Into::into),
        );
    }
    args.push(common::storegc_bin().into());
    args.extend(
        apply_args(plan, &["--delete-with", "storegc"])
            .into_iter()
            .map(Into::into),
    );
    let mut cmd = b.store.command("unshare");
    // As `NixStore::storegc` runs it: the sandbox's pid 1 is unreadable.
    cmd.args(&args)
        .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
        .stdin(std::process::Stdio::null());
    let what = format!("unshare ... storegc apply (CAP_SYS_ADMIN: {with_cap})");
    Run::from_output(cmd.output().expect("running unshare"), what)
}

/// NixOS mounts the store read-only; the engine remounts it read-write in
/// a private mount namespace, as Nix does, and deletes. Without
/// CAP_SYS_ADMIN it is refused: exit 2, one line naming the store,
/// nothing deleted. Needs root (to make the read-only bind mount).
#[test]
fn a_read_only_store_is_made_writable_in_a_private_mount_namespace() {
    let test = "a_read_only_store_is_made_writable_in_a_private_mount_namespace";
    if !common::nix_available(test) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip_note(&format!(
            "{test}: needs root to bind-mount the store read-only"
        ));
        return;
    }
    let b = built(331, 16, GcConf::default());
    let live = b.store.print_live();
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let valid = b.store.valid_paths();
    let refused = apply_on_read_only_store(&b, &file, false);
    refused.expect_refused(&b.store.store_dir);
    assert!(refused.stderr.contains("read-only"), "{}", refused.show());
    assert_same("valid after a refused run", &valid, &b.store.valid_paths());
    let run = apply_on_read_only_store(&b, &file, true);
    let report = run.expect_code(0).report();
    assert_same(
        "deleted vs planned",
        &planned(&plan),
        &strs(&report["deleted"]),
    );
    assert_only_live_left(&b.store, &live);
    assert_verify_clean(&b.store, true);
}

/// Without `--delete-with` apply deletes with the engine: Nix's gc-socket
/// is served while it runs (the nix-store backend serves none itself) and
/// the report counts bytes freed on disk, which only the engine measures.
#[test]
fn the_engine_is_the_default_deleter() {
    if !common::nix_available("the_engine_is_the_default_deleter") {
        return;
    }
    let b = built(341, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let args = [
        std::ffi::OsStr::new("--quiet"),
        "apply".as_ref(),
        file.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ];
    let mut cmd = b.store.storegc(&args);
    cmd.env("STOREGC_TEST_PAUSE", "socket");
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("starting apply");
    // Paused right after the socket came up (the hook is the engine's):
    // the socket is there.
    let socket = b.store.state_dir.join("gc-socket/socket");
    let deadline = Instant::now() + Duration::from_secs(60);
    let stopped = |pid: u32| {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.rsplit(')')
            .next()
            .and_then(|s| s.split_whitespace().next())
            == Some("T")
    };
    while !stopped(child.id())
        && Instant::now() < deadline
        && child.try_wait().ok().flatten().is_none()
    {
        std::thread::sleep(Duration::from_millis(10));
    }
    let served = stopped(child.id()) && socket.exists();
    // SAFETY: signals to our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGCONT) };
    if !served {
        let _ = child.kill();
    }
    let out = child.wait_with_output().expect("waiting for apply");
    let run = Run::from_output(out, "storegc apply (default deleter)".into());
    assert!(served, "no gc-socket: not the engine: {}", run.show());
    let report = run.expect_code(0).report();
    assert_same(
        "deleted vs planned",
        &planned(&plan),
        &strs(&report["deleted"]),
    );
    assert!(
        report["freed_disk_bytes"].as_u64().unwrap_or(0) > 0,
        "{}",
        run.show()
    );
    assert_verify_clean(&b.store, true);
}

/// `--vacuum` rebuilds the database only when a quarter of it is free:
/// after a large deletion `repair --vacuum` shrinks it (Nix still reads
/// it: verify is clean, the valid set unchanged); right after, with no
/// free pages, it leaves it alone.
#[test]
fn vacuum_only_when_a_quarter_of_the_database_is_free() {
    if !common::nix_available("vacuum_only_when_a_quarter_of_the_database_is_free") {
        return;
    }
    let b = big(351);
    let run = apply(&b.store, &b.file, &["--delete-with", "storegc"]);
    let report = run.expect_code(0).report();
    assert!(report.get("vacuum").is_none(), "vacuumed without --vacuum");
    assert_only_live_left(&b.store, &b.live);
    let valid = b.store.valid_paths();
    let repair = |what: &str| {
        let out = b
            .store
            .storegc(&["--quiet", "repair", "--vacuum", "--format", "json"])
            .output()
            .expect("running repair");
        let run = Run::from_output(out, what.into());
        run.expect_code(0).report()["vacuum"].clone()
    };
    let v = repair("repair --vacuum after the deletion");
    let (before, free) = (v["bytes_before"].as_u64(), v["free_bytes_before"].as_u64());
    let (before, free) = (
        before.expect("bytes_before"),
        free.expect("free_bytes_before"),
    );
    assert!(
        free * 4 >= before,
        "the deletion freed under a quarter: {v}"
    );
    assert_eq!(v["done"], true, "{v}");
    assert!(
        v["bytes_after"].as_u64().expect("bytes_after") < before,
        "{v}"
    );
    assert_verify_clean(&b.store, false);
    assert_same("valid after vacuum", &valid, &b.store.valid_paths());
    let v = repair("repair --vacuum again");
    assert_eq!(v["done"], false, "{v}");
    assert_eq!(v["free_bytes_before"], 0, "{v}");
    assert_eq!(v["bytes_after"], v["bytes_before"], "{v}");
}

/// A store database another process keeps write-locked past the busy
/// timeout: the first chunk cannot start, apply exits 2 with one line
/// naming the database, and nothing is deleted.
#[test]
fn a_locked_database_exits_2_and_deletes_nothing() {
    if !common::nix_available("a_locked_database_exits_2_and_deletes_nothing") {
        return;
    }
    let b = built(361, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let valid = b.store.valid_paths();
    let db = b.store.db_path();
    let holder = rusqlite::Connection::open(&db).expect("opening the store database");
    holder
        .execute_batch("BEGIN IMMEDIATE")
        .expect("taking the write lock");
    let args = apply_args(&file, &["--delete-with", "storegc"]);
    let mut all: Vec<&std::ffi::OsStr> = vec!["--busy-timeout".as_ref(), "1s".as_ref()];
    all.extend(args);
    let out = b.store.storegc(&all).output().expect("running apply");
    let run = Run::from_output(out, "storegc apply on a locked database".into());
    holder
        .execute_batch("ROLLBACK")
        .expect("releasing the lock");
    drop(holder);
    run.expect_refused(&db);
    assert!(run.stderr.contains("locked"), "{}", run.show());
    assert_same("valid after a refused run", &valid, &b.store.valid_paths());
    for p in &valid {
        assert!(exists(p), "{p} lost its files");
    }
}
