//! The fused `BatchNorm2d` (and `ops::batch_norm_train`) against candle-nn's `BatchNorm`:
//! outputs, running-statistics updates, gradients through the batch statistics, eval mode.

mod common;

use candle::{DType, Device, ModuleT, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use common::{seeded_tensor, to_vec};
use wick_nn::{BatchNorm2dConfig, BatchNormActivation, batch_norm2d};
use wick_testing::{Tol, assert_close};

fn layers(
    channels: usize,
    activation: BatchNormActivation,
) -> candle::Result<(wick_nn::BatchNorm2d, candle_nn::BatchNorm, VarMap, VarMap)> {
    let (ours_map, theirs_map) = (VarMap::new(), VarMap::new());
    let config = BatchNorm2dConfig { activation, ..Default::default() };
    let ours = batch_norm2d(
        channels,
        config,
        VarBuilder::from_varmap(&ours_map, DType::F32, &Device::Cpu),
    )?;
    let theirs = candle_nn::batch_norm(
        channels,
        candle_nn::BatchNormConfig::default(),
        VarBuilder::from_varmap(&theirs_map, DType::F32, &Device::Cpu),
    )?;
    // Non-trivial affine parameters, the same in both.
    for map in [&ours_map, &theirs_map] {
        var(map, "weight").set(&(seeded_tensor(&[channels], 1) + 1.5)?)?;
        var(map, "bias").set(&seeded_tensor(&[channels], 2))?;
    }
    Ok((ours, theirs, ours_map, theirs_map))
}

fn reference(
    bn: &candle_nn::BatchNorm,
    xs: &Tensor,
    activation: BatchNormActivation,
    train: bool,
) -> candle::Result<Tensor> {
    let ys = bn.forward_t(xs, train)?;
    match activation {
        BatchNormActivation::Identity => Ok(ys),
        BatchNormActivation::Relu => ys.relu(),
    }
}

fn var(map: &VarMap, name: &str) -> Var {
    map.data().lock().expect("varmap lock").get(name).expect("variable exists").clone()
}

#[test]
fn train_forward_backward_and_running_stats_match_candle_nn() -> candle::Result<()> {
    for activation in [BatchNormActivation::Identity, BatchNormActivation::Relu] {
        let channels = 5;
        let (ours, theirs, ours_map, theirs_map) = layers(channels, activation)?;
        for step in 0..3u64 {
            // Shifted, scaled inputs so the statistics are far from (0, 1). Step 1's planes
            // of 575 values span two of the kernels' 512-value blocks (the first one eight
            // 64-value pieces, the second a tail); the others' 42 are one partial piece.
            let dims = if step == 1 { [2, channels, 23, 25] } else { [4, channels, 6, 7] };
            let x = ((seeded_tensor(&dims, 10 + step) * 3.0)? + 2.0)?;
            let xv = Var::from_tensor(&x)?;
            let ys = ours.forward_t(xv.as_tensor(), true)?;
            let expected = reference(&theirs, xv.as_tensor(), activation, true)?;
            assert_close(
                &format!("{activation:?} output, step {step}"),
                &ys,
                &expected,
                Tol::of_scale(1e-5),
            );
            for name in ["running_mean", "running_var"] {
                let (a, b) = (var(&ours_map, name), var(&theirs_map, name));
                assert_close(
                    &format!("{name}, step {step}"),
                    a.as_tensor(),
                    b.as_tensor(),
                    Tol::of_scale(1e-6),
                );
            }
            let g = seeded_tensor(ys.dims(), 20 + step);
            let ours_grads = (ys * &g)?.sum_all()?.backward()?;
            let their_grads = (expected * &g)?.sum_all()?.backward()?;
            let grad = |store: &candle::backprop::GradStore, t: &Tensor| {
                store.get(t).expect("gradient exists").clone()
            };
            assert_close(
                &format!("{activation:?} grad input"),
                grad(&ours_grads, xv.as_tensor()),
                grad(&their_grads, xv.as_tensor()),
                Tol::of_scale(1e-4),
            );
            for name in ["weight", "bias"] {
                let (a, b) = (var(&ours_map, name), var(&theirs_map, name));
                assert_close(
                    &format!("{activation:?} grad {name}"),
                    grad(&ours_grads, a.as_tensor()),
                    grad(&their_grads, b.as_tensor()),
                    Tol::of_scale(1e-5),
                );
            }
        }
        // Eval mode uses the (now updated) running statistics.
        let x = seeded_tensor(&[2, channels, 3, 3], 30);
        let ys = ours.forward_t(&x, false)?;
        assert_close("eval", &ys, &reference(&theirs, &x, activation, false)?, Tol::of_scale(1e-5));
    }
    Ok(())
}

#[test]
fn non_contiguous_and_f64_inputs_match_the_f32_path() -> candle::Result<()> {
    let config = wick_nn::ops::BatchNormOpConfig {
        activation: BatchNormActivation::Relu,
        ..Default::default()
    };
    let (w, b) = (seeded_tensor(&[3], 1), seeded_tensor(&[3], 2));
    let x = seeded_tensor(&[2, 5, 3, 4], 3).transpose(1, 2)?;
    assert!(!x.is_contiguous());
    let (ys, _) = wick_nn::ops::batch_norm_train(&x, &w, &b, config)?;
    let (expected, _) = wick_nn::ops::batch_norm_train(&x.contiguous()?, &w, &b, config)?;
    assert_close("transposed input", &ys, &expected, Tol::of_scale(0.0));
    let to64 = |t: &Tensor| t.to_dtype(DType::F64);
    let (ys64, stats) = wick_nn::ops::batch_norm_train(&to64(&x)?, &to64(&w)?, &to64(&b)?, config)?;
    assert_eq!(ys64.dtype(), DType::F64);
    assert_eq!(stats.count, 2 * 5 * 4);
    assert_close("f64 composed path", &ys64.to_dtype(DType::F32)?, &expected, Tol::of_scale(1e-5));
    Ok(())
}

/// The batch statistics stay accurate where a one-pass `Σx² - (Σx)²/n` in f32 would not:
/// values near 1000 with a spread of about 0.01 (variance ~2e-5, ten orders below the
/// mean's square), each item's planes offset differently (so the planes' own means differ from the
/// channel's). Expected: mean and biased variance in f64 over the same f32 values (what
/// `torch.var_mean(x.double(), dim=(0, 2, 3), unbiased=False)` computes); tolerance 1e-3
/// relative on the variance, 1e-7 on the mean.
#[test]
fn batch_statistics_are_accurate_far_from_zero() -> candle::Result<()> {
    let (batch, channels, plane) = (3, 2, 5 * 7);
    let value = |b: usize, c: usize, p: usize| {
        1000.0 + c as f32 + 0.004 * b as f32 + 0.01 * ((p * 37 + b * 11 + c * 5) % 17) as f32 / 17.0
    };
    let mut data = Vec::new();
    for b in 0..batch {
        for c in 0..channels {
            data.extend((0..plane).map(|p| value(b, c, p)));
        }
    }
    let x = Tensor::from_vec(data.clone(), (batch, channels, 5, 7), &Device::Cpu)?;
    let ones = Tensor::ones(channels, DType::F32, &Device::Cpu)?;
    let zeros = Tensor::zeros(channels, DType::F32, &Device::Cpu)?;
    let config = wick_nn::ops::BatchNormOpConfig::default();
    let (_, stats) = wick_nn::ops::batch_norm_train(&x, &ones, &zeros, config)?;
    let (means, variances) = (to_vec(&stats.mean), to_vec(&stats.variance));
    for c in 0..channels {
        let values: Vec<f64> = (0..batch)
            .flat_map(|b| data[(b * channels + c) * plane..][..plane].iter().map(|v| *v as f64))
            .collect();
        let mean = values.iter().sum::<f64>() / values.len() as f64;
        let variance =
            values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / values.len() as f64;
        assert!(
            (means[c] as f64 - mean).abs() <= 1e-7 * mean,
            "channel {c}: mean {} vs {mean}",
            means[c]
        );
        let error = (variances[c] as f64 - variance).abs() / variance;
        assert!(error <= 1e-3, "channel {c}: variance {} vs {variance} ({error:e})", variances[c]);
    }
    Ok(())
}

#[test]
fn variables_are_named_like_candle_nn() -> candle::Result<()> {
    let map = VarMap::new();
    batch_norm2d(
        4,
        BatchNorm2dConfig::default(),
        VarBuilder::from_varmap(&map, DType::F32, &Device::Cpu).pp("bn1"),
    )?;
    let mut names: Vec<String> = map.data().lock().expect("varmap lock").keys().cloned().collect();
    names.sort();
    assert_eq!(names, ["bn1.bias", "bn1.running_mean", "bn1.running_var", "bn1.weight"]);
    Ok(())
}

#[test]
fn eval_kernel_matches_the_formula_and_the_composed_path() -> candle::Result<()> {
    // PyTorch's eval-mode BatchNorm2d: (x - running_mean) / sqrt(running_var + eps) * weight
    // + bias, written out here with candle ops in f64.
    let channels = 3;
    let (w, b) = ((seeded_tensor(&[channels], 1) + 1.5)?, seeded_tensor(&[channels], 2));
    let mean = seeded_tensor(&[channels], 3);
    let var = (seeded_tensor(&[channels], 4).abs()? + 0.5)?;
    // (B, C, H, W) = (2, 3, 5, 4), non-contiguous.
    let x = ((seeded_tensor(&[2, 5, channels, 4], 5) * 2.0)?.transpose(1, 2))?;
    assert!(!x.is_contiguous());
    let to64 = |t: &Tensor| t.to_dtype(DType::F64);
    let shape = (1, channels, 1, 1);
    let formula = to64(&x)?
        .broadcast_sub(&to64(&mean)?.reshape(shape)?)?
        .broadcast_div(&(to64(&var)? + 1e-5)?.sqrt()?.reshape(shape)?)?
        .broadcast_mul(&to64(&w)?.reshape(shape)?)?
        .broadcast_add(&to64(&b)?.reshape(shape)?)?;
    for activation in [BatchNormActivation::Identity, BatchNormActivation::Relu] {
        let config = wick_nn::ops::BatchNormOpConfig { eps: 1e-5, activation };
        let expected = match activation {
            BatchNormActivation::Identity => formula.clone(),
            BatchNormActivation::Relu => formula.relu()?,
        };
        let expected = expected.to_dtype(DType::F32)?;
        let ys = wick_nn::ops::batch_norm_eval(&x, &w, &b, &mean, &var, config)?;
        assert_close(&format!("{activation:?} fused f32"), &ys, &expected, Tol::of_scale(1e-6));
        let ys64 = wick_nn::ops::batch_norm_eval(
            &to64(&x)?,
            &to64(&w)?,
            &to64(&b)?,
            &to64(&mean)?,
            &to64(&var)?,
            config,
        )?;
        assert_eq!(ys64.dtype(), DType::F64);
        assert_close(
            "f64 composed path",
            &ys64.to_dtype(DType::F32)?,
            &expected,
            Tol::of_scale(1e-6),
        );
        let bf16 = x.to_dtype(DType::BF16)?;
        let ys16 = wick_nn::ops::batch_norm_eval(&bf16, &w, &b, &mean, &var, config)?;
        assert_eq!(ys16.dtype(), DType::BF16);
        // bf16 keeps 8 significant bits: relative rounding 2^-8 of each input and output.
        assert_close("bf16 via f32", &ys16.to_dtype(DType::F32)?, &expected, Tol::of_scale(2e-2));
    }
    let bad = wick_nn::ops::batch_norm_eval(
        &x,
        &w,
        &b,
        &seeded_tensor(&[2], 6),
        &var,
        wick_nn::ops::BatchNormOpConfig::default(),
    );
    let message = bad.expect_err("a (2,) running_mean for 3 channels is an error").to_string();
    assert!(message.contains("running_mean"), "{message}");
    Ok(())
}

#[test]
fn fused_relu_keeps_nan_in_train_and_eval_like_pytorch() -> candle::Result<()> {
    // torch: F.relu(F.batch_norm(x, ...)) with a NaN in channel 0's input (train) or in its
    // running mean (eval) gives NaN in every element of channel 0 and finite values elsewhere.
    // A `max(y, 0)` kernel would turn that channel into zeros and the NaN guard would not fire.
    let relu = wick_nn::ops::BatchNormOpConfig { eps: 1e-5, activation: BatchNormActivation::Relu };
    let channels = 2;
    let (w, b) = (
        Tensor::ones(channels, DType::F32, &Device::Cpu)?,
        Tensor::zeros(channels, DType::F32, &Device::Cpu)?,
    );
    let mut values = to_vec(&seeded_tensor(&[2, channels, 3, 3], 7));
    values[4] = f32::NAN; // item 0, channel 0
    let x = Tensor::from_vec(values, (2, channels, 3, 3), &Device::Cpu)?;
    let (ys, _) = wick_nn::ops::batch_norm_train(&x, &w, &b, relu)?;
    let channel = |t: &Tensor, c: usize| to_vec(&t.narrow(1, c, 1).unwrap());
    assert!(channel(&ys, 0).iter().all(|v| v.is_nan()), "train: channel 0 must be all NaN");
    assert!(channel(&ys, 1).iter().all(|v| v.is_finite()), "train: channel 1 stays finite");

    let x = seeded_tensor(&[2, channels, 3, 3], 8);
    let mean = Tensor::new(&[f32::NAN, 0.0], &Device::Cpu)?;
    let var = Tensor::ones(channels, DType::F32, &Device::Cpu)?;
    for xs in [x.clone(), x.to_dtype(DType::F64)?] {
        let d = |t: &Tensor| t.to_dtype(xs.dtype());
        let ys = wick_nn::ops::batch_norm_eval(&xs, &d(&w)?, &d(&b)?, &d(&mean)?, &d(&var)?, relu)?
            .to_dtype(DType::F32)?;
        assert!(channel(&ys, 0).iter().all(|v| v.is_nan()), "eval {:?}: channel 0", xs.dtype());
        assert!(channel(&ys, 1).iter().all(|v| v.is_finite()), "eval {:?}: channel 1", xs.dtype());
    }
    Ok(())
}

/// `read_parameter`: training reads the variable itself (autograd reaches it), evaluation a
/// detached copy of its values, so an eval-mode forward (here BatchNorm's) builds no graph.
#[test]
fn evaluation_reads_parameters_detached_and_builds_no_graph() -> candle::Result<()> {
    use candle::{Device, Tensor, Var};
    let weight = Var::new(&[1.5f32, -0.5], &Device::Cpu)?;
    let trained = wick_nn::read_parameter(weight.as_tensor(), true);
    assert!(trained.is_variable(), "training must read the variable");
    let evaluated = wick_nn::read_parameter(weight.as_tensor(), false);
    assert!(!evaluated.is_variable() && !evaluated.track_op());
    assert_eq!(evaluated.to_vec1::<f32>()?, vec![1.5, -0.5]);
    let xs = Tensor::new(&[[[[1.0f32, 2.0]], [[3.0, 4.0]]]], &Device::Cpu)?;
    let (ys_train, _) = wick_nn::ops::batch_norm_train(
        &xs,
        &trained,
        &Tensor::zeros(2, candle::DType::F32, &Device::Cpu)?,
        wick_nn::ops::BatchNormOpConfig::default(),
    )?;
    assert!(ys_train.track_op(), "a training forward is tracked");
    let ys_eval = wick_nn::ops::batch_norm_eval(
        &xs,
        &evaluated,
        &Tensor::zeros(2, candle::DType::F32, &Device::Cpu)?,
        &Tensor::zeros(2, candle::DType::F32, &Device::Cpu)?,
        &Tensor::ones(2, candle::DType::F32, &Device::Cpu)?,
        wick_nn::ops::BatchNormOpConfig::default(),
    )?;
    assert!(!ys_eval.track_op(), "an eval forward builds no graph");
    Ok(())
}

#[test]
fn add_relu_fused_gives_the_bits_of_batch_norm_then_add_relu() -> candle::Result<()> {
    // `forward_add_relu` against the layer's `forward_t` followed by `ops::add_relu`, two
    // separate layers with the same variables: output, all four gradients, the running
    // statistics after the step, and the eval mode. γ = 0 is fastai's `BatchZero` start (the
    // output is then relu(β + shortcut)); a third of the shortcut is -(γ·x̂ + β) of the
    // reference's own output, where the sum is 0 or close to it, so the ReLU's boundary is hit.
    for (index, gamma_zero) in [(0u64, false), (1, true)] {
        let (fused, _, fused_map, _) = layers(5, BatchNormActivation::Identity)?;
        let (composed, _, composed_map, _) = layers(5, BatchNormActivation::Identity)?;
        if gamma_zero {
            for map in [&fused_map, &composed_map] {
                var(map, "weight").set(&Tensor::zeros(5, DType::F32, &Device::Cpu)?)?;
            }
        }
        let xs = seeded_tensor(&[3, 5, 4, 6], 10 + index).affine(3.0, 0.5)?;
        // The train-mode branch γ·x̂ + β, computed aside (the layers' statistics untouched).
        let (normalised, _) = wick_nn::ops::batch_norm_train(
            &xs,
            &var(&composed_map, "weight").as_detached_tensor(),
            &var(&composed_map, "bias").as_detached_tensor(),
            wick_nn::ops::BatchNormOpConfig::default(),
        )?;
        let third = Tensor::from_vec(
            (0..360).map(|i| if i % 3 == 0 { -1.0f32 } else { 0.0 }).collect(),
            (3, 5, 4, 6),
            &Device::Cpu,
        )?;
        let shortcut = ((seeded_tensor(&[3, 5, 4, 6], 20 + index) * third.affine(1.0, 1.0)?)?
            + (normalised * &third)?)?;
        let upstream = seeded_tensor(&[3, 5, 4, 6], 30 + index);
        let mut results = Vec::new();
        for (name, map) in [("fused", &fused_map), ("composed", &composed_map)] {
            let (x, s) = (Var::from_tensor(&xs)?, Var::from_tensor(&shortcut)?);
            let ys = if name == "fused" {
                fused.forward_add_relu(x.as_tensor(), s.as_tensor(), true)?
            } else {
                wick_nn::ops::add_relu(&composed.forward_t(x.as_tensor(), true)?, s.as_tensor())?
            };
            let grads = (&ys * &upstream)?.sum_all()?.backward()?;
            let mut values = vec![to_vec(&ys)];
            for t in [x.as_tensor(), s.as_tensor()] {
                values.push(to_vec(grads.get(t).expect("gradient")));
            }
            for param in ["weight", "bias"] {
                values.push(to_vec(grads.get(var(map, param).as_tensor()).expect("gradient")));
            }
            for buffer in ["running_mean", "running_var"] {
                values.push(to_vec(var(map, buffer).as_tensor()));
            }
            results.push(values);
        }
        let what = ["output", "d input", "d shortcut", "d weight", "d bias", "mean", "var"];
        for ((fused, composed), what) in results[0].iter().zip(&results[1]).zip(what) {
            let bits = |v: &[f32]| v.iter().map(|v| v.to_bits()).collect::<Vec<_>>();
            assert_eq!(bits(fused), bits(composed), "{what}, γ = 0: {gamma_zero}");
        }
        // Where the sum is exactly 0, the output is 0 and nothing reaches the shortcut.
        for i in (0..360).step_by(3) {
            assert_eq!(results[0][0][i].to_bits(), 0, "output {i}");
            assert_eq!(results[0][2][i], 0.0, "d shortcut {i}");
        }
        let eval = fused.forward_add_relu(&xs, &shortcut, false)?;
        let reference = wick_nn::ops::add_relu(&composed.forward_t(&xs, false)?, &shortcut)?;
        assert_close("eval", &eval, &reference, Tol::EXACT);
    }
    Ok(())
}

#[test]
fn add_relu_fused_refuses_a_layer_with_its_own_relu_and_a_mismatched_shortcut() {
    let (relu_layer, ..) = layers(2, BatchNormActivation::Relu).unwrap();
    let xs = seeded_tensor(&[2, 2, 3, 3], 1);
    let error = relu_layer.forward_add_relu(&xs, &xs, true).unwrap_err();
    assert!(error.to_string().contains("without its own activation"), "{error}");
    let (layer, ..) = layers(2, BatchNormActivation::Identity).unwrap();
    let error = layer.forward_add_relu(&xs, &seeded_tensor(&[2, 2, 3, 2], 2), true).unwrap_err();
    assert!(error.to_string().contains("shortcut [2, 2, 3, 2] and input [2, 2, 3, 3]"), "{error}");
}

/// Where a CPU f32 tensor's storage begins.
fn data_address(t: &Tensor) -> usize {
    let (storage, _) = t.storage_and_layout();
    match &*storage {
        candle::Storage::Cpu(candle::CpuStorage::F32(values)) => values.as_ptr() as usize,
        _ => panic!("a CPU f32 tensor"),
    }
}

#[test]
fn eval_in_place_gives_the_bits_of_the_eval_forward_and_add_relu() -> candle::Result<()> {
    // `forward_eval_in_place` over a fresh tensor against `forward_t(_, false)` (then
    // `add_relu` with a residual), for both activations, after a training step has moved the
    // running statistics; a strided (non-contiguous) input runs the out-of-place ops.
    for activation in [BatchNormActivation::Identity, BatchNormActivation::Relu] {
        let (layer, ..) = layers(5, activation)?;
        layer.forward_t(&seeded_tensor(&[4, 5, 3, 3], 40).affine(2.0, 0.7)?, true)?;
        let xs = seeded_tensor(&[3, 5, 4, 6], 41).affine(3.0, 0.5)?;
        let bits = |t: &Tensor| to_vec(t).iter().map(|v| v.to_bits()).collect::<Vec<_>>();
        let expected = layer.forward_t(&xs, false)?;
        let fresh = xs.copy()?;
        let address = data_address(&fresh);
        let ys = layer.forward_eval_in_place(fresh, None)?;
        assert_eq!(bits(&ys), bits(&expected));
        assert_eq!(data_address(&ys), address, "written over the input's storage");
        // A contiguous view at an offset into a larger storage: only its own values change.
        let outer = Tensor::cat(&[&xs, &xs, &xs], 0)?;
        let middle = outer.narrow(0, 3, 3)?;
        assert_eq!(bits(&layer.forward_eval_in_place(middle, None)?), bits(&expected));
        assert_eq!(bits(&outer.narrow(0, 0, 3)?), bits(&xs), "values before the view");
        assert_eq!(bits(&outer.narrow(0, 6, 3)?), bits(&xs), "values after the view");
        let strided = xs.transpose(2, 3)?;
        let expected_strided = layer.forward_t(&strided, false)?;
        assert_eq!(bits(&layer.forward_eval_in_place(strided, None)?), bits(&expected_strided));
        if activation == BatchNormActivation::Identity {
            let residual = seeded_tensor(&[3, 5, 4, 6], 42);
            let expected = wick_nn::ops::add_relu(&expected, &residual)?;
            let ys = layer.forward_eval_in_place(xs.copy()?, Some(&residual))?;
            assert_eq!(bits(&ys), bits(&expected));
            assert!(to_vec(&ys).contains(&0.0), "some sums are cut by the ReLU");
            let error = layer.forward_eval_in_place(xs.copy()?, Some(&xs.narrow(3, 0, 5)?));
            assert!(error.unwrap_err().to_string().contains("residual [3, 5, 4, 5]"));
        } else {
            let error = layer.forward_eval_in_place(xs.copy()?, Some(&xs)).unwrap_err();
            assert!(error.to_string().contains("without its own activation"), "{error}");
        }
    }
    Ok(())
}
