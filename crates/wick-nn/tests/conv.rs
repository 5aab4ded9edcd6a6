//! `ops::conv2d` and the `Conv2d` layer against candle's own conv2d and autograd and
//! against naive f64 loops, on many shapes, every gemm backend available in this build,
//! and non-contiguous inputs.

mod common;

use candle::{DType, Device, Module, Tensor, Var};
use common::{NaiveConv, seeded_tensor};
use std::sync::Mutex;
use wick_nn::ops::{self, Conv2dConfig};
use wick_nn::{GemmBackend, set_gemm_backend};
use wick_testing::{Tol, assert_close};

/// The gemm backend is process-wide: tests that switch it hold this lock.
static BACKEND_LOCK: Mutex<()> = Mutex::new(());

#[derive(Debug, Clone, Copy)]
struct Case {
    input: [usize; 4],
    out_channels: usize,
    kernel: usize,
    config: Conv2dConfig,
}

fn case(
    input: [usize; 4],
    out_channels: usize,
    kernel: usize,
    padding: usize,
    stride: usize,
) -> Case {
    Case {
        input,
        out_channels,
        kernel,
        config: Conv2dConfig { padding, stride, ..Default::default() },
    }
}

fn cases() -> Vec<Case> {
    let mut cases = vec![
        case([2, 3, 7, 9], 4, 3, 1, 1),      // odd sizes, 3x3 pad 1
        case([1, 4, 8, 8], 6, 3, 1, 2),      // stride 2, batch 1
        case([3, 5, 11, 6], 7, 3, 0, 2),     // stride 2, pad 0, odd
        case([2, 8, 5, 5], 16, 1, 0, 1),     // 1x1 pointwise
        case([2, 8, 6, 7], 4, 1, 0, 2),      // 1x1 stride 2
        case([1, 3, 20, 17], 8, 7, 3, 2),    // 7x7 stem-like
        case([5, 16, 4, 4], 8, 3, 1, 1),     // tiny images: several items per gemm tile
        case([6, 24, 3, 3], 12, 1, 0, 1),    // tiny pointwise, items grouped
        case([8, 20, 4, 4], 32, 1, 0, 1),    // grouped items' planes: whole 16-column tiles
        case([32, 8, 2, 2], 24, 1, 0, 1),    // 2x2 planes, 8 items a unit: 32-column tiles
        case([2, 32, 12, 12], 150, 3, 1, 1), // gemm with M > 144 and K > 256 (several blocks)
        case([2, 16, 40, 40], 8, 3, 1, 1),   // image cut into several column tiles
        case([1, 2, 3, 3], 1, 3, 1, 1),      // kernel as large as the image
        // Small images where padding is a large share (conv_regions): xresnet's last stage
        // at 48 px, more output channels than one block, stride 2, a 5x5 kernel, H != W.
        case([4, 8, 2, 2], 70, 3, 1, 1),
        case([3, 6, 3, 3], 9, 3, 1, 2),
        case([2, 3, 4, 4], 5, 5, 2, 1),
        case([3, 4, 2, 5], 6, 3, 1, 1),
        case([2, 5, 6, 6], 3, 3, 1, 1),
        case([2, 4, 1, 1], 5, 3, 1, 1), // 1x1 image: only the centre tap is ever read
        // Batches whose regions fill whole 16-column panels (read a panel at a time).
        case([20, 8, 2, 2], 12, 3, 1, 1),
        case([12, 20, 4, 4], 5, 3, 1, 1),
        // Winograd F(2x2, 3x3) (conv_winograd): odd output sizes (partial 2x2 blocks), no
        // padding, padding 2, items grouped into one unit, and the input gradient's flip.
        case([3, 16, 9, 11], 20, 3, 1, 1),
        case([2, 17, 10, 11], 16, 3, 0, 1),
        case([2, 16, 8, 9], 18, 3, 2, 1),
        case([9, 24, 8, 8], 16, 3, 1, 1),
        // An item larger than one chunk (24 x 23 blocks against 512 a chunk at 16 channels):
        // several chunks per item, the last one partial (the usual case at 224 px).
        case([2, 16, 48, 46], 16, 3, 1, 1),
        // The late stages' 1×1 path (conv_pointwise: 520·530 weights, 12 columns): K deeper
        // than one 256 block, rows in blocks of 144 with a partial last one.
        case([3, 520, 2, 2], 530, 1, 0, 1),
        // Padding beyond the kernel's reach: border pixels read only padding (zeros).
        case([2, 8, 4, 4], 6, 1, 1, 1),
        case([2, 5, 3, 3], 4, 3, 3, 1),
    ];
    cases.push(Case {
        config: Conv2dConfig { padding: 2, dilation: 2, ..Default::default() },
        ..case([2, 4, 10, 11], 6, 3, 0, 1)
    });
    cases.push(Case {
        config: Conv2dConfig { padding: 2, dilation: 2, ..Default::default() },
        ..case([2, 3, 3, 4], 4, 3, 0, 1)
    });
    // A dilated kernel straddling a tiny image: some pixels read no tap.
    cases.push(Case {
        config: Conv2dConfig { padding: 2, dilation: 4, ..Default::default() },
        ..case([2, 3, 2, 2], 4, 2, 0, 1)
    });
    cases.push(Case {
        config: Conv2dConfig { padding: 1, groups: 2, ..Default::default() },
        ..case([2, 6, 9, 9], 4, 3, 0, 1)
    });
    cases.push(Case {
        config: Conv2dConfig { stride: 2, groups: 4, ..Default::default() },
        ..case([3, 8, 6, 6], 8, 1, 0, 1)
    });
    // Grouped pointwise items of 4 pixels (a unit of 4 of the 16 items: 16 columns): one
    // 16-column tile spans four items' planes.
    cases.push(Case {
        config: Conv2dConfig { groups: 2, ..Default::default() },
        ..case([16, 8, 2, 2], 40, 1, 0, 1)
    });
    cases.push(Case {
        config: Conv2dConfig { padding: 1, groups: 2, stride: 1, dilation: 1 },
        ..case([7, 4, 2, 3], 6, 3, 0, 1)
    });
    cases
}

