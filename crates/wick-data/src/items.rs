//! Items: which image files a dataset has, their labels, the class vocabulary and the
//! train/valid split. This is fastai's `get_image_files` + `parent_label` +
//! `GrandparentSplitter` / `RandomSplitter` + `CategoryBlock`, with one deliberate
//! difference: file lists are sorted, so results never depend on the filesystem's order
//! (fastai keeps `os.walk` order, which makes its splits unrepeatable across machines).
//! Nothing is dropped silently: the listing returns every entry it leaves out (other
//! extensions, hidden names, dangling links, link loops, links out of the root, names that are
//! not UTF-8, pipes) with its [`Exclusion`] kind and reason, and the split says which files no
//! split takes.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// File extensions (compared lower-cased) that [`list_image_files`] keeps: those of the formats
/// fastai's `get_image_files` lists and PIL opens. The extension only decides what is listed;
/// [`crate::decode`] picks the decoder from the file's bytes.
pub const IMAGE_EXTENSIONS: &[&str] =
    &["jpg", "jpeg", "jpe", "jfif", "png", "bmp", "gif", "tif", "tiff", "webp"];

/// Why a file (or folder) under a data root is not used. [`Exclusion::is_bad_file`] tells the
/// files a bad-file policy applies to (something that should have been an image and is not
/// usable) from those left out by rule (other extensions, hidden names, outside the splits).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Exclusion {
    /// The extension is not one of [`IMAGE_EXTENSIONS`].
    OtherExtension,
    /// The name starts with `.` (fastai's `get_image_files` skips these too).
    Hidden,
    /// Under neither the training nor the validation folder of a grandparent split.
    OutsideSplits,
    /// A symbolic link to a folder outside the data root: listing never leaves the root.
    LinkOutsideRoot,
    /// A symbolic link to a folder that is already listed under another name.
    DuplicateFolder,
    /// A symbolic link whose target does not exist.
    DanglingLink,
    /// A symbolic link that leads back to itself or to a folder that contains it.
    LinkLoop,
    /// The name is not valid UTF-8, so it could not be stored and read back exactly.
    NameNotUtf8,
    /// The file or folder could not be read (permissions, I/O error).
    Unreadable,
    /// Not a decodable image (empty, truncated, not an image, over the pixel limit), found by
    /// the pre-scan ([`crate::scan`]).
    BadImage,
    /// Passed the pre-scan but failed while its batch was built; replaced or left out by the
    /// loader ([`crate::loader::BadFilePolicy::Skip`]).
    FailedInBatch,
}

impl Exclusion {
    /// Whether a bad-file policy applies: `true` for files that should be images and cannot be
    /// used, `false` for files left out by the listing rules.
    pub fn is_bad_file(self) -> bool {
        !matches!(
            self,
            Exclusion::OtherExtension
                | Exclusion::Hidden
                | Exclusion::OutsideSplits
                | Exclusion::LinkOutsideRoot
                | Exclusion::DuplicateFolder
        )
    }

    /// A short snake_case name for reports.
    pub fn name(self) -> &'static str {
        match self {
            Exclusion::OtherExtension => "other_extension",
            Exclusion::Hidden => "hidden",
            Exclusion::OutsideSplits => "outside_splits",
            Exclusion::LinkOutsideRoot => "link_outside_root",
            Exclusion::DuplicateFolder => "duplicate_folder",
            Exclusion::DanglingLink => "dangling_link",
            Exclusion::LinkLoop => "link_loop",
            Exclusion::NameNotUtf8 => "name_not_utf8",
            Exclusion::Unreadable => "unreadable",
            Exclusion::BadImage => "bad_image",
            Exclusion::FailedInBatch => "failed_in_batch",
        }
    }
}

/// A file or folder under a data root that is not used, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Excluded {
    /// The file or folder.
    pub path: PathBuf,
    /// Why it is left out, as a category to count by.
    pub kind: Exclusion,
    /// A sentence for people (the decoder's error, the link's target, ...).
    pub reason: String,
}

