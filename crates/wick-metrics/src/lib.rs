//! wick-metrics: fastai's classification metrics (`metrics.py`: `accuracy`, `error_rate`,
//! `top_k_accuracy`) over a batch of scores and its labels, the one definition of "a hit" that
//! training (wick-train's recorder) and evaluation (wick-eval's interpretation) both count:
//! the label is among the `k` highest scores, a tie at the k-th place counting in its favour,
//! and a row holding a NaN or an infinity is never a hit.
//!
//! Scores are logits or probabilities (the argmax and the ranking are the same). Shape legend:
//! B batch, K classes. Scores `(B,K)`; labels `(B,)` u32 (i64 accepted).
//!
//! Deviation from fastai, in float rounding only: fastai computes a batch accuracy as a float32
//! mean; here it is `correct/B` in f64, so a dataset accuracy summed from counts is exactly
//! `correct/N`.

use candle::{D, DType, Tensor};

/// fastai `top_k_accuracy`'s default k.
pub const FASTAI_TOP_K: usize = 5;

/// How many samples' argmax class equals their label (ties: the first maximal class, as torch).
/// A sample whose logits hold a NaN or an infinity counts as wrong: a broken prediction is never
/// a hit. Logits `(B,K)`, labels `(B,)`.
///
/// # Errors
///
/// Scores not `(B,K)`, labels not `(B,)` u32/i64, or a failing tensor op.
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

/// Checks that `logits` are `(B,K)` and `labels` are `(B,)` u32 or i64 class indices; errors
/// start with `op` (the losses of wick-train check their inputs with it too).
///
/// # Errors
///
/// The first of these that fails, naming the shape or dtype found.
pub fn check_logits_labels(logits: &Tensor, labels: &Tensor, op: &str) -> candle::Result<()> {
    if logits.rank() != 2 {
        candle::bail!("{op}: logits must be (B,K), got {:?}", logits.shape());
    }
    if labels.rank() != 1 || labels.dim(0)? != logits.dim(0)? {
        candle::bail!(
            "{op}: labels must be (B,) with B = {}, got {:?}",
            logits.dim(0)?,
            labels.shape()
        );
    }
    if !matches!(labels.dtype(), DType::U32 | DType::I64) {
        candle::bail!("{op}: labels must be u32 or i64, got {:?}", labels.dtype());
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;
    use wick_testing::{Tol, assert_close};

    #[test]
    fn a_hit_by_hand() {
        // Row 0: argmax 1 = label. Row 1: label 0 ties the maximum. Row 2: a NaN, never a hit.
        // Row 3: label 2 ranks third.
        let scores = Tensor::new(
            &[[0.1f32, 0.8, 0.1], [0.5, 0.5, 0.0], [f32::NAN, 0.9, 0.1], [0.5, 0.3, 0.2]],
            &Device::Cpu,
        )
        .unwrap();
        let labels = Tensor::new(&[1u32, 0, 1, 2], &Device::Cpu).unwrap();
        // argmax picks the first maximal class (0 in row 1, a hit), as torch.
        assert_eq!(correct_count(&scores, &labels).unwrap(), 2);
        assert_close("accuracy", accuracy(&scores, &labels).unwrap(), 0.5, Tol::EXACT);
        assert_close("error rate", error_rate(&scores, &labels).unwrap(), 0.5, Tol::EXACT);
        assert_eq!(top_k_correct_count(&scores, &labels, 2).unwrap(), 2);
        assert_eq!(top_k_correct_count(&scores, &labels, 3).unwrap(), 3);
        assert!(top_k_correct_count(&scores, &labels, 4).is_err(), "k beyond K");
        let short = Tensor::new(&[1u32], &Device::Cpu).unwrap();
        let error = correct_count(&scores, &short).unwrap_err().to_string();
        assert!(error.contains("labels must be (B,) with B = 4"), "{error}");
    }
}
