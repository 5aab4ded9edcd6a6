//! The CPU convolution where im2col + gemm would multiply much padding (small images,
//! late stages): the output is cut into rectangular *regions* whose pixels all see the same
//! window of in-image kernel taps, and each region is computed from its valid taps only.
//!
//! A 3×3, padding-1 convolution on a 2×2 image (xresnet's last stage at 48 px) reads 4 of
//! its 9 taps inside the image at every output pixel: the plain im2col matrix is 5/9 zeros.
//! Along each axis the output positions whose tap window `[k0, k1)` is the same form runs
//! (the top rows, the interior, the bottom rows); their products are the regions. With
//! `X_{r,t}` the `C × B·R` image values that tap `t` multiplies at region `r`'s `R` pixels
//! over the batch, and `w_t` tap `t`'s `O × C` weights:
//! - forward:     `y_r (O × B·R) = Σ_{t valid in r} w_t · X_{r,t}`, scattered into `y`
//! - grad weight: `dw_t (O × C) = Σ_{r reading t} dy_r · X_{r,t}ᵀ`
//! - grad input (stride 1): the forward pass of the flipped convolution (as in
//!   `conv_cpu::conv2d_backward_input`), with `w_t` read transposed from the same buffer.
//!
//! Each tap's weights are packed once per call; `X_{r,t}` is generated straight into the
//! gemm's packing from precomputed pixel offsets (a 16-column panel by one AVX-512 gather per
//! row, walking each item's planes in order, where the CPU has them). Parallel work is the
//! (region, column chunk) gemms of the forward pass, the items of its output's scatter, the
//! taps of the weight gradient and its filters' reorder, a split made from the shapes alone;
//! each sum runs in tap or region order and each product value is copied to its one place, so
//! every result is bit-identical at any thread count
//! (docs/decisions/0002-deterministic-reductions.md). [`regions`] says where this pays.
//!
//! Shapes as in `conv_cpu`: `x (B, C, H, W)`, `w (O, C, KH, KW)`, `y (B, O, OH, OW)`,
//! one group.

use super::conv_cpu::ConvGeometry;
use super::storage::par_output;
use crate::gemm::{
    Accumulate, GemmBackend, Kernel, Lhs, MatMut, MatRef, PANEL_COLUMNS, PackedLhs, PreparedLhs,
    Rhs, RowSource, gemm, read_panel_by_columns,
};
use crate::scratch::Scratch;
use rayon::prelude::*;

/// Regions replace the plain im2col when at least this share of its multiply-adds are with
/// padding (3×3, padding 1: images of 6×6 and smaller, where the share is 21% and more) ...
const MIN_PADDING_SHARE: f64 = 0.2;

/// ... or when the share times the input channels (each tap's gemm depth) reaches this: a
/// per-tap gemm over many channels is as fast as im2col's, so a smaller share pays.
/// Measured with `cargo bench -p wick-nn --bench nn -- --cases <case> --impls wick` on
/// 3×3 convolutions, forward + both gradients, regions against im2col (ms):
/// 256 ch at 14 px (share 9%, ×C = 24) 117 vs 134, 128 ch at 8 px (16%, 21) 23 vs 26 —
/// regions; 128 ch at 16 px (8%, 10) 48 vs 46, 64 ch at 16 px (8%, 5) 34 vs 29, 128 ch at
/// 28 px (5%, 6) 162 vs 130 — im2col (docs/decisions/0005-winograd-and-valid-tap-regions.md).
const MIN_PADDING_SHARE_TIMES_CHANNELS: f64 = 20.0;

/// ... or, for a strided convolution (whose im2col path costs more against the regions'
/// per-tap gemms), when the share is at least this and the share times the input channels
/// at least [`MIN_STRIDED_SHARE_TIMES_CHANNELS`]. Measured as above, forward + both
/// gradients, regions against im2col, three alternations each (2026-11-30; batch 64 at
/// 12-16 px, else 32): 64 → 128 ch at 12 px (share 10.8%, ×C = 6.9) 7.6-8.7 vs 9.7-10.0 ms,
/// at 16 px (8.2%, 5.2) 13.6-13.9 vs 14.1-14.7, 128 → 256 ch at 16 px (8.2%, 10.4) 21.6-22.7
/// vs 22.6-23.1 — regions; 64 → 128 ch at 32 px (4.1%, 2.6) 32.5-35.0 vs 26.3-26.9, 128 ch at
/// 32 px (4.1%, 5.3) 70-71 vs 54-56 — im2col; 256 ch at 28 px (4.7%, 12) 145-154 vs 145-148.
const MIN_STRIDED_PADDING_SHARE: f64 = 0.08;

