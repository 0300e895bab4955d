//! Property test of two role machines on a site with a witness, in virtual time:
//! a simulated etcd grants the leader key to one node at a time, holders renew
//! it while they reach it, and a holder cut from it hears that its lease is
//! lost at its step-down deadline, before the key expires. Partitions, witness
//! cuts, node crashes and operators' commands come in any order; at no instant
//! may both nodes hold the shared address.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, SystemTime};

use proptest::prelude::*;
use tandem_role::{
    Action, Config, DeploymentMode, Event, FenceToken, Isolation, MacAddr, Machine, NodeId,
    NodeState, ProbeOutcome, Role, SiteId,
};

const MACS: [MacAddr; 2] = [MacAddr([2, 0, 0, 0, 0, 1]), MacAddr([2, 0, 0, 0, 0, 2])];
/// The lease's time to live in etcd.
const TTL: u64 = 3000;
/// When, after its last acknowledged keep-alive, a holder hears it lost the lease.
const STEP_DOWN: u64 = 2000;
/// The keeper's renewal interval.
const RENEW: u64 = 1000;
/// How often a lost peer is reported lost again.
const STILL_LOST: u64 = 600;
/// A probe's duration.
const PROBE: u64 = 300;

fn at(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Due {
    /// A message or an answer to deliver.
    Event,
    /// Run node i's probe now and deliver what it finds.
    Probe,
}

/// What waits in the simulated network: (when, sequence, kind, to node, event).
type Queued = (u64, u64, Due, usize, String);

/// The simulated etcd: the leader key's holder, its token and when it expires.
#[derive(Debug, Default)]
struct Etcd {
    holder: Option<(usize, u64)>,
    expires: u64,
    revision: u64,
}

struct Site {
    nodes: [Machine; 2],
    alive: [bool; 2],
    holds: [bool; 2],
    partitioned: bool,
    cut_from_witness: [bool; 2],
    /// Per node: when its keeper last had a keep-alive acknowledged, while it
    /// believes it holds the lease.
    renewed: [Option<u64>; 2],
    etcd: Etcd,
    /// When the lost peer is next reported lost again.
    next_still_lost: u64,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<Queued>>,
    log: Vec<String>,
}

#[derive(Debug, Clone)]
enum Op {
    SetServer(usize, Role),
    Partition,
    Heal,
    CutWitness(usize),
    RestoreWitness(usize),
    Crash(usize),
    Boot(usize),
    Wait(u64),
}

fn arb_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (0usize..2, prop_oneof![Just(Role::Active), Just(Role::Standby)]).prop_map(|(i, r)| Op::SetServer(i, r)),
        2 => Just(Op::Partition),
        2 => Just(Op::Heal),
        2 => (0usize..2).prop_map(Op::CutWitness),
        2 => (0usize..2).prop_map(Op::RestoreWitness),
        1 => (0usize..2).prop_map(Op::Crash),
        2 => (0usize..2).prop_map(Op::Boot),
        4 => (100u64..5000).prop_map(Op::Wait),
    ]
}

impl Site {
    fn new() -> Site {
        let node = |id| {
            let mut state = NodeState::first_boot(id, SiteId::ONE);
            state.deployment = DeploymentMode::Failover;
            Machine::new(
                Config {
                    auto_failover: true,
                    witness: true,
                    ..Config::default()
                },
                state,
            )
        };
        let mut site = Site {
            nodes: [node(NodeId::One), node(NodeId::Two)],
            alive: [false; 2],
            holds: [false; 2],
            partitioned: false,
            cut_from_witness: [false; 2],
            renewed: [None; 2],
            etcd: Etcd::default(),
            next_still_lost: 0,
            now: 0,
            seq: 0,
            queue: BinaryHeap::new(),
            log: Vec::new(),
        };
        site.apply(Op::Boot(0));
        site.apply(Op::Boot(1));
        site
    }

    fn link_up(&self) -> bool {
        !self.partitioned && self.alive[0] && self.alive[1]
    }

