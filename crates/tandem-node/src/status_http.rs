//! The agent's status page over HTTP: the seed's Administration Center banner
//! ("Failover deployment. Standby server.") with the replication table and the
//! alarms below it, `/status.json` for tools and `/metrics` for Prometheus.
//!
//! Three pure renderers turn a [`StatusSnapshot`] into text
//! ([`render_status_page`], [`render_status_json`], [`render_metrics`]); a server
//! on tokio listeners ([`serve_status`], [`StatusServer`]) answers `GET` and
//! `HEAD` for `/`, `/status`, `/status.json` and `/metrics` with whatever
//! snapshot a [`watch`] channel holds at the time of the request.
//!
//! HTTP is hyper's (HTTP/1.x), a well-kept implementation, not one of our own:
//! it parses the request heads, refuses malformed ones (`400`) and those over
//! [`MAX_HEAD_BYTES`] (`431`), and disconnects a client that has not sent its
//! whole request head within [`DEFAULT_HEAD_TIMEOUT`]. Around it the server
//! keeps the connections within caps, in all ([`DEFAULT_MAX_CONNECTIONS`]) and
//! per client ([`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`]); a new connection that
//! meets a cap takes the place of the oldest one still sending its request
//! head, so slow clients (slowloris) cannot keep an operator out. One request
//! per connection (`Connection: close`), no request bodies, no TLS. The page
//! carries no script and loads nothing from elsewhere; every value is
//! HTML-escaped. `status_listen.rs` binds the listeners: the node address,
//! and the shared address, which answers while the node holds it.

use std::collections::{HashMap, VecDeque};
use std::convert::Infallible;
use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use futures::StreamExt as _;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use serde::Serialize;
use tandem_core::format_utc;
use tandem_role::Role;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::{self, AbortHandle, JoinSet};

use crate::{ReplicationSide, StatusSnapshot};

/// The port the status page listens on when the node config names none: next to
/// the peer link (7451) and the replication service (7452).
pub const DEFAULT_STATUS_PORT: u16 = 7450;

/// The most bytes of request head (request line and headers) the server reads;
/// a longer head is answered with `431 Request Header Fields Too Large`.
pub(crate) const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client may take, from the moment it connects, to send its whole
/// request head by default; a slower one is disconnected without an answer. A
/// browser or a scraper sends its head at once; a client that trickles it
/// (slowloris) holds a connection no longer than this.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(5);

/// How many connections the status page keeps open at once by default.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1024;

/// How many of them one client (an IPv4 address or an IPv6 /64) may hold by
/// default: more than a browser or a scraper opens, few enough that one
/// address cannot take the page's connections from others.
pub const DEFAULT_MAX_CONNECTIONS_PER_CLIENT: usize = 64;

/// How long answering may take once the request head is in (writing the
/// response to a client that reads slowly); the connection is closed then.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);

/// How long to pause accepting after the process ran out of file descriptors or
/// memory, so that a full table does not turn into a busy loop.
const ACCEPT_BACKOFF: Duration = Duration::from_millis(100);

const HTML: &str = "text/html; charset=utf-8";
const JSON: &str = "application/json";
const METRICS: &str = "text/plain; version=0.0.4; charset=utf-8";
const TEXT: &str = "text/plain; charset=utf-8";

// ---------------------------------------------------------------------------
// The status page

/// Renders the status page (HTML). Its heading, the first text a browser shows,
/// is exactly [`StatusSnapshot::banner`]; below it the node's role, site,
/// epoch, standby hold, the shared address, the peer, the seed's replication
/// table (or "Replication: not configured") and the alarms (or "No alarms").
///
/// The page has no script and no external resources, refreshes itself every
/// five seconds, and HTML-escapes every value taken from the snapshot.
pub(crate) fn render_status_page(snapshot: &StatusSnapshot) -> String {
    let state = &snapshot.state;
    let banner = snapshot.banner();
    let mut page = String::with_capacity(4096);
    // Writing into a String cannot fail; the results are ignored for that reason.
    let _ = write!(
        page,
        "<!DOCTYPE html>\n\
         <html lang=\"en\">\n\
         <head>\n\
         <meta charset=\"utf-8\">\n\
         <meta http-equiv=\"refresh\" content=\"5\">\n\
         <title>{} ({})</title>\n\
         <style>{STYLE}</style>\n\
         </head>\n\
         <body>\n\
         <h1>{}</h1>\n",
        escape(banner),
        escape(&snapshot.hostname),
        escape(banner),
    );

    page.push_str("<table class=\"facts\">\n");
    let role = match state.role {
        Role::Active => "active",
        Role::Standby => "standby",
    };
    fact(&mut page, "Role", role);
    fact(&mut page, "Deployment", &state.deployment.to_string());
    fact(
        &mut page,
        "Node",
        &format!(
            "{} ({}, {})",
            state.node, snapshot.hostname, snapshot.node_address
        ),
    );
    fact(&mut page, "Site", &state.site.to_string());
    fact(&mut page, "Epoch", &state.epoch.to_string());
    fact(
        &mut page,
        "Standby hold",
        if state.standby_hold {
            "yes (set by the operator)"
        } else {
            "no"
        },
    );
    let held = if snapshot.holds_shared_address {
        "held by this node"
    } else {
        "not held by this node"
    };
    fact(
        &mut page,
        "Shared address",
        &format!("{}, {held}", snapshot.shared_address),
    );
    let peer = &snapshot.peer;
    let connected = if peer.connected {
        "connected"
    } else {
        "not connected"
    };
    fact(&mut page, "Peer", &format!("{}, {connected}", peer.address));
    fact(
        &mut page,
        "Peer's last claim",
        &peer
            .claim_epoch
            .map_or_else(|| "none".to_owned(), |e| format!("epoch {e}")),
    );
    fact(
        &mut page,
        "Clock offset",
        &peer
            .clock_offset_ms
            .map_or_else(|| "not measured".to_owned(), |o| format!("{o:+.2} ms")),
    );
    if let Some(witness) = &snapshot.witness {
        fact(&mut page, "Witness", &witness.line());
    }
    fact(&mut page, "Uptime", &format_uptime(snapshot.uptime_seconds));
    fact(&mut page, "Taken", &format_utc(snapshot.taken_ms));
    page.push_str("</table>\n");

    match &snapshot.replication {
        None => page.push_str("<h2>Replication: not configured</h2>\n"),
        Some(replication) => {
            page.push_str("<h2>Replication</h2>\n<table class=\"replication\">\n");
            page.push_str("<tr><th>Local Server</th><th>Remote Server</th></tr>\n");
            let (local, remote) = (&replication.local, &replication.remote);
            type Cell = fn(&ReplicationSide) -> String;
            let rows: [(&str, Cell); 5] = [
                ("Replication Type", |s| s.replication_type.clone()),
                ("Site", |s| s.site.to_string()),
                ("Node", |s| s.node.to_string()),
                ("State", |s| s.state.clone()),
                ("Status", |s| s.status.clone()),
            ];
            for (label, cell) in rows {
                let _ = writeln!(
                    page,
                    "<tr><td>{label}: {}</td><td>{label}: {}</td></tr>",
                    escape(&cell(local)),
                    escape(&cell(remote)),
                );
            }
            page.push_str("</table>\n");
            let lag = replication
                .lag_ms
                .map_or_else(|| "unknown".to_owned(), |ms| format!("{ms} ms"));
            let _ = writeln!(
                page,
                "<p>Backlog: {} change{}. Lag: {}.</p>",
                replication.backlog,
                if replication.backlog == 1 { "" } else { "s" },
                escape(&lag),
            );
            if let Some(resync) = &replication.resync {
                let _ = writeln!(page, "<p>{}</p>", escape(resync));
            }
            for (label, detail) in [
                ("This node", &replication.local_detail),
                ("Remote", &replication.remote_detail),
            ] {
                if let Some(detail) = detail {
                    let _ = writeln!(page, "<p class=\"detail\">{label}: {}</p>", escape(detail));
                }
            }
        }
    }

    if snapshot.alarms.is_empty() {
        page.push_str("<h2>No alarms</h2>\n");
    } else {
        let _ = writeln!(page, "<h2>Alarms ({})</h2>\n<ul>", snapshot.alarms.len());
        for alarm in &snapshot.alarms {
            let _ = writeln!(
                page,
                "<li>{}: {}</li>",
                escape(&format_utc(alarm.raised_ms)),
                escape(&alarm.message),
            );
        }
        page.push_str("</ul>\n");
    }
    if !snapshot.alarm_history.is_empty() {
        let _ = writeln!(
            page,
            "<h2>Cleared alarms ({})</h2>\n<ul class=\"history\">",
            snapshot.alarm_history.len()
        );
        for alarm in &snapshot.alarm_history {
            let cleared = alarm
                .cleared_ms
                .map_or_else(String::new, |ms| format!(", cleared {}", format_utc(ms)));
            let _ = writeln!(
                page,
                "<li>{}{}: {}</li>",
                escape(&format_utc(alarm.raised_ms)),
                escape(&cleared),
                escape(&alarm.message),
            );
        }
        page.push_str("</ul>\n");
    }
    page.push_str(
        "<p class=\"links\">Also as <a href=\"/status.json\">JSON</a> \
         and <a href=\"/metrics\">metrics</a>.</p>\n</body>\n</html>\n",
    );
    page
}

