//! The native f32 gemm: BLIS-style blocking (KC × NC panels of `B` packed per call, MC × KC
//! blocks of `A` packed per call or ahead of time) around one of two micro-kernels, chosen
//! by the CPU ([`Kernel`]): a 6×16 AVX2/FMA kernel that keeps twelve 8-wide accumulators in
//! registers, and a 12×32 AVX-512 kernel that keeps twenty-four 16-wide ones, two 16-column
//! `B` panels at once (twice the work per instruction, and two FMAs per value read from `A`,
//! so that loads do not hold back two 512-bit FMA units); a lone panel runs 12×16, and the
//! partial A panel of an M that is not a multiple of 12 runs only its own rows
//! (docs/decisions/0007-avx512-kernel-shape.md).
//!
//! Both kernels add each `C` element's products in the same order (`k` ascending inside a
//! KC block, one FMA per product, blocks added to `C` in order), so they give the same bits:
//! the convolutions do not change with the vector width of the machine they run on.
//!
//! Blocking for Zen 3 (32 KiB L1d, 512 KiB L2 per core): a 16-column `B` micro-panel of
//! KC = 256 rows is 16 KiB (lives in L1), an MC × KC = 144 × 256 `A` block is 144 KiB
//! (lives in L2); MC is a multiple of both kernels' MR. The AVX-512 kernel's two panels
//! (32 KiB) and its 12 KiB A panel fit the 48 KiB L1d of the Xeons that have it.

use super::{Accumulate, Lhs, MatMut, MatRef, PANEL_COLUMNS, Rhs};
use crate::scratch::Scratch;
use std::cell::RefCell;

const NR: usize = PANEL_COLUMNS;
const KC: usize = 256;
const MC: usize = 144;
const NC: usize = 4080;
/// The largest MR of the kernels (the partial-tile scratch is sized for it).
const MAX_MR: usize = Kernel::Avx512.mr();

// What the unsafe code below relies on: an MC-row block is whole panels of either kernel
// (the per-call `A` buffer holds MC × KC, and `PackedLhs::block` starts at a panel), and a
// partial tile of either kernel fits the scratch.
const _: () = assert!(
    MC.is_multiple_of(Kernel::Avx2.mr())
        && MC.is_multiple_of(Kernel::Avx512.mr())
        && Kernel::Avx2.mr() <= MAX_MR
        && Kernel::Avx512.mr() <= MAX_MR
);

/// A micro-kernel of the native gemm. Its MR (rows of a packed `A` panel) fixes the packed
/// layout, so a [`PackedLhs`] belongs to the kernel it was packed for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kernel {
    /// 6×16 tiles, AVX2 + FMA.
    Avx2,
    /// 12-row tiles of two 16-column panels (12×32; a lone panel 12×16), AVX-512F.
    Avx512,
}

impl Kernel {
    /// Rows of `C` (and of a packed `A` panel) per micro-tile.
    pub(crate) const fn mr(self) -> usize {
        match self {
            Kernel::Avx2 => 6,
            Kernel::Avx512 => 12,
        }
    }

    /// Whether the running CPU can execute this kernel.
    pub(crate) fn is_supported(self) -> bool {
        #[cfg(target_arch = "x86_64")]
        {
            let avx2 = std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma");
            match self {
                Kernel::Avx2 => avx2,
                Kernel::Avx512 => avx2 && std::arch::is_x86_feature_detected!("avx512f"),
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        {
            false
        }
    }
}

/// A whole left operand packed once into the layout a micro-kernel reads: for each KC
/// block of columns, `ceil(rows / MR)` panels of `kc × MR` values (rows padded with zeros),
/// MR being its kernel's.
/// The values live in a [`Scratch`] buffer (no zero fill; every value is written).
#[derive(Debug)]
pub(crate) struct PackedLhs {
    data: Scratch,
    rows: usize,
    cols: usize,
    kernel: Kernel,
}

/// One row panel's `kc × MR` piece of one KC block of one member, as
/// [`PackedLhs::pack_by_panels`] hands it out.
struct Piece<'a> {
    member: usize,
    /// The KC block's first column.
    first_column: usize,
    values: &'a mut [f32],
}

impl PackedLhs {
    /// `matrix` packed for `kernel`: each KC block's MC-row pieces in parallel (a
    /// convolution's weights are packed once per call, megabytes at the late stages, while
    /// the gemms that use them wait).
    pub(crate) fn pack(matrix: MatRef<'_>, kernel: Kernel) -> Self {
        use rayon::prelude::*;
        let mr = kernel.mr();
        let rows_padded = matrix.rows.div_ceil(mr) * mr;
        let mut data = Scratch::take(rows_padded * matrix.cols);
        // (first column, columns, first row, rows, the piece's packed values).
        let mut pieces = Vec::new();
        let mut rest: &mut [f32] = &mut data;
        for pc in (0..matrix.cols).step_by(KC) {
            let kc = KC.min(matrix.cols - pc);
            for ic in (0..matrix.rows).step_by(MC) {
                let mc = MC.min(matrix.rows - ic);
                let (piece, tail) = rest.split_at_mut(mc.div_ceil(mr) * mr * kc);
                rest = tail;
                pieces.push((pc, kc, ic, mc, piece));
            }
        }
        // Small weights on the calling thread: a rayon task costs more than their copy.
        let pack = |(pc, kc, ic, mc, piece): (usize, usize, usize, usize, &mut [f32])| {
            pack_lhs_block(kernel, matrix, ic, mc, pc, kc, piece)
        };
        if rows_padded * matrix.cols >= 64 * 1024 {
            pieces.into_par_iter().for_each(pack);
        } else {
            pieces.into_iter().for_each(pack);
        }
        Self { data, rows: matrix.rows, cols: matrix.cols, kernel }
    }

