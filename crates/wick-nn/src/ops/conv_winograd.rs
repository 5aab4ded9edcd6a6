//! The CPU 3×3 stride-1 convolution as Winograd's minimal filtering F(2×2, 3×3) (Lavin &
//! Gray, "Fast Algorithms for Convolutional Neural Networks", 2016): each 2×2 block of output
//! pixels comes from its 4×4 input patch with 16 multiplies per (input, output) channel pair
//! instead of 36, so the gemms do 2.25× fewer multiply-adds than im2col's.
//!
//! With `d` a 4×4 input patch, `g` a 3×3 filter and `Y` the 2×2 output block:
//! `Y = Aᵀ [(G g Gᵀ) ⊙ (Bᵀ d B)] A`. Over channels this is 16 independent products, one per
//! transform-domain position ξ: `M_ξ (O × n) = U_ξ (O × C) · V_ξ (C × n)` with `U = G g Gᵀ`
//! (the weights, transformed and packed once per call), `V = Bᵀ d B` (n patches) and the
//! output transform applied to `M`. The passes:
//! - forward: as above;
//! - grad input: the forward pass of the flipped convolution (`conv_cpu::flipped_geometry`),
//!   its `U` made from the rotated, transposed filters;
//! - grad weight: `dM = A dY Aᵀ` per output block, `dU_ξ (O × C) = Σ_n dM_ξ · V_ξᵀ`, and
//!   `dg = Gᵀ dU G` — the exact gradient of the forward's arithmetic.
//!
//! Work is cut from the shapes alone: batch items grouped into units (parallel), each unit's
//! output blocks into chunks of `n` columns; the weight gradient sums its units with
//! `conv_cpu::sum_in_fixed_runs`, so a result is bit-identical at any thread count
//! (docs/decisions/0002-deterministic-reductions.md). The transforms add
//! rounding of their own: results agree with the direct convolution to float tolerance
//! (about 1e-6 relative), not bit for bit.
//!
//! Shapes as in `conv_cpu`: `x (B, C, H, W)`, `w (O, C, 3, 3)`, `y (B, O, OH, OW)`, one group.

use super::conv_cpu::{ConvGeometry, PARALLEL_SPLITS, sum_in_fixed_runs};
use super::storage::{par_output, try_par_output};
use crate::gemm::{
    Accumulate, GemmBackend, Kernel, Lhs, MatMut, MatRef, PackedLhs, PreparedLhs, Rhs, gemm,
};
use crate::scratch::Scratch;
use rayon::prelude::*;

/// Transform-domain positions per block: the 4×4 patch.
const POSITIONS: usize = 16;

/// A chunk's `V_ξ` (`C × n`) is about this many floats, so that a chunk's whole `V` (all 16
/// positions: 512 KB) and `M` are written and read back near the core (L2, then L3) instead
/// of through memory. (`Tiling::new` keeps a chunk between 64 and 1024 blocks, so above 128
/// channels a chunk is 64 blocks and larger than this: 1 MB of `V` at 256 channels.) It was
/// 64K floats (one `V_ξ` in L2, the whole `V` 4 MB); 8K measured
/// faster on every Winograd shape of xresnet18/50 at 48-128 px (`cargo bench -p wick-nn
/// --bench nn -- --cases C --impls wick --batch 64 --reps 5 --best`, forward + both
/// gradients, 64K → 8K, two alternations, 2026-11-30: c3x3_64_12 11.6-12.5 → 9.9-10.0 ms,
/// c3x3_32_64_24 27.5-28.6 → 23.1-25.1, c3x3_32_24 17.8-18.6 → 12.8-14.1, c3x3_64_16
/// 21.2-21.9 → 18.6-18.8, c3x3_256_8 54.8-55.1 → 51.5-52.7); 4K was no faster than 8K.
const CHUNK_FLOATS: usize = 8 * 1024;

/// Whether F(2×2, 3×3) runs `g`: a 3×3 kernel, stride 1, no dilation, one group, an output
/// of at least 8×8 and at least 16 channels on each side. On smaller outputs the per-call
/// cost of the weights (16 transformed `O × C` matrices, packed; 16 gradient sums) is paid
/// for too few blocks and `conv_regions` is faster: 512 channels at 4×4, batch 32, forward
/// and both gradients take 55 ms here against 33 ms there (`cargo bench -p wick-nn --bench
/// nn -- --cases c3x3_512_4 --impls wick`). The transforms' cost is per channel, the
/// gemms' per channel pair.
pub(crate) fn applies(g: &ConvGeometry) -> bool {
    g.kernel_height == 3
        && g.kernel_width == 3
        && g.stride == 1
        && g.dilation == 1
        && g.groups == 1
        && g.padding <= 2
        && g.out_height >= 8
        && g.out_width >= 8
        && g.in_channels >= 16
        && g.out_channels >= 16
        && g.batch > 0
}

/// `U = G g Gᵀ` of one 3×3 filter `g` (row-major), `G = [[1,0,0],[½,½,½],[½,-½,½],[0,0,1]]`.
fn transform_filter(g: [f32; 9]) -> [f32; 16] {
    let mut s = [0.0f32; 12]; // G g: 4×3
    for col in 0..3 {
        let (g0, g1, g2) = (g[col], g[3 + col], g[6 + col]);
        s[col] = g0;
        s[3 + col] = 0.5 * (g0 + g1 + g2);
        s[6 + col] = 0.5 * (g0 - g1 + g2);
        s[9 + col] = g2;
    }
    let mut u = [0.0f32; 16]; // (G g) Gᵀ: 4×4
    for row in 0..4 {
        let (s0, s1, s2) = (s[row * 3], s[row * 3 + 1], s[row * 3 + 2]);
        u[row * 4] = s0;
        u[row * 4 + 1] = 0.5 * (s0 + s1 + s2);
        u[row * 4 + 2] = 0.5 * (s0 - s1 + s2);
        u[row * 4 + 3] = s2;
    }
    u
}

