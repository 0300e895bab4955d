//! A trial's result, its verdict, the per-scenario table and the results as JSON.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::json;

use super::Timing;
use super::scenario::Scenario;

/// One trial's result.
pub(super) struct Outcome {
    pub(super) trial: u32,
    pub(super) scenario: Scenario,
    pub(super) trial_seed: u64,
    /// What the scenario drew (timings, victims).
    pub(super) drawn: Vec<String>,
    /// The longest time both nodes held the shared address while both were on
    /// the wire (a cut node's address reaches nobody).
    pub(super) overlap: Duration,
    /// Both holding during a partition with automatic failover (`partition-auto`).
    pub(super) split_brain: Duration,
    pub(super) acked: usize,
    pub(super) lost: Vec<u64>,
    pub(super) damaged: Vec<String>,
    pub(super) roles: String,
    pub(super) unstated: Vec<String>,
    pub(super) notes: Vec<String>,
    pub(super) error: Option<String>,
    pub(super) took: Duration,
}

impl Outcome {
    /// A trial's result before it ran: nothing seen yet.
    pub(super) fn new(trial: u32, scenario: Scenario, trial_seed: u64) -> Outcome {
        Outcome {
            trial,
            scenario,
            trial_seed,
            drawn: Vec::new(),
            overlap: Duration::ZERO,
            split_brain: Duration::ZERO,
            acked: 0,
            lost: Vec::new(),
            damaged: Vec::new(),
            roles: "?".into(),
            unstated: Vec::new(),
            notes: Vec::new(),
            error: None,
            took: Duration::ZERO,
        }
    }

    /// Whether the trial passed: no error, no lost write, no damaged file, both
    /// nodes in a stated role, and two holders for no longer than `bound`.
    pub(super) fn passed(&self, bound: Duration) -> bool {
        // With a witness (bound zero) two holders are not tolerated even inside a
        // partition.
        let split_ok = !bound.is_zero() || self.split_brain.is_zero();
        self.error.is_none()
            && split_ok
            && self.overlap <= bound
            && self.lost.is_empty()
            && self.damaged.is_empty()
            && self.unstated.is_empty()
    }
}

/// Prints a trial's line and what went wrong in it.
pub(super) fn print_outcome(o: &Outcome, trials: u32, bound: Duration) {
    let verdict = if o.passed(bound) { "ok" } else { "FAILED" };
    println!(
        "trial {:>3}/{trials} {:<19} {verdict:<6} overlap {:>4} ms  acked {:>4} lost {}  files {}  roles {}  ({:.1} s, trial seed {})",
        o.trial,
        o.scenario.name(),
        o.overlap.as_millis(),
        o.acked,
        o.lost.len(),
        if o.damaged.is_empty() {
            "ok"
        } else {
            "DAMAGED"
        },
        o.roles,
        o.took.as_secs_f64(),
        o.trial_seed,
    );
    println!("    drawn: {}", o.drawn.join(", "));
    for note in &o.notes {
        println!("    note: {note}");
    }
    if o.split_brain > Duration::ZERO {
        println!(
            "    split brain during the partition: both held the address for {} ms",
            o.split_brain.as_millis()
        );
    }
    if let Some(e) = &o.error {
        println!("    error: {e}");
    }
    if !o.lost.is_empty() {
        println!("    lost acknowledged transactions: {:?}", o.lost);
    }
    for d in &o.damaged {
        println!("    damaged: {d}");
    }
    for u in &o.unstated {
        println!("    not in a stated role: {u}");
    }
    if o.overlap > bound {
        println!(
            "    two holders for {} ms, over the {} ms tolerated",
            o.overlap.as_millis(),
            bound.as_millis()
        );
    }
    println!("verdict: {} {verdict}", o.scenario.name());
}

/// Prints the per-scenario table; whether every trial passed.
pub(super) fn summarize(outcomes: &[Outcome], timing: Timing, seed: u64, took: Duration) -> bool {
    let bound = timing.bound();
    println!("\n== Results (seed {seed}, {:.0} s)", took.as_secs_f64());
    println!(
        "| scenario | trials | passed | max overlap (ms) | acked writes | lost | damaged files | not in a stated role |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let scenarios: BTreeSet<Scenario> = outcomes.iter().map(|o| o.scenario).collect();
    let mut all = true;
    for s in scenarios {
        let of: Vec<&Outcome> = outcomes.iter().filter(|o| o.scenario == s).collect();
        let passed = of.iter().filter(|o| o.passed(bound)).count();
        all &= passed == of.len();
        println!(
            "| {} | {} | {} | {} | {} | {} | {} | {} |",
            s.name(),
            of.len(),
            passed,
            of.iter()
                .map(|o| o.overlap)
                .max()
                .unwrap_or_default()
                .as_millis(),
            of.iter().map(|o| o.acked).sum::<usize>(),
            of.iter().map(|o| o.lost.len()).sum::<usize>(),
            of.iter().map(|o| o.damaged.len()).sum::<usize>(),
            of.iter().filter(|o| !o.unstated.is_empty()).count(),
        );
    }
    let passed = outcomes.iter().filter(|o| o.passed(bound)).count();
    println!(
        "  {} passed, {} failed",
        passed,
        outcomes.len().saturating_sub(passed)
    );
    all
}

/// The run's results as JSON (`target/chaos/chaos-<seed>.json`).
pub(super) fn results_json(outcomes: &[Outcome], timing: Timing, seed: u64) -> serde_json::Value {
    let bound = timing.bound();
    json!({
        "seed": seed,
        "heartbeat_ms": timing.heartbeat_ms,
        "conflict_backoff_ms": timing.conflict_backoff_ms,
        "conflict_detection_ms": bound.as_millis() as u64,
        "witness": timing.witness,
        "trials": outcomes.iter().map(|o| json!({
            "trial": o.trial,
            "scenario": o.scenario.name(),
            "trial_seed": o.trial_seed,
            "passed": o.passed(bound),
            "drawn": o.drawn,
            "overlap_ms": o.overlap.as_millis() as u64,
            "split_brain_ms": o.split_brain.as_millis() as u64,
            "acked": o.acked,
            "lost": o.lost,
            "damaged": o.damaged,
            "roles": o.roles,
            "unstated": o.unstated,
            "notes": o.notes,
            "error": o.error,
            "seconds": o.took.as_secs_f64(),
        })).collect::<Vec<_>>(),
    })
}
