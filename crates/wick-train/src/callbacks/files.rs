//! [`RunFiles`] (order 90): after every epoch of a real fit, and when a fit ends, rewrites the
//! run directory's `metrics.jsonl`, `loss.png` and `schedule.png` from the Recorder. An observer:
//! it reads the history and writes files, never the terminal. The content is `output.rs`.

use std::path::{Path, PathBuf};

use crate::callback::{Callback, CallbackResult, Event, EventContext, FitKind, Flow, order};
use crate::output::{write_loss_plot, write_metrics_jsonl, write_schedule_plot};

/// Writes the run's metrics and plots into a directory (which must exist).
#[derive(Debug, Clone)]
pub struct RunFiles {
    dir: PathBuf,
}

impl RunFiles {
    /// File names inside the directory.
    pub const METRICS: &'static str = "metrics.jsonl";
    /// The loss plot.
    pub const LOSS_PLOT: &'static str = "loss.png";
    /// The lr / momentum plot.
    pub const SCHEDULE_PLOT: &'static str = "schedule.png";

    /// A writer into `dir`.
    pub fn new(dir: &Path) -> Self {
        RunFiles { dir: dir.to_path_buf() }
    }
}

impl Callback for RunFiles {
    fn name(&self) -> &'static str {
        "run_files"
    }

    fn order(&self) -> i32 {
        order::FILES
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        if context.state.kind == FitKind::Training
            && matches!(event, Event::AfterEpoch | Event::AfterFit)
        {
            let recorder = context.recorder;
            write_metrics_jsonl(&self.dir.join(Self::METRICS), recorder)?;
            write_loss_plot(&self.dir.join(Self::LOSS_PLOT), recorder)?;
            write_schedule_plot(&self.dir.join(Self::SCHEDULE_PLOT), recorder)?;
        }
        Ok(Flow::Continue)
    }
}
