//! The deployment files under `nix/` and the commands that feed them:
//! `storegc completions` and `storegc man` from the real binary;
//! `nix/check.sh` (every .nix file parses and evaluates, the systemd units
//! pass `systemd-analyze verify`); the nix-cache02 example's policy as
//! storegc reads it; the module's options documented in the README; the
//! Forgejo workflow parses and agrees with the module on its paths; and
//! the nightly and preview scripts the units run, against a real Nix store
//! in a temporary folder.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use common::{nix_available, skip_note, storegc_bin, NixStore, REQUIRE_NIX_VAR};

fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(repo().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

fn storegc(args: &[&str]) -> Output {
    Command::new(storegc_bin())
        .args(args)
        .output()
        .expect("running storegc")
}

fn stdout(out: &Output) -> String {
    assert!(
        out.status.success(),
        "{}: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout.clone()).expect("UTF-8 output")
}

const COMMANDS: &[&str] = &[
    "plan",
    "roots",
    "apply",
    "repair",
    "demo",
    "explain",
    "policy",
    "completions",
    "man",
];

#[test]
fn bash_completion_names_the_binary_and_every_command() {
    let script = stdout(&storegc(&["completions", "bash"]));
    assert!(script.contains("storegc"));
    for c in COMMANDS {
        assert!(script.contains(c), "no {c} in the bash completion");
    }
    for shell in ["zsh", "fish"] {
        let script = stdout(&storegc(&["completions", shell]));
        assert!(
            script.contains("storegc") && script.contains("apply"),
            "{shell}"
        );
    }
    // An unknown shell is bad input.
    assert_eq!(storegc(&["completions", "tcsh"]).status.code(), Some(2));
}

#[test]
fn man_page_is_one_roff_page_with_every_command() {
    let page = stdout(&storegc(&["man"]));
    assert!(page.starts_with(".TH storegc 1"), "{}", &page[..60]);
    assert!(page.contains("storegc"));
    for c in COMMANDS {
        assert!(page.contains(&format!(".SS \"storegc {c}")), "no {c}");
    }
    assert!(page.contains(".SH \"EXIT STATUS\""));
}

/// Whether a missing tool may skip a test (prints the note) or must fail
/// it (`STOREGC_REQUIRE_NIX=1`, as CI sets).
fn skip_or_fail(note: &str) {
    let required = std::env::var(REQUIRE_NIX_VAR).is_ok_and(|v| !v.is_empty() && v != "0");
    if required {
        panic!("{note}, and {REQUIRE_NIX_VAR} is set: failing instead of skipping");
    }
    skip_note(note);
}

#[test]
fn check_sh_passes_and_the_example_policy_is_valid() {
    let tmp = tempfile::tempdir().unwrap();
    let eval_json = tmp.path().join("eval.json");
    let out = Command::new("bash")
        .arg(repo().join("nix/check.sh"))
        .env("STOREGC_BIN", storegc_bin())
        .env("STOREGC_EVAL_JSON", &eval_json)
        .output()
        .expect("running nix/check.sh");
    let log = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    match out.status.code() {
        Some(0) => {}
        Some(3) => skip_or_fail(&format!(
            "check_sh_passes: nix/check.sh could not run every check (install nix-bin and systemd; tests/run.sh does):\n{log}"
        )),
        _ => panic!("nix/check.sh failed ({}):\n{log}", out.status),
    }
    // With a nixpkgs tree the example is also evaluated by the real
    // <nixpkgs/nixos>; without one check.sh says it skipped that.
    assert!(
        log.contains("nix/check.sh: real <nixpkgs/nixos>: systemd-analyze verify: storegc")
            || log.contains("nix/check.sh: skipped: the example under the real <nixpkgs/nixos> (no nixpkgs tree"),
        "{log}"
    );
    // The units, the low-disk units and the preview path unit were among
    // those verified.
    if out.status.code() == Some(0) {
        let verified = log
            .lines()
            .find_map(|l| l.strip_prefix("nix/check.sh: systemd-analyze verify: "))
            .expect("check.sh names the units it verified");
        for unit in [
            "storegc.service",
            "storegc.timer",
            "storegc-low-disk.service",
            "storegc-low-disk.timer",
            "storegc-preview.service",
            "storegc-preview.path",
        ] {
            assert!(
                verified.split(' ').any(|u| u == unit),
                "{unit} not verified: {verified}"
            );
        }
    }
    if !eval_json.exists() {
        return;
    }
    let eval: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&eval_json).unwrap()).unwrap();

    // The options eval.nix found are the ones the README documents.
    let evaluated: Vec<String> = eval["options"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap().to_string())
        .collect();
    let mut declared = module_option_names();
    declared.sort();
    assert_eq!(
        evaluated, declared,
        "eval.nix and the module's text disagree"
    );

    // Regression: `closureListWriters = [ "gitea-runner-actions-native" ]`
    // made a second, empty unit, since NixOS runs runner instance
    // `actions-native` as `gitea-runner-actions\x2dnative`. The module
    // derives the unit from the instance name; systemd-escape says how.
    let names: Vec<String> = serde_json::from_value(eval["runnerNames"].clone()).unwrap();
    let units: Vec<String> = serde_json::from_value(eval["runnerUnits"].clone()).unwrap();
    // Several wrong option types were tried, and each was an error.
    let type_errors: Vec<Vec<String>> = serde_json::from_value(eval["typeErrors"].clone()).unwrap();
    assert!(type_errors.len() >= 10, "{type_errors:?}");
    for option in ["enable", "keepReports", "lowDisk", "startAt", "policy"] {
        assert!(
            type_errors.iter().any(|o| o.iter().any(|n| n == option)),
            "no wrong type of {option} tried: {type_errors:?}"
        );
    }
    let mut want: Vec<String> = names
        .iter()
        .map(|n| {
            let out = Command::new("systemd-escape")
                .args(["--path", n])
                .output()
                .expect("running systemd-escape");
            assert!(out.status.success(), "systemd-escape --path {n}");
            format!(
                "gitea-runner-{}",
                String::from_utf8(out.stdout).unwrap().trim()
            )
        })
        .collect();
    want.sort();
    assert_eq!(units, want, "runner units as the module names them");

    // The example's policy, rendered to TOML as pkgs.formats.toml would,
    // is a policy storegc accepts, with the closure list the workflow
    // writes.
    let policy: toml::Value = serde_json::from_value(eval["examplePolicy"].clone()).unwrap();
    let file = tmp.path().join("policy.toml");
    std::fs::write(&file, toml::to_string(&policy).unwrap()).unwrap();
    let text = stdout(&storegc(&["policy", "check", file.to_str().unwrap()]));
    assert!(
        text.contains(&workflow_env("CLOSURE_LIST")),
        "the example protects another list than the workflow writes:\n{text}"
    );
    // Regression: check called the policy valid, and the first plan failed
    // on the list the CI job had not written yet.
    assert!(
        text.contains(&format!(
            "closure list {} does not exist (yet)",
            workflow_env("CLOSURE_LIST")
        )),
        "policy check does not say the closure list is missing:\n{text}"
    );
}

