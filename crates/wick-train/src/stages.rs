//! Plans of stages: several recipes run one after the other by one Learner, each optionally on
//! new data, resumable from one checkpoint anywhere inside them ([`Learner::fit_stages`]).
//!
//! Progressive resizing as fastai writes it (chapter 7) is a plan of two stages:
//!
//! ```text
//! learn.fit_one_cycle(4, 3e-3)              Stage::new(StageFit::OneCycle { n_epoch: 4, .. })
//! learn.dls = get_dls(64, 224)              Stage::new(StageFit::FineTune(..))
//! learn.fine_tune(5, 1e-3)                      .with_data(|| Ok((train_224, valid_224)))
//! ```
//!
//! The fits of every stage are counted end to end: above, the one-cycle fit is fit 0 and
//! `fine_tune`'s frozen and unfrozen fits are fits 1 and 2. That flattened index is what
//! [`crate::FitState::fit_index`] and a checkpoint's position hold, so one checkpoint resumes
//! the plan inside any stage: [`Learner::resume`] then [`Learner::fit_stages`] with the same
//! stages skips the stages already done (without calling their data factories) and continues
//! the interrupted one on its own data.
//!
//! A stage's data factory is called when the stage starts, or when a resume continues inside
//! it, never for a stage that is skipped. New data starts its data epochs at 0 (a data source's
//! shuffles and augmentations are a function of its data epoch), and each stage's callbacks
//! draw from their own seed ([`crate::FitState::stage_seed`]), so two stages never replay the
//! same draws. A stage without data trains on what the stage before it trained on.

use crate::callback::FitKind;
use crate::callbacks::ParamScheduler;
use crate::data::BatchSource;
use crate::error::TrainError;
use crate::learner::{
    FitOutcome, Learner, PendingResume, PlannedFit, StageInfo, check_resume_shape,
};
use crate::schedule::{FineTune, FlatCos, HyperSchedule, OneCycle, OptimizerStateAction};
use candle::ModuleT;
use wick_nn::ModelState;

/// The training and validation sources of a stage.
pub type StageData = (Box<dyn BatchSource>, Box<dyn BatchSource>);

/// Builds a stage's data when the stage runs.
type DataFactory<'a> =
    Box<dyn FnOnce() -> Result<StageData, Box<dyn std::error::Error + Send + Sync>> + 'a>;

/// What a stage trains: one of the recipes (fastai `fit`, `fit_one_cycle`, `fit_flat_cos`,
/// `fine_tune`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum StageFit {
    /// fastai `fit(n_epoch, lr)`: a constant learning rate, momentum left as it is (one fit).
    Constant {
        /// Epochs.
        n_epoch: usize,
        /// The learning rate.
        lr: f64,
    },
    /// fastai `fit_one_cycle(n_epoch, ...)` (one fit).
    OneCycle {
        /// Epochs.
        n_epoch: usize,
        /// The schedule.
        cycle: OneCycle,
    },
    /// fastai `fit_flat_cos(n_epoch, ...)` (one fit).
    FlatCos {
        /// Epochs.
        n_epoch: usize,
        /// The schedule.
        flat_cos: FlatCos,
    },
    /// fastai `fine_tune(...)`: two one-cycle fits, each after an optimizer-state reset.
    FineTune(FineTune),
}

impl StageFit {
    /// How many fits the stage runs (2 for `fine_tune`, else 1).
    pub fn n_fits(&self) -> usize {
        match self {
            StageFit::FineTune(_) => 2,
            _ => 1,
        }
    }

    /// Epochs over all of the stage's fits.
    pub fn n_epoch(&self) -> usize {
        match *self {
            StageFit::Constant { n_epoch, .. }
            | StageFit::OneCycle { n_epoch, .. }
            | StageFit::FlatCos { n_epoch, .. } => n_epoch,
            StageFit::FineTune(fine_tune) => fine_tune.freeze_epochs + fine_tune.epochs,
        }
    }

