//! A replica: one copy of the key-value state, its clock and its version vector, over a store.
//!
//! Invariants kept here:
//! - every local write gets a fresh stamp above every stamp seen (HLC) and the next dot, and the
//!   entry, the vector and the clock are committed in one batch, so a restart resumes exactly;
//! - the version vector advances only by own writes and by merging a sender's vector after a
//!   complete transfer (`apply_remote` with `Some(vector)`);
//! - "covered and absent means dead": a remote entry whose dot the vector covers but that is not
//!   the stored entry of its key was superseded or deleted here, and is dropped;
//! - a remote batch is applied whole or not at all: one stamp beyond `max_drift_ms`, one oversized
//!   key, one impossible dot rejects it, and the store is unchanged (I7, I8);
//! - TTL expiry writes nothing and sends nothing (I6): an expired value is hidden from reads at
//!   once and, when purged, becomes an `Expired` record with its original stamp and dot.

use crate::device::{DeviceRecord, DeviceState, Devices, Role};
use crate::entry::{Entry, Payload, Value};
use crate::error::{Error, Result, StorageError};
use crate::hlc::{HLC_WALL_MS_MAX, Hlc, HybridClock, Stamp, WallClock};
use crate::ids::{Dot, ReplicaId, Seq};
use crate::index::KeyIndex;
use crate::limits::Limits;
use crate::membership::{Checkpoint, LEASE_MS_DEFAULT, Membership};
use crate::storage::{
    Batch, KeyRange, Meta, Op, Snapshot, Storage, decode_cbor, decode_clock, decode_replica, decode_vector,
    encode_clock, encode_replica, encode_vector,
};
use crate::vector::VersionVector;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

/// The default tolerated lead of a remote clock over the local one: 1 s.
pub const MAX_DRIFT_MS_DEFAULT: u64 = 1000;
/// How many entries one purge commit rewrites at most.
const PURGE_BATCH_ENTRIES: usize = 1024;

/// A replica's settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Config {
    /// Size limits for keys, values and metadata.
    pub limits: Limits,
    /// How far ahead of the local wall clock a remote stamp may be before it is rejected.
    pub max_drift_ms: u64,
    /// How long a member may stay silent before it is evicted from the stable frontier.
    pub lease_ms: u64,
    /// How far a peer's measured wall time may lag its real one (transit), on top of
    /// `max_drift_ms`, before this replica counts itself ahead ([`PEER_CLOCK_SLACK_MS`]).
    pub peer_clock_slack_ms: u64,
    /// Whether this replica is a member or a device (docs/design.md §8). A store keeps the role
    /// it was opened with first ([`Meta::Role`]); opening it in the other is refused.
    pub role: Role,
    /// On a member: how long a device may stay silent before it stops holding collection back.
    pub device_lease_ms: u64,
    /// On a member: a device gets an anti-entropy session at most once in this many ms
    /// ([`crate::device::DEVICE_ANTI_ENTROPY_MIN_MS`]).
    pub device_anti_entropy_min_ms: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            limits: Limits::default(),
            max_drift_ms: MAX_DRIFT_MS_DEFAULT,
            lease_ms: LEASE_MS_DEFAULT,
            peer_clock_slack_ms: PEER_CLOCK_SLACK_MS,
            role: Role::Member,
            device_lease_ms: crate::device::DEVICE_LEASE_MS_DEFAULT,
            device_anti_entropy_min_ms: crate::device::DEVICE_ANTI_ENTROPY_MIN_MS,
        }
    }
}

/// Options for one put.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PutOptions {
    /// Time to live: the value expires this many milliseconds after the write's HLC wall time.
    pub ttl_ms: Option<u64>,
    /// Opaque metadata stored and replicated with the value.
    pub metadata: Option<Vec<u8>>,
}

/// What a durable local write returns: its dot (whose `seq` a client can later check against a
/// peer's vector, the role atServer's commit id plays) and its stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteReceipt {
    /// The write's dot.
    pub dot: Dot,
    /// The write's LWW stamp.
    pub stamp: Stamp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum WriteOp {
    Put { key: Vec<u8>, value: Vec<u8>, options: PutOptions },
    Delete { key: Vec<u8> },
}

/// Several local writes committed together, in order, in one durable batch.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteBatch {
    ops: Vec<WriteOp>,
}

impl WriteBatch {
    /// An empty batch.
    #[must_use]
    pub fn new() -> WriteBatch {
        WriteBatch::default()
    }

    /// Adds a put.
    pub fn put(&mut self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>, options: PutOptions) -> &mut Self {
        self.ops.push(WriteOp::Put { key: key.into(), value: value.into(), options });
        self
    }

    /// Adds a delete.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> &mut Self {
        self.ops.push(WriteOp::Delete { key: key.into() });
        self
    }

    /// Number of writes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether there are no writes.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// A live key as a read returns it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Item {
    /// The key.
    pub key: Vec<u8>,
    /// The value.
    pub value: Vec<u8>,
    /// Its metadata, if any.
    pub metadata: Option<Vec<u8>>,
    /// When it expires, if it has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The write's stamp.
    pub stamp: Stamp,
    /// The write's dot.
    pub dot: Dot,
}

impl Item {
    fn from_live(entry: Entry, now_ms: u64) -> Option<Item> {
        if !entry.is_live_at(now_ms) {
            return None;
        }
        let dot = entry.dot();
        match entry.payload {
            Payload::Value(Value { bytes, expires_at_ms, metadata }) => {
                Some(Item { key: entry.key, value: bytes, metadata, expires_at_ms, stamp: entry.stamp, dot })
            }
            Payload::Expired { .. } | Payload::Tombstone => None,
        }
    }
}

