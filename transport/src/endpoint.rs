//! quinn endpoints that speak only pinned-key TLS 1.3 and the lethe ALPN.

use crate::error::Error;
use crate::frame::{FrameReader, FrameWriter};
use crate::identity::{Identity, NodeId};
use crate::tls::{TrustList, client_config, server_config};
use lethe_engine::session::FRAME_BYTES_MAX;
use quinn::TransportConfig;
use quinn::crypto::rustls::{QuicClientConfig, QuicServerConfig};
pub use quinn::{Connection, ConnectionError, ConnectionStats, RecvStream, SendStream, VarInt};
use rustls::pki_types::CertificateDer;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;

/// Handshakes an endpoint runs at once. An Initial that arrives while this many are in flight is
/// refused (QUIC `CONNECTION_REFUSED`; a real client retries), so a flood of handshakes costs a
/// bounded amount of memory and CPU and delays no handshake already running.
pub const HANDSHAKES_IN_FLIGHT_MAX: usize = 128;

/// Handshakes in flight above which an Initial from an address not yet validated is answered
/// with a stateless QUIC Retry (no state kept; a real client answers it at once with a token
/// proving its address, and is then taken up to [`HANDSHAKES_IN_FLIGHT_MAX`]). A replayed or
/// spoofed Initial cannot answer, so a flood of them holds at most this many handshakes and
/// never fills the cap against real peers.
pub const HANDSHAKES_UNVALIDATED_MAX: usize = 32;

/// How long an incoming handshake may take, from its first datagram to an authenticated peer.
/// One that takes longer is dropped (a stalled or replayed Initial), without delaying any other.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Concurrent bidirectional streams one connection may open: a session or live stream each, so a
/// peer cannot make a node hold more than this many stream states and buffers for it.
pub const STREAMS_PER_CONNECTION_MAX: u32 = 64;

/// Why a connection was closed, sent to the peer as the QUIC application error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum CloseCode {
    /// Finished normally (or the node is shutting down).
    Done = 0,
    /// A frame did not decode or broke the protocol.
    Malformed = 1,
    /// A frame exceeded the size limit (on the wire, or as its compressed header declares).
    TooLarge = 2,
    /// The peer's data was refused by the engine (for example a clock beyond the drift bound).
    Refused = 3,
}

impl CloseCode {
    /// The code for an error that ends a connection.
    #[must_use]
    pub fn for_error(e: &Error) -> CloseCode {
        match e {
            Error::FrameTooLarge { .. } | Error::DeclaredTooLarge { .. } => CloseCode::TooLarge,
            _ => CloseCode::Malformed,
        }
    }
}

/// Flow-control windows and timers. The stream window holds one maximal frame; the connection
/// window a few; so a peer that stops reading stalls its sender at a bounded amount of memory.
fn transport_config() -> TransportConfig {
    let mut t = TransportConfig::default();
    let frame = FRAME_BYTES_MAX as u32;
    t.stream_receive_window(VarInt::from_u32(frame + 1024));
    t.receive_window(VarInt::from_u32(4 * frame));
    t.send_window(4 * u64::from(frame));
    t.max_concurrent_bidi_streams(VarInt::from_u32(STREAMS_PER_CONNECTION_MAX));
    t.max_concurrent_uni_streams(VarInt::from_u32(0));
    // A peer that vanishes without a close (killed, unplugged) is noticed within 10 s.
    t.keep_alive_interval(Some(Duration::from_secs(2)));
    t.max_idle_timeout(Some(VarInt::from_u32(10_000).into()));
    t
}

/// A connection to an authenticated peer.
#[derive(Clone, Debug)]
pub struct PeerConnection {
    /// The QUIC connection.
    pub conn: quinn::Connection,
    /// Who is on the other end (checked in the TLS handshake).
    pub peer: NodeId,
    /// Whether the handshake settled on [`crate::alpn_compressed`].
    compressed: bool,
}

/// One stream of frames each way. On a compressed connection the writer compresses frames of
/// at least [`crate::frame::COMPRESS_BYTES_MIN`] and the reader takes raw and compressed
/// frames; otherwise both are raw and the reader refuses a compressed frame.
pub type FrameStream = (FrameWriter<SendStream>, FrameReader<RecvStream>);

