//! Heartbeats on a path of their own: authenticated UDP datagrams between the two
//! node addresses, sent and judged by one thread that nothing else in the process
//! can delay.
//!
//! A session's frames share one TCP stream, so a heartbeat frame waits behind every
//! byte queued before it: a config bundle, a from-sync, a burst of replication. At a
//! 20 ms heartbeat that queue alone can look like a dead peer. A [`Link`](crate::Link)
//! therefore also binds a UDP socket on its own address and port and starts a
//! liveness thread for it. While a session is up the thread sends a 44-byte datagram
//! every heartbeat interval to the peer's address and port and reads the peer's.
//!
//! - **Authenticated per session.** Each datagram carries the session's id and an
//!   HMAC-SHA256 tag (16 bytes) under a key derived from the site key and the Noise
//!   handshake hash of that session, and a sequence number that must grow: a
//!   datagram of another session, another site, a replay or a reflection of this
//!   node's own is dropped without a word. Until the peer's first genuine datagram
//!   arrives the session is judged as before, by its TCP frames (a peer of an
//!   earlier release never sends one).
//! - **Missed intervals, and this thread's own stalls forgiven.** The thread
//!   wakes to send every interval and at the peer's deadline (`missed` of the
//!   peer's intervals after its last genuine datagram), on a high-resolution
//!   timer (`ppoll`, not a socket timeout rounded to the kernel's tick), reads
//!   every datagram already queued and only then judges, so what the kernel
//!   queued while the process was stalled counts as heard. A wake more than half
//!   an interval past the deadline is a stall of this thread, not proof of the
//!   peer's silence: the peer gets one more interval from the wake instead. A
//!   late send is one send, not a burst.
//! - **Loss closes the session** with [`CloseReason::PeerLost`], exactly as a silent
//!   TCP stream does, so everything above the link sees one kind of loss. Once the
//!   datagrams carry liveness, the TCP stream is given a longer backstop
//!   ([`TCP_BACKSTOP_FACTOR`] times its silence, at least [`TCP_BACKSTOP_MIN`]), which
//!   still ends a session whose stream is wedged while its datagrams flow.
//! - **Optional real-time scheduling.** With
//!   [`Config::with_liveness_priority`](crate::Config::with_liveness_priority) the
//!   thread runs under `SCHED_FIFO` at that priority, as keepalived's
//!   `vrrp_rt_priority` does; it sleeps between datagrams, so it takes almost no CPU.
//!
//! What it never does: carry anything but liveness, or keep a session alive that
//! the TCP side closed.

use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::mpsc::{self, Receiver, Sender, TryRecvError};
use std::time::{Duration, Instant};

use hmac::{Hmac, KeyInit, Mac};
use sha2::{Digest, Sha256};
use tracing::{debug, info, warn};

use crate::error::CloseReason;
use crate::key::SiteKey;
use crate::session::Shared;

/// Length of a heartbeat datagram.
pub(crate) const DATAGRAM_LEN: usize = 44;
/// The datagram's first bytes.
const MAGIC: [u8; 4] = *b"TDHB";
/// The datagram format's version.
const VERSION: u8 = 1;
/// Length of the truncated HMAC-SHA256 tag.
const TAG_LEN: usize = 16;
/// The authenticated part: everything before the tag.
const BODY_LEN: usize = DATAGRAM_LEN - TAG_LEN;
/// Datagrams read per wake at most, so that a flood cannot keep the thread from
/// sending and judging.
const DRAIN_MAX: usize = 4096;
/// Once datagrams carry liveness, the TCP stream's silence limit grows by this factor.
pub(crate) const TCP_BACKSTOP_FACTOR: u32 = 10;
/// ... and is at least this long.
pub(crate) const TCP_BACKSTOP_MIN: Duration = Duration::from_secs(5);

/// The per-session secrets of the datagrams: an id naming the session and the key of
/// their tags. Both come from the handshake hash, which differs for every session.
#[derive(Clone)]
pub(crate) struct DatagramKeys {
    id: [u8; 8],
    mac: [u8; 32],
}

