//! The DataLoader: batch shapes and counts (drop_last), labels, determinism whatever the
//! thread count, per-epoch reshuffling, the bad-file policy; plus Normalize and batch_images (show_batch's data).

mod common;

use candle::{Device, Tensor};
use wick_data::{
    AugTransforms, BadFilePolicy, CropDraw, DataLoader, ItemPipeline, LoaderConfig, Normalize,
    Shard, SplitRule, batch_images, image_folder,
};
use wick_testing::{Tol, assert_close};

fn dataset(per_class: usize) -> (tempfile::TempDir, wick_data::Splits) {
    let dir = tempfile::tempdir().unwrap();
    common::image_tree(dir.path(), &["a", "b"], per_class, 40);
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    (dir, splits)
}

fn all_batches(loader: &DataLoader, epoch: u64) -> Vec<wick_data::Batch> {
    loader.epoch(epoch).collect::<Result<Vec<_>, _>>().unwrap()
}

#[test]
fn batch_shapes_counts_and_drop_last() {
    let (_dir, splits) = dataset(5); // 10 train, 10 valid
    let train = DataLoader::new(
        splits.train.clone(),
        ItemPipeline::chapter7(24),
        LoaderConfig::train(4, 0),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(train.len(), 2); // 10 / 4, the partial batch of 2 dropped
    let batches = all_batches(&train, 0);
    assert_eq!(batches.len(), 2);
    for batch in &batches {
        assert_eq!(batch.xs.dims(), [4, 3, 24, 24]);
        assert_eq!(batch.ys.dims(), [4]);
        assert_eq!(batch.xs.dtype(), candle::DType::F32);
        assert_eq!(batch.ys.dtype(), candle::DType::U32);
        let labels: Vec<u32> = batch.ys.to_vec1().unwrap();
        for (label, item) in labels.iter().zip(&batch.item_indices) {
            assert_eq!(*label, splits.train.labels[*item]);
        }
    }
    let valid = DataLoader::new(
        splits.valid.clone(),
        ItemPipeline::chapter7(24),
        LoaderConfig::valid(4, 0),
        Device::Cpu,
    )
    .unwrap();
    assert_eq!(valid.len(), 3);
    let sizes: Vec<usize> = all_batches(&valid, 0).iter().map(|b| b.ys.dims()[0]).collect();
    assert_eq!(sizes, [4, 4, 2]);
    let order: Vec<usize> =
        all_batches(&valid, 0).iter().flat_map(|b| b.item_indices.clone()).collect();
    assert_eq!(order, (0..10).collect::<Vec<_>>(), "validation keeps dataset order");
}

fn flat(batches: &[wick_data::Batch]) -> (Vec<f32>, Vec<usize>) {
    let xs: Vec<f32> = batches
        .iter()
        .flat_map(|b| b.xs.flatten_all().unwrap().to_vec1::<f32>().unwrap())
        .collect();
    let order = batches.iter().flat_map(|b| b.item_indices.clone()).collect();
    (xs, order)
}

#[test]
fn same_seed_same_batches_whatever_the_thread_count() {
    let (_dir, splits) = dataset(6);
    let make = |threads: usize, seed: u64| {
        let config = LoaderConfig { n_threads: threads, ..LoaderConfig::train(4, seed) };
        DataLoader::new(splits.train.clone(), ItemPipeline::chapter7(20), config, Device::Cpu)
            .unwrap()
    };
    let one = flat(&all_batches(&make(1, 9), 3));
    let three = flat(&all_batches(&make(3, 9), 3));
    assert_eq!(one, three);
    let other_epoch = flat(&all_batches(&make(2, 9), 4));
    assert_ne!(one.1, other_epoch.1, "each epoch reshuffles");
    let other_seed = flat(&all_batches(&make(2, 10), 3));
    assert_ne!(one.0, other_seed.0);
}

#[test]
fn bad_files_fail_or_are_skipped_and_counted() {
    let (dir, _) = dataset(3);
    let bad = dir.path().join("train/a/zz_bad.JPEG");
    std::fs::write(&bad, b"not really a jpeg").unwrap();
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    assert_eq!(splits.train.len(), 7);

    let config = LoaderConfig { shuffle: false, drop_last: false, ..LoaderConfig::train(7, 0) };
    let failing =
        DataLoader::new(splits.train.clone(), ItemPipeline::chapter7(16), config, Device::Cpu)
            .unwrap();
    let error = failing.epoch(0).next().unwrap().unwrap_err();
    assert!(error.to_string().contains("zz_bad.JPEG"), "{error}");

    let skip = LoaderConfig { bad_files: BadFilePolicy::Skip, ..config };
    let skipping =
        DataLoader::new(splits.train.clone(), ItemPipeline::chapter7(16), skip, Device::Cpu)
            .unwrap();
    let batches = all_batches(&skipping, 0);
    assert_eq!(batches.len(), 1);
    assert_eq!(batches[0].ys.dims(), [6]);
    let skipped = skipping.skipped();
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].path, bad);
    assert!(skipped[0].reason.contains("not a JPEG"), "{}", skipped[0].reason);
}

