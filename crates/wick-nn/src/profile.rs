//! Opt-in wall-clock accounting of wick-nn's CPU kernels, for the per-op breakdown of a
//! training step (`cargo xtask bench models`). Off by default; when off, each kernel pays one
//! relaxed atomic load. When on, every custom op's CPU forward adds its time to a per-op
//! total (per op and shape for the convolutions, named like the nn bench's cases, so that a
//! step's convolutions can be put beside PyTorch's shape by shape); [`take`] returns and
//! clears the totals.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
/// An op's name and its convolution's name (empty when the op reports none).
type OpKey = (&'static str, String);

/// Time and calls per [`OpKey`].
static TOTALS: Mutex<BTreeMap<OpKey, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns the accounting on or off (process-wide).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Time spent in one op.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The custom op's name (`wick-conv2d`, `wick-conv2d-backward-input`, ...).
    pub op: &'static str,
    /// For the three convolution ops, the convolution's shape as the nn bench names its cases,
    /// `c{KH}x{KW}[s{stride}][d{dilation}][g{groups}][p{padding}]_{C}[_{O}]_{H}[x{W}]` (the
    /// tags only where not 1, or not the kernel's half for the padding; input channels,
    /// output channels when they differ, input size): `c3x3s2_64_128_12`. The backward ops
    /// name the forward convolution. `None` for the other ops.
    pub conv: Option<String>,
    /// Wall-clock time summed over the calls, in seconds.
    pub seconds: f64,
    /// Times the op ran.
    pub calls: u64,
}

/// The totals since the last call, sorted by op name, then convolution; clears them.
pub fn take() -> Vec<OpTime> {
    let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = totals
        .iter()
        .map(|((op, conv), (time, calls))| OpTime {
            op,
            conv: (!conv.is_empty()).then(|| conv.clone()),
            seconds: time.as_secs_f64(),
            calls: *calls,
        })
        .collect();
    totals.clear();
    result
}

/// Measures the enclosing scope for op `op` when accounting is on.
pub(crate) struct Timer {
    op: &'static str,
    conv: String,
    start: Option<Instant>,
}

impl Timer {
    pub(crate) fn start(op: &'static str) -> Self {
        Self::start_for(op, String::new)
    }

    /// Like [`Timer::start`], keyed also by `conv()` (called only when accounting is on).
    pub(crate) fn start_for(op: &'static str, conv: impl FnOnce() -> String) -> Self {
        if ENABLED.load(Ordering::Relaxed) {
            Timer { op, conv: conv(), start: Some(Instant::now()) }
        } else {
            Timer { op, conv: String::new(), start: None }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let elapsed = start.elapsed();
            let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = totals.entry((self.op, std::mem::take(&mut self.conv))).or_default();
            entry.0 += elapsed;
            entry.1 += 1;
        }
    }
}
