//! Temporary roots of running Nix processes: the files in
//! `$NIX_STATE_DIR/temproots`, read so that a path a build has just added or
//! is about to use is never planned for deletion, whichever Nix wrote them.
//!
//! File names differ between versions: `PID` (Nix 2.8 to 2.34, 2.35.1+,
//! Lix), `temproots-PID-N` (Nix 2.35.0 only), `PID.tmp-…` (Lix, while a file
//! is being created). Names starting with `.` are skipped, as in every Nix.
//! The name only labels the root (`{temp:PID}`); it never decides anything
//! and never aborts the scan (Nix 2.8 aborts on a name `stoi` cannot read,
//! which keeps everything; reading the file by its lock keeps exactly what
//! its owner holds). Only the lock says whether a file's roots count.
//!
//! A Nix process creates its file and holds an exclusive `flock(2)` on it
//! for its whole life (Nix 2.8 `lockFile` in `pathlocks.cc` is `flock`, not
//! `fcntl`), appending NUL-terminated store paths. A file nobody holds a
//! lock on belongs to a dead process and is ignored. Nix tests this by
//! taking the lock itself and then deletes the file; this scan only opens
//! the file read-only (an `flock` does not need write access), tries a
//! non-blocking exclusive lock, and releases it at once when it succeeds.
//! Nothing is ever written or removed.

use crate::flock::{try_lock_exclusive, unlock};
use std::fs::{self, File};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use super::{errno_is, store_path_in, Root, RootKind, RootsError};
use crate::store_path::StoreDir;

/// Finds the temporary roots in `state_dir/temproots`, kind
/// [`RootKind::Temp`], link `{temp:PID}`. Each NUL-terminated entry of a
/// held file that lies in the store yields the store path it lies in;
/// other entries and an unterminated tail (a write in progress) are
/// skipped. Hidden files are skipped, as in Nix; any other name is read
/// (see [`label`]). A missing `temproots` directory yields no roots.
/// Read-only.
///
/// Cost: per file one `open`, one `flock` attempt, and a read of the file
/// when it is held; O(total bytes read + n log n) for n roots.
///
/// # Errors
/// [`RootsError::Unreadable`] when a file or the
/// directory cannot be opened for lack of permission (Nix creates the
/// files mode 0600, so this happens when not run as their owner);
/// [`RootsError::Scan`] for other I/O errors. A file vanishing between
/// listing and opening is skipped.
pub fn find(store_dir: &StoreDir, dir: &Path) -> Result<Vec<Root>, RootsError> {
    let temproots = dir.join("temproots");
    let entries = match fs::read_dir(&temproots) {
        Ok(entries) => entries,
        Err(err) if errno_is(&err, &[libc::ENOENT]) => return Ok(Vec::new()),
        Err(err) => return Err(RootsError::io(temproots, err)),
    };
    let mut roots = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| RootsError::io(&temproots, err))?;
        let name = entry.file_name();
        if name.as_bytes().first() == Some(&b'.') {
            continue;
        }
        let path = entry.path();
        let Some(contents) = read_if_held(&path)? else {
            continue;
        };
        let link = label(name.as_bytes());
        // Only NUL-terminated entries count: the last split piece is
        // whatever follows the final NUL.
        let mut pieces: Vec<&[u8]> = contents.split(|&c| c == 0).collect();
        pieces.pop();
        for piece in pieces {
            if let Some(target) = store_path_in(store_dir, piece) {
                roots.push(Root {
                    link: link.clone(),
                    target,
                    kind: RootKind::Temp,
                    via: None,
                });
            }
        }
    }
    roots.sort();
    roots.dedup();
    Ok(roots)
}

