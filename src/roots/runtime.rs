//! Runtime roots: store paths in use by running processes or named by
//! kernel settings, found the way Nix 2.8's `findRuntimeRoots` finds them
//! on Linux, so nothing a live program has open, mapped, runs from or
//! names in its environment is planned for deletion.
//!
//! For every numeric entry of the proc dir: the link texts of `exe`, `cwd`
//! and every `fd/*` (texts not starting with `/`, such as `socket:[…]`, are
//! skipped); the file column of `maps` lines with exactly six fields (a
//! `… (deleted)` mapping has seven and is skipped, as Nix's regex skips
//! it); every substring of `environ` matching
//! `<store>/[0-9a-z][0-9a-zA-Z+\-._?=]*`. Then the whole contents of
//! `sys/kernel/{modprobe,fbsplash,poweroff_cmd}`, untrimmed: a file holding
//! just `<store>/<hash>-name\n` roots nothing in Nix 2.8 (the newline ends
//! up in the basename, which is then invalid), while `<store>/<hash>-name/bin/x\n`
//! roots `<hash>-name`. Each text then yields the store path it lies in,
//! if any.
//!
//! Processes come and go during the scan: `ENOENT`, `EACCES` and `ESRCH`
//! skip the file at hand, as in Nix. `EACCES` is not a process that went
//! away, though: it is one we may not look into (another user's, when not
//! running as root), whose roots we cannot know. Nix says nothing; storegc
//! counts such processes ([`RuntimeRoots::denied`]) so the plan can warn
//! and `apply` can refuse. One deliberate difference: Nix skips
//! a process's `maps` and `environ` when its `fd` dir cannot be opened, and
//! its `environ` when `maps` cannot be read; here each file is tried on its
//! own, which can only find more roots.

use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use rayon::prelude::*;

use super::{errno_is, store_path_in, Root, RootKind, RootsError};
use crate::store_path::StoreDir;

/// Errors that mean "this process, or this file of it, is gone or not
/// ours": skipped, as Nix skips them.
const GONE: &[i32] = &[libc::ENOENT, libc::EACCES, libc::ESRCH];

/// The runtime roots found, and the processes that could not be read.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RuntimeRoots {
    /// Sorted and deduplicated.
    pub roots: Vec<Root>,
    /// Pids of the processes with at least one file denied (`EACCES`):
    /// their roots are unknown. Sorted.
    pub denied: Vec<u32>,
}

/// What one process yielded.
#[derive(Debug, Default)]
struct ProcScan {
    roots: Vec<Root>,
    /// Some file of it answered `EACCES`.
    denied: bool,
}

impl ProcScan {
    /// Notes a skipped error: `EACCES` marks the process as unread. O(1).
    fn skipped(&mut self, err: &std::io::Error) {
        self.denied |= err.raw_os_error() == Some(libc::EACCES);
    }
}

/// The kernel settings Nix reads as roots, under `<proc>/sys/kernel`.
const KERNEL_FILES: [&str; 3] = ["modprobe", "fbsplash", "poweroff_cmd"];

/// Finds the runtime roots under `proc_dir` (normally `/proc`), kind
/// [`RootKind::Runtime`], link the `/proc` file that names the path.
/// Processes are scanned in parallel with rayon; the result is sorted and
/// deduplicated, so it equals [`find_sequential`]'s on a still tree.
///
/// Cost: per process about 4 + (open fds) system calls plus reading
/// `maps` and `environ`: O(total bytes read) + O(n log n) for n roots,
/// divided across threads.
///
/// # Errors
/// [`RootsError::Unreadable`] / [`RootsError::Scan`] when `proc_dir` itself
/// cannot be listed (Nix silently finds no runtime roots then; a plan
/// without them is unsafe), and [`RootsError::Scan`] on an I/O error other
/// than the skipped ones.
pub fn find(store_dir: &StoreDir, dir: &Path) -> Result<RuntimeRoots, RootsError> {
    let pids = list_pids(dir)?;
    let per_pid = pids
        .par_iter()
        .map(|pid| scan_pid(store_dir, dir, pid))
        .collect::<Result<Vec<_>, _>>()?;
    finish(store_dir, dir, pids.iter().zip(per_pid))
}