/// `dg = Gᵀ dU G`: the gradient of a 3×3 filter from that of its transform.
fn untransform_filter_gradient(du: [f32; 16]) -> [f32; 9] {
    let mut s = [0.0f32; 12]; // Gᵀ dU: 3×4
    for col in 0..4 {
        let (u0, u1, u2, u3) = (du[col], du[4 + col], du[8 + col], du[12 + col]);
        s[col] = u0 + 0.5 * (u1 + u2);
        s[4 + col] = 0.5 * (u1 - u2);
        s[8 + col] = 0.5 * (u1 + u2) + u3;
    }
    let mut dg = [0.0f32; 9]; // (Gᵀ dU) G: 3×3
    for row in 0..3 {
        let (s0, s1, s2, s3) = (s[row * 4], s[row * 4 + 1], s[row * 4 + 2], s[row * 4 + 3]);
        dg[row * 3] = s0 + 0.5 * (s1 + s2);
        dg[row * 3 + 1] = 0.5 * (s1 - s2);
        dg[row * 3 + 2] = 0.5 * (s1 + s2) + s3;
    }
    dg
}

/// `V = Bᵀ d B` of one 4×4 patch, `Bᵀ = [[1,0,-1,0],[0,1,1,0],[0,-1,1,0],[0,1,0,-1]]`
/// (the reference for [`transform_input`], which takes the same sums along whole rows and in
/// the other order, `Bᵀ (d B)`).
#[cfg(test)]
fn transform_patch(d: &[f32; 16]) -> [f32; 16] {
    let mut t = [0.0f32; 16]; // Bᵀ d
    for col in 0..4 {
        let (d0, d1, d2, d3) = (d[col], d[4 + col], d[8 + col], d[12 + col]);
        t[col] = d0 - d2;
        t[4 + col] = d1 + d2;
        t[8 + col] = d2 - d1;
        t[12 + col] = d1 - d3;
    }
    let mut v = [0.0f32; 16]; // (Bᵀ d) B
    for row in 0..4 {
        let (t0, t1, t2, t3) = (t[row * 4], t[row * 4 + 1], t[row * 4 + 2], t[row * 4 + 3]);
        v[row * 4] = t0 - t2;
        v[row * 4 + 1] = t1 + t2;
        v[row * 4 + 2] = t2 - t1;
        v[row * 4 + 3] = t1 - t3;
    }
    v
}

/// `Y = Aᵀ m A` (2×2) of one 4×4 product, `Aᵀ = [[1,1,1,0],[0,1,-1,-1]]` (the reference
/// for the output transform in [`forward_with`], whose first step runs over a chunk's blocks
/// and whose second along output rows).
#[cfg(test)]
fn untransform_block(m: &[f32; 16]) -> [f32; 4] {
    let mut t = [0.0f32; 8]; // Aᵀ m: 2×4
    for col in 0..4 {
        let (m0, m1, m2, m3) = (m[col], m[4 + col], m[8 + col], m[12 + col]);
        t[col] = m0 + m1 + m2;
        t[4 + col] = m1 - m2 - m3;
    }
    let mut y = [0.0f32; 4];
    for row in 0..2 {
        let (t0, t1, t2, t3) = (t[row * 4], t[row * 4 + 1], t[row * 4 + 2], t[row * 4 + 3]);
        y[row * 2] = t0 + t1 + t2;
        y[row * 2 + 1] = t1 - t2 - t3;
    }
    y
}

/// `dM = A dY Aᵀ` (4×4) of one 2×2 output-gradient block: the transpose of
/// [`untransform_block`] (the reference for the one in [`backward_weight`]).
#[cfg(test)]
fn transform_block_gradient(dy: &[f32; 4]) -> [f32; 16] {
    let mut t = [0.0f32; 8]; // A dY: 4×2
    for col in 0..2 {
        let (y0, y1) = (dy[col], dy[2 + col]);
        t[col] = y0;
        t[2 + col] = y0 + y1;
        t[4 + col] = y0 - y1;
        t[6 + col] = -y1;
    }
    let mut m = [0.0f32; 16];
    for row in 0..4 {
        let (t0, t1) = (t[row * 2], t[row * 2 + 1]);
        m[row * 4] = t0;
        m[row * 4 + 1] = t0 + t1;
        m[row * 4 + 2] = t0 - t1;
        m[row * 4 + 3] = -t1;
    }
    m
}

/// `U` of the filter at `weight[at..at + 9]`, or (`flipped`) of that filter rotated by 180°.
fn transformed_filter(weight: &[f32], at: usize, flipped: bool) -> [f32; 16] {
    let mut f: [f32; 9] = std::array::from_fn(|t| weight[at + t]);
    if flipped {
        f.reverse();
    }
    transform_filter(f)
}

/// `U` of every filter, position-major: `(16, O', C')`, as planes for the backends that take
/// plain matrices (the native kernels get theirs packed straight from the filters, in
/// `forward_from_weight`). `flipped`: the filters of the input gradient's convolution,
/// `g'[c][o] = rot180(w[o][c])` (O' = C, C' = O).
fn transform_weights(g: &ConvGeometry, weight: &[f32], flipped: bool) -> Scratch {
    let (o, c) = (g.out_channels, g.in_channels);
    let plane = o * c;
    // Every value written below (one per filter and position).
    let mut out = Scratch::take(POSITIONS * plane);
    let transformed: Vec<[f32; 16]> = (0..plane)
        .into_par_iter()
        .map(|filter| transformed_filter(weight, filter * 9, flipped))
        .collect();
    out.par_chunks_mut(plane).enumerate().for_each(|(xi, dst)| {
        if flipped {
            // Row c' = c_in of the flipped conv = the original's input channel c; column o.
            for (index, u) in transformed.iter().enumerate() {
                let (oo, cc) = (index / c, index % c);
                dst[cc * o + oo] = u[xi];
            }
        } else {
            for (d, u) in dst.iter_mut().zip(&transformed) {
                *d = u[xi];
            }
        }
    });
    out
}

/// How a call's output blocks are cut: `blocks_h × blocks_w` 2×2 blocks per item, items
/// grouped `items_per_unit` to a parallel unit, a unit's block rows taken `rows_per_chunk`
/// at a time (a chunk's `n` is `rows_per_chunk · blocks_w` blocks, consecutive along x).
#[derive(Debug, Clone, Copy)]
struct Tiling {
    blocks_h: usize,
    blocks_w: usize,
    items_per_unit: usize,
    rows_per_chunk: usize,
}

