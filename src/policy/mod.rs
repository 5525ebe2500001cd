//! The policy engine: which unrooted or expirable store paths may go.
//!
//! Nix decides what is *alive*; a policy decides, among what Nix would let
//! go, what storegc *does* let go, and which Nix roots it may expire first.
//! It exists for hosts like a binary cache that is also a CI runner, where
//! "unreachable" is not the same as "unwanted" (a host's next system is built
//! here before any root points to it) and where old CI outputs and old
//! generations pile up behind roots nobody removes.
//!
//! Three stages, data flowing one way:
//! - [`file`]: the TOML policy file parsed into a typed [`Policy`] (pure:
//!   text in, policy or one-line error out);
//! - [`inputs`]: the only IO here, done once: closure-list files, profiles'
//!   generation links and auto roots' outer links, giving [`PolicyInputs`];
//! - [`eval`]: the decision itself, a pure function of the snapshot, the
//!   liveness graph, the roots, the policy, the inputs, `now` and the free
//!   space the caller measured, giving a [`Decision`].
//!
//! [`Policy::default`] is "no policy": evaluating it gives exactly Nix's
//! dead set.

pub mod budget;
pub mod digest;
pub mod eval;
pub mod file;
pub mod group;
pub mod inputs;
pub mod reference;
pub mod units;

use std::fmt;
use std::path::PathBuf;

pub use budget::{Amount, Space};
pub use digest::{InputFile, InputKind};
pub use eval::{
    build_closure, evaluate, BudgetOutcome, ByReason, Decision, ExpiredRoot, Expiry, Kept, Reason,
    Tally, WindowOutcome,
};
pub use file::{
    load_policy, parse_policy, AutoRoots, Budget, Generations, Globs, Located, Order, Origin,
    Overrides, Policy, Protect, Select,
};
pub use group::GroupBy;
pub use inputs::{gather, PolicyInputs, ProfileFacts, RootFact};
pub use units::{format_duration, format_size, parse_duration, parse_size};

/// Everything that can be wrong with a policy or the files it names. Every
/// variant prints as one line naming the file, the line (when known) and the
/// policy key at fault.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    /// Bad TOML, an unknown key, or a value that does not parse; also a bad
    /// line in a closure list (then `file` is the list and `line` its line).
    #[error("{}{msg}", Location { file, line: *line, key })]
    Invalid {
        file: PathBuf,
        line: usize,
        key: String,
        msg: String,
    },
    /// A file cannot be read: the policy itself (`line` 0, empty `key`) or a
    /// closure list (`file`/`line` where the policy names it).
    /// The I/O error is part of the message, not a `source`, so that
    /// `{:#}` prints it once.
    #[error("{}cannot read '{}' ({io})", Location { file, line: *line, key }, path.display())]
    Read {
        file: PathBuf,
        line: usize,
        key: String,
        path: PathBuf,
        io: std::io::Error,
    },
    /// The rollback window's state file is unreadable, corrupt or from
    /// another store.
    #[error(transparent)]
    DeadSince(#[from] crate::deadsince::DeadSinceError),
}

impl PolicyError {
    pub(crate) fn invalid(
        file: &std::path::Path,
        line: usize,
        key: &str,
        msg: impl Into<String>,
    ) -> PolicyError {
        PolicyError::Invalid {
            file: file.to_path_buf(),
            line,
            key: key.to_string(),
            msg: msg.into(),
        }
    }
}

/// `file:line: key: ` with the parts that are known.
struct Location<'a> {
    file: &'a PathBuf,
    line: usize,
    key: &'a str,
}

impl fmt::Display for Location<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if self.line > 0 {
            write!(f, ":{}", self.line)?;
        }
        f.write_str(": ")?;
        if !self.key.is_empty() {
            write!(f, "{}: ", self.key)?;
        }
        Ok(())
    }
}
