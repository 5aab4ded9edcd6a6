//! Batch metrics (fastai `metrics.py`: `accuracy`, `error_rate`, `top_k_accuracy`, defined once
//! in wick-metrics and re-exported here) and the accumulators a Learner's recorder keeps across
//! batches (fastai `learner.py`): the exact batch-size-weighted mean behind valid loss and accuracy ([`WeightedMean`], fastai `AvgMetric`
//! / `AvgLoss`), and the bias-corrected moving average shown as train loss ([`SmoothedLoss`],
//! fastai `AvgSmoothLoss`, spec §2.3).
//!
//! Shape legend: B batch, K classes. Logits `(B,K)`; labels `(B,)` u32 (i64 accepted).
//!
//! Deviations from fastai, in float rounding only: fastai computes a batch accuracy as a float32
//! mean and accumulates `value·bs` in float32; here a batch accuracy is `correct/B` in f64 and
//! [`WeightedMean`] sums in f64, so dataset accuracy is exactly `correct/N`. [`SmoothedLoss`]
//! reproduces fastai's float32 arithmetic exactly.

pub use wick_metrics::{
    FASTAI_TOP_K, accuracy, correct_count, error_rate, top_k_accuracy, top_k_correct_count,
};

/// A mean of per-batch values weighted by batch size (fastai `AvgMetric`, `AvgLoss`): the
/// dataset mean of a per-sample quantity whose batch means are accumulated.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightedMean {
    total: f64,
    count: usize,
}

impl WeightedMean {
    /// An empty mean.
    pub fn new() -> Self {
        Self::default()
    }

    /// Forgets everything accumulated (fastai `reset`, at the start of each epoch's phase).
    pub fn reset(&mut self) {
        *self = Self::default();
    }

    /// Adds one batch whose mean value is `batch_mean` over `batch_size` samples.
    pub fn accumulate(&mut self, batch_mean: f64, batch_size: usize) {
        self.total += batch_mean * batch_size as f64;
        self.count += batch_size;
    }

    /// The weighted mean, or `None` before any sample.
    pub fn value(&self) -> Option<f64> {
        (self.count != 0).then(|| self.total / self.count as f64)
    }

    /// Samples accumulated.
    pub fn count(&self) -> usize {
        self.count
    }
}

/// fastai `AvgSmoothLoss`: an exponential moving average of batch losses with bias correction,
/// `s ← lerp(loss, s, β)` then `value = s/(1 − βⁿ)` with n the batches since the last reset. The
/// Learner resets it at the start of every fit (not every epoch); its value after an epoch's last
/// batch is the epoch table's `train_loss`, and its per-batch values are what `lr_find` records.
///
/// Arithmetic in float32 with torch's `lerp` formula, as fastai's tensors do, bit for bit.
#[derive(Debug, Clone, PartialEq)]
pub struct SmoothedLoss {
    beta: f64,
    average: f32,
    count: u32,
}

impl SmoothedLoss {
    /// A smoothed loss with coefficient `beta`, reset.
    pub fn new(beta: f64) -> Self {
        Self { beta, average: 0.0, count: 0 }
    }

    /// fastai's β = 0.98.
    pub fn fastai_default() -> Self {
        Self::new(0.98)
    }

    /// Back to no batches (fastai: `Recorder.before_fit`).
    pub fn reset(&mut self) {
        self.average = 0.0;
        self.count = 0;
    }

    /// Adds one training batch's mean loss.
    pub fn accumulate(&mut self, loss: f32) {
        self.count += 1;
        let weight = self.beta as f32;
        // torch.lerp(loss, average, beta) on a 0-d float32 tensor: torch's scalar formula, which
        // its x86 build compiles to a fused multiply-add (matched bit for bit by the tests).
        self.average = if weight.abs() < 0.5 {
            weight.mul_add(self.average - loss, loss)
        } else {
            (-(self.average - loss)).mul_add(1.0 - weight, self.average)
        };
    }

    /// The bias-corrected average, or `None` before any batch (where fastai divides 0 by 0).
    pub fn value(&self) -> Option<f32> {
        (self.count != 0).then(|| {
            let correction = 1.0 - self.beta.powf(f64::from(self.count));
            self.average / correction as f32
        })
    }

    /// Batches accumulated since the last reset.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The raw accumulator `(average, count)`, before bias correction (what a checkpoint saves).
    pub fn state(&self) -> (f32, u32) {
        (self.average, self.count)
    }

    /// Restores an accumulator saved by [`SmoothedLoss::state`], bit for bit.
    pub fn restore(&mut self, average: f32, count: u32) {
        self.average = average;
        self.count = count;
    }
}
