//! `cargo bench -p wick-train --bench models -- --case NAME [--batch B] [--steps N] [--warmup W]
//! [--profile] [--malloc-defaults] [--gemm BACKEND]`: the throughput of one xresnet case, for `cargo xtask bench models` to put
//! beside PyTorch running the same architecture (`scripts/anchor_bench.py`), alternating the
//! two process by process. One case per process, so the peak resident memory it reports
//! (`VmHWM`) is the case's own.
//!
//! Cases (batch `B`, default 32; n_out 10, f32, random inputs from a seeded generator):
//! `train<depth>_<size>` — a training step as PyTorch's bench times it: forward in train mode,
//! cross-entropy, backward and fastai's Adam step, all inside the timed interval;
//! `infer<depth>_<size>` — an eval-mode forward. `W` untimed warm-up steps (default 1), then
//! `N` timed ones (default 5): one JSON line with every step time, the median, min and max.
//!
//! `--malloc-defaults` leaves glibc's allocator at its defaults (the bench otherwise keeps freed
//! memory as the `wick` CLI does, `wick_nn::allocator`), to measure what that is worth.
//! `--gemm` runs the convolutions on another gemm backend than the CPU's default
//! (`wick_nn::GemmBackend::name`: `native-avx512`, `native`, `gemm`), to compare them in one
//! binary.
//!
//! `--profile` is a different run: after the warm-up it runs the `N` steps with wick-nn's
//! per-op profiler on and prints only per-step means: `"bench":"models-ops"` lines, one per
//! op, and `"bench":"models-conv"` lines, one per convolution op and shape (named like the nn
//! bench's cases, for `cargo xtask bench models --profile` to put beside PyTorch's profiled
//! step); the profiler's own cost makes those steps slower, so they never yield a throughput.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::time::Instant;

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_models::{Depth, XResNetConfig, seeded_var_builder, xresnet};
use wick_nn::allocator::AllocatorTuning;
use wick_train::{
    Adam, AdamConfig, Optimizer, Precision, forward_backward, optim_params, trainable_params,
};

