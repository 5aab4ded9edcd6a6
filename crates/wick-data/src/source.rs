//! The one data seam: [`BatchSource`], what the training loop and the evaluation read batches
//! from, implemented by [`DataLoader`] and by [`InMemoryBatches`] (a fixed list of tensors, for
//! tests and tiny tasks). A batch carries the index of each of its items and errors stay typed
//! ([`DataError`], naming the file), so a consumer can say which image a prediction or a
//! failure belongs to and list what was skipped.
//!
//! A source must be deterministic in `(epoch, first_batch)`: resuming a fit mid-epoch asks for
//! the tail of an epoch and must get exactly the batches an uninterrupted run would have seen.

use std::path::PathBuf;

use candle::Tensor;

use crate::error::{DataError, Result};
use crate::items::Excluded;
use crate::loader::{Batch, DataLoader};

/// The batches of one epoch.
pub type BatchIter<'a> = Box<dyn Iterator<Item = Result<Batch>> + 'a>;

/// A source of batches for one phase (training or validation). Shapes: inputs `(B, C, H, W)`,
/// labels `(B,)` u32, one item index per row.
pub trait BatchSource {
    /// Batches per epoch.
    fn n_batches(&self) -> usize;

    /// The batches of `epoch` from index `first_batch` on: exactly the tail of the full epoch.
    fn batches(&self, epoch: u64, first_batch: usize) -> BatchIter<'_>;

    /// Files skipped so far (bad files under a skip policy), each once.
    fn skipped(&self) -> Vec<Excluded> {
        Vec::new()
    }

    /// The file behind item `index`, when the items are files.
    fn item_path(&self, _index: usize) -> Option<PathBuf> {
        None
    }
}

impl BatchSource for DataLoader {
    fn n_batches(&self) -> usize {
        self.len()
    }

    fn batches(&self, epoch: u64, first_batch: usize) -> BatchIter<'_> {
        Box::new(self.epoch_from(epoch, first_batch))
    }

    fn skipped(&self) -> Vec<Excluded> {
        DataLoader::skipped(self)
    }

    fn item_path(&self, index: usize) -> Option<PathBuf> {
        self.items().paths.get(index).cloned()
    }
}

/// The same batches, in the same order, every epoch. Item indices number the rows of all
/// batches in order (batch 0's rows are items `0..B₀`, and so on).
#[derive(Debug, Clone)]
pub struct InMemoryBatches {
    batches: Vec<Batch>,
}

impl InMemoryBatches {
    /// A source over `(xs, ys)` pairs: `xs (B, …)`, `ys (B,)` u32.
    ///
    /// # Panics
    /// Never; a pair whose `xs` has no batch dimension counts as a batch of 0 items.
    pub fn new(batches: Vec<(Tensor, Tensor)>) -> Self {
        let mut next = 0;
        let batches = batches
            .into_iter()
            .map(|(xs, ys)| {
                let rows = xs.dims().first().copied().unwrap_or(0);
                let item_indices = (next..next + rows).collect();
                next += rows;
                Batch { xs, ys, item_indices }
            })
            .collect();
        InMemoryBatches { batches }
    }
}

impl BatchSource for InMemoryBatches {
    fn n_batches(&self) -> usize {
        self.batches.len()
    }

    fn batches(&self, _epoch: u64, first_batch: usize) -> BatchIter<'_> {
        Box::new(self.batches.iter().skip(first_batch).cloned().map(Ok::<Batch, DataError>))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn in_memory_batches_number_their_items_and_resume_from_any_batch() {
        let batch = |rows: usize| {
            (
                Tensor::zeros((rows, 1), candle::DType::F32, &Device::Cpu).unwrap(),
                Tensor::zeros(rows, candle::DType::U32, &Device::Cpu).unwrap(),
            )
        };
        let source = InMemoryBatches::new(vec![batch(2), batch(3), batch(1)]);
        assert_eq!(source.n_batches(), 3);
        let indices: Vec<Vec<usize>> =
            source.batches(7, 1).map(|b| b.unwrap().item_indices).collect();
        assert_eq!(indices, [vec![2, 3, 4], vec![5]]);
        assert!(source.skipped().is_empty() && source.item_path(0).is_none());
    }
}
