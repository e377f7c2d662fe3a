//! The owner's connection to the running node of a data directory: loopback QUIC with the
//! node's own key, one control request per stream (`lethe_node::control`).

use anyhow::{Context, Result, anyhow, bail};
use lethe_node::DataDir;
use lethe_node::control::{self, Request, Response};
use lethe_transport::{CloseCode, Endpoint, PeerConnection, TrustList};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

/// How long the node has to accept the connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the node has to send each answer frame (a watch waits for changes without limit).
const ANSWER_TIMEOUT: Duration = Duration::from_secs(60);

/// The data directory `--data` names, or an error saying the command needs it.
pub fn data_dir(data: Option<PathBuf>) -> Result<DataDir> {
    data.map(DataDir::new).ok_or_else(|| anyhow!("this command needs --data DIR (the node's data directory)"))
}

/// A connection to the running node of a data directory, for one or many requests.
pub struct Client {
    runtime: tokio::runtime::Runtime,
    endpoint: Endpoint,
    conn: PeerConnection,
}

impl Client {
    /// Connects to the node of `data` at the address it wrote when it started.
    pub fn connect(data: Option<PathBuf>) -> Result<Client> {
        let dir = data_dir(data)?;
        let identity = dir.identity()?;
        let id = identity.id();
        let mut addr = dir.addr().with_context(|| {
            format!(
                "the node of {} is not running (start it with `lethe serve --data {}`)",
                dir.path().display(),
                dir.path().display()
            )
        })?;
        if addr.ip().is_unspecified() {
            addr.set_ip(match addr.ip() {
                IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
                IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
            });
        }
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().context("starting tokio")?;
        let (endpoint, conn) = runtime.block_on(async {
            let local = SocketAddr::new(
                if addr.is_ipv4() { Ipv4Addr::LOCALHOST.into() } else { Ipv6Addr::LOCALHOST.into() },
                0,
            );
            let endpoint = Endpoint::bind(local, identity, TrustList::default())?;
            let not_answering = || {
                anyhow!(
                    "the node of {} is not answering at {addr}; is `lethe serve --data {}` running?",
                    dir.path().display(),
                    dir.path().display()
                )
            };
            let conn = tokio::time::timeout(CONNECT_TIMEOUT, endpoint.connect(addr, id))
                .await
                .map_err(|_| not_answering())?
                .map_err(|_| not_answering())?;
            anyhow::Ok((endpoint, conn))
        })?;
        Ok(Client { runtime, endpoint, conn })
    }

    /// Sends one request and returns its one answer. An error answer is an error.
    pub fn request(&self, request: &Request) -> Result<Response> {
        let mut answer = None;
        self.request_pages(request, |response| {
            answer = Some(response);
            Ok(false)
        })?;
        answer.ok_or_else(|| anyhow!("the node closed the stream without answering"))
    }

    /// Sends one request and hands each answer frame to `on_answer`, which says whether another
    /// follows (a listing comes in pages). An error answer ends it with an error.
    pub fn request_pages(&self, request: &Request, mut on_answer: impl FnMut(Response) -> Result<bool>) -> Result<()> {
        self.runtime.block_on(async {
            let (mut w, mut r) = self.conn.open().await?;
            w.send(&control::encode(request).map_err(|e| anyhow!(e))?).await?;
            let mut send = w.into_inner().await?;
            send.finish().context("sending the request")?;
            loop {
                let frame = tokio::time::timeout(ANSWER_TIMEOUT, r.next())
                    .await
                    .map_err(|_| anyhow!("the node did not answer within {} s", ANSWER_TIMEOUT.as_secs()))??
                    .ok_or_else(|| anyhow!("the node closed the stream without answering"))?;
                match control::decode::<Response>(&frame).map_err(|e| anyhow!(e))? {
                    Response::Error(e) => bail!("{e}"),
                    response => {
                        if !on_answer(response)? {
                            return Ok(());
                        }
                    }
                }
            }
        })
    }

    /// Sends `request` (a watch) and hands every answer to `on_answer` until SIGINT or SIGTERM,
    /// or until `on_answer` says to stop; then ends the stream, which ends the watch at the node.
    pub fn stream_until_interrupted(
        &self,
        request: &Request,
        mut on_answer: impl FnMut(Response) -> Result<bool>,
    ) -> Result<()> {
        self.runtime.block_on(async {
            let (mut w, mut r) = self.conn.open().await?;
            w.send(&control::encode(request).map_err(|e| anyhow!(e))?).await?;
            w.flush().await?;
            let interrupted = crate::commands::serve::shutdown_signal();
            tokio::pin!(interrupted);
            loop {
                let frame = tokio::select! {
                    frame = r.next() => frame?.ok_or_else(|| anyhow!("the node ended the watch"))?,
                    reason = &mut interrupted => { reason?; break; }
                };
                match control::decode::<Response>(&frame).map_err(|e| anyhow!(e))? {
                    Response::Error(e) => bail!("{e}"),
                    response => {
                        if !on_answer(response)? {
                            break;
                        }
                    }
                }
            }
            // Finishing our side tells the node the watch is over.
            if let Ok(mut send) = w.into_inner().await {
                let _ = send.finish();
            }
            Ok(())
        })
    }

    /// Closes the connection and waits for the close to reach the node.
    pub fn close(self) {
        self.conn.close(CloseCode::Done, "done");
        self.runtime.block_on(self.endpoint.wait_idle());
    }
}

/// Sends one request to the node of `data` on a connection of its own.
pub fn request(data: Option<PathBuf>, request: &Request) -> Result<Response> {
    let client = Client::connect(data)?;
    let answer = client.request(request);
    client.close();
    answer
}
