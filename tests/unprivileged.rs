//! storegc run by a user who is not root, on a real Nix store owned by
//! root (CI runs as root and drops to `nobody`; run as another user, the
//! db folder is made read-only instead):
//!
//! - the database is read without write access to `db/`, whether there is
//!   no write-ahead log (idle: Nix 2.8, or any clean close), an empty one
//!   (Nix 2.26 exits without closing) or one with commits in it (busy), and
//!   the plan equals Nix's `--print-dead`;
//! - processes whose roots cannot be read are counted, the plan warns
//!   (text and JSON), and `apply` refuses to delete unless
//!   `--allow-incomplete-roots` is given.

mod common;

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output};

use common::{Hold, NixStore};

fn store(test: &str) -> Option<NixStore> {
    common::nix_available(test).then(NixStore::new)
}

fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// Makes the db folder read-only for the current user when not root
/// (as root, `nobody` cannot write it anyway), until dropped.
struct ReadOnlyDb(Option<PathBuf>);

impl ReadOnlyDb {
    fn new(s: &NixStore) -> ReadOnlyDb {
        if is_root() {
            return ReadOnlyDb(None);
        }
        let db = s.state_dir.join("db");
        std::fs::set_permissions(&db, std::fs::Permissions::from_mode(0o555)).expect("chmod");
        ReadOnlyDb(Some(db))
    }
}

