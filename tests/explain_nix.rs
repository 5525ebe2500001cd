//! Real Nix holds `storegc explain` and `storegc roots --sizes` to what
//! they promise, on random stores built by real Nix (and one synthetic
//! store written by `storegc::synth`, which Nix accepts):
//!
//! - `explain --format json` of random valid paths: `live` exactly when
//!   `nix-store --gc --print-dead` does not list the path, else
//!   `deletable` because `unreachable`, with no chain. A live path's chain
//!   starts at the target of the root it names, as `--print-roots` lists
//!   it, ends at the path, and each step is an edge of the database read
//!   here with SQLite: a `Refs` row, the `deriver` column (keep-derivations)
//!   or a `DerivationOutputs` row (keep-outputs), the last two only when
//!   nix.conf enables them. It is also a shortest chain, by a search over
//!   that database from every root Nix lists.
//! - `roots --sizes --format json`: a removable root's exclusive size is
//!   what Nix calls newly dead once that root alone is gone (its link, or
//!   for an indirect root its `gcroots/auto` entry, moved away, then
//!   `--print-dead`, then put back), and its closure size the narSize sum
//!   of its target's closure in that database (which is `nix-store -qR`,
//!   with `--include-outputs` under keep-outputs, when keep-derivations is
//!   off). Each profile's exclusive size is what removing all of its
//!   generations frees.
//!
//! Runtime and temp roots cannot be removed by a test, so their sizes are
//! not checked; their chains are.
//!
//! Each scenario is seeded and prints its seed; the base seed comes from
//! the clock, so every run explores new stores. Rerun one with
//! `STOREGC_EXPLAIN_SEED=<seed> cargo test --test explain_nix random` (or
//! `synthetic`).
//! A failing scenario keeps its store and prints its path.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use common::{GcConf, Graph, Hold, Holder, NixStore, Rng};

/// Valid paths `explain` is asked about, per scenario and setting.
const EXPLAINED: usize = 14;

// ---------------------------------------------------------------------------
// A store under test

/// Where a store is and the environment that points Nix and storegc at it,
/// for a harness store and a synthetic one alike.
struct Target {
    state_dir: PathBuf,
    /// The folder everything lives in; commands run there.
    root: PathBuf,
    env: Vec<(String, OsString)>,
    /// `(keep-outputs, keep-derivations)` as Nix reads nix.conf.
    gc: (bool, bool),
}

impl Target {
    fn of_harness(store: &NixStore, conf: GcConf) -> Target {
        Target {
            state_dir: store.state_dir.clone(),
            root: store.root().to_path_buf(),
            env: store
                .env()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect(),
            gc: conf.effective(),
        }
    }

    /// `program` with this store's environment, the user's own Nix
    /// configuration hidden.
    fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut cmd = Command::new(program);
        cmd.current_dir(&self.root)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null());
        for v in [
            "NIX_CONFIG",
            "NIX_USER_CONF_FILES",
            "NIX_PATH",
            "NIX_DAEMON_SOCKET_PATH",
            "STOREGC_LOG",
        ] {
            cmd.env_remove(v);
        }
        cmd
    }

    fn nix_store(&self, args: &[&str]) -> String {
        common::run_ok(self.command("nix-store").args(args))
    }

    fn storegc(&self, args: &[&str]) -> String {
        common::run_ok(
            self.command(common::storegc_bin())
                .arg("--quiet")
                .args(args),
        )
    }

    fn storegc_json(&self, args: &[&str]) -> serde_json::Value {
        let out = self.storegc(args);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("storegc {args:?}: {e}\n{out}"))
    }

    /// `nix-store --gc --print-dead`, valid paths only.
    fn print_dead(&self, db: &Db) -> BTreeSet<String> {
        self.nix_store(&["--gc", "--print-dead"])
            .lines()
            .filter(|p| db.nar.contains_key(*p))
            .map(str::to_string)
            .collect()
    }

    /// `nix-store --gc --print-roots` as `(link, target)` pairs.
    fn print_roots(&self) -> BTreeSet<(String, String)> {
        self.nix_store(&["--gc", "--print-roots"])
            .lines()
            .filter(|l| !l.is_empty())
            .map(|l| {
                let (link, target) = l
                    .rsplit_once(" -> ")
                    .unwrap_or_else(|| panic!("odd --print-roots line: {l}"));
                (link.to_string(), target.to_string())
            })
            .collect()
    }
}

