//! `plan --metrics FILE` and `apply --metrics FILE` on a real Nix store in
//! a temporary folder: the file is Prometheus text as node_exporter's
//! textfile collector reads it (checked by a small parser of the
//! exposition format below, strict about what the collector refuses:
//! a family split in two, a series twice, TYPE after a sample, bad
//! names, bad escapes), and its values are the plan's and the report's.
//! A failed run writes its failure.

mod common;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;

use common::{nix_available, NixStore};

/// (metric name, labels sorted) -> value.
type Samples = BTreeMap<(String, Vec<(String, String)>), f64>;

fn is_name(s: &str, colon: bool) -> bool {
    let mut chars = s.chars();
    let ok_first = |c: char| c.is_ascii_alphabetic() || c == '_' || (colon && c == ':');
    chars.next().is_some_and(ok_first) && chars.all(|c| ok_first(c) || c.is_ascii_digit())
}

/// `a="x",b="y\"z"` -> pairs, unescaping `\\`, `\"` and `\n`.
fn parse_labels(text: &str) -> Result<Vec<(String, String)>, String> {
    let mut labels = Vec::new();
    let mut rest = text;
    while !rest.is_empty() {
        let (name, after) = rest.split_once("=\"").ok_or("label without =\"")?;
        if !is_name(name, false) || name.starts_with("__") {
            return Err(format!("bad label name {name:?}"));
        }
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => return Err(format!("bad escape {other:?}")),
                },
                Some((i, '"')) => break i,
                Some((_, '\n')) => return Err("newline in a label value".into()),
                Some((_, c)) => value.push(c),
                None => return Err("unterminated label value".into()),
            }
        };
        labels.push((name.to_string(), value));
        rest = &after[end + 1..];
        if let Some(r) = rest.strip_prefix(',') {
            rest = r;
        } else if !rest.is_empty() {
            return Err(format!("junk after a label: {rest:?}"));
        }
    }
    let mut names: Vec<&String> = labels.iter().map(|(n, _)| n).collect();
    names.sort();
    names.dedup();
    if names.len() != labels.len() {
        return Err("a label twice".into());
    }
    labels.sort();
    Ok(labels)
}

fn parse_value(v: &str) -> Result<f64, String> {
    match v {
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        "NaN" => Ok(f64::NAN),
        _ => v.parse().map_err(|_| format!("bad value {v:?}")),
    }
}

/// Parses the text exposition format, refusing what node_exporter's
/// textfile collector refuses.
fn parse_exposition(text: &str) -> Result<Samples, String> {
    if !text.is_empty() && !text.ends_with('\n') {
        return Err("no final newline".into());
    }
    let mut samples = Samples::new();
    let mut typed: BTreeMap<String, String> = BTreeMap::new();
    let mut helped: Vec<String> = Vec::new();
    let mut done: Vec<String> = Vec::new(); // families already closed
    let mut current: Option<String> = None;
    for (i, line) in text.lines().enumerate() {
        let at = |e: String| format!("line {}: {e}: {line:?}", i + 1);
        let family_starts = |name: &str, current: &mut Option<String>, done: &mut Vec<String>| {
            if current.as_deref() != Some(name) {
                if done.iter().any(|d| d == name) {
                    return Err(format!("family {name} split"));
                }
                if let Some(c) = current.take() {
                    done.push(c);
                }
                *current = Some(name.to_string());
            }
            Ok(())
        };
        if let Some(comment) = line.strip_prefix('#') {
            let mut parts = comment.trim_start().splitn(3, ' ');
            let (kind, name, rest) = (parts.next(), parts.next(), parts.next());
            match kind {
                Some("HELP") | Some("TYPE") => {
                    let name = name.ok_or_else(|| at("no metric name".into()))?;
                    if !is_name(name, true) {
                        return Err(at(format!("bad metric name {name:?}")));
                    }
                    family_starts(name, &mut current, &mut done).map_err(at)?;
                    if kind == Some("HELP") {
                        if helped.iter().any(|h| h == name) {
                            return Err(at("HELP twice".into()));
                        }
                        helped.push(name.to_string());
                    } else {
                        let t = rest.unwrap_or("");
                        if !["counter", "gauge", "histogram", "summary", "untyped"].contains(&t) {
                            return Err(at(format!("bad type {t:?}")));
                        }
                        if typed.insert(name.to_string(), t.to_string()).is_some() {
                            return Err(at("TYPE twice".into()));
                        }
                        if samples.keys().any(|(n, _)| n == name) {
                            return Err(at("TYPE after a sample".into()));
                        }
                    }
                }
                _ => {} // other comments are allowed
            }
            continue;
        }
        if line.trim().is_empty() {
            continue;
        }
        let (series, rest) = match line.find('{') {
            Some(_) => {
                let close = line.rfind('}').ok_or_else(|| at("no }".into()))?;
                (line[..close + 1].to_string(), &line[close + 1..])
            }
            None => {
                let sp = line.find(' ').ok_or_else(|| at("no value".into()))?;
                (line[..sp].to_string(), &line[sp..])
            }
        };
        let (name, labels) = match series.split_once('{') {
            Some((n, l)) => (n.to_string(), parse_labels(&l[..l.len() - 1]).map_err(at)?),
            None => (series.clone(), Vec::new()),
        };
        if !is_name(&name, true) {
            return Err(at(format!("bad metric name {name:?}")));
        }
        family_starts(&name, &mut current, &mut done).map_err(at)?;
        let mut fields = rest.split_whitespace();
        let value = parse_value(fields.next().ok_or_else(|| at("no value".into()))?).map_err(at)?;
        if let Some(ts) = fields.next() {
            ts.parse::<i64>().map_err(|_| at("bad timestamp".into()))?;
        }
        if fields.next().is_some() {
            return Err(at("junk after the value".into()));
        }
        if samples.insert((name, labels), value).is_some() {
            return Err(at("the same series twice".into()));
        }
    }
    Ok(samples)
}

