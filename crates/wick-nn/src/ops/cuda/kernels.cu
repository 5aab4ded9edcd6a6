// wick-nn's CUDA kernels: ReLU (PyTorch's gradient rule), max/avg pooling with PyTorch's
// semantics and a deterministic backward, and the fused train-mode BatchNorm(+ReLU).
//
// Compiled to PTX by crates/wick-nn/build.rs (nvcc --ptx -fmad=false) when the `cuda` feature
// is on, embedded in the library, and loaded by candle's CudaDevice::get_or_load_custom_func.
//
// Every kernel mirrors the CPU reference in ../pool.rs, ../activation.rs and ../batch_norm.rs
// operation by operation (same summation orders where the CPU fixes one, no fused
// multiply-adds), so that f32 results agree with the CPU to the last bit or nearly, and
// bf16/f16 results are the CPU's f32 result rounded once. Element type T is float,
// __nv_bfloat16 or __half; arithmetic is always float (double for BatchNorm's sums).
//
// Shapes: (B, C, H, W) row-major contiguous; `planes` = B*C.

#include <cuda_bf16.h>
#include <cuda_fp16.h>

__device__ __forceinline__ float load(float v) { return v; }
__device__ __forceinline__ float load(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ float load(__half v) { return __half2float(v); }

template <typename T> __device__ __forceinline__ T store(float v);
template <> __device__ __forceinline__ float store<float>(float v) { return v; }
template <> __device__ __forceinline__ __nv_bfloat16 store<__nv_bfloat16>(float v) {
    return __float2bfloat16_rn(v);
}
template <> __device__ __forceinline__ __half store<__half>(float v) { return __float2half_rn(v); }

#define GRID_STRIDE(i, n)                                                                       \
    for (unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;    \
         i < (unsigned long long)(n); i += (unsigned long long)blockDim.x * gridDim.x)

// ------------------------------------------------------------------------------------------
// ReLU: forward max(x, 0) keeping NaN (torch.relu(nan) = nan; fmaxf would map it to 0);
// backward zeroes the gradient where the forward output is <= 0 (PyTorch's threshold_backward:
// 0 at exactly 0, NaN passes), as activation.rs does on the CPU.
// ------------------------------------------------------------------------------------------

__device__ __forceinline__ float relu_value(float v) { return v <= 0.0f ? 0.0f : v; }

template <typename T>
__device__ void relu_fwd(unsigned long long n, const T* x, T* y) {
    GRID_STRIDE(i, n) { y[i] = store<T>(relu_value(load(x[i]))); }
}

template <typename T>
__device__ void add_relu_fwd(unsigned long long n, const T* a, const T* b, T* y) {
    GRID_STRIDE(i, n) { y[i] = store<T>(relu_value(load(a[i]) + load(b[i]))); }
}

template <typename T>
__device__ void relu_bwd(unsigned long long n, const T* out, const T* grad, T* dx) {
    GRID_STRIDE(i, n) { dx[i] = load(out[i]) <= 0.0f ? store<T>(0.0f) : grad[i]; }
}

// ------------------------------------------------------------------------------------------
// Pooling. The window of output index `o` along a dimension of size `in` (pool.rs's
// Window::range): it starts at o*stride in padded coordinates and ends at
// min(start + k, in + 2*pad); `count` (its padded length) divides average pooling; the
// clipped range [lo, hi) is the part inside the input.
// ------------------------------------------------------------------------------------------

struct Range {
    int lo, hi, count;
};

__device__ __forceinline__ Range window_range(int o, int in, int k, int stride, int pad) {
    int start = o * stride;
    int padded_end = min(start + k, in + 2 * pad);
    Range r;
    r.count = padded_end - start;
    r.lo = max(start - pad, 0);
    int hi = min(max(padded_end - pad, 0), in);
    r.hi = max(hi, r.lo);
    return r;
}

// Flat index `i` of a row-major (planes, h, w) tensor as its plane and its coordinates there.
struct PlaneIndex {
    unsigned long long plane;
    int y, x;
};

__device__ __forceinline__ PlaneIndex plane_index(unsigned long long i, int h, int w) {
    PlaneIndex r;
    r.x = (int)(i % w);
    r.y = (int)((i / w) % h);
    r.plane = i / ((unsigned long long)w * h);
    return r;
}

// The output indices whose window covers input index `i`: [first, last], possibly empty.
__device__ __forceinline__ void covering_outputs(int i, int out, int k, int stride, int pad,
                                                 int* first, int* last) {
    // Window o covers i when o*stride - pad <= i < o*stride - pad + k.
    int hi = (i + pad) / stride;
    int lo_num = i + pad - k + 1;
    int lo = lo_num <= 0 ? 0 : (lo_num + stride - 1) / stride;
    *first = lo;
    *last = min(hi, out - 1);
}

// NaN beats numbers; otherwise strictly greater (PyTorch's scan keeps the first maximum).
__device__ __forceinline__ bool beats(float value, float best) {
    return (value > best) || (isnan(value) && !isnan(best));
}

// The first maximum of a window in row-major order, as a flat index into the plane.
template <typename T>
__device__ __forceinline__ int argmax_in(const T* plane, Range ry, Range rx, int width,
                                         float* best_out) {
    int best_index = ry.lo * width + rx.lo;
    float best = load(plane[best_index]);
    for (int y = ry.lo; y < ry.hi; ++y) {
        for (int x = rx.lo; x < rx.hi; ++x) {
            float v = load(plane[y * width + x]);
            if (beats(v, best)) {
                best = v;
                best_index = y * width + x;
            }
        }
    }
    *best_out = best;
    return best_index;
}

template <typename T>
__device__ void max_pool_fwd(int planes, int height, int width, int out_h, int out_w, int k,
                             int stride, int pad, const T* x, T* y) {
    unsigned long long n = (unsigned long long)planes * out_h * out_w;
    GRID_STRIDE(i, n) {
        PlaneIndex o = plane_index(i, out_h, out_w);
        const T* p = x + o.plane * height * width;
        Range ry = window_range(o.y, height, k, stride, pad);
        Range rx = window_range(o.x, width, k, stride, pad);
        float best;
        argmax_in(p, ry, rx, width, &best);
        y[i] = store<T>(best);
    }
}

// One thread per input element: the sum of the gradients of every window whose first maximum
// it is, added in output scan order (the CPU's order, so f32 sums match it exactly).
template <typename T>
__device__ void max_pool_bwd(int planes, int height, int width, int out_h, int out_w, int k,
                             int stride, int pad, const T* x, const T* dy, T* dx) {
    unsigned long long n = (unsigned long long)planes * height * width;
    GRID_STRIDE(i, n) {
        PlaneIndex at = plane_index(i, height, width);
        int ix = at.x, iy = at.y;
        unsigned long long plane = at.plane;
        const T* p = x + plane * height * width;
        const T* g = dy + plane * out_h * out_w;
        int oy0, oy1, ox0, ox1;
        covering_outputs(iy, out_h, k, stride, pad, &oy0, &oy1);
        covering_outputs(ix, out_w, k, stride, pad, &ox0, &ox1);
        int self_index = iy * width + ix;
        float sum = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            Range ry = window_range(oy, height, k, stride, pad);
            if (iy < ry.lo || iy >= ry.hi) continue;
            for (int ox = ox0; ox <= ox1; ++ox) {
                Range rx = window_range(ox, width, k, stride, pad);
                if (ix < rx.lo || ix >= rx.hi) continue;
                float best;
                if (argmax_in(p, ry, rx, width, &best) == self_index) {
                    sum += load(g[oy * out_w + ox]);
                }
            }
        }
        dx[i] = store<T>(sum);
    }
}