    /// The stage's fits, each with its scheduler, the schedules validated.
    pub(crate) fn planned_fits(&self) -> Result<Vec<PlannedFit>, TrainError> {
        let single = |n_epoch: usize, schedule: HyperSchedule| {
            vec![(n_epoch, OptimizerStateAction::Keep, schedule)]
        };
        let fits = match *self {
            StageFit::Constant { n_epoch, lr } => single(n_epoch, HyperSchedule::Constant { lr }),
            StageFit::OneCycle { n_epoch, cycle } => {
                single(n_epoch, HyperSchedule::OneCycle(cycle))
            }
            StageFit::FlatCos { n_epoch, flat_cos } => {
                single(n_epoch, HyperSchedule::FlatCos(flat_cos))
            }
            StageFit::FineTune(fine_tune) => fine_tune
                .plan()
                .into_iter()
                .map(|phase| {
                    (phase.n_epoch, phase.optimizer_state, HyperSchedule::OneCycle(phase.schedule))
                })
                .collect(),
        };
        fits.into_iter()
            .map(|(n_epoch, optimizer_state, schedule)| {
                schedule.validate()?;
                Ok(PlannedFit {
                    n_epoch,
                    optimizer_state,
                    callbacks: vec![Box::new(ParamScheduler::new(schedule))],
                })
            })
            .collect()
    }
}

/// One stage of a plan: a recipe, optionally on new data, optionally from a fresh optimizer
/// state.
pub struct Stage<'a> {
    fit: StageFit,
    data: Option<DataFactory<'a>>,
    reset_optimizer: bool,
}

impl std::fmt::Debug for Stage<'_> {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("Stage")
            .field("fit", &self.fit)
            .field("data", &self.data.is_some())
            .field("reset_optimizer", &self.reset_optimizer)
            .finish()
    }
}

impl<'a> Stage<'a> {
    /// A stage running `fit` on the data the Learner has when it starts.
    pub fn new(fit: StageFit) -> Self {
        Stage { fit, data: None, reset_optimizer: false }
    }

    /// The stage trains and validates on the sources `data` builds (fastai's `learn.dls = ...`
    /// before the stage's recipe). `data` is called once, when the stage starts or a resume
    /// continues inside it, and never for a stage a resume skips.
    pub fn with_data(
        mut self,
        data: impl FnOnce() -> Result<StageData, Box<dyn std::error::Error + Send + Sync>> + 'a,
    ) -> Self {
        self.data = Some(Box::new(data));
        self
    }

    /// The stage starts from a fresh optimizer state (moving averages and step counts cleared,
    /// hyper-parameters kept), as if a new optimizer had been made for it; by default the state
    /// carries over from the stage before, as it does between two recipe calls in fastai
    /// (`fine_tune` clears it anyway).
    pub fn with_optimizer_reset(mut self) -> Self {
        self.reset_optimizer = true;
        self
    }

    /// What the stage trains.
    pub fn fit(&self) -> &StageFit {
        &self.fit
    }
}

/// Where a plan's stages start in the flattened fit index: `ranges[i]` holds stage `i`'s fits.
pub fn stage_fit_ranges(stages: &[StageFit]) -> Vec<std::ops::Range<usize>> {
    let mut start = 0;
    stages
        .iter()
        .map(|fit| {
            let range = start..start + fit.n_fits();
            start = range.end;
            range
        })
        .collect()
}

