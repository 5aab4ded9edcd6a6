//! `wick device-check`: does this build's path on a device agree with the CPU reference?
//! Every wick-nn op forward and backward (`wick_nn::check`) in f32 with cuDNN's TF32 off, in
//! f32 with it on, and in bf16; then one xresnet50 training step (forward, cross-entropy,
//! backward, fastai's Adam) from the same weights and batch on the CPU and on the device, in
//! f32 and in bf16 mixed precision. Prints a table; `--json` writes every figure. The GPU
//! check script runs it on the GPU machine, where there is no cargo to run the CUDA tests.

use std::path::PathBuf;

use anyhow::Context;
use candle::{DType, Device, Tensor};
use serde_json::json;
use wick_models::{Depth, XResNetConfig};
use wick_nn::check::{CheckConfig, OpReport, compare_ops};
use wick_train::{Precision, trainable_params};

use crate::bench_step::synthetic_batch;
use crate::plan::{self, ModelPlan, OptimizerPlan};
use wick_train::forward_backward;

/// What `wick device-check` was asked to do.
pub(crate) struct DeviceCheckArgs {
    pub(crate) device: String,
    pub(crate) json: Option<PathBuf>,
    pub(crate) seed: u64,
    /// Image side and batch size of the training-step comparison.
    pub(crate) size: usize,
    pub(crate) batch_size: usize,
}