// ---------------------------------------------------------------------------
// The database, read independently of storegc

/// The three tables, by path.
struct Db {
    nar: HashMap<String, u64>,
    refs: BTreeSet<(String, String)>,
    deriver: HashMap<String, String>,
    /// `(drv, output)` from `DerivationOutputs`, valid or not.
    outputs: BTreeSet<(String, String)>,
}

impl Db {
    fn read(t: &Target) -> Db {
        let conn = rusqlite::Connection::open_with_flags(
            t.state_dir.join("db/db.sqlite"),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("opening the store database");
        let rows = |sql: &str| -> Vec<(String, Option<String>, Option<i64>)> {
            let mut q = conn.prepare(sql).expect("query");
            q.query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
                .expect("query")
                .collect::<Result<_, _>>()
                .expect("rows")
        };
        let mut nar = HashMap::new();
        let mut deriver = HashMap::new();
        for (path, d, size) in rows("SELECT path, deriver, narSize FROM ValidPaths") {
            nar.insert(path.clone(), size.unwrap_or(0) as u64);
            if let Some(d) = d.filter(|d| !d.is_empty()) {
                deriver.insert(path, d);
            }
        }
        let refs = rows(
            "SELECT a.path, b.path, NULL FROM Refs r JOIN ValidPaths a ON a.id = r.referrer \
             JOIN ValidPaths b ON b.id = r.reference",
        )
        .into_iter()
        .map(|(a, b, _)| (a, b.expect("reference")))
        .collect();
        let outputs = rows(
            "SELECT d.path, o.path, NULL FROM DerivationOutputs o JOIN ValidPaths d ON d.id = o.drv",
        )
        .into_iter()
        .map(|(d, o, _)| (d, o.expect("output")))
        .collect();
        Db {
            nar,
            refs,
            deriver,
            outputs,
        }
    }

    fn valid(&self, p: &str) -> bool {
        self.nar.contains_key(p)
    }

    /// Whether `a -> b` is an edge of kind `kind` under the settings.
    fn is_edge(&self, gc: (bool, bool), a: &str, b: &str, kind: &str) -> bool {
        let (keep_outputs, keep_derivations) = gc;
        self.valid(a)
            && self.valid(b)
            && match kind {
                "reference" => self.refs.contains(&(a.to_string(), b.to_string())),
                "keep-derivations" => {
                    keep_derivations && self.deriver.get(a).is_some_and(|d| d == b)
                }
                "keep-outputs" => {
                    keep_outputs && self.outputs.contains(&(a.to_string(), b.to_string()))
                }
                _ => false,
            }
    }

    /// Every edge out of `a` under the settings.
    fn successors(&self, gc: (bool, bool), a: &str) -> Vec<String> {
        let (keep_outputs, keep_derivations) = gc;
        let from = (a.to_string(), String::new());
        let mut out: Vec<String> = self
            .refs
            .range(from.clone()..)
            .take_while(|(x, _)| x == a)
            .map(|(_, b)| b.clone())
            .collect();
        if keep_derivations {
            out.extend(self.deriver.get(a).cloned());
        }
        if keep_outputs {
            out.extend(
                self.outputs
                    .range(from..)
                    .take_while(|(x, _)| x == a)
                    .map(|(_, b)| b.clone()),
            );
        }
        out.retain(|b| self.valid(b));
        out
    }

    /// Least number of edges from any of `sources` to each path reached.
    fn distances(&self, gc: (bool, bool), sources: &BTreeSet<String>) -> HashMap<String, usize> {
        let mut dist = HashMap::new();
        let mut queue = VecDeque::new();
        for s in sources.iter().filter(|s| self.valid(s)) {
            dist.insert(s.clone(), 0);
            queue.push_back(s.clone());
        }
        while let Some(u) = queue.pop_front() {
            let d = dist[&u];
            for v in self.successors(gc, &u) {
                if !dist.contains_key(&v) {
                    dist.insert(v.clone(), d + 1);
                    queue.push_back(v);
                }
            }
        }
        dist
    }

    /// The closure of `start`: every path it keeps alive, itself included.
    fn closure(&self, gc: (bool, bool), start: &str) -> BTreeSet<String> {
        let sources = BTreeSet::from([start.to_string()]);
        self.distances(gc, &sources).into_keys().collect()
    }

    /// The narSize sum of `paths`.
    fn bytes<'a>(&self, paths: impl IntoIterator<Item = &'a String>) -> u64 {
        paths.into_iter().map(|p| self.nar[p]).sum()
    }
}

