//! Length-prefixed frames: a 4-byte big-endian length, then that many bytes (one CBOR message).
//!
//! The reader checks the announced length against the limit before it allocates, so a hostile
//! peer cannot make a node reserve more than one maximal frame per stream. The writer coalesces
//! small frames into one buffer and hands the stream one write per [`FLUSH_BYTES`], so a burst of
//! small messages does not cost a system call (or a QUIC packet) each; each write waits for the
//! peer's flow-control window, which is the backpressure: a slow reader slows the writer instead
//! of growing a buffer.

use crate::error::Error;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Bytes of the length prefix.
pub const PREFIX_BYTES: usize = 4;
/// Queued frames are written out once they reach this many bytes.
pub const FLUSH_BYTES: usize = 64 * 1024;

/// Reads frames from a stream.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    max: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Frames of at most `max` bytes from `inner`.
    pub fn new(inner: R, max: usize) -> FrameReader<R> {
        FrameReader { inner, max }
    }

    /// The next frame, or `None` when the stream ends cleanly between frames.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, Error> {
        let mut prefix = [0u8; PREFIX_BYTES];
        match read_full(&mut self.inner, &mut prefix).await? {
            0 => return Ok(None),
            PREFIX_BYTES => {}
            got => return Err(Error::Truncated { got, expected: PREFIX_BYTES }),
        }
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max {
            return Err(Error::FrameTooLarge { len, max: self.max });
        }
        let mut frame = vec![0u8; len];
        let got = read_full(&mut self.inner, &mut frame).await?;
        if got < len {
            return Err(Error::Truncated { got, expected: len });
        }
        Ok(Some(frame))
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

/// Writes frames to a stream, coalescing small ones.
#[derive(Debug)]
pub struct FrameWriter<W> {
    inner: W,
    buf: Vec<u8>,
    max: usize,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    /// Frames of at most `max` bytes to `inner`.
    pub fn new(inner: W, max: usize) -> FrameWriter<W> {
        FrameWriter { inner, buf: Vec::new(), max }
    }

    /// Queues one frame; writes the queue out once it reaches [`FLUSH_BYTES`].
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), Error> {
        if frame.len() > self.max {
            return Err(Error::FrameTooLarge { len: frame.len(), max: self.max });
        }
        let len = u32::try_from(frame.len()).map_err(|_| Error::FrameTooLarge { len: frame.len(), max: self.max })?;
        self.buf.extend_from_slice(&len.to_be_bytes());
        self.buf.extend_from_slice(frame);
        if self.buf.len() >= FLUSH_BYTES {
            self.flush().await?;
        }
        Ok(())
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

        // An announced length over the limit is refused before anything is allocated.
        let huge = [0xff, 0xff, 0xff, 0xff, 1, 2, 3];
        let mut r = FrameReader::new(&huge[..], 100);
        assert!(matches!(r.next().await, Err(Error::FrameTooLarge { len: 0xffff_ffff, max: 100 })));
        // A stream that ends inside a frame or a prefix.
        let mut r = FrameReader::new(&[0, 0, 0, 5, 1, 2][..], 100);
        assert!(matches!(r.next().await, Err(Error::Truncated { got: 2, expected: 5 })));
        let mut r = FrameReader::new(&[0, 0][..], 100);
        assert!(matches!(r.next().await, Err(Error::Truncated { got: 2, expected: 4 })));
    }
}
