//! The probes: ARP (RFC 5227), ICMP echo, TCP connect, run by a schedule.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Instant;

use socket2::{Domain, Protocol, Socket, Type};

use crate::config::Schedule;
use crate::link::{RawLink, link_cannot_carry};
use crate::outcome::Answers;
use crate::packet::arp::ArpFrame;
use crate::packet::icmp::{Echo, EchoKind, IpVersion, Ipv4Datagram, PROTO_ICMP};
use crate::{Error, Outcome, ProbeConfig, Responder, Result};

/// Data carried in every echo request, to recognise tandem's probes in a capture.
const ECHO_PAYLOAD: &[u8] = b"tandem-probe";

/// Runs probes with one [`ProbeConfig`].
///
/// Every probe creates its sockets in the network namespace of the calling
/// thread. Probes need a tokio runtime (either flavour).
#[derive(Debug, Clone, Copy, Default)]
pub struct Prober {
    config: ProbeConfig,
}

impl Prober {
    /// A prober with a checked configuration.
    pub fn new(config: ProbeConfig) -> Result<Prober> {
        config.validate()?;
        Ok(Prober { config })
    }

    /// The configuration.
    pub fn config(&self) -> ProbeConfig {
        self.config
    }

    /// ARP probe (RFC 5227 section 2.1.1) for `target` on interface `iface`:
    /// broadcast requests with sender hardware address the interface's and
    /// sender IP `0.0.0.0`, so no neighbour cache learns from them. Any ARP
    /// packet whose sender IP is `target` from another hardware address
    /// answers; the outcome names every distinct hardware address that did.
    pub async fn arp(&self, iface: &str, target: Ipv4Addr) -> Result<Outcome> {
        check_ipv4_target(target)?;
        // Opened here so that the socket lives in the caller's namespace; the
        // blocking reads then run on tokio's blocking pool.
        let mut link = RawLink::open(iface)?;
        let config = self.config;
        tokio::task::spawn_blocking(move || {
            let outcome = arp_blocking(&mut link, target, config);
            link.close_in_background();
            outcome
        })
        .await
        .map_err(|e| Error::Socket {
            action: format!("run the ARP probe for {target}"),
            source: io::Error::other(e),
        })?
    }

    /// ICMP echo (ICMPv6 echo for IPv6) to `target`, routed as the kernel
    /// routes it. Replies are matched by identifier and sequence number.
    pub async fn icmp(&self, target: IpAddr) -> Result<Outcome> {
        icmp_probe(self.config, target, None).await
    }

    /// TCP connect to `target`. A completed handshake is
    /// [`Outcome::Answered`], a reset [`Outcome::Refused`].
    pub async fn tcp(&self, target: SocketAddr) -> Result<Outcome> {
        check_ip_target(target.ip())?;
        let c = self.config;
        let start = Instant::now();
        let mut attempts = 0u32;
        for k in 0..=c.retries {
            let due = start
                .checked_add(c.interval.saturating_mul(k))
                .unwrap_or(start);
            tokio::time::sleep_until(due.into()).await;
            attempts = attempts.saturating_add(1);
            let sent = Instant::now();
            let result =
                tokio::time::timeout(c.timeout, tokio::net::TcpStream::connect(target)).await;
            match result {
                Ok(Ok(_stream)) => {
                    return Ok(Outcome::Answered {
                        answers: vec![crate::Answer {
                            by: Responder::Ip(target.ip()),
                            rtt: sent.elapsed(),
                        }],
                        attempts,
                    });
                }
                Ok(Err(e)) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    return Ok(Outcome::Refused {
                        by: target.ip(),
                        rtt: sent.elapsed(),
                        attempts,
                    });
                }
                Ok(Err(e)) if link_cannot_carry(&e) => {}
                Ok(Err(e)) => return Err(Error::from_io(format!("connect to {target}"), e)),
                Err(_elapsed) => {}
            }
        }
        Ok(Outcome::Silent { tried: attempts })
    }

    /// Is `addr` held by some host on `iface`'s segment? For IPv4 an ARP probe
    /// and ICMP echo run at the same time and their answers are merged (any
    /// answer means held); for IPv6 ICMPv6 echo leaves through `iface`.
    ///
    /// A node that holds `addr` itself gets ICMP answers from itself; to look
    /// for *another* holder use [`Prober::arp`].
    pub async fn address(&self, iface: &str, addr: IpAddr) -> Result<Outcome> {
        match addr {
            IpAddr::V4(v4) => {
                let (arp, icmp) = tokio::join!(
                    self.arp(iface, v4),
                    icmp_probe(self.config, addr, Some(iface))
                );
                Ok(arp?.merge(icmp?))
            }
            IpAddr::V6(_) => icmp_probe(self.config, addr, Some(iface)).await,
        }
    }

    /// The isolation check before a claim: the reference address (by default
    /// the gateway) must answer on `iface`. [`Outcome::Silent`] means this node
    /// is cut off and must not claim the shared address. Same probe as
    /// [`Prober::address`].
    pub async fn isolation_check(&self, iface: &str, reference: IpAddr) -> Result<Outcome> {
        self.address(iface, reference).await
    }
}

