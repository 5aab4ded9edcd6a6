//! Getting a dataset onto disk, fastai's `untar_data`: the catalogue of official archives
//! (URL, size, md5), a streaming download that resumes a partial file, times out on a stalled
//! server and refuses a file whose size or checksum is wrong, and a cache of extracted
//! datasets that trusts neither archives nor itself:
//! - an archive is extracted by `acquire/extract.rs` (every entry checked, links and
//!   special files refused, gzip CRC and tar end-of-archive required, sizes and counts
//!   bounded) into a staging folder that is renamed into place only when complete;
//! - a local archive's dataset folder is named by its stem and a prefix of the sha256 of its
//!   bytes, never by its file name alone; a local archive named like a catalogue archive
//!   stands in for it only if its md5 is the catalogue's;
//! - each dataset folder has a manifest, checked before the folder is reused; a folder that
//!   no longer matches is extracted again;
//! - a lock per dataset folder makes concurrent runs take turns, and staging folders left by
//!   a killed run are removed by the next one (`acquire/cache.rs`).
//!
//! This module never prints and never reads the environment: progress and notices go to a
//! callback the caller renders (the CLI draws a progress bar), and the cache folder, URLs and
//! limits ([`AcquireConfig`]) are chosen by the caller.

mod cache;
mod extract;

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use md5::{Digest, Md5};
use sha2::Sha256;

use self::cache::{CacheLock, Identity, Manifest};
use crate::error::{DataError, Result};

/// An official dataset archive.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Archive {
    /// The folder the archive extracts to, e.g. `imagenette2`.
    pub name: &'static str,
    /// Where it is downloaded from.
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

impl Archive {
    /// This archive fetched from a mirror: `{base_url}/{name}.tgz`, still checked against the
    /// catalogue's size and md5 (fastai's archives sit side by side under one base URL).
    pub fn source_at(self, base_url: &str) -> Source {
        Source::Remote {
            name: self.name.to_string(),
            url: format!("{}/{}.tgz", base_url.trim_end_matches('/'), self.name),
            bytes: Some(self.bytes),
            md5: Some(self.md5.to_string()),
        }
    }
}

/// Where a dataset comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Source {
    /// Download (or reuse a verified earlier download) from a URL. `name` is the dataset
    /// folder's name in the cache (one plain file name); with `md5`, the archive must match it
    /// and the folder is `name` itself, else the folder is `name-<sha256 prefix>`.
    Remote {
        /// The dataset folder's name in the cache.
        name: String,
        /// Where the archive is downloaded from.
        url: String,
        /// The archive's expected size in bytes, if known.
        bytes: Option<u64>,
        /// The archive's expected lower-case hex md5, if known.
        md5: Option<String>,
    },
    /// A `.tgz` (or `.tar`) already on disk.
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

    /// An `http://` or `https://` URL of an archive. A catalogue archive's own URL keeps the
    /// catalogue's size and md5; any other URL is named after its last path segment (without
    /// `.tgz`/`.tar.gz`/`.tar`) and checked by its content once downloaded.
    ///
    /// # Errors
    /// [`DataError::InvalidConfig`] for another scheme or a URL without a file name.
    pub fn url(url: &str) -> Result<Source> {
        if let Some(archive) = ARCHIVES.into_iter().find(|archive| archive.url == url) {
            return Ok(Source::from(archive));
        }
        let invalid = |reason: &str| DataError::InvalidConfig {
            name: "url",
            reason: format!("{url}: {reason}"),
        };
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| invalid("only http:// and https:// URLs are downloaded"))?;
        let path = rest.split(['?', '#']).next().unwrap_or_default();
        let last = match path.split_once('/') {
            Some((_, path)) => path.rsplit('/').next().unwrap_or_default(),
            None => "",
        };
        let stem = archive_stem(Path::new(last));
        let name: String = stem
            .chars()
            .map(|c| if c.is_ascii_alphanumeric() || "-_.".contains(c) { c } else { '_' })
            .collect();
        let name = name.trim_start_matches('.').to_string();
        if name.is_empty() {
            return Err(invalid("the URL names no archive file"));
        }
        Ok(Source::Remote { name, url: url.to_string(), bytes: None, md5: None })
    }
}

/// Timeouts of a download.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DownloadConfig {
    /// The longest wait to open a connection.
    pub connect_timeout: Duration,
    /// The longest wait for the response headers, and for each read of the body: a server
    /// that stalls this long is an error, not a hang.
    pub read_timeout: Duration,
}

