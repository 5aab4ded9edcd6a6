//! lr_find's pure parts against hand-worked curves and fastai's `Learner.lr_find`.

use wick_train::lr_find::{
    DivergenceRule, LrFindControl, LrFindCurve, LrFindError, LrFindStopper, SlideConfig, minimum,
    slide, steep, valley,
};

use crate::common::{F64_ULPS, fixture, fixture_values};
use wick_testing::assert_close;

/// A curve whose points are all kept: `num_it` 0 drops nothing at the front, and five padding
/// points are appended for the five fastai drops at the end.
fn curve(lrs: &[f64], losses: &[f32]) -> LrFindCurve {
    let mut all_lrs = lrs.to_vec();
    let mut all_losses = losses.to_vec();
    all_lrs.extend([1.0; 5]);
    all_losses.extend([0.0; 5]);
    LrFindCurve::from_recorded(&all_lrs, &all_losses, 0).unwrap()
}

#[test]
fn suggestions_by_hand() {
    // losses [3, 2, 1, 2, 3] at lrs [1, 2, 4, 8, 16]:
    // valley: lds = [1, 2, 3, 2, 1]; the end index becomes 1 (start 1 − 2 = −1), then 2
    //   (start 2 − 3 = −1); sections = (2 − (−1))/3 = 1 → index −1 + 1 + 0 = 0 → lr 1.
    // minimum: lowest loss at lr 4 → 0.4.
    // steep: slopes (−1/ln2, −1/ln2, 1/ln2, 1/ln2); the first minimum is at index 0 → lr 1.
    let hill = curve(&[1.0, 2.0, 4.0, 8.0, 16.0], &[3.0, 2.0, 1.0, 2.0, 3.0]);
    assert_close("valley", valley(&hill).unwrap(), 1.0, F64_ULPS);
    assert_close("minimum", minimum(&hill).unwrap(), 0.4, F64_ULPS);
    assert_close("steep", steep(&hill).unwrap(), 1.0, F64_ULPS);
    // valley's Python quirk: losses [2, 1] give start −1 and index −1, i.e. the last lr.
    let two = curve(&[1.0, 2.0], &[2.0, 1.0]);
    assert_close("valley quirk", valley(&two).unwrap(), 2.0, F64_ULPS);
    // slide needs lr_diff + 1 = 16 points.
    let err = slide(&hill, SlideConfig::fastai_defaults()).unwrap_err();
    assert_eq!(err, LrFindError::TooFewPoints { rule: "slide", needed: 16, got: 5 });
}

#[test]
fn curve_trimming_follows_lr_find() {
    // lrs[num_it//10 : -5], then cut at the first NaN loss.
    let lrs: Vec<f64> = (0..20).map(f64::from).collect();
    let mut losses: Vec<f32> = (0..20).map(|i| i as f32).collect();
    losses[12] = f32::NAN;
    let trimmed = LrFindCurve::from_recorded(&lrs, &losses, 30).unwrap();
    assert_eq!(trimmed.lrs(), &[3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0]);
    let too_short = LrFindCurve::from_recorded(&lrs[..4], &losses[..4], 100).unwrap();
    assert!(too_short.losses().is_empty());
    assert!(matches!(valley(&too_short), Err(LrFindError::TooFewPoints { .. })));
}

#[test]
fn suggestions_equal_fastai_lr_find() {
    // Reference (lr_find.safetensors): for each recorded curve, `learn.lr_find(num_it=…,
    // show_plot=False, suggest_funcs=(valley, slide, minimum, steep))` with `learn.fit` replaced
    // by a no-op and `learn.recorder.lrs/losses` set to the curve, so fastai's own slicing,
    // NaN truncation, float32 conversion and rules run. Order: valley, slide, minimum, steep.
    let fx = fixture("lr_find.safetensors");
    for case in ["classic", "diverged_nan", "early_stop", "noisy", "short", "flat_then_drop"] {
        let lrs = fixture_values(&fx, &format!("{case}.lrs"));
        let losses: Vec<f32> =
            fixture_values(&fx, &format!("{case}.losses")).iter().map(|&l| l as f32).collect();
        let num_it = fixture_values(&fx, &format!("{case}.num_it"))[0] as usize;
        let curve = LrFindCurve::from_recorded(&lrs, &losses, num_it).unwrap();
        let actual = [
            valley(&curve).unwrap(),
            slide(&curve, SlideConfig::fastai_defaults()).unwrap(),
            minimum(&curve).unwrap(),
            steep(&curve).unwrap(),
        ];
        let expected = fixture_values(&fx, &format!("{case}.suggestions"));
        assert_close(case, actual, &expected, F64_ULPS);
    }
}

#[test]
fn stopper_follows_lr_finder_after_batch() {
    // Stops when the smoothed loss exceeds 4× the best so far, or after num_it batches;
    // a NaN loss does neither.
    let mut stopper = LrFindStopper::new(100, DivergenceRule::StopAtFourTimesBest);
    assert_eq!(stopper.after_batch(2.0, 1), LrFindControl::Continue);
    assert_eq!(stopper.after_batch(1.0, 2), LrFindControl::Continue);
    assert_eq!(stopper.after_batch(f32::NAN, 3), LrFindControl::Continue);
    assert_eq!(stopper.after_batch(3.9, 4), LrFindControl::Continue);
    assert_eq!(stopper.after_batch(4.1, 5), LrFindControl::Stop);
    assert_eq!(stopper.best_loss(), 1.0);
    let mut run_all = LrFindStopper::new(3, DivergenceRule::RunAll);
    assert_eq!(run_all.after_batch(1.0, 1), LrFindControl::Continue);
    assert_eq!(run_all.after_batch(100.0, 5), LrFindControl::Continue, "num_it raised to 6");
    assert_eq!(run_all.after_batch(100.0, 6), LrFindControl::Stop);
}
