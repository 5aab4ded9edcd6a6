//! CPU kernels of the 2-D convolution and its two gradients, all as gemm over im2col /
//! col2im tiles, parallel over the batch with rayon and single-threaded gemm inside.
//!
//! Shapes (NCHW, row-major): input `x (B, C, H, W)`, weight `w (O, C/G, KH, KW)`, output
//! `y (B, O, OH, OW)`; G groups, `P = OH·OW` output pixels, `KG = (C/G)·KH·KW` patch length.
//! Per batch item and group `g`:
//! - forward:      `y_g (O/G × P)  = w_g (O/G × KG) · col_g (KG × P)`
//! - grad input:   1×1 stride 1 unpadded: `dx_g (C/G × P) = w_gᵀ (C/G × O/G) · dy_g (O/G × P)`
//!   in place; other stride 1: the forward convolution of `dy` with the flipped, transposed
//!   kernel; otherwise `dcol_g (KG × P) = w_gᵀ (KG × O/G) · dy_g (O/G × P)`, then col2im
//! - grad weight:  `dw_g (O/G × KG) += dy_g (O/G × P) · col_gᵀ (P × KG)`, summed over items
//!
//! A 1×1 stride-1 unpadded convolution uses the input itself as `col` (no im2col). The
//! forward's `col` is never stored whole: the native gemm packs it straight from the image
//! row by row ([`Im2colRows`]); other backends get it materialised per tile. Large images
//! are cut into column tiles so that buffers stay near L2; small images (late stages) are
//! grouped several items to a tile so that the gemm has enough columns, its product written
//! straight into the items' planes (`MatMut::items`) and, for a 1×1 convolution, its right
//! operand read straight from them (`ItemRows`). The weights, the
//! left operand of every item's product, are packed once per call. Three shapes leave
//! this path: 3×3 stride-1 convolutions on outputs of 8×8 and more run as Winograd
//! F(2×2, 3×3) (`conv_winograd`, 2.25x fewer multiply-adds), small images where much of
//! the im2col matrix would be padding run over their valid taps only (`conv_regions`), and
//! 1×1 convolutions of a few hundred columns against a weight of megabytes run as one gemm
//! over the batch, parallel over the left operand's rows (`conv_pointwise`).

use super::storage::{par_output, try_par_zeroed, write_values};
use super::{conv_pointwise, conv_regions, conv_winograd};
use crate::gemm::{
    Accumulate, GemmBackend, Lhs, MatMut, MatRef, PreparedLhs, Rhs, RowSource, gemm,
    materialize_into,
};
use crate::scratch::Scratch;
use rayon::prelude::*;

/// Target size of one im2col / col2im tile buffer.
const TILE_BYTES: usize = 512 * 1024;
/// Items are grouped into one tile until it has at least this many columns.
const MIN_GROUPED_COLUMNS: usize = 256;
/// Grouped items are split into at least this many parallel units, and the weight
/// gradient's per-unit products are summed in this many fixed chunks. Both come from the
/// shapes alone, never from the thread count or from work stealing, so every sum is formed
/// in the same order and a result is bit-identical at any number of threads
/// (docs/decisions/0002-deterministic-reductions.md).
pub(crate) const PARALLEL_SPLITS: usize = 4;

/// Everything about one convolution's shapes, validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ConvGeometry {
    pub(crate) batch: usize,
    pub(crate) in_channels: usize,
    pub(crate) in_height: usize,
    pub(crate) in_width: usize,
    pub(crate) out_channels: usize,
    pub(crate) kernel_height: usize,
    pub(crate) kernel_width: usize,
    pub(crate) out_height: usize,
    pub(crate) out_width: usize,
    pub(crate) padding: usize,
    pub(crate) stride: usize,
    pub(crate) dilation: usize,
    pub(crate) groups: usize,
}

impl ConvGeometry {
    /// The convolution's name, the nn bench's case pattern (`benches/nn.rs`,
    /// `c{K}x{K}[s2]_{C}[_{O}]_{H}`) extended to any convolution:
    /// `c{KH}x{KW}[s{stride}][d{dilation}][g{groups}][p{padding}]_{C}[_{O}]_{H}[x{W}]`, the
    /// tags only where not 1 (the padding: where not `KH / 2`), input channels, output
    /// channels when they differ, the input's size: `c3x3s2_64_128_12`.
    pub(crate) fn case_name(&self) -> String {
        let mut name = format!("c{}x{}", self.kernel_height, self.kernel_width);
        for (tag, value) in [("s", self.stride), ("d", self.dilation), ("g", self.groups)] {
            if value != 1 {
                name.push_str(&format!("{tag}{value}"));
            }
        }
        if self.padding != self.kernel_height / 2 {
            name.push_str(&format!("p{}", self.padding));
        }
        name.push_str(&format!("_{}", self.in_channels));
        if self.out_channels != self.in_channels {
            name.push_str(&format!("_{}", self.out_channels));
        }
        name.push_str(&format!("_{}", self.in_height));
        if self.in_width != self.in_height {
            name.push_str(&format!("x{}", self.in_width));
        }
        name
    }

    pub(crate) fn group_in_channels(&self) -> usize {
        self.in_channels / self.groups
    }

