//! The Nix oracle: `storegc plan` without a policy promises to delete
//! exactly what `nix-store --gc --print-dead` calls dead, and `storegc
//! roots` to find exactly the roots `nix-store --gc --print-roots` finds.
//! This file holds storegc to that promise on real stores built by real
//! Nix: random graphs of real derivations (multi-output, directory
//! outputs, sources, fixed-output twins, deleted outputs) with random roots
//! of every kind (gcroots links, sub-path links, indirect and stale
//! indirect links, regular files, profiles and their generations, runtime
//! roots held by live processes, locked and stale temp roots) under every
//! keep-outputs / keep-derivations setting.
//!
//! Every scenario is seeded and prints its seed (the base seed comes from
//! the clock, so each run explores new ones); rerun one with
//! `STOREGC_ORACLE_SEED=<seed> cargo test --test nix_oracle random_graphs`.
//! `STOREGC_ORACLE_CASES=<n>` sets the scenarios per shard (four shards,
//! run side by side as separate tests); a failing scenario keeps its
//! store folder and prints its path, `STOREGC_KEEP_STORE=1` keeps all.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use common::{GcConf, Graph, Hold, Holder, NixStore, Realised, Rng};

fn cases_per_shard() -> u64 {
    std::env::var("STOREGC_ORACLE_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12)
}

fn base_seed() -> u64 {
    static SEED: OnceLock<u64> = OnceLock::new();
    *SEED.get_or_init(|| {
        let s = Rng::fresh_seed();
        eprintln!("nix_oracle: base seed {s}");
        s
    })
}

fn run_shard(shard: u64) {
    if !common::nix_available("nix_oracle") {
        return;
    }
    if let Ok(seed) = std::env::var("STOREGC_ORACLE_SEED") {
        let seed: u64 = seed
            .trim()
            .parse()
            .expect("STOREGC_ORACLE_SEED must be a u64");
        if shard == 0 {
            scenario(seed);
        }
        return;
    }
    let base = base_seed();
    for case in 0..cases_per_shard() {
        let seed = Rng::new(base ^ (shard << 48) ^ case).next_u64();
        scenario(seed);
    }
}

#[test]
fn random_graphs_shard_0() {
    run_shard(0);
}

#[test]
fn random_graphs_shard_1() {
    run_shard(1);
}

#[test]
fn random_graphs_shard_2() {
    run_shard(2);
}

#[test]
fn random_graphs_shard_3() {
    run_shard(3);
}

/// A random GC setting, spelled out or left to Nix's default.
fn random_conf(rng: &mut Rng) -> GcConf {
    let mut pick = || match rng.below(3) {
        0 => None,
        1 => Some(false),
        _ => Some(true),
    };
    GcConf {
        keep_outputs: pick(),
        keep_derivations: pick(),
    }
}

/// The other three effective settings, each spelled out or left as the
/// default at random.
fn other_confs(rng: &mut Rng, first: GcConf) -> Vec<GcConf> {
    let mut out = Vec::new();
    for (ko, kd) in [(false, false), (false, true), (true, false), (true, true)] {
        if (ko, kd) == first.effective() {
            continue;
        }
        let spell = |rng: &mut Rng, v: bool, default: bool| {
            if v == default && rng.chance(0.5) {
                None
            } else {
                Some(v)
            }
        };
        out.push(GcConf {
            keep_outputs: spell(rng, ko, false),
            keep_derivations: spell(rng, kd, true),
        });
    }
    rng.shuffle(&mut out);
    out
}

fn rerun_hint(seed: u64, rich: bool) -> String {
    if rich {
        "rerun: cargo test --test nix_oracle every_kind_of_root_at_once".to_string()
    } else {
        format!("rerun: STOREGC_ORACLE_SEED={seed} cargo test --test nix_oracle random_graphs")
    }
}

/// The running state of one scenario: the store, what was done (printed
/// when a check fails) and the processes holding roots.
struct Scenario {
    seed: u64,
    /// Adds every kind of root (for [`every_kind_of_root_at_once`]).
    rich: bool,
    rng: Rng,
    log: Vec<String>,
    /// Declared before the store, so they die before it is removed.
    holders: Vec<Holder>,
    store: NixStore,
}

impl Scenario {
    fn note(&mut self, s: impl Into<String>) {
        self.log.push(s.into());
    }

    /// Whether to add something: with probability `p`, always when rich.
    fn maybe(&mut self, p: f64) -> bool {
        self.rng.chance(p) || self.rich
    }

    /// How many to add: `0..n`, `n - 1` when rich.
    fn count(&mut self, n: usize) -> usize {
        let k = self.rng.below(n);
        if self.rich {
            n - 1
        } else {
            k
        }
    }

    fn path_base(p: &str) -> &str {
        Path::new(p)
            .file_name()
            .and_then(|n| n.to_str())
            .expect("store path basename")
    }

    /// A gcroots-relative name, sometimes nested.
    fn root_name(&mut self, what: &str) -> String {
        let n = self.store.fresh_name(what);
        match self.rng.below(3) {
            0 => n,
            1 => format!("mine/{n}"),
            _ => format!("deep/er/{n}"),
        }
    }
}

fn scenario(seed: u64) {
    run_scenario(seed, false);
}

/// One scenario with roots of every kind in it, so that a failure names
/// its cause plainly; the random scenarios then cover the combinations.
#[test]
fn every_kind_of_root_at_once() {
    if common::nix_available("every_kind_of_root_at_once") {
        run_scenario(20240601, true);
    }
}

fn run_scenario(seed: u64, rich: bool) {
    eprintln!(
        "nix_oracle: scenario seed {seed}: {}",
        rerun_hint(seed, rich)
    );
    let mut rng = Rng::new(seed);
    let conf = random_conf(&mut rng);
    let store = NixStore::with_conf(conf);
    let mut sc = Scenario {
        seed,
        rich,
        rng,
        store,
        log: vec![],
        holders: vec![],
    };
    sc.note(format!("store {}", sc.store.root().display()));

    // The graph, partly built.
    let n = sc.rng.range(10, 36);
    let graph = Graph::random(&mut sc.rng, n, "n");
    let build: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| graph.nodes[i].is_derivation())
        .filter(|_| sc.rng.chance(0.65))
        .collect();
    let real = sc.store.realise_graph(&graph, &build);
    sc.note(format!(
        "graph of {n} nodes in {}, built {:?}",
        real.expr.display(),
        build
            .iter()
            .map(|&i| &graph.nodes[i].name)
            .collect::<Vec<_>>()
    ));

    add_build_roots(&mut sc, &graph, &real);
    delete_some(&mut sc, &graph, &real);

    let valid_set = sc.store.valid_paths();
    let invalid: Vec<String> = by_name(
        real.all_paths()
            .into_iter()
            .filter(|p| !valid_set.contains(p)),
    );
    let valid = by_name(valid_set);
    add_link_roots(&mut sc, &valid, &invalid);
    add_profiles(&mut sc, &valid);
    add_runtime_roots(&mut sc, &valid);
    add_temp_roots(&mut sc, &valid, &invalid);
    if sc.maybe(0.3) {
        // An entry of the store dir that is no valid path.
        let junk = sc
            .store
            .store_dir
            .join("0000000000000000000000000000000j-junk");
        std::fs::write(&junk, "junk\n").expect("writing junk into the store dir");
        sc.note(format!("junk file {}", junk.display()));
    }

    check(&mut sc, conf);
    let others = other_confs(&mut sc.rng, conf);
    for c in others {
        sc.store.set_conf(c);
        check(&mut sc, c);
    }
}

