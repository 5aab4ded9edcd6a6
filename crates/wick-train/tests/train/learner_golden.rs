//! Golden end-to-end check against fastai's own Learner: the same tiny xresnet, the same initial
//! weights, the same ten batches, `fit_one_cycle(1, 1e-3)` with fastai's Adam defaults; the
//! scheduled lr/mom, the ten training losses, the smoothed losses and the epoch row must match
//! `tests/fixtures/learner.safetensors`, written by `make_learner_fixture.py`.
//!
//! The ReLU subgradient matters in this run: fastai's zero-initialised residual BatchNorms make
//! xresnet's identity blocks apply ReLU to exact zeros, where torch's gradient is 0 and candle's
//! own `relu` passes 1 (1.3e-4 apart from step 2 on). wick-models uses wick-nn's ReLU, which
//! follows torch, so the whole run is held to plain fastai.

use std::collections::HashMap;

use candle::{DType, Device, Tensor, Var};
use candle_nn::VarMap;
use wick_models::{Depth, XResNetConfig, seeded_var_builder, xresnet};
use wick_train::{
    Adam, AdamConfig, BatchRecord, FitOutcome, FitRecord, InMemoryBatches, Learner, LearnerConfig,
    Loss, Metric, OneCycle, optim_params, trainable_params,
};

use crate::common::{F64_ULPS, fixture, fixture_values, get, scalar};
use wick_testing::{Tol, assert_close};

/// Loss tolerance after optimizer steps. Forward passes agree to float32 rounding (the first
/// loss, before any step, is held to 2e-6). Each step then adds the difference of two float32
/// gradient computations (other summation orders in conv backward and BatchNorm reductions),
/// which Adam divides by √v + 1e-5: for near-zero gradients a relative error in g becomes the
/// same relative error in the update, so the weights drift by ~1e-6 relative per step. Measured
/// over the ten steps: at most 8e-6 relative (loss 7, and the valid loss); 5e-5 leaves margin and
/// is still below the 1.3e-4 that a different ReLU subgradient alone would make at step 2.
const AFTER_STEPS: Tol = Tol { abs: 0.0, rel: 5e-5, of_scale: 0.0 };
const FIRST_LOSS: Tol = Tol { abs: 0.0, rel: 2e-6, of_scale: 0.0 };

/// `x.float() / 255` of the fixture's uint8 images, in float32 as torch computes it.
fn images(fx: &std::collections::HashMap<String, Tensor>, key: &str) -> Tensor {
    let bytes = get(fx, key);
    let shape = bytes.shape().clone();
    let values: Vec<f32> = bytes
        .flatten_all()
        .unwrap()
        .to_vec1::<u8>()
        .unwrap()
        .iter()
        .map(|&v| f32::from(v) / 255.0)
        .collect();
    Tensor::from_vec(values, shape, &Device::Cpu).unwrap()
}

fn batches(images: &Tensor, labels: &Tensor, batch_size: usize) -> Vec<(Tensor, Tensor)> {
    let labels = labels.to_dtype(DType::U32).unwrap();
    let n = labels.dim(0).unwrap();
    (0..n / batch_size)
        .map(|b| {
            (
                images.narrow(0, b * batch_size, batch_size).unwrap(),
                labels.narrow(0, b * batch_size, batch_size).unwrap(),
            )
        })
        .collect()
}