// Average pooling (count_include_pad): per window, column sums over its rows, then the sum of
// those over its columns from 0, divided by the padded window size (pool.rs's order).
template <typename T>
__device__ void avg_pool_fwd(int planes, int height, int width, int out_h, int out_w, int k,
                             int stride, int pad, const T* x, T* y) {
    unsigned long long n = (unsigned long long)planes * out_h * out_w;
    GRID_STRIDE(i, n) {
        PlaneIndex o = plane_index(i, out_h, out_w);
        const T* p = x + o.plane * height * width;
        Range ry = window_range(o.y, height, k, stride, pad);
        Range rx = window_range(o.x, width, k, stride, pad);
        float total = 0.0f;
        for (int xx = rx.lo; xx < rx.hi; ++xx) {
            float column = load(p[ry.lo * width + xx]);
            for (int yy = ry.lo + 1; yy < ry.hi; ++yy) column += load(p[yy * width + xx]);
            total += column;
        }
        y[i] = store<T>(total / (float)(ry.count * rx.count));
    }
}

// One thread per input element: for each covering output row (ascending), the row's shares
// summed over the covering output columns (ascending), added up (pool.rs's order).
template <typename T>
__device__ void avg_pool_bwd(int planes, int height, int width, int out_h, int out_w, int k,
                             int stride, int pad, const T* dy, T* dx) {
    unsigned long long n = (unsigned long long)planes * height * width;
    GRID_STRIDE(i, n) {
        PlaneIndex at = plane_index(i, height, width);
        int ix = at.x, iy = at.y;
        unsigned long long plane = at.plane;
        const T* g = dy + plane * out_h * out_w;
        int oy0, oy1, ox0, ox1;
        covering_outputs(iy, out_h, k, stride, pad, &oy0, &oy1);
        covering_outputs(ix, out_w, k, stride, pad, &ox0, &ox1);
        float sum = 0.0f;
        for (int oy = oy0; oy <= oy1; ++oy) {
            Range ry = window_range(oy, height, k, stride, pad);
            if (iy < ry.lo || iy >= ry.hi) continue;
            float row = 0.0f;
            for (int ox = ox0; ox <= ox1; ++ox) {
                Range rx = window_range(ox, width, k, stride, pad);
                if (ix < rx.lo || ix >= rx.hi) continue;
                row += load(g[oy * out_w + ox]) / (float)(ry.count * rx.count);
            }
            sum += row;
        }
        dx[i] = store<T>(sum);
    }
}

