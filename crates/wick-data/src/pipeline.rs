//! The per-image pipeline: file → decoded RGB (DCT-scaled when that loses nothing) → area
//! pre-shrink when still more than 2x too large → one composed resampling pass with lighting
//! → a `(3, S, S)` f32 slice in [0, 1]. This is fastai's item transforms (`Resize`) plus the
//! per-image part of its batch transforms (`aug_transforms`, `IntToFloatTensor`); the batch
//! part (`Normalize`) runs on the device in [`crate::normalize`].

use std::path::Path;

use fast_image_resize as fr;
use image::RgbImage;
use rand::Rng;

use crate::augment::{AugDraw, AugTransforms, lighting_texels, train_geometry};
use crate::decode::{DecodeConfig, decode_rgb, image_size};
use crate::error::{DataError, Result};
use crate::geometry::{Geometry, Region, ResizeMethod, TexelTable, render};

/// Which split's transforms run: fastai's `split_idx` (0 = train: random `Resize` crop and
/// every augmentation; 1 = valid: centred `Resize`, no augmentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// `split_idx` 0: random `Resize` crop and augmentation.
    Train,
    /// `split_idx` 1: centred `Resize`, no augmentation.
    Valid,
}

/// What happens to each image between its file and its tensor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ItemPipeline {
    /// `Resize(item_size, method)`: the square canvas the augmentations work on (fastai's
    /// "presizing"; chapter 7 uses 460).
    pub item_size: u32,
    /// How `Resize` fits the image into the square (crop, pad or squish).
    pub method: ResizeMethod,
    /// Side of the square output, `H = W` (chapter 7: 224, or 128 in progressive resizing).
    pub output_size: u32,
    /// Training augmentation; `None` trains with the random `Resize` crop only.
    pub augment: Option<AugTransforms>,
    /// Limits and hints for decoding.
    pub decode: DecodeConfig,
    /// How many times the image is resampled: once (wick's default) or in fastai's order.
    pub resampling: Resampling,
}

/// How the geometry of an image is applied (docs/decisions/0001-one-pass-augmentation.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Resampling {
    /// wick's default: every geometric step composed into one bilinear sampling of the
    /// decoded image (after a DCT-domain and area pre-shrink when it is still more than twice
    /// the output), lighting applied to the source values.
    #[default]
    OnePass,
    /// fastai's own order, three resamplings: PIL's antialiased bilinear `Resize` to the
    /// canvas (bytes), the flip/rotate/zoom/warp `grid_sample` at the canvas size, the crop's
    /// `grid_sample` to the output (area pre-shrink first by fastai's rule), lighting last
    /// (`three_pass.rs`). Same random draws as `OnePass`; slower. It reproduces
    /// `aug_transforms(size, min_scale < 1)` with the `Crop` or `Squish` method
    /// ([`ItemPipeline::validate`] refuses the rest).
    ThreePass,
}

impl ItemPipeline {
    /// Chapter 7's pipeline: `Resize(460)` then `aug_transforms(size, min_scale=0.75)`.
    pub fn chapter7(output_size: u32) -> Self {
        ItemPipeline {
            item_size: 460,
            method: ResizeMethod::Crop,
            output_size,
            augment: Some(AugTransforms::default()),
            decode: DecodeConfig::default(),
            resampling: Resampling::OnePass,
        }
    }

    /// Checks the sizes are usable, and that `ThreePass` is asked only for what it
    /// reproduces (see [`Resampling::ThreePass`]).
    ///
    /// # Errors
    /// `DataError::InvalidConfig` naming the setting.
    pub fn validate(&self) -> Result<()> {
        if self.item_size < 2 || self.output_size < 1 {
            return Err(DataError::InvalidConfig {
                name: "item pipeline sizes",
                reason: format!(
                    "item_size {} and output_size {} must be >= 2 and >= 1",
                    self.item_size, self.output_size
                ),
            });
        }
        if self.resampling == Resampling::ThreePass {
            if self.method == ResizeMethod::Pad {
                return Err(DataError::InvalidConfig {
                    name: "resampling",
                    reason: "three_pass with method Pad: fastai pads with PIL's border, which \
                             three_pass does not reproduce (use crop or squish, or one_pass)"
                        .into(),
                });
            }
            if let Some(augment) = &self.augment
                && augment.min_scale >= 1.0
            {
                return Err(DataError::InvalidConfig {
                    name: "resampling",
                    reason: format!(
                        "three_pass with min_scale = {}: fastai then resizes inside the affine \
                         pass (no RandomResizedCropGPU), an order three_pass does not \
                         reproduce (use min_scale < 1, or one_pass)",
                        augment.min_scale
                    ),
                });
            }
        }
        Ok(())
    }

