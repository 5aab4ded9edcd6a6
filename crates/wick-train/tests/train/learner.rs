//! The Learner's loop: the exact event order (the executable `show_training_loop`), what each
//! [`Flow`] skips, that `after_fit` always runs, the shape / label / NaN guards, and that a tiny
//! network learns a separable task through the real loop.

use std::cell::RefCell;
use std::rc::Rc;

use candle::{Device, Tensor};
use wick_train::{
    EpochRecord, Event, FitOutcome, Flow, OneCycle, Phase, TrainError, ValidRecord,
    format_epoch_table, format_time,
};

use crate::tiny::{EventLog, Probe, adam, bright_dark_batches, config, tiny_cnn, tiny_learner};

/// One training batch's events (fastai `_do_one_batch` inside `_with_events(..., 'batch')`).
const TRAIN_BATCH: [&str; 8] = [
    "before_batch",
    "after_pred",
    "after_loss",
    "before_backward",
    "after_backward",
    "before_step",
    "after_step",
    "after_batch",
];
/// One validation batch's events: no backward, no step.
const VALID_BATCH: [&str; 4] = ["before_batch", "after_pred", "after_loss", "after_batch"];

fn log() -> EventLog {
    Rc::new(RefCell::new(Vec::new()))
}

/// 2 training batches and 1 validation batch of 4 bright/dark images.
fn small_learner() -> wick_train::Learner<crate::tiny::TinyCnn> {
    tiny_learner(bright_dark_batches(2, 4, 1), bright_dark_batches(1, 4, 2), 0)
}

fn epoch_events(n_train: usize, n_valid: usize) -> Vec<&'static str> {
    let mut events = vec!["before_epoch", "before_train"];
    (0..n_train).for_each(|_| events.extend(TRAIN_BATCH));
    events.extend(["after_train", "before_validate"]);
    (0..n_valid).for_each(|_| events.extend(VALID_BATCH));
    events.extend(["after_validate", "after_epoch"]);
    events
}

#[test]
fn event_order() {
    // fastai `learn.show_training_loop()` for fit(2) with 2 training and 1 validation batch:
    // before_fit, then per epoch before_epoch, before_train, per batch before_batch …
    // after_batch, after_train, before_validate, validation batches, after_validate,
    // after_epoch; finally after_fit.
    let events = log();
    let mut learner = small_learner();
    learner.add_callback(Box::new(Probe::observer(&events)));
    let outcome = learner.fit(2, 1e-3).unwrap();
    assert_eq!(outcome, FitOutcome::Completed);

    let mut expected = vec!["before_fit"];
    expected.extend(epoch_events(2, 1));
    expected.extend(epoch_events(2, 1));
    expected.push("after_fit");
    assert_eq!(*events.borrow(), expected);
}

#[test]
fn skip_batch_and_skip_step() {
    // SkipBatch at after_pred of training batch 0: no loss, no backward, no step for it
    // (fastai CancelBatchException → after_cancel_batch, after_batch).
    // SkipStep at before_step of batch 1: no step (fastai CancelStepException).
    let events = log();
    let mut learner = small_learner();
    let before = crate::tiny::var_values(learner.varmap());
    let probe = Probe::replying(&events, |event, state| {
        Ok(match (event, state.phase, state.iter) {
            (Event::AfterPred, Phase::Train, 0) => Flow::SkipBatch,
            (Event::BeforeStep, Phase::Train, 1) => Flow::SkipStep,
            _ => Flow::Continue,
        })
    });
    learner.add_callback(Box::new(probe));
    learner.fit(1, 1e-3).unwrap();

    let mut expected = vec!["before_fit", "before_epoch", "before_train"];
    expected.extend(["before_batch", "after_pred", "after_cancel_batch", "after_batch"]);
    expected.extend([
        "before_batch",
        "after_pred",
        "after_loss",
        "before_backward",
        "after_backward",
    ]);
    expected.extend(["before_step", "after_cancel_step", "after_step", "after_batch"]);
    expected.extend(["after_train", "before_validate"]);
    expected.extend(VALID_BATCH);
    expected.extend(["after_validate", "after_epoch", "after_fit"]);
    assert_eq!(*events.borrow(), expected);
    // No step ran, so the parameters are unchanged; BatchNorm running stats did move (forward
    // passes in training mode).
    let after = crate::tiny::var_values(learner.varmap());
    for ((name, b), (_, a)) in before.iter().zip(&after) {
        if !name.contains("running") {
            assert_eq!(b, a, "{name} changed without an optimizer step");
        }
    }
    // Only batch 1 reached its loss, so only it is recorded; train_iter counts both.
    let fit = &learner.recorder().fits()[0];
    assert_eq!(fit.batches.len(), 1);
    assert_eq!(fit.batches[0].iteration, 1);
}

