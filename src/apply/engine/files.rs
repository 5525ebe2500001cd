//! Removing store files the way Nix's `deletePath` does: never following a
//! symlink, making each directory writable (store dirs are 0555) before
//! removing its entries, and counting the bytes freed from allocated
//! blocks. A file with other hard links (an optimised store's `.links`)
//! frees nothing until its last link goes, in [`sweep_links`].

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// Bytes one inode frees when its last link goes: `st_blocks * 512`.
fn allocated(m: &std::fs::Metadata) -> u64 {
    m.blocks().saturating_mul(512)
}

/// Removes `root` and everything under it without recursion or following
/// symlinks; returns the bytes freed. A missing `root` frees 0. O(entries).
pub fn remove_tree(root: &Path) -> std::io::Result<u64> {
    let meta = match std::fs::symlink_metadata(root) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        let freed = if meta.nlink() == 1 {
            allocated(&meta)
        } else {
            0
        };
        std::fs::remove_file(root)?;
        return Ok(freed);
    }
    let mut freed = 0u64;
    // (dir, visited): a dir is removed on its second visit, when empty.
    let mut stack: Vec<(PathBuf, bool)> = vec![(root.to_path_buf(), false)];
    while let Some((dir, visited)) = stack.pop() {
        if visited {
            let m = std::fs::symlink_metadata(&dir)?;
            std::fs::remove_dir(&dir)?;
            freed += allocated(&m);
            continue;
        }
        let m = std::fs::symlink_metadata(&dir)?;
        if m.permissions().mode() & 0o200 == 0 {
            let mode = m.permissions().mode() | 0o700;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(mode))?;
        }
        stack.push((dir.clone(), true));
        for entry in std::fs::read_dir(&dir)? {
            let entry = entry?;
            let path = entry.path();
            let m = std::fs::symlink_metadata(&path)?;
            if m.is_dir() {
                stack.push((path, false));
            } else {
                if m.nlink() == 1 {
                    freed += allocated(&m);
                }
                std::fs::remove_file(&path)?;
            }
        }
    }
    Ok(freed)
}

/// One pass over `<store>/.links`: removes every entry no store file links
/// to any more (link count 1); returns the bytes freed. No `.links`: 0.
pub fn sweep_links(store_dir: &Path) -> std::io::Result<u64> {
    let links = store_dir.join(".links");
    let entries = match std::fs::read_dir(&links) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(0),
        Err(e) => return Err(e),
    };
    let mut freed = 0u64;
    for entry in entries {
        let path = entry?.path();
        let m = std::fs::symlink_metadata(&path)?;
        if m.nlink() == 1 {
            std::fs::remove_file(&path)?;
            freed += allocated(&m);
            super::pause::at("links");
        }
    }
    Ok(freed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removes_read_only_trees_without_following_symlinks_and_counts_links_once() {
        let t = tempfile::tempdir().unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("keep"), b"k").unwrap();
        let store = t.path().join("store");
        let p = store.join("p");
        std::fs::create_dir_all(p.join("sub")).unwrap();
        std::fs::write(p.join("sub/f"), vec![1u8; 10_000]).unwrap();
        std::fs::create_dir(store.join(".links")).unwrap();
        std::fs::write(store.join(".links/l"), vec![2u8; 10_000]).unwrap();
        std::fs::hard_link(store.join(".links/l"), p.join("shared")).unwrap();
        std::os::unix::fs::symlink(&outside, p.join("link")).unwrap();
        for d in [p.join("sub"), p.clone()] {
            std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o555)).unwrap();
        }
        let freed = remove_tree(&p).unwrap();
        assert!(!p.exists());
        assert!(outside.join("keep").exists(), "followed a symlink");
        assert!(freed >= 10_000, "{freed}");
        let before_links = freed;
        let links = sweep_links(&store).unwrap();
        assert!(
            links >= 10_000,
            "the last link frees the shared file: {links}"
        );
        assert!(!store.join(".links/l").exists());
        assert!(
            before_links < 10_000 + 10_000 + 8 * 4096,
            "shared counted twice"
        );
        assert_eq!(remove_tree(&p).unwrap(), 0);
    }
}
