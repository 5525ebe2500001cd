//! Exit codes, in one place: scripts and the systemd unit rely on them.

/// How the process ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExitCode {
    /// Everything asked for was done.
    Success = 0,
    /// Some work failed (e.g. some deletions failed); details on stderr.
    Partial = 1,
    /// Bad input (flags, files, store, plan): nothing was changed.
    BadInput = 2,
}

impl From<ExitCode> for std::process::ExitCode {
    fn from(code: ExitCode) -> Self {
        std::process::ExitCode::from(code as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_stable() {
        assert_eq!(ExitCode::Success as u8, 0);
        assert_eq!(ExitCode::Partial as u8, 1);
        assert_eq!(ExitCode::BadInput as u8, 2);
    }
}