fn inputs(case: &Case, seed: u64) -> (Tensor, Tensor) {
    let [_, c, _, _] = case.input;
    let x = seeded_tensor(&case.input, seed);
    let w = seeded_tensor(
        &[case.out_channels, c / case.config.groups, case.kernel, case.kernel],
        seed + 1,
    );
    (x, w)
}

fn naive(config: Conv2dConfig) -> NaiveConv {
    NaiveConv {
        padding: config.padding,
        stride: config.stride,
        dilation: config.dilation,
        groups: config.groups,
    }
}

fn candle_conv(x: &Tensor, w: &Tensor, c: Conv2dConfig) -> candle::Result<Tensor> {
    x.conv2d(w, c.padding, c.stride, c.dilation, c.groups)
}

fn backends() -> Vec<GemmBackend> {
    GemmBackend::available().collect()
}

#[test]
fn forward_matches_candle_and_naive_loops() -> candle::Result<()> {
    let _guard = BACKEND_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for backend in backends() {
        set_gemm_backend(backend)?;
        for (index, case) in cases().iter().enumerate() {
            let (x, w) = inputs(case, 10 + index as u64);
            let ours = ops::conv2d(&x, &w, case.config)?;
            let what = format!("{backend:?} forward {case:?}");
            assert_close(
                &format!("{what} vs naive"),
                &ours,
                naive(case.config).forward(&x, &w),
                Tol::of_scale(1e-5),
            );
            assert_close(
                &format!("{what} vs candle"),
                &ours,
                &candle_conv(&x, &w, case.config)?,
                Tol::of_scale(1e-5),
            );
        }
    }
    set_gemm_backend(GemmBackend::default_for_this_cpu())
}

#[test]
fn gradients_match_naive_loops() -> candle::Result<()> {
    let _guard = BACKEND_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    for backend in backends() {
        set_gemm_backend(backend)?;
        for (index, case) in cases().iter().enumerate() {
            let (x, w) = inputs(case, 100 + index as u64);
            let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
            let y = ops::conv2d(xv.as_tensor(), wv.as_tensor(), case.config)?;
            let g = seeded_tensor(y.dims(), 200 + index as u64);
            let grads = (y * &g)?.sum_all()?.backward()?;
            let (dx, dw) = naive(case.config).gradients(&x, &w, &g);
            let what = format!("{backend:?} {case:?}");
            let ours_dx = grads.get(xv.as_tensor()).expect("input gradient");
            let ours_dw = grads.get(wv.as_tensor()).expect("weight gradient");
            assert_close(&format!("grad input {what}"), ours_dx, &dx, Tol::of_scale(1e-5));
            assert_close(&format!("grad weight {what}"), ours_dw, &dw, Tol::of_scale(1e-5));
        }
    }
    set_gemm_backend(GemmBackend::default_for_this_cpu())
}

