//! The vocabulary callbacks speak: the [`Event`]s of a fit, the [`Flow`] a callback returns to
//! cancel part of it, the [`Callback`] trait with its explicit [`Callback::order`], and the views
//! a callback gets: read-only [`FitState`] and [`EventContext`] for observers, and the narrow
//! mutable [`BatchHooks`] (the batch's [`BatchState`] and the optimizer's lr/mom through
//! [`OptControl`]) for the few mutators, at `before_batch` only; and [`GradientHook`], the one
//! thing that may rewrite the gradients (between `loss.backward()` and `after_backward`).
//!
//! The loop that emits these events is `learner.rs`; the event order is documented there.

use std::fmt;

use candle::Tensor;
use candle::backprop::GradStore;
use candle_nn::VarMap;
use wick_nn::ModelState;

use crate::error::TrainError;
use crate::loss::Targets;
use crate::optim::{OptimParam, Optimizer};
use crate::recorder::Recorder;

/// Callback orders of wick's own callbacks (fastai's `order`): lower runs first, ties run in
/// the order the callbacks were added. The Learner's built-in bookkeeping (fastai's
/// `TrainEvalCallback`, −10) runs before every callback, and its [`Recorder`] at
/// [`order::RECORDER`], before any callback of the same order.
pub mod order {
    /// MixUp and CutMix (fastai `MixHandler`, default order 0).
    pub const MIX: i32 = 0;
    /// The built-in [`crate::Recorder`] (fastai `Recorder`).
    pub const RECORDER: i32 = 50;
    /// Hyper-parameter schedules and the lr finder (fastai `ParamScheduler`, `LRFinder`).
    pub const SCHEDULER: i32 = 60;
    /// Checkpoints: after the recorder, so a checkpoint holds the batch just recorded.
    pub const CHECKPOINT: i32 = 80;
    /// Files for the user (metrics.jsonl, plots).
    pub const FILES: i32 = 90;
}

/// Training or validation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Training batches: forward with `train = true`, backward, optimizer step.
    Train,
    /// Validation batches: forward with `train = false`, no graph kept, no backward.
    Valid,
}

impl fmt::Display for Phase {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(match self {
            Phase::Train => "train",
            Phase::Valid => "valid",
        })
    }
}

/// Which kind of fit is running (callbacks that write files skip the lr finder's mock fit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitKind {
    /// A real fit of a recipe.
    Training,
    /// `lr_find`'s mock training, undone afterwards.
    LrFind,
}

/// The events of a fit, named as fastai names them (`callback/core.py`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Event {
    /// A fit starts.
    BeforeFit,
    /// An epoch starts.
    BeforeEpoch,
    /// The training phase of an epoch starts.
    BeforeTrain,
    /// A batch (either phase) is about to be predicted; mutators change it here.
    BeforeBatch,
    /// The model has produced logits.
    AfterPred,
    /// The loss has been computed and read back.
    AfterLoss,
    /// Training only: before `loss.backward()`.
    BeforeBackward,
    /// Training only: after `loss.backward()`.
    AfterBackward,
    /// Training only: a [`Flow::SkipBackward`] cancelled the backward pass.
    AfterCancelBackward,
    /// Training only: before the optimizer step.
    BeforeStep,
    /// Training only: after the optimizer step.
    AfterStep,
    /// Training only: a [`Flow::SkipStep`] cancelled the step.
    AfterCancelStep,
    /// A [`Flow::SkipBatch`] cancelled the batch.
    AfterCancelBatch,
    /// A batch is done (also after a cancelled one).
    AfterBatch,
    /// A [`Flow::SkipTrain`] cancelled the training phase.
    AfterCancelTrain,
    /// The training phase of an epoch is done.
    AfterTrain,
    /// The validation phase starts.
    BeforeValidate,
    /// A [`Flow::SkipValidate`] cancelled the validation phase.
    AfterCancelValidate,
    /// The validation phase is done.
    AfterValidate,
    /// A [`Flow::SkipEpoch`] cancelled the epoch.
    AfterCancelEpoch,
    /// An epoch is done.
    AfterEpoch,
    /// A [`Flow::StopFit`] (or the interrupt flag) stopped the fit.
    AfterCancelFit,
    /// The fit is over; always emitted, even when the fit fails.
    AfterFit,
}

