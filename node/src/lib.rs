//! The lethe node: the embeddable library and the pieces of the `lethe` command.
//!
//! - [`node`]: [`Node`], one replica on redb kept in step with its peers over QUIC;
//! - [`data_dir`]: a node's identity, store and address on disk;
//! - [`control`]: how the CLI talks to a running node;
//! - [`demo`]: `lethe demo`, the main job on the embedded default;
//! - [`baseline`]: the model of atServer's commit-log sync that the demo and benchmarks compare with.

pub mod baseline;
pub mod control;
pub mod data_dir;
pub mod demo;
pub mod node;

pub use data_dir::DataDir;
pub use node::{Node, NodeConfig, NodeError, PeerAddr, Status, Subscription};
