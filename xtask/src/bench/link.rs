//! `cargo xtask bench link`: may control messages and bulk data share one
//! peer-link session?
//!
//! The agents' control messages (claims, heartbeats, switch requests) travel on
//! one `tandem-peer` session (port 7451) and the SQLite replication's data on a
//! second one (port 7452), where a from-sync streams its snapshot as large
//! messages. This area measures what sharing one session would cost the small,
//! time-critical messages. Node 1 sends a ping of [`PING_LEN`] bytes every
//! [`PING_EVERY`], each from a task of its own; node 2 answers each with a pong
//! on the same session; node 1 records each round trip from the moment the ping
//! was due, so that time spent waiting inside `Session::send` counts, and that
//! wait on its own (how long a sender, such as the agent's loop, is held up).
//! Three cases, each for `--seconds`:
//!
//! - `idle`: the pings alone on one session;
//! - `shared`: the pings while node 1 streams messages of [`BULK_LEN`] bytes (the
//!   size of a snapshot's row batches) as fast as it can on the same session;
//!   node 2 reads and discards them;
//! - `separate`: the same stream on a second session to a second port, as today.
//!
//! Each case runs on the raw veth link and again with both nodes' egress limited
//! by a token bucket (`tc qdisc tbf`) to 1 Gbit/s and to 100 Mbit/s, with
//! [`QUEUE_LATENCY`] of drop-tail queue in front of it. The veth is far faster
//! than a LAN between two servers, so the limited rows are the ones to read. The
//! qdiscs are removed after their rows; they live in the lab's namespaces, which
//! go with the lab, also when a panic unwinds.
//!
//! The sessions are the real ones (Noise, frames, heartbeats, default settings),
//! each node on a multi-thread runtime of its own as in the agent. Their
//! encryption is many times slower in a debug build than in the agents, so a
//! debug `cargo xtask` builds the release xtask and has it measure (the hidden
//! `--link-raw` prints the measurements as JSON), then reports them itself.
//!
//! Needs root (the lab) and `tc`. Results print as a table and go to
//! `target/bench/link.json`.

use std::net::{IpAddr, SocketAddr};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use tandem_lab::{Host, LAB_IFACE, Lab, LabConfig, NODE2_ADDR};
use tandem_peer::{Config, Incoming, Listener, Session, SiteKey, dial};
use tokio::time::{Instant, MissedTickBehavior};

/// Seconds each case runs by default.
pub(crate) const SECONDS: u64 = 5;
/// How often node 1 sends a ping.
const PING_EVERY: Duration = Duration::from_millis(20);
/// Bytes of a ping (and of its pong): about a claim or a switch request.
const PING_LEN: usize = 100;
/// Bytes of one bulk message, like a from-sync's row batch.
const BULK_LEN: usize = 512 << 10;
/// The control session's port (the agents' link).
const CONTROL_PORT: u16 = tandem_peer::DEFAULT_PORT;
/// The bulk session's port in the `separate` case (the replication link's).
const BULK_PORT: u16 = 7452;
/// How long node 1 waits after the window for the pongs still on their way.
const ANSWER_GRACE: Duration = Duration::from_secs(5);
/// How long node 2 waits for node 1 to connect.
const ACCEPT_WAIT: Duration = Duration::from_secs(10);
/// The drop-tail queue in front of a limited link, as `tbf`'s `latency`: the
/// queue holds this long at the link's rate. Between fq_codel's 5 ms target and
/// the 12 ms of a 1,000-packet `pfifo_fast` at 1 Gbit/s.
const QUEUE_LATENCY: &str = "10ms";

/// Message kinds, the first byte of every message.
const PING: u8 = b'P';
const PONG: u8 = b'O';
const BULK: u8 = b'B';

/// One way to use the link.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Case {
    /// Pings alone.
    Idle,
    /// Pings and bulk on one session.
    Shared,
    /// Pings on one session, bulk on another.
    Separate,
}

impl Case {
    const ALL: [Case; 3] = [Case::Idle, Case::Shared, Case::Separate];

    fn name(self) -> &'static str {
        match self {
            Case::Idle => "idle",
            Case::Shared => "shared",
            Case::Separate => "separate",
        }
    }
}

/// One link setting: the raw veth, or both egresses limited by `tbf`.
#[derive(Clone, Copy)]
struct LinkSetting {
    name: &'static str,
    /// `tbf`'s rate and bucket size; `None` leaves the veth as it is.
    limit: Option<(&'static str, &'static str)>,
}

