//! Connections: to this node's server over its Unix socket as the superuser, and to
//! the peer's over TCP (TLS, `verify-full`) as the replication role with the password
//! derived from the site key.

use std::net::SocketAddr;
use std::time::Duration;

use sqlx::Connection;
use sqlx::postgres::{PgConnectOptions, PgConnection, PgSslMode};

use super::state::PgState;
use super::{PostgresBackend, scram};
use crate::error::{Error, Result};

impl PostgresBackend {
    /// The replication password (derived from the site key).
    pub(super) fn password(&self) -> Result<String> {
        let path = self.settings.key_file();
        let key = tandem_peer::SiteKey::load(&path)?;
        scram::password(key.as_bytes())
    }

    pub(super) fn connect_timeout(&self) -> Duration {
        Duration::from_millis(self.cfg().connect_timeout_ms)
    }

    /// Connects to this node's server over its Unix socket as the superuser.
    pub(super) async fn connect_local(&self) -> Result<PgConnection> {
        let cfg = self.cfg();
        let options = PgConnectOptions::new_without_pgpass()
            .socket(&cfg.socket_dir)
            .port(cfg.port)
            .username(&cfg.superuser)
            .database(&cfg.database)
            .application_name("tandem");
        let what = format!(
            "connecting to this node's PostgreSQL (socket {}, port {}, user {}): is it \
             running (`pg_ctl status -D {}`) and does pg_hba.conf let this user in?",
            cfg.socket_dir.display(),
            cfg.port,
            cfg.superuser,
            cfg.config_dir().display()
        );
        match tokio::time::timeout(self.connect_timeout(), PgConnection::connect_with(&options))
            .await
        {
            Ok(result) => result.map_err(Error::db(what)),
            Err(_) => Err(Error::Timeout {
                what,
                limit: self.connect_timeout(),
            }),
        }
    }

    /// Connects to the peer's server over TCP as the replication role; with TLS on,
    /// only to a server whose certificate names the peer's node address and chains to
    /// the site CA (`verify-full`).
    pub(super) async fn connect_peer(&self, state: &PgState) -> Result<PgConnection> {
        let cfg = self.cfg();
        let password = self.password()?;
        let mut options = PgConnectOptions::new_without_pgpass()
            .host(&state.remote.to_string())
            .port(cfg.port)
            .username(&cfg.replication_user)
            .password(&password)
            .database(&cfg.database)
            .ssl_mode(PgSslMode::Disable)
            .application_name("tandem");
        if cfg.tls {
            let root = self.server.files().root;
            if !root.is_file() {
                return Err(Error::State(format!(
                    "the site CA's certificate {} is missing, so the peer's certificate cannot \
                     be checked: run `mp_replication init` again on this node",
                    root.display()
                )));
            }
            options = options
                .ssl_mode(PgSslMode::VerifyFull)
                .ssl_root_cert(self.server.files().root);
        }
        let what = format!(
            "connecting to the peer's PostgreSQL at {} as {}",
            SocketAddr::new(state.remote, cfg.port),
            cfg.replication_user
        );
        match tokio::time::timeout(self.connect_timeout(), PgConnection::connect_with(&options))
            .await
        {
            Ok(result) => result.map_err(Error::db(what)),
            Err(_) => Err(Error::Timeout {
                what,
                limit: self.connect_timeout(),
            }),
        }
    }
}
