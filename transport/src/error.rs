//! The transport's errors.

use crate::identity::NodeId;
use std::net::SocketAddr;

/// What went wrong in the transport. Each variant says what to do about it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A key or certificate could not be made or read.
    #[error("identity: {0}; if the key file is damaged, restore it from a backup (the node id depends on it)")]
    Identity(String),
    /// TLS could not be configured.
    #[error("TLS configuration: {0}")]
    Tls(String),
    /// The UDP socket could not be bound.
    #[error("could not listen on {addr}: {source}; pick a free address with --listen")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// A connection could not be started.
    #[error("could not connect to {addr}: {reason}")]
    Connect {
        /// The address.
        addr: SocketAddr,
        /// Why.
        reason: String,
    },
    /// The connection failed or was closed.
    #[error("connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    /// An incoming handshake did not finish in time (a stalled or replayed Initial); dropped.
    #[error("{addr} did not finish its handshake within {timeout:?}; dropped (a stalled or replayed QUIC Initial)")]
    HandshakeTimeout {
        /// Where it came from.
        addr: SocketAddr,
        /// The limit.
        timeout: std::time::Duration,
    },
    /// An incoming handshake arrived while the most allowed were in flight; refused.
    #[error("refused a handshake from {addr}: {max} handshakes already in flight (a flood?); a real client retries")]
    HandshakesFull {
        /// Where it came from.
        addr: SocketAddr,
        /// The limit.
        max: usize,
    },
    /// The peer presented no certificate we could read.
    #[error("the peer presented no usable certificate")]
    NoPeerIdentity,
    /// The node that answered at `addr` is not the one dialed: its key is another's (a wrong
    /// node id in the address, or another node on that address). Told apart from a peer that
    /// refused this node's key, which is a [`Error::Connection`] the peer closed.
    #[error("the node at {addr} is not {expected} (it is {found}): check the node id it was named by")]
    WrongServer {
        /// The address dialed.
        addr: SocketAddr,
        /// The node id expected there.
        expected: NodeId,
        /// The node id that answered.
        found: NodeId,
    },
    /// A peer not on the trust list.
    #[error("node {0} is not trusted; add it with --trust or --peer if it should be")]
    Untrusted(NodeId),
    /// A frame longer than the limit was announced.
    #[error("frame of {len} bytes exceeds the limit of {max}; the peer is broken or hostile")]
    FrameTooLarge {
        /// The announced length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// A compressed frame declared a decompressed size over the limit (a zstd bomb, or a broken
    /// peer); refused before anything was allocated for it.
    #[error("a compressed frame declares {declared} bytes, over the limit of {max}; the peer is broken or hostile")]
    DeclaredTooLarge {
        /// The size its zstd header declares.
        declared: u64,
        /// The limit.
        max: usize,
    },
    /// A compressed frame did not decompress to exactly the size it declares (corrupt, cut
    /// short, no size declared, or more data than declared).
    #[error("a compressed frame is corrupt: {reason}; the peer is broken or hostile")]
    Corrupt {
        /// What zstd or the size check said.
        reason: String,
    },
    /// A compressed frame on a connection that did not negotiate compression (ALPN
    /// [`crate::alpn_plain`]): this side refused it, and the peer sent one anyway.
    #[error("a compressed frame of {len} bytes on a connection without compression; the peer is broken or hostile")]
    CompressionNotNegotiated {
        /// The body's length on the wire.
        len: usize,
    },
    /// The TLS handshake settled on no lethe protocol (a peer of another version).
    #[error("the peer negotiated no lethe protocol (ALPN {alpn:?})")]
    NoProtocol {
        /// What was negotiated, if anything.
        alpn: Option<String>,
    },
    /// The stream ended inside a frame.
    #[error("stream ended inside a frame ({got} of {expected} bytes)")]
    Truncated {
        /// Bytes read.
        got: usize,
        /// Bytes announced.
        expected: usize,
    },
    /// Reading or writing a stream failed.
    #[error("stream: {0}")]
    Stream(String),
}

impl Error {
    /// Whether the peer broke the frame layer (a length over the limit, a bomb, a corrupt
    /// compressed frame), rather than the stream or connection failing: the connection should
    /// be closed with [`crate::CloseCode::for_error`].
    #[must_use]
    pub fn is_peer_frame_error(&self) -> bool {
        matches!(
            self,
            Error::FrameTooLarge { .. }
                | Error::DeclaredTooLarge { .. }
                | Error::Corrupt { .. }
                | Error::CompressionNotNegotiated { .. }
        )
    }
}

impl From<quinn::ReadError> for Error {
    fn from(e: quinn::ReadError) -> Self {
        match e {
            quinn::ReadError::ConnectionLost(c) => Error::Connection(c),
            other => Error::Stream(other.to_string()),
        }
    }
}

impl From<quinn::WriteError> for Error {
    fn from(e: quinn::WriteError) -> Self {
        match e {
            quinn::WriteError::ConnectionLost(c) => Error::Connection(c),
            other => Error::Stream(other.to_string()),
        }
    }
}
