//! The lethe node: the embeddable library and the pieces of the `lethe` command.
//!
//! - [`node`]: [`Node`], one replica on redb kept in step with its peers over QUIC;
//! - [`data_dir`]: a node's identity, store and address on disk;
//! - [`control`]: how the CLI talks to a running node;
//! - [`demo`]: `lethe demo`, the main job on the embedded default;
//! - [`baseline`]: the model of atServer's commit-log sync that the demo and benchmarks compare with;
//! - [`bench`](mod@bench): `lethe bench`, lethe and the models side by side over QUIC.
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

pub mod baseline;
pub mod bench;
pub mod control;
pub mod data_dir;
pub mod demo;
pub mod node;
mod owner;
mod peer;

pub use data_dir::DataDir;
pub use node::{Node, NodeConfig, NodeError, PeerAddr, Status, Subscription};
