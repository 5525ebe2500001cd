//! `storegc roots`: every root Nix honours.

use anyhow::Result;

use crate::cli::{GlobalArgs, RootsArgs, RootsFormat};
use crate::exit::ExitCode;
use crate::load::load;
use crate::report;

pub fn run(global: &GlobalArgs, args: &RootsArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let state = load(&settings, &super::load_options(global))?;
    // Only roots whose store path is valid count, as in Nix.
    let roots: Vec<_> = state
        .root_ids
        .iter()
        .map(|&(i, _)| state.roots[i].clone())
        .collect();
    let text = match args.format {
        RootsFormat::Text => report::roots_text(&roots),
        RootsFormat::Json => report::roots_json(&roots),
    };
    super::write_stdout(&text)?;
    Ok(ExitCode::Success)
}
