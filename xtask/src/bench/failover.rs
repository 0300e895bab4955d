//! `cargo xtask bench failover`: how long clients are cut off when the active
//! node's link is cut, for tandem beside keepalived, in the same lab with the
//! same client probe; and the agent's memory and CPU.
//!
//! Unplanned failover, [`RUNS`] runs per system and setting (`--runs`), as
//! median and p99 (`--system tandem:100 --system keepalived:0.1` picks settings):
//! - tandem's agents (`failover agent`, release build) with `auto_failover = true`
//!   at the default timing (heartbeat 200 ms, 3 missed, probes of 3 x 100 ms), at
//!   a heartbeat of 1 s and 100 ms, and at the smallest heartbeat measured
//!   ([`SMALLEST_HEARTBEAT_MS`]); below 200 ms the probes follow the heartbeat
//!   (`ProbeSection::for_heartbeat`, as `failover check` advises);
//! - keepalived (the distribution's package, VRRPv3, unicast between the node
//!   addresses) at `advert_int 1`, `0.1` and its smallest measured
//!   ([`SMALLEST_ADVERT_CS`]), with `nopreempt` on both nodes: like tandem, it
//!   does not hand the address back to the recovered node.
//!
//! At the smallest intervals (tandem at 20 ms, keepalived at `advert_int 0.01`)
//! both run with their heartbeat path protected, as OPERATIONS.md tells an
//! operator to: tandem's `realtime_priority` [`REALTIME_PRIORITY`] and
//! `lock_memory`, keepalived's `vrrp_rt_priority` and `vrrp_no_swap`. The rows
//! say "real-time". `TANDEM_KEEP_SITE=1` keeps each setting's agent logs, as it keeps the demo's site.
//!
//! Each run cuts the cable of whichever node holds the shared address, waits for
//! the client to hear the other node, then plugs the cable back and waits until
//! one node holds the address again. The client sends a UDP datagram to the
//! shared address every [`PROBE_EVERY`]; each node's echo server answers with its
//! name. The outage is the time from the cut to the first answer of the new node.
//!
//! Planned switchover (tandem only, keepalived has no such command), at the
//! smallest tandem heartbeat measured: `failover
//! set-server standby` on the active node, then `set-server active` on the other,
//! through the agents; the outage is the client's gap between the last answer of
//! the old node and the first of the new one.
//!
//! Planned switchover with writes: the demo's site (`cargo xtask demo`, release
//! build) with its client writing through an application that acknowledges a
//! write once the standby has it, then the same number of planned switchovers;
//! the outage is the client's gap between acknowledgements as they arrive (the
//! client sends a write every 10 ms without waiting for the last answer), and
//! every acknowledged write is looked up on both nodes at the end.
//!
//! The agents' resident memory and CPU are read from `/proc` over an idle window,
//! beside keepalived's, and over a window of the writing client's site before its
//! switchovers, where each agent hosts its node's replication service.
//!
//! Needs root (the lab) and keepalived (`bash .ci/install-deps` installs it).
//! Results print as a table and go to `target/bench/failover.json`.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, Lab, LabConfig, SHARED_ADDR};

/// Runs per system and setting.
pub(crate) const RUNS: usize = 20;
/// How often the client probes the shared address.
const PROBE_EVERY: Duration = Duration::from_millis(2);
/// UDP port of the echo servers.
const ECHO_PORT: u16 = 9008;
/// Longest wait for a takeover before the run counts as failed.
const TAKEOVER_CAP: Duration = Duration::from_secs(30);

/// One system under test at one setting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum System {
    /// tandem's agents with this heartbeat interval in milliseconds.
    Tandem(u64),
    /// tandem's agents with this heartbeat and a three-member etcd witness.
    Witness(u64),
    /// keepalived with this `advert_int` in centiseconds.
    Keepalived(u64),
}

impl System {
    /// The heartbeat or advertisement interval in milliseconds.
    pub(crate) fn interval_ms(self) -> u64 {
        match self {
            System::Tandem(ms) | System::Witness(ms) => ms,
            System::Keepalived(cs) => cs * 10,
        }
    }

    /// Whether the bench runs this setting with its heartbeat path protected
    /// (real-time priority, memory locked), as OPERATIONS.md tells an operator
    /// to do at the smallest intervals and as keepalived offers: tandem at 20 ms
    /// or less, keepalived at `advert_int 0.01`.
    pub(crate) fn protected(self) -> bool {
        self.interval_ms() <= 20
    }

    /// tandem without a witness (the rows compared with keepalived).
    fn is_tandem(self) -> bool {
        matches!(self, System::Tandem(_))
    }

    /// tandem's agents, with or without a witness.
    fn runs_agents(self) -> bool {
        matches!(self, System::Tandem(_) | System::Witness(_))
    }

    /// `keepalived advert_int 0.1` or `tandem 200 ms`.
    fn short_label(self) -> String {
        match self {
            System::Tandem(ms) => format!("tandem {ms} ms"),
            System::Witness(ms) => format!("tandem {ms} ms with the witness"),
            System::Keepalived(cs) => format!("keepalived advert_int {}", cs as f64 / 100.0),
        }
    }

    pub(crate) fn label(self) -> String {
        match self {
            System::Tandem(200) => "tandem, heartbeat 200 ms (default), 3 missed".into(),
            System::Tandem(ms) if self.protected() => {
                format!("tandem, heartbeat {ms} ms, 3 missed, real-time")
            }
            System::Tandem(ms) => format!("tandem, heartbeat {ms} ms, 3 missed"),
            System::Witness(ms) => format!("tandem, heartbeat {ms} ms, etcd witness, TTL 3 s"),
            System::Keepalived(100) => "keepalived VRRPv3, advert_int 1".into(),
            System::Keepalived(cs) if self.protected() => format!(
                "keepalived VRRPv3, advert_int {}, real-time",
                cs as f64 / 100.0
            ),
            System::Keepalived(cs) => {
                format!("keepalived VRRPv3, advert_int {}", cs as f64 / 100.0)
            }
        }
    }
}

/// What to run of the failover area.
#[derive(Debug, Clone)]
pub(crate) struct Options {
    /// Unplanned and planned runs per setting.
    pub runs: usize,
    /// The settings to measure; all of [`SETTINGS`] when empty.
    pub systems: Vec<String>,
}

