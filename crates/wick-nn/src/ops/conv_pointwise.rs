//! The CPU 1×1 convolution of the late stages, where a batch is a few hundred columns
//! against a weight of megabytes: the whole batch as one gemm per pass, parallel over blocks
//! of the left operand's rows.
//!
//! xresnet50's last stage at 64 px and batch 32 multiplies 2048 × 1024 weights (8 MB) by
//! 32 items of 2×2 pixels: 128 columns. `conv_cpu`'s path splits the batch into
//! `PARALLEL_SPLITS` units of 8 items, each unit reading the whole packed weight (packed by a
//! pass of its own first), and the weight gradient sums the units' four weight-sized partial
//! products: each pass moved the weight's megabytes through memory 5-9 times for little
//! arithmetic (the weight gradient of that convolution took 2-5x its forward pass in a
//! profiled step). Here, with
//! `N = B·P` columns:
//! - forward:      `y (O × N) = w (O × C) · x (C × N)`, scattered into `y (B, O, P)`
//! - grad input:   `dx (C × N) = wᵀ (C × O) · dy (O × N)`, scattered into `dx (B, C, P)`
//! - grad weight:  `dw (O × C) = dy (O × N) · xᵀ (N × C)`, written in place
//!
//! The right operand (`x`, `dy` or `xᵀ`: C·N or O·N values, a few hundred kilobytes) is
//! gathered from the items' planes once; the left operand's rows are cut into
//! [`ROW_BLOCKS`] blocks computed in parallel, and each block's gemm packs its rows of the
//! weight (or of `dy`) just before it uses them, so the weight is read from memory once a
//! pass. Every output value is one gemm sum over the whole depth in the gemm's fixed order,
//! whatever the blocks, so with wick's native gemm kernels every result is bit-identical at
//! any thread count (docs/decisions/0002-deterministic-reductions.md). [`applies`] says where
//! this pays.
//!
//! Shapes as in `conv_cpu`: `x (B, C, H, W)`, `w (O, C, 1, 1)`, `y (B, O, H, W)`, `P = H·W`,
//! one group.

use super::conv_cpu::ConvGeometry;
use super::storage::{par_output, try_par_zeroed, write_values};
use crate::gemm::{Accumulate, GemmBackend, Lhs, MatMut, MatRef, Rhs, gemm};
use crate::scratch::Scratch;
use rayon::prelude::*;

/// This path takes 1×1 convolutions of at most this many columns (`B·P`) ...
///
/// Measured with the nn bench (`cargo bench -p wick-nn --bench nn -- --cases <case> --batch
/// <B> --impls wick --reps 10 --best`, forward + both gradients, ms, conv_cpu's path against
/// this one, two alternations, 2026-12-01; only 2×2 and 4×4 images were measured, so the
/// bound is in columns, not in pixels):
/// at batch 32, 2×2 (128 columns) c1x1_1024_2048_2 10.7-10.9 vs 7.6-8.2, c1x1_512_2048_2
/// 5.4-5.5 vs 4.2-4.6, c1x1_2048_512_2 5.7-6.3 vs 4.5-4.8; at batch 64 (256 columns)
/// 17.6-19.5 vs 14.5-14.8, 8.9-9.1 vs 8.3-10.1, 9.3-9.4 vs 8.4-8.9; but at batch 32, 4×4
/// (512 columns, where the output is as large as the weight and each block's gemm packs the
/// whole right operand) c1x1_512_1024_4 6.9-7.1 vs 8.4, c1x1_256_1024_4 3.7-3.9 vs 5.0.
const MAX_COLUMNS: usize = 256;

/// ... whose weight has at least this many values (1 MB).
const MIN_WEIGHT: usize = 256 * 1024;

/// The left operand's rows are computed in this many parallel blocks (a number from the
/// shapes alone; no value depends on it).
const ROW_BLOCKS: usize = 4;

