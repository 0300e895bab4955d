//! A versioned, checksummed JSON state file, written atomically: the value sits in
//! an envelope that names the file's format, its version and the SHA-256 of the
//! value's JSON text, so that a hand-edited, truncated or foreign file is refused
//! by name instead of read as something it is not.
//!
//! ```text
//! {
//!   "format": "tandem-node-state",
//!   "version": 1,
//!   "sha256": "<hex of the SHA-256 of the state's text>",
//!   "state": {...}
//! }
//! ```
//!
//! Reading never changes the file, also when it is refused: it stays for
//! inspection. Writing is [`write_atomically`](crate::write_atomically): a crash
//! leaves the old state or the new one.

use std::fs;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};

/// Errors reading or writing a [`JsonStateFile`]. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateFileError {
    /// The file exists but cannot be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid state of this format; it was left untouched.
    #[error("{path} is corrupt ({detail})")]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file was written with another format version.
    #[error("{path} has format version {found}, this build reads version {expected}")]
    UnsupportedVersion {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u32,
        /// The version this file type reads.
        expected: u32,
    },
    /// Writing the file failed; the previous file, if any, is unchanged.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl StateFileError {
    /// The state file the error is about.
    pub fn path(&self) -> &Path {
        match self {
            StateFileError::Read { path, .. }
            | StateFileError::Corrupt { path, .. }
            | StateFileError::UnsupportedVersion { path, .. }
            | StateFileError::Write { path, .. } => path,
        }
    }
}

#[derive(Serialize)]
struct EnvelopeOut<'a> {
    format: &'a str,
    version: u32,
    sha256: String,
    state: &'a RawValue,
}

#[derive(Deserialize)]
struct EnvelopeIn<'a> {
    format: String,
    version: u32,
    sha256: String,
    #[serde(borrow)]
    state: &'a RawValue,
}

/// A file holding one `T` as versioned, checksummed JSON (see the module
/// documentation for the layout).
///
/// ```
/// use tandem_core::JsonStateFile;
///
/// let dir = tempfile::tempdir()?;
/// let file = JsonStateFile::<Vec<u32>>::new(dir.path().join("s.json"), "demo-state", 1, 0o644);
/// assert_eq!(file.load()?, None);
/// file.save(&vec![1, 2])?;
/// assert_eq!(file.load()?, Some(vec![1, 2]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone)]
pub struct JsonStateFile<T> {
    path: PathBuf,
    format: &'static str,
    version: u32,
    mode: u32,
    value: PhantomData<fn() -> T>,
}

