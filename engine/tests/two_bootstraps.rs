//! Two bootstraps at once (docs/design.md §10): a new replica with two peers is bulk-bootstrapped by
//! both, since both see it empty. Every entry either stream stores must end up in the dot index
//! before `Meta::Unindexed` stops covering it, whatever order the chunks, the background row
//! writing and the vector merges come in; otherwise deltas leave the entry out while the
//! replica's vector covers it, and "covered and absent means dead" deletes it everywhere.

use lethe_engine::session::{Message, Mode, Session, sync_in_process};
use lethe_engine::{
    Config, Dot, KeyRange, ManualClock, MemoryStore, PutOptions, RedbStore, Replica, ReplicaId, Seq, Snapshot, Storage,
};
use std::collections::VecDeque;
use std::ops::ControlFlow;
use std::sync::Arc;

const T0: u64 = 1_700_000_000_000;
/// Rows per `write_deferred_rows` call: small, so the row list outlives several commits, as the
/// node's 50,000 do for a large store.
const ROWS_PER_CALL: usize = 4;

fn replica(id: u64, clock: &ManualClock) -> Replica<MemoryStore> {
    Replica::open(MemoryStore::new(), ReplicaId(id), Config::default(), Arc::new(clock.clone())).unwrap()
}

fn keys<S: Storage>(r: &Replica<S>) -> Vec<String> {
    r.scan(&KeyRange::all(), usize::MAX).unwrap().into_iter().map(|i| String::from_utf8(i.key).unwrap()).collect()
}

/// The storage invariant, by scanning both tables: every stored entry has its dot-index row, and
/// every row names a stored entry with that dot.
fn dot_rows_complete<S: Storage>(r: &Replica<S>) -> Result<(), String> {
    let snap = r.store().snapshot().unwrap();
    let mut entries = Vec::new();
    snap.scan_keys(&KeyRange::all(), &mut |e| {
        entries.push((e.dot(), e.key));
        ControlFlow::Continue(())
    })
    .unwrap();
    entries.sort();
    let mut rows = Vec::new();
    let (first, last) =
        (Dot { replica: ReplicaId(0), seq: Seq(0) }, Dot { replica: ReplicaId(u64::MAX), seq: Seq(u64::MAX) });
    snap.scan_dots(first, last, &mut |d, k| {
        rows.push((d, k.to_vec()));
        ControlFlow::Continue(())
    })
    .unwrap();
    let missing: Vec<_> = entries.iter().filter(|e| !rows.contains(e)).collect();
    let extra: Vec<_> = rows.iter().filter(|r| !entries.contains(r)).collect();
    if missing.is_empty() && extra.is_empty() {
        Ok(())
    } else {
        Err(format!("entries without a dot row: {missing:?}; rows without their entry: {extra:?}"))
    }
}

/// One session between a source replica and the new replica, pumped by hand so two of them can
/// be interleaved frame by frame.
struct Link {
    at_source: Session,
    at_new: Session,
    to_new: VecDeque<Vec<u8>>,
}

impl Link {
    /// Opens both ends and exchanges the handshakes.
    fn open<S: Storage, T: Storage>(source: &mut Replica<S>, new: &mut Replica<T>) -> Link {
        let mut at_source = Session::new(source, Some(new.id())).unwrap();
        let mut at_new = Session::new(new, Some(source.id())).unwrap();
        let hello_new = at_new.poll_transmit(new).unwrap().unwrap();
        let hello_source = at_source.poll_transmit(source).unwrap().unwrap();
        at_source.handle(source, &hello_new).unwrap();
        at_new.handle(new, &hello_source).unwrap();
        assert_eq!(at_source.stats().mode, Some(Mode::Bootstrap), "the new replica looks empty to both");
        Link { at_source, at_new, to_new: VecDeque::new() }
    }

    /// Delivers the source's next frame to the new replica; returns what it was, or `None` when
    /// the source has nothing more to send.
    fn step<S: Storage, T: Storage>(&mut self, source: &mut Replica<S>, new: &mut Replica<T>) -> Option<&'static str> {
        if self.to_new.is_empty()
            && let Some(f) = self.at_source.poll_transmit(source).unwrap()
        {
            self.to_new.push_back(f);
        }
        let frame = self.to_new.pop_front()?;
        let kind = match Message::decode(&frame).unwrap() {
            Message::Entries(_) => "Entries",
            Message::Done(..) => "Done",
            _ => "other",
        };
        self.at_new.handle(new, &frame).unwrap();
        while let Some(f) = self.at_new.poll_transmit(new).unwrap() {
            self.at_source.handle(source, &f).unwrap();
        }
        Some(kind)
    }

    fn finish<S: Storage, T: Storage>(&mut self, source: &mut Replica<S>, new: &mut Replica<T>) {
        while self.step(source, new).is_some() {}
        assert!(self.at_source.is_finished() && self.at_new.is_finished());
    }
}

