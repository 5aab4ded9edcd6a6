//! Single-threaded f32 matrix multiply (`C = A·B` or `C += A·B`) over strided views,
//! with interchangeable backends: packed kernels written here, AVX-512
//! ([`GemmBackend::NativeAvx512`]) and AVX2/FMA ([`GemmBackend::Native`]), which give the
//! same bits; the `gemm` crate that candle itself uses ([`GemmBackend::GemmCrate`]); and
//! Debian's OpenBLAS behind the `openblas` cargo feature ([`GemmBackend::OpenBlas`]).
//!
//! The convolutions call this once per batch item (or tile) from inside a rayon loop over
//! the batch, so every backend runs single-threaded here. The backend is a process-wide
//! setting so that benchmarks can compare them on the same convolution code. The default
//! is the widest native kernel the CPU runs (AVX-512, else AVX2+FMA, else the `gemm`
//! crate): measured on the xresnet50 conv shapes with `cargo bench -p wick-nn --bench nn --
//! --compare-gemm`, the AVX2 kernel beats the `gemm` crate on forward+backward (e.g. 3×3
//! 64→64 at 56×56, batch 32: 94 vs 74 GFLOP/s, AMD EPYC) mostly because the convolution can
//! hand it pre-packed weights and an im2col matrix generated straight into its packing
//! buffers; on an AVX-512 Xeon the AVX-512 kernel runs the bare products at 92-146 GFLOP/s
//! against the AVX2 kernel's 65-82 (`--probe-gemm`, docs/performance.md).
//!
//! Matrix legend: `A` is `m × k`, `B` is `k × n`, `C` is `m × n`.

mod native;
#[cfg(feature = "openblas")]
mod openblas;

use crate::scratch::Scratch;
use std::sync::atomic::{AtomicU8, Ordering};

pub(crate) use native::{Kernel, PackedLhs};

/// Which matrix-multiply implementation the CPU convolutions use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GemmBackend {
    /// Packed 6×16 AVX2/FMA micro-kernel written in this crate (x86-64 with AVX2 and FMA only).
    Native,
    /// Packed 12×32 AVX-512 micro-kernel written in this crate (x86-64 with AVX-512F, AVX2
    /// and FMA only); the same blocking and summation order as [`GemmBackend::Native`], so
    /// the same bits.
    NativeAvx512,
    /// The pure-Rust `gemm` crate (what candle's matmul uses), single-threaded.
    GemmCrate,
    /// OpenBLAS `cblas_sgemm` (only with the `openblas` cargo feature).
    OpenBlas,
}

impl GemmBackend {
    /// Every backend, available here or not (benchmarks and tests filter with
    /// [`GemmBackend::is_available`]).
    pub const ALL: [GemmBackend; 4] = [
        GemmBackend::NativeAvx512,
        GemmBackend::Native,
        GemmBackend::GemmCrate,
        GemmBackend::OpenBlas,
    ];

    /// Whether this backend can run in this build on this CPU.
    pub fn is_available(self) -> bool {
        match self.native_kernel() {
            Some(kernel) => kernel.is_supported(),
            None => self != GemmBackend::OpenBlas || cfg!(feature = "openblas"),
        }
    }

    /// The backends that can run in this build on this CPU, in [`GemmBackend::ALL`]'s order.
    pub fn available() -> impl Iterator<Item = GemmBackend> {
        Self::ALL.into_iter().filter(|backend| backend.is_available())
    }

    /// The default: the widest native kernel the CPU runs (AVX-512, else AVX2+FMA), else the
    /// `gemm` crate (the first available of [`GemmBackend::ALL`]).
    pub fn default_for_this_cpu() -> Self {
        Self::available().next().unwrap_or(GemmBackend::GemmCrate)
    }

    /// Whether this is one of the packed kernels written in this crate.
    pub fn is_native(self) -> bool {
        self.native_kernel().is_some()
    }

