//! Import: entries loaded from an export (`lethe export`, then `lethe import`), applied as this
//! replica applies entries a peer sends on behalf of their original writers.
//!
//! Invariants kept here:
//! - an imported entry keeps its dot and its stamp; it is merged by LWW like a remote entry and
//!   gets its dot-index row, so a peer that lacks it is sent it by the next delta or session;
//! - the version vector is not advanced: an import is a partial transfer (it carries only live
//!   entries, not every write its writers made up to some seq), so claiming coverage would make
//!   this replica drop, as "covered and absent means dead", older writes it has not seen;
//! - a batch is validated entry by entry with the checks remote entries pass (sizes, a seq of
//!   zero, a stamp beyond the drift bound, an own write beyond this replica's counter), and one
//!   bad entry refuses the whole batch, naming it, with the store unchanged.

use super::{ApplyReport, Replica};
use crate::entry::Entry;
use crate::error::Error;
use crate::ids::{Dot, Seq};
use crate::storage::Storage;

/// Why [`Replica::import`] refused a batch. Nothing of the batch was applied.
#[derive(Debug, thiserror::Error)]
pub enum ImportError {
    /// Entry `index` of the batch would not pass as a remote entry (too large, seq zero, a stamp
    /// beyond the clock's drift bound).
    #[error("entry {index} ({dot}): {source}")]
    Invalid {
        /// Its position in the batch, from 0.
        index: usize,
        /// Its dot.
        dot: Dot,
        /// What is wrong with it.
        source: Error,
    },
    /// Entry `index` is a write of this replica's own beyond its counter: this store never made
    /// it, and taking it would let this replica issue the same dot again for another write.
    #[error(
        "entry {index} ({dot}) is a write of this node's own, beyond the {own} writes it has made: this store never \
         held it. Import it into a node with another identity, or restore this node's newest store"
    )]
    OwnWriteBeyondCounter {
        /// Its position in the batch, from 0.
        index: usize,
        /// Its dot.
        dot: Dot,
        /// This replica's own counter.
        own: Seq,
    },
    /// The batch was valid but could not be applied (the store failed).
    #[error("applying the import: {0}")]
    Apply(#[source] Error),
}

