//! A watcher ([`Node::subscribe`]) that stops reading: its queue is bounded in bytes as well as
//! in changes, and holds only the changes under its prefix; once it has fallen behind it is told
//! how many changes it lost, then gets the changes after. A real node on redb.

use lethe_engine::{Change, PutOptions, WriteBatch};
use lethe_node::node::SubscriptionError;
use lethe_node::{DataDir, Node, NodeConfig, Subscription};
use std::time::Duration;

/// The largest value a node takes by default (1 MiB).
const VALUE_BYTES: usize = 1 << 20;
/// Puts of such values: 20 MiB, more than a watcher's queue holds in bytes, far fewer than the
/// changes it holds.
const BIG_PUTS: usize = 20;

async fn start(tmp: &tempfile::TempDir) -> Node {
    let dir = DataDir::new(tmp.path().join("a"));
    dir.init().unwrap();
    NodeConfig::new(dir, "127.0.0.1:0".parse().unwrap()).start().await.unwrap()
}

async fn next(sub: &mut Subscription) -> Result<Change, SubscriptionError> {
    tokio::time::timeout(Duration::from_secs(30), sub.next()).await.expect("a change or an error")
}

fn key_of(change: &Change) -> String {
    String::from_utf8(change.key().to_vec()).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_watcher_of_large_values_lags_by_bytes_and_resumes_with_what_came_after() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp).await;
    let mut paused = node.subscribe("big:");
    for i in 0..BIG_PUTS {
        node.put(format!("big:{i:02}"), vec![i as u8; VALUE_BYTES], PutOptions::default()).await.unwrap();
    }
    // Without a bound in bytes the watcher would hold all 20 MiB and lag not at all.
    let dropped = match next(&mut paused).await {
        Err(SubscriptionError::Lagged(n)) => n as usize,
        other => panic!("a watcher 20 MiB behind was not told it lagged: {:?}", other.map(|c| key_of(&c))),
    };
    assert!(dropped > 0 && dropped < BIG_PUTS, "dropped {dropped} of {BIG_PUTS}");
    let err = SubscriptionError::Lagged(dropped as u64).to_string();
    assert!(err.contains(&format!("{dropped} changes dropped")) && err.contains("re-list"), "{err}");
    // Then the changes committed after the drop, in order, and nothing twice.
    for i in dropped..BIG_PUTS {
        let change = next(&mut paused).await.unwrap();
        assert_eq!(key_of(&change), format!("big:{i:02}"));
    }
    node.put("big:after", "v", PutOptions::default()).await.unwrap();
    assert_eq!(key_of(&next(&mut paused).await.unwrap()), "big:after");
    node.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_under_another_prefix_do_not_make_a_paused_watcher_lag() {
    let tmp = tempfile::tempdir().unwrap();
    let node = start(&tmp).await;
    let mut paused = node.subscribe("user:");
    // More changes elsewhere than a watcher's queue holds (4,096).
    for chunk in 0..5 {
        let mut batch = WriteBatch::new();
        for i in 0..1000 {
            batch.put(format!("other:{chunk}-{i:04}"), "v", PutOptions::default());
        }
        node.write_batch(batch).unwrap();
    }
    node.put("user:alice", "hello", PutOptions::default()).await.unwrap();
    let change = next(&mut paused).await.expect("the change under the watcher's prefix, not a lag");
    assert_eq!(key_of(&change), "user:alice");
    node.shutdown().await;
}