    pub(crate) fn group_out_channels(&self) -> usize {
        self.out_channels / self.groups
    }

    fn kernel_area(&self) -> usize {
        self.kernel_height * self.kernel_width
    }

    /// KG: rows of the im2col matrix of one group.
    pub(crate) fn patch_len(&self) -> usize {
        self.group_in_channels() * self.kernel_area()
    }

    pub(crate) fn out_pixels(&self) -> usize {
        self.out_height * self.out_width
    }

    fn in_pixels(&self) -> usize {
        self.in_height * self.in_width
    }

    pub(crate) fn input_len(&self) -> usize {
        self.batch * self.in_channels * self.in_pixels()
    }

    pub(crate) fn output_len(&self) -> usize {
        self.batch * self.out_channels * self.out_pixels()
    }

    pub(crate) fn weight_len(&self) -> usize {
        self.out_channels * self.patch_len()
    }

    /// 1×1, stride 1, no padding: the input of an item is already its im2col matrix.
    pub(crate) fn is_pointwise(&self) -> bool {
        self.kernel_height == 1 && self.kernel_width == 1 && self.stride == 1 && self.padding == 0
    }
}

/// How the batch is split into parallel work units and each unit into gemm tiles.
#[derive(Debug, Clone, Copy)]
struct TilePlan {
    /// Batch items per rayon work unit (and per tile when > 1).
    items_per_unit: usize,
    /// Columns per tile when a unit holds one item.
    columns_per_tile: usize,
}

impl TilePlan {
    fn new(geometry: &ConvGeometry) -> Self {
        let pixels = geometry.out_pixels().max(1);
        let by_cache = TILE_BYTES / (4 * geometry.patch_len().max(1));
        let target_columns = by_cache.clamp(64, 2048) / 16 * 16;
        let items_per_unit = (MIN_GROUPED_COLUMNS / pixels)
            .clamp(1, geometry.batch.div_ceil(PARALLEL_SPLITS).max(1));
        let columns_per_tile = if items_per_unit == 1 && pixels > target_columns {
            let tiles = pixels.div_ceil(target_columns);
            pixels.div_ceil(tiles).div_ceil(16) * 16
        } else {
            pixels
        };
        Self { items_per_unit, columns_per_tile }
    }
}

/// A run of consecutive im2col columns that lie in one output row of one item.
#[derive(Debug, Clone, Copy)]
struct ColumnRun {
    /// Item index relative to the first item of the tile's unit.
    item: usize,
    out_y: usize,
    out_x_start: usize,
    len: usize,
    /// Column of the tile buffer where the run starts.
    column: usize,
}

/// Splits columns `first..first+count` of a unit (column = item·P + pixel) into runs.
fn column_runs(geometry: &ConvGeometry, first: usize, count: usize) -> Vec<ColumnRun> {
    let pixels = geometry.out_pixels();
    let width = geometry.out_width;
    let mut runs = Vec::with_capacity(count / width.max(1) + 2);
    let mut column = 0;
    while column < count {
        let global = first + column;
        let (item, pixel) = (global / pixels, global % pixels);
        let (out_y, out_x_start) = (pixel / width, pixel % width);
        let len = (width - out_x_start).min(count - column);
        runs.push(ColumnRun { item, out_y, out_x_start, len, column });
        column += len;
    }
    runs
}

/// The output columns `[lo, hi)` of a row whose input column `ox·stride + offset - padding`
/// falls inside `0..in_width`.
fn valid_out_x(geometry: &ConvGeometry, kernel_offset: usize) -> (usize, usize) {
    let stride = geometry.stride;
    let lo = geometry.padding.saturating_sub(kernel_offset).div_ceil(stride);
    let reach = geometry.in_width + geometry.padding;
    let hi = if reach > kernel_offset { (reach - kernel_offset - 1) / stride + 1 } else { 0 };
    (lo, hi.min(geometry.out_width))
}

/// Input row of output row `out_y` for kernel row offset `ky·dilation`, if inside the image.
fn input_row(geometry: &ConvGeometry, out_y: usize, kernel_offset: usize) -> Option<usize> {
    (out_y * geometry.stride + kernel_offset)
        .checked_sub(geometry.padding)
        .filter(|&row| row < geometry.in_height)
}

/// The im2col matrix (KG rows × tile columns) of one group of a unit's items, generated
/// row by row from the image (`input` starts at the unit's first item).
struct Im2colRows<'a> {
    geometry: &'a ConvGeometry,
    input: &'a [f32],
    group: usize,
    runs: &'a [ColumnRun],
    columns: usize,
}

