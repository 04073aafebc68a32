//! Byte buffers for socket reads and writes, kept for reuse per worker
//! thread. A busy connection takes one per wake-up and gives it back once
//! everything in it was handled (or written), so idle connections hold
//! none and busy ones do not call the allocator for each batch. Used by
//! the websocket framing (`calls::link`) and the TLS layer
//! (`edge::tls_stream`).

use std::cell::RefCell;

/// Capacity of a fresh buffer.
pub(crate) const CHUNK: usize = 32 * 1024;

/// Buffers kept per thread, and the largest kept.
const SPARE_BUFFERS: usize = 8;
const SPARE_CAPACITY: usize = 256 * 1024;

thread_local! {
    static SPARE: RefCell<Vec<Vec<u8>>> = const { RefCell::new(Vec::new()) };
}

/// An empty buffer with room for at least `min` bytes.
pub(crate) fn take(min: usize) -> Vec<u8> {
    let mut buf = SPARE
        .with_borrow_mut(Vec::pop)
        .unwrap_or_else(|| Vec::with_capacity(CHUNK));
    buf.reserve(min);
    buf
}

/// Gives `buf` back for reuse (or frees it, if it is large or enough are
/// kept already).
pub(crate) fn give(mut buf: Vec<u8>) {
    if buf.capacity() == 0 || buf.capacity() > SPARE_CAPACITY {
        return;
    }
    buf.clear();
    SPARE.with_borrow_mut(|spare| {
        if spare.len() < SPARE_BUFFERS {
            spare.push(buf);
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_and_large_ones_freed() {
        let a = take(10);
        assert!(a.capacity() >= CHUNK);
        let ptr = a.as_ptr();
        give(a);
        let b = take(10);
        assert_eq!(b.as_ptr(), ptr, "the buffer given back is taken again");
        assert!(b.is_empty());
        let big = Vec::<u8>::with_capacity(SPARE_CAPACITY + 1);
        let big_ptr = big.as_ptr();
        give(big);
        let c = take(10);
        assert_ne!(c.as_ptr(), big_ptr, "an oversized buffer is not kept");
    }
}
