//! `wick bench-step`: training-step throughput of an xresnet on a device, measured the way
//! `scripts/anchor_bench.py` measures PyTorch's (random inputs already on the device;
//! forward, cross-entropy, backward and fastai's Adam step; the device synchronised at the
//! end of every step; images/s from the median step). Prints one JSON line.

use candle::{Device, Tensor};
use serde_json::json;
use wick_models::XResNetConfig;
use wick_train::Precision;

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

pub(crate) fn run(args: &BenchStepArgs) -> anyhow::Result<()> {
    let device = plan::device(&args.device)?;
    let config = XResNetConfig::named(&args.arch, 10)
        .ok_or_else(|| anyhow::anyhow!("--arch {}: not an xresnet name", args.arch))?;
    let (model, varmap) = ModelPlan { config, seed: 0 }.build(&device)?;
    let mut optimizer = OptimizerPlan::fastai_adam().build(&varmap)?;
    let n = args.batch_size * 3 * args.size * args.size;
    let pixels: Vec<f32> =
        (0..n).map(|i| ((i * 2_654_435_761) % 1000) as f32 / 500.0 - 1.0).collect();
    let xs = Tensor::from_vec(pixels, (args.batch_size, 3, args.size, args.size), &Device::Cpu)?
        .to_device(&device)?;
    let labels: Vec<u32> = (0..args.batch_size as u32).map(|i| i % 10).collect();
    let ys = Tensor::from_vec(labels, args.batch_size, &Device::Cpu)?.to_device(&device)?;

    let mut step = || -> anyhow::Result<f64> {
        let started = std::time::Instant::now();
        let logits = args.precision.forward_t(&model, &xs, true)?;
        let loss = wick_train::cross_entropy(&logits, &ys)?;
        let grads = loss.backward()?;
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
