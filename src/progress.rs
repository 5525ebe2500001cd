//! Progress bars on stderr, decided once: drawn only when stderr is a
//! terminal and neither `--quiet` nor `-v` is given (logs and bars do not
//! mix), as uv's printer does.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};

/// Whether bars are drawn; built once from the global flags.
#[derive(Debug, Clone, Copy)]
pub struct Printer {
    bars: bool,
}

impl Printer {
    pub fn new(quiet: bool, verbose: u8) -> Printer {
        Printer {
            bars: !quiet
                && verbose == 0
                && std::env::var_os("STOREGC_LOG").is_none()
                && std::io::stderr().is_terminal(),
        }
    }

    /// A bar of `len` steps, hidden when bars are off.
    pub fn bar(&self, len: u64, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new(len);
        bar.set_style(
            ProgressStyle::with_template("{spinner} {msg:12} [{bar:30}] {pos}/{len} ({eta})")
                .expect("static template")
                .progress_chars("=> "),
        );
        bar.set_message(what.to_string());
        bar
    }

    /// A bar for deletions: paths deleted of the total, and the bytes
    /// (narSize) those were, given by [`DeletionBar::advance`] chunk by
    /// chunk. Hidden when bars are off.
    pub fn deletion_bar(&self) -> DeletionBar {
        let bar = if self.bars {
            let bar = ProgressBar::new(0);
            bar.set_style(
                ProgressStyle::with_template(
                    "{spinner} deleting [{bar:30}] {pos}/{len} paths, {msg} ({eta})",
                )
                .expect("static template")
                .progress_chars("=> "),
            );
            bar
        } else {
            ProgressBar::hidden()
        };
        DeletionBar {
            bar,
            bytes: Default::default(),
        }
    }

    /// A spinner for a phase of unknown length.
    pub fn spinner(&self, what: &str) -> ProgressBar {
        if !self.bars {
            return ProgressBar::hidden();
        }
        let bar = ProgressBar::new_spinner();
        bar.set_message(what.to_string());
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        bar
    }
}

/// Paths and bytes deleted so far, out of the totals.
pub struct DeletionBar {
    pub bar: ProgressBar,
    /// (done, total) narSize bytes.
    bytes: std::sync::Mutex<(u64, u64)>,
}

impl DeletionBar {
    pub fn start(&self, paths: u64, bytes: u64) {
        self.bar.set_length(paths);
        *self.bytes.lock().unwrap_or_else(|p| p.into_inner()) = (0, bytes);
        self.bar.set_message(bytes_message(0, bytes));
    }

    /// One batch (or chunk) done.
    pub fn advance(&self, paths: u64, bytes: u64) {
        let mut b = self.bytes.lock().unwrap_or_else(|p| p.into_inner());
        b.0 = b.0.saturating_add(bytes);
        self.bar.set_message(bytes_message(b.0, b.1));
        self.bar.inc(paths);
    }
}

/// "1.5 GiB of 3.0 GiB".
fn bytes_message(done: u64, total: u64) -> String {
    use crate::report::human_bytes;
    format!("{} of {}", human_bytes(done), human_bytes(total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_deletion_bar_counts_paths_and_bytes_and_is_hidden_off_a_terminal() {
        let p = Printer { bars: false };
        let b = p.deletion_bar();
        assert!(b.bar.is_hidden());
        b.start(10, 4096);
        b.advance(3, 1024);
        b.advance(2, 1024);
        assert_eq!(b.bar.position(), 5);
        assert_eq!(b.bar.length(), Some(10));
        assert_eq!(b.bar.message(), bytes_message(2048, 4096));
        assert!(bytes_message(2048, 4096).contains(" of "));
    }
}
