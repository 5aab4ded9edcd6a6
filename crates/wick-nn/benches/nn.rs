//! Benchmark of wick-nn's conv2d, max_pool2d and fused BatchNorm+ReLU against candle's stock
//! ops, on the shapes that dominate an xresnet50 at 224 and 128 px with batch 32.
//!
//! Prints one JSON line per (case, impl) to stdout, the same schema as `torch_nn.py`:
//! `{"bench":"nn","case":"c3x3_64_56","kind":"conv","impl":"wick","fwd_ms":..,"fwd_gflops":..,
//! "fwdbwd_ms":..,"fwdbwd_gflops":..}` (wick lines add `"gemm"`, the backend used); pool and
//! batch-norm cases report `fwd_gbps`/`fwdbwd_gbps` instead of GFLOP/s.
//!
//! - FLOPs are 2·MAC; forward+backward counts 3× the forward FLOPs.
//! - Pool bytes: forward reads the input and writes the output; backward reads the input and
//!   the output gradient and writes the input gradient. candle has no padded max pool and no
//!   backward for kernel != stride: its line times zero padding + its pool, forward only.
//! - Batch-norm cases (`"kind":"bn"`, train-mode BatchNorm+ReLU; candle = candle-nn's
//!   BatchNorm then relu) count 2 tensors forward and 6 forward+backward.
//! - Times are medians after a warm-up. candle's stock backward is slow, so a stock case
//!   whose warm-up takes over a second reports that single run.
//!
//! Case names: `c{K}x{K}[s2]_{C}[_{O}]_{H}` (O omitted when equal to C, H the input size),
//! `maxpool3s2_{C}_{H}`, `bnrelu_{C}_{H}`. `--cases` also takes any case named by those
//! patterns (e.g. xresnet18's `c3x3s2_64_128_12`), on both sides.
//!
//! Usage: `cargo bench -p wick-nn --bench nn -- [--quick] [--cases a,b] [--impls wick,candle]
//! [--gemm native-avx512|native|gemm|openblas] [--batch N]` (`native` is the AVX2 kernel, also
//! on an AVX-512 machine), and for tuning on a machine shared with other
//! jobs: `--cpu-time` (CPU time per rayon thread instead of wall time), `--best` (fastest
//! sample instead of the median), `--reps N`, `--profile` (each wick conv or batch-norm
//! case's time per op: forward, input gradient, weight gradient, statistics, ...;
//! `"bench":"nn-ops"` lines), `--probe-gemm` (the bare single-threaded gemm
//! backends on conv-shaped products), `--compare-gemm` (every conv case with every available
//! gemm backend, alternating backends each repetition; `"bench":"nn-gemm"` lines).

#![allow(clippy::print_stdout, clippy::print_stderr)]

use candle::{Device, Tensor, Var};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Instant;
use wick_nn::ops::{self, Conv2dConfig, MaxPool2dConfig};
use wick_nn::{GemmBackend, gemm_backend, set_gemm_backend};

#[derive(Debug, Clone)]
enum Case {
    Conv {
        name: String,
        in_channels: usize,
        out_channels: usize,
        kernel: usize,
        stride: usize,
        size: usize,
    },
    MaxPool {
        name: String,
        channels: usize,
        size: usize,
    },
    BatchNormRelu {
        name: String,
        channels: usize,
        size: usize,
    },
}

impl Case {
    fn name(&self) -> &str {
        match self {
            Case::Conv { name, .. }
            | Case::MaxPool { name, .. }
            | Case::BatchNormRelu { name, .. } => name,
        }
    }
}

fn conv(
    in_channels: usize,
    out_channels: usize,
    kernel: usize,
    stride: usize,
    size: usize,
) -> Case {
    let stride_tag = if stride == 2 { "s2" } else { "" };
    let channels = if in_channels == out_channels {
        format!("{in_channels}")
    } else {
        format!("{in_channels}_{out_channels}")
    };
    Case::Conv {
        name: format!("c{kernel}x{kernel}{stride_tag}_{channels}_{size}"),
        in_channels,
        out_channels,
        kernel,
        stride,
        size,
    }
}

