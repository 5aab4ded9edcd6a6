//! The callbacks wick ships, each applying pure pieces from the crate root's modules to the
//! loop: [`ParamScheduler`] (schedules), [`LrFinder`] (lr_find's ramp and stop rule),
//! [`MixUp`] / [`CutMix`] (training batches only), [`CheckpointSaver`] (checkpoints, and the save
//! on interrupt), [`RunFiles`] (metrics.jsonl and plots). Orders are in [`crate::callback::order`].

mod checkpoint;
mod files;
mod lr_finder;
mod mixup;
mod scheduler;

pub use checkpoint::{CheckpointConfig, CheckpointSaver};
pub use files::RunFiles;
pub use lr_finder::LrFinder;
pub use mixup::{CutMix, MixUp, batch_rng};
pub use scheduler::ParamScheduler;