impl PeerConnection {
    fn new(conn: quinn::Connection) -> Result<PeerConnection, Error> {
        let certs = conn
            .peer_identity()
            .and_then(|any| any.downcast::<Vec<CertificateDer<'static>>>().ok())
            .ok_or(Error::NoPeerIdentity)?;
        let cert = certs.first().ok_or(Error::NoPeerIdentity)?;
        let alpn = conn
            .handshake_data()
            .and_then(|any| any.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
            .and_then(|h| h.protocol);
        let compressed = match alpn {
            Some(p) if p == crate::alpn_compressed() => true,
            Some(p) if p == crate::alpn_plain() => false,
            other => return Err(Error::NoProtocol { alpn: other.map(|p| String::from_utf8_lossy(&p).into_owned()) }),
        };
        Ok(PeerConnection { peer: NodeId::from_cert(cert)?, conn, compressed })
    }

    /// Whether frames on this connection may be compressed: both ends allowed it, and the
    /// handshake settled on [`crate::alpn_compressed`].
    #[must_use]
    pub fn compressed(&self) -> bool {
        self.compressed
    }

    fn frame_stream(&self, send: SendStream, recv: RecvStream) -> FrameStream {
        if self.compressed {
            (FrameWriter::compressing(send, FRAME_BYTES_MAX), FrameReader::decompressing(recv, FRAME_BYTES_MAX))
        } else {
            (FrameWriter::new(send, FRAME_BYTES_MAX), FrameReader::new(recv, FRAME_BYTES_MAX))
        }
    }

    /// Opens a stream to the peer.
    pub async fn open(&self) -> Result<FrameStream, Error> {
        let (send, recv) = self.conn.open_bi().await?;
        Ok(self.frame_stream(send, recv))
    }

    /// Waits for the peer to open a stream.
    pub async fn accept(&self) -> Result<FrameStream, Error> {
        let (send, recv) = self.conn.accept_bi().await?;
        Ok(self.frame_stream(send, recv))
    }

    /// Closes the connection with `code` and a reason the peer can log.
    pub fn close(&self, code: CloseCode, reason: &str) {
        self.conn.close(VarInt::from_u32(code as u32), reason.as_bytes());
    }
}

/// A node's QUIC endpoint: accepts trusted peers, dials peers by pinned id.
///
/// Incoming handshakes run concurrently, each on a task of its own, at most
/// [`HANDSHAKES_IN_FLIGHT_MAX`] at once and each for at most [`HANDSHAKE_TIMEOUT`]; above
/// [`HANDSHAKES_UNVALIDATED_MAX`] a client must first prove its address (QUIC Retry). An
/// unauthenticated sender that stalls or floods reaches only its own handshake.
#[derive(Debug)]
pub struct Endpoint {
    inner: quinn::Endpoint,
    identity: Arc<Identity>,
    trust: TrustList,
    /// Whether this endpoint offers and accepts compressed frames.
    compression: bool,
    /// Incoming handshakes in flight; [`Endpoint::accept`] returns them as they finish.
    handshakes: tokio::sync::Mutex<JoinSet<Result<PeerConnection, Error>>>,
}

impl Endpoint {
    /// Binds `addr` (use port 0 for any), offering and accepting compressed frames. Must be
    /// called inside a tokio runtime.
    pub fn bind(addr: SocketAddr, identity: Identity, trust: TrustList) -> Result<Endpoint, Error> {
        Endpoint::bind_with_compression(addr, identity, trust, true)
    }

    /// Binds `addr`; with `compression` false this endpoint neither offers nor accepts
    /// compressed frames (ALPN `lethe/6` only), so every connection it makes or takes sends
    /// frames raw both ways and refuses compressed ones.
    pub fn bind_with_compression(
        addr: SocketAddr,
        identity: Identity,
        trust: TrustList,
        compression: bool,
    ) -> Result<Endpoint, Error> {
        let tls = server_config(&identity, trust.clone(), compression)?;
        let crypto = QuicServerConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        // Initials waiting to be taken by `accept` (it takes them at once, so few ever wait).
        config.max_incoming(HANDSHAKES_IN_FLIGHT_MAX);
        let inner = quinn::Endpoint::server(config, addr).map_err(|source| Error::Bind { addr, source })?;
        Ok(Endpoint {
            inner,
            identity: Arc::new(identity),
            trust,
            compression,
            handshakes: tokio::sync::Mutex::new(JoinSet::new()),
        })
    }

    /// The address it listens on.
    pub fn local_addr(&self) -> Result<SocketAddr, Error> {
        self.inner.local_addr().map_err(|e| Error::Stream(e.to_string()))
    }

    /// This node's id.
    #[must_use]
    pub fn id(&self) -> NodeId {
        self.identity.id()
    }

    /// The trust list incoming connections are checked against.
    #[must_use]
    pub fn trust(&self) -> &TrustList {
        &self.trust
    }

    /// Connects to the node `expected` at `addr`; fails unless the peer proves it holds the key
    /// of `expected` ([`Error::WrongServer`] if another node answers there; a peer that refuses
    /// this node's key closes the connection: [`Error::Connection`]).
    pub async fn connect(&self, addr: SocketAddr, expected: NodeId) -> Result<PeerConnection, Error> {
        let found = Arc::new(std::sync::Mutex::new(None));
        let tls = client_config(&self.identity, expected, found.clone(), self.compression)?;
        let crypto = QuicClientConfig::try_from(tls).map_err(|e| Error::Tls(e.to_string()))?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(Arc::new(transport_config()));
        let connecting = self
            .inner
            .connect_with(config, addr, "lethe")
            .map_err(|e| Error::Connect { addr, reason: e.to_string() })?;
        let conn = match connecting.await {
            Ok(conn) => conn,
            Err(e) => {
                // This side's own check of the server's key failed: not the peer's refusal.
                let found = found.lock().ok().and_then(|f| *f);
                return Err(match found {
                    Some(found) => Error::WrongServer { addr, expected, found },
                    None => Error::Connection(e),
                });
            }
        };
        PeerConnection::new(conn)
    }

    /// The next incoming connection that completed its handshake, in the order handshakes
    /// finish (not the order they began: a slow one holds back no other). `None` once the
    /// endpoint is closed; `Some(Err)` for one that failed (an untrusted key, a handshake past
    /// [`HANDSHAKE_TIMEOUT`], one refused over [`HANDSHAKES_IN_FLIGHT_MAX`]), which the caller
    /// logs and moves past. Handshakes progress whether or not `accept` is being awaited; call
    /// it from one task (concurrent callers take turns).
    pub async fn accept(&self) -> Option<Result<PeerConnection, Error>> {
        let mut handshakes = self.handshakes.lock().await;
        loop {
            tokio::select! {
                biased;
                Some(done) = handshakes.join_next() => {
                    return Some(done.unwrap_or_else(|e| Err(Error::Stream(format!("handshake task ended: {e}")))));
                }
                incoming = self.inner.accept() => {
                    let incoming = incoming?;
                    let addr = incoming.remote_address();
                    if handshakes.len() >= HANDSHAKES_UNVALIDATED_MAX
                        && !incoming.remote_address_validated()
                        && incoming.may_retry()
                    {
                        // Stateless: nothing is kept until the client comes back with the token.
                        // A retry refused by quinn leaves nothing to do either.
                        let _ = incoming.retry();
                        continue;
                    }
                    if handshakes.len() >= HANDSHAKES_IN_FLIGHT_MAX {
                        incoming.refuse();
                        return Some(Err(Error::HandshakesFull { addr, max: HANDSHAKES_IN_FLIGHT_MAX }));
                    }
                    handshakes.spawn(async move {
                        match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                            Ok(conn) => PeerConnection::new(conn?),
                            // Dropping the handshake's future drops the connection: quinn closes it.
                            Err(_) => Err(Error::HandshakeTimeout { addr, timeout: HANDSHAKE_TIMEOUT }),
                        }
                    });
                }
            }
        }
    }

    /// Closes every connection and stops accepting.
    pub fn close(&self) {
        self.inner.close(VarInt::from_u32(CloseCode::Done as u32), b"node shutting down");
    }

    /// Waits until every connection has been closed cleanly.
    pub async fn wait_idle(&self) {
        self.inner.wait_idle().await;
    }
}
