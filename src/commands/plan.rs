//! `storegc plan` (and `storegc demo`, which plans on a generated store).

use anyhow::{Context, Result};

use crate::cli::{DemoArgs, GlobalArgs, PlanArgs, PlanFormat};
use crate::exit::ExitCode;
use crate::graph::live_set_parallel;
use crate::load::load;
use crate::plan::{dead_paths, Plan, PlanMeta};
use crate::report;
use crate::settings::Settings;

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let plan = make_plan(global, &settings)?;
    if let Some(out) = &args.out {
        write_plan_file(&plan, out)?;
    }
    emit(&plan, args.format)?;
    Ok(ExitCode::Success)
}

fn make_plan(global: &GlobalArgs, settings: &Settings) -> Result<Plan> {
    let state = load(settings, &super::load_options(global))?;
    let live = live_set_parallel(&state.graph, &state.root_paths());
    let delete: Vec<_> = dead_paths(&live)
        .into_iter()
        .map(|id| (id, "unreachable"))
        .collect();
    let meta = PlanMeta {
        store_dir: settings.store_dir.clone(),
        state_dir: settings.state_dir.display().to_string(),
        now: super::now(),
        gc: settings.gc,
        policy: None,
    };
    let roots: Vec<_> = state
        .root_ids
        .iter()
        .map(|&(i, _)| state.roots[i].clone())
        .collect();
    Ok(Plan::build(&meta, &state.snap, &roots, vec![], &delete))
}

fn emit(plan: &Plan, format: PlanFormat) -> Result<()> {
    let text = match format {
        PlanFormat::Text => report::text(plan, 20),
        PlanFormat::Paths => report::paths(plan),
        PlanFormat::Json => {
            let mut s = serde_json::to_string_pretty(plan)?;
            s.push('\n');
            s
        }
    };
    super::write_stdout(&text)
}

/// Writes the JSON plan atomically (temp file in the same folder, then
/// rename), so a timer never leaves half a plan for `apply`.
fn write_plan_file(plan: &Plan, out: &std::path::Path) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("{}: cannot write plan", out.display()))?;
    serde_json::to_writer_pretty(&mut tmp, plan)
        .with_context(|| format!("{}: cannot write plan", out.display()))?;
    tmp.persist(out)
        .with_context(|| format!("{}: cannot write plan", out.display()))?;
    Ok(())
}

pub fn demo(_global: &GlobalArgs, _args: &DemoArgs) -> Result<ExitCode> {
    anyhow::bail!("demo: the synthetic store generator is not wired in yet")
}
