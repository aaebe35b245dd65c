//! Large f32 buffers recycled from one training step to the next instead of freed and allocated again: a fresh
//! large allocation is zeroed by the allocator and its pages by the kernel, which cost a convolutional model about
//! a sixth of its step (`perf`: memset 8.7%, clear_page 6.8%). A recycled buffer keeps the values of its last use,
//! so only buffers that the kernel overwrites whole are taken stale; the others are zeroed in place.

use parking_lot::Mutex;

/// Buffers smaller than this many values are left to the allocator (its small-object pages are reused anyway).
const SMALLEST: usize = 1 << 16;
/// At most this many buffers wait in the pool; more are freed.
const MOST_KEPT: usize = 64;

/// The buffers waiting to be used again.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A buffer of `len` values whose contents are unspecified (the values of its last use, or zeros): for outputs
/// that the caller overwrites whole.
pub(crate) fn stale(len: usize) -> Vec<f32> {
    if len < SMALLEST {
        return vec![0.0; len];
    }
    let taken = {
        let mut pool = POOL.lock();
        let fitting = pool.iter().enumerate().filter(|(_, buffer)| buffer.capacity() >= len);
        let best = fitting.min_by_key(|(_, buffer)| buffer.capacity()).map(|(index, _)| index);
        best.map(|index| pool.swap_remove(index))
    };
    match taken {
        Some(mut buffer) => {
            buffer.truncate(len);
            buffer.resize(len, 0.0);
            buffer
        }
        None => vec![0.0; len],
    }
}

/// A buffer of `len` zeros (a recycled one cleared in place, without fresh pages).
pub(crate) fn zeroed(len: usize) -> Vec<f32> {
    let mut buffer = stale(len);
    buffer.fill(0.0);
    buffer
}

/// Hands `buffer` back for a later [`stale`] or [`zeroed`].
pub(crate) fn recycle(buffer: Vec<f32>) {
    if buffer.capacity() >= SMALLEST {
        let mut pool = POOL.lock();
        if pool.len() < MOST_KEPT {
            pool.push(buffer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_come_back_at_the_asked_length_and_zeroed_ones_are_zero() {
        let mut first = stale(SMALLEST + 5);
        first.iter_mut().for_each(|v| *v = 7.0);
        recycle(first);
        let again = stale(SMALLEST + 1);
        assert_eq!(again.len(), SMALLEST + 1);
        recycle(again);
        let cleared = zeroed(SMALLEST + 3);
        assert_eq!(cleared.len(), SMALLEST + 3);
        assert!(cleared.iter().all(|&v| v == 0.0));
        assert_eq!(stale(10), vec![0.0; 10], "small buffers are fresh");
    }
}
