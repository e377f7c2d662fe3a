//! The compact wire form of a list of entries (a session's `Entries`, a live `Push`), used with
//! `#[serde(with = "batch")]`.
//!
//! A batch is a list of groups, one per writer: `[[writer, [item, ...]], ...]`, where the writer
//! numbered the items (their dots' replica) and stamped them too; a group of a device's writes
//! admitted by a member has a third field, the device that stamped them:
//! `[writer, [item, ...], stamped_by]`. Within a group the
//! items are in seq order, and each carries its seq and HLC as the difference from the item
//! before it (from 0 for the first): a writer's HLC grows with its seq, so both are small numbers
//! (one to five bytes) whatever the history's length, where a lone [`Entry`] spends nine bytes on
//! each and eight more on its writer. An item is a flat array whose length depends on its kind,
//! so nothing absent is sent:
//!
//! | kind | item |
//! | --- | --- |
//! | value | `[key, seq delta, hlc delta, 0, value]`, then `expires_at_ms` and `metadata` if present (`null` for an absent expiry before metadata) |
//! | expired record | `[key, seq delta, hlc delta, 1, expires_at_ms]` |
//! | tombstone | `[key, seq delta, hlc delta, 2]` |
//!
//! The HLC difference is signed (a writer's HLC only grows with its seq, but a batch must encode
//! whatever it is given). Decoding checks every sum and shape; a bad batch is an error. The
//! entries come back grouped by writer and in seq order, which no receiver depends on: applying
//! a batch is order-independent (LWW).

use crate::entry::{Entry, Payload, Value};
use crate::hlc::{Hlc, Stamp};
use crate::ids::{ReplicaId, Seq};
use crate::limits::{ENTRIES_DECODED_BYTES_MAX, ENTRIES_PER_FRAME_MAX};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

const KIND_VALUE: u8 = 0;
const KIND_EXPIRED: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;

struct ItemOut<'a> {
    entry: &'a Entry,
    seq_delta: u64,
    hlc_delta: i128,
}

impl Serialize for ItemOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let e = self.entry;
        let len = match &e.payload {
            Payload::Value(v) if v.metadata.is_some() => 7,
            Payload::Value(v) if v.expires_at_ms.is_some() => 6,
            Payload::Value(_) | Payload::Expired { .. } => 5,
            Payload::Tombstone => 4,
        };
        let mut seq = s.serialize_seq(Some(len))?;
        seq.serialize_element(serde_bytes::Bytes::new(&e.key))?;
        seq.serialize_element(&self.seq_delta)?;
        seq.serialize_element(&self.hlc_delta)?;
        match &e.payload {
            Payload::Value(v) => {
                seq.serialize_element(&KIND_VALUE)?;
                seq.serialize_element(serde_bytes::Bytes::new(&v.bytes))?;
                if len >= 6 {
                    seq.serialize_element(&v.expires_at_ms)?;
                }
                if let Some(m) = &v.metadata {
                    seq.serialize_element(serde_bytes::Bytes::new(m))?;
                }
            }
            Payload::Expired { expires_at_ms } => {
                seq.serialize_element(&KIND_EXPIRED)?;
                seq.serialize_element(expires_at_ms)?;
            }
            Payload::Tombstone => seq.serialize_element(&KIND_TOMBSTONE)?,
        }
        seq.end()
    }
}

/// Serializes `entries` as a compact batch.
pub fn serialize<S: Serializer>(entries: &[Entry], s: S) -> Result<S::Ok, S::Error> {
    let mut groups: BTreeMap<(ReplicaId, ReplicaId), Vec<&Entry>> = BTreeMap::new();
    for e in entries {
        groups.entry((e.dot.replica, e.stamp.replica)).or_default().push(e);
    }
    let mut out = Vec::with_capacity(groups.len());
    for ((writer, stamped_by), mut group) in groups {
        group.sort_by_key(|e| e.dot.seq);
        let (mut seq, mut hlc) = (0u64, 0u64);
        let items: Vec<ItemOut<'_>> = group
            .into_iter()
            .map(|entry| {
                let item = ItemOut {
                    entry,
                    seq_delta: entry.dot.seq.0 - seq,
                    hlc_delta: i128::from(entry.stamp.hlc.0) - i128::from(hlc),
                };
                (seq, hlc) = (entry.dot.seq.0, entry.stamp.hlc.0);
                item
            })
            .collect();
        out.push(GroupOut { writer, items, stamped_by: (stamped_by != writer).then_some(stamped_by) });
    }
    out.serialize(s)
}

struct GroupOut<'a> {
    writer: ReplicaId,
    items: Vec<ItemOut<'a>>,
    stamped_by: Option<ReplicaId>,
}

impl Serialize for GroupOut<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(if self.stamped_by.is_some() { 3 } else { 2 }))?;
        seq.serialize_element(&self.writer.0)?;
        seq.serialize_element(&self.items)?;
        if let Some(r) = self.stamped_by {
            seq.serialize_element(&r.0)?;
        }
        seq.end()
    }
}

struct ItemIn {
    key: Vec<u8>,
    seq_delta: u64,
    hlc_delta: i128,
    payload: Payload,
}

