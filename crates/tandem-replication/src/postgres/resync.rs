//! A standby's resynchronisation from its primary (`pg_rewind` or `pg_basebackup`) as
//! it runs: the replication service records what it does and how far it got in
//! `<state dir>/postgres/resync.json`, so that `mp_replication status`, the status
//! page and the tools show it while the agent goes on answering.

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::observer::Observer;
use crate::util::{now_ms, write_atomically};

/// How far a resynchronisation from the peer got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[non_exhaustive]
pub struct ResyncProgress {
    /// What runs: the last step reported (for example "pg_rewind from the peer").
    pub step: String,
    /// kB copied so far, as the program reports it.
    pub done_kb: u64,
    /// kB to copy in all, when the program knows (0: not yet known).
    pub total_kb: u64,
    /// When it started, in ms since the Unix epoch.
    pub started_ms: u64,
    /// When this record was written, in ms since the Unix epoch.
    pub updated_ms: u64,
}

impl ResyncProgress {
    /// One line for the status text: `pg_basebackup from the peer: 120 of 1024 MB (11 %)`.
    pub fn render(&self) -> String {
        let mb = |kb: u64| kb / 1024;
        let copied = if self.total_kb > 0 {
            format!(
                ": {} of {} MB ({} %)",
                mb(self.done_kb),
                mb(self.total_kb),
                self.done_kb.saturating_mul(100) / self.total_kb
            )
        } else if self.done_kb > 0 {
            format!(": {} MB", mb(self.done_kb))
        } else {
            String::new()
        };
        format!("Resynchronising: {}{copied}\n", self.step)
    }
}

/// The progress file of a node.
pub(crate) fn path(log_dir: &Path) -> PathBuf {
    log_dir.join("resync.json")
}

/// The resynchronisation under way, if one is recorded.
pub(crate) fn read(log_dir: &Path) -> Option<ResyncProgress> {
    let text = std::fs::read_to_string(path(log_dir)).ok()?;
    serde_json::from_str(&text).ok()
}

/// Forgets the record (the resynchronisation ended, either way).
pub(crate) fn clear(log_dir: &Path) {
    let _ = std::fs::remove_file(path(log_dir));
}

/// An observer that writes each step and, at most a few times a second, the copy's
/// progress to the progress file.
pub(crate) struct Recorder {
    file: PathBuf,
    state: Mutex<(ResyncProgress, Instant)>,
}

impl Recorder {
    pub(crate) fn new(log_dir: &Path) -> Recorder {
        let now = now_ms();
        let recorder = Recorder {
            file: path(log_dir),
            state: Mutex::new((
                ResyncProgress {
                    step: "starting".to_owned(),
                    done_kb: 0,
                    total_kb: 0,
                    started_ms: now,
                    updated_ms: now,
                },
                Instant::now(),
            )),
        };
        if let Ok(state) = recorder.state.lock() {
            recorder.write(&state.0);
        }
        recorder
    }

    fn write(&self, progress: &ResyncProgress) {
        if let Ok(text) = serde_json::to_vec(progress)
            && let Err(e) = write_atomically(&self.file, &text)
        {
            tracing::debug!(error = %e, "cannot record the resynchronisation's progress");
        }
    }
}

impl Observer for Recorder {
    fn step(&self, text: &str) {
        tracing::info!(step = text, "resynchronising from the peer");
        if let Ok(mut state) = self.state.lock() {
            state.0.step = text.to_owned();
            state.0.updated_ms = now_ms();
            state.1 = Instant::now();
            self.write(&state.0);
        }
    }

    fn copied_kb(&self, done: u64, total: u64) {
        if let Ok(mut state) = self.state.lock() {
            state.0.done_kb = done;
            state.0.total_kb = total;
            if state.1.elapsed().as_millis() >= 250 || done >= total {
                state.0.updated_ms = now_ms();
                state.1 = Instant::now();
                self.write(&state.0);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_line_says_how_far_the_copy_got() {
        let mut p = ResyncProgress {
            step: "pg_basebackup from the peer".into(),
            done_kb: 0,
            total_kb: 0,
            started_ms: 0,
            updated_ms: 0,
        };
        assert_eq!(p.render(), "Resynchronising: pg_basebackup from the peer\n");
        p.done_kb = 120 * 1024;
        p.total_kb = 1024 * 1024;
        assert_eq!(
            p.render(),
            "Resynchronising: pg_basebackup from the peer: 120 of 1024 MB (11 %)\n"
        );
    }

    #[test]
    fn the_recorder_writes_what_status_reads() {
        let dir = tempfile::tempdir().unwrap();
        let recorder = Recorder::new(dir.path());
        recorder.step("pg_rewind from the peer");
        recorder.copied_kb(2048, 2048);
        let read = read(dir.path()).unwrap();
        assert_eq!(read.step, "pg_rewind from the peer");
        assert_eq!((read.done_kb, read.total_kb), (2048, 2048));
        clear(dir.path());
        assert!(super::read(dir.path()).is_none());
    }
}
