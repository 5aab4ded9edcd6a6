//! Helpers shared by the integration tests: seeded inputs and naive f64
//! reference convolutions (forward and both gradients) written as the textbook loops.

#![allow(dead_code)]

use candle::{Device, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A tensor of uniform values in [-1, 1) drawn from a seeded RNG.
pub(crate) fn seeded_tensor(dims: &[usize], seed: u64) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count: usize = dims.iter().product();
    let values: Vec<f32> = (0..count).map(|_| rng.random_range(-1.0f32..1.0)).collect();
    // A freshly built Vec always has exactly the element count of `dims`.
    Tensor::from_vec(values, dims, &Device::Cpu).expect("element count matches the shape")
}

/// A tensor whose values are a seeded permutation of `0, 1, …, n-1` scaled by `spacing`
/// and shifted by `offset`: all distinct, so max pooling has no ties.
pub(crate) fn distinct_tensor(dims: &[usize], seed: u64, spacing: f32, offset: f32) -> Tensor {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let count: usize = dims.iter().product();
    let mut order: Vec<usize> = (0..count).collect();
    for i in (1..count).rev() {
        let j = rng.random_range(0..=i);
        order.swap(i, j);
    }
    let values: Vec<f32> = order.iter().map(|&v| v as f32 * spacing + offset).collect();
    Tensor::from_vec(values, dims, &Device::Cpu).expect("element count matches the shape")
}

pub(crate) fn to_vec(t: &Tensor) -> Vec<f32> {
    t.flatten_all().and_then(|t| t.to_vec1::<f32>()).expect("an f32 tensor")
}

/// Convolution parameters for the naive reference.
#[derive(Debug, Clone, Copy)]
pub(crate) struct NaiveConv {
    pub(crate) padding: usize,
    pub(crate) stride: usize,
    pub(crate) dilation: usize,
    pub(crate) groups: usize,
}

pub(crate) struct ConvDims {
    pub(crate) b: usize,
    pub(crate) c: usize,
    pub(crate) h: usize,
    pub(crate) w: usize,
    pub(crate) o: usize,
    pub(crate) kh: usize,
    pub(crate) kw: usize,
    pub(crate) oh: usize,
    pub(crate) ow: usize,
}

impl NaiveConv {
    pub(crate) fn dims(&self, x: &[usize], w: &[usize]) -> ConvDims {
        let (kh, kw) = (w[2], w[3]);
        let oh = (x[2] + 2 * self.padding - self.dilation * (kh - 1) - 1) / self.stride + 1;
        let ow = (x[3] + 2 * self.padding - self.dilation * (kw - 1) - 1) / self.stride + 1;
        ConvDims { b: x[0], c: x[1], h: x[2], w: x[3], o: w[0], kh, kw, oh, ow }
    }

    /// Calls `f(b, o, c, oy, ox, iy, ix, ky, kx)` for every multiply-add of the convolution
    /// that reads an in-bounds input pixel.
    fn for_each_mac(&self, d: &ConvDims, mut f: impl FnMut([usize; 9])) {
        let (cg, og) = (d.c / self.groups, d.o / self.groups);
        for b in 0..d.b {
            for o in 0..d.o {
                let group = o / og;
                for ci in 0..cg {
                    let c = group * cg + ci;
                    for oy in 0..d.oh {
                        for ox in 0..d.ow {
                            for ky in 0..d.kh {
                                for kx in 0..d.kw {
                                    let iy = (oy * self.stride + ky * self.dilation) as isize
                                        - self.padding as isize;
                                    let ix = (ox * self.stride + kx * self.dilation) as isize
                                        - self.padding as isize;
                                    if iy < 0 || ix < 0 || iy >= d.h as isize || ix >= d.w as isize
                                    {
                                        continue;
                                    }
                                    f([b, o, ci, oy, ox, iy as usize, ix as usize, ky, kx]);
                                }
                            }
                        }
                    }
                    let _ = c;
                }
            }
        }
    }

    /// Forward, accumulated in f64.
    pub(crate) fn forward(&self, x: &Tensor, w: &Tensor) -> Tensor {
        let d = self.dims(x.dims(), w.dims());
        let (xs, ws) = (to_vec(x), to_vec(w));
        let (cg, og) = (d.c / self.groups, d.o / self.groups);
        let mut y = vec![0.0f64; d.b * d.o * d.oh * d.ow];
        self.for_each_mac(&d, |[b, o, ci, oy, ox, iy, ix, ky, kx]| {
            let c = (o / og) * cg + ci;
            let xv = xs[((b * d.c + c) * d.h + iy) * d.w + ix] as f64;
            let wv = ws[((o * cg + ci) * d.kh + ky) * d.kw + kx] as f64;
            y[((b * d.o + o) * d.oh + oy) * d.ow + ox] += xv * wv;
        });
        let y: Vec<f32> = y.into_iter().map(|v| v as f32).collect();
        Tensor::from_vec(y, (d.b, d.o, d.oh, d.ow), &Device::Cpu).expect("element count matches")
    }

    /// Gradients of `sum(conv(x, w) * g)` with respect to x and w, accumulated in f64.
    pub(crate) fn gradients(&self, x: &Tensor, w: &Tensor, g: &Tensor) -> (Tensor, Tensor) {
        let d = self.dims(x.dims(), w.dims());
        let (xs, ws, gs) = (to_vec(x), to_vec(w), to_vec(g));
        let (cg, og) = (d.c / self.groups, d.o / self.groups);
        let mut dx = vec![0.0f64; xs.len()];
        let mut dw = vec![0.0f64; ws.len()];
        self.for_each_mac(&d, |[b, o, ci, oy, ox, iy, ix, ky, kx]| {
            let c = (o / og) * cg + ci;
            let xi = ((b * d.c + c) * d.h + iy) * d.w + ix;
            let wi = ((o * cg + ci) * d.kh + ky) * d.kw + kx;
            let gv = gs[((b * d.o + o) * d.oh + oy) * d.ow + ox] as f64;
            dx[xi] += ws[wi] as f64 * gv;
            dw[wi] += xs[xi] as f64 * gv;
        });
        let dx: Vec<f32> = dx.into_iter().map(|v| v as f32).collect();
        let dw: Vec<f32> = dw.into_iter().map(|v| v as f32).collect();
        (
            Tensor::from_vec(dx, x.dims(), &Device::Cpu).expect("element count matches"),
            Tensor::from_vec(dw, w.dims(), &Device::Cpu).expect("element count matches"),
        )
    }
}
