//! `cargo xtask bench soak`: false failovers under stress, tandem at its
//! smallest heartbeat beside keepalived at its smallest `advert_int`.
//!
//! Per system, one site of the failover bench in the namespace lab, both nodes
//! up and linked, for `--minutes` (default [`MINUTES`]):
//! - tandem's agents at a heartbeat of [`SMALLEST_HEARTBEAT_MS`] with the
//!   probes that fit it (`ProbeSection::for_heartbeat`);
//! - keepalived (VRRPv3, unicast) at `advert_int 0.01`;
//! - both with their heartbeat path protected as each offers: real-time
//!   priority [`REALTIME_PRIORITY`](super::failover::REALTIME_PRIORITY) and locked
//!   memory (tandem's `realtime_priority` and `lock_memory`, keepalived's
//!   `vrrp_rt_priority` and `vrrp_no_swap`).
//!
//! Both node namespaces run `stress-ng` ([`STRESS`]: CPU, disk and socket
//! workers). On tandem's site the holder also runs `failover copy-config-files`
//! of the bundle bench's tree in a loop, so bundles travel on the peer link
//! beside the heartbeats, and the nodes replicate the sample schema (SQLite,
//! filled with [`FILL_ROWS`](super::failover::FILL_ROWS) rows) while the
//! standby runs `mp_replication switch-on -S -F from-sync` in a loop of its own. Nothing cuts a cable: every change of holder is false.
//! The soak ends when the copy under way at the end of `--minutes` finishes, so
//! tandem's soak can run longer than keepalived's; the table shows both lengths.
//!
//! Counted over the soak: false failovers (tandem: the growth of the highest
//! epoch of the two nodes; keepalived: `Entering MASTER STATE` lines in its
//! logs), changes of the answering node as the client saw it, polls where not
//! exactly one node held the shared address, peer-lost alarms (tandem's alarm
//! list and history, polled), and the client's longest gap between answers.
//! At the end the site must settle on exactly one holder.
//!
//! Needs root (the lab), keepalived and stress-ng (`bash .ci/install-deps`).
//! Results print as a table and go to `target/bench/soak.json`.

use std::collections::BTreeSet;
use std::process::{Child, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig};

use super::failover::{Extras, Probe, SMALLEST_ADVERT_CS, SMALLEST_HEARTBEAT_MS, Site, System};

/// Minutes per system by default.
pub(crate) const MINUTES: u64 = 10;
/// The stress in each node's namespace (`stress-ng` arguments, without the
/// timeout): two CPU hogs, one disk writer and two socket pairs.
const STRESS: [&str; 6] = ["--cpu", "2", "--hdd", "1", "--sock", "2"];
/// How often the soak looks at the site (holder, epochs, alarms).
const POLL_EVERY: Duration = Duration::from_millis(250);

/// What to run of the soak area.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// How long each system soaks.
    pub length: Duration,
}

