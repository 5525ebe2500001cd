//! Bad input through the real binary: a store that is missing, corrupt,
//! locked or of another schema must make `storegc` exit 2 with exactly one
//! line on stderr naming the path at fault, without a panic, without
//! partial output, and without writing anything. Users meet these on
//! broken or busy machines, and scripts rely on exit code 2 meaning
//! "nothing was changed".

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{NixStore, Snapshot};

/// The commands that read the store.
const COMMANDS: [&[&str]; 2] = [
    &["plan", "--format", "paths"],
    &["roots", "--format", "json"],
];

/// Runs `cmd` and checks the bad-input contract: exit 2, one line on
/// stderr that names `fault`, no panic, nothing on stdout, and nothing
/// under `watched` changed.
fn expect_bad_input(mut cmd: Command, fault: &Path, watched: &Path) {
    let before = Snapshot::of(watched);
    let out = cmd.output().expect("running storegc");
    let after = Snapshot::of(watched);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let what = format!(
        "{:?} {:?}\nexit: {}\nstdout: {stdout:?}\nstderr: {stderr:?}",
        cmd.get_program(),
        cmd.get_args().collect::<Vec<_>>(),
        out.status
    );
    assert_eq!(out.status.code(), Some(2), "exit code 2 expected: {what}");
    assert!(!stderr.contains("panicked"), "panic: {what}");
    assert_eq!(
        stderr.lines().count(),
        1,
        "exactly one line on stderr expected: {what}"
    );
    assert!(
        stderr.contains(&*fault.to_string_lossy()),
        "stderr should name {}: {what}",
        fault.display()
    );
    assert!(stdout.is_empty(), "nothing on stdout expected: {what}");
    let diff = before.diff(&after);
    assert!(diff.is_empty(), "storegc wrote:\n{diff}\n{what}");
}

/// A store for one test, or `None` (test skipped) without Nix.
fn store(test: &str) -> Option<NixStore> {
    common::nix_available(test).then(NixStore::new)
}

#[test]
fn missing_state_dir() {
    let t = tempfile::tempdir().expect("temp dir");
    let state = t.path().join("no-such-state");
    for args in COMMANDS {
        let mut cmd = Command::new(common::storegc_bin());
        cmd.args(args)
            .env("NIX_STORE_DIR", t.path().join("store"))
            .env("NIX_STATE_DIR", &state)
            .env("NIX_CONF_DIR", t.path().join("etc"))
            .env_remove("NIX_CONFIG")
            .env("HOME", t.path())
            .env("XDG_CONFIG_HOME", t.path())
            .env("XDG_CONFIG_DIRS", t.path());
        expect_bad_input(cmd, &state, t.path());
    }
}

#[test]
fn missing_database() {
    let Some(s) = store("missing_database") else {
        return;
    };
    std::fs::remove_file(s.db_path()).expect("removing db.sqlite");
    for args in COMMANDS {
        expect_bad_input(s.storegc(args), &s.db_path(), s.root());
    }
}

#[test]
fn corrupt_database() {
    let Some(s) = store("corrupt_database") else {
        return;
    };
    let mut rng = common::Rng::new(7);
    let garbage: Vec<u8> = (0..65536).map(|_| rng.next_u64() as u8).collect();
    std::fs::write(s.db_path(), garbage).expect("overwriting db.sqlite");
    for args in COMMANDS {
        expect_bad_input(s.storegc(args), &s.db_path(), s.root());
    }
}

#[test]
fn empty_database_file() {
    // SQLite opens an empty file as an empty database: no tables at all.
    let Some(s) = store("empty_database_file") else {
        return;
    };
    std::fs::write(s.db_path(), b"").expect("truncating db.sqlite");
    for args in COMMANDS {
        expect_bad_input(s.storegc(args), &s.db_path(), s.root());
    }
}

#[test]
fn unsupported_schema() {
    let Some(s) = store("unsupported_schema") else {
        return;
    };
    let schema = s.state_dir.join("db/schema");
    for text in ["7", "11", "ten", ""] {
        std::fs::write(&schema, text).expect("writing db/schema");
        for args in COMMANDS {
            expect_bad_input(s.storegc(args), &schema, s.root());
        }
    }
    std::fs::remove_file(&schema).expect("removing db/schema");
    for args in COMMANDS {
        expect_bad_input(s.storegc(args), &schema, s.root());
    }
}

#[test]
fn bad_nix_conf() {
    // Nix itself refuses this file ("Boolean setting 'keep-outputs' has
    // invalid value 'maybe'").
    let Some(s) = store("bad_nix_conf") else {
        return;
    };
    s.set_conf_text("keep-outputs = maybe\n");
    let nix = s.try_run("nix-store", &["--gc", "--print-dead"]);
    assert!(!nix.status.success(), "Nix accepted keep-outputs = maybe");
    for args in COMMANDS {
        expect_bad_input(s.storegc(args), &s.conf_path(), s.root());
    }
}

