//! The device tier in the simulation (docs/design.md §8): 2–20 `Role::Device` replicas on
//! in-memory stores that sync only with members, through `DeviceSession`/`DeviceService` frames
//! on lossy links, and the checks of I9–I12 on top of I1–I6.
//!
//! What devices do at random points: write, delete and write with TTLs (their writes queue for
//! upload); open a session with a member; go offline for many steps; sessions lose frames (the
//! session ends, as a reset stream would) and are cut just after a member admitted an upload and
//! before its answer arrived; a device's own frames to a member are sometimes duplicated or
//! swapped (a member must survive any frame sequence from a device: I10); devices crash and
//! restart from their durable store; time jumps past the device lease; a fresh device joins
//! while others are offline; the operator removes a device at every member; a **hostile**
//! device (in some seeds) feeds forged frames to a member's `DeviceService`.
//!
//! Enrolment and removal do not travel between members in the engine yet, so the operator
//! enrols (and removes) each device at **every** member: any member may then serve it.
//!
//! Checks: I12 on every session of a device that started empty (no dead record received); I11
//! on every upload a member handles (a member issues at most one dot per device write, and only
//! for what is still the device's local winner when the upload is read); I10 on every forged
//! frame (a refused frame changes nothing at the member; an accepted one changes nothing but the
//! hostile device's own record); removal (a removed device's handshake is refused as not
//! enrolled); at the end, I9 (an idle device session costs at most [`IDLE_DEVICE_BYTES_MAX`]
//! bytes) and, with the members, I1–I3, I5 and I6 (see [`Fleet::converging`]). I2 at every
//! step, as for members, with the exception accounted: a device's collection (in its GC steps and
//! at a member's handshake) counts as one by the members whose frontier covered the dot.

use super::{Choices, Node, Sim, SkewedClock, Violation, entry_of, violation};
use lethe_engine::device::records::RecordWire;
use lethe_engine::device::{
    Admission, DeviceHello, DeviceService, DeviceSession, anti_entropy_device_in_process, sync_device_in_process,
};
use lethe_engine::session::{Message, PROTOCOL_VERSION, Session, SyncError};
use lethe_engine::{
    Config, Dot, Entry, Hlc, KeyRange, ManualClock, MemoryStore, Payload, PutOptions, Replica, ReplicaId, Role, Seq,
    Snapshot, Stamp, Storage, Value, VersionVector, WallClock,
};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::AtomicI64;

/// I9: the most bytes (both ways) an idle device session may cost with up to three members.
pub const IDLE_DEVICE_BYTES_MAX: u64 = 1024;

/// Device ids start here (members are 1–7; the I4 check's fresh replica is 1000).
const DEVICE_ID_BASE: u64 = 101;

fn device_config() -> Config {
    Config { role: Role::Device, ..super::member_config() }
}

/// Where a device is in its life.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Life {
    /// Not yet created: joins later, fresh, while others may be offline.
    Unborn,
    /// Enrolled at every member.
    Enrolled,
    /// Removed by the operator at every member: its sessions are refused from then on.
    Removed,
}

/// One device.
struct Device {
    id: ReplicaId,
    replica: Option<Replica<MemoryStore>>,
    crashed_store: Option<MemoryStore>,
    clock: Arc<SkewedClock>,
    life: Life,
    /// Offline (no sessions) until this step.
    offline_until: usize,
    /// Local writes made (its upload counter: I6 for devices).
    writes: u64,
    /// As [`Node::floor`]: the highest stamp held per key (I2 at every step).
    floor: BTreeMap<Vec<u8>, Stamp>,
    /// Sends forged frames besides its honest sessions.
    hostile: bool,
}

impl Device {
    fn open(&mut self) -> Result<(), Violation> {
        let store = self.crashed_store.take().unwrap_or_default();
        let mut replica = Replica::open(store, self.id, device_config(), self.clock.clone())
            .map_err(|e| violation("I3 restart", format!("device {} did not reopen: {e}", self.id)))?;
        replica.set_signer(super::stand_in_signer(self.id));
        self.replica = Some(replica);
        Ok(())
    }
}

/// A device session in flight between device `device` and member `member`.
struct DeviceLink {
    device: usize,
    member: usize,
    ds: DeviceSession,
    ms: DeviceService,
    to_member: VecDeque<Vec<u8>>,
    to_device: VecDeque<Vec<u8>>,
    /// The device held nothing when the session opened (I12 applies).
    fresh: bool,
    /// Uploads the member admitted whose answer has not reached the device yet.
    answers_in_flight: usize,
}

/// The devices of a run and what the checks need to remember about them.
#[derive(Default)]
pub(super) struct Fleet {
    devices: Vec<Device>,
    links: Vec<DeviceLink>,
    /// Fresh dots issued per (device, upload seq, member): at most one each (I11).
    admissions: BTreeMap<(ReplicaId, Seq, usize), u32>,
    /// Stamps of device writes some member admitted under a fresh dot.
    admitted: BTreeSet<Stamp>,
    /// The random phase's step count, for offline stretches.
    step: usize,
}

impl Fleet {
    /// The devices for a run with up to `devices_max` (none, drawing no choice, when 0), all
    /// enrolled at every member of `nodes`; a quarter of them (at least one) join later. In 30%
    /// of the runs with two devices or more, the last one is hostile.
    pub(super) fn new<C: Choices>(
        choices: &mut C,
        time: &ManualClock,
        devices_max: usize,
        nodes: &mut [Node],
    ) -> Result<Fleet, Violation> {
        if devices_max == 0 {
            return Ok(Fleet::default());
        }
        let low = devices_max.min(2);
        let n = low + choices.below((devices_max - low + 1) as u64) as usize;
        let hostile = n >= 2 && choices.chance(30);
        let mut fleet = Fleet::default();
        for i in 0..n {
            let clock = Arc::new(SkewedClock { base: time.clone(), skew_ms: AtomicI64::new(0) });
            let late = i > 0 && choices.chance(25);
            let mut device = Device {
                id: ReplicaId(DEVICE_ID_BASE + i as u64),
                replica: None,
                crashed_store: None,
                clock,
                life: if late { Life::Unborn } else { Life::Enrolled },
                offline_until: 0,
                writes: 0,
                floor: BTreeMap::new(),
                hostile: hostile && i == n - 1,
            };
            if !late {
                device.open()?;
                enrol_everywhere(nodes, device.id)?;
            }
            fleet.devices.push(device);
        }
        Ok(fleet)
    }

    /// Whether the run has no device.
    pub(super) fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// How many devices the run has.
    pub(super) fn len(&self) -> usize {
        self.devices.len()
    }