impl<'de> Deserialize<'de> for ItemIn {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<ItemIn, D::Error> {
        d.deserialize_seq(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> Visitor<'de> for ItemVisitor {
    type Value = ItemIn;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an entry item [key, seq delta, hlc delta, kind, ...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<ItemIn, A::Error> {
        let missing = |what: &str| de::Error::custom(format!("entry item without its {what}"));
        let key: serde_bytes::ByteBuf = seq.next_element()?.ok_or_else(|| missing("key"))?;
        let seq_delta: u64 = seq.next_element()?.ok_or_else(|| missing("seq"))?;
        let hlc_delta: i128 = seq.next_element()?.ok_or_else(|| missing("stamp"))?;
        let kind: u8 = seq.next_element()?.ok_or_else(|| missing("kind"))?;
        let payload = match kind {
            KIND_VALUE => {
                let bytes: serde_bytes::ByteBuf = seq.next_element()?.ok_or_else(|| missing("value"))?;
                let expires_at_ms: Option<u64> = seq.next_element::<Option<u64>>()?.flatten();
                let metadata = seq.next_element::<serde_bytes::ByteBuf>()?.map(serde_bytes::ByteBuf::into_vec);
                Payload::Value(Value { bytes: bytes.into_vec(), expires_at_ms, metadata })
            }
            KIND_EXPIRED => Payload::Expired { expires_at_ms: seq.next_element()?.ok_or_else(|| missing("expiry"))? },
            KIND_TOMBSTONE => Payload::Tombstone,
            other => return Err(de::Error::custom(format!("entry item of unknown kind {other}"))),
        };
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("entry item has fields beyond its kind's"));
        }
        Ok(ItemIn { key: key.into_vec(), seq_delta, hlc_delta, payload })
    }
}

/// Deserializes a compact batch, checking every sum, straight into one list of entries, and
/// refusing more than [`ENTRIES_PER_FRAME_MAX`] entries or [`ENTRIES_DECODED_BYTES_MAX`] of them
/// in memory as they arrive (a small item takes some thirty times its wire size once decoded).
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    d.deserialize_seq(Groups)
}

/// What the entries decoded so far take, against the bounds.
struct Budget {
    entries: Vec<Entry>,
    bytes: usize,
}

impl Budget {
    fn push<E: de::Error>(&mut self, entry: Entry) -> Result<(), E> {
        if self.entries.len() >= ENTRIES_PER_FRAME_MAX {
            return Err(E::custom(format!("a batch of more than {ENTRIES_PER_FRAME_MAX} entries")));
        }
        self.bytes = self.bytes.saturating_add(decoded_bytes(&entry));
        if self.bytes > ENTRIES_DECODED_BYTES_MAX {
            return Err(E::custom(format!("a batch taking more than {ENTRIES_DECODED_BYTES_MAX} bytes decoded")));
        }
        self.entries.push(entry);
        Ok(())
    }
}

/// What an entry takes in memory, as [`ENTRIES_DECODED_BYTES_MAX`] counts it.
pub(crate) fn decoded_bytes(e: &Entry) -> usize {
    let payload = match &e.payload {
        Payload::Value(v) => v.bytes.len() + v.metadata.as_ref().map_or(0, Vec::len),
        Payload::Expired { .. } | Payload::Tombstone => 0,
    };
    std::mem::size_of::<Entry>() + e.key.len() + payload
}

struct Groups;

impl<'de> Visitor<'de> for Groups {
    type Value = Vec<Entry>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a batch [[writer, [item, ...]], ...]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<Entry>, A::Error> {
        let mut budget = Budget { entries: Vec::new(), bytes: 0 };
        while seq.next_element_seed(Group(&mut budget))?.is_some() {}
        Ok(budget.entries)
    }
}

/// One writer's group, `[writer, [item, ...]]`, decoded into the budget's list.
struct Group<'a>(&'a mut Budget);

impl<'de> de::DeserializeSeed<'de> for Group<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Group<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a writer's group [writer, [item, ...], stamped_by?]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let writer: u64 = seq.next_element()?.ok_or_else(|| de::Error::custom("group without its writer"))?;
        let first = self.0.entries.len();
        seq.next_element_seed(Items { budget: self.0, writer })?
            .ok_or_else(|| de::Error::custom("group without its items"))?;
        if let Some(stamped_by) = seq.next_element::<u64>()? {
            if stamped_by == writer {
                return Err(de::Error::custom("a group stamped by its own writer names it twice"));
            }
            for e in &mut self.0.entries[first..] {
                e.stamp.replica = ReplicaId(stamped_by);
            }
        }
        if seq.next_element::<de::IgnoredAny>()?.is_some() {
            return Err(de::Error::custom("group has fields beyond [writer, items, stamped_by]"));
        }
        Ok(())
    }
}

/// A group's items, with the running seq and HLC sums.
struct Items<'a> {
    budget: &'a mut Budget,
    writer: u64,
}

