//! Classification losses as differentiable candle tensor functions (fastai `losses.py`, spec §8):
//! cross-entropy, label-smoothing cross-entropy, soft-target cross-entropy, their per-sample
//! (unreduced) forms, [`Loss`], the value a Learner holds as "the loss" (MixUp asks it for the
//! per-sample form), and [`Targets`], what a batch's loss is computed against: hard labels, or
//! the mixed pairs a MixUp-style callback leaves (fastai `MixHandler.lf`).
//!
//! Shape legend: B batch, K classes. Logits `(B,K)` float; labels `(B,)` u32 (i64 accepted) with
//! values in `0..K`; soft targets `(B,K)` float, each row a probability distribution. Reduced
//! losses are scalars `()`, per-sample losses `(B,)`.
//!
//! Not here: fastai's `weight` (per-class rescaling) and `ignore_index`, unused in chapter 7.

use candle::{D, Tensor};
use wick_metrics::check_logits_labels;

use crate::mixup::{MixError, mixed_loss};

/// How per-sample losses are combined (PyTorch's `reduction`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reduction {
    /// The mean over the batch: a scalar.
    Mean,
    /// The sum over the batch: a scalar.
    Sum,
    /// No reduction (PyTorch `'none'`): one loss per sample, `(B,)`.
    Unreduced,
}

/// A loss over integer labels, as a Learner holds it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Loss {
    /// fastai `CrossEntropyLossFlat()`.
    CrossEntropy,
    /// fastai `LabelSmoothingCrossEntropy(eps)`.
    LabelSmoothingCrossEntropy {
        /// Probability mass spread uniformly over all K classes (fastai default 0.1).
        eps: f64,
    },
}

impl Loss {
    /// `LabelSmoothingCrossEntropy()` with fastai's default eps 0.1.
    pub fn fastai_label_smoothing() -> Self {
        Loss::LabelSmoothingCrossEntropy { eps: 0.1 }
    }

    /// The batch-mean loss (fastai's default reduction), a scalar. Logits `(B,K)`, labels `(B,)`.
    pub fn forward(&self, logits: &Tensor, labels: &Tensor) -> candle::Result<Tensor> {
        match *self {
            Loss::CrossEntropy => cross_entropy(logits, labels),
            Loss::LabelSmoothingCrossEntropy { eps } => {
                label_smoothing_cross_entropy(logits, labels, eps, Reduction::Mean)
            }
        }
    }

    /// The batch-mean loss against a batch's [`Targets`], a scalar: [`Loss::forward`] for hard
    /// labels, [`mixed_loss`] for mixed pairs. Logits `(B,K)`.
    ///
    /// # Errors
    ///
    /// Shapes that do not match (logits not `(B,K)`, labels not `(B,)`, a mixing draw without
    /// one entry per sample) or a failing tensor op.
    pub fn forward_targets(&self, logits: &Tensor, targets: &Targets) -> candle::Result<Tensor> {
        match targets {
            Targets::Labels(labels) => self.forward(logits, labels),
            Targets::Mixed { labels, mixed } => {
                mixed_loss(self, logits, labels, &mixed.permutation, &mixed.lambdas).map_err(
                    |error| match error {
                        MixError::Tensor(error) => error,
                        other => candle::Error::wrap(other),
                    },
                )
            }
        }
    }

    /// One loss per sample, `(B,)` (what MixUp mixes). Logits `(B,K)`, labels `(B,)`.
    pub fn per_sample(&self, logits: &Tensor, labels: &Tensor) -> candle::Result<Tensor> {
        match *self {
            Loss::CrossEntropy => cross_entropy_per_sample(logits, labels),
            Loss::LabelSmoothingCrossEntropy { eps } => {
                label_smoothing_cross_entropy(logits, labels, eps, Reduction::Unreduced)
            }
        }
    }
}

/// What a batch's loss is computed against (fastai's `yb`, with what `MixHandler` keeps beside
/// it). The loop passes it to [`Loss::forward_targets`] without looking inside.
#[derive(Debug, Clone)]
pub enum Targets {
    /// Class indices `(B,)` u32.
    Labels(Tensor),
    /// The batch's own labels `(B,)` u32 and the MixUp/CutMix pairing: sample i's loss is
    /// `λᵢ·L(ŷᵢ, yᵢ) + (1 − λᵢ)·L(ŷᵢ, y_π(i))`.
    Mixed {
        /// The batch's own labels `(B,)` u32.
        labels: Tensor,
        /// The partners π and weights λ.
        mixed: MixedLabels,
    },
}