// ---------------------------------------------------------------------------
// The checks

/// Problems found, with what the scenario did, for one panic at the end.
struct Report {
    what: String,
    problems: String,
}

impl Report {
    fn new(what: String) -> Report {
        Report {
            what,
            problems: String::new(),
        }
    }

    fn fail(&mut self, msg: impl AsRef<str>) {
        let _ = writeln!(self.problems, "  {}", msg.as_ref());
    }

    fn finish(self) {
        assert!(
            self.problems.is_empty(),
            "storegc disagrees with Nix ({}):\n{}",
            self.what,
            self.problems
        );
    }
}

/// `explain` on `sample` (valid paths) against print-dead, print-roots
/// and the database.
fn check_explain(t: &Target, db: &Db, sample: &[String], r: &mut Report) {
    let dead = t.print_dead(db);
    let roots = t.print_roots();
    let targets: BTreeSet<String> = roots.iter().map(|(_, p)| p.clone()).collect();
    let dist = db.distances(t.gc, &targets);
    // (dead, live, edges by kind), for the log.
    let mut seen = (0, 0, BTreeMap::<String, usize>::new());
    for path in sample {
        let e = t.storegc_json(&["explain", path, "--format", "json"]);
        let status = e["status"].as_str().unwrap_or("?");
        let chain = e["chain"].as_array().cloned().unwrap_or_default();
        let is_dead = dead.contains(path);
        if e["path"] != path.as_str() {
            r.fail(format!("{path}: explain names {}", e["path"]));
        }
        if is_dead {
            seen.0 += 1;
            if status != "deletable" || e["reason"] != "unreachable" || !chain.is_empty() {
                r.fail(format!(
                    "{path}: dead to Nix, explain says {status} ({}), chain of {}",
                    e["reason"],
                    chain.len()
                ));
            }
            continue;
        }
        if status != "live" {
            r.fail(format!(
                "{path}: live to Nix, explain says {status} ({})",
                e["reason"]
            ));
            continue;
        }
        let steps: Vec<(String, Option<String>)> = chain
            .iter()
            .map(|s| {
                (
                    s["path"].as_str().unwrap_or("").to_string(),
                    s["edge"].as_str().map(str::to_string),
                )
            })
            .collect();
        let Some(first) = steps.first() else {
            r.fail(format!("{path}: live with an empty chain"));
            continue;
        };
        let source = e["source"].as_str().unwrap_or("");
        if !roots.contains(&(source.to_string(), first.0.clone())) {
            r.fail(format!(
                "{path}: chain starts at {} from {source:?}, which --print-roots does not list",
                first.0
            ));
        }
        if first.1.is_some() {
            r.fail(format!("{path}: the first step has an edge {:?}", first.1));
        }
        if steps.last().map(|s| s.0.as_str()) != Some(path.as_str()) {
            r.fail(format!("{path}: the chain ends elsewhere: {steps:?}"));
        }
        seen.1 += 1;
        for w in steps.windows(2) {
            let (a, (b, kind)) = (&w[0].0, &w[1]);
            let kind = kind.as_deref().unwrap_or("none");
            *seen.2.entry(kind.to_string()).or_default() += 1;
            if !db.is_edge(t.gc, a, b, kind) {
                r.fail(format!(
                    "{path}: step {a} -> {b} ({kind}) is no such edge in the database"
                ));
            }
        }
        match dist.get(path) {
            Some(&d) if d + 1 == steps.len() => {}
            d => r.fail(format!(
                "{path}: chain of {} steps, the shortest from a root has {d:?} edges",
                steps.len()
            )),
        }
    }
    eprintln!(
        "explain_nix: explained {} dead and {} live paths, chain edges {:?}",
        seen.0, seen.1, seen.2
    );
}

