//! storegc reads nix.conf as real Nix does: random arrangements of the
//! system nix.conf, included files (`include`, `!include`, relative paths,
//! missing ones), `NIX_CONFIG`, `NIX_USER_CONF_FILES` (several files,
//! empty), `XDG_CONFIG_HOME`/`XDG_CONFIG_DIRS` (set, empty), `HOME` (unset,
//! not owned by us) decide keep-outputs and keep-derivations. For each,
//! (a) the settings in `storegc plan --format json` equal
//! `nix show-config`'s, and Nix's "unknown setting" warnings are in the
//! plan's warnings, and (b) `storegc plan --format paths` equals the valid
//! part of `nix-store --gc --print-dead` on a small random store.
//!
//! Where storegc says Nix versions disagree (e.g. a `HOME` not owned by
//! us: Nix 2.8 reads it, 2.10+ do not), it must hold the keep-more value
//! (true) and the plan is not compared with the Nix on PATH.
//!
//! Runs with whatever Nix is on PATH (put another Nix's bin dir first to
//! check it). Seeds: `STOREGC_SETTINGS_SEED=<n>` replays one.

mod common;

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

use common::{Graph, NixStore, Rng};

const KEYS: [&str; 4] = [
    "keep-outputs",
    "gc-keep-outputs",
    "keep-derivations",
    "gc-keep-derivations",
];
const VALUES: [&str; 6] = ["true", "false", "yes", "no", "1", "0"];

/// A few random setting lines (some `extra-`, which Nix ignores).
fn lines(rng: &mut Rng) -> String {
    let mut s = String::new();
    for _ in 0..rng.below(3) {
        let key = rng.pick(&KEYS).unwrap();
        let extra = if rng.chance(0.2) { "extra-" } else { "" };
        let _ = writeln!(s, "{extra}{key} = {}", rng.pick(&VALUES).unwrap());
    }
    if rng.chance(0.2) {
        s.push_str("# a comment\nsandbox-fallback = false # trailing\n");
    }
    s
}

/// Writes `path` with random lines, and maybe includes of new files
/// beside it or in a subfolder (each with random lines), and a missing
/// `!include`. Returns a description.
fn write_conf(rng: &mut Rng, path: &Path, depth: u32) -> String {
    let dir = path.parent().unwrap();
    std::fs::create_dir_all(dir).unwrap();
    let mut text = lines(rng);
    let mut log = format!("{}:\n{text}", path.display());
    if depth < 2 && rng.chance(0.4) {
        let rel = if rng.chance(0.5) {
            format!("inc{depth}.conf")
        } else {
            format!("sub{depth}/inc.conf")
        };
        let bang = if rng.chance(0.5) { "!" } else { "" };
        let _ = writeln!(text, "{bang}include {rel}");
        log += &write_conf(rng, &dir.join(&rel), depth + 1);
        text += &lines(rng);
    }
    if rng.chance(0.2) {
        text.push_str("!include missing.conf\n");
    }
    let _ = writeln!(log, "(final text)\n{text}");
    std::fs::write(path, text).unwrap();
    log
}

