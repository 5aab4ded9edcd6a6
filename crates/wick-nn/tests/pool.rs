//! `ops::max_pool2d` / `ops::avg_pool2d` and their layers: output sizes by PyTorch's rule,
//! forward against naive loops, gradients against finite differences.

mod common;

use candle::{DType, Module, Tensor, Var};
use common::{distinct_tensor, seeded_tensor, to_vec};
use wick_nn::ops::{self, AvgPool2dConfig, MaxPool2dConfig};
use wick_nn::{AvgPool2d, MaxPool2d};
use wick_testing::{Tol, assert_close};

fn max_config(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> MaxPool2dConfig {
    MaxPool2dConfig { kernel, stride, padding, ceil_mode }
}

fn avg_config(kernel: usize, stride: usize, padding: usize, ceil_mode: bool) -> AvgPool2dConfig {
    AvgPool2dConfig { kernel, stride, padding, ceil_mode }
}

/// PyTorch's pooling output size, written out independently of the crate.
fn torch_output_size(
    input: usize,
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
) -> usize {
    let numerator =
        (input + 2 * padding - kernel) as i64 + if ceil_mode { stride as i64 - 1 } else { 0 };
    let mut out = numerator / stride as i64 + 1;
    if ceil_mode && (out - 1) * stride as i64 >= (input + padding) as i64 {
        out -= 1;
    }
    out as usize
}

/// Naive pooling over one plane layout (B, C, H, W): `reduce` gets the valid window values
/// and the padded-window size (clipped at input + padding, PyTorch's divisor).
fn naive_pool(
    x: &Tensor,
    (kernel, stride, padding, ceil_mode): (usize, usize, usize, bool),
    reduce: impl Fn(&[f32], usize) -> f32,
) -> Tensor {
    let (b, c, h, w) = x.dims4().expect("4-d input");
    let (oh, ow) = (
        torch_output_size(h, kernel, stride, padding, ceil_mode),
        torch_output_size(w, kernel, stride, padding, ceil_mode),
    );
    let xs = to_vec(x);
    let mut out = Vec::with_capacity(b * c * oh * ow);
    for plane in 0..b * c {
        for oy in 0..oh {
            for ox in 0..ow {
                let (y0, x0) =
                    ((oy * stride) as i64 - padding as i64, (ox * stride) as i64 - padding as i64);
                let y_end_padded = (y0 + kernel as i64).min((h + padding) as i64);
                let x_end_padded = (x0 + kernel as i64).min((w + padding) as i64);
                let divisor = ((y_end_padded - y0) * (x_end_padded - x0)) as usize;
                let mut values = Vec::new();
                for iy in y0.max(0)..y_end_padded.min(h as i64) {
                    for ix in x0.max(0)..x_end_padded.min(w as i64) {
                        values.push(xs[plane * h * w + iy as usize * w + ix as usize]);
                    }
                }
                out.push(reduce(&values, divisor));
            }
        }
    }
    Tensor::from_vec(out, (b, c, oh, ow), x.device()).expect("element count matches")
}

const WINDOWS: [(usize, usize, usize, bool); 8] = [
    (3, 2, 1, false),
    (3, 2, 1, true),
    (2, 2, 0, false),
    (2, 2, 0, true),
    (3, 1, 1, false),
    (5, 3, 2, true),
    (3, 3, 0, true),
    (1, 2, 0, true),
];

#[test]
fn output_sizes_follow_pytorch() -> candle::Result<()> {
    // Examples worked by hand from torch.nn.MaxPool2d / AvgPool2d.
    let x = seeded_tensor(&[1, 1, 112, 7], 1);
    assert_eq!(ops::max_pool2d(&x, max_config(3, 2, 1, false))?.dims(), &[1, 1, 56, 4]);
    assert_eq!(ops::avg_pool2d(&x, avg_config(2, 2, 0, true))?.dims(), &[1, 1, 56, 4]);
    assert_eq!(ops::avg_pool2d(&x, avg_config(2, 2, 0, false))?.dims(), &[1, 1, 56, 3]);
    for size in 1..12 {
        for &(kernel, stride, padding, ceil_mode) in &WINDOWS {
            if size + 2 * padding < kernel {
                continue;
            }
            let x = seeded_tensor(&[1, 1, size, size + 1], 2);
            let expected = [
                1,
                1,
                torch_output_size(size, kernel, stride, padding, ceil_mode),
                torch_output_size(size + 1, kernel, stride, padding, ceil_mode),
            ];
            assert_eq!(
                ops::max_pool2d(&x, max_config(kernel, stride, padding, ceil_mode))?.dims(),
                &expected
            );
            assert_eq!(
                ops::avg_pool2d(&x, avg_config(kernel, stride, padding, ceil_mode))?.dims(),
                &expected
            );
        }
    }
    Ok(())
}

/// Max and average pooling of `x` with `window` against the naive loops.
fn check_forward(x: &Tensor, window: (usize, usize, usize, bool)) -> candle::Result<()> {
    let (kernel, stride, padding, ceil_mode) = window;
    let ours = ops::max_pool2d(x, max_config(kernel, stride, padding, ceil_mode))?;
    let reference =
        naive_pool(x, window, |v, _| v.iter().fold(f32::NEG_INFINITY, |m, &x| m.max(x)));
    assert_close(&format!("max {window:?}"), &ours, &reference, Tol::of_scale(0.0));
    let ours = ops::avg_pool2d(x, avg_config(kernel, stride, padding, ceil_mode))?;
    let reference = naive_pool(x, window, |v, divisor| v.iter().sum::<f32>() / divisor as f32);
    assert_close(&format!("avg {window:?}"), &ours, &reference, Tol::of_scale(1e-6));
    Ok(())
}

#[test]
fn forward_matches_naive_loops() -> candle::Result<()> {
    for (index, &window) in WINDOWS.iter().enumerate() {
        check_forward(&(seeded_tensor(&[2, 3, 9, 8], 10 + index as u64) - 0.5)?, window)?;
    }
    Ok(())
}

/// Central finite differences of `sum(pool(x) * g)` against autograd, every input element.
fn check_gradient(
    x: &Tensor,
    pool: impl Fn(&Tensor) -> candle::Result<Tensor>,
    what: &str,
) -> candle::Result<()> {
    let xv = Var::from_tensor(x)?;
    let y = pool(xv.as_tensor())?;
    let g = seeded_tensor(y.dims(), 99);
    let grads = (&y * &g)?.sum_all()?.backward()?;
    let analytic = to_vec(grads.get(xv.as_tensor()).expect("input gradient"));
    let loss = |values: &[f32]| -> candle::Result<f64> {
        let x = Tensor::from_vec(values.to_vec(), x.dims(), x.device())?;
        let y = to_vec(&pool(&x)?);
        Ok(y.iter().zip(to_vec(&g)).map(|(a, b)| *a as f64 * b as f64).sum())
    };
    let base = to_vec(x);
    let epsilon = 1e-3f32;
    for i in 0..base.len() {
        let mut plus = base.clone();
        plus[i] += epsilon;
        let mut minus = base.clone();
        minus[i] -= epsilon;
        let numeric = (loss(&plus)? - loss(&minus)?) / (2.0 * epsilon as f64);
        let error = (numeric - analytic[i] as f64).abs();
        assert!(
            error < 2e-3,
            "{what}: element {i}: finite difference {numeric} vs autograd {}",
            analytic[i]
        );
    }
    Ok(())
}

/// Max and average pooling's gradients against finite differences, on an input of `dims`
/// whose values are 0.01 apart (a 1e-3 nudge never changes which element is the max).
fn check_gradients(dims: &[usize], window: (usize, usize, usize, bool)) -> candle::Result<()> {
    let (kernel, stride, padding, ceil_mode) = window;
    let x = distinct_tensor(dims, 5, 0.01, -0.5);
    let config = max_config(kernel, stride, padding, ceil_mode);
    check_gradient(&x, |x| ops::max_pool2d(x, config), &format!("max {window:?}"))?;
    let config = avg_config(kernel, stride, padding, ceil_mode);
    check_gradient(&x, |x| ops::avg_pool2d(x, config), &format!("avg {window:?}"))
}

#[test]
fn gradients_match_finite_differences() -> candle::Result<()> {
    for &window in &WINDOWS {
        check_gradients(&[1, 2, 7, 6], window)?;
    }
    Ok(())
}

/// Windows that tile the input exactly (kernel == stride, no padding, sizes divisible: the
/// kernels' direct path, xresnet's shortcut pool) against the naive loops and finite
/// differences, both reductions.
#[test]
fn exactly_tiling_windows_match_naive_loops_and_finite_differences() -> candle::Result<()> {
    for window in [(2, 2, 0, true), (2, 2, 0, false), (3, 3, 0, false), (1, 1, 0, false)] {
        check_forward(&(seeded_tensor(&[2, 3, 6, 12], 40 + window.0 as u64) - 0.5)?, window)?;
        check_gradients(&[1, 2, 6, 6], window)?;
    }
    Ok(())
}

#[test]
fn max_pool_gradient_goes_to_the_first_of_tied_maxima() -> candle::Result<()> {
    // One 2x2 window of equal values: PyTorch's CPU kernel picks the first in scan order.
    let x = Var::from_tensor(&Tensor::ones((1, 1, 2, 2), DType::F32, &candle::Device::Cpu)?)?;
    let y = ops::max_pool2d(x.as_tensor(), max_config(2, 2, 0, false))?;
    let grads = y.sum_all()?.backward()?;
    assert_eq!(to_vec(grads.get(x.as_tensor()).expect("gradient")), vec![1.0, 0.0, 0.0, 0.0]);
    Ok(())
}

#[test]
fn max_pool_gradient_goes_to_the_first_maximum_in_row_major_order() -> candle::Result<()> {
    // One 3x3 window holding 3.0 five times: the first in row-major scan order is (0, 2),
    // though columns 0 and 1 reach 3.0 in earlier columns (PyTorch's CPU kernel scans rows,
    // then columns, and replaces only on a strictly greater value).
    let values = [1.0f32, 2.0, 3.0, 3.0, 0.0, 3.0, 3.0, 3.0, 1.0];
    let x = Var::from_tensor(&Tensor::from_slice(&values, (1, 1, 3, 3), &candle::Device::Cpu)?)?;
    let y = ops::max_pool2d(x.as_tensor(), max_config(3, 1, 0, false))?;
    let grads = y.sum_all()?.backward()?;
    let got = to_vec(grads.get(x.as_tensor()).expect("gradient"));
    assert_eq!(got, vec![0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0, 0.0]);
    // A NaN beats every number and is the max; of two NaNs the first gets the gradient.
    let values = [1.0f32, f32::NAN, 3.0, f32::NAN];
    let x = Var::from_tensor(&Tensor::from_slice(&values, (1, 1, 2, 2), &candle::Device::Cpu)?)?;
    let y = ops::max_pool2d(x.as_tensor(), max_config(2, 2, 0, false))?;
    assert!(to_vec(&y)[0].is_nan());
    let grads = y.sum_all()?.backward()?;
    // The loss is NaN, but the gradient is routed: 1 at the first NaN, 0 elsewhere.
    assert_eq!(to_vec(grads.get(x.as_tensor()).expect("gradient")), vec![0.0, 1.0, 0.0, 0.0]);
    // The first NaN in row-major order: in the later column when its row is earlier, in the
    // earlier column of the same row.
    for (values, want) in [
        ([1.0f32, f32::NAN, f32::NAN, 3.0], [0.0f32, 1.0, 0.0, 0.0]),
        ([f32::NAN, f32::NAN, 1.0, 3.0], [1.0, 0.0, 0.0, 0.0]),
    ] {
        let x = Tensor::from_slice(&values, (1, 1, 2, 2), &candle::Device::Cpu)?;
        let x = Var::from_tensor(&x)?;
        let y = ops::max_pool2d(x.as_tensor(), max_config(2, 2, 0, false))?;
        let grads = y.sum_all()?.backward()?;
        assert_eq!(to_vec(grads.get(x.as_tensor()).expect("gradient")), want.to_vec());
    }
    Ok(())
}

#[test]
fn non_contiguous_and_f64_inputs() -> candle::Result<()> {
    let stored = seeded_tensor(&[2, 9, 3, 8], 3);
    let x = stored.transpose(1, 2)?;
    let config = max_config(3, 2, 1, false);
    assert_close(
        "transposed max",
        &ops::max_pool2d(&x, config)?,
        &ops::max_pool2d(&x.contiguous()?, config)?,
        Tol::of_scale(0.0),
    );
    let config64 = avg_config(2, 2, 0, true);
    let y64 = ops::avg_pool2d(&x.to_dtype(DType::F64)?, config64)?;
    assert_eq!(y64.dtype(), DType::F64);
    assert_close(
        "f64 avg",
        &y64.to_dtype(DType::F32)?,
        &ops::avg_pool2d(&x, config64)?,
        Tol::of_scale(1e-6),
    );
    Ok(())
}

#[test]
fn layers_apply_their_config() -> candle::Result<()> {
    let x = seeded_tensor(&[1, 2, 7, 7], 4);
    let max = MaxPool2d::new(max_config(3, 2, 1, false));
    assert_close(
        "MaxPool2d",
        &max.forward(&x)?,
        &ops::max_pool2d(&x, *max.config())?,
        Tol::of_scale(0.0),
    );
    let avg = AvgPool2d::new(avg_config(2, 2, 0, true));
    assert_close(
        "AvgPool2d",
        &avg.forward(&x)?,
        &ops::avg_pool2d(&x, *avg.config())?,
        Tol::of_scale(0.0),
    );
    Ok(())
}

#[test]
fn invalid_windows_are_errors_that_name_the_op() {
    let x = seeded_tensor(&[1, 1, 5, 5], 1);
    let error = ops::max_pool2d(&x, max_config(3, 2, 2, false)).expect_err("padding > kernel/2");
    assert!(error.to_string().contains("max_pool2d"), "{error}");
    let error = ops::avg_pool2d(&x, avg_config(0, 1, 0, false)).expect_err("kernel 0");
    assert!(error.to_string().contains("avg_pool2d"), "{error}");
    let error = ops::max_pool2d(&seeded_tensor(&[5, 5], 1), max_config(2, 2, 0, false))
        .expect_err("2-d input");
    assert!(error.to_string().contains("(B, C, H, W)"), "{error}");
}

#[test]
fn ceil_mode_accepts_inputs_smaller_than_the_kernel_like_pytorch() {
    use wick_nn::AvgPool2dConfig;
    // torch: F.avg_pool2d(torch.tensor([[[[3.]]]]), 2, ceil_mode=True) == [[[[3.]]]] (the
    // window averages its one valid pixel); without ceil_mode torch raises "Output size is too
    // small".
    let xs = candle::Tensor::new(&[[[[3.0f32]]]], &candle::Device::Cpu).unwrap();
    let ceil = AvgPool2dConfig { kernel: 2, stride: 2, padding: 0, ceil_mode: true };
    let ys = wick_nn::ops::avg_pool2d(&xs, ceil).unwrap();
    assert_eq!(ys.flatten_all().unwrap().to_vec1::<f32>().unwrap(), [3.0]);
    let floor = AvgPool2dConfig { ceil_mode: false, ..ceil };
    let error = wick_nn::ops::avg_pool2d(&xs, floor).unwrap_err().to_string();
    assert!(error.contains("no output"), "{error}");
}

/// The max pooling gradient on inputs full of ties and NaNs equals naive loops that scan
/// each window in row-major order and route its gradient to the first value equal to the
/// window's maximum (NaN equal to NaN), for every window shape of [`WINDOWS`] on planes with
/// odd and even sides.
#[test]
fn max_pool_gradient_matches_a_row_major_scan_with_ties_and_nans() -> candle::Result<()> {
    let device = candle::Device::Cpu;
    for (b, c, h, w) in [(2, 3, 7, 9), (1, 2, 8, 6), (1, 1, 5, 5)] {
        // Three levels from a hash of the index, so most windows hold tied maxima, in one row
        // as across rows; a NaN in every 23rd value.
        let level = |i: usize| ((i as u64).wrapping_mul(2_654_435_761) >> 7) % 3;
        let xs: Vec<f32> = (0..b * c * h * w)
            .map(|i| if i % 23 == 7 { f32::NAN } else { level(i) as f32 })
            .collect();
        let x = Var::from_tensor(&Tensor::from_vec(xs.clone(), (b, c, h, w), &device)?)?;
        for (kernel, stride, padding, ceil_mode) in WINDOWS {
            let config = max_config(kernel, stride, padding, ceil_mode);
            let y = ops::max_pool2d(x.as_tensor(), config)?;
            let (oh, ow) = (y.dim(2)?, y.dim(3)?);
            let upstream = seeded_tensor(&[b, c, oh, ow], 5);
            let grads = (y * &upstream)?.sum_all()?.backward()?;
            let got = to_vec(grads.get(x.as_tensor()).expect("gradient"));
            let dy = to_vec(&upstream);
            let mut want = vec![0.0f32; xs.len()];
            for plane in 0..b * c {
                for oy in 0..oh {
                    for ox in 0..ow {
                        let (y0, x0) = (oy * stride, ox * stride);
                        let rows = y0.saturating_sub(padding)..(y0 + kernel - padding).min(h);
                        let cols = x0.saturating_sub(padding)..(x0 + kernel - padding).min(w);
                        let at = |iy: usize, ix: usize| plane * h * w + iy * w + ix;
                        let window: Vec<usize> =
                            rows.flat_map(|iy| cols.clone().map(move |ix| at(iy, ix))).collect();
                        // NaN-propagating max, as PyTorch's kernel returns it.
                        let max = window.iter().map(|&i| xs[i]).fold(f32::NEG_INFINITY, |m, v| {
                            if m.is_nan() || v <= m { m } else { v }
                        });
                        let first = window
                            .iter()
                            .copied()
                            .find(|&i| xs[i] == max || (max.is_nan() && xs[i].is_nan()))
                            .expect("a window holds its maximum");
                        want[first] += dy[(plane * oh + oy) * ow + ox];
                    }
                }
            }
            let config = (b, c, h, w, kernel, stride, padding, ceil_mode);
            assert_eq!(got, want, "{config:?}");
        }
    }
    Ok(())
}
