//! `failover check`: the seed's prerequisites for a failover deployment as a
//! report an operator can act on.
//!
//! The seed asks that the shared hostname and both node hostnames resolve
//! forward and back, that the clocks agree, that both nodes use the same shared
//! address and distinct node ids, and that the database stays within its size.
//! Here each of these is one [`CheckItem`]; the items about the peer use the
//! [`PeerFacts`] the agents exchange on the peer link (a link that is up also
//! proves that both nodes hold the same site key).

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::{NodeId, SiteId};

use crate::NodeConfig;

/// The clock offset to the peer past which `check` fails: the seed requires
/// synchronized clocks (NTP) for replication and meeting times.
pub const MAX_CLOCK_OFFSET_MS: f64 = 1000.0;

/// What one node tells the other about itself on the peer link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerFacts {
    /// Its node id (a number in the message, as before).
    pub node: NodeId,
    /// Its site (a number in the message, as before).
    pub site: SiteId,
    /// Its own hostname (the seed's eth0:0 hostname).
    pub hostname: String,
    /// Its node address.
    pub node_address: IpAddr,
    /// The shared address it is configured with, with its prefix.
    pub shared_address: String,
    /// The shared hostname it is configured with.
    pub shared_hostname: Option<String>,
    /// The fingerprint of its site key.
    pub key_fingerprint: String,
}

impl PeerFacts {
    /// This node's facts.
    pub fn of(config: &NodeConfig, key_fingerprint: String) -> PeerFacts {
        PeerFacts {
            node: config.node.id,
            site: config.node.site,
            hostname: config.node.hostname.clone(),
            node_address: config.network.node_address.addr(),
            shared_address: config.network.shared_address.to_string(),
            shared_hostname: config.node.shared_hostname.clone(),
            key_fingerprint,
        }
    }
}

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// The prerequisite holds.
    Pass,
    /// It does not; the detail says what to do.
    Fail,
    /// It could not be checked (for example: no peer link); the detail says why.
    Unknown,
}

/// One prerequisite and what was found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckItem {
    /// What was checked, e.g. `forward DNS meetings1.example.com`.
    pub check: String,
    /// The verdict.
    pub verdict: Verdict,
    /// What was found, and what to do when it fails.
    pub detail: String,
}

/// Every check of `failover check`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CheckReport {
    /// The checks in the order the seed lists them.
    pub items: Vec<CheckItem>,
}

impl CheckReport {
    /// Whether no check failed (unknown ones do not fail the report).
    pub fn passed(&self) -> bool {
        self.items.iter().all(|i| i.verdict != Verdict::Fail)
    }

    /// The report as a table, one line per check.
    pub fn render(&self) -> String {
        let width = self
            .items
            .iter()
            .map(|i| i.check.chars().count())
            .max()
            .unwrap_or(0);
        let mut out = String::new();
        for item in &self.items {
            let verdict = match item.verdict {
                Verdict::Pass => "ok  ",
                Verdict::Fail => "FAIL",
                Verdict::Unknown => "??  ",
            };
            out.push_str(&format!(
                "{verdict}  {:<width$}  {}\n",
                item.check, item.detail
            ));
        }
        let failed = self
            .items
            .iter()
            .filter(|i| i.verdict == Verdict::Fail)
            .count();
        let unknown = self
            .items
            .iter()
            .filter(|i| i.verdict == Verdict::Unknown)
            .count();
        out.push_str(&format!(
            "{} checks: {} passed, {failed} failed, {unknown} could not be checked\n",
            self.items.len(),
            self.items.len() - failed - unknown
        ));
        out
    }

    fn push(&mut self, check: impl Into<String>, verdict: Verdict, detail: impl Into<String>) {
        self.items.push(CheckItem {
            check: check.into(),
            verdict,
            detail: detail.into(),
        });
    }
}

/// What the agent knows about the peer for the checks.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    /// The peer's facts, if the peer link carried them.
    pub facts: Option<PeerFacts>,
    /// The clock offset estimate, in milliseconds (peer minus local).
    pub clock_offset_ms: Option<f64>,
    /// Whether the peer link is up now.
    pub connected: bool,
    /// Whether the peer's heartbeat datagrams carry the link's liveness.
    pub datagrams: bool,
    /// Why the peer items cannot be checked, when they cannot.
    pub missing: Option<String>,
}