impl Event {
    /// fastai's name of the event (`before_fit`, `after_cancel_batch`, …).
    pub fn name(self) -> &'static str {
        match self {
            Event::BeforeFit => "before_fit",
            Event::BeforeEpoch => "before_epoch",
            Event::BeforeTrain => "before_train",
            Event::BeforeBatch => "before_batch",
            Event::AfterPred => "after_pred",
            Event::AfterLoss => "after_loss",
            Event::BeforeBackward => "before_backward",
            Event::AfterBackward => "after_backward",
            Event::AfterCancelBackward => "after_cancel_backward",
            Event::BeforeStep => "before_step",
            Event::AfterStep => "after_step",
            Event::AfterCancelStep => "after_cancel_step",
            Event::AfterCancelBatch => "after_cancel_batch",
            Event::AfterBatch => "after_batch",
            Event::AfterCancelTrain => "after_cancel_train",
            Event::AfterTrain => "after_train",
            Event::BeforeValidate => "before_validate",
            Event::AfterCancelValidate => "after_cancel_validate",
            Event::AfterValidate => "after_validate",
            Event::AfterCancelEpoch => "after_cancel_epoch",
            Event::AfterEpoch => "after_epoch",
            Event::AfterCancelFit => "after_cancel_fit",
            Event::AfterFit => "after_fit",
        }
    }
}

impl fmt::Display for Event {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// What a callback asks the loop to do next (fastai's `Cancel*Exception`s, as values).
///
/// Each variant skips the rest of one stage; that stage then emits its `after_cancel_*` event
/// and its `after_*` event, and the loop goes on with what follows the stage. A flow for an outer
/// stage passes through the inner ones without their `after_*` events (as fastai's exceptions
/// do). A flow for a stage that does not enclose the event is a [`TrainError::MisplacedFlow`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    /// Carry on.
    Continue,
    /// Skip `loss.backward()` (training batches only).
    SkipBackward,
    /// Skip the optimizer step (training batches only), e.g. to accumulate gradients.
    SkipStep,
    /// Skip the rest of this batch.
    SkipBatch,
    /// Skip the rest of this epoch's training phase.
    SkipTrain,
    /// Skip the rest of this epoch's validation phase.
    SkipValidate,
    /// Skip the rest of this epoch.
    SkipEpoch,
    /// Stop the fit (`after_cancel_fit`, then `after_fit`).
    StopFit,
}

/// What a callback method returns.
pub type CallbackResult = Result<Flow, TrainError>;

/// A piece of behaviour plugged into the loop.
///
/// Observers implement [`Callback::on_event`] only. Mutators also override
/// [`Callback::before_batch`], the one place where a callback may change the batch or the
/// optimizer's lr/mom; its default forwards to `on_event(Event::BeforeBatch, …)`.
pub trait Callback {
    /// A short name for errors (`"mixup"`, `"param_scheduler"`).
    fn name(&self) -> &'static str;
    /// Position among the callbacks: lower runs first (see [`order`]).
    fn order(&self) -> i32;
    /// Called at every event with a read-only view of the fit.
    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        let _ = (event, context);
        Ok(Flow::Continue)
    }
    /// Called at `before_batch` (both phases; check `hooks.state.phase`) with mutable access to
    /// the batch and to the optimizer's lr/mom.
    fn before_batch(&mut self, hooks: &mut BatchHooks<'_>) -> CallbackResult {
        self.on_event(Event::BeforeBatch, &hooks.context())
    }
}

/// Rewrites the gradients right after `loss.backward()`, before `after_backward`'s callbacks
/// see them (PyTorch DDP's communication hook): data parallelism averages them over the ranks
/// here. Hooks run in the order they were added ([`crate::Learner::add_gradient_hook`]).
pub trait GradientHook {
    /// What the hook does, for errors (`"averaging gradients over the ranks"`).
    fn name(&self) -> &'static str;
    /// Rewrites `grads`, the gradients of the optimizer's `params` (sorted by name) for this
    /// batch.
    ///
    /// # Errors
    ///
    /// A failing tensor op or collective; the fit stops with it.
    fn after_backward(&self, params: &[OptimParam], grads: &mut GradStore) -> candle::Result<()>;
}

