//! `device add/list/remove` on a member's running node, and `sync`: one device session without
//! a running node (`lethe_node::sync_once`).

use crate::client::{self, Client, data_dir};
use crate::output::print_line;
use anyhow::{Context, Result, bail};
use lethe_node::control::{DEVICE_LIST_PAGE_MAX, Request, Response};
use lethe_node::{DeviceInfo, NodeClock, PeerAddr, SyncReport};
use lethe_transport::NodeId;
use std::path::PathBuf;
use std::process::ExitCode;

/// `lethe device`'s subcommands.
#[derive(clap::Subcommand)]
pub enum DeviceCommand {
    /// Enrol a device with the running member node of --data DIR: it may connect at once, and
    /// the enrolment spreads to the other members.
    Add {
        /// The device's node id (what `lethe init` printed on it).
        node_id: NodeId,
        /// A name to know it by (at most 128 bytes).
        #[arg(long)]
        name: Option<String>,
        /// Print `{"node_id", "changed"}`.
        #[arg(long)]
        json: bool,
    },
    /// Print each enrolled device: id, name, last seen, acknowledged vector, cursor, whether it
    /// holds collection back and whether it is connected here.
    List {
        /// As one JSON array.
        #[arg(long)]
        json: bool,
    },
    /// Revoke a device: its connections close, every member refuses it from then on, and it
    /// stops holding collection back at once.
    Remove {
        /// The device's node id.
        node_id: NodeId,
        /// Print `{"node_id", "removed"}`.
        #[arg(long)]
        json: bool,
    },
}

/// Runs a `device` subcommand against the node of `data`.
pub fn device(data: Option<PathBuf>, command: DeviceCommand) -> Result<ExitCode> {
    match command {
        DeviceCommand::Add { node_id, name, json } => {
            let request = Request::DeviceAdd { node_id: node_id.to_string(), name };
            let Response::DeviceAdded { changed } = client::request(data, &request)? else {
                bail!("unexpected answer to an enrolment");
            };
            print_line(&if json {
                serde_json::json!({ "node_id": node_id.to_string(), "changed": changed }).to_string()
            } else {
                format!("{} {node_id}", if changed { "enrolled" } else { "already enrolled" })
            })?;
            Ok(ExitCode::SUCCESS)
        }
        DeviceCommand::Remove { node_id, json } => {
            let request = Request::DeviceRemove { node_id: node_id.to_string() };
            let Response::DeviceRemoved { removed } = client::request(data, &request)? else {
                bail!("unexpected answer to a removal");
            };
            if json {
                print_line(&serde_json::json!({ "node_id": node_id.to_string(), "removed": removed }).to_string())?;
            } else if removed {
                print_line(&format!("removed {node_id}"))?;
            } else {
                eprintln!("error: {node_id} is not an enrolled device here (see `lethe device list`)");
            }
            Ok(if removed { ExitCode::SUCCESS } else { ExitCode::from(1) })
        }
        DeviceCommand::List { json } => {
            let devices = list(data)?;
            if json {
                print_line(&serde_json::to_string_pretty(&devices)?)?;
            } else {
                print_line(&list_text(&devices))?;
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Every enrolled device, a page at a time on one connection.
fn list(data: Option<PathBuf>) -> Result<Vec<DeviceInfo>> {
    let client = Client::connect(data)?;
    let mut devices = Vec::new();
    let result = (|| {
        loop {
            let after = devices.last().map(|d: &DeviceInfo| d.replica.clone());
            match client.request(&Request::DeviceList { after, limit: DEVICE_LIST_PAGE_MAX })? {
                Response::Devices { items, more } => {
                    let empty = items.is_empty();
                    devices.extend(items);
                    if !more || empty {
                        return Ok(());
                    }
                }
                other => bail!("unexpected answer {other:?}"),
            }
        }
    })();
    client.close();
    result.map(|()| devices)
}

fn list_text(devices: &[DeviceInfo]) -> String {
    if devices.is_empty() {
        return "no devices enrolled (enrol one with `lethe device add NODEID`)".to_string();
    }
    let mut lines = vec![format!(
        "{:<64}  {:<16}  {:<13}  {:<24}  {:>6}  {:<5}  connected",
        "node id", "name", "last seen ms", "acked", "cursor", "holds"
    )];
    for d in devices {
        let acked = d.acked.as_ref().map_or_else(
            || "-".to_string(),
            |a| a.iter().map(|(r, n)| format!("{r}:{n}")).collect::<Vec<_>>().join(" "),
        );
        lines.push(format!(
            "{:<64}  {:<16}  {:<13}  {:<24}  {:>6}  {:<5}  {}",
            d.node_id.clone().unwrap_or_else(|| format!("(replica {})", d.replica)),
            d.name.as_deref().unwrap_or("-"),
            d.last_seen_ms,
            acked,
            d.cursor,
            if d.holds_collection_back { "yes" } else { "no" },
            if d.connected { "yes" } else { "no" },
        ));
    }
    lines.join("\n")
}

/// `lethe sync`'s arguments.
#[derive(clap::Args)]
pub struct SyncArgs {
    /// A member to sync with, as NODEID@ADDR; repeat for more (tried in order until one answers).
    #[arg(long = "server", required = true)]
    servers: Vec<PeerAddr>,
    /// Print what the sync did and cost as one JSON object.
    #[arg(long)]
    json: bool,
}

/// Runs one device session of the device in `data` (no node may be running on it) and prints
/// what it cost. Exit status 1 if a member refused this device, 2 on any other failure.
pub fn sync(data: Option<PathBuf>, args: SyncArgs) -> Result<ExitCode> {
    let dir = data_dir(data)?;
    // The summary line goes to the log (stderr), the report to stdout.
    crate::init_logs("info");
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting tokio")?;
    // A spinner with what arrived so far, drawn only on a terminal.
    let bar = indicatif::ProgressBar::new_spinner();
    let mut progress = |s: &lethe_engine::device::DeviceStats| {
        bar.set_message(format!(
            "syncing: {} uploaded, {} live entries and {} bytes received",
            s.uploaded, s.download.live_received, s.download.bytes_received
        ));
        bar.tick();
    };
    let result =
        runtime.block_on(lethe_node::sync_once_with_progress(&dir, &args.servers, NodeClock::default(), &mut progress));
    bar.finish_and_clear();
    match result {
        Ok(report) => {
            tracing::info!(
                server = %report.server, uploaded = report.uploaded, live = report.live_received,
                tombstones = report.tombstones_received, bytes = report.wire_bytes, "synced"
            );
            print_line(&if args.json { serde_json::to_string(&report)? } else { report_text(&report) })?;
            Ok(ExitCode::SUCCESS)
        }
        Err(e @ lethe_node::SyncOnceError::Refused { .. }) => {
            eprintln!("error: {e}");
            Ok(ExitCode::from(1))
        }
        Err(e) => Err(e.into()),
    }
}

fn report_text(r: &SyncReport) -> String {
    format!(
        "synced with {}: uploaded {} ({} admitted), received {} live and {} tombstones, {} bytes, {} round trips, \
         {:.3} s; {} writes still queued",
        r.server,
        r.uploaded,
        r.admitted,
        r.live_received,
        r.tombstones_received,
        r.wire_bytes,
        r.round_trips,
        r.seconds,
        r.pending_uploads
    )
}
