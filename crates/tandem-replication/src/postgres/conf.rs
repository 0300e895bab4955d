//! What tandem writes into the cluster's configuration: `tandem.conf` (rendered from
//! the state), the libpq connection string to the peer, and this node's TLS files.

use super::PostgresBackend;
use super::server::{NodeFiles, conf_quote, conninfo_quote};
use super::state::PgState;
use super::tls;
use crate::config::PostgresConfig;
use crate::error::{Error, Result};
use crate::status::ReplicationState;

impl PostgresBackend {
    pub(super) fn peer_conninfo(&self, state: &PgState, database: bool) -> String {
        peer_conninfo(self.cfg(), state, &self.server.files(), database)
    }

    pub(super) fn render_conf(&self, state: &PgState) -> String {
        render_conf(self.cfg(), state, &self.server.files())
    }

    /// With TLS on, issues this node's certificate (for its node address, by the site
    /// CA derived from the site key) when `renew` or when a file is missing (a node
    /// initialized before TLS). Returns whether it issued one.
    pub(super) fn ensure_tls(&self, state: &PgState, renew: bool) -> Result<bool> {
        if !self.cfg().tls || (!renew && self.server.has_tls_files()) {
            return Ok(false);
        }
        let Some(local) = state.local else {
            return Err(Error::State(
                "TLS on the replication connection needs this node's node address for its \
                 certificate, and init did not learn it: set [network] node_address and run \
                 init again (or set [replication.postgres] tls = false)"
                    .to_owned(),
            ));
        };
        let key = tandem_peer::SiteKey::load(&self.settings.key_file())?;
        let issued = tls::issue(key.as_bytes(), state.node.get(), local)?;
        self.server.write_tls(&issued)?;
        Ok(true)
    }

    /// Writes `tandem.conf` for `state` (when the cluster's config directory is
    /// there); [`apply`](Self::apply) does it under the state file's lock.
    pub(super) fn write_conf(&self, state: &PgState) -> Result<()> {
        if self.cfg().config_dir().is_dir() {
            // tandem.conf names the certificate files: the server must find them.
            self.ensure_tls(state, false)?;
            self.server
                .write_file(&self.cfg().tandem_conf(), &self.render_conf(state))?;
        }
        Ok(())
    }
}

/// The libpq connection string of this node's connections to the peer. With TLS on,
/// the peer's certificate must name its node address and chain to the site CA, and
/// SCRAM must be bound to the TLS channel (so a server that skips authentication is
/// refused too). The client certificate is named too: this node's own, instead of
/// libpq's default under `~/.postgresql`, which the programs run as PostgreSQL's user
/// with root's home cannot read (and then refuse to connect).
fn peer_conninfo(
    cfg: &PostgresConfig,
    state: &PgState,
    files: &NodeFiles,
    database: bool,
) -> String {
    let mut text = format!(
        "host={} port={} user={} passfile={} application_name={}",
        conninfo_quote(&state.remote.to_string()),
        cfg.port,
        conninfo_quote(&cfg.replication_user),
        conninfo_quote(&files.passfile.display().to_string()),
        conninfo_quote(&state.app_name()),
    );
    if cfg.tls {
        text.push_str(&format!(
            " sslmode=verify-full sslrootcert={} sslcert={} sslkey={} channel_binding=require",
            conninfo_quote(&files.root.display().to_string()),
            conninfo_quote(&files.cert.display().to_string()),
            conninfo_quote(&files.key.display().to_string()),
        ));
    } else {
        text.push_str(" sslmode=prefer");
    }
    if database {
        text.push_str(&format!(" dbname={}", conninfo_quote(&cfg.database)));
    }
    text
}