fn arp_blocking(link: &mut RawLink, target: Ipv4Addr, config: ProbeConfig) -> Result<Outcome> {
    let own = link.mac();
    let probe = ArpFrame::probe(own, target).encode();
    let mut schedule = Schedule::new(config, Instant::now());
    let mut answers = Answers::default();
    loop {
        let now = Instant::now();
        if schedule.finished(now) {
            break;
        }
        if schedule.due(now) {
            // An attempt the link cannot carry counts as tried and unanswered.
            link.send(&probe)?;
            schedule.sent(now);
            continue;
        }
        let heard = link.recv_until(schedule.wake_at(), |frame| {
            let arp = ArpFrame::decode(frame).ok()?;
            arp.answers(own, target)
                .then(|| (arp.sender_mac, Instant::now()))
        })?;
        if let Some((mac, at)) = heard {
            let since = schedule.last_sent().unwrap_or(at);
            answers.record(Responder::Mac(mac), at.saturating_duration_since(since));
            schedule.answered();
        }
    }
    Ok(answers.into_outcome(schedule.attempts()))
}

async fn icmp_probe(config: ProbeConfig, target: IpAddr, iface: Option<&str>) -> Result<Outcome> {
    check_ip_target(target)?;
    let (domain, protocol, version) = match target {
        IpAddr::V4(_) => (Domain::IPV4, Protocol::ICMPV4, IpVersion::V4),
        IpAddr::V6(_) => (Domain::IPV6, Protocol::ICMPV6, IpVersion::V6),
    };
    let socket = Socket::new(domain, Type::RAW, Some(protocol))
        .map_err(|e| Error::from_io("open a raw ICMP socket", e))?;
    socket
        .set_nonblocking(true)
        .map_err(|e| Error::from_io("make the ICMP socket non-blocking", e))?;
    if let Some(name) = iface {
        crate::link::find_interface(name)?;
        socket
            .bind_device(Some(name.as_bytes()))
            .map_err(|e| Error::from_io(format!("bind the ICMP socket to {name}"), e))?;
    }
    // Connected, the socket only sees packets from the target; with no route
    // to it every attempt counts as unanswered.
    let routable = match socket.connect(&SocketAddr::new(target, 0).into()) {
        Ok(()) => true,
        Err(e) if link_cannot_carry(&e) => false,
        Err(e) => return Err(Error::from_io(format!("address ICMP to {target}"), e)),
    };
    // tokio drives a raw socket like any datagram socket: send and recv on a
    // connected socket are the same system calls.
    let socket = tokio::net::UdpSocket::from_std(std::net::UdpSocket::from(socket))
        .map_err(|e| Error::from_io("register the ICMP socket with tokio", e))?;

    let ident = next_ident();
    let mut schedule = Schedule::new(config, Instant::now());
    let mut sent_at: Vec<(u16, Instant)> = Vec::new();
    let mut answers = Answers::default();
    let mut buf = vec![0u8; 2048];
    loop {
        let now = Instant::now();
        if schedule.finished(now) {
            break;
        }
        if schedule.due(now) {
            let seq = u16::try_from(schedule.sent(now) % 0x1_0000).unwrap_or_default();
            sent_at.push((seq, now));
            if routable {
                let request = Echo {
                    kind: EchoKind::Request,
                    ident,
                    seq,
                    payload: ECHO_PAYLOAD.to_vec(),
                };
                match socket.send(&request.encode(version)).await {
                    Ok(_) => {}
                    Err(e) if link_cannot_carry(&e) => {}
                    Err(e) => return Err(Error::from_io(format!("send ICMP echo to {target}"), e)),
                }
            }
            continue;
        }
        let wake = tokio::time::Instant::from_std(schedule.wake_at());
        tokio::select! {
            () = tokio::time::sleep_until(wake) => {}
            read = socket.recv(&mut buf) => {
                let received = Instant::now();
                match read {
                    Ok(len) => {
                        let seq = buf
                            .get(..len)
                            .and_then(|bytes| echo_reply_seq(bytes, version, ident, target));
                        let sent = seq.and_then(|s| sent_at.iter().find(|(q, _)| *q == s));
                        if let Some((_, at)) = sent {
                            answers.record(Responder::Ip(target), received.saturating_duration_since(*at));
                            schedule.answered();
                        }
                    }
                    // An ICMP error for an earlier attempt (host unreachable):
                    // that attempt is unanswered.
                    Err(e) if link_cannot_carry(&e) || e.kind() == io::ErrorKind::ConnectionRefused => {}
                    Err(e) => return Err(Error::from_io(format!("receive ICMP from {target}"), e)),
                }
            }
        }
    }
    Ok(answers.into_outcome(schedule.attempts()))
}

