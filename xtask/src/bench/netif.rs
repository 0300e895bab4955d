//! `cargo xtask bench netif`: probe round-trip time and takeover time in the
//! namespace lab, beside what the kernel does on its own.
//!
//! Measured, each over [`RUNS`] runs, as median and p99:
//! - ARP probe (RFC 5227) and ICMP echo from the client to the shared address
//!   (`tandem-probe`), and as baseline a UDP echo with a warm and with a cold
//!   neighbour cache: the difference is the kernel's own ARP resolution.
//! - Takeover: release on the holder, claim and announce on the other node,
//!   first answer at the client, which keeps sending a UDP datagram every
//!   [`PING_EVERY`] and does nothing else. The direction alternates.
//! - Baseline, one run: the same takeover without the announcement, where the
//!   client only moves when its neighbour entry expires.
//!
//! Needs root (the lab). Results print as a table and go to
//! `target/bench/netif.json`.

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use tandem_lab::{Host, LAB_IFACE, Lab, LabConfig, SHARED_ADDR};
use tandem_netif::{AddressSpec, AnnounceConfig, Interfaces, MacAddr};
use tandem_probe::{Collect, ProbeConfig, Prober};

/// Runs per measurement.
const RUNS: usize = 60;
/// How often the client sends while waiting for the takeover.
const PING_EVERY: Duration = Duration::from_micros(50);
/// UDP port of the echo servers on both nodes.
const ECHO_PORT: u16 = 9007;
/// Longest wait for the client's cache to expire in the baseline run.
const KERNEL_ONLY_CAP: Duration = Duration::from_secs(90);

pub(crate) fn run() -> anyhow::Result<Vec<super::Row>> {
    let lab = Lab::up(LabConfig::default()).context("building the namespace lab (needs root)")?;
    let node1 = Worker::spawn(&lab, Host::Node1)?;
    let node2 = Worker::spawn(&lab, Host::Node2)?;
    let client = Worker::spawn(&lab, Host::Client)?;
    let stop = Arc::new(AtomicBool::new(false));
    let echo1 = EchoServer::spawn(&lab, Host::Node1, stop.clone());
    let echo2 = EchoServer::spawn(&lab, Host::Node2, stop.clone());
    let spec = AddressSpec::shared(format!("{SHARED_ADDR}/24").parse()?, LAB_IFACE);
    let target = SocketAddr::new(IpAddr::V4(SHARED_ADDR), ECHO_PORT);

    let result = (|| {
        node1.claim(&spec)?;
        warm(&client, target)?;
        let probes = probe_rtts(&lab, &client, target)?;
        let takeover = takeovers(&lab, [&node1, &node2], &client, &spec, target)?;
        let kernel_only =
            takeover_without_announce(&lab, [&node1, &node2], &client, &spec, target)?;
        Ok::<_, anyhow::Error>((probes, takeover, kernel_only))
    })();
    stop.store(true, Ordering::Relaxed);
    let _ = (echo1.join(), echo2.join());
    let (probes, takeover, kernel_only) = result?;

    let mut rows = probes;
    rows.extend(takeover);
    print_table(&rows, kernel_only);
    write_json(&rows, kernel_only)?;
    let mut summary = Vec::new();
    if let Some(takeover) = rows.iter().find(|r| r.key == "takeover") {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        let baseline = match kernel_only {
            Some(d) => format!("no announce (kernel only): {:.1} ms", ms(d)),
            None => format!("no announce (kernel only): > {KERNEL_ONLY_CAP:?}"),
        };
        // No ratio: the baseline is the client's neighbour-cache expiry, not a
        // takeover by another tool.
        summary.push(super::Row::new(
            "netif",
            "address takeover to client's first answer (median / p99)",
            format!(
                "{:.1} / {:.1} ms",
                ms(takeover.median()),
                ms(takeover.p99())
            ),
            baseline,
        ));
    }
    Ok(summary)
}

/// One measured series.
struct Row {
    key: &'static str,
    what: &'static str,
    samples: Vec<Duration>,
}

impl Row {
    fn new(key: &'static str, what: &'static str, mut samples: Vec<Duration>) -> Row {
        samples.sort();
        Row { key, what, samples }
    }

    fn median(&self) -> Duration {
        super::percentile(&self.samples, 50.0).unwrap_or_default()
    }

    fn p99(&self) -> Duration {
        super::percentile(&self.samples, 99.0).unwrap_or_default()
    }
}

