//! The persisted node state and its file: JSON with a format version and a
//! checksum, written atomically (`tandem-core`'s [`JsonStateFile`]).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use tandem_core::{JsonStateFile, StateFileError};

use crate::{DeploymentMode, Epoch, FenceToken, NodeId, Role, SiteId};

/// What a node remembers across restarts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeState {
    /// Single-server or failover deployment.
    pub deployment: DeploymentMode,
    /// Which node of the site this is.
    pub node: NodeId,
    /// The site both nodes belong to.
    pub site: SiteId,
    /// The node's role when the state was written.
    pub role: Role,
    /// The highest epoch this node has used for a claim or seen in a peer's claim.
    pub epoch: Epoch,
    /// The operator put this node in standby (`set-server standby`, or
    /// `set-deployment failover`): it takes no active role on its own until
    /// `set-server active`, or until the peer has taken over.
    pub standby_hold: bool,
    /// The state of database replication, as last reported.
    pub replication: Replication,
    /// When the role last changed, in milliseconds since the Unix epoch.
    pub role_changed_ms: u64,
    /// The highest witness fencing token this node has held or seen; `None` on a
    /// site without a witness.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<FenceToken>,
}

impl NodeState {
    /// The state of a node on its first boot: a single-server deployment (the seed's
    /// freshly installed Application Server), standby until it boots, epoch 0.
    pub fn first_boot(node: NodeId, site: SiteId) -> NodeState {
        NodeState {
            deployment: DeploymentMode::Single,
            node,
            site,
            role: Role::Standby,
            epoch: Epoch::ZERO,
            standby_hold: false,
            replication: Replication::Off,
            role_changed_ms: 0,
            token: None,
        }
    }
}

/// The state of database replication as the role machine knows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Replication {
    /// Not switched on.
    Off,
    /// Switched on and running.
    On,
    /// Switched on but failed; an alarm was raised.
    Failed,
}

impl std::fmt::Display for Replication {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Replication::Off => "off",
            Replication::On => "on",
            Replication::Failed => "failed",
        })
    }
}

/// The format version this crate writes and reads.
pub const STATE_VERSION: u32 = 1;
/// The file name of the node state inside the state directory.
pub const STATE_FILE_NAME: &str = "node-state.json";
const FORMAT: &str = "tandem-node-state";

/// Errors reading or writing the state file. Each names the file.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StateError {
    /// The file exists but cannot be read.
    #[error("cannot read node state {path}: {source}")]
    Read {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid node state; it was left untouched for inspection.
    #[error(
        "node state {path} is corrupt ({detail}); the node stays standby and the file is left as it is for inspection: move it away to start this node as on first boot"
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong.
        detail: String,
    },
    /// The file was written by a newer or unknown format version.
    #[error(
        "node state {path} has format version {found}, this build reads version {STATE_VERSION}"
    )]
    UnsupportedVersion {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u32,
    },
    /// Writing the file failed; the previous state file, if any, is unchanged.
    #[error("cannot write node state {path}: {source}")]
    Write {
        /// The state file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// The node state file in a state directory.
#[derive(Debug, Clone)]
pub struct StateFile {
    file: JsonStateFile<NodeState>,
}

impl StateFile {
    /// The state file `node-state.json` inside `state_dir`.
    pub fn in_dir(state_dir: impl AsRef<Path>) -> StateFile {
        let path = state_dir.as_ref().join(STATE_FILE_NAME);
        StateFile {
            file: JsonStateFile::new(path, FORMAT, STATE_VERSION, 0o644),
        }
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        self.file.path()
    }

    /// Reads the state. `Ok(None)` when there is no file (first boot). Never
    /// changes the file, also when it is corrupt.
    pub fn load(&self) -> Result<Option<NodeState>, StateError> {
        self.file.load().map_err(StateError::from)
    }

    /// Writes the state atomically: a temporary file in the same directory, fsync,
    /// rename over the old file, fsync of the directory. A crash at any point leaves
    /// either the old or the new state. Creates the directory when missing.
    pub fn save(&self, state: &NodeState) -> Result<(), StateError> {
        self.file.save(state).map_err(StateError::from)
    }
}

impl From<StateFileError> for StateError {
    fn from(e: StateFileError) -> StateError {
        match e {
            StateFileError::Read { path, source } => StateError::Read { path, source },
            StateFileError::UnsupportedVersion { path, found, .. } => {
                StateError::UnsupportedVersion { path, found }
            }
            StateFileError::Write { path, source } => StateError::Write { path, source },
            StateFileError::Corrupt { path, detail } => StateError::Corrupt { path, detail },
            // A kind of error the core crate may add later: the state is not read.
            other => StateError::Corrupt {
                path: other.path().to_path_buf(),
                detail: other.to_string(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn sample() -> NodeState {
        NodeState {
            deployment: DeploymentMode::Failover,
            node: NodeId::Two,
            site: SiteId::ONE,
            role: Role::Active,
            epoch: Epoch::new(7),
            standby_hold: false,
            replication: Replication::On,
            role_changed_ms: 1_700_000_000_000,
            token: Some(FenceToken::new(42)),
        }
    }

    #[test]
    fn missing_file_is_first_boot() {
        let dir = tempfile::tempdir().expect("tempdir");
        assert!(
            StateFile::in_dir(dir.path())
                .load()
                .expect("load")
                .is_none()
        );
    }

    #[test]
    fn save_then_load() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::in_dir(dir.path().join("nested"));
        file.save(&sample()).expect("save");
        assert_eq!(file.load().expect("load"), Some(sample()));
        // No temporary file is left behind.
        let names: Vec<_> = fs::read_dir(dir.path().join("nested"))
            .expect("dir")
            .map(|e| e.expect("entry").file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(STATE_FILE_NAME)]);
    }

    #[test]
    fn an_edited_state_fails_its_checksum_and_stays_untouched() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::in_dir(dir.path());
        file.save(&sample()).expect("save");
        let text = fs::read_to_string(file.path()).expect("read");
        let edited = text.replace("\"epoch\":7", "\"epoch\":8");
        assert_ne!(text, edited, "the test must change the epoch");
        fs::write(file.path(), &edited).expect("write");
        let err = file.load().expect_err("checksum must fail");
        assert!(matches!(err, StateError::Corrupt { .. }), "{err}");
        let message = err.to_string();
        assert!(
            message.contains(&file.path().display().to_string()),
            "{message}"
        );
        assert!(message.contains("checksum mismatch"), "{message}");
        assert_eq!(fs::read_to_string(file.path()).expect("read"), edited);
    }

    #[test]
    fn a_newer_version_is_named() {
        let dir = tempfile::tempdir().expect("tempdir");
        let file = StateFile::in_dir(dir.path());
        file.save(&sample()).expect("save");
        let text = fs::read_to_string(file.path()).expect("read");
        fs::write(
            file.path(),
            text.replace("\"version\": 1", "\"version\": 9"),
        )
        .expect("write");
        let err = file.load().expect_err("version");
        assert!(
            matches!(err, StateError::UnsupportedVersion { found: 9, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_unreadable_path_is_a_read_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        // A directory where the file should be.
        fs::create_dir(dir.path().join(STATE_FILE_NAME)).expect("mkdir");
        let err = StateFile::in_dir(dir.path())
            .load()
            .expect_err("is a directory");
        assert!(matches!(err, StateError::Read { .. }), "{err}");
    }
}
