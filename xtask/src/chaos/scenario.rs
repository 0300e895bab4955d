//! The faults the chaos harness injects, and the seeded generator that draws
//! their order and timing.

use std::time::Duration;

/// A fault to inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, clap::ValueEnum)]
pub(super) enum Scenario {
    KillActive,
    KillStandby,
    KillDuringSwitch,
    CutActive,
    CutTakeover,
    Partition,
    PartitionAuto,
    BothBoot,
    RestartFromSync,
    RestartRestore,
    StandbyDiskFull,
    /// The active node cut from the witness only (needs `--witness`).
    WitnessCutActive,
    /// The standby cut from the witness only (needs `--witness`).
    WitnessCutStandby,
    /// One etcd member killed and restarted (needs `--witness`).
    WitnessMemberKill,
    /// The whole etcd cluster down, then back (needs `--witness`).
    WitnessDown,
    /// The nodes partitioned while the whole etcd cluster restarts (needs `--witness`).
    WitnessRestartPartitioned,
    /// `kill -9` of PostgreSQL's postmaster or of one of its backends on either
    /// node, the postmaster restarted later as its service manager would (needs
    /// `--backend postgres`).
    KillPostgres,
    /// The standby reinstalled with a new, empty PostgreSQL cluster and `init`
    /// run again: its agent's boot leaves the copy of the primary's cluster to the
    /// replication service, and the status page, `failover status` and the peer
    /// link are timed while it copies (needs `--backend postgres`).
    StandbyReinstalled,
}

impl Scenario {
    pub(super) const DEFAULT_MIX: [Scenario; 10] = [
        Scenario::KillActive,
        Scenario::KillStandby,
        Scenario::KillDuringSwitch,
        Scenario::CutActive,
        Scenario::CutTakeover,
        Scenario::Partition,
        Scenario::BothBoot,
        Scenario::RestartFromSync,
        Scenario::RestartRestore,
        Scenario::StandbyDiskFull,
    ];

    /// The mix of `--witness` runs: the faults a witness is for, and the kill of
    /// the active's agent that once lost a write without it.
    pub(super) const WITNESS_MIX: [Scenario; 7] = [
        Scenario::PartitionAuto,
        Scenario::WitnessCutActive,
        Scenario::WitnessCutStandby,
        Scenario::WitnessMemberKill,
        Scenario::WitnessDown,
        Scenario::WitnessRestartPartitioned,
        Scenario::KillActive,
    ];

    /// Whether the scenario needs the witness.
    pub(super) fn needs_witness(self) -> bool {
        matches!(
            self,
            Scenario::WitnessCutActive
                | Scenario::WitnessCutStandby
                | Scenario::WitnessMemberKill
                | Scenario::WitnessDown
                | Scenario::WitnessRestartPartitioned
        )
    }

    /// Whether the scenario needs the PostgreSQL site.
    pub(super) fn needs_postgres(self) -> bool {
        matches!(self, Scenario::KillPostgres | Scenario::StandbyReinstalled)
    }

    pub(super) fn name(self) -> &'static str {
        match self {
            Scenario::KillActive => "kill-active",
            Scenario::KillStandby => "kill-standby",
            Scenario::KillDuringSwitch => "kill-during-switch",
            Scenario::CutActive => "cut-active",
            Scenario::CutTakeover => "cut-takeover",
            Scenario::Partition => "partition",
            Scenario::PartitionAuto => "partition-auto",
            Scenario::BothBoot => "both-boot",
            Scenario::RestartFromSync => "restart-from-sync",
            Scenario::RestartRestore => "restart-restore",
            Scenario::StandbyDiskFull => "standby-disk-full",
            Scenario::WitnessCutActive => "witness-cut-active",
            Scenario::WitnessCutStandby => "witness-cut-standby",
            Scenario::WitnessMemberKill => "witness-member-kill",
            Scenario::WitnessDown => "witness-down",
            Scenario::WitnessRestartPartitioned => "witness-restart-partitioned",
            Scenario::KillPostgres => "kill-postgres",
            Scenario::StandbyReinstalled => "standby-reinstalled",
        }
    }

    /// Whether the agents run with `auto_failover = true` (no operator acts on
    /// a lost peer); the others keep the default, manual failover.
    pub(super) fn auto_failover(self) -> bool {
        self.needs_witness()
            || matches!(
                self,
                Scenario::KillActive
                    | Scenario::KillStandby
                    | Scenario::CutActive
                    | Scenario::PartitionAuto
                    | Scenario::BothBoot
            )
    }
}

/// A small seeded generator (splitmix64): the same seed, the same trials.
pub(super) struct Rng(pub(super) u64);

impl Rng {
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in `lo..=hi`.
    pub(super) fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    pub(super) fn ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(self.range(lo, hi))
    }

    pub(super) fn coin(&mut self) -> bool {
        self.next() & 1 == 1
    }
}