/// What a peer with a given vector is missing: every entry here whose dot that vector does not
/// cover (one per key; superseded versions are never stored, so never sent), and the vector to
/// merge once all of them are applied.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Delta {
    /// The entries, in dot order. Expired values go as `Expired` records, without their bytes.
    pub entries: Vec<Entry>,
    /// The sender's vector at the snapshot the entries were read from.
    pub vector: VersionVector,
    /// The sender's clock then: not below the stamp of any write the vector covers, including
    /// writes it already collected, which the receiver will never see. The receiver's clock
    /// observes it as the vector merges, so the receiver's later writes are stamped after them.
    pub clock: Hlc,
}

/// What [`Replica::apply_remote`] did with a batch.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyReport {
    /// Entries stored (they won over what was here, or the key was unknown).
    pub applied: usize,
    /// Entries dropped because the vector covers their dot and they are not stored here: they
    /// were superseded or deleted ("covered and absent means dead").
    pub stale: usize,
    /// Entries that lost in LWW order to what is stored, or that were already here.
    pub superseded: usize,
    /// Whether the sender's vector was merged (a complete transfer).
    pub vector_merged: bool,
}

/// Counts of what a replica stores.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    /// Values visible to reads now.
    pub live: u64,
    /// Tombstones not yet collected.
    pub tombstones: u64,
    /// Values whose TTL passed (purged or not) not yet collected.
    pub expired: u64,
}

/// One replica of the key-value state.
pub struct Replica<S: Storage> {
    id: ReplicaId,
    store: S,
    clock: HybridClock,
    wall: Arc<dyn WallClock>,
    vector: VersionVector,
    config: Config,
    drift_rejections: u64,
    /// Signs this replica's acknowledgements and verifies relayed ones (`sign.rs`).
    pub(crate) signer: Arc<dyn crate::sign::AckSigner>,
    /// Relayed acknowledgements about a third replica ignored for want of its valid signature.
    pub(crate) acks_unverified: u64,
    /// Member handshakes whose claim of merged device records lay too far beyond the records
    /// clock (`device/enrol.rs`; memory only).
    pub(crate) records_clock_claims_refused: u64,
    /// Relayed claims refused as implausible: a device cursor or epoch too far beyond what this
    /// replica holds (`CURSOR_GAP_MAX`, `DEVICE_EPOCH_GAP_MAX`).
    pub(crate) claims_implausible: u64,
    pub(crate) index: KeyIndex,
    pub(crate) membership: Membership,
    pub(crate) checkpoint: Option<Checkpoint>,
    /// Changes committed since the last [`Replica::take_changes`], when recording.
    changes: Option<Vec<Change>>,
    /// Covers the dot of every entry stored without a dot-index row ([`Meta::Unindexed`]).
    unindexed: VersionVector,
    /// The rows [`Replica::write_deferred_rows`] has still to write, once it began (not kept
    /// across restarts: the list is taken again from the index, and writing a row again changes
    /// nothing).
    unindexed_rows: Option<DeferredRows>,
    /// Peers' wall times from their handshakes (`replica/clock.rs`).
    peer_clocks: clock::PeerClocks,
    /// The recovery from a restore in progress (`replica/restore.rs`), persisted.
    recovery: Option<Recovery>,
    /// Bumped each time a recovery begins (sessions opened before do not merge).
    restore_epoch: u64,
    /// The clock when the replica was opened: own writes stamped above it were made by this run.
    pub(crate) opened_clock: Hlc,
    /// The clock when this process opened the replica (`opened_clock` may be an earlier run's,
    /// `DeviceState::opened`): own writes stamped above it were made by this process, and no
    /// member can have handled them before its first handshake (R4-1).
    pub(crate) run_clock: Hlc,
    /// The own counter when the replica was opened: seqs above it were issued by this run.
    pub(crate) opened_seq: Seq,
    /// On a device: the highest upload seq this run may have sent (every write queued when a
    /// session's handshake went; memory only). A member's cursor beyond both it and
    /// `opened_seq` shows this store is an older copy (`device/queue.rs`).
    pub(crate) uploads_sent_max: Seq,
    /// On a device: whether a session's handshake went in this run (memory only): from then on
    /// its open point is no longer kept for a restart (`DeviceState::opened`).
    pub(crate) handshake_sent: bool,
    /// Own seqs lost to restores ([`Meta::Lost`], `replica/restore.rs`).
    lost_own: Vec<(Seq, Seq)>,
    /// Other members' statements of their seqs lost to restores, as their handshakes (or
    /// others', signed) told ([`Meta::LostOthers`], `replica/lost.rs`).
    lost_others: lost::LostOthers,
    /// The union of each member's kept statements' ranges: what `lost_of` answers.
    lost_others_union: BTreeMap<ReplicaId, Vec<(Seq, Seq)>>,
    /// Lost range statements about a third member not taken, unsigned or not verifying
    /// (memory only).
    lost_unverified: u64,
    /// The members heard from since a recovery begun by a device began (memory only: after a
    /// restart they are heard again).
    recovery_heard: std::collections::BTreeSet<ReplicaId>,
    /// The members that completed a transfer to this replica since its recovery began (memory
    /// only): once every member has, the recovery ends whatever its target
    /// (`replica/restore.rs`).
    recovery_transferred: std::collections::BTreeSet<ReplicaId>,
    /// The store's failure, from a failed commit until a commit succeeds (`recovery.rs`).
    store_failure: Option<StoreFailure>,
    /// On a device: its upload queue's state (`device/queue.rs`).
    pub(crate) device: DeviceState,
    /// On a member: the enrolled devices (`device/records.rs`).
    pub(crate) devices: Devices,
    /// On a member: for each other member, the records clock up to which its device records
    /// were merged here ([`Meta::RecordsSeen`]).
    pub(crate) records_seen: crate::device::records::RecordsSeen,
    /// Whether `records_seen` is as the store holds it.
    pub(crate) records_seen_durable: bool,
    /// On a member: when each device last had an anti-entropy session here (memory only; at
    /// most one per enrolled device), so none can have one more often than
    /// [`crate::device::DEVICE_ANTI_ENTROPY_MIN_MS`].
    pub(crate) device_anti_entropy: BTreeMap<ReplicaId, u64>,
}

