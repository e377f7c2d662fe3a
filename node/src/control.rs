//! The control protocol: how `lethe --data DIR put/get/del/list/status` talks to the running node
//! of DIR. It connects over loopback QUIC with the node's own key (only the owner of the data
//! directory can), opens a stream, sends one [`Request`] frame and reads one [`Response`] frame;
//! but a `List` is answered in pages, as many `Response::Listed` frames as it takes (each at most
//! [`LIST_PAGE_BYTES_MAX`] of keys and values), the last with `more: false`. So any value within
//! the engine's limits can be listed, and the node reads at most [`LIST_SCAN_ITEMS`] entries per
//! turn of the replica's lock. A `Watch` is answered with a stream of events until the owner
//! finishes its side; an `Import` carries at most [`IMPORT_ENTRIES_MAX`] entries, applied whole
//! or refused whole.
//!
//! Every request arrives in one frame, bounded by the transport's frame reader (4 MiB); lists in
//! a request are bounded again while they decode.

use crate::node::Status;
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::{Change, Dot, Entry, Hlc, Item, Payload, ReplicaId, Seq, Stamp, Value};
use serde::{Deserialize, Serialize};

/// Largest listing one request may ask for.
pub const LIST_LIMIT_MAX: usize = 100_000;

/// Keys and values one page of a listing carries at most (a single entry larger than this, up
/// to the engine's 1 MiB value and 1 KiB key, goes in a page of its own). Well under the 4 MiB
/// frame limit, so a page always fits a frame.
pub const LIST_PAGE_BYTES_MAX: usize = 2 << 20;

/// Entries read from the store per turn of the replica's lock while listing: the lock is held
/// for a few entries at a time, and at most this many values are in memory beside the page.
pub const LIST_SCAN_ITEMS: usize = 16;

/// The most dead records one [`Request::ListDead`] is answered with (and one
/// [`Request::Import`] may carry): each is a key of at most 1 KiB and a few integers, so an
/// answer stays near 1 MiB, well under the 4 MiB frame limit.
pub const DEAD_LIST_LIMIT_MAX: usize = 1000;

/// The most entries one [`Request::Import`] may carry; a request with more is refused while it
/// decodes, before the list grows past this.
pub const IMPORT_ENTRIES_MAX: usize = 1000;

/// Keys, values and metadata one [`Request::Import`] should carry at most (an entry larger than
/// this, up to the engine's limits, goes in a request of its own): half the frame limit, so a
/// request always fits a frame.
pub const IMPORT_BATCH_BYTES_MAX: usize = 2 << 20;

/// CBOR framing counted per record on top of its key, value and metadata (three byte strings,
/// four integers and their lengths), so a count of bytes stays above what records encode to.
pub const RECORD_OVERHEAD_BYTES: usize = 64;

/// A write's stamp as the control protocol carries it: its HLC (48 bits of wall ms, 16 of
/// logical counter, as one integer) and its writer's replica id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WireStamp {
    /// The HLC, as the 64-bit integer [`Hlc`] is.
    pub hlc: u64,
    /// The writer's replica id.
    pub writer: u64,
}

impl From<Stamp> for WireStamp {
    fn from(s: Stamp) -> WireStamp {
        WireStamp { hlc: s.hlc.0, writer: s.replica.0 }
    }
}

impl From<WireStamp> for Stamp {
    fn from(s: WireStamp) -> Stamp {
        Stamp { hlc: Hlc(s.hlc), replica: ReplicaId(s.writer) }
    }
}

/// One live entry with everything a read knows of it: what `get`, `list`, `watch` and `export`
/// show, and what `import` loads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
    /// The entry's opaque metadata, if any.
    #[serde(with = "serde_bytes")]
    pub metadata: Option<Vec<u8>>,
    /// When the value expires (absolute wall ms), if it has a TTL.
    pub expires_at_ms: Option<u64>,
    /// The write's stamp.
    pub stamp: WireStamp,
    /// The replica that numbered the write: the stamp's writer, or the member that admitted a
    /// device's write.
    pub dot_writer: u64,
    /// Its sequence number for the write (the dot is `(dot_writer, seq)`).
    pub seq: u64,
}

impl Record {
    /// The entry's bytes as a page or batch counts them (see [`RECORD_OVERHEAD_BYTES`]).
    #[must_use]
    pub fn counted_bytes(&self) -> usize {
        self.key.len() + self.value.len() + self.metadata.as_ref().map_or(0, Vec::len) + RECORD_OVERHEAD_BYTES
    }

    /// The write's dot.
    #[must_use]
    pub fn dot(&self) -> Dot {
        Dot { replica: ReplicaId(self.dot_writer), seq: Seq(self.seq) }
    }

