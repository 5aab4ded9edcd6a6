//! Reading a dataset archive into a staging folder, trusting nothing in it: a gzip-compressed
//! tar (or a plain tar, told apart by its first bytes) is read to its very end, so the gzip
//! CRC32 and length are checked and tar's end-of-archive marker is required; every entry's
//! name must stay inside the folder; only regular files and folders are written (links,
//! devices, FIFOs and sparse files are refused), with fixed permissions (files `0644`, folders
//! `0755`, then the process umask), never the archive's modes; a path written twice is
//! refused; the entry count and sizes are bounded by [`ExtractConfig`].
//!
//! The files are written by this module, not by the tar crate's `unpack`, so no archive
//! field (mode, owner, mtime, link target, xattr) ever reaches the file system.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Component, Path, PathBuf};

use sha2::{Digest, Sha256};

use super::{ExtractConfig, hex};
use crate::error::{DataError, Result};

/// The most zero bytes accepted after tar's end-of-archive marker (tar pads its output to a
/// whole record, 10 KiB by default; tape-sized records stay far below this).
const MAX_TRAILER_BYTES: u64 = 16 << 20;

/// The permissions of extracted files and folders (before the umask).
#[cfg(unix)]
const FILE_MODE: u32 = 0o644;
#[cfg(unix)]
const DIR_MODE: u32 = 0o755;

/// Extracts `archive` into the existing empty folder `staging` and returns the sha256 (lower-
/// case hex) of every regular file written, keyed by its path relative to `staging`.
///
/// # Errors
/// [`DataError::UnsafeArchiveEntry`] naming the entry for a refused entry or a broken limit,
/// [`DataError::CorruptArchive`] for a damaged or truncated archive, [`DataError::Io`] when
/// writing fails. The caller removes `staging` on error.
pub(crate) fn unpack(
    archive: &Path,
    staging: &Path,
    config: &ExtractConfig,
) -> Result<BTreeMap<PathBuf, String>> {
    let file = File::open(archive).map_err(|error| DataError::io(archive, error))?;
    let mut reader = BufReader::with_capacity(1 << 16, file);
    let gzip = reader
        .fill_buf()
        .map_err(|error| DataError::io(archive, error))?
        .starts_with(&[0x1f, 0x8b]);
    let stream: Box<dyn Read> = if gzip {
        // Concatenated gzip members are one stream, as for gzip(1) and tar(1).
        Box::new(flate2::read::MultiGzDecoder::new(reader))
    } else {
        Box::new(reader)
    };
    let mut tar = tar::Archive::new(stream);
    let mut last: Option<String> = None;
    let corrupt = |last: &Option<String>, reason: String| DataError::CorruptArchive {
        archive: archive.to_path_buf(),
        reason: match last {
            Some(entry) => format!("{reason} (after entry {entry:?})"),
            None => reason,
        },
    };
    let mut hashes = BTreeMap::new();
    let mut count = 0u64;
    let mut total = 0u64;
    let entries = tar.entries().map_err(|error| corrupt(&last, error.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| corrupt(&last, error.to_string()))?;
        let raw_name = entry.path_bytes().into_owned();
        let name = String::from_utf8_lossy(&raw_name).into_owned();
        let refuse = |reason: String| DataError::UnsafeArchiveEntry {
            archive: archive.to_path_buf(),
            entry: name.clone(),
            reason,
        };
        count += 1;
        if count > config.max_entries {
            return Err(refuse(format!(
                "the archive holds more than {} entries (ExtractConfig::max_entries)",
                config.max_entries
            )));
        }
        let text = std::str::from_utf8(&raw_name)
            .map_err(|_| refuse("the name is not valid UTF-8".to_string()))?;
        let relative = safe_relative(Path::new(text))
            .ok_or_else(|| refuse("absolute path or `..` component".to_string()))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Directory => {
                if !relative.as_os_str().is_empty() {
                    make_dirs(&staging.join(&relative)).map_err(|error| {
                        conflict_or_io(error, &staging.join(&relative), &refuse)
                    })?;
                }
            }
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                if relative.as_os_str().is_empty() {
                    return Err(refuse("a file entry without a name".to_string()));
                }
                let size = entry.size();
                if size > config.max_entry_bytes {
                    return Err(refuse(format!(
                        "{size} bytes, over the limit of {} bytes per file \
                         (ExtractConfig::max_entry_bytes)",
                        config.max_entry_bytes
                    )));
                }
                total = total.saturating_add(size);
                if total > config.max_total_bytes {
                    return Err(refuse(format!(
                        "the files up to this one add up to {total} bytes, over the limit of {} \
                         bytes (ExtractConfig::max_total_bytes)",
                        config.max_total_bytes
                    )));
                }
                let dest = staging.join(&relative);
                if let Some(parent) = dest.parent() {
                    make_dirs(parent).map_err(|error| conflict_or_io(error, parent, &refuse))?;
                }
                let file =
                    create_new(&dest).map_err(|error| conflict_or_io(error, &dest, &refuse))?;
                let (copied, sha256) = copy_hashing(&mut entry, file, &dest, |error| {
                    corrupt(&last, format!("reading entry {name:?}: {error}"))
                })?;
                if copied != size {
                    return Err(corrupt(
                        &last,
                        format!(
                            "entry {name:?} holds {copied} of its {size} bytes: the archive is \
                             truncated"
                        ),
                    ));
                }
                hashes.insert(relative, sha256);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|target| String::from_utf8_lossy(&target).into_owned())
                    .unwrap_or_default();
                let what = if kind == tar::EntryType::Symlink { "symbolic" } else { "hard" };
                return Err(refuse(format!(
                    "{what} link to {target:?}: links are not extracted (dataset archives hold \
                     none; a link could reach outside the dataset folder)"
                )));
            }
            // Metadata records (pax headers, GNU long names) are applied by the tar crate to
            // the entry that follows them; they are never files.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => {}
            other => {
                return Err(refuse(format!(
                    "entry type {other:?} is not extracted (only files and folders are)"
                )));
            }
        }
        last = Some(name);
    }
    // The tar crate stops at the first all-zero block (or at the end of the stream, which a
    // truncated archive reaches). Reading on to the end requires the rest of the marker and
    // makes the gzip decoder check its CRC32 and length trailer.
    let mut rest = tar.into_inner();
    let mut trailer = 0u64;
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = rest.read(&mut buffer).map_err(|error| corrupt(&last, error.to_string()))?;
        if n == 0 {
            break;
        }
        if buffer[..n].iter().any(|&byte| byte != 0) {
            return Err(corrupt(&last, "data after the end-of-archive marker".to_string()));
        }
        trailer += n as u64;
        if trailer > MAX_TRAILER_BYTES {
            return Err(corrupt(
                &last,
                format!("more than {MAX_TRAILER_BYTES} bytes after the end-of-archive marker"),
            ));
        }
    }
    if trailer < 512 {
        return Err(corrupt(
            &last,
            "no end-of-archive marker (two zero blocks): the archive is truncated".to_string(),
        ));
    }
    Ok(hashes)
}

