//! The messages of a sync session, and their CBOR frames.
//!
//! Every frame is one CBOR-encoded [`Message`], at most [`FRAME_BYTES_MAX`] bytes. Decoding
//! checks the length before it reads and fails with a [`SyncError`] rather than panicking; the
//! decoded message is checked again by the session before anything is applied.

use crate::entry::Entry;
use crate::fingerprint::ItemId;
use crate::hlc::Hlc;
use crate::ids::ReplicaId;
use crate::limits::{self, HELLO_MEMBERS_MAX, RANGE_PARTS_MAX, REPLY_ITEMS_MAX};
use crate::live::Push;
use crate::membership::MemberInfo;
use crate::session::SyncError;
use crate::session::reconcile::{LEAF_ITEMS, SKETCH_KEYS_MAX};
use crate::vector::VersionVector;
use serde::de::{self, DeserializeSeed, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};

/// The protocol version carried in every handshake (and, by the transport, in ALPN). 6: a
/// member's cursor claim carries the highest stamp it handled, a member's handshake to a device
/// that stamp, a device's handshake its unsettled keys (a node of 5 reads none of them, so the
/// two do not connect); 5: acknowledgements are signed (`sign.rs`): a handshake's member records and a device's
/// handshake carry signatures, an `Ack` its proof, a device record its device's signature; 4: a
/// batch of entries is columnar (keys, values and numbers in runs of their own, see
/// [`super::batch`]) and may carry entries numbered by another replica than stamped them; the
/// transport's ALPN says whether frames may be compressed; device sessions; device records
/// between members (the handshake says how far the sender merged the receiver's); 3: the
/// transport's frames may be compressed (a flag in the length prefix, zstd bodies); 2: the
/// handshake carries the wall time and no frontier.
pub const PROTOCOL_VERSION: u32 = 6;
/// Device records per `Records` message, at most.
pub const RECORDS_PER_MESSAGE_MAX: usize = 4096;
/// Bytes of device records per `Records` message, at most (as the sender counts them, an upper
/// bound of their CBOR size): half the frame limit, so that a frame always fits it (one record,
/// its two vectors at [`crate::limits::VECTOR_COMPONENTS_MAX`] components, takes under 40 KiB).
pub const RECORDS_BYTES_PER_MESSAGE_MAX: usize = FRAME_BYTES_MAX / 2;
/// The largest frame a session sends or accepts: 4 MiB (a chunk of up to 1 MiB of entries plus
/// one entry of the largest size).
pub const FRAME_BYTES_MAX: usize = 4 << 20;

/// The handshake each side sends first.
///
/// On the wire a flat array in field order (no field names): every session pays for it, the
/// one-round-trip "nothing to do" session included.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "HelloWire", from = "HelloWire")]
pub struct Hello {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub version: u32,
    /// The sender.
    pub replica: ReplicaId,
    /// The sender's version vector.
    pub vector: VersionVector,
    /// The sender's members and their acknowledged vectors (the sender included).
    pub members: Vec<MemberInfo>,
    /// How many unpurged values the sender holds (0 with an empty vector means "bootstrap me").
    pub values: u64,
    /// The sender asks for anti-entropy: both sides reconcile by fingerprints, even with equal
    /// vectors. This is what repairs a write that won by the documented exception at some
    /// replicas while others know it as dead.
    pub anti_entropy: bool,
    /// The sender's wall clock when it sent this, in ms since the Unix epoch: the receiver
    /// measures how far its own clock is from the sender's ([`crate::Replica::note_peer_wall`]).
    pub wall_ms: u64,
    /// The receiver's records clock up to which the sender merged the receiver's device records
    /// (`device/records.rs`): in its next session, the receiver sends only those changed since.
    pub records_seen: u64,
    /// The seqs members lost to restores from older copies, as the sender knows them: its own,
    /// signed by it, and the statements it kept of others, as they signed them (at most
    /// [`crate::replica::HELLO_LOST_STATEMENTS_MAX`]; empty unless a member was restored).
    /// Members tell their devices, which upload their own writes under those dots again
    /// (`replica/lost.rs`, `replica/restore.rs`).
    pub lost: Vec<crate::replica::LostStatement>,
}

