use lethe_engine::*;
use std::sync::Arc;
use std::time::Instant;
fn main() {
    let dir = tempfile::tempdir().unwrap();
    let clock: Arc<dyn WallClock> = Arc::new(SystemClock);
    let mut a = Replica::open(
        RedbStore::open(dir.path().join("a.redb")).unwrap(),
        ReplicaId(1),
        Config::default(),
        clock.clone(),
    )
    .unwrap();
    let mut b =
        Replica::open(RedbStore::open(dir.path().join("b.redb")).unwrap(), ReplicaId(2), Config::default(), clock)
            .unwrap();
    let n = 1_000_000u64;
    for c in (0..n).collect::<Vec<_>>().chunks(10_000) {
        let mut wb = WriteBatch::new();
        for i in c {
            wb.put(
                format!("key:{}", &blake3::hash(&i.to_le_bytes()).to_hex()[..20]),
                vec![b'x'; 100],
                PutOptions::default(),
            );
        }
        a.write(wb).unwrap();
    }
    let t = Instant::now();
    let out = session::sync_in_process(&mut a, &mut b, false).unwrap();
    println!("bootstrap {:.2} s, {} bytes", t.elapsed().as_secs_f64(), out.a.bytes_sent);
}
