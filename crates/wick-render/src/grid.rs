//! [`ImageGrid`]: equally sized image tiles in rows, each with a caption underneath — what
//! fastai's `show_batch` and `plot_top_losses` draw. Captions are fitted to the tile by their
//! width in pixels: each caption entry is wrapped at spaces over the lines left to it and the
//! last line is ellipsised with "…", so a class name is never cut by a count of characters.

use std::path::Path;

use image::{Rgb, RgbImage};

use crate::error::Result;
use crate::text::{draw_text, ellipsize, line_height, text_width, wrap};

const MARGIN: u32 = 4;

/// A grid of equally sized image tiles, each with a few lines of caption underneath.
#[derive(Debug, Clone)]
pub struct ImageGrid {
    columns: u32,
    tile_size: u32,
    caption_lines: u32,
    title: Option<String>,
    tiles: Vec<(RgbImage, Vec<String>)>,
}

impl ImageGrid {
    /// An empty grid with `columns` tiles per row, tiles resized to `tile_size` pixels square
    /// and room for `caption_lines` lines of text under each.
    pub fn new(columns: u32, tile_size: u32, caption_lines: u32) -> Self {
        ImageGrid {
            columns: columns.max(1),
            tile_size: tile_size.max(8),
            caption_lines,
            title: None,
            tiles: Vec::new(),
        }
    }

    /// Sets a line of text drawn above the grid (fastai's `suptitle`, such as
    /// "Prediction/Actual/Loss/Probability"), ellipsised to the grid's width.
    pub fn with_title(mut self, title: &str) -> Self {
        self.title = Some(title.to_string());
        self
    }

    /// Adds a tile. Each caption entry starts on a new line; an entry too wide for the tile
    /// wraps onto the lines not needed by the entries after it.
    pub fn push(&mut self, image: RgbImage, caption: Vec<String>) {
        self.tiles.push((image, caption));
    }

    /// The caption's text size in pixels, ascent to descent (larger for large tiles).
    pub fn text_size(&self) -> f32 {
        match self.tile_size {
            0..160 => 12.0,
            160..256 => 15.0,
            _ => 18.0,
        }
    }

    /// The lines drawn under a tile for `caption`: each entry wrapped to the tile's width in
    /// pixels, at most `caption_lines` lines in all (each entry keeps at least one).
    pub fn caption_layout(&self, caption: &[String]) -> Vec<String> {
        let size = self.text_size();
        let mut lines = Vec::new();
        let total = self.caption_lines as usize;
        for (index, entry) in caption.iter().enumerate() {
            let still_needed = caption.len() - index - 1;
            let available = total.saturating_sub(lines.len() + still_needed).max(1);
            if lines.len() >= total {
                break;
            }
            lines.extend(wrap(entry, size, self.tile_size as f32, available));
        }
        lines
    }

    /// Draws the grid: white background, `tile_size + 8` pixels per column, tiles resized to
    /// the tile size, captions centred under them.
    pub fn render(&self) -> RgbImage {
        let size = self.text_size();
        let line = line_height(size);
        let caption_height =
            if self.caption_lines == 0 { 0 } else { self.caption_lines * line + 2 };
        let cell_w = self.tile_size + 2 * MARGIN;
        let cell_h = self.tile_size + caption_height + 2 * MARGIN;
        let n = self.tiles.len() as u32;
        let columns = self.columns.min(n.max(1));
        let rows = n.div_ceil(columns).max(1);
        let title_height = if self.title.is_some() { line + MARGIN } else { 0 };
        let mut canvas = RgbImage::from_pixel(
            columns * cell_w,
            title_height + rows * cell_h,
            Rgb([255, 255, 255]),
        );
        if let Some(title) = &self.title {
            let width = canvas.width() as f32 - 2.0 * MARGIN as f32;
            let text = ellipsize(title, size, width);
            let x = (canvas.width() as f32 - text_width(&text, size)) / 2.0;
            draw_text(&mut canvas, x.max(0.0) as i32, MARGIN as i32, &text, size, Rgb([0, 0, 0]));
        }
        for (index, (image, caption)) in self.tiles.iter().enumerate() {
            let (col, row) = (index as u32 % columns, index as u32 / columns);
            let (x0, y0) = (col * cell_w + MARGIN, title_height + row * cell_h + MARGIN);
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
            for (line_index, text) in self.caption_layout(caption).iter().enumerate() {
                let width = text_width(text, size);
                let x = x0 as f32 + ((self.tile_size as f32 - width) / 2.0).max(0.0);
                let y = y0 + self.tile_size + 2 + line_index as u32 * line;
                draw_text(&mut canvas, x.floor() as i32, y as i32, text, size, Rgb([0, 0, 0]));
            }
        }
        canvas
    }

    /// Renders the grid and writes it as a PNG, atomically.
    ///
    /// # Errors
    /// Encoding or writing `path` failed.
    pub fn save_png(&self, path: &Path) -> Result<()> {
        crate::png::write_png(path, &self.render())
    }
}
