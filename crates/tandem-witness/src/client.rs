//! The witness client: one call to etcd per method, each under the config's
//! request timeout.
//!
//! What a failure at each step of [`Witness::acquire`] leaves in etcd: the fresh
//! lease is granted first; if the transaction then fails, the lease holds no key
//! and expires after the TTL (a revoke is attempted). The transaction creates the
//! key or changes nothing. When the key already exists, the unused fresh lease is
//! revoked; if that revoke fails, it too expires unused. Nothing is ever left that
//! outlives a TTL without a keep-alive.

use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, Identity, PutOptions, TlsOptions, Txn,
    TxnOp, TxnOpResponse,
};
use serde::Serialize;
use tandem_core::{NodeId, SiteId};
use tokio::time::Instant;

use crate::config::read_file;
use crate::{Holder, LeaderValue, Token, WitnessConfig, WitnessError};

/// The outcome of [`Witness::acquire`]: one or the other, never a third.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Acquire {
    /// This node holds the leader key (created now, or adopted from a previous run
    /// of this node's agent whose lease is still alive).
    Acquired {
        /// The fencing token: the key's creation revision.
        token: Token,
        /// The etcd lease the key is attached to.
        lease_id: i64,
    },
    /// Another holder has the key.
    HeldBy(Holder),
}

/// An acknowledged keep-alive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Renewed {
    /// The TTL etcd reports for the lease after the keep-alive.
    pub ttl: Duration,
    /// When the keep-alive was sent (monotonic clock): the step-down deadline is
    /// measured from here.
    pub sent_at: Instant,
}

/// Whether one etcd member answered a status request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MemberStatus {
    /// The member's client URL, as configured.
    pub endpoint: String,
    /// Whether it answered in time.
    pub up: bool,
    /// Its etcd version, when it answered.
    pub version: Option<String>,
    /// Whether it is the raft leader, when it answered.
    pub leader: bool,
    /// Why it did not answer.
    pub error: Option<String>,
}

/// What [`Witness::check`] found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CheckReport {
    /// Every member's status.
    pub members: Vec<MemberStatus>,
    /// Whether the check key under the prefix could be read.
    pub readable: bool,
    /// Whether the check key under the prefix could be written and deleted.
    pub writable: bool,
    /// The first problem met, if any.
    pub problem: Option<String>,
}

impl CheckReport {
    /// Whether everything needed works: a member answered and the prefix is
    /// readable and writable.
    pub fn ok(&self) -> bool {
        self.readable && self.writable && self.members.iter().any(|m| m.up)
    }
}

/// An etcd witness client for one node of one site.
pub struct Witness {
    config: WitnessConfig,
    site: SiteId,
    node: NodeId,
    key: String,
    client: Client,
    /// One client per endpoint, for [`Witness::members`].
    probe: Probe,
    /// The lease held by this node, and its token.
    held: Option<(i64, Token)>,
}

impl std::fmt::Debug for Witness {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Witness")
            .field("endpoints", &self.config.endpoints)
            .field("key", &self.key)
            .field("node", &self.node)
            .field("held", &self.held)
            .finish_non_exhaustive()
    }
}

impl Witness {
    /// Validates `config` and connects to its endpoints for node `node` of site
    /// `site`. Without a user, connecting is lazy and succeeds with the cluster
    /// down; with a user, etcd must answer the authentication within the request
    /// timeout, else [`WitnessError::Unreachable`].
    pub async fn connect(
        config: WitnessConfig,
        site: SiteId,
        node: NodeId,
    ) -> Result<Witness, WitnessError> {
        config.validate()?;
        let options = connect_options(&config)?;
        // A member that answers without a leader (an election, a lost quorum) is
        // still up: the status probe must not require one.
        let single_options = options.clone().0.with_require_leader(false);
        let timeout = config.request_timeout();
        let endpoints = config.endpoints.join(", ");
        let client = bounded(timeout, &endpoints, "connect", async {
            Client::connect(&config.endpoints, Some(options.with_user())).await
        })
        .await?;
        let mut singles = Vec::new();
        for endpoint in &config.endpoints {
            // Without a user these connect lazily: nothing waits for the member.
            let single = bounded(timeout, endpoint, "connect", async {
                Client::connect([endpoint], Some(single_options.clone())).await
            })
            .await?;
            singles.push((endpoint.clone(), single));
        }
        Ok(Witness {
            key: config.leader_key(site),
            config,
            site,
            node,
            client,
            probe: Probe { singles, timeout },
            held: None,
        })
    }

