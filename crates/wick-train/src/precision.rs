//! bf16 mixed precision as a model wrapper (fastai `to_bf16()`, PyTorch autocast): [`Autocast`]
//! casts the batch to the activation dtype before its inner model and the logits back to f32
//! after it, so the loop, the loss and the metrics never see the precision; [`Precision`] names
//! the choice and holds the two casts.
//!
//! Shapes: inputs `(B,C,H,W)`, logits `(B,K)`.

use std::collections::HashMap;

use candle::{DType, ModuleT, Tensor};
use wick_nn::ModelState;

/// Numeric precision of the forward pass.
///
/// With `Bf16` the inputs go into the model as bf16 and the logits come back as f32 before the
/// loss, while the master weights, BatchNorm parameters and statistics, gradients handed to the
/// optimizer and optimizer state stay f32 (fastai `to_bf16()`: autocast, no loss scaling, which
/// bf16's f32-sized exponent makes unnecessary). The model casts its weights to the
/// activations' dtype where an op needs one dtype (wick-models' networks do).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Precision {
    /// Everything in float32.
    #[default]
    F32,
    /// bf16 activations, f32 everything else.
    Bf16,
}

impl Precision {
    /// The dtype the forward pass runs in.
    pub fn activation_dtype(self) -> DType {
        match self {
            Precision::F32 => DType::F32,
            Precision::Bf16 => DType::BF16,
        }
    }

    /// A batch's inputs in the activation dtype (the same tensor when it already is).
    ///
    /// # Errors
    ///
    /// A failing cast.
    pub fn cast_input(self, xs: &Tensor) -> candle::Result<Tensor> {
        xs.to_dtype(self.activation_dtype())
    }

    /// The model's output in f32, for the loss and the metrics.
    ///
    /// # Errors
    ///
    /// A failing cast.
    pub fn cast_logits(self, logits: &Tensor) -> candle::Result<Tensor> {
        logits.to_dtype(DType::F32)
    }

    /// `model`'s forward pass in this precision: inputs cast in, logits cast back to f32.
    /// Inputs `(B,C,H,W)`, logits `(B,K)` f32.
    ///
    /// # Errors
    ///
    /// The model's or a cast's.
    pub fn forward_t<M: ModuleT + ?Sized>(
        self,
        model: &M,
        xs: &Tensor,
        train: bool,
    ) -> candle::Result<Tensor> {
        self.cast_logits(&model.forward_t(&self.cast_input(xs)?, train)?)
    }
}

/// A model run in a [`Precision`]: what a Learner trains instead of the model itself (fastai's
/// `MixedPrecision` callback, as a wrapper). Under `F32` both casts are no-ops. The model is
/// [`Autocast::inner`]; its [`ModelState`] is the wrapper's.
#[derive(Debug, Clone)]
pub struct Autocast<M> {
    model: M,
    precision: Precision,
}

impl<M: ModuleT> Autocast<M> {
    /// `model` run in `precision`.
    pub fn new(model: M, precision: Precision) -> Self {
        Autocast { model, precision }
    }

    /// The wrapped model.
    pub fn inner(&self) -> &M {
        &self.model
    }

    /// The wrapped model, unwrapped.
    pub fn into_inner(self) -> M {
        self.model
    }

    /// The precision it runs in.
    pub fn precision(&self) -> Precision {
        self.precision
    }
}

impl<M: ModuleT> ModuleT for Autocast<M> {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        self.precision.forward_t(&self.model, xs, train)
    }
}

/// The inner model's state: the wrapper keeps none of its own.
impl<M: ModelState> ModelState for Autocast<M> {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        self.model.save_state()
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        self.model.load_state(tensors)
    }
}

/// A bare training step without the optimizer, as the benches time it and the CLI's device
/// check verifies it: the training-mode forward of `model` on `xs (B, C, H, W)` in `precision`,
/// fastai's cross-entropy against the labels `ys (B,)`, and the backward pass. Returns the
/// logits `(B, K)` in f32, the loss (a scalar) and the gradients; the caller steps its
/// optimizer. (The Learner's loop runs the same three with its callbacks between them.)
///
/// # Errors
/// candle's, from the forward, the loss (shapes: see [`crate::cross_entropy`]) or the backward.
pub fn forward_backward<M: ModuleT + ?Sized>(
    model: &M,
    precision: Precision,
    xs: &Tensor,
    ys: &Tensor,
) -> candle::Result<(Tensor, Tensor, candle::backprop::GradStore)> {
    let logits = precision.forward_t(model, xs, true)?;
    let loss = crate::loss::cross_entropy(&logits, ys)?;
    let grads = loss.backward()?;
    Ok((logits, loss, grads))
}