#[derive(Serialize, Deserialize)]
struct HelloWire(
    u32,
    ReplicaId,
    #[serde(deserialize_with = "limits::bounded_vector")] VersionVector,
    #[serde(deserialize_with = "limits::bounded_vec::<_, _, HELLO_MEMBERS_MAX>")] Vec<MemberWire>,
    u64,
    bool,
    u64,
    u64,
    #[serde(default, deserialize_with = "limits::bounded_vec::<_, _, { crate::replica::HELLO_LOST_STATEMENTS_MAX }>")]
    Vec<crate::replica::LostStatement>,
);

/// A member record on the wire: `[replica, acked, last_heard_ms, signature]` (the signature at
/// most [`crate::sign::SIGNATURE_BYTES_MAX`] bytes, empty when unsigned).
#[derive(Serialize, Deserialize)]
struct MemberWire(
    ReplicaId,
    #[serde(deserialize_with = "limits::bounded_vector")] VersionVector,
    u64,
    #[serde(serialize_with = "serde_bytes::serialize", deserialize_with = "crate::sign::bounded_signature")] Vec<u8>,
);

impl From<Hello> for HelloWire {
    fn from(h: Hello) -> Self {
        let members =
            h.members.into_iter().map(|m| MemberWire(m.replica, m.acked, m.last_heard_ms, m.signature)).collect();
        HelloWire(h.version, h.replica, h.vector, members, h.values, h.anti_entropy, h.wall_ms, h.records_seen, h.lost)
    }
}

impl From<HelloWire> for Hello {
    fn from(w: HelloWire) -> Self {
        let HelloWire(version, replica, vector, members, values, anti_entropy, wall_ms, records_seen, lost) = w;
        let members = members
            .into_iter()
            .map(|MemberWire(replica, acked, last_heard_ms, signature)| MemberInfo {
                replica,
                acked,
                last_heard_ms,
                signature,
            })
            .collect();
        Hello { version, replica, vector, members, values, anti_entropy, wall_ms, records_seen, lost }
    }
}

/// A key range `[lower, upper)`; `None` is unbounded.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct KeyBounds(
    /// Lower bound, included.
    #[serde(with = "serde_bytes")]
    pub Option<Vec<u8>>,
    /// Upper bound, excluded.
    #[serde(with = "serde_bytes")]
    pub Option<Vec<u8>>,
);

/// Bytes of a range fingerprint on the wire: the first 16 bytes of the 256-bit sum.
pub const FINGERPRINT_WIRE_BYTES: usize = 16;

/// What a source says about one part of a range.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PartContent {
    /// The part's fingerprint and item count.
    Fingerprint([u8; FINGERPRINT_WIRE_BYTES], u64),
    /// The ids of every item in the part (small parts).
    Items(Vec<ItemId>),
}

/// One part of a [`RangeGroup`]: it ends at `upper` (excluded; `None` = unbounded) and starts
/// where the previous part ended.
///
/// On the wire: `[upper, count, fingerprint, ids]`, where exactly one of `fingerprint` (16
/// bytes) and `ids` (4 bytes per item, `count` of them) is non-empty, or both are empty for an
/// empty part. No field names, no variant tags: a part costs about 30 bytes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(into = "PartWire", try_from = "PartWire")]
pub struct RangePart(pub Option<Vec<u8>>, pub PartContent);

#[derive(Serialize, Deserialize)]
struct PartWire(
    #[serde(with = "serde_bytes")] Option<Vec<u8>>,
    u64,
    #[serde(with = "serde_bytes")] Vec<u8>,
    #[serde(with = "serde_bytes")] Vec<u8>,
);

impl From<RangePart> for PartWire {
    fn from(p: RangePart) -> Self {
        match p.1 {
            PartContent::Fingerprint(fp, count) => PartWire(p.0, count, fp.to_vec(), Vec::new()),
            PartContent::Items(ids) => {
                let packed = ids.iter().flat_map(|id| id.0.to_be_bytes()).collect();
                PartWire(p.0, ids.len() as u64, Vec::new(), packed)
            }
        }
    }
}

impl TryFrom<PartWire> for RangePart {
    type Error = String;