    /// The `count` matrices whose elements interleave in `data` with unit stride — member `t`
    /// is `A_t[i, j] = data[t + i·row_stride + j·col_stride]`, `rows × cols` — packed in one
    /// pass over `data`. A convolution weight `(O, C, KH, KW)` holds its `KH·KW` taps' `O × C`
    /// matrices this way (row stride `C·KH·KW`, column stride `KH·KW`) and their transposes
    /// (the strides swapped); packing each tap on its own would read the whole weight once
    /// per tap. Parallel over row panels; every value written once.
    ///
    /// # Panics
    /// If the members reach past the end of `data` (the callers pass a whole weight).
    pub(crate) fn pack_interleaved(
        data: &[f32],
        count: usize,
        (rows, cols): (usize, usize),
        (row_stride, col_stride): (usize, usize),
        kernel: Kernel,
    ) -> Vec<Self> {
        if rows > 0 && cols > 0 {
            let last = count - 1 + (rows - 1) * row_stride + (cols - 1) * col_stride;
            assert!(last < data.len(), "pack_interleaved: element {last} of {}", data.len());
        }
        let mr = kernel.mr();
        Self::pack_by_panels(count, (rows, cols), kernel, |first_row, panel_rows, pieces| {
            // Member by member, each piece written in order; the reads stay within the panel's
            // mr rows of `data` (in cache after the first member). (All members of an element
            // at once — `count` write streams — was slower for a 3×3 weight.)
            for Piece { member, first_column, values } in pieces {
                for (kk, dst) in values.chunks_exact_mut(mr).enumerate() {
                    let start = member + first_row * row_stride + (first_column + kk) * col_stride;
                    for (ii, value) in dst[..panel_rows].iter_mut().enumerate() {
                        *value = data[start + ii * row_stride];
                    }
                    dst[panel_rows..].fill(0.0);
                }
            }
        })
    }

    /// `N` matrices of `rows × cols`, packed for `kernel`, whose elements `(i, j)` are made
    /// together: `element(i, j)[t]` is member `t`'s `A_t[i, j]` (a 3×3 filter's 16 Winograd
    /// transforms). Parallel over row panels; each element is made once, its values written
    /// into their members in order (column kk's MR rows of a panel, then column kk + 1),
    /// every value written once.
    pub(crate) fn pack_members<const N: usize>(
        (rows, cols): (usize, usize),
        kernel: Kernel,
        element: impl Fn(usize, usize) -> [f32; N] + Sync,
    ) -> Vec<Self> {
        let mr = kernel.mr();
        Self::pack_by_panels(N, (rows, cols), kernel, |first_row, panel_rows, mut pieces| {
            // Member-major: block b's piece of each member is every `blocks`-th from b.
            let blocks = pieces.len() / N.max(1);
            for b in 0..blocks {
                let pc = pieces[b].first_column;
                let kc = pieces[b].values.len() / mr;
                let mut block: Vec<&mut [f32]> =
                    pieces.iter_mut().skip(b).step_by(blocks).map(|p| &mut *p.values).collect();
                for kk in 0..kc {
                    for ii in 0..panel_rows {
                        let values = element(first_row + ii, pc + kk);
                        for (piece, value) in block.iter_mut().zip(values) {
                            piece[kk * mr + ii] = value;
                        }
                    }
                    for piece in &mut block {
                        piece[kk * mr + panel_rows..(kk + 1) * mr].fill(0.0);
                    }
                }
            }
        })
    }

