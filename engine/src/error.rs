//! The engine's errors. Each variant says what was wrong, carries the values, and (in its message)
//! what the caller can do about it.

use crate::ids::{Dot, ReplicaId, Seq};

/// Everything that can go wrong in the engine.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key was empty.
    #[error("key is empty; keys must be 1 to {max} bytes")]
    KeyEmpty {
        /// The configured maximum key length.
        max: usize,
    },
    /// A key was longer than the configured limit.
    #[error("key is {len} bytes, more than the limit of {max}; use a shorter key")]
    KeyTooLarge {
        /// The key's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A value was longer than the configured limit.
    #[error("value is {len} bytes, more than the limit of {max}; split it or raise the limit")]
    ValueTooLarge {
        /// The value's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Metadata was longer than the configured limit.
    #[error("metadata is {len} bytes, more than the limit of {max}")]
    MetadataTooLarge {
        /// The metadata's length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A TTL of zero or one that overflows the clock was given.
    #[error("ttl of {ttl_ms} ms is out of range; use 1 ms up to about 8,900 years")]
    TtlOutOfRange {
        /// The TTL asked for.
        ttl_ms: u64,
    },
    /// A remote stamp was further ahead of the local wall clock than `max_drift_ms`; it was
    /// rejected, not adopted, and nothing in the batch that carried it was applied.
    #[error(
        "remote clock {remote_ms} ms is more than {max_drift_ms} ms ahead of local clock {local_ms} ms; \
         rejected (check the sender's clock, or raise max_drift)"
    )]
    ClockDrift {
        /// The remote stamp's wall time.
        remote_ms: u64,
        /// The local wall time when it arrived.
        local_ms: u64,
        /// The tolerated drift.
        max_drift_ms: u64,
    },
    /// A local write was refused: its stamp would lie more than `max_drift_ms` beyond the wall
    /// time of every peer measured lately, so every peer would refuse it.
    #[error(
        "this replica's clock is {ahead_ms} ms ahead of its peers' (more than the {max_drift_ms} ms allowed); \
         local writes are refused until it is corrected: check the system clock (NTP)"
    )]
    ClockAheadOfPeers {
        /// How far the next stamp would lie beyond the peers' reference time.
        ahead_ms: u64,
        /// The tolerated drift.
        max_drift_ms: u64,
    },
    /// A remote entry carried a dot with sequence number 0, which names no write.
    #[error("remote entry has dot {dot}, but sequence numbers start at 1; the sender is broken")]
    ZeroSeq {
        /// The offending dot.
        dot: Dot,
    },
    /// A peer sent a write of this replica's that this replica has no record of making: its
    /// store is older than its identity (restored from an old backup, say). Writing on would
    /// reuse sequence numbers.
    #[error(
        "peer holds write {seq} of this replica ({replica}) but this replica's own counter is at {own}; \
         its store is older than writes it made. Restore the newest store, or start a new replica identity"
    )]
    OwnWriteFromTheFuture {
        /// This replica.
        replica: ReplicaId,
        /// The seq the peer had.
        seq: Seq,
        /// This replica's own counter.
        own: Seq,
    },
    /// A local write was refused: this replica's store was restored from an older copy (a peer
    /// holds writes of its beyond its counter) and it is recovering (`replica/restore.rs`).
    #[error(
        "replica {replica} was restored from an older copy of its store: peers hold its writes up to seq {target} \
         while it has {own}; it re-issued {reissued} writes made since under fresh seqs and takes writes again \
         once a peer holding seq {target} has synced with it (keep it connected)"
    )]
    Restored {
        /// This replica.
        replica: ReplicaId,
        /// The own seq it is waiting to get back to.
        target: Seq,
        /// Its own vector component now.
        own: Seq,
        /// Writes re-issued under fresh seqs.
        reissued: u64,
    },
    /// A peer claimed this replica made far more writes than its counter shows: more than a
    /// restore from an older copy could explain. Refused; nothing changed.
    #[error(
        "peer claims write {seen} of this replica ({replica}), {} beyond its counter {own} (at most {max_gap} \
         is believed); the peer is broken or lying: check it",
        seen.0.saturating_sub(own.0)
    )]
    OwnSeqImplausible {
        /// This replica.
        replica: ReplicaId,
        /// The seq claimed.
        seen: Seq,
        /// This replica's own counter.
        own: Seq,
        /// The largest gap believed.
        max_gap: u64,
    },
    /// A store belongs to another replica.
    #[error("store belongs to replica {stored}, not {requested}; open it with its own identity")]
    WrongReplica {
        /// The replica recorded in the store.
        stored: ReplicaId,
        /// The replica that tried to open it.
        requested: ReplicaId,
    },
    /// A store was opened in the other role than the one it keeps (docs/design.md §8): a
    /// device's store opened as a member would never upload its queued writes, and a member's
    /// opened as a device would stop numbering its own.
    #[error(
        "store belongs to a {stored}, not a {requested}; open it as a {stored} (Config::role), or use a new \
         store for a {requested}"
    )]
    WrongRole {
        /// The role recorded in the store.
        stored: crate::device::Role,
        /// The role it was opened with.
        requested: crate::device::Role,
    },
    /// Enrolling a member would exceed [`crate::membership::MEMBERS_MAX`].
    #[error(transparent)]
    TooManyMembers(#[from] crate::membership::TooManyMembers),
    /// A device could not be enrolled: past [`crate::device::DEVICES_MAX`], or its epochs
    /// are exhausted.
    #[error(transparent)]
    Enrol(#[from] crate::device::EnrolError),
    /// The storage backend failed.
    #[error(transparent)]
    Storage(#[from] StorageError),
}

impl Error {
    /// Whether this replica's own store failed (a full disk, an I/O error, a damaged record),
    /// rather than an input being refused: no peer or caller caused it, and retrying later may
    /// succeed.
    #[must_use]
    pub fn is_storage(&self) -> bool {
        matches!(self, Error::Storage(_))
    }
}

/// Failures of a storage backend.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// The backend's own I/O or transaction failure.
    #[error("storage backend failed during {during}: {source}")]
    Backend {
        /// What the engine was doing.
        during: &'static str,
        /// The backend's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The store failed earlier (a full disk, an I/O error) and has not been reopened since:
    /// this operation was refused without touching it. A node reopens it by itself
    /// ([`crate::Replica::reopen_store`]). (The write whose commit failed may or may not have
    /// reached the disk; the reopened store says which.)
    #[error(
        "the store is unavailable since it failed ({cause}); this was refused and not stored. \
         A node reopens its store by itself: retry once the disk has room or the I/O error is fixed"
    )]
    Unavailable {
        /// The failure that made it unavailable.
        cause: String,
    },
    /// A stored record did not decode: the file is damaged or was written by something else.
    #[error("stored {what} is corrupt: {detail}; restore the store from a replica or a backup")]
    Corrupt {
        /// Which kind of record.
        what: &'static str,
        /// What was wrong with it.
        detail: String,
    },
}

impl StorageError {
    /// Wraps a backend error with what was being done.
    pub fn backend(during: &'static str, source: impl std::error::Error + Send + Sync + 'static) -> Self {
        StorageError::Backend { during, source: Box::new(source) }
    }
}

/// Shorthand for engine results.
pub type Result<T, E = Error> = std::result::Result<T, E>;
