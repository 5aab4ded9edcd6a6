//! Getting a dataset onto disk, fastai's `untar_data`: the catalogue of official archives
//! (URL, size, md5), a streaming download that resumes a partial file and refuses a file whose
//! checksum is wrong, and a `.tgz` extraction that is atomic (extract into a temporary folder,
//! then rename) and refuses any entry that would land outside its target. A local folder or a
//! local archive is accepted as the source for offline use.
//!
//! This module never prints: progress goes to a callback the caller renders (the CLI draws a
//! progress bar), and the cache folder is chosen by the caller.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};

use crate::error::{DataError, Result};

/// An official dataset archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    /// The folder the archive extracts to, e.g. `imagenette2`.
    pub name: &'static str,
    pub url: &'static str,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex md5 of the whole file.
    pub md5: &'static str,
}

/// fastai's `URLs.IMAGENETTE` (full size): 13,394 images in 10 classes.
pub const IMAGENETTE: Archive = Archive {
    name: "imagenette2",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2.tgz",
    bytes: 1_557_161_267,
    md5: "2c774ecb40005b35d7937d50f5d42336",
};
/// `URLs.IMAGENETTE_320`: shortest side 320.
pub const IMAGENETTE_320: Archive = Archive {
    name: "imagenette2-320",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-320.tgz",
    bytes: 341_663_724,
    md5: "1f1f74f133caff120e575856659b87a2",
};
/// `URLs.IMAGENETTE_160`: shortest side 160.
pub const IMAGENETTE_160: Archive = Archive {
    name: "imagenette2-160",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagenette2-160.tgz",
    bytes: 99_003_388,
    md5: "c475f8f7617a200ba35b9facc48443c3",
};
/// `URLs.IMAGEWOOF` (full size): 10 dog breeds.
pub const IMAGEWOOF: Archive = Archive {
    name: "imagewoof2",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2.tgz",
    bytes: 1_343_715_595,
    md5: "2cc1c1e36e20cb6fd24ffb978edcb487",
};
/// `URLs.IMAGEWOOF_320`.
pub const IMAGEWOOF_320: Archive = Archive {
    name: "imagewoof2-320",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-320.tgz",
    bytes: 328_387_740,
    md5: "7a1fd92672a559a85de76e4810a20c21",
};
/// `URLs.IMAGEWOOF_160`.
pub const IMAGEWOOF_160: Archive = Archive {
    name: "imagewoof2-160",
    url: "https://s3.amazonaws.com/fast-ai-imageclas/imagewoof2-160.tgz",
    bytes: 92_612_825,
    md5: "3559b194123981a540b87132dbda412f",
};

/// Every archive in the catalogue.
pub const ARCHIVES: [Archive; 6] =
    [IMAGENETTE, IMAGENETTE_320, IMAGENETTE_160, IMAGEWOOF, IMAGEWOOF_320, IMAGEWOOF_160];

/// The catalogue archive called `name` (e.g. `imagenette2-160`).
pub fn archive_named(name: &str) -> Option<Archive> {
    ARCHIVES.into_iter().find(|archive| archive.name == name)
}

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Download (or reuse a verified earlier download) from a URL.
    Remote { name: String, url: String, bytes: Option<u64>, md5: Option<String> },
    /// A `.tgz` already on disk.
    LocalArchive(PathBuf),
    /// A folder already extracted; used as is.
    LocalFolder(PathBuf),
}

impl From<Archive> for Source {
    fn from(archive: Archive) -> Self {
        Source::Remote {
            name: archive.name.to_string(),
            url: archive.url.to_string(),
            bytes: Some(archive.bytes),
            md5: Some(archive.md5.to_string()),
        }
    }
}

impl Source {
    /// A local path: a folder as is, anything else as an archive.
    pub fn local(path: &Path) -> Self {
        if path.is_dir() {
            Source::LocalFolder(path.to_path_buf())
        } else {
            Source::LocalArchive(path.to_path_buf())
        }
    }
}

/// What [`untar_data`] is doing, for a progress display.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// `done` of `total` bytes downloaded (`total` unknown when the server does not say).
    Download { done: u64, total: Option<u64> },
    /// Checking the md5 sum of a file.
    Verify { path: PathBuf },
    /// Extracting an archive.
    Extract { archive: PathBuf },
}