impl Excluded {
    pub(crate) fn new(path: &Path, kind: Exclusion, reason: impl Into<String>) -> Self {
        Excluded { path: path.to_path_buf(), kind, reason: reason.into() }
    }
}

/// Everything under a data root: the image files, sorted, and every entry left out with its
/// reason (nothing is dropped silently).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Listing {
    /// Image files by extension, sorted by path.
    pub files: Vec<PathBuf>,
    /// Entries not listed, sorted by path.
    pub excluded: Vec<Excluded>,
}

/// Every image file under `root`, recursively, sorted by path (see [`list_images`], which also
/// says what was left out and why).
///
/// # Errors
/// `root` is missing or not a folder, or a folder cannot be read.
pub fn list_image_files(root: &Path) -> Result<Vec<PathBuf>> {
    Ok(list_images(root)?.files)
}

/// Lists `root` recursively, in sorted order. Files with an extension in [`IMAGE_EXTENSIONS`]
/// are listed; everything else is recorded in [`Listing::excluded`] with its reason: hidden
/// entries (names starting with `.`, skipped as fastai's `get_image_files` does, contents not
/// walked), other extensions, names that are not UTF-8, dangling symbolic links and link loops,
/// links to folders outside `root` (listing never leaves the root) or to folders already listed.
/// Symbolic links to files are listed wherever they point (a dataset made of links to another
/// copy is common); links to folders are followed only inside the root, once.
///
/// # Errors
/// `root` is missing or not a folder, or a folder inside it cannot be read.
pub fn list_images(root: &Path) -> Result<Listing> {
    let metadata = std::fs::metadata(root).map_err(|error| DataError::io(root, error))?;
    if !metadata.is_dir() {
        return Err(DataError::BadDataset {
            path: root.to_path_buf(),
            reason: "is not a folder".to_string(),
        });
    }
    let canonical_root = root.canonicalize().map_err(|error| DataError::io(root, error))?;
    let mut walker = Walker {
        canonical_root: canonical_root.clone(),
        listing: Listing::default(),
        visited: BTreeMap::new(),
    };
    walker.visited.insert(canonical_root, root.to_path_buf());
    walker.walk(root)?;
    let mut listing = walker.listing;
    listing.files.sort();
    listing.excluded.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(listing)
}

struct Walker {
    canonical_root: PathBuf,
    listing: Listing,
    /// Canonical folder -> the path it was first listed under.
    visited: BTreeMap<PathBuf, PathBuf>,
}

impl Walker {
    fn exclude(&mut self, path: &Path, kind: Exclusion, reason: impl Into<String>) {
        self.listing.excluded.push(Excluded::new(path, kind, reason));
    }

    fn walk(&mut self, dir: &Path) -> Result<()> {
        let entries = std::fs::read_dir(dir).map_err(|error| DataError::io(dir, error))?;
        let mut paths = Vec::new();
        for entry in entries {
            paths.push(entry.map_err(|error| DataError::io(dir, error))?.path());
        }
        // Sorted, so that which of two names for one folder is walked never depends on the
        // filesystem's order.
        paths.sort();
        for path in paths {
            self.entry(&path)?;
        }
        Ok(())
    }

