//! `get`, `list` and `status`: reads from the running node.

use crate::client::{self, Client};
use crate::json::{RecordJson, stamp_text};
use crate::output::{escape_bytes, print_line};
use anyhow::{Result, bail};
use lethe_node::Status;
use lethe_node::control::{LIST_LIMIT_MAX, Request, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `lethe get`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Without --json, the value's bytes are written exactly as they were put: \
`lethe get KEY > FILE` gives back the bytes `lethe put KEY --file FILE` stored. A newline follows \
only when stdout is a terminal, so the prompt starts on a line of its own.")]
pub struct GetArgs {
    /// The key.
    key: String,
    /// Print the entry as one JSON object: value (as text, or base64 if it is not UTF-8, with
    /// `value_encoding` saying which), metadata, stamp, dot, expiry; `null` if the key is absent
    /// (exit status 1).
    #[arg(long)]
    json: bool,
}

/// `lethe list`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Text lines are KEY<TAB>VALUE. Keys and values are shown unambiguously: \
UTF-8 text as it is, but `\\` as `\\\\`, tab, newline and carriage return as `\\t`, `\\n`, `\\r`, \
other control characters as `\\xNN` (`\\u{NNNN}` beyond ASCII), and bytes that are not UTF-8 \
as `\\xNN`. --json gives the bytes as text or base64 instead.")]
pub struct ListArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// At most this many (default: every entry, in requests of up to 100,000 each going on after
    /// the last key, as `export` does).
    #[arg(long)]
    limit: Option<usize>,
    /// Print one JSON object per entry, one per line (as `get --json` prints).
    #[arg(long)]
    json: bool,
}

/// Prints the value of KEY (its bytes exactly; a newline after them only on a terminal), or
/// the entry as JSON; exit status 1 if the key is absent (with `--json`, after printing `null`).
pub fn get(data: Option<PathBuf>, args: GetArgs) -> Result<ExitCode> {
    match client::request(data, &Request::Get { key: args.key.into_bytes() })? {
        Response::Found(Some(record)) => {
            let mut out = std::io::stdout().lock();
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&RecordJson::new(&record, false))?)?;
            } else {
                out.write_all(&record.value)?;
                if std::io::IsTerminal::is_terminal(&out) {
                    writeln!(out)?;
                }
            }
            out.flush()?;
            Ok(ExitCode::SUCCESS)
        }
        Response::Found(None) => {
            // A script reading JSON gets JSON either way; the exit status says it is absent.
            if args.json {
                print_line("null")?;
            }
            Ok(ExitCode::from(1))
        }
        other => bail!("unexpected answer {other:?}"),
    }
}

/// Lists live entries in key order: `KEY<TAB>VALUE` lines ([`escape_bytes`]), or JSON lines.
pub fn list(data: Option<PathBuf>, args: ListArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let listed = list_all(&client, &mut out, args.prefix.into_bytes(), args.limit, args.json);
    // The reader may have gone away (`lethe list | head -1`): close the connection either way.
    let flushed = listed.and_then(|()| Ok(out.flush()?));
    client.close();
    flushed?;
    Ok(ExitCode::SUCCESS)
}

/// Lists up to `limit` entries (every one without), one request of at most `LIST_LIMIT_MAX`
/// after another, each going on after the last key of the one before. Pages are printed as
/// they arrive. Like `export`, the requests are not one snapshot.
fn list_all(client: &Client, out: &mut impl Write, prefix: Vec<u8>, limit: Option<usize>, json: bool) -> Result<()> {
    let mut left = limit.unwrap_or(usize::MAX);
    let mut after = None;
    while left > 0 {
        let want = left.min(LIST_LIMIT_MAX);
        let request = Request::List { prefix: prefix.clone(), limit: want, after: after.take() };
        let (mut listed, mut last) = (0usize, None);
        client.request_pages(&request, |response| match response {
            Response::Listed { items, more } => {
                for item in items {
                    if json {
                        writeln!(out, "{}", serde_json::to_string(&RecordJson::new(&item, false))?)?;
                    } else {
                        writeln!(out, "{}\t{}", escape_bytes(&item.key), escape_bytes(&item.value))?;
                    }
                    listed += 1;
                    last = Some(item.key);
                }
                Ok(more)
            }
            other => bail!("unexpected answer {other:?}"),
        })?;
        left -= listed;
        if listed < want {
            break;
        }
        after = last;
    }
    Ok(())
}

/// Prints the node's status, as text or one JSON object.
pub fn status(data: Option<PathBuf>, json: bool) -> Result<ExitCode> {
    match client::request(data, &Request::Status)? {
        Response::Status(status) => {
            if json {
                print_line(&serde_json::to_string_pretty(&status)?)?;
            } else {
                print_line(&status_text(&status))?;
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

fn status_text(s: &Status) -> String {
    use std::fmt::Write as _;
    let mut text = String::new();
    let mut line = |l: String| {
        let _ = writeln!(text, "{l}");
    };
    let vector = |v: &std::collections::BTreeMap<String, u64>| {
        v.iter().map(|(r, n)| format!("{r}:{n}")).collect::<Vec<_>>().join(" ")
    };
    line(format!("node id      {}", s.node_id));
    line(format!("replica      {}", s.replica));
    line(format!("listen       {}", s.listen));
    line(format!(
        "role         {}",
        match s.role {
            lethe_node::NodeRole::Member => "member",
            lethe_node::NodeRole::Device => "device",
        }
    ));
    if s.role == lethe_node::NodeRole::Device {
        line(format!("server       {}", s.server.as_deref().unwrap_or("- (not connected)")));
        line(format!("uploads      {} queued", s.pending_uploads));
        line(format!("in sync      {}", if s.in_sync { "yes" } else { "no" }));
        match &s.last_sync {
            Some(l) => line(format!(
                "last sync    at {} ms with {}: {} bytes, {} tombstones received",
                l.at_ms, l.server, l.bytes, l.tombstones_received
            )),
            None => line("last sync    never".to_string()),
        }
    }
    line(format!("live keys    {}", s.live));
    line(format!("tombstones   {}", s.tombstones));
    line(format!("expired      {}", s.expired));
    line(format!("vector       {}", vector(&s.vector)));
    line(format!("frontier     {}", vector(&s.frontier)));
    line(format!("digest       {}", s.digest));
    match (&s.store_error, s.store_failed_since_ms) {
        (Some(e), since) => line(format!("store        FAILED since {} ms: {e}", since.unwrap_or_default())),
        (None, _) => line(format!("store        ok ({} reopens after failures since start)", s.store_reopens)),
    }
    line(format!(
        "received     {} live, {} tombstones, {} bytes (since start)",
        s.live_received, s.tombstones_received, s.bytes_received
    ));
    line(format!(
        "sessions     {} finished ({} anti-entropy), {} ended early (since start)",
        s.sessions_finished, s.anti_entropy_sessions, s.sessions_failed
    ));
    if let Some(ahead_ms) = s.clock_ahead_ms {
        line(format!("clock        {ahead_ms} ms ahead of the peers': local writes refused (fix the system clock)"));
    }
    line(format!("connected    {}", if s.connected.is_empty() { "-".to_string() } else { s.connected.join(" ") }));
    line(format!("members      {}", s.members.len()));
    for m in &s.members {
        line(format!("  {}  acked {}  last heard {} ms", m.replica, vector(&m.acked), m.last_heard_ms));
    }
    text.truncate(text.trim_end().len());
    text
}