    /// Every device id.
    pub(super) fn ids(&self) -> impl Iterator<Item = ReplicaId> + '_ {
        self.devices.iter().map(|d| d.id)
    }

    /// The devices that must hold what the members hold after the final rounds: every one not
    /// removed. A device's horizon cannot excuse a lag there: a horizon is a vector some member
    /// held, vectors only grow, and the final member rounds level every member's vector, so
    /// every member covers every horizon by then; a device back after its lease reconciles
    /// (its record counts again once it covers `collected`), so it converges too.
    pub(super) fn converging(&self) -> impl Iterator<Item = &Replica<MemoryStore>> {
        self.devices.iter().filter(|d| d.life == Life::Enrolled).filter_map(|d| d.replica.as_ref())
    }

    /// Whether write `e` reached the members (or will, by the final rounds): any member's write,
    /// and a device's write unless the device was removed before a member admitted it.
    pub(super) fn write_reached_members(&self, e: &Entry) -> bool {
        match self.devices.iter().find(|d| d.id == e.stamp.replica) {
            Some(d) if d.life == Life::Removed => self.admitted.contains(&e.stamp),
            _ => true,
        }
    }

    /// I6 for devices: a device's own component (its upload counter) counts exactly the writes
    /// it made; expiry made none.
    pub(super) fn check_own_seqs(&self) -> Result<(), Violation> {
        for d in &self.devices {
            if let Some(r) = &d.replica
                && r.vector().get(d.id).0 != d.writes
            {
                return Err(violation(
                    "I6 local TTL",
                    format!(
                        "device {} made {} writes but its upload counter is {}",
                        d.id,
                        d.writes,
                        r.vector().get(d.id)
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// Enrols `device` at every member (enrolment does not travel between members yet).
fn enrol_everywhere(nodes: &mut [Node], device: ReplicaId) -> Result<(), Violation> {
    for node in nodes {
        // A crashed member is enrolled through its durable store when it restarts: reopen it
        // for the act, as an operator's tool would open the data directory.
        let reopened = node.replica.is_none();
        if reopened {
            node.open()?;
        }
        if let Some(r) = node.replica.as_mut() {
            r.enrol_device(device).map_err(|e| violation("enrolment", e.to_string()))?;
        }
        if reopened && let Some(r) = node.replica.take() {
            node.crashed_store = Some(r.into_store());
        }
    }
    Ok(())
}

/// What a forged frame must leave alone at a member: everything but the hostile device's own
/// record.
#[derive(Debug, PartialEq, Eq)]
struct Untouched {
    vector: VersionVector,
    digest: lethe_engine::fingerprint::Fingerprint,
    dead: usize,
    others: Vec<(ReplicaId, lethe_engine::device::DeviceRecord)>,
    members: Vec<(ReplicaId, VersionVector)>,
    own: Option<lethe_engine::device::DeviceRecord>,
}

impl Untouched {
    fn of(r: &Replica<MemoryStore>, hostile: ReplicaId) -> Untouched {
        Untouched {
            vector: r.vector().clone(),
            digest: r.digest(),
            dead: r.tombstone_count(),
            others: r.devices().iter().filter(|(d, _)| *d != hostile).map(|(d, rec)| (d, rec.clone())).collect(),
            members: r.membership().iter().map(|(id, m)| (id, m.acked.clone())).collect(),
            own: r.devices().get(hostile).cloned(),
        }
    }

    /// What differs from `other`, field by field.
    fn diff(&self, other: &Untouched) -> String {
        let mut out = Vec::new();
        if self.vector != other.vector {
            out.push(format!("vector {:?} -> {:?}", self.vector, other.vector));
        }
        if (&self.digest, self.dead) != (&other.digest, other.dead) {
            out.push(format!("digest/dead records changed ({} -> {} dead)", self.dead, other.dead));
        }
        if self.others != other.others {
            out.push("another device's record changed".to_string());
        }
        if self.members != other.members {
            out.push(format!("member records {:?} -> {:?}", self.members, other.members));
        }
        if self.own != other.own {
            out.push(format!("own record {:?} -> {:?}", self.own, other.own));
        }
        out.join("; ")
    }

    /// Equal but for the hostile device's own record (its acknowledgement, when last seen).
    fn same_but_own(&self, other: &Untouched) -> bool {
        (&self.vector, &self.digest, self.dead, &self.others, &self.members)
            == (&other.vector, &other.digest, other.dead, &other.others, &other.members)
    }
}

impl<C: Choices> Sim<'_, C> {
    /// One random step of the device tier.
    pub(super) fn device_step(&mut self) -> Result<(), Violation> {
        self.fleet.step += 1;
        match self.choices.below(100) {
            0..=27 => self.device_write(),
            28..=41 => self.open_device_link(),
            42..=71 => {
                for _ in 0..1 + self.choices.below(4) {
                    self.deliver_device()?;
                }
                Ok(())
            }
            72..=75 => {
                self.cut_device_link();
                Ok(())
            }
            76..=79 => {
                self.device_offline();
                Ok(())
            }
            80..=82 => {
                self.crash_device();
                Ok(())
            }
            83..=85 => self.restart_device(),
            86 => self.remove_device(),
            87..=88 => self.birth_device(),
            89..=90 => {
                let ms = super::DEVICE_LEASE_MS + 1 + self.choices.below(super::DEVICE_LEASE_MS);
                self.time.advance(ms);
                self.log(|| format!("time +{ms} ms (past the device lease)"));
                Ok(())
            }
            91..=94 => self.device_gc(),
            95 if self.config.restores => {
                self.backup_member();
                Ok(())
            }
            96 if self.config.restores => self.restore_member(),
            95..=97 => self.forge(),
            _ => self.forge_records(),
        }
    }

    /// A member's store is copied (a backup, kept until the next copy or a restore).
    fn backup_member(&mut self) {
        let Some(i) = self.pick_live() else { return };
        let Some(store) = self.nodes[i].replica.as_ref().map(|r| r.store().clone()) else { return };
        self.nodes[i].backup = Some(store);
        self.log(|| format!("node {i} is backed up"));
    }

    /// A member restored from its backup, while devices (and other members) hold writes it
    /// made or admitted since (docs/design.md §10). Everyone else is up first and shows the
    /// restored member its vector before it takes a write or an upload: the node's startup
    /// fence (a peer showing its claim only after the restored member issued as many dots again
    /// is the known limit of §10, not simulated). The model: what the member held that neither
    /// its copy nor any other member holds, nor (for a device's own write) its device, is lost
    /// with it (a device gives back only its own writes, docs/design.md §10).
    fn restore_member(&mut self) -> Result<(), Violation> {
        let candidates = (0..self.nodes.len())
            .filter(|&i| self.nodes[i].backup.is_some() && self.nodes[i].replica.is_some() && !self.nodes[i].waiting)
            .collect();
        let Some(i) = self.pick(candidates) else { return Ok(()) };
        if self.joining.is_some() {
            return Ok(());
        }
        for j in 0..self.nodes.len() {
            if j != i && self.nodes[j].replica.is_none() && !self.nodes[j].waiting {
                self.nodes[j].open()?;
            }
        }
        for device in &mut self.fleet.devices {
            if device.replica.is_none() && device.life != Life::Unborn {
                device.open()?;
            }
        }
        let Some(backup) = self.nodes[i].backup.take() else { return Ok(()) };
        let lost = self.lost_with(i, &backup)?;
        for (key, stamp) in &lost {
            self.lost.insert(*stamp);
            if let Some(writes) = self.history.get_mut(key) {
                writes.retain(|e| e.stamp != *stamp);
            }
            // Taken back by its device, it is admitted again.
            self.fleet.admitted.remove(stamp);
            for node in &mut self.nodes {
                node.floor.remove(key);
            }
            for device in &mut self.fleet.devices {
                device.floor.remove(key);
            }
        }
        self.crash_at(i);
        let node = &mut self.nodes[i];
        node.crashed_store = Some(backup);
        node.open()?;
        node.floor.clear();
        node.restored = true;
        self.fleet.admissions.retain(|(_, _, m), _| *m != i);
        let member = self.nodes[i].id;
        let mut restored = self.nodes[i].replica.take().ok_or_else(|| violation("restore", "not reopened"))?;
        // The operator's enrolments and removals since the copy, again.
        for device in &self.fleet.devices {
            let done = match device.life {
                Life::Enrolled => restored.enrol_device(device.id).map(|_| ()),
                Life::Removed => restored.remove_device(device.id).map(|_| ()),
                Life::Unborn => Ok(()),
            };
            done.map_err(|e| violation("enrolment", e.to_string()))?;
        }
        // Every peer's handshake, members first: what they hold of the restored member's writes.
        for j in 0..self.nodes.len() {
            let Some(rj) = self.nodes[j].replica.as_mut().filter(|_| j != i) else { continue };
            let mut peer = Session::new(rj, Some(member)).map_err(|e| violation("restore", e.to_string()))?;
            let mut own =
                Session::new(&mut restored, Some(rj.id())).map_err(|e| violation("restore", e.to_string()))?;
            if let Ok(Some(hello)) = peer.poll_transmit(rj) {
                let _ = own.handle(&mut restored, &hello);
            }
        }
        for device in self.fleet.devices.iter_mut().filter(|d| d.life == Life::Enrolled) {
            let Some(rd) = device.replica.as_mut() else { continue };
            let Ok(mut ds) = DeviceSession::new(rd, Some(member)) else { continue };
            let mut ms =
                DeviceService::new(&mut restored, Some(rd.id())).map_err(|e| violation("restore", e.to_string()))?;
            if let Ok(Some(hello)) = ds.poll_transmit(rd) {
                let _ = ms.handle(&mut restored, &hello);
            }
        }
        let recovery = restored.recovery();
        self.nodes[i].replica = Some(restored);
        self.log(|| {
            let lost: Vec<String> = lost.iter().map(|(k, s)| format!("{}@{s}", String::from_utf8_lossy(k))).collect();
            format!("node {i} restored from its backup, lost with it: {lost:?}, {recovery:?}")
        });
        Ok(())
    }

    /// The (key, stamp) of every write lost with member `i` restored from `backup`: for each
    /// key whose entry at `i` is held neither by `backup`, nor by any other member, nor (a
    /// device's own write) by its enrolled device, every write of the key in the history that
    /// none of those hold (older ones it replaced at `i` went with it).
    fn lost_with(&self, i: usize, backup: &MemoryStore) -> Result<Vec<(Vec<u8>, Stamp)>, Violation> {
        let held = |store: &MemoryStore, key: &[u8], stamp: Stamp| -> Result<bool, Violation> {
            let entry = store.snapshot().and_then(|s| s.entry(key)).map_err(|e| violation("storage", e.to_string()))?;
            Ok(entry.is_some_and(|e| e.stamp == stamp))
        };
        let store_of = |replica: &Option<Replica<MemoryStore>>, crashed: &Option<MemoryStore>| {
            replica.as_ref().map(|r| r.store().clone()).or_else(|| crashed.clone())
        };
        let survives = |key: &[u8], stamp: Stamp| -> Result<bool, Violation> {
            if held(backup, key, stamp)? {
                return Ok(true);
            }
            for (j, node) in self.nodes.iter().enumerate() {
                if j != i
                    && let Some(store) = store_of(&node.replica, &node.crashed_store)
                    && held(&store, key, stamp)?
                {
                    return Ok(true);
                }
            }
            for d in self.fleet.devices.iter().filter(|d| d.id == stamp.replica && d.life == Life::Enrolled) {
                if let Some(store) = store_of(&d.replica, &d.crashed_store)
                    && held(&store, key, stamp)?
                {
                    return Ok(true);
                }
            }
            Ok(false)
        };
        let Some(mine) = store_of(&self.nodes[i].replica, &self.nodes[i].crashed_store) else { return Ok(Vec::new()) };
        let mut lost = Vec::new();
        for e in super::stored_entries(&mine)? {
            if survives(&e.key, e.stamp)? {
                continue;
            }
            lost.push((e.key.clone(), e.stamp));
            for w in self.history.get(&e.key).into_iter().flatten() {
                if w.stamp != e.stamp && !survives(&w.key, w.stamp)? {
                    lost.push((w.key.clone(), w.stamp));
                }
            }
        }
        Ok(lost)
    }

    fn pick_device(&mut self, pred: impl Fn(&Device) -> bool) -> Option<usize> {
        let candidates = (0..self.fleet.devices.len()).filter(|&d| pred(&self.fleet.devices[d])).collect();
        self.pick(candidates)
    }

    /// A device writes: put, delete or a TTL put, on a random key (removed devices too: their
    /// writes reach no one).
    fn device_write(&mut self) -> Result<(), Violation> {
        let Some(d) = self.pick_device(|d| d.replica.is_some()) else { return Ok(()) };
        let key = format!("k{:02}", self.choices.below(super::KEYS)).into_bytes();
        let op = self.choices.below(4);
        let ttl_ms = 1 + self.choices.below(8_000);
        let device = &mut self.fleet.devices[d];
        let Some(r) = device.replica.as_mut() else { return Ok(()) };
        let seen = r.members_vector();
        let value = format!("d{}v{}", device.id, device.writes).into_bytes();
        let result = match op {
            0 => r.delete(key.clone()),
            1 => r.put(key.clone(), value, PutOptions { ttl_ms: Some(ttl_ms), metadata: None }),
            _ => r.put(key.clone(), value, PutOptions::default()),
        };
        if let Err(lethe_engine::Error::ClockAheadOfPeers { .. }) = &result {
            self.report.clock_refusals += 1;
            return Ok(());
        }
        result.map_err(|e| violation("I3 write", format!("device write failed: {e}")))?;
        device.writes += 1;
        self.report.writes += 1;
        let entry = entry_of(r, &key)?;
        self.seen_at_write.insert(entry.stamp, seen);
        let id = device.id;
        self.log(|| format!("device {id} writes {} {:?}", String::from_utf8_lossy(&key), entry.payload));
        self.history.entry(key).or_default().push(entry);
        Ok(())
    }

    /// A device that is online and has no session opens one with a running member.
    fn open_device_link(&mut self) -> Result<(), Violation> {
        let step = self.fleet.step;
        let busy: BTreeSet<usize> = self.fleet.links.iter().map(|l| l.device).collect();
        let Some(d) = self.pick_device(|d| d.replica.is_some() && d.offline_until <= step && d.life != Life::Unborn)
        else {
            return Ok(());
        };
        if busy.contains(&d) {
            return Ok(());
        }
        let Some(m) = self.pick_live() else { return Ok(()) };
        self.open_device_session(d, m)
    }

    fn open_device_session(&mut self, d: usize, m: usize) -> Result<(), Violation> {
        let (member_id, device_id) = (self.nodes[m].id, self.fleet.devices[d].id);
        let (Some(rd), Some(rm)) = (self.fleet.devices[d].replica.as_mut(), self.nodes[m].replica.as_mut()) else {
            return Ok(());
        };
        let fresh = rd.members_vector().is_empty() && rd.counts().live == 0;
        let anti_entropy = self.choices.chance(25);
        let ds = if anti_entropy {
            DeviceSession::anti_entropy(rd, Some(member_id))
        } else {
            DeviceSession::new(rd, Some(member_id))
        }
        .map_err(|e| violation("device session", format!("opening on device {device_id}: {e}")))?;
        let ms = DeviceService::new(rm, Some(device_id))
            .map_err(|e| violation("device session", format!("opening on member {member_id}: {e}")))?;
        self.fleet.links.push(DeviceLink {
            device: d,
            member: m,
            ds,
            ms,
            to_member: VecDeque::new(),
            to_device: VecDeque::new(),
            fresh,
            answers_in_flight: 0,
        });
        let kind = if fresh {
            " (fresh)"
        } else if anti_entropy {
            " (anti-entropy)"
        } else {
            ""
        };
        self.log(|| format!("device session {device_id}<->{member_id} opens{kind}"));
        self.pump_device(self.fleet.links.len() - 1)
    }

    /// Moves what both sides of device link `k` want to send into its queues. I11: an upload
    /// the device sends holds only writes that are still its local winners.
    fn pump_device(&mut self, k: usize) -> Result<(), Violation> {
        let link = &mut self.fleet.links[k];
        let (Some(rd), Some(rm)) =
            (self.fleet.devices[link.device].replica.as_ref(), self.nodes[link.member].replica.as_ref())
        else {
            return Ok(());
        };
        loop {
            match link.ds.poll_transmit(rd) {
                Ok(Some(f)) => {
                    if let Ok(Message::Upload { entries, .. }) = Message::decode(&f) {
                        for e in &entries {
                            let held = entry_of(rd, &e.key)?;
                            if held.stamp != e.stamp {
                                return Err(violation(
                                    "I11 upload once",
                                    format!("device {} uploads {} but holds {}", rd.id(), e.stamp, held.stamp),
                                ));
                            }
                        }
                    }
                    link.to_member.push_back(f);
                }
                Ok(None) => break,
                Err(e) => return Err(violation("device session", format!("device side failed to send: {e}"))),
            }
        }
        loop {
            match link.ms.poll_transmit(rm) {
                Ok(Some(f)) => link.to_device.push_back(f),
                Ok(None) => break,
                Err(e) => return Err(violation("device session", format!("member side failed to send: {e}"))),
            }
        }
        Ok(())
    }

    /// Delivers one frame of a random device link (or loses it, which ends the session).
    fn deliver_device(&mut self) -> Result<(), Violation> {
        let ready = (0..self.fleet.links.len())
            .filter(|&k| !self.fleet.links[k].to_member.is_empty() || !self.fleet.links[k].to_device.is_empty());
        let Some(k) = self.pick(ready.collect()) else { return Ok(()) };
        let to_member = {
            let l = &self.fleet.links[k];
            !l.to_member.is_empty() && (l.to_device.is_empty() || self.choices.chance(50))
        };
        let m = self.fleet.links[k].member;
        if self.partitioned.contains(&m) || self.choices.below(1000) < 10 {
            self.log(|| "device session: frame lost".to_string());
            self.abort_device_link(k);
            return Ok(());
        }
        let ok = if to_member {
            // The device's frames are untrusted input: now and then one arrives twice, or two
            // swap places; the member must refuse or survive it (I10, I11).
            let l = &mut self.fleet.links[k];
            let fault = self.choices.below(100);
            if fault < 2 && l.to_member.len() >= 2 {
                l.to_member.swap(0, 1);
            }
            let Some(frame) = l.to_member.pop_front() else { return Ok(()) };
            if fault == 2 {
                l.to_member.push_front(frame.clone());
            }
            self.hand_to_member(k, &frame)?
        } else {
            let l = &mut self.fleet.links[k];
            let Some(frame) = l.to_device.pop_front() else { return Ok(()) };
            if matches!(Message::decode(&frame), Ok(Message::Admitted(_))) {
                l.answers_in_flight = l.answers_in_flight.saturating_sub(1);
            }
            let now_ms = self.fleet.devices[l.device].clock.now_ms();
            let Some(rd) = self.fleet.devices[l.device].replica.as_mut() else { return Ok(()) };
            // The member's handshake makes the device collect (under the `collected` it shows).
            let before = dead_records(rd, now_ms)?;
            let result = l.ds.handle(rd, &frame);
            let collected = collected_since(rd, before)?;
            let id = rd.id();
            if l.fresh && l.ds.stats().download.tombstones_received != 0 {
                return Err(violation(
                    "I12 fresh device",
                    format!(
                        "device {} bootstrapped fresh and received {} dead records",
                        rd.id(),
                        l.ds.stats().download.tombstones_received
                    ),
                ));
            }
            let ok = if let Err(e) = result {
                let msg = e.to_string();
                self.log(|| format!("device session: the device ends it: {msg}"));
                false
            } else {
                true
            };
            self.note_device_collections(id, &collected);
            ok
        };
        if !ok {
            self.abort_device_link(k);
            return Ok(());
        }
        self.pump_device(k)?;
        let l = &self.fleet.links[k];
        if l.ds.is_finished() && l.ms.is_finished() && l.to_member.is_empty() && l.to_device.is_empty() {
            self.log(|| "device session finished".to_string());
            if l.fresh {
                self.report.fresh_bootstraps += 1;
            }
            self.fleet.links.remove(k);
            self.report.device_sessions += 1;
        }
        Ok(())
    }

    /// Hands `frame` from the device of link `k` to its member; whether the session goes on.
    /// Checks removal (a removed device's handshake is refused as not enrolled) and I11 (at most
    /// one fresh dot per device write per member), and counts the dots issued (I6).
    fn hand_to_member(&mut self, k: usize, frame: &[u8]) -> Result<bool, Violation> {
        let l = &mut self.fleet.links[k];
        let device = &self.fleet.devices[l.device];
        let node = &mut self.nodes[l.member];
        let Some(rm) = node.replica.as_mut() else { return Ok(false) };
        let decoded = Message::decode(frame).ok();
        let own_before = rm.vector().get(node.id);
        // A handshake repeated on a session that began before the removal is refused as such.
        let had_hello = l.ms.peer().is_some();
        let result = l.ms.handle(rm, frame);
        if matches!(decoded, Some(Message::DeviceHello(_))) && device.life == Life::Removed {
            return match result {
                Err(SyncError::NotEnrolled(id)) if id == device.id => Ok(false),
                Err(SyncError::Unexpected { got: "DeviceHello", .. }) if had_hello => Ok(false),
                other => Err(violation(
                    "device removal",
                    format!("member {} answered removed device {}'s handshake with {other:?}", node.id, device.id),
                )),
            };
        }
        let own_after = rm.vector().get(node.id);
        node.admitted += own_after.0 - own_before.0;
        if let Err(e) = result {
            let msg = e.to_string();
            self.log(|| format!("device session: the member ends it: {msg}"));
            return Ok(false);
        }
        let Some(Message::Upload { entries, .. }) = decoded else { return Ok(true) };
        // The answer is the first frame the service sends after an upload.
        let answers = match l.ms.poll_transmit(rm) {
            Ok(Some(f)) => {
                let answers = match Message::decode(&f) {
                    Ok(Message::Admitted(a)) => a,
                    other => return Err(violation("device session", format!("an upload answered by {other:?}"))),
                };
                l.to_device.push_back(f);
                l.answers_in_flight += 1;
                answers
            }
            other => return Err(violation("device session", format!("an upload answered by {other:?}"))),
        };
        if self.config.verbose {
            let each: Vec<String> = entries
                .iter()
                .zip(&answers)
                .map(|(e, a)| format!("seq {} {} {} → {a:?}", e.dot.seq, String::from_utf8_lossy(&e.key), e.stamp))
                .collect();
            println!("    member {} answers device {}'s upload: {}", node.id, device.id, each.join(", "));
        }
        let mut fresh = 0;
        for (e, a) in entries.iter().zip(&answers) {
            if let Admission::Admitted(dot) = a
                && dot.replica == node.id
                && dot.seq > own_before
            {
                fresh += 1;
                self.fleet.admitted.insert(e.stamp);
                let n = self.fleet.admissions.entry((device.id, e.dot.seq, l.member)).or_default();
                *n += 1;
                if *n > 1 {
                    return Err(violation(
                        "I11 upload once",
                        format!(
                            "member {} admitted device {}'s upload seq {} {n} times",
                            node.id, device.id, e.dot.seq
                        ),
                    ));
                }
            }
        }
        if fresh != own_after.0 - own_before.0 {
            return Err(violation(
                "I11 upload once",
                format!("member {} issued {} dots for {fresh} admissions", node.id, own_after.0 - own_before.0),
            ));
        }
        self.report.uploads += fresh;
        Ok(true)
    }

    fn abort_device_link(&mut self, k: usize) {
        self.fleet.links.remove(k);
        self.report.device_sessions_aborted += 1;
    }

    /// Cuts a device session: preferably one whose member admitted an upload whose answer has
    /// not arrived (the device never hears; the write stays queued and is uploaded again).
    fn cut_device_link(&mut self) {
        let answer_lost = (0..self.fleet.links.len()).filter(|&k| self.fleet.links[k].answers_in_flight > 0).collect();
        let k = match self.pick(answer_lost) {
            Some(k) => k,
            None if !self.fleet.links.is_empty() && self.choices.chance(30) => {
                self.choices.below(self.fleet.links.len() as u64) as usize
            }
            None => return,
        };
        self.log(|| format!("device session cut ({} answers lost)", self.fleet.links[k].answers_in_flight));
        self.abort_device_link(k);
    }

    /// A device goes offline for a long stretch (its session, if any, ends).
    fn device_offline(&mut self) {
        let Some(d) = self.pick_device(|d| d.replica.is_some()) else { return };
        let steps = 20 + self.choices.below(200) as usize;
        self.fleet.devices[d].offline_until = self.fleet.step + steps;
        self.drop_links_of(d);
        self.log(|| format!("device {d} goes offline for {steps} device steps"));
    }

    fn drop_links_of(&mut self, d: usize) {
        let before = self.fleet.links.len();
        self.fleet.links.retain(|l| l.device != d);
        self.report.device_sessions_aborted += (before - self.fleet.links.len()) as u64;
    }

    /// Ends the device sessions of member `m` (it crashed).
    pub(super) fn drop_device_links_of_member(&mut self, m: usize) {
        let before = self.fleet.links.len();
        self.fleet.links.retain(|l| l.member != m);
        self.report.device_sessions_aborted += (before - self.fleet.links.len()) as u64;
    }

    fn crash_device(&mut self) {
        let Some(d) = self.pick_device(|d| d.replica.is_some()) else { return };
        self.drop_links_of(d);
        let device = &mut self.fleet.devices[d];
        if let Some(r) = device.replica.take() {
            device.crashed_store = Some(r.into_store());
        }
        self.log(|| format!("device {d} crashes"));
    }

    fn restart_device(&mut self) -> Result<(), Violation> {
        let Some(d) = self.pick_device(|d| d.replica.is_none() && d.life != Life::Unborn) else { return Ok(()) };
        self.fleet.devices[d].open()?;
        self.log(|| format!("device {d} restarts"));
        Ok(())
    }

    /// The operator removes a device at every member, at once.
    fn remove_device(&mut self) -> Result<(), Violation> {
        let Some(d) = self.pick_device(|d| d.life == Life::Enrolled) else { return Ok(()) };
        let id = self.fleet.devices[d].id;
        for node in &mut self.nodes {
            let reopened = node.replica.is_none();
            if reopened {
                node.open()?;
            }
            if let Some(r) = node.replica.as_mut() {
                r.remove_device(id).map_err(|e| violation("removal", e.to_string()))?;
            }
            if reopened && let Some(r) = node.replica.take() {
                node.crashed_store = Some(r.into_store());
            }
        }
        self.fleet.devices[d].life = Life::Removed;
        self.log(|| format!("device {id} removed at every member"));
        Ok(())
    }

    /// A device that did not exist yet is created and enrolled: it bootstraps fresh at its first
    /// session.
    fn birth_device(&mut self) -> Result<(), Violation> {
        let Some(d) = self.pick_device(|d| d.life == Life::Unborn) else { return Ok(()) };
        self.fleet.devices[d].open()?;
        self.fleet.devices[d].life = Life::Enrolled;
        enrol_everywhere(&mut self.nodes, self.fleet.devices[d].id)?;
        self.log(|| format!("device {d} joins"));
        Ok(())
    }

    /// A device's GC step, as a device node runs it.
    fn device_gc(&mut self) -> Result<(), Violation> {
        let Some(d) = self.pick_device(|d| d.replica.is_some()) else { return Ok(()) };
        self.device_gc_at(d)
    }

    fn device_gc_at(&mut self, d: usize) -> Result<(), Violation> {
        let now_ms = self.fleet.devices[d].clock.now_ms();
        let Some(r) = self.fleet.devices[d].replica.as_mut() else { return Ok(()) };
        let before = dead_records(r, now_ms)?;
        let report = r.collect_garbage().map_err(|e| violation("gc", format!("device {}: {e}", r.id())))?;
        r.write_deferred_rows(1).map_err(|e| violation("storage", format!("device {}: {e}", r.id())))?;
        let collected = collected_since(r, before)?;
        self.report.collected += report.collected as u64;
        let id = r.id();
        self.note_device_collections(id, &collected);
        self.log(|| format!("device {id} gc: {report:?}"));
        Ok(())
    }

    /// Notes the dead records device `id` collected (key and dot) for the documented exception:
    /// a device collects only under the members' `collected` (docs/design.md §8), so each is a
    /// collection some member made under a frontier covering its dot, and the writers that
    /// member did not count are outside it here too. (A removal no frontier covers, such as a
    /// queued write of its own answered as known, excuses nothing.)
    fn note_device_collections(&mut self, id: ReplicaId, collected: &[(Vec<u8>, Dot)]) {
        for (key, dot) in collected {
            for (frontier, outside) in &self.frontiers {
                if frontier.covers(*dot) {
                    self.collections.push((key.clone(), *dot, outside.clone()));
                }
            }
            self.log(|| format!("device {id} collects {} ({dot})", String::from_utf8_lossy(key)));
        }
    }

    /// I2 at every step, at every device (as [`Sim::check_floors`] for members).
    pub(super) fn check_device_floors(&mut self) -> Result<(), Violation> {
        for device in &mut self.fleet.devices {
            let Some(r) = &device.replica else { continue };
            let now_ms = device.clock.now_ms();
            for e in super::stored_entries(r.store())?.into_iter().filter(|e| !self.lost.contains(&e.stamp)) {
                match device.floor.get(&e.key) {
                    Some(floor) if e.stamp < *floor && !e.is_live_at(now_ms) => {}
                    Some(floor) if e.stamp < *floor => {
                        if !super::excepted(&self.collections, &self.seen_at_write, &self.liars, &e) {
                            return Err(violation(
                                "I2 no resurrection",
                                format!(
                                    "device {} held {} at {} and now holds the older {}",
                                    device.id,
                                    String::from_utf8_lossy(&e.key),
                                    floor,
                                    e.stamp
                                ),
                            ));
                        }
                        self.report.exception_wins += 1;
                        device.floor.insert(e.key, e.stamp);
                    }
                    Some(floor) if e.stamp <= *floor => {}
                    _ => {
                        device.floor.insert(e.key, e.stamp);
                    }
                }
            }
        }
        Ok(())
    }

    /// Heal for devices: sessions end, crashed devices restart, offline ones come back, and the
    /// ones never born join now (a fresh bootstrap in the final rounds).
    pub(super) fn heal_devices(&mut self) -> Result<(), Violation> {
        self.fleet.links.clear();
        for d in 0..self.fleet.devices.len() {
            let device = &mut self.fleet.devices[d];
            device.offline_until = 0;
            if device.life == Life::Unborn {
                device.life = Life::Enrolled;
                let id = device.id;
                enrol_everywhere(&mut self.nodes, id)?;
            }
            let device = &mut self.fleet.devices[d];
            if device.replica.is_none() {
                device.open()?;
            }
        }
        Ok(())
    }

    /// One complete device session, no faults (final rounds); I12 when the device was empty.
    fn sync_device(
        &mut self,
        d: usize,
        m: usize,
        anti_entropy: bool,
    ) -> Result<lethe_engine::device::DeviceOutcome, Violation> {
        let now_ms = self.fleet.devices[d].clock.now_ms();
        let (Some(rd), Some(rm)) = (self.fleet.devices[d].replica.as_mut(), self.nodes[m].replica.as_mut()) else {
            return Err(violation("final round", "replica missing after heal"));
        };
        let fresh = rd.members_vector().is_empty() && rd.counts().live == 0;
        let own_before = rm.vector().get(rm.id());
        // The member's handshake makes the device collect (under the `collected` it shows).
        let before = dead_records(rd, now_ms)?;
        let out = if anti_entropy { anti_entropy_device_in_process(rd, rm) } else { sync_device_in_process(rd, rm) }
            .map_err(|e| violation("final round", format!("device session {}<->{} failed: {e}", rd.id(), rm.id())))?;
        let issued = rm.vector().get(rm.id()).0 - own_before.0;
        let collected = collected_since(rd, before)?;
        let (did, mid) = (rd.id(), rm.id());
        let differ = if self.config.verbose {
            let (dl, ml) = (super::live_entries(rd)?, super::live_entries(rm)?);
            let keys: Vec<String> = ml
                .keys()
                .chain(dl.keys())
                .filter(|k| dl.get(*k).map(|e| e.stamp) != ml.get(*k).map(|e| e.stamp))
                .map(|k| String::from_utf8_lossy(k).into_owned())
                .collect();
            format!(", differ after at {keys:?}, device horizon {:?}", rd.horizon())
        } else {
            String::new()
        };
        let line = format!(
            "final device session {did}<->{mid}: {:?}, uploaded {} (admitted {}, superseded {}, known {}), {} live and {} dead received, {} dropped",
            out.member.download.mode,
            out.member.uploaded,
            out.member.admitted,
            out.member.superseded,
            out.member.known,
            out.device.download.live_received,
            out.device.download.tombstones_received,
            out.device.download.dropped
        ) + &differ;
        self.log(|| line);
        self.note_device_collections(did, &collected);
        self.nodes[m].admitted += issued;
        self.report.uploads += issued;
        if fresh {
            if out.device.download.tombstones_received != 0 {
                return Err(violation(
                    "I12 fresh device",
                    format!("device {did} received {} dead records", out.device.download.tombstones_received),
                ));
            }
            self.report.fresh_bootstraps += 1;
        }
        self.report.device_sessions += 1;
        Ok(out)
    }

    /// After the members' final rounds: every device not removed syncs with a member (a
    /// different one each round), members level each other (by anti-entropy after the first
    /// round's uploads), and both collect, five times;
    /// then one more session each must be idle and cost O(members) bytes (I9).
    pub(super) fn device_final_rounds(&mut self) -> Result<(), Violation> {
        let n = self.nodes.len();
        let active: Vec<usize> =
            (0..self.fleet.devices.len()).filter(|&d| self.fleet.devices[d].life == Life::Enrolled).collect();
        for round in 0..5 {
            // Deltas, then anti-entropy from the third round on: a device's copy of a write that
            // won by the documented exception at one member while another still held the
            // delete is settled by reconciliation, as between members.
            for &d in &active {
                self.sync_device(d, (d + round) % n, round >= 2)?;
            }
            // Anti-entropy, as in the members' final rounds: a device's write that won by the
            // documented exception at one member while another still held the delete is settled
            // by reconciliation once that delete is collected too, never by deltas; so every
            // round, as collection goes on.
            self.sync_all_members(true)?;
            if round >= 1 {
                for i in 0..n {
                    self.gc_at(i)?;
                }
                for &d in &active {
                    self.device_gc_at(d)?;
                }
            }
        }
        for &d in &active {
            self.sync_device(d, d % n, false)?;
        }
        for &d in &active {
            let out = self.sync_device(d, (d + 1) % n, false)?;
            let bytes = out.device.total_sent() + out.device.total_received();
            if bytes > IDLE_DEVICE_BYTES_MAX || out.member.uploaded != 0 || out.device.download.live_received != 0 {
                return Err(violation(
                    "I9 device scale",
                    format!(
                        "device {}'s idle session with {n} members cost {bytes} bytes (uploaded {}, received {})",
                        self.fleet.devices[d].id, out.member.uploaded, out.device.download.live_received
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The hostile device (if any) feeds forged frames to a member's `DeviceService`. I10: a
    /// refused frame leaves the member as it was; an accepted one changes nothing but the
    /// hostile device's own record.
    fn forge(&mut self) -> Result<(), Violation> {
        let Some(h) = self.fleet.devices.iter().position(|d| d.hostile && d.life == Life::Enrolled) else {
            return Ok(());
        };
        let Some(m) = self.pick_live() else { return Ok(()) };
        let hostile = self.fleet.devices[h].id;
        let others: Vec<ReplicaId> = self
            .fleet
            .devices
            .iter()
            .map(|d| d.id)
            .chain(self.nodes.iter().map(|n| n.id))
            .filter(|&id| id != hostile)
            .collect();
        let victim = others[self.choices.below(others.len() as u64) as usize];
        let kind = self.choices.below(7);
        let extra = 1 + self.choices.below(1000);
        let node = &mut self.nodes[m];
        let Some(rm) = node.replica.as_mut() else { return Ok(()) };
        let wall_ms = node.clock.now_ms();
        let vector = rm.vector().clone();
        let mut claimed = vector.clone();
        claimed.advance(victim, Seq(claimed.get(victim).0.saturating_add(extra)));
        let hello = |who: ReplicaId, vector: VersionVector, ack: VersionVector, uploads: bool| {
            Message::DeviceHello(DeviceHello(
                PROTOCOL_VERSION,
                who,
                vector,
                ack,
                None,
                false,
                uploads,
                wall_ms,
                false,
                vec![],
                None,
                Vec::new(),
            ))
        };
        let forged = |stamped: ReplicaId, numbered: ReplicaId, hlc_ms: u64| Entry {
            key: b"k00".to_vec(),
            stamp: Stamp { hlc: Hlc::new(hlc_ms, 0), replica: stamped },
            dot: Dot { replica: numbered, seq: Seq(1 + extra) },
            payload: Payload::Value(Value { bytes: b"forged".to_vec(), expires_at_ms: None, metadata: None }),
        };
        let upload = |e: Entry| Message::Upload { entries: vec![e], last: true };
        // (frames, what each must be: true = refused)
        let script: Vec<(Message, bool)> = match kind {
            // A handshake naming another device or a member.
            0 => vec![(hello(victim, vector.clone(), vector.clone(), false), true)],
            // An acknowledgement claiming more than its vector.
            1 => vec![(hello(hostile, vector.clone(), claimed.clone(), false), true)],
            // Uploads stamped by, or numbered as, another replica.
            2 => vec![
                (hello(hostile, vector.clone(), vector.clone(), true), false),
                (upload(forged(victim, hostile, wall_ms)), true),
            ],
            3 => vec![
                (hello(hostile, vector.clone(), vector.clone(), true), false),
                (upload(forged(hostile, victim, wall_ms)), true),
            ],
            // Its own write, stamped far in the future (beyond the drift bound).
            4 => vec![
                (hello(hostile, vector.clone(), vector.clone(), true), false),
                (upload(forged(hostile, hostile, wall_ms + 10 * super::MAX_DRIFT_MS)), true),
            ],
            // A vector claiming this very member issued writes beyond its own counter (what a
            // peer of a member restored from an older copy would show).
            5 => {
                let mut own = vector.clone();
                own.advance(node.id, Seq(own.get(node.id).0.saturating_add(extra)));
                vec![(hello(hostile, own.clone(), vector.clone(), false), false)]
            }
            // A vector (and acknowledgement) claiming writes of another replica the member never
            // saw (or naming a device), then an acknowledgement claiming still more.
            _ => {
                let mut more = claimed.clone();
                more.advance(node.id, Seq(more.get(node.id).0.saturating_add(extra)));
                vec![
                    (hello(hostile, claimed.clone(), claimed.clone(), false), false),
                    (Message::Ack(more, None), false),
                ]
            }
        };
        let mut service = DeviceService::new(rm, Some(hostile))
            .map_err(|e| violation("device session", format!("opening on member {}: {e}", node.id)))?;
        for (msg, must_refuse) in script {
            let frame = msg.encode().map_err(|e| violation("device session", e.to_string()))?;
            // Expiry is local and changes the digest by itself: purge first (every session does).
            rm.purge_expired().map_err(|e| violation("storage", e.to_string()))?;
            let before = Untouched::of(rm, hostile);
            let result = service.handle(rm, &frame);
            while let Ok(Some(_)) = service.poll_transmit(rm) {}
            let after = Untouched::of(rm, hostile);
            let name = msg.name();
            match result {
                Err(e) => {
                    self.report.forged_refused += 1;
                    if before != after {
                        return Err(violation(
                            "I10 device trust",
                            format!(
                                "member {} refused device {hostile}'s forged {name} ({e}) but changed: {}",
                                node.id,
                                before.diff(&after)
                            ),
                        ));
                    }
                    break;
                }
                Ok(()) if must_refuse => {
                    return Err(violation(
                        "I10 device trust",
                        format!("member {} accepted device {hostile}'s forged {name} (victim {victim})", node.id),
                    ));
                }
                Ok(()) => {
                    // An accepted handshake acknowledged the member's vector, held or not.
                    let collected_so_far = self.collections.len();
                    self.liars.entry(hostile).or_insert(collected_so_far);
                    if !before.same_but_own(&after) {
                        return Err(violation(
                            "I10 device trust",
                            format!(
                                "device {hostile}'s {name} (kind {kind}, victim {victim}, +{extra}) changed member {}: {}",
                                node.id,
                                before.diff(&after)
                            ),
                        ));
                    }
                }
            }
        }
        self.log(|| format!("hostile device {hostile} forged frames (kind {kind}, victim {victim}) at member {m}"));
        Ok(())
    }
}

impl<C: Choices> Sim<'_, C> {
    /// A compromised member `b` relays forged device records to member `a` (docs/design.md
    /// §9): cursor claims for `a` itself, for a third member unsigned or under `b`'s key, or for
    /// a non-member, and a device `a` removed shown enrolled again in a later epoch with an
    /// acknowledgement under `b`'s key. None may change `a`'s record of the device, its vector
    /// or its data: no relay makes `a` answer "known" to an upload on another member's word,
    /// and a removal is final where it is known.
    fn forge_records(&mut self) -> Result<(), Violation> {
        let live: Vec<usize> =
            (0..self.nodes.len()).filter(|&i| self.nodes[i].replica.is_some() && !self.nodes[i].waiting).collect();
        if live.len() < 2 {
            return Ok(());
        }
        let ai = live[self.choices.below(live.len() as u64) as usize];
        let others: Vec<usize> = live.iter().copied().filter(|&i| i != ai).collect();
        let bi = others[self.choices.below(others.len() as u64) as usize];
        let (a_id, b_id) = (self.nodes[ai].id, self.nodes[bi].id);
        let third = self.nodes.iter().map(|n| n.id).find(|&id| id != a_id && id != b_id).unwrap_or(ReplicaId(9_999));
        let kind = self.choices.below(4);
        let extra = 1 + self.choices.below(1 << 20);
        let hello = {
            let Some(b) = self.nodes[bi].replica.as_ref() else { return Ok(()) };
            let members = vec![lethe_engine::membership::MemberInfo::from(b.sign_ack(b.vector().clone()))];
            Message::Hello(lethe_engine::session::Hello {
                version: PROTOCOL_VERSION,
                replica: b_id,
                vector: b.vector().clone(),
                members,
                values: 1,
                anti_entropy: false,
                wall_ms: self.nodes[bi].clock.now_ms(),
                records_seen: b.records_seen(a_id),
                // A third member's lost range, unsigned or under b's key: believed, `a` would
                // take the third member's admissions as lost and its devices would upload again
                // everything they hold under its dots.
                lost: vec![forged_lost(third, b_id, kind)],
            })
        };
        let shows_more_of_a = self.nodes[bi].replica.as_ref().map_or(Seq(0), |b| b.vector().get(a_id));
        let node = &mut self.nodes[ai];
        let Some(a) = node.replica.as_mut() else { return Ok(()) };
        // `a` restored from an older copy (`--restores`): the honest part of the handshake (b's
        // vector holds a's writes beyond its counter) rightly starts its recovery, which is not
        // what this checks.
        if shows_more_of_a > a.own_counter() || a.recovery().is_some() {
            return Ok(());
        }
        let known: Vec<ReplicaId> = self
            .fleet
            .devices
            .iter()
            .map(|d| d.id)
            .filter(|&d| if kind == 3 { a.devices().is_revoked(d) } else { a.devices().get(d).is_some() })
            .collect();
        if known.is_empty() {
            return Ok(());
        }
        let victim = known[self.choices.below(known.len() as u64) as usize];
        let Some(record) = a.devices().record(victim).cloned() else { return Ok(()) };
        let b_key = lethe_engine::InsecureTestSigner::new(b_id);
        let seq = Seq(record.cursor.0.saturating_add(extra));
        let claim = |member: ReplicaId, signed: bool| {
            let message = lethe_engine::sign::cursor_message(member, victim, seq, Seq(0), lethe_engine::Hlc::UNKNOWN);
            let signature = if signed { lethe_engine::AckSigner::sign(&b_key, &message) } else { Vec::new() };
            lethe_engine::sign::CursorClaim(member, seq, Seq(0), signature, lethe_engine::Hlc::UNKNOWN)
        };
        let wire = |claims, epoch, acked: Option<VersionVector>, signature| {
            RecordWire(victim, epoch, false, acked, claims, node.clock.now_ms(), node.clock.now_ms(), signature)
        };
        let forged = match kind {
            0 => wire(vec![claim(a_id, false)], record.epoch, None, Vec::new()),
            1 => wire(vec![claim(third, false)], record.epoch, None, Vec::new()),
            2 => wire(vec![claim(third, true), claim(ReplicaId(9_999), false)], record.epoch, None, Vec::new()),
            _ => {
                let acked = a.vector().clone();
                let message = lethe_engine::sign::ack_message(victim, &acked, node.clock.now_ms());
                let signature = lethe_engine::AckSigner::sign(&b_key, &message);
                wire(vec![claim(third, true)], record.epoch + 1, Some(acked), signature)
            }
        };
        a.purge_expired().map_err(|e| violation("storage", e.to_string()))?;
        let before = (a.vector().clone(), a.digest(), a.tombstone_count(), record.clone());
        let lost_before = a.lost_of(third).to_vec();
        let mut session = lethe_engine::session::Session::new(a, Some(b_id))
            .map_err(|e| violation("member session", format!("opening on member {a_id}: {e}")))?;
        let frames = [hello.encode(), Message::Records(0, true, vec![forged]).encode()];
        for frame in frames {
            let frame = frame.map_err(|e| violation("member session", e.to_string()))?;
            if session.handle(a, &frame).is_err() {
                break;
            }
        }
        let after = (a.vector().clone(), a.digest(), a.tombstone_count(), a.devices().record(victim).cloned());
        // What the record says, not when it last changed here: a member whose records clock is
        // behind what the peer's handshake says it merged (it crashed before its changes were
        // durable) jumps the clock and marks every record changed, to send them again.
        let content = |r: &lethe_engine::device::DeviceRecord| lethe_engine::device::DeviceRecord {
            changed: 0,
            from: None,
            ..r.clone()
        };
        if (&before.0, &before.1, before.2, Some(content(&before.3)))
            != (&after.0, &after.1, after.2, after.3.as_ref().map(content))
        {
            return Err(violation(
                "§9 member trust",
                format!(
                    "member {b_id}'s forged record of device {victim} (kind {kind}, +{extra}) changed member {a_id}: \
                     {:?} -> {:?}",
                    before.3, after.3
                ),
            ));
        }
        if a.lost_of(third) != lost_before.as_slice() {
            return Err(violation(
                "§9 member trust",
                format!("member {b_id}'s forged lost range of member {third} was taken by member {a_id}"),
            ));
        }
        self.report.records_forged += 1;
        self.log(|| format!("member {b_id} relayed forged records (kind {kind}) of device {victim} to member {a_id}"));
        Ok(())
    }
}

/// A statement that member `of` lost every seq up to 2^30, unsigned (even `kind`) or signed
/// under `forger`'s key (odd).
fn forged_lost(of: ReplicaId, forger: ReplicaId, kind: u64) -> lethe_engine::replica::LostStatement {
    let ranges = vec![(Seq(0), Seq(1 << 30))];
    let signature = if kind % 2 == 1 {
        let message = lethe_engine::sign::lost_message(of, &ranges);
        lethe_engine::AckSigner::sign(&lethe_engine::InsecureTestSigner::new(forger), &message)
    } else {
        Vec::new()
    };
    lethe_engine::replica::LostStatement(of, ranges, signature)
}

/// The dead records (tombstones and values expired at `now_ms`) `r` holds, by key.
fn dead_records(r: &Replica<MemoryStore>, now_ms: u64) -> Result<BTreeMap<Vec<u8>, Entry>, Violation> {
    let mut dead = BTreeMap::new();
    r.store()
        .snapshot()
        .and_then(|s| {
            s.scan_keys(&KeyRange::all(), &mut |e| {
                if e.is_tombstone() || !e.is_live_at(now_ms) {
                    dead.insert(e.key.clone(), e);
                }
                ControlFlow::Continue(())
            })
        })
        .map_err(|e| violation("storage", e.to_string()))?;
    Ok(dead)
}

/// Which of the dead records `before` (from [`dead_records`]) `r` no longer holds: not replaced by
/// something newer, but gone (or under something older, which can only come after it went).
fn collected_since(
    r: &Replica<MemoryStore>,
    before: BTreeMap<Vec<u8>, Entry>,
) -> Result<Vec<(Vec<u8>, Dot)>, Violation> {
    let snap = r.store().snapshot().map_err(|e| violation("storage", e.to_string()))?;
    let mut gone = Vec::new();
    for (key, e) in before {
        match snap.entry(&key).map_err(|e| violation("storage", e.to_string()))? {
            Some(now) if now.stamp >= e.stamp => {}
            _ => gone.push((key, e.dot)),
        }
    }
    Ok(gone)
}
