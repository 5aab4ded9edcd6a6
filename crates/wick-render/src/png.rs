//! The one PNG encoder: every picture wick writes goes through [`encode_png`] and
//! [`write_png`]. The `image` crate's encoder writes no time stamp or other varying metadata,
//! so the same pixels always give the same bytes.

use std::path::Path;

use image::{ExtendedColorType, ImageEncoder, RgbImage};

use crate::error::{RenderError, Result};

/// Encodes an RGB image as PNG bytes.
///
/// # Errors
/// [`RenderError::Encode`] when the encoder fails.
pub fn encode_png(image: &RgbImage) -> Result<Vec<u8>> {
    let mut bytes = Vec::new();
    image::codecs::png::PngEncoder::new(&mut bytes).write_image(
        image.as_raw(),
        image.width(),
        image.height(),
        ExtendedColorType::Rgb8,
    )?;
    Ok(bytes)
}

/// Encodes `image` as PNG and writes it atomically and durably
/// ([`wick_io::write_durably`]).
///
/// # Errors
/// [`RenderError::Encode`], or [`RenderError::Write`] naming `path`.
pub fn write_png(path: &Path, image: &RgbImage) -> Result<()> {
    let bytes = encode_png(image)?;
    wick_io::write_durably(path, &bytes)
        .map_err(|source| RenderError::Write { path: path.to_path_buf(), source })
}
