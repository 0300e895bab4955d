//! The agent's status page over HTTP: the seed's Administration Center banner
//! ("Failover deployment. Standby server.") with the replication table and the
//! alarms below it, `/status.json` for tools and `/metrics` for Prometheus.
//!
//! Three pure renderers turn a [`StatusSnapshot`] into text
//! ([`render_status_page`], [`render_status_json`], [`render_metrics`]); a small
//! HTTP/1.1 server on a tokio listener ([`serve_status`], [`StatusServer`])
//! answers `GET` and `HEAD` for `/`, `/status`, `/status.json` and `/metrics`
//! with whatever snapshot a [`watch`] channel holds at the time of the request.
//!
//! The server is deliberately small: one request per connection
//! (`Connection: close`), at most [`MAX_HEAD_BYTES`] of request head read within
//! a timeout, no request bodies, no keep-alive, no TLS. The page carries no
//! script and loads nothing from elsewhere; every value is HTML-escaped.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tandem_role::Role;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;

use crate::{ReplicationSide, StatusSnapshot};

/// The port the status page listens on when the node config names none: next to
/// the peer link (7451) and the replication service (7452).
pub const DEFAULT_STATUS_PORT: u16 = 7450;

/// The most bytes of request head (request line and headers) the server reads;
/// a longer head is answered with `431 Request Header Fields Too Large`.
pub const MAX_HEAD_BYTES: usize = 8 * 1024;

/// How long a client may take to send its request head by default; a slower one
/// is answered with `408 Request Timeout`.
pub const DEFAULT_HEAD_TIMEOUT: Duration = Duration::from_secs(10);

/// How many connections are served at once; further clients wait in the
/// listen backlog until one finishes.
const MAX_CONNECTIONS: usize = 64;

/// How long writing the response may take.
const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