#[test]
fn the_exposition_checker_refuses_what_the_collector_refuses() {
    let ok = "# HELP a_b Help \\\\ text.\n# TYPE a_b gauge\na_b{x=\"1\\\"2\",y=\"\"} 3\na_b{x=\"2\"} 1e3\nc 4 1700000000\n";
    let s = parse_exposition(ok).unwrap();
    assert_eq!(
        s[&(
            "a_b".into(),
            vec![("x".into(), "1\"2".into()), ("y".into(), "".into())]
        )],
        3.0
    );
    assert_eq!(s[&("a_b".into(), vec![("x".into(), "2".into())])], 1000.0);
    for bad in [
        "a 1\nb 2\na 3\n",                  // family split
        "a{x=\"1\"} 1\na{x=\"1\"} 2\n",     // series twice
        "a 1\n# TYPE a gauge\n",            // TYPE after a sample
        "# TYPE a gauge\n# TYPE a gauge\n", // TYPE twice
        "# TYPE a gaug\n",                  // bad type
        "1a 1\n",                           // bad name
        "a{x=\"\\t\"} 1\n",                 // bad escape
        "a{x=\"1\"} one\n",                 // bad value
        "a{x=\"1\",x=\"2\"} 1\n",           // label twice
        "a{x=1} 1\n",                       // unquoted label
        "a 1",                              // no final newline
    ] {
        assert!(parse_exposition(bad).is_err(), "accepted {bad:?}");
    }
}

fn storegc(store: &NixStore, args: &[&str]) -> Output {
    store.storegc(args).output().expect("running storegc")
}

fn metrics(file: &Path) -> Samples {
    let text = std::fs::read_to_string(file).unwrap();
    parse_exposition(&text).unwrap_or_else(|e| panic!("{}: {e}\n{text}", file.display()))
}

/// The value of `name` with the given labels besides `command` and
/// `policy` (which every sample carries).
fn value(s: &Samples, name: &str, command: &str, policy: &str, extra: &[(&str, &str)]) -> f64 {
    let mut labels: Vec<(String, String)> = [("command", command), ("policy", policy)]
        .iter()
        .chain(extra)
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    labels.sort();
    *s.get(&(name.to_string(), labels.clone()))
        .unwrap_or_else(|| panic!("no {name}{labels:?} in {s:#?}"))
}

/// Paths and bytes of a tally in the JSON plan; an absent one (the plan
/// leaves out empty `build_closures` and `window`) is zero.
fn tally(v: &serde_json::Value) -> (f64, f64) {
    let n = |k: &str| v.get(k).map_or(0.0, |x| x.as_u64().unwrap() as f64);
    (n("paths"), n("bytes"))
}

