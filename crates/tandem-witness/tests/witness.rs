//! The witness against real etcd members in the namespace lab: node1 and node2 run
//! the client inside their own namespaces (one current-thread runtime per call or
//! per thread). Needs root and etcd (Debian `etcd-server`); without them every test
//! fails with a message naming what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::future::Future;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use tandem_core::{NodeId, SiteId};
use tandem_lab::{Host, Lab, WitnessCluster};
use tandem_witness::{Acquire, Holder, Keeper, LeaseEvent, Token, Witness, WitnessConfig};

const SITE: SiteId = SiteId::ONE;

struct Site {
    // Dropped first: etcd processes and their namespaces go before the lab.
    cluster: WitnessCluster,
    lab: Lab,
}

fn site(members: usize) -> Site {
    let lab = Lab::for_test();
    let cluster = lab.start_witness(members).unwrap_or_else(|e| {
        panic!("this test needs etcd witness members and cannot start them: {e}")
    });
    Site { cluster, lab }
}

impl Site {
    fn config(&self) -> WitnessConfig {
        WitnessConfig::new(self.cluster.endpoints())
    }

    /// Runs `f` to completion on a current-thread runtime inside `host`'s namespace.
    fn block_in<F, Fut, R>(&self, host: Host, f: F) -> R
    where
        F: FnOnce() -> Fut + Send,
        Fut: Future<Output = R>,
        R: Send,
    {
        self.lab.run_in(host, || runtime().block_on(f())).unwrap()
    }

