//! Bytes as a peer could send them on a QUIC stream: cut into length-prefixed frames by the
//! transport's reader, then decoded as session messages (and fed to a live session and a live
//! receiver on a replica holding some writes) and as control requests and responses.
//!
//! Holds: nothing panics; no frame over the limit is read; allocation stays bounded (run with
//! `-rss_limit_mb`); a replica that refused a frame still answers reads.

#![no_main]

use lethe_engine::live::LiveReceiver;
use lethe_engine::session::{FRAME_BYTES_MAX, Message, Session};
use lethe_engine::{Config, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId};
use lethe_node::control::{self, Request, Response};
use lethe_transport::FrameReader;
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));

fuzz_target!(|data: &[u8]| {
    let frames: Vec<Vec<u8>> = RUNTIME.block_on(async {
        let mut reader = FrameReader::new(data, FRAME_BYTES_MAX);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = reader.next().await {
            assert!(frame.len() <= FRAME_BYTES_MAX);
            frames.push(frame);
        }
        frames
    });
    let clock = Arc::new(ManualClock::new(1_700_000_000_000));
    let mut replica = Replica::open(MemoryStore::new(), ReplicaId(1), Config::default(), clock).unwrap();
    replica.put("a", "1", PutOptions::default()).unwrap();
    replica.delete("b").unwrap();
    let mut session = Session::new(&mut replica, None).unwrap();
    let mut live = LiveReceiver::new(ReplicaId(2));
    for frame in &frames {
        let _ = Message::decode(frame);
        let _ = control::decode::<Request>(frame);
        let _ = control::decode::<Response>(frame);
        if session.handle(&mut replica, frame).is_ok() {
            while let Ok(Some(_)) = session.poll_transmit(&replica) {}
        }
        let _ = live.handle(&mut replica, frame);
    }
    assert!(replica.scan(&KeyRange::all(), 100).is_ok());
});
