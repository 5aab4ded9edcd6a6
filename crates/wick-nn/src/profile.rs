//! Opt-in wall-clock accounting of wick-nn's CPU kernels, for the per-op breakdown of a
//! training step (`cargo xtask bench models`). Off by default; when off, each kernel pays one
//! relaxed atomic load. When on, every custom op's CPU forward adds its time to a per-op
//! total; [`take`] returns and clears the totals.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static ENABLED: AtomicBool = AtomicBool::new(false);
static TOTALS: Mutex<BTreeMap<&'static str, (Duration, u64)>> = Mutex::new(BTreeMap::new());

/// Turns the accounting on or off (process-wide).
pub fn set_enabled(enabled: bool) {
    ENABLED.store(enabled, Ordering::Relaxed);
}

/// Time spent in one op.
#[derive(Debug, Clone, PartialEq)]
pub struct OpTime {
    /// The custom op's name (`wick-conv2d`, `wick-conv2d-backward-input`, ...).
    pub op: &'static str,
    /// Wall-clock time summed over the calls, in seconds.
    pub seconds: f64,
    /// Times the op ran.
    pub calls: u64,
}

/// The totals since the last call, by op name; clears them.
pub fn take() -> Vec<OpTime> {
    let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let result = totals
        .iter()
        .map(|(op, (time, calls))| OpTime { op, seconds: time.as_secs_f64(), calls: *calls })
        .collect();
    totals.clear();
    result
}

/// Measures the enclosing scope for op `op` when accounting is on.
pub(crate) struct Timer {
    op: &'static str,
    start: Option<Instant>,
}

impl Timer {
    pub(crate) fn start(op: &'static str) -> Self {
        Timer { op, start: ENABLED.load(Ordering::Relaxed).then(Instant::now) }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        if let Some(start) = self.start {
            let elapsed = start.elapsed();
            let mut totals = TOTALS.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            let entry = totals.entry(self.op).or_default();
            entry.0 += elapsed;
            entry.1 += 1;
        }
    }
}
