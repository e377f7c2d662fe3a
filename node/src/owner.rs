//! The owner's commands (`lethe --data DIR put/get/del/list/status`): a connection made with the
//! node's own key, one [`Request`] per stream, answered with one [`Response`] (a listing with as
//! many pages as it takes).

use crate::control::{self, LIST_PAGE_BYTES_MAX, LIST_SCAN_ITEMS, Listed, Request, Response};
use crate::node::{Inner, Node, NodeError};
use lethe_engine::session::FRAME_BYTES_MAX;
use lethe_engine::{KeyRange, PutOptions};
use lethe_transport::endpoint::SendStream;
use lethe_transport::{FrameWriter, PeerConnection};
use std::ops::Bound;
use std::sync::Arc;

/// CBOR framing counted per listed entry on top of its key and value (two byte strings and
/// their lengths), so a page's count of bytes stays above what it encodes to.
const LISTED_OVERHEAD_BYTES: usize = 32;

/// Serves the owner's connection until it closes.
pub(crate) async fn serve(inner: Arc<Inner>, conn: PeerConnection) {
    while let Ok((mut w, mut r)) = conn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let response = match r.next().await {
                Ok(Some(frame)) => match control::decode::<Request>(&frame) {
                    Ok(Request::List { prefix, limit }) => {
                        // The owner went away mid-listing: nothing to do.
                        let _ = send_list(&inner, prefix, limit.min(control::LIST_LIMIT_MAX), &mut w).await;
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

/// Lists live entries under `prefix`, at most `limit`, in pages of at most
/// [`LIST_PAGE_BYTES_MAX`], reading [`LIST_SCAN_ITEMS`] entries per turn of the replica's lock
/// (each read starts after the last key read, so the listing is in key order without gaps or
/// repeats; writes made meanwhile may or may not show, as in any scan not taken at one instant).
async fn send_list(
    inner: &Arc<Inner>,
    prefix: Vec<u8>,
    limit: usize,
    w: &mut FrameWriter<SendStream>,
) -> Result<(), lethe_transport::Error> {
    let node = Node { inner: inner.clone() };
    let mut range = KeyRange::prefix(prefix);
    let (mut page, mut page_bytes, mut left) = (Vec::new(), 0, limit);
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
            let bytes = item.key.len() + item.value.len() + LISTED_OVERHEAD_BYTES;
            if !page.is_empty() && page_bytes + bytes > LIST_PAGE_BYTES_MAX {
                send_response(w, &Response::Listed { items: std::mem::take(&mut page), more: true }).await?;
                page_bytes = 0;
            }
            page_bytes += bytes;
            range.start = Bound::Excluded(item.key.clone());
            page.push(Listed { key: item.key, value: item.value });
        }
        if last || left == 0 {
            return send_response(w, &Response::Listed { items: page, more: false }).await;
        }
    }
}

async fn answer(inner: &Arc<Inner>, request: Request) -> Response {
    let node = Node { inner: inner.clone() };
    let result: Result<Response, NodeError> = async {
        Ok(match request {
            Request::Put { key, value, ttl_ms } => {
                let receipt = node.put(key, value, PutOptions { ttl_ms, metadata: None }).await?;
                Response::Written { seq: receipt.dot.seq.0 }
            }
            Request::Get { key } => Response::Value(node.get(&key)?.map(|item| item.value)),
            Request::Delete { key } => Response::Written { seq: node.delete(key).await?.dot.seq.0 },
            // `serve` answers a listing in pages with `send_list`.
            Request::List { .. } => Response::Error("a listing is answered in pages, by send_list".to_string()),
            Request::Status => Response::Status(Box::new(node.status()?)),
        })
    }
    .await;
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
