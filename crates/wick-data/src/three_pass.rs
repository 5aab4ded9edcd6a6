//! fastai's own resampling order, three passes ([`crate::Resampling::ThreePass`]): PIL's
//! antialiased bilinear `Resize` to the canvas, stored as bytes; the flip/rotate/zoom/warp
//! `grid_sample` at the canvas size; the crop's `grid_sample` to the output, after fastai's
//! "area first" pre-shrink when the crop is more than twice the output; lighting on the
//! resampled values. It follows docs/decisions/0001's account of fastai's chain (and
//! `fastai-ch7-spec.md` §5.5-5.7) step by step, where the default pipeline composes the same
//! maps into one resampling: a fidelity option for runs that need fastai's pixels. It follows
//! `aug_transforms(size, min_scale < 1)`, whose `RandomResizedCropGPU` does the resize
//! (`ItemPipeline::validate` refuses the other cases). Slower than the one pass: about 3x at
//! 96 → 48 px and 18x at 460 → 224 px from 224-px files (`cargo bench -p wick-data --bench
//! data`, docs/performance.md).

use std::path::Path;

use fast_image_resize as fr;

use crate::augment::{AugDraw, canvas_crop, lighting, train_geometry};
use crate::decode::{DecodeConfig, decode_rgb};
use crate::error::{DataError, Result};
use crate::geometry::{CanvasCrop, Geometry, Mat3, Mirror, ResizeMethod};
use crate::pipeline::Mode;

/// A square float image, planar `(3, side, side)`, values in [0, 1].
struct Planes {
    side: usize,
    values: Vec<f32>,
}

/// Loads one image in fastai's order into `out` (`(3, S, S)`, values in [0, 1]).
///
/// # Errors
/// The file does not decode (the error names `path`), or `method` is `Pad` (fastai pads with
/// PIL's border, which this path does not reproduce; `ItemPipeline::validate` refuses it
/// first).
pub(crate) fn load(
    bytes: &[u8],
    path: &Path,
    (item_size, output_size, method): (u32, u32, ResizeMethod),
    decode: &DecodeConfig,
    mode: Mode,
    draw: &AugDraw,
    out: &mut [f32],
) -> Result<()> {
    if method == ResizeMethod::Pad {
        return Err(DataError::InvalidConfig {
            name: "resampling",
            reason: "three_pass resampling supports the crop and squish resize methods".into(),
        });
    }
    // Full size: PIL's `Resize` sees every source pixel.
    let decoded = decode_rgb(bytes, path, (u32::MAX, u32::MAX), decode)?;
    let (width, height) = (decoded.image.width(), decoded.image.height());
    // 1. `Resize(item_size)`: the crop box cut out (fastai's `crop_pad`, whole pixels), then
    //    PIL's bilinear resize of it (antialiased when it shrinks; only the box's pixels
    //    count), rounded to bytes as PIL stores it.
    let geometry = train_geometry(width, height, item_size, item_size, method, draw);
    let b = geometry.source_box;
    let source =
        fr::images::ImageRef::new(width, height, decoded.image.as_raw(), fr::PixelType::U8x3)
            .map_err(|error| DataError::decode(path, format!("resize source: {error}")))?;
    let cut = fr::images::CroppedImage::new(
        &source,
        b.left as u32,
        b.top as u32,
        b.width as u32,
        b.height as u32,
    )
    .map_err(|error| DataError::decode(path, format!("resize box: {error}")))?;
    let mut canvas_bytes = fr::images::Image::new(item_size, item_size, fr::PixelType::U8x3);
    let options =
        fr::ResizeOptions::new().resize_alg(fr::ResizeAlg::Convolution(fr::FilterType::Bilinear));
    fr::Resizer::new()
        .resize(&cut, &mut canvas_bytes, &options)
        .map_err(|error| DataError::decode(path, format!("resize: {error}")))?;
    let canvas = to_planes(canvas_bytes.buffer(), item_size as usize);
    // 2. Flip/rotate/zoom/warp at the canvas size (identity in validation: skipped, as
    //    sampling the identity grid returns the input exactly).
    let canvas = if mode == Mode::Train {
        let full = Geometry { crop: CanvasCrop::full(item_size), ..geometry };
        let mut planes = Planes { side: canvas.side, values: vec![0.0; canvas.values.len()] };
        grid_sample(&canvas, &full.output_to_canvas(), &mut planes.values, canvas.side);
        planes
    } else {
        canvas
    };
    // 3. `RandomResizedCropGPU`: the crop (the whole canvas in validation) sliced out, then
    //    its identity grid sampled to the output, after the area pre-shrink fastai's
    //    `_grid_sample` applies when the crop is more than twice the output.
    let crop = match mode {
        Mode::Train => canvas_crop(item_size, draw.crop_area, draw.crop_offset),
        Mode::Valid => CanvasCrop::full(item_size),
    };
    let cropped = if crop.side as usize == canvas.side { canvas } else { slice(&canvas, crop) };
    let cropped = match area_target(crop.side, output_size) {
        Some(side) => area_pool(&cropped, side),
        None => cropped,
    };
    // The crop's identity grid (`affine_grid` of the identity, align_corners=True).
    let identity = Geometry {
        item_size: crop.side,
        output_size,
        source_box: geometry.source_box,
        affine: Mat3::IDENTITY,
        warp: Mat3::IDENTITY,
        crop: CanvasCrop::full(crop.side),
    };
    grid_sample(&cropped, &identity.output_to_canvas(), out, output_size as usize);
    // 4. Lighting (training only) on the resampled values.
    if mode == Mode::Train && (draw.brightness != 0.5 || draw.contrast != 1.0) {
        for value in out.iter_mut() {
            *value = lighting(f64::from(*value), draw.brightness, draw.contrast) as f32;
        }
    }
    Ok(())
}