/// `nix-build -o` links (indirect roots in gcroots/auto; they may build
/// more) and a stale one whose outer link is gone.
fn add_build_roots(sc: &mut Scenario, graph: &Graph, real: &Realised) {
    let drvs: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| graph.nodes[i].is_derivation())
        .collect();
    for k in 0..sc.count(3) {
        let Some(&i) = sc.rng.pick(&drvs) else { break };
        let outs = graph.nodes[i].output_names();
        let out = sc.rng.pick(&outs).expect("an output").clone();
        let link = sc
            .store
            .root()
            .join("results")
            .join(sc.store.fresh_name("result"));
        let link = sc.store.nix_build_link(real, graph, i, &out, &link);
        sc.note(format!(
            "nix-build -A drvs.{}.{out} -o {}",
            graph.nodes[i].name,
            link.display()
        ));
        if sc.rng.chance(0.3) || (sc.rich && k == 0) {
            std::fs::remove_file(&link).expect("removing a result link");
            sc.note(format!(
                "removed {} (stale gcroots/auto entry)",
                link.display()
            ));
        }
    }
}

/// Deletes a few unrooted outputs, `.drv` files and sources through Nix,
/// leaving `.drv` files whose outputs are gone and outputs whose deriver
/// is gone.
fn delete_some(sc: &mut Scenario, graph: &Graph, real: &Realised) {
    let mut candidates: Vec<String> = Vec::new();
    for (i, n) in real.nodes.iter().enumerate() {
        if graph.nodes[i].is_derivation() {
            candidates.extend(n.outputs.values().cloned());
            if sc.rng.chance(0.2) {
                candidates.extend(n.drv.iter().cloned());
            }
        } else if sc.rng.chance(0.2) {
            candidates.extend(n.outputs.values().cloned());
        }
    }
    sc.rng.shuffle(&mut candidates);
    let k = sc.rng.below(6);
    for p in candidates.into_iter().take(k) {
        match sc.store.try_delete(&p) {
            Ok(()) => sc.note(format!("nix-store --delete {p}: deleted")),
            Err(e) => {
                let why = e.lines().last().unwrap_or("").to_string();
                sc.note(format!("nix-store --delete {p}: refused ({why})"))
            }
        }
    }
}