impl Default for DownloadConfig {
    fn default() -> Self {
        DownloadConfig {
            connect_timeout: Duration::from_secs(30),
            read_timeout: Duration::from_secs(60),
        }
    }
}

/// How much of a cached dataset folder is checked against its manifest before reuse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ReuseCheck {
    /// Every folder and file is there, nothing else is, and each file has its size.
    #[default]
    Listing,
    /// As `Listing`, and each file's sha256 matches (reads the whole dataset).
    Contents,
}

/// Limits of an extraction, against archives that would fill the disk or the inode table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtractConfig {
    /// The most entries (files, folders, anything) an archive may hold.
    pub max_entries: u64,
    /// The largest file, in bytes.
    pub max_entry_bytes: u64,
    /// The most bytes all files may add up to.
    pub max_total_bytes: u64,
    /// How a cached extraction is checked before it is reused.
    pub reuse_check: ReuseCheck,
}

impl Default for ExtractConfig {
    /// Far above any fastai dataset (ImageNet's 1.3 M files, 4 GiB per file, 256 GiB in all).
    fn default() -> Self {
        ExtractConfig {
            max_entries: 2_000_000,
            max_entry_bytes: 4 << 30,
            max_total_bytes: 256 << 30,
            reuse_check: ReuseCheck::Listing,
        }
    }
}

/// Everything [`untar_data`] can be told.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct AcquireConfig {
    /// Timeouts of downloads.
    pub download: DownloadConfig,
    /// Limits of extractions and the reuse check of the cache.
    pub extract: ExtractConfig,
}

/// What [`untar_data`] is doing, for a progress display; `Display` words each event for a
/// person (except `Download`, which is meant for a progress bar).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Progress {
    /// `done` of `total` bytes downloaded (`total` unknown when the server does not say).
    Download {
        /// Bytes received so far.
        done: u64,
        /// The archive's size in bytes, when known.
        total: Option<u64>,
    },
    /// Checking the size and checksum of a file (or hashing a local archive for its key).
    Verify {
        /// The file being hashed.
        path: PathBuf,
    },
    /// Extracting an archive.
    Extract {
        /// The archive file.
        archive: PathBuf,
    },
    /// Reusing a dataset folder extracted earlier, after checking it against its manifest.
    Reuse {
        /// The dataset folder.
        dest: PathBuf,
    },
    /// A cached dataset folder no longer matches its manifest and is extracted again.
    Replace {
        /// The dataset folder.
        dest: PathBuf,
        /// How it differs from its manifest.
        reason: String,
    },
    /// Waiting for another process that is extracting or downloading the same dataset.
    Wait {
        /// The lock file held by the other process.
        lock: PathBuf,
    },
    /// Removed a staging folder left behind by a killed extraction.
    Cleaned {
        /// The staging folder removed.
        path: PathBuf,
    },
    /// A local archive is named like the catalogue archive `name` but is not it (its md5
    /// differs): it is extracted as an archive of its own, never as `name`.
    NotCatalogue {
        /// The local archive.
        archive: PathBuf,
        /// The catalogue archive's name it resembles.
        name: String,
        /// The local archive's md5 (lower-case hex).
        md5: String,
        /// The catalogue archive's md5.
        catalogue_md5: String,
    },
}

impl std::fmt::Display for Progress {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Progress::Download { done, total: Some(total) } => {
                write!(f, "downloaded {done} of {total} bytes")
            }
            Progress::Download { done, total: None } => write!(f, "downloaded {done} bytes"),
            Progress::Verify { path } => write!(f, "verifying {}", path.display()),
            Progress::Extract { archive } => write!(f, "extracting {}", archive.display()),
            Progress::Reuse { dest } => {
                write!(
                    f,
                    "using {} (extracted earlier, checked against its manifest)",
                    dest.display()
                )
            }
            Progress::Replace { dest, reason } => {
                write!(
                    f,
                    "{} does not match its manifest ({reason}); extracting again",
                    dest.display()
                )
            }
            Progress::Wait { lock } => {
                write!(f, "waiting for another wick process (it holds {})", lock.display())
            }
            Progress::Cleaned { path } => {
                write!(f, "removed {}, left by an interrupted extraction", path.display())
            }
            Progress::NotCatalogue { archive, name, md5, catalogue_md5 } => write!(
                f,
                "{} is named like the catalogue's {name} but is not it (md5 {md5}, the \
                 catalogue's is {catalogue_md5}): extracted as a local archive of its own",
                archive.display()
            ),
        }
    }
}