#[test]
fn plan_and_apply_metrics_are_prometheus_text_with_the_plans_values() {
    if !nix_available("plan_and_apply_metrics_are_prometheus_text_with_the_plans_values") {
        return;
    }
    let store = NixStore::new();
    let kept = store.add_text("kept", "kept");
    store.add_gcroot_link("kept", &kept);
    let garbage = store.add_text("garbage", &"g".repeat(3000));
    let referrer = store.add_symlink("referrer", &garbage);
    let source = store.add_text("x-source", "protected by name");
    let policy = store.root().join("policy.toml");
    std::fs::write(&policy, "[protect]\nnames = [\"*-source\"]\n").unwrap();
    let policy_label = policy.display().to_string();
    let dir = store.root().join("textfile");
    std::fs::create_dir(&dir).unwrap();
    let plan_prom = dir.join("storegc-plan.prom");
    let plan_file = store.root().join("plan.json");

    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as f64;
    let out = storegc(
        &store,
        &[
            "plan",
            "--policy",
            policy.to_str().unwrap(),
            "--format",
            "json",
            "--out",
            plan_file.to_str().unwrap(),
            "--metrics",
            plan_prom.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = metrics(&plan_prom);
    let v = |name: &str, extra: &[(&str, &str)]| value(&m, name, "plan", &policy_label, extra);
    assert_eq!(v("storegc_last_run_success", &[]), 1.0);
    assert_eq!(v("storegc_last_run_exit_code", &[]), 0.0);
    let started = v("storegc_last_run_timestamp_seconds", &[]);
    assert!(started >= before && started < before + 60.0, "{started}");
    assert!(v("storegc_last_run_duration_seconds", &[]) < 60.0);
    for (reason, key) in [
        ("unreachable", "unreachable"),
        ("expired-generation", "expired_generation"),
        ("expired-auto-root", "expired_auto_root"),
    ] {
        let (paths, bytes) = tally(&plan["by_reason"][key]);
        assert_eq!(v("storegc_planned_paths", &[("reason", reason)]), paths);
        assert_eq!(v("storegc_planned_bytes", &[("reason", reason)]), bytes);
    }
    assert_eq!(
        v("storegc_planned_paths", &[("reason", "unreachable")]),
        2.0
    );
    let mut store_paths = 0.0;
    let mut store_bytes = 0.0;
    for (protection, key) in [
        ("nix-roots", "nix_roots"),
        ("closure-lists", "closure_lists"),
        ("protected-paths", "protected_paths"),
        ("protected-names", "protected_names"),
        ("build-closures", "build_closures"),
        ("unselected", "unselected"),
        ("rollback-window", "window"),
        ("budget", "budget"),
    ] {
        let (paths, bytes) = tally(&plan["kept"][key]);
        assert_eq!(
            v("storegc_kept_paths", &[("protection", protection)]),
            paths
        );
        assert_eq!(
            v("storegc_kept_bytes", &[("protection", protection)]),
            bytes
        );
        store_paths += paths;
        store_bytes += bytes;
    }
    assert_eq!(
        v("storegc_kept_paths", &[("protection", "protected-names")]),
        1.0
    );
    store_paths += plan["totals"]["paths"].as_f64().unwrap();
    store_bytes += plan["totals"]["nar_bytes"].as_f64().unwrap();
    // Independently: every valid path Nix knows, and their narSize.
    let valid = store.nix_store(&["--query", "--size", &kept, &garbage, &referrer, &source]);
    let nar: f64 = valid
        .lines()
        .map(|l| l.trim().parse::<f64>().unwrap())
        .sum();
    assert_eq!(v("storegc_store_paths", &[]), store_paths);
    assert_eq!(v("storegc_store_paths", &[]), 4.0);
    assert_eq!(v("storegc_store_bytes", &[]), store_bytes);
    assert_eq!(v("storegc_store_bytes", &[]), nar);
    assert_eq!(v("storegc_plan_nothing_to_do", &[]), 0.0);
    assert!(
        v("storegc_filesystem_size_bytes", &[]) >= v("storegc_filesystem_available_bytes", &[])
    );
    // Only the .prom file is left in the folder (the temp file was renamed).
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    // A rollback window on its first run keeps every unrooted path, and
    // the metrics say how much.
    let window_policy = store.root().join("window.toml");
    std::fs::write(&window_policy, "[select]\ndead-for = \"7d\"\n").unwrap();
    let window_label = window_policy.display().to_string();
    let window_prom = dir.join("storegc-window-plan.prom");
    let out = storegc(
        &store,
        &[
            "plan",
            "--policy",
            window_policy.to_str().unwrap(),
            "--format",
            "json",
            "--metrics",
            window_prom.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let wplan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = metrics(&window_prom);
    let w = |name: &str, extra: &[(&str, &str)]| value(&m, name, "plan", &window_label, extra);
    let (paths, bytes) = tally(&wplan["kept"]["window"]);
    assert_eq!(paths, 3.0, "{wplan}");
    assert_eq!(
        w("storegc_kept_paths", &[("protection", "rollback-window")]),
        paths
    );
    assert_eq!(
        w("storegc_kept_bytes", &[("protection", "rollback-window")]),
        bytes
    );
    assert_eq!(w("storegc_rollback_window_first_run", &[]), 1.0);
    assert_eq!(
        w("storegc_rollback_window_tracked_paths", &[]),
        wplan["window"]["tracked_paths"].as_f64().unwrap()
    );
    std::fs::remove_file(&window_prom).unwrap();

    // apply: what it deleted, per the plan's reason, is the report's.
    let apply_prom = dir.join("storegc-apply.prom");
    let out = storegc(
        &store,
        &[
            "apply",
            plan_file.to_str().unwrap(),
            "--format",
            "json",
            "--metrics",
            apply_prom.to_str().unwrap(),
        ],
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let m = metrics(&apply_prom);
    let a = |name: &str, extra: &[(&str, &str)]| value(&m, name, "apply", &policy_label, extra);
    assert_eq!(a("storegc_last_run_success", &[]), 1.0);
    let deleted = report["deleted"].as_array().unwrap().len() as f64;
    assert_eq!(deleted, 2.0);
    assert_eq!(
        a("storegc_deleted_paths", &[("reason", "unreachable")]),
        deleted
    );
    assert_eq!(
        a("storegc_deleted_bytes", &[("reason", "unreachable")]),
        report["deleted_nar_bytes"].as_f64().unwrap()
    );
    assert_eq!(
        a("storegc_deleted_paths", &[("reason", "expired-auto-root")]),
        0.0
    );
    assert_eq!(a("storegc_failed_paths", &[]), 0.0);
    assert_eq!(a("storegc_errors", &[]), 0.0);
    assert_eq!(a("storegc_apply_dry_run", &[]), 0.0);
    assert!(!Path::new(&garbage).exists());

    // The two files together are what the collector reads: no series twice.
    let both = format!(
        "{}{}",
        std::fs::read_to_string(&plan_prom).unwrap(),
        std::fs::read_to_string(&apply_prom).unwrap()
    );
    let mut series: Vec<String> = both
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| l.rsplit_once(' ').unwrap().0.to_string())
        .collect();
    let n = series.len();
    series.sort();
    series.dedup();
    assert_eq!(series.len(), n, "a series in both files");

    // A failed run (a policy that does not parse) says so; a plan that
    // had nothing to do says that.
    std::fs::write(&policy, "[select]\nbogus = 1\n").unwrap();
    let out = storegc(
        &store,
        &[
            "plan",
            "--policy",
            policy.to_str().unwrap(),
            "--metrics",
            plan_prom.to_str().unwrap(),
        ],
    );
    assert_eq!(out.status.code(), Some(2));
    let m = metrics(&plan_prom);
    assert_eq!(
        value(&m, "storegc_last_run_success", "plan", &policy_label, &[]),
        0.0
    );
    assert_eq!(
        value(&m, "storegc_last_run_exit_code", "plan", &policy_label, &[]),
        2.0
    );
    assert!(!m.keys().any(|(n, _)| n == "storegc_store_paths"));
    let out = storegc(
        &store,
        &[
            "plan",
            "--only-if-available-below",
            "0%",
            "--metrics",
            plan_prom.to_str().unwrap(),
        ],
    );
    assert!(out.status.success());
    let m = metrics(&plan_prom);
    assert_eq!(
        value(&m, "storegc_plan_nothing_to_do", "plan", "none", &[]),
        1.0
    );
    assert_eq!(
        value(&m, "storegc_last_run_success", "plan", "none", &[]),
        1.0
    );

    // A folder that is not there: plan exits 2, named; apply (which may
    // have deleted by then) prints its report and exits 1.
    let out = storegc(&store, &["plan", "--metrics", "/nonexistent/storegc.prom"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with("storegc: /nonexistent/storegc.prom: cannot write metrics (")),
        "{stderr}"
    );
    // Without a policy the x-source path is deletable too: apply deletes
    // it, then cannot write its metrics.
    let out = storegc(&store, &["plan", "--out", plan_file.to_str().unwrap()]);
    assert!(out.status.success());
    let out = storegc(
        &store,
        &[
            "apply",
            plan_file.to_str().unwrap(),
            "--metrics",
            "/nonexistent/storegc.prom",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("\ndeleted: 1 paths"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("storegc: /nonexistent/storegc.prom: cannot write metrics ("),
        "{stderr}"
    );
}
