//! Large byte buffers, reused across messages.
//!
//! A megabyte `Vec<u8>` travelling in a call needs megabyte buffers at every step: the one
//! the frame is read into and the `Vec` it is decoded to, on both sides. Allocated afresh
//! each time and freed a moment later, buffers that large are where glibc's allocator hands
//! memory back to the kernel and asks for it again (it trims a heap whose free top grows
//! past a threshold), and then every page of the next one faults in anew: measured, 75,000
//! page faults for 210 calls of 1 MiB, and half the throughput. The few buffers a
//! connection has just finished with (a frame decoded, a part written) are kept here and
//! handed out for the next large read or decode instead.
//!
//! The pool is process-wide and bounded: at most [`MAX_KEPT`] buffers of [`MIN_SIZE`] to
//! [`MAX_SIZE`] bytes each, [`MAX_KEPT_BYTES`] in all. Smaller buffers are the allocator's
//! business (its per-thread caches do them well); larger ones are rare. Framers of other
//! transports may use it the same way: [`take`] a buffer for a large frame, [`recycle`]
//! what was read or written once done with it.

use std::sync::Mutex;

use bytes::Bytes;

/// The smallest buffer worth keeping: below this, the allocator's own caches serve better.
pub const MIN_SIZE: usize = 64 << 10;
/// The largest buffer kept.
pub const MAX_SIZE: usize = 8 << 20;
/// How many buffers are kept at most.
pub const MAX_KEPT: usize = 8;
/// How many bytes (of capacity) are kept at most, in all.
pub const MAX_KEPT_BYTES: usize = 16 << 20;

static POOL: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());

/// An empty `Vec` with room for at least `capacity` bytes: the smallest kept one that fits
/// (with at most twice that room, so that a small message never pins a large buffer), or a
/// new one.
///
/// A new one is rounded up to whole pages, with a little room to spare: a frame is its
/// payload plus a few bytes of header, so that a buffer made for a decoded payload also
/// takes the next frame of that size, and the other way round.
///
/// ```
/// let buf = rpc_core::buffers::take(1 << 20);
/// assert!(buf.is_empty() && buf.capacity() >= 1 << 20);
/// ```
pub fn take(capacity: usize) -> Vec<u8> {
    if !(MIN_SIZE..=MAX_SIZE).contains(&capacity) {
        return Vec::with_capacity(capacity);
    }
    {
        let mut pool = crate::lock::lock(&POOL);
        let best = pool
            .iter()
            .enumerate()
            .filter(|(_, buf)| (capacity..=capacity * 2).contains(&buf.capacity()))
            .min_by_key(|(_, buf)| buf.capacity())
            .map(|(i, _)| i);
        if let Some(i) = best {
            return pool.swap_remove(i);
        }
    }
    Vec::with_capacity((capacity + HEADER_ROOM).next_multiple_of(PAGE))
}

/// What a new buffer is rounded up to.
const PAGE: usize = 4096;
/// The room a new buffer has beyond what was asked, at least: more than a frame's header.
const HEADER_ROOM: usize = 256;

/// Keeps the buffer `bytes` lies in for [`take`], if it is large, if nothing else still
/// refers to it (a `Bytes` handed to a user keeps its buffer to itself), and if the pool
/// has room; otherwise `bytes` is simply dropped. Costs nothing for small buffers.
#[inline]
pub fn recycle(bytes: Bytes) {
    if bytes.len() >= MIN_SIZE {
        recycle_large(bytes);
    }
}

#[inline(never)]
fn recycle_large(bytes: Bytes) {
    let Ok(mut buf) = bytes.try_into_mut() else {
        return;
    };
    // Emptied first, so that taking the whole allocation back moves no bytes.
    buf.clear();
    recycle_vec(Vec::from(buf));
}

/// Keeps `buf` for [`take`] (emptied), under the same rules as [`recycle`].
pub fn recycle_vec(mut buf: Vec<u8>) {
    if !(MIN_SIZE..=MAX_SIZE).contains(&buf.capacity()) {
        return;
    }
    buf.clear();
    let mut pool = crate::lock::lock(&POOL);
    let kept: usize = pool.iter().map(Vec::capacity).sum();
    if pool.len() < MAX_KEPT && kept + buf.capacity() <= MAX_KEPT_BYTES {
        pool.push(buf);
    }
    // Otherwise `buf` is freed, after the lock is released.
}

/// Copies `bytes` into a new `Vec`, taken from the pool when it is large.
#[inline]
pub(crate) fn to_vec(bytes: &[u8]) -> Vec<u8> {
    if bytes.len() < MIN_SIZE {
        return bytes.to_vec();
    }
    let mut buf = take(bytes.len());
    buf.extend_from_slice(bytes);
    buf
}

#[cfg(test)]
mod tests {
    use super::*;

    // One test only: the pool is process-wide, and tests run in parallel.
    #[test]
    fn large_unshared_buffers_come_back_and_the_rest_do_not() {
        let size = MIN_SIZE * 3 + 17;
        let buf = vec![7u8; size];
        let ptr = buf.as_ptr();
        recycle(Bytes::from(buf));
        let again = take(size);
        assert!(again.is_empty());
        assert_eq!(
            again.as_ptr(),
            ptr,
            "the buffer just recycled is handed out again"
        );

        // A buffer still referred to elsewhere is not taken.
        let shared = Bytes::from(vec![1u8; size]);
        let other = shared.clone();
        recycle(shared);
        let fresh = take(size);
        assert_ne!(fresh.as_ptr(), other.as_ptr());
        assert_eq!(other[0], 1);

        // Nor is one much larger than asked for.
        let big = vec![0u8; size * 4];
        let big_ptr = big.as_ptr();
        recycle_vec(big);
        let fresh = take(size);
        assert_ne!(fresh.as_ptr(), big_ptr);

        // A part of a larger buffer brings the whole allocation back.
        let mut whole = Bytes::from(vec![3u8; size]);
        let tail = whole.split_off(100);
        drop(whole);
        let ptr = tail.as_ptr();
        recycle(tail);
        let back = take(size);
        assert_eq!(back.capacity(), size);
        assert_eq!(back.as_ptr(), ptr.wrapping_sub(100));
    }
}