/// Store paths ordered by name, then hash: hashes depend on the temp
/// folder, names do not, so random picks replay under the same seed.
fn by_name(paths: impl IntoIterator<Item = String>) -> Vec<String> {
    let mut v: Vec<String> = paths.into_iter().collect();
    v.sort_by_cached_key(|p| {
        let base = Scenario::path_base(p);
        let name = base.get(33..).unwrap_or(base).to_string();
        (name, p.clone())
    });
    v
}

fn is_dir(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_dir())
}

fn is_file(p: &str) -> bool {
    std::fs::symlink_metadata(p).is_ok_and(|m| m.is_file())
}

/// Roots under gcroots: direct links, links into sub-paths, links to
/// invalid and odd targets, regular files, indirect links made by Nix and
/// by hand (stale, to non-symlinks, two hops, relative), store paths that
/// are symlinks themselves.
fn add_link_roots(sc: &mut Scenario, valid: &[String], invalid: &[String]) {
    let store_dir = sc.store.store_dir.clone();
    let t = sc.store.root().to_path_buf();
    let dirs: Vec<String> = valid.iter().filter(|p| is_dir(p)).cloned().collect();
    let files: Vec<String> = valid.iter().filter(|p| is_file(p)).cloned().collect();

    for _ in 0..sc.count(4) {
        let p = sc.rng.pick(valid).expect("valid paths").clone();
        let rel = sc.root_name("direct");
        sc.store.add_gcroot_link(&rel, &p);
        sc.note(format!("gcroots/{rel} -> {p}"));
    }
    if sc.maybe(0.5) {
        if let Some(p) = sc.rng.pick(&dirs).cloned() {
            let sub = *sc
                .rng
                .pick(&["/sub/data", "/sub", "/top", "/bin/tool", "/no/such/file"])
                .expect("a sub-path");
            let rel = sc.root_name("subpath");
            sc.store.add_gcroot_link(&rel, format!("{p}{sub}"));
            sc.note(format!("gcroots/{rel} -> {p}{sub}"));
        }
        if let Some(p) = sc.rng.pick(&files).cloned() {
            let rel = sc.root_name("subpath");
            sc.store.add_gcroot_link(&rel, format!("{p}/nonexistent"));
            sc.note(format!("gcroots/{rel} -> {p}/nonexistent"));
        }
    }
    if sc.maybe(0.4) {
        if let Some(p) = sc.rng.pick(invalid).cloned() {
            let rel = sc.root_name("invalid");
            sc.store.add_gcroot_link(&rel, &p);
            sc.note(format!("gcroots/{rel} -> {p} (invalid)"));
        }
    }
    if sc.maybe(0.3) {
        // The store dir itself, a name that is no store path, and a path
        // that leaves its store path through `..`.
        let a = sc.rng.pick(valid).expect("valid").clone();
        let b = sc.rng.pick(valid).expect("valid").clone();
        let odd = [
            store_dir.display().to_string(),
            format!("{}/not-a-store-path", store_dir.display()),
            format!("{a}/../{}", Scenario::path_base(&b)),
        ];
        let target = sc.rng.pick(&odd).expect("odd").clone();
        let rel = sc.root_name("odd");
        sc.store.add_gcroot_link(&rel, &target);
        sc.note(format!("gcroots/{rel} -> {target}"));
    }
    if sc.maybe(0.4) {
        let mut names = vec!["notes.txt".to_string()];
        names.push(Scenario::path_base(sc.rng.pick(valid).expect("valid")).to_string());
        if let Some(p) = sc.rng.pick(invalid) {
            names.push(Scenario::path_base(p).to_string());
        }
        for name in names {
            if sc.maybe(0.7) {
                let rel = format!("files/{name}");
                sc.store.add_gcroot_file(&rel);
                sc.note(format!("regular file gcroots/{rel}"));
            }
        }
    }
    if sc.maybe(0.5) {
        let p = sc.rng.pick(valid).expect("valid").clone();
        let link = t.join("links").join(sc.store.fresh_name("added"));
        sc.store.add_root_via_nix(&p, &link);
        sc.note(format!("nix-store --add-root {} -r {p}", link.display()));
    }
    if sc.maybe(0.4) {
        let p = sc.rng.pick(valid).expect("valid").clone();
        let link = t.join("links").join(sc.store.fresh_name("stale"));
        sc.store.add_root_via_nix(&p, &link);
        std::fs::remove_file(&link).expect("removing an outer link");
        sc.note(format!(
            "stale indirect root: {} -> {p}, removed",
            link.display()
        ));
    }
    if sc.maybe(0.3) {
        // Indirect links to a regular file, a folder, nothing.
        let file = t.join("regular-file");
        std::fs::write(&file, "not a link\n").expect("writing a file");
        let targets = [file, t.join("home"), t.join("nowhere")];
        for target in targets {
            if sc.maybe(0.6) {
                let rel = if sc.rng.chance(0.5) {
                    format!("auto/{}", sc.store.fresh_name("odd"))
                } else {
                    sc.root_name("indirect")
                };
                sc.store.add_gcroot_link(&rel, &target);
                sc.note(format!("gcroots/{rel} -> {}", target.display()));
            }
        }
    }
    if sc.maybe(0.35) {
        // Two hops: gcroots/x -> $T/hop/a -> $T/hop/b -> store (not a root),
        // and one hop through a relative link (a root).
        let p = sc.rng.pick(valid).expect("valid").clone();
        let n = sc.store.fresh_name("hop");
        let a = t.join("hop").join(format!("{n}a"));
        let b = t.join("hop").join(format!("{n}b"));
        sc.store.symlink(&b, &p);
        sc.store.symlink(&a, &b);
        if sc.rng.chance(0.5) {
            sc.store.add_gcroot_link(&n, &a);
            sc.note(format!(
                "gcroots/{n} -> {} -> {} -> {p}",
                a.display(),
                b.display()
            ));
        } else {
            let rel = format!("../../../../hop/{n}b");
            sc.store.add_gcroot_link(&n, &rel);
            sc.note(format!("gcroots/{n} -> {rel} -> {p}"));
        }
    }
    if sc.maybe(0.3) {
        // A relative link into the store: Nix sees an indirect link whose
        // target is no symlink, unless the store path is one.
        let p = sc.rng.pick(valid).expect("valid").clone();
        let rel = format!("../../../store/{}", Scenario::path_base(&p));
        let name = sc.store.fresh_name("relstore");
        sc.store.add_gcroot_link(&name, &rel);
        sc.note(format!("gcroots/{name} -> {rel}"));
    }
    if sc.maybe(0.4) {
        // A store path that is a symlink, to a store path or elsewhere.
        let target = if sc.rng.chance(0.8) {
            sc.rng.pick(valid).expect("valid").clone()
        } else {
            t.join("regular-file").display().to_string()
        };
        let name = sc.store.fresh_name("symlink");
        let sym = sc.store.add_symlink(&name, &target);
        sc.note(format!("store symlink {sym} -> {target}"));
        let name = sc.store.fresh_name("tosym");
        if sc.rng.chance(0.5) {
            sc.store.add_gcroot_link(&name, &sym);
            sc.note(format!("gcroots/{name} -> {sym}"));
        } else {
            let rel = format!("../../../store/{}", Scenario::path_base(&sym));
            sc.store.add_gcroot_link(&name, &rel);
            sc.note(format!("gcroots/{name} -> {rel}"));
        }
    }
}

