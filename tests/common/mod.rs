//! A harness for integration tests that run the real `storegc` binary next
//! to real Nix (Debian's nix-bin is enough): a private Nix store in a
//! temporary folder, a static C builder that makes real derivations cheap,
//! random derivation graphs built through `nix-instantiate`/`nix-store -r`,
//! helpers that add GC roots of every kind Nix honours, and the Nix oracle
//! (`nix-store --gc --print-dead`, `--print-roots`, `--print-live`).
//!
//! Nothing here touches `/nix`: every command gets `NIX_STORE_DIR`,
//! `NIX_STATE_DIR`, `NIX_LOG_DIR`, `NIX_CONF_DIR` pointing into the temp
//! folder and `NIX_REMOTE=` (no daemon), and the user's own Nix
//! configuration is hidden (`HOME`, `XDG_*` point into the temp folder).
//!
//! Typical use, in a test file that says `mod common;`:
//!
//! ```text
//! if !common::nix_available("my_test") { return; }   // skip, or fail in CI
//! let store = NixStore::with_conf(GcConf { keep_outputs: Some(true), ..Default::default() });
//! let mut rng = Rng::new(seed);
//! let graph = Graph::random(&mut rng, 30, "n");
//! let real = store.realise_graph(&graph, &[3, 5, 8]);  // build some
//! store.add_gcroot_link("mine/x", &real.nodes[5].outputs["out"]);
//! let _holder = store.spawn_holder(&[Hold::Cwd(dir.into())], &[], false);
//! assert_eq!(store.storegc_plan_paths(), store.print_dead_valid());
//! ```
//!
//! Each test binary compiles this module on its own and uses a different
//! part of it, hence the `dead_code` allowance.
#![allow(dead_code)]

use std::cell::OnceCell;
use std::collections::{BTreeMap, BTreeSet};
use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io::{BufRead, BufReader, Read};
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{SystemTime, UNIX_EPOCH};

/// Set to `1` (CI does) to make a missing Nix or C compiler fail the tests
/// instead of skipping them.
pub const REQUIRE_NIX_VAR: &str = "STOREGC_REQUIRE_NIX";

/// Set to `1` to keep every temporary store (they are always kept when the
/// test fails).
pub const KEEP_STORE_VAR: &str = "STOREGC_KEEP_STORE";

/// The `storegc` binary under test.
pub fn storegc_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storegc"))
}

// ---------------------------------------------------------------------------
// Skipping when Nix is missing

fn on_path(program: &str) -> bool {
    std::env::split_paths(&search_path()).any(|d| d.join(program).is_file())
}

/// The folder holding the Nix under test (`nix-store`, `nix-build`, ...);
/// unset or empty means the Nix on PATH. tests/run.sh sets it to run the
/// suite against a second Nix.
pub const NIX_BIN_VAR: &str = "STOREGC_NIX_BIN";

/// `$STOREGC_NIX_BIN`, when set and not empty.
pub fn nix_bin_dir() -> Option<PathBuf> {
    std::env::var_os(NIX_BIN_VAR)
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
}

/// PATH with the Nix under test first: every command the harness starts
/// (Nix and storegc alike) gets it.
pub fn search_path() -> OsString {
    let path = std::env::var_os("PATH").unwrap_or_default();
    match nix_bin_dir() {
        None => path,
        Some(bin) => std::env::join_paths(std::iter::once(bin).chain(std::env::split_paths(&path)))
            .expect("STOREGC_NIX_BIN or PATH holds a ':'"),
    }
}

/// The version of the Nix under test, (major, minor), from `nix-store
/// --version` ("nix-store (Nix) 2.26.3") run in a throw-away store (even
/// `--version` opens the store). For the few places where Nix versions
/// legitimately differ.
pub fn nix_version() -> (u32, u32) {
    static VERSION: OnceLock<(u32, u32)> = OnceLock::new();
    *VERSION.get_or_init(|| {
        let t = tempfile::tempdir().expect("creating a temp dir");
        std::fs::create_dir_all(t.path().join("etc")).expect("creating a temp dir");
        let v = |p: &str| t.path().join(p);
        let out = run_ok(
            Command::new("nix-store")
                .arg("--version")
                .env("PATH", search_path())
                .env("NIX_STORE_DIR", v("nix/store"))
                .env("NIX_STATE_DIR", v("nix/var/nix"))
                .env("NIX_LOG_DIR", v("nix/var/log/nix"))
                .env("NIX_CONF_DIR", v("etc"))
                .env("NIX_REMOTE", "")
                .env("HOME", t.path()),
        );
        parse_nix_version(&out).unwrap_or_else(|| panic!("no version in {out:?}"))
    })
}

/// (major, minor) from "nix-store (Nix) 2.26.3".
fn parse_nix_version(text: &str) -> Option<(u32, u32)> {
    let v = text.split_whitespace().last()?;
    let mut parts = v.split('.');
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?.parse().ok()?;
    Some((major, minor))
}

/// What is missing for the Nix tests to run, if anything.
fn missing_tools() -> Vec<&'static str> {
    [
        "nix-store",
        "nix-instantiate",
        "nix-build",
        "nix-env",
        "gcc",
    ]
    .into_iter()
    .filter(|t| !on_path(t))
    .collect()
}

/// Whether a test that needs real Nix (and gcc) can run. When a tool is
/// missing this prints a note and returns `false` (the test should return
/// early and pass), unless `STOREGC_REQUIRE_NIX=1`, in which case it
/// panics so the test fails.
pub fn nix_available(test: &str) -> bool {
    let missing = missing_tools();
    if missing.is_empty() {
        return true;
    }
    let required = std::env::var(REQUIRE_NIX_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    let note = format!(
        "{test}: {} not on PATH; install Debian's nix-bin, gcc and libc6-dev (tests/run.sh does)",
        missing.join(", ")
    );
    if required {
        panic!("{note}, and {REQUIRE_NIX_VAR} is set: failing instead of skipping");
    }
    skip_note(&note);
    false
}

/// Prints a note that test output capture does not swallow, so a skipped
/// test is visible in a plain `cargo test` run.
pub fn skip_note(note: &str) {
    use std::io::Write as _;
    let _ = writeln!(std::io::stderr(), "note: SKIPPED {note}");
}

// ---------------------------------------------------------------------------
// A small seeded random number generator (splitmix64), so failures replay.

#[derive(Debug, Clone)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from the clock, for runs that should explore.
    pub fn fresh_seed() -> u64 {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        let mut r = Rng(t.as_nanos() as u64 ^ (u64::from(std::process::id()) << 32));
        r.next_u64()
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        assert!(n > 0, "Rng::below(0)");
        (self.next_u64() % n as u64) as usize
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + self.below(hi - lo + 1)
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    pub fn pick<'a, T>(&mut self, items: &'a [T]) -> Option<&'a T> {
        if items.is_empty() {
            None
        } else {
            Some(&items[self.below(items.len())])
        }
    }

    pub fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }
}

// ---------------------------------------------------------------------------
// Helper programs, compiled with gcc once per test process.

