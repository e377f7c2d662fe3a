//! `lethe bench bootstrap` as users run it: a real process, nodes and model servers over QUIC on
//! 127.0.0.1, JSON out.

use std::process::Command;

fn bench(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["bench", "bootstrap", "--json"])
        .args(args)
        .output()
        .expect("run lethe bench");
    assert!(out.status.success(), "lethe bench failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn bootstrap_bench_reports_every_system_and_lethe_sends_no_collected_tombstone() {
    let r = bench(&["--live", "200", "--deleted", "2000", "--expired", "100"]);
    assert_eq!(r["live_bytes"], 200 * (24 + 100));
    assert!(r.get("automerge").is_none(), "only when asked");
    for system in ["lethe", "commitlog_replay", "skip_deletes_until"] {
        for field in [
            "wire_bytes",
            "raw_bytes",
            "udp_bytes",
            "round_trips",
            "seconds",
            "tombstones_received",
            "server_cpu_seconds",
            "client_cpu_seconds",
        ] {
            assert!(r[system][field].is_number(), "{system}.{field} missing: {r}");
        }
        assert_eq!(r[system]["entries_received"], 200, "{system}: {r}");
        // Each client runs in a process of its own: a runtime, QUIC and a store take megabytes.
        let peak = r[system]["client_peak_bytes"].as_u64().unwrap();
        assert!(peak > 1 << 20 && peak < 1 << 30, "{system}: client peak {peak} bytes: {r}");
    }
    assert_eq!(r["lethe"]["tombstones_received"], 0);
    assert_eq!(r["commitlog_replay"]["tombstones_received"], 2100, "every delete and expiry is replayed");
    assert_eq!(r["skip_deletes_until"]["tombstones_received"], 1, "all but the latest are skipped");
    let bytes = |s: &str| r[s]["wire_bytes"].as_u64().unwrap();
    assert!(bytes("lethe") < bytes("skip_deletes_until") && bytes("skip_deletes_until") < bytes("commitlog_replay"));
    // lethe's frames cross compressed; the models are served as they ship, uncompressed.
    let raw = |s: &str| r[s]["raw_bytes"].as_u64().unwrap();
    assert!(bytes("lethe") < raw("lethe"), "{r}");
    assert!(raw("lethe") >= r["live_bytes"].as_u64().unwrap(), "raw bytes carry every live byte: {r}");
    assert_eq!(raw("commitlog_replay"), bytes("commitlog_replay"));
}

#[test]
fn without_gc_uncollected_tombstones_travel_as_compact_records() {
    let r = bench(&["--live", "100", "--deleted", "300", "--no-gc"]);
    assert_eq!(r["lethe"]["tombstones_received"], 300);
    assert_eq!(r["lethe"]["entries_received"], 100);
}

#[test]
fn automerge_syncs_the_same_history_and_unknown_systems_are_refused() {
    let r = bench(&["--live", "100", "--deleted", "300", "--expired", "10", "--with", "automerge"]);
    assert_eq!(r["automerge"]["entries_received"], 100, "{r}");
    assert_eq!(r["automerge"]["tombstones_received"], 310, "Automerge sends the whole history: {r}");
    assert!(r["automerge"]["wire_bytes"].as_u64().unwrap() > r["lethe"]["wire_bytes"].as_u64().unwrap());
    assert!(r["automerge"]["client_peak_bytes"].as_u64().unwrap() > 1 << 20, "{r}");
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["bench", "bootstrap", "--live", "10", "--with", "riak"])
        .output()
        .expect("run lethe bench");
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("the only other system known is `automerge`"));
}

fn bench_json(args: &[&str]) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_lethe")).arg("bench").args(args).arg("--json").output().expect("run");
    assert!(out.status.success(), "lethe bench {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn incremental_bench_sends_only_the_differences_on_both_paths() {
    let r = bench_json(&["incremental", "--keys", "5000", "--diffs", "10"]);
    assert_eq!(r["delta"]["entries_sent"], 10, "{r}");
    assert_eq!(r["delta"]["round_trips"], 2, "{r}");
    let reconcile = r["reconcile"]["entries_sent"].as_u64().unwrap();
    assert!((10..=20).contains(&reconcile), "reconcile sent {reconcile} entries: {r}");
    assert!(r["reconcile"]["round_trips"].as_u64().unwrap() <= 2 + 4, "{r}");
}

#[test]
fn gc_bench_shows_tombstones_gone_everywhere() {
    let r = bench_json(&["gc", "--replicas", "4", "--deleted", "500"]);
    for i in 0..4 {
        assert_eq!(r["before"][i]["tombstones"], 500, "{r}");
        assert_eq!(r["after"][i]["tombstones"], 0, "{r}");
    }
}

#[test]
fn write_bench_reports_all_three_rates() {
    let r = bench_json(&["write", "--ops", "300", "--writers", "8"]);
    for field in ["node_puts_per_sec", "raw_redb_single_per_sec", "raw_redb_batched_per_sec"] {
        assert!(r[field].as_f64().unwrap() > 0.0, "{field}: {r}");
    }
}

#[test]
fn plot_draws_bytes_and_seconds_from_reports() {
    let dir = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for deleted in ["0", "500"] {
        let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
            .args(["bench", "bootstrap", "--json", "--live", "50", "--deleted", deleted])
            .output()
            .expect("run lethe bench");
        assert!(out.status.success());
        let file = dir.path().join(format!("d{deleted}.json"));
        std::fs::write(&file, &out.stdout).unwrap();
        files.push(file);
    }
    let out = Command::new(env!("CARGO_BIN_EXE_lethe"))
        .args(["bench", "plot", "--out"])
        .arg(dir.path().join("plots"))
        .args(&files)
        .output()
        .expect("run lethe bench plot");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for chart in ["bytes.svg", "seconds.svg"] {
        let svg = std::fs::read_to_string(dir.path().join("plots").join(chart)).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("commit-log replay (model)"), "{chart}");
    }
}
