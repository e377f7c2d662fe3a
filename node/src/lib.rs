//! The embeddable lethe node and the pieces of the `lethe` binary.
//!
//! Today this holds the in-process demonstration ([`demo`]); the networked node (QUIC peers,
//! live replication, the CLI that talks to a running node) arrives with the transport.

pub mod demo;