impl Targets {
    /// The batch's own labels `(B,)` (what metrics compare the predictions with).
    pub fn labels(&self) -> &Tensor {
        match self {
            Targets::Labels(labels) | Targets::Mixed { labels, .. } => labels,
        }
    }

    /// The mixing of these targets, if any.
    pub fn mixed(&self) -> Option<&MixedLabels> {
        match self {
            Targets::Labels(_) => None,
            Targets::Mixed { mixed, .. } => Some(mixed),
        }
    }
}

/// A MixUp-style pairing: each sample's loss is `λᵢ·L(ŷᵢ, yᵢ) + (1 − λᵢ)·L(ŷᵢ, y_π(i))` with
/// the Learner's loss L, then the batch mean (fastai `MixHandler.lf`).
#[derive(Debug, Clone, PartialEq)]
pub struct MixedLabels {
    /// π: the partner of each sample.
    pub permutation: Vec<u32>,
    /// λᵢ: the weight of each sample's own label.
    pub lambdas: Vec<f32>,
}

/// Mean cross-entropy `−log softmax(logits)[label]` over the batch, a scalar.
/// Logits `(B,K)`, labels `(B,)`.
pub fn cross_entropy(logits: &Tensor, labels: &Tensor) -> candle::Result<Tensor> {
    cross_entropy_per_sample(logits, labels)?.mean_all()
}

/// Cross-entropy per sample, `(B,)`. Logits `(B,K)`, labels `(B,)`.
pub fn cross_entropy_per_sample(logits: &Tensor, labels: &Tensor) -> candle::Result<Tensor> {
    check_logits_labels(logits, labels, "cross_entropy")?;
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    nll_per_sample(&log_probs, labels)
}

/// fastai `LabelSmoothingCrossEntropy(eps, reduction)`: with `log p = log_softmax(logits)` and K
/// classes, per sample `eps/K · Σₖ(−log pₖ) + (1 − eps)·(−log p_label)`, i.e. cross-entropy
/// against the target `(1 − eps)·onehot + eps/K`. Computed in fastai's order: the smoothing sum
/// and the NLL are each reduced, then combined. Logits `(B,K)`, labels `(B,)`.
pub fn label_smoothing_cross_entropy(
    logits: &Tensor,
    labels: &Tensor,
    eps: f64,
    reduction: Reduction,
) -> candle::Result<Tensor> {
    check_logits_labels(logits, labels, "label_smoothing_cross_entropy")?;
    let n_classes = logits.dim(1)? as f64;
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let nll = nll_per_sample(&log_probs, labels)?;
    let (smoothing, nll) = match reduction {
        Reduction::Sum => (log_probs.sum_all()?.neg()?, nll.sum_all()?),
        Reduction::Mean => (log_probs.sum(1)?.neg()?.mean_all()?, nll.mean_all()?),
        Reduction::Unreduced => (log_probs.sum(1)?.neg()?, nll),
    };
    smoothing.affine(eps / n_classes, 0.0)? + nll.affine(1.0 - eps, 0.0)?
}

/// Mean cross-entropy against soft targets `Σₖ −qₖ·log softmax(logits)ₖ`, a scalar
/// (torch `F.cross_entropy(logits, probabilities)`). Logits and targets `(B,K)`.
pub fn soft_target_cross_entropy(logits: &Tensor, targets: &Tensor) -> candle::Result<Tensor> {
    soft_target_cross_entropy_per_sample(logits, targets)?.mean_all()
}

/// Soft-target cross-entropy per sample, `(B,)`. Logits and targets `(B,K)`.
pub fn soft_target_cross_entropy_per_sample(
    logits: &Tensor,
    targets: &Tensor,
) -> candle::Result<Tensor> {
    if logits.rank() != 2 || targets.shape() != logits.shape() {
        candle::bail!(
            "soft_target_cross_entropy: logits {:?} and targets {:?} must both be (B,K)",
            logits.shape(),
            targets.shape()
        );
    }
    let log_probs = candle_nn::ops::log_softmax(logits, D::Minus1)?;
    let targets = targets.to_dtype(log_probs.dtype())?;
    (targets * log_probs)?.sum(1)?.neg()
}

/// `−log_probs[i, labels[i]]`, `(B,)`.
fn nll_per_sample(log_probs: &Tensor, labels: &Tensor) -> candle::Result<Tensor> {
    log_probs.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?.neg()
}
