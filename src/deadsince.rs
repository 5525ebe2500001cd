//! The rollback window's memory: since when storegc has seen each store
//! path deletable, without a break (`[select] dead-for`).
//!
//! It exists because nothing in Nix's database says when a path stopped
//! being used: a path only goes once it has been deletable for the whole
//! window, so a host that rolls back, or a CI job that needs yesterday's
//! output, still finds it. `plan --out` and `apply` write it; a plain
//! `plan` only reads it. The pure parts ([`DeadSince::decode`],
//! [`DeadSince::encode`], [`DeadSince::next`], [`DeadSince::since_by_id`])
//! take bytes, ids and `now` as arguments; [`load`] and [`DeadSince::save`]
//! are the only IO.
//!
//! The file (all integers little-endian):
//!
//! ```text
//! magic    8 bytes   "SGCDEAD\0"
//! version  u32       1
//! store    u32 len + bytes: the store directory it was made for
//! count    u64
//! entries  count x (32-byte hash part, i64 unix seconds), hash ascending, unique
//! check    32 bytes  SHA-256 of everything above
//! ```
//!
//! 40 bytes a path: a million paths are 40 MB. A file from another store,
//! of another version, cut short or with a byte changed is refused with
//! one line naming the file and what is wrong.

use std::io::Write as _;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use crate::db::Snapshot;
use crate::paths::PathId;
use crate::store_path::{hash_of, HASH_LEN};

/// The first bytes of a state file.
pub const MAGIC: &[u8; 8] = b"SGCDEAD\0";
/// The only version read and written.
pub const VERSION: u32 = 1;
/// Bytes per entry.
const ENTRY: usize = HASH_LEN + 8;
/// Bytes of the trailing SHA-256.
const CHECK: usize = 32;

/// Everything that can be wrong with a state file; each prints as one line
/// naming the file.
#[derive(Debug, thiserror::Error)]
pub enum DeadSinceError {
    #[error("{}: cannot read the dead-since state ({io})", file.display())]
    Read { file: PathBuf, io: std::io::Error },
    #[error("{}: dead-since state is corrupt: {what}; nothing is deleted (move it away to start the rollback window afresh)", file.display())]
    Corrupt { file: PathBuf, what: String },
    #[error("{}: dead-since state was made for store {found}, not {expected}; nothing is deleted (use --state-file)", file.display())]
    Foreign {
        file: PathBuf,
        found: String,
        expected: String,
    },
    #[error("{}: cannot write the dead-since state ({io})", file.display())]
    Write { file: PathBuf, io: std::io::Error },
}

/// Hash part -> the time a path with it was first seen deletable in the
/// current unbroken stretch.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeadSince {
    store_dir: String,
    /// Sorted by hash, unique.
    entries: Vec<([u8; HASH_LEN], i64)>,
}

