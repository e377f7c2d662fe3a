//! Import: entries loaded from an export (`lethe export`, then `lethe import`), either as this
//! replica's own writes that keep each entry's time ([`Replica::import`]), or, for a full export
//! into a blank replica, as a bootstrap from the export's source (below).
//!
//! With [`Replica::import`], each imported entry becomes a write of this replica under a fresh dot of its own, with the
//! entry's key, payload (value, metadata, expiry) and HLC time, and this replica as the stamp's
//! writer (a stamp and its dot name the same writer). So an import is an ordinary write: the
//! vector covers it, deltas and live pushes carry it once, and nothing of another writer's dot
//! space is touched. (Applying entries under their original dots was tried: no vector ever
//! covered them, so every push resent them; an entry beyond its live writer's counter cut that
//! writer off; and two lines with one dot shared a dot-index row. A bootstrap import avoids all
//! three: the source's vector covers the entries, a blank replica has no live counter of theirs,
//! and a reused dot is refused.)
//!
//! - LWW order is kept as far as a stamp can: an imported entry loses to anything stored for
//!   its key with a later stamp (the key's entry stays as it is), and the HLC moves past the
//!   imported times, so a later write here wins over them;
//! - a batch is validated entry by entry (sizes, a seq of zero, a stamp beyond the drift bound)
//!   and one bad entry refuses the whole batch, naming it, with the store unchanged;
//! - refused while a restore recovery runs, as every local write is.
//!
//! A **full export loaded into a blank replica** (no entry, an empty vector: a fresh node) is
//! applied instead as a bootstrap from the export's source is: [`Replica::import_as_bootstrap`]
//! stores each batch's entries under their own dots and stamps, as the chunks of a bootstrap
//! are, and [`Replica::finish_import_as_bootstrap`] then merges the source's vector and observes
//! its clock, as a complete transfer's `Done` does. The replica then holds what the source held,
//! entry for entry, so their digests are equal and the vector covers every entry, as after a
//! bootstrap. The vector must be the one the source held *before* its entries were listed: then
//! every dot it covers was written before the listing began, so the listing shows that write or
//! a later one of its key, or the key is dead at the source (and the merged vector says so).
//! Only a blank replica may claim another's vector: one that holds a key the source deleted
//! would keep it live under a covered dot and never be sent the tombstone.

use super::{ApplyReport, Replica};
use crate::entry::Entry;
use crate::error::Error;
use crate::hlc::{Hlc, Stamp};
use crate::ids::Dot;
use crate::limits::{VECTOR_COMPONENTS_MAX, merged_components};
use crate::storage::{Batch, KeyRange, Meta, Snapshot, Storage, encode_clock, encode_vector};
use crate::vector::VersionVector;
use std::collections::{BTreeMap, BTreeSet};

/// Why [`Replica::import`] refused a batch. Nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Entry `index` of the batch would not pass (too large, a seq of zero, a stamp beyond the
    /// clock's drift bound).
    #[error("entry {index} ({dot}): {source}")]
    Invalid {
        /// Its position in the batch, from 0.
        index: usize,
        /// Its dot in the export.
        dot: Dot,
        /// What is wrong with it.
        source: Error,
    },
    /// The batch was valid but could not be written (a restore recovery runs, or the store
    /// failed).
    #[error("writing the import: {0}")]
    Apply(#[source] Error),
    /// A bootstrap import ([`Replica::import_as_bootstrap`]) was asked of a replica that is not
    /// blank, or stopped being blank meanwhile (a local write, or a complete sync with a peer).
    #[error("this replica is not blank ({why}), so it cannot take the export's dots and vector")]
    NotBlank {
        /// What it holds or has seen.
        why: String,
    },
    /// Entry `index` of a bootstrap import is a write of this replica's own: taking its dot
    /// would run ahead of this replica's counter.
    #[error("entry {index} ({dot}) is a write of this replica itself, beyond its counter")]
    OwnWrite {
        /// Its position in the batch, from 0.
        index: usize,
        /// Its dot.
        dot: Dot,
    },
    /// The export's vector covers writes of this replica itself, up to `seq`, beyond its
    /// counter: the export came from an earlier store of this identity.
    #[error("the export's vector covers writes of this replica itself up to seq {seq}, beyond its counter")]
    OwnVector {
        /// This replica's component in the export's vector.
        seq: crate::ids::Seq,
    },
    /// Entry `index` of a bootstrap import has a dot already taken by another key (in the store
    /// or earlier in the batch): a dot names one write.
    #[error("entry {index} has dot {dot}, which another entry of the import already has")]
    DotReused {
        /// Its position in the batch, from 0.
        index: usize,
        /// Its dot.
        dot: Dot,
    },
    /// The export's vector would give this replica more components than
    /// [`VECTOR_COMPONENTS_MAX`].
    #[error("the export's vector has {components} components, more than {VECTOR_COMPONENTS_MAX}")]
    VectorTooLarge {
        /// Components after the merge.
        components: usize,
    },
}

