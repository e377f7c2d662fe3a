//! The on-disk encoding of entries and metadata. Fixed-width big-endian fields, a format version
//! byte first; every decode checks lengths before it reads and fails with `Corrupt` rather than
//! panicking, so a damaged file is reported, not trusted.
//!
//! Entry record (the key is the table key, not repeated here):
//! `version:u8 kind:u8 hlc:u64 replica:u64 seq:u64 [numbered_by:u64]` then, by kind,
//! value: `flags:u8 [expires_at_ms:u64] [metadata_len:u32 metadata] value_len:u32 value`,
//! expired: `expires_at_ms:u64`, tombstone: nothing. `replica` is the stamp's; version 1 records
//! are numbered by it too (a replica's own writes, and every record written before devices),
//! version 2 records carry `numbered_by`, the dot's replica (a device's write admitted by a
//! member). Own writes stay version 1, so they cost no byte more.

use crate::entry::{Entry, Payload, Value};
use crate::error::StorageError;
use crate::hlc::{Hlc, Stamp};
use crate::ids::{Dot, ReplicaId, Seq};
use crate::vector::VersionVector;

const FORMAT_VERSION: u8 = 1;
/// The record carries the dot's replica after its seq.
const FORMAT_VERSION_NUMBERED: u8 = 2;
const KIND_VALUE: u8 = 0;
const KIND_EXPIRED: u8 = 1;
const KIND_TOMBSTONE: u8 = 2;
const FLAG_EXPIRES: u8 = 1;
const FLAG_METADATA: u8 = 2;
const HEADER_BYTES: usize = 2 + 8 + 8 + 8;

/// Encodes an entry's record (everything but its key), appending to `out`.
pub(crate) fn encode_entry(entry: &Entry, out: &mut Vec<u8>) {
    let kind = match entry.payload {
        Payload::Value(_) => KIND_VALUE,
        Payload::Expired { .. } => KIND_EXPIRED,
        Payload::Tombstone => KIND_TOMBSTONE,
    };
    let version = if entry.is_own_write() { FORMAT_VERSION } else { FORMAT_VERSION_NUMBERED };
    out.extend_from_slice(&[version, kind]);
    out.extend_from_slice(&entry.stamp.hlc.0.to_be_bytes());
    out.extend_from_slice(&entry.stamp.replica.0.to_be_bytes());
    out.extend_from_slice(&entry.dot.seq.0.to_be_bytes());
    if !entry.is_own_write() {
        out.extend_from_slice(&entry.dot.replica.0.to_be_bytes());
    }
    match &entry.payload {
        Payload::Value(v) => {
            let flags =
                u8::from(v.expires_at_ms.is_some()) * FLAG_EXPIRES + u8::from(v.metadata.is_some()) * FLAG_METADATA;
            out.push(flags);
            if let Some(t) = v.expires_at_ms {
                out.extend_from_slice(&t.to_be_bytes());
            }
            if let Some(m) = &v.metadata {
                put_bytes(out, m);
            }
            put_bytes(out, &v.bytes);
        }
        Payload::Expired { expires_at_ms } => out.extend_from_slice(&expires_at_ms.to_be_bytes()),
        Payload::Tombstone => {}
    }
}

/// Appends `len:u32 bytes`. Values and metadata are limited to far below 4 GiB where they enter
/// the engine.
fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    debug_assert!(u32::try_from(bytes.len()).is_ok());
    out.extend_from_slice(&(bytes.len() as u32).to_be_bytes());
    out.extend_from_slice(bytes);
}

fn corrupt(detail: impl Into<String>) -> StorageError {
    StorageError::Corrupt { what: "entry", detail: detail.into() }
}

/// A bounds-checked reader over a record.
struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], StorageError> {
        if self.0.len() < n {
            return Err(corrupt(format!("needs {n} more bytes, has {}", self.0.len())));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }

    fn bytes(&mut self) -> Result<Vec<u8>, StorageError> {
        let len = self.u32()? as usize;
        Ok(self.take(len)?.to_vec())
    }

    fn u8(&mut self) -> Result<u8, StorageError> {
        Ok(self.take(1)?[0])
    }

    fn u32(&mut self) -> Result<u32, StorageError> {
        let mut b = [0; 4];
        b.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(b))
    }

    fn u64(&mut self) -> Result<u64, StorageError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(b))
    }
}

/// Reads the dot of an encoded entry without decoding the rest.
pub(crate) fn decode_dot(record: &[u8]) -> Result<Dot, StorageError> {
    if record.len() < HEADER_BYTES {
        return Err(corrupt(format!("record of {} bytes is shorter than its header", record.len())));
    }
    let mut r = Reader(&record[10..]);
    let (stamp_replica, seq) = (ReplicaId(r.u64()?), Seq(r.u64()?));
    let replica = if record[0] == FORMAT_VERSION_NUMBERED { ReplicaId(r.u64()?) } else { stamp_replica };
    Ok(Dot { replica, seq })
}