/// The derivation builder. For each name in `$outputs` it writes the
/// output path `$<name>`: a file holding `$text_<name>`, or, when
/// `$kind_<name>` is `dir`, a directory with `sub/data` (that text) and
/// `top`. References arise from the store paths in the text.
const BUILDER_C: &str = r#"
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
static void die(const char *what, const char *p) { perror(what); fprintf(stderr, "%s\n", p); exit(1); }
static void put(const char *path, const char *text) {
  FILE *f = fopen(path, "w"); if (!f) die("fopen", path);
  if (fputs(text, f) < 0) die("fputs", path);
  if (fclose(f)) die("fclose", path);
}
static const char *var(const char *prefix, const char *name) {
  char key[256]; snprintf(key, sizeof key, "%s_%s", prefix, name); return getenv(key);
}
int main(void) {
  const char *outs = getenv("outputs"); if (!outs) outs = "out";
  char *list = strdup(outs);
  for (char *name = strtok(list, " "); name; name = strtok(NULL, " ")) {
    const char *path = getenv(name); if (!path) die("no output path", name);
    const char *text = var("text", name); if (!text) text = "";
    const char *kind = var("kind", name);
    if (kind && strcmp(kind, "dir") == 0) {
      char p[4096];
      if (mkdir(path, 0755)) die("mkdir", path);
      snprintf(p, sizeof p, "%s/sub", path); if (mkdir(p, 0755)) die("mkdir", p);
      snprintf(p, sizeof p, "%s/sub/data", path); put(p, text);
      snprintf(p, sizeof p, "%s/top", path); put(p, "top\n");
    } else {
      put(path, text);
    }
  }
  return 0;
}
"#;

/// A process that holds store paths the way running programs do, for
/// runtime and temp roots. Arguments are operations: `cwd P`, `open P`
/// (keeps an fd), `map P` (mmaps P and closes the fd), `temproots DIR P...
/// --` / `temproots-ex DIR P... --` (writes `DIR/<pid>` with NUL-terminated
/// paths and holds a shared / exclusive flock on it, as Nix does). Then it
/// prints `ready <pid>` and sleeps; it dies with its parent thread
/// (PR_SET_PDEATHSIG) and after 600 s at most.
const HOLDER_C: &str = r#"
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <unistd.h>
static void die(const char *what, const char *p) { fprintf(stderr, "holder: %s %s: ", what, p); perror(""); exit(1); }
int main(int argc, char **argv) {
  prctl(PR_SET_PDEATHSIG, SIGKILL);
  alarm(600);
  for (int i = 1; i < argc; i++) {
    const char *op = argv[i];
    if (i + 1 >= argc) die("missing argument for", op);
    const char *arg = argv[++i];
    if (!strcmp(op, "cwd")) { if (chdir(arg)) die("chdir", arg); }
    else if (!strcmp(op, "open")) { if (open(arg, O_RDONLY) < 0) die("open", arg); }
    else if (!strcmp(op, "map")) {
      int fd = open(arg, O_RDONLY); if (fd < 0) die("open", arg);
      struct stat st; if (fstat(fd, &st)) die("fstat", arg);
      if (mmap(NULL, st.st_size ? st.st_size : 1, PROT_READ, MAP_PRIVATE, fd, 0) == MAP_FAILED) die("mmap", arg);
      close(fd);
    }
    else if (!strcmp(op, "temproots") || !strcmp(op, "temproots-ex")) {
      char p[4096]; snprintf(p, sizeof p, "%s/%d", arg, (int) getpid());
      int fd = open(p, O_RDWR | O_CREAT | O_TRUNC, 0644); if (fd < 0) die("open", p);
      if (flock(fd, !strcmp(op, "temproots") ? LOCK_SH : LOCK_EX)) die("flock", p);
      while (i + 1 < argc && strcmp(argv[i + 1], "--")) {
        const char *s = argv[++i];
        if (write(fd, s, strlen(s) + 1) != (ssize_t) (strlen(s) + 1)) die("write", p);
      }
      i++;
    }
    else die("unknown op", op);
  }
  printf("ready %d\n", (int) getpid()); fflush(stdout);
  for (;;) pause();
}
"#;

/// The compiled helpers: `<cache>/<hash>/builder` and `.../holder`.
struct Tools {
    builder: PathBuf,
    holder: PathBuf,
}

fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3)
    })
}

fn compile(dir: &Path, name: &str, source: &str) -> Result<PathBuf, String> {
    let exe = dir.join(name);
    if exe.is_file() {
        return Ok(exe);
    }
    let pid = std::process::id();
    let src = dir.join(format!("{name}.{pid}.c"));
    let tmp = dir.join(format!("{name}.{pid}.tmp"));
    std::fs::write(&src, source).map_err(|e| format!("writing {}: {e}", src.display()))?;
    let out = Command::new("gcc")
        .args(["-static", "-O1", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&src)
        .output()
        .map_err(|e| format!("running gcc: {e}"))?;
    let _ = std::fs::remove_file(&src);
    if !out.status.success() {
        return Err(format!(
            "gcc -static failed for {name} (is libc6-dev installed?):\n{}",
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    // Atomic, so test binaries compiling side by side never see half a file.
    std::fs::rename(&tmp, &exe).map_err(|e| format!("renaming {}: {e}", tmp.display()))?;
    Ok(exe)
}

fn tools() -> &'static Tools {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    let tools = TOOLS.get_or_init(|| {
        let hash = fnv(format!("{BUILDER_C}\0{HOLDER_C}").as_bytes());
        let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join("nix-harness")
            .join(format!("{hash:016x}"));
        std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
        Ok(Tools {
            builder: compile(&dir, "builder", BUILDER_C)?,
            holder: compile(&dir, "holder", HOLDER_C)?,
        })
    });
    match tools {
        Ok(t) => t,
        Err(e) => panic!("{e}"),
    }
}

// ---------------------------------------------------------------------------
// Running commands

/// A command line for messages.
fn describe(cmd: &Command) -> String {
    let mut s = cmd.get_program().to_string_lossy().into_owned();
    for a in cmd.get_args() {
        s.push(' ');
        s.push_str(&a.to_string_lossy());
    }
    s
}

/// Runs `cmd`, panicking with its stderr when it fails; returns stdout.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", describe(cmd)));
    if !out.status.success() {
        panic!(
            "{} failed ({}):\n{}{}",
            describe(cmd),
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8(out.stdout).expect("command printed non-UTF-8")
}

// ---------------------------------------------------------------------------
// The store

/// How `nix.conf` spells the two GC settings; `None` leaves a setting out
/// (Nix's defaults: keep-outputs false, keep-derivations true).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct GcConf {
    pub keep_outputs: Option<bool>,
    pub keep_derivations: Option<bool>,
}

impl GcConf {
    /// The values Nix uses.
    pub fn effective(&self) -> (bool, bool) {
        (
            self.keep_outputs.unwrap_or(false),
            self.keep_derivations.unwrap_or(true),
        )
    }
}

impl std::fmt::Display for GcConf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let show = |v: Option<bool>| v.map_or("unset".to_string(), |b| b.to_string());
        write!(
            f,
            "keep-outputs={} keep-derivations={}",
            show(self.keep_outputs),
            show(self.keep_derivations)
        )
    }
}

