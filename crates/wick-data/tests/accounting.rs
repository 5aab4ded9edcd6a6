//! Data accounting: every format fastai lists decoded by its bytes, every entry the listing
//! leaves out reported with its reason (symbolic links included), the pre-scan taking out bad
//! files before an epoch, and the loader's skip policy for files that fail mid-epoch (seeded
//! replacement in training, left out in validation, never a short or empty training batch).

mod common;

use std::path::{Path, PathBuf};

use candle::Device;
use wick_data::{
    BadFilePolicy, DataLoader, DecodeConfig, Exclusion, ItemPipeline, Items, LoaderConfig,
    ScanConfig, ScanDepth, decode_rgb, list_images, scan_files,
};

/// Saves `image` in `format` at `path` (the extension is the caller's choice).
fn save_as(path: &Path, image: &image::RgbImage, format: image::ImageFormat) {
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).expect("encode");
    std::fs::write(path, bytes.into_inner()).expect("write");
}

fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    let total: u64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| u64::from(x.abs_diff(*y))).sum();
    total as f64 / a.as_raw().len() as f64
}

#[test]
fn every_listed_format_decodes_by_its_bytes_not_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let original = common::smooth(24, 16);
    let cases = [
        ("a.png", image::ImageFormat::Png, 0.0),
        ("b.bmp", image::ImageFormat::Bmp, 0.0),
        ("c.tif", image::ImageFormat::Tiff, 0.0),
        ("d.webp", image::ImageFormat::WebP, 0.0), // lossless
        ("e.gif", image::ImageFormat::Gif, 12.0),  // palette quantisation
        // A WebP saved under a JPEG name (it happens with scraped data sets).
        ("webp_named.jpg", image::ImageFormat::WebP, 0.0),
        ("png_named.gif", image::ImageFormat::Png, 0.0),
    ];
    for (name, format, tolerance) in cases {
        let path = dir.path().join(name);
        save_as(&path, &original, format);
        let bytes = std::fs::read(&path).unwrap();
        let decoded = decode_rgb(&bytes, &path, (u32::MAX, u32::MAX), &DecodeConfig::default())
            .unwrap_or_else(|error| panic!("{name}: {error}"));
        assert_eq!(decoded.original_size, (24, 16), "{name}");
        assert_eq!(decoded.image.dimensions(), (24, 16), "{name}");
        let diff = mean_abs_diff(&decoded.image, &original);
        assert!(diff <= tolerance, "{name}: mean difference {diff}");
        assert_eq!(wick_data::decode::image_size(&bytes, &path).unwrap(), (24, 16), "{name}");
    }
    // The pixel limit holds for every format, from the header.
    let path = dir.path().join("b.bmp");
    let bytes = std::fs::read(&path).unwrap();
    let error = decode_rgb(&bytes, &path, (1, 1), &DecodeConfig { max_pixels: 100 }).unwrap_err();
    assert!(error.to_string().contains("over the limit"), "{error}");
    // Every one of them is listed, by extension; the decoder is the bytes' business.
    let listing = list_images(dir.path()).unwrap();
    assert_eq!(listing.files.len(), cases.len());
    assert!(listing.excluded.is_empty(), "{:?}", listing.excluded);
}

fn kinds(listing: &wick_data::Listing, root: &Path) -> Vec<(String, Exclusion)> {
    listing
        .excluded
        .iter()
        .map(|e| (e.path.strip_prefix(root).unwrap().display().to_string(), e.kind))
        .collect()
}