/// Runs the comparison; `Ok(false)` when an op disagrees beyond its tolerance.
pub(crate) fn run(args: &DeviceCheckArgs) -> anyhow::Result<bool> {
    let device = plan::device(&args.device)?;
    let mut passed = true;
    let mut op_rows = Vec::new();
    println!("{:<44} {:<12} {:>5} {:>11} {:>9}  ok", "op", "tensor", "dtype", "rel diff", "tol");
    for (dtype, tf32) in [(DType::F32, false), (DType::F32, true), (DType::BF16, false)] {
        wick_nn::ops::set_cudnn_allow_tf32(tf32);
        let config = CheckConfig { dtype, seed: args.seed, tf32 };
        let reports = compare_ops(&device, &config).context("running the op comparison")?;
        for report in &reports {
            passed &= report.passed();
            print_report(report, tf32);
            op_rows.push(json!({
                "case": report.case,
                "tensor": report.tensor,
                "dtype": format!("{:?}", report.dtype),
                "tf32": tf32,
                "max_abs_diff": report.max_abs_diff,
                "scale": report.scale,
                "relative": report.relative(),
                "tolerance": report.tolerance,
                "passed": report.passed(),
            }));
        }
    }
    wick_nn::ops::set_cudnn_allow_tf32(false);
    let mut steps = Vec::new();
    for precision in [Precision::F32, Precision::Bf16] {
        let started = std::time::Instant::now();
        let cpu = train_step(&Device::Cpu, precision, args)?;
        let tested = train_step(&device, precision, args)?;
        let comparison = compare_steps(&cpu, &tested)?;
        println!(
            "train step xresnet50 {}px batch {} {precision:?}: loss cpu {:.6} device {:.6}, logits \
             rel {:.2e}, worst grad rel {:.2e} ({}), update rel {:.2e} [{:.1} s]",
            args.size,
            args.batch_size,
            cpu.loss,
            tested.loss,
            comparison.logits,
            comparison.worst_grad,
            comparison.worst_grad_param,
            comparison.update,
            started.elapsed().as_secs_f64()
        );
        steps.push(json!({
            "precision": format!("{precision:?}"),
            "size": args.size,
            "batch_size": args.batch_size,
            "loss_cpu": cpu.loss,
            "loss_device": tested.loss,
            "logits_relative": comparison.logits,
            "worst_grad_relative": comparison.worst_grad,
            "worst_grad_param": comparison.worst_grad_param,
            "median_grad_relative": comparison.median_grad,
            "update_relative": comparison.update,
        }));
    }
    wick_nn::ops::set_cudnn_allow_tf32(true);
    println!("ops: {}", if passed { "all within tolerance" } else { "SOME OUTSIDE TOLERANCE" });
    if let Some(path) = &args.json {
        let report = json!({
            "device": args.device,
            "seed": args.seed,
            "ops_passed": passed,
            "ops": op_rows,
            "train_steps": steps,
        });
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(passed)
}

fn print_report(report: &OpReport, tf32: bool) {
    let dtype = match (report.dtype, tf32) {
        (DType::F32, true) => "tf32".to_string(),
        (dtype, _) => format!("{dtype:?}").to_lowercase(),
    };
    println!(
        "{:<44} {:<12} {:>5} {:>11.3e} {:>9.1e}  {}",
        report.case,
        report.tensor,
        dtype,
        report.relative(),
        report.tolerance,
        if report.passed() { "ok" } else { "FAIL" }
    );
}

/// What one training step produced, on the CPU.
struct StepResult {
    loss: f32,
    logits: Tensor,
    /// Gradient and update (weight after minus before) of each parameter, sorted by name.
    grads: Vec<(String, Tensor)>,
    updates: Vec<Tensor>,
}

/// One xresnet50 step on `device` from seeded weights and a seeded batch.
fn train_step(
    device: &Device,
    precision: Precision,
    args: &DeviceCheckArgs,
) -> anyhow::Result<StepResult> {
    let config = XResNetConfig::depth(Depth::D50, 10);
    let (model, varmap) = ModelPlan { config, seed: args.seed }.build(device)?;
    let (xs, ys) = synthetic_batch(args.batch_size, args.size, device)?;
    let params = trainable_params(&varmap, wick_models::is_buffer);
    let before: Vec<Tensor> =
        params.iter().map(|(_, var)| var.as_tensor().copy()).collect::<candle::Result<_>>()?;
    let mut optimizer = OptimizerPlan::fastai_adam().build(&varmap)?;
    let (logits, loss, grads) = forward_backward(&model, precision, &xs, &ys)?;
    let mut grad_list = Vec::new();
    for (name, var) in &params {
        if let Some(grad) = grads.get(var.as_tensor()) {
            grad_list.push((name.clone(), grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
        }
    }
    optimizer.step(&grads)?;
    let updates = params
        .iter()
        .zip(&before)
        .map(|((_, var), before)| (var.as_tensor() - before)?.to_device(&Device::Cpu))
        .collect::<candle::Result<_>>()?;
    Ok(StepResult {
        loss: loss.to_dtype(DType::F32)?.to_scalar::<f32>()?,
        logits: logits.to_dtype(DType::F32)?.to_device(&Device::Cpu)?,
        grads: grad_list,
        updates,
    })
}

struct StepComparison {
    logits: f64,
    worst_grad: f64,
    worst_grad_param: String,
    median_grad: f64,
    update: f64,
}

fn norm(t: &Tensor) -> candle::Result<f64> {
    Ok(t.sqr()?.sum_all()?.to_scalar::<f32>()?.sqrt() as f64)
}

/// `‖a - b‖ / ‖b‖` (the absolute norm when `b` is zero).
fn relative(a: &Tensor, b: &Tensor) -> candle::Result<f64> {
    let scale = norm(b)?;
    let diff = norm(&(a - b)?)?;
    Ok(if scale > 0.0 { diff / scale } else { diff })
}

fn compare_steps(cpu: &StepResult, tested: &StepResult) -> anyhow::Result<StepComparison> {
    let mut grads = Vec::new();
    for ((name, a), (_, b)) in tested.grads.iter().zip(&cpu.grads) {
        grads.push((relative(a, b)?, name.clone()));
    }
    grads.sort_by(|a, b| a.0.total_cmp(&b.0));
    let (worst_grad, worst_grad_param) = grads.last().cloned().unwrap_or((0.0, String::new()));
    let median_grad = grads.get(grads.len() / 2).map(|g| g.0).unwrap_or(0.0);
    let flat = |updates: &[Tensor]| -> candle::Result<Tensor> {
        let flats = updates.iter().map(|u| u.flatten_all()).collect::<candle::Result<Vec<_>>>()?;
        Tensor::cat(&flats, 0)
    };
    Ok(StepComparison {
        logits: relative(&tested.logits, &cpu.logits)?,
        worst_grad,
        worst_grad_param,
        median_grad,
        update: relative(&flat(&tested.updates)?, &flat(&cpu.updates)?)?,
    })
}