    /// The short name benchmarks print and parse: `native-avx512`, `native`, `gemm`,
    /// `openblas`.
    pub fn name(self) -> &'static str {
        match self {
            GemmBackend::Native => "native",
            GemmBackend::NativeAvx512 => "native-avx512",
            GemmBackend::GemmCrate => "gemm",
            GemmBackend::OpenBlas => "openblas",
        }
    }

    /// The backend named `name` (see [`GemmBackend::name`]), if any.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|backend| backend.name() == name)
    }

    /// The native micro-kernel of this backend; `None` for the external ones.
    pub(crate) fn native_kernel(self) -> Option<native::Kernel> {
        match self {
            GemmBackend::Native => Some(native::Kernel::Avx2),
            GemmBackend::NativeAvx512 => Some(native::Kernel::Avx512),
            GemmBackend::GemmCrate | GemmBackend::OpenBlas => None,
        }
    }

    /// The stored form of a selection: 1 + its index in [`GemmBackend::ALL`] (0 is "none").
    fn code(self) -> u8 {
        let index = Self::ALL.iter().position(|backend| *backend == self);
        1 + index.expect("GemmBackend::ALL lists every backend") as u8
    }
}

/// 0 means "not chosen yet": the first call to [`gemm_backend`] picks the default.
static SELECTED_BACKEND: AtomicU8 = AtomicU8::new(0);

/// The backend the CPU convolutions currently use.
pub fn gemm_backend() -> GemmBackend {
    match SELECTED_BACKEND.load(Ordering::Relaxed) {
        0 => GemmBackend::default_for_this_cpu(),
        code => GemmBackend::ALL[usize::from(code) - 1],
    }
}

/// Chooses the backend of every later CPU convolution in this process (benchmarks use it
/// to compare backends). Fails if the backend is not available in this build or on this CPU.
pub fn set_gemm_backend(backend: GemmBackend) -> candle::Result<()> {
    if !backend.is_available() {
        candle::bail!(
            "set_gemm_backend: {backend:?} is not available (native needs x86-64 AVX2+FMA, \
             native-avx512 also AVX-512F, OpenBlas the `openblas` cargo feature)"
        );
    }
    SELECTED_BACKEND.store(backend.code(), Ordering::Relaxed);
    Ok(())
}

/// `c = a · b` for dense row-major `a (m × k)`, `b (k × n)`, `c (m × n)`, single-threaded,
/// with the given backend (the building block of the convolutions, public for benchmarks).
pub fn matmul_row_major(
    backend: GemmBackend,
    a: &[f32],
    b: &[f32],
    c: &mut [f32],
    (m, k, n): (usize, usize, usize),
) -> candle::Result<()> {
    if a.len() != m * k || b.len() != k * n || c.len() != m * n {
        candle::bail!(
            "matmul_row_major: buffers of {}, {} and {} elements do not fit m={m}, k={k}, n={n}",
            a.len(),
            b.len(),
            c.len()
        );
    }
    let lhs = MatRef::row_major(a, m, k)?;
    let rhs = MatRef::row_major(b, k, n)?;
    let dst = MatMut::row_major(c, m, n)?;
    gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(rhs), dst, Accumulate::Overwrite)
}

/// A read-only strided matrix view: element `(i, j)` is `data[offset + i*row_stride + j*col_stride]`.
#[derive(Debug, Clone, Copy)]
pub(crate) struct MatRef<'a> {
    data: &'a [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
}

impl<'a> MatRef<'a> {
    /// Checks once that every element of the view lies inside `data`, which is the invariant
    /// the unsafe kernels rely on.
    pub(crate) fn new(
        data: &'a [f32],
        offset: usize,
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
    ) -> candle::Result<Self> {
        check_view_bounds(data.len(), offset, rows, cols, row_stride, col_stride)?;
        Ok(Self { data, offset, rows, cols, row_stride, col_stride })
    }

    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a [f32], rows: usize, cols: usize) -> candle::Result<Self> {
        Self::new(data, 0, (rows, cols), (cols, 1))
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// Rows `first..first + count` of the view.
    ///
    /// # Errors
    /// If they reach past the view's last row.
    pub(crate) fn rows_from(self, first: usize, count: usize) -> candle::Result<Self> {
        match first.checked_add(count) {
            Some(end) if end <= self.rows => {
                // The rows lie inside the checked view: an offset of at most `data.len()`.
                let offset = self.offset + first * self.row_stride;
                Ok(Self { offset, rows: count, ..self })
            }
            _ => candle::bail!("gemm: rows {first}..+{count} of a {}-row view", self.rows),
        }
    }

    /// The same elements seen as the transposed matrix.
    pub(crate) fn transpose(self) -> Self {
        Self {
            rows: self.cols,
            cols: self.rows,
            row_stride: self.col_stride,
            col_stride: self.row_stride,
            ..self
        }
    }

    fn ptr(&self) -> *const f32 {
        // The offset is in bounds (or the view is empty), checked in `new`.
        self.data.as_ptr().wrapping_add(self.offset)
    }
}