/// Makes `source` available under `cache_dir` and returns the dataset's root folder:
/// downloads into `cache_dir/archives/` (resuming, verifying), extracts into
/// `cache_dir/<name>/`, and skips whatever is already done.
pub fn untar_data(
    source: &Source,
    cache_dir: &Path,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    match source {
        Source::LocalFolder(path) => {
            if path.is_dir() {
                Ok(path.clone())
            } else {
                Err(DataError::BadDataset {
                    path: path.clone(),
                    reason: "is not a folder".to_string(),
                })
            }
        }
        Source::LocalArchive(archive) => {
            let name = archive_stem(archive);
            let dest = cache_dir.join(&name);
            if !dest.is_dir() {
                progress(Progress::Extract { archive: archive.clone() });
                extract_tgz(archive, &dest)?;
            }
            Ok(dest)
        }
        Source::Remote { name, url, bytes, md5 } => {
            let dest = cache_dir.join(name);
            if dest.is_dir() {
                return Ok(dest);
            }
            let archives = cache_dir.join("archives");
            std::fs::create_dir_all(&archives).map_err(|error| DataError::io(&archives, error))?;
            let file = archives.join(format!("{name}.tgz"));
            let expected = Expected { bytes: *bytes, md5: md5.clone() };
            download(url, &file, &expected, progress)?;
            progress(Progress::Extract { archive: file.clone() });
            extract_tgz(&file, &dest)?;
            Ok(dest)
        }
    }
}

fn archive_stem(path: &Path) -> String {
    let name = path.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    for suffix in [".tar.gz", ".tgz", ".tar"] {
        if let Some(stem) = name.strip_suffix(suffix) {
            return stem.to_string();
        }
    }
    name
}

/// What a downloaded file must be.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Expected {
    pub bytes: Option<u64>,
    /// Lower-case hex md5.
    pub md5: Option<String>,
}

/// Downloads `url` to `dest`. Bytes stream into `dest` + `.part`; an existing partial file is
/// resumed with an HTTP range request (restarted if the server ignores the range). The
/// finished file must match `expected`; if it does not, the partial file is deleted, `dest`
/// is not created and the error names both checksums. A `dest` that already exists and
/// matches is reused without a request.
pub fn download(
    url: &str,
    dest: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    if dest.is_file() {
        progress(Progress::Verify { path: dest.to_path_buf() });
        if verify(dest, expected).is_ok() {
            return Ok(());
        }
        std::fs::remove_file(dest).map_err(|error| DataError::io(dest, error))?;
    }
    let part = PathBuf::from(format!("{}.part", dest.display()));
    let already = std::fs::metadata(&part).map(|metadata| metadata.len()).unwrap_or(0);
    let download_error = |reason: String| DataError::Download { url: url.to_string(), reason };
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut request = agent.get(url);
    if already > 0 {
        request = request.header("Range", format!("bytes={already}-"));
    }
    let response = request.call().map_err(|error| download_error(error.to_string()))?;
    let status = response.status().as_u16();
    let resumed = match status {
        206 if already > 0 => true,
        200 => false,
        // The partial file already holds everything (or the server cannot serve the range):
        // verify what is there.
        416 if already > 0 => {
            return finish(&part, dest, expected, progress);
        }
        other => return Err(download_error(format!("HTTP status {other}"))),
    };
    let content_length: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let start = if resumed { already } else { 0 };
    let total = content_length.map(|length| length + start).or(expected.bytes);
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(&part)
        .map_err(|error| DataError::io(&part, error))?;
    let mut reader = response.into_body().into_reader();
    let mut buffer = vec![0u8; 1 << 16];
    let mut done = start;
    progress(Progress::Download { done, total });
    loop {
        let n = reader.read(&mut buffer).map_err(|error| download_error(error.to_string()))?;
        if n == 0 {
            break;
        }
        file.write_all(&buffer[..n]).map_err(|error| DataError::io(&part, error))?;
        done += n as u64;
        progress(Progress::Download { done, total });
    }
    file.sync_all().map_err(|error| DataError::io(&part, error))?;
    drop(file);
    finish(&part, dest, expected, progress)
}

fn finish(
    part: &Path,
    dest: &Path,
    expected: &Expected,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    progress(Progress::Verify { path: part.to_path_buf() });
    if let Err(error) = verify(part, expected) {
        let _ = std::fs::remove_file(part);
        return Err(error);
    }
    std::fs::rename(part, dest).map_err(|error| DataError::io(dest, error))
}

/// Checks a file's size and md5 against `expected`.
pub fn verify(path: &Path, expected: &Expected) -> Result<()> {
    let length = std::fs::metadata(path).map_err(|error| DataError::io(path, error))?.len();
    if let Some(bytes) = expected.bytes
        && bytes != length
    {
        return Err(DataError::Checksum {
            path: path.to_path_buf(),
            expected: format!("{bytes} bytes"),
            actual: format!("{length} bytes"),
        });
    }
    if let Some(md5) = &expected.md5 {
        let actual = md5_file(path)?;
        if !actual.eq_ignore_ascii_case(md5) {
            return Err(DataError::Checksum {
                path: path.to_path_buf(),
                expected: format!("md5 {md5}"),
                actual: format!("md5 {actual}"),
            });
        }
    }
    Ok(())
}

