//! The bookkeeping of the dataset cache: the manifest written beside each extracted dataset
//! (which archive it came from, by md5 or sha256, and every folder and file with its size and
//! sha256) and its check on reuse; the per-dataset lock that makes concurrent runs take turns;
//! and the clean-up of staging folders left by a killed extraction.
//!
//! Layout of a cache folder, for a dataset folder `<name>`:
//! - `<name>/`: the dataset, renamed into place only when complete;
//! - `<name>.manifest.json`: what `<name>/` must hold;
//! - `.<name>.lock`: exists while a process extracts `<name>` (an advisory lock on it);
//! - `.<name>.extracting-<pid>/`, `.<name>.stale-<pid>/`: staging and replaced copies, removed
//!   when done; one left behind by a killed process is removed by the next run that can take
//!   `.<name>.lock` (the operating system releases the lock when its holder dies, so a live
//!   extraction is never touched).

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::{Progress, ReuseCheck, hex};
use crate::error::{DataError, Result};

const MANIFEST_FORMAT: &str = "wick-dataset-manifest/1";

/// What identifies the archive a dataset folder was extracted from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Identity {
    /// The md5 of a catalogue archive (checked against the catalogue before extracting).
    Md5(String),
    /// The sha256 of any other archive.
    Sha256(String),
}

/// The manifest file of a dataset folder.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Manifest {
    pub(crate) format: String,
    /// The archive as it was given (for people reading the file; not checked).
    pub(crate) archive: String,
    pub(crate) md5: Option<String>,
    pub(crate) sha256: Option<String>,
    /// Every folder and file under the dataset folder, sorted by path.
    pub(crate) entries: Vec<ManifestEntry>,
}

/// One folder or file of a dataset folder, its path relative to the folder with `/`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManifestEntry {
    pub(crate) path: String,
    /// `None` for a folder.
    pub(crate) bytes: Option<u64>,
    pub(crate) sha256: Option<String>,
}

pub(crate) fn manifest_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!("{name}.manifest.json"))
}

impl Manifest {
    /// The manifest of the folder `root`, with each file's sha256 taken from `hashes` (keyed
    /// by path relative to `root`).
    pub(crate) fn of(
        root: &Path,
        hashes: &BTreeMap<PathBuf, String>,
        archive: &Path,
        md5: Option<String>,
        sha256: Option<String>,
    ) -> Result<Manifest> {
        let listing = walk(root)
            .map_err(|reason| DataError::BadDataset { path: root.to_path_buf(), reason })?;
        let mut entries = Vec::with_capacity(listing.len());
        for (path, bytes) in listing {
            let sha256 = match bytes {
                Some(_) => Some(hashes.get(Path::new(&path)).cloned().ok_or_else(|| {
                    DataError::BadDataset {
                        path: root.join(&path),
                        reason: "appeared during extraction".to_string(),
                    }
                })?),
                None => None,
            };
            entries.push(ManifestEntry { path, bytes, sha256 });
        }
        Ok(Manifest {
            format: MANIFEST_FORMAT.to_string(),
            archive: archive.display().to_string(),
            md5,
            sha256,
            entries,
        })
    }

    /// Writes the manifest to `path` and flushes it to disk.
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
        let text = serde_json::to_string_pretty(self).map_err(|error| DataError::BadDataset {
            path: path.to_path_buf(),
            reason: error.to_string(),
        })?;
        let mut file = File::create(path).map_err(|error| DataError::io(path, error))?;
        file.write_all(text.as_bytes()).map_err(|error| DataError::io(path, error))?;
        file.sync_all().map_err(|error| DataError::io(path, error))
    }
}

/// Checks the dataset folder `dest` against the manifest at `manifest`: the archive identity
/// must be `identity`, and the folder must hold exactly the manifest's folders and files with
/// their sizes (and, with [`ReuseCheck::Contents`], their sha256). `Err` holds the first
/// difference, in words.
pub(crate) fn check(
    dest: &Path,
    manifest: &Path,
    identity: &Identity,
    reuse_check: ReuseCheck,
) -> std::result::Result<(), String> {
    let text = match std::fs::read_to_string(manifest) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return Err(format!("no manifest {}", manifest.display()));
        }
        Err(error) => return Err(format!("{}: {error}", manifest.display())),
    };
    let manifest: Manifest = serde_json::from_str(&text)
        .map_err(|error| format!("unreadable manifest {}: {error}", manifest.display()))?;
    if manifest.format != MANIFEST_FORMAT {
        return Err(format!("manifest format {:?}, expected {MANIFEST_FORMAT:?}", manifest.format));
    }
    let same = match identity {
        Identity::Md5(md5) => manifest.md5.as_deref().is_some_and(|m| m.eq_ignore_ascii_case(md5)),
        Identity::Sha256(sha) => {
            manifest.sha256.as_deref().is_some_and(|s| s.eq_ignore_ascii_case(sha))
        }
    };
    if !same {
        return Err("extracted from another archive".to_string());
    }
    let listing = walk(dest)?;
    let expected: Vec<(&str, Option<u64>)> =
        manifest.entries.iter().map(|entry| (entry.path.as_str(), entry.bytes)).collect();
    let actual: Vec<(&str, Option<u64>)> =
        listing.iter().map(|(path, bytes)| (path.as_str(), *bytes)).collect();
    if expected != actual {
        return Err(first_difference(&expected, &actual));
    }
    if reuse_check == ReuseCheck::Contents {
        for entry in &manifest.entries {
            if let Some(sha256) = &entry.sha256 {
                let path = dest.join(&entry.path);
                let actual = sha256_file(&path).map_err(|error| error.to_string())?;
                if &actual != sha256 {
                    return Err(format!("{} has changed (sha256 {actual})", entry.path));
                }
            }
        }
    }
    Ok(())
}

