//! Crash safety of `storegc apply --delete-with storegc` against real Nix
//! 2.8: the engine is stopped at a chosen point with the test-only hook
//! `STOREGC_TEST_PAUSE=<point>` (it raises SIGSTOP on itself there) and
//! killed with SIGKILL, during the socket setup, mid-transaction, between a
//! chunk's commit and its files, and during the `.links` pass. After each
//! kill `nix-store --verify --check-contents` is clean and every valid path
//! has its files; the next `apply` finishes the job and removes (and
//! reports) what the crash left without a database row; so does `storegc
//! repair`. The same holds for kills at random moments of a run. SIGTERM
//! while a chunk is under way lets the chunk finish (rows and files) and
//! stops before the next.

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::MetadataExt;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use apply_support::*;
use common::GcConf;

/// A running apply, killed and reaped when dropped (also on a failure).
struct Paused {
    child: Option<Child>,
    what: String,
}

impl Paused {
    fn pid(&self) -> i32 {
        self.child.as_ref().map_or(0, |c| c.id() as i32)
    }

    /// Waits until the process has stopped itself at its pause point.
    fn wait_stopped(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let stat =
                std::fs::read_to_string(format!("/proc/{}/stat", self.pid())).unwrap_or_default();
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next());
            if state == Some("T") {
                return;
            }
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                let out = self.finish();
                panic!(
                    "{} ended ({status}) before its pause point:\n{}",
                    self.what,
                    out.show()
                );
            }
            assert!(Instant::now() < deadline, "{} never paused", self.what);
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: a signal to our own child.
        unsafe { libc::kill(self.pid(), sig) };
    }

    fn finish(&mut self) -> Run {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("waiting for apply");
        Run::from_output(out, self.what.clone())
    }
}