#[test]
fn an_epoch_resumes_from_any_batch_and_normalizes_on_the_device() {
    let (_dir, splits) = dataset(5);
    let loader = DataLoader::new(
        splits.train.clone(),
        ItemPipeline::chapter7(16),
        LoaderConfig::train(3, 4),
        Device::Cpu,
    )
    .unwrap();
    let whole = flat(&all_batches(&loader, 2));
    let tail = flat(&loader.epoch_from(2, 1).collect::<Result<Vec<_>, _>>().unwrap());
    assert_eq!(tail.1, whole.1[3..].to_vec());
    assert!(
        tail.0 == whole.0[3 * 3 * 16 * 16..],
        "the resumed tail differs from the whole epoch's"
    );
    let normalized = loader
        .with(*loader.pipeline(), *loader.config())
        .unwrap()
        .with_normalize(Some(Normalize::imagenet(&Device::Cpu).unwrap()));
    let plain = all_batches(&loader, 0);
    let scaled = all_batches(&normalized, 0);
    let expected = Normalize::imagenet(&Device::Cpu).unwrap().forward(&plain[0].xs).unwrap();
    let max_diff = (&scaled[0].xs - &expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert_eq!(max_diff, 0.0, "the loader's normalisation differs from Normalize::forward");
}

#[test]
fn an_epoch_can_be_abandoned_midway() {
    let (_dir, splits) = dataset(8);
    let config = LoaderConfig { prefetch: 1, ..LoaderConfig::train(2, 0) };
    let loader =
        DataLoader::new(splits.train, ItemPipeline::chapter7(16), config, Device::Cpu).unwrap();
    let first = loader.epoch(0).next().unwrap().unwrap();
    assert_eq!(first.ys.dims(), [2]);
    // Dropping the iterator above stopped its thread; a new epoch starts cleanly.
    assert_eq!(loader.epoch(1).count(), 8);
}

#[test]
fn normalize_uses_imagenet_stats_and_inverts() {
    let xs =
        Tensor::from_vec(vec![0.485f32, 0.456 + 0.224, 0.0], (1, 3, 1, 1), &Device::Cpu).unwrap();
    let normalize = Normalize::imagenet(&Device::Cpu).unwrap();
    let ys: Vec<f32> = normalize.forward(&xs).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    // (0.485-0.485)/0.229 = 0; (0.680-0.456)/0.224 = 1; (0-0.406)/0.225 = -1.80444.
    let expected = [0.0, 1.0, -1.804_444_4];
    for (y, e) in ys.iter().zip(expected) {
        assert_close("normalized value", f64::from(*y), e, Tol::abs(1e-5));
    }
    let back: Vec<f32> = normalize
        .inverse(&normalize.forward(&xs).unwrap())
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    for (b, x) in back.iter().zip([0.485, 0.68, 0.0]) {
        assert_close("round trip", f64::from(*b), x, Tol::abs(1e-6));
    }
    assert!(Normalize::new([0.0; 3], [1.0, 0.0, 1.0], &Device::Cpu).is_err());
}

#[test]
fn batch_images_give_the_pictures_and_their_names() {
    let (_dir, splits) = dataset(2);
    let loader = DataLoader::new(
        splits.train.clone(),
        ItemPipeline::chapter7(32),
        LoaderConfig::train(4, 0),
        Device::Cpu,
    )
    .unwrap();
    let batch = loader.epoch(0).next().unwrap().unwrap();
    let pictures = batch_images(&batch, &splits.vocab, None, 3).unwrap();
    // The first 3 of the batch of 4, at the pipeline's 32 px, each named by its label.
    assert_eq!(pictures.len(), 3);
    let labels: Vec<u32> = batch.ys.to_vec1().unwrap();
    for ((image, name), label) in pictures.iter().zip(labels) {
        assert_eq!(image.dimensions(), (32, 32));
        assert_eq!(Some(name.as_str()), splits.vocab.name(label));
    }
}

#[test]
fn shards_build_only_their_share_and_together_are_the_global_batch() {
    // 3 ranks, global batch 6: rank r builds items [2r, 2r + 2) of every batch.
    let (dir, _) = dataset(8);
    let bad = dir.path().join("train/b/zz_bad.JPEG");
    std::fs::write(&bad, b"not really a jpeg").unwrap();
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    assert_eq!(splits.train.len(), 17);
    let make = |shard: Shard| {
        let config = LoaderConfig {
            shard,
            bad_files: BadFilePolicy::Skip,
            n_threads: 2,
            ..LoaderConfig::train(6, 4)
        };
        DataLoader::new(splits.train.clone(), ItemPipeline::chapter7(20), config, Device::Cpu)
            .unwrap()
    };
    let global = make(Shard::WHOLE);
    let ranks: Vec<DataLoader> = (0..3).map(|rank| make(Shard { rank, world: 3 })).collect();
    for epoch in [0, 1] {
        let whole = all_batches(&global, epoch);
        let shards: Vec<Vec<wick_data::Batch>> =
            ranks.iter().map(|loader| all_batches(loader, epoch)).collect();
        assert_eq!(whole.len(), 2, "17 items in batches of 6, the partial one dropped");
        for (index, batch) in whole.iter().enumerate() {
            let parts: Vec<&wick_data::Batch> = shards.iter().map(|s| &s[index]).collect();
            let indices: Vec<usize> =
                parts.iter().flat_map(|part| part.item_indices.clone()).collect();
            assert_eq!(indices, batch.item_indices, "epoch {epoch} batch {index}");
            let xs = Tensor::cat(&parts.iter().map(|part| part.xs.clone()).collect::<Vec<_>>(), 0)
                .unwrap();
            let same: Vec<f32> = xs.flatten_all().unwrap().to_vec1().unwrap();
            let expected: Vec<f32> = batch.xs.flatten_all().unwrap().to_vec1().unwrap();
            assert!(same == expected, "epoch {epoch} batch {index}: the images differ");
            assert!(parts.iter().all(|part| part.xs.dims() == [2, 3, 20, 20]));
        }
    }
    // A rank decodes only its share: the bad file shows up in the skip list of the global
    // loader and of exactly the ranks whose shares held it (replaced there by the same seeded
    // draw), never of the others.
    let holders: Vec<usize> =
        (0..3).filter(|&rank| ranks[rank].skipped().iter().any(|s| s.path == bad)).collect();
    assert!(global.skipped().iter().any(|s| s.path == bad));
    assert!(!holders.is_empty() && holders.len() < 3, "ranks holding the bad file: {holders:?}");
}

#[test]
fn a_shard_that_cannot_split_evenly_is_refused() {
    let (_dir, splits) = dataset(4);
    let make = |config: LoaderConfig| {
        DataLoader::new(splits.train.clone(), ItemPipeline::chapter7(16), config, Device::Cpu)
    };
    let uneven =
        make(LoaderConfig { shard: Shard { rank: 0, world: 3 }, ..LoaderConfig::train(4, 0) });
    let error = uneven.err().unwrap().to_string();
    assert!(error.contains("batch of 4") && error.contains("3 equal shards"), "{error}");
    let partial =
        make(LoaderConfig { shard: Shard { rank: 1, world: 2 }, ..LoaderConfig::valid(4, 0) });
    assert!(partial.err().unwrap().to_string().contains("drop the last partial batch"));
    let outside =
        make(LoaderConfig { shard: Shard { rank: 2, world: 2 }, ..LoaderConfig::train(4, 0) });
    assert!(outside.err().unwrap().to_string().contains("rank 2 is not one of 2 ranks"));
}

/// `CropDraw::PerBatch` (fastai's `RandomResizedCropGPU`): every image of a batch gets the
/// batch's crop. On identical files with every other augmentation off, a batch's images are
/// then identical, and batches differ; per image (the default) they differ inside a batch.
#[test]
fn a_per_batch_crop_is_shared_by_the_batch_and_redrawn_for_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let image = common::pattern(48, 48, |x, y| [(x * 5) as u8, (y * 5) as u8, ((x + y) * 2) as u8]);
    for split in ["train", "val"] {
        for class in ["a", "b"] {
            let folder = dir.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for n in 0..4 {
                common::write_png(&folder.join(format!("{n}.png")), &image);
            }
        }
    }
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    let crop_only = |crop_draw| AugTransforms {
        do_flip: false,
        p_affine: 0.0,
        max_lighting: 0.0,
        crop_draw,
        ..AugTransforms::default()
    };
    let batches = |crop_draw| {
        let pipeline = ItemPipeline {
            item_size: 48,
            augment: Some(crop_only(crop_draw)),
            ..ItemPipeline::chapter7(16)
        };
        let loader =
            DataLoader::new(splits.train.clone(), pipeline, LoaderConfig::train(4, 3), Device::Cpu)
                .unwrap();
        all_batches(&loader, 0)
            .iter()
            .map(|batch| batch.xs.flatten_from(1).unwrap().to_vec2::<f32>().unwrap())
            .collect::<Vec<_>>()
    };
    let per_batch = batches(CropDraw::PerBatch);
    assert_eq!(per_batch.len(), 2);
    for images in &per_batch {
        assert!(images.iter().all(|image| image == &images[0]), "one crop per batch");
    }
    assert_ne!(per_batch[0][0], per_batch[1][0], "the next batch draws its own crop");
    let per_image = batches(CropDraw::PerImage);
    assert!(per_image[0].iter().any(|image| image != &per_image[0][0]), "one crop per image");
}
