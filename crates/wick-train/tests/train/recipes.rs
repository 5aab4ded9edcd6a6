//! The recipes through the real loop, against fastai's own `ParamScheduler` / `LRFinder` runs in
//! `schedule.safetensors` (make_fixtures.py): the lr/mom every training batch was given, Adam's
//! step counts through `fine_tune`'s two resets, and lr_find's ramp; plus lr_find putting the
//! weights, the optimizer state and the history back exactly.

use wick_train::{
    Callback, CallbackResult, CheckpointConfig, CheckpointSaver, DivergenceRule, Event,
    EventContext, FineTune, FlatCos, Flow, LrFindConfig, LrFinderSchedule, Phase, RunFiles, order,
};

use crate::common::{EXACT, F64_ULPS, fixture, fixture_values, scalar};
use crate::tiny::{bright_dark_batches, tiny_learner, var_values};
use wick_testing::assert_close;

/// Records Adam's step count of one parameter after every training batch (what make_fixtures.py's
/// `HyperRecorder.after_batch` reads: `opt.state[first_param]['step']`).
struct StepCounter {
    param: &'static str,
    steps: std::rc::Rc<std::cell::RefCell<Vec<f64>>>,
}

impl Callback for StepCounter {
    fn name(&self) -> &'static str {
        "step_counter"
    }

    fn order(&self) -> i32 {
        order::SCHEDULER + 1
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        if event == Event::AfterBatch && context.state.phase == Phase::Train {
            let state = context.optimizer.state_dict()?;
            let key = format!("state.{}.step", self.param);
            self.steps.borrow_mut().push(state.get(&key).map_or(0.0, scalar));
        }
        Ok(Flow::Continue)
    }
}

#[test]
fn fine_tune_matches_fastai_schedule_and_resets() {
    // make_fixtures.py: tiny_learner(7).fine_tune(5, 1e-3), 7 batches per epoch: one frozen
    // epoch (lr_max 1e-3, pct_start 0.99), then 5 epochs (lr_max 5e-4, div 5, pct_start 0.3),
    // each after freeze()/unfreeze() cleared the Adam state.
    let fx = fixture("schedule.safetensors");
    let mut learner = tiny_learner(bright_dark_batches(7, 4, 1), bright_dark_batches(1, 4, 2), 0);
    let steps = std::rc::Rc::default();
    learner.add_callback(Box::new(StepCounter {
        param: "conv.weight",
        steps: std::rc::Rc::clone(&steps),
    }));
    learner.fine_tune(FineTune::fastai_defaults(5, 1e-3)).unwrap();

    let fits = learner.recorder().fits();
    assert_eq!(fits.len(), 2, "two fits, two tables");
    assert_eq!((fits[0].epochs.len(), fits[1].epochs.len()), (1, 5));
    let lrs: Vec<f64> = fits.iter().flat_map(|f| f.batches.iter().map(|b| b.lr)).collect();
    let moms: Vec<f64> = fits.iter().flat_map(|f| f.batches.iter().map(|b| b.mom)).collect();
    // HyperRecorder.before_batch: opt.hypers[-1]['lr'] / ['mom'].
    assert_close("fine_tune lr", &lrs, fixture_values(&fx, "fine_tune.lr"), F64_ULPS);
    assert_close("fine_tune mom", &moms, fixture_values(&fx, "fine_tune.mom"), F64_ULPS);
    // HyperRecorder.after_batch: opt.state[p]['step'], 1..7 then 1..35 (the reset).
    assert_close(
        "fine_tune adam step",
        steps.borrow().as_slice(),
        fixture_values(&fx, "fine_tune.adam_step"),
        EXACT,
    );
    let table = learner.recorder().epoch_table(1).unwrap();
    assert_eq!(table.lines().count(), 6, "{table}");
}

