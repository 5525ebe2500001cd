//! The rollback window's state at scale: a million tracked paths saved
//! (encode, temp file, fsync, rename, fsync of the folder), loaded (read,
//! checksum, decode) and joined with a snapshot, with the file's size.
//! Prints one row per step, best of three. The README's numbers come from
//! `cargo bench --bench deadsince`.
//!
//! `STOREGC_BENCH_STATE_PATHS` sets the number of paths (default
//! 1,000,000; 10,000 when `cargo test` runs the bench once as a smoke
//! test).

use std::time::{Duration, Instant};

use storegc::db::{PathRow, Snapshot};
use storegc::deadsince::{self, DeadSince};
use storegc::paths::PathId;

const STORE: &str = "/nix/store";
const NOW: i64 = 1_800_000_000;

/// A store hash for `i`, spread over the alphabet like real ones.
fn hash(i: u64) -> String {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut x = i.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ i;
    (0..32)
        .map(|k| {
            if k == 16 {
                x = i
                    .wrapping_add(0x1234_5678)
                    .wrapping_mul(0xBF58_476D_1CE4_E5B9);
            }
            let c = ALPHABET[(x % 32) as usize] as char;
            x /= 32;
            c
        })
        .collect()
}

fn best<T>(mut f: impl FnMut() -> T) -> (Duration, T) {
    let mut out = None;
    let mut best = Duration::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        let v = f();
        best = best.min(t.elapsed());
        out = Some(v);
    }
    (best, out.expect("ran"))
}

fn row(what: &str, n: usize, d: Duration) {
    println!("| {n} | {what} | {:.3} |", d.as_secs_f64());
}

fn main() {
    let benching = std::env::args().any(|a| a == "--bench");
    let n: usize = std::env::var("STOREGC_BENCH_STATE_PATHS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(if benching { 1_000_000 } else { 10_000 });
    let rows: Vec<PathRow> = (0..n as u64)
        .map(|i| PathRow {
            basename: format!("{}-p{i}", hash(i)),
            ..PathRow::default()
        })
        .collect();
    let snap = Snapshot::from_rows(rows, &[], vec![]);
    let dead: Vec<PathId> = (0..n as PathId).collect();
    let dir = tempfile::tempdir().expect("temp dir");
    let file = deadsince::default_file(dir.path());

    println!("| paths | step | seconds |\n|---:|---|---:|");
    let (d, state) = best(|| DeadSince::new(STORE).next(&snap, &dead, NOW));
    assert_eq!(state.len(), n);
    row("next state from a run (all new)", n, d);
    let (d, _) = best(|| state.save(&file).expect("save"));
    row("save (encode, fsync, rename, fsync folder)", n, d);
    let size = std::fs::metadata(&file).expect("state file").len();
    let (d, loaded) = best(|| {
        deadsince::load(&file, STORE)
            .expect("load")
            .expect("present")
    });
    assert_eq!(loaded, state);
    row("load (read, checksum, decode)", n, d);
    let (d, since) = best(|| loaded.since_by_id(&snap));
    assert!(since.iter().all(|s| *s == Some(NOW)));
    row("dates by id (join with the snapshot)", n, d);
    let (d, _) = best(|| loaded.next(&snap, &dead, NOW + 86_400));
    row("next state from a run (dates kept)", n, d);
    println!(
        "state file: {} bytes ({:.1} MB, {} bytes a path)",
        size,
        size as f64 / 1e6,
        size / n.max(1) as u64
    );
}
