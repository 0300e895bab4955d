//! How long operations report what they do: steps (shown with `-v`) and progress (a
//! progress bar on a terminal).

/// Receives the steps and progress of an operation. Both methods do nothing by default.
pub trait Observer: Sync {
    /// A step of the operation, one line of text.
    fn step(&self, text: &str) {
        let _ = text;
    }

    /// Progress of a long step (rows copied of a from-sync).
    fn progress(&self, done: u64, total: u64) {
        let _ = (done, total);
    }

    /// Progress of a copy counted in kB (PostgreSQL's `pg_basebackup` and `pg_rewind`);
    /// by default reported as [`progress`](Self::progress).
    fn copied_kb(&self, done: u64, total: u64) {
        self.progress(done, total);
    }
}

/// An observer that ignores everything.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {}