fn probe_rtts(lab: &Lab, client: &Worker, target: SocketAddr) -> anyhow::Result<Vec<Row>> {
    let prober = Prober::new(ProbeConfig {
        timeout: Duration::from_millis(500),
        interval: Duration::from_millis(100),
        retries: 2,
        collect: Collect::First,
    })?;
    let (arp, icmp) = client.call(move |ctx| {
        ctx.rt.block_on(async {
            let mut arp = Vec::new();
            let mut icmp = Vec::new();
            for _ in 0..RUNS {
                let a = prober.arp(LAB_IFACE, SHARED_ADDR).await?;
                arp.push(
                    a.rtt()
                        .context("the ARP probe of the shared address went unanswered")?,
                );
                let i = prober.icmp(IpAddr::V4(SHARED_ADDR)).await?;
                icmp.push(
                    i.rtt()
                        .context("the ICMP probe of the shared address went unanswered")?,
                );
            }
            Ok::<_, anyhow::Error>((arp, icmp))
        })
    })??;
    let mut warm_udp = Vec::new();
    let mut cold_udp = Vec::new();
    for _ in 0..RUNS {
        warm_udp.push(client.call(move |_| udp_rtt(target))??);
        lab.exec(
            Host::Client,
            "ip",
            &["neigh", "flush", "to", &SHARED_ADDR.to_string()],
        )?;
        cold_udp.push(client.call(move |_| udp_rtt(target))??);
    }
    Ok(vec![
        Row::new("arp_probe_rtt", "ARP probe RTT (tandem-probe)", arp),
        Row::new("icmp_echo_rtt", "ICMP echo RTT (tandem-probe)", icmp),
        Row::new(
            "udp_echo_warm",
            "baseline: UDP echo, warm neighbour cache",
            warm_udp,
        ),
        Row::new(
            "udp_echo_cold",
            "baseline: UDP echo, cold cache (kernel ARP resolution + echo)",
            cold_udp,
        ),
    ])
}

/// One UDP echo through the shared address: send once, wait for the answer.
fn udp_rtt(target: SocketAddr) -> anyhow::Result<Duration> {
    let start = Instant::now();
    let answered = ping_until_answer(
        target,
        Duration::from_secs(1),
        start + Duration::from_secs(1),
    )?
    .context("the UDP echo through the shared address went unanswered")?;
    Ok(answered - start)
}

/// Makes the client's neighbour cache name the current holder.
fn warm(client: &Worker, target: SocketAddr) -> anyhow::Result<()> {
    client.call(move |_| udp_rtt(target))??;
    Ok(())
}

fn takeovers(
    lab: &Lab,
    nodes: [&Worker; 2],
    client: &Worker,
    spec: &AddressSpec,
    target: SocketAddr,
) -> anyhow::Result<Vec<Row>> {
    let macs = [
        MacAddr(lab.mac(Host::Node1)?),
        MacAddr(lab.mac(Host::Node2)?),
    ];
    let mut total = Vec::new();
    let mut release = Vec::new();
    let mut claim = Vec::new();
    let mut announce = Vec::new();
    let mut answer = Vec::new();
    let mut holder = 0usize;
    for run in 0..RUNS {
        let (from, to) = (nodes[holder], nodes[1 - holder]);
        let cached = client_neighbour(lab)?;
        if cached != Some(macs[holder]) {
            bail!(
                "run {run}: the client's cache names {cached:?}, not the holder {}",
                macs[holder]
            );
        }
        let t0 = Instant::now();
        from.release(spec)?;
        let t_released = Instant::now();
        let pinger = client.submit(move |_| {
            ping_until_answer(target, PING_EVERY, Instant::now() + Duration::from_secs(3))
        });
        to.claim(spec)?;
        let t_claimed = Instant::now();
        to.announce(
            spec,
            AnnounceConfig {
                count: 1,
                interval: Duration::ZERO,
            },
        )?;
        let t_announced = Instant::now();
        let t_answer = pinger
            .recv()
            .context("the client worker stopped")??
            .with_context(|| {
                format!("run {run}: the client got no answer within 3 s of the takeover")
            })?;
        total.push(t_answer - t0);
        release.push(t_released - t0);
        claim.push(t_claimed - t_released);
        announce.push(t_announced - t_claimed);
        answer.push(t_answer.saturating_duration_since(t_announced));
        holder = 1 - holder;
    }
    Ok(vec![
        Row::new(
            "takeover",
            "takeover: release → claim + announce → first answer at client",
            total,
        ),
        Row::new(
            "takeover_release",
            "  of which release on the holder",
            release,
        ),
        Row::new(
            "takeover_claim",
            "  of which claim on the other node",
            claim,
        ),
        Row::new(
            "takeover_announce",
            "  of which announce (1 GARP request + reply)",
            announce,
        ),
        Row::new(
            "takeover_answer",
            "  of which announce → first answer at client",
            answer,
        ),
    ])
}

