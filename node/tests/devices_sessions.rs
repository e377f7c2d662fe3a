//! The device session cap and device news under hostile and racing inputs (a hostile review of
//! `device_news.rs`): a device that holds its turn, commits that race the news stream, a horizon
//! covered mid-session. Real QUIC on 127.0.0.1, real redb files; every wait on a condition with a deadline.

use lethe_engine::device::DeviceHello;
use lethe_engine::session::{Message, PROTOCOL_VERSION};
use lethe_engine::{PutOptions, VersionVector};
use lethe_node::{Node, NodeConfig, PeerAddr};
use lethe_transport::{Endpoint, Identity, NodeId, TrustList};
use std::time::{Duration, Instant};

mod common;
use common::{addr, dir, listen, quick, until};

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

/// An enrolled device that opens a session announcing uploads, then sends an empty,
/// not-last `Upload` every 200 ms (well inside the 1 s stall timeout) for ever: each frame is
/// valid, the member answers each, and `uploaded` never grows, so neither the stall timeout
/// nor `UPLOADS_PER_SESSION_MAX` ends the session. With `device_sessions_max = 1` it held the
/// only permit for ever, and a write at the member never reached an honest device; now the
/// session ends at `device_session_timeout` (3 s here) and the honest device is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_trickling_empty_uploads_loses_its_turn_at_the_device_session_timeout_and_the_others_run() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let config = NodeConfig {
        device_sessions_max: 1,
        session_stall_timeout: Duration::from_secs(1),
        device_session_timeout: Duration::from_secs(3),
        ..quick(NodeConfig::new(md, listen()))
    };
    let server = config.start().await.unwrap();
    let hostile = Identity::generate().unwrap();
    let hostile_id = hostile.id();
    server.enrol_device(hostile_id, None).unwrap();
    let raw = Endpoint::bind(listen(), hostile, TrustList::new([server.id()])).unwrap();
    let conn = raw.connect(server.local_addr(), server.id()).await.unwrap();
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&[3]).await.unwrap();
    let hello = DeviceHello(
        PROTOCOL_VERSION,
        hostile_id.replica_id(),
        VersionVector::new(),
        VersionVector::new(),
        None,
        false,
        true,
        now_ms(),
        false,
        Vec::new(),
        None,
        Vec::new(),
    );
    w.send(&Message::DeviceHello(hello).encode().unwrap()).await.unwrap();
    w.flush().await.unwrap();
    // Read (and count) what the member answers, so its writes never block.
    let answers = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let reader = tokio::spawn({
        let answers = answers.clone();
        async move {
            while let Ok(Some(frame)) = r.next().await {
                let name = Message::decode(&frame).map(|m| m.name()).unwrap_or("undecodable");
                if name == "Admitted" {
                    answers.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            }
        }
    });
    let trickle = tokio::spawn(async move {
        loop {
            let up = Message::Upload { entries: Vec::new(), last: false }.encode().unwrap();
            if w.send(&up).await.is_err() || w.flush().await.is_err() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    });
    // The hostile session runs (holds the permit).
    let deadline = Instant::now() + Duration::from_secs(30);
    while server.status().unwrap().device_sessions == 0 {
        assert!(Instant::now() < deadline, "the hostile session never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // An honest device connects; a write at the member should reach it.
    let (dd, dev_id) = dir(tmp.path(), "phone");
    server.enrol_device(dev_id, None).unwrap();
    let phone = quick(NodeConfig::new(dd, listen()).with_server(addr(&server))).start().await.unwrap();
    server.put("k", "from the member", PutOptions::default()).await.unwrap();
    // 20 stall timeouts: an honest session takes well under one.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut got = false;
    while Instant::now() < deadline {
        if phone.get(b"k").unwrap().is_some() {
            got = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let status = server.status().unwrap();
    println!(
        "hostile answers {} ; member device_sessions {} peak {} failed {} finished {} ; phone sessions_finished {}",
        answers.load(std::sync::atomic::Ordering::Relaxed),
        status.device_sessions,
        status.device_sessions_peak,
        status.sessions_failed,
        status.sessions_finished,
        phone.status().unwrap().sessions_finished,
    );
    trickle.abort();
    reader.abort();
    assert!(
        got,
        "the honest device never got the member's write in 20 s (20 stall timeouts): the hostile session \
         still holds the only permit after {} empty uploads",
        answers.load(std::sync::atomic::Ordering::Relaxed)
    );
    phone.shutdown().await;
    server.shutdown().await;
}

/// Runs one whole device session of `device` over a fresh stream of `conn`, lock-step (the
/// data is small): what a device node's link does, without its news listener.
async fn raw_device_session(
    device: &mut lethe_engine::Replica<lethe_engine::MemoryStore>,
    member: NodeId,
    conn: &lethe_transport::PeerConnection,
) {
    let mut s = lethe_engine::device::DeviceSession::new(device, Some(member.replica_id())).unwrap();
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&[3]).await.unwrap();
    loop {
        while let Some(f) = s.poll_transmit(device).unwrap() {
            w.send(&f).await.unwrap();
        }
        w.flush().await.unwrap();
        if s.is_finished() {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), r.next()).await.unwrap().unwrap().unwrap();
        s.handle(device, &frame).unwrap();
    }
    let mut send = w.into_inner().await.unwrap();
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), r.next()).await;
}

/// The news stream subscribes to the member's vector when it is accepted: a commit at the
/// member after the download of the device's first session on the connection began and before
/// its news stream was accepted must still be news (it was not: the stream waited for the
/// vector to move again). A device node opens its news stream in a task of its own while its
/// first session runs, so the two race; here the order is made explicit: session complete
/// (member vector V0), member commit (V1), news stream opened. The device lacks V1, so news
/// follows the first frame (the live count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_commit_before_the_news_stream_is_accepted_is_news() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let config = NodeConfig { device_news_interval: Duration::from_millis(50), ..quick(NodeConfig::new(md, listen())) };
    let server = config.start().await.unwrap();
    server.put("a", "before", PutOptions::default()).await.unwrap();
    let ident = Identity::generate().unwrap();
    let id = ident.id();
    server.enrol_device(id, None).unwrap();
    let raw = Endpoint::bind(listen(), ident, TrustList::new([server.id()])).unwrap();
    let conn = raw.connect(server.local_addr(), server.id()).await.unwrap();
    let config = lethe_engine::Config { role: lethe_engine::Role::Device, ..lethe_engine::Config::default() };
    let mut device = lethe_engine::Replica::open(
        lethe_engine::MemoryStore::new(),
        id.replica_id(),
        config,
        std::sync::Arc::new(lethe_engine::SystemClock),
    )
    .unwrap();
    raw_device_session(&mut device, server.id(), &conn).await;
    assert!(device.get(b"a").unwrap().is_some(), "the first session brought the member's write");
    server.put("b", "after the session, before the news stream", PutOptions::default()).await.unwrap();
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&[4]).await.unwrap();
    w.flush().await.unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), r.next()).await;
    assert!(matches!(first, Ok(Ok(Some(_)))), "the news stream's first frame: {first:?}");
    // 10 s: 200 news intervals.
    let news = tokio::time::timeout(Duration::from_secs(10), r.next()).await;
    let status = server.status().unwrap();
    println!(
        "device has b: {} ; member device_news_sent {} sessions_finished {} ; news: {news:?}",
        device.get(b"b").unwrap().is_some(),
        status.device_news_sent,
        status.sessions_finished
    );
    assert!(
        matches!(news, Ok(Ok(Some(_)))),
        "the member never told the device of `b` (committed after the device's last session's download began): \
         device_news_sent {}",
        status.device_news_sent
    );
    server.shutdown().await;
}

