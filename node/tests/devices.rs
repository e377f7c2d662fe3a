//! The node's device side (docs/design.md §8): a member enrols and removes devices while it
//! runs, a device node keeps a member connected (live both ways, offline writes queued), and
//! `sync_once` syncs a device without a running node. Real QUIC on 127.0.0.1, real redb files
//! in temporary directories; every wait is on a condition with a deadline.

use lethe_engine::PutOptions;
use lethe_node::{DataDir, Node, NodeClock, NodeConfig, NodeRole, PeerAddr, SyncEvent, SyncOnceError, sync_once};
use std::time::{Duration, Instant};

mod common;
use common::{DEADLINE, addr, dir, listen, quick, until};

async fn member(d: &DataDir) -> Node {
    quick(NodeConfig::new(d.clone(), listen())).start().await.unwrap()
}

async fn device(d: &DataDir, server: PeerAddr) -> Node {
    quick(NodeConfig::new(d.clone(), listen()).with_server(server)).start().await.unwrap()
}

/// Starts `config`, waiting for a node just shut down on the same data directory to let its
/// store go (its tasks end a moment after `shutdown` returns).
async fn restart(config: NodeConfig) -> Node {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match config.clone().start().await {
            Ok(n) => return n,
            Err(lethe_node::NodeError::Store { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            Err(e) => panic!("could not restart: {e}"),
        }
    }
}

/// [`sync_once`], waiting as [`restart`] does for a node just shut down on `dir`.
async fn sync(dir: &DataDir, servers: &[PeerAddr]) -> Result<lethe_node::SyncReport, SyncOnceError> {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match sync_once(dir, servers, NodeClock::default()).await {
            Err(SyncOnceError::Store { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            other => return other,
        }
    }
}

/// Waits until `n` has run no session for 500 ms (the sessions a write sets off are over), so
/// what follows starts from a quiet connection.
async fn quiet(n: &Node) {
    let deadline = Instant::now() + DEADLINE;
    let mut last = n.status().unwrap().sessions_finished;
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = n.status().unwrap().sessions_finished;
        if now == last {
            return;
        }
        assert!(Instant::now() < deadline, "sessions never stopped");
        last = now;
    }
}

fn value(n: &Node, key: &str) -> Option<Vec<u8>> {
    n.get(key.as_bytes()).unwrap().map(|i| i.value)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolled_at_runtime_syncs_both_ways_live() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, phone_id) = dir(tmp.path(), "phone");
    let server = member(&md).await;
    server.put("from-server", "s1", PutOptions::default()).await.unwrap();
    let phone = device(&dd, addr(&server)).await;
    let mut events = phone.sync_events();
    assert_eq!(phone.role(), NodeRole::Device);
    // Not enrolled: refused, and the phone says so.
    let refused = tokio::time::timeout(DEADLINE, async {
        loop {
            if let SyncEvent::Refused { reason, .. } = events.recv().await.unwrap() {
                return reason;
            }
        }
    })
    .await
    .unwrap();
    assert!(refused.contains("not enrolled") || refused.contains("not trusted"), "{refused}");
    assert_eq!(value(&phone, "from-server"), None);

    // Enrolled while both run: no restart.
    assert!(server.enrol_device(phone_id, Some("phone".into())).unwrap());
    until("the server's write reaches the phone", || value(&phone, "from-server").as_deref() == Some(b"s1")).await;
    phone.put("from-phone", "p1", PutOptions::default()).await.unwrap();
    until("the phone's write reaches the server", || value(&server, "from-phone").as_deref() == Some(b"p1")).await;
    // Live: a later write on the server reaches the connected phone without anything else.
    server.put("later", "s2", PutOptions::default()).await.unwrap();
    until("a later server write reaches the phone", || value(&phone, "later").as_deref() == Some(b"s2")).await;
    until("the phone is in sync", || phone.status().unwrap().in_sync).await;

    let devices = server.devices();
    assert_eq!(devices.len(), 1);
    let info = &devices[0];
    assert_eq!(info.node_id.as_deref(), Some(phone_id.to_string().as_str()));
    assert_eq!(info.name.as_deref(), Some("phone"));
    assert_eq!(info.cursor, 1, "one upload applied");
    assert!(info.connected);
    assert_eq!(server.status().unwrap().devices_connected, 1, "the status counts the connected device");
    assert!(info.last_seen_ms > 0);
    let status = phone.status().unwrap();
    assert_eq!((status.role, status.pending_uploads), (NodeRole::Device, 0));
    assert!(status.last_sync.is_some());
    assert_eq!(status.server, Some(server.id().to_string()));
    assert_eq!(server.status().unwrap().role, NodeRole::Member);

    // The enrolment persists: a restarted server still lets the phone in.
    phone.shutdown().await;
    server.shutdown().await;
    // A node's store is released once the last handle to it is dropped.
    drop((phone, server));
    let server = restart(quick(NodeConfig::new(md.clone(), listen()))).await;
    assert_eq!(server.devices()[0].name.as_deref(), Some("phone"));
    let report = sync(&dd, &[addr(&server)]).await.unwrap();
    assert_eq!(report.server, server.id().to_string());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_made_while_the_member_is_down_are_queued_and_arrive_once_it_is_back_applied_once() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, phone_id) = dir(tmp.path(), "phone");
    let server = member(&md).await;
    let port = server.local_addr();
    server.enrol_device(phone_id, None).unwrap();
    let phone = device(&dd, addr(&server)).await;
    phone.put("k0", "before", PutOptions::default()).await.unwrap();
    until("the first write is admitted", || {
        value(&server, "k0").is_some() && phone.status().unwrap().pending_uploads == 0
    })
    .await;
    server.shutdown().await;
    drop(server);

    for i in 1..=5 {
        phone.put(format!("k{i}"), "offline", PutOptions::default()).await.unwrap();
    }
    assert_eq!(phone.status().unwrap().pending_uploads, 5, "the offline writes wait in the queue");
    assert!(!phone.status().unwrap().in_sync);

    let server = restart(quick(NodeConfig::new(md.clone(), port))).await;
    until("the queued writes arrive", || (1..=5).all(|i| value(&server, &format!("k{i}")).is_some())).await;
    until("the queue is empty", || phone.status().unwrap().pending_uploads == 0).await;
    // Applied once each: the server numbered exactly six device writes, and its cursor is 6.
    let own = server.status().unwrap().vector.get(&server.id().replica_id().to_string()).copied();
    assert_eq!(own, Some(6), "each device write admitted under one dot of the server's");
    assert_eq!(server.devices()[0].cursor, 6);
    phone.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_device_is_cut_off_refused_and_its_writes_reach_no_one() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, lost_id) = dir(tmp.path(), "lost");
    let server = member(&md).await;
    server.enrol_device(lost_id, None).unwrap();
    let lost = device(&dd, addr(&server)).await;
    let mut events = lost.sync_events();
    lost.put("seen", "1", PutOptions::default()).await.unwrap();
    until("the device is connected and synced", || {
        value(&server, "seen").is_some() && server.devices().first().is_some_and(|d| d.connected)
    })
    .await;

    until("the device is in sync", || lost.status().unwrap().in_sync).await;
    quiet(&server).await;
    let failed_before = server.status().unwrap().sessions_failed;
    assert!(server.remove_device(lost_id).unwrap());
    assert!(server.devices().is_empty());
    // Its connection closes at once, and the device hears it was refused.
    let reason = tokio::time::timeout(DEADLINE, async {
        loop {
            match events.recv().await.unwrap() {
                SyncEvent::Refused { reason, .. } => return reason,
                SyncEvent::Disconnected { reason, .. } if reason.contains("removed") => return reason,
                _ => {}
            }
        }
    })
    .await
    .unwrap();
    assert!(reason.contains("removed") || reason.contains("not trusted"), "{reason}");
    until("the device is disconnected", || lost.status().unwrap().server.is_none()).await;
    assert_eq!(server.status().unwrap().devices_connected, 0, "a removed device is no longer counted connected");
    assert!(!lost.status().unwrap().in_sync, "a device that lost its member does not say it is in sync");
    // The removal itself closed the connection: no session of the device's had to be refused.
    assert_eq!(server.status().unwrap().sessions_failed, failed_before);
    lost.put("after", "2", PutOptions::default()).await.unwrap();
    lost.shutdown().await;
    drop(lost);
    // Its next sync is refused, with the reason, and its write reached no one.
    match sync(&dd, &[addr(&server)]).await {
        Err(SyncOnceError::Refused { reason, .. }) => {
            assert!(reason.contains("not trusted") || reason.contains("removed"), "{reason}")
        }
        other => panic!("expected a refusal, got {other:?}"),
    }
    assert_eq!(value(&server, "after"), None);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_enrolled_at_one_member_syncs_with_the_other() {
    let tmp = tempfile::tempdir().unwrap();
    let (ad, _) = dir(tmp.path(), "a");
    let (bd, b_id) = dir(tmp.path(), "b");
    let (dd, phone_id) = dir(tmp.path(), "phone");
    // A mesh of two: a trusts b, b dials a.
    let a = quick(NodeConfig::new(ad.clone(), listen()).with_trust(b_id)).start().await.unwrap();
    let b = quick(NodeConfig::new(bd.clone(), listen()).with_peer(addr(&a))).start().await.unwrap();
    until("a and b are connected", || a.status().unwrap().connected.len() == 1).await;

    a.enrol_device(phone_id, Some("phone".into())).unwrap();
    a.put("from-a", "1", PutOptions::default()).await.unwrap();
    // b learns the enrolment (engine records) and the node id (a's directory).
    until("b knows the phone by node id", || {
        b.devices().first().is_some_and(|d| d.node_id.as_deref() == Some(phone_id.to_string().as_str()))
    })
    .await;
    assert_eq!(b.devices()[0].name.as_deref(), Some("phone"));
    until("b holds a's write", || value(&b, "from-a").is_some()).await;
    let report = sync(&dd, &[addr(&b)]).await.unwrap();
    assert_eq!(report.server, b.id().to_string());
    assert_eq!(report.live_received, 1);
    // The phone's write, uploaded to b, reaches a.
    let phone = device(&dd, addr(&b)).await;
    phone.put("from-phone", "2", PutOptions::default()).await.unwrap();
    until("the phone's write reaches a through b", || value(&a, "from-phone").is_some()).await;
    // Removed at b: a drops it too, once the records reach it.
    b.remove_device(phone_id).unwrap();
    until("a no longer has the phone enrolled", || a.devices().is_empty()).await;
    phone.shutdown().await;
    drop(phone);
    assert!(matches!(sync(&dd, &[addr(&a)]).await, Err(SyncOnceError::Refused { .. })));
    a.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_reports_its_figures_and_a_fresh_device_gets_no_tombstone() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (writer_dir, writer_id) = dir(tmp.path(), "writer");
    let (offline_dir, offline_id) = dir(tmp.path(), "offline");
    let (fresh_dir, fresh_id) = dir(tmp.path(), "fresh");
    let server = member(&md).await;
    for id in [writer_id, offline_id, fresh_id] {
        server.enrol_device(id, None).unwrap();
    }
    // The offline device syncs once, so it counts and holds collection back.
    sync(&offline_dir, &[addr(&server)]).await.unwrap();
    let writer = device(&writer_dir, addr(&server)).await;
    for i in 0..50 {
        writer.put(format!("k{i:02}"), "v", PutOptions::default()).await.unwrap();
    }
    until("the writes arrive", || server.status().unwrap().live == 50).await;
    for i in 0..40 {
        writer.delete(format!("k{i:02}")).await.unwrap();
    }
    until("the deletes arrive", || server.status().unwrap().live == 10).await;
    // The writer's last acknowledgement (which covers its deletes) lands before it stops.
    until("the writer's queue is empty", || writer.status().unwrap().pending_uploads == 0).await;
    quiet(&server).await;
    writer.shutdown().await;
    assert!(server.status().unwrap().tombstones > 0, "the offline device holds the tombstones back");

    let report = sync(&fresh_dir, &[addr(&server)]).await.unwrap();
    // The one-shot sync's acknowledgement reached the member before it closed.
    let fresh = fresh_id.replica_id().to_string();
    let acked = server.devices().into_iter().find(|d| d.replica == fresh).and_then(|d| d.acked);
    assert_eq!(acked, Some(server.status().unwrap().vector), "the fresh device acknowledged what it received");
    assert_eq!(report.live_received, 10);
    assert_eq!(report.tombstones_received, 0, "a fresh device's bootstrap carries no dead record");
    assert_eq!(report.uploaded, 0);
    assert!(report.wire_bytes > 0 && report.round_trips >= 1, "{report:?}");
    assert!(server.status().unwrap().tombstones > 0);
    // Removing the offline device releases collection at once: the tombstones go within a few
    // GC steps.
    server.remove_device(offline_id).unwrap();
    until("the tombstones are collected", || server.status().unwrap().tombstones == 0).await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_events_say_connected_uploaded_in_sync_then_refused_after_removal() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, phone_id) = dir(tmp.path(), "phone");
    let server = member(&md).await;
    server.enrol_device(phone_id, None).unwrap();
    for i in 0..20 {
        server.put(format!("s{i}"), vec![7u8; 100], PutOptions::default()).await.unwrap();
    }
    let phone = device(&dd, addr(&server)).await;
    let mut events = phone.sync_events();
    let mut seen = Vec::new();
    let mut next = async || tokio::time::timeout(DEADLINE, events.recv()).await.unwrap().unwrap();
    // The first session bootstraps the 20 entries.
    loop {
        let e = next().await;
        let done = matches!(e, SyncEvent::InSync { .. });
        seen.push(e);
        if done {
            break;
        }
    }
    assert!(matches!(seen.first(), Some(SyncEvent::Connected { .. })), "connected comes first: {seen:?}");
    assert!(seen.iter().any(|e| matches!(e, SyncEvent::Progress { entries: 20, .. })), "{seen:?}");
    // The estimate, once the member's news arrived, is its live count.
    assert!(
        seen.iter().all(|e| !matches!(e, SyncEvent::Progress { total_entries: Some(t), .. } if *t != 20)),
        "{seen:?}"
    );
    phone.put("p", "1", PutOptions::default()).await.unwrap();
    loop {
        if let SyncEvent::Uploaded { count: 1, admitted: 1 } = next().await {
            break;
        }
    }
    server.remove_device(phone_id).unwrap();
    loop {
        match next().await {
            SyncEvent::Refused { .. } => break,
            SyncEvent::Disconnected { reason, .. } if reason.contains("removed") => break,
            _ => {}
        }
    }
    phone.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_silent_past_the_device_lease_stops_holding_collection_back() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (writer_dir, writer_id) = dir(tmp.path(), "writer");
    let (offline_dir, offline_id) = dir(tmp.path(), "offline");
    let clock = lethe_engine::ManualClock::new(1_700_000_000_000);
    let lease = Duration::from_secs(600);
    let config = quick(NodeConfig::new(md.clone(), listen())).with_clock(std::sync::Arc::new(clock.clone()));
    let server = config.with_device_lease(lease).start().await.unwrap();
    server.enrol_device(writer_id, None).unwrap();
    server.enrol_device(offline_id, None).unwrap();
    let device_clock = NodeClock(std::sync::Arc::new(clock.clone()));
    sync_once(&offline_dir, &[addr(&server)], device_clock.clone()).await.unwrap();
    let writer = quick(NodeConfig::new(writer_dir.clone(), listen()).with_server(addr(&server)))
        .with_clock(std::sync::Arc::new(clock.clone()))
        .start()
        .await
        .unwrap();
    writer.put("k", "v", PutOptions::default()).await.unwrap();
    writer.delete("k").await.unwrap();
    until("the delete arrives", || server.status().unwrap().tombstones == 1).await;
    until("the offline device holds collection back", || {
        server.devices().iter().any(|d| d.replica == offline_id.replica_id().to_string() && d.holds_collection_back)
    })
    .await;
    // Within the lease the tombstone stays, whatever the GC does.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(server.status().unwrap().tombstones, 1);
    // Past it, the silent device stops counting and the tombstone goes (the writer, connected,
    // acknowledges again as the member tells it of news).
    clock.advance(lease.as_millis() as u64 + 1_000);
    writer.put("nudge", "1", PutOptions::default()).await.unwrap();
    until("the silent device no longer holds collection back", || {
        server.devices().iter().all(|d| d.replica != offline_id.replica_id().to_string() || !d.holds_collection_back)
    })
    .await;
    until("the tombstone is collected", || server.status().unwrap().tombstones == 0).await;
    writer.shutdown().await;
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_sending_garbage_is_cut_off_and_the_member_serves_the_others() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let hostile_dir = DataDir::new(tmp.path().join("hostile"));
    let hostile = hostile_dir.init().unwrap();
    let (dd, phone_id) = dir(tmp.path(), "phone");
    let server = member(&md).await;
    server.enrol_device(hostile.id(), None).unwrap();
    server.enrol_device(phone_id, None).unwrap();
    server.put("k", "v", PutOptions::default()).await.unwrap();
    let before = server.status().unwrap();

    let endpoint = lethe_transport::Endpoint::bind(listen(), hostile, lethe_transport::TrustList::default()).unwrap();
    let conn = endpoint.connect(server.local_addr(), server.id()).await.unwrap();
    let (mut w, _r) = conn.open().await.unwrap();
    w.send(&[3]).await.unwrap();
    w.send(b"\xff\x00not a device hello").await.unwrap();
    w.flush().await.unwrap();
    let reason = tokio::time::timeout(DEADLINE, conn.conn.closed()).await.unwrap();
    assert!(
        matches!(&reason, lethe_transport::endpoint::ConnectionError::ApplicationClosed(c)
            if c.error_code.into_inner() == lethe_transport::CloseCode::Malformed as u64),
        "{reason}"
    );
    let after = server.status().unwrap();
    assert_eq!((after.live, &after.vector), (before.live, &before.vector), "nothing of it changed the member");
    // Everyone else is served as before.
    let report = sync(&dd, &[addr(&server)]).await.unwrap();
    assert_eq!(report.live_received, 1);
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_moves_to_its_next_server_when_one_goes_away() {
    let tmp = tempfile::tempdir().unwrap();
    let (ad, _) = dir(tmp.path(), "a");
    let (bd, b_id) = dir(tmp.path(), "b");
    let (dd, phone_id) = dir(tmp.path(), "phone");
    let a = quick(NodeConfig::new(ad.clone(), listen()).with_trust(b_id)).start().await.unwrap();
    let b = quick(NodeConfig::new(bd.clone(), listen()).with_peer(addr(&a))).start().await.unwrap();
    a.enrol_device(phone_id, None).unwrap();
    until("b lets the phone in", || b.devices().first().is_some_and(|d| d.node_id.is_some())).await;
    let phone =
        quick(NodeConfig::new(dd.clone(), listen()).with_server(addr(&a)).with_server(addr(&b))).start().await.unwrap();
    a.put("from-a", "1", PutOptions::default()).await.unwrap();
    until("a's write reaches the phone", || value(&phone, "from-a").is_some()).await;
    assert_eq!(phone.status().unwrap().server, Some(a.id().to_string()));
    a.shutdown().await;
    until("the phone is on b", || phone.status().unwrap().server == Some(b.id().to_string())).await;
    b.put("from-b", "2", PutOptions::default()).await.unwrap();
    until("b's write reaches the phone", || value(&phone, "from-b").is_some()).await;
    phone.put("from-phone", "3", PutOptions::default()).await.unwrap();
    until("the phone's write reaches b", || value(&b, "from-phone").is_some()).await;
    phone.shutdown().await;
    b.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_once_with_progress_reports_what_arrived_as_it_arrives() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (fresh_dir, fresh_id) = dir(tmp.path(), "fresh");
    let server = member(&md).await;
    server.enrol_device(fresh_id, None).unwrap();
    for i in 0..3000 {
        server.put(format!("k{i:04}"), "a value of some length", PutOptions::default()).await.unwrap();
    }
    let mut calls = Vec::new();
    let report = lethe_node::sync_once_with_progress(&fresh_dir, &[addr(&server)], NodeClock::default(), &mut |s| {
        calls.push(s.download.live_received);
    })
    .await
    .unwrap();
    assert_eq!(report.live_received, 3000);
    assert!(calls.len() > 1, "called as frames arrive, not once: {calls:?}");
    assert!(calls.windows(2).all(|w| w[0] <= w[1]), "figures only grow: {calls:?}");
    assert_eq!(calls.last().copied(), Some(3000), "the last call has the whole download");
}