/// Whether `g` runs here: a 1×1, stride-1, unpadded, ungrouped convolution of few columns
/// against a large weight (see the module docs).
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.is_pointwise()
        && g.groups == 1
        && g.batch > 0
        && g.batch * g.out_pixels() <= MAX_COLUMNS
        && g.in_channels * g.out_channels >= MIN_WEIGHT
}

/// `y (B, O, P)` from `x (B, C, P)` and `w (O, C)`, row-major.
///
/// # Errors
/// If a buffer is shorter than the geometry says.
pub(crate) fn forward(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (c, o, p, n) = (g.in_channels, g.out_channels, g.out_pixels(), columns(g));
    let x = gather_columns(input, g.batch, c, p);
    let w = MatRef::row_major(weight, o, c)?;
    let mut y = Scratch::take(o * n);
    product_by_row_blocks(backend, w, MatRef::row_major(&x, c, n)?, &mut y)?;
    Ok(scatter_columns(&y, g.batch, o, p))
}

/// `dx (B, C, P)` from `dy (B, O, P)` and `w (O, C)`, row-major.
///
/// # Errors
/// If a buffer is shorter than the geometry says.
pub(crate) fn backward_input(
    g: &ConvGeometry,
    grad_output: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (c, o, p, n) = (g.in_channels, g.out_channels, g.out_pixels(), columns(g));
    let dy = gather_columns(grad_output, g.batch, o, p);
    let w_transposed = MatRef::row_major(weight, o, c)?.transpose();
    let mut dx = Scratch::take(c * n);
    product_by_row_blocks(backend, w_transposed, MatRef::row_major(&dy, o, n)?, &mut dx)?;
    Ok(scatter_columns(&dx, g.batch, c, p))
}

/// `dw (O, C)` from `x (B, C, P)` and `dy (B, O, P)`, row-major.
///
/// # Errors
/// If a buffer is shorter than the geometry says.
pub(crate) fn backward_weight(
    g: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (c, o, p, n) = (g.in_channels, g.out_channels, g.out_pixels(), columns(g));
    let dy = gather_columns(grad_output, g.batch, o, p);
    let x = gather_columns(input, g.batch, c, p);
    let (dy, x_transposed) =
        (MatRef::row_major(&dy, o, n)?, MatRef::row_major(&x, c, n)?.transpose());
    // The gradient is the weight's new tensor: a fresh buffer, zeroed block by block in the
    // task that then overwrites it (no single-threaded fill first).
    try_par_zeroed(o * c, block_rows(o) * c, |block, out| {
        block_product(backend, dy, x_transposed, block, out)
    })
}

/// `N = B·P`, the columns of every pass's product.
fn columns(g: &ConvGeometry) -> usize {
    g.batch * g.out_pixels()
}

/// `out (M × N) = a (M × K) · b (K × N)`, row-major: `a`'s rows in [`ROW_BLOCKS`] blocks of
/// [`block_rows`], one gemm each, in parallel.
///
/// # Errors
/// If `out` does not hold `M·N` values.
fn product_by_row_blocks(
    backend: GemmBackend,
    a: MatRef<'_>,
    b: MatRef<'_>,
    out: &mut [f32],
) -> candle::Result<()> {
    let (m, n) = (a.rows(), b.cols());
    if out.len() != m * n {
        candle::bail!("conv2d: a {m} × {n} product into {} values", out.len());
    }
    if n == 0 {
        return Ok(());
    }
    out.par_chunks_mut(block_rows(m) * n)
        .enumerate()
        .try_for_each(|(block, out)| block_product(backend, a, b, block, out))
}

