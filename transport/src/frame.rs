//! Length-prefixed frames, each raw or compressed with zstd (since protocol version 3).
//!
//! A frame on the wire is a 4-byte big-endian prefix, then a body of that many bytes. The top bit
//! of the prefix ([`COMPRESSED_FLAG`]) says whether the body is the frame itself (one CBOR
//! message) or one zstd frame holding it; the other 31 bits are the body's length on the wire.
//! A [`FrameWriter::compressing`] writer compresses frames of at least [`COMPRESS_BYTES_MIN`] at
//! [`COMPRESSION_LEVEL`], and sends a frame raw when compressing it would not make it smaller;
//! a [`FrameReader::decompressing`] reader takes both. Whether a connection compresses is
//! settled in its TLS handshake (ALPN `lethe/6z` or `lethe/6`, see [`crate::endpoint`]); on one
//! that does not, writers send raw and readers ([`FrameReader::new`]) refuse a compressed frame.
//!
//! The reader trusts no length a peer sends. It checks the prefix's length against the limit
//! before it allocates the body, so a hostile peer cannot make a node reserve more than one
//! maximal frame per stream. A compressed body must declare its decompressed size in its zstd
//! frame header; a size over the limit is refused before anything is allocated for it, and the
//! decompressor writes into a buffer of exactly the declared size, so a body that inflates
//! beyond what it declared (a zstd bomb, or a lie) fails instead of growing the buffer. Each
//! frame is compressed on its own (no window spans frames), so one frame's failure says nothing
//! about the next and the decoder keeps no history between frames.
//!
//! The writer coalesces small frames into one buffer and hands the stream one write per
//! [`FLUSH_BYTES`], so a burst of small messages does not cost a system call (or a QUIC packet)
//! each; each write waits for the peer's flow-control window, which is the backpressure: a slow
//! reader slows the writer instead of growing a buffer. A frame of [`FLUSH_BYTES`] or more skips
//! the buffer: it is written from the caller's bytes, or from its compressed copy, which is
//! dropped once written; so between frames a writer holds about one flush, not one maximal
//! frame.

use crate::error::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;
/// Queued frames are written out once they reach this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;
/// The prefix bit that marks a body compressed with zstd.
pub const COMPRESSED_FLAG: u32 = 1 << 31;
/// The longest body the prefix can announce (31 bits); limits above it are lowered to it.
pub const BODY_BYTES_MAX: usize = (COMPRESSED_FLAG - 1) as usize;
/// Frames shorter than this go raw: below it zstd's frame header and the CPU cost more than the
/// few bytes saved (a handshake, an acknowledgement, a small push).
pub const COMPRESS_BYTES_MIN: usize = 512;
/// The zstd level a compressing writer uses: zstd's default, a few hundred MB/s per core on this
/// kind of data, where higher levels cost several times the CPU for a few percent of bytes.
pub const COMPRESSION_LEVEL: i32 = 3;

/// Reads frames from a stream.
pub struct FrameReader<R> {
    inner: R,
    max: usize,
    /// Made at the first compressed frame (a reader that sees none never allocates one).
    decompressor: Option<zstd::bulk::Decompressor<'static>>,
    /// Whether compressed frames are taken (else refused).
    decompressing: bool,
    wire_bytes: u64,
}

