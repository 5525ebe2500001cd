//! The command layer: resolves settings from flags and environment, runs
//! the pipeline, writes output. Errors here carry context (`anyhow`); every
//! error that reaches `main` is bad input and exits 2.

mod apply;
mod explain;
mod generate;
mod plan;
mod repair;
mod roots;

use std::io::Write;

use anyhow::Result;

use crate::cli::{Cli, Command, GlobalArgs, PolicyCommand};
use crate::exit::ExitCode;
use crate::load::LoadOptions;
use crate::settings::{Env, Overrides, Settings};

/// Runs one parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode> {
    init_logging(&cli.global);
    if let Some(n) = cli.global.threads {
        // Only fails when a pool exists already, which is harmless.
        let _ = rayon::ThreadPoolBuilder::new()
            .num_threads(n)
            .build_global();
    }
    match &cli.command {
        Command::Plan(args) => plan::run(&cli.global, args),
        Command::Roots(args) => roots::run(&cli.global, args),
        Command::Apply(args) => apply::run(&cli.global, args),
        Command::Repair(args) => repair::run(&cli.global, args),
        Command::Explain(args) => explain::run(&cli.global, args),
        Command::Demo(args) => plan::demo(&cli.global, args),
        Command::Policy(PolicyCommand::Check { file }) => plan::check(file),
        Command::Completions(args) => generate::completions(args),
        Command::Man(args) => generate::man(args),
    }
}

/// Settings from flags, then environment, then Nix's defaults.
pub fn resolve_settings(global: &GlobalArgs) -> Result<Settings> {
    let overrides = Overrides {
        store_dir: global.store_dir.clone(),
        state_dir: global.state_dir.clone(),
        nix_conf: global.nix_conf.clone(),
    };
    let settings = Settings::resolve(&overrides, &Env::from_process())?;
    // As Nix does, on stderr; plans also carry them.
    for w in &settings.warnings {
        eprintln!("warning: {w}");
    }
    Ok(settings)
}

/// Says on stderr, as settings warnings are said, when the scan could not
/// read every process's runtime roots; once a run, however many scans it
/// makes (`demo` makes several).
pub fn warn_incomplete_roots(state: &crate::load::StoreState) {
    static SAID: std::sync::Once = std::sync::Once::new();
    if let Some(w) = state.incomplete_roots_warning() {
        SAID.call_once(|| eprintln!("warning: {w}"));
    }
}

pub fn load_options(global: &GlobalArgs) -> LoadOptions {
    LoadOptions {
        busy_timeout: global.busy_timeout,
        ..LoadOptions::default()
    }
}

/// Writes data to stdout; a closed pipe (`storegc plan | head`) is not an
/// error.
pub fn write_stdout(text: &str) -> Result<()> {
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|_| out.flush()) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(()),
        other => Ok(other?),
    }
}

/// Writes a command's report to stdout as text or pretty JSON.
pub fn write_report<R: serde::Serialize>(
    format: crate::cli::TextOrJson,
    report: &R,
    text: impl FnOnce(&R) -> String,
) -> Result<()> {
    let out = match format {
        crate::cli::TextOrJson::Text => text(report),
        crate::cli::TextOrJson::Json => serde_json::to_string_pretty(report)? + "\n",
    };
    write_stdout(&out)
}

/// The clock, read once per command.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn init_logging(global: &GlobalArgs) {
    use tracing_subscriber::EnvFilter;
    let default = match (global.quiet, global.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = EnvFilter::try_from_env("STOREGC_LOG").unwrap_or_else(|_| EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_timer(tracing_subscriber::fmt::time::uptime())
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        // Each phase's span reports its time when it closes (with -v).
        .with_span_events(tracing_subscriber::fmt::format::FmtSpan::CLOSE)
        .try_init();
}
