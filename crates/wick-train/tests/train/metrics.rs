//! Metrics and accumulators against hand computations and fastai.

use candle::{DType, Device, Tensor};
use wick_train::metrics::{
    SmoothedLoss, WeightedMean, accuracy, correct_count, error_rate, top_k_accuracy,
};

use crate::common::{EXACT, F32_ROUNDING, F64_ULPS, fixture, fixture_values, get, scalar};
use wick_testing::assert_close;

#[test]
fn accuracy_by_hand() {
    // argmax of [[1,3,2],[5,0,0],[0,0,1]] is [1,0,2]; labels [1,2,2] → 2 of 3 correct.
    // Top-2: sample 1's label 2 scores 0 and only one class (5) scores higher → all 3 hit.
    // Tie: sample 1's labels 1 and 2 tie at 0, so top-2 counts label 1 as a hit too.
    let logits =
        Tensor::new(&[[1.0f32, 3.0, 2.0], [5.0, 0.0, 0.0], [0.0, 0.0, 1.0]], &Device::Cpu).unwrap();
    let labels = Tensor::new(&[1u32, 2, 2], &Device::Cpu).unwrap();
    assert_eq!(correct_count(&logits, &labels).unwrap(), 2);
    assert_close("accuracy", accuracy(&logits, &labels).unwrap(), 2.0 / 3.0, EXACT);
    assert_close("error", error_rate(&logits, &labels).unwrap(), 1.0 / 3.0, F64_ULPS);
    assert_close("top2", top_k_accuracy(&logits, &labels, 2).unwrap(), 1.0, EXACT);
    let tie_labels = Tensor::new(&[1u32, 1, 2], &Device::Cpu).unwrap();
    assert_close("top2 tie", top_k_accuracy(&logits, &tie_labels, 2).unwrap(), 1.0, EXACT);
    assert!(top_k_accuracy(&logits, &labels, 4).is_err(), "k > K");
}

#[test]
fn a_non_finite_prediction_is_never_a_hit() {
    // Row 0 holds a NaN at its label, row 1 an infinity elsewhere, row 2 a NaN in another
    // class: all three would count as hits if NaN compared like a number (nothing is greater
    // than a NaN label score; argmax may pick any class). Row 3 is finite and right.
    let logits = Tensor::new(
        &[[f32::NAN, 0.0, 0.0], [1.0, f32::INFINITY, 0.0], [0.0, 5.0, f32::NAN], [0.0, 0.0, 1.0]],
        &Device::Cpu,
    )
    .unwrap();
    let labels = Tensor::new(&[0u32, 1, 1, 2], &Device::Cpu).unwrap();
    assert_eq!(correct_count(&logits, &labels).unwrap(), 1);
    assert_close("accuracy", accuracy(&logits, &labels).unwrap(), 0.25, EXACT);
    for k in 1..=3 {
        assert_close("top-k", top_k_accuracy(&logits, &labels, k).unwrap(), 0.25, EXACT);
    }
}

#[test]
fn metrics_equal_fastai() {
    // Reference (metrics.safetensors): logits (8,10) randn, labels; fastai `accuracy`,
    // `error_rate`, `top_k_accuracy` (k=5) and `top_k_accuracy(k=3)`.
    let fx = fixture("metrics.safetensors");
    let logits = get(&fx, "logits");
    let labels = get(&fx, "labels").to_dtype(DType::U32).unwrap();
    let expect = |key: &str| scalar(&get(&fx, key));
    assert_close("accuracy", accuracy(&logits, &labels).unwrap(), expect("accuracy"), F32_ROUNDING);
    assert_close(
        "error",
        error_rate(&logits, &labels).unwrap(),
        expect("error_rate"),
        F32_ROUNDING,
    );
    let top5 = top_k_accuracy(&logits, &labels, 5).unwrap();
    assert_close("top5", top5, expect("top_5_accuracy"), F32_ROUNDING);
    let top3 = top_k_accuracy(&logits, &labels, 3).unwrap();
    assert_close("top3", top3, expect("top_3_accuracy"), F32_ROUNDING);
}

#[test]
fn weighted_mean_is_the_dataset_mean() {
    // Two batches: mean 0.5 over 64 samples, mean 1.0 over 54 → (32 + 54)/118.
    let mut mean = WeightedMean::new();
    assert_eq!(mean.value(), None);
    mean.accumulate(0.5, 64);
    mean.accumulate(1.0, 54);
    assert_close("weighted", mean.value().unwrap(), 86.0 / 118.0, EXACT);
    assert_eq!(mean.count(), 118);
    mean.reset();
    assert_eq!(mean.value(), None);
}

#[test]
fn smoothed_loss_equals_fastai_avg_smooth_loss() {
    // By hand: after one batch s = 0.02·ℓ and the value is s/(1 − 0.98) = ℓ.
    let mut smooth = SmoothedLoss::fastai_default();
    assert_eq!(smooth.value(), None);
    smooth.accumulate(2.5);
    assert_close("first", f64::from(smooth.value().unwrap()), 2.5, F32_ROUNDING);

    // Reference (metrics.safetensors): fastai `AvgSmoothLoss()` fed 17 losses through
    // `accumulate`, with `reset()` before the 13th, reading `.value` after each.
    let fx = fixture("metrics.safetensors");
    let losses = fixture_values(&fx, "smooth.loss");
    let mut smooth = SmoothedLoss::fastai_default();
    let mut actual = vec![];
    for (i, &loss) in losses.iter().enumerate() {
        if i == 12 {
            smooth.reset();
        }
        smooth.accumulate(loss as f32);
        actual.push(f64::from(smooth.value().unwrap()));
    }
    assert_close("smooth", &actual, fixture_values(&fx, "smooth.value"), EXACT);
}

#[test]
fn smoothed_loss_resets_per_fit_like_fine_tune() {
    // Reference (schedule.safetensors): during `learn.fine_tune(5, 1e-3)` (7 batches/epoch) the
    // recorded `learn.loss` and `learn.smooth_loss` after each training batch; Recorder resets
    // the smoothed loss at the second fit's start (batch 7), not at epoch boundaries.
    let fx = fixture("schedule.safetensors");
    let losses = fixture_values(&fx, "fine_tune.loss");
    let mut smooth = SmoothedLoss::fastai_default();
    let mut actual = vec![];
    for (i, &loss) in losses.iter().enumerate() {
        if i == 7 {
            smooth.reset();
        }
        smooth.accumulate(loss as f32);
        actual.push(f64::from(smooth.value().unwrap()));
    }
    assert_close("smooth", &actual, fixture_values(&fx, "fine_tune.smooth_loss"), EXACT);
}
