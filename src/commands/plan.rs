//! `storegc plan` (and `storegc demo`, which plans on a generated store):
//! load, evaluate the policy, build the plan, print it.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use crate::cli::{DemoArgs, GlobalArgs, PlanArgs, PlanFormat, PolicyArgs};
use crate::deadsince::{self, DeadSince};
use crate::exit::ExitCode;
use crate::load::{load, StoreState};
use crate::plan::{ExpiredKind, ExpiredRoot, Plan, PlanMeta};
use crate::policy::{self, Expiry, Policy};
use crate::progress::Printer;
use crate::report;
use crate::settings::Settings;

/// What a plan run saw, for its metrics.
#[derive(Default)]
struct Seen {
    plan: Option<Plan>,
    space: Option<policy::Space>,
    nothing_to_do: bool,
}

pub fn run(global: &GlobalArgs, args: &PlanArgs) -> Result<ExitCode> {
    let (started, clock) = (super::now(), std::time::Instant::now());
    let mut seen = Seen::default();
    let result = plan_and_emit(global, args, &mut seen);
    let Some(file) = &args.metrics else {
        return result;
    };
    let run = crate::metrics::Run {
        command: "plan",
        policy: args.policy.policy.as_deref().map(crate::plan::absolute),
        started,
        duration: clock.elapsed(),
        exit: *result.as_ref().unwrap_or(&ExitCode::BadInput),
    };
    let metrics = crate::metrics::plan(&run, seen.plan.as_ref(), seen.space, seen.nothing_to_do);
    let written = crate::metrics::write(file, &metrics.render());
    match (result, written) {
        (Ok(code), Ok(())) => Ok(code),
        (Ok(_), Err(e)) => Err(e.into()),
        (Err(e), written) => {
            if let Err(w) = written {
                eprintln!("storegc: {w}");
            }
            Err(e)
        }
    }
}

fn plan_and_emit(global: &GlobalArgs, args: &PlanArgs, seen: &mut Seen) -> Result<ExitCode> {
    let settings = super::resolve_settings(global)?;
    let policy = resolve_policy(&args.policy)?;
    seen.space = fs_space(settings.store_dir.as_str());
    if let Some(below) = args.only_if_available_below {
        let dir = settings.store_dir.as_str();
        let space = seen.space.with_context(|| {
            format!("{dir}: cannot measure the space available on the store's filesystem (--only-if-available-below)")
        })?;
        let threshold = below.bytes(space.size);
        if space.available >= threshold {
            eprintln!("{}", nothing_to_do(&settings, space, below, threshold));
            seen.nothing_to_do = true;
            return Ok(ExitCode::Success);
        }
    }
    // A plan that writes the window's state holds its lock from reading it
    // to writing it back, so an apply's update in between is not lost.
    let _state_lock = match (&args.out, policy.select.dead_for) {
        (Some(_), Some(_)) => Some(deadsince::lock_for_update(&state_file_path(
            &settings,
            args.state_file.as_deref(),
        ))?),
        _ => None,
    };
    let no_db = !crate::db::db_path(&settings.state_dir).exists();
    let plan = if no_db && args.demo_if_no_store {
        None
    } else {
        Some(make_plan_with(
            global,
            &settings,
            &policy,
            args.state_file.as_deref(),
        )?)
    };
    // An empty store (Nix installed, nothing in it) is no real store either.
    let plan =
        plan.filter(|(p, _)| !args.demo_if_no_store || p.totals.paths + p.kept.total().paths > 0);
    let Some((plan, next_state)) = plan else {
        eprintln!(
            "storegc: no Nix store with paths under {}; planning on a demo store instead",
            settings.state_dir.display()
        );
        let demo_args = DemoArgs {
            policy: args.policy.clone(),
            paths: 3000,
            seed: 1,
            keep: None,
            format: args.format,
            store_dir: None,
            state_dir: None,
        };
        return demo(global, &demo_args);
    };
    if let Some(out) = &args.out {
        // The state first: a plan file on disk means its state was saved.
        if let (Some(next), Some(w)) = (&next_state, &plan.window) {
            next.save(Path::new(&w.state_file))?;
        }
        write_plan_file(&plan, out)?;
    }
    emit(&plan, args.format)?;
    seen.plan = Some(plan);
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
    /// With `select.dead-for`: the state file and the state read from it
    /// (empty when there was none).
    pub dead_since: Option<(PathBuf, DeadSince)>,
}

