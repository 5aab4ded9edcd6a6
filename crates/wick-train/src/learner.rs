//! The [`Learner`] and the one training loop (fastai `Learner._do_fit` / `_do_epoch` /
//! `_do_one_batch`). The loop only predicts, computes the loss against the batch's targets, runs
//! backward and the optimizer step, and emits events around each stage through one helper,
//! `Learner::with_events` (fastai `_with_events`). It has no feature branches; every tweak
//! plugs in through one of three seams:
//! - a [`Callback`] (schedules, checkpoints, files; input mixing rewrites the batch's inputs and
//!   its [`Targets`](crate::Targets) at `before_batch`, and the loss accepts either kind of
//!   targets);
//! - the model itself (mixed precision is the [`Autocast`](crate::Autocast) wrapper around it);
//! - a [`GradientHook`] (data parallelism's gradient averaging), run between `loss.backward()`
//!   and `after_backward`.
//!
//! # Event order
//!
//! The executable version of this list is the `event_order` test (fastai's
//! `show_training_loop`):
//!
//! ```text
//! before_fit
//!   for each epoch:
//!     before_epoch
//!       before_train
//!         for each training batch:
//!           before_batch        mutators: MixUp rewrites xs and ys, the scheduler sets lr, mom
//!           (forward, train = true)   after_pred
//!           (loss against ys, read back once) after_loss
//!           before_backward (loss.backward(), then the gradient hooks) after_backward
//!           before_step     (optimizer step)  after_step
//!           after_batch         the Recorder updates the smoothed loss; checkpoints save
//!       after_train
//!       before_validate
//!         for each validation batch:
//!           before_batch, after_pred, after_loss, after_batch   (train = false, no graph kept)
//!       after_validate
//!     after_epoch               the Recorder writes the epoch row
//! after_fit                     always, also after StopFit, an interrupt or an error
//! ```
//!
//! A returned [`Flow`] skips the rest of a stage: that stage emits `after_cancel_<stage>` then
//! `after_<stage>`, and the loop continues after it (for example `SkipBatch` → `after_cancel_batch`,
//! `after_batch`, next batch). Within one event, callbacks run by [`Callback::order`]: first the
//! loop's own bookkeeping (fastai `TrainEvalCallback`: at `after_batch` of a training batch,
//! `train_iter` and `pct_train` advance), then callbacks below [`order::RECORDER`], the
//! [`Recorder`], then the rest. The first callback that returns a flow ends the event.
//!
//! The interrupt flag ([`Learner::set_interrupt_flag`], set by the CLI on Ctrl-C) is checked after
//! every batch; when set, the fit stops like `StopFit` with [`FitState::interrupted`] true (the
//! checkpoint callback saves on that `after_cancel_fit`) and the outcome is
//! [`FitOutcome::Interrupted`].
//!
//! Validation builds no graph that outlives a batch: candle records a graph whenever a `Var`
//! takes part in an op, so the eval-mode logits are detached at once, and nothing of the forward
//! pass is kept after the batch. Training keeps the graph only until the step.
//!
//! Per batch the loop reads back the loss scalar and the largest label (to name an
//! out-of-range label instead of indexing out of bounds); the second read follows the first, so
//! the device is already synchronised.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use candle::{DType, ModuleT, Tensor, Var};

use candle_nn::VarMap;
use wick_nn::ModelState;

use crate::callback::{
    BatchHooks, BatchState, Callback, CallbackResult, Event, EventContext, FitKind, FitPosition,
    FitState, Flow, GradientHook, OptControl, Phase, order,
};
use crate::data::BatchSource;
use crate::error::TrainError;
use crate::loss::Loss;
use crate::optim::Optimizer;
use crate::recorder::{Metric, Recorder};
use crate::schedule::{OptimizerStateAction, TrainPosition};

/// How a Learner trains, apart from the model, optimizer and data.
#[derive(Debug, Clone, PartialEq)]
pub struct LearnerConfig {
    /// The loss (fastai `loss_func`).
    pub loss: Loss,
    /// Validation metrics, in table order.
    pub metrics: Vec<Metric>,
    /// The run's seed: every callback's random stream derives from it (and the batch position),
    /// and checkpoints refuse to resume under another seed.
    pub seed: u64,
}

