//! The OpenBLAS backend (cargo feature `openblas`; needs `apt-get install libopenblas-dev`):
//! `cblas_sgemm`, with OpenBLAS's own threading switched off because the convolutions call
//! it from inside a rayon loop over the batch.

use super::{Accumulate, MatMut, MatRef};
use std::sync::Once;

const CBLAS_ROW_MAJOR: i32 = 101;
const CBLAS_NO_TRANS: i32 = 111;
const CBLAS_TRANS: i32 = 112;

#[link(name = "openblas")]
unsafe extern "C" {
    fn cblas_sgemm(
        order: i32,
        trans_a: i32,
        trans_b: i32,
        m: i32,
        n: i32,
        k: i32,
        alpha: f32,
        a: *const f32,
        lda: i32,
        b: *const f32,
        ldb: i32,
        beta: f32,
        c: *mut f32,
        ldc: i32,
    );
    fn openblas_set_num_threads(num_threads: i32);
}

static SINGLE_THREADED: Once = Once::new();

/// The cblas description of a view: (transpose flag, leading dimension), or `None` when
/// neither stride is 1 and the view must be copied first.
fn cblas_operand(matrix: &MatRef<'_>) -> Option<(i32, usize)> {
    if matrix.col_stride == 1 {
        Some((CBLAS_NO_TRANS, matrix.row_stride.max(matrix.cols)))
    } else if matrix.row_stride == 1 {
        Some((CBLAS_TRANS, matrix.col_stride.max(matrix.rows)))
    } else {
        None
    }
}

fn to_int(value: usize, what: &str) -> candle::Result<i32> {
    i32::try_from(value)
        .map_err(|_| candle::Error::Msg(format!("gemm (OpenBLAS): {what} {value} exceeds i32")))
}

pub(super) fn gemm(
    lhs: MatRef<'_>,
    rhs: MatRef<'_>,
    mut dst: MatMut<'_>,
    accumulate: Accumulate,
) -> candle::Result<()> {
    SINGLE_THREADED.call_once(|| {
        // SAFETY: a plain setter of OpenBLAS's global thread count.
        unsafe { openblas_set_num_threads(1) }
    });
    let lhs_copy;
    let lhs = match cblas_operand(&lhs) {
        Some(_) => lhs,
        None => {
            lhs_copy = dense_copy(&lhs);
            MatRef::row_major(&lhs_copy, lhs.rows, lhs.cols)?
        }
    };
    let rhs_copy;
    let rhs = match cblas_operand(&rhs) {
        Some(_) => rhs,
        None => {
            rhs_copy = dense_copy(&rhs);
            MatRef::row_major(&rhs_copy, rhs.rows, rhs.cols)?
        }
    };
    // Both operands have a unit stride now (copied above otherwise).
    let ((trans_a, lda), (trans_b, ldb)) = match (cblas_operand(&lhs), cblas_operand(&rhs)) {
        (Some(a), Some(b)) => (a, b),
        _ => candle::bail!("gemm (OpenBLAS): operand without a unit stride after copying"),
    };
    let (m, n, k) = (dst.rows, dst.cols, lhs.cols);
    let beta = match accumulate {
        Accumulate::Overwrite => 0.0,
        Accumulate::Add => 1.0,
    };
    let ldc = dst.row_stride.max(n);
    let (m, n, k) = (to_int(m, "m")?, to_int(n, "n")?, to_int(k, "k")?);
    let (lda, ldb, ldc) = (to_int(lda, "lda")?, to_int(ldb, "ldb")?, to_int(ldc, "ldc")?);
    // SAFETY: the views were bounds-checked at construction, so cblas reads and writes only
    // inside them; `dst` is a unique borrow, so it aliases neither operand.
    unsafe {
        cblas_sgemm(
            CBLAS_ROW_MAJOR,
            trans_a,
            trans_b,
            m,
            n,
            k,
            1.0,
            lhs.ptr(),
            lda,
            rhs.ptr(),
            ldb,
            beta,
            dst.ptr(),
            ldc,
        );
    }
    Ok(())
}

fn dense_copy(matrix: &MatRef<'_>) -> Vec<f32> {
    let mut out = Vec::with_capacity(matrix.rows * matrix.cols);
    for i in 0..matrix.rows {
        for j in 0..matrix.cols {
            out.push(matrix.data[matrix.offset + i * matrix.row_stride + j * matrix.col_stride]);
        }
    }
    out
}