impl Tiling {
    fn new(g: &ConvGeometry, channels: usize) -> Self {
        let (blocks_h, blocks_w) = (g.out_height.div_ceil(2), g.out_width.div_ceil(2));
        let per_item = blocks_h * blocks_w;
        let chunk = (CHUNK_FLOATS / channels.max(1)).clamp(64, 1024);
        let items_per_unit = (chunk / per_item).clamp(1, g.batch.div_ceil(PARALLEL_SPLITS).max(1));
        let rows_per_chunk = (chunk / blocks_w).max(1);
        Self { blocks_h, blocks_w, items_per_unit, rows_per_chunk }
    }

    /// The most blocks (`rows · blocks_w`) in one chunk of a unit of `items` items.
    fn most_blocks(&self, items: usize) -> usize {
        self.rows_per_chunk.min(items * self.blocks_h) * self.blocks_w
    }

    /// `(first block row, rows)` of each chunk of a unit of `items` items.
    fn chunks(&self, items: usize) -> impl Iterator<Item = (usize, usize)> {
        let rows = items * self.blocks_h;
        let step = self.rows_per_chunk;
        (0..rows).step_by(step).map(move |first| (first, step.min(rows - first)))
    }
}

/// `V` of the blocks of block rows `[first_row, first_row + rows)` of a unit (block row =
/// item·blocks_h + by) into `v (16, C, n)`, `n = rows · blocks_w`; `input` starts at the
/// unit's first item. Values outside the image are 0.
///
/// `V = Bᵀ (d B)`: the column step first, once per padded row of a run of an item's block
/// rows in the chunk — `h_s = (c0 - c2, c1 + c2, c2 - c1, c1 - c3)` of each block's four
/// columns, zeros for rows outside the image — into even and odd padded rows kept apart;
/// then the row step. Block row `by`'s patch rows `2·by .. 2·by + 4` are even row `by`, odd
/// row `by`, even row `by + 1` and odd row `by + 1`, so with the parities apart its reads,
/// and its writes to `V`, run contiguously over the whole run: 16 long streams per channel
/// (it was four short rows per block row, and the column step of each patch row was done
/// twice, once for each block row whose patch holds it).
fn transform_input(
    g: &ConvGeometry,
    tiling: &Tiling,
    input: &[f32],
    (first_row, rows): (usize, usize),
    v: &mut [f32],
) {
    let (bw, bh) = (tiling.blocks_w, tiling.blocks_h);
    let n = rows * bw;
    let plane = g.in_height * g.in_width;
    let item_len = g.in_channels * plane;
    let position_len = g.in_channels * n;
    // The input rows of a run, padded with zeros on both sides: padded column xx holds input
    // column xx - padding. Only `[lead, lead + count)` is ever written, so the zeros either
    // side are written once, here. A run's rows are all copied before any is read back: read
    // at once, the column step's loads (which straddle the copy's stores) waited on store
    // forwarding, a quarter of this function's time (`perf annotate`).
    let padded_width = 2 * bw + 2;
    let most_rows = 2 * rows.min(bh) + 2;
    let mut padded = vec![0.0f32; most_rows * padded_width];
    let lead = g.padding.min(padded_width);
    let count = g.in_width.min(padded_width - lead);
    // `h_s` of the padded rows of one item's run of block rows (at most `bh`, plus one row
    // of blocks below): slot `parity · 4 + s`, row `k / 2` of padded row `2·by_first + k`.
    let slot_len = (rows.min(bh) + 1) * bw;
    let mut h = vec![0.0f32; 8 * slot_len];
    for channel in 0..g.in_channels {
        let mut row = 0;
        while row < rows {
            let (item, by_first) = ((first_row + row) / bh, (first_row + row) % bh);
            let run = (bh - by_first).min(rows - row);
            let base = item * item_len + channel * plane;
            let input_row = |k: usize| {
                let y = (2 * by_first + k).checked_sub(g.padding).filter(|&y| y < g.in_height)?;
                Some(&input[base + y * g.in_width..base + y * g.in_width + count])
            };
            let padded_rows = padded.chunks_exact_mut(padded_width).take(2 * run + 2);
            for (k, padded) in padded_rows.enumerate() {
                if let Some(source) = input_row(k) {
                    padded[lead..lead + count].copy_from_slice(source);
                }
            }
            for (k, padded) in padded.chunks_exact(padded_width).take(2 * run + 2).enumerate() {
                let at = (k / 2) * bw;
                let [h0, h1, h2, h3] =
                    four_runs(&mut h, (4 * (k % 2)) * slot_len + at, slot_len, bw);
                match input_row(k) {
                    Some(_) => transform_columns(padded, [h0, h1, h2, h3]),
                    None => [h0, h1, h2, h3].into_iter().for_each(|h| h.fill(0.0)),
                }
            }
            // The row step over the run: `(h_s[2by] - h_s[2by+2], h_s[2by+1] + h_s[2by+2],
            // h_s[2by+2] - h_s[2by+1], h_s[2by+1] - h_s[2by+3])` for all of its blocks.
            let len = run * bw;
            let at = channel * n + row * bw;
            for s in 0..4 {
                let even = &h[s * slot_len..s * slot_len + len + bw];
                let odd = &h[(4 + s) * slot_len..(4 + s) * slot_len + len + bw];
                let (e0, e1, o0, o1) = (&even[..len], &even[bw..], &odd[..len], &odd[bw..]);
                let [v0, v1, v2, v3] = four_runs(v, s * position_len + at, 4 * position_len, len);
                for j in 0..len {
                    let (e0, e1, o0, o1) = (e0[j], e1[j], o0[j], o1[j]);
                    v0[j] = e0 - e1;
                    v1[j] = o0 + e1;
                    v2[j] = e1 - o0;
                    v3[j] = o0 - o1;
                }
            }
            row += run;
        }
    }
}