/// The bucket holds about a millisecond at the rate, at least 32 KiB (larger
/// packets are split by `tbf` into the link's MTU).
const LINKS: [LinkSetting; 3] = [
    LinkSetting {
        name: "veth",
        limit: None,
    },
    LinkSetting {
        name: "1 Gbit/s",
        limit: Some(("1gbit", "128kb")),
    },
    LinkSetting {
        name: "100 Mbit/s",
        limit: Some(("100mbit", "32kb")),
    },
];

/// The measurements of one case on one link setting.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
struct Measured {
    link: String,
    case: String,
    /// Pings due during the window.
    pings_due: u64,
    /// Pings `send` accepted by the end of the window plus [`ANSWER_GRACE`].
    pings_sent: u64,
    /// Pongs back by the end of the window plus [`ANSWER_GRACE`].
    pings_answered: u64,
    /// Round trips, from when the ping was due to its pong.
    rtt_median_ms: Option<f64>,
    rtt_p99_ms: Option<f64>,
    rtt_max_ms: Option<f64>,
    /// How long `send` kept a ping's sender waiting, from when it was due.
    send_wait_p99_ms: Option<f64>,
    send_wait_max_ms: Option<f64>,
    /// Bulk bytes node 2 received per second (10^6 bytes), while they flowed.
    bulk_mb_per_s: Option<f64>,
}

/// Options of the area.
pub(crate) struct Options {
    /// Seconds per case.
    pub seconds: u64,
}

pub(crate) fn run(options: &Options) -> anyhow::Result<Vec<super::Row>> {
    let measured = if cfg!(debug_assertions) {
        measure_in_release(options.seconds)?
    } else {
        measure(options.seconds)?
    };
    print_table(&measured, options.seconds);
    write_json(&measured, options.seconds)?;
    Ok(summary(&measured))
}

/// Measures in this process and prints the measurements as JSON on stdout (the
/// hidden `--link-raw`).
pub(crate) fn run_raw(options: &Options) -> anyhow::Result<()> {
    let measured = measure(options.seconds)?;
    println!("{}", serde_json::to_string(&measured)?);
    Ok(())
}

/// Builds the release xtask and has it measure.
fn measure_in_release(seconds: u64) -> anyhow::Result<Vec<Measured>> {
    eprintln!("bench link: building the release xtask (the sessions' crypto is slow in debug) ...");
    let xtask = super::build_release(&["xtask"])?.join("xtask");
    let output = std::process::Command::new(&xtask)
        .args([
            "bench",
            "link",
            "--seconds",
            &seconds.to_string(),
            "--link-raw",
        ])
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", xtask.display()))?;
    if !output.status.success() {
        bail!("{} bench link --link-raw failed", xtask.display());
    }
    serde_json::from_slice(&output.stdout)
        .context("reading the release xtask's measurements (JSON on stdout)")
}

fn measure(seconds: u64) -> anyhow::Result<Vec<Measured>> {
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    measure_links(&lab, &LINKS, Duration::from_secs(seconds.max(1)))
}

/// Every case on each of `links`, in `lab`.
fn measure_links(
    lab: &Lab,
    links: &[LinkSetting],
    window: Duration,
) -> anyhow::Result<Vec<Measured>> {
    let key = SiteKey::generate()?;
    let mut measured = Vec::new();
    for &link in links {
        let _shaped = Shaping::apply(lab, link)?;
        for case in Case::ALL {
            eprintln!(
                "bench link: {} on {} for {} s ...",
                case.name(),
                link.name,
                window.as_secs()
            );
            let m = run_case(lab, &key, link, case, window)
                .with_context(|| format!("case {} on {}", case.name(), link.name))?;
            measured.push(m);
        }
    }
    Ok(measured)
}

/// The token buckets on both nodes' egress; dropping it removes them.
struct Shaping<'a> {
    lab: &'a Lab,
    hosts: Vec<Host>,
}

