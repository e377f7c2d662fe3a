//! lethe's replication engine: the pure core.
//!
//! Every key is a last-writer-wins register stamped with a hybrid logical clock; a delete is a
//! tombstone; TTL expiry is local. The engine never opens a socket, reads the system clock or
//! spawns a task: time comes in through [`WallClock`], data through method calls, and durable
//! state goes out through the [`Storage`] trait. Given the same inputs it produces the same
//! outputs, which is what the simulation tests and the fuzzers rely on.
//!
//! Start with [`Replica`].

pub mod entry;
pub mod error;
pub mod hlc;
pub mod ids;
pub mod limits;
pub mod replica;
pub mod storage;
pub mod vector;

pub use entry::{Entry, Payload, Value};
pub use error::{Error, Result, StorageError};
pub use hlc::{Hlc, HybridClock, ManualClock, Stamp, SystemClock, WallClock};
pub use ids::{Dot, ReplicaId, Seq};
pub use limits::Limits;
pub use replica::{ApplyReport, Config, Delta, PutOptions, Replica, WriteBatch, WriteReceipt};
pub use storage::{Batch, KeyRange, MemoryStore, Meta, RedbStore, Snapshot, Storage};
pub use vector::{Causality, VersionVector};