    /// The engine entry this record describes (a value), for an import.
    #[must_use]
    pub fn into_entry(self) -> Entry {
        Entry {
            dot: self.dot(),
            key: self.key,
            stamp: self.stamp.into(),
            payload: Payload::Value(Value {
                bytes: self.value,
                expires_at_ms: self.expires_at_ms,
                metadata: self.metadata,
            }),
        }
    }
}

impl From<Item> for Record {
    fn from(i: Item) -> Record {
        Record {
            key: i.key,
            value: i.value,
            metadata: i.metadata,
            expires_at_ms: i.expires_at_ms,
            stamp: i.stamp.into(),
            dot_writer: i.dot.replica.0,
            seq: i.dot.seq.0,
        }
    }
}

/// One dead record (a tombstone, or a value whose TTL passed) with its stamp and dot: what
/// `export` lists besides the live entries, so a bootstrap import holds what a network bootstrap
/// sends (`Replica::dead_entries`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeadRecord {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The stamp of the delete, or of the write whose value expired.
    pub stamp: WireStamp,
    /// The replica that numbered it (see [`Record::dot_writer`]).
    pub dot_writer: u64,
    /// Its sequence number.
    pub seq: u64,
    /// `None` for a tombstone; for an expired value, when it expired (absolute wall ms).
    pub expired_at_ms: Option<u64>,
}

impl DeadRecord {
    /// The dead record `entry` is, or `None` if it holds a value (`Replica::dead_entries` gives
    /// an expired value as the expired record it has become).
    #[must_use]
    pub fn from_entry(entry: Entry) -> Option<DeadRecord> {
        let expired_at_ms = match entry.payload {
            Payload::Tombstone => None,
            Payload::Expired { expires_at_ms } => Some(expires_at_ms),
            Payload::Value(_) => return None,
        };
        Some(DeadRecord {
            key: entry.key,
            stamp: entry.stamp.into(),
            dot_writer: entry.dot.replica.0,
            seq: entry.dot.seq.0,
            expired_at_ms,
        })
    }

    /// The bytes a batch counts for it (see [`RECORD_OVERHEAD_BYTES`]).
    #[must_use]
    pub fn counted_bytes(&self) -> usize {
        self.key.len() + RECORD_OVERHEAD_BYTES
    }

    /// The engine entry this record describes, for an import.
    #[must_use]
    pub fn into_entry(self) -> Entry {
        Entry {
            dot: Dot { replica: ReplicaId(self.dot_writer), seq: Seq(self.seq) },
            key: self.key,
            stamp: self.stamp.into(),
            payload: match self.expired_at_ms {
                None => Payload::Tombstone,
                Some(expires_at_ms) => Payload::Expired { expires_at_ms },
            },
        }
    }
}

/// One change a watch reports.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Event {
    /// The key now holds this value (a local write or one received from a peer).
    Put(Record),
    /// The key was deleted.
    Deleted {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The tombstone's stamp; `None` when a peer showed the entry dead (its newer write is
        /// not known here).
        stamp: Option<WireStamp>,
    },
    /// The key's value expired (reported when it is purged, up to a GC interval after its
    /// expiry time).
    Expired {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The stamp of the write whose value expired.
        stamp: WireStamp,
    },
}

impl From<Change> for Event {
    fn from(c: Change) -> Event {
        match c {
            Change::Put(item) => Event::Put(item.into()),
            Change::Delete { key, stamp } => Event::Deleted { key, stamp: stamp.map(Into::into) },
            Change::Expired { key, stamp } => Event::Expired { key, stamp: stamp.into() },
        }
    }
}