/// The settings the issue asks for, in the order they run.
const SETTINGS: [System; 8] = [
    System::Tandem(200),
    System::Witness(200),
    System::Tandem(1000),
    System::Keepalived(100),
    System::Tandem(100),
    System::Keepalived(10),
    System::Tandem(SMALLEST_HEARTBEAT_MS),
    System::Keepalived(SMALLEST_ADVERT_CS),
];

/// The smallest heartbeat measured by default, with the probe settings that fit
/// it ([`tandem_node::ProbeSection::for_heartbeat`]).
pub(crate) const SMALLEST_HEARTBEAT_MS: u64 = 20;

/// keepalived's smallest `advert_int` measured by default, in centiseconds:
/// VRRPv3 carries the interval in centiseconds, so 0.01 s is its smallest.
pub(crate) const SMALLEST_ADVERT_CS: u64 = 1;

impl System {
    /// Parses `tandem:<heartbeat ms>` or `keepalived:<advert_int s>`.
    fn parse(text: &str) -> anyhow::Result<System> {
        let bad = || {
            anyhow::anyhow!(
                "`{text}` is not a failover setting: use tandem:<heartbeat ms> (tandem:200), \
                 tandem-witness:<heartbeat ms> or keepalived:<advert_int seconds> (keepalived:0.1)"
            )
        };
        let (what, value) = text.split_once(':').ok_or_else(bad)?;
        match what {
            "tandem" => value.parse().map(System::Tandem).map_err(|_| bad()),
            "tandem-witness" => value.parse().map(System::Witness).map_err(|_| bad()),
            "keepalived" => {
                let secs: f64 = value.parse().map_err(|_| bad())?;
                if !(0.01..=2.55).contains(&secs) {
                    return Err(bad());
                }
                Ok(System::Keepalived((secs * 100.0).round() as u64))
            }
            _ => Err(bad()),
        }
    }
}

pub(crate) fn run(options: &Options) -> anyhow::Result<Vec<super::Row>> {
    let systems: Vec<System> = if options.systems.is_empty() {
        SETTINGS.to_vec()
    } else {
        options
            .systems
            .iter()
            .map(|s| System::parse(s))
            .collect::<anyhow::Result<_>>()?
    };
    let runs = options.runs.max(1);
    if Command::new("keepalived")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "keepalived is missing: run `bash .ci/install-deps` as root (Debian package keepalived)"
        );
    }
    // The planned switchovers run at the smallest heartbeat measured.
    let planned_at = systems
        .iter()
        .copied()
        .filter(|s| s.is_tandem())
        .min_by_key(|s| s.interval_ms());
    let release = super::build_release(&["failover", "mp_replication"])?;
    let bin = release.join("failover");
    let mut results = Vec::new();
    let mut planned = None;
    let mut memory = Vec::new();
    for system in systems {
        println!("bench failover: {} ({runs} runs)", system.label());
        let lab =
            Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
        let dir = tempfile::Builder::new()
            .prefix("tandem-bench-failover-")
            .tempdir()?;
        let probe = Probe::start(&lab)?;
        let measured = (|| {
            let site = Site::start(&lab, &bin, dir.path(), system)?;
            site.wait_one_holder(Duration::from_secs(30))?;
            site.wait_peer_link()?;
            if let System::Tandem(200) | System::Keepalived(100) = system {
                std::thread::sleep(Duration::from_secs(3));
                memory.extend(site.usage(Duration::from_secs(5))?);
            }
            let mut outages = Vec::new();
            for run in 0..runs {
                let outage = site.unplanned(&probe)?;
                println!(
                    "  run {:>2}: {:>7.1} ms",
                    run + 1,
                    outage.as_secs_f64() * 1000.0
                );
                outages.push(outage);
            }
            if Some(system) == planned_at {
                planned = Some(Planned {
                    heartbeat_ms: system.interval_ms(),
                    two_commands: site.planned_runs(&probe, runs, false)?,
                    one_command: site.planned_runs(&probe, runs, true)?,
                });
            }
            anyhow::Ok(outages)
        })();
        probe.stop();
        let mut outages: Vec<Duration> = match measured {
            Ok(outages) => outages,
            Err(e) => {
                // Keep the logs for the operator.
                let kept = dir.keep();
                return Err(e.context(format!("logs kept in {}", kept.display())));
            }
        };
        if std::env::var_os(crate::site::KEEP_SITE_ENV).is_some() {
            let kept = dir.keep();
            println!("  logs kept in {}", kept.display());
        }
        outages.sort();
        results.push((system, outages));
    }
    println!("bench failover: planned switchovers with a writing client ({runs} runs)");
    let writes = crate::demo::planned_with_writes(
        &crate::site::Binaries {
            failover: bin.clone(),
            mp_replication: release.join("mp_replication"),
        },
        runs,
    )
    .context("planned switchovers with a writing client")?;
    print(&results, planned.as_ref(), &memory, &writes);
    write_json(&results, planned.as_ref(), &memory, &writes)?;
    Ok(summary(&results, planned.as_ref(), &memory, &writes))
}

