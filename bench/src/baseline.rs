//! A model of the sync lethe replaces: atServer's commit-log replay (2024), as docs/design.md §7
//! describes it. It is a model, not atServer: it keeps the same log and sends the same pages, so
//! its bytes can be set beside lethe's for the same history.
//!
//! - The server's commit log holds one entry per key (its latest operation: `+` create, `*`
//!   update, `-` delete) with a global increasing commit id; an update or delete moves the key's
//!   entry to a new id.
//! - TTL expiry is a delete: the server's expiry job deletes the key and logs it.
//! - A new client asks from id -1 and pulls pages of at most 100 entries (and at most 5 MiB),
//!   each a JSON array of `{atKey, value, metadata{...all fields as strings...}, commitId,
//!   operation}`, deletes with `value: null`, until it reaches the server's latest id.
//! - With `skip_deletes_until` (atServer late 2024), an initial sync leaves out deletes with an id
//!   up to the server's latest at the start, except the entry at the latest id itself.

use serde::Serialize;
use std::collections::BTreeMap;

/// Entries per page (the server's default).
pub const PAGE_ENTRIES: usize = 100;
/// Bytes per page at most.
pub const PAGE_BYTES_MAX: usize = 5 << 20;

#[derive(Clone, Debug)]
struct LogEntry {
    key: String,
    op: char,
    value: Option<String>,
    at_ms: u64,
    ttl_ms: Option<u64>,
}

/// What one replay from scratch costs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct ReplayCost {
    /// Bytes of the JSON pages (requests not counted).
    pub bytes: u64,
    /// Pages, one round trip each.
    pub round_trips: u64,
    /// Entries received.
    pub entries: u64,
    /// Of them, deletes.
    pub deletes: u64,
}

/// The commit log of one atServer, fed with the same writes as the lethe server.
#[derive(Clone, Debug, Default)]
pub struct CommitLogModel {
    next_id: u64,
    ids: BTreeMap<String, u64>,
    log: BTreeMap<u64, LogEntry>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct WireEntry<'a> {
    at_key: &'a str,
    value: Option<&'a str>,
    metadata: Option<BTreeMap<&'static str, String>>,
    commit_id: u64,
    operation: String,
}

impl CommitLogModel {
    /// An empty log.
    #[must_use]
    pub fn new() -> CommitLogModel {
        CommitLogModel::default()
    }

    fn append(&mut self, entry: LogEntry) {
        if let Some(old) = self.ids.insert(entry.key.clone(), self.next_id) {
            self.log.remove(&old);
        }
        self.log.insert(self.next_id, entry);
        self.next_id += 1;
    }

    /// A create or update at `at_ms`, with an optional TTL.
    pub fn put(&mut self, key: &str, value: &str, at_ms: u64, ttl_ms: Option<u64>) {
        let live = self.ids.get(key).and_then(|id| self.log.get(id)).is_some_and(|e| e.op != '-');
        let op = if live { '*' } else { '+' };
        self.append(LogEntry { key: key.to_string(), op, value: Some(value.to_string()), at_ms, ttl_ms });
    }

    /// A delete.
    pub fn delete(&mut self, key: &str, at_ms: u64) {
        self.append(LogEntry { key: key.to_string(), op: '-', value: None, at_ms, ttl_ms: None });
    }

    /// The expiry job at `now_ms`: every live key whose TTL passed is deleted (and logged).
    pub fn expire(&mut self, now_ms: u64) {
        let expired: Vec<String> = self
            .log
            .values()
            .filter(|e| e.op != '-' && e.ttl_ms.is_some_and(|t| e.at_ms + t <= now_ms))
            .map(|e| e.key.clone())
            .collect();
        for key in expired {
            self.delete(&key, now_ms);
        }
    }

    /// Entries in the log (one per key ever written).
    #[must_use]
    pub fn len(&self) -> usize {
        self.log.len()
    }

