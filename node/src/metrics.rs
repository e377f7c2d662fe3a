//! What the node counts, through the [`metrics`] facade only: the names (constants), their
//! descriptions ([`describe`]) and one small function per point that counts, so the node's code
//! makes single-line calls.
//!
//! The node installs no recorder. With none installed every call here is a no-op (a load of the
//! global recorder pointer); an embedder installs its own (Prometheus, StatsD, ...) before
//! [`crate::Node::start`], and the `lethe` command installs a Prometheus one for
//! `serve --metrics`. Counters count from the node's start; the gauges that mirror
//! [`Status`] (keys, tombstones, peers, the store) are set by [`record_status`], which whoever
//! exports them calls before each export.
//!
//! Labels take a fixed set of values (`&'static str`), so a peer cannot grow the number of
//! series.

use crate::node::Status;
use lethe_engine::session::{Mode, SessionStats};
use metrics::{Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram};
use std::time::Duration;

/// Gauge: live keys (`status.live`).
pub const LIVE_KEYS: &str = "lethe_live_keys";
/// Gauge: tombstones not yet collected (`status.tombstones`).
pub const TOMBSTONES: &str = "lethe_tombstones";
/// Gauge: expired records not yet collected (`status.expired`).
pub const EXPIRED_RECORDS: &str = "lethe_expired_records";
/// Gauge: peers connected now (`status.connected`).
pub const CONNECTED_PEERS: &str = "lethe_connected_peers";
/// Gauge: on a member, devices connected to it now (`status.devices_connected`).
pub const CONNECTED_DEVICES: &str = "lethe_connected_devices";
/// Gauge: device sessions a member runs now (`status.device_sessions`; at most
/// `NodeConfig::device_sessions_max`).
pub const DEVICE_SESSIONS: &str = "lethe_device_sessions";
/// Gauge: the most device sessions a member ran at once since it started
/// (`status.device_sessions_peak`).
pub const DEVICE_SESSIONS_PEAK: &str = "lethe_device_sessions_peak";
/// Counter: news frames a member sent to connected devices, each asking for a session
/// (`status.device_news_sent`).
pub const DEVICE_NEWS_SENT: &str = "lethe_device_news_sent_total";
/// Gauge: by how many ms this node's clock is ahead of its peers' while local writes are
/// refused for it (`status.clock_ahead_ms`), else 0.
pub const CLOCK_AHEAD_MS: &str = "lethe_clock_ahead_ms";
/// Gauge: 1 while the store is failed (`status.store_error`), else 0.
pub const STORE_FAILED: &str = "lethe_store_failed";
/// Gauge: 1 while the node recovers from a restore from an older copy of its store and refuses
/// local writes for it (`status.recovering`), else 0.
pub const RECOVERING: &str = "lethe_recovering";
/// Counter: times the store was reopened after a failure.
pub const STORE_REOPENS: &str = "lethe_store_reopens_total";
/// Counter: sync sessions ended, by `mode` (see [`mode_label`]) and `outcome` (see
/// [`SessionOutcome`]).
pub const SESSIONS: &str = "lethe_sessions_total";
/// Counter: bytes of sync frames received from peers (sessions and live pushes; CBOR frames, as
/// `status.bytes_received`).
pub const BYTES_RECEIVED: &str = "lethe_bytes_received_total";
/// Counter: bytes of sync frames sent to peers (as `status.bytes_sent`).
pub const BYTES_SENT: &str = "lethe_bytes_sent_total";
/// Counter: bytes of sync frames received from peers as they crossed the wire (zstd-compressed
/// from 512 bytes up; `status.wire_bytes_received`).
pub const WIRE_BYTES_RECEIVED: &str = "lethe_wire_bytes_received_total";
/// Counter: bytes of sync frames sent to peers as they crossed the wire
/// (`status.wire_bytes_sent`).
pub const WIRE_BYTES_SENT: &str = "lethe_wire_bytes_sent_total";
/// Counter: entries received from peers, by `kind`: `live` (values) or `dead` (tombstones and
/// expired records).
pub const ENTRIES_RECEIVED: &str = "lethe_entries_received_total";
/// Counter: live push frames, by `direction`: `sent` or `received`.
pub const PUSHES: &str = "lethe_pushes_total";
/// Counter: live pushes whose base this node's vector did not cover (a session follows).
pub const PUSH_GAPS: &str = "lethe_push_gaps_total";
/// Counter: refusals for clock drift, by `kind`: `remote` (a peer's stamp too far ahead of this
/// node's clock: the session or push was refused) or `local_write` (a local write refused
/// because this node's clock is ahead of its peers').
pub const DRIFT_REJECTIONS: &str = "lethe_drift_rejections_total";
/// Histogram, seconds: from a local `put` or `delete` call to its write being durable
/// (successful writes only; group commit makes concurrent writes share one fsync).
pub const WRITE_LATENCY_SECONDS: &str = "lethe_write_latency_seconds";