/// Where a fit stands: what callbacks read (fastai's `learn.epoch`, `learn.iter`, `pct_train`, …).
/// Callbacks only ever get `&FitState`, so its fields are public and read-only to them.
#[derive(Debug, Clone, PartialEq)]
pub struct FitState {
    /// Which fit of the running recipe (0, or 0/1 for `fine_tune`); in a plan of stages
    /// ([`crate::Learner::fit_stages`]) the fits of every stage are counted end to end
    /// (progressive resizing's `fine_tune` stage is fits 1 and 2).
    pub fit_index: usize,
    /// Which stage of a plan of stages is running (0 for a single recipe).
    pub stage: usize,
    /// The `fit_index` of the running stage's first fit: `fit_index - stage_first_fit` is the
    /// fit within the stage.
    pub stage_first_fit: usize,
    /// Epochs in this fit.
    pub n_epoch: usize,
    /// The current epoch of this fit (0-based).
    pub epoch: usize,
    /// The epoch number the data sources are asked for (counts every epoch the Learner ran, so
    /// two fits never replay the same shuffle and augmentation).
    pub data_epoch: u64,
    /// The current phase.
    pub phase: Phase,
    /// Index of the current batch within this epoch's phase.
    pub iter: usize,
    /// Batches in this epoch's phase.
    pub n_iter: usize,
    /// Training batches per epoch.
    pub n_train_batches: usize,
    /// Training batches done in this fit (fastai `train_iter`; incremented before `after_batch`'s
    /// callbacks run).
    pub train_iter: usize,
    /// Training batches done in this epoch.
    pub train_batches_done: usize,
    /// Position the schedules read (fastai `pct_train`, accumulated exactly as fastai does).
    pub pct_train: f64,
    /// Samples in the current batch.
    pub batch_size: usize,
    /// Learning rate in the optimizer for the current batch (read after `before_batch`).
    pub lr: f64,
    /// Momentum (Adam β1) in the optimizer for the current batch.
    pub mom: f64,
    /// The current batch's loss as read back (set before `after_loss`).
    pub last_loss: Option<f32>,
    /// fastai's smoothed training loss (updated by the Recorder at `after_batch`).
    pub smooth_loss: Option<f32>,
    /// The run's seed (what checkpoints record). Callbacks derive their random streams from
    /// [`FitState::stage_seed`].
    pub seed: u64,
    /// A real fit or lr_find's mock fit.
    pub kind: FitKind,
    /// This fit continues from a checkpoint taken inside it.
    pub resumed: bool,
    /// The interrupt flag was seen; the fit is stopping.
    pub interrupted: bool,
}

impl FitState {
    pub(crate) fn new(seed: u64) -> Self {
        FitState {
            fit_index: 0,
            stage: 0,
            stage_first_fit: 0,
            n_epoch: 0,
            epoch: 0,
            data_epoch: 0,
            phase: Phase::Train,
            iter: 0,
            n_iter: 0,
            n_train_batches: 0,
            train_iter: 0,
            train_batches_done: 0,
            pct_train: 0.0,
            batch_size: 0,
            lr: 0.0,
            mom: 0.0,
            last_loss: None,
            smooth_loss: None,
            seed,
            kind: FitKind::Training,
            resumed: false,
            interrupted: false,
        }
    }

    /// The seed of the running stage (`wick_data::seed::stage_seed(seed, stage)`, the run's seed
    /// in stage 0), from which callbacks derive their random streams: each stage's data epochs
    /// start again at 0, so the stage index keeps two stages from replaying the same draws.
    pub fn stage_seed(&self) -> u64 {
        wick_data::seed::stage_seed(self.seed, self.stage)
    }

    /// Where a resumed run continues after the last completed training batch: this epoch, from
    /// the next training batch (validation, if it was running, is redone).
    pub fn position_after_batch(&self) -> FitPosition {
        FitPosition {
            fit_index: self.fit_index,
            epoch: self.epoch,
            batch: self.train_batches_done,
            data_epoch: self.data_epoch,
        }
    }

    /// Where a resumed run continues once this epoch is over: the next epoch, or the start of
    /// the recipe's next fit after the last epoch.
    pub fn position_after_epoch(&self) -> FitPosition {
        if self.epoch + 1 >= self.n_epoch {
            FitPosition {
                fit_index: self.fit_index + 1,
                epoch: 0,
                batch: 0,
                data_epoch: self.data_epoch + 1,
            }
        } else {
            FitPosition {
                fit_index: self.fit_index,
                epoch: self.epoch + 1,
                batch: 0,
                data_epoch: self.data_epoch + 1,
            }
        }
    }

    /// `"epoch 1, train batch 3"`, for error messages.
    pub(crate) fn describe(&self) -> String {
        format!("epoch {}, {} batch {}", self.epoch, self.phase, self.iter)
    }
}

/// A point in a recipe where training can continue: before training batch `batch` of epoch
/// `epoch` of fit `fit_index` (in a plan of stages, the fits of every stage counted end to end).
/// `(epoch, batch) = (0, 0)` is the start of that fit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FitPosition {
    /// Which fit of the recipe (or of the plan of stages).
    pub fit_index: usize,
    /// Epoch within that fit.
    pub epoch: usize,
    /// Training batches of that epoch already done.
    pub batch: usize,
    /// The data epoch of `epoch` (see [`FitState::data_epoch`]).
    pub data_epoch: u64,
}

