//! Compressed frames over real QUIC on 127.0.0.1: long frames cross compressed and intact, short
//! ones raw; a zstd bomb or a corrupt compressed frame sent by a raw writer is refused with a
//! clear error, and the connection is closed with the matching code. Compression is negotiated
//! in the TLS handshake (ALPN): only when both ends allow it; when either refuses, frames go raw
//! both ways and a compressed one is refused.

use lethe_engine::session::FRAME_BYTES_MAX;
use lethe_transport::frame::{COMPRESS_BYTES_MIN, COMPRESSED_FLAG, PREFIX_BYTES};
use lethe_transport::{CloseCode, Endpoint, Error, FrameWriter, Identity, PeerConnection, TrustList};

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Two endpoints that trust each other, connected: (server side, client side).
async fn pair() -> (Endpoint, PeerConnection, Endpoint, PeerConnection) {
    pair_with(true, true).await
}

/// [`pair`], each end allowing compression or not.
async fn pair_with(
    server_compresses: bool,
    client_compresses: bool,
) -> (Endpoint, PeerConnection, Endpoint, PeerConnection) {
    let (a, b) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (a_id, b_id) = (a.id(), b.id());
    let server = Endpoint::bind_with_compression(localhost(), a, TrustList::new([b_id]), server_compresses).unwrap();
    let client = Endpoint::bind_with_compression(localhost(), b, TrustList::new([a_id]), client_compresses).unwrap();
    let addr = server.local_addr().unwrap();
    let (accepted, connected) = tokio::join!(server.accept(), client.connect(addr, a_id));
    (server, accepted.unwrap().unwrap(), client, connected.unwrap())
}

