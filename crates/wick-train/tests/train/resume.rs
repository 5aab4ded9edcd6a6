//! Checkpoints: an interrupted fit (the Ctrl-C flag) saves and stops; resuming from that
//! checkpoint continues bit for bit like the uninterrupted run, with a real shuffling, augmenting
//! DataLoader (resumed with `epoch_from`) and MixUp; a NaN loss stops the fit naming epoch and
//! batch and leaves the last checkpoint loadable.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use candle::{DType, Device, Tensor};
use candle_nn::VarMap;
use image::{Rgb, RgbImage};
use wick_data::{DataLoader, ItemPipeline, Items, LoaderConfig};
use wick_models::{Depth, XResNet, XResNetConfig, seeded_var_builder, xresnet};
use wick_train::{
    BatchIter, BatchSource, Checkpoint, CheckpointConfig, CheckpointSaver, Event, FitOutcome,
    FitPosition, Flow, InMemoryBatches, Learner, MixUp, ModelState, OneCycle, TrainError,
};

use crate::tiny::{Probe, TinyCnn, adam, bright_dark_batches, config, tiny_cnn, var_values};

const RUN_SEED: u64 = 42;

/// 12 bright and 12 dark 20x20 PNGs (training), 4 + 4 (validation), with some texture.
pub(crate) fn image_items(dir: &Path) -> (Items, Items) {
    let write = |split: &str, n_per_class: usize| {
        let mut items = Items { paths: Vec::new(), labels: Vec::new() };
        for label in 0..2u32 {
            for i in 0..n_per_class {
                let base = if label == 1 { 150 } else { 10 };
                let image = RgbImage::from_fn(20, 20, |x, y| {
                    let v = base + ((x * 7 + y * 13 + i as u32 * 31) % 90) as u8;
                    Rgb([v, v / 2 + 40, 255 - v])
                });
                let path = dir.join(format!("{split}-{label}-{i}.png"));
                image.save(&path).unwrap();
                items.paths.push(path);
                items.labels.push(label);
            }
        }
        items
    };
    (write("train", 12), write("valid", 4))
}

/// Shuffled, augmented `size`-px batches of 4 (6 per epoch) and in-order validation batches of 4.
fn loaders(train: &Items, valid: &Items, size: u32) -> (DataLoader, DataLoader) {
    let pipeline = ItemPipeline { item_size: size + 8, ..ItemPipeline::chapter7(size) };
    let train_config = LoaderConfig { n_threads: 2, ..LoaderConfig::train(4, 9) };
    let valid_config = LoaderConfig { n_threads: 2, ..LoaderConfig::valid(4, 9) };
    (
        DataLoader::new(train.clone(), pipeline, train_config, Device::Cpu).unwrap(),
        DataLoader::new(valid.clone(), pipeline, valid_config, Device::Cpu).unwrap(),
    )
}

/// Which network a resume test trains.
#[derive(Debug, Clone, Copy)]
enum Net {
    /// [`crate::tiny::TinyCnn`]: candle-nn layers.
    Tiny,
    /// fastai's xresnet18 at widen 0.125 (wick-models, wick-nn kernels), 2 classes.
    XResNet,
}

/// Either network as one model type.
enum AnyNet {
    Tiny(TinyCnn),
    XResNet(Box<XResNet>),
}

impl candle::ModuleT for AnyNet {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        match self {
            AnyNet::Tiny(model) => model.forward_t(xs, train),
            AnyNet::XResNet(model) => model.forward_t(xs, train),
        }
    }
}

impl ModelState for AnyNet {
    fn save_state(&self) -> candle::Result<HashMap<String, Tensor>> {
        match self {
            AnyNet::Tiny(model) => model.save_state(),
            AnyNet::XResNet(model) => model.save_state(),
        }
    }

    fn load_state(&self, tensors: &HashMap<String, Tensor>) -> candle::Result<()> {
        match self {
            AnyNet::Tiny(model) => model.load_state(tensors),
            AnyNet::XResNet(model) => model.load_state(tensors),
        }
    }
}