impl ImportError {
    /// The position in the batch of the entry that refused it, if one did.
    #[must_use]
    pub fn index(&self) -> Option<usize> {
        match self {
            ImportError::Invalid { index, .. }
            | ImportError::OwnWrite { index, .. }
            | ImportError::DotReused { index, .. } => Some(*index),
            _ => None,
        }
    }
}

impl<S: Storage> Replica<S> {
    /// Writes `entries` (from an export of this or another replica) as this replica's own
    /// writes, in one durable commit: each under a fresh dot, with its key, payload and HLC time
    /// and this replica as writer (see the module docs). An entry whose key holds a later stamp
    /// here, or a later entry of the same batch, is counted as superseded and not written; one
    /// that is not a live value (expired already, or a tombstone) as stale.
    ///
    /// Every entry is checked first, and the first that fails refuses the batch whole
    /// ([`ImportError`] names its index). Costs one pass over the batch and one read per key.
    pub fn import(&mut self, entries: Vec<Entry>) -> Result<ApplyReport, ImportError> {
        let wall_ms = self.now_ms();
        for (index, entry) in entries.iter().enumerate() {
            self.check_imported(index, entry, wall_ms)?;
        }
        self.check_not_recovering().map_err(ImportError::Apply)?;
        // The latest entry per key in the batch, then against what is stored.
        let mut latest: BTreeMap<Vec<u8>, Entry> = BTreeMap::new();
        let mut superseded = 0;
        for entry in entries {
            match latest.get(&entry.key) {
                Some(kept) if kept.stamp.hlc >= entry.stamp.hlc => superseded += 1,
                Some(_) => {
                    superseded += 1;
                    latest.insert(entry.key.clone(), entry);
                }
                None => {
                    latest.insert(entry.key.clone(), entry);
                }
            }
        }
        let snap = self.store().snapshot().map_err(|e| ImportError::Apply(e.into()))?;
        let mut clock = self.clock;
        let mut seq = self.vector.get(self.id);
        let mut batch = Batch::new();
        let (mut applied, mut stale) = (0, 0);
        for (key, entry) in latest {
            // Only live values are imported (an export holds nothing else).
            if !entry.is_live_at(wall_ms) {
                stale += 1;
                continue;
            }
            let stamp = Stamp { hlc: entry.stamp.hlc, replica: self.id };
            let stored = snap.entry(&key).map_err(|e| ImportError::Apply(e.into()))?;
            if stored.is_some_and(|s| s.stamp >= stamp) {
                superseded += 1;
                continue;
            }
            clock.observe(stamp.hlc, wall_ms).map_err(ImportError::Apply)?;
            seq = seq.next();
            batch.put(Entry::own(key, stamp, seq, entry.payload));
            applied += 1;
        }
        drop(snap);
        if applied == 0 {
            return Ok(ApplyReport { stale, superseded, ..ApplyReport::default() });
        }
        let mut vector = self.vector.clone();
        vector.advance(self.id, seq);
        batch.set_meta(Meta::Vector, encode_vector(&vector));
        batch.set_meta(Meta::Clock, encode_clock(clock.last()));
        self.commit(&batch).map_err(ImportError::Apply)?;
        self.vector = vector;
        self.clock = clock;
        Ok(ApplyReport { applied, stale, superseded, vector_merged: false })
    }