/// One arrangement of the configuration on `store`; returns a log.
fn arrange(rng: &mut Rng, store: &NixStore, case: u32) -> String {
    let t = store.root().join(format!("case{case}"));
    let mut log = String::new();
    let etc_extra = {
        let f = store.conf_dir.join("extra.conf");
        log += &write_conf(rng, &f, 1);
        format!("{}include extra.conf\n{}", lines(rng), lines(rng))
    };
    store.set_conf_text(&etc_extra);
    let _ = writeln!(log, "nix.conf extra:\n{etc_extra}");
    let mut env: Vec<(String, String)> = vec![];
    let mut removed: Vec<&str> = vec![];
    match rng.below(6) {
        0 => {
            let n = rng.range(1, 4);
            let files: Vec<String> = (0..n)
                .map(|i| {
                    let f = t.join(format!("user{i}/nix.conf"));
                    if rng.chance(0.85) {
                        log += &write_conf(rng, &f, 0);
                    }
                    f.display().to_string()
                })
                .collect();
            env.push(("NIX_USER_CONF_FILES".into(), files.join(":")));
        }
        1 => {
            log += &write_conf(rng, &store.root().join("home/.config/nix/nix.conf"), 0);
            env.push(("NIX_USER_CONF_FILES".into(), String::new()));
        }
        2 => {
            let dirs: Vec<String> = (0..rng.below(3))
                .map(|i| t.join(format!("xdg{i}")).display().to_string())
                .collect();
            for d in &dirs {
                log += &write_conf(rng, &Path::new(d).join("nix/nix.conf"), 0);
            }
            log += &write_conf(rng, &t.join("cfg/nix/nix.conf"), 0);
            env.push(("XDG_CONFIG_DIRS".into(), dirs.join(":")));
            env.push((
                "XDG_CONFIG_HOME".into(),
                t.join("cfg").display().to_string(),
            ));
        }
        3 => {
            // HOME decides, owned by us.
            log += &write_conf(rng, &t.join("home/.config/nix/nix.conf"), 0);
            env.push(("HOME".into(), t.join("home").display().to_string()));
            removed.push("XDG_CONFIG_HOME");
        }
        4 => {
            // HOME not owned by us: Nix 2.8 reads it, 2.10+ use passwd's.
            let home = t.join("alien");
            log += &write_conf(rng, &home.join(".config/nix/nix.conf"), 0);
            let uid = std::fs::metadata("/proc/self").unwrap().uid();
            if uid == 0 {
                std::os::unix::fs::chown(&home, Some(4242), None).unwrap();
            }
            env.push(("HOME".into(), home.display().to_string()));
            removed.push("XDG_CONFIG_HOME");
        }
        _ => {
            // No HOME, no XDG_CONFIG_HOME: the passwd home (not written to).
            removed.extend(["HOME", "XDG_CONFIG_HOME"]);
            env.push(("XDG_CONFIG_DIRS".into(), String::new()));
        }
    }
    if rng.chance(0.5) {
        env.push(("NIX_CONFIG".into(), lines(rng)));
    }
    let _ = writeln!(log, "env {env:?}, removed {removed:?}");
    let pairs: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    store.set_extra_env(&pairs);
    store.set_env_removed(&removed);
    log
}

/// `nix show-config`'s keep-outputs and keep-derivations, and its
/// warnings.
fn nix_settings(store: &NixStore) -> ((bool, bool), BTreeSet<String>) {
    let out = store.try_run(
        "nix",
        &[
            "--extra-experimental-features",
            "nix-command",
            "show-config",
        ],
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "nix show-config failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let get = |k: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{k} = ")))
            .unwrap_or_else(|| panic!("no {k} in nix show-config"))
            == "true"
    };
    let warnings = String::from_utf8_lossy(&out.stderr)
        .lines()
        .filter_map(|l| l.strip_prefix("warning: "))
        .filter(|w| w.starts_with("unknown setting"))
        .map(str::to_string)
        .collect();
    ((get("keep-outputs"), get("keep-derivations")), warnings)
}

fn run_seed(seed: u64) {
    eprintln!("settings_nix: seed {seed} (STOREGC_SETTINGS_SEED={seed} replays it)");
    let mut rng = Rng::new(seed);
    let store = NixStore::new();
    let graph = Graph::random(&mut rng, 14, "n");
    let build: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| graph.nodes[i].is_derivation() && rng.chance(0.7))
        .collect();
    let real = store.realise_graph(&graph, &build);
    for (i, n) in real.nodes.iter().enumerate() {
        if rng.chance(0.2) {
            if let Some(o) = n.outputs.values().next() {
                store.add_gcroot_link(&format!("r/out{i}"), o);
            }
        }
        if rng.chance(0.2) {
            if let Some(d) = &n.drv {
                store.add_gcroot_link(&format!("r/drv{i}"), d);
            }
        }
    }
    for case in 0..6 {
        let log = arrange(&mut rng, &store, case);
        check(&store, &log, seed, case);
    }
}