/// A bootstrap-like frame: hashed hex keys and base64-alphabet values, as the benchmark writes.
fn entries_like(bytes: usize) -> Vec<u8> {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = Vec::with_capacity(bytes);
    let mut i = 0u64;
    while out.len() < bytes {
        let h = blake3::hash(&i.to_le_bytes());
        out.extend_from_slice(b"key:");
        out.extend_from_slice(&h.to_hex().as_bytes()[..20]);
        let mut x = blake3::Hasher::new();
        x.update(h.as_bytes());
        let mut reader = x.finalize_xof();
        let mut v = [0u8; 100];
        reader.fill(&mut v);
        out.extend(v.iter().map(|b| B64[usize::from(b % 64)]));
        i += 1;
    }
    out.truncate(bytes);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_frames_cross_compressed_and_short_ones_raw() {
    let (_server, accepted, _client, conn) = pair().await;
    let long = entries_like(1 << 20);
    let short = vec![b'x'; COMPRESS_BYTES_MIN - 1];
    let echo = tokio::spawn(async move {
        let (mut w, mut r) = accepted.accept().await.unwrap();
        let mut got = Vec::new();
        while let Some(frame) = r.next().await.unwrap() {
            w.send(&frame).await.unwrap();
            got.push(frame.len());
        }
        let mut send = w.into_inner().await.unwrap();
        send.finish().unwrap();
        // Dropping the last handle closes the connection: wait for the client to close it.
        accepted.conn.closed().await;
        (got, r.wire_bytes())
    });
    let (mut w, mut r) = conn.open().await.unwrap();
    for frame in [&long, &short, &long] {
        w.send(frame).await.unwrap();
    }
    let sent_wire = w.wire_bytes();
    let mut send = w.into_inner().await.unwrap();
    send.finish().unwrap();
    for frame in [&long, &short, &long] {
        assert_eq!(r.next().await.unwrap().as_ref(), Some(frame));
    }
    assert_eq!(r.next().await.unwrap(), None);
    conn.close(CloseCode::Done, "done");
    let (got, server_wire) = echo.await.unwrap();
    assert_eq!(got, [long.len(), short.len(), long.len()]);
    // Both ends count the same wire bytes: the short frame raw, the long ones well below raw
    // (hex keys and base64 values carry 4 and 6 bits a byte).
    let raw = (3 * PREFIX_BYTES + 2 * long.len() + short.len()) as u64;
    assert_eq!(server_wire, sent_wire);
    assert_eq!(r.wire_bytes(), sent_wire);
    assert!(sent_wire < raw * 85 / 100, "{sent_wire} wire bytes for {raw} raw");
}

/// Sends one long frame each way over a connection whose ends allow compression as given;
/// returns whether each end's connection says it is compressed and the wire bytes each way.
async fn exchange(server_compresses: bool, client_compresses: bool) -> ((bool, bool), (u64, u64)) {
    let (_server, accepted, _client, conn) = pair_with(server_compresses, client_compresses).await;
    let long = entries_like(1 << 20);
    let echo = {
        let long = long.clone();
        tokio::spawn(async move {
            let (mut w, mut r) = accepted.accept().await.unwrap();
            assert_eq!(r.next().await.unwrap().as_ref(), Some(&long));
            w.send(&long).await.unwrap();
            let sent = w.wire_bytes();
            let mut send = w.into_inner().await.unwrap();
            send.finish().unwrap();
            accepted.conn.closed().await;
            (accepted.compressed(), sent)
        })
    };
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&long).await.unwrap();
    let sent = w.wire_bytes();
    w.flush().await.unwrap();
    assert_eq!(r.next().await.unwrap().as_ref(), Some(&long));
    conn.close(CloseCode::Done, "done");
    let (server_compressed, server_sent) = echo.await.unwrap();
    ((server_compressed, conn.compressed()), (sent, server_sent))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compression_is_used_only_when_both_ends_allow_it() {
    let raw = (PREFIX_BYTES + (1 << 20)) as u64;
    let (compressed, (up, down)) = exchange(true, true).await;
    assert_eq!(compressed, (true, true));
    assert!(up < raw * 85 / 100 && down < raw * 85 / 100, "{up} and {down} wire bytes for {raw} raw");
    for (server, client) in [(false, true), (true, false), (false, false)] {
        let (compressed, wire) = exchange(server, client).await;
        assert_eq!(compressed, (false, false), "server {server}, client {client}");
        assert_eq!(wire, (raw, raw), "raw both ways: server {server}, client {client}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compressed_frame_on_a_connection_without_compression_is_refused() {
    let (_server, accepted, _client, conn) = pair_with(false, true).await;
    let reader = tokio::spawn(async move {
        let (_w, mut r) = accepted.accept().await.unwrap();
        let err = r.next().await.unwrap_err();
        assert!(err.is_peer_frame_error(), "{err}");
        accepted.close(CloseCode::for_error(&err), &err.to_string());
        err
    });
    // A compressing writer on a raw stream of this connection: what a broken peer would send.
    let (send, _recv) = conn.conn.open_bi().await.unwrap();
    let mut w = FrameWriter::compressing(send, FRAME_BYTES_MAX);
    // The reader refuses the frame at its prefix and closes the connection, which may come
    // before this side has written the whole body: a failed write here is the expected race.
    if w.send(&entries_like(64 * 1024)).await.is_ok() {
        let _ = w.flush().await;
    }
    let err = reader.await.unwrap();
    assert!(matches!(err, Error::CompressionNotNegotiated { .. }), "{err}");
    let closed = conn.conn.closed().await;
    assert!(closed_with(&closed, CloseCode::Malformed), "{closed}");
}

/// Sends `body` after a compressed-flag prefix on a raw QUIC stream (no `FrameWriter`), and
/// returns what the receiving `FrameReader` made of it and how the connection was closed.
async fn send_raw_compressed(body: &[u8]) -> (Error, quinn::ConnectionError) {
    let (_server, accepted, _client, conn) = pair().await;
    let reader = tokio::spawn(async move {
        let (_w, mut r) = accepted.accept().await.unwrap();
        let err = r.next().await.unwrap_err();
        // As the node does: a peer that breaks the frame layer loses its connection.
        assert!(err.is_peer_frame_error(), "{err}");
        accepted.close(CloseCode::for_error(&err), &err.to_string());
        err
    });
    let (mut send, _recv) = conn.conn.open_bi().await.unwrap();
    let prefix = COMPRESSED_FLAG | u32::try_from(body.len()).unwrap();
    send.write_all(&prefix.to_be_bytes()).await.unwrap();
    // The peer may close before reading it all; what it did is what the reader returned.
    let _ = send.write_all(body).await;
    let err = reader.await.unwrap();
    (err, conn.conn.closed().await)
}

fn closed_with(reason: &quinn::ConnectionError, code: CloseCode) -> bool {
    matches!(reason, quinn::ConnectionError::ApplicationClosed(c) if c.error_code == quinn::VarInt::from_u32(code as u32))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_zstd_bomb_is_refused_from_its_header_and_the_connection_closed() {
    // 100 MB of zeros in one zstd frame of a few KB, declaring its 100 MB.
    let bomb = zstd::bulk::compress(&vec![0u8; 100_000_000], 3).unwrap();
    assert!(bomb.len() < 16 * 1024, "{} bytes", bomb.len());
    let (err, closed) = send_raw_compressed(&bomb).await;
    assert!(matches!(err, Error::DeclaredTooLarge { declared: 100_000_000, max: FRAME_BYTES_MAX }), "{err}");
    assert!(closed_with(&closed, CloseCode::TooLarge), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bomb_that_declares_a_small_size_stops_at_that_size() {
    // A frame declaring 100 bytes, followed in the same body by 100 MB of zeros without a
    // declared size: the output buffer is the 100 bytes declared, and decompression fails there.
    let small = zstd::bulk::compress(&[1u8; 100], 3).unwrap();
    let mut tail = Vec::new();
    let mut encoder = zstd::stream::write::Encoder::new(&mut tail, 3).unwrap();
    encoder.include_contentsize(false).unwrap();
    for _ in 0..100 {
        std::io::Write::write_all(&mut encoder, &[0u8; 1_000_000]).unwrap();
    }
    encoder.finish().unwrap();
    let (err, closed) = send_raw_compressed(&[small, tail].concat()).await;
    assert!(matches!(&err, Error::Corrupt { reason } if reason.contains("declared 100 bytes")), "{err}");
    assert!(closed_with(&closed, CloseCode::Malformed), "{closed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_compressed_frame_is_a_clean_error() {
    // A frame as a compressing writer makes it (with its checksum), then bytes flipped inside.
    let mut w = FrameWriter::compressing(Vec::new(), FRAME_BYTES_MAX);
    w.send(&entries_like(64 * 1024)).await.unwrap();
    let mut body = w.into_inner().await.unwrap().split_off(PREFIX_BYTES);
    let middle = body.len() / 2;
    for b in &mut body[middle..middle + 64] {
        *b = !*b;
    }
    let (err, closed) = send_raw_compressed(&body).await;
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(closed_with(&closed, CloseCode::Malformed), "{closed}");
}
