//! Reading candle CPU storage inside custom ops: an f32 slice in row-major order whatever
//! the layout (borrowed when the tensor is contiguous, gathered through the strides when
//! it is not, e.g. after `transpose` or `narrow`); and making an op's output in parallel
//! chunks, without a zero fill ([`par_output`]) or with each chunk zeroed by the task that
//! fills it ([`try_par_zeroed`]).

use candle::{CpuStorage, Layout};
use rayon::prelude::*;
use std::borrow::Cow;
use std::mem::MaybeUninit;

/// Values per rayon task of [`try_par_output`] when its chunks are smaller.
const RUN_VALUES: usize = 16 * 1024;

/// A new output of `len` values written in parallel chunks of `chunk` (the last one shorter),
/// with no zero fill first: `write(index, values)` gets chunk `index` as uninitialised memory,
/// writes every value of it and returns how many values it wrote (with [`write_values`], or
/// counted by the caller). (`vec![0.0; len]` costs a `memset` over memory the kernel then
/// overwrites: glibc's `calloc` clears the freed memory it reuses.)
///
/// # Safety
/// A writer that returns its chunk's length must have written every value of the chunk. A
/// writer that counts with [`write_values`] meets this: it writes from the start and counts
/// what it wrote.
///
/// # Panics
/// If a chunk was reported short (a kernel bug; nothing is read then), or if `chunk` is 0
/// while `len` is not.
pub(crate) unsafe fn par_output(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) -> usize + Sync,
) -> Vec<f32> {
    // SAFETY: the caller's writer meets `try_par_output`'s contract (the same as this one's).
    match unsafe { try_par_output(len, chunk, |index, values| Ok(write(index, values))) } {
        Ok(out) => out,
        Err(error) => unreachable!("par_output: an infallible writer failed: {error}"),
    }
}

/// [`par_output`] with a writer that can fail.
///
/// # Safety
/// As [`par_output`]'s: a writer that returns `Ok` with its chunk's length must have written
/// every value of the chunk.
///
/// # Errors
/// The first chunk's error (in chunk order), if any writer fails.
///
/// # Panics
/// If a chunk was reported short (a kernel bug; nothing is read then), or if `chunk` is 0
/// while `len` is not.
pub(crate) unsafe fn try_par_output(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [MaybeUninit<f32>]) -> candle::Result<usize> + Sync,
) -> candle::Result<Vec<f32>> {
    assert!(chunk > 0 || len == 0, "par_output: chunks of 0 values for {len} values");
    let chunk = chunk.max(1);
    // Chunks go to rayon in runs of up to RUN_VALUES values, one task and one result a run:
    // a BatchNorm plane of 2×2 is a chunk of 4 values, and a task per chunk cost more than
    // the values' own arithmetic. A run is never so long that fewer than four runs a thread
    // remain (a Winograd unit is a chunk of real work). Each chunk is written the same way
    // in any run, so the output does not depend on the grouping or the thread count.
    let chunks = len.div_ceil(chunk);
    let per_run =
        (RUN_VALUES / chunk).min(chunks / (4 * rayon::current_num_threads()).max(1)).max(1);
    let mut out = Vec::with_capacity(len);
    let short_counts: Vec<candle::Result<usize>> = out.spare_capacity_mut()[..len]
        .par_chunks_mut(chunk * per_run)
        .enumerate()
        .map(|(run, values)| {
            let mut short = 0;
            for (offset, values) in values.chunks_mut(chunk).enumerate() {
                short += usize::from(write(run * per_run + offset, values)? != values.len());
            }
            Ok(short)
        })
        .collect();
    let mut short = 0;
    for run_short in short_counts {
        short += run_short?;
    }
    assert_eq!(short, 0, "par_output: {short} chunks were not written whole");
    // SAFETY: each of the `len` values was written: every chunk's writer reported its chunk
    // whole, which by the caller's contract means it wrote every value of it, and the chunks
    // tile `0..len`.
    unsafe { out.set_len(len) };
    Ok(out)
}

/// A new output of `len` values made in parallel chunks of `chunk`, each zeroed by its own
/// writer just before `write(index, values)` gets it (initialised, so that a kernel may add
/// into it or hand it to a gemm). `vec![0.0; len]` zeroes the whole output on one thread
/// first: glibc's `calloc` clears the reused memory it hands out with a `memset`.
///
/// # Errors
/// The first chunk's error (in chunk order), if any writer fails.
pub(crate) fn try_par_zeroed(
    len: usize,
    chunk: usize,
    write: impl Fn(usize, &mut [f32]) -> candle::Result<()> + Sync,
) -> candle::Result<Vec<f32>> {
    // SAFETY: each writer zeroes its whole chunk before anything reads it, and reports it
    // whole.
    unsafe {
        try_par_output(len, chunk, |index, values| {
            for value in values.iter_mut() {
                value.write(0.0);
            }
            // SAFETY: every value of the chunk was just written.
            let values = &mut *(values as *mut [MaybeUninit<f32>] as *mut [f32]);
            write(index, values)?;
            Ok(values.len())
        })
    }
}

