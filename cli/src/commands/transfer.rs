//! `export` and `import`: live entries out as JSON lines, and back in with their stamps.
//!
//! `export` pages through `List` requests (each up to `LIST_LIMIT_MAX` entries, the next going
//! on after the last key), writing one [`RecordJson`] per line with the value and metadata in
//! base64. `import` reads lines one at a time (each at most [`LINE_BYTES_MAX`]), parses and
//! checks each, and sends them in `Import` requests of at most `IMPORT_ENTRIES_MAX` entries and
//! `IMPORT_BATCH_BYTES_MAX` bytes; the node applies a request whole or refuses it whole. A bad
//! line stops the import with its line number: what earlier requests carried stays applied,
//! nothing of the request the line was in is.

use crate::client::Client;
use crate::json::RecordJson;
use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use lethe_node::control::{IMPORT_BATCH_BYTES_MAX, IMPORT_ENTRIES_MAX, LIST_LIMIT_MAX, Record, Request, Response};
use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The longest line `import` reads: an entry at the engine's limits (1 KiB key, 1 MiB value,
/// 4 KiB metadata) is under 1.5 MiB in base64; a longer line is refused before it is read whole.
pub const LINE_BYTES_MAX: usize = 3 << 20;

/// `lethe export`'s arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Only keys starting with this.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Writes every live entry under the prefix to stdout, one JSON object per line. Like `list`,
/// the pages are not one snapshot: a write made meanwhile may or may not be in the dump.
pub fn export(data: Option<PathBuf>, args: ExportArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let progress = ProgressBar::new_spinner();
    let prefix = args.prefix.into_bytes();
    let (mut exported, mut after) = (0u64, None);
    loop {
        let request = Request::List { prefix: prefix.clone(), limit: LIST_LIMIT_MAX, after: after.take() };
        let (mut listed, mut last) = (0usize, None);
        client.request_pages(&request, |response| match response {
            Response::Listed { items, more } => {
                for item in items {
                    writeln!(out, "{}", serde_json::to_string(&RecordJson::new(&item, true))?)?;
                    listed += 1;
                    last = Some(item.key);
                }
                Ok(more)
            }
            other => bail!("unexpected answer {other:?}"),
        })?;
        exported += listed as u64;
        progress.set_message(format!("{exported} entries exported"));
        if listed < LIST_LIMIT_MAX {
            break;
        }
        after = last;
    }
    out.flush().context("writing the export")?;
    progress.finish_and_clear();
    client.close();
    eprintln!("exported {exported} entries");
    Ok(ExitCode::SUCCESS)
}

/// `lethe import`'s arguments.
#[derive(clap::Args)]
pub struct ImportArgs {
    /// Print the summary as one JSON object on stdout (entries, applied, superseded, stale).
    #[arg(long)]
    json: bool,
}

/// Reads an export from stdin and loads it into the running node (see the module docs).
pub fn import(data: Option<PathBuf>, args: ImportArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut input = std::io::stdin().lock();
    let progress = ProgressBar::new_spinner();
    let mut totals = Totals::default();
    let mut batch = Batch::default();
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let result = loop {
        line_no += 1;
        let record = match read_line(&mut input, &mut line) {
            Ok(false) => break batch.send(&client, &mut totals),
            Ok(true) if line.iter().all(u8::is_ascii_whitespace) => continue,
            Ok(true) => parse_line(&line),
            Err(e) => Err(e),
        };
        let record = match record {
            Ok(record) => record,
            Err(e) => break Err(batch.refused(line_no, e)),
        };
        let bytes = record.counted_bytes();
        if !batch.records.is_empty()
            && batch.bytes + bytes > IMPORT_BATCH_BYTES_MAX
            && let Err(e) = batch.send(&client, &mut totals)
        {
            break Err(e);
        }
        batch.push(line_no, record, bytes);
        if batch.records.len() == IMPORT_ENTRIES_MAX {
            if let Err(e) = batch.send(&client, &mut totals) {
                break Err(e);
            }
            progress.set_message(format!("{} entries imported", totals.lines));
        }
    };
    progress.finish_and_clear();
    client.close();
    result?;
    if args.json {
        let summary = serde_json::json!({
            "entries": totals.lines,
            "applied": totals.applied,
            "superseded": totals.superseded,
            "stale": totals.stale,
        });
        println!("{summary}");
        return Ok(ExitCode::SUCCESS);
    }
    eprintln!(
        "imported {} entries: {} applied, {} already held or older than what the node holds, {} known superseded",
        totals.lines, totals.applied, totals.superseded, totals.stale
    );
    Ok(ExitCode::SUCCESS)
}

/// Reads one line (without its line ending) into `line`; whether there was one.
fn read_line<R: BufRead>(input: &mut R, line: &mut Vec<u8>) -> Result<bool> {
    line.clear();
    let read =
        std::io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1).read_until(b'\n', line).context("reading stdin")?;
    if read == 0 {
        return Ok(false);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        if line.last() == Some(&b'\r') {
            line.pop();
        }
    } else if line.len() > LINE_BYTES_MAX {
        bail!("the line is longer than {LINE_BYTES_MAX} bytes, more than any entry's export takes");
    }
    Ok(true)
}

fn parse_line(line: &[u8]) -> Result<Record> {
    let json: RecordJson = serde_json::from_slice(line).map_err(|e| {
        anyhow!("not a line of `lethe export`: {e} (each line is one JSON object with key, value, stamp and dot)")
    })?;
    json.into_record()
}

/// What the node did with the entries imported so far.
#[derive(Default)]
struct Totals {
    lines: u64,
    applied: u64,
    superseded: u64,
    stale: u64,
}

/// Entries waiting to go in one `Import` request, and the line each came from.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    lines: Vec<u64>,
    bytes: usize,
}

impl Batch {
    fn push(&mut self, line_no: u64, record: Record, bytes: usize) {
        self.records.push(record);
        self.lines.push(line_no);
        self.bytes += bytes;
    }

    fn send(&mut self, client: &Client, totals: &mut Totals) -> Result<()> {
        if self.records.is_empty() {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.records);
        let count = entries.len() as u64;
        match client.request(&Request::Import { entries })? {
            Response::Imported { applied, superseded, stale } => {
                totals.lines += count;
                totals.applied += applied;
                totals.superseded += superseded;
                totals.stale += stale;
                self.lines.clear();
                self.bytes = 0;
                Ok(())
            }
            Response::ImportRefused { index, reason } => {
                let line_no = usize::try_from(index).ok().and_then(|i| self.lines.get(i).copied()).unwrap_or(0);
                Err(self.refused(line_no, anyhow!("{reason}")))
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// The error for a bad `line_no`, saying what of the input was applied.
    fn refused(&self, line_no: u64, error: anyhow::Error) -> anyhow::Error {
        let first = self.lines.first().copied().unwrap_or(line_no);
        let applied = if first > 1 {
            format!("lines before {first} were imported, nothing from line {first} on was")
        } else {
            "nothing was imported".to_string()
        };
        anyhow!("line {line_no}: {error:#}\n({applied}; fix the line and import from line {first} on)")
    }
}
