//! Small helpers: clock, randomness, atomic files and the service lock.

use std::fs::{self, File, OpenOptions};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};
use tandem_core::{AtomicOptions, AtomicStep, FileMode, write_atomically_with};

use crate::error::{Error, Result};

/// Milliseconds since the Unix epoch (`tandem-core`'s).
pub(crate) use tandem_core::now_ms;
/// `20261122T080102Z` for a time in ms since the epoch (UTC; `tandem-core`'s).
pub(crate) use tandem_core::timestamp_for_file;

/// A random number from the operating system (`getrandom(2)`).
pub(crate) fn random_u64() -> Result<u64> {
    tandem_core::random_u64().map_err(Error::file(
        "cannot get random bytes through",
        "getrandom(2)",
    ))
}

/// Writes `data` to `path` atomically: a temporary file in the same directory, fsync,
/// rename, fsync of the directory (`tandem-core`'s). Readers see the old file or the
/// whole new one. A missing directory is created owner-only.
pub(crate) fn write_atomically(path: &Path, data: &[u8]) -> Result<()> {
    write_atomically_as(path, data, None)
}

/// [`write_atomically`], the new file given to `owner` (uid, gid, mode) before it
/// replaces the old one (for files PostgreSQL reads).
pub(crate) fn write_atomically_as(
    path: &Path,
    data: &[u8],
    owner: Option<(u32, u32, u32)>,
) -> Result<()> {
    let file = match owner {
        Some((uid, gid, mode)) => FileMode::Owned { uid, gid, mode },
        None => FileMode::Masked(0o666),
    };
    let options = AtomicOptions {
        file,
        create_dir: Some(0o700),
    };
    write_atomically_with(path, data, &options).map_err(|e| match e.step {
        AtomicStep::CreatingDir => Error::file("cannot create the directory", e.path)(e.source),
        _ => Error::file("cannot write", path)(e.source),
    })
}

/// Publishes the peer's positions of this node's changelog `log` for
/// `wait_replicated` in other processes: two lines of fixed length, written over the
/// previous ones in place (an open, a write and a close: the service does it for every
/// acknowledgement, and replacing the file by rename cost several times more). Each is
/// `<log hex> <seq> <check hex>`: the first the position the peer applied, the second
/// (added after the first release of the file; readers of that release read the first
/// line only) the position it received, at least the applied one. A third line (added
/// later still) holds `looked`: a [`mono_ns`] time before the service's latest look at
/// the meta table found `log` current, this node writable and replication on (0: its
/// latest look did not), which spares a waiter that started before it a look of its
/// own. The check value lets a reader refuse a line torn between two writes. No fsync:
/// the applied position is also recorded in the database, less often, and after a
/// crash the peer acknowledges again.
pub(crate) fn write_ack(
    path: &Path,
    log: u64,
    applied: u64,
    received: u64,
    looked: u64,
) -> Result<()> {
    use std::os::unix::fs::FileExt;
    let text = format!(
        "{}{}{}",
        ack_line(log, applied),
        ack_line(log, received.max(applied)),
        ack_line(log, looked)
    );
    match OpenOptions::new().write(true).open(path) {
        Ok(f) => f
            .write_all_at(text.as_bytes(), 0)
            .map_err(Error::file("cannot write", path)),
        // The first one: made whole and renamed into place.
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            write_atomically(path, text.as_bytes())
        }
        Err(e) => Err(Error::file("cannot write", path)(e)),
    }
}

/// A line [`write_ack`] writes.
fn ack_line(log: u64, seq: u64) -> String {
    format!("{log:016x} {seq:020} {:016x}\n", ack_check(log, seq))
}

/// A check value of a published position (not secret: it only tells a torn line).
fn ack_check(log: u64, seq: u64) -> u64 {
    (log.rotate_left(29) ^ seq ^ 0x7461_6e64_656d_6163).wrapping_mul(0x9e37_79b9_7f4a_7c15)
}

