//! A node's own wall clock stepping ahead and back (docs/design.md §10), with real `lethe serve`
//! processes on 127.0.0.1: the stepped node runs under an `LD_PRELOAD` shim
//! ([`lethe_tests::clock_shim`]) that adds an offset, read from a file the test writes, to every
//! `CLOCK_REALTIME` reading, so its process sees the step as a real clock change would show,
//! while its monotonic clock runs on. Its writes during the step are refused with an error that
//! says why; once its clock is right again, it writes and syncs as before.

use lethe_tests::clock_shim;
use lethe_tests::cluster::{NodeProc, wait_until};
use std::time::Duration;

#[test]
fn a_node_whose_clock_steps_an_hour_ahead_refuses_writes_and_syncs_again_once_it_is_set_right() {
    let root = tempfile::tempdir().unwrap();
    let (shim, offset) = clock_shim::build(root.path());
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&["--trust".to_string(), b.id.to_string()]);
    b.start_with_env(&["--peer".to_string(), a.peer_arg()], &clock_shim::env(&shim, &offset));
    assert_eq!(b.cli(&["put", "before", "v"]).0, 0);
    wait_until("a has b's first write", Duration::from_secs(60), || {
        let got = a.cli(&["get", "before"]);
        (got.0 == 0, got)
    });

    // b's clock steps an hour ahead: its next write is refused, and says why.
    std::fs::write(&offset, "3600000").unwrap();
    let (code, out, err) = b.cli(&["put", "during", "v"]);
    assert_ne!(code, 0, "b took a write stamped an hour ahead of its peer: {out}");
    assert!(err.contains("check the system clock"), "{err}");
    assert!(b.status().clock_ahead_ms.is_some_and(|ms| ms > 3_000_000), "{:?}", b.status().clock_ahead_ms);

    // Set right again, b writes at once and a gets it; the refused write exists nowhere.
    std::fs::write(&offset, "0").unwrap();
    assert_eq!(b.cli(&["put", "after", "v"]).0, 0, "b still refuses writes with its clock right");
    wait_until("a has b's write after the step", Duration::from_secs(60), || {
        let got = a.cli(&["get", "after"]);
        (got.0 == 0, got)
    });
    assert_ne!(a.cli(&["get", "during"]).0, 0);
    assert_ne!(b.cli(&["get", "during"]).0, 0);
    b.stop();
    a.stop();
}