/// Interleaved RGB bytes of a `side × side` image as planar floats `byte / 255`.
fn to_planes(bytes: &[u8], side: usize) -> Planes {
    let plane = side * side;
    let mut values = vec![0.0f32; 3 * plane];
    for (index, pixel) in bytes.chunks_exact(3).enumerate() {
        for (channel, &byte) in pixel.iter().enumerate() {
            values[channel * plane + index] = f32::from(byte) / 255.0;
        }
    }
    Planes { side, values }
}

/// The `side × side` square of `canvas` at the crop's top-left corner.
fn slice(canvas: &Planes, crop: CanvasCrop) -> Planes {
    let (n, side) = (canvas.side, crop.side as usize);
    let (left, top) = (crop.left as usize, crop.top as usize);
    let mut values = Vec::with_capacity(3 * side * side);
    for channel in 0..3 {
        let plane = &canvas.values[channel * n * n..(channel + 1) * n * n];
        for row in top..top + side {
            values.extend_from_slice(&plane[row * n + left..row * n + left + side]);
        }
    }
    Planes { side, values }
}

/// fastai's "area first" rule in `_grid_sample` for a `crop_side` crop sampled to `output`
/// pixels on its identity grid (`z = 1`): with `d = (crop_side / output) / 2`, the crop is
/// first shrunk to `⌊crop_side · (1/d)⌋` when `d > 1` (`F.interpolate(scale_factor=1/d,
/// mode='area', recompute_scale_factor=True)`, the same double-precision arithmetic).
/// Returns that side, or `None`.
fn area_target(crop_side: u32, output: u32) -> Option<usize> {
    let d = f64::from(crop_side) / f64::from(output) / 2.0;
    (d > 1.0).then(|| (f64::from(crop_side) * (1.0 / d)).floor().max(1.0) as usize)
}

