//! [`CheckpointSaver`] (order 80, after the Recorder): writes a checkpoint every N training
//! batches, at the end of every epoch, and when the fit stops on the interrupt flag. It never
//! writes after an error (a NaN loss stops the fit before `after_batch`), and a save whose model
//! or optimizer state holds NaN or infinity is refused (the fit stops with
//! `TrainError::NonFiniteState`), so the file on disk is always the last good, finite state. The
//! file format is `checkpoint.rs`.
//!
//! A save copies the state out of the fit on the training thread ([`CheckpointSnapshot::take`])
//! and writes it on a background thread while the next steps run: the checksum, the
//! serialisation and the fsynced write were about 0.6 s of a 0.9-s save of xresnet18 with Adam
//! (134 MB). At most one write is in flight. A write that failed stops the fit with its error
//! at the next event after it ended; the next save and the end of the fit (`after_fit`, also
//! after an interrupt or an error) wait for a write still running, so when `after_fit` has
//! reached the saver the last checkpoint is on disk (the error of a write that fails after the
//! fit already failed is not reported: the fit's own error is). A process killed mid-write
//! leaves the previous checkpoint, as a synchronous save would
//! (docs/decisions/0009-background-checkpoint-writes.md).

use std::path::PathBuf;
use std::thread::JoinHandle;

use crate::callback::{Callback, CallbackResult, Event, EventContext, FitKind, Flow, Phase, order};
use crate::checkpoint::{CheckpointExtras, CheckpointSnapshot};
use crate::error::TrainError;

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
#[derive(Debug)]
pub struct CheckpointSaver {
    config: CheckpointConfig,
    extras: CheckpointExtras,
    saves: usize,
    /// The write in flight, if any.
    writing: Option<JoinHandle<Result<(), TrainError>>>,
}

impl CheckpointSaver {
    /// A saver writing to `config.path`.
    pub fn new(config: CheckpointConfig) -> Self {
        CheckpointSaver { config, extras: CheckpointExtras::default(), saves: 0, writing: None }
    }

    /// Waits for the write in flight, if any.
    ///
    /// # Errors
    /// The write's error ([`TrainError::Checkpoint`]), also when its thread panicked.
    fn finish_writing(&mut self) -> Result<(), TrainError> {
        let Some(writing) = self.writing.take() else { return Ok(()) };
        writing.join().unwrap_or_else(|_| {
            Err(TrainError::Checkpoint {
                path: self.config.path.clone(),
                reason: "the thread writing it panicked".to_string(),
            })
        })
    }

    /// Also records `extras` (the model's identity and its state outside the `VarMap`).
    pub fn with_extras(mut self, extras: CheckpointExtras) -> Self {
        self.extras = extras;
        self
    }

    /// Checkpoints taken so far (each written, or being written, in the background).
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
        // A write that has ended is collected at once, so that a failure stops the fit at the
        // next event rather than at the next save; the fit's end waits for one still running.
        if event == Event::AfterFit || self.writing.as_ref().is_some_and(JoinHandle::is_finished) {
            self.finish_writing()?;
        }
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
            // The previous write ends before this one starts: files land in order, and only
            // one snapshot is held at a time.
            self.finish_writing()?;
            let snapshot =
                CheckpointSnapshot::take(&self.config.path, context, position, &self.extras)?;
            let writing = std::thread::Builder::new()
                .name("wick-checkpoint".to_string())
                .spawn(move || snapshot.write())
                .map_err(|error| TrainError::Checkpoint {
                    path: self.config.path.clone(),
                    reason: format!("cannot start the thread that writes it: {error}"),
                })?;
            self.writing = Some(writing);
            self.saves += 1;
        }
        Ok(Flow::Continue)
    }
}

impl Drop for CheckpointSaver {
    /// A fit always ends with `after_fit`, which waits for the write; this covers a saver
    /// dropped otherwise (a panic), so that no write is cut short by the process exiting.
    fn drop(&mut self) {
        let _ = self.finish_writing();
    }
}