// ------------------------------------------------------------------------------------------
// Fused train-mode BatchNorm(+ReLU), batch_norm.rs's arithmetic:
//   forward   y = x*scale + shift (then max(y, 0)), scale = w*istd, shift = b - mean*scale
//   backward  g = dy masked where the recomputed y <= 0 (ReLU only);
//             dβ = Σg, dγ = Σ g·(x - mean) · istd,
//             dx = scale · (g - dβ/n - (x - mean) · (dγ/n · istd))
// Per-channel sums go in two deterministic steps: each block of a (splits, C) grid sums a
// contiguous segment of its channel in double, then one thread per channel adds the
// segments in order. `stats` is (3, C) f32: mean, biased variance, 1/sqrt(var + eps).
// ------------------------------------------------------------------------------------------

#define BN_THREADS 256

__device__ __forceinline__ void block_sum2(double* a, double* b) {
    __shared__ double sa[BN_THREADS / 32];
    __shared__ double sb[BN_THREADS / 32];
    double va = *a, vb = *b;
    for (int offset = 16; offset > 0; offset >>= 1) {
        va += __shfl_down_sync(0xffffffff, va, offset);
        vb += __shfl_down_sync(0xffffffff, vb, offset);
    }
    int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    if (lane == 0) {
        sa[warp] = va;
        sb[warp] = vb;
    }
    __syncthreads();
    if (warp == 0) {
        va = lane < BN_THREADS / 32 ? sa[lane] : 0.0;
        vb = lane < BN_THREADS / 32 ? sb[lane] : 0.0;
        for (int offset = 16; offset > 0; offset >>= 1) {
            va += __shfl_down_sync(0xffffffff, va, offset);
            vb += __shfl_down_sync(0xffffffff, vb, offset);
        }
    }
    *a = va;
    *b = vb;
}

// The segment [begin, end) of channel c's n = batch*plane elements handled by this block.
__device__ __forceinline__ void segment(int splits, unsigned long long n,
                                        unsigned long long* begin, unsigned long long* end) {
    unsigned long long chunk = (n + splits - 1) / splits;
    *begin = chunk * blockIdx.x;
    *end = min(*begin + chunk, n);
}

__device__ __forceinline__ unsigned long long channel_offset(unsigned long long j, int channels,
                                                             int c, unsigned long long plane) {
    unsigned long long b = j / plane, p = j % plane;
    return (b * channels + c) * plane + p;
}

