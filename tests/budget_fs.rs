//! Percentage budgets and `plan --only-if-available-below` against a
//! filesystem of known size: a real Nix store whose store directory is a
//! 64 MiB tmpfs mounted for the test (root only; as another user the
//! mounting tests are skipped with a note). The expected limits are
//! computed here from the test's own statvfs of that tmpfs, which nothing
//! else writes to, and every planned path must be one Nix calls dead.
//! Bad values exit 2 naming the key or flag (no mount needed).

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{nix_available, skip_note, storegc_bin, NixStore};

const MIB: u64 = 1 << 20;
const FS_SIZE: u64 = 64 * MIB;

/// A tmpfs mounted on `path`, unmounted when dropped (on a failing test
/// too: the guard is dropped while unwinding).
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path, bytes: u64) -> Tmpfs {
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=1775"))
            .arg("storegc-test")
            .arg(path)
            .output()
            .expect("running mount");
        assert!(
            out.status.success(),
            "mount tmpfs on {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs {
            path: path.to_path_buf(),
        }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.path)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            // Busy: detach it so it goes once its last user does.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
        }
    }
}

/// statvfs of `dir`: (size, available) in bytes, as storegc should read it.
fn statvfs(dir: &Path) -> (u64, u64) {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(dir.as_os_str().as_bytes()).unwrap();
    // SAFETY: all-zero bytes are a valid statvfs; c is a C string.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0);
    let f = st.f_frsize as u64;
    (st.f_blocks as u64 * f, st.f_bavail as u64 * f)
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// A Nix store whose store directory is a 64 MiB tmpfs holding six
/// unrooted 4 MiB paths and one rooted 1 MiB path. `None` (with a note)
/// when the test cannot run here.
fn store_on_tmpfs(test: &str) -> Option<(NixStore, Tmpfs, Vec<String>)> {
    if !nix_available(test) {
        return None;
    }
    if !is_root() {
        skip_note(&format!(
            "{test}: mounting a tmpfs of known size needs root (CI runs as root)"
        ));
        return None;
    }
    let store = NixStore::new();
    let fs = Tmpfs::mount(&store.store_dir, FS_SIZE);
    let mut dead = Vec::new();
    for i in 0..6u8 {
        let body = String::from(char::from(b'a' + i)).repeat(4 * MIB as usize);
        dead.push(store.add_text(&format!("big-{i}"), &body));
    }
    let kept = store.add_text("kept", &"k".repeat(MIB as usize));
    store.add_gcroot_link("kept", &kept);
    Some((store, fs, dead))
}

fn storegc(store: &NixStore, args: &[&str]) -> Output {
    store.storegc(args).output().expect("running storegc")
}

fn json_plan(store: &NixStore, args: &[&str]) -> serde_json::Value {
    let mut all = vec!["plan", "--format", "json"];
    all.extend_from_slice(args);
    let out = storegc(store, &all);
    assert!(
        out.status.success(),
        "storegc {all:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("a JSON plan")
}

fn policy(store: &NixStore, name: &str, budget: &str) -> String {
    let file = store.root().join(name);
    std::fs::write(
        &file,
        format!("[budget]\n{budget}\norder = \"oldest-first\"\n"),
    )
    .unwrap();
    file.display().to_string()
}

/// The planned paths; each must be one Nix calls dead.
fn planned(store: &NixStore, plan: &serde_json::Value) -> BTreeSet<String> {
    let paths: BTreeSet<String> = plan["delete"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["path"].as_str().unwrap().to_string())
        .collect();
    let dead = store.print_dead_valid();
    assert!(paths.is_subset(&dead), "{paths:?} not within {dead:?}");
    paths
}

#[test]
fn percent_budgets_are_shares_of_the_store_filesystem() {
    let Some((store, _fs, dead)) = store_on_tmpfs("percent_budgets") else {
        return;
    };
    let (size, available) = statvfs(&store.store_dir);
    assert_eq!(size, FS_SIZE, "the tmpfs is not the size asked for");
    // 25 MiB of paths and a little tmpfs overhead.
    assert!(available < 40 * MIB && available > 35 * MIB, "{available}");
    let candidates: u64 = json_plan(&store, &[])["totals"]["nar_bytes"]
        .as_u64()
        .unwrap();

    // max-freed = 10% of 64 MiB: 6.4 MiB, rounded down; oldest first, so
    // the first two big paths (each a little over 4 MiB of NAR).
    let p = policy(&store, "max.toml", "max-freed = \"10%\"");
    let plan = json_plan(&store, &["--policy", &p]);
    assert_eq!(plan["budget"]["limit"].as_u64(), Some(FS_SIZE / 10));
    assert_eq!(plan["budget"]["already_met"].as_bool(), Some(false));
    assert_eq!(planned(&store, &plan), dead[..2].iter().cloned().collect());

    // until-free = 75%: 48 MiB wanted, what is missing is the limit.
    let p = policy(&store, "until.toml", "until-free = \"75%\"");
    let plan = json_plan(&store, &["--policy", &p]);
    let want = FS_SIZE * 3 / 4 - available;
    assert_eq!(plan["budget"]["limit"].as_u64(), Some(want));
    let freed = plan["totals"]["nar_bytes"].as_u64().unwrap();
    assert!(
        freed >= want && freed < want + 5 * MIB,
        "{freed} for {want}"
    );
    planned(&store, &plan);
    // The same from the command line, over a policy saying otherwise.
    let flag = json_plan(&store, &["--policy", &p, "--until-free", "75%"]);
    assert_eq!(flag["budget"], plan["budget"]);
    let flag = json_plan(&store, &["--until-free", "12.5%", "--max-freed", "100%"]);
    assert_eq!(flag["budget"]["already_met"].as_bool(), Some(true));
    assert_eq!(flag["totals"]["paths"].as_u64(), Some(0));

    // The smaller limit wins: 10% of the filesystem against until-free.
    let p = policy(
        &store,
        "both.toml",
        "max-freed = \"10%\"\nuntil-free = \"75%\"",
    );
    let plan = json_plan(&store, &["--policy", &p]);
    assert_eq!(
        plan["budget"]["limit"].as_u64(),
        Some((FS_SIZE / 10).min(want))
    );

    // until-free = 40% (25.6 MiB) is met already: nothing goes.
    let p = policy(&store, "met.toml", "until-free = \"40%\"");
    let plan = json_plan(&store, &["--policy", &p]);
    assert_eq!(plan["budget"]["already_met"].as_bool(), Some(true));
    assert_eq!(plan["budget"]["limit"].as_u64(), Some(0));
    assert_eq!(
        plan["budget"]["candidates"]["bytes"].as_u64(),
        Some(candidates)
    );
    assert!(plan["delete"].as_array().unwrap().is_empty());
}

#[test]
fn only_if_available_below_plans_only_when_space_is_short() {
    let Some((store, _fs, dead)) = store_on_tmpfs("only_if_available_below") else {
        return;
    };
    let (_, available) = statvfs(&store.store_dir);
    let out_file = store.root().join("plan.json");
    let out_arg = out_file.display().to_string();

    // Above the threshold, by percentage and by size: nothing to do.
    let above = format!("{}", available - MIB);
    for below in ["40%", above.as_str()] {
        let out = storegc(
            &store,
            &[
                "plan",
                "--only-if-available-below",
                below,
                "--out",
                &out_arg,
            ],
        );
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        assert!(
            out.stdout.is_empty(),
            "{}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert!(stderr.starts_with("storegc: nothing to do: "), "{stderr}");
        assert!(
            stderr.contains(store.store_dir.to_str().unwrap()),
            "{stderr}"
        );
        assert_eq!(stderr.lines().count(), 1, "{stderr}");
        assert!(!out_file.exists(), "a plan was written with nothing to do");
    }

    // Below it: an ordinary plan, with every unrooted path.
    let below = format!("{}", available + MIB);
    for below in ["70%", below.as_str()] {
        let out = storegc(
            &store,
            &[
                "plan",
                "--only-if-available-below",
                below,
                "--out",
                &out_arg,
                "--format",
                "paths",
            ],
        );
        assert_eq!(
            out.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let listed: BTreeSet<String> = String::from_utf8(out.stdout)
            .unwrap()
            .lines()
            .map(str::to_string)
            .collect();
        assert_eq!(listed, dead.iter().cloned().collect());
        assert!(out_file.exists());
        std::fs::remove_file(&out_file).unwrap();
    }
}

fn assert_bad(out: &Output, needle: &str) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains(needle), "{needle:?} not in {stderr}");
    assert!(out.stdout.is_empty());
}

#[test]
fn bad_percentages_exit_2_naming_the_key_or_flag() {
    let tmp = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(storegc_bin())
            .args(args)
            .env("NIX_STORE_DIR", tmp.path().join("store"))
            .env("NIX_STATE_DIR", tmp.path().join("state"))
            .env("NIX_CONF_DIR", tmp.path())
            .env("NIX_REMOTE", "")
            .output()
            .unwrap()
    };
    for (text, line, key) in [
        ("[budget]\nmax-freed = \"150%\"\n", 2, "budget.max-freed"),
        ("[budget]\n\nuntil-free = \"-5%\"\n", 3, "budget.until-free"),
        (
            "[budget]\nuntil-free = \"1.23456%\"\n",
            2,
            "budget.until-free",
        ),
        ("[budget]\nmax-freed = \"ten%\"\n", 2, "budget.max-freed"),
    ] {
        let file = tmp.path().join("p.toml");
        std::fs::write(&file, text).unwrap();
        let f = file.to_str().unwrap();
        let prefix = format!("{f}:{line}: {key}: invalid size");
        assert_bad(&run(&["policy", "check", f]), &prefix);
        let out = run(&["plan", "--policy", f, "--only-if-available-below", "1%"]);
        assert_bad(&out, &prefix);
        assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1);
    }
    for (flag, value) in [
        ("--until-free", "101%"),
        ("--max-freed", "5%%"),
        ("--only-if-available-below", "12.34567%"),
        ("--only-if-available-below", "-1%"),
    ] {
        assert_bad(&run(&["plan", &format!("{flag}={value}")]), flag);
    }
}