/// a holds `n` keys; b has them, then, before c joins and unseen by a, writes a key of its own,
/// overwrites one of a's and deletes another.
fn two_sources(clock: &ManualClock, n: usize, value: &[u8]) -> (Replica<MemoryStore>, Replica<MemoryStore>) {
    let (mut a, mut b) = (replica(1, clock), replica(2, clock));
    for i in 0..n {
        a.put(format!("a{i:04}"), value, PutOptions::default()).unwrap();
    }
    sync_in_process(&mut a, &mut b, false).unwrap();
    while b.write_deferred_rows(ROWS_PER_CALL).unwrap() {}
    b.put("before-join", "b's", PutOptions::default()).unwrap();
    b.put("a0003", "b's newer", PutOptions::default()).unwrap();
    b.delete("a0005").unwrap();
    (a, b)
}

/// What every replica must hold in the end.
fn expected(n: usize, value: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut want: Vec<(String, Vec<u8>)> = (0..n)
        .filter(|i| *i != 5)
        .map(|i| (format!("a{i:04}"), if i == 3 { b"b's newer".to_vec() } else { value.to_vec() }))
        .collect();
    want.push(("before-join".into(), b"b's".to_vec()));
    want.sort();
    want
}

fn items<S: Storage>(r: &Replica<S>) -> Vec<(String, Vec<u8>)> {
    r.scan(&KeyRange::all(), usize::MAX)
        .unwrap()
        .into_iter()
        .map(|i| (String::from_utf8(i.key).unwrap(), i.value))
        .collect()
}

fn sync<S: Storage, T: Storage>(x: &mut Replica<S>, y: &mut Replica<T>, anti_entropy: bool) {
    sync_in_process(x, y, anti_entropy).unwrap();
}

/// Writes every deferred row c can write now.
fn write_rows<T: Storage>(c: &mut Replica<T>) {
    while c.deferred_rows_writable() && c.write_deferred_rows(ROWS_PER_CALL).unwrap() {}
}

/// The three replicas go on as usual: ordinary syncs (c's delta to a first), then an
/// anti-entropy round, then ordinary syncs again.
fn carry_on<T: Storage>(a: &mut Replica<MemoryStore>, b: &mut Replica<MemoryStore>, c: &mut Replica<T>) {
    sync(c, a, false);
    sync(a, b, false);
    for anti_entropy in [true, false] {
        sync(a, b, anti_entropy);
        sync(a, c, anti_entropy);
        sync(b, c, anti_entropy);
    }
}

fn assert_everywhere<T: Storage>(
    a: &Replica<MemoryStore>,
    b: &Replica<MemoryStore>,
    c: &Replica<T>,
    want: &[(String, Vec<u8>)],
) {
    let lacking: Vec<&str> = [("a", keys(a)), ("b", keys(b)), ("c", keys(c))]
        .into_iter()
        .filter(|(_, ks)| !ks.iter().any(|k| k == "before-join"))
        .map(|(name, _)| name)
        .collect();
    assert!(lacking.is_empty(), "the key b wrote before c joined is gone at {lacking:?}");
    for (name, got) in [("a", items(a)), ("b", items(b)), ("c", items(c))] {
        assert!(got == want, "replica {name} holds {:?}", got.iter().map(|(k, _)| k).collect::<Vec<_>>());
    }
    for (name, err) in [("a", dot_rows_complete(a)), ("b", dot_rows_complete(b)), ("c", dot_rows_complete(c))] {
        assert_eq!(err, Ok(()), "replica {name}'s dot index");
    }
}

/// c's delta for `peer` holds every entry c stores whose dot `peer` does not cover.
fn assert_delta_complete<T: Storage>(c: &Replica<T>, peer: &lethe_engine::VersionVector) {
    let delta: Vec<Vec<u8>> = c.delta_for(peer).unwrap().entries.into_iter().map(|e| e.key).collect();
    let mut beyond = Vec::new();
    c.store()
        .snapshot()
        .unwrap()
        .scan_keys(&KeyRange::all(), &mut |e| {
            if !peer.covers(e.dot()) {
                beyond.push(e.key);
            }
            ControlFlow::Continue(())
        })
        .unwrap();
    let missing: Vec<_> = beyond.iter().filter(|k| !delta.contains(k)).map(|k| String::from_utf8_lossy(k)).collect();
    assert!(missing.is_empty(), "c's delta for {peer:?} leaves out {missing:?}");
}

#[test]
fn rows_listed_before_the_second_bootstrap_lands_still_cover_it() {
    let clock = ManualClock::new(T0);
    let n = 20;
    let (mut a, mut b) = two_sources(&clock, n, b"v");
    let mut c = replica(3, &clock);
    let mut from_a = Link::open(&mut a, &mut c);
    let mut from_b = Link::open(&mut b, &mut c);
    // a's bootstrap completes; c starts writing its rows in the background (the list is taken).
    from_a.finish(&mut a, &mut c);
    assert!(c.write_deferred_rows(ROWS_PER_CALL).unwrap(), "rows are left after the first call");
    // Then b's bootstrap lands, with what a has not seen, and c finishes its rows.
    from_b.finish(&mut b, &mut c);
    write_rows(&mut c);
    assert!(!c.deferred_rows_writable(), "every row written");
    let to_a = c.delta_for(a.vector()).unwrap();

    carry_on(&mut a, &mut b, &mut c);
    assert_everywhere(&a, &b, &c, &expected(n, b"v"));
    assert!(to_a.entries.iter().any(|e| e.key == b"before-join"), "c's delta to a left the key out");
}

