//! What tests/apply_nix.rs and tests/apply_daemon.rs share: running
//! `storegc plan`/`apply` on a harness store and reading their output,
//! Nix's view (closures, `--verify`), built random graphs, a `nix-store`
//! stand-in that records and holds calls, and an apply running in its own
//! process group. A test file uses it with `mod common; mod apply_support;`.
#![allow(dead_code)]

use std::collections::BTreeSet;
use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::common::{self, run_ok, Graph, NixStore, Realised, Rng};
use serde_json::Value;

// ---------------------------------------------------------------------------
// Running storegc

/// How one storegc run ended.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub what: String,
}

impl Run {
    pub fn from_output(out: std::process::Output, what: String) -> Run {
        Run {
            code: out.status.code(),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
            what,
        }
    }

    /// The run, for assertion messages (long output cut short: a report
    /// on a synthetic store lists thousands of long paths).
    pub fn show(&self) -> String {
        pub fn cut(s: &str) -> String {
            match s.char_indices().nth(4000) {
                Some((i, _)) => format!("{}\n[... {} more bytes]", &s[..i], s.len() - i),
                None => s.to_string(),
            }
        }
        format!(
            "{}\nexit: {:?}\nstdout:\n{}\nstderr:\n{}",
            self.what,
            self.code,
            cut(&self.stdout),
            cut(&self.stderr)
        )
    }

    pub fn expect_code(&self, code: i32) -> &Run {
        assert_eq!(
            self.code,
            Some(code),
            "exit {code} expected: {}",
            self.show()
        );
        assert!(!self.stderr.contains("panicked"), "panic: {}", self.show());
        self
    }

    /// The JSON report (`--format json`).
    pub fn report(&self) -> Value {
        serde_json::from_str(&self.stdout)
            .unwrap_or_else(|e| panic!("apply report is not JSON ({e}): {}", self.show()))
    }

    /// The refusal contract: exit 2, exactly one line on stderr naming
    /// `file`, nothing on stdout.
    pub fn expect_refused(&self, file: &Path) {
        self.expect_code(2);
        assert_eq!(
            self.stderr.lines().count(),
            1,
            "one line on stderr expected: {}",
            self.show()
        );
        assert!(
            self.stderr.contains(&*file.to_string_lossy()),
            "stderr should name {}: {}",
            file.display(),
            self.show()
        );
        assert!(
            self.stdout.is_empty(),
            "nothing on stdout expected: {}",
            self.show()
        );
    }
}

/// The arguments of `storegc --quiet apply PLAN --format json EXTRA...`.
pub fn apply_args<'a>(plan: &'a Path, extra: &'a [&'a str]) -> Vec<&'a OsStr> {
    let mut args: Vec<&OsStr> = ["--quiet", "apply"].map(OsStr::new).to_vec();
    args.push(plan.as_os_str());
    // Apply sizes batches from ARG_MAX (2 MiB here); 1 MiB keeps the
    // several batches the interruption tests need on synthetic stores.
    args.extend(["--format", "json", "--batch-bytes", "1048576"].map(OsStr::new));
    // These tests were written for the nix-store backend (batches, its
    // refusals, a stand-in nix-store); the engine's say so.
    if !extra.contains(&"--delete-with") {
        args.extend(["--delete-with", "nix-store"].map(OsStr::new));
    }
    args.extend(extra.iter().map(OsStr::new));
    args
}

/// `storegc apply PLAN` to its end.
pub fn apply(store: &NixStore, plan: &Path, extra: &[&str]) -> Run {
    let args = apply_args(plan, extra);
    let mut cmd = store.storegc(&args);
    let what = format!("storegc {:?}", cmd.get_args().collect::<Vec<_>>());
    Run::from_output(cmd.output().expect("running storegc apply"), what)
}

/// `storegc plan --out FILE EXTRA...`, which must succeed; returns the
/// plan as written.
pub fn make_plan(store: &NixStore, file: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<&OsStr> = ["--quiet", "plan", "--format", "paths", "--out"]
        .map(OsStr::new)
        .to_vec();
    args.push(file.as_os_str());
    args.extend(extra.iter().map(OsStr::new));
    run_ok(&mut store.storegc(&args));
    read_json(file)
}