/// The root entries `storegc roots --format json` lists for `link`: what
/// to move away to remove that root link alone (the link itself when it
/// is found directly, and every `gcroots` entry that leads to it).
fn removal_set(all_roots: &serde_json::Value, link: &str) -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    for r in all_roots["roots"].as_array().expect("roots") {
        if r["link"] != link {
            continue;
        }
        // One entry per link: found directly (any kind but indirect) it is
        // the link itself, and each entry pointing to it counts too.
        if r["kind"] != "indirect" {
            out.insert(PathBuf::from(link));
        }
        for via in r["via"].as_array().into_iter().flatten() {
            out.insert(PathBuf::from(via.as_str().expect("via")));
        }
    }
    out
}

/// Moves `links` aside (into `$T/moved`), runs `f`, and puts them back.
fn without<T>(t: &Target, links: &BTreeSet<PathBuf>, f: impl FnOnce() -> T) -> T {
    let aside = t.root.join("moved");
    std::fs::create_dir_all(&aside).expect("creating the aside folder");
    let moved: Vec<(PathBuf, PathBuf)> = links
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let to = aside.join(i.to_string());
            std::fs::rename(l, &to).unwrap_or_else(|e| panic!("moving {}: {e}", l.display()));
            (l.clone(), to)
        })
        .collect();
    let out = f();
    for (l, to) in moved {
        std::fs::rename(&to, &l).unwrap_or_else(|e| panic!("restoring {}: {e}", l.display()));
    }
    out
}