fn max_pool(channels: usize, size: usize) -> Case {
    Case::MaxPool { name: format!("maxpool3s2_{channels}_{size}"), channels, size }
}

fn batch_norm_relu(channels: usize, size: usize) -> Case {
    Case::BatchNormRelu { name: format!("bnrelu_{channels}_{size}"), channels, size }
}

/// The convolutions of an xresnet50 (stem, then per stage the 3x3, the strided 3x3 that
/// opens the stage, and the two main 1x1s) at image size `image`, plus the stem max pool.
fn xresnet_cases(image: usize) -> Vec<Case> {
    let stem = image / 2;
    let mut cases = vec![
        conv(3, 32, 3, 2, image),
        conv(32, 32, 3, 1, stem),
        conv(32, 64, 3, 1, stem),
        max_pool(64, stem),
    ];
    // Each stride-2 3x3 convolution (padding 1) halves the size, rounding up.
    let mut size = image.div_ceil(4);
    for (stage, width) in [64usize, 128, 256, 512].into_iter().enumerate() {
        if stage > 0 {
            cases.push(conv(width, width, 3, 2, size));
            size = size.div_ceil(2);
        }
        cases.push(conv(width, width, 3, 1, size));
        cases.push(conv(width * 4, width, 1, 1, size));
        cases.push(conv(width, width * 4, 1, 1, size));
    }
    cases
}

/// The case a name describes, `c{K}x{K}[s2]_{C}[_{O}]_{H}`, `bnrelu_{C}_{H}` or
/// `maxpool3s2_{C}_{H}` (see the module doc).
fn parse_case_name(name: &str) -> candle::Result<Case> {
    let parse = || -> Option<Case> {
        for (prefix, make) in
            [("bnrelu_", batch_norm_relu as fn(usize, usize) -> Case), ("maxpool3s2_", max_pool)]
        {
            if let Some(rest) = name.strip_prefix(prefix) {
                let (channels, size) = rest.split_once('_')?;
                let (channels, size) = (channels.parse().ok()?, size.parse().ok()?);
                let case = make(channels, size);
                return (case.name() == name && channels * size > 0).then_some(case);
            }
        }
        let rest = name.strip_prefix('c')?;
        let (kernel, rest) = rest.split_once('x')?;
        let kernel: usize = kernel.parse().ok()?;
        let mut parts = rest.split('_');
        let head = parts.next()?;
        let stride = match head.strip_prefix(&kernel.to_string())? {
            "" => 1,
            "s2" => 2,
            _ => return None,
        };
        let numbers: Vec<usize> = parts.map(|p| p.parse().ok()).collect::<Option<_>>()?;
        let (in_channels, out_channels, size) = match numbers[..] {
            [channels, size] => (channels, channels, size),
            [in_channels, out_channels, size] => (in_channels, out_channels, size),
            _ => return None,
        };
        if [kernel, in_channels, out_channels, size].contains(&0) {
            return None;
        }
        let case = conv(in_channels, out_channels, kernel, stride, size);
        (case.name() == name).then_some(case)
    };
    parse().ok_or_else(|| {
        candle::Error::Msg(format!(
            "nn bench: unknown case {name} (not in the lists, and not c{{K}}x{{K}}[s2]_{{C}}[_{{O}}]_{{H}}, \
             bnrelu_{{C}}_{{H}} or maxpool3s2_{{C}}_{{H}})"
        ))
    })
}

/// Train-mode BatchNorm+ReLU on bottleneck-block activations (stage 1 at 224 and 128 px).
fn batch_norm_cases() -> Vec<Case> {
    vec![batch_norm_relu(64, 56), batch_norm_relu(256, 56), batch_norm_relu(256, 32)]
}