impl<'a> Shaping<'a> {
    fn apply(lab: &'a Lab, link: LinkSetting) -> anyhow::Result<Shaping<'a>> {
        let mut shaping = Shaping {
            lab,
            hosts: Vec::new(),
        };
        let Some((rate, burst)) = link.limit else {
            return Ok(shaping);
        };
        for host in [Host::Node1, Host::Node2] {
            lab.exec(
                host,
                "tc",
                &[
                    "qdisc",
                    "replace",
                    "dev",
                    LAB_IFACE,
                    "root",
                    "tbf",
                    "rate",
                    rate,
                    "burst",
                    burst,
                    "latency",
                    QUEUE_LATENCY,
                ],
            )
            .with_context(|| format!("limiting {}'s {LAB_IFACE} to {rate}", host.name()))?;
            shaping.hosts.push(host);
        }
        Ok(shaping)
    }
}

impl Drop for Shaping<'_> {
    fn drop(&mut self) {
        for host in &self.hosts {
            if let Err(e) = self
                .lab
                .exec(*host, "tc", &["qdisc", "del", "dev", LAB_IFACE, "root"])
            {
                eprintln!("bench link: removing the qdisc on {}: {e}", host.name());
            }
        }
    }
}

/// A multi-thread runtime like the agent's, with two workers (the machine's cores).
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

fn run_case(
    lab: &Lab,
    key: &SiteKey,
    link: LinkSetting,
    case: Case,
    window: Duration,
) -> anyhow::Result<Measured> {
    let (ready_tx, ready) = mpsc::channel::<()>();
    let config = Config::new(key.clone(), tandem_role::NodeId::Two);
    let node2 = lab.spawn_in(Host::Node2, move || {
        runtime()?.block_on(serve(config, case == Case::Separate, ready_tx, window))
    })?;
    if ready.recv().is_err() {
        // Node 2 ended before it listened: its error says why.
        joined(node2, "node 2")?;
        bail!("node 2 stopped before it listened");
    }
    let config = Config::new(key.clone(), tandem_role::NodeId::One);
    let node1 = lab.spawn_in(Host::Node1, move || {
        runtime()?.block_on(drive(config, case, window))
    })?;
    let driven = joined(node1, "node 1");
    let served = joined(node2, "node 2");
    let (driven, served) = (driven?, served?);

    let mut rtts = driven.rtts;
    rtts.sort();
    let mut waits = driven.waits;
    waits.sort();
    let ms = |d: Option<Duration>| d.map(|d| d.as_secs_f64() * 1e3);
    let bulk_mb_per_s = (case != Case::Idle)
        .then(|| served.rate())
        .flatten()
        .map(|r| r / 1e6);
    Ok(Measured {
        link: link.name.to_owned(),
        case: case.name().to_owned(),
        pings_due: driven.due,
        pings_sent: driven.sent,
        pings_answered: u64::try_from(rtts.len()).unwrap_or(u64::MAX),
        rtt_median_ms: ms(super::percentile(&rtts, 50.0)),
        rtt_p99_ms: ms(super::percentile(&rtts, 99.0)),
        rtt_max_ms: ms(rtts.last().copied()),
        send_wait_p99_ms: ms(super::percentile(&waits, 99.0)),
        send_wait_max_ms: ms(waits.last().copied()),
        bulk_mb_per_s,
    })
}

/// Joins a node's thread and flattens its errors.
fn joined<T>(
    handle: std::thread::JoinHandle<Result<anyhow::Result<T>, tandem_lab::Error>>,
    who: &str,
) -> anyhow::Result<T> {
    handle
        .join()
        .map_err(|_| anyhow!("{who}'s thread panicked"))?
        .with_context(|| format!("entering {who}'s namespace"))?
        .with_context(|| who.to_owned())
}

/// What node 2 saw of the bulk stream.
#[derive(Default)]
struct Served {
    bytes: u64,
    first: Option<Instant>,
    last: Option<Instant>,
}

impl Served {
    /// Bytes per second from the first bulk message to the last.
    fn rate(&self) -> Option<f64> {
        let span = self.last?.checked_duration_since(self.first?)?;
        (span > Duration::ZERO).then(|| self.bytes as f64 / span.as_secs_f64())
    }
}