fn first_difference(expected: &[(&str, Option<u64>)], actual: &[(&str, Option<u64>)]) -> String {
    let describe = |bytes: Option<u64>| match bytes {
        Some(bytes) => format!("a file of {bytes} bytes"),
        None => "a folder".to_string(),
    };
    let expected_map: BTreeMap<&str, Option<u64>> = expected.iter().copied().collect();
    let actual_map: BTreeMap<&str, Option<u64>> = actual.iter().copied().collect();
    for (path, bytes) in &expected_map {
        match actual_map.get(path) {
            None => return format!("{path} is missing"),
            Some(found) if found != bytes => {
                return format!("{path} is {}, expected {}", describe(*found), describe(*bytes));
            }
            Some(_) => {}
        }
    }
    for path in actual_map.keys() {
        if !expected_map.contains_key(path) {
            return format!("{path} is not from the archive");
        }
    }
    "the listing differs".to_string()
}

/// Every folder and file under `root` (not `root` itself), sorted, with a file's size (`None`
/// for a folder); paths relative to `root` with `/`. A link or special file is an error.
fn walk(root: &Path) -> std::result::Result<Vec<(String, Option<u64>)>, String> {
    let mut out = Vec::new();
    let mut stack = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, prefix)) = stack.pop() {
        let entries =
            std::fs::read_dir(&dir).map_err(|error| format!("{}: {error}", dir.display()))?;
        for entry in entries {
            let entry = entry.map_err(|error| format!("{}: {error}", dir.display()))?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .ok_or_else(|| format!("{}: a name that is not UTF-8", entry.path().display()))?;
            let relative =
                if prefix.is_empty() { name.to_string() } else { format!("{prefix}/{name}") };
            let metadata = std::fs::symlink_metadata(entry.path())
                .map_err(|error| format!("{}: {error}", entry.path().display()))?;
            if metadata.is_dir() {
                out.push((relative.clone(), None));
                stack.push((entry.path(), relative));
            } else if metadata.is_file() {
                out.push((relative, Some(metadata.len())));
            } else {
                return Err(format!("{relative} is a link or a special file"));
            }
        }
    }
    out.sort();
    Ok(out)
}

/// The lower-case hex sha256 of a file.
pub(crate) fn sha256_file(path: &Path) -> Result<String> {
    let mut file = File::open(path).map_err(|error| DataError::io(path, error))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0u8; 1 << 16];
    loop {
        let n = file.read(&mut buffer).map_err(|error| DataError::io(path, error))?;
        if n == 0 {
            break;
        }
        hasher.update(&buffer[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

/// An exclusive advisory lock on a lock file, held until dropped. The file is deleted on drop
/// (on Unix), so a cache at rest holds no lock files; a process that opened the file before
/// the deletion notices, once it gets the lock, that the path no longer names its file, and
/// starts over.
#[derive(Debug)]
pub(crate) struct CacheLock {
    path: PathBuf,
    _file: File,
}

impl CacheLock {
    /// Takes the lock at `path`, waiting for another holder (after telling `progress`).
    pub(crate) fn acquire(path: &Path, progress: &mut dyn FnMut(Progress)) -> Result<CacheLock> {
        loop {
            let file = open_lock_file(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => {
                    progress(Progress::Wait { lock: path.to_path_buf() });
                    file.lock().map_err(|error| DataError::io(path, error))?;
                }
                Err(std::fs::TryLockError::Error(error)) => return Err(DataError::io(path, error)),
            }
            if still_named(path, &file) {
                return Ok(CacheLock { path: path.to_path_buf(), _file: file });
            }
        }
    }

    /// Takes the lock at `path` if no one holds it; `None` if someone does.
    pub(crate) fn try_acquire(path: &Path) -> Result<Option<CacheLock>> {
        loop {
            let file = open_lock_file(path)?;
            match file.try_lock() {
                Ok(()) => {}
                Err(std::fs::TryLockError::WouldBlock) => return Ok(None),
                Err(std::fs::TryLockError::Error(error)) => return Err(DataError::io(path, error)),
            }
            if still_named(path, &file) {
                return Ok(Some(CacheLock { path: path.to_path_buf(), _file: file }));
            }
        }
    }
}

impl Drop for CacheLock {
    fn drop(&mut self) {
        // Deleted while still locked; the lock itself is released when the file closes.
        #[cfg(unix)]
        let _ = std::fs::remove_file(&self.path);
    }
}

fn open_lock_file(path: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .map_err(|error| DataError::io(path, error))
}

/// Whether `path` still names the open `file` (it may have been deleted and re-created by
/// another process between our open and our lock).
fn still_named(path: &Path, file: &File) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::MetadataExt;
        match (std::fs::metadata(path), file.metadata()) {
            (Ok(on_disk), Ok(open)) => on_disk.dev() == open.dev() && on_disk.ino() == open.ino(),
            _ => false,
        }
    }
    #[cfg(not(unix))]
    {
        let _ = file;
        path.exists()
    }
}

/// The lock file of the dataset folder `name`.
pub(crate) fn lock_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!(".{name}.lock"))
}

