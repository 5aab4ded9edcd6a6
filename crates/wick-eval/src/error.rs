//! The error type of wick-eval.

/// What can go wrong while predicting or interpreting.
#[derive(Debug, thiserror::Error)]
pub enum EvalError {
    /// Loading a batch failed (names the file).
    #[error(transparent)]
    Data(#[from] wick_data::DataError),
    /// A tensor operation failed.
    #[error(transparent)]
    Candle(#[from] candle::Error),
    /// The model's probabilities for an item hold a NaN or an infinity.
    #[error(
        "the model's prediction for {item} is not finite (NaN or infinity): the model is broken"
    )]
    NonFinite {
        /// The item's file (or index).
        item: String,
    },
    /// Drawing or writing a picture failed.
    #[error("drawing {path}: {source}")]
    Render {
        /// The picture's file.
        path: std::path::PathBuf,
        /// The cause.
        source: wick_render::RenderError,
    },
    /// Inputs that do not fit together (names the values).
    #[error("{0}")]
    Mismatch(String),
}

/// The result type of wick-eval.
pub type Result<T, E = EvalError> = std::result::Result<T, E>;
