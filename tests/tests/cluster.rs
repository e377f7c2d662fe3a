//! Multi-process clusters: real `lethe serve` processes on 127.0.0.1, real redb files, real QUIC.

use lethe_node::{DataDir, Node, NodeConfig};
use lethe_tests::cluster::{NodeProc, Owner, identity, wait_converged, wait_until};
use lethe_transport::{CloseCode, Endpoint, TrustList};
use std::collections::BTreeSet;
use std::time::Duration;

const CONVERGE: Duration = Duration::from_secs(60);

fn args(list: &[&str]) -> Vec<String> {
    list.iter().map(ToString::to_string).collect()
}

/// Node args: fast GC so tombstones go within the test.
fn serve_args(peers: &[&NodeProc], trust: &[&NodeProc]) -> Vec<String> {
    let mut a = args(&["--gc-interval", "200ms"]);
    for p in peers {
        a.extend(["--peer".to_string(), p.peer_arg()]);
    }
    for t in trust {
        a.extend(["--trust".to_string(), t.id.to_string()]);
    }
    a
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

fn list(node: &NodeProc, prefix: &str) -> BTreeSet<String> {
    let (code, out, err) = node.cli(&["list", "--prefix", prefix, "--limit", "100000"]);
    assert_eq!(code, 0, "{err}");
    out.lines().map(|l| l.split('\t').next().unwrap_or_default().to_string()).collect()
}

#[test]
fn three_nodes_with_writes_and_deletes_on_each_converge_and_forget_the_deletes() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) =
        (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"), NodeProc::init(root.path(), "c"));
    a.start(&serve_args(&[], &[&b, &c]));
    b.start(&serve_args(&[&a], &[&c]));
    c.start(&serve_args(&[&a, &b], &[]));
    let rt = runtime();
    rt.block_on(async {
        for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
            let owner = Owner::connect(node).await.unwrap();
            for i in 0..40 {
                owner.put(&format!("{name}{i:02}"), "v").await.unwrap();
            }
            // Everyone writes the same key at about the same time: one value wins everywhere.
            owner.put("shared", name).await.unwrap();
            owner.close().await;
        }
    });
    for (name, node) in [("a", &a), ("b", &b), ("c", &c)] {
        for i in 0..15 {
            let (code, _, err) = node.cli(&["del", &format!("{name}{i:02}")]);
            assert_eq!(code, 0, "{err}");
        }
    }
    // a also deletes one of c's keys, which c wrote.
    assert_eq!(a.cli(&["del", "c20"]).0, 0);
    let statuses = wait_converged(&[&a, &b, &c], CONVERGE);
    assert_eq!(statuses[0].live, 3 * 25 + 1 - 1);
    let keys = list(&b, "");
    assert!(keys.contains("a15") && !keys.contains("a14") && !keys.contains("c20"));
    let (_, shared_a, _) = a.cli(&["get", "shared"]);
    let (_, shared_c, _) = c.cli(&["get", "shared"]);
    assert_eq!(shared_a, shared_c);
    // Every member acknowledges twice within a few GC intervals: no tombstone is left anywhere.
    wait_until("tombstones are collected everywhere", CONVERGE, || {
        let t: Vec<u64> = [&a, &b, &c].iter().map(|n| n.status().tombstones).collect();
        (t.iter().all(|&n| n == 0), t)
    });
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[test]
fn a_node_killed_mid_write_loses_no_acknowledged_write_and_converges() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&serve_args(&[], &[&b]));
    b.start(&serve_args(&[&a], &[]));
    let rt = runtime();
    let acked: BTreeSet<String> = rt.block_on(async {
        let owner = std::sync::Arc::new(Owner::connect(&a).await.unwrap());
        let mut writers = Vec::new();
        for w in 0..8 {
            let owner = owner.clone();
            writers.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for i in 0.. {
                    let key = format!("w{w}-{i:05}");
                    // A killed node sends no close: give up on an answer after a while.
                    match tokio::time::timeout(Duration::from_secs(2), owner.put(&key, "durable")).await {
                        Ok(Ok(_)) => acked.push(key),
                        _ => break,
                    }
                }
                acked
            }));
        }
        let mut all = BTreeSet::new();
        // Let some writes through, then kill the node in the middle of the stream of writes.
        tokio::time::sleep(Duration::from_millis(700)).await;
        a.kill();
        for w in writers {
            all.extend(w.await.unwrap());
        }
        all
    });
    assert!(acked.len() > 50, "only {} writes were acknowledged before the kill", acked.len());
    // Back on the same address; it dials b too, so b need not first notice the old connection died.
    a.start(&serve_args(&[&b], &[&b]));
    wait_converged(&[&a, &b], CONVERGE);
    for node in [&a, &b] {
        let keys = list(node, "w");
        let lost: Vec<_> = acked.difference(&keys).collect();
        assert!(lost.is_empty(), "{} acknowledged writes lost, e.g. {:?}", lost.len(), lost.first());
    }
    a.stop();
    b.stop();
}

