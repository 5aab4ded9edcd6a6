//! The Learner's built-in [`Recorder`] (fastai `Recorder`, order 50): the smoothed training loss,
//! the exact validation loss and metrics, each epoch's wall-clock time and where it went
//! ([`TimeSplit`]), and the history a run leaves behind: one [`FitRecord`] per fit, with
//! per-batch [`BatchRecord`]s and per-epoch [`EpochRecord`]s. [`format_epoch_table`] renders
//! fastai's epoch table as text; the library returns strings and never prints.
//!
//! Definitions (spec §2.3): `train_loss` is the smoothed loss after the epoch's last training
//! batch ([`SmoothedLoss`], reset at the start of every fit, not every epoch); `valid_loss` and
//! the metrics are exact dataset means (batch means weighted by batch size); `time` is the
//! epoch's wall clock, train and valid, shown as mm:ss.

use std::time::Instant;

use candle::Tensor;

use crate::callback::{BatchState, Event, FitState, Phase};
use crate::error::TrainError;
use crate::metrics::{SmoothedLoss, WeightedMean, correct_count, top_k_correct_count};

/// A validation metric (fastai `metrics=`), accumulated exactly over the validation set.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Metric {
    /// fastai `accuracy`.
    Accuracy,
    /// fastai `error_rate`.
    ErrorRate,
    /// fastai `top_k_accuracy(k)`.
    TopKAccuracy {
        /// How many of the highest logits count.
        k: usize,
    },
}

impl Metric {
    /// The column name fastai prints.
    pub fn name(&self) -> String {
        match self {
            Metric::Accuracy => "accuracy".to_string(),
            Metric::ErrorRate => "error_rate".to_string(),
            Metric::TopKAccuracy { k } => format!("top_{k}_accuracy"),
        }
    }

    /// Samples of a batch the metric counts as hits. Logits `(B,K)`, labels `(B,)`.
    fn hits(&self, logits: &Tensor, labels: &Tensor) -> candle::Result<usize> {
        match *self {
            Metric::Accuracy => correct_count(logits, labels),
            Metric::ErrorRate => Ok(logits.dim(0)? - correct_count(logits, labels)?),
            Metric::TopKAccuracy { k } => top_k_correct_count(logits, labels, k),
        }
    }
}

/// One training batch as recorded after its step.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BatchRecord {
    /// Index of the batch within its fit (fastai `train_iter − 1`).
    pub iteration: usize,
    /// Learning rate it was trained with.
    pub lr: f64,
    /// Momentum (Adam β1) it was trained with.
    pub mom: f64,
    /// Its loss.
    pub loss: f32,
    /// The smoothed loss after it.
    pub smooth_loss: f32,
}

/// The validation half of an epoch's row.
#[derive(Debug, Clone, PartialEq)]
pub struct ValidRecord {
    /// Dataset-mean validation loss.
    pub loss: f64,
    /// One value per [`Metric`] of the Learner, in order.
    pub metrics: Vec<f64>,
}

/// Where an epoch's wall clock went, in seconds. fastai's Recorder keeps only the total; this
/// split is what tells the data pipeline's share of a run from the model's. The rest of
/// [`EpochRecord::seconds`] ([`TimeSplit::other`]) is the work between batches: the callbacks
/// ordered before the Recorder at `before_batch` (MixUp, CutMix) and after it at
/// `after_batch` (a checkpoint's snapshot), and those of the phase and epoch events. On a
/// device that runs asynchronously (CUDA) a part is charged with the work it waits for, not
/// the work it queued: the totals hold, the parts are approximate.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TimeSplit {
    /// Waiting for the batch source, both phases (starting each phase's stream, then each
    /// next batch): the part of the data pipeline that the loader's prefetch did not hide.
    pub data_wait: f64,
    /// Training batches, from the Recorder's `before_batch` to its `after_batch`: forward,
    /// loss, backward, optimizer step and the callbacks of the events between.
    pub train_batches: f64,
    /// Validation batches, `before_batch` to `after_batch`: forward, loss and metrics.
    pub valid_batches: f64,
}

