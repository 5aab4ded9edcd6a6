//! Where the Learner gets its batches: the [`BatchSource`] trait, implemented for wick-data's
//! `DataLoader` and for [`InMemoryBatches`] (a fixed list, for tests and tiny tasks).
//!
//! A source must be deterministic in `(epoch, first_batch)`: resuming a fit mid-epoch asks for
//! the tail of an epoch and must get exactly the batches an uninterrupted run would have seen.
//!
//! Shapes: inputs `(B,C,H,W)`, labels `(B,)` u32.

use candle::Tensor;

/// The batches of one epoch, as `(xs, ys)` pairs.
pub type BatchIter<'a> = Box<dyn Iterator<Item = candle::Result<(Tensor, Tensor)>> + 'a>;

/// A source of batches for one phase (training or validation).
pub trait BatchSource {
    /// Batches per epoch.
    fn n_batches(&self) -> usize;
    /// The batches of `epoch` from index `first_batch` on: exactly the tail of the full epoch.
    fn batches(&self, epoch: u64, first_batch: usize) -> BatchIter<'_>;
}

impl BatchSource for wick_data::DataLoader {
    fn n_batches(&self) -> usize {
        self.len()
    }

    fn batches(&self, epoch: u64, first_batch: usize) -> BatchIter<'_> {
        Box::new(
            self.epoch_from(epoch, first_batch)
                .map(|batch| batch.map(|b| (b.xs, b.ys)).map_err(candle::Error::wrap)),
        )
    }
}

/// The same batches, in the same order, every epoch.
#[derive(Debug, Clone)]
pub struct InMemoryBatches {
    batches: Vec<(Tensor, Tensor)>,
}

impl InMemoryBatches {
    /// A source over `(xs, ys)` pairs.
    pub fn new(batches: Vec<(Tensor, Tensor)>) -> Self {
        InMemoryBatches { batches }
    }
}

impl BatchSource for InMemoryBatches {
    fn n_batches(&self) -> usize {
        self.batches.len()
    }

    fn batches(&self, _epoch: u64, first_batch: usize) -> BatchIter<'_> {
        Box::new(self.batches.iter().skip(first_batch).map(|(xs, ys)| Ok((xs.clone(), ys.clone()))))
    }
}