/// A stand-in nixpkgs tree whose `nixos` renders the given units (and one
/// unit not of storegc's, which must be left out), for the part of
/// nix/check.sh that needs a real one. `__EXE__` in a unit's text becomes
/// a path in the evaluation's store, which check.sh must stub.
fn fake_nixpkgs(dir: &Path, units: &[(&str, &str)]) {
    std::fs::create_dir_all(dir.join("nixos")).unwrap();
    let mut attrs = String::from("    \"other.service\".text = \"broken\";\n");
    for (name, text) in units {
        let text = text.replace('\n', "\\n").replace("__EXE__", "${exe}");
        attrs.push_str(&format!("    \"{name}\".text = \"{text}\";\n"));
    }
    let nix = format!(
        r#"{{ configuration }}:
let
  names = builtins.attrNames units;
  units = {{
{attrs}  }};
  exe = "${{builtins.storeDir}}/0123456789abcdfghijklmnpqrsvwxyz-storegc-nightly/bin/storegc-nightly";
in
{{
  # The test's config must at least be a module file that exists.
  config.systemd.units = assert builtins.pathExists configuration; units;
  pkgs.lib = {{
    hasPrefix = p: s: builtins.substring 0 (builtins.stringLength p) s == p;
    mapAttrs = builtins.mapAttrs;
    filterAttrs = p: s: builtins.listToAttrs (map (n: {{ name = n; value = s.${{n}}; }}) (builtins.filter (n: p n s.${{n}}) names));
  }};
}}
"#
    );
    std::fs::write(dir.join("nixos/default.nix"), nix).unwrap();
}