impl RowSource for Im2colRows<'_> {
    fn rows(&self) -> usize {
        self.geometry.patch_len()
    }

    fn cols(&self) -> usize {
        self.columns
    }

    fn read_row(&self, row: usize, col0: usize, out: &mut [f32]) {
        let g = self.geometry;
        let (in_h, in_w) = (g.in_height, g.in_width);
        let area = g.kernel_area();
        let (channel, ky, kx) = (row / area, (row % area) / g.kernel_width, row % g.kernel_width);
        let plane_offset = (self.group * g.group_in_channels() + channel) * in_h * in_w;
        let item_len = g.in_channels * in_h * in_w;
        let (ky_offset, kx_offset) = (ky * g.dilation, kx * g.dilation);
        let (valid_lo, valid_hi) = valid_out_x(g, kx_offset);
        let col_end = col0 + out.len();
        let first_run = self.runs.partition_point(|run| run.column + run.len <= col0);
        for run in &self.runs[first_run..] {
            if run.column >= col_end {
                break;
            }
            // The part of the run inside [col0, col_end).
            let start = run.column.max(col0);
            let end = (run.column + run.len).min(col_end);
            let out_x_start = run.out_x_start + (start - run.column);
            let out_x_end = out_x_start + (end - start);
            let dst = &mut out[start - col0..end - col0];
            let Some(in_y) = input_row(g, run.out_y, ky_offset) else {
                dst.fill(0.0);
                continue;
            };
            let src_row_start = run.item * item_len + plane_offset + in_y * in_w;
            let src_row = &self.input[src_row_start..src_row_start + in_w];
            let lo = valid_lo.clamp(out_x_start, out_x_end);
            let hi = valid_hi.clamp(lo, out_x_end);
            dst[..lo - out_x_start].fill(0.0);
            dst[hi - out_x_start..].fill(0.0);
            if hi > lo {
                // Input column of output column ox: ox·stride + kx_offset - padding.
                let first_in_x = lo * g.stride + kx_offset - g.padding;
                let dst = &mut dst[lo - out_x_start..hi - out_x_start];
                match g.stride {
                    1 => dst.copy_from_slice(&src_row[first_in_x..first_in_x + (hi - lo)]),
                    2 => even_columns(&src_row[first_in_x..], dst),
                    stride => {
                        for (i, value) in dst.iter_mut().enumerate() {
                            *value = src_row[first_in_x + i * stride];
                        }
                    }
                }
            }
        }
    }
}

