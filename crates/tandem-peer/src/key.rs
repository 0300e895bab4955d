//! The site key: 32 random bytes shared by the two nodes of a site, kept in a key file
//! (64 hexadecimal digits and a newline, mode 0600), like corosync's authkey.

use std::fmt;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use snow::resolvers::{CryptoResolver, DefaultResolver};

use crate::error::{Error, KeyFileProblem, Result};

/// Length of a site key in bytes.
pub const KEY_LEN: usize = 32;

/// Longest key file we read; a real one is 65 bytes.
const MAX_KEY_FILE_LEN: u64 = 4096;

/// The pre-shared key of a site. Both nodes hold the same key; a peer without it can
/// neither complete a handshake nor read or change anything.
///
/// `Debug` never shows the key; [`SiteKey::fingerprint`] gives a safe identifier to
/// compare the keys of two nodes.
#[derive(Clone, PartialEq, Eq)]
pub struct SiteKey {
    bytes: [u8; KEY_LEN],
}

impl fmt::Debug for SiteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SiteKey(fingerprint {})", self.fingerprint())
    }
}

impl SiteKey {
    /// Makes a new key from the operating system's random generator.
    pub fn generate() -> Result<SiteKey> {
        let mut rng = DefaultResolver.resolve_rng().ok_or(Error::Random)?;
        let mut bytes = [0u8; KEY_LEN];
        rng.try_fill_bytes(&mut bytes).map_err(|_| Error::Random)?;
        Ok(SiteKey { bytes })
    }

    /// Wraps 32 bytes the caller already has (for example from its own secret store).
    pub fn from_bytes(bytes: [u8; KEY_LEN]) -> SiteKey {
        SiteKey { bytes }
    }

    /// The raw key bytes.
    pub fn as_bytes(&self) -> &[u8; KEY_LEN] {
        &self.bytes
    }

    /// Parses the key file format: 64 hexadecimal digits, surrounding whitespace
    /// ignored. The error text says what is wrong, never the key.
    pub fn from_text(text: &str) -> Result<SiteKey, String> {
        let digits = text.trim();
        if digits.len() != 2 * KEY_LEN {
            return Err(format!(
                "expected {} hexadecimal digits ({KEY_LEN} bytes), found {} characters",
                2 * KEY_LEN,
                digits.chars().count()
            ));
        }
        let mut bytes = [0u8; KEY_LEN];
        hex::decode_to_slice(digits, &mut bytes)
            .map_err(|_| "expected hexadecimal digits (0-9, a-f) only".to_owned())?;
        Ok(SiteKey { bytes })
    }

    /// The key file text: 64 lowercase hexadecimal digits and a newline.
    pub fn to_text(&self) -> String {
        let mut text = hex::encode(self.bytes);
        text.push('\n');
        text
    }

    /// A short identifier of the key (16 hex digits of a domain-separated SHA-256),
    /// safe to print, so operators can check that both nodes hold the same key.
    pub fn fingerprint(&self) -> String {
        let mut hash = Sha256::new();
        hash.update(b"tandem-peer site key fingerprint\0");
        hash.update(self.bytes);
        let digest = hash.finalize();
        hex::encode(digest.get(..8).unwrap_or_default())
    }

    /// Loads a key file. Refuses a file that group or others may access, a missing
    /// file, and anything but 64 hexadecimal digits; every error names the file.
    pub fn load(path: &Path) -> Result<SiteKey> {
        let fail = |problem| Error::KeyFile {
            path: path.to_path_buf(),
            problem,
        };
        let file = File::open(path).map_err(|e| {
            fail(if e.kind() == io::ErrorKind::NotFound {
                KeyFileProblem::Missing
            } else {
                KeyFileProblem::Read(e)
            })
        })?;
        let meta = file.metadata().map_err(|e| fail(KeyFileProblem::Read(e)))?;
        if !meta.is_file() {
            return Err(fail(KeyFileProblem::Malformed(
                "not a regular file".to_owned(),
            )));
        }
        let mode = meta.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(fail(KeyFileProblem::Permissions { mode }));
        }
        let mut raw = Vec::new();
        file.take(MAX_KEY_FILE_LEN)
            .read_to_end(&mut raw)
            .map_err(|e| fail(KeyFileProblem::Read(e)))?;
        let text = std::str::from_utf8(&raw).map_err(|_| {
            fail(KeyFileProblem::Malformed(
                "not text (expected hexadecimal digits)".to_owned(),
            ))
        })?;
        SiteKey::from_text(text).map_err(|m| fail(KeyFileProblem::Malformed(m)))
    }
}

