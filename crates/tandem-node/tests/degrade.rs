//! The `degrade` guard in the namespace lab: an active node whose standby is gone
//! may acknowledge a write alone only while its cable stayed in, its gateway
//! answers and nobody else holds the shared address. Needs root; without it the
//! lab's message names what is missing.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::Duration;

use tandem_lab::{GATEWAY_ADDR, Host, LAB_IFACE, Lab, SHARED_ADDR};
use tandem_node::{DegradeError, DegradeGuard};

/// Runs `f` with a guard made inside node1's namespace (settle `settle`).
fn on_node1<R: Send>(
    lab: &Lab,
    settle: Duration,
    f: impl AsyncFnOnce(&DegradeGuard) -> R + Send,
) -> R {
    lab.block_on_in(Host::Node1, || async {
        let guard = DegradeGuard::new(LAB_IFACE, GATEWAY_ADDR.into(), SHARED_ADDR, settle)
            .await
            .unwrap();
        f(&guard).await
    })
    .unwrap()
}

#[test]
fn a_node_that_kept_its_cable_and_its_address_may_acknowledge_alone() {
    let lab = Lab::for_test();
    let allowed = on_node1(&lab, Duration::ZERO, async |guard| {
        let mark = guard.mark().await;
        guard.allow(mark).await
    });
    assert!(allowed.is_ok(), "{allowed:?}");
}

#[test]
fn a_cable_pulled_and_plugged_back_while_the_write_waited_refuses() {
    let lab = Lab::for_test();
    let refused = on_node1(&lab, Duration::ZERO, async |guard| {
        let mark = guard.mark().await;
        lab.cut(Host::Node1).unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
        lab.restore(Host::Node1).unwrap();
        guard.allow(mark).await
    });
    assert!(
        matches!(refused, Err(DegradeError::CarrierChanged { ref iface }) if iface == LAB_IFACE),
        "{refused:?}"
    );
    let text = refused.unwrap_err().to_string();
    assert!(
        text.contains("came or went while the write waited"),
        "{text}"
    );
}

#[test]
fn a_node_cut_off_now_refuses() {
    let lab = Lab::for_test();
    lab.cut(Host::Node1).unwrap();
    let refused = on_node1(&lab, Duration::ZERO, async |guard| {
        let mark = guard.mark().await;
        guard.allow(mark).await
    });
    assert!(
        matches!(refused, Err(DegradeError::Isolated { reference }) if reference == std::net::IpAddr::from(GATEWAY_ADDR)),
        "{refused:?}"
    );
}

#[test]
fn another_holder_of_the_shared_address_refuses_and_is_named() {
    let lab = Lab::for_test();
    let node2 = lab.mac(Host::Node2).unwrap();
    let out = lab
        .exec(
            Host::Node2,
            "ip",
            &["addr", "add", "192.0.2.10/24", "dev", LAB_IFACE],
        )
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let refused = on_node1(&lab, Duration::ZERO, async |guard| {
        let mark = guard.mark().await;
        guard.allow(mark).await
    });
    match refused {
        Err(DegradeError::SharedAddressHeld { shared, macs }) => {
            assert_eq!(shared, SHARED_ADDR);
            assert_eq!(macs.iter().map(|m| m.0).collect::<Vec<_>>(), vec![node2]);
        }
        other => panic!("expected SharedAddressHeld, got {other:?}"),
    }
}

#[test]
fn a_carrier_back_only_just_now_is_not_trusted_before_the_settle_time() {
    let lab = Lab::for_test();
    let answered = on_node1(&lab, Duration::from_secs(60), async |guard| {
        lab.cut(Host::Node1).unwrap();
        tokio::time::sleep(Duration::from_millis(50)).await;
        lab.restore(Host::Node1).unwrap();
        // The first mark after the change starts the settle time: with a minute
        // to settle, the guard gives no answer, yes or no, within half a second.
        let mark = guard.mark().await;
        tokio::time::timeout(Duration::from_millis(500), guard.allow(mark))
            .await
            .ok()
    });
    assert!(answered.is_none(), "answered before settling: {answered:?}");
}

/// Issue 21: a killed agent left its application acknowledging alone while the
/// peer took over. A guard that asks the agent refuses when none answers.
#[test]
fn without_a_running_agent_nothing_is_acknowledged_alone() {
    let lab = Lab::for_test();
    let state_dir = tempfile::tempdir().unwrap();
    let refused = lab
        .block_on_in(Host::Node1, || async {
            let guard =
                DegradeGuard::new(LAB_IFACE, GATEWAY_ADDR.into(), SHARED_ADDR, Duration::ZERO)
                    .await
                    .unwrap()
                    .with_agent(state_dir.path(), tandem_node::DEFAULT_LEASE_MARGIN);
            let mark = guard.mark().await;
            guard.allow(mark).await
        })
        .unwrap();
    assert!(
        matches!(refused, Err(DegradeError::NoAgent { .. })),
        "{refused:?}"
    );
    let text = refused.unwrap_err().to_string();
    assert!(text.contains("agent does not answer"), "{text}");
}