/// [`find`] on one thread: the reference the parallel scan is tested
/// against, and a fallback where threads are unwanted. Same cost, same
/// errors, same result on a tree that does not change.
pub fn find_sequential(store_dir: &StoreDir, dir: &Path) -> Result<RuntimeRoots, RootsError> {
    let pids = list_pids(dir)?;
    let mut per_pid = Vec::with_capacity(pids.len());
    for pid in &pids {
        per_pid.push(scan_pid(store_dir, dir, pid)?);
    }
    finish(store_dir, dir, pids.iter().zip(per_pid))
}

/// Gathers the processes' roots and denials, adds the kernel-setting
/// roots, then sorts and deduplicates. O(n log n).
fn finish<'a>(
    store_dir: &StoreDir,
    dir: &Path,
    per_pid: impl Iterator<Item = (&'a String, ProcScan)>,
) -> Result<RuntimeRoots, RootsError> {
    let mut roots = Vec::new();
    let mut denied = Vec::new();
    for (pid, scan) in per_pid {
        roots.extend(scan.roots);
        if scan.denied {
            denied.extend(pid.parse::<u32>().ok());
        }
    }
    denied.sort_unstable();
    let kernel = dir.join("sys/kernel");
    for name in KERNEL_FILES {
        let path = kernel.join(name);
        match fs::read(&path) {
            Ok(text) => push(store_dir, &mut roots, &path, &text),
            Err(err) if errno_is(&err, &[libc::ENOENT, libc::EACCES]) => {}
            Err(err) => return Err(RootsError::Scan(path, err)),
        }
    }
    roots.sort();
    roots.dedup();
    Ok(RuntimeRoots { roots, denied })
}

/// The names of the all-digit entries of `dir`, sorted. Cost: one
/// directory listing, O(p log p) for p processes.
fn list_pids(dir: &Path) -> Result<Vec<String>, RootsError> {
    let entries = fs::read_dir(dir).map_err(|err| RootsError::io(dir, err))?;
    let mut pids = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|err| RootsError::Scan(dir.to_path_buf(), err))?;
        let name = entry.file_name();
        let bytes = name.as_bytes();
        if !bytes.is_empty() && bytes.iter().all(u8::is_ascii_digit) {
            // All ASCII digits, so valid UTF-8.
            pids.push(String::from_utf8_lossy(bytes).into_owned());
        }
    }
    pids.sort();
    Ok(pids)
}

/// The roots held by one process. Cost: about 4 + (open fds) system calls
/// plus O(size of `maps` + `environ`).
fn scan_pid(store_dir: &StoreDir, proc_dir: &Path, pid: &str) -> Result<ProcScan, RootsError> {
    let base = proc_dir.join(pid);
    let mut scan = ProcScan::default();
    for name in ["exe", "cwd"] {
        read_link_root(store_dir, &base.join(name), &mut scan)?;
    }

    let fd_dir = base.join("fd");
    match fs::read_dir(&fd_dir) {
        Ok(entries) => {
            for entry in entries {
                match entry {
                    Ok(entry) if entry.file_name().as_bytes().first() != Some(&b'.') => {
                        read_link_root(store_dir, &entry.path(), &mut scan)?;
                    }
                    Ok(_) => {}
                    Err(err) if errno_is(&err, GONE) => {
                        scan.skipped(&err);
                        break;
                    }
                    Err(err) => return Err(RootsError::Scan(fd_dir, err)),
                }
            }
        }
        Err(err) if errno_is(&err, GONE) => scan.skipped(&err),
        Err(err) => return Err(RootsError::Scan(fd_dir, err)),
    }

    let maps = base.join("maps");
    if let Some(text) = read_proc_file(&maps, &mut scan)? {
        for line in text.split(|&c| c == b'\n') {
            if let Some(file) = mapped_file(line) {
                push(store_dir, &mut scan.roots, &maps, file);
            }
        }
    }

    let environ = base.join("environ");
    if let Some(text) = read_proc_file(&environ, &mut scan)? {
        for found in StorePathMatches::new(store_dir, &text) {
            push(store_dir, &mut scan.roots, &environ, found);
        }
    }
    Ok(scan)
}

