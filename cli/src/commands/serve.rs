//! `init` and `serve`: creating a node's data directory, and running the node, with its
//! settings from flags and, optionally, a TOML file (`--config`).
//!
//! The file's keys are the flags' names in kebab-case (`listen`, `peer`, `trust`, `server`,
//! `gc-interval`, `anti-entropy-interval`, `lease`, `device-lease`, `device-news-interval`,
//! `device-sessions-max`, `device-session-timeout`, `metrics`, `metrics-public`), plus `data`
//! for the global `--data` and `compression` (`compression = false` is `--no-compression`). A
//! boolean the file sets is overridden by the opposite flag (`--compression`,
//! `--no-metrics-public`). A repeatable flag is a list (`peer = ["ID@ADDR"]`), a duration a string (`"2s"`). A key the
//! file does not know is an error naming it. A flag given on the command line overrides the
//! file's key (a repeatable flag given once or more replaces the file's whole list).
//!
//! A new serve option is a field in [`ServeArgs`], one in [`ServeFile`], and a line in
//! [`ServeArgs::settle`].

use crate::client::data_dir;
use crate::output::print_line;
use anyhow::{Context, Result, anyhow};
use lethe_node::{Node, NodeConfig, PeerAddr};
use lethe_transport::NodeId;
use serde::Deserialize;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The largest config file read: a config is a few lines.
const CONFIG_BYTES_MAX: usize = 1 << 20;

const GC_INTERVAL_DEFAULT: Duration = Duration::from_secs(2);
const ANTI_ENTROPY_INTERVAL_DEFAULT: Duration = Duration::from_secs(60);
const LEASE_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);
const DEVICE_LEASE_DEFAULT: Duration = Duration::from_secs(30 * 24 * 3600);

/// `lethe init`'s arguments.
#[derive(clap::Args)]
pub struct InitArgs {
    /// Print `{"node_id": ...}` instead of the bare id.
    #[arg(long)]
    json: bool,
}

/// Creates the identity and store of `--data DIR` and prints the node id.
pub fn init(data: Option<PathBuf>, args: InitArgs) -> Result<ExitCode> {
    let dir = data_dir(data)?;
    let identity = dir.init()?;
    if args.json {
        print_line(&serde_json::json!({ "node_id": identity.id().to_string() }).to_string())?;
    } else {
        print_line(&identity.id().to_string())?;
    }
    Ok(ExitCode::SUCCESS)
}

/// `lethe serve`'s options. Every one can also be set in the `--config` file.
#[derive(clap::Args, Default)]
pub struct ServeArgs {
    /// Read settings from this TOML file (keys named as these flags, kebab-case); flags given
    /// here override it.
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Address to listen on (UDP), e.g. 127.0.0.1:7000. Required, here or in the file.
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// A peer to keep connected, as NODEID@ADDR (trusted). Repeat for more.
    #[arg(long = "peer")]
    peers: Vec<PeerAddr>,
    /// A node id allowed to connect as a member of the mesh (that never dials it). Repeat for
    /// more. Devices are enrolled at runtime instead: `lethe device add NODEID`.
    #[arg(long = "trust")]
    trust: Vec<NodeId>,
    /// Run as a device of this member, as NODEID@ADDR: kept connected (the next server on
    /// failure), writes queued while offline. Repeat for more servers. A device has no --peer
    /// or --trust.
    #[arg(long = "server")]
    servers: Vec<PeerAddr>,
    /// How often a GC step runs [default: 2s].
    #[arg(long, value_parser = positive_duration)]
    gc_interval: Option<Duration>,
    /// How often an anti-entropy session runs with each peer this node dials [default: 60s].
    #[arg(long, value_parser = positive_duration)]
    anti_entropy_interval: Option<Duration>,
    /// How long a member may stay silent before it stops holding tombstone collection back
    /// [default: 30days].
    #[arg(long, value_parser = positive_duration)]
    lease: Option<Duration>,
    /// How long a device may stay silent before it stops holding tombstone collection back (a
    /// member's setting) [default: 30days].
    #[arg(long, value_parser = positive_duration)]
    device_lease: Option<Duration>,
    /// On a member: the shortest time between two news frames to a connected device (each
    /// makes it run a session); commits meanwhile go in the one sent when it ends [default: 1s].
    #[arg(long, value_parser = positive_duration)]
    device_news_interval: Option<Duration>,
    /// On a member: how many device sessions run at once, at most; more wait their turn
    /// [default: 64].
    #[arg(long, value_parser = positive_count)]
    device_sessions_max: Option<usize>,
    /// On a member: how long one device session may run once it has its turn; one running
    /// longer is ended and its device starts another behind those waiting [default: 15m].
    #[arg(long, value_parser = positive_duration)]
    device_session_timeout: Option<Duration>,
    /// Neither offer nor accept zstd-compressed frames: every connection sends frames raw both
    /// ways (less CPU, more bytes). In the file: `compression = false`.
    #[arg(long, conflicts_with = "compression")]
    no_compression: bool,
    /// Offer and accept zstd-compressed frames (the default): overrides `compression = false`
    /// in the --config file.
    #[arg(long)]
    compression: bool,
    /// Print the line saying the node listens as one JSON object (`node_id`, `replica`,
    /// `listen`) on stdout.
    #[arg(long)]
    json: bool,
    #[command(flatten)]
    metrics: crate::metrics::MetricsArgs,
}

