//! `export` and `import`: live entries out as JSON lines, and back in.
//!
//! An export (format 2) is a header line ([`ExportHeader`]: the source's replica id, the prefix,
//! and the vector and clock the source held *before* its entries were listed), one [`DeadJson`]
//! per dead record not yet collected (a tombstone or an expired value, with its stamp and dot),
//! one [`RecordJson`] per live entry (value and metadata in base64, with its stamp and dot), and
//! an end line ([`ExportEnd`]: the count of entries and of dead records). `export` reads the
//! header with a `Position` request, then pages through `ListDead` requests (each up to
//! `DEAD_LIST_LIMIT_MAX` records) and `List` requests (each up to `LIST_LIMIT_MAX` entries), each
//! going on after the last key.
//!
//! The dead records are what a network bootstrap sends first (`Replica::dead_entries_beyond`):
//! an importer that takes the source's vector counts their dots as seen, so no later delta would
//! send them, and an older write of a deleted key from a third peer would then be stored live.
//! A format 1 export (live entries only) is still read, but only ever as own writes.
//!
//! `import` reads its input twice over: first line by line (each at most [`LINE_BYTES_MAX`]),
//! checking every line (JSON, base64, writers, the engine's size limits, a seq
//! above zero, the header first, the end last, the count), so a malformed or cut export is
//! refused with its line number before anything is sent. A regular file (`lethe import FILE`, or
//! stdin redirected from one) is read again from where it began; only a pipe or terminal is
//! copied to a temporary file (in `$TMPDIR`) as it is checked, so its size is bounded by that
//! disk. Then it sends the entries in `Import`
//! requests of at most `IMPORT_ENTRIES_MAX` entries and `IMPORT_BATCH_BYTES_MAX` bytes, each
//! applied whole or refused whole by the node, in one of two modes:
//! - **as a bootstrap**, for a full export (no `--prefix`, header and end present, format 2) into
//!   a blank node (`Replica::is_blank`): the dead records, then the entries, keep their dots and
//!   stamps, and a `FinishImport`
//!   merges the source's vector and observes its clock, as a complete transfer does; the node
//!   then has the source's digest and vector;
//! - **as the node's own writes** that keep each entry's key, value, metadata, expiry and time,
//!   for anything else (a node that holds or has seen anything, a prefix export, a dump without
//!   header, a format 1 export): claiming the source's vector there could hide deletes the node
//!   never saw. Dead records are not sent then.
//!
//! A line the node refuses (a stamp beyond the drift bound, the only check the node makes that
//! this one cannot) stops the import: what earlier requests carried stays applied, nothing of the
//! request the line was in is, and the error says which.

