//! The owner's commands (`lethe --data DIR put/get/del/list/watch/import/status`): a connection
//! made with the node's own key, one [`Request`] per stream, answered with one [`Response`] (a
//! listing with as many pages as it takes, a watch with one frame per change until the owner
//! finishes its side).

use crate::control::{
    self, DeadRecord, Event, ImportMode, LIST_PAGE_BYTES_MAX, LIST_SCAN_ITEMS, Record, Request, Response,
};
use crate::node::{Inner, Node, NodeError, SubscriptionError};
use lethe_engine::limits::KEY_BYTES_MAX;
use lethe_engine::session::FRAME_BYTES_MAX;
use lethe_engine::{Hlc, KeyRange, PutOptions, ReplicaId, Seq, VersionVector};
use lethe_transport::endpoint::{RecvStream, SendStream};
use lethe_transport::{FrameReader, FrameWriter, PeerConnection};
use std::ops::Bound;
use std::sync::Arc;

/// Serves the owner's connection until it closes.
pub(crate) async fn serve(inner: Arc<Inner>, conn: PeerConnection) {
    while let Ok((mut w, mut r)) = conn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let response =
                match r.next().await {
                    Ok(Some(frame)) => match control::decode::<Request>(&frame) {
                        Ok(
                            Request::List { prefix, .. } | Request::Watch { prefix } | Request::ListDead { prefix, .. },
                        ) if prefix.len() > KEY_BYTES_MAX => Some(Response::Error(format!(
                            "the prefix is {} bytes, longer than any key (at most {KEY_BYTES_MAX})",
                            prefix.len()
                        ))),
                        Ok(Request::List { after: Some(after), .. } | Request::ListDead { after: Some(after), .. })
                            if after.len() > KEY_BYTES_MAX =>
                        {
                            Some(Response::Error(format!(
                                "the key to list after is {} bytes, longer than any key (at most {KEY_BYTES_MAX})",
                                after.len()
                            )))
                        }
                        Ok(Request::List { prefix, limit, after }) => {
                            // The owner went away mid-listing: nothing to do.
                            let limit = limit.min(control::LIST_LIMIT_MAX);
                            let _ = send_list(&inner, prefix, after, limit, &mut w).await;
                            None
                        }
                        Ok(Request::Watch { prefix }) => {
                            // Ends when the owner goes away or finishes its side: nothing to do.
                            let _ = send_watch(&inner, prefix, &mut w, &mut r).await;
                            None
                        }
                        Ok(request) => Some(answer(&inner, request).await),
                        Err(e) => Some(Response::Error(e)),
                    },
                    Ok(None) => return,
                    Err(e) => Some(Response::Error(e.to_string())),
                };
            if let Some(response) = response
                && send_response(&mut w, &response).await.is_err()
            {
                return;
            }
            if let Ok(mut send) = w.into_inner().await {
                let _ = send.finish();
            }
        });
    }
}

async fn send_response(w: &mut FrameWriter<SendStream>, response: &Response) -> Result<(), lethe_transport::Error> {
    let frame = match control::encode(response) {
        Ok(frame) if frame.len() <= FRAME_BYTES_MAX => frame,
        Ok(frame) => control::encode(&Response::Error(format!(
            "the answer is {} bytes, over the {FRAME_BYTES_MAX}-byte frame limit",
            frame.len()
        )))
        .unwrap_or_default(),
        Err(e) => control::encode(&Response::Error(format!("encoding the answer: {e}"))).unwrap_or_default(),
    };
    w.send(&frame).await?;
    w.flush().await
}

/// Lists live entries under `prefix` (after `after`, if given), at most `limit`, in pages of at most
/// [`LIST_PAGE_BYTES_MAX`], reading [`LIST_SCAN_ITEMS`] entries per turn of the replica's lock
/// (each read starts after the last key read, so the listing is in key order without gaps or
/// repeats; writes made meanwhile may or may not show, as in any scan not taken at one instant).
async fn send_list(
    inner: &Arc<Inner>,
    prefix: Vec<u8>,
    after: Option<Vec<u8>>,
    limit: usize,
    w: &mut FrameWriter<SendStream>,
) -> Result<(), lethe_transport::Error> {
    let node = Node { inner: inner.clone() };
    let mut left = limit;
    let mut range = KeyRange::prefix(prefix.clone());
    match after {
        Some(after) if after.starts_with(&prefix) => range.start = Bound::Excluded(after),
        // Every key with the prefix sorts after it.
        Some(after) if after < prefix => {}
        // Every key with the prefix sorts before it: nothing to list.
        Some(_) => left = 0,
        None => {}
    }
    let (mut page, mut page_bytes) = (Vec::new(), 0);
    loop {
        let want = left.min(LIST_SCAN_ITEMS);
        let items = if want == 0 { Ok(Vec::new()) } else { node.scan(&range, want) };
        let items = match items {
            Ok(items) => items,
            Err(e) => return send_response(w, &Response::Error(e.to_string())).await,
        };
        let last = items.len() < want || want == 0;
        for item in items {
            left -= 1;
            let record = Record::from(item);
            let bytes = record.counted_bytes();
            if !page.is_empty() && page_bytes + bytes > LIST_PAGE_BYTES_MAX {
                send_response(w, &Response::Listed { items: std::mem::take(&mut page), more: true }).await?;
                page_bytes = 0;
            }
            page_bytes += bytes;
            range.start = Bound::Excluded(record.key.clone());
            page.push(record);
        }
        if last || left == 0 {
            return send_response(w, &Response::Listed { items: page, more: false }).await;
        }
    }
}