const STYLE: &str = "body{font-family:sans-serif;margin:2em;color:#111;background:#fff}\
h1{font-size:1.6em;margin:0 0 1em}\
h2{font-size:1.2em;margin:1.5em 0 .5em}\
table{border-collapse:collapse}\
th,td{text-align:left;padding:.25em 1em .25em 0;vertical-align:top}\
.replication td,.replication th{border:1px solid #999;padding:.25em .75em}\
.links{margin-top:2em;color:#555}\
.history{color:#555}";

fn fact(page: &mut String, label: &str, value: &str) {
    let _ = writeln!(
        page,
        "<tr><th>{}</th><td>{}</td></tr>",
        escape(label),
        escape(value)
    );
}

/// Escapes text for HTML element content and quoted attribute values.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// `2d 3h 4m 5s`, leaving out leading zero units.
fn format_uptime(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86_400,
        seconds / 3_600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    if d > 0 {
        format!("{d}d {h}h {m}m {s}s")
    } else if h > 0 {
        format!("{h}h {m}m {s}s")
    } else if m > 0 {
        format!("{m}m {s}s")
    } else {
        format!("{s}s")
    }
}

// ---------------------------------------------------------------------------
// status.json

/// What `/status.json` holds: the snapshot's fields with the banner added.
#[derive(Serialize)]
struct StatusDocument<'a> {
    banner: &'static str,
    #[serde(flatten)]
    snapshot: &'a StatusSnapshot,
}

/// Renders `/status.json`: the [`StatusSnapshot`] as JSON, with one more field,
/// `"banner"`, the page's first line. The document deserializes as a
/// [`StatusSnapshot`] again (the extra field is ignored).
pub(crate) fn render_status_json(snapshot: &StatusSnapshot) -> Result<String, serde_json::Error> {
    let mut json = serde_json::to_string_pretty(&StatusDocument {
        banner: snapshot.banner(),
        snapshot,
    })?;
    json.push('\n');
    Ok(json)
}

// ---------------------------------------------------------------------------
// /metrics

/// Renders `/metrics` in the Prometheus text exposition format (version 0.0.4):
/// one `# HELP` and one `# TYPE` line per family, every sample labelled with the
/// node id and the site id (`node="1",site="1"`).
///
/// Families: `tandem_info` (hostname and addresses as labels, value 1),
/// `tandem_deployment{deployment=...}`, `tandem_role{role=...}`,
/// `tandem_active`, `tandem_epoch`, `tandem_standby_hold`,
/// `tandem_holds_shared_address`, `tandem_peer_connected`,
/// `tandem_peer_claim_epoch` and `tandem_peer_clock_offset_seconds` (when
/// known), `tandem_replication_configured`, `tandem_replication_backlog` and
/// `tandem_replication_lag_seconds` (when known), `tandem_alarms`,
/// `tandem_uptime_seconds`. All are gauges.
pub(crate) fn render_metrics(snapshot: &StatusSnapshot) -> String {
    let state = &snapshot.state;
    let base = format!("node=\"{}\",site=\"{}\"", state.node, state.site);
    let mut out = String::with_capacity(2048);
    let flag = |b: bool| if b { "1" } else { "0" }.to_owned();

    family(
        &mut out,
        "tandem_info",
        "The node's hostname, node address and shared address; always 1.",
    );
    let _ = writeln!(
        out,
        "tandem_info{{{base},hostname=\"{}\",node_address=\"{}\",shared_address=\"{}\",peer_address=\"{}\"}} 1",
        label_value(&snapshot.hostname),
        label_value(&snapshot.node_address),
        label_value(&snapshot.shared_address),
        label_value(&snapshot.peer.address),
    );

    family(
        &mut out,
        "tandem_deployment",
        "The deployment mode: 1 for the node's mode, 0 for the other.",
    );
    for mode in [
        tandem_role::DeploymentMode::Single,
        tandem_role::DeploymentMode::Failover,
    ] {
        let _ = writeln!(
            out,
            "tandem_deployment{{{base},deployment=\"{mode}\"}} {}",
            flag(state.deployment == mode)
        );
    }

    family(
        &mut out,
        "tandem_role",
        "The node's role: 1 for the current role, 0 for the other.",
    );
    for role in [Role::Active, Role::Standby] {
        let _ = writeln!(
            out,
            "tandem_role{{{base},role=\"{role}\"}} {}",
            flag(state.role == role)
        );
    }

    let mut sample = |name: &str, help: &str, value: String| {
        family(&mut out, name, help);
        let _ = writeln!(out, "{name}{{{base}}} {value}");
    };
    sample(
        "tandem_active",
        "Whether this node is the active server (1) or not (0).",
        flag(state.role == Role::Active),
    );
    sample(
        "tandem_epoch",
        "The highest claim epoch this node has used or seen.",
        state.epoch.to_string(),
    );
    sample(
        "tandem_standby_hold",
        "Whether the operator holds this node in standby (1) or not (0).",
        flag(state.standby_hold),
    );
    sample(
        "tandem_holds_shared_address",
        "Whether this node holds the shared address right now (1) or not (0).",
        flag(snapshot.holds_shared_address),
    );
    let peer = &snapshot.peer;
    sample(
        "tandem_peer_connected",
        "Whether the peer link is up (1) or not (0).",
        flag(peer.connected),
    );
    if let Some(epoch) = peer.claim_epoch {
        sample(
            "tandem_peer_claim_epoch",
            "The epoch of the peer's latest claim.",
            epoch.to_string(),
        );
    }
    if let Some(offset_ms) = peer.clock_offset_ms {
        sample(
            "tandem_peer_clock_offset_seconds",
            "The peer's clock minus this node's clock, in seconds.",
            // Rounded to microseconds, what the peer link measures, so that the
            // value prints as 0.00042 rather than 0.00041999999999999996.
            float((offset_ms * 1000.0).round() / 1e6),
        );
    }
    if let Some(witness) = &snapshot.witness {
        sample(
            "tandem_witness_members_up",
            "Witness (etcd) members that answered the last status round.",
            witness.members_up.to_string(),
        );
        sample(
            "tandem_witness_members",
            "Witness (etcd) members configured.",
            witness.members.to_string(),
        );
        sample(
            "tandem_witness_holding",
            "Whether this node holds the site's leader key (1) or not (0).",
            flag(witness.holding),
        );
        if let Some(token) = witness.token {
            sample(
                "tandem_witness_token",
                "The fencing token of the leader key's holder.",
                token.to_string(),
            );
        }
        if let (true, Some(ms)) = (witness.holding, witness.valid_for_ms) {
            sample(
                "tandem_witness_lease_valid_seconds",
                "Seconds left before this node must step down unless it renews its lease.",
                format!("{}.{:03}", ms / 1000, ms % 1000),
            );
        }
    }
    sample(
        "tandem_replication_configured",
        "Whether database replication reports a status (1) or not (0).",
        flag(snapshot.replication.is_some()),
    );
    if let Some(replication) = &snapshot.replication {
        sample(
            "tandem_replication_backlog",
            "Changes not yet acknowledged by the standby.",
            replication.backlog.to_string(),
        );
        if let Some(lag_ms) = replication.lag_ms {
            sample(
                "tandem_replication_lag_seconds",
                "Replication lag in seconds.",
                format!("{}.{:03}", lag_ms / 1000, lag_ms % 1000),
            );
        }
    }
    sample(
        "tandem_alarms",
        "Alarms raised and not cleared.",
        snapshot.alarms.len().to_string(),
    );
    sample(
        "tandem_uptime_seconds",
        "Seconds since the agent started.",
        snapshot.uptime_seconds.to_string(),
    );
    out
}

