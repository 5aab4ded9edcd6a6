//! Op-by-op agreement of a device with the CPU reference: every op of [`crate::ops`] runs
//! forward and backward on seeded inputs on the CPU and on the device under test, and each
//! output and gradient is compared. The CUDA tests of this crate and `wick device-check` (the
//! GPU check script) use it; with `Device::Cpu` it compares the CPU with itself.
//!
//! The reference for a reduced-precision dtype is the CPU op in that dtype (which computes in
//! f32 and rounds its output once), so the two sides see identical inputs. The measure is
//! `max |device - cpu| / max |cpu|` per tensor, against a per-op, per-dtype tolerance.

use candle::{DType, Device, Tensor, Var};

use crate::ops::{
    self, AvgPool2dConfig, BatchNormActivation, BatchNormOpConfig, Conv2dConfig, MaxPool2dConfig,
};

/// One compared tensor of one case.
#[derive(Debug, Clone, PartialEq)]
pub struct OpReport {
    /// The case, e.g. `conv2d 3x3 s2 p1 (8,16,13,13)`.
    pub case: String,
    /// `output`, or the gradient compared (`grad x`, `grad weight`, ...).
    pub tensor: String,
    /// The dtype the device run used.
    pub dtype: DType,
    /// `max |device - cpu|`.
    pub max_abs_diff: f64,
    /// `max |cpu|`.
    pub scale: f64,
    /// The accepted `max_abs_diff / scale`.
    pub tolerance: f64,
}

impl OpReport {
    /// `max_abs_diff / scale` (the absolute difference when the reference is all zeros).
    pub fn relative(&self) -> f64 {
        if self.scale > 0.0 { self.max_abs_diff / self.scale } else { self.max_abs_diff }
    }

    /// Whether the device agrees with the CPU within the tolerance (NaN never passes).
    pub fn passed(&self) -> bool {
        self.relative() <= self.tolerance
    }
}

/// What [`compare_ops`] runs.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckConfig {
    /// The activation dtype of every case (f32, bf16 or f16); BatchNorm's parameters stay f32.
    pub dtype: DType,
    /// Seeds every input.
    pub seed: u64,
    /// The convolutions may run on TF32 tensor cores on the device: widens the f32 conv
    /// tolerance (set it to match [`ops::set_cudnn_allow_tf32`]).
    pub tf32: bool,
}

impl Default for CheckConfig {
    fn default() -> Self {
        Self { dtype: DType::F32, seed: 0, tf32: false }
    }
}

/// How closely a class of op must agree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Class {
    /// Element-wise and pooling: the same float operations in the same order.
    Exact,
    /// BatchNorm: sums in another order.
    Reduction,
    /// Convolutions: another algorithm entirely.
    Conv,
}

fn tolerance(class: Class, config: &CheckConfig) -> f64 {
    match (config.dtype, class) {
        (DType::F32, Class::Exact) => 1e-6,
        (DType::F32, Class::Reduction) => 1e-4,
        (DType::F32, Class::Conv) if config.tf32 => 5e-3,
        (DType::F32, Class::Conv) => 1e-4,
        // One rounding of the output to 8 (bf16) or 11 (f16) significant bits, plus the f32
        // differences above, relative to the tensor's largest value.
        (DType::F16, _) => 2e-3,
        _ => 1.6e-2,
    }
}

/// splitmix64: a tiny seeded generator, enough for test inputs.
struct Inputs {
    state: u64,
}

