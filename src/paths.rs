//! Dense ids for store paths: one arena holding every basename, offsets
//! into it, and a hash index keyed by the hash part.
//!
//! Memory is about `len(basename) + 4` bytes a path for the arena and
//! offsets plus about 5 bytes a path for the index; no per-path allocation.

use std::hash::{BuildHasher, Hasher};

use hashbrown::HashTable;

use crate::store_path::HASH_LEN;

/// A dense path id (index into every per-path vector).
pub type PathId = u32;
/// "No path" in vectors of ids.
pub const NO_PATH: PathId = u32::MAX;

/// Basenames (`<hash>-<name>`) in one arena, addressed by id.
#[derive(Default, Clone)]
pub struct PathTable {
    arena: String,
    /// `ends[i]` is where basename `i` ends; it starts at `ends[i - 1]`.
    ends: Vec<u32>,
    index: HashTable<PathId>,
    hasher: FixedState,
}

impl std::fmt::Debug for PathTable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PathTable")
            .field("len", &self.len())
            .finish()
    }
}

/// A fixed hasher: basenames' hash parts are already uniformly random, so a
/// plain FNV-style mix of a few bytes is enough and deterministic.
#[derive(Default, Clone, Copy)]
struct FixedState;

struct Fnv(u64);

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100000001b3);
        }
    }
}

impl BuildHasher for FixedState {
    type Hasher = Fnv;
    fn build_hasher(&self) -> Fnv {
        Fnv(0xcbf29ce484222325)
    }
}

fn key(base: &str) -> &str {
    base.get(..HASH_LEN).unwrap_or(base)
}

impl PathTable {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Appends a basename and returns its id. The index is not updated:
    /// call [`PathTable::build_index`] once after the last push.
    pub fn push(&mut self, base: &str) -> PathId {
        self.arena.push_str(base);
        self.ends.push(self.arena.len() as u32);
        (self.ends.len() - 1) as PathId
    }

    /// The basename of `id`.
    pub fn get(&self, id: PathId) -> &str {
        let i = id as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        &self.arena[start..self.ends[i] as usize]
    }

    pub fn iter(&self) -> impl Iterator<Item = &str> + '_ {
        (0..self.len() as PathId).map(move |i| self.get(i))
    }

    /// (Re)builds the hash index over all basenames. O(n).
    pub fn build_index(&mut self) {
        let mut index = HashTable::with_capacity(self.len());
        for id in 0..self.len() as PathId {
            let h = self.hasher.hash_one(key(self.get(id)));
            index.insert_unique(h, id, |&other| self.hasher.hash_one(key(self.get(other))));
        }
        self.index = index;
    }

    /// The id of the path whose hash part is `hash` (how Nix matches temp
    /// roots).
    pub fn lookup_hash(&self, hash: &str) -> Option<PathId> {
        let h = self.hasher.hash_one(hash);
        self.index.find(h, |&id| key(self.get(id)) == hash).copied()
    }

    /// The id of the valid path with exactly this basename.
    pub fn lookup(&self, base: &str) -> Option<PathId> {
        self.lookup_hash(key(base))
            .filter(|&id| self.get(id) == base)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_by_basename_and_hash() {
        let mut t = PathTable::default();
        let a = format!("{}-a", "a".repeat(32));
        let b = format!("{}-b", "b".repeat(32));
        assert_eq!(t.push(&a), 0);
        assert_eq!(t.push(&b), 1);
        t.build_index();
        assert_eq!(t.get(1), b);
        assert_eq!(t.lookup(&a), Some(0));
        assert_eq!(t.lookup(&format!("{}-other", "a".repeat(32))), None);
        assert_eq!(t.lookup_hash(&"b".repeat(32)), Some(1));
        assert_eq!(t.lookup_hash(&"c".repeat(32)), None);
    }
}