/// The positions [`write_ack`] published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Published {
    /// The changelog.
    pub(crate) log: u64,
    /// The newest position the peer applied.
    pub(crate) applied: u64,
    /// The newest position the peer received (at least `applied`; `applied` when the
    /// file has one line, as an older release wrote it, or its second line is torn).
    pub(crate) received: u64,
    /// When (a [`mono_ns`] time) the service last found this changelog current, the
    /// node writable and replication on, as far as it knows; 0 if its latest look did
    /// not, or the line is missing (an older release) or torn.
    pub(crate) looked: u64,
}

/// Nanoseconds of `CLOCK_MONOTONIC`: the same clock in every process of the machine,
/// so the service's times and a waiter's can be compared. 0 if it cannot be read.
pub(crate) fn mono_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| {
        u64::try_from(t.tv_sec())
            .unwrap_or(0)
            .saturating_mul(1_000_000_000)
            .saturating_add(u64::try_from(t.tv_nsec()).unwrap_or(0))
    })
}

/// Parses one line of [`write_ack`].
fn parse_ack_line(line: &str) -> Option<(u64, u64)> {
    let mut fields = line.split(' ');
    let log = u64::from_str_radix(fields.next()?, 16).ok()?;
    let seq = fields.next()?.parse().ok()?;
    let check = u64::from_str_radix(fields.next()?, 16).ok()?;
    (fields.next().is_none() && check == ack_check(log, seq)).then_some((log, seq))
}

/// Reads what [`write_ack`] wrote, if the file is there and its first line whole. A
/// first line torn by a write going on is read again (a few times: the writer is done
/// within microseconds), since taking it for missing would make the caller fall back
/// to the database's older record.
pub(crate) fn read_published(path: &Path) -> Option<Published> {
    read_published_with(|| fs::read_to_string(path).ok())
}

/// [`read_published`] on the texts `read` returns, one per try (`None`: no file).
fn read_published_with(mut read: impl FnMut() -> Option<String>) -> Option<Published> {
    /// Reads again after a torn first line, at most.
    const RETRIES: usize = 3;
    let mut tries = 0;
    loop {
        let text = read()?;
        match parse_published(&text) {
            Some(p) => return Some(p),
            None if tries < RETRIES && !text.is_empty() => {
                tries += 1;
                std::thread::yield_now();
            }
            None => return None,
        }
    }
}

/// The positions in a text [`write_ack`] wrote; `None` if its first line is torn.
fn parse_published(text: &str) -> Option<Published> {
    let mut lines = text.lines();
    let (log, applied) = parse_ack_line(lines.next()?)?;
    let received = lines
        .next()
        .and_then(parse_ack_line)
        .filter(|(l, _)| *l == log)
        .map_or(applied, |(_, r)| r.max(applied));
    let looked = lines
        .next()
        .and_then(parse_ack_line)
        .filter(|(l, _)| *l == log)
        .map_or(0, |(_, t)| t);
    Some(Published {
        log,
        applied,
        received,
        looked,
    })
}

/// The changelog and applied position [`write_ack`] published.
pub(crate) fn read_ack(path: &Path) -> Option<(u64, u64)> {
    read_published(path).map(|p| (p.log, p.applied))
}

/// The replication service's lock on its state directory: held while a service runs,
/// released by the kernel when its process ends (even by `kill -9`).
#[derive(Debug)]
pub(crate) struct ServiceLock {
    _lock: Flock<File>,
}

impl ServiceLock {
    /// Takes the lock; fails if another service holds it.
    pub(crate) fn acquire(path: &Path) -> Result<ServiceLock> {
        let file = open_lock_file(path)?;
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => Ok(ServiceLock { _lock: lock }),
            Err((_, errno)) if errno == nix::errno::Errno::EWOULDBLOCK => {
                Err(Error::State(format!(
                    "another replication service is running on this node (it holds {})",
                    path.display()
                )))
            }
            Err((_, errno)) => Err(Error::File {
                what: "cannot lock".into(),
                path: path.to_path_buf(),
                source: std::io::Error::from(errno),
            }),
        }
    }

    /// Whether another process holds the lock (probing never keeps it).
    pub(crate) fn held_by_other(path: &Path) -> bool {
        let Ok(file) = File::open(path) else {
            return false;
        };
        match Flock::lock(file, FlockArg::LockSharedNonblock) {
            Ok(lock) => {
                drop(lock);
                false
            }
            Err((_, errno)) => errno == nix::errno::Errno::EWOULDBLOCK,
        }
    }
}