/// Writes `values` into `out` from its start; returns how many were written (the shorter of
/// the two lengths).
#[inline(always)]
pub(crate) fn write_values(
    out: &mut [MaybeUninit<f32>],
    values: impl Iterator<Item = f32>,
) -> usize {
    let mut written = 0;
    for (slot, value) in out.iter_mut().zip(values) {
        slot.write(value);
        written += 1;
    }
    written
}

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

#[cfg(test)]
mod output_tests {
    use super::*;

    #[test]
    fn par_output_tiles_the_output_with_its_chunks() {
        // 10 values in chunks of 4: chunks 0, 1 hold 4 values, chunk 2 the last 2.
        // SAFETY (all calls here): the writers count with `write_values`.
        let out = unsafe {
            par_output(10, 4, |index, values| {
                let len = values.len();
                write_values(values, (0..len).map(|position| (index * 100 + position) as f32))
            })
        };
        assert_eq!(out, [0.0, 1.0, 2.0, 3.0, 100.0, 101.0, 102.0, 103.0, 200.0, 201.0]);
        assert!(
            unsafe { par_output(0, 0, |_, values| write_values(values, std::iter::empty())) }
                .is_empty()
        );
    }

    /// `try_par_zeroed` hands each writer its chunk zeroed (a writer that adds into it sees
    /// only its own additions), keeps the chunks' order, and returns the first failing
    /// chunk's error in chunk order.
    #[test]
    fn zeroed_chunks_start_at_zero_and_report_the_first_error() {
        // Under glibc's mmap threshold, after a freed buffer of ones of the same size: the
        // output's memory is most likely that buffer's, not fresh zero pages.
        let len = RUN_VALUES + 5;
        drop(std::hint::black_box(vec![1.0f32; len]));
        let out = try_par_zeroed(len, 7, |index, values| {
            assert!(values.iter().all(|&v| v == 0.0), "chunk {index} not zeroed");
            for (position, value) in values.iter_mut().enumerate() {
                *value += (index * 7 + position) as f32;
            }
            Ok(())
        })
        .expect("no writer fails");
        assert!(out.iter().enumerate().all(|(i, &v)| v == i as f32));
        let error = try_par_zeroed(len, 7, |index, _| {
            if index >= 100 && index % 3 == 1 {
                candle::bail!("chunk {index} failed");
            }
            Ok(())
        })
        .expect_err("chunks fail");
        assert!(error.to_string().contains("chunk 100 failed"), "{error}");
    }

    /// Small chunks are handed out in runs: across several runs (and a last partial run and
    /// chunk: 2·RUN_VALUES + 11 is not a multiple of 3) every chunk still gets its own index
    /// and its own place.
    #[test]
    fn small_chunks_in_runs_keep_their_indices() {
        let len = 2 * RUN_VALUES + 11;
        // SAFETY: the writer counts with `write_values`.
        let out = unsafe {
            par_output(len, 3, |index, values| {
                let len = values.len();
                write_values(values, (0..len).map(|position| (index * 3 + position) as f32))
            })
        };
        assert!(out.iter().enumerate().all(|(i, value)| *value == i as f32));
    }

    #[test]
    fn par_output_refuses_a_chunk_written_short() {
        // A kernel bug, so a panic (before any value is read), not an error.
        let short = std::panic::catch_unwind(|| {
            // SAFETY: the writer counts with `write_values`.
            unsafe {
                par_output(8, 4, |index, values| {
                    let len = if index == 1 { 3 } else { values.len() };
                    write_values(values, (0..len).map(|position| position as f32))
                })
            }
        });
        let payload = short.expect_err("a chunk written short panics");
        let message = payload.downcast_ref::<String>().map(String::as_str).unwrap_or_default();
        assert!(message.contains("1 chunks were not written whole"), "{message}");
    }

    #[test]
    fn try_par_output_returns_the_first_chunks_error() {
        // SAFETY: the writer counts with `write_values`.
        let result = unsafe {
            try_par_output(12, 4, |index, values| {
                if index >= 1 {
                    candle::bail!("chunk {index} failed");
                }
                let len = values.len();
                Ok(write_values(values, (0..len).map(|position| position as f32)))
            })
        };
        let error = result.expect_err("chunks 1 and 2 fail").to_string();
        assert!(error.contains("chunk 1 failed"), "{error}");
        // Across runs too: the first failing chunk in chunk order, whichever run ends first.
        let (chunk, first_bad) = (4, RUN_VALUES / 2 + 3);
        // SAFETY: the writer counts with `write_values`.
        let result = unsafe {
            try_par_output(4 * RUN_VALUES, chunk, |index, values| {
                if index >= first_bad && index % 7 == first_bad % 7 {
                    candle::bail!("chunk {index} failed");
                }
                let len = values.len();
                Ok(write_values(values, (0..len).map(|position| position as f32)))
            })
        };
        let error = result.expect_err("chunks fail in several runs").to_string();
        assert!(error.contains(&format!("chunk {first_bad} failed")), "{error}");
    }
}