/// The dot-index rows still to write for entries stored without one ([`Meta::Unindexed`]).
///
/// Rule (docs/design.md §10, two bootstraps at once): every entry stored without a row is in
/// `listed` or `late` until its row is written or it is replaced, so `unindexed` is cleared only
/// once all of them have their rows, whatever order the chunks of several bootstraps, the row
/// writing and the vector merges come in.
#[derive(Debug)]
struct DeferredRows {
    /// Listed from the index when the writing began, in dot order.
    listed: std::vec::IntoIter<(Dot, Vec<u8>)>,
    /// Entries stored without a row after `listed` was taken (chunks of another bootstrap into
    /// the same replica), by dot.
    late: BTreeMap<Dot, Vec<u8>>,
}

impl DeferredRows {
    fn is_empty(&self) -> bool {
        self.listed.as_slice().is_empty() && self.late.is_empty()
    }

    /// The next row to write, in dot order within `listed`, then within `late`.
    fn next(&mut self) -> Option<(Dot, Vec<u8>)> {
        self.listed.next().or_else(|| self.late.pop_first())
    }
}

/// A change to what reads of one key return, as recorded for subscribers
/// ([`Replica::record_changes`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// The key now holds this value (a local write, or one received from a peer).
    Put(Item),
    /// The key was deleted (a local or received tombstone, or an entry dropped because a peer
    /// showed it dead).
    Delete {
        /// The key.
        key: Vec<u8>,
        /// The tombstone's stamp; `None` when the entry was dropped because a peer showed it
        /// dead (the write that superseded it is not known here).
        stamp: Option<Stamp>,
    },
    /// The key's value expired: its TTL passed and it was purged, or an expired record of a
    /// newer write arrived. Reads stopped returning the value at its expiry time; this is
    /// recorded when the store is rewritten (a purge runs each GC step), so it may come a GC
    /// interval later. Expiry writes nothing and sends nothing (I6): this is local news only.
    Expired {
        /// The key.
        key: Vec<u8>,
        /// The stamp of the write whose value expired.
        stamp: Stamp,
    },
}

impl Change {
    /// The key that changed.
    #[must_use]
    pub fn key(&self) -> &[u8] {
        match self {
            Change::Put(item) => &item.key,
            Change::Delete { key, .. } | Change::Expired { key, .. } => key,
        }
    }
}

impl<S: Storage> std::fmt::Debug for Replica<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replica")
            .field("id", &self.id)
            .field("vector", &self.vector)
            .field("clock", &self.clock.last())
            .finish_non_exhaustive()
    }
}

/// A role as [`Meta::Role`] keeps it.
fn encode_role(role: Role) -> Vec<u8> {
    role.to_string().into_bytes()
}

impl<S: Storage> Replica<S> {
    /// Opens replica `id` on `store`: a new store is claimed for `id`; an existing one resumes its
    /// vector and clock (so no stamp or dot is ever issued twice).
    ///
    /// Fails with [`Error::WrongReplica`] if the store belongs to another replica, with
    /// [`Error::WrongRole`] if it was first opened in the other role ([`Config::role`]; a store
    /// from before roles were kept takes this one), and with [`StorageError::Corrupt`] if its
    /// records do not agree with each other.
    pub fn open(mut store: S, id: ReplicaId, config: Config, wall: Arc<dyn WallClock>) -> Result<Replica<S>> {
        let snap = store.snapshot()?;
        let mut replica = match snap.meta(Meta::ReplicaId)? {
            Some(stored) => {
                let stored = decode_replica(&stored)?;
                if stored != id {
                    return Err(Error::WrongReplica { stored, requested: id });
                }
                let role = match snap.meta(Meta::Role)?.as_deref() {
                    Some(b"member") => Some(Role::Member),
                    Some(b"device") => Some(Role::Device),
                    Some(_) => {
                        let detail = "neither `member` nor `device`".to_string();
                        return Err(StorageError::Corrupt { what: "role", detail }.into());
                    }
                    // A store from before roles were kept: it keeps this one from now on.
                    None => None,
                };
                if let Some(stored) = role.filter(|r| *r != config.role) {
                    return Err(Error::WrongRole { stored, requested: config.role });
                }
                let durable = Durable::read(&snap, id)?;
                // A device run that wrote and restarted before its first session opens with the
                // point that run opened with (`device/queue.rs` `DeviceState::opened`).
                let opened = durable
                    .device
                    .opened
                    .unwrap_or(crate::device::OpenPoint { seq: durable.counter(id), clock: durable.clock });
                let opened_seq = opened.seq.min(durable.counter(id));
                let opened_clock = opened.clock.min(durable.clock);
                if role.is_none() {
                    drop(snap);
                    let mut batch = Batch::new();
                    batch.set_meta(Meta::Role, encode_role(config.role));
                    store.commit(&batch)?;
                }
                Replica {
                    id,
                    clock: HybridClock::resume(durable.clock, config.max_drift_ms),
                    wall,
                    vector: durable.vector,
                    config,
                    drift_rejections: 0,
                    signer: Arc::new(crate::sign::NoSigner),
                    acks_unverified: 0,
                    records_clock_claims_refused: 0,
                    claims_implausible: 0,
                    index: durable.index,
                    membership: durable.membership,
                    checkpoint: durable.checkpoint,
                    changes: None,
                    unindexed: durable.unindexed,
                    unindexed_rows: None,
                    peer_clocks: clock::PeerClocks::default(),
                    recovery: durable.recovery,
                    restore_epoch: 0,
                    opened_clock,
                    run_clock: durable.clock,
                    opened_seq,
                    uploads_sent_max: Seq(0),
                    handshake_sent: false,
                    lost_own: durable.lost_own,
                    lost_others_union: durable.lost_others.iter().map(|(&m, v)| (m, lost::union_of(v))).collect(),
                    lost_others: durable.lost_others,
                    lost_unverified: 0,
                    recovery_heard: Default::default(),
                    recovery_transferred: Default::default(),
                    store_failure: None,
                    device: durable.device,
                    devices: durable.devices,
                    records_seen: durable.records_seen,
                    records_seen_durable: true,
                    device_anti_entropy: BTreeMap::new(),
                    store,
                }
            }
            None => {
                drop(snap);
                let mut batch = Batch::new();
                batch.set_meta(Meta::ReplicaId, encode_replica(id));
                batch.set_meta(Meta::Role, encode_role(config.role));
                store.commit(&batch)?;
                Replica {
                    id,
                    store,
                    clock: HybridClock::new(config.max_drift_ms),
                    wall,
                    vector: VersionVector::new(),
                    config,
                    drift_rejections: 0,
                    signer: Arc::new(crate::sign::NoSigner),
                    acks_unverified: 0,
                    records_clock_claims_refused: 0,
                    claims_implausible: 0,
                    index: KeyIndex::default(),
                    membership: Membership::default(),
                    checkpoint: None,
                    changes: None,
                    unindexed: VersionVector::new(),
                    unindexed_rows: None,
                    peer_clocks: clock::PeerClocks::default(),
                    recovery: None,
                    restore_epoch: 0,
                    opened_clock: Hlc(0),
                    run_clock: Hlc(0),
                    opened_seq: Seq(0),
                    uploads_sent_max: Seq(0),
                    handshake_sent: false,
                    lost_own: Vec::new(),
                    lost_others: BTreeMap::new(),
                    lost_others_union: BTreeMap::new(),
                    lost_unverified: 0,
                    recovery_heard: Default::default(),
                    recovery_transferred: Default::default(),
                    store_failure: None,
                    device: DeviceState::default(),
                    devices: Devices::default(),
                    records_seen: Default::default(),
                    records_seen_durable: true,
                    device_anti_entropy: BTreeMap::new(),
                }
            }
        };
        // Values that expired while the replica was closed are purged before anything reads.
        replica.purge_expired()?;
        Ok(replica)
    }