/// How a fit (or a recipe) ended without error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FitOutcome {
    /// Every epoch ran.
    Completed,
    /// A callback returned [`Flow::StopFit`] (early stopping, lr_find's stop rule).
    Stopped {
        /// Where the fit stopped.
        at: FitPosition,
    },
    /// The interrupt flag was set; the fit stopped after a batch. `at` is where a resume
    /// continues.
    Interrupted {
        /// The resume position.
        at: FitPosition,
    },
}

/// One fit of a recipe: its length, what happens to the optimizer state first, and the
/// callbacks that exist for this fit only (the scheduler).
pub(crate) struct PlannedFit {
    pub(crate) n_epoch: usize,
    pub(crate) optimizer_state: OptimizerStateAction,
    pub(crate) callbacks: Vec<Box<dyn Callback>>,
}

/// A resume position with the shape of the fit it was taken in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PendingResume {
    pub(crate) position: FitPosition,
    pub(crate) n_epoch: usize,
    pub(crate) n_train_batches: usize,
}

/// Everything lr_find puts back: weights and buffers, the model's state outside its `VarMap`,
/// optimizer state, history, data epoch.
pub(crate) struct Snapshot {
    vars: Vec<(Var, Tensor)>,
    model_state: HashMap<String, Tensor>,
    optimizer: HashMap<String, Tensor>,
    recorder: Recorder,
    next_data_epoch: u64,
}

struct Slot {
    callback: Box<dyn Callback>,
    /// Added for one fit only.
    temporary: bool,
}

/// Which stage of a plan of stages ([`Learner::fit_stages`]) is running.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct StageInfo {
    pub(crate) index: usize,
    /// The flattened fit index of the stage's first fit.
    pub(crate) first_fit: usize,
}

/// A model, its variables, an optimizer, data, a loss and callbacks, and the loop that trains
/// them. Model-agnostic: any `candle::ModuleT` mapping `(B,C,H,W)` to logits `(B,K)`, with the
/// [`ModelState`] it keeps outside its `VarMap` (none, by the trait's defaults), which
/// checkpoints and lr_find's snapshot save with the variables. The Learner keeps the model's
/// type: [`Learner::model`] is the model itself.
pub struct Learner<M> {
    model: M,
    varmap: VarMap,
    optimizer: Box<dyn Optimizer>,
    train_data: Arc<dyn BatchSource>,
    valid_data: Arc<dyn BatchSource>,
    config: LearnerConfig,
    callbacks: Vec<Slot>,
    recorder: Recorder,
    state: FitState,
    position: TrainPosition,
    batch: Option<BatchState>,
    interrupt: Option<Arc<AtomicBool>>,
    pending_resume: Option<PendingResume>,
    next_data_epoch: u64,
    /// The first batch of the first epoch of a resumed fit.
    start_batch: usize,
    /// The event whose callback returned the last non-`Continue` flow (for error messages).
    last_flow_event: Event,
    fit_cancelled: bool,
    after_fit_ran: bool,
    /// Run between `loss.backward()` and `after_backward`, in order.
    gradient_hooks: Vec<Box<dyn GradientHook>>,
    /// The stage the next fit belongs to.
    stage: StageInfo,
}

macro_rules! propagate {
    ($flow:expr) => {
        let flow = $flow;
        if flow != Flow::Continue {
            return Ok(flow);
        }
    };
}

impl<M: ModuleT + ModelState> Learner<M> {
    /// A Learner over `model` (whose variables are in `varmap`), trained by `optimizer` on
    /// `train` and validated on `valid`.
    pub fn new(
        model: M,
        varmap: VarMap,
        optimizer: Box<dyn Optimizer>,
        train: Box<dyn BatchSource>,
        valid: Box<dyn BatchSource>,
        config: LearnerConfig,
    ) -> Self {
        Learner {
            model,
            varmap,
            optimizer,
            train_data: Arc::from(train),
            valid_data: Arc::from(valid),
            recorder: Recorder::new(config.metrics.clone()),
            state: FitState::new(config.seed),
            config,
            callbacks: Vec::new(),
            position: TrainPosition::new(0, 0),
            batch: None,
            interrupt: None,
            pending_resume: None,
            next_data_epoch: 0,
            start_batch: 0,
            last_flow_event: Event::BeforeFit,
            fit_cancelled: false,
            after_fit_ran: false,
            gradient_hooks: Vec::new(),
            stage: StageInfo::default(),
        }
    }

