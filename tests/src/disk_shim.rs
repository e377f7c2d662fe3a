//! An `LD_PRELOAD` shim for `lethe serve` processes whose disk a test stalls or fills, without
//! privileges: built here with the system C compiler, it wraps `fsync` and `fdatasync` (how redb
//! makes a commit durable). Before each sync it looks in a directory the test names: while a file
//! `stall` is there, the sync waits (as on a hung device); while a file `full` is there, it fails
//! with `ENOSPC` ("No space left on device"), as on a full disk. Removing the file lets the next
//! sync through. Used by `tests/metrics.rs`.

use std::path::{Path, PathBuf};
use std::process::Command;

/// The shim's C source.
const SHIM: &str = r#"
#define _GNU_SOURCE
#include <dlfcn.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static int exists(const char *dir, const char *name) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return access(path, F_OK) == 0;
}

/* 0 to sync, -1 (errno set) to fail; waits while `stall` exists. */
static int gate(void) {
    const char *dir = getenv("LETHE_TEST_DISK_DIR");
    if (!dir) return 0;
    for (;;) {
        if (exists(dir, "full")) {
            errno = ENOSPC;
            return -1;
        }
        if (!exists(dir, "stall")) return 0;
        usleep(20000);
    }
}

int fsync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fsync");
    if (gate() != 0) return -1;
    return real(fd);
}

int fdatasync(int fd) {
    static int (*real)(int);
    if (!real) real = dlsym(RTLD_NEXT, "fdatasync");
    if (gate() != 0) return -1;
    return real(fd);
}
"#;

/// The shim, built into `dir`, and the directory whose `stall` and `full` files it reads.
#[derive(Debug)]
pub struct DiskShim {
    lib: PathBuf,
    control: PathBuf,
}

impl DiskShim {
    /// Builds the shim into `dir` (with `cc`), syncs passing.
    pub fn build(dir: &Path) -> DiskShim {
        let (source, lib, control) = (dir.join("disk_shim.c"), dir.join("disk_shim.so"), dir.join("disk"));
        std::fs::create_dir_all(&control).expect("creating the disk shim's control directory");
        std::fs::write(&source, SHIM).expect("writing the disk shim's source");
        let out = Command::new("cc")
            .args(["-shared", "-fPIC", "-O2", "-o"])
            .arg(&lib)
            .arg(&source)
            .arg("-ldl")
            .output()
            .expect("running the C compiler (cc) to build the disk shim");
        assert!(out.status.success(), "building the disk shim: {}", String::from_utf8_lossy(&out.stderr));
        DiskShim { lib, control }
    }

    /// The environment that runs a process under the shim (for
    /// [`crate::cluster::NodeProc::start_with_env`]).
    pub fn env(&self) -> [(&'static str, &Path); 2] {
        [("LD_PRELOAD", &self.lib), ("LETHE_TEST_DISK_DIR", &self.control)]
    }

    /// From now on every sync waits.
    pub fn stall(&self) {
        std::fs::write(self.control.join("stall"), "").expect("writing the stall file");
    }

    /// From now on every sync fails with `ENOSPC`.
    pub fn fill(&self) {
        std::fs::write(self.control.join("full"), "").expect("writing the full file");
    }

    /// From now on syncs go through again.
    pub fn free(&self) {
        for name in ["stall", "full"] {
            match std::fs::remove_file(self.control.join(name)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => panic!("removing the disk shim's {name} file: {e}"),
            }
        }
    }
}