/// nix/check.sh's real-nixpkgs part, run against a stand-in tree (there
/// is no nixpkgs here): the units `<nixpkgs/nixos>` renders are written
/// out, their store paths stubbed, and verified; a bad one fails the run.
#[test]
fn check_sh_verifies_the_units_a_nixpkgs_tree_renders() {
    if !nix_available("check_sh_verifies_the_units_a_nixpkgs_tree_renders") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let run = |tree: &Path| {
        let out = Command::new("bash")
            .arg(repo().join("nix/check.sh"))
            .env("STOREGC_BIN", storegc_bin())
            .env("STOREGC_NIXPKGS", tree)
            .output()
            .expect("running nix/check.sh");
        let log = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        (out.status.code(), log)
    };
    let good = tmp.path().join("good");
    fake_nixpkgs(
        &good,
        &[
            (
                "storegc-low-disk.service",
                "[Unit]\nDescription=x\n[Service]\nType=oneshot\nExecStart=__EXE__ --only-if-available-below 10%%\n",
            ),
            (
                "storegc-low-disk.timer",
                "[Unit]\nDescription=x\n[Timer]\nOnBootSec=5min\nOnUnitInactiveSec=5min\n",
            ),
        ],
    );
    let (code, log) = run(&good);
    if code == Some(3) {
        return skip_or_fail(&format!("check.sh could not run every check:\n{log}"));
    }
    assert_eq!(code, Some(0), "{log}");
    assert!(
        log.contains(
            "nix/check.sh: real <nixpkgs/nixos>: systemd-analyze verify: storegc-low-disk.service storegc-low-disk.timer\n"
        ),
        "{log}"
    );
    let bad = tmp.path().join("bad");
    fake_nixpkgs(
        &bad,
        &[(
            "storegc.service",
            "[Unit]\nDescription=x\n[Service]\nType=oneshot\nBogusKey=1\nExecStart=__EXE__\n",
        )],
    );
    let (code, log) = run(&bad);
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("Unknown key"), "{log}");
    assert!(
        log.contains("nix/check.sh: FAIL: the example under the real <nixpkgs/nixos>"),
        "{log}"
    );
    let (code, log) = run(&tmp.path().join("missing"));
    assert_eq!(code, Some(1), "{log}");
    assert!(log.contains("no nixos/ in the nixpkgs tree"), "{log}");
}

/// The names declared under `options.services.storegc` in nix/module.nix:
/// each `name = mkOption {` or `name = mkEnableOption ...` at the first
/// level of that attribute set, and `group.name` for those one level down
/// in a `group = {` (as `lowDisk`).
fn module_option_names() -> Vec<String> {
    let module = read("nix/module.nix");
    let start = module
        .find("options.services.storegc = {")
        .expect("options.services.storegc in nix/module.nix");
    let mut names = Vec::new();
    let mut group: Option<String> = None;
    for line in module[start..].lines().skip(1) {
        if line == "  };" {
            break;
        }
        if line == "    };" {
            group = None;
            continue;
        }
        // Four spaces: the first level inside `options.services.storegc`;
        // six: inside a group.
        let (indent, prefix) = match &group {
            Some(g) => ("      ", format!("{g}.")),
            None => ("    ", String::new()),
        };
        let Some(rest) = line.strip_prefix(indent) else {
            continue;
        };
        if rest.starts_with(' ') {
            continue;
        }
        if let Some((name, value)) = rest.split_once(" = ") {
            if value.starts_with("mkOption") || value.starts_with("mkEnableOption") {
                names.push(format!("{prefix}{name}"));
            } else if value == "{" && group.is_none() {
                group = Some(name.to_string());
            }
        }
    }
    assert!(names.len() >= 10, "found only {names:?} in nix/module.nix");
    names
}

/// The README's "## Deployment" section.
fn deployment_section() -> String {
    let readme = read("README.md");
    let start = readme
        .find("\n## Deployment\n")
        .expect("README has a Deployment section");
    let rest = &readme[start + 1..];
    let end = rest[3..].find("\n## ").map_or(rest.len(), |i| i + 3);
    rest[..end].to_string()
}

