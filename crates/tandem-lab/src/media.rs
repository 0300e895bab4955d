//! A stand-in Media Server in the lab's client namespace, for the seed's rule
//! that one Media Server always goes with the active Application Server.
//!
//! The real Media Server registers with whichever Application Server answers on
//! the shared address. The stand-in turns that around into something a test can
//! read: it listens on `192.0.2.100:7460` in the client namespace and takes
//! one-line messages, `register <hostname>` and `unregister <hostname>`, which
//! the active node's `[[service]]` sends on start and stop (see
//! `docs/OPERATIONS.md`, "The Media Server follows the active node"). It
//! answers `ok` and keeps who is registered now and every change, in order.
//!
//! Nothing here runs outside the lab: the listener lives in the lab's client
//! namespace and stops when the [`MediaServer`] is dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::{Host, Lab, Result};

/// The stand-in's port on the client's address.
pub const MEDIA_SERVER_PORT: u16 = 7460;

/// The shell command that registers `hostname` with the stand-in: what a
/// `[[service]]`'s `start` runs on the active node (bash, for `/dev/tcp`).
pub fn register_command(hostname: &str) -> String {
    media_command("register", hostname)
}

/// The shell command that unregisters `hostname`: the service's `stop`.
pub fn unregister_command(hostname: &str) -> String {
    media_command("unregister", hostname)
}

fn media_command(verb: &str, hostname: &str) -> String {
    format!(
        "bash -c 'exec 3<>/dev/tcp/{}/{MEDIA_SERVER_PORT} && echo \"{verb} {hostname}\" >&3 && read -r -t 5 answer <&3 && [ \"$answer\" = ok ]'",
        Host::Client.addr()
    )
}

/// What the stand-in Media Server has seen.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Registrations {
    /// The Application Server registered now, if any.
    pub current: Option<String>,
    /// Every message, in order: `register node1`, `unregister node1`, ...
    pub log: Vec<String>,
}

/// The stand-in Media Server, running until dropped.
pub struct MediaServer {
    state: Arc<Mutex<Registrations>>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<Result<()>>>,
}

impl MediaServer {
    /// Starts the stand-in in `lab`'s client namespace.
    pub fn start(lab: &Lab) -> Result<MediaServer> {
        let addr = SocketAddr::from((Host::Client.addr(), MEDIA_SERVER_PORT));
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let state = Arc::new(Mutex::new(Registrations::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (state2, stop2) = (Arc::clone(&state), Arc::clone(&stop));
        let thread = lab.spawn_in(Host::Client, move || {
            let listener = TcpListener::bind(addr);
            let ok = listener.is_ok();
            let _ = ready_tx.send(listener.as_ref().map(drop).map_err(|e| e.to_string()));
            if let (true, Ok(listener)) = (ok, listener) {
                serve(&listener, &state2, &stop2);
            }
        })?;
        match ready_rx.recv_timeout(Duration::from_secs(5)) {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                return Err(crate::Error::Command {
                    command: format!("binding the stand-in Media Server to {addr}"),
                    status: "failed".into(),
                    stderr: e,
                });
            }
            Err(_) => {
                return Err(crate::Error::Command {
                    command: format!("starting the stand-in Media Server on {addr}"),
                    status: "no answer".into(),
                    stderr: "the listener thread did not start within 5 s".into(),
                });
            }
        }
        Ok(MediaServer {
            state,
            stop,
            thread: Some(thread),
        })
    }

    /// What it has seen so far.
    pub fn registrations(&self) -> Registrations {
        self.state
            .lock()
            .map(|s| s.clone())
            .unwrap_or_else(|e| e.into_inner().clone())
    }
}

impl Drop for MediaServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Serves until `stop`: the listener does not block, so the loop sees `stop`
/// within a poll interval (a connection from outside the namespace could not
/// wake a blocked accept).
fn serve(listener: &TcpListener, state: &Mutex<Registrations>, stop: &AtomicBool) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    while !stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            Err(_) => continue,
        };
        let _ = stream.set_nonblocking(false);
        let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
        let mut line = String::new();
        let mut reader = BufReader::new(&stream);
        if reader.read_line(&mut line).is_err() {
            continue;
        }
        let line = line.trim().to_owned();
        let answer = match line.split_once(' ') {
            Some((verb @ ("register" | "unregister"), host)) if !host.is_empty() => {
                let mut s = state.lock().unwrap_or_else(|e| e.into_inner());
                if verb == "register" {
                    s.current = Some(host.to_owned());
                } else if s.current.as_deref() == Some(host) {
                    s.current = None;
                }
                s.log.push(line.clone());
                "ok"
            }
            _ => "error: expected `register HOST` or `unregister HOST`",
        };
        let _ = (&stream).write_all(format!("{answer}\n").as_bytes());
    }
}
