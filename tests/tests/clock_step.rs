//! A node's own wall clock stepping ahead and back (docs/design.md §10), with real `lethe serve`
//! processes on 127.0.0.1: the stepped node runs under an `LD_PRELOAD` shim (built here with the
//! system C compiler) that adds an offset, read from a file the test writes, to every
//! `CLOCK_REALTIME` reading, so its process sees the step as a real clock change would show,
//! while its monotonic clock runs on. Its writes during the step are refused with an error that
//! says why; once its clock is right again, it writes and syncs as before.

use lethe_tests::cluster::{NodeProc, wait_until};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static int (*real_clock_gettime)(clockid_t, struct timespec *);

static long long offset_ms(void) {
    const char *path = getenv("LETHE_TEST_CLOCK_OFFSET_FILE");
    long long ms = 0;
    FILE *f = path ? fopen(path, "r") : NULL;
    if (f) {
        if (fscanf(f, "%lld", &ms) != 1) ms = 0;
        fclose(f);
    }
    return ms;
}

int clock_gettime(clockid_t clock, struct timespec *ts) {
    if (!real_clock_gettime) real_clock_gettime = dlsym(RTLD_NEXT, "clock_gettime");
    int r = real_clock_gettime(clock, ts);
    if (r == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) {
        long long ns = (long long)ts->tv_sec * 1000000000LL + ts->tv_nsec + offset_ms() * 1000000LL;
        ts->tv_sec = ns / 1000000000LL;
        ts->tv_nsec = ns % 1000000000LL;
    }
    return r;
}
"#;

/// Builds the shim into `dir`.
fn build_shim(dir: &Path) -> PathBuf {
    let (source, lib) = (dir.join("clock_shim.c"), dir.join("clock_shim.so"));
    std::fs::write(&source, SHIM).unwrap();
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("running the C compiler (cc) to build the clock shim");
    assert!(out.status.success(), "building the clock shim: {}", String::from_utf8_lossy(&out.stderr));
    lib
}

#[test]
fn a_node_whose_clock_steps_an_hour_ahead_refuses_writes_and_syncs_again_once_it_is_set_right() {
    let root = tempfile::tempdir().unwrap();
    let shim = build_shim(root.path());
    let offset = root.path().join("offset_ms");
    std::fs::write(&offset, "0").unwrap();
    let (mut a, mut b) = (NodeProc::init(root.path(), "a"), NodeProc::init(root.path(), "b"));
    a.start(&["--trust".to_string(), b.id.to_string()]);
    b.start_with_env(
        &["--peer".to_string(), a.peer_arg()],
        &[("LD_PRELOAD", &shim), ("LETHE_TEST_CLOCK_OFFSET_FILE", &offset)],
    );
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
