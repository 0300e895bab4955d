//! The `[peer]` section of the node config file: the link's port and the site key file,
//! as a serde type with its own checks (the node agent composes it with the other
//! crates' sections).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::config::DEFAULT_PORT;

/// `[peer]`: where the agents' link listens and which site key replication reads.
///
/// Unknown keys are refused, so a misspelt `key-file` is an error rather than a key
/// file that silently stays at its default.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerSection {
    /// TCP port of the agents' link on both node addresses (both nodes use the same).
    #[serde(default = "default_port")]
    pub port: u16,
    /// The site key file replication reads; `None`: the default path. The agent's own
    /// key is its `--key-file` flag.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
}

fn default_port() -> u16 {
    DEFAULT_PORT
}

impl Default for PeerSection {
    fn default() -> PeerSection {
        PeerSection {
            port: DEFAULT_PORT,
            key_file: None,
        }
    }
}

/// A `[peer]` key that cannot work.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {problem}")]
pub struct SectionError {
    /// The key with its section, as the node config names it (`peer.port`).
    pub field: &'static str,
    /// What is wrong and what to do.
    pub problem: String,
}

impl PeerSection {
    /// Checks what serde cannot: the port is not 0, the key file is an absolute path.
    pub fn validate(&self) -> Result<(), SectionError> {
        if self.port == 0 {
            return Err(SectionError {
                field: "peer.port",
                problem: format!(
                    "0 is not a port both nodes can meet on; the default is {DEFAULT_PORT}"
                ),
            });
        }
        if let Some(path) = &self.key_file
            && !path.is_absolute()
        {
            return Err(SectionError {
                field: "peer.key_file",
                problem: format!(
                    "{} is not an absolute path (the agent and the tools run from different directories)",
                    path.display()
                ),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn parse(text: &str) -> Result<PeerSection, String> {
        #[derive(Deserialize)]
        struct File {
            peer: PeerSection,
        }
        let file: File = toml::from_str(text).map_err(|e| e.message().to_owned())?;
        file.peer.validate().map_err(|e| e.to_string())?;
        Ok(file.peer)
    }

    #[test]
    fn defaults_and_keys() {
        assert_eq!(parse("[peer]\n").unwrap(), PeerSection::default());
        let s = parse("[peer]\nport = 7500\nkey_file = \"/etc/tandem/site.key\"\n").unwrap();
        assert_eq!(s.port, 7500);
        assert_eq!(s.key_file, Some(PathBuf::from("/etc/tandem/site.key")));
    }

    #[test]
    fn bad_keys_are_named() {
        assert!(
            parse("[peer]\nkey-file = \"/k\"\n")
                .unwrap_err()
                .contains("unknown field `key-file`")
        );
        assert!(parse("[peer]\nport = 70000\n").unwrap_err().contains("u16"));
        assert!(
            parse("[peer]\nport = 0\n")
                .unwrap_err()
                .starts_with("peer.port: 0 is not")
        );
        assert!(
            parse("[peer]\nkey_file = \"authkey\"\n")
                .unwrap_err()
                .starts_with("peer.key_file: authkey")
        );
    }
}
