//! Identifiers: who wrote a thing ([`ReplicaId`]) and which of its writes it was ([`Seq`], [`Dot`]).
//!
//! Newtypes, so that a sequence number cannot be passed where a replica id or a clock is meant.

use serde::{Deserialize, Serialize};
use std::fmt;

/// The identity of one replica. Stable for the replica's lifetime; the node derives it from the
/// replica's public key, the engine only needs it to be unique among the replicas that sync.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct ReplicaId(pub u64);

impl fmt::Display for ReplicaId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// A replica's sequence number for one of its own writes: 1, 2, 3, … with no gaps.
/// `Seq(0)` means "nothing yet" and never names a write.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Seq(pub u64);

impl Seq {
    /// The sequence number after this one, for this replica's own next write. Never call it on
    /// a seq from a peer, which may be `u64::MAX`: use [`Seq::checked_next`].
    #[must_use]
    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }

    /// The sequence number after this one, or `u64::MAX` itself after `u64::MAX`: for a seq
    /// from a peer where "nothing beyond" is the right reading (a bound, a scan's start).
    #[must_use]
    pub fn saturating_next(self) -> Seq {
        Seq(self.0.saturating_add(1))
    }

    /// The sequence number after this one, or `None` after `u64::MAX` (a peer's vector may
    /// claim it: nothing lies beyond it).
    #[must_use]
    pub fn checked_next(self) -> Option<Seq> {
        self.0.checked_add(1).map(Seq)
    }
}

impl fmt::Display for Seq {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// One write, named by its writer and the writer's sequence number for it.
///
/// Ordered by replica, then seq: the order of the store's dot index.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// The replica that made the write.
    pub replica: ReplicaId,
    /// The writer's sequence number for it (≥ 1).
    pub seq: Seq,
}

impl fmt::Display for Dot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.replica, self.seq)
    }
}