impl DeadSince {
    /// An empty state for `store_dir`.
    pub fn new(store_dir: &str) -> DeadSince {
        DeadSince {
            store_dir: store_dir.to_string(),
            entries: Vec::new(),
        }
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn store_dir(&self) -> &str {
        &self.store_dir
    }

    /// The date recorded for a hash part. O(log s).
    pub fn get(&self, hash: &str) -> Option<i64> {
        let key: [u8; HASH_LEN] = hash.as_bytes().try_into().ok()?;
        self.entries
            .binary_search_by(|e| e.0.cmp(&key))
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// The date of each valid path (`None`: not seen deletable before).
    /// O(n + s): one hash-index lookup per entry (entries of paths no
    /// longer valid find nothing).
    pub fn since_by_id(&self, snap: &Snapshot) -> Vec<Option<i64>> {
        let mut since = vec![None; snap.len()];
        for (hash, time) in &self.entries {
            let id = std::str::from_utf8(hash)
                .ok()
                .and_then(|h| snap.paths.lookup_hash(h));
            if let Some(id) = id {
                since[id as usize] = Some(*time);
            }
        }
        since
    }

    /// The state after a run that found `dead` (ids of `snap`) deletable
    /// at `now`: each keeps its date, or starts one now; every other path
    /// (live again, or gone) loses its date. Pure; O(n + s + d log d).
    pub fn next(&self, snap: &Snapshot, dead: &[PathId], now: i64) -> DeadSince {
        let since = self.since_by_id(snap);
        let mut entries: Vec<([u8; HASH_LEN], i64)> = dead
            .iter()
            .filter_map(|&id| {
                let hash = hash_of(snap.paths.get(id));
                let key: [u8; HASH_LEN] = hash.as_bytes().try_into().ok()?;
                Some((key, since[id as usize].unwrap_or(now)))
            })
            .collect();
        entries.sort_unstable();
        entries.dedup_by(|a, b| a.0 == b.0);
        DeadSince {
            store_dir: self.store_dir.clone(),
            entries,
        }
    }

    /// Drops the dates of these hash parts (paths deleted, or found live
    /// again). O(s + k log k).
    pub fn forget<'a>(&mut self, hashes: impl IntoIterator<Item = &'a str>) {
        let mut gone: Vec<&[u8]> = hashes.into_iter().map(str::as_bytes).collect();
        gone.sort_unstable();
        self.entries
            .retain(|e| gone.binary_search(&e.0.as_slice()).is_err());
    }

    /// The file's bytes. Pure; O(s).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(24 + self.store_dir.len() + self.entries.len() * ENTRY);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&(self.store_dir.len() as u32).to_le_bytes());
        out.extend_from_slice(self.store_dir.as_bytes());
        out.extend_from_slice(&(self.entries.len() as u64).to_le_bytes());
        for (hash, time) in &self.entries {
            out.extend_from_slice(hash);
            out.extend_from_slice(&time.to_le_bytes());
        }
        let check = Sha256::digest(&out);
        out.extend_from_slice(&check);
        out
    }

    /// Parses a state file's bytes, refusing anything but a whole, intact
    /// file made for `store_dir`. Pure; O(s).
    pub fn decode(bytes: &[u8], file: &Path, store_dir: &str) -> Result<DeadSince, DeadSinceError> {
        let corrupt = |what: String| DeadSinceError::Corrupt {
            file: file.to_path_buf(),
            what,
        };
        if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
            return Err(corrupt("not a storegc dead-since file (bad magic)".into()));
        }
        let mut r = Reader { bytes, at: 8 };
        let version = r
            .u32()
            .ok_or_else(|| corrupt("cut short in the header".into()))?;
        if version != VERSION {
            return Err(corrupt(format!(
                "version {version}, this storegc reads version {VERSION}"
            )));
        }
        if bytes.len() < CHECK
            || Sha256::digest(&bytes[..bytes.len() - CHECK])[..] != bytes[bytes.len() - CHECK..]
        {
            return Err(corrupt("checksum mismatch (cut short or changed)".into()));
        }
        let body = &bytes[..bytes.len() - CHECK];
        let mut r = Reader {
            bytes: body,
            at: r.at,
        };
        let len = r
            .u32()
            .ok_or_else(|| corrupt("cut short in the header".into()))? as usize;
        let found = r
            .take(len)
            .ok_or_else(|| corrupt("cut short in the header".into()))?;
        let found = String::from_utf8_lossy(found).into_owned();
        if found != store_dir {
            return Err(DeadSinceError::Foreign {
                file: file.to_path_buf(),
                found,
                expected: store_dir.to_string(),
            });
        }
        let count = r
            .u64()
            .ok_or_else(|| corrupt("cut short in the header".into()))?;
        let rest = body.len() - r.at;
        if count.checked_mul(ENTRY as u64) != Some(rest as u64) {
            return Err(corrupt(format!(
                "{count} entries announced, {rest} bytes of entries found"
            )));
        }
        let entries = decode_entries(&body[r.at..]).map_err(corrupt)?;
        Ok(DeadSince {
            store_dir: found,
            entries,
        })
    }

    /// Writes the state crash-safely: a temporary file in the same folder
    /// (created if missing), fsynced, renamed over `file`, then the folder
    /// fsynced, so a crash leaves the old state or the new one.
    pub fn save(&self, file: &Path) -> Result<(), DeadSinceError> {
        let err = |io| DeadSinceError::Write {
            file: file.to_path_buf(),
            io,
        };
        let dir = file
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir).map_err(err)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".dead-since.")
            .tempfile_in(dir)
            .map_err(err)?;
        tmp.write_all(&self.encode()).map_err(err)?;
        tmp.as_file().sync_all().map_err(err)?;
        tmp.persist(file).map_err(|e| err(e.error))?;
        std::fs::File::open(dir)
            .and_then(|d| d.sync_all())
            .map_err(err)?;
        Ok(())
    }
}