template <typename T>
__device__ void bn_partial_stats(int batch, int channels, unsigned long long plane, int splits,
                                 const T* x, double* partial) {
    int c = blockIdx.y;
    unsigned long long n = (unsigned long long)batch * plane, begin, end;
    segment(splits, n, &begin, &end);
    double sum = 0.0, squares = 0.0;
    for (unsigned long long j = begin + threadIdx.x; j < end; j += BN_THREADS) {
        double v = (double)load(x[channel_offset(j, channels, c, plane)]);
        sum += v;
        squares += v * v;
    }
    block_sum2(&sum, &squares);
    if (threadIdx.x == 0) {
        partial[2 * ((unsigned long long)c * splits + blockIdx.x)] = sum;
        partial[2 * ((unsigned long long)c * splits + blockIdx.x) + 1] = squares;
    }
}

extern "C" __global__ void wick_bn_finalize_stats(int channels, int splits, double count,
                                                  double eps, const double* partial,
                                                  float* stats) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double sum = 0.0, squares = 0.0;
    for (int s = 0; s < splits; ++s) {
        sum += partial[2 * ((unsigned long long)c * splits + s)];
        squares += partial[2 * ((unsigned long long)c * splits + s) + 1];
    }
    double mean = sum / count;
    double variance = fmax(squares / count - mean * mean, 0.0);
    float variance_f = (float)variance;
    stats[c] = (float)mean;
    stats[channels + c] = variance_f;
    stats[2 * channels + c] = (float)(1.0 / sqrt((double)variance_f + eps));
}

struct ChannelAffine {
    float mean, istd, weight, scale, shift;
};

__device__ __forceinline__ ChannelAffine channel_affine(int c, int channels, const float* stats,
                                                        const float* weight, const float* bias) {
    ChannelAffine a;
    a.mean = stats[c];
    a.istd = stats[2 * channels + c];
    a.weight = weight[c];
    a.scale = a.weight * a.istd;
    a.shift = bias[c] - a.mean * a.scale;
    return a;
}

template <typename T>
__device__ void bn_apply(unsigned long long n, int channels, unsigned long long plane, int relu,
                         const T* x, const float* stats, const float* weight, const float* bias,
                         T* y) {
    GRID_STRIDE(i, n) {
        int c = (int)((i / plane) % channels);
        ChannelAffine a = channel_affine(c, channels, stats, weight, bias);
        float v = load(x[i]) * a.scale + a.shift;
        y[i] = store<T>(relu ? relu_value(v) : v);
    }
}

__device__ __forceinline__ float masked(int relu, float x, float g, const ChannelAffine& a) {
    return (!relu || !(x * a.scale + a.shift <= 0.0f)) ? g : 0.0f;
}

template <typename T>
__device__ void bn_partial_grad(int batch, int channels, unsigned long long plane, int splits,
                                int relu, const T* x, const T* dy, const float* stats,
                                const float* weight, const float* bias, double* partial) {
    int c = blockIdx.y;
    ChannelAffine a = channel_affine(c, channels, stats, weight, bias);
    unsigned long long n = (unsigned long long)batch * plane, begin, end;
    segment(splits, n, &begin, &end);
    double sum_g = 0.0, sum_gx = 0.0;
    for (unsigned long long j = begin + threadIdx.x; j < end; j += BN_THREADS) {
        unsigned long long at = channel_offset(j, channels, c, plane);
        float xv = load(x[at]);
        float g = masked(relu, xv, load(dy[at]), a);
        sum_g += (double)g;
        sum_gx += (double)(g * (xv - a.mean));
    }
    block_sum2(&sum_g, &sum_gx);
    if (threadIdx.x == 0) {
        partial[2 * ((unsigned long long)c * splits + blockIdx.x)] = sum_g;
        partial[2 * ((unsigned long long)c * splits + blockIdx.x) + 1] = sum_gx;
    }
}

// sums (2, C): Σg and Σg·x̂.
extern "C" __global__ void wick_bn_finalize_grad(int channels, int splits, const double* partial,
                                                 const float* stats, float* sums) {
    int c = blockIdx.x * blockDim.x + threadIdx.x;
    if (c >= channels) return;
    double sum_g = 0.0, sum_gx = 0.0;
    for (int s = 0; s < splits; ++s) {
        sum_g += partial[2 * ((unsigned long long)c * splits + s)];
        sum_gx += partial[2 * ((unsigned long long)c * splits + s) + 1];
    }
    sums[c] = (float)sum_g;
    sums[channels + c] = (float)(sum_gx * (double)stats[2 * channels + c]);
}

