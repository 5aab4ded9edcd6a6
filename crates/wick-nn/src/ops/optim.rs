//! Fused optimizer updates: fastai's Adam and SGD steps (`fastai/optimizer.py`) applied in place
//! to one parameter in a single pass over the parameter, its gradient and its moving averages,
//! with no temporaries. wick-train's optimizers own the parameter list, the schedules and the
//! state; this file owns only the element loop, which is device code (it reads the parameter's
//! storage), and decides which parameters it can take ([`fused_step_supported`]: contiguous f32
//! on the CPU; every other parameter goes through candle tensor ops in wick-train).
//!
//! The arithmetic follows torch's float32 operation order, with each Python-float scalar cast to
//! f32 before the element loop as torch does; it is not bit-identical to torch's vectorised
//! kernels (which use fused multiply-adds), so agreement is to float32 rounding.

use std::cell::RefCell;

use candle::{CpuStorage, DType, InplaceOp2, Layout, Tensor};

/// The per-step scalars of one fastai Adam update (computed in f64 as fastai does).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamStep {
    /// `1 − lr·wd` (decoupled weight decay), or `None` when the parameter is not decayed.
    pub decay_factor: Option<f64>,
    /// β1 (fastai's `mom`).
    pub mom: f64,
    /// `1 − β1` (fastai's `grad_damp`).
    pub grad_damp: f64,
    /// β2 (fastai's `sqr_mom`).
    pub sqr_mom: f64,
    /// `1 − β2`.
    pub sqr_damp: f64,
    /// fastai's `debias2 = sqr_damp·(1 − sqr_momᵗ)/(1 − sqr_mom)`.
    pub debias2: f64,
    /// `−lr / debias1`.
    pub step_size: f64,
    /// Added to `√(v/debias2)` in the denominator.
    pub eps: f64,
}

/// The per-step scalars of one fastai SGD update (`decouple_wd=True`, undampened momentum).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SgdStep {
    /// `1 − lr·wd`, or `None` when the parameter is not decayed.
    pub decay_factor: Option<f64>,
    /// The momentum coefficient (fastai's `mom`).
    pub mom: f64,
    /// `−lr`.
    pub step_size: f64,
}

/// Whether [`adam_step`] and [`sgd_step`] can update `param` in place: contiguous f32 on the
/// CPU.
pub fn fused_step_supported(param: &Tensor) -> bool {
    param.device().is_cpu() && param.dtype() == DType::F32 && param.is_contiguous()
}

/// One Adam update of `param` in place (shape any, `N` elements): per element
/// `p ← p·decay; m ← m·β1 + (1−β1)·g; v ← v·β2 + (1−β2)·g²; p ← p + step_size·m/(√(v/debias2) + eps)`.
/// `grad_avg` and `sqr_avg` hold `N` values each and are updated too.
///
/// # Errors
/// A `param` that [`fused_step_supported`] refuses; a gradient or buffer whose element count
/// differs from the parameter's.
pub fn adam_step(
    param: &Tensor,
    grad: &Tensor,
    grad_avg: &mut [f32],
    sqr_avg: &mut [f32],
    step: AdamStep,
) -> candle::Result<()> {
    apply(param, grad, &FusedAdam { buffers: RefCell::new((grad_avg, sqr_avg)), step })
}

/// One SGD update of `param` in place: `p ← p·decay; m ← m·mom + g; p ← p + step_size·m`, or
/// `p ← p + step_size·g` without a momentum buffer.
///
/// # Errors
/// As [`adam_step`].
pub fn sgd_step(
    param: &Tensor,
    grad: &Tensor,
    grad_avg: Option<&mut [f32]>,
    step: SgdStep,
) -> candle::Result<()> {
    apply(param, grad, &FusedSgd { grad_avg: RefCell::new(grad_avg), step })
}

