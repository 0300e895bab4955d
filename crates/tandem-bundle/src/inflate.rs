//! Decompression sources for the streaming reader: inline, on a thread of its
//! own so inflating overlaps with checking and writing (version 1 bundles), or
//! member by member on several threads ([`crate::members`], version 2).

use std::io::{self, BufReader, Read};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, sync_channel};
use std::thread::JoinHandle;

use flate2::read::MultiGzDecoder;
use sha2::{Digest, Sha256};

/// Bytes per chunk handed from the inflating thread.
const CHUNK: usize = 256 * 1024;
/// Chunks the inflating thread may run ahead: bounds memory, and how far past
/// a limit a bomb gets before the reader stops it.
const AHEAD: usize = 8;

/// Counts compressed bytes as the decoder pulls them.
struct Counting<R> {
    inner: R,
    count: Arc<AtomicU64>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }
}

/// Hashes what passes through, when asked to.
struct Hashing<R> {
    inner: R,
    hasher: Option<Sha256>,
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(hasher) = &mut self.hasher {
            hasher.update(buf.get(..n).unwrap_or_default());
        }
        Ok(n)
    }
}

/// Decompresses `body` in the calling thread; the counter tells how many
/// compressed bytes were consumed.
pub(crate) fn inline<R: Read>(body: R) -> (impl Read, Arc<AtomicU64>) {
    let count = Arc::new(AtomicU64::new(0));
    let counted = Counting {
        inner: body,
        count: Arc::clone(&count),
    };
    (
        MultiGzDecoder::new(BufReader::with_capacity(CHUNK, counted)),
        count,
    )
}

/// Decompresses on a thread of its own and hands chunks over a bounded channel.
pub(crate) struct Threaded {
    rx: Option<Receiver<io::Result<Vec<u8>>>>,
    chunk: Vec<u8>,
    pos: usize,
    count: Arc<AtomicU64>,
    handle: Option<JoinHandle<io::Result<Option<[u8; 32]>>>>,
}

impl Threaded {
    /// Starts inflating `body`; with `hash`, the sha256 of every compressed
    /// byte of `body` is computed too (see [`Threaded::finish`]).
    pub(crate) fn spawn<R: Read + Send + 'static>(body: R, hash: bool) -> Self {
        let count = Arc::new(AtomicU64::new(0));
        let (tx, rx) = sync_channel::<io::Result<Vec<u8>>>(AHEAD);
        let counter = Arc::clone(&count);
        let handle = std::thread::spawn(move || {
            let hashing = Hashing {
                inner: body,
                hasher: hash.then(Sha256::new),
            };
            let counted = Counting {
                inner: hashing,
                count: counter,
            };
            let mut decoder = MultiGzDecoder::new(BufReader::with_capacity(CHUNK, counted));
            loop {
                let mut chunk = vec![0u8; CHUNK];
                match read_full(&mut decoder, &mut chunk) {
                    Ok(0) => break,
                    Ok(n) => {
                        chunk.truncate(n);
                        if tx.send(Ok(chunk)).is_err() {
                            return Ok(None); // the reader stopped early
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(io::Error::new(e.kind(), e.to_string())));
                        return Err(e);
                    }
                }
            }
            drop(tx);
            // Whatever the decoder left unread still counts for the checksum.
            let mut hashing = decoder.into_inner().into_inner().inner;
            let mut rest = vec![0u8; CHUNK];
            while hashing.read(&mut rest)? > 0 {}
            Ok(hashing.hasher.map(|h| h.finalize().into()))
        });
        Threaded {
            rx: Some(rx),
            chunk: Vec::new(),
            pos: 0,
            count,
            handle: Some(handle),
        }
    }

    /// Compressed bytes consumed so far.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        Arc::clone(&self.count)
    }

    /// Waits for the thread; the sha256 of the compressed bytes when asked for.
    pub(crate) fn finish(mut self) -> io::Result<Option<[u8; 32]>> {
        self.rx = None;
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(result)) => result,
            Some(Err(_)) => Err(io::Error::other("the inflating thread panicked")),
            None => Ok(None),
        }
    }
}

/// Copies what is left of `chunk` from `*pos` into `buf`, as much as fits, and
/// moves `*pos` past it: how a reader hands out a block it decoded whole.
pub(crate) fn copy_out(chunk: &[u8], pos: &mut usize, buf: &mut [u8]) -> usize {
    let rest = chunk.get(*pos..).unwrap_or_default();
    let n = rest.len().min(buf.len());
    if let (Some(dst), Some(src)) = (buf.get_mut(..n), rest.get(..n)) {
        dst.copy_from_slice(src);
    }
    *pos += n;
    n
}

impl Read for Threaded {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.pos >= self.chunk.len() {
            let Some(rx) = &self.rx else { return Ok(0) };
            match rx.recv() {
                Ok(Ok(chunk)) => {
                    self.chunk = chunk;
                    self.pos = 0;
                }
                Ok(Err(e)) => return Err(e),
                Err(_) => return Ok(0),
            }
        }
        Ok(copy_out(&self.chunk, &mut self.pos, buf))
    }
}

impl Drop for Threaded {
    fn drop(&mut self) {
        // Closing the channel makes a blocked sender give up; then join.
        self.rx = None;
        if let Some(handle) = self.handle.take() {
            let _ = handle.join();
        }
    }
}

/// The tar stream of a bundle file, inflated serially (version 1) or by
/// members in parallel (version 2).
pub(crate) enum Body {
    /// One thread, `MultiGzDecoder`.
    Serial(Threaded),
    /// Members on several threads.
    Parallel(crate::members::Parallel),
}

impl Body {
    /// Starts inflating the first `body_len` bytes of `file`; with `hash`,
    /// [`Body::finish`] returns the sha256 of those bytes.
    pub(crate) fn open(
        file: &std::fs::File,
        body_len: u64,
        index: Option<&crate::members::Index>,
        hash: bool,
    ) -> io::Result<Body> {
        use std::io::Seek;
        let mut clone = file.try_clone()?;
        Ok(match index {
            Some(index) => Body::Parallel(crate::members::Parallel::spawn(
                Arc::new(clone),
                index,
                crate::members::Parallel::threads(),
                hash,
            )),
            None => {
                clone.rewind()?;
                Body::Serial(Threaded::spawn(clone.take(body_len), hash))
            }
        })
    }

    /// Compressed bytes consumed so far.
    pub(crate) fn counter(&self) -> Arc<AtomicU64> {
        match self {
            Body::Serial(t) => t.counter(),
            Body::Parallel(p) => p.counter(),
        }
    }

    /// Ends the reading; the sha256 of the whole body when asked for (the
    /// part not read yet is read for it).
    pub(crate) fn finish(self) -> io::Result<Option<[u8; 32]>> {
        match self {
            Body::Serial(t) => t.finish(),
            Body::Parallel(p) => p.digest(),
        }
    }
}

impl Read for Body {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Serial(t) => t.read(buf),
            Body::Parallel(p) => p.read(buf),
        }
    }
}

/// Fills `buf` as far as the reader goes; 0 only at the end.
fn read_full(reader: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        let Some(slot) = buf.get_mut(filled..) else {
            break;
        };
        match reader.read(slot) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}