/// A mutable strided matrix view with unit column stride (rows are contiguous), which all
/// the convolution outputs are. Its columns may come in blocks of `item_cols`, block `b`
/// starting `b · item_stride` after the first ([`MatMut::items`]): the `O × (items·P)`
/// output of several batch items of an `(items, O, P)` tensor, written in place.
#[derive(Debug)]
pub(crate) struct MatMut<'a> {
    data: &'a mut [f32],
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    /// Columns per block; `cols` (one block) for a plain matrix.
    item_cols: usize,
    /// Distance between the first elements of consecutive blocks.
    item_stride: usize,
}

impl<'a> MatMut<'a> {
    /// A `rows × cols` view whose element `(i, j)` is `data[offset + i·row_stride + j]`.
    ///
    /// # Errors
    /// If the view reaches past the end of `data`.
    pub(crate) fn new(
        data: &'a mut [f32],
        offset: usize,
        (rows, cols): (usize, usize),
        row_stride: usize,
    ) -> candle::Result<Self> {
        check_view_bounds(data.len(), offset, rows, cols, row_stride, 1)?;
        Ok(Self { data, offset, rows, cols, row_stride, item_cols: cols.max(1), item_stride: 0 })
    }

    /// A dense row-major `rows × cols` matrix at the start of `data`.
    pub(crate) fn row_major(data: &'a mut [f32], rows: usize, cols: usize) -> candle::Result<Self> {
        Self::new(data, 0, (rows, cols), cols)
    }

    /// A `rows × (items·item_cols)` view made of `items` blocks of `item_cols` columns:
    /// element `(i, b·item_cols + j)` is `data[offset + b·item_stride + i·row_stride + j]`.
    /// Rows `first..first+rows` of the `(items, R, P)` tensor of a unit of batch items seen
    /// as one `rows × (items·P)` matrix: `offset = first·P`, `row_stride = P`,
    /// `item_stride = R·P`.
    ///
    /// # Errors
    /// If the view reaches past the end of `data`.
    pub(crate) fn items(
        data: &'a mut [f32],
        offset: usize,
        rows: usize,
        (items, item_cols): (usize, usize),
        (row_stride, item_stride): (usize, usize),
    ) -> candle::Result<Self> {
        let overflow = || {
            candle::Error::Msg(format!(
                "gemm: an items view of {items} × {item_cols} columns at offset {offset}, item stride {item_stride}, overflows"
            ))
        };
        let cols = items.checked_mul(item_cols).ok_or_else(overflow)?;
        if cols > 0 {
            // The last block holds the view's last element (strides are not negative).
            let last_block = (items - 1)
                .checked_mul(item_stride)
                .and_then(|start| start.checked_add(offset))
                .ok_or_else(overflow)?;
            check_view_bounds(data.len(), last_block, rows, item_cols, row_stride, 1)?;
        }
        Ok(Self { data, offset, rows, cols, row_stride, item_cols: item_cols.max(1), item_stride })
    }

    /// Whether the columns come in more than one block.
    fn is_blocked(&self) -> bool {
        self.item_cols < self.cols
    }

    /// Row `i`'s contiguous pieces: `(first column, index in data, length)`.
    fn row_pieces(&self, i: usize) -> impl Iterator<Item = (usize, usize, usize)> + use<> {
        let (cols, item_cols, row_start) = (self.cols, self.item_cols, i * self.row_stride);
        let (offset, item_stride) = (self.offset, self.item_stride);
        (0..cols).step_by(item_cols).map(move |j| {
            (j, offset + (j / item_cols) * item_stride + row_start, item_cols.min(cols - j))
        })
    }