use crate::client::Client;
use crate::json::{
    DeadJson, EXPORT_FORMAT, EXPORT_FORMAT_LIVE_ONLY, ExportEnd, ExportHeader, RecordJson, parse_writer,
};
use anyhow::{Context, Result, anyhow, bail};
use indicatif::ProgressBar;
use lethe_engine::limits::VECTOR_COMPONENTS_MAX;
use lethe_engine::{Limits, ReplicaId};
use lethe_node::control::{
    DEAD_LIST_LIMIT_MAX, DeadRecord, IMPORT_BATCH_BYTES_MAX, IMPORT_ENTRIES_MAX, ImportMode, LIST_LIMIT_MAX, Record,
    Request, Response,
};
use std::io::{BufRead, Seek, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// The longest line `import` reads: an entry at the engine's limits (1 KiB key, 1 MiB value,
/// 4 KiB metadata) is under 1.5 MiB in base64, a header of [`VECTOR_COMPONENTS_MAX`] components
/// under 40 KiB; a longer line is refused before it is read whole.
pub const LINE_BYTES_MAX: usize = 3 << 20;

/// `lethe export`'s arguments.
#[derive(clap::Args)]
pub struct ExportArgs {
    /// Print the summary (entries, dead) as one JSON object on stderr (stdout is the export).
    #[arg(long)]
    json: bool,
    /// Only keys starting with this. An export of a prefix imports as the importer's own
    /// writes, never as a bootstrap.
    #[arg(long, default_value = "")]
    prefix: String,
}

/// Writes the header, every dead record and every live entry under the prefix, and the end line
/// to stdout, one JSON object per line. Like `list`, the pages are not one snapshot: a write made
/// meanwhile may or may not be in the dump, and the header's vector, read first, covers none of
/// them (a delete made meanwhile is then sent by the importer's next sync with a peer).
pub fn export(data: Option<PathBuf>, args: ExportArgs) -> Result<ExitCode> {
    let client = Client::connect(data)?;
    let mut out = std::io::BufWriter::new(std::io::stdout().lock());
    let header = match client.request(&Request::Position)? {
        Response::Position { replica, vector, clock, .. } => ExportHeader {
            lethe_export: EXPORT_FORMAT,
            source: ReplicaId(replica).to_string(),
            prefix: args.prefix.clone(),
            vector: vector.into_iter().map(|(r, s)| (ReplicaId(r).to_string(), s)).collect(),
            clock,
        },
        other => bail!("unexpected answer {other:?}"),
    };
    let written = write_export(&client, &mut out, &header);
    client.close();
    let (exported, dead) = match written {
        // Unlike `list`, a dump cut short is a failure: it would be a truncated backup.
        Err(e) if crate::output::is_broken_pipe(&e) => bail!(
            "the export was cut short: its reader closed the pipe before the end line (an import refuses a dump \
             without it)"
        ),
        other => other?,
    };
    if args.json {
        eprintln!("{}", serde_json::json!({ "entries": exported, "dead": dead }));
    } else {
        eprintln!("exported {exported} entries and {dead} dead records");
    }
    Ok(ExitCode::SUCCESS)
}

/// The export's lines to `out`; the number of entries and of dead records written.
fn write_export(client: &Client, out: &mut impl Write, header: &ExportHeader) -> Result<(u64, u64)> {
    writeln!(out, "{}", serde_json::to_string(header)?)?;
    let progress = ProgressBar::new_spinner();
    let prefix = header.prefix.clone().into_bytes();
    // The dead records first, as a network bootstrap sends them.
    let (mut dead, mut after) = (0u64, None);
    loop {
        let request = Request::ListDead { prefix: prefix.clone(), limit: DEAD_LIST_LIMIT_MAX, after: after.take() };
        let items = match client.request(&request)? {
            Response::DeadListed { items } => items,
            other => bail!("unexpected answer {other:?}"),
        };
        let listed = items.len();
        for item in &items {
            writeln!(out, "{}", serde_json::to_string(&DeadJson::new(item))?)?;
        }
        dead += listed as u64;
        if listed < DEAD_LIST_LIMIT_MAX {
            break;
        }
        after = items.into_iter().last().map(|r| r.key);
    }
    let mut exported = 0u64;
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
    writeln!(out, "{}", serde_json::to_string(&ExportEnd { lethe_export_end: exported, dead: Some(dead) })?)?;
    out.flush().context("writing the export")?;
    progress.finish_and_clear();
    Ok((exported, dead))
}

/// `lethe import`'s arguments.
#[derive(clap::Args)]
#[command(after_help = "The whole input is checked before anything is sent: a line that is not \
part of an export, an export cut short (no end line) or miscounted is refused with its line \
number, and nothing is imported.\n\n\
A full export (no --prefix) into a blank node (one that holds nothing and has never written or \
synced: a fresh `lethe init`) is loaded as a bootstrap: the dead records (deletes and expired \
values not yet collected) and the entries keep their dots and stamps, and the source's vector and \
clock are taken, so `lethe status` shows the source's digest and vector. Anything else (a node that \
holds or has seen entries, a prefix export, an export of this node's own identity, an export of \
format 1, which lists no dead records) is loaded as this node's own writes that keep each entry's value, \
metadata, expiry and time: taking the source's vector there could hide deletes the node never \
saw.")]
pub struct ImportArgs {
    /// Read the export from this file instead of stdin (read twice, never copied). Stdin
    /// redirected from a regular file is read twice as well; a pipe is copied to a temporary
    /// file in $TMPDIR while it is checked.
    file: Option<PathBuf>,
    /// Print the summary as one JSON object on stdout (mode, entries, applied, superseded,
    /// stale).
    #[arg(long)]
    json: bool,
}

/// What pass one learnt of the input.
struct Checked {
    /// The header, if line 1 is one.
    header: Option<ExportHeader>,
    /// The source vector, parsed from the header.
    vector: Vec<(u64, u64)>,
    /// Whether the end line was read.
    ended: bool,
    /// Entry lines.
    entries: u64,
    /// Dead-record lines.
    dead: u64,
}

/// The input opened as a regular file, and where the export begins in it.
fn regular_input(file: Option<&PathBuf>) -> Result<Option<(std::fs::File, u64)>> {
    if let Some(path) = file {
        let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
        return Ok(Some((file, 0)));
    }
    #[cfg(unix)]
    {
        use std::os::fd::AsFd;
        let stdin = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned().context("reading stdin")?);
        if stdin.metadata().is_ok_and(|m| m.is_file()) {
            let mut stdin = stdin;
            let start = stdin.stream_position().context("finding where stdin begins")?;
            return Ok(Some((stdin, start)));
        }
    }
    Ok(None)
}

/// Reads an export from FILE or stdin, checks it whole, and loads it into the running node (see
/// the module docs).
pub fn import(data: Option<PathBuf>, args: ImportArgs) -> Result<ExitCode> {
    let (checked, mut input) = match regular_input(args.file.as_ref())? {
        Some((file, start)) => {
            let checked = check_input(&mut std::io::BufReader::new(&file), &mut std::io::sink())?;
            let mut file = file;
            file.seek(std::io::SeekFrom::Start(start)).context("reading the input again")?;
            (checked, file)
        }
        None => {
            let mut spool =
                tempfile::tempfile().context("creating a temporary file (in $TMPDIR) for the piped input")?;
            let checked = {
                let mut writer = std::io::BufWriter::new(&mut spool);
                let checked = check_input(&mut std::io::stdin().lock(), &mut writer)?;
                writer.flush().context("writing the input to a temporary file")?;
                checked
            };
            spool.rewind().context("reading the temporary file back")?;
            (checked, spool)
        }
    };
    let client = Client::connect(data)?;
    let (replica, blank) = match client.request(&Request::Position)? {
        Response::Position { replica, blank, .. } => (replica, blank),
        other => bail!("unexpected answer {other:?}"),
    };
    let bootstrap = match &checked.header {
        Some(h) if !h.prefix.is_empty() => None,
        Some(h) if h.lethe_export == EXPORT_FORMAT_LIVE_ONLY => {
            eprintln!(
                "note: an export of format {EXPORT_FORMAT_LIVE_ONLY} holds no dead records, so taking its source's vector \
                 could bring deleted keys back: the entries are written as this node's own writes (export again with \
                 this lethe for a bootstrap)"
            );
            None
        }
        Some(_) if checked.vector.iter().any(|(r, _)| *r == replica) => {
            eprintln!("note: the export names this node's own writes: they are written again as new writes");
            None
        }
        Some(_) if !blank => {
            eprintln!(
                "note: this node is not blank (it holds or has seen entries): the entries are written as its own writes"
            );
            None
        }
        Some(h) => Some(h.clock),
        None => None,
    };
    let progress = ProgressBar::new_spinner();
    let mut totals = Totals::default();
    let result =
        send_entries(&client, std::io::BufReader::new(&mut input), bootstrap.is_some(), &mut totals, &progress)
            .and_then(|()| match bootstrap {
                Some(clock) => match client.request(&Request::FinishImport { vector: checked.vector.clone(), clock }) {
                    Ok(Response::ImportFinished) => Ok(()),
                    Ok(other) => bail!("unexpected answer {other:?}"),
                    Err(e) => Err(e.context(
                        "every entry was imported under its own dot, but the source's vector was not merged: the node \
                     reconciles with its peers as after an interrupted bootstrap",
                    )),
                },
                None => Ok(()),
            });
    progress.finish_and_clear();
    client.close();
    result?;
    let mode = if bootstrap.is_some() { "bootstrap" } else { "own-writes" };
    if args.json {
        let summary = serde_json::json!({
            "mode": mode,
            "entries": totals.lines,
            "dead": totals.dead,
            "applied": totals.applied,
            "superseded": totals.superseded,
            "stale": totals.stale,
        });
        crate::output::print_line(&summary.to_string())?;
        return Ok(ExitCode::SUCCESS);
    }
    let how = if bootstrap.is_some() {
        "under their own dots, and the source's vector merged (a bootstrap)"
    } else {
        "as this node's own writes"
    };
    eprintln!(
        "imported {} entries and {} dead records {how}: {} applied, {} already held or older than what the node \
         holds, {} known superseded",
        totals.lines, totals.dead, totals.applied, totals.superseded, totals.stale
    );
    Ok(ExitCode::SUCCESS)
}

/// Pass one: reads `input` line by line, checking each, and copies it to `spool` (a sink when the
/// input is a regular file, read again for pass two); an error names the line and says nothing
/// was imported.
fn check_input(input: &mut impl BufRead, spool: &mut impl Write) -> Result<Checked> {
    let mut checked = Checked { header: None, vector: Vec::new(), ended: false, entries: 0, dead: 0 };
    let mut line = Vec::new();
    let mut line_no = 0u64;
    let nothing = |line_no: u64, e: anyhow::Error| anyhow!("line {line_no}: {e:#}\n(nothing was imported)");
    while read_line(input, &mut line).map_err(|e| nothing(line_no + 1, e))? {
        line_no += 1;
        spool.write_all(&line).and_then(|()| spool.write_all(b"\n")).context("writing a temporary file")?;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        if checked.ended {
            return Err(nothing(line_no, anyhow!("a line after the export's end line: were two exports joined?")));
        }
        match parse_line(&line).map_err(|e| nothing(line_no, e))? {
            Line::Record(_) => checked.entries += 1,
            Line::Dead(_) if checked.header.as_ref().is_none_or(|h| h.lethe_export == EXPORT_FORMAT_LIVE_ONLY) => {
                return Err(nothing(
                    line_no,
                    anyhow!("a dead record, but line 1 is not the header of an export of format {EXPORT_FORMAT}"),
                ));
            }
            Line::Dead(_) => checked.dead += 1,
            Line::Header(_) if line_no > 1 || checked.entries > 0 => {
                return Err(nothing(
                    line_no,
                    anyhow!("an export header after the first line: were two exports joined?"),
                ));
            }
            Line::Header(h) => {
                checked.vector = header_vector(&h).map_err(|e| nothing(line_no, e))?;
                checked.header = Some(h);
            }
            Line::End(_) if checked.header.is_none() => {
                return Err(nothing(line_no, anyhow!("an export's end line, but line 1 is not its header")));
            }
            Line::End(end) if end.lethe_export_end != checked.entries => {
                return Err(nothing(
                    line_no,
                    anyhow!(
                        "the end line counts {} entries but the export holds {}: lines were lost or added",
                        end.lethe_export_end,
                        checked.entries
                    ),
                ));
            }
            Line::End(end) if end.dead.unwrap_or(0) != checked.dead => {
                return Err(nothing(
                    line_no,
                    anyhow!(
                        "the end line counts {} dead records but the export holds {}: lines were lost or added",
                        end.dead.unwrap_or(0),
                        checked.dead
                    ),
                ));
            }
            Line::End(end)
                if end.dead.is_none() && checked.header.as_ref().is_some_and(|h| h.lethe_export == EXPORT_FORMAT) =>
            {
                return Err(nothing(line_no, anyhow!("the end line of a format {EXPORT_FORMAT} export lacks `dead`")));
            }
            Line::End(_) => checked.ended = true,
        }
    }
    if checked.header.is_some() && !checked.ended {
        bail!(
            "the export ends at line {line_no} without its end line ({{\"lethe_export_end\": N}}): it was cut short, \
             or `lethe export` did not finish; export again\n(nothing was imported)"
        );
    }
    Ok(checked)
}

/// The header's vector as `(replica, seq)` pairs, checked.
fn header_vector(h: &ExportHeader) -> Result<Vec<(u64, u64)>> {
    if h.lethe_export != EXPORT_FORMAT && h.lethe_export != EXPORT_FORMAT_LIVE_ONLY {
        bail!(
            "an export of format {}; this lethe reads formats {EXPORT_FORMAT_LIVE_ONLY} and {EXPORT_FORMAT}",
            h.lethe_export
        );
    }
    parse_writer("source", &h.source)?;
    if h.vector.len() > VECTOR_COMPONENTS_MAX {
        bail!("the header's vector has {} components, more than {VECTOR_COMPONENTS_MAX}", h.vector.len());
    }
    h.vector.iter().map(|(r, s)| Ok((parse_writer("vector", r)?, *s))).collect()
}

/// Pass two: sends the checked entries in batches.
fn send_entries(
    client: &Client,
    mut input: impl BufRead,
    bootstrap: bool,
    totals: &mut Totals,
    progress: &ProgressBar,
) -> Result<()> {
    let mut batch = Batch { bootstrap, first: true, ..Batch::default() };
    let mut line = Vec::new();
    let mut line_no = 0u64;
    while read_line(&mut input, &mut line)? {
        line_no += 1;
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        let item = match parse_line(&line).map_err(|e| batch.refused(line_no, e))? {
            Line::Record(record) => Item::Record(record),
            // Only a bootstrap takes dead records: as own writes they would be stale.
            Line::Dead(dead) if bootstrap => Item::Dead(dead),
            Line::Dead(_) | Line::Header(_) | Line::End(_) => continue,
        };
        let bytes = item.counted_bytes();
        if batch.len() > 0 && batch.bytes + bytes > IMPORT_BATCH_BYTES_MAX {
            batch.send(client, totals)?;
        }
        batch.push(line_no, item, bytes);
        if batch.len() == IMPORT_ENTRIES_MAX.min(DEAD_LIST_LIMIT_MAX) {
            batch.send(client, totals)?;
            progress.set_message(format!("{} entries imported", totals.lines));
        }
    }
    batch.send(client, totals)
}

/// Reads one line (without its line ending) into `line`; whether there was one.
fn read_line<R: BufRead>(input: &mut R, line: &mut Vec<u8>) -> Result<bool> {
    line.clear();
    let read = std::io::Read::take(&mut *input, LINE_BYTES_MAX as u64 + 1)
        .read_until(b'\n', line)
        .context("reading the input")?;
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

/// One line of an export.
enum Line {
    Header(ExportHeader),
    Dead(DeadRecord),
    Record(Box<Record>),
    End(ExportEnd),
}

/// What one line sends.
enum Item {
    Dead(DeadRecord),
    Record(Box<Record>),
}

impl Item {
    fn counted_bytes(&self) -> usize {
        match self {
            Item::Dead(d) => d.counted_bytes(),
            Item::Record(r) => r.counted_bytes(),
        }
    }
}

fn parse_line(line: &[u8]) -> Result<Line> {
    let record_error = match serde_json::from_slice::<RecordJson>(line) {
        Ok(json) => {
            let record = json.into_record()?;
            check_sizes(&record)?;
            return Ok(Line::Record(Box::new(record)));
        }
        Err(e) => e,
    };
    // Not an entry: the header or end line, or broken. Which field it has says which it meant.
    let object = serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(line).ok();
    let has = |field: &str| object.as_ref().is_some_and(|o| o.contains_key(field));
    if has("lethe_export") {
        let header = serde_json::from_slice(line).map_err(|e| {
            anyhow!("not an export header: {e} (it has lethe_export, source, prefix, vector and clock)")
        })?;
        return Ok(Line::Header(header));
    }
    // The end line has a `dead` count too: it is told apart by `lethe_export_end`.
    if has("dead") && !has("lethe_export_end") {
        let dead: DeadJson = serde_json::from_slice(line).map_err(|e| {
            anyhow!(
                "not a dead record: {e} (it has dead, key, key_encoding, stamp and dot, and expired_at_ms if expired)"
            )
        })?;
        let record = dead.into_record()?;
        Limits::default().check_key(&record.key)?;
        if record.seq == 0 {
            bail!("the dot's seq is 0, but sequence numbers start at 1");
        }
        return Ok(Line::Dead(record));
    }
    if has("lethe_export_end") {
        let end = serde_json::from_slice(line)
            .map_err(|e| anyhow!("not an export's end line: {e} (it is {{\"lethe_export_end\": N}})"))?;
        return Ok(Line::End(end));
    }
    Err(anyhow!(
        "not a line of `lethe export`: {record_error} (each line is one JSON object with key, value, stamp and dot)"
    ))
}

/// The engine's checks on sizes and the seq, made here so a dump the node would refuse is
/// refused before anything of it is sent (a node runs with the engine's default limits).
fn check_sizes(r: &Record) -> Result<()> {
    let limits = Limits::default();
    limits.check_key(&r.key)?;
    limits.check_value(&r.value, r.metadata.as_deref())?;
    if r.seq == 0 {
        bail!("the dot's seq is 0, but sequence numbers start at 1");
    }
    Ok(())
}

/// What the node did with the entries imported so far.
#[derive(Default)]
struct Totals {
    lines: u64,
    dead: u64,
    applied: u64,
    superseded: u64,
    stale: u64,
}

/// Entries and dead records waiting to go in one `Import` request, and the line each came from.
#[derive(Default)]
struct Batch {
    records: Vec<Record>,
    dead: Vec<DeadRecord>,
    /// The lines of `records`.
    lines: Vec<u64>,
    /// The lines of `dead`.
    dead_lines: Vec<u64>,
    bytes: usize,
    /// Sent as bootstrap batches.
    bootstrap: bool,
    /// No batch sent yet.
    first: bool,
}

impl Batch {
    fn len(&self) -> usize {
        self.records.len() + self.dead.len()
    }

    fn push(&mut self, line_no: u64, item: Item, bytes: usize) {
        match item {
            Item::Record(record) => {
                self.records.push(*record);
                self.lines.push(line_no);
            }
            Item::Dead(dead) => {
                self.dead.push(dead);
                self.dead_lines.push(line_no);
            }
        }
        self.bytes += bytes;
    }

    /// The line of the item the node numbers `index`: the dead records come first.
    fn line_of(&self, index: usize) -> Option<u64> {
        self.dead_lines.iter().chain(&self.lines).nth(index).copied()
    }

    /// The first line of the batch.
    fn first_line(&self) -> Option<u64> {
        self.dead_lines.iter().chain(&self.lines).min().copied()
    }

    fn send(&mut self, client: &Client, totals: &mut Totals) -> Result<()> {
        // A bootstrap of an empty export still sends its (empty) first batch: the node checks
        // it is blank before it takes the source's vector.
        if self.len() == 0 && !(self.bootstrap && self.first) {
            return Ok(());
        }
        let entries = std::mem::take(&mut self.records);
        let dead = std::mem::take(&mut self.dead);
        let (count, dead_count) = (entries.len() as u64, dead.len() as u64);
        let mode = if self.bootstrap { ImportMode::Bootstrap { first: self.first } } else { ImportMode::Own };
        match client.request(&Request::Import { entries, dead, mode }).map_err(|e| self.failed(e))? {
            Response::Imported { applied, superseded, stale } => {
                totals.lines += count;
                totals.dead += dead_count;
                totals.applied += applied;
                totals.superseded += superseded;
                totals.stale += stale;
                self.lines.clear();
                self.dead_lines.clear();
                self.bytes = 0;
                self.first = false;
                Ok(())
            }
            Response::ImportRefused { index, reason } => {
                let line_no = usize::try_from(index).ok().and_then(|i| self.line_of(i)).unwrap_or(0);
                Err(self.refused(line_no, anyhow!("{reason}")))
            }
            other => bail!("unexpected answer {other:?}"),
        }
    }

    /// What was applied when a request failed as a whole (the node was written to meanwhile, say).
    fn failed(&self, error: anyhow::Error) -> anyhow::Error {
        let first = self.first_line().unwrap_or(1);
        let again = if self.bootstrap {
            "; run `lethe import` again: a node that is no longer blank takes the entries as its own writes"
        } else {
            ""
        };
        anyhow!("{error:#}\n({}; nothing from line {first} on was{again})", self.applied_before(first))
    }

    /// The error for a bad `line_no`, saying what of the input was applied.
    fn refused(&self, line_no: u64, error: anyhow::Error) -> anyhow::Error {
        let first = self.first_line().unwrap_or(line_no);
        anyhow!(
            "line {line_no}: {error:#}\n({}; fix the line and import from line {first} on)",
            self.applied_before(first)
        )
    }

    fn applied_before(&self, first: u64) -> String {
        match (self.first, self.bootstrap) {
            (true, _) => "nothing was imported".to_string(),
            (false, false) => format!("lines before {first} were imported"),
            (false, true) => format!(
                "lines before {first} were imported under their own dots, without the source's vector: \
                 as after an interrupted bootstrap, which the next sync reconciles"
            ),
        }
    }
}
