//! The `lethe` command.
//!
//! Each command lives in `commands/`: `serve` (init, serve and its config file), `write` (put,
//! del), `read` (get, list, status), `device` (device add/list/remove, sync), `watch`, `transfer` (export, import), `bench` (benchmarks
//! and the demo, with the default feature `bench`); `metrics` serves `serve --metrics`; `progress` shows a device's sync on a terminal.
//! `client` is the owner's connection to a running node; `json` the JSON forms the commands
//! print and `import` reads; `output` writes stdout (a closed pipe ends a command quietly) and
//! the text form of bytes.

mod client;
mod commands;
#[cfg(feature = "bench")]
mod demo;
mod json;
mod metrics;
mod output;
mod progress;

use clap::{Parser, Subcommand};
#[cfg(feature = "bench")]
use commands::bench::{BenchCommand, DemoArgs};
use commands::device::{DeviceCommand, SyncArgs};
use commands::read::{GetArgs, ListArgs};
use commands::serve::{InitArgs, ServeArgs};
use commands::transfer::{ExportArgs, ImportArgs};
use commands::watch::WatchArgs;
use commands::write::{DelArgs, PutArgs};
use std::path::PathBuf;
use std::process::ExitCode;

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
    Init(InitArgs),
    /// Run the node of --data DIR until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Write KEY = VALUE (or the bytes of --file PATH, or of stdin with `-`) on the running node.
    Put(PutArgs),
    /// Print the value of KEY: its bytes exactly, a newline after them only on a terminal (exit
    /// status 1 if it is absent).
    Get(GetArgs),
    /// Delete KEY.
    Del(DelArgs),
    /// List live keys and values in key order (bytes that are not text escaped; see --help).
    List(ListArgs),
    /// Print changes (local and replicated) as they happen, until interrupted (bytes that are not
    /// text escaped; see --help).
    Watch(WatchArgs),
    /// Write a header (the node's vector and clock), every live entry with its stamp, dot,
    /// metadata and expiry, and an end line, as JSON lines to stdout.
    Export(ExportArgs),
    /// Load a `lethe export` from stdin, checked whole first: a full export into a blank node as
    /// a bootstrap (same dots, digest and vector), anything else as this node's own writes.
    Import(ImportArgs),
    /// Enrol, list or revoke the devices of the running member node of --data DIR.
    #[command(subcommand)]
    Device(DeviceCommand),
    /// Sync the device in --data DIR once with a member (no node may be running on it): upload
    /// its queued writes, download, acknowledge, exit; print what it cost.
    Sync(SyncArgs),
    /// Print the node's id, counts, vectors, members, peers and digest.
    Status {
        /// As one JSON object.
        #[arg(long)]
        json: bool,
    },
    /// Measure lethe beside the models of atServer's sync, over QUIC on 127.0.0.1.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(BenchCommand),
    /// Run the engine on redb files in a temporary directory: writes, deletes, local TTL expiry,
    /// tombstone collection, and a fresh replica bootstrapping; prints what each session cost.
    #[cfg(feature = "bench")]
    Demo(DemoArgs),
    /// `bench` or `demo` in a build without them: says how to get them.
    #[cfg(not(feature = "bench"))]
    #[command(name = "bench", alias = "demo", hide = true)]
    NotBuilt {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        // The reader of stdout went away (`lethe list | head -1`): the output is over, not failed.
        Err(e) if output::is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
    }
}

fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let data = cli.data;
    match cli.command {
        Command::Init(args) => commands::serve::init(data, args),
        Command::Serve(args) => commands::serve::serve(data, args),
        Command::Put(args) => commands::write::put(data, args),
        Command::Del(args) => commands::write::del(data, args),
        Command::Get(args) => commands::read::get(data, args),
        Command::List(args) => commands::read::list(data, args),
        Command::Status { json } => commands::read::status(data, json),
        Command::Device(command) => commands::device::device(data, command),
        Command::Sync(args) => commands::device::sync(data, args),
        Command::Watch(args) => commands::watch::watch(data, args),
        Command::Export(args) => commands::transfer::export(data, args),
        Command::Import(args) => commands::transfer::import(data, args),
        #[cfg(feature = "bench")]
        Command::Bench(command) => commands::bench::bench(command),
        #[cfg(feature = "bench")]
        Command::Demo(args) => commands::bench::demo(args),
        #[cfg(not(feature = "bench"))]
        Command::NotBuilt { .. } => anyhow::bail!(
            "this lethe was built without the `bench` feature, so it has no `bench` or `demo`: \
             install the default build (`cargo install lethe-cli`) to run them"
        ),
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
