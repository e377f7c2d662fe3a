//! The control protocol: how `lethe --data DIR put/get/del/list/status` talks to the running node
//! of DIR. It connects over loopback QUIC with the node's own key (only the owner of the data
//! directory can), opens a stream, sends one [`Request`] frame and reads one [`Response`] frame;
//! but a `List` is answered in pages, as many `Response::Listed` frames as it takes (each at most
//! [`LIST_PAGE_BYTES_MAX`] of keys and values), the last with `more: false`. So any value within
//! the engine's limits can be listed, and the node reads at most [`LIST_SCAN_ITEMS`] entries per
//! turn of the replica's lock.

use crate::node::Status;
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
    },
    /// The node's status.
    Status,
}

/// One listed entry.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Listed {
    /// The key.
    #[serde(with = "serde_bytes")]
    pub key: Vec<u8>,
    /// The value.
    #[serde(with = "serde_bytes")]
    pub value: Vec<u8>,
}

/// The node's answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Response {
    /// A write was made durable with this sequence number.
    Written {
        /// The write's seq (the node's own counter).
        seq: u64,
    },
    /// The value, if the key is live.
    Value(#[serde(with = "serde_bytes")] Option<Vec<u8>>),
    /// One page of a listing, in key order.
    Listed {
        /// The entries.
        items: Vec<Listed>,
        /// Whether another page follows on the stream.
        more: bool,
    },
    /// The status.
    Status(Box<Status>),
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
