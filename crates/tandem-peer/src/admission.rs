//! Which pending handshakes a listener keeps: a pure bookkeeping of connections that
//! have not yet proved they hold the site key, so that a flood of keyless connections
//! cannot keep a keyed newcomer out.
//!
//! The rules:
//!
//! - every connection is admitted: a full set makes room by closing an older pending
//!   one, never by turning the newcomer away (a flood that holds the set would otherwise
//!   starve the peer for as long as it lasts);
//! - one source (an IPv4 address, or an IPv6 /64) holds at most
//!   [`Limits::per_source`] pending handshakes: a newcomer from a source at its limit
//!   replaces that source's oldest;
//! - all other sources together hold at most [`Limits::total`]: a newcomer to a full
//!   set replaces the oldest pending handshake of the source that holds the most;
//! - connections from the expected peer's address (when the listener knows it) have a
//!   lane of their own, which other sources can never take from;
//! - a connection whose first handshake message authenticated under the site key is
//!   promoted: it leaves the set and can no longer be closed to make room.

use std::collections::{BTreeMap, HashMap};
use std::net::IpAddr;

/// The limits of an [`Admission`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Limits {
    /// Pending handshakes from all sources but the expected peer together.
    pub(crate) total: usize,
    /// Pending handshakes from one source.
    pub(crate) per_source: usize,
}

/// Where a connection comes from, as far as the limits are concerned: an IPv4 address
/// (IPv4-mapped IPv6 addresses included), or the /64 of an IPv6 address (one host on a
/// LAN can have any address of its /64).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct Source(IpAddr);

impl Source {
    pub(crate) fn of(ip: IpAddr) -> Source {
        match ip.to_canonical() {
            IpAddr::V4(v4) => Source(IpAddr::V4(v4)),
            IpAddr::V6(v6) => {
                let prefix = u128::from(v6) & !u128::from(u64::MAX);
                Source(IpAddr::V6(prefix.into()))
            }
        }
    }
}

impl std::fmt::Display for Source {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// A pending handshake's number: increasing, so a smaller ticket is an older one.
pub(crate) type Ticket = u64;

/// What [`Admission::admit`] decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Admitted {
    /// The newcomer's ticket.
    pub(crate) ticket: Ticket,
    /// Whether it came from the expected peer's address.
    pub(crate) from_peer: bool,
    /// The pending handshake closed to make room, and where it came from.
    pub(crate) evicted: Option<(Ticket, Source)>,
}

/// The pending handshakes of one listener.
#[derive(Debug)]
pub(crate) struct Admission {
    limits: Limits,
    peer: Option<Source>,
    /// Pending handshakes by age.
    pending: BTreeMap<Ticket, Source>,
    /// How many each source has pending.
    per_source: HashMap<Source, usize>,
    /// How many are pending from sources other than the peer.
    strangers: usize,
    next: Ticket,
}

impl Admission {
    /// An empty set; `peer` is the expected peer's address, if known.
    pub(crate) fn new(limits: Limits, peer: Option<IpAddr>) -> Admission {
        Admission {
            limits: Limits {
                total: limits.total.max(1),
                per_source: limits.per_source.max(1),
            },
            peer: peer.map(Source::of),
            pending: BTreeMap::new(),
            per_source: HashMap::new(),
            strangers: 0,
            next: 0,
        }
    }

    /// Admits a connection from `ip`, closing an older pending one if needed.
    pub(crate) fn admit(&mut self, ip: IpAddr) -> Admitted {
        let source = Source::of(ip);
        let from_peer = self.peer == Some(source);
        let count = self.per_source.get(&source).copied().unwrap_or(0);
        let victim = if count >= self.limits.per_source {
            self.oldest_of(source)
        } else if !from_peer && self.strangers >= self.limits.total {
            self.oldest_of_the_largest_stranger()
        } else {
            None
        };
        let evicted = victim.and_then(|ticket| self.remove(ticket).map(|source| (ticket, source)));
        let ticket = self.next;
        self.next = self.next.saturating_add(1);
        self.pending.insert(ticket, source);
        *self.per_source.entry(source).or_insert(0) += 1;
        if !from_peer {
            self.strangers += 1;
        }
        Admitted {
            ticket,
            from_peer,
            evicted,
        }
    }

