//! The node's device side under a hostile review (review 13): a failed save of the device
//! directory. Real QUIC on 127.0.0.1, real files in temporary
//! directories; every wait is on a condition with a deadline.

use lethe_node::{DataDir, Node, NodeConfig};
use lethe_transport::NodeId;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(30);

fn listen() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn dir(root: &Path, name: &str) -> (DataDir, NodeId) {
    let d = DataDir::new(root.join(name));
    let id = d.init().unwrap().id();
    (d, id)
}

fn quick(c: NodeConfig) -> NodeConfig {
    NodeConfig {
        gc_interval: Duration::from_millis(100),
        anti_entropy_interval: Duration::from_secs(3600),
        reconnect_max: Duration::from_millis(300),
        ..c
    }
}

/// Starts `config`, waiting for a node just shut down on the same data directory to let its
/// store go.
async fn restart(config: NodeConfig) -> Node {
    let deadline = Instant::now() + DEADLINE;
    loop {
        match config.clone().start().await {
            Ok(n) => return n,
            Err(_) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(50)).await,
            Err(e) => panic!("{e}"),
        }
    }
}

/// Whether `haystack` holds `needle` anywhere.
fn holds(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// A save of `devices.cbor` that fails (its temporary file cannot be made, as on a full disk)
/// fails the enrolment; the retry once the disk has room writes the entry, and after a restart
/// the device still has its node id. The same for a removal: its retry succeeds and the entry
/// leaves the file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enrol_and_remove_retried_after_a_failed_save_persist_the_directory() {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (_, dev_id) = dir(tmp.path(), "dev");
    let config = quick(NodeConfig::new(md.clone(), listen()));
    let server = config.clone().start().await.unwrap();
    let blocker = md.path().join("devices.cbor.tmp");
    let file = md.path().join("devices.cbor");
    std::fs::create_dir(&blocker).unwrap();
    assert!(server.enrol_device(dev_id, Some("phone".into())).is_err(), "the save cannot succeed");
    std::fs::remove_dir(&blocker).unwrap();
    assert!(server.enrol_device(dev_id, Some("phone".into())).unwrap(), "the retry enrols");
    assert!(holds(&std::fs::read(&file).unwrap(), &dev_id.0), "the retry wrote the entry");
    server.shutdown().await;
    drop(server);
    let server = restart(config.clone()).await;
    let devs = server.devices();
    assert_eq!(devs.len(), 1);
    assert_eq!(devs[0].node_id, Some(dev_id.to_string()), "the enrolled device kept its node id");
    assert_eq!(devs[0].name.as_deref(), Some("phone"));

    std::fs::create_dir(&blocker).unwrap();
    assert!(server.remove_device(dev_id).is_err(), "the save cannot succeed");
    std::fs::remove_dir(&blocker).unwrap();
    assert!(server.remove_device(dev_id).unwrap(), "the retry finishes the removal");
    assert!(!holds(&std::fs::read(&file).unwrap(), &dev_id.0), "the retry removed the entry from the file");
    server.shutdown().await;
    drop(server);
    let server = restart(config).await;
    assert!(server.devices().is_empty());
    assert!(!server.remove_device(dev_id).unwrap(), "nothing left to remove");
}
