//! The one error type of wick-data. Every variant names the file, URL or value at fault, so a
//! failure three layers down (a bad JPEG in a worker thread, a corrupt download) still says
//! exactly what and where.

use std::path::PathBuf;

/// Everything that can go wrong between a dataset URL and a batch of tensors.
#[derive(Debug, thiserror::Error)]
pub enum DataError {
    /// Reading or writing a file or folder failed.
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded (truncated, not an image, unsupported format).
    #[error("{path}: cannot decode image: {reason}")]
    Decode { path: PathBuf, reason: String },
    /// An image header announces more pixels than the configured limit (decompression bomb).
    #[error("{path}: image is {width}x{height}, over the limit of {max_pixels} pixels")]
    TooLarge { path: PathBuf, width: u32, height: u32, max_pixels: u64 },
    /// An HTTP download failed.
    #[error("download of {url} failed: {reason}")]
    Download { url: String, reason: String },
    /// A downloaded or local archive does not have the expected size or md5 sum.
    #[error("{path}: checksum mismatch (expected {expected}, got {actual}); the file was not used")]
    Checksum { path: PathBuf, expected: String, actual: String },
    /// An archive entry would land outside the extraction folder, or is of a refused kind.
    #[error("{archive}: refused entry {entry:?}: {reason}")]
    UnsafeArchiveEntry { archive: PathBuf, entry: String, reason: String },
    /// An archive is not a complete, intact gzip-compressed tar: a bad CRC or length, a
    /// stream cut short, a missing end-of-archive marker, or bytes after it.
    #[error("{archive}: corrupt or truncated archive: {reason}; nothing was extracted")]
    CorruptArchive { archive: PathBuf, reason: String },
    /// A dataset folder or split has no usable content.
    #[error("{path}: {reason}")]
    BadDataset { path: PathBuf, reason: String },
    /// A configuration value is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidConfig { name: &'static str, reason: String },
    /// A tensor operation failed while building a batch.
    #[error(transparent)]
    Candle(#[from] candle::Error),
}

impl DataError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DataError::Io { path: path.into(), source }
    }

    pub(crate) fn decode(path: impl Into<PathBuf>, reason: impl std::fmt::Display) -> Self {
        DataError::Decode { path: path.into(), reason: reason.to_string() }
    }
}

/// The result type of wick-data.
pub type Result<T, E = DataError> = std::result::Result<T, E>;
