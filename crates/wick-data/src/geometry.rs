//! The geometry of one image's trip from decoded pixels to the model's input, as ONE
//! resampling pass. fastai resamples up to three times (PIL `Resize(460)`, then a
//! `grid_sample` for flip/rotate/zoom/warp at 460 px, then another for the random crop to the
//! final size); wick composes every step into a single map from output pixels to source
//! pixels and samples once (bilinear, reflection padding, with fastai's area pre-shrink when
//! downscaling more than 2x). This module owns that map and the sampler; the random draws
//! that parametrise it live in [`crate::augment`].
//!
//! Coordinates are `(x, y)` = (column, row). Following fastai (`align_corners=True`), the
//! "canvas" — the square `item_size` image that `Resize` would have produced — is addressed in
//! normalised coordinates where -1 and +1 are the centres of its first and last pixels.

use image::RgbImage;

/// A 3x3 matrix acting on homogeneous 2-D points `(x, y, 1)`: affine maps and homographies.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Mat3(pub [[f64; 3]; 3]);

impl Mat3 {
    /// The identity.
    pub const IDENTITY: Mat3 = Mat3([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]);

    /// The affine map `(x, y) -> (a x + b y + c, d x + e y + f)`.
    pub fn affine(a: f64, b: f64, c: f64, d: f64, e: f64, f: f64) -> Mat3 {
        Mat3([[a, b, c], [d, e, f], [0.0, 0.0, 1.0]])
    }

    /// The matrix product `self · other` (apply `other` first).
    pub fn mul(&self, other: &Mat3) -> Mat3 {
        let mut out = [[0.0; 3]; 3];
        for (row, out_row) in out.iter_mut().enumerate() {
            for (col, value) in out_row.iter_mut().enumerate() {
                *value = (0..3).map(|k| self.0[row][k] * other.0[k][col]).sum();
            }
        }
        Mat3(out)
    }

    /// Applies the map to a point, dividing by the homogeneous coordinate.
    pub fn apply(&self, x: f64, y: f64) -> (f64, f64) {
        let m = &self.0;
        let w = m[2][0] * x + m[2][1] * y + m[2][2];
        ((m[0][0] * x + m[0][1] * y + m[0][2]) / w, (m[1][0] * x + m[1][1] * y + m[1][2]) / w)
    }
}

/// The homography that maps each `from[i]` to `to[i]` (four point pairs), fastai's
/// `find_coeffs(p1=to, p2=from)`: the 8 coefficients solve a linear system, the ninth is 1.
/// Returns `None` when the points are degenerate (three of them collinear).
pub(crate) fn homography(from: [(f64, f64); 4], to: [(f64, f64); 4]) -> Option<Mat3> {
    let mut system = [[0.0f64; 9]; 8];
    for (i, (&(fx, fy), &(tx, ty))) in from.iter().zip(to.iter()).enumerate() {
        system[2 * i] = [fx, fy, 1.0, 0.0, 0.0, 0.0, -tx * fx, -tx * fy, tx];
        system[2 * i + 1] = [0.0, 0.0, 0.0, fx, fy, 1.0, -ty * fx, -ty * fy, ty];
    }
    // Gaussian elimination with partial pivoting on the augmented 8x9 system.
    for col in 0..8 {
        let pivot =
            (col..8).max_by(|&a, &b| system[a][col].abs().total_cmp(&system[b][col].abs()))?;
        if system[pivot][col].abs() < 1e-12 {
            return None;
        }
        system.swap(col, pivot);
        let pivot_row = system[col];
        for (row_idx, row) in system.iter_mut().enumerate() {
            if row_idx != col {
                let factor = row[col] / pivot_row[col];
                for (value, pivot_value) in row.iter_mut().zip(pivot_row.iter()).skip(col) {
                    *value -= factor * pivot_value;
                }
            }
        }
    }
    let c: Vec<f64> = (0..8).map(|row| system[row][8] / system[row][row]).collect();
    Some(Mat3([[c[0], c[1], c[2]], [c[3], c[4], c[5]], [c[6], c[7], 1.0]]))
}

