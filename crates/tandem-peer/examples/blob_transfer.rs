//! Streams a blob (200 MB by default) and a burst of small messages between two
//! endpoints on 127.0.0.1 and prints throughput and the process's peak memory, to show
//! that a config bundle of any size never sits in memory.
//!
//! `cargo run --release -p tandem-peer --example blob_transfer [MEGABYTES]`

use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::task::{Context, Poll};
use std::time::Instant;

use tandem_core::NodeId;
use tandem_peer::{Config, Incoming, Listener, SiteKey, dial};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// Yields `left` bytes of a simple pattern without holding them.
struct Source {
    left: u64,
    pos: u64,
}

impl AsyncRead for Source {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = usize::try_from(self.left)
            .unwrap_or(usize::MAX)
            .min(buf.remaining());
        let start = self.pos;
        let chunk = buf.initialize_unfilled_to(n);
        for (i, b) in chunk.iter_mut().enumerate() {
            *b = (start.wrapping_add(i as u64) % 251) as u8;
        }
        buf.advance(n);
        self.left -= n as u64;
        self.pos += n as u64;
        Poll::Ready(Ok(()))
    }
}

/// Checks the pattern and counts bytes without keeping them.
#[derive(Default)]
struct Sink {
    pos: u64,
    bad: u64,
}

impl AsyncWrite for Sink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let start = self.pos;
        let bad = buf
            .iter()
            .enumerate()
            .filter(|&(i, &b)| b != (start.wrapping_add(i as u64) % 251) as u8)
            .count();
        self.bad += bad as u64;
        self.pos += buf.len() as u64;
        Poll::Ready(Ok(buf.len()))
    }
    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

async fn run(megabytes: u64) -> Result<(), tandem_peer::Error> {
    let key = SiteKey::generate()?;
    let addr = SocketAddr::from(([127, 0, 0, 1], 0));
    let mut listener = Listener::bind(addr, Config::new(key.clone(), NodeId::Two)).await?;
    let target = listener.local_addr();
    let node1_config = Config::new(key, NodeId::One);
    let (node1, node2) = tokio::join!(dial(target, &node1_config), listener.accept());
    let (node1, node2) = (node1?, node2?);

    let len = megabytes * 1_000_000;
    let start = Instant::now();
    let sender = node1.clone();
    let sending = tokio::spawn(async move { sender.send_blob(Source { left: len, pos: 0 }).await });
    let mut sink = Sink::default();
    let received = match node2.recv().await? {
        Incoming::Blob(mut blob) => blob.copy_to(&mut sink).await?,
        other => {
            return Err(tandem_peer::Error::Config(format!(
                "expected a blob, got {other:?}"
            )));
        }
    };
    let sent = sending
        .await
        .map_err(|e| tandem_peer::Error::Config(e.to_string()))??;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "blob: {received} bytes ({sent} sent, {} corrupt) in {secs:.2} s = {:.0} MB/s",
        sink.bad,
        received as f64 / secs / 1e6
    );

    let count = 20_000u32;
    let start = Instant::now();
    let sender = node1.clone();
    let sending = tokio::spawn(async move {
        for i in 0..count {
            sender.send(format!("replication batch {i}")).await?;
        }
        Ok::<_, tandem_peer::Error>(())
    });
    for _ in 0..count {
        node2.recv().await?;
    }
    sending
        .await
        .map_err(|e| tandem_peer::Error::Config(e.to_string()))??;
    let secs = start.elapsed().as_secs_f64();
    println!(
        "small messages: {count} in {secs:.2} s = {:.0} messages/s",
        f64::from(count) / secs
    );
    if let Some(offset) = node1.clock_offset() {
        println!("clock: {offset}");
    }
    match peak_rss_mib() {
        Some(mib) => println!("peak memory of this process (both endpoints): {mib:.1} MiB"),
        None => println!("peak memory: unknown (no /proc/self/status)"),
    }
    node1.close("benchmark done").await;
    Ok(())
}

fn main() -> ExitCode {
    let megabytes = match std::env::args().nth(1).map(|a| a.parse::<u64>()) {
        None => 200,
        Some(Ok(mb)) => mb,
        Some(Err(e)) => {
            eprintln!("usage: blob_transfer [MEGABYTES]: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(megabytes)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(cause) = source {
                text.push_str(&format!(": {cause}"));
                source = cause.source();
            }
            eprintln!("error: {text}");
            ExitCode::FAILURE
        }
    }
}
