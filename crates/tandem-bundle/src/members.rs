//! Version 2 bundles: finding the gzip members from their index headers, and
//! inflating them on several threads while the reader takes them in order.
//!
//! The index headers are hostile input like everything else in a bundle. Before
//! anything is inflated, [`index`] checks that the members tile the body
//! exactly (each starts where the previous one ended, the last one ends at the
//! trailer), that every length is within [`MEMBER_MIN_LEN`]..=[`MEMBER_MAX_LEN`],
//! that every member but the last holds exactly [`MEMBER_DATA`] bytes, and that
//! the stated total and ratio are within the [`Limits`]. Then every member is
//! inflated from exactly its stated bytes, into at most its stated size: a
//! member that ends early or late, holds more or less than it says, or fails
//! its CRC is an error that names the member. Memory is bounded by constants:
//! [`AHEAD`] members in flight, each at most [`MEMBER_MAX_LEN`] +
//! [`MEMBER_DATA`] bytes, and the index grows only with members actually read.

use std::collections::BTreeMap;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;

use sha2::{Digest, Sha256};

use crate::error::{Error, LimitKind, Result};
use crate::format::{
    MEMBER_DATA, MEMBER_HEADER_LEN, MEMBER_MAX_LEN, MEMBER_MIN_LEN, parse_member_header,
};
use crate::spec::Limits;

/// Members inflated ahead of the reader (bounds memory to a few MiB).
const AHEAD: usize = 8;

/// Where members are read from, by offset (a file, or bytes in memory).
pub(crate) trait Source: Send + Sync {
    /// Fills `buf` from `offset`; fails when the source ends first.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
}

impl Source for std::fs::File {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        FileExt::read_exact_at(self, buf, offset)
    }
}

impl Source for Vec<u8> {
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let src = start
            .checked_add(buf.len())
            .and_then(|end| self.get(start..end))
            .ok_or_else(|| io::Error::new(io::ErrorKind::UnexpectedEof, "past the end"))?;
        buf.copy_from_slice(src);
        Ok(())
    }
}

/// One member as its index header states it (checked against the body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Member {
    /// Byte offset in the bundle.
    pub(crate) offset: u64,
    /// Whole length in bytes.
    pub(crate) len: u32,
    /// Uncompressed bytes.
    pub(crate) data: u32,
}

/// The members of a version 2 bundle body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Index {
    pub(crate) members: Vec<Member>,
    /// Uncompressed bytes in all.
    pub(crate) data: u64,
}

/// Reads the index headers of the first `body_len` bytes of `src`.
///
/// `Ok(None)` when the first member has no index header (a version 1 bundle,
/// or not a bundle at all: the serial reader says which).
pub(crate) fn index(src: &dyn Source, body_len: u64, limits: &Limits) -> Result<Option<Index>> {
    let mut members: Vec<Member> = Vec::new();
    let mut offset = 0u64;
    let mut data = 0u64;
    let mut head = [0u8; MEMBER_HEADER_LEN];
    while offset < body_len {
        let k = members.len();
        let bad = |why: String| Error::corrupt(format!("gzip member {k} at byte {offset}: {why}"));
        let left = body_len - offset;
        if left < MEMBER_HEADER_LEN as u64 {
            if k == 0 {
                return Ok(None);
            }
            return Err(bad(format!("only {left} bytes left, too few for a member")));
        }
        src.read_exact_at(&mut head, offset)
            .map_err(|e| Error::io("reading bundle", "<bundle>", e))?;
        let Some((len, size)) = parse_member_header(&head) else {
            if k == 0 {
                return Ok(None);
            }
            return Err(bad(
                "no index header (every member of a version 2 bundle has one)".into(),
            ));
        };
        if !(MEMBER_MIN_LEN..=MEMBER_MAX_LEN).contains(&len) {
            return Err(bad(format!(
                "states a length of {len} bytes (a member has {MEMBER_MIN_LEN} to {MEMBER_MAX_LEN})"
            )));
        }
        if u64::from(len) > left {
            return Err(bad(format!(
                "states a length of {len} bytes but only {left} are left before the trailer"
            )));
        }
        if size == 0 || size > MEMBER_DATA {
            return Err(bad(format!(
                "states {size} uncompressed bytes (a member holds 1 to {MEMBER_DATA})"
            )));
        }
        if let Some(previous) = members.last().copied()
            && previous.data != MEMBER_DATA
        {
            return Err(bad(format!(
                "follows a member of {} bytes; only the last member may hold fewer than {MEMBER_DATA}",
                previous.data
            )));
        }
        data += u64::from(size);
        offset += u64::from(len);
        if data > limits.max_total_bytes {
            return Err(Error::Limit {
                kind: LimitKind::TotalBytes,
                value: data,
                limit: limits.max_total_bytes,
                decompressed: 0,
            });
        }
        if data > limits.ratio_grace_bytes && data / offset > limits.max_ratio {
            return Err(Error::Limit {
                kind: LimitKind::Ratio,
                value: data / offset,
                limit: limits.max_ratio,
                decompressed: 0,
            });
        }
        members.push(Member {
            offset: offset - u64::from(len),
            len,
            data: size,
        });
    }
    if members.is_empty() {
        return Ok(None);
    }
    Ok(Some(Index { members, data }))
}

