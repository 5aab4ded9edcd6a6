//! Listing, labelling and splitting: fastai's `get_image_files`, `parent_label`,
//! `GrandparentSplitter` and `RandomSplitter` behaviours on a tree the test builds.

mod common;

use std::path::PathBuf;

use wick_data::items::split_paths;
use wick_data::{DataError, SplitRule, Vocab, image_folder, list_image_files, parent_label};

fn tree() -> (tempfile::TempDir, Vec<PathBuf>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let files = common::image_tree(dir.path(), &["n02", "n01", "n03"], 4, 8);
    (dir, files)
}

#[test]
fn listing_is_sorted_recursive_and_skips_hidden_and_non_images() {
    let (dir, mut files) = tree();
    let root = dir.path();
    std::fs::write(root.join("noisy_imagenette.csv"), "path,label\n").unwrap();
    std::fs::write(root.join("train/n01/notes.txt"), "x").unwrap();
    std::fs::write(root.join("train/n01/.hidden.JPEG"), "x").unwrap();
    std::fs::create_dir_all(root.join(".cache/n01")).unwrap();
    std::fs::write(root.join(".cache/n01/x.jpg"), "x").unwrap();
    std::fs::write(root.join("train/n01/upper.PNG"), "x").unwrap();
    files.push(root.join("train/n01/upper.PNG"));
    files.sort();
    let listed = list_image_files(root).unwrap();
    assert_eq!(listed, files);
    assert_eq!(listed.len(), 2 * 3 * 4 + 1);
}

#[test]
fn labels_come_from_the_parent_folder_and_vocab_is_sorted() {
    assert_eq!(
        parent_label(std::path::Path::new("/d/train/n03417042/a.JPEG")).unwrap(),
        "n03417042"
    );
    let vocab =
        Vocab::new(["n03".to_string(), "n01".to_string(), "n02".to_string(), "n01".to_string()]);
    assert_eq!(vocab.classes(), ["n01", "n02", "n03"]);
    assert_eq!(vocab.index_of("n02"), Some(1));
    assert_eq!(vocab.index_of("n09"), None);
    assert_eq!(vocab.name(2), Some("n03"));
}

#[test]
fn grandparent_split_is_the_official_split() {
    let (dir, _) = tree();
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    assert_eq!(splits.train.len(), 12);
    assert_eq!(splits.valid.len(), 12);
    assert!(splits.train.paths.iter().all(|p| p.components().any(|c| c.as_os_str() == "train")));
    assert!(splits.valid.paths.iter().all(|p| p.components().any(|c| c.as_os_str() == "val")));
    assert_eq!(splits.vocab.classes(), ["n01", "n02", "n03"]);
    for (path, label) in splits.train.paths.iter().zip(&splits.train.labels) {
        assert_eq!(splits.vocab.name(*label).unwrap(), parent_label(path).unwrap());
    }
}

#[test]
fn random_split_is_seeded_and_takes_floor_of_valid_pct() {
    let files: Vec<PathBuf> =
        (0..13_394).map(|i| PathBuf::from(format!("d/c/{i:05}.jpg"))).collect();
    let rule = SplitRule::Random { valid_pct: 0.2, seed: 42 };
    let (train, valid) = split_paths(files.clone(), &rule).unwrap();
    // fastai's RandomSplitter on Imagenette's 13,394 images: valid = int(0.2 * 13394) = 2,678.
    assert_eq!(valid.len(), 2_678);
    assert_eq!(train.len(), 10_716);
    let (train_again, valid_again) = split_paths(files.clone(), &rule).unwrap();
    assert_eq!((train_again, valid_again.clone()), (train, valid.clone()));
    let (_, valid_other) =
        split_paths(files, &SplitRule::Random { valid_pct: 0.2, seed: 43 }).unwrap();
    assert_ne!(valid_other, valid);
}

#[test]
fn random_split_over_a_folder_mixes_train_and_val() {
    let (dir, _) = tree();
    let splits = image_folder(dir.path(), &SplitRule::Random { valid_pct: 0.25, seed: 7 }).unwrap();
    assert_eq!(splits.valid.len(), 6);
    assert_eq!(splits.train.len(), 18);
}

#[test]
fn errors_name_the_problem() {
    let empty = tempfile::tempdir().unwrap();
    let error = image_folder(empty.path(), &SplitRule::official()).unwrap_err();
    assert!(matches!(error, DataError::BadDataset { .. }), "{error}");
    assert!(error.to_string().contains("no image files"), "{error}");

    let (dir, _) = tree();
    let stray = dir.path().join("val/n09");
    std::fs::create_dir_all(&stray).unwrap();
    common::write_jpeg(&stray.join("x.JPEG"), &common::smooth(8, 8), 90);
    let error = image_folder(dir.path(), &SplitRule::official()).unwrap_err();
    assert!(error.to_string().contains("n09") && error.to_string().contains("x.JPEG"), "{error}");

    let error = split_paths(vec![], &SplitRule::Random { valid_pct: 1.5, seed: 0 }).unwrap_err();
    assert!(error.to_string().contains("valid_pct"), "{error}");
    let missing = list_image_files(&dir.path().join("nope")).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}