/// Held while a run reads the state, decides and writes it back, so two
/// writers (`plan --out` and `apply`, or two timers) never lose each
/// other's update: a blocking exclusive `flock` on `<file>.lock`, released
/// when dropped. Readers need none: [`DeadSince::save`] renames.
#[derive(Debug)]
pub struct UpdateLock(#[allow(dead_code)] std::fs::File);

/// Takes the [`UpdateLock`] of the state `file`, waiting for its holder.
pub fn lock_for_update(file: &Path) -> Result<UpdateLock, DeadSinceError> {
    let mut name = file.as_os_str().to_owned();
    name.push(".lock");
    let lock = PathBuf::from(name);
    let err = |io| DeadSinceError::Write {
        file: lock.clone(),
        io,
    };
    if let Some(dir) = lock.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(err)?;
    }
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock)
        .map_err(err)?;
    crate::flock::lock_exclusive(&f).map_err(err)?;
    Ok(UpdateLock(f))
}

/// Reads a state file: `Ok(None)` when there is none (the first run).
pub fn load(file: &Path, store_dir: &str) -> Result<Option<DeadSince>, DeadSinceError> {
    match std::fs::read(file) {
        Ok(bytes) => DeadSince::decode(&bytes, file, store_dir).map(Some),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(io) => Err(DeadSinceError::Read {
            file: file.to_path_buf(),
            io,
        }),
    }
}

/// The default state file: `$NIX_STATE_DIR/storegc/dead-since`.
pub fn default_file(state_dir: &Path) -> PathBuf {
    state_dir.join("storegc").join("dead-since")
}

/// Entries, checked: hash parts of Nix's base-32 alphabet, strictly
/// ascending.
fn decode_entries(bytes: &[u8]) -> Result<Vec<([u8; HASH_LEN], i64)>, String> {
    const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
    let mut valid = [false; 256];
    for &c in ALPHABET {
        valid[c as usize] = true;
    }
    let mut entries: Vec<([u8; HASH_LEN], i64)> = Vec::with_capacity(bytes.len() / ENTRY);
    for (i, chunk) in bytes.chunks_exact(ENTRY).enumerate() {
        let hash: [u8; HASH_LEN] = chunk[..HASH_LEN].try_into().expect("entry size");
        if !hash.iter().all(|&b| valid[b as usize]) {
            return Err(format!("entry {i} is not a store hash"));
        }
        if entries.last().is_some_and(|l| l.0 >= hash) {
            return Err(format!("entry {i} is out of order"));
        }
        let time = i64::from_le_bytes(chunk[HASH_LEN..].try_into().expect("entry size"));
        entries.push((hash, time));
    }
    Ok(entries)
}