/// fastai's perspective warp (`_WarpCoord`) for magnitudes `x_t` and `y_t`: the homography
/// taking the moved corners back to the canvas corners, applied to sampling coordinates
/// after the affine map.
pub fn warp_homography(x_t: f64, y_t: f64) -> Mat3 {
    let corners = [(-1.0, -1.0), (-1.0, 1.0), (1.0, -1.0), (1.0, 1.0)];
    let moved = [
        (-1.0 - y_t, -1.0 - x_t),
        (-1.0 + y_t, 1.0 + x_t),
        (1.0 + y_t, -1.0 + x_t),
        (1.0 - y_t, 1.0 - x_t),
    ];
    // Invariant: |x_t|, |y_t| < 1 keeps the four moved corners in general position.
    homography(moved, corners).unwrap_or(Mat3::IDENTITY)
}

/// Reflects a coordinate into `[low, low + span]` as `grid_sample(padding_mode='reflection',
/// align_corners=True)` does (mirror images about the two end points, repeated), without
/// branches, for the vectorised hot loop: the triangle wave with period `2 * span` that equals
/// `value` on `[low, low + span]` (`span > 0`). The unit tests check it against a plain
/// reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Mirror {
    low: f64,
    span: f64,
    period: f64,
    inverse_period: f64,
}

impl Mirror {
    pub(crate) fn new(low: f64, span: f64) -> Self {
        let span = span.max(f64::MIN_POSITIVE);
        Mirror { low, span, period: 2.0 * span, inverse_period: 1.0 / (2.0 * span) }
    }

    #[inline]
    pub(crate) fn apply(&self, value: f64) -> f64 {
        let t = (value - self.low) * self.inverse_period;
        let phase = (t - t.floor()) * self.period; // in [0, period)
        self.low + (self.span - (phase - self.span).abs()) // in [low, low + span]
    }
}

/// Which part of the source image fills the square canvas (fastai's `ResizeMethod`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ResizeMethod {
    /// The largest square that fits, at a random offset in training and centred in
    /// validation (fastai's default, used by chapter 7).
    #[default]
    Crop,
    /// The whole image, padded to a square by reflection.
    Pad,
    /// The whole image, stretched to a square.
    Squish,
}

/// A rectangle of the source image in pixel units: left, top, width, height. It may reach
/// outside the image (the `Pad` method), where pixels come from reflection.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SourceBox {
    /// x of the left edge, px (negative reaches left of the image).
    pub left: f64,
    /// y of the top edge, px (negative reaches above the image).
    pub top: f64,
    /// Width, px.
    pub width: f64,
    /// Height, px.
    pub height: f64,
}

/// The source rectangle fastai's `Resize(item_size, method)` maps onto its square output,
/// for an image of `width` x `height` and crop fractions `pcts` (train: uniform draws;
/// valid: `(0.5, 0.5)`). Integer truncations follow fastai's `Resize.encodes`.
pub fn resize_box(
    width: u32,
    height: u32,
    item_size: u32,
    method: ResizeMethod,
    pcts: (f64, f64),
) -> SourceBox {
    let (w, h, size) = (f64::from(width), f64::from(height), f64::from(item_size));
    match method {
        ResizeMethod::Squish => SourceBox { left: 0.0, top: 0.0, width: w, height: h },
        ResizeMethod::Crop | ResizeMethod::Pad => {
            let (ratio_w, ratio_h) = (w / size, h / size);
            let m = if method == ResizeMethod::Crop {
                ratio_w.min(ratio_h)
            } else {
                ratio_w.max(ratio_h)
            };
            let side = (m * size).trunc();
            let left = (pcts.0 * (w - side)).trunc();
            let top = (pcts.1 * (h - side)).trunc();
            SourceBox { left, top, width: side, height: side }
        }
    }
}

/// The square region of the canvas that becomes the output (fastai's
/// `RandomResizedCropGPU`): top-left corner and side, in canvas pixels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CanvasCrop {
    /// x of the left edge, canvas px.
    pub left: u32,
    /// y of the top edge, canvas px.
    pub top: u32,
    /// Side of the square, canvas px.
    pub side: u32,
}

impl CanvasCrop {
    /// The whole canvas (validation).
    pub fn full(item_size: u32) -> Self {
        CanvasCrop { left: 0, top: 0, side: item_size }
    }
}

