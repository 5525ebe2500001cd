//! Synthetic Nix stores, for benchmarks, tests and `storegc demo`.
//!
//! storegc has to be measured and tested on stores shaped like the ones it
//! is for: a binary cache that is also a CI runner, with a large shared
//! base, a few system generations and a pile of unrooted CI outputs. It also
//! has to run at sizes (10^6 paths) that nobody wants to build for real.
//! [`generate`] writes a real schema-10 store into a folder: the database,
//! the store entries, profiles and GC roots. Nix 2.8 accepts it
//! (`nix-store --verify --check-contents` is clean: every `hash` is the
//! entry's true NAR hash; `nix-store --gc --print-dead` works), so Nix can
//! be the oracle for storegc's liveness. Generating needs no Nix.
//!
//! The store comes from a small deterministic simulation, driven by a seed:
//! - a package universe: a few hubs (glibc, gcc-lib, bash, ...) that almost
//!   every package depends on, `stdenv` as a build input of everything,
//!   long dependency chains, and preferential attachment for a long-tailed
//!   fan-in; sources (fetched tarballs, `source` trees, added files),
//!   `.drv` files with their `DerivationOutputs` rows, multi-output
//!   packages (`lib`, `out`, `bin`, `dev`, `man`), most substituted (signed,
//!   `ultimate` 0 or NULL), some built here (`ultimate = 1`);
//! - system epochs: each rebuilds the reverse closure of a few changed
//!   packages and builds a new NixOS toplevel; the newest
//!   `generations` are linked from `profiles/system-N-link`, older ones are
//!   garbage;
//! - CI commits between epochs: each builds a project (or NixOS configs) on
//!   the base of its time; only each job's last `result` (and a release)
//!   is rooted, through `gcroots/auto`, so most of it is garbage.
//!
//! Edge cases Nix has to handle are included on purpose: derivations whose
//! outputs are not valid (eval-only, failed, `dev` never substituted),
//! outputs whose deriver is not valid, fixed-output sources whose newest
//! `.drv` is not their `deriver`, self references, a root pointing into a
//! store path (`.../bin/x`), a root to a path that is not valid, and a
//! regular file named after a store path.
//!
//! Registration times, link times and everything else are relative to the
//! `now` of the [`SynthSpec`]: nothing here reads the clock.

use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{symlink, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rusqlite::{params, Connection};
use sha2::Digest;

use crate::db::{origin, PathRow, Snapshot};
use crate::paths::PathId;

/// What to generate. Every field has a sensible default; the same spec
/// always gives the same store (apart from the root folder's name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthSpec {
    /// Number of valid paths, exactly (very small stores lose features).
    pub paths: usize,
    pub seed: u64,
    /// System generations still linked from `profiles/system-N-link`.
    pub generations: usize,
    /// "Now", in seconds since the epoch; all times lie before it.
    pub now: i64,
    /// Create the store entries (needed for Nix to accept the store; turn
    /// off only to benchmark database work).
    pub write_files: bool,
    /// Older system generations whose links are gone: their toplevels and
    /// what only they used are garbage.
    pub deleted_generations: usize,
    /// CI jobs (at least one is simulated). With two or more, the first
    /// one builds NixOS configurations.
    pub ci_jobs: usize,
    /// How far back the history goes.
    pub history_days: u32,
    /// Highest database id: when above the number of paths, `ValidPaths`
    /// ids are spread evenly up to it (as on a host with years of churn)
    /// instead of counting 1, 2, 3...; 0 keeps them dense.
    pub sparse_ids: u64,
    /// What `ValidPaths.narSize` holds (`hash` is always the true NAR
    /// hash of the entry as written).
    pub nar_sizes: NarSizes,
}

/// What `ValidPaths.narSize` holds in a generated store.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum NarSizes {
    /// The simulation's sizes (hundreds of bytes to hundreds of MiB, as
    /// on a real cache), so budgets, "largest first" and reports look
    /// real; the entries on disk are far smaller. [`snapshot`] gives these.
    #[default]
    Modelled,
    /// The true NAR size of each entry as written, as Nix records it.
    Content,
}

impl Default for SynthSpec {
    fn default() -> SynthSpec {
        SynthSpec {
            paths: 2_000,
            seed: 1,
            generations: 5,
            // 2026-01-01T00:00:00Z, so defaults stay reproducible.
            now: 1_767_225_600,
            write_files: true,
            deleted_generations: 2,
            ci_jobs: 4,
            history_days: 42,
            sparse_ids: 0,
            nar_sizes: NarSizes::Modelled,
        }
    }
}

/// A generated store and where its parts are.
#[derive(Debug, Clone)]
pub struct SynthStore {
    pub root: PathBuf,
    pub store_dir: PathBuf,
    pub state_dir: PathBuf,
    pub log_dir: PathBuf,
    pub conf_dir: PathBuf,
    /// Valid paths (`ValidPaths` rows).
    pub paths: usize,
    /// `Refs` rows, self references included.
    pub refs: usize,
    /// `DerivationOutputs` rows.
    pub drv_outputs: usize,
    /// Toplevels of the linked system generations, oldest first (full
    /// store paths). They are live.
    pub toplevels: Vec<String>,
    /// Toplevels of deleted generations: valid but unrooted.
    pub garbage_toplevels: Vec<String>,
    /// Store paths rooted by CI results (`gcroots/auto` -> `ci/*/result*`).
    pub ci_results: Vec<String>,
}

