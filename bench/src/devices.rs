//! `lethe bench devices`: the device tier's costs, with engine sessions in one process (like
//! `bench incremental`, no sockets): what an idle device session and an idle member session cost
//! with many devices enrolled, what a fresh device's bootstrap costs while another device is away
//! and tombstones wait for it, against the same live data with no history, and what a member
//! holds per enrolled device.
//!
//! The set-up: `members` members in a mesh; `devices` devices enrolled at the first one (the
//! enrolments travel to the others with the device records), each acknowledging once there, so
//! every record holds an acknowledgement; the idle sessions are measured then. The devices then
//! go quiet past their lease but two: the idle one, kept in sync, and one that goes offline;
//! `live + deleted` keys are written at the first member and `deleted` of them deleted, so the
//! offline device's record holds the tombstones back; then a fresh device bootstraps from the
//! first member, and the offline device is removed.

use anyhow::{Result, bail};
use lethe_engine::device::{DeviceOutcome, sync_device_in_process};
use lethe_engine::session::sync_in_process;
use lethe_engine::{Config, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Role, WriteBatch};
use serde::Serialize;
use std::sync::Arc;

/// The figures of one `bench devices` run.
#[derive(Clone, Debug, Serialize)]
pub struct DevicesReport {
    /// Enrolled devices.
    pub devices: usize,
    /// Members.
    pub members: usize,
    /// Live keys.
    pub live: u64,
    /// Keys deleted while a device was offline (tombstones pending).
    pub deleted: u64,
    /// Bytes of a device's idle session, both ways (goal ≤ 1,024).
    pub idle_session_bytes: u64,
    /// Bytes of an idle member-to-member session, both ways (goal ≤ 4,096).
    pub idle_member_session_bytes: u64,
    /// Bytes of the member session that carried every enrolment to a member that had none.
    pub records_session_bytes: u64,
    /// A fresh device's bootstrap with the deletes pending.
    pub fresh_bootstrap: Bootstrap,
    /// The same live keys bootstrapped with no history at all.
    pub no_history_bootstrap: Bootstrap,
    /// `fresh_bootstrap` against `no_history_bootstrap`, in percent (goal within 2).
    pub fresh_over_no_history_percent: f64,
    /// Tombstones the first member held, pending, when the fresh device bootstrapped.
    pub tombstones_pending: usize,
    /// Tombstones the first member holds after `remove_device` of the offline device and two GC
    /// steps (goal 0).
    pub tombstones_after_remove: usize,
    /// Growth of this process's resident memory while the first member enrolled the devices and
    /// took one acknowledgement from each, per device (goal ≤ 1,024). The store is in memory
    /// (`MemoryStore`), so each record is counted in the member's table and in the store.
    pub member_bytes_per_device: u64,
}

/// One device bootstrap.
#[derive(Clone, Copy, Debug, Serialize)]
pub struct Bootstrap {
    /// Bytes both ways.
    pub wire_bytes: u64,
    /// Live entries received.
    pub live_received: u64,
    /// Tombstones and expired records received (goal 0).
    pub tombstones_received: u64,
    /// One-way trips.
    pub trips: u32,
}

impl From<&DeviceOutcome> for Bootstrap {
    fn from(o: &DeviceOutcome) -> Self {
        Bootstrap {
            wire_bytes: o.device.total_sent() + o.device.total_received(),
            live_received: o.device.download.live_received,
            tombstones_received: o.device.download.tombstones_received,
            trips: o.trips,
        }
    }
}

const T0: u64 = 1_700_000_000_000;
const FIRST_DEVICE: u64 = 1_000_000;

/// The members' device lease here: an hour, so the benchmark's clock can let devices lapse
/// without the members' own (longer) lease.
const BENCH_DEVICE_LEASE_MS: u64 = 3_600_000;

fn open(id: u64, role: Role, clock: &ManualClock) -> Result<Replica<MemoryStore>> {
    let config = Config { role, device_lease_ms: BENCH_DEVICE_LEASE_MS, ..Config::default() };
    Ok(Replica::open(MemoryStore::new(), ReplicaId(id), config, Arc::new(clock.clone()))?)
}

fn key(i: u64) -> Vec<u8> {
    format!("user:{}", &blake3::hash(&i.to_le_bytes()).to_hex()[..19]).into_bytes()
}

fn value(i: u64) -> Vec<u8> {
    blake3::hash(&(i ^ 0x5555).to_le_bytes()).to_hex().as_str().repeat(2).as_bytes()[..100].to_vec()
}

fn write(r: &mut Replica<MemoryStore>, keys: std::ops::Range<u64>, delete: bool) -> Result<()> {
    let mut batch = WriteBatch::new();
    for i in keys {
        if delete {
            batch.delete(key(i));
        } else {
            batch.put(key(i), value(i), PutOptions::default());
        }
        if batch.len() == 1000 {
            r.write(std::mem::take(&mut batch))?;
        }
    }
    if !batch.is_empty() {
        r.write(batch)?;
    }
    Ok(())
}

/// This process's resident memory in bytes (Linux `VmRSS`; 0 elsewhere).
fn resident_bytes() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find_map(|l| l.strip_prefix("VmRSS:")).and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
        })
        .map_or(0, |kb: u64| kb * 1024)
}

fn both_ways(o: &DeviceOutcome) -> u64 {
    o.device.total_sent() + o.device.total_received()
}