/// Trains the Rust side of the golden run and returns its record.
fn train_like_fastai(fx: &HashMap<String, Tensor>) -> FitRecord {
    // fastai: model = xresnet18(n_out=10, widen=0.125); its initial state_dict is `init.*`.
    // Pre-fill the VarMap by name, then build: the seeded builder returns existing variables.
    let varmap = VarMap::new();
    let mut n_init = 0;
    {
        let mut data = varmap.data().lock().unwrap();
        for (key, tensor) in fx {
            if let Some(name) = key.strip_prefix("init.") {
                data.insert(name.to_string(), Var::from_tensor(&tensor.copy().unwrap()).unwrap());
                n_init += 1;
            }
        }
    }
    let config = XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D18, 10) };
    let model =
        xresnet(&config, 0, seeded_var_builder(&varmap, 0, DType::F32, &Device::Cpu)).unwrap();
    assert_eq!(varmap.all_vars().len(), n_init, "every variable comes from fastai's state_dict");

    // fastai: DataLoader(train, bs=8, shuffle=False), DataLoader(valid, bs=8).
    let train = batches(&images(fx, "train.images"), &get(fx, "train.labels"), 8);
    let valid = batches(&images(fx, "valid.images"), &get(fx, "valid.labels"), 8);
    assert_eq!((train.len(), valid.len()), (10, 1));
    // fastai: Learner(dls, model, loss_func=CrossEntropyLossFlat(), metrics=accuracy) with its
    // default opt_func=Adam (mom 0.9, sqr_mom 0.99, eps 1e-5, wd 0.01, no wd on BN and bias).
    let optimizer = Adam::new(
        optim_params(trainable_params(&varmap, wick_models::is_buffer)),
        AdamConfig::fastai_defaults(1e-3),
    )
    .unwrap();
    let mut learner = Learner::new(
        model,
        varmap,
        Box::new(optimizer),
        Box::new(InMemoryBatches::new(train)),
        Box::new(InMemoryBatches::new(valid)),
        LearnerConfig { loss: Loss::CrossEntropy, metrics: vec![Metric::Accuracy], seed: 0 },
    );
    // fastai: learn.fit_one_cycle(1, 1e-3).
    let outcome = learner.fit_one_cycle(1, OneCycle::fastai_defaults(1e-3)).unwrap();
    assert_eq!(outcome, FitOutcome::Completed);
    learner.recorder().fits()[0].clone()
}

fn column(fit: &FitRecord, f: fn(&BatchRecord) -> f64) -> Vec<f64> {
    fit.batches.iter().map(f).collect()
}

#[test]
fn first_ten_losses_match_fastai() {
    let fx = fixture("learner.safetensors");
    let fit = train_like_fastai(&fx);

    // HyperRecorder.before_batch: opt.hypers[-1]['lr'], ['mom'] as ParamScheduler set them.
    assert_close("lr", column(&fit, |b| b.lr), fixture_values(&fx, "lr"), F64_ULPS);
    assert_close("mom", column(&fit, |b| b.mom), fixture_values(&fx, "mom"), F64_ULPS);
    // HyperRecorder.after_batch: learn.loss.item() and learn.smooth_loss.item().
    let losses = column(&fit, |b| f64::from(b.loss));
    assert_close("loss[0]", &losses[..1], &fixture_values(&fx, "loss")[..1], FIRST_LOSS);
    assert_close("loss", &losses, fixture_values(&fx, "loss"), AFTER_STEPS);
    let smooth = column(&fit, |b| f64::from(b.smooth_loss));
    assert_close("smooth_loss", &smooth, fixture_values(&fx, "smooth_loss"), AFTER_STEPS);

    // learn.recorder.values[-1] = [train_loss, valid_loss, accuracy]. The valid loss goes
    // through the trained weights and the BatchNorm running statistics of all ten steps.
    let row = &fit.epochs[0];
    let expected_train = scalar(&get(&fx, "train_loss"));
    assert_close("train_loss", f64::from(row.train_loss.unwrap()), expected_train, AFTER_STEPS);
    let valid = row.valid.as_ref().unwrap();
    assert_close("valid_loss", valid.loss, scalar(&get(&fx, "valid_loss")), AFTER_STEPS);
    // accuracy: 4 of 8 (a count, so exact up to the float32 fastai stores it in).
    assert_close(
        "accuracy",
        valid.metrics[0],
        scalar(&get(&fx, "accuracy")),
        Tol { abs: 1e-7, rel: 0.0, of_scale: 0.0 },
    );
}