/// Loads the store and evaluates the policy on it, the rollback window's
/// state read from the default file.
pub fn evaluate(global: &GlobalArgs, settings: &Settings, policy: &Policy) -> Result<Evaluated> {
    evaluate_with(global, settings, policy, None)
}

/// The rollback window's state: the file (`--state-file`, else
/// `$NIX_STATE_DIR/storegc/dead-since`) and what it holds, or an empty
/// state for a first run. Read only when the policy has `dead-for`.
fn read_dead_since(
    settings: &Settings,
    policy: &Policy,
    state_file: Option<&Path>,
) -> Result<Option<(PathBuf, DeadSince, bool)>> {
    if policy.select.dead_for.is_none() {
        return Ok(None);
    }
    let file = state_file_path(settings, state_file);
    let store = settings.store_dir.as_str();
    Ok(Some(match deadsince::load(&file, store)? {
        Some(state) => (file, state, false),
        None => (file, DeadSince::new(store), true),
    }))
}

/// The rollback window's state file: `--state-file`, else
/// `$NIX_STATE_DIR/storegc/dead-since`, made absolute.
fn state_file_path(settings: &Settings, state_file: Option<&Path>) -> PathBuf {
    let file = state_file.map_or_else(
        || deadsince::default_file(&settings.state_dir),
        Path::to_path_buf,
    );
    std::path::absolute(&file).unwrap_or(file)
}

/// [`evaluate`] with the rollback window's state file given.
pub fn evaluate_with(
    global: &GlobalArgs,
    settings: &Settings,
    policy: &Policy,
    state_file: Option<&Path>,
) -> Result<Evaluated> {
    let dead_since = read_dead_since(settings, policy, state_file)?;
    let printer = Printer::new(global.quiet, global.verbose);
    let spinner = printer.spinner("loading");
    let opts = crate::load::LoadOptions {
        derivation_outputs: policy.protect.build_closures,
        ..super::load_options(global)
    };
    let state = load(settings, &opts)?;
    spinner.set_message("evaluating");
    let mut inputs = policy::gather(
        policy,
        &state.roots,
        &state.snap,
        &settings.store_dir,
        &settings.state_dir,
    )?;
    if let Some((_, ds, missing)) = &dead_since {
        inputs.dead_since = ds.since_by_id(&state.snap);
        inputs.dead_since_missing = *missing;
    }
    let space = fs_space(settings.store_dir.as_str());
    let now = super::now();
    let decision = policy::evaluate(
        &state.snap,
        &state.graph,
        &state.roots,
        &state.root_ids,
        policy,
        &inputs,
        now,
        space,
    );
    spinner.finish_and_clear();
    super::warn_incomplete_roots(&state);
    for w in &decision.warnings {
        tracing::warn!("{w}");
    }
    Ok(Evaluated {
        state,
        inputs,
        decision,
        now,
        dead_since: dead_since.map(|(f, ds, _)| (f, ds)),
    })
}

/// The size of and the space available on the filesystem holding `dir`
/// (statvfs: `f_blocks` and `f_bavail` times `f_frsize`); `None` when it
/// cannot be read, which is "unknown", never "full" or "empty".
pub fn fs_space(dir: &str) -> Option<policy::Space> {
    let c = std::ffi::CString::new(dir).ok()?;
    // SAFETY: all-zero bytes are a valid statvfs (plain integers).
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: c is a valid C string and st a valid out-pointer.
    if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
        return None;
    }
    let frsize = st.f_frsize as u64;
    Some(policy::Space {
        size: (st.f_blocks as u64).checked_mul(frsize)?,
        available: (st.f_bavail as u64).checked_mul(frsize)?,
    })
}