/// An entry's own path with `.` components dropped, or `None` if it is absolute or has any
/// `..` component.
pub(crate) fn safe_relative(path: &Path) -> Option<PathBuf> {
    let mut clean = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => clean.push(part),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(clean)
}

/// A write that fails because the path is already taken (a duplicate entry, a file where a
/// folder should be) is the archive's fault and names the entry; anything else is an I/O
/// error on `path`.
fn conflict_or_io(
    error: std::io::Error,
    path: &Path,
    refuse: &dyn Fn(String) -> DataError,
) -> DataError {
    match error.kind() {
        std::io::ErrorKind::AlreadyExists | std::io::ErrorKind::NotADirectory => {
            refuse("the archive writes this path twice (or a file where a folder is)".to_string())
        }
        _ => DataError::io(path, error),
    }
}

fn make_dirs(path: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, DIR_MODE);
    builder.create(path)?;
    // `recursive` accepts an existing file at `path` on some platforms; require a folder.
    if std::fs::symlink_metadata(path)?.is_dir() {
        Ok(())
    } else {
        Err(std::io::Error::from(std::io::ErrorKind::AlreadyExists))
    }
}

fn create_new(path: &Path) -> std::io::Result<File> {
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, FILE_MODE);
    options.open(path)
}

/// Copies `reader` into `file`, returning the byte count and the sha256 of what was copied.
/// Read errors go through `read_error` (the archive's fault), write errors name `path`.
fn copy_hashing(
    reader: &mut dyn Read,
    mut file: File,
    path: &Path,
    read_error: impl Fn(std::io::Error) -> DataError,
) -> Result<(u64, String)> {
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    let mut copied = 0u64;
    loop {
        let n = match reader.read(&mut buffer) {
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(read_error(error)),
        };
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
        file.write_all(&buffer[..n]).map_err(|error| DataError::io(path, error))?;
        copied += n as u64;
    }
    file.flush().map_err(|error| DataError::io(path, error))?;
    Ok((copied, hex(&hasher.finalize())))
}
