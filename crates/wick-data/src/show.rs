//! The pictures' data, because people look at augmented batches before they trust them:
//! [`batch_images`] turns a batch back into RGB images with their class names (what fastai's
//! `show_batch` shows), [`planar_to_rgb`] one planar image. Drawing them is wick-render's.

use candle::{DType, Device};
use image::{Rgb, RgbImage};

use crate::error::Result;
use crate::items::Vocab;
use crate::loader::Batch;
use crate::normalize::Normalize;

/// One `(3, H, W)` planar f32 image with values in [0, 1] as an RGB picture (values clamped).
pub fn planar_to_rgb(values: &[f32], height: usize, width: usize) -> RgbImage {
    let plane = height * width;
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let index = y as usize * width + x as usize;
        let channel = |c: usize| (values[c * plane + index].clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgb([channel(0), channel(1), channel(2)])
    })
}

/// The first `max_items` images of `batch` as RGB pictures, each with its class's readable
/// name (`tench`, not `n01440764`, for a catalogue class; else the folder's name, exactly).
/// Pass the [`Normalize`] the batch went through, if any, so the pictures show the original
/// colours.
///
/// # Errors
/// A tensor operation failed (the batch is not `(B, 3, H, W)`).
pub fn batch_images(
    batch: &Batch,
    vocab: &Vocab,
    normalize: Option<&Normalize>,
    max_items: usize,
) -> Result<Vec<(RgbImage, String)>> {
    let xs = match normalize {
        Some(normalize) => normalize.inverse(&batch.xs)?,
        None => batch.xs.clone(),
    };
    let (n, _, height, width) = xs.dims4()?;
    let n_shown = n.min(max_items);
    let images: Vec<f32> = xs
        .narrow(0, 0, n_shown)?
        .to_device(&Device::Cpu)?
        .to_dtype(DType::F32)?
        .flatten_all()?
        .to_vec1()?;
    let labels: Vec<u32> = batch.ys.narrow(0, 0, n_shown)?.to_device(&Device::Cpu)?.to_vec1()?;
    let item_len = 3 * height * width;
    Ok(labels
        .iter()
        .enumerate()
        .map(|(index, label)| {
            let values = &images[index * item_len..(index + 1) * item_len];
            let name = vocab
                .name(*label)
                .map_or("?", |class| crate::readable_name(class).unwrap_or(class))
                .to_string();
            (planar_to_rgb(values, height, width), name)
        })
        .collect())
}
