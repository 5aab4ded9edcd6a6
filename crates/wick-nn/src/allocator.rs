//! The process allocator's settings for training: keep freed memory for reuse instead of
//! returning it to the kernel after every op.
//!
//! Every op returns a freshly allocated tensor and candle frees it when its last handle drops,
//! so a training step allocates and frees its activations and gradients, hundreds of MB, once
//! per step. glibc's malloc serves blocks above its mmap threshold (128 KiB, growing to at most
//! 32 MiB) with a fresh `mmap` and gives them back with `munmap`, and it trims the top of the
//! heap when more than 128 KiB is free: the same memory is returned and faulted in again at
//! every step, one page fault per 4 KiB, each zeroed by the kernel. On this project's 2-core VM
//! that was 110 thousand faults per xresnet18 step at 128 px (batch 32) and about 8% of the
//! step's time (see docs/performance.md).
//!
//! [`retain_freed_memory`] raises the mmap threshold (so large blocks come from the heap),
//! switches off trimming and pads heap growth, as `MALLOC_MMAP_THRESHOLD_`,
//! `MALLOC_TRIM_THRESHOLD_` and `MALLOC_TOP_PAD_` would. The cost is that memory freed during a
//! run stays with the process (its peak resident set grows a little, about 7% in the same
//! bench) until it exits. PyTorch's CPU allocator does the same kind of thing through its own
//! caching; a library cannot choose this for its users, so binaries call it at start (the
//! `wick` CLI, the benches) and a user's own binary may.

/// glibc's `mallopt` parameters (malloc.h; the `libc` crate has the same values).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod glibc {
    use std::os::raw::c_int;

    pub(super) const M_TRIM_THRESHOLD: c_int = -1;
    pub(super) const M_TOP_PAD: c_int = -2;
    pub(super) const M_MMAP_THRESHOLD: c_int = -3;

    unsafe extern "C" {
        /// `int mallopt(int param, int value)`: 1 on success, 0 on error.
        pub(super) fn mallopt(param: c_int, value: c_int) -> c_int;
    }
}

/// What [`retain_freed_memory`] set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AllocatorTuning {
    /// glibc now keeps freed memory for reuse (every setting was accepted).
    Applied,
    /// glibc refused a setting (its value is named); the allocator keeps its defaults for it.
    Rejected(&'static str),
    /// Not glibc (musl, macOS, Windows): nothing was changed.
    Unsupported,
}

/// The largest block glibc then serves from its heap rather than with a fresh `mmap`: 1 GiB,
/// above any one tensor of the chapter's recipes (xresnet50's largest at 224 px, batch 64, is
/// `(64, 256, 56, 56)` f32: 206 MB).
pub(crate) const MMAP_THRESHOLD_BYTES: i32 = 1 << 30;

/// Keeps the memory a training step frees for the next step (see the module docs): glibc's
/// mmap threshold at 1 GiB (glibc 2.36 accepts it; a glibc that refuses gives
/// [`AllocatorTuning::Rejected`]), heap trimming off, heap growth padded by 64 MiB.
/// Process-wide; call it once at the start of a binary, before the threads start. Idempotent.
pub fn retain_freed_memory() -> AllocatorTuning {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let settings = [
            ("M_MMAP_THRESHOLD", glibc::M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES),
            ("M_TRIM_THRESHOLD", glibc::M_TRIM_THRESHOLD, i32::MAX),
            ("M_TOP_PAD", glibc::M_TOP_PAD, 64 << 20),
        ];
        for (name, param, value) in settings {
            // SAFETY: mallopt takes two ints and only changes malloc's tuning parameters; it is
            // safe to call at any time (glibc takes the arena lock).
            if unsafe { glibc::mallopt(param, value) } != 1 {
                return AllocatorTuning::Rejected(name);
            }
        }
        AllocatorTuning::Applied
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    {
        AllocatorTuning::Unsupported
    }
}
