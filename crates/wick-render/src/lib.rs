//! The one place wick draws pictures: line charts (loss, schedule, lr_find), the confusion
//! matrix, captioned image grids (show_batch, top losses), the one PNG encoder and the one
//! font. Charts are drawn by plotters (bitmap backend); text by `ab_glyph` from DejaVu Sans,
//! embedded in the binary, so pictures never depend on the machine's fonts and the same input
//! gives the same PNG bytes. Captions and names are fitted by pixel width ("…" or wrapped).
//!
//! Data come in as plain values (points, counts, names, RGB images); this crate knows nothing
//! of tensors, datasets or training.

pub mod chart;
pub mod confusion;
pub mod error;
pub mod grid;
pub mod png;
pub mod text;

pub use chart::{
    AxisScale, LineChart, PALETTE, PlotArea, Series, VerticalMarker, stack_vertically,
};
pub use confusion::confusion_matrix_image;
pub use error::{RenderError, Result};
pub use grid::ImageGrid;
pub use png::{encode_png, write_png};
pub use text::{FONT_BYTES, draw_text, ellipsize, has_glyph, line_height, text_width, wrap};
