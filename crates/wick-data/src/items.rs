//! Items: which image files a dataset has, their labels, the class vocabulary and the
//! train/valid split. This is fastai's `get_image_files` + `parent_label` +
//! `GrandparentSplitter` / `RandomSplitter` + `CategoryBlock`, with one deliberate
//! difference: file lists are sorted, so results never depend on the filesystem's order
//! (fastai keeps `os.walk` order, which makes its splits unrepeatable across machines).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use crate::error::{DataError, Result};

/// File extensions (compared lower-cased) that [`list_image_files`] keeps: the formats
/// [`crate::decode`] can read.
pub const IMAGE_EXTENSIONS: &[&str] = &["jpg", "jpeg", "jpe", "png"];

/// Every image file under `root`, recursively, sorted by path. Hidden files and folders
/// (names starting with `.`) are skipped, as fastai's `get_image_files` does; symbolic links
/// to folders are followed once (a link cycle is not walked twice).
pub fn list_image_files(root: &Path) -> Result<Vec<PathBuf>> {
    let metadata = std::fs::metadata(root).map_err(|error| DataError::io(root, error))?;
    if !metadata.is_dir() {
        return Err(DataError::BadDataset {
            path: root.to_path_buf(),
            reason: "is not a folder".to_string(),
        });
    }
    let mut files = Vec::new();
    let mut visited = BTreeSet::new();
    walk(root, &mut files, &mut visited)?;
    files.sort();
    Ok(files)
}

fn walk(dir: &Path, files: &mut Vec<PathBuf>, visited: &mut BTreeSet<PathBuf>) -> Result<()> {
    let canonical = dir.canonicalize().map_err(|error| DataError::io(dir, error))?;
    if !visited.insert(canonical) {
        return Ok(());
    }
    let entries = std::fs::read_dir(dir).map_err(|error| DataError::io(dir, error))?;
    for entry in entries {
        let entry = entry.map_err(|error| DataError::io(dir, error))?;
        if entry.file_name().to_string_lossy().starts_with('.') {
            continue;
        }
        let path = entry.path();
        // `metadata` follows symbolic links, so a linked folder is walked and a linked file kept.
        let Ok(metadata) = std::fs::metadata(&path) else { continue };
        if metadata.is_dir() {
            walk(&path, files, visited)?;
        } else if metadata.is_file() && has_image_extension(&path) {
            files.push(path);
        }
    }
    Ok(())
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
    Grandparent { train: String, valid: String },
    /// A seeded random `valid_pct` of all items (fastai's `RandomSplitter`, which chapter 7
    /// uses by default): the first ⌊valid_pct·N⌋ of a seeded permutation go to validation.
    Random { valid_pct: f64, seed: u64 },
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
    pub train: Items,
    pub valid: Items,
    /// Built from the training labels, as fastai's `Categorize` does.
    pub vocab: Vocab,
}

/// Lists the images under `root`, labels them by parent folder and splits them by `rule`.
/// Errors name the folder when no images are found or a split is empty, and the file when a
/// validation label does not occur in the training set.
pub fn image_folder(root: &Path, rule: &SplitRule) -> Result<Splits> {
    let files = list_image_files(root)?;
    if files.is_empty() {
        return Err(DataError::BadDataset {
            path: root.to_path_buf(),
            reason: format!("no image files ({}) found", IMAGE_EXTENSIONS.join(", ")),
        });
    }
    let (train_paths, valid_paths) = split_paths(files, rule)?;
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
    Ok(Splits { train, valid, vocab })
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
