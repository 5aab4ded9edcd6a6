//! Hyper-parameter schedules as pure functions of the training position (fastai
//! `callback/schedule.py`): the four annealers, `combine_scheds`, one-cycle, flat-cos, the lr
//! finder's exponential ramp, the `fine_tune` plan, and the position bookkeeping of fastai's
//! `TrainEvalCallback` that feeds them.
//!
//! This file owns the arithmetic only. Applying a value to an optimizer before each training batch
//! (fastai's `ParamScheduler`) belongs to the Learner's scheduler callback. No candle types here.
//!
//! Exactness: fastai keeps the phase boundaries of `combine_scheds` in a float32 torch tensor, so
//! the phase choice and the position inside a phase are computed in float32; the annealers then run
//! in float64. We do the same, so every value equals fastai's to the last bit (up to `libm`).

use std::f64::consts::PI;

/// A schedule description that cannot be evaluated.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ScheduleError {
    /// `combine_scheds` got a different number of percentages and schedules.
    #[error("combine_scheds: {n_pcts} percentages but {n_scheds} schedules")]
    LengthMismatch {
        /// Number of percentages given.
        n_pcts: usize,
        /// Number of schedules given.
        n_scheds: usize,
    },
    /// `combine_scheds` got no schedule at all.
    #[error("combine_scheds: no schedule given")]
    Empty,
    /// A phase percentage is negative (or NaN).
    #[error("combine_scheds: percentage {index} is {pct}, must be >= 0")]
    NegativePct {
        /// Index of the offending percentage.
        index: usize,
        /// Its value.
        pct: f64,
    },
    /// The percentages do not add up to 1.
    #[error("combine_scheds: percentages sum to {sum}, must sum to 1")]
    PctsDoNotSumToOne {
        /// Their sum.
        sum: f64,
    },
    /// A one-cycle / flat-cos parameter is outside its domain.
    #[error("{schedule}: {field} is {value}, {requirement}")]
    InvalidParameter {
        /// The schedule being checked (`"one_cycle"`, `"flat_cos"`, …).
        schedule: &'static str,
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: f64,
        /// What it must satisfy.
        requirement: &'static str,
    },
}

/// fastai `sched_lin`: linear from `start` (pos 0) to `end` (pos 1).
pub fn sched_lin(start: f64, end: f64, pos: f64) -> f64 {
    start + pos * (end - start)
}

/// fastai `sched_cos`: half-cosine from `start` (pos 0) to `end` (pos 1), written exactly as
/// fastai writes it, `start + (1 + cos(π(1 − pos)))·(end − start)/2`.
pub fn sched_cos(start: f64, end: f64, pos: f64) -> f64 {
    start + (1.0 + (PI * (1.0 - pos)).cos()) * (end - start) / 2.0
}

/// fastai `sched_no`: constant `start`.
pub fn sched_no(start: f64, _end: f64, _pos: f64) -> f64 {
    start
}

/// fastai `sched_exp`: exponential from `start` to `end`, `start·(end/start)^pos`.
pub fn sched_exp(start: f64, end: f64, pos: f64) -> f64 {
    start * (end / start).powf(pos)
}

/// Which annealer a [`Schedule`] uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Annealer {
    /// [`sched_lin`].
    Linear,
    /// [`sched_cos`].
    Cosine,
    /// [`sched_no`].
    Constant,
    /// [`sched_exp`].
    Exponential,
}

/// One annealer bound to its endpoints (fastai `SchedLin(start, end)` etc.).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Schedule {
    /// The annealing curve.
    pub annealer: Annealer,
    /// Value at pos 0.
    pub start: f64,
    /// Value at pos 1.
    pub end: f64,
}

impl Schedule {
    /// fastai `SchedCos(start, end)`.
    pub fn cos(start: f64, end: f64) -> Self {
        Self { annealer: Annealer::Cosine, start, end }
    }

    /// fastai `SchedLin(start, end)`.
    pub fn lin(start: f64, end: f64) -> Self {
        Self { annealer: Annealer::Linear, start, end }
    }

