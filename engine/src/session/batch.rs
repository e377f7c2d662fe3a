//! The compact, columnar wire form of a list of entries (a session's `Entries`, a live `Push`),
//! used with `#[serde(with = "batch")]`.
//!
//! A batch is one CBOR array of byte strings, one per column, so that a compressor sees each
//! column alone: keys beside keys, values beside values, and the small numbers apart from both
//! (protocol 4; zstd builds its literal statistics per block, and keys, values and framing
//! interleaved in one block share one table, which cost about 8 % of the bytes of a bootstrap):
//!
//! `[groups, flags, seqs, stamps, key_lens, value_lens, expiries, metadata_lens, stamp_writers,
//! keys, values, metadata]`
//!
//! | column | per | holds |
//! | --- | --- | --- |
//! | `groups` | dot writer | its id (8 bytes, big-endian), then how many items follow (varint) |
//! | `flags` | item | one byte: bits 0–1 the kind (0 value, 1 expired record, 2 tombstone); bit 2 a value's expiry present; bit 3 a value's metadata present; bit 4 the stamp's writer is not the group's |
//! | `seqs` | item | the seq, as the difference from the item before in its group (from 0 for the first), varint |
//! | `stamps` | item | the stamp's HLC: its difference from the item before's in the group (from 0 for the first), less the seq difference, signed (zigzag varint) |
//! | `key_lens`, `keys` | item | the key's length (varint); the keys, concatenated |
//! | `value_lens`, `values` | value | the value's length (varint); the values, concatenated |
//! | `expiries` | expired record, value with an expiry | `expires_at_ms` (varint) |
//! | `metadata_lens`, `metadata` | value with metadata | its length (varint); the metadata, concatenated |
//! | `stamp_writers` | item with bit 4 | the stamp's writer (8 bytes, big-endian) |
//!
//! Items are grouped by the writer of their dot, in seq order within a group: a writer's seqs
//! and HLCs grow together, so both differences are small numbers (one to three bytes) whatever
//! the history's length, where a lone [`Entry`] spends nine bytes on each and eight more on its
//! writer. Each write advances its writer's clock by at least one logical tick, so the HLC
//! difference is at least the seq difference, and in a burst of writes within one millisecond
//! equal to it: the `stamps` column sends what is left, mostly zeros. A stamp is usually made by the dot's writer; the `stamp_writers` column carries one
//! that is not (a write admitted under another replica's dot) and is empty otherwise. Nothing
//! absent is sent: a tombstone costs its flag, its two differences and its key.
//!
//! Decoding trusts no count or length: the number of items is checked against
//! [`ENTRIES_PER_FRAME_MAX`] and against the `flags` column (one byte an item) before anything
//! is allocated for them, each key against [`KEY_BYTES_MAX`], each length against what is left
//! of its column, the memory the entries take against [`ENTRIES_DECODED_BYTES_MAX`] before each
//! is copied out, every sum against overflow, and every column must be used up exactly. A bad
//! batch is a [`BatchError`], never a panic. The entries come back grouped by writer and in seq
//! order, which no receiver depends on: applying a batch is order-independent (LWW).

use crate::entry::{Entry, Payload, Value};
use crate::hlc::{Hlc, Stamp};
use crate::ids::{Dot, ReplicaId, Seq};
use crate::limits::{ENTRIES_DECODED_BYTES_MAX, ENTRIES_PER_FRAME_MAX, KEY_BYTES_MAX};
use serde::de::{self, SeqAccess, Visitor};
use serde::ser::SerializeTuple;
use serde::{Deserializer, Serializer};
use std::collections::BTreeMap;
use std::fmt;

const KIND_VALUE: u8 = 0;
const KIND_EXPIRED: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const KIND_MASK: u8 = 0b11;
const FLAG_EXPIRY: u8 = 1 << 2;
const FLAG_METADATA: u8 = 1 << 3;
const FLAG_STAMP_WRITER: u8 = 1 << 4;
const FLAGS_KNOWN: u8 = KIND_MASK | FLAG_EXPIRY | FLAG_METADATA | FLAG_STAMP_WRITER;