/// What one system's soak counted.
#[derive(Debug, Clone, serde::Serialize)]
pub(crate) struct Counts {
    /// The system and its setting.
    pub system: String,
    /// How long it soaked, in seconds.
    pub seconds: f64,
    /// Changes of holder the system itself recorded (tandem: epochs; keepalived:
    /// `Entering MASTER STATE` lines).
    pub false_failovers: u64,
    /// Changes of the node answering the client.
    pub client_saw_changes: usize,
    /// Polls where not exactly one node held the shared address.
    pub polls_without_one_holder: u64,
    /// Polls of the holder in all.
    pub polls: u64,
    /// Peer-lost alarms raised on either node (tandem only).
    pub peer_lost_alarms: Option<u64>,
    /// The client's longest gap between answers, in milliseconds.
    pub longest_gap_ms: f64,
    /// `copy-config-files` runs that sent their bundle, and runs that failed
    /// (tandem only).
    pub copies: Option<(u64, u64)>,
    /// `switch-on -S -F from-sync` runs on the standby that succeeded, and runs
    /// that failed (tandem only).
    pub from_syncs: Option<(u64, u64)>,
    /// The node holding the shared address at the end.
    pub final_holder: String,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<Vec<super::Row>> {
    for (program, package) in [("stress-ng", "stress-ng"), ("keepalived", "keepalived")] {
        if std::process::Command::new(program)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_err()
        {
            bail!(
                "{program} is missing: run `bash .ci/install-deps` as root (Debian package {package})"
            );
        }
    }
    let release = super::build_release(&["failover", "mp_replication"])?;
    let bin = release.join("failover");
    let (bundle, files) = super::bundle::bench_bundle()?;
    let mut results = Vec::new();
    for system in [
        System::Tandem(SMALLEST_HEARTBEAT_MS),
        System::Keepalived(SMALLEST_ADVERT_CS),
    ] {
        println!(
            "bench soak: {} (real-time priority {}, memory locked) for {} s under `stress-ng {}`{}",
            system.label(),
            super::failover::REALTIME_PRIORITY,
            options.length.as_secs(),
            STRESS.join(" "),
            if let System::Tandem(_) = system {
                format!(" and copy-config-files of {files} files in a loop")
            } else {
                String::new()
            }
        );
        let counts = soak(&bin, system, options.length, &bundle)?;
        println!("  {counts:?}");
        results.push(counts);
    }
    print(&results);
    let path = super::output_dir()?.join("soak.json");
    std::fs::write(
        &path,
        serde_json::to_string_pretty(&serde_json::json!({ "systems": results }))?,
    )
    .with_context(|| format!("writing {}", path.display()))?;
    println!("\nwritten to {}", path.display());
    Ok(summary(&results))
}

/// One system's soak in a fresh lab.
fn soak(
    bin: &std::path::Path,
    system: System,
    length: Duration,
    bundle: &tandem_bundle::BundleSpec,
) -> anyhow::Result<Counts> {
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let dir = tempfile::Builder::new()
        .prefix("tandem-bench-soak-")
        .tempdir()?;
    let probe = Probe::start(&lab)?;
    let measured = (|| {
        let bundle = matches!(system, System::Tandem(_)).then(|| bundle.clone());
        let extras = Extras {
            bundle,
            protected: true,
            replicate: true,
        };
        let site = Site::start_with(&lab, bin, dir.path(), system, extras)?;
        let holder = site.wait_one_holder(Duration::from_secs(30))?;
        site.wait_peer_link()?;
        let warm = probe.now();
        site.wait(
            Duration::from_secs(10),
            "the client hearing the holder",
            |_| probe.first_from(holder.name(), warm).is_some(),
        )?;
        let before = Recorded::read(&site, dir.path())?;
        let stress = Stress::start(&lab, dir.path(), length)?;
        let from = probe.now();
        let polled = watch(&site, length, dir.path())?;
        drop(stress);
        let to = probe.now();
        let final_holder = site
            .wait_one_holder(Duration::from_secs(30))
            .context("the site after the soak")?;
        site.wait_peer_link()?;
        let after = Recorded::read(&site, dir.path())?;
        anyhow::Ok(Counts {
            system: system.label(),
            seconds: (to - from).as_secs_f64(),
            false_failovers: after.changes.saturating_sub(before.changes),
            client_saw_changes: probe.sender_changes(from, to),
            polls_without_one_holder: polled.without_one_holder,
            polls: polled.polls,
            peer_lost_alarms: polled.peer_lost.map(|set| set.len() as u64),
            longest_gap_ms: probe.longest_gap(from, to).as_secs_f64() * 1000.0,
            copies: polled.copies,
            from_syncs: polled.from_syncs,
            final_holder: final_holder.name().to_owned(),
        })
    })();
    probe.stop();
    match measured {
        Ok(counts) => Ok(counts),
        Err(e) => {
            // Keep the logs for the operator.
            let kept = dir.keep();
            Err(e.context(format!("logs kept in {}", kept.display())))
        }
    }
}

/// The holder changes a system records itself: tandem's highest epoch,
/// keepalived's `Entering MASTER STATE` lines.
struct Recorded {
    changes: u64,
}

impl Recorded {
    fn read(site: &Site<'_>, dir: &std::path::Path) -> anyhow::Result<Recorded> {
        let changes = match site.system() {
            System::Keepalived(_) => [Host::Node1, Host::Node2]
                .iter()
                .map(|host| {
                    let log = dir.join(format!("{}-keepalived.log", host.name()));
                    std::fs::read_to_string(&log)
                        .map(|text| text.matches("Entering MASTER STATE").count() as u64)
                        .with_context(|| format!("reading {}", log.display()))
                })
                .sum::<anyhow::Result<u64>>()?,
            _ => {
                let mut epoch = 0;
                for host in [Host::Node1, Host::Node2] {
                    let status =
                        status(site, host).with_context(|| format!("reading {host}'s status"))?;
                    epoch = epoch.max(status["state"]["epoch"].as_u64().unwrap_or(0));
                }
                epoch
            }
        };
        Ok(Recorded { changes })
    }
}

/// `failover status --json` of `host`, parsed.
fn status(site: &Site<'_>, host: Host) -> anyhow::Result<serde_json::Value> {
    Ok(serde_json::from_str(
        &site.failover(host, &["status", "--json"])?,
    )?)
}

/// What the soak saw while it ran.
struct Polled {
    polls: u64,
    without_one_holder: u64,
    /// Peer-lost alarms as (node, raised at ms); `None` for keepalived.
    peer_lost: Option<BTreeSet<(&'static str, u64)>>,
    copies: Option<(u64, u64)>,
    from_syncs: Option<(u64, u64)>,
}

/// The node holding the shared address now (node 1 when neither does).
fn holder(site: &Site<'_>) -> Host {
    if site.holds(Host::Node2) && !site.holds(Host::Node1) {
        Host::Node2
    } else {
        Host::Node1
    }
}

/// Polls the site for `length`; on tandem's site, the holder runs
/// `copy-config-files` in a loop meanwhile, and the standby resynchronises
/// its database from the holder (`switch-on -S -F from-sync`) in another.
fn watch(site: &Site<'_>, length: Duration, dir: &std::path::Path) -> anyhow::Result<Polled> {
    let tandem = !matches!(site.system(), System::Keepalived(_));
    let stop = AtomicBool::new(false);
    let (sent, failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let (synced, sync_failed) = (AtomicU64::new(0), AtomicU64::new(0));
    let copy_log = dir.join("copy-config-files.log");
    let sync_log = dir.join("from-sync.log");
    std::thread::scope(|scope| {
        if tandem && site.replicates() {
            scope.spawn(|| {
                let mut errors = String::new();
                while !stop.load(Ordering::Relaxed) {
                    let standby = match holder(site) {
                        Host::Node1 => Host::Node2,
                        _ => Host::Node1,
                    };
                    match site.mp(standby, &["switch-on", "-S", "-F", "from-sync"]) {
                        Ok(_) => synced.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push_str(&format!("{e:#}\n"));
                            std::thread::sleep(Duration::from_millis(200));
                            sync_failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                let _ = std::fs::write(&sync_log, errors);
            });
        }
        if tandem {
            scope.spawn(|| {
                let mut errors = String::new();
                while !stop.load(Ordering::Relaxed) {
                    match site.failover(holder(site), &["copy-config-files"]) {
                        Ok(_) => sent.fetch_add(1, Ordering::Relaxed),
                        Err(e) => {
                            errors.push_str(&format!("{e:#}\n"));
                            std::thread::sleep(Duration::from_millis(200));
                            failed.fetch_add(1, Ordering::Relaxed)
                        }
                    };
                }
                let _ = std::fs::write(&copy_log, errors);
            });
        }
        let polled = poll(site, length, tandem);
        stop.store(true, Ordering::Relaxed);
        polled
    })
    .map(|mut polled| {
        if tandem {
            polled.copies = Some((sent.into_inner(), failed.into_inner()));
        }
        if tandem && site.replicates() {
            polled.from_syncs = Some((synced.into_inner(), sync_failed.into_inner()));
        }
        polled
    })
}

fn poll(site: &Site<'_>, length: Duration, tandem: bool) -> anyhow::Result<Polled> {
    let mut polled = Polled {
        polls: 0,
        without_one_holder: 0,
        peer_lost: tandem.then(BTreeSet::new),
        copies: None,
        from_syncs: None,
    };
    let deadline = Instant::now() + length;
    while Instant::now() < deadline {
        let next = Instant::now() + POLL_EVERY;
        polled.polls += 1;
        if site.holds(Host::Node1) == site.holds(Host::Node2) {
            polled.without_one_holder += 1;
        }
        if let Some(seen) = polled.peer_lost.as_mut() {
            for host in [Host::Node1, Host::Node2] {
                // A node too busy to answer is polled again next time: the
                // history keeps the last 50 alarms.
                let Ok(status) = status(site, host) else {
                    continue;
                };
                let alarms = [&status["alarms"], &status["alarm_history"]];
                for alarm in alarms.iter().filter_map(|a| a.as_array()).flatten() {
                    let message = alarm["message"].as_str().unwrap_or("");
                    if message.starts_with("peer lost")
                        && let Some(raised) = alarm["raised_ms"].as_u64()
                    {
                        seen.insert((host.name(), raised));
                    }
                }
            }
        }
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    Ok(polled)
}

/// `stress-ng` in both node namespaces, killed when dropped.
struct Stress {
    children: Vec<Child>,
}

impl Stress {
    fn start(lab: &Lab, dir: &std::path::Path, length: Duration) -> anyhow::Result<Stress> {
        let mut stress = Stress {
            children: Vec::new(),
        };
        for host in [Host::Node1, Host::Node2] {
            // The disk workers write under the soak's directory; the timeout
            // ends the workers even if this process dies without dropping.
            let work = dir.join(format!("{}-stress", host.name()));
            std::fs::create_dir_all(&work)?;
            let log = std::fs::File::create(dir.join(format!("{}-stress.log", host.name())))?;
            let child = lab
                .command(host, "stress-ng")
                .args(STRESS)
                .arg("--temp-path")
                .arg(&work)
                .arg("--timeout")
                .arg(format!("{}s", length.as_secs() + 60))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting stress-ng")?;
            stress.children.push(child);
        }
        Ok(stress)
    }
}

impl Drop for Stress {
    fn drop(&mut self) {
        crate::site::stop_processes(self.children.iter_mut(), Duration::from_secs(10));
    }
}

fn print(results: &[Counts]) {
    println!("\nSoak under stress (stress-ng {}):", STRESS.join(" "));
    println!(
        "  {:<40} {:>6} {:>9} {:>8} {:>9} {:>10} {:>10} {:>12} {:>12}",
        "system",
        "s",
        "failover",
        "client",
        "no 1 hold",
        "peer lost",
        "gap ms",
        "copies",
        "from-syncs"
    );
    for c in results {
        println!(
            "  {:<40} {:>6.0} {:>9} {:>8} {:>9} {:>10} {:>10.1} {:>12} {:>12}",
            c.system,
            c.seconds,
            c.false_failovers,
            c.client_saw_changes,
            format!("{}/{}", c.polls_without_one_holder, c.polls),
            c.peer_lost_alarms
                .map_or_else(|| "-".to_owned(), |n| n.to_string()),
            c.longest_gap_ms,
            c.copies
                .map_or_else(|| "-".to_owned(), |(ok, bad)| format!("{ok} ({bad} bad)")),
            c.from_syncs
                .map_or_else(|| "-".to_owned(), |(ok, bad)| format!("{ok} ({bad} bad)")),
        );
    }
}

/// The summary rows: tandem's counts beside keepalived's.
fn summary(results: &[Counts]) -> Vec<super::Row> {
    let (Some(tandem), Some(keepalived)) = (results.first(), results.get(1)) else {
        return Vec::new();
    };
    let minutes = tandem.seconds / 60.0;
    vec![
        super::Row::new(
            "soak",
            format!(
                "false failovers under stress, {minutes:.1} min (heartbeat {SMALLEST_HEARTBEAT_MS} ms)"
            ),
            tandem.false_failovers.to_string(),
            format!(
                "keepalived advert_int 0.01: {}",
                keepalived.false_failovers
            ),
        )
        .target("0 false failovers", tandem.false_failovers == 0),
        super::Row::new(
            "soak",
            "peer-lost alarms under stress",
            tandem
                .peer_lost_alarms
                .map_or_else(String::new, |n| n.to_string()),
            "keepalived: no alarms",
        ),
        super::Row::new(
            "soak",
            "client's longest gap under stress",
            format!("{:.0} ms", tandem.longest_gap_ms),
            format!(
                "keepalived advert_int 0.01: {:.0} ms",
                keepalived.longest_gap_ms
            ),
        )
        .ratio(tandem.longest_gap_ms, keepalived.longest_gap_ms),
    ]
}