/// Runs every check for this node. `peer` is what the agent knows of the peer;
/// `database` is the replicated database file, if replication is set up.
pub async fn run_checks(
    config: &NodeConfig,
    key_fingerprint: &str,
    peer: &PeerView,
    database: Option<&Path>,
) -> CheckReport {
    let mut report = CheckReport::default();
    let net = &config.network;
    let mut names: Vec<(String, IpAddr, &str)> = Vec::new();
    if let Some(shared) = &config.node.shared_hostname {
        names.push((
            shared.clone(),
            net.shared_address.addr(),
            "the shared address",
        ));
    } else {
        report.push(
            "shared hostname",
            Verdict::Fail,
            "[node] shared_hostname is not set: give the shared (eth0) hostname so that it can be checked",
        );
    }
    names.push((
        config.node.hostname.clone(),
        net.node_address.addr(),
        "this node's address",
    ));
    match &peer.facts {
        Some(facts) => names.push((
            facts.hostname.clone(),
            net.peer_address,
            "the peer's address",
        )),
        None => report.push("peer hostname", Verdict::Unknown, peer_missing(peer)),
    }
    // All look-ups at once: a resolver that does not answer costs one timeout.
    let lookups = names
        .iter()
        .map(|(name, addr, what)| dns(name, *addr, what));
    for (forward, reverse) in futures::future::join_all(lookups).await {
        report.items.push(forward);
        report.items.push(reverse);
    }
    match (peer.connected, peer.clock_offset_ms) {
        (true, Some(offset)) if offset.abs() <= MAX_CLOCK_OFFSET_MS => report.push(
            "clock offset to the peer",
            Verdict::Pass,
            format!("{offset:+.1} ms"),
        ),
        (true, Some(offset)) => report.push(
            "clock offset to the peer",
            Verdict::Fail,
            format!(
                "{offset:+.1} ms, more than {MAX_CLOCK_OFFSET_MS:.0} ms: synchronize both clocks with NTP"
            ),
        ),
        _ => report.push("clock offset to the peer", Verdict::Unknown, peer_missing(peer)),
    }
    match (peer.connected, peer.datagrams) {
        (true, true) => report.push(
            "heartbeat datagrams",
            Verdict::Pass,
            "the peer's UDP heartbeats arrive; they decide when the peer is lost",
        ),
        (true, false) => report.push(
            "heartbeat datagrams",
            Verdict::Fail,
            format!(
                "the peer link is up but no heartbeat datagram from {} arrived: open UDP \
                 port {} between the node addresses (TCP alone works, but a busy link can \
                 then look like a dead peer), or the peer runs an earlier release",
                net.peer_address,
                config
                    .peer
                    .as_ref()
                    .map_or(tandem_peer::DEFAULT_PORT, |p| p.port)
            ),
        ),
        _ => report.push("heartbeat datagrams", Verdict::Unknown, peer_missing(peer)),
    }
    match &peer.facts {
        Some(facts) => {
            let ours = net.shared_address.to_string();
            if facts.shared_address == ours {
                report.push("same shared address", Verdict::Pass, format!("both {ours}"));
            } else {
                report.push(
                    "same shared address",
                    Verdict::Fail,
                    format!(
                        "this node has {ours}, the peer {}: run `failover set-deployment failover` with the same --shared-address on both",
                        facts.shared_address
                    ),
                );
            }
            let me = config.node.id;
            if facts.node != me {
                report.push(
                    "distinct node ids",
                    Verdict::Pass,
                    format!("this node {me}, the peer {}", facts.node),
                );
            } else {
                report.push(
                    "distinct node ids",
                    Verdict::Fail,
                    format!(
                        "both nodes are node {me}: give one of them --node-id {}",
                        config.node.id.peer()
                    ),
                );
            }
            if facts.site == config.node.site {
                report.push("same site", Verdict::Pass, format!("site {}", facts.site));
            } else {
                report.push(
                    "same site",
                    Verdict::Fail,
                    format!(
                        "this node is in site {}, the peer in site {}",
                        config.node.site, facts.site
                    ),
                );
            }
            if facts.key_fingerprint == key_fingerprint && peer.connected {
                report.push(
                    "same site key",
                    Verdict::Pass,
                    format!("fingerprint {key_fingerprint}; the peer link authenticates with it"),
                );
            } else if facts.key_fingerprint != key_fingerprint {
                report.push(
                    "same site key",
                    Verdict::Fail,
                    format!(
                        "this node's key is {key_fingerprint}, the peer's {}: copy one key file to both nodes",
                        facts.key_fingerprint
                    ),
                );
            } else {
                report.push("same site key", Verdict::Unknown, peer_missing(peer));
            }
        }
        None => {
            for check in [
                "same shared address",
                "distinct node ids",
                "same site",
                "same site key",
            ] {
                report.push(check, Verdict::Unknown, peer_missing(peer));
            }
        }
    }
    match database {
        Some(path) => match std::fs::metadata(path) {
            Ok(meta) => {
                let mb = meta.len() as f64 / f64::from(1u32 << 20);
                match config.failover.database_size_alarm_mb {
                    Some(limit) if meta.len() > limit.saturating_mul(1 << 20) => report.push(
                        "database size",
                        Verdict::Fail,
                        format!(
                            "{} is {mb:.1} MB, over the {limit} MB of [failover] database_size_alarm_mb",
                            path.display()
                        ),
                    ),
                    Some(limit) => report.push(
                        "database size",
                        Verdict::Pass,
                        format!("{mb:.1} MB of at most {limit} MB ({})", path.display()),
                    ),
                    None => report.push(
                        "database size",
                        Verdict::Pass,
                        format!(
                            "{mb:.1} MB ({}); set [failover] database_size_alarm_mb for an alarm",
                            path.display()
                        ),
                    ),
                }
            }
            Err(e) => report.push(
                "database size",
                Verdict::Unknown,
                format!("cannot read {}: {e}", path.display()),
            ),
        },
        None => report.push(
            "database size",
            Verdict::Unknown,
            "replication is not initialized here: run `mp_replication init`",
        ),
    }
    if config.failover.auto_failover {
        let probe = &config.probe;
        match config.failover.fits_probe(probe) {
            Ok(()) => report.push(
                "probe timing",
                Verdict::Pass,
                format!(
                    "a silent probe takes {} ms, within the {} ms before the peer counts as lost",
                    probe.duration().as_millis(),
                    config.failover.silence_limit().as_millis()
                ),
            ),
            Err(e) => report.push("probe timing", Verdict::Fail, e),
        }
    }
    if let Some(witness) = &config.witness {
        check_witness(&mut report, config, witness).await;
    }
    report
}