/// How many columns a batch has.
const COLUMNS: usize = 12;
/// The columns' names, in wire order, for errors.
const COLUMN_NAMES: [&str; COLUMNS] = [
    "groups",
    "flags",
    "seqs",
    "stamps",
    "key_lens",
    "value_lens",
    "expiries",
    "metadata_lens",
    "stamp_writers",
    "keys",
    "values",
    "metadata",
];

/// Why a batch did not decode.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    /// A column ended inside a number or a byte run.
    #[error("the batch's {column} column ends early")]
    Truncated {
        /// The column.
        column: &'static str,
    },
    /// A column held more than its items use.
    #[error("the batch's {column} column has {len} bytes left over")]
    LeftOver {
        /// The column.
        column: &'static str,
        /// Bytes not used.
        len: usize,
    },
    /// A varint longer than its type allows.
    #[error("a number in the batch's {column} column does not fit its type")]
    NumberTooLarge {
        /// The column.
        column: &'static str,
    },
    /// More items than one frame may carry.
    #[error("a batch of more than {max} entries")]
    TooManyEntries {
        /// [`ENTRIES_PER_FRAME_MAX`].
        max: usize,
    },
    /// The groups count a number of items other than the `flags` column holds.
    #[error("the groups count {counted} items, the flags column {flags}")]
    CountMismatch {
        /// Items the groups count.
        counted: usize,
        /// Bytes of the flags column.
        flags: usize,
    },
    /// The entries would take more memory than one frame's may.
    #[error("a batch taking more than {max} bytes decoded")]
    DecodedTooLarge {
        /// [`ENTRIES_DECODED_BYTES_MAX`].
        max: usize,
    },
    /// A flag byte with an unknown kind, an unknown bit, or a bit its kind does not take.
    #[error("an entry item with flags {flags:#04x}")]
    BadFlags {
        /// The byte.
        flags: u8,
    },
    /// A key longer than any replica accepts.
    #[error("an entry key of {len} bytes, more than {max}")]
    KeyTooLarge {
        /// Its length.
        len: u64,
        /// [`KEY_BYTES_MAX`].
        max: usize,
    },
    /// A seq past `u64::MAX`.
    #[error("a seq in the batch overflows")]
    SeqOverflow,
    /// An HLC below 0 or past `u64::MAX`.
    #[error("a stamp in the batch is out of range")]
    StampOutOfRange,
}

/// One entry as a batch carries it: the writer of its dot apart from the writer of its stamp.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ItemRef<'a> {
    /// The writer of the entry's dot (its group).
    pub dot_writer: ReplicaId,
    /// The entry; its `stamp.replica` is the stamp's writer.
    pub entry: &'a Entry,
}

impl<'a> From<&'a Entry> for ItemRef<'a> {
    fn from(entry: &'a Entry) -> Self {
        ItemRef { dot_writer: entry.dot().replica, entry }
    }
}

/// A decoded item: the writer of its dot and the entry (stamped by `entry.stamp.replica`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Item {
    /// The writer of the entry's dot.
    pub dot_writer: ReplicaId,
    /// The entry.
    pub entry: Entry,
}

impl Item {
    /// The entry (its dot already names `dot_writer`).
    fn into_entry(self) -> Result<Entry, BatchError> {
        debug_assert_eq!(self.entry.dot.replica, self.dot_writer);
        Ok(self.entry)
    }
}

/// The columns of a batch, as byte strings (see the module doc).
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Columns([Vec<u8>; COLUMNS]);

const GROUPS: usize = 0;
const FLAGS: usize = 1;
const SEQS: usize = 2;
const STAMPS: usize = 3;
const KEY_LENS: usize = 4;
const VALUE_LENS: usize = 5;
const EXPIRIES: usize = 6;
const METADATA_LENS: usize = 7;
const STAMP_WRITERS: usize = 8;
const KEYS: usize = 9;
const VALUES: usize = 10;
const METADATA: usize = 11;

fn put_varint(out: &mut Vec<u8>, mut x: u128) {
    while x >= 0x80 {
        out.push((x as u8) | 0x80);
        x >>= 7;
    }
    out.push(x as u8);
}

fn zigzag(x: i128) -> u128 {
    ((x << 1) ^ (x >> 127)) as u128
}

