//! A zstd bomb costs the reader no more than the frame limit: every allocation made while one
//! frame is read is counted (a global allocator that keeps the peak of bytes live), and reading a
//! 100 MB bomb peaks far below the limit. One test in this binary, so nothing else allocates
//! meanwhile. (zstd's own decompression context is allocated by C and not counted: it is fixed,
//! about 100 KiB, and one-shot decompression writes straight into the counted output buffer.)

use lethe_transport::frame::COMPRESSED_FLAG;
use lethe_transport::{Error, FrameReader};
use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

// SAFETY: defers to the system allocator; only counts.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
        PEAK.fetch_max(live, Ordering::Relaxed);
        // SAFETY: the caller's layout, passed on.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        // SAFETY: allocated above with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Reads one frame from `bytes` with the 4 MiB limit; the error and the peak bytes allocated
/// beyond what was live before.
fn read_one(bytes: &[u8]) -> (Error, usize) {
    let runtime = tokio::runtime::Builder::new_current_thread().build().unwrap();
    let before = LIVE.load(Ordering::Relaxed);
    PEAK.store(before, Ordering::Relaxed);
    let result = runtime.block_on(FrameReader::decompressing(bytes, 4 << 20).next());
    let peak = PEAK.load(Ordering::Relaxed) - before;
    (result.unwrap_err(), peak)
}

fn framed(body: &[u8]) -> Vec<u8> {
    [&(COMPRESSED_FLAG | u32::try_from(body.len()).unwrap()).to_be_bytes()[..], body].concat()
}

#[test]
fn reading_a_zstd_bomb_allocates_no_more_than_its_compressed_size_and_what_it_declares() {
    // 100 MB of zeros, declared: refused from the header.
    let declared = zstd::bulk::compress(&vec![0u8; 100_000_000], 3).unwrap();
    let frame = framed(&declared);
    let (err, peak) = read_one(&frame);
    assert!(matches!(err, Error::DeclaredTooLarge { declared: 100_000_000, .. }), "{err}");
    assert!(peak < frame.len() + 4096, "peak {peak} bytes for a {}-byte frame", frame.len());

    // 100 bytes declared, then 100 MB of zeros undeclared: the output is the 100 bytes.
    let mut lying = zstd::bulk::compress(&[1u8; 100], 3).unwrap();
    let mut encoder = zstd::stream::write::Encoder::new(&mut lying, 3).unwrap();
    encoder.include_contentsize(false).unwrap();
    for _ in 0..100 {
        std::io::Write::write_all(&mut encoder, &[0u8; 1_000_000]).unwrap();
    }
    encoder.finish().unwrap();
    let frame = framed(&lying);
    let (err, peak) = read_one(&frame);
    assert!(matches!(err, Error::Corrupt { .. }), "{err}");
    assert!(peak < frame.len() + 100 + 4096, "peak {peak} bytes for a {}-byte frame", frame.len());
}