/// One GC root as `storegc roots --format json` reports it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct StoregcRoot {
    pub link: String,
    pub target: String,
    pub kind: String,
    /// The entries pointing to `link`, sorted (empty for a direct root).
    pub via: Vec<String>,
}

/// One line of `nix-store --gc --print-roots`: `LINK -> TARGET`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NixRoot {
    pub link: String,
    pub target: String,
}

impl NixRoot {
    /// `runtime` (`/proc/...`), `temp` (`{temp:PID}`) or `link` (a file
    /// under gcroots or profiles, or the link an indirect root points at).
    pub fn category(&self) -> &'static str {
        if self.link.starts_with("/proc/") || self.link == "{censored}" {
            "runtime"
        } else if self.link.starts_with("{temp:") {
            "temp"
        } else {
            "link"
        }
    }
}

/// A private Nix store in a temporary folder `$T`: store `$T/nix/store`,
/// state `$T/nix/var/nix`, logs `$T/nix/var/log/nix`, configuration
/// `$T/etc/nix.conf`. Removed on drop unless the thread is panicking or
/// `STOREGC_KEEP_STORE=1`.
pub struct NixStore {
    root: PathBuf,
    pub store_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub conf_dir: PathBuf,
    builder: OnceCell<String>,
    holder: OnceCell<String>,
    counter: std::cell::Cell<u32>,
    extra_env: std::cell::RefCell<Vec<(String, String)>>,
    removed_env: std::cell::RefCell<Vec<String>>,
}

impl Default for NixStore {
    fn default() -> Self {
        Self::new()
    }
}

impl NixStore {
    /// A fresh store with Nix's default GC settings.
    pub fn new() -> NixStore {
        Self::with_conf(GcConf::default())
    }

    /// A fresh store whose nix.conf sets the GC settings as given.
    pub fn with_conf(conf: GcConf) -> NixStore {
        let root = tempfile::Builder::new()
            .prefix("storegc-nix-")
            .tempdir()
            .expect("creating a temp dir")
            .keep();
        let store = NixStore {
            store_dir: root.join("nix/store"),
            state_dir: root.join("nix/var/nix"),
            log_dir: root.join("nix/var/log/nix"),
            conf_dir: root.join("etc"),
            root,
            builder: OnceCell::new(),
            holder: OnceCell::new(),
            counter: std::cell::Cell::new(0),
            extra_env: std::cell::RefCell::new(Vec::new()),
            removed_env: std::cell::RefCell::new(Vec::new()),
        };
        for d in ["etc", "home/.config", "xdg", "tmp", "inputs"] {
            std::fs::create_dir_all(store.root.join(d)).expect("creating harness folders");
        }
        store.set_conf(conf);
        store.nix_store(&["--init"]);
        store
    }

