//! `lethe bench devices` (a real `lethe` process): the device tier's figures in its JSON report
//! meet the goals of docs/design.md §8 at a small scale (the full-scale run is in BENCHMARKS.md).

use lethe_tests::cluster::lethe_bin;
use std::process::Command;

#[test]
fn bench_devices_reports_the_device_tier_figures_within_their_goals() {
    let out = Command::new(lethe_bin())
        .args([
            "bench",
            "devices",
            "--devices",
            "300",
            "--members",
            "3",
            "--live",
            "300",
            "--deleted",
            "3000",
            "--json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let r: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let n = |k: &str| r[k].as_u64().unwrap_or_else(|| panic!("{k} in {r}"));
    assert!(n("idle_session_bytes") > 0 && n("idle_session_bytes") <= 1024, "{r}");
    assert!(n("idle_member_session_bytes") > 0 && n("idle_member_session_bytes") <= 4096, "{r}");
    assert_eq!(r["fresh_bootstrap"]["tombstones_received"], 0, "{r}");
    assert_eq!(r["fresh_bootstrap"]["live_received"], r["no_history_bootstrap"]["live_received"], "{r}");
    assert!(r["fresh_over_no_history_percent"].as_f64().unwrap().abs() <= 2.0, "{r}");
    assert_eq!(n("tombstones_pending"), 3000, "the offline device holds them back: {r}");
    assert_eq!(n("tombstones_after_remove"), 0, "{r}");
}

#[test]
fn bench_devices_refuses_a_run_it_cannot_make() {
    let out = Command::new(lethe_bin()).args(["bench", "devices", "--devices", "1"]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--devices must be at least 2"));
}
