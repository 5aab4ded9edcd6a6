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
        /// The file or folder.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: std::io::Error,
    },
    /// An image file could not be decoded (truncated, not an image, unsupported format).
    #[error("{path}: cannot decode image: {reason}")]
    Decode {
        /// The image file.
        path: PathBuf,
        /// The decoder's message.
        reason: String,
    },
    /// An image header announces more pixels than the configured limit (decompression bomb).
    #[error("{path}: image is {width}x{height}, over the limit of {max_pixels} pixels")]
    TooLarge {
        /// The image file.
        path: PathBuf,
        /// Width from the header, in px.
        width: u32,
        /// Height from the header, in px.
        height: u32,
        /// The configured limit on `width · height`.
        max_pixels: u64,
    },
    /// An HTTP download failed.
    #[error("download of {url} failed: {reason}")]
    Download {
        /// The URL requested.
        url: String,
        /// What failed (HTTP status, timeout, connection error).
        reason: String,
    },
    /// A downloaded or local archive does not have the expected size or md5 sum.
    #[error("{path}: checksum mismatch (expected {expected}, got {actual}); the file was not used")]
    Checksum {
        /// The file checked.
        path: PathBuf,
        /// The expected size or md5.
        expected: String,
        /// What the file has.
        actual: String,
    },
    /// An archive entry would land outside the extraction folder, or is of a refused kind.
    #[error("{archive}: refused entry {entry:?}: {reason}")]
    UnsafeArchiveEntry {
        /// The archive file.
        archive: PathBuf,
        /// The entry's path as stored in the archive.
        entry: String,
        /// Why it was refused.
        reason: String,
    },
    /// An archive is not a complete, intact gzip-compressed tar: a bad CRC or length, a
    /// stream cut short, a missing end-of-archive marker, or bytes after it.
    #[error("{archive}: corrupt or truncated archive: {reason}; nothing was extracted")]
    CorruptArchive {
        /// The archive file.
        archive: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// A dataset folder or split has no usable content.
    #[error("{path}: {reason}")]
    BadDataset {
        /// The dataset folder, split or file.
        path: PathBuf,
        /// What is missing or wrong.
        reason: String,
    },
    /// A configuration value is out of range.
    #[error("invalid {name}: {reason}")]
    InvalidConfig {
        /// The setting's name.
        name: &'static str,
        /// Why the value is refused.
        reason: String,
    },
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
