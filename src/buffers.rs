//! The chunk buffers that travel from the downloaders to the consumer and back: a pool of
//! emptied buffers for reuse, and the two places for chunks with a big buffer (long lines), so
//! that long lines never fill the channel with large allocations.

use crate::ndjson::LineMeta;
use crossbeam_channel::{bounded, select, Receiver, Sender};

/// A chunk's buffers: its bytes and its line index.
pub(crate) type Buffer = (Vec<u8>, Vec<LineMeta>);

pub(crate) struct Buffers {
    chunk_bytes: usize,
    recycle_tx: Sender<Buffer>,
    recycle_rx: Receiver<Buffer>,
    /// A downloader takes a place before it sends a chunk with a big buffer, the consumer gives
    /// it back when done with it.
    big_tx: Sender<()>,
    big_rx: Receiver<()>,
}

impl Buffers {
    /// Pooling up to `pooled` buffers of chunks of about `chunk_bytes`.
    pub(crate) fn new(chunk_bytes: usize, pooled: usize) -> Buffers {
        let (recycle_tx, recycle_rx) = bounded(pooled);
        let (big_tx, big_rx) = bounded::<()>(2);
        Buffers {
            chunk_bytes,
            recycle_tx,
            recycle_rx,
            big_tx,
            big_rx,
        }
    }

    /// A chunk buffer above this size holds a long line (see [`Buffers::release`]).
    pub(crate) fn big_chunk_bytes(&self) -> usize {
        4 * self.chunk_bytes + 64
    }

    /// A zero-filled buffer of at least `len` bytes (reused when the consumer gave one back).
    pub(crate) fn take(&self, len: usize) -> Buffer {
        match self.recycle_rx.try_recv() {
            Ok((mut d, l)) => {
                if d.len() < len {
                    d.resize(len, 0);
                }
                (d, l)
            }
            Err(_) => (vec![0u8; len], Vec::new()),
        }
    }

    /// Put buffers into the pool (dropped when it is full or they are too big to keep).
    pub(crate) fn recycle(&self, data: Vec<u8>, lines: Vec<LineMeta>) {
        if data.capacity() <= self.big_chunk_bytes() {
            let _ = self.recycle_tx.try_send((data, lines));
        }
    }

    /// The consumer is done with a chunk's buffers: back to the pool, unless they grew for a
    /// long line (then they are freed and their place among the big chunks is given back).
    pub(crate) fn release(&self, data: Vec<u8>, lines: Vec<LineMeta>) {
        if data.capacity() > self.big_chunk_bytes() {
            let _ = self.big_rx.try_recv();
            return;
        }
        self.recycle(data, lines);
    }

    /// Take a place for a chunk with a big buffer, waiting for the consumer to give one back;
    /// false when the export stopped (`stop` disconnected) first.
    pub(crate) fn reserve_big(&self, stop: &Receiver<()>) -> bool {
        select! {
            send(self.big_tx, ()) -> r => r.is_ok(),
            recv(stop) -> _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_big_ones_freed() {
        let b = Buffers::new(1000, 4);
        let (d, l) = b.take(2000);
        assert_eq!(d.len(), 2000);
        assert!(d.iter().all(|&x| x == 0));
        let ptr = d.as_ptr();
        b.release(d, l);
        assert_eq!(b.take(10).0.as_ptr(), ptr, "a small buffer comes back");
        // A big buffer holds one of two places until the consumer releases it.
        let (_stop_tx, stop) = bounded::<()>(0);
        assert!(b.reserve_big(&stop));
        assert!(b.reserve_big(&stop));
        let big = vec![0u8; b.big_chunk_bytes() + 1];
        b.release(big, Vec::new());
        assert!(b.reserve_big(&stop), "the release gave a place back");
        // Both places taken: a stop ends the wait.
        drop(_stop_tx);
        assert!(!b.reserve_big(&stop));
        let (d, _) = b.take(10);
        assert!(
            d.capacity() <= b.big_chunk_bytes(),
            "big buffers are not pooled"
        );
    }
}