#[test]
fn fit_flat_cos_matches_fastai_schedule() {
    // make_fixtures.py: tiny_learner(9).fit_flat_cos(2, 1e-2); mom is not scheduled and stays at
    // Adam's 0.9.
    let fx = fixture("schedule.safetensors");
    let mut learner = tiny_learner(bright_dark_batches(9, 4, 1), bright_dark_batches(1, 4, 2), 0);
    learner.fit_flat_cos(2, FlatCos::fastai_defaults(1e-2)).unwrap();
    let batches = &learner.recorder().fits()[0].batches;
    let lrs: Vec<f64> = batches.iter().map(|b| b.lr).collect();
    let moms: Vec<f64> = batches.iter().map(|b| b.mom).collect();
    assert_close("flat_cos lr", &lrs, fixture_values(&fx, "flat_cos.lr"), F64_ULPS);
    assert_close("flat_cos mom", &moms, fixture_values(&fx, "flat_cos.mom"), EXACT);
}

#[test]
fn lr_find_ramp_matches_fastai() {
    // make_fixtures.py: tiny_learner(30).lr_find(num_it=100, stop_div=False): 100 batches over
    // 100 // 30 + 1 = 4 epochs, lr = 1e-7·(1e8)^(i/100), recorder.lrs.
    let fx = fixture("schedule.safetensors");
    let mut learner = tiny_learner(bright_dark_batches(30, 4, 1), bright_dark_batches(1, 4, 2), 0);
    let config = LrFindConfig {
        schedule: LrFinderSchedule { num_it: 100, ..LrFinderSchedule::fastai_defaults() },
        divergence: DivergenceRule::RunAll,
    };
    let result = learner.lr_find(config).unwrap();
    assert_close("lr_find lr", &result.lrs, fixture_values(&fx, "lr_find.lr"), F64_ULPS);
    assert_eq!(result.losses.len(), 100);
    assert!(result.losses.iter().all(|l| l.is_finite()));
    assert!(!result.interrupted);
}

#[test]
fn lr_find_restores_weights_optimizer_state_and_history() {
    let dir = tempfile::tempdir().unwrap();
    let checkpoint = dir.path().join("checkpoint.safetensors");
    let mut learner = tiny_learner(bright_dark_batches(4, 4, 1), bright_dark_batches(1, 4, 2), 0);
    // One epoch first, so that Adam has moving averages and step counts to lose.
    learner.fit(1, 1e-3).unwrap();
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: checkpoint.clone(),
        every_n_batches: 1,
    })));
    learner.add_callback(Box::new(RunFiles::new(dir.path())));
    let weights = var_values(learner.varmap());
    let state = learner.optimizer().state_dict().unwrap();
    let history = learner.recorder().fits().to_vec();
    let smooth = learner.recorder().smooth_loss();

    let config = LrFindConfig {
        schedule: LrFinderSchedule { num_it: 20, ..LrFinderSchedule::fastai_defaults() },
        divergence: DivergenceRule::RunAll,
    };
    let result = learner.lr_find(config).unwrap();
    // fastai LRFinder: lr of batch i = 1e-7·(10/1e-7)^(i/20), 20 batches over 20 // 4 + 1 epochs.
    assert_eq!(result.lrs.len(), 20);
    for (i, &lr) in result.lrs.iter().enumerate() {
        assert_eq!(lr, config.schedule.lr(i), "batch {i}");
    }
    assert!(result.valley().is_ok(), "{:?}", result.valley());

    // Bit for bit: every variable (weights and BatchNorm statistics), every optimizer tensor.
    assert_eq!(var_values(learner.varmap()), weights);
    let restored = learner.optimizer().state_dict().unwrap();
    assert_eq!(restored.len(), state.len());
    for (key, tensor) in &state {
        let before: Vec<f64> =
            tensor.flatten_all().unwrap().to_dtype(candle::DType::F64).unwrap().to_vec1().unwrap();
        let after: Vec<f64> = restored[key]
            .flatten_all()
            .unwrap()
            .to_dtype(candle::DType::F64)
            .unwrap()
            .to_vec1()
            .unwrap();
        assert_eq!(before, after, "{key}");
    }
    assert_eq!(learner.recorder().fits(), history.as_slice());
    assert_eq!(learner.recorder().smooth_loss(), smooth);
    // Checkpoints and run files are not written during the mock fit.
    assert!(!checkpoint.exists());
    assert!(!dir.path().join(RunFiles::METRICS).exists());
}