/// Bucket bounds for [`WRITE_LATENCY_SECONDS`], in seconds: from a fast fsync to a stalled disk.
pub const WRITE_LATENCY_BUCKETS_SECONDS: &[f64] =
    &[0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0];

/// How a session ended, from this side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SessionOutcome {
    /// Both flows ran to the end with every entry (`Done` both ways).
    Complete,
    /// It ran to the end, but a flow held entries back for drift (`Partial` either way); they
    /// follow once the clocks allow.
    Partial,
    /// This node ended it because the peer broke the protocol or sent data the replica refuses
    /// (the connection is closed with a reason).
    Refused,
    /// It ended early otherwise: the peer went away, the transport failed, or this node's own
    /// store failed.
    Failed,
}

impl SessionOutcome {
    /// The label value.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            SessionOutcome::Complete => "complete",
            SessionOutcome::Partial => "partial",
            SessionOutcome::Refused => "refused",
            SessionOutcome::Failed => "failed",
        }
    }

    /// The outcome of a session that ran to the end.
    #[must_use]
    pub fn of_finished(stats: &SessionStats) -> SessionOutcome {
        if stats.held_back > 0 || stats.partial_received { SessionOutcome::Partial } else { SessionOutcome::Complete }
    }
}

/// The `mode` label of a session: how this side sent its data (`nothing`, `delta`, `bootstrap`,
/// `reconcile`), `anti_entropy` for a reconciliation either side asked for on its timer, or
/// `undecided` for a session that ended before the peer's handshake arrived.
#[must_use]
pub fn mode_label(stats: &SessionStats) -> &'static str {
    match stats.mode {
        _ if stats.anti_entropy => "anti_entropy",
        None => "undecided",
        Some(Mode::Nothing) => "nothing",
        Some(Mode::Delta) => "delta",
        Some(Mode::Bootstrap) => "bootstrap",
        Some(Mode::Reconcile) => "reconcile",
    }
}

/// Describes every metric (help text and unit) to the installed recorder, and makes the
/// unlabelled counters show as 0 before anything happened. Call once, after installing a
/// recorder and before [`crate::Node::start`]; without it the metrics still count, undescribed.
pub fn describe() {
    describe_gauge!(LIVE_KEYS, Unit::Count, "Live keys.");
    describe_gauge!(TOMBSTONES, Unit::Count, "Tombstones not yet collected.");
    describe_gauge!(EXPIRED_RECORDS, Unit::Count, "Expired records not yet collected.");
    describe_gauge!(CONNECTED_PEERS, Unit::Count, "Peers connected now.");
    describe_gauge!(CONNECTED_DEVICES, Unit::Count, "Devices connected to this member now.");
    describe_gauge!(DEVICE_SESSIONS, Unit::Count, "Device sessions running now.");
    describe_gauge!(DEVICE_SESSIONS_PEAK, Unit::Count, "The most device sessions that ran at once.");
    describe_counter!(DEVICE_NEWS_SENT, Unit::Count, "News frames sent to connected devices.");
    describe_gauge!(
        CLOCK_AHEAD_MS,
        Unit::Milliseconds,
        "How far this clock is ahead of the peers' (local writes refused)."
    );
    describe_gauge!(STORE_FAILED, "1 while the store is failed (writes refused), else 0.");
    describe_gauge!(RECOVERING, "1 while recovering from a restore (local writes refused), else 0.");
    describe_counter!(STORE_REOPENS, Unit::Count, "Times the store was reopened after a failure.");
    describe_counter!(SESSIONS, Unit::Count, "Sync sessions ended, by mode and outcome.");
    describe_counter!(BYTES_RECEIVED, Unit::Bytes, "Bytes of sync frames received from peers.");
    describe_counter!(BYTES_SENT, Unit::Bytes, "Bytes of sync frames sent to peers.");
    describe_counter!(WIRE_BYTES_RECEIVED, Unit::Bytes, "Bytes of sync frames received from peers, as compressed.");
    describe_counter!(WIRE_BYTES_SENT, Unit::Bytes, "Bytes of sync frames sent to peers, as compressed.");
    describe_counter!(ENTRIES_RECEIVED, Unit::Count, "Entries received from peers, live or dead.");
    describe_counter!(PUSHES, Unit::Count, "Live push frames sent and received.");
    describe_counter!(PUSH_GAPS, Unit::Count, "Live pushes whose base this vector did not cover.");
    describe_counter!(DRIFT_REJECTIONS, Unit::Count, "Refusals for clock drift, remote stamps or local writes.");
    describe_histogram!(WRITE_LATENCY_SECONDS, Unit::Seconds, "From a local put or delete call to durable.");
    for name in
        [STORE_REOPENS, BYTES_RECEIVED, BYTES_SENT, WIRE_BYTES_RECEIVED, WIRE_BYTES_SENT, PUSH_GAPS, DEVICE_NEWS_SENT]
    {
        counter!(name).increment(0);
    }
}

