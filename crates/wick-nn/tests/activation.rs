//! ReLU and the fused residual `relu(a + b)`: values, and PyTorch's gradient rule (0 at exactly
//! 0, where candle's own `relu` passes 1).

use candle::{Device, Tensor, Var};
use wick_nn::ops::{add_relu, relu};

#[test]
fn relu_has_pytorchs_gradient_at_zero() {
    // torch: x = tensor([-1., 0., 2.], requires_grad=True); relu(x).sum().backward()
    //        x.grad == tensor([0., 0., 1.])
    let x = Var::new(&[-1.0f32, 0.0, 2.0], &Device::Cpu).unwrap();
    let y = relu(x.as_tensor()).unwrap();
    assert_eq!(y.to_vec1::<f32>().unwrap(), [0.0, 0.0, 2.0]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [0.0, 0.0, 1.0]);
    // candle's own relu passes the gradient at 0: the deviation this op exists to avoid.
    let candle_grads = x.as_tensor().relu().unwrap().sum_all().unwrap().backward().unwrap();
    assert_eq!(candle_grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [0.0, 1.0, 1.0]);
}

#[test]
fn add_relu_equals_relu_of_the_sum_with_gradients_for_both_inputs() {
    // a + b = [-1, 0, 0.5, 3, -0.25, 0]: the gradient passes only where the sum is > 0.
    let a = Var::new(&[[0.5f32, -1.0, 0.25], [1.0, -0.5, 2.0]], &Device::Cpu).unwrap();
    let b = Var::new(&[[-1.5f32, 1.0, 0.25], [2.0, 0.25, -2.0]], &Device::Cpu).unwrap();
    let y = add_relu(a.as_tensor(), b.as_tensor()).unwrap();
    assert_eq!(y.to_vec2::<f32>().unwrap(), [[0.0, 0.0, 0.5], [3.0, 0.0, 0.0]]);
    let weights = Tensor::new(&[[1.0f32, 2.0, 3.0], [4.0, 5.0, 6.0]], &Device::Cpu).unwrap();
    let grads = (y * &weights).unwrap().sum_all().unwrap().backward().unwrap();
    let expected = [[0.0, 0.0, 3.0], [4.0, 0.0, 0.0]];
    assert_eq!(grads.get(a.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), expected);
    assert_eq!(grads.get(b.as_tensor()).unwrap().to_vec2::<f32>().unwrap(), expected);
    // Non-contiguous inputs (a transposed view) give the same values as contiguous copies.
    let at = a.as_tensor().t().unwrap();
    let bt = b.as_tensor().t().unwrap();
    let strided = add_relu(&at, &bt).unwrap().to_vec2::<f32>().unwrap();
    let copied = add_relu(&at.contiguous().unwrap(), &bt.contiguous().unwrap())
        .unwrap()
        .to_vec2::<f32>()
        .unwrap();
    assert_eq!(strided, copied);
    assert!(add_relu(a.as_tensor(), &at).is_err());
}

#[test]
fn relu_and_add_relu_keep_nan_forward_and_backward_like_pytorch() {
    // torch: x = tensor([nan, -1., 2.], requires_grad=True); y = relu(x)
    //        y == [nan, 0., 2.]; y.backward(tensor([1., 1., 1.])) → x.grad == [1., 0., 1.]
    // (threshold_backward zeroes the gradient only where the output is <= 0, so NaN passes).
    // f32::max(NaN, 0) is 0: a kernel using it would turn a diverged model into zeros.
    let x = Var::new(&[f32::NAN, -1.0, 2.0], &Device::Cpu).unwrap();
    let y = relu(x.as_tensor()).unwrap();
    let values = y.to_vec1::<f32>().unwrap();
    assert!(values[0].is_nan(), "relu(NaN) must be NaN, got {}", values[0]);
    assert_eq!(values[1..], [0.0, 2.0]);
    let grads = y.sum_all().unwrap().backward().unwrap();
    assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), [1.0, 0.0, 1.0]);

    let a = Var::new(&[f32::NAN, 1.0, -3.0], &Device::Cpu).unwrap();
    let b = Tensor::new(&[0.0f32, f32::NAN, 1.0], &Device::Cpu).unwrap();
    let y = add_relu(a.as_tensor(), &b).unwrap().to_vec1::<f32>().unwrap();
    assert!(y[0].is_nan() && y[1].is_nan(), "add_relu must keep NaN, got {y:?}");
    assert_eq!(y[2], 0.0);
}
