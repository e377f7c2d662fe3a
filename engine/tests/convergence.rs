//! N replicas that exchange deltas in any order end with identical state.
//!
//! A proptest drives 2–5 replicas through random puts, deletes, re-creates, TTL writes, purges and
//! restarts, with clocks skewed within `max_drift` (so equal wall clocks and equal HLCs across
//! replicas are common). Deltas travel through a mailbox: delivered late, out of order, twice,
//! cut short (a partial transfer, which must not advance the vector) or never. After a final
//! round of full syncs every replica must hold, for every key, exactly the LWW maximum of all
//! writes ever made to it (no lost write, no resurrection) and the same vector.

use lethe_engine::{
    Config, Entry, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId, Snapshot, Storage, VersionVector,
    WallClock, storage::KeyRange,
};
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
const KEYS: u8 = 6;

#[derive(Clone, Debug)]
enum Op {
    Put {
        replica: usize,
        key: u8,
        value: u8,
        ttl_ms: Option<u64>,
    },
    Delete {
        replica: usize,
        key: u8,
    },
    /// Compute the delta from → to now; it sits in the mailbox until delivered.
    Send {
        from: usize,
        to: usize,
    },
    /// Deliver mailbox message `index` (mod its length); keep a copy to deliver again if `duplicate`;
    /// if `cut` is set, deliver only that many entries and no vector.
    Deliver {
        index: usize,
        duplicate: bool,
        cut: Option<usize>,
    },
    Advance {
        ms: u64,
    },
    Purge {
        replica: usize,
    },
    Restart {
        replica: usize,
    },
}

fn arb_op(n: usize) -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..n, 0..KEYS, any::<u8>(), proptest::option::weighted(0.3, 1u64..40))
            .prop_map(|(replica, key, value, ttl_ms)| Op::Put { replica, key, value, ttl_ms }),
        2 => (0..n, 0..KEYS).prop_map(|(replica, key)| Op::Delete { replica, key }),
        3 => (0..n, 0..n).prop_map(|(from, to)| Op::Send { from, to }),
        3 => (any::<usize>(), proptest::bool::weighted(0.2), proptest::option::weighted(0.2, 0usize..4))
            .prop_map(|(index, duplicate, cut)| Op::Deliver { index, duplicate, cut }),
        2 => (0u64..25).prop_map(|ms| Op::Advance { ms }),
        1 => (0..n).prop_map(|replica| Op::Purge { replica }),
        1 => (0..n).prop_map(|replica| Op::Restart { replica }),
    ]
}

/// A replica's wall clock: the shared time plus a fixed skew within max_drift.
struct Skewed {
    base: ManualClock,
    skew_ms: u64,
}

impl WallClock for Skewed {
    fn now_ms(&self) -> u64 {
        self.base.now_ms() + self.skew_ms
    }
}

struct Message {
    to: usize,
    entries: Vec<Entry>,
    vector: VersionVector,
    clock: lethe_engine::Hlc,
}

struct World {
    time: ManualClock,
    clocks: Vec<Arc<Skewed>>,
    replicas: Vec<Option<Replica<MemoryStore>>>,
    mailbox: Vec<Message>,
    /// Every write ever made, per key: the model the final state is checked against.
    history: BTreeMap<Vec<u8>, Vec<Entry>>,
}