    /// Commits `batch` durably and mirrors it into the in-memory index. Every change to the
    /// store goes through here.
    pub(crate) fn commit(&mut self, batch: &Batch) -> Result<()> {
        self.commit_to_store(batch)?;
        if let Some(changes) = self.changes.as_mut() {
            let now_ms = self.wall.now_ms();
            for op in &batch.ops {
                match op {
                    Op::Put(e) | Op::PutDeferred(e) => match Item::from_live(e.clone(), now_ms) {
                        Some(item) => changes.push(Change::Put(item)),
                        None if matches!(e.payload, Payload::Tombstone) => {
                            changes.push(Change::Delete { key: e.key.clone(), stamp: Some(e.stamp) });
                        }
                        // A purge, or an expired record replacing a value held here: the value
                        // is gone from reads (it was since its expiry time).
                        None if matches!(e.payload, Payload::Expired { .. })
                            && self.index.live.get(&e.key).is_some() =>
                        {
                            changes.push(Change::Expired { key: e.key.clone(), stamp: e.stamp });
                        }
                        // A write already expired when it arrived, for a key not live here.
                        None => {}
                    },
                    // Collection removes dead entries; a live one removed was shown dead by a peer.
                    Op::Remove(key) if self.index.live.get(key).is_some() => {
                        changes.push(Change::Delete { key: key.clone(), stamp: None });
                    }
                    Op::Remove(_) | Op::SetMeta(..) | Op::IndexDot(..) | Op::SetDevice(..) | Op::RemoveDevice(_) => {}
                }
            }
        }
        self.index.apply(batch);
        Ok(())
    }

    /// Starts (or stops) recording the changes each commit makes to what reads return, for
    /// [`Replica::take_changes`]. Off by default: an embedder that does not subscribe pays
    /// nothing.
    pub fn record_changes(&mut self, on: bool) {
        self.changes = on.then(Vec::new);
    }

    /// Whether commits record their changes ([`Replica::record_changes`]).
    #[must_use]
    pub fn records_changes(&self) -> bool {
        self.changes.is_some()
    }

    /// The changes committed since the last call, in commit order (empty when not recording).
    pub fn take_changes(&mut self) -> Vec<Change> {
        self.changes.as_mut().map(std::mem::take).unwrap_or_default()
    }

    /// Replaces the vector (its commit is the caller's, already done).
    pub(crate) fn set_vector(&mut self, vector: VersionVector) {
        self.vector = vector;
    }

    /// The hybrid clock, to advance a copy of it over a batch.
    pub(crate) fn hybrid_clock(&self) -> HybridClock {
        self.clock
    }

    /// Replaces the hybrid clock (its commit is the caller's, already done).
    pub(crate) fn set_hybrid_clock(&mut self, clock: HybridClock) {
        self.clock = clock;
    }

    /// Checks a remote stamp against `max_drift_ms`, counting a rejection.
    pub(crate) fn clock_check(&mut self, hlc: Hlc, wall_ms: u64) -> Result<()> {
        let checked = self.clock.check(hlc, wall_ms);
        if checked.is_err() {
            self.drift_rejections += 1;
        }
        checked
    }

    /// The wall clock, read once per operation.
    pub(crate) fn now_ms(&self) -> u64 {
        self.wall.now_ms()
    }

    /// The monotonic clock ([`crate::WallClock::monotonic_ms`]), for elapsed time.
    pub(crate) fn monotonic_ms(&self) -> u64 {
        self.wall.monotonic_ms()
    }

    /// This replica's id.
    #[must_use]
    pub fn id(&self) -> ReplicaId {
        self.id
    }

    /// The version vector: what this replica has seen.
    #[must_use]
    pub fn vector(&self) -> &VersionVector {
        &self.vector
    }

    /// The settings.
    #[must_use]
    pub fn config(&self) -> &Config {
        &self.config
    }