fn unzigzag(x: u128) -> i128 {
    ((x >> 1) as i128) ^ -((x & 1) as i128)
}

impl Columns {
    /// The columns of `items`, grouped by dot writer and in seq order within a group.
    pub(crate) fn encode<'a>(items: impl IntoIterator<Item = ItemRef<'a>>) -> Columns {
        let mut groups: BTreeMap<ReplicaId, Vec<&'a Entry>> = BTreeMap::new();
        for i in items {
            groups.entry(i.dot_writer).or_default().push(i.entry);
        }
        let mut c = Columns::default();
        for (writer, mut group) in groups {
            group.sort_by_key(|e| e.dot.seq);
            c.0[GROUPS].extend_from_slice(&writer.0.to_be_bytes());
            put_varint(&mut c.0[GROUPS], group.len() as u128);
            let (mut seq, mut hlc) = (0u64, 0u64);
            for e in group {
                let seq_delta = e.dot.seq.0 - seq;
                let hlc_delta = i128::from(e.stamp.hlc.0) - i128::from(hlc);
                c.push_item(writer, e, seq_delta, hlc_delta - i128::from(seq_delta));
                (seq, hlc) = (e.dot.seq.0, e.stamp.hlc.0);
            }
        }
        c
    }

    fn push_item(&mut self, group_writer: ReplicaId, e: &Entry, seq_delta: u64, hlc_residual: i128) {
        let mut flags = match &e.payload {
            Payload::Value(v) => {
                put_varint(&mut self.0[VALUE_LENS], v.bytes.len() as u128);
                self.0[VALUES].extend_from_slice(&v.bytes);
                let mut flags = KIND_VALUE;
                if let Some(t) = v.expires_at_ms {
                    put_varint(&mut self.0[EXPIRIES], u128::from(t));
                    flags |= FLAG_EXPIRY;
                }
                if let Some(m) = &v.metadata {
                    put_varint(&mut self.0[METADATA_LENS], m.len() as u128);
                    self.0[METADATA].extend_from_slice(m);
                    flags |= FLAG_METADATA;
                }
                flags
            }
            Payload::Expired { expires_at_ms } => {
                put_varint(&mut self.0[EXPIRIES], u128::from(*expires_at_ms));
                KIND_EXPIRED
            }
            Payload::Tombstone => KIND_TOMBSTONE,
        };
        if e.stamp.replica != group_writer {
            flags |= FLAG_STAMP_WRITER;
            self.0[STAMP_WRITERS].extend_from_slice(&e.stamp.replica.0.to_be_bytes());
        }
        self.0[FLAGS].push(flags);
        put_varint(&mut self.0[SEQS], u128::from(seq_delta));
        put_varint(&mut self.0[STAMPS], zigzag(hlc_residual));
        put_varint(&mut self.0[KEY_LENS], e.key.len() as u128);
        self.0[KEYS].extend_from_slice(&e.key);
    }

    /// The items the columns hold, checking every count, length and sum (see the module doc).
    pub(crate) fn decode(&self) -> Result<Vec<Item>, BatchError> {
        let mut r: [Reader<'_>; COLUMNS] =
            std::array::from_fn(|i| Reader { bytes: &self.0[i], column: COLUMN_NAMES[i] });
        // The groups first: how many items there are, checked before allocating for them.
        let mut groups = Vec::new();
        let mut counted = 0usize;
        while !r[GROUPS].bytes.is_empty() {
            let writer = ReplicaId(r[GROUPS].u64_be()?);
            let len = r[GROUPS].varint_usize()?;
            counted = counted
                .checked_add(len)
                .filter(|n| *n <= ENTRIES_PER_FRAME_MAX)
                .ok_or(BatchError::TooManyEntries { max: ENTRIES_PER_FRAME_MAX })?;
            groups.push((writer, len));
        }
        if counted != self.0[FLAGS].len() {
            return Err(BatchError::CountMismatch { counted, flags: self.0[FLAGS].len() });
        }
        let mut out = Vec::with_capacity(counted);
        let mut decoded = 0usize;
        for (writer, len) in groups {
            let (mut seq, mut hlc) = (0u64, 0u64);
            for _ in 0..len {
                let flags = r[FLAGS].byte()?;
                let seq_delta = r[SEQS].varint_u64()?;
                seq = seq.checked_add(seq_delta).ok_or(BatchError::SeqOverflow)?;
                hlc = unzigzag(r[STAMPS].varint()?)
                    .checked_add(i128::from(seq_delta) + i128::from(hlc))
                    .and_then(|h| u64::try_from(h).ok())
                    .ok_or(BatchError::StampOutOfRange)?;
                let key_len = r[KEY_LENS].varint_u64()?;
                if key_len > KEY_BYTES_MAX as u64 {
                    return Err(BatchError::KeyTooLarge { len: key_len, max: KEY_BYTES_MAX });
                }
                // Within KEY_BYTES_MAX, so it fits a usize.
                let key = r[KEYS].take(key_len as usize)?;
                let (payload, bytes) = read_payload(flags, &mut r)?;
                let stamp_writer =
                    if flags & FLAG_STAMP_WRITER != 0 { ReplicaId(r[STAMP_WRITERS].u64_be()?) } else { writer };
                // Counted before the key and value are copied out of their columns.
                decoded = decoded.saturating_add(std::mem::size_of::<Entry>() + key.len() + bytes);
                if decoded > ENTRIES_DECODED_BYTES_MAX {
                    return Err(BatchError::DecodedTooLarge { max: ENTRIES_DECODED_BYTES_MAX });
                }
                let entry = Entry {
                    key: key.to_vec(),
                    stamp: Stamp { hlc: Hlc(hlc), replica: stamp_writer },
                    dot: Dot { replica: writer, seq: Seq(seq) },
                    payload: payload.into_payload(),
                };
                debug_assert_eq!(decoded_bytes(&entry), std::mem::size_of::<Entry>() + key.len() + bytes);
                out.push(Item { dot_writer: writer, entry });
            }
        }
        for column in &r {
            column.finish()?;
        }
        Ok(out)
    }
}

