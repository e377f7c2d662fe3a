//! QUIC between lethe nodes.
//!
//! - [`Identity`]: a node's Ed25519 key pair and self-signed certificate; its [`NodeId`] is the
//!   blake3 hash of the public key (the certificate's SubjectPublicKeyInfo), so it can be pinned.
//! - [`TrustList`]: the node ids allowed to connect. Peers are authenticated by pinned public
//!   keys in a mutual TLS 1.3 handshake, never by address.
//! - [`Endpoint`]: quinn endpoints with those verifiers, ALPN naming the protocol version and
//!   whether frames may be compressed (`lethe/6z`, or `lethe/6` when either end refuses), and
//!   flow-control windows that bound what a slow peer can make a node buffer.
//! - [`Ed25519AckSigner`]: the engine's `AckSigner` with the node's key, verifying the replicas
//!   it trusts (docs/design.md §9: acknowledgements about a third replica count only signed).
//! - [`frame`]: length-prefixed CBOR frames with a maximum size, read without trusting the
//!   length before it is checked.
//!
//! No engine state lives here: the node drives the engine's sans-IO sessions over these streams.

pub mod ack_signer;
pub mod endpoint;
pub mod error;
pub mod frame;
pub mod identity;
pub mod tls;

pub use ack_signer::Ed25519AckSigner;
pub use endpoint::{CloseCode, Endpoint, PeerConnection};
pub use error::Error;
pub use frame::{FrameReader, FrameWriter};
pub use identity::{Identity, NodeId};
pub use tls::TrustList;

/// The ALPN protocol name of a connection whose frames all go raw: `lethe/` and the engine's
/// protocol version (`lethe/6`). A reader on such a connection refuses a compressed frame.
#[must_use]
pub fn alpn_plain() -> Vec<u8> {
    format!("lethe/{}", lethe_engine::session::PROTOCOL_VERSION).into_bytes()
}

/// The ALPN protocol name of a connection whose frames may be compressed (`lethe/6z`).
#[must_use]
pub fn alpn_compressed() -> Vec<u8> {
    format!("lethe/{}z", lethe_engine::session::PROTOCOL_VERSION).into_bytes()
}

/// What an endpoint offers as a client and accepts as a server, most preferred first: with
/// compression, [`alpn_compressed`] then [`alpn_plain`]; without, only [`alpn_plain`]. The
/// server picks the first of its own list that the client offers (rustls), so a connection is
/// compressed only when both ends allow it, and either end refuses by leaving it out.
pub(crate) fn alpn_protocols(compression: bool) -> Vec<Vec<u8>> {
    if compression { vec![alpn_compressed(), alpn_plain()] } else { vec![alpn_plain()] }
}