impl TimeSplit {
    /// The seconds of `total` outside the three parts (never negative).
    pub fn other(&self, total: f64) -> f64 {
        (total - self.data_wait - self.train_batches - self.valid_batches).max(0.0)
    }

    /// The sum of two splits, part by part.
    pub fn add(&self, other: &TimeSplit) -> TimeSplit {
        TimeSplit {
            data_wait: self.data_wait + other.data_wait,
            train_batches: self.train_batches + other.train_batches,
            valid_batches: self.valid_batches + other.valid_batches,
        }
    }
}

/// One row of the epoch table.
#[derive(Debug, Clone, PartialEq)]
pub struct EpochRecord {
    /// Epoch within the fit (0-based, as fastai prints it).
    pub epoch: usize,
    /// Smoothed training loss at the end of the epoch (`None` if no training batch ran).
    pub train_loss: Option<f32>,
    /// Validation loss and metrics (`None` if validation was skipped).
    pub valid: Option<ValidRecord>,
    /// Wall-clock seconds of the epoch (train and valid).
    pub seconds: f64,
    /// Where `seconds` went (checkpoints keep it, also for an epoch interrupted and resumed);
    /// `None` only for an epoch resumed from or restored from an older wick's checkpoint.
    pub split: Option<TimeSplit>,
    /// Training batches done in the fit at the end of the epoch (the x of the valid-loss point
    /// on the loss plot).
    pub train_iter: usize,
}

/// Everything recorded during one fit.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FitRecord {
    /// Every training batch, in order.
    pub batches: Vec<BatchRecord>,
    /// Every epoch, in order.
    pub epochs: Vec<EpochRecord>,
}

/// The smoothed loss, the validation accumulators and the history of every fit.
#[derive(Debug, Clone)]
pub struct Recorder {
    metrics: Vec<Metric>,
    smooth: SmoothedLoss,
    fits: Vec<FitRecord>,
    valid_loss: WeightedMean,
    valid_hits: Vec<usize>,
    validated: bool,
    epoch_started: Option<Instant>,
    /// Seconds of the current epoch spent before a resume.
    elapsed_before_resume: f64,
    /// The current epoch's split since it began or resumed.
    split: TimeSplit,
    /// The current epoch's split before a resume (zero if it was not resumed; `None` if the
    /// checkpoint it resumed from did not record it).
    split_before_resume: Option<TimeSplit>,
    /// When the current batch began.
    batch_started: Option<Instant>,
}

impl Recorder {
    pub(crate) fn new(metrics: Vec<Metric>) -> Self {
        let n_metrics = metrics.len();
        Recorder {
            metrics,
            smooth: SmoothedLoss::fastai_default(),
            fits: Vec::new(),
            valid_loss: WeightedMean::new(),
            valid_hits: vec![0; n_metrics],
            validated: false,
            epoch_started: None,
            elapsed_before_resume: 0.0,
            split: TimeSplit::default(),
            split_before_resume: Some(TimeSplit::default()),
            batch_started: None,
        }
    }

    /// The validation metrics, in column order.
    pub fn metrics(&self) -> &[Metric] {
        &self.metrics
    }

    /// One record per fit run so far (lr_find's mock fit is not kept).
    pub fn fits(&self) -> &[FitRecord] {
        &self.fits
    }

    /// The same metrics with only the history of `fits` (e.g. one stage's fits of a plan of
    /// stages): what the output files of that part of a run are drawn from. The smoothed loss
    /// and the validation accumulators start empty.
    ///
    /// # Panics
    /// If `fits` is not a range of [`Recorder::fits`].
    pub fn slice(&self, fits: std::ops::Range<usize>) -> Recorder {
        Recorder { fits: self.fits[fits].to_vec(), ..Recorder::new(self.metrics.clone()) }
    }

    /// The current smoothed training loss.
    pub fn smooth_loss(&self) -> Option<f32> {
        self.smooth.value()
    }