/// The `--config` file: the same settings, every one optional.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "kebab-case")]
pub struct ServeFile {
    data: Option<PathBuf>,
    listen: Option<String>,
    peer: Option<Vec<String>>,
    trust: Option<Vec<String>>,
    server: Option<Vec<String>>,
    gc_interval: Option<String>,
    anti_entropy_interval: Option<String>,
    lease: Option<String>,
    device_lease: Option<String>,
    device_news_interval: Option<String>,
    device_sessions_max: Option<usize>,
    device_session_timeout: Option<String>,
    metrics: Option<String>,
    metrics_public: Option<bool>,
    compression: Option<bool>,
}

impl ServeFile {
    /// Reads and parses `path`; relative paths in it are taken from the file's directory.
    pub fn read(path: &Path) -> Result<ServeFile> {
        let file = std::fs::File::open(path).with_context(|| format!("opening the config file {}", path.display()))?;
        let text = crate::commands::write::read_bounded(file, CONFIG_BYTES_MAX)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        let text =
            String::from_utf8(text).map_err(|_| anyhow!("the config file {} is not UTF-8 text", path.display()))?;
        let mut file: ServeFile =
            toml::from_str(&text).map_err(|e| anyhow!("the config file {} is not valid: {e}", path.display()))?;
        if let (Some(data), Some(dir)) = (file.data.as_mut(), path.parent())
            && data.is_relative()
        {
            *data = dir.join(&*data);
        }
        Ok(file)
    }
}

/// A value from the file, parsed, with an error naming the key.
fn from_file<T>(key: &str, text: Option<String>, parse: impl Fn(&str) -> Result<T, String>) -> Result<Option<T>> {
    text.map(|t| parse(&t).map_err(|e| anyhow!("config key `{key}`: {e}"))).transpose()
}

fn from_file_list<T>(
    key: &str,
    list: Option<Vec<String>>,
    parse: impl Fn(&str) -> Result<T, String>,
) -> Result<Vec<T>> {
    list.unwrap_or_default().iter().map(|t| parse(t).map_err(|e| anyhow!("config key `{key}`: {e}"))).collect()
}

/// A repeatable flag given once or more replaces the file's list.
fn or_file<T>(flag: Vec<T>, file: Vec<T>) -> Vec<T> {
    if flag.is_empty() { file } else { flag }
}