    /// The config in use.
    pub fn config(&self) -> &WitnessConfig {
        &self.config
    }

    /// The leader key.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The token of the lease this node holds, if it holds one.
    pub fn held(&self) -> Option<Token> {
        self.held.map(|(_, token)| token)
    }

    /// Tries to become the holder: grants a lease with the TTL, then in one
    /// transaction creates the leader key under it if the key does not exist, or
    /// reads the key. A key that already names this node (a restarted agent of
    /// the holder) is adopted with its live lease and token. The fresh lease is
    /// revoked when it was not used.
    pub async fn acquire(&mut self) -> Result<Acquire, WitnessError> {
        // A second round only when an adopted lease turned out to be gone: its key
        // is deleted with it, so the next transaction can create the key.
        for _ in 0..2 {
            let ttl = i64::from(self.config.ttl_s);
            let grant = self.call("lease grant", |mut c| async move {
                c.lease_grant(ttl, None).await
            });
            let lease = grant.await?.id();
            let value = self.value()?;
            let key = self.key.clone();
            let txn = Txn::new()
                .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(
                    key.clone(),
                    value,
                    Some(PutOptions::new().with_lease(lease)),
                )])
                .or_else([TxnOp::get(key, None)]);
            let response = match self
                .call("txn", |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await
            {
                Ok(r) => r,
                Err(e) => {
                    self.revoke_quietly(lease).await;
                    return Err(e);
                }
            };
            if response.succeeded() {
                let revision = response.header().map_or(0, |h| h.revision());
                let token = token_of(revision, &self.key)?;
                self.held = Some((lease, token));
                return Ok(Acquire::Acquired {
                    token,
                    lease_id: lease,
                });
            }
            let existing = response.op_responses().into_iter().find_map(|op| match op {
                TxnOpResponse::Get(get) => get.kvs().first().cloned(),
                _ => None,
            });
            let Some(kv) = existing else {
                // The get runs in the same transaction as the failed compare, so
                // the key existed; an empty answer cannot come from etcd.
                self.revoke_quietly(lease).await;
                continue;
            };
            let holder = self.parse_holder(kv.value(), kv.create_revision())?;
            if kv.lease() == lease && holder.node == self.node {
                // A repeated transaction whose first send was applied: the key was
                // created under the fresh lease, at the revision now in the key.
                self.held = Some((lease, holder.token));
                return Ok(Acquire::Acquired {
                    token: holder.token,
                    lease_id: lease,
                });
            }
            self.revoke_quietly(lease).await;
            if holder.node != self.node {
                return Ok(Acquire::HeldBy(holder));
            }
            // Our own key from before a restart: keep its lease alive, keep its token.
            self.held = Some((kv.lease(), holder.token));
            match self.renew().await {
                Ok(_) => {
                    return Ok(Acquire::Acquired {
                        token: holder.token,
                        lease_id: kv.lease(),
                    });
                }
                Err(WitnessError::LeaseGone) => continue,
                Err(e) => {
                    self.held = None;
                    return Err(e);
                }
            }
        }
        Err(WitnessError::LeaseGone)
    }

    /// One keep-alive of the held lease. [`WitnessError::LeaseGone`] when etcd no
    /// longer has it (this node is no longer the holder and forgets the lease).
    pub async fn renew(&mut self) -> Result<Renewed, WitnessError> {
        let Some((lease, _)) = self.held else {
            return Err(WitnessError::NotHolding);
        };
        let sent_at = Instant::now();
        let result = self
            .call("lease keep-alive", |mut c| async move {
                // lease_keep_alive sends one keep-alive and waits for its answer (a
                // TTL of 0 there is an error); the stream is dropped: one per call.
                c.lease_keep_alive(lease).await.map(drop)
            })
            .await;
        match result {
            Ok(()) => {}
            Err(WitnessError::Etcd {
                source: etcd_client::Error::LeaseKeepAliveError(_),
                ..
            }) => {
                self.held = None;
                return Err(WitnessError::LeaseGone);
            }
            Err(WitnessError::Etcd { source, .. }) if is_lease_not_found(&source) => {
                self.held = None;
                return Err(WitnessError::LeaseGone);
            }
            Err(e) => return Err(e),
        }
        // The TTL etcd reports now (a keep-alive resets it to the full TTL).
        let ttl = self
            .call("lease time-to-live", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await
            .map(|r| r.ttl())
            .unwrap_or(i64::from(self.config.ttl_s));
        if ttl <= 0 {
            self.held = None;
            return Err(WitnessError::LeaseGone);
        }
        Ok(Renewed {
            ttl: Duration::from_secs(ttl.unsigned_abs()),
            sent_at,
        })
    }

    /// Revokes the held lease, which deletes the leader key. Does nothing when no
    /// lease is held; a lease etcd no longer has counts as released.
    pub async fn release(&mut self) -> Result<(), WitnessError> {
        let Some((lease, _)) = self.held else {
            return Ok(());
        };
        let result = self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
        match result {
            Ok(_) => {}
            Err(WitnessError::Etcd { source, .. }) if is_lease_not_found(&source) => {}
            Err(e) => return Err(e),
        }
        self.held = None;
        Ok(())
    }

    /// Forgets the held lease without revoking it (after the keeper reported it
    /// lost: the key goes when etcd expires the lease).
    pub fn forget(&mut self) {
        self.held = None;
    }

    /// The leader key's holder and how long its lease has left, or `None` when the
    /// key does not exist.
    pub async fn holder(&mut self) -> Result<Option<(Holder, Duration)>, WitnessError> {
        let key = self.key.clone();
        let got = self
            .call("get", |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let Some(kv) = got.kvs().first().cloned() else {
            return Ok(None);
        };
        let holder = self.parse_holder(kv.value(), kv.create_revision())?;
        let lease = kv.lease();
        if lease == 0 {
            // Not tandem's writing (tandem's key always has a lease): it never expires.
            return Err(WitnessError::BadValue {
                key: self.key.clone(),
                detail: "the key has no lease, so it would never expire; delete it".into(),
            });
        }
        let ttl = self
            .call("lease time-to-live", |mut c| async move {
                c.lease_time_to_live(lease, None).await
            })
            .await?
            .ttl();
        Ok(Some((
            holder,
            Duration::from_secs(ttl.max(0).unsigned_abs()),
        )))
    }

    /// Asks every member for its status, all at once, each under the request
    /// timeout.
    pub async fn members(&self) -> Vec<MemberStatus> {
        self.probe.members().await
    }

    /// A handle that asks the members for their status, for a task of its own.
    pub(crate) fn probe(&self) -> Probe {
        self.probe.clone()
    }

    /// Checks the witness for `failover check`: which members answer, and whether
    /// `<prefix>/<site>/check-<node>` can be written, read and deleted. Fails only
    /// when no member answers.
    pub async fn check(&mut self) -> Result<CheckReport, WitnessError> {
        let members = self.members().await;
        if !members.iter().any(|m| m.up) {
            let reason = members
                .iter()
                .filter_map(|m| m.error.as_ref().map(|e| format!("{}: {e}", m.endpoint)))
                .collect::<Vec<_>>()
                .join("; ");
            return Err(self.unreachable(reason));
        }
        let key = self.config.check_key(self.site, self.node);
        let value = format!("check by node {}", self.node);
        let mut report = CheckReport {
            members,
            readable: false,
            writable: false,
            problem: None,
        };
        let (k, v) = (key.clone(), value.clone());
        let put = self
            .call("put", |mut c| {
                let (k, v) = (k.clone(), v.clone());
                async move { c.put(k, v, None).await }
            })
            .await;
        if let Err(e) = put {
            report.problem = Some(format!("cannot write {key}: {e}"));
            return Ok(report);
        }
        let k = key.clone();
        match self
            .call("get", |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await
        {
            Ok(got)
                if got
                    .kvs()
                    .first()
                    .is_some_and(|kv| kv.value() == value.as_bytes()) =>
            {
                report.readable = true;
            }
            Ok(_) => report.problem = Some(format!("{key} did not read back as written")),
            Err(e) => report.problem = Some(format!("cannot read {key}: {e}")),
        }
        let k = key.clone();
        match self
            .call("delete", |mut c| {
                let k = k.clone();
                async move { c.delete(k, None).await }
            })
            .await
        {
            Ok(_) => report.writable = true,
            Err(e) => {
                report
                    .problem
                    .get_or_insert(format!("cannot delete {key}: {e}"));
            }
        }
        Ok(report)
    }

    fn value(&self) -> Result<String, WitnessError> {
        serde_json::to_string(&LeaderValue {
            node: self.node.get(),
            site: self.site.get(),
        })
        .map_err(|e| WitnessError::BadValue {
            key: self.key.clone(),
            detail: e.to_string(),
        })
    }

    fn parse_holder(&self, value: &[u8], create_revision: i64) -> Result<Holder, WitnessError> {
        let bad = |detail: String| WitnessError::BadValue {
            key: self.key.clone(),
            detail,
        };
        let v: LeaderValue = serde_json::from_slice(value).map_err(|e| {
            bad(format!(
                "{e} in `{}`",
                String::from_utf8_lossy(value)
                    .chars()
                    .take(80)
                    .collect::<String>()
            ))
        })?;
        if v.site != self.site.get() {
            return Err(bad(format!("it names site {}, not {}", v.site, self.site)));
        }
        let node =
            NodeId::try_from(v.node).map_err(|_| bad(format!("it names node {}", v.node)))?;
        Ok(Holder {
            node,
            token: token_of(create_revision, &self.key)?,
        })
    }

    async fn revoke_quietly(&self, lease: i64) {
        let _ = self
            .call("lease revoke", |mut c| async move {
                c.lease_revoke(lease).await
            })
            .await;
    }

    /// Runs one request under the request timeout and sorts its failure into
    /// unreachable (transport, timeout, no leader) or refused. A request that
    /// fails as unreachable is sent again while the timeout lasts: the balanced
    /// channel may have picked a member that is down (its connection refused at
    /// once) while others answer. Every request here may be repeated: reads,
    /// keep-alives and revokes are idempotent, a repeated grant leaves a spare
    /// lease that expires, and [`Witness::acquire`] recognises its own key.
    async fn call<T, F, Fut>(&self, op: &'static str, f: F) -> Result<T, WitnessError>
    where
        F: Fn(Client) -> Fut,
        Fut: std::future::Future<Output = Result<T, etcd_client::Error>>,
    {
        let timeout = self.config.request_timeout();
        let give_up = Instant::now() + timeout;
        let endpoints = self.config.endpoints.join(", ");
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            match bounded(left, &endpoints, op, f(self.client.clone())).await {
                Err(WitnessError::Unreachable { .. }) if Instant::now() + RETRY_PAUSE < give_up => {
                    tokio::time::sleep(RETRY_PAUSE).await;
                }
                Err(WitnessError::Unreachable { endpoints, reason }) => {
                    return Err(WitnessError::Unreachable {
                        endpoints,
                        reason: format!("{reason} (tried for {timeout:?})"),
                    });
                }
                other => return other,
            }
        }
    }

    fn unreachable(&self, reason: String) -> WitnessError {
        WitnessError::Unreachable {
            endpoints: self.config.endpoints.join(", "),
            reason,
        }
    }
}

/// The pause between attempts of one request.
const RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Per-member clients, to ask each member for its status.
#[derive(Clone)]
pub(crate) struct Probe {
    singles: Vec<(String, Client)>,
    timeout: Duration,
}

impl Probe {
    pub(crate) async fn members(&self) -> Vec<MemberStatus> {
        let timeout = self.timeout;
        let asks = self.singles.iter().map(|(endpoint, client)| {
            let mut client = client.clone();
            async move {
                match tokio::time::timeout(timeout, client.status()).await {
                    Ok(Ok(status)) => MemberStatus {
                        endpoint: endpoint.clone(),
                        up: true,
                        version: Some(status.version().to_string()),
                        leader: status
                            .header()
                            .is_some_and(|h| h.member_id() == status.leader()),
                        error: None,
                    },
                    Ok(Err(e)) => down(endpoint, e.to_string()),
                    Err(_) => down(endpoint, format!("no answer within {timeout:?}")),
                }
            }
        });
        futures::future::join_all(asks).await
    }
}

/// Options shared by the balanced client and the per-member ones; the user is added
/// only to the balanced one.
struct Options(ConnectOptions, Option<(String, String)>);

impl Options {
    fn with_user(self) -> ConnectOptions {
        match self.1 {
            Some((user, password)) => self.0.with_user(user, password),
            None => self.0,
        }
    }

    fn clone(&self) -> Options {
        Options(self.0.clone(), self.1.clone())
    }
}

fn connect_options(config: &WitnessConfig) -> Result<Options, WitnessError> {
    let timeout = config.request_timeout();
    let mut options = ConnectOptions::new()
        .with_timeout(timeout)
        .with_connect_timeout(timeout)
        // A half-open connection (a member cut off) is noticed within a TTL.
        .with_keep_alive(config.renew_every(), timeout)
        .with_keep_alive_while_idle(true)
        .with_require_leader(true);
    if let Some(tls) = &config.tls {
        let mut t =
            TlsOptions::new().ca_certificate(Certificate::from_pem(read_file(&tls.ca_file)?));
        if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
            t = t.identity(Identity::from_pem(read_file(cert)?, read_file(key)?));
        }
        options = options.with_tls(t);
    }
    let user = match (&config.user, config.load_password()?) {
        (Some(user), Some(password)) => Some((user.clone(), password)),
        _ => None,
    };
    Ok(Options(options, user))
}

async fn bounded<T>(
    timeout: Duration,
    endpoints: &str,
    op: &'static str,
    fut: impl std::future::Future<Output = Result<T, etcd_client::Error>>,
) -> Result<T, WitnessError> {
    let unreachable = |reason: String| WitnessError::Unreachable {
        endpoints: endpoints.to_string(),
        reason,
    };
    match tokio::time::timeout(timeout, fut).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(source)) if is_unreachable(&source) => Err(unreachable(format!("{op}: {source}"))),
        Ok(Err(source)) => Err(WitnessError::Etcd { op, source }),
        Err(_) => Err(unreachable(format!("{op}: no answer within {timeout:?}"))),
    }
}