    /// The temporary folder `$T` everything lives in.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn gcroots_dir(&self) -> PathBuf {
        self.state_dir.join("gcroots")
    }

    pub fn profiles_dir(&self) -> PathBuf {
        self.state_dir.join("profiles")
    }

    pub fn temproots_dir(&self) -> PathBuf {
        self.state_dir.join("temproots")
    }

    pub fn db_path(&self) -> PathBuf {
        self.state_dir.join("db/db.sqlite")
    }

    pub fn conf_path(&self) -> PathBuf {
        self.conf_dir.join("nix.conf")
    }

    /// A fresh name, unique within this store (`{prefix}{n}`).
    pub fn fresh_name(&self, prefix: &str) -> String {
        let n = self.counter.get();
        self.counter.set(n + 1);
        format!("{prefix}{n}")
    }

    /// Rewrites nix.conf: no sandbox, no build users, no substituters, and
    /// the GC settings as given.
    pub fn set_conf(&self, conf: GcConf) {
        let mut extra = String::new();
        if let Some(v) = conf.keep_outputs {
            let _ = writeln!(extra, "keep-outputs = {v}");
        }
        if let Some(v) = conf.keep_derivations {
            let _ = writeln!(extra, "keep-derivations = {v}");
        }
        self.set_conf_text(&extra);
    }

    /// Rewrites nix.conf with the base settings followed by `extra`.
    pub fn set_conf_text(&self, extra: &str) {
        let text = format!("sandbox = false\nbuild-users-group =\nsubstituters =\n{extra}");
        std::fs::write(self.conf_path(), text).expect("writing nix.conf");
    }

    /// The environment every command gets.
    pub fn env(&self) -> Vec<(&'static str, OsString)> {
        let r = |p: &str| self.root.join(p).into_os_string();
        vec![
            ("NIX_STORE_DIR", self.store_dir.clone().into_os_string()),
            ("NIX_STATE_DIR", self.state_dir.clone().into_os_string()),
            ("NIX_LOG_DIR", self.log_dir.clone().into_os_string()),
            ("NIX_CONF_DIR", self.conf_dir.clone().into_os_string()),
            ("NIX_REMOTE", OsString::new()),
            ("HOME", r("home")),
            ("XDG_CONFIG_HOME", r("home/.config")),
            ("XDG_CONFIG_DIRS", r("xdg")),
            ("XDG_CACHE_HOME", r("home/.cache")),
            ("XDG_DATA_HOME", r("home/.local/share")),
            ("XDG_STATE_HOME", r("home/.local/state")),
            ("TMPDIR", r("tmp")),
        ]
    }

    /// `program` with this store's environment, run from `$T`.
    pub fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root).envs(self.env());
        cmd.env("PATH", search_path());
        for v in [
            "NIX_CONFIG",
            "NIX_USER_CONF_FILES",
            "NIX_PATH",
            "NIX_DAEMON_SOCKET_PATH",
            "NIX_BUILD_HOOK",
            "NIX_IGNORE_SYMLINK_STORE",
        ] {
            cmd.env_remove(v);
        }
        cmd.envs(self.extra_env.borrow().iter().map(|(k, v)| (k, v)));
        for v in self.removed_env.borrow().iter() {
            cmd.env_remove(v);
        }
        cmd
    }

    /// Variables of `env()` (e.g. `HOME`, `XDG_CONFIG_HOME`) to unset for
    /// every later command, Nix and storegc alike; replaces the previous
    /// list. Applied after `set_extra_env`.
    pub fn set_env_removed(&self, vars: &[&str]) {
        *self.removed_env.borrow_mut() = vars.iter().map(|v| v.to_string()).collect();
    }

    /// Extra environment variables for every later command (Nix and
    /// storegc alike), e.g. `NIX_CONFIG`; replaces the previous ones.
    pub fn set_extra_env(&self, vars: &[(&str, &str)]) {
        *self.extra_env.borrow_mut() = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    }

    /// Runs `program args...`, panicking on failure; returns stdout.
    pub fn run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> String {
        run_ok(self.command(program).args(args))
    }

    /// Runs `program args...` and returns whatever happened.
    pub fn try_run<S: AsRef<OsStr>>(&self, program: &str, args: &[S]) -> Output {
        self.command(program)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
    }

    pub fn nix_store<S: AsRef<OsStr>>(&self, args: &[S]) -> String {
        self.run("nix-store", args)
    }

    // -- adding things to the store ------------------------------------

    /// `nix-store --add PATH`; returns the store path.
    pub fn add_path(&self, path: &Path) -> String {
        let out = self.nix_store(&[OsStr::new("--add"), path.as_os_str()]);
        out.trim().to_string()
    }

    /// Writes `$T/inputs/<name>` with `contents` and adds it to the store.
    pub fn add_text(&self, name: &str, contents: &str) -> String {
        let dir = self.root.join("inputs").join(self.fresh_name("t"));
        std::fs::create_dir_all(&dir).expect("creating an input folder");
        let file = dir.join(name);
        std::fs::write(&file, contents).expect("writing an input file");
        self.add_path(&file)
    }

    /// Adds a directory `<name>` holding `bin/tool` and `share/doc`.
    pub fn add_dir(&self, name: &str, contents: &str) -> String {
        let dir = self
            .root
            .join("inputs")
            .join(self.fresh_name("d"))
            .join(name);
        std::fs::create_dir_all(dir.join("bin")).expect("creating an input folder");
        std::fs::create_dir_all(dir.join("share")).expect("creating an input folder");
        std::fs::write(dir.join("bin/tool"), contents).expect("writing an input file");
        std::fs::write(dir.join("share/doc"), "doc\n").expect("writing an input file");
        self.add_path(&dir)
    }

    /// Adds a store path that is itself a symlink to `target`.
    pub fn add_symlink(&self, name: &str, target: &str) -> String {
        let dir = self.root.join("inputs").join(self.fresh_name("s"));
        std::fs::create_dir_all(&dir).expect("creating an input folder");
        let link = dir.join(name);
        symlink(target, &link).expect("creating a symlink");
        self.add_path(&link)
    }

    /// The static builder, added to this store once.
    pub fn builder(&self) -> &str {
        self.builder.get_or_init(|| self.add_path(&tools().builder))
    }

    /// A copy of the holder program in this store (running it makes its
    /// store path an `exe`/`maps` runtime root).
    pub fn holder_in_store(&self) -> &str {
        self.holder.get_or_init(|| self.add_path(&tools().holder))
    }

    // -- building ------------------------------------------------------

    /// Writes `graph` as a Nix expression, instantiates every derivation
    /// and source in it, and builds the derivations in `build` (plus,
    /// through Nix, everything they need). Fixed-output twins are built in
    /// a second call so that two builders never wait on one output lock.
    pub fn realise_graph(&self, graph: &Graph, build: &[usize]) -> Realised {
        let added: BTreeMap<usize, String> = graph
            .nodes
            .iter()
            .enumerate()
            .filter_map(|(i, n)| match &n.kind {
                NodeKind::Added { dir: false } => {
                    Some((i, self.add_text(&n.name, &format!("added {}\n", n.name))))
                }
                NodeKind::Added { dir: true } => {
                    Some((i, self.add_dir(&n.name, &format!("tool {}\n", n.name))))
                }
                _ => None,
            })
            .collect();
        let expr = graph.to_nix(self.builder(), &added);
        let file = self.root.join(format!("{}.nix", self.fresh_name("graph")));
        std::fs::write(&file, &expr).expect("writing the graph expression");
        let json = self.run(
            "nix-instantiate",
            &[
                OsStr::new("--eval"),
                OsStr::new("--strict"),
                OsStr::new("--json"),
                OsStr::new("--read-write-mode"),
                file.as_os_str(),
                OsStr::new("-A"),
                OsStr::new("info"),
            ],
        );
        let info: serde_json::Value = serde_json::from_str(&json).expect("instantiate JSON");
        let mut nodes = Vec::with_capacity(graph.nodes.len());
        for n in &graph.nodes {
            let v = &info[&n.name];
            let mut outputs = BTreeMap::new();
            let drv = v["drv"].as_str().map(str::to_string);
            match v["outputs"].as_object() {
                Some(o) => {
                    for (k, p) in o {
                        outputs.insert(k.clone(), p.as_str().expect("output path").to_string());
                    }
                }
                None => {
                    outputs.insert(
                        "out".to_string(),
                        v["path"].as_str().expect("source path").to_string(),
                    );
                }
            }
            nodes.push(RealNode { drv, outputs });
        }
        let (first, second): (Vec<usize>, Vec<usize>) = build
            .iter()
            .copied()
            .filter(|&i| nodes[i].drv.is_some())
            .partition(|&i| !graph.nodes[i].is_twin());
        for wave in [first, second] {
            if !wave.is_empty() {
                let drvs: Vec<&str> = wave
                    .iter()
                    .filter_map(|&i| nodes[i].drv.as_deref())
                    .collect();
                let mut args = vec!["-r", "--quiet"];
                args.extend(drvs);
                self.nix_store(&args);
            }
        }
        Realised { expr: file, nodes }
    }

    /// `nix-build EXPR -A drvs.<node>.<output> -o LINK`: builds and adds
    /// an indirect root registered in gcroots/auto. Returns the link Nix
    /// made: LINK, or `LINK-<output>` for outputs other than `out`.
    pub fn nix_build_link(
        &self,
        real: &Realised,
        graph: &Graph,
        node: usize,
        output: &str,
        link: &Path,
    ) -> PathBuf {
        let attr = format!("drvs.{}.{output}", graph.nodes[node].name);
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("creating a link folder");
        }
        self.run(
            "nix-build",
            &[
                real.expr.as_os_str(),
                OsStr::new("--quiet"),
                OsStr::new("-A"),
                OsStr::new(&attr),
                OsStr::new("-o"),
                link.as_os_str(),
            ],
        );
        if output == "out" {
            link.to_path_buf()
        } else {
            let mut name = link.as_os_str().to_owned();
            name.push(format!("-{output}"));
            PathBuf::from(name)
        }
    }

    /// `nix-store -r PATH --add-root LINK`: an indirect root made by Nix.
    pub fn add_root_via_nix(&self, path: &str, link: &Path) {
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("creating a link folder");
        }
        self.nix_store(&[
            OsStr::new("--quiet"),
            OsStr::new("--add-root"),
            link.as_os_str(),
            OsStr::new("-r"),
            OsStr::new(path),
        ]);
    }

    /// `nix-store --delete PATH`; `Err(stderr)` when Nix refuses (the
    /// path is alive).
    pub fn try_delete(&self, path: &str) -> Result<(), String> {
        let out = self.try_run("nix-store", &["--delete", path]);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    // -- roots -----------------------------------------------------------

    /// A symlink `link -> target`, creating `link`'s folders.
    pub fn symlink(&self, link: &Path, target: impl AsRef<Path>) {
        if let Some(parent) = link.parent() {
            std::fs::create_dir_all(parent).expect("creating a link folder");
        }
        symlink(target, link).unwrap_or_else(|e| panic!("symlink {} : {e}", link.display()));
    }

    /// A symlink `gcroots/<rel> -> target` (direct when target is in the
    /// store, indirect otherwise). Returns the link.
    pub fn add_gcroot_link(&self, rel: &str, target: impl AsRef<Path>) -> PathBuf {
        let link = self.gcroots_dir().join(rel);
        self.symlink(&link, target);
        link
    }

    /// A regular file `gcroots/<rel>` (roots the store path named like its
    /// basename). Returns the file.
    pub fn add_gcroot_file(&self, rel: &str) -> PathBuf {
        let file = self.gcroots_dir().join(rel);
        std::fs::create_dir_all(file.parent().expect("parent")).expect("creating gcroots folder");
        std::fs::write(&file, "").expect("writing a gcroots file");
        file
    }

    /// `nix-env -p PROFILE --set PATH`: a new generation of PROFILE.
    pub fn set_profile(&self, profile: &Path, path: &str) {
        if let Some(parent) = profile.parent() {
            std::fs::create_dir_all(parent).expect("creating a profile folder");
        }
        self.run(
            "nix-env",
            &[
                OsStr::new("-p"),
                profile.as_os_str(),
                OsStr::new("--set"),
                OsStr::new(path),
            ],
        );
    }

    /// `nix-env -p PROFILE --delete-generations GEN...`; `Err(stderr)`
    /// when Nix refuses (e.g. to delete the current generation).
    pub fn delete_generations(&self, profile: &Path, generations: &[u32]) -> Result<(), String> {
        let mut args: Vec<OsString> =
            vec!["-p".into(), profile.into(), "--delete-generations".into()];
        args.extend(generations.iter().map(|g| OsString::from(g.to_string())));
        let out = self.try_run("nix-env", &args);
        if out.status.success() {
            Ok(())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    /// Starts a holder process (see [`Hold`]) with extra environment
    /// variables; `from_store` runs the copy of the holder that lives in
    /// this store. Waits until it holds everything.
    pub fn spawn_holder(
        &self,
        holds: &[Hold],
        env: &[(String, String)],
        from_store: bool,
    ) -> Holder {
        let exe: PathBuf = if from_store {
            PathBuf::from(self.holder_in_store())
        } else {
            tools().holder.clone()
        };
        let mut cmd = Command::new(&exe);
        for h in holds {
            match h {
                Hold::Cwd(p) => cmd.arg("cwd").arg(p),
                Hold::Open(p) => cmd.arg("open").arg(p),
                Hold::Map(p) => cmd.arg("map").arg(p),
                Hold::TempRoots { paths, exclusive } => cmd
                    .arg(if *exclusive {
                        "temproots-ex"
                    } else {
                        "temproots"
                    })
                    .arg(self.temproots_dir())
                    .args(paths)
                    .arg("--"),
            };
        }
        cmd.envs(env.iter().map(|(k, v)| (k, v)))
            .current_dir(&self.root)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", exe.display()));
        let mut line = String::new();
        let stdout = child.stdout.take().expect("holder stdout");
        BufReader::new(stdout)
            .read_line(&mut line)
            .expect("reading the holder's stdout");
        if !line.starts_with("ready ") {
            let mut err = String::new();
            let _ = child.kill();
            let _ = child.wait();
            if let Some(mut e) = child.stderr.take() {
                let _ = e.read_to_string(&mut err);
            }
            panic!("holder {} did not start: {line}{err}", describe(&cmd));
        }
        Holder { child }
    }

    /// A temproots file for PID that nobody holds a lock on (stale).
    pub fn add_stale_temp_roots(&self, pid: u32, paths: &[String]) -> PathBuf {
        let file = self.temproots_dir().join(pid.to_string());
        let mut data = Vec::new();
        for p in paths {
            data.extend_from_slice(p.as_bytes());
            data.push(0);
        }
        std::fs::write(&file, data).expect("writing a temproots file");
        file
    }

    // -- the Nix oracle ----------------------------------------------------

    fn gc_lines(&self, flag: &str) -> Vec<String> {
        self.nix_store(&["--gc", flag])
            .lines()
            .filter(|l| !l.is_empty())
            .map(str::to_string)
            .collect()
    }

    /// `nix-store --gc --print-dead`, as printed (store-dir entries that are
    /// not valid paths included).
    pub fn print_dead(&self) -> BTreeSet<String> {
        self.gc_lines("--print-dead").into_iter().collect()
    }

    /// `nix-store --gc --print-dead` restricted to valid paths: what
    /// `storegc plan --format paths` must print.
    pub fn print_dead_valid(&self) -> BTreeSet<String> {
        let dead = self.print_dead();
        let invalid = self.invalid_among(&dead);
        dead.difference(&invalid).cloned().collect()
    }

    /// `nix-store --gc --print-live`.
    pub fn print_live(&self) -> BTreeSet<String> {
        self.gc_lines("--print-live").into_iter().collect()
    }

    /// `nix-store --gc --print-roots`, parsed.
    pub fn print_roots(&self) -> BTreeSet<NixRoot> {
        self.gc_lines("--print-roots")
            .into_iter()
            .map(|l| {
                let (link, target) = l
                    .rsplit_once(" -> ")
                    .unwrap_or_else(|| panic!("odd --print-roots line: {l}"));
                NixRoot {
                    link: link.to_string(),
                    target: target.to_string(),
                }
            })
            .collect()
    }

    /// The ones among `paths` that are not valid store paths.
    pub fn invalid_among<'a>(
        &self,
        paths: impl IntoIterator<Item = &'a String>,
    ) -> BTreeSet<String> {
        let paths: Vec<&String> = paths.into_iter().collect();
        let mut invalid = BTreeSet::new();
        for chunk in paths.chunks(2000) {
            let mut args: Vec<&str> = vec!["--check-validity", "--print-invalid"];
            args.extend(chunk.iter().map(|s| s.as_str()));
            invalid.extend(self.nix_store(&args).lines().map(str::to_string));
        }
        invalid
    }

    /// Every valid path (entries of the store dir that Nix calls valid).
    pub fn valid_paths(&self) -> BTreeSet<String> {
        let entries: BTreeSet<String> = std::fs::read_dir(&self.store_dir)
            .expect("reading the store dir")
            .map(|e| e.expect("store dir entry").file_name())
            .filter(|n| !n.to_string_lossy().starts_with('.'))
            .map(|n| self.store_dir.join(n).to_string_lossy().into_owned())
            .collect();
        let invalid = self.invalid_among(&entries);
        entries.difference(&invalid).cloned().collect()
    }

    // -- storegc ---------------------------------------------------------

    /// `storegc ARGS...` with this store's environment.
    ///
    /// `STOREGC_ALLOW_INCOMPLETE_ROOTS=1`: the sandboxes the tests run in
    /// may hold a process even root cannot read (a container's pid 1), and
    /// apply would refuse; tests of that refusal remove the variable.
    pub fn storegc<S: AsRef<OsStr>>(&self, args: &[S]) -> Command {
        let mut cmd = self.command(storegc_bin());
        cmd.args(args)
            .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
            .stdin(Stdio::null());
        cmd
    }

    /// `cmd` (a [`NixStore::storegc`] command) as a user who is not root:
    /// the current one, or, when the tests run as root (CI does), `nobody`
    /// through `setpriv`. For that the store tree is opened to others
    /// (a+rX) and the binary copied into it, so nothing on the way to it
    /// needs to be readable by `nobody`. The db folder keeps its mode: not
    /// writable by that user, as on a real multi-user store.
    pub fn unprivileged(&self, cmd: Command) -> Command {
        if unsafe { libc::geteuid() } != 0 {
            return cmd;
        }
        let bin = self.root().join("storegc-unprivileged");
        if !bin.exists() {
            std::fs::copy(storegc_bin(), &bin).expect("copying storegc");
        }
        run_ok(Command::new("chmod").arg("-R").arg("a+rX").arg(self.root()));
        let mut outer = Command::new("setpriv");
        outer
            .args(["--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"])
            .arg(&bin)
            .args(cmd.get_args());
        for (k, v) in cmd.get_envs() {
            match v {
                Some(v) => outer.env(k, v),
                None => outer.env_remove(k),
            };
        }
        if let Some(dir) = cmd.get_current_dir() {
            outer.current_dir(dir);
        }
        outer.stdin(Stdio::null());
        outer
    }

    /// `storegc plan --format paths`, which must succeed.
    pub fn storegc_plan_paths(&self) -> BTreeSet<String> {
        let out = run_ok(&mut self.storegc(&["--quiet", "plan", "--format", "paths"]));
        out.lines().map(str::to_string).collect()
    }

    /// `storegc plan --format json`, which must succeed.
    pub fn storegc_plan_json(&self) -> serde_json::Value {
        let out = run_ok(&mut self.storegc(&["--quiet", "plan", "--format", "json"]));
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("plan JSON: {e}\n{out}"))
    }

    /// `storegc roots --format json`, which must succeed.
    pub fn storegc_roots(&self) -> Vec<StoregcRoot> {
        let out = run_ok(&mut self.storegc(&["--quiet", "roots", "--format", "json"]));
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("roots JSON: {e}\n{out}"));
        let roots = v["roots"]
            .as_array()
            .unwrap_or_else(|| panic!("roots JSON without a roots array:\n{out}"));
        let s = |r: &serde_json::Value, k: &str| r[k].as_str().map(str::to_string);
        roots
            .iter()
            .map(|r| StoregcRoot {
                link: s(r, "link").unwrap_or_else(|| panic!("root without link: {r}")),
                target: s(r, "target").unwrap_or_else(|| panic!("root without target: {r}")),
                kind: s(r, "kind").unwrap_or_else(|| panic!("root without kind: {r}")),
                via: r["via"]
                    .as_array()
                    .map(|v| {
                        v.iter()
                            .filter_map(|x| x.as_str().map(str::to_string))
                            .collect()
                    })
                    .unwrap_or_default(),
            })
            .collect()
    }

    /// Everything under the state dir, for "nothing was written" checks.
    pub fn state_snapshot(&self) -> Snapshot {
        Snapshot::of(&self.state_dir)
    }
}