    /// fastai `SchedNo(value, value)`.
    pub fn constant(value: f64) -> Self {
        Self { annealer: Annealer::Constant, start: value, end: value }
    }

    /// fastai `SchedExp(start, end)`.
    pub fn exp(start: f64, end: f64) -> Self {
        Self { annealer: Annealer::Exponential, start, end }
    }

    /// The value at `pos` in [0, 1].
    pub fn at(&self, pos: f64) -> f64 {
        match self.annealer {
            Annealer::Linear => sched_lin(self.start, self.end, pos),
            Annealer::Cosine => sched_cos(self.start, self.end, pos),
            Annealer::Constant => sched_no(self.start, self.end, pos),
            Annealer::Exponential => sched_exp(self.start, self.end, pos),
        }
    }
}

/// Schedules run one after the other over fractions of training (fastai `combine_scheds`).
#[derive(Debug, Clone, PartialEq)]
pub struct CombinedSchedule {
    /// Cumulative phase boundaries `[0, p0, p0+p1, …]`, float32 as in fastai's torch tensor.
    bounds: Vec<f32>,
    pieces: Vec<Schedule>,
}

impl CombinedSchedule {
    /// The value at training position `pos` in [0, 1].
    ///
    /// Like fastai: the phase is the last one whose start is `<= pos` (compared in float32), capped
    /// at the last phase, and the position inside it is `(pos − start)/(end − start)` in float32.
    /// A `pos` below 0 (where fastai raises) uses the first phase.
    pub fn at(&self, pos: f64) -> f64 {
        let pos32 = pos as f32;
        let last_phase = self.pieces.len() - 1;
        let phase =
            self.bounds.iter().rposition(|&bound| pos32 >= bound).unwrap_or(0).min(last_phase);
        let phase_start = self.bounds[phase];
        let phase_pos = (pos32 - phase_start) / (self.bounds[phase + 1] - phase_start);
        self.pieces[phase].at(f64::from(phase_pos))
    }
}

/// fastai `combine_scheds(pcts, scheds)`: `scheds[i]` runs over the fraction `pcts[i]` of training.
///
/// fastai asserts `sum(pcts) == 1.` exactly; we accept a sum within 1e-9 of 1 (a sum such as
/// 0.1 + 0.2 + 0.7 = 1.0000000000000002 would fail fastai's assert).
pub fn combine_scheds(
    pcts: &[f64],
    scheds: &[Schedule],
) -> Result<CombinedSchedule, ScheduleError> {
    if pcts.len() != scheds.len() {
        return Err(ScheduleError::LengthMismatch { n_pcts: pcts.len(), n_scheds: scheds.len() });
    }
    if scheds.is_empty() {
        return Err(ScheduleError::Empty);
    }
    if let Some((index, &pct)) = pcts.iter().enumerate().find(|(_, p)| p.is_nan() || **p < 0.0) {
        return Err(ScheduleError::NegativePct { index, pct });
    }
    let sum: f64 = pcts.iter().sum();
    if (sum - 1.0).abs() > 1e-9 {
        return Err(ScheduleError::PctsDoNotSumToOne { sum });
    }
    Ok(combine_unchecked(pcts, scheds))
}

fn combine_unchecked(pcts: &[f64], scheds: &[Schedule]) -> CombinedSchedule {
    // torch.cumsum over the float32 tensor [0, *pcts].
    let mut bounds = Vec::with_capacity(pcts.len() + 1);
    let mut acc = 0.0f32;
    bounds.push(acc);
    for &pct in pcts {
        acc += pct as f32;
        bounds.push(acc);
    }
    CombinedSchedule { bounds, pieces: scheds.to_vec() }
}

/// fastai `combined_cos(pct, start, middle, end)`: cosine `start → middle` over the first `pct`
/// of training, then cosine `middle → end`.
pub fn combined_cos(pct: f64, start: f64, middle: f64, end: f64) -> CombinedSchedule {
    combine_unchecked(
        &[pct, 1.0 - pct],
        &[Schedule::cos(start, middle), Schedule::cos(middle, end)],
    )
}

