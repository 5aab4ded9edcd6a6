//! wick-nn against values computed once by PyTorch 2.15 (CPU, float32) and committed in
//! `tests/fixtures/torch_reference.safetensors`; `tests/fixtures/make_fixtures.py` is the
//! script that wrote them. Each case holds the inputs, the upstream gradient `g` of
//! `loss = (out * g).sum()`, PyTorch's output and its autograd gradients.

mod common;

use candle::{Device, Tensor, Var};
use std::collections::HashMap;
use wick_nn::ops::{self, AvgPool2dConfig, Conv2dConfig, MaxPool2dConfig};
use wick_testing::{Tol, assert_close};

fn fixture() -> candle::Result<HashMap<String, Tensor>> {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/torch_reference.safetensors");
    candle::safetensors::load(path, &Device::Cpu)
}

fn get<'a>(tensors: &'a HashMap<String, Tensor>, prefix: &str, name: &str) -> &'a Tensor {
    let key = format!("{prefix}.{name}");
    tensors.get(&key).unwrap_or_else(|| panic!("fixture has no tensor {key}"))
}

fn check_conv(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    config: Conv2dConfig,
) -> candle::Result<()> {
    let x = Var::from_tensor(get(tensors, prefix, "x"))?;
    let w = Var::from_tensor(get(tensors, prefix, "w"))?;
    let y = ops::conv2d(x.as_tensor(), w.as_tensor(), config)?;
    assert_close(&format!("{prefix} forward"), &y, get(tensors, prefix, "y"), Tol::of_scale(1e-5));
    let grads = (y * get(tensors, prefix, "g"))?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("input gradient");
    let dw = grads.get(w.as_tensor()).expect("weight gradient");
    assert_close(
        &format!("{prefix} grad input"),
        dx,
        get(tensors, prefix, "dx"),
        Tol::of_scale(1e-5),
    );
    assert_close(
        &format!("{prefix} grad weight"),
        dw,
        get(tensors, prefix, "dw"),
        Tol::of_scale(1e-5),
    );
    Ok(())
}

#[test]
fn conv2d_matches_pytorch() -> candle::Result<()> {
    let tensors = fixture()?;
    // F.conv2d(x, w, stride=1, padding=1), x (2,3,7,9), w (4,3,3,3)
    check_conv(&tensors, "conv3x3_s1_p1", Conv2dConfig { padding: 1, ..Default::default() })?;
    // F.conv2d(x, w, stride=2, padding=1, groups=2), x (2,4,9,8), w (6,2,3,3)
    let config = Conv2dConfig { padding: 1, stride: 2, groups: 2, ..Default::default() };
    check_conv(&tensors, "conv3x3_s2_p1_g2", config)?;
    // F.conv2d(x, w, stride=1, padding=2, dilation=2), x (1,3,8,7), w (2,3,3,3)
    check_conv(
        &tensors,
        "conv3x3_d2_p2",
        Conv2dConfig { padding: 2, dilation: 2, ..Default::default() },
    )?;
    // F.conv2d(x, w), x (3,8,5,5), w (5,8,1,1)
    check_conv(&tensors, "conv1x1", Conv2dConfig::default())
}

fn check_pool(
    tensors: &HashMap<String, Tensor>,
    prefix: &str,
    pool: impl Fn(&Tensor) -> candle::Result<Tensor>,
) -> candle::Result<()> {
    let x = Var::from_tensor(get(tensors, prefix, "x"))?;
    let y = pool(x.as_tensor())?;
    assert_close(&format!("{prefix} forward"), &y, get(tensors, prefix, "y"), Tol::of_scale(1e-6));
    let grads = (y * get(tensors, prefix, "g"))?.sum_all()?.backward()?;
    let dx = grads.get(x.as_tensor()).expect("input gradient");
    assert_close(
        &format!("{prefix} grad input"),
        dx,
        get(tensors, prefix, "dx"),
        Tol::of_scale(1e-6),
    );
    Ok(())
}

#[test]
fn max_pool2d_matches_pytorch_with_ties_and_negative_inputs() -> candle::Result<()> {
    let tensors = fixture()?;
    // F.max_pool2d(x, 3, 2, 1) on x (2,2,9,9): channel 0 small integers (ties: PyTorch's
    // CPU kernel routes the gradient to the first maximum in scan order), channel 1 all
    // negative (padding must act as -inf, not 0).
    let config = MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: false };
    check_pool(&tensors, "maxpool3_s2_p1", |x| ops::max_pool2d(x, config))?;
    let y = ops::max_pool2d(get(&tensors, "maxpool3_s2_p1", "x"), config)?;
    let max_of_negative_channel = y.narrow(1, 1, 1)?.max_all()?.to_scalar::<f32>()?;
    assert!(max_of_negative_channel < 0.0, "padding leaked a 0 into the all-negative channel");
    // F.max_pool2d(x, 3, 2, 1, ceil_mode=True) on x (1,2,8,8), all negative: 5x5 output.
    let config = MaxPool2dConfig { ceil_mode: true, ..config };
    check_pool(&tensors, "maxpool3_s2_p1_ceil", |x| ops::max_pool2d(x, config))
}

#[test]
fn avg_pool2d_matches_pytorch_ceil_mode() -> candle::Result<()> {
    let tensors = fixture()?;
    // F.avg_pool2d(x, 2, 2, ceil_mode=True) on x (2,3,7,5): xresnet's shortcut pool; the last
    // window row/column averages its single valid pixel.
    let config = AvgPool2dConfig { kernel: 2, stride: 2, padding: 0, ceil_mode: true };
    check_pool(&tensors, "avgpool2_s2_ceil", |x| ops::avg_pool2d(x, config))?;
    // F.avg_pool2d(x, 3, 2, 1, ceil_mode=True) on x (1,2,8,6): padding counted in the divisor
    // (count_include_pad=True), the ceil-mode overhang past the padding not counted.
    let config = AvgPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: true };
    check_pool(&tensors, "avgpool3_s2_p1_ceil", |x| ops::avg_pool2d(x, config))
}
