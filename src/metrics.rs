//! Prometheus metrics of one `plan` or `apply` run, for dashboards and
//! alerts: written as a text file in the exposition format that
//! node_exporter's textfile collector reads (`--metrics FILE`, the module's
//! `metricsDir`), atomically, so the collector never reads half a file.
//!
//! Building the text is pure (the run's facts in, text out); only
//! [`write`] touches the file system. Every sample carries the labels
//! `command` (`plan` or `apply`) and `policy` (the policy file, absolute,
//! or `none`), so the files of several runs (the nightly one, the low-disk
//! one) never give node_exporter the same series twice. A metric is one
//! [`Metrics::gauge`] call: families are grouped, `# HELP`/`# TYPE`
//! written once each, and everything sorted by name and labels.

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
        m.gauge(
            "storegc_last_run_timestamp_seconds",
            "When the last run started (Unix time).",
            &[],
            run.started,
        );
        m.gauge(
            "storegc_last_run_duration_seconds",
            "How long the last run took.",
            &[],
            run.duration.as_secs_f64(),
        );
        m.gauge(
            "storegc_last_run_success",
            "1 if the last run did all it was asked to (exit status 0), else 0.",
            &[],
            success,
        );
        m.gauge("storegc_last_run_exit_code", "The last run's exit status: 0 done, 1 some deletions failed or interrupted, 2 bad input (nothing changed).", &[], run.exit as u8);
        m
    }

    /// Adds one sample of a gauge. The first call for a name sets its
    /// help text; a second sample with the same labels replaces the first.
    pub fn gauge(
        &mut self,
        name: &'static str,
        help: &'static str,
        labels: &[(&'static str, &str)],
        value: impl Display,
    ) {
        let mut set = String::new();
        let own = labels.iter().map(|&(k, v)| (k, v));
        let common = self.common.iter().map(|(k, v)| (*k, v.as_str()));
        for (i, (k, v)) in common.chain(own).enumerate() {
            let sep = if i == 0 { "" } else { "," };
            let _ = write!(set, "{sep}{k}=\"{}\"", escape_label(v));
        }
        self.families
            .entry(name)
            .or_insert_with(|| Family {
                help,
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

    /// Paths and bytes of one tally, as `{name}_paths` and `{name}_bytes`.
    fn tally(
        &mut self,
        names: (&'static str, &'static str),
        help: (&'static str, &'static str),
        label: (&'static str, &str),
        t: PlanTally,
    ) {
        self.gauge(names.0, help.0, &[label], t.paths);
        self.gauge(names.1, help.1, &[label], t.bytes);
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

/// `plan`'s metrics: the run, the store's filesystem when measured, and,
/// when a plan was made, what it deletes per reason, what it keeps per
/// protection, the store's totals and the budget. `nothing_to_do`: the
/// run ended at `--only-if-available-below`.
pub fn plan(run: &Run, plan: Option<&Plan>, space: Option<Space>, nothing_to_do: bool) -> Metrics {
    let mut m = Metrics::new(run);
    m.gauge(
        "storegc_plan_nothing_to_do",
        "1 if the run planned nothing because the store's filesystem had room enough (--only-if-available-below).",
        &[],
        u8::from(nothing_to_do),
    );
    if let Some(s) = space {
        m.gauge(
            "storegc_filesystem_size_bytes",
            "Size of the store's filesystem (statvfs).",
            &[],
            s.size,
        );
        m.gauge(
            "storegc_filesystem_available_bytes",
            "Space available on the store's filesystem to unprivileged users (statvfs).",
            &[],
            s.available,
        );
    }
    let Some(p) = plan else { return m };
    let b = &p.by_reason;
    for (reason, t) in [
        ("unreachable", b.unreachable),
        ("expired-generation", b.expired_generation),
        ("expired-auto-root", b.expired_auto_root),
    ] {
        m.tally(
            ("storegc_planned_paths", "storegc_planned_bytes"),
            (
                "Store paths the plan deletes, per reason.",
                "narSize bytes the plan deletes, per reason.",
            ),
            ("reason", reason),
            t,
        );
    }
    let k = &p.kept;
    // The rollback window's kept bytes (issue 14 item 1) become one more
    // line here, ("rollback-window", k.rollback_window), once the plan
    // counts them.
    for (protection, t) in [
        ("nix-roots", k.nix_roots),
        ("closure-lists", k.closure_lists),
        ("protected-paths", k.protected_paths),
        ("protected-names", k.protected_names),
        ("unselected", k.unselected),
        ("budget", k.budget),
    ] {
        m.tally(
            ("storegc_kept_paths", "storegc_kept_bytes"),
            (
                "Valid store paths the plan keeps, per protection (each path counted once).",
                "narSize bytes the plan keeps, per protection.",
            ),
            ("protection", protection),
            t,
        );
    }
    let mut store = k.total();
    store += PlanTally {
        paths: p.totals.paths,
        bytes: p.totals.nar_bytes,
    };
    m.gauge(
        "storegc_store_paths",
        "Valid store paths when planned.",
        &[],
        store.paths,
    );
    m.gauge(
        "storegc_store_bytes",
        "narSize bytes of all valid store paths when planned.",
        &[],
        store.bytes,
    );
    m.gauge(
        "storegc_roots",
        "GC roots found (valid and temp roots).",
        &[],
        p.roots.len(),
    );
    m.gauge(
        "storegc_planned_expired_roots",
        "Roots (generations, auto roots) the plan expires.",
        &[],
        p.expired_roots.len(),
    );
    m.gauge(
        "storegc_plan_warnings",
        "Warnings in the plan.",
        &[],
        p.warnings.len(),
    );
    if let Some(budget) = &p.budget {
        m.gauge(
            "storegc_budget_limit_bytes",
            "The bytes the budget allowed this run (0 when until-free was met).",
            &[],
            budget.limit,
        );
    }
    m
}

/// `apply`'s metrics: the run and, when apply got as far as a report, what
/// it deleted per reason (the plan's reasons, looked up by path), what it
/// kept and why, and its failures.
pub fn apply(run: &Run, plan: Option<&Plan>, report: Option<&ApplyReport>) -> Metrics {
    let mut m = Metrics::new(run);
    let Some(r) = report else { return m };
    let planned: BTreeMap<&str, (&str, u64)> = plan
        .map(|p| {
            p.delete
                .iter()
                .map(|d| (d.path.as_str(), (d.reason.as_str(), d.nar_size)))
                .collect()
        })
        .unwrap_or_default();
    let mut by_reason: BTreeMap<&str, PlanTally> =
        ["unreachable", "expired-generation", "expired-auto-root"]
            .into_iter()
            .map(|reason| (reason, PlanTally::default()))
            .collect();
    for path in &r.deleted {
        let (reason, bytes) = planned
            .get(path.as_str())
            .copied()
            .unwrap_or(("unknown", 0));
        *by_reason.entry(reason).or_default() += PlanTally { paths: 1, bytes };
    }
    for (reason, t) in by_reason {
        m.tally(
            ("storegc_deleted_paths", "storegc_deleted_bytes"),
            (
                "Store paths deleted (would be, in a dry run), per the plan's reason.",
                "narSize bytes deleted (would be, in a dry run), per the plan's reason.",
            ),
            ("reason", reason),
            t,
        );
    }
    m.gauge(
        "storegc_apply_dry_run",
        "1 if the last apply was a dry run.",
        &[],
        u8::from(r.dry_run),
    );
    m.gauge(
        "storegc_apply_interrupted",
        "1 if the last apply was stopped by a signal before its last batch.",
        &[],
        u8::from(r.interrupted),
    );
    m.gauge("storegc_filesystem_freed_bytes", "Change of the space available on the store's filesystem during apply (other writers included).", &[], r.freed_fs_bytes);
    m.gauge(
        "storegc_kept_live_now_paths",
        "Planned paths kept because they were live again at apply time.",
        &[],
        r.skipped_live.len(),
    );
    m.gauge(
        "storegc_kept_protected_now_paths",
        "Planned paths kept because the policy's current inputs protect them.",
        &[],
        r.kept_protected_now.len(),
    );
    m.gauge(
        "storegc_already_gone_paths",
        "Planned paths no longer valid at apply time.",
        &[],
        r.already_gone,
    );
    m.gauge(
        "storegc_roots_removed",
        "Expired roots removed.",
        &[],
        r.roots_removed.len(),
    );
    m.gauge(
        "storegc_failed_paths",
        "Paths whose deletion failed.",
        &[],
        r.failed.len(),
    );
    m.gauge(
        "storegc_errors",
        "Errors after something had changed (exit status 1).",
        &[],
        r.errors.len(),
    );
    m
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
        m.gauge("storegc_b", "B.", &[("reason", "y")], 2);
        m.gauge("storegc_a", "A\\n.", &[], 1);
        m.gauge("storegc_b", "ignored", &[("reason", "x")], 3);
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