    /// `count` packed matrices of `rows × cols` for `kernel`, their row panels written in
    /// parallel: `fill(first_row, panel_rows, pieces)` gets one panel's `kc × MR` piece of
    /// every KC block of every member, member-major, and writes every value of each (zeros in
    /// rows past `panel_rows`).
    fn pack_by_panels(
        count: usize,
        (rows, cols): (usize, usize),
        kernel: Kernel,
        fill: impl Fn(usize, usize, Vec<Piece<'_>>) + Sync,
    ) -> Vec<Self> {
        use rayon::prelude::*;
        let mr = kernel.mr();
        let rows_padded = rows.div_ceil(mr) * mr;
        let panels = rows_padded / mr;
        let mut members: Vec<Scratch> =
            (0..count).map(|_| Scratch::take(rows_padded * cols)).collect();
        let blocks: Vec<(usize, usize)> =
            (0..cols).step_by(KC).map(|pc| (pc, KC.min(cols - pc))).collect();
        let mut pieces: Vec<Vec<&mut [f32]>> = (0..panels).map(|_| Vec::new()).collect();
        for member in &mut members {
            let mut rest: &mut [f32] = member;
            for &(_, kc) in &blocks {
                let (block, tail) = rest.split_at_mut(rows_padded * kc);
                rest = tail;
                for (panel, piece) in block.chunks_exact_mut(kc * mr).enumerate() {
                    pieces[panel].push(piece);
                }
            }
        }
        pieces.into_par_iter().enumerate().for_each(|(panel, mut pieces)| {
            let first_row = panel * mr;
            let panel_rows = mr.min(rows - first_row);
            let pieces = pieces
                .iter_mut()
                .enumerate()
                .map(|(index, values)| Piece {
                    member: index / blocks.len(),
                    first_column: blocks[index % blocks.len()].0,
                    values,
                })
                .collect();
            fill(first_row, panel_rows, pieces);
        });
        members.into_iter().map(|data| Self { data, rows, cols, kernel }).collect()
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// The packed values (tests compare packings).
    #[cfg(test)]
    pub(crate) fn values(&self) -> &[f32] {
        &self.data
    }

    pub(crate) fn cols(&self) -> usize {
        self.cols
    }

    /// The packed panels of rows `ic..` for the KC block starting at column `pc`.
    fn block(&self, pc: usize, kc: usize, ic: usize) -> &[f32] {
        let mr = self.kernel.mr();
        let rows_padded = self.rows.div_ceil(mr) * mr;
        let start = pc * rows_padded + ic * kc;
        &self.data[start..pc * rows_padded + rows_padded * kc]
    }
}

/// Packs rows `row0..row0+rows`, columns `col0..col0+kc` of `a` into `kernel`'s MR-row
/// panels.
fn pack_lhs_block(
    kernel: Kernel,
    a: MatRef<'_>,
    row0: usize,
    rows: usize,
    col0: usize,
    kc: usize,
    out: &mut [f32],
) {
    const AVX2: usize = Kernel::Avx2.mr();
    const AVX512: usize = Kernel::Avx512.mr();
    match kernel {
        Kernel::Avx2 => pack_lhs_panels::<AVX2>(a, row0, rows, col0, kc, out),
        Kernel::Avx512 => pack_lhs_panels::<AVX512>(a, row0, rows, col0, kc, out),
    }
}

/// [`pack_lhs_block`] for a kernel's `MR`.
fn pack_lhs_panels<const MR: usize>(
    a: MatRef<'_>,
    row0: usize,
    rows: usize,
    col0: usize,
    kc: usize,
    out: &mut [f32],
) {
    let panels = rows.div_ceil(MR);
    for panel in 0..panels {
        let out_panel = &mut out[panel * kc * MR..(panel + 1) * kc * MR];
        let first_row = row0 + panel * MR;
        let panel_rows = MR.min(row0 + rows - first_row);
        if panel_rows < MR {
            out_panel.fill(0.0);
        }
        if a.row_stride == 1 && panel_rows == MR {
            // Column-major source (a transposed row-major matrix): MR contiguous values per column.
            for kk in 0..kc {
                let start = a.offset + first_row + (col0 + kk) * a.col_stride;
                out_panel[kk * MR..kk * MR + MR].copy_from_slice(&a.data[start..start + MR]);
            }
        } else if a.col_stride == 1 && panel_rows == MR {
            // Row-major source: read the MR rows side by side, write the panel in order
            // (one contiguous store stream instead of MR strided ones).
            let rows: [&[f32]; MR] = std::array::from_fn(|ii| {
                let start = a.offset + (first_row + ii) * a.row_stride + col0;
                &a.data[start..start + kc]
            });
            for (kk, dst) in out_panel.chunks_exact_mut(MR).enumerate() {
                for (value, row) in dst.iter_mut().zip(&rows) {
                    *value = row[kk];
                }
            }
        } else {
            for ii in 0..panel_rows {
                let row_start = a.offset + (first_row + ii) * a.row_stride + col0 * a.col_stride;
                if a.col_stride == 1 {
                    let row = &a.data[row_start..row_start + kc];
                    for (kk, &value) in row.iter().enumerate() {
                        out_panel[kk * MR + ii] = value;
                    }
                } else {
                    for kk in 0..kc {
                        out_panel[kk * MR + ii] = a.data[row_start + kk * a.col_stride];
                    }
                }
            }
        }
    }
}

/// Packs rows `row0..row0+kc`, columns `col0..col0+cols` of `b` into NR-column panels;
/// `row_buffer` holds one generated row (of a source read by rows).
fn pack_rhs_block(
    b: Rhs<'_>,
    row0: usize,
    kc: usize,
    col0: usize,
    cols: usize,
    row_buffer: &mut [f32],
    out: &mut [f32],
) {
    let panels = cols.div_ceil(NR);
    let full_panels = cols / NR;
    if cols > full_panels * NR {
        out[full_panels * kc * NR..panels * kc * NR].fill(0.0);
    }
    match b {
        Rhs::Matrix(matrix) => pack_rhs_matrix(matrix, row0, kc, col0, cols, out),
        Rhs::Generated(source) if source.reads_columns() => {
            // Whole panels at once; the last partial panel's columns each straight into
            // their place (every NR-th value).
            for panel in 0..full_panels {
                let dst = &mut out[panel * kc * NR..(panel + 1) * kc * NR];
                source.read_panel(col0 + panel * NR, row0, kc, dst);
            }
            for jj in full_panels * NR..cols {
                let start = (jj / NR) * kc * NR + jj % NR;
                source.read_column(col0 + jj, row0, kc, &mut out[start..], NR);
            }
        }
        Rhs::Generated(source) => {
            // Generate each row once (into L1) and deal its 16-float pieces to the panels.
            let row = &mut row_buffer[..cols];
            for kk in 0..kc {
                source.read_row(row0 + kk, col0, row);
                deal_row_to_panels(row, kk, kc, out);
            }
        }
    }
}

/// Copies row `kk` of a B block into its place in each NR-column panel (fixed-size copies
/// for whole panels, so they compile to two vector moves rather than a memcpy call).
#[inline]
fn deal_row_to_panels(row: &[f32], kk: usize, kc: usize, out: &mut [f32]) {
    let (out_rows, _) = out.as_chunks_mut::<NR>();
    let (pieces, tail) = row.as_chunks::<NR>();
    for (panel, piece) in pieces.iter().enumerate() {
        out_rows[panel * kc + kk] = *piece;
    }
    if !tail.is_empty() {
        out_rows[pieces.len() * kc + kk][..tail.len()].copy_from_slice(tail);
    }
}

/// Reads 8 rows of 8 floats (`src + i·src_stride`) and writes them transposed
/// (`dst + j·dst_stride` holds column j).
///
/// # Safety
/// `src` must be readable and `dst` writable at the 8×8 addressed floats; AVX required.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx")]
unsafe fn transpose_8x8(src: *const f32, src_stride: usize, dst: *mut f32, dst_stride: usize) {
    use std::arch::x86_64::*;
    // SAFETY: the caller guarantees the 64 addressed source and destination floats.
    unsafe {
        let r0 = _mm256_loadu_ps(src);
        let r1 = _mm256_loadu_ps(src.add(src_stride));
        let r2 = _mm256_loadu_ps(src.add(2 * src_stride));
        let r3 = _mm256_loadu_ps(src.add(3 * src_stride));
        let r4 = _mm256_loadu_ps(src.add(4 * src_stride));
        let r5 = _mm256_loadu_ps(src.add(5 * src_stride));
        let r6 = _mm256_loadu_ps(src.add(6 * src_stride));
        let r7 = _mm256_loadu_ps(src.add(7 * src_stride));
        let t0 = _mm256_unpacklo_ps(r0, r1);
        let t1 = _mm256_unpackhi_ps(r0, r1);
        let t2 = _mm256_unpacklo_ps(r2, r3);
        let t3 = _mm256_unpackhi_ps(r2, r3);
        let t4 = _mm256_unpacklo_ps(r4, r5);
        let t5 = _mm256_unpackhi_ps(r4, r5);
        let t6 = _mm256_unpacklo_ps(r6, r7);
        let t7 = _mm256_unpackhi_ps(r6, r7);
        let u0 = _mm256_shuffle_ps::<0x44>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0xEE>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0x44>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0xEE>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0x44>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0xEE>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0x44>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0xEE>(t5, t7);
        _mm256_storeu_ps(dst, _mm256_permute2f128_ps::<0x20>(u0, u4));
        _mm256_storeu_ps(dst.add(dst_stride), _mm256_permute2f128_ps::<0x20>(u1, u5));
        _mm256_storeu_ps(dst.add(2 * dst_stride), _mm256_permute2f128_ps::<0x20>(u2, u6));
        _mm256_storeu_ps(dst.add(3 * dst_stride), _mm256_permute2f128_ps::<0x20>(u3, u7));
        _mm256_storeu_ps(dst.add(4 * dst_stride), _mm256_permute2f128_ps::<0x31>(u0, u4));
        _mm256_storeu_ps(dst.add(5 * dst_stride), _mm256_permute2f128_ps::<0x31>(u1, u5));
        _mm256_storeu_ps(dst.add(6 * dst_stride), _mm256_permute2f128_ps::<0x31>(u2, u6));
        _mm256_storeu_ps(dst.add(7 * dst_stride), _mm256_permute2f128_ps::<0x31>(u3, u7));
    }
}

/// [`pack_rhs_block`] for a stored matrix.
fn pack_rhs_matrix(
    b: MatRef<'_>,
    row0: usize,
    kc: usize,
    col0: usize,
    cols: usize,
    out: &mut [f32],
) {
    let panels = cols.div_ceil(NR);
    if b.col_stride == 1 {
        // Row-major source: read each source row once, front to back, and deal its
        // 16-float pieces out to the panels.
        for kk in 0..kc {
            let start = b.offset + (row0 + kk) * b.row_stride + col0;
            deal_row_to_panels(&b.data[start..start + cols], kk, kc, out);
        }
    } else if b.row_stride == 1 {
        // Column-major source: each column is contiguous along k.
        for panel in 0..panels {
            let out_panel = &mut out[panel * kc * NR..(panel + 1) * kc * NR];
            let first_col = col0 + panel * NR;
            let panel_cols = NR.min(col0 + cols - first_col);
            let mut done_cols = 0;
            let mut done_rows = 0;
            #[cfg(target_arch = "x86_64")]
            if kc >= 8 {
                // 8×8 blocks through an AVX transpose; the rest below, element by element.
                done_rows = kc / 8 * 8;
                done_cols = panel_cols / 8 * 8;
                for j8 in (0..done_cols).step_by(8) {
                    let start = b.offset + row0 + (first_col + j8) * b.col_stride;
                    let last = start + 7 * b.col_stride + done_rows;
                    assert!(last <= b.data.len(), "column-major pack reads inside the view");
                    for k8 in (0..done_rows).step_by(8) {
                        // SAFETY: the 8 columns read here span `start..last`, asserted to lie
                        // in `b.data`; the 8 writes of 8 floats hit rows k8..k8+8 (< kc),
                        // lanes j8..j8+8 (< NR) of this panel. The CPU has AVX (checked by
                        // the caller of `gemm`).
                        unsafe {
                            transpose_8x8(
                                b.data.as_ptr().add(start + k8),
                                b.col_stride,
                                out_panel.as_mut_ptr().add(k8 * NR + j8),
                                NR,
                            );
                        }
                    }
                }
            }
            for jj in 0..panel_cols {
                let start = b.offset + row0 + (first_col + jj) * b.col_stride;
                let column = &b.data[start..start + kc];
                let first_row = if jj < done_cols { done_rows } else { 0 };
                for (kk, &value) in column.iter().enumerate().skip(first_row) {
                    out_panel[kk * NR + jj] = value;
                }
            }
        }
    } else {
        for panel in 0..panels {
            let out_panel = &mut out[panel * kc * NR..(panel + 1) * kc * NR];
            let first_col = col0 + panel * NR;
            let panel_cols = NR.min(col0 + cols - first_col);
            for kk in 0..kc {
                let row_start = b.offset + (row0 + kk) * b.row_stride + first_col * b.col_stride;
                for jj in 0..panel_cols {
                    out_panel[kk * NR + jj] = b.data[row_start + jj * b.col_stride];
                }
            }
        }
    }
}

/// A `Vec<f32>` handed out as 64-byte-aligned slices, so each 16-float packed row is one
/// cache line.
#[derive(Default)]
struct AlignedBuffer {
    storage: Vec<f32>,
}

impl AlignedBuffer {
    fn slice_mut(&mut self, len: usize) -> &mut [f32] {
        let needed = len + 16;
        if self.storage.len() < needed {
            self.storage = vec![0.0; needed];
        }
        let shift = self.storage.as_ptr().align_offset(64).min(16);
        &mut self.storage[shift..shift + len]
    }
}

/// Per-thread buffers: packed `A` block, packed `B` block, one generated row.
#[derive(Default)]
struct PackBuffers {
    lhs: AlignedBuffer,
    rhs: AlignedBuffer,
    row: Vec<f32>,
}

thread_local! {
    /// Per-thread packing buffers (the gemm is single-threaded and never re-entered on a
    /// thread).
    static PACK_BUFFERS: RefCell<PackBuffers> = RefCell::default();
}

/// `C (+)= A·B` with `kernel`.
///
/// # Errors
/// If the CPU cannot run `kernel`, or `lhs` was packed for another kernel.
pub(super) fn gemm(
    kernel: Kernel,
    lhs: Lhs<'_>,
    rhs: Rhs<'_>,
    mut dst: MatMut<'_>,
    accumulate: Accumulate,
) -> candle::Result<()> {
    if !kernel.is_supported() {
        candle::bail!("gemm: this CPU cannot run the native {kernel:?} kernel");
    }
    if let Lhs::Packed(packed) = lhs
        && packed.kernel != kernel
    {
        candle::bail!("gemm: A was packed for the {:?} kernel, not {kernel:?}", packed.kernel);
    }
    let (m, k, n) = (dst.rows, rhs.rows(), dst.cols);
    let layout = DstLayout {
        ptr: dst.ptr(),
        row_stride: dst.row_stride,
        item_cols: dst.item_cols,
        item_stride: dst.item_stride,
    };
    PACK_BUFFERS.with(|buffers| {
        let mut buffers = buffers.borrow_mut();
        let PackBuffers { lhs: lhs_buffer, rhs: rhs_buffer, row: row_buffer } = &mut *buffers;
        let row_len = NC.min(n);
        if row_buffer.len() < row_len {
            row_buffer.resize(row_len, 0.0);
        }
        let rhs_pack = rhs_buffer.slice_mut(KC * NC.min(n.div_ceil(NR) * NR));
        let lhs_pack = lhs_buffer.slice_mut(match lhs {
            Lhs::Plain(_) => MC * KC,
            Lhs::Packed(_) => 0,
        });
        for jc in (0..n).step_by(NC) {
            let nc = NC.min(n - jc);
            for pc in (0..k).step_by(KC) {
                let kc = KC.min(k - pc);
                pack_rhs_block(rhs, pc, kc, jc, nc, row_buffer, rhs_pack);
                let add = accumulate == Accumulate::Add || pc > 0;
                for ic in (0..m).step_by(MC) {
                    let mc = MC.min(m - ic);
                    let lhs_block: &[f32] = match lhs {
                        Lhs::Plain(a) => {
                            pack_lhs_block(kernel, a, ic, mc, pc, kc, lhs_pack);
                            lhs_pack
                        }
                        Lhs::Packed(packed) => packed.block(pc, kc, ic),
                    };
                    // SAFETY: `layout` addresses rows `0..m` and columns `0..n` of `dst`
                    // (bounds-checked in `MatMut::new` / `MatMut::items`); this block covers
                    // rows `ic..ic+mc` and columns `jc..jc+nc`, inside it. The packed blocks
                    // hold ceil(mc/MR)·MR·kc and ceil(nc/NR)·NR·kc values, which is what the
                    // macro-kernel reads; the CPU runs `kernel` (checked above).
                    unsafe {
                        macro_kernel(
                            kernel,
                            (mc, nc, kc),
                            lhs_block,
                            rhs_pack,
                            layout,
                            (ic, jc),
                            add,
                        );
                    }
                }
            }
        }
    });
    Ok(())
}

/// Where `C` lies: element `(i, j)` at `ptr + i·row_stride + (j / item_cols)·item_stride +
/// j % item_cols` (a [`MatMut`], blocked by items or not).
#[derive(Clone, Copy)]
struct DstLayout {
    ptr: *mut f32,
    row_stride: usize,
    item_cols: usize,
    item_stride: usize,
}

impl DstLayout {
    /// The address of `C[i, j]` (computed, not dereferenced).
    fn at(self, i: usize, j: usize) -> *mut f32 {
        let column = (j / self.item_cols) * self.item_stride + j % self.item_cols;
        self.ptr.wrapping_add(i * self.row_stride + column)
    }

    /// Whether columns `j..j+len` of a row are contiguous (in one block).
    fn contiguous(self, j: usize, len: usize) -> bool {
        j % self.item_cols + len <= self.item_cols
    }
}

/// Multiplies a packed `mc × kc` block of A by a packed `kc × nc` block of B into the
/// `mc × nc` block of `C` at `(row0, col0)`.
///
/// # Safety
/// `dst` must be valid for writes at `(row0 + i, col0 + j)` for `i < mc`, `j < nc`; `lhs`
/// must hold `ceil(mc/MR)·MR·kc` values packed for `kernel` and `rhs` `ceil(nc/NR)·NR·kc`;
/// the CPU must support `kernel`.
unsafe fn macro_kernel(
    kernel: Kernel,
    (mc, nc, kc): (usize, usize, usize),
    lhs: &[f32],
    rhs: &[f32],
    dst: DstLayout,
    (row0, col0): (usize, usize),
    add: bool,
) {
    let full_mr = kernel.mr();
    debug_assert!(lhs.len() >= mc.div_ceil(full_mr) * full_mr * kc);
    debug_assert!(rhs.len() >= nc.div_ceil(NR) * NR * kc);
    let mut jr = 0;
    while jr < nc {
        // The AVX-512 kernel takes two whole B panels at once (a 12 × 32 tile).
        let pair = kernel == Kernel::Avx512 && nc - jr >= 2 * NR;
        let col = col0 + jr;
        let whole_pair = pair && dst.contiguous(col, NR) && dst.contiguous(col + NR, NR);
        for ir in (0..mc).step_by(full_mr) {
            let mr = full_mr.min(mc - ir);
            let (row, lhs_panel) = (row0 + ir, lhs[ir * kc..].as_ptr());
            // SAFETY: the caller guarantees the extents of `dst`, `lhs` and `rhs`; a pair
            // reads kc·MR values of the A panel and kc·NR of each of the B panels at `jr`
            // and `jr + NR` (both whole, inside `rhs`), and writes `mr` rows (the panel's
            // rows inside `C`) of NR columns at `col` and at `col + NR`: straight when both
            // halves are contiguous, else into the 12 × 32 scratch tile (row stride 2·NR,
            // `mr <= MAX_MR` rows) and from there through `scatter_tile` (the same extents).
            unsafe {
                let rhs_panels = || (rhs[jr * kc..].as_ptr(), rhs[(jr + NR) * kc..].as_ptr());
                if whole_pair {
                    let tiles = (dst.at(row, col), dst.at(row, col + NR));
                    pair_kernel(kc, lhs_panel, mr, rhs_panels(), tiles, dst.row_stride, add);
                } else if pair {
                    // 32 columns that cross an item's end (`MatMut::items` on planes of
                    // fewer than 256 pixels): the pair's tile through scratch, then scattered
                    // piece by piece.
                    let mut scratch = [0.0f32; MAX_MR * 2 * NR];
                    let s = scratch.as_mut_ptr();
                    pair_kernel(kc, lhs_panel, mr, rhs_panels(), (s, s.add(NR)), 2 * NR, false);
                    scatter_tile(&scratch, 2 * NR, dst, (row, col, mr, 2 * NR), add);
                } else {
                    let nr = NR.min(nc - jr);
                    let rhs_panel = rhs[jr * kc..].as_ptr();
                    single_tile(kernel, kc, lhs_panel, rhs_panel, dst, (row, col, mr, nr), add);
                }
            }
        }
        jr += if pair { 2 * NR } else { NR };
    }
}

/// One `mr × nr` tile of `C` at `(row, col)` from one A panel and one B panel: straight
/// when it is whole rows of MR and NR contiguous columns, else through `scratch` (which
/// holds MAX_MR × NR) and piece by piece of contiguous columns.
///
/// # Safety
/// `a` readable for `kc · MR` floats, `b` for `kc · NR`; `dst` writable (and readable when
/// `add`) at `(row + i, col + j)` for `i < mr`, `j < nr`; the CPU runs `kernel`.
unsafe fn single_tile(
    kernel: Kernel,
    kc: usize,
    lhs_panel: *const f32,
    rhs_panel: *const f32,
    dst: DstLayout,
    (row, col, mr, nr): (usize, usize, usize, usize),
    add: bool,
) {
    // SAFETY: the caller's guarantees; the micro-kernel writes a whole MR × NR tile only
    // when the tile is one, else into `scratch`.
    unsafe {
        if mr == kernel.mr() && nr == NR && dst.contiguous(col, NR) {
            let tile = dst.at(row, col);
            micro_kernel(kernel, kc, lhs_panel, rhs_panel, tile, dst.row_stride, add);
            return;
        }
        let mut scratch = [0.0f32; MAX_MR * NR];
        let scratch_ptr = scratch.as_mut_ptr();
        micro_kernel(kernel, kc, lhs_panel, rhs_panel, scratch_ptr, NR, false);
        scatter_tile(&scratch, NR, dst, (row, col, mr, nr), add);
    }
}

/// Stores an `mr × nr` tile computed into `scratch` (row stride `stride`) at `(row, col)` of
/// `C`, piece by piece of columns contiguous in `C` (one item's, or all).
///
/// # Safety
/// `dst` writable (and readable when `add`) at `(row + i, col + j)` for `i < mr`, `j < nr`;
/// `scratch` holds `mr` rows of `stride >= nr`.
unsafe fn scatter_tile(
    scratch: &[f32],
    stride: usize,
    dst: DstLayout,
    (row, col, mr, nr): (usize, usize, usize, usize),
    add: bool,
) {
    let mut j = 0;
    while j < nr {
        let len = (dst.item_cols - (col + j) % dst.item_cols).min(nr - j);
        let piece = dst.at(row, col + j);
        for i in 0..mr {
            let sums = &scratch[i * stride + j..i * stride + j + len];
            // SAFETY: the caller's guarantees; `piece` + `i·row_stride + t` is `C[row + i,
            // col + j + t]` with `j + t < nr`, inside one item's contiguous columns.
            unsafe {
                let out = piece.add(i * dst.row_stride);
                // As the kernels store: the sum itself, or `C + sum` (so that a -0.0 sum
                // stays -0.0 as it does in a full tile). A 2×2 plane's four values as one
                // fixed-size move (the general loop compiles to a `memcpy` call).
                if let (false, Ok(four)) = (add, <[f32; 4]>::try_from(sums)) {
                    out.cast::<[f32; 4]>().write_unaligned(four);
                    continue;
                }
                for (t, &sum) in sums.iter().enumerate() {
                    let out = out.add(t);
                    *out = if add { *out + sum } else { sum };
                }
            }
        }
        j += len;
    }
}

/// The AVX-512 kernel on two whole panels side by side, the first `rows` (1..=12) rows of
/// the A panel: `C[.., 0..16]` from B panel `rhs.0` at `tiles.0`, `C[.., 16..32]` from
/// `rhs.1` at `tiles.1`. A partial A panel (the last of an M that is not a multiple of 12:
/// every channel count of xresnet) runs only its rows, straight into `C`.
///
/// # Safety
/// As [`kernel_rows_x32`]'s, for `ROWS = rows`; `1 <= rows <= 12`.
unsafe fn pair_kernel(
    kc: usize,
    a: *const f32,
    rows: usize,
    rhs: (*const f32, *const f32),
    tiles: (*mut f32, *mut f32),
    rs_c: usize,
    add: bool,
) {
    #[cfg(target_arch = "x86_64")]
    macro_rules! dispatch {
        ($($rows:literal)*) => {
            match rows {
                // SAFETY: the caller's guarantees are the kernel's contract.
                $($rows => unsafe { kernel_rows_x32::<$rows>(kc, a, rhs, tiles, rs_c, add) },)*
                _ => unreachable!("pair_kernel: {rows} rows of a 12-row panel"),
            }
        };
    }
    #[cfg(target_arch = "x86_64")]
    dispatch!(12 11 10 9 8 7 6 5 4 3 2 1);
    #[cfg(not(target_arch = "x86_64"))]
    // SAFETY: the caller's guarantees are the kernel's contract.
    unsafe {
        let mut scratch = [0.0f32; 12 * NR];
        for (b, c) in [(rhs.0, tiles.0), (rhs.1, tiles.1)] {
            portable_kernel::<12>(kc, a, b, scratch.as_mut_ptr(), NR, false);
            for i in 0..rows {
                for j in 0..NR {
                    let out = c.add(i * rs_c + j);
                    *out = if add { *out + scratch[i * NR + j] } else { scratch[i * NR + j] };
                }
            }
        }
    }
}

/// `kernel`'s micro-kernel on one full `MR × NR` tile: `C (+)= A_panel · B_panel`.
///
/// # Safety
/// As the kernel's own: `a` readable for `kc · MR` floats, `b` for `kc · NR`, `c` writable
/// (and readable when `add`) at `i * rs_c + j` for `i < MR`, `j < NR`; the CPU runs `kernel`.
unsafe fn micro_kernel(
    kernel: Kernel,
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rs_c: usize,
    add: bool,
) {
    // SAFETY: the caller's guarantees are the kernels' contracts.
    unsafe {
        #[cfg(target_arch = "x86_64")]
        match kernel {
            Kernel::Avx2 => kernel_6x16(kc, a, b, c, rs_c, add),
            Kernel::Avx512 => kernel_12x16(kc, a, b, c, rs_c, add),
        };
        #[cfg(not(target_arch = "x86_64"))]
        match kernel {
            Kernel::Avx2 => portable_kernel::<6>(kc, a, b, c, rs_c, add),
            Kernel::Avx512 => portable_kernel::<12>(kc, a, b, c, rs_c, add),
        };
    }
}

/// The 6×16 micro-kernel: `C[0..6, 0..16] (+)= A_panel · B_panel`.
///
/// # Safety
/// `a` must be readable for `kc * 6` floats, `b` for `kc * NR`, and `c` writable (and
/// readable when `add`) at `i * rs_c + j` for `i < 6`, `j < 16`. The CPU must support
/// AVX2 and FMA.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2,fma")]
unsafe fn kernel_6x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rs_c: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    // SAFETY: every pointer offset below stays within the extents the caller guarantees
    // (prefetches of addresses just past a row are hints and never fault).
    unsafe {
        // Start fetching the C tile now: it is usually outside L2 (a large output or
        // gradient), and the loop below hides the latency.
        for i in 0..6 {
            let row = c.wrapping_add(i * rs_c) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(63));
        }
        let mut c00 = _mm256_setzero_ps();
        let mut c01 = _mm256_setzero_ps();
        let mut c10 = _mm256_setzero_ps();
        let mut c11 = _mm256_setzero_ps();
        let mut c20 = _mm256_setzero_ps();
        let mut c21 = _mm256_setzero_ps();
        let mut c30 = _mm256_setzero_ps();
        let mut c31 = _mm256_setzero_ps();
        let mut c40 = _mm256_setzero_ps();
        let mut c41 = _mm256_setzero_ps();
        let mut c50 = _mm256_setzero_ps();
        let mut c51 = _mm256_setzero_ps();
        let mut a = a;
        let mut b = b;
        for _ in 0..kc {
            let b0 = _mm256_loadu_ps(b);
            let b1 = _mm256_loadu_ps(b.add(8));
            let a0 = _mm256_broadcast_ss(&*a);
            c00 = _mm256_fmadd_ps(a0, b0, c00);
            c01 = _mm256_fmadd_ps(a0, b1, c01);
            let a1 = _mm256_broadcast_ss(&*a.add(1));
            c10 = _mm256_fmadd_ps(a1, b0, c10);
            c11 = _mm256_fmadd_ps(a1, b1, c11);
            let a2 = _mm256_broadcast_ss(&*a.add(2));
            c20 = _mm256_fmadd_ps(a2, b0, c20);
            c21 = _mm256_fmadd_ps(a2, b1, c21);
            let a3 = _mm256_broadcast_ss(&*a.add(3));
            c30 = _mm256_fmadd_ps(a3, b0, c30);
            c31 = _mm256_fmadd_ps(a3, b1, c31);
            let a4 = _mm256_broadcast_ss(&*a.add(4));
            c40 = _mm256_fmadd_ps(a4, b0, c40);
            c41 = _mm256_fmadd_ps(a4, b1, c41);
            let a5 = _mm256_broadcast_ss(&*a.add(5));
            c50 = _mm256_fmadd_ps(a5, b0, c50);
            c51 = _mm256_fmadd_ps(a5, b1, c51);
            a = a.add(6);
            b = b.add(NR);
        }
        let rows = [(c00, c01), (c10, c11), (c20, c21), (c30, c31), (c40, c41), (c50, c51)];
        for (i, (left, right)) in rows.into_iter().enumerate() {
            let row = c.add(i * rs_c);
            if add {
                _mm256_storeu_ps(row, _mm256_add_ps(_mm256_loadu_ps(row), left));
                _mm256_storeu_ps(row.add(8), _mm256_add_ps(_mm256_loadu_ps(row.add(8)), right));
            } else {
                _mm256_storeu_ps(row, left);
                _mm256_storeu_ps(row.add(8), right);
            }
        }
    }
}

/// The 12×16 micro-kernel (a lone B panel of the AVX-512 kernel): `C[0..12, 0..16] (+)=
/// A_panel · B_panel`, one 16-wide accumulator per row of `C`; each step loads one row of B
/// and multiplies it by each of A's 12 values broadcast.
///
/// # Safety
/// `a` must be readable for `kc * 12` floats, `b` for `kc * NR`, and `c` writable (and
/// readable when `add`) at `i * rs_c + j` for `i < 12`, `j < 16`. The CPU must support
/// AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_12x16(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rs_c: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    // SAFETY: every pointer offset below stays within the extents the caller guarantees
    // (the prefetches are hints and never fault).
    unsafe {
        // Each row of the C tile: its first and its last float (two lines when unaligned).
        for i in 0..MR {
            let row = c.wrapping_add(i * rs_c) as *const i8;
            _mm_prefetch::<_MM_HINT_T0>(row);
            _mm_prefetch::<_MM_HINT_T0>(row.wrapping_add(63));
        }
        let mut acc = [_mm512_setzero_ps(); MR];
        let mut a = a;
        let mut b = b;
        for _ in 0..kc {
            let row = _mm512_loadu_ps(b);
            for (i, acc) in acc.iter_mut().enumerate() {
                *acc = _mm512_fmadd_ps(_mm512_set1_ps(*a.add(i)), row, *acc);
            }
            a = a.add(MR);
            b = b.add(NR);
        }
        for (i, acc) in acc.into_iter().enumerate() {
            let row = c.add(i * rs_c);
            if add {
                _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc));
            } else {
                _mm512_storeu_ps(row, acc);
            }
        }
    }
}

