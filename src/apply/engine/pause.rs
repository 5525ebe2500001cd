//! A test-only hook: `STOREGC_TEST_PAUSE=<point>` makes the engine stop
//! itself (`SIGSTOP`) when it reaches that point, so a crash test can
//! `SIGKILL` it exactly there (tests/apply_crash.rs). Points: `socket`
//! (lock taken, gc-socket up, no root read yet), `transaction` (a chunk's
//! rows deleted, not committed), `files` (a chunk committed, its first
//! path's files removed, the others not yet), `links` (the first `.links`
//! entry removed), `orphans` (the first entry without a row removed).
//! Unset, as in every real run, it costs one environment lookup per point.

/// Stops the process when `STOREGC_TEST_PAUSE` names `point`.
pub fn at(point: &str) {
    if std::env::var_os("STOREGC_TEST_PAUSE").is_some_and(|v| v == point) {
        eprintln!("storegc: STOREGC_TEST_PAUSE: stopped at {point}");
        // SAFETY: raising a signal on our own process.
        unsafe { libc::raise(libc::SIGSTOP) };
    }
}