impl Drop for Paused {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn spawn_paused(b: &Built, plan: &std::path::Path, point: &str, extra: &[&str]) -> Paused {
    spawn(b, plan, Some(point), extra)
}

/// Starts apply, stopping itself at `pause` when given.
fn spawn(b: &Built, plan: &std::path::Path, pause: Option<&str>, extra: &[&str]) -> Paused {
    let args = apply_args(plan, extra);
    let mut cmd = b.store.storegc(&args);
    if let Some(point) = pause {
        cmd.env("STOREGC_TEST_PAUSE", point);
    }
    cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
    let what = format!("storegc apply (pause: {pause:?})");
    Paused {
        child: Some(cmd.spawn().expect("starting apply")),
        what,
    }
}

/// The store is consistent: verify (contents too) is clean and every
/// valid path has its files.
fn assert_consistent(b: &Built, when: &str) {
    assert_verify_clean(&b.store, true);
    for p in b.store.valid_paths() {
        assert!(exists(&p), "{when}: valid path {p} lacks its files");
    }
}

/// Planned paths still on disk but no longer valid: what a crash between
/// a commit and its files leaves.
fn leftovers(b: &Built, planned: &BTreeSet<String>) -> BTreeSet<String> {
    let valid = b.store.valid_paths();
    planned
        .iter()
        .filter(|p| exists(p) && !valid.contains(*p))
        .cloned()
        .collect()
}

/// `.links` entries no store file uses any more.
fn unused_links(b: &Built) -> usize {
    let dir = b.store.store_dir.join(".links");
    std::fs::read_dir(dir).map_or(0, |d| {
        d.filter_map(|e| e.ok()?.metadata().ok())
            .filter(|m| m.nlink() == 1)
            .count()
    })
}

/// Kills apply at `point` (its `nth` arrival there), checks the store,
/// then finishes with a second apply. Returns what the crash left without
/// a row.
fn crash_at(point: &str, nth: usize, seed: u64, optimise: bool) -> BTreeSet<String> {
    let b = built(seed, 24, GcConf::default());
    if optimise {
        b.store.nix_store(&["--optimise"]);
    }
    let live = b.store.print_live();
    let file = b.plan_file("plan.json");
    let planned = planned(&make_plan(&b.store, &file, &[]));
    assert!(planned.len() >= 4, "too little garbage: {planned:?}");
    let at = format!("{point}:{nth}");
    let mut run = spawn_paused(
        &b,
        &file,
        &at,
        &["--delete-with", "storegc", "--chunk-size", "2"],
    );
    run.wait_stopped();
    run.signal(libc::SIGKILL);
    let killed = run.finish();
    assert_eq!(killed.code, None, "not killed: {}", killed.show());
    finish_after_crash(&b, &file, &planned, &live, point)
}

/// After a kill (`what`): the store is consistent, and the next apply
/// removes (and reports) what the crash left without a row, deletes the
/// rest of the plan and leaves exactly the live paths and no unused
/// `.links` entries. Returns what the crash left without a row.
fn finish_after_crash(
    b: &Built,
    file: &std::path::Path,
    planned: &BTreeSet<String>,
    live: &BTreeSet<String>,
    what: &str,
) -> BTreeSet<String> {
    assert_consistent(b, &format!("killed at {what}"));
    let left = leftovers(b, planned);
    let again = apply(&b.store, file, &["--delete-with", "storegc"]);
    let report = again.expect_code(0).report();
    let removed = strs(&report["orphans_removed"]);
    assert!(
        left.is_subset(&removed),
        "{what}: crash leftovers not removed: {}",
        set_diff(&left, &removed)
    );
    let valid = b.store.valid_paths();
    for p in &removed {
        assert!(
            !valid.contains(p) && !exists(p),
            "{what}: {p} removed wrongly"
        );
    }
    for p in planned {
        assert!(
            !exists(p),
            "{what}: planned {p} still on disk after the second run"
        );
    }
    assert_only_live_left(&b.store, live);
    assert_consistent(b, &format!("after the run that followed {what}"));
    assert_eq!(unused_links(b), 0, "{what}: unused .links entries left");
    left
}

/// Three seeds from `base` (or `STOREGC_SEED`), each with the arrival
/// (1 or 2: the first or second chunk, `.links` entry) to stop at.
fn seeds_and_points(base: u64) -> Vec<(u64, usize)> {
    let base = std::env::var("STOREGC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(base);
    let mut rng = common::Rng::new(base);
    (0..3)
        .map(|k| (base + 10 * k, 1 + rng.below(2)))
        .inspect(|(seed, nth)| eprintln!("apply_crash: seed {seed}, stop at arrival {nth}"))
        .collect()
}

#[test]
fn sigkill_during_the_socket_setup() {
    if !common::nix_available("sigkill_during_the_socket_setup") {
        return;
    }
    for seed in [401, 411] {
        let left = crash_at("socket", 1, seed, false);
        assert!(left.is_empty(), "nothing was deleted yet: {left:?}");
    }
}

#[test]
fn sigkill_mid_transaction_commits_nothing() {
    if !common::nix_available("sigkill_mid_transaction_commits_nothing") {
        return;
    }
    for (seed, nth) in seeds_and_points(402) {
        let left = crash_at("transaction", nth, seed, false);
        assert!(
            left.is_empty(),
            "a rolled-back chunk left paths without rows: {left:?}"
        );
    }
}

#[test]
fn sigkill_between_a_commit_and_its_files() {
    if !common::nix_available("sigkill_between_a_commit_and_its_files") {
        return;
    }
    for (seed, nth) in seeds_and_points(403) {
        let left = crash_at("files", nth, seed, false);
        assert!(
            !left.is_empty(),
            "the kill left no committed paths with files"
        );
    }
}

#[test]
fn sigkill_during_the_links_pass() {
    if !common::nix_available("sigkill_during_the_links_pass") {
        return;
    }
    for (seed, nth) in seeds_and_points(404) {
        crash_at("links", nth, seed, true);
    }
}

/// `storegc repair` removes what a crash left, and nothing valid.
#[test]
fn repair_removes_what_a_crash_left() {
    if !common::nix_available("repair_removes_what_a_crash_left") {
        return;
    }
    let b = built(405, 24, GcConf::default());
    let file = b.plan_file("plan.json");
    let planned = planned(&make_plan(&b.store, &file, &[]));
    let mut run = spawn_paused(
        &b,
        &file,
        "files",
        &["--delete-with", "storegc", "--chunk-size", "3"],
    );
    run.wait_stopped();
    run.signal(libc::SIGKILL);
    run.finish();
    let left = leftovers(&b, &planned);
    assert!(
        !left.is_empty(),
        "the kill left no committed paths with files"
    );
    let valid = b.store.valid_paths();
    let out = b
        .store
        .storegc(&["--quiet", "repair", "--format", "json"])
        .output()
        .expect("running repair");
    let rep = Run::from_output(out, "storegc repair".into());
    let removed = strs(&rep.expect_code(0).report()["orphans_removed"]);
    assert!(left.is_subset(&removed), "{}", set_diff(&left, &removed));
    assert!(removed.is_disjoint(&valid), "repair removed valid paths");
    assert_eq!(valid, b.store.valid_paths(), "repair changed the valid set");
    assert!(leftovers(&b, &planned).is_empty());
    assert_consistent(&b, "after repair");
}

/// SIGTERM while a chunk is being deleted: the chunk finishes (rows and
/// files), apply stops before the next one (exit 1, interrupted), and the
/// store is consistent; the next run finishes.
#[test]
fn sigterm_finishes_the_current_chunk_and_stops() {
    if !common::nix_available("sigterm_finishes_the_current_chunk_and_stops") {
        return;
    }
    let b = built(406, 24, GcConf::default());
    let live = b.store.print_live();
    let file = b.plan_file("plan.json");
    let planned = planned(&make_plan(&b.store, &file, &[]));
    let mut run = spawn_paused(
        &b,
        &file,
        "files",
        &["--delete-with", "storegc", "--chunk-size", "2"],
    );
    run.wait_stopped();
    run.signal(libc::SIGTERM);
    run.signal(libc::SIGCONT);
    let stopped = run.finish();
    let report = stopped.expect_code(1).report();
    assert_eq!(report["interrupted"], true, "{}", stopped.show());
    let deleted = strs(&report["deleted"]);
    assert!(
        !deleted.is_empty() && deleted.len() <= 2,
        "{}",
        stopped.show()
    );
    for p in &deleted {
        assert!(!exists(p), "{p}: reported deleted, files still there");
    }
    assert!(
        leftovers(&b, &planned).is_empty(),
        "the chunk was cut short"
    );
    let valid = b.store.valid_paths();
    assert!(
        !and(&planned, &valid).is_empty(),
        "nothing left for a second run"
    );
    assert_consistent(&b, "after SIGTERM");
    apply(&b.store, &file, &["--delete-with", "storegc"]).expect_code(0);
    assert_only_live_left(&b.store, &live);
    assert_consistent(&b, "after the second run");
}

/// SIGKILL while the next run removes what an earlier crash left: the
/// store stays consistent and a third run removes the rest.
#[test]
fn sigkill_during_the_orphan_sweep() {
    if !common::nix_available("sigkill_during_the_orphan_sweep") {
        return;
    }
    let b = built(407, 24, GcConf::default());
    let live = b.store.print_live();
    let file = b.plan_file("plan.json");
    let planned = planned(&make_plan(&b.store, &file, &[]));
    let engine = ["--delete-with", "storegc", "--chunk-size", "4"];
    let mut first = spawn_paused(&b, &file, "files", &engine);
    first.wait_stopped();
    first.signal(libc::SIGKILL);
    first.finish();
    let left = leftovers(&b, &planned);
    assert!(
        left.len() >= 2,
        "too few leftovers to stop between: {left:?}"
    );
    let mut second = spawn_paused(&b, &file, "orphans", &engine);
    second.wait_stopped();
    second.signal(libc::SIGKILL);
    second.finish();
    assert_consistent(&b, "killed during the orphan sweep");
    let after = leftovers(&b, &planned);
    assert!(
        after.len() < left.len() && after.is_subset(&left),
        "{left:?} -> {after:?}"
    );
    let third = apply(&b.store, &file, &["--delete-with", "storegc"]);
    third.expect_code(0);
    assert!(leftovers(&b, &planned).is_empty());
    for p in &planned {
        assert!(!exists(p), "{p} still on disk");
    }
    assert_only_live_left(&b.store, &live);
    assert_consistent(&b, "after the third run");
}

/// SIGKILL at random moments, wherever apply happens to be rather than at
/// a pause point: each seed's store (optimised, so the `.links` pass has
/// work) is planned, and apply with chunks of one path is killed after a
/// delay drawn from [0, T), T the wall time of a full apply of a store
/// built alike. After each kill the store is consistent and the next run
/// finishes the job. At least one kill must land before its run ended,
/// or the test proved nothing.
#[test]
fn sigkill_at_random_moments() {
    if !common::nix_available("sigkill_at_random_moments") {
        return;
    }
    let base = std::env::var("STOREGC_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(420);
    let engine = ["--delete-with", "storegc", "--chunk-size", "1"];
    let optimised_plan = |seed| {
        let b = built(seed, 24, GcConf::default());
        b.store.nix_store(&["--optimise"]);
        let live = b.store.print_live();
        let file = b.plan_file("plan.json");
        let planned = planned(&make_plan(&b.store, &file, &[]));
        (b, live, file, planned)
    };
    let (b, _, file, _) = optimised_plan(base);
    let start = Instant::now();
    apply(&b.store, &file, &engine).expect_code(0);
    let full = start.elapsed().as_micros().max(1) as usize;
    let mut rng = common::Rng::new(base);
    let mut mid_run = 0;
    for seed in (base + 1)..(base + 7) {
        let (b, live, file, planned) = optimised_plan(seed);
        let delay = Duration::from_micros(rng.below(full) as u64);
        let mut run = spawn(&b, &file, None, &engine);
        std::thread::sleep(delay);
        run.signal(libc::SIGKILL);
        let killed = run.finish().code.is_none();
        mid_run += usize::from(killed);
        let still_valid = and(&planned, &b.store.valid_paths()).len();
        let what = format!("seed {seed} after {delay:?}");
        let left = finish_after_crash(&b, &file, &planned, &live, &what);
        eprintln!(
            "apply_crash: seed {seed}, SIGKILL after {delay:?} of {full} us (killed: {killed}): \
             {still_valid} of {} planned paths were still valid, {} left without a row",
            planned.len(),
            left.len()
        );
    }
    assert!(mid_run > 0, "every run ended before its kill");
}
