//! `cargo bench -p wick-data --bench data -- [--dir DIR]... [--make-jpegs DIR] [--count N]`:
//! images/s of wick's data pipeline, one JSON line per (source, case, threads), for
//! `cargo xtask bench data` to put beside the Python reference stack.
//!
//! Cases: `decode` (file → RGB), `decode_resize160` (file → validation pipeline at 160 px:
//! centre crop + resize), `train128` / `train224` (the whole chapter-7 training pipeline:
//! `Resize(460)` + `aug_transforms(size, min_scale=0.75)` → f32 tensor data), `train48_96`
//! (the official profile's second stage: `Resize(96)`, 48 px), and `train224_three_pass` /
//! `train48_96_three_pass` (the same in fastai's resampling order,
//! `Resampling::ThreePass`). Each is timed on 1
//! and 2 threads; the median of 3 passes after a warm-up pass.
//! `--make-jpegs DIR` first writes 200 deterministic photo-like 500x375 JPEGs (quality 90)
//! into DIR, the "full-size" source.

#![allow(clippy::print_stdout, clippy::print_stderr)]

use std::path::{Path, PathBuf};
use std::time::Instant;

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;
use wick_data::pipeline::{ItemPipeline, Mode, Resampling};
use wick_data::{DecodeConfig, list_image_files, read_rgb};

fn main() {
    let mut dirs: Vec<PathBuf> = Vec::new();
    let mut count = 300usize;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--dir" => dirs.push(args.next().expect("--dir needs a folder").into()),
            "--count" => {
                count = args.next().and_then(|n| n.parse().ok()).expect("--count needs a number")
            }
            "--make-jpegs" => {
                let dir = PathBuf::from(args.next().expect("--make-jpegs needs a folder"));
                make_jpegs(&dir, 200);
                dirs.push(dir);
            }
            "--bench" => {} // cargo bench passes this to harness=false benches.
            other => {
                eprintln!("unknown argument {other}");
                std::process::exit(2);
            }
        }
    }
    for dir in &dirs {
        let mut files = list_image_files(dir).unwrap_or_else(|error| panic!("{error}"));
        files.truncate(count);
        assert!(!files.is_empty(), "no images under {}", dir.display());
        for (case, run) in cases() {
            for threads in [1usize, 2] {
                let pool =
                    rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
                let pass = || {
                    pool.install(|| files.par_iter().enumerate().for_each(|(i, path)| run(i, path)))
                };
                pass(); // warm-up (page cache, allocator)
                let mut times: Vec<f64> = (0..3)
                    .map(|_| {
                        let start = Instant::now();
                        pass();
                        start.elapsed().as_secs_f64()
                    })
                    .collect();
                times.sort_by(f64::total_cmp);
                let median = times[1];
                println!(
                    "{{\"bench\":\"data\",\"impl\":\"wick\",\"case\":\"{case}\",\"src\":\"{}\",\"threads\":{threads},\"n_images\":{},\"median_s\":{median:.4},\"images_per_s\":{:.1}}}",
                    dir.display(),
                    files.len(),
                    files.len() as f64 / median
                );
            }
        }
    }
}

/// Loads image number `usize` at the path and throws the result away.
type Loader = Box<dyn Fn(usize, &Path) + Sync>;
type Case = (&'static str, Loader);

fn cases() -> Vec<Case> {
    let pipeline_case =
        |size: u32, mode: Mode| -> Loader { custom_case(ItemPipeline::chapter7(size), mode) };
    vec![
        (
            "decode",
            Box::new(|_, path: &Path| {
                let decoded = read_rgb(path, (u32::MAX, u32::MAX), &DecodeConfig::default())
                    .unwrap_or_else(|error| panic!("{error}"));
                std::hint::black_box(&decoded);
            }),
        ),
        ("decode_resize160", pipeline_case(160, Mode::Valid)),
        ("train128", pipeline_case(128, Mode::Train)),
        ("train224", pipeline_case(224, Mode::Train)),
        (
            "train48_96",
            custom_case(ItemPipeline { item_size: 96, ..ItemPipeline::chapter7(48) }, Mode::Train),
        ),
        (
            "train224_three_pass",
            custom_case(
                ItemPipeline { resampling: Resampling::ThreePass, ..ItemPipeline::chapter7(224) },
                Mode::Train,
            ),
        ),
        (
            "train48_96_three_pass",
            custom_case(
                ItemPipeline {
                    item_size: 96,
                    resampling: Resampling::ThreePass,
                    ..ItemPipeline::chapter7(48)
                },
                Mode::Train,
            ),
        ),
    ]
}

/// The loader of `pipeline` in `mode`, each image's draw seeded by its index.
fn custom_case(pipeline: ItemPipeline, mode: Mode) -> Loader {
    Box::new(move |index, path| {
        let mut out = vec![0f32; pipeline.item_len()];
        let mut rng = ChaCha8Rng::seed_from_u64(index as u64);
        pipeline.load(path, mode, &mut rng, &mut out).unwrap_or_else(|error| panic!("{error}"));
        std::hint::black_box(&out);
    })
}

/// Photo-like 500x375 JPEGs: smooth colour gradients, soft blobs and sensor-like noise,
/// quality 90 (the recipe of the Python anchor's synthetic set, drawn with wick's own RNG).
fn make_jpegs(dir: &Path, n: usize) {
    use rand::Rng;
    std::fs::create_dir_all(dir).expect("create jpeg folder");
    let (width, height) = (500usize, 375usize);
    for index in 0..n {
        let path = dir.join(format!("img_{index:03}.jpg"));
        if path.exists() {
            continue;
        }
        let mut rng = ChaCha8Rng::seed_from_u64(1000 + index as u64);
        let mut pixels = vec![0f32; width * height * 3];
        for channel in 0..3 {
            let (a, b, d): (f32, f32, f32) = (
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
                rng.random_range(-1.0..1.0),
            );
            let (fx, fy): (f32, f32) =
                (rng.random_range(20.0..120.0), rng.random_range(20.0..120.0));
            for y in 0..height {
                for x in 0..width {
                    let (xf, yf) = (x as f32, y as f32);
                    pixels[(y * width + x) * 3 + channel] = 128.0
                        + 60.0 * (a * xf / width as f32 + b * yf / height as f32)
                        + 30.0 * (xf / fx + d * 3.0).sin() * (yf / fy).cos();
                }
            }
        }
        for _ in 0..rng.random_range(4..10) {
            let (cx, cy): (f32, f32) =
                (rng.random_range(0.0..width as f32), rng.random_range(0.0..height as f32));
            let radius: f32 = rng.random_range(20.0..120.0);
            let colour: [f32; 3] = [
                rng.random_range(-90.0..90.0),
                rng.random_range(-90.0..90.0),
                rng.random_range(-90.0..90.0),
            ];
            for y in 0..height {
                for x in 0..width {
                    let d2 = (x as f32 - cx).powi(2) + (y as f32 - cy).powi(2);
                    let weight = (-d2 / (2.0 * radius * radius)).exp();
                    for channel in 0..3 {
                        pixels[(y * width + x) * 3 + channel] += weight * colour[channel];
                    }
                }
            }
        }
        let bytes: Vec<u8> = pixels
            .iter()
            .map(|v| (v + rng.random_range(-10.0f32..10.0)).clamp(0.0, 255.0) as u8)
            .collect();
        let encoder = jpeg_encoder::Encoder::new_file(&path, 90).expect("create jpeg");
        encoder
            .encode(&bytes, width as u16, height as u16, jpeg_encoder::ColorType::Rgb)
            .expect("encode jpeg");
    }
}
