//! Pictures of data, because people look at augmented batches before they trust them:
//! `show_batch` writes a PNG grid of a batch with its labels, and [`ImageGrid`] is the
//! captioned grid it is built on (wick-eval reuses it for top losses). Text is drawn with the
//! public-domain 8x8 bitmap font of the `font8x8` crate, so no system fonts are needed.

use std::path::Path;

use candle::{DType, Device};
use font8x8::UnicodeFonts;
use image::{Rgb, RgbImage};

use crate::error::{DataError, Result};
use crate::fsutil::write_atomic;
use crate::items::Vocab;
use crate::loader::Batch;
use crate::normalize::Normalize;

/// A grid of equally sized image tiles, each with a few lines of caption underneath.
#[derive(Debug, Clone)]
pub struct ImageGrid {
    columns: u32,
    tile_size: u32,
    caption_lines: u32,
    tiles: Vec<(RgbImage, Vec<String>)>,
}

const GLYPH: u32 = 8;
const MARGIN: u32 = 4;

impl ImageGrid {
    /// An empty grid with `columns` tiles per row, tiles resized to `tile_size` square and
    /// room for `caption_lines` lines of text under each.
    pub fn new(columns: u32, tile_size: u32, caption_lines: u32) -> Self {
        ImageGrid {
            columns: columns.max(1),
            tile_size: tile_size.max(8),
            caption_lines,
            tiles: Vec::new(),
        }
    }

    /// Adds a tile.
    pub fn push(&mut self, image: RgbImage, caption: Vec<String>) {
        self.tiles.push((image, caption));
    }

    fn text_scale(&self) -> u32 {
        if self.tile_size >= 192 { 2 } else { 1 }
    }

    /// Draws the grid.
    pub fn render(&self) -> RgbImage {
        let scale = self.text_scale();
        let caption_height = self.caption_lines * (GLYPH * scale + 2);
        let cell_w = self.tile_size + 2 * MARGIN;
        let cell_h = self.tile_size + caption_height + 2 * MARGIN;
        let n = self.tiles.len() as u32;
        let columns = self.columns.min(n.max(1));
        let rows = n.div_ceil(columns).max(1);
        let mut canvas =
            RgbImage::from_pixel(columns * cell_w, rows * cell_h, Rgb([255, 255, 255]));
        for (index, (image, caption)) in self.tiles.iter().enumerate() {
            let (col, row) = (index as u32 % columns, index as u32 / columns);
            let (x0, y0) = (col * cell_w + MARGIN, row * cell_h + MARGIN);
            let tile = if image.width() == self.tile_size && image.height() == self.tile_size {
                image.clone()
            } else {
                image::imageops::resize(
                    image,
                    self.tile_size,
                    self.tile_size,
                    image::imageops::FilterType::Triangle,
                )
            };
            image::imageops::replace(&mut canvas, &tile, i64::from(x0), i64::from(y0));
            for (line_idx, line) in caption.iter().take(self.caption_lines as usize).enumerate() {
                let y = y0 + self.tile_size + 2 + line_idx as u32 * (GLYPH * scale + 2);
                draw_text(&mut canvas, x0, y, line, scale, self.tile_size, Rgb([0, 0, 0]));
            }
        }
        canvas
    }

    /// Renders the grid and writes it as a PNG, atomically.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        let mut bytes = Vec::new();
        self.render()
            .write_to(&mut std::io::Cursor::new(&mut bytes), image::ImageFormat::Png)
            .map_err(|error| DataError::io(path, std::io::Error::other(error)))?;
        write_atomic(path, &bytes)
    }
}

/// Draws `text` at `(x, y)` with the 8x8 font magnified `scale` times, clipped to
/// `max_width` pixels (longer text ends with `~`).
pub fn draw_text(
    canvas: &mut RgbImage,
    x: u32,
    y: u32,
    text: &str,
    scale: u32,
    max_width: u32,
    color: Rgb<u8>,
) {
    let advance = GLYPH * scale;
    let max_chars = (max_width / advance).max(1) as usize;
    let chars: Vec<char> = text.chars().collect();
    let shown: Vec<char> = if chars.len() > max_chars {
        chars[..max_chars - 1].iter().copied().chain(std::iter::once('~')).collect()
    } else {
        chars
    };
    for (char_idx, character) in shown.into_iter().enumerate() {
        let glyph = font8x8::BASIC_FONTS.get(character).unwrap_or([0; 8]);
        for (glyph_row, bits) in glyph.iter().enumerate() {
            for glyph_col in 0..8u32 {
                if bits & (1 << glyph_col) == 0 {
                    continue;
                }
                for dy in 0..scale {
                    for dx in 0..scale {
                        let px = x + char_idx as u32 * advance + glyph_col * scale + dx;
                        let py = y + glyph_row as u32 * scale + dy;
                        if px < canvas.width() && py < canvas.height() {
                            canvas.put_pixel(px, py, color);
                        }
                    }
                }
            }
        }
    }
}

/// One `(3, H, W)` planar f32 image with values in [0, 1] as an RGB picture (values clamped).
pub fn planar_to_rgb(values: &[f32], height: usize, width: usize) -> RgbImage {
    let plane = height * width;
    RgbImage::from_fn(width as u32, height as u32, |x, y| {
        let index = y as usize * width + x as usize;
        let channel = |c: usize| (values[c * plane + index].clamp(0.0, 1.0) * 255.0).round() as u8;
        Rgb([channel(0), channel(1), channel(2)])
    })
}

/// fastai's `show_batch`: the first `max_items` images of `batch` in a grid with their class
/// names, written to `path` as a PNG. Pass the [`Normalize`] the batch went through, if any,
/// so the pictures show the original colours.
pub fn show_batch(
    batch: &Batch,
    vocab: &Vocab,
    normalize: Option<&Normalize>,
    max_items: usize,
    path: &Path,
) -> Result<()> {
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
    let columns = (n_shown as f64).sqrt().ceil() as u32;
    let mut grid = ImageGrid::new(columns, height.max(width) as u32, 1);
    for (index, label) in labels.iter().enumerate() {
        let values = &images[index * 3 * height * width..(index + 1) * 3 * height * width];
        // The readable name of a catalogue class (`tench`, not `n01440764`), else the folder's.
        let name =
            vocab.name(*label).map_or("?", |class| crate::readable_name(class).unwrap_or(class));
        let name = name.to_string();
        grid.push(planar_to_rgb(values, height, width), vec![name]);
    }
    grid.save_png(path)
}