fn family(out: &mut String, name: &str, help: &str) {
    // Help texts are constants without backslashes or newlines, which HELP
    // lines would have to escape.
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} gauge");
}

/// Escapes a label value: backslash, double quote and line feed.
fn label_value(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// A sample value in the exposition format's spelling of floats.
fn float(value: f64) -> String {
    if value.is_nan() {
        "NaN".to_owned()
    } else if value == f64::INFINITY {
        "+Inf".to_owned()
    } else if value == f64::NEG_INFINITY {
        "-Inf".to_owned()
    } else {
        value.to_string()
    }
}

// ---------------------------------------------------------------------------
// The server

/// The status page's HTTP server, with its settings. [`serve_status`] runs one
/// with the defaults on one listener; [`StatusServer::serve_all`] serves several
/// (the node address and the shared address) under one set of limits.
///
/// HTTP itself is hyper's (HTTP/1.x only): request heads are parsed, limited to
/// 8 KiB and timed out there. This type adds what keeps slow and
/// numerous clients from starving the others: caps on connections in all and
/// per client, where a new connection that meets a cap takes the place of the
/// oldest connection that has still not sent its request head.
#[derive(Debug, Clone)]
pub struct StatusServer {
    status: watch::Receiver<StatusSnapshot>,
    head_timeout: Duration,
    limits: Limits,
}

/// The connection caps of a server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Limits {
    total: usize,
    per_client: usize,
}

impl StatusServer {
    /// A server for the snapshots `status` receives; every request renders the
    /// snapshot current at that moment.
    pub fn new(status: watch::Receiver<StatusSnapshot>) -> StatusServer {
        StatusServer {
            status,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
            limits: Limits {
                total: DEFAULT_MAX_CONNECTIONS,
                per_client: DEFAULT_MAX_CONNECTIONS_PER_CLIENT,
            },
        }
    }

    /// How long a client may take, from the moment it connects, to send its
    /// whole request head (default [`DEFAULT_HEAD_TIMEOUT`]); a slower client's
    /// connection is closed without an answer.
    pub fn with_head_timeout(mut self, timeout: Duration) -> StatusServer {
        self.head_timeout = timeout;
        self
    }

    /// How many connections are open at once, in all and from one client (an
    /// IPv4 address or an IPv6 /64); defaults [`DEFAULT_MAX_CONNECTIONS`] and
    /// [`DEFAULT_MAX_CONNECTIONS_PER_CLIENT`], each at least 1. The total is
    /// lowered further to half the process's soft limit on open files when
    /// serving starts, so that the page cannot take the descriptors the rest of
    /// the agent needs.
    pub fn with_connection_limits(mut self, total: usize, per_client: usize) -> StatusServer {
        self.limits = Limits {
            total: total.max(1),
            per_client: per_client.max(1),
        };
        self
    }

    /// Serves connections from `listener` until `shutdown` completes; see
    /// [`StatusServer::serve_all`].
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        self.serve_all(vec![listener], shutdown).await
    }

    /// Serves connections from every listener in `listeners` until `shutdown`
    /// completes, each connection in a task of its own, one request per
    /// connection; connections still open then are dropped. Returns an error
    /// only when a listener itself fails; running out of file descriptors or
    /// memory pauses accepting for a moment instead. The future is `Send` when
    /// `shutdown` is, so it can be spawned.
    pub async fn serve_all(
        self,
        listeners: Vec<TcpListener>,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let limits = Limits {
            total: self.limits.total.min(descriptor_budget()),
            per_client: self.limits.per_client,
        };
        if limits.total < self.limits.total {
            tracing::warn!(
                connections = limits.total,
                "the limit on open files leaves the status page fewer connections; \
                 raise RLIMIT_NOFILE"
            );
        }
        let mut http = http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(self.head_timeout)
            .keep_alive(false)
            .max_buf_size(MAX_HEAD_BYTES)
            .max_header_size(MAX_HEAD_BYTES);
        let lifetime = self.head_timeout.saturating_add(RESPONSE_TIMEOUT);
        let status = self.status;

        for listener in &listeners {
            if let Ok(local) = listener.local_addr() {
                tracing::info!(%local, "status page listening");
            }
        }
        let mut incoming = futures::stream::select_all(listeners.into_iter().map(|listener| {
            Box::pin(futures::stream::unfold(listener, |listener| async move {
                let accepted = listener.accept().await;
                Some((accepted, listener))
            }))
        }));
        let mut registry: Registry<AbortHandle> = Registry::new(limits);
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            let accepted = tokio::select! {
                () = &mut shutdown => break,
                Some(done) = connections.join_next_with_id() => {
                    let id = match done {
                        Ok((id, ())) => id,
                        Err(e) => e.id(),
                    };
                    registry.remove(id);
                    continue;
                }
                accepted = incoming.next() => accepted,
            };
            let (stream, peer) = match accepted {
                Some(Ok(accepted)) => accepted,
                // Listener streams never end; with none at all there is nothing
                // to serve but the shutdown.
                None => {
                    shutdown.await;
                    break;
                }
                Some(Err(e)) if is_transient(&e) => {
                    tracing::debug!(error = %e, "connection failed before it was accepted");
                    continue;
                }
                Some(Err(e)) if is_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot accept connections; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                    continue;
                }
                Some(Err(e)) => return Err(e),
            };
            let client = client_of(peer.ip());
            match registry.admit(client) {
                Admission::Open => {}
                Admission::Evict(old) => {
                    tracing::debug!(%peer, "connection limit reached; closing the oldest connection still sending its request");
                    old.abort();
                }
                Admission::Refuse => {
                    tracing::debug!(%peer, "connection limit reached; refusing a connection");
                    drop(stream);
                    continue;
                }
            }
            let head_done = Arc::new(AtomicBool::new(false));
            let service = {
                let status = status.clone();
                let head_done = Arc::clone(&head_done);
                service_fn(move |request: Request<Incoming>| {
                    head_done.store(true, Ordering::Relaxed);
                    let reply = match malformed(&request) {
                        Some(reply) => reply,
                        None => answer(request.method(), request.uri().path(), &status),
                    };
                    tracing::debug!(%peer, method = %request.method(), path = request.uri().path(),
                        status = reply.status().as_u16(), "status page request");
                    std::future::ready(Ok::<_, Infallible>(reply))
                })
            };
            let connection = http.serve_connection(TokioIo::new(stream), service);
            let task = connections.spawn(async move {
                match tokio::time::timeout(lifetime, connection).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => {
                        tracing::debug!(%peer, error = %e, "status page connection failed")
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "status page connection took too long; closed")
                    }
                }
            });
            registry.insert(task.id(), client, head_done, task);
            // Let the new connection read the head it may already have sent
            // before accepting more: in a burst of connections from one client,
            // a normal request is then past its head before newer connections
            // could make it the oldest one still waiting, and be evicted.
            tokio::task::yield_now().await;
        }
        tracing::info!(open = connections.len(), "status page stopped");
        connections.shutdown().await;
        Ok(())
    }
}

