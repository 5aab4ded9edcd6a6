//! Decoding: every JPEG flavour Imagenette contains (baseline, progressive, grayscale, CMYK),
//! PNG, DCT-domain downscaling, and bad input that must fail with the file's name.

mod common;

use std::path::Path;

use wick_data::decode::{decode_rgb, image_size};
use wick_data::{DataError, DecodeConfig};

const FULL: (u32, u32) = (u32::MAX, u32::MAX);

fn mean_abs_diff(a: &image::RgbImage, b: &image::RgbImage) -> f64 {
    assert_eq!(a.dimensions(), b.dimensions());
    let total: f64 =
        a.as_raw().iter().zip(b.as_raw()).map(|(x, y)| (f64::from(*x) - f64::from(*y)).abs()).sum();
    total / a.as_raw().len() as f64
}

#[test]
fn baseline_and_progressive_jpegs_decode_to_their_content() {
    let dir = tempfile::tempdir().unwrap();
    let image = common::smooth(96, 64);
    for (name, progressive) in [("baseline.jpg", false), ("progressive.jpg", true)] {
        let path = dir.path().join(name);
        if progressive {
            common::write_progressive_jpeg(&path, &image, 95);
        } else {
            common::write_jpeg(&path, &image, 95);
        }
        let bytes = std::fs::read(&path).unwrap();
        assert_eq!(image_size(&bytes, &path).unwrap(), (96, 64));
        let decoded = decode_rgb(&bytes, &path, FULL, &DecodeConfig::default()).unwrap();
        assert_eq!(decoded.image.dimensions(), (96, 64));
        assert_eq!(decoded.scale_denominator, 1);
        // A smooth image at quality 95 comes back within ~1 grey level on average.
        assert!(
            mean_abs_diff(&decoded.image, &image) < 2.0,
            "{name}: {}",
            mean_abs_diff(&decoded.image, &image)
        );
    }
}

#[test]
fn grayscale_jpeg_becomes_three_equal_channels() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("gray.jpg");
    common::write_gray_jpeg(&path, 32, 16, |x, _| (x * 8) as u8);
    let decoded =
        decode_rgb(&std::fs::read(&path).unwrap(), &path, FULL, &DecodeConfig::default()).unwrap();
    for pixel in decoded.image.pixels() {
        assert_eq!(pixel.0[0], pixel.0[1]);
        assert_eq!(pixel.0[1], pixel.0[2]);
    }
    assert!((i32::from(decoded.image.get_pixel(20, 8).0[0]) - 160).abs() <= 3);
}

#[test]
fn cmyk_jpeg_converts_like_pil() {
    // PIL's CMYK -> RGB: r = (255 - c)(255 - k)/255, etc. For c=0, m=128, y=255, k=64:
    // r = 255*191/255 = 191, g = 127*191/255 = 95.1, b = 0.
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cmyk.jpg");
    common::write_cmyk_jpeg(&path, 16, 16, [0, 128, 255, 64]);
    let decoded =
        decode_rgb(&std::fs::read(&path).unwrap(), &path, FULL, &DecodeConfig::default()).unwrap();
    let pixel = decoded.image.get_pixel(8, 8).0;
    for (got, expected) in pixel.iter().zip([191, 95, 0]) {
        assert!((i32::from(*got) - expected).abs() <= 3, "cmyk pixel {pixel:?}");
    }
}

#[test]
fn png_with_alpha_or_16_bits_becomes_rgb8() {
    let dir = tempfile::tempdir().unwrap();
    let rgba = image::RgbaImage::from_fn(8, 4, |x, _| image::Rgba([x as u8 * 30, 10, 200, 7]));
    let path = dir.path().join("rgba.png");
    rgba.save(&path).unwrap();
    let decoded =
        decode_rgb(&std::fs::read(&path).unwrap(), &path, FULL, &DecodeConfig::default()).unwrap();
    // PIL's convert('RGB') drops alpha without blending.
    assert_eq!(decoded.image.get_pixel(3, 1).0, [90, 10, 200]);

    let deep = image::ImageBuffer::<image::Rgb<u16>, Vec<u16>>::from_pixel(
        4,
        4,
        image::Rgb([65535, 32896, 0]),
    );
    let path = dir.path().join("deep.png");
    deep.save(&path).unwrap();
    let decoded =
        decode_rgb(&std::fs::read(&path).unwrap(), &path, FULL, &DecodeConfig::default()).unwrap();
    assert_eq!(decoded.image.get_pixel(0, 0).0, [255, 128, 0]);
}

#[test]
fn dct_scaling_picks_the_largest_reduction_that_covers_the_target() {
    // The choice of reduction itself is unit-tested in src/decode.rs.
    let dir = tempfile::tempdir().unwrap();
    let image = common::smooth(400, 320);
    let path = dir.path().join("big.jpg");
    common::write_jpeg(&path, &image, 95);
    let decoded =
        decode_rgb(&std::fs::read(&path).unwrap(), &path, (100, 80), &DecodeConfig::default())
            .unwrap();
    assert_eq!(decoded.scale_denominator, 4);
    assert_eq!(decoded.image.dimensions(), (100, 80));
    assert_eq!(decoded.original_size, (400, 320));
    // The 1/4-scale decode equals a 4x4 box average of the image, up to JPEG error.
    let reference = image::imageops::resize(&image, 100, 80, image::imageops::FilterType::Triangle);
    assert!(
        mean_abs_diff(&decoded.image, &reference) < 2.5,
        "{}",
        mean_abs_diff(&decoded.image, &reference)
    );
}

fn decode_error(bytes: &[u8], name: &str) -> DataError {
    let path = Path::new("/data/train/n01").join(name);
    let error = decode_rgb(bytes, &path, FULL, &DecodeConfig::default()).unwrap_err();
    assert!(error.to_string().contains(name), "error does not name the file: {error}");
    error
}

#[test]
fn bad_files_fail_with_the_file_name() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ok.jpg");
    common::write_jpeg(&path, &common::smooth(64, 64), 90);
    let good = std::fs::read(&path).unwrap();

    let error = decode_error(&[], "empty.JPEG");
    assert!(error.to_string().contains("empty"), "{error}");
    let error = decode_error(b"this is not an image, just text\n", "text.JPEG");
    assert!(error.to_string().contains("not a JPEG, PNG, BMP, GIF, TIFF or WebP"), "{error}");
    decode_error(&good[..good.len() * 6 / 10], "truncated.JPEG");
    decode_error(&good[..40], "header_only.JPEG");

    // A JPEG header announcing 60000 x 60000 pixels (3.6 gigapixels) is refused before any
    // pixel memory is allocated.
    let mut bomb = good.clone();
    let sof = bomb.windows(2).position(|w| w == [0xFF, 0xC0]).expect("baseline SOF0 marker");
    bomb[sof + 5..sof + 9].copy_from_slice(&[0xEA, 0x60, 0xEA, 0x60]);
    let error = decode_error(&bomb, "bomb.JPEG");
    assert!(matches!(error, DataError::TooLarge { width: 60000, height: 60000, .. }), "{error}");
}