/// Runs a fused update on `param`, with the gradient made a contiguous CPU f32 tensor first (a
/// no-op for the usual case).
fn apply(param: &Tensor, grad: &Tensor, op: &impl InplaceOp2) -> candle::Result<()> {
    if !fused_step_supported(param) {
        candle::bail!(
            "fused optimizer step: the parameter must be contiguous f32 on the CPU, got {:?} on {:?}",
            param.dtype(),
            param.device()
        );
    }
    let grad = grad.to_device(param.device())?.to_dtype(DType::F32)?.contiguous()?;
    param.inplace_op2(&grad, op)
}

struct FusedAdam<'a> {
    buffers: RefCell<(&'a mut [f32], &'a mut [f32])>,
    step: AdamStep,
}

impl InplaceOp2 for FusedAdam<'_> {
    fn name(&self) -> &'static str {
        "wick-fused-adam"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<()> {
        let (param, grad) = f32_slices(param, param_layout, grad, grad_layout)?;
        let mut buffers = self.buffers.borrow_mut();
        let (grad_avg, sqr_avg) = &mut *buffers;
        check_len(grad_avg.len(), param.len())?;
        check_len(sqr_avg.len(), param.len())?;
        let s = self.step;
        // torch casts each Python-float scalar to the tensor's float32 before the element loop.
        let mom = s.mom as f32;
        let grad_damp = s.grad_damp as f32;
        let sqr_mom = s.sqr_mom as f32;
        let sqr_damp = s.sqr_damp as f32;
        let debias2 = s.debias2 as f32;
        let step_size = s.step_size as f32;
        let eps = s.eps as f32;
        let decay = s.decay_factor.map(|f| f as f32);
        let elements = param.iter_mut().zip(grad).zip(grad_avg.iter_mut().zip(sqr_avg.iter_mut()));
        for ((p, &g), (m, v)) in elements {
            if let Some(factor) = decay {
                *p *= factor;
            }
            *m = *m * mom + grad_damp * g;
            *v = *v * sqr_mom + sqr_damp * g * g;
            let denominator = (*v / debias2).sqrt() + eps;
            *p += step_size * *m / denominator;
        }
        Ok(())
    }
}

struct FusedSgd<'a> {
    grad_avg: RefCell<Option<&'a mut [f32]>>,
    step: SgdStep,
}

impl InplaceOp2 for FusedSgd<'_> {
    fn name(&self) -> &'static str {
        "wick-fused-sgd"
    }

    fn cpu_fwd(
        &self,
        param: &mut CpuStorage,
        param_layout: &Layout,
        grad: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<()> {
        let (param, grad) = f32_slices(param, param_layout, grad, grad_layout)?;
        let decay = self.step.decay_factor.map(|f| f as f32);
        let mom = self.step.mom as f32;
        let step_size = self.step.step_size as f32;
        let mut grad_avg = self.grad_avg.borrow_mut();
        match grad_avg.as_deref_mut() {
            Some(grad_avg) => {
                check_len(grad_avg.len(), param.len())?;
                for ((p, &g), m) in param.iter_mut().zip(grad).zip(grad_avg.iter_mut()) {
                    if let Some(factor) = decay {
                        *p *= factor;
                    }
                    *m = *m * mom + g;
                    *p += step_size * *m;
                }
            }
            None => {
                for (p, &g) in param.iter_mut().zip(grad) {
                    if let Some(factor) = decay {
                        *p *= factor;
                    }
                    *p += step_size * g;
                }
            }
        }
        Ok(())
    }
}

fn f32_slices<'a>(
    param: &'a mut CpuStorage,
    param_layout: &Layout,
    grad: &'a CpuStorage,
    grad_layout: &Layout,
) -> candle::Result<(&'a mut [f32], &'a [f32])> {
    let (CpuStorage::F32(param), CpuStorage::F32(grad)) = (param, grad) else {
        candle::bail!("fused optimizer step needs f32 parameter and gradient");
    };
    let Some((param_start, param_end)) = param_layout.contiguous_offsets() else {
        candle::bail!("fused optimizer step needs a contiguous parameter");
    };
    let Some((grad_start, grad_end)) = grad_layout.contiguous_offsets() else {
        candle::bail!("fused optimizer step needs a contiguous gradient");
    };
    let param = &mut param[param_start..param_end];
    let grad = &grad[grad_start..grad_end];
    check_len(grad.len(), param.len())?;
    Ok((param, grad))
}

