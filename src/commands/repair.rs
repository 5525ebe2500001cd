//! `storegc repair`: the engine's clean-up on its own (see
//! [`crate::apply::repair`]).

use std::fmt::Write;

use anyhow::Result;

use crate::apply::repair::{repair, RepairOptions, RepairReport};
use crate::cli::{GlobalArgs, RepairArgs};
use crate::exit::ExitCode;
use crate::report::human_bytes;

pub fn run(global: &GlobalArgs, args: &RepairArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let opts = RepairOptions {
        lock_timeout: args
            .lock_timeout
            .unwrap_or(crate::apply::ApplyOptions::default().lock_timeout),
        load: super::load_options(global),
        vacuum: args.vacuum.vacuum,
    };
    let report = repair(&settings, &opts)?;
    for e in &report.errors {
        eprintln!("storegc: {e}");
    }
    super::write_report(args.format, &report, text)?;
    Ok(if report.errors.is_empty() {
        ExitCode::Success
    } else {
        ExitCode::Partial
    })
}

fn text(r: &RepairReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "removed without a database row: {} entries",
        r.orphans_removed.len()
    );
    for p in &r.orphans_removed {
        let _ = writeln!(out, "  {p}");
    }
    let _ = writeln!(
        out,
        "freed on disk (allocated blocks): {}",
        human_bytes(r.freed_disk_bytes)
    );
    if let Some(v) = &r.vacuum {
        let _ = writeln!(out, "{}", super::apply::vacuum(v));
    }
    for e in &r.errors {
        let _ = writeln!(out, "error: {e}");
    }
    out
}
