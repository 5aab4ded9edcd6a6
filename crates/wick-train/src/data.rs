//! Where the Learner gets its batches: wick-data's [`BatchSource`] seam (batches with item
//! indices and typed errors, from a `DataLoader` or an [`InMemoryBatches`] list), re-exported
//! so a training crate's users find it beside the Learner.

pub use wick_data::{BatchIter, BatchSource, InMemoryBatches};