/// The contents of the temp-roots file at `path` when some process holds a
/// lock on it, `None` when it is stale or has vanished. Opens read-only;
/// a successful test lock is released before returning. Cost: one `open`,
/// one or two `flock` calls, one read of the file when held.
fn read_if_held(path: &Path) -> Result<Option<Vec<u8>>, RootsError> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if errno_is(&err, &[libc::ENOENT]) => return Ok(None),
        Err(err) => return Err(RootsError::io(path, err)),
    };
    if try_lock_exclusive(&file).map_err(|err| RootsError::io(path, err))? {
        // Stale: we got the lock, so its owner is gone. Release it now
        // (closing would too) so a Nix process reusing the pid is not kept
        // waiting.
        unlock(&file).map_err(|err| RootsError::io(path, err))?;
        return Ok(None);
    }
    let mut contents = Vec::new();
    file.read_to_end(&mut contents)
        .map_err(|err| RootsError::io(path, err))?;
    Ok(Some(contents))
}

/// The link a temp root is listed under: `{temp:PID}` for the names every
/// Nix writes (`PID`, `PID.tmp-…`, `temproots-PID-N`), `{temp:NAME}` for
/// any other name. O(len(name)).
fn label(name: &[u8]) -> String {
    let pid = name
        .strip_prefix(b"temproots-")
        .map_or_else(|| parse_pid(name), parse_pid);
    match pid {
        Some(pid) => format!("{{temp:{pid}}}"),
        None => format!("{{temp:{}}}", String::from_utf8_lossy(name)),
    }
}

