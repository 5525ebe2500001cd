//! The command line: clap types only. Turning them into settings and
//! running commands happens in [`crate::commands`].

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "storegc",
    version,
    about = "Nix store garbage collection with policies: Nix-exact liveness, conservative pruning for binary caches and CI hosts",
    propagate_version = true
)]
pub struct Cli {
    #[command(flatten)]
    pub global: GlobalArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Args)]
#[command(next_help_heading = "Global options")]
pub struct GlobalArgs {
    /// The store directory [default: $NIX_STORE_DIR, else /nix/store]
    #[arg(long, global = true, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    /// Nix's state directory [default: $NIX_STATE_DIR, else /nix/var/nix]
    #[arg(long, global = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Read this nix.conf instead of $NIX_CONF_DIR/nix.conf, the user's
    /// config files and $NIX_CONFIG
    #[arg(long, global = true, value_name = "FILE")]
    pub nix_conf: Option<PathBuf>,
    /// How long to wait for a locked database
    #[arg(long, global = true, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub busy_timeout: std::time::Duration,
    /// Worker threads [default: all cores]
    #[arg(long, global = true, value_name = "N")]
    pub threads: Option<usize>,
    /// More logs on stderr (-v info, -vv debug); STOREGC_LOG takes a
    /// tracing filter too
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// No progress bars, only errors on stderr
    #[arg(short, long, global = true)]
    pub quiet: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Compute what may be deleted, without deleting anything
    Plan(PlanArgs),
    /// List every GC root Nix honours
    Roots(RootsArgs),
    /// Delete what a plan lets go, after re-checking it against the store
    /// as it is now
    Apply(ApplyArgs),
    /// Under Nix's GC lock, remove store entries no database row names and
    /// nothing holds (what a crash of apply leaves), and unused `.links`
    Repair(RepairArgs),
    /// Generate a synthetic store in a temporary folder and plan on it
    Demo(DemoArgs),
    /// Why is a path alive, protected or deletable?
    Explain(ExplainArgs),
    /// Work with policy files
    #[command(subcommand)]
    Policy(PolicyCommand),
    /// Print a shell completion script to stdout
    Completions(CompletionsArgs),
    /// Print a man page (roff) to stdout: storegc(1), or with `policy`
    /// the policy file format, storegc-policy(5)
    Man(ManArgs),
}

#[derive(Debug, Args)]
pub struct ManArgs {
    /// Which page
    #[arg(value_enum, default_value_t = ManPage::Storegc)]
    pub page: ManPage,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ManPage {
    /// storegc(1): the commands and their options
    Storegc,
    /// storegc-policy(5): the policy file
    Policy,
}

#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum, value_name = "SHELL")]
    pub shell: clap_complete::Shell,
}

#[derive(Debug, Subcommand)]
pub enum PolicyCommand {
    /// Validate a policy file and say what it means in plain words
    Check {
        #[arg(value_name = "FILE")]
        file: PathBuf,
    },
}

/// Policy selection and the flags that override the policy file, for
/// manual pruning when disk runs low.
#[derive(Debug, Clone, Args, Default)]
pub struct PolicyArgs {
    /// The policy file (TOML); without one, storegc deletes exactly what
    /// `nix-store --gc` would
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// Stop after this many bytes (narSize), e.g. 100GiB, or this share
    /// of the store's filesystem, e.g. 10%
    #[arg(long, value_name = "SIZE|PCT", value_parser = crate::policy::Amount::parse)]
    pub max_freed: Option<crate::policy::Amount>,
    /// Only free until the store's filesystem has this much available,
    /// e.g. 200GiB or 15%
    #[arg(long, value_name = "SIZE|PCT", value_parser = crate::policy::Amount::parse)]
    pub until_free: Option<crate::policy::Amount>,
    /// Which deletable paths the budget takes first
    #[arg(long, value_name = "ORDER", value_parser = order_parser())]
    pub order: Option<crate::policy::Order>,
    /// Only delete paths registered at least this long ago
    #[arg(long, value_name = "DURATION", value_parser = crate::policy::parse_duration)]
    pub older_than: Option<std::time::Duration>,
}