/// `roots --sizes --format json` against print-dead with each removable
/// root link (and each profile's generations) gone, and closures against
/// the database and `nix-store -qR`.
fn check_sizes(t: &Target, db: &Db, r: &mut Report) {
    let sizes = t.storegc_json(&["roots", "--sizes", "--format", "json"]);
    let all_roots = t.storegc_json(&["roots", "--format", "json"]);
    let dead = t.print_dead(db);
    let newly_dead = |links: &BTreeSet<PathBuf>| -> BTreeSet<String> {
        without(t, links, || t.print_dead(db))
            .difference(&dead)
            .cloned()
            .collect()
    };
    let size_of = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(u64::MAX);
    // (links checked, links that free something), for the log.
    let mut checked = (0, 0);
    for entry in sizes["roots"].as_array().expect("roots") {
        let link = entry["link"].as_str().expect("link");
        let target = entry["target"].as_str().expect("target");
        if !["gcroot", "profile", "indirect"].contains(&entry["kind"].as_str().unwrap_or("")) {
            continue;
        }
        let closure = db.closure(t.gc, target);
        if (
            size_of(entry, "closure_paths"),
            size_of(entry, "closure_bytes"),
        ) != (closure.len() as u64, db.bytes(&closure))
        {
            r.fail(format!(
                "{link}: closure {} paths, {} bytes; the database says {} paths, {} bytes",
                entry["closure_paths"],
                entry["closure_bytes"],
                closure.len(),
                db.bytes(&closure)
            ));
        }
        let freed = newly_dead(&removal_set(&all_roots, link));
        if (
            size_of(entry, "exclusive_paths"),
            size_of(entry, "exclusive_bytes"),
        ) != (freed.len() as u64, db.bytes(&freed))
        {
            r.fail(format!(
                "{link}: exclusive {} paths, {} bytes; removing it alone makes {} paths, {} bytes dead to Nix: {freed:?}",
                entry["exclusive_paths"],
                entry["exclusive_bytes"],
                freed.len(),
                db.bytes(&freed)
            ));
        }
        checked.0 += 1;
        checked.1 += usize::from(!freed.is_empty());
    }
    for p in sizes["profiles"].as_array().expect("profiles") {
        let profile = p["profile"].as_str().expect("profile");
        let mut links = BTreeSet::new();
        for g in p["generations"].as_array().expect("generations") {
            let link = format!("{profile}-{}-link", g["number"]);
            links.extend(removal_set(&all_roots, &link));
        }
        let freed = newly_dead(&links);
        let size = &p["size"];
        if (
            size_of(size, "exclusive_paths"),
            size_of(size, "exclusive_bytes"),
        ) != (freed.len() as u64, db.bytes(&freed))
        {
            r.fail(format!(
                "profile {profile}: exclusive {size}; removing its generations makes {} paths, {} bytes dead",
                freed.len(),
                db.bytes(&freed)
            ));
        }
    }
    // The database's closures are the ones Nix computes, where Nix's
    // command line can say so.
    let (keep_outputs, keep_derivations) = t.gc;
    if !keep_derivations {
        for entry in sizes["roots"].as_array().expect("roots").iter().take(4) {
            let target = entry["target"].as_str().expect("target");
            let mut args = vec!["-qR", target];
            if keep_outputs {
                args.push("--include-outputs");
            }
            let nix: BTreeSet<String> = t.nix_store(&args).lines().map(str::to_string).collect();
            let ours = db.closure(t.gc, target);
            if nix != ours {
                r.fail(format!(
                    "harness: the database closure of {target} is not nix-store {args:?}"
                ));
            }
        }
    }
    // Everything was put back as it was.
    if t.storegc_json(&["roots", "--format", "json"]) != all_roots {
        r.fail("the roots changed while links were moved away and back");
    }
    eprintln!(
        "explain_nix: sizes of {} root links checked, {} of them freeing something alone",
        checked.0, checked.1
    );
}

// ---------------------------------------------------------------------------
// Scenarios

fn base_seed() -> u64 {
    match std::env::var("STOREGC_EXPLAIN_SEED") {
        Ok(s) => s
            .trim()
            .parse()
            .expect("STOREGC_EXPLAIN_SEED must be a u64"),
        Err(_) => Rng::fresh_seed(),
    }
}

/// Store paths ordered by name, then hash: hashes depend on the temp
/// folder, names do not, so random picks replay under the same seed.
fn by_name(paths: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = paths.into_iter().collect();
    v.sort_by_cached_key(|p| {
        let base = p.rsplit('/').next().unwrap_or(p);
        (base.get(33..).unwrap_or(base).to_string(), p.clone())
    });
    v
}