/// Serves the status page on `listener` until `shutdown` completes: `GET` and
/// `HEAD` for `/` and `/status` (the HTML page), `/status.json` and `/metrics`;
/// `404` for other paths, `405` for other methods, `400` for malformed requests
/// and `431` for a request head over 8 KiB (the last two from
/// hyper); a client that has not sent its request head within
/// [`DEFAULT_HEAD_TIMEOUT`] is disconnected. Each request shows the snapshot
/// `status` holds at that moment. The connection caps are those of
/// [`StatusServer::new`].
///
/// ```no_run
/// # async fn run(snapshot: tandem_node::StatusSnapshot) -> std::io::Result<()> {
/// let (status, receiver) = tokio::sync::watch::channel(snapshot);
/// let listener = tokio::net::TcpListener::bind(("192.0.2.11", tandem_node::DEFAULT_STATUS_PORT)).await?;
/// let shutdown = async { let _ = tokio::signal::ctrl_c().await; };
/// tokio::spawn(tandem_node::serve_status(listener, receiver, shutdown));
/// // ... the agent calls `status.send_replace(new_snapshot)` after every event.
/// # drop(status); Ok(())
/// # }
/// ```
pub async fn serve_status(
    listener: TcpListener,
    status: watch::Receiver<StatusSnapshot>,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    StatusServer::new(status).serve(listener, shutdown).await
}

/// A `400` for what hyper lets through but RFC 9112 asks a server to refuse:
/// a target that is not a path (the authority form belongs to `CONNECT`), and
/// an HTTP/1.1 request without exactly one `Host` header (HTTP/1.0: at most
/// one).
fn malformed<B>(request: &Request<B>) -> Option<Response<Full<Bytes>>> {
    if !request.uri().path().starts_with('/') {
        return Some(refusal(
            StatusCode::BAD_REQUEST,
            "the request target must be a path starting with `/`",
        ));
    }
    let one_host = match request.headers().get_all(header::HOST).iter().count() {
        0 => request.version() < hyper::Version::HTTP_11,
        1 => true,
        _ => false,
    };
    if !one_host {
        return Some(refusal(
            StatusCode::BAD_REQUEST,
            "an HTTP/1.1 request needs exactly one Host header",
        ));
    }
    None
}

/// The answer to one request whose head hyper has parsed.
fn answer(
    method: &Method,
    path: &str,
    status: &watch::Receiver<StatusSnapshot>,
) -> Response<Full<Bytes>> {
    enum Page {
        Html,
        Json,
        Metrics,
    }
    let page = match path {
        "/" | "/status" => Page::Html,
        "/status.json" => Page::Json,
        "/metrics" => Page::Metrics,
        _ => {
            return refusal(
                StatusCode::NOT_FOUND,
                "no such page; try /, /status, /status.json or /metrics",
            );
        }
    };
    if method != Method::GET && method != Method::HEAD {
        let mut reply = refusal(
            StatusCode::METHOD_NOT_ALLOWED,
            "the status page answers only GET and HEAD",
        );
        reply
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        return reply;
    }
    // Clone so that rendering does not hold the channel's lock.
    let snapshot = status.borrow().clone();
    match page {
        Page::Html => reply(StatusCode::OK, HTML, render_status_page(&snapshot)),
        Page::Metrics => reply(StatusCode::OK, METRICS, render_metrics(&snapshot)),
        Page::Json => match render_status_json(&snapshot) {
            Ok(json) => reply(StatusCode::OK, JSON, json),
            Err(e) => {
                tracing::warn!(error = %e, "cannot render status.json");
                refusal(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot render the status as JSON",
                )
            }
        },
    }
}

/// A plain-text refusal: `404 Not Found: <message>`.
fn refusal(status: StatusCode, message: &str) -> Response<Full<Bytes>> {
    let reason = status.canonical_reason().unwrap_or("Error");
    reply(
        status,
        TEXT,
        format!("{} {reason}: {message}\n", status.as_u16()),
    )
}

/// A reply with the headers every reply carries (hyper adds `Date` and
/// `Content-Length`, and leaves out the body of an answer to `HEAD`).
fn reply(status: StatusCode, content_type: &'static str, body: String) -> Response<Full<Bytes>> {
    let mut reply = Response::new(Full::new(Bytes::from(body)));
    *reply.status_mut() = status;
    let headers = reply.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, content_type),
        (header::CACHE_CONTROL, "no-store"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'",
        ),
        (header::CONNECTION, "close"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    reply
}

/// Who a connection counts against: its IPv4 address (an IPv4-mapped IPv6
/// address counts as the IPv4 one), or the /64 of its IPv6 address, the least
/// that one IPv6 site is given.
fn client_of(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(Ipv6Addr::from(bits))
        }
    }
}

/// Half the soft limit on open files: the most connections the status page
/// takes, leaving the rest for the agent's other work. Unlimited when the limit
/// cannot be read.
fn descriptor_budget() -> usize {
    match nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE) {
        Ok((soft, _)) => usize::try_from(soft / 2).unwrap_or(usize::MAX).max(1),
        Err(_) => usize::MAX,
    }
}

/// What to do with a new connection.
#[derive(Debug, PartialEq, Eq)]
enum Admission<H> {
    /// Serve it.
    Open,
    /// Serve it in place of this connection, which has been taken out of the
    /// registry and is to be closed.
    Evict(H),
    /// Close it: the caps are reached and every open connection has sent its
    /// request (each is being answered, and will close soon).
    Refuse,
}