#[test]
fn every_module_option_is_documented_in_the_readme() {
    let section = deployment_section();
    for name in module_option_names() {
        assert!(
            section.contains(&format!("| `{name}` |")),
            "services.storegc.{name} is not in the README's Deployment table"
        );
    }
    // And the manual prune the issue asks for.
    assert!(section.contains(
        "storegc plan --policy /etc/storegc/low-disk.toml --until-free 50GiB --out p.json"
    ));
}

fn workflow() -> serde_yaml::Value {
    serde_yaml::from_str(&read("nix/forgejo/storegc-report.yaml"))
        .expect("nix/forgejo/storegc-report.yaml is valid YAML")
}

fn workflow_env(key: &str) -> String {
    workflow()["env"][key]
        .as_str()
        .unwrap_or_else(|| panic!("workflow env {key}"))
        .to_string()
}

#[test]
fn workflow_parses_and_agrees_with_the_module() {
    let wf = workflow();
    let job = &wf["jobs"]["report"];
    assert_eq!(job["runs-on"].as_str(), Some("native-nix"));
    // YAML 1.1 would read a bare `on` as a boolean; serde_yaml (1.2) and
    // Forgejo read the key "on".
    let triggers = &wf["on"];
    assert_eq!(triggers["push"]["branches"][0].as_str(), Some("master"));
    assert!(triggers.get("schedule").is_some());

    let steps = job["steps"].as_sequence().expect("steps");
    let runs: Vec<&str> = steps.iter().filter_map(|s| s["run"].as_str()).collect();
    let script = runs.join("\n");
    for needle in [
        "nix eval",
        "builtins.attrNames",
        "config.system.build.toplevel",
        "--print-out-paths",
        "mv -f \"$tmp\" \"$CLOSURE_LIST\"",
        "GITHUB_STEP_SUMMARY",
    ] {
        assert!(
            script.contains(needle),
            "the workflow does not run {needle}"
        );
    }

    // The list it writes is the one the example and the shipped nix-cache
    // policy protect; the preview it waits for is where the module writes.
    let list = workflow_env("CLOSURE_LIST");
    assert_eq!(list, "/var/lib/storegc/nixos-configurations.txt");
    assert!(read("nix/example-nix-cache02.nix").contains(&format!("closureLists = [ \"{list}\" ]")));
    assert!(read("policies/nix-cache.toml").contains(&format!("[\"{list}\"]")));
    let preview = workflow_env("PREVIEW");
    let module = read("nix/module.nix");
    assert!(module.contains("default = \"/var/log/storegc\";"));
    assert_eq!(preview, "/var/log/storegc/preview.md");
    assert!(read("nix/systemd/storegc-preview.path").contains(&format!("PathChanged={list}")));
}

/// The nightly script as the units run it, on a store in a temporary
/// folder.
fn nightly(store: &NixStore, policy: &Path, reports: &Path) -> Output {
    store
        .command("bash")
        .arg(repo().join("nix/storegc-nightly.sh"))
        .env("STOREGC", storegc_bin())
        // A container's pid 1 may be unreadable even to root; see
        // NixStore::storegc.
        .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
        .env("STOREGC_POLICY", policy)
        .env("STOREGC_REPORT_DIR", reports)
        .env("STOREGC_KEEP_REPORTS", "2")
        .env("STOREGC_MAX_PLAN_AGE", "10m")
        .env("STOREGC_METRICS_DIR", store.root().join("metrics"))
        .output()
        .expect("running storegc-nightly.sh")
}