/// The summary lines: each tandem setting beside keepalived at the same
/// interval, the planned switchover and the processes' memory and CPU.
fn summary(
    results: &[(System, Vec<Duration>)],
    planned: Option<&Planned>,
    memory: &[Usage],
    writes: &crate::demo::PlannedWrites,
) -> Vec<super::Row> {
    let fig = |o: &[Duration]| format!("{:.0} / {:.0} ms", ms(pct(o, 50.0)), ms(pct(o, 99.0)));
    let find = |want: System| {
        results.iter().find(|(s, _)| {
            s.interval_ms() == want.interval_ms()
                && std::mem::discriminant(s) == std::mem::discriminant(&want)
        })
    };
    let mut rows = Vec::new();
    for (system, outages) in results.iter().filter(|(s, _)| s.is_tandem()) {
        let median = ms(pct(outages, 50.0));
        let mut row = super::Row::new(
            "failover",
            format!(
                "unplanned outage, heartbeat {} ms (median / p99)",
                system.interval_ms()
            ),
            fig(outages),
            "",
        );
        let p99 = ms(pct(outages, 99.0));
        let mut met = true;
        let mut target = Vec::new();
        if system.interval_ms() == 200 {
            met &= median < 1000.0;
            target.push("< 1 s");
        }
        if system.interval_ms() <= SMALLEST_HEARTBEAT_MS {
            met &= p99 < 100.0;
            target.push("p99 < 100 ms");
        }
        // Beside keepalived at the same interval; the smallest tandem heartbeat
        // beside keepalived's smallest interval.
        let smallest_keepalived = results
            .iter()
            .filter(|(s, _)| matches!(s, System::Keepalived(_)))
            .min_by_key(|(s, _)| s.interval_ms());
        let baseline = find(System::Keepalived(system.interval_ms() / 10)).or(
            if system.interval_ms() <= SMALLEST_HEARTBEAT_MS {
                smallest_keepalived
            } else {
                None
            },
        );
        if let Some((k, ko)) = baseline {
            let kmedian = ms(pct(ko, 50.0));
            row.baseline = format!("{}: {}", k.short_label(), fig(ko));
            row = row.ratio(median, kmedian);
            met &= median <= kmedian;
            target.push("<= keepalived");
        }
        if !target.is_empty() {
            row = row.target(target.join(", "), met);
        }
        rows.push(row);
    }
    for (system, outages) in results
        .iter()
        .filter(|(s, _)| s.runs_agents() && !s.is_tandem())
    {
        // With the witness, beside the same heartbeat without it.
        let mut row = super::Row::new(
            "failover",
            format!(
                "unplanned outage with the etcd witness (lease TTL 3 s), heartbeat {} ms (median / p99)",
                system.interval_ms()
            ),
            fig(outages),
            "",
        );
        if let Some((t, to)) = find(System::Tandem(system.interval_ms())) {
            row.baseline = format!("{} without: {}", t.short_label(), fig(to));
            row = row.ratio(ms(pct(outages, 50.0)), ms(pct(to, 50.0)));
        }
        rows.push(row);
    }
    for (system, outages) in results.iter().filter(|(s, _)| !s.runs_agents()) {
        if find(System::Tandem(system.interval_ms())).is_none() {
            rows.push(super::Row::new(
                "failover",
                format!("unplanned outage, {} (median / p99)", system.short_label()),
                "",
                fig(outages),
            ));
        }
    }
    if let Some(planned) = planned {
        for (how, outages) in planned.series() {
            rows.push(
                super::Row::new(
                    "failover",
                    format!(
                        "planned switchover, {how}, heartbeat {} ms: client outage (median / p99)",
                        planned.heartbeat_ms
                    ),
                    fig(outages),
                    "keepalived: no such command",
                )
                .target("p99 < 50 ms", ms(pct(outages, 99.0)) < 50.0),
            );
        }
    }
    for (how, outages) in writes.series() {
        rows.push(
            super::Row::new(
                "failover",
                format!(
                    "planned switchover, {how}, writing client: outage (median / p99), {} acked \
                     writes",
                    writes.acked
                ),
                format!("{}, {} lost", fig(outages), writes.lost),
                "keepalived: no such command",
            )
            .target(
                "p99 < 50 ms, 0 lost",
                ms(pct(outages, 99.0)) < 50.0 && writes.lost == 0 && writes.identical,
            ),
        );
    }
    let tandem_mem: Vec<&Usage> = memory
        .iter()
        .filter(|u| u.what.starts_with("failover"))
        .collect();
    let keepalived_mem: Vec<&Usage> = memory
        .iter()
        .filter(|u| !u.what.starts_with("failover"))
        .collect();
    let worst = |u: &[&Usage]| {
        (
            u.iter().map(|u| u.rss_kib).max().unwrap_or(0),
            u.iter().map(|u| u.cpu_percent).fold(0.0, f64::max),
        )
    };
    if !tandem_mem.is_empty() {
        let (rss, cpu) = worst(&tandem_mem);
        let (krss, kcpu) = worst(&keepalived_mem);
        rows.push(
            super::Row::new(
                "failover",
                "idle agent: resident memory, CPU (larger node)",
                format!("{:.1} MiB, {cpu:.1} %", rss as f64 / 1024.0),
                if keepalived_mem.is_empty() {
                    String::new()
                } else {
                    format!("keepalived {:.1} MiB, {kcpu:.1} %", krss as f64 / 1024.0)
                },
            )
            .ratio(rss as f64, krss as f64),
        );
    }
    if !writes.replicating.is_empty() {
        let rss = writes.replicating.iter().map(|u| u.1).max().unwrap_or(0);
        let cpu = writes.replicating.iter().map(|u| u.2).fold(0.0, f64::max);
        rows.push(super::Row::new(
            "failover",
            "agent while replicating (client writing every 10 ms): memory, CPU (larger node)",
            format!("{:.1} MiB, {cpu:.1} %", rss as f64 / 1024.0),
            "keepalived does not replicate",
        ));
    }
    rows
}

/// The client's probe: a datagram to the shared address every [`PROBE_EVERY`],
/// answers recorded with the time they arrived and the node that sent them.
pub(crate) struct Probe {
    started: Instant,
    /// `started` on the wall clock, in microseconds since the Unix epoch, to
    /// line up the agents' step records with the client's answers.
    started_wall_us: u64,
    answers: Arc<Mutex<Vec<(Duration, String)>>>,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<tandem_lab::Result<anyhow::Result<()>>>>,
}

impl Probe {
    pub(crate) fn start(lab: &Lab) -> anyhow::Result<Probe> {
        let stop = Arc::new(AtomicBool::new(false));
        let answers: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
        let started = Instant::now();
        let started_wall_us = wall_us();
        let mut threads = Vec::new();
        for host in [Host::Node1, Host::Node2] {
            let stop = stop.clone();
            threads.push(lab.spawn_in(host, move || echo(host, &stop))?);
        }
        let (s, a) = (stop.clone(), answers.clone());
        threads.push(lab.spawn_in(Host::Client, move || client(started, &s, &a))?);
        Ok(Probe {
            started,
            started_wall_us,
            answers,
            stop,
            threads,
        })
    }