/// Generates a new site key and writes it to `path` atomically with mode 0600: a
/// temporary file in the same directory is written and fsynced, then hard-linked to
/// `path` (which fails if `path` exists, so an existing key is never replaced), and the
/// directory is fsynced. Copy the file to the other node (for example with `scp -p`).
pub fn keygen(path: &Path) -> Result<SiteKey> {
    let key = SiteKey::generate()?;
    write_key_file(path, &key)?;
    Ok(key)
}

/// Writes `key` to a new key file at `path` the way [`keygen`] does.
pub fn write_key_file(path: &Path, key: &SiteKey) -> Result<()> {
    let fail = |problem| Error::KeyFile {
        path: path.to_path_buf(),
        problem,
    };
    if fs::symlink_metadata(path).is_ok() {
        return Err(fail(KeyFileProblem::Exists));
    }
    let dir = match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let name = path.file_name().ok_or_else(|| {
        fail(KeyFileProblem::Malformed(
            "the path has no file name".into(),
        ))
    })?;
    // A missing directory (`/etc/tandem` on a fresh server) is made owner-only.
    if !dir.exists() {
        fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&dir)
            .map_err(|e| fail(KeyFileProblem::Write(e)))?;
    }
    let mut tag = [0u8; 8];
    DefaultResolver
        .resolve_rng()
        .ok_or(Error::Random)?
        .try_fill_bytes(&mut tag)
        .map_err(|_| Error::Random)?;
    let mut tmp_name = std::ffi::OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", hex::encode(tag)));
    let tmp = dir.join(tmp_name);

    let result = write_tmp_and_link(&tmp, path, &dir, key);
    // The temporary name is gone in every case; the key lives on only under `path`.
    let _ = fs::remove_file(&tmp);
    result.map_err(fail)
}

fn write_tmp_and_link(
    tmp: &Path,
    path: &Path,
    dir: &Path,
    key: &SiteKey,
) -> Result<(), KeyFileProblem> {
    let mut file = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(tmp)
        .map_err(KeyFileProblem::Write)?;
    // The umask can only remove bits, but a pre-set default ACL could add some.
    file.set_permissions(fs::Permissions::from_mode(0o600))
        .map_err(KeyFileProblem::Write)?;
    file.write_all(key.to_text().as_bytes())
        .map_err(KeyFileProblem::Write)?;
    file.sync_all().map_err(KeyFileProblem::Write)?;
    drop(file);
    fs::hard_link(tmp, path).map_err(|e| {
        if e.kind() == io::ErrorKind::AlreadyExists {
            KeyFileProblem::Exists
        } else {
            KeyFileProblem::Write(e)
        }
    })?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(KeyFileProblem::Write)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn text_round_trip(bytes in proptest::array::uniform32(any::<u8>())) {
            let key = SiteKey::from_bytes(bytes);
            prop_assert_eq!(SiteKey::from_text(&key.to_text()), Ok(key));
        }

        #[test]
        fn any_text_parses_or_errors(text in ".{0,100}") {
            let _ = SiteKey::from_text(&text);
        }
    }

    #[test]
    fn debug_hides_the_key() {
        let key = SiteKey::from_bytes([0xab; KEY_LEN]);
        let shown = format!("{key:?}");
        assert!(!shown.contains("abab"), "{shown}");
        assert!(shown.contains(&key.fingerprint()));
    }

    #[test]
    fn generated_keys_differ() {
        let a = SiteKey::generate().unwrap();
        let b = SiteKey::generate().unwrap();
        assert_ne!(a, b);
    }
}
