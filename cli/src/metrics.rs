//! `lethe serve --metrics ADDR`: Prometheus text on `http://ADDR/metrics` and a health check on
//! `http://ADDR/health`.
//!
//! The node counts through the `metrics` facade (`lethe_node::metrics`); this module installs
//! the Prometheus recorder (`metrics-exporter-prometheus`, without its HTTP listener or push
//! gateway) and serves it over a small HTTP/1.1 server of its own, so that `/health` sits beside
//! `/metrics` and every request is bounded here: its head at [`REQUEST_HEAD_BYTES_MAX`] and
//! [`REQUEST_HEAD_TIMEOUT`], each connection at [`REQUEST_TIMEOUT`], and at most
//! [`CONNECTIONS_MAX`] at once. One request per connection (no keep-alive); a request that is not
//! HTTP gets 400, a method other than GET or HEAD 405, an unknown path 404.
//!
//! A connection that is not writing its answer (still waiting for a head, or done) gives its
//! place up to a new one when all are taken, oldest first: idle or slowloris clients cannot
//! starve a monitoring probe, which sends its request as soon as it connects. A new connection
//! is closed unanswered only while all [`CONNECTIONS_MAX`] are writing answers.
//!
//! Neither endpoint has authentication, so the address must be a loopback one unless
//! `--metrics-public` says otherwise.

use anyhow::{Context, Result, bail};
use lethe_node::{Node, Status};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tracing::{debug, info, warn};

/// The longest request head (request line and headers) read; a longer one gets 431.
pub const REQUEST_HEAD_BYTES_MAX: usize = 8 * 1024;
/// What is read and dropped after the answer, at most, so that closing does not reset the
/// connection under the client before it has read the answer.
const REQUEST_DRAIN_BYTES_MAX: usize = 64 * 1024;
/// How long one connection may take, from accept to the last byte of the answer.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a connection may take to send its request head, from accept; it is closed
/// unanswered then.
pub const REQUEST_HEAD_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections open at once; a new one beyond takes the place of the oldest not writing an
/// answer.
pub const CONNECTIONS_MAX: usize = 16;
/// How often the recorder folds histogram samples into its buckets when nobody scrapes (a
/// scrape does it too), so that samples do not pile up in memory.
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// The flags of `lethe serve` for metrics and health.
#[derive(clap::Args, Debug, Default)]
pub struct MetricsArgs {
    /// Serve Prometheus metrics on http://ADDR/metrics and a health check on http://ADDR/health
    /// (200 while the node takes writes, else 503 and why), e.g. 127.0.0.1:9100. A loopback address
    /// unless --metrics-public is given.
    #[arg(long, value_name = "ADDR")]
    pub(crate) metrics: Option<SocketAddr>,
    /// Allow --metrics on an address other than loopback: the endpoints have no authentication,
    /// so put them behind a firewall or proxy. Needs --metrics, here or in the --config file.
    #[arg(long, conflicts_with = "no_metrics_public")]
    pub(crate) metrics_public: bool,
    /// Refuse --metrics on an address other than loopback (the default): overrides
    /// `metrics-public = true` in the --config file.
    #[arg(long)]
    pub(crate) no_metrics_public: bool,
}

/// The metrics endpoint of `lethe serve`, bound but not yet serving; nothing when `--metrics`
/// was not given.
pub struct MetricsServer {
    served: Option<(TcpListener, PrometheusHandle)>,
}

/// Whether `addr` may serve the endpoints: loopback, or anywhere with `public`.
fn check_address(addr: SocketAddr, public: bool) -> Result<()> {
    if !addr.ip().is_loopback() && !public {
        bail!(
            "--metrics {addr} is not a loopback address, and the metrics and health endpoints have no \
             authentication: use 127.0.0.1:PORT (scrape through a proxy or tunnel), or add \
             --metrics-public to serve them on {addr} anyway"
        );
    }
    Ok(())
}