pub fn read_json(file: &Path) -> Value {
    let text =
        std::fs::read_to_string(file).unwrap_or_else(|e| panic!("reading {}: {e}", file.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
}

/// The store paths a plan deletes.
pub fn planned(plan: &Value) -> BTreeSet<String> {
    plan["delete"]
        .as_array()
        .expect("plan without a delete list")
        .iter()
        .map(|d| {
            d["path"]
                .as_str()
                .expect("deletion without path")
                .to_string()
        })
        .collect()
}

/// A JSON array of strings as a set.
pub fn strs(v: &Value) -> BTreeSet<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not an array: {v}"))
        .iter()
        .map(|s| {
            s.as_str()
                .unwrap_or_else(|| panic!("not a string: {s}"))
                .to_string()
        })
        .collect()
}

pub fn minus(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    a.difference(b).cloned().collect()
}

pub fn and(a: &BTreeSet<String>, b: &BTreeSet<String>) -> BTreeSet<String> {
    a.intersection(b).cloned().collect()
}

pub fn exists(p: impl AsRef<Path>) -> bool {
    std::fs::symlink_metadata(p).is_ok()
}

/// A readable summary of two sets' difference.
pub fn set_diff(want: &BTreeSet<String>, got: &BTreeSet<String>) -> String {
    format!(
        "missing: {:#?}\nunexpected: {:#?}",
        minus(want, got),
        minus(got, want)
    )
}

pub fn assert_same(what: &str, want: &BTreeSet<String>, got: &BTreeSet<String>) {
    assert!(want == got, "{what}:\n{}", set_diff(want, got));
}

// ---------------------------------------------------------------------------
// Nix's view

/// `nix-store -qR PATHS...`: the closure under references.
pub fn closure(store: &NixStore, paths: &BTreeSet<String>) -> BTreeSet<String> {
    if paths.is_empty() {
        return BTreeSet::new();
    }
    let mut args = vec!["-qR"];
    args.extend(paths.iter().map(String::as_str));
    store.nix_store(&args).lines().map(str::to_string).collect()
}

/// The closure of `paths` under Nix's liveness edges with the default
/// settings: references, and a valid output's deriver (keep-derivations).
pub fn liveness_closure(store: &NixStore, paths: &BTreeSet<String>) -> BTreeSet<String> {
    let mut set = closure(store, paths);
    loop {
        let outputs: Vec<&str> = set
            .iter()
            .filter(|p| !p.ends_with(".drv"))
            .map(String::as_str)
            .collect();
        let mut args = vec!["-q", "--deriver"];
        args.extend(outputs);
        let derivers: BTreeSet<String> = store
            .nix_store(&args)
            .lines()
            .filter(|d| d.starts_with('/') && exists(d) && !set.contains(*d))
            .map(str::to_string)
            .collect();
        if derivers.is_empty() {
            return set;
        }
        set.extend(closure(store, &derivers));
    }
}

/// `nix-store --verify [--check-contents]` exits 0 and reports nothing
/// beyond its progress lines.
pub fn assert_verify_clean(store: &NixStore, check_contents: bool) {
    let mut args = vec!["--verify"];
    if check_contents {
        args.push("--check-contents");
    }
    let out = store.try_run("nix-store", &args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let complaints: Vec<&str> = stderr
        .lines()
        .filter(|l| {
            ![
                "reading the Nix store...",
                // nix-store runs in its own process group, so a kill of
                // storegc's group leaves the batch it was deleting to
                // finish; verify waits for its GC lock first.
                "waiting for the big garbage collector lock...",
                "checking path existence...",
                "checking link hashes...",
                "checking store hashes...",
            ]
            .contains(l)
        })
        .collect();
    assert!(
        out.status.success() && complaints.is_empty(),
        "nix-store {args:?} in {} is not clean ({}):\n{stderr}",
        store.root().display(),
        out.status
    );
}

/// After a finished apply of a no-policy plan: Nix finds nothing dead
/// among valid paths, and every path Nix called live before is valid.
pub fn assert_only_live_left(store: &NixStore, live_before: &BTreeSet<String>) {
    let dead = store.print_dead_valid();
    assert!(dead.is_empty(), "still dead after apply: {dead:#?}");
    let invalid = store.invalid_among(live_before);
    assert!(invalid.is_empty(), "live paths were deleted: {invalid:#?}");
}

// ---------------------------------------------------------------------------
// Stores built from random derivation graphs

/// A built random graph in a store: every derivation built, one output
/// rooted through `gcroots/kept`, one through generation 1 of
/// `profiles/p`; everything else is garbage.
pub struct Built {
    pub graph: Graph,
    pub real: Realised,
    pub store: NixStore,
}

pub fn built(seed: u64, nodes: usize, conf: crate::common::GcConf) -> Built {
    eprintln!("apply_nix: graph seed {seed}, {nodes} nodes, {conf}");
    let store = NixStore::with_conf(conf);
    let mut rng = Rng::new(seed);
    let graph = Graph::random(&mut rng, nodes, "n");
    let build: Vec<usize> = (0..nodes)
        .filter(|&i| graph.nodes[i].is_derivation())
        .collect();
    let real = store.realise_graph(&graph, &build);
    let b = Built { graph, real, store };
    let outs = b.outputs();
    let kept = &outs[rng.below(outs.len())];
    b.store.add_gcroot_link("kept", kept);
    let gen1 = &outs[rng.below(outs.len())];
    b.store.set_profile(&b.profile(), gen1);
    b
}

impl Built {
    /// Valid outputs of built derivations, sorted by name.
    pub fn outputs(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .real
            .nodes
            .iter()
            .enumerate()
            .filter(|(i, _)| self.graph.nodes[*i].is_derivation())
            .flat_map(|(_, n)| n.outputs.values().cloned())
            .filter(|p| exists(p))
            .collect();
        // By name, then path: hashes depend on the temp folder, names do
        // not, so picks stay the same from run to run.
        v.sort_by_cached_key(|p| {
            let base = Path::new(p)
                .file_name()
                .map_or(String::new(), |n| n.to_string_lossy().into_owned());
            (base.get(33..).unwrap_or("").to_string(), p.clone())
        });
        v.dedup();
        v
    }

    /// Derivations (not fixed-output twins) whose `out` is garbage now.
    pub fn dead_derivations(&self) -> Vec<usize> {
        let dead = self.store.print_dead_valid();
        let drvs: Vec<usize> = (0..self.graph.nodes.len())
            .filter(|&i| self.graph.nodes[i].is_derivation() && !self.graph.nodes[i].is_twin())
            .filter(|&i| {
                self.real.nodes[i]
                    .outputs
                    .get("out")
                    .is_some_and(|o| dead.contains(o))
            })
            .collect();
        assert!(drvs.len() >= 2, "too few dead derivations: {drvs:?}");
        drvs
    }

    pub fn profile(&self) -> PathBuf {
        self.store.profiles_dir().join("p")
    }

    pub fn plan_file(&self, name: &str) -> PathBuf {
        self.store.root().join(name)
    }

    /// The planned output whose closure holds the most other planned
    /// paths (ties by path): the root that would save the most.
    pub fn richest_planned_output(&self, planned: &BTreeSet<String>) -> (String, BTreeSet<String>) {
        let mut best: Option<(usize, String, BTreeSet<String>)> = None;
        for p in self.outputs().into_iter().filter(|p| planned.contains(p)) {
            let c = closure(&self.store, &BTreeSet::from([p.clone()]));
            let n = and(&c, planned).len();
            if best.as_ref().map_or(true, |(m, _, _)| n > *m) {
                best = Some((n, p, c));
            }
        }
        let (n, p, c) = best.expect("no planned output");
        assert!(n >= 2, "graph too small: {p} keeps no other planned path");
        (p, c)
    }

    /// Builds a new derivation whose output names `used` in its text (so
    /// references it); `link` roots it as `nix-build -o` does, without
    /// one it is built unrooted. Returns (`.drv`, output).
    pub fn build_referrer(&self, used: &str, link: Option<&Path>) -> (String, String) {
        let expr = self
            .store
            .root()
            .join(self.store.fresh_name("referrer") + ".nix");
        if let Some(parent) = link.and_then(Path::parent) {
            std::fs::create_dir_all(parent).expect("creating the link folder");
        }
        std::fs::write(
            &expr,
            format!(
                "derivation {{ name = \"referrer\"; system = builtins.currentSystem; \
                 builder = builtins.storePath \"{}\"; \
                 text_out = \"uses ${{builtins.storePath \"{used}\"}}\\n\"; }}\n",
                self.store.builder()
            ),
        )
        .expect("writing the referrer expression");
        let drv = self
            .store
            .run("nix-instantiate", &[expr.as_os_str()])
            .trim()
            .to_string();
        let out = match link {
            Some(l) => self.store.run(
                "nix-build",
                &[
                    expr.as_os_str(),
                    OsStr::new("--quiet"),
                    OsStr::new("-o"),
                    l.as_os_str(),
                ],
            ),
            None => self.store.nix_store(&["-r", "--quiet", &drv]),
        };
        let out = out.trim().to_string();
        let refs = self.store.nix_store(&["-q", "--references", &out]);
        assert!(
            refs.lines().any(|l| l == used),
            "{out} does not reference {used}: {refs}"
        );
        (drv, out)
    }
}

// ---------------------------------------------------------------------------
// A nix-store stand-in that records and holds calls

/// A `nix-store` for `--nix-store`: a shell script that writes each
/// call's arguments to `args-N` (N from 1), marks `started-N`, and runs
/// the real `nix-store`. If `hold-before-N` exists it first waits for
/// `go-N`; if `hold-after-N` exists it marks `done-N` after the real one
/// and waits for `go-after-N` before exiting with its status. Without a
/// hold after, it `exec`s the real one (same process, same signals).
pub struct Wrap {
    pub dir: PathBuf,
    pub script: PathBuf,
}

pub const WRAP_SH: &str = r#"#!/bin/sh
d="$STOREGC_TEST_WRAP"
n=1
while [ -e "$d/started-$n" ]; do n=$((n + 1)); done
printf '%s\n' "$@" > "$d/args-$n"
: > "$d/started-$n"
if [ -e "$d/hold-before-$n" ]; then
  while [ ! -e "$d/go-$n" ] && [ -d "$d" ]; do sleep 0.02; done
fi
if [ -e "$d/hold-after-$n" ]; then
  "$STOREGC_TEST_REAL_NIX_STORE" "$@"
  rc=$?
  : > "$d/done-$n"
  while [ ! -e "$d/go-after-$n" ] && [ -d "$d" ]; do sleep 0.02; done
  exit $rc
fi
exec "$STOREGC_TEST_REAL_NIX_STORE" "$@"
"#;

impl Wrap {
    pub fn new(store: &NixStore) -> Wrap {
        use std::os::unix::fs::PermissionsExt;
        let dir = store.root().join(store.fresh_name("wrap"));
        std::fs::create_dir_all(&dir).expect("creating the wrapper folder");
        let script = dir.join("nix-store");
        std::fs::write(&script, WRAP_SH).expect("writing the wrapper");
        std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))
            .expect("chmod the wrapper");
        Wrap { dir, script }
    }

    pub fn mark(&self, name: String) {
        std::fs::write(self.dir.join(name), "").expect("writing a wrapper mark");
    }

    pub fn hold_before(&self, n: usize) {
        self.mark(format!("hold-before-{n}"));
    }

    pub fn release_before(&self, n: usize) {
        self.mark(format!("go-{n}"));
    }

    pub fn hold_after(&self, n: usize) {
        self.mark(format!("hold-after-{n}"));
    }

    pub fn started(&self, n: usize) -> bool {
        self.dir.join(format!("started-{n}")).exists()
    }

    pub fn done(&self, n: usize) -> bool {
        self.dir.join(format!("done-{n}")).exists()
    }

    /// How many times nix-store was called.
    pub fn calls(&self) -> usize {
        (1..).take_while(|&n| self.started(n)).count()
    }

    /// The store paths given to call `n`.
    pub fn paths(&self, n: usize) -> BTreeSet<String> {
        let text = std::fs::read_to_string(self.dir.join(format!("args-{n}")))
            .unwrap_or_else(|e| panic!("nix-store call {n} not recorded: {e}"));
        let mut lines = text.lines();
        assert_eq!(lines.next(), Some("--delete"), "call {n}: {text}");
        lines.map(str::to_string).collect()
    }
}

