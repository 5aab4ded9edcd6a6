//! wick-data: from image files (or a dataset URL) to augmented, normalised batches of candle
//! tensors, behaving like fastai's chapter-7 `DataBlock` point by point.
//!
//! The path of one image: [`acquire`] puts the dataset on disk; [`items`] lists and labels the
//! files and splits them; [`decode`] turns bytes into RGB (DCT-scaled when that loses
//! nothing); [`augment`] draws fastai's `Resize` + `aug_transforms` parameters per image;
//! [`geometry`] composes all of them into one resampling pass; [`scan`] checks every file once
//! before training; [`pipeline`] runs those steps
//! for one file; [`loader`] batches many in parallel onto a device; [`source`] is the seam the
//! training loop and the evaluation read batches through; [`normalize`] is the batch
//! transform; [`show`] turns batches back into pictures' data (drawing is wick-render's).
//! [`seed`] derives every random stream's seed (the loader's here, the training callbacks' in
//! wick-train) from the run's seed and a position.
//!
//! Shapes: images `(B, 3, H, W)` f32 with `H = W = S` (the output size), labels `(B,)` u32,
//! `K` classes in a [`Vocab`].
//!
//! This crate knows nothing about networks or training (it never imports candle-nn) and never
//! prints; randomness comes only from the seeds it is given.

pub mod acquire;
pub mod augment;
pub mod class_names;
pub mod decode;
mod error;
pub mod geometry;
pub mod items;
pub mod loader;
pub mod normalize;
pub mod pipeline;
pub mod scan;
pub mod seed;
pub mod show;
pub mod source;
mod three_pass;

pub use acquire::{
    ARCHIVES, AcquireConfig, Archive, DownloadConfig, Expected, ExtractConfig, IMAGENETTE,
    IMAGENETTE_160, IMAGENETTE_320, IMAGEWOOF, IMAGEWOOF_160, IMAGEWOOF_320, Progress, ReuseCheck,
    Source, archive_named, download, extract_tgz, md5_file, untar_data, verify,
};
pub use augment::{AugDraw, AugTransforms, CropDraw, lighting, lighting_texels};
pub use class_names::{display_name, readable_name};
pub use decode::{DecodeConfig, Decoded, decode_rgb, image_size, read_rgb};
pub use error::{DataError, Result};
pub use geometry::ResizeMethod;
pub use items::{
    Excluded, Exclusion, Items, Listing, SplitRule, Splits, Vocab, image_folder, label_and_split,
    list_image_files, list_images, parent_label,
};
pub use loader::{BadFilePolicy, Batch, DataLoader, EpochBatches, LoaderConfig, Shard, SkipLog};
pub use normalize::{IMAGENET_MEAN, IMAGENET_STD, Normalize};
pub use pipeline::{ItemPipeline, Mode, Resampling};
pub use scan::{ScanConfig, ScanDepth, check_file, scan_files, scan_items};
pub use show::{batch_images, planar_to_rgb};
pub use source::{BatchIter, BatchSource, InMemoryBatches};