/// Node 2: accepts the session (or both), answers pings, counts bulk bytes,
/// until node 1 closes.
async fn serve(
    config: Config,
    separate: bool,
    ready: mpsc::Sender<()>,
    window: Duration,
) -> anyhow::Result<Served> {
    let bind = |port: u16| {
        let addr = SocketAddr::new(IpAddr::V4(NODE2_ADDR), port);
        let config = config.clone();
        async move {
            Listener::bind(addr, config)
                .await
                .with_context(|| format!("listening on {addr}"))
        }
    };
    let mut control = bind(CONTROL_PORT).await?;
    let mut bulk = match separate {
        true => Some(bind(BULK_PORT).await?),
        false => None,
    };
    let _ = ready.send(());
    let control = accept(&mut control).await?;
    let bulk = match bulk.as_mut() {
        Some(listener) => Some(accept(listener).await?),
        None => None,
    };
    let served = Arc::new(Mutex::new(Served::default()));
    let mut tasks = vec![tokio::spawn(answer(control, Arc::clone(&served)))];
    if let Some(session) = bulk {
        tasks.push(tokio::spawn(answer(session, Arc::clone(&served))));
    }
    // Node 1 closes its sessions after the window and the grace; never wait
    // much longer than that.
    let limit = window + ANSWER_GRACE + Duration::from_secs(30);
    for task in tasks {
        tokio::time::timeout(limit, task)
            .await
            .context("node 1 never closed its session")?
            .context("node 2's session task failed")??;
    }
    let mut served = served.lock().unwrap_or_else(PoisonError::into_inner);
    Ok(std::mem::take(&mut *served))
}

/// Node 2 takes node 1's session from `listener`.
async fn accept(listener: &mut Listener) -> anyhow::Result<Session> {
    tokio::time::timeout(ACCEPT_WAIT, listener.accept())
        .await
        .context("node 1 did not connect")?
        .context("accepting node 1's session")
}

/// Node 2's reading loop of one session.
async fn answer(session: Session, served: Arc<Mutex<Served>>) -> anyhow::Result<()> {
    loop {
        let mut message = match session.recv().await {
            Ok(Incoming::Message(message)) => message,
            Ok(_) => bail!("node 1 sent something other than a message"),
            // Node 1 closed the session: the case is over.
            Err(_) => return Ok(()),
        };
        match message.first_mut() {
            Some(kind) if *kind == PING => {
                *kind = PONG;
                if session.send(message).await.is_err() {
                    return Ok(());
                }
            }
            Some(&mut BULK) => {
                let now = Instant::now();
                let mut s = served.lock().unwrap_or_else(PoisonError::into_inner);
                s.bytes = s
                    .bytes
                    .saturating_add(u64::try_from(message.len()).unwrap_or(u64::MAX));
                s.first.get_or_insert(now);
                s.last = Some(now);
            }
            _ => bail!("node 1 sent a message of an unknown kind"),
        }
    }
}

/// What node 1 measured.
struct Driven {
    due: u64,
    sent: u64,
    rtts: Vec<Duration>,
    /// How long each sent ping's `send` took from when the ping was due.
    waits: Vec<Duration>,
}

/// Node 1: dials, pings every [`PING_EVERY`] for `window` (with the bulk stream
/// beside, as `case` says), collects the pongs, closes.
async fn drive(config: Config, case: Case, window: Duration) -> anyhow::Result<Driven> {
    let control_addr = SocketAddr::new(IpAddr::V4(NODE2_ADDR), CONTROL_PORT);
    let control = dial(control_addr, &config)
        .await
        .with_context(|| format!("dialing {control_addr}"))?;
    let bulk = match case {
        Case::Idle => None,
        Case::Shared => Some(control.clone()),
        Case::Separate => {
            let addr = SocketAddr::new(IpAddr::V4(NODE2_ADDR), BULK_PORT);
            Some(
                dial(addr, &config)
                    .await
                    .with_context(|| format!("dialing {addr}"))?,
            )
        }
    };
    let start = Instant::now();
    let deadline = start + window;
    let (sent_tx, sent_rx) = tokio::sync::watch::channel(None::<u64>);
    let pongs = tokio::spawn(collect_pongs(control.clone(), start, deadline, sent_rx));
    let streamer = bulk
        .clone()
        .map(|session| tokio::spawn(stream(session, deadline)));

    let mut ticker = tokio::time::interval_at(start, PING_EVERY);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Burst);
    // Each ping is sent by a task of its own, so that one held up in `send`
    // does not hold up the next (they would pile up: at 100 Mbit/s beside bulk
    // one `send` takes longer than the interval). Round trips and waits count
    // from when a ping was due.
    let mut pings = tokio::task::JoinSet::new();
    let mut due = 0u64;
    loop {
        let at = ticker.tick().await;
        if at >= deadline {
            break;
        }
        let (session, message) = (control.clone(), ping(due, at.duration_since(start)));
        pings.spawn(async move { session.send(message).await.map(|()| at.elapsed()) });
        due += 1;
    }
    let give_up = deadline + ANSWER_GRACE;
    let mut waits = Vec::new();
    while let Ok(Some(joined)) = tokio::time::timeout_at(give_up, pings.join_next()).await {
        waits.push(
            joined
                .context("a ping task failed")?
                .context("sending a ping")?,
        );
    }
    let sent = u64::try_from(waits.len()).unwrap_or(u64::MAX);
    let _ = sent_tx.send(Some(sent));
    if let Some(streamer) = streamer {
        streamer.await.context("the bulk task failed")??;
    }
    let rtts = pongs.await.context("the pong task failed")??;
    control.close("the case is over").await;
    if case == Case::Separate
        && let Some(bulk) = bulk
    {
        bulk.close("the case is over").await;
    }
    Ok(Driven {
        due,
        sent,
        rtts,
        waits,
    })
}

