//! The JSON forms the commands print (`--json`) and `import` reads back.
//!
//! Bytes (keys, values, metadata) are written as UTF-8 text when they are valid UTF-8, else as
//! base64 (standard alphabet, padded), with a `<field>_encoding` field of `"utf8"` or
//! `"base64"` beside each. A stamp is `{"hlc": N, "writer": "16 hex digits"}` (the HLC as the
//! 64-bit integer it is: wall ms << 16 | logical counter), a dot `{"writer": .., "seq": N}`.

use anyhow::{Result, anyhow, bail};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use lethe_engine::{ReplicaId, Stamp};
use lethe_node::control::{DeadRecord, Event, Record, WireStamp};
use serde::{Deserialize, Serialize};

/// How a bytes field is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// As the UTF-8 text it is.
    Utf8,
    /// As base64.
    Base64,
}

/// `bytes` as text if it is UTF-8 (unless `force_base64`), else as base64.
pub fn encode_bytes(bytes: &[u8], force_base64: bool) -> (String, Encoding) {
    match std::str::from_utf8(bytes) {
        Ok(text) if !force_base64 => (text.to_string(), Encoding::Utf8),
        _ => (BASE64.encode(bytes), Encoding::Base64),
    }
}

/// The bytes a field holds in `encoding`.
pub fn decode_bytes(field: &str, text: String, encoding: Encoding) -> Result<Vec<u8>> {
    match encoding {
        Encoding::Utf8 => Ok(text.into_bytes()),
        Encoding::Base64 => BASE64.decode(text.as_bytes()).map_err(|e| anyhow!("`{field}` is not valid base64: {e}")),
    }
}

/// A stamp.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StampJson {
    /// The HLC as one integer.
    pub hlc: u64,
    /// The writer's replica id, 16 hex digits.
    pub writer: String,
}

/// A dot.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DotJson {
    /// The writer's replica id, 16 hex digits.
    pub writer: String,
    /// The writer's sequence number.
    pub seq: u64,
}

impl From<WireStamp> for StampJson {
    fn from(s: WireStamp) -> StampJson {
        StampJson { hlc: s.hlc, writer: ReplicaId(s.writer).to_string() }
    }
}