/// A learner with MixUp over the image loaders; `init_seed` draws the initial weights.
fn image_learner(train: &Items, valid: &Items, net: Net, init_seed: u64) -> Learner<AnyNet> {
    // xresnet needs 32 px: its last stages would get 1x1 inputs at 16.
    let size = match net {
        Net::Tiny => 16,
        Net::XResNet => 32,
    };
    let (train_loader, valid_loader) = loaders(train, valid, size);
    let varmap = VarMap::new();
    let model = match net {
        Net::Tiny => AnyNet::Tiny(tiny_cnn(&varmap, init_seed, 2)),
        Net::XResNet => {
            let config = XResNetConfig { widen: 0.125, ..XResNetConfig::depth(Depth::D18, 2) };
            let vb = seeded_var_builder(&varmap, init_seed, DType::F32, &Device::Cpu);
            AnyNet::XResNet(Box::new(xresnet(&config, 0, vb).unwrap()))
        }
    };
    let optimizer = adam(&varmap);
    let mut learner = Learner::new(
        model,
        varmap,
        optimizer,
        Box::new(train_loader),
        Box::new(valid_loader),
        config(RUN_SEED),
    );
    learner.add_callback(Box::new(MixUp::fastai_default()));
    learner
}

/// The tiny network on `n_train` bright/dark batches of 4 (and one validation batch), saving
/// a checkpoint to `path` every `every_n_batches` training batches and at each epoch's end.
fn tiny_saving(n_train: usize, path: &Path, every_n_batches: usize) -> Learner<TinyCnn> {
    let (train, valid) = (bright_dark_batches(n_train, 4, 1), bright_dark_batches(1, 4, 2));
    let mut learner = crate::tiny::tiny_learner(train, valid, 0);
    let config = CheckpointConfig { path: path.to_path_buf(), every_n_batches };
    learner.add_callback(Box::new(CheckpointSaver::new(config)));
    learner
}

fn cycle() -> OneCycle {
    OneCycle::fastai_defaults(1e-2)
}

#[test]
fn interrupt_saves_and_resume_continues_bit_for_bit() {
    check_interrupt_and_resume(Net::Tiny);
    check_interrupt_and_resume(Net::XResNet);
}