    fn try_from(w: PartWire) -> Result<Self, String> {
        let PartWire(upper, count, fp, ids) = w;
        let content = if fp.is_empty() {
            if count > LEAF_ITEMS {
                return Err(format!("an item list of {count} ids, more than a part lists ({LEAF_ITEMS})"));
            }
            if ids.len() as u64 != count.saturating_mul(4) {
                return Err(format!("item list of {} bytes does not hold {count} ids", ids.len()));
            }
            PartContent::Items(
                ids.chunks_exact(4).map(|c| ItemId(u32::from_be_bytes([c[0], c[1], c[2], c[3]]))).collect(),
            )
        } else {
            let fp: [u8; FINGERPRINT_WIRE_BYTES] =
                fp.try_into().map_err(|v: Vec<u8>| format!("fingerprint of {} bytes", v.len()))?;
            if !ids.is_empty() {
                return Err("a part has both a fingerprint and an item list".into());
            }
            PartContent::Fingerprint(fp, count)
        };
        Ok(RangePart(upper, content))
    }
}

/// A source's live items as an invertible Bloom lookup table (see [`crate::sketch`]), sent
/// instead of the first range fingerprints in an anti-entropy session that expects few
/// differences.
///
/// On the wire: `[size, fingerprint, count, cells]`: cells per subtable, the first 16 bytes of
/// the fingerprint of all the source's live items and their count (which the items found must
/// account for), and the cells in [`crate::sketch::Sketch::encode`] form.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SketchMsg(
    /// Cells per subtable.
    pub u32,
    /// The fingerprint of every live item of the source, as sent on the wire.
    #[serde(with = "serde_bytes")]
    pub [u8; FINGERPRINT_WIRE_BYTES],
    /// How many live items the source holds.
    pub u64,
    /// The cells.
    #[serde(with = "serde_bytes")]
    pub Vec<u8>,
);

/// An item of a source's sketch that the sink lacks: its key, and its stamp's HLC and writer.
/// The source sends the key's entry if the sink's vector does not cover it; if it does, and the
/// source still holds that very item, the sink saw it and dropped it: the source drops it too.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WantedItem(
    /// The key.
    #[serde(with = "serde_bytes")]
    pub Vec<u8>,
    /// The stamp's HLC.
    pub u64,
    /// The stamp's writer.
    pub u64,
);

/// Contiguous parts starting at `lower` (included; `None` = unbounded).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RangeGroup(#[serde(with = "serde_bytes")] pub Option<Vec<u8>>, pub Vec<RangePart>);

/// Decodes the groups of a `Ranges`, refusing more than [`RANGE_PARTS_MAX`] groups and parts in
/// all as they arrive: a part takes about ten times its smallest wire form in memory.
fn bounded_ranges<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<RangeGroup>, D::Error> {
    struct Budget(usize);
    impl Budget {
        fn take<E: de::Error>(&mut self) -> Result<(), E> {
            self.0 = self.0.checked_sub(1).ok_or_else(|| {
                E::custom(format!("a Ranges message of more than {RANGE_PARTS_MAX} groups and parts"))
            })?;
            Ok(())
        }
    }
    struct Groups;
    struct Group<'a>(&'a mut Budget);
    struct Parts<'a>(&'a mut Budget);
    impl<'de> Visitor<'de> for Groups {
        type Value = Vec<RangeGroup>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of range groups")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut budget = Budget(RANGE_PARTS_MAX);
            let mut out = Vec::new();
            while let Some(g) = seq.next_element_seed(Group(&mut budget))? {
                budget.take()?;
                out.push(g);
            }
            Ok(out)
        }
    }
    impl<'de> DeserializeSeed<'de> for Group<'_> {
        type Value = RangeGroup;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<RangeGroup, D::Error> {
            d.deserialize_tuple(2, self)
        }
    }
    impl<'de> Visitor<'de> for Group<'_> {
        type Value = RangeGroup;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a range group [lower, parts]")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<RangeGroup, A::Error> {
            let lower: Option<serde_bytes::ByteBuf> =
                seq.next_element()?.ok_or_else(|| de::Error::custom("range group without its lower bound"))?;
            let parts =
                seq.next_element_seed(Parts(self.0))?.ok_or_else(|| de::Error::custom("range group without parts"))?;
            if seq.next_element::<de::IgnoredAny>()?.is_some() {
                return Err(de::Error::custom("range group has fields beyond [lower, parts]"));
            }
            Ok(RangeGroup(lower.map(serde_bytes::ByteBuf::into_vec), parts))
        }
    }
    impl<'de> DeserializeSeed<'de> for Parts<'_> {
        type Value = Vec<RangePart>;
        fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Vec<RangePart>, D::Error> {
            d.deserialize_seq(self)
        }
    }
    impl<'de> Visitor<'de> for Parts<'_> {
        type Value = Vec<RangePart>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("a list of range parts")
        }
        fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<RangePart>, A::Error> {
            let mut out = Vec::new();
            while let Some(p) = seq.next_element()? {
                self.0.take()?;
                out.push(p);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Groups)
}