fn is_dir(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

/// Up to `n` distinct valid paths, at random.
fn sample(rng: &mut Rng, valid: &[String], n: usize) -> Vec<String> {
    let mut v = valid.to_vec();
    rng.shuffle(&mut v);
    v.truncate(n);
    v
}

/// One random store built by Nix: a random graph, partly built, some
/// paths deleted again, roots of every removable kind (links, sub-path
/// links, regular files, `nix-build -o` and `--add-root` indirect links,
/// profiles with generations in and outside the state dir) and sometimes
/// a process holding a path; then every setting of keep-outputs and
/// keep-derivations in turn.
fn random_scenario(seed: u64) {
    eprintln!(
        "explain_nix: scenario seed {seed}: rerun with \
         STOREGC_EXPLAIN_SEED={seed} cargo test --test explain_nix random"
    );
    let mut rng = Rng::new(seed);
    let mut log: Vec<String> = Vec::new();
    let store = NixStore::new();
    log.push(format!("store {}", store.root().display()));
    let n = rng.range(12, 24);
    let graph = Graph::random(&mut rng, n, "n");
    let build: Vec<usize> = (0..n)
        .filter(|&i| graph.nodes[i].is_derivation())
        .filter(|_| rng.chance(0.7))
        .collect();
    let real = store.realise_graph(&graph, &build);
    log.push(format!("graph of {n} nodes, built {build:?}"));

    // Indirect roots made by Nix.
    let drvs: Vec<usize> = build.clone();
    for _ in 0..rng.range(1, 2) {
        let Some(&i) = rng.pick(&drvs) else { break };
        let outs = graph.nodes[i].output_names();
        let out = rng.pick(&outs).expect("an output").clone();
        let link = store
            .root()
            .join("results")
            .join(store.fresh_name("result"));
        let link = store.nix_build_link(&real, &graph, i, &out, &link);
        log.push(format!(
            "nix-build -A drvs.{}.{out} -o {}",
            graph.nodes[i].name,
            link.display()
        ));
    }
    // Some paths deleted again: outputs without their .drv and back.
    let mut candidates: Vec<String> = real.all_paths().into_iter().collect();
    rng.shuffle(&mut candidates);
    for p in candidates.into_iter().take(rng.below(4)) {
        let result = store.try_delete(&p).map_err(|_| "refused");
        log.push(format!("nix-store --delete {p}: {result:?}"));
    }
    let valid = by_name(
        real.all_paths()
            .into_iter()
            .filter(|p| Path::new(p).exists()),
    );
    let outputs: Vec<String> = valid
        .iter()
        .filter(|p| !p.ends_with(".drv"))
        .cloned()
        .collect();

    for _ in 0..rng.range(1, 3) {
        let p = rng.pick(&valid).expect("valid paths").clone();
        let rel = format!("mine/{}", store.fresh_name("direct"));
        store.add_gcroot_link(&rel, &p);
        log.push(format!("gcroots/{rel} -> {p}"));
    }
    if rng.chance(0.5) {
        let dirs: Vec<&String> = valid.iter().filter(|p| is_dir(p)).collect();
        if let Some(p) = rng.pick(&dirs) {
            let rel = store.fresh_name("subpath");
            store.add_gcroot_link(&rel, format!("{p}/sub/data"));
            log.push(format!("gcroots/{rel} -> {p}/sub/data"));
        }
    }
    if rng.chance(0.5) {
        let p = rng.pick(&valid).expect("valid").clone();
        let base = p.rsplit('/').next().expect("basename");
        store.add_gcroot_file(&format!("files/{base}"));
        log.push(format!("regular file gcroots/files/{base}"));
    }
    if rng.chance(0.6) {
        let p = rng.pick(&valid).expect("valid").clone();
        let link = store.root().join("links").join(store.fresh_name("added"));
        store.add_root_via_nix(&p, &link);
        log.push(format!("nix-store --add-root {} -r {p}", link.display()));
    }
    if !outputs.is_empty() {
        for k in 0..rng.range(1, 2) {
            let name = store.fresh_name("profile");
            let profile = if k == 0 {
                store.profiles_dir().join(&name)
            } else {
                store
                    .root()
                    .join("home/.local/state/nix/profiles")
                    .join(&name)
            };
            for _ in 0..rng.range(1, 3) {
                let p = rng.pick(&outputs).expect("outputs").clone();
                store.set_profile(&profile, &p);
                log.push(format!("nix-env -p {} --set {p}", profile.display()));
            }
        }
    }
    // A process holding a path (a runtime root: explained, not removed).
    let mut holders: Vec<Holder> = Vec::new();
    if rng.chance(0.4) {
        let dirs: Vec<&String> = valid.iter().filter(|p| is_dir(p)).collect();
        if let Some(d) = rng.pick(&dirs) {
            let h = store.spawn_holder(&[Hold::Cwd(PathBuf::from(d.as_str()))], &[], false);
            log.push(format!("holder pid {} with cwd {d}", h.pid()));
            holders.push(h);
        }
    }

    let mut confs = [(false, true), (false, false), (true, true), (true, false)];
    rng.shuffle(&mut confs);
    for (ko, kd) in confs.into_iter().take(2) {
        let conf = GcConf {
            keep_outputs: Some(ko),
            keep_derivations: Some(kd),
        };
        store.set_conf(conf);
        let t = Target::of_harness(&store, conf);
        let db = Db::read(&t);
        let valid = by_name(db.nar.keys().cloned());
        let picks = sample(&mut rng, &valid, EXPLAINED);
        let mut what = format!("seed {seed}, {conf}; scenario:");
        for l in &log {
            let _ = write!(what, "\n    {l}");
        }
        let mut report = Report::new(what);
        check_explain(&t, &db, &picks, &mut report);
        check_sizes(&t, &db, &mut report);
        report.finish();
    }
    drop(holders);
}

#[test]
fn random_real_stores() {
    if !common::nix_available("explain_nix") {
        return;
    }
    let base = base_seed();
    let cases = if std::env::var("STOREGC_EXPLAIN_SEED").is_ok() {
        1
    } else {
        3
    };
    for case in 0..cases {
        let seed = if case == 0 {
            base
        } else {
            Rng::new(base ^ case).next_u64()
        };
        random_scenario(seed);
    }
}

/// A synthetic store (a binary cache that is also a CI runner: profile
/// generations, `gcroots/auto` CI results, pinned paths, a stale auto
/// root, derivations whose outputs are not valid) under Nix's default
/// settings and under keep-outputs.
#[test]
fn synthetic_store() {
    if !common::nix_available("explain_nix") {
        return;
    }
    let seed = base_seed() % 1000;
    eprintln!(
        "explain_nix: synthetic store of seed {seed}: rerun with \
         STOREGC_EXPLAIN_SEED={seed} cargo test --test explain_nix synthetic"
    );
    let dir = tempfile::Builder::new()
        .prefix("storegc-explain-")
        .tempdir()
        .expect("temp dir");
    let spec = storegc::synth::SynthSpec {
        paths: 600,
        seed,
        generations: 3,
        ..Default::default()
    };
    let synth = storegc::synth::generate(dir.path(), &spec).expect("generating a store");
    let conf_file = synth.conf_dir.join("nix.conf");
    let base_conf = std::fs::read_to_string(&conf_file).expect("nix.conf");
    let home = synth.root.join("home");
    std::fs::create_dir_all(&home).expect("home");
    let mut env: Vec<(String, OsString)> = synth
        .env()
        .into_iter()
        .map(|(k, v)| (k, OsString::from(v)))
        .collect();
    for (k, v) in [
        ("HOME", home.clone()),
        ("XDG_CONFIG_HOME", home.join(".config")),
        ("XDG_CONFIG_DIRS", home.join("xdg")),
        ("XDG_CACHE_HOME", home.join(".cache")),
        ("XDG_DATA_HOME", home.join(".local/share")),
        ("XDG_STATE_HOME", home.join(".local/state")),
    ] {
        env.push((k.to_string(), v.into_os_string()));
    }
    let mut rng = Rng::new(seed);
    for (ko, kd) in [(false, true), (true, true)] {
        std::fs::write(
            &conf_file,
            format!("{base_conf}keep-outputs = {ko}\nkeep-derivations = {kd}\n"),
        )
        .expect("writing nix.conf");
        let t = Target {
            state_dir: synth.state_dir.clone(),
            root: synth.root.clone(),
            env: env.clone(),
            gc: (ko, kd),
        };
        let db = Db::read(&t);
        let valid = by_name(db.nar.keys().cloned());
        let picks = sample(&mut rng, &valid, EXPLAINED);
        let mut report = Report::new(format!(
            "synthetic store of seed {seed} in {}, keep-outputs = {ko}, keep-derivations = {kd}",
            synth.root.display()
        ));
        check_explain(&t, &db, &picks, &mut report);
        check_sizes(&t, &db, &mut report);
        if !report.problems.is_empty() {
            // Keep the store for a look.
            let kept = dir.keep();
            eprintln!("explain_nix: kept the store at {}", kept.display());
            report.finish();
            return;
        }
    }
}
