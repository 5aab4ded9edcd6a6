//! Differentiable 2-D max and average pooling with PyTorch's semantics (padding, ceil_mode,
//! `count_include_pad=True`), which candle's `max_pool2d` / `avg_pool2d` lack: candle has no
//! padding, and no backward unless kernel == stride.
//!
//! Shapes: input `(B, C, H, W)`, output `(B, C, OH, OW)` with PyTorch's size rule
//! `OH = floor_or_ceil((H + 2·padding - kernel) / stride) + 1`, where in ceil mode the last
//! window must start inside the input or the left padding (else OH is one less).
//!
//! - Max pooling treats padding as -inf; the backward scatters each output gradient to the
//!   first maximum of its window in row-major scan order, as PyTorch's CPU kernel does. A
//!   window holding a NaN outputs NaN and routes its gradient to its first NaN (PyTorch's
//!   kernel picks the last one; both are arbitrary once a NaN appears).
//! - Average pooling divides by the window clipped to the padded input (padding counts,
//!   the part of a ceil-mode window beyond the padding does not).
//!
//! CPU kernels are parallel over the B·C planes. f16/bf16/f64 inputs on CPU are pooled in
//! f32 and cast back. With the `cuda` feature, f32/bf16/f16 CUDA tensors run the same ops
//! (`cuda/pool.rs`; the backward is deterministic and sums in the CPU's order); on other
//! devices the ops fall back to candle's pooling where candle's semantics coincide (no
//! padding, kernel == stride, no partial window) and fail otherwise.

use super::storage::{f32_row_major, par_output, try_par_zeroed};
use candle::{CpuStorage, CustomOp1, CustomOp3, DType, Layout, Shape, Tensor};
use rayon::prelude::*;

/// Square max pooling window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaxPool2dConfig {
    /// The window's side in pixels.
    pub kernel: usize,
    /// Step of the window, in pixels.
    pub stride: usize,
    /// Implicit -inf padding on every side; at most `kernel / 2` (PyTorch's limit).
    pub padding: usize,
    /// Round the output size up instead of down (PyTorch's `ceil_mode`).
    pub ceil_mode: bool,
}

/// Square average pooling window (PyTorch `AvgPool2d` with `count_include_pad=True`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AvgPool2dConfig {
    /// The window's side in pixels.
    pub kernel: usize,
    /// Step of the window, in pixels.
    pub stride: usize,
    /// Implicit zero padding on every side, counted in the divisor; at most `kernel / 2`.
    pub padding: usize,
    /// Round the output size up instead of down (PyTorch's `ceil_mode`).
    pub ceil_mode: bool,
}

/// The window of one pooling op, shared by max and average pooling.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Window {
    kernel: usize,
    stride: usize,
    padding: usize,
    ceil_mode: bool,
}

impl From<MaxPool2dConfig> for Window {
    fn from(c: MaxPool2dConfig) -> Self {
        Self { kernel: c.kernel, stride: c.stride, padding: c.padding, ceil_mode: c.ceil_mode }
    }
}

impl From<AvgPool2dConfig> for Window {
    fn from(c: AvgPool2dConfig) -> Self {
        Self { kernel: c.kernel, stride: c.stride, padding: c.padding, ceil_mode: c.ceil_mode }
    }
}

impl Window {
    /// PyTorch's `pooling_output_shape` (dilation 1).
    fn output_size(&self, input: usize, op: &str) -> candle::Result<usize> {
        let Window { kernel, stride, padding, ceil_mode } = *self;
        if kernel == 0 || stride == 0 {
            candle::bail!("{op}: kernel ({kernel}) and stride ({stride}) must be positive");
        }
        if padding > kernel / 2 {
            candle::bail!("{op}: padding ({padding}) must be at most half the kernel ({kernel})");
        }
        // PyTorch's formula with its round-toward-negative division: a window may start in
        // the input and run past it (ceil_mode), but every output needs at least one input.
        let numerator = (input + 2 * padding) as i64 - kernel as i64
            + if ceil_mode { stride as i64 - 1 } else { 0 };
        let mut output = numerator.div_euclid(stride as i64) + 1;
        if ceil_mode && output >= 1 && (output - 1) * stride as i64 >= (input + padding) as i64 {
            output -= 1;
        }
        if output < 1 {
            candle::bail!(
                "{op}: input size {input} with padding {padding} gives no output for kernel {kernel}, \
                 stride {stride} (ceil_mode {ceil_mode})"
            );
        }
        let output = output as usize;
        Ok(output)
    }

