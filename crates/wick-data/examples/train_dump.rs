//! `cargo run --release -p wick-data --example train_dump -- FILE ITEM_SIZE SIZE REPEATS SEED
//! [--no-lighting] [--three-pass] OUT`: wick's training-mode image of FILE (`Resize(ITEM_SIZE)` with its random
//! crop, then `aug_transforms(size=SIZE, min_scale=0.75)` with fastai's defaults, values in
//! [0, 1], no Normalize), drawn REPEATS times (draw `r` from `ChaCha8Rng` seeded `SEED + r`),
//! written to OUT as raw little-endian f32, `(3, SIZE, SIZE)` per draw. Used by
//! `scripts/compare_train_augment.py` to put the distribution of wick's training augmentation
//! beside fastai's.

#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::Path;

use rand::SeedableRng;
use wick_data::{AugTransforms, ItemPipeline, Mode, Resampling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let no_lighting = args.iter().any(|a| a == "--no-lighting");
    let three_pass = args.iter().any(|a| a == "--three-pass");
    args.retain(|a| a != "--no-lighting" && a != "--three-pass");
    let [file, item_size, size, repeats, seed, out] = args.as_slice() else {
        eprintln!(
            "usage: train_dump FILE ITEM_SIZE SIZE REPEATS SEED [--no-lighting] [--three-pass] OUT"
        );
        std::process::exit(2);
    };
    let size: u32 = size.parse()?;
    let seed: u64 = seed.parse()?;
    let augment = AugTransforms {
        max_lighting: if no_lighting { 0.0 } else { AugTransforms::default().max_lighting },
        ..AugTransforms::default()
    };
    let pipeline = ItemPipeline {
        item_size: item_size.parse()?,
        output_size: size,
        augment: Some(augment),
        resampling: if three_pass { Resampling::ThreePass } else { Resampling::OnePass },
        ..ItemPipeline::chapter7(size)
    };
    let bytes = std::fs::read(file)?;
    let mut writer = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut pixels = vec![0f32; pipeline.item_len()];
    for r in 0..repeats.parse::<u64>()? {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed.wrapping_add(r));
        pipeline.load_bytes(&bytes, Path::new(file), Mode::Train, &mut rng, &mut pixels)?;
        for value in &pixels {
            writer.write_all(&value.to_le_bytes())?;
        }
    }
    writer.flush()?;
    Ok(())
}