/// The 12×32 micro-kernel, the AVX-512 kernel's main one, on the first `ROWS` rows of a
/// 12-row A panel: two B panels side by side, `C[0..ROWS, 0..16]` at `c.0` from `b.0` and
/// `C[0..ROWS, 16..32]` at `c.1` from `b.1`, 2·ROWS accumulators; each step loads a row of
/// each panel and multiplies both by each of A's values broadcast — two FMAs per value read
/// from A, where the 16×16 shape did one (its loads, one per FMA, kept the two FMA units
/// from filling: 132-142 against 145-157 GFLOP/s for this shape with the data in cache,
/// one core, 2026-11-30).
///
/// # Safety
/// `a` must be readable for `kc * 12` floats, `b.0` and `b.1` for `kc * NR` each, and
/// `c.0`, `c.1` writable (and readable when `add`) at `i * rs_c + j` for `i < ROWS`,
/// `j < 16`; `ROWS <= 12`. The CPU must support AVX-512F.
#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx512f,avx2,fma")]
unsafe fn kernel_rows_x32<const ROWS: usize>(
    kc: usize,
    a: *const f32,
    b: (*const f32, *const f32),
    c: (*mut f32, *mut f32),
    rs_c: usize,
    add: bool,
) {
    use std::arch::x86_64::*;
    const MR: usize = 12;
    // SAFETY: every pointer offset below stays within the extents the caller guarantees
    // (the prefetches are hints and never fault).
    unsafe {
        for i in 0..ROWS {
            _mm_prefetch::<_MM_HINT_T0>(c.0.wrapping_add(i * rs_c) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.0.wrapping_add(i * rs_c + NR - 1) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.1.wrapping_add(i * rs_c) as *const i8);
            _mm_prefetch::<_MM_HINT_T0>(c.1.wrapping_add(i * rs_c + NR - 1) as *const i8);
        }
        let mut left = [_mm512_setzero_ps(); ROWS];
        let mut right = [_mm512_setzero_ps(); ROWS];
        let (mut a, mut b0, mut b1) = (a, b.0, b.1);
        for _ in 0..kc {
            let (row0, row1) = (_mm512_loadu_ps(b0), _mm512_loadu_ps(b1));
            for i in 0..ROWS {
                let value = _mm512_set1_ps(*a.add(i));
                left[i] = _mm512_fmadd_ps(value, row0, left[i]);
                right[i] = _mm512_fmadd_ps(value, row1, right[i]);
            }
            a = a.add(MR);
            b0 = b0.add(NR);
            b1 = b1.add(NR);
        }
        for i in 0..ROWS {
            for (tile, acc) in [(c.0, left[i]), (c.1, right[i])] {
                let row = tile.add(i * rs_c);
                if add {
                    _mm512_storeu_ps(row, _mm512_add_ps(_mm512_loadu_ps(row), acc));
                } else {
                    _mm512_storeu_ps(row, acc);
                }
            }
        }
    }
}

