//! The pre-scan: every listed file checked once, before any epoch is built, so that a bad file
//! is found (and, under the skip policy, taken out) up front — an epoch then has a fixed, stated
//! length and no batch comes out short. Owns what "usable" means for a file: readable, not
//! empty, a format [`crate::decode`] reads (by its bytes), a sane header within the pixel limit,
//! and (at [`ScanDepth::Decode`]) a complete decode with the strict decoder the pipeline uses.

use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

use crate::decode::{DecodeConfig, check_limit, decode_rgb, image_size};
use crate::error::{DataError, Result};
use crate::items::{Excluded, Exclusion, Items};

/// How much of each file the pre-scan checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScanDepth {
    /// Read the file and parse its header: catches empty, unreadable and non-image files,
    /// unknown formats, zero sizes and decompression bombs; not truncated pixel data.
    Header,
    /// Also decode every pixel at full size with the strict decoders (a truncated or corrupt
    /// JPEG is an error, as in PIL). About one decode per file, run on all threads.
    #[default]
    Decode,
}

/// Settings of [`scan_files`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScanConfig {
    /// How much of each file is checked.
    pub depth: ScanDepth,
    /// The same limits the pipeline decodes with.
    pub decode: DecodeConfig,
    /// Threads checking files (at least 1).
    pub n_threads: usize,
}

impl Default for ScanConfig {
    fn default() -> Self {
        ScanConfig {
            depth: ScanDepth::Decode,
            decode: DecodeConfig::default(),
            n_threads: std::thread::available_parallelism().map(usize::from).unwrap_or(1),
        }
    }
}

/// Checks one file; `Ok(())` when it is usable, else why not.
///
/// # Errors
/// The file cannot be read, is empty, is not an image wick reads, has a bad header, is over
/// the pixel limit or (at [`ScanDepth::Decode`]) does not decode.
pub fn check_file(path: &Path, depth: ScanDepth, decode: &DecodeConfig) -> Result<()> {
    let bytes = std::fs::read(path).map_err(|error| DataError::io(path, error))?;
    let (width, height) = image_size(&bytes, path)?;
    check_limit(path, width, height, decode)?;
    if depth == ScanDepth::Decode {
        decode_rgb(&bytes, path, (u32::MAX, u32::MAX), decode)?;
    }
    Ok(())
}

/// Checks every file of `files` in parallel (see [`check_file`]); returns, in input order, the
/// files that passed and those that did not, each with its reason. A decoder that panics on a
/// hostile file counts as a failure naming the file.
///
/// # Errors
/// Only if the thread pool cannot be built.
pub fn scan_files(files: &[PathBuf], config: &ScanConfig) -> Result<(Vec<PathBuf>, Vec<Excluded>)> {
    let verdicts = verdicts(files, config)?;
    let mut good = Vec::with_capacity(files.len());
    let mut bad = Vec::new();
    for (path, verdict) in files.iter().zip(verdicts) {
        match verdict {
            None => good.push(path.clone()),
            Some(excluded) => bad.push(excluded),
        }
    }
    Ok((good, bad))
}

/// [`scan_files`] on labelled items: the usable items (labels kept) and the rest.
///
/// # Errors
/// Only if the thread pool cannot be built.
pub fn scan_items(items: &Items, config: &ScanConfig) -> Result<(Items, Vec<Excluded>)> {
    let verdicts = verdicts(&items.paths, config)?;
    let mut good = Items::default();
    let mut bad = Vec::new();
    for ((path, label), verdict) in items.paths.iter().zip(&items.labels).zip(verdicts) {
        match verdict {
            None => {
                good.paths.push(path.clone());
                good.labels.push(*label);
            }
            Some(excluded) => bad.push(excluded),
        }
    }
    Ok((good, bad))
}

fn verdicts(files: &[PathBuf], config: &ScanConfig) -> Result<Vec<Option<Excluded>>> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(config.n_threads.max(1))
        .thread_name(|index| format!("wick-scan-{index}"))
        .build()
        .map_err(|error| DataError::InvalidConfig {
            name: "n_threads",
            reason: error.to_string(),
        })?;
    Ok(pool.install(|| {
        files
            .par_iter()
            .map(|path| {
                let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
                    check_file(path, config.depth, &config.decode)
                }))
                .unwrap_or_else(|_| Err(DataError::decode(path, "the decoder panicked")));
                outcome.err().map(|error| excluded(path, &error))
            })
            .collect()
    }))
}

/// The exclusion record for a file that failed with `error`.
pub(crate) fn excluded(path: &Path, error: &DataError) -> Excluded {
    let kind = match error {
        DataError::Io { .. } => Exclusion::Unreadable,
        _ => Exclusion::BadImage,
    };
    Excluded { path: path.to_path_buf(), kind, reason: reason_of(error) }
}

/// The error's message without the path it starts with (the report names the path apart),
/// on one line.
fn reason_of(error: &DataError) -> String {
    let text = match error {
        DataError::Io { source, .. } => source.to_string(),
        DataError::Decode { reason, .. } => format!("cannot decode image: {reason}"),
        DataError::TooLarge { width, height, max_pixels, .. } => {
            format!("image is {width}x{height}, over the limit of {max_pixels} pixels")
        }
        other => other.to_string(),
    };
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}