    /// The dead records stored in `range`, in key order, at most `limit`: tombstones and expired
    /// records with their stamps and dots, and values whose TTL has passed but that are not purged
    /// yet, as the expired records they have become. What an export lists besides its live
    /// entries, so that a bootstrap import ([`Replica::import_as_bootstrap`]) holds what a network
    /// bootstrap sends first ([`Replica::dead_entries_beyond`] of an empty vector): without them
    /// the importer would take the source's vector, count the deletes' dots as seen, and store
    /// an older write of a deleted key that a third peer sends it as live. Reads one entry per
    /// record; the dead records are bounded by the deletes and expiries of one GC interval.
    pub fn dead_entries(&self, range: &KeyRange, limit: usize) -> crate::error::Result<Vec<Entry>> {
        let now_ms = self.now_ms();
        let snap = self.store().snapshot()?;
        let mut entries = Vec::new();
        for key in self.index.dead_keys_in(range, now_ms, limit) {
            if let Some(entry) = snap.entry(&key)? {
                let entry = entry.settled_at(now_ms);
                debug_assert!(!entry.is_live_at(now_ms), "the index lists only dead records");
                entries.push(entry);
            }
        }
        Ok(entries)
    }

    /// Whether this replica holds nothing and has seen nothing: no entry (live, tombstone or
    /// expired), an empty vector, no bootstrap rows pending. What a fresh node is, and what
    /// [`Replica::import_as_bootstrap`] needs.
    #[must_use]
    pub fn is_blank(&self) -> bool {
        self.blank_or_why(true).is_ok()
    }

    /// `Err(why)` unless blank; with `entries: false`, only the vector is asked about (a later
    /// batch of a bootstrap import finds the entries of the earlier ones).
    fn blank_or_why(&self, entries: bool) -> Result<(), ImportError> {
        let why = if !self.vector.is_empty() {
            format!("its vector is {:?}: it has written or synced", self.vector)
        } else if entries && (!self.index.live.is_empty() || self.index.dead_count() > 0) {
            format!("it holds {} live and {} dead entries", self.index.live.len(), self.index.dead_count())
        } else if entries && !self.unindexed.is_empty() {
            "an interrupted bootstrap left entries".to_string()
        } else {
            return Ok(());
        };
        Err(ImportError::NotBlank { why })
    }

    /// Stores one batch of a full export into a blank replica under the entries' own dots and
    /// stamps, as a bootstrap chunk is (see the module docs): `first` for the first batch, which
    /// needs the replica blank; a later one needs its vector still empty. The vector is not
    /// advanced: [`Replica::finish_import_as_bootstrap`] merges the source's at the end, and until
    /// then the replica is as after an interrupted bootstrap (values under an empty vector, which
    /// the next session reconciles).
    ///
    /// Every entry is checked first, as for [`Replica::import`], and also refused if it is this
    /// replica's own write (its dots would run ahead of the counter) or reuses a dot already
    /// stored for another key, or in the batch. One durable commit; costs one dot-index read per
    /// entry besides what [`Replica::apply_remote`] costs.
    pub fn import_as_bootstrap(&mut self, entries: Vec<Entry>, first: bool) -> Result<ApplyReport, ImportError> {
        self.blank_or_why(first)?;
        let wall_ms = self.now_ms();
        let snap = self.store().snapshot().map_err(|e| ImportError::Apply(e.into()))?;
        let mut dots = BTreeSet::new();
        for (index, entry) in entries.iter().enumerate() {
            self.check_imported(index, entry, wall_ms)?;
            if entry.dot.replica == self.id {
                return Err(ImportError::OwnWrite { index, dot: entry.dot() });
            }
            let held = snap.key_at(entry.dot()).map_err(|e| ImportError::Apply(e.into()))?;
            if !dots.insert(entry.dot()) || held.is_some_and(|k| k != entry.key) {
                return Err(ImportError::DotReused { index, dot: entry.dot() });
            }
        }
        drop(snap);
        self.check_not_recovering().map_err(ImportError::Apply)?;
        self.apply_remote(entries, None).map_err(ImportError::Apply)
    }

