//! Real QUIC on 127.0.0.1: pinned keys decide who may connect, frames cross intact, and a bad
//! frame is refused.

use lethe_transport::{Endpoint, Error, Identity, TrustList};

fn localhost() -> std::net::SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trusted_peers_exchange_frames_and_untrusted_ones_are_refused() {
    let (a, b, stranger) =
        (Identity::generate().unwrap(), Identity::generate().unwrap(), Identity::generate().unwrap());
    let (a_id, b_id, stranger_id) = (a.id(), b.id(), stranger.id());
    let server = Endpoint::bind(localhost(), a, TrustList::new([b_id])).unwrap();
    let addr = server.local_addr().unwrap();
    let client = Endpoint::bind(localhost(), b, TrustList::default()).unwrap();
    let outsider = Endpoint::bind(localhost(), stranger, TrustList::default()).unwrap();

    let accept = tokio::spawn(async move {
        // The stranger's handshake fails at the server; the trusted client's succeeds after it.
        let mut refused = 0;
        loop {
            match server.accept().await.unwrap() {
                Ok(conn) => {
                    let (mut w, mut r) = conn.accept().await.unwrap();
                    let got = r.next().await.unwrap().unwrap();
                    w.send(&got).await.unwrap();
                    w.send(b"second").await.unwrap();
                    let mut send = w.into_inner().await.unwrap();
                    send.finish().unwrap();
                    conn.conn.closed().await;
                    return (conn.peer, refused);
                }
                Err(_) => refused += 1,
            }
        }
    });

    // In TLS 1.3 the client finishes its handshake before the server has checked the client's
    // certificate, so the stranger may see a connection for a moment; the server then closes it
    // with a handshake error, and nothing can be exchanged on it.
    match outsider.connect(addr, a_id).await {
        Err(err) => assert!(matches!(err, Error::Connection(_)), "{err}"),
        Ok(conn) => {
            let reason = conn.conn.closed().await;
            assert!(reason.to_string().contains("is not trusted"), "{reason}");
            assert!(conn.open().await.is_err());
        }
    }

    // Dialing the right address but expecting another key fails on the client side.
    assert!(client.connect(addr, stranger_id).await.is_err());

    let conn = client.connect(addr, a_id).await.unwrap();
    assert_eq!(conn.peer, a_id);
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(b"ping").await.unwrap();
    w.flush().await.unwrap();
    assert_eq!(r.next().await.unwrap(), Some(b"ping".to_vec()));
    assert_eq!(r.next().await.unwrap(), Some(b"second".to_vec()));
    assert_eq!(r.next().await.unwrap(), None);
    conn.close(lethe_transport::CloseCode::Done, "bye");
    let (peer, refused) = accept.await.unwrap();
    assert_eq!(peer, b_id);
    assert!(refused >= 1, "the stranger's attempt was seen and refused");
}