/// The lower-case hex md5 of a file.
pub fn md5_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|error| DataError::io(path, error))?;
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(|error| DataError::io(path, error))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Extracts the gzip-compressed tar `archive` to `dest`, which must not exist yet.
///
/// Atomic: entries go to a temporary sibling folder that is renamed to `dest` only when every
/// entry succeeded; on any error it is removed. If the archive holds a single top-level
/// folder (as fastai's archives do), that folder becomes `dest`.
///
/// Refused, with an error naming the entry: absolute paths, paths with `..`, symbolic links
/// whose target is absolute or leaves the extraction folder, hard links to paths that would,
/// and device files or FIFOs.
pub fn extract_tgz(archive: &Path, dest: &Path) -> Result<()> {
    if dest.exists() {
        return Err(DataError::BadDataset {
            path: dest.to_path_buf(),
            reason: "already exists; not extracting over it".to_string(),
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(parent).map_err(|error| DataError::io(parent, error))?;
    let staging = crate::fsutil::temporary_sibling(dest);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|error| DataError::io(&staging, error))?;
    }
    std::fs::create_dir_all(&staging).map_err(|error| DataError::io(&staging, error))?;
    let result = unpack_checked(archive, &staging).and_then(|()| {
        let root = single_top_folder(&staging)?.unwrap_or_else(|| staging.clone());
        std::fs::rename(&root, dest).map_err(|error| DataError::io(dest, error))
    });
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

fn single_top_folder(dir: &Path) -> Result<Option<PathBuf>> {
    let entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|error| DataError::io(dir, error))?
        .filter_map(|entry| entry.ok().map(|entry| entry.path()))
        .collect();
    match entries.as_slice() {
        [only] if only.is_dir() && !only.is_symlink() => Ok(Some(only.clone())),
        _ => Ok(None),
    }
}

fn unpack_checked(archive: &Path, staging: &Path) -> Result<()> {
    let file = File::open(archive).map_err(|error| DataError::io(archive, error))?;
    let mut tar = tar::Archive::new(flate2::read::GzDecoder::new(std::io::BufReader::new(file)));
    tar.set_preserve_permissions(false);
    tar.set_overwrite(false);
    let entries = tar.entries().map_err(|error| DataError::io(archive, error))?;
    for entry in entries {
        let mut entry = entry.map_err(|error| DataError::io(archive, error))?;
        let raw_path = entry.path_bytes().into_owned();
        let display = String::from_utf8_lossy(&raw_path).into_owned();
        let refuse = |reason: &str| DataError::UnsafeArchiveEntry {
            archive: archive.to_path_buf(),
            entry: display.clone(),
            reason: reason.to_string(),
        };
        let relative = safe_relative(Path::new(&*String::from_utf8_lossy(&raw_path)))
            .ok_or_else(|| refuse("absolute path or `..` component"))?;
        let kind = entry.header().entry_type();
        match kind {
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::Directory => {}
            tar::EntryType::Symlink => {
                let target = entry
                    .link_name()
                    .map_err(|error| DataError::io(archive, error))?
                    .ok_or_else(|| refuse("symbolic link without a target"))?;
                let base = relative.parent().unwrap_or(Path::new(""));
                if target.is_absolute() || resolve_inside(&base.join(&target)).is_none() {
                    return Err(refuse(&format!(
                        "symbolic link to {} points outside the archive",
                        target.display()
                    )));
                }
            }
            tar::EntryType::Link => {
                let target = entry
                    .link_name()
                    .map_err(|error| DataError::io(archive, error))?
                    .ok_or_else(|| refuse("hard link without a target"))?;
                if resolve_inside(&target).is_none() {
                    return Err(refuse(&format!(
                        "hard link to {} points outside the archive",
                        target.display()
                    )));
                }
            }
            // Metadata records (pax/GNU long names) are consumed by the tar crate itself.
            tar::EntryType::XGlobalHeader
            | tar::EntryType::XHeader
            | tar::EntryType::GNULongName
            | tar::EntryType::GNULongLink => continue,
            other => return Err(refuse(&format!("entry type {other:?} is not extracted"))),
        }
        if relative.as_os_str().is_empty() {
            continue; // The archive's "./" entry.
        }
        let unpacked = entry
            .unpack_in(staging)
            .map_err(|error| DataError::io(staging.join(&relative), error))?;
        if !unpacked {
            return Err(refuse("the tar crate refused to place it inside the target"));
        }
    }
    Ok(())
}

/// An entry's own path with `.` components dropped, or `None` if it is absolute or has any
/// `..` component.
fn safe_relative(path: &Path) -> Option<PathBuf> {
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

/// A link target resolved lexically inside the archive (`a/../b` is `b`), or `None` if it is
/// absolute or climbs above the archive's root.
fn resolve_inside(path: &Path) -> Option<PathBuf> {
    let mut resolved = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => resolved.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                if !resolved.pop() {
                    return None;
                }
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(resolved)
}