/// The witness: members reached, the site's prefix readable and writable.
async fn check_witness(
    report: &mut CheckReport,
    config: &NodeConfig,
    witness: &tandem_witness::WitnessConfig,
) {
    let (site, node) = (config.node.site, config.node.id);
    let checked = match tandem_witness::Witness::connect(witness.clone(), site, node).await {
        Ok(mut client) => client.check().await,
        Err(e) => Err(e),
    };
    match checked {
        Ok(found) => {
            let up = found.members.iter().filter(|m| m.up).count();
            let total = found.members.len();
            let down: Vec<&str> = found
                .members
                .iter()
                .filter(|m| !m.up)
                .map(|m| m.endpoint.as_str())
                .collect();
            let verdict = if up * 2 > total {
                Verdict::Pass
            } else {
                Verdict::Fail
            };
            let detail = if down.is_empty() {
                format!("{up} of {total} members answer")
            } else {
                format!(
                    "{up} of {total} members answer; not answering: {}",
                    down.join(", ")
                )
            };
            report.push("witness members", verdict, detail);
            let prefix = format!("{}/{site}", witness.prefix);
            if found.readable && found.writable {
                report.push(
                    "witness key prefix",
                    Verdict::Pass,
                    format!("{prefix} is readable and writable"),
                );
            } else {
                report.push(
                    "witness key prefix",
                    Verdict::Fail,
                    format!(
                        "{prefix}: {}; grant this node's etcd user read and write on it",
                        found
                            .problem
                            .unwrap_or_else(|| "not readable or not writable".into())
                    ),
                );
            }
        }
        Err(e) => {
            report.push(
                "witness members",
                Verdict::Fail,
                format!("{e}: check [witness] endpoints and that etcd runs"),
            );
            report.push(
                "witness key prefix",
                Verdict::Unknown,
                "the witness does not answer",
            );
        }
    }
    // etcd reports no clock; the lease deadlines do not need one.
    report.push(
        "witness clock",
        Verdict::Pass,
        "no clock to compare: each node times its lease on its own monotonic clock, \
         from when it sent the keep-alive, so clock offsets cannot shorten a deadline",
    );
}

fn peer_missing(peer: &PeerView) -> String {
    peer.missing.clone().unwrap_or_else(|| {
        "the peer link is down: start the peer's agent and check `failover status`".into()
    })
}