/// One takeover without the announcement: how long until the client, left to
/// its kernel, reaches the new holder (`None` past the cap).
fn takeover_without_announce(
    lab: &Lab,
    nodes: [&Worker; 2],
    client: &Worker,
    spec: &AddressSpec,
    target: SocketAddr,
) -> anyhow::Result<Option<Duration>> {
    let macs = [
        MacAddr(lab.mac(Host::Node1)?),
        MacAddr(lab.mac(Host::Node2)?),
    ];
    let holder = macs
        .iter()
        .position(|m| Some(*m) == client_neighbour(lab).ok().flatten())
        .context("the client's cache names neither node")?;
    let (from, to) = (nodes[holder], nodes[1 - holder]);
    warm(client, target)?;
    eprintln!(
        "bench netif: takeover without announce, waiting for the client's neighbour cache to expire (up to {KERNEL_ONLY_CAP:?}) ..."
    );
    let t0 = Instant::now();
    from.release(spec)?;
    // A datagram every millisecond: enough to drive the neighbour state machine.
    let pinger = client.submit(move |_| {
        ping_until_answer(
            target,
            Duration::from_millis(1),
            Instant::now() + KERNEL_ONLY_CAP,
        )
    });
    to.claim(spec)?;
    let answered = pinger.recv().context("the client worker stopped")??;
    // Leave the address where a later run expects it.
    to.release(spec)?;
    Ok(answered.map(|t| t - t0))
}

/// The client's neighbour entry for the shared address.
fn client_neighbour(lab: &Lab) -> anyhow::Result<Option<MacAddr>> {
    let out = lab.exec(
        Host::Client,
        "ip",
        &["neigh", "show", &SHARED_ADDR.to_string(), "dev", LAB_IFACE],
    )?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut words = text.split_whitespace();
    Ok(words
        .find(|w| *w == "lladdr")
        .and_then(|_| words.next())
        .and_then(|w| w.parse().ok()))
}

/// Sends a datagram to `target` every `every` until one is echoed back;
/// returns when the first echo arrived, or `None` at the deadline.
fn ping_until_answer(
    target: SocketAddr,
    every: Duration,
    deadline: Instant,
) -> anyhow::Result<Option<Instant>> {
    let socket = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, 0))?;
    socket.set_nonblocking(true)?;
    let mut next = Instant::now();
    let mut buf = [0u8; 64];
    loop {
        let now = Instant::now();
        if now >= deadline {
            return Ok(None);
        }
        if now >= next {
            // Errors from earlier datagrams (port or host unreachable) only
            // mean "not answered yet".
            let _ = socket.send_to(b"tandem-bench", target);
            next += every;
        }
        match socket.recv_from(&mut buf) {
            Ok(_) => return Ok(Some(Instant::now())),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_micros(10))
            }
            Err(_) => {}
        }
    }
}

/// A thread that stays inside one host's namespace and runs jobs there, so
/// that timed steps pay no thread start or `setns`.
struct Worker {
    jobs: mpsc::Sender<Job>,
}

type Job = Box<dyn FnOnce(&Ctx) + Send>;

/// What a job gets: the worker's runtime and netlink handle.
struct Ctx {
    rt: tokio::runtime::Runtime,
    ifs: Interfaces,
}

impl Worker {
    fn spawn(lab: &Lab, host: Host) -> anyhow::Result<Worker> {
        let (jobs, queue) = mpsc::channel::<Job>();
        let (ready_tx, ready) = mpsc::channel::<anyhow::Result<()>>();
        let namespace = lab.namespace(host);
        std::thread::spawn(move || {
            let result = tandem_lab::run_in_namespace(&namespace, move || {
                let ctx = (|| {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()?;
                    let ifs = {
                        let _inside = rt.enter();
                        Interfaces::new()?
                    };
                    Ok::<_, anyhow::Error>(Ctx { rt, ifs })
                })();
                let ctx = match ctx {
                    Ok(ctx) => {
                        let _ = ready_tx.send(Ok(()));
                        ctx
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                        return;
                    }
                };
                while let Ok(job) = queue.recv() {
                    job(&ctx);
                }
            });
            if let Err(e) = result {
                eprintln!("bench netif: worker in {namespace}: {e}");
            }
        });
        ready.recv().context("the worker thread died")??;
        Ok(Worker { jobs })
    }

