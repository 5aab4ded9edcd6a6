//! [`RunFiles`] (order 90): after every epoch of a real fit, and when a fit ends, rewrites a run
//! directory's `metrics.jsonl`, `loss.png` and `schedule.png` from the Recorder: either of the
//! whole history ([`RunFiles::new`]), or of each stage of a plan of stages into the stage's own
//! folder ([`RunFiles::per_stage`]). An observer: it reads the history and writes files, never
//! the terminal. The content is `output.rs`.

use std::path::{Path, PathBuf};

use crate::callback::{Callback, CallbackResult, Event, EventContext, FitKind, Flow, order};
use crate::error::TrainError;
use crate::output::{write_loss_plot, write_metrics_jsonl, write_schedule_plot};
use crate::recorder::Recorder;

/// Which history goes where.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Layout {
    /// Every fit into one directory.
    Whole,
    /// Stage `i`'s fits into `<dir>/stage-<i>/`.
    PerStage,
}

/// Writes the run's metrics and plots into a directory.
#[derive(Debug, Clone)]
pub struct RunFiles {
    dir: PathBuf,
    layout: Layout,
}

impl RunFiles {
    /// File names inside the directory.
    pub const METRICS: &'static str = "metrics.jsonl";
    /// The loss plot.
    pub const LOSS_PLOT: &'static str = "loss.png";
    /// The lr / momentum plot.
    pub const SCHEDULE_PLOT: &'static str = "schedule.png";

    /// A writer of the whole history into `dir` (which must exist).
    pub fn new(dir: &Path) -> Self {
        RunFiles { dir: dir.to_path_buf(), layout: Layout::Whole }
    }

    /// A writer of each stage's history (its fits only, numbered from 0 as if the stage had
    /// been a Learner of its own) into [`RunFiles::stage_dir`]`(dir, stage)`, created when
    /// needed. A single recipe is stage 0.
    pub fn per_stage(dir: &Path) -> Self {
        RunFiles { dir: dir.to_path_buf(), layout: Layout::PerStage }
    }

    /// The folder of stage `stage` under `dir`: `<dir>/stage-<stage>`.
    pub fn stage_dir(dir: &Path, stage: usize) -> PathBuf {
        dir.join(format!("stage-{stage}"))
    }
}

fn write_files(dir: &Path, recorder: &Recorder) -> Result<(), TrainError> {
    write_metrics_jsonl(&dir.join(RunFiles::METRICS), recorder)?;
    write_loss_plot(&dir.join(RunFiles::LOSS_PLOT), recorder)?;
    write_schedule_plot(&dir.join(RunFiles::SCHEDULE_PLOT), recorder)
}

impl Callback for RunFiles {
    fn name(&self) -> &'static str {
        "run_files"
    }

    fn order(&self) -> i32 {
        order::FILES
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        let state = context.state;
        if state.kind != FitKind::Training || !matches!(event, Event::AfterEpoch | Event::AfterFit)
        {
            return Ok(Flow::Continue);
        }
        match self.layout {
            Layout::Whole => write_files(&self.dir, context.recorder)?,
            Layout::PerStage => {
                let dir = Self::stage_dir(&self.dir, state.stage);
                std::fs::create_dir_all(&dir)
                    .map_err(|e| TrainError::Output { path: dir.clone(), reason: e.to_string() })?;
                // The current fit is the Recorder's last; the stage's earlier fits precede it.
                let n_fits = context.recorder.fits().len();
                let in_stage = state.fit_index.saturating_sub(state.stage_first_fit) + 1;
                let stage_fits = n_fits.saturating_sub(in_stage)..n_fits;
                write_files(&dir, &context.recorder.slice(stage_fits))?;
            }
        }
        Ok(Flow::Continue)
    }
}