fn all_cases(quick: bool) -> Vec<Case> {
    let mut cases = xresnet_cases(224);
    cases.extend(xresnet_cases(128));
    cases.extend(batch_norm_cases());
    if quick {
        let keep = [
            "c3x3_64_56",
            "c1x1_256_64_56",
            "c1x1_64_256_56",
            "c3x3_256_14",
            "maxpool3s2_64_112",
            "bnrelu_256_32",
        ];
        cases.retain(|c| keep.contains(&c.name()));
    }
    cases
}

/// Deterministic pseudo-random values in [-1, 1) (a 64-bit LCG), so no unseeded RNG is used.
fn filled(dims: &[usize], seed: u64) -> candle::Result<Tensor> {
    let count: usize = dims.iter().product();
    let mut state = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
    let values: Vec<f32> = (0..count)
        .map(|_| {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            ((state >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
        })
        .collect();
    Tensor::from_vec(values, dims, &Device::Cpu)
}

/// Set by `--cpu-time`: measure the CPU time of all threads divided by the rayon thread
/// count instead of wall time (for tuning on a machine shared with other jobs).
static CPU_TIME: AtomicBool = AtomicBool::new(false);
/// Set by `--best`: report the fastest sample instead of the median.
static BEST: AtomicBool = AtomicBool::new(false);
/// `--reps N`: timed runs per wick measurement (default 5).
static REPS: AtomicUsize = AtomicUsize::new(5);
/// Set by `--profile`: after a wick conv or batch-norm case's timings, `reps` more
/// forward+backward runs with wick-nn's per-op accounting on, one `"bench":"nn-ops"` line per
/// op (ms per call).
static PROFILE: AtomicBool = AtomicBool::new(false);
/// Set by `--probe-gemm`: everything runs on the main thread.
static PROBING: AtomicBool = AtomicBool::new(false);

#[repr(C)]
struct Timespec {
    seconds: i64,
    nanoseconds: i64,
}

unsafe extern "C" {
    fn clock_gettime(clock: i32, time: *mut Timespec) -> i32;
}

/// Nanoseconds on CPU of all threads of this process (`CLOCK_PROCESS_CPUTIME_ID`, Linux
/// x86-64, where it is exact even for threads running at the time of the call).
fn process_cpu_ns() -> f64 {
    const CLOCK_PROCESS_CPUTIME_ID: i32 = 2;
    let mut time = Timespec { seconds: 0, nanoseconds: 0 };
    // SAFETY: `time` is a valid, writable timespec for the duration of the call.
    let status = unsafe { clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &mut time) };
    if status != 0 {
        return 0.0;
    }
    time.seconds as f64 * 1e9 + time.nanoseconds as f64
}

/// Milliseconds taken by `f`: wall time, or CPU time per rayon thread with `--cpu-time`.
fn measure_ms(f: &mut impl FnMut() -> candle::Result<()>) -> candle::Result<f64> {
    if CPU_TIME.load(Ordering::Relaxed) {
        let start = process_cpu_ns();
        f()?;
        let threads =
            if PROBING.load(Ordering::Relaxed) { 1 } else { rayon::current_num_threads() };
        Ok((process_cpu_ns() - start) / 1e6 / threads as f64)
    } else {
        let start = Instant::now();
        f()?;
        Ok(start.elapsed().as_secs_f64() * 1e3)
    }
}

/// Median milliseconds of `f`. The first call is a warm-up; if it took longer than
/// `single_run_above_ms` it is the only sample.
fn time_ms(
    reps: usize,
    single_run_above_ms: f64,
    mut f: impl FnMut() -> candle::Result<()>,
) -> candle::Result<f64> {
    let warm_up = measure_ms(&mut f)?;
    if warm_up > single_run_above_ms {
        return Ok(warm_up);
    }
    let mut samples = Vec::with_capacity(reps);
    for _ in 0..reps {
        samples.push(measure_ms(&mut f)?);
    }
    samples.sort_by(f64::total_cmp);
    if BEST.load(Ordering::Relaxed) {
        return Ok(samples[0]);
    }
    Ok(samples[samples.len() / 2])
}

struct Options {
    quick: bool,
    compare_gemm: bool,
    cases: Option<Vec<String>>,
    impls: Vec<String>,
    batch: usize,
}

fn parse_options() -> candle::Result<Options> {
    let mut options = Options {
        quick: false,
        compare_gemm: false,
        cases: None,
        impls: vec!["wick".into(), "candle".into()],
        batch: 32,
    };
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--quick" => options.quick = true,
            "--compare-gemm" => options.compare_gemm = true,
            "--cpu-time" => CPU_TIME.store(true, Ordering::Relaxed),
            "--best" => BEST.store(true, Ordering::Relaxed),
            "--profile" => PROFILE.store(true, Ordering::Relaxed),
            "--reps" => {
                REPS.store(
                    args.next().and_then(|v| v.parse().ok()).unwrap_or(5),
                    Ordering::Relaxed,
                );
            }
            "--cases" => {
                options.cases = args.next().map(|v| v.split(',').map(String::from).collect())
            }
            "--impls" => {
                options.impls =
                    args.next().unwrap_or_default().split(',').map(String::from).collect();
            }
            "--batch" => {
                options.batch = args.next().and_then(|v| v.parse().ok()).unwrap_or(32);
            }
            "--gemm" => {
                let name = args.next().unwrap_or_default();
                let Some(backend) = GemmBackend::from_name(&name) else {
                    candle::bail!(
                        "nn bench: unknown --gemm {name:?} (native-avx512|native|gemm|openblas)"
                    )
                };
                set_gemm_backend(backend)?;
            }
            // `cargo bench` passes --bench to harness-less benches.
            "--bench" => {}
            other => candle::bail!("nn bench: unknown argument {other}"),
        }
    }
    Ok(options)
}