impl Inputs {
    fn new(seed: u64) -> Self {
        Self { state: seed ^ 0x9e37_79b9_7f4a_7c15 }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [-1, 1).
    fn uniform(&mut self) -> f32 {
        ((self.next_u64() >> 40) as f32 / (1u64 << 24) as f32) * 2.0 - 1.0
    }

    /// A CPU f32 tensor of uniform values; `quantum > 0` rounds them to multiples of it (ties
    /// for max pooling, exact zeros for ReLU).
    fn tensor(&mut self, dims: &[usize], quantum: f32) -> candle::Result<Tensor> {
        let n: usize = dims.iter().product();
        let values: Vec<f32> = (0..n)
            .map(|_| {
                let v = self.uniform();
                if quantum > 0.0 { (v / quantum).round() * quantum } else { v }
            })
            .collect();
        Tensor::from_vec(values, dims, &Device::Cpu)
    }
}

/// A case's forward pass, from its inputs on the device under test.
type Forward = Box<dyn Fn(&[Tensor]) -> candle::Result<Tensor>>;

/// One case: a forward function of its inputs, and the inputs (CPU f32) with their dtypes.
struct Case {
    name: String,
    class: Class,
    inputs: Vec<(&'static str, Tensor, DType)>,
    forward: Forward,
}

/// Output and input gradients of a case on `device`, as CPU f32 tensors.
fn run(case: &Case, device: &Device, seed: u64) -> candle::Result<Vec<(String, Tensor)>> {
    let vars: Vec<Var> = case
        .inputs
        .iter()
        .map(|(_, t, dtype)| Var::from_tensor(&t.to_dtype(*dtype)?.to_device(device)?))
        .collect::<candle::Result<_>>()?;
    let tensors: Vec<Tensor> = vars.iter().map(|v| v.as_tensor().clone()).collect();
    let out = (case.forward)(&tensors)?;
    // A fixed random projection of the output as the loss, so every gradient is non-trivial.
    let weights = Inputs::new(seed.wrapping_add(7)).tensor(out.dims(), 0.0)?.to_device(device)?;
    let loss = out.to_dtype(DType::F32)?.mul(&weights)?.sum_all()?;
    let grads = loss.backward()?;
    let mut results =
        vec![("output".to_string(), out.to_dtype(DType::F32)?.to_device(&Device::Cpu)?)];
    for ((name, ..), var) in case.inputs.iter().zip(&vars) {
        let grad = grads
            .get(var)
            .ok_or_else(|| candle::Error::Msg(format!("{}: no gradient for {name}", case.name)))?;
        results.push((format!("grad {name}"), grad.to_dtype(DType::F32)?.to_device(&Device::Cpu)?));
    }
    Ok(results)
}

fn max_abs(t: &Tensor) -> candle::Result<f64> {
    Ok(t.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()? as f64)
}

/// Runs every case on the CPU and on `device` and compares.
pub fn compare_ops(device: &Device, config: &CheckConfig) -> candle::Result<Vec<OpReport>> {
    let mut reports = Vec::new();
    for (index, case) in cases(config)?.iter().enumerate() {
        let seed = config.seed.wrapping_add(1000 * index as u64);
        let reference = run(case, &Device::Cpu, seed)?;
        let tested = run(case, device, seed)?;
        for ((name, cpu), (_, dev)) in reference.iter().zip(&tested) {
            // NaN in the difference propagates through max as NaN only on some paths; check it.
            let diff = (dev - cpu)?;
            let mut max_abs_diff = max_abs(&diff)?;
            if diff.flatten_all()?.to_vec1::<f32>()?.iter().any(|v| v.is_nan()) {
                max_abs_diff = f64::NAN;
            }
            reports.push(OpReport {
                case: case.name.clone(),
                tensor: name.clone(),
                dtype: config.dtype,
                max_abs_diff,
                scale: max_abs(cpu)?,
                tolerance: tolerance(case.class, config),
            });
        }
    }
    Ok(reports)
}

fn cases(config: &CheckConfig) -> candle::Result<Vec<Case>> {
    let mut inputs = Inputs::new(config.seed);
    let dtype = config.dtype;
    let mut cases = Vec::new();

    let shape = [4, 8, 9, 11];
    cases.push(Case {
        name: format!("relu {shape:?}"),
        class: Class::Exact,
        inputs: vec![("x", inputs.tensor(&shape, 0.125)?, dtype)],
        forward: Box::new(|t| ops::relu(&t[0])),
    });
    let a = inputs.tensor(&shape, 0.125)?;
    // b = -a on about a third of the elements: sums of exactly zero.
    let b = inputs.tensor(&shape, 0.125)?;
    let mask = inputs.tensor(&shape, 0.0)?.ge(0.33)?.to_dtype(DType::F32)?;
    let b = (b.mul(&mask)? - a.mul(&(1.0 - &mask)?)?)?;
    cases.push(Case {
        name: format!("add_relu {shape:?}"),
        class: Class::Exact,
        inputs: vec![("a", a, dtype), ("b", b, dtype)],
        forward: Box::new(|t| ops::add_relu(&t[0], &t[1])),
    });

    let max_pools = [
        (MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: false }, [2, 4, 16, 16]),
        (MaxPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: true }, [2, 4, 13, 15]),
        (MaxPool2dConfig { kernel: 2, stride: 2, padding: 0, ceil_mode: true }, [2, 3, 7, 9]),
    ];
    for (pool, shape) in max_pools {
        cases.push(Case {
            name: format!(
                "max_pool2d k{} s{} p{}{} {shape:?}",
                pool.kernel,
                pool.stride,
                pool.padding,
                if pool.ceil_mode { " ceil" } else { "" }
            ),
            class: Class::Exact,
            // Quantised values: ties inside windows, broken by PyTorch's first-maximum rule.
            inputs: vec![("x", inputs.tensor(&shape, 0.25)?, dtype)],
            forward: Box::new(move |t| ops::max_pool2d(&t[0], pool)),
        });
    }
    let avg_pools = [
        (AvgPool2dConfig { kernel: 2, stride: 2, padding: 0, ceil_mode: true }, [2, 4, 7, 9]),
        (AvgPool2dConfig { kernel: 3, stride: 1, padding: 1, ceil_mode: false }, [2, 3, 8, 8]),
        (AvgPool2dConfig { kernel: 3, stride: 2, padding: 1, ceil_mode: true }, [2, 3, 10, 11]),
    ];
    for (pool, shape) in avg_pools {
        cases.push(Case {
            name: format!(
                "avg_pool2d k{} s{} p{}{} {shape:?}",
                pool.kernel,
                pool.stride,
                pool.padding,
                if pool.ceil_mode { " ceil" } else { "" }
            ),
            class: Class::Exact,
            inputs: vec![("x", inputs.tensor(&shape, 0.0)?, dtype)],
            forward: Box::new(move |t| ops::avg_pool2d(&t[0], pool)),
        });
    }

