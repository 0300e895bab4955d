//! The [`Keeper`]: a task that owns a [`Witness`], keeps the lease while holding,
//! watches the leader key while not, and reports [`LeaseEvent`]s.
//!
//! Decisions live in the pure [`Tracker`] (what to report, when the holder must
//! step down); the task around it only does the IO and the timers. The step-down
//! deadline is the send time of the last keep-alive etcd acknowledged (or of the
//! lease grant) plus [`WitnessConfig::step_down_after`], on the monotonic clock;
//! when it passes, [`LeaseEvent::Lost`] is reported at once, before etcd's own
//! expiry can have happened. Reachability comes from a second task that asks every
//! member for its status each renewal interval.

use std::time::Duration;

use serde::Serialize;
use tandem_core::{NodeId, SiteId};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep_until};

use crate::client::{Acquire, MemberStatus};
use crate::{Holder, Token, Witness, WitnessConfig, WitnessError};

/// What the keeper reports.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum LeaseEvent {
    /// This node now holds the leader key (also the answer to an
    /// [`Keeper::acquire`] while already holding).
    Acquired {
        /// The fencing token.
        token: Token,
    },
    /// Another holder has the key (a change seen while not holding, or the answer
    /// to [`Keeper::acquire`]). After [`LeaseEvent::Lost`] this may name this
    /// node: its old key is still there until etcd expires the lease.
    HeldBy(Holder),
    /// The leader key does not exist.
    Free,
    /// This node no longer holds the key and must have stepped down now.
    Lost {
        /// Why.
        reason: String,
    },
    /// No member answers (or an acquisition failed: the answer to
    /// [`Keeper::acquire`]).
    Unreachable {
        /// Why.
        reason: String,
    },
    /// Some member answers again.
    Reachable,
}

/// The keeper's latest knowledge, for the status page.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseView {
    /// The token of the lease this node holds.
    pub holding: Option<Token>,
    /// The step-down deadline while holding.
    pub valid_until: Option<Instant>,
    /// The leader key's holder as last seen (this node while holding).
    pub holder: Option<Holder>,
    /// Whether some member answered the last status round.
    pub reachable: bool,
    /// How many members answered it.
    pub members_up: usize,
    /// How many members are configured.
    pub members: usize,
    /// The last error met.
    pub last_error: Option<String>,
}

impl Serialize for LeaseView {
    /// JSON form: the deadline as `valid_for_ms`, the milliseconds left now.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Json<'a> {
            holding: Option<Token>,
            valid_for_ms: Option<u64>,
            holder: Option<Holder>,
            reachable: bool,
            members_up: usize,
            members: usize,
            last_error: Option<&'a str>,
        }
        Json {
            holding: self.holding,
            valid_for_ms: self.valid_for_ms(),
            holder: self.holder,
            reachable: self.reachable,
            members_up: self.members_up,
            members: self.members,
            last_error: self.last_error.as_deref(),
        }
        .serialize(s)
    }
}

impl LeaseView {
    /// Milliseconds left now before the step-down deadline, while holding.
    pub fn valid_for_ms(&self) -> Option<u64> {
        let now = Instant::now();
        self.valid_until.map(|t| {
            u64::try_from(t.saturating_duration_since(now).as_millis()).unwrap_or(u64::MAX)
        })
    }
}

/// The keeper's decisions, without IO: fed with outcomes and times, it answers
/// with the events to report.
#[derive(Debug, Clone)]
pub struct Tracker {
    step_down_after: Duration,
    holding: Option<Token>,
    node: NodeId,
    deadline: Option<Instant>,
    /// The holder last reported; `None` before the first observation.
    reported: Option<Option<Holder>>,
    /// Reachability last reported; `None` before the first status round.
    reachable: Option<bool>,
    members_up: usize,
    members: usize,
    last_error: Option<String>,
}

impl Tracker {
    /// A tracker for node `node` with `config`'s timings.
    pub fn new(config: &WitnessConfig, node: NodeId) -> Tracker {
        Tracker {
            step_down_after: config.step_down_after(),
            holding: None,
            node,
            deadline: None,
            reported: None,
            reachable: None,
            members_up: 0,
            members: config.endpoints.len(),
            last_error: None,
        }
    }

