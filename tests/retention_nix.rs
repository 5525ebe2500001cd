//! Retention rules for a cache that serves a fleet, on real Nix stores,
//! each checked against an independent computation in this test and
//! against Nix's own `--print-dead`:
//! - `[auto-roots] keep-newest` with `group-by` (the link's folder, or a
//!   pattern with captures): the newest N `result` links of each CI
//!   repository stay whatever their age;
//! - `[protect] build-closures`: a listed toplevel keeps its deriver's
//!   closure and the valid outputs of every `.drv` in it.
//!
//! Random derivation graphs come from `tests/common` and are seeded; rerun
//! a seed with `STOREGC_RETENTION_SEED=<seed> cargo test --test retention_nix`.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::{run_ok, Graph, NixStore, Realised, Rng};
use serde_json::Value;

const DAY: i64 = 86_400;

fn seed(default: u64) -> u64 {
    std::env::var("STOREGC_RETENTION_SEED")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(default)
}

/// A fresh store with a seeded random graph (`nodes` nodes) whose
/// derivations are all built: the generator (for the test's further
/// draws), the store, the graph, the derivations' nodes and what Nix made.
fn built(seed: u64, nodes: usize) -> (Rng, NixStore, Graph, Vec<usize>, Realised) {
    eprintln!("retention_nix: seed {seed}");
    let mut rng = Rng::new(seed);
    let store = NixStore::new();
    let graph = Graph::random(&mut rng, nodes, "n");
    let build: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| graph.nodes[i].is_derivation())
        .collect();
    let real = store.realise_graph(&graph, &build);
    (rng, store, graph, build, real)
}

fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("clock")
        .as_secs() as i64
}

fn set_link_mtime(link: &Path, time: i64) {
    run_ok(
        Command::new("touch")
            .args(["-h", "-d"])
            .arg(format!("@{time}"))
            .arg(link),
    );
}

