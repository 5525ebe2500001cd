//! A test-only hook: `STOREGC_TEST_PAUSE=<point>[:<n>]` makes the engine
//! stop itself (`SIGSTOP`) the `n`th time (default: the first) it reaches
//! that point, so a crash test can `SIGKILL` it exactly there
//! (tests/apply_crash.rs). Points: `socket` (lock taken, gc-socket up, no
//! root read yet), `transaction` (a chunk's rows deleted, not committed),
//! `files` (a chunk committed, its first path's files removed, the others
//! not yet), `links` (a `.links` entry removed), `orphans` (an entry
//! without a row removed). Unset, as in every real run, it costs one
//! environment lookup per point.

use std::sync::atomic::{AtomicUsize, Ordering};

/// How many times the paused-at point was reached so far.
static REACHED: AtomicUsize = AtomicUsize::new(0);

/// Stops the process when `STOREGC_TEST_PAUSE` names `point` and this is
/// the `n`th time it is reached.
pub fn at(point: &str) {
    let Some(want) = std::env::var_os("STOREGC_TEST_PAUSE") else {
        return;
    };
    let want = want.to_string_lossy();
    let (name, n) = match want.split_once(':') {
        Some((name, n)) => (name, n.parse::<usize>().unwrap_or(1)),
        None => (&*want, 1),
    };
    if name != point || REACHED.fetch_add(1, Ordering::SeqCst) + 1 != n {
        return;
    }
    eprintln!("storegc: STOREGC_TEST_PAUSE: stopped at {point} ({n})");
    // SAFETY: raising a signal on our own process.
    unsafe { libc::raise(libc::SIGSTOP) };
}
