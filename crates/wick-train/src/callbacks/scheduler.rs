//! [`ParamScheduler`] (fastai `ParamScheduler`, order 60): before every training batch, sets the
//! optimizer's lr (and momentum, for one-cycle) from the fit's [`HyperSchedule`] at the current
//! `pct_train`. The schedule arithmetic is `schedule.rs`; this file only applies it.

use crate::callback::{BatchHooks, Callback, CallbackResult, Flow, Phase, order};
use crate::schedule::HyperSchedule;

/// Applies a [`HyperSchedule`] to training batches.
#[derive(Debug, Clone)]
pub struct ParamScheduler {
    schedule: HyperSchedule,
}

impl ParamScheduler {
    /// A scheduler for one fit.
    pub fn new(schedule: HyperSchedule) -> Self {
        ParamScheduler { schedule }
    }
}

impl Callback for ParamScheduler {
    fn name(&self) -> &'static str {
        "param_scheduler"
    }

    fn order(&self) -> i32 {
        order::SCHEDULER
    }

    fn before_batch(&mut self, hooks: &mut BatchHooks<'_>) -> CallbackResult {
        if hooks.state.phase == Phase::Train {
            let pct_train = hooks.state.pct_train;
            hooks.opt.set_lr(self.schedule.lr(pct_train));
            if let Some(mom) = self.schedule.mom(pct_train) {
                hooks.opt.set_mom(mom);
            }
        }
        Ok(Flow::Continue)
    }
}