    /// fastai's epoch table of fit `fit_index`, or `None` if there is no such fit.
    pub fn epoch_table(&self, fit_index: usize) -> Option<String> {
        let names: Vec<String> = self.metrics.iter().map(Metric::name).collect();
        self.fits.get(fit_index).map(|fit| format_epoch_table(&names, &fit.epochs))
    }

    pub(crate) fn on_event(
        &mut self,
        event: Event,
        state: &FitState,
        batch: Option<&BatchState>,
    ) -> Result<(), TrainError> {
        self.clock(event, state.phase);
        match event {
            Event::BeforeFit if !state.resumed || self.fits.is_empty() => {
                self.smooth.reset();
                self.elapsed_before_resume = 0.0;
                self.split_before_resume = Some(TimeSplit::default());
                self.fits.push(FitRecord::default());
            }
            Event::BeforeEpoch => self.epoch_started = Some(Instant::now()),
            Event::BeforeTrain => self.validated = false,
            Event::BeforeValidate => {
                self.valid_loss.reset();
                self.valid_hits.iter_mut().for_each(|hits| *hits = 0);
                self.validated = true;
            }
            Event::AfterBatch => {
                if let Some(batch) = batch {
                    self.after_batch(state, batch)?;
                }
            }
            Event::AfterEpoch => self.after_epoch(state),
            _ => {}
        }
        Ok(())
    }

    /// Times the batches at the events that bound them (see [`TimeSplit`]).
    fn clock(&mut self, event: Event, phase: Phase) {
        match event {
            Event::BeforeEpoch => {
                self.split = TimeSplit::default();
                self.batch_started = None;
            }
            Event::BeforeBatch => self.batch_started = Some(Instant::now()),
            Event::AfterBatch => {
                if let Some(started) = self.batch_started.take() {
                    let seconds = started.elapsed().as_secs_f64();
                    match phase {
                        Phase::Train => self.split.train_batches += seconds,
                        Phase::Valid => self.split.valid_batches += seconds,
                    }
                }
            }
            _ => {}
        }
    }

    /// Adds `seconds` the loop spent waiting for its batch source to the current epoch.
    pub(crate) fn add_data_wait(&mut self, seconds: f64) {
        self.split.data_wait += seconds;
    }

    fn after_batch(&mut self, state: &FitState, batch: &BatchState) -> Result<(), TrainError> {
        // A batch cancelled before its loss leaves nothing to record (fastai: no loss, no record).
        let Some(loss) = batch.loss_value else { return Ok(()) };
        match state.phase {
            Phase::Train => {
                self.smooth.accumulate(loss);
                let record = BatchRecord {
                    iteration: state.train_iter.saturating_sub(1),
                    lr: state.lr,
                    mom: state.mom,
                    loss,
                    smooth_loss: self.smooth.value().unwrap_or(loss),
                };
                self.current_fit().batches.push(record);
            }
            Phase::Valid => {
                self.valid_loss.accumulate(f64::from(loss), state.batch_size);
                if let Some(logits) = &batch.logits {
                    for (metric, hits) in self.metrics.iter().zip(self.valid_hits.iter_mut()) {
                        *hits += metric.hits(logits, batch.ys.labels()).map_err(|source| {
                            TrainError::tensor(
                                format!("{}: {}", state.describe(), metric.name()),
                                source,
                            )
                        })?;
                    }
                }
            }
        }
        Ok(())
    }

    fn after_epoch(&mut self, state: &FitState) {
        let seconds = self.elapsed_before_resume
            + self.epoch_started.map_or(0.0, |started| started.elapsed().as_secs_f64());
        let split = self.epoch_split();
        // A checkpoint saved from here on (at after_epoch) holds no part of a next epoch.
        self.elapsed_before_resume = 0.0;
        self.epoch_started = None;
        self.split_before_resume = Some(TimeSplit::default());
        self.split = TimeSplit::default();
        let valid = match (self.validated, self.valid_loss.value()) {
            (true, Some(loss)) => {
                let n = self.valid_loss.count() as f64;
                let metrics = self.valid_hits.iter().map(|&hits| hits as f64 / n).collect();
                Some(ValidRecord { loss, metrics })
            }
            _ => None,
        };
        let record = EpochRecord {
            epoch: state.epoch,
            train_loss: self.smooth.value(),
            valid,
            seconds,
            split,
            train_iter: state.train_iter,
        };
        self.current_fit().epochs.push(record);
    }

