//! Announcements after a claim: gratuitous ARP (IPv4) and unsolicited
//! neighbour advertisements (IPv6), so that every host on the segment that
//! has the address cached switches to this node's hardware address at once.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use tandem_probe::packet::arp::ArpFrame;
use tandem_probe::packet::ndp::NeighbourAdvert;
use tandem_probe::{RawLink, Sent};

use crate::{Error, Interfaces, Result};

/// Most rounds one announcement may send.
pub const MAX_ANNOUNCE_COUNT: u32 = 100;

/// How often to announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct AnnounceConfig {
    /// Rounds to send (at least 1). A round is a gratuitous ARP request and a
    /// gratuitous ARP reply for IPv4, one unsolicited neighbour advertisement
    /// for IPv6. Repeats cover frames lost on the way.
    pub count: u32,
    /// Time between the starts of two rounds.
    pub interval: Duration,
}

impl Default for AnnounceConfig {
    /// Three rounds, 500 ms apart (the first at once).
    fn default() -> Self {
        AnnounceConfig {
            count: 3,
            interval: Duration::from_millis(500),
        }
    }
}

impl AnnounceConfig {
    /// Checks the values: at least one round, at most [`MAX_ANNOUNCE_COUNT`],
    /// at most a minute between rounds.
    pub fn validate(&self) -> Result<()> {
        let invalid = |reason: String| {
            Err(Error::InvalidConfig {
                what: "announce settings",
                reason,
            })
        };
        if self.count == 0 {
            return invalid("count is 0: nothing would be announced".into());
        }
        if self.count > MAX_ANNOUNCE_COUNT {
            return invalid(format!(
                "count {} is more than {MAX_ANNOUNCE_COUNT}",
                self.count
            ));
        }
        if self.interval > Duration::from_secs(60) {
            return invalid(format!(
                "interval {:?} is longer than a minute",
                self.interval
            ));
        }
        Ok(())
    }
}

/// What an announcement sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Announced {
    /// Rounds made.
    pub rounds: u32,
    /// Frames the kernel took.
    pub frames_sent: u32,
    /// Frames the link could not carry (interface down or without carrier).
    pub frames_not_carried: u32,
}

impl Interfaces {
    /// Announces that `addr` is now at this node's interface `iface`: for IPv4
    /// a gratuitous ARP request and a gratuitous ARP reply per round (hosts
    /// differ in which form updates their caches), for IPv6 an unsolicited
    /// neighbour advertisement with the override flag. The first round goes
    /// out at once; the call returns after the last.
    ///
    /// Refuses with [`Error::NotHeld`] unless `iface` holds `addr`: announcing
    /// an address this node does not have would steal it from its holder.
    /// Needs `CAP_NET_RAW`.
    pub async fn announce(
        &self,
        addr: IpAddr,
        iface: &str,
        config: AnnounceConfig,
    ) -> Result<Announced> {
        config.validate()?;
        if !self.holds(iface, addr).await? {
            return Err(Error::NotHeld {
                addr,
                iface: iface.to_string(),
            });
        }
        let mut link = RawLink::open(iface)?;
        let own = link.mac();
        let frames: Vec<Vec<u8>> = match addr {
            IpAddr::V4(v4) => vec![
                ArpFrame::gratuitous_request(own, v4).encode().to_vec(),
                ArpFrame::gratuitous_reply(own, v4).encode().to_vec(),
            ],
            IpAddr::V6(v6) => vec![NeighbourAdvert::unsolicited(own, v6).encode()],
        };
        let start = Instant::now();
        let mut report = Announced::default();
        for round in 0..config.count {
            if round > 0 {
                let due = start
                    .checked_add(config.interval.saturating_mul(round))
                    .unwrap_or(start);
                tokio::time::sleep_until(due.into()).await;
            }
            for frame in &frames {
                let sent = match link.send(frame) {
                    Ok(sent) => sent,
                    Err(e) => {
                        link.close_in_background();
                        return Err(e.into());
                    }
                };
                match sent {
                    Sent::Yes => report.frames_sent += 1,
                    Sent::LinkDown => report.frames_not_carried += 1,
                }
            }
            report.rounds += 1;
        }
        link.close_in_background();
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn announce_settings_are_checked() {
        assert!(AnnounceConfig::default().validate().is_ok());
        let none = AnnounceConfig {
            count: 0,
            ..AnnounceConfig::default()
        };
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("count is 0")
        );
        let slow = AnnounceConfig {
            interval: Duration::from_secs(61),
            ..AnnounceConfig::default()
        };
        assert!(slow.validate().is_err());
    }
}