/// `tandem.conf` for `state`.
fn render_conf(cfg: &PostgresConfig, state: &PgState, files: &NodeFiles) -> String {
    let names = if state.state == ReplicationState::Active
        && cfg.synchronous
        && state.degraded_since.is_none()
        && !state.following
    {
        state.peer_app_name()
    } else {
        String::new()
    };
    let mut out = String::from(
        "# Written by tandem (mp_replication) from its state file; changes here are \
             replaced.\n",
    );
    let mut set = |key: &str, value: String| {
        out.push_str(&format!("{key} = {value}\n"));
    };
    // Only what replication needs and the operator would not set otherwise; wal_level,
    // max_wal_senders, max_replication_slots and hot_standby keep their (working)
    // defaults or the operator's values, which init checks.
    set("wal_log_hints", "on".into());
    if cfg.tls {
        set("ssl", "on".into());
        set(
            "ssl_cert_file",
            conf_quote(&files.cert.display().to_string()),
        );
        set("ssl_key_file", conf_quote(&files.key.display().to_string()));
    }
    let keep = match cfg.max_slot_wal_keep_mb {
        0 => "-1".to_owned(),
        mb => conf_quote(&format!("{mb}MB")),
    };
    set("max_slot_wal_keep_size", keep);
    set("synchronous_standby_names", conf_quote(&names));
    set("tandem.node", conf_quote(&state.node.to_string()));
    set("tandem.site", conf_quote(&state.site.to_string()));
    set("tandem.state", conf_quote(state.state.as_str()));
    if state.following {
        set(
            "primary_conninfo",
            conf_quote(&peer_conninfo(cfg, state, files, false)),
        );
        set("primary_slot_name", conf_quote(&state.app_name()));
        // A WAL receiver that could not start (the new primary not up yet, its
        // slot for this node not made yet) tries again after this, 5 s by
        // default: a standby that does not stream cannot take over in a
        // switchover, and after a role change it was not streaming for up to
        // 5 s (RELIABILITY.md, finding 27).
        set("wal_retrieve_retry_interval", conf_quote("1s"));
    } else {
        set("primary_conninfo", conf_quote(""));
        set("primary_slot_name", conf_quote(""));
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::postgres::state::tests::state;

    #[test]
    fn a_synchronous_primary_waits_for_its_peer_unless_degraded() {
        let cfg = PostgresConfig::default();
        let pass = &NodeFiles::in_dir(Path::new("/etc/postgresql/15/main"));
        let mut s = state();
        let conf = render_conf(&cfg, &s, pass);
        assert!(
            conf.contains("synchronous_standby_names = 'tandem_node1'\n"),
            "{conf}"
        );
        assert!(conf.contains("primary_conninfo = ''\n"), "{conf}");
        assert!(conf.contains("tandem.state = 'active'\n"), "{conf}");
        assert!(
            conf.contains("max_slot_wal_keep_size = '10240MB'\n"),
            "{conf}"
        );
        s.degraded_since = Some(1);
        assert!(render_conf(&cfg, &s, pass).contains("synchronous_standby_names = ''\n"));
        s.degraded_since = None;
        s.following = true;
        let standby = render_conf(&cfg, &s, pass);
        assert!(
            standby.contains("primary_slot_name = 'tandem_node2'\n"),
            "{standby}"
        );
        assert!(
            standby.contains("host=''192.0.2.11'' port=5432 user=''tandem_replicator''"),
            "{standby}"
        );
        assert!(
            standby.contains("application_name=''tandem_node2''"),
            "{standby}"
        );
        // A standby whose receiver could not start tries again within a second.
        assert!(
            standby.contains("wal_retrieve_retry_interval = '1s'\n"),
            "{standby}"
        );
        s.following = false;
        assert!(!render_conf(&cfg, &s, pass).contains("wal_retrieve"));
    }

    #[test]
    fn with_tls_the_server_uses_its_certificate_and_the_standby_checks_the_peer_s() {
        let files = NodeFiles::in_dir(Path::new("/etc/postgresql/15/main"));
        let mut s = state();
        s.following = true;
        let conf = render_conf(&PostgresConfig::default(), &s, &files);
        for line in [
            "ssl = on\n",
            "ssl_cert_file = '/etc/postgresql/15/main/tandem.crt'\n",
            "ssl_key_file = '/etc/postgresql/15/main/tandem.key'\n",
        ] {
            assert!(conf.contains(line), "{line} in {conf}");
        }
        assert!(
            conf.contains(
                "sslmode=verify-full sslrootcert=''/etc/postgresql/15/main/tandem-site-ca.crt'' \
                 sslcert=''/etc/postgresql/15/main/tandem.crt'' \
                 sslkey=''/etc/postgresql/15/main/tandem.key'' channel_binding=require"
            ),
            "{conf}"
        );
        assert!(!conf.contains("sslmode=prefer"), "{conf}");
        let plain = PostgresConfig {
            tls: false,
            ..PostgresConfig::default()
        };
        let conf = render_conf(&plain, &s, &files);
        assert!(
            !conf.contains("ssl = on") && !conf.contains("ssl_cert_file"),
            "{conf}"
        );
        assert!(
            peer_conninfo(&plain, &s, &files, true).contains("sslmode=prefer dbname="),
            "{conf}"
        );
    }
}
