//! Reading a plan file and deciding whether it may be applied to this store
//! now. A plan that fails any check is refused before anything changes.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::plan::{Plan, PLAN_VERSION};
use crate::settings::Settings;

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error("{0}: cannot read plan ({1})")]
    Read(PathBuf, std::io::Error),
    #[error("{file}:{line}: not a storegc plan: {msg}")]
    Parse {
        file: PathBuf,
        line: usize,
        msg: String,
    },
    #[error("{file}: plan format version {found}, this storegc reads version {PLAN_VERSION} (make a new plan)")]
    Version { file: PathBuf, found: String },
    #[error("{file}: plan is for store {planned}, not this store {actual}")]
    OtherStore {
        file: PathBuf,
        planned: String,
        actual: String,
    },
    #[error("{file}: plan is for state dir {planned}, not {actual}")]
    OtherState {
        file: PathBuf,
        planned: String,
        actual: String,
    },
    #[error("{file}: 'created' is not an RFC 3339 time: '{created}'")]
    BadTime { file: PathBuf, created: String },
    #[error("{file}: plan is {age} old, more than --max-plan-age {max}")]
    Stale {
        file: PathBuf,
        age: String,
        max: String,
    },
    #[error("{file}: plan was made in the future ({created})")]
    Future { file: PathBuf, created: String },
    #[error("{file}: path '{path}' in the plan is not in store {store}")]
    ForeignPath {
        file: PathBuf,
        path: String,
        store: String,
    },
    #[error("{file}: the delete list's narSizes overflow 64 bits at '{path}'")]
    Overflow { file: PathBuf, path: String },
    #[error("{file}: '{path}' is listed twice in {list}")]
    Duplicate {
        file: PathBuf,
        list: &'static str,
        path: String,
    },
    #[error("{file}: totals ({paths} paths, {bytes} bytes) do not add up to the delete list")]
    Totals {
        file: PathBuf,
        paths: u64,
        bytes: u64,
    },
}

/// Just the version of a plan file, read before the rest so a plan of
/// another format is refused for its version, not for its fields.
#[derive(serde::Deserialize)]
struct VersionOnly {
    version: Option<serde_json::Value>,
}

/// Reads and parses a plan file: its version first (only
/// [`PLAN_VERSION`] is read), then the whole plan.
pub fn read_plan(file: &Path) -> Result<Plan, PlanError> {
    let text = std::fs::read_to_string(file).map_err(|e| PlanError::Read(file.to_path_buf(), e))?;
    let parse_error = |e: serde_json::Error| PlanError::Parse {
        file: file.to_path_buf(),
        line: e.line(),
        msg: e.to_string(),
    };
    let v: VersionOnly = serde_json::from_str(&text).map_err(parse_error)?;
    if v.version.as_ref().and_then(|v| v.as_u64()) != Some(PLAN_VERSION.into()) {
        return Err(PlanError::Version {
            file: file.to_path_buf(),
            found: v.version.map_or("missing".into(), |v| v.to_string()),
        });
    }
    serde_json::from_str(&text).map_err(parse_error)
}

/// Checks a parsed plan against this store and the clock (`now`, unix
/// seconds, from the caller). Pure.
pub fn check_plan(
    plan: &Plan,
    file: &Path,
    settings: &Settings,
    now: i64,
    max_age: Duration,
) -> Result<(), PlanError> {
    let file = file.to_path_buf();
    if plan.version != PLAN_VERSION {
        return Err(PlanError::Version {
            file,
            found: plan.version.to_string(),
        });
    }
    if plan.store_dir != settings.store_dir.as_str() {
        return Err(PlanError::OtherStore {
            file,
            planned: plan.store_dir.clone(),
            actual: settings.store_dir.to_string(),
        });
    }
    let actual_state = settings.state_dir.display().to_string();
    if plan.state_dir != actual_state {
        return Err(PlanError::OtherState {
            file,
            planned: plan.state_dir.clone(),
            actual: actual_state,
        });
    }
    let created = humantime::parse_rfc3339(&plan.created).map_err(|_| PlanError::BadTime {
        file: file.clone(),
        created: plan.created.clone(),
    })?;
    let created = created
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    // A little clock skew is tolerated; more means a plan from elsewhere.
    if created > now + 300 {
        return Err(PlanError::Future {
            file,
            created: plan.created.clone(),
        });
    }
    let age = Duration::from_secs((now - created).max(0) as u64);
    if age > max_age {
        return Err(PlanError::Stale {
            file,
            age: humantime::format_duration(age).to_string(),
            max: humantime::format_duration(max_age).to_string(),
        });
    }
    check_deletions(plan, &file, settings)?;
    check_expired(plan, &file)
}