/// A payload still borrowing its bytes from the columns.
enum PayloadRef<'a> {
    Value { bytes: &'a [u8], expires_at_ms: Option<u64>, metadata: Option<&'a [u8]> },
    Expired { expires_at_ms: u64 },
    Tombstone,
}

impl PayloadRef<'_> {
    fn into_payload(self) -> Payload {
        match self {
            PayloadRef::Value { bytes, expires_at_ms, metadata } => {
                Payload::Value(Value { bytes: bytes.to_vec(), expires_at_ms, metadata: metadata.map(<[u8]>::to_vec) })
            }
            PayloadRef::Expired { expires_at_ms } => Payload::Expired { expires_at_ms },
            PayloadRef::Tombstone => Payload::Tombstone,
        }
    }
}

/// An item's payload from its flags and the columns, and how many value and metadata bytes it
/// holds.
fn read_payload<'a>(flags: u8, r: &mut [Reader<'a>; COLUMNS]) -> Result<(PayloadRef<'a>, usize), BatchError> {
    let bad = BatchError::BadFlags { flags };
    if flags & !FLAGS_KNOWN != 0 {
        return Err(bad);
    }
    match flags & KIND_MASK {
        KIND_VALUE => {
            let len = r[VALUE_LENS].varint_usize()?;
            let bytes = r[VALUES].take(len)?;
            let expires_at_ms = if flags & FLAG_EXPIRY != 0 { Some(r[EXPIRIES].varint_u64()?) } else { None };
            let metadata = if flags & FLAG_METADATA != 0 {
                let len = r[METADATA_LENS].varint_usize()?;
                Some(r[METADATA].take(len)?)
            } else {
                None
            };
            let held = bytes.len() + metadata.map_or(0, <[u8]>::len);
            Ok((PayloadRef::Value { bytes, expires_at_ms, metadata }, held))
        }
        _ if flags & (FLAG_EXPIRY | FLAG_METADATA) != 0 => Err(bad),
        KIND_EXPIRED => Ok((PayloadRef::Expired { expires_at_ms: r[EXPIRIES].varint_u64()? }, 0)),
        KIND_TOMBSTONE => Ok((PayloadRef::Tombstone, 0)),
        _ => Err(bad),
    }
}

/// Reads one column front to back.
struct Reader<'a> {
    bytes: &'a [u8],
    column: &'static str,
}