/// After the response, how long and how much of the client's unread input is
/// drained before closing, so that closing does not reset the connection and
/// destroy the response before the client has read it.
const LINGER_TIMEOUT: Duration = Duration::from_secs(1);
const LINGER_BYTES: usize = 64 * 1024;

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
///
/// ```
/// # use tandem_node::{render_status_page, PeerStatus, StatusSnapshot};
/// # use tandem_role::{NodeState, NodeId, SiteId};
/// let snapshot = StatusSnapshot {
///     state: NodeState::first_boot(NodeId::One, SiteId::ONE),
///     hostname: "meetings1.example.com".into(),
///     node_address: "192.0.2.11/24".into(),
///     shared_address: "192.0.2.10/24".into(),
///     holds_shared_address: false,
///     peer: PeerStatus {
///         address: "192.0.2.12".into(),
///         connected: false,
///         claim_epoch: None,
///         clock_offset_ms: None,
///     },
///     replication: None,
///     alarms: Vec::new(),
///     alarm_history: Vec::new(),
///     uptime_seconds: 5,
///     taken_ms: 0,
/// };
/// let page = render_status_page(&snapshot);
/// assert!(page.contains("<h1>Single-server deployment.</h1>"));
/// assert!(page.contains("Replication: not configured"));
/// ```
pub fn render_status_page(snapshot: &StatusSnapshot) -> String {
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

/// `2024-05-01 12:00:00 UTC` for milliseconds since the Unix epoch.
fn format_utc(ms: u64) -> String {
    let (date, secs_of_day) = civil(ms / 1000);
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02} UTC",
        date.year,
        date.month,
        date.day,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

/// The IMF-fixdate of RFC 9110 for the `Date` header:
/// `Sun, 06 Nov 1994 08:49:37 GMT`.
fn http_date(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let (date, secs_of_day) = civil(secs);
    // 1970-01-01 was a Thursday.
    let weekday = DAYS
        .get(((secs / 86_400 + 4) % 7) as usize)
        .unwrap_or(&"Sun");
    let month = MONTHS
        .get((date.month as usize).wrapping_sub(1))
        .unwrap_or(&"Jan");
    format!(
        "{weekday}, {:02} {month} {:04} {:02}:{:02}:{:02} GMT",
        date.day,
        date.year,
        secs_of_day / 3600,
        secs_of_day / 60 % 60,
        secs_of_day % 60
    )
}

struct Date {
    year: u64,
    month: u32,
    day: u32,
}

/// The proleptic Gregorian date and the second of the day of a Unix time, by
/// counting 400-year eras (146,097 days each) from 0000-03-01, so that leap
/// days fall at the end of each counted year.
fn civil(secs: u64) -> (Date, u64) {
    const DAYS_0000_03_01_TO_1970_01_01: u64 = 719_468;
    let days = secs / 86_400 + DAYS_0000_03_01_TO_1970_01_01;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let march_based_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * march_based_month + 2) / 5 + 1;
    let month = if march_based_month < 10 {
        march_based_month + 3
    } else {
        march_based_month - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    let date = Date {
        year,
        month: u32::try_from(month).unwrap_or(1),
        day: u32::try_from(day).unwrap_or(1),
    };
    (date, secs % 86_400)
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
///
/// ```
/// # use tandem_node::{render_status_json, PeerStatus, StatusSnapshot};
/// # use tandem_role::{NodeState, NodeId, SiteId};
/// # let snapshot = StatusSnapshot {
/// #     state: NodeState::first_boot(NodeId::One, SiteId::ONE),
/// #     hostname: "meetings1.example.com".into(),
/// #     node_address: "192.0.2.11/24".into(),
/// #     shared_address: "192.0.2.10/24".into(),
/// #     holds_shared_address: false,
/// #     peer: PeerStatus { address: "192.0.2.12".into(), connected: false,
/// #         claim_epoch: None, clock_offset_ms: None },
/// #     replication: None, alarms: Vec::new(), alarm_history: Vec::new(), uptime_seconds: 5, taken_ms: 0,
/// # };
/// let json = render_status_json(&snapshot)?;
/// let value: serde_json::Value = serde_json::from_str(&json)?;
/// assert_eq!(value["banner"], "Single-server deployment.");
/// assert_eq!(serde_json::from_str::<StatusSnapshot>(&json)?, snapshot);
/// # Ok::<(), serde_json::Error>(())
/// ```
pub fn render_status_json(snapshot: &StatusSnapshot) -> Result<String, serde_json::Error> {
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
///
/// ```
/// # use tandem_node::{render_metrics, PeerStatus, StatusSnapshot};
/// # use tandem_role::{NodeState, NodeId, SiteId};
/// # let snapshot = StatusSnapshot {
/// #     state: NodeState::first_boot(NodeId::One, SiteId::ONE),
/// #     hostname: "meetings1.example.com".into(),
/// #     node_address: "192.0.2.11/24".into(),
/// #     shared_address: "192.0.2.10/24".into(),
/// #     holds_shared_address: false,
/// #     peer: PeerStatus { address: "192.0.2.12".into(), connected: false,
/// #         claim_epoch: None, clock_offset_ms: None },
/// #     replication: None, alarms: Vec::new(), alarm_history: Vec::new(), uptime_seconds: 5, taken_ms: 0,
/// # };
/// let metrics = render_metrics(&snapshot);
/// assert!(metrics.contains("\ntandem_active{node=\"1\",site=\"1\"} 0\n"));
/// ```
pub fn render_metrics(snapshot: &StatusSnapshot) -> String {
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
// Request heads

/// A parsed HTTP/1.x request head: what the server needs of it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct RequestHead {
    /// The method, as sent (methods are case-sensitive: `GET`, not `get`).
    pub method: String,
    /// The request target as sent, e.g. `/status?x=1`.
    pub target: String,
    /// The path of the target without query or fragment, e.g. `/status`.
    pub path: String,
    /// The minor version of HTTP/1.x: 0 or 1 (up to 9).
    pub minor_version: u8,
}

/// Why a request head was refused. Messages name the problem but never repeat
/// the client's bytes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RequestError {
    /// Nothing but empty lines.
    #[error("empty request")]
    Empty,
    /// The request line is not `METHOD SP target SP HTTP/x.y`.
    #[error("malformed request line: expected `METHOD /path HTTP/1.1`")]
    RequestLine,
    /// The method has characters a method token cannot have.
    #[error("invalid method")]
    Method,
    /// The target is not a path starting with `/` nor an absolute `http` URL.
    #[error("request target must be a path starting with `/`")]
    Target,
    /// The version is not `HTTP/<digit>.<digit>`.
    #[error("malformed HTTP version")]
    Version,
    /// A well-formed version other than HTTP/1.x.
    #[error("HTTP version {major}.{minor} is not supported; use HTTP/1.1")]
    UnsupportedVersion {
        /// The major version sent.
        major: u8,
        /// The minor version sent.
        minor: u8,
    },
    /// A carriage return that does not end a line.
    #[error("carriage return inside line {line} of the request head")]
    StrayCarriageReturn {
        /// The line, counting the request line as 1.
        line: usize,
    },
    /// A header line without a colon, with an invalid name or with control
    /// characters in its value.
    #[error("malformed header field on line {line} of the request head")]
    Header {
        /// The line, counting the request line as 1.
        line: usize,
    },
    /// A header line that continues the previous one (obsolete line folding).
    #[error("obsolete line folding on line {line} of the request head")]
    Folded {
        /// The line, counting the request line as 1.
        line: usize,
    },
    /// An HTTP/1.1 request without a `Host` header.
    #[error("HTTP/1.1 request without a Host header")]
    MissingHost,
    /// More than one `Host` header.
    #[error("more than one Host header")]
    DuplicateHost,
}

/// Parses an HTTP/1.x request head: the request line and the header lines, each
/// ended by CRLF (a bare LF is accepted too), optionally followed by the empty
/// line that ends the head; anything after that empty line is ignored. One
/// empty line before the request line is ignored, as RFC 9112 advises.
///
/// Checks what RFC 9112 asks a server to check: the method is a token, the
/// target a path (origin form) or an absolute `http(s)` URL, the version
/// `HTTP/1.x`; header names are tokens directly followed by the colon, values
/// carry no control characters, no line is folded, and an HTTP/1.1 request has
/// exactly one `Host`. Never panics, whatever the bytes.
///
/// ```
/// # use tandem_node::parse_request_head;
/// let head = parse_request_head(b"GET /status?x=1 HTTP/1.1\r\nHost: node1\r\n\r\n")?;
/// assert_eq!((head.method.as_str(), head.path.as_str()), ("GET", "/status"));
/// assert!(parse_request_head(b"GET /status HTTP/1.1\r\n\r\n").is_err()); // no Host
/// # Ok::<(), tandem_node::RequestError>(())
/// ```
pub fn parse_request_head(head: &[u8]) -> Result<RequestHead, RequestError> {
    let mut lines = head.split(|&b| b == b'\n').enumerate().map(|(i, line)| {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.contains(&b'\r') {
            Err(RequestError::StrayCarriageReturn { line: i + 1 })
        } else {
            Ok(line)
        }
    });
    let mut request_line = lines.next().ok_or(RequestError::Empty)??;
    if request_line.is_empty() {
        request_line = lines.next().ok_or(RequestError::Empty)??;
    }
    if request_line.is_empty() {
        return Err(RequestError::Empty);
    }
    let mut parts = request_line.splitn(3, |&b| b == b' ');
    let (Some(method), Some(target), Some(version)) = (parts.next(), parts.next(), parts.next())
    else {
        return Err(RequestError::RequestLine);
    };
    if method.is_empty() || !method.iter().all(|&b| is_tchar(b)) {
        return Err(RequestError::Method);
    }
    let path = target_path(target).ok_or(RequestError::Target)?;
    let minor_version = parse_version(version)?;

    let mut hosts = 0usize;
    for (i, line) in lines.enumerate() {
        let line = line?;
        let number = i + 2;
        if line.is_empty() {
            break;
        }
        if line.first().is_some_and(|&b| b == b' ' || b == b'\t') {
            return Err(RequestError::Folded { line: number });
        }
        let colon = line
            .iter()
            .position(|&b| b == b':')
            .ok_or(RequestError::Header { line: number })?;
        let (name, value) = line.split_at(colon);
        let value = value.get(1..).unwrap_or_default();
        if name.is_empty() || !name.iter().all(|&b| is_tchar(b)) {
            return Err(RequestError::Header { line: number });
        }
        if value.iter().any(|&b| (b < 0x20 && b != b'\t') || b == 0x7f) {
            return Err(RequestError::Header { line: number });
        }
        if name.eq_ignore_ascii_case(b"host") {
            hosts += 1;
        }
    }
    match hosts {
        0 if minor_version >= 1 => return Err(RequestError::MissingHost),
        0 | 1 => {}
        _ => return Err(RequestError::DuplicateHost),
    }

    Ok(RequestHead {
        method: String::from_utf8_lossy(method).into_owned(),
        target: String::from_utf8_lossy(target).into_owned(),
        path,
        minor_version,
    })
}

/// The token characters of RFC 9110 (methods and header names).
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The path of a request target: origin form (`/a?q`), absolute form
/// (`http://host/a?q`) or asterisk form (`*`). `None` for anything else.
fn target_path(target: &[u8]) -> Option<String> {
    if target.is_empty() || !target.iter().all(|&b| (0x21..=0x7e).contains(&b)) {
        return None;
    }
    let text = std::str::from_utf8(target).ok()?;
    let path_and_query = if text.starts_with('/') || text == "*" {
        text
    } else {
        let scheme_end = text.find("://")?;
        let scheme = text.get(..scheme_end)?;
        if !scheme.eq_ignore_ascii_case("http") && !scheme.eq_ignore_ascii_case("https") {
            return None;
        }
        let rest = text.get(scheme_end + 3..)?;
        match rest.find(['/', '?', '#']) {
            Some(i) if rest.get(i..)?.starts_with('/') => rest.get(i..)?,
            _ => "/",
        }
    };
    let end = path_and_query
        .find(['?', '#'])
        .unwrap_or(path_and_query.len());
    Some(path_and_query.get(..end)?.to_owned())
}

fn parse_version(version: &[u8]) -> Result<u8, RequestError> {
    let Some([major, b'.', minor]) = version.strip_prefix(b"HTTP/") else {
        return Err(RequestError::Version);
    };
    if !major.is_ascii_digit() || !minor.is_ascii_digit() {
        return Err(RequestError::Version);
    }
    let (major, minor) = (major - b'0', minor - b'0');
    if major != 1 {
        return Err(RequestError::UnsupportedVersion { major, minor });
    }
    Ok(minor)
}

/// The length of the request head in `buf` up to and including the empty line
/// that ends it (CRLF CRLF, or bare LFs), if `buf` holds all of it.
fn head_end(buf: &[u8]) -> Option<usize> {
    buf.iter().enumerate().find_map(|(i, &b)| {
        if b != b'\n' {
            return None;
        }
        match (buf.get(i + 1), buf.get(i + 2)) {
            (Some(b'\n'), _) => Some(i + 2),
            (Some(b'\r'), Some(b'\n')) => Some(i + 3),
            _ => None,
        }
    })
}

// ---------------------------------------------------------------------------
// The server

/// The status page's HTTP server, with its settings. [`serve_status`] runs one
/// with the defaults.
#[derive(Debug, Clone)]
pub struct StatusServer {
    status: watch::Receiver<StatusSnapshot>,
    head_timeout: Duration,
}

impl StatusServer {
    /// A server for the snapshots `status` receives; every request renders the
    /// snapshot current at that moment.
    pub fn new(status: watch::Receiver<StatusSnapshot>) -> StatusServer {
        StatusServer {
            status,
            head_timeout: DEFAULT_HEAD_TIMEOUT,
        }
    }

    /// How long a client may take to send its request head (default
    /// [`DEFAULT_HEAD_TIMEOUT`]).
    pub fn with_head_timeout(mut self, timeout: Duration) -> StatusServer {
        self.head_timeout = timeout;
        self
    }

    /// Serves connections from `listener` until `shutdown` completes, each in a
    /// task of its own; connections still open then are dropped. Returns an
    /// error only when the listener itself fails; running out of file
    /// descriptors or memory pauses accepting for a moment instead. The future
    /// is `Send` when `shutdown` is, so it can be spawned.
    pub async fn serve(
        self,
        listener: TcpListener,
        shutdown: impl Future<Output = ()>,
    ) -> io::Result<()> {
        let shared = Arc::new(self);
        let permits = Arc::new(Semaphore::new(MAX_CONNECTIONS));
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        if let Ok(local) = listener.local_addr() {
            tracing::info!(%local, "status page listening");
        }
        loop {
            // Accepting waits for a free connection slot first; a client beyond
            // the limit waits in the listen backlog.
            let accept = async {
                let permit = Arc::clone(&permits).acquire_owned().await;
                (permit, listener.accept().await)
            };
            let (permit, accepted) = tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next() => continue,
                accepted = accept => accepted,
            };
            let Ok(permit) = permit else { break };
            match accepted {
                Ok((stream, peer)) => {
                    let server = Arc::clone(&shared);
                    connections.spawn(async move {
                        server.connection(stream, peer).await;
                        drop(permit);
                    });
                }
                Err(e) if is_transient(&e) => {
                    tracing::debug!(error = %e, "connection failed before it was accepted");
                }
                Err(e) if is_exhaustion(&e) => {
                    tracing::warn!(error = %e, "cannot accept connections; pausing");
                    tokio::time::sleep(ACCEPT_BACKOFF).await;
                }
                Err(e) => return Err(e),
            }
        }
        tracing::info!(open = connections.len(), "status page stopped");
        connections.shutdown().await;
        Ok(())
    }

    /// Reads one request, answers it and closes the connection.
    async fn connection(&self, mut stream: TcpStream, peer: SocketAddr) {
        let reply = match tokio::time::timeout(self.head_timeout, read_head(&mut stream)).await {
            Err(_) => {
                tracing::debug!(%peer, "request head timed out");
                Reply::error(
                    408,
                    "Request Timeout",
                    "the request took too long to arrive",
                )
            }
            Ok(Err(HeadError::TooLarge)) => Reply::error(
                431,
                "Request Header Fields Too Large",
                "the request head is longer than 8 KiB",
            ),
            Ok(Err(HeadError::Closed)) => return,
            Ok(Err(HeadError::Io(e))) => {
                tracing::debug!(%peer, error = %e, "cannot read the request");
                return;
            }
            Ok(Ok(head)) => match parse_request_head(&head) {
                Ok(request) => {
                    let reply = self.route(&request);
                    tracing::debug!(%peer, method = %request.method, path = %request.path,
                        status = reply.status, "status page request");
                    let head_only = request.method == "HEAD";
                    return self.finish(stream, peer, reply, head_only).await;
                }
                Err(e) => match e {
                    RequestError::UnsupportedVersion { .. } => {
                        Reply::error(505, "HTTP Version Not Supported", &e.to_string())
                    }
                    e => Reply::error(400, "Bad Request", &e.to_string()),
                },
            },
        };
        tracing::debug!(%peer, status = reply.status, "status page request refused");
        self.finish(stream, peer, reply, false).await;
    }

    fn route(&self, request: &RequestHead) -> Reply {
        let page = match request.path.as_str() {
            "/" | "/status" => Page::Html,
            "/status.json" => Page::Json,
            "/metrics" => Page::Metrics,
            _ => {
                return Reply::error(
                    404,
                    "Not Found",
                    "no such page; try /, /status, /status.json or /metrics",
                );
            }
        };
        if request.method != "GET" && request.method != "HEAD" {
            return Reply::error(
                405,
                "Method Not Allowed",
                "the status page answers only GET and HEAD",
            );
        }
        // Clone so that rendering does not hold the channel's lock.
        let snapshot = self.status.borrow().clone();
        match page {
            Page::Html => Reply::ok(HTML, render_status_page(&snapshot)),
            Page::Metrics => Reply::ok(METRICS, render_metrics(&snapshot)),
            Page::Json => match render_status_json(&snapshot) {
                Ok(json) => Reply::ok(JSON, json),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot render status.json");
                    Reply::error(
                        500,
                        "Internal Server Error",
                        "cannot render the status as JSON",
                    )
                }
            },
        }
    }

    /// Writes the reply, closes the sending side and drains what the client
    /// still sends, so that closing does not reset the connection under the
    /// client before it has read the reply.
    async fn finish(&self, mut stream: TcpStream, peer: SocketAddr, reply: Reply, head_only: bool) {
        let bytes = reply.to_bytes(head_only, SystemTime::now());
        let written = tokio::time::timeout(WRITE_TIMEOUT, async {
            stream.write_all(&bytes).await?;
            stream.shutdown().await
        })
        .await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                tracing::debug!(%peer, error = %e, "cannot send the reply");
                return;
            }
            Err(_) => {
                tracing::debug!(%peer, "sending the reply timed out");
                return;
            }
        }
        let _ = tokio::time::timeout(LINGER_TIMEOUT, async {
            let mut sink = [0u8; 4096];
            let mut drained = 0usize;
            while drained < LINGER_BYTES {
                match stream.read(&mut sink).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => drained += n,
                }
            }
        })
        .await;
    }
}

