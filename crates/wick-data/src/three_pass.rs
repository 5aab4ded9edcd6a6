//! fastai's own resampling order, three passes ([`crate::Resampling::ThreePass`]): PIL's
//! antialiased bilinear `Resize` to the canvas, stored as bytes; the flip/rotate/zoom/warp
//! `grid_sample` at the canvas size (of the pixels the crop keeps); the crop's `grid_sample`
//! to the output, after fastai's "area first" pre-shrink when the crop is more than twice
//! the output; lighting on the resampled values. It follows docs/decisions/0001's account
//! of fastai's chain (and `fastai-ch7-spec.md` §5.5-5.7) step by step, where the default
//! pipeline composes the same maps into one resampling: a fidelity option for runs that need
//! fastai's pixels. It follows `aug_transforms(size, min_scale < 1)`, whose
//! `RandomResizedCropGPU` does the resize (`ItemPipeline::validate` refuses the other
//! cases). Slower than the one pass: about 2.3x at 96 → 48 px and 13x at 460 → 224 px from
//! 224-px files (`cargo bench -p wick-data --bench data`, docs/performance.md).

use std::path::Path;

use fast_image_resize as fr;

use crate::augment::{AugDraw, Lighting, canvas_crop, train_geometry};
use crate::decode::{DecodeConfig, decode_rgb};
use crate::error::{DataError, Result};
#[cfg(target_arch = "x86_64")]
use crate::geometry::has_avx2_fma;
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
    // 2. Flip/rotate/zoom/warp at the canvas size, and 3. `RandomResizedCropGPU`'s slice of
    //    it (the whole canvas in validation, where the warp is the identity and skipped:
    //    sampling the identity grid returns the input exactly). Only the crop's pixels of the
    //    warped canvas are sampled: each is computed as if the whole canvas were.
    let (cropped, crop) = match mode {
        Mode::Train => {
            let crop = canvas_crop(item_size, draw.crop_area, draw.crop_offset);
            let full = Geometry { crop: CanvasCrop::full(item_size), ..geometry };
            let side = crop.side as usize;
            let mut planes = Planes { side, values: vec![0.0; 3 * side * side] };
            grid_sample(&canvas, &full.output_to_canvas(), &mut planes.values, crop);
            (planes, crop)
        }
        Mode::Valid => (canvas, CanvasCrop::full(item_size)),
    };
    //    Then the crop's identity grid sampled to the output, after the area pre-shrink
    //    fastai's `_grid_sample` applies when the crop is more than twice the output.
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
    grid_sample(&cropped, &identity.output_to_canvas(), out, CanvasCrop::full(output_size));
    // 4. Lighting (training only) on the resampled values.
    if mode == Mode::Train && (draw.brightness != 0.5 || draw.contrast != 1.0) {
        let curve = Lighting::new(draw.brightness, draw.contrast);
        for value in out.iter_mut() {
            *value = curve.apply(f64::from(*value)) as f32;
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
/// of a square image, for the output pixels in `window`: output pixel `(col, row)` of the
/// window is pixel `(window.left + col, window.top + row)` of the full output, which samples
/// `input` at the normalised point `map(x, y)`, reflected into [−1, 1]. `out` is `(3, side,
/// side)` with `side = window.side`.
///
/// Row by row — the source coordinates and taps of the row, then the bilinear reads of each
/// channel — with the same arithmetic as a pixel-at-a-time loop (the test module keeps one
/// as the reference). On x86-64 CPUs with AVX2 and FMA a copy compiled for them
/// is chosen at run time (the portable baseline has no vector `floor`); Rust never contracts
/// a multiply and an add into an FMA, so both copies give the same bits.
fn grid_sample(input: &Planes, map: &Mat3, out: &mut [f32], window: CanvasCrop) {
    let side = window.side as usize;
    assert_eq!(out.len(), 3 * side * side, "grid_sample: output buffer must be (3, S, S)");
    assert!(
        input.side > 0 && input.values.len() == 3 * input.side * input.side,
        "grid_sample: input must be a non-empty (3, N, N) image"
    );
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, the only requirements of `grid_sample_avx2`.
        unsafe { grid_sample_avx2(input, map, out, window) };
        return;
    }
    grid_sample_rows(input, map, out, window);
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn grid_sample_avx2(input: &Planes, map: &Mat3, out: &mut [f32], window: CanvasCrop) {
    grid_sample_rows(input, map, out, window);
}

#[inline(always)]
fn grid_sample_rows(input: &Planes, map: &Mat3, out: &mut [f32], window: CanvasCrop) {
    let n = input.side;
    let last = (n - 1) as f64;
    let mirror = Mirror::new(-1.0, 2.0); // images about −1 and 1, repeated
    let reflect = |value: f64| -> f64 {
        if (-1.0..=1.0).contains(&value) { value } else { mirror.apply(value) }
    };
    let side = window.side as usize;
    let (left, top) = (f64::from(window.left), f64::from(window.top));
    let plane_in = n * n;
    let plane_out = side * side;
    // Per output column of the row: the flat indices of the top-left, top-right and
    // bottom-left taps (each clamped into the image), and the two weights.
    let mut top_left = vec![0usize; side];
    let mut right = vec![0usize; side];
    let mut bottom_left = vec![0usize; side];
    let mut weight_x = vec![0f32; side];
    let mut weight_y = vec![0f32; side];
    for row in 0..side {
        let y_out = top + row as f64;
        for col in 0..side {
            let (u, v) = map.apply(left + col as f64, y_out);
            let x = ((reflect(u) + 1.0) / 2.0 * last).clamp(0.0, last);
            let y = ((reflect(v) + 1.0) / 2.0 * last).clamp(0.0, last);
            // x, y >= 0 (or NaN, which both casts take to 0), so truncation is `floor`, and
            // `as i32` is one vector instruction where `as usize` from f64 is not, on x86.
            let (x0, y0) = (x as i32 as usize, y as i32 as usize);
            let (x1, y1) = ((x0 + 1).min(n - 1), (y0 + 1).min(n - 1));
            top_left[col] = y0 * n + x0;
            right[col] = y0 * n + x1;
            bottom_left[col] = y1 * n + x0;
            weight_x[col] = (x - x0 as f64) as f32;
            weight_y[col] = (y - y0 as f64) as f32;
        }
        for channel in 0..3 {
            let p = &input.values[channel * plane_in..(channel + 1) * plane_in];
            let dst =
                &mut out[channel * plane_out + row * side..channel * plane_out + (row + 1) * side];
            for col in 0..side {
                let (a, b, c) = (top_left[col], right[col], bottom_left[col]);
                // The bottom-right tap: the bottom row, the right tap's column.
                let d = c + (b - a);
                let (fx, fy) = (weight_x[col], weight_y[col]);
                let upper = p[a] + (p[b] - p[a]) * fx;
                let lower = p[c] + (p[d] - p[c]) * fx;
                dst[col] = upper + (lower - upper) * fy;
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

    /// The pixel-at-a-time `grid_sample` that [`grid_sample`] restructures: the whole output
    /// (`side × side`), each pixel's coordinates, taps and three channels in turn.
    fn grid_sample_reference(input: &Planes, map: &Mat3, out: &mut [f32], side: usize) {
        let n = input.side;
        let last = (n - 1) as f64;
        let mirror = Mirror::new(-1.0, 2.0);
        let reflect = |value: f64| -> f64 {
            if (-1.0..=1.0).contains(&value) { value } else { mirror.apply(value) }
        };
        let (plane_in, plane_out) = (n * n, side * side);
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

    /// The row passes (and the AVX2 copy this machine may choose) give the reference's bits,
    /// for the whole output and for a window of it, under a rotation and zoom that reaches
    /// past the edges (reflection), a projective warp and the identity.
    #[test]
    fn grid_sample_gives_the_reference_bits() {
        let n = 37;
        let mut state = 12345u64;
        let values: Vec<f32> = (0..3 * n * n)
            .map(|_| {
                state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                (state >> 40) as f32 / (1u64 << 24) as f32
            })
            .collect();
        let input = Planes { side: n, values };
        let side = 29usize;
        let to_normalised = 2.0 / (side - 1) as f64;
        let (cos, sin) = (0.3f64.cos() * 1.3, 0.3f64.sin() * 1.3);
        let maps = [
            Mat3::affine(to_normalised, 0.0, -1.0, 0.0, to_normalised, -1.0),
            Mat3::affine(
                cos * to_normalised,
                -sin * to_normalised,
                -0.2,
                sin * to_normalised,
                cos * to_normalised,
                0.1,
            ),
            Mat3([
                [to_normalised, 0.01, -1.05],
                [0.002, to_normalised * 0.9, -0.95],
                [0.004, -0.003, 1.02],
            ]),
        ];
        for map in &maps {
            let mut want = vec![0.0f32; 3 * side * side];
            grid_sample_reference(&input, map, &mut want, side);
            // The copy this machine chooses, and the portable one.
            let mut got = vec![0.0f32; 3 * side * side];
            grid_sample(&input, map, &mut got, CanvasCrop::full(side as u32));
            assert!(got.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()));
            let mut portable = vec![0.0f32; 3 * side * side];
            grid_sample_rows(&input, map, &mut portable, CanvasCrop::full(side as u32));
            assert!(portable.iter().zip(&want).all(|(g, w)| g.to_bits() == w.to_bits()));
            // A window inside, and one flush with the bottom-right corner.
            for window in [
                CanvasCrop { left: 5, top: 3, side: 17 },
                CanvasCrop { left: 12, top: 12, side: 17 },
            ] {
                let w = window.side as usize;
                let mut part = vec![0.0f32; 3 * w * w];
                grid_sample(&input, map, &mut part, window);
                let (left, top) = (window.left as usize, window.top as usize);
                for channel in 0..3 {
                    for row in 0..w {
                        for col in 0..w {
                            let got = part[channel * w * w + row * w + col];
                            let want =
                                want[channel * side * side + (row + top) * side + col + left];
                            assert_eq!(got.to_bits(), want.to_bits(), "({channel}, {row}, {col})");
                        }
                    }
                }
            }
        }
        // A one-pixel input: every tap is that pixel.
        let single = Planes { side: 1, values: vec![0.25, 0.5, 0.75] };
        let mut out = vec![0.0f32; 3 * 4];
        grid_sample(&single, &maps[1], &mut out, CanvasCrop::full(2));
        assert_eq!(out, [0.25, 0.25, 0.25, 0.25, 0.5, 0.5, 0.5, 0.5, 0.75, 0.75, 0.75, 0.75]);
    }

    #[test]
    fn identity_grid_returns_the_input() {
        let values: Vec<f32> = (0..48).map(|v| v as f32 / 47.0).collect();
        let input = Planes { side: 4, values: values.clone() };
        let to_normalised = 2.0 / 3.0;
        let map = Mat3::affine(to_normalised, 0.0, -1.0, 0.0, to_normalised, -1.0);
        let mut out = vec![0.0; 48];
        grid_sample(&input, &map, &mut out, CanvasCrop::full(4));
        for (got, want) in out.iter().zip(&values) {
            assert!((got - want).abs() < 1e-6, "{got} vs {want}");
        }
    }
}
