//! The local control socket between the operator's tools and a running agent.
//!
//! While the agent runs it holds the node's lock, so `failover set-server` and
//! friends hand their command to the agent over a Unix socket in the state
//! directory (`control.sock`, owner-only) and print the agent's report. Without
//! an agent the tool opens the node itself, as the seed's tools did. One request
//! and one response per connection, each a line of JSON.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_role::{DeploymentMode, Role};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

use crate::{Report, StatusSnapshot};

/// Name of the control socket in the state directory.
pub const CONTROL_SOCKET_NAME: &str = "control.sock";
/// Longest request or response line accepted.
const MAX_LINE: usize = 4 << 20;

/// What a tool asks the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Request {
    /// `failover set-server active|standby`.
    SetServer(Role),
    /// `failover switchover`: make this standby node active with the peer's
    /// help: the active peer stands down on the peer link and this node takes
    /// over when it hears the release. Answered with this node's report.
    Switchover,
    /// `failover set-deployment failover|single`.
    SetDeployment(DeploymentMode),
    /// `failover status`.
    Status,
    /// `failover copy-config-files`: send this bundle file to the peer, which keeps
    /// it where `failover restore-config-files` looks by default.
    SendBundle {
        /// The bundle file (on this node).
        path: PathBuf,
    },
    /// `failover check`.
    Check,
    /// Where this node stands, for [`crate::DegradeGuard`]: its role and its hold
    /// on the witness's leader key.
    Standing,
    /// `mp_replication switch-on` / `switch-off` on the site: ask the peer's agent,
    /// over the peer link, to switch replication on or off on its node, and answer
    /// with what it did (this node's part is the tool's own).
    PeerSwitch(crate::SwitchAction),
}

/// Where a node stands: the agent's answer to [`Request::Standing`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Standing {
    /// The node's role.
    pub role: Role,
    /// Its epoch.
    pub epoch: tandem_role::Epoch,
    /// Whether the site has a witness.
    pub witness: bool,
    /// The fencing token of the lease this node holds, if it holds one.
    pub token: Option<tandem_role::FenceToken>,
    /// How long the node may still count on its lease: the time to its step-down
    /// deadline, which comes before the lease can expire anywhere.
    pub lease_valid_ms: Option<u64>,
}

/// What the agent answers.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
#[non_exhaustive]
pub enum Response {
    /// What a command did.
    Report(Report),
    /// The node's status.
    Status(Box<StatusSnapshot>),
    /// A bundle reached the peer.
    Sent {
        /// Bytes sent.
        bytes: u64,
        /// The peer's node address and port.
        peer: String,
    },
    /// The prerequisites report.
    Check(crate::check::CheckReport),
    /// Where the node stands.
    Standing(Standing),
    /// What the peer's agent did for [`Request::PeerSwitch`].
    PeerSwitched(crate::NodeOutcome),
    /// The agent could not serve the request.
    Error(String),
}

/// Errors talking to the agent.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ControlError {
    /// No agent listens on this state directory.
    #[error("no agent is running for state directory {state_dir}")]
    NoAgent {
        /// The state directory.
        state_dir: PathBuf,
    },
    /// The conversation with the agent failed.
    #[error("talking to the agent on {socket}: {reason}")]
    Io {
        /// The socket.
        socket: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

/// The control socket's path in a state directory.
pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(CONTROL_SOCKET_NAME)
}

/// Sends one request to the agent of `state_dir` and waits up to `limit` for its
/// answer. [`ControlError::NoAgent`] when no agent listens.
pub async fn request(
    state_dir: &Path,
    request: &Request,
    limit: Duration,
) -> Result<Response, ControlError> {
    let socket = socket_path(state_dir);
    let io = |reason: String| ControlError::Io {
        socket: socket.clone(),
        reason,
    };
    let stream = match UnixStream::connect(&socket).await {
        Ok(stream) => stream,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Err(ControlError::NoAgent {
                state_dir: state_dir.to_path_buf(),
            });
        }
        Err(e) => return Err(io(e.to_string())),
    };
    let exchange = async {
        let (read, mut write) = stream.into_split();
        let mut line = serde_json::to_vec(request).map_err(|e| io(e.to_string()))?;
        line.push(b'\n');
        write
            .write_all(&line)
            .await
            .map_err(|e| io(e.to_string()))?;
        let answer = read_line(&mut BufReader::new(read)).await.map_err(io)?;
        serde_json::from_str(&answer).map_err(|e| io(format!("unreadable answer: {e}")))
    };
    tokio::time::timeout(limit, exchange)
        .await
        .unwrap_or_else(|_| Err(io(format!("no answer within {} s", limit.as_secs()))))
}

/// Binds the control socket of `state_dir`, owner-only. A socket file left by an
/// agent that died is replaced; a live agent's is not.
pub async fn bind(state_dir: &Path) -> Result<UnixListener, ControlError> {
    let socket = socket_path(state_dir);
    let io = |reason: String| ControlError::Io {
        socket: socket.clone(),
        reason,
    };
    if socket.exists() {
        if UnixStream::connect(&socket).await.is_ok() {
            return Err(io("another agent is listening on it".into()));
        }
        std::fs::remove_file(&socket).map_err(|e| io(e.to_string()))?;
    }
    let listener = UnixListener::bind(&socket).map_err(|e| io(e.to_string()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| io(e.to_string()))?;
    Ok(listener)
}

/// Reads one request from a tool's connection.
pub(crate) async fn read_request(stream: &mut BufReader<UnixStream>) -> Result<Request, String> {
    let line = read_line(stream).await?;
    serde_json::from_str(&line).map_err(|e| format!("not a request: {e}"))
}

/// Writes the answer to a tool's connection.
pub(crate) async fn write_response(
    stream: &mut BufReader<UnixStream>,
    response: &Response,
) -> Result<(), String> {
    let mut line = serde_json::to_vec(response).map_err(|e| e.to_string())?;
    line.push(b'\n');
    stream
        .get_mut()
        .write_all(&line)
        .await
        .map_err(|e| e.to_string())
}

async fn read_line<R: tokio::io::AsyncRead + Unpin>(
    reader: &mut BufReader<R>,
) -> Result<String, String> {
    let mut buf = Vec::new();
    loop {
        let available = reader.fill_buf().await.map_err(|e| e.to_string())?;
        if available.is_empty() {
            return Err("the connection closed before a full line".into());
        }
        if let Some(end) = available.iter().position(|b| *b == b'\n') {
            buf.extend_from_slice(&available[..end]);
            reader.consume(end + 1);
            break;
        }
        let n = available.len();
        buf.extend_from_slice(available);
        reader.consume(n);
        if buf.len() > MAX_LINE {
            return Err(format!("line longer than {MAX_LINE} bytes"));
        }
    }
    String::from_utf8(buf).map_err(|_| "line is not UTF-8".to_string())
}
