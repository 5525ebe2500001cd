//! The policy file: TOML text in, a typed [`Policy`] out, or one error line
//! naming the file, the line and the key at fault.
//!
//! Parsing is pure. It goes in two steps: serde reads the text into raw
//! structs that refuse unknown keys and keep each value's byte span, then
//! every value is checked and converted (durations, sizes, globs, enums),
//! so each error can point at its own line. Nothing here looks at the store:
//! whether a protected path is a path of *this* store, and whether it is
//! valid, is decided by [`crate::policy::inputs::gather`].
//!
//! ```toml
//! description = "binary cache + native CI runner"
//! [protect]          # closure-lists, paths, names
//! [select]           # origin, older-than, names, exclude-names
//! [[generations]]    # profile, keep-newest, keep-since
//! [auto-roots]       # older-than, match
//! [budget]           # max-freed, until-free, order
//! ```

use std::fmt::{self, Write as _};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};
use serde::{Deserialize, Serialize};
use toml::Spanned;

use super::budget::Amount;
use super::group::GroupBy;
use super::units::{format_duration, parse_duration};
use super::PolicyError;
use crate::store_path::parse_basename;

/// A parsed policy. [`Policy::default`] is "no policy": nothing protected,
/// every unrooted path selected, no root expired, no budget.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    /// The file it was read from (empty for the default policy). Errors
    /// found later name it, and relative closure-list paths are resolved
    /// against its folder.
    pub file: PathBuf,
    pub description: Option<String>,
    pub protect: Protect,
    pub select: Select,
    pub generations: Vec<Generations>,
    pub auto_roots: Option<AutoRoots>,
    pub budget: Budget,
    /// SHA-256 (hex) of the text it was parsed from (empty for the default
    /// policy); see [`super::digest`].
    pub sha256: String,
}

/// A value and the line of the policy file it came from (0 when it did not
/// come from a file), so that checks made later can still point at it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    pub value: T,
    pub line: usize,
}

impl<T> Located<T> {
    pub fn new(value: T) -> Located<T> {
        Located { value, line: 0 }
    }
}

/// `[protect]`: paths kept with their whole closure, whatever `[select]`
/// says.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Protect {
    /// Files listing one store path a line (`#` comments).
    pub closure_lists: Vec<Located<PathBuf>>,
    /// Absolute store paths.
    pub paths: Vec<Located<String>>,
    /// Globs on the name part of every valid path.
    pub names: Globs,
    /// Also keep, for every listed path (closure lists and `paths`), its
    /// deriver's closure and the valid outputs of every `.drv` in it.
    pub build_closures: bool,
}

/// `[select]`: which unrooted paths may be deleted; every condition given
/// must hold.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Select {
    pub origin: Origin,
    /// Registered at least this long ago.
    pub older_than: Option<Duration>,
    /// Name globs a path must match; `None` means any name.
    pub names: Option<Globs>,
    /// Name globs a path must not match.
    pub exclude_names: Globs,
    /// The rollback window: only paths seen deletable for at least this
    /// long without a break (see [`crate::deadsince`]).
    pub dead_for: Option<Duration>,
}

/// `[[generations]]`: expiry of one profile's old generations.
#[derive(Debug, Clone, PartialEq)]
pub struct Generations {
    /// The profile link, e.g. `/nix/var/nix/profiles/system`; a relative
    /// path is taken relative to the Nix state directory.
    pub profile: Located<PathBuf>,
    /// The N highest-numbered generations stay.
    pub keep_newest: Option<u32>,
    /// Generations whose link is younger than this stay.
    pub keep_since: Option<Duration>,
}

/// `[auto-roots]`: expiry of indirect roots registered under
/// `gcroots/auto` (`nix-build`'s `result` links and the like).
#[derive(Debug, Clone, PartialEq)]
pub struct AutoRoots {
    /// Age of the outer link (its lstat mtime) from which it expires.
    pub older_than: Duration,
    /// Globs on the outer link's whole path; `*` crosses `/`.
    pub match_: Globs,
    /// The newest N links of each group never expire.
    pub keep_newest: Option<u32>,
    /// How links are grouped for `keep_newest` (default: their folder).
    pub group_by: GroupBy,
}

/// `[budget]`: how much of the delete set to take.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Budget {
    /// Stop once this many bytes (narSize) are taken: bytes, or a share
    /// of the store's filesystem.
    pub max_freed: Option<Amount>,
    /// Only free until the store's filesystem has this much available.
    pub until_free: Option<Amount>,
    pub order: Order,
}

/// `select.origin`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Origin {
    /// Substituted paths too.
    #[default]
    Any,
    /// Only paths not substituted: built here, or added by evaluation.
    Local,
}

/// `budget.order`: which candidates the budget takes first.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Order {
    /// By registration time, oldest first.
    #[default]
    OldestFirst,
    /// By narSize, largest first.
    LargestFirst,
}

impl Origin {
    pub fn as_str(self) -> &'static str {
        match self {
            Origin::Any => "any",
            Origin::Local => "local",
        }
    }
}