    /// Ends a bootstrap import: merges the source's `vector` and observes its `clock` (both read
    /// from the source before its entries were listed), as the `Done` of a complete transfer
    /// does. Needs the vector still empty (nothing written or synced since the import began) and
    /// the merge within [`VECTOR_COMPONENTS_MAX`]; refuses `vector` if it names this replica
    /// (its own writes would be claimed beyond its counter). Changes nothing when it refuses.
    pub fn finish_import_as_bootstrap(
        &mut self,
        vector: &VersionVector,
        clock: Hlc,
    ) -> Result<ApplyReport, ImportError> {
        self.blank_or_why(false)?;
        if vector.get(self.id) > crate::ids::Seq(0) {
            return Err(ImportError::OwnVector { seq: vector.get(self.id) });
        }
        let components = merged_components(&self.vector, vector);
        if components > VECTOR_COMPONENTS_MAX {
            return Err(ImportError::VectorTooLarge { components });
        }
        self.apply_remote(Vec::new(), Some((vector, clock))).map_err(ImportError::Apply)
    }

    /// The checks every imported entry passes: sizes, a seq above zero, a stamp within the drift
    /// bound.
    fn check_imported(&mut self, index: usize, entry: &Entry, wall_ms: u64) -> Result<(), ImportError> {
        let invalid = |source| ImportError::Invalid { index, dot: entry.dot(), source };
        self.config.limits.check_entry(entry).map_err(invalid)?;
        if entry.dot.seq == crate::ids::Seq(0) {
            return Err(invalid(Error::ZeroSeq { dot: entry.dot() }));
        }
        if let Err(e) = self.clock.check(entry.stamp.hlc, wall_ms) {
            self.drift_rejections += 1;
            return Err(invalid(e));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Payload, Value};
    use crate::hlc::{Hlc, ManualClock};
    use crate::ids::{ReplicaId, Seq};
    use crate::replica::{Config, PutOptions};
    use crate::storage::MemoryStore;
    use std::sync::Arc;

    const T0: u64 = 1_700_000_000_000;

    fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
        Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap()
    }

    /// What an export of `r` holds: its live entries as entries.
    fn export(r: &Replica<MemoryStore>) -> Vec<Entry> {
        r.scan(&KeyRange::all(), 1000)
            .unwrap()
            .into_iter()
            .map(|i| Entry {
                key: i.key,
                stamp: i.stamp,
                dot: i.dot,
                payload: Payload::Value(Value { bytes: i.value, expires_at_ms: i.expires_at_ms, metadata: i.metadata }),
            })
            .collect()
    }

    /// What a full export of `r` holds, in the order it lists them: its dead records, then its
    /// live entries.
    fn full_export(r: &Replica<MemoryStore>) -> Vec<Entry> {
        let mut entries = r.dead_entries(&KeyRange::all(), 1000).unwrap();
        entries.extend(export(r));
        entries
    }