impl ServeArgs {
    /// The node's config and its metrics endpoint: each flag given, else the file's key, else
    /// the default.
    pub fn settle(self, data: Option<PathBuf>) -> Result<(NodeConfig, crate::metrics::MetricsArgs)> {
        let file = self.config.as_deref().map(ServeFile::read).transpose()?.unwrap_or_default();
        let dir = data_dir(data.or(file.data))?;
        let listen = match self.listen {
            Some(listen) => listen,
            None => from_file("listen", file.listen, |t| {
                t.parse::<SocketAddr>().map_err(|_| format!("`{t}` is not an address like 127.0.0.1:7000"))
            })?
            .ok_or_else(|| {
                anyhow!("serve needs --listen ADDR (or `listen = \"127.0.0.1:7000\"` in the --config file)")
            })?,
        };
        let peers = or_file(self.peers, from_file_list("peer", file.peer, str::parse)?);
        let trust = or_file(
            self.trust,
            from_file_list("trust", file.trust, |t| t.parse::<NodeId>().map_err(|e| e.to_string()))?,
        );
        let servers = or_file(self.servers, from_file_list("server", file.server, str::parse)?);
        let has_peers = !peers.is_empty() || !trust.is_empty();
        if !servers.is_empty() && has_peers {
            anyhow::bail!(
                "--server makes this node a device of those members, and a device has no peers: drop --peer and \
                 --trust (or --server)"
            );
        }
        let duration = |flag: Option<Duration>, key, text, default| -> Result<Duration> {
            Ok(flag.or(from_file(key, text, positive_duration)?).unwrap_or(default))
        };
        let mut config = NodeConfig::new(dir, listen);
        config.peers = peers;
        config.trust = trust;
        config.gc_interval = duration(self.gc_interval, "gc-interval", file.gc_interval, GC_INTERVAL_DEFAULT)?;
        config.anti_entropy_interval = duration(
            self.anti_entropy_interval,
            "anti-entropy-interval",
            file.anti_entropy_interval,
            ANTI_ENTROPY_INTERVAL_DEFAULT,
        )?;
        let lease = duration(self.lease, "lease", file.lease, LEASE_DEFAULT)?;
        config.engine.lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX);
        let device_lease = duration(self.device_lease, "device-lease", file.device_lease, DEVICE_LEASE_DEFAULT)?;
        config = config.with_device_lease(device_lease);
        config.device_news_interval = duration(
            self.device_news_interval,
            "device-news-interval",
            file.device_news_interval,
            lethe_node::node::DEVICE_NEWS_INTERVAL,
        )?;
        config.device_session_timeout = duration(
            self.device_session_timeout,
            "device-session-timeout",
            file.device_session_timeout,
            lethe_node::node::DEVICE_SESSION_TIMEOUT,
        )?;
        config.device_sessions_max = match (self.device_sessions_max, file.device_sessions_max) {
            (Some(n), _) => n,
            (None, Some(0)) => return Err(anyhow!("config key `device-sessions-max`: 0; it must be 1 or more")),
            (None, Some(n)) => n,
            (None, None) => lethe_node::node::DEVICE_SESSIONS_MAX,
        };
        for server in servers {
            config = config.with_server(server);
        }
        config.compression = match (self.compression, self.no_compression) {
            (true, _) => true,
            (_, true) => false,
            _ => file.compression.unwrap_or(true),
        };
        let metrics = crate::metrics::MetricsArgs {
            metrics: match self.metrics.metrics {
                Some(addr) => Some(addr),
                None => from_file("metrics", file.metrics, |t| {
                    t.parse::<SocketAddr>().map_err(|_| format!("`{t}` is not an address like 127.0.0.1:9100"))
                })?,
            },
            metrics_public: !self.metrics.no_metrics_public
                && (self.metrics.metrics_public || file.metrics_public.unwrap_or(false)),
            no_metrics_public: false,
        };
        // Checked here, not by clap: either may come from the file.
        if metrics.metrics_public && metrics.metrics.is_none() {
            anyhow::bail!(
                "metrics-public allows a public address for the metrics endpoint, but none is set: give --metrics ADDR \
                 (or `metrics = \"0.0.0.0:9100\"` in the --config file), or drop metrics-public"
            );
        }
        Ok((config, metrics))
    }
}

/// A duration like `2s` or `30days` that is more than zero: a zero GC or anti-entropy interval
/// would spin, and a zero lease would evict every member at once.
pub fn positive_duration(text: &str) -> Result<Duration, String> {
    let d =
        humantime::parse_duration(text).map_err(|e| format!("`{text}` is not a duration like 2s or 30days: {e}"))?;
    if d.is_zero() {
        return Err(format!("`{text}` is zero; it must be more than zero, like 500ms or 2s"));
    }
    Ok(d)
}

/// A count of 1 or more (a member capped at 0 device sessions would serve none).
pub fn positive_count(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err(format!("`{text}` is zero; it must be 1 or more")),
        Ok(n) => Ok(n),
        Err(e) => Err(format!("`{text}` is not a count like 64: {e}")),
    }
}