    for activation in [BatchNormActivation::Identity, BatchNormActivation::Relu] {
        let shape = [6, 5, 7, 9];
        let x = (inputs.tensor(&shape, 0.0)? * 3.0)?.affine(1.0, 0.5)?;
        let weight = inputs.tensor(&[5], 0.0)?.affine(0.5, 1.0)?;
        let bias = (inputs.tensor(&[5], 0.0)? * 0.2)?;
        let train = BatchNormOpConfig { eps: 1e-5, activation };
        cases.push(Case {
            name: format!("batch_norm_train {activation:?} {shape:?}"),
            class: Class::Reduction,
            inputs: vec![
                ("x", x, dtype),
                ("weight", weight, DType::F32),
                ("bias", bias, DType::F32),
            ],
            forward: Box::new(move |t| Ok(ops::batch_norm_train(&t[0], &t[1], &t[2], train)?.0)),
        });
    }

    let convs = [
        (
            "3x3 s1 p1",
            [4, 8, 12, 12],
            [16, 8, 3, 3],
            Conv2dConfig { padding: 1, ..Default::default() },
        ),
        (
            "3x3 s2 p1",
            [4, 8, 13, 13],
            [16, 8, 3, 3],
            Conv2dConfig { padding: 1, stride: 2, ..Default::default() },
        ),
        ("1x1 s1", [4, 16, 9, 9], [8, 16, 1, 1], Conv2dConfig::default()),
        (
            "3x3 s2 p1 stem",
            [2, 3, 32, 32],
            [8, 3, 3, 3],
            Conv2dConfig { padding: 1, stride: 2, ..Default::default() },
        ),
        (
            "3x3 s1 p1 groups 2",
            [2, 8, 10, 10],
            [8, 4, 3, 3],
            Conv2dConfig { padding: 1, groups: 2, ..Default::default() },
        ),
    ];
    for (label, x_shape, w_shape, conv) in convs {
        let x = inputs.tensor(&x_shape, 0.0)?;
        let fan_in = (w_shape[1] * w_shape[2] * w_shape[3]) as f64;
        let w = (inputs.tensor(&w_shape, 0.0)? * (3.0 / fan_in).sqrt())?;
        cases.push(Case {
            name: format!("conv2d {label} {x_shape:?}"),
            class: Class::Conv,
            inputs: vec![("x", x, dtype), ("weight", w, dtype)],
            forward: Box::new(move |t| ops::conv2d(&t[0], &t[1], conv)),
        });
    }
    Ok(cases)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_agrees_with_itself_and_reports_every_tensor() {
        for dtype in [DType::F32, DType::BF16] {
            let config = CheckConfig { dtype, ..CheckConfig::default() };
            let reports = compare_ops(&Device::Cpu, &config).unwrap();
            // 2 activations, 6 pools, 2 batch norms, 5 convolutions; each an output and grads.
            assert_eq!(reports.iter().filter(|r| r.tensor == "output").count(), 15);
            assert!(reports.iter().any(|r| r.tensor == "grad weight"));
            for report in &reports {
                assert!(report.passed(), "{report:?}");
                assert_eq!(report.max_abs_diff, 0.0, "{report:?}");
                assert!(report.scale > 0.0, "{report:?}");
            }
        }
    }

    #[test]
    fn a_nan_difference_fails() {
        let report = OpReport {
            case: "x".into(),
            tensor: "output".into(),
            dtype: DType::F32,
            max_abs_diff: f64::NAN,
            scale: 1.0,
            tolerance: 1.0,
        };
        assert!(!report.passed());
    }
}