/// `oldest-first` or `largest-first`, listed in `--help`.
fn order_parser() -> impl clap::builder::TypedValueParser<Value = crate::policy::Order> {
    use clap::builder::TypedValueParser as _;
    clap::builder::PossibleValuesParser::new(["oldest-first", "largest-first"])
        .try_map(|s| s.parse::<crate::policy::Order>())
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// The plan file written by `storegc plan --out`
    #[arg(value_name = "PLAN")]
    pub plan: PathBuf,
    /// Refuse plans older than this
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration)]
    pub max_plan_age: std::time::Duration,
    /// Re-check and report, but delete nothing and remove no root
    #[arg(long)]
    pub dry_run: bool,
    /// The nix-store binary [default: nix-store on PATH]
    #[arg(long, value_name = "PATH")]
    pub nix_store: Option<PathBuf>,
    /// Report format on stdout
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    pub format: TextOrJson,
    /// At most this many bytes of arguments per nix-store call (never more
    /// than ARG_MAX leaves); for tests that want many batches
    #[arg(long, value_name = "BYTES", hide = true)]
    pub batch_bytes: Option<usize>,
    /// Who deletes: storegc's own engine (Nix's GC lock and gc-socket,
    /// database rows then files, in chunks), or nix-store --delete (its
    /// meaning follows the installed Nix; slower)
    #[arg(long, value_enum, default_value_t = crate::apply::DeleteWith::Storegc)]
    pub delete_with: crate::apply::DeleteWith,
    /// With --delete-with storegc: give up (exit 2, nothing deleted) when
    /// Nix's GC lock is still held after this long [default: wait]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,
    /// With --delete-with storegc: paths per database transaction
    #[arg(long, value_name = "N", default_value_t = 50_000)]
    pub chunk_size: usize,
    /// Delete even when the runtime roots of some processes could not be
    /// read (storegc is not root, or a process even root may not look
    /// into, as in some containers): a path only such a process uses may go
    #[arg(long, env = "STOREGC_ALLOW_INCOMPLETE_ROOTS", value_parser = clap::builder::BoolishValueParser::new())]
    pub allow_incomplete_roots: bool,
    /// Also write metrics of this run to FILE in Prometheus text format
    /// (node_exporter's textfile collector), atomically; also when the
    /// run fails
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
    #[command(flatten)]
    pub vacuum: VacuumArg,
}

#[derive(Debug, Args)]
pub struct VacuumArg {
    /// At the end, under Nix's GC lock, rebuild the store database when at
    /// least a quarter of its file is free pages (deleting rows leaves them
    /// free; SQLite reuses them but never shrinks the file)
    ///
    /// Off by default: the store database is in WAL mode, so VACUUM writes
    /// the whole rebuilt database into the WAL, which grows as big as the
    /// database and cannot be checkpointed back while any reader (a
    /// nix-daemon worker, Harmonia) holds a snapshot; for that while the
    /// disk needs room for a second copy of the database.
    #[arg(long)]
    pub vacuum: bool,
}

#[derive(Debug, Args)]
pub struct RepairArgs {
    /// Give up (exit 2, nothing changed) when Nix's GC lock is still held
    /// after this long [default: wait]
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub lock_timeout: Option<std::time::Duration>,
    #[command(flatten)]
    pub vacuum: VacuumArg,
    /// Report format on stdout
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    pub format: TextOrJson,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// A summary for people
    Text,
    /// The paths to delete, one per line, sorted
    Paths,
    /// The versioned plan
    Json,
    /// Tables for a CI job summary (GITHUB_STEP_SUMMARY)
    Markdown,
}

/// Output of `roots`, `explain` and `apply`: for people or for programs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum TextOrJson {
    Text,
    Json,
}