impl MetricsServer {
    /// Checks the address, installs the Prometheus recorder (before the node starts, so that
    /// it counts from the first session) and binds the listener; nothing without `--metrics`.
    pub async fn bind(args: &MetricsArgs) -> Result<MetricsServer> {
        let Some(addr) = args.metrics else { return Ok(MetricsServer { served: None }) };
        check_address(addr, args.metrics_public)?;
        let handle = PrometheusBuilder::new()
            .set_buckets_for_metric(
                Matcher::Full(lethe_node::metrics::WRITE_LATENCY_SECONDS.to_string()),
                lethe_node::metrics::WRITE_LATENCY_BUCKETS_SECONDS,
            )
            .context("configuring the write latency buckets")?
            .install_recorder()
            .context("installing the metrics recorder")?;
        lethe_node::metrics::describe();
        let listener = TcpListener::bind(addr).await.with_context(|| format!("listening for --metrics on {addr}"))?;
        Ok(MetricsServer { served: Some((listener, handle)) })
    }

    /// Serves metrics and health from now on, on tasks of the current runtime: `/health` is 503
    /// "starting" until [`NodeSlot::set`] gives the node, then answers from
    /// [`Node::status_snapshot`] (never waiting for the replica).
    pub fn serve(self) -> NodeSlot {
        let slot = NodeSlot::default();
        let Some((listener, handle)) = self.served else { return slot };
        match listener.local_addr() {
            Ok(addr) => info!("metrics on http://{addr}/metrics, health on http://{addr}/health"),
            Err(e) => warn!("metrics listener has no local address: {e}"),
        }
        let upkeep = handle.clone();
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(UPKEEP_INTERVAL).await;
                upkeep.run_upkeep();
            }
        });
        let state = Arc::new(State { node: slot.clone(), handle });
        tokio::spawn(accept_loop(listener, state));
        slot
    }
}

/// The node the endpoints answer for, once it has started.
#[derive(Clone, Default)]
pub struct NodeSlot(Arc<std::sync::OnceLock<Node>>);

impl NodeSlot {
    /// The node has started: the endpoints answer for it from now on.
    pub fn set(&self, node: &Node) {
        let _ = self.0.set(node.clone());
    }

    /// The node's status snapshot, or `None` while it starts.
    fn status(&self) -> Option<Status> {
        self.0.get().map(Node::status_snapshot)
    }
}

/// What a request is answered from.
struct State {
    node: NodeSlot,
    handle: PrometheusHandle,
}

async fn accept_loop(listener: TcpListener, state: Arc<State>) {
    let connections = Arc::new(Connections::default());
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                warn!("accepting a metrics connection failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Some(slot) = connections.admit() else {
            debug!("{CONNECTIONS_MAX} metrics connections are writing answers; closing a new one unanswered");
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            match tokio::time::timeout(REQUEST_TIMEOUT, serve_connection(stream, &state, &slot)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!("metrics connection: {e}"),
                Err(_) => debug!("metrics connection took longer than {REQUEST_TIMEOUT:?}; closed"),
            }
        });
    }
}

/// The connections open now, by accept order: at most [`CONNECTIONS_MAX`].
#[derive(Default)]
struct Connections {
    table: std::sync::Mutex<ConnectionTable>,
}

#[derive(Default)]
struct ConnectionTable {
    next_id: u64,
    /// Each open connection by id (accept order), with whether it is idle.
    open: BTreeMap<u64, OpenConnection>,
}

struct OpenConnection {
    /// Told when the connection is evicted.
    evict: Arc<Notify>,
    /// Writing its answer: the one phase in which it is not evicted.
    answering: bool,
}

impl Connections {
    fn table(&self) -> std::sync::MutexGuard<'_, ConnectionTable> {
        self.table.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A slot for a new connection: a free one, or else that of the oldest connection not
    /// answering (it is told to close). `None` when every connection is writing an answer.
    fn admit(self: &Arc<Self>) -> Option<Slot> {
        let mut table = self.table();
        if table.open.len() >= CONNECTIONS_MAX {
            let (&oldest, _) = table.open.iter().find(|(_, c)| !c.answering)?;
            if let Some(evicted) = table.open.remove(&oldest) {
                evicted.evict.notify_one();
            }
        }
        let id = table.next_id;
        table.next_id += 1;
        let evict = Arc::new(Notify::new());
        table.open.insert(id, OpenConnection { evict: evict.clone(), answering: false });
        debug_assert!(table.open.len() <= CONNECTIONS_MAX);
        Some(Slot { connections: self.clone(), id, evict })
    }
}

/// One admitted connection's place in [`Connections`], given back when dropped.
struct Slot {
    connections: Arc<Connections>,
    id: u64,
    evict: Arc<Notify>,
}