/// Makes `source` available under `cache_dir` and returns the dataset's root folder.
///
/// A local folder is returned as is. An archive is extracted to `cache_dir/<name>/`: for a
/// catalogue archive (or a local file with the catalogue's md5) `<name>` is its catalogue
/// name, for any other archive `<name>` is its file stem and a prefix of the sha256 of its
/// bytes. Downloads go to `cache_dir/archives/` (resuming, verifying). A dataset folder made
/// earlier is reused after a check against its manifest; one that fails the check is
/// extracted again. Staging folders of killed earlier runs are removed first.
///
/// # Errors
/// [`DataError::Download`] / [`DataError::Checksum`] for a failed or wrong download,
/// [`DataError::UnsafeArchiveEntry`] / [`DataError::CorruptArchive`] for a refused archive
/// (nothing is left in the cache then), [`DataError::Io`] for file-system failures,
/// [`DataError::InvalidConfig`] for a `Source::Remote` name that is not a plain file name.
pub fn untar_data(
    source: &Source,
    cache_dir: &Path,
    config: &AcquireConfig,
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
            prepare_cache(cache_dir, progress)?;
            let key = local_key(archive, &ARCHIVES, progress)?;
            ensure_extracted(
                cache_dir,
                &key,
                &mut |_: &mut dyn FnMut(Progress)| Ok(archive.clone()),
                config,
                progress,
            )
        }
        Source::Remote { name, url, bytes, md5 } => {
            check_name(name)?;
            prepare_cache(cache_dir, progress)?;
            let archives = cache_dir.join("archives");
            match md5 {
                Some(md5) => {
                    let key = Key {
                        name: name.clone(),
                        identity: Identity::Md5(md5.to_ascii_lowercase()),
                    };
                    let file = archives.join(format!("{name}.tgz"));
                    let expected = Expected { bytes: *bytes, md5: Some(md5.clone()) };
                    ensure_extracted(
                        cache_dir,
                        &key,
                        &mut |progress: &mut dyn FnMut(Progress)| {
                            create_dir(&archives)?;
                            download(url, &file, &expected, &config.download, progress)?;
                            Ok(file.clone())
                        },
                        config,
                        progress,
                    )
                }
                None => {
                    // Named by the URL (a URL is fetched once), extracted by content.
                    create_dir(&archives)?;
                    let url_hash = hex(&Sha256::digest(url.as_bytes()));
                    let file = archives.join(format!("{name}-{}.tgz", &url_hash[..16]));
                    let expected = Expected { bytes: *bytes, md5: None };
                    download(url, &file, &expected, &config.download, progress)?;
                    progress(Progress::Verify { path: file.clone() });
                    let sha256 = cache::sha256_file(&file)?;
                    let key = Key {
                        name: format!("{name}-{}", &sha256[..16]),
                        identity: Identity::Sha256(sha256),
                    };
                    ensure_extracted(
                        cache_dir,
                        &key,
                        &mut |_: &mut dyn FnMut(Progress)| Ok(file.clone()),
                        config,
                        progress,
                    )
                }
            }
        }
    }
}

/// A dataset folder in the cache: its name and the archive it must come from.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Key {
    name: String,
    identity: Identity,
}

fn check_name(name: &str) -> Result<()> {
    let plain = !name.is_empty()
        && !name.starts_with('.')
        && !name.contains(['/', '\\'])
        && Path::new(name).file_name().is_some_and(|file| file == name);
    if plain {
        Ok(())
    } else {
        Err(DataError::InvalidConfig {
            name: "Source::Remote name",
            reason: format!("{name:?} is not a plain file name"),
        })
    }
}

fn create_dir(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).map_err(|error| DataError::io(dir, error))
}

fn prepare_cache(cache_dir: &Path, progress: &mut dyn FnMut(Progress)) -> Result<()> {
    create_dir(cache_dir)?;
    cache::clean_leftovers(cache_dir, None, progress)
}

