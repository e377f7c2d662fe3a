//! The storage trait the engine runs on, and its backends.
//!
//! A backend keeps three things: entries by key (one per key, the LWW winner), the dot index
//! (dot → key, one row per stored entry: the "commit log" that delta sync walks), and a few named
//! metadata records. Invariant every backend keeps: after each commit the dot index holds exactly
//! one row per stored entry, naming that entry's dot, save the entries stored with
//! [`Op::PutDeferred`], which have none until an [`Op::IndexDot`] writes it (a bootstrap's bulk
//! load; the replica records in [`Meta::Unindexed`] a vector that covers their dots). The conformance suite
//! (`conformance.rs`) checks it on every backend.
//!
//! Writes go in atomic [`Batch`]es; a commit that returns `Ok` is durable. Reads go through a
//! [`Snapshot`], a consistent view that later commits do not change.

mod codec;
#[cfg(test)]
mod conformance;
mod memory;
mod redb;

pub use self::memory::MemoryStore;
pub use self::redb::RedbStore;
pub(crate) use codec::{
    decode_cbor, decode_clock, decode_replica, decode_vector, encode_cbor, encode_clock, encode_replica, encode_vector,
};

use crate::entry::Entry;
use crate::error::StorageError;
use crate::ids::Dot;
use std::ops::{Bound, ControlFlow};

/// Named metadata records a replica keeps beside its entries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Meta {
    /// The replica id the store belongs to.
    ReplicaId,
    /// The replica's version vector.
    Vector,
    /// The last HLC value the replica issued or absorbed.
    Clock,
    /// The other members and their acknowledged vectors.
    Members,
    /// The pending GC checkpoint (F, J).
    Checkpoint,
    /// A vector covering the dot of every entry stored without a dot-index row
    /// ([`Op::PutDeferred`]); absent when there is none.
    Unindexed,
    /// A recovery from a restore in progress: the own counter and the seq the vector must come
    /// back to (`replica/restore.rs`).
    Restore,
    /// On a device: the upload queue's state and the horizon (`device/queue.rs`).
    Device,
    /// On a member: for each other member, the records clock up to which this one merged its
    /// device records (`device/records.rs`).
    RecordsSeen,
    /// The replica's role, `member` or `device`: the one it was first opened with.
    Role,
    /// The ranges of own seqs lost to restores from older copies (`replica/restore.rs`).
    Lost,
    /// Other members' statements of their lost ranges, as heard (`replica/lost.rs`).
    LostOthers,
}

impl Meta {
    /// The record's name in the store.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Meta::ReplicaId => "replica_id",
            Meta::Vector => "vector",
            Meta::Clock => "clock",
            Meta::Members => "members",
            Meta::Checkpoint => "checkpoint",
            Meta::Unindexed => "unindexed",
            Meta::Restore => "restore",
            Meta::Device => "device",
            Meta::RecordsSeen => "records_seen",
            Meta::Role => "role",
            Meta::Lost => "lost",
            Meta::LostOthers => "lost_others",
        }
    }
}

/// One change in a batch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Store `entry` as its key's version, replacing any other (and its dot-index row).
    Put(Entry),
    /// Store `entry` like [`Op::Put`] (the replaced entry's dot-index row goes), but write no row
    /// for its own dot. For a bootstrap's bulk load: its entries come in key order, so their dots
    /// come in random order, and inserting those into a B-tree rewrites most of it on every
    /// commit (measured: 7.8 s against 1.0 s for 1,000,000 entries in redb).
    PutDeferred(Entry),
    /// Write the dot-index row `dot` → `key`: the row of an entry stored with
    /// [`Op::PutDeferred`], written later (writing a row that is there changes nothing).
    IndexDot(Dot, Vec<u8>),
    /// Remove the key's entry and its dot-index row, if any.
    Remove(Vec<u8>),
    /// Set a metadata record.
    SetMeta(Meta, Vec<u8>),
    /// Set the device record of replica `id` (a member's table of enrolled devices,
    /// docs/design.md §8), replacing any.
    SetDevice(u64, Vec<u8>),
    /// Remove the device record of replica `id`, if any.
    RemoveDevice(u64),
}

/// Changes applied all together or not at all.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Batch {
    /// The changes, applied in order.
    pub ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Adds an entry.
    pub fn put(&mut self, entry: Entry) -> &mut Self {
        self.ops.push(Op::Put(entry));
        self
    }

    /// Adds an entry without its dot-index row (see [`Op::PutDeferred`]).
    pub fn put_deferred(&mut self, entry: Entry) -> &mut Self {
        self.ops.push(Op::PutDeferred(entry));
        self
    }

    /// Adds a dot-index row (see [`Op::IndexDot`]).
    pub fn index_dot(&mut self, dot: Dot, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op::IndexDot(dot, key));
        self
    }

    /// Adds a removal.
    pub fn remove(&mut self, key: Vec<u8>) -> &mut Self {
        self.ops.push(Op::Remove(key));
        self
    }

    /// Adds a device record update.
    pub fn set_device(&mut self, id: u64, record: Vec<u8>) -> &mut Self {
        self.ops.push(Op::SetDevice(id, record));
        self
    }

    /// Adds a device record removal.
    pub fn remove_device(&mut self, id: u64) -> &mut Self {
        self.ops.push(Op::RemoveDevice(id));
        self
    }

    /// Adds a metadata update.
    pub fn set_meta(&mut self, meta: Meta, value: Vec<u8>) -> &mut Self {
        self.ops.push(Op::SetMeta(meta, value));
        self
    }

    /// Whether there is nothing to commit.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A range of keys, in byte order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyRange {
    /// Lower bound.
    pub start: Bound<Vec<u8>>,
    /// Upper bound.
    pub end: Bound<Vec<u8>>,
}