    fn ptr(&mut self) -> *mut f32 {
        // The offset is in bounds (or the view is empty), checked in `new` / `items`.
        self.data.as_mut_ptr().wrapping_add(self.offset)
    }
}

fn check_view_bounds(
    len: usize,
    offset: usize,
    rows: usize,
    cols: usize,
    row_stride: usize,
    col_stride: usize,
) -> candle::Result<()> {
    if rows == 0 || cols == 0 {
        return Ok(());
    }
    let last = (rows - 1)
        .checked_mul(row_stride)
        .zip((cols - 1).checked_mul(col_stride))
        .and_then(|(down, across)| down.checked_add(across)?.checked_add(offset));
    let view =
        || format!("a {rows}x{cols} view at offset {offset}, strides ({row_stride}, {col_stride})");
    match last {
        Some(last) if last < len => Ok(()),
        Some(last) => candle::bail!("gemm: {} reaches element {last} of a buffer of {len}", view()),
        None => candle::bail!("gemm: {} overflows the address space", view()),
    }
}

/// The left operand of a product: either a plain view, or one packed ahead of time for the
/// native kernel (a weight reused by every batch item is packed once per call).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Lhs<'a> {
    Plain(MatRef<'a>),
    Packed(&'a PackedLhs),
}

/// A left operand prepared for repeated products: packed when the backend is native (for
/// its kernel).
#[derive(Debug)]
pub(crate) enum PreparedLhs<'a> {
    Plain(MatRef<'a>),
    Packed(PackedLhs),
}

impl<'a> PreparedLhs<'a> {
    pub(crate) fn new(backend: GemmBackend, matrix: MatRef<'a>) -> Self {
        match backend.native_kernel() {
            Some(kernel) => PreparedLhs::Packed(PackedLhs::pack(matrix, kernel)),
            None => PreparedLhs::Plain(matrix),
        }
    }

    pub(crate) fn as_lhs(&self) -> Lhs<'_> {
        match self {
            PreparedLhs::Plain(matrix) => Lhs::Plain(*matrix),
            PreparedLhs::Packed(packed) => Lhs::Packed(packed),
        }
    }
}

impl Lhs<'_> {
    fn rows(&self) -> usize {
        match self {
            Lhs::Plain(m) => m.rows,
            Lhs::Packed(p) => p.rows(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            Lhs::Plain(m) => m.cols,
            Lhs::Packed(p) => p.cols(),
        }
    }
}

/// A matrix `S` that is never stored whole: its rows (or, for a source that says so, its
/// columns and whole 16-column panels) are generated on demand (an im2col matrix read
/// straight from the image). The native kernel packs from it directly; the other backends get
/// it materialised.
pub(crate) trait RowSource: Sync {
    fn rows(&self) -> usize;
    fn cols(&self) -> usize;
    /// Writes `S[row, col0..col0 + out.len()]` into `out`.
    fn read_row(&self, row: usize, col0: usize, out: &mut [f32]);

    /// Whether the native kernel should pack this source a panel at a time
    /// ([`RowSource::read_panel`], and [`RowSource::read_column`] for a last partial panel)
    /// rather than a row at a time: a source whose rows gather from far-apart places and whose
    /// columns run through memory in order.
    fn reads_columns(&self) -> bool {
        false
    }

    /// Writes `S[row0 + kk, col]` into `out[kk · stride]` for `kk < rows` (by
    /// [`RowSource::read_row`] unless the source reads its columns directly).
    ///
    /// # Panics
    /// If `out` is shorter than `(rows - 1) · stride + 1`.
    fn read_column(&self, col: usize, row0: usize, rows: usize, out: &mut [f32], stride: usize) {
        if rows == 0 {
            return;
        }
        let out = &mut out[..(rows - 1) * stride + 1];
        let mut value = [0.0f32];
        for (kk, dst) in out.iter_mut().step_by(stride).enumerate() {
            self.read_row(row0 + kk, col, &mut value);
            *dst = value[0];
        }
    }

    /// Writes the 16 columns `col0..col0 + 16` of rows `row0..row0 + rows` into `out` as a
    /// packed panel, `S[row0 + kk, col0 + j]` at `out[kk · 16 + j]` (column by column,
    /// [`read_panel_by_columns`], unless the source does better).
    fn read_panel(&self, col0: usize, row0: usize, rows: usize, out: &mut [f32]) {
        read_panel_by_columns(self, col0, row0, rows, out);
    }
}