/// PyTorch's `mode='area'` (adaptive average pooling) of a square image to `side`: output
/// pixel `i` averages input pixels `⌊i·n/side⌋ .. ⌈(i+1)·n/side⌉` along each axis.
fn area_pool(input: &Planes, side: usize) -> Planes {
    let n = input.side;
    let bins: Vec<(usize, usize)> =
        (0..side).map(|i| (i * n / side, ((i + 1) * n).div_ceil(side))).collect();
    let mut values = vec![0.0f32; 3 * side * side];
    for channel in 0..3 {
        let source = &input.values[channel * n * n..(channel + 1) * n * n];
        for (row, &(top, bottom)) in bins.iter().enumerate() {
            for (col, &(left, right)) in bins.iter().enumerate() {
                let mut sum = 0.0f32;
                for y in top..bottom {
                    sum += source[y * n + left..y * n + right].iter().sum::<f32>();
                }
                values[channel * side * side + row * side + col] =
                    sum / ((bottom - top) * (right - left)) as f32;
            }
        }
    }
    Planes { side, values }
}

/// `grid_sample(input, grid, mode='bilinear', padding_mode='reflection', align_corners=True)`
/// of a square image: output pixel `(col, row)` samples `input` at the normalised point
/// `map(col, row)`, reflected into [−1, 1]. `out` is `(3, side, side)`.
fn grid_sample(input: &Planes, map: &Mat3, out: &mut [f32], side: usize) {
    let n = input.side;
    let last = (n - 1) as f64;
    let mirror = Mirror::new(-1.0, 2.0); // images about −1 and 1, repeated
    let reflect = |value: f64| -> f64 {
        if (-1.0..=1.0).contains(&value) { value } else { mirror.apply(value) }
    };
    let plane_in = n * n;
    let plane_out = side * side;
    for row in 0..side {
        for col in 0..side {
            let (u, v) = map.apply(col as f64, row as f64);
            let x = ((reflect(u) + 1.0) / 2.0 * last).clamp(0.0, last);
            let y = ((reflect(v) + 1.0) / 2.0 * last).clamp(0.0, last);
            let (x0, y0) = (x.floor() as usize, y.floor() as usize);
            let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
            let (fx, fy) = ((x - x0 as f64) as f32, (y - y0 as f64) as f32);
            for channel in 0..3 {
                let p = &input.values[channel * plane_in..(channel + 1) * plane_in];
                let upper = p[y0 * n + x0] + (p[y0 * n + x1] - p[y0 * n + x0]) * fx;
                let lower = p[y1 * n + x0] + (p[y1 * n + x1] - p[y1 * n + x0]) * fx;
                out[channel * plane_out + row * side + col] = upper + (lower - upper) * fy;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_rule_follows_fastai() {
        // fastai 2.8's `_grid_sample`: d = (crop / output) / 2, pooled when d > 1 to
        // floor(crop · (1/d)) (Python: `math.floor(96 * (1 / (96 / 48 / 2)))` etc.).
        assert_eq!(area_target(96, 48), None); // d = 1
        assert_eq!(area_target(96, 32), Some(64));
        assert_eq!(area_target(83, 32), Some(64));
        assert_eq!(area_target(64, 32), None);
        assert_eq!(area_target(460, 224), Some(448)); // 460 · (1 / 1.0267857…) = 448.0
        assert_eq!(area_target(448, 224), None);
        assert_eq!(area_target(97, 48), Some(95)); // floor(97 · (1 / 1.0104…)) = 95, not 96
    }

    #[test]
    fn area_pool_averages_its_bins() {
        // 3 → 2: bins [0, 2) and [1, 3) along each axis (PyTorch's adaptive_avg_pool2d).
        let values: Vec<f32> = (0..27).map(|v| v as f32).collect();
        let pooled = area_pool(&Planes { side: 3, values }, 2);
        // Channel 0 is 0..9 row-major: the top-left bin averages 0, 1, 3, 4.
        assert_eq!(&pooled.values[..4], &[2.0, 3.0, 5.0, 6.0]);
    }

    #[test]
    fn identity_grid_returns_the_input() {
        let values: Vec<f32> = (0..48).map(|v| v as f32 / 47.0).collect();
        let input = Planes { side: 4, values: values.clone() };
        let to_normalised = 2.0 / 3.0;
        let map = Mat3::affine(to_normalised, 0.0, -1.0, 0.0, to_normalised, -1.0);
        let mut out = vec![0.0; 48];
        grid_sample(&input, &map, &mut out, 4);
        for (got, want) in out.iter().zip(&values) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