    fn push(&mut self, after: u64, due: Due, to: usize, event: String) {
        self.seq += 1;
        self.queue
            .push(Reverse((self.now + after, self.seq, due, to, event)));
    }

    fn probe(&self, i: usize) -> ProbeOutcome {
        if self.holds[1 - i] && !self.partitioned {
            ProbeOutcome::Answered {
                macs: vec![MACS[1 - i]],
            }
        } else {
            ProbeOutcome::Silent
        }
    }

    /// The witness answers node i's acquisition.
    fn acquire(&mut self, i: usize) -> Event {
        if self.cut_from_witness[i] {
            return Event::WitnessUnreachable {
                reason: "cut".into(),
            };
        }
        if self.etcd.holder.is_some() && self.now >= self.etcd.expires {
            self.etcd.holder = None;
        }
        match self.etcd.holder {
            Some((holder, token)) if holder != i => Event::LeaseHeldByPeer {
                node: self.nodes[holder].state().node,
                token: FenceToken::new(token),
            },
            Some((_, token)) => {
                self.renewed[i] = Some(self.now);
                self.etcd.expires = self.now + TTL;
                Event::LeaseAcquired {
                    token: FenceToken::new(token),
                }
            }
            None => {
                self.etcd.revision += 1;
                self.etcd.holder = Some((i, self.etcd.revision));
                self.etcd.expires = self.now + TTL;
                self.renewed[i] = Some(self.now);
                Event::LeaseAcquired {
                    token: FenceToken::new(self.etcd.revision),
                }
            }
        }
    }

    fn feed(&mut self, i: usize, event: Event) {
        if !self.alive[i] {
            return;
        }
        self.log
            .push(format!("@{} node{}: {event}", self.now, i + 1));
        let actions = self.nodes[i].handle(event, at(self.now));
        for action in actions {
            self.log.push(format!("    {action}"));
            match action {
                Action::ClaimSharedAddress => self.holds[i] = true,
                Action::ReleaseSharedAddress => self.holds[i] = false,
                Action::SendClaim { epoch, token } if self.link_up() => {
                    let node = self.nodes[i].state().node;
                    let event = Event::PeerClaim { node, epoch, token };
                    self.push(1, Due::Event, 1 - i, event.to_string());
                }
                Action::SendSuperseded { epoch } if self.link_up() => {
                    let node = self.nodes[i].state().node;
                    let event = Event::PeerSuperseded { node, epoch };
                    self.push(1, Due::Event, 1 - i, event.to_string());
                }
                Action::Probe { after } => {
                    let after = u64::try_from(after.as_millis()).unwrap_or(u64::MAX);
                    self.push(after + PROBE, Due::Probe, i, String::new());
                }
                Action::AcquireLease => {
                    let answer = self.acquire(i);
                    self.push(5, Due::Event, i, answer.to_string());
                }
                Action::ReleaseLease => {
                    self.renewed[i] = None;
                    if !self.cut_from_witness[i]
                        && self.etcd.holder.is_some_and(|(holder, _)| holder == i)
                    {
                        self.etcd.holder = None;
                    }
                }
                _ => {}
            }
            assert!(
                !(self.holds[0] && self.holds[1]),
                "both nodes hold the shared address:\n{}",
                self.log.join("\n")
            );
        }
    }

    /// Lets `ms` of virtual time pass: keepers renew or give up, lost peers are
    /// reported again, queued messages and probes are delivered.
    fn run_for(&mut self, ms: u64) {
        let end = self.now + ms;
        let mut tick = self.now;
        while tick < end {
            tick = (tick + 100).min(end);
            while let Some(Reverse((time, ..))) = self.queue.peek()
                && *time <= tick
            {
                let Some(Reverse((time, _, due, to, text))) = self.queue.pop() else {
                    break;
                };
                self.now = self.now.max(time);
                let event = match due {
                    Due::Probe => Event::Probed {
                        probe: self.probe(to),
                        isolation: Isolation::Passed,
                    },
                    Due::Event => text.parse().unwrap(),
                };
                self.feed(to, event);
            }
            self.now = tick;
            self.keepers();
            if !self.link_up() && self.now >= self.next_still_lost {
                self.next_still_lost = self.now + STILL_LOST;
                for i in 0..2 {
                    self.feed(i, Event::PeerStillLost);
                }
            }
        }
    }