/// The pid in a temp-roots file name, read as C++'s `std::stoi` reads it
/// (what Nix 2.8 uses): leading white space, an optional sign, at least one
/// digit, anything after the digits ignored, the value within `i32`.
/// `None` where `stoi` would throw. O(len(name)).
fn parse_pid(name: &[u8]) -> Option<i32> {
    let is_space = |c: &u8| matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r');
    let start = name.iter().position(|c| !is_space(c)).unwrap_or(name.len());
    let rest = &name[start..];
    let (negative, rest) = match rest.first() {
        Some(b'-') => (true, &rest[1..]),
        Some(b'+') => (false, &rest[1..]),
        _ => (false, rest),
    };
    let digits = rest.iter().take_while(|c| c.is_ascii_digit()).count();
    if digits == 0 {
        return None;
    }
    let mut value: i64 = 0;
    for &c in &rest[..digits] {
        value = value.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
        if value > i64::from(i32::MAX) + 1 {
            return None;
        }
    }
    i32::try_from(if negative { -value } else { value }).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;
    use std::os::fd::AsRawFd;
    use std::path::PathBuf;

    const H1: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const H2: &str = "11111111111111111111111111111111";
    const H3: &str = "22222222222222222222222222222222";

    fn setup() -> (tempfile::TempDir, StoreDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new(format!("{}/store", tmp.path().display()));
        let state = tmp.path().join("state");
        fs::create_dir_all(state.join("temproots")).unwrap();
        (tmp, store, state)
    }

    /// Holds an exclusive flock through its own open file description, as
    /// the owning Nix process would.
    fn hold_lock(path: &Path) -> File {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        assert!(try_lock_exclusive(&file).unwrap());
        file
    }

    #[test]
    fn locked_files_are_read_and_unlocked_ones_ignored() {
        let (_tmp, store, state) = setup();
        let tr = state.join("temproots");
        let live = format!(
            "{st}/{H1}-a\0{st}/{H2}-b/sub/path\0/elsewhere/x\0{st}/bad\0{st}/{H3}-partial",
            st = store
        );
        fs::write(tr.join("4242"), &live).unwrap();
        fs::write(tr.join("77"), format!("{store}/{H3}-stale\0")).unwrap();
        fs::write(tr.join(".keep"), "").unwrap();
        let _held = hold_lock(&tr.join("4242"));

        let roots = find(&store, &state).unwrap();
        let want: Vec<Root> = [format!("{store}/{H1}-a"), format!("{store}/{H2}-b")]
            .into_iter()
            .map(|target| Root {
                link: "{temp:4242}".to_string(),
                target,
                kind: RootKind::Temp,
                via: None,
            })
            .collect();
        assert_eq!(roots, want);

        // The stale file was neither removed nor written to, and its lock
        // was released: we can take it again.
        let stale = tr.join("77");
        assert_eq!(
            fs::read(&stale).unwrap(),
            format!("{store}/{H3}-stale\0").as_bytes()
        );
        assert!(try_lock_exclusive(&File::open(&stale).unwrap()).unwrap());
    }

    #[test]
    fn a_shared_lock_also_marks_the_file_live() {
        let (_tmp, store, state) = setup();
        let path = state.join("temproots/5");
        fs::write(&path, format!("{store}/{H1}-a\0")).unwrap();
        let holder = File::open(&path).unwrap();
        // SAFETY: flock on our own fd.
        assert_eq!(unsafe { libc::flock(holder.as_raw_fd(), libc::LOCK_SH) }, 0);
        assert_eq!(find(&store, &state).unwrap().len(), 1);
    }

    #[test]
    fn missing_temproots_dir_yields_nothing() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new("/nix/store");
        assert_eq!(find(&store, tmp.path()).unwrap(), vec![]);
    }

    /// Regression: a name Nix 2.8's `stoi` cannot read aborted the scan
    /// (Nix 2.35.0 writes `temproots-PID-N`, Lix `PID.tmp-…`). Every name
    /// but a hidden one is read, and only its lock decides.
    #[test]
    fn every_naming_is_read_and_only_the_lock_decides() {
        let (_tmp, store, state) = setup();
        let tr = state.join("temproots");
        let files = [
            ("31", H1, true),
            ("temproots-32-0", H2, true),
            ("33.tmp-abc", H3, true),
            ("junk", "33333333333333333333333333333333", true),
            ("temproots-34-1", "44444444444444444444444444444444", false),
            ("35.tmp-x", "55555555555555555555555555555555", false),
            ("other", "66666666666666666666666666666666", false),
            (".36", "77777777777777777777777777777777", true),
        ];
        let mut held = Vec::new();
        for (name, hash, locked) in files {
            fs::write(tr.join(name), format!("{store}/{hash}-p\0")).unwrap();
            if locked {
                held.push(hold_lock(&tr.join(name)));
            }
        }
        let got: Vec<(String, String)> = find(&store, &state)
            .unwrap()
            .into_iter()
            .map(|r| (r.link, r.target))
            .collect();
        let want: Vec<(String, String)> = [
            ("{temp:31}", H1),
            ("{temp:32}", H2),
            ("{temp:33}", H3),
            ("{temp:junk}", "33333333333333333333333333333333"),
        ]
        .into_iter()
        .map(|(l, h)| (l.to_string(), format!("{store}/{h}-p")))
        .collect();
        let mut want = want;
        want.sort();
        assert_eq!(got, want);
    }

    #[test]
    fn labels_name_the_pid_where_there_is_one() {
        assert_eq!(label(b"4242"), "{temp:4242}");
        assert_eq!(label(b"temproots-7-3"), "{temp:7}");
        assert_eq!(label(b"8.tmp-Xy1"), "{temp:8}");
        assert_eq!(label(b"weird"), "{temp:weird}");
        assert_eq!(label(b"temproots-"), "{temp:temproots-}");
    }

    #[test]
    fn pid_is_parsed_like_stoi() {
        assert_eq!(parse_pid(b"123"), Some(123));
        assert_eq!(parse_pid(b"0042"), Some(42));
        assert_eq!(parse_pid(b" 7x"), Some(7));
        assert_eq!(parse_pid(b"-3"), Some(-3));
        assert_eq!(parse_pid(b"2147483647"), Some(i32::MAX));
        assert_eq!(parse_pid(b"-2147483648"), Some(i32::MIN));
        assert_eq!(parse_pid(b"2147483648"), None);
        assert_eq!(parse_pid(b"99999999999999999999999"), None);
        assert_eq!(parse_pid(b"x1"), None);
        assert_eq!(parse_pid(b""), None);
        assert_eq!(parse_pid(b"-"), None);
    }
}
