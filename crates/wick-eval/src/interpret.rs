//! What fastai's `ClassificationInterpretation` shows, computed from [`Predictions`]:
//! accuracy and top-k accuracy, per-class accuracy, the confusion matrix (and a PNG of it), and
//! the images with the largest losses (a PNG grid: image, predicted, actual, loss,
//! probability of the actual class).

use std::path::Path;

use candle::Tensor;
use wick_data::{ItemPipeline, Items, Vocab, planar_to_rgb};
use wick_render::ImageGrid;

use crate::error::{EvalError, Result};
use crate::predict::{Predictions, argmax};

fn rows(preds: &Predictions) -> Result<Vec<Vec<f32>>> {
    Ok(preds.probs.to_vec2::<f32>()?)
}

/// fastai's `accuracy`: the fraction of rows whose argmax (the first maximal class, as torch)
/// is the target, counted by `wick_metrics::correct_count`, the rule training's metric uses. A
/// row holding a NaN or an infinity is never a hit.
///
/// # Errors
/// As [`top_k_accuracy`].
pub fn accuracy(preds: &Predictions) -> Result<f64> {
    let targets = checked_targets(preds)?;
    let hits = wick_metrics::correct_count(&preds.probs, &targets)?;
    Ok(hits as f64 / targets.elem_count() as f64)
}

/// fastai's `top_k_accuracy`: the fraction of rows whose target is among the `k` largest
/// probabilities, counted by `wick_metrics::top_k_correct_count` (ties at the k-th place count
/// as a hit; a row holding a NaN or an infinity is never a hit). `k = 0` hits nothing; `k >= K`
/// hits every finite row.
///
/// # Errors
/// No predictions, a target that is not a column of the probabilities, or targets and rows in
/// different numbers.
pub fn top_k_accuracy(preds: &Predictions, k: usize) -> Result<f64> {
    let targets = checked_targets(preds)?;
    if k == 0 {
        return Ok(0.0);
    }
    let n_classes = preds.probs.dim(1)?;
    let hits = wick_metrics::top_k_correct_count(&preds.probs, &targets, k.min(n_classes))?;
    Ok(hits as f64 / targets.elem_count() as f64)
}

/// The targets as a `(N,)` u32 tensor beside the `(N, K)` probabilities, after checking that
/// there are predictions and that every target is a column.
fn checked_targets(preds: &Predictions) -> Result<Tensor> {
    let (n_rows, n_classes) = preds.probs.dims2()?;
    if n_rows == 0 {
        return Err(EvalError::Mismatch("no predictions".to_string()));
    }
    if let Some(target) = preds.targets.iter().find(|&&target| target as usize >= n_classes) {
        return Err(EvalError::Mismatch(format!("target {target} is not below K = {n_classes}")));
    }
    Ok(Tensor::from_slice(&preds.targets, preds.targets.len(), preds.probs.device())?)
}

/// Counts: `matrix[actual][predicted]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfusionMatrix {
    /// K x K item counts, indexed `[actual class][predicted class]`.
    pub counts: Vec<Vec<u64>>,
}

/// The confusion matrix of `K` classes.
pub fn confusion_matrix(preds: &Predictions, n_classes: usize) -> Result<ConfusionMatrix> {
    let predicted = argmax(&preds.probs)?;
    let mut counts = vec![vec![0u64; n_classes]; n_classes];
    for (&actual, &guess) in preds.targets.iter().zip(&predicted) {
        let (actual, guess) = (actual as usize, guess as usize);
        if actual >= n_classes || guess >= n_classes {
            return Err(EvalError::Mismatch(format!(
                "class {actual} or {guess} is not below K = {n_classes}"
            )));
        }
        counts[actual][guess] += 1;
    }
    Ok(ConfusionMatrix { counts })
}

/// One class's accuracy.
#[derive(Debug, Clone, PartialEq)]
pub struct ClassReport {
    /// The class index (`0..K`).
    pub class: u32,
    /// Items of this class predicted as this class (the matrix diagonal).
    pub correct: u64,
    /// Items whose actual class is this one (the matrix row's sum).
    pub total: u64,
}

impl ClassReport {
    /// `correct / total` (0 for a class with no items).
    pub fn accuracy(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.correct as f64 / self.total as f64 }
    }
}

