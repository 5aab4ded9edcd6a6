//! `Normalize`: per-channel `(x - mean) / std` as a batch transform on the batch's device
//! (fastai's `Normalize.from_stats`, order 99, the last batch transform). Optional: chapter 7's
//! baseline trains without it.

use candle::{DType, Device, Tensor};

/// ImageNet channel means (R, G, B) of pixel values in [0, 1] (fastai's `imagenet_stats`).
pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
/// ImageNet channel standard deviations (R, G, B).
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

/// Per-channel normalisation of `(B, 3, H, W)` batches, with its statistics held on a device.
#[derive(Debug, Clone)]
pub struct Normalize {
    mean: Tensor,
    std: Tensor,
}

impl Normalize {
    /// Normalisation by the given per-channel statistics; `std` must be positive.
    pub fn new(mean: [f32; 3], std: [f32; 3], device: &Device) -> candle::Result<Self> {
        if let Some(bad) = std.iter().find(|value| value.is_nan() || **value <= 0.0) {
            candle::bail!("normalize: every std must be positive, got {bad} in {std:?}");
        }
        let mean = Tensor::from_slice(&mean, (1, 3, 1, 1), device)?;
        let std = Tensor::from_slice(&std, (1, 3, 1, 1), device)?;
        Ok(Normalize { mean, std })
    }

    /// fastai's `Normalize.from_stats(*imagenet_stats)`.
    pub fn imagenet(device: &Device) -> candle::Result<Self> {
        Normalize::new(IMAGENET_MEAN, IMAGENET_STD, device)
    }

    /// `(x - mean) / std` on a `(B, 3, H, W)` batch.
    pub fn forward(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.check(xs, "forward")?;
        xs.broadcast_sub(&self.mean)?.broadcast_div(&self.std)
    }

    /// The inverse, `x * std + mean`, for showing normalised batches.
    pub fn inverse(&self, xs: &Tensor) -> candle::Result<Tensor> {
        self.check(xs, "inverse")?;
        xs.broadcast_mul(&self.std)?.broadcast_add(&self.mean)
    }

    fn check(&self, xs: &Tensor, op: &str) -> candle::Result<()> {
        let dims = xs.dims();
        if dims.len() != 4 || dims[1] != 3 || xs.dtype() != DType::F32 {
            candle::bail!(
                "normalize {op}: expected a (B, 3, H, W) f32 batch, got {:?} {:?}",
                dims,
                xs.dtype()
            );
        }
        Ok(())
    }
}