impl World {
    fn new(skews: &[u64]) -> World {
        let time = ManualClock::new(T0);
        let clocks: Vec<_> = skews.iter().map(|&s| Arc::new(Skewed { base: time.clone(), skew_ms: s })).collect();
        let replicas = clocks
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut r = Replica::open(MemoryStore::new(), id(i), Config::default(), c.clone()).unwrap();
                for j in 0..skews.len() {
                    r.enrol_member(id(j)).unwrap();
                }
                Some(r)
            })
            .collect();
        World { time, clocks, replicas, mailbox: Vec::new(), history: BTreeMap::new() }
    }

    fn r(&mut self, i: usize) -> &mut Replica<MemoryStore> {
        self.replicas[i].as_mut().unwrap()
    }

    fn record(&mut self, i: usize, key: Vec<u8>) {
        let entry = self.r(i).store().snapshot().unwrap().entry(&key).unwrap().unwrap();
        self.history.entry(key).or_default().push(entry);
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Put { replica, key, value, ttl_ms } => {
                let key = vec![b'k', key];
                self.r(replica).put(key.clone(), vec![value], PutOptions { ttl_ms, metadata: None }).unwrap();
                self.record(replica, key);
            }
            Op::Delete { replica, key } => {
                let key = vec![b'k', key];
                self.r(replica).delete(key.clone()).unwrap();
                self.record(replica, key);
            }
            Op::Send { from, to } => {
                let to_vector = self.r(to).vector().clone();
                let delta = self.r(from).delta_for(&to_vector).unwrap();
                self.mailbox.push(Message { to, entries: delta.entries, vector: delta.vector, clock: delta.clock });
            }
            Op::Deliver { index, duplicate, cut } => {
                if self.mailbox.is_empty() {
                    return;
                }
                let i = index % self.mailbox.len();
                let msg = if duplicate {
                    let m = &self.mailbox[i];
                    Message { to: m.to, entries: m.entries.clone(), vector: m.vector.clone(), clock: m.clock }
                } else {
                    self.mailbox.remove(i)
                };
                match cut {
                    Some(n) => {
                        let part = msg.entries.into_iter().take(n).collect();
                        self.r(msg.to).apply_remote(part, None).unwrap();
                    }
                    None => {
                        self.r(msg.to).apply_remote(msg.entries, Some((&msg.vector, msg.clock))).unwrap();
                    }
                }
            }
            Op::Advance { ms } => self.time.advance(ms),
            Op::Purge { replica } => {
                self.r(replica).purge_expired().unwrap();
            }
            Op::Restart { replica } => {
                let store = self.replicas[replica].take().unwrap().into_store();
                let clock = self.clocks[replica].clone();
                self.replicas[replica] = Some(Replica::open(store, id(replica), Config::default(), clock).unwrap());
            }
        }
    }

    fn sync_all(&mut self) {
        let n = self.replicas.len();
        for _round in 0..2 {
            for from in 0..n {
                for to in 0..n {
                    if from != to {
                        let to_vector = self.r(to).vector().clone();
                        let delta = self.r(from).delta_for(&to_vector).unwrap();
                        self.r(to).apply_remote(delta.entries, Some((&delta.vector, delta.clock))).unwrap();
                    }
                }
            }
        }
    }

    /// Each replica's entries, settled at the shared time (so a purged and an unpurged copy of
    /// the same expired write compare equal).
    fn state(&mut self, i: usize) -> BTreeMap<Vec<u8>, Entry> {
        let now = self.time.now_ms() + self.clocks.iter().map(|c| c.skew_ms).max().unwrap_or(0);
        let mut out = BTreeMap::new();
        self.r(i)
            .store()
            .snapshot()
            .unwrap()
            .scan_keys(&KeyRange::all(), &mut |e| {
                out.insert(e.key.clone(), e.settled_at(now));
                ControlFlow::Continue(())
            })
            .unwrap();
        out
    }
}

fn id(i: usize) -> ReplicaId {
    ReplicaId(i as u64 + 1)
}

fn scenario() -> impl Strategy<Value = (Vec<u64>, Vec<Op>)> {
    (2usize..=5)
        .prop_flat_map(|n| (proptest::collection::vec(0u64..=1000, n), proptest::collection::vec(arb_op(n), 0..80)))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn replicas_exchanging_deltas_in_any_order_converge((skews, ops) in scenario()) {
        let mut world = World::new(&skews);
        for op in &ops {
            world.step(op);
        }
        world.sync_all();

        let now = world.time.now_ms() + skews.iter().max().copied().unwrap_or(0);
        let expected: BTreeMap<Vec<u8>, Entry> = world
            .history
            .iter()
            .map(|(k, writes)| {
                let winner = writes.iter().cloned().reduce(lethe_engine::entry::merge).unwrap();
                (k.clone(), winner.settled_at(now))
            })
            .collect();
        let first_vector = world.r(0).vector().clone();
        for i in 0..world.replicas.len() {
            prop_assert_eq!(&world.state(i), &expected, "replica {} differs from the LWW model", i);
            prop_assert_eq!(world.r(i).vector(), &first_vector, "replica {} vector", i);
        }
    }
}
