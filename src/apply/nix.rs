//! Deleting through Nix: `nix-store --delete` re-checks liveness under
//! Nix's own GC lock and serves its gc-socket, so builds running beside us
//! stay safe. Never `--ignore-liveness`.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::settings::Settings;

/// How one `nix-store --delete` call ended.
#[derive(Debug, PartialEq, Eq)]
pub enum DeleteOutcome {
    /// Every path given is gone.
    Done,
    /// Nix refused these paths as still alive (at least one; full store
    /// paths, or basenames where Lix prints those), possibly after deleting
    /// some of the others. Nix names one path and stops there; Lix goes on
    /// and names up to eleven of those it kept.
    Alive(Vec<String>),
    /// Any other failure, with Nix's last error line.
    Failed(String),
}

/// Runs `nix-store --delete` on `paths` with this store's environment.
pub fn delete(
    nix_store: &Path,
    settings: &Settings,
    paths: &[String],
) -> std::io::Result<DeleteOutcome> {
    let out = Command::new(nix_store)
        // Its own process group: Ctrl-C on a terminal reaches only storegc,
        // which lets this batch finish and stops before the next.
        .process_group(0)
        .arg("--delete")
        .args(paths)
        .env("NIX_STORE_DIR", settings.store_dir.as_str())
        .env("NIX_STATE_DIR", &settings.state_dir)
        .stdin(std::process::Stdio::null())
        .output()?;
    if out.status.success() {
        return Ok(DeleteOutcome::Done);
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(parse_failure(&stderr))
}

/// Nix's refusal, all versions from 2.8 to 2.35: "Cannot delete path 'P'
/// since it is still alive. To find out why, use: ...".
const NIX_REFUSAL: &str = "Cannot delete path '";

/// Lix 2.93+: "Cannot delete some of the given paths because they are
/// still alive. Paths not deleted:" then one line "  P" per kept path (its
/// basename), at most eleven, then maybe "and N others." and "To find out
/// why, ...".
const LIX_REFUSAL: &str = "Paths not deleted:";

/// Reads Nix's or Lix's refusal or else the last error line. Through the
/// daemon the text may carry "error: " prefixes, repeated.
pub fn parse_failure(stderr: &str) -> DeleteOutcome {
    let alive: Vec<String> = refused_by_nix(stderr)
        .into_iter()
        .chain(refused_by_lix(stderr))
        .collect();
    if !alive.is_empty() {
        return DeleteOutcome::Alive(alive);
    }
    // Nix prints its summary ("0 store paths deleted, ...") after the
    // error: the last "error:" line says why, else the last line.
    let lines = || {
        stderr
            .lines()
            .rev()
            .map(str::trim)
            .filter(|l| !l.is_empty())
    };
    let last = lines()
        .find(|l| l.starts_with("error:"))
        .or_else(|| lines().next())
        .unwrap_or("nix-store failed without a message")
        .to_string();
    DeleteOutcome::Failed(last)
}

/// Bytes one pointer in `argv`/`envp` takes.
pub const PTR: usize = std::mem::size_of::<usize>();

/// Room kept free under `ARG_MAX` beyond what is counted.
const ARG_MARGIN: usize = 32 * 1024;

/// The bytes of store-path arguments one `nix-store --delete` call may
/// take: `sysconf(ARG_MAX)` minus this process's environment, the two
/// variables [`delete`] adds, the program and `--delete`, and a margin.
/// Each path then costs its length, a NUL and an `argv` pointer. O(env).
pub fn arg_budget(nix_store: &Path, settings: &Settings) -> usize {
    // SAFETY: sysconf has no preconditions.
    let max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) };
    // POSIX guarantees at least 4096; Linux at least 128 KiB.
    let max = if max > 0 { max as usize } else { 4096 };
    let env: usize = std::env::vars_os()
        .map(|(k, v)| k.len() + v.len() + 2 + PTR)
        .sum();
    let ours = "NIX_STORE_DIR=".len()
        + settings.store_dir.as_str().len()
        + "NIX_STATE_DIR=".len()
        + settings.state_dir.as_os_str().len()
        + 2 * (1 + PTR);
    let fixed = nix_store.as_os_str().len() + "--delete".len() + 2 + 3 * PTR;
    max.saturating_sub(env + ours + fixed + ARG_MARGIN)
}

/// The paths of every "Cannot delete path 'P'" in `stderr`. O(len).
fn refused_by_nix(stderr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = stderr;
    while let Some(i) = rest.find(NIX_REFUSAL) {
        rest = &rest[i + NIX_REFUSAL.len()..];
        let Some(end) = rest.find('\'') else { break };
        if end > 0 {
            out.push(rest[..end].to_string());
        }
        rest = &rest[end..];
    }
    out
}

