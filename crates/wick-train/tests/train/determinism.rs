//! Reproducibility at any thread count: the same seed trains the same xresnet, bit for bit,
//! whether the kernels run on 1, 2 or 3 threads. Every parallel reduction in the step (the
//! convolution's weight gradient over the batch above all) splits its work by the data's
//! shape and combines partial sums in a fixed order, so thread timing and the number of
//! threads cannot change a single bit (docs/decisions/0002-deterministic-reductions.md).

use candle::{DType, Device, Tensor};
use candle_nn::VarMap;
use wick_data::{DataLoader, ItemPipeline, Items, LoaderConfig};
use wick_models::{Depth, XResNetConfig, seeded_var_builder, xresnet};
use wick_train::{FitOutcome, Learner, OneCycle};

use crate::resume::image_items;
use crate::tiny::{adam, config, var_values};

/// Everything a run produces that must not depend on the thread count.
#[derive(Debug, PartialEq)]
struct RunBits {
    /// Per training batch: (lr, mom, loss, smoothed loss) as the Recorder keeps them.
    batches: Vec<String>,
    /// Per epoch: (train loss, validation loss and metrics).
    epochs: Vec<String>,
    /// Every variable of the model (weights and BatchNorm statistics), sorted by name.
    weights: Vec<(String, Vec<u32>)>,
    /// Every optimizer state tensor, sorted by key.
    optimizer: Vec<(String, Vec<u32>)>,
}

fn bits(t: &Tensor) -> Vec<u32> {
    let values: Vec<f64> =
        t.to_dtype(DType::F64).unwrap().flatten_all().unwrap().to_vec1().unwrap();
    values.iter().map(|v| (*v as f32).to_bits()).collect()
}

/// xresnet18 (widen 0.25, so the late stages have enough channels to group items) at 32 px,
/// batches of 8 with the shuffling, augmenting loader, 2 epochs of one-cycle, all inside a
/// rayon pool of `threads` threads (the loader's own pool has as many).
fn train_with(threads: usize, train: &Items, valid: &Items) -> RunBits {
    let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().unwrap();
    pool.install(|| {
        let pipeline = ItemPipeline { item_size: 40, ..ItemPipeline::chapter7(32) };
        let loader = |items: &Items, config: LoaderConfig| {
            let config = LoaderConfig { n_threads: threads, ..config };
            DataLoader::new(items.clone(), pipeline, config, Device::Cpu).unwrap()
        };
        let varmap = VarMap::new();
        let model_config = XResNetConfig { widen: 0.25, ..XResNetConfig::depth(Depth::D18, 2) };
        let vb = seeded_var_builder(&varmap, 5, DType::F32, &Device::Cpu);
        let model = xresnet(&model_config, 0, vb).unwrap();
        let optimizer = adam(&varmap);
        let mut learner = Learner::new(
            model,
            varmap,
            optimizer,
            Box::new(loader(train, LoaderConfig::train(8, 3))),
            Box::new(loader(valid, LoaderConfig::valid(8, 3))),
            config(3),
        );
        let outcome = learner.fit_one_cycle(2, OneCycle::fastai_defaults(1e-2)).unwrap();
        assert_eq!(outcome, FitOutcome::Completed);
        let fit = &learner.recorder().fits()[0];
        let mut optimizer: Vec<(String, Vec<u32>)> = learner
            .optimizer()
            .state_dict()
            .unwrap()
            .iter()
            .map(|(key, t)| (key.clone(), bits(t)))
            .collect();
        optimizer.sort();
        RunBits {
            batches: fit.batches.iter().map(|b| format!("{b:?}")).collect(),
            epochs: fit
                .epochs
                .iter()
                .map(|r| format!("{:?} {:?} {:?}", r.epoch, r.train_loss, r.valid))
                .collect(),
            weights: var_values(learner.varmap())
                .into_iter()
                .map(|(name, v)| (name, v.iter().map(|x| x.to_bits()).collect()))
                .collect(),
            optimizer,
        }
    })
}

#[test]
fn same_seed_gives_the_same_bits_on_1_2_and_3_threads() {
    let dir = tempfile::tempdir().unwrap();
    let (train, valid) = image_items(dir.path());
    let one = train_with(1, &train, &valid);
    // The run did train: 3 batches of 8 per epoch, every loss finite, state for every weight.
    assert_eq!(one.batches.len(), 6);
    assert!(!one.optimizer.is_empty());
    assert!(one.weights.iter().all(|(_, v)| v.iter().all(|b| f32::from_bits(*b).is_finite())));
    for threads in [2, 3] {
        let other = train_with(threads, &train, &valid);
        assert!(other == one, "{threads} threads differ from 1 thread");
    }
    // The same thread count twice (work stealing must not matter either).
    assert!(train_with(2, &train, &valid) == one, "a second 2-thread run differs");
}