#[cfg(unix)]
#[test]
fn the_listing_reports_every_entry_it_leaves_out() {
    use std::os::unix::ffi::OsStrExt;
    use std::os::unix::fs::symlink;

    let outside = tempfile::tempdir().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let a = root.join("train/a");
    std::fs::create_dir_all(&a).unwrap();
    common::write_jpeg(&a.join("x.jpg"), &common::smooth(8, 8), 90);
    std::fs::create_dir_all(outside.path().join("b")).unwrap();
    common::write_jpeg(&outside.path().join("b/y.jpg"), &common::smooth(8, 8), 90);
    common::write_jpeg(&outside.path().join("z.jpg"), &common::smooth(8, 8), 90);

    std::fs::write(a.join("notes.txt"), "x").unwrap();
    std::fs::write(a.join("README"), "x").unwrap();
    std::fs::write(a.join(".DS_Store"), "x").unwrap();
    symlink(a.join("nowhere.jpg"), a.join("gone.jpg")).unwrap();
    symlink(a.join("loop2.jpg"), a.join("loop1.jpg")).unwrap();
    symlink(a.join("loop1.jpg"), a.join("loop2.jpg")).unwrap();
    symlink(root.join("train"), a.join("up")).unwrap(); // a folder that contains the link
    symlink(outside.path().join("b"), root.join("train/b")).unwrap(); // out of the root
    symlink(&a, root.join("train/c")).unwrap(); // the same folder twice
    symlink(outside.path().join("z.jpg"), a.join("linked.jpg")).unwrap(); // a file link: kept
    // A named pipe called like an image: reading it would block the scan forever.
    let fifo = std::process::Command::new("mkfifo").arg(a.join("pipe.jpg")).status();
    let made_fifo = fifo.is_ok_and(|status| status.success());
    let not_utf8 = a.join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
    std::fs::write(&not_utf8, "x").unwrap();

    let listing = list_images(root).unwrap();
    let files: Vec<PathBuf> = listing.files.clone();
    assert_eq!(files, [a.join("linked.jpg"), a.join("x.jpg")]);
    let mut found = kinds(&listing, root);
    found.retain(|(path, _)| !path.contains("caf"));
    if made_fifo {
        let at = found.iter().position(|(path, _)| path == "train/a/pipe.jpg").expect("pipe");
        assert_eq!(found.remove(at).1, Exclusion::Unreadable);
    }
    assert_eq!(
        found,
        [
            ("train/a/.DS_Store".to_string(), Exclusion::Hidden),
            ("train/a/README".to_string(), Exclusion::OtherExtension),
            ("train/a/gone.jpg".to_string(), Exclusion::DanglingLink),
            ("train/a/loop1.jpg".to_string(), Exclusion::LinkLoop),
            ("train/a/loop2.jpg".to_string(), Exclusion::LinkLoop),
            ("train/a/notes.txt".to_string(), Exclusion::OtherExtension),
            ("train/a/up".to_string(), Exclusion::LinkLoop),
            ("train/b".to_string(), Exclusion::LinkOutsideRoot),
            ("train/c".to_string(), Exclusion::DuplicateFolder),
        ]
    );
    let refused = listing.excluded.iter().find(|e| e.path == not_utf8).expect("non-UTF-8 name");
    assert_eq!(refused.kind, Exclusion::NameNotUtf8);
    let dangling = listing.excluded.iter().find(|e| e.kind == Exclusion::DanglingLink).unwrap();
    assert!(dangling.reason.contains("nowhere.jpg"), "{}", dangling.reason);
    // Policies apply to files that should have been images, not to entries left out by rule.
    assert!(Exclusion::DanglingLink.is_bad_file() && Exclusion::NameNotUtf8.is_bad_file());
    assert!(!Exclusion::OtherExtension.is_bad_file() && !Exclusion::LinkOutsideRoot.is_bad_file());
}