/// A cursor over bytes; `None` when they run out.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let s = self.bytes.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u32(&mut self) -> Option<u32> {
        Some(u32::from_le_bytes(self.take(4)?.try_into().ok()?))
    }
    fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::PathRow;

    const SD: &str = "/nix/store";

    fn hash(i: usize) -> String {
        const ALPHABET: &[u8] = b"0123456789abcdfghijklmnpqrsvwxyz";
        let mut h = [b'0'; HASH_LEN];
        let mut x = i;
        for c in h.iter_mut().rev() {
            *c = ALPHABET[x % 32];
            x /= 32;
        }
        String::from_utf8(h.to_vec()).unwrap()
    }

    fn snap(n: usize) -> Snapshot {
        let rows = (0..n)
            .map(|i| PathRow {
                basename: format!("{}-p{i}", hash(i)),
                ..Default::default()
            })
            .collect();
        Snapshot::from_rows(rows, &[], vec![])
    }

    #[test]
    fn next_keeps_dates_starts_new_ones_and_drops_the_rest() {
        let s = snap(4);
        let day1 = DeadSince::new(SD).next(&s, &[0, 1], 100);
        assert_eq!(day1.get(&hash(0)), Some(100));
        let day2 = day1.next(&s, &[1, 2], 200);
        assert_eq!(day2.get(&hash(0)), None, "live again: loses its date");
        assert_eq!(day2.get(&hash(1)), Some(100));
        assert_eq!(day2.get(&hash(2)), Some(200));
        assert_eq!(day2.len(), 2);
        assert_eq!(day2.since_by_id(&s), vec![None, Some(100), Some(200), None]);
    }

    #[test]
    fn encode_decode_round_trip_and_forget() {
        let s = snap(50);
        let ids: Vec<PathId> = (0..50).rev().step_by(3).collect();
        let mut st = DeadSince::new(SD).next(&s, &ids, -5);
        let bytes = st.encode();
        assert_eq!(
            bytes.len(),
            8 + 4 + 4 + SD.len() + 8 + st.len() * ENTRY + CHECK
        );
        assert_eq!(DeadSince::decode(&bytes, Path::new("f"), SD).unwrap(), st);
        assert_eq!(st.len(), 17);
        st.forget([hash(1).as_str(), hash(2).as_str(), hash(49).as_str()]);
        assert_eq!(st.get(&hash(1)), None);
        assert_eq!(st.get(&hash(4)), Some(-5));
        assert_eq!(st.len(), 15);
    }

    #[test]
    fn truncation_corruption_version_and_foreign_store_are_refused() {
        let s = snap(10);
        let st = DeadSince::new(SD).next(&s, &[1, 2, 3], 7);
        let bytes = st.encode();
        let f = Path::new("/state/dead-since");
        let msg = |b: &[u8], sd: &str| DeadSince::decode(b, f, sd).unwrap_err().to_string();
        for cut in [0, 5, 12, 20, bytes.len() - 1, bytes.len() - ENTRY] {
            let m = msg(&bytes[..cut], SD);
            assert!(
                m.starts_with("/state/dead-since: dead-since state is corrupt: "),
                "{m}"
            );
            assert!(!m.contains('\n'));
        }
        let mut flipped = bytes.clone();
        flipped[30] ^= 1;
        assert!(
            msg(&flipped, SD).contains("checksum"),
            "{}",
            msg(&flipped, SD)
        );
        let mut v2 = bytes.clone();
        v2[8] = 2;
        assert!(msg(&v2, SD).contains("version 2"), "{}", msg(&v2, SD));
        let m = msg(&bytes, "/other/store");
        assert!(
            m.contains("made for store /nix/store, not /other/store"),
            "{m}"
        );
        assert!(msg(b"hello world", SD).contains("bad magic"));
    }

    /// A second updater waits until the first has written and let go.
    #[test]
    fn an_update_waits_for_the_one_under_way() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sub/dead-since");
        let first = lock_for_update(&file).unwrap();
        assert!(dir.path().join("sub/dead-since.lock").exists());
        let done = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (file, done) = (file.clone(), done.clone());
            std::thread::spawn(move || {
                let _second = lock_for_update(&file).unwrap();
                done.load(std::sync::atomic::Ordering::SeqCst)
            })
        };
        std::thread::sleep(std::time::Duration::from_millis(200));
        assert!(!waiter.is_finished(), "the second took a held lock");
        done.store(true, std::sync::atomic::Ordering::SeqCst);
        drop(first);
        assert!(
            waiter.join().unwrap(),
            "the second went before the first let go"
        );
    }

    #[test]
    fn save_is_atomic_and_load_reads_it_back() {
        let dir = tempfile::tempdir().unwrap();
        let file = default_file(dir.path());
        assert_eq!(load(&file, SD).unwrap(), None);
        let st = DeadSince::new(SD).next(&snap(3), &[0, 2], 42);
        st.save(&file).unwrap();
        assert_eq!(load(&file, SD).unwrap(), Some(st));
        let names: Vec<_> = std::fs::read_dir(file.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("dead-since")]);
    }
}