#[test]
fn stop_fit_skips_to_after_cancel_fit() {
    // StopFit at after_batch of training batch 0 (fastai CancelFitException): no after_train,
    // no after_epoch; after_cancel_fit then after_fit.
    let events = log();
    let mut learner = small_learner();
    let probe = Probe::replying(&events, |event, state| {
        Ok(if event == Event::AfterBatch && state.train_iter == 1 {
            Flow::StopFit
        } else {
            Flow::Continue
        })
    });
    learner.add_callback(Box::new(probe));
    let outcome = learner.fit(3, 1e-3).unwrap();
    assert!(
        matches!(outcome, FitOutcome::Stopped { at } if at.epoch == 0 && at.batch == 1),
        "{outcome:?}"
    );
    let mut expected = vec!["before_fit", "before_epoch", "before_train"];
    expected.extend(TRAIN_BATCH);
    expected.extend(["after_cancel_fit", "after_fit"]);
    assert_eq!(*events.borrow(), expected);
}

#[test]
fn skip_validate_and_skip_epoch() {
    // SkipValidate at before_validate (what fastai's LRFinder does) and SkipEpoch at
    // before_train of epoch 1.
    let events = log();
    let mut learner = small_learner();
    let probe = Probe::replying(&events, |event, state| {
        Ok(match (event, state.epoch) {
            (Event::BeforeValidate, 0) => Flow::SkipValidate,
            (Event::BeforeTrain, 1) => Flow::SkipEpoch,
            _ => Flow::Continue,
        })
    });
    learner.add_callback(Box::new(probe));
    learner.fit(2, 1e-3).unwrap();
    let mut expected = vec!["before_fit", "before_epoch", "before_train"];
    expected.extend(TRAIN_BATCH);
    expected.extend(TRAIN_BATCH);
    expected.extend([
        "after_train",
        "before_validate",
        "after_cancel_validate",
        "after_validate",
        "after_epoch",
    ]);
    expected.extend([
        "before_epoch",
        "before_train",
        "after_cancel_epoch",
        "after_epoch",
        "after_fit",
    ]);
    assert_eq!(*events.borrow(), expected);
    let epochs = &learner.recorder().fits()[0].epochs;
    assert_eq!(epochs[0].valid, None, "validation was skipped");
}

#[test]
fn misplaced_flow_and_callback_error_still_run_after_fit() {
    // SkipStep returned at before_batch: no enclosing step stage, an error naming both.
    let events = log();
    let mut learner = small_learner();
    learner.add_callback(Box::new(Probe::replying(&events, |event, _| {
        Ok(if event == Event::BeforeBatch { Flow::SkipStep } else { Flow::Continue })
    })));
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert!(
        matches!(
            error,
            TrainError::MisplacedFlow { flow: Flow::SkipStep, event: Event::BeforeBatch }
        ),
        "{error}"
    );
    assert_eq!(events.borrow().last().map(String::as_str), Some("after_fit"));

    // A callback error at after_loss: the fit fails with it, after_fit still runs.
    let events = log();
    let mut learner = small_learner();
    learner.add_callback(Box::new(Probe::replying(&events, |event, _| {
        if event == Event::AfterLoss {
            Err(TrainError::Callback { name: "probe", reason: "refused".into() })
        } else {
            Ok(Flow::Continue)
        }
    })));
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert_eq!(error.to_string(), "callback probe: refused");
    assert_eq!(
        *events.borrow(),
        [
            "before_fit",
            "before_epoch",
            "before_train",
            "before_batch",
            "after_pred",
            "after_loss",
            "after_fit"
        ]
    );
}