/// Profiles with generations, under profiles/, profiles/per-user/, and
/// outside the state dir (rooted through gcroots/auto).
fn add_profiles(sc: &mut Scenario, valid: &[String]) {
    let targets: Vec<String> = valid
        .iter()
        .filter(|p| !p.ends_with(".drv"))
        .cloned()
        .collect();
    if targets.is_empty() {
        return;
    }
    for _ in 0..sc.count(3) {
        let name = sc.store.fresh_name("profile");
        let profile: PathBuf = match sc.rng.below(3) {
            0 => sc.store.profiles_dir().join(&name),
            1 => sc.store.profiles_dir().join("per-user/root").join(&name),
            _ => sc
                .store
                .root()
                .join("home/.local/state/nix/profiles")
                .join(&name),
        };
        let generations = sc.rng.range(1, 4);
        for _ in 0..generations {
            let p = sc.rng.pick(&targets).expect("targets").clone();
            sc.store.set_profile(&profile, &p);
            sc.note(format!("nix-env -p {} --set {p}", profile.display()));
        }
        if generations > 1 && sc.maybe(0.4) {
            let result = sc.store.delete_generations(&profile, &[1]);
            sc.note(format!(
                "nix-env -p {} --delete-generations 1: {result:?}",
                profile.display()
            ));
        }
    }
}