impl SynthStore {
    /// The environment that points Nix (and storegc) at this store.
    pub fn env(&self) -> Vec<(String, String)> {
        let s = |p: &Path| p.to_string_lossy().into_owned();
        vec![
            ("NIX_STORE_DIR".into(), s(&self.store_dir)),
            ("NIX_STATE_DIR".into(), s(&self.state_dir)),
            ("NIX_LOG_DIR".into(), s(&self.log_dir)),
            ("NIX_CONF_DIR".into(), s(&self.conf_dir)),
            ("NIX_REMOTE".into(), String::new()),
        ]
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SynthError {
    #[error("{0}: refusing to generate a store into a folder that is not empty")]
    NotEmpty(PathBuf),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{path}: cannot write the store database: {source}")]
    Sqlite {
        path: PathBuf,
        #[source]
        source: rusqlite::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> SynthError + '_ {
    move |source| SynthError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Nix's schema 10 tables and trigger, byte for byte as `nix-store --init`
/// (2.8) leaves them in `sqlite_master`.
const SCHEMA_TABLES: [&str; 4] = [
    r#"CREATE TABLE ValidPaths (
    id               integer primary key autoincrement not null,
    path             text unique not null,
    hash             text not null,
    registrationTime integer not null,
    deriver          text,
    narSize          integer,
    ultimate         integer, -- null implies "false"
    sigs             text, -- space-separated
    ca               text -- if not null, an assertion that the path is content-addressed; see ValidPathInfo
)"#,
    r#"CREATE TABLE Refs (
    referrer  integer not null,
    reference integer not null,
    primary key (referrer, reference),
    foreign key (referrer) references ValidPaths(id) on delete cascade,
    foreign key (reference) references ValidPaths(id) on delete restrict
)"#,
    r#"CREATE TRIGGER DeleteSelfRefs before delete on ValidPaths
  begin
    delete from Refs where referrer = old.id and reference = old.id;
  end"#,
    r#"CREATE TABLE DerivationOutputs (
    drv  integer not null,
    id   text not null, -- symbolic output id, usually "out"
    path text not null,
    primary key (drv, id),
    foreign key (drv) references ValidPaths(id) on delete cascade
)"#,
];

/// The secondary indexes. The two on `Refs` exist during the bulk insert:
/// referrers arrive sorted, and references cluster on a few hubs, so
/// keeping them up is cheaper than SQLite's sort afterwards (measured:
/// 19.7 s instead of 31 s for 10^6 paths). The last one is built after.
const SCHEMA_INDEXES: [&str; 3] = [
    "CREATE INDEX IndexReferrer on Refs(referrer)",
    "CREATE INDEX IndexReference on Refs(reference)",
    "CREATE INDEX IndexDerivationOutputs on DerivationOutputs(path)",
];

/// The size Nix gives `db/reserved` (`gc-reserved-space`, 8 MiB).
const RESERVED_SIZE: u64 = 8 * 1024 * 1024;

const NIX_BASE32: &[u8; 32] = b"0123456789abcdfghijklmnpqrsvwxyz";

// ---------------------------------------------------------------------------
// Randomness

/// splitmix64: tiny, fast, and good enough for shaping a graph.
#[derive(Debug, Clone)]
struct Rng(u64);

fn mix64(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

impl Rng {
    fn new(seed: u64) -> Rng {
        Rng(mix64(seed ^ 0x243f_6a88_85a3_08d3))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix64(self.0)
    }

    /// Uniform in `0..n` (`n > 0`).
    fn below(&mut self, n: usize) -> usize {
        ((self.next() as u128 * n as u128) >> 64) as usize
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }

    fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Log-uniform in `lo..hi`, rounded up to a multiple of 8 like NAR sizes.
    fn size(&mut self, lo: f64, hi: f64) -> u64 {
        let v = (lo.ln() + self.unit() * (hi.ln() - lo.ln())).exp() as u64;
        (v + 7) & !7
    }

    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// 32 pseudo-random bytes derived from `(seed, key, salt)`: hashes,
/// signatures and content addresses are functions of the path, not of the
/// simulation's random stream.
fn derived_bytes(seed: u64, key: u32, salt: u64) -> [u8; 32] {
    let mut out = [0u8; 32];
    let base = mix64(seed ^ mix64(((key as u64) << 8) | salt));
    for (i, chunk) in out.chunks_mut(8).enumerate() {
        chunk.copy_from_slice(&mix64(base.wrapping_add(i as u64)).to_le_bytes());
    }
    out
}

/// Nix's base-32 encoding (least significant bits last, alphabet without
/// e, o, u, t), as used for content addresses and `outputHash`.
fn nix_base32(bytes: &[u8], out: &mut String) {
    let len = (bytes.len() * 8).div_ceil(5);
    for n in (0..len).rev() {
        let b = n * 5;
        let (i, j) = (b / 8, b % 8);
        let lo = bytes[i] as u16 >> j;
        let hi = if i + 1 < bytes.len() {
            (bytes[i + 1] as u16) << (8 - j)
        } else {
            0
        };
        out.push(NIX_BASE32[((lo | hi) & 0x1f) as usize] as char);
    }
}

fn hex(bytes: &[u8], out: &mut String) {
    const H: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(H[(b >> 4) as usize] as char);
        out.push(H[(b & 15) as usize] as char);
    }
}

fn base64(bytes: &[u8], out: &mut String) {
    const B: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    for c in bytes.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for k in 0..4 {
            if k <= c.len() {
                out.push(B[(n >> (18 - 6 * k) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
}

// ---------------------------------------------------------------------------
// The model: valid paths in registration order, as flat vectors.

/// Index of a valid path (database id minus one).
type Id = u32;
/// Index of a basename in the name arena (valid or not).
type NameId = u32;
const NONE: u32 = u32::MAX;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Added source: `ultimate` NULL, no signatures, no deriver.
    Source,
    /// A `.drv`: like a source, with a `text:` content address.
    Derivation,
    /// Built here: `ultimate = 1`, no signatures.
    Built,
    /// Substituted: signed, `ultimate` 0 or NULL.
    Substituted,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ca {
    None,
    Text,
    Flat,
    Recursive,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Meta {
    kind: Kind,
    ca: Ca,
    dir: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Output {
    Lib,
    Out,
    Bin,
    Dev,
    Man,
}

impl Output {
    fn as_str(self) -> &'static str {
        match self {
            Output::Lib => "lib",
            Output::Out => "out",
            Output::Bin => "bin",
            Output::Dev => "dev",
            Output::Man => "man",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Builder {
    /// `<bash>/bin/bash`, or `/bin/sh` before bash exists.
    Bash(NameId),
    Fetchurl,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct DrvInfo {
    id: Id,
    /// Range in [`Model::drv_outs`].
    outs: (u32, u32),
    builder: Builder,
    fod: Ca,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum LinkKind {
    /// Symlink to `<store>/<name>[/<sub>]`.
    Store(NameId, Option<String>),
    /// Symlink to `<root>/<rel>` (absolute).
    Rooted(String),
    /// Symlink with this relative target.
    Relative(String),
    /// An empty regular file (its name is a store path basename).
    File,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct Link {
    /// Relative to the root folder.
    rel: String,
    kind: LinkKind,
    mtime: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Model {
    arena: String,
    ends: Vec<u32>,
    /// Name → valid id, or `NONE`.
    id_of: Vec<Id>,
    name: Vec<NameId>,
    time: Vec<i64>,
    deriver: Vec<NameId>,
    nar: Vec<u64>,
    meta: Vec<Meta>,
    /// Compressed rows; each row sorted, self reference included.
    ref_start: Vec<u32>,
    refs: Vec<Id>,
    /// `(drv, output, path)`, grouped by drv in id order.
    drv_outs: Vec<(Id, Output, NameId)>,
    /// One per valid `.drv`, in id order.
    drvs: Vec<DrvInfo>,
    links: Vec<Link>,
    toplevels: Vec<Id>,
    garbage_toplevels: Vec<Id>,
    ci_results: Vec<Id>,
}

impl Model {
    fn len(&self) -> usize {
        self.name.len()
    }

    fn get(&self, n: NameId) -> &str {
        let i = n as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    fn base(&self, id: Id) -> &str {
        self.get(self.name[id as usize])
    }

    fn refs_of(&self, id: Id) -> &[Id] {
        let i = id as usize;
        &self.refs[self.ref_start[i] as usize..self.ref_start[i + 1] as usize]
    }

    fn drv_info(&self, id: Id) -> Option<&DrvInfo> {
        self.drvs
            .binary_search_by_key(&id, |d| d.id)
            .ok()
            .map(|i| &self.drvs[i])
    }

    fn is_drv(&self, id: Id) -> bool {
        self.meta[id as usize].kind == Kind::Derivation
    }
}

// ---------------------------------------------------------------------------
// The simulation

/// A derivation as built once: its `.drv` (valid or not) and outputs.
#[derive(Debug, Clone, Default)]
struct Build {
    drv: Option<Id>,
    outs: Vec<(Output, NameId, Option<Id>)>,
}

impl Build {
    fn out(&self, o: Output) -> Option<Id> {
        self.outs.iter().find(|x| x.0 == o).and_then(|x| x.2)
    }

    /// What dependents reference at run time: `lib`, else `out`.
    fn handle(&self) -> Option<Id> {
        self.out(Output::Lib).or_else(|| self.out(Output::Out))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Src {
    None,
    Tarball,
    GitHub,
    Local,
}

#[derive(Debug, Clone)]
struct Pkg {
    pname: String,
    version: Option<(u16, u16, u16)>,
    deps: Vec<u32>,
    runtime: Vec<u32>,
    outputs: &'static [Output],
    src: Src,
    patch: bool,
    app: bool,
    in_system: bool,
    /// Substituted without its `.drv`: the deriver is never valid.
    drvless: bool,
    self_ref: bool,
    dir: bool,
}

impl Pkg {
    fn full_name(&self) -> String {
        match self.version {
            Some((a, b, c)) => format!("{}-{a}.{b}.{c}", self.pname),
            None => self.pname.clone(),
        }
    }

    /// Rough number of paths one build adds (for rebuild budgets).
    fn cost(&self, changed: bool) -> usize {
        if self.drvless {
            return self.outputs.len();
        }
        let src = match (changed, self.src) {
            (false, _) | (true, Src::None) => 0,
            (true, Src::Local) => 1,
            (true, _) => 2,
        };
        1 + self.outputs.len() + src + usize::from(changed && self.patch)
    }
}

#[derive(Debug, Clone, Default)]
struct PkgState {
    build: Build,
    src_drv: Option<Id>,
    src_fod: Option<Build>,
    src_local: Option<Id>,
    patch: Option<Id>,
}

struct Plan<'a> {
    name: &'a str,
    outputs: &'a [Output],
    register_drv: bool,
    drv_refs: Vec<Id>,
    builder: Builder,
    kind: Kind,
    fod: Ca,
    /// Outputs produced at all (false: eval-only or failed).
    built: bool,
    runtime: Vec<Id>,
    dev_refs: Vec<Id>,
    self_ref: bool,
    dir: bool,
    /// Upper bound of the main output's NAR size.
    size: f64,
}

struct Host {
    name: &'static str,
    system: Vec<u32>,
    path: Option<(usize, Build)>,
}

struct Job {
    name: String,
    nixos: bool,
    deps: Vec<u32>,
    runtime: Vec<u32>,
    hosts: Vec<Host>,
    vendor: Option<Build>,
    commits: u32,
    last_ok: Option<(Id, i64)>,
    release: Option<(Id, i64)>,
}

/// `(glibc-like hub) name, version, outputs, P(dependency), P(runtime)`.
type Hub = (&'static str, &'static str, &'static [Output], f64, f64);
const HUBS: [Hub; 10] = {
    use Output::*;
    [
        ("glibc", "2.40-66", &[Out, Bin, Dev], 0.97, 0.97),
        ("gcc", "13.3.0", &[Lib, Out, Man], 0.7, 0.8),
        ("bash", "5.2p37", &[Out, Dev, Man], 0.5, 0.4),
        ("coreutils", "9.5", &[Out, Man], 0.35, 0.3),
        ("zlib", "1.3.1", &[Out, Dev], 0.3, 0.9),
        ("openssl", "3.3.2", &[Out, Bin, Dev, Man], 0.2, 0.9),
        ("xz", "5.6.3", &[Out, Bin, Dev, Man], 0.12, 0.9),
        ("ncurses", "6.4.20221231", &[Out, Dev, Man], 0.1, 0.9),
        ("perl", "5.40.0", &[Out, Man], 0.1, 0.3),
        ("python3", "3.12.8", &[Out], 0.15, 0.6),
    ]
};
const BASH: u32 = 2;
const COREUTILS: u32 = 3;

const OUTPUT_SETS: [(&[Output], f64); 5] = {
    use Output::*;
    [
        (&[Out], 0.62),
        (&[Out, Dev], 0.15),
        (&[Lib, Out, Dev], 0.1),
        (&[Out, Man], 0.08),
        (&[Lib, Out, Bin, Dev, Man], 0.05),
    ]
};

const SYLLABLES: [&str; 24] = [
    "ba", "cor", "dex", "fen", "gal", "hy", "jo", "kra", "lum", "mo", "nex", "pi", "qua", "ros",
    "sul", "ta", "vo", "wex", "yl", "zen", "ar", "el", "in", "us",
];

const JOB_NAMES: [&str; 6] = [
    "nixos-exporter",
    "homelab-deploy",
    "alerttonotify",
    "labmon",
    "nix-cache-tools",
    "gunter-site",
];

/// Salts for [`derived_bytes`].
const SALT_CA: u64 = 2;
const SALT_SIG: u64 = 3;
const SALT_SIG2: u64 = 4;
const SALT_FLAGS: u64 = 5;

const HOUR: i64 = 3600;

struct Sim<'a> {
    spec: &'a SynthSpec,
    rng: Rng,
    m: Model,
    cap: usize,
    clock: i64,
    /// `(t_start, t_end, count at start, budget)`: times follow progress.
    pace: (i64, i64, usize, usize),
    epoch: usize,
    pkgs: Vec<Pkg>,
    libs: Vec<u32>,
    apps: Vec<u32>,
    system: Vec<u32>,
    rdeps: Vec<Vec<u32>>,
    cur: Vec<PkgState>,
    stdenv: u32,
    kernel: u32,
    chain_left: usize,
    /// P(an app is in the system closure): about 1,500 apps at any size,
    /// so `system-path` keeps a NixOS-like fan-out.
    app_in_system: f64,
    builder_src: Option<Id>,
    jobs: Vec<Job>,
    /// An output name that never became valid (for a dangling root).
    invalid_example: NameId,
    sys_toplevels: Vec<(u32, Id, i64)>,
    pinned: Option<(Id, i64)>,
    tool: Option<(Id, String, i64)>,
    file_root: Option<(Id, i64)>,
}

impl<'a> Sim<'a> {
    fn new(spec: &'a SynthSpec) -> Sim<'a> {
        let mut m = Model::default();
        m.ref_start.push(0);
        let t0 = spec.now - spec.history_days as i64 * 86_400;
        Sim {
            spec,
            rng: Rng::new(spec.seed),
            m,
            cap: spec.paths.min(NONE as usize - 1),
            clock: t0,
            pace: (t0, t0, 0, 1),
            epoch: 0,
            pkgs: Vec::new(),
            libs: Vec::new(),
            apps: Vec::new(),
            system: Vec::new(),
            rdeps: Vec::new(),
            cur: Vec::new(),
            stdenv: 0,
            kernel: 0,
            chain_left: 0,
            // Apps are ~15% of packages; a package adds ~3 paths; the base
            // is half the store.
            app_in_system: (1_500.0 / (spec.paths as f64 * 0.5 / 3.0 * 0.15).max(1.0)).min(0.6),
            builder_src: None,
            jobs: Vec::new(),
            invalid_example: NONE,
            sys_toplevels: Vec::new(),
            pinned: None,
            tool: None,
            file_root: None,
        }
    }

    fn full(&self) -> bool {
        self.m.len() >= self.cap
    }

    fn set_pace(&mut self, t_start: i64, t_end: i64, budget: usize) {
        self.pace = (t_start, t_end.max(t_start), self.m.len(), budget.max(1));
    }

    /// The registration time of the next path: follows the pace, never
    /// goes back, never passes `now`.
    fn tick(&mut self) -> i64 {
        let (t0, t1, c0, budget) = self.pace;
        let done = (self.m.len() - c0) as f64 / budget as f64;
        let t = t0 + ((t1 - t0) as f64 * done.min(1.0)) as i64 + self.rng.below(3) as i64;
        self.clock = self.clock.max(t.min(self.spec.now));
        self.clock
    }

    /// 32 random characters of Nix's base-32 alphabet.
    fn hash_part(&mut self, out: &mut String) {
        // 12 characters (60 bits) from each of three words.
        let bits = [self.rng.next(), self.rng.next(), self.rng.next()];
        for k in 0..32 {
            let v = (bits[k / 12] >> ((k % 12) * 5)) & 31;
            out.push(NIX_BASE32[v as usize] as char);
        }
    }

    /// A new basename `<random hash>-<name>`.
    fn name(&mut self, name: &str) -> NameId {
        let mut arena = std::mem::take(&mut self.m.arena);
        self.hash_part(&mut arena);
        self.m.arena = arena;
        self.m.arena.push('-');
        self.m.arena.push_str(name);
        self.m.ends.push(self.m.arena.len() as u32);
        self.m.id_of.push(NONE);
        (self.m.ends.len() - 1) as NameId
    }

    /// Registers a valid path; `None` once the store is full. References
    /// must be to earlier paths, which keeps the graph acyclic.
    fn emit(
        &mut self,
        name: NameId,
        meta: Meta,
        deriver: NameId,
        refs: &mut Vec<Id>,
        self_ref: bool,
        nar: u64,
    ) -> Option<Id> {
        if self.full() {
            return None;
        }
        let id = self.m.len() as Id;
        if self_ref {
            refs.push(id);
        }
        refs.sort_unstable();
        refs.dedup();
        debug_assert!(refs.iter().all(|&r| r <= id));
        self.m.refs.extend_from_slice(refs);
        self.m.ref_start.push(self.m.refs.len() as u32);
        self.m.name.push(name);
        self.m.id_of[name as usize] = id;
        let t = self.tick();
        self.m.time.push(t);
        self.m.deriver.push(deriver);
        self.m.nar.push(nar);
        self.m.meta.push(meta);
        Some(id)
    }

    fn source(&mut self, name: &str, dir: bool) -> Option<Id> {
        let n = self.name(name);
        let nar = if dir {
            self.rng.size(4e3, 4e7)
        } else {
            self.rng.size(600.0, 6e4)
        };
        let meta = Meta {
            kind: Kind::Source,
            ca: Ca::Recursive,
            dir,
        };
        self.emit(n, meta, NONE, &mut Vec::new(), false, nar)
    }

    fn bash_builder(&self) -> Builder {
        match self.cur.get(BASH as usize) {
            Some(s) => Builder::Bash(
                s.build
                    .outs
                    .iter()
                    .find(|o| o.0 == Output::Out)
                    .map_or(NONE, |o| o.1),
            ),
            None => Builder::Bash(NONE),
        }
    }

    /// Registers a derivation and whichever of its outputs are valid.
    fn derivation(&mut self, plan: Plan) -> Build {
        let drv_name = self.name(&format!("{}.drv", plan.name));
        let outs: Vec<(Output, NameId)> = plan
            .outputs
            .iter()
            .map(|&o| {
                let n = if o == Output::Out {
                    plan.name.to_string()
                } else {
                    format!("{}-{}", plan.name, o.as_str())
                };
                (o, self.name(&n))
            })
            .collect();
        let mut b = Build::default();
        if plan.register_drv {
            let mut refs = plan.drv_refs;
            let nar = self.rng.size(900.0, 9e3);
            let meta = Meta {
                kind: Kind::Derivation,
                ca: Ca::Text,
                dir: false,
            };
            b.drv = self.emit(drv_name, meta, NONE, &mut refs, false, nar);
            if let Some(d) = b.drv {
                let start = self.m.drv_outs.len() as u32;
                self.m.drv_outs.extend(outs.iter().map(|&(o, n)| (d, o, n)));
                self.m.drvs.push(DrvInfo {
                    id: d,
                    outs: (start, self.m.drv_outs.len() as u32),
                    builder: plan.builder,
                    fod: plan.fod,
                });
            }
        }
        let ca = plan.fod;
        for (o, n) in outs {
            let valid = plan.built
                && match o {
                    Output::Lib | Output::Out | Output::Bin => true,
                    Output::Dev => plan.kind == Kind::Built || self.rng.chance(0.4),
                    Output::Man => plan.kind == Kind::Built || self.rng.chance(0.3),
                };
            let mut id = None;
            if valid {
                let sib = |o: Output| b.out(o);
                let mut refs: Vec<Id> = match o {
                    Output::Lib | Output::Out => plan.runtime.clone(),
                    Output::Bin => plan.runtime.iter().take(3).copied().collect(),
                    Output::Dev => plan.dev_refs.clone(),
                    Output::Man => Vec::new(),
                };
                let siblings: &[Output] = match o {
                    Output::Out => &[Output::Lib],
                    Output::Bin => &[Output::Lib, Output::Out],
                    Output::Dev => &[Output::Lib, Output::Out, Output::Bin],
                    _ => &[],
                };
                refs.extend(siblings.iter().filter_map(|&s| sib(s)));
                let is_handle =
                    o == Output::Lib || (o == Output::Out && b.out(Output::Lib).is_none());
                let nar = match o {
                    Output::Lib | Output::Out => self.rng.size(8e3, plan.size),
                    Output::Bin => self.rng.size(8e3, 8e6),
                    Output::Dev => self.rng.size(4e3, 2e6),
                    Output::Man => self.rng.size(4e3, 1e6),
                };
                let meta = Meta {
                    kind: plan.kind,
                    ca,
                    dir: plan.dir && o != Output::Man,
                };
                id = self.emit(
                    n,
                    meta,
                    drv_name,
                    &mut refs,
                    plan.self_ref && is_handle,
                    nar,
                );
            }
            if id.is_none() && self.invalid_example == NONE && !self.full() {
                self.invalid_example = n;
            }
            b.outs.push((o, n, id));
        }
        b
    }

    /// A fixed-output source derivation (`name.tar.gz` or `source`).
    fn fetch(&mut self, name: &str, mode: Ca, local: bool) -> Build {
        let (builder, drv_refs) = if mode == Ca::Flat {
            (Builder::Fetchurl, Vec::new())
        } else {
            let mut refs = self.stdenv_drv().into_iter().collect::<Vec<_>>();
            refs.extend(self.builder_src);
            (self.bash_builder(), refs)
        };
        self.derivation(Plan {
            name,
            outputs: &[Output::Out],
            register_drv: true,
            drv_refs,
            builder,
            kind: if local {
                Kind::Built
            } else {
                Kind::Substituted
            },
            fod: mode,
            built: true,
            runtime: Vec::new(),
            dev_refs: Vec::new(),
            self_ref: false,
            dir: mode == Ca::Recursive,
            size: 5e7,
        })
    }

    /// A new `.drv` for a fixed-output source whose output is already
    /// valid: same output path, whose `deriver` stays the old `.drv`.
    fn refetch(&mut self, prev: &Build, mode: Ca) -> Build {
        let Some(&(_, out_name, out_id)) = prev.outs.first() else {
            return prev.clone();
        };
        let base = crate::store_path::name_of(self.m.get(out_name)).to_string();
        let drv_name = self.name(&format!("{base}.drv"));
        let mut refs = Vec::new();
        let builder = if mode == Ca::Flat {
            Builder::Fetchurl
        } else {
            refs.extend(self.stdenv_drv());
            refs.extend(self.builder_src);
            self.bash_builder()
        };
        let nar = self.rng.size(900.0, 9e3);
        let meta = Meta {
            kind: Kind::Derivation,
            ca: Ca::Text,
            dir: false,
        };
        let Some(d) = self.emit(drv_name, meta, NONE, &mut refs, false, nar) else {
            return prev.clone();
        };
        let start = self.m.drv_outs.len() as u32;
        self.m.drv_outs.push((d, Output::Out, out_name));
        self.m.drvs.push(DrvInfo {
            id: d,
            outs: (start, start + 1),
            builder,
            fod: mode,
        });
        Build {
            drv: Some(d),
            outs: vec![(Output::Out, out_name, out_id)],
        }
    }

    fn stdenv_drv(&self) -> Option<Id> {
        self.cur.get(self.stdenv as usize).and_then(|s| s.build.drv)
    }

    fn handle(&self, p: u32) -> Option<Id> {
        self.cur.get(p as usize).and_then(|s| s.build.handle())
    }

    fn random_pname(&mut self, app: bool) -> String {
        let a = *self.rng.pick(&SYLLABLES);
        let b = *self.rng.pick(&SYLLABLES);
        if app {
            let c = *self.rng.pick(&SYLLABLES);
            return format!("{a}{b}{c}");
        }
        match self.rng.below(20) {
            0..=5 => format!("lib{a}{b}"),
            6..=10 => format!("python3.12-{a}{b}"),
            11..=12 => format!("perl5.40.0-{}-{}", capitalized(a), capitalized(b)),
            _ => format!("{a}{b}"),
        }
    }

    fn add_pkg(&mut self, pkg: Pkg) -> u32 {
        let idx = self.pkgs.len() as u32;
        for &d in &pkg.deps {
            self.rdeps[d as usize].push(idx);
        }
        if pkg.app {
            self.apps.push(idx);
        } else {
            self.libs.push(idx);
        }
        if pkg.in_system {
            self.system.push(idx);
        }
        self.pkgs.push(pkg);
        self.rdeps.push(Vec::new());
        self.cur.push(PkgState::default());
        idx
    }

    fn add_hubs(&mut self) {
        for (i, &(pname, version, outputs, _, _)) in HUBS.iter().enumerate() {
            let mut deps = Vec::new();
            if i > 0 {
                deps.push(0);
            }
            for j in 1..i {
                if self.rng.chance(0.3) {
                    deps.push(j as u32);
                }
            }
            let pname = format!("{pname}-{version}");
            let self_ref = i == 0 || self.rng.chance(0.3);
            self.add_pkg(Pkg {
                pname,
                version: None,
                runtime: deps.clone(),
                deps,
                outputs,
                src: Src::Tarball,
                patch: i == 0,
                app: false,
                in_system: false,
                drvless: false,
                self_ref,
                dir: true,
            });
        }
        let hubs: Vec<u32> = (0..HUBS.len() as u32).collect();
        self.stdenv = self.add_pkg(Pkg {
            pname: "stdenv-linux".into(),
            version: None,
            deps: hubs.clone(),
            runtime: hubs,
            outputs: &[Output::Out],
            src: Src::None,
            patch: false,
            app: false,
            in_system: false,
            drvless: false,
            self_ref: false,
            dir: true,
        });
        let kernel = self.new_pkg(false);
        let k = &mut self.pkgs[kernel as usize];
        k.pname = "linux".into();
        k.version = Some((6, 6, 60));
        k.outputs = &[Output::Out, Output::Dev];
        if !k.in_system {
            k.in_system = true;
            self.system.push(kernel);
        }
        self.kernel = kernel;
    }

    /// Draws a package's recipe: hubs by their odds, stdenv always, and a
    /// few more libraries (recent ones, copies of others' dependencies for
    /// preferential attachment, uniform ones), sometimes in a long chain.
    fn new_pkg(&mut self, app: bool) -> u32 {
        let mut deps = vec![self.stdenv];
        let mut runtime = Vec::new();
        for (i, hub) in HUBS.iter().enumerate() {
            if self.rng.chance(hub.3) {
                deps.push(i as u32);
                if self.rng.chance(hub.4) {
                    runtime.push(i as u32);
                }
            }
        }
        // Libraries after the hubs and stdenv (pushed in index order).
        let first = (HUBS.len() + 1).min(self.libs.len());
        let mut others = Vec::new();
        if self.libs.len() > first {
            let regular = &self.libs[first..];
            if !app {
                if self.chain_left > 0 {
                    self.chain_left -= 1;
                    others.push(*regular.last().unwrap_or(&self.stdenv));
                } else if self.rng.chance(0.01) {
                    self.chain_left = 20 + self.rng.below(100);
                }
            }
            let k = if self.rng.chance(0.02) {
                10 + self.rng.below(40)
            } else {
                let mut k = usize::from(app) * 3;
                while k < 12 && self.rng.chance(0.65) {
                    k += 1;
                }
                k
            };
            for _ in 0..k {
                let r = self.rng.unit();
                let d = if r < 0.35 {
                    regular[regular.len() - 1 - self.rng.below(regular.len().min(16))]
                } else if r < 0.65 {
                    let j = *self.rng.pick(regular);
                    let cand: Vec<u32> = self.pkgs[j as usize]
                        .deps
                        .iter()
                        .copied()
                        .filter(|&d| d > self.stdenv)
                        .collect();
                    if cand.is_empty() {
                        j
                    } else {
                        *self.rng.pick(&cand)
                    }
                } else {
                    *self.rng.pick(regular)
                };
                others.push(d);
            }
        }
        others.sort_unstable();
        others.dedup();
        for &d in &others {
            deps.push(d);
            if self.rng.chance(0.85) {
                runtime.push(d);
            }
        }
        let r = self.rng.unit();
        let mut acc = 0.0;
        let mut outputs = OUTPUT_SETS[0].0;
        if app {
            outputs = if self.rng.chance(0.2) {
                &[Output::Out, Output::Man]
            } else {
                &[Output::Out]
            };
        } else {
            for &(set, p) in &OUTPUT_SETS {
                acc += p;
                if r < acc {
                    outputs = set;
                    break;
                }
            }
        }
        let src = match self.rng.below(20) {
            0..=10 => Src::Tarball,
            11..=14 => Src::GitHub,
            15..=16 => Src::Local,
            _ => Src::None,
        };
        let in_system = if app {
            self.rng.chance(self.app_in_system)
        } else {
            self.rng.chance(self.app_in_system / 20.0)
        };
        let pname = self.random_pname(app);
        let version = Some((
            self.rng.below(5) as u16,
            self.rng.below(30) as u16,
            self.rng.below(12) as u16,
        ));
        let pkg = Pkg {
            pname,
            version,
            deps,
            runtime,
            outputs,
            src,
            patch: self.rng.chance(0.12),
            app,
            in_system,
            drvless: app && !in_system && self.rng.chance(0.4),
            self_ref: self.rng.chance(0.25),
            dir: app || self.rng.chance(0.2),
        };
        self.add_pkg(pkg)
    }

    /// Builds (or rebuilds) package `p` against the current builds of its
    /// dependencies. `changed`: its own version moved (new sources).
    fn build_pkg(&mut self, p: u32, changed: bool, local_p: f64) {
        let pi = p as usize;
        let first = self.cur[pi].build.outs.is_empty();
        let changed = changed || first;
        if changed && !first {
            if let Some((a, b, c)) = self.pkgs[pi].version {
                self.pkgs[pi].version = Some(if self.rng.chance(0.8) {
                    (a, b, c + 1)
                } else {
                    (a, b + 1, 0)
                });
            }
        }
        let pkg = self.pkgs[pi].clone();
        let name = pkg.full_name();
        let local = !pkg.drvless && self.rng.chance(local_p);
        let mut st = std::mem::take(&mut self.cur[pi]);
        let mut drv_refs = Vec::new();
        if !pkg.drvless {
            match pkg.src {
                Src::None => {}
                Src::Tarball | Src::GitHub => {
                    let mode = if pkg.src == Src::Tarball {
                        Ca::Flat
                    } else {
                        Ca::Recursive
                    };
                    let fod = match st.src_fod.take() {
                        Some(prev) if !changed => {
                            if self.rng.chance(0.2) {
                                self.refetch(&prev, mode)
                            } else {
                                prev
                            }
                        }
                        _ => {
                            let n = if mode == Ca::Flat {
                                format!("{name}.tar.gz")
                            } else {
                                "source".to_string()
                            };
                            let fetched_here = self.rng.chance(0.3);
                            self.fetch(&n, mode, fetched_here)
                        }
                    };
                    st.src_drv = fod.drv;
                    st.src_fod = Some(fod);
                }
                Src::Local => {
                    if changed {
                        st.src_local = self.source("source", true);
                    }
                }
            }
            if changed && pkg.patch {
                let a = *self.rng.pick(&SYLLABLES);
                st.patch = self.source(&format!("fix-{a}-build.patch"), false);
            }
            drv_refs.extend(
                st.src_drv
                    .into_iter()
                    .chain(st.src_local)
                    .chain(st.patch)
                    .chain(self.builder_src),
            );
            drv_refs.extend(
                pkg.deps
                    .iter()
                    .filter_map(|&d| self.cur[d as usize].build.drv),
            );
        }
        let runtime: Vec<Id> = pkg.runtime.iter().filter_map(|&d| self.handle(d)).collect();
        let mut dev_refs = Vec::new();
        for &d in &pkg.runtime {
            if let Some(dev) = self.cur[d as usize].build.out(Output::Dev) {
                if self.rng.chance(0.3) {
                    dev_refs.push(dev);
                }
            }
        }
        let eval_only = pkg.app && !pkg.in_system && !pkg.drvless && self.rng.chance(0.08);
        let builder = self.bash_builder();
        let hub = pi < HUBS.len();
        st.build = self.derivation(Plan {
            name: &name,
            outputs: pkg.outputs,
            register_drv: !pkg.drvless,
            drv_refs,
            builder,
            kind: if local {
                Kind::Built
            } else {
                Kind::Substituted
            },
            fod: Ca::None,
            built: !eval_only,
            runtime,
            dev_refs,
            self_ref: pkg.self_ref,
            dir: pkg.dir,
            size: if hub { 2e8 } else { 5e7 },
        });
        self.cur[pi] = st;
    }

    /// Epoch 0: the whole base, substituted for the most part.
    fn base(&mut self, target: usize, t: i64) {
        self.set_pace(t, t + 6 * HOUR, target.saturating_sub(self.m.len()));
        self.builder_src = self.source("default-builder.sh", false);
        self.add_hubs();
        for p in 0..self.pkgs.len() as u32 {
            self.build_pkg(p, true, 0.1);
        }
        while self.m.len() < target && !self.full() {
            let app = self.rng.chance(0.15);
            let p = self.new_pkg(app);
            self.build_pkg(p, true, 0.1);
        }
        // A pinned old build (direct root) and a root into an app's tree.
        let regular: Vec<u32> = self
            .libs
            .iter()
            .copied()
            .filter(|&l| l > self.kernel)
            .collect();
        if !regular.is_empty() {
            let l = *self.rng.pick(&regular);
            self.pinned = self.handle(l).map(|id| (id, self.m.time[id as usize]));
        }
        let apps: Vec<u32> = self
            .apps
            .iter()
            .copied()
            .filter(|&a| self.handle(a).is_some())
            .collect();
        if !apps.is_empty() {
            let a = *self.rng.pick(&apps);
            let id = self.handle(a).unwrap_or(0);
            self.tool = Some((
                id,
                self.pkgs[a as usize].pname.clone(),
                self.m.time[id as usize],
            ));
        }
    }

    /// A system epoch after the first: the reverse closure of a few
    /// changed packages is rebuilt (picked from the top of the graph,
    /// each closure must fit in `budget` paths), in dependency order.
    ///
    /// Cost: O(attempts * budget) for the closure searches plus the builds.
    fn bump(&mut self, budget: usize, t: i64) {
        self.set_pace(t, t + 2 * HOUR, budget);
        let n = self.pkgs.len();
        let first = self.kernel as usize + 1;
        if n <= first {
            return;
        }
        let mut marked = vec![false; n];
        let mut changed = vec![false; n];
        let mut stamp = vec![0u32; n];
        let mut total = 0usize;
        for attempt in 1..=400u32 {
            if total >= budget {
                break;
            }
            let u = self.rng.unit();
            let c = n - 1 - ((n - first) as f64 * u * u * u) as usize;
            if marked[c] {
                continue;
            }
            let mut stack = vec![c as u32];
            let mut seen = vec![c as u32];
            stamp[c] = attempt;
            let mut cost = self.pkgs[c].cost(true);
            let mut fits = true;
            while let Some(x) = stack.pop() {
                for &r in &self.rdeps[x as usize] {
                    let ri = r as usize;
                    if stamp[ri] != attempt && !marked[ri] {
                        stamp[ri] = attempt;
                        cost += self.pkgs[ri].cost(false);
                        seen.push(r);
                        stack.push(r);
                    }
                }
                if total + cost > budget + budget / 8 + 4 {
                    fits = false;
                    break;
                }
            }
            if fits {
                for &s in &seen {
                    marked[s as usize] = true;
                }
                changed[c] = true;
                total += cost;
            }
        }
        for p in 0..n {
            if marked[p] && !self.full() {
                self.build_pkg(p as u32, changed[p], 0.15);
            }
        }
    }

    /// `system-path` (or `path`, already built for this epoch), `etc` and a
    /// toplevel, built here from the current builds of `pkgs`. Returns the
    /// toplevel and the `system-path` builds.
    fn system_closure(&mut self, host: &str, pkgs: &[u32], path: Option<&Build>) -> (Build, Build) {
        let builder = self.bash_builder();
        let drvs = |s: &Self, ps: &[u32]| -> Vec<Id> {
            ps.iter()
                .filter_map(|&p| s.cur[p as usize].build.drv)
                .chain(s.builder_src)
                .collect()
        };
        let plan =
            |name, drv_refs, runtime, size| local_plan(name, builder, drv_refs, runtime, size);
        let sp = match path {
            Some(b) => b.clone(),
            None => {
                let runtime = pkgs.iter().filter_map(|&p| self.handle(p)).collect();
                let p = plan("system-path", drvs(self, pkgs), runtime, 2e6);
                self.derivation(p)
            }
        };
        let etc_pkgs = [BASH, COREUTILS, self.kernel];
        let runtime = etc_pkgs.iter().filter_map(|&p| self.handle(p)).collect();
        let etc = self.derivation(plan("etc", drvs(self, &etc_pkgs), runtime, 2e5));
        let date = civil_date(self.clock);
        let rev: u32 = self.rng.next() as u32 >> 4;
        let name = format!("nixos-system-{host}-24.11.{date}.{rev:07x}");
        let mut drv_refs: Vec<Id> = [sp.drv, etc.drv, self.cur[self.kernel as usize].build.drv]
            .into_iter()
            .flatten()
            .collect();
        drv_refs.extend(self.builder_src);
        let runtime = [
            sp.handle(),
            etc.handle(),
            self.handle(self.kernel),
            self.handle(BASH),
        ]
        .into_iter()
        .flatten()
        .collect();
        let top = self.derivation(local_plan(&name, builder, drv_refs, runtime, 6e4));
        (top, sp)
    }

    fn ci_jobs(&mut self) {
        let n = self.spec.ci_jobs.max(1);
        let regular: Vec<u32> = self
            .libs
            .iter()
            .copied()
            .filter(|&l| l > self.stdenv)
            .collect();
        for j in 0..n {
            let nixos = n >= 2 && j == 0;
            let name = if nixos {
                "nixos-servers".to_string()
            } else {
                match JOB_NAMES.get(j - usize::from(n >= 2)) {
                    Some(s) => s.to_string(),
                    None => format!("project{j}"),
                }
            };
            let mut deps = vec![self.stdenv, 0];
            let mut runtime = vec![0];
            if !regular.is_empty() {
                for _ in 0..3 + self.rng.below(12) {
                    let d = *self.rng.pick(&regular);
                    deps.push(d);
                    if self.rng.chance(0.7) {
                        runtime.push(d);
                    }
                }
            }
            deps.sort_unstable();
            deps.dedup();
            runtime.sort_unstable();
            runtime.dedup();
            let mut hosts = Vec::new();
            if nixos {
                for host in ["ns1", "http-proxy"] {
                    let mut system: Vec<u32> = self
                        .system
                        .iter()
                        .copied()
                        .filter(|_| self.rng.chance(0.5))
                        .collect();
                    system.push(self.kernel);
                    system.sort_unstable();
                    system.dedup();
                    hosts.push(Host {
                        name: host,
                        system,
                        path: None,
                    });
                }
            }
            self.jobs.push(Job {
                name,
                nixos,
                deps,
                runtime,
                hosts,
                vendor: None,
                commits: 0,
                last_ok: None,
                release: None,
            });
        }
    }

    /// One CI commit of job `j`: a new source, the project's build (or the
    /// NixOS configs), tests, sometimes a container image; 5% fail.
    fn commit(&mut self, j: usize) {
        self.jobs[j].commits += 1;
        let src = self.source("source", true);
        let t = self.clock;
        let ok = if self.jobs[j].nixos {
            let mut hosts = std::mem::take(&mut self.jobs[j].hosts);
            let mut first = None;
            for h in &mut hosts {
                let cached = h
                    .path
                    .as_ref()
                    .filter(|(e, _)| *e == self.epoch)
                    .map(|(_, b)| b.clone());
                let (top, sp) = self.system_closure(h.name, &h.system, cached.as_ref());
                h.path = Some((self.epoch, sp));
                first = first.or(top.handle());
            }
            self.jobs[j].hosts = hosts;
            first
        } else {
            let job = &self.jobs[j];
            let (name, commits, no_vendor) = (job.name.clone(), job.commits, job.vendor.is_none());
            if no_vendor || self.rng.chance(1.0 / 6.0) {
                let local = self.rng.chance(0.7);
                let v = self.fetch(&format!("{name}-vendor"), Ca::Recursive, local);
                self.jobs[j].vendor = Some(v);
            }
            let job = &self.jobs[j];
            let mut drv_refs: Vec<Id> = job
                .deps
                .iter()
                .filter_map(|&d| self.cur[d as usize].build.drv)
                .collect();
            drv_refs.extend(src.into_iter().chain(self.builder_src));
            drv_refs.extend(job.vendor.as_ref().and_then(|v| v.drv));
            let runtime: Vec<Id> = job.runtime.iter().filter_map(|&d| self.handle(d)).collect();
            let failed = self.rng.chance(0.05);
            let builder = self.bash_builder();
            let full = format!("{name}-0.{}.{}", commits / 50, commits % 50);
            let self_ref = self.rng.chance(0.1);
            let app = self.derivation(Plan {
                name: &full,
                outputs: &[Output::Out],
                register_drv: true,
                drv_refs: drv_refs.clone(),
                builder,
                kind: Kind::Built,
                fod: Ca::None,
                built: !failed,
                runtime,
                dev_refs: Vec::new(),
                self_ref,
                dir: true,
                size: 4e7,
            });
            if !failed {
                let mut test_refs = drv_refs;
                test_refs.extend(app.drv);
                let runtime = app
                    .handle()
                    .into_iter()
                    .filter(|_| self.rng.chance(0.5))
                    .collect();
                self.derivation(Plan {
                    name: &format!("{name}-tests-0.{}.{}", commits / 50, commits % 50),
                    outputs: &[Output::Out],
                    register_drv: true,
                    drv_refs: test_refs,
                    builder,
                    kind: Kind::Built,
                    fod: Ca::None,
                    built: true,
                    runtime,
                    dev_refs: Vec::new(),
                    self_ref: false,
                    dir: false,
                    size: 1e5,
                });
                if self.rng.chance(0.3) {
                    let drv_refs = app.drv.into_iter().chain(self.builder_src).collect();
                    self.derivation(Plan {
                        name: &format!("docker-image-{name}.tar.gz"),
                        outputs: &[Output::Out],
                        register_drv: true,
                        drv_refs,
                        builder,
                        kind: Kind::Built,
                        fod: Ca::None,
                        built: true,
                        runtime: Vec::new(),
                        dev_refs: Vec::new(),
                        self_ref: false,
                        dir: false,
                        size: 3e8,
                    });
                }
            }
            app.handle()
        };
        if let Some(id) = ok {
            if self.file_root.is_none() && !self.jobs[j].nixos {
                self.file_root = Some((id, t));
            }
            let job = &mut self.jobs[j];
            if let Some(prev) = job.last_ok.replace((id, t)) {
                // Reservoir-sample one older success as the "release".
                if self.rng.below(job.commits as usize) == 0 || job.release.is_none() {
                    job.release = Some(prev);
                }
            }
        }
    }

    /// CI commits from `t_start` to `t_end` until the store holds `target`
    /// paths.
    fn ci_slice(&mut self, target: usize, t_start: i64, t_end: i64) {
        self.set_pace(t_start, t_end, target.saturating_sub(self.m.len()));
        let n = self.jobs.len();
        while self.m.len() < target && !self.full() {
            // The NixOS job commits less often than the projects.
            let j = self.rng.below(n);
            if self.jobs[j].nixos && self.rng.chance(0.6) {
                continue;
            }
            self.commit(j);
        }
    }

    fn run(mut self) -> Model {
        let spec = self.spec;
        let span = spec.history_days as i64 * 86_400;
        let t0 = spec.now - span;
        let epochs = spec.generations + spec.deleted_generations;
        let slots = epochs.max(1);
        let cap = self.cap;
        let base_target = cap * 50 / 100;
        let bump_each = if slots > 1 {
            cap * 18 / 100 / (slots - 1)
        } else {
            0
        };
        let ci_each = cap.saturating_sub(base_target + bump_each * (slots - 1)) / slots;
        let mut gen_no = 1 + self.rng.below(40) as u32;
        for k in 0..slots {
            self.epoch = k;
            let slot = span / slots as i64;
            let t = if k == 0 {
                t0
            } else {
                t0 + slot * k as i64 + self.rng.below((slot / 4).max(1) as usize) as i64
            };
            if k == 0 {
                self.base(base_target, t);
                self.ci_jobs();
            } else {
                self.bump(bump_each, t);
            }
            if k < epochs {
                let system = self.system.clone();
                self.set_pace(self.clock, self.clock + 600, 8);
                let (top, _) = self.system_closure("nix-cache02", &system, None);
                if let Some(id) = top.handle() {
                    self.sys_toplevels
                        .push((gen_no, id, self.m.time[id as usize]));
                }
                gen_no += 1 + if self.rng.chance(0.2) {
                    self.rng.below(3) as u32
                } else {
                    0
                };
            }
            let t_next = if k + 1 == slots {
                spec.now - 300
            } else {
                t0 + slot * (k as i64 + 1)
            };
            let target = if k + 1 == slots {
                cap
            } else {
                self.m.len() + ci_each
            };
            self.ci_slice(target, self.clock + HOUR, t_next);
        }
        self.roots();
        self.m
    }

    /// Profile links, CI result roots and the odd direct roots.
    fn roots(&mut self) {
        let keep = self
            .sys_toplevels
            .len()
            .saturating_sub(self.spec.generations);
        for (i, &(number, id, t)) in self.sys_toplevels.iter().enumerate() {
            if i < keep {
                self.m.garbage_toplevels.push(id);
                continue;
            }
            self.m.toplevels.push(id);
            self.m.links.push(Link {
                rel: format!("nix/var/nix/profiles/system-{number}-link"),
                kind: LinkKind::Store(self.m.name[id as usize], None),
                mtime: t + 30,
            });
        }
        if let Some(&(number, _, t)) = self
            .sys_toplevels
            .last()
            .filter(|_| self.spec.generations > 0)
        {
            self.m.links.push(Link {
                rel: "nix/var/nix/profiles/system".into(),
                kind: LinkKind::Relative(format!("system-{number}-link")),
                mtime: t + 30,
            });
        }
        let mut ci = Vec::new();
        for job in &self.jobs {
            for (result, root) in [("result", job.last_ok), ("result-release", job.release)] {
                if let Some((id, t)) = root {
                    ci.push((
                        format!("ci/{}/{result}", job.name),
                        Some(id),
                        self.m.name[id as usize],
                        t,
                    ));
                }
            }
        }
        if self.invalid_example != NONE {
            ci.push((
                "ci/stale/result".into(),
                None,
                self.invalid_example,
                self.clock,
            ));
        }
        for (rel, id, name, t) in ci {
            self.m.ci_results.extend(id);
            // Nix names these after a hash of the link's path.
            let mut hash = String::new();
            self.hash_part(&mut hash);
            self.m.links.push(Link {
                rel: rel.clone(),
                kind: LinkKind::Store(name, None),
                mtime: t,
            });
            self.m.links.push(Link {
                rel: format!("nix/var/nix/gcroots/auto/{hash}"),
                kind: LinkKind::Rooted(rel),
                mtime: t,
            });
        }
        if let Some((id, t)) = self.pinned {
            let pname = crate::store_path::name_of(self.m.base(id)).to_string();
            self.m.links.push(Link {
                rel: format!("nix/var/nix/gcroots/pinned-{pname}"),
                kind: LinkKind::Store(self.m.name[id as usize], None),
                mtime: t,
            });
        }
        if let Some((id, pname, t)) = self.tool.clone() {
            self.m.links.push(Link {
                rel: format!("nix/var/nix/gcroots/{pname}-tool"),
                kind: LinkKind::Store(self.m.name[id as usize], Some(format!("bin/{pname}"))),
                mtime: t,
            });
        }
        if let Some((id, t)) = self.file_root {
            self.m.links.push(Link {
                rel: format!("nix/var/nix/gcroots/per-user/root/{}", self.m.base(id)),
                kind: LinkKind::File,
                mtime: t,
            });
        }
    }
}

fn capitalized(s: &str) -> String {
    let mut c = s.chars();
    c.next()
        .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
        .unwrap_or_default()
}

/// A one-output derivation built here, as the system closure has them.
fn local_plan(
    name: &str,
    builder: Builder,
    drv_refs: Vec<Id>,
    runtime: Vec<Id>,
    size: f64,
) -> Plan<'_> {
    Plan {
        name,
        outputs: &[Output::Out],
        register_drv: true,
        drv_refs,
        builder,
        kind: Kind::Built,
        fod: Ca::None,
        built: true,
        runtime,
        dev_refs: Vec::new(),
        self_ref: false,
        dir: true,
        size,
    }
}

/// `YYYYMMDD` of a Unix time (proleptic Gregorian, UTC).
fn civil_date(t: i64) -> String {
    let z = t.div_euclid(86_400) + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!("{y:04}{m:02}{d:02}")
}

/// Runs the simulation. Cost: O(paths + refs) time and memory, plus the
/// rebuild searches of [`Sim::bump`]; about 1 s per 10^6 paths.
fn model(spec: &SynthSpec) -> Model {
    Sim::new(spec).run()
}

/// The store [`generate`] would write, as an in-memory [`Snapshot`]
/// (basenames only, no files, no database). For tests of the graph and
/// policy layers. Cost: the simulation plus one pass over the rows.
pub fn snapshot(spec: &SynthSpec) -> Snapshot {
    let m = model(spec);
    let rows = (0..m.len() as Id)
        .map(|id| {
            let i = id as usize;
            let d = m.deriver[i];
            PathRow {
                basename: m.base(id).to_string(),
                nar_size: m.nar[i],
                registration_time: m.time[i],
                deriver: (d != NONE).then(|| m.get(d).to_string()),
                origin: match m.meta[i].kind {
                    Kind::Built => origin::ULTIMATE,
                    Kind::Substituted => origin::SIGNED,
                    _ => 0,
                },
            }
        })
        .collect();
    let mut refs = Vec::with_capacity(m.refs.len());
    for id in 0..m.len() as Id {
        refs.extend(m.refs_of(id).iter().map(|&r| (id as PathId, r as PathId)));
    }
    let drv_outputs = m
        .drv_outs
        .iter()
        .filter_map(|&(d, _, n)| {
            (m.id_of[n as usize] != NONE).then_some((d as PathId, m.id_of[n as usize] as PathId))
        })
        .collect();
    Snapshot::from_rows(rows, &refs, drv_outputs)
}

// ---------------------------------------------------------------------------
// Writing it out

/// Writes a synthetic store under `root` (created if missing; must be
/// empty): `nix/store`, `nix/var/nix/{db,gcroots,profiles,temproots}`,
/// `nix/var/log/nix`, `etc/nix.conf`, and `ci/*/result*` targets of the
/// indirect roots.
///
/// Cost, measured on a 2-core VM: the simulation (~1 s per 10^6 paths),
/// one SQLite transaction (~18 s for 10^6 paths and 5.4*10^6 references,
/// 0.8 GB), and, with `write_files`, one empty file or directory per path
/// (`.drv`s hold their text) written in parallel with the database: bound
/// by the file system, ~7 s for 2*10^5 paths on a quiet disk, several
/// times that on a busy one; 3.4 GB for 10^6 paths. Memory: ~0.5 GB for
/// 10^6 paths.
pub fn generate(root: &Path, spec: &SynthSpec) -> Result<SynthStore, SynthError> {
    fs::create_dir_all(root).map_err(io_err(root))?;
    if fs::read_dir(root).map_err(io_err(root))?.next().is_some() {
        return Err(SynthError::NotEmpty(root.to_path_buf()));
    }
    // Nix refuses a store path with a symlink in it: resolve once.
    let root = fs::canonicalize(root).map_err(io_err(root))?;
    let store_dir = root.join("nix/store");
    let state_dir = root.join("nix/var/nix");
    let log_dir = root.join("nix/var/log/nix");
    let conf_dir = root.join("etc");
    let m = model(spec);

    for d in [
        store_dir.join(".links"),
        state_dir.join("db"),
        state_dir.join("gcroots/auto"),
        state_dir.join("gcroots/per-user/root"),
        state_dir.join("profiles/per-user/root"),
        state_dir.join("temproots"),
        log_dir.clone(),
        conf_dir.clone(),
    ] {
        fs::create_dir_all(&d).map_err(io_err(&d))?;
    }
    let link = state_dir.join("gcroots/profiles");
    symlink(state_dir.join("profiles"), &link).map_err(io_err(&link))?;
    let conf = conf_dir.join("nix.conf");
    fs::write(
        &conf,
        "sandbox = false\nbuild-users-group =\nsubstituters =\n",
    )
    .map_err(io_err(&conf))?;
    let db_dir = state_dir.join("db");
    let schema = db_dir.join("schema");
    fs::write(&schema, "10").map_err(io_err(&schema))?;
    for (name, len) in [("big-lock", 0), ("reserved", RESERVED_SIZE)] {
        let p = db_dir.join(name);
        let f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&p)
            .map_err(io_err(&p))?;
        // Sparse: Nix only checks the size.
        f.set_len(len).map_err(io_err(&p))?;
    }

    let store = store_dir.to_string_lossy().into_owned();
    // SQLite has one writer: the store entries are written on the rayon
    // pool meanwhile.
    let ids = DbIds::new(m.len(), spec.sparse_ids);
    let nars = nar_infos(&m, &store, spec.seed);
    let cols = Columns {
        seed: spec.seed,
        ids,
        nars: &nars,
        sizes: spec.nar_sizes,
    };
    let (db, files) = std::thread::scope(|s| {
        let db = s.spawn(|| write_db(&db_dir.join("db.sqlite"), &store, &m, &cols));
        let files = if spec.write_files {
            write_entries(&store_dir, &store, &m, spec.seed)
        } else {
            Ok(())
        };
        (db.join(), files)
    });
    let (refs, drv_outputs) = match db {
        Ok(r) => r?,
        Err(panic) => std::panic::resume_unwind(panic),
    };
    files?;
    write_links(&root, &store, &m)?;

    let full = |ids: &[Id]| {
        ids.iter()
            .map(|&id| format!("{store}/{}", m.base(id)))
            .collect()
    };
    Ok(SynthStore {
        paths: m.len(),
        refs,
        drv_outputs,
        toplevels: full(&m.toplevels),
        garbage_toplevels: full(&m.garbage_toplevels),
        ci_results: full(&m.ci_results),
        root,
        store_dir,
        state_dir,
        log_dir,
        conf_dir,
    })
}

/// `ValidPaths.hash` as Nix 2.8 and 2.26 write it: `sha256:` and the NAR
/// hash in base 16 (`nix-store -q --hash` prints the same in base 32).
fn hash_column(nar: &NarInfo, out: &mut String) {
    out.push_str("sha256:");
    hex(&nar.sha256, out);
}

fn ca_column(seed: u64, name: NameId, ca: Ca, out: &mut String) -> bool {
    out.push_str(match ca {
        Ca::None => return false,
        Ca::Text => "text:sha256:",
        Ca::Flat => "fixed:sha256:",
        Ca::Recursive => "fixed:r:sha256:",
    });
    nix_base32(&derived_bytes(seed, name, SALT_CA), out);
    true
}

fn sigs_column(seed: u64, name: NameId, out: &mut String) {
    out.push_str("cache.example.org-1:");
    base64(
        &[
            derived_bytes(seed, name, SALT_SIG),
            derived_bytes(seed, name, SALT_SIG2),
        ]
        .concat(),
        out,
    );
    if derived_bytes(seed, name, SALT_FLAGS)[0] < 64 {
        out.push_str(" cache.nixos.org-1:");
        base64(
            &[
                derived_bytes(seed, name, SALT_SIG2),
                derived_bytes(seed, name, SALT_SIG),
            ]
            .concat(),
            out,
        );
    }
}

/// Writes the database in one transaction: bulk pragmas (no journal, no
/// sync), tables, rows in id order (the `Refs` primary key sees sorted
/// keys), the last index, then WAL mode as Nix leaves it. Returns
/// `(refs, drv outputs)`.
///
/// Cost: about 5 us a path and 2 us a reference, single-threaded (SQLite
/// has one writer): ~20 s and ~0.8 GB of database for 10^6 paths and
/// 5.4*10^6 references.
/// Model index to database id: `i + 1`, or spread evenly up to a highest
/// id (strictly increasing, the last path gets exactly that id).
#[derive(Debug, Clone, Copy)]
struct DbIds {
    n: u64,
    max: u64,
}

impl DbIds {
    fn new(n: usize, sparse: u64) -> DbIds {
        let n = n as u64;
        DbIds {
            n,
            max: sparse.max(n),
        }
    }

    fn of(self, i: u32) -> i64 {
        if self.n <= 1 || self.max == self.n {
            return i as i64 + 1;
        }
        // Step at least 1 because max - 1 >= n - 1.
        (1 + (i as u128 * (self.max - 1) as u128 / (self.n - 1) as u128)) as i64
    }
}

/// What the `ValidPaths` columns are made from besides the model.
struct Columns<'a> {
    seed: u64,
    ids: DbIds,
    /// By model index.
    nars: &'a [NarInfo],
    sizes: NarSizes,
}

fn write_db(
    path: &Path,
    store: &str,
    m: &Model,
    cols: &Columns,
) -> Result<(usize, usize), SynthError> {
    let (seed, ids) = (cols.seed, cols.ids);
    let sql = |source| SynthError::Sqlite {
        path: path.to_path_buf(),
        source,
    };
    let mut conn = Connection::open(path).map_err(sql)?;
    conn.pragma_update(None, "page_size", 4096).map_err(sql)?;
    let _: String = conn
        .pragma_update_and_check(None, "journal_mode", "OFF", |r| r.get(0))
        .map_err(sql)?;
    conn.pragma_update(None, "synchronous", "OFF")
        .map_err(sql)?;
    conn.pragma_update(None, "cache_size", -262_144)
        .map_err(sql)?;
    conn.pragma_update(None, "temp_store", "MEMORY")
        .map_err(sql)?;
    let _: i64 = conn
        .pragma_update_and_check(None, "threads", 4, |r| r.get(0))
        .map_err(sql)?;
    for s in SCHEMA_TABLES.iter().chain(&SCHEMA_INDEXES[..2]) {
        conn.execute_batch(s).map_err(sql)?;
    }
    let tx = conn.transaction().map_err(sql)?;
    let mut refs = 0;
    {
        let mut ins = tx
            .prepare(
                "INSERT INTO ValidPaths (id, path, hash, registrationTime, deriver, narSize, ultimate, sigs, ca) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
            )
            .map_err(sql)?;
        let (mut p, mut h, mut d, mut s, mut c) = (
            String::new(),
            String::new(),
            String::new(),
            String::new(),
            String::new(),
        );
        for id in 0..m.len() as Id {
            let i = id as usize;
            let name = m.name[i];
            let meta = m.meta[i];
            p.clear();
            p.push_str(store);
            p.push('/');
            p.push_str(m.get(name));
            h.clear();
            hash_column(&cols.nars[i], &mut h);
            d.clear();
            let deriver = (m.deriver[i] != NONE).then(|| {
                d.push_str(store);
                d.push('/');
                d.push_str(m.get(m.deriver[i]));
                d.as_str()
            });
            s.clear();
            let (ultimate, sigs) = match meta.kind {
                Kind::Built => (Some(1), None),
                Kind::Substituted => {
                    sigs_column(seed, name, &mut s);
                    let zero = derived_bytes(seed, name, SALT_FLAGS)[1] < 128;
                    (zero.then_some(0), Some(s.as_str()))
                }
                Kind::Source | Kind::Derivation => (None, None),
            };
            c.clear();
            let ca = ca_column(seed, name, meta.ca, &mut c).then_some(c.as_str());
            ins.execute(params![
                ids.of(id),
                p,
                h,
                m.time[i],
                deriver,
                match cols.sizes {
                    NarSizes::Modelled => m.nar[i],
                    NarSizes::Content => cols.nars[i].size,
                } as i64,
                ultimate,
                sigs,
                ca
            ])
            .map_err(sql)?;
        }
        // Many rows a statement: for two-integer rows the per-statement
        // cost dominates (this halves the time of this loop).
        const BATCH: usize = 200;
        let many = format!(
            "INSERT INTO Refs (referrer, reference) VALUES {}",
            vec!["(?, ?)"; BATCH].join(", ")
        );
        let mut ins_many = tx.prepare(&many).map_err(sql)?;
        let mut ins = tx
            .prepare("INSERT INTO Refs (referrer, reference) VALUES (?1, ?2)")
            .map_err(sql)?;
        let mut pending: Vec<(i64, i64)> = Vec::with_capacity(BATCH);
        for id in 0..m.len() as Id {
            for &r in m.refs_of(id) {
                pending.push((ids.of(id), ids.of(r)));
                refs += 1;
                if pending.len() == BATCH {
                    for (k, &(a, b)) in pending.iter().enumerate() {
                        ins_many.raw_bind_parameter(2 * k + 1, a).map_err(sql)?;
                        ins_many.raw_bind_parameter(2 * k + 2, b).map_err(sql)?;
                    }
                    ins_many.raw_execute().map_err(sql)?;
                    pending.clear();
                }
            }
        }
        for &(a, b) in &pending {
            ins.execute(params![a, b]).map_err(sql)?;
        }
        let mut ins = tx
            .prepare("INSERT INTO DerivationOutputs (drv, id, path) VALUES (?1, ?2, ?3)")
            .map_err(sql)?;
        for di in &m.drvs {
            let mut outs: Vec<_> = m.drv_outs[di.outs.0 as usize..di.outs.1 as usize].to_vec();
            outs.sort_by_key(|o| o.1.as_str());
            for (drv, o, n) in outs {
                p.clear();
                p.push_str(store);
                p.push('/');
                p.push_str(m.get(n));
                ins.execute(params![ids.of(drv), o.as_str(), p])
                    .map_err(sql)?;
            }
        }
    }
    tx.commit().map_err(sql)?;
    for s in &SCHEMA_INDEXES[2..] {
        conn.execute_batch(s).map_err(sql)?;
    }
    let mode: String = conn
        .pragma_update_and_check(None, "journal_mode", "WAL", |r| r.get(0))
        .map_err(sql)?;
    debug_assert_eq!(mode, "wal");
    conn.close().map_err(|(_, e)| sql(e))?;
    Ok((refs, m.drv_outs.len()))
}

/// Quotes a string for an ATerm derivation.
fn aterm_str(s: &str, out: &mut String) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c => out.push(c),
        }
    }
    out.push('"');
}

fn aterm_list<T>(items: &[T], out: &mut String, mut each: impl FnMut(&T, &mut String)) {
    out.push('[');
    for (i, it) in items.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        each(it, out);
    }
    out.push(']');
}

/// The `.drv` file of `di`, in Nix's ATerm format: its outputs, input
/// derivations and sources (exactly its references), builder and env.
fn aterm(m: &Model, store: &str, seed: u64, di: &DrvInfo, out: &mut String) {
    let full = |n: NameId| format!("{store}/{}", m.get(n));
    let drv_base = m.base(di.id);
    let name = crate::store_path::name_of(drv_base).trim_end_matches(".drv");
    let mut outputs: Vec<(&str, String)> = m.drv_outs[di.outs.0 as usize..di.outs.1 as usize]
        .iter()
        .map(|&(_, o, n)| (o.as_str(), full(n)))
        .collect();
    outputs.sort();
    let mut fod_b32 = String::new();
    if di.fod != Ca::None {
        let n = m.drv_outs[di.outs.0 as usize].2;
        nix_base32(&derived_bytes(seed, n, SALT_CA), &mut fod_b32);
    }
    let mut input_drvs: Vec<(String, &str)> = Vec::new();
    let mut input_srcs: Vec<String> = Vec::new();
    for &r in m.refs_of(di.id) {
        let base = m.base(r);
        if let Some(dep) = m.is_drv(r).then(|| m.drv_info(r)).flatten() {
            let outs = &m.drv_outs[dep.outs.0 as usize..dep.outs.1 as usize];
            let o = outs
                .iter()
                .find(|x| x.1 == Output::Lib)
                .or_else(|| outs.iter().find(|x| x.1 == Output::Out))
                .unwrap_or(&outs[0]);
            input_drvs.push((format!("{store}/{base}"), o.1.as_str()));
        } else {
            input_srcs.push(format!("{store}/{base}"));
        }
    }
    input_drvs.sort();
    input_srcs.sort();
    let builder = match di.builder {
        Builder::Fetchurl => "builtin:fetchurl".to_string(),
        Builder::Bash(NONE) => "/bin/sh".to_string(),
        Builder::Bash(n) => format!("{}/bin/bash", full(n)),
    };
    let args: Vec<String> = input_srcs
        .iter()
        .filter(|s| s.ends_with("-default-builder.sh"))
        .map(|s| s.to_string())
        .collect();
    let mut env: Vec<(String, String)> = vec![
        ("builder".into(), builder.clone()),
        ("name".into(), name.to_string()),
        ("system".into(), "x86_64-linux".into()),
    ];
    env.extend(outputs.iter().map(|(o, p)| (o.to_string(), p.clone())));
    if outputs.len() > 1 {
        let names: Vec<&str> = m.drv_outs[di.outs.0 as usize..di.outs.1 as usize]
            .iter()
            .map(|x| x.1.as_str())
            .collect();
        env.push(("outputs".into(), names.join(" ")));
    }
    if di.fod != Ca::None {
        env.push(("outputHash".into(), fod_b32));
        env.push(("outputHashAlgo".into(), "sha256".into()));
        let mode = if di.fod == Ca::Recursive {
            "recursive"
        } else {
            "flat"
        };
        env.push(("outputHashMode".into(), mode.into()));
        env.push(("urls".into(), format!("https://example.org/{name}")));
    }
    env.sort();
    out.push_str("Derive(");
    aterm_list(&outputs, out, |(o, p), out| {
        out.push('(');
        aterm_str(o, out);
        out.push(',');
        aterm_str(p, out);
        // Always input-addressed: for a fixed output, Nix would compute
        // the path from the hash and the store dir instead of reading it,
        // and hash parts would then depend on the root folder.
        out.push_str(",\"\",\"\")");
    });
    out.push(',');
    aterm_list(&input_drvs, out, |(p, o), out| {
        out.push('(');
        aterm_str(p, out);
        out.push_str(",[");
        aterm_str(o, out);
        out.push_str("])");
    });
    out.push(',');
    aterm_list(&input_srcs, out, |s, out| aterm_str(s, out));
    out.push(',');
    aterm_str("x86_64-linux", out);
    out.push(',');
    aterm_str(&builder, out);
    out.push(',');
    aterm_list(&args, out, |s, out| aterm_str(s, out));
    out.push(',');
    aterm_list(&env, out, |(k, v), out| {
        out.push('(');
        aterm_str(k, out);
        out.push(',');
        aterm_str(v, out);
        out.push(')');
    });
    out.push(')');
}

/// Creates every valid path in the store dir, in parallel: `.drv` files
/// hold their ATerm (Nix's tools parse them), other paths are an empty
/// file or a directory holding an empty `info` file (an empty file costs
/// an inode but no data block: 3.4 GB instead of 5.6 GB for 10^6 paths).
/// Files are read-only like Nix's; directories stay writable so the store
/// can be removed without Nix.
///
/// Cost: one create (plus a mkdir for directories) a path; bound by the
/// file system (see [`generate`]).
fn write_entries(store_dir: &Path, store: &str, m: &Model, seed: u64) -> Result<(), SynthError> {
    (0..m.len() as Id)
        .into_par_iter()
        .try_for_each_init(String::new, |text, id| {
            let path = store_dir.join(m.base(id));
            entry_text(m, store, seed, id, text);
            let file = if m.meta[id as usize].dir {
                fs::create_dir(&path).map_err(io_err(&path))?;
                path.join("info")
            } else {
                path
            };
            let mut f = fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o444)
                .open(&file)
                .map_err(io_err(&file))?;
            if text.is_empty() {
                return Ok(());
            }
            f.write_all(text.as_bytes()).map_err(io_err(&file))
        })
}

/// The text of entry `id`'s one file: a `.drv`'s ATerm, else empty.
fn entry_text(m: &Model, store: &str, seed: u64, id: Id, text: &mut String) {
    text.clear();
    let meta = m.meta[id as usize];
    if let Some(di) = m.drv_info(id).filter(|_| meta.kind == Kind::Derivation) {
        aterm(m, store, seed, di, text);
    }
}

/// The NAR hash and size of one store entry.
#[derive(Debug, Clone, Copy)]
struct NarInfo {
    sha256: [u8; 32],
    size: u64,
}

/// The NAR of every entry exactly as [`write_entries`] writes it (a
/// read-only file, or a directory holding the file `info`), hashed in
/// parallel. Cost: each entry's text made and serialised once more,
/// O(total text) spread over the rayon pool; 40 bytes a path kept.
fn nar_infos(m: &Model, store: &str, seed: u64) -> Vec<NarInfo> {
    (0..m.len() as Id)
        .into_par_iter()
        .map_init(
            || (String::new(), Vec::new()),
            |(text, buf), id| {
                entry_text(m, store, seed, id, text);
                let file = nar::Node::File {
                    contents: text.as_bytes(),
                    executable: false,
                };
                let node = if m.meta[id as usize].dir {
                    nar::Node::Dir(vec![("info", file)])
                } else {
                    file
                };
                buf.clear();
                nar::serialise(&node, buf);
                NarInfo {
                    sha256: sha2::Sha256::digest(&buf[..]).into(),
                    size: buf.len() as u64,
                }
            },
        )
        .collect()
}

/// Nix archives (NAR), the serialisation Nix hashes for `narHash` and
/// counts for `narSize` (`src/libutil/archive.cc`): the string
/// `nix-archive-1`, then the tree; every string is its length as a
/// little-endian u64, its bytes, and zeros up to a multiple of 8.
mod nar {
    /// A file tree to serialise.
    #[derive(Debug)]
    pub enum Node<'a> {
        File {
            contents: &'a [u8],
            executable: bool,
        },
        /// The synthetic stores have none; the tests pin the format.
        #[cfg_attr(not(test), allow(dead_code))]
        Symlink(&'a str),
        /// Entries in any order; they are written sorted by name.
        Dir(Vec<(&'a str, Node<'a>)>),
    }

    fn string(s: &[u8], out: &mut Vec<u8>) {
        out.extend_from_slice(&(s.len() as u64).to_le_bytes());
        out.extend_from_slice(s);
        out.resize(out.len() + (8 - s.len() % 8) % 8, 0);
    }

    /// Appends the NAR of `node` to `out`. O(size of the tree), no
    /// recursion deeper than the tree.
    pub fn serialise(node: &Node, out: &mut Vec<u8>) {
        string(b"nix-archive-1", out);
        write(node, out);
    }

    fn write(node: &Node, out: &mut Vec<u8>) {
        string(b"(", out);
        match node {
            Node::File {
                contents,
                executable,
            } => {
                string(b"type", out);
                string(b"regular", out);
                if *executable {
                    string(b"executable", out);
                    string(b"", out);
                }
                string(b"contents", out);
                string(contents, out);
            }
            Node::Symlink(target) => {
                string(b"type", out);
                string(b"symlink", out);
                string(b"target", out);
                string(target.as_bytes(), out);
            }
            Node::Dir(entries) => {
                string(b"type", out);
                string(b"directory", out);
                let mut sorted: Vec<&(&str, Node)> = entries.iter().collect();
                sorted.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
                for (name, child) in sorted {
                    string(b"entry", out);
                    string(b"(", out);
                    string(b"name", out);
                    string(name.as_bytes(), out);
                    string(b"node", out);
                    write(child, out);
                    string(b")", out);
                }
            }
        }
        string(b")", out);
    }
}

/// Sets a symlink's (or file's) mtime without following it.
fn set_link_mtime(path: &Path, mtime: i64) -> Result<(), SynthError> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).map_err(|_| SynthError::Io {
        path: path.to_path_buf(),
        source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
    })?;
    let ts = libc::timespec {
        tv_sec: mtime as libc::time_t,
        tv_nsec: 0,
    };
    let times = [ts, ts];
    // SAFETY: `c` is a valid NUL-terminated path and `times` has two entries.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            times.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc != 0 {
        return Err(SynthError::Io {
            path: path.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

fn write_links(root: &Path, store: &str, m: &Model) -> Result<(), SynthError> {
    for l in &m.links {
        let path = root.join(&l.rel);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent).map_err(io_err(parent))?;
        }
        match &l.kind {
            LinkKind::Store(n, sub) => {
                let mut target = format!("{store}/{}", m.get(*n));
                if let Some(sub) = sub {
                    target.push('/');
                    target.push_str(sub);
                }
                symlink(&target, &path).map_err(io_err(&path))?;
            }
            LinkKind::Rooted(rel) => symlink(root.join(rel), &path).map_err(io_err(&path))?,
            LinkKind::Relative(rel) => symlink(rel, &path).map_err(io_err(&path))?,
            LinkKind::File => fs::write(&path, "").map_err(io_err(&path))?,
        }
        set_link_mtime(&path, l.mtime)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(paths: usize, seed: u64) -> SynthSpec {
        SynthSpec {
            paths,
            seed,
            ..SynthSpec::default()
        }
    }

    #[test]
    fn nix_base32_matches_nix() {
        // `nix-hash --type sha256 --to-base32` of sha256("").
        let bytes: Vec<u8> = (0..32)
            .map(|i| {
                u8::from_str_radix(
                    &"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
                        [2 * i..2 * i + 2],
                    16,
                )
                .unwrap()
            })
            .collect();
        let mut s = String::new();
        nix_base32(&bytes, &mut s);
        assert_eq!(s, "0mdqa9w1p6cmli6976v4wi0sw9r4p5prkj7lzfd1877wk11c9c73");
    }

    /// `nix-store`/`nix-hash` from `STOREGC_NIX_BIN` or PATH, run on a
    /// throw-away store (even `--dump` opens one); `None` when Nix is not
    /// installed (a failure under `STOREGC_REQUIRE_NIX=1`).
    fn nix_tool(tmp: &Path, name: &str) -> Option<std::process::Command> {
        let dir = std::env::var_os("STOREGC_NIX_BIN").filter(|d| !d.is_empty());
        let exe = match dir {
            Some(d) => PathBuf::from(d).join(name),
            None => PathBuf::from(name),
        };
        let found = std::process::Command::new(&exe)
            .arg("--version")
            .env("NIX_STORE_DIR", tmp.join("nix/store"))
            .env("NIX_STATE_DIR", tmp.join("nix/var"))
            .env("NIX_LOG_DIR", tmp.join("nix/log"))
            .env("NIX_CONF_DIR", tmp.join("etc"))
            .env("NIX_REMOTE", "")
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            let required = std::env::var("STOREGC_REQUIRE_NIX").is_ok_and(|v| v == "1");
            assert!(!required, "{} is not installed", exe.display());
            eprintln!("note: {} is not installed; skipping", exe.display());
            return None;
        }
        let mut cmd = std::process::Command::new(exe);
        cmd.env("NIX_STORE_DIR", tmp.join("nix/store"))
            .env("NIX_STATE_DIR", tmp.join("nix/var"))
            .env("NIX_LOG_DIR", tmp.join("nix/log"))
            .env("NIX_CONF_DIR", tmp.join("etc"))
            .env("NIX_REMOTE", "")
            .env_remove("NIX_CONFIG");
        Some(cmd)
    }

    /// Writes `node` at `path` (files 0444, executables 0555).
    fn write_tree(path: &Path, node: &nar::Node) {
        use std::os::unix::fs::PermissionsExt;
        match node {
            nar::Node::File {
                contents,
                executable,
            } => {
                fs::write(path, contents).unwrap();
                let mode = if *executable { 0o555 } else { 0o444 };
                fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
            }
            nar::Node::Symlink(t) => symlink(t, path).unwrap(),
            nar::Node::Dir(entries) => {
                fs::create_dir(path).unwrap();
                for (name, child) in entries {
                    write_tree(&path.join(name), child);
                }
            }
        }
    }

    /// Our NAR of a small tree (every node type, names out of order and
    /// in byte order, lengths that need padding and one that does not)
    /// is byte for byte what `nix-store --dump` writes for the same tree
    /// on disk, and its hash what `nix-hash --type sha256 --base32` says.
    #[test]
    fn nar_serialisation_matches_nix_store_dump() {
        use nar::Node::{Dir, File, Symlink};
        let t = tempfile::tempdir().unwrap();
        fs::create_dir_all(t.path().join("etc")).unwrap();
        let Some(mut dump) = nix_tool(t.path(), "nix-store") else {
            return;
        };
        let mut hash = nix_tool(t.path(), "nix-hash").expect("nix-hash beside nix-store");
        let trees = [
            File {
                contents: b"hello\n",
                executable: false,
            },
            Dir(vec![(
                "info",
                File {
                    contents: b"",
                    executable: false,
                },
            )]),
            Dir(vec![
                (
                    "zeta",
                    File {
                        contents: b"exactly8",
                        executable: true,
                    },
                ),
                ("Alpha", Symlink("zeta")),
                (
                    "b-dir",
                    Dir(vec![
                        (
                            "y",
                            File {
                                contents: b"",
                                executable: false,
                            },
                        ),
                        ("x", Dir(vec![])),
                        (
                            "deep",
                            Dir(vec![(
                                "f",
                                File {
                                    contents: &[0u8, 1, 2, 255, 7],
                                    executable: false,
                                },
                            )]),
                        ),
                    ]),
                ),
                ("a", Symlink("/nonexistent/target/of-odd-length")),
                (
                    "_",
                    File {
                        contents: b"drv text with \"quotes\"\n",
                        executable: false,
                    },
                ),
            ]),
        ];
        for (k, tree) in trees.iter().enumerate() {
            let path = t.path().join(format!("tree{k}"));
            write_tree(&path, tree);
            let mut ours = Vec::new();
            nar::serialise(tree, &mut ours);
            let out = dump.args(["--dump"]).arg(&path).output().unwrap();
            dump = nix_tool(t.path(), "nix-store").unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert_eq!(ours, out.stdout, "tree {k}: NAR bytes differ");
            let out = hash
                .args(["--type", "sha256", "--base32"])
                .arg(&path)
                .output()
                .unwrap();
            hash = nix_tool(t.path(), "nix-hash").unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
            let mut b32 = String::new();
            nix_base32(&sha2::Sha256::digest(&ours), &mut b32);
            assert_eq!(
                b32,
                String::from_utf8_lossy(&out.stdout).trim(),
                "tree {k}: hash"
            );
        }
    }

    #[test]
    fn base64_pads() {
        let mut s = String::new();
        base64(b"abcd", &mut s);
        assert_eq!(s, "YWJjZA==");
    }

    #[test]
    fn civil_dates() {
        assert_eq!(civil_date(0), "19700101");
        assert_eq!(civil_date(1_767_225_600), "20260101");
        assert_eq!(civil_date(951_782_400), "20000229");
    }

    #[test]
    fn same_seed_same_store_other_seed_other_store() {
        let a = model(&spec(3_000, 7));
        let b = model(&spec(3_000, 7));
        assert_eq!(a, b);
        let c = model(&spec(3_000, 8));
        assert_ne!(a.arena, c.arena);
    }

    #[test]
    fn exact_counts_for_any_size() {
        for n in [0, 1, 10, 57, 300, 2_000, 25_000] {
            let m = model(&spec(n, 3));
            assert_eq!(m.len(), n, "paths for {n}");
            assert_eq!(m.ref_start.len(), n + 1);
            assert!(m.refs.iter().all(|&r| (r as usize) < n));
        }
    }

    #[test]
    fn references_are_acyclic_apart_from_self_references() {
        let m = model(&spec(20_000, 5));
        let mut selfs = 0;
        for id in 0..m.len() as Id {
            let row = m.refs_of(id);
            assert!(
                row.windows(2).all(|w| w[0] < w[1]),
                "row {id} sorted, unique"
            );
            for &r in row {
                assert!(r <= id, "{} refers forward to {}", m.base(id), m.base(r));
                selfs += usize::from(r == id);
            }
        }
        assert!(selfs > 100, "only {selfs} self references");
    }

    #[test]
    fn derivation_outputs_belong_to_valid_drvs() {
        let m = model(&spec(20_000, 6));
        let mut invalid_outputs = 0;
        let mut multi = 0;
        for di in &m.drvs {
            assert!(m.base(di.id).ends_with(".drv"));
            assert!(m.is_drv(di.id));
            multi += usize::from(di.outs.1 - di.outs.0 > 1);
        }
        for &(d, _, n) in &m.drv_outs {
            assert!(m.base(d).ends_with(".drv"));
            assert!(!m.get(n).ends_with(".drv"));
            invalid_outputs += usize::from(m.id_of[n as usize] == NONE);
        }
        assert!(multi > 100, "multi-output drvs: {multi}");
        assert!(
            invalid_outputs > 50,
            "drv outputs not valid: {invalid_outputs}"
        );
        // A valid output's valid deriver lists it, unless it is a
        // fixed-output path re-instantiated by a newer .drv (then the
        // newer one lists it and the deriver still does too).
        for id in 0..m.len() as Id {
            let d = m.deriver[id as usize];
            if d != NONE && m.id_of[d as usize] != NONE {
                let di = m.drv_info(m.id_of[d as usize]).unwrap();
                let outs = &m.drv_outs[di.outs.0 as usize..di.outs.1 as usize];
                assert!(outs.iter().any(|o| o.2 == m.name[id as usize]));
            }
        }
    }

    #[test]
    fn shape_is_realistic() {
        let n = 30_000;
        let m = model(&spec(n, 9));
        let s = snapshot(&spec(n, 9));
        assert_eq!(s.len(), n);
        let mut fan_in = vec![0usize; n];
        for id in 0..n as Id {
            for &r in m.refs_of(id) {
                if r != id {
                    fan_in[r as usize] += 1;
                }
            }
        }
        let outputs = (0..n)
            .filter(|&i| matches!(m.meta[i].kind, Kind::Built | Kind::Substituted))
            .count();
        let hub = *fan_in.iter().max().unwrap();
        assert!(
            hub > outputs / 2,
            "busiest path has {hub} referrers of {outputs} outputs"
        );
        let kinds = |k| m.meta.iter().filter(|x| x.kind == k).count();
        assert!(
            kinds(Kind::Built) > n / 20
                && kinds(Kind::Substituted) > n / 10
                && kinds(Kind::Source) > n / 50
        );
        // Deep chains: longest path over references.
        let mut depth = vec![0u32; n];
        for id in 0..n as Id {
            depth[id as usize] = m
                .refs_of(id)
                .iter()
                .filter(|&&r| r != id)
                .map(|&r| depth[r as usize] + 1)
                .max()
                .unwrap_or(0);
        }
        assert!(*depth.iter().max().unwrap() > 40);
        assert!(m.refs.len() > 3 * n, "{} refs", m.refs.len());
        // Generations, CI roots and a dangling root are all there.
        assert_eq!(m.toplevels.len(), 5);
        assert_eq!(m.garbage_toplevels.len(), 2);
        assert!(m.ci_results.len() >= 4);
        assert!(m.links.iter().any(|l| l.rel == "ci/stale/result"));
        // Times lie in the history window and grow with ids.
        let spec = spec(n, 9);
        assert!(m.time.windows(2).all(|w| w[0] <= w[1]));
        assert!(
            m.time[0] >= spec.now - spec.history_days as i64 * 86_400
                && *m.time.last().unwrap() <= spec.now
        );
    }

    /// Paths alive from `roots` the way Nix decides with its defaults:
    /// references, plus a live output's deriver when that `.drv` is valid
    /// and lists it (keep-derivations).
    fn nix_live(m: &Model, roots: &[Id]) -> usize {
        let mut seen = vec![false; m.len()];
        let mut stack = roots.to_vec();
        for &r in roots {
            seen[r as usize] = true;
        }
        let mut count = roots.len();
        while let Some(x) = stack.pop() {
            let mut next = m.refs_of(x).to_vec();
            let d = m.deriver[x as usize];
            if d != NONE && m.id_of[d as usize] != NONE {
                let di = m.drv_info(m.id_of[d as usize]).unwrap();
                if m.drv_outs[di.outs.0 as usize..di.outs.1 as usize]
                    .iter()
                    .any(|o| o.2 == m.name[x as usize])
                {
                    next.push(di.id);
                }
            }
            for y in next {
                if !seen[y as usize] {
                    seen[y as usize] = true;
                    count += 1;
                    stack.push(y);
                }
            }
        }
        count
    }

    #[test]
    fn newest_generation_keeps_a_large_share_alive_and_most_ci_is_garbage() {
        for n in [3_000, 60_000] {
            let m = model(&spec(n, 4));
            let newest = nix_live(&m, &m.toplevels[m.toplevels.len() - 1..]);
            let mut roots = m.toplevels.clone();
            roots.extend(&m.ci_results);
            let live = nix_live(&m, &roots);
            assert!(newest * 5 > n, "newest generation keeps {newest} of {n}");
            assert!(live * 2 < n, "all roots keep {live} of {n}");
            // Consecutive generations share most of their closures.
            let a = nix_live(
                &m,
                &m.toplevels[m.toplevels.len() - 2..m.toplevels.len() - 1],
            );
            let both = nix_live(&m, &m.toplevels[m.toplevels.len() - 2..]);
            assert!(
                both < a + newest && both * 10 < (a + newest) * 7,
                "{a} + {newest} -> {both}"
            );
        }
    }

    #[test]
    fn generated_store_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(1_500, 2);
        let st = generate(dir.path(), &spec).unwrap();
        assert_eq!(st.paths, 1_500);
        let sd = crate::store_path::StoreDir::new(st.store_dir.to_string_lossy());
        let snap = crate::db::read_snapshot(&st.state_dir, &sd, std::time::Duration::from_secs(1))
            .unwrap();
        assert_eq!(snap.len(), 1_500);
        assert_eq!(
            snap.paths.iter().collect::<Vec<_>>(),
            snapshot(&spec).paths.iter().collect::<Vec<_>>()
        );
        let conn = Connection::open(crate::db::db_path(&st.state_dir)).unwrap();
        let mode: String = conn
            .query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mode, "wal");
        let bad: i64 = conn
            .query_row("SELECT count(*) FROM pragma_foreign_key_check", [], |r| {
                r.get(0)
            })
            .unwrap();
        assert_eq!(bad, 0);
        let refs: i64 = conn
            .query_row("SELECT count(*) FROM Refs", [], |r| r.get(0))
            .unwrap();
        assert_eq!(refs as usize, st.refs);
        let seq: i64 = conn
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'ValidPaths'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, 1_500);
        assert_eq!(
            fs::read_to_string(st.state_dir.join("db/schema")).unwrap(),
            "10"
        );
        assert_eq!(fs::read_dir(&st.store_dir).unwrap().count(), 1_500 + 1);
        assert!(matches!(
            generate(dir.path(), &spec),
            Err(SynthError::NotEmpty(_))
        ));
    }
}