#[test]
fn shape_and_label_guards_name_the_values() {
    let device = Device::Cpu;
    let xs = Tensor::zeros((4, 3, 8, 8), candle::DType::F32, &device).unwrap();
    // Labels (5,) for a batch of 4.
    let ys = Tensor::new(&[0u32, 1, 0, 1, 0], &device).unwrap();
    let mut learner = tiny_learner(vec![(xs.clone(), ys)], vec![], 0);
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert!(matches!(&error, TrainError::LabelsShape { batch_size: 4, .. }), "{error}");
    assert!(error.to_string().contains("[5]"), "{error}");

    // Label 7 with 2 classes.
    let ys = Tensor::new(&[0u32, 1, 7, 1], &device).unwrap();
    let mut learner = tiny_learner(vec![(xs.clone(), ys)], vec![], 0);
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert!(
        matches!(
            error,
            TrainError::LabelOutOfRange { label: 7, n_classes: 2, epoch: 0, batch: 0, .. }
        ),
        "{error}"
    );
    assert_eq!(
        error.to_string(),
        "epoch 0, train batch 0: label 7 out of range for 2 classes (logits (B,2))"
    );

    // Float labels.
    let ys = Tensor::new(&[0f32, 1., 0., 1.], &device).unwrap();
    let mut learner = tiny_learner(vec![(xs, ys)], vec![], 0);
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert!(matches!(error, TrainError::LabelsShape { dtype: candle::DType::F32, .. }), "{error}");
}

#[test]
fn nan_loss_stops_before_the_step() {
    // A NaN image in validation batch 0 of epoch 0: the error names phase, epoch and batch.
    let mut valid = bright_dark_batches(1, 4, 2);
    valid[0].0 = (valid[0].0.clone() * f64::NAN).unwrap();
    let mut learner = tiny_learner(bright_dark_batches(2, 4, 1), valid, 0);
    let error = learner.fit(1, 1e-3).unwrap_err();
    assert!(
        matches!(error, TrainError::NonFiniteLoss { phase: Phase::Valid, epoch: 0, batch: 0, .. }),
        "{error}"
    );
    assert!(
        error.to_string().starts_with("non-finite valid loss NaN at epoch 0, batch 0"),
        "{error}"
    );
}

#[test]
fn tiny_network_learns_bright_versus_dark() {
    // Through the whole loop (one-cycle, Adam, BatchNorm in train/eval mode): a separable task
    // reaches > 95% validation accuracy.
    let mut learner = tiny_learner(bright_dark_batches(8, 16, 3), bright_dark_batches(2, 16, 4), 5);
    let outcome = learner.fit_one_cycle(4, OneCycle::fastai_defaults(2e-2)).unwrap();
    assert_eq!(outcome, FitOutcome::Completed);
    let epochs = &learner.recorder().fits()[0].epochs;
    assert_eq!(epochs.len(), 4);
    let last = epochs[3].valid.as_ref().unwrap();
    assert!(last.metrics[0] > 0.95, "accuracy {}", last.metrics[0]);
    assert!(last.loss < epochs[0].valid.as_ref().unwrap().loss, "valid loss did not fall");
    let table = learner.recorder().epoch_table(0).unwrap();
    assert_eq!(table.lines().count(), 5, "{table}");
    assert!(table.starts_with("epoch     train_loss  valid_loss  accuracy  time\n"), "{table}");
}

#[test]
fn epoch_table_is_fastai_console_format() {
    // fastprogress ConsoleMasterBar: names padded to 8 and joined by two spaces; each value
    // padded to len(name) + 2; f'{v:.6f}'; fastai format_time. Book ch. 7 (first row):
    //   epoch     train_loss  valid_loss  accuracy  time
    //   0         1.583403    2.064317    0.401792  01:03
    let rows = [
        EpochRecord {
            epoch: 0,
            train_loss: Some(1.583_403),
            valid: Some(ValidRecord { loss: 2.064_317, metrics: vec![0.401_792] }),
            seconds: 63.9,
            split: None,
            train_iter: 100,
        },
        EpochRecord {
            epoch: 1,
            train_loss: Some(0.5),
            valid: None,
            seconds: 3725.0,
            split: None,
            train_iter: 200,
        },
    ];
    let table = format_epoch_table(&["accuracy".to_string()], &rows);
    let expected = "epoch     train_loss  valid_loss  accuracy  time\n\
                    0         1.583403    2.064317    0.401792  01:03\n\
                    1         0.500000    -           -         1:02:05\n";
    assert_eq!(table, expected);
    assert_eq!(format_time(59.99), "00:59");
}