    /// Number of f32 values one image produces: `3 * S * S`.
    pub fn item_len(&self) -> usize {
        3 * self.output_size as usize * self.output_size as usize
    }

    /// Loads the image at `path` into `out` (`(3, S, S)`, values in [0, 1]). In `Train` mode
    /// the augmentation is drawn from `rng`; in `Valid` mode `rng` is not touched.
    pub fn load(&self, path: &Path, mode: Mode, rng: &mut impl Rng, out: &mut [f32]) -> Result<()> {
        let bytes = std::fs::read(path).map_err(|error| DataError::io(path, error))?;
        self.load_bytes(&bytes, path, mode, rng, out)
    }

    /// Loads the image at `path` in `Mode::Valid` (centred `Resize`, no augmentation), which
    /// needs no random generator: what prediction and pictures use.
    pub fn load_plain(&self, path: &Path, out: &mut [f32]) -> Result<()> {
        // Validation draws nothing; the generator only satisfies the signature.
        let mut unused = <rand_chacha::ChaCha8Rng as rand::SeedableRng>::seed_from_u64(0);
        self.load(path, Mode::Valid, &mut unused, out)
    }

    /// [`ItemPipeline::load`] on the file's bytes (`path` only names it in errors).
    pub fn load_bytes(
        &self,
        bytes: &[u8],
        path: &Path,
        mode: Mode,
        rng: &mut impl Rng,
        out: &mut [f32],
    ) -> Result<()> {
        // The header first: an undecodable file draws nothing from `rng`.
        let size = image_size(bytes, path)?;
        self.load_sized(bytes, path, size, mode, &self.draw(mode, rng), out)
    }

    /// The random choices for one image in `mode`: the augmentation's draw (`Train`), only
    /// `Resize`'s crop position when the pipeline does not augment, nothing in `Valid` mode
    /// (the neutral draw; `rng` untouched).
    pub fn draw(&self, mode: Mode, rng: &mut impl Rng) -> AugDraw {
        match (mode, &self.augment) {
            (Mode::Train, Some(augment)) => augment.draw(rng),
            (Mode::Train, None) => {
                AugDraw { resize_pcts: (rng.random(), rng.random()), ..AugDraw::neutral() }
            }
            (Mode::Valid, _) => AugDraw::neutral(),
        }
    }

    /// [`ItemPipeline::load_bytes`] with the random choices given instead of drawn (`Valid`
    /// mode ignores `draw` and uses the centred `Resize`): what the data loader uses (it
    /// replaces the crop under `CropDraw::PerBatch`), and tests, to put one draw beside
    /// fastai's output for the same parameters.
    ///
    /// # Errors
    /// The bytes do not decode as an image (the error names `path`); `ThreePass` with the
    /// `Pad` method (refused by [`ItemPipeline::validate`] first).
    pub fn load_drawn(
        &self,
        bytes: &[u8],
        path: &Path,
        mode: Mode,
        draw: &AugDraw,
        out: &mut [f32],
    ) -> Result<()> {
        self.load_sized(bytes, path, image_size(bytes, path)?, mode, draw, out)
    }