#[test]
fn a_fresh_node_joining_after_most_keys_were_deleted_receives_no_tombstone() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut c) =
        (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"), NodeProc::init(root.path(), "c"));
    a.start(&serve_args(&[], &[&b, &c]));
    b.start(&serve_args(&[&a], &[]));
    let rt = runtime();
    rt.block_on(async {
        let owner = Owner::connect(&a).await.unwrap();
        for i in 0..1000 {
            owner.put(&format!("k{i:04}"), "some value").await.unwrap();
        }
        for i in 0..900 {
            let req = lethe_node::control::Request::Delete { key: format!("k{i:04}").into_bytes() };
            owner.request(&req).await.unwrap();
        }
        owner.close().await;
    });
    wait_converged(&[&a, &b], CONVERGE);
    wait_until("a and b collect their tombstones", CONVERGE, || {
        let t = (a.status().tombstones, b.status().tombstones);
        (t == (0, 0), t)
    });
    c.start(&serve_args(&[&a], &[]));
    let statuses = wait_converged(&[&a, &b, &c], CONVERGE);
    let fresh = &statuses[2];
    assert_eq!(fresh.live, 100);
    assert_eq!(fresh.tombstones_received, 0, "the fresh node received tombstones: {fresh:#?}");
    assert_eq!(fresh.live_received, 100);
    for n in [&mut a, &mut b, &mut c] {
        n.stop();
    }
}

#[test]
fn an_untrusted_peer_is_refused_and_the_cluster_keeps_working() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b, mut stranger) =
        (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"), NodeProc::init(root.path(), "stranger"));
    a.start(&serve_args(&[], &[&b]));
    b.start(&serve_args(&[&a], &[]));
    // The stranger names a as its peer, but a does not trust the stranger's key.
    stranger.start(&serve_args(&[&a], &[]));
    wait_until("a refuses the stranger", CONVERGE, || {
        let log = a.log_text();
        (log.contains(&format!("node {} is not trusted", stranger.id)), ())
    });
    assert_eq!(a.cli(&["put", "still", "working"]).0, 0);
    wait_until("b gets a's write", CONVERGE, || {
        let (code, out, _) = b.cli(&["get", "still"]);
        (code == 0 && out.trim() == "working", out)
    });
    let sa = a.status();
    assert!(!sa.connected.contains(&stranger.id.to_string()));
    // The stranger's side may see a connection for a moment on each retry (TLS 1.3 finishes the
    // client's handshake before the server checks its key), but nothing ever reaches it.
    let ss = stranger.status();
    assert_eq!((ss.live, ss.live_received, ss.bytes_received), (0, 0, 0), "{ss:#?}");
    let (code, _, _) = stranger.cli(&["get", "still"]);
    assert_eq!(code, 1, "nothing reached the stranger");
    for n in [&mut a, &mut b, &mut stranger] {
        n.stop();
    }
}

