//! wick-testing: the one float comparison every wick test suite uses, [`assert_close`], with
//! its tolerance [`Tol`]. A dev-dependency only: no library crate depends on it.
//!
//! A value passes when `|actual − expected| <= abs + rel·|expected| + of_scale·max|expected|`
//! (or when both are equal, infinities and all); NaN passes only against NaN. The three terms
//! are the three ways the suites bound an error: an absolute bound, a bound relative to each
//! value, and a bound relative to the scale of the whole reference (for tensors whose small
//! entries carry the rounding of their large ones).
//!
//! Anything that reads as a list of numbers can be compared ([`Values`]): `f64`, `f32`,
//! slices, vectors and arrays of them, and candle `Tensor`s (flattened, compared as f64; two
//! tensors must also have the same shape).

use candle::{DType, Tensor};

/// Allowed difference `|actual − expected| <= abs + rel·|expected| + of_scale·max|expected|`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Tol {
    /// An absolute bound.
    pub abs: f64,
    /// A bound relative to each expected value.
    pub rel: f64,
    /// A bound relative to the largest expected magnitude.
    pub of_scale: f64,
}

impl Tol {
    /// Bit-for-bit equality.
    pub const EXACT: Tol = Tol { abs: 0.0, rel: 0.0, of_scale: 0.0 };

    /// `|actual − expected| <= abs`.
    pub const fn abs(abs: f64) -> Tol {
        Tol { abs, rel: 0.0, of_scale: 0.0 }
    }

    /// `|actual − expected| <= rel·|expected|`.
    pub const fn rel(rel: f64) -> Tol {
        Tol { abs: 0.0, rel, of_scale: 0.0 }
    }

    /// `max |actual − expected| <= of_scale·max |expected|`: the error relative to the scale of
    /// the reference.
    pub const fn of_scale(of_scale: f64) -> Tol {
        Tol { abs: 0.0, rel: 0.0, of_scale }
    }
}

/// Something that reads as a flat list of numbers.
pub trait Values {
    /// The numbers, in order, as f64.
    fn values(&self) -> Vec<f64>;
    /// The shape, for values that have one (tensors).
    fn shape(&self) -> Option<Vec<usize>> {
        None
    }
}

impl<T: Values + ?Sized> Values for &T {
    fn values(&self) -> Vec<f64> {
        (**self).values()
    }
    fn shape(&self) -> Option<Vec<usize>> {
        (**self).shape()
    }
}

impl Values for f64 {
    fn values(&self) -> Vec<f64> {
        vec![*self]
    }
}

impl Values for f32 {
    fn values(&self) -> Vec<f64> {
        vec![f64::from(*self)]
    }
}

impl Values for [f64] {
    fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

impl Values for [f32] {
    fn values(&self) -> Vec<f64> {
        self.iter().map(|&v| f64::from(v)).collect()
    }
}

impl<const N: usize> Values for [f64; N] {
    fn values(&self) -> Vec<f64> {
        self.to_vec()
    }
}

impl<const N: usize> Values for [f32; N] {
    fn values(&self) -> Vec<f64> {
        self.as_slice().values()
    }
}

impl Values for Vec<f64> {
    fn values(&self) -> Vec<f64> {
        self.clone()
    }
}

impl Values for Vec<f32> {
    fn values(&self) -> Vec<f64> {
        self.as_slice().values()
    }
}

impl Values for Tensor {
    /// # Panics
    ///
    /// When the tensor cannot be read as f64 (a test failure).
    fn values(&self) -> Vec<f64> {
        self.to_dtype(DType::F64)
            .and_then(|t| t.flatten_all())
            .and_then(|t| t.to_vec1::<f64>())
            .unwrap_or_else(|e| panic!("reading a {:?} tensor: {e}", self.dtype()))
    }
    fn shape(&self) -> Option<Vec<usize>> {
        Some(self.dims().to_vec())
    }
}

/// Asserts that `actual` is within `tol` of `expected`, element by element, naming `what`,
/// the first offending index and both values.
///
/// # Panics
///
/// When the lengths (or two tensors' shapes) differ, or any element is out of tolerance.
pub fn assert_close(what: &str, actual: impl Values, expected: impl Values, tol: Tol) {
    if let (Some(a), Some(e)) = (actual.shape(), expected.shape()) {
        assert_eq!(a, e, "{what}: shapes differ");
    }
    let (actual, expected) = (actual.values(), expected.values());
    assert_eq!(actual.len(), expected.len(), "{what}: length");
    let scale = expected.iter().fold(0.0f64, |m, v| m.max(v.abs()));
    for (i, (&a, &e)) in actual.iter().zip(&expected).enumerate() {
        let bound = tol.abs + tol.rel * e.abs() + tol.of_scale * scale;
        let ok = a == e || (a.is_nan() && e.is_nan()) || (a - e).abs() <= bound;
        assert!(ok, "{what}[{i}]: got {a:e}, expected {e:e} (diff {:e}, {tol:?})", a - e);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    fn fails(f: impl FnOnce()) -> String {
        let payload = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f))
            .expect_err("the comparison should fail");
        payload
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| payload.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_default()
    }

    #[test]
    fn each_bound_admits_what_it_says_and_no_more() {
        assert_close("exact", [1.0, -2.5], vec![1.0, -2.5], Tol::EXACT);
        assert_close("abs", 1.05, 1.0, Tol::abs(0.05 + 1e-12));
        assert_close("rel", [101.0, 0.0], [100.0, 0.0], Tol::rel(0.01));
        // One scale for the whole reference: 0.1 off a 0.001 entry is fine next to a 100.
        assert_close("scale", [100.0, 0.101], [100.0, 0.001], Tol::of_scale(1e-3));
        assert_close("nan", f64::NAN, f64::NAN, Tol::EXACT);
        assert_close("inf", f32::INFINITY, f64::INFINITY, Tol::EXACT);
        let message = fails(|| assert_close("loss", [1.0, 2.0], [1.0, 2.1], Tol::abs(0.05)));
        assert!(message.starts_with("loss[1]: got 2e0, expected 2.1e0"), "{message}");
        assert!(fails(|| assert_close("rel", 0.0, 1e-30, Tol::rel(0.5))).starts_with("rel[0]"));
        assert!(fails(|| assert_close("nan", f64::NAN, 1.0, Tol::abs(1e9))).starts_with("nan[0]"));
        assert!(fails(|| assert_close("len", [1.0], [1.0, 2.0], Tol::abs(1.0))).contains("length"));
    }

    #[test]
    fn tensors_compare_by_shape_then_values() {
        let a = Tensor::new(&[[1.0f32, 2.0], [3.0, 4.0]], &Device::Cpu).unwrap();
        assert_close("same", &a, a.clone(), Tol::EXACT);
        assert_close("vs slice", &a, [1.0, 2.0, 3.0, 4.0], Tol::EXACT);
        let flat = a.flatten_all().unwrap();
        assert!(
            fails(|| assert_close("shape", &a, &flat, Tol::abs(1.0))).contains("shapes differ")
        );
    }
}
