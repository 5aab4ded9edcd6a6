//! GPU-vs-CPU agreement of every wick-nn op (feature `cuda`; with `cudnn` the convolutions run
//! through cuDNN): `wick_nn::check` runs each op forward and backward on seeded inputs on the
//! CPU and on CUDA device 0 and compares outputs and gradients within per-dtype tolerances.
//! They need a GPU and fail without one: CI only compiles them (`cargo xtask cuda-check`); the
//! GPU check runs the same comparisons through `wick device-check`.
#![cfg(feature = "cuda")]

use candle::{DType, Device};
use wick_nn::check::{CheckConfig, compare_ops};

fn gpu() -> Device {
    Device::new_cuda(0).expect("these tests need CUDA device 0")
}

/// One test for every precision: cuDNN's TF32 switch is process-wide.
#[test]
fn every_op_agrees_with_the_cpu() {
    let device = gpu();
    let mut failures = Vec::new();
    for (dtype, tf32) in
        [(DType::F32, false), (DType::F32, true), (DType::BF16, false), (DType::F16, false)]
    {
        wick_nn::ops::set_cudnn_allow_tf32(tf32);
        let reports = compare_ops(&device, &CheckConfig { dtype, seed: 3, tf32 }).unwrap();
        failures.extend(reports.into_iter().filter(|r| !r.passed()));
    }
    wick_nn::ops::set_cudnn_allow_tf32(true);
    assert!(failures.is_empty(), "outside tolerance: {failures:#?}");
}

#[test]
fn batch_norm_statistics_stay_on_the_device() {
    let device = gpu();
    let xs = candle::Tensor::arange(0f32, 2.0 * 3.0 * 4.0 * 5.0, &device)
        .unwrap()
        .reshape((2, 3, 4, 5))
        .unwrap();
    let weight = candle::Tensor::ones(3, DType::F32, &device).unwrap();
    let bias = candle::Tensor::zeros(3, DType::F32, &device).unwrap();
    let (ys, stats) =
        wick_nn::ops::batch_norm_train(&xs, &weight, &bias, Default::default()).unwrap();
    assert!(stats.mean.device().is_cuda() && stats.variance.device().is_cuda());
    assert_eq!(ys.dims(), xs.dims());
    // Channel 0 holds 0..=19 and 60..=79: mean 39.5.
    let mean = stats.mean.to_vec1::<f32>().unwrap();
    assert!((mean[0] - 39.5).abs() < 1e-4, "{mean:?}");
}