    /// The step-down deadline, while holding.
    pub fn deadline(&self) -> Option<Instant> {
        self.deadline
    }

    /// The token held.
    pub fn holding(&self) -> Option<Token> {
        self.holding
    }

    /// The key was acquired with a lease granted (or kept alive) by a request sent
    /// at `sent_at`.
    pub fn acquired(&mut self, token: Token, sent_at: Instant) -> Vec<LeaseEvent> {
        self.holding = Some(token);
        self.deadline = Some(sent_at + self.step_down_after);
        self.reported = Some(Some(Holder {
            node: self.node,
            token,
        }));
        self.last_error = None;
        vec![LeaseEvent::Acquired { token }]
    }

    /// A keep-alive sent at `sent_at` was acknowledged: the deadline moves to
    /// `sent_at + step_down_after` (never back).
    pub fn renewed(&mut self, sent_at: Instant) {
        if self.holding.is_some() {
            let new = sent_at + self.step_down_after;
            self.deadline = Some(self.deadline.map_or(new, |d| d.max(new)));
            self.last_error = None;
        }
    }

    /// A request failed; nothing to report by itself.
    pub fn failed(&mut self, error: &WitnessError) {
        self.last_error = Some(error.to_string());
    }

    /// The deadline passed at `now` without a newer acknowledged keep-alive:
    /// [`LeaseEvent::Lost`]. Nothing when not holding or not yet due.
    pub fn expire(&mut self, now: Instant) -> Vec<LeaseEvent> {
        match self.deadline {
            Some(deadline) if self.holding.is_some() && now >= deadline => {
                let reason = format!(
                    "no keep-alive acknowledged by etcd was sent in the last {} ms{}",
                    self.step_down_after.as_millis(),
                    self.last_error
                        .as_ref()
                        .map(|e| format!(" (last error: {e})"))
                        .unwrap_or_default()
                );
                self.lost(reason)
            }
            _ => Vec::new(),
        }
    }

    /// The lease is gone (or given up): [`LeaseEvent::Lost`] when holding.
    pub fn lost(&mut self, reason: String) -> Vec<LeaseEvent> {
        if self.holding.take().is_none() {
            return Vec::new();
        }
        self.deadline = None;
        // Whatever etcd shows next is news.
        self.reported = None;
        vec![LeaseEvent::Lost { reason }]
    }

    /// The lease was released on purpose (revoked, or given up after a failed
    /// revoke): no event; the next observation reports the key.
    pub fn released(&mut self) {
        self.holding = None;
        self.deadline = None;
        self.reported = None;
    }

    /// The leader key was read: [`LeaseEvent::HeldBy`] or [`LeaseEvent::Free`] when
    /// that differs from what was last reported. Ignored while holding (the
    /// lease's keep-alives say more than a read).
    pub fn observed(&mut self, holder: Option<Holder>) -> Vec<LeaseEvent> {
        if self.holding.is_some() || self.reported == Some(holder) {
            return Vec::new();
        }
        self.reported = Some(holder);
        vec![match holder {
            Some(h) => LeaseEvent::HeldBy(h),
            None => LeaseEvent::Free,
        }]
    }

    /// An answer to an acquisition that found another holder: always reported.
    pub fn held_by(&mut self, holder: Holder) -> Vec<LeaseEvent> {
        self.reported = Some(Some(holder));
        vec![LeaseEvent::HeldBy(holder)]
    }