#[derive(Debug, Args)]
pub struct PlanArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// Output format on stdout
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// Also write the JSON plan to this file (for `storegc apply`); with a
    /// rollback window (`dead-for`), also saves its state
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// The rollback window's state [default: $NIX_STATE_DIR/storegc/dead-since]
    #[arg(long, value_name = "FILE")]
    pub state_file: Option<PathBuf>,
    /// When there is no Nix store database, or an empty one, plan on a
    /// generated demo store instead (as `storegc demo`) rather than failing
    #[arg(long)]
    pub demo_if_no_store: bool,
    /// Plan only when the store's filesystem has less than this available
    /// (e.g. 50GiB or 10%); otherwise say "nothing to do" on stderr, write
    /// no plan and exit 0 (for a low-disk timer)
    #[arg(long, value_name = "SIZE|PCT", value_parser = crate::policy::Amount::parse)]
    pub only_if_available_below: Option<crate::policy::Amount>,
    /// Also write metrics of this run to FILE in Prometheus text format
    /// (node_exporter's textfile collector), atomically; also when the
    /// run fails
    #[arg(long, value_name = "FILE")]
    pub metrics: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RootsArgs {
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    pub format: TextOrJson,
    /// Also compute each root's closure size and exclusive size (what
    /// removing that root alone would free), sorted by exclusive size
    #[arg(long)]
    pub sizes: bool,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// A store path (absolute, a sub-path of one, or its basename)
    #[arg(value_name = "PATH")]
    pub path: String,
    #[command(flatten)]
    pub policy: PolicyArgs,
    #[arg(long, value_enum, default_value_t = TextOrJson::Text)]
    pub format: TextOrJson,
}

#[derive(Debug, Args)]
pub struct DemoArgs {
    #[command(flatten)]
    pub policy: PolicyArgs,
    /// How many store paths to generate
    #[arg(long, default_value_t = 3000)]
    pub paths: usize,
    /// Seed of the generator
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Keep the generated store in this folder instead of a temporary one
    #[arg(long, value_name = "DIR")]
    pub keep: Option<PathBuf>,
    /// Output format of the plan
    #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
    pub format: PlanFormat,
    /// demo makes a store of its own: these shadow the global options of
    /// the same name (clap propagates none where a command has its own),
    /// hidden, so that demo can refuse them.
    #[arg(long, hide = true, value_name = "DIR")]
    pub store_dir: Option<PathBuf>,
    #[arg(long, hide = true, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
}

/// The command line as the binary, its help, completions and man page see
/// it: the derived definition with `--policy` described for `explain`.
pub fn command() -> clap::Command {
    use clap::CommandFactory;
    Cli::command().mut_subcommand("explain", |explain| {
        explain.mut_arg("policy", |a| {
            a.help("Explain against this policy file: whether the path is protected, selected, or kept by the budget [default: no policy, Nix's liveness only]")
        })
    })
}

/// Parses the process's arguments with [`command`]; exits as clap does on
/// bad usage, `--help` and `--version`.
pub fn parse() -> Cli {
    use clap::FromArgMatches;
    Cli::from_arg_matches(&command().get_matches()).unwrap_or_else(|e| e.exit())
}

/// Parses `5s`, `14d`, `2h 30m` with humantime.
pub fn parse_duration(s: &str) -> Result<std::time::Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("invalid duration '{s}': {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
        command().debug_assert();
    }

    fn help_of(sub: &str) -> String {
        let mut cmd = command();
        cmd.build();
        cmd.find_subcommand_mut(sub)
            .unwrap()
            .render_long_help()
            .to_string()
    }

    #[test]
    fn help_puts_own_options_first_and_lists_values() {
        let plan = help_of("plan");
        let own = plan.find("--policy").unwrap();
        let global = plan.find("Global options:").unwrap();
        assert!(
            own < global && global < plan.find("--store-dir").unwrap(),
            "{plan}"
        );
        assert!(
            plan.contains("oldest-first") && plan.contains("largest-first"),
            "{plan}"
        );
        assert!(plan.contains("or an empty one"), "{plan}");
        let demo = help_of("demo");
        assert!(
            !demo.contains("--store-dir") && !demo.contains("--state-dir"),
            "{demo}"
        );
        assert!(help_of("explain").contains("Explain against this policy"));
    }

    #[test]
    fn global_flags_go_after_the_subcommand_too() {
        let cli =
            Cli::try_parse_from(["storegc", "plan", "--store-dir", "/s", "--format", "paths"])
                .unwrap();
        assert_eq!(cli.global.store_dir, Some(PathBuf::from("/s")));
        assert!(matches!(
            cli.command,
            Command::Plan(PlanArgs {
                format: PlanFormat::Paths,
                ..
            })
        ));
    }
}