impl std::fmt::Debug for DatagramKeys {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DatagramKeys")
            .field("id", &hex::encode(self.id))
            .finish_non_exhaustive()
    }
}

impl DatagramKeys {
    /// The keys of the session whose Noise handshake hash is `handshake_hash`.
    pub(crate) fn derive(site: &SiteKey, handshake_hash: &[u8]) -> DatagramKeys {
        let mut id = [0u8; 8];
        let digest = Sha256::new()
            .chain_update(b"tandem-peer liveness id v1")
            .chain_update(handshake_hash)
            .finalize();
        id.copy_from_slice(digest.get(..8).unwrap_or(&[0; 8]));
        let mut mac = [0u8; 32];
        if let Ok(m) = <Hmac<Sha256> as KeyInit>::new_from_slice(site.as_bytes()) {
            let tag = m
                .chain_update(b"tandem-peer liveness key v1")
                .chain_update(handshake_hash)
                .finalize()
                .into_bytes();
            mac.copy_from_slice(&tag);
        }
        DatagramKeys { id, mac }
    }

    fn tag(&self, body: &[u8]) -> Option<Hmac<Sha256>> {
        let mut m = <Hmac<Sha256> as KeyInit>::new_from_slice(&self.mac).ok()?;
        m.update(body);
        Some(m)
    }
}

/// One heartbeat datagram's content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Beat {
    /// The sender's node id.
    pub(crate) node: u8,
    /// The sender's sequence number in this session (from 1).
    pub(crate) seq: u64,
    /// The sender's heartbeat interval in milliseconds.
    pub(crate) interval_ms: u32,
}

/// Why a datagram was dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dropped {
    /// Not a tandem heartbeat of this version (length, magic, version).
    Malformed,
    /// Another session's (or another site's) heartbeat.
    OtherSession,
    /// The tag is wrong: forged or altered.
    Forged,
}

/// Seals `beat` for the session of `keys`.
pub(crate) fn seal(keys: &DatagramKeys, beat: Beat) -> [u8; DATAGRAM_LEN] {
    let mut out = [0u8; DATAGRAM_LEN];
    let (body, tag) = out.split_at_mut(BODY_LEN);
    let fields: [&[u8]; 7] = [
        &MAGIC,
        &[VERSION],
        &[beat.node],
        &[0, 0],
        &keys.id,
        &beat.seq.to_be_bytes(),
        &beat.interval_ms.to_be_bytes(),
    ];
    let mut at = 0;
    for field in fields {
        if let Some(dst) = body.get_mut(at..at + field.len()) {
            dst.copy_from_slice(field);
        }
        at += field.len();
    }
    if let Some(m) = keys.tag(body) {
        let full = m.finalize().into_bytes();
        tag.copy_from_slice(full.get(..TAG_LEN).unwrap_or(&[0; TAG_LEN]));
    }
    out
}

/// Opens a datagram of the session of `keys`: checks its form, its session and its
/// tag, in that order (the cheap checks first).
pub(crate) fn open(keys: &DatagramKeys, datagram: &[u8]) -> Result<Beat, Dropped> {
    let bytes: &[u8; DATAGRAM_LEN] = datagram.try_into().map_err(|_| Dropped::Malformed)?;
    let (body, tag) = bytes.split_at(BODY_LEN);
    let field = |from: usize, len: usize| body.get(from..from + len).unwrap_or_default();
    if field(0, 4) != MAGIC || field(4, 1) != [VERSION] {
        return Err(Dropped::Malformed);
    }
    if field(8, 8) != keys.id {
        return Err(Dropped::OtherSession);
    }
    let m = keys.tag(body).ok_or(Dropped::Forged)?;
    m.verify_truncated_left(tag).map_err(|_| Dropped::Forged)?;
    let node = field(5, 1).first().copied().unwrap_or(0);
    let seq = u64::from_be_bytes(field(16, 8).try_into().map_err(|_| Dropped::Malformed)?);
    let interval_ms = u32::from_be_bytes(field(24, 4).try_into().map_err(|_| Dropped::Malformed)?);
    Ok(Beat {
        node,
        seq,
        interval_ms,
    })
}