/// The value of the sample of `metric` in `file` (the first with that
/// name; every sample carries `command` and `policy` labels).
fn metric(file: &Path, metric: &str) -> String {
    let text = std::fs::read_to_string(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    text.lines()
        .find(|l| l.starts_with(&format!("{metric}{{")))
        .and_then(|l| l.rsplit_once(' '))
        .map(|(_, v)| v.to_string())
        .unwrap_or_else(|| panic!("no {metric} in {text}"))
}

fn names(dir: &Path, prefix: &str) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

#[test]
fn nightly_script_plans_applies_and_keeps_the_newest_reports() {
    if !nix_available("nightly_script_plans_applies_and_keeps_the_newest_reports") {
        return;
    }
    let store = NixStore::new();
    let kept = store.add_text("kept", "kept");
    store.add_gcroot_link("kept", &kept);
    let garbage = store.add_text("garbage", "garbage");
    let reports = store.root().join("reports");
    std::fs::create_dir(&reports).unwrap();
    // An empty policy: exactly Nix's dead set.
    let policy = store.root().join("policy.toml");
    std::fs::write(&policy, "").unwrap();
    let metrics = store.root().join("metrics");
    std::fs::create_dir(&metrics).unwrap();

    let out = nightly(&store, &policy, &reports);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&garbage).exists(),
        "the unrooted path was not deleted"
    );
    assert!(Path::new(&kept).exists(), "a rooted path was deleted");
    let report_names = names(&reports, "report-");
    assert_eq!(report_names.len(), 1);
    assert_eq!(names(&reports, "plan-").len(), 1);
    let report = std::fs::read_to_string(reports.join(&report_names[0])).unwrap();
    assert!(report.starts_with("## storegc plan"), "{report}");
    assert!(report.contains(&garbage));
    assert!(
        report.contains("\n## Apply\n") && report.contains("deleted: 1 paths"),
        "{report}"
    );
    assert_eq!(
        std::fs::read_link(reports.join("latest.md")).unwrap(),
        PathBuf::from(&report_names[0])
    );
    // STOREGC_METRICS_DIR: both steps wrote their metrics, under the run's
    // name, with the policy as a label.
    let plan_prom = metrics.join("storegc-nightly-plan.prom");
    let apply_prom = metrics.join("storegc-nightly-apply.prom");
    assert_eq!(metric(&plan_prom, "storegc_last_run_success"), "1");
    assert!(std::fs::read_to_string(&plan_prom)
        .unwrap()
        .contains(&format!(
            "storegc_planned_paths{{command=\"plan\",policy=\"{}\",reason=\"unreachable\"}} 1\n",
            policy.display()
        )));
    assert_eq!(metric(&apply_prom, "storegc_last_run_success"), "1");
    assert!(std::fs::read_to_string(&apply_prom)
        .unwrap()
        .contains(&format!(
            "storegc_deleted_paths{{command=\"apply\",policy=\"{}\",reason=\"unreachable\"}} 1\n",
            policy.display()
        )));

    // Two more runs, a second apart (the names have seconds): the oldest
    // plan and report go.
    for _ in 0..2 {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let out = nightly(&store, &policy, &reports);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let now = names(&reports, "report-");
    assert_eq!(now.len(), 2, "{now:?}");
    assert!(!now.contains(&report_names[0]));
    assert_eq!(names(&reports, "plan-").len(), 2);
    assert_eq!(
        std::fs::read_link(reports.join("latest.md")).unwrap(),
        PathBuf::from(&now[1])
    );

    // A bad policy: storegc's exit 2, no new report, the old ones stay.
    std::fs::write(&policy, "[select]\nbogus = 1\n").unwrap();
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let out = nightly(&store, &policy, &reports);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(names(&reports, "report-"), now);
    assert_eq!(metric(&plan_prom, "storegc_last_run_success"), "0");
    assert_eq!(metric(&plan_prom, "storegc_last_run_exit_code"), "2");
}

