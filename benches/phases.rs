//! Criterion benchmarks of each phase of `storegc plan` on a generated
//! store: database load (one connection and two), root scan, graph build,
//! liveness (one thread and rayon), policy evaluation, dominators. The
//! end-to-end comparison against Nix and sqlite3 is benches/compare.sh.
//!
//! `STOREGC_BENCH_PATHS` sets the store size (default 100,000; 2,000 when
//! `cargo test` runs the benches once as a smoke test).

use std::path::PathBuf;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use storegc::db::{self, db_path};
use storegc::graph::{live_set_parallel, live_set_sequential, Graph};
use storegc::load::{load, LoadOptions};
use storegc::policy::{self, parse_policy, Policy};
use storegc::roots::{find_roots, RootSources};
use storegc::settings::{GcSettings, Settings};
use storegc::store_path::StoreDir;
use storegc::synth::{generate, SynthSpec};

const NOW: i64 = 1_800_000_000;

fn store() -> (tempfile::TempDir, Settings) {
    // `cargo test --all-targets` runs benches once without `--bench`, as a
    // smoke test: a small store is enough there.
    let benching = std::env::args().any(|a| a == "--bench");
    let paths = std::env::var("STOREGC_BENCH_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 100_000 } else { 2_000 });
    let dir = tempfile::tempdir().expect("temp dir");
    let spec = SynthSpec {
        paths,
        now: NOW,
        write_files: false,
        ..SynthSpec::default()
    };
    let st = generate(&dir.path().join("s"), &spec).expect("generate");
    let settings = Settings {
        store_dir: StoreDir::new(st.store_dir.display().to_string()),
        state_dir: st.state_dir.clone(),
        gc: GcSettings::default(),
        conf_files: vec![],
        ca_derivations: false,
        warnings: vec![],
    };
    (dir, settings)
}

fn phases(c: &mut Criterion) {
    let (_dir, s) = store();
    let t = Duration::from_secs(5);
    let mut g = c.benchmark_group("phases");
    g.sample_size(10);

    g.bench_function("database, one connection", |b| {
        b.iter(|| {
            let conn = db::open(&s.state_dir, t).unwrap();
            db::read_snapshot_from(&conn, &db_path(&s.state_dir), &s.store_dir, false).unwrap()
        })
    });
    g.bench_function("database, two connections", |b| {
        b.iter(|| db::read_snapshot_parallel(&s.state_dir, &s.store_dir, t, false).unwrap())
    });
    let sources = RootSources {
        store_dir: s.store_dir.clone(),
        state_dir: s.state_dir.clone(),
        proc_dir: Some(PathBuf::from("/proc")),
    };
    g.bench_function("roots (gcroots, profiles, /proc, temp)", |b| {
        b.iter(|| find_roots(&sources).unwrap().roots)
    });

    let state = load(&s, &LoadOptions::default()).unwrap();
    g.bench_function("graph build", |b| {
        b.iter(|| Graph::build(&state.snap, s.gc))
    });
    let roots = state.root_paths();
    g.bench_function("liveness, one thread", |b| {
        b.iter(|| live_set_sequential(&state.graph, &roots))
    });
    g.bench_function("liveness, rayon", |b| {
        b.iter(|| live_set_parallel(&state.graph, &roots))
    });

    let evaluate = |p: &Policy| {
        let inputs =
            policy::gather(p, &state.roots, &state.snap, &s.store_dir, &s.state_dir).unwrap();
        policy::evaluate(
            &state.snap,
            &state.graph,
            &state.roots,
            &state.root_ids,
            p,
            &inputs,
            NOW,
            None,
        )
    };
    let none = Policy::default();
    g.bench_function("policy: none", |b| b.iter(|| evaluate(&none)));
    let with = parse_policy(
        "[select]\norigin = \"local\"\nolder-than = \"14d\"\nexclude-names = [\"*-source\"]\n\
         [[generations]]\nprofile = \"profiles/system\"\nkeep-newest = 2\n\
         [budget]\nmax-freed = \"1GiB\"\norder = \"largest-first\"\n",
        std::path::Path::new("bench.toml"),
    )
    .unwrap();
    g.bench_function("policy: select, generations, budget", |b| {
        b.iter(|| evaluate(&with))
    });
    g.bench_function("dominators (roots --sizes)", |b| {
        b.iter(|| {
            storegc::dominators::root_sizes(
                &state.graph,
                &state.snap.nar_size,
                &state.roots,
                &state.root_ids,
            )
        })
    });
    g.finish();
}

criterion_group!(benches, phases);
criterion_main!(benches);