/// One message of a session. "Source" is the side sending its data, "sink" the side receiving
/// it; both sides are both at once.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Handshake, both ways.
    Hello(Hello),
    /// Source → sink: entries to apply (delta, bootstrap chunk, tombstone records, or items a
    /// reconciliation found missing). Partial: the sink applies them, not the vector.
    Entries(#[serde(with = "super::batch")] Vec<Entry>),
    /// Source → sink: range summaries for reconciliation (at most [`RANGE_PARTS_MAX`] groups
    /// and parts in all).
    Ranges(#[serde(deserialize_with = "bounded_ranges")] Vec<RangeGroup>),
    /// Source → sink: the source's live items as a sketch, answered by a `Reply` naming the
    /// keys the sink lacks (or asking for the whole range when the sketch did not decode).
    Sketch(SketchMsg),
    /// Source → sink: the sink now has everything the source held beyond the sink's vector, as of
    /// this vector; and the source's clock then. The sink merges the vector and observes the
    /// clock (see [`crate::Delta::clock`]).
    Done(#[serde(deserialize_with = "limits::bounded_vector")] VersionVector, Hlc),
    /// Source → sink, instead of `Done`: the flow ends, but the source held back entries the
    /// sink would refuse for drift (`replica/clock.rs`), so the transfer is partial. The sink
    /// keeps what it applied, merges no vector and drops nothing as dead: with a newer version
    /// held back, dropping the one it holds would let an older one back in.
    Partial,
    /// Sink → source: ranges whose fingerprints differ (split them), ranges where the sink holds
    /// nothing (send them whole), and items the sink lacks (by id from a list, or by key from a
    /// sketch).
    Reply {
        /// Ranges to split further: parts of the source's last `Ranges`, each at most once.
        #[serde(deserialize_with = "limits::bounded_vec::<_, _, RANGE_PARTS_MAX>")]
        split: Vec<KeyBounds>,
        /// Ranges to send whole: parts of the source's last `Ranges`, each at most once.
        #[serde(deserialize_with = "limits::bounded_vec::<_, _, RANGE_PARTS_MAX>")]
        send: Vec<KeyBounds>,
        /// Items to send, by their ids in the source's item lists.
        #[serde(deserialize_with = "limits::bounded_vec::<_, _, REPLY_ITEMS_MAX>")]
        want: Vec<ItemId>,
        /// Items of the source's sketch the sink lacks, by key and stamp.
        #[serde(deserialize_with = "limits::bounded_vec::<_, _, SKETCH_KEYS_MAX>")]
        keys: Vec<WantedItem>,
    },
    /// Sink → source: the sink's vector after applying `Done` (or, on a live stream, a push that
    /// ended a delta), and the sink's signature over it (`sign.rs`), so the source can relay it
    /// to members the sink never talks to; `None`: unsigned, it counts at the source only.
    Ack(#[serde(deserialize_with = "limits::bounded_vector")] VersionVector, Option<crate::sign::AckProof>),
    /// On a live stream, not in a session: entries committed since the last push.
    Push(Push),
    /// Device → member: a device session's handshake (`device/session.rs`).
    DeviceHello(crate::device::message::DeviceHello),
    /// Member → device: the answer to a [`Message::DeviceHello`].
    MemberHello(crate::device::message::MemberHello),
    /// Device → member: queued writes, in upload-seq order, each under its dot (device, upload
    /// seq); `last` on the final one.
    Upload {
        /// The writes.
        #[serde(with = "super::batch")]
        entries: Vec<Entry>,
        /// Whether no upload follows in this session.
        last: bool,
    },
    /// Member → member, right after the handshake: device records changed since the peer last
    /// said it merged (`records_seen` of its previous handshake), at most
    /// [`RECORDS_PER_MESSAGE_MAX`]; the sender's records clock up to which they go; `last` on
    /// the final one (one is always sent).
    Records(
        u64,
        bool,
        #[serde(deserialize_with = "limits::bounded_vec::<_, _, RECORDS_PER_MESSAGE_MAX>")]
        Vec<crate::device::records::RecordWire>,
    ),
    /// Member → device: one answer per write of the last `Upload`, in its order.
    Admitted(#[serde(deserialize_with = "crate::device::message::bounded_admissions")] Vec<crate::device::Admission>),
    /// Member → device, before a download whose vector names more of the member's own writes
    /// than its handshake's proof: the member's signature over its counter then
    /// (`device/session.rs`).
    MemberProof(crate::device::SeqProof),
}

impl Message {
    /// The message's name, for errors and logs.
    #[must_use]
    pub fn name(&self) -> &'static str {
        match self {
            Message::Hello(_) => "Hello",
            Message::Entries(_) => "Entries",
            Message::Ranges(_) => "Ranges",
            Message::Sketch(_) => "Sketch",
            Message::Done(..) => "Done",
            Message::Partial => "Partial",
            Message::Reply { .. } => "Reply",
            Message::Ack(..) => "Ack",
            Message::Push(_) => "Push",
            Message::DeviceHello(_) => "DeviceHello",
            Message::MemberHello(_) => "MemberHello",
            Message::Upload { .. } => "Upload",
            Message::Admitted(_) => "Admitted",
            Message::Records(..) => "Records",
            Message::MemberProof(_) => "MemberProof",
        }
    }

    /// Encodes the message as one frame.
    pub fn encode(&self) -> Result<Vec<u8>, SyncError> {
        let mut out = Vec::new();
        ciborium::into_writer(self, &mut out).map_err(|e| SyncError::Encode(e.to_string()))?;
        if out.len() > FRAME_BYTES_MAX {
            return Err(SyncError::FrameTooLarge { len: out.len(), max: FRAME_BYTES_MAX });
        }
        Ok(out)
    }

    /// Decodes one frame, refusing one longer than [`FRAME_BYTES_MAX`] before reading it.
    pub fn decode(frame: &[u8]) -> Result<Message, SyncError> {
        if frame.len() > FRAME_BYTES_MAX {
            return Err(SyncError::FrameTooLarge { len: frame.len(), max: FRAME_BYTES_MAX });
        }
        let mut reader = frame;
        let msg = ciborium::from_reader(&mut reader).map_err(|e| SyncError::Malformed(e.to_string()))?;
        if !reader.is_empty() {
            return Err(SyncError::Malformed(format!("{} bytes after the message", reader.len())));
        }
        Ok(msg)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_garbage_is_refused() {
        let msg = Message::Reply {
            split: vec![KeyBounds(None, Some(b"m".to_vec()))],
            send: vec![],
            want: vec![ItemId(7), ItemId(u32::MAX)],
            keys: vec![WantedItem(b"k".to_vec(), 5, 9)],
        };
        let frame = msg.encode().unwrap();
        assert_eq!(Message::decode(&frame).unwrap(), msg);
        let ranges = Message::Ranges(vec![RangeGroup(
            Some(b"a".to_vec()),
            vec![
                RangePart(Some(b"b".to_vec()), PartContent::Fingerprint([7; 16], 40)),
                RangePart(Some(b"c".to_vec()), PartContent::Items(vec![ItemId(1), ItemId(2)])),
                RangePart(None, PartContent::Items(vec![])),
            ],
        )]);
        assert_eq!(Message::decode(&ranges.encode().unwrap()).unwrap(), ranges);
        let sketch = Message::Sketch(SketchMsg(4, [3; 16], 1000, vec![1, 2, 3]));
        assert_eq!(Message::decode(&sketch.encode().unwrap()).unwrap(), sketch);
        assert!(matches!(Message::decode(&frame[..frame.len() - 1]), Err(SyncError::Malformed(_))));
        let mut longer = frame.clone();
        longer.push(0);
        assert!(matches!(Message::decode(&longer), Err(SyncError::Malformed(_))));
        assert!(matches!(Message::decode(&vec![0; FRAME_BYTES_MAX + 1]), Err(SyncError::FrameTooLarge { .. })));
        assert!(Message::decode(&[0xff, 0x00, 0x13]).is_err());
    }
}
