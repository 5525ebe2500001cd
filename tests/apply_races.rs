//! Real Nix clients racing `storegc apply --delete-with storegc` (issue 13):
//! while the engine deletes a plan (one path per transaction, so the run
//! lasts and deletions interleave with the clients), `nix-build`s of new
//! derivations whose inputs are planned paths, `nix-build`s that rebuild
//! planned outputs, `nix-store --add` of a planned source's exact contents
//! (the same store path) and of new contents, `nix-store -r` of planned
//! `.drv`s and outputs, and a process that takes a temp root on a planned
//! path the way Nix's `addTempRoot` does (a shared try on `gc.lock`, else
//! the gc-socket, then its `temproots/<pid>` file) all start at random
//! moments. A client may fail (what it asked for was deleted before its
//! root was acknowledged), but everything a client obtained, with its
//! closure, must be valid and on disk afterwards, and `nix-store --verify
//! --check-contents` clean. Every process is reaped, on failure too.

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use apply_support::*;
use common::{GcConf, NixStore, Rng};
use serde_json::Value;

/// Nix's client side of a temp root (gc.cc `addTempRoot`, 2.8 to 2.26):
/// `temproots/<pid>` locked exclusively; a shared try on `gc.lock`; when
/// that fails a collector runs, so the path goes to its gc-socket and the
/// client waits for the `1`; then the path is written to the file. Prints
/// `ready <pid> kept` when the path exists after that, `ready <pid> gone`
/// when not, and holds everything until killed (or its parent dies).
const CLIENT_C: &str = r#"
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>
static void die(const char *what, const char *p) { fprintf(stderr, "client: %s %s: ", what, p); perror(""); exit(1); }
int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  alarm(300);
  if (argc != 3) die("usage", "STATE_DIR PATH");
  const char *state = argv[1], *path = argv[2];
  char p[4096];
  snprintf(p, sizeof p, "%s/temproots/%d", state, (int) getpid());
  int roots = open(p, O_RDWR | O_CREAT | O_TRUNC, 0600); if (roots < 0) die("open", p);
  if (flock(roots, LOCK_EX)) die("flock", p);
  snprintf(p, sizeof p, "%s/gc.lock", state);
  int gc = open(p, O_RDWR | O_CREAT, 0600); if (gc < 0) die("open", p);
  for (;;) {
    if (flock(gc, LOCK_SH | LOCK_NB) == 0) break;
    if (errno != EWOULDBLOCK) die("flock", p);
    int s = socket(AF_UNIX, SOCK_STREAM, 0); if (s < 0) die("socket", "");
    struct sockaddr_un a = { .sun_family = AF_UNIX };
    snprintf(a.sun_path, sizeof a.sun_path, "%s/gc-socket/socket", state);
    if (connect(s, (struct sockaddr *) &a, sizeof a)) {
      /* Between lock and socket, or the collector just exited: retry. */
      close(s); usleep(1000); continue;
    }
    char line[4200]; snprintf(line, sizeof line, "%s\n", path);
    if (write(s, line, strlen(line)) != (ssize_t) strlen(line)) die("write", a.sun_path);
    char c; if (read(s, &c, 1) != 1 || c != '1') die("no answer from", a.sun_path);
    close(s);
    break;
  }
  if (write(roots, path, strlen(path) + 1) != (ssize_t) (strlen(path) + 1)) die("write", "temproots");
  flock(gc, LOCK_UN);
  struct stat st;
  printf("ready %d %s\n", (int) getpid(), lstat(path, &st) == 0 ? "kept" : "gone");
  fflush(stdout);
  for (;;) pause();
}
"#;