    #[test]
    fn a_bootstrap_import_keeps_the_sources_dead_records_as_a_network_bootstrap_does() {
        let clock = ManualClock::new(T0);
        // c writes k, which never reaches a; a then writes k, deletes it, and lets a value expire.
        let mut c = replica(3, &clock);
        c.put("k", "old", PutOptions::default()).unwrap();
        c.put("e", "old", PutOptions::default()).unwrap();
        clock.advance(10);
        let mut a = replica(1, &clock);
        a.put("k", "new", PutOptions::default()).unwrap();
        a.delete("k").unwrap();
        a.put("e", "short", PutOptions { ttl_ms: Some(5), metadata: None }).unwrap();
        a.put("kept", "v", PutOptions::default()).unwrap();
        clock.advance(10);
        let (vector, at) = (a.vector().clone(), a.clock());
        let dead = a.dead_entries(&KeyRange::all(), 1000).unwrap();
        assert_eq!(dead.len(), 2, "the tombstone and the expired value: {dead:?}");
        assert!(dead.iter().all(|e| !e.is_live_at(T0 + 20)));
        assert_eq!(a.dead_entries(&KeyRange::all(), 1).unwrap().len(), 1, "at most `limit`");
        assert_eq!(a.dead_entries(&KeyRange::prefix("k"), 10).unwrap().len(), 1, "only the range's");

        // b by import, n by a network bootstrap from a.
        let mut b = replica(2, &clock);
        b.import_as_bootstrap(full_export(&a), true).unwrap();
        b.finish_import_as_bootstrap(&vector, at).unwrap();
        let mut n = replica(4, &clock);
        crate::session::sync_in_process(&mut a, &mut n, false).unwrap();
        assert_eq!(b.vector(), n.vector());
        assert_eq!(b.counts(), n.counts(), "an import holds what a network bootstrap holds");

        // c's older writes arrive at both: a's delete and a's expired write still win.
        for sink in [&mut b, &mut n] {
            let d = c.delta_for(sink.vector()).unwrap();
            sink.apply_remote(d.entries, Some((&d.vector, d.clock))).unwrap();
            assert_eq!(sink.get(b"k").unwrap(), None, "c's older write of k came back at {}", sink.id());
            assert_eq!(sink.get(b"e").unwrap(), None, "c's older write of e came back at {}", sink.id());
            assert_eq!(sink.get(b"kept").unwrap().map(|i| i.value), Some(b"v".to_vec()));
        }
        assert_eq!(b.digest(), n.digest());
    }

    fn value_entry(key: &str, writer: u64, seq: u64, wall_ms: u64) -> Entry {
        Entry {
            key: key.as_bytes().to_vec(),
            stamp: Stamp { hlc: Hlc::new(wall_ms, 0), replica: ReplicaId(writer) },
            dot: Dot { replica: ReplicaId(writer), seq: Seq(seq) },
            payload: Payload::Value(Value { bytes: b"v".to_vec(), expires_at_ms: None, metadata: None }),
        }
    }

    #[test]
    fn import_keeps_values_metadata_expiry_and_times_as_own_writes() {
        let clock = ManualClock::new(T0);
        let mut source = replica(1, &clock);
        source.put("a", "1", PutOptions { ttl_ms: None, metadata: Some(b"{\"m\":1}".to_vec()) }).unwrap();
        source.put("b", "2", PutOptions { ttl_ms: Some(60_000), metadata: None }).unwrap();
        source.put("c", "3", PutOptions::default()).unwrap();
        source.delete("c").unwrap();
        clock.advance(1_000);
        let mut target = replica(2, &clock);
        let report = target.import(export(&source)).unwrap();
        assert_eq!(report.applied, 2);
        let (mine, theirs) = (target.scan(&KeyRange::all(), 10).unwrap(), source.scan(&KeyRange::all(), 10).unwrap());
        assert_eq!(mine.len(), 2);
        for (m, t) in mine.iter().zip(&theirs) {
            assert_eq!(
                (&m.key, &m.value, &m.metadata, m.expires_at_ms),
                (&t.key, &t.value, &t.metadata, t.expires_at_ms)
            );
            assert_eq!(m.stamp.hlc, t.stamp.hlc, "the write's time is kept");
            assert_eq!((m.stamp.replica, m.dot.replica), (ReplicaId(2), ReplicaId(2)), "written by the importer");
        }
        // Own writes: the vector covers them, and a later write here wins over them.
        assert_eq!(target.vector().get(ReplicaId(2)), Seq(2));
        assert_eq!(target.vector().get(ReplicaId(1)), Seq(0));
        let later = target.put("a", "new", PutOptions::default()).unwrap();
        assert!(later.stamp.hlc > theirs[0].stamp.hlc);
        // Importing again writes nothing: the stored stamps are as late or later.
        let again = target.import(export(&source)).unwrap();
        assert_eq!((again.applied, again.superseded), (0, 2));
        assert_eq!(target.vector().get(ReplicaId(2)), Seq(3));
    }