impl<M: ModuleT + ModelState> Learner<M> {
    /// Runs a plan of stages in order: each stage's data (if it brings any), then its fits,
    /// applying each fit's optimizer-state action first (see the module docs). A pending resume
    /// ([`Learner::resume`]) skips the fits already done, calling the data factory of a skipped
    /// stage only if a later stage without data of its own trains on it, and continues inside
    /// the fit it was taken in, after checking that fit's epochs and batches per epoch. Stops
    /// early only when interrupted ([`FitOutcome::Interrupted`], `at` in the flattened fit
    /// index).
    ///
    /// # Errors
    /// An invalid schedule (before anything runs); [`TrainError::ResumeMismatch`] when the
    /// pending resume does not fit the plan; [`TrainError::StageData`] when a data factory
    /// fails; any error of a fit.
    pub fn fit_stages(&mut self, stages: Vec<Stage<'_>>) -> Result<FitOutcome, TrainError> {
        let plans = stages
            .iter()
            .map(|stage| stage.fit.planned_fits())
            .collect::<Result<Vec<_>, TrainError>>()?;
        let n_fits: usize = plans.iter().map(Vec::len).sum();
        let resume = self.take_pending_resume();
        let first_fit = resume.map_or(0, |r| r.position.fit_index);
        if first_fit > n_fits {
            return Err(TrainError::ResumeMismatch {
                what: "fit index",
                checkpoint: first_fit.to_string(),
                current: format!("a recipe of {n_fits} fits"),
            });
        }
        let fits: Vec<StageFit> = stages.iter().map(|stage| stage.fit).collect();
        let ranges = stage_fit_ranges(&fits);
        let mut outcome = FitOutcome::Completed;
        // The data of the last skipped stage that brought some: what a following stage without
        // data of its own trains on.
        let mut skipped_data: Option<(usize, DataFactory<'_>)> = None;
        for (stage_index, ((stage, fits), range)) in
            stages.into_iter().zip(plans).zip(ranges).enumerate()
        {
            let (stage_first_fit, stage_end) = (range.start, range.end);
            if stage_end <= first_fit {
                if let Some(data) = stage.data {
                    skipped_data = Some((stage_index, data));
                }
                continue;
            }
            // A resume that continues inside this stage rather than at its very start.
            let resume_inside = resume.filter(|r| {
                (stage_first_fit..stage_end).contains(&r.position.fit_index)
                    && !(r.position.fit_index == stage_first_fit && r.position.is_fit_start())
            });
            match (stage.data, skipped_data.take()) {
                (Some(data), _) => {
                    let (train, valid) = data()
                        .map_err(|source| TrainError::StageData { stage: stage_index, source })?;
                    // New data counts its epochs from 0; a resume inside the stage continues
                    // the count it saved.
                    let data_epoch = resume_inside.map_or(0, |r| r.position.data_epoch);
                    self.set_data(train, valid, data_epoch);
                }
                (None, Some((skipped, data))) => {
                    let (train, valid) = data()
                        .map_err(|source| TrainError::StageData { stage: skipped, source })?;
                    // Only a resume skips stages: it saved the data epoch to continue from.
                    let data_epoch = resume.map_or(0, |r| r.position.data_epoch);
                    self.set_data(train, valid, data_epoch);
                }
                (None, None) => {}
            }
            if stage.reset_optimizer && resume_inside.is_none() {
                self.optimizer_mut().reset_state();
            }
            self.set_stage(StageInfo { index: stage_index, first_fit: stage_first_fit });
            for (fit_index, fit) in (stage_first_fit..).zip(fits) {
                if fit_index < first_fit {
                    continue;
                }
                outcome = self.run_fit(fit_index, fit, resume)?;
                if matches!(outcome, FitOutcome::Interrupted { .. }) {
                    self.set_stage(StageInfo::default());
                    return Ok(outcome);
                }
            }
        }
        self.set_stage(StageInfo::default());
        Ok(outcome)
    }

    /// One fit of a plan: resumed inside if `resume` was taken in it (after checking its shape),
    /// otherwise after its optimizer-state action.
    fn run_fit(
        &mut self,
        fit_index: usize,
        fit: PlannedFit,
        resume: Option<PendingResume>,
    ) -> Result<FitOutcome, TrainError> {
        let resume_here =
            resume.filter(|r| r.position.fit_index == fit_index && !r.position.is_fit_start());
        if let Some(resume) = resume_here {
            check_resume_shape("epochs in the fit", resume.n_epoch, fit.n_epoch)?;
            check_resume_shape(
                "training batches per epoch",
                resume.n_train_batches,
                self.train_batches(),
            )?;
        } else if fit.optimizer_state == OptimizerStateAction::Reset {
            self.optimizer_mut().reset_state();
        }
        self.fit_once(fit_index, fit, resume_here.map(|r| r.position), FitKind::Training)
    }
}
