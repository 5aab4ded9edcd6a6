//! The pure part of fastai's learning-rate finder (`callback/schedule.py`, spec §4): when to stop
//! the mock training ([`LrFindStopper`]), how the recorded curve is trimmed ([`LrFindCurve`]), and
//! the four suggestion rules [`valley`] (fastai's default), [`minimum`], [`steep`] and [`slide`].
//!
//! The lr ramp itself is [`crate::schedule::LrFinderSchedule`]; running the batches, saving and
//! restoring the weights and optimizer state belong to the Learner.
//!
//! Exactness: fastai turns the recorded lrs and smoothed losses into float32 torch tensors before
//! suggesting (its `tensor()` casts float64 down), and `slide` works on float32 numpy arrays; the
//! comparisons and slopes below are therefore made in f32, and each suggestion is the f32 lr
//! widened to f64 (then divided by 10 for `minimum`), as fastai returns it.

/// Why no suggestion can be made.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum LrFindError {
    /// The recorded lrs and losses differ in length.
    #[error("lr_find: {n_lrs} lrs but {n_losses} losses recorded")]
    LengthMismatch {
        /// Number of lrs.
        n_lrs: usize,
        /// Number of losses.
        n_losses: usize,
    },
    /// After trimming there are too few points for this rule (fastai raises an IndexError).
    #[error("lr_find: {rule} needs at least {needed} points after trimming, got {got}")]
    TooFewPoints {
        /// The suggestion rule.
        rule: &'static str,
        /// Points it needs.
        needed: usize,
        /// Points available.
        got: usize,
    },
}

/// What the finder does after a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LrFindControl {
    /// Run the next batch.
    Continue,
    /// Stop the mock training (fastai raises `CancelFitException`).
    Stop,
}

/// Whether a smoothed loss far above the best seen so far stops the search (fastai `stop_div`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DivergenceRule {
    /// Stop once the smoothed loss exceeds 4× the best (fastai's default).
    StopAtFourTimesBest,
    /// Run all `num_it` batches.
    RunAll,
}

/// fastai `LRFinder.after_batch`'s stopping rule, fed the smoothed loss after each batch.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindStopper {
    best_loss: f32,
    num_it: usize,
    divergence: DivergenceRule,
}

impl LrFindStopper {
    /// A stopper for `num_it` batches (raised to at least 6, as fastai does).
    pub fn new(num_it: usize, divergence: DivergenceRule) -> Self {
        Self { best_loss: f32::INFINITY, num_it: num_it.max(6), divergence }
    }

    /// Call after each training batch with the smoothed loss and the number of batches done
    /// (`train_iter` already incremented). A NaN loss neither improves nor diverges, as in fastai.
    pub fn after_batch(&mut self, smooth_loss: f32, train_iter: usize) -> LrFindControl {
        if smooth_loss < self.best_loss {
            self.best_loss = smooth_loss;
        }
        let diverged = smooth_loss > 4.0 * self.best_loss;
        if (diverged && self.divergence == DivergenceRule::StopAtFourTimesBest)
            || train_iter >= self.num_it
        {
            LrFindControl::Stop
        } else {
            LrFindControl::Continue
        }
    }

    /// The best smoothed loss so far.
    pub fn best_loss(&self) -> f32 {
        self.best_loss
    }
}

/// The recorded curve as fastai's suggestion rules see it: points `num_it//10 .. len−5` of what was
/// recorded (Python slice semantics), cut at the first NaN loss, in f32.
#[derive(Debug, Clone, PartialEq)]
pub struct LrFindCurve {
    lrs: Vec<f32>,
    losses: Vec<f32>,
}

impl LrFindCurve {
    /// Trims the per-batch lrs and smoothed losses recorded during a search of `num_it` batches
    /// (the `num_it` the caller asked for).
    pub fn from_recorded(lrs: &[f64], losses: &[f32], num_it: usize) -> Result<Self, LrFindError> {
        if lrs.len() != losses.len() {
            return Err(LrFindError::LengthMismatch { n_lrs: lrs.len(), n_losses: losses.len() });
        }
        let end = losses.len().saturating_sub(5);
        let start = (num_it / 10).min(end);
        let kept = &losses[start..end];
        let valid = kept.iter().position(|l| l.is_nan()).unwrap_or(kept.len());
        Ok(Self {
            lrs: lrs[start..start + valid].iter().map(|&lr| lr as f32).collect(),
            losses: kept[..valid].to_vec(),
        })
    }

    /// The trimmed lrs.
    pub fn lrs(&self) -> &[f32] {
        &self.lrs
    }

    /// The trimmed smoothed losses.
    pub fn losses(&self) -> &[f32] {
        &self.losses
    }

    fn require(&self, rule: &'static str, needed: usize) -> Result<(), LrFindError> {
        if self.losses.len() >= needed {
            Ok(())
        } else {
            Err(LrFindError::TooFewPoints { rule, needed, got: self.losses.len() })
        }
    }
}