impl<R> std::fmt::Debug for FrameReader<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameReader").field("max", &self.max).field("wire_bytes", &self.wire_bytes).finish()
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Raw frames of at most `max` bytes from `inner`; a compressed frame is refused
    /// ([`Error::CompressionNotNegotiated`]), as on a connection where this side or the peer
    /// turned compression off.
    pub fn new(inner: R, max: usize) -> FrameReader<R> {
        FrameReader { inner, max: max.min(BODY_BYTES_MAX), decompressor: None, decompressing: false, wire_bytes: 0 }
    }

    /// Raw and compressed frames of at most `max` bytes (decompressed, and on the wire) from
    /// `inner`.
    pub fn decompressing(inner: R, max: usize) -> FrameReader<R> {
        FrameReader { decompressing: true, ..FrameReader::new(inner, max) }
    }

    /// The next frame (decompressed), or `None` when the stream ends cleanly between frames.
    ///
    /// Fails with [`Error::FrameTooLarge`] for a body over the limit,
    /// [`Error::CompressionNotNegotiated`] for a compressed one a raw reader does not take,
    /// [`Error::DeclaredTooLarge`]
    /// for a compressed body that declares more, and [`Error::Corrupt`] for one that does not
    /// decompress to exactly what it declares; in each case before allocating more than the
    /// limit. The stream cannot be read on after an error.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut prefix = [0u8; PREFIX_BYTES];
        match read_full(&mut self.inner, &mut prefix).await? {
            0 => return Ok(None),
            PREFIX_BYTES => {}
            got => return Err(Error::Truncated { got, expected: PREFIX_BYTES }),
        }
        let prefix = u32::from_be_bytes(prefix);
        let compressed = prefix & COMPRESSED_FLAG != 0;
        let len = (prefix & !COMPRESSED_FLAG) as usize;
        if len > self.max {
            return Err(Error::FrameTooLarge { len, max: self.max });
        }
        if compressed && !self.decompressing {
            return Err(Error::CompressionNotNegotiated { len });
        }
        let mut body = vec![0u8; len];
        let got = read_full(&mut self.inner, &mut body).await?;
        self.wire_bytes += (PREFIX_BYTES + got) as u64;
        if got < len {
            return Err(Error::Truncated { got, expected: len });
        }
        if !compressed {
            return Ok(Some(body));
        }
        self.decompress(&body).map(Some)
    }

    /// The frame a compressed body holds, in a buffer of exactly its declared size.
    fn decompress(&mut self, body: &[u8]) -> Result<Vec<u8>, Error> {
        let declared = match zstd::zstd_safe::get_frame_content_size(body) {
            Ok(Some(declared)) => declared,
            Ok(None) => return Err(Error::Corrupt { reason: "a compressed frame must declare its size".into() }),
            Err(_) => return Err(Error::Corrupt { reason: "not a zstd frame".into() }),
        };
        let len = match usize::try_from(declared) {
            Ok(len) if len <= self.max => len,
            _ => return Err(Error::DeclaredTooLarge { declared, max: self.max }),
        };
        let decompressor = match &mut self.decompressor {
            Some(d) => d,
            None => self
                .decompressor
                .insert(zstd::bulk::Decompressor::new().map_err(|e| Error::Stream(format!("starting zstd: {e}")))?),
        };
        // The buffer is the cap: zstd writes into its capacity and fails rather than grow it.
        let mut frame = Vec::with_capacity(len);
        match decompressor.decompress_to_buffer(body, &mut frame) {
            Ok(n) if n == len && frame.len() == len => Ok(frame),
            Ok(n) => Err(Error::Corrupt { reason: format!("decompressed to {n} bytes, not the {len} it declares") }),
            Err(e) => Err(Error::Corrupt { reason: format!("{e} (declared {len} bytes)") }),
        }
    }

    /// Bytes read off the stream so far: prefixes and bodies as they came (compressed or not).
    #[must_use]
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// The stream.
    pub fn into_inner(self) -> R {
        self.inner
    }
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
async fn read_full<R: AsyncRead + Unpin>(r: &mut R, buf: &mut [u8]) -> Result<usize, Error> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]).await.map_err(|e| Error::Stream(e.to_string()))? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// How a writer treats frames of at least [`COMPRESS_BYTES_MIN`].
enum Compression {
    /// Every frame goes raw.
    Off,
    /// zstd at [`COMPRESSION_LEVEL`]; the context is made at the first frame long enough.
    Zstd(Option<zstd::bulk::Compressor<'static>>),
}

/// A zstd context at [`COMPRESSION_LEVEL`] that declares each frame's size (zstd's default, which
/// the reader requires) and ends it with a checksum of its content (4 bytes), so a corrupt body
/// fails in the reader rather than decoding to other bytes of the right length.
fn new_compressor() -> std::io::Result<zstd::bulk::Compressor<'static>> {
    let mut compressor = zstd::bulk::Compressor::new(COMPRESSION_LEVEL)?;
    compressor.include_checksum(true)?;
    compressor.include_contentsize(true)?;
    Ok(compressor)
}