impl Drop for NixStore {
    fn drop(&mut self) {
        let keep = std::env::var(KEEP_STORE_VAR).is_ok_and(|v| v == "1");
        if std::thread::panicking() || keep {
            eprintln!("note: kept the test store at {}", self.root.display());
            return;
        }
        remove_tree(&self.root);
    }
}

/// Removes a tree that holds read-only store paths.
pub fn remove_tree(root: &Path) {
    fn make_writable(p: &Path) {
        let Ok(md) = std::fs::symlink_metadata(p) else {
            return;
        };
        if md.is_dir() {
            let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
            if let Ok(rd) = std::fs::read_dir(p) {
                for e in rd.flatten() {
                    make_writable(&e.path());
                }
            }
        }
    }
    make_writable(root);
    let _ = std::fs::remove_dir_all(root);
}

// ---------------------------------------------------------------------------
// Processes holding store paths

/// What a holder process holds.
#[derive(Debug, Clone)]
pub enum Hold {
    /// Its working directory (`/proc/PID/cwd`).
    Cwd(PathBuf),
    /// An open file descriptor (`/proc/PID/fd/N`).
    Open(PathBuf),
    /// A mapping, with the fd closed (`/proc/PID/maps`).
    Map(PathBuf),
    /// `temproots/<pid>` with these paths, locked shared (as Nix's
    /// `ltRead`) or exclusive.
    TempRoots { paths: Vec<String>, exclusive: bool },
}