/// The line `--only-if-available-below` prints when there is room enough.
fn nothing_to_do(
    settings: &Settings,
    space: policy::Space,
    below: policy::Amount,
    threshold: u64,
) -> String {
    let of = if below.is_share() {
        format!(" ({below} of {})", report::human_bytes(space.size))
    } else {
        String::new()
    };
    format!(
        "storegc: nothing to do: {} available on the filesystem of {}, not below {}{of}",
        report::human_bytes(space.available),
        settings.store_dir.as_str(),
        report::human_bytes(threshold),
    )
}

/// Loads the store, evaluates the policy and assembles the plan.
pub fn make_plan(global: &GlobalArgs, settings: &Settings, policy: &Policy) -> Result<Plan> {
    Ok(make_plan_with(global, settings, policy, None)?.0)
}

/// [`make_plan`] with the rollback window's state file given; also returns
/// the next dead-since state (with `dead-for`), for `plan --out` to save.
pub fn make_plan_with(
    global: &GlobalArgs,
    settings: &Settings,
    policy: &Policy,
    state_file: Option<&Path>,
) -> Result<(Plan, Option<DeadSince>)> {
    let Evaluated {
        state,
        inputs,
        decision,
        now,
        dead_since,
    } = evaluate_with(global, settings, policy, state_file)?;
    let next = dead_since
        .as_ref()
        .map(|(_, ds)| ds.next(&state.snap, &decision.dead, now));
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
        ca_derivations: settings.ca_derivations,
        settings_warnings: settings.warnings.clone(),
        unreadable_processes: state.unreadable_processes.clone(),
        policy: (!policy.file.as_os_str().is_empty()).then(|| crate::plan::absolute(&policy.file)),
        inputs: policy::digest::files_read(policy, &inputs)
            .iter()
            .map(crate::plan::PlanInput::from)
            .collect(),
        state_file: dead_since.map(|(f, _)| f.display().to_string()),
    };
    let _s = tracing::info_span!("plan").entered();
    let plan = Plan::build(
        &meta,
        &state.snap,
        &state.reported_roots(),
        expired,
        &decision,
    );
    Ok((plan, next))
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

/// Writes the JSON plan atomically (temp file in the same folder, buffered,
/// fsynced, then renamed), so a timer never leaves half a plan for `apply`.
/// Unbuffered, serde_json makes one `write` per token: 6 million calls and
/// 8 s for a 200,000-path plan, against 0.6 s to stdout.
fn write_plan_file(plan: &Plan, out: &Path) -> Result<()> {
    use std::io::Write as _;
    let dir = out
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if !dir.is_dir() {
        anyhow::bail!(
            "{}: cannot write plan: folder {} does not exist",
            out.display(),
            dir.display()
        );
    }
    let ctx = || format!("{}: cannot write plan", out.display());
    let tmp = tempfile::NamedTempFile::new_in(dir).with_context(ctx)?;
    let mut writer = std::io::BufWriter::with_capacity(1 << 20, tmp);
    serde_json::to_writer_pretty(&mut writer, plan).with_context(ctx)?;
    writer.write_all(b"\n").with_context(ctx)?;
    let tmp = writer
        .into_inner()
        .map_err(|e| e.into_error())
        .with_context(ctx)?;
    tmp.as_file().sync_all().with_context(ctx)?;
    tmp.persist(out).with_context(ctx)?;
    Ok(())
}