/// Writes frames to a stream, coalescing small ones.
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    max: usize,
    compression: Compression,
    wire_bytes: u64,
}

impl<W> std::fmt::Debug for FrameWriter<W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FrameWriter")
            .field("max", &self.max)
            .field("queued", &self.buf.len())
            .field("compressing", &matches!(self.compression, Compression::Zstd(_)))
            .field("wire_bytes", &self.wire_bytes)
            .finish()
    }
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Raw frames of at most `max` bytes to `inner`.
    pub fn new(inner: W, max: usize) -> FrameWriter<W> {
        FrameWriter {
            inner,
            buf: Vec::new(),
            max: max.min(BODY_BYTES_MAX),
            compression: Compression::Off,
            wire_bytes: 0,
        }
    }

    /// Frames of at most `max` bytes to `inner`, each of at least [`COMPRESS_BYTES_MIN`]
    /// compressed with zstd at [`COMPRESSION_LEVEL`] when that makes it smaller. Costs one zstd
    /// context (about 1 MiB at this level for 1 MiB frames) from the first such frame on.
    pub fn compressing(inner: W, max: usize) -> FrameWriter<W> {
        FrameWriter { compression: Compression::Zstd(None), ..FrameWriter::new(inner, max) }
    }

    /// Queues one frame; writes the queue out once it reaches [`FLUSH_BYTES`]. A frame of at least
    /// [`FLUSH_BYTES`] is written at once after the queue, from its own bytes or from a
    /// compressed copy dropped after the write: the writer keeps no buffer of its size.
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > self.max {
            return Err(Error::FrameTooLarge { len: frame.len(), max: self.max });
        }
        if frame.len() >= FLUSH_BYTES {
            return self.send_long(frame).await;
        }
        let start = self.buf.len();
        if !self.queue_compressed(frame) {
            // Within `max`, which is at most `BODY_BYTES_MAX`, so it fits the prefix's 31 bits.
            let len =
                u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge { len: frame.len(), max: self.max })?;
            self.buf.extend_from_slice(&len.to_be_bytes());
            self.buf.extend_from_slice(frame);
        }
        self.wire_bytes += (self.buf.len() - start) as u64;
        if self.buf.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
    }

    /// Writes out the queue, then `frame` (compressed if this writer compresses and that makes
    /// it shorter) without copying it into the queue.
    async fn send_long(&mut self, frame: &[u8]) -> Result<(), Error> {
        self.flush().await?;
        let compressed = self.compress_long(frame);
        let (flag, body) = match &compressed {
            Some(c) => (COMPRESSED_FLAG, c.as_slice()),
            None => (0, frame),
        };
        // Within `max`, which is at most `BODY_BYTES_MAX`, so it fits below the flag bit.
        let len = u32::try_from(body.len()).map_err(|_| Error::FrameTooLarge { len: body.len(), max: self.max })?;
        let prefix = (flag | len).to_be_bytes();
        self.inner.write_all(&prefix).await.map_err(|e| Error::Stream(e.to_string()))?;
        self.inner.write_all(body).await.map_err(|e| Error::Stream(e.to_string()))?;
        self.wire_bytes += (PREFIX_BYTES + body.len()) as u64;
        Ok(())
    }

    /// `frame` compressed, if this writer compresses and the result is shorter, in a buffer of
    /// at most the frame's length (zstd stops when it would not be shorter).
    fn compress_long(&mut self, frame: &[u8]) -> Option<Vec<u8>> {
        let compressor = self.compressor()?;
        let mut body = Vec::with_capacity(frame.len() - 1);
        match compressor.compress_to_buffer(frame, &mut body) {
            Ok(n) if n < frame.len() => Some(body),
            _ => None,
        }
    }

    /// The zstd context, made at the first frame that needs it; `None` if this writer sends
    /// every frame raw (or a context could not be made: raw frames are always valid).
    fn compressor(&mut self) -> Option<&mut zstd::bulk::Compressor<'static>> {
        let Compression::Zstd(context) = &mut self.compression else { return None };
        match context {
            Some(c) => Some(c),
            None => new_compressor().ok().map(|c| &mut *context.insert(c)),
        }
    }

    /// Queues `frame` compressed if this writer compresses, the frame is long enough and the
    /// result shorter; whether it did (if not, nothing was queued).
    fn queue_compressed(&mut self, frame: &[u8]) -> bool {
        let Compression::Zstd(context) = &mut self.compression else { return false };
        if frame.len() < COMPRESS_BYTES_MIN {
            return false;
        }
        let compressor = match context {
            Some(c) => c,
            None => match new_compressor() {
                Ok(c) => context.insert(c),
                // Raw frames are always valid: a node that cannot make a context sends raw.
                Err(_) => return false,
            },
        };
        let start = self.buf.len();
        self.buf.extend_from_slice(&[0; PREFIX_BYTES]);
        let body_start = self.buf.len();
        self.buf.reserve(zstd::zstd_safe::compress_bound(frame.len()));
        let mut cursor = std::io::Cursor::new(&mut self.buf);
        cursor.set_position(body_start as u64);
        match compressor.compress_to_buffer(frame, &mut cursor) {
            Ok(n) if n < frame.len() => {
                debug_assert_eq!(self.buf.len(), body_start + n);
                // n < frame.len() <= max <= BODY_BYTES_MAX, so it fits below the flag bit.
                let prefix = COMPRESSED_FLAG | (n as u32);
                self.buf[start..body_start].copy_from_slice(&prefix.to_be_bytes());
                true
            }
            _ => {
                self.buf.truncate(start);
                false
            }
        }
    }

    /// Bytes queued for the stream so far: prefixes and bodies as sent (compressed or not).
    #[must_use]
    pub fn wire_bytes(&self) -> u64 {
        self.wire_bytes
    }

    /// Writes out everything queued (waiting for the peer's flow-control window if need be).
    pub async fn flush(&mut self) -> Result<(), Error> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await.map_err(|e| Error::Stream(e.to_string()))?;
            self.buf.clear();
        }
        Ok(())
    }

    /// The stream, after a flush.
    pub async fn into_inner(mut self) -> Result<W, Error> {
        self.flush().await?;
        Ok(self.inner)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn frames_round_trip_and_bad_lengths_are_refused() {
        let mut w = FrameWriter::new(Vec::new(), 100);
        w.send(b"hello").await.unwrap();
        w.send(b"").await.unwrap();
        assert!(matches!(w.send(&[0; 101]).await, Err(Error::FrameTooLarge { len: 101, max: 100 })));
        let bytes = w.into_inner().await.unwrap();
        let mut r = FrameReader::new(bytes.as_slice(), 100);
        assert_eq!(r.next().await.unwrap(), Some(b"hello".to_vec()));
        assert_eq!(r.next().await.unwrap(), Some(Vec::new()));
        assert_eq!(r.next().await.unwrap(), None);

        // An announced length over the limit is refused before anything is allocated, with the
        // compressed flag set or not.
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut r = FrameReader::new(&huge[..], 100);
        assert!(matches!(r.next().await, Err(Error::FrameTooLarge { len: 0x7fff_ffff, max: 100 })));
        let mut r = FrameReader::new(&[0, 0, 0, 101][..], 100);
        assert!(matches!(r.next().await, Err(Error::FrameTooLarge { len: 101, max: 100 })));
        // A stream that ends inside a frame or a prefix.
        let mut r = FrameReader::new(&[0, 0, 0, 5, 1, 2][..], 100);
        assert!(matches!(r.next().await, Err(Error::Truncated { got: 2, expected: 5 })));
        let mut r = FrameReader::new(&[0, 0][..], 100);
        assert!(matches!(r.next().await, Err(Error::Truncated { got: 2, expected: 4 })));
    }

    #[tokio::test]
    async fn a_raw_reader_refuses_a_compressed_frame_and_a_raw_writer_sends_none() {
        let text: Vec<u8> = b"key:0123456789abcdef value of a key ".iter().copied().cycle().take(100_000).collect();
        let mut w = FrameWriter::compressing(Vec::new(), 1 << 20);
        w.send(&text).await.unwrap();
        let compressed = w.into_inner().await.unwrap();
        let mut r = FrameReader::new(compressed.as_slice(), 1 << 20);
        let len = compressed.len() - PREFIX_BYTES;
        assert!(matches!(r.next().await, Err(Error::CompressionNotNegotiated { len: l }) if l == len));
        assert!(Error::CompressionNotNegotiated { len }.is_peer_frame_error());

        let mut w = FrameWriter::new(Vec::new(), 1 << 20);
        w.send(&text[..1000]).await.unwrap();
        w.send(&text).await.unwrap();
        let raw = w.into_inner().await.unwrap();
        assert_eq!(raw.len(), 2 * PREFIX_BYTES + 1000 + text.len());
        let mut r = FrameReader::new(raw.as_slice(), 1 << 20);
        assert_eq!(r.next().await.unwrap().as_deref(), Some(&text[..1000]));
        assert_eq!(r.next().await.unwrap().as_ref(), Some(&text));
    }

    #[tokio::test]
    async fn a_long_frame_leaves_no_buffer_of_its_size_behind() {
        let max = 4 << 20;
        let text: Vec<u8> = b"key:0123456789abcdef value of a key ".iter().copied().cycle().take(max).collect();
        let noise: Vec<u8> = (0..max as u32).map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[0]).collect();
        for (compressing, frame) in [(false, &text), (true, &text), (true, &noise)] {
            let inner = Vec::new();
            let mut w = if compressing { FrameWriter::compressing(inner, max) } else { FrameWriter::new(inner, max) };
            w.send(b"a small frame before").await.unwrap();
            w.send(frame).await.unwrap();
            w.send(b"and one after").await.unwrap();
            w.flush().await.unwrap();
            // What the writer keeps between frames: its queue, of about one flush.
            assert!(w.buf.capacity() <= 2 * FLUSH_BYTES, "{} bytes kept", w.buf.capacity());
            let wire = w.wire_bytes();
            let bytes = w.into_inner().await.unwrap();
            assert_eq!(wire, bytes.len() as u64);
            let mut r = FrameReader::decompressing(bytes.as_slice(), max);
            assert_eq!(r.next().await.unwrap().as_deref(), Some(&b"a small frame before"[..]));
            assert_eq!(r.next().await.unwrap().as_ref(), Some(frame));
            assert_eq!(r.next().await.unwrap().as_deref(), Some(&b"and one after"[..]));
            assert_eq!(r.next().await.unwrap(), None);
        }
    }

    /// Reads one frame that a raw writer put as `prefix` then `body`.
    async fn read_framed(prefix: u32, body: &[u8], max: usize) -> Result<Option<Vec<u8>>, Error> {
        let bytes = [&prefix.to_be_bytes()[..], body].concat();
        FrameReader::decompressing(bytes.as_slice(), max).next().await
    }

    #[tokio::test]
    async fn long_frames_are_compressed_and_short_or_incompressible_ones_go_raw() {
        let text: Vec<u8> = b"key:0123456789abcdef value of a key ".iter().copied().cycle().take(10_000).collect();
        let noise: Vec<u8> =
            (0..2_000u32).flat_map(|i| blake3::hash(&i.to_le_bytes()).as_bytes()[..1].to_vec()).collect();
        let short = vec![b'a'; COMPRESS_BYTES_MIN - 1];
        let mut w = FrameWriter::compressing(Vec::new(), 1 << 20);
        for frame in [&text, &noise, &short] {
            w.send(frame).await.unwrap();
        }
        let wire = w.wire_bytes();
        let bytes = w.into_inner().await.unwrap();
        assert_eq!(wire, bytes.len() as u64);
        // The text shrinks; the noise and the short frame cost exactly their prefix.
        let raw_tail = 2 * PREFIX_BYTES + noise.len() + short.len();
        assert!(bytes.len() < raw_tail + PREFIX_BYTES + text.len() / 10, "{} bytes", bytes.len());
        assert_ne!(bytes[0] & 0x80, 0, "the text is flagged compressed");
        let tail = &bytes[bytes.len() - raw_tail..];
        assert_eq!(tail[..PREFIX_BYTES], (noise.len() as u32).to_be_bytes(), "the noise goes raw");

        let mut r = FrameReader::decompressing(bytes.as_slice(), 1 << 20);
        for frame in [&text, &noise, &short] {
            assert_eq!(r.next().await.unwrap().as_ref(), Some(frame));
        }
        assert_eq!(r.next().await.unwrap(), None);
        assert_eq!(r.wire_bytes(), wire);
    }

    #[tokio::test]
    async fn a_compressed_frame_that_declares_or_inflates_past_the_limit_is_refused() {
        let max = 64 * 1024;
        // Declares 1 MiB: refused from the header alone.
        let bomb = zstd::bulk::compress(&vec![0; 1 << 20], 3).unwrap();
        assert!(bomb.len() < 1024);
        assert!(matches!(
            read_framed(COMPRESSED_FLAG | bomb.len() as u32, &bomb, max).await,
            Err(Error::DeclaredTooLarge { declared: 1_048_576, max: 65_536 })
        ));

        // Declares nothing (a streaming encoder's frame): refused, whatever it would inflate to.
        let mut undeclared = Vec::new();
        let mut encoder = zstd::stream::write::Encoder::new(&mut undeclared, 3).unwrap();
        encoder.include_contentsize(false).unwrap();
        std::io::Write::write_all(&mut encoder, &[0; 100]).unwrap();
        encoder.finish().unwrap();
        assert!(matches!(
            read_framed(COMPRESSED_FLAG | undeclared.len() as u32, &undeclared, max).await,
            Err(Error::Corrupt { .. })
        ));

        // Declares 100 bytes and holds two frames (200 bytes): the output stops at the 100.
        let small = zstd::bulk::compress(&[7; 100], 3).unwrap();
        let two = [small.clone(), small.clone()].concat();
        let err = read_framed(COMPRESSED_FLAG | two.len() as u32, &two, max).await.unwrap_err();
        assert!(matches!(err, Error::Corrupt { .. }), "{err}");

        // A corrupt body (bytes flipped after the header, in a frame as a compressing writer
        // makes it, with its checksum) fails cleanly; so does one cut short.
        let mut w = FrameWriter::compressing(Vec::new(), max);
        w.send(&(0..5000u32).map(|i| (i * 7 % 251) as u8).collect::<Vec<_>>()).await.unwrap();
        let mut corrupt = w.into_inner().await.unwrap().split_off(PREFIX_BYTES);
        for b in &mut corrupt[8..] {
            *b ^= 0x5a;
        }
        assert!(matches!(
            read_framed(COMPRESSED_FLAG | corrupt.len() as u32, &corrupt, max).await,
            Err(Error::Corrupt { .. })
        ));
        let cut = &small[..small.len() - 3];
        assert!(matches!(read_framed(COMPRESSED_FLAG | cut.len() as u32, cut, max).await, Err(Error::Corrupt { .. })));
        assert!(matches!(read_framed(COMPRESSED_FLAG | 3, b"abc", max).await, Err(Error::Corrupt { .. })));
    }
}