/// An exclusive lock on `path` (made if missing), waiting for it: held around a
/// read-modify-write of a small state file, so that a writer that checks what it
/// read is still there is not overtaken between the check and the write. Locks of
/// one process's threads exclude each other too (each opens the file anew).
pub(crate) fn lock_exclusive(path: &Path) -> Result<Flock<File>> {
    let file = open_lock_file(path)?;
    Flock::lock(file, FlockArg::LockExclusive).map_err(|(_, errno)| Error::File {
        what: "cannot lock".into(),
        path: path.to_path_buf(),
        source: std::io::Error::from(errno),
    })
}

fn open_lock_file(path: &Path) -> Result<File> {
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).map_err(Error::file("cannot create the directory", dir))?;
    }
    OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(Error::file("cannot open", path))
}

/// Tells waiters the acknowledgement that the service publishes ([`write_ack`]) each
/// time it changes (inotify), so that they need not poll or read the file themselves.
/// One watch serves every waiter of a backend for as long as the backend lives:
/// closing an inotify instance waits for a kernel grace period (5 to 20 ms here), which
/// a watch made and dropped per `wait_replicated` added to every commit. A thread of
/// its own reads the events and the file, so the watch works from any runtime. Only a
/// hint: a waiter still re-checks on a timer, in case the watch could not be set up or
/// an event was missed.
#[derive(Debug)]
pub(crate) struct AckWatch {
    changes: std::sync::Arc<tokio::sync::watch::Sender<Option<Published>>>,
}

impl AckWatch {
    /// How often the watch thread looks whether its `AckWatch` is gone, in ms.
    const ALIVE_CHECK: u16 = 500;

    /// Watches the acknowledgement published at `path`; `None` when inotify is not
    /// available (the caller polls).
    pub(crate) fn new(path: &Path) -> Option<AckWatch> {
        use nix::sys::inotify::AddWatchFlags;
        let changes = std::sync::Arc::new(tokio::sync::watch::Sender::new(read_published(path)));
        let weak = std::sync::Arc::downgrade(&changes);
        let file = path.to_owned();
        let flags = AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE;
        watch_file(path, flags, "tandem-ack-watch", move |hit| {
            let Some(sender) = weak.upgrade() else {
                return false;
            };
            if hit {
                sender.send_replace(read_published(&file));
            }
            true
        })?;
        Some(AckWatch { changes })
    }

    /// A receiver of every acknowledgement published from now on (`changed()` resolves
    /// at the first one after this call; the value is what [`read_published`] read
    /// then).
    pub(crate) fn subscribe(&self) -> tokio::sync::watch::Receiver<Option<Published>> {
        self.changes.subscribe()
    }
}

/// Tells the replication service that its database's write-ahead log (`<db>-wal`)
/// changed, that is, that a connection wrote a transaction (inotify `IN_MODIFY`), so
/// that it looks for new changes at once instead of polling the database every
/// millisecond. Only a hint, as [`AckWatch`]: the service keeps a slower poll for
/// writes the watch cannot see (another mount of the file, a full inotify queue).
#[derive(Debug)]
pub(crate) struct WalWatch {
    changed: std::sync::Arc<tokio::sync::Notify>,
}

impl WalWatch {
    /// How long the watch thread rests after a hint (below the service's
    /// `SHIP_COALESCE`, so that no hint it acts on comes later).
    const PAUSE: std::time::Duration = std::time::Duration::from_millis(1);

