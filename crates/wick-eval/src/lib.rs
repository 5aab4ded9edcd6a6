//! wick-eval: predictions, never gradients. Softmax probabilities in dataset order
//! ([`get_preds`]), fastai's test-time augmentation ([`tta`]), and the numbers and pictures of
//! fastai's `ClassificationInterpretation`: accuracy, top-k, per-class accuracy, the confusion
//! matrix (and its PNG), and the top-losses grid.
//!
//! Every forward pass here runs with `train = false` on detached tensors; nothing here calls
//! `backward` or changes a parameter.
//! Shapes: probabilities `(N, K)`, targets `(N,)` for `N` items and `K` classes.

mod error;
mod interpret;
mod predict;

pub use error::{EvalError, Result};
pub use interpret::{
    ClassReport, ConfusionMatrix, TopLoss, accuracy, confusion_matrix, per_class_accuracy,
    plot_confusion_matrix, plot_top_losses, top_k_accuracy, top_losses,
};
pub use predict::{Blend, Predictions, TtaConfig, get_preds, tta};
