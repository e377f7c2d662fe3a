//! `put` and `del`: a write on the running node, printed as its receipt.

use crate::client;
use crate::json::{ReceiptJson, stamp_text};
use crate::output::print_line;
use anyhow::{Context, Result, bail};
use lethe_engine::session::FRAME_BYTES_MAX;
use lethe_node::control::{Request, Response};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

/// The most bytes a value read from a file or stdin may have: a control request is one frame.
/// The node checks its own (smaller) value limit and says so.
const VALUE_READ_BYTES_MAX: usize = FRAME_BYTES_MAX - 64 * 1024;
/// The most bytes `--metadata @FILE` reads; the node checks its own (smaller) metadata limit.
const METADATA_READ_BYTES_MAX: usize = 64 * 1024;

/// `lethe put`'s arguments.
#[derive(clap::Args)]
pub struct PutArgs {
    /// The key.
    key: String,
    /// The value; `-` reads it from stdin (binary-safe). Give VALUE or --file, not both.
    value: Option<String>,
    /// Read the value from this file (any bytes).
    #[arg(long, value_name = "PATH")]
    file: Option<PathBuf>,
    /// Time to live, like 2s, 10m, 7d.
    #[arg(long, value_parser = humantime::parse_duration)]
    ttl: Option<Duration>,
    /// Metadata stored and replicated with the value: JSON text (checked to parse, stored as
    /// given), or @PATH to store a file's bytes as they are.
    #[arg(long, value_name = "JSON|@PATH")]
    metadata: Option<String>,
    /// Print the receipt as one JSON object.
    #[arg(long)]
    json: bool,
}

/// `lethe del`'s arguments.
#[derive(clap::Args)]
pub struct DelArgs {
    /// The key.
    key: String,
    /// Print the receipt as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Writes KEY = the value from exactly one source.
pub fn put(data: Option<PathBuf>, args: PutArgs) -> Result<ExitCode> {
    let value = match (args.value.as_deref(), &args.file) {
        (Some("-"), None) => {
            read_bounded(std::io::stdin().lock(), VALUE_READ_BYTES_MAX).context("reading the value from stdin")?
        }
        (Some(value), None) => value.as_bytes().to_vec(),
        (None, Some(path)) => read_file(path, VALUE_READ_BYTES_MAX).context("reading the value for --file")?,
        (Some(_), Some(_)) => bail!("give the value once: as VALUE, as `-` for stdin, or with --file PATH, not both"),
        (None, None) => bail!("no value: give it as VALUE, as `-` to read stdin, or with --file PATH"),
    };
    let metadata = args.metadata.as_deref().map(metadata).transpose()?;
    let ttl_ms = args.ttl.map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX));
    let request = Request::Put { key: args.key.into_bytes(), value, ttl_ms, metadata };
    print_receipt(client::request(data, &request)?, args.json)
}

/// Deletes KEY.
pub fn del(data: Option<PathBuf>, args: DelArgs) -> Result<ExitCode> {
    print_receipt(client::request(data, &Request::Delete { key: args.key.into_bytes() })?, args.json)
}

fn print_receipt(response: Response, json: bool) -> Result<ExitCode> {
    match response {
        Response::Written { seq, stamp } if json => print_line(&serde_json::to_string(&ReceiptJson::new(seq, stamp))?)?,
        Response::Written { seq, stamp } => print_line(&format!("ok seq={seq} stamp={}", stamp_text(stamp)))?,
        other => bail!("unexpected answer {other:?}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// `--metadata`: JSON text, checked, or `@PATH`, read as it is.
fn metadata(arg: &str) -> Result<Vec<u8>> {
    if let Some(path) = arg.strip_prefix('@') {
        return read_file(Path::new(path), METADATA_READ_BYTES_MAX).context("reading --metadata @PATH");
    }
    serde_json::from_str::<serde::de::IgnoredAny>(arg).with_context(|| {
        format!(
            "--metadata `{arg}` is not JSON; give JSON text like '{{\"type\":\"note\"}}', or @PATH for a file's bytes"
        )
    })?;
    Ok(arg.as_bytes().to_vec())
}

fn read_file(path: &Path, max: usize) -> Result<Vec<u8>> {
    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    read_bounded(file, max).with_context(|| format!("reading {}", path.display()))
}

/// Reads `source` to its end, refusing more than `max` bytes (without reading them all).
pub fn read_bounded(source: impl Read, max: usize) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    source.take(max as u64 + 1).read_to_end(&mut bytes)?;
    if bytes.len() > max {
        bail!("it is more than {max} bytes, more than one request can carry");
    }
    Ok(bytes)
}