fn is_unreachable(e: &etcd_client::Error) -> bool {
    use tonic_code::*;
    match e {
        etcd_client::Error::TransportError(_) | etcd_client::Error::IoError(_) => true,
        etcd_client::Error::GRpcStatus(status) => matches!(
            status.code() as i32,
            UNAVAILABLE | DEADLINE_EXCEEDED | CANCELLED | UNKNOWN
        ),
        _ => false,
    }
}

/// gRPC status codes (tonic's `Code` is not re-exported by etcd-client).
mod tonic_code {
    pub(super) const CANCELLED: i32 = 1;
    pub(super) const UNKNOWN: i32 = 2;
    pub(super) const DEADLINE_EXCEEDED: i32 = 4;
    pub(super) const UNAVAILABLE: i32 = 14;
}

fn is_lease_not_found(e: &etcd_client::Error) -> bool {
    match e {
        etcd_client::Error::GRpcStatus(status) => status.message().contains("lease not found"),
        etcd_client::Error::LeaseKeepAliveError(m) => m.contains("lease not found"),
        _ => false,
    }
}

fn token_of(revision: i64, key: &str) -> Result<Token, WitnessError> {
    u64::try_from(revision)
        .ok()
        .filter(|r| *r > 0)
        .map(Token)
        .ok_or_else(|| WitnessError::BadValue {
            key: key.to_string(),
            detail: format!("creation revision {revision}"),
        })
}