    fn current_fit(&mut self) -> &mut FitRecord {
        if self.fits.is_empty() {
            self.fits.push(FitRecord::default());
        }
        let last = self.fits.len() - 1;
        &mut self.fits[last]
    }

    /// Seconds spent in the current epoch so far (saved by checkpoints).
    pub(crate) fn epoch_elapsed(&self) -> f64 {
        self.elapsed_before_resume
            + self.epoch_started.map_or(0.0, |started| started.elapsed().as_secs_f64())
    }

    /// The smoothed-loss accumulator as `(average, count)` (saved by checkpoints).
    pub(crate) fn smooth_state(&self) -> (f32, u32) {
        self.smooth.state()
    }

    /// The current epoch's time split so far (saved by checkpoints).
    pub(crate) fn epoch_split(&self) -> Option<TimeSplit> {
        self.split_before_resume.map(|before| before.add(&self.split))
    }

    /// Puts back what a checkpoint saved.
    pub(crate) fn restore(
        &mut self,
        fits: Vec<FitRecord>,
        smooth: (f32, u32),
        epoch_elapsed: f64,
        epoch_split: Option<TimeSplit>,
    ) {
        self.fits = fits;
        self.smooth.restore(smooth.0, smooth.1);
        self.elapsed_before_resume = epoch_elapsed;
        self.split_before_resume = epoch_split;
        self.split = TimeSplit::default();
    }
}

/// fastai's epoch table as its console output prints it (fastprogress `ConsoleMasterBar`):
/// column names padded to at least 8 characters and joined by two spaces, each value padded to
/// its column's width plus two; losses and metrics with 6 decimals, time as mm:ss. Trailing
/// spaces are trimmed and each line ends in `\n`; a skipped validation shows `-`.
///
/// ```text
/// epoch     train_loss  valid_loss  accuracy  time
/// 0         1.583403    2.064317    0.401792  01:03
/// ```
pub fn format_epoch_table(metric_names: &[String], rows: &[EpochRecord]) -> String {
    let mut names: Vec<String> = vec!["epoch".into(), "train_loss".into(), "valid_loss".into()];
    names.extend(metric_names.iter().cloned());
    names.push("time".into());
    let padded: Vec<String> = names.iter().map(|name| format!("{name:<8}")).collect();
    let mut lines = vec![padded.join("  ")];
    for row in rows {
        let mut cells = vec![row.epoch.to_string(), optional_float(row.train_loss.map(f64::from))];
        cells.push(optional_float(row.valid.as_ref().map(|valid| valid.loss)));
        for index in 0..metric_names.len() {
            cells.push(optional_float(
                row.valid.as_ref().and_then(|v| v.metrics.get(index).copied()),
            ));
        }
        cells.push(format_time(row.seconds));
        let line: String = cells
            .iter()
            .zip(&padded)
            .map(|(cell, name)| format!("{cell:<width$}", width = name.len() + 2))
            .collect();
        lines.push(line);
    }
    let mut text: String = lines.iter().map(|line| line.trim_end()).collect::<Vec<_>>().join("\n");
    text.push('\n');
    text
}

/// fastai `format_time`: `mm:ss`, or `h:mm:ss` from one hour on (seconds truncated).
pub fn format_time(seconds: f64) -> String {
    let total = if seconds.is_finite() && seconds > 0.0 { seconds as u64 } else { 0 };
    let (hours, minutes, secs) = (total / 3600, (total / 60) % 60, total % 60);
    if hours != 0 {
        format!("{hours}:{minutes:02}:{secs:02}")
    } else {
        format!("{minutes:02}:{secs:02}")
    }
}

fn optional_float(value: Option<f64>) -> String {
    value.map_or_else(|| "-".to_string(), |value| format!("{value:.6}"))
}