    /// [`ItemPipeline::load_drawn`] once the header gave the image's `(width, height)`.
    fn load_sized(
        &self,
        bytes: &[u8],
        path: &Path,
        (width, height): (u32, u32),
        mode: Mode,
        draw: &AugDraw,
        out: &mut [f32],
    ) -> Result<()> {
        let draw = match mode {
            Mode::Train => *draw,
            Mode::Valid => AugDraw::neutral(),
        };
        if self.resampling == Resampling::ThreePass {
            let sizes = (self.item_size, self.output_size, self.method);
            return crate::three_pass::load(bytes, path, sizes, &self.decode, mode, &draw, out);
        }
        let geometry = match mode {
            Mode::Train => {
                train_geometry(width, height, self.item_size, self.output_size, self.method, &draw)
            }
            Mode::Valid => {
                Geometry::plain(width, height, self.item_size, self.output_size, self.method)
            }
        };
        // Decode at the largest DCT reduction that keeps at least one decoded pixel per
        // output pixel; the reduction is a proper low-pass filter, unlike point sampling.
        let (per_x, per_y) = geometry.source_pixels_per_output_pixel();
        let min_size = (
            (f64::from(width) / per_x.max(1.0)).ceil() as u32,
            (f64::from(height) / per_y.max(1.0)).ceil() as u32,
        );
        let decoded = decode_rgb(bytes, path, min_size, &self.decode)?;
        let decoded_scale = (
            f64::from(width) / f64::from(decoded.image.width()),
            f64::from(height) / f64::from(decoded.image.height()),
        );
        let shrunk = pre_shrink(&decoded.image, &geometry, decoded_scale, path)?;
        let region = match &shrunk {
            Some((image, origin, scale)) => Region { image, origin: *origin, scale: *scale },
            None => Region { image: &decoded.image, origin: (0.0, 0.0), scale: decoded_scale },
        };
        let texels = if mode == Mode::Train && (draw.brightness != 0.5 || draw.contrast != 1.0) {
            lighting_texels(draw.brightness, draw.contrast)
        } else {
            TexelTable::linear()
        };
        render(&geometry, &region, &texels, out);
        Ok(())
    }
}

type ShrunkRegion = (RgbImage, (f64, f64), (f64, f64));

/// fastai's "area first" trick: when the source is still more than twice the output's
/// resolution, average it down (box filter = area interpolation) to about twice the output
/// before the bilinear pass, so bilinear never skips pixels. Only the part of the image under
/// the `Resize` box is shrunk. Returns the shrunk region, its origin in original pixels and
/// its scale (original pixels per region pixel), or `None` when no shrink is needed.
fn pre_shrink(
    decoded: &RgbImage,
    geometry: &Geometry,
    decoded_scale: (f64, f64),
    path: &Path,
) -> Result<Option<ShrunkRegion>> {
    let (per_x, per_y) = geometry.source_pixels_per_output_pixel();
    let (excess_x, excess_y) = (per_x / decoded_scale.0 / 2.0, per_y / decoded_scale.1 / 2.0);
    if excess_x <= 1.0 && excess_y <= 1.0 {
        return Ok(None);
    }
    // The Resize box in decoded pixels, widened to whole pixels and clamped to the image.
    let b = &geometry.source_box;
    let (width, height) = (f64::from(decoded.width()), f64::from(decoded.height()));
    let left = (b.left / decoded_scale.0).floor().clamp(0.0, width - 1.0);
    let top = (b.top / decoded_scale.1).floor().clamp(0.0, height - 1.0);
    let right = ((b.left + b.width) / decoded_scale.0).ceil().clamp(left + 1.0, width);
    let bottom = ((b.top + b.height) / decoded_scale.1).ceil().clamp(top + 1.0, height);
    let (crop_w, crop_h) = (right - left, bottom - top);
    let target_w = (crop_w / excess_x.max(1.0)).floor().max(1.0) as u32;
    let target_h = (crop_h / excess_y.max(1.0)).floor().max(1.0) as u32;
    let source = fr::images::ImageRef::new(
        decoded.width(),
        decoded.height(),
        decoded.as_raw(),
        fr::PixelType::U8x3,
    )
    .map_err(|error| DataError::decode(path, format!("pre-shrink source: {error}")))?;
    let mut target = fr::images::Image::new(target_w, target_h, fr::PixelType::U8x3);
    let options = fr::ResizeOptions::new()
        .resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Box))
        .crop(left, top, crop_w, crop_h);
    fr::Resizer::new()
        .resize(&source, &mut target, &options)
        .map_err(|error| DataError::decode(path, format!("pre-shrink: {error}")))?;
    let image = RgbImage::from_raw(target_w, target_h, target.into_vec())
        .ok_or_else(|| DataError::decode(path, "pre-shrink returned a short buffer"))?;
    let origin = (left * decoded_scale.0, top * decoded_scale.1);
    let scale = (
        decoded_scale.0 * crop_w / f64::from(target_w),
        decoded_scale.1 * crop_h / f64::from(target_h),
    );
    Ok(Some((image, origin, scale)))
}