    fn entry(&mut self, path: &Path) -> Result<()> {
        let Some(name) = path.file_name() else { return Ok(()) };
        if name.as_encoded_bytes().starts_with(b".") {
            self.exclude(path, Exclusion::Hidden, "hidden (the name starts with '.')");
            return Ok(());
        }
        if name.to_str().is_none() {
            self.exclude(
                path,
                Exclusion::NameNotUtf8,
                "the name is not valid UTF-8, so the run could not store it exactly; rename it",
            );
            return Ok(());
        }
        let is_link = match std::fs::symlink_metadata(path) {
            Ok(link) => link.file_type().is_symlink(),
            Err(error) => {
                self.exclude(path, Exclusion::Unreadable, error.to_string());
                return Ok(());
            }
        };
        // `metadata` follows symbolic links.
        let metadata = match std::fs::metadata(path) {
            Ok(metadata) => metadata,
            Err(error) if is_link => {
                let target = std::fs::read_link(path)
                    .map(|target| target.display().to_string())
                    .unwrap_or_else(|_| "?".to_string());
                // ELOOP: a chain of links that comes back to itself.
                let (kind, reason) = if error.raw_os_error() == Some(40) {
                    (Exclusion::LinkLoop, format!("symbolic link loop (-> {target})"))
                } else if error.kind() == std::io::ErrorKind::NotFound {
                    (
                        Exclusion::DanglingLink,
                        format!("dangling symbolic link: its target {target} does not exist"),
                    )
                } else {
                    (Exclusion::Unreadable, format!("symbolic link to {target}: {error}"))
                };
                self.exclude(path, kind, reason);
                return Ok(());
            }
            Err(error) => {
                self.exclude(path, Exclusion::Unreadable, error.to_string());
                return Ok(());
            }
        };
        if metadata.is_dir() {
            return self.folder(path, is_link);
        }
        if !metadata.is_file() {
            // A FIFO, socket or device: reading it could block or never end.
            self.exclude(
                path,
                Exclusion::Unreadable,
                "not a regular file (a pipe, socket or device)",
            );
        } else if has_image_extension(path) {
            self.listing.files.push(path.to_path_buf());
        } else {
            let extension = path
                .extension()
                .map(|extension| format!(".{}", extension.to_string_lossy().to_lowercase()))
                .unwrap_or_else(|| "no extension".to_string());
            self.exclude(
                path,
                Exclusion::OtherExtension,
                format!("not an image file by its extension ({extension})"),
            );
        }
        Ok(())
    }

    fn folder(&mut self, path: &Path, is_link: bool) -> Result<()> {
        let canonical = match path.canonicalize() {
            Ok(canonical) => canonical,
            Err(error) => {
                self.exclude(path, Exclusion::Unreadable, error.to_string());
                return Ok(());
            }
        };
        if is_link {
            let shown = canonical.display();
            if !canonical.starts_with(&self.canonical_root) {
                self.exclude(
                    path,
                    Exclusion::LinkOutsideRoot,
                    format!(
                        "symbolic link to the folder {shown}, outside the data root; not followed"
                    ),
                );
                return Ok(());
            }
            let real_parent = path.parent().and_then(|parent| parent.canonicalize().ok());
            if real_parent.is_some_and(|parent| parent.starts_with(&canonical)) {
                self.exclude(
                    path,
                    Exclusion::LinkLoop,
                    format!(
                        "symbolic link to {shown}, a folder that contains it (a loop); not followed"
                    ),
                );
                return Ok(());
            }
        }
        if let Some(first) = self.visited.get(&canonical) {
            let reason =
                format!("the same folder as {}, already listed; not walked twice", first.display());
            self.exclude(path, Exclusion::DuplicateFolder, reason);
            return Ok(());
        }
        self.visited.insert(canonical, path.to_path_buf());
        match self.walk(path) {
            Err(DataError::Io { source, .. }) => {
                self.exclude(
                    path,
                    Exclusion::Unreadable,
                    format!("cannot list the folder: {source}"),
                );
                Ok(())
            }
            other => other,
        }
    }
}

fn has_image_extension(path: &Path) -> bool {
    let Some(extension) = path.extension() else { return false };
    let extension = extension.to_string_lossy().to_ascii_lowercase();
    IMAGE_EXTENSIONS.contains(&extension.as_str())
}

