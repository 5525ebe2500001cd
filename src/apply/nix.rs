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
}