/// The low-disk run as the units make it: the nightly script under its
/// own run name with `--only-if-available-below`. Above the threshold
/// nothing is planned, applied or written; below it the run plans and
/// applies like the nightly one, into files of its own name, and the
/// nightly run's files are not pruned by it.
#[test]
fn low_disk_run_acts_only_below_the_threshold_under_its_own_names() {
    if !nix_available("low_disk_run_acts_only_below_the_threshold_under_its_own_names") {
        return;
    }
    let store = NixStore::new();
    let garbage = store.add_text("garbage", "garbage");
    let reports = store.root().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let policy = store.root().join("low-disk.toml");
    std::fs::write(&policy, "").unwrap();
    std::fs::write(reports.join("report-20000101T000000Z.md"), "nightly").unwrap();
    let low_disk = |below: &str| {
        store
            .command("bash")
            .arg(repo().join("nix/storegc-nightly.sh"))
            .args(["--only-if-available-below", below])
            .env("STOREGC", storegc_bin())
            // A container's pid 1 may be unreadable even to root; see
            // NixStore::storegc.
            .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
            .env("STOREGC_POLICY", &policy)
            .env("STOREGC_REPORT_DIR", &reports)
            .env("STOREGC_KEEP_REPORTS", "1")
            .env("STOREGC_RUN_NAME", "low-disk")
            .output()
            .expect("running storegc-nightly.sh")
    };

    // 0% is never above what is available: nothing to do.
    let out = low_disk("0%");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(stderr.contains("nothing to do"), "{stderr}");
    assert!(Path::new(&garbage).exists(), "deleted with nothing to do");
    assert_eq!(
        names(&reports, ""),
        ["report-20000101T000000Z.md"],
        "files written with nothing to do"
    );

    // 100%: a filesystem in use always has less available than its size.
    let out = low_disk("100%");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !Path::new(&garbage).exists(),
        "the low-disk run deleted nothing"
    );
    let report = names(&reports, "low-disk-report-");
    assert_eq!(report.len(), 1);
    assert_eq!(names(&reports, "low-disk-plan-").len(), 1);
    assert_eq!(
        std::fs::read_link(reports.join("low-disk-latest.md")).unwrap(),
        PathBuf::from(&report[0])
    );
    assert!(
        reports.join("report-20000101T000000Z.md").exists(),
        "the low-disk run pruned a nightly report"
    );
    assert!(!reports.join("latest.md").exists());

    // A run name that would make odd file names is refused.
    let out = store
        .command("bash")
        .arg(repo().join("nix/storegc-nightly.sh"))
        .env("STOREGC", storegc_bin())
        // A container's pid 1 may be unreadable even to root; see
        // NixStore::storegc.
        .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
        .env("STOREGC_POLICY", &policy)
        .env("STOREGC_REPORT_DIR", &reports)
        .env("STOREGC_RUN_NAME", "../x")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn preview_script_plans_without_deleting_under_the_lists_hash() {
    if !nix_available("preview_script_plans_without_deleting_under_the_lists_hash") {
        return;
    }
    let store = NixStore::new();
    let system = store.add_text("system", "a host's system");
    let garbage = store.add_text("garbage", "garbage");
    let list = store.root().join("nixos-configurations.txt");
    std::fs::write(&list, format!("{system}  # host\n")).unwrap();
    let policy = store.root().join("policy.toml");
    std::fs::write(
        &policy,
        format!("[protect]\nclosure-lists = [\"{}\"]\n", list.display()),
    )
    .unwrap();
    let reports = store.root().join("reports");
    std::fs::create_dir(&reports).unwrap();
    let preview = |policy: &Path| {
        store
            .command("bash")
            .arg(repo().join("nix/storegc-preview.sh"))
            .arg(&list)
            .args(["--", "--threads", "1"])
            .env("STOREGC", storegc_bin())
            // A container's pid 1 may be unreadable even to root; see
            // NixStore::storegc.
            .env("STOREGC_ALLOW_INCOMPLETE_ROOTS", "1")
            .env("STOREGC_POLICY", policy)
            .env("STOREGC_REPORT_DIR", &reports)
            .output()
            .expect("running storegc-preview.sh")
    };

    let out = preview(&policy);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = std::fs::read_to_string(reports.join("preview.md")).unwrap();
    let sha = Command::new("sha256sum").arg(&list).output().unwrap();
    let sha = String::from_utf8(sha.stdout).unwrap();
    let sha = sha.split_whitespace().next().unwrap();
    assert!(text.starts_with("<!-- storegc preview"), "{text}");
    assert!(
        text.lines()
            .any(|l| l == format!("{sha}  {}", list.display())),
        "{text}"
    );
    assert!(
        text.contains(&garbage) && !text.contains(&format!("`{system}`")),
        "{text}"
    );
    assert!(
        Path::new(&garbage).exists(),
        "the preview deleted something"
    );
    assert_eq!(names(&reports, "preview"), ["preview.md"]);

    // storegc's error goes into the preview for the CI job to show.
    let bad = store.root().join("bad.toml");
    std::fs::write(&bad, "[select]\nbogus = 1\n").unwrap();
    let out = preview(&bad);
    assert_eq!(out.status.code(), Some(2));
    let text = std::fs::read_to_string(reports.join("preview.md")).unwrap();
    assert!(
        text.contains("storegc plan failed (exit status 2)") && text.contains("bogus"),
        "{text}"
    );
}