/// `dst[i] = src[2·i]` (a stride-2 convolution's im2col row; `src` holds at least
/// `2·dst.len() - 1` values): four at a time by an SSE shuffle where eight values can be
/// read, else one by one (the indexed loop compiled to a scalar load, multiply and bounds
/// check per value: a third of a stride-2 convolution's time, `perf annotate`).
#[inline]
fn even_columns(src: &[f32], dst: &mut [f32]) {
    assert!(src.len() + 1 >= 2 * dst.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each group reads src[2·i .. 2·i + 8] (checked against src.len()) and writes
    // dst[i .. i + 4] (i + 4 <= dst.len()). SSE is part of x86-64's baseline.
    unsafe {
        use std::arch::x86_64::*;
        while i + 4 <= dst.len() && 2 * i + 8 <= src.len() {
            let from = src.as_ptr().add(2 * i);
            let (a, b) = (_mm_loadu_ps(from), _mm_loadu_ps(from.add(4)));
            _mm_storeu_ps(dst.as_mut_ptr().add(i), _mm_shuffle_ps::<0x88>(a, b));
            i += 4;
        }
    }
    for (value, pair) in dst[i..].iter_mut().zip(src[2 * i..].iter().step_by(2)) {
        *value = *pair;
    }
}

/// `dst[2·i] += src[i]` (a stride-2 col2im row; `dst` holds at least `2·src.len() - 1`
/// values): four at a time where eight can be read — the even values split out by a shuffle,
/// added to, and interleaved back with the odd ones untouched, so every value gets the bits
/// of the scalar loop — else one by one. (Unlike the Winograd rows' copies, a last group may
/// not overlap the one before: it would add twice.)
#[inline]
fn add_to_even_columns(src: &[f32], dst: &mut [f32]) {
    assert!(dst.len() + 1 >= 2 * src.len());
    let mut i = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each group reads and writes dst[2·i .. 2·i + 8] (checked against dst.len())
    // and reads src[i .. i + 4] (i + 4 <= src.len()). SSE is part of x86-64's baseline.
    unsafe {
        use std::arch::x86_64::*;
        while i + 4 <= src.len() && 2 * i + 8 <= dst.len() {
            let to = dst.as_mut_ptr().add(2 * i);
            let (a, b) = (_mm_loadu_ps(to), _mm_loadu_ps(to.add(4)));
            let even = _mm_add_ps(_mm_shuffle_ps::<0x88>(a, b), _mm_loadu_ps(src.as_ptr().add(i)));
            let odd = _mm_shuffle_ps::<0xDD>(a, b);
            _mm_storeu_ps(to, _mm_unpacklo_ps(even, odd));
            _mm_storeu_ps(to.add(4), _mm_unpackhi_ps(even, odd));
            i += 4;
        }
    }
    for (value, add) in dst[2 * i..].iter_mut().step_by(2).zip(&src[i..]) {
        *value += add;
    }
}

/// Adds the col2im of `columns` (KG rows × `tile_columns`) of group `group` into
/// `grad_input` (which starts at the unit's first item).
fn col2im_add(
    geometry: &ConvGeometry,
    columns: &[f32],
    group: usize,
    runs: &[ColumnRun],
    tile_columns: usize,
    grad_input: &mut [f32],
) {
    let (in_h, in_w) = (geometry.in_height, geometry.in_width);
    let item_len = geometry.in_channels * in_h * in_w;
    let stride = geometry.stride;
    let mut row_index = 0;
    for channel in 0..geometry.group_in_channels() {
        let plane_offset = (group * geometry.group_in_channels() + channel) * in_h * in_w;
        for ky in 0..geometry.kernel_height {
            let ky_offset = ky * geometry.dilation;
            for kx in 0..geometry.kernel_width {
                let kx_offset = kx * geometry.dilation;
                let (valid_lo, valid_hi) = valid_out_x(geometry, kx_offset);
                let src_row = &columns[row_index * tile_columns..(row_index + 1) * tile_columns];
                for run in runs {
                    let Some(in_y) = input_row(geometry, run.out_y, ky_offset) else {
                        continue;
                    };
                    let run_end = run.out_x_start + run.len;
                    let lo = valid_lo.clamp(run.out_x_start, run_end);
                    let hi = valid_hi.clamp(lo, run_end);
                    if hi == lo {
                        continue;
                    }
                    let src = &src_row
                        [run.column + lo - run.out_x_start..run.column + hi - run.out_x_start];
                    let dst_row_start = run.item * item_len + plane_offset + in_y * in_w;
                    let dst_row = &mut grad_input[dst_row_start..dst_row_start + in_w];
                    let first_in_x = lo * stride + kx_offset - geometry.padding;
                    match stride {
                        1 => {
                            let dst = &mut dst_row[first_in_x..first_in_x + src.len()];
                            for (d, s) in dst.iter_mut().zip(src) {
                                *d += s;
                            }
                        }
                        2 => add_to_even_columns(src, &mut dst_row[first_in_x..]),
                        _ => {
                            for (i, s) in src.iter().enumerate() {
                                dst_row[first_in_x + i * stride] += s;
                            }
                        }
                    }
                }
                row_index += 1;
            }
        }
    }
}

/// A group's channel rows of each of `items` items of a unit's `(items, R, P)` tensor, seen
/// as a `channels × (items·P)` matrix: what one gemm over a multi-item unit reads or writes.
/// [`ItemColumns::of_group`]: the output (or output-gradient) channels of a group, `R = O`,
/// `P` output pixels; [`ItemColumns::of_input_group`]: a pointwise convolution's input (or
/// input-gradient) channels, `R = C`.
#[derive(Debug, Clone, Copy)]
struct ItemColumns {
    channels_per_item: usize,
    pixels: usize,
    first_channel: usize,
    channels: usize,
    items: usize,
}

impl ItemColumns {
    /// Group `group`'s output-channel rows (`O/G` of `O` an item, `P` output pixels).
    fn of_group(geometry: &ConvGeometry, group: usize, items: usize) -> Self {
        let (total, pixels) = (geometry.out_channels, geometry.out_pixels());
        Self::group_rows(total, geometry.group_out_channels(), pixels, group, items)
    }

    /// Group `group`'s input-channel rows of a pointwise convolution (whose input pixels are
    /// its output pixels): the right operand of the unit's forward product, as is.
    fn of_input_group(geometry: &ConvGeometry, group: usize, items: usize) -> Self {
        let (total, pixels) = (geometry.in_channels, geometry.in_pixels());
        Self::group_rows(total, geometry.group_in_channels(), pixels, group, items)
    }

    /// Group `group`'s `channels` rows of `channels_per_item` an item, `pixels` long.
    fn group_rows(
        channels_per_item: usize,
        channels: usize,
        pixels: usize,
        group: usize,
        items: usize,
    ) -> Self {
        Self { channels_per_item, pixels, first_channel: group * channels, channels, items }
    }

    /// The rows of `tensor` seen as a matrix, generated row by row into a gemm's packing.
    fn reader(self, tensor: &[f32]) -> ItemRows<'_> {
        ItemRows { columns: self, tensor }
    }

    /// The `channels × (items·P)` matrix's view into `tensor`, for a gemm to write in place.
    fn writer(self, tensor: &mut [f32]) -> candle::Result<MatMut<'_>> {
        let Self { channels_per_item, pixels, first_channel, channels, items } = self;
        let strides = (pixels, channels_per_item * pixels);
        MatMut::items(tensor, first_channel * pixels, channels, (items, pixels), strides)
    }
}

/// An [`ItemColumns`] matrix of a tensor, read row by row.
struct ItemRows<'a> {
    columns: ItemColumns,
    tensor: &'a [f32],
}

impl RowSource for ItemRows<'_> {
    fn rows(&self) -> usize {
        self.columns.channels
    }

    fn cols(&self) -> usize {
        self.columns.items * self.columns.pixels
    }

    fn read_row(&self, row: usize, col0: usize, out: &mut [f32]) {
        let ItemColumns { channels_per_item, pixels, first_channel, .. } = self.columns;
        let mut done = 0;
        while done < out.len() {
            let (item, pixel) = ((col0 + done) / pixels, (col0 + done) % pixels);
            let len = (pixels - pixel).min(out.len() - done);
            let start = (item * channels_per_item + first_channel + row) * pixels + pixel;
            let (dst, src) = (&mut out[done..done + len], &self.tensor[start..start + len]);
            // A 2×2 plane as one fixed-size move (`copy_from_slice` is a `memcpy` call).
            match (<&mut [f32; 4]>::try_from(&mut *dst), <&[f32; 4]>::try_from(src)) {
                (Ok(dst), Ok(src)) => *dst = *src,
                _ => dst.copy_from_slice(src),
            }
            done += len;
        }
    }
}