    /// The last HLC value issued or absorbed.
    #[must_use]
    pub fn clock(&self) -> crate::hlc::Hlc {
        self.clock.last()
    }

    /// How many remote batches were rejected for a stamp beyond `max_drift_ms` since opening.
    #[must_use]
    pub fn drift_rejections(&self) -> u64 {
        self.drift_rejections
    }

    /// The store, for reads that the replica does not offer.
    #[must_use]
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Closes the replica and hands back its store (everything in it is durable).
    #[must_use]
    pub fn into_store(self) -> S {
        self.store
    }

    /// Stores `value` under `key`. Returns once the write is durable.
    pub fn put(
        &mut self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: PutOptions,
    ) -> Result<WriteReceipt> {
        let mut batch = WriteBatch::new();
        batch.put(key, value, options);
        self.write_one(batch)
    }

    /// Deletes `key` by writing a tombstone (whether or not a value is known here: a peer may
    /// hold one). Returns once the tombstone is durable.
    pub fn delete(&mut self, key: impl Into<Vec<u8>>) -> Result<WriteReceipt> {
        let mut batch = WriteBatch::new();
        batch.delete(key);
        self.write_one(batch)
    }

    fn write_one(&mut self, batch: WriteBatch) -> Result<WriteReceipt> {
        let receipts = self.write(batch)?;
        debug_assert_eq!(receipts.len(), 1);
        receipts.into_iter().next().ok_or_else(|| {
            Error::Storage(StorageError::Corrupt { what: "write batch", detail: "one write gave no receipt".into() })
        })
    }

    /// Commits several writes in one durable batch; returns one receipt per write, in order.
    /// Validates every write first: if one is invalid, none is made.
    pub fn write(&mut self, batch: WriteBatch) -> Result<Vec<WriteReceipt>> {
        let limits = self.config.limits;
        for op in &batch.ops {
            match op {
                WriteOp::Put { key, value, options } => {
                    limits.check_key(key)?;
                    limits.check_value(value, options.metadata.as_deref())?;
                    if options.ttl_ms.is_some_and(|t| t == 0 || t > HLC_WALL_MS_MAX) {
                        return Err(Error::TtlOutOfRange { ttl_ms: options.ttl_ms.unwrap_or_default() });
                    }
                }
                WriteOp::Delete { key } => limits.check_key(key)?,
            }
        }
        self.check_not_recovering()?;
        self.check_local_clock()?;
        let wall_ms = self.now_ms();
        let mut clock = self.clock;
        let mut seq = self.vector.get(self.id);
        let mut store_batch = Batch::new();
        let mut receipts = Vec::with_capacity(batch.ops.len());
        for op in batch.ops {
            let stamp = Stamp { hlc: clock.now(wall_ms), replica: self.id };
            seq = seq.next();
            let (key, payload) = match op {
                WriteOp::Put { key, value, options } => {
                    let expires_at_ms = options.ttl_ms.map(|t| stamp.hlc.wall_ms().saturating_add(t));
                    (key, Payload::Value(Value { bytes: value, expires_at_ms, metadata: options.metadata }))
                }
                WriteOp::Delete { key } => (key, Payload::Tombstone),
            };
            store_batch.put(Entry::own(key, stamp, seq, payload));
            receipts.push(WriteReceipt { dot: Dot { replica: self.id, seq }, stamp });
        }
        let mut vector = self.vector.clone();
        vector.advance(self.id, seq);
        store_batch.set_meta(Meta::Vector, encode_vector(&vector));
        store_batch.set_meta(Meta::Clock, encode_clock(clock.last()));
        let first = self.vector.get(self.id).next();
        let device = self.note_device_writes(first, &mut store_batch);
        self.commit(&store_batch)?;
        self.vector = vector;
        self.clock = clock;
        if let Some(state) = device {
            self.device = state;
        }
        Ok(receipts)
    }

    /// Whether this replica's write `seq` is covered by `peer_vector` (the peer has it, or has
    /// something that superseded it).
    #[must_use]
    pub fn is_acknowledged(&self, seq: Seq, peer_vector: &VersionVector) -> bool {
        peer_vector.covers(Dot { replica: self.id, seq })
    }

    /// The live value of `key`, or `None` if it is absent, deleted or expired.
    pub fn get(&self, key: &[u8]) -> Result<Option<Item>> {
        let now_ms = self.now_ms();
        Ok(self.store.snapshot()?.entry(key)?.and_then(|e| Item::from_live(e, now_ms)))
    }

    /// Live keys in `range`, in key order, at most `limit` of them.
    pub fn scan(&self, range: &KeyRange, limit: usize) -> Result<Vec<Item>> {
        let now_ms = self.now_ms();
        let mut items = Vec::new();
        if limit == 0 {
            return Ok(items);
        }
        self.store.snapshot()?.scan_keys(range, &mut |entry| {
            if let Some(item) = Item::from_live(entry, now_ms) {
                items.push(item);
                if items.len() >= limit {
                    return ControlFlow::Break(());
                }
            }
            ControlFlow::Continue(())
        })?;
        Ok(items)
    }

    /// Counts live values, tombstones and expired records (a value whose TTL passed counts as
    /// expired before it is purged), from the in-memory index: no store scan, so a status poll
    /// costs nothing however large the store.
    #[must_use]
    pub fn counts(&self) -> Counts {
        let passed = self.index.expired_unpurged(self.now_ms()) as u64;
        let tombstones = self.index.tombstone_count() as u64;
        Counts {
            live: self.index.live.len() - passed,
            tombstones,
            expired: self.index.dead_count() as u64 - tombstones + passed,
        }
    }