impl Slot {
    /// Marks the connection as writing its answer (not to be evicted) or not; false if it was
    /// evicted already.
    fn set_answering(&self, answering: bool) -> bool {
        let mut table = self.connections.table();
        table.open.get_mut(&self.id).map(|c| c.answering = answering).is_some()
    }

    /// Resolves once the connection is evicted.
    async fn evicted(&self) {
        self.evict.notified().await;
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.connections.table().open.remove(&self.id);
    }
}

/// What was read of a request.
enum Head {
    /// The request head, up to its blank line.
    Complete(Vec<u8>),
    /// Longer than [`REQUEST_HEAD_BYTES_MAX`].
    TooLarge,
    /// The client closed before the head was complete.
    Closed,
}

/// Reads up to the end of the request head, at most [`REQUEST_HEAD_BYTES_MAX`] bytes.
async fn read_head(stream: &mut TcpStream) -> std::io::Result<Head> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Ok(Head::Closed);
        }
        let searched = head.len().saturating_sub(3);
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head[searched..].windows(4).position(|w| w == b"\r\n\r\n") {
            head.truncate(searched + end);
            return Ok(Head::Complete(head));
        }
        if head.len() > REQUEST_HEAD_BYTES_MAX {
            return Ok(Head::TooLarge);
        }
    }
}

async fn serve_connection(mut stream: TcpStream, state: &State, slot: &Slot) -> std::io::Result<()> {
    let head = tokio::select! {
        head = tokio::time::timeout(REQUEST_HEAD_TIMEOUT, read_head(&mut stream)) => head,
        () = slot.evicted() => {
            debug!("metrics connection sent no request head before a newer one needed its place; closed");
            return Ok(());
        }
    };
    let response = match head {
        Ok(Ok(Head::Complete(head))) => answer(&head, state),
        Ok(Ok(Head::TooLarge)) => Response::text(431, "Request Header Fields Too Large", "request head too large\n"),
        Ok(Ok(Head::Closed)) => return Ok(()),
        Ok(Err(e)) => return Err(e),
        Err(_) => {
            debug!("metrics connection sent no request head within {REQUEST_HEAD_TIMEOUT:?}; closed");
            return Ok(());
        }
    };
    if !slot.set_answering(true) {
        return Ok(());
    }
    stream.write_all(&response.bytes).await?;
    stream.shutdown().await?;
    slot.set_answering(false);
    // Read what the client sent beyond the head (a body, the rest of a head too long) before
    // closing: a socket closed with unread data resets the connection, and the client may lose
    // the answer. Bounded by [`REQUEST_DRAIN_BYTES_MAX`] and the connection's timeout, and given
    // up for a newer connection (the answer is sent).
    let drain = async {
        let mut drained = 0;
        let mut chunk = [0u8; 4096];
        while drained < REQUEST_DRAIN_BYTES_MAX {
            match stream.read(&mut chunk).await? {
                0 => break,
                n => drained += n,
            }
        }
        Ok(())
    };
    tokio::select! {
        drained = drain => drained,
        () = slot.evicted() => Ok(()),
    }
}

/// An encoded HTTP response.
struct Response {
    bytes: Vec<u8>,
}

impl Response {
    fn new(code: u16, reason: &str, content_type: &str, body: &str, with_body: bool) -> Response {
        let mut bytes = format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            body.len()
        )
        .into_bytes();
        if with_body {
            bytes.extend_from_slice(body.as_bytes());
        }
        Response { bytes }
    }

    fn text(code: u16, reason: &str, body: &str) -> Response {
        Response::new(code, reason, "text/plain; charset=utf-8", body, true)
    }
}

/// The answer to one request head.
fn answer(head: &[u8], state: &State) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = std::str::from_utf8(line).unwrap_or_default().trim_end_matches('\r');
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::text(400, "Bad Request", "not an HTTP request\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::text(400, "Bad Request", "only HTTP/1.x is served\n");
    }
    let with_body = match method {
        "GET" => true,
        "HEAD" => false,
        _ => return Response::text(405, "Method Not Allowed", "only GET and HEAD are served\n"),
    };
    let path = target.split('?').next().unwrap_or_default();
    match path {
        "/metrics" => {
            match state.node.status() {
                Some(status) => lethe_node::metrics::record_status(&status),
                None => debug!("metrics: the node is starting, no status to mirror yet"),
            }
            state.handle.run_upkeep();
            let body = state.handle.render();
            Response::new(200, "OK", "text/plain; version=0.0.4; charset=utf-8", &body, with_body)
        }
        "/health" => {
            let (code, reason, body) = health(state.node.status());
            Response::new(code, reason, "text/plain; charset=utf-8", &body, with_body)
        }
        _ => Response::text(404, "Not Found", "not found: try /metrics or /health\n"),
    }
}