/// Column tiles `(first, count)` of a single-item unit.
fn item_tiles(plan: &TilePlan, pixels: usize) -> impl Iterator<Item = (usize, usize)> {
    let step = plan.columns_per_tile.max(1);
    (0..pixels).step_by(step).map(move |first| (first, step.min(pixels - first)))
}

/// `y = conv2d(x, w)`; `input` and `weight` are row-major.
pub(crate) fn conv2d_forward(
    geometry: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let g = *geometry;
    if conv_pointwise::applies(&g) {
        return conv_pointwise::forward(&g, input, weight, backend);
    }
    if conv_winograd::applies(&g) {
        return conv_winograd::forward(&g, input, weight, backend);
    }
    if let Some(regions) = conv_regions::regions(&g) {
        return conv_regions::forward(&g, &regions, input, weight, backend);
    }
    let (og, kg, pixels) = (g.group_out_channels(), g.patch_len(), g.out_pixels());
    let item_in = g.in_channels * g.in_pixels();
    let item_out = g.out_channels * pixels;
    let weights = (0..g.groups)
        .map(|group| {
            let view = MatRef::new(weight, group * og * kg, (og, kg), (kg, 1))?;
            Ok(PreparedLhs::new(backend, view))
        })
        .collect::<candle::Result<Vec<_>>>()?;
    let plan = TilePlan::new(&g);
    if g.output_len() == 0 {
        return Ok(Vec::new());
    }
    try_par_zeroed(g.output_len(), plan.items_per_unit * item_out, |unit, out_unit| {
        let items = out_unit.len() / item_out;
        let first_item = unit * plan.items_per_unit;
        let in_unit = &input[first_item * item_in..(first_item + items) * item_in];
        if items == 1 {
            for (first, count) in item_tiles(&plan, pixels) {
                let runs = column_runs(&g, first, count);
                for (group, lhs) in weights.iter().enumerate() {
                    let dst =
                        MatMut::new(out_unit, group * og * pixels + first, (og, count), pixels)?;
                    if g.is_pointwise() {
                        let offset = group * g.group_in_channels() * pixels + first;
                        let rhs = MatRef::new(in_unit, offset, (kg, count), (pixels, 1))?;
                        gemm(backend, lhs.as_lhs(), Rhs::Matrix(rhs), dst, Accumulate::Overwrite)?;
                    } else {
                        let columns = Im2colRows {
                            geometry: &g,
                            input: in_unit,
                            group,
                            runs: &runs,
                            columns: count,
                        };
                        gemm(
                            backend,
                            lhs.as_lhs(),
                            Rhs::Generated(&columns),
                            dst,
                            Accumulate::Overwrite,
                        )?;
                    }
                }
            }
        } else {
            // Each group's `og × (items·P)` product is written straight into the items'
            // output planes.
            let count = items * pixels;
            let runs = if g.is_pointwise() { Vec::new() } else { column_runs(&g, 0, count) };
            for (group, lhs) in weights.iter().enumerate() {
                let dst = ItemColumns::of_group(&g, group, items).writer(out_unit)?;
                let planes = ItemColumns::of_input_group(&g, group, items).reader(in_unit);
                let im2col =
                    Im2colRows { geometry: &g, input: in_unit, group, runs: &runs, columns: count };
                let columns: &dyn RowSource = if g.is_pointwise() { &planes } else { &im2col };
                gemm(backend, lhs.as_lhs(), Rhs::Generated(columns), dst, Accumulate::Overwrite)?;
            }
        }
        Ok(())
    })
}

