//! Writing files so that nothing is ever half-written: a crash mid-write leaves the previous
//! version (or nothing) in place, never a truncated file.

use std::io::Write;
use std::path::{Path, PathBuf};

use crate::error::{DataError, Result};

/// A temporary path beside `path` (same folder, so the final rename stays on one filesystem).
pub(crate) fn temporary_sibling(path: &Path) -> PathBuf {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    path.with_file_name(format!(".{name}.tmp-{}", std::process::id()))
}

/// Writes `bytes` to `path` atomically: to a temporary sibling, flushed to disk, then renamed
/// over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let temporary = temporary_sibling(path);
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(bytes)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)
    })();
    result.map_err(|error| {
        let _ = std::fs::remove_file(&temporary);
        DataError::io(path, error)
    })
}