template <typename T>
__device__ void bn_grad_input(unsigned long long n, int channels, unsigned long long plane,
                              int relu, float count, const T* x, const T* dy, const float* stats,
                              const float* weight, const float* bias, const float* sums, T* dx) {
    GRID_STRIDE(i, n) {
        int c = (int)((i / plane) % channels);
        ChannelAffine a = channel_affine(c, channels, stats, weight, bias);
        float mean_g = sums[c] / count;
        float x_coefficient = sums[channels + c] / count * a.istd;
        float xv = load(x[i]);
        float g = masked(relu, xv, load(dy[i]), a);
        dx[i] = store<T>(a.scale * (g - mean_g - (xv - a.mean) * x_coefficient));
    }
}

// ------------------------------------------------------------------------------------------
// Exported instances: <name>_f32, <name>_bf16, <name>_f16.
// ------------------------------------------------------------------------------------------

#define POOL_ARGS int planes, int height, int width, int out_h, int out_w, int k, int stride, int pad
#define POOL_PASS planes, height, width, out_h, out_w, k, stride, pad

#define INSTANCES(T, SFX)                                                                       \
    extern "C" __global__ void wick_relu_fwd_##SFX(unsigned long long n, const T* x, T* y) {   \
        relu_fwd<T>(n, x, y);                                                                   \
    }                                                                                           \
    extern "C" __global__ void wick_add_relu_fwd_##SFX(unsigned long long n, const T* a,       \
                                                       const T* b, T* y) {                      \
        add_relu_fwd<T>(n, a, b, y);                                                            \
    }                                                                                           \
    extern "C" __global__ void wick_relu_bwd_##SFX(unsigned long long n, const T* out,         \
                                                   const T* grad, T* dx) {                      \
        relu_bwd<T>(n, out, grad, dx);                                                          \
    }                                                                                           \
    extern "C" __global__ void wick_max_pool_fwd_##SFX(POOL_ARGS, const T* x, T* y) {          \
        max_pool_fwd<T>(POOL_PASS, x, y);                                                       \
    }                                                                                           \
    extern "C" __global__ void wick_max_pool_bwd_##SFX(POOL_ARGS, const T* x, const T* dy,     \
                                                       T* dx) {                                 \
        max_pool_bwd<T>(POOL_PASS, x, dy, dx);                                                  \
    }                                                                                           \
    extern "C" __global__ void wick_avg_pool_fwd_##SFX(POOL_ARGS, const T* x, T* y) {          \
        avg_pool_fwd<T>(POOL_PASS, x, y);                                                       \
    }                                                                                           \
    extern "C" __global__ void wick_avg_pool_bwd_##SFX(POOL_ARGS, const T* dy, T* dx) {        \
        avg_pool_bwd<T>(POOL_PASS, dy, dx);                                                     \
    }                                                                                           \
    extern "C" __global__ void wick_bn_partial_stats_##SFX(                                    \
        int batch, int channels, unsigned long long plane, int splits, const T* x,             \
        double* partial) {                                                                      \
        bn_partial_stats<T>(batch, channels, plane, splits, x, partial);                        \
    }                                                                                           \
    extern "C" __global__ void wick_bn_apply_##SFX(                                            \
        unsigned long long n, int channels, unsigned long long plane, int relu, const T* x,    \
        const float* stats, const float* weight, const float* bias, T* y) {                    \
        bn_apply<T>(n, channels, plane, relu, x, stats, weight, bias, y);                       \
    }                                                                                           \
    extern "C" __global__ void wick_bn_partial_grad_##SFX(                                     \
        int batch, int channels, unsigned long long plane, int splits, int relu, const T* x,   \
        const T* dy, const float* stats, const float* weight, const float* bias,               \
        double* partial) {                                                                      \
        bn_partial_grad<T>(batch, channels, plane, splits, relu, x, dy, stats, weight, bias,   \
                           partial);                                                            \
    }                                                                                           \
    extern "C" __global__ void wick_bn_grad_input_##SFX(                                       \
        unsigned long long n, int channels, unsigned long long plane, int relu, float count,   \
        const T* x, const T* dy, const float* stats, const float* weight, const float* bias,   \
        const float* sums, T* dx) {                                                             \
        bn_grad_input<T>(n, channels, plane, relu, count, x, dy, stats, weight, bias, sums,    \
                         dx);                                                                   \
    }

INSTANCES(float, f32)
INSTANCES(__nv_bfloat16, bf16)
INSTANCES(__half, f16)
