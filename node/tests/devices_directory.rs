//! The device directory in redb (`directory_file.rs`) facing damaged files: an emptied or
//! garbage `devices.redb` is refused as damaged, never taken for an empty directory. Real redb files in
//! temporary directories, a real node.

use lethe_node::NodeConfig;
use std::path::Path;

mod common;
use common::{dir, listen};

/// Enrols a device on a fresh member, stops it, lets `damage` do its worst to `devices.redb`,
/// and starts the member again: what it says of the device (its node id, if it knows it), or
/// the start's error.
async fn restart_after(damage: impl FnOnce(&Path)) -> Result<Option<String>, String> {
    let tmp = tempfile::tempdir().unwrap();
    let (md, _) = dir(tmp.path(), "server");
    let (_, dev) = dir(tmp.path(), "phone");
    let node = NodeConfig::new(md.clone(), listen()).start().await.unwrap();
    node.enrol_device(dev, Some("phone".into())).unwrap();
    assert_eq!(node.devices()[0].node_id, Some(dev.to_string()));
    node.shutdown().await;
    drop(node);
    let file = md.path().join("devices.redb");
    assert!(file.exists());
    // The stopped node's tasks let its files go a moment after `shutdown` returns.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    for f in ["devices.redb", "store.redb"] {
        while let Err(e) = redb::Database::open(md.path().join(f)) {
            assert!(std::time::Instant::now() < deadline, "{f} never let go: {e}");
            tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        }
    }
    damage(&file);
    match NodeConfig::new(md, listen()).start().await {
        Ok(node) => {
            let known = node.devices().first().and_then(|d| d.node_id.clone());
            node.shutdown().await;
            Ok(known)
        }
        Err(e) => Err(e.to_string()),
    }
}

/// A `devices.redb` emptied (truncated to 0 bytes: a crash on a filesystem that lost the
/// file's data, a full disk, an operator's mistake) is taken as a new, empty directory: the
/// member starts without a word, no longer knows any enrolled device's node id, and so refuses
/// every device (the engine still has them enrolled). The `devices.cbor` this replaces was
/// refused as damaged when empty (ciborium cannot decode 0 bytes), saying where.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_emptied_devices_redb_is_refused_as_damaged_not_taken_as_an_empty_directory() {
    let got = restart_after(|f| std::fs::File::create(f).map(drop).unwrap()).await;
    println!("after truncating devices.redb to 0 bytes: {got:?}");
    match got {
        Err(e) => assert!(e.contains("devices.redb"), "{e}"),
        Ok(known) => panic!(
            "the member started with the device directory silently emptied (the device's node id now: {known:?})"
        ),
    }
}

/// A `devices.redb` whose bytes are garbage is refused with the error that says so
/// ("damaged ... restore it from a backup"), not one that asks to check room and permissions.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_devices_redb_of_garbage_is_reported_as_damaged() {
    let got = restart_after(|f| {
        let len = std::fs::metadata(f).unwrap().len() as usize;
        std::fs::write(f, vec![0x5a; len.max(4096)]).unwrap();
    })
    .await;
    println!("after overwriting devices.redb with garbage: {got:?}");
    match got {
        Err(e) => assert!(e.contains("damaged"), "refused, but not as damaged: {e}"),
        Ok(known) => panic!("the member started on a garbage directory file (the device's node id: {known:?})"),
    }
}