/// See [`MIN_STRIDED_PADDING_SHARE`].
const MIN_STRIDED_SHARE_TIMES_CHANNELS: f64 = 5.0;

/// A pass is cut into about this many gemm tasks (columns of the regions).
const MIN_TASKS: usize = 8;

/// A task has at least this many columns (the gemm's `n`; the micro-kernel is 16 wide).
const MIN_TASK_COLUMNS: usize = 32;

/// A run of output positions along one axis that all read the same kernel taps
/// `[first_tap, end_tap)` inside the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct AxisRun {
    /// First output position and count.
    start: usize,
    len: usize,
    /// Kernel taps `[first, end)` that land inside the image for every position of the run.
    first_tap: usize,
    end_tap: usize,
}

impl AxisRun {
    fn taps(&self) -> usize {
        self.end_tap - self.first_tap
    }
}

/// The output positions along one axis, grouped into runs with the same valid taps.
fn axis_runs(
    out_len: usize,
    in_len: usize,
    kernel: usize,
    stride: usize,
    dilation: usize,
    padding: usize,
) -> Vec<AxisRun> {
    let valid = |out: usize| {
        let inside = |tap: usize| {
            (out * stride + tap * dilation).checked_sub(padding).is_some_and(|i| i < in_len)
        };
        let first = (0..kernel).find(|&tap| inside(tap)).unwrap_or(kernel);
        let end = (first..kernel).find(|&tap| !inside(tap)).unwrap_or(kernel);
        (first, end)
    };
    let mut runs: Vec<AxisRun> = Vec::new();
    for out in 0..out_len {
        let (first_tap, end_tap) = valid(out);
        match runs.last_mut() {
            Some(run) if (run.first_tap, run.end_tap) == (first_tap, end_tap) => run.len += 1,
            _ => runs.push(AxisRun { start: out, len: 1, first_tap, end_tap }),
        }
    }
    runs
}

/// A rectangle of output pixels that all read the same in-image kernel window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Region {
    rows: AxisRun,
    cols: AxisRun,
}

impl Region {
    fn pixels(&self) -> usize {
        self.rows.len * self.cols.len
    }

    fn taps(&self) -> usize {
        self.rows.taps() * self.cols.taps()
    }
}

/// The regions of `g`'s output, or `None` when the plain im2col path should run (groups,
/// no padding, output pixels that read only padding, or too little padding for the regions
/// to pay). The regions tile the output, each pixel once, and each reads at least one tap.
pub(crate) fn regions(g: &ConvGeometry) -> Option<Vec<Region>> {
    if g.groups != 1 || g.padding == 0 || g.out_pixels() == 0 || g.batch == 0 {
        return None;
    }
    let rows =
        axis_runs(g.out_height, g.in_height, g.kernel_height, g.stride, g.dilation, g.padding);
    let cols = axis_runs(g.out_width, g.in_width, g.kernel_width, g.stride, g.dilation, g.padding);
    let regions: Vec<Region> =
        rows.iter().flat_map(|&r| cols.iter().map(move |&c| Region { rows: r, cols: c })).collect();
    // Output pixels that read only padding (padding beyond the kernel's reach: a 1×1 kernel
    // with padding 1) are zeros, which the plain path writes; the regions must tile the
    // output, every pixel reading some tap (the forward's scatter writes each pixel once).
    if regions.iter().any(|region| region.taps() == 0) {
        return None;
    }
    let valid: usize = regions.iter().map(|r| r.pixels() * r.taps()).sum();
    let plain = g.out_pixels() * g.kernel_height * g.kernel_width;
    let padding_share = 1.0 - valid as f64 / plain as f64;
    let times_channels = padding_share * g.in_channels as f64;
    let pays = padding_share >= MIN_PADDING_SHARE
        || times_channels >= MIN_PADDING_SHARE_TIMES_CHANNELS
        || (g.stride > 1
            && padding_share >= MIN_STRIDED_PADDING_SHARE
            && times_channels >= MIN_STRIDED_SHARE_TIMES_CHANNELS);
    pays.then_some(regions)
}

