//! `storegc-floor DB`: the physical limit for `storegc plan`'s database
//! phase. Reads exactly the columns storegc needs from `ValidPaths` and
//! `Refs` with rusqlite, one read transaction, and discards them (summing
//! the integers so the reads cannot be optimised away). benches/compare.sh
//! times it beside `storegc plan`.

use std::process::ExitCode;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

fn main() -> ExitCode {
    let Some(db) = std::env::args().nth(1) else {
        eprintln!("usage: storegc-floor DB");
        return ExitCode::from(2);
    };
    match run(&db) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storegc-floor: {db}: {e}");
            ExitCode::from(2)
        }
    }
}

fn run(db: &str) -> rusqlite::Result<()> {
    let start = Instant::now();
    let conn = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    conn.execute_batch("BEGIN")?;
    let (mut rows, mut sum, mut bytes) = (0u64, 0i64, 0usize);
    let mut stmt = conn.prepare(
        "SELECT id, path, registrationTime, deriver, narSize, ultimate, \
         (sigs IS NOT NULL AND sigs != '') FROM ValidPaths",
    )?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        sum = sum.wrapping_add(r.get_ref_unwrap(0).as_i64().unwrap_or(0));
        bytes += r.get_ref_unwrap(1).as_bytes().map(<[u8]>::len).unwrap_or(0);
        sum = sum.wrapping_add(
            r.get_ref_unwrap(2)
                .as_i64_or_null()
                .ok()
                .flatten()
                .unwrap_or(0),
        );
        bytes += r
            .get_ref_unwrap(3)
            .as_bytes_or_null()
            .ok()
            .flatten()
            .map(<[u8]>::len)
            .unwrap_or(0);
        sum = sum.wrapping_add(
            r.get_ref_unwrap(4)
                .as_i64_or_null()
                .ok()
                .flatten()
                .unwrap_or(0),
        );
        sum = sum.wrapping_add(
            r.get_ref_unwrap(5)
                .as_i64_or_null()
                .ok()
                .flatten()
                .unwrap_or(0),
        );
        sum = sum.wrapping_add(r.get_ref_unwrap(6).as_i64().unwrap_or(0));
        rows += 1;
    }
    drop(q);
    let mut stmt = conn.prepare("SELECT referrer, reference FROM Refs")?;
    let mut q = stmt.query([])?;
    while let Some(r) = q.next()? {
        sum = sum.wrapping_add(
            r.get_ref_unwrap(0).as_i64().unwrap_or(0) ^ r.get_ref_unwrap(1).as_i64().unwrap_or(0),
        );
        rows += 1;
    }
    drop(q);
    conn.execute_batch("COMMIT")?;
    eprintln!(
        "storegc-floor: {rows} rows, {bytes} bytes of text (checksum {sum}) in {:.3}s",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}