/// Processes with a store path as cwd, open fd, mapping, executable or in
/// their environment.
fn add_runtime_roots(sc: &mut Scenario, valid: &[String]) {
    let dirs: Vec<String> = valid.iter().filter(|p| is_dir(p)).cloned().collect();
    let files: Vec<String> = valid.iter().filter(|p| is_file(p)).cloned().collect();
    if sc.maybe(0.6) {
        let mut holds = Vec::new();
        if let Some(d) = sc.rng.pick(&dirs) {
            if sc.maybe(0.6) {
                let cwd = if Path::new(d).join("sub").is_dir() && sc.rng.chance(0.5) {
                    format!("{d}/sub")
                } else {
                    d.clone()
                };
                holds.push(Hold::Cwd(cwd.into()));
            }
            if Path::new(d).join("top").is_file() && sc.maybe(0.4) {
                holds.push(Hold::Map(Path::new(d).join("top")));
            }
        }
        if let Some(f) = sc.rng.pick(&files) {
            if sc.maybe(0.6) {
                holds.push(Hold::Open(f.into()));
            }
        }
        if let Some(f) = sc.rng.pick(&files) {
            if sc.maybe(0.5) {
                holds.push(Hold::Map(f.into()));
            }
        }
        if !holds.is_empty() {
            let h = sc.store.spawn_holder(&holds, &[], false);
            sc.note(format!("runtime holder pid {}: {holds:?}", h.pid()));
            sc.holders.push(h);
        }
    }
    if sc.maybe(0.4) {
        let p = sc.rng.pick(valid).expect("valid").clone();
        // What follows the path decides whether the match is a store path.
        let suffix = *sc
            .rng
            .pick(&["", "/bin", ":/usr/bin", "=x", "?y", " more"])
            .expect("a suffix");
        let value = format!("prefix:{p}{suffix}");
        let env = vec![("STOREGC_TEST_REF".to_string(), value.clone())];
        let h = sc.store.spawn_holder(&[], &env, false);
        sc.note(format!(
            "environ holder pid {}: STOREGC_TEST_REF={value}",
            h.pid()
        ));
        sc.holders.push(h);
    }
    if sc.maybe(0.3) {
        let h = sc.store.spawn_holder(&[], &[], true);
        sc.note(format!(
            "holder pid {} runs from the store: {}",
            h.pid(),
            sc.store.holder_in_store()
        ));
        sc.holders.push(h);
    }
}

/// Locked temproots files (valid paths, invalid ones, a valid hash under
/// another name) and a stale one nobody locks.
fn add_temp_roots(sc: &mut Scenario, valid: &[String], invalid: &[String]) {
    if sc.maybe(0.6) {
        let mut paths = Vec::new();
        for _ in 0..sc.rng.range(1, 3) {
            paths.push(sc.rng.pick(valid).expect("valid").clone());
        }
        if sc.maybe(0.4) {
            if let Some(p) = sc.rng.pick(invalid) {
                paths.push(p.clone());
            }
        }
        if sc.maybe(0.3) {
            // Nix matches temp roots by hash part only.
            let p = sc.rng.pick(valid).expect("valid");
            let base = Scenario::path_base(p);
            let renamed = format!("{}/{}-renamed", sc.store.store_dir.display(), &base[..32]);
            paths.push(renamed);
        }
        let exclusive = sc.rng.chance(0.5);
        let h = sc.store.spawn_holder(
            &[Hold::TempRoots {
                paths: paths.clone(),
                exclusive,
            }],
            &[],
            false,
        );
        sc.note(format!(
            "temp roots held by pid {} (exclusive {exclusive}): {paths:?}",
            h.pid()
        ));
        sc.holders.push(h);
    }
    if sc.maybe(0.4) {
        let p = sc.rng.pick(valid).expect("valid").clone();
        // Above any pid_max, so never a live process.
        let pid = 5_000_000 + sc.rng.below(1000) as u32;
        let f = sc.store.add_stale_temp_roots(pid, std::slice::from_ref(&p));
        sc.note(format!("stale temp roots {}: {p}", f.display()));
    }
}

fn set_diff(label: &str, ours: &BTreeSet<String>, nix: &BTreeSet<String>) -> String {
    let mut s = String::new();
    for p in ours.difference(nix) {
        let _ = writeln!(s, "  {label}: only storegc: {p}");
    }
    for p in nix.difference(ours) {
        let _ = writeln!(s, "  {label}: only Nix:     {p}");
    }
    s
}