/// fastai `fit_one_cycle`'s schedules for one parameter group (spec §3.1).
///
/// lr: `lr_max/div → lr_max` over `pct_start`, then `lr_max → lr_max/div_final`, both cosine.
/// mom (Adam β1 / SGD momentum): `moms.0 → moms.1 → moms.2` over the same phases.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCycle {
    /// Peak learning rate.
    pub lr_max: f64,
    /// The cycle starts at `lr_max / div`.
    pub div: f64,
    /// The cycle ends at `lr_max / div_final`.
    pub div_final: f64,
    /// Fraction of training spent warming up.
    pub pct_start: f64,
    /// Momentum at the start, at the peak lr, and at the end (fastai `Learner.moms`).
    pub moms: (f64, f64, f64),
}

impl OneCycle {
    /// `fit_one_cycle(n, lr_max)` with fastai's defaults: div 25, div_final 1e5, pct_start 0.25,
    /// moms (0.95, 0.85, 0.95).
    pub fn fastai_defaults(lr_max: f64) -> Self {
        Self { lr_max, div: 25.0, div_final: 1e5, pct_start: 0.25, moms: FASTAI_MOMS }
    }

    /// Learning rate at training position `pos` ([`fit_positions`]).
    pub fn lr(&self, pos: f64) -> f64 {
        combined_cos(
            self.pct_start,
            self.lr_max / self.div,
            self.lr_max,
            self.lr_max / self.div_final,
        )
        .at(pos)
    }

    /// Momentum (Adam β1) at training position `pos`.
    pub fn mom(&self, pos: f64) -> f64 {
        let (start, middle, end) = self.moms;
        combined_cos(self.pct_start, start, middle, end).at(pos)
    }

    /// Checks the fields a Learner should reject before fitting.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        check_positive("one_cycle", "lr_max", self.lr_max)?;
        check_positive("one_cycle", "div", self.div)?;
        check_positive("one_cycle", "div_final", self.div_final)?;
        check_unit_interval("one_cycle", "pct_start", self.pct_start)
    }
}

/// fastai `Learner`'s default `moms` for one-cycle.
pub const FASTAI_MOMS: (f64, f64, f64) = (0.95, 0.85, 0.95);

/// fastai `fit_flat_cos`'s lr schedule: flat `lr` for `pct_start`, then cosine to `lr/div_final`.
///
/// Momentum is not scheduled: it keeps whatever value the optimizer has.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FlatCos {
    /// The flat learning rate.
    pub lr: f64,
    /// Training ends at `lr / div_final`.
    pub div_final: f64,
    /// Fraction of training at the flat lr.
    pub pct_start: f64,
}

impl FlatCos {
    /// `fit_flat_cos(n, lr)` with fastai's defaults: div_final 1e5, pct_start 0.75.
    pub fn fastai_defaults(lr: f64) -> Self {
        Self { lr, div_final: 1e5, pct_start: 0.75 }
    }

    /// Learning rate at training position `pos`.
    pub fn lr(&self, pos: f64) -> f64 {
        combined_cos(self.pct_start, self.lr, self.lr, self.lr / self.div_final).at(pos)
    }

    /// Checks the fields a Learner should reject before fitting.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        check_positive("flat_cos", "lr", self.lr)?;
        check_positive("flat_cos", "div_final", self.div_final)?;
        check_unit_interval("flat_cos", "pct_start", self.pct_start)
    }
}

/// The lr finder's exponential ramp (fastai `LRFinder`, spec §4).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LrFinderSchedule {
    /// lr of the first batch.
    pub start_lr: f64,
    /// lr that batch `num_it` would use.
    pub end_lr: f64,
    /// Number of batches to run (fastai raises values below 6 to 6).
    pub num_it: usize,
}

impl LrFinderSchedule {
    /// `lr_find()` defaults: 1e-7 → 10 over 100 batches.
    pub fn fastai_defaults() -> Self {
        Self { start_lr: 1e-7, end_lr: 10.0, num_it: 100 }
    }

    /// The number of batches actually run: `num_it`, at least 6 (fastai `LRFinder.__init__`).
    pub fn effective_num_it(&self) -> usize {
        self.num_it.max(6)
    }

