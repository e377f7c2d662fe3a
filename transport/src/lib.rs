//! lethe's transport: QUIC (quinn) between peers authenticated by pinned public keys, carrying
//! length-prefixed CBOR frames.
//!
//! Not built yet: this crate holds its place in the workspace (`node → transport → engine`) and
//! is filled by the transport issue. Until then the node syncs replicas in process.
