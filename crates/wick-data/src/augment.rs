//! fastai's `aug_transforms` and `Resize`: the configuration, the per-image random draws, and
//! the lighting tone curve. Every draw comes from the RNG passed in, one image at a time
//! (fastai's `batch=False`), in a fixed documented order. The geometry they parametrise is
//! applied in one resampling pass by [`crate::geometry`].
//!
//! `RandomResizedCropGPU` draws one crop per batch in fastai (Python's `random` in
//! `before_call`); wick draws one per image by default, like every other augmentation, which
//! gives more variety and makes a batch independent of its neighbours. [`CropDraw::PerBatch`]
//! is fastai's way: the data loader then overrides each image's crop with its batch's
//! ([`AugTransforms::draw_crop`] from the batch's own stream).

use rand::Rng;

use crate::geometry::{
    CanvasCrop, Geometry, Mat3, ResizeMethod, TexelTable, resize_box, warp_homography,
};

/// fastai's `aug_transforms(...)` parameters, with its defaults except `min_scale`, which
/// chapter 7 sets to 0.75 (fastai's default 1.0 means "no random crop").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugTransforms {
    /// Horizontal flip with probability 0.5.
    pub do_flip: bool,
    /// Rotation drawn from U(-max_rotate, max_rotate) degrees with probability `p_affine`.
    pub max_rotate: f64,
    /// Zoom drawn from U(min_zoom, max_zoom) with probability `p_affine`.
    pub min_zoom: f64,
    /// The upper end of the zoom range (1.1: up to 10% in).
    pub max_zoom: f64,
    /// Perspective warp magnitudes drawn from U(-max_warp, max_warp), each axis kept with
    /// probability `p_affine`.
    pub max_warp: f64,
    /// Brightness and contrast strength (logit space), each applied with probability
    /// `p_lighting`.
    pub max_lighting: f64,
    /// Probability of each affine/warp part (rotation, zoom, warp axis).
    pub p_affine: f64,
    /// Probability of each lighting part (brightness, contrast).
    pub p_lighting: f64,
    /// The random square crop keeps an area fraction drawn from U(min_scale, 1).
    pub min_scale: f64,
    /// One crop per image (wick's default) or per batch (fastai's `RandomResizedCropGPU`).
    pub crop_draw: CropDraw,
}

/// How often `RandomResizedCropGPU`'s crop is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CropDraw {
    /// A crop per image, from the image's own stream (wick's default).
    #[default]
    PerImage,
    /// One crop for a whole batch, from the batch's stream, as fastai draws it; the data
    /// loader applies it (a lone `ItemPipeline::load` still draws per image).
    PerBatch,
}

impl Default for AugTransforms {
    fn default() -> Self {
        AugTransforms {
            do_flip: true,
            max_rotate: 10.0,
            min_zoom: 1.0,
            max_zoom: 1.1,
            max_warp: 0.2,
            max_lighting: 0.2,
            p_affine: 0.75,
            p_lighting: 0.75,
            min_scale: 0.75,
            crop_draw: CropDraw::PerImage,
        }
    }
}

/// The random choices made for one training image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AugDraw {
    /// `Resize` crop position fractions (x, y) in [0, 1).
    pub resize_pcts: (f64, f64),
    /// Mirror left-right.
    pub flip: bool,
    /// Rotation angle in degrees (0 = none).
    pub rotate_degrees: f64,
    /// Zoom factor (>= 1 zooms in) and its centre fractions (x, y).
    pub zoom: f64,
    /// The zoom's centre as fractions (x, y) of the image.
    pub zoom_centre: (f64, f64),
    /// Warp magnitudes (fastai's `x_t`, `y_t`).
    pub warp: (f64, f64),
    /// Crop area fraction and the crop's offset fractions in [0, 1] of the free space.
    pub crop_area: f64,
    /// The crop's offset fractions (x, y) in [0, 1] of the free space.
    pub crop_offset: (f64, f64),
    /// Brightness in (0, 1) (0.5 = unchanged) and contrast factor (1 = unchanged).
    pub brightness: f64,
    /// Contrast factor (1 = unchanged).
    pub contrast: f64,
}

impl AugDraw {
    /// The draw that changes nothing but keeps `Resize` centred: what validation uses.
    pub fn neutral() -> Self {
        AugDraw {
            resize_pcts: (0.5, 0.5),
            flip: false,
            rotate_degrees: 0.0,
            zoom: 1.0,
            zoom_centre: (0.5, 0.5),
            warp: (0.0, 0.0),
            crop_area: 1.0,
            crop_offset: (0.5, 0.5),
            brightness: 0.5,
            contrast: 1.0,
        }
    }
}

fn with_probability<R: Rng + ?Sized>(
    rng: &mut R,
    p: f64,
    draw: impl FnOnce(&mut R) -> f64,
    neutral: f64,
) -> f64 {
    // The value is drawn whatever the coin says, so the number of draws per image is fixed
    // and one augmentation's probability never shifts another's random stream.
    let keep = rng.random::<f64>() < p;
    let value = draw(rng);
    if keep { value } else { neutral }
}

fn uniform<R: Rng + ?Sized>(rng: &mut R, low: f64, high: f64) -> f64 {
    low + (high - low) * rng.random::<f64>()
}

impl AugTransforms {
    /// Draws `RandomResizedCropGPU`'s crop: the area fraction from U(min_scale, 1), then the
    /// offset fractions (x, y) in [0, 1) of the free space.
    pub fn draw_crop<R: Rng + ?Sized>(&self, rng: &mut R) -> (f64, (f64, f64)) {
        let crop_area = uniform(rng, self.min_scale, 1.0);
        (crop_area, (rng.random::<f64>(), rng.random::<f64>()))
    }