/// `weight (O, C, KH, KW)` with each filter transposed to `(KH·KW, C)`: `(O, KH·KW, C)`,
/// so that tap `t`'s `O × C` matrix is a strided view (row stride `KH·KW·C`, unit column
/// stride). One pass, parallel over filters, each read and written contiguously.
fn taps_by_filter(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let taps = g.kernel_height * g.kernel_width;
    let filter_len = taps * g.in_channels;
    let mut out = vec![0.0f32; g.weight_len()];
    out.par_chunks_mut(filter_len).zip(weight.par_chunks(filter_len)).for_each(|(dst, src)| {
        for (c, channel) in src.chunks_exact(taps).enumerate() {
            for (tap, &value) in channel.iter().enumerate() {
                dst[tap * g.in_channels + c] = value;
            }
        }
    });
    out
}

/// One gemm task of a pass: columns `[first_column, first_column + columns)` of a
/// region's `B·R` columns.
#[derive(Debug, Clone, Copy)]
struct Task {
    region: usize,
    first_column: usize,
    columns: usize,
}

/// Columns per task: about a [`MIN_TASKS`]th of all columns, at least [`MIN_TASK_COLUMNS`].
fn tasks(g: &ConvGeometry, regions: &[Region]) -> Vec<Task> {
    let total: usize = regions.iter().map(|r| g.batch * r.pixels()).sum();
    let chunk = total.div_ceil(MIN_TASKS).max(MIN_TASK_COLUMNS);
    regions
        .iter()
        .enumerate()
        .flat_map(|(region, r)| {
            let columns = g.batch * r.pixels();
            let pieces = columns.div_ceil(chunk);
            let per_piece = columns.div_ceil(pieces);
            (0..columns).step_by(per_piece).map(move |first_column| Task {
                region,
                first_column,
                columns: per_piece.min(columns - first_column),
            })
        })
        .collect()
}

/// Where each of a region's `B·R` columns `(item, oy, ox)` sits, as offsets of channel 0.
#[derive(Debug)]
struct RegionOffsets {
    /// Input offset of the pixel `(item, oy·stride, ox·stride)`: tap `(ky, kx)` of the
    /// column reads `input[in_pixel + c·H·W + ky·d·W + kx·d - (p·W + p)]`.
    in_pixel: Vec<usize>,
    /// Output offset of `(item, 0, oy, ox)`: channel `o` is at `+ o·OH·OW`.
    out_pixel: Vec<usize>,
}

impl RegionOffsets {
    fn new(g: &ConvGeometry, region: &Region) -> Self {
        let (in_item, out_item) =
            (g.in_channels * g.in_height * g.in_width, g.out_channels * g.out_pixels());
        let columns = g.batch * region.pixels();
        let mut in_pixel = Vec::with_capacity(columns);
        let mut out_pixel = Vec::with_capacity(columns);
        for item in 0..g.batch {
            for oy in region.rows.start..region.rows.start + region.rows.len {
                for ox in region.cols.start..region.cols.start + region.cols.len {
                    in_pixel.push(item * in_item + oy * g.stride * g.in_width + ox * g.stride);
                    out_pixel.push(item * out_item + oy * g.out_width + ox);
                }
            }
        }
        Self { in_pixel, out_pixel }
    }
}

/// The image values one kernel tap `(ky, kx)` multiplies at some of a region's columns: a
/// `C × n` matrix, row `c`, one column per entry of `in_pixel`. Every value it reads is
/// inside the image (the region's taps are).
struct TapColumns<'a> {
    input: &'a [f32],
    in_pixel: &'a [usize],
    channels: usize,
    plane: usize,
    /// `ky·d·W + kx·d` and `p·W + p`: the tap's offset from the column's pixel is the first
    /// minus the second (added first, so that no offset goes below zero).
    tap_plus: usize,
    tap_minus: usize,
}

impl<'a> TapColumns<'a> {
    fn new(
        g: &ConvGeometry,
        input: &'a [f32],
        in_pixel: &'a [usize],
        ky: usize,
        kx: usize,
    ) -> Self {
        Self {
            input,
            in_pixel,
            channels: g.in_channels,
            plane: g.in_height * g.in_width,
            tap_plus: ky * g.dilation * g.in_width + kx * g.dilation,
            tap_minus: g.padding * g.in_width + g.padding,
        }
    }
}