/// The open connections, oldest first, with how many each client has: the caps
/// and whom to evict. `H` is what closes a connection (the task's abort
/// handle).
#[derive(Debug)]
struct Registry<H> {
    limits: Limits,
    open: VecDeque<Open<H>>,
    per_client: HashMap<IpAddr, usize>,
}

#[derive(Debug)]
struct Open<H> {
    id: task::Id,
    client: IpAddr,
    /// Set once the connection's request head has arrived.
    head_done: Arc<AtomicBool>,
    handle: H,
}

impl<H> Registry<H> {
    fn new(limits: Limits) -> Registry<H> {
        Registry {
            limits,
            open: VecDeque::new(),
            per_client: HashMap::new(),
        }
    }

    /// Decides about a new connection from `client`. At a cap, the oldest
    /// connection that still has not sent its request head (of the same client
    /// when it is the client's cap) makes room: a slow or silent client never
    /// keeps a newer one out, and an answered connection is never cut short.
    fn admit(&mut self, client: IpAddr) -> Admission<H> {
        let theirs = self.per_client.get(&client).copied().unwrap_or(0);
        let victim = if theirs >= self.limits.per_client {
            self.oldest_waiting(|open| open.client == client)
        } else if self.open.len() >= self.limits.total {
            self.oldest_waiting(|_| true)
        } else {
            return Admission::Open;
        };
        match victim.and_then(|i| self.take(i)) {
            Some(open) => Admission::Evict(open.handle),
            None => Admission::Refuse,
        }
    }

    fn oldest_waiting(&self, pick: impl Fn(&Open<H>) -> bool) -> Option<usize> {
        self.open
            .iter()
            .position(|open| pick(open) && !open.head_done.load(Ordering::Relaxed))
    }

    /// Records a connection that [`Registry::admit`] let in.
    fn insert(&mut self, id: task::Id, client: IpAddr, head_done: Arc<AtomicBool>, handle: H) {
        *self.per_client.entry(client).or_insert(0) += 1;
        self.open.push_back(Open {
            id,
            client,
            head_done,
            handle,
        });
    }

    /// Forgets a connection that has ended; nothing if it was evicted before.
    fn remove(&mut self, id: task::Id) {
        if let Some(i) = self.open.iter().position(|open| open.id == id) {
            self.take(i);
        }
    }

    fn take(&mut self, i: usize) -> Option<Open<H>> {
        let open = self.open.remove(i)?;
        if let Some(count) = self.per_client.get_mut(&open.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_client.remove(&open.client);
            }
        }
        Some(open)
    }
}

