//! `storegc plan` (and `storegc demo`, which plans on a generated store):
//! load, evaluate the policy, build the plan, print it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::cli::{DemoArgs, GlobalArgs, PlanArgs, PlanFormat, PolicyArgs};
use crate::exit::ExitCode;
use crate::load::{load, StoreState};
use crate::plan::{ExpiredKind, ExpiredRoot, Plan, PlanMeta};
use crate::policy::{self, Expiry, Policy};
use crate::progress::Printer;
use crate::report;
use crate::settings::Settings;

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let policy = resolve_policy(&args.policy)?;
    let plan = make_plan(global, &settings, &policy)?;
    if let Some(out) = &args.out {
        write_plan_file(&plan, out)?;
    }
    emit(&plan, args.format)?;
    Ok(ExitCode::Success)
}

/// The policy file (or none) with the command-line overrides applied.
pub fn resolve_policy(args: &PolicyArgs) -> Result<Policy> {
    let base = match &args.policy {
        Some(file) => policy::load_policy(file)?,
        None => Policy::default(),
    };
    Ok(base.with_overrides(&policy::Overrides {
        max_freed: args.max_freed,
        until_free: args.until_free,
        order: args.order,
        older_than: args.older_than,
    }))
}

/// The store as loaded and the policy's verdict on it.
pub struct Evaluated {
    pub state: StoreState,
    pub inputs: policy::PolicyInputs,
    pub decision: policy::Decision,
    pub now: i64,
}

/// Loads the store and evaluates the policy on it.
pub fn evaluate(global: &GlobalArgs, settings: &Settings, policy: &Policy) -> Result<Evaluated> {
    let printer = Printer::new(global.quiet, global.verbose);
    let spinner = printer.spinner("loading");
    let state = load(settings, &super::load_options(global))?;
    spinner.set_message("evaluating");
    let inputs = policy::gather(
        policy,
        &state.roots,
        &state.snap,
        &settings.store_dir,
        &settings.state_dir,
    )?;
    let available = policy
        .budget
        .until_free
        .map(|_| crate::apply::available_bytes(settings.store_dir.as_str()));
    let now = super::now();
    let decision = policy::evaluate(
        &state.snap,
        &state.graph,
        &state.roots,
        &state.root_ids,
        policy,
        &inputs,
        now,
        available,
    );
    spinner.finish_and_clear();
    for w in &decision.warnings {
        tracing::warn!("{w}");
    }
    Ok(Evaluated {
        state,
        inputs,
        decision,
        now,
    })
}

/// Loads the store, evaluates the policy and assembles the plan.
pub fn make_plan(global: &GlobalArgs, settings: &Settings, policy: &Policy) -> Result<Plan> {
    let Evaluated {
        state,
        decision,
        now,
        ..
    } = evaluate(global, settings, policy)?;
    let expired = decision
        .expired_roots
        .iter()
        .map(|e| expired_root(&state, e))
        .collect::<Result<Vec<_>>>()?;
    let meta = PlanMeta {
        store_dir: settings.store_dir.clone(),
        state_dir: settings.state_dir.display().to_string(),
        now,
        gc: settings.gc,
        policy: (!policy.file.as_os_str().is_empty()).then(|| policy.file.display().to_string()),
    };
    Ok(Plan::build(
        &meta,
        &state.snap,
        &valid_roots(&state),
        expired,
        &decision,
    ))
}

/// The roots whose store path is valid (what Nix reports).
fn valid_roots(state: &StoreState) -> Vec<crate::roots::Root> {
    state
        .root_ids
        .iter()
        .map(|&(i, _)| state.roots[i].clone())
        .collect()
}

/// A policy's expired root as the plan records it, with what the link
/// reads now so `apply` can tell whether it changed.
fn expired_root(state: &StoreState, e: &policy::ExpiredRoot) -> Result<ExpiredRoot> {
    let points_to = std::fs::read_link(&e.remove)
        .with_context(|| format!("{}: cannot read expired root", e.remove))?
        .display()
        .to_string();
    let (kind, profile) = match &e.why {
        Expiry::Generation { profile, .. } => (ExpiredKind::Generation, Some(profile.clone())),
        Expiry::AutoRoot { .. } => (ExpiredKind::AutoRoot, None),
    };
    Ok(ExpiredRoot {
        link: e.remove.clone(),
        points_to,
        target: state.roots[e.root].target.clone(),
        kind,
        profile,
        why: e.why.to_string(),
    })
}

pub fn emit(plan: &Plan, format: PlanFormat) -> Result<()> {
    let text = match format {
        PlanFormat::Text => report::text(plan, 20),
        PlanFormat::Paths => report::paths(plan),
        PlanFormat::Markdown => report::markdown(plan, 20),
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
fn write_plan_file(plan: &Plan, out: &Path) -> Result<()> {
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let ctx = || format!("{}: cannot write plan", out.display());
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(ctx)?;
    serde_json::to_writer_pretty(&mut tmp, plan).with_context(ctx)?;
    tmp.persist(out).with_context(ctx)?;
    Ok(())
}

pub fn demo(_global: &GlobalArgs, _args: &DemoArgs) -> Result<ExitCode> {
    anyhow::bail!("demo: the synthetic store generator is not wired in yet")
}

/// `storegc policy check FILE`.
pub fn check(file: &Path) -> Result<ExitCode> {
    let policy = policy::load_policy(file)?;
    super::write_stdout(&format!("{}: valid\n{}", file.display(), policy.describe()))?;
    Ok(ExitCode::Success)
}
