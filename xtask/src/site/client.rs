//! The lab's client: writes through the shared address every 10 ms and records
//! which node acknowledged each write and when.

use std::io::{BufRead, BufReader, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::APP_PORT;

/// How long a write waits for its connection to the shared address: the lab's
/// round trip is well under a millisecond, so a connection not made by then went
/// to a node that is gone.
const CONNECT_TIMEOUT: Duration = Duration::from_millis(20);

/// How long the client waits for an answer before it counts the write as not
/// acknowledged (longer than the application's 800 ms wait for the standby).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(2);

/// The client's first transaction number: `samples[i]` is transaction
/// `FIRST_TX + i`.
pub(crate) const FIRST_TX: u64 = 1001;

/// The client: sends a write through the shared address every 10 ms and records
/// when each was answered and which node acknowledged it (`samples[i]` is
/// transaction [`FIRST_TX`] + i). The schedule does not wait for answers (an
/// open-loop probe, like the bench's UDP one): a write lost with the address costs
/// that write, not the client's timeout on every write behind it. Once `stop` is
/// set it returns when every write has been answered or given up on.
pub(crate) fn client(
    started: Instant,
    stop: &AtomicBool,
    samples: &Arc<Mutex<Vec<Sample>>>,
) -> anyhow::Result<()> {
    let target = std::net::SocketAddr::from((tandem_lab::SHARED_ADDR, APP_PORT));
    let mut tx = FIRST_TX - 1;
    let mut next = Instant::now();
    let mut writes: Vec<std::thread::JoinHandle<()>> = Vec::new();
    while !stop.load(Ordering::Relaxed) {
        tx += 1;
        let index = {
            let mut list = samples
                .lock()
                .map_err(|_| anyhow::anyhow!("samples poisoned"))?;
            list.push(Sample {
                sent: started.elapsed(),
                done: None,
                who: None,
            });
            list.len() - 1
        };
        let samples = Arc::clone(samples);
        // A thread inherits the network namespace of the one that creates it.
        writes.push(std::thread::spawn(move || {
            let who = write_once(target, tx);
            if let Ok(mut list) = samples.lock()
                && let Some(sample) = list.get_mut(index)
            {
                sample.done = Some(started.elapsed());
                sample.who = who;
            }
        }));
        writes.retain(|w| !w.is_finished());
        next = (next + Duration::from_millis(10)).max(Instant::now());
        std::thread::sleep(next.saturating_duration_since(Instant::now()));
    }
    for write in writes {
        let _ = write.join();
    }
    Ok(())
}

/// One write of transaction `tx`: the node that acknowledged it, or `None`.
fn write_once(target: std::net::SocketAddr, tx: u64) -> Option<String> {
    let mut s = std::net::TcpStream::connect_timeout(&target, CONNECT_TIMEOUT).ok()?;
    let _ = s.set_read_timeout(Some(ANSWER_TIMEOUT));
    s.write_all(format!("write {tx}\n").as_bytes()).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    line.trim().strip_prefix("ok ").map(str::to_owned)
}

/// Waits until the client, told to stop, has no write in flight (each is answered
/// or given up on within [`ANSWER_TIMEOUT`]).
pub(crate) fn wait_answered(samples: &Mutex<Vec<Sample>>) {
    // The client looks at `stop` every 10 ms: after this it sends nothing more.
    std::thread::sleep(Duration::from_millis(50));
    let deadline = Instant::now() + ANSWER_TIMEOUT + Duration::from_secs(1);
    while Instant::now() < deadline {
        let in_flight = samples
            .lock()
            .map(|list| list.iter().any(|s| s.done.is_none()))
            .unwrap_or(false);
        if !in_flight {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The transactions that a node acknowledged.
pub(crate) fn acknowledged(samples: &Mutex<Vec<Sample>>) -> Vec<u64> {
    let Ok(list) = samples.lock() else {
        return Vec::new();
    };
    (FIRST_TX..)
        .zip(list.iter())
        .filter(|(_, s)| s.who.is_some())
        .map(|(tx, _)| tx)
        .collect()
}

/// The node that acknowledged the latest write that has been answered (or given
/// up on), if it was acknowledged.
pub(crate) fn latest_answer(samples: &Mutex<Vec<Sample>>) -> Option<String> {
    let list = samples.lock().ok()?;
    list.iter()
        .rev()
        .find(|s| s.done.is_some())
        .and_then(|s| s.who.clone())
}

/// One write of the client, in times since the run started.
#[derive(Debug, Clone)]
pub(crate) struct Sample {
    /// When it was sent.
    pub(crate) sent: Duration,
    /// When its answer came or the client gave up; `None` while it is in flight.
    pub(crate) done: Option<Duration>,
    /// The node that acknowledged it, if one did.
    pub(crate) who: Option<String>,
}