/// A request to the node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Write a value.
    Put {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
        /// The value.
        #[serde(with = "serde_bytes")]
        value: Vec<u8>,
        /// Time to live, if any.
        ttl_ms: Option<u64>,
        /// Opaque metadata stored and replicated with the value, if any.
        #[serde(default, with = "serde_bytes")]
        metadata: Option<Vec<u8>>,
    },
    /// Read a value.
    Get {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// Delete a key.
    Delete {
        /// The key.
        #[serde(with = "serde_bytes")]
        key: Vec<u8>,
    },
    /// List live keys with a prefix, in key order.
    List {
        /// The prefix (empty: every key).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// At most this many.
        limit: usize,
        /// Only keys after this one (to go on from the last key of an earlier listing, past
        /// [`LIST_LIMIT_MAX`]).
        #[serde(default, with = "serde_bytes")]
        after: Option<Vec<u8>>,
    },
    /// The node's status.
    Status,
    /// Stream changes to keys under a prefix, local and replicated, from now on: answered with
    /// [`Response::Watching`] once subscribed, then one [`Response::Event`] per change (and
    /// [`Response::Lagged`] if the owner reads too slowly), until the owner finishes its side of
    /// the stream or the connection closes.
    Watch {
        /// The prefix (empty: every key).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
    },
    /// Load entries from an export (`Replica::import`, or `Replica::import_as_bootstrap` for a
    /// full export into a blank node): applied whole or not at all.
    Import {
        /// The entries, at most [`IMPORT_ENTRIES_MAX`] (checked while decoding).
        #[serde(deserialize_with = "bounded_records")]
        entries: Vec<Record>,
        /// Dead records (tombstones, expired values) of a bootstrap import, applied before
        /// `entries` in the same commit; at most [`DEAD_LIST_LIMIT_MAX`] (checked while
        /// decoding). A node takes them as a bootstrap takes a sender's dead records; as its
        /// own writes, it counts them stale.
        #[serde(default, deserialize_with = "bounded_dead")]
        dead: Vec<DeadRecord>,
        /// How they are applied.
        #[serde(default)]
        mode: ImportMode,
    },
    /// End a bootstrap import ([`ImportMode::Bootstrap`]): merge the export's source vector and
    /// observe its clock (`Replica::finish_import_as_bootstrap`).
    FinishImport {
        /// The source's vector as `(replica, seq)` pairs, at most [`VECTOR_COMPONENTS_MAX`]
        /// (checked while decoding).
        #[serde(deserialize_with = "bounded_vector")]
        vector: Vec<(u64, u64)>,
        /// The source's clock, as the 64-bit integer [`Hlc`] is.
        clock: u64,
    },
    /// The dead records (tombstones, expired values) under a prefix, in key order: answered with
    /// one [`Response::DeadListed`]; fewer than `limit` means there are no more.
    ListDead {
        /// The prefix (empty: every key).
        #[serde(with = "serde_bytes")]
        prefix: Vec<u8>,
        /// At most this many (capped at [`DEAD_LIST_LIMIT_MAX`]).
        limit: usize,
        /// Only keys after this one.
        #[serde(default, with = "serde_bytes")]
        after: Option<Vec<u8>>,
    },
    /// The node's replica id, vector and clock, and whether it is blank: what an export's
    /// header records and what an import asks before it picks its mode.
    Position,
    /// Enrol a device (on a member): [`crate::Node::enrol_device`]. Answered with
    /// [`Response::DeviceAdded`].
    DeviceAdd {
        /// Its node id (64 hex digits).
        node_id: String,
        /// A name for it, at most [`crate::DEVICE_NAME_BYTES_MAX`] bytes.
        name: Option<String>,
    },
    /// One page of the enrolled devices, in replica id order: [`crate::Node::devices`].
    /// Answered with [`Response::Devices`].
    DeviceList {
        /// Only devices whose replica id (16 hex digits) sorts after this one: the last of the
        /// previous page.
        after: Option<String>,
        /// At most this many (capped at [`DEVICE_LIST_PAGE_MAX`]).
        limit: usize,
    },
    /// Revoke a device (on a member): [`crate::Node::remove_device`]. Answered with
    /// [`Response::DeviceRemoved`].
    DeviceRemove {
        /// Its node id (64 hex digits).
        node_id: String,
    },
}

/// The most devices one [`Request::DeviceList`] is answered with: each is a few hundred bytes
/// (ids, a name of at most 128 bytes, a vector over members), so a page stays well under the
/// 4 MiB frame limit.
pub const DEVICE_LIST_PAGE_MAX: usize = 1000;

/// How an [`Request::Import`] applies its entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ImportMode {
    /// As the node's own writes that keep each entry's time (`Replica::import`).
    #[default]
    Own,
    /// Under the entries' own dots and stamps, as a bootstrap chunk (`Replica::import_as_bootstrap`):
    /// a batch of a full export into a blank node, to be ended by [`Request::FinishImport`].
    Bootstrap {
        /// The first batch, which needs the node blank; a later one needs its vector still empty.
        first: bool,
    },
}

/// Decodes at most [`IMPORT_ENTRIES_MAX`] records, refusing a longer list as soon as it passes
/// the limit (the list never grows beyond it, whatever length the frame claims).
fn bounded_records<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<Record>, D::Error> {
    bounded::<_, _, IMPORT_ENTRIES_MAX>(d, "entries")
}

/// Decodes at most [`DEAD_LIST_LIMIT_MAX`] dead records, like [`bounded_records`].
fn bounded_dead<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<DeadRecord>, D::Error> {
    bounded::<_, _, DEAD_LIST_LIMIT_MAX>(d, "dead records")
}