/// A running holder; killed and reaped on drop.
pub struct Holder {
    child: Child,
}

impl Holder {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Any child, to be killed and reaped on drop (also on a failure).
    pub fn of(child: Child) -> Holder {
        Holder { child }
    }

    /// Whether it is still running.
    pub fn running(&mut self) -> bool {
        self.child.try_wait().expect("polling a child").is_none()
    }

    /// Waits for it to end.
    pub fn wait(mut self) -> std::process::ExitStatus {
        self.child.wait().expect("waiting for a child")
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---------------------------------------------------------------------------
// Snapshots of a folder

/// One entry of a [`Snapshot`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// `dir`, `file N bytes` or `link -> TARGET`.
    pub what: String,
    pub mode: u32,
    /// Seconds and nanoseconds.
    pub mtime: (i64, i64),
}

impl std::fmt::Display for Entry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} mode {:o} mtime {}.{:09}",
            self.what, self.mode, self.mtime.0, self.mtime.1
        )
    }
}

/// Every entry under a folder: kind, size, mtime, mode, symlink target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot(pub BTreeMap<PathBuf, Entry>);

impl Snapshot {
    pub fn of(root: &Path) -> Snapshot {
        fn walk(p: &Path, out: &mut BTreeMap<PathBuf, Entry>) {
            let Ok(md) = std::fs::symlink_metadata(p) else {
                return;
            };
            let ft = md.file_type();
            let what = if ft.is_symlink() {
                let target = std::fs::read_link(p).unwrap_or_default();
                format!("link -> {}", target.display())
            } else if ft.is_dir() {
                "dir".to_string()
            } else {
                format!("file {} bytes", md.len())
            };
            out.insert(
                p.to_path_buf(),
                Entry {
                    what,
                    mode: md.mode(),
                    mtime: (md.mtime(), md.mtime_nsec()),
                },
            );
            if ft.is_dir() {
                if let Ok(rd) = std::fs::read_dir(p) {
                    for e in rd.flatten() {
                        walk(&e.path(), out);
                    }
                }
            }
        }
        let mut m = BTreeMap::new();
        walk(root, &mut m);
        Snapshot(m)
    }

    /// The same snapshot with the mtime of folder `dir` blanked out.
    pub fn ignoring_mtime_of(mut self, dir: &Path) -> Snapshot {
        if let Some(e) = self.0.get_mut(dir) {
            e.mtime = (0, 0);
        }
        self
    }

    /// The same snapshot without SQLite's WAL index files in folder `dir`
    /// (`db.sqlite-shm`, `db.sqlite-wal`) and with that folder's mtime
    /// blanked: any reader of a WAL database may create them (a read-only
    /// connection cannot remove them again); `db.sqlite` itself and every
    /// other file stay checked.
    pub fn ignoring_sqlite_index_in(self, dir: &Path) -> Snapshot {
        let mut s = self.ignoring_mtime_of(dir);
        s.0.remove(&dir.join("db.sqlite-shm"));
        s.0.remove(&dir.join("db.sqlite-wal"));
        s
    }

