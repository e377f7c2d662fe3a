//! The replica's in-memory view of its store: every stored entry is in exactly one of
//! - `live`: values not yet purged (live, or expired but not purged), with range fingerprints;
//! - `dead`: tombstones and expired records, by dot and by key, for collection.
//!
//! plus `expiring`: the values with a TTL, by expiry time, so a purge touches only what expired.
//!
//! Rebuilt from a snapshot at open, then updated from each committed batch, so it always mirrors
//! the store (checked against a scan in tests).

use crate::entry::{Entry, Payload};
use crate::error::StorageError;
use crate::fingerprint::{LiveIndex, LiveItem};
use crate::ids::{Dot, ReplicaId, Seq};
use crate::storage::{Batch, KeyRange, Op, Snapshot};
use crate::vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet};
use std::ops::ControlFlow;

#[derive(Debug, Default)]
pub(crate) struct KeyIndex {
    pub(crate) live: LiveIndex,
    dead_by_dot: BTreeMap<Dot, Vec<u8>>,
    /// Each dead record's dot, and whether it is a tombstone (else an expired record).
    dead_by_key: BTreeMap<Vec<u8>, (Dot, bool)>,
    /// How many dead records are tombstones.
    tombstones: usize,
    expiring: BTreeSet<(u64, Vec<u8>)>,
    /// The highest seq of each writer with an entry stored here (never lowered: an upper
    /// bound), so a delta scans the dot index only for writers that may have news.
    max_seq: BTreeMap<ReplicaId, Seq>,
}

impl KeyIndex {
    pub(crate) fn load(snap: &impl Snapshot) -> Result<KeyIndex, StorageError> {
        let mut index = KeyIndex::default();
        snap.scan_keys(&KeyRange::all(), &mut |e| {
            index.put(&e);
            ControlFlow::Continue(())
        })?;
        Ok(index)
    }

    /// The dot of the entry stored for `key`, if any.
    pub(crate) fn dot_of(&self, key: &[u8]) -> Option<Dot> {
        match self.live.get(key) {
            Some(item) => Some(item.dot()),
            None => self.dead_by_key.get(key).map(|(dot, _)| *dot),
        }
    }

    /// Forgets `key`'s dead record, or, if `old` (the live item just removed or replaced) had
    /// a TTL, its expiry.
    fn forget_old(&mut self, key: &[u8], old: Option<LiveItem>) {
        match old {
            Some(old) => {
                if let Some(t) = old.expires_at_ms {
                    self.expiring.remove(&(t, key.to_vec()));
                }
            }
            None => {
                if let Some((dot, tombstone)) = self.dead_by_key.remove(key) {
                    self.dead_by_dot.remove(&dot);
                    self.tombstones -= usize::from(tombstone);
                }
            }
        }
    }

    fn forget(&mut self, key: &[u8]) {
        let old = self.live.remove(key);
        self.forget_old(key, old);
    }

    pub(crate) fn put(&mut self, e: &Entry) {
        let top = self.max_seq.entry(e.dot.replica).or_default();
        *top = (*top).max(e.dot.seq);
        match &e.payload {
            Payload::Value(v) => {
                // One walk down the treap: insert or replace.
                let item = LiveItem { stamp: e.stamp, dot: e.dot, expires_at_ms: v.expires_at_ms };
                let old = self.live.insert(&e.key, item);
                self.forget_old(&e.key, old);
                if let Some(t) = v.expires_at_ms {
                    self.expiring.insert((t, e.key.clone()));
                }
            }
            Payload::Expired { .. } | Payload::Tombstone => {
                self.forget(&e.key);
                self.dead_by_dot.insert(e.dot(), e.key.clone());
                let tombstone = matches!(e.payload, Payload::Tombstone);
                self.dead_by_key.insert(e.key.clone(), (e.dot(), tombstone));
                self.tombstones += usize::from(tombstone);
            }
        }
    }

    /// Mirrors a committed batch.
    pub(crate) fn apply(&mut self, batch: &Batch) {
        for op in &batch.ops {
            match op {
                Op::Put(e) | Op::PutDeferred(e) => self.put(e),
                Op::Remove(key) => self.forget(key),
                Op::SetMeta(..) | Op::IndexDot(..) | Op::SetDevice(..) | Op::RemoveDevice(_) => {}
            }
        }
    }

    /// Keys of values whose TTL passed at `now_ms`, in expiry order.
    pub(crate) fn expired_keys(&self, now_ms: u64) -> Vec<Vec<u8>> {
        self.expiring.range(..(now_ms.saturating_add(1), Vec::new())).map(|(_, k)| k.clone()).collect()
    }