/// Inflates one member from exactly its stated bytes; returns the data and,
/// when asked, the compressed bytes (for the checksum).
fn inflate(src: &dyn Source, k: usize, m: Member, keep_raw: bool) -> io::Result<Inflated> {
    let bad =
        |why: String| io::Error::other(format!("gzip member {k} at byte {}: {why}", m.offset));
    // Both lengths were checked against constants by `index`.
    let mut raw = vec![0u8; m.len as usize];
    src.read_exact_at(&mut raw, m.offset)?;
    let mut decoder = flate2::bufread::GzDecoder::new(&raw[..]);
    let mut data = Vec::with_capacity(m.data as usize);
    (&mut decoder)
        .take(u64::from(m.data) + 1)
        .read_to_end(&mut data)
        .map_err(|e| bad(e.to_string()))?;
    if data.len() != m.data as usize {
        return Err(bad(format!(
            "inflates to {}{} bytes, its index header says {}",
            if data.len() > m.data as usize {
                "more than "
            } else {
                ""
            },
            data.len().min(m.data as usize),
            m.data
        )));
    }
    let rest = decoder.into_inner().len();
    if rest != 0 {
        return Err(bad(format!(
            "ends {rest} bytes before the length its index header states"
        )));
    }
    Ok(Inflated {
        data,
        raw: keep_raw.then_some(raw),
    })
}

struct Inflated {
    data: Vec<u8>,
    raw: Option<Vec<u8>>,
}

struct State {
    /// Members handed to a worker.
    claimed: usize,
    /// Members taken by the reader.
    taken: usize,
    ready: BTreeMap<usize, io::Result<Inflated>>,
    stop: bool,
}