    /// The clipped input range `[start, end)` of output index `out` along a dimension of
    /// size `input`, and the unclipped-but-padding-bounded length used by average pooling.
    fn range(&self, out: usize, input: usize) -> (usize, usize, usize) {
        let start = out * self.stride;
        let padded_end = (start + self.kernel).min(input + 2 * self.padding);
        let count_with_padding = padded_end - start;
        let clipped_start = start.saturating_sub(self.padding);
        let clipped_end = padded_end.saturating_sub(self.padding).min(input);
        (clipped_start, clipped_end.max(clipped_start), count_with_padding)
    }
}

/// `(B, C, H, W)`, validated, with the output size.
#[derive(Debug, Clone, Copy)]
struct PoolGeometry {
    planes: usize,
    in_height: usize,
    in_width: usize,
    out_height: usize,
    out_width: usize,
    batch: usize,
    channels: usize,
}

impl PoolGeometry {
    fn new(dims: &[usize], window: &Window, op: &str) -> candle::Result<Self> {
        let &[batch, channels, in_height, in_width] = dims else {
            candle::bail!("{op}: input must be (B, C, H, W), got shape {dims:?}");
        };
        Ok(Self {
            planes: batch * channels,
            in_height,
            in_width,
            out_height: window.output_size(in_height, op)?,
            out_width: window.output_size(in_width, op)?,
            batch,
            channels,
        })
    }

    fn in_plane(&self) -> usize {
        self.in_height * self.in_width
    }

    fn out_plane(&self) -> usize {
        self.out_height * self.out_width
    }

    fn output_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.out_height, self.out_width))
    }

    fn input_shape(&self) -> Shape {
        Shape::from((self.batch, self.channels, self.in_height, self.in_width))
    }

    /// What the CUDA kernels take.
    #[cfg(feature = "cuda")]
    fn cuda_shape(&self, window: &Window) -> super::cuda::pool::PoolShape {
        super::cuda::pool::PoolShape {
            batch: self.batch,
            channels: self.channels,
            height: self.in_height,
            width: self.in_width,
            out_height: self.out_height,
            out_width: self.out_width,
            kernel: window.kernel,
            stride: window.stride,
            padding: window.padding,
        }
    }
}

/// Max pooling of `xs (B, C, H, W)`; differentiable.
pub fn max_pool2d(xs: &Tensor, config: MaxPool2dConfig) -> candle::Result<Tensor> {
    pool2d::<Max, _>(xs, config, MaxPool2dOp { config })
}

/// Average pooling of `xs (B, C, H, W)` (count_include_pad=True); differentiable.
pub fn avg_pool2d(xs: &Tensor, config: AvgPool2dConfig) -> candle::Result<Tensor> {
    pool2d::<Average, _>(xs, config, AvgPool2dOp { config })
}

/// Applies the pooling `op` (window `config`) to `xs`: on CUDA as it is, on CPU in f32, on
/// other devices through candle's pooling where that agrees.
fn pool2d<R, Op>(
    xs: &Tensor,
    config: impl Into<Window> + std::fmt::Debug + Copy,
    op: Op,
) -> candle::Result<Tensor>
where
    R: PoolReduction,
    Op: CustomOp1 + Send + Sync + 'static,
{
    let window = config.into();
    let geometry = PoolGeometry::new(xs.dims(), &window, R::OP)?;
    if super::on_cuda(xs) {
        return xs.contiguous()?.apply_op1(op);
    }
    if !xs.device().is_cpu() {
        let (h, w) = (geometry.in_height, geometry.in_width);
        if candle_pool_matches(&window, h, w) {
            return R::candle_pool(xs, window.kernel, window.stride);
        }
        candle::bail!(
            "{}: {config:?} is only implemented on CPU (device {:?}); candle's own pooling \
             covers only padding 0, kernel == stride and no partial window",
            R::OP,
            xs.device().location()
        );
    }
    match xs.dtype() {
        DType::F32 => xs.apply_op1(op),
        dtype => xs.to_dtype(DType::F32)?.apply_op1(op)?.to_dtype(dtype),
    }
}

