//! The `DataLoader`: a seeded shuffle per epoch, batches of decoded and augmented images built
//! in parallel on a rayon pool, a bounded prefetch so batch N+1 is built while the model works
//! on batch N, and the bad-file policy for files that fail while their batch is built (the
//! pre-scan, [`crate::scan`], takes out the files known bad before the loader is made).
//! Batches are candle tensors on the requested device: images `(B, 3, S, S)` f32 in [0, 1] and
//! labels `(B,)` u32.
//!
//! Determinism: the epoch's order comes from `(seed, epoch)` and each image's augmentation
//! from `(seed, epoch, position in the epoch)`, so the same seed gives the same batches
//! whatever the number of threads; so does the replacement of a file that fails mid-epoch.
//!
//! Data parallelism: a loader with a [`Shard`] builds only its rank's contiguous share of each
//! global batch, and because every draw is keyed by the position in the epoch, the shards of
//! all ranks, put side by side, are bit for bit the global batch.

use std::panic::AssertUnwindSafe;
use std::sync::mpsc::{Receiver, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use candle::{Device, Tensor};
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rayon::prelude::*;

use crate::augment::CropDraw;
use crate::error::{DataError, Result};
use crate::items::{Excluded, Exclusion, Items};
use crate::normalize::Normalize;
use crate::pipeline::{ItemPipeline, Mode};
use crate::seed::position_seed;

/// One batch on a device.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Images `(B, 3, S, S)` f32: values in [0, 1], or normalised if the loader has a
    /// [`Normalize`].
    pub xs: Tensor,
    /// Labels `(B,)` u32.
    pub ys: Tensor,
    /// The index in the loader's items of each image, in batch order.
    pub item_indices: Vec<usize>,
}

/// What the loader does with a file that cannot be read or decoded when its batch is built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BadFilePolicy {
    /// The batch that contains it is an error naming the file (the fit stops).
    #[default]
    Fail,
    /// The file is recorded in [`DataLoader::skipped`], which the caller reports. A shuffled
    /// (training) loader replaces it by another item drawn from a generator seeded by
    /// `(seed, epoch, position)`, so every batch keeps its size and the run stays
    /// reproducible; an ordered (validation) loader, where each item counts once, leaves it
    /// out of its batch and never yields an empty batch.
    Skip,
}

/// The files a loader skipped, shared with the loader (see [`DataLoader::skip_log`]).
#[derive(Debug, Clone, Default)]
pub struct SkipLog(Arc<Mutex<Vec<Excluded>>>);

impl SkipLog {
    /// Each failed file once (its first failure), sorted by path.
    pub fn list(&self) -> Vec<Excluded> {
        let mut list = self.0.lock().map(|skipped| skipped.clone()).unwrap_or_default();
        list.sort_by(|a, b| a.path.cmp(&b.path));
        list.dedup_by(|a, b| a.path == b.path);
        list
    }
}

/// Draws tried to replace a failing file in a shuffled loader before the batch is an error.
pub(crate) const MAX_REPLACEMENT_DRAWS: u64 = 16;

/// How a [`DataLoader`] batches its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LoaderConfig {
    /// B: items per batch (the global batch when sharded).
    pub batch_size: usize,
    /// Reshuffle every epoch (fastai: train `true`, valid `false`).
    pub shuffle: bool,
    /// Drop the last partial batch (fastai: train `true`, valid `false`).
    pub drop_last: bool,
    /// Which transforms run (train: augmentation; valid: none).
    pub mode: Mode,
    /// Seeds the shuffle and every augmentation draw.
    pub seed: u64,
    /// Threads decoding and augmenting images.
    pub n_threads: usize,
    /// Batches built ahead of the one being consumed (at least 1).
    pub prefetch: usize,
    /// What to do with a file that cannot be read or decoded.
    pub bad_files: BadFilePolicy,
    /// Which share of every batch this loader builds (data parallelism); [`Shard::WHOLE`]
    /// builds all of it.
    pub shard: Shard,
}