impl<S: Storage> Replica<S> {
    /// Applies `entries` (from an export of this or another replica) as remote entries from
    /// their original writers, in one durable commit: same dot, same stamp, LWW merge against
    /// what is stored, dot-index rows written, the clock moved past their stamps, the version
    /// vector not advanced (see the module docs). Entries that lose to what is stored, or whose
    /// dot the vector covers but that are not stored here (superseded or deleted), are counted,
    /// not applied. An entry whose value expired already is stored as an expired record.
    ///
    /// Every entry is checked first, and the first that fails refuses the batch whole
    /// ([`ImportError`] names its index). Costs one pass over the batch, then what
    /// [`Replica::apply_remote`] costs.
    pub fn import(&mut self, entries: Vec<Entry>) -> Result<ApplyReport, ImportError> {
        let wall_ms = self.now_ms();
        for (index, entry) in entries.iter().enumerate() {
            // The remote checks, one entry at a time, so that the error can name the entry.
            self.validate_remote(std::slice::from_ref(entry), None, wall_ms).map_err(|source| match source {
                Error::OwnWriteFromTheFuture { own, .. } => {
                    ImportError::OwnWriteBeyondCounter { index, dot: entry.dot(), own }
                }
                source => ImportError::Invalid { index, dot: entry.dot(), source },
            })?;
        }
        self.apply_remote(entries, None).map_err(ImportError::Apply)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::{Payload, Value};
    use crate::hlc::{Hlc, ManualClock, Stamp};
    use crate::ids::ReplicaId;
    use crate::replica::{Config, PutOptions};
    use crate::storage::{KeyRange, MemoryStore};
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
                seq: i.dot.seq,
                payload: Payload::Value(Value { bytes: i.value, expires_at_ms: i.expires_at_ms, metadata: i.metadata }),
            })
            .collect()
    }

    fn value_entry(key: &str, writer: u64, seq: u64, wall_ms: u64) -> Entry {
        Entry {
            key: key.as_bytes().to_vec(),
            stamp: Stamp { hlc: Hlc::new(wall_ms, 0), replica: ReplicaId(writer) },
            seq: Seq(seq),
            payload: Payload::Value(Value { bytes: b"v".to_vec(), expires_at_ms: None, metadata: None }),
        }
    }

    #[test]
    fn import_keeps_stamps_dots_metadata_and_expiry_and_leaves_the_vector() {
        let clock = ManualClock::new(T0);
        let mut source = replica(1, &clock);
        source.put("a", "1", PutOptions { ttl_ms: None, metadata: Some(b"{\"m\":1}".to_vec()) }).unwrap();
        source.put("b", "2", PutOptions { ttl_ms: Some(60_000), metadata: None }).unwrap();
        source.put("c", "3", PutOptions::default()).unwrap();
        source.delete("c").unwrap();
        let mut target = replica(2, &clock);
        let report = target.import(export(&source)).unwrap();
        assert_eq!(report.applied, 2);
        assert!(!report.vector_merged);
        assert_eq!(target.scan(&KeyRange::all(), 10).unwrap(), source.scan(&KeyRange::all(), 10).unwrap());
        assert!(target.vector().is_empty(), "an import is a partial transfer");
        // The clock moved past the imported stamps: a later write here wins over them.
        let later = target.put("a", "new", PutOptions::default()).unwrap();
        assert!(later.stamp > source.get(b"a").unwrap().unwrap().stamp);
        // Importing again changes nothing.
        let again = target.import(export(&source)).unwrap();
        assert_eq!((again.applied, again.superseded), (0, 2));
    }

    #[test]
    fn imported_entries_reach_a_peer_by_delta() {
        let clock = ManualClock::new(T0);
        let mut source = replica(1, &clock);
        source.put("a", "1", PutOptions::default()).unwrap();
        source.put("b", "2", PutOptions::default()).unwrap();
        let mut target = replica(2, &clock);
        target.import(export(&source)).unwrap();
        let peer = replica(3, &clock);
        // The dot-index rows were written: the delta for an empty vector holds both.
        let delta = target.delta_for(peer.vector()).unwrap();
        let dots: Vec<Dot> = delta.entries.iter().map(Entry::dot).collect();
        assert_eq!(dots, vec![Dot { replica: ReplicaId(1), seq: Seq(1) }, Dot { replica: ReplicaId(1), seq: Seq(2) }]);
        let mut peer = peer;
        peer.apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
        assert_eq!(peer.scan(&KeyRange::all(), 10).unwrap(), source.scan(&KeyRange::all(), 10).unwrap());
    }

    #[test]
    fn a_bad_entry_refuses_the_batch_naming_it() {
        let clock = ManualClock::new(T0);
        let mut target = replica(2, &clock);
        let drift = Config::default().max_drift_ms;
        let mut too_large = value_entry("big", 1, 3, T0);
        too_large.key = vec![b'k'; 2000];
        let cases = [
            (value_entry("future", 1, 3, T0 + drift + 1000), "ClockDrift"),
            (too_large, "KeyTooLarge"),
            (value_entry("zero", 1, 0, T0), "ZeroSeq"),
        ];
        for (bad, what) in cases {
            let batch = vec![value_entry("a", 1, 1, T0), value_entry("b", 1, 2, T0), bad];
            match target.import(batch) {
                Err(ImportError::Invalid { index: 2, source, .. }) => {
                    assert!(format!("{source:?}").starts_with(what), "{what}: got {source:?}");
                }
                other => panic!("{what}: expected entry 2 refused, got {other:?}"),
            }
            assert!(target.scan(&KeyRange::all(), 10).unwrap().is_empty(), "{what}: nothing applied");
        }
    }

    #[test]
    fn an_own_write_beyond_the_counter_is_refused() {
        let clock = ManualClock::new(T0);
        let mut target = replica(2, &clock);
        target.put("mine", "1", PutOptions::default()).unwrap();
        // Its own write 1 is fine (it made it; it is stored, so this one loses or merges).
        let made = export(&target);
        assert!(target.import(made).is_ok());
        let err = target.import(vec![value_entry("a", 7, 1, T0), value_entry("x", 2, 5, T0)]).unwrap_err();
        assert!(matches!(err, ImportError::OwnWriteBeyondCounter { index: 1, own: Seq(1), .. }), "got {err:?}");
        assert!(err.to_string().contains("another identity"));
        assert_eq!(target.scan(&KeyRange::all(), 10).unwrap().len(), 1);
        assert_eq!(target.vector().get(ReplicaId(2)), Seq(1));
        assert_eq!(target.vector().get(ReplicaId(7)), Seq(0), "the vector is not advanced");
    }
}