/// [`RowSource::read_panel`] by [`RowSource::read_column`], one column at a time.
pub(crate) fn read_panel_by_columns(
    source: &(impl RowSource + ?Sized),
    col0: usize,
    row0: usize,
    rows: usize,
    out: &mut [f32],
) {
    for j in 0..PANEL_COLUMNS {
        source.read_column(col0 + j, row0, rows, &mut out[j..], PANEL_COLUMNS);
    }
}

/// Columns of a packed `B` panel of the native kernels ([`RowSource::read_panel`]).
pub(crate) const PANEL_COLUMNS: usize = 16;

/// The right operand of a product.
#[derive(Clone, Copy)]
pub(crate) enum Rhs<'a> {
    Matrix(MatRef<'a>),
    /// `B = S`.
    Generated(&'a dyn RowSource),
}

impl Rhs<'_> {
    fn rows(&self) -> usize {
        match self {
            Rhs::Matrix(m) => m.rows,
            Rhs::Generated(s) => s.rows(),
        }
    }

    fn cols(&self) -> usize {
        match self {
            Rhs::Matrix(m) => m.cols,
            Rhs::Generated(s) => s.cols(),
        }
    }
}

/// `S` as a dense row-major buffer.
fn materialize(source: &dyn RowSource) -> Vec<f32> {
    let mut out = Vec::new();
    materialize_into(source, &mut out);
    out
}

/// `S` as a dense row-major matrix in `out` (resized to fit).
pub(crate) fn materialize_into(source: &dyn RowSource, out: &mut Vec<f32>) {
    let (rows, cols) = (source.rows(), source.cols());
    out.resize(rows * cols, 0.0);
    if cols > 0 {
        for (row, chunk) in out.chunks_exact_mut(cols).enumerate() {
            source.read_row(row, 0, chunk);
        }
    }
}

/// Whether the product overwrites `C` or is added to it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Accumulate {
    Overwrite,
    Add,
}

/// `C = A·B` or `C += A·B`, single-threaded, with the given backend.
pub(crate) fn gemm(
    backend: GemmBackend,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
    mut dst: MatMut<'_>,
    accumulate: Accumulate,
) -> candle::Result<()> {
    let (m, k, n) = (lhs.rows(), lhs.cols(), rhs.cols());
    if rhs.rows() != k || dst.rows != m || dst.cols != n {
        candle::bail!(
            "gemm: shapes do not chain: A {m}x{k}, B {}x{n}, C {}x{}",
            rhs.rows(),
            dst.rows,
            dst.cols
        );
    }
    if m == 0 || n == 0 {
        return Ok(());
    }
    if k == 0 {
        if accumulate == Accumulate::Overwrite {
            for i in 0..m {
                for (_, start, len) in dst.row_pieces(i) {
                    dst.data[start..start + len].fill(0.0);
                }
            }
        }
        return Ok(());
    }
    if let Some(kernel) = backend.native_kernel() {
        return native::gemm(kernel, lhs, rhs, dst, accumulate);
    }
    let Lhs::Plain(lhs) = lhs else {
        candle::bail!("gemm: a packed left operand needs a native backend, not {backend:?}")
    };
    if dst.is_blocked() {
        // The other backends take plain matrices: the product goes through a dense copy
        // (read only when accumulating, after the copy in).
        let mut dense = Scratch::take(m * n);
        if accumulate == Accumulate::Add {
            for i in 0..m {
                for (j, start, len) in dst.row_pieces(i) {
                    dense[i * n + j..i * n + j + len]
                        .copy_from_slice(&dst.data[start..start + len]);
                }
            }
        }
        gemm(backend, Lhs::Plain(lhs), rhs, MatMut::row_major(&mut dense, m, n)?, accumulate)?;
        for i in 0..m {
            for (j, start, len) in dst.row_pieces(i) {
                dst.data[start..start + len].copy_from_slice(&dense[i * n + j..i * n + j + len]);
            }
        }
        return Ok(());
    }
    let materialized;
    let rhs = match rhs {
        Rhs::Matrix(matrix) => matrix,
        Rhs::Generated(source) => {
            materialized = materialize(source);
            MatRef::row_major(&materialized, source.rows(), source.cols())?
        }
    };
    if backend == GemmBackend::OpenBlas {
        return openblas_gemm(lhs, rhs, dst, accumulate);
    }
    // SAFETY: all three views were bounds-checked at construction (every element they
    // address lies inside their slices), `dst` is borrowed mutably so it cannot alias `lhs`
    // or `rhs`, and the shapes were checked to chain above.
    unsafe {
        gemm::gemm(
            m,
            n,
            k,
            dst.ptr(),
            1,
            dst.row_stride as isize,
            accumulate == Accumulate::Add,
            lhs.ptr(),
            lhs.col_stride as isize,
            lhs.row_stride as isize,
            rhs.ptr(),
            rhs.col_stride as isize,
            rhs.row_stride as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            gemm::Parallelism::None,
        );
    }
    Ok(())
}