    /// Draws one training image's augmentation. The order of draws is part of the contract
    /// (it fixes what a seed means): resize position, flip, rotation, zoom and its centre,
    /// warp x then y, crop area and offsets, brightness, contrast.
    pub fn draw<R: Rng + ?Sized>(&self, rng: &mut R) -> AugDraw {
        let resize_pcts = (rng.random::<f64>(), rng.random::<f64>());
        let flip = with_probability(rng, if self.do_flip { 0.5 } else { 0.0 }, |_| 1.0, 0.0) == 1.0;
        let max_rotate = self.max_rotate;
        let rotate_degrees =
            with_probability(rng, self.p_affine, |r| uniform(r, -max_rotate, max_rotate), 0.0);
        let (min_zoom, max_zoom) = (self.min_zoom, self.max_zoom);
        let zoom = with_probability(rng, self.p_affine, |r| uniform(r, min_zoom, max_zoom), 1.0);
        let zoom_centre = (rng.random::<f64>(), rng.random::<f64>());
        let max_warp = self.max_warp;
        let warp_x = with_probability(rng, self.p_affine, |r| uniform(r, -max_warp, max_warp), 0.0);
        let warp_y = with_probability(rng, self.p_affine, |r| uniform(r, -max_warp, max_warp), 0.0);
        let (crop_area, crop_offset) = self.draw_crop(rng);
        let lighting = self.max_lighting;
        let brightness = with_probability(
            rng,
            self.p_lighting,
            |r| uniform(r, 0.5 * (1.0 - lighting), 0.5 * (1.0 + lighting)),
            0.5,
        );
        let log_contrast = -(1.0 - lighting).ln();
        let contrast = with_probability(
            rng,
            self.p_lighting,
            |r| uniform(r, -log_contrast, log_contrast).exp(),
            1.0,
        );
        AugDraw {
            resize_pcts,
            flip,
            rotate_degrees,
            zoom,
            zoom_centre,
            warp: (warp_x, warp_y),
            crop_area,
            crop_offset,
            brightness,
            contrast,
        }
    }
}

/// fastai's flip ∘ rotate ∘ zoom matrix `I·F·R·Z` for one draw (canvas normalised
/// coordinates; the canvas is square, so fastai's aspect correction is the identity).
pub fn affine_matrix(draw: &AugDraw) -> Mat3 {
    let flip = Mat3::affine(if draw.flip { -1.0 } else { 1.0 }, 0.0, 0.0, 0.0, 1.0, 0.0);
    let theta = draw.rotate_degrees.to_radians();
    let rotate = Mat3::affine(theta.cos(), theta.sin(), 0.0, -theta.sin(), theta.cos(), 0.0);
    let s = 1.0 / draw.zoom;
    let zoom = Mat3::affine(
        s,
        0.0,
        (1.0 - s) * (2.0 * draw.zoom_centre.0 - 1.0),
        0.0,
        s,
        (1.0 - s) * (2.0 * draw.zoom_centre.1 - 1.0),
    );
    flip.mul(&rotate).mul(&zoom)
}

/// The square crop of the canvas for an area fraction and offset fractions: side
/// `round(sqrt(area) * item_size)`, offsets uniform integers in `[0, item_size - side]`
/// (fastai's `RandomResizedCropGPU` with ratio 1).
pub fn canvas_crop(item_size: u32, area: f64, offset: (f64, f64)) -> CanvasCrop {
    let side = ((area * f64::from(item_size) * f64::from(item_size)).sqrt().round() as u32)
        .clamp(1, item_size);
    let free = f64::from(item_size - side + 1);
    let pick = |fraction: f64| ((fraction * free).floor() as u32).min(item_size - side);
    CanvasCrop { left: pick(offset.0), top: pick(offset.1), side }
}

/// The training geometry of an image of `width` x `height` for one draw.
pub fn train_geometry(
    width: u32,
    height: u32,
    item_size: u32,
    output_size: u32,
    method: ResizeMethod,
    draw: &AugDraw,
) -> Geometry {
    Geometry {
        item_size,
        output_size,
        source_box: resize_box(width, height, item_size, method, draw.resize_pcts),
        affine: affine_matrix(draw),
        warp: warp_homography(draw.warp.0, draw.warp.1),
        crop: canvas_crop(item_size, draw.crop_area, draw.crop_offset),
    }
}

/// fastai's lighting on one value in [0, 1]: `sigmoid(contrast · (logit(x) + logit(brightness)))`
/// with `x` clamped to [1e-7, 1 - 1e-7] (`Brightness` then `Contrast`, in logit space).
pub fn lighting(x: f64, brightness: f64, contrast: f64) -> f64 {
    Lighting::new(brightness, contrast).apply(x)
}

/// [`lighting`] for one draw, with `logit(brightness)` computed once (the same bits per
/// value).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Lighting {
    logit_brightness: f64,
    contrast: f64,
}

impl Lighting {
    pub(crate) fn new(brightness: f64, contrast: f64) -> Self {
        Lighting { logit_brightness: logit(brightness), contrast }
    }

    #[inline]
    pub(crate) fn apply(&self, x: f64) -> f64 {
        let clamped = x.clamp(1e-7, 1.0 - 1e-7);
        let t = self.contrast * (logit(clamped) + self.logit_brightness);
        1.0 / (1.0 + (-t).exp())
    }
}

#[inline]
fn logit(p: f64) -> f64 {
    -(1.0 / p - 1.0).ln()
}

/// The source-value table for one image's lighting draw: `lighting(byte / 255, b, c)` for
/// every byte (see [`TexelTable`] for why the curve applies to source values).
pub fn lighting_texels(brightness: f64, contrast: f64) -> TexelTable {
    TexelTable::with_curve(|x| lighting(x, brightness, contrast))
}