/// Every deletion is exactly `<store>/<basename>` (so no `/../`), listed
/// once, and the totals add up without overflow. O(d log d).
fn check_deletions(plan: &Plan, file: &Path, settings: &Settings) -> Result<(), PlanError> {
    let file = file.to_path_buf();
    let (mut paths, mut bytes) = (0u64, 0u64);
    for d in &plan.delete {
        if settings
            .store_dir
            .store_path_of(&d.path)
            .map(|b| b.len() + plan.store_dir.len() + 1)
            != Ok(d.path.len())
        {
            return Err(PlanError::ForeignPath {
                file,
                path: d.path.clone(),
                store: plan.store_dir.clone(),
            });
        }
        paths += 1;
        bytes = bytes
            .checked_add(d.nar_size)
            .ok_or_else(|| PlanError::Overflow {
                file: file.clone(),
                path: d.path.clone(),
            })?;
    }
    if paths != plan.totals.paths || bytes != plan.totals.nar_bytes {
        return Err(PlanError::Totals {
            file,
            paths: plan.totals.paths,
            bytes: plan.totals.nar_bytes,
        });
    }
    let mut sorted: Vec<&str> = plan.delete.iter().map(|d| d.path.as_str()).collect();
    sorted.sort_unstable();
    if let Some(w) = sorted.windows(2).find(|w| w[0] == w[1]) {
        return Err(PlanError::Duplicate {
            file,
            list: "delete",
            path: w[0].to_string(),
        });
    }
    Ok(())
}