/// Runs the benchmark (see the module docs).
pub fn devices(devices: usize, members: usize, live: u64, deleted: u64) -> Result<DevicesReport> {
    if devices < 2 || members == 0 || live == 0 {
        bail!("--devices must be at least 2, --members at least 1 and --live at least 1");
    }
    if devices > lethe_engine::device::DEVICES_MAX {
        bail!("--devices must be at most {}", lethe_engine::device::DEVICES_MAX);
    }
    let clock = ManualClock::new(T0);
    let mut hubs = (1..=members as u64).map(|id| open(id, Role::Member, &clock)).collect::<Result<Vec<_>>>()?;
    for h in &mut hubs {
        for other in 1..=members as u64 {
            h.enrol_member(ReplicaId(other))?;
        }
    }
    // Every member has written, so vectors have a component per member.
    for (i, h) in hubs.iter_mut().enumerate() {
        h.put(format!("from-member-{i}"), "v", PutOptions::default())?;
    }
    let rss_before = resident_bytes();
    let ids: Vec<ReplicaId> = (0..devices as u64).map(|d| ReplicaId(FIRST_DEVICE + d)).collect();
    for &d in &ids {
        hubs[0].enrol_device(d)?;
    }
    // Each device acknowledges once: a device replica syncs with the first member and is
    // dropped (keeping a replica per device would measure the devices, not the member).
    for &d in &ids {
        let mut phone = open(d.0, Role::Device, &clock)?;
        sync_device_in_process(&mut phone, &mut hubs[0])?;
    }
    let member_bytes_per_device = resident_bytes().saturating_sub(rss_before) / devices as u64;
    let mut records_session_bytes = 0;
    for i in 1..members {
        let (first, rest) = hubs.split_at_mut(1);
        let out = sync_in_process(&mut first[0], &mut rest[i - 1], false)?;
        if i == 1 {
            records_session_bytes = out.a.bytes_sent + out.a.bytes_received;
        }
    }
    // An idle device session at the last member, and an idle member session.
    let mut phone = open(ids[0].0, Role::Device, &clock)?;
    let last = members - 1;
    sync_device_in_process(&mut phone, &mut hubs[last])?;
    let idle_session_bytes = both_ways(&sync_device_in_process(&mut phone, &mut hubs[last])?);
    let idle_member_session_bytes = if members > 1 {
        let (first, rest) = hubs.split_at_mut(1);
        sync_in_process(&mut first[0], &mut rest[last - 1], false)?;
        let idle = sync_in_process(&mut first[0], &mut rest[last - 1], false)?;
        idle.a.bytes_sent + idle.a.bytes_received
    } else {
        0
    };
    // The enrolled devices go quiet past their lease (they stop holding collection back); two
    // come back: the idle one, which stays in sync, and one that goes offline afterwards.
    clock.advance(BENCH_DEVICE_LEASE_MS + 1);
    for h in &mut hubs {
        h.collect_garbage()?;
    }
    let mut offline = open(ids[1].0, Role::Device, &clock)?;
    sync_device_in_process(&mut offline, &mut hubs[0])?;
    sync_device_in_process(&mut phone, &mut hubs[0])?;
    // The history at the first member, spread to the other members and to the idle device; the
    // offline device's record holds every tombstone back.
    write(&mut hubs[0], 0..live + deleted, false)?;
    write(&mut hubs[0], live..live + deleted, true)?;
    sync_device_in_process(&mut phone, &mut hubs[0])?;
    for _ in 0..2 {
        for i in 1..members {
            let (first, rest) = hubs.split_at_mut(1);
            sync_in_process(&mut first[0], &mut rest[i - 1], false)?;
        }
    }
    let hub = &mut hubs[0];
    for _ in 0..3 {
        hub.collect_garbage()?;
    }
    let pending = hub.tombstone_count();
    let fresh_id = ReplicaId(FIRST_DEVICE + devices as u64);
    hub.enrol_device(fresh_id)?;
    let mut fresh = open(fresh_id.0, Role::Device, &clock)?;
    let with_history = sync_device_in_process(&mut fresh, hub)?;
    let hub_digest = hub.digest();
    // No history: the same live keys (and the members' first writes) at a member of its own.
    let mut plain = open(1, Role::Member, &clock)?;
    write(&mut plain, 0..live, false)?;
    for i in 0..members {
        plain.put(format!("from-member-{i}"), "v", PutOptions::default())?;
    }
    plain.enrol_device(fresh_id)?;
    let mut fresh2 = open(fresh_id.0, Role::Device, &clock)?;
    let no_history = sync_device_in_process(&mut fresh2, &mut plain)?;
    if fresh.counts().live != plain.counts().live || fresh.digest() != hub_digest {
        bail!("the fresh device does not hold what the member holds");
    }
    // The offline device is removed: two GC steps.
    hub.remove_device(offline.id())?;
    hub.collect_garbage()?;
    hub.collect_garbage()?;
    let (fresh_bootstrap, no_history_bootstrap) = (Bootstrap::from(&with_history), Bootstrap::from(&no_history));
    let fresh_over_no_history_percent =
        (fresh_bootstrap.wire_bytes as f64 / no_history_bootstrap.wire_bytes as f64 - 1.0) * 100.0;
    Ok(DevicesReport {
        devices,
        members,
        live,
        deleted,
        idle_session_bytes,
        idle_member_session_bytes,
        records_session_bytes,
        fresh_bootstrap,
        no_history_bootstrap,
        fresh_over_no_history_percent,
        tombstones_pending: pending,
        tombstones_after_remove: hub.tombstone_count(),
        member_bytes_per_device,
    })
}