/// Rank `rank` of `world` data-parallel ranks: it builds items `[rank·B/world,
/// (rank+1)·B/world)` of every global batch of `B` (the per-batch counterpart of PyTorch's
/// `DistributedSampler`, which shards the epoch instead). Every rank reports the same
/// [`DataLoader::len`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    /// This loader's rank, `0..world`.
    pub rank: usize,
    /// The number of ranks (1: unsharded).
    pub world: usize,
}

impl Shard {
    /// The whole batch: one rank of one.
    pub const WHOLE: Shard = Shard { rank: 0, world: 1 };

    /// The `(start, end)` positions of this rank's share of the global batch
    /// `[start, end)`.
    fn of(self, start: usize, end: usize) -> (usize, usize) {
        let per_rank = (end - start) / self.world;
        let first = start + self.rank * per_rank;
        (first, first + per_rank)
    }
}

impl LoaderConfig {
    /// fastai's training loader: shuffled, last partial batch dropped, augmented.
    pub fn train(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            batch_size,
            shuffle: true,
            drop_last: true,
            mode: Mode::Train,
            seed,
            n_threads: default_threads(),
            prefetch: 2,
            bad_files: BadFilePolicy::Fail,
            shard: Shard::WHOLE,
        }
    }

    /// fastai's validation loader: in order, every item kept, no augmentation.
    pub fn valid(batch_size: usize, seed: u64) -> Self {
        LoaderConfig {
            shuffle: false,
            drop_last: false,
            mode: Mode::Valid,
            ..LoaderConfig::train(batch_size, seed)
        }
    }
}

impl LoaderConfig {
    /// # Errors
    /// [`DataError::InvalidConfig`] for a zero batch size, a rank outside its world, or a
    /// sharded loader whose batches would not split evenly (it must drop the last partial
    /// batch, and the batch size must be a multiple of the number of ranks).
    fn validate(&self) -> Result<()> {
        let invalid = |name, reason: String| Err(DataError::InvalidConfig { name, reason });
        if self.batch_size == 0 {
            return invalid("batch_size", "must be at least 1".to_string());
        }
        let Shard { rank, world } = self.shard;
        if world == 0 || rank >= world {
            return invalid("shard", format!("rank {rank} is not one of {world} ranks"));
        }
        if world > 1 && !self.drop_last {
            return invalid(
                "shard",
                "a sharded loader must drop the last partial batch (it would not split evenly)"
                    .to_string(),
            );
        }
        if !self.batch_size.is_multiple_of(world) {
            return invalid(
                "batch_size",
                format!(
                    "a batch of {} does not split into {world} equal shards: make the batch size \
                     a multiple of the number of ranks",
                    self.batch_size
                ),
            );
        }
        Ok(())
    }
}

fn default_threads() -> usize {
    std::thread::available_parallelism().map(usize::from).unwrap_or(1)
}

/// Batches of one split's items.
pub struct DataLoader {
    items: Arc<Items>,
    pipeline: ItemPipeline,
    config: LoaderConfig,
    device: Device,
    pool: Arc<rayon::ThreadPool>,
    skipped: Arc<Mutex<Vec<Excluded>>>,
    normalize: Option<Normalize>,
}

impl std::fmt::Debug for DataLoader {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("DataLoader")
            .field("n_items", &self.items.len())
            .field("pipeline", &self.pipeline)
            .field("config", &self.config)
            .field("normalize", &self.normalize.is_some())
            .finish()
    }
}

impl DataLoader {
    /// A loader over `items`, producing batches on `device`.
    pub fn new(
        items: Items,
        pipeline: ItemPipeline,
        config: LoaderConfig,
        device: Device,
    ) -> Result<Self> {
        pipeline.validate()?;
        config.validate()?;
        if items.paths.len() != items.labels.len() {
            return Err(DataError::InvalidConfig {
                name: "items",
                reason: format!("{} paths but {} labels", items.paths.len(), items.labels.len()),
            });
        }
        let pool = rayon::ThreadPoolBuilder::new()
            .num_threads(config.n_threads.max(1))
            .thread_name(|index| format!("wick-data-{index}"))
            .build()
            .map_err(|error| DataError::InvalidConfig {
                name: "n_threads",
                reason: error.to_string(),
            })?;
        Ok(DataLoader {
            items: Arc::new(items),
            pipeline,
            config,
            device,
            pool: Arc::new(pool),
            skipped: Arc::default(),
            normalize: None,
        })
    }

