//! A `LD_PRELOAD` shim for `lethe serve` processes whose wall clock a test steps: built here
//! with the system C compiler, it adds an offset in ms, read from a file the test writes (at
//! every reading, so a new offset takes effect at once), to every `CLOCK_REALTIME` reading. The
//! process sees the step as a real clock change would show, while its monotonic clock runs on.
//! Used by `tests/clock_step.rs` and `tests/metrics.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim's C source.
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

/// Builds the shim into `dir` and writes an offset file there holding 0: returns the shim and
/// the offset file (write a number of ms into it to step the clock).
pub fn build(dir: &Path) -> (PathBuf, PathBuf) {
    let (source, lib, offset) = (dir.join("clock_shim.c"), dir.join("clock_shim.so"), dir.join("clock_offset_ms"));
    std::fs::write(&source, SHIM).expect("writing the clock shim's source");
    std::fs::write(&offset, "0").expect("writing the clock offset file");
    let out = Command::new("cc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(&lib)
        .arg(&source)
        .arg("-ldl")
        .output()
        .expect("running the C compiler (cc) to build the clock shim");
    assert!(out.status.success(), "building the clock shim: {}", String::from_utf8_lossy(&out.stderr));
    (lib, offset)
}

/// The environment that runs a process under the shim `lib`, with its offset read from `offset`
/// (for [`crate::cluster::NodeProc::start_with_env`]).
pub fn env<'a>(lib: &'a Path, offset: &'a Path) -> [(&'static str, &'a Path); 2] {
    [("LD_PRELOAD", lib), ("LETHE_TEST_CLOCK_OFFSET_FILE", offset)]
}