struct Shared {
    src: Arc<dyn Source>,
    members: Vec<Member>,
    keep_raw: bool,
    state: Mutex<State>,
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // A worker never panics while holding the lock (it only moves values),
        // so a poisoned lock still holds a consistent state.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Reads the tar stream of a version 2 bundle, inflated on worker threads.
pub(crate) struct Parallel {
    shared: Arc<Shared>,
    workers: Vec<JoinHandle<()>>,
    /// The next member to take.
    next: usize,
    chunk: Vec<u8>,
    pos: usize,
    hasher: Option<Sha256>,
    /// Members whose compressed bytes are in `hasher`.
    hashed: usize,
    count: Arc<AtomicU64>,
}

impl Parallel {
    /// Starts `threads` workers inflating the members of `index` from `src`;
    /// with `hash`, the reader computes the sha256 of every compressed byte.
    pub(crate) fn spawn(src: Arc<dyn Source>, index: &Index, threads: usize, hash: bool) -> Self {
        let shared = Arc::new(Shared {
            src,
            members: index.members.clone(),
            keep_raw: hash,
            state: Mutex::new(State {
                claimed: 0,
                taken: 0,
                ready: BTreeMap::new(),
                stop: false,
            }),
            changed: Condvar::new(),
        });
        let workers = (0..threads.clamp(1, AHEAD))
            .map(|_| {
                let shared = Arc::clone(&shared);
                std::thread::spawn(move || work(&shared))
            })
            .collect();
        Parallel {
            shared,
            workers,
            next: 0,
            chunk: Vec::new(),
            pos: 0,
            hasher: hash.then(Sha256::new),
            hashed: 0,
            count: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Threads for inflating: one per core, at most [`AHEAD`].
    pub(crate) fn threads() -> usize {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
            .clamp(1, AHEAD)
    }

    /// Compressed bytes taken by the reader so far.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }

    /// The sha256 of the compressed body: of the members read, and of the
    /// members not read yet, read now without inflating (after an error, to
    /// tell a corrupt file from a bad bundle). `None` without hashing.
    pub(crate) fn digest(mut self) -> io::Result<Option<[u8; 32]>> {
        self.stop();
        let Some(mut hasher) = self.hasher.take() else {
            return Ok(None);
        };
        let mut raw = Vec::new();
        for m in self.shared.members.iter().skip(self.hashed) {
            raw.resize(m.len as usize, 0);
            self.shared.src.read_exact_at(&mut raw, m.offset)?;
            hasher.update(&raw);
        }
        Ok(Some(hasher.finalize().into()))
    }

    fn stop(&mut self) {
        {
            let mut state = self.shared.lock();
            state.stop = true;
            state.ready.clear();
        }
        self.shared.changed.notify_all();
        for worker in self.workers.drain(..) {
            // A worker only ends by running out of members or by `stop`.
            let _ = worker.join();
        }
    }

    /// Waits for the next member in order.
    fn take(&mut self) -> io::Result<Inflated> {
        let k = self.next;
        let mut state = self.shared.lock();
        loop {
            if let Some(result) = state.ready.remove(&k) {
                state.taken = k + 1;
                drop(state);
                self.shared.changed.notify_all();
                return result;
            }
            if self.workers.iter().all(JoinHandle::is_finished) {
                return Err(io::Error::other("the inflating threads stopped"));
            }
            state = self
                .shared
                .changed
                .wait_timeout(state, std::time::Duration::from_millis(100))
                .map(|(state, _)| state)
                .unwrap_or_else(|p| p.into_inner().0);
        }
    }
}

fn work(shared: &Shared) {
    loop {
        let k = {
            let mut state = shared.lock();
            loop {
                if state.stop || state.claimed >= shared.members.len() {
                    return;
                }
                if state.claimed < state.taken + AHEAD {
                    break;
                }
                state = shared
                    .changed
                    .wait(state)
                    .unwrap_or_else(|p| p.into_inner());
            }
            state.claimed += 1;
            state.claimed - 1
        };
        let result = match shared.members.get(k) {
            Some(m) => inflate(&*shared.src, k, *m, shared.keep_raw),
            None => Err(io::Error::other("member index out of range")),
        };
        shared.lock().ready.insert(k, result);
        shared.changed.notify_all();
    }
}

impl Read for Parallel {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.chunk.len() {
            let Some(member) = self.shared.members.get(self.next).copied() else {
                return Ok(0);
            };
            let inflated = self.take()?;
            self.next += 1;
            if let (Some(hasher), Some(raw)) = (&mut self.hasher, &inflated.raw) {
                hasher.update(raw);
                self.hashed = self.next;
            }
            self.count
                .fetch_add(u64::from(member.len), Ordering::Relaxed);
            self.chunk = inflated.data;
            self.pos = 0;
        }
        Ok(crate::inflate::copy_out(&self.chunk, &mut self.pos, buf))
    }
}

impl Drop for Parallel {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn body(data: &[u8]) -> Vec<u8> {
        let mut w = crate::pgz::ParGzWriter::new(Vec::new(), 6, 2);
        w.write_all(data).unwrap();
        w.finish().unwrap()
    }