/// A replica id written as 16 hex digits.
pub fn parse_writer(field: &str, text: &str) -> Result<u64> {
    if text.len() != 16 || !text.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{field}` is `{text}`, not a replica id of 16 hex digits");
    }
    u64::from_str_radix(text, 16).map_err(|e| anyhow!("`{field}`: {e}"))
}

/// A stamp as the text forms show it: `WALL_MS.LOGICAL@WRITER`.
pub fn stamp_text(s: WireStamp) -> String {
    Stamp::from(s).to_string()
}

/// The receipt of a put or delete.
#[derive(Serialize)]
pub struct ReceiptJson {
    /// The write's seq.
    pub seq: u64,
    /// Its stamp.
    pub stamp: StampJson,
    /// Its dot.
    pub dot: DotJson,
}

impl ReceiptJson {
    /// The receipt of the write `seq` with `stamp`.
    pub fn new(seq: u64, stamp: WireStamp) -> ReceiptJson {
        ReceiptJson { seq, stamp: stamp.into(), dot: DotJson { writer: ReplicaId(stamp.writer).to_string(), seq } }
    }
}

/// One live entry: what `get --json`, `list --json` and `watch --json` print, and the line
/// `export` writes and `import` reads.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RecordJson {
    /// The key.
    pub key: String,
    /// How the key is written.
    pub key_encoding: Encoding,
    /// The value.
    pub value: String,
    /// How the value is written.
    pub value_encoding: Encoding,
    /// The metadata, if any.
    #[serde(default)]
    pub metadata: Option<String>,
    /// How the metadata is written, if there is any.
    #[serde(default)]
    pub metadata_encoding: Option<Encoding>,
    /// The write's stamp.
    pub stamp: StampJson,
    /// The write's dot.
    pub dot: DotJson,
    /// When the value expires, in absolute Unix ms, if it has a TTL.
    #[serde(default)]
    pub expires_at_ms: Option<u64>,
}

impl RecordJson {
    /// The JSON form of `r`; with `base64`, the value and metadata are always base64 (as
    /// `export` writes them, so a dump does not depend on whether values happen to be text).
    pub fn new(r: &Record, base64: bool) -> RecordJson {
        let (key, key_encoding) = encode_bytes(&r.key, false);
        let (value, value_encoding) = encode_bytes(&r.value, base64);
        let metadata = r.metadata.as_deref().map(|m| encode_bytes(m, base64));
        RecordJson {
            key,
            key_encoding,
            value,
            value_encoding,
            metadata_encoding: metadata.as_ref().map(|m| m.1),
            metadata: metadata.map(|m| m.0),
            stamp: r.stamp.into(),
            dot: DotJson { writer: ReplicaId(r.dot_writer).to_string(), seq: r.seq },
            expires_at_ms: r.expires_at_ms,
        }
    }

    /// The record this describes. The dot's writer may differ from the stamp's (a device's
    /// write, numbered by the member that admitted it). Sizes, the stamp's drift and the dot
    /// against the node's counter are the node's to check.
    pub fn into_record(self) -> Result<Record> {
        let writer = parse_writer("stamp.writer", &self.stamp.writer)?;
        let dot_writer = parse_writer("dot.writer", &self.dot.writer)?;
        let metadata = match (self.metadata, self.metadata_encoding) {
            (Some(m), Some(enc)) => Some(decode_bytes("metadata", m, enc)?),
            (Some(_), None) => bail!("`metadata` is given without `metadata_encoding` (\"utf8\" or \"base64\")"),
            (None, Some(_)) => bail!("`metadata_encoding` is given without `metadata`"),
            (None, None) => None,
        };
        Ok(Record {
            key: decode_bytes("key", self.key, self.key_encoding)?,
            value: decode_bytes("value", self.value, self.value_encoding)?,
            metadata,
            expires_at_ms: self.expires_at_ms,
            stamp: WireStamp { hlc: self.stamp.hlc, writer },
            dot_writer,
            seq: self.dot.seq,
        })
    }
}

/// The version of the export format [`ExportHeader`] names. Format 2 added the dead records
/// ([`DeadJson`]) and their count in the end line; format 1 exports (live entries only) are
/// still read, but never as a bootstrap (see `commands/transfer.rs`).
pub const EXPORT_FORMAT: u32 = 2;

/// The export format before dead records were listed.
pub const EXPORT_FORMAT_LIVE_ONLY: u32 = 1;

/// What a dead record is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadKind {
    /// A delete.
    Tombstone,
    /// A value whose TTL passed.
    Expired,
}

/// One dead record of an export (format 2): a tombstone or an expired value, with the stamp and
/// dot of the write, so a bootstrap import keeps the delete as a network bootstrap would.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadJson {
    /// Tombstone or expired value.
    pub dead: DeadKind,
    /// The key.
    pub key: String,
    /// How the key is written.
    pub key_encoding: Encoding,
    /// The stamp of the delete, or of the write that expired.
    pub stamp: StampJson,
    /// Its dot.
    pub dot: DotJson,
    /// For an expired value, when it expired (absolute Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expired_at_ms: Option<u64>,
}

impl DeadJson {
    /// The JSON form of `r`.
    pub fn new(r: &DeadRecord) -> DeadJson {
        let (key, key_encoding) = encode_bytes(&r.key, false);
        DeadJson {
            dead: if r.expired_at_ms.is_some() { DeadKind::Expired } else { DeadKind::Tombstone },
            key,
            key_encoding,
            stamp: r.stamp.into(),
            dot: DotJson { writer: ReplicaId(r.dot_writer).to_string(), seq: r.seq },
            expired_at_ms: r.expired_at_ms,
        }
    }

    /// The record this describes.
    pub fn into_record(self) -> Result<DeadRecord> {
        let expired_at_ms = match (self.dead, self.expired_at_ms) {
            (DeadKind::Tombstone, None) => None,
            (DeadKind::Expired, Some(t)) => Some(t),
            (DeadKind::Tombstone, Some(_)) => bail!("a tombstone has no `expired_at_ms`"),
            (DeadKind::Expired, None) => bail!("an expired record needs `expired_at_ms`"),
        };
        Ok(DeadRecord {
            key: decode_bytes("key", self.key, self.key_encoding)?,
            stamp: WireStamp { hlc: self.stamp.hlc, writer: parse_writer("stamp.writer", &self.stamp.writer)? },
            dot_writer: parse_writer("dot.writer", &self.dot.writer)?,
            seq: self.dot.seq,
            expired_at_ms,
        })
    }
}

/// The first line of `lethe export`: where the entries come from, and what its source had seen
/// before they were listed (so a full export into a blank node can take them as a bootstrap).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportHeader {
    /// The format's version, [`EXPORT_FORMAT`].
    pub lethe_export: u32,
    /// The source's replica id, 16 hex digits.
    pub source: String,
    /// The prefix exported (`""`: every key, a full export).
    pub prefix: String,
    /// The source's version vector before the listing: replica id (16 hex digits) to seq.
    pub vector: std::collections::BTreeMap<String, u64>,
    /// The source's clock then, as one integer (like a stamp's `hlc`).
    pub clock: u64,
}

/// The last line of `lethe export`: how many entries it holds. An export without it was cut.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExportEnd {
    /// The number of entry lines (live entries).
    pub lethe_export_end: u64,
    /// The number of dead-record lines (format 2; absent in format 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dead: Option<u64>,
}

/// A watch event as one JSON object: `{"event": "put" | "deleted" | "expired", "key", ...}`, a
/// put with every field of [`RecordJson`], a delete with its stamp (`null` when a peer showed
/// the entry dead), an expiry with the stamp of the write that expired.
pub fn event_json(event: &Event) -> Result<serde_json::Value> {
    let keyed = |kind: &str, key: &[u8], stamp: Option<WireStamp>| {
        let (key, key_encoding) = encode_bytes(key, false);
        serde_json::json!({
            "event": kind,
            "key": key,
            "key_encoding": key_encoding,
            "stamp": stamp.map(StampJson::from),
        })
    };
    /// A put: `event` first, then the record's fields.
    #[derive(Serialize)]
    struct PutJson {
        event: &'static str,
        #[serde(flatten)]
        record: RecordJson,
    }
    Ok(match event {
        Event::Put(record) => serde_json::to_value(PutJson { event: "put", record: RecordJson::new(record, false) })?,
        Event::Deleted { key, stamp } => keyed("deleted", key, *stamp),
        Event::Expired { key, stamp } => keyed("expired", key, Some(*stamp)),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_goes_through_its_json_form_unchanged() {
        let record = Record {
            key: b"k\xff".to_vec(),
            value: vec![0, 1, 2, 255],
            metadata: Some(b"{\"a\":1}".to_vec()),
            expires_at_ms: Some(42),
            stamp: WireStamp { hlc: 7 << 16 | 3, writer: 0xabcd },
            dot_writer: 0xabcd,
            seq: 9,
        };
        for base64 in [false, true] {
            let line = serde_json::to_string(&RecordJson::new(&record, base64)).unwrap();
            let back: RecordJson = serde_json::from_str(&line).unwrap();
            assert_eq!(back.into_record().unwrap(), record);
        }
        let text = RecordJson::new(&Record { value: b"hi".to_vec(), ..record.clone() }, false);
        assert_eq!((text.value.as_str(), text.value_encoding), ("hi", Encoding::Utf8));
        assert_eq!(text.key_encoding, Encoding::Base64);
    }

    #[test]
    fn a_dead_record_goes_through_its_json_form_unchanged() {
        let tombstone = DeadRecord {
            key: b"k\xff".to_vec(),
            stamp: WireStamp { hlc: 7 << 16 | 3, writer: 0xabcd },
            dot_writer: 0xabcd,
            seq: 9,
            expired_at_ms: None,
        };
        let expired = DeadRecord { expired_at_ms: Some(42), ..tombstone.clone() };
        for record in [tombstone, expired] {
            let line = serde_json::to_string(&DeadJson::new(&record)).unwrap();
            let back: DeadJson = serde_json::from_str(&line).unwrap();
            assert_eq!(back.into_record().unwrap(), record);
        }
    }

    #[test]
    fn a_device_write_keeps_the_dot_of_the_member_that_numbered_it() {
        let record = Record {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            metadata: None,
            expires_at_ms: None,
            stamp: WireStamp { hlc: 1, writer: 100 },
            dot_writer: 1,
            seq: 1,
        };
        let json = RecordJson::new(&record, true);
        assert_eq!(json.dot.writer, ReplicaId(1).to_string());
        assert_eq!(json.into_record().unwrap(), record);
    }
}