/// The four runs `buffer[first + i·stride ..][..len]`, `i` in `0..4` (`len <= stride`).
fn four_runs(buffer: &mut [f32], first: usize, stride: usize, len: usize) -> [&mut [f32]; 4] {
    let (a, rest) = buffer[first..].split_at_mut(stride);
    let (b, rest) = rest.split_at_mut(stride);
    let (c, d) = rest.split_at_mut(stride);
    [&mut a[..len], &mut b[..len], &mut c[..len], &mut d[..len]]
}

/// The column step `h = d B` of one padded row: `v[s][bx]` from `t[2·bx .. 2·bx + 4]` (`t`
/// holds `2·bw + 2` values, each `v[s]` `bw`): `(t0 - t2, t1 + t2, t2 - t1, t1 - t3)`.
#[inline(always)]
fn transform_columns(t: &[f32], v: [&mut [f32]; 4]) {
    let bw = v[0].len();
    assert!(t.len() >= 2 * bw + 2 && v.iter().all(|v| v.len() == bw));
    let [v0, v1, v2, v3] = v;
    let mut bx = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each group reads t[2·bx_ .. 2·bx_ + 10] with 2·bx_ + 10 <= 2·bw + 2 (bx_ + 4 <=
    // bw) and writes v[s][bx_ .. bx_ + 4], inside the lengths asserted above. SSE is part of
    // x86-64's baseline.
    unsafe {
        use std::arch::x86_64::*;
        // Four blocks at a time: evens and odds of t[x..x+8] and of t[x+2..x+10] by shuffles
        // (the compiler's own vectorisation of the loop below comes and goes with its
        // surroundings).
        // Where 4 does not divide `bw`, the last group overlaps the one before it and writes
        // its values again (the same values): no scalar tail (a third of a 12-px row).
        while bw >= 4 && bx < bw {
            let bx_ = bx.min(bw - 4);
            let p = t.as_ptr().add(2 * bx_);
            let (a, b) = (_mm_loadu_ps(p), _mm_loadu_ps(p.add(4)));
            let (c, d) = (_mm_loadu_ps(p.add(2)), _mm_loadu_ps(p.add(6)));
            let t0 = _mm_shuffle_ps::<0x88>(a, b); // t[x], t[x+2], t[x+4], t[x+6]
            let t1 = _mm_shuffle_ps::<0xDD>(a, b); // t[x+1], ...
            let t2 = _mm_shuffle_ps::<0x88>(c, d); // t[x+2], ...
            let t3 = _mm_shuffle_ps::<0xDD>(c, d); // t[x+3], ...
            _mm_storeu_ps(v0.as_mut_ptr().add(bx_), _mm_sub_ps(t0, t2));
            _mm_storeu_ps(v1.as_mut_ptr().add(bx_), _mm_add_ps(t1, t2));
            _mm_storeu_ps(v2.as_mut_ptr().add(bx_), _mm_sub_ps(t2, t1));
            _mm_storeu_ps(v3.as_mut_ptr().add(bx_), _mm_sub_ps(t1, t3));
            bx = bx_ + 4;
        }
    }
    for bx in bx..bw {
        let x = 2 * bx;
        let (t0, t1, t2, t3) = (t[x], t[x + 1], t[x + 2], t[x + 3]);
        v0[bx] = t0 - t2;
        v1[bx] = t1 + t2;
        v2[bx] = t2 - t1;
        v3[bx] = t1 - t3;
    }
}

/// `y` of convolution `run` from the weight of convolution `original`: `run` is `original`
/// itself or, `flipped`, its flipped convolution (the input gradient), whose filter
/// `(c', o')` is the original's `(o, c) = (o', c')` rotated by 180°. The 16 transformed
/// weights `U_ξ (O' × C')` are packed for a native kernel straight from the filters (one
/// pass, each filter transformed once), or laid out as planes for the other backends.
fn forward_from_weight(
    (original, run): (&ConvGeometry, &ConvGeometry),
    input: &[f32],
    weight: &[f32],
    flipped: bool,
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (rows, cols) = (run.out_channels, run.in_channels);
    if let Some(kernel) = backend.native_kernel() {
        let lhs: Vec<PreparedLhs<'_>> =
            packed_transformed_weights(original, weight, flipped, kernel)
                .into_iter()
                .map(PreparedLhs::Packed)
                .collect();
        return forward_with(run, input, &lhs, backend);
    }
    let u = transform_weights(original, weight, flipped);
    let lhs = (0..POSITIONS)
        .map(|xi| {
            let plane = MatRef::new(&u, xi * rows * cols, (rows, cols), (cols, 1))?;
            Ok(PreparedLhs::new(backend, plane))
        })
        .collect::<candle::Result<Vec<_>>>()?;
    forward_with(run, input, &lhs, backend)
}

/// The 16 `U_ξ` of convolution `g`'s weight (`flipped`: of its flipped convolution's, `C × O`)
/// packed for `kernel` straight from the filters, each filter transformed once.
fn packed_transformed_weights(
    g: &ConvGeometry,
    weight: &[f32],
    flipped: bool,
    kernel: Kernel,
) -> Vec<PackedLhs> {
    let (o, c) = (g.out_channels, g.in_channels);
    let shape = if flipped { (c, o) } else { (o, c) };
    PackedLhs::pack_members(shape, kernel, |i, j| {
        // Row i, column j: filter (i, j), or (j, i) rotated for the flipped convolution.
        let (oo, cc) = if flipped { (j, i) } else { (i, j) };
        transformed_filter(weight, (oo * c + cc) * 9, flipped)
    })
}

/// `y` of convolution `g` from its 16 transformed weights `U_ξ (O × C)`, prepared.
fn forward_with(
    g: &ConvGeometry,
    input: &[f32],
    lhs: &[PreparedLhs<'_>],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    debug_assert_eq!(lhs.len(), POSITIONS, "forward_with: one left operand per position");
    let (o, c) = (g.out_channels, g.in_channels);
    let tiling = Tiling::new(g, c.max(o));
    let bw = tiling.blocks_w;
    let item_in = c * g.in_height * g.in_width;
    let pixels = g.out_pixels();
    let item_out = o * pixels;
    // No zero fill: every output value is written once below.
    // SAFETY: a unit's chunks of block rows cover each of its block rows once; each block row
    // writes its two output rows (the second only inside the output) whole, pairs and the odd
    // last column, for every channel; `written` counts exactly those rows' values.
    unsafe {
        try_par_output(g.output_len(), tiling.items_per_unit * item_out, |unit, out_unit| {
            let mut written = 0;
            let items = out_unit.len() / item_out;
            let first_item = unit * tiling.items_per_unit;
            let in_unit = &input[first_item * item_in..(first_item + items) * item_in];
            // V and M of the largest chunk; each chunk writes all of its part before reading.
            let most = tiling.most_blocks(items);
            let (mut v_buffer, mut m_buffer) =
                (Scratch::take(POSITIONS * c * most), Scratch::take(POSITIONS * o * most));
            // `t = Aᵀ m` of one channel over the chunk: slot `s·2 + i` holds row i, column s.
            let mut t_buffer = vec![0.0f32; 8 * most];
            for (first_row, rows) in tiling.chunks(items) {
                let n = rows * bw;
                let v = &mut v_buffer[..POSITIONS * c * n];
                let m = &mut m_buffer[..POSITIONS * o * n];
                transform_input(g, &tiling, in_unit, (first_row, rows), v);
                for (xi, lhs) in lhs.iter().enumerate() {
                    let rhs = MatRef::new(v, xi * c * n, (c, n), (n, 1))?;
                    let dst = MatMut::new(m, xi * o * n, (o, n), n)?;
                    gemm(backend, lhs.as_lhs(), Rhs::Matrix(rhs), dst, Accumulate::Overwrite)?;
                }
                for channel in 0..o {
                    // The first step over all of the chunk's blocks at once: eight streams of
                    // `n` (one short run per block row was slower: `M` is read from L2).
                    let m_at = |xi: usize| &m[(xi * o + channel) * n..(xi * o + channel + 1) * n];
                    for s in 0..4 {
                        let (m0, m1, m2, m3) = (m_at(s), m_at(4 + s), m_at(8 + s), m_at(12 + s));
                        let (t0, rest) = t_buffer[s * 2 * most..].split_at_mut(most);
                        let (t0, t1) = (&mut t0[..n], &mut rest[..n]);
                        for j in 0..n {
                            t0[j] = m0[j] + m1[j] + m2[j];
                            t1[j] = m1[j] - m2[j] - m3[j];
                        }
                    }
                    for row in 0..rows {
                        let block_row = first_row + row;
                        let (item, by) = (block_row / tiling.blocks_h, block_row % tiling.blocks_h);
                        let plane = item * item_out + channel * pixels;
                        for i in 0..2 {
                            let oy = 2 * by + i;
                            if oy >= g.out_height {
                                break;
                            }
                            let t_at = |s: usize| &t_buffer[(s * 2 + i) * most + row * bw..][..bw];
                            let out_row = &mut out_unit
                                [plane + oy * g.out_width..plane + (oy + 1) * g.out_width];
                            untransform_row([t_at(0), t_at(1), t_at(2), t_at(3)], out_row);
                            written += g.out_width;
                        }
                    }
                }
            }
            Ok(written)
        })
    }
}

/// One output row of `Y = t A`: `out[2·bx] = t0 + t1 + t2`, `out[2·bx + 1] = t1 - t2 - t3`
/// (an odd last column only the first), each `t[s]` `bw = ceil(out.len() / 2)` values.
#[inline(always)]
fn untransform_row(t: [&[f32]; 4], out: &mut [std::mem::MaybeUninit<f32>]) {
    let [t0, t1, t2, t3] = t;
    let bw = out.len().div_ceil(2);
    assert!(t.iter().all(|t| t.len() == bw));
    let pairs = out.len() / 2;
    let mut bx = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each group reads t[s][bx_ .. bx_ + 4] (bx_ + 4 <= pairs <= bw, the lengths
    // asserted above) and writes out[2·bx_ .. 2·bx_ + 8] (2·bx_ + 8 <= 2·pairs <= out.len());
    // `MaybeUninit<f32>` has f32's layout. SSE is part of x86-64's baseline.
    unsafe {
        use std::arch::x86_64::*;
        // Four blocks at a time, interleaved by unpacks (the compiler's vectorised loop needs
        // more blocks than a 16-px row has and fell back to scalar stores). The same sums,
        // in the same order, as the scalar loop below (rows of under four pairs).
        // The last group overlapping the one before where 4 does not divide `pairs` (as in
        // `transform_columns`).
        while pairs >= 4 && bx < pairs {
            let bx_ = bx.min(pairs - 4);
            let load = |t: &[f32]| _mm_loadu_ps(t.as_ptr().add(bx_));
            let (a0, a1, a2, a3) = (load(t0), load(t1), load(t2), load(t3));
            let even = _mm_add_ps(_mm_add_ps(a0, a1), a2);
            let odd = _mm_sub_ps(_mm_sub_ps(a1, a2), a3);
            let to = out.as_mut_ptr().add(2 * bx_).cast::<f32>();
            _mm_storeu_ps(to, _mm_unpacklo_ps(even, odd));
            _mm_storeu_ps(to.add(4), _mm_unpackhi_ps(even, odd));
            bx = bx_ + 4;
        }
    }
    for bx in bx..pairs {
        out[2 * bx].write(t0[bx] + t1[bx] + t2[bx]);
        out[2 * bx + 1].write(t1[bx] - t2[bx] - t3[bx]);
    }
    if out.len() % 2 == 1 {
        out[2 * pairs].write(t0[pairs] + t1[pairs] + t2[pairs]);
    }
}

/// One row `r` of `dM = (A dY) Aᵀ` over a chunk's blocks: `(a, b)` = row r of `A dY` at
/// block j (even and odd column), written as `(a, a + b, a - b, -b)`. One loop per row, so
/// that each vectorises (a `match` on the row inside one loop compiled to scalar code).
#[inline(always)]
fn transform_gradient_row(d: [&mut [f32]; 4], ab: impl Fn(usize) -> (f32, f32)) {
    let [d0, d1, d2, d3] = d;
    let n = d0.len();
    let (d1, d2, d3) = (&mut d1[..n], &mut d2[..n], &mut d3[..n]);
    for j in 0..n {
        let (a, b) = ab(j);
        d0[j] = a;
        d1[j] = a + b;
        d2[j] = a - b;
        d3[j] = -b;
    }
}

/// A row split into its even and odd columns: `even[bx] = row[2·bx]`, `odd[bx] =
/// row[2·bx + 1]`, 0 past the row's end (each `ceil(row.len() / 2)` values).
#[inline(always)]
fn split_row(row: &[f32], even: &mut [f32], odd: &mut [f32]) {
    let pairs = row.len() / 2;
    assert!(even.len() == row.len().div_ceil(2) && odd.len() == even.len());
    let mut bx = 0;
    #[cfg(target_arch = "x86_64")]
    // SAFETY: each group reads row[2·bx_ .. 2·bx_ + 8] (bx_ + 4 <= pairs) and writes
    // even/odd[bx_ .. bx_ + 4] (bx_ + 4 <= pairs <= their length). SSE is x86-64's baseline.
    unsafe {
        use std::arch::x86_64::*;
        // The last group overlapping the one before (as in `transform_columns`).
        while pairs >= 4 && bx < pairs {
            let bx_ = bx.min(pairs - 4);
            let from = row.as_ptr().add(2 * bx_);
            let (a, b) = (_mm_loadu_ps(from), _mm_loadu_ps(from.add(4)));
            _mm_storeu_ps(even.as_mut_ptr().add(bx_), _mm_shuffle_ps::<0x88>(a, b));
            _mm_storeu_ps(odd.as_mut_ptr().add(bx_), _mm_shuffle_ps::<0xDD>(a, b));
            bx = bx_ + 4;
        }
    }
    for bx in bx..pairs {
        even[bx] = row[2 * bx];
        odd[bx] = row[2 * bx + 1];
    }
    if row.len() % 2 == 1 {
        even[pairs] = row[2 * pairs];
        odd[pairs] = 0.0;
    }
}

/// `y = conv2d(x, w)` (see [`applies`]); `input` and `weight` row-major.
pub(crate) fn forward(
    g: &ConvGeometry,
    input: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    forward_from_weight((g, g), input, weight, false, backend)
}

/// `dx` of convolution `g` as the forward pass of its flipped convolution `flipped` (which
/// [`applies`]), `dy (B, O, OH, OW)` and `weight` row-major.
pub(crate) fn backward_input(
    g: &ConvGeometry,
    flipped: &ConvGeometry,
    grad_output: &[f32],
    weight: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    forward_from_weight((g, flipped), grad_output, weight, true, backend)
}

/// `dw` of convolution `g` (which [`applies`]) from `x` and `dy`; both row-major.
pub(crate) fn backward_weight(
    g: &ConvGeometry,
    input: &[f32],
    grad_output: &[f32],
    backend: GemmBackend,
) -> candle::Result<Vec<f32>> {
    let (o, c) = (g.out_channels, g.in_channels);
    let tiling = Tiling::new(g, c.max(o));
    let item_in = c * g.in_height * g.in_width;
    let item_out = o * g.out_pixels();
    let units = g.batch.div_ceil(tiling.items_per_unit);
    let du_len = POSITIONS * o * c;
    let accumulate_unit = |du: &mut [f32], unit: usize, mode: Accumulate| {
        let first_item = unit * tiling.items_per_unit;
        let items = tiling.items_per_unit.min(g.batch - first_item);
        let in_unit = &input[first_item * item_in..(first_item + items) * item_in];
        let dy_unit = &grad_output[first_item * item_out..(first_item + items) * item_out];
        let bw = tiling.blocks_w;
        let pixels = g.out_pixels();
        // V and dM of the largest chunk; each chunk writes all of its part before reading.
        let most = tiling.most_blocks(items);
        let (mut v_buffer, mut dm_buffer) =
            (Scratch::take(POSITIONS * c * most), Scratch::take(POSITIONS * o * most));
        // dY's rows 2·by and 2·by + 1 of one channel over the chunk, split into even and odd
        // columns (0 outside): slots even row 0, even row 1, odd row 0, odd row 1.
        let mut split = vec![0.0f32; 4 * most];
        for (chunk, (first_row, rows)) in tiling.chunks(items).enumerate() {
            // `dU` from the unit's first chunk on: written, then added to.
            let mode = if chunk == 0 { mode } else { Accumulate::Add };
            let n = rows * bw;
            let v = &mut v_buffer[..POSITIONS * c * n];
            let dm = &mut dm_buffer[..POSITIONS * o * n];
            transform_input(g, &tiling, in_unit, (first_row, rows), v);
            for channel in 0..o {
                for row in 0..rows {
                    let block_row = first_row + row;
                    let (item, by) = (block_row / tiling.blocks_h, block_row % tiling.blocks_h);
                    let plane = item * item_out + channel * pixels;
                    for i in 0..2 {
                        let [even_at, odd_at] = [i, 2 + i].map(|slot| slot * most + row * bw);
                        let (before, from_odd) = split.split_at_mut(odd_at);
                        let (e, o_) = (&mut before[even_at..even_at + bw], &mut from_odd[..bw]);
                        let oy = 2 * by + i;
                        if oy >= g.out_height {
                            e.fill(0.0);
                            o_.fill(0.0);
                            continue;
                        }
                        let dy_row =
                            &dy_unit[plane + oy * g.out_width..plane + (oy + 1) * g.out_width];
                        split_row(dy_row, e, o_);
                    }
                }
                // dM = A dY Aᵀ over all of the chunk's blocks at once (16 streams of `n`; one
                // short run per block row was slower): row r of A dY is (y0, y0 + y1,
                // y0 - y1, -y1) per column.
                let [e0, e1, o0, o1] = [0, 1, 2, 3].map(|slot| &split[slot * most..][..n]);
                let (at, on) = (|r: usize| r * 4 * o * n + channel * n, o * n);
                transform_gradient_row(four_runs(dm, at(0), on, n), |j| (e0[j], o0[j]));
                transform_gradient_row(four_runs(dm, at(1), on, n), |j| {
                    (e0[j] + e1[j], o0[j] + o1[j])
                });
                transform_gradient_row(four_runs(dm, at(2), on, n), |j| {
                    (e0[j] - e1[j], o0[j] - o1[j])
                });
                transform_gradient_row(four_runs(dm, at(3), on, n), |j| (-e1[j], -o1[j]));
            }
            for xi in 0..POSITIONS {
                let lhs = MatRef::new(dm, xi * o * n, (o, n), (n, 1))?;
                let rhs = MatRef::new(v, xi * c * n, (c, n), (n, 1))?.transpose();
                let dst = MatMut::new(du, xi * o * c, (o, c), c)?;
                gemm(backend, Lhs::Plain(lhs), Rhs::Matrix(rhs), dst, mode)?;
            }
        }
        Ok(())
    };
    let du = sum_in_fixed_runs(units, du_len, accumulate_unit)?;
    Ok(untransform_filter_gradients(&du, o, c))
}

/// `dw (O, C, 3, 3)` from `dU` (16 planes of `O × C`): filters in parallel, each filter's
/// `C·9` values written whole from the 16 planes' rows, read in order.
fn untransform_filter_gradients(du: &[f32], o: usize, c: usize) -> Vec<f32> {
    let plane = o * c;
    // SAFETY: each chunk is one filter's C·9 values; every channel's 9 are written below.
    unsafe {
        par_output(plane * 9, c * 9, |filter, out| {
            for (channel, dst) in out.chunks_exact_mut(9).enumerate() {
                let index = filter * c + channel;
                let dg =
                    untransform_filter_gradient(std::array::from_fn(|xi| du[xi * plane + index]));
                for (d, value) in dst.iter_mut().zip(dg) {
                    d.write(value);
                }
            }
            c * 9
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 4×4 patch and a 3×3 filter whose 2×2 correlation is easy by hand.
    #[test]
    fn one_block_equals_the_direct_correlation() {
        let d: [f32; 16] = std::array::from_fn(|i| (i as f32) * 0.5 - 3.0);
        let g: [f32; 9] = [1.0, -2.0, 0.5, 0.25, 3.0, -1.0, 2.0, 0.0, -0.5];
        let v = transform_patch(&d);
        let u = transform_filter(g);
        let m: [f32; 16] = std::array::from_fn(|i| u[i] * v[i]);
        let y = untransform_block(&m);
        for (k, got) in y.iter().enumerate() {
            let (i, j) = (k / 2, k % 2);
            let mut want = 0.0f32;
            for a in 0..3 {
                for b in 0..3 {
                    want += d[(i + a) * 4 + j + b] * g[a * 3 + b];
                }
            }
            assert!((got - want).abs() < 1e-5, "y[{i}][{j}]: {got} vs {want}");
        }
    }

    /// The filter gradient through the transforms equals the direct one: for a loss
    /// `Σ dY ⊙ Y`, `dg[a][b] = Σ_ij dY[i][j] d[i+a][j+b]`.
    #[test]
    fn one_block_filter_gradient_equals_the_direct_one() {
        let d: [f32; 16] = std::array::from_fn(|i| ((i * 7) % 5) as f32 - 1.5);
        let dy = [0.5f32, -1.0, 2.0, 0.25];
        let v = transform_patch(&d);
        let dm = transform_block_gradient(&dy);
        let du: [f32; 16] = std::array::from_fn(|i| dm[i] * v[i]);
        let dg = untransform_filter_gradient(du);
        for a in 0..3 {
            for b in 0..3 {
                let mut want = 0.0f32;
                for i in 0..2 {
                    for j in 0..2 {
                        want += dy[i * 2 + j] * d[(i + a) * 4 + j + b];
                    }
                }
                let got = dg[a * 3 + b];
                assert!((got - want).abs() < 1e-5, "dg[{a}][{b}]: {got} vs {want}");
            }
        }
    }

    /// The 16 `U_ξ` packed straight from the filters equal the planes packed one by one, bit
    /// for bit, for both convolutions (O ≠ C: a swapped index fails; 13 rows: a partial panel).
    #[test]
    fn transformed_weights_pack_like_their_planes() {
        let g = ConvGeometry {
            batch: 1,
            in_channels: 5,
            in_height: 8,
            in_width: 8,
            out_channels: 13,
            kernel_height: 3,
            kernel_width: 3,
            out_height: 8,
            out_width: 8,
            padding: 1,
            stride: 1,
            dilation: 1,
            groups: 1,
        };
        let weight: Vec<f32> =
            (0..13 * 5 * 9).map(|i| ((i * 29) % 31) as f32 * 0.125 - 1.9).collect();
        for kernel in [Kernel::Avx2, Kernel::Avx512] {
            for flipped in [false, true] {
                let (rows, cols) = if flipped { (5, 13) } else { (13, 5) };
                let planes = transform_weights(&g, &weight, flipped);
                let packed = packed_transformed_weights(&g, &weight, flipped, kernel);
                assert_eq!(packed.len(), POSITIONS);
                for (xi, member) in packed.iter().enumerate() {
                    let plane = MatRef::new(&planes, xi * rows * cols, (rows, cols), (cols, 1));
                    let alone = PackedLhs::pack(plane.unwrap(), kernel);
                    assert_eq!((member.rows(), member.cols()), (rows, cols));
                    assert_eq!(member.values(), alone.values(), "{kernel:?} {flipped} {xi}");
                }
            }
        }
    }

    /// `transform_input` over chunks that start and end inside items, on odd and even sizes
    /// and paddings 0-2, equals [`transform_patch`] of each block's zero-padded 4×4 patch:
    /// the same two-term sums, so to float rounding (the steps run in the other order).
    #[test]
    fn transform_input_equals_the_patch_transform() {
        for (height, width, padding) in [(9, 10, 1), (8, 8, 0), (7, 12, 2), (16, 16, 1)] {
            let (out_height, out_width) = (height + 2 * padding - 2, width + 2 * padding - 2);
            let g = ConvGeometry {
                batch: 3,
                in_channels: 2,
                in_height: height,
                in_width: width,
                out_channels: 2,
                kernel_height: 3,
                kernel_width: 3,
                out_height,
                out_width,
                padding,
                stride: 1,
                dilation: 1,
                groups: 1,
            };
            let input: Vec<f32> = (0..g.batch * 2 * height * width)
                .map(|i| ((i * 37) % 23) as f32 * 0.25 - 2.0)
                .collect();
            let at = |item: usize, channel: usize, y: isize, x: isize| {
                let inside = (0..height as isize).contains(&y) && (0..width as isize).contains(&x);
                let index = ((item * 2 + channel) * height + y.max(0) as usize) * width;
                if inside { input[index + x as usize] } else { 0.0 }
            };
            let (bh, bw) = (out_height.div_ceil(2), out_width.div_ceil(2));
            // Chunks of 3 block rows over all items: runs cut inside items and across them.
            let tiling =
                Tiling { blocks_h: bh, blocks_w: bw, items_per_unit: 3, rows_per_chunk: 3 };
            for (first_row, rows) in tiling.chunks(3) {
                let n = rows * bw;
                let mut v = vec![f32::NAN; POSITIONS * 2 * n];
                transform_input(&g, &tiling, &input, (first_row, rows), &mut v);
                for row in 0..rows {
                    let (item, by) = ((first_row + row) / bh, (first_row + row) % bh);
                    for (channel, bx) in (0..2).flat_map(|c| (0..bw).map(move |bx| (c, bx))) {
                        let d: [f32; 16] = std::array::from_fn(|i| {
                            let y = (2 * by + i / 4) as isize - padding as isize;
                            at(item, channel, y, (2 * bx + i % 4) as isize - padding as isize)
                        });
                        let want = transform_patch(&d);
                        for (xi, want) in want.iter().enumerate() {
                            let got = v[(xi * 2 + channel) * n + row * bw + bx];
                            assert!(
                                (got - want).abs() <= 1e-5,
                                "{height}x{width} p{padding} row {} block {bx} channel \
                                 {channel} position {xi}: {got} vs {want}",
                                first_row + row
                            );
                        }
                    }
                }
            }
        }
    }

    /// `untransform_row` (four blocks at a time by SSE, the last group overlapping the one
    /// before; under four pairs one by one; then an odd last column) equals the scalar
    /// formula at every width from 1 to 13, bit for bit (the same sums in the same order);
    /// `split_row` returns each column to its place, 0 past the end; `transform_columns`
    /// gives each block's four column-step sums; none writes outside its outputs.
    #[test]
    fn row_helpers_match_the_scalar_formulas_and_stay_in_bounds() {
        // Each output lies inside a larger buffer between sentinels: a write past either end
        // (which the slices' own bounds would not catch, the stores being raw) changes one.
        const SENTINEL: f32 = -7.25;
        let sentinels_kept = |buffer: &[f32], what: &str| {
            let ends = [buffer[0], buffer[buffer.len() - 1]];
            assert!(ends.iter().all(|&x| x == SENTINEL), "{what}: written past its ends");
        };
        for width in 1..=13usize {
            let bw = width.div_ceil(2);
            let t: Vec<Vec<f32>> = (0..4)
                .map(|s| (0..bw).map(|bx| ((s * 31 + bx * 7) % 11) as f32 * 0.37 - 1.5).collect())
                .collect();
            let mut out = vec![std::mem::MaybeUninit::new(SENTINEL); width + 2];
            untransform_row([&t[0], &t[1], &t[2], &t[3]], &mut out[1..=width]);
            // SAFETY: every element was initialised (the sentinel) before the call.
            let out: Vec<f32> = out.iter().map(|x| unsafe { x.assume_init() }).collect();
            sentinels_kept(&out, "output row");
            for (x, got) in out[1..=width].iter().enumerate() {
                let bx = x / 2;
                let want = match x % 2 {
                    0 => t[0][bx] + t[1][bx] + t[2][bx],
                    _ => t[1][bx] - t[2][bx] - t[3][bx],
                };
                assert_eq!(got.to_bits(), want.to_bits(), "width {width}, column {x}");
            }
            let row: Vec<f32> = (0..width).map(|x| x as f32 + 1.0).collect();
            let mut split = vec![SENTINEL; 2 * bw + 3];
            let (even, odd) = split[1..].split_at_mut(bw + 1);
            split_row(&row, &mut even[..bw], &mut odd[..bw]);
            sentinels_kept(&split, "split row");
            assert_eq!(split[bw + 1], SENTINEL, "width {width}: even written past its end");
            for bx in 0..bw {
                assert_eq!(split[1 + bx], (2 * bx + 1) as f32, "width {width}, even {bx}");
                let want = if 2 * bx + 1 < width { (2 * bx + 2) as f32 } else { 0.0 };
                assert_eq!(split[bw + 2 + bx], want, "width {width}, odd {bx}");
            }
            // The column step on a padded row of `2·bw + 2` values: each of the four outputs
            // between sentinels, against the formula.
            let padded: Vec<f32> = (0..2 * bw + 2).map(|x| ((x * 13) % 7) as f32 - 2.5).collect();
            let mut h = vec![SENTINEL; 4 * (bw + 1) + 1];
            let [h0, h1, h2, h3] = four_runs(&mut h[1..], 0, bw + 1, bw);
            transform_columns(&padded, [h0, h1, h2, h3]);
            for s in 0..4 {
                let (start, gap) = (1 + s * (bw + 1), s * (bw + 1));
                assert_eq!(h[gap], SENTINEL, "width {width}: h{s} written before its start");
                for bx in 0..bw {
                    let p = &padded[2 * bx..2 * bx + 4];
                    let want = [p[0] - p[2], p[1] + p[2], p[2] - p[1], p[1] - p[3]][s];
                    assert_eq!(
                        h[start + bx].to_bits(),
                        want.to_bits(),
                        "width {width}, h{s}[{bx}]"
                    );
                }
            }
            sentinels_kept(&h, "column step");
        }
    }
}
