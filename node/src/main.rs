//! The `lethe` command.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use lethe_node::demo::{self, DemoParams};

#[derive(Parser)]
#[command(name = "lethe", version, about = "A CRDT replication engine whose sync cost follows the live state")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
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

fn main() -> Result<()> {
    match Cli::parse().command {
        Command::Demo { keys, deleted, ttl_keys, ttl_ms } => {
            let dir = tempfile::tempdir().context("creating a temporary directory")?;
            println!("lethe demo: replicas on redb in {}", dir.path().display());
            let params = DemoParams { keys, deleted, ttl_keys, ttl_ms, ..DemoParams::default() };
            let r = demo::run(dir.path(), params)?;
            println!();
            println!("{:<34} {:>8} {:>11} {:>12} {:>12}", "session", "live", "tombstones", "bytes", "round trips");
            for (name, c) in [
                ("client-a, after deletes + TTL", r.incremental),
                ("client-a, after the TTL passed", r.after_expiry),
                ("client-b, fresh (after GC)", r.fresh),
            ] {
                println!("{name:<34} {:>8} {:>11} {:>12} {:>12}", c.live, c.tombstones, c.bytes, c.round_trips);
            }
            println!();
            println!(
                "converged: yes ({} live keys, {} live bytes; server tombstones {} -> {}; {:.2} s)",
                r.live_keys,
                r.live_bytes,
                r.server_tombstones.0,
                r.server_tombstones.1,
                r.elapsed.as_secs_f64()
            );
            Ok(())
        }
    }
}
