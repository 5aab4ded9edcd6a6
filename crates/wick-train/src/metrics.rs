//! Batch metrics (fastai `metrics.py`: `accuracy`, `error_rate`, `top_k_accuracy`) and the
//! accumulators a Learner's recorder keeps across batches (fastai `learner.py`): the exact
//! batch-size-weighted mean behind valid loss and accuracy ([`WeightedMean`], fastai `AvgMetric`
//! / `AvgLoss`), and the bias-corrected moving average shown as train loss ([`SmoothedLoss`],
//! fastai `AvgSmoothLoss`, spec §2.3).
//!
//! Shape legend: B batch, K classes. Logits `(B,K)`; labels `(B,)` u32 (i64 accepted).
//!
//! Deviations from fastai, in float rounding only: fastai computes a batch accuracy as a float32
//! mean and accumulates `value·bs` in float32; here a batch accuracy is `correct/B` in f64 and
//! [`WeightedMean`] sums in f64, so dataset accuracy is exactly `correct/N`. [`SmoothedLoss`]
//! reproduces fastai's float32 arithmetic exactly.

use candle::{D, DType, Tensor};

use crate::loss::check_logits_labels;

/// fastai `top_k_accuracy`'s default k.
pub const FASTAI_TOP_K: usize = 5;

/// How many samples' argmax class equals their label (ties: the first maximal class, as torch).
/// A sample whose logits hold a NaN or an infinity counts as wrong: a broken prediction is never
/// a hit. Logits `(B,K)`, labels `(B,)`.
pub fn correct_count(logits: &Tensor, labels: &Tensor) -> candle::Result<usize> {
    let labels = check_and_convert_labels(logits, labels, "accuracy")?;
    let predicted = logits.argmax(D::Minus1)?;
    let hits = (predicted.eq(&labels)?.to_dtype(DType::U32)? * finite_rows(logits)?)?;
    Ok(hits.sum_all()?.to_scalar::<u32>()? as usize)
}

/// `(B,)` u32: 1 where every logit of the row is finite, 0 where one is NaN or infinite
/// (`|x| <= f64::MAX` is false exactly for those).
fn finite_rows(logits: &Tensor) -> candle::Result<Tensor> {
    logits.to_dtype(DType::F64)?.abs()?.le(f64::MAX)?.to_dtype(DType::U32)?.min(D::Minus1)
}

/// fastai `accuracy`: the fraction of samples whose argmax class is their label.
/// Logits `(B,K)`, labels `(B,)`; 0 for an empty batch.
pub fn accuracy(logits: &Tensor, labels: &Tensor) -> candle::Result<f64> {
    let batch_size = logits.dim(0)?;
    let hits = correct_count(logits, labels)?;
    Ok(fraction(hits, batch_size))
}

/// fastai `error_rate`: `1 − accuracy`. Logits `(B,K)`, labels `(B,)`.
pub fn error_rate(logits: &Tensor, labels: &Tensor) -> candle::Result<f64> {
    Ok(1.0 - accuracy(logits, labels)?)
}

/// How many samples have their label among the `k` highest logits. A label counts as a hit when
/// fewer than `k` classes score strictly higher, so a tie at the k-th place counts in its favour
/// (torch's `topk` breaks such ties arbitrarily); a row holding a NaN or an infinity counts as
/// wrong. Logits `(B,K)`, labels `(B,)`, `1 <= k <= K`.
pub fn top_k_correct_count(logits: &Tensor, labels: &Tensor, k: usize) -> candle::Result<usize> {
    let labels = check_and_convert_labels(logits, labels, "top_k_accuracy")?;
    let n_classes = logits.dim(1)?;
    if k == 0 || k > n_classes {
        candle::bail!("top_k_accuracy: k is {k}, must be in 1..={n_classes}");
    }
    let label_scores = logits.gather(&labels.unsqueeze(1)?, 1)?;
    let n_higher = logits.broadcast_gt(&label_scores)?.to_dtype(DType::U32)?.sum(1)?;
    let hits = (n_higher.lt(k as u32)?.to_dtype(DType::U32)? * finite_rows(logits)?)?;
    Ok(hits.sum_all()?.to_scalar::<u32>()? as usize)
}

/// fastai `top_k_accuracy(k)`: the fraction of samples with their label among the top `k`.
/// Logits `(B,K)`, labels `(B,)`; 0 for an empty batch.
pub fn top_k_accuracy(logits: &Tensor, labels: &Tensor, k: usize) -> candle::Result<f64> {
    let batch_size = logits.dim(0)?;
    let hits = top_k_correct_count(logits, labels, k)?;
    Ok(fraction(hits, batch_size))
}

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

fn fraction(hits: usize, batch_size: usize) -> f64 {
    if batch_size == 0 { 0.0 } else { hits as f64 / batch_size as f64 }
}

/// Checks logits `(B,K)` and labels `(B,)` as the losses do, and returns the labels as u32.
fn check_and_convert_labels(logits: &Tensor, labels: &Tensor, op: &str) -> candle::Result<Tensor> {
    check_logits_labels(logits, labels, op)?;
    match labels.dtype() {
        DType::U32 => Ok(labels.clone()),
        // I64, the only other dtype the check lets through.
        _ => labels.to_dtype(DType::U32),
    }
}