/// The cache key of a local archive: its catalogue name if it is named like a catalogue
/// archive and has its md5, else its stem and a prefix of its sha256.
fn local_key(
    archive: &Path,
    catalogue: &[Archive],
    progress: &mut dyn FnMut(Progress),
) -> Result<Key> {
    let stem = archive_stem(archive);
    let listed = catalogue.iter().find(|entry| entry.name == stem);
    progress(Progress::Verify { path: archive.to_path_buf() });
    let (sha256, md5) = hash_file(archive, listed.is_some())?;
    if let (Some(listed), Some(md5)) = (listed, md5) {
        if md5.eq_ignore_ascii_case(listed.md5) {
            return Ok(Key { name: listed.name.to_string(), identity: Identity::Md5(md5) });
        }
        progress(Progress::NotCatalogue {
            archive: archive.to_path_buf(),
            name: listed.name.to_string(),
            md5,
            catalogue_md5: listed.md5.to_string(),
        });
    }
    let mut name: String = stem
        .chars()
        .map(|c| if c == '/' || c == '\\' || c.is_control() { '_' } else { c })
        .collect();
    name = name.trim_start_matches('.').to_string();
    if name.is_empty() {
        name = "archive".to_string();
    }
    Ok(Key { name: format!("{name}-{}", &sha256[..16]), identity: Identity::Sha256(sha256) })
}

/// Provides the archive to extract (downloading it if needed), reporting to the callback.
type GetArchive<'a> = dyn FnMut(&mut dyn FnMut(Progress)) -> Result<PathBuf> + 'a;

/// The dataset folder of `key` in `cache_dir`, extracted from the archive `get_archive`
/// provides unless a folder matching its manifest is already there. Runs under the folder's
/// lock.
fn ensure_extracted(
    cache_dir: &Path,
    key: &Key,
    get_archive: &mut GetArchive<'_>,
    config: &AcquireConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<PathBuf> {
    let dest = cache_dir.join(&key.name);
    let manifest_path = cache::manifest_path(cache_dir, &key.name);
    let _lock = CacheLock::acquire(&cache::lock_path(cache_dir, &key.name), progress)?;
    // Under the lock, every staging folder of this dataset is a leftover.
    cache::clean_leftovers(cache_dir, Some(&key.name), progress)?;
    if dest.exists() || manifest_path.exists() {
        match cache::check(&dest, &manifest_path, &key.identity, config.extract.reuse_check) {
            Ok(()) => {
                progress(Progress::Reuse { dest: dest.clone() });
                return Ok(dest);
            }
            Err(reason) => progress(Progress::Replace { dest: dest.clone(), reason }),
        }
    }
    let archive = get_archive(progress)?;
    progress(Progress::Extract { archive: archive.clone() });
    let staging = cache::staging_path(cache_dir, &key.name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|error| DataError::io(&staging, error))?;
    }
    let result = (|| {
        let tree = staging.join("tree");
        create_dir(&tree)?;
        let hashes = extract::unpack(&archive, &tree, &config.extract)?;
        let (root, hashes) = unwrap_single_top(&tree, hashes)?;
        let (md5, sha256) = match &key.identity {
            Identity::Md5(md5) => (Some(md5.clone()), None),
            Identity::Sha256(sha256) => (None, Some(sha256.clone())),
        };
        let manifest = Manifest::of(&root, &hashes, &archive, md5, sha256)?;
        let staged_manifest = staging.join("manifest.json");
        manifest.write(&staged_manifest)?;
        if dest.exists() || dest.is_symlink() {
            let stale = cache::stale_path(cache_dir, &key.name);
            std::fs::rename(&dest, &stale).map_err(|error| DataError::io(&dest, error))?;
            std::fs::rename(&root, &dest).map_err(|error| DataError::io(&dest, error))?;
            let _ = if stale.is_dir() && !stale.is_symlink() {
                std::fs::remove_dir_all(&stale)
            } else {
                std::fs::remove_file(&stale)
            };
        } else {
            std::fs::rename(&root, &dest).map_err(|error| DataError::io(&dest, error))?;
        }
        std::fs::rename(&staged_manifest, &manifest_path)
            .map_err(|error| DataError::io(&manifest_path, error))?;
        cache::sync_dir(cache_dir)
    })();
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    if result.is_err() && !dest.exists() {
        let _ = std::fs::remove_file(&manifest_path);
    }
    result.map(|()| dest)
}