/// The answer to `/health`: 200 while the node takes local writes; else 503, with one line per
/// reason saying why and what to do ([`Status::write_refusals`]), or saying the node is still
/// starting (`None`: opening its store, which may wait on the disk).
fn health(status: Option<Status>) -> (u16, &'static str, String) {
    match status {
        Some(status) => {
            let refusals = status.write_refusals();
            if refusals.is_empty() {
                (200, "OK", "ok: the node takes writes\n".to_string())
            } else {
                (503, "Service Unavailable", refusals.iter().map(|r| format!("{r}\n")).collect())
            }
        }
        None => (
            503,
            "Service Unavailable",
            "starting: the node is opening its store and does not take writes yet\n".to_string(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_without_public() {
        assert!(check_address("127.0.0.1:9100".parse().unwrap(), false).is_ok());
        assert!(check_address("[::1]:9100".parse().unwrap(), false).is_ok());
        let refused = check_address("0.0.0.0:9100".parse().unwrap(), false).unwrap_err().to_string();
        assert!(refused.contains("--metrics-public"), "{refused}");
        assert!(check_address("0.0.0.0:9100".parse().unwrap(), true).is_ok());
    }

    #[test]
    fn health_is_200_while_the_node_takes_writes_and_503_with_every_reason_otherwise() {
        assert_eq!(health(Some(Status::default())), (200, "OK", "ok: the node takes writes\n".to_string()));
        let recovering = lethe_node::health::RecoveryStatus { target_seq: 9, own_seq: 4, reissued: 2 };
        let (code, _, body) = health(Some(Status { recovering: Some(recovering), ..Status::default() }));
        assert_eq!(code, 503);
        assert!(body.starts_with("recovering from a restore: ") && body.ends_with("peers\n"), "{body}");
        let (code, _, body) =
            health(Some(Status { recovering: Some(recovering), clock_ahead_ms: Some(9_000), ..Status::default() }));
        assert_eq!(code, 503);
        let lines: Vec<&str> = body.lines().collect();
        assert!(lines.len() == 2 && lines[1].starts_with("clock ahead: "), "{body}");
        let (code, _, body) = health(None);
        assert_eq!(code, 503);
        assert!(body.starts_with("starting: "), "{body}");
        let (code, _, body) = health(Some(Status { store_stalled_ms: Some(6_000), ..Status::default() }));
        assert_eq!(code, 503);
        assert!(body.starts_with("store stalled: ") && body.contains("6000 ms"), "{body}");
    }

    #[tokio::test]
    async fn a_new_connection_takes_the_place_of_the_oldest_not_answering() {
        let connections = Arc::new(Connections::default());
        let slots: Vec<Slot> = (0..CONNECTIONS_MAX).map(|_| connections.admit().unwrap()).collect();
        // The oldest is writing an answer: the second oldest gives its place up.
        assert!(slots[0].set_answering(true));
        let newest = connections.admit().expect("a place for a new connection");
        tokio::time::timeout(Duration::from_secs(10), slots[1].evicted()).await.expect("the second oldest is evicted");
        assert!(!slots[1].set_answering(true), "an evicted connection does not answer");
        assert_eq!(connections.table().open.len(), CONNECTIONS_MAX);
        // With every connection answering, a new one gets no place.
        for slot in slots.iter().skip(2).chain([&newest]) {
            assert!(slot.set_answering(true));
        }
        assert!(connections.admit().is_none());
        // One done answering is idle again, and the first to go.
        assert!(slots[5].set_answering(false));
        let _admitted = connections.admit().expect("the idle connection's place");
        tokio::time::timeout(Duration::from_secs(10), slots[5].evicted()).await.expect("the idle one is evicted");
        drop(slots);
        assert_eq!(connections.table().open.len(), 2, "dropped slots are given back");
    }
}