    /// Starts `f` on the worker; the answer arrives on the returned channel.
    fn submit<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Ctx) -> R + Send + 'static,
    ) -> mpsc::Receiver<R> {
        let (tx, rx) = mpsc::channel();
        let _ = self.jobs.send(Box::new(move |ctx| {
            let _ = tx.send(f(ctx));
        }));
        rx
    }

    fn call<R: Send + 'static>(
        &self,
        f: impl FnOnce(&Ctx) -> R + Send + 'static,
    ) -> anyhow::Result<R> {
        self.submit(f).recv().context("the worker thread died")
    }

    fn claim(&self, spec: &AddressSpec) -> anyhow::Result<()> {
        let spec = spec.clone();
        self.call(move |ctx| ctx.rt.block_on(ctx.ifs.claim(&spec)).map(drop))??;
        Ok(())
    }

    fn release(&self, spec: &AddressSpec) -> anyhow::Result<()> {
        let spec = spec.clone();
        self.call(move |ctx| ctx.rt.block_on(ctx.ifs.release(&spec)).map(drop))??;
        Ok(())
    }

    fn announce(&self, spec: &AddressSpec, config: AnnounceConfig) -> anyhow::Result<()> {
        let spec = spec.clone();
        self.call(move |ctx| {
            ctx.rt
                .block_on(ctx.ifs.announce(spec.ip(), &spec.iface, config))
                .map(drop)
        })??;
        Ok(())
    }
}

/// A UDP echo server on a node, bound to every address so that it answers
/// through the shared address while the node holds it.
struct EchoServer;

impl EchoServer {
    fn spawn(lab: &Lab, host: Host, stop: Arc<AtomicBool>) -> std::thread::JoinHandle<()> {
        let namespace = lab.namespace(host);
        std::thread::spawn(move || {
            let _ = tandem_lab::run_in_namespace(&namespace, || {
                let Ok(socket) = UdpSocket::bind((Ipv4Addr::UNSPECIFIED, ECHO_PORT)) else {
                    eprintln!("bench netif: cannot bind the echo server in {namespace}");
                    return;
                };
                let _ = socket.set_read_timeout(Some(Duration::from_millis(50)));
                let mut buf = [0u8; 64];
                while !stop.load(Ordering::Relaxed) {
                    if let Ok((n, from)) = socket.recv_from(&mut buf) {
                        let _ = socket.send_to(buf.get(..n).unwrap_or_default(), from);
                    }
                }
            });
        })
    }
}

fn fmt(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

fn print_table(rows: &[Row], kernel_only: Option<Duration>) {
    println!("bench netif: {RUNS} runs each, in the namespace lab (veth + bridge)");
    println!("{:<66} {:>12} {:>12}", "measure", "median", "p99");
    for row in rows {
        println!(
            "{:<66} {:>12} {:>12}",
            row.what,
            fmt(row.median()),
            fmt(row.p99())
        );
    }
    let cold = rows.iter().find(|r| r.key == "udp_echo_cold");
    let warm = rows.iter().find(|r| r.key == "udp_echo_warm");
    if let (Some(cold), Some(warm)) = (cold, warm) {
        let resolution = cold.median().saturating_sub(warm.median());
        println!(
            "{:<66} {:>12}",
            "baseline: kernel ARP resolution at the client (cold − warm)",
            fmt(resolution)
        );
    }
    match kernel_only {
        Some(d) => println!(
            "{:<66} {:>12}",
            "baseline: takeover without announce (kernel only, 1 run)",
            fmt(d)
        ),
        None => println!(
            "{:<66} {:>12}",
            "baseline: takeover without announce (kernel only, 1 run)",
            format!("> {KERNEL_ONLY_CAP:?}")
        ),
    }
}

fn write_json(rows: &[Row], kernel_only: Option<Duration>) -> anyhow::Result<()> {
    let us = |d: Duration| d.as_secs_f64() * 1e6;
    let mut out = String::from("{\n  \"area\": \"netif\",\n");
    out.push_str(&format!(
        "  \"runs\": {RUNS},\n  \"unit\": \"microseconds\",\n  \"series\": {{\n"
    ));
    for (i, row) in rows.iter().enumerate() {
        let comma = if i + 1 == rows.len() { "" } else { "," };
        out.push_str(&format!(
            "    \"{}\": {{ \"median\": {:.1}, \"p99\": {:.1}, \"min\": {:.1}, \"max\": {:.1} }}{comma}\n",
            row.key,
            us(row.median()),
            us(row.p99()),
            us(row.samples.first().copied().unwrap_or_default()),
            us(row.samples.last().copied().unwrap_or_default()),
        ));
    }
    out.push_str("  },\n");
    match kernel_only {
        Some(d) => out.push_str(&format!("  \"takeover_without_announce\": {:.1}\n", us(d))),
        None => out.push_str("  \"takeover_without_announce\": null\n"),
    }
    out.push_str("}\n");
    let path = super::output_dir()?.join("netif.json");
    std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))?;
    println!("written to {}", path.display());
    Ok(())
}