impl RowSource for TapColumns<'_> {
    fn rows(&self) -> usize {
        self.channels
    }

    fn cols(&self) -> usize {
        self.in_pixel.len()
    }

    fn read_row(&self, row: usize, col0: usize, out: &mut [f32]) {
        let plus = row * self.plane + self.tap_plus;
        let pixels = &self.in_pixel[col0..col0 + out.len()];
        for (value, &pixel) in out.iter_mut().zip(pixels) {
            *value = self.input[pixel + plus - self.tap_minus];
        }
    }

    /// A row is one value from each of up to B items' channel planes, far apart (and, at
    /// strides of a power of two, in the same cache set); a column walks one item's planes in
    /// order. Only where a panel is one gather per row (AVX-512): without, a column at a time
    /// is not faster than a row dealt into the panels.
    fn reads_columns(&self) -> bool {
        has_gathers()
    }

    fn read_column(&self, col: usize, row0: usize, rows: usize, out: &mut [f32], stride: usize) {
        if rows == 0 {
            return;
        }
        let start = self.in_pixel[col] + row0 * self.plane + self.tap_plus - self.tap_minus;
        let src = &self.input[start..start + (rows - 1) * self.plane + 1];
        let dst = &mut out[..(rows - 1) * stride + 1];
        for (to, from) in dst.chunks_mut(stride).zip(src.chunks(self.plane)) {
            to[0] = from[0];
        }
    }

    fn read_panel(&self, col0: usize, row0: usize, rows: usize, out: &mut [f32]) {
        let pixels = &self.in_pixel[col0..col0 + PANEL_COLUMNS];
        let (first, last) =
            pixels.iter().fold((usize::MAX, 0), |(lo, hi), &p| (lo.min(p), hi.max(p)));
        // The panel's first value and the distance to its last, if both fit the gather.
        let base = first + row0 * self.plane + self.tap_plus - self.tap_minus;
        let span = (rows.checked_sub(1))
            .and_then(|r| r.checked_mul(self.plane))
            .and_then(|down| down.checked_add(last - first));
        let fits =
            span.and_then(|span| base.checked_add(span)).is_some_and(|end| end < self.input.len())
                && i32::try_from(last - first).is_ok()
                && out.len() >= rows * PANEL_COLUMNS;
        if fits && has_gathers() {
            let offsets: [i32; PANEL_COLUMNS] = std::array::from_fn(|j| {
                i32::try_from(pixels[j] - first).expect("checked above: within last - first")
            });
            // SAFETY: AVX-512F is present (`has_gathers`); every address the gather forms,
            // `base + kk·plane + offsets[j]` for `kk < rows`, is at most `base + span`, inside
            // `input` (checked, without overflow); `out` holds the `rows × 16` values written.
            unsafe { gather_panel(&self.input[base..], &offsets, self.plane, rows, out) };
            return;
        }
        read_panel_by_columns(self, col0, row0, rows, out);
    }
}

/// Whether this CPU has the 16-lane gathers [`gather_panel`] uses (AVX-512F).
fn has_gathers() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("avx512f")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// `out[kk·16 + j] = input[kk·plane + offsets[j]]` for `kk < rows`: one 16-lane gather and
/// one store per panel row.
///
/// # Safety
/// AVX-512F must be available; `kk·plane + offsets[j]` must be inside `input` for every
/// `kk < rows` and `j`, and `out` must hold `rows · 16` values.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f")]
unsafe fn gather_panel(
    input: &[f32],
    offsets: &[i32; PANEL_COLUMNS],
    plane: usize,
    rows: usize,
    out: &mut [f32],
) {
    use std::arch::x86_64::{_mm512_i32gather_ps, _mm512_loadu_si512, _mm512_storeu_ps};
    // SAFETY: the caller's bounds: every gathered address is inside `input`, every store
    // inside `out`.
    unsafe {
        let index = _mm512_loadu_si512(offsets.as_ptr().cast());
        for kk in 0..rows {
            let values = _mm512_i32gather_ps::<4>(index, input.as_ptr().add(kk * plane).cast());
            _mm512_storeu_ps(out.as_mut_ptr().add(kk * PANEL_COLUMNS), values);
        }
    }
}

/// Never called off x86-64 ([`has_gathers`] is false there).
#[cfg(not(target_arch = "x86_64"))]
unsafe fn gather_panel(_: &[f32], _: &[i32; PANEL_COLUMNS], _: usize, _: usize, _: &mut [f32]) {
    unreachable!("gather_panel: no 16-lane gathers off x86-64")
}

