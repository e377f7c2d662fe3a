//! Entries: the one stored version of a key, and the last-writer-wins order between versions.
//!
//! Invariant kept here: [`Entry::lww_cmp`] is a total order that every replica computes the same
//! way, so merging by "keep the greater" is commutative, associative and idempotent.

use crate::hlc::{Hlc, Stamp};
use crate::ids::{Dot, ReplicaId, Seq};
use serde::{Deserialize, Serialize};
use std::cmp::Ordering;

/// A live value with its optional expiry and metadata.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Value {
    /// The value's bytes.
    pub bytes: Vec<u8>,
    /// Absolute expiry time in wall-clock milliseconds; `None` lives until overwritten.
    pub expires_at_ms: Option<u64>,
    /// Opaque user metadata, replicated with the value.
    pub metadata: Option<Vec<u8>>,
}

/// What a write left behind: a value, a deletion, or a value whose TTL passed and whose bytes were
/// dropped locally.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Payload {
    /// A value (possibly already expired, if it has not been purged yet).
    Value(Value),
    /// A value whose TTL passed; its bytes are gone but its stamp still beats older versions of
    /// the key, which a replica that never saw it may hold. Made locally by purge, never sent as
    /// a new write.
    Expired {
        /// When the value expired, in wall-clock milliseconds.
        expires_at_ms: u64,
    },
    /// A deletion.
    Tombstone,
}

impl Payload {
    /// Whether this and `other` are copies of one write's payload: equal, or one the other's
    /// value with its TTL passed (`Entry::settled_at`, or a purge, made it `Expired` at one
    /// replica and not yet at another).
    #[must_use]
    pub fn is_copy_of(&self, other: &Payload) -> bool {
        match (self, other) {
            (Payload::Expired { expires_at_ms: t }, Payload::Value(v))
            | (Payload::Value(v), Payload::Expired { expires_at_ms: t }) => v.expires_at_ms == Some(*t),
            _ => self == other,
        }
    }

    /// Rank used to break ties between payloads with the same stamp (which only differ when one
    /// side purged an expired value): the more-forgotten state wins, so merge stays commutative.
    fn rank(&self) -> u8 {
        match self {
            Payload::Value(_) => 0,
            Payload::Expired { .. } => 1,
            Payload::Tombstone => 2,
        }
    }
}

/// The winning version of one key, as stored and as replicated.
///
/// The stamp and the dot name different replicas when a device made the write: the device stamps
/// it (`stamp.replica`, so LWW stays real-time order) and the member that admitted it numbers it
/// (`dot.replica`, so version vectors have one component per member, never per device;
/// docs/design.md §8). For a member's own write they are the same replica.
///
/// Serialized as one flat array (see [`EntryWire`]), so CBOR carries no field names: about 20
/// bytes of framing per entry besides its key and value.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "EntryWire", try_from = "EntryWire")]
pub struct Entry {
    /// The key.
    pub key: Vec<u8>,
    /// The LWW stamp (HLC and writer).
    pub stamp: Stamp,
    /// The write's dot: the replica that numbered it and its sequence number there.
    pub dot: Dot,
    /// What the write left.
    pub payload: Payload,
}

impl Entry {
    /// The write's dot.
    #[must_use]
    pub fn dot(&self) -> Dot {
        self.dot
    }

    /// A write stamped and numbered by the same replica (a member's own write).
    #[must_use]
    pub fn own(key: Vec<u8>, stamp: Stamp, seq: Seq, payload: Payload) -> Entry {
        Entry { key, stamp, dot: Dot { replica: stamp.replica, seq }, payload }
    }

    /// Whether the replica that numbered the write also stamped it (false for a device's write
    /// admitted by a member).
    #[must_use]
    pub fn is_own_write(&self) -> bool {
        self.dot.replica == self.stamp.replica
    }

    /// The live value at wall time `now_ms`, if there is one.
    #[must_use]
    pub fn live_value(&self, now_ms: u64) -> Option<&Value> {
        match &self.payload {
            Payload::Value(v) if v.expires_at_ms.is_none_or(|t| t > now_ms) => Some(v),
            _ => None,
        }
    }

    /// Whether a read at `now_ms` sees this entry.
    #[must_use]
    pub fn is_live_at(&self, now_ms: u64) -> bool {
        self.live_value(now_ms).is_some()
    }

    /// Whether this is a deletion.
    #[must_use]
    pub fn is_tombstone(&self) -> bool {
        matches!(self.payload, Payload::Tombstone)
    }

    /// This entry as it should be kept or sent at `now_ms`: an expired value becomes an
    /// [`Payload::Expired`] record (same stamp and dot, no bytes); anything else is unchanged.
    #[must_use]
    pub fn settled_at(self, now_ms: u64) -> Entry {
        match self.payload {
            Payload::Value(Value { expires_at_ms: Some(t), .. }) if t <= now_ms => {
                Entry { payload: Payload::Expired { expires_at_ms: t }, ..self }
            }
            _ => self,
        }
    }