fn check_interrupt_and_resume(net: Net) {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = image_items(dir.path());
    let checkpoint_path = dir.path().join("checkpoint.safetensors");

    // The reference: 3 epochs × 6 batches, uninterrupted.
    let mut reference = image_learner(&train, &valid, net, 1);
    assert_eq!(reference.fit_one_cycle(3, cycle()).unwrap(), FitOutcome::Completed);

    // The same run, with the interrupt flag raised after training batch 8 (epoch 1, batch 1),
    // as the CLI's Ctrl-C handler would.
    let flag = Arc::new(AtomicBool::new(false));
    let mut interrupted = image_learner(&train, &valid, net, 1);
    interrupted.set_interrupt_flag(Arc::clone(&flag));
    interrupted.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: checkpoint_path.clone(),
        every_n_batches: 0,
    })));
    let raise = Arc::clone(&flag);
    let log = Default::default();
    interrupted.add_callback(Box::new(Probe::replying(&log, move |event, state| {
        if event == Event::AfterBatch && state.train_iter == 8 {
            raise.store(true, Ordering::Relaxed);
        }
        Ok(Flow::Continue)
    })));
    let outcome = interrupted.fit_one_cycle(3, cycle()).unwrap();
    let resume_at = FitPosition { fit_index: 0, epoch: 1, batch: 2, data_epoch: 1 };
    assert_eq!(outcome, FitOutcome::Interrupted { at: resume_at });

    // A new process: other initial weights, then the checkpoint. No temporary file is left.
    let checkpoint = Checkpoint::load(&checkpoint_path).unwrap();
    assert_eq!(checkpoint.position(), resume_at);
    assert_eq!(checkpoint.seed(), RUN_SEED);
    let leftovers: Vec<_> = std::fs::read_dir(dir.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().contains(".tmp"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");
    let mut resumed = image_learner(&train, &valid, net, 2);
    resumed.resume(&checkpoint).unwrap();
    assert_eq!(resumed.fit_one_cycle(3, cycle()).unwrap(), FitOutcome::Completed);

    // Bit for bit: every per-batch record (lr, mom, loss, smoothed loss), every epoch's losses and
    // accuracy, and every final weight and BatchNorm statistic. CPU candle kernels are
    // deterministic for a fixed thread count, the loader's batches depend only on
    // (seed, epoch, position), MixUp's draws on (seed, epoch, batch), and the checkpoint holds
    // the optimizer state and the smoothed-loss accumulator exactly.
    let expected = &reference.recorder().fits()[0];
    let actual = &resumed.recorder().fits()[0];
    assert_eq!(actual.batches, expected.batches, "{net:?}");
    assert_eq!(actual.batches.len(), 18);
    let strip_time = |rows: &[wick_train::EpochRecord]| {
        rows.iter()
            .map(|r| (r.epoch, r.train_loss, r.valid.clone(), r.train_iter))
            .collect::<Vec<_>>()
    };
    assert_eq!(strip_time(&actual.epochs), strip_time(&expected.epochs));
    // Every epoch keeps its time split through the checkpoint: epoch 0's as recorded before the
    // interrupt, bit for bit; epoch 1's (interrupted) adds the parts before and after.
    let before = &interrupted.recorder().fits()[0].epochs;
    assert_eq!(actual.epochs[0].split, before[0].split, "{net:?}");
    for epoch in &actual.epochs {
        let split = epoch.split.unwrap_or_else(|| panic!("epoch {} has no split", epoch.epoch));
        assert!(split.train_batches > 0.0 && split.valid_batches > 0.0, "{split:?}");
        let parts = split.data_wait + split.train_batches + split.valid_batches;
        assert!(parts <= epoch.seconds + 1e-9, "{split:?} of {} s", epoch.seconds);
    }
    assert_eq!(var_values(resumed.varmap()), var_values(reference.varmap()));
    assert_eq!(
        resumed.optimizer().state_dict().unwrap().len(),
        reference.optimizer().state_dict().unwrap().len()
    );
}

#[test]
fn resume_refuses_another_seed_or_recipe() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut learner =
        crate::tiny::tiny_learner(bright_dark_batches(3, 4, 1), bright_dark_batches(1, 4, 2), 0);
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: path.clone(),
        every_n_batches: 2,
    })));
    learner.fit(1, 1e-3).unwrap();
    let checkpoint = Checkpoint::load(&path).unwrap();
    // Saved at the end of epoch 0, the last epoch: the next fit of the recipe starts from scratch.
    assert_eq!(
        checkpoint.position(),
        FitPosition { fit_index: 1, epoch: 0, batch: 0, data_epoch: 1 }
    );

    // Another seed.
    let varmap = VarMap::new();
    let model = tiny_cnn(&varmap, 0, 2);
    let optimizer = adam(&varmap);
    let mut other = Learner::new(
        model,
        varmap,
        optimizer,
        Box::new(InMemoryBatches::new(bright_dark_batches(3, 4, 1))),
        Box::new(InMemoryBatches::new(vec![])),
        config(7),
    );
    let error = other.resume(&checkpoint).unwrap_err();
    assert_eq!(error.to_string(), "cannot resume: checkpoint has seed 0, this run has 7");

    // A mid-fit checkpoint (the interrupt flag is already set: the fit stops after its first
    // batch) resumed into a recipe with another number of epochs.
    let mut learner = crate::tiny::tiny_learner(bright_dark_batches(3, 4, 1), vec![], 0);
    learner.set_interrupt_flag(Arc::new(AtomicBool::new(true)));
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: path.clone(),
        every_n_batches: 0,
    })));
    learner.fit(2, 1e-3).unwrap();
    let mid = Checkpoint::load(&path).unwrap();
    assert_eq!(mid.position(), FitPosition { fit_index: 0, epoch: 0, batch: 1, data_epoch: 0 });
    let mut other = crate::tiny::tiny_learner(bright_dark_batches(3, 4, 1), vec![], 0);
    other.resume(&mid).unwrap();
    let error = other.fit(3, 1e-3).unwrap_err();
    assert_eq!(
        error.to_string(),
        "cannot resume: checkpoint has epochs in the fit 2, this run has 3"
    );
}

/// Training batches of an inner source, with NaN images at one (epoch, batch).
struct Poisoned {
    inner: InMemoryBatches,
    epoch: u64,
    batch: usize,
}

impl BatchSource for Poisoned {
    fn n_batches(&self) -> usize {
        self.inner.n_batches()
    }

    fn batches(&self, epoch: u64, first_batch: usize) -> BatchIter<'_> {
        let (poison_epoch, poison_batch) = (self.epoch, self.batch);
        Box::new(self.inner.batches(epoch, first_batch).zip(first_batch..).map(
            move |(item, index)| {
                let mut batch = item?;
                if (epoch, index) == (poison_epoch, poison_batch) {
                    batch.xs = (batch.xs * f64::NAN)?;
                }
                Ok(batch)
            },
        ))
    }
}

