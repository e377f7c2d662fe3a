//! Unauthenticated senders reach only the handshake, and a stalled handshake delays no one else's
//! (docs/design.md §9): real QUIC on 127.0.0.1, a real QUIC Initial replayed by a socket that
//! then goes silent.

use lethe_transport::{Endpoint, Identity, TrustList};
use std::net::SocketAddr;
use tokio::net::UdpSocket;

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// The first datagram a quinn client sends (its Initial, with a TLS ClientHello): a client dials
/// a plain UDP socket that reads it and never answers.
async fn captured_initial() -> Vec<u8> {
    let sink = UdpSocket::bind(localhost()).await.unwrap();
    let addr = sink.local_addr().unwrap();
    let client = Endpoint::bind(localhost(), Identity::generate().unwrap(), TrustList::default()).unwrap();
    let target = Identity::generate().unwrap().id();
    let dial = tokio::spawn(async move {
        let _ = client.connect(addr, target).await;
    });
    let mut buf = vec![0; 2048];
    let len = sink.recv(&mut buf).await.unwrap();
    dial.abort();
    buf.truncate(len);
    assert!(len >= 1200, "a QUIC Initial is padded to 1,200 bytes, got {len}");
    buf
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_trusted_peer_connects_while_a_stranger_handshake_stalls() {
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (a_id, b_id) = (server_id.id(), client_id.id());
    let server = Endpoint::bind(localhost(), server_id, TrustList::new([b_id])).unwrap();
    let addr = server.local_addr().unwrap();

    // Everything the server's accept returns, in order.
    let (results, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let accept = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Some(result) = server.accept().await {
            if let Ok(conn) = &result {
                let (mut w, mut r) = conn.accept().await.unwrap();
                let got = r.next().await.unwrap().unwrap();
                w.send(&got).await.unwrap();
                w.flush().await.unwrap();
            }
            let _ = results.send(result.as_ref().map(|c| c.peer).map_err(ToString::to_string));
            // Held open: dropping the last handle to a connection closes it.
            open.push(result);
        }
    });

    // A stranger replays one captured Initial and goes silent: the server answers (so the
    // handshake is in flight) and then waits for a client that never speaks again.
    let initial = captured_initial().await;
    let stalled = UdpSocket::bind(localhost()).await.unwrap();
    stalled.send_to(&initial, addr).await.unwrap();
    let mut buf = vec![0; 2048];
    let _ = stalled.recv(&mut buf).await.unwrap();

    // The trusted peer connects and exchanges a frame while that handshake is still in flight.
    let client = Endpoint::bind(localhost(), client_id, TrustList::default()).unwrap();
    let conn = client.connect(addr, a_id).await.expect("a trusted peer connects while a handshake stalls");
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(b"ping").await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(r.next().await.unwrap(), Some(b"ping".to_vec()));

    // The trusted connection came out of accept first; the stalled one then ends in a timeout.
    let first = accepted.recv().await.unwrap();
    assert_eq!(first.as_ref().ok(), Some(&b_id), "the stalled handshake held the trusted one back: {first:?}");
    let second = accepted.recv().await.unwrap();
    let reason = second.expect_err("the stalled handshake never finishes");
    assert!(reason.contains("did not finish its handshake"), "{reason}");
    conn.close(lethe_transport::CloseCode::Done, "bye");
    accept.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_replayed_initials_beyond_the_cap_does_not_shut_a_trusted_peer_out() {
    use lethe_transport::endpoint::HANDSHAKES_IN_FLIGHT_MAX;
    let (server_id, client_id) = (Identity::generate().unwrap(), Identity::generate().unwrap());
    let (a_id, b_id) = (server_id.id(), client_id.id());
    let server = Endpoint::bind(localhost(), server_id, TrustList::new([b_id])).unwrap();
    let addr = server.local_addr().unwrap();
    let (results, mut accepted) = tokio::sync::mpsc::unbounded_channel();
    let accept = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Some(result) = server.accept().await {
            let _ = results.send(result.as_ref().map(|c| c.peer).map_err(ToString::to_string));
            open.push(result);
        }
    });

    // More replayed Initials than the cap, each from a socket that then stays silent.
    let mut silent = Vec::new();
    for _ in 0..HANDSHAKES_IN_FLIGHT_MAX + 8 {
        let initial = captured_initial().await;
        let socket = UdpSocket::bind(localhost()).await.unwrap();
        socket.send_to(&initial, addr).await.unwrap();
        silent.push(socket);
    }
    // Each got an answer (a handshake in flight, or a stateless Retry once many are).
    let mut buf = vec![0; 2048];
    for socket in &silent {
        let _ = socket.recv(&mut buf).await.unwrap();
    }

    let client = Endpoint::bind(localhost(), client_id, TrustList::default()).unwrap();
    let conn = client.connect(addr, a_id).await.expect("a trusted peer gets in during a flood of Initials");
    assert_eq!(conn.peer, a_id);
    loop {
        match accepted.recv().await.unwrap() {
            Ok(peer) => break assert_eq!(peer, b_id),
            Err(e) => assert!(!e.contains(&b_id.to_string()), "{e}"),
        }
    }
    conn.close(lethe_transport::CloseCode::Done, "bye");
    accept.abort();
}
