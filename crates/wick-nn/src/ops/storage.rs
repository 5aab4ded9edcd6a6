//! Reading candle CPU storage inside custom ops: an f32 slice in row-major order whatever
//! the layout (borrowed when the tensor is contiguous, gathered through the strides when
//! it is not, e.g. after `transpose` or `narrow`).

use candle::{CpuStorage, Layout};
use std::borrow::Cow;

/// The elements of `storage` seen through `layout`, row-major, as f32.
pub(crate) fn f32_row_major<'a>(
    storage: &'a CpuStorage,
    layout: &Layout,
    op: &str,
) -> candle::Result<Cow<'a, [f32]>> {
    let CpuStorage::F32(data) = storage else {
        candle::bail!("{op}: expected an f32 tensor, got {:?}", storage_dtype(storage));
    };
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(Cow::Borrowed(&data[start..end])),
        None => Ok(Cow::Owned(gather_strided(data, layout))),
    }
}

fn storage_dtype(storage: &CpuStorage) -> candle::DType {
    use candle::backend::BackendStorage;
    storage.dtype()
}

/// Copies a strided view into a new row-major vector (odometer over the outer dims, a
/// strided loop over the innermost one).
fn gather_strided(data: &[f32], layout: &Layout) -> Vec<f32> {
    let dims = layout.dims();
    let strides = layout.stride();
    let count: usize = dims.iter().product();
    let mut out = Vec::with_capacity(count);
    if count == 0 {
        return out;
    }
    let rank = dims.len();
    if rank == 0 {
        out.push(data[layout.start_offset()]);
        return out;
    }
    let inner_len = dims[rank - 1];
    let inner_stride = strides[rank - 1];
    let mut index = vec![0usize; rank - 1];
    loop {
        let base = layout.start_offset()
            + index.iter().zip(strides).map(|(i, stride)| i * stride).sum::<usize>();
        if inner_stride == 1 {
            out.extend_from_slice(&data[base..base + inner_len]);
        } else {
            out.extend((0..inner_len).map(|j| data[base + j * inner_stride]));
        }
        // Advance the odometer over dims 0..rank-1.
        let mut dim = rank - 1;
        loop {
            if dim == 0 {
                return out;
            }
            dim -= 1;
            index[dim] += 1;
            if index[dim] < dims[dim] {
                break;
            }
            index[dim] = 0;
        }
    }
}
