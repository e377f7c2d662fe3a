//! The `lethe` command.

mod demo;

use anyhow::{Context, Result, anyhow, bail};
use clap::{Parser, Subcommand};
use demo::DemoParams;
use lethe_node::control::{self, Request, Response};
use lethe_node::{DataDir, Node, NodeConfig, PeerAddr, Status};
use lethe_transport::{Endpoint, NodeId, TrustList};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "lethe", version, about = "A CRDT replication engine whose sync cost follows the live state")]
struct Cli {
    /// The node's data directory (identity and store).
    #[arg(long, global = true)]
    data: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create a node's identity and store in --data DIR and print its node id.
    Init,
    /// Run the node of --data DIR until SIGINT or SIGTERM.
    Serve {
        /// Address to listen on (UDP), e.g. 127.0.0.1:7000.
        #[arg(long)]
        listen: SocketAddr,
        /// A peer to keep connected, as NODEID@ADDR (trusted). Repeat for more.
        #[arg(long = "peer")]
        peers: Vec<PeerAddr>,
        /// A node id allowed to connect (a client device, say). Repeat for more.
        #[arg(long = "trust")]
        trust: Vec<NodeId>,
        /// How often a GC step runs.
        #[arg(long, default_value = "2s", value_parser = positive_duration)]
        gc_interval: Duration,
        /// How often an anti-entropy session runs with each peer this node dials.
        #[arg(long, default_value = "60s", value_parser = positive_duration)]
        anti_entropy_interval: Duration,
        /// How long a member may stay silent before it stops holding tombstone collection back.
        #[arg(long, default_value = "30days", value_parser = positive_duration)]
        lease: Duration,
    },
    /// Write KEY = VALUE on the running node.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: String,
        /// Time to live, like 2s, 10m, 7d.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Print the value of KEY (exit status 1 if it is absent).
    Get {
        /// The key.
        key: String,
    },
    /// Delete KEY.
    Del {
        /// The key.
        key: String,
    },
    /// List live keys and values in key order.
    List {
        /// Only keys starting with this.
        #[arg(long, default_value = "")]
        prefix: String,
        /// At most this many.
        #[arg(long, default_value_t = 1000)]
        limit: usize,
    },
    /// Print the node's id, counts, vectors, members, peers and digest.
    Status {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure lethe beside the models of atServer's sync, over QUIC on 127.0.0.1.
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the engine on redb files in a temporary directory: writes, deletes, local TTL expiry,
    /// tombstone collection, and a fresh replica bootstrapping; prints what each session cost.
    Demo {
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
    },
}

#[derive(Subcommand)]
enum BenchCommand {
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

/// A duration like `2s` or `30days` that is more than zero: a zero GC or anti-entropy interval
/// would spin, and a zero lease would evict every member at once.
fn positive_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration like 2s or 30days: {e}"))?;
    if d.is_zero() {
        return Err(format!("`{text}` is zero; it must be more than zero, like 500ms or 2s"));
    }
    Ok(d)
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn data_dir(data: Option<PathBuf>) -> Result<DataDir> {
    data.map(DataDir::new).ok_or_else(|| anyhow!("this command needs --data DIR (the node's data directory)"))
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Init => {
            let dir = data_dir(cli.data)?;
            let identity = dir.init()?;
            println!("{}", identity.id());
            Ok(ExitCode::SUCCESS)
        }
        Command::Serve { listen, peers, trust, gc_interval, anti_entropy_interval, lease } => {
            let dir = data_dir(cli.data)?;
            let mut config = NodeConfig::new(dir, listen);
            config.peers = peers;
            config.trust = trust;
            config.gc_interval = gc_interval;
            config.anti_entropy_interval = anti_entropy_interval;
            config.engine.lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
            serve(config)
        }
        Command::Put { key, value, ttl } => {
            let ttl_ms = ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
            match request(cli.data, Request::Put { key: key.into_bytes(), value: value.into_bytes(), ttl_ms })? {
                Response::Written { seq } => println!("ok seq={seq}"),
                other => bail!("unexpected answer {other:?}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Get { key } => match request(cli.data, Request::Get { key: key.into_bytes() })? {
            Response::Value(Some(value)) => {
                println!("{}", String::from_utf8_lossy(&value));
                Ok(ExitCode::SUCCESS)
            }
            Response::Value(None) => Ok(ExitCode::from(1)),
            other => bail!("unexpected answer {other:?}"),
        },
        Command::Del { key } => match request(cli.data, Request::Delete { key: key.into_bytes() })? {
            Response::Written { seq } => {
                println!("ok seq={seq}");
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected answer {other:?}"),
        },
        Command::List { prefix, limit } => {
            use std::io::Write;
            let mut out = std::io::BufWriter::new(std::io::stdout().lock());
            // Pages are printed as they arrive: the node sends as many as the listing takes.
            request_pages(cli.data, Request::List { prefix: prefix.into_bytes(), limit }, |response| match response {
                Response::Listed { items, more } => {
                    for item in items {
                        writeln!(
                            out,
                            "{}\t{}",
                            String::from_utf8_lossy(&item.key),
                            String::from_utf8_lossy(&item.value)
                        )?;
                    }
                    Ok(more)
                }
                other => bail!("unexpected answer {other:?}"),
            })?;
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Status { json } => match request(cli.data, Request::Status)? {
            Response::Status(status) => {
                if json {
                    println!("{}", serde_json::to_string_pretty(&status)?);
                } else {
                    print_status(&status);
                }
                Ok(ExitCode::SUCCESS)
            }
            other => bail!("unexpected answer {other:?}"),
        },
        Command::Bench(BenchCommand::Bootstrap { live, deleted, expired, value_size, no_gc, with, json }) => {
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
        Command::Bench(BenchCommand::Client { job }) => {
            init_logs("warn");
            let job: lethe_bench::bench::ClientJob = serde_json::from_str(&job).context("reading --job")?;
            let result = lethe_bench::bench::run_client(&job)?;
            println!("{}", serde_json::to_string(&result)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Plot { out, reports }) => {
            let reports = reports
                .iter()
                .map(|f| {
                    let text = std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?;
                    serde_json::from_str(&text)
                        .with_context(|| format!("{} is not a bench bootstrap --json report", f.display()))
                })
                .collect::<Result<Vec<lethe_bench::bench::BootstrapReport>>>()?;
            for path in lethe_bench::bench::plot(&reports, &out)? {
                println!("{}", path.display());
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Incremental { keys, diffs, json }) => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let r = lethe_bench::bench::incremental(dir.path(), keys, diffs)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{} differences among {} keys", r.diffs, r.keys);
                println!("{:<10} {:>12} {:>7} {:>9} {:>9}", "path", "wire bytes", "trips", "seconds", "entries");
                for (name, p) in [("delta", r.delta), ("reconcile", r.reconcile)] {
                    println!(
                        "{name:<10} {:>12} {:>7} {:>9.3} {:>9}",
                        p.wire_bytes, p.round_trips, p.seconds, p.entries_sent
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Gc { replicas, deleted, json }) => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let r = lethe_bench::bench::gc(dir.path(), replicas, deleted)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{replicas} replicas, {deleted} keys written and deleted on the first");
                println!(
                    "{:<8} {:>12} {:>12} {:>12} {:>12}",
                    "replica", "tombstones", "store bytes", "tombstones", "store bytes"
                );
                println!("{:<8} {:>25} {:>25}", "", "before acknowledgement", "after");
                for (i, (b, a)) in r.before.iter().zip(&r.after).enumerate() {
                    println!(
                        "{i:<8} {:>12} {:>12} {:>12} {:>12}",
                        b.tombstones, b.store_bytes, a.tombstones, a.store_bytes
                    );
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Bench(BenchCommand::Write { ops, writers, json }) => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
            let r = runtime.block_on(lethe_bench::bench::write(dir.path(), ops, writers))?;
            if json {
                println!("{}", serde_json::to_string_pretty(&r)?);
            } else {
                println!("{ops} durable writes of 24-byte keys and 100-byte values");
                println!("node API, {writers} concurrent writers: {:>10.0} puts/s", r.node_puts_per_sec);
                println!("raw redb, one commit per insert:     {:>10.0} inserts/s", r.raw_redb_single_per_sec);
                println!("raw redb, 1,000 inserts per commit:  {:>10.0} inserts/s", r.raw_redb_batched_per_sec);
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Demo { keys, deleted, ttl_keys, ttl_ms } => {
            run_demo(DemoParams { keys, deleted, ttl_keys, ttl_ms, ..DemoParams::default() })?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Logs to stderr, filtered by `RUST_LOG` (default: `default_level`).
fn init_logs(default_level: &str) {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

fn serve(config: NodeConfig) -> Result<ExitCode> {
    init_logs("info");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let dir = config.data.clone();
        let node = Node::start(config).await?;
        dir.write_addr(node.local_addr())?;
        println!("node {} listening on {}", node.id(), node.local_addr());
        let reason = shutdown_signal().await?;
        tracing::info!("{reason}: shutting down");
        node.shutdown().await;
        dir.clear_addr();
        Ok(ExitCode::SUCCESS)
    })
}

async fn shutdown_signal() -> Result<&'static str> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            r = tokio::signal::ctrl_c() => { r.context("waiting for SIGINT")?; Ok("SIGINT") }
            _ = term.recv() => Ok("SIGTERM"),
        }
    }
    #[cfg(not(unix))]
    {
        tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
        Ok("Ctrl-C")
    }
}

/// Sends one request to the running node of DIR, authenticated with the node's own key.
fn request(data: Option<PathBuf>, request: Request) -> Result<Response> {
    let mut answer = None;
    request_pages(data, request, |response| {
        answer = Some(response);
        Ok(false)
    })?;
    answer.ok_or_else(|| anyhow!("the node closed the stream without answering"))
}

/// Sends one request to the running node of DIR and hands each answer frame to `on_answer`,
/// which says whether another follows (a listing comes in pages). An error answer ends it.
fn request_pages(
    data: Option<PathBuf>,
    request: Request,
    mut on_answer: impl FnMut(Response) -> Result<bool>,
) -> Result<()> {
    let dir = data_dir(data)?;
    let identity = dir.identity()?;
    let id = identity.id();
    let mut addr = dir.addr()?;
    if addr.ip().is_unspecified() {
        addr.set_ip(match addr.ip() {
            IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
        });
    }
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let local =
            SocketAddr::new(if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() }, 0);
        let endpoint = Endpoint::bind(local, identity, TrustList::default())?;
        let not_answering = || {
            anyhow!(
                "the node of {} is not answering at {addr}; is `lethe serve --data {}` running?",
                dir.path().display(),
                dir.path().display()
            )
        };
        let conn = tokio::time::timeout(Duration::from_secs(5), endpoint.connect(addr, id))
            .await
            .map_err(|_| not_answering())?
            .map_err(|_| not_answering())?;
        let (mut w, mut r) = conn.open().await?;
        w.send(&control::encode(&request).map_err(|e| anyhow!(e))?).await?;
        let mut send = w.into_inner().await?;
        send.finish().context("sending the request")?;
        loop {
            let frame = tokio::time::timeout(Duration::from_secs(60), r.next())
                .await
                .map_err(|_| anyhow!("the node did not answer within 60 s"))??
                .ok_or_else(|| anyhow!("the node closed the stream without answering"))?;
            match control::decode::<Response>(&frame).map_err(|e| anyhow!(e))? {
                Response::Error(e) => bail!("{e}"),
                response => {
                    if !on_answer(response)? {
                        break;
                    }
                }
            }
        }
        conn.close(lethe_transport::CloseCode::Done, "done");
        endpoint.wait_idle().await;
        Ok(())
    })
}

fn print_status(s: &Status) {
    let vector = |v: &std::collections::BTreeMap<String, u64>| {
        v.iter().map(|(r, n)| format!("{r}:{n}")).collect::<Vec<_>>().join(" ")
    };
    println!("node id      {}", s.node_id);
    println!("replica      {}", s.replica);
    println!("listen       {}", s.listen);
    println!("live keys    {}", s.live);
    println!("tombstones   {}", s.tombstones);
    println!("expired      {}", s.expired);
    println!("vector       {}", vector(&s.vector));
    println!("frontier     {}", vector(&s.frontier));
    println!("digest       {}", s.digest);
    match (&s.store_error, s.store_failed_since_ms) {
        (Some(e), since) => println!("store        FAILED since {} ms: {e}", since.unwrap_or_default()),
        (None, _) => println!("store        ok ({} reopens after failures since start)", s.store_reopens),
    }
    println!(
        "received     {} live, {} tombstones, {} bytes (since start)",
        s.live_received, s.tombstones_received, s.bytes_received
    );
    println!(
        "sessions     {} finished ({} anti-entropy), {} ended early (since start)",
        s.sessions_finished, s.anti_entropy_sessions, s.sessions_failed
    );
    if let Some(ahead_ms) = s.clock_ahead_ms {
        println!("clock        {ahead_ms} ms ahead of the peers': local writes refused (fix the system clock)");
    }
    println!("connected    {}", if s.connected.is_empty() { "-".to_string() } else { s.connected.join(" ") });
    println!("members      {}", s.members.len());
    for m in &s.members {
        println!("  {}  acked {}  last heard {} ms", m.replica, vector(&m.acked), m.last_heard_ms);
    }
}

fn run_bench_bootstrap(params: lethe_bench::bench::BootstrapParams, json: bool) -> Result<()> {
    init_logs("warn");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let r = lethe_bench::bench::bootstrap(dir.path(), params)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "bootstrap of {} live keys ({} live bytes) after {} deletes and {} expiries{}",
        params.live,
        r.live_bytes,
        params.deleted,
        params.expired,
        if params.no_gc { ", tombstones not collected" } else { "" }
    );
    println!(
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
    );
    let automerge = r.automerge.map(|a| ("automerge (sync protocol)", a));
    for (name, s) in [
        ("lethe", r.lethe),
        ("commit-log replay (2024 model)", r.commitlog_replay),
        ("skipDeletesUntil (late-2024 model)", r.skip_deletes_until),
    ]
    .into_iter()
    .chain(automerge)
    {
        println!(
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
        );
    }
    println!(
        "raw redb: inserting the {} live entries, sorted, took {:.3} s (lethe's bootstrap: {:.2}x that)",
        params.live,
        r.raw_redb_insert_seconds,
        r.lethe.seconds / r.raw_redb_insert_seconds.max(1e-9)
    );
    Ok(())
}

fn run_demo(params: DemoParams) -> Result<()> {
    init_logs("warn");
    let dir = tempfile::tempdir().context("creating a temporary directory")?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    let r = runtime.block_on(demo::run(dir.path(), params))?;
    println!();
    println!("{:<40} {:>8} {:>11} {:>12} {:>12}", "client-a received", "live", "tombstones", "bytes", "round trips");
    for (name, c) in
        [("after the deletes and TTL writes", r.incremental), ("while the TTL passed and GC ran", r.after_expiry)]
    {
        println!("{name:<40} {:>8} {:>11} {:>12} {:>12}", c.live, c.tombstones, c.bytes, c.round_trips);
    }
    println!();
    println!("{:<40} {:>8} {:>11} {:>12} {:>12}", "a fresh client joins", "live", "tombstones", "bytes", "round trips");
    let f = r.fresh;
    println!(
        "{:<40} {:>8} {:>11} {:>12} {:>12}",
        "lethe (client-b, QUIC)", f.live, f.tombstones, f.bytes, f.round_trips
    );
    let m = r.commit_log;
    println!(
        "{:<40} {:>8} {:>11} {:>12} {:>12}",
        "commit-log replay (atServer 2024 model)",
        m.entries - m.deletes,
        m.deletes,
        m.bytes,
        m.round_trips
    );
    println!();
    println!(
        "converged: yes ({} live keys, {} live bytes; lethe sent {:.1}x fewer bytes than the replay; {:.2} s)",
        r.live_keys,
        r.live_bytes,
        m.bytes as f64 / f.bytes.max(1) as f64,
        r.elapsed.as_secs_f64()
    );
    Ok(())
}