/// Runs storegc (first: Nix removes stale links and temproots files as it
/// scans) and then Nix, and compares.
fn check(sc: &mut Scenario, conf: GcConf) {
    let store = &sc.store;
    let before = store.state_snapshot();
    let plan = store.storegc_plan_paths();
    let roots = store.storegc_roots();
    let json = store.storegc_plan_json();
    let after = store.state_snapshot();

    let nix_roots = store.print_roots();
    let dead = store.print_dead_valid();

    let mut problems = String::new();
    // storegc opens the database read-only, so it never writes a page of
    // db.sqlite; like any reader of a WAL database that nobody has open, it
    // may leave SQLite's `db.sqlite-wal` and `-shm` beside it (Nix's next
    // command reuses them). Nothing else may change.
    let db_dir = store.state_dir.join("db");
    let written = before
        .ignoring_sqlite_index_in(&db_dir)
        .diff(&after.ignoring_sqlite_index_in(&db_dir));
    if !written.is_empty() {
        let _ = writeln!(problems, "storegc wrote to the state dir:\n{written}");
    }
    problems += &set_diff("dead", &plan, &dead);

    let ours: BTreeSet<String> = roots.iter().map(|r| r.target.clone()).collect();
    let theirs: BTreeSet<String> = nix_roots.iter().map(|r| r.target.clone()).collect();
    problems += &set_diff("root target", &ours, &theirs);
    if ours == theirs {
        // Same targets; also the same targets per kind of root.
        let category = |kind: &str| match kind {
            "runtime" => "runtime",
            "temp" => "temp",
            _ => "link",
        };
        let ours: BTreeSet<String> = roots
            .iter()
            .map(|r| format!("{} {}", category(&r.kind), r.target))
            .collect();
        let theirs: BTreeSet<String> = nix_roots
            .iter()
            .map(|r| format!("{} {}", r.category(), r.target))
            .collect();
        problems += &set_diff("(kind, root)", &ours, &theirs);
    }
    for r in &roots {
        if !["gcroot", "indirect", "profile", "runtime", "temp"].contains(&r.kind.as_str()) {
            let _ = writeln!(problems, "  unknown root kind: {r:?}");
        }
    }

    // The JSON plan says the same as the paths format.
    let delete = json["delete"].as_array().cloned().unwrap_or_default();
    let json_paths: BTreeSet<String> = delete
        .iter()
        .filter_map(|d| d["path"].as_str().map(str::to_string))
        .collect();
    problems += &set_diff("json delete vs paths", &json_paths, &plan);
    let nar: u64 = delete.iter().filter_map(|d| d["nar_size"].as_u64()).sum();
    if json["totals"]["paths"].as_u64() != Some(plan.len() as u64)
        || json["totals"]["nar_bytes"].as_u64() != Some(nar)
        || delete.len() != plan.len()
    {
        let _ = writeln!(
            problems,
            "  json totals {} disagree with {} deletions of {nar} bytes",
            json["totals"],
            delete.len()
        );
    }
    if json["store_dir"].as_str() != Some(&*store.store_dir.to_string_lossy())
        || json["state_dir"].as_str() != Some(&*store.state_dir.to_string_lossy())
    {
        let _ = writeln!(
            problems,
            "  json store_dir/state_dir: {} {}",
            json["store_dir"], json["state_dir"]
        );
    }

    if !problems.is_empty() {
        let mut msg = format!(
            "storegc disagrees with Nix (seed {}, {conf}):\n{problems}\nscenario:\n",
            sc.seed
        );
        for l in &sc.log {
            let _ = writeln!(msg, "  {l}");
        }
        let _ = writeln!(msg, "nix-store --gc --print-roots:");
        for r in &nix_roots {
            let _ = writeln!(msg, "  {} -> {}", r.link, r.target);
        }
        let _ = writeln!(msg, "storegc roots:");
        for r in &roots {
            let _ = writeln!(msg, "  {r:?}");
        }
        let _ = writeln!(msg, "{}", rerun_hint(sc.seed, sc.rich));
        panic!("{msg}");
    }
    let line = format!(
        "checked with {conf}: {} dead, {} roots",
        plan.len(),
        roots.len()
    );
    eprintln!("nix_oracle: seed {}: {line}", sc.seed);
    sc.log.push(line);
}

/// A small graph where both settings matter: `d3.drv` is rooted (its
/// outputs and its inputs' outputs live only under keep-outputs) and
/// `d4`'s output is rooted (its `.drv` lives only under keep-derivations).
fn settings_store() -> NixStore {
    use common::{Dep, Node, NodeKind, OutputSpec};
    let out = |name: &str, refs: Vec<Dep>, self_refs: &[&str]| OutputSpec {
        name: name.into(),
        dir: false,
        refs,
        self_refs: self_refs.iter().map(|s| s.to_string()).collect(),
    };
    let dep = |node: usize, output: Option<&str>| Dep {
        node,
        output: output.map(str::to_string),
        drv_file: false,
    };
    let drv = |outputs, inputs| NodeKind::Derivation {
        outputs,
        inputs,
        fixed: None,
        twin_of: None,
    };
    let graph = Graph {
        nodes: vec![
            Node {
                name: "s0".into(),
                kind: NodeKind::Text { refs: vec![] },
            },
            Node {
                name: "d1".into(),
                kind: drv(vec![out("out", vec![dep(0, None)], &[])], vec![]),
            },
            Node {
                name: "d2".into(),
                kind: drv(
                    vec![
                        out("out", vec![dep(1, Some("out"))], &["lib"]),
                        out("dev", vec![], &["dev"]),
                        out("lib", vec![], &[]),
                    ],
                    vec![],
                ),
            },
            Node {
                name: "d3".into(),
                kind: drv(
                    vec![out("out", vec![dep(2, Some("dev"))], &[])],
                    vec![dep(1, Some("out"))],
                ),
            },
            Node {
                name: "d4".into(),
                kind: drv(vec![out("out", vec![dep(0, None)], &[])], vec![]),
            },
        ],
    };
    let store = NixStore::new();
    let real = store.realise_graph(&graph, &[1, 2, 3, 4]);
    let d3_drv = real.nodes[3].drv.clone().expect("d3.drv");
    store.add_gcroot_link("d3-drv", d3_drv);
    store.add_gcroot_link("d4-out", &real.nodes[4].outputs["out"]);
    store
}