fn run_conv(case: &Case, implementation: &str, batch: usize) -> candle::Result<String> {
    let Case::Conv { name, in_channels, out_channels, kernel, stride, size } = case else {
        candle::bail!("run_conv: not a conv case");
    };
    let (kernel, stride) = (*kernel, *stride);
    let config = Conv2dConfig { padding: kernel / 2, stride, ..Default::default() };
    let x = filled(&[batch, *in_channels, *size, *size], 1)?;
    let w = (filled(&[*out_channels, *in_channels, kernel, kernel], 2)? * 0.05)?;
    let out_size = (size + 2 * config.padding - kernel) / stride + 1;
    let flops =
        2.0 * (batch * out_channels * out_size * out_size * in_channels * kernel * kernel) as f64;
    let forward = |x: &Tensor, w: &Tensor| -> candle::Result<Tensor> {
        match implementation {
            "wick" => ops::conv2d(x, w, config),
            _ => x.conv2d(w, config.padding, config.stride, 1, 1),
        }
    };
    let wick_reps = REPS.load(Ordering::Relaxed);
    let (reps, single_above) =
        if implementation == "wick" { (wick_reps, f64::INFINITY) } else { (3, 1000.0) };
    let fwd_ms = time_ms(reps, single_above, || forward(&x, &w).map(drop))?;
    let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
    let fwdbwd_ms = time_ms(reps, single_above, || {
        let grads = forward(xv.as_tensor(), wv.as_tensor())?.backward()?;
        drop(grads);
        Ok(())
    })?;
    if implementation == "wick" && PROFILE.load(Ordering::Relaxed) {
        print_op_split(name, reps, || {
            forward(xv.as_tensor(), wv.as_tensor())?.backward().map(drop)
        })?;
    }
    let gemm = if implementation == "wick" {
        format!(",\"gemm\":\"{}\"", gemm_backend().name())
    } else {
        String::new()
    };
    Ok(format!(
        "{{\"bench\":\"nn\",\"case\":\"{name}\",\"kind\":\"conv\",\"impl\":\"{implementation}\",\"fwd_ms\":{fwd_ms:.3},\
         \"fwd_gflops\":{:.2},\"fwdbwd_ms\":{fwdbwd_ms:.3},\"fwdbwd_gflops\":{:.2}{gemm}}}",
        flops / fwd_ms / 1e6,
        3.0 * flops / fwdbwd_ms / 1e6
    ))
}

