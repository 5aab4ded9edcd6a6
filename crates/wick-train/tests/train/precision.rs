//! bf16 mixed precision (`Precision::Bf16` and the `Autocast` wrapper, fastai's `to_bf16()`) on the CPU: a small xresnet's
//! logits and gradients in bf16 against f32 from the same weights, and a Learner in bf16 whose
//! weights, gradients and optimizer state stay f32 and whose run tracks the f32 run.

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use wick_models::{Depth, XResNet, XResNetConfig, seeded_var_builder, xresnet};
use wick_train::{Autocast, InMemoryBatches, Learner, Precision, cross_entropy, trainable_params};

use crate::common::values;
use crate::tiny::{adam, bright_dark_batches, config};

/// xresnet18's layout at a quarter width with two stages: small enough for CPU tests.
fn small_xresnet(varmap: &VarMap, seed: u64) -> XResNet {
    let config =
        XResNetConfig { layers: vec![1, 1], widen: 0.25, ..XResNetConfig::depth(Depth::D18, 2) };
    xresnet(&config, seed, seeded_var_builder(varmap, seed, DType::F32, &Device::Cpu)).unwrap()
}

fn norm(v: &[f64]) -> f64 {
    v.iter().map(|x| x * x).sum::<f64>().sqrt()
}

fn relative(got: &[f64], want: &[f64]) -> f64 {
    let diff: Vec<f64> = got.iter().zip(want).map(|(a, b)| a - b).collect();
    norm(&diff) / norm(want)
}

#[test]
fn bf16_logits_and_gradients_match_f32_within_bf16_tolerance() {
    let varmap = VarMap::new();
    let model = small_xresnet(&varmap, 3);
    let (xs, ys) = bright_dark_batches(1, 8, 4).remove(0);
    let mut runs = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let logits = precision.forward_t(&model, &xs, true).unwrap();
        assert_eq!(logits.dtype(), DType::F32);
        let grads = cross_entropy(&logits, &ys).unwrap().backward().unwrap();
        let mut param_grads = Vec::new();
        for (name, var) in trainable_params(&varmap, wick_models::is_buffer) {
            let grad =
                grads.get(var.as_tensor()).unwrap_or_else(|| panic!("no gradient for {name}"));
            assert_eq!(grad.dtype(), DType::F32, "{name}: gradients reach the f32 master weights");
            param_grads.push((name, values(grad)));
        }
        runs.push((values(&logits), param_grads));
    }
    let ((logits32, grads32), (logits16, grads16)) = (&runs[0], &runs[1]);
    // bf16 keeps 8 significant bits: each layer adds ~0.2-0.4% relative error (measured: 0.4%
    // after the first convolution, 2.4% after the last stage, 3.3% at the logits).
    let logits_error = relative(logits16, logits32);
    assert!(logits_error < 6e-2, "logits differ by {logits_error:e}");
    let mut errors: Vec<(f64, &str)> = grads16
        .iter()
        .zip(grads32)
        .filter(|(_, (_, g32))| norm(g32) > 1e-6)
        .map(|((name, g16), (_, g32))| (relative(g16, g32), name.as_str()))
        .collect();
    errors.sort_by(|a, b| a.0.total_cmp(&b.0));
    assert!(errors.len() > 10, "{errors:?}");
    let (median, worst) = (errors[errors.len() / 2], errors[errors.len() - 1]);
    // Backward in bf16 rounds every activation gradient too, and BatchNorm's backward removes
    // the mean and the x̂-component of its incoming gradient, so what is left is small beside
    // the rounding error it carries: measured median 4.2%, worst 23% (a stem BatchNorm's bias),
    // 16% for the stem convolutions' weights, 12.7% for all gradients together. A wrong
    // gradient would be off by O(1).
    assert!(median.0 < 8e-2 && worst.0 < 0.4, "median {median:?}, worst {worst:?}");
    let all16: Vec<f64> = grads16.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    let all32: Vec<f64> = grads32.iter().flat_map(|(_, g)| g.iter().copied()).collect();
    let overall = relative(&all16, &all32);
    assert!(overall < 0.2, "all gradients together differ by {overall:e}");
}

/// What a fit in one precision leaves: the trainable weights, the losses, the variables, the
/// Learner.
type Fitted = (Vec<Vec<f64>>, Vec<f32>, VarMap, Learner<Autocast<XResNet>>);