/// nix.conf the way people write it: `yes`/`no`/`1`/`0`, the old `gc-`
/// names, comments, tabs, includes, the last line winning, the user's
/// config files and `NIX_CONFIG`. Nix's reading of each is checked first
/// (so the case tests what it says), then storegc's.
#[test]
fn settings_spelled_every_way_nix_reads_them() {
    if !common::nix_available("settings_spelled_every_way_nix_reads_them") {
        return;
    }
    let store = settings_store();
    let t = store.root().to_path_buf();
    std::fs::write(t.join("etc/extra.conf"), "keep-outputs = true\n").expect("extra.conf");
    std::fs::create_dir_all(t.join("home/.config/nix")).expect("user conf dir");
    std::fs::write(t.join("user.conf"), "keep-derivations = false\n").expect("user.conf");
    let user_conf = t.join("user.conf").display().to_string();

    // The dead set under each effective (keep-outputs, keep-derivations).
    let mut reference = std::collections::BTreeMap::new();
    for ko in [false, true] {
        for kd in [false, true] {
            store.set_conf(GcConf {
                keep_outputs: Some(ko),
                keep_derivations: Some(kd),
            });
            reference.insert((ko, kd), store.print_dead_valid());
        }
    }
    assert_ne!(reference[&(false, true)], reference[&(true, true)]);
    assert_ne!(reference[&(false, true)], reference[&(false, false)]);

    /// nix.conf's text, extra environment, the user's nix.conf, and what
    /// Nix makes of them: (keep-outputs, keep-derivations).
    struct Case<'a> {
        conf: &'a str,
        env: Vec<(&'a str, &'a str)>,
        user: Option<&'a str>,
        nix_reads: (bool, bool),
    }
    let case = |conf, nix_reads| Case {
        conf,
        env: vec![],
        user: None,
        nix_reads,
    };
    let cases = vec![
        case("keep-outputs = yes\n", (true, true)),
        case("keep-outputs = 1\n", (true, true)),
        case("keep-derivations = no\n", (false, false)),
        case("keep-derivations = 0\n", (false, false)),
        case("gc-keep-outputs = true\n", (true, true)),
        case("gc-keep-derivations = false\n", (false, false)),
        case("keep-outputs = true # a comment\n", (true, true)),
        case("\tkeep-outputs\t=\ttrue  \n", (true, true)),
        case("keep-outputs = true\nkeep-outputs = false\n", (false, true)),
        case("include extra.conf\n", (true, true)),
        case(
            "!include no-such.conf\nkeep-derivations = false\n",
            (false, false),
        ),
        Case {
            env: vec![("NIX_CONFIG", "keep-outputs = true")],
            ..case("keep-outputs = false\n", (true, true))
        },
        Case {
            user: Some("keep-outputs = true\nkeep-derivations = false\n"),
            ..case("", (true, false))
        },
        Case {
            env: vec![("NIX_USER_CONF_FILES", user_conf.as_str())],
            ..case("keep-derivations = true\n", (false, false))
        },
    ];
    let mut problems = String::new();
    for Case {
        conf: text,
        env,
        user,
        nix_reads: expected,
    } in cases
    {
        store.set_conf_text(text);
        store.set_extra_env(&env);
        let user_file = t.join("home/.config/nix/nix.conf");
        match user {
            Some(u) => std::fs::write(&user_file, u).expect("user nix.conf"),
            None => {
                let _ = std::fs::remove_file(&user_file);
            }
        }
        let case = format!("nix.conf {text:?}, env {env:?}, user nix.conf {user:?}");
        let nix = store.print_dead_valid();
        assert_eq!(
            nix, reference[&expected],
            "the harness misreads Nix: {case} is not {expected:?} to Nix"
        );
        let out = store
            .storegc(&["--quiet", "plan", "--format", "paths"])
            .output()
            .expect("running storegc");
        if !out.status.success() {
            let _ = writeln!(
                problems,
                "  {case}: storegc failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end()
            );
            continue;
        }
        let ours: BTreeSet<String> = String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(str::to_string)
            .collect();
        if ours != nix {
            let _ = writeln!(
                problems,
                "  {case} (Nix reads {expected:?}):\n{}",
                set_diff("dead", &ours, &nix)
            );
        }
    }
    assert!(
        problems.is_empty(),
        "storegc reads nix.conf differently from Nix:\n{problems}"
    );
}

/// Holds an exclusive `flock` on `path` for as long as the file lives, as
/// the Nix process owning a temp-roots file does.
fn lock_file(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    let file = std::fs::File::open(path).expect("opening a temproots file");
    // SAFETY: flock on a file descriptor we own.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    assert_eq!(rc, 0, "locking {}", path.display());
    file
}

