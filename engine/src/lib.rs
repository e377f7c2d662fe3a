//! lethe's replication engine: the pure core.
//!
//! Every key is a last-writer-wins register stamped with a hybrid logical clock; a delete is a
//! tombstone; TTL expiry is local. The engine never opens a socket, reads the system clock or
//! spawns a task: time comes in through [`WallClock`], data through method calls, and durable
//! state goes out through the [`Storage`] trait. Given the same inputs it produces the same
//! outputs, which is what the simulation tests and the fuzzers rely on.
//!
//! Start with [`Replica`]:
//!
//! ```
//! use lethe_engine::{Config, MemoryStore, PutOptions, Replica, ReplicaId, SystemClock};
//! use std::sync::Arc;
//!
//! # fn main() -> lethe_engine::Result<()> {
//! let clock = Arc::new(SystemClock);
//! let mut server = Replica::open(MemoryStore::new(), ReplicaId(1), Config::default(), clock.clone())?;
//! let mut phone = Replica::open(MemoryStore::new(), ReplicaId(2), Config::default(), clock)?;
//!
//! let receipt = server.put("user:alice", "hello", PutOptions::default())?;
//! server.put("otp:alice", "491823", PutOptions { ttl_ms: Some(30_000), metadata: None })?;
//! server.delete("user:bob")?;
//!
//! // What the phone lacks, by its version vector; applied whole, then its vector merges (and its
//! // clock moves past the server's, so its next write is stamped after everything it now covers).
//! let delta = server.delta_for(phone.vector())?;
//! phone.apply_remote(delta.entries, Some((&delta.vector, delta.clock)))?;
//! assert_eq!(phone.get(b"user:alice")?.map(|item| item.value), Some(b"hello".to_vec()));
//! assert!(server.is_acknowledged(receipt.dot.seq, phone.vector()));
//! # Ok(())
//! # }
//! ```

pub mod device;
pub mod entry;
pub mod error;
pub mod fingerprint;
pub mod gc;
pub mod hlc;
pub mod ids;
pub(crate) mod index;
pub mod limits;
pub mod live;
pub mod membership;
pub mod replica;
pub mod session;
pub mod sign;
pub mod sketch;
pub mod storage;
pub mod vector;

pub use device::Role;
pub use entry::{Entry, Payload, Value};
pub use error::{Error, Result, StorageError};
pub use hlc::{Hlc, HybridClock, ManualClock, Stamp, SystemClock, WallClock};
pub use ids::{Dot, ReplicaId, Seq};
pub use limits::Limits;
pub use replica::{ApplyReport, Change, Config, Counts, Delta, Item, PutOptions, Replica, WriteBatch, WriteReceipt};
pub use sign::{AckSigner, InsecureTestSigner, NoSigner, SignedAck};
pub use storage::{Batch, KeyRange, MemoryStore, Meta, RedbStore, Snapshot, Storage};
pub use vector::{Causality, VersionVector};
