//! `watch`: changes under a prefix, local and replicated, as they happen, until interrupted.

use crate::client::Client;
use crate::commands::read::stamp_field;
use crate::json::event_json;
use crate::output::escape_bytes;
use anyhow::{Result, bail};
use lethe_node::control::{Event, Request, Response};
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

/// `lethe watch`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "Text lines are `put KEY VALUE STAMP`, `deleted KEY - STAMP` and \
`expired KEY - STAMP`, tab-separated. Keys and values are shown unambiguously, as `lethe list` \
shows them: UTF-8 text as it is, but `\\` as `\\\\`, tab, newline and carriage return as `\\t`, \
`\\n`, `\\r`, other control characters as `\\xNN` (`\\u{NNNN}` beyond ASCII), and bytes that are \
not UTF-8 as `\\xNN`. --json gives the bytes as text or base64 instead.")]
pub struct WatchArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Print one JSON object per change, one per line.
    #[arg(long)]
    json: bool,
}

/// Streams changes to stdout, one line each (flushed as it comes), until SIGINT or SIGTERM;
/// exits 0 then. Text lines are `put KEY VALUE STAMP`, `deleted KEY - STAMP`, `expired KEY -
/// STAMP`, tab-separated, keys and values escaped ([`escape_bytes`]); `watching` goes to stderr
/// once the node has subscribed. A watch that fell behind (the node queues a bounded number of
/// changes and bytes for it) gets a warning on stderr, or with `--json` a
/// `{"event": "lagged", "dropped": N}` line in the stream, then the changes after: list the
/// prefix again to resync.
pub fn watch(data: Option<PathBuf>, args: WatchArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut out = std::io::stdout().lock();
    let request = Request::Watch { prefix: args.prefix.into_bytes() };
    let streamed = client.stream_until_interrupted(&request, |response| {
        let line = match response {
            Response::Watching => {
                eprintln!("watching (interrupt to stop)");
                return Ok(true);
            }
            Response::Lagged { missed } if args.json => serde_json::to_string(&serde_json::json!({
                "event": "lagged",
                "dropped": missed,
                "hint": "this watch fell behind; list the prefix again to resync",
            }))?,
            Response::Lagged { missed } => {
                eprintln!(
                    "warning: lagged: {missed} changes dropped because this watch fell behind; \
                     list the prefix again (`lethe list --prefix ...`) to resync"
                );
                return Ok(true);
            }
            Response::Event(event) if args.json => serde_json::to_string(&event_json(&event)?)?,
            Response::Event(event) => text_line(&event),
            other => bail!("unexpected answer {other:?}"),
        };
        match writeln!(out, "{line}").and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            // The reader went away (`lethe watch | head -3`): the watch is over, not failed.
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(e.into()),
        }
    });
    client.close();
    streamed?;
    Ok(ExitCode::SUCCESS)
}

fn text_line(event: &Event) -> String {
    match event {
        Event::Put(r) => {
            format!("put\t{}\t{}\t{}", escape_bytes(&r.key), escape_bytes(&r.value), stamp_field(Some(r.stamp)))
        }
        Event::Deleted { key, stamp } => {
            format!("deleted\t{}\t-\t{}", escape_bytes(key), stamp_field(*stamp))
        }
        Event::Expired { key, stamp } => {
            format!("expired\t{}\t-\t{}", escape_bytes(key), stamp_field(Some(*stamp)))
        }
    }
}
