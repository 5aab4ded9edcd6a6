//! `wick bench-step`: training-step throughput of an xresnet on a device, measured the way
//! `scripts/anchor_bench.py` measures PyTorch's (random inputs already on the device;
//! forward, cross-entropy, backward and fastai's Adam step; the device synchronised at the
//! end of every step; images/s from the median step). Prints one JSON line. Also the synthetic
//! batch that `device-check` trains on too (both run `wick_train::forward_backward`).

use candle::{Device, Tensor};
use serde_json::json;
use wick_models::XResNetConfig;
use wick_train::{Precision, forward_backward};

use crate::plan::{self, ModelPlan, OptimizerPlan};

/// What `wick bench-step` was asked to measure.
pub(crate) struct BenchStepArgs {
    pub(crate) arch: String,
    pub(crate) size: usize,
    pub(crate) batch_size: usize,
    pub(crate) precision: Precision,
    pub(crate) device: String,
    pub(crate) steps: usize,
    pub(crate) warmup: usize,
}

/// The synthetic batch `bench-step` and `device-check` train on: `batch_size` images
/// `(B, 3, size, size)` of a fixed pattern of values in [-1, 1) and labels `(B,)` cycling
/// through 10 classes, on `device`.
///
/// # Errors
/// The tensors cannot be put on `device`.
pub(crate) fn synthetic_batch(
    batch_size: usize,
    size: usize,
    device: &Device,
) -> anyhow::Result<(Tensor, Tensor)> {
    let n = batch_size * 3 * size * size;
    let pixels: Vec<f32> =
        (0..n).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
    let xs =
        Tensor::from_vec(pixels, (batch_size, 3, size, size), &Device::Cpu)?.to_device(device)?;
    let labels: Vec<u32> = (0..batch_size as u32).map(|i| i % 10).collect();
    let ys = Tensor::from_vec(labels, batch_size, &Device::Cpu)?.to_device(device)?;
    Ok((xs, ys))
}

pub(crate) fn run(args: &BenchStepArgs) -> anyhow::Result<()> {
    let device = plan::device(&args.device)?;
    let config = XResNetConfig::named(&args.arch, 10)
        .ok_or_else(|| anyhow::anyhow!("--arch {}: not an xresnet name", args.arch))?;
    let (model, varmap) = ModelPlan { config, seed: 0 }.build(&device)?;
    let mut optimizer = OptimizerPlan::fastai_adam().build(&varmap)?;
    let (xs, ys) = synthetic_batch(args.batch_size, args.size, &device)?;

    let mut step = || -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        let (_, _, grads) = forward_backward(&model, args.precision, &xs, &ys)?;
        optimizer.step(&grads)?;
        device.synchronize()?;
        Ok(started.elapsed().as_secs_f64())
    };
    let warm_started = std::time::Instant::now();
    for _ in 0..args.warmup {
        step()?;
    }
    let warmup_s = warm_started.elapsed().as_secs_f64();
    let mut times = (0..args.steps.max(1)).map(|_| step()).collect::<anyhow::Result<Vec<f64>>>()?;
    times.sort_by(f64::total_cmp);
    let median = times[times.len() / 2];
    println!(
        "{}",
        json!({
            "case": format!("train_{}_{}", args.arch, args.size),
            "kind": "train",
            "impl": "wick",
            "arch": args.arch,
            "size": args.size,
            "bs": args.batch_size,
            "precision": format!("{:?}", args.precision).to_lowercase(),
            "device": args.device,
            "median_s": median,
            "min_s": times[0],
            "max_s": times[times.len() - 1],
            "steps_timed": times.len(),
            "warmup_steps": args.warmup,
            "warmup_s": warmup_s,
            "images_per_s": args.batch_size as f64 / median,
        })
    );
    Ok(())
}