    /// Watches the write-ahead log of the database at `database`; `None` when inotify
    /// is not available.
    pub(crate) fn new(database: &Path) -> Option<WalWatch> {
        use nix::sys::inotify::AddWatchFlags;
        let mut wal = database.as_os_str().to_owned();
        wal.push("-wal");
        let changed = std::sync::Arc::new(tokio::sync::Notify::new());
        let weak = std::sync::Arc::downgrade(&changed);
        // IN_CREATE too: the log is made anew when the last connection deleted it.
        let flags = AddWatchFlags::IN_MODIFY | AddWatchFlags::IN_CREATE;
        watch_file(Path::new(&wal), flags, "tandem-wal-watch", move |hit| {
            let Some(changed) = weak.upgrade() else {
                return false;
            };
            if hit {
                changed.notify_one();
                // A commit writes the log several times (a frame per page): while this
                // thread sleeps, the kernel merges those events into one (identical
                // events queue once while unread), so the thread wakes about once per
                // pause rather than at every write. The service ships a moment after
                // the first hint anyway.
                drop(changed);
                std::thread::sleep(Self::PAUSE);
            }
            true
        })?;
        Some(WalWatch { changed })
    }

    /// Resolves at the first change since the last call returned (a change made while
    /// nobody waited is kept for the next call).
    pub(crate) async fn changed(&self) {
        self.changed.notified().await;
    }
}

/// Watches the directory of `path` for `flags` on `path`'s file (a watch of the
/// directory survives the file being replaced or deleted) on a thread of its own,
/// which calls `on_event(true)` after each read of events that name the file and
/// `on_event(false)` every [`AckWatch::ALIVE_CHECK`] ms without one, until `on_event`
/// returns false (its owner is gone). `None` when inotify or the thread is not
/// available.
fn watch_file(
    path: &Path,
    flags: nix::sys::inotify::AddWatchFlags,
    thread: &str,
    on_event: impl FnMut(bool) -> bool + Send + 'static,
) -> Option<()> {
    use nix::sys::inotify::{InitFlags, Inotify};
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty())?;
    let name = path.file_name()?.to_owned();
    let inotify = Inotify::init(InitFlags::IN_NONBLOCK | InitFlags::IN_CLOEXEC).ok()?;
    inotify.add_watch(dir, flags).ok()?;
    std::thread::Builder::new()
        .name(thread.into())
        .spawn(move || watch_thread(&inotify, &name, on_event))
        .ok()?;
    Some(())
}

/// Reads `inotify` for [`watch_file`] until `on_event` says to stop.
fn watch_thread(
    inotify: &nix::sys::inotify::Inotify,
    name: &std::ffi::OsStr,
    mut on_event: impl FnMut(bool) -> bool,
) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    loop {
        let mut fds = [PollFd::new(inotify.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(AckWatch::ALIVE_CHECK)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => {
                if !on_event(false) {
                    return;
                }
                continue;
            }
            Ok(_) => {}
            Err(_) => return,
        }
        let mut hit = false;
        // Drains what is queued (bounded: the queue is finite, but never spin).
        for _ in 0..64 {
            match inotify.read_events() {
                Ok(events) if !events.is_empty() => {
                    hit |= events.iter().any(|e| e.name.as_deref() == Some(name));
                }
                Ok(_) | Err(nix::errno::Errno::EAGAIN) => break,
                Err(_) => return,
            }
        }
        if hit && !on_event(true) {
            return;
        }
    }
}

/// The service's wake-up socket: a waiter that needs the service to act now (a commit
/// waits in `wait_replicated`) sends it an empty datagram, instead of waiting for the
/// service's next poll.
pub(crate) struct WakeSocket {
    socket: tokio::net::UnixDatagram,
}

impl WakeSocket {
    /// Binds the socket at `path`, replacing a stale one (the caller holds the service
    /// lock, so no other service owns it). `None` when it cannot be bound (a path too
    /// long for a socket address, say): the service polls only.
    pub(crate) fn bind(path: &Path) -> Option<WakeSocket> {
        let _ = fs::remove_file(path);
        tokio::net::UnixDatagram::bind(path)
            .ok()
            .map(|socket| WakeSocket { socket })
    }

