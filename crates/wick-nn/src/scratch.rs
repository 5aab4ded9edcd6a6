//! Reused `f32` buffers for the CPU kernels' temporaries (packed weights, gemm products,
//! gathered gradients, partial sums): taking one costs no zero fill.
//!
//! A convolution's temporaries are megabytes each and live for one call. Allocated with
//! `vec![0.0; n]` every call, each costs a `memset` over memory the kernel then overwrites
//! anyway (glibc's `calloc` must clear reused heap memory): 5-6% of an xresnet18 step at 48 px
//! (`perf record` of the models bench, docs/performance.md). A [`Scratch`] comes from a small
//! process-wide pool instead and goes back when dropped. Its values are whatever its last user
//! wrote — always initialised `f32`s, never uninitialised memory — so every user writes each
//! value before reading it (one that accumulates overwrites with its first term, or fills
//! zeros itself where there is none). Results never
//! depend on which buffer is handed out: nothing reads a value it did not write first. Debug
//! builds (every test) hand buffers out filled with NaN, so a kernel that breaks this fails its
//! tests against naive references instead of reading stale numbers.
//!
//! The pool is bounded ([`MAX_POOLED`] buffers, [`MAX_POOLED_VALUES`] values); what does not
//! fit is freed, and [`release_idle`] frees what waits (the convolution calls it after each
//! forward pass, so that inference, which has no backward pass to reuse the buffers, never
//! holds them at its peak). Buffers are the kernels' internal working memory only: a tensor's
//! storage is never a scratch buffer.

use std::ops::{Deref, DerefMut};
use std::sync::{Mutex, PoisonError};

/// At most this many buffers wait in the pool ...
const MAX_POOLED: usize = 64;

/// ... holding at most this many values in all (256 MiB of `f32`).
const MAX_POOLED_VALUES: usize = 64 << 20;

/// Free buffers, each at the full length it was made with (`vec![0.0; len]`: capacity equal
/// to length), so taking a shorter piece never shrinks it.
static POOL: Mutex<Vec<Vec<f32>>> = Mutex::new(Vec::new());

/// A working buffer of `len` `f32`s from the pool (see the module docs); back to the pool when
/// dropped. Dereferences to `[f32]` of exactly the length asked for.
#[derive(Debug)]
pub(crate) struct Scratch {
    values: Vec<f32>,
    len: usize,
}

impl Scratch {
    /// `len` values with no particular content (what the buffer's last user left, or zeros
    /// when no pooled buffer is long enough and a new one is made): the caller writes every
    /// value before reading it.
    pub(crate) fn take(len: usize) -> Self {
        let pooled = {
            let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
            // The smallest buffer that holds `len`; none: a new one (growing a pooled buffer
            // would copy its stale values and could leave its capacity above its length).
            pool.iter()
                .enumerate()
                .filter(|(_, buffer)| buffer.len() >= len)
                .min_by_key(|(_, buffer)| buffer.len())
                .map(|(index, _)| index)
                .map(|index| pool.swap_remove(index))
        };
        let mut values = pooled.unwrap_or_else(|| vec![0.0; len]);
        if cfg!(debug_assertions) {
            // Tests build with debug assertions: a value read before it is written is NaN
            // there, and fails the kernels' comparisons with their references.
            values[..len].fill(f32::NAN);
        }
        Self { values, len }
    }
}

/// Frees every buffer waiting in the pool (the ones in use stay with their users).
pub(crate) fn release_idle() {
    let idle = std::mem::take(&mut *POOL.lock().unwrap_or_else(PoisonError::into_inner));
    drop(idle);
}

impl Deref for Scratch {
    type Target = [f32];

    fn deref(&self) -> &[f32] {
        &self.values[..self.len]
    }
}

impl DerefMut for Scratch {
    fn deref_mut(&mut self) -> &mut [f32] {
        &mut self.values[..self.len]
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let values = std::mem::take(&mut self.values);
        if values.is_empty() {
            return;
        }
        let mut pool = POOL.lock().unwrap_or_else(PoisonError::into_inner);
        let pooled: usize = pool.iter().map(Vec::len).sum();
        if pool.len() < MAX_POOLED && pooled + values.len() <= MAX_POOLED_VALUES {
            pool.push(values);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_has_the_length_asked_for_whatever_the_pool_holds() {
        // Other tests share the pool: only what this test wrote itself is checked.
        let mut first = Scratch::take(1000);
        assert_eq!(first.len(), 1000);
        first.fill(7.0);
        drop(first);
        let short = Scratch::take(10);
        assert_eq!(short.len(), 10);
        // Debug builds hand out NaNs, never the last user's values.
        if cfg!(debug_assertions) {
            assert!(short.iter().all(|value| value.is_nan()));
        }
        let long = Scratch::take(3 << 20);
        assert_eq!(long.len(), 3 << 20);
    }
}