/// Starts `config`, retrying while a node just shut down on the same data directory (or port)
/// still holds it.
async fn start_retrying(config: NodeConfig) -> Node {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match config.clone().start().await {
            Ok(n) => return n,
            Err(e) if Instant::now() < deadline => {
                let _ = e;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not start: {e}"),
        }
    }
}

async fn stop(n: Node) {
    n.shutdown().await;
    drop(n);
}

/// The horizon case with uploads: the member checks a device's horizon against its vector at
/// the handshake (`hello_vector`), but the news coverage notes its vector when the download
/// starts, after the device's uploads. If the member's vector comes to cover the horizon in
/// between (a member session brought what it lacked), the download is withheld (the device
/// takes nothing); counted as having brought the device the member's whole vector, it left the
/// member's own write `b1` unsent until the next commit or the hour-long anti-entropy. A
/// withheld download now counts for nothing, and news follows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_horizon_covered_during_the_uploads_still_brings_news_of_what_the_device_lacks() {
    let tmp = tempfile::tempdir().unwrap();
    let (da, ia) = dir(tmp.path(), "a");
    let (db, ib) = dir(tmp.path(), "b");
    let pa = std::net::UdpSocket::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    let a_config = quick(NodeConfig::new(da, pa).with_trust(ib));
    let b_config = NodeConfig {
        device_news_interval: Duration::from_millis(50),
        ..quick(NodeConfig::new(db, listen()).with_peer(PeerAddr { id: ia, addr: pa }))
    };
    let a = start_retrying(a_config.clone()).await;
    let b = start_retrying(b_config.clone()).await;
    a.put("a0", "x", PutOptions::default()).await.unwrap();
    b.put("b0", "x", PutOptions::default()).await.unwrap();
    until("a and b hold each other's first write", || {
        a.get(b"b0").unwrap().is_some() && b.get(b"a0").unwrap().is_some()
    })
    .await;
    stop(b).await;
    a.put("a1", "b lacks this", PutOptions::default()).await.unwrap();
    // The device bootstraps from a: its horizon is a's vector, which b does not cover.
    let ident = Identity::generate().unwrap();
    let dev = ident.id();
    a.enrol_device(dev, None).unwrap();
    let raw = Endpoint::bind(listen(), ident, TrustList::new([ia, ib])).unwrap();
    let config = lethe_engine::Config { role: lethe_engine::Role::Device, ..lethe_engine::Config::default() };
    let mut device = lethe_engine::Replica::open(
        lethe_engine::MemoryStore::new(),
        dev.replica_id(),
        config,
        std::sync::Arc::new(lethe_engine::SystemClock),
    )
    .unwrap();
    {
        let conn = raw.connect(a.local_addr(), ia).await.unwrap();
        raw_device_session(&mut device, ia, &conn).await;
        conn.conn.close(0u32.into(), b"done");
    }
    assert!(device.get(b"a1").unwrap().is_some());
    let horizon = device.horizon().cloned();
    stop(a).await;
    let b = start_retrying(b_config.clone()).await;
    b.enrol_device(dev, None).unwrap();
    b.put("b1", "the device lacks this", PutOptions::default()).await.unwrap();
    device.put("d", "queued on the device", PutOptions::default()).unwrap();
    // Connected to b as a device node is: news stream first.
    let conn = raw.connect(b.local_addr(), ib).await.unwrap();
    let (mut nw, mut nr) = conn.open().await.unwrap();
    nw.send(&[4]).await.unwrap();
    nw.flush().await.unwrap();
    assert!(matches!(tokio::time::timeout(Duration::from_secs(10), nr.next()).await, Ok(Ok(Some(_)))));
    // The session: handshake, b's answer, then (before the uploads) a comes back and b syncs a1.
    let mut s = lethe_engine::device::DeviceSession::new(&mut device, Some(ib.replica_id())).unwrap();
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&[3]).await.unwrap();
    while let Some(f) = s.poll_transmit(&device).unwrap() {
        w.send(&f).await.unwrap();
    }
    w.flush().await.unwrap();
    let hello = tokio::time::timeout(Duration::from_secs(10), r.next()).await.unwrap().unwrap().unwrap();
    s.handle(&mut device, &hello).unwrap();
    let a = start_retrying(a_config.clone()).await;
    until("b holds a1 (its vector now covers the device's horizon)", || b.get(b"a1").unwrap().is_some()).await;
    loop {
        while let Some(f) = s.poll_transmit(&device).unwrap() {
            w.send(&f).await.unwrap();
        }
        w.flush().await.unwrap();
        if s.is_finished() {
            break;
        }
        let frame = tokio::time::timeout(Duration::from_secs(10), r.next()).await.unwrap().unwrap().unwrap();
        s.handle(&mut device, &frame).unwrap();
    }
    let mut send = w.into_inner().await.unwrap();
    let _ = send.finish();
    let _ = tokio::time::timeout(Duration::from_secs(2), r.next()).await;
    let stats = s.stats();
    // 10 s: 200 news intervals.
    let news = tokio::time::timeout(Duration::from_secs(10), nr.next()).await;
    let status = b.status().unwrap();
    println!(
        "horizon {horizon:?}; download mode {:?} uploaded {}; device has b1: {}; b device_news_sent {} sessions_finished {} sessions_failed {}; news: {news:?}",
        stats.download.mode,
        stats.uploaded,
        device.get(b"b1").unwrap().is_some(),
        status.device_news_sent,
        status.sessions_finished,
        status.sessions_failed
    );
    assert!(
        device.get(b"b1").unwrap().is_some() || matches!(news, Ok(Ok(Some(_)))),
        "the device lacks b's write b1 and b never told it: its session took nothing (mode {:?}), yet counted as \
         covering b's vector",
        stats.download.mode
    );
    stop(a).await;
    stop(b).await;
}