    #[test]
    fn imported_entries_reach_a_peer_by_delta_once() {
        let clock = ManualClock::new(T0);
        let mut source = replica(1, &clock);
        source.put("a", "1", PutOptions::default()).unwrap();
        source.put("b", "2", PutOptions::default()).unwrap();
        let mut target = replica(2, &clock);
        target.import(export(&source)).unwrap();
        let mut peer = replica(3, &clock);
        let delta = target.delta_for(peer.vector()).unwrap();
        let dots: Vec<Dot> = delta.entries.iter().map(Entry::dot).collect();
        assert_eq!(dots, vec![Dot { replica: ReplicaId(2), seq: Seq(1) }, Dot { replica: ReplicaId(2), seq: Seq(2) }]);
        peer.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
        assert_eq!(peer.scan(&KeyRange::all(), 10).unwrap(), target.scan(&KeyRange::all(), 10).unwrap());
        assert!(target.delta_for(peer.vector()).unwrap().entries.is_empty(), "sent once, then covered");
    }

    #[test]
    fn a_bad_entry_refuses_the_batch_naming_it() {
        let clock = ManualClock::new(T0);
        let mut target = replica(2, &clock);
        let drift = Config::default().max_drift_ms;
        let mut too_large = value_entry("big", 1, 3, T0);
        too_large.key = vec![b'k'; 2000];
        let cases = [(value_entry("future", 1, 3, T0 + drift + 1000), "ClockDrift"), (too_large, "KeyTooLarge")];
        for (bad, what) in cases {
            let batch = vec![value_entry("a", 1, 1, T0), value_entry("b", 1, 2, T0), bad];
            match target.import(batch) {
                Err(ImportError::Invalid { index: 2, source, .. }) => {
                    assert!(format!("{source:?}").starts_with(what), "{what}: got {source:?}");
                }
                other => panic!("{what}: expected entry 2 refused, got {other:?}"),
            }
            assert!(target.scan(&KeyRange::all(), 10).unwrap().is_empty(), "{what}: nothing applied");
            assert!(target.vector().is_empty());
        }
    }

    #[test]
    fn entries_of_any_writer_and_dot_are_taken_without_touching_its_dots() {
        let clock = ManualClock::new(T0);
        let mut target = replica(2, &clock);
        target.put("mine", "1", PutOptions::default()).unwrap();
        // An "own" write beyond the counter, and two lines under one dot: each is a new own write.
        let batch = vec![value_entry("x", 2, 5, T0), value_entry("y", 7, 1, T0), value_entry("z", 7, 1, T0)];
        assert_eq!(target.import(batch).unwrap().applied, 3);
        assert_eq!(target.vector().get(ReplicaId(2)), Seq(4));
        assert_eq!(target.vector().get(ReplicaId(7)), Seq(0), "no other writer's dots are taken");
        // The same key twice in a batch: the later time is written.
        let mut older = value_entry("k", 7, 2, T0 - 10);
        older.payload = Payload::Value(Value { bytes: b"old".to_vec(), expires_at_ms: None, metadata: None });
        let report = target.import(vec![value_entry("k", 7, 3, T0), older]).unwrap();
        assert_eq!((report.applied, report.superseded), (1, 1));
        assert_eq!(target.get(b"k").unwrap().unwrap().value, b"v");
    }

    #[test]
    fn a_full_export_into_a_blank_replica_is_a_bootstrap_and_gives_the_sources_digest() {
        let clock = ManualClock::new(T0);
        let mut source = replica(1, &clock);
        let mut other = replica(3, &clock);
        other.put("from-3", "x", PutOptions::default()).unwrap();
        let d = other.delta_for(source.vector()).unwrap();
        source.apply_remote(d.entries, Some((&d.vector, d.clock))).unwrap();
        source.put("a", "1", PutOptions { ttl_ms: None, metadata: Some(b"{\"m\":1}".to_vec()) }).unwrap();
        source.put("b", "2", PutOptions { ttl_ms: Some(60_000), metadata: None }).unwrap();
        source.put("c", "3", PutOptions::default()).unwrap();
        source.delete("c").unwrap();
        // The vector and clock are read before the entries are listed.
        let (vector, at) = (source.vector().clone(), source.clock());
        let entries = export(&source);
        clock.advance(1_000);
        let mut target = replica(2, &clock);
        assert!(target.is_blank());
        let (first, rest) = entries.split_at(1);
        target.import_as_bootstrap(first.to_vec(), true).unwrap();
        target.import_as_bootstrap(rest.to_vec(), false).unwrap();
        assert!(target.vector().is_empty(), "no vector before the end");
        assert!(target.finish_import_as_bootstrap(&vector, at).unwrap().vector_merged);
        assert_eq!(target.digest(), source.digest());
        assert_eq!(target.vector(), source.vector());
        assert_eq!(target.scan(&KeyRange::all(), 10).unwrap(), source.scan(&KeyRange::all(), 10).unwrap());
        assert!(target.clock() >= at, "its next write is stamped after everything the vector covers");
        // In step: neither has anything for the other, and the delete of `c` is known.
        assert!(source.delta_for(target.vector()).unwrap().entries.is_empty());
        assert!(target.delta_for(source.vector()).unwrap().entries.is_empty());
        let old_c = Entry { key: b"c".to_vec(), ..value_entry("c", 1, 3, T0) };
        assert_eq!(target.apply_remote(vec![old_c], None).unwrap().stale, 1, "the deleted write is covered");
    }