/// Forward and reverse look-ups of `name`, which should be `addr`.
async fn dns(name: &str, addr: IpAddr, what: &str) -> (CheckItem, CheckItem) {
    let forward_check = format!("forward DNS {name}");
    let lookup = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::net::lookup_host((name.to_owned(), 0)),
    )
    .await;
    let forward = match lookup {
        Ok(Ok(found)) => {
            let found: Vec<IpAddr> = found.map(|a| a.ip()).collect();
            if found.contains(&addr) {
                item(forward_check, Verdict::Pass, format!("{addr} ({what})"))
            } else {
                item(
                    forward_check,
                    Verdict::Fail,
                    format!(
                        "resolves to {}, not {addr} ({what}): fix the DNS (or /etc/hosts) entry",
                        join(&found)
                    ),
                )
            }
        }
        Ok(Err(e)) => item(
            forward_check,
            Verdict::Fail,
            format!("does not resolve ({e}): add it to DNS (or /etc/hosts) as {addr}"),
        ),
        Err(_) => item(
            forward_check,
            Verdict::Fail,
            "no answer within 5 s: check /etc/resolv.conf",
        ),
    };
    let reverse_check = format!("reverse DNS {addr}");
    let reverse = tokio::time::timeout(
        Duration::from_secs(5),
        tokio::task::spawn_blocking(move || reverse_lookup(addr)),
    )
    .await;
    let reverse = match reverse {
        Ok(Ok(Some(found))) if found.eq_ignore_ascii_case(name) => {
            item(reverse_check, Verdict::Pass, found)
        }
        Ok(Ok(Some(found))) => item(
            reverse_check,
            Verdict::Fail,
            format!("names {found}, not {name}: fix the PTR record (or /etc/hosts)"),
        ),
        Err(_) => item(
            reverse_check,
            Verdict::Fail,
            "no answer within 5 s: check /etc/resolv.conf",
        ),
        _ => item(
            reverse_check,
            Verdict::Fail,
            format!("has no name: add a PTR record (or /etc/hosts entry) for {name}"),
        ),
    };
    (forward, reverse)
}

fn item(check: String, verdict: Verdict, detail: impl Into<String>) -> CheckItem {
    CheckItem {
        check,
        verdict,
        detail: detail.into(),
    }
}

fn join(addrs: &[IpAddr]) -> String {
    addrs
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// The name of `addr` from the system's resolver (`getnameinfo` with
/// `NI_NAMEREQD`: an address without a name is `None`, not its digits).
fn reverse_lookup(addr: IpAddr) -> Option<String> {
    let sock = socket2::SockAddr::from(std::net::SocketAddr::new(addr, 0));
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: `sock` is a valid socket address of `sock.len()` bytes, `host` is a
    // writable buffer of the length passed, and no service buffer is requested.
    let rc = unsafe {
        libc::getnameinfo(
            sock.as_ptr().cast(),
            sock.len(),
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if rc != 0 {
        return None;
    }
    // SAFETY: getnameinfo succeeded, so `host` holds a NUL-terminated string.
    let name = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    name.to_str().ok().map(str::to_owned)
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn the_report_counts_each_verdict() {
        let mut report = CheckReport::default();
        report.push("a", Verdict::Pass, "fine");
        report.push("bb", Verdict::Fail, "fix it");
        report.push("c", Verdict::Unknown, "no peer");
        let text = report.render();
        assert!(text.contains("ok    a   fine"), "{text}");
        assert!(text.contains("FAIL  bb  fix it"), "{text}");
        assert!(text.ends_with("3 checks: 1 passed, 1 failed, 1 could not be checked\n"));
        assert!(!report.passed());
    }

    #[test]
    fn peer_facts_carry_ids_as_plain_numbers() {
        let facts = PeerFacts {
            node: NodeId::Two,
            site: SiteId::new(7).unwrap(),
            hostname: "meetings2.example.com".into(),
            node_address: IpAddr::from([192, 0, 2, 12]),
            shared_address: "192.0.2.10/24".into(),
            shared_hostname: None,
            key_fingerprint: "ab".into(),
        };
        let json = serde_json::to_value(&facts).unwrap();
        assert_eq!(
            (json["node"].as_u64(), json["site"].as_u64()),
            (Some(2), Some(7))
        );
        assert_eq!(serde_json::from_value::<PeerFacts>(json).unwrap(), facts);
    }

    #[test]
    fn loopback_has_a_name_and_a_missing_name_fails() {
        // /etc/hosts names 127.0.0.1 on every Debian system.
        assert!(reverse_lookup(IpAddr::from([127, 0, 0, 1])).is_some());
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let (forward, _) = rt.block_on(dns(
            "no-such-host.invalid",
            IpAddr::from([192, 0, 2, 10]),
            "the shared address",
        ));
        assert_eq!(forward.verdict, Verdict::Fail);
        assert!(
            forward.detail.contains("does not resolve"),
            "{}",
            forward.detail
        );
    }
}