#[test]
fn locked_database() {
    let Some(s) = store("locked_database") else {
        return;
    };
    // Nix's database is in WAL mode; an exclusive locking mode taken by a
    // write transaction keeps every other connection out, readers too.
    let holder = rusqlite::Connection::open(s.db_path()).expect("opening db.sqlite");
    holder
        .execute_batch("PRAGMA locking_mode = EXCLUSIVE; BEGIN EXCLUSIVE;")
        .expect("taking the exclusive lock");
    let n: i64 = holder
        .query_row("SELECT count(*) FROM ValidPaths", [], |r| r.get(0))
        .expect("reading under the lock");
    assert!(n >= 0);

    // The lock does keep a reader out (else this test would prove nothing).
    let probe = rusqlite::Connection::open_with_flags(
        s.db_path(),
        rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
    )
    .expect("opening a probe connection");
    let blocked = probe.query_row("SELECT count(*) FROM ValidPaths", [], |r| {
        r.get::<_, i64>(0)
    });
    assert!(
        blocked.is_err(),
        "the exclusive lock did not block a reader; this test cannot work here"
    );
    drop(probe);

    for args in COMMANDS {
        let start = Instant::now();
        expect_bad_input(s.storegc(args), &s.db_path(), s.root());
        // It waited for the lock (the default busy timeout), within reason.
        let waited = start.elapsed();
        assert!(
            waited >= Duration::from_millis(500) && waited < Duration::from_secs(60),
            "storegc gave up on the lock after {waited:?}"
        );
    }
    holder
        .execute_batch("ROLLBACK;")
        .expect("releasing the lock");
}

/// `storegc ARGS` on `s` as a user who cannot read past a mode-000
/// folder (see [`NixStore::unprivileged`]), with the db folder open to
/// all so SQLite's usual read-only open works and the fault under test is
/// the only one.
fn storegc_unprivileged(s: &NixStore, args: &[&str]) -> Command {
    let cmd = s.unprivileged(s.storegc(args));
    if unsafe { libc::geteuid() } == 0 {
        let db_dir = s.state_dir.join("db");
        std::fs::set_permissions(&db_dir, std::fs::Permissions::from_mode(0o777)).expect("chmod");
    }
    cmd
}

/// Gives a folder its mode back, even when an assertion fails, so the
/// store can be removed.
struct Restore<'a>(&'a Path);

impl Drop for Restore<'_> {
    fn drop(&mut self) {
        let _ = std::fs::set_permissions(self.0, std::fs::Permissions::from_mode(0o755));
    }
}

/// Makes `dir` unreadable (mode 000) until the guard drops.
fn lock_out(dir: &Path) -> Restore<'_> {
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o000)).expect("chmod");
    Restore(dir)
}

#[test]
fn unreadable_state_dir() {
    let Some(s) = store("unreadable_state_dir") else {
        return;
    };
    let db_dir = s.state_dir.join("db");
    for args in COMMANDS {
        let cmd = storegc_unprivileged(&s, args);
        let _restore = lock_out(&db_dir);
        expect_bad_input(cmd, &db_dir, &db_dir);
    }
}

/// A folder under gcroots that cannot be read may hold roots: refusing to
/// plan is the only safe answer (Nix, as root, would read it).
#[test]
fn unreadable_gcroots_folder() {
    let Some(s) = store("unreadable_gcroots_folder") else {
        return;
    };
    let p = s.add_text("rooted", "rooted\n");
    let locked = s.gcroots_dir().join("locked");
    std::fs::create_dir_all(&locked).expect("mkdir");
    s.symlink(&locked.join("r"), &p);
    for args in COMMANDS {
        let cmd = storegc_unprivileged(&s, args);
        let _restore = lock_out(&locked);
        // Only the roots: as `nobody`, SQLite leaves its -wal/-shm files.
        expect_bad_input(cmd, &locked, &s.gcroots_dir());
    }
}

/// An indirect root whose target sits in a folder that cannot be read:
/// Nix ignores the EACCES and so may delete what the link holds; storegc
/// refuses, naming the target.
#[test]
fn unreadable_indirect_root_target() {
    let Some(s) = store("unreadable_indirect_root_target") else {
        return;
    };
    let p = s.add_text("result-of-build", "built\n");
    let private = s.root().join("home/private");
    std::fs::create_dir_all(&private).expect("mkdir");
    let result = private.join("result");
    s.symlink(&result, &p);
    s.add_gcroot_link("auto/p", &result);
    for args in COMMANDS {
        let cmd = storegc_unprivileged(&s, args);
        let _restore = lock_out(&private);
        expect_bad_input(cmd, &result, &s.gcroots_dir());
    }
}

/// Regression: a store dir that does not exist was blamed on the database
/// ("path … is not a store path under …").
#[test]
fn missing_store_dir() {
    let Some(s) = store("missing_store_dir") else {
        return;
    };
    let missing = s.root().join("no-such-store");
    for args in COMMANDS {
        let mut cmd = s.storegc(args);
        cmd.env("NIX_STORE_DIR", &missing);
        expect_bad_input(cmd, &missing, s.root());
        let out = s
            .storegc(args)
            .env("NIX_STORE_DIR", &missing)
            .output()
            .expect("storegc");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("store directory does not exist"), "{err}");
    }
}

/// Regression: the OS error of an unreadable policy file was printed twice
/// ("(No such file or directory (os error 2)): No such file or directory").
#[test]
fn missing_policy_file_names_the_os_error_once() {
    let Some(s) = store("missing_policy_file_names_the_os_error_once") else {
        return;
    };
    let policy = s.root().join("no-such-policy.toml");
    let mut cmd = s.storegc(&["plan"]);
    cmd.arg("--policy").arg(&policy);
    expect_bad_input(cmd, &policy, s.root());
    let out = s
        .storegc(&["plan"])
        .arg("--policy")
        .arg(&policy)
        .output()
        .expect("storegc");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.matches("os error 2").count(), 1, "{err}");
}