#[test]
fn a_garbage_or_oversized_frame_closes_only_that_connection() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    let attacker = identity(root.path(), "attacker");
    let mut a_args = serve_args(&[], &[&b]);
    a_args.extend(["--trust".to_string(), attacker.id().to_string()]);
    a.start(&a_args);
    b.start(&serve_args(&[&a], &[]));
    let rt = runtime();
    let attacker_key = attacker.pkcs8().to_vec();
    rt.block_on(async {
        let identity = lethe_transport::Identity::from_pkcs8(&attacker_key).unwrap();
        let endpoint = Endpoint::bind("127.0.0.1:0".parse().unwrap(), identity, TrustList::default()).unwrap();
        let addr = a.addr.unwrap();

        // A session stream whose first message is not CBOR.
        let conn = endpoint.connect(addr, a.id).await.unwrap();
        let (mut w, _r) = conn.open().await.unwrap();
        w.send(&[0]).await.unwrap();
        w.send(&[0xff, 0x00, 0x13, 0x37]).await.unwrap();
        w.flush().await.unwrap();
        let reason = conn.conn.closed().await;
        assert!(
            matches!(&reason, quinn_close::ApplicationClosed(c) if c.error_code.into_inner() == CloseCode::Malformed as u64),
            "{reason}"
        );

        // A frame announcing 4 GiB.
        let conn = endpoint.connect(addr, a.id).await.unwrap();
        let (w, _r) = conn.open().await.unwrap();
        let mut send = w.into_inner().await.unwrap();
        send.write_all(&[0, 0, 0, 1, 0, 0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let reason = conn.conn.closed().await;
        assert!(
            matches!(&reason, quinn_close::ApplicationClosed(c) if c.error_code.into_inner() == CloseCode::TooLarge as u64),
            "{reason}"
        );
        endpoint.close();
    });
    // a and b are still connected and replicating.
    assert_eq!(a.cli(&["put", "after", "attack"]).0, 0);
    wait_until("b gets a's write after the attack", CONVERGE, || {
        let (code, out, _) = b.cli(&["get", "after"]);
        (code == 0 && out.trim() == "attack", out)
    });
    assert!(a.status().connected.contains(&b.id.to_string()));
    a.stop();
    b.stop();
}

mod quinn_close {
    pub use lethe_transport::endpoint::ConnectionError::ApplicationClosed;
}

#[test]
fn a_hundred_client_nodes_on_one_server_all_converge() {
    let root = tempfile::tempdir().unwrap();
    const CLIENTS: usize = 100;
    let dirs: Vec<DataDir> = (0..CLIENTS).map(|i| DataDir::new(root.path().join(format!("client{i:03}")))).collect();
    let ids: Vec<_> = dirs.iter().map(|d| d.init().unwrap().id()).collect();
    let mut server = NodeProc::init(root.path(), "server");
    let mut server_args = args(&["--gc-interval", "500ms"]);
    for id in &ids {
        server_args.extend(["--trust".to_string(), id.to_string()]);
    }
    server.start(&server_args);
    let server_peer: lethe_node::PeerAddr = server.peer_arg().parse().unwrap();
    let rt = runtime();
    let clients: Vec<Node> = rt.block_on(async {
        let mut clients = Vec::new();
        for dir in &dirs {
            let mut config = NodeConfig::new(dir.clone(), "127.0.0.1:0".parse().unwrap());
            config.peers = vec![server_peer];
            clients.push(Node::start(config).await.unwrap());
        }
        let mut writes = Vec::new();
        for (i, client) in clients.iter().enumerate() {
            let client = client.clone();
            writes.push(tokio::spawn(async move {
                for k in 0..5 {
                    client.put(format!("c{i:03}-{k}"), "hello", Default::default()).await.unwrap();
                }
                client.delete(format!("c{i:03}-0")).await.unwrap();
            }));
        }
        for w in writes {
            w.await.unwrap();
        }
        clients
    });
    // Converged: the server holds the 400 keys left and every client has the server's digest.
    wait_until("every client has the server's state", Duration::from_secs(120), || {
        let s = server.status();
        let behind: Vec<usize> = clients
            .iter()
            .enumerate()
            .filter(|(_, c)| c.status().unwrap().digest != s.digest)
            .map(|(i, _)| i)
            .collect();
        (s.live == (CLIENTS * 4) as u64 && behind.is_empty(), (s.live, behind))
    });
    let keys = list(&server, "c");
    assert!(keys.contains("c042-1") && !keys.contains("c042-0"));
    rt.block_on(async {
        let stops: Vec<_> = clients
            .iter()
            .map(|c| {
                tokio::spawn({
                    let c = c.clone();
                    async move { c.shutdown().await }
                })
            })
            .collect();
        for s in stops {
            s.await.unwrap();
        }
    });
    server.stop();
}

#[test]
fn the_cli_says_when_the_node_is_down_and_ttl_expires_locally() {
    let root = tempfile::tempdir().unwrap();
    let mut a = NodeProc::init(root.path(), "a");
    let (code, _, err) = a.cli(&["get", "k"]);
    assert_eq!(code, 2);
    assert!(err.contains("no node is running for") && err.contains("lethe serve --data"), "{err}");
    let (code, _, err) = NodeProc::init(root.path(), "b").cli(&["init"]);
    assert_ne!(code, 0);
    assert!(err.contains("already holds a node identity"), "{err}");

    a.start(&serve_args(&[], &[]));
    assert_eq!(a.cli(&["put", "otp", "491823", "--ttl", "1s"]).0, 0);
    assert_eq!(a.cli(&["put", "kept", "yes", "--ttl", "7d"]).0, 0);
    let (code, out, _) = a.cli(&["get", "otp"]);
    assert_eq!((code, out.trim()), (0, "491823"));
    wait_until("the TTL key expires", CONVERGE, || {
        let (code, _, _) = a.cli(&["get", "otp"]);
        (code == 1, code)
    });
    assert_eq!(a.cli(&["get", "kept"]).1.trim(), "yes");
    let (code, out, _) = a.cli(&["status"]);
    assert_eq!(code, 0);
    for field in ["node id", "live keys", "tombstones", "vector", "frontier", "digest", "connected", "members"] {
        assert!(out.contains(field), "status lacks {field}: {out}");
    }
    let (code, _, err) = a.cli(&["put", "k", "v", "--ttl", "soon"]);
    assert_ne!(code, 0);
    assert!(err.contains("--ttl"), "{err}");
    a.stop();
    let (code, _, err) = a.cli(&["status"]);
    assert_eq!(code, 2, "{err}");
}

#[test]
fn two_nodes_that_name_each_other_keep_one_connection() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    // Addresses picked before either starts, so each can name the other.
    let free_addr = || std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    a.addr = Some(free_addr());
    b.addr = Some(free_addr());
    let (a_peer, b_peer) = (a.peer_arg(), b.peer_arg());
    a.start(&args(&["--peer", &b_peer]));
    b.start(&args(&["--peer", &a_peer]));
    assert_eq!(a.cli(&["put", "k", "v"]).0, 0);
    wait_until("b gets the write", CONVERGE, || {
        let (code, out, _) = b.cli(&["get", "k"]);
        (code == 0 && out.trim() == "v", out)
    });
    wait_until("one connection each", CONVERGE, || {
        let (sa, sb) = (a.status(), b.status());
        ((sa.connections, sb.connections) == (1, 1), (sa.connections, sb.connections))
    });
    // And it stays so: the dial loops do not open a second one.
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!((a.status().connections, b.status().connections), (1, 1));
    a.stop();
    b.stop();
}