/// `--profile`: `reps` runs of `run` with the per-op accounting on (after one untimed run),
/// then each op's mean time per call.
fn print_op_split(
    case: &str,
    reps: usize,
    mut run: impl FnMut() -> candle::Result<()>,
) -> candle::Result<()> {
    run()?;
    wick_nn::profile::set_enabled(true);
    let _ = wick_nn::profile::take();
    for _ in 0..reps {
        run()?;
    }
    wick_nn::profile::set_enabled(false);
    for op in wick_nn::profile::take() {
        println!(
            "{{\"bench\":\"nn-ops\",\"case\":\"{case}\",\"op\":\"{}\",\"ms\":{:.3}}}",
            op.op,
            op.seconds * 1e3 / op.calls.max(1) as f64
        );
    }
    Ok(())
}

/// `--compare-gemm`: for each conv case, alternate the available gemm backends on every
/// repetition (so that load from other processes hits them alike) and print each one's
/// fastest forward and forward+backward.
fn compare_gemm_backends(cases: &[Case], batch: usize, reps: usize) -> candle::Result<()> {
    let backends: Vec<GemmBackend> = GemmBackend::available().collect();
    for case in cases {
        let Case::Conv { name, in_channels, out_channels, kernel, stride, size } = case else {
            continue;
        };
        let config = Conv2dConfig { padding: kernel / 2, stride: *stride, ..Default::default() };
        let x = filled(&[batch, *in_channels, *size, *size], 1)?;
        let w = (filled(&[*out_channels, *in_channels, *kernel, *kernel], 2)? * 0.05)?;
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let out_size = (size + 2 * config.padding - kernel) / stride + 1;
        let flops = 2.0
            * (batch * out_channels * out_size * out_size * in_channels * kernel * kernel) as f64;
        let mut best = vec![(f64::INFINITY, f64::INFINITY); backends.len()];
        for rep in 0..=reps {
            for (index, backend) in backends.iter().enumerate() {
                set_gemm_backend(*backend)?;
                let fwd = measure_ms(&mut || ops::conv2d(&x, &w, config).map(drop))?;
                let fwdbwd = measure_ms(&mut || {
                    ops::conv2d(xv.as_tensor(), wv.as_tensor(), config)?.backward().map(drop)
                })?;
                // Repetition 0 is the warm-up.
                if rep > 0 {
                    best[index] = (best[index].0.min(fwd), best[index].1.min(fwdbwd));
                }
            }
        }
        for (backend, (fwd_ms, fwdbwd_ms)) in backends.iter().zip(best) {
            println!(
                "{{\"bench\":\"nn-gemm\",\"case\":\"{name}\",\"gemm\":\"{backend:?}\",\"fwd_ms\":{fwd_ms:.3},\
                 \"fwd_gflops\":{:.2},\"fwdbwd_ms\":{fwdbwd_ms:.3},\"fwdbwd_gflops\":{:.2}}}",
                flops / fwd_ms / 1e6,
                3.0 * flops / fwdbwd_ms / 1e6
            );
        }
    }
    set_gemm_backend(GemmBackend::default_for_this_cpu())
}