/// Every expired root is listed once. (What may be removed is decided at
/// removal, against a fresh scan: see [`super::remove`].) O(k log k).
fn check_expired(plan: &Plan, file: &Path) -> Result<(), PlanError> {
    let mut links: Vec<&str> = plan.expired_roots.iter().map(|e| e.link.as_str()).collect();
    links.sort_unstable();
    match links.windows(2).find(|w| w[0] == w[1]) {
        Some(w) => Err(PlanError::Duplicate {
            file: file.to_path_buf(),
            list: "expired_roots",
            path: w[0].to_string(),
        }),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plan::{Deletion, PlanSettings, Totals};
    use crate::settings::GcSettings;
    use crate::store_path::StoreDir;

    fn settings() -> Settings {
        Settings {
            store_dir: StoreDir::new("/s/store"),
            state_dir: PathBuf::from("/s/var"),
            gc: GcSettings::default(),
            conf_files: vec![],
            ca_derivations: false,
            warnings: vec![],
        }
    }

    fn plan() -> Plan {
        let path = format!("/s/store/{}-x", "a".repeat(32));
        Plan {
            version: PLAN_VERSION,
            store_dir: "/s/store".into(),
            state_dir: "/s/var".into(),
            created: crate::plan::format_time(1_000_000),
            settings: PlanSettings {
                keep_outputs: false,
                keep_derivations: true,
                ca_derivations: false,
                policy: None,
            },
            inputs: vec![],
            roots: vec![],
            expired_roots: vec![],
            delete: vec![Deletion {
                path,
                nar_size: 5,
                registration_time: 0,
                reason: "unreachable".into(),
            }],
            totals: Totals {
                paths: 1,
                nar_bytes: 5,
            },
            kept: Default::default(),
            by_reason: Default::default(),
            budget: None,
            unreadable_processes: 0,
            window: None,
            warnings: vec![],
        }
    }

    const DAY: Duration = Duration::from_secs(86_400);

    #[test]
    fn accepts_a_fresh_plan_for_this_store() {
        check_plan(&plan(), Path::new("p.json"), &settings(), 1_000_100, DAY).unwrap();
    }

    #[test]
    fn refuses_bad_plans_naming_the_file() {
        let f = Path::new("p.json");
        let mut p = plan();
        p.version = 99;
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::Version { .. })
        ));
        let mut p = plan();
        p.store_dir = "/other/store".into();
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::OtherStore { .. })
        ));
        let mut p = plan();
        p.state_dir = "/other".into();
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::OtherState { .. })
        ));
        let e = check_plan(&plan(), f, &settings(), 1_000_000 + 2 * 86_400, DAY).unwrap_err();
        assert!(matches!(e, PlanError::Stale { .. }));
        assert!(
            e.to_string().starts_with("p.json: plan is 2days old"),
            "{e}"
        );
        assert!(matches!(
            check_plan(&plan(), f, &settings(), 0, DAY),
            Err(PlanError::Future { .. })
        ));
        let mut p = plan();
        p.delete[0].path = "/elsewhere/x".into();
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::ForeignPath { .. })
        ));
        let mut p = plan();
        p.totals.nar_bytes = 6;
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::Totals { .. })
        ));
        let mut p = plan();
        p.delete[0].path = format!("/s/store/{}-x/../{}-y", "a".repeat(32), "b".repeat(32));
        assert!(matches!(
            check_plan(&p, f, &settings(), 1_000_100, DAY),
            Err(PlanError::ForeignPath { .. })
        ));
    }

    #[test]
    fn refuses_wrapping_totals_and_duplicates() {
        let f = Path::new("p.json");
        // Two sizes whose sum wraps around to the stated total.
        let mut p = plan();
        let mut second = p.delete[0].clone();
        second.path = format!("/s/store/{}-y", "b".repeat(32));
        second.nar_size = u64::MAX;
        p.delete.push(second);
        p.totals = Totals {
            paths: 2,
            nar_bytes: 4,
        };
        let e = check_plan(&p, f, &settings(), 1_000_100, DAY).unwrap_err();
        assert!(matches!(e, PlanError::Overflow { .. }), "{e}");
        let mut p = plan();
        p.delete.push(p.delete[0].clone());
        p.totals = Totals {
            paths: 2,
            nar_bytes: 10,
        };
        let e = check_plan(&p, f, &settings(), 1_000_100, DAY).unwrap_err();
        assert!(e.to_string().contains("listed twice in delete"), "{e}");
    }

    #[test]
    fn another_version_is_refused_before_its_fields_are_read() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plan.json");
        std::fs::write(&f, r#"{"version": 2, "roots": [{"odd": true}]}"#).unwrap();
        let e = read_plan(&f).unwrap_err();
        assert_eq!(
            e.to_string(),
            format!(
                "{}: plan format version 2, this storegc reads version 3 (make a new plan)",
                f.display()
            )
        );
        std::fs::write(&f, "{}").unwrap();
        assert!(read_plan(&f)
            .unwrap_err()
            .to_string()
            .contains("version missing"));
    }

    #[test]
    fn truncated_plan_is_a_parse_error_with_a_line() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("plan.json");
        let text = serde_json::to_string_pretty(&plan()).unwrap();
        std::fs::write(&f, &text[..text.len() / 2]).unwrap();
        let e = read_plan(&f).unwrap_err();
        assert!(matches!(e, PlanError::Parse { .. }));
        assert!(e.to_string().starts_with(&format!("{}:", f.display())));
    }
}
