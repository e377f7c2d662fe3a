//! `bench` and `demo`: measurements and a walk-through on temporary stores.

use crate::demo::{self, DemoParams};
use crate::output::outln;
use anyhow::{Context, Result, bail};
use clap::Subcommand;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Subcommand)]
pub enum BenchCommand {
    /// A fresh client's initial sync after a history of writes, deletes and expiries.
    Bootstrap {
        /// Keys live at the end.
        #[arg(long)]
        live: usize,
        /// Keys written and then deleted.
        #[arg(long, default_value_t = 0)]
        deleted: usize,
        /// Keys written with a TTL that has passed.
        #[arg(long, default_value_t = 0)]
        expired: usize,
        /// Value size in bytes.
        #[arg(long, default_value_t = 100)]
        value_size: usize,
        /// Leave tombstones uncollected (they travel as compact records).
        #[arg(long)]
        no_gc: bool,
        /// Also measure another system: `automerge` (one map document, its sync protocol).
        #[arg(long)]
        with: Option<String>,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// One client of `bench bootstrap`, run by it in a process of its own (internal).
    #[command(hide = true)]
    Client {
        /// The job, as JSON.
        #[arg(long)]
        job: String,
    },
    /// Draw bytes and seconds against D from `bench bootstrap --json` reports (SVG).
    Plot {
        /// Directory for bytes.svg and seconds.svg.
        #[arg(long)]
        out: PathBuf,
        /// Report files, one per D.
        reports: Vec<PathBuf>,
    },
    /// Two replicas that differ by --diffs entries among --keys: the delta and the reconcile path.
    Incremental {
        /// Keys on each replica.
        #[arg(long)]
        keys: usize,
        /// Entries that differ.
        #[arg(long)]
        diffs: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// The device tier with engine sessions in one process: idle device and member sessions with
    /// --devices enrolled, a fresh device's bootstrap while another is offline and --deleted
    /// tombstones are pending, against no history, and a member's memory per device.
    Devices {
        /// Devices enrolled.
        #[arg(long, default_value_t = 10_000)]
        devices: usize,
        /// Members.
        #[arg(long, default_value_t = 3)]
        members: usize,
        /// Live keys.
        #[arg(long, default_value_t = 10_000)]
        live: u64,
        /// Keys deleted while a device is offline.
        #[arg(long, default_value_t = 100_000)]
        deleted: u64,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Tombstones and store size on each replica before and after every member acknowledges.
    Gc {
        /// Replicas.
        #[arg(long, default_value_t = 3)]
        replicas: usize,
        /// Keys written and deleted.
        #[arg(long)]
        deleted: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Durable puts per second through the node API, next to raw redb inserts of the same data.
    Write {
        /// Writes.
        #[arg(long)]
        ops: usize,
        /// Concurrent writers.
        #[arg(long, default_value_t = 64)]
        writers: usize,
        /// Print one JSON object.
        #[arg(long)]
        json: bool,
    },
}

/// `lethe demo`'s arguments.
#[derive(clap::Args)]
pub struct DemoArgs {
    /// Keys the server writes.
    #[arg(long, default_value_t = DemoParams::default().keys)]
    keys: usize,
    /// How many of them it deletes.
    #[arg(long, default_value_t = DemoParams::default().deleted)]
    deleted: usize,
    /// Keys written with a short TTL.
    #[arg(long, default_value_t = DemoParams::default().ttl_keys)]
    ttl_keys: usize,
    /// That TTL, in milliseconds.
    #[arg(long, default_value_t = DemoParams::default().ttl_ms)]
    ttl_ms: u64,
    /// Print the figures as one JSON object on stdout (the narrative goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Runs the demo.
pub fn demo(args: DemoArgs) -> Result<ExitCode> {
    let DemoArgs { keys, deleted, ttl_keys, ttl_ms, json } = args;
    run_demo(DemoParams { keys, deleted, ttl_keys, ttl_ms, narrate_to_stderr: json, ..DemoParams::default() }, json)?;
    Ok(ExitCode::SUCCESS)
}

/// Runs one benchmark.
pub fn bench(command: BenchCommand) -> Result<ExitCode> {
    match command {
        BenchCommand::Bootstrap { live, deleted, expired, value_size, no_gc, with, json } => {
            let automerge = match with.as_deref() {
                None => false,
                Some("automerge") => true,
                Some(other) => bail!("--with {other}: the only other system known is `automerge`"),
            };
            let params = lethe_bench::bench::BootstrapParams {
                live,
                deleted,
                expired,
                value_bytes: value_size,
                no_gc,
                automerge,
            };
            run_bench_bootstrap(params, json)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Client { job } => {
            crate::init_logs("warn");
            let job: lethe_bench::bench::ClientJob = serde_json::from_str(&job).context("reading --job")?;
            let result = lethe_bench::bench::run_client(&job)?;
            outln!("{}", serde_json::to_string(&result)?)?;
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Plot { out, reports } => {
            let reports = reports
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a bench bootstrap --json report", f.display()))
                })
                .collect::<Result<Vec<lethe_bench::bench::BootstrapReport>>>()?;
            for path in lethe_bench::bench::plot(&reports, &out)? {
                outln!("{}", path.display())?;
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Incremental { keys, diffs, json } => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let r = lethe_bench::bench::incremental(dir.path(), keys, diffs)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!("{} differences among {} keys", r.diffs, r.keys)?;
                outln!("{:<10} {:>12} {:>7} {:>9} {:>9}", "path", "wire bytes", "trips", "seconds", "entries")?;
                for (name, p) in [("delta", r.delta), ("reconcile", r.reconcile)] {
                    outln!(
                        "{name:<10} {:>12} {:>7} {:>9.3} {:>9}",
                        p.wire_bytes,
                        p.round_trips,
                        p.seconds,
                        p.entries_sent
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Devices { devices, members, live, deleted, json } => {
            let r = lethe_bench::devices::devices(devices, members, live, deleted)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!("{} devices, {} members, {} live keys, {} deleted", r.devices, r.members, r.live, r.deleted)?;
                outln!("idle device session:          {:>10} bytes both ways (goal <= 1024)", r.idle_session_bytes)?;
                outln!(
                    "idle member session:          {:>10} bytes both ways (goal <= 4096)",
                    r.idle_member_session_bytes
                )?;
                outln!("member session with all records: {:>7} bytes", r.records_session_bytes)?;
                for (name, b) in
                    [("fresh device, deletes pending", r.fresh_bootstrap), ("no history", r.no_history_bootstrap)]
                {
                    outln!(
                        "{name:<30}{:>10} bytes, {} live, {} dead records, {} trips",
                        b.wire_bytes,
                        b.live_received,
                        b.tombstones_received,
                        b.trips
                    )?;
                }
                outln!("fresh against no history:     {:>+10.3} % (goal within 2)", r.fresh_over_no_history_percent)?;
                outln!(
                    "tombstones pending: {}, after removing the offline device and two GC steps: {}",
                    r.tombstones_pending,
                    r.tombstones_after_remove
                )?;
                outln!("member memory per device:     {:>10} bytes (goal <= 1024)", r.member_bytes_per_device)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Gc { replicas, deleted, json } => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let r = lethe_bench::bench::gc(dir.path(), replicas, deleted)?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!("{replicas} replicas, {deleted} keys written and deleted on the first")?;
                outln!(
                    "{:<8} {:>12} {:>12} {:>12} {:>12}",
                    "replica",
                    "tombstones",
                    "store bytes",
                    "tombstones",
                    "store bytes"
                )?;
                outln!("{:<8} {:>25} {:>25}", "", "before acknowledgement", "after")?;
                for (i, (b, a)) in r.before.iter().zip(&r.after).enumerate() {
                    outln!(
                        "{i:<8} {:>12} {:>12} {:>12} {:>12}",
                        b.tombstones,
                        b.store_bytes,
                        a.tombstones,
                        a.store_bytes
                    )?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        BenchCommand::Write { ops, writers, json } => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
            let r = runtime.block_on(lethe_bench::bench::write(dir.path(), ops, writers))?;
            if json {
                outln!("{}", serde_json::to_string_pretty(&r)?)?;
            } else {
                outln!("{ops} durable writes of 24-byte keys and 100-byte values")?;
                outln!("node API, {writers} concurrent writers: {:>10.0} puts/s", r.node_puts_per_sec)?;
                outln!("raw redb, one commit per insert:     {:>10.0} inserts/s", r.raw_redb_single_per_sec)?;
                outln!("raw redb, 1,000 inserts per commit:  {:>10.0} inserts/s", r.raw_redb_batched_per_sec)?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn run_bench_bootstrap(params: lethe_bench::bench::BootstrapParams, json: bool) -> Result<()> {
    crate::init_logs("warn");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let r = lethe_bench::bench::bootstrap(dir.path(), params)?;
    if json {
        outln!("{}", serde_json::to_string_pretty(&r)?)?;
        return Ok(());
    }
    outln!(
        "bootstrap of {} live keys ({} live bytes) after {} deletes and {} expiries{}",
        params.live,
        r.live_bytes,
        params.deleted,
        params.expired,
        if params.no_gc { ", tombstones not collected" } else { "" }
    )?;
    outln!(
        "{:<34} {:>12} {:>12} {:>12} {:>7} {:>9} {:>9} {:>11} {:>9} {:>9} {:>9}",
        "system",
        "wire bytes",
        "raw bytes",
        "udp bytes",
        "trips",
        "seconds",
        "entries",
        "tombstones",
        "srv cpu",
        "cli cpu",
        "cli MiB"
    )?;
    let automerge = r.automerge.map(|a| ("automerge (sync protocol)", a));
    for (name, s) in [
        ("lethe", r.lethe),
        ("commit-log replay (2024 model)", r.commitlog_replay),
        ("skipDeletesUntil (late-2024 model)", r.skip_deletes_until),
    ]
    .into_iter()
    .chain(automerge)
    {
        outln!(
            "{name:<34} {:>12} {:>12} {:>12} {:>7} {:>9.3} {:>9} {:>11} {:>9.2} {:>9.2} {:>9.1}",
            s.wire_bytes,
            s.raw_bytes,
            s.udp_bytes,
            s.round_trips,
            s.seconds,
            s.entries_received,
            s.tombstones_received,
            s.server_cpu_seconds,
            s.client_cpu_seconds,
            s.client_peak_bytes as f64 / f64::from(1 << 20)
        )?;
    }
    outln!(
        "raw redb: inserting the {} live entries, sorted, took {:.3} s (lethe's bootstrap: {:.2}x that)",
        params.live,
        r.raw_redb_insert_seconds,
        r.lethe.seconds / r.raw_redb_insert_seconds.max(1e-9)
    )?;
    Ok(())
}

fn run_demo(params: DemoParams, json: bool) -> Result<()> {
    crate::init_logs("warn");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let r = runtime.block_on(demo::run(dir.path(), params))?;
    if json {
        let received = |c: &demo::Received| {
            serde_json::json!({
                "live": c.live, "tombstones": c.tombstones, "bytes": c.bytes, "round_trips": c.round_trips,
            })
        };
        let m = &r.commit_log;
        let summary = serde_json::json!({
            "incremental": received(&r.incremental),
            "after_expiry": received(&r.after_expiry),
            "fresh": received(&r.fresh),
            "commit_log": {
                "live": m.entries - m.deletes, "deletes": m.deletes, "bytes": m.bytes, "round_trips": m.round_trips,
            },
            "live_keys": r.live_keys,
            "live_bytes": r.live_bytes,
            "seconds": r.elapsed.as_secs_f64(),
        });
        outln!("{summary}")?;
        return Ok(());
    }
    outln!()?;
    outln!("{:<40} {:>8} {:>11} {:>12} {:>12}", "client-a received", "live", "tombstones", "bytes", "round trips")?;
    for (name, c) in
        [("after the deletes and TTL writes", r.incremental), ("while the TTL passed and GC ran", r.after_expiry)]
    {
        outln!("{name:<40} {:>8} {:>11} {:>12} {:>12}", c.live, c.tombstones, c.bytes, c.round_trips)?;
    }
    outln!()?;
    outln!("{:<40} {:>8} {:>11} {:>12} {:>12}", "a fresh client joins", "live", "tombstones", "bytes", "round trips")?;
    let f = r.fresh;
    outln!(
        "{:<40} {:>8} {:>11} {:>12} {:>12}",
        "lethe (client-b, QUIC)",
        f.live,
        f.tombstones,
        f.bytes,
        f.round_trips
    )?;
    let m = r.commit_log;
    outln!(
        "{:<40} {:>8} {:>11} {:>12} {:>12}",
        "commit-log replay (atServer 2024 model)",
        m.entries - m.deletes,
        m.deletes,
        m.bytes,
        m.round_trips
    )?;
    outln!()?;
    outln!(
        "converged: yes ({} live keys, {} live bytes; lethe sent {:.1}x fewer bytes than the replay; {:.2} s)",
        r.live_keys,
        r.live_bytes,
        m.bytes as f64 / f.bytes.max(1) as f64,
        r.elapsed.as_secs_f64()
    )?;
    Ok(())
}
