//! The embeddable lethe node: one replica on redb kept in step with its peers over QUIC.
//!
//! - [`node`]: [`Node`] and [`NodeConfig`];
//! - [`data_dir`]: a node's identity, store and address on disk;
//! - [`health`]: whether the node takes local writes, and why not ([`Status::write_refusals`]);
//! - [`metrics`]: what the node counts, through the `metrics` facade (no recorder of its own);
//! - devices (docs/design.md §8): a member enrols and removes devices at runtime
//!   ([`Node::enrol_device`], [`Node::remove_device`], [`Node::devices`]) and serves their
//!   sessions; a node made with [`NodeConfig::with_server`] is a device that keeps a member
//!   connected; [`sync_once`] syncs a device once without a running node; [`sync_events`]
//!   is what a device tells its app ([`Node::sync_events`]);
//! - [`watch`]: the subscriptions to the node's changes ([`Node::subscribe`]), each bounded;
//! - [`control`]: how a client (the `lethe` command, in the `lethe-cli` crate) talks to a
//!   running node.
//!
//! The command line, the demo and the benchmark harness live in crates of their own
//! (`lethe-cli`, `lethe-bench`), so an embedder builds none of their dependencies.
//!
//! Two nodes in one program, talking QUIC on loopback:
//!
//! ```
//! use lethe_engine::PutOptions;
//! use lethe_node::{DataDir, NodeConfig, PeerAddr};
//! use std::time::Duration;
//!
//! # #[tokio::main(flavor = "multi_thread", worker_threads = 2)]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let tmp = tempfile::tempdir()?;
//! let (server_dir, phone_dir) = (DataDir::new(tmp.path().join("server")), DataDir::new(tmp.path().join("phone")));
//! let phone_id = phone_dir.init()?.id();
//! server_dir.init()?;
//!
//! let server = NodeConfig::new(server_dir, "127.0.0.1:0".parse()?).with_trust(phone_id).start().await?;
//! let server_addr = PeerAddr { id: server.id(), addr: server.local_addr() };
//! let phone = NodeConfig::new(phone_dir, "127.0.0.1:0".parse()?).with_peer(server_addr).start().await?;
//!
//! let mut changes = phone.subscribe("user:");
//! let receipt = server.put("user:alice", "hello", PutOptions::default()).await?; // durable now
//! let change = tokio::time::timeout(Duration::from_secs(10), changes.next()).await??;
//! assert_eq!(change.key(), b"user:alice");
//! assert_eq!(phone.get(b"user:alice")?.map(|item| item.value), Some(b"hello".to_vec()));
//! // The phone's acknowledgement reaches the server shortly after.
//! while server.acknowledged_by(receipt.dot.seq) != [(phone_id.replica_id(), true)] {
//!     tokio::time::sleep(Duration::from_millis(10)).await;
//! }
//! phone.shutdown().await;
//! server.shutdown().await;
//! # Ok(())
//! # }
//! ```

pub mod control;
pub mod data_dir;
mod device_directory;
#[cfg(test)]
mod device_hostile_tests;
mod device_link;
mod device_news;
mod device_service;
mod device_stream;
mod directory_file;
pub mod health;
pub mod metrics;
pub mod node;
mod owner;
mod peer;
pub mod sync_events;
mod sync_once;
pub mod watch;

pub use data_dir::DataDir;
pub use device_directory::{DEVICE_NAME_BYTES_MAX, DIRECTORY_ENTRIES_PER_FRAME, DirectoryError};
pub use device_link::LOCAL_LINGER;
pub use device_service::DeviceInfo;
pub use node::{Node, NodeClock, NodeConfig, NodeError, NodeRole, PeerAddr, Status, Subscription};
pub use sync_events::{LastSync, SyncEvent};
pub use sync_once::{SyncOnceError, SyncReport, sync_once, sync_once_with_progress};