/// Everything that decides where each output pixel samples the source, for one image.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Geometry {
    /// Side of the square canvas `Resize` produces (fastai's `Resize(460)`).
    pub item_size: u32,
    /// Side of the square output.
    pub output_size: u32,
    /// The source rectangle that fills the canvas.
    pub source_box: SourceBox,
    /// Flip/rotate/zoom (canvas normalised coordinates, applied to output positions).
    pub affine: Mat3,
    /// The perspective warp applied after `affine`.
    pub warp: Mat3,
    /// The region of the canvas cropped to the output.
    pub crop: CanvasCrop,
}

impl Geometry {
    /// The validation geometry: centred `Resize`, no augmentation, the whole canvas.
    pub fn plain(
        width: u32,
        height: u32,
        item_size: u32,
        output_size: u32,
        method: ResizeMethod,
    ) -> Self {
        Geometry {
            item_size,
            output_size,
            source_box: resize_box(width, height, item_size, method, (0.5, 0.5)),
            affine: Mat3::IDENTITY,
            warp: Mat3::IDENTITY,
            crop: CanvasCrop::full(item_size),
        }
    }

    /// The map from output pixel `(col, row)` to canvas normalised coordinates: crop, then the
    /// affine map, then the warp.
    pub fn output_to_canvas(&self) -> Mat3 {
        let (p, s, n) =
            (f64::from(self.item_size), f64::from(self.output_size), f64::from(self.crop.side));
        // With align_corners=True, output pixel j lands on canvas pixel left + j(n-1)/(S-1).
        let step = if self.output_size > 1 { (n - 1.0) / (s - 1.0) } else { 0.0 };
        let centre_offset = if self.output_size > 1 { 0.0 } else { (n - 1.0) / 2.0 };
        let to_normalised = 2.0 / (p - 1.0).max(1.0);
        let crop = Mat3::affine(
            step * to_normalised,
            0.0,
            (f64::from(self.crop.left) + centre_offset) * to_normalised - 1.0,
            0.0,
            step * to_normalised,
            (f64::from(self.crop.top) + centre_offset) * to_normalised - 1.0,
        );
        self.warp.mul(&self.affine).mul(&crop)
    }

    /// Source pixels per output pixel along x and y (ignoring zoom/rotation, which fastai's
    /// pre-shrink rule also ignores for the crop step).
    pub fn source_pixels_per_output_pixel(&self) -> (f64, f64) {
        let (p, s, n) =
            (f64::from(self.item_size), f64::from(self.output_size), f64::from(self.crop.side));
        let canvas_per_output = n / s;
        (
            self.source_box.width / p * canvas_per_output,
            self.source_box.height / p * canvas_per_output,
        )
    }

    /// The affine map from canvas normalised coordinates to source pixel coordinates
    /// (pixel centres at integers), following PIL's resize convention for `Resize`.
    pub fn canvas_to_source(&self) -> Mat3 {
        let p = f64::from(self.item_size);
        let b = &self.source_box;
        let scale_x = b.width * (p - 1.0) / (2.0 * p);
        let scale_y = b.height * (p - 1.0) / (2.0 * p);
        Mat3::affine(
            scale_x,
            0.0,
            b.left + b.width / 2.0 - 0.5,
            0.0,
            scale_y,
            b.top + b.height / 2.0 - 0.5,
        )
    }
}

/// A sampling source: an RGB image that covers part of the original image, possibly shrunk.
/// `origin` and `scale` say how original-image pixel coordinates map onto it:
/// `region = (original - origin + 0.5) / scale - 0.5` per axis.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    /// The pixels sampled from.
    pub image: &'a RgbImage,
    /// The (x, y) offset in original-image px (see the mapping above).
    pub origin: (f64, f64),
    /// The (x, y) shrink factor: original-image px per region px (1 when not shrunk).
    pub scale: (f64, f64),
}

/// The float value of each of the 256 possible source bytes: `byte / 255` (fastai's
/// `IntToFloatTensor`), optionally through a tone curve (lighting). Applying the curve to the
/// source values before interpolation instead of to interpolated values after costs nothing
/// per pixel; the two differ only where neighbouring source values differ (second order in
/// their difference), which the tests bound.
#[derive(Debug, Clone)]
pub struct TexelTable(pub [f32; 256]);