    /// A status round: `up` of the members answered. Reports
    /// [`LeaseEvent::Unreachable`] / [`LeaseEvent::Reachable`] on a change.
    pub fn members_answered(&mut self, statuses: &[MemberStatus]) -> Vec<LeaseEvent> {
        let up = statuses.iter().filter(|m| m.up).count();
        self.members_up = up;
        self.members = statuses.len();
        let reachable = up > 0;
        if self.reachable == Some(reachable) {
            return Vec::new();
        }
        self.reachable = Some(reachable);
        if reachable {
            vec![LeaseEvent::Reachable]
        } else {
            let reason = statuses
                .iter()
                .map(|m| {
                    format!(
                        "{}: {}",
                        m.endpoint,
                        m.error.as_deref().unwrap_or("no answer")
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            self.last_error = Some(reason.clone());
            vec![LeaseEvent::Unreachable { reason }]
        }
    }

    /// The view for the status page.
    pub fn view(&self) -> LeaseView {
        LeaseView {
            holding: self.holding,
            valid_until: self.deadline,
            holder: match self.holding {
                Some(token) => Some(Holder {
                    node: self.node,
                    token,
                }),
                None => self.reported.flatten(),
            },
            reachable: self.reachable.unwrap_or(false),
            members_up: self.members_up,
            members: self.members,
            last_error: self.last_error.clone(),
        }
    }
}

#[derive(Debug)]
enum Command {
    Acquire,
    /// Acquire and hand the answer back instead of reporting it.
    AcquireNow(tokio::sync::oneshot::Sender<Vec<LeaseEvent>>),
    Release,
}

/// A task that keeps this node's lease and reports what happens to it. Dropping
/// the keeper stops the task without revoking: the lease then expires in etcd, as
/// it would if the agent died (call [`Keeper::release`] to step down cleanly).
#[derive(Debug)]
pub struct Keeper {
    commands: mpsc::UnboundedSender<Command>,
    view: watch::Receiver<LeaseView>,
    tasks: Vec<JoinHandle<()>>,
}

impl Keeper {
    /// Connects ([`Witness::connect`]) and starts the keeper's tasks on the current
    /// tokio runtime. The receiver gets every [`LeaseEvent`]; the keeper starts
    /// not holding and reports the key's state and the members' reachability as
    /// soon as it has read them.
    pub async fn start(
        config: WitnessConfig,
        site: SiteId,
        node: NodeId,
    ) -> Result<(Keeper, mpsc::Receiver<LeaseEvent>), WitnessError> {
        let witness = Witness::connect(config, site, node).await?;
        let tracker = Tracker::new(witness.config(), node);
        let (view_tx, view) = watch::channel(tracker.view());
        let (events_tx, events) = mpsc::channel(64);
        let (commands, commands_rx) = mpsc::unbounded_channel();
        let (status_tx, status_rx) = watch::channel(Vec::new());
        let probe = witness.probe();
        let every = witness.config().renew_every();
        let prober = tokio::spawn(async move {
            loop {
                let started = Instant::now();
                let statuses = probe.members().await;
                if status_tx.send(statuses).is_err() {
                    return;
                }
                sleep_until(started + every).await;
            }
        });
        let task = Task {
            witness,
            tracker,
            events: events_tx,
            view: view_tx,
        };
        let runner = tokio::spawn(task.run(commands_rx, status_rx));
        Ok((
            Keeper {
                commands,
                view,
                tasks: vec![runner, prober],
            },
            events,
        ))
    }

    /// Asks the keeper to try to acquire the key now. It answers with
    /// [`LeaseEvent::Acquired`], [`LeaseEvent::HeldBy`] or
    /// [`LeaseEvent::Unreachable`].
    pub fn acquire(&self) {
        let _ = self.commands.send(Command::Acquire);
    }

    /// Tries to acquire the key now and returns the answer ([`LeaseEvent::Acquired`],
    /// [`LeaseEvent::HeldBy`] or [`LeaseEvent::Unreachable`]) instead of reporting
    /// it on the event channel: for a caller that decides on it at once (the node
    /// claiming the shared address). Bounded by the config's request timeouts.
    pub async fn acquire_now(&self) -> LeaseEvent {
        let (answer, answered) = tokio::sync::oneshot::channel();
        let gone = || LeaseEvent::Unreachable {
            reason: "the witness keeper stopped".into(),
        };
        if self.commands.send(Command::AcquireNow(answer)).is_err() {
            return gone();
        }
        let events = answered.await.unwrap_or_default();
        events
            .into_iter()
            .find(|e| {
                matches!(
                    e,
                    LeaseEvent::Acquired { .. }
                        | LeaseEvent::HeldBy(_)
                        | LeaseEvent::Unreachable { .. }
                )
            })
            .unwrap_or_else(gone)
    }

    /// Steps down: revokes the lease (which deletes the key) and stops renewing.
    pub fn release(&self) {
        let _ = self.commands.send(Command::Release);
    }

    /// The latest view.
    pub fn view(&self) -> LeaseView {
        self.view.borrow().clone()
    }
}

impl Drop for Keeper {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
    }
}

struct Task {
    witness: Witness,
    tracker: Tracker,
    events: mpsc::Sender<LeaseEvent>,
    view: watch::Sender<LeaseView>,
}

impl Task {
    async fn run(
        mut self,
        mut commands: mpsc::UnboundedReceiver<Command>,
        mut statuses: watch::Receiver<Vec<MemberStatus>>,
    ) {
        let every = self.witness.config().renew_every();
        // After a failed renewal, retry soon: the timing rule leaves room for it.
        let retry = (every / 10).min(Duration::from_millis(100));
        let mut next_tick = Instant::now();
        loop {
            let deadline = self.tracker.deadline();
            tokio::select! {
                biased;
                _ = sleep_until(deadline.unwrap_or(next_tick)), if deadline.is_some() => {
                    let events = self.tracker.expire(Instant::now());
                    self.after_lost(events).await;
                }
                command = commands.recv() => match command {
                    None => return,
                    Some(Command::Acquire) => {
                        let events = self.acquire().await;
                        self.emit(events).await;
                    }
                    Some(Command::AcquireNow(answer)) => {
                        let events = self.acquire().await;
                        for event in &events {
                            tracing::info!(?event, "witness");
                        }
                        // The view first: whoever gets the answer may read it.
                        self.view.send_replace(self.tracker.view());
                        let _ = answer.send(events);
                    }
                    Some(Command::Release) => self.release().await,
                },
                changed = statuses.changed() => {
                    if changed.is_err() {
                        return;
                    }
                    let answered = statuses.borrow_and_update().clone();
                    let events = self.tracker.members_answered(&answered);
                    self.emit(events).await;
                }
                _ = sleep_until(next_tick) => {
                    let ok = self.tick().await;
                    next_tick = Instant::now() + if ok { every } else { retry.max(Duration::from_millis(10)) };
                }
            }
            self.view.send_replace(self.tracker.view());
        }
    }

    /// One renewal (holding) or one read of the key (not holding). False when it
    /// failed and should be retried soon.
    async fn tick(&mut self) -> bool {
        if self.tracker.holding().is_none() {
            match self.witness.holder().await {
                Ok(holder) => {
                    let events = self.tracker.observed(holder.map(|(h, _)| h));
                    self.emit(events).await;
                }
                Err(e) => self.tracker.failed(&e),
            }
            return true;
        }
        let deadline = self.tracker.deadline().unwrap_or_else(Instant::now);
        let outcome = tokio::select! {
            biased;
            _ = sleep_until(deadline) => None,
            renewed = self.witness.renew() => Some(renewed),
        };
        match outcome {
            None => {
                let events = self.tracker.expire(Instant::now());
                self.after_lost(events).await;
                true
            }
            Some(Ok(renewed)) => {
                self.tracker.renewed(renewed.sent_at);
                true
            }
            Some(Err(WitnessError::LeaseGone)) => {
                let events = self.tracker.lost(WitnessError::LeaseGone.to_string());
                self.after_lost(events).await;
                true
            }
            Some(Err(e)) => {
                self.tracker.failed(&e);
                false
            }
        }
    }

    /// Reports `events` (a Lost) first, then lets go of the lease: a revoke frees
    /// the key sooner when etcd still answers.
    async fn after_lost(&mut self, events: Vec<LeaseEvent>) {
        if events.is_empty() {
            return;
        }
        self.emit(events).await;
        self.view.send_replace(self.tracker.view());
        if self.witness.release().await.is_err() {
            self.witness.forget();
        }
    }

    async fn acquire(&mut self) -> Vec<LeaseEvent> {
        if let Some(token) = self.tracker.holding() {
            return vec![LeaseEvent::Acquired { token }];
        }
        let sent_at = Instant::now();
        match self.witness.acquire().await {
            Ok(Acquire::Acquired { token, .. }) => self.tracker.acquired(token, sent_at),
            Ok(Acquire::HeldBy(holder)) => self.tracker.held_by(holder),
            Err(e) => {
                self.tracker.failed(&e);
                vec![LeaseEvent::Unreachable {
                    reason: e.to_string(),
                }]
            }
        }
    }

    async fn release(&mut self) {
        if let Err(e) = self.witness.release().await {
            // Stepped down all the same: the lease expires unrenewed.
            self.tracker.failed(&e);
            self.witness.forget();
        }
        self.tracker.released();
    }

    async fn emit(&self, events: Vec<LeaseEvent>) {
        for event in events {
            tracing::info!(?event, "witness");
            if self.events.send(event).await.is_err() {
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

    use super::*;

    fn tracker() -> Tracker {
        Tracker::new(
            &WitnessConfig::new(vec!["http://192.0.2.21:2379".into()]),
            NodeId::One,
        )
    }

    fn status(up: bool) -> MemberStatus {
        MemberStatus {
            endpoint: "http://192.0.2.21:2379".into(),
            up,
            version: None,
            leader: false,
            error: (!up).then(|| "refused".into()),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_deadline_runs_from_the_send_time_of_the_last_acknowledged_keep_alive() {
        let mut t = tracker();
        let t0 = Instant::now();
        assert_eq!(
            t.acquired(Token(5), t0),
            vec![LeaseEvent::Acquired { token: Token(5) }]
        );
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(2)));
        // An answer that took long still counts from its send time.
        t.renewed(t0 + Duration::from_secs(1));
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(3)));
        // A late answer to an older keep-alive never moves the deadline back.
        t.renewed(t0 + Duration::from_millis(500));
        assert_eq!(t.deadline(), Some(t0 + Duration::from_secs(3)));
        assert!(t.expire(t0 + Duration::from_millis(2999)).is_empty());
        let lost = t.expire(t0 + Duration::from_secs(3));
        assert!(
            matches!(lost.as_slice(), [LeaseEvent::Lost { .. }]),
            "{lost:?}"
        );
        assert_eq!(t.holding(), None);
        assert!(
            t.expire(t0 + Duration::from_secs(9)).is_empty(),
            "lost twice"
        );
    }

    #[test]
    fn changes_of_the_key_are_reported_once() {
        let mut t = tracker();
        let other = Holder {
            node: NodeId::Two,
            token: Token(9),
        };
        assert_eq!(t.observed(None), vec![LeaseEvent::Free]);
        assert!(t.observed(None).is_empty());
        assert_eq!(t.observed(Some(other)), vec![LeaseEvent::HeldBy(other)]);
        assert!(t.observed(Some(other)).is_empty());
        // The answer to an acquisition is always reported.
        assert_eq!(t.held_by(other), vec![LeaseEvent::HeldBy(other)]);
        assert_eq!(t.view().holder, Some(other));
    }

    #[test]
    fn reachability_is_reported_on_change() {
        let mut t = tracker();
        assert!(matches!(
            t.members_answered(&[status(false)]).as_slice(),
            [LeaseEvent::Unreachable { .. }]
        ));
        assert!(t.members_answered(&[status(false)]).is_empty());
        assert_eq!(
            t.members_answered(&[status(true), status(false)]),
            vec![LeaseEvent::Reachable]
        );
        let view = t.view();
        assert!(view.reachable);
        assert_eq!((view.members_up, view.members), (1, 2));
    }

    #[tokio::test(start_paused = true)]
    async fn a_release_ends_holding_without_an_event_and_the_view_serializes() {
        let mut t = tracker();
        t.acquired(Token(3), Instant::now());
        let json = serde_json::to_value(t.view()).unwrap();
        assert_eq!(json["holding"], 3);
        assert_eq!(json["valid_for_ms"], 2000);
        assert_eq!(json["holder"]["node"], 1);
        t.released();
        assert!(
            t.expire(Instant::now() + Duration::from_secs(60))
                .is_empty()
        );
        assert_eq!(t.observed(None), vec![LeaseEvent::Free]);
        let json = serde_json::to_value(t.view()).unwrap();
        assert!(json["valid_for_ms"].is_null());
    }
}