    /// A fresh witness client of node `node` (1 or 2) asking who holds the key.
    fn holder_seen_by(&self, host: Host) -> Option<Holder> {
        let config = self.config();
        let node = node_of(host);
        self.block_in(host, move || async move {
            let mut w = Witness::connect(config, SITE, node).await.unwrap();
            w.holder().await.unwrap().map(|(h, _)| h)
        })
    }
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn node_of(host: Host) -> NodeId {
    match host {
        Host::Node1 => NodeId::One,
        Host::Node2 => NodeId::Two,
        Host::Client => panic!("the client is not a node"),
    }
}

fn acquired(outcome: Acquire) -> Token {
    match outcome {
        Acquire::Acquired { token, .. } => token,
        other => panic!("expected to acquire, got {other:?}"),
    }
}

#[test]
fn the_first_acquirer_gets_a_token_the_other_node_sees_it_and_renewal_keeps_it() {
    let site = site(1);
    let config = site.config();
    let (token, ttls) = site.block_in(Host::Node1, || async move {
        let mut w = Witness::connect(config, SITE, NodeId::One).await.unwrap();
        let token = acquired(w.acquire().await.unwrap());
        let mut ttls = Vec::new();
        for _ in 0..3 {
            ttls.push(w.renew().await.unwrap().ttl);
        }
        // Left held (no release): the other node must see it.
        std::mem::forget(w);
        (token, ttls)
    });
    assert!(token.0 > 0);
    for ttl in ttls {
        assert!(
            ttl > Duration::ZERO && ttl <= Duration::from_secs(3),
            "{ttl:?}"
        );
    }
    let config = site.config();
    let (seen, holder) = site.block_in(Host::Node2, || async move {
        let mut w = Witness::connect(config, SITE, NodeId::Two).await.unwrap();
        (w.acquire().await.unwrap(), w.holder().await.unwrap())
    });
    let expected = Holder {
        node: NodeId::One,
        token,
    };
    assert_eq!(seen, Acquire::HeldBy(expected));
    let (holder, ttl_left) = holder.unwrap();
    assert_eq!(holder, expected);
    assert!(ttl_left <= Duration::from_secs(3));
}

#[test]
fn a_holder_that_stops_renewing_frees_the_key_within_the_ttl_and_the_next_token_is_higher() {
    let site = site(1);
    let config = site.config();
    let first = site.block_in(Host::Node1, || async move {
        let mut w = Witness::connect(config, SITE, NodeId::One).await.unwrap();
        acquired(w.acquire().await.unwrap())
        // Dropped without a release: the agent died.
    });
    let stopped = Instant::now();
    let config = site.config();
    let second = site.block_in(Host::Node2, || async move {
        let mut w = Witness::connect(config, SITE, NodeId::Two).await.unwrap();
        loop {
            match w.acquire().await.unwrap() {
                Acquire::Acquired { token, .. } => break token,
                Acquire::HeldBy(h) => assert_eq!(h.token, first),
            }
            assert!(
                stopped.elapsed() < Duration::from_secs(10),
                "the key outlived its TTL"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // etcd checks expiry on its own schedule; the TTL plus generous slack.
    assert!(
        stopped.elapsed() < Duration::from_secs(8),
        "{:?}",
        stopped.elapsed()
    );
    assert!(second > first, "{second} after {first}");
}

#[test]
fn a_restarted_agent_adopts_its_own_live_key_and_release_frees_it() {
    let site = site(1);
    let config = site.config();
    let (before, after) = site.block_in(Host::Node1, || async move {
        let mut old = Witness::connect(config.clone(), SITE, NodeId::One)
            .await
            .unwrap();
        let before = old.acquire().await.unwrap();
        drop(old); // the agent restarts; its lease lives on in etcd
        let mut new = Witness::connect(config, SITE, NodeId::One).await.unwrap();
        let after = new.acquire().await.unwrap();
        new.renew().await.unwrap();
        new.release().await.unwrap();
        new.release().await.unwrap(); // idempotent
        (before, after)
    });
    assert_eq!(before, after, "the adopted key keeps its lease and token");
    assert_eq!(
        site.holder_seen_by(Host::Node2),
        None,
        "release left the key"
    );
}

#[test]
fn a_node_cut_from_the_witness_is_told_lost_before_the_key_disappears() {
    let site = site(1);
    let (events_tx, events) = std_mpsc::channel::<(Instant, LeaseEvent)>();
    let (stop_tx, stop) = std_mpsc::channel::<()>();
    let config = site.config();
    let node1 = site
        .lab
        .spawn_in(Host::Node1, move || {
            runtime().block_on(async move {
                let (keeper, mut rx) = Keeper::start(config, SITE, NodeId::One).await.unwrap();
                keeper.acquire();
                while stop.try_recv().is_err() {
                    let next = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
                    if let Ok(Some(event)) = next {
                        let _ = events_tx.send((Instant::now(), event));
                    }
                }
            })
        })
        .unwrap();
    let wait_for = |what: &str, pred: &dyn Fn(&LeaseEvent) -> bool| -> (Instant, LeaseEvent) {
        let give_up = Instant::now() + Duration::from_secs(15);
        loop {
            let left = give_up.saturating_duration_since(Instant::now());
            let (at, event) = events
                .recv_timeout(left)
                .unwrap_or_else(|_| panic!("no {what} event"));
            if pred(&event) {
                return (at, event);
            }
        }
    };
    let (_, event) = wait_for("Acquired", &|e| matches!(e, LeaseEvent::Acquired { .. }));
    let LeaseEvent::Acquired { token } = event else {
        unreachable!()
    };
    // A few renewals pass before the cut.
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(
        site.holder_seen_by(Host::Node2),
        Some(Holder {
            node: NodeId::One,
            token
        })
    );
    site.lab.cut_from_witness(Host::Node1, true).unwrap();
    let cut_at = Instant::now();
    wait_for("Lost", &|e| matches!(e, LeaseEvent::Lost { .. }));
    let lost_after = cut_at.elapsed();
    // The ordering that matters: when node1 is told, etcd still has its key.
    assert_eq!(
        site.holder_seen_by(Host::Node2),
        Some(Holder {
            node: NodeId::One,
            token
        }),
        "node1 was told it lost the key only after etcd dropped it"
    );
    // And etcd does drop it, within the TTL after the last keep-alive.
    let mut gone_after = None;
    while cut_at.elapsed() < Duration::from_secs(10) {
        if site.holder_seen_by(Host::Node2).is_none() {
            gone_after = Some(cut_at.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let gone_after = gone_after.expect("the key outlived node1's lease");
    assert!(
        lost_after < gone_after,
        "lost after {lost_after:?}, gone after {gone_after:?}"
    );
    stop_tx.send(()).unwrap();
    node1.join().unwrap().unwrap();
    site.lab.cut_from_witness(Host::Node1, false).unwrap();
}

#[test]
fn with_every_member_down_acquire_fails_fast_and_the_keeper_reports_unreachable() {
    let mut site = site(3);
    site.cluster.stop_all();
    let config = site.config();
    let timeout = config.request_timeout();
    let (elapsed, outcome, event) = site.block_in(Host::Node1, || async move {
        let mut w = Witness::connect(config.clone(), SITE, NodeId::One)
            .await
            .unwrap();
        let started = Instant::now();
        let outcome = w.acquire().await;
        let elapsed = started.elapsed();
        let (keeper, mut rx) = Keeper::start(config, SITE, NodeId::One).await.unwrap();
        let event = tokio::time::timeout(Duration::from_secs(5), async {
            loop {
                match rx.recv().await {
                    Some(e @ LeaseEvent::Unreachable { .. }) => break e,
                    Some(_) => continue,
                    None => panic!("the keeper stopped"),
                }
            }
        })
        .await
        .expect("no Unreachable event");
        assert!(!keeper.view().reachable);
        assert_eq!(keeper.view().members_up, 0);
        (elapsed, outcome, event)
    });
    assert!(
        matches!(
            outcome,
            Err(tandem_witness::WitnessError::Unreachable { .. })
        ),
        "{outcome:?}"
    );
    assert!(
        elapsed <= timeout * 2 + Duration::from_millis(200),
        "{elapsed:?}"
    );
    assert!(matches!(event, LeaseEvent::Unreachable { .. }));
}

#[test]
fn the_raft_leader_killed_out_of_three_members_changes_nothing() {
    let mut site = site(3);
    let config = site.config();
    let (events_tx, events) = std_mpsc::channel::<LeaseEvent>();
    let (stop_tx, stop) = std_mpsc::channel::<()>();
    let node1 = site
        .lab
        .spawn_in(Host::Node1, move || {
            runtime().block_on(async move {
                let (keeper, mut rx) = Keeper::start(config, SITE, NodeId::One).await.unwrap();
                keeper.acquire();
                while stop.try_recv().is_err() {
                    let next = tokio::time::timeout(Duration::from_millis(50), rx.recv()).await;
                    if let Ok(Some(event)) = next {
                        let _ = events_tx.send(event);
                    }
                }
                keeper.view()
            })
        })
        .unwrap();
    let token = loop {
        match events
            .recv_timeout(Duration::from_secs(10))
            .expect("no Acquired")
        {
            LeaseEvent::Acquired { token } => break token,
            _ => continue,
        }
    };
    // The raft leader goes: the two others elect a new one within the lease.
    let config = site.config();
    let members = site.block_in(Host::Node2, || async move {
        Witness::connect(config, SITE, NodeId::Two)
            .await
            .unwrap()
            .members()
            .await
    });
    let leader = members
        .iter()
        .position(|m| m.leader)
        .expect("no raft leader")
        + 1;
    site.cluster.kill(leader).unwrap();
    // Several renewal intervals with a member down.
    std::thread::sleep(Duration::from_secs(3));
    let holder = site.holder_seen_by(Host::Node2);
    stop_tx.send(()).unwrap();
    let view = node1.join().unwrap().unwrap();
    let later: Vec<LeaseEvent> = events.try_iter().collect();
    assert!(
        !later
            .iter()
            .any(|e| matches!(e, LeaseEvent::Lost { .. } | LeaseEvent::Unreachable { .. })),
        "{later:?}"
    );
    assert_eq!(view.holding, Some(token));
    assert!(view.reachable);
    assert_eq!((view.members_up, view.members), (2, 3), "{view:?}");
    assert_eq!(
        holder,
        Some(Holder {
            node: NodeId::One,
            token
        })
    );
}

#[test]
fn check_reports_members_and_a_writable_prefix() {
    let site = site(1);
    let config = site.config();
    let report = site.block_in(Host::Node2, || async move {
        let mut w = Witness::connect(config, SITE, NodeId::Two).await.unwrap();
        w.check().await.unwrap()
    });
    assert!(report.ok(), "{report:?}");
    assert_eq!(report.members.len(), 1);
    assert!(
        report.members[0]
            .version
            .as_deref()
            .is_some_and(|v| v.starts_with("3."))
    );
}

/// The keeper's next event, within a generous bound.
async fn next(rx: &mut tokio::sync::mpsc::Receiver<LeaseEvent>) -> LeaseEvent {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("no event")
        .expect("keeper stopped")
}

#[test]
fn a_standby_keeper_follows_the_key_and_acquires_once_it_is_free() {
    let site = site(1);
    let config = site.config();
    let node1_config = site.config();
    let (node1_tx, node1_rx) = std_mpsc::channel::<&'static str>();
    let (done_tx, done) = std_mpsc::channel::<Token>();
    // node1 takes the key when told, and releases it when told.
    let node1 = site
        .lab
        .spawn_in(Host::Node1, move || {
            runtime().block_on(async move {
                let mut w = Witness::connect(node1_config, SITE, NodeId::One)
                    .await
                    .unwrap();
                assert_eq!(node1_rx.recv().unwrap(), "acquire");
                let token = acquired(w.acquire().await.unwrap());
                done_tx.send(token).unwrap();
                assert_eq!(node1_rx.recv().unwrap(), "release");
                w.release().await.unwrap();
            })
        })
        .unwrap();
    let events = site.block_in(Host::Node2, move || async move {
        let (keeper, mut rx) = Keeper::start(config, SITE, NodeId::Two).await.unwrap();
        let mut seen = Vec::new();
        // The first reading of the key: free.
        loop {
            let e = next(&mut rx).await;
            seen.push(e.clone());
            if e == LeaseEvent::Free {
                break;
            }
        }
        node1_tx.send("acquire").unwrap();
        let first = done.recv().unwrap();
        loop {
            let e = next(&mut rx).await;
            seen.push(e.clone());
            if e == LeaseEvent::HeldBy(Holder {
                node: NodeId::One,
                token: first,
            }) {
                break;
            }
        }
        node1_tx.send("release").unwrap();
        loop {
            let e = next(&mut rx).await;
            seen.push(e.clone());
            if e == LeaseEvent::Free {
                break;
            }
        }
        keeper.acquire();
        loop {
            let e = next(&mut rx).await;
            seen.push(e.clone());
            if let LeaseEvent::Acquired { token } = e {
                assert!(token > first, "{token} after {first}");
                assert_eq!(keeper.view().holding, Some(token));
                break;
            }
        }
        keeper.release();
        seen
    });
    node1.join().unwrap().unwrap();
    assert!(events.contains(&LeaseEvent::Reachable), "{events:?}");
    assert!(
        !events
            .iter()
            .any(|e| matches!(e, LeaseEvent::Lost { .. } | LeaseEvent::Unreachable { .. })),
        "{events:?}"
    );
}