    /// Keys of tombstones and expired records whose dot `frontier` covers.
    pub(crate) fn dead_covered_by(&self, frontier: &VersionVector) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        for (replica, seq) in frontier.iter() {
            let from = Dot { replica, seq: Seq(0) };
            let to = Dot { replica, seq };
            keys.extend(self.dead_by_dot.range(from..=to).map(|(_, k)| k.clone()));
        }
        keys
    }

    /// Writers that may have entries stored here beyond `peer`'s vector.
    pub(crate) fn writers_beyond<'a>(&'a self, peer: &'a VersionVector) -> impl Iterator<Item = ReplicaId> + 'a {
        self.max_seq.iter().filter(|(r, top)| **top > peer.get(**r)).map(|(r, _)| *r)
    }

    /// Number of tombstones and expired records.
    pub(crate) fn dead_count(&self) -> usize {
        self.dead_by_dot.len()
    }

    /// The keys of the stored entries whose dots `peer` does not cover, in dot order: a delta
    /// from memory, for when the dot index lacks rows (see [`Meta::Unindexed`]).
    ///
    /// [`Meta::Unindexed`]: crate::storage::Meta::Unindexed
    pub(crate) fn keys_beyond(&self, peer: &VersionVector) -> Vec<Vec<u8>> {
        let mut dots = Vec::new();
        self.live.for_each_in(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, &mut |key, item, _| {
            if !peer.covers(item.dot()) {
                dots.push((item.dot(), key.to_vec()));
            }
        });
        dots.extend(
            self.dead_by_dot.iter().filter(|(dot, _)| !peer.covers(**dot)).map(|(dot, key)| (*dot, key.clone())),
        );
        dots.sort_unstable_by_key(|(dot, _)| *dot);
        dots.into_iter().map(|(_, key)| key).collect()
    }

    /// The stored entries whose dots `within` covers, with their keys, in dot order.
    pub(crate) fn dots_within(&self, within: &VersionVector) -> Vec<(Dot, Vec<u8>)> {
        let mut rows: Vec<(Dot, Vec<u8>)> =
            self.dead_by_dot.iter().filter(|(d, _)| within.covers(**d)).map(|(d, k)| (*d, k.clone())).collect();
        self.live.for_each_in(std::ops::Bound::Unbounded, std::ops::Bound::Unbounded, &mut |key, item, _| {
            if within.covers(item.dot()) {
                rows.push((item.dot(), key.to_vec()));
            }
        });
        rows.sort_unstable_by_key(|(dot, _)| *dot);
        rows
    }

    /// Number of tombstones.
    pub(crate) fn tombstone_count(&self) -> usize {
        self.tombstones
    }

    /// Number of values whose TTL passed at `now_ms` that are not purged yet.
    pub(crate) fn expired_unpurged(&self, now_ms: u64) -> usize {
        self.expiring.range(..(now_ms.saturating_add(1), Vec::new())).count()
    }

    /// Keys in `range` of the dead records (tombstones, expired records) and of the values
    /// whose TTL passed at `now_ms` but are not purged yet, in key order, at most `limit`: what an
    /// export lists besides the live values. Costs O(log n + limit) for the dead records plus one
    /// pass over the values that expired and wait for their purge (bounded by one GC interval).
    pub(crate) fn dead_keys_in(&self, range: &KeyRange, now_ms: u64, limit: usize) -> Vec<Vec<u8>> {
        let mut keys: BTreeSet<Vec<u8>> = self
            .expiring
            .range(..(now_ms.saturating_add(1), Vec::new()))
            .filter(|(_, k)| range.contains(k))
            .map(|(_, k)| k.clone())
            .collect();
        // From the start bound on, stopping at the end bound (a range whose bounds cross is
        // empty, never a panic).
        let from = (range.start.clone(), std::ops::Bound::Unbounded);
        for key in self.dead_by_key.range::<Vec<u8>, _>(from).map(|(k, _)| k) {
            if !range.contains(key) || (keys.len() >= limit && keys.last().is_some_and(|last| key > last)) {
                break;
            }
            keys.insert(key.clone());
        }
        keys.into_iter().take(limit).collect()
    }

    /// Tombstones and expired records whose dot `peer` does not cover, as (dot, key).
    pub(crate) fn dead_beyond(&self, peer: &VersionVector) -> Vec<Vec<u8>> {
        let mut keys = Vec::new();
        let mut writer = Some(ReplicaId(0));
        while let Some(from) = writer {
            let Some((first, _)) = self.dead_by_dot.range(Dot { replica: from, seq: Seq(0) }..).next() else { break };
            let r = first.replica;
            // A peer's vector may claim `u64::MAX`: then nothing of `r` lies beyond it.
            if let Some(seq) = peer.get(r).checked_next() {
                let (start, end) = (Dot { replica: r, seq }, Dot { replica: r, seq: Seq(u64::MAX) });
                keys.extend(self.dead_by_dot.range(start..=end).map(|(_, k)| k.clone()));
            }
            writer = r.0.checked_add(1).map(ReplicaId);
        }
        keys
    }
}