/// `storegc plan --policy FILE --format json`, which must succeed.
fn plan(store: &NixStore, policy: &Path, extra: &[&str]) -> Value {
    let mut args: Vec<OsString> = vec![
        "plan".into(),
        "--policy".into(),
        policy.into(),
        "--format".into(),
        "json".into(),
    ];
    args.extend(extra.iter().map(OsString::from));
    let out = store.storegc(&args).output().expect("running storegc");
    assert!(
        out.status.success(),
        "storegc plan failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("plan JSON")
}

fn deleted(plan: &Value) -> BTreeSet<String> {
    plan["delete"]
        .as_array()
        .expect("delete")
        .iter()
        .map(|d| d["path"].as_str().expect("path").to_string())
        .collect()
}

/// The outer links (`points_to`) of the plan's expired auto roots.
fn expired_links(plan: &Value) -> BTreeSet<String> {
    plan["expired_roots"]
        .as_array()
        .expect("expired_roots")
        .iter()
        .map(|e| e["points_to"].as_str().expect("points_to").to_string())
        .collect()
}

// ---------------------------------------------------------------------------
// keep-newest per group

/// A CI result link as made by `nix-build -o`.
struct Link {
    path: PathBuf,
    mtime: i64,
    /// (owner, repo) of the CI job.
    repo: (String, String),
}

/// What the policy must expire, computed here: the links under `ci` that
/// are not among the `keep` newest of their group and at least 14 days old.
fn expected_expired(
    links: &[Link],
    keep: usize,
    group: impl Fn(&Link) -> String,
    now: i64,
) -> BTreeSet<String> {
    let mut groups: BTreeMap<String, Vec<&Link>> = BTreeMap::new();
    for l in links {
        groups.entry(group(l)).or_default().push(l);
    }
    let mut out = BTreeSet::new();
    for members in groups.values_mut() {
        members.sort_by_key(|l| std::cmp::Reverse(l.mtime));
        for l in members.iter().skip(keep) {
            if now - l.mtime >= 14 * DAY {
                out.insert(l.path.display().to_string());
            }
        }
    }
    out
}

/// CI repositories with a random number of `result` links of random ages:
/// two repositories keep their links side by side (`result-<j>`), one in a
/// folder per job (`job-<j>/result`); a developer's old `result` outside
/// `ci/` is never matched. Plans with `keep-newest = 2` grouped by folder
/// and by an (owner)/(repo) pattern expire exactly what this test computes,
/// and once the expired links are gone the plan is exactly Nix's dead set.
#[test]
fn keep_newest_per_ci_repository() {
    if !common::nix_available("keep_newest_per_ci_repository") {
        return;
    }
    let seed = seed(20_261_202);
    let (mut rng, store, graph, build, real) = built(seed, 16);
    let ci = store.root().join("ci");
    let t0 = now();
    let mut links = Vec::new();
    let mut stamp = 0;
    for (owner, repo, per_job) in [
        ("alice", "web", false),
        ("alice", "api", false),
        ("bob", "tool", true),
    ] {
        // bob's jobs are all old: by folder each is its own group (kept),
        // by repository only the two newest stay.
        let (jobs, min_age) = if per_job {
            (rng.range(4, 6), 20)
        } else {
            (rng.range(3, 6), 0)
        };
        for j in 0..jobs {
            let dir = ci.join(owner).join(repo);
            let link = if per_job {
                dir.join(format!("job-{j}")).join("result")
            } else {
                dir.join(format!("result-{j}"))
            };
            let node = *rng.pick(&build).expect("a derivation");
            let outs = graph.nodes[node].output_names();
            let link = store.nix_build_link(&real, &graph, node, &outs[0], &link);
            stamp += 1;
            // Distinct times: ages from 0 to 50 days, a second apart.
            let mtime = t0 - (min_age + rng.below(30) as i64) * DAY - stamp;
            set_link_mtime(&link, mtime);
            links.push(Link {
                path: link,
                mtime,
                repo: (owner.into(), repo.into()),
            });
        }
    }
    let dev = store.root().join("home/dev/result");
    let node = build[0];
    let dev = store.nix_build_link(
        &real,
        &graph,
        node,
        &graph.nodes[node].output_names()[0],
        &dev,
    );
    set_link_mtime(&dev, t0 - 90 * DAY);

    let write_policy = |group_by: Option<&str>| {
        let file = store.root().join("policy.toml");
        let mut text = format!(
            "[auto-roots]\nolder-than = \"14d\"\nmatch = [\"{}/*/result*\"]\n",
            ci.display()
        );
        if let Some(g) = group_by {
            text.push_str(&format!("keep-newest = 2\ngroup-by = \"{g}\"\n"));
        }
        std::fs::write(&file, text).expect("writing the policy");
        file
    };
    let now = now();
    let folder = |l: &Link| l.path.parent().expect("parent").display().to_string();
    let repo = |l: &Link| format!("{}/{}", l.repo.0, l.repo.1);
    let by_age = expected_expired(&links, 0, folder, now);
    let by_folder = expected_expired(&links, 2, folder, now);
    let by_repo = expected_expired(&links, 2, repo, now);
    let pattern = format!("{}/(*)/(*)/**", ci.display());
    for (group_by, want) in [
        (None, &by_age),
        (Some("folder"), &by_folder),
        (Some(pattern.as_str()), &by_repo),
    ] {
        let p = plan(&store, &write_policy(group_by), &[]);
        assert_eq!(
            &expired_links(&p),
            want,
            "group-by {group_by:?} (seed {seed}): {}",
            p["expired_roots"]
        );
    }
    // The scenario shows something: keep-newest keeps old links, and
    // grouping by repository differs from grouping by folder.
    assert!(by_repo.len() < by_age.len(), "keep-newest kept nothing old");
    assert!(!by_repo.is_empty(), "nothing expired at all");
    assert!(by_folder.is_subset(&by_age) && by_repo != by_folder);

    // Nix agrees once the expired links are gone: the plan is exactly the
    // valid part of --print-dead (no [select] rule keeps anything).
    let p = plan(&store, &write_policy(Some(&pattern)), &[]);
    for l in &by_repo {
        std::fs::remove_file(l).expect("removing an expired link");
    }
    let dead = store.print_dead_valid();
    let planned = deleted(&p);
    assert!(
        planned == dead,
        "plan vs Nix's dead set once the expired links are gone:\nonly planned: {:?}\nonly dead: {:?}",
        planned.difference(&dead).collect::<Vec<_>>(),
        dead.difference(&planned).collect::<Vec<_>>()
    );
}

// ---------------------------------------------------------------------------
// build closures

/// The store database as this test reads it.
struct Db {
    paths: Vec<String>,
    index: HashMap<String, usize>,
    nar_size: Vec<u64>,
    references: Vec<Vec<usize>>,
    /// `ValidPaths.deriver`, when valid.
    deriver: Vec<Option<usize>>,
    /// `DerivationOutputs`: a `.drv`'s valid outputs.
    outputs: Vec<Vec<usize>>,
}

impl Db {
    fn read(store: &NixStore) -> Db {
        let conn = rusqlite::Connection::open_with_flags(
            store.db_path(),
            rusqlite::OpenFlags::SQLITE_OPEN_READ_ONLY,
        )
        .expect("db");
        let rows: Vec<(i64, String, Option<String>, i64)> = conn
            .prepare("SELECT id, path, deriver, narSize FROM ValidPaths ORDER BY path")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        let index: HashMap<String, usize> = (rows.iter().enumerate())
            .map(|(i, r)| (r.1.clone(), i))
            .collect();
        let by_id: HashMap<i64, usize> = rows.iter().enumerate().map(|(i, r)| (r.0, i)).collect();
        let n = rows.len();
        let mut references = vec![Vec::new(); n];
        let refs: Vec<(i64, i64)> = conn
            .prepare("SELECT referrer, reference FROM Refs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (a, b) in refs {
            if a != b {
                references[by_id[&a]].push(by_id[&b]);
            }
        }
        let mut outputs = vec![Vec::new(); n];
        let outs: Vec<(i64, String)> = conn
            .prepare("SELECT drv, path FROM DerivationOutputs")
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        for (drv, out) in outs {
            if let (Some(&d), Some(&o)) = (by_id.get(&drv), index.get(&out)) {
                outputs[d].push(o);
            }
        }
        Db {
            deriver: rows
                .iter()
                .map(|r| r.2.as_ref().and_then(|d| index.get(d).copied()))
                .collect(),
            nar_size: rows.iter().map(|r| r.3 as u64).collect(),
            paths: rows.into_iter().map(|r| r.1).collect(),
            index,
            references,
            outputs,
        }
    }

    /// Everything reachable from `seeds` along `edges`.
    fn reach(&self, edges: &[Vec<usize>], seeds: &[usize]) -> Vec<bool> {
        let mut seen = vec![false; self.paths.len()];
        let mut stack: Vec<usize> = Vec::new();
        for &s in seeds {
            if !seen[s] {
                seen[s] = true;
                stack.push(s);
            }
        }
        while let Some(u) = stack.pop() {
            for &v in &edges[u] {
                if !seen[v] {
                    seen[v] = true;
                    stack.push(v);
                }
            }
        }
        seen
    }

    /// Liveness edges with Nix's defaults (keep-derivations on): references
    /// and each output's valid deriver.
    fn live_edges(&self) -> Vec<Vec<usize>> {
        let mut e = self.references.clone();
        for (i, out) in e.iter_mut().enumerate() {
            out.extend(self.deriver[i]);
        }
        e
    }

    /// The build closure of `top`: its deriver's closure over references
    /// and the valid outputs of every `.drv` in it.
    fn build_closure(&self, top: usize) -> Vec<usize> {
        let Some(d) = self.deriver[top] else {
            return Vec::new();
        };
        let drvs = self.reach(&self.references, &[d]);
        let mut out: Vec<usize> = (0..self.paths.len()).filter(|&i| drvs[i]).collect();
        for (outputs, _) in self.outputs.iter().zip(&drvs).filter(|(_, &d)| d) {
            out.extend(outputs);
        }
        out
    }
}

/// A listed toplevel (a derivation output no root holds) with
/// `build-closures = true`: the plan keeps exactly its closure, its
/// deriver's closure, the valid outputs of every `.drv` there and what they
/// keep, the report counts what the rule alone kept, everything planned is
/// dead for Nix, and after apply every output the next build needs is
/// still valid.
#[test]
fn build_closures_of_a_listed_toplevel() {
    if !common::nix_available("build_closures_of_a_listed_toplevel") {
        return;
    }
    let seed = seed(20_261_203);
    let (mut rng, store, graph, build, real) = built(seed, 28);
    let db = Db::read(&store);
    // The toplevel: the built output with the largest deriver closure.
    let top = (build.iter())
        .flat_map(|&i| real.nodes[i].outputs.values())
        .filter_map(|p| db.index.get(p).copied())
        .max_by_key(|&t| (db.build_closure(t).len(), db.paths[t].clone()))
        .expect("a built output");
    let top_path = db.paths[top].clone();
    // One CI result elsewhere, rooted.
    let other = *rng.pick(&build).expect("a derivation");
    let link = store.root().join("ci/result");
    store.nix_build_link(
        &real,
        &graph,
        other,
        &graph.nodes[other].output_names()[0],
        &link,
    );
    let db = Db::read(&store);
    let top = db.index[&top_path];

    let dir = store.root().join("etc");
    std::fs::write(dir.join("hosts.txt"), format!("{top_path}\n")).expect("list");
    let policy = dir.join("storegc.toml");
    std::fs::write(
        &policy,
        "[protect]\nclosure-lists = [\"hosts.txt\"]\nbuild-closures = true\n",
    )
    .expect("policy");

    // The independent computation.
    let roots: Vec<usize> = (store.print_roots().iter())
        .map(|r| db.index[&r.target])
        .collect();
    let edges = db.live_edges();
    let mut seeds = roots.clone();
    seeds.push(top);
    let without = db.reach(&edges, &seeds);
    let closure = db.build_closure(top);
    seeds.extend(&closure);
    let keep = db.reach(&edges, &seeds);
    let n = db.paths.len();
    let want: BTreeSet<String> = (0..n)
        .filter(|&i| !keep[i])
        .map(|i| db.paths[i].clone())
        .collect();
    let by_rule: Vec<usize> = (0..n).filter(|&i| keep[i] && !without[i]).collect();
    let bytes: u64 = by_rule.iter().map(|&i| db.nar_size[i]).sum();

    let p = plan(&store, &policy, &[]);
    let planned = deleted(&p);
    assert!(
        planned == want,
        "seed {seed}: plan vs the build-closure semantics:\nonly planned: {:?}\nonly expected: {:?}",
        planned.difference(&want).collect::<Vec<_>>(),
        want.difference(&planned).collect::<Vec<_>>()
    );
    let kept = &p["kept"]["build_closures"];
    assert_eq!(
        (kept["paths"].as_u64(), kept["bytes"].as_u64()),
        (Some(by_rule.len() as u64), Some(bytes)),
        "kept.build_closures: {}",
        p["kept"]
    );
    assert!(!by_rule.is_empty(), "seed {seed}: the rule kept nothing");
    // The text report names the rule's row.
    let text = run_ok(&mut store.storegc(&[
        OsString::from("plan"),
        "--policy".into(),
        policy.clone().into(),
    ]));
    assert!(text.contains("by build closures"), "{text}");

    // Nix: what the rule keeps, Nix would delete; nothing planned is live.
    let dead = store.print_dead_valid();
    assert!(planned.is_subset(&dead), "planned but live for Nix");
    assert!(by_rule.iter().all(|&i| dead.contains(&db.paths[i])));

    // Apply: every output of every .drv in the deriver's closure stays.
    let plan_file = store.root().join("plan.json");
    run_ok(&mut store.storegc(&[
        OsString::from("plan"),
        "--policy".into(),
        policy.clone().into(),
        "--out".into(),
        plan_file.clone().into(),
    ]));
    run_ok(&mut store.storegc(&[OsString::from("apply"), plan_file.into()]));
    let after = store.valid_paths();
    let needed: BTreeSet<String> = closure.iter().map(|&i| db.paths[i].clone()).collect();
    assert!(
        needed.is_subset(&after),
        "apply lost part of the build closure"
    );
    let all: BTreeSet<String> = db.paths.iter().cloned().collect();
    let left: BTreeSet<String> = all.difference(&want).cloned().collect();
    assert_eq!(after, left, "apply deleted something else than the plan");
}

/// Apply re-evaluates build closures: the closure list rewritten between
/// plan and apply to name another toplevel keeps that toplevel's build
/// closure ("kept: protected now"), exactly what this test computes.
#[test]
fn apply_keeps_the_build_closure_of_a_toplevel_listed_after_the_plan() {
    if !common::nix_available("apply_keeps_the_build_closure_of_a_toplevel_listed_after_the_plan") {
        return;
    }
    let seed = seed(20_261_204);
    let (_, store, _, build, real) = built(seed, 28);
    let db = Db::read(&store);
    let outputs: Vec<usize> = (build.iter())
        .flat_map(|&i| real.nodes[i].outputs.values())
        .filter_map(|p| db.index.get(p).copied())
        .collect();
    let edges = db.live_edges();
    // Two toplevels: the first is listed when planning; the second, listed
    // before apply, has a build closure the plan deletes part of.
    let keep_of = |t: usize| {
        let mut seeds = db.build_closure(t);
        seeds.push(t);
        db.reach(&edges, &seeds)
    };
    let first = *outputs
        .iter()
        .max_by_key(|&&t| (db.build_closure(t).len(), db.paths[t].clone()))
        .expect("an output");
    let kept_first = keep_of(first);
    // What only the build closure of `t` keeps (not its own closure, not
    // the first's keep set).
    let extra = |t: usize| {
        let plain = db.reach(&edges, &[t]);
        let keep = keep_of(t);
        (0..db.paths.len())
            .filter(|&i| keep[i] && !plain[i] && !kept_first[i])
            .count()
    };
    let second = *outputs
        .iter()
        .filter(|&&t| !kept_first[t])
        .max_by_key(|&&t| (extra(t), db.paths[t].clone()))
        .expect("an output the first keeps nothing of");
    assert!(
        extra(second) > 0,
        "seed {seed}: no second toplevel with a build closure of its own"
    );

    let dir = store.root().join("etc");
    let list = dir.join("hosts.txt");
    std::fs::write(&list, format!("{}\n", db.paths[first])).expect("list");
    let policy = dir.join("storegc.toml");
    std::fs::write(
        &policy,
        "[protect]\nclosure-lists = [\"hosts.txt\"]\nbuild-closures = true\n",
    )
    .expect("policy");
    let plan_file = store.root().join("plan.json");
    run_ok(&mut store.storegc(&[
        OsString::from("plan"),
        "--policy".into(),
        policy.clone().into(),
        "--out".into(),
        plan_file.clone().into(),
    ]));
    let planned: Value =
        serde_json::from_slice(&std::fs::read(&plan_file).expect("plan")).expect("plan JSON");
    let planned = deleted(&planned);
    std::fs::write(&list, format!("{}\n", db.paths[second])).expect("list");
    let out = run_ok(&mut store.storegc(&[
        OsString::from("apply"),
        plan_file.into(),
        "--format".into(),
        "json".into(),
    ]));
    let report: Value = serde_json::from_str(&out).expect("apply JSON");
    let kept_now: BTreeSet<String> = report["kept_protected_now"]
        .as_array()
        .expect("kept_protected_now")
        .iter()
        .map(|v| v.as_str().expect("path").to_string())
        .collect();
    let kept_second = keep_of(second);
    let want: BTreeSet<String> = (0..db.paths.len())
        .filter(|&i| kept_second[i] && planned.contains(&db.paths[i]))
        .map(|i| db.paths[i].clone())
        .collect();
    assert!(
        !want.is_empty(),
        "seed {seed}: the second toplevel needs nothing planned"
    );
    let plain = db.reach(&edges, &[second]);
    assert!(
        want.iter().any(|p| !plain[db.index[p]]),
        "seed {seed}: listing the second protects all of it even without build-closures"
    );
    assert_eq!(kept_now, want, "seed {seed}: kept at apply time");
    let after = store.valid_paths();
    let needed: BTreeSet<String> = (0..db.paths.len())
        .filter(|&i| kept_second[i])
        .map(|i| db.paths[i].clone())
        .collect();
    assert!(
        needed.is_subset(&after),
        "apply deleted part of the new build closure"
    );
}
