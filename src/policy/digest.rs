//! Digests of the files a policy reads (the policy file itself and each
//! closure list), taken of the very bytes the policy engine parsed, so a
//! plan can record what it was made from and `apply` can tell what changed.

use std::path::PathBuf;

use sha2::{Digest, Sha256};

use super::file::Policy;
use super::inputs::PolicyInputs;

/// Which kind of input a file was.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum InputKind {
    Policy,
    ClosureList,
}

/// One file read, and the SHA-256 of its bytes.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct InputFile {
    pub kind: InputKind,
    /// As the policy engine opened it (the policy's folder joined with a
    /// relative closure-list entry).
    pub path: PathBuf,
    /// Lower-case hex.
    pub sha256: String,
}

/// Every file an evaluation of `policy` read: the policy file (unless it
/// is the default policy), then the closure lists in `inputs`.
pub fn files_read(policy: &Policy, inputs: &PolicyInputs) -> Vec<InputFile> {
    let own = (!policy.file.as_os_str().is_empty()).then(|| InputFile {
        kind: InputKind::Policy,
        path: policy.file.clone(),
        sha256: policy.sha256.clone(),
    });
    own.into_iter()
        .chain(inputs.files.iter().cloned())
        .collect()
}

/// The SHA-256 of `bytes`, lower-case hex. O(len).
pub fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write;
    let hash = Sha256::digest(bytes);
    let mut out = String::with_capacity(64);
    for b in hash {
        let _ = write!(out, "{b:02x}");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sha256_of_known_texts() {
        assert_eq!(
            sha256_hex(b""),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
        assert_eq!(
            sha256_hex(b"abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
