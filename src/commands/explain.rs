//! `storegc explain PATH`: the chain that keeps a path, or why it goes.

use std::fmt::Write;

use anyhow::{anyhow, Result};

use crate::cli::{ExplainArgs, GlobalArgs};
use crate::exit::ExitCode;
use crate::explain::{explain, Explanation, PolicyView};

pub fn run(global: &GlobalArgs, args: &ExplainArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let policy = super::plan::resolve_policy(&args.policy)?;
    let ev = super::plan::evaluate(global, &settings, &policy)?;
    let sd = &settings.store_dir;
    let base = if args.path.starts_with('/') {
        sd.store_path_of(&args.path)
            .map_err(|e| anyhow!("{}: {e}", args.path))?
    } else {
        args.path.as_str()
    };
    let target = ev
        .state
        .snap
        .paths
        .lookup(base)
        .ok_or_else(|| anyhow!("{}: not a valid path in {}", args.path, sd))?;
    // Without a policy file the default policy deletes exactly Nix's dead
    // set, so the same view explains both.
    let view = Some(PolicyView {
        policy: &policy,
        inputs: &ev.inputs,
        decision: &ev.decision,
        now: ev.now,
    });
    let e = explain(
        &ev.state.snap,
        &ev.state.graph,
        settings.gc,
        sd,
        &ev.state.roots,
        &ev.state.root_ids,
        view.as_ref(),
        target,
    );
    super::write_report(args.format, &e, text)?;
    Ok(ExitCode::Success)
}

fn text(e: &Explanation) -> String {
    let mut out = String::new();
    let status = serde_json::to_value(e.status).ok();
    let status = status.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
    let _ = writeln!(out, "{}: {status} ({})", e.path, e.reason);
    if let Some(src) = &e.source {
        let _ = writeln!(out, "  {src}");
    }
    for step in &e.chain {
        match step.edge {
            None => {
                let _ = writeln!(out, "  -> {}", step.path);
            }
            Some(kind) => {
                let kind = serde_json::to_value(kind).ok();
                let kind = kind.as_ref().and_then(|v| v.as_str()).unwrap_or("?");
                let _ = writeln!(out, "  -> {} ({kind})", step.path);
            }
        }
    }
    out
}
