//! A raw link-layer socket on one named interface (`AF_PACKET` through pnet's
//! datalink channel), for sending and receiving whole Ethernet frames.
//!
//! The socket is made in the calling thread's network namespace and stays
//! there, whichever thread later uses it. It does not switch the interface to
//! promiscuous mode: it sees frames addressed to the interface, broadcasts and
//! the frames the host itself sends.

use std::io;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use pnet::datalink::{self, Channel, DataLinkReceiver, DataLinkSender, NetworkInterface};

use crate::{Error, MacAddr};

/// How long one blocking read waits before the caller's deadline is checked again.
const READ_SLICE: Duration = Duration::from_millis(5);

/// A raw Ethernet socket bound to one interface.
pub struct RawLink {
    name: String,
    index: u32,
    mac: MacAddr,
    tx: Box<dyn DataLinkSender>,
    rx: Box<dyn DataLinkReceiver>,
}

impl std::fmt::Debug for RawLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RawLink")
            .field("name", &self.name)
            .field("index", &self.index)
            .field("mac", &self.mac)
            .finish_non_exhaustive()
    }
}

/// What a send achieved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// The kernel took the frame.
    Yes,
    /// The link could not carry it (interface down, no buffer): for a probe an
    /// unanswered attempt, not an error.
    LinkDown,
}

impl RawLink {
    /// Opens a raw socket on the interface `name` of the calling thread's
    /// network namespace.
    ///
    /// Errors: [`Error::NoSuchInterface`], [`Error::NoHardwareAddress`] (not an
    /// Ethernet interface), [`Error::Permission`] without `CAP_NET_RAW`.
    pub fn open(name: &str) -> Result<RawLink, Error> {
        let iface = find_interface(name)?;
        let mac = iface
            .mac
            .map(|m| MacAddr(m.octets()))
            .filter(|m| *m != MacAddr::ZERO)
            .ok_or_else(|| Error::NoHardwareAddress {
                name: name.to_string(),
            })?;
        let config = datalink::Config {
            read_timeout: Some(READ_SLICE),
            promiscuous: false,
            ..datalink::Config::default()
        };
        let action = format!("open a raw packet socket on {name}");
        match datalink::channel(&iface, config) {
            Ok(Channel::Ethernet(tx, rx)) => Ok(RawLink {
                name: name.to_string(),
                index: iface.index,
                mac,
                tx,
                rx,
            }),
            Ok(_) => Err(Error::Socket {
                action,
                source: io::Error::other("pnet returned a channel that is not Ethernet"),
            }),
            Err(source) => Err(Error::from_io(action, source)),
        }
    }

    /// The interface name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The interface index.
    pub fn index(&self) -> u32 {
        self.index
    }

    /// The interface's hardware address.
    pub fn mac(&self) -> MacAddr {
        self.mac
    }

    /// Closes the socket without making the caller wait. Closing a packet
    /// socket waits for an RCU grace period in the kernel (10–20 ms); on a
    /// takeover path that wait is pure delay, so inside a tokio runtime the
    /// close happens on the blocking pool. Outside one it happens here.
    pub fn close_in_background(self) {
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => drop(runtime.spawn_blocking(move || drop(self))),
            Err(_) => drop(self),
        }
    }

    /// Sends one whole Ethernet frame.
    pub fn send(&mut self, frame: &[u8]) -> Result<Sent, Error> {
        let result = self
            .tx
            .send_to(frame, None)
            .unwrap_or_else(|| Err(io::Error::other("pnet could not send the frame")));
        match result {
            Ok(()) => Ok(Sent::Yes),
            Err(e) if link_cannot_carry(&e) => Ok(Sent::LinkDown),
            Err(e) => Err(Error::from_io(format!("send a frame on {}", self.name), e)),
        }
    }

    /// Reads frames until `deadline`, handing each to `look`; returns the first
    /// value `look` returns, or `None` when the deadline passes first.
    pub fn recv_until<T>(
        &mut self,
        deadline: Instant,
        mut look: impl FnMut(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, Error> {
        while Instant::now() < deadline {
            match self.rx.next() {
                Ok(frame) => {
                    if let Some(found) = look(frame) {
                        return Ok(Some(found));
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::TimedOut => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if link_cannot_carry(&e) => std::thread::sleep(READ_SLICE),
                Err(e) => return Err(Error::from_io(format!("receive on {}", self.name), e)),
            }
        }
        Ok(None)
    }
}

/// The interface called `name`, looked up in the calling thread's namespace.
pub(crate) fn find_interface(name: &str) -> Result<NetworkInterface, Error> {
    datalink::interfaces()
        .into_iter()
        .find(|i| i.name == name)
        .ok_or_else(|| Error::NoSuchInterface {
            name: name.to_string(),
        })
}

/// Errors that mean "the network cannot carry this now", which a probe counts
/// as an unanswered attempt rather than a failure.
pub(crate) fn link_cannot_carry(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::NetworkDown
            | io::ErrorKind::NetworkUnreachable
            | io::ErrorKind::HostUnreachable
    ) || e.raw_os_error() == Some(Errno::ENOBUFS as i32) // the device queue dropped it
}