impl KeyRange {
    /// Every key.
    #[must_use]
    pub fn all() -> KeyRange {
        KeyRange { start: Bound::Unbounded, end: Bound::Unbounded }
    }

    /// Keys from `start` (included) to `end` (excluded).
    #[must_use]
    pub fn between(start: impl Into<Vec<u8>>, end: impl Into<Vec<u8>>) -> KeyRange {
        KeyRange { start: Bound::Included(start.into()), end: Bound::Excluded(end.into()) }
    }

    /// Keys that start with `prefix`.
    #[must_use]
    pub fn prefix(prefix: impl Into<Vec<u8>>) -> KeyRange {
        let start = prefix.into();
        // The first key after every key with this prefix: drop trailing 0xff bytes, then add one
        // to the last byte. A prefix of only 0xff bytes has no such key.
        let mut end = start.clone();
        while end.last() == Some(&0xff) {
            end.pop();
        }
        let end = match end.last_mut() {
            Some(last) => {
                *last += 1;
                Bound::Excluded(end)
            }
            None => Bound::Unbounded,
        };
        KeyRange { start: Bound::Included(start), end }
    }

    /// The bounds as borrowed slices.
    #[must_use]
    pub fn as_slices(&self) -> (Bound<&[u8]>, Bound<&[u8]>) {
        (as_slice(&self.start), as_slice(&self.end))
    }

    /// Whether `key` falls in the range.
    #[must_use]
    pub fn contains(&self, key: &[u8]) -> bool {
        std::ops::RangeBounds::contains(&self.as_slices(), key)
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// A consistent, read-only view of a store at one point in time.
pub trait Snapshot {
    /// The entry stored for `key`.
    fn entry(&self, key: &[u8]) -> Result<Option<Entry>, StorageError>;

    /// The key whose stored entry has dot `dot`, if any.
    fn key_at(&self, dot: Dot) -> Result<Option<Vec<u8>>, StorageError>;

    /// Visits stored entries with keys in `range`, in key order, until `visit` breaks.
    fn scan_keys(&self, range: &KeyRange, visit: &mut dyn FnMut(Entry) -> ControlFlow<()>) -> Result<(), StorageError>;

    /// Visits dot-index rows from `from` up to `to` (both included), in dot order, until `visit`
    /// breaks.
    fn scan_dots(
        &self,
        from: Dot,
        to: Dot,
        visit: &mut dyn FnMut(Dot, &[u8]) -> ControlFlow<()>,
    ) -> Result<(), StorageError>;

    /// A metadata record.
    fn meta(&self, meta: Meta) -> Result<Option<Vec<u8>>, StorageError>;

    /// Visits every device record in id order, until `visit` breaks.
    fn scan_devices(&self, visit: &mut dyn FnMut(u64, &[u8]) -> ControlFlow<()>) -> Result<(), StorageError>;

    /// How many entries are stored (live, tombstones and expired records).
    fn entry_count(&self) -> Result<u64, StorageError>;
}

/// A backend: atomic, durable batches and consistent snapshots.
pub trait Storage: Send {
    /// The backend's snapshot type. It owns its view (no borrow of the store), so a session can
    /// keep reading one snapshot across many frames while the store takes new commits.
    type Snapshot: Snapshot + Send + 'static;

    /// A consistent view of everything committed so far.
    fn snapshot(&self) -> Result<Self::Snapshot, StorageError>;

    /// Applies `batch` atomically. When this returns `Ok`, the batch is durable (for an on-disk
    /// backend, on disk); when it returns `Err`, none of it is applied.
    fn commit(&mut self, batch: &Batch) -> Result<(), StorageError>;

    /// Closes and reopens the backend after a failure. redb refuses every commit after one
    /// I/O error ("Previous I/O error") until it is reopened; what it holds afterwards is
    /// exactly what was durable. Snapshots taken before fail from then on. The default does
    /// nothing, for a backend that a failure does not poison.
    fn reopen(&mut self) -> Result<(), StorageError> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefix_ranges_end_after_the_last_key_with_the_prefix() {
        let r = KeyRange::prefix(b"ab".to_vec());
        assert!(r.contains(b"ab") && r.contains(b"ab\xff\xff") && !r.contains(b"ac") && !r.contains(b"aa"));
        let r = KeyRange::prefix(b"a\xff".to_vec());
        assert_eq!(r.end, Bound::Excluded(b"b".to_vec()));
        assert_eq!(KeyRange::prefix(b"\xff\xff".to_vec()).end, Bound::Unbounded);
        assert!(KeyRange::prefix(Vec::new()).contains(b"anything"));
    }
}
