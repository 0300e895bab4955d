//! The node's replicated database as the role transitions and the agent see it:
//! replication settings built from the node config, the backend opened for
//! promote and demote, and its status in the status page's form.

use std::path::Path;

use tandem_replication::{Backend, NodeFacts, ReplicationConfig, Settings, Status};

use crate::NodeConfig;
use crate::status::{ReplicationSide, ReplicationStatus};

/// The replication settings of a node: its `[replication]` table (defaults when it
/// has none) and the facts of its other tables, with the node's state directory.
pub fn replication_settings(
    config: &NodeConfig,
    state_dir: &Path,
) -> Result<Settings, tandem_replication::Error> {
    let replication: ReplicationConfig = match &config.replication {
        Some(table) => {
            toml::Value::Table(table.clone())
                .try_into()
                .map_err(|e: toml::de::Error| {
                    tandem_replication::Error::Config(format!("[replication]: {e}"))
                })?
        }
        None => ReplicationConfig::default(),
    };
    replication.validate()?;
    let peer = config.peer.as_ref();
    let mut settings = Settings::new(state_dir, replication);
    settings.node = NodeFacts {
        id: Some(config.node.id.get()),
        site: u16::try_from(config.node.site.get()).ok(),
        hostname: Some(config.node.hostname.clone()),
        node_address: Some(config.network.node_address.addr()),
        peer_address: Some(config.network.peer_address),
        peer_port: peer
            .and_then(|t| t.get("port"))
            .and_then(toml::Value::as_integer)
            .and_then(|p| u16::try_from(p).ok()),
        key_file: peer
            .and_then(|t| t.get("key_file"))
            .and_then(toml::Value::as_str)
            .map(Into::into),
    };
    Ok(settings)
}

/// Opens the node's database for the role transitions, if replication was
/// initialized on it (`mp_replication init`); `None` when it was not, so a node
/// without a database still switches roles.
pub async fn open_database(
    config: &NodeConfig,
    state_dir: &Path,
) -> Result<Option<Backend>, tandem_replication::Error> {
    let settings = replication_settings(config, state_dir)?;
    match Backend::open_existing(&settings).await {
        Ok(backend) => Ok(Some(backend)),
        Err(tandem_replication::Error::NotInitialized) => Ok(None),
        Err(e) => Err(e),
    }
}

/// The replication table of the status page from the backend's status.
pub fn replication_status(status: &Status) -> ReplicationStatus {
    let side = |s: &tandem_replication::ServerStatus| ReplicationSide {
        replication_type: s.replication_type.to_string(),
        site: s.site.map_or(0, u32::from),
        node: s.node.unwrap_or(0),
        state: s.state.to_string(),
        status: s.status.to_string(),
    };
    ReplicationStatus {
        local: side(&status.local),
        remote: side(&status.remote),
        backlog: status.backlog.unwrap_or(0),
        lag_ms: status.lag_ms,
        resync: status
            .resync
            .as_ref()
            .map(|r| r.render().trim_end().to_owned()),
        local_detail: status.local_detail.clone(),
        remote_detail: status.remote_detail.clone(),
    }
}