/// Temp-root files named as every Nix names them (`PID`, Nix 2.35.0's
/// `temproots-PID-N`, Lix's `PID.tmp-…`, a name no Nix writes), each locked
/// or stale: storegc keeps exactly the paths of the locked ones. Nix 2.8
/// aborts on names `stoi` cannot read, so the oracle sees the same files
/// renamed to plain pids (a rename keeps the lock, which is on the inode).
#[test]
fn temp_root_files_of_every_naming_locked_and_stale() {
    if !common::nix_available("temp_root_files_of_every_naming_locked_and_stale") {
        return;
    }
    let store = NixStore::new();
    let dir = store.temproots_dir();
    std::fs::create_dir_all(&dir).expect("creating temproots");
    let names = [
        "6000001",
        "temproots-6000002-0",
        "6000003.tmp-Ab12",
        "not-a-pid",
        "temproots-6000005-7",
        "6000006.tmp-x",
        "stale-other",
        "6000008",
    ];
    let mut locks = Vec::new();
    let mut held = BTreeSet::new();
    let mut files = Vec::new();
    for (i, name) in names.iter().enumerate() {
        let path = store.add_text(&format!("t{i}"), &format!("temp root {i}\n"));
        let file = dir.join(name);
        std::fs::write(&file, format!("{path}\0")).expect("writing a temproots file");
        // Every other file is held; the rest are stale.
        if i % 2 == 0 || i == 3 {
            locks.push(lock_file(&file));
            held.insert(path.clone());
        }
        files.push(file);
    }
    std::fs::write(dir.join(".hidden"), "").expect("writing a hidden file");

    let dead = store.storegc_plan_paths();
    for p in &held {
        assert!(
            !dead.contains(p),
            "{p} is in a locked temp-roots file, planned anyway"
        );
    }
    assert_eq!(dead.len(), names.len() - held.len(), "planned: {dead:?}");

    // The oracle, on plain names.
    std::fs::remove_file(dir.join(".hidden")).expect("removing the hidden file");
    for (i, file) in files.iter().enumerate() {
        std::fs::rename(file, dir.join(format!("{}", 6_100_000 + i)))
            .expect("renaming a temproots file");
    }
    assert_eq!(dead, store.print_dead_valid());
}

/// Regression: a generation of a profile under `profiles/` is found
/// directly, through the profile's own link and (Nix 2.8's `nix-env -p`)
/// through `gcroots/auto`; `storegc roots` listed it two or three times
/// where `--print-roots` lists it once. Now one root per link, with the
/// entries that reach it as `via`, and the plan counts roots the same way.
#[test]
fn a_generation_reached_several_ways_is_one_root() {
    if !common::nix_available("a_generation_reached_several_ways_is_one_root") {
        return;
    }
    let store = NixStore::new();
    let a = store.add_text("gen-a", "a\n");
    let b = store.add_text("gen-b", "b\n");
    let profile = store.profiles_dir().join("fleet");
    store.set_profile(&profile, &a);
    store.set_profile(&profile, &b);
    let home = store.root().join("home/u");
    std::fs::create_dir_all(&home).unwrap();
    store.set_profile(&home.join("prof"), &a);
    let result = home.join("result");
    store.symlink(&result, &b);
    store.add_gcroot_link("auto/result", &result);

    let roots = store.storegc_roots();
    let nix: BTreeSet<(String, String)> = store
        .print_roots()
        .into_iter()
        .map(|r| (r.link, r.target))
        .collect();
    let ours: Vec<(String, String)> = roots
        .iter()
        .map(|r| (r.link.clone(), r.target.clone()))
        .collect();
    assert_eq!(
        ours.iter().cloned().collect::<BTreeSet<_>>(),
        nix,
        "links and targets: {roots:#?}"
    );
    assert_eq!(ours.len(), nix.len(), "one line per link: {roots:#?}");
    let gen1 = profile.with_file_name("fleet-1-link");
    let gen1 = roots
        .iter()
        .find(|r| Path::new(&r.link) == gen1)
        .unwrap_or_else(|| panic!("no root for {}: {roots:#?}", gen1.display()));
    assert_eq!(gen1.kind, "profile", "{gen1:?}");
    let auto = store.gcroots_dir().join("auto/result");
    let result_root = roots
        .iter()
        .find(|r| Path::new(&r.link) == result)
        .expect("the result link");
    assert_eq!(result_root.kind, "indirect");
    assert_eq!(result_root.via, vec![auto.display().to_string()]);

    let text = common::run_ok(&mut store.storegc(&["--quiet", "plan", "--format", "text"]));
    let count = format!(
        "roots: {} (links as nix-store --gc --print-roots lists them)",
        nix.len()
    );
    assert!(text.contains(&count), "want '{count}' in:\n{text}");
    let listed = common::run_ok(&mut store.storegc(&["--quiet", "roots"]));
    assert_eq!(listed.lines().count(), nix.len(), "{listed}");
    assert!(
        listed.contains(&format!(
            "{} -> {b} (indirect, via {})",
            result.display(),
            auto.display()
        )),
        "{listed}"
    );
}