/// What a mixing callback left in each batch: (phase, inputs changed, mixed labels).
type MixLog = Rc<RefCell<Vec<(Phase, bool, Option<wick_train::MixedLabels>)>>>;

/// Runs after MixUp/CutMix (order 0) and compares each batch with the source's.
struct MixInspector {
    original: Vec<Tensor>,
    seen: MixLog,
}

impl wick_train::Callback for MixInspector {
    fn name(&self) -> &'static str {
        "mix_inspector"
    }

    fn order(&self) -> i32 {
        wick_train::order::MIX + 1
    }

    fn on_event(
        &mut self,
        event: Event,
        context: &wick_train::EventContext<'_>,
    ) -> wick_train::CallbackResult {
        if let (Event::BeforeBatch, Some(batch)) = (event, context.batch) {
            let state = context.state;
            let original = match state.phase {
                Phase::Train => &self.original[state.iter],
                Phase::Valid => &self.original[self.original.len() - 1],
            };
            let changed = (&batch.xs - original)
                .unwrap()
                .abs()
                .unwrap()
                .sum_all()
                .unwrap()
                .to_scalar::<f32>()
                .unwrap()
                > 0.0;
            self.seen.borrow_mut().push((state.phase, changed, batch.ys.mixed().cloned()));
        }
        Ok(Flow::Continue)
    }
}

#[test]
fn mixup_and_cutmix_touch_training_batches_only() {
    // fastai MixHandler: run_valid = False. MixUp: per-sample λ ∈ [0.5, 1] and a permutation;
    // CutMix: one λ for the batch, from the pasted box's area.
    let train = bright_dark_batches(2, 8, 1);
    let valid = bright_dark_batches(1, 8, 2);
    let mut original: Vec<Tensor> = train.iter().map(|(xs, _)| xs.clone()).collect();
    original.push(valid[0].0.clone());
    for cutmix in [false, true] {
        let seen: MixLog = Rc::default();
        let mut learner = tiny_learner(train.clone(), valid.clone(), 0);
        if cutmix {
            learner.add_callback(Box::new(wick_train::CutMix::fastai_default()));
        } else {
            learner.add_callback(Box::new(wick_train::MixUp::new(0.4).unwrap()));
        }
        learner.add_callback(Box::new(MixInspector {
            original: original.clone(),
            seen: Rc::clone(&seen),
        }));
        learner.fit(1, 1e-3).unwrap();
        let seen = seen.borrow();
        assert_eq!(seen.len(), 3);
        for (phase, changed, mixed) in seen.iter() {
            match phase {
                Phase::Valid => assert!(!changed && mixed.is_none(), "validation untouched"),
                Phase::Train => {
                    let mixed = mixed.as_ref().expect("training batches get mixed labels");
                    assert_eq!(mixed.permutation.len(), 8);
                    assert!(mixed.lambdas.iter().all(|l| (0.0..=1.0).contains(l)));
                    if !cutmix {
                        assert!(*changed, "MixUp mixes the images");
                        assert!(mixed.lambdas.iter().all(|&l| l >= 0.5));
                    } else {
                        assert!(mixed.lambdas.windows(2).all(|w| w[0] == w[1]), "one λ per batch");
                    }
                }
            }
        }
    }
    // The draws are a function of (seed, stream, data epoch, batch) only.
    use rand::Rng;
    let draw = |epoch, batch| wick_train::batch_rng(3, 1, epoch, batch).random::<u64>();
    assert_eq!(draw(2, 5), draw(2, 5));
    assert_ne!(draw(2, 5), draw(2, 6));
    assert_ne!(draw(2, 5), draw(3, 5));
}