    /// lr for the training batch with 0-based index `train_iter`:
    /// `start·(end/start)^(train_iter/num_it)`.
    pub fn lr(&self, train_iter: usize) -> f64 {
        sched_exp(self.start_lr, self.end_lr, train_iter as f64 / self.effective_num_it() as f64)
    }

    /// Epochs `lr_find` asks `fit` for: `num_it // n_batches_per_epoch + 1` (with the caller's
    /// `num_it`, as fastai). The finder stops itself after [`Self::effective_num_it`] batches.
    pub fn n_epoch(&self, n_batches_per_epoch: usize) -> usize {
        self.num_it / n_batches_per_epoch.max(1) + 1
    }
}

/// The hyper-parameter schedule of one fit, as the scheduler callback applies it before each
/// training batch (fastai `fit`, `fit_one_cycle`, `fit_flat_cos`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum HyperSchedule {
    /// fastai `fit(n, lr)`: a constant lr, momentum untouched.
    Constant {
        /// The learning rate.
        lr: f64,
    },
    /// fastai `fit_one_cycle`: lr and momentum.
    OneCycle(OneCycle),
    /// fastai `fit_flat_cos`: lr only.
    FlatCos(FlatCos),
}

impl HyperSchedule {
    /// The learning rate at training position `pct_train`.
    pub fn lr(&self, pct_train: f64) -> f64 {
        match self {
            HyperSchedule::Constant { lr } => *lr,
            HyperSchedule::OneCycle(cycle) => cycle.lr(pct_train),
            HyperSchedule::FlatCos(flat_cos) => flat_cos.lr(pct_train),
        }
    }

    /// The momentum at `pct_train`, or `None` where this schedule leaves it alone.
    pub fn mom(&self, pct_train: f64) -> Option<f64> {
        match self {
            HyperSchedule::OneCycle(cycle) => Some(cycle.mom(pct_train)),
            HyperSchedule::Constant { .. } | HyperSchedule::FlatCos(_) => None,
        }
    }

    /// Checks the parameters a Learner should reject before fitting.
    pub fn validate(&self) -> Result<(), ScheduleError> {
        match self {
            HyperSchedule::Constant { lr } => check_positive("fit", "lr", *lr),
            HyperSchedule::OneCycle(cycle) => cycle.validate(),
            HyperSchedule::FlatCos(flat_cos) => flat_cos.validate(),
        }
    }
}

/// Training positions fed to a schedule, exactly as fastai's `TrainEvalCallback` produces them.
///
/// fastai does not compute `t/T`: it sets `pct_train = epoch/n_epoch` when each epoch's training
/// phase starts and adds `1/(n_iter·n_epoch)` after every training batch, so positions carry the
/// rounding of that accumulation (up to ~1e-12 away from `t/T`). The first batch is at 0, the last
/// at ≈ `(T−1)/T`. Validation batches do not move it.
#[derive(Debug, Clone, PartialEq)]
pub struct TrainPosition {
    n_epoch: usize,
    n_iter: usize,
    pct_train: f64,
    train_iter: usize,
}

impl TrainPosition {
    /// At the start of a fit of `n_epoch` epochs of `n_iter` training batches (`before_fit`).
    pub fn new(n_epoch: usize, n_iter: usize) -> Self {
        Self { n_epoch, n_iter, pct_train: 0.0, train_iter: 0 }
    }

    /// Call when the training phase of `epoch` (0-based) starts (`before_train`).
    pub fn begin_epoch(&mut self, epoch: usize) {
        self.pct_train = epoch as f64 / self.n_epoch as f64;
    }

    /// Call after every training batch (`after_batch` while training).
    pub fn end_batch(&mut self) {
        self.pct_train += 1.0 / (self.n_iter * self.n_epoch) as f64;
        self.train_iter += 1;
    }

    /// The position the next training batch's hyper-parameters are computed at.
    pub fn pct_train(&self) -> f64 {
        self.pct_train
    }

    /// Training batches done since the fit started.
    pub fn train_iter(&self) -> usize {
        self.train_iter
    }
}