    /// The last-writer-wins order: stamp first; between equal stamps (the same write, one copy
    /// purged) the payload rank, then the content; then the dot, so the order is total.
    ///
    /// The dot decides only between copies of one write under two dots: a device's upload
    /// admitted by two members before their cursors met (the copy numbered by the **lower
    /// member id** wins, docs/design.md §8), or a write a restored replica re-issued (the same
    /// numbering replica: the **higher seq**, the re-issued copy, wins; `replica/restore.rs`).
    /// The losing dot is then covered and absent everywhere, hence dead.
    #[must_use]
    pub fn lww_cmp(&self, other: &Entry) -> Ordering {
        self.stamp
            .cmp(&other.stamp)
            .then_with(|| self.payload.rank().cmp(&other.payload.rank()))
            .then_with(|| content_cmp(&self.payload, &other.payload))
            .then_with(|| dot_tie(self.dot, other.dot))
    }

    /// Whether this entry beats `other` in LWW order.
    #[must_use]
    pub fn wins_over(&self, other: &Entry) -> bool {
        self.lww_cmp(other) == Ordering::Greater
    }
}

const WIRE_VALUE: u8 = 0;
const WIRE_EXPIRED: u8 = 1;
const WIRE_TOMBSTONE: u8 = 2;

/// The serialized form of an [`Entry`]: `[key, hlc, writer, seq, kind, value, expires_at_ms,
/// metadata, numbered_by]`, kind 0 = value (value present), 1 = expired (expires_at_ms present),
/// 2 = tombstone; byte fields as CBOR byte strings, absent fields as null. `writer` is the stamp's
/// replica; `numbered_by` the dot's, null when it is the same (and may be left out: forms
/// written before devices had eight fields).
#[derive(Serialize, Deserialize)]
pub struct EntryWire(
    #[serde(with = "serde_bytes")] Vec<u8>,
    u64,
    u64,
    u64,
    u8,
    #[serde(with = "serde_bytes")] Option<Vec<u8>>,
    Option<u64>,
    #[serde(with = "serde_bytes")] Option<Vec<u8>>,
    #[serde(default)] Option<u64>,
);

impl From<Entry> for EntryWire {
    fn from(e: Entry) -> Self {
        let numbered_by = (!e.is_own_write()).then_some(e.dot.replica.0);
        let (kind, value, expires, metadata) = match e.payload {
            Payload::Value(v) => (WIRE_VALUE, Some(v.bytes), v.expires_at_ms, v.metadata),
            Payload::Expired { expires_at_ms } => (WIRE_EXPIRED, None, Some(expires_at_ms), None),
            Payload::Tombstone => (WIRE_TOMBSTONE, None, None, None),
        };
        EntryWire(e.key, e.stamp.hlc.0, e.stamp.replica.0, e.dot.seq.0, kind, value, expires, metadata, numbered_by)
    }
}

impl TryFrom<EntryWire> for Entry {
    type Error = String;

    fn try_from(w: EntryWire) -> Result<Self, String> {
        let EntryWire(key, hlc, replica, seq, kind, value, expires_at_ms, metadata, numbered_by) = w;
        let payload = match (kind, value, expires_at_ms, metadata) {
            (WIRE_VALUE, Some(bytes), expires_at_ms, metadata) => {
                Payload::Value(Value { bytes, expires_at_ms, metadata })
            }
            (WIRE_EXPIRED, None, Some(expires_at_ms), None) => Payload::Expired { expires_at_ms },
            (WIRE_TOMBSTONE, None, None, None) => Payload::Tombstone,
            (kind, ..) => return Err(format!("entry of kind {kind} has fields that do not fit it")),
        };
        let stamp = Stamp { hlc: Hlc(hlc), replica: ReplicaId(replica) };
        let dot = Dot { replica: ReplicaId(numbered_by.unwrap_or(replica)), seq: Seq(seq) };
        Ok(Entry { key, stamp, dot, payload })
    }
}

/// The order between two dots of one write: lower numbering replica first, then higher seq.
fn dot_tie(a: Dot, b: Dot) -> Ordering {
    b.replica.cmp(&a.replica).then_with(|| a.seq.cmp(&b.seq))
}

fn content_cmp(a: &Payload, b: &Payload) -> Ordering {
    match (a, b) {
        (Payload::Value(x), Payload::Value(y)) => {
            (&x.bytes, x.expires_at_ms, &x.metadata).cmp(&(&y.bytes, y.expires_at_ms, &y.metadata))
        }
        (Payload::Expired { expires_at_ms: x }, Payload::Expired { expires_at_ms: y }) => x.cmp(y),
        _ => Ordering::Equal,
    }
}

