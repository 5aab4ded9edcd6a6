//! [`CheckpointSaver`] (order 80, after the Recorder): writes a checkpoint every N training
//! batches, at the end of every epoch, and when the fit stops on the interrupt flag. It never
//! writes after an error (a NaN loss stops the fit before `after_batch`), and a save whose model
//! or optimizer state holds NaN or infinity is refused (the fit stops with
//! `TrainError::NonFiniteState`), so the file on disk is always the last good, finite state. The
//! file format is `checkpoint.rs`.

use std::path::PathBuf;

use crate::callback::{Callback, CallbackResult, Event, EventContext, FitKind, Flow, Phase, order};
use crate::checkpoint::{CheckpointExtras, save_checkpoint};

/// Where and how often to checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointConfig {
    /// The checkpoint file (replaced atomically at each save).
    pub path: PathBuf,
    /// Save after every this many training batches of a fit (0: only at epoch ends and on
    /// interrupt).
    pub every_n_batches: usize,
}

/// Saves checkpoints during real fits (never during lr_find's mock fit).
#[derive(Debug, Clone)]
pub struct CheckpointSaver {
    config: CheckpointConfig,
    extras: CheckpointExtras,
    saves: usize,
}

impl CheckpointSaver {
    /// A saver writing to `config.path`.
    pub fn new(config: CheckpointConfig) -> Self {
        CheckpointSaver { config, extras: CheckpointExtras::default(), saves: 0 }
    }

    /// Also records `extras` (the model's identity and its state outside the `VarMap`).
    pub fn with_extras(mut self, extras: CheckpointExtras) -> Self {
        self.extras = extras;
        self
    }

    /// Checkpoints written so far.
    pub fn saves(&self) -> usize {
        self.saves
    }
}

impl Callback for CheckpointSaver {
    fn name(&self) -> &'static str {
        "checkpoint"
    }

    fn order(&self) -> i32 {
        order::CHECKPOINT
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        let state = context.state;
        if state.kind != FitKind::Training {
            return Ok(Flow::Continue);
        }
        let every = self.config.every_n_batches;
        let position = match event {
            Event::AfterBatch
                if state.phase == Phase::Train
                    && every > 0
                    && state.train_iter.is_multiple_of(every) =>
            {
                Some(state.position_after_batch())
            }
            Event::AfterEpoch => Some(state.position_after_epoch()),
            Event::AfterCancelFit if state.interrupted => Some(state.position_after_batch()),
            _ => None,
        };
        if let Some(position) = position {
            save_checkpoint(&self.config.path, context, position, &self.extras)?;
            self.saves += 1;
        }
        Ok(Flow::Continue)
    }
}
