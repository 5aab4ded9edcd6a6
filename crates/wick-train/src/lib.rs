//! wick-train: fastai-style training, reproducing fastai 2.8 (spec: `fastai-ch7-spec.md` §2–4,
//! §7–8), model- and dataset-agnostic: any `candle::ModuleT` with its `VarMap` and its
//! [`ModelState`] (what it keeps outside the `VarMap`; none by default), any
//! [`BatchSource`].
//!
//! Pure pieces (no Learner, no callbacks):
//! - [`schedule`]: one-cycle, flat-cos, the lr finder's ramp, the `fine_tune` plan, and fastai's
//!   training-position bookkeeping (no candle types).
//! - [`optim`]: fastai's `Adam` and `SGD` over a name-sorted parameter list, with state save/load.
//! - [`loss`]: cross-entropy, label smoothing, soft targets, per-sample forms, [`Loss`] and the
//!   [`Targets`] it is computed against (hard labels or MixUp's mixed pairs).
//! - [`mixup`]: MixUp and CutMix draws (from a seeded RNG passed in) and mixing.
//! - [`metrics`]: accuracy, top-k, error rate, weighted means and the smoothed train loss.
//! - [`lr_find`]: the lr finder's stopping rule and its four suggestion rules.
//! - [`precision`]: bf16 mixed precision as the [`Autocast`] model wrapper, and the bare
//!   training step the benches and the device check run ([`forward_backward`]).
//!
//! The Learner and what plugs into it:
//! - [`learner`]: the [`Learner`] and the one training loop; its module docs list the event
//!   order.
//! - [`callback`]: events, [`Flow`], the [`Callback`] trait and the views callbacks get, and
//!   the [`GradientHook`] trait.
//! - [`callbacks`]: the scheduler, the lr finder, MixUp/CutMix, checkpoints, run files.
//! - [`recorder`]: smoothed loss, validation metrics, history, fastai's epoch table.
//! - [`recipes`]: `fit`, `fit_one_cycle`, `fit_flat_cos`, `fine_tune`, `lr_find`.
//! - [`stages`]: plans of stages ([`Learner::fit_stages`]): recipes one after the other, each
//!   optionally on new data (progressive resizing), resumable inside any stage.
//! - [`checkpoint`]: save and resume mid-fit, bit for bit (the model's [`ModelState`] too).
//! - [`output`]: `metrics.jsonl` and the PNG plots.
//! - [`data`]: [`BatchSource`] for wick-data's `DataLoader` and in-memory batches.
//! - [`distributed`]: data-parallel training ([`DataParallel`], a gradient hook over an
//!   [`AllReduce`] group: threads in memory, or NCCL with the `nccl` feature).
//!
//! The library never prints: tables and JSON come back as strings, plots as files.
//!
//! Shape legend used throughout: B batch, C channels, H height, W width, K classes.

pub mod callback;
pub mod callbacks;
pub mod checkpoint;
pub mod data;
pub mod distributed;
mod error;
pub mod learner;
pub mod loss;
pub mod lr_find;
pub mod metrics;
pub mod mixup;
pub mod optim;
pub mod output;
pub mod precision;
pub mod recipes;
pub mod recorder;
pub mod schedule;
pub mod stages;

pub use callback::{
    BatchHooks, BatchState, Callback, CallbackResult, Event, EventContext, FitKind, FitPosition,
    FitState, Flow, GradientHook, OptControl, Phase, order,
};
pub use callbacks::{
    CheckpointConfig, CheckpointSaver, CutMix, LrFinder, MixUp, ParamScheduler, RunFiles, batch_rng,
};
pub use checkpoint::{Checkpoint, CheckpointExtras, CheckpointSnapshot, save_checkpoint};
pub use data::{BatchIter, BatchSource, InMemoryBatches};
pub use distributed::{AllReduce, DataParallel, ThreadGroup};
pub use error::TrainError;
pub use learner::{FitOutcome, Learner, LearnerConfig};
pub use loss::{
    Loss, MixedLabels, Reduction, Targets, cross_entropy, cross_entropy_per_sample,
    label_smoothing_cross_entropy, soft_target_cross_entropy, soft_target_cross_entropy_per_sample,
};
pub use lr_find::{
    DivergenceRule, LrFindControl, LrFindCurve, LrFindError, LrFindStopper, SlideConfig, minimum,
    slide, steep, valley,
};
pub use metrics::{
    FASTAI_TOP_K, SmoothedLoss, WeightedMean, accuracy, correct_count, error_rate, top_k_accuracy,
    top_k_correct_count,
};
pub use mixup::{
    CutMixBox, CutMixDraw, MixError, MixUpDraw, cut_mix_images, cutmix_box, cutmix_lambda,
    mix_images, mixed_loss, mixed_loss_per_sample, random_permutation, sample_cutmix,
    sample_folded_lambdas, sample_mixup,
};
pub use optim::{
    Adam, AdamConfig, OptimError, OptimParam, Optimizer, Sgd, SgdConfig, StepKernel,
    is_norm_or_bias, optim_params, optim_params_with_rule, trainable_params,
};
pub use output::{
    loss_chart, lr_find_chart, metrics_jsonl, schedule_charts, write_loss_plot, write_lr_find_plot,
    write_metrics_jsonl, write_schedule_plot,
};
pub use precision::{Autocast, Precision, forward_backward};
pub use recipes::{LrFindConfig, LrFindResult};
pub use recorder::{
    BatchRecord, EpochRecord, FitRecord, Metric, Recorder, TimeSplit, ValidRecord,
    format_epoch_table, format_time,
};
pub use schedule::{
    Annealer, CombinedSchedule, FASTAI_MOMS, FineTune, FlatCos, HyperSchedule, LrFinderSchedule,
    OneCycle, OneCyclePhase, OptimizerStateAction, Schedule, ScheduleError, TrainPosition,
    combine_scheds, combined_cos, fit_positions, sched_cos, sched_exp, sched_lin, sched_no,
};
pub use stages::{Stage, StageData, StageFit, stage_fit_ranges};
pub use wick_nn::ModelState;