/// The compiled client, once per test process.
fn client_exe() -> PathBuf {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    EXE.get_or_init(|| {
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join("apply-races");
        std::fs::create_dir_all(&dir).expect("creating the client folder");
        let pid = std::process::id();
        let src = dir.join(format!("client.{pid}.c"));
        let exe = dir.join(format!("client.{pid}"));
        std::fs::write(&src, CLIENT_C).expect("writing the client source");
        let out = Command::new("gcc")
            .args(["-O1", "-Wall", "-o"])
            .arg(&exe)
            .arg(&src)
            .output()
            .expect("running gcc");
        assert!(
            out.status.success(),
            "gcc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        exe
    })
    .clone()
}

/// A client process in its own process group, output in files; killed
/// with its group and reaped when dropped, whatever happened.
struct Proc {
    child: Option<Child>,
    what: String,
    out: PathBuf,
    err: PathBuf,
    status: Option<std::process::ExitStatus>,
}

impl Proc {
    fn spawn(mut cmd: Command, dir: &Path, n: usize, what: String) -> Proc {
        let out = dir.join(format!("{n}.out"));
        let err = dir.join(format!("{n}.err"));
        cmd.process_group(0)
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).expect("creating an output file"))
            .stderr(std::fs::File::create(&err).expect("creating an output file"));
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Proc {
            child: Some(child),
            what,
            out,
            err,
            status: None,
        }
    }

    /// Whether it has exited (then reaped).
    fn poll(&mut self) -> bool {
        if let Some(c) = self.child.as_mut() {
            if let Ok(Some(s)) = c.try_wait() {
                self.status = Some(s);
                self.child = None;
            }
        }
        self.child.is_none()
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    fn stderr(&self) -> String {
        std::fs::read_to_string(&self.err).unwrap_or_default()
    }

    fn ok(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: killpg on the group this child leads; not reaped yet.
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// What a client is and what it obtains when it succeeds.
#[derive(Debug, Clone)]
enum Kind {
    /// `nix-build` of a new derivation using these planned paths.
    BuildUsing(Vec<String>),
    /// `nix-build -A drvs.<node>.out` of the store's own graph: rebuilds
    /// a planned output if it is gone.
    Rebuild(String),
    /// `nix-store --add` of this file (a planned source's name and bytes,
    /// or something new).
    Add(PathBuf),
    /// `nix-store -r` of a planned `.drv` or output.
    Realise(String),
    /// The temp-root client on a planned path.
    TempRoot(String),
}

/// Paths the store's random graph planned, by kind.
struct Planned {
    outputs: Vec<String>,
    drvs: Vec<String>,
    /// (node name, output) of planned derivation outputs.
    nodes: Vec<String>,
    /// Planned `nix-store --add`ed sources with a copy of their bytes.
    sources: Vec<PathBuf>,
}

fn planned_parts(b: &Built, plan: &BTreeSet<String>, dir: &Path) -> Planned {
    let mut p = Planned {
        outputs: Vec::new(),
        drvs: Vec::new(),
        nodes: Vec::new(),
        sources: Vec::new(),
    };
    for (i, n) in b.graph.nodes.iter().enumerate() {
        let real = &b.real.nodes[i];
        if let Some(drv) = real.drv.as_ref().filter(|d| plan.contains(*d)) {
            p.drvs.push(drv.clone());
        }
        let Some(out) = real.outputs.get("out").filter(|o| plan.contains(*o)) else {
            continue;
        };
        if n.is_derivation() {
            p.outputs.push(out.clone());
            if !n.is_twin() {
                p.nodes.push(n.name.clone());
            }
        } else if matches!(n.kind, common::NodeKind::Added { dir: false }) {
            // Same name, same bytes: `nix-store --add` makes the same path.
            let base = out.rsplit('/').next().expect("store path");
            let name = &base[base.find('-').expect("store path") + 1..];
            let copy = dir.join(format!("src{i}")).join(name);
            std::fs::create_dir_all(copy.parent().expect("parent")).expect("mkdir");
            std::fs::copy(out, &copy).expect("copying a planned source");
            p.sources.push(copy);
        }
    }
    p
}

/// Registers `n` unrooted filler paths (chains of ten, through
/// `--register-validity`) so the plan is long: with one path per
/// transaction the engine runs for a while, its deletions interleaved
/// (hash order) with the graph's.
fn add_filler(store: &NixStore, rng: &mut Rng, n: usize) {
    const B32: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut input = String::new();
    let mut prev = String::new();
    for i in 0..n {
        let hash: String = (0..32).map(|_| B32[rng.below(32)] as char).collect();
        let path = store.store_dir.join(format!("{hash}-filler-{i}"));
        std::fs::write(&path, format!("filler {i} {prev}\n")).expect("writing filler");
        let path = path.to_string_lossy().into_owned();
        if i % 10 == 0 {
            input.push_str(&format!("{path}\n\n0\n"));
        } else {
            input.push_str(&format!("{path}\n\n1\n{prev}\n"));
        }
        prev = path;
    }
    let mut child = store
        .command("nix-store")
        .arg("--register-validity")
        .stdin(Stdio::piped())
        .spawn()
        .expect("starting nix-store --register-validity");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("writing --register-validity input");
    assert!(child.wait().expect("waiting").success());
}

/// The commands for each kind of client.
fn client_command(b: &Built, kind: &Kind, dir: &Path, n: usize) -> Command {
    let store = &b.store;
    match kind {
        Kind::BuildUsing(used) => {
            let uses: Vec<String> = used
                .iter()
                .map(|u| format!("${{builtins.storePath \"{u}\"}}"))
                .collect();
            let expr = dir.join(format!("using{n}.nix"));
            std::fs::write(
                &expr,
                format!(
                    "derivation {{ name = \"race{n}\"; system = builtins.currentSystem; \
                     builder = builtins.storePath \"{}\"; text_out = \"race {n} uses {}\\n\"; }}\n",
                    store.builder(),
                    uses.join(" ")
                ),
            )
            .expect("writing an expression");
            let mut c = store.command("nix-build");
            c.arg(expr).args(["--quiet", "--no-out-link"]);
            c
        }
        Kind::Rebuild(node) => {
            let mut c = store.command("nix-build");
            c.arg(&b.real.expr)
                .args(["--quiet", "--no-out-link", "-A"])
                .arg(format!("drvs.{node}.out"));
            c
        }
        Kind::Add(file) => {
            let mut c = store.command("nix-store");
            c.arg("--add").arg(file);
            c
        }
        Kind::Realise(path) => {
            let mut c = store.command("nix-store");
            c.args(["-r", "--quiet", path]);
            c
        }
        Kind::TempRoot(path) => {
            let mut c = store.command(client_exe());
            c.arg(&store.state_dir).arg(path);
            c
        }
    }
}

/// A random schedule of clients over the planned paths: (delay, kind).
fn schedule(rng: &mut Rng, p: &Planned, dir: &Path, window_ms: usize) -> Vec<(Duration, Kind)> {
    let mut kinds = Vec::new();
    for _ in 0..3 {
        let k = rng.range(1, 3);
        let used: Vec<String> = (0..k)
            .filter_map(|_| rng.pick(&p.outputs).cloned())
            .collect();
        if !used.is_empty() {
            kinds.push(Kind::BuildUsing(used));
        }
    }
    for _ in 0..2 {
        if let Some(n) = rng.pick(&p.nodes) {
            kinds.push(Kind::Rebuild(n.clone()));
        }
    }
    for s in p.sources.iter().take(2) {
        kinds.push(Kind::Add(s.clone()));
    }
    let fresh = dir.join(format!("fresh-{}", rng.next_u64() % 1000));
    std::fs::create_dir_all(&fresh).expect("mkdir");
    let file = fresh.join("new-during-gc");
    std::fs::write(&file, format!("new {}\n", rng.next_u64())).expect("writing");
    kinds.push(Kind::Add(file));
    for _ in 0..2 {
        if let Some(d) = rng.pick(&p.drvs) {
            kinds.push(Kind::Realise(d.clone()));
        }
    }
    if let Some(o) = rng.pick(&p.outputs) {
        kinds.push(Kind::Realise(o.clone()));
    }
    for _ in 0..3 {
        if let Some(o) = rng.pick(&p.outputs) {
            kinds.push(Kind::TempRoot(o.clone()));
        }
    }
    let mut s: Vec<(Duration, Kind)> = kinds
        .into_iter()
        .map(|k| (Duration::from_millis(rng.below(window_ms) as u64), k))
        .collect();
    s.sort_by_key(|(d, _)| *d);
    s
}

/// The store paths a finished client obtained: the last line it printed
/// (`nix-build`, `--add`, `-r` print the paths), or its temp root if it
/// found the path there after the acknowledgement.
fn obtained(store: &NixStore, kind: &Kind, proc: &Proc) -> Vec<String> {
    let store_dir = store.store_dir.to_string_lossy().into_owned();
    match kind {
        Kind::TempRoot(path) => {
            if proc.stdout().trim_end().ends_with(" kept") {
                vec![path.clone()]
            } else {
                Vec::new()
            }
        }
        _ if proc.ok() => proc
            .stdout()
            .lines()
            .filter(|l| l.starts_with(&store_dir))
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Every obtained path is valid and each of its requisites is valid and
/// on disk.
fn assert_complete(store: &NixStore, got: &BTreeSet<String>, why: &str) {
    if got.is_empty() {
        return;
    }
    let invalid = store.invalid_among(got);
    assert!(
        invalid.is_empty(),
        "{why}: obtained but invalid: {invalid:#?}"
    );
    let reqs = closure(store, got);
    let invalid = store.invalid_among(&reqs);
    assert!(
        invalid.is_empty(),
        "{why}: requisites invalid: {invalid:#?}"
    );
    let missing: Vec<&String> = reqs.iter().filter(|p| !exists(p)).collect();
    assert!(
        missing.is_empty(),
        "{why}: requisites missing on disk: {missing:#?}"
    );
}

/// One seed: a built random graph plus filler, the plan, apply started,
/// clients started on schedule, everything waited for (bounded), checked.
fn race(seed: u64) {
    let b = built(seed, 28, GcConf::default());
    // The builder must stay, or no client could build anything.
    b.store.add_gcroot_link("builder", b.store.builder());
    let mut rng = Rng::new(seed ^ 0x5eed);
    add_filler(&b.store, &mut rng, 1500);
    let file = b.plan_file("plan.json");
    let plan = planned(&make_plan(&b.store, &file, &[]));
    let dir = b.store.root().join("clients");
    std::fs::create_dir_all(&dir).expect("mkdir");
    let parts = planned_parts(&b, &plan, &dir);
    assert!(
        !parts.outputs.is_empty() && !parts.drvs.is_empty(),
        "seed {seed}: nothing of the graph planned"
    );
    let schedule = schedule(&mut rng, &parts, &dir, 5000);

    let args = apply_args(&file, &["--delete-with", "storegc", "--chunk-size", "1"]);
    let mut cmd = b.store.storegc(&args);
    cmd.process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("storegc {:?}", cmd.get_args().collect::<Vec<_>>());
    let start = Instant::now();
    let mut apply_run = Running {
        child: Some(cmd.spawn().expect("starting apply")),
        what,
    };
    let mut procs: Vec<(Kind, Proc)> = Vec::new();
    for (n, (delay, kind)) in schedule.iter().enumerate() {
        if let Some(left) = delay.checked_sub(start.elapsed()) {
            std::thread::sleep(left);
        }
        let cmd = client_command(&b, kind, &dir, n);
        let what = format!("{kind:?}");
        procs.push((kind.clone(), Proc::spawn(cmd, &dir, n, what)));
    }
    let run = apply_run.finish();
    let apply_secs = start.elapsed().as_secs_f64();
    // Clients end by themselves, temp-root clients once they said ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    for (kind, p) in procs.iter_mut() {
        loop {
            let ready = matches!(kind, Kind::TempRoot(_)) && p.stdout().starts_with("ready ");
            if ready || p.poll() {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "seed {seed}: {} still running after 120 s",
                p.what
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let report = run.report();
    assert_eq!(
        (&report["failed"], &report["errors"], run.code),
        (&Value::Array(vec![]), &Value::Array(vec![]), Some(0)),
        "seed {seed}: apply failed; stderr: {}",
        run.stderr
    );

    let mut summary = Vec::new();
    let mut all = BTreeSet::new();
    for (kind, p) in &procs {
        if let Kind::TempRoot(_) = kind {
            assert!(
                p.stdout().starts_with("ready "),
                "seed {seed}: temp-root client failed: {}",
                p.stderr()
            );
        }
        let got = obtained(&b.store, kind, p);
        let at = schedule[summary.len()].0.as_millis();
        let what = if got.is_empty() {
            "nothing"
        } else {
            "obtained"
        };
        summary.push(format!("+{at}ms {kind:?} -> {what}"));
        assert_complete(&b.store, &got.iter().cloned().collect(), &p.what);
        all.extend(got);
    }
    eprintln!(
        "seed {seed}: apply {apply_secs:.2}s, {} deleted, {} kept live; clients:\n  {}",
        strs(&report["deleted"]).len(),
        strs(&report["skipped_live"]).len(),
        summary.join("\n  ")
    );
    // Once the temp-root clients are gone, nothing changes this: the
    // whole store is consistent.
    drop(procs);
    assert_complete(&b.store, &all, "after all clients");
    assert_verify_clean(&b.store, true);
}

#[test]
fn nix_clients_racing_the_engine_keep_what_they_obtained() {
    if !common::nix_available("nix_clients_racing_the_engine_keep_what_they_obtained") {
        return;
    }
    let seeds: Vec<u64> = match std::env::var("STOREGC_RACE_SEEDS") {
        Ok(s) => s
            .split(',')
            .map(|x| x.trim().parse().expect("STOREGC_RACE_SEEDS: numbers"))
            .collect(),
        Err(_) => vec![1301, 1302, 1303, 1304],
    };
    for seed in seeds {
        race(seed);
    }
}
