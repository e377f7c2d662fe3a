//! Bytes as a peer could send them on a QUIC stream: cut into length-prefixed frames by the
//! transport's reader (raw, or zstd-compressed when the prefix's top bit is set), then decoded as
//! session messages (and fed to a live session and a live receiver on a replica holding some
//! writes) and as control requests and responses. The input is also sent as one frame through a
//! compressing writer and read back.
//!
//! Holds: nothing panics; no frame over the limit is read, however much a compressed body claims
//! or inflates to; allocation stays bounded (run with `-rss_limit_mb`); what a compressing writer
//! sends reads back the same; a replica that refused a frame still answers reads.
//!
//! Seeds: `fuzz/seeds/frames/` holds zstd bombs (100 MB of zeros in about 3 KB, with and without
//! a declared size), a valid compressed frame, a corrupt one and one cut short:
//! `cargo fuzz run frames fuzz/seeds/frames`.

#![no_main]

use lethe_engine::live::LiveReceiver;
use lethe_engine::session::{FRAME_BYTES_MAX, Message, Session};
use lethe_engine::{Config, KeyRange, ManualClock, MemoryStore, PutOptions, Replica, ReplicaId};
use lethe_node::control::{self, Request, Response};
use lethe_transport::{FrameReader, FrameWriter};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, LazyLock};

static RUNTIME: LazyLock<tokio::runtime::Runtime> =
    LazyLock::new(|| tokio::runtime::Builder::new_current_thread().build().expect("runtime"));

fuzz_target!(|data: &[u8]| {
    let frames: Vec<Vec<u8>> = RUNTIME.block_on(async {
        let mut reader = FrameReader::decompressing(data, FRAME_BYTES_MAX);
        let mut frames = Vec::new();
        while let Ok(Some(frame)) = reader.next().await {
            assert!(frame.len() <= FRAME_BYTES_MAX);
            frames.push(frame);
        }
        // Whatever the input, a compressing writer's frame of it reads back as it was.
        if data.len() <= FRAME_BYTES_MAX {
            let mut w = FrameWriter::compressing(Vec::new(), FRAME_BYTES_MAX);
            w.send(data).await.expect("the input is under the frame limit");
            let sent = w.into_inner().await.expect("a Vec takes every write");
            let mut back = FrameReader::decompressing(sent.as_slice(), FRAME_BYTES_MAX);
            assert_eq!(back.next().await.expect("our own frame reads").as_deref(), Some(data));
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