impl<T: Serialize + DeserializeOwned> JsonStateFile<T> {
    /// The file at `path`, of the named `format` and `version`, written with
    /// `mode` (the umask applies).
    pub fn new(path: PathBuf, format: &'static str, version: u32, mode: u32) -> Self {
        JsonStateFile {
            path,
            format,
            version,
            mode,
            value: PhantomData,
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads the value. `Ok(None)` when there is no file. Never changes the file,
    /// also when it is refused.
    pub fn load(&self) -> Result<Option<T>, StateFileError> {
        let bytes = match fs::read(&self.path) {
            Ok(bytes) => bytes,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(source) => {
                return Err(StateFileError::Read {
                    path: self.path.clone(),
                    source,
                });
            }
        };
        self.decode(&bytes).map(Some)
    }

    /// Writes the value atomically; creates the directory when missing.
    pub fn save(&self, value: &T) -> Result<(), StateFileError> {
        let write_error = |source| StateFileError::Write {
            path: self.path.clone(),
            source,
        };
        let bytes = self.encode(value).map_err(write_error)?;
        crate::write_atomically(&self.path, &bytes, self.mode).map_err(write_error)
    }

    /// The file's bytes for `value`: the pretty-printed envelope and a newline.
    fn encode(&self, value: &T) -> Result<Vec<u8>, std::io::Error> {
        let inner = serde_json::to_string(value).map_err(std::io::Error::other)?;
        let raw = RawValue::from_string(inner).map_err(std::io::Error::other)?;
        let envelope = EnvelopeOut {
            format: self.format,
            version: self.version,
            sha256: checksum(raw.get().as_bytes()),
            state: &raw,
        };
        let mut out = serde_json::to_vec_pretty(&envelope).map_err(std::io::Error::other)?;
        out.push(b'\n');
        Ok(out)
    }

    /// Reads the value from `bytes`, the file's content that the caller read
    /// itself (to recognise an older layout of its own first, say). Errors name
    /// the file as [`load`](Self::load)'s do.
    ///
    /// ```
    /// use tandem_core::JsonStateFile;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let file = JsonStateFile::<u32>::new(dir.path().join("n.json"), "demo", 1, 0o644);
    /// file.save(&7)?;
    /// assert_eq!(file.decode(&std::fs::read(file.path())?)?, 7);
    /// assert!(file.decode(b"{\"version\": 1}").is_err());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn decode(&self, bytes: &[u8]) -> Result<T, StateFileError> {
        let corrupt = |detail: String| StateFileError::Corrupt {
            path: self.path.clone(),
            detail,
        };
        let envelope: EnvelopeIn<'_> =
            serde_json::from_slice(bytes).map_err(|e| corrupt(format!("not JSON: {e}")))?;
        if envelope.format != self.format {
            return Err(corrupt(format!(
                "format is `{}`, not `{}`",
                envelope.format, self.format
            )));
        }
        if envelope.version != self.version {
            return Err(StateFileError::UnsupportedVersion {
                path: self.path.clone(),
                found: envelope.version,
                expected: self.version,
            });
        }
        let actual = checksum(envelope.state.get().as_bytes());
        if actual != envelope.sha256 {
            return Err(corrupt(format!(
                "checksum mismatch: file says {}, content hashes to {actual}",
                envelope.sha256
            )));
        }
        serde_json::from_str(envelope.state.get())
            .map_err(|e| corrupt(format!("invalid state: {e}")))
    }
}

fn checksum(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::expect_used, clippy::unwrap_used)]
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    struct Sample {
        epoch: u64,
        name: String,
    }

    fn file(dir: &Path) -> JsonStateFile<Sample> {
        JsonStateFile::new(dir.join("s.json"), "test-state", 1, 0o644)
    }

    fn sample() -> Sample {
        Sample {
            epoch: 7,
            name: "a \"quoted\" name".into(),
        }
    }

    #[test]
    fn the_layout_is_the_documented_envelope() {
        let dir = tempfile::tempdir().unwrap();
        let file = file(dir.path());
        file.save(&sample()).unwrap();
        let text = fs::read_to_string(file.path()).unwrap();
        let inner = r#"{"epoch":7,"name":"a \"quoted\" name"}"#;
        let expected = format!(
            "{{\n  \"format\": \"test-state\",\n  \"version\": 1,\n  \"sha256\": \"{}\",\n  \"state\": {inner}\n}}\n",
            checksum(inner.as_bytes())
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn an_edited_value_fails_its_checksum_and_stays_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let file = file(dir.path());
        file.save(&sample()).unwrap();
        let text = fs::read_to_string(file.path()).unwrap();
        let edited = text.replace("\"epoch\":7", "\"epoch\":8");
        assert_ne!(text, edited);
        fs::write(file.path(), &edited).unwrap();
        let err = file.load().unwrap_err();
        assert!(err.to_string().contains("checksum mismatch"), "{err}");
        assert_eq!(fs::read_to_string(file.path()).unwrap(), edited);
    }

    #[test]
    fn another_format_or_version_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        file(dir.path()).save(&sample()).unwrap();
        let other = JsonStateFile::<Sample>::new(dir.path().join("s.json"), "other", 1, 0o644);
        let err = other.load().unwrap_err();
        assert!(err.to_string().contains("format is `test-state`"), "{err}");
        let newer = JsonStateFile::<Sample>::new(dir.path().join("s.json"), "test-state", 2, 0o644);
        assert!(matches!(
            newer.load().unwrap_err(),
            StateFileError::UnsupportedVersion {
                found: 1,
                expected: 2,
                ..
            }
        ));
    }

    proptest! {
        #[test]
        fn any_value_round_trips(epoch in any::<u64>(), name in ".{0,30}") {
            let dir = tempfile::tempdir().unwrap();
            let file = file(dir.path());
            let value = Sample { epoch, name };
            file.save(&value).unwrap();
            prop_assert_eq!(file.load().unwrap(), Some(value));
        }

        #[test]
        fn any_bytes_load_without_panic(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let dir = tempfile::tempdir().unwrap();
            let file = file(dir.path());
            fs::write(file.path(), &bytes).unwrap();
            let _ = file.load();
        }
    }
}
