//! Schedules against spec §3.1's worked numbers and fastai's own ParamScheduler.

use wick_train::schedule::{
    Annealer, FineTune, FlatCos, LrFinderSchedule, OneCycle, OptimizerStateAction, Schedule,
    ScheduleError, TrainPosition, combine_scheds, fit_positions, sched_cos, sched_exp, sched_lin,
};

use crate::common::{EXACT, F64_ULPS, fixture, fixture_values};
use wick_testing::{Tol, assert_close};

#[test]
fn annealers_by_hand() {
    // sched_lin(2, 4, 0.25) = 2 + 0.25·2 = 2.5; sched_cos at pos 0.5 is the midpoint 3;
    // sched_exp(1e-7, 10, 0.5) = 1e-7·(1e8)^0.5 = 1e-3.
    assert_close("lin", sched_lin(2.0, 4.0, 0.25), 2.5, EXACT);
    assert_close("cos mid", sched_cos(2.0, 4.0, 0.5), 3.0, F64_ULPS);
    assert_close("cos start", sched_cos(2.0, 4.0, 0.0), 2.0, EXACT);
    assert_close("cos end", sched_cos(2.0, 4.0, 1.0), 4.0, EXACT);
    assert_close("exp", sched_exp(1e-7, 10.0, 0.5), 1e-3, F64_ULPS);
}

#[test]
fn combine_scheds_phases_and_errors() {
    // Linear 0→1 over the first 30%, then constant 5: pos 0.15 is halfway through phase 0,
    // (0.15 in f32 − 0)/0.3f32 = 0.5 to within f32 rounding.
    let sched =
        combine_scheds(&[0.3, 0.7], &[Schedule::lin(0.0, 1.0), Schedule::constant(5.0)]).unwrap();
    assert_close("phase 0", sched.at(0.15), 0.5, Tol { abs: 1e-7, rel: 0.0, of_scale: 0.0 });
    assert_close("phase 1", sched.at(0.5), 5.0, EXACT);
    assert_close("past the end", sched.at(1.0), 5.0, EXACT);
    assert_eq!(Schedule::exp(1.0, 2.0).annealer, Annealer::Exponential);

    let mismatch = combine_scheds(&[1.0], &[]).unwrap_err();
    assert_eq!(mismatch, ScheduleError::LengthMismatch { n_pcts: 1, n_scheds: 0 });
    let negative = combine_scheds(&[1.5, -0.5], &[Schedule::constant(1.0); 2]).unwrap_err();
    assert_eq!(negative, ScheduleError::NegativePct { index: 1, pct: -0.5 });
    let short = combine_scheds(&[0.5, 0.4], &[Schedule::constant(1.0); 2]).unwrap_err();
    assert!(matches!(short, ScheduleError::PctsDoNotSumToOne { .. }), "{short:?}");
}

#[test]
fn one_cycle_worked_points_of_spec() {
    // Spec §3.1: fit_one_cycle(5, 3e-3), 167 batches/epoch (T = 835). t=0: lr 1.2e-4, mom 0.95;
    // t=100: lr 1.465e-3, mom 0.903; peak 3.0e-3 / 0.85 at t≈208–209; t=400: 2.36e-3;
    // t=834: ≈4.9e-8. The spec quotes 3–4 significant digits.
    let cycle = OneCycle::fastai_defaults(3e-3);
    cycle.validate().unwrap();
    let positions = fit_positions(5, 167);
    assert_eq!(positions.len(), 835);
    let spec = Tol { abs: 0.0, rel: 2e-3, of_scale: 0.0 };
    assert_close("lr t=0", cycle.lr(positions[0]), 1.2e-4, F64_ULPS);
    assert_close("mom t=0", cycle.mom(positions[0]), 0.95, EXACT);
    assert_close("lr t=100", cycle.lr(positions[100]), 1.465e-3, spec);
    assert_close("mom t=100", cycle.mom(positions[100]), 0.903, spec);
    assert_close("lr t=208", cycle.lr(positions[208]), 3.0e-3, spec);
    assert_close("mom t=208", cycle.mom(positions[208]), 0.85, spec);
    assert_close("lr t=400", cycle.lr(positions[400]), 2.36e-3, spec);
    assert_close(
        "lr t=834",
        cycle.lr(positions[834]),
        4.9e-8,
        Tol { abs: 0.0, rel: 3e-2, of_scale: 0.0 },
    );
}

#[test]
fn one_cycle_equals_fastai_fit_one_cycle() {
    // Reference: a fastai Learner running `learn.fit_one_cycle(5, 3e-3)` over 167 batches per
    // epoch, recording `learn.pct_train` and `opt.hypers[-1]['lr'|'mom']` at every training
    // batch after ParamScheduler.before_batch (make_fixtures.py, schedule.safetensors).
    let fx = fixture("schedule.safetensors");
    let positions = fit_positions(5, 167);
    // The accumulated position is reproduced bit for bit (it is not exactly t/T).
    assert_close("pct_train", &positions, fixture_values(&fx, "one_cycle.pct"), EXACT);
    let cycle = OneCycle::fastai_defaults(3e-3);
    let lrs: Vec<f64> = positions.iter().map(|&p| cycle.lr(p)).collect();
    let moms: Vec<f64> = positions.iter().map(|&p| cycle.mom(p)).collect();
    assert_close("lr", &lrs, fixture_values(&fx, "one_cycle.lr"), F64_ULPS);
    assert_close("mom", &moms, fixture_values(&fx, "one_cycle.mom"), F64_ULPS);
}

