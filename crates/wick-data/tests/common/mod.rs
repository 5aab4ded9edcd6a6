//! Fixture builders shared by wick-data's integration tests: small images of known content
//! written to temporary folders, so the tests need nothing outside the repository.

#![allow(dead_code, unreachable_pub)]

use std::path::{Path, PathBuf};

use image::{Rgb, RgbImage};

/// An image whose pixel (x, y) is `f(x, y)`.
pub fn pattern(width: u32, height: u32, f: impl Fn(u32, u32) -> [u8; 3]) -> RgbImage {
    RgbImage::from_fn(width, height, |x, y| Rgb(f(x, y)))
}

/// A smooth colourful pattern that survives JPEG compression well.
pub fn smooth(width: u32, height: u32) -> RgbImage {
    pattern(width, height, |x, y| {
        let (fx, fy) = (x as f32 / width as f32, y as f32 / height as f32);
        [(40.0 + 180.0 * fx) as u8, (200.0 - 150.0 * fy) as u8, (60.0 + 120.0 * fx * fy) as u8]
    })
}

/// Writes a baseline RGB JPEG.
pub fn write_jpeg(path: &Path, image: &RgbImage, quality: u8) {
    let encoder = jpeg_encoder::Encoder::new_file(path, quality).expect("create jpeg");
    encode_rgb(encoder, image);
}

/// Writes a progressive RGB JPEG.
pub fn write_progressive_jpeg(path: &Path, image: &RgbImage, quality: u8) {
    let mut encoder = jpeg_encoder::Encoder::new_file(path, quality).expect("create jpeg");
    encoder.set_progressive(true);
    encode_rgb(encoder, image);
}

/// Encodes `image` as RGB with `encoder`'s settings.
fn encode_rgb<W: jpeg_encoder::JfifWrite>(encoder: jpeg_encoder::Encoder<W>, image: &RgbImage) {
    encoder
        .encode(
            image.as_raw(),
            image.width() as u16,
            image.height() as u16,
            jpeg_encoder::ColorType::Rgb,
        )
        .expect("encode jpeg");
}

/// Writes a single-channel JPEG of `luma(x, y)`.
pub fn write_gray_jpeg(path: &Path, width: u32, height: u32, luma: impl Fn(u32, u32) -> u8) {
    let data: Vec<u8> = (0..height)
        .flat_map(|y| (0..width).map(move |x| (x, y)))
        .map(|(x, y)| luma(x, y))
        .collect();
    let encoder = jpeg_encoder::Encoder::new_file(path, 95).expect("create jpeg");
    encoder
        .encode(&data, width as u16, height as u16, jpeg_encoder::ColorType::Luma)
        .expect("encode jpeg");
}

/// Writes a CMYK JPEG where every pixel is `cmyk` (ink amounts, 0 = no ink).
pub fn write_cmyk_jpeg(path: &Path, width: u32, height: u32, cmyk: [u8; 4]) {
    let data: Vec<u8> = (0..width * height).flat_map(|_| cmyk).collect();
    let encoder = jpeg_encoder::Encoder::new_file(path, 98).expect("create jpeg");
    encoder
        .encode(&data, width as u16, height as u16, jpeg_encoder::ColorType::Cmyk)
        .expect("encode jpeg");
}

/// Writes a PNG.
pub fn write_png(path: &Path, image: &RgbImage) {
    image.save_with_format(path, image::ImageFormat::Png).expect("write png");
}

/// An Imagenette-like tree `root/{train,val}/<class>/<n>.JPEG` with `per_class` images per
/// class and split; images of class `c` are solid-ish colour `c`. Returns the files written.
pub fn image_tree(root: &Path, classes: &[&str], per_class: usize, size: u32) -> Vec<PathBuf> {
    let mut written = Vec::new();
    for split in ["train", "val"] {
        for (class_idx, class) in classes.iter().enumerate() {
            let dir = root.join(split).join(class);
            std::fs::create_dir_all(&dir).expect("mkdir");
            for n in 0..per_class {
                let path = dir.join(format!("{class}_{n:03}.JPEG"));
                let base = (class_idx * 80 % 256) as u8;
                let image = pattern(size, size, |x, y| {
                    [base, ((x * 7 + y * 3 + n as u32) % 256) as u8, 128]
                });
                write_jpeg(&path, &image, 90);
                written.push(path);
            }
        }
    }
    written
}