/// The label of an image: the name of its parent folder (fastai's `parent_label`).
pub fn parent_label(path: &Path) -> Result<String> {
    let parent = path.parent().and_then(Path::file_name).ok_or_else(|| DataError::BadDataset {
        path: path.to_path_buf(),
        reason: "has no parent folder to take a label from".to_string(),
    })?;
    parent.to_str().map(str::to_string).ok_or_else(|| DataError::BadDataset {
        path: path.to_path_buf(),
        reason: "parent folder name is not valid UTF-8".to_string(),
    })
}

/// The sorted class names; a label's index is its position here (fastai's `CategoryMap`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Vocab {
    classes: Vec<String>,
}

impl Vocab {
    /// A vocabulary of the given class names, sorted and deduplicated.
    pub fn new(classes: impl IntoIterator<Item = String>) -> Self {
        let unique: BTreeSet<String> = classes.into_iter().collect();
        Vocab { classes: unique.into_iter().collect() }
    }

    /// The index of `class`, if it is in the vocabulary.
    pub fn index_of(&self, class: &str) -> Option<u32> {
        let index = self.classes.binary_search_by(|probe| probe.as_str().cmp(class)).ok()?;
        u32::try_from(index).ok()
    }

    /// The class name at `index`.
    pub fn name(&self, index: u32) -> Option<&str> {
        self.classes.get(index as usize).map(String::as_str)
    }

    /// The number of classes, `K`.
    pub fn len(&self) -> usize {
        self.classes.len()
    }

    /// Whether there are no classes.
    pub fn is_empty(&self) -> bool {
        self.classes.is_empty()
    }

    /// The class names in index order.
    pub fn classes(&self) -> &[String] {
        &self.classes
    }
}

/// How items are divided into a training and a validation set.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitRule {
    /// By the name of each file's grandparent folder, e.g. Imagenette's official
    /// `train/<class>/x.JPEG` and `val/<class>/y.JPEG` (fastai's `GrandparentSplitter`).
    /// Files under neither folder are left out.
    Grandparent {
        /// The training folder's name, e.g. `train`.
        train: String,
        /// The validation folder's name, e.g. `val`.
        valid: String,
    },
    /// A seeded random `valid_pct` of all items (fastai's `RandomSplitter`, which chapter 7
    /// uses by default): the first ⌊valid_pct·N⌋ of a seeded permutation go to validation.
    Random {
        /// The validation fraction, in [0, 1].
        valid_pct: f64,
        /// Seeds the permutation.
        seed: u64,
    },
}

impl SplitRule {
    /// Imagenette's official split: `train/` and `val/`.
    pub fn official() -> Self {
        SplitRule::Grandparent { train: "train".to_string(), valid: "val".to_string() }
    }
}

/// Labelled image files of one split, in a fixed order (sorted by path).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Items {
    /// Image files.
    pub paths: Vec<PathBuf>,
    /// The class index of each file in the split's [`Vocab`].
    pub labels: Vec<u32>,
}

impl Items {
    /// The number of items.
    pub fn len(&self) -> usize {
        self.paths.len()
    }

    /// Whether there are no items.
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
}

/// A labelled dataset divided into training and validation items.
#[derive(Debug, Clone, PartialEq)]
pub struct Splits {
    /// The training items.
    pub train: Items,
    /// The validation items.
    pub valid: Items,
    /// Built from the training labels, as fastai's `Categorize` does.
    pub vocab: Vocab,
}

/// Lists the images under `root`, labels them by parent folder and splits them by `rule`.
/// Errors name the folder when no images are found or a split is empty, and the file when a
/// validation label does not occur in the training set. What the listing leaves out is
/// dropped here; [`list_images`] and [`label_and_split`] give the same result with every
/// left-out entry and its reason.
///
/// # Errors
/// See above; also any error of [`list_images`].
pub fn image_folder(root: &Path, rule: &SplitRule) -> Result<Splits> {
    let listing = list_images(root)?;
    Ok(label_and_split(root, listing.files, rule)?.0)
}