    /// Adds a hook that rewrites the gradients after every backward pass, before
    /// `after_backward` (for every following fit; hooks run in the order added). Data
    /// parallelism is one: each gradient becomes its mean over the ranks.
    pub fn add_gradient_hook(&mut self, hook: Box<dyn GradientHook>) {
        self.gradient_hooks.push(hook);
    }

    /// Adds a callback for every following fit.
    pub fn add_callback(&mut self, callback: Box<dyn Callback>) {
        self.callbacks.push(Slot { callback, temporary: false });
        self.callbacks.sort_by_key(|slot| slot.callback.order());
    }

    /// Names of the callbacks, in run order.
    pub fn callback_names(&self) -> Vec<&'static str> {
        self.callbacks.iter().map(|slot| slot.callback.name()).collect()
    }

    /// The flag checked after every batch; when it is set the fit stops cleanly (see the module
    /// docs).
    pub fn set_interrupt_flag(&mut self, flag: Arc<AtomicBool>) {
        self.interrupt = Some(flag);
    }

    /// Replaces the data (a stage's new data in [`Learner::fit_stages`]); the data epochs of the
    /// new sources are counted from `next_data_epoch`.
    pub(crate) fn set_data(
        &mut self,
        train: Box<dyn BatchSource>,
        valid: Box<dyn BatchSource>,
        next_data_epoch: u64,
    ) {
        self.train_data = Arc::from(train);
        self.valid_data = Arc::from(valid);
        self.next_data_epoch = next_data_epoch;
    }

    /// The history and the smoothed loss.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    /// Where the last (or current) fit stands.
    pub fn state(&self) -> &FitState {
        &self.state
    }

    /// The model (with its own type: an [`Autocast`](crate::Autocast)'s inner model is
    /// [`Autocast::inner`](crate::Autocast::inner)).
    pub fn model(&self) -> &M {
        &self.model
    }

    /// The model's variables (weights and BatchNorm running statistics).
    pub fn varmap(&self) -> &VarMap {
        &self.varmap
    }

    /// The optimizer.
    pub fn optimizer(&self) -> &dyn Optimizer {
        &*self.optimizer
    }

    /// The optimizer, to change weight decay or reset its state between recipes.
    pub fn optimizer_mut(&mut self) -> &mut dyn Optimizer {
        &mut *self.optimizer
    }

    /// The configuration.
    pub fn config(&self) -> &LearnerConfig {
        &self.config
    }

    /// Training batches per epoch.
    pub fn train_batches(&self) -> usize {
        self.train_data.n_batches()
    }

    /// One fit: `before_fit` … `after_fit`, with the fit's own callbacks added for its duration.
    pub(crate) fn fit_once(
        &mut self,
        fit_index: usize,
        fit: PlannedFit,
        resume: Option<FitPosition>,
        kind: FitKind,
    ) -> Result<FitOutcome, TrainError> {
        let n_train_batches = self.train_data.n_batches();
        if n_train_batches == 0 && fit.n_epoch > 0 {
            return Err(TrainError::InvalidConfig {
                what: "training data",
                reason: "the training source has no batches".to_string(),
            });
        }
        self.begin_fit(fit_index, fit.n_epoch, n_train_batches, resume, kind);
        for callback in fit.callbacks {
            self.callbacks.push(Slot { callback, temporary: true });
        }
        self.callbacks.sort_by_key(|slot| slot.callback.order());
        let result = self.with_events(Stage::Fit, Self::do_fit);
        self.callbacks.retain(|slot| !slot.temporary);
        self.batch = None;
        result?;
        Ok(if self.state.interrupted {
            FitOutcome::Interrupted { at: self.state.position_after_batch() }
        } else if self.fit_cancelled {
            FitOutcome::Stopped { at: self.state.position_after_batch() }
        } else {
            FitOutcome::Completed
        })
    }

    fn begin_fit(
        &mut self,
        fit_index: usize,
        n_epoch: usize,
        n_train_batches: usize,
        resume: Option<FitPosition>,
        kind: FitKind,
    ) {
        let start = resume.unwrap_or(FitPosition { fit_index, epoch: 0, batch: 0, data_epoch: 0 });
        // Replay the position of the epochs already done, so pct_train carries exactly the
        // rounding of an uninterrupted fit.
        self.position = TrainPosition::new(n_epoch, n_train_batches);
        for epoch in 0..start.epoch {
            self.position.begin_epoch(epoch);
            (0..n_train_batches).for_each(|_| self.position.end_batch());
        }
        self.start_batch = start.batch;
        self.fit_cancelled = false;
        self.after_fit_ran = false;
        let seed = self.config.seed;
        self.state = FitState {
            fit_index,
            stage: self.stage.index,
            stage_first_fit: self.stage.first_fit,
            n_epoch,
            epoch: start.epoch,
            n_iter: n_train_batches,
            n_train_batches,
            kind,
            resumed: resume.is_some(),
            lr: self.optimizer.lr(),
            mom: self.optimizer.mom(),
            smooth_loss: resume.and_then(|_| self.recorder.smooth_loss()),
            ..FitState::new(seed)
        };
        self.state.data_epoch = self.next_data_epoch;
        self.sync_position();
    }

    // -----------------------------------------------------------------------------------------
    // The loop.
    // -----------------------------------------------------------------------------------------

    fn do_fit(&mut self) -> CallbackResult {
        for epoch in self.state.epoch..self.state.n_epoch {
            self.state.epoch = epoch;
            self.state.data_epoch = self.next_data_epoch;
            self.next_data_epoch += 1;
            propagate!(self.with_events(Stage::Epoch, Self::do_epoch)?);
        }
        Ok(Flow::Continue)
    }

    fn do_epoch(&mut self) -> CallbackResult {
        let first_batch = std::mem::take(&mut self.start_batch);
        self.begin_phase(Phase::Train, first_batch);
        propagate!(self.with_events(Stage::Train, Self::do_all_batches)?);
        self.begin_phase(Phase::Valid, 0);
        self.with_events(Stage::Validate, Self::do_all_batches)
    }

    fn do_all_batches(&mut self) -> CallbackResult {
        let data = match self.state.phase {
            Phase::Train => Arc::clone(&self.train_data),
            Phase::Valid => Arc::clone(&self.valid_data),
        };
        let first_batch = self.state.iter;
        // The time spent in the source (starting its stream, each `next`) is the data wait of
        // the Recorder's time split.
        let mut waiting_since = Instant::now();
        let mut batches = data.batches(self.state.data_epoch, first_batch);
        for iter in first_batch.. {
            let item = batches.next();
            self.recorder.add_data_wait(waiting_since.elapsed().as_secs_f64());
            let Some(item) = item else { break };
            self.state.iter = iter;
            let wick_data::Batch { xs, ys, .. } = item.map_err(|source| TrainError::Data {
                epoch: self.state.epoch,
                phase: self.state.phase,
                batch: iter,
                source,
            })?;
            self.state.batch_size = xs.dims().first().copied().unwrap_or(0);
            self.batch = Some(BatchState::new(xs, ys));
            let flow = self.with_events(Stage::Batch, Self::do_one_batch);
            // Drops the logits, the loss and with them the graph of this batch.
            self.batch = None;
            propagate!(flow?);
            if self.interrupt.as_ref().is_some_and(|flag| flag.load(Ordering::Relaxed)) {
                self.state.interrupted = true;
                return Ok(Flow::StopFit);
            }
            waiting_since = Instant::now();
        }
        Ok(Flow::Continue)
    }

    fn do_one_batch(&mut self) -> CallbackResult {
        let training = self.state.phase == Phase::Train;
        let Some(xs) = self.batch.as_ref().map(|batch| batch.xs.clone()) else {
            return Ok(Flow::Continue);
        };
        let logits =
            self.model.forward_t(&xs, training).map_err(|e| self.tensor_error("forward", e))?;
        // Validation keeps no graph: detaching drops every reference to the forward pass.
        let logits = if training { logits } else { logits.detach() };
        self.set_batch(|batch| batch.logits = Some(logits.clone()));
        propagate!(self.emit(Event::AfterPred)?);

        let (loss, value) = self.compute_loss(&logits)?;
        self.state.last_loss = Some(value);
        self.set_batch(|batch| {
            batch.loss = Some(loss);
            batch.loss_value = Some(value);
        });
        propagate!(self.emit(Event::AfterLoss)?);
        if !training {
            return Ok(Flow::Continue);
        }
        propagate!(self.with_events(Stage::Backward, Self::do_backward)?);
        propagate!(self.with_events(Stage::Step, Self::do_step)?);
        self.set_batch(|batch| batch.grads = None);
        Ok(Flow::Continue)
    }

    fn do_backward(&mut self) -> CallbackResult {
        if let Some(loss) = self.batch.as_ref().and_then(|batch| batch.loss.clone()) {
            let mut grads = loss.backward().map_err(|e| self.tensor_error("backward", e))?;
            for hook in &self.gradient_hooks {
                hook.after_backward(self.optimizer.params(), &mut grads)
                    .map_err(|e| self.tensor_error(hook.name(), e))?;
            }
            self.set_batch(|batch| batch.grads = Some(grads));
        }
        Ok(Flow::Continue)
    }

    fn do_step(&mut self) -> CallbackResult {
        if let Some(grads) = self.batch.as_ref().and_then(|batch| batch.grads.as_ref()) {
            self.optimizer.step(grads)?;
        }
        Ok(Flow::Continue)
    }

    /// The batch-mean loss against the batch's targets and its value read back, after checking
    /// the shapes, the label range and finiteness.
    fn compute_loss(&self, logits: &Tensor) -> Result<(Tensor, f32), TrainError> {
        let Some(batch) = self.batch.as_ref() else {
            return Err(TrainError::tensor(
                self.state.describe(),
                candle::Error::Msg("no batch".into()),
            ));
        };
        let labels = batch.ys.labels();
        let n_classes = self.check_shapes(logits, labels)?;
        let loss = match self.config.loss.forward_targets(logits, &batch.ys) {
            Ok(loss) => loss,
            Err(error) => {
                // Name an out-of-range label rather than the indexing error it causes.
                self.check_label_range(labels, n_classes)?;
                return Err(self.tensor_error("loss", error));
            }
        };
        let value = loss
            .to_dtype(DType::F32)
            .and_then(|loss| loss.to_scalar::<f32>())
            .map_err(|e| self.tensor_error("reading the loss", e))?;
        self.check_label_range(labels, n_classes)?;
        if !value.is_finite() {
            return Err(TrainError::NonFiniteLoss {
                phase: self.state.phase,
                epoch: self.state.epoch,
                batch: self.state.iter,
                value,
            });
        }
        Ok((loss, value))
    }

    /// Logits `(B,K)` and labels `(B,)` u32 for the batch's B; returns K.
    fn check_shapes(&self, logits: &Tensor, labels: &Tensor) -> Result<usize, TrainError> {
        let (epoch, phase, batch, batch_size) =
            (self.state.epoch, self.state.phase, self.state.iter, self.state.batch_size);
        let &[logits_batch, n_classes] = logits.dims() else {
            return Err(TrainError::LogitsShape {
                epoch,
                phase,
                batch,
                logits: logits.shape().clone(),
                batch_size,
            });
        };
        if logits_batch != batch_size || n_classes == 0 {
            return Err(TrainError::LogitsShape {
                epoch,
                phase,
                batch,
                logits: logits.shape().clone(),
                batch_size,
            });
        }
        if labels.dims() != [batch_size] || labels.dtype() != DType::U32 {
            return Err(TrainError::LabelsShape {
                epoch,
                phase,
                batch,
                labels: labels.shape().clone(),
                dtype: labels.dtype(),
                batch_size,
            });
        }
        Ok(n_classes)
    }

    fn check_label_range(&self, labels: &Tensor, n_classes: usize) -> Result<(), TrainError> {
        if labels.elem_count() == 0 {
            return Ok(());
        }
        let largest = labels
            .max(0)
            .and_then(|max| max.to_scalar::<u32>())
            .map_err(|e| self.tensor_error("checking labels", e))?;
        if largest as usize >= n_classes {
            return Err(TrainError::LabelOutOfRange {
                epoch: self.state.epoch,
                phase: self.state.phase,
                batch: self.state.iter,
                label: largest,
                n_classes,
            });
        }
        Ok(())
    }

    // -----------------------------------------------------------------------------------------
    // Events.
    // -----------------------------------------------------------------------------------------

    /// fastai `_with_events`: `before_<stage>`, the body, `after_cancel_<stage>` if a flow for
    /// this stage came back, `after_<stage>`. A flow for an outer stage is passed up without the
    /// `after_<stage>` event. For the fit stage, `after_fit` runs even when the body fails.
    fn with_events(
        &mut self,
        stage: Stage,
        body: fn(&mut Self) -> CallbackResult,
    ) -> CallbackResult {
        let mut bracket = || -> CallbackResult {
            let mut flow = self.emit(stage.before())?;
            if flow == Flow::Continue {
                flow = body(self)?;
            }
            if flow == stage.cancel() {
                let after_cancel = self.emit(stage.after_cancel())?;
                propagate!(self.pass_up(after_cancel, stage)?);
            } else if flow != Flow::Continue {
                return self.pass_up(flow, stage);
            }
            let after = self.emit(stage.after())?;
            self.pass_up(after, stage)
        };
        let result = bracket();
        if stage == Stage::Fit && result.is_err() && !self.after_fit_ran {
            // after_fit always runs; an error inside it cannot hide the first one.
            let _ = self.emit(Event::AfterFit);
        }
        result
    }

    /// A flow returned inside `stage` that `stage` does not handle: passed to the enclosing
    /// stage if it is for an outer one, an error otherwise.
    fn pass_up(&self, flow: Flow, stage: Stage) -> CallbackResult {
        if flow == Flow::Continue || flow_level(flow) > stage.level() {
            Ok(flow)
        } else {
            Err(TrainError::MisplacedFlow { flow, event: self.last_flow_event })
        }
    }

    /// Runs one event: the loop's bookkeeping, the callbacks below the Recorder's order, the
    /// Recorder, the rest. Returns the first flow other than `Continue`.
    fn emit(&mut self, event: Event) -> CallbackResult {
        match event {
            Event::AfterBatch if self.state.phase == Phase::Train => {
                // fastai TrainEvalCallback.after_batch.
                self.position.end_batch();
                self.state.train_batches_done += 1;
                self.sync_position();
            }
            Event::AfterCancelFit => self.fit_cancelled = true,
            Event::AfterFit => self.after_fit_ran = true,
            _ => {}
        }
        let flow = self.dispatch(event)?;
        if event == Event::BeforeBatch {
            self.state.lr = self.optimizer.lr();
            self.state.mom = self.optimizer.mom();
        }
        if flow != Flow::Continue {
            self.last_flow_event = event;
        }
        Ok(flow)
    }

    fn dispatch(&mut self, event: Event) -> CallbackResult {
        let mut recorded = false;
        for slot in &mut self.callbacks {
            if !recorded && slot.callback.order() >= order::RECORDER {
                self.recorder.on_event(event, &self.state, self.batch.as_ref())?;
                self.state.smooth_loss = self.recorder.smooth_loss();
                recorded = true;
            }
            let flow = match (event, self.batch.as_mut()) {
                (Event::BeforeBatch, Some(batch)) => {
                    let mut hooks = BatchHooks {
                        state: &self.state,
                        batch,
                        opt: OptControl::new(&mut *self.optimizer),
                        recorder: &self.recorder,
                        varmap: &self.varmap,
                        model_state: &self.model,
                    };
                    slot.callback.before_batch(&mut hooks)?
                }
                (_, batch) => {
                    let context = EventContext {
                        state: &self.state,
                        batch: batch.map(|batch| &*batch),
                        recorder: &self.recorder,
                        varmap: &self.varmap,
                        optimizer: &*self.optimizer,
                        model_state: &self.model,
                    };
                    slot.callback.on_event(event, &context)?
                }
            };
            if flow != Flow::Continue {
                return Ok(flow);
            }
        }
        if !recorded {
            self.recorder.on_event(event, &self.state, self.batch.as_ref())?;
            self.state.smooth_loss = self.recorder.smooth_loss();
        }
        Ok(Flow::Continue)
    }

    // -----------------------------------------------------------------------------------------
    // State helpers.
    // -----------------------------------------------------------------------------------------

    /// Sets the phase before its `before_train` / `before_validate`; training starts at
    /// `first_batch` (non-zero only when resuming mid-epoch) with its position replayed.
    fn begin_phase(&mut self, phase: Phase, first_batch: usize) {
        self.state.phase = phase;
        self.state.iter = first_batch;
        match phase {
            Phase::Train => {
                self.state.n_iter = self.train_data.n_batches();
                self.state.train_batches_done = first_batch;
                // fastai TrainEvalCallback.before_train: pct_train = epoch / n_epoch.
                self.position.begin_epoch(self.state.epoch);
                (0..first_batch).for_each(|_| self.position.end_batch());
                self.sync_position();
            }
            Phase::Valid => self.state.n_iter = self.valid_data.n_batches(),
        }
    }

    fn sync_position(&mut self) {
        self.state.pct_train = self.position.pct_train();
        self.state.train_iter = self.position.train_iter();
    }

    fn set_batch(&mut self, change: impl FnOnce(&mut BatchState)) {
        if let Some(batch) = self.batch.as_mut() {
            change(batch);
        }
    }

    fn tensor_error(&self, step: &str, source: candle::Error) -> TrainError {
        TrainError::tensor(format!("{}: {step}", self.state.describe()), source)
    }

    // -----------------------------------------------------------------------------------------
    // Resume and snapshots.
    // -----------------------------------------------------------------------------------------

    /// Sets a resume position for the next recipe call (see [`crate::Checkpoint`]).
    pub(crate) fn set_pending_resume(&mut self, resume: PendingResume) {
        self.next_data_epoch = resume.position.data_epoch;
        self.pending_resume = Some(resume);
    }

    /// Takes the resume position set by [`Learner::resume`], if any.
    pub(crate) fn take_pending_resume(&mut self) -> Option<PendingResume> {
        self.pending_resume.take()
    }

    /// The stage the following fits belong to.
    pub(crate) fn set_stage(&mut self, stage: StageInfo) {
        self.stage = stage;
    }

    /// Every variable of the model, sorted by name.
    pub(crate) fn sorted_vars(&self) -> Vec<(String, Var)> {
        sorted_vars(&self.varmap)
    }

    pub(crate) fn recorder_mut(&mut self) -> &mut Recorder {
        &mut self.recorder
    }

    /// A copy of everything lr_find changes.
    pub(crate) fn snapshot(&self) -> Result<Snapshot, TrainError> {
        let vars = sorted_vars(&self.varmap)
            .into_iter()
            .map(|(name, var)| {
                let copy = var
                    .as_tensor()
                    .copy()
                    .map_err(|e| TrainError::tensor(format!("snapshot of {name}"), e))?;
                Ok((var, copy))
            })
            .collect::<Result<Vec<_>, TrainError>>()?;
        let model_state = self
            .model
            .save_state()
            .map_err(|e| TrainError::tensor("snapshot of the model state", e))?;
        Ok(Snapshot {
            vars,
            model_state,
            optimizer: self.optimizer.state_dict()?,
            recorder: self.recorder.clone(),
            next_data_epoch: self.next_data_epoch,
        })
    }

    /// Puts a [`Snapshot`] back, bit for bit.
    pub(crate) fn restore(&mut self, snapshot: Snapshot) -> Result<(), TrainError> {
        for (var, value) in &snapshot.vars {
            var.set(value).map_err(|e| TrainError::tensor("restoring a snapshot", e))?;
        }
        self.model
            .load_state(&snapshot.model_state)
            .map_err(|e| TrainError::tensor("restoring the model state of a snapshot", e))?;
        self.optimizer.load_state_dict(&snapshot.optimizer)?;
        self.recorder = snapshot.recorder;
        self.next_data_epoch = snapshot.next_data_epoch;
        Ok(())
    }
}

