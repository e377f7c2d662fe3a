//! Whether a node takes local writes, and if not why and what to do: what `/health` of
//! `lethe serve --metrics` answers, from [`Status`] alone (so an embedder can answer the same).
//!
//! A node refuses (or cannot answer) local writes for four reasons, each shown in `Status` while
//! it lasts: its store stalled (`store_stalled_ms`: one call has held the store longer than
//! `STORE_STALL_MS`, a commit waiting on the disk, say; only `Node::status_snapshot` sees it), its
//! store failed (`store_error`: a full disk, an I/O error; the node retries by itself), it is
//! recovering from a restore from an older copy of its store (`recovering`:
//! `engine/src/replica/restore.rs`), or its clock is ahead of its peers' by more than the drift
//! allowed (`clock_ahead_ms`: `engine/src/replica/clock.rs`).

use crate::node::Status;
use serde::{Deserialize, Serialize};
use std::fmt;

/// A recovery from a restore in progress, as [`Status::recovering`] shows it: local writes are
/// refused until it ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecoveryStatus {
    /// The own seq a peer was seen to hold: the recovery ends once a complete transfer from a
    /// peer brings this node's own vector component back to it.
    pub target_seq: u64,
    /// This node's own vector component now.
    pub own_seq: u64,
    /// Writes made since the copy was taken that were re-issued under fresh seqs.
    pub reissued: u64,
}

/// Why a node refuses local writes now; its `Display` says what to do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WriteRefusal {
    /// The store failed; commits are retried until one goes through.
    StoreFailed {
        /// The store's error.
        error: String,
        /// Since when, in Unix ms.
        since_ms: Option<u64>,
    },
    /// One call has held the store this long (a commit waiting on a stalled disk): writes wait.
    StoreStalled {
        /// For how long, in ms.
        held_ms: u64,
    },
    /// The node recovers from a restore from an older copy of its store.
    Recovering(RecoveryStatus),
    /// The node's clock is this many ms ahead of its peers'.
    ClockAhead {
        /// By how much.
        ahead_ms: u64,
    },
}

impl fmt::Display for WriteRefusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            WriteRefusal::StoreFailed { error, since_ms } => {
                write!(f, "store failed: {error}")?;
                if let Some(since_ms) = since_ms {
                    write!(f, " (since {since_ms} Unix ms)")?;
                }
                write!(
                    f,
                    "; local writes are refused and nothing is acknowledged until a commit goes through: free \
                     space on the disk or fix the device, the node retries by itself"
                )
            }
            WriteRefusal::StoreStalled { held_ms } => write!(
                f,
                "store stalled: a commit or read has waited on the store for {held_ms} ms, so writes are not \
                 answered: check the disk (a hung device, a full or frozen filesystem)"
            ),
            WriteRefusal::Recovering(r) => write!(
                f,
                "recovering from a restore: this node's store was restored from an older copy, and it refuses \
                 local writes until a peer holding its writes up to seq {} has synced with it (it holds up to seq \
                 {} now; {} writes re-issued): keep it connected to its peers",
                r.target_seq, r.own_seq, r.reissued
            ),
            WriteRefusal::ClockAhead { ahead_ms } => write!(
                f,
                "clock ahead: this node's clock is {ahead_ms} ms ahead of its peers' (more than the drift \
                 allowed), and it refuses local writes until they agree: check the system clock (NTP)"
            ),
        }
    }
}

impl Status {
    /// Why local writes are refused now, each reason once (stall, store, recovery, clock); empty while
    /// the node takes writes.
    #[must_use]
    pub fn write_refusals(&self) -> Vec<WriteRefusal> {
        let store = self
            .store_error
            .clone()
            .map(|error| WriteRefusal::StoreFailed { error, since_ms: self.store_failed_since_ms });
        let recovery = self.recovering.map(WriteRefusal::Recovering);
        let clock = self.clock_ahead_ms.map(|ahead_ms| WriteRefusal::ClockAhead { ahead_ms });
        let stalled = self.store_stalled_ms.map(|held_ms| WriteRefusal::StoreStalled { held_ms });
        [stalled, store, recovery, clock].into_iter().flatten().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_with_no_reason_takes_writes_and_each_reason_says_what_to_do() {
        assert_eq!(Status::default().write_refusals(), []);
        let status = Status {
            store_error: Some("No space left on device".to_string()),
            store_failed_since_ms: Some(1),
            recovering: Some(RecoveryStatus { target_seq: 9, own_seq: 4, reissued: 2 }),
            clock_ahead_ms: Some(3_600_000),
            ..Status::default()
        };
        let said: Vec<String> = status.write_refusals().iter().map(ToString::to_string).collect();
        assert_eq!(said.len(), 3, "{said:?}");
        assert!(said[0].starts_with("store failed: No space left on device") && said[0].contains("free space"));
        assert!(said[1].starts_with("recovering from a restore: ") && said[1].contains("up to seq 9"));
        assert!(said[1].contains("keep it connected"), "{}", said[1]);
        assert!(said[2].starts_with("clock ahead: this node's clock is 3600000 ms") && said[2].contains("NTP"));
    }
}