    /// The same loader with `normalize` applied to every batch on the device (fastai's
    /// `Normalize` batch transform, the last one).
    pub fn with_normalize(mut self, normalize: Option<Normalize>) -> Self {
        self.normalize = normalize;
        self
    }

    /// The normalisation applied to batches, if any.
    pub fn normalize(&self) -> Option<&Normalize> {
        self.normalize.as_ref()
    }

    /// The items, in their fixed order.
    pub fn items(&self) -> &Items {
        &self.items
    }

    /// What happens to each image between its file and its tensor.
    pub fn pipeline(&self) -> &ItemPipeline {
        &self.pipeline
    }

    /// How the items are batched.
    pub fn config(&self) -> &LoaderConfig {
        &self.config
    }

    /// Where the batches' tensors are placed.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The same items (and normalisation) with another pipeline — e.g. another output size for
    /// progressive resizing — and configuration. The thread pool is shared when the thread
    /// count is unchanged.
    pub fn with(&self, pipeline: ItemPipeline, config: LoaderConfig) -> Result<Self> {
        if config.n_threads != self.config.n_threads {
            let loader =
                DataLoader::new((*self.items).clone(), pipeline, config, self.device.clone())?;
            return Ok(loader.with_normalize(self.normalize.clone()));
        }
        pipeline.validate()?;
        config.validate()?;
        Ok(DataLoader {
            items: Arc::clone(&self.items),
            pipeline,
            config,
            device: self.device.clone(),
            pool: Arc::clone(&self.pool),
            skipped: Arc::default(),
            normalize: self.normalize.clone(),
        })
    }

    /// Batches per epoch.
    pub fn len(&self) -> usize {
        let (n, bs) = (self.items.len(), self.config.batch_size);
        if self.config.drop_last { n / bs } else { n.div_ceil(bs) }
    }

    /// Whether an epoch has no batches.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Files that failed so far under [`BadFilePolicy::Skip`], once each (the first failure's
    /// reason), sorted by path; their kind is [`Exclusion::FailedInBatch`].
    pub fn skipped(&self) -> Vec<Excluded> {
        self.skip_log().list()
    }

    /// A handle on [`DataLoader::skipped`] that outlives a move of the loader (into a
    /// Learner, say).
    pub fn skip_log(&self) -> SkipLog {
        SkipLog(Arc::clone(&self.skipped))
    }

    /// The order in which epoch `epoch` visits the items.
    pub fn epoch_order(&self, epoch: u64) -> Vec<usize> {
        let mut order: Vec<usize> = (0..self.items.len()).collect();
        if self.config.shuffle {
            order.shuffle(&mut ChaCha8Rng::seed_from_u64(position_seed(
                self.config.seed,
                epoch,
                u64::MAX,
            )));
        }
        order
    }

    /// The batches of epoch `epoch`, built ahead on a background thread.
    pub fn epoch(&self, epoch: u64) -> EpochBatches {
        self.epoch_from(epoch, 0)
    }