/// Every variable of `varmap` (parameters and buffers), sorted by name.
pub(crate) fn sorted_vars(varmap: &VarMap) -> Vec<(String, Var)> {
    // A poisoned lock only means another thread panicked while holding it; the map is intact.
    let data = varmap.data().lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let mut vars: Vec<(String, Var)> =
        data.iter().map(|(name, var)| (name.clone(), var.clone())).collect();
    vars.sort_by(|a, b| a.0.cmp(&b.0));
    vars
}

pub(crate) fn check_resume_shape(
    what: &'static str,
    checkpoint: usize,
    current: usize,
) -> Result<(), TrainError> {
    if checkpoint == current {
        Ok(())
    } else {
        Err(TrainError::ResumeMismatch {
            what,
            checkpoint: checkpoint.to_string(),
            current: current.to_string(),
        })
    }
}

/// The bracketed stages of the loop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    Fit,
    Epoch,
    Train,
    Validate,
    Batch,
    Backward,
    Step,
}

impl Stage {
    fn before(self) -> Event {
        match self {
            Stage::Fit => Event::BeforeFit,
            Stage::Epoch => Event::BeforeEpoch,
            Stage::Train => Event::BeforeTrain,
            Stage::Validate => Event::BeforeValidate,
            Stage::Batch => Event::BeforeBatch,
            Stage::Backward => Event::BeforeBackward,
            Stage::Step => Event::BeforeStep,
        }
    }