/// Decodes an entry record stored under `key`.
pub(crate) fn decode_entry(key: &[u8], record: &[u8]) -> Result<Entry, StorageError> {
    let mut r = Reader(record);
    let version = r.u8()?;
    if version != FORMAT_VERSION && version != FORMAT_VERSION_NUMBERED {
        return Err(corrupt(format!("unknown format version {version}")));
    }
    let kind = r.u8()?;
    let stamp = Stamp { hlc: Hlc(r.u64()?), replica: ReplicaId(r.u64()?) };
    let seq = Seq(r.u64()?);
    if seq == Seq(0) {
        return Err(corrupt("sequence number 0"));
    }
    let dot = Dot { replica: if version == FORMAT_VERSION { stamp.replica } else { ReplicaId(r.u64()?) }, seq };
    if version == FORMAT_VERSION_NUMBERED && dot.replica == stamp.replica {
        // One form per entry, so a record re-encoded is the same bytes.
        return Err(corrupt("a version 2 record numbered by its own writer"));
    }
    let payload = match kind {
        KIND_VALUE => {
            let flags = r.u8()?;
            if flags & !(FLAG_EXPIRES | FLAG_METADATA) != 0 {
                return Err(corrupt(format!("unknown flags {flags:#x}")));
            }
            let expires_at_ms = if flags & FLAG_EXPIRES != 0 { Some(r.u64()?) } else { None };
            let metadata = if flags & FLAG_METADATA != 0 { Some(r.bytes()?) } else { None };
            Payload::Value(Value { bytes: r.bytes()?, expires_at_ms, metadata })
        }
        KIND_EXPIRED => Payload::Expired { expires_at_ms: r.u64()? },
        KIND_TOMBSTONE => Payload::Tombstone,
        other => return Err(corrupt(format!("unknown kind {other}"))),
    };
    if !r.0.is_empty() {
        return Err(corrupt(format!("{} trailing bytes", r.0.len())));
    }
    Ok(Entry { key: key.to_vec(), stamp, dot, payload })
}

/// Encodes a version vector as `count:u32` then `(replica:u64, seq:u64)` pairs.
pub(crate) fn encode_vector(v: &VersionVector) -> Vec<u8> {
    let mut out = Vec::with_capacity(4 + 16 * v.len());
    out.extend_from_slice(&(v.len() as u32).to_be_bytes());
    for (r, s) in v.iter() {
        out.extend_from_slice(&r.0.to_be_bytes());
        out.extend_from_slice(&s.0.to_be_bytes());
    }
    out
}

/// Decodes a version vector; the count is checked against the bytes present before anything is
/// allocated.
pub(crate) fn decode_vector(bytes: &[u8]) -> Result<VersionVector, StorageError> {
    let bad = |d: String| StorageError::Corrupt { what: "version vector", detail: d };
    let mut r = Reader(bytes);
    let count = r.u32().map_err(|_| bad("missing count".into()))? as usize;
    if r.0.len() != count.saturating_mul(16) {
        return Err(bad(format!("count {count} does not match {} bytes", r.0.len())));
    }
    let mut v = VersionVector::new();
    for _ in 0..count {
        let (replica, seq) = (r.u64()?, r.u64()?);
        v.advance(ReplicaId(replica), Seq(seq));
    }
    Ok(v)
}

fn decode_u64(what: &'static str, bytes: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] = bytes
        .try_into()
        .map_err(|_| StorageError::Corrupt { what, detail: format!("{} bytes, expected 8", bytes.len()) })?;
    Ok(u64::from_be_bytes(arr))
}

/// Encodes an HLC value.
pub(crate) fn encode_clock(h: Hlc) -> Vec<u8> {
    h.0.to_be_bytes().to_vec()
}

/// Decodes an HLC value.
pub(crate) fn decode_clock(bytes: &[u8]) -> Result<Hlc, StorageError> {
    decode_u64("clock", bytes).map(Hlc)
}

/// Encodes a replica id.
pub(crate) fn encode_replica(r: ReplicaId) -> Vec<u8> {
    r.0.to_be_bytes().to_vec()
}

/// Decodes a replica id.
pub(crate) fn decode_replica(bytes: &[u8]) -> Result<ReplicaId, StorageError> {
    decode_u64("replica id", bytes).map(ReplicaId)
}

/// Encodes a structured metadata record (membership, checkpoint) as CBOR.
pub(crate) fn encode_cbor<T: serde::Serialize>(value: &T) -> Vec<u8> {
    let mut out = Vec::new();
    // Writing to a Vec cannot fail, and these records hold no maps with non-string keys.
    if let Err(e) = ciborium::into_writer(value, &mut out) {
        debug_assert!(false, "encoding a metadata record failed: {e}");
    }
    out
}

/// Decodes a structured metadata record.
pub(crate) fn decode_cbor<T: serde::de::DeserializeOwned>(what: &'static str, bytes: &[u8]) -> Result<T, StorageError> {
    ciborium::from_reader(bytes).map_err(|e| StorageError::Corrupt { what, detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::entry::tests::arb_entry;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn entry_encode_then_decode_is_identity(e in arb_entry(b"key".to_vec()), meta in proptest::option::of(proptest::collection::vec(any::<u8>(), 0..8))) {
            let mut e = e;
            if let Payload::Value(v) = &mut e.payload { v.metadata = meta; }
            let mut buf = Vec::new();
            encode_entry(&e, &mut buf);
            prop_assert_eq!(decode_dot(&buf).unwrap(), e.dot());
            prop_assert_eq!(decode_entry(b"key", &buf).unwrap(), e);
        }

        #[test]
        fn decoding_garbage_fails_cleanly(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode_entry(b"k", &bytes);
            let _ = decode_dot(&bytes);
            let _ = decode_vector(&bytes);
        }

        #[test]
        fn every_truncation_or_extension_of_a_record_is_rejected(e in arb_entry(b"k".to_vec())) {
            let mut buf = Vec::new();
            encode_entry(&e, &mut buf);
            for cut in 0..buf.len() {
                prop_assert!(decode_entry(b"k", &buf[..cut]).is_err(), "accepted a cut at {}", cut);
            }
            buf.push(0);
            prop_assert!(decode_entry(b"k", &buf).is_err());
        }
    }

    #[test]
    fn a_vector_with_a_lying_count_is_rejected_before_allocating() {
        let mut bytes = u32::MAX.to_be_bytes().to_vec();
        bytes.extend_from_slice(&[0; 16]);
        assert!(matches!(decode_vector(&bytes), Err(StorageError::Corrupt { .. })));
    }
}