/// `dx` from `dy (B, O, OH, OW)` and `w`; both row-major.
///
/// A 1×1 stride-1 unpadded convolution writes `dx = wᵀ·dy` straight into the items' planes.
/// Another stride-1 convolution whose padding is at most the dilated kernel reach takes the
/// input gradient as a forward convolution of `dy` with the flipped, transposed kernel
/// (padding `dilation·(K-1) - padding`), which needs no col2im scatter. Other strided
/// convolutions go through `dcol = wᵀ·dy` and col2im.
pub(crate) fn conv2d_backward_input(
    geometry: &ConvGeometry,
    grad_output: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let g = *geometry;
    if conv_pointwise::applies(&g) {
        return conv_pointwise::backward_input(&g, grad_output, weight, backend);
    }
    if let Some(flipped) = flipped_geometry(&g) {
        if conv_winograd::applies(&flipped) {
            return conv_winograd::backward_input(&g, &flipped, grad_output, weight, backend);
        }
        if let Some(regions) = conv_regions::regions(&flipped) {
            return conv_regions::backward_input(
                &g,
                &flipped,
                &regions,
                grad_output,
                weight,
                backend,
            );
        }
        let flipped_weight = flip_weight(&g, weight);
        return conv2d_forward(&flipped, grad_output, &flipped_weight, backend);
    }
    let (og, cg, kg, pixels) =
        (g.group_out_channels(), g.group_in_channels(), g.patch_len(), g.out_pixels());
    let item_in = g.in_channels * g.in_pixels();
    let item_out = g.out_channels * pixels;
    let weights_transposed = (0..g.groups)
        .map(|group| {
            let view = MatRef::new(weight, group * og * kg, (og, kg), (kg, 1))?.transpose();
            Ok(PreparedLhs::new(backend, view))
        })
        .collect::<candle::Result<Vec<_>>>()?;
    let plan = TilePlan::new(&g);
    if g.input_len() == 0 || pixels == 0 {
        return Ok(vec![0.0f32; g.input_len()]);
    }
    // Each unit's input gradient is zeroed in its own task (col2im adds into it).
    try_par_zeroed(g.input_len(), plan.items_per_unit * item_in, |unit, dx_unit| {
        let items = dx_unit.len() / item_in;
        let first_item = unit * plan.items_per_unit;
        let dy_unit = &grad_output[first_item * item_out..(first_item + items) * item_out];
        if items == 1 && g.is_pointwise() {
            for (group, lhs) in weights_transposed.iter().enumerate() {
                let rhs = MatRef::new(dy_unit, group * og * pixels, (og, pixels), (pixels, 1))?;
                let dst = MatMut::new(dx_unit, group * cg * pixels, (cg, pixels), pixels)?;
                gemm(backend, lhs.as_lhs(), Rhs::Matrix(rhs), dst, Accumulate::Overwrite)?;
            }
            return Ok(());
        }
        if g.is_pointwise() {
            // `dx` of each group's input channels is `wᵀ · dy` of its output channels,
            // the items side by side: read from and written to the planes in place.
            for (group, lhs) in weights_transposed.iter().enumerate() {
                let rhs = ItemColumns::of_group(&g, group, items);
                let rhs = rhs.reader(dy_unit);
                let dst = ItemColumns::of_input_group(&g, group, items).writer(dx_unit)?;
                gemm(backend, lhs.as_lhs(), Rhs::Generated(&rhs), dst, Accumulate::Overwrite)?;
            }
            return Ok(());
        }
        if items == 1 {
            let mut columns = Vec::new();
            for (first, count) in item_tiles(&plan, pixels) {
                let runs = column_runs(&g, first, count);
                columns.resize(kg * count, 0.0);
                for (group, lhs) in weights_transposed.iter().enumerate() {
                    let rhs = MatRef::new(
                        dy_unit,
                        group * og * pixels + first,
                        (og, count),
                        (pixels, 1),
                    )?;
                    let dst = MatMut::row_major(&mut columns, kg, count)?;
                    gemm(backend, lhs.as_lhs(), Rhs::Matrix(rhs), dst, Accumulate::Overwrite)?;
                    col2im_add(&g, &columns, group, &runs, count, dx_unit);
                }
            }
        } else {
            let count = items * pixels;
            let runs = column_runs(&g, 0, count);
            // Written whole by each group's gemm before col2im reads it.
            let mut columns = Scratch::take(kg * count);
            for (group, lhs) in weights_transposed.iter().enumerate() {
                let rhs = ItemColumns::of_group(&g, group, items).reader(dy_unit);
                let dst = MatMut::row_major(&mut columns, kg, count)?;
                let rhs = Rhs::Generated(&rhs);
                gemm(backend, lhs.as_lhs(), rhs, dst, Accumulate::Overwrite)?;
                col2im_add(&g, &columns, group, &runs, count, dx_unit);
            }
        }
        Ok(())
    })
}

/// The convolution whose forward pass is the input gradient of `g`, when there is one
/// without col2im (see [`conv2d_backward_input`]).
fn flipped_geometry(g: &ConvGeometry) -> Option<ConvGeometry> {
    let reach = g.dilation * (g.kernel_height - 1);
    let square = g.kernel_height == g.kernel_width;
    if g.is_pointwise() || g.stride != 1 || !square || g.padding > reach {
        return None;
    }
    Some(ConvGeometry {
        batch: g.batch,
        in_channels: g.out_channels,
        in_height: g.out_height,
        in_width: g.out_width,
        out_channels: g.in_channels,
        kernel_height: g.kernel_height,
        kernel_width: g.kernel_width,
        out_height: g.in_height,
        out_width: g.in_width,
        padding: reach - g.padding,
        stride: 1,
        dilation: g.dilation,
        groups: g.groups,
    })
}

/// `w (O, C/G, KH, KW)` rearranged to `(C, O/G, KH, KW)` with both kernel axes reversed:
/// `flipped[g·C/G + c][o][ky][kx] = w[g·O/G + o][c][KH-1-ky][KW-1-kx]`.
fn flip_weight(g: &ConvGeometry, weight: &[f32]) -> Vec<f32> {
    let (cg, og) = (g.group_in_channels(), g.group_out_channels());
    let (kh, kw) = (g.kernel_height, g.kernel_width);
    let mut flipped = vec![0.0f32; weight.len()];
    for group in 0..g.groups {
        for o in 0..og {
            for c in 0..cg {
                let src = ((group * og + o) * cg + c) * kh * kw;
                let dst = ((group * cg + c) * og + o) * kh * kw;
                for ky in 0..kh {
                    for kx in 0..kw {
                        flipped[dst + (kh - 1 - ky) * kw + (kw - 1 - kx)] =
                            weight[src + ky * kw + kx];
                    }
                }
            }
        }
    }
    flipped
}

