//! The node's device side under a hostile review (review 13): a failed save of the device
//! directory, a wrong `--server` id. Real QUIC on 127.0.0.1, real files in temporary
//! directories; every wait is on a condition with a deadline.

use lethe_node::{NodeClock, NodeConfig, PeerAddr, SyncOnceError, sync_once};
use std::time::{Duration, Instant};

mod common;
use common::{DEADLINE, addr, dir, listen, quick};

/// A wrong NODEID in `--server` (another node on that address) is not a refusal: `sync_once`
/// says the server is not the one named and tries the next, which serves the device.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_server_id_is_reported_as_such_and_sync_once_tries_the_next() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, dev_id) = dir(tmp.path(), "dev");
    let (_, other) = dir(tmp.path(), "other");
    let server = quick(NodeConfig::new(md, listen())).start().await.unwrap();
    server.enrol_device(dev_id, None).unwrap();
    let wrong = PeerAddr { id: other, addr: server.local_addr() };
    match sync_once(&dd, &[wrong], NodeClock::default()).await {
        Err(SyncOnceError::Unreachable(why)) => {
            let said = format!("server at {} is not {other}: check the --server id", server.local_addr());
            assert!(why.contains(&said), "{why}");
        }
        other => panic!("a wrong server id gave {other:?}"),
    }
    let r = sync_once(&dd, &[wrong, addr(&server)], NodeClock::default()).await;
    assert!(r.is_ok(), "the second server would have served this device: {r:?}");
    // A member that refuses this device, then one that serves it: served.
    let (md2, _) = dir(tmp.path(), "stranger");
    let stranger = quick(NodeConfig::new(md2, listen())).start().await.unwrap();
    let r = sync_once(&dd, &[addr(&stranger), addr(&server)], NodeClock::default()).await;
    assert!(r.is_ok(), "the second server would have served this device: {r:?}");
    // Every one refuses: a refusal.
    let r = sync_once(&dd, &[addr(&stranger)], NodeClock::default()).await;
    assert!(matches!(r, Err(SyncOnceError::Refused { .. })), "{r:?}");
}

/// A device node whose first `--server` names the wrong node id at a member's address moves to
/// the next server and syncs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_node_with_a_wrong_server_id_moves_to_the_next_server() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (dd, dev_id) = dir(tmp.path(), "dev");
    let (_, other) = dir(tmp.path(), "other");
    let server = quick(NodeConfig::new(md, listen())).start().await.unwrap();
    server.enrol_device(dev_id, None).unwrap();
    let wrong = PeerAddr { id: other, addr: server.local_addr() };
    let config = quick(NodeConfig::new(dd, listen()).with_server(wrong).with_server(addr(&server)));
    let phone = config.start().await.unwrap();
    phone.put("k", "from the phone", lethe_engine::PutOptions::default()).await.unwrap();
    let deadline = Instant::now() + DEADLINE;
    while server.get(b"k").unwrap().is_none() {
        assert!(Instant::now() < deadline, "the write never reached the second server");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