#[test]
fn error_rate_and_top_k_are_exact_dataset_fractions() {
    // fastai error_rate = 1 − accuracy; top_k_accuracy(k=1) = accuracy.
    let config = wick_train::LearnerConfig {
        metrics: vec![
            wick_train::Metric::Accuracy,
            wick_train::Metric::ErrorRate,
            wick_train::Metric::TopKAccuracy { k: 1 },
        ],
        ..crate::tiny::config(0)
    };
    let varmap = candle_nn::VarMap::new();
    let model = crate::tiny::tiny_cnn(&varmap, 0, 2);
    let optimizer = crate::tiny::adam(&varmap);
    let mut learner = wick_train::Learner::new(
        model,
        varmap,
        optimizer,
        Box::new(wick_train::InMemoryBatches::new(bright_dark_batches(2, 4, 1))),
        Box::new(wick_train::InMemoryBatches::new(bright_dark_batches(3, 4, 2))),
        config,
    );
    learner.fit(1, 1e-3).unwrap();
    let valid = learner.recorder().fits()[0].epochs[0].valid.clone().unwrap();
    assert_eq!(valid.metrics.len(), 3);
    let (accuracy, error_rate, top_1) = (valid.metrics[0], valid.metrics[1], valid.metrics[2]);
    // 12 validation images: every value is a multiple of 1/12.
    assert_eq!((accuracy * 12.0).fract(), 0.0, "{accuracy}");
    assert_eq!(error_rate, 1.0 - accuracy);
    assert_eq!(top_1, accuracy);
    assert_eq!(
        learner.recorder().epoch_table(0).unwrap().lines().next().unwrap(),
        "epoch     train_loss  valid_loss  accuracy  error_rate  top_1_accuracy  time"
    );
}

/// Batches from memory, each handed out after `delay`: a data pipeline the model waits for.
struct SlowBatches {
    batches: wick_train::InMemoryBatches,
    delay: std::time::Duration,
}

impl wick_train::BatchSource for SlowBatches {
    fn n_batches(&self) -> usize {
        self.batches.n_batches()
    }

    fn batches(&self, epoch: u64, first_batch: usize) -> wick_train::BatchIter<'_> {
        let delay = self.delay;
        Box::new(
            self.batches.batches(epoch, first_batch).inspect(move |_| std::thread::sleep(delay)),
        )
    }
}

#[test]
fn epoch_time_is_split_into_data_wait_and_each_phase_batches() {
    // 3 training batches that each take 100 ms to arrive and 60 ms to train (a callback sleeps
    // at after_loss), 2 validation batches that take 100 ms to arrive and 20 ms to validate:
    // at least 500 ms waiting for data, 180 ms of training batches, 40 ms of validation. A wait
    // booked to the wrong part leaves the part it belongs to below its bound; one booked twice
    // makes the parts exceed the epoch. (No upper bounds: a loaded machine only adds time.)
    let ms = std::time::Duration::from_millis;
    let slow = |batches, delay| {
        Box::new(SlowBatches { batches: wick_train::InMemoryBatches::new(batches), delay })
    };
    let varmap = candle_nn::VarMap::new();
    let model = tiny_cnn(&varmap, 0, 2);
    let optimizer = adam(&varmap);
    let (train, valid) = (bright_dark_batches(3, 4, 1), bright_dark_batches(2, 4, 2));
    let mut learner = wick_train::Learner::new(
        model,
        varmap,
        optimizer,
        slow(train, ms(100)),
        slow(valid, ms(100)),
        config(0),
    );
    learner.add_callback(Box::new(Probe::replying(&log(), move |event, state| {
        if event == Event::AfterLoss {
            std::thread::sleep(if state.phase == Phase::Train { ms(60) } else { ms(20) });
        }
        Ok(Flow::Continue)
    })));
    learner.fit(1, 1e-3).unwrap();
    let epoch = &learner.recorder().fits()[0].epochs[0];
    let split = epoch.split.expect("an epoch run whole in this process has its split");
    let parts = [split.data_wait, split.train_batches, split.valid_batches];
    for (part, (low, name)) in parts.iter().zip([(0.5, "data"), (0.18, "train"), (0.04, "valid")]) {
        assert!(*part >= low, "{name}: {part} s of {split:?}");
    }
    let sum: f64 = parts.iter().sum();
    assert!(sum <= epoch.seconds, "{split:?} adds up to more than the epoch's {} s", epoch.seconds);
    assert!((split.other(epoch.seconds) - (epoch.seconds - sum)).abs() < 1e-12);
    assert_eq!(split.other(0.0), 0.0, "never negative");
}