/// The bad files of the reliability reproducer (`mkbad.py`), from one real JPEG.
fn bad_files(dir: &Path, good: &Path) -> Vec<PathBuf> {
    let data = std::fs::read(good).unwrap();
    let chunk = |kind: &[u8], body: &[u8]| {
        let mut out = (body.len() as u32).to_be_bytes().to_vec();
        let mut crc = flate2::Crc::new();
        crc.update(kind);
        crc.update(body);
        out.extend_from_slice(kind);
        out.extend_from_slice(body);
        out.extend_from_slice(&crc.sum().to_be_bytes());
        out
    };
    let mut header = 60_000u32.to_be_bytes().to_vec();
    header.extend_from_slice(&60_000u32.to_be_bytes());
    header.extend_from_slice(&[8, 2, 0, 0, 0]);
    let mut bomb = b"\x89PNG\r\n\x1a\n".to_vec();
    bomb.extend(chunk(b"IHDR", &header));
    let mut zlib = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::default());
    std::io::Write::write_all(&mut zlib, &[0u8; 1000]).unwrap();
    bomb.extend(chunk(b"IDAT", &zlib.finish().unwrap()));
    bomb.extend(chunk(b"IEND", b""));
    let mut garbage = vec![0xFF, 0xD8, 0xFF];
    garbage.extend((0..8).flat_map(|_| 0..=255u8));
    let files: [(&str, Vec<u8>); 5] = [
        ("bad_zero_bytes.jpg", Vec::new()),
        ("bad_text.JPEG", b"not an image\n".to_vec()),
        ("bad_truncated.jpg", data[..data.len() / 2].to_vec()),
        ("bad_bomb_60000.png", bomb),
        ("bad_garbage.jpg", garbage),
    ];
    files
        .into_iter()
        .map(|(name, bytes)| {
            let path = dir.join(name);
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect()
}

#[test]
fn the_pre_scan_takes_out_every_kind_of_bad_file_and_keeps_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let good: Vec<PathBuf> = (0..3)
        .map(|n| {
            let path = dir.path().join(format!("good_{n}.jpg"));
            common::write_jpeg(&path, &common::smooth(160, 120), 90);
            path
        })
        .collect();
    let bad = bad_files(dir.path(), &good[0]);
    let mut files = vec![good[0].clone(), bad[0].clone(), good[1].clone()];
    files.extend(bad.iter().skip(1).cloned());
    files.push(good[2].clone());
    files.push(dir.path().join("vanished.jpg"));

    let config = ScanConfig { n_threads: 2, ..ScanConfig::default() };
    let (kept, excluded) = scan_files(&files, &config).unwrap();
    assert_eq!(kept, good);
    let names: Vec<String> =
        excluded.iter().map(|e| e.path.file_name().unwrap().to_string_lossy().into()).collect();
    assert_eq!(
        names,
        [
            "bad_zero_bytes.jpg",
            "bad_text.JPEG",
            "bad_truncated.jpg",
            "bad_bomb_60000.png",
            "bad_garbage.jpg",
            "vanished.jpg"
        ]
    );
    assert!(excluded[0].reason.contains("empty"), "{}", excluded[0].reason);
    assert!(excluded[3].reason.contains("over the limit"), "{}", excluded[3].reason);
    assert_eq!(excluded[5].kind, Exclusion::Unreadable);
    assert!(excluded[..5].iter().all(|e| e.kind == Exclusion::BadImage));
    assert!(excluded.iter().all(|e| !e.reason.contains('\n')), "reasons are one line");

    // A header-only scan is cheaper and misses what only a decode finds (the truncated file).
    let header = ScanConfig { depth: ScanDepth::Header, ..config };
    let (kept, _) = scan_files(&files, &header).unwrap();
    assert!(kept.contains(&bad[2]), "the truncated JPEG has a valid header");
}

/// Items of two classes: `good` real images then the files of `bad`, labels alternating.
fn items(dir: &Path, good: usize, bad: &[&str]) -> Items {
    let mut items = Items::default();
    for n in 0..good {
        let path = dir.join(format!("good_{n:02}.jpg"));
        common::write_jpeg(&path, &common::smooth(40 + n as u32, 40), 90);
        items.paths.push(path);
    }
    for name in bad {
        let path = dir.join(name);
        std::fs::write(&path, b"\xFF\xD8\xFF truncated").unwrap();
        items.paths.push(path);
    }
    items.labels = (0..items.paths.len() as u32).map(|i| i % 2).collect();
    items
}