    pub(crate) fn now(&self) -> Duration {
        self.started.elapsed()
    }

    /// The first answer of `node` at or after `from`.
    pub(crate) fn first_from(&self, node: &str, from: Duration) -> Option<Duration> {
        let answers = self.answers.lock().ok()?;
        answers
            .iter()
            .find(|(t, who)| *t >= from && who == node)
            .map(|(t, _)| *t)
    }

    /// The longest time between two answers (of any node) from `from` to
    /// `to`, the edges counted as answers: the client's longest outage.
    pub(crate) fn longest_gap(&self, from: Duration, to: Duration) -> Duration {
        let Ok(answers) = self.answers.lock() else {
            return Duration::ZERO;
        };
        let mut last = from;
        let mut longest = Duration::ZERO;
        for (t, _) in answers.iter().filter(|(t, _)| *t >= from && *t <= to) {
            longest = longest.max(t.saturating_sub(last));
            last = *t;
        }
        longest.max(to.saturating_sub(last))
    }

    /// How often the answering node changed from `from` to `to`, as the
    /// client saw it.
    pub(crate) fn sender_changes(&self, from: Duration, to: Duration) -> usize {
        let Ok(answers) = self.answers.lock() else {
            return 0;
        };
        let mut senders = answers
            .iter()
            .filter(|(t, _)| *t >= from && *t <= to)
            .map(|(_, who)| who);
        let Some(mut last) = senders.next() else {
            return 0;
        };
        let mut changes = 0;
        for who in senders {
            if who != last {
                changes += 1;
                last = who;
            }
        }
        changes
    }

    /// The last answer of any node before `before`.
    fn last_before(&self, before: Duration) -> Option<Duration> {
        let answers = self.answers.lock().ok()?;
        answers
            .iter()
            .rev()
            .find(|(t, _)| *t < before)
            .map(|(t, _)| *t)
    }

    pub(crate) fn stop(self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads {
            let _ = t.join();
        }
    }
}

fn echo(host: Host, stop: &AtomicBool) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", ECHO_PORT))?;
    socket.set_read_timeout(Some(Duration::from_millis(50)))?;
    let mut buf = [0u8; 64];
    while !stop.load(Ordering::Relaxed) {
        if let Ok((_, from)) = socket.recv_from(&mut buf) {
            let _ = socket.send_to(host.name().as_bytes(), from);
        }
    }
    Ok(())
}

fn client(
    started: Instant,
    stop: &AtomicBool,
    answers: &Mutex<Vec<(Duration, String)>>,
) -> anyhow::Result<()> {
    let socket = UdpSocket::bind(("0.0.0.0", 0))?;
    socket.set_read_timeout(Some(Duration::from_millis(1)))?;
    let target = SocketAddr::from((SHARED_ADDR, ECHO_PORT));
    let mut buf = [0u8; 64];
    let mut next = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        if Instant::now() >= next {
            let _ = socket.send_to(b"?", target);
            next += PROBE_EVERY;
        }
        if let Ok((n, _)) = socket.recv_from(&mut buf) {
            let who = String::from_utf8_lossy(&buf[..n]).into_owned();
            if let Ok(mut list) = answers.lock() {
                list.push((started.elapsed(), who));
            }
        }
    }
    Ok(())
}

/// Two nodes running one system, killed when dropped.
pub(crate) struct Site<'a> {
    lab: &'a Lab,
    bin: &'a Path,
    dir: &'a Path,
    system: System,
    children: Vec<(Host, Child)>,
    witness: Option<tandem_lab::WitnessCluster>,
    /// The config files `copy-config-files` sends (tandem), if any.
    bundle: Option<tandem_bundle::BundleSpec>,
    /// Whether the heartbeat path runs at real-time priority with its memory
    /// locked ([`REALTIME_PRIORITY`]; keepalived's `vrrp_rt_priority` and
    /// `vrrp_no_swap`, tandem's `realtime_priority` and `lock_memory`).
    protected: bool,
    /// Whether tandem's nodes replicate the sample schema (SQLite), for the
    /// soak's from-sync loop.
    replicate: bool,
}

/// What a site runs beside the failover itself.
#[derive(Debug, Clone, Default)]
pub(crate) struct Extras {
    /// The config files `copy-config-files` sends (tandem), if any.
    pub(crate) bundle: Option<tandem_bundle::BundleSpec>,
    /// Both systems' heartbeat paths at real-time priority, memory locked.
    pub(crate) protected: bool,
    /// tandem's nodes replicate the sample schema (SQLite): [`FILL_ROWS`] rows
    /// written on node 1 once it is active, then replication switched on.
    pub(crate) replicate: bool,
}

/// Rows of the sample workload a replicating site starts with, so that a
/// from-sync carries some data (about 20 MB).
pub(crate) const FILL_ROWS: u64 = 100_000;

/// The real-time priority of a protected heartbeat path, for both systems.
pub(crate) const REALTIME_PRIORITY: u8 = 50;

