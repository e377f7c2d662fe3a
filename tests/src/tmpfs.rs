//! A small tmpfs for disk-full tests (needs root, as `mount -t tmpfs` does).

use std::path::{Path, PathBuf};
use std::process::Command;

/// A tmpfs mounted at a directory, unmounted when dropped (declare it before the node on it, so
/// the node is gone first).
#[derive(Debug)]
pub struct Tmpfs(PathBuf);

impl Tmpfs {
    /// [`Tmpfs::mount`], or `None` after saying on stderr why the test is skipped; where the
    /// environment sets `CI`, a test that cannot run fails instead (a CI that skips it silently
    /// would never run it).
    pub fn mount_or_skip(dir: &Path, size: &str, test: &str) -> Option<Tmpfs> {
        match Tmpfs::mount(dir, size) {
            Ok(disk) => Some(disk),
            Err(why) if std::env::var_os("CI").is_some() => {
                panic!("{test} mounts a tmpfs ({size}) and could not: {why}; CI is set, so it must run (as root)")
            }
            Err(why) => {
                eprintln!("SKIPPED: {test} mounts a tmpfs ({size}) and could not: {why} (with CI set this fails)");
                None
            }
        }
    }

    /// Mounts a tmpfs of `size` (mount's option, like `size=3m`) at `dir`; the error says why it
    /// could not (not root, say), for the caller to skip.
    pub fn mount(dir: &Path, size: &str) -> Result<Tmpfs, String> {
        std::fs::create_dir_all(dir).map_err(|e| e.to_string())?;
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", size, "tmpfs"])
            .arg(dir)
            .output()
            .map_err(|e| format!("running mount: {e}"))?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(Tmpfs(dir.to_path_buf()))
    }

    /// Grows it to 64 MiB: the disk has room again.
    pub fn grow(&self) {
        let out = Command::new("mount").args(["-o", "remount,size=64m"]).arg(&self.0).output().expect("running mount");
        assert!(out.status.success(), "growing the tmpfs failed: {}", String::from_utf8_lossy(&out.stderr));
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.0).status();
    }
}