/// `dw` from `x` and `dy`; both row-major. The units are cut into at most
/// [`PARALLEL_SPLITS`] runs of consecutive units; each run accumulates its own `dw` in unit
/// order (in parallel with the others), then the runs' sums are added in run order: the
/// same additions in the same order whatever the number of threads.
pub(crate) fn conv2d_backward_weight(
    geometry: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let g = *geometry;
    if conv_pointwise::applies(&g) {
        return conv_pointwise::backward_weight(&g, input, grad_output, backend);
    }
    if conv_winograd::applies(&g) {
        return conv_winograd::backward_weight(&g, input, grad_output, backend);
    }
    if let Some(regions) = conv_regions::regions(&g) {
        return conv_regions::backward_weight(&g, &regions, input, grad_output, backend);
    }
    let (og, kg, pixels) = (g.group_out_channels(), g.patch_len(), g.out_pixels());
    let item_in = g.in_channels * g.in_pixels();
    let item_out = g.out_channels * pixels;
    let plan = TilePlan::new(&g);
    let weight_len = g.weight_len();
    if g.batch == 0 || pixels == 0 {
        return Ok(vec![0.0; weight_len]);
    }
    let units = g.batch.div_ceil(plan.items_per_unit);
    let accumulate_unit = |grad_weight: &mut [f32], unit: usize, mode: Accumulate| {
        let first_item = unit * plan.items_per_unit;
        let items = plan.items_per_unit.min(g.batch - first_item);
        let in_unit = &input[first_item * item_in..(first_item + items) * item_in];
        let dy_unit = &grad_output[first_item * item_out..(first_item + items) * item_out];
        if items == 1 {
            if g.is_pointwise() {
                for group in 0..g.groups {
                    let lhs = MatRef::new(dy_unit, group * og * pixels, (og, pixels), (pixels, 1))?;
                    let rhs = MatRef::new(in_unit, group * kg * pixels, (kg, pixels), (pixels, 1))?
                        .transpose();
                    let dst = MatMut::new(grad_weight, group * og * kg, (og, kg), kg)?;
                    gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(rhs), dst, mode)?;
                }
                return Ok(());
            }
            let mut columns = Vec::new();
            for (tile, (first, count)) in item_tiles(&plan, pixels).enumerate() {
                // Each group's weights from the unit's first tile on: written, then added to.
                let mode = if tile == 0 { mode } else { Accumulate::Add };
                let runs = column_runs(&g, first, count);
                for group in 0..g.groups {
                    let source = Im2colRows {
                        geometry: &g,
                        input: in_unit,
                        group,
                        runs: &runs,
                        columns: count,
                    };
                    materialize_into(&source, &mut columns);
                    let lhs = MatRef::new(
                        dy_unit,
                        group * og * pixels + first,
                        (og, count),
                        (pixels, 1),
                    )?;
                    let rhs = MatRef::row_major(&columns, kg, count)?.transpose();
                    let dst = MatMut::new(grad_weight, group * og * kg, (og, kg), kg)?;
                    gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(rhs), dst, mode)?;
                }
            }
        } else {
            let count = items * pixels;
            let runs = if g.is_pointwise() { Vec::new() } else { column_runs(&g, 0, count) };
            let (mut gathered, mut columns) = (Vec::new(), Vec::new());
            for group in 0..g.groups {
                materialize_into(
                    &ItemColumns::of_group(&g, group, items).reader(dy_unit),
                    &mut gathered,
                );
                let planes = ItemColumns::of_input_group(&g, group, items).reader(in_unit);
                let im2col =
                    Im2colRows { geometry: &g, input: in_unit, group, runs: &runs, columns: count };
                let source: &dyn RowSource = if g.is_pointwise() { &planes } else { &im2col };
                materialize_into(source, &mut columns);
                let lhs = MatRef::row_major(&gathered, og, count)?;
                let rhs = MatRef::row_major(&columns, kg, count)?.transpose();
                let dst = MatMut::new(grad_weight, group * og * kg, (og, kg), kg)?;
                gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(rhs), dst, mode)?;
            }
        }
        Ok(())
    };
    sum_in_fixed_runs(units, weight_len, accumulate_unit)
}

