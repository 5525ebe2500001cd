//! Prometheus metrics of one `plan` or `apply` run, for dashboards and
//! alerts: written as a text file in the exposition format that
//! node_exporter's textfile collector reads (`--metrics FILE`, the module's
//! `metricsDir`), atomically, so the collector never reads half a file.
//!
//! Building the text is pure (the run's facts in, text out); only
//! [`write`] touches the file system. Every sample carries the labels
//! `command` (`plan` or `apply`) and `policy` (the policy file, absolute,
//! or `none`), so the files of several runs (the nightly one, the low-disk
//! one) never give node_exporter the same series twice. A metric is a
//! [`Desc`] constant (name and help) and one [`Metrics::gauge`] call:
//! families are grouped, `# HELP`/`# TYPE` written once each, and
//! everything sorted by name and labels.

use std::collections::BTreeMap;
use std::fmt::{Display, Write as _};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::apply::ApplyReport;
use crate::exit::ExitCode;
use crate::plan::{Plan, PlanTally};
use crate::policy::Space;

#[derive(Debug, thiserror::Error)]
pub enum MetricsError {
    #[error("{}: cannot write metrics ({io})", path.display())]
    Write { path: PathBuf, io: std::io::Error },
}

/// What every run reports, whatever its outcome.
#[derive(Debug, Clone)]
pub struct Run {
    /// `plan` or `apply`.
    pub command: &'static str,
    /// The policy file (absolute), if any.
    pub policy: Option<String>,
    /// When the run started, Unix seconds.
    pub started: i64,
    pub duration: Duration,
    pub exit: ExitCode,
}

/// Samples grouped by metric name.
#[derive(Debug, Default)]
pub struct Metrics {
    common: Vec<(&'static str, String)>,
    families: BTreeMap<&'static str, Family>,
}

#[derive(Debug)]
struct Family {
    help: &'static str,
    /// Rendered label sets (common labels included) and values.
    samples: BTreeMap<String, String>,
}

impl Metrics {
    /// The run's own metrics: start time, duration, result and exit code.
    pub fn new(run: &Run) -> Metrics {
        let mut m = Metrics {
            common: vec![
                ("command", run.command.to_string()),
                (
                    "policy",
                    run.policy.clone().unwrap_or_else(|| "none".into()),
                ),
            ],
            families: BTreeMap::new(),
        };
        let success = u8::from(run.exit == ExitCode::Success);
        m.gauge(LAST_RUN, &[], run.started);
        m.gauge(DURATION, &[], run.duration.as_secs_f64());
        m.gauge(SUCCESS, &[], success);
        m.gauge(EXIT_CODE, &[], run.exit as u8);
        m
    }

