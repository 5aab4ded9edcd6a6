//! Writing files so that nothing is ever half-written: a crash mid-write leaves the previous
//! version (or nothing) in place, never a truncated file. The writer itself is wick-io's.

use std::path::Path;

use crate::error::{DataError, Result};

/// Writes `bytes` to `path` atomically and durably ([`wick_io::write_durably`]: a temporary
/// sibling, fsynced, renamed over `path`, the folder fsynced).
///
/// # Errors
/// [`DataError`] naming `path` when a step fails.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    wick_io::write_durably(path, bytes).map_err(|error| DataError::io(path, error))
}