/// Serves the status page on `listener` until `shutdown` completes: `GET` and
/// `HEAD` for `/` and `/status` (the HTML page), `/status.json` and `/metrics`;
/// `404` for other paths, `405` for other methods, `400` for malformed requests,
/// `431` for a request head over [`MAX_HEAD_BYTES`], `408` for a client slower
/// than [`DEFAULT_HEAD_TIMEOUT`]. Each request shows the snapshot `status`
/// holds at that moment.
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

enum Page {
    Html,
    Json,
    Metrics,
}

enum HeadError {
    TooLarge,
    Closed,
    Io(io::Error),
}

/// Reads until the request head is complete; at most [`MAX_HEAD_BYTES`].
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD_BYTES];
    let mut filled = 0usize;
    loop {
        let Some(free) = buf.get_mut(filled..) else {
            return Err(HeadError::TooLarge);
        };
        if free.is_empty() {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(free).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        // The end can straddle the previous read: look back three bytes.
        let from = filled.saturating_sub(3);
        filled += n;
        if let Some(end) = buf.get(from..filled).and_then(head_end) {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

struct Reply {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
}

impl Reply {
    fn ok(content_type: &'static str, body: String) -> Reply {
        Reply {
            status: 200,
            reason: "OK",
            content_type,
            body,
        }
    }

    fn error(status: u16, reason: &'static str, message: &str) -> Reply {
        Reply {
            status,
            reason,
            content_type: TEXT,
            body: format!("{status} {reason}: {message}\n"),
        }
    }

    fn to_bytes(&self, head_only: bool, now: SystemTime) -> Vec<u8> {
        let secs = now
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut head = format!(
            "HTTP/1.1 {} {}\r\n\
             Date: {}\r\n\
             Content-Type: {}\r\n\
             Content-Length: {}\r\n\
             Cache-Control: no-store\r\n\
             X-Content-Type-Options: nosniff\r\n\
             Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'\r\n\
             Connection: close\r\n",
            self.status,
            self.reason,
            http_date(secs),
            self.content_type,
            self.body.len(),
        );
        if self.status == 405 {
            head.push_str("Allow: GET, HEAD\r\n");
        }
        head.push_str("\r\n");
        let mut bytes = head.into_bytes();
        if !head_only {
            bytes.extend_from_slice(self.body.as_bytes());
        }
        bytes
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
            }),
            alarms: vec![Alarm::new(
                AlarmKind::Replication,
                "replication backlog past 1000 changes",
                1_714_564_800_000,
            )],
            alarm_history: Vec::new(),
            uptime_seconds: 3_725,
            taken_ms: 1_714_568_400_000,
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
    "clock_offset_ms": null
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
        // RFC 9110's own example.
        assert_eq!(http_date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(http_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        assert!(format_utc(u64::MAX).ends_with(" UTC"));
        assert!(http_date(u64::MAX).ends_with(" GMT"));
        assert_eq!(format_uptime(0), "0s");
        assert_eq!(format_uptime(61), "1m 1s");
        assert_eq!(format_uptime(3_600), "1h 0m 0s");
        assert_eq!(format_uptime(90_061), "1d 1h 1m 1s");
    }

    #[test]
    fn request_heads() {
        let ok = |method: &str, target: &str, path: &str, minor_version: u8| {
            Ok(RequestHead {
                method: method.into(),
                target: target.into(),
                path: path.into(),
                minor_version,
            })
        };
        let cases: &[(&[u8], Result<RequestHead, RequestError>)] = &[
            (b"GET / HTTP/1.1\r\nHost: a\r\n\r\n", ok("GET", "/", "/", 1)),
            (
                b"HEAD /status.json?pretty HTTP/1.1\r\nhost: a\r\n\r\nbody",
                ok("HEAD", "/status.json?pretty", "/status.json", 1),
            ),
            (
                b"GET /metrics HTTP/1.0\n\n",
                ok("GET", "/metrics", "/metrics", 0),
            ),
            (
                b"\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
                ok("GET", "/", "/", 1),
            ),
            (
                b"GET http://192.0.2.11:7450/status#top HTTP/1.1\r\nHost: a\r\n\r\n",
                ok("GET", "http://192.0.2.11:7450/status#top", "/status", 1),
            ),
            (
                b"GET http://192.0.2.11 HTTP/1.1\r\nHost: a\r\n\r\n",
                ok("GET", "http://192.0.2.11", "/", 1),
            ),
            (
                b"POST /status HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\nabc",
                ok("POST", "/status", "/status", 1),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nX-Empty:\r\nX-Tab:\tv\xff\r\n\r\n",
                ok("GET", "/", "/", 1),
            ),
            (b"", Err(RequestError::Empty)),
            (b"\r\n\r\n", Err(RequestError::Empty)),
            (b"GET /\r\n\r\n", Err(RequestError::RequestLine)),
            (
                b"GET  / HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Target),
            ),
            (
                b"GET / HTTP/1.1 \r\nHost: a\r\n\r\n",
                Err(RequestError::Version),
            ),
            (
                b"G(T / HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Method),
            ),
            (
                b"GET status HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Target),
            ),
            (
                b"GET ftp://a/ HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Target),
            ),
            (
                b"GET /\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Target),
            ),
            (
                b"GET / HTTP/1.10\r\nHost: a\r\n\r\n",
                Err(RequestError::Version),
            ),
            (
                b"GET / http/1.1\r\nHost: a\r\n\r\n",
                Err(RequestError::Version),
            ),
            (
                b"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
                Err(RequestError::UnsupportedVersion { major: 2, minor: 0 }),
            ),
            (
                b"GET / HTTP/1.1\rHost: a\r\n\r\n",
                Err(RequestError::StrayCarriageReturn { line: 1 }),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nBad\r\n\r\n",
                Err(RequestError::Header { line: 3 }),
            ),
            (
                b"GET / HTTP/1.1\r\nHost : a\r\n\r\n",
                Err(RequestError::Header { line: 2 }),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\x00b\r\n\r\n",
                Err(RequestError::Header { line: 2 }),
            ),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\n folded\r\n\r\n",
                Err(RequestError::Folded { line: 3 }),
            ),
            (b"GET / HTTP/1.1\r\n\r\n", Err(RequestError::MissingHost)),
            (
                b"GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n",
                Err(RequestError::DuplicateHost),
            ),
            (
                b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n",
                Err(RequestError::DuplicateHost),
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(
                &parse_request_head(input),
                expected,
                "{}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn the_head_ends_at_the_first_empty_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r\nbody"), Some(27));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\nbody"), Some(16));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n"), None);
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nHost: a\r\n\r"), None);
        assert_eq!(head_end(b""), None);
    }

    #[test]
    fn replies_carry_length_type_date_and_close() {
        let reply = Reply::error(405, "Method Not Allowed", "only GET and HEAD");
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(784_111_777);
        let expected = "HTTP/1.1 405 Method Not Allowed\r\n\
            Date: Sun, 06 Nov 1994 08:49:37 GMT\r\n\
            Content-Type: text/plain; charset=utf-8\r\n\
            Content-Length: 42\r\n\
            Cache-Control: no-store\r\n\
            X-Content-Type-Options: nosniff\r\n\
            Content-Security-Policy: default-src 'none'; style-src 'unsafe-inline'; frame-ancestors 'none'\r\n\
            Connection: close\r\n\
            Allow: GET, HEAD\r\n\
            \r\n";
        let head_only = String::from_utf8(reply.to_bytes(true, now)).unwrap();
        check(&head_only, expected);
        let full = String::from_utf8(reply.to_bytes(false, now)).unwrap();
        check(
            &full,
            &format!("{expected}405 Method Not Allowed: only GET and HEAD\n"),
        );
    }

    proptest::proptest! {
        #[test]
        fn dates_agree_with_counting_days(days in 0u64..3_000_000) {
            let (mut year, mut left) = (1970u64, days);
            let leap = |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
            loop {
                let length = if leap(year) { 366 } else { 365 };
                if left < length { break; }
                left -= length;
                year += 1;
            }
            let mut month = 1u32;
            for length in [31, if leap(year) { 29 } else { 28 }, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31] {
                if left < length { break; }
                left -= length;
                month += 1;
            }
            let (date, _) = civil(days * 86_400);
            proptest::prop_assert_eq!((date.year, date.month, u64::from(date.day)), (year, month, left + 1));
        }
    }
}