/// Runs the node until SIGINT or SIGTERM.
pub fn serve(data: Option<PathBuf>, args: ServeArgs) -> Result<ExitCode> {
    let json = args.json;
    let (config, metrics) = args.settle(data)?;
    crate::init_logs("info");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    runtime.block_on(async {
        let dir = config.data.clone();
        // Bound (and the recorder installed) before the node starts, so its first sessions count.
        // Served at once: `/health` says "starting" (503) while the store opens.
        let slot = crate::metrics::MetricsServer::bind(&metrics).await?.serve();
        let node = Node::start(config).await?;
        slot.set(&node);
        if node.role() == lethe_node::NodeRole::Device {
            tokio::spawn(crate::progress::follow(node.clone()));
        }
        dir.write_addr(node.local_addr())?;
        // The node runs on when nobody reads its stdout: the address is in the data directory.
        let line = if json {
            serde_json::json!({
                "node_id": node.id().to_string(),
                "replica": node.id().replica_id().to_string(),
                "listen": node.local_addr().to_string(),
            })
            .to_string()
        } else {
            format!("node {} listening on {}", node.id(), node.local_addr())
        };
        if let Err(e) = print_line(&line) {
            tracing::warn!("stdout: {e}");
        }
        let reason = shutdown_signal().await?;
        tracing::info!("{reason}: shutting down");
        node.shutdown().await;
        dir.clear_addr();
        Ok(ExitCode::SUCCESS)
    })
}