    fn after(self) -> Event {
        match self {
            Stage::Fit => Event::AfterFit,
            Stage::Epoch => Event::AfterEpoch,
            Stage::Train => Event::AfterTrain,
            Stage::Validate => Event::AfterValidate,
            Stage::Batch => Event::AfterBatch,
            Stage::Backward => Event::AfterBackward,
            Stage::Step => Event::AfterStep,
        }
    }

    fn after_cancel(self) -> Event {
        match self {
            Stage::Fit => Event::AfterCancelFit,
            Stage::Epoch => Event::AfterCancelEpoch,
            Stage::Train => Event::AfterCancelTrain,
            Stage::Validate => Event::AfterCancelValidate,
            Stage::Batch => Event::AfterCancelBatch,
            Stage::Backward => Event::AfterCancelBackward,
            Stage::Step => Event::AfterCancelStep,
        }
    }

    /// The flow that cancels this stage.
    fn cancel(self) -> Flow {
        match self {
            Stage::Fit => Flow::StopFit,
            Stage::Epoch => Flow::SkipEpoch,
            Stage::Train => Flow::SkipTrain,
            Stage::Validate => Flow::SkipValidate,
            Stage::Batch => Flow::SkipBatch,
            Stage::Backward => Flow::SkipBackward,
            Stage::Step => Flow::SkipStep,
        }
    }

    /// Nesting depth from the inside: a flow passes through stages of a lower level.
    fn level(self) -> u8 {
        match self {
            Stage::Backward | Stage::Step => 0,
            Stage::Batch => 1,
            Stage::Train | Stage::Validate => 2,
            Stage::Epoch => 3,
            Stage::Fit => 4,
        }
    }
}

/// The level of the stage a flow cancels ([`Stage::level`]).
fn flow_level(flow: Flow) -> u8 {
    match flow {
        Flow::Continue | Flow::SkipBackward | Flow::SkipStep => 0,
        Flow::SkipBatch => 1,
        Flow::SkipTrain | Flow::SkipValidate => 2,
        Flow::SkipEpoch => 3,
        Flow::StopFit => 4,
    }
}
