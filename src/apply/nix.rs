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
    /// Nix refused this path as still alive; it stopped there, possibly
    /// after deleting some of the others.
    Alive(String),
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

/// Reads Nix's refusal ("Cannot delete path 'P' since it is still alive")
/// or its last error line.
pub fn parse_failure(stderr: &str) -> DeleteOutcome {
    const MARK: &str = "Cannot delete path '";
    if let Some(i) = stderr.find(MARK) {
        let rest = &stderr[i + MARK.len()..];
        if let Some(end) = rest.find('\'') {
            return DeleteOutcome::Alive(rest[..end].to_string());
        }
    }
    let last = stderr
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("nix-store failed without a message")
        .trim()
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
        assert_eq!(parse_failure(e), DeleteOutcome::Alive("/s/abc-x".into()));
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
}
