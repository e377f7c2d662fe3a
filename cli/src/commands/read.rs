//! `get`, `list` and `status`: reads from the running node.

use crate::client::{self, Client};
use crate::json::{RecordJson, stamp_text};
use anyhow::{Result, bail};
use lethe_node::Status;
use lethe_node::control::{Request, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `lethe get`'s arguments.
#[derive(clap::Args)]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Print the entry as one JSON object: value (as text, or base64 if it is not UTF-8, with
    /// `value_encoding` saying which), metadata, stamp, dot, expiry.
    #[arg(long)]
    json: bool,
}

/// `lethe list`'s arguments.
#[derive(clap::Args)]
pub struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// At most this many.
    #[arg(long, default_value_t = 1000)]
    limit: usize,
    /// Print one JSON object per entry, one per line (as `get --json` prints).
    #[arg(long)]
    json: bool,
}

/// Prints the value of KEY (its bytes as they are, then a newline), or the entry as JSON; exit
/// status 1 if the key is absent.
pub fn get(data: Option<PathBuf>, args: GetArgs) -> Result<ExitCode> {
    match client::request(data, &Request::Get { key: args.key.into_bytes() })? {
        Response::Found(Some(record)) => {
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&RecordJson::new(&record, false))?)?;
            } else {
                out.write_all(&record.value)?;
                writeln!(out)?;
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Response::Found(None) => Ok(ExitCode::from(1)),
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Lists live entries in key order: `KEY<TAB>VALUE` lines (lossy UTF-8), or JSON lines.
pub fn list(data: Option<PathBuf>, args: ListArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let request = Request::List { prefix: args.prefix.into_bytes(), limit: args.limit, after: None };
    // Pages are printed as they arrive: the node sends as many as the listing takes.
    client.request_pages(&request, |response| match response {
        Response::Listed { items, more } => {
            for item in &items {
                if args.json {
                    writeln!(out, "{}", serde_json::to_string(&RecordJson::new(item, false))?)?;
                } else {
                    writeln!(out, "{}\t{}", String::from_utf8_lossy(&item.key), String::from_utf8_lossy(&item.value))?;
                }
            }
            Ok(more)
        }
        other => bail!("unexpected answer {other:?}"),
    })?;
    out.flush()?;
    client.close();
    Ok(ExitCode::SUCCESS)
}

/// Prints the node's status, as text or one JSON object.
pub fn status(data: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    match client::request(data, &Request::Status)? {
        Response::Status(status) => {
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print_status(&status);
            }
            Ok(ExitCode::SUCCESS)
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// A stamp in the text forms: used by `watch`.
pub fn stamp_field(stamp: Option<lethe_node::control::WireStamp>) -> String {
    stamp.map_or_else(|| "-".to_string(), stamp_text)
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