/// Decodes a vector of at most [`VECTOR_COMPONENTS_MAX`] components, like [`bounded_records`].
fn bounded_vector<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<(u64, u64)>, D::Error> {
    bounded::<_, _, VECTOR_COMPONENTS_MAX>(d, "vector components")
}

fn bounded<'de, D, T, const MAX: usize>(d: D, what: &'static str) -> Result<Vec<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Deserialize<'de>,
{
    struct Bounded<T, const MAX: usize>(&'static str, std::marker::PhantomData<T>);
    impl<'de, T: Deserialize<'de>, const MAX: usize> serde::de::Visitor<'de> for Bounded<T, MAX> {
        type Value = Vec<T>;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            write!(f, "a list of at most {MAX} {}", self.0)
        }
        fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Vec<T>, A::Error> {
            let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0).min(MAX).min(1024));
            while let Some(x) = seq.next_element()? {
                if out.len() == MAX {
                    return Err(serde::de::Error::custom(format!("a request carries more than {MAX} {}", self.0)));
                }
                out.push(x);
            }
            Ok(out)
        }
    }
    d.deserialize_seq(Bounded::<T, MAX>(what, std::marker::PhantomData))
}

/// The node's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A write was made durable.
    Written {
        /// The write's seq (the node's own counter; the dot is `(stamp.writer, seq)`).
        seq: u64,
        /// The write's stamp.
        stamp: WireStamp,
    },
    /// The entry, if the key is live.
    Found(Option<Box<Record>>),
    /// One page of a listing, in key order.
    Listed {
        /// The entries.
        items: Vec<Record>,
        /// Whether another page follows on the stream.
        more: bool,
    },
    /// The status.
    Status(Box<Status>),
    /// A watch is subscribed: changes from now on follow.
    Watching,
    /// A change under a watch's prefix.
    Event(Event),
    /// A watch fell behind by more than its queue holds (`lethe_node::watch`) and this many
    /// changes under its prefix were dropped; the changes after follow (list the prefix again
    /// to resync).
    Lagged {
        /// Changes missed.
        missed: u64,
    },
    /// Dead records under a prefix, in key order (answers [`Request::ListDead`]).
    DeadListed {
        /// The records.
        items: Vec<DeadRecord>,
    },
    /// An import was applied.
    Imported {
        /// Entries stored.
        applied: u64,
        /// Entries that lost to (or equalled) what the node holds.
        superseded: u64,
        /// Entries the node knows were superseded or deleted.
        stale: u64,
    },
    /// A bootstrap import was ended: the source's vector is merged.
    ImportFinished,
    /// The node's position (answers [`Request::Position`]).
    Position {
        /// Its replica id.
        replica: u64,
        /// Its vector, as `(replica, seq)` pairs.
        vector: Vec<(u64, u64)>,
        /// Its clock, as the 64-bit integer [`Hlc`] is.
        clock: u64,
        /// Whether it holds nothing and has seen nothing (`Replica::is_blank`).
        blank: bool,
    },
    /// An import was refused whole because of one entry; nothing of it was applied.
    ImportRefused {
        /// The entry's position in the request, from 0.
        index: u64,
        /// What is wrong with it.
        reason: String,
    },
    /// A device was enrolled (answers [`Request::DeviceAdd`]).
    DeviceAdded {
        /// Whether anything changed (enrolling again only renames).
        changed: bool,
    },
    /// One page of the enrolled devices (answers [`Request::DeviceList`]).
    Devices {
        /// The devices, in replica id order.
        items: Vec<crate::DeviceInfo>,
        /// Whether more follow (ask again after the last one's replica id).
        more: bool,
    },
    /// A device was removed (answers [`Request::DeviceRemove`]).
    DeviceRemoved {
        /// Whether it was enrolled.
        removed: bool,
    },
    /// The request failed.
    Error(String),
}

/// Encodes a request or response as one frame.
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>, String> {
    let mut out = Vec::new();
    ciborium::into_writer(msg, &mut out).map_err(|e| e.to_string())?;
    Ok(out)
}

/// Decodes one frame (already bounded by the frame reader).
pub fn decode<T: serde::de::DeserializeOwned>(frame: &[u8]) -> Result<T, String> {
    let mut reader = frame;
    let msg = ciborium::from_reader(&mut reader).map_err(|e| format!("malformed control message: {e}"))?;
    if !reader.is_empty() {
        return Err(format!("{} bytes after the control message", reader.len()));
    }
    Ok(msg)
}