/// Checkpoints are written on a background thread; a write that fails still stops the fit
/// with an error naming the file, at the next save or at the fit's end, and the fit never
/// returns while a write is in flight.
#[test]
fn a_failed_background_write_stops_the_fit_naming_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("no-such-folder").join("checkpoint.safetensors");
    for every_n_batches in [0, 1] {
        // 0: the only saves are at epoch ends (the error comes at after_fit); 1: after every
        // batch (it comes at the next save).
        let mut learner = tiny_saving(2, &path, every_n_batches);
        let error = learner.fit(1, 1e-3).unwrap_err();
        assert!(
            matches!(&error, TrainError::Checkpoint { path: named, .. } if *named == path),
            "{error}"
        );
        assert!(error.to_string().contains("no-such-folder"), "{error}");
    }
    // Written whole before the fit returns: the same fit with a folder that exists.
    let path = dir.path().join("checkpoint.safetensors");
    let mut learner = tiny_saving(2, &path, 1);
    learner.fit(1, 1e-3).unwrap();
    // Taken at the epoch's end: no seconds and a zero split carried into the next epoch.
    let raw = candle::safetensors::load(&path, &Device::Cpu).unwrap();
    let scalar = |name: &str| raw[name].to_vec0::<f64>().unwrap();
    assert_eq!(scalar("recorder.epoch_elapsed"), 0.0);
    assert_eq!(raw["recorder.epoch_split"].to_vec1::<f64>().unwrap(), [1.0, 0.0, 0.0, 0.0]);
    let checkpoint = Checkpoint::load(&path).unwrap();
    // The last save is the end of the fit's one epoch: the position of the next fit.
    assert_eq!(
        checkpoint.position(),
        FitPosition { fit_index: 1, epoch: 0, batch: 0, data_epoch: 1 }
    );
    assert_eq!(var_values(learner.varmap()), {
        let saved = checkpoint.model_tensors();
        let mut values: Vec<(String, Vec<f32>)> = saved
            .iter()
            .map(|(name, tensor)| (name.clone(), tensor.flatten_all().unwrap().to_vec1().unwrap()))
            .collect();
        values.sort_by(|a, b| a.0.cmp(&b.0));
        values
    });
}

#[test]
fn nan_loss_stops_with_its_position_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let varmap = VarMap::new();
    let model = tiny_cnn(&varmap, 3, 2);
    let optimizer = adam(&varmap);
    let train =
        Poisoned { inner: InMemoryBatches::new(bright_dark_batches(4, 4, 1)), epoch: 1, batch: 2 };
    let mut learner = Learner::new(
        model,
        varmap,
        optimizer,
        Box::new(train),
        Box::new(InMemoryBatches::new(bright_dark_batches(1, 4, 2))),
        config(0),
    );
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: path.clone(),
        every_n_batches: 3,
    })));
    let error = learner.fit_one_cycle(3, cycle()).unwrap_err();
    assert!(matches!(error, TrainError::NonFiniteLoss { epoch: 1, batch: 2, .. }), "{error}");
    assert_eq!(
        error.to_string(),
        "non-finite train loss NaN at epoch 1, batch 2: fit stopped before the optimizer step"
    );
    // Saves after batches 3 (epoch 0), 4 (end of epoch 0) and 6 (epoch 1, batch 1); the NaN
    // batch is the 7th, so the checkpoint is the one after the 6th: loadable, finite, and with
    // the parameters the learner was left with (the NaN batch made no step). The learner's
    // BatchNorm running statistics, though, already took the NaN batch in during its forward
    // pass: the checkpoint is the state to resume from.
    let checkpoint = Checkpoint::load(&path).unwrap();
    assert_eq!(
        checkpoint.position(),
        FitPosition { fit_index: 0, epoch: 1, batch: 2, data_epoch: 1 }
    );
    let saved = checkpoint.model_tensors();
    for (name, values) in var_values(learner.varmap()) {
        let stored: Vec<f32> = saved[&name].flatten_all().unwrap().to_vec1().unwrap();
        assert!(stored.iter().all(|v| v.is_finite()), "{name}");
        if name.contains("running") {
            assert!(values.iter().any(|v| v.is_nan()), "{name} saw the NaN batch");
        } else {
            assert_eq!(stored, values, "{name}");
        }
    }
    assert_eq!(checkpoint.history()[0].batches.len(), 6);
}

/// Sets the first value of parameter `name` to NaN after the `at`-th optimizer step, as a
/// diverging step would.
struct PoisonAfterStep {
    name: &'static str,
    at: usize,
    steps: usize,
}