    /// Whether nothing was ever written.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.log.is_empty()
    }

    fn wire(id: u64, e: &LogEntry) -> WireEntry<'_> {
        let metadata = (e.op != '-').then(|| metadata(e));
        WireEntry { at_key: &e.key, value: e.value.as_deref(), metadata, commit_id: id, operation: e.op.to_string() }
    }

    /// The server's latest commit id.
    #[must_use]
    pub fn latest(&self) -> Option<u64> {
        self.log.keys().next_back().copied()
    }

    /// One page of a sync: entries with an id above `from` (all with `None`), at most
    /// [`PAGE_ENTRIES`] and [`PAGE_BYTES_MAX`], as the JSON array the server sends. With
    /// `skip_until = Some(S)`, deletes with an id up to S are left out, except the entry at the
    /// latest id (the server still walks them).
    #[must_use]
    pub fn page(&self, from: Option<u64>, skip_until: Option<u64>) -> Page {
        let latest = self.latest();
        let start = from.map_or(0, |f| f.saturating_add(1));
        let mut page = Page { json: vec![b'['], ..Page::default() };
        for (&id, e) in self.log.range(start..) {
            page.last_id = Some(id);
            if skip_until.is_some_and(|s| e.op == '-' && id <= s && Some(id) != latest) {
                continue;
            }
            let json = serde_json::to_vec(&Self::wire(id, e)).unwrap_or_default();
            if page.entries > 0 && page.json.len() + json.len() + 1 > PAGE_BYTES_MAX {
                page.last_id = Some(id - 1);
                break;
            }
            if page.entries > 0 {
                page.json.push(b',');
            }
            page.json.extend_from_slice(&json);
            page.entries += 1;
            page.deletes += u64::from(e.op == '-');
            if page.entries == PAGE_ENTRIES as u64 {
                break;
            }
        }
        page.json.push(b']');
        page
    }

    /// A new client's initial sync from id -1, paged as [`CommitLogModel::page`] does it, without
    /// a network: what it would cost. With `skip_deletes_until`, as late-2024 atServer does it.
    #[must_use]
    pub fn replay(&self, skip_deletes_until: bool) -> ReplayCost {
        let latest = self.latest();
        let skip = if skip_deletes_until { latest } else { None };
        // The client first asks for the latest id; then one page per round trip.
        let mut cost = ReplayCost { round_trips: 1, ..ReplayCost::default() };
        let mut from = None;
        while from < latest {
            let page = self.page(from, skip);
            cost.bytes += page.json.len() as u64;
            cost.round_trips += 1;
            cost.entries += page.entries;
            cost.deletes += page.deletes;
            from = page.last_id;
        }
        cost
    }
}

/// One page of a sync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Page {
    /// The JSON array sent.
    pub json: Vec<u8>,
    /// The last commit id the page covers (walked, sent or skipped).
    pub last_id: Option<u64>,
    /// Entries in it.
    pub entries: u64,
    /// Of them, deletes.
    pub deletes: u64,
}

/// atServer's metadata: every field, as strings (absent ones as "null").
fn metadata(e: &LogEntry) -> BTreeMap<&'static str, String> {
    let at = e.at_ms.to_string();
    let null = || "null".to_string();
    BTreeMap::from([
        ("availableAt", null()),
        ("ccd", "false".to_string()),
        ("createdAt", at.clone()),
        ("createdBy", "@server".to_string()),
        ("dataSignature", null()),
        ("encAlgo", null()),
        ("encKeyName", null()),
        ("encoding", null()),
        ("expiresAt", e.ttl_ms.map_or_else(null, |t| (e.at_ms + t).to_string())),
        ("isBinary", "false".to_string()),
        ("isEncrypted", "false".to_string()),
        ("ivNonce", null()),
        ("pubKeyCS", null()),
        ("refreshAt", null()),
        ("sharedKeyEnc", null()),
        ("skeEncAlgo", null()),
        ("skeEncKeyName", null()),
        ("status", "active".to_string()),
        ("ttb", "0".to_string()),
        ("ttl", e.ttl_ms.unwrap_or(0).to_string()),
        ("ttr", "0".to_string()),
        ("updatedAt", at),
        ("version", "0".to_string()),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_key_and_deletes_travel_unless_skipped() {
        let mut log = CommitLogModel::new();
        for i in 0..250 {
            log.put(&format!("k{i}"), "v", 1000, None);
        }
        log.put("k0", "v2", 1001, None);
        for i in 0..200 {
            log.delete(&format!("k{i}"), 1002);
        }
        log.put("ttl", "v", 1003, Some(10));
        log.expire(2000);
        assert_eq!(log.len(), 251, "one entry per key ever written");
        let full = log.replay(false);
        assert_eq!((full.entries, full.deletes), (251, 201));
        assert_eq!(full.round_trips, 1 + 3, "the latest id, then three pages");
        let skipped = log.replay(true);
        // Every delete is skipped except the one at the latest id (the expiry of "ttl").
        assert_eq!((skipped.entries, skipped.deletes), (51, 1));
        assert!(skipped.bytes < full.bytes && skipped.round_trips < full.round_trips);
    }
}
