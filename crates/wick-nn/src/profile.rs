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
/// An op's name and its case name (empty when the op reports none).
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
    /// The convolution's case in the nn bench's pattern `c{K}x{K}[s{S}]_{C}[_{O}]_{H}` (input
    /// channels, output channels when they differ, input size), for the three convolution
    /// ops (the backward ops name the forward convolution); `None` for the other ops.
    pub case: Option<String>,
    /// Wall-clock time summed over the calls, in seconds.
    pub seconds: f64,
    /// Times the op ran.
    pub calls: u64,
}

/// The totals since the last call, by op name and case, in that order; clears them.
pub fn take() -> Vec<OpTime> {
    let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = totals
        .iter()
        .map(|((op, case), (time, calls))| OpTime {
            op,
            case: (!case.is_empty()).then(|| case.clone()),
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
    case: String,
    start: Option<Instant>,
}

impl Timer {
    pub(crate) fn start(op: &'static str) -> Self {
        Self::start_for(op, String::new)
    }

    /// Like [`Timer::start`], keyed also by `case()` (called only when accounting is on).
    pub(crate) fn start_for(op: &'static str, case: impl FnOnce() -> String) -> Self {
        if ENABLED.load(Ordering::Relaxed) {
            Timer { op, case: case(), start: Some(Instant::now()) }
        } else {
            Timer { op, case: String::new(), start: None }
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let elapsed = start.elapsed();
            let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = totals.entry((self.op, std::mem::take(&mut self.case))).or_default();
            entry.0 += elapsed;
            entry.1 += 1;
        }
    }
}