#[cfg(feature = "openblas")]
fn openblas_gemm(
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    dst: MatMut<'_>,
    accumulate: Accumulate,
) -> candle::Result<()> {
    openblas::gemm(lhs, rhs, dst, accumulate)
}

#[cfg(not(feature = "openblas"))]
fn openblas_gemm(
    _lhs: MatRef<'_>,
    _rhs: MatRef<'_>,
    _dst: MatMut<'_>,
    _accumulate: Accumulate,
) -> candle::Result<()> {
    candle::bail!("gemm: the OpenBlas backend needs the `openblas` cargo feature")
}

#[cfg(test)]
mod tests {
    use super::{GemmBackend, PANEL_COLUMNS, RowSource};

    /// `S[r][c] = 100·r + c`, 5 × 20, read only by rows: the trait's column and panel reads.
    struct Numbers;

    impl RowSource for Numbers {
        fn rows(&self) -> usize {
            5
        }

        fn cols(&self) -> usize {
            20
        }

        fn read_row(&self, row: usize, col0: usize, out: &mut [f32]) {
            for (j, value) in out.iter_mut().enumerate() {
                *value = (100 * row + col0 + j) as f32;
            }
        }
    }

    #[test]
    fn a_row_source_reads_columns_and_panels_through_its_rows() {
        let mut column = [-1.0f32; 6];
        Numbers.read_column(7, 1, 3, &mut column, 2);
        assert_eq!(column, [107.0, -1.0, 207.0, -1.0, 307.0, -1.0]);
        let mut panel = vec![-1.0f32; 2 * PANEL_COLUMNS + 1];
        Numbers.read_panel(4, 3, 2, &mut panel);
        for (kk, j) in (0..2).flat_map(|kk| (0..PANEL_COLUMNS).map(move |j| (kk, j))) {
            assert_eq!(panel[kk * PANEL_COLUMNS + j], (100 * (3 + kk) + 4 + j) as f32);
        }
        assert_eq!(panel[2 * PANEL_COLUMNS], -1.0);
        assert!(!Numbers.reads_columns());
    }

    /// Every backend is in `ALL` once, and its stored code and its name both lead back to it.
    #[test]
    fn every_backend_round_trips_through_its_code_and_name() {
        for backend in GemmBackend::ALL {
            assert_eq!(GemmBackend::ALL[usize::from(backend.code()) - 1], backend);
            assert_eq!(GemmBackend::from_name(backend.name()), Some(backend));
        }
        assert_eq!(GemmBackend::from_name("avx512"), None);
    }

    /// An items view is checked up to its last block's last row: 3 items of 2 channels × 4
    /// pixels (24 floats) hold channel 1 of each (offset 4, strides 4 and 8), not channels
    /// 1-2 of each.
    #[test]
    fn items_views_are_bounds_checked_to_the_last_block() {
        let mut data = vec![0.0f32; 24];
        assert!(super::MatMut::items(&mut data, 4, 1, (3, 4), (4, 8)).is_ok());
        assert!(super::MatMut::items(&mut data, 4, 2, (3, 4), (4, 8)).is_err());
        assert!(super::MatMut::items(&mut data, 0, 2, (3, 5), (4, 8)).is_err());
    }
}