/// The judge of one session's datagrams: pure (time comes in with each call), so
/// that its rules are tested without a clock or a socket.
///
/// The peer is lost once `missed` of its intervals passed since its last genuine
/// datagram, judged when the thread wakes for that deadline and has read what
/// the kernel queued. A wake more than half of this thread's interval after the
/// deadline means this thread itself was stalled (descheduled, paged out): it
/// cannot tell a silent peer from its own absence, so it gives the peer one more
/// interval from the wake instead of declaring the loss.
#[derive(Debug, Clone)]
pub(crate) struct Judge {
    /// The peer's node id.
    peer_node: u8,
    /// The newest sequence number taken.
    last_seq: u64,
    /// When the last genuine datagram was taken; `None` until the first.
    heard: Option<Instant>,
    /// `missed` intervals of the peer.
    limit: Duration,
    /// The peer's interval: the grace after a stall of this thread.
    peer_interval: Duration,
    /// This thread's interval.
    own_interval: Duration,
    /// A later deadline given after a stall of this thread.
    grace: Option<Instant>,
}

/// What the judge says at a deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Nothing to do.
    Fine,
    /// The peer missed its intervals: close the session.
    Lost,
}

impl Judge {
    /// A judge for a peer `peer_node` whose interval is `peer_interval`, lost after
    /// `missed` of them, on a thread that wakes every `own_interval`.
    pub(crate) fn new(
        peer_node: u8,
        peer_interval: Duration,
        own_interval: Duration,
        missed: u32,
    ) -> Judge {
        Judge {
            peer_node,
            last_seq: 0,
            heard: None,
            limit: peer_interval.saturating_mul(missed.max(1)),
            peer_interval,
            own_interval,
            grace: None,
        }
    }

    /// A datagram that opened, taken `at`: kept if it is the peer's and newer than
    /// any before. Returns whether it was kept.
    pub(crate) fn take(&mut self, beat: Beat, at: Instant) -> bool {
        if beat.node != self.peer_node || beat.seq <= self.last_seq {
            return false;
        }
        self.last_seq = beat.seq;
        self.heard = Some(at);
        self.grace = None;
        true
    }

    /// When the peer counts as lost unless a datagram comes first; `None` while
    /// datagrams do not carry the session.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        let due = self.heard?.checked_add(self.limit)?;
        Some(self.grace.map_or(due, |grace| grace.max(due)))
    }

    /// Judges at `now`, after reading what was queued.
    pub(crate) fn judge(&mut self, now: Instant) -> Verdict {
        let Some(due) = self.deadline() else {
            return Verdict::Fine;
        };
        if now < due {
            return Verdict::Fine;
        }
        if now.duration_since(due) > self.own_interval / 2 {
            // This thread woke late: a stall of its own, not proof of the peer's.
            self.grace = now.checked_add(self.peer_interval);
            return Verdict::Fine;
        }
        Verdict::Lost
    }

    /// Whether datagrams carry this session's liveness.
    pub(crate) fn active(&self) -> bool {
        self.heard.is_some()
    }

    /// When the last genuine datagram was taken.
    pub(crate) fn heard(&self) -> Option<Instant> {
        self.heard
    }
}

/// A session for the liveness thread to watch.
pub(crate) struct Watch {
    pub(crate) shared: Arc<Shared>,
    pub(crate) keys: DatagramKeys,
    pub(crate) peer_node: u8,
    pub(crate) peer_interval: Duration,
}

/// The handle of a link's liveness thread; the thread ends soon after the handle is
/// dropped (at its next tick).
#[derive(Debug)]
pub(crate) struct Liveness {
    watch: Sender<Watch>,
    local: SocketAddr,
}

/// Settings of a liveness thread.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LivenessSettings {
    /// This node's id.
    pub(crate) node: u8,
    /// This node's heartbeat interval.
    pub(crate) interval: Duration,
    /// Intervals missed before the peer is lost.
    pub(crate) missed: u32,
    /// `SCHED_FIFO` priority of the thread, if any.
    pub(crate) priority: Option<u8>,
}