/// Whether candle's unpadded floor-mode pooling (with its kernel == stride backward) gives
/// the same result as this window.
fn candle_pool_matches(window: &Window, height: usize, width: usize) -> bool {
    window.padding == 0
        && window.kernel == window.stride
        && height.is_multiple_of(window.kernel)
        && width.is_multiple_of(window.kernel)
}

/// Max pooling forward as a candle op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool2dOp {
    pub(crate) config: MaxPool2dConfig,
}

/// `max` that propagates NaN from either side (PyTorch's max pooling returns NaN for a
/// window that holds one).
#[inline(always)]
fn nan_max(best: f32, value: f32) -> f32 {
    // Non-short-circuit `|` keeps this branch-free so the row loops vectorise.
    if (value > best) | value.is_nan() { value } else { best }
}

/// Per-thread scratch of one plane: a row of column maxima / sums, and every output
/// column's window `(x0, x1, count with padding)` (computed once, not per output pixel).
#[derive(Default)]
struct RowScratch {
    values: Vec<f32>,
    column_windows: Vec<(usize, usize, usize)>,
}

impl RowScratch {
    fn new(geometry: &PoolGeometry, window: &Window) -> Self {
        Self {
            values: vec![0.0; geometry.in_width],
            column_windows: column_windows(geometry, window),
        }
    }
}

/// Every output column's window `(x0, x1, count with padding)`.
fn column_windows(geometry: &PoolGeometry, window: &Window) -> Vec<(usize, usize, usize)> {
    (0..geometry.out_width).map(|x| window.range(x, geometry.in_width)).collect()
}

/// What sets max pooling apart from average pooling in the shared forward code: how the
/// window's rows fold into column values, and how a window's columns give the output.
/// Implemented by zero-sized markers, so [`pool_plane`] is monomorphised per reduction.
trait PoolReduction {
    /// The public op's name, for errors.
    const OP: &'static str;

    /// Folds the next row's `value` into a column's running `acc`.
    fn combine(acc: f32, value: f32) -> f32;

    /// The output of a window from its (non-empty) column values; `count` is the window's
    /// size including padding.
    fn window_value(columns: &[f32], count: usize) -> f32;

    /// candle's own pooling, used off CPU and CUDA where its semantics coincide.
    fn candle_pool(xs: &Tensor, kernel: usize, stride: usize) -> candle::Result<Tensor>;
}

/// Max pooling (NaN-propagating).
struct Max;

impl PoolReduction for Max {
    const OP: &'static str = "max_pool2d";

    #[inline(always)]
    fn combine(acc: f32, value: f32) -> f32 {
        nan_max(acc, value)
    }

    #[inline(always)]
    fn window_value(columns: &[f32], _count: usize) -> f32 {
        columns[1..].iter().fold(columns[0], |m, &v| nan_max(m, v))
    }

    fn candle_pool(xs: &Tensor, kernel: usize, stride: usize) -> candle::Result<Tensor> {
        xs.max_pool2d_with_stride(kernel, stride)
    }
}

/// Average pooling with `count_include_pad=True`.
struct Average;

impl PoolReduction for Average {
    const OP: &'static str = "avg_pool2d";

    #[inline(always)]
    fn combine(acc: f32, value: f32) -> f32 {
        acc + value
    }

    #[inline(always)]
    fn window_value(columns: &[f32], count: usize) -> f32 {
        columns.iter().sum::<f32>() / count as f32
    }

    fn candle_pool(xs: &Tensor, kernel: usize, stride: usize) -> candle::Result<Tensor> {
        xs.avg_pool2d_with_stride(kernel, stride)
    }
}

/// The CPU forward of pooling with reduction `R`: every B·C plane in parallel.
fn pool_forward_cpu<R: PoolReduction>(
    storage: &CpuStorage,
    layout: &Layout,
    window: Window,
) -> candle::Result<(CpuStorage, Shape)> {
    let geometry = PoolGeometry::new(layout.dims(), &window, R::OP)?;
    let input = f32_row_major(storage, layout, R::OP)?;
    if let Some(k) = exact_tiles(&geometry, &window) {
        let (in_plane, out_plane) = (geometry.in_plane(), geometry.out_plane());
        // SAFETY: each writer fills its whole plane (every output of every row).
        let output = unsafe {
            par_output(geometry.planes * out_plane, out_plane, |index, out| {
                let plane = &input[index * in_plane..(index + 1) * in_plane];
                pool_tiles::<R>(plane, &geometry, k, out)
            })
        };
        return Ok((CpuStorage::F32(output), geometry.output_shape()));
    }
    let mut output = vec![0.0f32; geometry.planes * geometry.out_plane()];
    if !output.is_empty() {
        output
            .par_chunks_mut(geometry.out_plane())
            .zip(input.par_chunks(geometry.in_plane()))
            .for_each_init(
                || RowScratch::new(&geometry, &window),
                |scratch, (out_plane, in_plane)| {
                    pool_plane::<R>(in_plane, &geometry, &window, scratch, out_plane)
                },
            );
    }
    Ok((CpuStorage::F32(output), geometry.output_shape()))
}