/// The transpose of [`TapColumns`]: an `n × C` matrix whose row is one column.
struct TapRows<'a>(TapColumns<'a>);

impl RowSource for TapRows<'_> {
    fn rows(&self) -> usize {
        self.0.in_pixel.len()
    }

    fn cols(&self) -> usize {
        self.0.channels
    }

    fn read_row(&self, row: usize, col0: usize, out: &mut [f32]) {
        let t = &self.0;
        let start = t.in_pixel[row] + col0 * t.plane + t.tap_plus - t.tap_minus;
        for (i, value) in out.iter_mut().enumerate() {
            *value = t.input[start + i * t.plane];
        }
    }
}

/// The per-tap left operands of a pass, each packed once per call.
struct TapWeights<'a> {
    lhs: Vec<PreparedLhs<'a>>,
    kernel_width: usize,
}

impl<'a> TapWeights<'a> {
    /// Every tap of `weight (O, C, KH, KW)` packed for the native gemm's `kernel` in one pass
    /// over the weight: the forward pass's `w[:, :, ky, kx]` (`O × C`) or, `flipped`, the
    /// input gradient's `w[:, :, KH-1-ky, KW-1-kx]ᵀ` (`C × O`; see [`TapWeights::flipped`]).
    fn packed(g: &ConvGeometry, weight: &[f32], flipped: bool, kernel: Kernel) -> Self {
        let (o, c) = (g.out_channels, g.in_channels);
        let kernel_taps = g.kernel_height * g.kernel_width;
        let packed = if flipped {
            let mut transposed = PackedLhs::pack_interleaved(
                weight,
                kernel_taps,
                (c, o),
                (kernel_taps, c * kernel_taps),
                kernel,
            );
            transposed.reverse();
            transposed
        } else {
            let strides = (c * kernel_taps, kernel_taps);
            PackedLhs::pack_interleaved(weight, kernel_taps, (o, c), strides, kernel)
        };
        Self {
            lhs: packed.into_iter().map(PreparedLhs::Packed).collect(),
            kernel_width: g.kernel_width,
        }
    }

    /// Tap `(ky, kx)` of the forward pass: `w[:, :, ky, kx]`, `O × C`, from `taps` (the
    /// weight as [`taps_by_filter`] lays it out), for the gemm backends that read views.
    fn forward(g: &ConvGeometry, taps: &'a [f32], backend: GemmBackend) -> candle::Result<Self> {
        Self::prepare(g, taps, backend, |tap| (tap, false))
    }

    /// Tap `(ky, kx)` of the input gradient of `g` taken as the forward pass of the flipped
    /// convolution: `w[:, :, KH-1-ky, KW-1-kx]ᵀ`, `C × O`.
    fn flipped(g: &ConvGeometry, taps: &'a [f32], backend: GemmBackend) -> candle::Result<Self> {
        let last = g.kernel_height * g.kernel_width - 1;
        Self::prepare(g, taps, backend, |tap| (last - tap, true))
    }

    /// `source(tap)` names the tap of `taps` that tap `tap` reads, and whether transposed.
    fn prepare(
        g: &ConvGeometry,
        taps: &'a [f32],
        backend: GemmBackend,
        source: impl Fn(usize) -> (usize, bool) + Sync,
    ) -> candle::Result<Self> {
        let (o, c) = (g.out_channels, g.in_channels);
        let kernel_taps = g.kernel_height * g.kernel_width;
        let lhs = (0..kernel_taps)
            .into_par_iter()
            .map(|tap| {
                let (from, transposed) = source(tap);
                let view = MatRef::new(taps, from * c, (o, c), (kernel_taps * c, 1))?;
                Ok(PreparedLhs::new(backend, if transposed { view.transpose() } else { view }))
            })
            .collect::<candle::Result<Vec<_>>>()?;
        Ok(Self { lhs, kernel_width: g.kernel_width })
    }

    fn tap(&self, ky: usize, kx: usize) -> Lhs<'_> {
        self.lhs[ky * self.kernel_width + kx].as_lhs()
    }
}