/// Portable stand-in for both kernels so the crate builds off x86-64; never called there
/// because no [`Kernel`] is supported and [`gemm`] bails first.
#[cfg(not(target_arch = "x86_64"))]
unsafe fn portable_kernel<const MR: usize>(
    kc: usize,
    a: *const f32,
    b: *const f32,
    c: *mut f32,
    rs_c: usize,
    add: bool,
) {
    // SAFETY: same contract as the x86-64 kernels.
    unsafe {
        for i in 0..MR {
            for j in 0..NR {
                let mut sum = 0.0f32;
                for kk in 0..kc {
                    sum += *a.add(kk * MR + i) * *b.add(kk * NR + j);
                }
                let out = c.add(i * rs_c + j);
                *out = if add { *out + sum } else { sum };
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(i: usize, salt: usize) -> f32 {
        ((i * 7919 + salt) % 2003) as f32 / 1001.0 - 1.0
    }

    /// `C + A·B` as the module doc says the kernels round: one FMA per product, `k`
    /// ascending in KC blocks, each block's sum added to `C` in order (all row-major).
    fn documented_sum(
        a: &[f32],
        b: &[f32],
        c0: &[f32],
        (m, k, n): (usize, usize, usize),
    ) -> Vec<f32> {
        let mut expected = c0.to_vec();
        for (i, row) in expected.chunks_exact_mut(n).enumerate().take(m) {
            for (j, out) in row.iter_mut().enumerate() {
                for first in (0..k).step_by(KC) {
                    let block = (first..k.min(first + KC))
                        .fold(0.0f32, |acc, p| a[i * k + p].mul_add(b[p * n + j], acc));
                    *out += block;
                }
            }
        }
        expected
    }

    fn supported_kernels() -> impl Iterator<Item = Kernel> {
        [Kernel::Avx2, Kernel::Avx512].into_iter().filter(|kernel| kernel.is_supported())
    }

    /// Each kernel this CPU runs, with `A` packed ahead of time and the product added to a `C`
    /// that holds values (the convolutions' accumulating path), rounds as the module doc says.
    /// Rows past the first MC block (150 > 144) and partial tiles of both MRs and NR.
    #[test]
    fn packed_accumulating_products_round_as_documented() {
        let (m, k, n) = (150, 2 * KC + 88, 51);
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 1)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i, 2)).collect();
        let c0: Vec<f32> = (0..m * n).map(|i| value(i, 3)).collect();
        let expected = documented_sum(&a, &b, &c0, (m, k, n));
        for kernel in supported_kernels() {
            let packed = PackedLhs::pack(MatRef::row_major(&a, m, k).unwrap(), kernel);
            let mut c = c0.clone();
            let rhs = Rhs::Matrix(MatRef::row_major(&b, k, n).unwrap());
            let dst = MatMut::row_major(&mut c, m, n).unwrap();
            gemm(kernel, Lhs::Packed(&packed), rhs, dst, Accumulate::Add).unwrap();
            let differ = c.iter().zip(&expected).filter(|(x, y)| x.to_bits() != y.to_bits());
            assert_eq!(differ.count(), 0, "{kernel:?}: bits differ");
        }
    }

    /// A `C` whose columns are items' planes (`MatMut::items`: the `(items, rows, P)` output
    /// of a unit of batch items) gets the bits of a plain one, added to or overwritten, over
    /// two KC blocks, whether a 16-column tile spans several items (P = 4, 12), is one item's
    /// (P = 16) or is cut by an item's end (P = 24) — on AVX-512 the 32-column pairs of the
    /// first 32 columns cross items' ends except at P = 16, and go through the scratch tile;
    /// the elements between the blocks' rows (other channels of the items) are left alone.
    #[test]
    fn items_planes_as_columns_get_the_bits_of_a_plain_matrix() {
        let (m, k, n) = (20, KC + 40, 48);
        let a: Vec<f32> = (0..m * k).map(|i| value(i, 4)).collect();
        let b: Vec<f32> = (0..k * n).map(|i| value(i, 5)).collect();
        let c0: Vec<f32> = (0..m * n).map(|i| value(i, 6)).collect();
        // Adding to `c0`; overwriting a `C` of NaNs (never read), whose first KC block's sum
        // is stored as it is (no product here sums to -0.0, so `0 + sum` is the same bits).
        let cases = [
            (Accumulate::Add, c0.clone(), documented_sum(&a, &b, &c0, (m, k, n))),
            (Accumulate::Overwrite, vec![f32::NAN; m * n], {
                documented_sum(&a, &b, &vec![0.0; m * n], (m, k, n))
            }),
        ];
        for kernel in supported_kernels() {
            for (pixels, (accumulate, c0, expected)) in
                [4, 12, 16, 24].into_iter().flat_map(|p| cases.iter().map(move |c| (p, c)))
            {
                // Items of `m + 3` channels; the product fills channels 2..2+m of each.
                let (items, channels) = (n / pixels, m + 3);
                let sentinel = 7.5f32;
                let mut tensor = vec![sentinel; items * channels * pixels];
                for i in 0..m {
                    for j in 0..n {
                        let (item, pixel) = (j / pixels, j % pixels);
                        tensor[(item * channels + 2 + i) * pixels + pixel] = c0[i * n + j];
                    }
                }
                let packed = PackedLhs::pack(MatRef::row_major(&a, m, k).unwrap(), kernel);
                let rhs = Rhs::Matrix(MatRef::row_major(&b, k, n).unwrap());
                let strides = (pixels, channels * pixels);
                let dst = MatMut::items(&mut tensor, 2 * pixels, m, (items, pixels), strides);
                gemm(kernel, Lhs::Packed(&packed), rhs, dst.unwrap(), *accumulate).unwrap();
                for (index, got) in tensor.iter().enumerate() {
                    let (item, channel, pixel) =
                        (index / (channels * pixels), index / pixels % channels, index % pixels);
                    let want = if (2..2 + m).contains(&channel) {
                        expected[(channel - 2) * n + item * pixels + pixel]
                    } else {
                        sentinel
                    };
                    let what = format!("{kernel:?} {accumulate:?}, P {pixels}, at {index}");
                    assert_eq!(got.to_bits(), want.to_bits(), "{what}");
                }
            }
        }
    }

    /// The one-pass packing of interleaved members equals packing each member on its own,
    /// across two KC blocks and a partial row panel, in both stride orders (a weight's taps
    /// and their transposes); so does making each element's members together
    /// ([`PackedLhs::pack_members`]).
    #[test]
    fn interleaved_members_pack_like_each_member_alone() {
        let (count, rows, cols) = (3, 19, KC + 44);
        let data: Vec<f32> = (0..count * rows * cols).map(|i| (i % 251) as f32 - 125.0).collect();
        for kernel in [Kernel::Avx2, Kernel::Avx512] {
            for (row_stride, col_stride) in [(count * cols, count), (count, count * rows)] {
                let strides = (row_stride, col_stride);
                let packed =
                    PackedLhs::pack_interleaved(&data, count, (rows, cols), strides, kernel);
                let made = PackedLhs::pack_members((rows, cols), kernel, |i, j| {
                    std::array::from_fn::<f32, 3, _>(|t| data[t + i * row_stride + j * col_stride])
                });
                assert_eq!((packed.len(), made.len()), (count, count));
                for (member, made) in packed.iter().zip(&made) {
                    assert_eq!((made.rows, made.cols, made.kernel), (rows, cols, kernel));
                    assert_eq!(&member.data[..], &made.data[..]);
                }
                for (t, member) in packed.iter().enumerate() {
                    let view = MatRef::new(&data, t, (rows, cols), strides).unwrap();
                    let alone = PackedLhs::pack(view, kernel);
                    assert_eq!((member.rows, member.cols, member.kernel), (rows, cols, kernel));
                    assert_eq!(
                        &member.data[..],
                        &alone.data[..],
                        "{kernel:?} member {t}, strides {row_stride}, {col_stride}"
                    );
                }
            }
        }
    }
}
