//! `cargo bench -p wick-train --bench models -- --case NAME [--steps N] [--profile]`: the
//! throughput of one xresnet case, for `cargo xtask bench models` to put beside PyTorch
//! running the same architecture (`../shared/bench/anchor_bench.py`). One case per process, so
//! the peak resident memory it reports (`VmHWM`) is the case's own.
//!
//! Cases (batch 32, n_out 10, f32, random inputs from a seeded generator):
//! `train50_128`, `train50_224`, `train18_64`, `train18_128` — a training step: forward in
//! train mode, cross-entropy, backward, and (reported separately) fastai's Adam step;
//! `infer50_128`, `infer50_224`, `infer18_64`, `infer18_128` — an eval-mode forward.
//! The median over the timed steps after one warm-up step. `--profile` also prints the time
//! of each wick-nn kernel in the last step (`"bench":"models-ops"` lines).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_models::{Depth, XResNetConfig, seeded_var_builder, xresnet};
use wick_train::{Adam, AdamConfig, Optimizer, cross_entropy, optim_params, trainable_params};

fn main() {
    let mut case = None;
    let mut steps = 5usize;
    let mut profile = false;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--case" => case = args.next(),
            "--steps" => {
                steps = args.next().and_then(|n| n.parse().ok()).expect("--steps needs a number")
            }
            "--profile" => profile = true,
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    let case = case.expect("--case NAME (train50_128, infer18_64, ...)");
    let (train, depth, size) = parse_case(&case).unwrap_or_else(|| panic!("unknown case {case}"));
    let batch = 32;
    let device = Device::Cpu;
    let varmap = VarMap::new();
    let model = xresnet(
        &XResNetConfig::depth(depth, 10),
        0,
        seeded_var_builder(&varmap, 0, DType::F32, &device),
    )
    .expect("model");
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    let pixels: Vec<f32> =
        (0..batch * 3 * size * size).map(|_| rng.random::<f32>() * 2.0 - 1.0).collect();
    let xs = Tensor::from_vec(pixels, (batch, 3, size, size), &device).expect("input");
    let labels: Vec<u32> = (0..batch).map(|_| rng.random_range(0..10)).collect();
    let ys = Tensor::from_vec(labels, batch, &device).expect("labels");
    let mut optimizer = Adam::new(
        optim_params(trainable_params(&varmap, wick_models::is_buffer)),
        AdamConfig::fastai_defaults(1e-3),
    )
    .expect("adam");

    let mut forward_backward = Vec::new();
    let mut optimizer_steps = Vec::new();
    for step in 0..=steps {
        let last = step == steps;
        wick_nn::profile::set_enabled(profile && last);
        let start = Instant::now();
        if train {
            let loss =
                cross_entropy(&model.forward_t(&xs, true).expect("forward"), &ys).expect("loss");
            let grads = loss.backward().expect("backward");
            let middle = Instant::now();
            optimizer.step(&grads).expect("adam step");
            if step > 0 {
                forward_backward.push((middle - start).as_secs_f64());
                optimizer_steps.push(middle.elapsed().as_secs_f64());
            }
        } else {
            let logits = model.forward_t(&xs, false).expect("forward").detach();
            std::hint::black_box(logits);
            if step > 0 {
                forward_backward.push(start.elapsed().as_secs_f64());
            }
        }
        if profile && last {
            let total = forward_backward.last().copied().unwrap_or(0.0);
            let mut measured = 0.0;
            for op in wick_nn::profile::take() {
                measured += op.seconds;
                println!(
                    "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"op\":\"{}\",\"ms\":{:.1},\"calls\":{}}}",
                    op.op,
                    op.seconds * 1000.0,
                    op.calls
                );
            }
            println!(
                "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"op\":\"other (candle ops: head, mean, adds, autograd bookkeeping)\",\"ms\":{:.1},\"calls\":1}}",
                (total - measured) * 1000.0
            );
            if train {
                println!(
                    "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"op\":\"fastai Adam step (fused)\",\"ms\":{:.1},\"calls\":1}}",
                    optimizer_steps.last().copied().unwrap_or(0.0) * 1000.0
                );
            }
        }
    }
    let median = |times: &mut Vec<f64>| -> f64 {
        times.sort_by(f64::total_cmp);
        times.get(times.len() / 2).copied().unwrap_or(f64::NAN)
    };
    let step_median = median(&mut forward_backward);
    let adam_median = if optimizer_steps.is_empty() { 0.0 } else { median(&mut optimizer_steps) };
    println!(
        "{{\"bench\":\"models\",\"impl\":\"wick\",\"case\":\"{case}\",\"batch\":{batch},\"steps\":{steps},\"median_s\":{step_median:.4},\"images_per_s\":{:.2},\"adam_s\":{adam_median:.4},\"with_adam_images_per_s\":{:.2},\"peak_rss_mb\":{:.0}}}",
        batch as f64 / step_median,
        batch as f64 / (step_median + adam_median),
        peak_rss_mb()
    );
}

fn parse_case(case: &str) -> Option<(bool, Depth, usize)> {
    let (train, rest) = if let Some(rest) = case.strip_prefix("train") {
        (true, rest)
    } else {
        (false, case.strip_prefix("infer")?)
    };
    let (depth, size) = rest.split_once('_')?;
    let depth = match depth {
        "18" => Depth::D18,
        "34" => Depth::D34,
        "50" => Depth::D50,
        "101" => Depth::D101,
        "152" => Depth::D152,
        _ => return None,
    };
    Some((train, depth, size.parse().ok()?))
}

/// The process's peak resident set (Linux `VmHWM`), in MB.
fn peak_rss_mb() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kb| kb.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}