impl<'de> de::DeserializeSeed<'de> for Items<'_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for Items<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a list of entry items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let (mut s, mut hlc) = (0u64, 0u64);
        while let Some(i) = seq.next_element::<ItemIn>()? {
            s = s.checked_add(i.seq_delta).ok_or_else(|| de::Error::custom("seq overflows"))?;
            hlc = u64::try_from(i128::from(hlc) + i.hlc_delta).map_err(|_| de::Error::custom("stamp out of range"))?;
            let stamp = Stamp { hlc: Hlc(hlc), replica: ReplicaId(self.writer) };
            self.budget.push(Entry::own(i.key, stamp, Seq(s), i.payload))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "super")] Vec<Entry>);

    fn entry() -> impl Strategy<Value = Entry> {
        let payload = prop_oneof![
            (
                proptest::collection::vec(any::<u8>(), 0..8),
                any::<Option<u64>>(),
                proptest::option::of(proptest::collection::vec(any::<u8>(), 0..4))
            )
                .prop_map(|(bytes, expires_at_ms, metadata)| Payload::Value(Value {
                    bytes,
                    expires_at_ms,
                    metadata
                })),
            any::<u64>().prop_map(|expires_at_ms| Payload::Expired { expires_at_ms }),
            Just(Payload::Tombstone),
        ];
        // Some entries stamped by a device and numbered by a member.
        let stamped_by = proptest::option::of(0u64..3);
        (proptest::collection::vec(any::<u8>(), 1..6), any::<u64>(), 0u64..4, stamped_by, any::<u64>(), payload)
            .prop_map(|(key, hlc, replica, stamped_by, seq, payload)| Entry {
                key,
                stamp: Stamp { hlc: Hlc(hlc), replica: ReplicaId(stamped_by.unwrap_or(u64::MAX - replica)) },
                dot: crate::Dot { replica: ReplicaId(u64::MAX - replica), seq: Seq(seq) },
                payload,
            })
    }

    fn normalized(mut entries: Vec<Entry>) -> Vec<Entry> {
        entries.sort_by(|a, b| (a.dot, a.stamp.replica, &a.key).cmp(&(b.dot, b.stamp.replica, &b.key)));
        entries
    }

    proptest! {
        #[test]
        fn batches_round_trip(entries in proptest::collection::vec(entry(), 0..12)) {
            let mut bytes = Vec::new();
            ciborium::into_writer(&Wrapped(entries.clone()), &mut bytes).unwrap();
            let back: Wrapped = ciborium::from_reader(bytes.as_slice()).unwrap();
            prop_assert_eq!(normalized(back.0), normalized(entries));
        }
    }

    #[test]
    fn a_value_item_costs_far_less_than_a_lone_entry() {
        let entries: Vec<Entry> = (0..100u64)
            .map(|i| Entry {
                key: format!("key:{i:020}").into_bytes(),
                stamp: Stamp { hlc: Hlc((1_700_000_000_000 << 16) + i), replica: ReplicaId(0xdead_beef_0000_0001) },
                dot: crate::Dot { replica: ReplicaId(0xdead_beef_0000_0001), seq: Seq(70_000 + i) },
                payload: Payload::Value(Value { bytes: vec![7; 100], expires_at_ms: None, metadata: None }),
            })
            .collect();
        let (mut compact, mut plain) = (Vec::new(), Vec::new());
        ciborium::into_writer(&Wrapped(entries.clone()), &mut compact).unwrap();
        ciborium::into_writer(&entries, &mut plain).unwrap();
        let per_item = |bytes: usize| bytes as f64 / 100.0 - 124.0;
        assert!(per_item(compact.len()) < 14.0, "{} bytes of framing per item", per_item(compact.len()));
        assert!(per_item(plain.len()) > 25.0);
    }

    #[test]
    fn bad_sums_and_shapes_are_refused() {
        let decode = |v: ciborium::Value| {
            let mut bytes = Vec::new();
            ciborium::into_writer(&v, &mut bytes).unwrap();
            ciborium::from_reader::<Wrapped, _>(bytes.as_slice())
        };
        use ciborium::Value as V;
        let item = |seq: u64, hlc: V, kind: u64, rest: Vec<V>| {
            let mut v = vec![V::Bytes(b"k".to_vec()), V::from(seq), hlc, V::from(kind)];
            v.extend(rest);
            V::Array(v)
        };
        let batch = |items: Vec<V>| V::Array(vec![V::Array(vec![V::from(9), V::Array(items)])]);
        assert!(decode(batch(vec![item(1, V::from(5), 2, vec![])])).is_ok());
        assert!(decode(batch(vec![item(1, V::from(5), 7, vec![])])).is_err(), "unknown kind");
        assert!(decode(batch(vec![item(1, V::from(5), 2, vec![V::from(1)])])).is_err(), "trailing field");
        assert!(decode(batch(vec![item(1, V::from(5), 0, vec![])])).is_err(), "value without bytes");
        assert!(decode(batch(vec![item(1, V::from(-1), 2, vec![])])).is_err(), "negative stamp");
        let over = vec![item(u64::MAX, V::from(5), 2, vec![]), item(1, V::from(0), 2, vec![])];
        assert!(decode(batch(over)).is_err(), "seq overflow");
    }
}