impl<'a> Site<'a> {
    fn start(
        lab: &'a Lab,
        bin: &'a Path,
        dir: &'a Path,
        system: System,
    ) -> anyhow::Result<Site<'a>> {
        let extras = Extras {
            protected: system.protected(),
            ..Extras::default()
        };
        Site::start_with(lab, bin, dir, system, extras)
    }

    /// Starts both nodes with `extras` (see [`Extras`]).
    pub(crate) fn start_with(
        lab: &'a Lab,
        bin: &'a Path,
        dir: &'a Path,
        system: System,
        extras: Extras,
    ) -> anyhow::Result<Site<'a>> {
        let mut site = Site {
            lab,
            bin,
            dir,
            system,
            children: Vec::new(),
            witness: None,
            bundle: extras.bundle,
            protected: extras.protected,
            replicate: extras.replicate && matches!(system, System::Tandem(_)),
        };
        if let System::Witness(_) = system {
            site.witness = Some(lab.start_witness(3).context("starting the etcd witness")?);
        }
        match system {
            System::Tandem(heartbeat) | System::Witness(heartbeat) => {
                tandem_peer::keygen(&dir.join("authkey"))?;
                for host in [Host::Node1, Host::Node2] {
                    site.tandem_config(host, heartbeat)?;
                }
                if site.replicate {
                    for host in [Host::Node2, Host::Node1] {
                        let (id, _, peer) = crate::site::node_facts(host);
                        site.mp(
                            host,
                            &["init", "-n", &id.to_string(), "-r", &peer.to_string()],
                        )?;
                    }
                }
                // node1 boots first and claims (the shared address is silent);
                // node2 boots once it answers and stays standby.
                site.spawn_agent(Host::Node1)?;
                site.wait(Duration::from_secs(20), "node1 claiming at boot", |s| {
                    s.holds(Host::Node1)
                })?;
                site.spawn_agent(Host::Node2)?;
                site.wait(Duration::from_secs(20), "node2's agent", |s| {
                    s.failover(Host::Node2, &["status"])
                        .is_ok_and(|t| t.contains("Standby"))
                })?;
                if site.replicate {
                    // Node 1 is active (its database writable): fill it, then
                    // switch replication on, so that node 2 starts from a copy.
                    site.wait_peer_link()?;
                    site.fill(Host::Node1)?;
                    site.mp(Host::Node1, &["switch-on"])?;
                }
            }
            System::Keepalived(advert) => {
                for host in [Host::Node1, Host::Node2] {
                    site.spawn_keepalived(host, advert)?;
                }
            }
        }
        Ok(site)
    }

    /// The system the site runs.
    pub(crate) fn system(&self) -> System {
        self.system
    }

    fn paths(&self, host: Host) -> (PathBuf, PathBuf) {
        (
            self.dir.join(format!("{}.toml", host.name())),
            self.dir.join(host.name()),
        )
    }

    /// The whole node config (there is no `set-deployment` here: the state file is
    /// written as a first boot), serialised from the node's typed config.
    fn tandem_config(&self, host: Host, heartbeat: u64) -> anyhow::Result<()> {
        let (id, peer) = match host {
            Host::Node1 => (1, Host::Node2),
            _ => (2, Host::Node1),
        };
        let node =
            tandem_role::NodeId::try_from(id).map_err(|e| anyhow::anyhow!("node id: {e}"))?;
        let on_lab = |addr: std::net::Ipv4Addr| -> anyhow::Result<ipnet::IpNet> {
            Ok(ipnet::Ipv4Net::new(addr, 24)?.into())
        };
        let config = tandem_node::NodeConfig {
            node: tandem_node::NodeSection {
                id: node,
                site: tandem_role::SiteId::ONE,
                hostname: crate::site::harness::hostname(host),
                shared_hostname: None,
            },
            network: tandem_node::NetworkSection {
                interface: tandem_lab::LAB_IFACE.to_owned(),
                shared_address: on_lab(SHARED_ADDR)?,
                node_address: on_lab(host.addr())?,
                node_label: None,
                gateway: tandem_lab::GATEWAY_ADDR.into(),
                reference: None,
                peer_address: peer.addr().into(),
            },
            probe: tandem_node::ProbeSection::for_heartbeat(heartbeat),
            failover: tandem_node::FailoverSection {
                auto_failover: true,
                heartbeat_ms: heartbeat,
                missed_heartbeats: 3,
                realtime_priority: if self.protected { REALTIME_PRIORITY } else { 0 },
                lock_memory: self.protected,
                ..tandem_node::FailoverSection::default()
            },
            services: Vec::new(),
            hooks: tandem_node::Hooks::default(),
            bundle: self.bundle.clone(),
            replication: self
                .replicate
                .then(|| crate::site::config::sqlite_replication(200)),
            peer: Some(crate::site::config::peer(self.dir.join("authkey"))),
            witness: self
                .witness
                .as_ref()
                .map(|w| crate::site::config::witness(w.endpoints())),
        };
        let (path, state) = self.paths(host);
        std::fs::write(&path, toml::to_string(&config)?)?;
        let mut s = tandem_role::NodeState::first_boot(node, tandem_role::SiteId::ONE);
        s.deployment = tandem_role::DeploymentMode::Failover;
        tandem_role::StateFile::in_dir(&state).save(&s)?;
        Ok(())
    }

    /// Whether tandem's nodes replicate (see [`Extras::replicate`]).
    pub(crate) fn replicates(&self) -> bool {
        self.replicate
    }

    /// Runs `mp_replication args...` on `host` (the binary beside `failover`).
    pub(crate) fn mp(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        self.tool(&self.bin.with_file_name("mp_replication"), host, args)
    }

    /// Runs `program` (one of the two tools) with `host`'s config and state
    /// directory and `args`, in `host`'s namespace: its output, or an error
    /// with everything it printed.
    fn tool(&self, program: &Path, host: Host, args: &[&str]) -> anyhow::Result<String> {
        let (config, state) = self.paths(host);
        let out = self
            .lab
            .command(host, &program.display().to_string())
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(args)
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            let name = program.file_name().unwrap_or_default().to_string_lossy();
            bail!(
                "{name} {} on {host}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Writes [`FILL_ROWS`] rows of the sample workload into `host`'s
    /// replicated database (captured, as an application's writes are).
    fn fill(&self, host: Host) -> anyhow::Result<()> {
        use sqlx::ConnectOptions;
        let (config, state) = self.paths(host);
        let config = tandem_node::NodeConfig::load(&config)?;
        let db = tandem_node::replication_settings(&config, &state)?.database_path();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let mut conn = sqlx::sqlite::SqliteConnectOptions::new()
                .filename(&db)
                .busy_timeout(Duration::from_secs(10))
                .connect()
                .await
                .with_context(|| format!("opening {}", db.display()))?;
            const ROWS: u32 = 50;
            for tx in 1..=FILL_ROWS / u64::from(ROWS) {
                tandem_sample::write_transaction(&mut conn, tx, ROWS).await?;
            }
            anyhow::Ok(())
        })
    }

    /// Runs `failover args...` on `host`.
    pub(crate) fn failover(&self, host: Host, args: &[&str]) -> anyhow::Result<String> {
        self.tool(self.bin, host, args)
    }

    fn spawn_agent(&mut self, host: Host) -> anyhow::Result<()> {
        let (config, state) = self.paths(host);
        let log = std::fs::File::create(self.dir.join(format!("{}-agent.log", host.name())))?;
        let child = self
            .lab
            .command(host, &self.bin.display().to_string())
            .arg("--config")
            .arg(&config)
            .arg("--state-dir")
            .arg(&state)
            .args(["agent", "--key-file"])
            .arg(self.dir.join("authkey"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting the agent")?;
        self.children.push((host, child));
        Ok(())
    }

    fn spawn_keepalived(&mut self, host: Host, advert_cs: u64) -> anyhow::Result<()> {
        let (peer, priority) = match host {
            Host::Node1 => (Host::Node2, 150),
            _ => (Host::Node1, 100),
        };
        let conf = self.dir.join(format!("{}-keepalived.conf", host.name()));
        let advert = format!("{}", advert_cs as f64 / 100.0);
        let protection = if self.protected {
            format!("  vrrp_rt_priority {REALTIME_PRIORITY}\n  vrrp_no_swap\n")
        } else {
            String::new()
        };
        std::fs::write(
            &conf,
            format!(
                "global_defs {{\n  router_id {name}\n  vrrp_version 3\n  enable_script_security\n{protection}}}\n\
                 vrrp_instance tandem {{\n  state BACKUP\n  nopreempt\n  interface eth0\n  virtual_router_id 51\n\
                 priority {priority}\n  advert_int {advert}\n  unicast_src_ip {own}\n\
                 unicast_peer {{\n    {peer}\n  }}\n  virtual_ipaddress {{\n    {SHARED_ADDR}/24 dev eth0\n  }}\n}}\n",
                name = host.name(),
                own = host.addr(),
                peer = peer.addr(),
            ),
        )?;
        let run = self.dir.join(host.name());
        std::fs::create_dir_all(&run)?;
        let log = std::fs::File::create(self.dir.join(format!("{}-keepalived.log", host.name())))?;
        let child = self
            .lab
            .command(host, "keepalived")
            .args(["--dont-fork", "--log-console", "--vrrp", "--use-file"])
            .arg(&conf)
            .arg("--pid")
            .arg(run.join("keepalived.pid"))
            .arg("--vrrp_pid")
            .arg(run.join("vrrp.pid"))
            .arg("--checkers_pid")
            .arg(run.join("checkers.pid"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .context("starting keepalived")?;
        self.children.push((host, child));
        Ok(())
    }

    pub(crate) fn holds(&self, host: Host) -> bool {
        self.lab
            .exec(host, "ip", &["-4", "-br", "addr", "show", "dev", "eth0"])
            .map(|o| String::from_utf8_lossy(&o.stdout).contains(&format!("{SHARED_ADDR}/24")))
            .unwrap_or(false)
    }

    pub(crate) fn wait(
        &self,
        limit: Duration,
        what: &str,
        mut check: impl FnMut(&Self) -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if check(self) {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        bail!(
            "{}: gave up waiting for {what} (logs in {})",
            self.system.label(),
            self.dir.display()
        )
    }

    /// For tandem, waits until both agents report the peer link up.
    pub(crate) fn wait_peer_link(&self) -> anyhow::Result<()> {
        if let System::Keepalived(_) = self.system {
            return Ok(());
        }
        self.wait(Duration::from_secs(30), "the agents' peer link", |s| {
            [Host::Node1, Host::Node2].iter().all(|h| {
                s.failover(*h, &["status", "--json"])
                    .ok()
                    .and_then(|t| serde_json::from_str::<serde_json::Value>(&t).ok())
                    .is_some_and(|v| v["peer"]["connected"] == serde_json::Value::Bool(true))
            })
        })
    }

    /// Waits until the same single node has held the shared address for 2 s.
    fn stable_holder(&self, limit: Duration) -> anyhow::Result<Host> {
        let deadline = Instant::now() + limit;
        'again: while Instant::now() < deadline {
            let holder = self.wait_one_holder(limit)?;
            let since = Instant::now();
            while since.elapsed() < Duration::from_secs(2) {
                std::thread::sleep(Duration::from_millis(100));
                if self.holds(holder) == self.holds(crate::site::other(holder))
                    || !self.holds(holder)
                {
                    continue 'again;
                }
            }
            return Ok(holder);
        }
        bail!(
            "{}: the shared address did not settle on one node",
            self.system.label()
        )
    }

    /// Waits until exactly one node holds the shared address; returns it.
    pub(crate) fn wait_one_holder(&self, limit: Duration) -> anyhow::Result<Host> {
        self.wait(limit, "exactly one node holding the shared address", |s| {
            s.holds(Host::Node1) != s.holds(Host::Node2)
        })?;
        Ok(if self.holds(Host::Node1) {
            Host::Node1
        } else {
            Host::Node2
        })
    }

    /// One unplanned failover: cut the holder's cable, time the client's outage,
    /// plug the cable back and wait for one holder again.
    fn unplanned(&self, probe: &Probe) -> anyhow::Result<Duration> {
        let old = self.wait_one_holder(Duration::from_secs(30))?;
        let new = crate::site::other(old);
        // The client must be hearing the holder before the cut.
        let warm = probe.now();
        self.wait(
            Duration::from_secs(10),
            "the client hearing the holder",
            |_| probe.first_from(old.name(), warm).is_some(),
        )?;
        self.lab.cut(old)?;
        let cut = probe.now();
        let deadline = Instant::now() + TAKEOVER_CAP;
        let first = loop {
            if let Some(t) = probe.first_from(new.name(), cut) {
                break t;
            }
            if Instant::now() > deadline {
                self.lab.restore(old)?;
                bail!(
                    "{}: {new} did not take over within {TAKEOVER_CAP:?}",
                    self.system.label()
                );
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        self.lab.restore(old)?;
        // Settle: the agents' link is back (tandem) and one holder stays the
        // holder, as on a healthy site before the next failure.
        self.wait_peer_link()?;
        let holder = self.stable_holder(Duration::from_secs(60))?;
        let from = probe.now();
        let heard = self.wait(
            Duration::from_secs(10),
            "the client hearing the holder after the heal",
            |_| probe.first_from(holder.name(), from).is_some(),
        );
        if let Err(e) = heard {
            let show = |host: Host, args: &[&str]| {
                self.lab
                    .exec(host, "ip", args)
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default()
            };
            let last: Vec<(Duration, String)> = probe
                .answers
                .lock()
                .map(|a| a.iter().rev().take(3).cloned().collect())
                .unwrap_or_default();
            return Err(e.context(format!(
                "holder {holder}; client neighbours:\n{}node1: {}node2: {}last answers: {last:?}",
                show(Host::Client, &["neigh", "show", "dev", "eth0"]),
                show(Host::Node1, &["-br", "addr", "show", "dev", "eth0"]),
                show(Host::Node2, &["-br", "addr", "show", "dev", "eth0"]),
            )));
        }
        std::thread::sleep(Duration::from_millis(500));
        Ok(first.saturating_sub(cut))
    }

    /// Planned switchovers through the agents, alternating direction: with the
    /// seed's two commands (`set-server standby` on the active node, then
    /// `set-server active` on the other), or with `switchover` on the standby.
    fn planned_runs(
        &self,
        probe: &Probe,
        runs: usize,
        one_command: bool,
    ) -> anyhow::Result<Vec<Duration>> {
        println!(
            "bench failover: tandem planned switchover, {} ({runs} runs)",
            if one_command {
                "`failover switchover`"
            } else {
                "set-server standby, then active"
            }
        );
        let mut outages = Vec::new();
        let mut timeline = Timeline::default();
        for run in 0..runs {
            let old = self.wait_one_holder(Duration::from_secs(30))?;
            let new = crate::site::other(old);
            let from = probe.now();
            let (stood_down, took_over) = if one_command {
                (
                    String::new(),
                    self.failover(new, &["switchover", "--json"])?,
                )
            } else {
                (
                    self.failover(old, &["set-server", "standby", "--json"])?,
                    self.failover(new, &["set-server", "active", "--json"])?,
                )
            };
            let deadline = Instant::now() + TAKEOVER_CAP;
            let first = loop {
                if let Some(t) = probe.first_from(new.name(), from) {
                    break t;
                }
                if Instant::now() > deadline {
                    bail!("planned switchover: the client never heard {new}");
                }
                std::thread::sleep(Duration::from_millis(5));
            };
            let last = probe.last_before(first).unwrap_or(from).max(from);
            let outage = first.saturating_sub(last);
            println!(
                "  run {:>2}: {:>7.1} ms",
                run + 1,
                outage.as_secs_f64() * 1000.0
            );
            outages.push(outage);
            let outage_began_us = probe.started_wall_us + last.as_micros() as u64;
            timeline.add("old", &stood_down, outage_began_us);
            timeline.add("new", &took_over, outage_began_us);
            timeline.add_mark("client hears the new node", outage.as_secs_f64() * 1000.0);
            std::thread::sleep(Duration::from_millis(300));
        }
        timeline.print();
        outages.sort();
        Ok(outages)
    }

    /// Resident memory and CPU of each node's process over `window`, idle.
    fn usage(&self, window: Duration) -> anyhow::Result<Vec<Usage>> {
        let pids: Vec<(Host, u32)> = self.children.iter().map(|(h, c)| (*h, c.id())).collect();
        Ok(crate::site::usage::usage_over(&pids, window)
            .into_iter()
            .map(|(host, rss_kib, cpu_percent)| Usage {
                what: format!(
                    "{} on {host}",
                    match self.system {
                        System::Tandem(_) | System::Witness(_) => "failover agent",
                        System::Keepalived(_) => "keepalived (all processes)",
                    }
                ),
                rss_kib,
                cpu_percent,
            })
            .collect())
    }
}

impl Drop for Site<'_> {
    fn drop(&mut self) {
        crate::site::stop_processes(
            self.children.iter_mut().map(|(_, c)| c),
            Duration::from_secs(5),
        );
    }
}

/// Memory and CPU of one process.
struct Usage {
    what: String,
    rss_kib: u64,
    cpu_percent: f64,
}

/// The `p`th percentile of sorted outages (zero without any).
fn pct(sorted: &[Duration], p: f64) -> Duration {
    super::percentile(sorted, p).unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// "median .. ms, p99 .. ms, max .. ms over N runs" of sorted outages.
fn outage_summary(outages: &[Duration]) -> String {
    format!(
        "median {:.1} ms, p99 {:.1} ms, max {:.1} ms over {} runs",
        ms(pct(outages, 50.0)),
        ms(pct(outages, 99.0)),
        ms(outages.last().copied().unwrap_or_default()),
        outages.len()
    )
}

fn print(
    results: &[(System, Vec<Duration>)],
    planned: Option<&Planned>,
    memory: &[Usage],
    writes: &crate::demo::PlannedWrites,
) {
    let runs = results.first().map_or(0, |(_, o)| o.len());
    println!("\nUnplanned failover (the holder's cable cut), client outage over {runs} runs:");
    println!(
        "  {:<44} {:>10} {:>10} {:>10}",
        "system", "median ms", "p99 ms", "max ms"
    );
    for (system, outages) in results {
        println!(
            "  {:<44} {:>10.1} {:>10.1} {:>10.1}",
            system.label(),
            ms(pct(outages, 50.0)),
            ms(pct(outages, 99.0)),
            ms(outages.last().copied().unwrap_or_default())
        );
    }
    // tandem beside keepalived at the same interval.
    for (sa, oa) in results.iter().filter(|(s, _)| s.is_tandem()) {
        let same = results
            .iter()
            .find(|(s, _)| !s.runs_agents() && s.interval_ms() == sa.interval_ms());
        if let Some((sb, ob)) = same {
            let ratio = ms(pct(oa, 50.0)) / ms(pct(ob, 50.0)).max(0.001);
            println!("  {} / {}: median ratio {ratio:.2}", sa.label(), sb.label());
        }
    }
    if let Some(planned) = planned {
        for (how, outages) in planned.series() {
            println!(
                "\nPlanned switchover (tandem, {how}, heartbeat {} ms):",
                planned.heartbeat_ms
            );
            println!("  {}", outage_summary(outages));
        }
    }
    println!(
        "\nPlanned switchover with a client writing through the application (acknowledged \
         only once replicated):"
    );
    for (how, outages) in writes.series() {
        println!("  {how}: {}", outage_summary(outages));
    }
    println!(
        "  {} acknowledged writes, {} lost; tables {}",
        writes.acked,
        writes.lost,
        if writes.identical {
            "identical"
        } else {
            "DIFFERENT"
        }
    );
    println!("\nResident memory and CPU, idle (5 s window):");
    for usage in memory {
        println!(
            "  {:<44} {:>8} KiB {:>7.2} % CPU",
            usage.what, usage.rss_kib, usage.cpu_percent
        );
    }
    println!(
        "\nResident memory and CPU of the agents while replicating (the writing client's site, \
         {} s window, before the switchovers):",
        crate::demo::REPLICATING_WINDOW.as_secs()
    );
    for (host, rss, cpu) in &writes.replicating {
        println!(
            "  {:<44} {:>8} KiB {:>7.2} % CPU",
            format!("failover agent on {host}"),
            rss,
            cpu
        );
    }
}

fn write_json(
    results: &[(System, Vec<Duration>)],
    planned: Option<&Planned>,
    memory: &[Usage],
    writes: &crate::demo::PlannedWrites,
) -> anyhow::Result<()> {
    let unplanned: Vec<serde_json::Value> = results
        .iter()
        .map(|(system, outages)| {
            serde_json::json!({
                "system": system.label(),
                "runs": outages.len(),
                "median_ms": ms(pct(outages, 50.0)),
                "p99_ms": ms(pct(outages, 99.0)),
                "outages_ms": outages.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            })
        })
        .collect();
    let json = serde_json::json!({
        "unplanned": unplanned,
        "planned": planned.map(|p| p.series().iter().map(|(how, o)| serde_json::json!({
            "how": how,
            "heartbeat_ms": p.heartbeat_ms,
            "median_ms": ms(pct(o, 50.0)),
            "p99_ms": ms(pct(o, 99.0)),
            "outages_ms": o.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
        })).collect::<Vec<_>>()),
        "planned_with_writes": {
            "median_ms": ms(pct(&writes.outages, 50.0)),
            "p99_ms": ms(pct(&writes.outages, 99.0)),
            "outages_ms": writes.outages.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            "switchover": {
                "median_ms": ms(pct(&writes.outages_switchover, 50.0)),
                "p99_ms": ms(pct(&writes.outages_switchover, 99.0)),
                "outages_ms": writes.outages_switchover.iter().map(|d| ms(*d)).collect::<Vec<_>>(),
            },
            "acked": writes.acked,
            "lost": writes.lost,
            "identical": writes.identical,
        },
        "memory": memory.iter().map(|u| serde_json::json!({
            "process": u.what, "rss_kib": u.rss_kib, "cpu_percent": u.cpu_percent,
        })).collect::<Vec<_>>(),
        "memory_replicating": writes.replicating.iter().map(|(host, rss, cpu)| serde_json::json!({
            "process": format!("failover agent on {host}"), "rss_kib": rss, "cpu_percent": cpu,
        })).collect::<Vec<_>>(),
    });
    let path = super::output_dir()?.join("failover.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)?;
    println!("\nwritten to {}", path.display());
    Ok(())
}

/// Microseconds since the Unix epoch, now.
fn wall_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// The planned switchovers' outages, both ways of asking for one.
struct Planned {
    /// The heartbeat they ran at.
    heartbeat_ms: u64,
    /// `set-server standby` on the active node, then `set-server active`.
    two_commands: Vec<Duration>,
    /// `switchover` on the standby.
    one_command: Vec<Duration>,
}

impl Planned {
    fn series(&self) -> [(&'static str, &[Duration]); 2] {
        [
            ("set-server standby then active", &self.two_commands),
            ("`failover switchover`", &self.one_command),
        ]
    }
}

/// Where the time of a planned switchover goes: each step the two agents
/// report (`set-server --json`), as its start and length in milliseconds from
/// the client's last answer of the old node, over all runs.
#[derive(Default)]
struct Timeline {
    /// Step name -> (start offsets, lengths), in the order first seen.
    steps: Vec<(String, Vec<f64>, Vec<f64>)>,
}

impl Timeline {
    /// Adds the steps of one tool's report; `who` tells the two nodes apart.
    fn add(&mut self, who: &str, report_json: &str, outage_began_us: u64) {
        let Ok(report) = serde_json::from_str::<tandem_node::Report>(report_json) else {
            return;
        };
        for step in report.steps {
            let start = (step.started_us as f64 - outage_began_us as f64) / 1000.0;
            let took = step.took.as_secs_f64() * 1000.0;
            self.push(format!("{who}: {}", step_name(&step.action)), start, took);
        }
    }

    /// A point in time (no length), such as the client's first answer.
    fn add_mark(&mut self, name: &str, at_ms: f64) {
        self.push(name.to_owned(), at_ms, 0.0);
    }

    fn push(&mut self, name: String, start: f64, took: f64) {
        match self.steps.iter_mut().find(|(n, _, _)| *n == name) {
            Some((_, starts, tooks)) => {
                starts.push(start);
                tooks.push(took);
            }
            None => self.steps.push((name, vec![start], vec![took])),
        }
    }

    fn print(&self) {
        println!(
            "  where the time goes (ms from the client's last answer of the old node; median / p99):"
        );
        println!("  {:<48} {:>16} {:>16}", "step", "starts at", "takes");
        for (name, starts, tooks) in &self.steps {
            let fig = |v: &[f64]| {
                let mut v = v.to_vec();
                v.sort_by(f64::total_cmp);
                format!(
                    "{:.1} / {:.1}",
                    super::percentile(&v, 50.0).unwrap_or(0.0),
                    super::percentile(&v, 99.0).unwrap_or(0.0)
                )
            };
            println!("  {name:<48} {:>16} {:>16}", fig(starts), fig(tooks));
        }
    }
}

/// A step's action without its particulars (addresses, epochs): the words
/// before the first digit, colon or parenthesis.
fn step_name(action: &str) -> String {
    let end = action
        .find(|c: char| c.is_ascii_digit() || c == ':' || c == '(')
        .unwrap_or(action.len());
    action[..end].trim().to_owned()
}