#[test]
fn fine_tune_plan_equals_fastai_fine_tune() {
    // Reference: `learn.fine_tune(5, 1e-3)` with 7 batches per epoch on a one-group Learner,
    // recording pct_train, lr, mom and fastai Adam's `state['step']` of a parameter after each
    // step (schedule.safetensors, "fine_tune.*").
    let fx = fixture("schedule.safetensors");
    let plan = FineTune::fastai_defaults(5, 1e-3).plan();
    let (mut positions, mut lrs, mut moms, mut steps) = (vec![], vec![], vec![], vec![]);
    let mut adam_step = 0i64;
    for phase in &plan {
        phase.schedule.validate().unwrap();
        if phase.optimizer_state == OptimizerStateAction::Reset {
            adam_step = 0;
        }
        for position in fit_positions(phase.n_epoch, 7) {
            positions.push(position);
            lrs.push(phase.schedule.lr(position));
            moms.push(phase.schedule.mom(position));
            adam_step += 1;
            steps.push(adam_step as f64);
        }
    }
    assert_eq!(plan[0].n_epoch, 1);
    assert_eq!(plan[1].n_epoch, 5);
    // Spec §3.2: phase 1 starts at 1e-3/25 = 4e-5, phase 2 at (1e-3/2)/5 = 1e-4.
    assert_close("phase 1 start", lrs[0], 4e-5, F64_ULPS);
    assert_close("phase 2 start", lrs[7], 1e-4, F64_ULPS);
    assert_close("pct_train", &positions, fixture_values(&fx, "fine_tune.pct"), EXACT);
    assert_close("lr", &lrs, fixture_values(&fx, "fine_tune.lr"), F64_ULPS);
    assert_close("mom", &moms, fixture_values(&fx, "fine_tune.mom"), F64_ULPS);
    // freeze() and unfreeze() each clear Adam's state: the step count restarts at both phases.
    assert_close("adam step", &steps, fixture_values(&fx, "fine_tune.adam_step"), EXACT);
}

#[test]
fn flat_cos_equals_fastai_fit_flat_cos() {
    // Reference: `learn.fit_flat_cos(2, 1e-2)`, 9 batches per epoch (schedule.safetensors).
    // fit_flat_cos schedules no momentum: fastai Adam's default 0.9 stays.
    let fx = fixture("schedule.safetensors");
    let flat_cos = FlatCos::fastai_defaults(1e-2);
    flat_cos.validate().unwrap();
    let positions = fit_positions(2, 9);
    let lrs: Vec<f64> = positions.iter().map(|&p| flat_cos.lr(p)).collect();
    assert_close("pct_train", &positions, fixture_values(&fx, "flat_cos.pct"), EXACT);
    assert_close("lr", &lrs, fixture_values(&fx, "flat_cos.lr"), F64_ULPS);
    assert_close("mom", [0.9; 18], fixture_values(&fx, "flat_cos.mom"), EXACT);
}

#[test]
fn lr_finder_ramp_equals_fastai_lr_find() {
    // Reference: `learn.lr_find(num_it=100, stop_div=False)` with 30 batches per epoch,
    // `learn.recorder.lrs` (schedule.safetensors, "lr_find.lr"). Spec §4: batch 0 uses 1e-7,
    // batch 99 uses 1e-7·(1e8)^0.99.
    let fx = fixture("schedule.safetensors");
    let ramp = LrFinderSchedule::fastai_defaults();
    let lrs: Vec<f64> = (0..100).map(|i| ramp.lr(i)).collect();
    assert_close("lr_find lr", &lrs, fixture_values(&fx, "lr_find.lr"), F64_ULPS);
    assert_close("batch 99", lrs[99], 1e-7 * 1e8f64.powf(0.99), F64_ULPS);
    assert_eq!(ramp.n_epoch(30), 4, "100 // 30 + 1");
    let short = LrFinderSchedule { num_it: 3, ..ramp };
    assert_eq!(short.effective_num_it(), 6);
}

#[test]
fn train_position_moves_only_on_training_batches() {
    // Two epochs of 3 batches: epoch starts reset the accumulated position to epoch/n_epoch.
    let mut position = TrainPosition::new(2, 3);
    position.begin_epoch(0);
    position.end_batch();
    position.end_batch();
    position.end_batch();
    position.begin_epoch(1);
    assert_close("epoch 1 start", position.pct_train(), 0.5, EXACT);
    assert_eq!(position.train_iter(), 3);
}