/// The side `k` of windows that tile the input exactly — kernel == stride == `k` (at most
/// [`MAX_TILE`]), no padding, every input pixel in one whole window (xresnet's shortcut
/// `AvgPool2d(2, ceil_mode=True)` on even sizes) — or `None`.
fn exact_tiles(geometry: &PoolGeometry, window: &Window) -> Option<usize> {
    // candle's condition (kernel == stride, no padding, sizes divisible) is this one; the
    // output size then is the input's over k in either rounding mode.
    let k = window.kernel;
    (candle_pool_matches(window, geometry.in_height, geometry.in_width)
        && (1..=MAX_TILE).contains(&k))
    .then_some(k)
}

/// The largest window [`exact_tiles`] takes (its column values live on the stack).
const MAX_TILE: usize = 8;

/// Pooling of one plane tiled exactly by `k × k` windows, written straight into `out` (no
/// row buffers, no zero fill): each window's columns folded over its rows in order, then
/// [`PoolReduction::window_value`] — the same arithmetic in the same order as [`pool_plane`].
/// Returns the values written (the whole plane).
fn pool_tiles<R: PoolReduction>(
    plane: &[f32],
    geometry: &PoolGeometry,
    k: usize,
    out: &mut [std::mem::MaybeUninit<f32>],
) -> usize {
    let width = geometry.in_width;
    let mut columns = [0.0f32; MAX_TILE];
    for (rows, out_row) in
        plane.chunks_exact(k * width).zip(out.chunks_exact_mut(geometry.out_width))
    {
        for (x0, value) in (0..width).step_by(k).zip(out_row.iter_mut()) {
            for (j, column) in columns[..k].iter_mut().enumerate() {
                *column = rows[x0 + j];
                for y in 1..k {
                    *column = R::combine(*column, rows[y * width + x0 + j]);
                }
            }
            value.write(R::window_value(&columns[..k], k * k));
        }
    }
    geometry.out_plane()
}

/// Separable pooling of one plane: per output row, the column-wise reduction over the
/// window's rows, then each window's value from its columns.
fn pool_plane<R: PoolReduction>(
    plane: &[f32],
    geometry: &PoolGeometry,
    window: &Window,
    scratch: &mut RowScratch,
    out: &mut [f32],
) {
    let width = geometry.in_width;
    let RowScratch { values, column_windows } = scratch;
    let columns = &mut values[..width];
    for (out_y, out_row) in out.chunks_exact_mut(geometry.out_width).enumerate() {
        let (y0, y1, count_y) = window.range(out_y, geometry.in_height);
        columns.copy_from_slice(&plane[y0 * width..(y0 + 1) * width]);
        for y in y0 + 1..y1 {
            for (acc, &value) in columns.iter_mut().zip(&plane[y * width..(y + 1) * width]) {
                *acc = R::combine(*acc, value);
            }
        }
        for (out_value, &(x0, x1, count_x)) in out_row.iter_mut().zip(column_windows.iter()) {
            *out_value = R::window_value(&columns[x0..x1], count_y * count_x);
        }
    }
}

impl CustomOp1 for MaxPool2dOp {
    fn name(&self) -> &'static str {
        "wick-max-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        pool_forward_cpu::<Max>(storage, layout, Window::from(self.config))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle::CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let window = Window::from(self.config);
        let geometry = PoolGeometry::new(layout.dims(), &window, "max_pool2d")?;
        super::cuda::pool::max_pool(storage, layout, &geometry.cuda_shape(&window))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<Option<Tensor>> {
        let (output, grad_output) = (super::for_kernel(output)?, super::for_kernel(grad_output)?);
        let op = MaxPool2dBackwardOp { config: self.config };
        Ok(Some(xs.apply_op3_no_bwd(&output, &grad_output, &op)?))
    }
}

