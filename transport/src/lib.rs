//! QUIC between lethe nodes.
//!
//! - [`Identity`]: a node's Ed25519 key pair and self-signed certificate; its [`NodeId`] is the
//!   blake3 hash of the public key (the certificate's SubjectPublicKeyInfo), so it can be pinned.
//! - [`TrustList`]: the node ids allowed to connect. Peers are authenticated by pinned public
//!   keys in a mutual TLS 1.3 handshake, never by address.
//! - [`Endpoint`]: quinn endpoints with those verifiers, ALPN naming the protocol version, and
//!   flow-control windows that bound what a slow peer can make a node buffer.
//! - [`frame`]: length-prefixed CBOR frames with a maximum size, read without trusting the
//!   length before it is checked.
//!
//! No engine state lives here: the node drives the engine's sans-IO sessions over these streams.

pub mod endpoint;
pub mod error;
pub mod frame;
pub mod identity;
pub mod tls;

pub use endpoint::{CloseCode, Endpoint, PeerConnection};
pub use error::Error;
pub use frame::{FrameReader, FrameWriter};
pub use identity::{Identity, NodeId};
pub use tls::TrustList;

/// The ALPN protocol name: `lethe/` and the engine's protocol version.
#[must_use]
pub fn alpn() -> Vec<u8> {
    format!("lethe/{}", lethe_engine::session::PROTOCOL_VERSION).into_bytes()
}