/// Kills every wrapper still running (found by its script path on the
/// command line or its folder in `STOREGC_TEST_WRAP`), each with its
/// process group (storegc starts nix-store in a group of its own, so
/// killing apply's group misses it), and waits until none is left: a
/// test that fails or kills apply leaves no wrapper looping.
impl Drop for Wrap {
    fn drop(&mut self) {
        let env = format!("STOREGC_TEST_WRAP={}", self.dir.display());
        let script = self.script.to_string_lossy().into_owned();
        let start = Instant::now();
        loop {
            let left = wrapper_pids(&script, &env);
            if left.is_empty() || start.elapsed() > Duration::from_secs(30) {
                if !left.is_empty() {
                    eprintln!("wrapper processes survived SIGKILL: {left:?}");
                }
                return;
            }
            for pid in left {
                // SAFETY: getpgid/killpg/kill on pids found running our
                // wrapper; a pid that is gone makes them fail harmlessly.
                unsafe {
                    let pgid = libc::getpgid(pid);
                    if pgid > 1 {
                        libc::killpg(pgid, libc::SIGKILL);
                    }
                    libc::kill(pid, libc::SIGKILL);
                }
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

/// The live (not zombie) processes running `script` or carrying `env`.
fn wrapper_pids(script: &str, env: &str) -> Vec<i32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| {
            let base = PathBuf::from(format!("/proc/{pid}"));
            let stat = std::fs::read_to_string(base.join("stat")).unwrap_or_default();
            let zombie = stat
                .rsplit_once(')')
                .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
            let has = |file: &str, needle: &str| {
                std::fs::read(base.join(file)).is_ok_and(|bytes| {
                    bytes
                        .split(|&b| b == 0)
                        .any(|part| part == needle.as_bytes())
                })
            };
            !zombie && (has("cmdline", script) || has("environ", env))
        })
        .collect()
}

pub fn real_nix_store() -> PathBuf {
    std::env::split_paths(&common::search_path())
        .map(|d| d.join("nix-store"))
        .find(|p| p.is_file())
        .expect("nix-store on PATH")
}

/// An apply running in its own process group (as under systemd or a
/// shell job), so a signal can reach it and its `nix-store` together.
pub struct Running {
    pub child: Option<Child>,
    pub what: String,
}

pub fn spawn_apply(store: &NixStore, plan: &Path, wrap: Option<&Wrap>) -> Running {
    let mut extra: Vec<&str> = Vec::new();
    let script;
    if let Some(w) = wrap {
        script = w.script.to_string_lossy().into_owned();
        extra.extend(["--nix-store", &script]);
    }
    let args = apply_args(plan, &extra);
    let mut cmd = store.storegc(&args);
    if let Some(w) = wrap {
        cmd.env("STOREGC_TEST_WRAP", &w.dir)
            .env("STOREGC_TEST_REAL_NIX_STORE", real_nix_store());
    }
    cmd.process_group(0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let what = format!("storegc {:?}", cmd.get_args().collect::<Vec<_>>());
    let child = cmd.spawn().expect("starting storegc apply");
    Running {
        child: Some(child),
        what,
    }
}

impl Running {
    pub fn pid(&self) -> i32 {
        self.child.as_ref().expect("running").id() as i32
    }

    /// Polls `cond` every few milliseconds; panics if apply ends first
    /// or after a minute.
    pub fn wait_until(&mut self, what: &str, mut cond: impl FnMut() -> bool) {
        let start = Instant::now();
        loop {
            if cond() {
                return;
            }
            let child = self.child.as_mut().expect("running");
            if let Ok(Some(_)) = child.try_wait() {
                let run = self.finish();
                panic!("apply ended before {what}: {}", run.show());
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "timed out waiting for {what}"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill on a pid we started and have not reaped.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill {sig}");
    }

    pub fn signal_group(&self, sig: i32) {
        // SAFETY: killpg on the process group we created.
        assert_eq!(unsafe { libc::killpg(self.pid(), sig) }, 0, "killpg {sig}");
    }

    /// SIGKILL to the whole group; returns once no thread of the group is
    /// still running, so nothing deletes or holds a lock behind us.
    pub fn kill_group(mut self) -> Run {
        let pgid = self.pid();
        self.signal_group(libc::SIGKILL);
        let run = self.finish();
        let start = Instant::now();
        while group_alive(pgid) {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "process group {pgid} survived SIGKILL"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        run
    }

    pub fn finish(&mut self) -> Run {
        let child = self.child.take().expect("running");
        let out = child.wait_with_output().expect("waiting for apply");
        Run::from_output(out, self.what.clone())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            // SAFETY: as in kill_group.
            unsafe { libc::killpg(c.id() as i32, libc::SIGKILL) };
            let _ = c.wait();
        }
    }
}

/// Whether any thread of any process in group `pgid` is still running:
/// a killed process's leader can be a zombie while its other threads
/// still exit, holding its files (and Nix's GC lock).
pub fn group_alive(pgid: i32) -> bool {
    pub fn fields(stat: &str) -> Vec<String> {
        // pid (comm) state ppid pgrp ...; comm may hold anything.
        stat.rsplit_once(')')
            .map(|(_, rest)| rest.split_whitespace().map(str::to_string).collect())
            .unwrap_or_default()
    }
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return false;
    };
    rd.flatten().any(|e| {
        let Ok(stat) = std::fs::read_to_string(e.path().join("stat")) else {
            return false;
        };
        let f = fields(&stat);
        if f.len() < 3 || f[2] != pgid.to_string() {
            return false;
        }
        let Ok(tasks) = std::fs::read_dir(e.path().join("task")) else {
            return false;
        };
        tasks.flatten().any(|t| {
            std::fs::read_to_string(t.path().join("stat"))
                .map(|s| fields(&s).first().is_some_and(|st| st != "Z" && st != "X"))
                .unwrap_or(false)
        })
    })
}

// ---------------------------------------------------------------------------
// Interruptions

/// A synthetic store (long paths: several batches) with its plan, the
/// live set Nix sees and the planned set.
pub struct Big {
    pub store: NixStore,
    pub file: PathBuf,
    pub live: BTreeSet<String>,
    pub plan: BTreeSet<String>,
}

pub fn big(seed: u64) -> Big {
    let store = NixStore::synthetic(5000, seed, 330);
    let file = store.root().join("plan.json");
    let plan = planned(&make_plan(&store, &file, &[]));
    let live = store.print_live();
    assert_same("plan vs --print-dead", &store.print_dead_valid(), &plan);
    Big {
        store,
        file,
        live,
        plan,
    }
}

impl Big {
    pub fn gone(&self, paths: &BTreeSet<String>) -> usize {
        paths.iter().filter(|p| !exists(p)).count()
    }

    /// Applies the plan with the real nix-store to the end and checks
    /// that only Nix's live set is left.
    pub fn finish(&self) -> Value {
        let run = apply(&self.store, &self.file, &[]);
        let report = run.expect_code(0).report();
        assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
        assert_only_live_left(&self.store, &self.live);
        assert_verify_clean(&self.store, false);
        report
    }
}