impl TexelTable {
    /// `byte / 255`.
    pub fn linear() -> Self {
        TexelTable(std::array::from_fn(|byte| byte as f32 / 255.0))
    }

    /// `curve(byte / 255)`.
    pub fn with_curve(curve: impl Fn(f64) -> f64) -> Self {
        TexelTable(std::array::from_fn(|byte| curve(byte as f64 / 255.0) as f32))
    }
}

/// Renders `geometry` from `region` into `out`, a `(3, S, S)` planar f32 buffer, reading source
/// bytes through `texels` (values in [0, 1]).
///
/// Bilinear interpolation; reflection at the canvas border (fastai's affine padding) and at
/// the source image border (the `Pad` method's reflection).
///
/// This is the hot loop of the data pipeline (one call per image, `S²` output pixels). Per
/// output row it runs three passes: the source coordinates of every pixel (one projective
/// map and branch-free reflections, which vectorise), the integer taps and weights, then the
/// bilinear reads. On x86-64 CPUs with AVX2 and FMA a copy compiled for them is chosen at
/// run time (the portable baseline has no vector `floor`).
pub fn render(geometry: &Geometry, region: &Region<'_>, texels: &TexelTable, out: &mut [f32]) {
    let size = geometry.output_size as usize;
    assert_eq!(out.len(), 3 * size * size, "render: output buffer must be (3, S, S)");
    let (width, height) = (region.image.width() as usize, region.image.height() as usize);
    assert_eq!(
        region.image.as_raw().len(),
        3 * width * height,
        "render: region image buffer is RGB"
    );
    assert!(width > 0 && height > 0, "render: empty region image");
    #[cfg(target_arch = "x86_64")]
    if has_avx2_fma() {
        // SAFETY: the CPU supports AVX2 and FMA, the only requirements of `render_avx2`.
        unsafe { render_avx2(geometry, region, texels, out) };
        return;
    }
    render_rows(geometry, region, texels, out);
}

/// Whether the running CPU has AVX2 and FMA, for the samplers' run-time choice of their copy
/// compiled for them (`render`, and the three-pass `grid_sample`).
#[cfg(target_arch = "x86_64")]
pub(crate) fn has_avx2_fma() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
fn render_avx2(geometry: &Geometry, region: &Region<'_>, texels: &TexelTable, out: &mut [f32]) {
    render_rows(geometry, region, texels, out);
}