/// fastai `valley`: an lr about halfway down the longest descent of the curve. With `lds[i]` the
/// length of the longest strictly decreasing subsequence of losses ending at i, the longest such
/// "valley" `[start, end]`, and `sections = (end − start)/3`, the lr at
/// `start + ⌊sections⌋ + ⌊sections/2⌋`.
///
/// Reproduces fastai's loop literally, including two quirks: `start` is set when `end` is first
/// taken and not updated if `lds[end]` grows later in the same pass, and `start` can be −1 (a
/// valley from the very first point), which Python's indexing maps to the last point.
pub fn valley(curve: &LrFindCurve) -> Result<f64, LrFindError> {
    curve.require("valley", 1)?;
    let losses = &curve.losses;
    let n = losses.len();
    let (mut max_start, mut max_end) = (0i64, 0usize);
    let mut lds = vec![1usize; n];
    for i in 1..n {
        for j in 0..i {
            if losses[i] < losses[j] && lds[i] < lds[j] + 1 {
                lds[i] = lds[j] + 1;
            }
            if lds[max_end] < lds[i] {
                max_end = i;
                max_start = max_end as i64 - lds[max_end] as i64;
            }
        }
    }
    let sections = (max_end as i64 - max_start) as f64 / 3.0;
    let index = max_start + sections.trunc() as i64 + (sections / 2.0).trunc() as i64;
    Ok(f64::from(curve.lrs[python_index(index, n)]))
}

/// fastai `minimum`: a tenth of the lr at the lowest loss (its first occurrence).
pub fn minimum(curve: &LrFindCurve) -> Result<f64, LrFindError> {
    curve.require("minimum", 1)?;
    let index = argmin(&curve.losses);
    Ok(f64::from(curve.lrs[index]) / 10.0)
}

/// fastai `steep`: the lr where the loss falls fastest against log(lr), from first differences
/// `(lossᵢ₊₁ − lossᵢ)/(ln lrᵢ₊₁ − ln lrᵢ)`, taking the lr at the left point.
pub fn steep(curve: &LrFindCurve) -> Result<f64, LrFindError> {
    curve.require("steep", 2)?;
    let (lrs, losses) = (&curve.lrs, &curve.losses);
    let slopes: Vec<f32> = (0..losses.len() - 1)
        .map(|i| (losses[i + 1] - losses[i]) / (lrs[i + 1].ln() - lrs[i].ln()))
        .collect();
    Ok(f64::from(lrs[argmin(&slopes)]))
}

/// Parameters of fastai's `slide` rule.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SlideConfig {
    /// Distance, in points, between the two compared gradients.
    pub lr_diff: usize,
    /// Gradients closer than this end the slide.
    pub thresh: f64,
    /// Multiplies the suggestion.
    pub adjust_value: f64,
}

impl SlideConfig {
    /// fastai's defaults: lr_diff 15, thresh 0.005, adjust_value 1.
    pub fn fastai_defaults() -> Self {
        Self { lr_diff: 15, thresh: 0.005, adjust_value: 1.0 }
    }
}

/// fastai `slide`: with `g` the numpy gradient of the losses (central differences inside, one-sided
/// at the ends), start with a right index at the last point and a left index `lr_diff` earlier;
/// while the left index is in range and `|g[right] − g[left]| > thresh`, record the lr at the left
/// index and move both one point left. Returns the last recorded lr × `adjust_value`.
pub fn slide(curve: &LrFindCurve, config: SlideConfig) -> Result<f64, LrFindError> {
    let n = curve.losses.len();
    curve.require("slide", config.lr_diff + 1)?;
    let gradient = numpy_gradient(&curve.losses);
    // numpy 2 compares a float32 value with a Python float in float32.
    let thresh = config.thresh as f32;
    let mut right = n - 1;
    let mut left = n - 1 - config.lr_diff;
    let mut local_min_lr = curve.lrs[left];
    loop {
        if (gradient[right] - gradient[left]).abs() <= thresh
            || (gradient[right] - gradient[left]).is_nan()
        {
            break;
        }
        local_min_lr = curve.lrs[left];
        if left == 0 {
            break;
        }
        right -= 1;
        left -= 1;
    }
    Ok(f64::from(local_min_lr) * config.adjust_value)
}

/// `np.gradient` with unit spacing and `edge_order=1`, in f32 (needs at least 2 points).
fn numpy_gradient(values: &[f32]) -> Vec<f32> {
    let n = values.len();
    (0..n)
        .map(|i| {
            if i == 0 {
                values[1] - values[0]
            } else if i == n - 1 {
                values[n - 1] - values[n - 2]
            } else {
                (values[i + 1] - values[i - 1]) / 2.0
            }
        })
        .collect()
}

/// torch `argmin`: the first minimum; a NaN counts as the minimum (torch propagates NaN).
fn argmin(values: &[f32]) -> usize {
    if let Some(nan_index) = values.iter().position(|v| v.is_nan()) {
        return nan_index;
    }
    let mut best = 0;
    for (i, &value) in values.iter().enumerate() {
        if value < values[best] {
            best = i;
        }
    }
    best
}

/// A Python index (negative counts from the end) into a sequence of length `n`, clamped into it.
fn python_index(index: i64, n: usize) -> usize {
    let n = n as i64;
    let wrapped = if index < 0 { index + n } else { index };
    wrapped.clamp(0, n - 1) as usize
}
