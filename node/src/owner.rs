//! The owner's commands (`lethe --data DIR put/get/del/list/status`): a connection made with the
//! node's own key, one [`Request`] per stream, answered with one [`Response`].

use crate::control::{self, Listed, Request, Response};
use crate::node::{Inner, Node, NodeError};
use lethe_engine::{KeyRange, PutOptions};
use lethe_transport::PeerConnection;
use std::sync::Arc;

/// Serves the owner's connection until it closes.
pub(crate) async fn serve(inner: Arc<Inner>, conn: PeerConnection) {
    while let Ok((mut w, mut r)) = conn.accept().await {
        let inner = inner.clone();
        tokio::spawn(async move {
            let response = match r.next().await {
                Ok(Some(frame)) => match control::decode::<Request>(&frame) {
                    Ok(request) => answer(&inner, request).await,
                    Err(e) => Response::Error(e),
                },
                Ok(None) => return,
                Err(e) => Response::Error(e.to_string()),
            };
            let frame = control::encode(&response).unwrap_or_default();
            if w.send(&frame).await.is_ok()
                && let Ok(mut send) = w.into_inner().await
            {
                let _ = send.finish();
            }
        });
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
            Request::List { prefix, limit } => {
                let items = node.scan(&KeyRange::prefix(prefix), limit.min(control::LIST_LIMIT_MAX))?;
                Response::Listed(items.into_iter().map(|i| Listed { key: i.key, value: i.value }).collect())
            }
            Request::Status => Response::Status(Box::new(node.status()?)),
        })
    }
    .await;
    result.unwrap_or_else(|e| Response::Error(e.to_string()))
}