#[inline(always)]
fn render_rows(geometry: &Geometry, region: &Region<'_>, texels: &TexelTable, out: &mut [f32]) {
    let size = geometry.output_size as usize;
    let plane = size * size;
    let to_canvas = geometry.output_to_canvas();
    let to_source = geometry.canvas_to_source();
    // Canvas -> region pixel coordinates, one affine map per axis.
    let (sx, sy) = (to_source.0[0][0] / region.scale.0, to_source.0[1][1] / region.scale.1);
    let bx = (to_source.0[0][2] - region.origin.0 + 0.5) / region.scale.0 - 0.5;
    let by = (to_source.0[1][2] - region.origin.1 + 0.5) / region.scale.1 - 0.5;
    let image = region.image;
    let (width, height) = (image.width() as usize, image.height() as usize);
    let canvas = Mirror::new(-1.0, 2.0);
    let mirror_x = Mirror::new(0.0, (width - 1) as f64);
    let mirror_y = Mirror::new(0.0, (height - 1) as f64);
    let pixels = image.as_raw();
    let m = &to_canvas.0;
    let projective = m[2][0] != 0.0 || m[2][1] != 0.0;
    let mut source_x = vec![0f64; size];
    let mut source_y = vec![0f64; size];
    let mut tap_index = vec![0usize; size]; // top-left tap: 3 * (y0 * width + x0)
    let mut tap_right = vec![0usize; size]; // offset of the right tap: 0 or 3
    let mut tap_down = vec![0usize; size]; // offset of the bottom tap: 0 or 3 * width
    let mut weight_x = vec![0f32; size];
    let mut weight_y = vec![0f32; size];
    let (red, rest) = out.split_at_mut(plane);
    let (green, blue) = rest.split_at_mut(plane);
    let table = &texels.0;
    for row in 0..size {
        let y_out = row as f64;
        let (row_u, row_v, row_w) =
            (m[0][1] * y_out + m[0][2], m[1][1] * y_out + m[1][2], m[2][1] * y_out + m[2][2]);
        for (col, (x_slot, y_slot)) in source_x.iter_mut().zip(source_y.iter_mut()).enumerate() {
            let x_out = col as f64;
            let mut u = m[0][0] * x_out + row_u;
            let mut v = m[1][0] * x_out + row_v;
            if projective {
                let w = m[2][0] * x_out + row_w;
                u /= w;
                v /= w;
            }
            *x_slot = mirror_x.apply(sx * canvas.apply(u) + bx);
            *y_slot = mirror_y.apply(sy * canvas.apply(v) + by);
        }
        // After the reflections 0 <= x <= width - 1 (a NaN from a degenerate map casts to 0),
        // so the clamped taps are inside the image.
        let (last_x, last_y) = (width as i32 - 1, height as i32 - 1);
        for col in 0..size {
            let (x, y) = (source_x[col], source_y[col]);
            // `as i32` is a single conversion instruction (`as usize` from f64 is not on x86).
            let x0 = (x as i32).clamp(0, last_x) as usize;
            let y0 = (y as i32).clamp(0, last_y) as usize;
            tap_index[col] = 3 * (y0 * width + x0);
            tap_right[col] = if x0 + 1 < width { 3 } else { 0 };
            tap_down[col] = if y0 + 1 < height { 3 * width } else { 0 };
            weight_x[col] = (x - x0 as f64) as f32;
            weight_y[col] = (y - y0 as f64) as f32;
        }
        let start = row * size;
        for col in 0..size {
            let top_left = tap_index[col];
            let bottom_left = top_left + tap_down[col];
            let (right, fx, fy) = (tap_right[col], weight_x[col], weight_y[col]);
            debug_assert!(bottom_left + right + 2 < pixels.len());
            let byte = |offset: usize| -> usize {
                // SAFETY: x0, y0 are clamped into the image and the right/bottom offsets are 0
                // at its last column/row, so every tap offset + channel (< 3) is a pixel byte.
                usize::from(unsafe { *pixels.get_unchecked(offset) })
            };
            let sample = |channel: usize| -> f32 {
                let p00 = table[byte(top_left + channel)];
                let p01 = table[byte(top_left + right + channel)];
                let p10 = table[byte(bottom_left + channel)];
                let p11 = table[byte(bottom_left + right + channel)];
                let upper = p00 + (p01 - p00) * fx;
                let lower = p10 + (p11 - p10) * fx;
                upper + (lower - upper) * fy
            };
            red[start + col] = sample(0);
            green[start + col] = sample(1);
            blue[start + col] = sample(2);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use wick_testing::{Tol, assert_close};

    /// Reflects `value` into `[low, high]` as `grid_sample(padding_mode='reflection',
    /// align_corners=True)` does: mirror images about the two end points, repeated.
    fn reflect(value: f64, low: f64, high: f64) -> f64 {
        if value >= low && value <= high {
            return value;
        }
        let span = high - low;
        if span <= 0.0 {
            return low;
        }
        // One mirror image covers every affine augmentation in practice; the general case
        // (a remainder, which is a slow libm call) is only for far-out points.
        let offset = (value - low).abs();
        let offset = if offset <= 2.0 * span { offset } else { offset % (2.0 * span) };
        if offset <= span { low + offset } else { high - (offset - span) }
    }

    #[test]
    fn mirror_matches_the_reference_reflection() {
        for (low, high) in [(0.0, 1.0), (-0.5, 223.5), (2.0, 2.25)] {
            let mirror = Mirror::new(low, high - low);
            // From three spans below `low` to four above: several mirror images each side.
            let values: Vec<f64> =
                (-300..=400).map(|step| low + (high - low) * f64::from(step) / 100.0).collect();
            let got: Vec<f64> = values.iter().map(|&value| mirror.apply(value)).collect();
            let want: Vec<f64> = values.iter().map(|&value| reflect(value, low, high)).collect();
            assert_close(&format!("reflect into [{low}, {high}]"), got, want, Tol::abs(1e-9));
        }
    }
}
