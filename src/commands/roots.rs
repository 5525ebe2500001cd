//! `storegc roots`: every root Nix honours, optionally with the space each
//! one holds.

use std::fmt::Write;

use anyhow::Result;

use crate::cli::{GlobalArgs, RootsArgs, TextOrJson};
use crate::dominators::{root_sizes, RootSizes};
use crate::exit::ExitCode;
use crate::load::load;
use crate::progress::Printer;
use crate::report::{self, human_bytes};
use crate::roots::Root;

pub fn run(global: &GlobalArgs, args: &RootsArgs) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    // A spinner on stderr, drawn only on a terminal: loading, then (with
    // --sizes) the dominator and closure passes, which take seconds on a
    // store of a million paths.
    let spinner = Printer::new(global.quiet, global.verbose).spinner("loading");
    let state = load(&settings, &super::load_options(global))
        .inspect_err(|_| spinner.finish_and_clear())?;
    spinner.suspend(|| super::warn_incomplete_roots(&state));
    if args.sizes {
        spinner.set_message(format!(
            "sizing {} roots over {} paths (dominators, closures)",
            state.root_ids.len(),
            state.snap.len()
        ));
        let sizes = tracing::info_span!("sizes").in_scope(|| {
            root_sizes(
                &state.graph,
                &state.snap.nar_size,
                &state.roots,
                &state.root_ids,
            )
        });
        spinner.finish_and_clear();
        let text = match args.format {
            TextOrJson::Text => sizes_text(&sizes, &state.roots),
            TextOrJson::Json => sizes_json(&sizes, &state.roots)?,
        };
        super::write_stdout(&text)?;
        return Ok(ExitCode::Success);
    }
    spinner.finish_and_clear();
    let roots = crate::roots::list(&state.reported_roots());
    let text = match args.format {
        TextOrJson::Text => report::roots_text(&roots),
        TextOrJson::Json => report::roots_json(&roots),
    };
    super::write_stdout(&text)?;
    Ok(ExitCode::Success)
}

fn sizes_text(s: &RootSizes, roots: &[Root]) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "{:>12} {:>12}  root", "exclusive", "closure");
    for r in &s.roots {
        let root = &roots[r.root];
        let _ = writeln!(
            out,
            "{:>12} {:>12}  {} ({})",
            human_bytes(r.size.exclusive_bytes),
            human_bytes(r.size.closure_bytes),
            root.link,
            root.kind.as_str()
        );
    }
    for p in &s.profiles {
        let _ = writeln!(
            out,
            "profile {}: {} exclusive to its generations, {} in all",
            p.profile,
            human_bytes(p.size.exclusive_bytes),
            human_bytes(p.size.closure_bytes)
        );
        for g in &p.generations {
            let _ = writeln!(
                out,
                "  generation {:>5}: {:>12} exclusive, {:>12} closure",
                g.number,
                human_bytes(g.size.exclusive_bytes),
                human_bytes(g.size.closure_bytes)
            );
        }
    }
    out
}

fn sizes_json(s: &RootSizes, roots: &[Root]) -> Result<String> {
    #[derive(serde::Serialize)]
    struct Entry<'a> {
        link: &'a str,
        target: &'a str,
        kind: &'a str,
        #[serde(flatten)]
        size: crate::dominators::Size,
    }
    #[derive(serde::Serialize)]
    struct Generation<'a> {
        number: u64,
        /// The generation's link (an index would point into storegc's
        /// internal list, not into `roots` here).
        link: &'a str,
        size: crate::dominators::Size,
    }
    #[derive(serde::Serialize)]
    struct Profile<'a> {
        profile: &'a str,
        size: crate::dominators::Size,
        generations: Vec<Generation<'a>>,
    }
    #[derive(serde::Serialize)]
    struct Out<'a> {
        roots: Vec<Entry<'a>>,
        profiles: Vec<Profile<'a>>,
    }
    let out = Out {
        roots: s
            .roots
            .iter()
            .map(|r| Entry {
                link: &roots[r.root].link,
                target: &roots[r.root].target,
                kind: roots[r.root].kind.as_str(),
                size: r.size,
            })
            .collect(),
        profiles: s
            .profiles
            .iter()
            .map(|p| Profile {
                profile: &p.profile,
                size: p.size,
                generations: p
                    .generations
                    .iter()
                    .map(|g| Generation {
                        number: g.number,
                        link: &roots[g.root].link,
                        size: g.size,
                    })
                    .collect(),
            })
            .collect(),
    };
    Ok(serde_json::to_string_pretty(&out)? + "\n")
}