/// Labels `files` (image files under `root`, sorted) by parent folder and splits them by
/// `rule`. Returns the splits and the files no split takes (under neither folder of a
/// grandparent split), each with its reason.
///
/// # Errors
/// No files, an empty split, or a validation label missing from the training split (naming
/// the file).
pub fn label_and_split(
    root: &Path,
    files: Vec<PathBuf>,
    rule: &SplitRule,
) -> Result<(Splits, Vec<Excluded>)> {
    if files.is_empty() {
        return Err(DataError::BadDataset {
            path: root.to_path_buf(),
            reason: format!("no image files ({}) found", IMAGE_EXTENSIONS.join(", ")),
        });
    }
    let all = files.clone();
    let (train_paths, valid_paths) = split_paths(files, rule)?;
    let mut outside = Vec::new();
    if let SplitRule::Grandparent { train, valid } = rule {
        let taken: BTreeSet<&PathBuf> = train_paths.iter().chain(&valid_paths).collect();
        for path in all.iter().filter(|path| !taken.contains(path)) {
            let reason = format!("not in a class folder under {train}/ or {valid}/");
            outside.push(Excluded::new(path, Exclusion::OutsideSplits, reason));
        }
    }
    for (name, paths) in [("training", &train_paths), ("validation", &valid_paths)] {
        if paths.is_empty() {
            return Err(DataError::BadDataset {
                path: root.to_path_buf(),
                reason: format!("the {name} split is empty under {rule:?}"),
            });
        }
    }
    let train_names =
        train_paths.iter().map(|path| parent_label(path)).collect::<Result<Vec<_>>>()?;
    let vocab = Vocab::new(train_names.iter().cloned());
    let label_items = |paths: Vec<PathBuf>| -> Result<Items> {
        let mut labels = Vec::with_capacity(paths.len());
        for path in &paths {
            let name = parent_label(path)?;
            let label = vocab.index_of(&name).ok_or_else(|| DataError::BadDataset {
                path: path.clone(),
                reason: format!("label {name:?} does not occur in the training split"),
            })?;
            labels.push(label);
        }
        Ok(Items { paths, labels })
    };
    let train = label_items(train_paths)?;
    let valid = label_items(valid_paths)?;
    Ok((Splits { train, valid, vocab }, outside))
}

/// Divides sorted paths into (train, valid) by `rule`; both halves stay sorted.
pub fn split_paths(files: Vec<PathBuf>, rule: &SplitRule) -> Result<(Vec<PathBuf>, Vec<PathBuf>)> {
    match rule {
        SplitRule::Grandparent { train, valid } => {
            let grandparent = |path: &Path| -> Option<String> {
                let name = path.parent()?.parent()?.file_name()?;
                Some(name.to_string_lossy().into_owned())
            };
            let mut train_paths = Vec::new();
            let mut valid_paths = Vec::new();
            for path in files {
                match grandparent(&path) {
                    Some(name) if &name == train => train_paths.push(path),
                    Some(name) if &name == valid => valid_paths.push(path),
                    _ => {}
                }
            }
            Ok((train_paths, valid_paths))
        }
        SplitRule::Random { valid_pct, seed } => {
            if !(0.0..1.0).contains(valid_pct) {
                return Err(DataError::InvalidConfig {
                    name: "valid_pct",
                    reason: format!("{valid_pct} is not in [0, 1)"),
                });
            }
            let n_valid = (valid_pct * files.len() as f64).floor() as usize;
            let mut order: Vec<usize> = (0..files.len()).collect();
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(*seed));
            let mut is_valid = vec![false; files.len()];
            for &index in &order[..n_valid] {
                is_valid[index] = true;
            }
            let (valid_paths, train_paths): (Vec<_>, Vec<_>) =
                files.into_iter().zip(is_valid).partition(|(_, valid)| *valid);
            Ok((
                train_paths.into_iter().map(|(path, _)| path).collect(),
                valid_paths.into_iter().map(|(path, _)| path).collect(),
            ))
        }
    }
}
