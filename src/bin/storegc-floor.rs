//! Physical limits, for the benchmarks to hold storegc against.
//!
//! `storegc-floor DB`: the limit for `storegc plan`'s database phase.
//! Reads exactly the columns storegc needs from `ValidPaths` and `Refs`
//! with rusqlite, one read transaction, and discards them (summing the
//! integers so the reads cannot be optimised away). benches/compare.sh
//! times it beside `storegc plan`.
//!
//! `storegc-floor --delete DB PATHS`: the database half of the limit for
//! `storegc apply` (benches/apply.sh adds a parallel `rm -rf` of the same
//! paths): one write transaction, foreign keys on, deleting the `Refs` of
//! every path listed in the file PATHS (one store path a line), then their
//! `ValidPaths` rows. No liveness check, no lock, no socket: only for a
//! bench store whose PATHS are known dead and closed under referrers.

use std::process::ExitCode;
use std::time::Instant;

use rusqlite::{Connection, OpenFlags};

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (what, result) = match args.as_slice() {
        [db] => (db.clone(), run(db)),
        [flag, db, paths] if flag == "--delete" => (db.clone(), delete(db, paths)),
        _ => {
            eprintln!("usage: storegc-floor DB | storegc-floor --delete DB PATHS");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("storegc-floor: {what}: {e}");
            ExitCode::from(2)
        }
    }
}

/// One transaction deleting the rows of every path in the file `paths`.
fn delete(db: &str, paths: &str) -> Result<(), Box<dyn std::error::Error>> {
    let start = Instant::now();
    let list = std::fs::read_to_string(paths).map_err(|e| format!("{paths}: {e}"))?;
    let mut conn = Connection::open(db)?;
    conn.busy_timeout(std::time::Duration::from_secs(60))?;
    conn.execute_batch("PRAGMA foreign_keys = ON;")?;
    let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
    let mut ids = Vec::new();
    {
        let mut id_of = tx.prepare("SELECT id FROM ValidPaths WHERE path = ?1")?;
        let mut refs = tx.prepare("DELETE FROM Refs WHERE referrer = ?1")?;
        for p in list.lines().filter(|l| !l.is_empty()) {
            let id: i64 = id_of
                .query_row([p], |r| r.get(0))
                .map_err(|e| format!("{p}: {e}"))?;
            refs.execute([id])?;
            ids.push(id);
        }
        let mut valid = tx.prepare("DELETE FROM ValidPaths WHERE id = ?1")?;
        for &id in &ids {
            valid.execute([id])?;
        }
    }
    tx.commit()?;
    eprintln!(
        "storegc-floor: deleted the rows of {} paths in {:.3}s",
        ids.len(),
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn run(db: &str) -> Result<(), Box<dyn std::error::Error>> {
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