/// The paths listed after Lix's "Paths not deleted:". O(len).
fn refused_by_lix(stderr: &str) -> Vec<String> {
    let Some(i) = stderr.find(LIX_REFUSAL) else {
        return Vec::new();
    };
    let after = &stderr[i + LIX_REFUSAL.len()..];
    after
        .lines()
        .skip(1) // the rest of the marker's own line
        .map(strip_error_prefixes)
        .take_while(|l| is_path_word(l))
        .map(str::to_string)
        .collect()
}

/// A line without its indentation and any "error: " prefixes.
fn strip_error_prefixes(line: &str) -> &str {
    let mut l = line.trim();
    while let Some(r) = l.strip_prefix("error:") {
        l = r.trim_start();
    }
    l
}

/// One word that can be a store path or a basename ("hash-name", or
/// "/store/hash-name"): no spaces, a '-' after the hash part.
fn is_path_word(l: &str) -> bool {
    let base = l.rsplit('/').next().unwrap_or(l);
    !l.is_empty() && !l.contains(char::is_whitespace) && base.find('-').is_some_and(|d| d > 0)
}

/// `nix-store` from `--nix-store`, else from PATH.
pub fn find_nix_store(flag: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = flag {
        return Some(p.to_path_buf());
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("nix-store"))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_nix_refusal_and_other_errors() {
        let e = "finding garbage collector roots...\nerror: Cannot delete path '/s/abc-x' since it is still alive. To find out why, use: nix-store --query --roots\n";
        assert_eq!(
            parse_failure(e),
            DeleteOutcome::Alive(vec!["/s/abc-x".into()])
        );
        assert_eq!(
            parse_failure("error: opening lock file '/x': Permission denied\n\n"),
            DeleteOutcome::Failed("error: opening lock file '/x': Permission denied".into())
        );
    }

    #[test]
    fn arg_budget_is_under_arg_max_and_shrinks_with_the_program_path() {
        let settings = Settings {
            store_dir: crate::store_path::StoreDir::new("/s/store"),
            state_dir: PathBuf::from("/s/var"),
            gc: Default::default(),
            conf_files: vec![],
            ca_derivations: false,
            warnings: vec![],
        };
        let max = unsafe { libc::sysconf(libc::_SC_ARG_MAX) } as usize;
        let short = arg_budget(Path::new("/n"), &settings);
        let long = arg_budget(Path::new(&format!("/{}", "n".repeat(1000))), &settings);
        assert!(short < max - ARG_MARGIN, "{short} vs ARG_MAX {max}");
        assert_eq!(short - long, 999);
    }

    #[test]
    fn the_error_line_wins_over_the_summary_after_it() {
        let e = "finding garbage collector roots...\nerror: path '/tmp/x' is not in the Nix store\n0 store paths deleted, 0.00 MiB freed\n";
        assert_eq!(
            parse_failure(e),
            DeleteOutcome::Failed("error: path '/tmp/x' is not in the Nix store".into())
        );
        assert_eq!(
            parse_failure("killed\n"),
            DeleteOutcome::Failed("killed".into())
        );
    }

    #[test]
    fn parses_the_refusal_of_nix_2_26_to_2_35() {
        let e = "error: Cannot delete path '/s/abc-x' since it is still alive. To find out why, use: nix-store --query --roots and nix-store --query --referrers\n";
        assert_eq!(
            parse_failure(e),
            DeleteOutcome::Alive(vec!["/s/abc-x".into()])
        );
    }

    #[test]
    fn parses_a_refusal_relayed_by_the_daemon() {
        let e = "error: error: Cannot delete path '/s/abc-x' since it is still alive. To find out why, use: nix-store --query --roots\n";
        assert_eq!(
            parse_failure(e),
            DeleteOutcome::Alive(vec!["/s/abc-x".into()])
        );
        let lix = "error: error: Cannot delete some of the given paths because they are still alive. Paths not deleted:\n  abc-x\n  def-y\nTo find out why, use nix-store --query --roots and nix-store --query --referrers.\n";
        assert_eq!(
            parse_failure(lix),
            DeleteOutcome::Alive(vec!["abc-x".into(), "def-y".into()])
        );
    }

    #[test]
    fn parses_the_refusal_of_lix_with_its_summary() {
        let mut e = String::from("error: Cannot delete some of the given paths because they are still alive. Paths not deleted:");
        for i in 0..11 {
            e.push_str(&format!("\n  h{i:02}-p{i}"));
        }
        e.push_str("\nand 3 others.\nTo find out why, use nix-store --query --roots and nix-store --query --referrers.\n");
        let DeleteOutcome::Alive(paths) = parse_failure(&e) else {
            panic!("not a refusal: {e}");
        };
        assert_eq!(paths.len(), 11);
        assert_eq!(paths[0], "h00-p0");
        assert_eq!(paths[10], "h10-p10");
    }

    #[test]
    fn a_lix_refusal_naming_no_path_is_a_failure() {
        let e = "error: Cannot delete some of the given paths because they are still alive. Paths not deleted:\nTo find out why, use nix-store --query --roots.\n";
        assert!(matches!(parse_failure(e), DeleteOutcome::Failed(_)));
    }
}