/// `y (B, O', OH, OW)` of convolution `g` over `regions`, with `weights` giving each tap's
/// `O' × C` matrix.
fn forward_with(
    g: &ConvGeometry,
    regions: &[Region],
    input: &[f32],
    weights: &TapWeights<'_>,
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let out_channels = g.out_channels;
    let offsets: Vec<RegionOffsets> = regions.iter().map(|r| RegionOffsets::new(g, r)).collect();
    let products = tasks(g, regions)
        .into_par_iter()
        .map(|task| -> candle::Result<(Task, Scratch)> {
            let region = regions[task.region];
            let in_pixel =
                &offsets[task.region].in_pixel[task.first_column..task.first_column + task.columns];
            // Every value is written: the region reads at least one tap (empty regions are
            // dropped in `regions`), and the first tap's product overwrites.
            let mut product = Scratch::take(out_channels * task.columns);
            let mut accumulate = Accumulate::Overwrite;
            for ky in region.rows.first_tap..region.rows.end_tap {
                for kx in region.cols.first_tap..region.cols.end_tap {
                    let columns = TapColumns::new(g, input, in_pixel, ky, kx);
                    let dst = MatMut::row_major(&mut product, out_channels, task.columns)?;
                    gemm(backend, weights.tap(ky, kx), Rhs::Generated(&columns), dst, accumulate)?;
                    accumulate = Accumulate::Add;
                }
            }
            Ok((task, product))
        })
        .collect::<candle::Result<Vec<_>>>()?;
    // Each item's output gathered from the products, items in parallel.
    let plane = g.out_pixels();
    let item_out = out_channels * plane;
    // SAFETY: the regions tile the output plane once (`regions` returns none where a pixel
    // would read no tap) and the tasks tile each region's B·R columns once, so an item's
    // O·OH·OW values are each written once below; `written` counts them.
    let output = unsafe {
        par_output(g.output_len(), item_out, |item, out_item| {
            let base = item * item_out;
            let mut written = 0;
            for (task, product) in &products {
                let pixels = regions[task.region].pixels();
                let first = task.first_column.max(item * pixels);
                let end = (task.first_column + task.columns).min((item + 1) * pixels);
                if first >= end {
                    continue;
                }
                let out_pixel = &offsets[task.region].out_pixel[first..end];
                let columns = first - task.first_column..end - task.first_column;
                for (channel, row) in product.chunks_exact(task.columns).enumerate() {
                    for (&value, &pixel) in row[columns.clone()].iter().zip(out_pixel) {
                        out_item[pixel - base + channel * plane].write(value);
                    }
                }
                written += (end - first) * out_channels;
            }
            written
        })
    };
    Ok(output)
}

/// `y = conv2d(x, w)` over `regions` (from [`regions`]); `input` and `weight` row-major.
pub(crate) fn forward(
    g: &ConvGeometry,
    regions: &[Region],
    input: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    if let Some(kernel) = backend.native_kernel() {
        let weights = TapWeights::packed(g, weight, false, kernel);
        return forward_with(g, regions, input, &weights, backend);
    }
    let taps = taps_by_filter(g, weight);
    let weights = TapWeights::forward(g, &taps, backend)?;
    forward_with(g, regions, input, &weights, backend)
}

/// `dx` of convolution `g` as the forward pass of its flipped convolution `flipped`
/// (stride 1, from `conv_cpu::flipped_geometry`) over `flipped`'s `regions`, reading the
/// taps of `weight` transposed in place of a flipped copy.
pub(crate) fn backward_input(
    g: &ConvGeometry,
    flipped: &ConvGeometry,
    regions: &[Region],
    grad_output: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    if let Some(kernel) = backend.native_kernel() {
        let weights = TapWeights::packed(g, weight, true, kernel);
        return forward_with(flipped, regions, grad_output, &weights, backend);
    }
    let taps = taps_by_filter(g, weight);
    let weights = TapWeights::flipped(g, &taps, backend)?;
    forward_with(flipped, regions, grad_output, &weights, backend)
}