/// A small deterministic generator for schedules.
struct Schedule(u64);

impl Schedule {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        (self.0 >> 33) % n
    }
}

#[test]
fn any_interleaving_of_two_bootstraps_rows_and_restarts_leaves_every_entry_indexed() {
    // Values of 100 KiB: each bootstrap takes several 1 MiB chunks.
    let value = vec![7u8; 100 * 1024];
    let n = 30;
    for seed in 0..64 {
        let clock = ManualClock::new(T0);
        let (mut a, mut b) = two_sources(&clock, n, &value);
        let mut c = replica(3, &clock);
        let mut links = [Some(Link::open(&mut a, &mut c)), Some(Link::open(&mut b, &mut c))];
        let mut schedule = Schedule(seed);
        let mut restarted = false;
        // A head start of a few of a's frames (and a row call) for some seeds: b's chunks then
        // land while c works through a row list taken before them.
        for _ in 0..seed % 8 {
            if let Some(link) = links[0].as_mut()
                && link.step(&mut a, &mut c).is_none()
            {
                links[0] = None;
            }
        }
        c.write_deferred_rows(ROWS_PER_CALL).unwrap();
        while links.iter().any(Option::is_some) {
            match schedule.below(8) {
                0..=2 => {
                    if let Some(link) = links[0].as_mut()
                        && link.step(&mut a, &mut c).is_none()
                    {
                        links[0] = None;
                    }
                }
                3..=5 => {
                    if let Some(link) = links[1].as_mut()
                        && link.step(&mut b, &mut c).is_none()
                    {
                        links[1] = None;
                    }
                }
                6 => {
                    c.write_deferred_rows(ROWS_PER_CALL).unwrap();
                }
                _ if !restarted && seed % 4 == 0 => {
                    // A restart: both sessions end, the row list is gone with the process.
                    restarted = true;
                    links = [None, None];
                    let store = c.into_store();
                    c = Replica::open(store, ReplicaId(3), Config::default(), Arc::new(clock.clone())).unwrap();
                }
                _ => {}
            }
            if !c.deferred_rows_writable() {
                assert_delta_complete(&c, a.vector());
                assert_delta_complete(&c, b.vector());
            }
        }
        // Whatever did not finish ends with ordinary sessions; then the rows are written.
        sync(&mut a, &mut c, false);
        sync(&mut b, &mut c, false);
        for peer in [a.vector().clone(), b.vector().clone(), lethe_engine::VersionVector::new()] {
            assert_delta_complete(&c, &peer);
        }
        write_rows(&mut c);
        assert!(!c.deferred_rows_writable(), "seed {seed}: every row written");
        for peer in [a.vector().clone(), b.vector().clone(), lethe_engine::VersionVector::new()] {
            assert_delta_complete(&c, &peer);
        }
        dot_rows_complete(&c).unwrap_or_else(|e| panic!("seed {seed}: {e}"));
        carry_on(&mut a, &mut b, &mut c);
        assert_everywhere(&a, &b, &c, &expected(n, &value));
    }
}

#[test]
fn a_restart_between_the_two_bootstraps_on_redb_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.redb");
    let clock = ManualClock::new(T0);
    let value = vec![7u8; 100 * 1024];
    let n = 30;
    let (mut a, mut b) = two_sources(&clock, n, &value);
    let open = |clock: &ManualClock| {
        let store = RedbStore::open(&path).unwrap();
        Replica::open(store, ReplicaId(3), Config::default(), Arc::new(clock.clone())).unwrap()
    };
    let mut c = open(&clock);
    let mut from_a = Link::open(&mut a, &mut c);
    let mut from_b = Link::open(&mut b, &mut c);
    from_a.finish(&mut a, &mut c);
    assert!(c.write_deferred_rows(ROWS_PER_CALL).unwrap());
    // b's first chunk is in when c restarts.
    while from_b.step(&mut b, &mut c) != Some("Entries") {}
    drop((from_a, from_b));
    drop(c);
    let mut c = open(&clock);
    assert!(!c.deferred_rows_writable(), "b's chunk is not covered by c's vector yet");
    sync(&mut b, &mut c, false);
    write_rows(&mut c);
    assert!(!c.deferred_rows_writable());
    dot_rows_complete(&c).unwrap();
    carry_on(&mut a, &mut b, &mut c);
    assert_everywhere(&a, &b, &c, &expected(n, &value));
}
