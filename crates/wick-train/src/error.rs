//! [`TrainError`], the one error type of the Learner, its callbacks, checkpoints and output
//! files. Every variant names the values involved (epoch, batch, shapes, paths) so a failure deep
//! in a fit still says what and where.
//!
//! A returned [`crate::Flow`] is how a callback cancels part of a fit; an `Err` always means that
//! something failed, and stops the fit (after `after_fit` has run).

use std::path::PathBuf;

use crate::callback::{Event, Flow, Phase};
use crate::lr_find::LrFindError;
use crate::mixup::MixError;
use crate::optim::OptimError;
use crate::schedule::ScheduleError;

/// Why a fit, a checkpoint or an output file failed.
#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    /// A tensor operation failed; `during` says which step of which batch.
    #[error("{during}: {source}")]
    Tensor {
        /// What the loop was doing, e.g. `"epoch 1, train batch 3: forward"`.
        during: String,
        /// The underlying candle error.
        #[source]
        source: candle::Error,
    },
    /// The data source failed to produce a batch.
    #[error("epoch {epoch}, {phase} batch {batch}: data: {source}")]
    Data {
        /// Epoch of the fit (0-based).
        epoch: usize,
        /// Training or validation.
        phase: Phase,
        /// Batch index within the epoch's phase.
        batch: usize,
        /// The loader's error (naming the file when one failed).
        #[source]
        source: wick_data::DataError,
    },
    /// A batch loss was NaN or infinite: the fit stops before the optimizer step, so the weights
    /// and every checkpoint written so far are those of the last good batch.
    #[error(
        "non-finite {phase} loss {value} at epoch {epoch}, batch {batch}: fit stopped before the \
         optimizer step"
    )]
    NonFiniteLoss {
        /// Training or validation.
        phase: Phase,
        /// Epoch of the fit (0-based).
        epoch: usize,
        /// Batch index within the epoch's phase.
        batch: usize,
        /// The loss read back.
        value: f32,
    },
    /// The model's output is not `(B,K)` logits for the batch's B samples.
    #[error(
        "epoch {epoch}, {phase} batch {batch}: logits have shape {logits:?}, expected (B,K) with B = {batch_size}"
    )]
    LogitsShape {
        /// Epoch of the fit (0-based).
        epoch: usize,
        /// Training or validation.
        phase: Phase,
        /// Batch index within the epoch's phase.
        batch: usize,
        /// The model output's shape.
        logits: candle::Shape,
        /// Samples in the batch (the images' first dimension).
        batch_size: usize,
    },
    /// The labels are not `(B,)` integers matching the logits' batch.
    #[error(
        "epoch {epoch}, {phase} batch {batch}: labels have shape {labels:?} and dtype {dtype:?}, expected (B,) u32 with B = {batch_size}"
    )]
    LabelsShape {
        /// Epoch of the fit (0-based).
        epoch: usize,
        /// Training or validation.
        phase: Phase,
        /// Batch index within the epoch's phase.
        batch: usize,
        /// The labels' shape.
        labels: candle::Shape,
        /// The labels' dtype.
        dtype: candle::DType,
        /// Samples in the batch.
        batch_size: usize,
    },
    /// A label is not a class index of the model's output.
    #[error(
        "epoch {epoch}, {phase} batch {batch}: label {label} out of range for {n_classes} classes (logits (B,{n_classes}))"
    )]
    LabelOutOfRange {
        /// Epoch of the fit (0-based).
        epoch: usize,
        /// Training or validation.
        phase: Phase,
        /// Batch index within the epoch's phase.
        batch: usize,
        /// The largest label of the batch.
        label: u32,
        /// K, the logits' second dimension.
        n_classes: usize,
    },
    /// The optimizer failed (boxed: it is the largest error, and every `Result` carries it).
    #[error(transparent)]
    Optim(Box<OptimError>),
    /// A schedule's parameters are invalid.
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    /// A MixUp/CutMix draw or mix failed.
    #[error(transparent)]
    Mix(#[from] MixError),
    /// The lr finder could not suggest an lr.
    #[error(transparent)]
    LrFind(#[from] LrFindError),
    /// A callback returned a [`Flow`] no enclosing stage can act on (for example `SkipStep` from
    /// `before_batch`, or `SkipBatch` from `after_batch`).
    #[error("flow {flow:?} returned at {event}, where no enclosing stage can act on it")]
    MisplacedFlow {
        /// The flow returned.
        flow: Flow,
        /// The event whose stage could not take it.
        event: Event,
    },
    /// A callback failed for its own reason.
    #[error("callback {name}: {reason}")]
    Callback {
        /// The callback's name.
        name: &'static str,
        /// What went wrong.
        reason: String,
    },
    /// A fit or recipe was configured in a way that cannot run.
    #[error("invalid {what}: {reason}")]
    InvalidConfig {
        /// The setting.
        what: &'static str,
        /// Why it cannot run.
        reason: String,
    },
    /// A checkpoint could not be written, read or applied.
    #[error("checkpoint {}: {reason}", path.display())]
    Checkpoint {
        /// The checkpoint file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// A checkpoint was not written because the model or optimizer state holds NaN or infinity:
    /// the fit diverged, and the file on disk keeps the last finite state.
    #[error(
        "the model diverged: {tensor} has {count} non-finite values (NaN or infinity) of {total}; \
         checkpoint {} not written, it keeps the last finite state",
        path.display()
    )]
    NonFiniteState {
        /// The checkpoint file that was not written.
        path: PathBuf,
        /// The first non-finite tensor (`model.<name>` or `optimizer.<key>`).
        tensor: String,
        /// How many of its values are not finite.
        count: usize,
        /// Values in the tensor.
        total: usize,
    },
    /// A checkpoint does not belong to the run it is resumed into.
    #[error("cannot resume: checkpoint has {what} {checkpoint}, this run has {current}")]
    ResumeMismatch {
        /// The mismatched quantity.
        what: &'static str,
        /// Its value in the checkpoint.
        checkpoint: String,
        /// Its value in this run.
        current: String,
    },
    /// A stage's data could not be built (its factory in [`crate::Stage::with_data`] failed).
    #[error("stage {stage}: building its data: {source}")]
    StageData {
        /// The stage (0-based).
        stage: usize,
        /// The factory's error.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// An output file (metrics, plot) could not be written.
    #[error("writing {}: {reason}", path.display())]
    Output {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
}

impl From<OptimError> for TrainError {
    fn from(error: OptimError) -> Self {
        TrainError::Optim(Box::new(error))
    }
}

impl TrainError {
    /// A [`TrainError::Tensor`] with a description of the step that failed.
    pub fn tensor(during: impl Into<String>, source: candle::Error) -> Self {
        TrainError::Tensor { during: during.into(), source }
    }
}
