//! `cargo run --release -p wick-data --example valid_dump -- LIST ITEM_SIZE SIZE [--three-pass]
//! OUT`: wick's validation-mode image (`Resize(ITEM_SIZE)` then the output size `SIZE`, no
//! augmentation, values in [0, 1], no Normalize; `--three-pass`: in fastai's resampling order,
//! `Resampling::ThreePass`) of every file listed in LIST (one path a line), written to OUT as
//! raw little-endian f32, `(3, SIZE, SIZE)` per file in list order. Used by
//! `scripts/compare_valid_pixels.py` to put wick's pixels beside fastai's.

#![allow(clippy::print_stderr)]

use std::io::Write;
use std::path::Path;

use wick_data::{ItemPipeline, Resampling};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args: Vec<String> = std::env::args().skip(1).collect();
    let three_pass = args.iter().any(|a| a == "--three-pass");
    args.retain(|a| a != "--three-pass");
    let [list, item_size, size, out] = args.as_slice() else {
        eprintln!("usage: valid_dump LIST ITEM_SIZE SIZE [--three-pass] OUT");
        std::process::exit(2);
    };
    let size: u32 = size.parse()?;
    let pipeline = ItemPipeline {
        item_size: item_size.parse()?,
        output_size: size,
        augment: None,
        resampling: if three_pass { Resampling::ThreePass } else { Resampling::OnePass },
        ..ItemPipeline::chapter7(size)
    };
    let mut file = std::io::BufWriter::new(std::fs::File::create(out)?);
    let mut pixels = vec![0f32; pipeline.item_len()];
    for path in std::fs::read_to_string(list)?.lines() {
        pipeline.load_plain(Path::new(path), &mut pixels)?;
        for value in &pixels {
            file.write_all(&value.to_le_bytes())?;
        }
    }
    file.flush()?;
    Ok(())
}