/// The sum over `units` work units of `accumulate(partial, unit, mode)`, each writing its
/// unit's terms into a `len`-long partial sum — `mode` is [`Accumulate::Overwrite`] for the
/// first unit of a partial (which must then write every value: the partials are [`Scratch`]
/// buffers, not zeroed) and [`Accumulate::Add`] after. The units are cut into at most
/// [`PARALLEL_SPLITS`] runs of consecutive units, each run accumulates in unit order (in
/// parallel with the others), then the runs' sums are added in run order — the same
/// additions in the same order whatever the number of threads
/// (docs/decisions/0002-deterministic-reductions.md).
pub(crate) fn sum_in_fixed_runs(
    units: usize,
    len: usize,
    accumulate: impl Fn(&mut [f32], usize, Accumulate) -> candle::Result<()> + Sync,
) -> candle::Result<Vec<f32>> {
    if units == 0 {
        return Ok(vec![0.0f32; len]);
    }
    const _: () = assert!(PARALLEL_SPLITS == 4, "the final sum below adds up to 4 runs");
    let units_per_run = units.div_ceil(PARALLEL_SPLITS).max(1);
    let runs = units.div_ceil(units_per_run);
    let partials = (0..runs)
        .into_par_iter()
        .map(|run| {
            let mut partial = Scratch::take(len);
            let first = run * units_per_run;
            for unit in first..units.min(first + units_per_run) {
                let mode = if unit == first { Accumulate::Overwrite } else { Accumulate::Add };
                accumulate(&mut partial, unit, mode)?;
            }
            Ok(partial)
        })
        .collect::<candle::Result<Vec<_>>>()?;
    // Each element adds the runs in run order, `((p0 + p1) + p2) + p3`; elements in parallel
    // chunks (megabytes of weight gradient at the late stages), with no zero fill.
    const CHUNK: usize = 16 * 1024;
    // SAFETY: `write_values` counts what it writes; each zip is as long as the chunk.
    Ok(unsafe {
        par_output(len, CHUNK, |index, out| {
            let at = index * CHUNK;
            let run = |r: usize| &partials[r][at..at + out.len()];
            match partials.len() {
                1 => write_values(out, run(0).iter().copied()),
                2 => write_values(out, run(0).iter().zip(run(1)).map(|(a, b)| a + b)),
                3 => write_values(
                    out,
                    run(0).iter().zip(run(1)).zip(run(2)).map(|((a, b), c)| a + b + c),
                ),
                _ => write_values(
                    out,
                    run(0)
                        .iter()
                        .zip(run(1))
                        .zip(run(2))
                        .zip(run(3))
                        .map(|(((a, b), c), d)| a + b + c + d),
                ),
            }
        })
    })
}

#[cfg(test)]
mod tests {
    use super::{ConvGeometry, add_to_even_columns, even_columns};

    /// `add_to_even_columns` adds to every other value from the first and leaves the others'
    /// bits alone (a -0.0 stays -0.0), for every length up to 13 and a row of `2n - 1` or
    /// `2n + 3` values.
    #[test]
    fn add_to_even_columns_adds_to_every_other_value() {
        for n in 0..=13usize {
            for extra in [0, 4] {
                let len = (2 * n + extra).saturating_sub(1);
                let start: Vec<f32> =
                    (0..len).map(|x| if x % 2 == 1 { -0.0 } else { x as f32 }).collect();
                let src: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
                // Between sentinels: a raw store past either end changes one.
                let mut padded = [vec![-1.0f32], start.clone(), vec![-1.0]].concat();
                add_to_even_columns(&src, &mut padded[1..=len]);
                let ends = [padded[0], padded[len + 1]];
                assert_eq!(ends, [-1.0, -1.0], "n {n}: written past its ends");
                let dst = &padded[1..=len];
                for (x, (got, was)) in dst.iter().zip(&start).enumerate() {
                    let want = if x % 2 == 0 && x / 2 < n { was + src[x / 2] } else { *was };
                    assert_eq!(got.to_bits(), want.to_bits(), "n {n}, row of {len}, value {x}");
                }
            }
        }
    }

    /// `even_columns` takes every other value from the first, by shuffles where eight can be
    /// read and one by one after, for every length up to 13 and a source of `2n - 1` (a row
    /// that ends on the last tap) or `2n + 3` values.
    #[test]
    fn even_columns_takes_every_other_value() {
        for n in 0..=13usize {
            for extra in [0, 4] {
                let len = (2 * n + extra).saturating_sub(1);
                let src: Vec<f32> = (0..len).map(|x| x as f32).collect();
                // Between sentinels: a raw store past either end changes one.
                let mut dst = vec![-1.0f32; n + 2];
                even_columns(&src, &mut dst[1..=n]);
                let want: Vec<f32> = (0..n).map(|i| (2 * i) as f32).collect();
                assert_eq!(dst[1..=n], want, "n {n}, source of {len}");
                assert_eq!([dst[0], dst[n + 1]], [-1.0, -1.0], "n {n}: written past its ends");
            }
        }
    }

    fn geometry(c: usize, o: usize, k: usize, stride: usize, size: usize) -> ConvGeometry {
        let out = (size + 2 * (k / 2) - k) / stride + 1;
        ConvGeometry {
            batch: 2,
            in_channels: c,
            in_height: size,
            in_width: size,
            out_channels: o,
            kernel_height: k,
            kernel_width: k,
            out_height: out,
            out_width: out,
            padding: k / 2,
            stride,
            dilation: 1,
            groups: 1,
        }
    }

    /// The profiler's names are the nn bench's case names (`benches/nn.rs`, `conv`), so a
    /// step's per-shape split and the bench's rows line up.
    #[test]
    fn case_names_follow_the_nn_bench_pattern() {
        assert_eq!(geometry(64, 64, 3, 1, 12).case_name(), "c3x3_64_12");
        assert_eq!(geometry(64, 128, 3, 2, 12).case_name(), "c3x3s2_64_128_12");
        assert_eq!(geometry(256, 512, 1, 1, 2).case_name(), "c1x1_256_512_2");
        let mut odd = geometry(8, 8, 3, 1, 5);
        (odd.in_width, odd.dilation, odd.groups, odd.padding) = (7, 2, 4, 2);
        assert_eq!(odd.case_name(), "c3x3d2g4p2_8_5x7");
    }
}