/// Control for the permit finding: once the session holding the only permit ends (after
/// several of the waiting device's stall timeouts), the waiting device is served (its stale,
/// timed-out session streams queued at the member fail fast and pass the permit on).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn once_the_permit_holder_ends_a_device_that_timed_out_waiting_is_served() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let config = NodeConfig {
        device_sessions_max: 1,
        session_stall_timeout: Duration::from_secs(1),
        ..quick(NodeConfig::new(md, listen()))
    };
    let server = config.start().await.unwrap();
    let hostile = Identity::generate().unwrap();
    let hostile_id = hostile.id();
    server.enrol_device(hostile_id, None).unwrap();
    let raw = Endpoint::bind(listen(), hostile, TrustList::new([server.id()])).unwrap();
    let conn = raw.connect(server.local_addr(), server.id()).await.unwrap();
    let (mut w, mut r) = conn.open().await.unwrap();
    w.send(&[3]).await.unwrap();
    let hello = DeviceHello(
        PROTOCOL_VERSION,
        hostile_id.replica_id(),
        VersionVector::new(),
        VersionVector::new(),
        None,
        false,
        true,
        now_ms(),
        false,
        Vec::new(),
        None,
        Vec::new(),
    );
    w.send(&Message::DeviceHello(hello).encode().unwrap()).await.unwrap();
    w.flush().await.unwrap();
    let reader = tokio::spawn(async move { while let Ok(Some(_)) = r.next().await {} });
    until("the hostile session holds the permit", || server.status().unwrap().device_sessions == 1).await;
    let (dd, dev_id) = dir(tmp.path(), "phone");
    server.enrol_device(dev_id, None).unwrap();
    let phone = NodeConfig {
        session_stall_timeout: Duration::from_secs(1),
        ..quick(NodeConfig::new(dd, listen()).with_server(addr(&server)))
    }
    .start()
    .await
    .unwrap();
    server.put("k", "from the member", PutOptions::default()).await.unwrap();
    // 5 s of empty uploads: 5 of the phone's stall timeouts.
    for _ in 0..25 {
        let up = Message::Upload { entries: Vec::new(), last: false }.encode().unwrap();
        w.send(&up).await.unwrap();
        w.flush().await.unwrap();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(phone.get(b"k").unwrap().is_none(), "starved meanwhile (the first finding)");
    conn.conn.close(0u32.into(), b"bye");
    reader.abort();
    until("the phone got the member's write once the permit was free", || phone.get(b"k").unwrap().is_some()).await;
    println!("phone served after the holder left; phone sessions_failed {}", phone.status().unwrap().sessions_failed);
    phone.shutdown().await;
    server.shutdown().await;
}

