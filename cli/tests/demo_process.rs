//! `lethe demo` as users run it: a real process; nodes on real redb files in a temporary
//! directory, talking QUIC on 127.0.0.1.

use std::process::Command;

fn row(stdout: &str, name: &str) -> Vec<u64> {
    let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row {name}: {stdout}"));
    line[name.len()..].split_whitespace().map(|n| n.parse().unwrap()).collect()
}

#[test]
fn demo_converges_forgets_deletes_and_expiry_sends_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["demo", "--keys", "3000", "--deleted", "2000", "--ttl-keys", "200", "--ttl-ms", "300"])
        .output()
        .expect("run lethe demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lethe demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("converged: yes (1000 live keys"), "{stdout}");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("readable by other users"),
        "the demo's own new directories were reported as open: {stderr}"
    );
    // live, tombstones, bytes, round trips.
    assert_eq!(&row(&stdout, "after the deletes and TTL writes")[..2], &[200, 2000]);
    assert_eq!(row(&stdout, "while the TTL passed and GC ran"), vec![0, 0, 0, 0], "expiry sent nothing");
    let fresh = row(&stdout, "lethe (client-b, QUIC)");
    assert_eq!(&fresh[..2], &[1000, 0], "a fresh node gets live entries only");
    let replay = row(&stdout, "commit-log replay (atServer 2024 model)");
    assert_eq!(&replay[..2], &[1000, 2200], "the replay carries every delete and expiry");
    assert!(replay[2] > fresh[2], "the replay costs more bytes: {stdout}");
    assert!(stdout.contains("tombstones and expired records 2200 -> 0 on every node"), "{stdout}");
}

#[test]
fn demo_refuses_more_deletes_than_keys() {
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["demo", "--keys", "10", "--deleted", "11"])
        .output()
        .expect("run lethe demo");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--deleted (11) cannot exceed --keys (10)"));
}