    /// The handshake of `ticket` authenticated: it can no longer be evicted. False if
    /// it is no longer pending (it was evicted or finished).
    pub(crate) fn promote(&mut self, ticket: Ticket) -> bool {
        self.remove(ticket).is_some()
    }

    /// The handshake of `ticket` ended (in any way).
    pub(crate) fn finish(&mut self, ticket: Ticket) {
        self.remove(ticket);
    }

    /// Pending handshakes (not promoted).
    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.pending.len()
    }

    /// Whether `ticket` is pending.
    #[cfg(test)]
    pub(crate) fn contains(&self, ticket: Ticket) -> bool {
        self.pending.contains_key(&ticket)
    }

    /// How many are pending from `ip`'s source.
    #[cfg(test)]
    pub(crate) fn count(&self, ip: IpAddr) -> usize {
        self.per_source.get(&Source::of(ip)).copied().unwrap_or(0)
    }

    /// How many are pending from sources other than the peer.
    #[cfg(test)]
    pub(crate) fn strangers(&self) -> usize {
        self.strangers
    }

    fn remove(&mut self, ticket: Ticket) -> Option<Source> {
        let source = self.pending.remove(&ticket)?;
        if let Some(count) = self.per_source.get_mut(&source) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                self.per_source.remove(&source);
            }
        }
        if self.peer != Some(source) {
            self.strangers = self.strangers.saturating_sub(1);
        }
        Some(source)
    }

    fn oldest_of(&self, source: Source) -> Option<Ticket> {
        self.pending
            .iter()
            .find(|(_, s)| **s == source)
            .map(|(ticket, _)| *ticket)
    }

    /// The oldest pending handshake of the stranger source holding the most; among
    /// sources holding equally many, the one with the oldest.
    fn oldest_of_the_largest_stranger(&self) -> Option<Ticket> {
        let most = self
            .per_source
            .iter()
            .filter(|(source, _)| self.peer != Some(**source))
            .map(|(_, count)| *count)
            .max()?;
        self.pending
            .iter()
            .find(|(_, source)| {
                self.peer != Some(**source) && self.per_source.get(*source) == Some(&most)
            })
            .map(|(ticket, _)| *ticket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const LIMITS: Limits = Limits {
        total: 6,
        per_source: 3,
    };

    fn v4(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(192, 0, 2, last))
    }

    #[test]
    fn a_source_at_its_limit_replaces_its_own_oldest() {
        let mut a = Admission::new(LIMITS, None);
        let first = a.admit(v4(100));
        a.admit(v4(100));
        a.admit(v4(100));
        let fourth = a.admit(v4(100));
        assert_eq!(fourth.evicted, Some((first.ticket, Source::of(v4(100)))));
        assert_eq!(a.count(v4(100)), 3);
    }

    #[test]
    fn a_full_set_makes_room_at_the_largest_source_not_at_the_newcomer() {
        let mut a = Admission::new(LIMITS, None);
        let peer = a.admit(v4(11));
        for _ in 0..3 {
            a.admit(v4(100));
        }
        a.admit(v4(101));
        a.admit(v4(101));
        assert_eq!(a.strangers(), 6);
        let newcomer = a.admit(v4(12));
        let (evicted, from) = newcomer.evicted.unwrap();
        assert_eq!(from, Source::of(v4(100)));
        assert!(evicted > peer.ticket);
        assert!(a.contains(peer.ticket), "the lone, oldest one stays");
        assert!(a.contains(newcomer.ticket));
    }

    #[test]
    fn the_peer_has_a_lane_of_its_own() {
        let mut a = Admission::new(LIMITS, Some(v4(11)));
        let peer = a.admit(v4(11));
        assert!(peer.from_peer);
        for i in 0..100u8 {
            let admitted = a.admit(v4(100 + i % 20));
            assert_ne!(admitted.evicted.map(|(t, _)| t), Some(peer.ticket));
        }
        assert!(a.contains(peer.ticket));
        assert_eq!(a.strangers(), LIMITS.total);
    }

    #[test]
    fn a_promoted_handshake_is_never_evicted() {
        let mut a = Admission::new(LIMITS, None);
        let keyed = a.admit(v4(11));
        assert!(a.promote(keyed.ticket));
        for _ in 0..50 {
            assert_ne!(a.admit(v4(11)).evicted.map(|(t, _)| t), Some(keyed.ticket));
        }
        assert!(!a.promote(keyed.ticket), "already promoted");
    }

    #[test]
    fn ipv6_sources_are_their_64() {
        let a: Ipv6Addr = "2001:db8::1".parse().unwrap();
        let b: Ipv6Addr = "2001:db8::ffff:1".parse().unwrap();
        let c: Ipv6Addr = "2001:db8:0:1::1".parse().unwrap();
        assert_eq!(Source::of(a.into()), Source::of(b.into()));
        assert_ne!(Source::of(a.into()), Source::of(c.into()));
        let mapped: Ipv6Addr = Ipv4Addr::new(192, 0, 2, 11).to_ipv6_mapped();
        assert_eq!(Source::of(mapped.into()), Source::of(v4(11)));
        assert_eq!(Source::of(b.into()).to_string(), "2001:db8::/64");
    }

    #[derive(Debug, Clone)]
    enum Op {
        Admit(u8),
        Promote(usize),
        Finish(usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            6 => (0u8..12).prop_map(Op::Admit),
            1 => any::<usize>().prop_map(Op::Promote),
            2 => any::<usize>().prop_map(Op::Finish),
        ]
    }

    proptest! {
        #[test]
        fn limits_hold_and_newcomers_are_always_admitted(
            ops in proptest::collection::vec(op(), 0..300),
            peer in proptest::option::of(0u8..12),
        ) {
            let mut a = Admission::new(LIMITS, peer.map(v4));
            let mut tickets = Vec::new();
            for op in ops {
                match op {
                    Op::Admit(host) => {
                        let ip = v4(host);
                        let before = a.count(ip);
                        let admitted = a.admit(ip);
                        prop_assert!(a.contains(admitted.ticket));
                        prop_assert_eq!(admitted.from_peer, peer == Some(host));
                        if let Some((evicted, from)) = admitted.evicted {
                            prop_assert!(!a.contains(evicted));
                            // Only a source at its limit, or a stranger filling the
                            // set, evicts; a stranger never evicts the peer's.
                            if from != Source::of(ip) {
                                prop_assert!(!admitted.from_peer);
                                prop_assert!(peer.map(|p| Source::of(v4(p))) != Some(from));
                            } else {
                                prop_assert!(before == LIMITS.per_source || !admitted.from_peer);
                            }
                        }
                        tickets.push(admitted.ticket);
                    }
                    Op::Promote(i) => {
                        if let Some(t) = tickets.get(i % tickets.len().max(1)) {
                            a.promote(*t);
                        }
                    }
                    Op::Finish(i) => {
                        if let Some(t) = tickets.get(i % tickets.len().max(1)) {
                            a.finish(*t);
                        }
                    }
                }
                prop_assert!(a.strangers() <= LIMITS.total);
                for host in 0..12 {
                    prop_assert!(a.count(v4(host)) <= LIMITS.per_source);
                }
                prop_assert!(a.len() <= LIMITS.total + LIMITS.per_source);
            }
        }
    }
}