fn check(store: &NixStore, log: &str, seed: u64, case: u32) {
    let ctx = format!("seed {seed} case {case}\n{log}");
    let ((nix_ko, nix_kd), nix_warn) = nix_settings(store);
    let plan = store.storegc_plan_json();
    let s = &plan["settings"];
    let (ko, kd) = (
        s["keep_outputs"].as_bool().unwrap(),
        s["keep_derivations"].as_bool().unwrap(),
    );
    let warnings: Vec<String> = plan["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|w| w.as_str().unwrap().to_string())
        .collect();
    let disagree = |k: &str| {
        warnings
            .iter()
            .any(|w| w.contains(&format!("disagree on {k} ")))
    };
    for (name, ours, nix) in [
        ("keep-outputs", ko, nix_ko),
        ("keep-derivations", kd, nix_kd),
    ] {
        if disagree(name) {
            assert!(
                ours,
                "{name}: versions disagree, storegc must keep more\n{ctx}"
            );
        } else {
            assert_eq!(ours, nix, "{name}: storegc vs nix show-config\n{ctx}");
        }
    }
    for w in &nix_warn {
        assert!(
            warnings.contains(w),
            "Nix warns '{w}', the plan does not: {warnings:?}\n{ctx}"
        );
    }
    if !disagree("keep-outputs") && !disagree("keep-derivations") {
        assert_eq!(
            store.storegc_plan_paths(),
            store.print_dead_valid(),
            "plan vs --print-dead\n{ctx}"
        );
    }
}

#[test]
fn random_arrangements_match_nix() {
    if !common::nix_available("settings_nix") {
        return;
    }
    if let Ok(s) = std::env::var("STOREGC_SETTINGS_SEED") {
        run_seed(
            s.trim()
                .parse()
                .expect("STOREGC_SETTINGS_SEED must be a u64"),
        );
        return;
    }
    for seed in [1, 2, 3, Rng::fresh_seed()] {
        run_seed(seed);
    }
}

/// Regression: `extra-keep-derivations = false` is an unknown setting to
/// Nix (ignored, with a warning); storegc applied it.
#[test]
fn extra_keep_derivations_is_ignored_as_by_nix() {
    if !common::nix_available("settings_nix") {
        return;
    }
    let store = NixStore::new();
    let mut rng = Rng::new(7);
    let graph = Graph::random(&mut rng, 10, "x");
    let build: Vec<usize> = (0..graph.nodes.len())
        .filter(|&i| graph.nodes[i].is_derivation())
        .collect();
    let real = store.realise_graph(&graph, &build);
    for (i, n) in real.nodes.iter().enumerate() {
        if let (Some(_), Some(o)) = (&n.drv, n.outputs.values().next()) {
            store.add_gcroot_link(&format!("r/{i}"), o);
        }
    }
    store.set_extra_env(&[("NIX_CONFIG", "extra-keep-derivations = false")]);
    let ((_, nix_kd), nix_warn) = nix_settings(&store);
    assert!(nix_kd);
    assert!(
        nix_warn.contains("unknown setting 'extra-keep-derivations'"),
        "{nix_warn:?}"
    );
    check(&store, "NIX_CONFIG=extra-keep-derivations = false", 7, 0);
    let plan = store.storegc_plan_json();
    assert_eq!(plan["settings"]["keep_derivations"], true);
}

/// A `HOME` not owned by us: Nix 2.8 reads its nix.conf, 2.10+ do not;
/// storegc keeps more and says so.
#[test]
fn unowned_home_keeps_more_with_a_warning() {
    if !common::nix_available("settings_nix") {
        return;
    }
    if std::fs::metadata("/proc/self").unwrap().uid() != 0 {
        common::skip_note("unowned_home_keeps_more_with_a_warning: needs root to chown");
        return;
    }
    let store = NixStore::new();
    let home = store.root().join("alien");
    std::fs::create_dir_all(home.join(".config/nix")).unwrap();
    std::fs::write(home.join(".config/nix/nix.conf"), "keep-outputs = true\n").unwrap();
    std::os::unix::fs::chown(&home, Some(4242), None).unwrap();
    let h = home.display().to_string();
    store.set_extra_env(&[("HOME", &h)]);
    store.set_env_removed(&["XDG_CONFIG_HOME"]);
    let ((nix_ko, _), _) = nix_settings(&store);
    let plan = store.storegc_plan_json();
    assert_eq!(plan["settings"]["keep_outputs"], true);
    let warnings = plan["warnings"].to_string();
    assert!(
        warnings.contains("Nix versions disagree on keep-outputs (Nix 2.8-2.9: true;"),
        "{warnings}"
    );
    eprintln!("unowned HOME: the Nix on PATH reads keep-outputs = {nix_ko}");
}