/// Sets the gauges that mirror `status`.
pub fn record_status(status: &Status) {
    gauge!(LIVE_KEYS).set(status.live as f64);
    gauge!(TOMBSTONES).set(status.tombstones as f64);
    gauge!(EXPIRED_RECORDS).set(status.expired as f64);
    gauge!(CONNECTED_PEERS).set(status.connected.len() as f64);
    gauge!(CONNECTED_DEVICES).set(status.devices_connected as f64);
    gauge!(DEVICE_SESSIONS).set(status.device_sessions as f64);
    gauge!(DEVICE_SESSIONS_PEAK).set(status.device_sessions_peak as f64);
    gauge!(CLOCK_AHEAD_MS).set(status.clock_ahead_ms.unwrap_or(0) as f64);
    gauge!(STORE_FAILED).set(if status.store_error.is_some() { 1.0 } else { 0.0 });
    gauge!(RECOVERING).set(if status.recovering.is_some() { 1.0 } else { 0.0 });
}

/// A session ended: `stats` as far as it got.
pub(crate) fn session_ended(stats: &SessionStats, outcome: SessionOutcome) {
    counter!(SESSIONS, "mode" => mode_label(stats), "outcome" => outcome.label()).increment(1);
}

/// Sync frame bytes sent.
pub(crate) fn bytes_sent(bytes: u64) {
    counter!(BYTES_SENT).increment(bytes);
}

/// Sync frame bytes as they crossed the wire (compressed).
pub(crate) fn wire_bytes(sent: u64, received: u64) {
    if sent > 0 {
        counter!(WIRE_BYTES_SENT).increment(sent);
    }
    if received > 0 {
        counter!(WIRE_BYTES_RECEIVED).increment(received);
    }
}

/// Sync frame bytes and entries received.
pub(crate) fn received(live: u64, dead: u64, bytes: u64) {
    counter!(BYTES_RECEIVED).increment(bytes);
    if live > 0 {
        counter!(ENTRIES_RECEIVED, "kind" => "live").increment(live);
    }
    if dead > 0 {
        counter!(ENTRIES_RECEIVED, "kind" => "dead").increment(dead);
    }
}

/// Live push frames sent.
pub(crate) fn pushes_sent(frames: u64) {
    counter!(PUSHES, "direction" => "sent").increment(frames);
}

/// A live push frame received; `gap`: its base was not covered.
pub(crate) fn push_received(gap: bool) {
    counter!(PUSHES, "direction" => "received").increment(1);
    if gap {
        counter!(PUSH_GAPS).increment(1);
    }
}

/// A peer's stamp too far ahead was refused.
pub(crate) fn remote_drift_rejected() {
    counter!(DRIFT_REJECTIONS, "kind" => "remote").increment(1);
}

/// A local write was refused because this node's clock is ahead of its peers'.
pub(crate) fn local_write_drift_rejected() {
    counter!(DRIFT_REJECTIONS, "kind" => "local_write").increment(1);
}

/// A news frame was sent to a device.
pub(crate) fn device_news_sent() {
    counter!(DEVICE_NEWS_SENT).increment(1);
}

/// The store was reopened after a failure.
pub(crate) fn store_reopened() {
    counter!(STORE_REOPENS).increment(1);
}

/// A local write became durable `latency` after the call.
pub(crate) fn write_durable(latency: Duration) {
    histogram!(WRITE_LATENCY_SECONDS).record(latency.as_secs_f64());
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_finished_session_is_partial_when_either_flow_held_entries_back() {
        let mut stats = SessionStats { mode: Some(Mode::Delta), ..SessionStats::default() };
        assert_eq!(SessionOutcome::of_finished(&stats), SessionOutcome::Complete);
        stats.held_back = 2;
        assert_eq!(SessionOutcome::of_finished(&stats), SessionOutcome::Partial);
        stats.held_back = 0;
        stats.partial_received = true;
        assert_eq!(SessionOutcome::of_finished(&stats), SessionOutcome::Partial);
    }

    #[test]
    fn anti_entropy_is_its_own_mode_and_an_early_end_is_undecided() {
        let mut stats = SessionStats::default();
        assert_eq!(mode_label(&stats), "undecided");
        stats.mode = Some(Mode::Bootstrap);
        assert_eq!(mode_label(&stats), "bootstrap");
        stats.mode = Some(Mode::Reconcile);
        stats.anti_entropy = true;
        assert_eq!(mode_label(&stats), "anti_entropy");
    }
}