/// A device stream whose first frame never comes (a byte of its length prefix, then nothing)
/// must not hold up the device's other streams: a session on a second stream is served, and
/// the silent stream is dropped after the stall timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_stream_whose_first_frame_never_comes_does_not_hold_up_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let config = NodeConfig { session_stall_timeout: Duration::from_secs(1), ..quick(NodeConfig::new(md, listen())) };
    let server = config.start().await.unwrap();
    server.put("a", "from the member", PutOptions::default()).await.unwrap();
    let ident = Identity::generate().unwrap();
    let id = ident.id();
    server.enrol_device(id, None).unwrap();
    let raw = Endpoint::bind(listen(), ident, TrustList::new([server.id()])).unwrap();
    let conn = raw.connect(server.local_addr(), server.id()).await.unwrap();
    let (w, _r) = conn.open().await.unwrap();
    let mut silent = w.into_inner().await.unwrap();
    silent.write_all(&[0]).await.unwrap();
    let config = lethe_engine::Config { role: lethe_engine::Role::Device, ..lethe_engine::Config::default() };
    let mut device = lethe_engine::Replica::open(
        lethe_engine::MemoryStore::new(),
        id.replica_id(),
        config,
        std::sync::Arc::new(lethe_engine::SystemClock),
    )
    .unwrap();
    let session = tokio::time::timeout(Duration::from_secs(30), raw_device_session(&mut device, server.id(), &conn));
    assert!(session.await.is_ok(), "the session on the second stream was never served");
    assert!(device.get(b"a").unwrap().is_some(), "the session brought the member's write");
    drop(silent);
    server.shutdown().await;
}