    /// The batches of epoch `epoch` from batch `first_batch` on: exactly the tail of
    /// [`DataLoader::epoch`], without building the skipped batches (resuming mid-epoch).
    pub fn epoch_from(&self, epoch: u64, first_batch: usize) -> EpochBatches {
        let order = self.epoch_order(epoch);
        let n_batches = self.len();
        let batch_size = self.config.batch_size;
        let shard = self.config.shard;
        let (sender, receiver) = sync_channel(self.config.prefetch.max(1));
        let job = BatchJob {
            items: Arc::clone(&self.items),
            pipeline: self.pipeline,
            config: self.config,
            pool: Arc::clone(&self.pool),
            skipped: Arc::clone(&self.skipped),
            epoch,
        };
        let producer =
            std::thread::Builder::new().name("wick-data-prefetch".to_string()).spawn(move || {
                for batch_idx in first_batch..n_batches {
                    let global_start = batch_idx * batch_size;
                    let global_end = (global_start + batch_size).min(order.len());
                    let (start, end) = shard.of(global_start, global_end);
                    let positions: Vec<(usize, usize)> =
                        (start..end).map(|position| (position, order[position])).collect();
                    let batch = job.build(&positions);
                    if matches!(&batch, Ok(host) if host.labels.is_empty()) {
                        continue; // Every file of an ordered batch failed: no empty batch.
                    }
                    if sender.send(batch).is_err() {
                        return; // The consumer stopped early.
                    }
                }
            });
        match producer {
            Ok(handle) => EpochBatches {
                receiver: Some(receiver),
                producer: Some(handle),
                device: self.device.clone(),
                normalize: self.normalize.clone(),
            },
            Err(error) => {
                let (sender, receiver) = sync_channel(1);
                // Invariant: a fresh channel with capacity 1 accepts one message.
                let _ = sender.send(Err(DataError::io("<prefetch thread>", error)));
                EpochBatches {
                    receiver: Some(receiver),
                    producer: None,
                    device: self.device.clone(),
                    normalize: None,
                }
            }
        }
    }
}

/// A batch on the host, before it moves to the device.
struct HostBatch {
    images: Vec<f32>,
    labels: Vec<u32>,
    item_indices: Vec<usize>,
    size: usize,
}

struct BatchJob {
    items: Arc<Items>,
    pipeline: ItemPipeline,
    config: LoaderConfig,
    pool: Arc<rayon::ThreadPool>,
    skipped: Arc<Mutex<Vec<Excluded>>>,
    epoch: u64,
}

impl BatchJob {
    /// Builds the batch of `(position in epoch, item index)` pairs.
    fn build(&self, positions: &[(usize, usize)]) -> Result<HostBatch> {
        let item_len = self.pipeline.item_len();
        let mut images = vec![0f32; positions.len() * item_len];
        let outcomes: Vec<Result<Option<usize>>> = self.pool.install(|| {
            images
                .par_chunks_mut(item_len)
                .zip(positions.par_iter())
                .map(|(out, &(position, item_idx))| self.load_slot(position, item_idx, out))
                .collect()
        });
        let mut kept_images = Vec::with_capacity(images.len());
        let mut labels = Vec::with_capacity(positions.len());
        let mut item_indices = Vec::with_capacity(positions.len());
        for (outcome, image) in outcomes.into_iter().zip(images.chunks(item_len)) {
            if let Some(item_idx) = outcome? {
                kept_images.extend_from_slice(image);
                labels.push(self.items.labels[item_idx]);
                item_indices.push(item_idx);
            }
        }
        Ok(HostBatch {
            images: kept_images,
            labels,
            item_indices,
            size: self.pipeline.output_size as usize,
        })
    }

    /// Fills one batch slot: the item at `position`, or under [`BadFilePolicy::Skip`] its
    /// seeded replacement (shuffled loaders) or nothing (ordered loaders). Returns the item
    /// that filled the slot.
    fn load_slot(
        &self,
        position: usize,
        item_idx: usize,
        out: &mut [f32],
    ) -> Result<Option<usize>> {
        let error = match self.load_one(position, item_idx, out) {
            Ok(()) => return Ok(Some(item_idx)),
            Err(error) => error,
        };
        if self.config.bad_files == BadFilePolicy::Fail {
            return Err(error);
        }
        self.record(item_idx, &error);
        if !self.config.shuffle {
            return Ok(None);
        }
        let seed = position_seed(self.config.seed ^ REPLACEMENT_SALT, self.epoch, position as u64);
        let mut draws = ChaCha8Rng::seed_from_u64(seed);
        for _ in 0..MAX_REPLACEMENT_DRAWS {
            let candidate = draws.random_range(0..self.items.len());
            match self.load_one(position, candidate, out) {
                Ok(()) => {
                    self.note_replacement(item_idx, candidate);
                    return Ok(Some(candidate));
                }
                Err(error) => self.record(candidate, &error),
            }
        }
        Err(DataError::BadDataset {
            path: self.items.paths[item_idx].clone(),
            reason: format!(
                "failed to load, and so did {MAX_REPLACEMENT_DRAWS} seeded replacements in a row: \
                 too many bad files ({error})"
            ),
        })
    }