impl wick_train::Callback for PoisonAfterStep {
    fn name(&self) -> &'static str {
        "poison"
    }

    fn order(&self) -> i32 {
        0
    }

    fn on_event(
        &mut self,
        event: Event,
        context: &wick_train::EventContext<'_>,
    ) -> wick_train::CallbackResult {
        if event == Event::AfterStep {
            self.steps += 1;
            if self.steps == self.at {
                let var = context.varmap.data().lock().unwrap()[self.name].clone();
                let mut values: Vec<f32> = var.flatten_all().unwrap().to_vec1().unwrap();
                values[0] = f32::NAN;
                let tensor = Tensor::from_vec(values, var.shape(), var.device()).unwrap();
                var.set(&tensor).unwrap();
            }
        }
        Ok(Flow::Continue)
    }
}

#[test]
fn a_non_finite_state_is_never_checkpointed() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut learner = crate::tiny::tiny_learner(bright_dark_batches(5, 4, 1), vec![], 0);
    let name =
        var_values(learner.varmap()).into_iter().find(|(n, _)| n.contains("weight")).unwrap().0;
    let name: &'static str = Box::leak(name.into_boxed_str());
    learner.add_callback(Box::new(CheckpointSaver::new(CheckpointConfig {
        path: path.clone(),
        every_n_batches: 1,
    })));
    learner.add_callback(Box::new(PoisonAfterStep { name, at: 3, steps: 0 }));
    let error = learner.fit(1, 1e-3).unwrap_err();
    match &error {
        TrainError::NonFiniteState { tensor, count, .. } => {
            assert_eq!((tensor.as_str(), *count), (format!("model.{name}").as_str(), 1));
        }
        other => panic!("expected NonFiniteState, got {other}"),
    }
    assert!(error.to_string().contains("keeps the last finite state"), "{error}");
    // The file on disk is the checkpoint after the 2nd batch, every tensor finite; no temporary
    // file is left.
    let checkpoint = Checkpoint::load(&path).unwrap();
    assert_eq!(checkpoint.history()[0].batches.len(), 2);
    for (tensor_name, tensor) in checkpoint.model_tensors() {
        let values: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{tensor_name}");
    }
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
}

/// SHA-256 over `(name, dtype, shape, bytes)` in name order, each length-prefixed: the layout
/// `checkpoint.rs` documents, recomputed here as an outside tool would.
fn recompute_checksum(tensors: &[(String, Tensor)]) -> String {
    use safetensors::View;
    use sha2::Digest;
    let mut hasher = sha2::Sha256::new();
    for (name, tensor) in tensors {
        let dtype = format!("{:?}", View::dtype(tensor));
        let bytes = View::data(tensor);
        hasher.update((name.len() as u64).to_le_bytes());
        hasher.update(name.as_bytes());
        hasher.update((dtype.len() as u64).to_le_bytes());
        hasher.update(dtype.as_bytes());
        hasher.update((tensor.dims().len() as u64).to_le_bytes());
        for dim in tensor.dims() {
            hasher.update((*dim as u64).to_le_bytes());
        }
        hasher.update((bytes.len() as u64).to_le_bytes());
        hasher.update(&bytes);
    }
    hasher.finalize().iter().map(|byte| format!("{byte:02x}")).collect()
}

