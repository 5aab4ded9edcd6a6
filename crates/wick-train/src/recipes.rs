//! The training recipes as Learner methods (fastai `callback/schedule.py`): [`Learner::fit`],
//! [`Learner::fit_one_cycle`], [`Learner::fit_flat_cos`], [`Learner::fine_tune`] and
//! [`Learner::lr_find`]. Each is a plan of one stage ([`Learner::fit_stages`], `stages.rs`) of
//! one or two fits, each fit with its scheduler callback; the loop is `learner.rs`, the
//! schedule arithmetic `schedule.rs`.

use candle::ModuleT;
use wick_nn::ModelState;

use crate::callback::FitKind;
use crate::callbacks::LrFinder;
use crate::error::TrainError;
use crate::learner::{FitOutcome, Learner, PlannedFit, StageInfo};
use crate::lr_find::{
    DivergenceRule, LrFindCurve, LrFindError, SlideConfig, minimum, slide, steep, valley,
};
use crate::schedule::{FineTune, FlatCos, LrFinderSchedule, OneCycle, OptimizerStateAction};
use crate::stages::{Stage, StageFit};

/// fastai `lr_find(start_lr, end_lr, num_it, stop_div)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrFindConfig {
    /// The exponential lr ramp.
    pub schedule: LrFinderSchedule,
    /// Whether a diverging loss stops the search.
    pub divergence: DivergenceRule,
}

impl LrFindConfig {
    /// `lr_find()`: 1e-7 → 10 over 100 batches, stopping on divergence.
    pub fn fastai_defaults() -> Self {
        LrFindConfig {
            schedule: LrFinderSchedule::fastai_defaults(),
            divergence: DivergenceRule::StopAtFourTimesBest,
        }
    }
}

/// What lr_find recorded: the lr and the smoothed loss after every batch it ran.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindResult {
    /// The lr of each batch.
    pub lrs: Vec<f64>,
    /// The smoothed loss after each batch.
    pub losses: Vec<f32>,
    /// The `num_it` asked for (the suggestions trim the curve with it).
    pub num_it: usize,
    /// The interrupt flag stopped the search early.
    pub interrupted: bool,
}

impl LrFindResult {
    /// The curve as fastai's suggestion rules see it.
    pub fn curve(&self) -> Result<LrFindCurve, LrFindError> {
        LrFindCurve::from_recorded(&self.lrs, &self.losses, self.num_it)
    }

    /// fastai `valley` (the default suggestion).
    pub fn valley(&self) -> Result<f64, LrFindError> {
        valley(&self.curve()?)
    }

    /// fastai `minimum` (a tenth of the lr at the lowest loss).
    pub fn minimum(&self) -> Result<f64, LrFindError> {
        minimum(&self.curve()?)
    }

    /// fastai `steep`.
    pub fn steep(&self) -> Result<f64, LrFindError> {
        steep(&self.curve()?)
    }

    /// fastai `slide`.
    pub fn slide(&self, config: SlideConfig) -> Result<f64, LrFindError> {
        slide(&self.curve()?, config)
    }
}

impl<M: ModuleT + ModelState> Learner<M> {
    /// fastai `fit(n_epoch, lr)`: a constant learning rate, momentum left as it is.
    pub fn fit(&mut self, n_epoch: usize, lr: f64) -> Result<FitOutcome, TrainError> {
        self.fit_stages(vec![Stage::new(StageFit::Constant { n_epoch, lr })])
    }

    /// fastai `fit_one_cycle(n_epoch, lr_max, div, div_final, pct_start, moms)` (spec §3.1).
    pub fn fit_one_cycle(
        &mut self,
        n_epoch: usize,
        cycle: OneCycle,
    ) -> Result<FitOutcome, TrainError> {
        self.fit_stages(vec![Stage::new(StageFit::OneCycle { n_epoch, cycle })])
    }

    /// fastai `fit_flat_cos(n_epoch, lr, div_final, pct_start)`.
    pub fn fit_flat_cos(
        &mut self,
        n_epoch: usize,
        flat_cos: FlatCos,
    ) -> Result<FitOutcome, TrainError> {
        self.fit_stages(vec![Stage::new(StageFit::FlatCos { n_epoch, flat_cos })])
    }

    /// fastai `fine_tune(epochs, base_lr, freeze_epochs, pct_start, div)` (spec §3.2–3.3): two
    /// one-cycle fits, each after an optimizer-state reset (with one parameter group,
    /// `freeze`/`unfreeze` do nothing else), so two epoch tables.
    pub fn fine_tune(&mut self, fine_tune: FineTune) -> Result<FitOutcome, TrainError> {
        self.fit_stages(vec![Stage::new(StageFit::FineTune(fine_tune))])
    }

    /// fastai `lr_find` (spec §4): trains with an exponentially growing lr for up to `num_it`
    /// batches (`num_it // batches_per_epoch + 1` epochs, validation skipped), recording the lr
    /// and the smoothed loss after each batch, then puts back the model's variables and its
    /// [`ModelState`] (BatchNorm's step counter), the optimizer state and the history exactly as
    /// they were, even when the search fails. Checkpoint and file callbacks do not run during
    /// the search.
    pub fn lr_find(&mut self, config: LrFindConfig) -> Result<LrFindResult, TrainError> {
        let n_epoch = config.schedule.n_epoch(self.train_batches());
        let snapshot = self.snapshot()?;
        let fit = PlannedFit {
            n_epoch,
            optimizer_state: OptimizerStateAction::Keep,
            callbacks: vec![Box::new(LrFinder::new(config.schedule, config.divergence))],
        };
        self.set_stage(StageInfo::default());
        let outcome = self.fit_once(0, fit, None, FitKind::LrFind);
        let batches =
            self.recorder().fits().last().map(|fit| fit.batches.clone()).unwrap_or_default();
        self.restore(snapshot)?;
        let outcome = outcome?;
        Ok(LrFindResult {
            lrs: batches.iter().map(|b| b.lr).collect(),
            losses: batches.iter().map(|b| b.smooth_loss).collect(),
            num_it: config.schedule.num_it,
            interrupted: matches!(outcome, FitOutcome::Interrupted { .. }),
        })
    }
}
