//! An optimised store (issue 13): after `nix-store --optimise` every file
//! is a hard link into `.links`, so deleting a path frees a file's blocks
//! only when its last store link goes and the `.links` pass removes the
//! entry. The engine's reported bytes freed on disk must equal the
//! filesystem's own count (statvfs before and after) within 1%. The store
//! dir is a fresh tmpfs nothing else writes to (the database and the
//! state dir stay outside it), unmounted on drop; mounting needs root, so
//! without root the test says so and skips (CI runs as root).

mod apply_support;
mod common;

use std::collections::BTreeSet;
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use apply_support::*;
use common::{NixStore, Rng};
use serde_json::Value;

/// A tmpfs mounted on a folder; unmounted when dropped.
struct Tmpfs(PathBuf);

impl Tmpfs {
    fn mount(at: &Path, size_mib: u32) -> Tmpfs {
        let c = |s: &[u8]| CString::new(s).expect("no NUL");
        let (src, dir, fs) = (c(b"tmpfs"), c(at.as_os_str().as_bytes()), c(b"tmpfs"));
        let opts = c(format!("size={size_mib}m,mode=0755").as_bytes());
        // SAFETY: valid NUL-terminated strings for the whole call.
        let rc = unsafe {
            libc::mount(
                src.as_ptr(),
                dir.as_ptr(),
                fs.as_ptr(),
                0,
                opts.as_ptr().cast(),
            )
        };
        assert_eq!(
            rc,
            0,
            "mounting a tmpfs on {}: {}",
            at.display(),
            std::io::Error::last_os_error()
        );
        Tmpfs(at.to_path_buf())
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let dir = CString::new(self.0.as_os_str().as_bytes()).expect("no NUL");
        // SAFETY: as above; MNT_DETACH if something still uses it.
        unsafe {
            if libc::umount2(dir.as_ptr(), 0) != 0 {
                libc::umount2(dir.as_ptr(), libc::MNT_DETACH);
            }
        }
    }
}

/// Free bytes of the filesystem holding `path` (statvfs).
fn free_bytes(path: &Path) -> u64 {
    let c = CString::new(path.as_os_str().as_bytes()).expect("no NUL");
    // SAFETY: statvfs fills the struct we pass.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    assert_eq!(unsafe { libc::statvfs(c.as_ptr(), &mut st) }, 0, "statvfs");
    st.f_bfree as u64 * st.f_frsize as u64
}

fn links(store: &NixStore) -> usize {
    std::fs::read_dir(store.store_dir.join(".links"))
        .map(|d| d.count())
        .unwrap_or(0)
}

/// `n` paths added with `nix-store --add`, each a folder of files: blobs
/// shared by many paths (dead and live alike), blobs shared only by a few,
/// and unique files, of sizes that are not whole pages.
fn add_paths(store: &NixStore, rng: &mut Rng, n: usize) -> Vec<String> {
    let blob =
        |k: usize, len: usize| -> Vec<u8> { (0..len).map(|i| (i * 31 + k * 7) as u8).collect() };
    let shared: Vec<Vec<u8>> = (0..6).map(|k| blob(k, 9_000 + k * 13_001)).collect();
    (0..n)
        .map(|i| {
            let dir = store.root().join(format!("inputs/p{i}/pkg{i}"));
            std::fs::create_dir_all(dir.join("lib")).expect("mkdir");
            for _ in 0..rng.range(1, 4) {
                let k = rng.below(shared.len());
                std::fs::write(dir.join(format!("lib/shared{k}")), &shared[k]).expect("write");
            }
            let len = rng.range(20_000, 120_000);
            std::fs::write(dir.join("unique"), blob(100 + i, len)).expect("write");
            // The same bytes twice in one path: optimise links them too.
            std::fs::write(dir.join("unique.copy"), blob(100 + i, len)).expect("write");
            store.add_path(&dir)
        })
        .collect()
}

#[test]
fn engine_freed_bytes_equal_the_filesystems_count_on_an_optimised_store() {
    if !common::nix_available(
        "engine_freed_bytes_equal_the_filesystems_count_on_an_optimised_store",
    ) {
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        common::skip_note(
            "engine_freed_bytes_equal_the_filesystems_count_on_an_optimised_store: \
             skipped, mounting a tmpfs for the store needs root (CI runs as root)",
        );
        return;
    }
    for seed in [1401u64, 1402] {
        let store = NixStore::new();
        let _fs = Tmpfs::mount(&store.store_dir, 256);
        let mut rng = Rng::new(seed);
        let paths = add_paths(&store, &mut rng, 60);
        let mut rooted = BTreeSet::new();
        for (i, p) in paths.iter().enumerate() {
            if rng.chance(0.3) {
                store.add_gcroot_link(&format!("keep{i}"), p);
                rooted.insert(p.clone());
            }
        }
        store.nix_store(&["--optimise"]);
        let links_before = links(&store);
        assert!(
            links_before > 40,
            "optimise linked only {links_before} files"
        );
        let live = store.print_live();
        let file = store.root().join("plan.json");
        let plan = planned(&make_plan(&store, &file, &[]));
        assert_eq!(plan.len(), paths.len() - rooted.len(), "seed {seed}");

        let before = free_bytes(&store.store_dir);
        let run = apply(&store, &file, &["--delete-with", "storegc"]);
        let after = free_bytes(&store.store_dir);
        let report = run.expect_code(0).report();
        assert_eq!(report["failed"], Value::Array(vec![]), "{}", run.show());
        assert_same("deleted", &plan, &strs(&report["deleted"]));
        let reported = report["freed_disk_bytes"]
            .as_u64()
            .expect("freed_disk_bytes");
        let counted = after - before;
        eprintln!(
            "seed {seed}: {} paths deleted, .links {links_before} -> {}, \
             engine says {reported} bytes, statvfs {counted} bytes",
            plan.len(),
            links(&store)
        );
        assert!(
            counted > 1 << 20,
            "seed {seed}: too little freed to compare: {counted}"
        );
        assert!(
            reported.abs_diff(counted) * 100 <= counted,
            "seed {seed}: engine reports {reported} bytes freed, the filesystem {counted}"
        );
        assert!(
            links(&store) < links_before,
            "the .links pass removed nothing"
        );
        assert_only_live_left(&store, &live);
        assert_verify_clean(&store, true);
    }
}