fn run_max_pool(case: &Case, implementation: &str, batch: usize) -> candle::Result<String> {
    let Case::MaxPool { name, channels, size } = case else {
        candle::bail!("run_max_pool: not a pool case");
    };
    let config = MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
    // Post-ReLU activations, as in the xresnet stem.
    let x = filled(&[batch, *channels, *size, *size], 3)?.relu()?;
    let out_size = (size + 2 - 3) / 2 + 1;
    let in_bytes = (4 * batch * channels * size * size) as f64;
    let out_bytes = (4 * batch * channels * out_size * out_size) as f64;
    let fwd_bytes = in_bytes + out_bytes;
    let fwdbwd_bytes = fwd_bytes + 2.0 * in_bytes + out_bytes;
    let (fwd_ms, fwdbwd_ms) = if implementation == "wick" {
        let fwd_ms = time_ms(5, f64::INFINITY, || ops::max_pool2d(&x, config).map(drop))?;
        let xv = Var::from_tensor(&x)?;
        let fwdbwd_ms = time_ms(5, f64::INFINITY, || {
            ops::max_pool2d(xv.as_tensor(), config)?.backward().map(drop)
        })?;
        (fwd_ms, Some(fwdbwd_ms))
    } else {
        // candle has no padding argument and no backward for kernel != stride: zero padding
        // (valid after a ReLU) plus its unpadded pooling, forward only.
        let fwd_ms = time_ms(3, 1000.0, || {
            x.pad_with_zeros(2, 1, 1)?
                .pad_with_zeros(3, 1, 1)?
                .max_pool2d_with_stride(3, 2)
                .map(drop)
        })?;
        (fwd_ms, None)
    };
    let fwdbwd = match fwdbwd_ms {
        Some(ms) => format!("\"fwdbwd_ms\":{ms:.3},\"fwdbwd_gbps\":{:.2}", fwdbwd_bytes / ms / 1e6),
        None => "\"fwdbwd_ms\":null,\"fwdbwd_gbps\":null".to_string(),
    };
    Ok(format!(
        "{{\"bench\":\"nn\",\"case\":\"{name}\",\"kind\":\"pool\",\"impl\":\"{implementation}\",\"fwd_ms\":{fwd_ms:.3},\
         \"fwd_gbps\":{:.2},{fwdbwd}}}",
        fwd_bytes / fwd_ms / 1e6
    ))
}

/// A layer's train-mode forward, boxed so that either implementation fits one variable.
type LayerForward = dyn Fn(&Tensor) -> candle::Result<Tensor>;

fn run_batch_norm(case: &Case, implementation: &str, batch: usize) -> candle::Result<String> {
    let Case::BatchNormRelu { name, channels, size } = case else {
        candle::bail!("run_batch_norm: not a batch-norm case");
    };
    let x = (filled(&[batch, *channels, *size, *size], 4)? * 2.0)?;
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, candle::DType::F32, &Device::Cpu);
    let forward: Box<LayerForward> = if implementation == "wick" {
        let config = wick_nn::BatchNorm2dConfig {
            activation: wick_nn::BatchNormActivation::Relu,
            ..Default::default()
        };
        let layer = wick_nn::batch_norm2d(*channels, config, vb)?;
        Box::new(move |x| candle::ModuleT::forward_t(&layer, x, true))
    } else {
        let layer = candle_nn::batch_norm(*channels, candle_nn::BatchNormConfig::default(), vb)?;
        Box::new(move |x| candle::ModuleT::forward_t(&layer, x, true)?.relu())
    };
    let (reps, single_above) =
        if implementation == "wick" { (5, f64::INFINITY) } else { (3, 1000.0) };
    let fwd_ms = time_ms(reps, single_above, || forward(&x).map(drop))?;
    let xv = Var::from_tensor(&x)?;
    let fwdbwd_ms = time_ms(reps, single_above, || forward(xv.as_tensor())?.backward().map(drop))?;
    if implementation == "wick" && PROFILE.load(Ordering::Relaxed) {
        print_op_split(name, REPS.load(Ordering::Relaxed), || {
            forward(xv.as_tensor())?.backward().map(drop)
        })?;
    }
    // Forward reads x and writes y; backward reads x, y and dy and writes dx.
    let tensor_bytes = (4 * x.elem_count()) as f64;
    Ok(format!(
        "{{\"bench\":\"nn\",\"case\":\"{name}\",\"kind\":\"bn\",\"impl\":\"{implementation}\",\"fwd_ms\":{fwd_ms:.3},\
         \"fwd_gbps\":{:.2},\"fwdbwd_ms\":{fwdbwd_ms:.3},\"fwdbwd_gbps\":{:.2}}}",
        2.0 * tensor_bytes / fwd_ms / 1e6,
        6.0 * tensor_bytes / fwdbwd_ms / 1e6
    ))
}