/// `storegc demo`: generates a synthetic store (a binary cache that is also
/// a CI runner: system generations, CI results, substituted and local
/// paths) in a temporary folder, or in `--keep DIR`, and plans on it.
pub fn demo(global: &GlobalArgs, args: &DemoArgs) -> Result<ExitCode> {
    if args.store_dir.is_some() || args.state_dir.is_some() {
        anyhow::bail!(
            "demo makes a store of its own: --store-dir and --state-dir do not apply (use plan)"
        );
    }
    let tmp;
    let root = match &args.keep {
        Some(dir) => dir.clone(),
        None => {
            tmp = tempfile::Builder::new().prefix("storegc-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let spec = crate::synth::SynthSpec {
        paths: args.paths,
        seed: args.seed,
        now: super::now(),
        ..crate::synth::SynthSpec::default()
    };
    let store = crate::synth::generate(&root, &spec)?;
    eprintln!(
        "storegc demo: a synthetic store of {} paths in {}{}",
        store.paths,
        store.root.display(),
        if args.keep.is_some() {
            ""
        } else {
            " (removed on exit; --keep DIR keeps it)"
        }
    );
    let settings = Settings {
        store_dir: crate::store_path::StoreDir::new(store.store_dir.display().to_string()),
        state_dir: store.state_dir.clone(),
        gc: Default::default(),
        conf_files: vec![],
        ca_derivations: false,
        warnings: vec![],
    };
    let mut policy_args = args.policy.clone();
    if policy_args.policy.is_none() {
        policy_args.policy = Some(write_demo_policy(&store)?);
    }
    let policy = resolve_policy(&policy_args)?;
    // What plain `nix-collect-garbage` would take, for comparison.
    let nix = make_plan(global, &settings, &Policy::default())?;
    eprintln!(
        "storegc demo: plain Nix GC would delete {} paths ({}), including the other hosts' systems this cache serves",
        nix.totals.paths,
        report::human_bytes(nix.totals.nar_bytes)
    );
    let plan = make_plan(global, &settings, &policy)?;
    emit(&plan, args.format)?;
    Ok(ExitCode::Success)
}

/// The demo's policy: `policies/nix-cache.toml`'s rules, with the closure
/// list naming the generated store's unrooted systems as the fleet's other
/// hosts, and the system profile inside the generated state dir.
fn write_demo_policy(store: &crate::synth::SynthStore) -> Result<std::path::PathBuf> {
    let list = store.root.join("nixos-configurations.txt");
    let mut text = String::from("# Current systems of the other hosts this cache serves\n");
    for t in &store.garbage_toplevels {
        text.push_str(t);
        text.push('\n');
    }
    std::fs::write(&list, text).with_context(|| format!("{}: cannot write", list.display()))?;
    let policy = store.root.join("demo-policy.toml");
    let body = format!(
        r#"description = "demo: binary cache + native CI runner (policies/nix-cache.toml on the generated store)"
[protect]
closure-lists = ["{}"]
[select]
origin = "local"
older-than = "14d"
[[generations]]
profile = "profiles/system"
keep-newest = 5
[auto-roots]
older-than = "14d"
match = ["{}/ci/*/result", "{}/ci/*/result-*"]
"#,
        list.display(),
        store.root.display(),
        store.root.display()
    );
    std::fs::write(&policy, body).with_context(|| format!("{}: cannot write", policy.display()))?;
    Ok(policy)
}

/// `storegc policy check FILE`.
/// A missing closure list is valid policy text but makes every `plan`
/// fail until the CI job writes it, so `check` says so.
pub fn check(file: &Path) -> Result<ExitCode> {
    let policy = policy::load_policy(file)?;
    let mut text = format!("{}: valid\n{}", file.display(), policy.describe());
    let dir = file.parent().unwrap_or(Path::new(""));
    for list in &policy.protect.closure_lists {
        let path = dir.join(&list.value);
        if !path.exists() {
            text.push_str(&format!(
                "warning: {}:{}: closure list {} does not exist (yet): `storegc plan` with this policy fails until it is written\n",
                file.display(),
                list.line,
                path.display()
            ));
        }
    }
    super::write_stdout(&text)?;
    Ok(ExitCode::Success)
}