fn fit(precision: Precision) -> Fitted {
    let varmap = VarMap::new();
    let model = small_xresnet(&varmap, 5);
    let train = InMemoryBatches::new(bright_dark_batches(3, 8, 1));
    let valid = InMemoryBatches::new(bright_dark_batches(1, 8, 2));
    let mut learner = Learner::new(
        Autocast::new(model, precision),
        varmap.clone(),
        adam(&varmap),
        Box::new(train),
        Box::new(valid),
        config(1),
    );
    learner.fit(1, 1e-3).unwrap();
    let weights = trainable_params(&varmap, wick_models::is_buffer)
        .iter()
        .map(|(_, v)| values(v.as_tensor()))
        .collect();
    let losses = learner.recorder().fits()[0].batches.iter().map(|b| b.loss).collect();
    (weights, losses, varmap, learner)
}

#[test]
fn a_bf16_learner_keeps_f32_state_and_tracks_the_f32_run() {
    let (w32, losses32, _, _) = fit(Precision::F32);
    let (w16, losses16, varmap, learner) = fit(Precision::Bf16);
    for (name, var) in varmap.data().lock().unwrap().iter() {
        assert_eq!(var.dtype(), DType::F32, "{name}: weights and BatchNorm buffers stay f32");
    }
    for (key, tensor) in learner.optimizer().state_dict().unwrap() {
        assert!(
            matches!(tensor.dtype(), DType::F32 | DType::F64 | DType::I64),
            "{key}: {:?}",
            tensor.dtype()
        );
    }
    // The first batch sees the same weights (measured 0.3% apart); after that the runs
    // diverge by what bf16 changes in Adam's nearly sign-sized first steps (measured 8% by
    // the third batch, while the loss itself fell by half).
    assert!(
        (losses16[0] - losses32[0]).abs() <= 1e-2 * losses32[0].abs(),
        "{losses16:?} vs {losses32:?}"
    );
    for (a, b) in losses16.iter().zip(&losses32) {
        assert!((a - b).abs() <= 0.15 * b.abs(), "train losses {losses16:?} vs {losses32:?}");
    }
    assert!(losses16[2] < 0.75 * losses16[0], "the bf16 run learns: {losses16:?}");
    // Three Adam steps of at most ~lr each: the runs differ only where bf16 flips a step.
    let worst = w16
        .iter()
        .zip(&w32)
        .flat_map(|(a, b)| a.iter().zip(b).map(|(x, y)| (x - y).abs()))
        .fold(0.0, f64::max);
    assert!(worst < 6e-3, "weights differ by up to {worst:e}");
    let moved = relative(&w16.concat(), &w32.concat());
    assert!(moved < 1e-2, "weights differ by {moved:e} relative");
}

#[test]
fn precision_casts_inputs_and_logits() {
    let xs = Tensor::ones((1, 3, 2, 2), DType::F32, &Device::Cpu).unwrap();
    assert_eq!(Precision::Bf16.cast_input(&xs).unwrap().dtype(), DType::BF16);
    assert_eq!(Precision::F32.cast_input(&xs).unwrap().dtype(), DType::F32);
    let logits = Tensor::ones((1, 2), DType::BF16, &Device::Cpu).unwrap();
    assert_eq!(Precision::Bf16.cast_logits(&logits).unwrap().dtype(), DType::F32);
    assert_eq!(Precision::Bf16.activation_dtype(), DType::BF16);
}

#[test]
fn autocast_runs_the_inner_model_in_its_precision() {
    // Under F32 the wrapper is the model itself, bit for bit; under Bf16 the logits come back
    // as f32 and equal the hand-cast forward pass exactly.
    let varmap = VarMap::new();
    let model = small_xresnet(&varmap, 7);
    let (xs, _) = bright_dark_batches(1, 4, 9).remove(0);
    let bare = values(&model.forward_t(&xs, false).unwrap());
    let by_hand = values(
        &model
            .forward_t(&xs.to_dtype(DType::BF16).unwrap(), false)
            .unwrap()
            .to_dtype(DType::F32)
            .unwrap(),
    );
    let f32_wrapped = Autocast::new(model, Precision::F32);
    assert_eq!(values(&f32_wrapped.forward_t(&xs, false).unwrap()), bare);
    // The same seed draws the same weights.
    let bf16_wrapped = Autocast::new(small_xresnet(&VarMap::new(), 7), Precision::Bf16);
    let logits = bf16_wrapped.forward_t(&xs, false).unwrap();
    assert_eq!(logits.dtype(), DType::F32);
    assert_eq!(values(&logits), by_hand);
    assert_ne!(by_hand, bare, "bf16 activations round the logits");
}