/// Errors of one connection that never reached the server: keep accepting.
fn is_transient(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

/// Errors that end when connections close: pause, then keep accepting.
fn is_exhaustion(e: &io::Error) -> bool {
    use nix::errno::Errno;
    e.raw_os_error().is_some_and(|code| {
        [Errno::EMFILE, Errno::ENFILE, Errno::ENOBUFS, Errno::ENOMEM]
            .iter()
            .any(|&errno| errno as i32 == code)
    }) || e.kind() == io::ErrorKind::OutOfMemory
}

#[cfg(test)]
mod props;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::alarms::AlarmKind;
    use crate::{Alarm, PeerStatus, ReplicationStatus};
    use tandem_role::{DeploymentMode, Epoch, NodeId, NodeState, SiteId};

    /// Node 1, active, in the seed's replication state, with one alarm.
    fn active_node() -> StatusSnapshot {
        let mut state = NodeState::first_boot(NodeId::One, SiteId::ONE);
        state.deployment = DeploymentMode::Failover;
        state.role = Role::Active;
        state.epoch = Epoch::new(7);
        StatusSnapshot {
            state,
            hostname: "meetings1.example.com".into(),
            node_address: "192.0.2.11/24".into(),
            shared_address: "192.0.2.10/24".into(),
            holds_shared_address: true,
            peer: PeerStatus {
                datagrams: false,
                address: "192.0.2.12".into(),
                connected: true,
                claim_epoch: Some(6),
                clock_offset_ms: Some(-0.42),
            },
            replication: Some(ReplicationStatus {
                local: ReplicationSide {
                    replication_type: "Local".into(),
                    site: 1,
                    node: 1,
                    state: "Active".into(),
                    status: "Local".into(),
                },
                remote: ReplicationSide {
                    replication_type: "Intra-site".into(),
                    site: 1,
                    node: 2,
                    state: "Active".into(),
                    status: "Connected".into(),
                },
                backlog: 3,
                lag_ms: Some(1250),
                resync: None,
                local_detail: None,
                remote_detail: None,
            }),
            alarms: vec![Alarm::new(
                AlarmKind::Replication,
                "replication backlog past 1000 changes",
                1_714_564_800_000,
            )],
            alarm_history: Vec::new(),
            uptime_seconds: 3_725,
            taken_ms: 1_714_568_400_000,
            witness: None,
        }
    }

    /// Node 2 on its first boot into a failover deployment: standby, held,
    /// nothing known about the peer, no replication, no alarms.
    fn standby_node() -> StatusSnapshot {
        let mut state = NodeState::first_boot(NodeId::Two, SiteId::ONE);
        state.deployment = DeploymentMode::Failover;
        state.standby_hold = true;
        StatusSnapshot {
            state,
            hostname: "meetings2.example.com".into(),
            node_address: "192.0.2.12/24".into(),
            shared_address: "192.0.2.10/24".into(),
            holds_shared_address: false,
            peer: PeerStatus {
                datagrams: false,
                address: "192.0.2.11".into(),
                connected: false,
                claim_epoch: None,
                clock_offset_ms: None,
            },
            replication: None,
            alarms: Vec::new(),
            alarm_history: Vec::new(),
            uptime_seconds: 42,
            taken_ms: 0,
            witness: None,
        }
    }

    /// Compares rendered text with the expected text line by line, naming the
    /// first line that differs.
    #[track_caller]
    fn check(actual: &str, expected: &str) {
        if actual == expected {
            return;
        }
        let mismatch = actual
            .lines()
            .zip(expected.lines())
            .enumerate()
            .find(|(_, (a, e))| a != e);
        match mismatch {
            Some((i, (a, e))) => panic!(
                "line {} differs\n  actual: {a}\nexpected: {e}\n\nwhole actual text:\n{actual}",
                i + 1
            ),
            None => panic!(
                "texts differ in length or line ends\n\nwhole actual text:\n{actual:?}\n\nexpected:\n{expected:?}"
            ),
        }
    }

    /// The part of a page from `<body>` on.
    fn body(page: &str) -> &str {
        &page[page.find("<body>").unwrap()..]
    }

    #[test]
    fn a_site_with_a_witness_shows_it_on_the_page_and_in_the_metrics() {
        let mut snapshot = active_node();
        snapshot.witness = Some(crate::WitnessStatus {
            members_up: 2,
            members: 3,
            holder: Some(NodeId::One),
            token: Some(57),
            holding: true,
            valid_for_ms: Some(1840),
            last_error: None,
        });
        let page = render_status_page(&snapshot);
        assert!(
            page.contains(
                "<tr><th>Witness</th><td>2 of 3 members reached; node 1 holds the leader key \
                 (token 57), 1840 ms left before this node must step down</td></tr>"
            ),
            "{page}"
        );
        let metrics = render_metrics(&snapshot);
        for (name, value) in [
            ("tandem_witness_members_up", "2"),
            ("tandem_witness_members", "3"),
            ("tandem_witness_holding", "1"),
            ("tandem_witness_token", "57"),
            ("tandem_witness_lease_valid_seconds", "1.840"),
        ] {
            let sample = format!("{name}{{node=\"1\",site=\"1\"}} {value}");
            assert!(
                metrics.lines().any(|l| l == sample),
                "{sample} in\n{metrics}"
            );
        }
        // Without a witness: no row, no metric.
        let plain = render_status_page(&active_node());
        assert!(!plain.contains("Witness"), "{plain}");
        assert!(!render_metrics(&active_node()).contains("tandem_witness"));
    }

    #[test]
    fn page_of_an_active_node_shows_banner_facts_seed_table_and_alarms() {
        check(
            &render_status_page(&active_node()),
            r#"<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="5">
<title>Failover deployment. Active server. (meetings1.example.com)</title>
<style>body{font-family:sans-serif;margin:2em;color:#111;background:#fff}h1{font-size:1.6em;margin:0 0 1em}h2{font-size:1.2em;margin:1.5em 0 .5em}table{border-collapse:collapse}th,td{text-align:left;padding:.25em 1em .25em 0;vertical-align:top}.replication td,.replication th{border:1px solid #999;padding:.25em .75em}.links{margin-top:2em;color:#555}.history{color:#555}</style>
</head>
<body>
<h1>Failover deployment. Active server.</h1>
<table class="facts">
<tr><th>Role</th><td>active</td></tr>
<tr><th>Deployment</th><td>failover</td></tr>
<tr><th>Node</th><td>1 (meetings1.example.com, 192.0.2.11/24)</td></tr>
<tr><th>Site</th><td>1</td></tr>
<tr><th>Epoch</th><td>7</td></tr>
<tr><th>Standby hold</th><td>no</td></tr>
<tr><th>Shared address</th><td>192.0.2.10/24, held by this node</td></tr>
<tr><th>Peer</th><td>192.0.2.12, connected</td></tr>
<tr><th>Peer&#39;s last claim</th><td>epoch 6</td></tr>
<tr><th>Clock offset</th><td>-0.42 ms</td></tr>
<tr><th>Uptime</th><td>1h 2m 5s</td></tr>
<tr><th>Taken</th><td>2024-05-01 13:00:00 UTC</td></tr>
</table>
<h2>Replication</h2>
<table class="replication">
<tr><th>Local Server</th><th>Remote Server</th></tr>
<tr><td>Replication Type: Local</td><td>Replication Type: Intra-site</td></tr>
<tr><td>Site: 1</td><td>Site: 1</td></tr>
<tr><td>Node: 1</td><td>Node: 2</td></tr>
<tr><td>State: Active</td><td>State: Active</td></tr>
<tr><td>Status: Local</td><td>Status: Connected</td></tr>
</table>
<p>Backlog: 3 changes. Lag: 1250 ms.</p>
<h2>Alarms (1)</h2>
<ul>
<li>2024-05-01 12:00:00 UTC: replication backlog past 1000 changes</li>
</ul>
<p class="links">Also as <a href="/status.json">JSON</a> and <a href="/metrics">metrics</a>.</p>
</body>
</html>
"#,
        );
    }

    #[test]
    fn page_of_a_held_standby_says_what_is_not_there() {
        let page = render_status_page(&standby_node());
        check(
            body(&page),
            r#"<body>
<h1>Failover deployment. Standby server.</h1>
<table class="facts">
<tr><th>Role</th><td>standby</td></tr>
<tr><th>Deployment</th><td>failover</td></tr>
<tr><th>Node</th><td>2 (meetings2.example.com, 192.0.2.12/24)</td></tr>
<tr><th>Site</th><td>1</td></tr>
<tr><th>Epoch</th><td>0</td></tr>
<tr><th>Standby hold</th><td>yes (set by the operator)</td></tr>
<tr><th>Shared address</th><td>192.0.2.10/24, not held by this node</td></tr>
<tr><th>Peer</th><td>192.0.2.11, not connected</td></tr>
<tr><th>Peer&#39;s last claim</th><td>none</td></tr>
<tr><th>Clock offset</th><td>not measured</td></tr>
<tr><th>Uptime</th><td>42s</td></tr>
<tr><th>Taken</th><td>1970-01-01 00:00:00 UTC</td></tr>
</table>
<h2>Replication: not configured</h2>
<h2>No alarms</h2>
<p class="links">Also as <a href="/status.json">JSON</a> and <a href="/metrics">metrics</a>.</p>
</body>
</html>
"#,
        );
    }

    #[test]
    fn the_heading_is_the_banner_of_each_mode() {
        let mut single = standby_node();
        single.state.deployment = DeploymentMode::Single;
        for (snapshot, banner) in [
            (active_node(), "Failover deployment. Active server."),
            (standby_node(), "Failover deployment. Standby server."),
            (single, "Single-server deployment."),
        ] {
            let page = render_status_page(&snapshot);
            assert!(
                body(&page).starts_with(&format!("<body>\n<h1>{banner}</h1>\n")),
                "{page}"
            );
        }
    }

    #[test]
    fn one_change_of_backlog_and_unknown_lag() {
        let mut snapshot = active_node();
        if let Some(replication) = &mut snapshot.replication {
            replication.backlog = 1;
            replication.lag_ms = None;
        }
        assert!(render_status_page(&snapshot).contains("<p>Backlog: 1 change. Lag: unknown.</p>"));
    }

    #[test]
    fn a_standby_that_does_not_apply_says_why() {
        let mut snapshot = active_node();
        if let Some(replication) = &mut snapshot.replication {
            replication.remote.status = "Diverged".into();
            replication.local_detail = Some("not applying: <forked>".into());
            replication.remote_detail = Some("PostgreSQL at 192.0.2.12 answers".into());
        }
        let page = render_status_page(&snapshot);
        assert!(page.contains("<td>Status: Diverged</td>"), "{page}");
        assert!(
            page.contains("<p class=\"detail\">This node: not applying: &lt;forked&gt;</p>"),
            "{page}"
        );
        assert!(
            page.contains("<p class=\"detail\">Remote: PostgreSQL at 192.0.2.12 answers</p>"),
            "{page}"
        );
    }

    #[test]
    fn every_value_is_escaped() {
        let hostile = r#"<script>alert("x")</script> & 'y'"#;
        let escaped = "&lt;script&gt;alert(&quot;x&quot;)&lt;/script&gt; &amp; &#39;y&#39;";
        let mut snapshot = active_node();
        snapshot.hostname = hostile.into();
        snapshot.alarms[0].message = hostile.into();
        if let Some(replication) = &mut snapshot.replication {
            replication.remote.status = hostile.into();
        }
        let page = render_status_page(&snapshot);
        assert!(!page.contains("<script"), "{page}");
        assert!(page.contains(&format!(
            "<title>Failover deployment. Active server. ({escaped})</title>"
        )));
        assert!(page.contains(&format!("<li>2024-05-01 12:00:00 UTC: {escaped}</li>")));
        assert!(page.contains(&format!("<td>Status: {escaped}</td>")));
    }

    #[test]
    fn metrics_of_an_active_node() {
        check(
            &render_metrics(&active_node()),
            r#"# HELP tandem_info The node's hostname, node address and shared address; always 1.
# TYPE tandem_info gauge
tandem_info{node="1",site="1",hostname="meetings1.example.com",node_address="192.0.2.11/24",shared_address="192.0.2.10/24",peer_address="192.0.2.12"} 1
# HELP tandem_deployment The deployment mode: 1 for the node's mode, 0 for the other.
# TYPE tandem_deployment gauge
tandem_deployment{node="1",site="1",deployment="single"} 0
tandem_deployment{node="1",site="1",deployment="failover"} 1
# HELP tandem_role The node's role: 1 for the current role, 0 for the other.
# TYPE tandem_role gauge
tandem_role{node="1",site="1",role="active"} 1
tandem_role{node="1",site="1",role="standby"} 0
# HELP tandem_active Whether this node is the active server (1) or not (0).
# TYPE tandem_active gauge
tandem_active{node="1",site="1"} 1
# HELP tandem_epoch The highest claim epoch this node has used or seen.
# TYPE tandem_epoch gauge
tandem_epoch{node="1",site="1"} 7
# HELP tandem_standby_hold Whether the operator holds this node in standby (1) or not (0).
# TYPE tandem_standby_hold gauge
tandem_standby_hold{node="1",site="1"} 0
# HELP tandem_holds_shared_address Whether this node holds the shared address right now (1) or not (0).
# TYPE tandem_holds_shared_address gauge
tandem_holds_shared_address{node="1",site="1"} 1
# HELP tandem_peer_connected Whether the peer link is up (1) or not (0).
# TYPE tandem_peer_connected gauge
tandem_peer_connected{node="1",site="1"} 1
# HELP tandem_peer_claim_epoch The epoch of the peer's latest claim.
# TYPE tandem_peer_claim_epoch gauge
tandem_peer_claim_epoch{node="1",site="1"} 6
# HELP tandem_peer_clock_offset_seconds The peer's clock minus this node's clock, in seconds.
# TYPE tandem_peer_clock_offset_seconds gauge
tandem_peer_clock_offset_seconds{node="1",site="1"} -0.00042
# HELP tandem_replication_configured Whether database replication reports a status (1) or not (0).
# TYPE tandem_replication_configured gauge
tandem_replication_configured{node="1",site="1"} 1
# HELP tandem_replication_backlog Changes not yet acknowledged by the standby.
# TYPE tandem_replication_backlog gauge
tandem_replication_backlog{node="1",site="1"} 3
# HELP tandem_replication_lag_seconds Replication lag in seconds.
# TYPE tandem_replication_lag_seconds gauge
tandem_replication_lag_seconds{node="1",site="1"} 1.250
# HELP tandem_alarms Alarms raised and not cleared.
# TYPE tandem_alarms gauge
tandem_alarms{node="1",site="1"} 1
# HELP tandem_uptime_seconds Seconds since the agent started.
# TYPE tandem_uptime_seconds gauge
tandem_uptime_seconds{node="1",site="1"} 3725
"#,
        );
    }

    #[test]
    fn metrics_leave_out_what_is_not_known() {
        let metrics = render_metrics(&standby_node());
        for absent in [
            "tandem_peer_claim_epoch",
            "tandem_peer_clock_offset_seconds",
            "tandem_replication_backlog",
            "tandem_replication_lag_seconds",
        ] {
            assert!(!metrics.contains(absent), "{absent} in\n{metrics}");
        }
        for present in [
            "\ntandem_role{node=\"2\",site=\"1\",role=\"standby\"} 1\n",
            "\ntandem_active{node=\"2\",site=\"1\"} 0\n",
            "\ntandem_standby_hold{node=\"2\",site=\"1\"} 1\n",
            "\ntandem_replication_configured{node=\"2\",site=\"1\"} 0\n",
            "\ntandem_alarms{node=\"2\",site=\"1\"} 0\n",
        ] {
            assert!(metrics.contains(present), "{present} not in\n{metrics}");
        }
    }

    #[test]
    fn label_values_and_floats_follow_the_exposition_format() {
        let mut snapshot = standby_node();
        snapshot.hostname = "a\"b\\c\nd".into();
        let metrics = render_metrics(&snapshot);
        assert!(metrics.contains(r#"hostname="a\"b\\c\nd","#), "{metrics}");
        assert_eq!(float(f64::NAN), "NaN");
        assert_eq!(float(f64::INFINITY), "+Inf");
        assert_eq!(float(f64::NEG_INFINITY), "-Inf");
        assert_eq!(float(0.5), "0.5");
    }

    #[test]
    fn status_json_is_the_snapshot_with_the_banner() {
        let json = render_status_json(&standby_node()).unwrap();
        check(
            &json,
            r#"{
  "banner": "Failover deployment. Standby server.",
  "state": {
    "deployment": "failover",
    "node": 2,
    "site": 1,
    "role": "standby",
    "epoch": 0,
    "standby_hold": true,
    "replication": "off",
    "role_changed_ms": 0
  },
  "hostname": "meetings2.example.com",
  "node_address": "192.0.2.12/24",
  "shared_address": "192.0.2.10/24",
  "holds_shared_address": false,
  "peer": {
    "address": "192.0.2.11",
    "connected": false,
    "claim_epoch": null,
    "clock_offset_ms": null,
    "datagrams": false
  },
  "replication": null,
  "alarms": [],
  "alarm_history": [],
  "uptime_seconds": 42,
  "taken_ms": 0
}
"#,
        );
        let active = active_node();
        let back: StatusSnapshot =
            serde_json::from_str(&render_status_json(&active).unwrap()).unwrap();
        assert_eq!(back, active);
    }

    #[test]
    fn dates_and_durations() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(format_utc(951_782_400_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(format_utc(1_709_251_199_999), "2024-02-29 23:59:59 UTC");
        assert_eq!(format_utc(4_107_542_400_000), "2100-03-01 00:00:00 UTC");
        assert!(format_utc(u64::MAX).ends_with(" UTC"));
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(61), "1m 1s");
        assert_eq!(format_uptime(3_600), "1h 0m 0s");
        assert_eq!(format_uptime(90_061), "1d 1h 1m 1s");
    }

    fn waiting() -> Arc<AtomicBool> {
        Arc::new(AtomicBool::new(false))
    }

    /// Task ids for the registry: those of real (finished) tasks, as ids
    /// cannot be made otherwise.
    async fn ids(n: usize) -> Vec<task::Id> {
        let mut ids = Vec::new();
        for _ in 0..n {
            let handle = tokio::spawn(async {});
            ids.push(handle.id());
            let _ = handle.await;
        }
        ids
    }

    #[tokio::test]
    async fn the_oldest_waiting_connection_of_a_client_at_its_cap_makes_room() {
        let ids = ids(6).await;
        let a: IpAddr = "192.0.2.100".parse().unwrap();
        let b: IpAddr = "192.0.2.101".parse().unwrap();
        let mut registry = Registry::new(Limits {
            total: 10,
            per_client: 3,
        });
        let answered = Arc::new(AtomicBool::new(true));
        // a: one answered connection, then two that are still waiting.
        assert_eq!(registry.admit(a), Admission::Open);
        registry.insert(ids[0], a, Arc::clone(&answered), "a0");
        for (i, name) in [(1, "a1"), (2, "a2")] {
            assert_eq!(registry.admit(a), Admission::Open);
            registry.insert(ids[i], a, waiting(), name);
        }
        // b is not held back by a's cap.
        assert_eq!(registry.admit(b), Admission::Open);
        registry.insert(ids[3], b, waiting(), "b0");
        // a's fourth takes the place of a's oldest waiting one, never b's and
        // never the answered one.
        assert_eq!(registry.admit(a), Admission::Evict("a1"));
        registry.insert(ids[4], a, waiting(), "a3");
        assert_eq!(registry.admit(a), Admission::Evict("a2"));
        registry.insert(ids[5], a, waiting(), "a4");
        assert_eq!(registry.per_client.get(&a), Some(&3));
        // An evicted connection that ends later is forgotten without harm.
        registry.remove(ids[1]);
        assert_eq!(registry.open.len(), 4);
        // Ended connections free their client's places.
        registry.remove(ids[4]);
        registry.remove(ids[5]);
        assert_eq!(registry.admit(a), Admission::Open);
        registry.remove(ids[0]);
        registry.remove(ids[3]);
        assert!(registry.open.is_empty() && registry.per_client.is_empty());
    }

    #[tokio::test]
    async fn at_the_total_cap_the_oldest_waiting_connection_of_anyone_makes_room() {
        let ids = ids(4).await;
        let clients: Vec<IpAddr> = ["192.0.2.100", "192.0.2.101", "192.0.2.102"]
            .iter()
            .map(|a| a.parse().unwrap())
            .collect();
        let mut registry = Registry::new(Limits {
            total: 2,
            per_client: 2,
        });
        let first = waiting();
        registry.insert(ids[0], clients[0], Arc::clone(&first), 0);
        registry.insert(ids[1], clients[1], waiting(), 1);
        first.store(true, Ordering::Relaxed);
        // The first has sent its request: the second goes.
        assert_eq!(registry.admit(clients[2]), Admission::Evict(1));
        registry.insert(ids[2], clients[2], Arc::new(AtomicBool::new(true)), 2);
        // Everyone is being answered: a newcomer waits its turn elsewhere.
        assert_eq!(registry.admit(clients[1]), Admission::Refuse);
        registry.remove(ids[0]);
        assert_eq!(registry.admit(clients[1]), Admission::Open);
    }

    #[test]
    fn clients_are_ipv4_addresses_and_ipv6_prefixes() {
        let ip = |s: &str| s.parse::<IpAddr>().unwrap();
        assert_eq!(client_of(ip("192.0.2.100")), ip("192.0.2.100"));
        assert_eq!(client_of(ip("::ffff:192.0.2.100")), ip("192.0.2.100"));
        assert_eq!(client_of(ip("2001:db8:1:2:3:4:5:6")), ip("2001:db8:1:2::"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:ffff::1")),
            client_of(ip("2001:db8:1:2::9"))
        );
    }

    fn body_text(reply: Response<Full<Bytes>>) -> String {
        use http_body_util::BodyExt as _;
        let bytes = futures::executor::block_on(reply.into_body().collect())
            .unwrap()
            .to_bytes();
        String::from_utf8(bytes.to_vec()).unwrap()
    }

    #[test]
    fn answers_route_by_path_then_method() {
        let (_status, receiver) = watch::channel(standby_node());
        let page = answer(&Method::GET, "/status", &receiver);
        assert_eq!(page.status(), StatusCode::OK);
        assert_eq!(page.headers()[header::CONTENT_TYPE], HTML);
        assert_eq!(page.headers()[header::CONNECTION], "close");
        assert_eq!(page.headers()[header::CACHE_CONTROL], "no-store");
        assert_eq!(body_text(page), render_status_page(&standby_node()));
        let head = answer(&Method::HEAD, "/metrics", &receiver);
        assert_eq!(head.headers()[header::CONTENT_TYPE], METRICS);

        let missing = answer(&Method::POST, "/admin", &receiver);
        assert_eq!(missing.status(), StatusCode::NOT_FOUND);
        assert_eq!(
            body_text(missing),
            "404 Not Found: no such page; try /, /status, /status.json or /metrics\n"
        );
        let post = answer(&Method::POST, "/", &receiver);
        assert_eq!(post.status(), StatusCode::METHOD_NOT_ALLOWED);
        assert_eq!(post.headers()[header::ALLOW], "GET, HEAD");
        assert_eq!(post.headers()[header::CONTENT_TYPE], TEXT);
        assert_eq!(
            body_text(post),
            "405 Method Not Allowed: the status page answers only GET and HEAD\n"
        );
    }

    /// Node 1 on its first boot: a single server, nothing known yet.
    fn first_boot() -> StatusSnapshot {
        StatusSnapshot {
            state: NodeState::first_boot(NodeId::One, SiteId::ONE),
            hostname: "meetings1.example.com".into(),
            node_address: "192.0.2.11/24".into(),
            shared_address: "192.0.2.10/24".into(),
            holds_shared_address: false,
            peer: PeerStatus {
                datagrams: false,
                address: "192.0.2.12".into(),
                connected: false,
                claim_epoch: None,
                clock_offset_ms: None,
            },
            replication: None,
            alarms: Vec::new(),
            alarm_history: Vec::new(),
            uptime_seconds: 5,
            taken_ms: 0,
            witness: None,
        }
    }

    /// The renderers' examples (doc tests while the renderers were public).
    #[test]
    fn a_first_boot_renders_as_a_single_server_without_replication() {
        let snapshot = first_boot();
        let page = render_status_page(&snapshot);
        assert!(page.contains("<h1>Single-server deployment.</h1>"));
        assert!(page.contains("Replication: not configured"));

        let json = render_status_json(&snapshot).unwrap();
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert_eq!(value["banner"], "Single-server deployment.");
        assert_eq!(
            serde_json::from_str::<StatusSnapshot>(&json).unwrap(),
            snapshot
        );

        let metrics = render_metrics(&snapshot);
        assert!(metrics.contains("\ntandem_active{node=\"1\",site=\"1\"} 0\n"));
    }

    /// The limit `tests/status_page.rs` holds the server to over HTTP.
    #[test]
    fn a_request_head_may_take_8_kib() {
        assert_eq!(MAX_HEAD_BYTES, 8 * 1024);
    }

    /// What real HTTP on 127.0.0.1 delivers is exactly the renderers' text, for
    /// this file's active node and for the standby `tests/status_page.rs` serves
    /// (the other HTTP tests are there).
    #[tokio::test]
    async fn pages_over_http_are_the_renderers_text() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (status, receiver) = watch::channel(active_node());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let shutdown = async move {
            let _ = stopped.await;
        };
        let server = tokio::spawn(serve_status(listener, receiver, shutdown));
        for snapshot in [active_node(), super::props::standby()] {
            status.send_replace(snapshot.clone());
            for (path, expected) in [
                ("/", render_status_page(&snapshot)),
                ("/status", render_status_page(&snapshot)),
                ("/metrics", render_metrics(&snapshot)),
            ] {
                assert_eq!(get_over_http(addr, path).await, expected, "{path}");
            }
        }
        stop.send(()).unwrap();
        server.await.unwrap().unwrap();
    }

    /// The body of a `GET` for `path`, which must answer `200`.
    async fn get_over_http(addr: std::net::SocketAddr, path: &str) -> String {
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n");
        stream.write_all(request.as_bytes()).await.unwrap();
        let mut response = Vec::new();
        stream.read_to_end(&mut response).await.unwrap();
        let response = String::from_utf8(response).unwrap();
        let (head, body) = response.split_once("\r\n\r\n").unwrap();
        assert!(head.starts_with("HTTP/1.1 200 "), "{path}: {head}");
        body.to_owned()
    }
}