    fn keepers(&mut self) {
        for i in 0..2 {
            let Some(renewed) = self.renewed[i] else {
                continue;
            };
            if !self.alive[i] {
                self.renewed[i] = None;
                continue;
            }
            let mine =
                self.etcd.holder.is_some_and(|(h, _)| h == i) && self.now < self.etcd.expires;
            if !self.cut_from_witness[i] && mine {
                if self.now >= renewed + RENEW {
                    self.renewed[i] = Some(self.now);
                    self.etcd.expires = self.now + TTL;
                }
            } else if self.now >= renewed + STEP_DOWN || !mine && !self.cut_from_witness[i] {
                self.renewed[i] = None;
                self.feed(
                    i,
                    Event::LeaseLost {
                        reason: "not renewed".into(),
                    },
                );
            }
        }
    }

    fn link_changed(&mut self, was_up: bool) {
        match (was_up, self.link_up()) {
            (true, false) => {
                self.next_still_lost = self.now + STILL_LOST;
                for i in 0..2 {
                    self.feed(i, Event::PeerLost { silent: None });
                }
            }
            (false, true) => {
                for i in 0..2 {
                    self.feed(i, Event::PeerBack);
                }
            }
            _ => {}
        }
    }

    fn apply(&mut self, op: Op) {
        let was_up = self.link_up();
        match op {
            Op::SetServer(i, role) => self.feed(i, Event::SetServer(role)),
            Op::Partition => self.partitioned = true,
            Op::Heal => self.partitioned = false,
            Op::CutWitness(i) => {
                if !self.cut_from_witness[i] {
                    self.cut_from_witness[i] = true;
                    self.feed(
                        i,
                        Event::WitnessUnreachable {
                            reason: "cut".into(),
                        },
                    );
                }
            }
            Op::RestoreWitness(i) => {
                if self.cut_from_witness[i] {
                    self.cut_from_witness[i] = false;
                    self.feed(i, Event::WitnessReachable);
                }
            }
            Op::Crash(i) => {
                // The machine stops: its address goes with it, its keeper stops.
                self.alive[i] = false;
                self.holds[i] = false;
                self.renewed[i] = None;
            }
            Op::Boot(i) => {
                if !self.alive[i] {
                    self.alive[i] = true;
                    let probe = self.probe(i);
                    self.feed(
                        i,
                        Event::Boot {
                            probe,
                            isolation: Isolation::Passed,
                        },
                    );
                }
            }
            Op::Wait(ms) => self.run_for(ms),
        }
        self.link_changed(was_up);
        self.run_for(10);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    /// With a witness, whatever fails and in whatever order, the two nodes never
    /// hold the shared address at the same instant, and once things are quiet and
    /// a node is up, reaching the witness and its peer, the site has an active node.
    #[test]
    fn with_a_witness_two_nodes_never_hold_the_address_at_once(
        ops in prop::collection::vec(arb_op(), 1..40),
    ) {
        let mut site = Site::new();
        for op in ops {
            site.apply(op);
        }
        // Everything heals; the site settles with one active node.
        site.apply(Op::Heal);
        site.apply(Op::RestoreWitness(0));
        site.apply(Op::RestoreWitness(1));
        site.apply(Op::Boot(0));
        site.apply(Op::Boot(1));
        site.apply(Op::Wait(10_000));
        let active: Vec<usize> = (0..2).filter(|&i| site.nodes[i].role() == Role::Active).collect();
        prop_assert!(active.len() <= 1, "two active nodes:\n{}", site.log.join("\n"));
        for i in 0..2 {
            prop_assert_eq!(
                site.holds[i],
                site.nodes[i].role() == Role::Active,
                "node{} holds the address as {:?}:\n{}", i + 1, site.nodes[i].role(), site.log.join("\n")
            );
        }
    }
}
