//! Plans of stages (`Learner::fit_stages`): progressive resizing as fastai writes it (a
//! one-cycle stage, then new data and `fine_tune`), the flattened fit index, per-stage run
//! files, data factories called only for the stages that run, and one checkpoint that resumes
//! the plan inside any stage, bit for bit, the model's state outside its `VarMap` included.

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use wick_train::{
    Checkpoint, CheckpointConfig, CheckpointSaver, Event, FineTune, FitOutcome, FitPosition,
    FitRecord, Flow, InMemoryBatches, Learner, MixUp, ModelState, OneCycle, Phase, RunFiles, Stage,
    StageData, StageFit, TrainError, stage_fit_ranges,
};

use crate::tiny::{Probe, TinyCnn, adam, bright_dark_batches, config, tiny_cnn, var_values};

/// A [`TinyCnn`] that counts its training forwards outside its `VarMap`, as xresnet counts
/// BatchNorm's `num_batches_tracked`.
struct Counted {
    net: TinyCnn,
    train_forwards: AtomicU64,
}

impl ModuleT for Counted {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        if train {
            self.train_forwards.fetch_add(1, Ordering::Relaxed);
        }
        self.net.forward_t(xs, train)
    }
}

impl ModelState for Counted {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        let count = self.train_forwards.load(Ordering::Relaxed) as i64;
        Ok(HashMap::from([("forwards".to_string(), Tensor::new(count, &Device::Cpu)?)]))
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        let count = tensors
            .get("forwards")
            .ok_or_else(|| candle::Error::Msg("forwards is missing".into()))?
            .to_dtype(DType::I64)?
            .to_scalar::<i64>()?;
        self.train_forwards.store(count as u64, Ordering::Relaxed);
        Ok(())
    }
}

const RUN_SEED: u64 = 42;

/// A Learner over a [`Counted`] tiny network (initial weights from `init_seed`) with MixUp, on
/// 3 training batches of 4 and 1 validation batch of 4.
fn learner(init_seed: u64) -> Learner<Counted> {
    let varmap = VarMap::new();
    let net = Counted { net: tiny_cnn(&varmap, init_seed, 2), train_forwards: AtomicU64::new(0) };
    let optimizer = adam(&varmap);
    let mut learner = Learner::new(
        net,
        varmap,
        optimizer,
        Box::new(InMemoryBatches::new(bright_dark_batches(3, 4, 1))),
        Box::new(InMemoryBatches::new(bright_dark_batches(1, 4, 2))),
        config(RUN_SEED),
    );
    learner.add_callback(Box::new(MixUp::fastai_default()));
    learner
}

/// `n` training batches of `batch_size` and one validation batch, drawn from `seed`.
fn data(n: usize, batch_size: usize, seed: u64) -> StageData {
    (
        Box::new(InMemoryBatches::new(bright_dark_batches(n, batch_size, seed))),
        Box::new(InMemoryBatches::new(bright_dark_batches(1, batch_size, seed + 100))),
    )
}

/// How often each stage's data factory ran.
type Calls = Rc<[Cell<usize>; 3]>;

/// Three stages: one-cycle (2 epochs) on new data of 3 batches of 4; `fine_tune(2)` on new data
/// of 4 batches of 2 (fits 1 and 2); a constant-lr epoch with no data of its own (fit 3, on
/// stage 1's data). Fits 0..4.
fn plan(calls: &Calls) -> Vec<Stage<'static>> {
    let (first, second) = (Rc::clone(calls), Rc::clone(calls));
    vec![
        Stage::new(StageFit::OneCycle { n_epoch: 2, cycle: OneCycle::fastai_defaults(1e-2) })
            .with_data(move || {
                first[0].set(first[0].get() + 1);
                Ok(data(3, 4, 10))
            }),
        Stage::new(StageFit::FineTune(FineTune::fastai_defaults(2, 1e-3)))
            .with_data(move || {
                second[1].set(second[1].get() + 1);
                Ok(data(4, 2, 20))
            })
            .with_optimizer_reset(),
        Stage::new(StageFit::Constant { n_epoch: 1, lr: 1e-3 }),
    ]
}

/// Where a training epoch starts: (stage, fit index, fit within the stage, data epoch,
/// training batches).
type EpochStart = (usize, usize, usize, u64, usize);