    fn record(&self, item_idx: usize, error: &DataError) {
        let mut excluded = crate::scan::excluded(&self.items.paths[item_idx], error);
        excluded.kind = Exclusion::FailedInBatch;
        if let Ok(mut list) = self.skipped.lock() {
            list.push(excluded);
        }
    }

    /// Adds which item replaced `item_idx` to its (first) record.
    fn note_replacement(&self, item_idx: usize, replacement: usize) {
        let path = &self.items.paths[item_idx];
        if let Ok(mut list) = self.skipped.lock()
            && let Some(record) = list.iter_mut().find(|record| &record.path == path)
            && !record.reason.contains("(replaced by")
        {
            record.reason.push_str(&format!(
                " (replaced by {} in epoch {})",
                self.items.paths[replacement].display(),
                self.epoch
            ));
        }
    }

    fn load_one(&self, position: usize, item_idx: usize, out: &mut [f32]) -> Result<()> {
        let path = &self.items.paths[item_idx];
        let mut rng =
            ChaCha8Rng::seed_from_u64(position_seed(self.config.seed, self.epoch, position as u64));
        let mode = self.config.mode;
        let mut draw = self.pipeline.draw(mode, &mut rng);
        if let (Mode::Train, Some(augment)) = (mode, &self.pipeline.augment)
            && augment.crop_draw == CropDraw::PerBatch
        {
            // fastai's `RandomResizedCropGPU`: one crop for the whole (global) batch, from a
            // stream of its own; the image's stream is drawn in full as before.
            let batch = (position / self.config.batch_size.max(1)) as u64;
            let seed = position_seed(self.config.seed ^ BATCH_CROP_SALT, self.epoch, batch);
            (draw.crop_area, draw.crop_offset) =
                augment.draw_crop(&mut ChaCha8Rng::seed_from_u64(seed));
        }
        let bytes = std::fs::read(path).map_err(|error| DataError::io(path, error))?;
        // A panic inside a decoder (a bug in a codec on a hostile file) must not take the
        // worker thread down: it becomes an error that names the file.
        std::panic::catch_unwind(AssertUnwindSafe(|| {
            self.pipeline.load_drawn(&bytes, path, mode, &draw, out)
        }))
        .unwrap_or_else(|_| Err(DataError::decode(path, "the decoder panicked")))
    }
}

/// Separates the replacement draws' seeds from the augmentation seeds.
const REPLACEMENT_SALT: u64 = 0x0005_EED0_FBAD_F11E;
/// Separates the per-batch crop draws' seeds (`CropDraw::PerBatch`) from the per-image ones.
const BATCH_CROP_SALT: u64 = 0x000C_0B0A_7C40_0001;

/// The batches of one epoch, in order. Dropping it stops the background thread.
pub struct EpochBatches {
    receiver: Option<Receiver<Result<HostBatch>>>,
    producer: Option<JoinHandle<()>>,
    device: Device,
    normalize: Option<Normalize>,
}

impl Iterator for EpochBatches {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Self::Item> {
        let host = self.receiver.as_ref()?.recv().ok()?;
        Some(host.and_then(|host| self.to_device(host)))
    }
}

impl EpochBatches {
    fn to_device(&self, host: HostBatch) -> Result<Batch> {
        let n = host.labels.len();
        let mut xs = Tensor::from_vec(host.images, (n, 3, host.size, host.size), &Device::Cpu)?
            .to_device(&self.device)?;
        if let Some(normalize) = &self.normalize {
            xs = normalize.forward(&xs)?;
        }
        let ys = Tensor::from_vec(host.labels, n, &Device::Cpu)?.to_device(&self.device)?;
        Ok(Batch { xs, ys, item_indices: host.item_indices })
    }
}

impl Drop for EpochBatches {
    fn drop(&mut self) {
        // Closing the channel makes the producer's next send fail, so it exits promptly.
        self.receiver.take();
        if let Some(handle) = self.producer.take() {
            let _ = handle.join();
        }
    }
}