#[test]
fn anti_entropy_sessions_between_real_nodes_run_to_the_end() {
    let root = tempfile::tempdir().unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    let often = ["--anti-entropy-interval".to_string(), "300ms".to_string()];
    a.start(&[serve_args(&[], &[&b]), often.to_vec()].concat());
    b.start(&[serve_args(&[&a], &[]), often.to_vec()].concat());
    for (name, node) in [("a", &a), ("b", &b)] {
        for i in 0..20 {
            assert_eq!(node.cli(&["put", &format!("{name}{i:02}"), "v"]).0, 0);
        }
    }
    wait_converged(&[&a, &b], CONVERGE);
    // b dials, so b starts an anti-entropy session every 300 ms; both sides count it (one of
    // them sends the sketch, the other decodes it), and none fails.
    wait_until("anti-entropy sessions run", CONVERGE, || {
        let (sa, sb) = (a.status(), b.status());
        (
            sa.anti_entropy_sessions >= 3 && sb.anti_entropy_sessions >= 3,
            (sa.anti_entropy_sessions, sb.anti_entropy_sessions),
        )
    });
    assert_eq!(a.cli(&["put", "late", "x"]).0, 0);
    let statuses = wait_converged(&[&a, &b], CONVERGE);
    assert_eq!(statuses[0].live, 41);
    for s in [a.status(), b.status()] {
        assert_eq!(s.sessions_failed, 0, "{s:?}");
    }
    a.stop();
    b.stop();
}