/// The single top-level folder of an extraction (as fastai's archives have) with the hashes
/// re-keyed relative to it, or `tree` itself.
fn unwrap_single_top(
    tree: &Path,
    hashes: std::collections::BTreeMap<PathBuf, String>,
) -> Result<(PathBuf, std::collections::BTreeMap<PathBuf, String>)> {
    let entries: Vec<PathBuf> = std::fs::read_dir(tree)
        .map_err(|error| DataError::io(tree, error))?
        .map(|entry| entry.map(|entry| entry.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|error| DataError::io(tree, error))?;
    match entries.as_slice() {
        [only] if only.is_dir() && !only.is_symlink() => {
            let top = only.file_name().map(PathBuf::from).unwrap_or_default();
            let hashes = hashes
                .into_iter()
                .filter_map(|(path, hash)| {
                    path.strip_prefix(&top).ok().map(|inner| (inner.to_path_buf(), hash))
                })
                .collect();
            Ok((only.clone(), hashes))
        }
        _ => Ok((tree.to_path_buf(), hashes)),
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
    /// Size in bytes.
    pub bytes: Option<u64>,
    /// Lower-case hex md5.
    pub md5: Option<String>,
}

/// Downloads `url` to `dest`. Bytes stream into `dest` + `.part`; an existing partial file is
/// resumed with an HTTP range request (restarted if the server ignores the range). The body
/// must be as long as the server announced, and the finished file must match `expected`; if
/// it does not, the partial file is deleted, `dest` is not created and the error names both
/// checksums. A `dest` that already exists and matches is reused without a request. A lock
/// beside `dest` makes concurrent downloads of the same file take turns.
///
/// # Errors
/// [`DataError::Download`] for a connection failure, an HTTP error status, a stalled server
/// (longer than `config.read_timeout` without data) or a body cut short (the `.part` file is
/// kept for a resume); [`DataError::Checksum`] for a wrong size or md5.
pub fn download(
    url: &str,
    dest: &Path,
    expected: &Expected,
    config: &DownloadConfig,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let file_name =
        dest.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    let _lock = CacheLock::acquire(&dest.with_file_name(format!(".{file_name}.lock")), progress)?;
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
        .timeout_connect(Some(config.connect_timeout))
        .timeout_recv_response(Some(config.read_timeout))
        .timeout_per_read(Some(config.read_timeout))
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
    if resumed {
        let range_start = response
            .headers()
            .get("content-range")
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.strip_prefix("bytes "))
            .and_then(|value| value.split('-').next())
            .and_then(|value| value.trim().parse::<u64>().ok());
        if range_start != Some(already) {
            let _ = std::fs::remove_file(&part);
            return Err(download_error(format!(
                "asked to resume at byte {already}, the server answered with range {range_start:?}; \
                 the partial file was deleted, run again to download from the start"
            )));
        }
    }
    let content_length: Option<u64> = response
        .headers()
        .get("content-length")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let start = if resumed { already } else { 0 };
    let announced = content_length.map(|length| length + start);
    let total = announced.or(expected.bytes);
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
    let outcome = loop {
        let n = match reader.read(&mut buffer) {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => break Err(error),
        };
        file.write_all(&buffer[..n]).map_err(|error| DataError::io(&part, error))?;
        done += n as u64;
        progress(Progress::Download { done, total });
    };
    file.sync_all().map_err(|error| DataError::io(&part, error))?;
    drop(file);
    if let Err(error) = outcome {
        return Err(download_error(format!(
            "{error} after {done} bytes (read timeout {:?}); {} is kept, running again resumes it",
            config.read_timeout,
            part.display()
        )));
    }
    if let Some(announced) = announced
        && done != announced
    {
        return Err(download_error(format!(
            "the connection ended after {done} of {announced} bytes; {} is kept, running again \
             resumes it",
            part.display()
        )));
    }
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
///
/// # Errors
/// [`DataError::Checksum`] naming the file and both values; [`DataError::Io`] if unreadable.
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
///
/// # Errors
/// [`DataError::Io`] if the file cannot be read.
pub fn md5_file(path: &Path) -> Result<String> {
    Ok(hash_file(path, true)?.1.unwrap_or_default())
}

/// The sha256 of a file and, when asked, its md5, in one read.
fn hash_file(path: &Path, with_md5: bool) -> Result<(String, Option<String>)> {
    let mut file = File::open(path).map_err(|error| DataError::io(path, error))?;
    let mut sha256 = Sha256::new();
    let mut md5 = with_md5.then(Md5::new);
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(|error| DataError::io(path, error))?;
        if n == 0 {
            break;
        }
        sha256.update(&buffer[..n]);
        if let Some(md5) = &mut md5 {
            md5.update(&buffer[..n]);
        }
    }
    Ok((hex(&sha256.finalize()), md5.map(|md5| hex(&md5.finalize()))))
}

/// Lower-case hex of a digest.
fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Extracts the gzip-compressed (or plain) tar `archive` to `dest`, which must not exist yet,
/// with every check of the cache's extraction (see the module header) and no manifest.
///
/// Atomic: entries go to a staging sibling folder that is renamed to `dest` only when the
/// whole archive was read and checked; on any error it is removed. If the archive holds a
/// single top-level folder (as fastai's archives do), that folder becomes `dest`.
///
/// # Errors
/// [`DataError::UnsafeArchiveEntry`] naming the entry (an absolute or `..` path, a link, a
/// device or FIFO, a path written twice, a broken limit), [`DataError::CorruptArchive`] (bad
/// CRC or length, truncated, no end-of-archive marker), [`DataError::BadDataset`] if `dest`
/// exists, [`DataError::Io`].
pub fn extract_tgz(archive: &Path, dest: &Path, config: &ExtractConfig) -> Result<()> {
    if dest.exists() || dest.is_symlink() {
        return Err(DataError::BadDataset {
            path: dest.to_path_buf(),
            reason: "already exists; not extracting over it".to_string(),
        });
    }
    let parent = dest.parent().unwrap_or(Path::new("."));
    create_dir(parent)?;
    let name = dest.file_name().map(|name| name.to_string_lossy().into_owned()).unwrap_or_default();
    // The same lock as the cache's, so that a run cleaning `parent` leaves this staging alone.
    let _lock = CacheLock::acquire(&cache::lock_path(parent, &name), &mut |_| {})?;
    let staging = cache::staging_path(parent, &name);
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(|error| DataError::io(&staging, error))?;
    }
    create_dir(&staging)?;
    let result = extract::unpack(archive, &staging, config).and_then(|hashes| {
        let (root, _) = unwrap_single_top(&staging, hashes)?;
        std::fs::rename(&root, dest).map_err(|error| DataError::io(dest, error))
    });
    if staging.exists() {
        let _ = std::fs::remove_dir_all(&staging);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A one-file "catalogue" whose md5 is that of a file the test writes.
    fn fake_catalogue(md5: String) -> [Archive; 1] {
        [Archive { name: "mini", url: "http://127.0.0.1:9/mini.tgz", bytes: 0, md5: md5.leak() }]
    }

    #[test]
    fn a_local_archive_named_like_the_catalogue_needs_its_md5() {
        let dir = tempfile::tempdir().unwrap();
        let genuine = dir.path().join("a/mini.tgz");
        std::fs::create_dir_all(genuine.parent().unwrap()).unwrap();
        std::fs::write(&genuine, b"the genuine bytes").unwrap();
        let catalogue = fake_catalogue(md5_file(&genuine).unwrap());
        let mut events = Vec::new();
        let key = local_key(&genuine, &catalogue, &mut |event| events.push(event)).unwrap();
        assert_eq!(key.name, "mini");
        assert!(matches!(key.identity, Identity::Md5(_)));
        assert!(!events.iter().any(|event| matches!(event, Progress::NotCatalogue { .. })));

        let impostor = dir.path().join("b/mini.tgz");
        std::fs::create_dir_all(impostor.parent().unwrap()).unwrap();
        std::fs::write(&impostor, b"other bytes, same name").unwrap();
        let mut events = Vec::new();
        let key = local_key(&impostor, &catalogue, &mut |event| events.push(event)).unwrap();
        let sha = cache::sha256_file(&impostor).unwrap();
        assert_eq!(key.name, format!("mini-{}", &sha[..16]));
        assert_eq!(key.identity, Identity::Sha256(sha));
        assert!(
            events.iter().any(
                |event| matches!(event, Progress::NotCatalogue { name, .. } if name == "mini")
            ),
            "{events:?}"
        );
    }

    #[test]
    fn urls_name_their_dataset_and_catalogue_urls_keep_their_md5() {
        assert_eq!(Source::url(IMAGENETTE_160.url).unwrap(), Source::from(IMAGENETTE_160));
        let Source::Remote { name, md5, bytes, .. } =
            Source::url("http://127.0.0.1:8000/data/pets.tar.gz?x=1").unwrap()
        else {
            panic!("a URL is a remote source")
        };
        assert_eq!((name.as_str(), md5, bytes), ("pets", None, None));
        assert!(Source::url("ftp://host/x.tgz").is_err());
        assert!(Source::url("http://host/").is_err());
        assert!(Source::url("http://host").is_err());
        let Source::Remote { url, md5, .. } = IMAGEWOOF_160.source_at("http://127.0.0.1:1/m/")
        else {
            panic!("a catalogue archive is a remote source")
        };
        assert_eq!(url, "http://127.0.0.1:1/m/imagewoof2-160.tgz");
        assert_eq!(md5.as_deref(), Some(IMAGEWOOF_160.md5));
    }
}