/// Max pooling backward of one plane, added into `grad_input` (zeroed by the caller): each
/// window's gradient goes to its first maximum in row-major scan order (the first value equal
/// to the window's max, NaN equal to NaN: the same position as PyTorch's scan, which replaces
/// the best only on a strictly greater value or a NaN — except in a window with two or more
/// NaNs, where PyTorch's goes to the last). The maxima are the forward's output (`maxima`, the
/// plane's `OH × OW`); the position search is branch-free (scanned backwards, each match
/// overwriting the position), since on real activations the comparisons are unpredictable,
/// and a NaN maximum (never, on real activations: a predictable branch) takes its own scan.
fn max_pool_backward_plane(
    plane: &[f32],
    maxima: &[f32],
    grad: &[f32],
    geometry: &PoolGeometry,
    window: &Window,
    column_windows: &[(usize, usize, usize)],
    grad_input: &mut [f32],
) {
    let width = geometry.in_width;
    for (out_y, (grad_row, max_row)) in grad
        .chunks_exact(geometry.out_width)
        .zip(maxima.chunks_exact(geometry.out_width))
        .enumerate()
    {
        let (y0, y1, _) = window.range(out_y, geometry.in_height);
        let windows = column_windows.iter();
        for ((&g, &max), &(x0, x1, _)) in grad_row.iter().zip(max_row).zip(windows) {
            let at = if (y1 - y0, x1 - x0) == (3, 3) && !max.is_nan() {
                // A whole 3×3 window (all but the borders of xresnet's stem pool) with a
                // number for its maximum: the same scan with its bounds known, unrolled, and
                // equality the only match.
                first_max_at::<3, 3>(plane, width, (y0, x0), max)
            } else {
                first_max_at_dyn(plane, width, (y0, y1), (x0, x1), max)
            };
            grad_input[at] += g;
        }
    }
}

/// Whether `value` is the window's `max` as PyTorch's scan finds it (a NaN matches a NaN).
#[inline(always)]
fn is_max(value: f32, max: f32) -> bool {
    (value == max) | (max.is_nan() & value.is_nan())
}

/// The index in `plane` of the first element of the `KH × KW` window at `(y0, x0)` equal to
/// its `max` (a number, not NaN), scanned backwards with each match overwriting the position
/// (branch-free).
#[inline(always)]
fn first_max_at<const KH: usize, const KW: usize>(
    plane: &[f32],
    width: usize,
    (y0, x0): (usize, usize),
    max: f32,
) -> usize {
    let mut at = y0 * width + x0;
    for y in (y0..y0 + KH).rev() {
        let row: &[f32; KW] = plane[y * width + x0..][..KW].try_into().expect("KW values");
        for x in (0..KW).rev() {
            at = if row[x] == max { y * width + x0 + x } else { at };
        }
    }
    at
}

/// [`first_max_at`] for a window of any size (clipped at the borders).
fn first_max_at_dyn(
    plane: &[f32],
    width: usize,
    (y0, y1): (usize, usize),
    (x0, x1): (usize, usize),
    max: f32,
) -> usize {
    let mut at = y0 * width + x0;
    for y in (y0..y1).rev() {
        for x in (x0..x1).rev() {
            at = if is_max(plane[y * width + x], max) { y * width + x } else { at };
        }
    }
    at
}

/// Gradient of max pooling: an op on `(xs (B, C, H, W), output (B, C, OH, OW), grad_output
/// (B, C, OH, OW))`, `output` the forward's (each window's maximum, so that the CPU backward
/// does not pool again; the CUDA kernel finds the maxima itself).
#[derive(Debug, Clone, Copy)]
pub(crate) struct MaxPool2dBackwardOp {
    pub(crate) config: MaxPool2dConfig,
}

impl MaxPool2dBackwardOp {
    /// The geometry of the pooling of input `input_layout`, checked against its output
    /// `output_layout` and output gradient `grad_layout`.
    fn geometry(
        &self,
        input_layout: &Layout,
        output_layout: &Layout,
        grad_layout: &Layout,
    ) -> candle::Result<PoolGeometry> {
        let window = Window::from(self.config);
        let geometry = PoolGeometry::new(input_layout.dims(), &window, "max_pool2d backward")?;
        for (name, layout) in [("output", output_layout), ("grad", grad_layout)] {
            if layout.shape() != &geometry.output_shape() {
                candle::bail!(
                    "max_pool2d backward: {name} {:?} does not match the pooled shape {:?}",
                    layout.dims(),
                    geometry.output_shape().dims()
                );
            }
        }
        Ok(geometry)
    }
}