/// `dw` from `x` and `dy (B, O, OH, OW)` over `regions`; both row-major. Tap `t`'s `O × C`
/// gradient is the sum, over the regions that read it in region order, of `dy_r · X_{r,t}ᵀ`.
pub(crate) fn backward_weight(
    g: &ConvGeometry,
    regions: &[Region],
    input: &[f32],
    grad_output: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (o, c) = (g.out_channels, g.in_channels);
    let plane = g.out_pixels();
    let offsets: Vec<RegionOffsets> = regions.iter().map(|r| RegionOffsets::new(g, r)).collect();
    // dy over each region's columns: O × B·R (every value written).
    let gathered: Vec<Scratch> = offsets
        .par_iter()
        .map(|offsets| {
            let n = offsets.out_pixel.len();
            let mut matrix = Scratch::take(o * n);
            for (channel, row) in matrix.chunks_exact_mut(n).enumerate() {
                for (value, &pixel) in row.iter_mut().zip(&offsets.out_pixel) {
                    *value = grad_output[pixel + channel * plane];
                }
            }
            matrix
        })
        .collect();
    let kernel_taps = g.kernel_height * g.kernel_width;
    let per_tap = (0..kernel_taps)
        .into_par_iter()
        .map(|tap| -> candle::Result<Scratch> {
            let (ky, kx) = (tap / g.kernel_width, tap % g.kernel_width);
            // The first region that reads the tap overwrites; a tap no region reads is zero.
            let mut product = Scratch::take(o * c);
            let mut accumulate = Accumulate::Overwrite;
            for ((region, offsets), dy) in regions.iter().zip(&offsets).zip(&gathered) {
                let reads = (region.rows.first_tap..region.rows.end_tap).contains(&ky)
                    && (region.cols.first_tap..region.cols.end_tap).contains(&kx);
                if !reads {
                    continue;
                }
                let n = offsets.in_pixel.len();
                let rhs = TapRows(TapColumns::new(g, input, &offsets.in_pixel, ky, kx));
                let lhs = MatRef::row_major(dy, o, n)?;
                let dst = MatMut::row_major(&mut product, o, c)?;
                gemm(backend, Lhs::Plain(lhs), Rhs::Generated(&rhs), dst, accumulate)?;
                accumulate = Accumulate::Add;
            }
            if accumulate == Accumulate::Overwrite {
                product.fill(0.0);
            }
            Ok(product)
        })
        .collect::<candle::Result<Vec<_>>>()?;
    // dw[o][c][tap] = per_tap[tap][o·C + c]: filters in parallel, each filter's C·KH·KW
    // values written whole (within L1) from the taps' rows, read in order. (An element-wise
    // collect of `[f32; 9]` arrays stalled on reading each array back from the stack.)
    let taps: Vec<&[f32]> = per_tap.iter().map(|tap| &tap[..o * c]).collect();
    // SAFETY: each chunk is one filter's C·KH·KW values, and the loops below write every
    // (channel, tap) of it once.
    let grad_weight = unsafe {
        par_output(g.weight_len(), c * kernel_taps, |filter, out| {
            for (tap, values) in taps.iter().enumerate() {
                for (channel, &value) in values[filter * c..(filter + 1) * c].iter().enumerate() {
                    out[channel * kernel_taps + tap].write(value);
                }
            }
            c * kernel_taps
        })
    };
    Ok(grad_weight)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(size: usize, kernel: usize, padding: usize, stride: usize) -> ConvGeometry {
        let out = (size + 2 * padding - kernel) / stride + 1;
        ConvGeometry {
            batch: 2,
            in_channels: 3,
            in_height: size,
            in_width: size,
            out_channels: 4,
            kernel_height: kernel,
            kernel_width: kernel,
            out_height: out,
            out_width: out,
            padding,
            stride,
            dilation: 1,
            groups: 1,
        }
    }

    #[test]
    fn a_3x3_padding_1_axis_has_top_interior_and_bottom_runs() {
        // 6 outputs of a 6-long axis: row 0 reads taps 1..3, rows 1-4 all three, row 5 taps 0..2.
        let runs = axis_runs(6, 6, 3, 1, 1, 1);
        let spans: Vec<_> = runs.iter().map(|r| (r.start, r.len, r.first_tap, r.end_tap)).collect();
        assert_eq!(spans, vec![(0, 1, 1, 3), (1, 4, 0, 3), (5, 1, 0, 2)]);
        // A 2-long axis: each position its own run (4 of 9 taps in 2-D).
        let spans: Vec<_> =
            axis_runs(2, 2, 3, 1, 1, 1).iter().map(|r| (r.first_tap, r.end_tap)).collect();
        assert_eq!(spans, vec![(1, 3), (0, 2)]);
    }

    #[test]
    fn regions_are_chosen_only_where_padding_is_a_large_share() {
        // 2x2, 3x3 pad 1: 16 of 36 multiply-adds are valid (56% padding) -> 4 regions.
        assert_eq!(regions(&geometry(2, 3, 1, 1)).map(|r| r.len()), Some(4));
        // 6x6: 21% padding -> regions; 12x12: 11% -> plain im2col.
        assert!(regions(&geometry(6, 3, 1, 1)).is_some());
        assert!(regions(&geometry(12, 3, 1, 1)).is_none());
        // No padding: nothing to skip.
        assert!(regions(&geometry(3, 3, 0, 1)).is_none());
        // Deep inputs: 256 channels at 14 px (9.3% padding, x256 = 24) -> regions; 128 at
        // 16 px (8.2%, x128 = 10) -> im2col.
        let deep =
            |channels, size| ConvGeometry { in_channels: channels, ..geometry(size, 3, 1, 1) };
        assert!(regions(&deep(256, 14)).is_some());
        assert!(regions(&deep(128, 16)).is_none());
        // Strided: 64 channels at 12 -> 6 px (10.8% padding, x64 = 6.9) -> regions; 128 at
        // 32 -> 16 px (4.1%, x128 = 5.3) and 3 at 12 px (10.8%, x3 = 0.3) -> im2col.
        let strided =
            |channels, size| ConvGeometry { in_channels: channels, ..geometry(size, 3, 1, 2) };
        assert!(regions(&strided(64, 12)).is_some());
        assert!(regions(&strided(128, 32)).is_none());
        assert!(regions(&strided(3, 12)).is_none());
    }

    #[test]
    fn tap_columns_read_panels_and_columns_as_rows() {
        // 20 items of 3 channels at 4x4 (plane 16), tap (2, 1) at the interior region: a
        // panel, a column and the rows must agree, and a panel writes only its 16 · rows.
        let g = ConvGeometry { batch: 20, ..geometry(4, 3, 1, 1) };
        let input: Vec<f32> = (0..g.batch * 3 * 16).map(|i| i as f32).collect();
        let interior = regions(&g).unwrap()[4];
        let offsets = RegionOffsets::new(&g, &interior);
        let columns = TapColumns::new(&g, &input, &offsets.in_pixel, 2, 1);
        assert_eq!(columns.cols(), 80);
        for (col0, row0, rows) in [(0, 0, 3), (16, 1, 2), (64, 2, 1)] {
            let mut panel = vec![-1.0f32; rows * PANEL_COLUMNS + 5];
            columns.read_panel(col0, row0, rows, &mut panel);
            let mut row = vec![0.0f32; PANEL_COLUMNS];
            for kk in 0..rows {
                columns.read_row(row0 + kk, col0, &mut row);
                assert_eq!(&panel[kk * PANEL_COLUMNS..(kk + 1) * PANEL_COLUMNS], &row[..]);
            }
            assert!(panel[rows * PANEL_COLUMNS..].iter().all(|&v| v == -1.0));
            // The transpose reads the same values: column j of `columns` is row j of `rows_of`.
            let rows_of = TapRows(TapColumns::new(&g, &input, &offsets.in_pixel, 2, 1));
            let mut transposed = vec![0.0f32; rows];
            rows_of.read_row(col0 + 3, row0, &mut transposed);
            for kk in 0..rows {
                assert_eq!(transposed[kk], panel[kk * PANEL_COLUMNS + 3]);
            }
            let mut column = vec![-1.0f32; 2 * rows];
            columns.read_column(col0 + 3, row0, rows, &mut column, 2);
            for kk in 0..rows {
                assert_eq!(column[2 * kk], panel[kk * PANEL_COLUMNS + 3]);
                assert_eq!(column[2 * kk + 1], -1.0);
            }
        }
        // Item 1's pixel (1, 1) read through tap (2, 1) is its pixel (2, 1): channel 0 at
        // 48 + 2·4 + 1.
        let mut row = vec![0.0f32; 1];
        columns.read_row(0, 4, &mut row);
        assert_eq!(row[0], 57.0);
    }

    #[test]
    fn regions_cover_every_output_pixel_once() {
        for (size, kernel, padding, stride) in
            [(2, 3, 1, 1), (3, 3, 1, 2), (5, 5, 2, 1), (4, 3, 1, 1)]
        {
            let g = geometry(size, kernel, padding, stride);
            let Some(regions) = regions(&g) else { continue };
            let mut seen = vec![0; g.out_pixels()];
            for region in &regions {
                for oy in region.rows.start..region.rows.start + region.rows.len {
                    for ox in region.cols.start..region.cols.start + region.cols.len {
                        seen[oy * g.out_width + ox] += 1;
                    }
                }
            }
            assert!(seen.iter().all(|&n| n == 1), "size {size} kernel {kernel}: {seen:?}");
        }
    }
}
