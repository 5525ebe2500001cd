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