/// The sequence number of an echo reply to our identifier from `target`.
fn echo_reply_seq(bytes: &[u8], version: IpVersion, ident: u16, target: IpAddr) -> Option<u16> {
    let icmp = match version {
        IpVersion::V4 => {
            let datagram = Ipv4Datagram::parse(bytes).ok()?;
            if datagram.protocol != PROTO_ICMP || IpAddr::V4(datagram.source) != target {
                return None;
            }
            datagram.payload
        }
        // Raw ICMPv6 sockets deliver the message without IP header; the
        // connected socket only hears `target`.
        IpVersion::V6 => bytes,
    };
    let echo = Echo::decode(icmp, version).ok()?;
    (echo.kind == EchoKind::Reply && echo.ident == ident).then_some(echo.seq)
}

/// A fresh echo identifier for each probe of this process.
fn next_ident() -> u16 {
    static COUNTER: AtomicU16 = AtomicU16::new(0);
    let pid = std::process::id().to_be_bytes();
    let base = u16::from_be_bytes([pid[2], pid[3]]);
    base.wrapping_add(COUNTER.fetch_add(0x9e37, Ordering::Relaxed))
}

fn check_ip_target(target: IpAddr) -> Result<()> {
    let reason = if target.is_unspecified() {
        Some("the unspecified address cannot answer")
    } else if target.is_multicast() {
        Some("a multicast address is not a host")
    } else {
        None
    };
    match (reason, target) {
        (Some(r), _) => Err(invalid(target, r)),
        (None, IpAddr::V4(v4)) if v4.is_broadcast() => {
            Err(invalid(target, "a broadcast address is not a host"))
        }
        _ => Ok(()),
    }
}

fn check_ipv4_target(target: Ipv4Addr) -> Result<()> {
    check_ip_target(IpAddr::V4(target))
}

fn invalid(target: IpAddr, reason: &str) -> Error {
    Error::InvalidTarget {
        target: target.to_string(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::packet::icmp::EchoKind;

    #[test]
    fn replies_match_by_identifier_and_source() {
        let target: IpAddr = "192.0.2.10".parse().unwrap();
        let reply = Echo {
            kind: EchoKind::Reply,
            ident: 77,
            seq: 3,
            payload: ECHO_PAYLOAD.to_vec(),
        }
        .encode(IpVersion::V4);
        let mut packet = vec![
            0x45, 0, 0, 0, 0, 0, 0, 0, 64, 1, 0, 0, 192, 0, 2, 10, 192, 0, 2, 100,
        ];
        let total = u16::try_from(packet.len() + reply.len())
            .unwrap()
            .to_be_bytes();
        packet[2..4].copy_from_slice(&total);
        packet.extend_from_slice(&reply);
        assert_eq!(echo_reply_seq(&packet, IpVersion::V4, 77, target), Some(3));
        assert_eq!(
            echo_reply_seq(&packet, IpVersion::V4, 78, target),
            None,
            "another prober's reply"
        );
        let other: IpAddr = "192.0.2.11".parse().unwrap();
        assert_eq!(
            echo_reply_seq(&packet, IpVersion::V4, 77, other),
            None,
            "another host's reply"
        );
    }

    #[test]
    fn identifiers_differ_between_probes() {
        let a = next_ident();
        let b = next_ident();
        assert_ne!(a, b);
    }

    #[test]
    fn hosts_only() {
        for bad in ["0.0.0.0", "255.255.255.255", "224.0.0.1", "::", "ff02::1"] {
            let err = check_ip_target(bad.parse().unwrap()).unwrap_err();
            assert!(
                err.to_string().starts_with(&format!("cannot probe {bad}")),
                "{err}"
            );
        }
        assert!(check_ip_target("192.0.2.10".parse().unwrap()).is_ok());
    }

    #[tokio::test]
    async fn a_zero_timeout_is_refused_before_any_socket() {
        let err = Prober::new(ProbeConfig {
            timeout: std::time::Duration::ZERO,
            ..ProbeConfig::default()
        })
        .unwrap_err();
        assert!(matches!(err, Error::InvalidConfig { .. }));
    }
}

#[cfg(test)]
mod send_tests {
    use super::*;

    #[test]
    fn probes_can_run_on_a_multi_threaded_runtime() {
        fn is_send_future<T: Send>(_: &T) {}
        fn check(p: &Prober) {
            let v4 = Ipv4Addr::new(192, 0, 2, 10);
            is_send_future(&p.arp("eth0", v4));
            is_send_future(&p.icmp(IpAddr::V4(v4)));
            is_send_future(&p.tcp(SocketAddr::new(IpAddr::V4(v4), 80)));
            is_send_future(&p.address("eth0", IpAddr::V4(v4)));
        }
        // Checked by the compiler; nothing to run.
        let _ = check;
    }
}