fn main() {
    let mut case = None;
    let (mut batch, mut steps, mut warmup) = (32usize, 5usize, 1usize);
    let (mut profile, mut malloc_defaults) = (false, false);
    let mut args = std::env::args().skip(1);
    let number = |value: Option<String>, flag: &str| -> usize {
        value.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("{flag} needs a number"))
    };
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--case" => case = args.next(),
            "--batch" => batch = number(args.next(), "--batch"),
            "--steps" => steps = number(args.next(), "--steps"),
            "--warmup" => warmup = number(args.next(), "--warmup"),
            "--profile" => profile = true,
            "--malloc-defaults" => malloc_defaults = true,
            "--gemm" => {
                let name = args.next().unwrap_or_default();
                let backend = wick_nn::GemmBackend::from_name(&name).unwrap_or_else(|| {
                    panic!("unknown --gemm {name:?} (native-avx512|native|gemm)")
                });
                wick_nn::set_gemm_backend(backend).expect("--gemm: backend not available here");
            }
            "--bench" => {}
            other => panic!("unknown argument {other}"),
        }
    }
    assert!(batch > 0 && steps > 0, "--batch and --steps must be at least 1");
    if !malloc_defaults {
        // As the `wick` CLI runs (wick_nn::allocator); `--malloc-defaults` measures without.
        let tuning = wick_nn::allocator::retain_freed_memory();
        assert!(
            matches!(tuning, AllocatorTuning::Applied | AllocatorTuning::Unsupported),
            "{tuning:?}"
        );
    }
    let case = case.expect("--case NAME (train50_128, infer18_64, ...)");
    let (train, depth, size) = parse_case(&case).unwrap_or_else(|| panic!("unknown case {case}"));
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

    // One step; returns (whole step, forward + backward) seconds.
    let mut step = || -> (f64, f64) {
        let start = Instant::now();
        if train {
            let (_, _, grads) =
                forward_backward(&model, Precision::F32, &xs, &ys).expect("forward and backward");
            let middle = start.elapsed().as_secs_f64();
            optimizer.step(&grads).expect("adam step");
            (start.elapsed().as_secs_f64(), middle)
        } else {
            std::hint::black_box(model.forward_t(&xs, false).expect("forward").detach());
            let all = start.elapsed().as_secs_f64();
            (all, all)
        }
    };
    for _ in 0..warmup {
        step();
    }
    if profile {
        // Every timed step with the profiler on; per-step means.
        wick_nn::profile::set_enabled(true);
        let (mut total, mut forward_backward) = (0.0, 0.0);
        for _ in 0..steps {
            let (all, middle) = step();
            (total, forward_backward) = (total + all, forward_backward + middle);
        }
        wick_nn::profile::set_enabled(false);
        let per_step = 1.0 / steps as f64;
        let ms = |seconds: f64| seconds * per_step * 1000.0;
        let calls = |count: u64| count as f64 * per_step;
        let mut measured = 0.0;
        // Per op: the sums over its convolutions (`take` sorts by op, then convolution, so
        // an op's entries are consecutive).
        let mut per_op: Vec<(&str, f64, u64)> = Vec::new();
        for op in wick_nn::profile::take() {
            measured += op.seconds;
            match per_op.last_mut() {
                Some((name, seconds, count)) if *name == op.op => {
                    *seconds += op.seconds;
                    *count += op.calls;
                }
                _ => per_op.push((op.op, op.seconds, op.calls)),
            }
            if let Some(conv) = &op.conv {
                println!(
                    "{{\"bench\":\"models-conv\",\"impl\":\"wick\",\"case\":\"{case}\",\"batch\":{batch},\"op\":\"{}\",\"conv\":\"{conv}\",\"ms\":{:.3},\"calls\":{}}}",
                    op.op,
                    ms(op.seconds),
                    calls(op.calls)
                );
            }
        }
        for (op, seconds, count) in per_op {
            println!(
                "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"batch\":{batch},\"op\":\"{op}\",\"ms\":{:.1},\"calls\":{}}}",
                ms(seconds),
                calls(count)
            );
        }
        println!(
            "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"batch\":{batch},\"op\":\"other (candle ops: head, mean, adds, autograd bookkeeping)\",\"ms\":{:.1},\"calls\":1}}",
            ms(forward_backward - measured)
        );
        if train {
            println!(
                "{{\"bench\":\"models-ops\",\"case\":\"{case}\",\"batch\":{batch},\"op\":\"fastai Adam step (fused)\",\"ms\":{:.1},\"calls\":1}}",
                ms(total - forward_backward)
            );
        }
        return;
    }
    let (mut times, mut forward_backward): (Vec<f64>, Vec<f64>) =
        (0..steps).map(|_| step()).unzip();
    let step_list = times.iter().map(|t| format!("{t:.4}")).collect::<Vec<_>>().join(",");
    let median = |times: &mut Vec<f64>| -> f64 {
        times.sort_by(f64::total_cmp);
        let n = times.len();
        if n % 2 == 1 { times[n / 2] } else { (times[n / 2 - 1] + times[n / 2]) / 2.0 }
    };
    let step_median = median(&mut times);
    let forward_backward_median = median(&mut forward_backward);
    println!(
        "{{\"bench\":\"models\",\"impl\":\"wick\",\"case\":\"{case}\",\"batch\":{batch},\"warmup\":{warmup},\"steps\":{steps},\"step_times_s\":[{step_list}],\"median_s\":{step_median:.4},\"min_s\":{:.4},\"max_s\":{:.4},\"images_per_s\":{:.2},\"forward_backward_median_s\":{forward_backward_median:.4},\"peak_rss_mb\":{:.0}}}",
        times[0],
        times[times.len() - 1],
        batch as f64 / step_median,
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
