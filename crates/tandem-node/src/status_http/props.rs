//! Property tests of the renderers, moved here from `tests/status_page.rs` when
//! the renderers left the crate's public API: every value on the page is
//! HTML-escaped, and `/metrics` stays in the Prometheus text exposition format
//! whatever the hostname and the clock offset.

use proptest::prelude::*;
use tandem_role::{DeploymentMode, Epoch, NodeId, NodeState, Role, SiteId};

use super::{render_metrics, render_status_page};
use crate::{Alarm, AlarmKind, PeerStatus, ReplicationSide, ReplicationStatus, StatusSnapshot};

/// Node 2 of site 1, standby, with the seed's replication table and one alarm
/// (the snapshot `tests/status_page.rs` serves).
pub(super) fn standby() -> StatusSnapshot {
    let mut state = NodeState::first_boot(NodeId::Two, SiteId::ONE);
    state.deployment = DeploymentMode::Failover;
    state.role = Role::Standby;
    state.epoch = Epoch::new(4);
    StatusSnapshot {
        state,
        hostname: "meetings2.example.com".into(),
        node_address: "192.0.2.12/24".into(),
        shared_address: "192.0.2.10/24".into(),
        holds_shared_address: false,
        peer: PeerStatus {
            datagrams: false,
            address: "192.0.2.11".into(),
            connected: true,
            claim_epoch: Some(4),
            clock_offset_ms: Some(0.25),
        },
        replication: Some(ReplicationStatus {
            local: ReplicationSide {
                replication_type: "Local".into(),
                site: 1,
                node: 2,
                state: "Active".into(),
                status: "Local".into(),
            },
            remote: ReplicationSide {
                replication_type: "Intra-site".into(),
                site: 1,
                node: 1,
                state: "Active".into(),
                status: "Connected".into(),
            },
            backlog: 0,
            lag_ms: Some(12),
            resync: None,
            local_detail: None,
            remote_detail: None,
        }),
        alarms: vec![Alarm::new(
            AlarmKind::PeerLost,
            "peer link was down for 12 s",
            1_714_564_800_000,
        )],
        alarm_history: Vec::new(),
        uptime_seconds: 3_725,
        taken_ms: 1_714_568_400_000,
        witness: None,
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}

/// The characters that can make markup.
fn markup_counts(page: &str) -> [usize; 4] {
    ['<', '>', '"', '\''].map(|c| page.matches(c).count())
}

fn with_values(value: &str) -> StatusSnapshot {
    let mut snapshot = standby();
    snapshot.hostname = value.into();
    snapshot.node_address = value.into();
    snapshot.peer.address = value.into();
    snapshot.alarms[0].message = value.into();
    if let Some(replication) = &mut snapshot.replication {
        replication.local.state = value.into();
        replication.remote.status = value.into();
    }
    snapshot
}

/// One sample line of the text exposition format.
struct Sample {
    name: String,
    /// Label names and their unescaped values.
    labels: Vec<(String, String)>,
}

/// Parses a sample line, checking the metric name, the label syntax and
/// escapes, and the value.
fn parse_sample(line: &str) -> Result<Sample, String> {
    let name_end = line
        .find(['{', ' '])
        .ok_or_else(|| format!("no value: {line}"))?;
    let name = &line[..name_end];
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    if name.is_empty() || !valid_name {
        return Err(format!("bad metric name: {line}"));
    }
    let mut rest = &line[name_end..];
    let mut labels = Vec::new();
    if let Some(after) = rest.strip_prefix('{') {
        let mut chars = after.char_indices().peekable();
        loop {
            let start = chars.peek().map(|&(i, _)| i).ok_or("unterminated labels")?;
            let eq = after[start..].find('=').ok_or("label without =")? + start;
            let label = after[start..eq].to_owned();
            if label.is_empty() || !label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                return Err(format!("bad label name {label:?}"));
            }
            while chars.peek().is_some_and(|&(i, _)| i <= eq) {
                chars.next();
            }
            if chars.next().map(|(_, c)| c) != Some('"') {
                return Err("label value not quoted".into());
            }
            let mut value = String::new();
            loop {
                match chars.next().ok_or("unterminated label value")?.1 {
                    '"' => break,
                    '\\' => match chars.next().ok_or("dangling backslash")?.1 {
                        'n' => value.push('\n'),
                        '\\' => value.push('\\'),
                        '"' => value.push('"'),
                        c => return Err(format!("bad escape \\{c}")),
                    },
                    '\n' => return Err("raw newline in label value".into()),
                    c => value.push(c),
                }
            }
            labels.push((label, value));
            match chars.next().ok_or("unterminated labels")? {
                (_, ',') => continue,
                (i, '}') => {
                    rest = &after[i + 1..];
                    break;
                }
                (_, c) => return Err(format!("unexpected {c:?} after a label")),
            }
        }
    }
    let value = rest
        .strip_prefix(' ')
        .ok_or_else(|| format!("no space before the value: {line}"))?;
    let number_ok = value.parse::<f64>().is_ok() || ["NaN", "+Inf", "-Inf"].contains(&value);
    if !number_ok {
        return Err(format!("bad value {value:?}"));
    }
    Ok(Sample {
        name: name.to_owned(),
        labels,
    })
}

proptest! {
    #[test]
    fn every_value_on_the_page_is_escaped(value in "[<>&\"'a-z /=;:()\u{e9}]{0,24}") {
        let page = render_status_page(&with_values(&value));
        // The values make no markup: the page has exactly the markup characters
        // of a page whose values have none.
        let plain = render_status_page(&with_values(&"x".repeat(value.chars().count())));
        prop_assert_eq!(markup_counts(&page), markup_counts(&plain));
        let shown = escape(&value);
        for expected in [
            format!("<li>2024-05-01 12:00:00 UTC: {shown}</li>"),
            format!("<td>Status: {shown}</td>"),
            format!("<tr><th>Peer</th><td>{shown}, connected</td></tr>"),
        ] {
            prop_assert!(page.contains(&expected), "{} not in {}", expected, page);
        }
    }

    #[test]
    fn metrics_stay_in_the_exposition_format(hostname in any::<String>(), offset in any::<f64>()) {
        let mut snapshot = standby();
        snapshot.hostname = hostname.clone();
        snapshot.peer.clock_offset_ms = Some(offset);
        let metrics = render_metrics(&snapshot);
        prop_assert!(metrics.ends_with('\n'));
        let mut typed = Vec::new();
        for line in metrics.lines() {
            if let Some(comment) = line.strip_prefix("# ") {
                if let Some(rest) = comment.strip_prefix("TYPE ") {
                    let name = rest.strip_suffix(" gauge").unwrap();
                    prop_assert!(!typed.contains(&name.to_owned()), "two TYPE lines for {}", name);
                    typed.push(name.to_owned());
                } else {
                    prop_assert!(comment.starts_with("HELP "), "{}", line);
                }
                continue;
            }
            let Sample { name, labels } = parse_sample(line).map_err(TestCaseError::fail)?;
            prop_assert_eq!(typed.last(), Some(&name), "sample outside its family");
            prop_assert_eq!(&labels[..2], &[("node".to_owned(), "2".to_owned()), ("site".to_owned(), "1".to_owned())]);
            if name == "tandem_info" {
                prop_assert_eq!(&labels[2], &("hostname".to_owned(), hostname.clone()));
            }
        }
    }
}