    /// A readable list of what differs, empty when nothing does.
    pub fn diff(&self, after: &Snapshot) -> String {
        let mut s = String::new();
        for (p, v) in &self.0 {
            match after.0.get(p) {
                None => {
                    let _ = writeln!(s, "  removed {}: {v}", p.display());
                }
                Some(w) if w != v => {
                    let _ = writeln!(s, "  changed {}: {v} => {w}", p.display());
                }
                _ => {}
            }
        }
        for (p, w) in &after.0 {
            if !self.0.contains_key(p) {
                let _ = writeln!(s, "  created {}: {w}", p.display());
            }
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Random derivation graphs

/// A dependency on another node: a source, one output of a derivation, or
/// (`drv_file`) the `.drv` file itself.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dep {
    pub node: usize,
    pub output: Option<String>,
    pub drv_file: bool,
}

/// One output of a derivation: a file, or a directory (`sub/data`,
/// `top`), whose text names `refs` and, through placeholders, the outputs
/// in `self_refs` of the same derivation.
#[derive(Debug, Clone)]
pub struct OutputSpec {
    pub name: String,
    pub dir: bool,
    pub refs: Vec<Dep>,
    pub self_refs: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum NodeKind {
    /// `builtins.toFile`; its text names other sources.
    Text { refs: Vec<usize> },
    /// `nix-store --add` of a file or a directory (no references).
    Added { dir: bool },
    /// `derivation { ... }` built by the static builder. `inputs` are
    /// build-time only (the outputs do not mention them). `fixed` makes it
    /// a fixed-output derivation of that salt; `twin_of` names another
    /// fixed-output node with the same output path (same name and text,
    /// another salt, so another `.drv`).
    Derivation {
        outputs: Vec<OutputSpec>,
        inputs: Vec<Dep>,
        fixed: Option<u32>,
        twin_of: Option<usize>,
    },
}

#[derive(Debug, Clone)]
pub struct Node {
    pub name: String,
    pub kind: NodeKind,
}

impl Node {
    pub fn is_derivation(&self) -> bool {
        matches!(self.kind, NodeKind::Derivation { .. })
    }

    pub fn is_twin(&self) -> bool {
        matches!(
            self.kind,
            NodeKind::Derivation {
                twin_of: Some(_),
                ..
            }
        )
    }

    /// The output names (sources have `out`).
    pub fn output_names(&self) -> Vec<String> {
        match &self.kind {
            NodeKind::Derivation { outputs, .. } => {
                outputs.iter().map(|o| o.name.clone()).collect()
            }
            _ => vec!["out".to_string()],
        }
    }
}

/// A DAG of sources and derivations; node `i` only depends on nodes `< i`.
#[derive(Debug, Clone, Default)]
pub struct Graph {
    pub nodes: Vec<Node>,
}

impl Graph {
    /// A random graph of `n` nodes named `{prefix}0..`: `toFile` and added
    /// sources, single- and multi-output derivations (`out dev lib`), file
    /// and directory outputs, self and sibling references, build-time-only
    /// inputs, outputs that mention a `.drv`, and fixed-output twins.
    pub fn random(rng: &mut Rng, n: usize, prefix: &str) -> Graph {
        let mut g = Graph::default();
        for i in 0..n {
            let name = format!("{prefix}{i}");
            let roll = rng.below(100);
            let kind = if i == 0 || roll < 14 {
                let refs = (0..i)
                    .filter(|&j| {
                        matches!(
                            g.nodes[j].kind,
                            NodeKind::Text { .. } | NodeKind::Added { .. }
                        )
                    })
                    .filter(|_| rng.chance(0.3))
                    .take(3)
                    .collect();
                NodeKind::Text { refs }
            } else if roll < 22 {
                NodeKind::Added {
                    dir: rng.chance(0.4),
                }
            } else if roll < 28 {
                // A fixed-output derivation, sometimes the twin of an earlier one.
                let firsts: Vec<usize> = (0..i)
                    .filter(|&j| {
                        matches!(g.nodes[j].kind, NodeKind::Derivation { fixed: Some(_), twin_of: None, .. })
                            && !g.nodes.iter().any(|m| matches!(m.kind, NodeKind::Derivation { twin_of: Some(t), .. } if t == j))
                    })
                    .collect();
                let twin_of = if rng.chance(0.6) {
                    rng.pick(&firsts).copied()
                } else {
                    None
                };
                NodeKind::Derivation {
                    outputs: vec![OutputSpec {
                        name: "out".into(),
                        dir: false,
                        refs: vec![],
                        self_refs: vec![],
                    }],
                    inputs: vec![],
                    fixed: Some(if twin_of.is_some() { 2 } else { 1 }),
                    twin_of,
                }
            } else {
                let names: Vec<String> = if rng.chance(0.3) {
                    vec!["out".into(), "dev".into(), "lib".into()]
                } else {
                    vec!["out".into()]
                };
                let candidates: Vec<usize> = (0..i).filter(|&j| !g.nodes[j].is_twin()).collect();
                let pick_dep = |rng: &mut Rng| -> Option<Dep> {
                    let j = *rng.pick(&candidates)?;
                    let node = &g.nodes[j];
                    let (output, drv_file) = if node.is_derivation() {
                        if rng.chance(0.05) {
                            (None, true)
                        } else {
                            let outs = node.output_names();
                            (rng.pick(&outs).cloned(), false)
                        }
                    } else {
                        (None, false)
                    };
                    Some(Dep {
                        node: j,
                        output,
                        drv_file,
                    })
                };
                let mut outputs = Vec::new();
                for o in &names {
                    // Recent nodes are likelier, for depth.
                    let k = rng.below(4);
                    let mut refs = Vec::new();
                    for _ in 0..k {
                        if let Some(d) = pick_dep(rng) {
                            if !refs.contains(&d) {
                                refs.push(d);
                            }
                        }
                    }
                    // Itself and later siblings only: a cycle between
                    // outputs is an error in Nix.
                    let me = names.iter().position(|x| x == o).expect("own name");
                    let self_refs = names[me..]
                        .iter()
                        .filter(|_| rng.chance(0.2))
                        .cloned()
                        .collect();
                    outputs.push(OutputSpec {
                        name: o.clone(),
                        dir: rng.chance(0.35),
                        refs,
                        self_refs,
                    });
                }
                let inputs = (0..rng.below(3)).filter_map(|_| pick_dep(rng)).collect();
                NodeKind::Derivation {
                    outputs,
                    inputs,
                    fixed: None,
                    twin_of: None,
                }
            };
            g.nodes.push(Node { name, kind });
        }
        g
    }

    fn dep_expr(&self, d: &Dep) -> String {
        let n = &self.nodes[d.node].name;
        if d.drv_file {
            format!("${{builtins.unsafeDiscardOutputDependency {n}.drvPath}}")
        } else if let Some(o) = &d.output {
            format!("${{{n}.{o}}}")
        } else {
            format!("${{{n}}}")
        }
    }

    /// The Nix expression: `drvs.<name>` are the derivations, `info.<name>`
    /// gives `{ drv; outputs = { out = ...; }; }` or `{ path; }`.
    pub fn to_nix(&self, builder: &str, added: &BTreeMap<usize, String>) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "let");
        let _ = writeln!(s, "  builder = builtins.storePath \"{builder}\";");
        let _ = writeln!(
            s,
            "  mk = args: derivation ({{ system = builtins.currentSystem; inherit builder; }} // args);"
        );
        for (i, n) in self.nodes.iter().enumerate() {
            match &n.kind {
                NodeKind::Text { refs } => {
                    let refs: Vec<String> = refs
                        .iter()
                        .map(|&r| format!("${{{}}}", self.nodes[r].name))
                        .collect();
                    let _ = writeln!(
                        s,
                        "  {0} = builtins.toFile \"{0}\" \"text {0} {1}\\n\";",
                        n.name,
                        refs.join(" ")
                    );
                }
                NodeKind::Added { .. } => {
                    let _ = writeln!(s, "  {} = builtins.storePath \"{}\";", n.name, added[&i]);
                }
                NodeKind::Derivation {
                    outputs,
                    inputs,
                    fixed: Some(salt),
                    twin_of,
                } => {
                    let base = twin_of.map_or(&n.name, |t| &self.nodes[t].name);
                    let text = format!("fixed {base}\\n");
                    let _ = writeln!(
                        s,
                        "  {} = mk {{ name = \"{base}\"; salt = \"{salt}\"; outputHashMode = \"flat\"; outputHashAlgo = \"sha256\"; outputHash = builtins.hashString \"sha256\" \"{text}\"; text_out = \"{text}\"; }};",
                        n.name
                    );
                    debug_assert!(outputs.len() == 1 && inputs.is_empty());
                }
                NodeKind::Derivation {
                    outputs,
                    inputs,
                    fixed: None,
                    ..
                } => {
                    let names: Vec<String> =
                        outputs.iter().map(|o| format!("\"{}\"", o.name)).collect();
                    let mut attrs =
                        format!("name = \"{}\"; outputs = [ {} ];", n.name, names.join(" "));
                    for o in outputs {
                        let mut text = format!("{} {}", n.name, o.name);
                        for d in &o.refs {
                            let _ = write!(text, " {}", self.dep_expr(d));
                        }
                        for r in &o.self_refs {
                            let _ = write!(text, " ${{placeholder \"{r}\"}}");
                        }
                        let _ = write!(attrs, " text_{} = \"{text}\\n\";", o.name);
                        if o.dir {
                            let _ = write!(attrs, " kind_{} = \"dir\";", o.name);
                        }
                    }
                    if !inputs.is_empty() {
                        let ins: Vec<String> = inputs.iter().map(|d| self.dep_expr(d)).collect();
                        let _ = write!(attrs, " build_inputs = \"{}\";", ins.join(" "));
                    }
                    let _ = writeln!(s, "  {} = mk {{ {attrs} }};", n.name);
                }
            }
        }
        let _ = writeln!(s, "in {{");
        let drvs: Vec<&str> = self
            .nodes
            .iter()
            .filter(|n| n.is_derivation())
            .map(|n| n.name.as_str())
            .collect();
        let _ = writeln!(s, "  drvs = {{ inherit {}; }};", drvs.join(" "));
        let _ = writeln!(s, "  info = {{");
        for n in &self.nodes {
            if n.is_derivation() {
                let outs: Vec<String> = n
                    .output_names()
                    .iter()
                    .map(|o| format!("{o} = {}.{o}.outPath;", n.name))
                    .collect();
                let _ = writeln!(
                    s,
                    "    {0} = {{ drv = {0}.drvPath; outputs = {{ {1} }}; }};",
                    n.name,
                    outs.join(" ")
                );
            } else {
                let _ = writeln!(s, "    {0} = {{ path = \"${{{0}}}\"; }};", n.name);
            }
        }
        let _ = writeln!(s, "  }};\n}}");
        s
    }
}

/// The store paths of one node after [`NixStore::realise_graph`].
#[derive(Debug, Clone)]
pub struct RealNode {
    /// The `.drv`, for derivations.
    pub drv: Option<String>,
    /// Output name to path (`out` for sources); not necessarily valid.
    pub outputs: BTreeMap<String, String>,
}

/// A graph instantiated in a store.
#[derive(Debug, Clone)]
pub struct Realised {
    /// The expression file (for `nix-build -A drvs.<name>`).
    pub expr: PathBuf,
    pub nodes: Vec<RealNode>,
}

impl Realised {
    /// Every path the graph names: `.drv` files and outputs.
    pub fn all_paths(&self) -> BTreeSet<String> {
        let mut s = BTreeSet::new();
        for n in &self.nodes {
            s.extend(n.drv.iter().cloned());
            s.extend(n.outputs.values().cloned());
        }
        s
    }
}

// ---------------------------------------------------------------------------
// Synthetic stores

/// The `storegc-synth` binary (writes large stores Nix accepts).
pub fn storegc_synth_bin() -> &'static Path {
    Path::new(env!("CARGO_BIN_EXE_storegc-synth"))
}