/// The contents of a `/proc/PID/…` file, `None` when the process is gone
/// or not readable by us. O(size).
fn read_proc_file(path: &Path, scan: &mut ProcScan) -> Result<Option<Vec<u8>>, RootsError> {
    match fs::read(path) {
        Ok(text) => Ok(Some(text)),
        Err(err) if errno_is(&err, GONE) => {
            scan.skipped(&err);
            Ok(None)
        }
        Err(err) => Err(RootsError::Scan(path.to_path_buf(), err)),
    }
}

/// Reads the link `path` and records the store path its text lies in, if
/// the text is absolute and in the store. One `readlink`.
fn read_link_root(
    store_dir: &StoreDir,
    path: &Path,
    scan: &mut ProcScan,
) -> Result<(), RootsError> {
    match fs::read_link(path) {
        Ok(text) => {
            let text = text.as_os_str().as_bytes();
            if text.first() == Some(&b'/') {
                push(store_dir, &mut scan.roots, path, text);
            }
            Ok(())
        }
        Err(err) if errno_is(&err, GONE) => {
            scan.skipped(&err);
            Ok(())
        }
        Err(err) => Err(RootsError::Scan(path.to_path_buf(), err)),
    }
}

/// Records a root when `text` lies in the store and names a valid store
/// path. O(len(text)).
fn push(store_dir: &StoreDir, roots: &mut Vec<Root>, link: &Path, text: &[u8]) {
    if let Some(target) = store_path_in(store_dir, text) {
        roots.push(Root {
            link: link.to_string_lossy().into_owned(),
            target,
            kind: RootKind::Runtime,
            via: None,
        });
    }
}

