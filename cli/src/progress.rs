//! What `lethe serve` on a device shows while it syncs ([`lethe_node::Node::sync_events`]): a
//! spinner on a terminal with the download's progress (entries of the member's estimated total), and a log line for each session that
//! ends in sync (what it cost) and for each refusal.

use indicatif::{ProgressBar, ProgressStyle};
use lethe_node::{Node, SyncEvent};
use tokio::sync::broadcast::error::RecvError;

/// Follows `node`'s sync events until it stops. The spinner draws only on a terminal.
pub async fn follow(node: Node) {
    let mut events = node.sync_events();
    let bar = ProgressBar::new_spinner();
    if let Ok(style) = ProgressStyle::with_template("{spinner} {msg}") {
        bar.set_style(style);
    }
    loop {
        match events.recv().await {
            Ok(SyncEvent::Progress { entries, bytes, total_entries }) => {
                let of = total_entries.map_or_else(String::new, |t| format!(" of about {t}"));
                bar.set_message(format!("downloading: {entries}{of} entries, {bytes} bytes so far"));
                bar.tick();
            }
            Ok(SyncEvent::InSync { server }) => {
                bar.set_message("");
                let last = node.status_snapshot().last_sync.unwrap_or_default();
                tracing::info!(
                    server = %server, bytes = last.bytes, tombstones_received = last.tombstones_received,
                    "in sync"
                );
            }
            Ok(SyncEvent::Refused { server, reason }) => {
                bar.set_message("");
                tracing::warn!(server = %server, "refused by the member: {reason}");
            }
            Ok(SyncEvent::Disconnected { .. }) => bar.set_message(""),
            Ok(SyncEvent::Connected { .. } | SyncEvent::Uploaded { .. }) => {}
            // Missed events are only progress: the next ones say where it stands.
            Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => break,
        }
    }
    bar.finish_and_clear();
}
