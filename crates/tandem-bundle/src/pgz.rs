//! A gzip writer that compresses fixed-size chunks as separate gzip members on
//! worker threads. The result is a valid multi-member `.gz` (RFC 1952 allows
//! members back to back; GNU gzip and tar read it), a little larger than one
//! member because each chunk starts a fresh dictionary. Every member carries
//! the index header of format version 2 ([`crate::format::member_header`]), so
//! a reader can find the members without decoding them.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use flate2::write::DeflateEncoder;
use flate2::{Compression, Crc};

use crate::format::{MEMBER_DATA, MEMBER_HEADER_LEN, member_header};

/// Uncompressed bytes per gzip member.
const CHUNK: usize = MEMBER_DATA as usize;

type Job = (Vec<u8>, SyncSender<io::Result<Vec<u8>>>);

/// Compresses into gzip members, in parallel when `threads > 1`.
pub(crate) struct ParGzWriter<W: Write> {
    /// Always `Some` until [`ParGzWriter::finish`].
    out: Option<W>,
    level: Compression,
    buf: Vec<u8>,
    jobs: Option<SyncSender<Job>>,
    pending: VecDeque<Receiver<io::Result<Vec<u8>>>>,
    workers: Vec<JoinHandle<()>>,
    max_pending: usize,
}

impl<W: Write> ParGzWriter<W> {
    /// A writer at gzip `level` using `threads` compressing threads (1: inline).
    pub(crate) fn new(out: W, level: u32, threads: usize) -> Self {
        let level = Compression::new(level);
        let mut writer = ParGzWriter {
            out: Some(out),
            level,
            buf: Vec::with_capacity(CHUNK),
            jobs: None,
            pending: VecDeque::new(),
            workers: Vec::new(),
            max_pending: threads.saturating_mul(2),
        };
        if threads > 1 {
            let (tx, rx) = sync_channel::<Job>(threads);
            let rx = Arc::new(Mutex::new(rx));
            for _ in 0..threads {
                let rx = Arc::clone(&rx);
                writer
                    .workers
                    .push(std::thread::spawn(move || worker(&rx, level)));
            }
            writer.jobs = Some(tx);
        }
        writer
    }

    /// Compresses what is buffered and queues or writes it.
    fn submit(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK));
        match &self.jobs {
            None => {
                let member = compress(&chunk, self.level)?;
                self.out_mut()?.write_all(&member)
            }
            Some(jobs) => {
                let (tx, rx) = sync_channel(1);
                jobs.send((chunk, tx))
                    .map_err(|_| io::Error::other("gzip worker stopped"))?;
                self.pending.push_back(rx);
                while self.pending.len() > self.max_pending {
                    self.drain_one()?;
                }
                Ok(())
            }
        }
    }

    fn drain_one(&mut self) -> io::Result<()> {
        if let Some(rx) = self.pending.pop_front() {
            let member = rx
                .recv()
                .map_err(|_| io::Error::other("gzip worker stopped"))??;
            self.out_mut()?.write_all(&member)?;
        }
        Ok(())
    }

    fn out_mut(&mut self) -> io::Result<&mut W> {
        self.out
            .as_mut()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    /// Writes everything out and returns the inner writer.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        self.submit()?;
        while !self.pending.is_empty() {
            self.drain_one()?;
        }
        self.stop_workers();
        self.out_mut()?.flush()?;
        self.out
            .take()
            .ok_or_else(|| io::Error::other("gzip writer already finished"))
    }

    fn stop_workers(&mut self) {
        self.jobs = None;
        for worker in self.workers.drain(..) {
            // A worker only ends by its channel closing; a panic in it already
            // surfaced as a closed result channel.
            let _ = worker.join();
        }
    }
}

impl<W: Write> Drop for ParGzWriter<W> {
    fn drop(&mut self) {
        self.pending.clear();
        self.stop_workers();
    }
}

impl<W: Write> Write for ParGzWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = CHUNK - self.buf.len();
        let take = room.min(data.len());
        self.buf.extend_from_slice(data.get(..take).unwrap_or(data));
        if self.buf.len() >= CHUNK {
            self.submit()?;
        }
        Ok(take)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn worker(jobs: &Mutex<Receiver<Job>>, level: Compression) {
    loop {
        let job = match jobs.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        let Ok((chunk, reply)) = job else { return };
        let _ = reply.send(compress(&chunk, level));
    }
}

/// One member: index header, raw deflate, CRC32 and size (RFC 1952).
fn compress(chunk: &[u8], level: Compression) -> io::Result<Vec<u8>> {
    let data =
        u32::try_from(chunk.len()).map_err(|_| io::Error::other("gzip member over 4 GiB"))?;
    let mut out = Vec::with_capacity(chunk.len() / 2 + 64);
    out.extend_from_slice(&[0u8; MEMBER_HEADER_LEN]);
    let mut enc = DeflateEncoder::new(out, level);
    enc.write_all(chunk)?;
    let mut out = enc.finish()?;
    let mut crc = Crc::new();
    crc.update(chunk);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&data.to_le_bytes());
    let len = u32::try_from(out.len()).map_err(|_| io::Error::other("gzip member over 4 GiB"))?;
    for (slot, byte) in out.iter_mut().zip(member_header(len, data)) {
        *slot = byte;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn parallel_members_decode_to_the_input() {
        let data: Vec<u8> = (0..3 * CHUNK + 12345)
            .map(|i| (i % 251) as u8 ^ (i / 7) as u8)
            .collect();
        for threads in [1, 2, 3] {
            let mut w = ParGzWriter::new(Vec::new(), 6, threads);
            for piece in data.chunks(7777) {
                w.write_all(piece).unwrap();
            }
            let gz = w.finish().unwrap();
            let mut back = Vec::new();
            flate2::read::MultiGzDecoder::new(&gz[..])
                .read_to_end(&mut back)
                .unwrap();
            assert_eq!(back, data, "threads {threads}");
            // Every member states its length and data; they tile the output.
            let mut at = 0usize;
            let mut members = 0;
            while at < gz.len() {
                let (len, size) = crate::format::parse_member_header(&gz[at..]).unwrap();
                let mut one = Vec::new();
                flate2::read::GzDecoder::new(&gz[at..at + len as usize])
                    .read_to_end(&mut one)
                    .unwrap();
                assert_eq!(one.len(), size as usize);
                at += len as usize;
                members += 1;
            }
            assert_eq!((at, members), (gz.len(), 4));
        }
    }
}
