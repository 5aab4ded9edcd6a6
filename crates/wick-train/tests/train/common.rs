//! Shared test helpers: the suite's tolerances for `wick_testing::assert_close`, and fixture
//! loading.

use std::collections::HashMap;
use std::path::PathBuf;

use candle::{DType, Device, Tensor};
use wick_testing::Tol;

/// Bit-for-bit equality.
pub(crate) const EXACT: Tol = Tol::EXACT;
/// Differences of a few f64 ulps (libm's cos/pow may round differently from the Python build's).
pub(crate) const F64_ULPS: Tol = Tol::rel(1e-14);
/// float32 arithmetic done in a different order (or with/without FMA) than torch's kernels.
pub(crate) const F32_ROUNDING: Tol = Tol { abs: 1e-6, rel: 2e-6, of_scale: 0.0 };

/// A fixture file's tensors, keyed by name.
pub(crate) fn fixture(name: &str) -> HashMap<String, Tensor> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name);
    candle::safetensors::load(&path, &Device::Cpu)
        .unwrap_or_else(|e| panic!("fixture {}: {e}", path.display()))
}

/// One tensor of a fixture.
pub(crate) fn get(fixture: &HashMap<String, Tensor>, key: &str) -> Tensor {
    fixture.get(key).unwrap_or_else(|| panic!("fixture has no key {key}")).clone()
}

/// A tensor's values, flattened, as f64.
pub(crate) fn values(tensor: &Tensor) -> Vec<f64> {
    tensor.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap()
}

/// One fixture entry's values, flattened, as f64.
pub(crate) fn fixture_values(fixture: &HashMap<String, Tensor>, key: &str) -> Vec<f64> {
    values(&get(fixture, key))
}

/// A scalar tensor's value.
pub(crate) fn scalar(tensor: &Tensor) -> f64 {
    tensor.to_dtype(DType::F64).unwrap().to_scalar().unwrap()
}
