//! [`LrFinder`] (fastai `LRFinder`, order 60): during lr_find's mock fit, sets the exponential lr
//! ramp before each training batch, stops the fit with the [`LrFindStopper`] rule after each one
//! (the Recorder, order 50, has already updated the smoothed loss), and skips validation.
//! Saving and restoring the weights is `recipes.rs`'s job.

use crate::callback::{
    BatchHooks, Callback, CallbackResult, Event, EventContext, Flow, Phase, order,
};
use crate::lr_find::{DivergenceRule, LrFindControl, LrFindStopper};
use crate::schedule::LrFinderSchedule;

/// The lr finder's ramp and stop rule.
#[derive(Debug, Clone)]
pub struct LrFinder {
    schedule: LrFinderSchedule,
    stopper: LrFindStopper,
}

impl LrFinder {
    /// A finder over `schedule`, stopping early on divergence according to `divergence`.
    pub fn new(schedule: LrFinderSchedule, divergence: DivergenceRule) -> Self {
        LrFinder { schedule, stopper: LrFindStopper::new(schedule.num_it, divergence) }
    }
}

impl Callback for LrFinder {
    fn name(&self) -> &'static str {
        "lr_finder"
    }

    fn order(&self) -> i32 {
        order::SCHEDULER
    }

    fn before_batch(&mut self, hooks: &mut BatchHooks<'_>) -> CallbackResult {
        if hooks.state.phase == Phase::Train {
            hooks.opt.set_lr(self.schedule.lr(hooks.state.train_iter));
        }
        Ok(Flow::Continue)
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        let state = context.state;
        match event {
            Event::BeforeValidate => Ok(Flow::SkipValidate),
            Event::AfterBatch if state.phase == Phase::Train => {
                let Some(smooth_loss) = state.smooth_loss else { return Ok(Flow::Continue) };
                Ok(match self.stopper.after_batch(smooth_loss, state.train_iter) {
                    LrFindControl::Stop => Flow::StopFit,
                    LrFindControl::Continue => Flow::Continue,
                })
            }
            _ => Ok(Flow::Continue),
        }
    }
}