    /// Adds one sample of a gauge. The first call for a name sets its
    /// help text; a second sample with the same labels replaces the first.
    pub fn gauge(&mut self, metric: Desc, labels: &[(&'static str, &str)], value: impl Display) {
        let mut set = String::new();
        let own = labels.iter().map(|&(k, v)| (k, v));
        let common = self.common.iter().map(|(k, v)| (*k, v.as_str()));
        for (i, (k, v)) in common.chain(own).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(set, "{sep}{k}=\"{}\"", escape_label(v));
        }
        self.families
            .entry(metric.name)
            .or_insert_with(|| Family {
                help: metric.help,
                samples: BTreeMap::new(),
            })
            .samples
            .insert(set, value.to_string());
    }

    /// The exposition text: each family's `# HELP` and `# TYPE` lines, then
    /// its samples, families sorted by name and samples by labels. O(s log s).
    pub fn render(&self) -> String {
        let mut out = String::new();
        for (name, f) in &self.families {
            let _ = writeln!(out, "# HELP {name} {}", escape_help(f.help));
            let _ = writeln!(out, "# TYPE {name} gauge");
            for (labels, value) in &f.samples {
                let _ = writeln!(out, "{name}{{{labels}}} {value}");
            }
        }
        out
    }

    /// Paths and bytes of one tally, under one label.
    fn tally(&mut self, metrics: (Desc, Desc), label: (&'static str, &str), t: PlanTally) {
        self.gauge(metrics.0, &[label], t.paths);
        self.gauge(metrics.1, &[label], t.bytes);
    }
}

/// A label value with `\`, `"` and newlines escaped.
fn escape_label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Help text with `\` and newlines escaped.
fn escape_help(v: &str) -> String {
    v.replace('\\', "\\\\").replace('\n', "\\n")
}

/// A metric: its name and help text.
#[derive(Debug, Clone, Copy)]
pub struct Desc {
    pub name: &'static str,
    pub help: &'static str,
}

const fn desc(name: &'static str, help: &'static str) -> Desc {
    Desc { name, help }
}

const LAST_RUN: Desc = desc(
    "storegc_last_run_timestamp_seconds",
    "When the last run started (Unix time).",
);
const DURATION: Desc = desc(
    "storegc_last_run_duration_seconds",
    "How long the last run took.",
);
const SUCCESS: Desc = desc(
    "storegc_last_run_success",
    "1 if the last run did all it was asked to (exit status 0), else 0.",
);
const EXIT_CODE: Desc = desc("storegc_last_run_exit_code", "The last run's exit status: 0 done, 1 some deletions failed or interrupted, 2 bad input (nothing changed).");
const NOTHING_TO_DO: Desc = desc("storegc_plan_nothing_to_do", "1 if the run planned nothing because the store's filesystem had room enough (--only-if-available-below).");
const FS_SIZE: Desc = desc(
    "storegc_filesystem_size_bytes",
    "Size of the store's filesystem (statvfs).",
);
const FS_AVAILABLE: Desc = desc(
    "storegc_filesystem_available_bytes",
    "Space available on the store's filesystem to unprivileged users (statvfs).",
);
const PLANNED: (Desc, Desc) = (
    desc(
        "storegc_planned_paths",
        "Store paths the plan deletes, per reason.",
    ),
    desc(
        "storegc_planned_bytes",
        "narSize bytes the plan deletes, per reason.",
    ),
);
const KEPT: (Desc, Desc) = (
    desc(
        "storegc_kept_paths",
        "Valid store paths the plan keeps, per protection (each path counted once).",
    ),
    desc(
        "storegc_kept_bytes",
        "narSize bytes the plan keeps, per protection.",
    ),
);
const STORE_PATHS: Desc = desc("storegc_store_paths", "Valid store paths when planned.");
const STORE_BYTES: Desc = desc(
    "storegc_store_bytes",
    "narSize bytes of all valid store paths when planned.",
);
const ROOTS: Desc = desc("storegc_roots", "GC roots found (valid and temp roots).");
const EXPIRED_ROOTS: Desc = desc(
    "storegc_planned_expired_roots",
    "Roots (generations, auto roots) the plan expires.",
);
const WARNINGS: Desc = desc("storegc_plan_warnings", "Warnings in the plan.");
const BUDGET_LIMIT: Desc = desc(
    "storegc_budget_limit_bytes",
    "The bytes the budget allowed this run (0 when until-free was met).",
);
const WINDOW_TRACKED: Desc = desc(
    "storegc_rollback_window_tracked_paths",
    "Deletable paths the rollback window (select.dead-for) has a date for.",
);
const WINDOW_FIRST_RUN: Desc = desc(
    "storegc_rollback_window_first_run",
    "1 if the rollback window had no state yet, so nothing went by it this run.",
);
const DELETED: (Desc, Desc) = (
    desc(
        "storegc_deleted_paths",
        "Store paths deleted (would be, in a dry run), per the plan's reason.",
    ),
    desc(
        "storegc_deleted_bytes",
        "narSize bytes deleted (would be, in a dry run), per the plan's reason.",
    ),
);
const DRY_RUN: Desc = desc(
    "storegc_apply_dry_run",
    "1 if the last apply was a dry run.",
);
const INTERRUPTED: Desc = desc(
    "storegc_apply_interrupted",
    "1 if the last apply was stopped by a signal before its last batch.",
);
const FS_FREED: Desc = desc("storegc_filesystem_freed_bytes", "Change of the space available on the store's filesystem during apply (other writers included).");
const LIVE_NOW: Desc = desc(
    "storegc_kept_live_now_paths",
    "Planned paths kept because they were live again at apply time.",
);
const PROTECTED_NOW: Desc = desc(
    "storegc_kept_protected_now_paths",
    "Planned paths kept because the policy's current inputs protect them.",
);
const ALREADY_GONE: Desc = desc(
    "storegc_already_gone_paths",
    "Planned paths no longer valid at apply time.",
);
const ROOTS_REMOVED: Desc = desc("storegc_roots_removed", "Expired roots removed.");
const FAILED: Desc = desc("storegc_failed_paths", "Paths whose deletion failed.");
const ERRORS: Desc = desc(
    "storegc_errors",
    "Errors after something had changed (exit status 1).",
);

/// The reasons a plan gives, as labels.
const REASONS: [&str; 3] = ["unreachable", "expired-generation", "expired-auto-root"];

/// `plan`'s metrics: the run, the store's filesystem when measured, and,
/// when a plan was made, what it deletes per reason, what it keeps per
/// protection, the store's totals and the budget. `nothing_to_do`: the
/// run ended at `--only-if-available-below`.
pub fn plan(run: &Run, plan: Option<&Plan>, space: Option<Space>, nothing_to_do: bool) -> Metrics {
    let mut m = Metrics::new(run);
    m.gauge(NOTHING_TO_DO, &[], u8::from(nothing_to_do));
    if let Some(s) = space {
        m.gauge(FS_SIZE, &[], s.size);
        m.gauge(FS_AVAILABLE, &[], s.available);
    }
    if let Some(p) = plan {
        planned(&mut m, p);
    }
    m
}

/// What a plan deletes and keeps, and the store it was made on.
fn planned(m: &mut Metrics, p: &Plan) {
    let b = &p.by_reason;
    let by_reason = [b.unreachable, b.expired_generation, b.expired_auto_root];
    for (reason, t) in REASONS.into_iter().zip(by_reason) {
        m.tally(PLANNED, ("reason", reason), t);
    }
    let k = &p.kept;
    // A new protection in the plan is one more row here.
    for (protection, t) in [
        ("nix-roots", k.nix_roots),
        ("closure-lists", k.closure_lists),
        ("protected-paths", k.protected_paths),
        ("protected-names", k.protected_names),
        ("build-closures", k.build_closures),
        ("unselected", k.unselected),
        ("rollback-window", k.window),
        ("budget", k.budget),
    ] {
        m.tally(KEPT, ("protection", protection), t);
    }
    let mut store = k.total();
    store += PlanTally {
        paths: p.totals.paths,
        bytes: p.totals.nar_bytes,
    };
    m.gauge(STORE_PATHS, &[], store.paths);
    m.gauge(STORE_BYTES, &[], store.bytes);
    m.gauge(ROOTS, &[], p.roots.len());
    m.gauge(EXPIRED_ROOTS, &[], p.expired_roots.len());
    m.gauge(WARNINGS, &[], p.warnings.len());
    if let Some(budget) = &p.budget {
        m.gauge(BUDGET_LIMIT, &[], budget.limit);
    }
    if let Some(w) = &p.window {
        m.gauge(WINDOW_TRACKED, &[], w.tracked_paths);
        m.gauge(WINDOW_FIRST_RUN, &[], u8::from(w.first_run));
    }
}

/// `apply`'s metrics: the run and, when apply got as far as a report, what
/// it deleted per reason (the plan's reasons, looked up by path), what it
/// kept and why, and its failures.
pub fn apply(run: &Run, plan: Option<&Plan>, report: Option<&ApplyReport>) -> Metrics {
    let mut m = Metrics::new(run);
    let Some(r) = report else { return m };
    for (reason, t) in deleted_by_reason(plan, &r.deleted) {
        m.tally(DELETED, ("reason", reason), t);
    }
    m.gauge(DRY_RUN, &[], u8::from(r.dry_run));
    m.gauge(INTERRUPTED, &[], u8::from(r.interrupted));
    m.gauge(FS_FREED, &[], r.freed_fs_bytes);
    m.gauge(LIVE_NOW, &[], r.skipped_live.len());
    m.gauge(PROTECTED_NOW, &[], r.kept_protected_now.len());
    m.gauge(ALREADY_GONE, &[], r.already_gone);
    m.gauge(ROOTS_REMOVED, &[], r.roots_removed.len());
    m.gauge(FAILED, &[], r.failed.len());
    m.gauge(ERRORS, &[], r.errors.len());
    m
}

/// The deleted paths per the plan's reason (every reason present, 0 or
/// not; a path the plan does not list, which apply never deletes, would
/// count as "unknown"). O(d log d).
fn deleted_by_reason<'a>(
    plan: Option<&'a Plan>,
    deleted: &[String],
) -> BTreeMap<&'a str, PlanTally> {
    let planned: BTreeMap<&str, (&str, u64)> = plan
        .iter()
        .flat_map(|p| &p.delete)
        .map(|d| (d.path.as_str(), (d.reason.as_str(), d.nar_size)))
        .collect();
    let mut by_reason: BTreeMap<&str, PlanTally> = REASONS
        .into_iter()
        .map(|r| (r, PlanTally::default()))
        .collect();
    for path in deleted {
        let (reason, bytes) = planned
            .get(path.as_str())
            .copied()
            .unwrap_or(("unknown", 0));
        *by_reason.entry(reason).or_default() += PlanTally { paths: 1, bytes };
    }
    by_reason
}

/// Writes `text` to `path` atomically: a temporary file in the same folder
/// (not named `*.prom`, so the collector skips it), fsynced, made readable
/// by all (node_exporter runs as another user), renamed over `path`.
pub fn write(path: &Path, text: &str) -> Result<(), MetricsError> {
    use std::os::unix::fs::PermissionsExt as _;
    let err = |io| MetricsError::Write {
        path: path.to_path_buf(),
        io,
    };
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(".storegc-metrics-")
        .tempfile_in(dir)
        .map_err(err)?;
    tmp.write_all(text.as_bytes()).map_err(err)?;
    tmp.as_file()
        .set_permissions(std::fs::Permissions::from_mode(0o644))
        .map_err(err)?;
    tmp.as_file().sync_all().map_err(err)?;
    tmp.persist(path).map_err(|e| err(e.error))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(exit: ExitCode) -> Run {
        Run {
            command: "plan",
            policy: Some("/etc/storegc/po\"licy.toml".into()),
            started: 1_700_000_000,
            duration: Duration::from_millis(1500),
            exit,
        }
    }

    #[test]
    fn families_are_sorted_with_help_and_type_once() {
        let mut m = Metrics::new(&run(ExitCode::Success));
        m.gauge(desc("storegc_b", "B."), &[("reason", "y")], 2);
        m.gauge(desc("storegc_a", "A\\n."), &[], 1);
        m.gauge(desc("storegc_b", "ignored"), &[("reason", "x")], 3);
        let text = m.render();
        let names: Vec<&str> = text
            .lines()
            .filter(|l| l.starts_with("# TYPE "))
            .map(|l| l.split(' ').nth(2).unwrap())
            .collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert!(text.contains("# HELP storegc_a A\\\\n.\n# TYPE storegc_a gauge\nstoregc_a{command=\"plan\",policy=\"/etc/storegc/po\\\"licy.toml\"} 1\n"), "{text}");
        let b = text.find("# HELP storegc_b B.\n").unwrap();
        let x = text.find("reason=\"x\"} 3\n").unwrap();
        let y = text.find("reason=\"y\"} 2\n").unwrap();
        assert!(b < x && x < y, "{text}");
        assert!(text.contains("storegc_last_run_duration_seconds{command=\"plan\",policy=\"/etc/storegc/po\\\"licy.toml\"} 1.5\n"), "{text}");
        assert!(text.contains("storegc_last_run_success{command=\"plan\",policy=\"/etc/storegc/po\\\"licy.toml\"} 1\n"), "{text}");
    }

    #[test]
    fn a_failed_run_says_so() {
        let text = plan(&run(ExitCode::BadInput), None, None, false).render();
        assert!(text.contains("storegc_last_run_success{command=\"plan\",policy=\"/etc/storegc/po\\\"licy.toml\"} 0\n"), "{text}");
        assert!(text.contains("storegc_last_run_exit_code{command=\"plan\",policy=\"/etc/storegc/po\\\"licy.toml\"} 2\n"), "{text}");
        assert!(!text.contains("storegc_store_paths"), "{text}");
    }

    #[test]
    fn write_replaces_the_file_readable_by_all() {
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("storegc.prom");
        write(&file, "a 1\n").unwrap();
        write(&file, "b 2\n").unwrap();
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "b 2\n");
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o644);
        assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        let err = write(&dir.path().join("no/such.prom"), "x").unwrap_err();
        assert!(
            err.to_string().starts_with(&format!(
                "{}/no/such.prom: cannot write metrics (",
                dir.path().display()
            )),
            "{err}"
        );
    }
}