impl<'a> Reader<'a> {
    fn truncated(&self) -> BatchError {
        BatchError::Truncated { column: self.column }
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], BatchError> {
        if n > self.bytes.len() {
            return Err(self.truncated());
        }
        let (head, tail) = self.bytes.split_at(n);
        self.bytes = tail;
        Ok(head)
    }

    fn byte(&mut self) -> Result<u8, BatchError> {
        Ok(self.take(1)?[0])
    }

    fn u64_be(&mut self) -> Result<u64, BatchError> {
        let mut b = [0u8; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }

    /// A LEB128 varint of at most 128 bits.
    fn varint(&mut self) -> Result<u128, BatchError> {
        let mut x = 0u128;
        for shift in (0..128).step_by(7) {
            let b = self.byte()?;
            let part = u128::from(b & 0x7f);
            if shift == 126 && part > 0b11 {
                break;
            }
            x |= part << shift;
            if b & 0x80 == 0 {
                return Ok(x);
            }
        }
        Err(BatchError::NumberTooLarge { column: self.column })
    }

    fn varint_u64(&mut self) -> Result<u64, BatchError> {
        u64::try_from(self.varint()?).map_err(|_| BatchError::NumberTooLarge { column: self.column })
    }

    fn varint_usize(&mut self) -> Result<usize, BatchError> {
        usize::try_from(self.varint()?).map_err(|_| BatchError::NumberTooLarge { column: self.column })
    }

    fn finish(&self) -> Result<(), BatchError> {
        match self.bytes.len() {
            0 => Ok(()),
            len => Err(BatchError::LeftOver { column: self.column, len }),
        }
    }
}

impl serde::Serialize for Columns {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut t = s.serialize_tuple(COLUMNS)?;
        for column in &self.0 {
            t.serialize_element(serde_bytes::Bytes::new(column))?;
        }
        t.end()
    }
}

impl<'de> serde::Deserialize<'de> for Columns {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Columns, D::Error> {
        struct ColumnsVisitor;
        impl<'de> Visitor<'de> for ColumnsVisitor {
            type Value = Columns;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "a batch of {COLUMNS} byte-string columns")
            }

            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Columns, A::Error> {
                let mut c = Columns::default();
                for (i, column) in c.0.iter_mut().enumerate() {
                    let bytes: serde_bytes::ByteBuf = seq
                        .next_element()?
                        .ok_or_else(|| de::Error::custom(format!("a batch without its {} column", COLUMN_NAMES[i])))?;
                    *column = bytes.into_vec();
                }
                if seq.next_element::<de::IgnoredAny>()?.is_some() {
                    return Err(de::Error::custom(format!("a batch of more than {COLUMNS} columns")));
                }
                Ok(c)
            }
        }
        d.deserialize_tuple(COLUMNS, ColumnsVisitor)
    }
}

/// Serializes `entries` as a columnar batch.
pub fn serialize<S: Serializer>(entries: &[Entry], s: S) -> Result<S::Ok, S::Error> {
    serde::Serialize::serialize(&Columns::encode(entries.iter().map(ItemRef::from)), s)
}

/// Deserializes a columnar batch, checking every count, length and sum, and refusing more than
/// [`ENTRIES_PER_FRAME_MAX`] entries or [`ENTRIES_DECODED_BYTES_MAX`] of them in memory (a small
/// item takes some thirty times its wire size once decoded) before allocating for them.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Entry>, D::Error> {
    let columns: Columns = serde::Deserialize::deserialize(d)?;
    let items = columns.decode().map_err(de::Error::custom)?;
    drop(columns);
    items.into_iter().map(Item::into_entry).collect::<Result<_, _>>().map_err(de::Error::custom)
}

/// What an entry takes in memory, as [`ENTRIES_DECODED_BYTES_MAX`] counts it.
pub(crate) fn decoded_bytes(e: &Entry) -> usize {
    let payload = match &e.payload {
        Payload::Value(v) => v.bytes.len() + v.metadata.as_ref().map_or(0, Vec::len),
        Payload::Expired { .. } | Payload::Tombstone => 0,
    };
    std::mem::size_of::<Entry>() + e.key.len() + payload
}

#[cfg(test)]
mod tests;
