//! Runs the deterministic simulation for many seeds, or one seed verbosely.
//!
//! `cargo run --release -p lethe-tests --bin lethe-sim -- --seeds 100000 [--from 0] [--steps 300]`
//! `cargo run --release -p lethe-tests --bin lethe-sim -- --seed 42 --verbose`
//! `--devices N`: at most N devices per run (default 20); `--devices 0`: the member-only run.
//! `--restores`: members are also backed up and restored from those older copies while devices
//! hold their later dots (off by default: such runs still fail, see `sim/devices.rs`).

use lethe_tests::sim::{SimConfig, run_seed};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |name: &str| -> Option<u64> {
        args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).and_then(|v| v.parse().ok())
    };
    let verbose = args.iter().any(|a| a == "--verbose");
    let steps = value("--steps").unwrap_or(300) as usize;
    let devices_max = value("--devices").map_or(lethe_tests::sim::DEVICES_MAX_DEFAULT, |n| n as usize);
    let restores = args.iter().any(|a| a == "--restores");
    let config = SimConfig { steps, verbose, devices_max, restores };
    let seeds: Vec<u64> = match value("--seed") {
        Some(seed) => vec![seed],
        None => {
            let from = value("--from").unwrap_or(0);
            (from..from + value("--seeds").unwrap_or(1000)).collect()
        }
    };
    let mut failed = 0;
    let mut total = lethe_tests::sim::SimReport::default();
    let started = std::time::Instant::now();
    for &seed in &seeds {
        match run_seed(seed, config.clone()) {
            Ok(report) => {
                if verbose {
                    println!("seed {seed}: ok {report:?}");
                }
                total.writes += report.writes;
                total.sessions_finished += report.sessions_finished;
                total.sessions_aborted += report.sessions_aborted;
                total.collected += report.collected;
                total.drift_rejections += report.drift_rejections;
                total.exception_wins += report.exception_wins;
                total.sketches.0 += report.sketches.0;
                total.sketches.1 += report.sketches.1;
                total.clock_refusals += report.clock_refusals;
                total.devices += report.devices;
                total.device_sessions += report.device_sessions;
                total.device_sessions_aborted += report.device_sessions_aborted;
                total.uploads += report.uploads;
                total.fresh_bootstraps += report.fresh_bootstraps;
                total.forged_refused += report.forged_refused;
                total.records_forged += report.records_forged;
            }
            Err(v) => {
                failed += 1;
                println!("seed {seed}: {v}");
                println!(
                    "  replay: cargo run --release -p lethe-tests --bin lethe-sim -- --seed {seed} --steps {steps} \
                     --devices {devices_max}{} --verbose",
                    if restores { " --restores" } else { "" }
                );
            }
        }
    }
    println!(
        "passing seeds in all: {} writes, {} sessions finished, {} ended early, {} tombstones collected, \
         {} batches refused for clock drift, {} keys live by the documented exception, \
         {} anti-entropy sketches decoded and {} fell back to ranges, \
         {} local writes refused with the clock ahead of peers",
        total.writes,
        total.sessions_finished,
        total.sessions_aborted,
        total.collected,
        total.drift_rejections,
        total.exception_wins,
        total.sketches.0,
        total.sketches.1,
        total.clock_refusals
    );
    println!(
        "devices: {} in all, {} device sessions finished, {} ended early, {} uploads admitted, \
         {} fresh device bootstraps, {} forged frames refused, {} forged member records ignored",
        total.devices,
        total.device_sessions,
        total.device_sessions_aborted,
        total.uploads,
        total.fresh_bootstraps,
        total.forged_refused,
        total.records_forged
    );
    println!("{} seeds, {} failed, {:.1} s", seeds.len(), failed, started.elapsed().as_secs_f64());
    if failed > 0 {
        std::process::exit(1);
    }
}