impl Drop for ReadOnlyDb {
    fn drop(&mut self) {
        if let Some(db) = &self.0 {
            let _ = std::fs::set_permissions(db, std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn run(mut cmd: Command) -> (Output, String) {
    let out = cmd.output().expect("running storegc");
    let what = format!(
        "{:?}\nexit: {}\nstdout: {}\nstderr: {}",
        cmd.get_args().collect::<Vec<_>>(),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out, what)
}

/// `plan --format paths` as the unprivileged user; must succeed.
fn plan_paths(s: &NixStore) -> (BTreeSet<String>, String) {
    let (out, what) = run(s.unprivileged(s.storegc(&["plan", "--format", "paths"])));
    assert_eq!(out.status.code(), Some(0), "{what}");
    let paths = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    (paths, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// The names in the db folder.
fn db_files(s: &NixStore) -> BTreeSet<String> {
    std::fs::read_dir(s.state_dir.join("db"))
        .expect("listing db")
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

fn some_dead_paths(s: &NixStore) -> Vec<String> {
    let kept = s.add_text("kept", "kept\n");
    s.add_gcroot_link("kept", &kept);
    (0..3)
        .map(|i| s.add_text(&format!("dead{i}"), &format!("dead {i}\n")))
        .collect()
}

/// Closes the database as a clean last close does: SQLite checkpoints and
/// removes `-wal` and `-shm`. Nix 2.8 leaves the folder so; Nix 2.26 exits
/// without closing and leaves an empty log and its index behind.
fn close_cleanly(s: &NixStore) {
    let c = rusqlite::Connection::open(s.db_path()).expect("opening the db");
    c.query_row("SELECT count(*) FROM ValidPaths", [], |_| Ok(()))
        .expect("reading");
    drop(c);
}

/// Regression: as a user, `plan` failed with "attempt to write a readonly
/// database" (SQLITE_READONLY_DIRECTORY) on an idle store, where there
/// are no `-wal`/`-shm` files and SQLite wanted to create them. Checked on
/// the store as the installed Nix left it (no log with 2.8, an empty log
/// and index with 2.26) and after a clean close (no log with either).
#[test]
fn a_user_plans_on_an_idle_store_without_write_access_to_db() {
    let Some(s) = store("a_user_plans_on_an_idle_store_without_write_access_to_db") else {
        return;
    };
    let dead = some_dead_paths(&s);
    let want = s.print_dead_valid();
    for p in &dead {
        assert!(want.contains(p), "{p} should be dead");
    }
    for closed in [false, true] {
        if closed {
            close_cleanly(&s);
        }
        let files = db_files(&s);
        let idle = !files.contains("db.sqlite-wal") && !files.contains("db.sqlite-shm");
        assert!(idle || !closed, "a clean close left the log: {files:?}");
        let _ro = ReadOnlyDb::new(&s);
        let (got, stderr) = plan_paths(&s);
        assert_eq!(got, want, "closed cleanly: {closed}; {stderr}");
        assert_eq!(db_files(&s), files, "the reader wrote into db/");
    }
}

/// Commits still in the write-ahead log (another connection keeps Nix
/// from checkpointing it away) must be seen: the newest path is dead too.
#[test]
fn a_user_plans_on_a_busy_store_and_sees_the_commits_in_the_log() {
    let Some(s) = store("a_user_plans_on_a_busy_store_and_sees_the_commits_in_the_log") else {
        return;
    };
    some_dead_paths(&s);
    // An open connection keeps the log after nix-store closes.
    let holder = rusqlite::Connection::open(s.db_path()).expect("opening the db");
    holder
        .query_row("SELECT count(*) FROM ValidPaths", [], |_| Ok(()))
        .expect("reading");
    let newest = s.add_text("newest", "in the log only\n");
    let wal = s.state_dir.join("db/db.sqlite-wal");
    let wal_len = std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0);
    assert!(wal_len > 0, "the test wants commits in the log");
    let want = s.print_dead_valid();
    assert!(want.contains(&newest));
    let _ro = ReadOnlyDb::new(&s);
    let (got, stderr) = plan_paths(&s);
    assert_eq!(got, want, "{stderr}");
    drop(holder);
}

/// A process of root's holds a path through its working folder; a user
/// cannot read its `/proc` entries, so the root is missed. The plan says
/// so, and `apply` refuses to delete unless told to go ahead.
#[test]
fn unreadable_processes_are_counted_and_apply_refuses_without_the_flag() {
    let Some(s) = store("unreadable_processes_are_counted_and_apply_refuses_without_the_flag")
    else {
        return;
    };
    if !is_root() {
        common::skip_note("needs root: the held process must belong to another user");
        return;
    }
    let used = s.add_dir("used-by-root", "busy\n");
    let _holder = s.spawn_holder(&[Hold::Cwd(used.clone().into())], &[], false);
    // As root the process's root is seen: not planned.
    assert!(!s.storegc_plan_paths().contains(&used));

    let out_dir = s.root().join("plans");
    std::fs::create_dir_all(&out_dir).unwrap();
    let apply_dir = s.state_dir.join("storegc");
    std::fs::create_dir_all(&apply_dir).unwrap();
    for d in [&out_dir, &apply_dir] {
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o777)).unwrap();
    }
    let plan_file = out_dir.join("plan.json");
    let plan_arg = plan_file.to_str().unwrap();
    let (out, what) =
        run(s.unprivileged(s.storegc(&["plan", "--format", "text", "--out", plan_arg])));
    assert_eq!(out.status.code(), Some(0), "{what}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("roots incomplete: "), "text report: {what}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("warning: roots incomplete: "),
        "stderr: {what}"
    );
    // However many scans a run makes (the demo makes several), stderr
    // says it once.
    let mut demo = s.storegc(&["demo", "--paths", "300"]);
    demo.env("TMPDIR", &out_dir);
    let (out, what) = run(s.unprivileged(demo));
    assert_eq!(out.status.code(), Some(0), "{what}");
    let said = (String::from_utf8_lossy(&out.stderr))
        .matches("warning: roots incomplete: ")
        .count();
    assert_eq!(said, 1, "{what}");
    let plan: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&plan_file).unwrap()).unwrap();
    assert!(
        plan["unreadable_processes"].as_u64().unwrap_or(0) >= 1,
        "{plan}"
    );
    assert!(
        plan["warnings"][0]
            .as_str()
            .is_some_and(|w| w.starts_with("roots incomplete: ")),
        "{plan}"
    );
    // The missed root: exactly why apply must not go ahead.
    let planned: Vec<&str> = plan["delete"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|d| d["path"].as_str())
        .collect();
    assert!(planned.contains(&used.as_str()), "{plan}");

    let apply = |extra: &[&str]| {
        let mut args = vec![
            "apply",
            plan_arg,
            "--format",
            "json",
            "--delete-with",
            "nix-store",
        ];
        args.extend_from_slice(extra);
        let mut cmd = s.storegc(&args);
        cmd.env_remove("STOREGC_ALLOW_INCOMPLETE_ROOTS");
        run(s.unprivileged(cmd))
    };
    let before = s.valid_paths();
    let (out, what) = apply(&[]);
    assert_eq!(out.status.code(), Some(2), "{what}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.lines().count(), 1, "{what}");
    assert!(
        stderr.contains("roots incomplete") && stderr.contains("--allow-incomplete-roots"),
        "{what}"
    );
    assert_eq!(s.valid_paths(), before, "nothing may change: {what}");

    // A dry run reports, with the warning.
    let (out, what) = apply(&["--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{what}");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(warned(&report), "{what}");

    // With the flag apply goes past the check (deleting then fails for
    // other reasons as `nobody`, who may not write the store), warning.
    let (out, what) = apply(&["--allow-incomplete-roots"]);
    assert!(
        !String::from_utf8_lossy(&out.stderr).contains("roots incomplete"),
        "{what}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("report JSON: {e}: {what}"));
    assert!(warned(&report), "{what}");
    assert!(s.valid_paths().contains(&used), "{what}");
}

fn warned(report: &serde_json::Value) -> bool {
    report["warnings"].as_array().is_some_and(|w| {
        w.iter().any(|w| {
            w.as_str()
                .is_some_and(|w| w.starts_with("roots incomplete: "))
        })
    })
}