/// A ping: its kind, its number, when it was due (microseconds after the
/// start) and padding up to [`PING_LEN`].
fn ping(seq: u64, due: Duration) -> Vec<u8> {
    let mut ping = Vec::with_capacity(PING_LEN);
    ping.push(PING);
    ping.extend_from_slice(&seq.to_be_bytes());
    let micros = u64::try_from(due.as_micros()).unwrap_or(u64::MAX);
    ping.extend_from_slice(&micros.to_be_bytes());
    ping.resize(PING_LEN, 0);
    ping
}

/// When a pong's ping was due, microseconds after the start.
fn pong_due(pong: &[u8]) -> Option<Duration> {
    let micros = pong.get(9..17)?.try_into().ok().map(u64::from_be_bytes)?;
    Some(Duration::from_micros(micros))
}

/// Node 1's pong reader: a round trip per pong, until every sent ping is
/// answered or the grace after the window is over.
async fn collect_pongs(
    session: Session,
    start: Instant,
    deadline: Instant,
    mut sent: tokio::sync::watch::Receiver<Option<u64>>,
) -> anyhow::Result<Vec<Duration>> {
    let give_up = deadline + ANSWER_GRACE;
    let mut rtts = Vec::new();
    loop {
        let all_in = sent
            .borrow()
            .is_some_and(|n| u64::try_from(rtts.len()).unwrap_or(u64::MAX) >= n);
        if all_in {
            return Ok(rtts);
        }
        tokio::select! {
            received = session.recv() => {
                let message = match received {
                    Ok(Incoming::Message(message)) => message,
                    Ok(_) => bail!("node 2 sent something other than a message"),
                    Err(e) => return Err(e).context("the control session closed early"),
                };
                let arrived = start.elapsed();
                match (message.first(), pong_due(&message)) {
                    (Some(&PONG), Some(due)) => rtts.push(arrived.saturating_sub(due)),
                    _ => bail!("node 2 sent something other than a pong"),
                }
            }
            // A change of the sent count: check again.
            _ = sent.changed() => {}
            _ = tokio::time::sleep_until(give_up) => return Ok(rtts),
        }
    }
}

/// Node 1's bulk stream: messages of [`BULK_LEN`] bytes as fast as the session
/// takes them, until the deadline.
async fn stream(session: Session, deadline: Instant) -> anyhow::Result<()> {
    let mut message = vec![0u8; BULK_LEN];
    if let Some(kind) = message.first_mut() {
        *kind = BULK;
    }
    loop {
        match tokio::time::timeout_at(deadline, session.send(message.clone())).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e).context("sending a bulk message"),
            Err(_) => return Ok(()),
        }
    }
}

fn fmt_ms(ms: Option<f64>) -> String {
    match ms {
        Some(ms) if ms < 10.0 => format!("{ms:.2}"),
        Some(ms) => format!("{ms:.1}"),
        None => "-".to_owned(),
    }
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map(|r| format!("{r:.1}"))
        .unwrap_or_else(|| "-".to_owned())
}