/// Single-threaded GFLOP/s of each available gemm backend on the matrix shapes of the
/// c3x3_64_56 convolution (per batch item): forward, grad-input and grad-weight shaped.
fn probe_gemm() -> candle::Result<()> {
    let shapes = [
        (64, 576, 224),
        (576, 64, 224),
        (64, 224, 576),
        (64, 256, 3136),
        (256, 64, 3136),
        (512, 4608, 245),
        (4608, 512, 245),
        (1024, 1024, 1024),
    ];
    for backend in GemmBackend::available() {
        for (m, k, n) in shapes {
            let a = wick_nn_vec(m * k, 1)?;
            let b = wick_nn_vec(k * n, 2)?;
            let mut c = vec![0.0f32; m * n];
            // Repeat the product so one sample lasts ~50 ms (CPU-time clocks tick coarsely).
            let repeats = (5e7 / (2.0 * (m * k * n) as f64)).ceil().max(1.0) as usize * 20;
            let ms = time_ms(5, f64::INFINITY, || {
                for _ in 0..repeats {
                    wick_nn::gemm::matmul_row_major(backend, &a, &b, &mut c, (m, k, n))?;
                }
                Ok(())
            })? / repeats as f64;
            println!(
                "{{\"bench\":\"gemm-probe\",\"backend\":\"{backend:?}\",\"m\":{m},\"k\":{k},\"n\":{n},\"ms\":{ms:.3},\"gflops\":{:.2}}}",
                2.0 * (m * k * n) as f64 / ms / 1e6
            );
        }
    }
    Ok(())
}

fn wick_nn_vec(count: usize, seed: u64) -> candle::Result<Vec<f32>> {
    filled(&[count], seed)?.to_vec1::<f32>()
}

fn main() -> candle::Result<()> {
    // As the `wick` CLI runs (wick_nn::allocator).
    let _ = wick_nn::allocator::retain_freed_memory();
    if std::env::args().any(|a| a == "--cpu-time") {
        CPU_TIME.store(true, Ordering::Relaxed);
    }
    if std::env::args().any(|a| a == "--best") {
        BEST.store(true, Ordering::Relaxed);
    }
    if std::env::args().any(|a| a == "--probe-gemm") {
        PROBING.store(true, Ordering::Relaxed);
        return probe_gemm();
    }
    let options = parse_options()?;
    let mut cases = all_cases(options.quick);
    if let Some(wanted) = &options.cases {
        cases = xresnet_cases(224)
            .into_iter()
            .chain(xresnet_cases(128))
            .chain(xresnet_cases(64))
            .chain(xresnet_cases(48))
            .chain(batch_norm_cases())
            .collect();
        // Each wanted case once (a shape can belong to several of those lists).
        let mut seen = std::collections::HashSet::new();
        cases.retain(|c| wanted.iter().any(|w| w == c.name()) && seen.insert(c.name().to_owned()));
        // Any other convolution named by the pattern, e.g. xresnet18's `c3x3s2_64_128_12`.
        for name in wanted {
            if !cases.iter().any(|c| c.name() == name) {
                cases.push(parse_case_name(name)?);
            }
        }
    }
    if options.compare_gemm {
        return compare_gemm_backends(&cases, options.batch, REPS.load(Ordering::Relaxed));
    }
    for case in &cases {
        for implementation in &options.impls {
            let line = match case {
                Case::Conv { .. } => run_conv(case, implementation, options.batch)?,
                Case::MaxPool { .. } => run_max_pool(case, implementation, options.batch)?,
                Case::BatchNormRelu { .. } => run_batch_norm(case, implementation, options.batch)?,
            };
            println!("{line}");
        }
    }
    Ok(())
}