/// Rows `block·R..` of `a · b` into `out` (`R` = [`block_rows`] of `a`'s rows; `out` holds
/// whole rows of `N` values, `R` of them or fewer for the last block).
fn block_product(
    backend: GemmBackend,
    a: MatRef<'_>,
    b: MatRef<'_>,
    block: usize,
    out: &mut [f32],
) -> candle::Result<()> {
    let n = b.cols();
    let rows = out.len() / n;
    let lhs = a.rows_from(block * block_rows(a.rows()), rows)?;
    let dst = MatMut::row_major(out, rows, n)?;
    gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(b), dst, Accumulate::Overwrite)
}

/// Rows of a block when `rows` are cut into [`ROW_BLOCKS`]: a multiple of 12, the native
/// kernels' row tile (AVX-512: 12, AVX2: 6), so that only the last block ends in a partial
/// tile.
fn block_rows(rows: usize) -> usize {
    rows.div_ceil(ROW_BLOCKS).div_ceil(12).max(1) * 12
}

/// The `R × (B·P)` matrix of a `(B, R, P)` tensor: row `r` holds each item's plane `r` in
/// item order.
fn gather_columns(tensor: &[f32], batch: usize, rows: usize, pixels: usize) -> Vec<f32> {
    let n = batch * pixels;
    // SAFETY: each chunk is written through `write_values`, which counts what it writes.
    unsafe {
        par_output(rows * n, n, |row, out| {
            let planes = (0..batch).flat_map(|item| {
                let start = (item * rows + row) * pixels;
                tensor[start..start + pixels].iter().copied()
            });
            write_values(out, planes)
        })
    }
}

/// The `(B, R, P)` tensor of an `R × (B·P)` matrix (the inverse of [`gather_columns`]).
fn scatter_columns(matrix: &[f32], batch: usize, rows: usize, pixels: usize) -> Vec<f32> {
    let n = batch * pixels;
    // SAFETY: each chunk is written through `write_values`, which counts what it writes.
    unsafe {
        par_output(batch * rows * pixels, rows * pixels, |item, out| {
            let planes = (0..rows).flat_map(|row| {
                let start = row * n + item * pixels;
                matrix[start..start + pixels].iter().copied()
            });
            write_values(out, planes)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{ConvGeometry, applies, block_rows};

    fn pointwise(batch: usize, c: usize, o: usize, size: usize) -> ConvGeometry {
        ConvGeometry {
            batch,
            in_channels: c,
            in_height: size,
            in_width: size,
            out_channels: o,
            kernel_height: 1,
            kernel_width: 1,
            out_height: size,
            out_width: size,
            padding: 0,
            stride: 1,
            dilation: 1,
            groups: 1,
        }
    }

    /// xresnet50's last stage at 64 px (2×2) takes this path at batch 32 and 64 (128 and 256
    /// columns), not at 128; its third stage (4×4: 512 columns at batch 32) and small weights
    /// do not.
    #[test]
    fn applies_to_few_columns_against_a_large_weight() {
        assert!(applies(&pointwise(32, 1024, 2048, 2)));
        assert!(applies(&pointwise(64, 512, 2048, 2)));
        assert!(applies(&pointwise(64, 512, 512, 2)));
        assert!(!applies(&pointwise(128, 512, 2048, 2)));
        assert!(!applies(&pointwise(32, 256, 1024, 4)));
        assert!(!applies(&pointwise(32, 256, 512, 2)));
        assert!(!applies(&pointwise(0, 1024, 2048, 2)));
        // tests/conv.rs's case for this path: `[3, 520, 2, 2]` → 530 channels.
        assert!(applies(&pointwise(3, 520, 530, 2)));
        let strided =
            ConvGeometry { stride: 2, out_height: 1, out_width: 1, ..pointwise(32, 1024, 2048, 2) };
        assert!(!applies(&strided));
    }

    /// 2048 rows: 4 blocks of 516 (a multiple of 12) = 2064, the last one 500 rows.
    #[test]
    fn row_blocks_are_whole_tiles_but_the_last() {
        assert_eq!(block_rows(2048), 516);
        assert_eq!(block_rows(530), 144);
        assert_eq!(block_rows(1), 12);
    }
}