fn print_table(measured: &[Measured], seconds: u64) {
    println!(
        "bench link: a {PING_LEN}-byte ping every {} ms for {seconds} s per case, bulk messages of {} KiB; \
         limited links: tbf on both nodes' egress, {QUEUE_LATENCY} queue",
        PING_EVERY.as_millis(),
        BULK_LEN >> 10
    );
    println!(
        "{:<11} {:<9} {:>24} {:>15} {:>15} {:>10}",
        "link", "case", "RTT median/p99/max ms", "send wait p99", "sent/answered", "bulk MB/s"
    );
    for m in measured {
        println!(
            "{:<11} {:<9} {:>24} {:>15} {:>15} {:>10}",
            m.link,
            m.case,
            format!(
                "{} / {} / {}",
                fmt_ms(m.rtt_median_ms),
                fmt_ms(m.rtt_p99_ms),
                fmt_ms(m.rtt_max_ms)
            ),
            fmt_ms(m.send_wait_p99_ms),
            format!("{}/{}", m.pings_sent, m.pings_answered),
            fmt_rate(m.bulk_mb_per_s),
        );
    }
}

fn write_json(measured: &[Measured], seconds: u64) -> anyhow::Result<()> {
    let json = serde_json::json!({
        "area": "link",
        "seconds_per_case": seconds,
        "ping_every_ms": PING_EVERY.as_millis(),
        "ping_bytes": PING_LEN,
        "bulk_message_bytes": BULK_LEN,
        "queue_latency": QUEUE_LATENCY,
        "cases": measured,
    });
    let path = super::output_dir()?.join("link.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json)?)
        .with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}

/// One summary row per link: the pings beside a bulk stream on one session,
/// with two sessions as the baseline.
fn summary(measured: &[Measured]) -> Vec<super::Row> {
    let find = |link: &str, case: Case| {
        measured
            .iter()
            .find(|m| m.link == link && m.case == case.name())
    };
    let text = |m: &Measured| {
        format!(
            "{} / {} ms, {} MB/s",
            fmt_ms(m.rtt_median_ms),
            fmt_ms(m.rtt_p99_ms),
            fmt_rate(m.bulk_mb_per_s)
        )
    };
    LINKS
        .iter()
        .filter_map(|link| {
            let shared = find(link.name, Case::Shared)?;
            let separate = find(link.name, Case::Separate)?;
            let row = super::Row::new(
                "link",
                format!(
                    "ping RTT beside bulk, one session, {} (median / p99; ratio of p99s)",
                    link.name
                ),
                text(shared),
                format!("two sessions: {}", text(separate)),
            );
            Some(match (shared.rtt_p99_ms, separate.rtt_p99_ms) {
                (Some(a), Some(b)) => row.ratio(a, b),
                _ => row,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tandem_lab::{Host, LAB_IFACE, Lab};

    use super::{Case, LINKS, PING, PING_LEN, measure_links, ping, pong_due};

    /// Every case runs in the lab on a limited link (the raw veth differs only
    /// in having no qdisc) and every ping sent is answered; no timing is
    /// asserted. The limit is gone afterwards.
    #[test]
    fn every_case_runs_in_the_lab_and_answers_its_pings() {
        let lab = Lab::for_test();
        let links = [LINKS[2]];
        let measured = measure_links(&lab, &links, Duration::from_secs(1)).unwrap();
        assert_eq!(measured.len(), links.len() * Case::ALL.len());
        for m in &measured {
            let what = format!("{} on {}", m.case, m.link);
            assert!(m.pings_sent > 0, "{what}: no ping sent");
            assert_eq!(m.pings_answered, m.pings_sent, "{what}: pings unanswered");
            assert!(m.rtt_median_ms.is_some(), "{what}: no round trip");
            let bulk = m.case != Case::Idle.name();
            assert_eq!(m.bulk_mb_per_s.is_some(), bulk, "{what}: bulk rate");
        }
        for host in [Host::Node1, Host::Node2] {
            let out = lab
                .exec(host, "tc", &["qdisc", "show", "dev", LAB_IFACE])
                .unwrap();
            let qdiscs = String::from_utf8_lossy(&out.stdout);
            assert!(!qdiscs.contains("tbf"), "{}: {qdiscs}", host.name());
        }
    }

    #[test]
    fn a_ping_carries_when_it_was_due() {
        let mut message = ping(7, Duration::from_micros(123_456));
        assert_eq!(message.len(), PING_LEN);
        assert_eq!(message.first(), Some(&PING));
        if let Some(kind) = message.first_mut() {
            *kind = super::PONG;
        }
        assert_eq!(pong_due(&message), Some(Duration::from_micros(123_456)));
        assert_eq!(pong_due(&[super::PONG, 1, 2]), None);
    }
}
