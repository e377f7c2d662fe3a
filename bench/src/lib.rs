//! lethe's benchmark harness and the models it is measured against: atServer's commit-log
//! replay and its `skipDeletesUntil` variant ([`baseline`]), and Automerge's sync protocol, each
//! served over the same QUIC transport from the same history ([`bench`](mod@bench)). The `lethe`
//! command runs it as `lethe bench ...`; an embedder of `lethe-node` does not build any of it.

pub mod baseline;
pub mod bench;
pub mod devices;

use anyhow::{Result, bail};
use std::time::{Duration, Instant};

/// Polls `check` every 10 ms until it holds; fails after `limit` with `what`.
pub async fn wait_for(what: &str, limit: Duration, mut check: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + limit;
    while !check()? {
        if Instant::now() > deadline {
            bail!("{what}: not within {} s", limit.as_secs());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Ok(())
}