/// Rewrites a checkpoint with one model value changed to `value`, keeping the metadata (and
/// with it the old checksum) or recomputing the checksum.
fn edit_checkpoint(path: &Path, value: f32, recompute: bool) -> String {
    let bytes = std::fs::read(path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let mut tensors: Vec<(String, Tensor)> =
        candle::safetensors::load_buffer(&bytes, &Device::Cpu).unwrap().into_iter().collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    let (name, tensor) = tensors.iter_mut().find(|(name, _)| name.starts_with("model.")).unwrap();
    let mut values: Vec<f32> = tensor.flatten_all().unwrap().to_vec1().unwrap();
    values[0] = value;
    *tensor = Tensor::from_vec(values, tensor.shape(), &Device::Cpu).unwrap();
    let name = name.clone();
    if recompute {
        metadata.insert("wick.sha256".into(), recompute_checksum(&tensors));
    }
    std::fs::write(path, safetensors::serialize(tensors, Some(metadata)).unwrap()).unwrap();
    name
}

/// A checkpoint of a wick that did not save time splits (no `recorder.epoch_split(s)`) still
/// resumes; its epochs, and the one resumed, have no split rather than a partial one.
#[test]
fn a_checkpoint_without_time_splits_resumes_with_the_splits_unknown() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    // Interrupted after training batch 6 (epoch 1, batch 2), as by Ctrl-C.
    let mut learner = tiny_saving(4, &path, 0);
    let flag = Arc::new(AtomicBool::new(false));
    learner.set_interrupt_flag(Arc::clone(&flag));
    learner.add_callback(Box::new(Probe::replying(&Default::default(), move |event, state| {
        if event == Event::AfterBatch && state.train_iter == 6 {
            flag.store(true, Ordering::Relaxed);
        }
        Ok(Flow::Continue)
    })));
    assert!(matches!(learner.fit(3, 1e-3).unwrap(), FitOutcome::Interrupted { .. }));
    // Rewrite its checkpoint as the older format.
    let bytes = std::fs::read(&path).unwrap();
    let (_, header) = safetensors::SafeTensors::read_metadata(&bytes).unwrap();
    let mut metadata = header.metadata().clone().unwrap();
    let mut tensors: Vec<(String, Tensor)> = candle::safetensors::load_buffer(&bytes, &Device::Cpu)
        .unwrap()
        .into_iter()
        .filter(|(name, _)| !name.starts_with("recorder.epoch_split"))
        .collect();
    tensors.sort_by(|a, b| a.0.cmp(&b.0));
    metadata.insert("wick.sha256".into(), recompute_checksum(&tensors));
    std::fs::write(&path, safetensors::serialize(tensors, Some(metadata)).unwrap()).unwrap();

    let checkpoint = Checkpoint::load(&path).unwrap();
    assert!(checkpoint.history()[0].epochs.iter().all(|epoch| epoch.split.is_none()));
    let mut resumed = tiny_saving(4, &dir.path().join("resumed.safetensors"), 0);
    resumed.resume(&checkpoint).unwrap();
    resumed.fit(3, 1e-3).unwrap();
    let epochs = &resumed.recorder().fits()[0].epochs;
    let known: Vec<bool> = epochs.iter().map(|epoch| epoch.split.is_some()).collect();
    // Epoch 0 from the file, epoch 1 resumed mid-way: unknown; epoch 2 ran whole here.
    assert_eq!(known, [false, false, true]);
}

#[test]
fn a_checkpoint_is_checked_for_its_checksum_identity_and_finiteness() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("checkpoint.safetensors");
    let mut learner = crate::tiny::tiny_learner(bright_dark_batches(2, 4, 1), vec![], 0);
    let identity = std::collections::BTreeMap::from([
        ("arch".to_string(), "tiny".to_string()),
        ("n_out".to_string(), "2".to_string()),
    ]);
    learner.add_callback(Box::new(
        CheckpointSaver::new(CheckpointConfig { path: path.clone(), every_n_batches: 1 })
            .with_extras(wick_train::CheckpointExtras { identity: identity.clone() }),
    ));
    learner.fit(1, 1e-3).unwrap();
    let checkpoint = Checkpoint::load(&path).unwrap();
    assert_eq!(checkpoint.identity(), &identity);
    checkpoint.check_identity(&identity).unwrap();
    let other = std::collections::BTreeMap::from([
        ("arch".to_string(), "tiny".to_string()),
        ("n_out".to_string(), "3".to_string()),
    ]);
    assert_eq!(
        checkpoint.check_identity(&other).unwrap_err().to_string(),
        "cannot resume: checkpoint has model n_out 2, this run has n_out 3"
    );
    let saved = std::fs::read(&path).unwrap();
    // The checksum in the file matches the documented layout.
    let tensors = {
        let mut t: Vec<(String, Tensor)> =
            candle::safetensors::load_buffer(&saved, &Device::Cpu).unwrap().into_iter().collect();
        t.sort_by(|a, b| a.0.cmp(&b.0));
        t
    };
    let (_, header) = safetensors::SafeTensors::read_metadata(&saved).unwrap();
    assert_eq!(header.metadata().as_ref().unwrap()["wick.sha256"], recompute_checksum(&tensors));

    // A finite edit with the old checksum: refused as corrupted.
    edit_checkpoint(&path, 0.5, false);
    let error = Checkpoint::load(&path).unwrap_err().to_string();
    assert!(error.contains("checksum mismatch"), "{error}");
    // A NaN, with the old or a recomputed checksum: refused, naming the tensor.
    for recompute in [false, true] {
        std::fs::write(&path, &saved).unwrap();
        let name = edit_checkpoint(&path, f32::NAN, recompute);
        let error = Checkpoint::load(&path).unwrap_err().to_string();
        assert!(error.contains(&format!("tensor {name} has 1 non-finite values")), "{error}");
    }
}