/// Waits for SIGINT or SIGTERM (Ctrl-C elsewhere) and says which came.
pub async fn shutdown_signal() -> Result<&'static str> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn write(dir: &Path, text: &str) -> PathBuf {
        let path = dir.join("lethe.toml");
        std::fs::write(&path, text).unwrap();
        path
    }

    #[test]
    fn flags_override_the_file_and_defaults_fill_the_rest() {
        let tmp = tempfile::tempdir().unwrap();
        let path =
            write(tmp.path(), "data = \"node\"\nlisten = \"127.0.0.1:7000\"\ngc-interval = \"5s\"\nlease = \"1h\"\n");
        let args = ServeArgs { config: Some(path), gc_interval: Some(Duration::from_secs(9)), ..ServeArgs::default() };
        let (config, metrics) = args.settle(None).unwrap();
        assert_eq!(metrics.metrics, None);
        assert_eq!(config.listen, "127.0.0.1:7000".parse().unwrap());
        assert_eq!(config.gc_interval, Duration::from_secs(9), "the flag wins");
        assert_eq!(config.engine.lease_ms, 3_600_000, "the file's key");
        assert_eq!(config.anti_entropy_interval, ANTI_ENTROPY_INTERVAL_DEFAULT);
        assert_eq!(config.data.path(), tmp.path().join("node"), "relative to the file");
        assert!(config.compression, "on by default");
    }

    #[test]
    fn servers_make_a_device_the_device_lease_is_a_members_and_a_device_has_no_peers() {
        let tmp = tempfile::tempdir().unwrap();
        let server = format!("{}@127.0.0.1:7000", "ab".repeat(32));
        let path = write(
            tmp.path(),
            &format!("listen = \"127.0.0.1:7001\"\nserver = [\"{server}\"]\ndevice-lease = \"7days\"\n"),
        );
        let (config, _) =
            ServeArgs { config: Some(path), ..ServeArgs::default() }.settle(Some(tmp.path().into())).unwrap();
        assert_eq!(config.engine.role, lethe_engine::Role::Device, "a server in the file makes a device");
        assert_eq!(config.device_lease(), Duration::from_secs(7 * 24 * 3600));
        let defaults = write(tmp.path(), "listen = \"127.0.0.1:7001\"\n");
        let (config, _) =
            ServeArgs { config: Some(defaults), ..ServeArgs::default() }.settle(Some(tmp.path().into())).unwrap();
        assert_eq!(config.engine.role, lethe_engine::Role::Member);
        assert_eq!(config.device_lease(), DEVICE_LEASE_DEFAULT);
        let both = ServeArgs {
            listen: Some("127.0.0.1:7001".parse().unwrap()),
            servers: vec![server.parse().unwrap()],
            peers: vec![server.parse().unwrap()],
            ..ServeArgs::default()
        };
        let err = both.settle(Some(tmp.path().into())).unwrap_err();
        assert!(format!("{err:#}").contains("a device has no peers"), "{err:#}");
    }

    #[test]
    fn the_device_news_interval_and_session_cap_come_from_flags_or_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let path =
            write(tmp.path(), "listen = \"127.0.0.1:7000\"\ndevice-news-interval = \"5s\"\ndevice-sessions-max = 8\n");
        let (config, _) =
            ServeArgs { config: Some(path.clone()), ..ServeArgs::default() }.settle(Some(tmp.path().into())).unwrap();
        assert_eq!((config.device_news_interval, config.device_sessions_max), (Duration::from_secs(5), 8));
        let args = ServeArgs { config: Some(path), device_sessions_max: Some(2), ..ServeArgs::default() };
        assert_eq!(args.settle(Some(tmp.path().into())).unwrap().0.device_sessions_max, 2, "the flag wins");
        let defaults = write(tmp.path(), "listen = \"127.0.0.1:7000\"\n");
        let (config, _) =
            ServeArgs { config: Some(defaults), ..ServeArgs::default() }.settle(Some(tmp.path().into())).unwrap();
        assert_eq!(config.device_news_interval, lethe_node::node::DEVICE_NEWS_INTERVAL);
        assert_eq!(config.device_sessions_max, lethe_node::node::DEVICE_SESSIONS_MAX);
        let zero = write(tmp.path(), "listen = \"127.0.0.1:7000\"\ndevice-sessions-max = 0\n");
        let err = ServeArgs { config: Some(zero), ..ServeArgs::default() }.settle(Some(tmp.path().into())).unwrap_err();
        assert!(format!("{err:#}").contains("device-sessions-max"), "{err:#}");
        assert!(positive_count("0").is_err() && positive_count("x").is_err());
        assert_eq!(positive_count("64"), Ok(64));
    }

    #[test]
    fn compression_is_turned_off_by_the_flag_or_the_file() {
        let tmp = tempfile::tempdir().unwrap();
        let on = write(tmp.path(), "listen = \"127.0.0.1:7000\"\n");
        let args = |path: &PathBuf, no_compression| ServeArgs {
            config: Some(path.clone()),
            no_compression,
            ..ServeArgs::default()
        };
        assert!(args(&on, false).settle(Some("d".into())).unwrap().0.compression);
        assert!(!args(&on, true).settle(Some("d".into())).unwrap().0.compression, "the flag");
        let off = write(tmp.path(), "listen = \"127.0.0.1:7000\"\ncompression = false\n");
        assert!(!args(&off, false).settle(Some("d".into())).unwrap().0.compression, "the file's key");
        let bad = write(tmp.path(), "listen = \"127.0.0.1:7000\"\ncompression = \"no\"\n");
        let err = args(&bad, false).settle(Some("d".into())).unwrap_err();
        assert!(format!("{err:#}").contains("compression"), "{err:#}");
    }

    #[test]
    fn a_flag_turns_off_or_on_what_the_file_turned_on_or_off() {
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            serve: ServeArgs,
        }
        let tmp = tempfile::tempdir().unwrap();
        let path = write(
            tmp.path(),
            "listen = \"127.0.0.1:7000\"\nmetrics = \"0.0.0.0:9100\"\nmetrics-public = true\ncompression = false\n",
        );
        let settle = |flags: &[&str]| {
            let mut argv = vec!["serve", "--config", path.to_str().unwrap()];
            argv.extend(flags);
            let cli = <Cli as clap::Parser>::try_parse_from(argv).unwrap();
            cli.serve.settle(Some("d".into()))
        };
        let (config, metrics) = settle(&[]).unwrap();
        assert!(!config.compression && metrics.metrics_public, "the file's keys");
        let (config, _) = settle(&["--compression"]).unwrap();
        assert!(config.compression, "--compression overrides `compression = false`");
        let (_, metrics) = settle(&["--no-metrics-public", "--metrics", "127.0.0.1:9100"]).unwrap();
        assert!(!metrics.metrics_public, "--no-metrics-public overrides `metrics-public = true`");
        for both in [["--compression", "--no-compression"], ["--metrics-public", "--no-metrics-public"]] {
            let mut argv = vec!["serve"];
            argv.extend(both);
            assert!(<Cli as clap::Parser>::try_parse_from(argv).is_err(), "{both:?} conflict");
        }
    }

    #[test]
    fn an_unknown_key_or_bad_value_is_named() {
        let tmp = tempfile::tempdir().unwrap();
        let path = write(tmp.path(), "listen = \"127.0.0.1:7000\"\ngc_interval = \"5s\"\n");
        let err = ServeArgs { config: Some(path), ..ServeArgs::default() }.settle(None).unwrap_err();
        assert!(format!("{err:#}").contains("gc_interval"), "{err:#}");
        let path = write(tmp.path(), "listen = \"127.0.0.1:7000\"\nlease = \"0s\"\n");
        let err = ServeArgs { config: Some(path), ..ServeArgs::default() }.settle(Some("d".into())).unwrap_err();
        assert!(format!("{err:#}").contains("config key `lease`"), "{err:#}");
        let err = ServeArgs::default().settle(Some("d".into())).unwrap_err();
        assert!(format!("{err:#}").contains("--listen"), "{err:#}");
    }
}