/// White space as `\s` matches it in Nix's `std::regex` (the C locale's
/// `isspace`). O(1).
fn is_space(c: u8) -> bool {
    matches!(c, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

/// The file column of one `maps` line, as Nix's regex
/// `^\s*\S+\s+\S+\s+\S+\s+\S+\s+\S+\s+(/\S+)\s*$` captures it: the line must
/// have exactly six white-space separated fields and the sixth must be `/`
/// followed by at least one byte. O(len(line)).
fn mapped_file(line: &[u8]) -> Option<&[u8]> {
    let mut fields = line.split(|&c| is_space(c)).filter(|f| !f.is_empty());
    let file = fields.nth(5)?;
    if fields.next().is_some() || file.len() < 2 || file[0] != b'/' {
        return None;
    }
    Some(file)
}

/// Whether `c` may follow the first character of a store-path match
/// (`[0-9a-zA-Z+\-._?=]`). O(1).
fn is_path_char(c: u8) -> bool {
    c.is_ascii_alphanumeric() || b"+-._?=".contains(&c)
}

/// The successive, non-overlapping leftmost-longest matches of
/// `<store>/[0-9a-z][0-9a-zA-Z+\-._?=]*` in a byte string, as Nix's
/// `sregex_iterator` over `environ` yields them: the store dir may appear
/// anywhere (not only after `=` or NUL), and scanning resumes after each
/// match. Cost: O(len(text) * len(store)) in all.
struct StorePathMatches<'a> {
    store: &'a [u8],
    text: &'a [u8],
    pos: usize,
}

impl<'a> StorePathMatches<'a> {
    fn new(store_dir: &'a StoreDir, text: &'a [u8]) -> Self {
        StorePathMatches {
            store: store_dir.as_str().as_bytes(),
            text,
            pos: 0,
        }
    }
}

impl<'a> Iterator for StorePathMatches<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let (store, text) = (self.store, self.text);
        while self.pos < text.len() {
            let start = self.pos
                + text[self.pos..]
                    .windows(store.len())
                    .position(|w| w == store)?;
            let slash = start + store.len();
            let first_ok = text
                .get(slash + 1)
                .is_some_and(|&c| c.is_ascii_digit() || c.is_ascii_lowercase());
            if text.get(slash) == Some(&b'/') && first_ok {
                let len = text[slash + 2..]
                    .iter()
                    .take_while(|&&c| is_path_char(c))
                    .count();
                let end = slash + 2 + len;
                self.pos = end;
                return Some(&text[start..end]);
            }
            self.pos = start + 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};

    const H1: &str = "0123456789abcdfghijklmnpqrsvwxyz";
    const H2: &str = "11111111111111111111111111111111";
    const H3: &str = "22222222222222222222222222222222";
    const H4: &str = "33333333333333333333333333333333";
    const H5: &str = "44444444444444444444444444444444";
    const H6: &str = "55555555555555555555555555555555";
    const H7: &str = "66666666666666666666666666666666";

    fn rt(link: String, target: String) -> Root {
        Root {
            link,
            target,
            kind: RootKind::Runtime,
            via: None,
        }
    }

    /// A fake proc tree with one process using every kind of reference.
    fn fake_proc() -> (tempfile::TempDir, StoreDir, PathBuf, Vec<Root>) {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new(format!("{}/store", tmp.path().display()));
        let st = store.as_str().to_string();
        let proc_dir = tmp.path().join("proc");
        let p = proc_dir.join("123");
        fs::create_dir_all(p.join("fd")).unwrap();
        symlink(format!("{st}/{H1}-exe/bin/prog"), p.join("exe")).unwrap();
        symlink(format!("{st}/{H2}-cwd"), p.join("cwd")).unwrap();
        symlink(format!("{st}/{H3}-fd/share/data"), p.join("fd/3")).unwrap();
        symlink("socket:[1234]", p.join("fd/4")).unwrap();
        symlink(format!("store/{H3}-relative"), p.join("fd/5")).unwrap();
        symlink(format!("{st}/{H3}-fd (deleted)"), p.join("fd/6")).unwrap();
        symlink(format!("{st}/{H7}-deleted/lib (deleted)"), p.join("fd/7")).unwrap();
        let maps = [
            format!("00400000-00452000 r-xp 00000000 08:02 173521 {st}/{H4}-lib/lib/libc.so"),
            format!("  00400000-00452000 r-xp 00000000 08:02 173521   {st}/{H4}-lib2/x  "),
            format!("00400000-00452000 r-xp 00000000 08:02 173521 {st}/{H5}-gone/x (deleted)"),
            "7ffd-7ffe rw-p 00000000 00:00 0 [stack]".to_string(),
            "7ffd-7ffe rw-p 00000000 00:00 0".to_string(),
        ]
        .join("\n");
        fs::write(p.join("maps"), maps + "\n").unwrap();
        let environ = format!(
            "PATH={st}/{H6}-env/bin:/usr/bin\0X=/pre{st}/{H6}-substr\0Y={st}/short\0Z={st}/{H7}-a={st}/{H7}-b"
        );
        fs::write(p.join("environ"), environ).unwrap();
        // A process that vanished: only a dir left.
        fs::create_dir_all(proc_dir.join("456")).unwrap();
        // Non-numeric entries are not processes.
        fs::create_dir_all(proc_dir.join("self/fd")).unwrap();
        symlink(format!("{st}/{H1}-self"), proc_dir.join("self/cwd")).unwrap();
        // Kernel settings: a sub-path roots, a bare path with its newline
        // does not (as in Nix 2.8).
        let kernel = proc_dir.join("sys/kernel");
        fs::create_dir_all(&kernel).unwrap();
        fs::write(
            kernel.join("modprobe"),
            format!("{st}/{H5}-kmod/bin/modprobe\n"),
        )
        .unwrap();
        fs::write(kernel.join("poweroff_cmd"), format!("{st}/{H5}-poweroff\n")).unwrap();

        let pd = p.display().to_string();
        let mut want = vec![
            rt(format!("{pd}/exe"), format!("{st}/{H1}-exe")),
            rt(format!("{pd}/cwd"), format!("{st}/{H2}-cwd")),
            rt(format!("{pd}/fd/3"), format!("{st}/{H3}-fd")),
            rt(format!("{pd}/fd/7"), format!("{st}/{H7}-deleted")),
            rt(format!("{pd}/maps"), format!("{st}/{H4}-lib")),
            rt(format!("{pd}/maps"), format!("{st}/{H4}-lib2")),
            rt(format!("{pd}/environ"), format!("{st}/{H6}-env")),
            rt(format!("{pd}/environ"), format!("{st}/{H6}-substr")),
            // `=` belongs to the match; the `/` of the next path ends it.
            rt(format!("{pd}/environ"), format!("{st}/{H7}-a=")),
            rt(format!("{pd}/environ"), format!("{st}/{H7}-b")),
            rt(
                format!("{}/modprobe", kernel.display()),
                format!("{st}/{H5}-kmod"),
            ),
        ];
        want.sort();
        (tmp, store, proc_dir, want)
    }

    #[test]
    fn fake_proc_tree_yields_every_kind_of_runtime_root() {
        let (_tmp, store, proc_dir, want) = fake_proc();
        assert_eq!(find(&store, &proc_dir).unwrap().roots, want);
        assert_eq!(find(&store, &proc_dir).unwrap().denied, Vec::<u32>::new());
    }

    #[test]
    fn parallel_scan_equals_sequential_scan() {
        let (_tmp, store, proc_dir, want) = fake_proc();
        let st = store.as_str().to_string();
        for pid in 1000..1200 {
            let p = proc_dir.join(pid.to_string());
            fs::create_dir_all(p.join("fd")).unwrap();
            symlink(format!("{st}/{H1}-p{pid}"), p.join("cwd")).unwrap();
            for fd in 0..(pid % 5) {
                symlink(format!("{st}/{H2}-f{fd}/x"), p.join(format!("fd/{fd}"))).unwrap();
            }
        }
        let par = find(&store, &proc_dir).unwrap().roots;
        let seq = find_sequential(&store, &proc_dir).unwrap().roots;
        assert_eq!(
            par.len(),
            want.len() + 200 + (0..200).map(|i| (1000 + i) % 5).sum::<usize>()
        );
        assert_eq!(par, seq);
    }

    /// Only `EACCES` marks a process as unread; a process that vanished
    /// (`ENOENT`, `ESRCH`) hides no roots.
    #[test]
    fn only_permission_denied_marks_a_process_unread() {
        for (errno, denied) in [
            (libc::ENOENT, false),
            (libc::ESRCH, false),
            (libc::EACCES, true),
        ] {
            let mut scan = ProcScan::default();
            scan.skipped(&std::io::Error::from_raw_os_error(errno));
            assert_eq!(scan.denied, denied, "errno {errno}");
        }
    }

    #[test]
    fn missing_proc_dir_is_an_error() {
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new("/nix/store");
        assert!(matches!(
            find(&store, &tmp.path().join("none")),
            Err(RootsError::Scan(..))
        ));
    }

    #[test]
    fn maps_lines_parse_like_nix_regex() {
        let ok: &[u8] = b"a b c d e /x";
        assert_eq!(mapped_file(ok), Some(&b"/x"[..]));
        assert_eq!(mapped_file(b"\ta\x0bb c d e /x\r"), Some(&b"/x"[..]));
        assert_eq!(mapped_file(b"a b c d e /"), None);
        assert_eq!(mapped_file(b"a b c d e x"), None);
        assert_eq!(mapped_file(b"a b c d /x"), None);
        assert_eq!(mapped_file(b"a b c d e /x (deleted)"), None);
        assert_eq!(mapped_file(b""), None);
    }

    #[test]
    fn environ_matcher_matches_like_nix_regex() {
        let store = StoreDir::new("/nix/store");
        let all = |text: &str| -> Vec<String> {
            StorePathMatches::new(&store, text.as_bytes())
                .map(|m| String::from_utf8_lossy(m).into_owned())
                .collect()
        };
        assert_eq!(
            all("A=/nix/store/abc-x/bin:/nix/store/def\0B=x/nix/store/Up"),
            vec!["/nix/store/abc-x", "/nix/store/def"]
        );
        // Overlapping text: scanning resumes after a match.
        assert_eq!(all("/nix/store/nix/store/abc"), vec!["/nix/store/nix"]);
        assert_eq!(all("/nix/store//nix/store/a"), vec!["/nix/store/a"]);
        assert_eq!(all("/nix/store/"), Vec::<String>::new());
        assert_eq!(all("/nix/store"), Vec::<String>::new());
        assert_eq!(
            all("/nix/store/a?b=c+d.e_f-g~h"),
            vec!["/nix/store/a?b=c+d.e_f-g"]
        );
    }

    /// Starts `prog` with `cwd`, stdin from `stdin_file` and an environment
    /// naming a store path, retrying on ETXTBSY (another test thread may
    /// have forked while the copied binary was open for writing).
    fn spawn(prog: &Path, cwd: &Path, stdin_file: &Path, env: &str) -> std::process::Child {
        for _ in 0..50 {
            let res = Command::new(prog)
                .arg("60")
                .current_dir(cwd)
                .stdin(fs::File::open(stdin_file).unwrap())
                .stdout(Stdio::null())
                .env("STOREGC_TEST_PATH", env)
                .spawn();
            match res {
                Ok(child) => return child,
                Err(err) if err.raw_os_error() == Some(libc::ETXTBSY) => {
                    std::thread::sleep(std::time::Duration::from_millis(20))
                }
                Err(err) => panic!("spawning {}: {err}", prog.display()),
            }
        }
        panic!("{} stayed busy", prog.display());
    }

    #[test]
    fn real_proc_finds_a_child_process() {
        let sleep = ["/bin/sleep", "/usr/bin/sleep"]
            .into_iter()
            .map(Path::new)
            .find(|p| p.exists());
        let Some(sleep) = sleep else {
            eprintln!("note: no sleep binary; skipping real /proc test");
            return;
        };
        let tmp = tempfile::tempdir().unwrap();
        let store = StoreDir::new(format!("{}/store", tmp.path().display()));
        let st = store.as_str().to_string();
        let exe_dir = format!("{st}/{H1}-sleep/bin");
        let cwd = format!("{st}/{H2}-cwd");
        let data = format!("{st}/{H3}-data");
        for d in [&exe_dir, &cwd, &data] {
            fs::create_dir_all(d).unwrap();
        }
        let exe = PathBuf::from(format!("{exe_dir}/sleep"));
        fs::copy(sleep, &exe).unwrap();
        fs::write(format!("{data}/file"), "x").unwrap();
        let mut child = spawn(
            &exe,
            Path::new(&cwd),
            Path::new(&format!("{data}/file")),
            &format!("{st}/{H4}-env/bin"),
        );
        let pid = child.id();
        let res = find(&store, Path::new("/proc"));
        child.kill().unwrap();
        child.wait().unwrap();
        let found = res.unwrap();
        // Our own child is readable: never counted as denied.
        assert!(!found.denied.contains(&pid), "{:?}", found.denied);
        let roots = found.roots;
        let mine: Vec<(String, String)> = roots
            .into_iter()
            .filter(|r| r.link.starts_with(&format!("/proc/{pid}/")))
            .map(|r| (r.link, r.target))
            .collect();
        let pp = format!("/proc/{pid}");
        for want in [
            (format!("{pp}/exe"), format!("{st}/{H1}-sleep")),
            (format!("{pp}/cwd"), cwd.clone()),
            (format!("{pp}/fd/0"), data.clone()),
            (format!("{pp}/maps"), format!("{st}/{H1}-sleep")),
            (format!("{pp}/environ"), format!("{st}/{H4}-env")),
        ] {
            assert!(mine.contains(&want), "{want:?} not in {mine:?}");
        }
    }
}