impl FitPosition {
    /// Whether this is the very start of a fit (nothing of it done yet).
    pub fn is_fit_start(&self) -> bool {
        self.epoch == 0 && self.batch == 0
    }
}

/// The read-only view every callback gets.
pub struct EventContext<'a> {
    /// Where the fit stands.
    pub state: &'a FitState,
    /// The current batch, during batch events.
    pub batch: Option<&'a BatchState>,
    /// The history so far (epoch rows, per-batch records, the smoothed loss).
    pub recorder: &'a Recorder,
    /// The model's variables (weights and BatchNorm running statistics). Read only: writing
    /// through a `Var` here is outside the loop's contract.
    pub varmap: &'a VarMap,
    /// The optimizer, to read its hyper-parameters or save its state.
    pub optimizer: &'a dyn Optimizer,
    /// The model's state outside its `VarMap` (BatchNorm's step counter), to save it.
    pub model_state: &'a dyn ModelState,
}

/// The mutable view a callback gets at `before_batch`.
pub struct BatchHooks<'a> {
    /// Where the fit stands.
    pub state: &'a FitState,
    /// The batch about to be predicted.
    pub batch: &'a mut BatchState,
    /// The optimizer's learning rate and momentum.
    pub opt: OptControl<'a>,
    pub(crate) recorder: &'a Recorder,
    pub(crate) varmap: &'a VarMap,
    pub(crate) model_state: &'a dyn ModelState,
}

impl BatchHooks<'_> {
    /// The same moment as a read-only [`EventContext`].
    pub fn context(&self) -> EventContext<'_> {
        EventContext {
            state: self.state,
            batch: Some(&*self.batch),
            recorder: self.recorder,
            varmap: self.varmap,
            optimizer: &*self.opt.optimizer,
            model_state: self.model_state,
        }
    }
}

/// The hyper-parameters a scheduler may set: learning rate and momentum, nothing else.
pub struct OptControl<'a> {
    optimizer: &'a mut dyn Optimizer,
}

impl<'a> OptControl<'a> {
    pub(crate) fn new(optimizer: &'a mut dyn Optimizer) -> Self {
        OptControl { optimizer }
    }

    /// The current learning rate.
    pub fn lr(&self) -> f64 {
        self.optimizer.lr()
    }

    /// Sets the learning rate for this batch's step.
    pub fn set_lr(&mut self, lr: f64) {
        self.optimizer.set_lr(lr);
    }

    /// The current momentum (Adam β1).
    pub fn mom(&self) -> f64 {
        self.optimizer.mom()
    }

    /// Sets the momentum for this batch's step.
    pub fn set_mom(&mut self, mom: f64) {
        self.optimizer.set_mom(mom);
    }
}

/// One batch as it goes through the loop. Mutators change `xs` and `ys` at `before_batch`
/// (MixUp/CutMix mix the inputs and turn `ys` into [`Targets::Mixed`]); the loop fills in the
/// logits and the loss, which is the Learner's loss against `ys`.
///
/// Shapes: `xs` `(B,C,H,W)`, labels `(B,)` u32, logits `(B,K)`.
pub struct BatchState {
    /// The inputs.
    pub xs: Tensor,
    /// What the loss is computed against; [`Targets::labels`] are the batch's own labels.
    pub ys: Targets,
    pub(crate) logits: Option<Tensor>,
    pub(crate) loss: Option<Tensor>,
    pub(crate) loss_value: Option<f32>,
    pub(crate) grads: Option<GradStore>,
}

impl BatchState {
    /// A batch of inputs and hard labels.
    pub(crate) fn new(xs: Tensor, ys: Tensor) -> Self {
        BatchState {
            xs,
            ys: Targets::Labels(ys),
            logits: None,
            loss: None,
            loss_value: None,
            grads: None,
        }
    }

    /// The model's output `(B,K)`, from `after_pred` on (detached during validation).
    pub fn logits(&self) -> Option<&Tensor> {
        self.logits.as_ref()
    }

    /// The batch-mean loss tensor, from `after_loss` on (part of the graph while training).
    pub fn loss(&self) -> Option<&Tensor> {
        self.loss.as_ref()
    }

    /// The loss read back to the host, from `after_loss` on.
    pub fn loss_value(&self) -> Option<f32> {
        self.loss_value
    }
}