/// The staging folder of this process for the dataset folder `name`.
pub(crate) fn staging_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!(".{name}.extracting-{}", std::process::id()))
}

/// Where this process moves an outdated `name` folder before deleting it.
pub(crate) fn stale_path(cache_dir: &Path, name: &str) -> PathBuf {
    cache_dir.join(format!(".{name}.stale-{}", std::process::id()))
}

/// The dataset folder a leftover belongs to: `.<name>.extracting-<pid>`, `.<name>.stale-<pid>`
/// and (from earlier versions of wick) `.<name>.tmp-<pid>` give `<name>`.
fn leftover_owner(file_name: &str) -> Option<&str> {
    let inner = file_name.strip_prefix('.')?;
    for marker in [".extracting-", ".stale-", ".tmp-"] {
        if let Some(at) = inner.rfind(marker) {
            let pid = &inner[at + marker.len()..];
            if !pid.is_empty() && pid.bytes().all(|byte| byte.is_ascii_digit()) && at > 0 {
                return Some(&inner[..at]);
            }
        }
    }
    None
}

/// Removes what killed extractions left in `cache_dir`: the staging and stale folders of every
/// dataset whose lock no live process holds (each removal is reported as
/// [`Progress::Cleaned`]), and unheld lock files. Folders of a running extraction are left
/// alone. `held` names a dataset whose lock the caller holds: its leftovers are removed too.
pub(crate) fn clean_leftovers(
    cache_dir: &Path,
    held: Option<&str>,
    progress: &mut dyn FnMut(Progress),
) -> Result<()> {
    let entries = match std::fs::read_dir(cache_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(DataError::io(cache_dir, error)),
    };
    let mut by_owner: BTreeMap<String, Vec<PathBuf>> = BTreeMap::new();
    for entry in entries {
        let entry = entry.map_err(|error| DataError::io(cache_dir, error))?;
        let Some(file_name) = entry.file_name().to_str().map(str::to_string) else { continue };
        if let Some(owner) = leftover_owner(&file_name) {
            // Legacy `.tmp-` names are only ever folders here; a file of that name is not ours.
            if file_name.contains(".tmp-") && !entry.path().is_dir() {
                continue;
            }
            by_owner.entry(owner.to_string()).or_default().push(entry.path());
        } else if let Some(owner) =
            file_name.strip_prefix('.').and_then(|inner| inner.strip_suffix(".lock"))
            && !owner.is_empty()
        {
            by_owner.entry(owner.to_string()).or_default();
        }
    }
    for (owner, leftovers) in by_owner {
        let lock = if held == Some(owner.as_str()) {
            None
        } else {
            match CacheLock::try_acquire(&lock_path(cache_dir, &owner))? {
                Some(lock) => Some(lock),
                None => continue,
            }
        };
        for path in leftovers {
            let removed = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            match removed {
                Ok(()) => progress(Progress::Cleaned { path }),
                Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
                Err(error) => return Err(DataError::io(&path, error)),
            }
        }
        drop(lock);
    }
    Ok(())
}

/// Flushes a folder's entry list to disk (renames into it become durable); a no-op where
/// folders cannot be opened as files.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    #[cfg(unix)]
    {
        let handle = File::open(dir).map_err(|error| DataError::io(dir, error))?;
        handle.sync_all().map_err(|error| DataError::io(dir, error))?;
    }
    #[cfg(not(unix))]
    let _ = dir;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::leftover_owner;

    #[test]
    fn leftover_names_are_recognised_and_nothing_else() {
        assert_eq!(leftover_owner(".imagenette2.extracting-123"), Some("imagenette2"));
        assert_eq!(leftover_owner(".ds-0a1b.stale-9"), Some("ds-0a1b"));
        assert_eq!(leftover_owner(".a.b.tmp-42"), Some("a.b"));
        assert_eq!(leftover_owner("imagenette2.extracting-123"), None);
        assert_eq!(leftover_owner(".imagenette2.extracting-"), None);
        assert_eq!(leftover_owner(".imagenette2.extracting-12a"), None);
        assert_eq!(leftover_owner(".extracting-12"), None);
        assert_eq!(leftover_owner("imagenette2"), None);
    }
}