/// Per-class accuracy from the confusion matrix's rows.
pub fn per_class_accuracy(matrix: &ConfusionMatrix) -> Vec<ClassReport> {
    matrix
        .counts
        .iter()
        .enumerate()
        .map(|(class, row)| ClassReport {
            class: class as u32,
            correct: row[class],
            total: row.iter().sum(),
        })
        .collect()
}

/// Writes the confusion matrix as a PNG (wick-render's, as fastai's
/// `plot_confusion_matrix`): one cell per (actual, predicted) pair shaded by its share of the
/// row, with the count written in it, the classes' readable names on both axes.
///
/// # Errors
/// Drawing or writing `path` failed.
pub fn plot_confusion_matrix(matrix: &ConfusionMatrix, vocab: &Vocab, path: &Path) -> Result<()> {
    let names: Vec<String> =
        (0..matrix.counts.len() as u32).map(|class| readable_class_name(vocab, class)).collect();
    let image = wick_render::confusion_matrix_image(&matrix.counts, &names);
    wick_render::write_png(path, &image).map_err(|error| render_error(path, error))
}

/// The readable name of a catalogue class (`gas pump`, not `n03425413`), else the folder's.
fn readable_class_name(vocab: &Vocab, class: u32) -> String {
    let class = vocab.name(class).unwrap_or("?");
    wick_data::readable_name(class).unwrap_or(class).to_string()
}

fn render_error(path: &Path, error: wick_render::RenderError) -> EvalError {
    EvalError::Render { path: path.to_path_buf(), source: error }
}

/// One of the worst-predicted items.
#[derive(Debug, Clone, PartialEq)]
pub struct TopLoss {
    /// Index into the loader's items.
    pub item: usize,
    /// Cross-entropy `-ln p(actual)`.
    pub loss: f64,
    /// The argmax class of the item's probabilities.
    pub predicted: u32,
    /// The item's target class.
    pub actual: u32,
    /// Probability of the actual class.
    pub probability: f64,
}

/// The `k` rows with the largest cross-entropy, worst first.
pub fn top_losses(preds: &Predictions, k: usize) -> Result<Vec<TopLoss>> {
    let probs = rows(preds)?;
    let predicted = argmax(&preds.probs)?;
    let mut losses: Vec<TopLoss> = probs
        .iter()
        .zip(&preds.targets)
        .zip(predicted)
        .zip(&preds.item_indices)
        .map(|(((row, &actual), predicted), &item)| {
            let probability = f64::from(row[actual as usize]);
            TopLoss {
                item,
                loss: -probability.max(f64::MIN_POSITIVE).ln(),
                predicted,
                actual,
                probability,
            }
        })
        .collect();
    losses.sort_by(|a, b| b.loss.total_cmp(&a.loss));
    losses.truncate(k);
    Ok(losses)
}

/// fastai's `plot_top_losses`: a grid of the given items (loaded without augmentation at
/// `tile_size`), titled "Prediction/Actual/Loss/Probability" and captioned with those four,
/// one per line (the names in full, fitted to the tile by pixel width).
///
/// # Errors
/// An item is not in `items`, its file cannot be loaded, or drawing or writing `path` failed.
pub fn plot_top_losses(
    losses: &[TopLoss],
    items: &Items,
    vocab: &Vocab,
    tile_size: u32,
    path: &Path,
) -> Result<()> {
    let pipeline =
        ItemPipeline { output_size: tile_size, augment: None, ..ItemPipeline::chapter7(tile_size) };
    let mut grid = ImageGrid::new((losses.len() as f64).sqrt().ceil() as u32, tile_size, 3)
        .with_title("Prediction/Actual/Loss/Probability");
    let mut pixels = vec![0f32; pipeline.item_len()];
    for loss in losses {
        let file = items.paths.get(loss.item).ok_or_else(|| {
            EvalError::Mismatch(format!("item {} is not in the items", loss.item))
        })?;
        pipeline.load_plain(file, &mut pixels)?;
        grid.push(
            planar_to_rgb(&pixels, tile_size as usize, tile_size as usize),
            vec![
                readable_class_name(vocab, loss.predicted),
                readable_class_name(vocab, loss.actual),
                format!("{:.2} / {:.2}", loss.loss, loss.probability),
            ],
        );
    }
    grid.save_png(path).map_err(|error| render_error(path, error))?;
    Ok(())
}