fn down(endpoint: &str, error: String) -> MemberStatus {
    MemberStatus {
        endpoint: endpoint.to_string(),
        up: false,
        version: None,
        leader: false,
        error: Some(error),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;
    use crate::TlsFiles;

    #[tokio::test]
    async fn a_missing_tls_file_is_named_before_anything_is_sent() {
        let mut config = WitnessConfig::new(vec!["https://etcd1.example:2379".into()]);
        config.tls = Some(TlsFiles {
            ca_file: "/nonexistent/tandem-ca.pem".into(),
            cert_file: None,
            key_file: None,
        });
        match Witness::connect(config, SiteId::ONE, NodeId::One).await {
            Err(WitnessError::File { path, .. }) => {
                assert_eq!(path, std::path::Path::new("/nonexistent/tandem-ca.pem"));
            }
            other => panic!("expected a file error, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn the_leader_value_holds_plain_numbers_and_is_checked_when_read() {
        let config = WitnessConfig::new(vec!["http://192.0.2.21:2379".into()]);
        let w = Witness::connect(config, SiteId::ONE, NodeId::Two)
            .await
            .unwrap();
        assert_eq!(w.value().unwrap(), r#"{"node":2,"site":1}"#);
        let holder = w.parse_holder(br#"{"node":1,"site":1}"#, 9).unwrap();
        assert_eq!(holder.node, NodeId::One);
        for (value, named) in [
            (&br#"{"node":3,"site":1}"#[..], "it names node 3"),
            (&br#"{"node":1,"site":300}"#[..], "it names site 300, not 1"),
        ] {
            let e = w.parse_holder(value, 9).unwrap_err();
            assert!(
                matches!(&e, WitnessError::BadValue { detail, .. } if detail == named),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn connecting_is_lazy_without_a_user() {
        // TEST-NET-1 from outside the lab: nothing answers, and nothing needs to.
        let config = WitnessConfig::new(vec!["http://192.0.2.21:2379".into()]);
        let w = Witness::connect(config, SiteId::ONE, NodeId::One)
            .await
            .unwrap();
        assert_eq!(w.key(), "/tandem/1/leader");
        assert_eq!(w.held(), None);
    }
}
