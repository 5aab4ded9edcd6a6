//! Errors of drawing and writing pictures.

use std::path::PathBuf;

/// What can go wrong while drawing or writing a picture.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// PNG encoding failed.
    #[error("encoding a PNG: {0}")]
    Encode(#[from] image::ImageError),
    /// Writing the file failed.
    #[error("writing {path}: {source}")]
    Write {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The plotting library refused to draw.
    #[error("drawing a chart: {0}")]
    Draw(String),
}

/// `Result` with [`RenderError`].
pub type Result<T, E = RenderError> = std::result::Result<T, E>;