impl Order {
    pub fn as_str(self) -> &'static str {
        match self {
            Order::OldestFirst => "oldest-first",
            Order::LargestFirst => "largest-first",
        }
    }
}

impl FromStr for Origin {
    type Err = String;
    fn from_str(s: &str) -> Result<Origin, String> {
        match s {
            "any" => Ok(Origin::Any),
            "local" => Ok(Origin::Local),
            _ => Err(format!(
                "invalid origin '{s}' (expected \"local\" or \"any\")"
            )),
        }
    }
}

impl FromStr for Order {
    type Err = String;
    fn from_str(s: &str) -> Result<Order, String> {
        match s {
            "oldest-first" => Ok(Order::OldestFirst),
            "largest-first" => Ok(Order::LargestFirst),
            _ => Err(format!(
                "invalid order '{s}' (expected \"oldest-first\" or \"largest-first\")"
            )),
        }
    }
}

impl fmt::Display for Origin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Order {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A list of globs compiled into one set. `*` matches across `/`.
#[derive(Debug, Clone, Default)]
pub struct Globs {
    patterns: Vec<String>,
    set: GlobSet,
}

impl PartialEq for Globs {
    fn eq(&self, other: &Globs) -> bool {
        self.patterns == other.patterns
    }
}

impl Globs {
    /// Compiles the patterns; the error names the first bad one.
    pub fn new<S: AsRef<str>>(patterns: &[S]) -> Result<Globs, (usize, globset::Error)> {
        let mut builder = GlobSetBuilder::new();
        for (i, p) in patterns.iter().enumerate() {
            builder.add(compile_glob(p.as_ref()).map_err(|e| (i, e))?);
        }
        let set = builder.build().map_err(|e| (0, e))?;
        Ok(Globs {
            patterns: patterns.iter().map(|p| p.as_ref().to_string()).collect(),
            set,
        })
    }

    pub fn patterns(&self) -> &[String] {
        &self.patterns
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    pub fn is_match(&self, text: &str) -> bool {
        self.set.is_match(text)
    }

    /// The first pattern (in file order) that matches.
    pub fn first_match(&self, text: &str) -> Option<&str> {
        self.set
            .matches(text)
            .into_iter()
            .min()
            .map(|i| self.patterns[i].as_str())
    }
}

fn compile_glob(pattern: &str) -> Result<globset::Glob, globset::Error> {
    GlobBuilder::new(pattern).literal_separator(false).build()
}

/// Command-line flags that override the policy file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Overrides {
    pub max_freed: Option<Amount>,
    pub until_free: Option<Amount>,
    pub order: Option<Order>,
    pub older_than: Option<Duration>,
}

impl Policy {
    /// The policy with each given flag replacing the file's value.
    pub fn with_overrides(mut self, o: &Overrides) -> Policy {
        if let Some(v) = o.max_freed {
            self.budget.max_freed = Some(v);
        }
        if let Some(v) = o.until_free {
            self.budget.until_free = Some(v);
        }
        if let Some(v) = o.order {
            self.budget.order = v;
        }
        if let Some(v) = o.older_than {
            self.select.older_than = Some(v);
        }
        self
    }