    /// Waits for a wake-up and takes all that are queued.
    pub(crate) async fn woken(&self) {
        let mut buf = [0u8; 16];
        if self.socket.recv(&mut buf).await.is_err() {
            return std::future::pending().await;
        }
        while self.socket.try_recv(&mut buf).is_ok() {}
    }
}

/// Sends the service a wake-up on `socket` (unbound, non-blocking) to `path`. Errors are
/// ignored: without a service listening the waiter's own timer covers it.
pub(crate) fn wake(socket: &std::os::unix::net::UnixDatagram, path: &Path) {
    let _ = socket.send_to(&[], path);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_published_acknowledgement_wakes_its_watcher_and_a_datagram_the_service() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.acked");
        let watch = AckWatch::new(&path).expect("inotify");
        let mut changes = watch.subscribe();
        assert_eq!(*changes.borrow(), None);
        let writer = tokio::spawn({
            let path = path.clone();
            async move {
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                write_ack(&path, 1, 7, 7, 0).unwrap();
            }
        });
        // A limit only so that a missing event fails instead of hanging.
        tokio::time::timeout(std::time::Duration::from_secs(30), changes.changed())
            .await
            .expect("the watch saw the published acknowledgement")
            .expect("the watch is alive");
        writer.await.unwrap();
        assert_eq!(
            changes.borrow_and_update().map(|p| (p.log, p.applied)),
            Some((1, 7))
        );
        // Written in place now: the watch sees that too.
        write_ack(&path, 1, 8, 8, 0).unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(30), async {
            while changes.borrow_and_update().map(|p| (p.log, p.applied)) != Some((1, 8)) {
                changes.changed().await.expect("the watch is alive");
            }
        })
        .await
        .expect("the watch saw the acknowledgement written in place");

        let wake_path = dir.path().join("replication.wake");
        let socket = WakeSocket::bind(&wake_path).expect("bound");
        let sender = std::os::unix::net::UnixDatagram::unbound().unwrap();
        wake(&sender, &wake_path);
        wake(&sender, &wake_path);
        tokio::time::timeout(std::time::Duration::from_secs(30), socket.woken())
            .await
            .expect("woken");
    }

    #[test]
    fn the_lock_is_exclusive_and_probing_does_not_take_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.lock");
        assert!(!ServiceLock::held_by_other(&path));
        let lock = ServiceLock::acquire(&path).unwrap();
        assert!(ServiceLock::held_by_other(&path));
        let err = ServiceLock::acquire(&path).unwrap_err();
        assert!(
            err.to_string().contains("another replication service"),
            "{err}"
        );
        drop(lock);
        assert!(!ServiceLock::held_by_other(&path));
        let _again = ServiceLock::acquire(&path).unwrap();
    }

    #[test]
    fn acknowledged_positions_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.acked");
        assert_eq!(read_ack(&path), None);
        write_ack(&path, 0xfeed, 42, 45, 0).unwrap();
        assert_eq!(read_ack(&path), Some((0xfeed, 42)));
        let both = |log, applied, received| {
            Some(Published {
                log,
                applied,
                received,
                looked: 0,
            })
        };
        assert_eq!(read_published(&path), both(0xfeed, 42, 45));
        fs::write(&path, "garbage").unwrap();
        assert_eq!(read_ack(&path), None);
        // Written in place over whatever is there.
        write_ack(&path, 0xfeed, 43, 43, 0).unwrap();
        assert_eq!(read_published(&path), both(0xfeed, 43, 43));
        write_ack(&path, 0xbeef, 9, 3, 0).unwrap();
        assert_eq!(read_published(&path), both(0xbeef, 9, 9));
    }

    #[test]
    fn the_one_line_of_an_older_release_reads_as_received_where_applied() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.acked");
        fs::write(&path, ack_line(0xfeed, 42)).unwrap();
        let read = read_published(&path).unwrap();
        assert_eq!((read.log, read.applied, read.received), (0xfeed, 42, 42));
        // A second line of another changelog or torn counts for nothing.
        fs::write(&path, ack_line(0xfeed, 42) + &ack_line(0xbeef, 50)).unwrap();
        assert_eq!(read_published(&path).map(|p| p.received), Some(42));
        let torn = ack_line(0xfeed, 50);
        fs::write(&path, ack_line(0xfeed, 42) + &torn[..30]).unwrap();
        assert_eq!(read_published(&path).map(|p| p.received), Some(42));
    }

    #[test]
    fn a_first_line_torn_by_a_write_going_on_is_read_again() {
        let whole = ack_line(0xfeed, 42) + &ack_line(0xfeed, 45);
        let torn = whole[..20].to_owned();
        // Torn, then whole: the whole text, not "nothing published".
        let mut texts = vec![torn.clone(), torn.clone(), whole.clone()].into_iter();
        let read = read_published_with(|| texts.next());
        assert_eq!(read.map(|p| (p.applied, p.received)), Some((42, 45)));
        // Torn on every try: given up after the retries, read four times in all.
        let mut reads = 0;
        let read = read_published_with(|| {
            reads += 1;
            Some(torn.clone())
        });
        assert_eq!((read, reads), (None, 4));
        // An empty file (created, not yet written) and a missing one: no retry.
        let mut reads = 0;
        let read = read_published_with(|| {
            reads += 1;
            Some(String::new())
        });
        assert_eq!((read, reads), (None, 1));
        assert_eq!(read_published_with(|| None), None);
    }

    #[test]
    fn the_look_line_counts_only_whole_and_of_the_same_changelog() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.acked");
        let now = mono_ns();
        assert!(now > 0, "CLOCK_MONOTONIC reads");
        write_ack(&path, 0xfeed, 42, 45, now).unwrap();
        assert_eq!(read_published(&path).map(|p| p.looked), Some(now));
        // Written over in place: a publish without a look clears it.
        write_ack(&path, 0xfeed, 43, 45, 0).unwrap();
        assert_eq!(read_published(&path).map(|p| p.looked), Some(0));
        // An older release's two lines, another changelog's look, a torn look: none.
        fs::write(&path, ack_line(0xfeed, 42) + &ack_line(0xfeed, 42)).unwrap();
        assert_eq!(read_published(&path).map(|p| p.looked), Some(0));
        let lines = ack_line(0xfeed, 42) + &ack_line(0xfeed, 42);
        fs::write(&path, lines.clone() + &ack_line(0xbeef, now)).unwrap();
        assert_eq!(read_published(&path).map(|p| p.looked), Some(0));
        let torn = ack_line(0xfeed, now);
        fs::write(&path, lines + &torn[..40]).unwrap();
        assert_eq!(read_published(&path).map(|p| p.looked), Some(0));
        assert!(mono_ns() >= now, "the clock does not go back");
    }

    #[test]
    fn a_published_line_torn_between_two_writes_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("replication.acked");
        let (old, new) = (ack_line(7, 1_999), ack_line(7, 2_000));
        assert_eq!(old.len(), new.len());
        for cut in 1..old.len() - 1 {
            let torn = format!("{}{}", &new[..cut], &old[cut..]);
            fs::write(&path, &torn).unwrap();
            let read = read_ack(&path);
            assert!(
                read.is_none() || read == Some((7, 2_000)) || read == Some((7, 1_999)),
                "{torn:?} read as {read:?}"
            );
        }
        fs::write(&path, &new[..20]).unwrap();
        assert_eq!(read_ack(&path), None);
    }

    #[test]
    fn atomic_writes_replace_whole_files() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("f.jsonl");
        write_atomically(&path, b"one\n").unwrap();
        write_atomically(&path, b"two\n").unwrap();
        assert_eq!(fs::read_to_string(&path).unwrap(), "two\n");
        assert_eq!(fs::read_dir(path.parent().unwrap()).unwrap().count(), 1);
    }
}
