//! What the user sees while training: an indicatif progress bar per epoch phase (with ETA and
//! the running smoothed loss) on stderr, and fastai's epoch table on stdout, one row as each
//! epoch ends. A read-only observer callback of the Learner.

use indicatif::{ProgressBar, ProgressStyle};
use wick_train::{Callback, CallbackResult, Event, EventContext, FitKind, Flow, Phase};

/// Draws bars and prints the epoch table.
pub(crate) struct Progress {
    bar: Option<ProgressBar>,
    printed_rows: usize,
    /// Each stage's title, printed before its first table.
    titles: Vec<String>,
    /// The stage whose title was printed last.
    titled: Option<usize>,
}

impl Progress {
    /// One title, for a single recipe (stage 0).
    pub(crate) fn new(title: String) -> Self {
        Self::stages(vec![title])
    }

    /// A title per stage of a plan of stages.
    pub(crate) fn stages(titles: Vec<String>) -> Self {
        Progress { bar: None, printed_rows: 0, titles, titled: None }
    }
}

fn style() -> ProgressStyle {
    ProgressStyle::with_template(
        "{prefix:>5} [{bar:30}] {pos}/{len} {elapsed_precise}<{eta_precise} {msg}",
    )
    .unwrap_or_else(|_| ProgressStyle::default_bar())
    .progress_chars("=> ")
}

impl Callback for Progress {
    fn name(&self) -> &'static str {
        "progress"
    }

    fn order(&self) -> i32 {
        95
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        let state = context.state;
        match event {
            Event::BeforeFit => {
                if self.titled != Some(state.stage) {
                    if let Some(title) = self.titles.get(state.stage) {
                        println!("{title}");
                    }
                    self.titled = Some(state.stage);
                }
                self.printed_rows = 0;
            }
            Event::BeforeTrain | Event::BeforeValidate => {
                let bar = ProgressBar::new(state.n_iter as u64).with_style(style());
                bar.set_prefix(if state.phase == Phase::Train { "train" } else { "valid" });
                if state.kind == FitKind::Training {
                    bar.set_position(state.iter as u64);
                }
                self.bar = Some(bar);
            }
            Event::AfterBatch => {
                if let Some(bar) = &self.bar {
                    bar.inc(1);
                    if state.phase == Phase::Train
                        && let Some(loss) = state.smooth_loss
                    {
                        bar.set_message(format!("loss {loss:.4}"));
                    }
                }
            }
            Event::AfterTrain | Event::AfterValidate | Event::AfterFit => {
                if let Some(bar) = self.bar.take() {
                    bar.finish_and_clear();
                }
            }
            Event::AfterEpoch if state.kind == FitKind::Training => {
                if let Some(table) = context.recorder.epoch_table(state.fit_index) {
                    let lines: Vec<&str> = table.lines().collect();
                    // Line 0 is the header; print it with the first row.
                    let start = if self.printed_rows == 0 { 0 } else { self.printed_rows + 1 };
                    for line in lines.iter().skip(start) {
                        println!("{line}");
                    }
                    self.printed_rows = lines.len().saturating_sub(1);
                }
            }
            _ => {}
        }
        Ok(Flow::Continue)
    }
}