    /// What a peer whose vector is `peer` is missing (see [`Delta`]). Reads one snapshot and walks
    /// the dot index from `peer`'s seq for each writer that has stored entries beyond it (the
    /// index knows each writer's highest seq), so the cost follows the changes, not the store or
    /// the number of writers. A peer that does not cover this replica's bootstrap (whose entries
    /// have no dot-index rows, [`Meta::Unindexed`]) gets its delta from the in-memory index, in
    /// time linear in the store.
    pub fn delta_for(&self, peer: &VersionVector) -> Result<Delta> {
        let now_ms = self.now_ms();
        let snap = self.store.snapshot()?;
        let keys = self.delta_keys(&snap, peer)?;
        let mut entries = Vec::with_capacity(keys.len());
        for key in keys {
            let entry = snap.entry(&key)?.ok_or_else(|| StorageError::Corrupt {
                what: "dot index",
                detail: format!("names key {key:?}, which has no entry"),
            })?;
            entries.push(entry.settled_at(now_ms));
        }
        Ok(Delta { entries, vector: self.vector.clone(), clock: self.clock.last() })
    }

    /// The keys of [`Replica::delta_for`]'s entries, as `snap` (this replica's current state)
    /// holds them: a session reads their entries chunk by chunk.
    pub(crate) fn delta_keys(&self, snap: &impl Snapshot, peer: &VersionVector) -> Result<Vec<Vec<u8>>> {
        Ok(if peer.dominates(&self.unindexed) {
            let mut keys = Vec::new();
            for r in self.index.writers_beyond(peer) {
                let start = Dot { replica: r, seq: peer.get(r).next() };
                snap.scan_dots(start, Dot { replica: r, seq: Seq(u64::MAX) }, &mut |_, key| {
                    keys.push(key.to_vec());
                    ControlFlow::Continue(())
                })?;
            }
            keys
        } else {
            self.index.keys_beyond(peer)
        })
    }

    /// The tombstones and expired records whose dots `peer` does not cover: the compact records
    /// a bootstrap or reconciliation sends first. Their number is bounded by the deletes of one
    /// GC interval, not by the deletion history.
    pub fn dead_entries_beyond(&self, peer: &VersionVector) -> Result<Vec<Entry>> {
        let snap = self.store.snapshot()?;
        let mut entries = Vec::new();
        for key in self.index.dead_beyond(peer) {
            if let Some(e) = snap.entry(&key)? {
                entries.push(e);
            }
        }
        Ok(entries)
    }

    /// Applies entries from a peer. With `sender` (a complete transfer: every entry the sender
    /// holds beyond this replica's vector, then the sender's vector and clock, as in [`Delta`]),
    /// the sender's vector is merged afterwards and its clock observed; without it (a partial
    /// transfer), only the entries are applied.
    ///
    /// The batch is validated whole before anything is applied: sizes, dots, and every stamp
    /// (and the sender's clock) against `max_drift_ms`. Any failure rejects the whole batch and
    /// leaves the store unchanged.
    pub fn apply_remote(&mut self, entries: Vec<Entry>, sender: Option<(&VersionVector, Hlc)>) -> Result<ApplyReport> {
        self.apply_entries(entries, sender, false, false)
    }

    /// [`Replica::apply_remote`] on a device, of a partial transfer from a member not behind it:
    /// an entry whose dot this device's vector covers is taken by LWW alone (see the rule in
    /// `apply_entries`).
    pub(crate) fn apply_from_member(&mut self, entries: Vec<Entry>) -> Result<ApplyReport> {
        self.apply_entries(entries, None, false, self.is_device())
    }

    /// [`Replica::apply_remote`] for a chunk of a bootstrap into this (empty) replica: the
    /// entries are stored without dot-index rows ([`Op::PutDeferred`]), because a bootstrap's
    /// dots come in random order and inserting them so into a B-tree rewrites most of it on
    /// every commit. The same batch widens [`Meta::Unindexed`] to cover their dots; a delta for a
    /// peer that does not cover it is read from the in-memory index instead of the dot index
    /// ([`Replica::delta_for`]). Peers that synced past the bootstrap's snapshot (the source
    /// first of all) get deltas from the dot index as usual.
    pub(crate) fn apply_bootstrap_chunk(&mut self, entries: Vec<Entry>) -> Result<ApplyReport> {
        self.apply_entries(entries, None, true, false)
    }

