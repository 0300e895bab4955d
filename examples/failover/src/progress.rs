//! A progress bar on standard error when it is a terminal, nothing otherwise.

use std::io::IsTerminal;

use indicatif::{ProgressBar, ProgressStyle};
use tandem_bundle::{Phase, Progress};

/// Shows [`Progress`] reports as a bar, one per phase.
pub(crate) struct Bar {
    bar: Option<ProgressBar>,
    phase: Option<Phase>,
}

impl Bar {
    /// A bar if standard error is a terminal.
    pub(crate) fn new() -> Self {
        Bar {
            bar: std::io::stderr().is_terminal().then(ProgressBar::hidden),
            phase: None,
        }
    }

    /// Takes one report.
    pub(crate) fn update(&mut self, progress: Progress) {
        let Some(bar) = &mut self.bar else { return };
        if self.phase != Some(progress.phase) {
            bar.finish_and_clear();
            *bar = ProgressBar::new(progress.total);
            let bytes = !matches!(progress.phase, Phase::Swap);
            let template = if bytes {
                "{msg:>9} [{bar:40}] {bytes}/{total_bytes} {bytes_per_sec}"
            } else {
                "{msg:>9} [{bar:40}] {pos}/{len}"
            };
            if let Ok(style) = ProgressStyle::with_template(template) {
                bar.set_style(style.progress_chars("=> "));
            }
            bar.set_message(match progress.phase {
                Phase::Bundle => "bundling",
                Phase::Check => "checksum",
                Phase::Verify => "verifying",
                Phase::Stage => "staging",
                Phase::Swap => "swapping",
                _ => "working",
            });
            self.phase = Some(progress.phase);
        }
        bar.set_length(progress.total);
        bar.set_position(progress.done);
    }

    /// Removes the bar.
    pub(crate) fn finish(self) {
        if let Some(bar) = self.bar {
            bar.finish_and_clear();
        }
    }
}