/// Streams changes under `prefix` to the owner until it finishes its side of the stream (or the
/// connection closes), or the node shuts down. A subscriber that falls behind (its queue is
/// bounded: `crate::watch`) is told how many changes were dropped and goes on with those
/// committed after.
async fn send_watch(
    inner: &Arc<Inner>,
    prefix: Vec<u8>,
    w: &mut FrameWriter<SendStream>,
    r: &mut FrameReader<RecvStream>,
) -> Result<(), lethe_transport::Error> {
    let node = Node { inner: inner.clone() };
    let mut subscription = node.subscribe(prefix);
    let mut stop = inner.shutdown.subscribe();
    send_response(w, &Response::Watching).await?;
    loop {
        let response = tokio::select! {
            change = subscription.next() => match change {
                Ok(change) => Response::Event(Event::from(change)),
                Err(SubscriptionError::Lagged(missed)) => Response::Lagged { missed },
                Err(SubscriptionError::Closed) => Response::Error("the node stopped".to_string()),
            },
            // The owner sends nothing after the request: any end of its side ends the watch.
            _ = r.next() => return Ok(()),
            _ = stop.changed() => Response::Error("the node is shutting down".to_string()),
        };
        let last = matches!(response, Response::Error(_));
        send_response(w, &response).await?;
        if last {
            return Ok(());
        }
    }
}

async fn answer(inner: &Arc<Inner>, request: Request) -> Response {
    let node = Node { inner: inner.clone() };
    let result: Result<Response, NodeError> = async {
        Ok(match request {
            Request::Put { key, value, ttl_ms, metadata } => {
                let receipt = node.put(key, value, PutOptions { ttl_ms, metadata }).await?;
                Response::Written { seq: receipt.dot.seq.0, stamp: receipt.stamp.into() }
            }
            Request::Get { key } => Response::Found(node.get(&key)?.map(|item| Box::new(Record::from(item)))),
            Request::Delete { key } => {
                let receipt = node.delete(key).await?;
                Response::Written { seq: receipt.dot.seq.0, stamp: receipt.stamp.into() }
            }
            Request::Import { entries, dead, mode } => {
                // Dead records first, as a bootstrap sends them; one commit for both.
                let entries = dead
                    .into_iter()
                    .map(DeadRecord::into_entry)
                    .chain(entries.into_iter().map(Record::into_entry))
                    .collect();
                let imported = match mode {
                    ImportMode::Own => node.import(entries),
                    ImportMode::Bootstrap { first } => node.import_as_bootstrap(entries, first),
                };
                match imported {
                    Ok(report) => Response::Imported {
                        applied: report.applied as u64,
                        superseded: report.superseded as u64,
                        stale: report.stale as u64,
                    },
                    Err(NodeError::Import(e)) => match e.index() {
                        Some(index) => Response::ImportRefused { index: index as u64, reason: e.to_string() },
                        None => return Err(NodeError::Import(e)),
                    },
                    Err(e) => return Err(e),
                }
            }
            Request::FinishImport { vector, clock } => {
                let vector: Vec<(ReplicaId, Seq)> = vector.into_iter().map(|(r, s)| (ReplicaId(r), Seq(s))).collect();
                node.finish_import(&VersionVector::from(vector), Hlc(clock))?;
                Response::ImportFinished
            }
            Request::ListDead { prefix, limit, after } => {
                let mut range = KeyRange::prefix(prefix.clone());
                let limit = match after {
                    Some(after) if after.starts_with(&prefix) => {
                        range.start = Bound::Excluded(after);
                        limit
                    }
                    // Every key with the prefix sorts before it: nothing to list.
                    Some(after) if after > prefix => 0,
                    // Every key with the prefix sorts after it.
                    _ => limit,
                };
                let items = node.dead_entries(&range, limit.min(control::DEAD_LIST_LIMIT_MAX))?;
                Response::DeadListed { items: items.into_iter().filter_map(DeadRecord::from_entry).collect() }
            }
            Request::Position => {
                let (replica, vector, clock, blank) = node.position();
                let vector = Vec::from(vector).into_iter().map(|(r, s)| (r.0, s.0)).collect();
                Response::Position { replica: replica.0, vector, clock: clock.0, blank }
            }
            // `serve` answers a listing in pages with `send_list`, a watch with `send_watch`.
            Request::List { .. } | Request::Watch { .. } => {
                Response::Error("a listing or a watch is answered as a stream".to_string())
            }
            Request::Status => Response::Status(Box::new(node.status()?)),
            Request::DeviceAdd { node_id, name } => {
                if name.as_ref().is_some_and(|n| n.len() > crate::DEVICE_NAME_BYTES_MAX) {
                    return Ok(Response::Error(format!(
                        "a device name is at most {} bytes; give a shorter --name",
                        crate::DEVICE_NAME_BYTES_MAX
                    )));
                }
                let id = match node_id.parse::<lethe_transport::NodeId>() {
                    Ok(id) => id,
                    Err(e) => return Ok(Response::Error(format!("`{node_id}` is not a node id: {e}"))),
                };
                Response::DeviceAdded { changed: node.enrol_device(id, name)? }
            }
            Request::DeviceList { after, limit } => {
                let limit = limit.clamp(1, control::DEVICE_LIST_PAGE_MAX);
                // One more than the page: whether there are more.
                let mut items = inner.device_infos(after.as_deref(), limit + 1);
                let more = items.len() > limit;
                items.truncate(limit);
                Response::Devices { items, more }
            }
            Request::DeviceRemove { node_id } => {
                let id = match node_id.parse::<lethe_transport::NodeId>() {
                    Ok(id) => id,
                    Err(e) => return Ok(Response::Error(format!("`{node_id}` is not a node id: {e}"))),
                };
                Response::DeviceRemoved { removed: node.remove_device(id)? }
            }
        })
    }
    .await;
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