    fn apply_entries(
        &mut self,
        entries: Vec<Entry>,
        sender: Option<(&VersionVector, Hlc)>,
        defer_dots: bool,
        take_covered: bool,
    ) -> Result<ApplyReport> {
        let wall_ms = self.now_ms();
        let sender_vector = sender.map(|(v, _)| v);
        self.validate_remote(&entries, sender_vector, wall_ms)?;
        if let Some((_, sender_clock)) = sender
            && let Err(err) = self.clock.check(sender_clock, wall_ms)
        {
            self.drift_rejections += 1;
            return Err(err);
        }
        let snap = self.store.snapshot()?;
        let mut report = ApplyReport::default();
        // Winners so far in this batch, so that two versions of a key in one batch merge too.
        let mut winners: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut clock = self.clock;
        for entry in entries {
            clock.observe(entry.stamp.hlc, wall_ms)?;
            let entry = entry.settled_at(wall_ms);
            let current = match winners.get(&entry.key) {
                Some(e) => Some(e.clone()),
                // The index mirrors the store: a key it does not know has no entry to read.
                None if self.index.dot_of(&entry.key).is_none() => None,
                None => snap.entry(&entry.key)?,
            };
            match current {
                // On a device: its own write, queued or answered as known, arriving numbered by
                // a member: the member's copy replaces the one under the upload seq.
                Some(cur)
                    if cur.dot.replica == self.id
                        && entry.dot.replica != self.id
                        && cur.stamp == entry.stamp
                        && cur.payload.is_copy_of(&entry.payload)
                        && self.is_device() =>
                {
                    report.applied += 1;
                    winners.insert(entry.key.clone(), entry);
                }
                Some(cur) if cur.dot() == entry.dot() && !entry.wins_over(&cur) => report.superseded += 1,
                // A covered dot this replica no longer holds was replaced or collected here. A
                // device takes the word of a member not behind it all the same (`take_covered`,
                // by LWW alone): it cannot make the member drop it (I10), and converges to what
                // members hold.
                Some(cur) if cur.dot() != entry.dot() && self.vector.covers(entry.dot()) && !take_covered => {
                    report.stale += 1;
                }
                None if self.vector.covers(entry.dot()) && !take_covered => report.stale += 1,
                Some(cur) if !entry.wins_over(&cur) => report.superseded += 1,
                _ => {
                    report.applied += 1;
                    winners.insert(entry.key.clone(), entry);
                }
            }
        }
        let mut vector = self.vector.clone();
        let mut recovered = None;
        if let Some((sender_vector, sender_clock)) = sender {
            vector.merge(sender_vector);
            recovered = self.settle_recovery(&mut vector);
            // Every write the merged vector covers is now causally before this replica's next
            // write, including writes it will never receive (collected at the sender): its
            // clock goes past them, or a later write here could lose to one of them in LWW.
            clock.observe(sender_clock, wall_ms)?;
            report.vector_merged = true;
        }
        if winners.is_empty() && vector == self.vector && clock == self.clock {
            return Ok(report);
        }
        let mut batch = Batch::new();
        if let Some(meta) = &recovered {
            batch.set_meta(Meta::Restore, meta.clone());
        }
        let mut unindexed = self.unindexed.clone();
        // Rows left out while `write_deferred_rows` works through its list join the list.
        let mut late = Vec::new();
        for entry in winners.into_values() {
            if defer_dots {
                unindexed.advance(entry.dot.replica, entry.dot.seq);
                if self.unindexed_rows.is_some() {
                    late.push((entry.dot(), entry.key.clone()));
                }
                batch.put_deferred(entry);
            } else {
                batch.put(entry);
            }
        }
        if unindexed != self.unindexed {
            batch.set_meta(Meta::Unindexed, encode_vector(&unindexed));
        }
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Clock, encode_clock(clock.last()));
        self.commit(&batch)?;
        if let Some(rows) = self.unindexed_rows.as_mut() {
            rows.late.extend(late);
        }
        self.unindexed = unindexed;
        self.vector = vector;
        self.clock = clock;
        if recovered.is_some() {
            self.recovery = None;
        }
        Ok(report)
    }

    /// Writes up to `max_rows` of the dot-index rows a bootstrap left out ([`Meta::Unindexed`]),
    /// in dot order, in one commit; returns whether any are left. Until they are all written,
    /// a delta for a peer below the bootstrap's vector is read from memory in time linear in
    /// the store, so a node calls this when idle. It does nothing while a bootstrap is still
    /// arriving (its vector not merged yet): rows written then would land between the dots of
    /// chunks still to come, in random order again.
    ///
    /// The list of rows is taken from the index at the first call; entries stored without a row
    /// after that (a second bootstrap into the same replica, from another peer) join it, so
    /// [`Meta::Unindexed`] is cleared only once every stored entry has its row.
    pub fn write_deferred_rows(&mut self, max_rows: usize) -> Result<bool> {
        if self.unindexed.is_empty() {
            return Ok(false);
        }
        if !self.deferred_rows_writable() {
            return Ok(true);
        }
        let unindexed = &self.unindexed;
        let index = &self.index;
        let rows = self.unindexed_rows.get_or_insert_with(|| DeferredRows {
            listed: index.dots_within(unindexed).into_iter(),
            late: BTreeMap::new(),
        });
        let mut batch = Batch::new();
        for (dot, key) in std::iter::from_fn(|| rows.next()).take(max_rows) {
            // Still that key's entry (a later write replaced or removed it, with its own row)?
            if index.dot_of(&key) == Some(dot) {
                batch.index_dot(dot, key);
            }
        }
        let finished = rows.is_empty();
        if finished {
            batch.set_meta(Meta::Unindexed, encode_vector(&VersionVector::new()));
        }
        if let Err(e) = self.commit(&batch) {
            // The rows taken for this batch are not written: list them again next time.
            self.unindexed_rows = None;
            return Err(e);
        }
        if finished {
            self.unindexed = VersionVector::new();
            self.unindexed_rows = None;
        }
        Ok(!finished)
    }

    /// Whether entries are stored without their dot-index rows ([`Meta::Unindexed`]), written
    /// or not yet writable by [`Replica::write_deferred_rows`].
    #[must_use]
    pub fn deferred_rows_pending(&self) -> bool {
        !self.unindexed.is_empty()
    }

    /// Whether [`Replica::write_deferred_rows`] would write now: rows are left out and the
    /// bootstrap that left them out is done.
    #[must_use]
    pub fn deferred_rows_writable(&self) -> bool {
        !self.unindexed.is_empty() && self.vector.dominates(&self.unindexed)
    }

    fn validate_remote(
        &mut self,
        entries: &[Entry],
        sender_vector: Option<&VersionVector>,
        wall_ms: u64,
    ) -> Result<()> {
        let own = self.own_counter();
        let me = self.id;
        let own_ahead = |seq: Seq| Error::OwnWriteFromTheFuture { replica: me, seq, own };
        for entry in entries {
            self.config.limits.check_entry(entry)?;
            if entry.dot.seq == Seq(0) {
                return Err(Error::ZeroSeq { dot: entry.dot() });
            }
        }
        // The dot's replica, not the stamp's: a device's write admitted here has this replica's
        // dot and the device's stamp.
        let claimed = entries
            .iter()
            .filter(|e| e.dot.replica == self.id)
            .map(|e| e.dot.seq)
            .fold(sender_vector.map_or(Seq(0), |v| v.get(self.id)), Seq::max);
        if claimed > own {
            // A member holds writes of this replica beyond its counter (entries it holds without
            // its vector covering them, from a partial transfer, show in no handshake): this
            // store is an older copy (`replica/restore.rs`). The recovery begins; entries alone
            // are applied (the originals it lost), a vector computed against the old one is not.
            // No transfer may ever bring the vector to what was held beyond it: the recovery
            // waits, as for a device's evidence, for every member to be heard from instead.
            self.notice_own_seq_held(claimed)?;
            if sender_vector.is_some() {
                return Err(own_ahead(claimed));
            }
        }
        if let Some(err) = entries.iter().find_map(|e| self.clock.check(e.stamp.hlc, wall_ms).err()) {
            self.drift_rejections += 1;
            return Err(err);
        }
        Ok(())
    }

    /// Drops the bytes of every value whose TTL has passed, keeping its stamp and dot as an
    /// `Expired` record. Writes no delete, issues no dot, sends nothing. Returns how many values
    /// were purged.
    ///
    /// Cost follows what expired: the index keeps values with a TTL in expiry order.
    pub fn purge_expired(&mut self) -> Result<usize> {
        let now_ms = self.now_ms();
        let keys = self.index.expired_keys(now_ms);
        for chunk in keys.chunks(PURGE_BATCH_ENTRIES) {
            let snap = self.store.snapshot()?;
            let mut batch = Batch::new();
            for key in chunk {
                if let Some(entry) = snap.entry(key)? {
                    batch.put(entry.settled_at(now_ms));
                }
            }
            drop(snap);
            self.commit(&batch)?;
        }
        Ok(keys.len())
    }
}

