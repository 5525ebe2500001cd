//! Bad input for `storegc apply --delete-with storegc` (issue 13): a stale
//! plan, a plan made for another store, a store database another process
//! holds a write transaction on past the busy timeout, and a store the
//! caller cannot write to (as `nobody` through `setpriv` when the tests run
//! as root). Each exits 2 with one line on stderr naming what is at fault,
//! nothing on stdout, and deletes nothing. (A held `gc.lock` is in
//! tests/apply_engine.rs.)

mod apply_support;
mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use apply_support::*;
use common::{GcConf, NixStore};
use serde_json::Value;

/// The refusal contract, plus: every valid path is still valid and on
/// disk.
fn expect_refused_nothing_deleted(
    run: &Run,
    fault: &Path,
    b: &Built,
    valid: &std::collections::BTreeSet<String>,
) {
    run.expect_refused(fault);
    assert_same(
        "valid paths after a refused apply",
        valid,
        &b.store.valid_paths(),
    );
    let missing: Vec<&String> = valid.iter().filter(|p| !exists(p)).collect();
    assert!(missing.is_empty(), "files gone: {missing:#?}");
}

fn engine_args() -> [&'static str; 2] {
    ["--delete-with", "storegc"]
}

#[test]
fn stale_and_foreign_plans_are_refused() {
    if !common::nix_available("stale_and_foreign_plans_are_refused") {
        return;
    }
    let b = built(1501, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let valid = b.store.valid_paths();

    // Stale: made two days ago (the default --max-plan-age is 24h).
    let mut stale = plan.clone();
    let created = std::time::SystemTime::now() - Duration::from_secs(2 * 86_400);
    stale["created"] = Value::String(humantime::format_rfc3339_seconds(created).to_string());
    let stale_file = b.plan_file("stale.json");
    std::fs::write(&stale_file, stale.to_string()).expect("writing the plan");
    let state = b.store.state_snapshot();
    let run = apply(&b.store, &stale_file, &engine_args());
    assert_eq!(state, b.store.state_snapshot(), "the state dir changed");
    expect_refused_nothing_deleted(&run, &stale_file, &b, &valid);

    // Foreign: the same plan made for another store.
    let other = NixStore::new();
    let foreign_file = other.root().join("plan.json");
    make_plan(&other, &foreign_file, &[]);
    let state = b.store.state_snapshot();
    let run = apply(&b.store, &foreign_file, &engine_args());
    assert_eq!(state, b.store.state_snapshot(), "the state dir changed");
    expect_refused_nothing_deleted(&run, &foreign_file, &b, &valid);
}

/// A Nix process in the middle of a write transaction (`BEGIN IMMEDIATE`
/// holds SQLite's RESERVED lock: readers go on, writers wait) that lasts
/// past the busy timeout: the engine cannot delete a row, so it refuses
/// before anything changed, naming the database.
#[test]
fn a_database_held_by_a_writer_past_the_busy_timeout_is_refused() {
    if !common::nix_available("a_database_held_by_a_writer_past_the_busy_timeout_is_refused") {
        return;
    }
    let b = built(1502, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let valid = b.store.valid_paths();
    let writer = rusqlite::Connection::open(b.store.db_path()).expect("opening db.sqlite");
    writer
        .execute_batch("BEGIN IMMEDIATE; UPDATE ValidPaths SET registrationTime = registrationTime WHERE id = 1;")
        .expect("starting a write transaction");
    let start = Instant::now();
    let run = apply(
        &b.store,
        &file,
        &["--delete-with", "storegc", "--busy-timeout", "1s"],
    );
    let waited = start.elapsed();
    writer
        .execute_batch("ROLLBACK")
        .expect("ending the transaction");
    expect_refused_nothing_deleted(&run, &b.store.db_path(), &b, &valid);
    assert!(
        waited >= Duration::from_millis(900),
        "did not wait: {waited:?}"
    );
}

/// `storegc apply` as `nobody` (through setpriv when root; else as the
/// current user) on a store whose state dir it may write but whose store
/// dir it may not: refused before any row goes, naming the store dir.
#[test]
fn an_unwritable_store_is_refused() {
    if !common::nix_available("an_unwritable_store_is_refused") {
        return;
    }
    let b = built(1503, 12, GcConf::default());
    let file = b.plan_file("plan.json");
    let plan = make_plan(&b.store, &file, &[]);
    assert!(!planned(&plan).is_empty());
    let valid = b.store.valid_paths();
    let root = unsafe { libc::geteuid() } == 0;
    let engine = engine_args();
    let args = apply_args(&file, &engine);
    let cmd = b.store.storegc(&args);
    let mut cmd = if root {
        // nobody may read everything and write the state dir (locks,
        // socket, database) but not the store dir (root's, 0755).
        common::run_ok(
            Command::new("chmod")
                .arg("-R")
                .arg("a+rwX")
                .arg(&b.store.state_dir),
        );
        b.store.unprivileged(cmd)
    } else {
        std::fs::set_permissions(&b.store.store_dir, std::fs::Permissions::from_mode(0o555))
            .expect("chmod");
        cmd
    };
    let what = format!("{cmd:?}");
    let run = Run::from_output(cmd.output().expect("running storegc"), what);
    if !root {
        std::fs::set_permissions(&b.store.store_dir, std::fs::Permissions::from_mode(0o755))
            .expect("chmod");
    }
    expect_refused_nothing_deleted(&run, &b.store.store_dir, &b, &valid);
}
