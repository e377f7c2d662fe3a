//! A member's device side under a hostile review (review 13): what only the crate's insides can
//! set up (the engine's device records changed with no trust refresh, as a Records merge in a
//! member session that fails does).

use crate::device_directory::DeviceDirectory;
use crate::node::lock;
use crate::{DataDir, Node, NodeConfig, PeerAddr};
use lethe_engine::PutOptions;
use lethe_transport::NodeId;
use std::time::{Duration, Instant};

fn listen() -> std::net::SocketAddr {
    std::net::SocketAddr::from(([127, 0, 0, 1], 0))
}

fn quick(c: NodeConfig) -> NodeConfig {
    NodeConfig {
        gc_interval: Duration::from_millis(100),
        anti_entropy_interval: Duration::from_secs(3600),
        reconnect_max: Duration::from_millis(300),
        ..c
    }
}

fn addr(n: &Node) -> PeerAddr {
    PeerAddr { id: n.id(), addr: n.local_addr() }
}

/// The engine has the device revoked (a Records merge from another member in a session that then
/// failed, so no trust refresh ran), but the trust list still holds its key: that key, run as a
/// member node, must be refused, never served as a member peer, and its writes never applied.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revoked_but_still_trusted_device_is_not_served_as_a_member() {
    let tmp = tempfile::tempdir().unwrap();
    let md = DataDir::new(tmp.path().join("server"));
    md.init().unwrap();
    let dd = DataDir::new(tmp.path().join("dev"));
    let dev_id = dd.init().unwrap().id();
    let server = quick(NodeConfig::new(md.clone(), listen())).start().await.unwrap();
    server.enrol_device(dev_id, None).unwrap();
    // What a Records merge from another member does to the engine (no trust refresh).
    server.inner.with_replica(|r| r.remove_device(dev_id.replica_id())).unwrap();
    assert!(server.inner.endpoint.trust().contains(&dev_id), "still trusted");
    // The stolen key, run as a member with the server as its peer.
    let hostile = quick(NodeConfig::new(dd.clone(), listen()).with_peer(addr(&server))).start().await.unwrap();
    hostile.put("evil", "x", PutOptions::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        assert!(
            server.get(b"evil").unwrap().is_none(),
            "a revoked device's write was applied by the member through a member session"
        );
        assert!(
            !server.inner.with_replica(|r| r.membership().is_enrolled(dev_id.replica_id())),
            "a revoked device's key became a member"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A member's shared directory (a compromised member's, say) can add an entry only for a device
/// the engine has enrolled: an entry for any other replica id is not kept, trusted or shared on
/// (until the records enrol it here); an entry whose device the engine revoked is pruned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shared_directory_adds_only_enrolled_devices_and_revoked_ones_are_pruned() {
    let tmp = tempfile::tempdir().unwrap();
    let md = DataDir::new(tmp.path().join("server"));
    md.init().unwrap();
    let server = quick(NodeConfig::new(md.clone(), listen())).start().await.unwrap();
    let (phone, junk, later) = (NodeId([1; 32]), NodeId([2; 32]), NodeId([3; 32]));
    // The phone was enrolled at another member; the records reached this one.
    server.inner.with_replica(|r| r.enrol_device(phone.replica_id())).unwrap();
    let mut theirs = DeviceDirectory::default();
    for n in [phone, junk, later] {
        theirs.enrol(n, Some(format!("device {}", n.0[0]))).unwrap();
    }
    for f in theirs.frames_since(None).0 {
        crate::device_service::take_shared_frame(&server.inner, &f).unwrap();
    }
    crate::device_service::refresh_trust(&server.inner);
    let known = |n: NodeId| lock(&server.inner.devices.directory).get(n.replica_id()).is_some();
    assert!(known(phone), "the enrolled device's entry was taken");
    assert!(server.inner.endpoint.trust().contains(&phone));
    assert!(!known(junk), "an entry for a replica id that is no device here was kept");
    assert!(!known(later));
    let (frames, _) = lock(&server.inner.devices.directory).frames_since(None);
    assert!(frames.iter().all(|f| !holds(f, &junk.0)), "the junk entry would be shared on");
    // The records enrol `later` here afterwards: its entry, shared before, is taken then.
    server.inner.with_replica(|r| r.enrol_device(later.replica_id())).unwrap();
    crate::device_service::refresh_trust_if_changed(&server.inner);
    assert!(known(later), "an entry shared before the records arrived was lost");
    assert!(server.inner.endpoint.trust().contains(&later));
    // A removal at another member reaches this one: the entry goes, from memory and disk.
    server.inner.with_replica(|r| r.remove_device(phone.replica_id())).unwrap();
    crate::device_service::refresh_trust_if_changed(&server.inner);
    assert!(!known(phone), "a revoked device's entry was kept");
    assert!(!server.inner.endpoint.trust().contains(&phone));
    let stored = lock(&server.inner.devices.directory).stored_nodes();
    assert!(!stored.contains(&phone) && stored.contains(&later), "the file holds {stored:?}");
}

fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// `device list` pages: a page is built from the devices after the cursor, at most `limit` of
/// them (not every device's `DeviceInfo` each page), in replica id order, the pages together
/// every device once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn device_infos_pages_in_replica_order_from_the_cursor() {
    let tmp = tempfile::tempdir().unwrap();
    let md = DataDir::new(tmp.path().join("server"));
    md.init().unwrap();
    let server = quick(NodeConfig::new(md.clone(), listen())).start().await.unwrap();
    for b in 1..=7u8 {
        server.inner.with_replica(|r| r.enrol_device(NodeId([b; 32]).replica_id())).unwrap();
    }
    let all = server.inner.device_infos(None, usize::MAX);
    assert_eq!(all.len(), 7);
    let mut paged = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = server.inner.device_infos(after.as_deref(), 3);
        assert!(page.len() <= 3);
        let Some(last) = page.last() else { break };
        after = Some(last.replica.clone());
        paged.extend(page);
    }
    assert_eq!(paged, all);
    assert_eq!(server.inner.device_infos(Some(&all[3].replica), 2), all[4..6].to_vec());
    // A cursor that is no replica id still pages by its text, as before.
    assert_eq!(server.inner.device_infos(Some("0"), 100), all);
    assert!(server.inner.device_infos(Some("g"), 100).is_empty());
}
