//! `storegc-synth`: writes a synthetic Nix store (see `storegc::synth`)
//! for benchmarks and tests, and prints the environment that points Nix
//! and storegc at it, one `NAME=value` line each, on stdout.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use storegc::synth::{generate, NarSizes, SynthSpec};

/// Write a synthetic Nix store (schema 10, accepted by Nix 2.8) into ROOT.
#[derive(Debug, Parser)]
#[command(name = "storegc-synth", version)]
struct Args {
    /// Number of valid paths.
    #[arg(long, default_value_t = SynthSpec::default().paths)]
    paths: usize,
    /// Seed of the simulation; the same seed gives the same store.
    #[arg(long, default_value_t = SynthSpec::default().seed)]
    seed: u64,
    /// System generations kept in profiles/system.
    #[arg(long, default_value_t = SynthSpec::default().generations)]
    generations: usize,
    /// Older, unlinked system generations (garbage).
    #[arg(long, default_value_t = SynthSpec::default().deleted_generations)]
    deleted_generations: usize,
    /// CI jobs.
    #[arg(long, default_value_t = SynthSpec::default().ci_jobs)]
    ci_jobs: usize,
    /// "Now" in seconds since the epoch [default: the current time].
    #[arg(long)]
    now: Option<i64>,
    /// Write the database and roots only, no store entries (Nix then
    /// sees every path as missing; for database benchmarks).
    #[arg(long)]
    no_files: bool,
    /// Spread `ValidPaths` ids evenly up to MAX instead of 1..paths (a
    /// host with years of churn); 0 keeps them dense.
    #[arg(long, value_name = "MAX", default_value_t = 0)]
    sparse_ids: u64,
    /// Record the simulation's sizes in `narSize` (up to hundreds of MiB
    /// a path, as on a real cache, so budgets bite) instead of the true
    /// NAR sizes of the small entries written. `hash` is the true NAR
    /// hash either way, so `nix-store --verify --check-contents` is clean.
    #[arg(long)]
    modelled_nar_sizes: bool,
    /// Folder to create the store in (must be empty or missing).
    root: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storegc-synth: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(args: Args) -> Result<(), storegc::synth::SynthError> {
    let now = args.now.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs() as i64)
    });
    let spec = SynthSpec {
        paths: args.paths,
        seed: args.seed,
        generations: args.generations,
        deleted_generations: args.deleted_generations,
        ci_jobs: args.ci_jobs,
        now,
        write_files: !args.no_files,
        sparse_ids: args.sparse_ids,
        nar_sizes: if args.modelled_nar_sizes {
            NarSizes::Modelled
        } else {
            NarSizes::Content
        },
        ..SynthSpec::default()
    };
    let start = Instant::now();
    let store = generate(&args.root, &spec)?;
    eprintln!(
        "storegc-synth: {} paths, {} references, {} derivation outputs in {:.2}s",
        store.paths,
        store.refs,
        store.drv_outputs,
        start.elapsed().as_secs_f64()
    );
    let mut out = std::io::stdout().lock();
    for (k, v) in store.env() {
        // A closed stdout (`| head`) is not an error.
        if writeln!(out, "{k}={v}").is_err() {
            break;
        }
    }
    Ok(())
}