fn check_len(actual: usize, expected: usize) -> candle::Result<()> {
    if actual != expected {
        candle::bail!("optimizer buffer has {actual} elements, parameter has {expected}");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn adam_step_follows_fastai_on_hand_checkable_numbers() {
        // One element, step 1, fastai's Adam(lr=0.1, mom=0.9, sqr_mom=0.99, eps=1e-5, wd=0.01):
        // debias1 = 0.1, debias2 = 0.01; decay 1 - 0.1·0.01 = 0.999; p = 1, g = 2:
        // p = 0.999; m = 0.2; v = 0.04; p += (-0.1/0.1)·0.2/(sqrt(0.04/0.01) + 1e-5)
        //   = 0.999 - 0.2/2.00001 = 0.89900...
        let param = Tensor::new(&[1.0f32], &Device::Cpu).unwrap();
        let grad = Tensor::new(&[2.0f32], &Device::Cpu).unwrap();
        let (mut m, mut v) = (vec![0.0f32], vec![0.0f32]);
        let step = AdamStep {
            decay_factor: Some(0.999),
            mom: 0.9,
            grad_damp: 0.1,
            sqr_mom: 0.99,
            sqr_damp: 0.01,
            debias2: 0.01,
            step_size: -1.0,
            eps: 1e-5,
        };
        adam_step(&param, &grad, &mut m, &mut v, step).unwrap();
        let p = param.to_vec1::<f32>().unwrap()[0];
        assert!((p - (0.999 - 0.2 / 2.00001)).abs() < 1e-6, "{p}");
        assert!((m[0] - 0.2).abs() < 1e-7 && (v[0] - 0.04).abs() < 1e-7, "{m:?} {v:?}");
    }

    #[test]
    fn sgd_step_with_and_without_momentum() {
        let param = Tensor::new(&[1.0f32, -1.0], &Device::Cpu).unwrap();
        let grad = Tensor::new(&[0.5f32, 1.0], &Device::Cpu).unwrap();
        let step = SgdStep { decay_factor: None, mom: 0.9, step_size: -0.1 };
        sgd_step(&param, &grad, None, step).unwrap();
        assert_eq!(param.to_vec1::<f32>().unwrap(), [0.95, -1.1]);
        let mut m = vec![1.0f32, 0.0];
        sgd_step(&param, &grad, Some(&mut m), step).unwrap();
        // m = 0.9·1 + 0.5 = 1.4, 0 + 1 = 1; p = 0.95 - 0.14, -1.1 - 0.1.
        assert_eq!(m, [1.4, 1.0]);
        let p = param.to_vec1::<f32>().unwrap();
        assert!((p[0] - 0.81).abs() < 1e-6 && (p[1] + 1.2).abs() < 1e-6, "{p:?}");
    }

    #[test]
    fn a_parameter_the_kernels_cannot_take_is_refused() {
        let strided = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap().t().unwrap();
        assert!(!fused_step_supported(&strided));
        let grad = Tensor::zeros((2, 2), DType::F32, &Device::Cpu).unwrap();
        let step = SgdStep { decay_factor: None, mom: 0.0, step_size: -0.1 };
        let error = sgd_step(&strided, &grad, None, step).unwrap_err().to_string();
        assert!(error.contains("contiguous f32 on the CPU"), "{error}");
        let mut short = vec![0.0f32; 3];
        let param = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let grad = Tensor::zeros(4, DType::F32, &Device::Cpu).unwrap();
        let error = sgd_step(&param, &grad, Some(&mut short), step).unwrap_err().to_string();
        assert!(error.contains("3 elements"), "{error}");
    }
}