impl CustomOp3 for MaxPool2dBackwardOp {
    fn name(&self) -> &'static str {
        "wick-max-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        input_storage: &CpuStorage,
        input_layout: &Layout,
        output_storage: &CpuStorage,
        output_layout: &Layout,
        grad_storage: &CpuStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let window = Window::from(self.config);
        let geometry = self.geometry(input_layout, output_layout, grad_layout)?;
        let input = f32_row_major(input_storage, input_layout, "max_pool2d backward")?;
        let maxima = f32_row_major(output_storage, output_layout, "max_pool2d backward")?;
        let grad = f32_row_major(grad_storage, grad_layout, "max_pool2d backward")?;
        let column_windows = column_windows(&geometry, &window);
        let (in_plane, out_plane) = (geometry.in_plane(), geometry.out_plane());
        let grad_input = try_par_zeroed(geometry.planes * in_plane, in_plane, |index, dx| {
            let planes = index * out_plane..(index + 1) * out_plane;
            max_pool_backward_plane(
                &input[index * in_plane..(index + 1) * in_plane],
                &maxima[planes.clone()],
                &grad[planes],
                &geometry,
                &window,
                &column_windows,
                dx,
            );
            Ok(())
        })?;
        Ok((CpuStorage::F32(grad_input), geometry.input_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        input: &candle::CudaStorage,
        input_layout: &Layout,
        _output: &candle::CudaStorage,
        output_layout: &Layout,
        grad: &candle::CudaStorage,
        grad_layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        // The CUDA kernel finds each window's maximum itself; `output` is checked, not read.
        let window = Window::from(self.config);
        let geometry = self.geometry(input_layout, output_layout, grad_layout)?;
        let shape = geometry.cuda_shape(&window);
        super::cuda::pool::max_pool_backward(input, input_layout, grad, grad_layout, &shape)
    }
}

/// Average pooling forward as a candle op.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvgPool2dOp {
    pub(crate) config: AvgPool2dConfig,
}

impl CustomOp1 for AvgPool2dOp {
    fn name(&self) -> &'static str {
        "wick-avg-pool2d"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        pool_forward_cpu::<Average>(storage, layout, Window::from(self.config))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle::CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let window = Window::from(self.config);
        let geometry = PoolGeometry::new(layout.dims(), &window, "avg_pool2d")?;
        super::cuda::pool::avg_pool(storage, layout, &geometry.cuda_shape(&window))
    }

    fn bwd(
        &self,
        xs: &Tensor,
        _output: &Tensor,
        grad_output: &Tensor,
    ) -> candle::Result<Option<Tensor>> {
        let (_, _, input_height, input_width) = xs.dims4()?;
        let op = AvgPool2dBackwardOp { config: self.config, input_height, input_width };
        Ok(Some(super::for_kernel(grad_output)?.apply_op1_no_bwd(&op)?))
    }
}

/// Gradient of average pooling: an op on `grad_output (B, C, OH, OW)` returning
/// `(B, C, H, W)`; H and W are stored because several input sizes pool to the same size.
#[derive(Debug, Clone, Copy)]
pub(crate) struct AvgPool2dBackwardOp {
    pub(crate) config: AvgPool2dConfig,
    pub(crate) input_height: usize,
    pub(crate) input_width: usize,
}