#[test]
fn progressive_resizing_is_two_stages_as_fastai_writes_it() {
    // fastai, chapter 7: `learn.fit_one_cycle(4, 3e-3); learn.dls = get_dls(64, 224);
    // learn.fine_tune(5, 1e-3)`. Here 2 epochs over the Learner's own 3 batches of 4, then new
    // data of 4 batches of 2 and fine_tune(1): its frozen epoch and its one unfrozen epoch both
    // run on the new data, with the same model and Learner.
    let dir = tempfile::tempdir().unwrap();
    let seen: Rc<RefCell<Vec<EpochStart>>> = Rc::default();
    let record = Rc::clone(&seen);
    let mut learner = learner(0);
    learner.add_callback(Box::new(RunFiles::per_stage(dir.path())));
    learner.add_callback(Box::new(Probe::replying(&Rc::default(), move |event, state| {
        if event == Event::BeforeBatch && state.phase == Phase::Train && state.iter == 0 {
            let fit_in_stage = state.fit_index - state.stage_first_fit;
            record.borrow_mut().push((
                state.stage,
                state.fit_index,
                fit_in_stage,
                state.data_epoch,
                state.n_iter,
            ));
            assert_eq!(state.stage_seed(), RUN_SEED + state.stage as u64);
        }
        Ok(Flow::Continue)
    })));
    let stages = vec![
        Stage::new(StageFit::OneCycle { n_epoch: 2, cycle: OneCycle::fastai_defaults(3e-3) }),
        Stage::new(StageFit::FineTune(FineTune::fastai_defaults(1, 1e-3)))
            .with_data(|| Ok(data(4, 2, 7))),
    ];
    let fits: Vec<StageFit> = stages.iter().map(|stage| *stage.fit()).collect();
    assert_eq!(stage_fit_ranges(&fits), [0..1, 1..3]);
    assert_eq!(learner.fit_stages(stages).unwrap(), FitOutcome::Completed);
    // (stage, fit index, fit in stage, data epoch, training batches) at each epoch's start:
    // the new data counts its epochs from 0.
    assert_eq!(
        *seen.borrow(),
        [(0, 0, 0, 0, 3), (0, 0, 0, 1, 3), (1, 1, 0, 0, 4), (1, 2, 1, 1, 4)]
    );
    assert_eq!(learner.recorder().fits().len(), 3);
    assert_eq!(learner.model().train_forwards.load(Ordering::Relaxed), 2 * 3 + 2 * 4);
    // Each stage's files hold its own fits, numbered from 0.
    let fits_in = |stage: usize| -> Vec<String> {
        let path = RunFiles::stage_dir(dir.path(), stage).join(RunFiles::METRICS);
        let text = std::fs::read_to_string(path).unwrap();
        text.lines().map(|line| line.split(',').take(2).collect::<Vec<_>>().join(",")).collect()
    };
    assert_eq!(fits_in(0), ["{\"fit\":0,\"epoch\":0", "{\"fit\":0,\"epoch\":1"]);
    assert_eq!(fits_in(1), ["{\"fit\":0,\"epoch\":0", "{\"fit\":1,\"epoch\":0"]);
    for stage in 0..2 {
        for file in [RunFiles::LOSS_PLOT, RunFiles::SCHEDULE_PLOT] {
            assert!(RunFiles::stage_dir(dir.path(), stage).join(file).is_file(), "{stage} {file}");
        }
    }
}

/// Runs [`plan`] with the interrupt flag raised after training batch `after_batch` of fit
/// `fit_index`, saving a checkpoint on the interrupt; returns the outcome.
fn interrupted_run(checkpoint: &Path, fit_index: usize, after_batch: usize) -> FitOutcome {
    let flag = Arc::new(AtomicBool::new(false));
    let mut learner = learner(1);
    learner.set_interrupt_flag(Arc::clone(&flag));
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: checkpoint.to_path_buf(),
        every_n_batches: 0,
    })));
    learner.add_callback(Box::new(Probe::replying(&Rc::default(), move |event, state| {
        if event == Event::AfterBatch
            && state.phase == Phase::Train
            && state.fit_index == fit_index
            && state.train_iter == after_batch
        {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(Flow::Continue)
    })));
    learner.fit_stages(plan(&Rc::default())).unwrap()
}

/// The history with the wall-clock seconds and their split left out (everything else is
/// exact).
fn without_time(fits: &[FitRecord]) -> Vec<FitRecord> {
    fits.iter()
        .cloned()
        .map(|mut fit| {
            fit.epochs.iter_mut().for_each(|epoch| (epoch.seconds, epoch.split) = (0.0, None));
            fit
        })
        .collect()
}