/// Every training batch's position for a fit of `n_epoch × n_iter` batches (see
/// [`TrainPosition`]).
pub fn fit_positions(n_epoch: usize, n_iter: usize) -> Vec<f64> {
    let mut position = TrainPosition::new(n_epoch, n_iter);
    let mut positions = Vec::with_capacity(n_epoch * n_iter);
    for epoch in 0..n_epoch {
        position.begin_epoch(epoch);
        for _ in 0..n_iter {
            positions.push(position.pct_train());
            position.end_batch();
        }
    }
    positions
}

/// What to do with the optimizer state (Adam m, v, step counts) before a fit phase starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OptimizerStateAction {
    /// Continue from the current state.
    Keep,
    /// Discard it (fastai's `freeze()`/`unfreeze()` call `opt.clear_state()`).
    Reset,
}

/// One `fit_one_cycle` call of a multi-phase plan.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct OneCyclePhase {
    /// What happens to the optimizer state before this phase.
    pub optimizer_state: OptimizerStateAction,
    /// Epochs in this phase (its own `fit`: positions and the smoothed loss restart).
    pub n_epoch: usize,
    /// The phase's schedules.
    pub schedule: OneCycle,
}

/// fastai `fine_tune(epochs, base_lr, freeze_epochs, lr_mult, pct_start, div)` (spec §3.2–3.3).
///
/// wick trains one parameter group, so `slice(base_lr)` and `slice(base_lr/lr_mult, base_lr)`
/// both collapse to `base_lr` and `freeze()`/`unfreeze()` freeze nothing: their only effect is the
/// optimizer-state reset before each phase. `lr_mult` therefore has no field here.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct FineTune {
    /// Epochs of the unfrozen phase.
    pub epochs: usize,
    /// Peak lr of the frozen phase; the unfrozen phase uses `base_lr / 2`.
    pub base_lr: f64,
    /// Epochs of the frozen phase.
    pub freeze_epochs: usize,
    /// `pct_start` of the unfrozen phase (the frozen phase always uses 0.99).
    pub pct_start: f64,
    /// `div` of the unfrozen phase (the frozen phase uses one-cycle's default 25).
    pub div: f64,
}

impl FineTune {
    /// `fine_tune(epochs, base_lr)` with fastai's defaults: freeze_epochs 1, pct_start 0.3, div 5.
    pub fn fastai_defaults(epochs: usize, base_lr: f64) -> Self {
        Self { epochs, base_lr, freeze_epochs: 1, pct_start: 0.3, div: 5.0 }
    }

    /// The two `fit_one_cycle` calls, in order, each preceded by an optimizer-state reset.
    pub fn plan(&self) -> [OneCyclePhase; 2] {
        let frozen = OneCyclePhase {
            optimizer_state: OptimizerStateAction::Reset,
            n_epoch: self.freeze_epochs,
            schedule: OneCycle { pct_start: 0.99, ..OneCycle::fastai_defaults(self.base_lr) },
        };
        let unfrozen = OneCyclePhase {
            optimizer_state: OptimizerStateAction::Reset,
            n_epoch: self.epochs,
            schedule: OneCycle {
                pct_start: self.pct_start,
                div: self.div,
                ..OneCycle::fastai_defaults(self.base_lr / 2.0)
            },
        };
        [frozen, unfrozen]
    }
}

fn check_positive(
    schedule: &'static str,
    field: &'static str,
    value: f64,
) -> Result<(), ScheduleError> {
    let valid = value > 0.0 && value.is_finite();
    check_parameter(valid, schedule, field, value, "must be finite and > 0")
}

fn check_unit_interval(
    schedule: &'static str,
    field: &'static str,
    value: f64,
) -> Result<(), ScheduleError> {
    check_parameter((0.0..=1.0).contains(&value), schedule, field, value, "must be in [0, 1]")
}

/// `Ok` when `valid`, otherwise [`ScheduleError::InvalidParameter`] with `requirement`.
fn check_parameter(
    valid: bool,
    schedule: &'static str,
    field: &'static str,
    value: f64,
    requirement: &'static str,
) -> Result<(), ScheduleError> {
    if valid {
        Ok(())
    } else {
        Err(ScheduleError::InvalidParameter { schedule, field, value, requirement })
    }
}