    #[test]
    fn a_bootstrap_import_is_refused_unless_the_replica_is_blank_and_changes_nothing() {
        let clock = ManualClock::new(T0);
        let mut target = replica(2, &clock);
        target.put("mine", "1", PutOptions::default()).unwrap();
        let before = target.scan(&KeyRange::all(), 10).unwrap();
        let refused = target.import_as_bootstrap(vec![value_entry("x", 1, 1, T0)], true);
        assert!(matches!(refused, Err(ImportError::NotBlank { .. })), "{refused:?}");
        let vector = VersionVector::from(vec![(ReplicaId(1), Seq(1))]);
        let refused = target.finish_import_as_bootstrap(&vector, Hlc::new(T0, 0));
        assert!(matches!(refused, Err(ImportError::NotBlank { .. })), "{refused:?}");
        assert_eq!(target.scan(&KeyRange::all(), 10).unwrap(), before);
        assert_eq!(target.vector().get(ReplicaId(1)), Seq(0));

        // Blank, but a write lands between two batches: the next batch and the end are refused.
        let mut target = replica(4, &clock);
        target.import_as_bootstrap(vec![value_entry("x", 1, 1, T0)], true).unwrap();
        target.put("local", "1", PutOptions::default()).unwrap();
        assert!(matches!(
            target.import_as_bootstrap(vec![value_entry("y", 1, 2, T0)], false),
            Err(ImportError::NotBlank { .. })
        ));
        assert!(matches!(
            target.finish_import_as_bootstrap(&vector, Hlc::new(T0, 0)),
            Err(ImportError::NotBlank { .. })
        ));
        assert_eq!(target.vector().get(ReplicaId(1)), Seq(0));

        // Its own writes, a dot twice, a vector naming it: refused by index, nothing stored.
        let mut blank = replica(5, &clock);
        let own = blank.import_as_bootstrap(vec![value_entry("x", 1, 1, T0), value_entry("y", 5, 1, T0)], true);
        assert!(matches!(own, Err(ImportError::OwnWrite { index: 1, .. })), "{own:?}");
        let twice = blank.import_as_bootstrap(vec![value_entry("x", 1, 1, T0), value_entry("y", 1, 1, T0)], true);
        assert!(matches!(twice, Err(ImportError::DotReused { index: 1, .. })), "{twice:?}");
        blank.import_as_bootstrap(vec![value_entry("x", 1, 1, T0)], true).unwrap();
        let across = blank.import_as_bootstrap(vec![value_entry("y", 1, 1, T0)], false);
        assert!(matches!(across, Err(ImportError::DotReused { index: 0, .. })), "{across:?}");
        let mine = VersionVector::from(vec![(ReplicaId(5), Seq(3))]);
        assert!(matches!(blank.finish_import_as_bootstrap(&mine, Hlc::new(T0, 0)), Err(ImportError::OwnVector { .. })));
        assert_eq!(blank.scan(&KeyRange::all(), 10).unwrap().len(), 1);
        assert!(blank.vector().is_empty());
    }
}
