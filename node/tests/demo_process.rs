//! `lethe demo` as users run it: a real process, real redb files in a temporary directory.

use std::process::Command;

#[test]
fn demo_converges_and_expiry_sends_nothing() {
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["demo", "--keys", "3000", "--deleted", "2000", "--ttl-keys", "200", "--ttl-ms", "300"])
        .output()
        .expect("run lethe demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "lethe demo failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("converged: yes (1000 live keys"), "{stdout}");
    let row = |name: &str| -> Vec<u64> {
        let line = stdout.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no row {name}: {stdout}"));
        line[name.len()..].split_whitespace().map(|n| n.parse().unwrap()).collect()
    };
    // live, tombstones, bytes, round trips. After the TTL passed nothing but the handshakes
    // travels (one round trip); after GC the fresh client gets live entries only.
    let after_ttl = row("client-a, after the TTL passed");
    assert_eq!((after_ttl[0], after_ttl[1], after_ttl[3]), (0, 0, 1));
    assert_eq!(&row("client-b, fresh (after GC)")[..2], &[1000, 0]);
    assert!(stdout.contains("server tombstones 2200 -> 0"), "{stdout}");
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