#[test]
fn one_checkpoint_resumes_the_plan_inside_any_stage_bit_for_bit() {
    let calls: Calls = Rc::default();
    let mut reference = learner(1);
    assert_eq!(reference.fit_stages(plan(&calls)).unwrap(), FitOutcome::Completed);
    assert_eq!(calls.iter().map(Cell::get).collect::<Vec<_>>(), [1, 1, 0]);
    let forwards = reference.model().train_forwards.load(Ordering::Relaxed);
    assert_eq!(forwards, 2 * 3 + 3 * 4 + 4);

    // (fit, training batches done in it when interrupted, the resume position, the data
    // factories the resume calls): inside stage 1's frozen fit (its data epoch 0), inside its
    // unfrozen fit (data epoch 1: the frozen epoch was 0), and inside stage 2, which trains on
    // stage 1's data without a factory of its own (data epoch 2).
    let cases = [
        (1, 3, FitPosition { fit_index: 1, epoch: 0, batch: 3, data_epoch: 0 }, [0, 1, 0]),
        (2, 6, FitPosition { fit_index: 2, epoch: 1, batch: 2, data_epoch: 2 }, [0, 1, 0]),
        (3, 1, FitPosition { fit_index: 3, epoch: 0, batch: 1, data_epoch: 3 }, [0, 1, 0]),
    ];
    for (fit_index, after_batch, at, expected_calls) in cases {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checkpoint.safetensors");
        let outcome = interrupted_run(&path, fit_index, after_batch);
        assert_eq!(outcome, FitOutcome::Interrupted { at }, "fit {fit_index}");
        let checkpoint = Checkpoint::load(&path).unwrap();
        assert_eq!(checkpoint.position(), at);

        // A new process: other initial weights, a fresh counter, then the checkpoint.
        let calls: Calls = Rc::default();
        let mut resumed = learner(2);
        resumed.resume(&checkpoint).unwrap();
        assert_eq!(resumed.fit_stages(plan(&calls)).unwrap(), FitOutcome::Completed);
        assert_eq!(
            calls.iter().map(Cell::get).collect::<Vec<_>>(),
            expected_calls,
            "fit {fit_index}: only the data of the stage that runs is built"
        );
        assert_eq!(
            var_values(resumed.varmap()),
            var_values(reference.varmap()),
            "fit {fit_index}: weights and BatchNorm statistics, bit for bit"
        );
        assert_eq!(
            resumed.model().train_forwards.load(Ordering::Relaxed),
            forwards,
            "fit {fit_index}: the model state outside the VarMap"
        );
        assert_eq!(
            without_time(resumed.recorder().fits()),
            without_time(reference.recorder().fits()),
            "fit {fit_index}: the history"
        );
    }
}

#[test]
fn a_finished_plan_resumes_as_a_no_op_and_a_longer_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut finished = learner(1);
    finished.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: path.clone(),
        every_n_batches: 0,
    })));
    assert_eq!(finished.fit_stages(plan(&Rc::default())).unwrap(), FitOutcome::Completed);
    let checkpoint = Checkpoint::load(&path).unwrap();
    assert_eq!(checkpoint.position().fit_index, 4, "after the last fit");

    // Rerun: nothing trains, no data is built, the weights are the finished run's.
    let calls: Calls = Rc::default();
    let mut rerun = learner(2);
    rerun.resume(&checkpoint).unwrap();
    assert_eq!(rerun.fit_stages(plan(&calls)).unwrap(), FitOutcome::Completed);
    assert_eq!(calls.iter().map(Cell::get).collect::<Vec<_>>(), [0, 0, 0]);
    assert_eq!(var_values(rerun.varmap()), var_values(finished.varmap()));
    assert_eq!(rerun.recorder().fits().len(), 4);

    // The same checkpoint against a plan of 2 fits.
    let mut shorter = learner(2);
    shorter.resume(&checkpoint).unwrap();
    let error = shorter
        .fit_stages(vec![Stage::new(StageFit::FineTune(FineTune::fastai_defaults(1, 1e-3)))])
        .unwrap_err();
    assert!(matches!(error, TrainError::ResumeMismatch { what: "fit index", .. }), "{error}");
}

#[test]
fn a_failing_data_factory_names_its_stage() {
    let mut learner = learner(0);
    let stages = vec![
        Stage::new(StageFit::Constant { n_epoch: 1, lr: 1e-3 }),
        Stage::new(StageFit::Constant { n_epoch: 1, lr: 1e-3 })
            .with_data(|| Err("no images at 224 px".into())),
    ];
    let error = learner.fit_stages(stages).unwrap_err();
    assert_eq!(error.to_string(), "stage 1: building its data: no images at 224 px");
    assert_eq!(learner.recorder().fits().len(), 1, "stage 0 ran");
}

#[test]
fn lr_find_puts_back_the_model_state_outside_the_varmap() {
    let mut learner = learner(0);
    learner.fit(1, 1e-3).unwrap();
    assert_eq!(learner.model().train_forwards.load(Ordering::Relaxed), 3);
    let config = wick_train::LrFindConfig {
        schedule: wick_train::LrFinderSchedule {
            num_it: 6,
            ..wick_train::LrFinderSchedule::fastai_defaults()
        },
        divergence: wick_train::DivergenceRule::RunAll,
    };
    assert_eq!(learner.lr_find(config).unwrap().lrs.len(), 6);
    assert_eq!(learner.model().train_forwards.load(Ordering::Relaxed), 3, "6 forwards undone");
}