impl Liveness {
    /// Binds `local` (UDP) and starts the thread that sends heartbeats to `peer` (or,
    /// if its port is 0, to wherever the peer's genuine datagrams come from).
    pub(crate) fn start(
        local: SocketAddr,
        peer: SocketAddr,
        settings: LivenessSettings,
    ) -> std::io::Result<Liveness> {
        let socket = UdpSocket::bind(local)?;
        let local = socket.local_addr()?;
        let (watch, sessions) = mpsc::channel();
        std::thread::Builder::new()
            .name("tandem-liveness".to_owned())
            .spawn(move || run(socket, peer, settings, sessions))?;
        Ok(Liveness { watch, local })
    }

    /// Watches `session` from now on (replacing any session watched before).
    pub(crate) fn watch(&self, session: Watch) {
        let _ = self.watch.send(session);
    }

    /// The bound UDP address.
    pub(crate) fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

/// The session being watched, with its judge.
struct Watched {
    watch: Watch,
    judge: Judge,
    seq: u64,
    /// Where the peer's genuine datagrams last came from.
    learned: Option<SocketAddr>,
}

fn run(socket: UdpSocket, peer: SocketAddr, settings: LivenessSettings, sessions: Receiver<Watch>) {
    if let Some(priority) = settings.priority {
        match set_fifo(priority) {
            Ok(()) => debug!(priority, "the liveness thread runs under SCHED_FIFO"),
            Err(e) => warn!(
                priority,
                error = %e,
                "cannot give the liveness thread real-time priority; it runs at normal priority"
            ),
        }
    }
    let interval = settings.interval.max(Duration::from_millis(1));
    // Never blocks in `recv_from`: the waits are `readable_within`'s.
    if let Err(e) = socket.set_nonblocking(true) {
        warn!(error = %e, "the heartbeat socket cannot be made non-blocking; no datagrams");
        return;
    }
    let mut current: Option<Watched> = None;
    let mut buf = [0u8; 64];
    let mut next_send = Instant::now() + interval;
    loop {
        loop {
            match sessions.try_recv() {
                Ok(watch) => {
                    let judge = Judge::new(
                        watch.peer_node,
                        watch.peer_interval,
                        interval,
                        settings.missed,
                    );
                    current = Some(Watched {
                        watch,
                        judge,
                        seq: 0,
                        learned: None,
                    });
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => return,
            }
        }
        if current
            .as_ref()
            .is_some_and(|w| w.watch.shared.reason().is_some())
        {
            current = None;
        }
        // Read until a datagram is due out or the peer's deadline comes; then read
        // what is queued, and only then send and judge.
        let deadline = current.as_ref().and_then(|w| w.judge.deadline());
        let wake = deadline.map_or(next_send, |d| d.min(next_send));
        let now = Instant::now();
        if now < wake {
            if readable_within(&socket, wake - now)
                && let Ok((n, from)) = socket.recv_from(&mut buf)
            {
                receive(
                    current.as_mut(),
                    buf.get(..n).unwrap_or_default(),
                    from,
                    peer.ip(),
                );
            }
            continue;
        }
        for _ in 0..DRAIN_MAX {
            match socket.recv_from(&mut buf) {
                Ok((n, from)) => {
                    receive(
                        current.as_mut(),
                        buf.get(..n).unwrap_or_default(),
                        from,
                        peer.ip(),
                    );
                }
                Err(_) => break,
            }
        }
        let now = Instant::now();
        let Some(w) = current.as_mut() else {
            next_send = now + interval;
            continue;
        };
        if now >= next_send {
            // A late send (this process stalled) is one send: the next is an
            // interval from now, not from when this one was due.
            next_send = if now > next_send + interval {
                now + interval
            } else {
                next_send + interval
            };
            w.seq = w.seq.saturating_add(1);
            let datagram = seal(
                &w.watch.keys,
                Beat {
                    node: settings.node,
                    seq: w.seq,
                    interval_ms: u32::try_from(interval.as_millis()).unwrap_or(u32::MAX),
                },
            );
            let to = if peer.port() == 0 {
                w.learned
            } else {
                Some(peer)
            };
            if let Some(to) = to
                && let Err(e) = socket.send_to(&datagram, to)
            {
                debug!(%to, error = %e, "a heartbeat datagram was not sent");
            }
        }
        if w.judge.judge(now) == Verdict::Lost {
            let silence = w
                .judge
                .heard()
                .map_or(Duration::ZERO, |heard| now.saturating_duration_since(heard));
            w.watch.shared.close(CloseReason::PeerLost {
                silence,
                missed: settings.missed,
            });
            current = None;
        }
    }
}

/// Takes one received datagram for the watched session, if it is genuine.
fn receive(current: Option<&mut Watched>, datagram: &[u8], from: SocketAddr, peer_ip: IpAddr) {
    let Some(w) = current else { return };
    // The cheapest check first: a datagram from another address is not the peer's
    // (the peer sends from its node address).
    if !peer_ip.is_unspecified() && from.ip() != peer_ip {
        return;
    }
    let Ok(beat) = open(&w.watch.keys, datagram) else {
        return;
    };
    let now = Instant::now();
    let was_active = w.judge.active();
    if w.judge.take(beat, now) {
        w.learned = Some(from);
        w.watch.shared.heard_datagram(now);
        if !was_active {
            info!(peer = %w.watch.shared.peer_addr(), "heartbeat datagrams from the peer carry the link's liveness");
        }
    }
}

/// Waits until `socket` has a datagram to read or `timeout` has passed; true when
/// it has one. The wait is `ppoll`'s, on a high-resolution timer, so the thread
/// wakes at the peer's deadline to the microsecond. A receive timeout
/// (`SO_RCVTIMEO`) would not do: the kernel rounds it up to whole ticks (4 ms at
/// `HZ=250`), which put the loss up to 8 ms past the deadline and, past half an
/// interval at a 20 ms heartbeat, made the judge take its own wake for a stall and
/// add a grace interval (`cargo xtask bench failover` saw losses at 96 ms of
/// silence where 60 ms was due).
fn readable_within(socket: &UdpSocket, timeout: Duration) -> bool {
    use nix::poll::{PollFd, PollFlags, ppoll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(socket.as_fd(), PollFlags::POLLIN)];
    let timeout = nix::sys::time::TimeSpec::from_duration(timeout);
    matches!(ppoll(&mut fds, Some(timeout), None), Ok(n) if n > 0)
}

/// Puts the calling thread under `SCHED_FIFO` at `priority` (1-99).
fn set_fifo(priority: u8) -> std::io::Result<()> {
    let param = libc::sched_param {
        sched_priority: i32::from(priority.clamp(1, 99)),
    };
    // SAFETY: `param` is a valid sched_param that lives across the call; pid 0 names
    // the calling thread.
    let rc = unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn keys(hash: u8) -> DatagramKeys {
        DatagramKeys::derive(&SiteKey::from_bytes([7; 32]), &[hash; 32])
    }

    proptest! {
        #[test]
        fn a_sealed_beat_opens_to_itself(node in any::<u8>(), seq in any::<u64>(), interval_ms in any::<u32>()) {
            let k = keys(1);
            let beat = Beat { node, seq, interval_ms };
            prop_assert_eq!(open(&k, &seal(&k, beat)), Ok(beat));
        }

        #[test]
        fn any_changed_byte_is_refused(seq in any::<u64>(), at in 0..DATAGRAM_LEN, flip in 1u8..=255) {
            let k = keys(1);
            let mut d = seal(&k, Beat { node: 2, seq, interval_ms: 20 });
            d[at] ^= flip;
            prop_assert!(open(&k, &d).is_err());
        }

        #[test]
        fn arbitrary_bytes_never_open(bytes in proptest::collection::vec(any::<u8>(), 0..100)) {
            prop_assert!(open(&keys(1), &bytes).is_err());
        }

        #[test]
        fn the_judge_loses_the_peer_exactly_when_its_gap_reaches_the_missed_intervals(
            gaps in proptest::collection::vec(1u64..150, 1..100),
            missed in 1u32..6,
        ) {
            // Datagrams `gaps` ms apart; the thread wakes on time for each deadline.
            let ms = Duration::from_millis;
            let limit = ms(20) * missed;
            let t0 = Instant::now();
            let mut judge = Judge::new(2, ms(20), ms(20), missed);
            let mut heard = t0;
            let first = Beat { node: 2, seq: 1, interval_ms: 20 };
            prop_assert!(judge.take(first, heard));
            for (i, gap) in gaps.into_iter().enumerate() {
                let next = heard + ms(gap);
                let deadline = judge.deadline().unwrap();
                prop_assert_eq!(deadline, heard + limit);
                if next >= deadline {
                    prop_assert_eq!(judge.judge(deadline), Verdict::Lost);
                    return Ok(());
                }
                prop_assert_eq!(judge.judge(next - ms(1)), Verdict::Fine);
                let beat = Beat { node: 2, seq: i as u64 + 2, interval_ms: 20 };
                prop_assert!(judge.take(beat, next));
                heard = next;
            }
        }
    }

    #[test]
    fn a_late_wake_of_the_thread_gives_the_peer_one_more_interval() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let beat = |seq| Beat {
            node: 2,
            seq,
            interval_ms: 20,
        };
        let mut judge = Judge::new(2, ms(20), ms(20), 3);
        judge.take(beat(1), t0);
        // This thread was stalled for 300 ms and found nothing queued: not the
        // peer's fault as far as it can tell.
        assert_eq!(judge.judge(t0 + ms(360)), Verdict::Fine);
        assert_eq!(judge.deadline(), Some(t0 + ms(380)));
        // The peer is still silent one interval later, on time: lost.
        assert_eq!(judge.judge(t0 + ms(380)), Verdict::Lost);
        // A datagram in the grace ends it.
        let mut judge = Judge::new(2, ms(20), ms(20), 3);
        judge.take(beat(1), t0);
        assert_eq!(judge.judge(t0 + ms(360)), Verdict::Fine);
        judge.take(beat(2), t0 + ms(365));
        assert_eq!(judge.deadline(), Some(t0 + ms(425)));
    }

    #[test]
    fn another_sessions_datagram_is_refused() {
        let d = seal(
            &keys(1),
            Beat {
                node: 2,
                seq: 1,
                interval_ms: 20,
            },
        );
        assert_eq!(open(&keys(2), &d), Err(Dropped::OtherSession));
        let other_site = DatagramKeys::derive(&SiteKey::from_bytes([8; 32]), &[1; 32]);
        assert_ne!(
            open(&other_site, &d).ok(),
            Some(Beat {
                node: 2,
                seq: 1,
                interval_ms: 20
            })
        );
    }

    #[test]
    fn replays_reflections_and_old_numbers_are_not_taken() {
        let ms = Duration::from_millis;
        let now = Instant::now();
        let beat = |node, seq| Beat {
            node,
            seq,
            interval_ms: 20,
        };
        let mut judge = Judge::new(2, ms(20), ms(20), 3);
        assert!(judge.take(beat(2, 5), now));
        assert!(!judge.take(beat(2, 5), now), "a replay");
        assert!(!judge.take(beat(2, 4), now), "an older one");
        assert!(!judge.take(beat(1, 9), now), "this node's own, reflected");
    }

    #[test]
    fn a_silent_session_is_never_judged_by_datagrams() {
        let ms = Duration::from_millis;
        let t0 = Instant::now();
        let mut judge = Judge::new(2, ms(20), ms(20), 3);
        for i in 0..100 {
            assert_eq!(judge.judge(t0 + ms(20) * i), Verdict::Fine);
        }
        assert!(!judge.active());
        assert_eq!(judge.deadline(), None);
    }
}