#[test]
fn gradients_match_candle_autograd() -> candle::Result<()> {
    // candle's own conv2d backward (conv_transpose2d + transposed conv2d) as the reference,
    // on the cases it handles: candle 0.11 derives the transposed conv's output padding
    // from the height alone, so its input gradient has the wrong width when
    // (H + 2p - K) % stride differs from (W + 2p - K) % stride.
    let candle_handles = |c: &Case| {
        let [_, _, h, w] = c.input;
        let (p, s) = (c.config.padding, c.config.stride);
        c.config.dilation == 1 && (h + 2 * p - c.kernel) % s == (w + 2 * p - c.kernel) % s
    };
    for (index, case) in cases().iter().enumerate().filter(|(_, c)| candle_handles(c)) {
        let (x, w) = inputs(case, 300 + index as u64);
        let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
        let y = ops::conv2d(xv.as_tensor(), wv.as_tensor(), case.config)?;
        let g = seeded_tensor(y.dims(), 400 + index as u64);
        let ours = (y * &g)?.sum_all()?.backward()?;
        let y_ref = candle_conv(xv.as_tensor(), wv.as_tensor(), case.config)?;
        let reference = (y_ref * &g)?.sum_all()?.backward()?;
        for (var, name) in [(&xv, "input"), (&wv, "weight")] {
            let ours = ours.get(var.as_tensor()).expect("our gradient");
            let theirs = reference.get(var.as_tensor()).expect("candle's gradient");
            assert_close(&format!("grad {name} {case:?}"), ours, theirs, Tol::of_scale(1e-5));
        }
    }
    Ok(())
}

#[test]
fn non_contiguous_inputs_weights_and_grads() -> candle::Result<()> {
    let config = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
    // Input seen through a transpose: stored (B, H, C, W), used as (B, C, H, W).
    let stored = seeded_tensor(&[2, 9, 5, 8], 1);
    let x = stored.transpose(1, 2)?;
    assert!(!x.is_contiguous());
    // Weight seen through a transpose: stored (C, O, K, K).
    let w = seeded_tensor(&[5, 6, 3, 3], 2).transpose(0, 1)?;
    assert!(!w.is_contiguous());
    let reference = NaiveConv { padding: 1, stride: 2, dilation: 1, groups: 1 };
    assert_close(
        "transposed",
        &ops::conv2d(&x, &w, config)?,
        reference.forward(&x.contiguous()?, &w.contiguous()?),
        Tol::of_scale(1e-5),
    );

    // A narrowed input (a window of a wider image) and narrowed channels.
    let wide = seeded_tensor(&[3, 7, 10, 13], 3);
    let x = wide.narrow(3, 2, 9)?.narrow(1, 1, 5)?;
    assert!(!x.is_contiguous());
    let w = seeded_tensor(&[4, 5, 3, 3], 4);
    assert_close(
        "narrowed",
        &ops::conv2d(&x, &w, config)?,
        reference.forward(&x.contiguous()?, &w),
        Tol::of_scale(1e-5),
    );

    // Gradients when the input is a view and the upstream gradient is non-contiguous.
    let xv = Var::from_tensor(&wide)?;
    let x = xv.as_tensor().narrow(3, 2, 9)?.narrow(1, 1, 5)?;
    let wv = Var::from_tensor(&w)?;
    let y = ops::conv2d(&x, wv.as_tensor(), config)?;
    let (b, o, oh, ow) = y.dims4()?;
    let g = seeded_tensor(&[b, oh, o, ow], 5).transpose(1, 2)?;
    let grads = (y * &g)?.sum_all()?.backward()?;
    let (dx, dw) = reference.gradients(&x.contiguous()?, &w, &g.contiguous()?);
    let ours_wide = grads.get(xv.as_tensor()).expect("input gradient");
    assert_close(
        "narrowed grad input",
        &ours_wide.narrow(3, 2, 9)?.narrow(1, 1, 5)?,
        &dx,
        Tol::of_scale(1e-5),
    );
    assert_close(
        "grad weight",
        grads.get(wv.as_tensor()).expect("weight gradient"),
        &dw,
        Tol::of_scale(1e-5),
    );
    Ok(())
}