/// The LWW merge of two versions of the same key: the winner.
#[must_use]
pub fn merge(a: Entry, b: Entry) -> Entry {
    debug_assert_eq!(a.key, b.key, "merge compares versions of one key");
    if b.wins_over(&a) { b } else { a }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    pub(crate) fn arb_entry(key: Vec<u8>) -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            (proptest::collection::vec(any::<u8>(), 0..4), proptest::option::of(0u64..50))
                .prop_map(|(bytes, expires_at_ms)| Payload::Value(Value { bytes, expires_at_ms, metadata: None })),
            (0u64..50).prop_map(|expires_at_ms| Payload::Expired { expires_at_ms }),
            Just(Payload::Tombstone),
        ];
        // Few distinct clocks and replicas, so equal stamps (and equal wall clocks) are common.
        // Mostly own writes; sometimes a write numbered by another replica (a device's upload).
        (0u64..4, 0u16..2, 0u64..3, proptest::option::of(0u64..3), 1u64..4, payload).prop_map(
            move |(w, l, r, numbered_by, s, payload)| Entry {
                key: key.clone(),
                stamp: Stamp { hlc: Hlc::new(w, l), replica: ReplicaId(r) },
                dot: Dot { replica: ReplicaId(numbered_by.unwrap_or(r)), seq: Seq(s) },
                payload,
            },
        )
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in arb_entry(b"k".to_vec()), b in arb_entry(b"k".to_vec())) {
            prop_assert_eq!(merge(a.clone(), b.clone()), merge(b, a));
        }

        #[test]
        fn merge_is_associative(
            a in arb_entry(b"k".to_vec()),
            b in arb_entry(b"k".to_vec()),
            c in arb_entry(b"k".to_vec()),
        ) {
            let left = merge(merge(a.clone(), b.clone()), c.clone());
            let right = merge(a, merge(b, c));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn cbor_encode_then_decode_is_identity(a in arb_entry(b"k".to_vec()), meta in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))) {
            let mut a = a;
            if let Payload::Value(v) = &mut a.payload { v.metadata = meta; }
            let mut buf = Vec::new();
            ciborium::into_writer(&a, &mut buf).unwrap();
            let back: Entry = ciborium::from_reader(buf.as_slice()).unwrap();
            prop_assert_eq!(back, a);
        }

        #[test]
        fn merge_is_idempotent(a in arb_entry(b"k".to_vec()), b in arb_entry(b"k".to_vec())) {
            prop_assert_eq!(merge(a.clone(), a.clone()), a.clone());
            let ab = merge(a.clone(), b.clone());
            prop_assert_eq!(merge(ab.clone(), b), ab);
        }
    }

    #[test]
    fn cbor_framing_is_small_and_bytes_are_byte_strings() {
        let e = Entry {
            key: vec![b'k'; 24],
            stamp: Stamp { hlc: Hlc::new(1_700_000_000_000, 3), replica: ReplicaId(0x1234_5678_9abc_def0) },
            dot: Dot { replica: ReplicaId(0x1234_5678_9abc_def0), seq: Seq(1_000_000) },
            payload: Payload::Value(Value { bytes: vec![7; 100], expires_at_ms: None, metadata: None }),
        };
        let mut buf = Vec::new();
        ciborium::into_writer(&e, &mut buf).unwrap();
        // array(9) 1 + key 2+24 + hlc 9 + writer 9 + seq 5 + kind 1 + value 2+100 + 3 nulls.
        assert_eq!(buf.len(), 156);
        let mut wrong_shape = Vec::new();
        let tomb_with_value = EntryWire(b"k".to_vec(), 1, 1, 1, WIRE_TOMBSTONE, Some(vec![1]), None, None, None);
        ciborium::into_writer(&tomb_with_value, &mut wrong_shape).unwrap();
        assert!(ciborium::from_reader::<Entry, _>(wrong_shape.as_slice()).is_err());
    }

    #[test]
    fn higher_clock_wins_and_replica_id_breaks_ties() {
        let mk = |w, r| Entry {
            key: b"k".to_vec(),
            stamp: Stamp { hlc: Hlc::new(w, 0), replica: ReplicaId(r) },
            dot: Dot { replica: ReplicaId(r), seq: Seq(1) },
            payload: Payload::Tombstone,
        };
        assert!(mk(2, 0).wins_over(&mk(1, 9)));
        assert!(mk(1, 9).wins_over(&mk(1, 2)));
        assert!(!mk(1, 2).wins_over(&mk(1, 2)));
    }

    #[test]
    fn an_expired_value_settles_into_a_record_with_the_same_stamp_and_dot() {
        let e = Entry {
            key: b"k".to_vec(),
            stamp: Stamp { hlc: Hlc::new(10, 0), replica: ReplicaId(1) },
            dot: Dot { replica: ReplicaId(1), seq: Seq(3) },
            payload: Payload::Value(Value { bytes: b"v".to_vec(), expires_at_ms: Some(20), metadata: None }),
        };
        assert!(e.is_live_at(19));
        assert!(!e.is_live_at(20));
        assert_eq!(e.clone().settled_at(19), e);
        let settled = e.clone().settled_at(20);
        assert_eq!(settled.payload, Payload::Expired { expires_at_ms: 20 });
        assert_eq!((settled.stamp, settled.dot()), (e.stamp, e.dot()));
        assert!(settled.wins_over(&e), "the purged copy of a write beats its unpurged copy");
    }
}