fn epoch(loader: &DataLoader, epoch: u64) -> Vec<(Vec<usize>, Vec<u32>, Vec<f32>)> {
    loader
        .epoch(epoch)
        .map(|batch| {
            let batch = batch.unwrap();
            let xs = batch.xs.flatten_all().unwrap().to_vec1().unwrap();
            (batch.item_indices, batch.ys.to_vec1().unwrap(), xs)
        })
        .collect()
}

#[test]
fn a_training_loader_replaces_a_file_failing_mid_epoch_by_a_seeded_draw() {
    let dir = tempfile::tempdir().unwrap();
    let items = items(dir.path(), 7, &["fails_late.jpg"]);
    let bad_index = 7;
    let make = |threads: usize| {
        let config = LoaderConfig {
            n_threads: threads,
            bad_files: BadFilePolicy::Skip,
            ..LoaderConfig::train(2, 5)
        };
        DataLoader::new(items.clone(), ItemPipeline::chapter7(16), config, Device::Cpu).unwrap()
    };
    let loader = make(1);
    assert_eq!(loader.len(), 4, "the stated length: 8 items in batches of 2");
    for epoch_idx in 0..3 {
        let batches = epoch(&loader, epoch_idx);
        assert_eq!(batches.len(), 4);
        for (indices, labels, _) in &batches {
            assert_eq!(indices.len(), 2, "a training batch is never short");
            assert!(!indices.contains(&bad_index));
            for (index, label) in indices.iter().zip(labels) {
                assert_eq!(*label, items.labels[*index], "the label follows the replacement");
            }
        }
        // The same replacement whatever the thread count.
        assert_eq!(epoch(&make(3), epoch_idx), batches);
    }
    let skipped = loader.skipped();
    assert_eq!(skipped.len(), 1, "each bad file reported once: {skipped:?}");
    assert_eq!(skipped[0].path, items.paths[bad_index]);
    assert_eq!(skipped[0].kind, Exclusion::FailedInBatch);
    assert!(skipped[0].reason.contains("replaced by"), "{}", skipped[0].reason);
    // The log outlives a move of the loader.
    let log = loader.skip_log();
    drop(loader);
    assert_eq!(log.list().len(), 1);

    // Under Fail, the same file stops the epoch, naming it.
    let config = LoaderConfig { n_threads: 1, ..LoaderConfig::train(8, 5) };
    let failing = DataLoader::new(items, ItemPipeline::chapter7(16), config, Device::Cpu).unwrap();
    let error = failing.epoch(0).next().unwrap().unwrap_err();
    assert!(error.to_string().contains("fails_late.jpg"), "{error}");
}

#[test]
fn a_validation_loader_leaves_failing_files_out_and_never_yields_an_empty_batch() {
    let dir = tempfile::tempdir().unwrap();
    // Order: good_00, good_01, bad_a, bad_b, bad_c — batches of 2: [g, g], [bad, bad], [bad].
    let items = items(dir.path(), 2, &["bad_a.jpg", "bad_b.jpg", "bad_c.jpg"]);
    let config = LoaderConfig { bad_files: BadFilePolicy::Skip, ..LoaderConfig::valid(2, 0) };
    let loader = DataLoader::new(items, ItemPipeline::chapter7(16), config, Device::Cpu).unwrap();
    let batches = epoch(&loader, 0);
    assert_eq!(batches.len(), 1, "the all-bad batches are not yielded");
    assert_eq!(batches[0].0, [0, 1]);
    let skipped: Vec<String> = loader
        .skipped()
        .iter()
        .map(|e| e.path.file_name().unwrap().to_string_lossy().into())
        .collect();
    assert_eq!(skipped, ["bad_a.jpg", "bad_b.jpg", "bad_c.jpg"]);
}