#[test]
fn other_dtypes_fall_back_to_candle() -> candle::Result<()> {
    let x = seeded_tensor(&[1, 2, 5, 5], 7).to_dtype(DType::F64)?;
    let w = seeded_tensor(&[3, 2, 3, 3], 8).to_dtype(DType::F64)?;
    let config = Conv2dConfig { padding: 1, ..Default::default() };
    let ours = ops::conv2d(&x, &w, config)?;
    assert_eq!(ours.dtype(), DType::F64);
    assert_close(
        "f64",
        &ours.to_dtype(DType::F32)?,
        &candle_conv(&x, &w, config)?.to_dtype(DType::F32)?,
        Tol::of_scale(1e-6),
    );
    Ok(())
}

#[test]
fn bad_shapes_are_errors_that_name_the_op() {
    let x = seeded_tensor(&[1, 4, 5, 5], 1);
    let w = seeded_tensor(&[2, 3, 3, 3], 2);
    let error = ops::conv2d(&x, &w, Conv2dConfig::default()).expect_err("channel mismatch");
    assert!(error.to_string().contains("conv2d"), "{error}");
    let w = seeded_tensor(&[2, 4, 7, 7], 3);
    let error = ops::conv2d(&x, &w, Conv2dConfig::default()).expect_err("kernel larger than input");
    assert!(error.to_string().contains("conv2d"), "{error}");
    let error = ops::conv2d(&x, &w, Conv2dConfig { stride: 0, ..Default::default() })
        .expect_err("stride 0");
    assert!(error.to_string().contains("stride"), "{error}");
}

#[test]
fn conv2d_layer_loads_named_variables_and_adds_bias() -> candle::Result<()> {
    let varmap = candle_nn::VarMap::new();
    let vb = candle_nn::VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
    let config = Conv2dConfig { padding: 1, ..Default::default() };
    let layer = wick_nn::conv2d(3, 4, 3, config, vb.pp("stem"))?;
    let layer_no_bias = wick_nn::conv2d_no_bias(3, 4, 1, Conv2dConfig::default(), vb.pp("proj"))?;
    let data = varmap.data().lock().expect("varmap lock");
    let mut names: Vec<_> = data.iter().map(|(k, v)| (k.clone(), v.dims().to_vec())).collect();
    drop(data);
    names.sort();
    assert_eq!(
        names,
        vec![
            ("proj.weight".to_string(), vec![4, 3, 1, 1]),
            ("stem.bias".to_string(), vec![4]),
            ("stem.weight".to_string(), vec![4, 3, 3, 3]),
        ]
    );
    let x = seeded_tensor(&[2, 3, 6, 6], 9);
    let expected = candle_conv(&x, layer.weight(), config)?
        .broadcast_add(&layer.bias().expect("bias").reshape((1, 4, 1, 1))?)?;
    assert_close("layer with bias", &layer.forward(&x)?, &expected, Tol::of_scale(1e-5));
    let expected = candle_conv(&x, layer_no_bias.weight(), Conv2dConfig::default())?;
    assert_close("layer without bias", &layer_no_bias.forward(&x)?, &expected, Tol::of_scale(1e-5));
    Ok(())
}

#[test]
fn gemm_backends_agree_on_a_matmul() -> candle::Result<()> {
    let (m, k, n) = (37, 300, 51);
    let a = common::to_vec(&seeded_tensor(&[m, k], 1));
    let b = common::to_vec(&seeded_tensor(&[k, n], 2));
    let mut expected = vec![0.0f32; m * n];
    for i in 0..m {
        for j in 0..n {
            expected[i * n + j] =
                (0..k).map(|p| a[i * k + p] as f64 * b[p * n + j] as f64).sum::<f64>() as f32;
        }
    }
    let expected = Tensor::from_vec(expected, (m, n), &Device::Cpu)?;
    for backend in backends() {
        let mut c = vec![f32::NAN; m * n];
        wick_nn::gemm::matmul_row_major(backend, &a, &b, &mut c, (m, k, n))?;
        assert_close(
            &format!("{backend:?}"),
            &Tensor::from_vec(c, (m, n), &Device::Cpu)?,
            &expected,
            Tol::of_scale(1e-5),
        );
    }
    Ok(())
}