impl CustomOp1 for AvgPool2dBackwardOp {
    fn name(&self) -> &'static str {
        "wick-avg-pool2d-backward"
    }

    fn cpu_fwd(
        &self,
        storage: &CpuStorage,
        layout: &Layout,
    ) -> candle::Result<(CpuStorage, Shape)> {
        let _timer = crate::profile::Timer::start(self.name());
        let window = Window::from(self.config);
        let geometry = self.geometry(layout)?;
        let grad = f32_row_major(storage, layout, "avg_pool2d backward")?;
        if let Some(k) = exact_tiles(&geometry, &window) {
            let (in_plane, out_plane) = (geometry.in_plane(), geometry.out_plane());
            // SAFETY: each writer fills its whole plane (every pixel of every row).
            let grad_input = unsafe {
                par_output(geometry.planes * in_plane, in_plane, |index, dx| {
                    let dy = &grad[index * out_plane..(index + 1) * out_plane];
                    avg_pool_backward_tiles(dy, &geometry, k, dx)
                })
            };
            return Ok((CpuStorage::F32(grad_input), geometry.input_shape()));
        }
        let mut grad_input = vec![0.0f32; geometry.planes * geometry.in_plane()];
        if geometry.out_plane() > 0 && !grad_input.is_empty() {
            grad_input
                .par_chunks_mut(geometry.in_plane())
                .zip(grad.par_chunks(geometry.out_plane()))
                .for_each_init(
                    || RowScratch::new(&geometry, &window),
                    |scratch, (dx_plane, dy_plane)| {
                        avg_pool_backward_plane(dy_plane, &geometry, &window, scratch, dx_plane);
                    },
                );
        }
        Ok((CpuStorage::F32(grad_input), geometry.input_shape()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        storage: &candle::CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(candle::CudaStorage, Shape)> {
        let geometry = self.geometry(layout)?;
        let window = Window::from(self.config);
        super::cuda::pool::avg_pool_backward(storage, layout, &geometry.cuda_shape(&window))
    }
}

impl AvgPool2dBackwardOp {
    /// The geometry of the pooling whose output gradient `layout` describes.
    fn geometry(&self, layout: &Layout) -> candle::Result<PoolGeometry> {
        let window = Window::from(self.config);
        let &[batch, channels, grad_height, grad_width] = layout.dims() else {
            candle::bail!(
                "avg_pool2d backward: grad must be (B, C, OH, OW), got {:?}",
                layout.dims()
            );
        };
        let input_dims = [batch, channels, self.input_height, self.input_width];
        let geometry = PoolGeometry::new(&input_dims, &window, "avg_pool2d backward")?;
        if (geometry.out_height, geometry.out_width) != (grad_height, grad_width) {
            candle::bail!(
                "avg_pool2d backward: grad {:?} does not match the pooled size of input {input_dims:?}",
                layout.dims()
            );
        }
        Ok(geometry)
    }
}

/// Average pooling backward of one plane tiled exactly by `k × k` windows (see
/// [`exact_tiles`]), written straight into `dx`: every pixel gets its window's gradient over
/// `k²` — as `0 + share`, the value [`avg_pool_backward_plane`]'s zeroed sums hold (so a
/// `-0.0` share is `+0.0` there too). Returns the values written (the whole plane).
fn avg_pool_backward_tiles(
    grad: &[f32],
    geometry: &PoolGeometry,
    k: usize,
    dx: &mut [std::mem::MaybeUninit<f32>],
) -> usize {
    let (width, count) = (geometry.in_width, (k * k) as f32);
    for (grad_row, dx_rows) in
        grad.chunks_exact(geometry.out_width).zip(dx.chunks_exact_mut(k * width))
    {
        for dx_row in dx_rows.chunks_exact_mut(width) {
            for (&g, dx_window) in grad_row.iter().zip(dx_row.chunks_exact_mut(k)) {
                let value = 0.0 + g / count;
                for dx in dx_window {
                    dx.write(value);
                }
            }
        }
    }
    geometry.in_plane()
}

/// Average pooling backward of one plane: per output row, spread each gradient over its
/// window's columns (divided by the padded window size), then add that row to every input
/// row of the window.
fn avg_pool_backward_plane(
    grad: &[f32],
    geometry: &PoolGeometry,
    window: &Window,
    scratch: &mut RowScratch,
    grad_input: &mut [f32],
) {
    let width = geometry.in_width;
    // Written before any read: one page fault per calloc page instead of two.
    grad_input.fill(0.0);
    let RowScratch { values, column_windows } = scratch;
    let row_grad = &mut values[..width];
    for (out_y, grad_row) in grad.chunks_exact(geometry.out_width).enumerate() {
        let (y0, y1, count_y) = window.range(out_y, geometry.in_height);
        row_grad.fill(0.0);
        for (&g, &(x0, x1, count_x)) in grad_row.iter().zip(column_windows.iter()) {
            let share = g / (count_y * count_x) as f32;
            for value in &mut row_grad[x0..x1] {
                *value += share;
            }
        }
        for y in y0..y1 {
            for (dx, &g) in grad_input[y * width..(y + 1) * width].iter_mut().zip(row_grad.iter()) {
                *dx += g;
            }
        }
    }
}