    /// What the policy means, in plain words, one point a line (for
    /// `storegc policy check`).
    pub fn describe(&self) -> String {
        let mut s = String::new();
        let quoted = |g: &Globs| {
            g.patterns()
                .iter()
                .map(|p| format!("\"{p}\""))
                .collect::<Vec<_>>()
                .join(", ")
        };
        // Writing to a String cannot fail.
        let mut line = |text: String| {
            let _ = writeln!(s, "{text}");
        };
        let title = if self.file.as_os_str().is_empty() {
            "Policy".to_string()
        } else {
            format!("Policy {}", self.file.display())
        };
        match &self.description {
            Some(d) => line(format!("{title}: {d}")),
            None => line(title),
        }
        line("- Every GC root Nix honours is kept, with everything it keeps alive, except the generations and auto roots expired below.".into());

        let p = &self.protect;
        if p.closure_lists.is_empty() && p.paths.is_empty() && p.names.is_empty() {
            line("- Nothing else is protected.".into());
        } else {
            line("- Protected, each with its whole closure:".into());
            for l in &p.closure_lists {
                line(format!(
                    "  - every store path listed in {}",
                    l.value.display()
                ));
            }
            for path in &p.paths {
                line(format!("  - {}", path.value));
            }
            if !p.names.is_empty() {
                line(format!(
                    "  - every path whose name matches {}",
                    quoted(&p.names)
                ));
            }
            if p.build_closures {
                line("  - for every listed path, its deriver's closure and the valid outputs of every .drv in it (what the next build needs)".into());
            }
        }

        let sel = &self.select;
        let mut conditions = Vec::new();
        if sel.origin == Origin::Local {
            conditions.push(
                "it was built or added on this host (not substituted from a cache)".to_string(),
            );
        }
        if let Some(d) = sel.older_than {
            conditions.push(format!(
                "it was registered at least {} ago",
                format_duration(d)
            ));
        }
        match &sel.names {
            Some(n) if n.is_empty() => {
                conditions.push("(names = [] matches no name: nothing is selected)".into())
            }
            Some(n) => conditions.push(format!("its name matches {}", quoted(n))),
            None => {}
        }
        if !sel.exclude_names.is_empty() {
            conditions.push(format!(
                "its name matches none of {}",
                quoted(&sel.exclude_names)
            ));
        }
        if conditions.is_empty() {
            line("- Every path no kept path needs may be deleted.".into());
        } else {
            line("- A path no kept path needs may be deleted only when:".into());
            for c in conditions {
                line(format!("  - {c}"));
            }
            line("  Every other path is kept, with its closure.".into());
        }

        for g in &self.generations {
            let mut keep = Vec::new();
            if let Some(n) = g.keep_newest.filter(|&n| n > 0) {
                keep.push(format!("the {n} highest-numbered"));
            }
            if let Some(d) = g.keep_since {
                keep.push(format!(
                    "those whose link is younger than {}",
                    format_duration(d)
                ));
            }
            let profile = if g.profile.value.is_relative() {
                format!("{} (in the Nix state directory)", g.profile.value.display())
            } else {
                g.profile.value.display().to_string()
            };
            let others = if keep.is_empty() {
                String::new()
            } else {
                format!(", and so do {}", keep.join(" and "))
            };
            line(format!(
                "- Generations of profile {profile}: the current one stays{others}; \
                 the roots of all others are expired."
            ));
        }
        if let Some(a) = &self.auto_roots {
            line(format!(
                "- Auto roots (gcroots/auto) whose link matches {} and is at least {} old are expired.",
                quoted(&a.match_),
                format_duration(a.older_than)
            ));
            if let Some(n) = a.keep_newest {
                let group = match &a.group_by {
                    GroupBy::Folder => "the link's folder".to_string(),
                    GroupBy::Pattern(_) => {
                        format!("what the ( ) of \"{}\" capture", a.group_by.as_str())
                    }
                };
                line(format!(
                    "  The {n} newest links of each group (by {group}) stay whatever their age."
                ));
            }
        }
        if let Some(d) = self.select.dead_for {
            line(format!(
                "- Rollback window: a path goes only once storegc has seen it deletable for {} without a break (state kept by plan --out and apply).",
                format_duration(d)
            ));
        }

        let b = &self.budget;
        let mut limits = Vec::new();
        if let Some(m) = b.max_freed {
            limits.push(format!("at most {} (narSize) is freed", in_words(m)));
        }
        match b.until_free {
            Some(u) if u.is_share() => limits.push(format!(
                "only until {u} of the store's filesystem is available (nothing when it already is)"
            )),
            Some(u) => limits.push(format!(
                "only until the store's filesystem has {u} available (nothing when it already has)"
            )),
            None => {}
        }
        if limits.is_empty() {
            line("- No budget: every deletable path is deleted.".into());
        } else {
            let order = match b.order {
                Order::OldestFirst => "oldest registered first",
                Order::LargestFirst => "largest first",
            };
            line(format!(
                "- Budget: {}; paths are taken {order}, each with the paths that still refer to it.",
                limits.join(", and ")
            ));
        }
        s
    }
}

/// An amount in words: `100 GiB`, or `15% of the store's filesystem`.
fn in_words(a: Amount) -> String {
    if a.is_share() {
        format!("{a} of the store's filesystem")
    } else {
        a.to_string()
    }
}

// Raw serde shapes: unknown keys refused, values kept with their spans.

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawPolicy {
    description: Option<String>,
    protect: Option<RawProtect>,
    select: Option<RawSelect>,
    #[serde(default)]
    generations: Vec<RawGenerations>,
    auto_roots: Option<RawAutoRoots>,
    budget: Option<RawBudget>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawProtect {
    #[serde(default)]
    closure_lists: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    names: Vec<Spanned<String>>,
    build_closures: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawSelect {
    origin: Option<Spanned<String>>,
    older_than: Option<Spanned<toml::Value>>,
    dead_for: Option<Spanned<toml::Value>>,
    names: Option<Vec<Spanned<String>>>,
    #[serde(default)]
    exclude_names: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawGenerations {
    profile: Spanned<String>,
    keep_newest: Option<Spanned<i64>>,
    keep_since: Option<Spanned<toml::Value>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawAutoRoots {
    older_than: Spanned<toml::Value>,
    #[serde(rename = "match")]
    match_: Vec<Spanned<String>>,
    keep_newest: Option<Spanned<i64>>,
    group_by: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
struct RawBudget {
    max_freed: Option<Spanned<toml::Value>>,
    until_free: Option<Spanned<toml::Value>>,
    order: Option<Spanned<String>>,
}

/// Reads and parses a policy file.
pub fn load_policy(file: &Path) -> Result<Policy, PolicyError> {
    let text = std::fs::read_to_string(file).map_err(|io| PolicyError::Read {
        file: file.to_path_buf(),
        line: 0,
        key: String::new(),
        path: file.to_path_buf(),
        io,
    })?;
    parse_policy(&text, file)
}

/// Parses policy text; `file` names it in errors and anchors relative
/// closure-list paths. Cost: linear in the text (plus glob compilation).
pub fn parse_policy(text: &str, file: &Path) -> Result<Policy, PolicyError> {
    let raw: RawPolicy = toml::from_str(text).map_err(|e| {
        let line = e.span().map_or(0, |s| line_of(text, s.start));
        let mut key = key_at_line(text, line);
        if let Some(field) = e.message().strip_prefix("missing field `") {
            let field = field.split('`').next().unwrap_or("");
            key = if key.is_empty() {
                field.to_string()
            } else {
                format!("{key}.{field}")
            };
        }
        let msg: Vec<&str> = e
            .message()
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        PolicyError::invalid(file, line, &key, msg.join(": "))
    })?;
    let cx = Cx { text, file };
    let mut policy = Policy {
        file: file.to_path_buf(),
        description: raw.description,
        sha256: super::digest::sha256_hex(text.as_bytes()),
        ..Policy::default()
    };

    if let Some(p) = raw.protect {
        for l in p.closure_lists {
            if l.get_ref().trim().is_empty() {
                return Err(cx.err(l.span(), "protect.closure-lists", "empty file name"));
            }
            policy.protect.closure_lists.push(Located {
                value: PathBuf::from(l.get_ref().trim()),
                line: cx.line(l.span()),
            });
        }
        for path in p.paths {
            check_store_path_shape(path.get_ref())
                .map_err(|m| cx.err(path.span(), "protect.paths", m))?;
            policy.protect.paths.push(Located {
                value: path.get_ref().clone(),
                line: cx.line(path.span()),
            });
        }
        policy.protect.names = cx.globs(&p.names, "protect.names")?;
        policy.protect.build_closures = p.build_closures.unwrap_or(false);
    }

    if let Some(s) = raw.select {
        if let Some(o) = s.origin {
            policy.select.origin = o
                .get_ref()
                .parse()
                .map_err(|m: String| cx.err(o.span(), "select.origin", m))?;
        }
        if let Some(d) = s.older_than {
            policy.select.older_than = Some(cx.duration(&d, "select.older-than")?);
        }
        if let Some(d) = s.dead_for {
            policy.select.dead_for = Some(cx.duration(&d, "select.dead-for")?);
        }
        if let Some(n) = s.names {
            policy.select.names = Some(cx.globs(&n, "select.names")?);
        }
        policy.select.exclude_names = cx.globs(&s.exclude_names, "select.exclude-names")?;
    }

    for g in raw.generations {
        let profile = g.profile.get_ref().trim();
        let path = PathBuf::from(profile);
        if profile.is_empty()
            || profile.ends_with('/')
            || !matches!(path.file_name(), Some(n) if n != "..")
        {
            return Err(cx.err(
                g.profile.span(),
                "generations.profile",
                format!("'{profile}' does not name a profile link"),
            ));
        }
        let keep_newest = match g.keep_newest {
            Some(n) => Some(u32::try_from(*n.get_ref()).map_err(|_| {
                cx.err(
                    n.span(),
                    "generations.keep-newest",
                    format!("{} is not a number of generations (0 or more)", n.get_ref()),
                )
            })?),
            None => None,
        };
        let keep_since = match &g.keep_since {
            Some(d) => Some(cx.duration(d, "generations.keep-since")?),
            None => None,
        };
        // Neither rule would expire every generation but the current one:
        // only `keep-newest = 0` says that on purpose.
        if keep_newest.is_none() && keep_since.is_none() {
            return Err(cx.err(
                g.profile.span(),
                "generations",
                format!(
                    "[[generations]] for '{profile}' has neither keep-newest nor keep-since, \
                     which would expire every generation but the current one; \
                     say keep-newest = 0 if that is meant"
                ),
            ));
        }
        policy.generations.push(Generations {
            profile: Located {
                value: path,
                line: cx.line(g.profile.span()),
            },
            keep_newest,
            keep_since,
        });
    }

    if let Some(a) = raw.auto_roots {
        let keep_newest = match &a.keep_newest {
            Some(n) => Some(u32::try_from(*n.get_ref()).map_err(|_| {
                cx.err(
                    n.span(),
                    "auto-roots.keep-newest",
                    format!("{} is not a number of links (0 or more)", n.get_ref()),
                )
            })?),
            None => None,
        };
        let group_by = match &a.group_by {
            Some(g) if keep_newest.is_none() => {
                return Err(cx.err(
                    g.span(),
                    "auto-roots.group-by",
                    "group-by without keep-newest groups nothing",
                ))
            }
            Some(g) => GroupBy::parse(g.get_ref())
                .map_err(|m| cx.err(g.span(), "auto-roots.group-by", m))?,
            None => GroupBy::Folder,
        };
        policy.auto_roots = Some(AutoRoots {
            older_than: cx.duration(&a.older_than, "auto-roots.older-than")?,
            match_: cx.globs(&a.match_, "auto-roots.match")?,
            keep_newest,
            group_by,
        });
    }

    if let Some(b) = raw.budget {
        if let Some(v) = &b.max_freed {
            policy.budget.max_freed = Some(cx.amount(v, "budget.max-freed")?);
        }
        if let Some(v) = &b.until_free {
            policy.budget.until_free = Some(cx.amount(v, "budget.until-free")?);
        }
        if let Some(o) = b.order {
            policy.budget.order = o
                .get_ref()
                .parse()
                .map_err(|m: String| cx.err(o.span(), "budget.order", m))?;
        }
    }
    Ok(policy)
}

/// `<dir>/<hash>-<name>`: absolute, with a well-formed basename. Whether
/// `<dir>` is this store's directory is checked against the store later.
fn check_store_path_shape(path: &str) -> Result<(), String> {
    let base = path.rsplit('/').next().unwrap_or("");
    if !path.starts_with('/') || parse_basename(base).is_err() {
        return Err(format!(
            "'{path}' is not a store path (expected /nix/store/<hash>-<name>)"
        ));
    }
    Ok(())
}

/// The text being parsed, for turning spans into lines.
struct Cx<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Cx<'_> {
    fn line(&self, span: Range<usize>) -> usize {
        line_of(self.text, span.start)
    }

    fn err(&self, span: Range<usize>, key: &str, msg: impl Into<String>) -> PolicyError {
        PolicyError::invalid(self.file, self.line(span), key, msg)
    }

    fn globs(&self, patterns: &[Spanned<String>], key: &str) -> Result<Globs, PolicyError> {
        let texts: Vec<&str> = patterns.iter().map(|p| p.get_ref().as_str()).collect();
        Globs::new(&texts).map_err(|(i, e)| {
            let span = patterns.get(i).map_or(0..0, |p| p.span());
            let reason = match e.kind() {
                k @ globset::ErrorKind::UnclosedClass
                | k @ globset::ErrorKind::UnopenedAlternates
                | k @ globset::ErrorKind::UnclosedAlternates
                | k @ globset::ErrorKind::NestedAlternates
                | k @ globset::ErrorKind::DanglingEscape
                | k @ globset::ErrorKind::InvalidRange(..) => k.to_string(),
                _ => e.to_string(),
            };
            self.err(
                span,
                key,
                format!("invalid glob '{}' ({reason})", texts.get(i).unwrap_or(&"")),
            )
        })
    }

    fn duration(&self, v: &Spanned<toml::Value>, key: &str) -> Result<Duration, PolicyError> {
        match v.get_ref() {
            toml::Value::String(s) => parse_duration(s)
                .map_err(|m| self.err(v.span(), key, format!("invalid duration '{s}' ({m})"))),
            other => Err(self.err(
                v.span(),
                key,
                format!("invalid duration {other} (expected a string such as \"14d\")"),
            )),
        }
    }

    /// Bytes, a size (`"100GiB"`) or a share of the store's filesystem
    /// (`"15%"`).
    fn amount(&self, v: &Spanned<toml::Value>, key: &str) -> Result<Amount, PolicyError> {
        match v.get_ref() {
            toml::Value::String(s) => Amount::parse(s)
                .map_err(|m| self.err(v.span(), key, format!("invalid size '{s}' ({m})"))),
            toml::Value::Integer(n) if *n >= 0 => Ok(Amount::Bytes(*n as u64)),
            other => Err(self.err(
                v.span(),
                key,
                format!(
                    "invalid size {other} (expected bytes or a string such as \"100GiB\" or \"15%\")"
                ),
            )),
        }
    }
}

/// The 1-based line holding byte `offset` of `text`.
fn line_of(text: &str, offset: usize) -> usize {
    let end = offset.min(text.len());
    text.as_bytes()[..end]
        .iter()
        .filter(|&&b| b == b'\n')
        .count()
        + 1
}

/// The dotted key an error on 1-based `line` is about, read from the text:
/// the table header in force, then the key set on that line, or, for a line
/// inside a value spanning several lines, the key set above it. Used for
/// errors serde reports by span only (syntax errors, unknown keys, wrong
/// types).
fn key_at_line(text: &str, line: usize) -> String {
    let is_bare = |k: &str| {
        !k.is_empty()
            && k.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    };
    let mut header = String::new();
    let mut key: Option<String> = None;
    for (i, raw) in text.lines().enumerate().take(line) {
        let t = raw.split('#').next().unwrap_or("").trim();
        let here = i + 1 == line;
        if t.starts_with('[') && !t.contains('=') {
            header = t.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            key = None;
        } else if let Some((k, _)) = t.split_once('=') {
            if is_bare(k.trim()) {
                key = Some(k.trim().to_string());
            }
        } else if here && is_bare(t) {
            key = Some(t.to_string());
        }
    }
    match key {
        Some(k) if !header.is_empty() => format!("{header}.{k}"),
        Some(k) => k,
        None => header,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Policy, String> {
        parse_policy(text, Path::new("policies/x.toml")).map_err(|e| e.to_string())
    }

    #[track_caller]
    fn assert_error(text: &str, prefix: &str, contains: &str) {
        let err = parse(text).expect_err("accepted");
        assert!(
            err.starts_with(prefix),
            "{err:?} does not start with {prefix:?}"
        );
        assert!(
            err.contains(contains),
            "{err:?} does not contain {contains:?}"
        );
        assert!(!err.contains('\n'), "{err:?} spans lines");
    }

    const FULL: &str = r#"
description = "binary cache + native CI runner"

[protect]
closure-lists = ["/var/lib/storegc/nixos-configurations.txt"]
paths = ["/nix/store/0123456789abcdfghijklmnpqrsvwxyz-x"]
names = ["*-source"]

[select]
origin = "local"
older-than = "14d"
names = ["*"]
exclude-names = ["*.drv"]

[[generations]]
profile = "/nix/var/nix/profiles/system"
keep-newest = 5
keep-since = "30d"

[[generations]]
profile = "per-user/ci/profile"
keep-newest = 0

[auto-roots]
older-than = "14d"
match = ["*/result", "*/result-*"]

[budget]
max-freed = "100GiB"
until-free = 1000
order = "largest-first"
"#;

    #[test]
    fn parses_every_key() {
        let p = parse(FULL).unwrap();
        let day = 86400;
        assert_eq!(
            p.description.as_deref(),
            Some("binary cache + native CI runner")
        );
        assert_eq!(
            p.protect.closure_lists[0].value,
            PathBuf::from("/var/lib/storegc/nixos-configurations.txt")
        );
        assert_eq!(p.protect.closure_lists[0].line, 5);
        assert_eq!(p.protect.paths[0].line, 6);
        assert!(p.protect.names.is_match("abc-source"));
        assert_eq!(p.select.origin, Origin::Local);
        assert_eq!(p.select.older_than, Some(Duration::from_secs(14 * day)));
        assert!(p.select.names.as_ref().unwrap().is_match("anything"));
        assert!(p.select.exclude_names.is_match("x.drv"));
        assert_eq!(p.generations.len(), 2);
        assert_eq!(p.generations[0].keep_newest, Some(5));
        assert_eq!(
            p.generations[0].keep_since,
            Some(Duration::from_secs(30 * day))
        );
        assert_eq!(
            p.generations[1].profile.value,
            PathBuf::from("per-user/ci/profile")
        );
        assert_eq!(p.generations[1].keep_newest, Some(0));
        assert_eq!(p.generations[1].keep_since, None);
        let a = p.auto_roots.as_ref().unwrap();
        assert!(a.match_.is_match("/home/u/src/proj/result"));
        assert!(a.match_.is_match("/home/u/result-dev"));
        assert!(!a.match_.is_match("/home/u/results"));
        assert_eq!(a.match_.first_match("/a/result-x"), Some("*/result-*"));
        assert_eq!(p.budget.max_freed, Some(Amount::Bytes(100 << 30)));
        assert_eq!(p.budget.until_free, Some(Amount::Bytes(1000)));
        assert_eq!(p.budget.order, Order::LargestFirst);
        let words = p.describe();
        assert!(words.contains("registered at least 14 days ago"), "{words}");
        assert!(
            words.contains("system: the current one stays, and so do the 5 highest-numbered and those whose link is younger than 30 days;"),
            "{words}"
        );
        assert!(
            words.contains(
                "per-user/ci/profile (in the Nix state directory): the current one stays; "
            ),
            "{words}"
        );
        assert!(words.contains("at most 100 GiB"), "{words}");
    }

    #[test]
    fn empty_file_is_the_default_policy() {
        let p = parse("# nothing\n").unwrap();
        assert_eq!(
            p,
            Policy {
                file: "policies/x.toml".into(),
                sha256: crate::policy::digest::sha256_hex(b"# nothing\n"),
                ..Policy::default()
            }
        );
        assert!(p.describe().contains("No budget"));
    }

    #[test]
    fn overrides_replace_file_values() {
        let p = parse(FULL).unwrap().with_overrides(&Overrides {
            max_freed: Some(Amount::Bytes(7)),
            order: Some(Order::OldestFirst),
            older_than: Some(Duration::from_secs(60)),
            until_free: None,
        });
        assert_eq!(p.budget.max_freed, Some(Amount::Bytes(7)));
        assert_eq!(p.budget.until_free, Some(Amount::Bytes(1000)));
        assert_eq!(p.budget.order, Order::OldestFirst);
        assert_eq!(p.select.older_than, Some(Duration::from_secs(60)));
    }

    #[test]
    fn toml_syntax_error_names_file_line_and_key() {
        assert_error(
            "[select]\norigin = \"local\nolder-than = \"1d\"\n",
            "policies/x.toml:2: select.origin: ",
            "",
        );
        assert_error(
            "description = \"x\"\n\n[budget\n",
            "policies/x.toml:3: budget: ",
            "",
        );
    }

    #[test]
    fn unknown_key_names_file_line_and_key() {
        assert_error(
            "[select]\norigin = \"local\"\nolder_than = \"1d\"\n",
            "policies/x.toml:3: select.older_than: ",
            "unknown field",
        );
        assert_error("\n[selct]\n", "policies/x.toml:2: selct: ", "unknown field");
        assert_error(
            "[[generations]]\nprofile = \"system\"\n\n[[generations]]\nprofile = \"p\"\nkeep = 3\n",
            "policies/x.toml:6: generations.keep: ",
            "unknown field",
        );
    }

    #[test]
    fn bad_duration_names_file_line_and_key() {
        assert_error(
            "[select]\norigin = \"local\"\nolder-than = \"14 dayz\"\n",
            "policies/x.toml:3: select.older-than: invalid duration '14 dayz' (",
            "dayz",
        );
        assert_error(
            "[auto-roots]\nmatch = []\nolder-than = 14\n",
            "policies/x.toml:3: auto-roots.older-than: ",
            "expected a string",
        );
        assert_error(
            "[[generations]]\nprofile = \"p\"\nkeep-since = \"\"\n",
            "policies/x.toml:3: generations.keep-since: ",
            "invalid duration",
        );
    }

    #[test]
    fn bad_size_names_file_line_and_key() {
        assert_error(
            "[budget]\n\nmax-freed = \"10 GiBs\"\n",
            "policies/x.toml:3: budget.max-freed: invalid size '10 GiBs'",
            "unit",
        );
        assert_error(
            "[budget]\nuntil-free = -1\n",
            "policies/x.toml:2: budget.until-free: ",
            "invalid size",
        );
    }

    #[test]
    fn percentages_of_the_filesystem() {
        let p = parse("[budget]\nmax-freed = \"10%\"\nuntil-free = \"12.5%\"\n").unwrap();
        assert_eq!(p.budget.max_freed, Some(Amount::Share(100_000)));
        assert_eq!(p.budget.until_free, Some(Amount::Share(125_000)));
        let words = p.describe();
        assert!(
            words.contains("at most 10% of the store's filesystem (narSize) is freed"),
            "{words}"
        );
        assert!(
            words.contains("only until 12.5% of the store's filesystem is available"),
            "{words}"
        );
        assert_error(
            "[budget]\nmax-freed = \"110%\"\n",
            "policies/x.toml:2: budget.max-freed: invalid size '110%' (more than 100%",
            "",
        );
        assert_error(
            "[budget]\n\nuntil-free = \"-5%\"\n",
            "policies/x.toml:3: budget.until-free: invalid size '-5%'",
            "percentage",
        );
        assert_error(
            "[budget]\nuntil-free = 15.5\n",
            "policies/x.toml:2: budget.until-free: invalid size 15.5",
            "\"15%\"",
        );
    }

    #[test]
    fn bad_glob_names_file_line_and_key() {
        assert_error(
            "[select]\nnames = [\n  \"ok-*\",\n  \"bad[\",\n]\n",
            "policies/x.toml:4: select.names: invalid glob 'bad['",
            "",
        );
        assert_error(
            "[protect]\nnames = [\"{a,b\"]\n",
            "policies/x.toml:2: protect.names: invalid glob",
            "",
        );
        assert_error(
            "[auto-roots]\nolder-than = \"1d\"\nmatch = [\"*/result\", \"a[z-a]\"]\n",
            "policies/x.toml:3: auto-roots.match: ",
            "invalid glob",
        );
    }

    #[test]
    fn bad_order_and_origin_name_file_line_and_key() {
        assert_error(
            "[budget]\norder = \"newest-first\"\n",
            "policies/x.toml:2: budget.order: invalid order 'newest-first'",
            "",
        );
        assert_error(
            "[select]\norigin = \"remote\"\n",
            "policies/x.toml:2: select.origin: invalid origin 'remote'",
            "",
        );
    }

    /// Regression: a `[[generations]]` with no rule expired every
    /// generation but the current one.
    #[test]
    fn generations_without_a_rule_are_refused_unless_keep_newest_is_0() {
        assert_error(
            "description = \"x\"\n[[generations]]\nprofile = \"system\"\n",
            "policies/x.toml:3: generations: ",
            "neither keep-newest nor keep-since",
        );
        let p = parse("[[generations]]\nprofile = \"system\"\nkeep-newest = 0\n").unwrap();
        assert_eq!(p.generations[0].keep_newest, Some(0));
    }

    #[test]
    fn bad_values_of_other_keys_name_file_line_and_key() {
        assert_error(
            "[[generations]]\nprofile = \"p\"\nkeep-newest = -1\n",
            "policies/x.toml:3: generations.keep-newest: ",
            "",
        );
        assert_error(
            "[[generations]]\nprofile = \"/x/\"\n",
            "policies/x.toml:2: generations.profile: ",
            "profile link",
        );
        assert_error(
            "[protect]\npaths = [\"/nix/store/abc\"]\n",
            "policies/x.toml:2: protect.paths: ",
            "not a store path",
        );
        assert_error(
            "[select]\nnames = \"*\"\n",
            "policies/x.toml:2: select.names: ",
            "invalid type",
        );
        assert_error(
            "[auto-roots]\nolder-than = \"1d\"\n",
            "policies/x.toml:1: auto-roots.match: ",
            "missing field `match`",
        );
        assert_error(
            "[select]\nolder-than = \"1d\"\nolder-than = \"2d\"\n",
            "policies/x.toml:3: select.older-than: ",
            "duplicate",
        );
    }

    #[test]
    fn retention_keys_parse_and_say_what_they_mean() {
        let p = parse(
            "[protect]\nclosure-lists = [\"l.txt\"]\nbuild-closures = true\n[select]\ndead-for = \"7d\"\n\
             [auto-roots]\nolder-than = \"14d\"\nmatch = [\"*/result\"]\nkeep-newest = 3\n\
             group-by = \"/ci/(*)/**\"\n",
        )
        .unwrap();
        assert!(p.protect.build_closures);
        assert_eq!(p.select.dead_for, Some(Duration::from_secs(7 * 86400)));
        let a = p.auto_roots.as_ref().unwrap();
        assert_eq!(a.keep_newest, Some(3));
        assert_eq!(a.group_by.key("/ci/web/7/result"), Some("web".into()));
        let words = p.describe();
        assert!(
            words.contains(
                "Rollback window: a path goes only once storegc has seen it deletable for 7 days"
            ),
            "{words}"
        );
        assert!(
            words.contains("The 3 newest links of each group"),
            "{words}"
        );
        assert!(words.contains("deriver's closure"), "{words}");
        let d = parse("[auto-roots]\nolder-than = \"1d\"\nmatch = []\nkeep-newest = 1\n").unwrap();
        assert_eq!(d.auto_roots.unwrap().group_by, GroupBy::Folder);
    }

    #[test]
    fn bad_retention_values_name_file_line_and_key() {
        assert_error(
            "[select]\ndead-for = \"a week\"\n",
            "policies/x.toml:2: select.dead-for: invalid duration",
            "",
        );
        let auto = "[auto-roots]\nolder-than = \"1d\"\nmatch = []\n";
        assert_error(
            &format!("{auto}keep-newest = -2\n"),
            "policies/x.toml:4: auto-roots.keep-newest: ",
            "not a number of links",
        );
        assert_error(
            &format!("{auto}keep-newest = 2\ngroup-by = \"/ci/*/result\"\n"),
            "policies/x.toml:5: auto-roots.group-by: ",
            "no ( ) capture",
        );
        assert_error(
            &format!("{auto}group-by = \"folder\"\n"),
            "policies/x.toml:4: auto-roots.group-by: ",
            "without keep-newest",
        );
        assert_error(
            "[protect]\nbuild-closures = \"yes\"\n",
            "policies/x.toml:2: protect.build-closures: ",
            "invalid type",
        );
    }

    #[test]
    fn missing_policy_file_is_one_line() {
        let err = load_policy(Path::new("/nonexistent/p.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("/nonexistent/p.toml: cannot read '/nonexistent/p.toml' ("),
            "{err}"
        );
    }

    #[test]
    fn shipped_policies_parse() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for name in ["nix-cache.toml", "low-disk.toml", "workstation.toml"] {
            let p = load_policy(&dir.join(name)).unwrap_or_else(|e| panic!("{e}"));
            assert!(p.description.is_some(), "{name} has no description");
            assert!(!p.describe().is_empty());
        }
        let cache = load_policy(&dir.join("nix-cache.toml")).unwrap();
        assert_eq!(cache.select.origin, Origin::Local);
        assert_eq!(
            cache.select.older_than,
            Some(Duration::from_secs(14 * 86400))
        );
        assert_eq!(cache.generations[0].keep_newest, Some(5));
        assert_eq!(cache.protect.closure_lists.len(), 1);
        assert_eq!(cache.select.dead_for, Some(Duration::from_secs(7 * 86400)));
        let ci = cache.auto_roots.as_ref().unwrap();
        assert_eq!(ci.keep_newest, Some(3));
        assert_eq!(
            ci.group_by
                .key("/var/lib/gitea-runner/native/fleet/nixos/job-9/result"),
            Some("fleet\u{0}nixos".to_string())
        );
        let low = load_policy(&dir.join("low-disk.toml")).unwrap();
        assert_eq!(low.budget.order, Order::LargestFirst);
        assert!(low.budget.until_free.is_some());
        assert!(!low.protect.closure_lists.is_empty());
        let ws = load_policy(&dir.join("workstation.toml")).unwrap();
        assert!(ws
            .generations
            .iter()
            .all(|g| g.keep_newest.is_some() && g.keep_since.is_some()));
        assert!(ws
            .auto_roots
            .as_ref()
            .unwrap()
            .match_
            .is_match("/home/alice/src/x/result"));
    }
}