    #[test]
    fn members_inflate_in_order_on_several_threads() {
        let data: Vec<u8> = (0..5 * MEMBER_DATA as usize + 777)
            .map(|i| (i % 253) as u8 ^ (i >> 11) as u8)
            .collect();
        let gz = body(&data);
        let index = index(&gz, gz.len() as u64, &Limits::default())
            .unwrap()
            .unwrap();
        assert_eq!(index.members.len(), 6);
        assert_eq!(index.data, data.len() as u64);
        for threads in [1, 2, 3] {
            let mut reader = Parallel::spawn(Arc::new(gz.clone()), &index, threads, true);
            let mut back = Vec::new();
            reader.read_to_end(&mut back).unwrap();
            assert_eq!(back, data);
            let digest: [u8; 32] = Sha256::digest(&gz).into();
            assert_eq!(reader.digest().unwrap(), Some(digest));
        }
    }

    #[test]
    fn an_unread_rest_still_counts_for_the_digest() {
        let data = vec![7u8; 3 * MEMBER_DATA as usize];
        let gz = body(&data);
        let index = index(&gz, gz.len() as u64, &Limits::default())
            .unwrap()
            .unwrap();
        let mut reader = Parallel::spawn(Arc::new(gz.clone()), &index, 2, true);
        let mut some = vec![0u8; 1000];
        reader.read_exact(&mut some).unwrap();
        let digest: [u8; 32] = Sha256::digest(&gz).into();
        assert_eq!(reader.digest().unwrap(), Some(digest));
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 64, ..Default::default() })]

        /// Whatever bytes of index headers are changed, `index` never panics,
        /// and an index it accepts tiles the body by the rules.
        #[test]
        fn any_index_it_accepts_tiles_the_body(
            edits in proptest::collection::vec((0usize..4, 0usize..MEMBER_HEADER_LEN, proptest::prelude::any::<u8>()), 0..6),
            cut in 0usize..64,
        ) {
            static BODY: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
            let mut gz = BODY
                .get_or_init(|| {
                    let data: Vec<u8> = (0..3 * MEMBER_DATA as usize + 999)
                        .map(|i| (i * 7 % 256) as u8)
                        .collect();
                    body(&data)
                })
                .clone();
            let starts: Vec<usize> = index(&gz, gz.len() as u64, &Limits::default()).unwrap().unwrap()
                .members.iter().map(|m| m.offset as usize).collect();
            for (member, at, byte) in edits {
                if let Some(start) = starts.get(member) {
                    gz[start + at] = byte;
                }
            }
            let len = gz.len().saturating_sub(cut);
            if let Ok(Some(found)) = index(&gz, len as u64, &Limits::default()) {
                let mut at = 0u64;
                for (k, m) in found.members.iter().enumerate() {
                    proptest::prop_assert_eq!(m.offset, at);
                    proptest::prop_assert!((MEMBER_MIN_LEN..=MEMBER_MAX_LEN).contains(&m.len));
                    proptest::prop_assert!(m.data == MEMBER_DATA || k + 1 == found.members.len());
                    at += u64::from(m.len);
                }
                proptest::prop_assert_eq!(at, len as u64);
                // Inflating what it accepted fails cleanly or gives the data.
                let mut reader = Parallel::spawn(Arc::new(gz.clone()), &found, 2, false);
                let mut back = Vec::new();
                if reader.read_to_end(&mut back).is_ok() {
                    proptest::prop_assert_eq!(back.len() as u64, found.data);
                }
            }
        }
    }

    #[test]
    fn a_plain_gzip_has_no_index() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"hello").unwrap();
        let gz = enc.finish().unwrap();
        assert_eq!(
            index(&gz, gz.len() as u64, &Limits::default()).unwrap(),
            None
        );
        assert_eq!(index(&gz, 3, &Limits::default()).unwrap(), None);
    }
}