/// The native kernels (AVX2 6×16 and AVX-512 12×32, whichever this CPU runs) round exactly
/// as their documented order does: each product one FMA, `k` ascending inside blocks of 256,
/// each block's sum started at 0 and added to `C` in order (the first block stored). So
/// both kernels give the same bits, and a run does not depend on the machine's vector width.
/// Shapes: partial tiles of both kernels' MR (6, 12) and of NR (16), pairs of whole panels
/// (the AVX-512 kernel's 32 columns) beside a lone or partial one, three KC blocks.
#[test]
fn native_kernels_round_as_documented() -> candle::Result<()> {
    const KC: usize = 256;
    let natives: Vec<GemmBackend> = GemmBackend::available().filter(|b| b.is_native()).collect();
    for (m, k, n) in [(37, 600, 51), (16, 256, 16), (150, 70, 33)] {
        let a = common::to_vec(&seeded_tensor(&[m, k], 3));
        let b = common::to_vec(&seeded_tensor(&[k, n], 4));
        let mut expected = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut c = 0.0f32;
                for first in (0..k).step_by(KC) {
                    let block = (first..k.min(first + KC))
                        .fold(0.0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
                    c = if first == 0 { block } else { c + block };
                }
                expected[i * n + j] = c;
            }
        }
        for &backend in &natives {
            let mut c = vec![f32::NAN; m * n];
            wick_nn::gemm::matmul_row_major(backend, &a, &b, &mut c, (m, k, n))?;
            let differ = c.iter().zip(&expected).filter(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(differ.count(), 0, "{backend:?} {m}x{k}x{n}: bits differ");
        }
    }
    Ok(())
}

#[test]
fn input_that_tracks_nothing_gets_no_gradient() -> candle::Result<()> {
    // The first layer's images are plain tensors: only the weight gradient is computed.
    let config = Conv2dConfig { padding: 1, stride: 2, ..Default::default() };
    let x = seeded_tensor(&[2, 3, 9, 9], 1);
    let w = Var::from_tensor(&seeded_tensor(&[4, 3, 3, 3], 2))?;
    let y = ops::conv2d(&x, w.as_tensor(), config)?;
    let g = seeded_tensor(y.dims(), 3);
    let grads = (y * &g)?.sum_all()?.backward()?;
    assert!(grads.get(&x).is_none());
    let reference = NaiveConv { padding: 1, stride: 2, dilation: 1, groups: 1 };
    let (_, dw) = reference.gradients(&x, w.as_tensor(), &g);
    assert_close(
        "weight gradient",
        grads.get(w.as_tensor()).expect("weight gradient"),
        &dw,
        Tol::of_scale(1e-5),
    );
    Ok(())
}

#[test]
fn every_path_gives_the_same_bits_at_any_thread_count() -> candle::Result<()> {
    // decisions/0002: every split is made from the shapes, never from the number of threads,
    // so the forward and both gradients are bit-identical on 1 and on 3 threads.
    let _guard = BACKEND_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    set_gemm_backend(GemmBackend::default_for_this_cpu())?;
    let run = |threads: usize| -> candle::Result<Vec<Vec<u32>>> {
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
        pool.install(|| {
            let mut bits = Vec::new();
            for (index, case) in cases().iter().enumerate() {
                let (x, w) = inputs(case, 500 + index as u64);
                let (xv, wv) = (Var::from_tensor(&x)?, Var::from_tensor(&w)?);
                let y = ops::conv2d(xv.as_tensor(), wv.as_tensor(), case.config)?;
                let g = seeded_tensor(y.dims(), 600 + index as u64);
                let grads = (&y * &g)?.sum_all()?.backward()?;
                let dx = grads.get(xv.as_tensor()).expect("input gradient");
                let dw = grads.get(wv.as_tensor()).expect("weight gradient");
                for t in [&y, dx, dw] {
                    let values = t.flatten_all()?.to_vec1::<f32>()?;
                    bits.push(values.iter().map(|v| v.to_bits()).collect());
                }
            }
            Ok(bits)
        })
    };
    let (one, three) = (run(1)?, run(3)?);
    for (index, (a, b)) in one.iter().zip(&three).enumerate() {
        assert!(a == b, "{:?}, tensor {} (y, dx, dw)", cases()[index / 3], index % 3);
    }
    Ok(())
}