impl NixStore {
    /// A store written by `storegc-synth --paths PATHS --seed SEED`: no
    /// Nix builds, so thousands of paths take a second. `padding` puts
    /// folders of about that many characters between `$T` and `nix/`,
    /// lengthening every store path: long paths fill a `nix-store`
    /// command line with fewer paths. Keep `$T` plus padding under ~440
    /// characters (SQLite opens no path over 512). Hashes and sizes are
    /// the entries' true NAR hashes and sizes: `nix-store --verify
    /// --check-contents` is clean on it.
    pub fn synthetic(paths: usize, seed: u64, padding: usize) -> NixStore {
        let root = tempfile::Builder::new()
            .prefix("storegc-nix-")
            .tempdir()
            .expect("creating a temp dir")
            .keep();
        let mut base = root.clone();
        let mut left = padding;
        while left > 0 {
            let n = left.min(200);
            base.push("p".repeat(n));
            left -= n;
        }
        let base = base.join("s");
        run_ok(
            Command::new(storegc_synth_bin())
                .arg("--paths")
                .arg(paths.to_string())
                .arg("--seed")
                .arg(seed.to_string())
                .arg(&base),
        );
        let store = NixStore {
            store_dir: base.join("nix/store"),
            state_dir: base.join("nix/var/nix"),
            log_dir: base.join("nix/var/log/nix"),
            conf_dir: base.join("etc"),
            root,
            builder: OnceCell::new(),
            holder: OnceCell::new(),
            counter: std::cell::Cell::new(0),
            extra_env: std::cell::RefCell::new(Vec::new()),
            removed_env: std::cell::RefCell::new(Vec::new()),
        };
        for d in ["home/.config", "xdg", "tmp", "inputs"] {
            std::fs::create_dir_all(store.root.join(d)).expect("creating harness folders");
        }
        store
    }
}