/// A store whose dot index holds own writes beyond its vector was written by something that did
/// not keep the two in step: refuse it rather than reissue those dots.
fn check_own_writes_covered(snap: &impl Snapshot, id: ReplicaId, counter: Seq) -> Result<()> {
    let mut beyond = None;
    let from = Dot { replica: id, seq: counter.next() };
    snap.scan_dots(from, Dot { replica: id, seq: Seq(u64::MAX) }, &mut |dot, _| {
        beyond = Some(dot);
        ControlFlow::Break(())
    })?;
    match beyond {
        Some(dot) => Err(Error::Storage(StorageError::Corrupt {
            what: "version vector",
            detail: format!("own write {dot} is stored but the own counter is at {counter}"),
        })),
        None => Ok(()),
    }
}

/// A member's device table as its store holds it.
pub(crate) fn load_devices(snap: &impl Snapshot) -> Result<Devices> {
    let mut records = BTreeMap::new();
    let mut failed = None;
    snap.scan_devices(&mut |id, bytes| match decode_cbor::<DeviceRecord>("device record", bytes) {
        Ok(r) => {
            records.insert(ReplicaId(id), r);
            ControlFlow::Continue(())
        }
        Err(e) => {
            failed = Some(e);
            ControlFlow::Break(())
        }
    })?;
    if let Some(e) = failed {
        return Err(e.into());
    }
    Ok(Devices::load(records))
}

/// What a store holds durably besides its entries, and the index of those: what a replica
/// resumes from when it opens, and again when its store is reopened after a failure.
struct Durable {
    vector: VersionVector,
    clock: Hlc,
    membership: Membership,
    checkpoint: Option<Checkpoint>,
    unindexed: VersionVector,
    index: KeyIndex,
    recovery: Option<Recovery>,
    lost_own: Vec<(Seq, Seq)>,
    lost_others: lost::LostOthers,
    device: DeviceState,
    devices: Devices,
    records_seen: crate::device::records::RecordsSeen,
}

impl Durable {
    /// The last own seq issued: the vector's own component, or a recovery's counter.
    fn counter(&self, id: ReplicaId) -> Seq {
        self.recovery.map_or(self.vector.get(id), |r| r.counter.max(self.vector.get(id)))
    }

    /// Reads it from the store of replica `id` (checked to be `id`'s by the caller).
    fn read(snap: &impl Snapshot, id: ReplicaId) -> Result<Durable> {
        let vector = snap.meta(Meta::Vector)?.map(|b| decode_vector(&b)).transpose()?.unwrap_or_default();
        let clock = snap.meta(Meta::Clock)?.map(|b| decode_clock(&b)).transpose()?.unwrap_or_default();
        let recovery = restore::load_recovery(snap)?;
        let counter = recovery.map_or(vector.get(id), |r| r.counter.max(vector.get(id)));
        check_own_writes_covered(snap, id, counter)?;
        let membership: Option<Membership> =
            snap.meta(Meta::Members)?.map(|b| decode_cbor("membership", &b)).transpose()?;
        let checkpoint: Option<Option<Checkpoint>> =
            snap.meta(Meta::Checkpoint)?.map(|b| decode_cbor("checkpoint", &b)).transpose()?;
        Ok(Durable {
            vector,
            clock,
            membership: membership.unwrap_or_default(),
            checkpoint: checkpoint.flatten(),
            unindexed: snap.meta(Meta::Unindexed)?.map(|b| decode_vector(&b)).transpose()?.unwrap_or_default(),
            index: KeyIndex::load(snap)?,
            recovery,
            lost_own: restore::load_lost(snap)?,
            lost_others: lost::load_lost_others(snap)?,
            device: DeviceState::load(snap)?,
            devices: load_devices(snap)?,
            records_seen: snap
                .meta(Meta::RecordsSeen)?
                .map(|b| decode_cbor("records seen", &b))
                .transpose()?
                .unwrap_or_default(),
        })
    }
}

mod recovery;
pub use recovery::StoreFailure;

mod clock;
mod import;
mod lost;
mod restore;
#[cfg(test)]
mod tests;

pub(crate) use clock::HeldBack;
pub use clock::{PEER_CLOCK_FRESH_MS, PEER_CLOCK_SLACK_MS, PEER_CLOCKS_MAX};
pub use import::ImportError;
pub use lost::{HELLO_LOST_STATEMENTS_MAX, LOST_STATEMENTS_MAX, LostStatement};
pub use restore::{LOST_RANGES_MAX, RESTORE_SEQ_GAP_MAX, Recovery, in_lost_ranges};
