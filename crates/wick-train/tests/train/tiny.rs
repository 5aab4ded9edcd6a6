//! Tiny models, data and a probe callback for the Learner's tests: a conv → BatchNorm → SiLU →
//! mean-pool → linear network (with BatchNorm running statistics in its VarMap, like xresnet),
//! the "bright vs dark" image task, and [`Probe`], which records the events it sees and answers
//! each with a chosen flow.

use std::cell::RefCell;
use std::rc::Rc;

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::{BatchNorm, Conv2d, Conv2dConfig, Linear, VarMap};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use wick_models::seeded_var_builder;
use wick_train::{
    Adam, AdamConfig, Callback, CallbackResult, Event, EventContext, FitState, Flow,
    InMemoryBatches, Learner, LearnerConfig, Loss, Metric, optim_params, trainable_params,
};

/// conv3x3(3→4) → BatchNorm → SiLU → mean over H, W → linear(4→K). Images `(B,3,H,W)`.
/// SiLU rather than ReLU so that a NaN image reaches the loss (candle's ReLU maps NaN to 0).
pub(crate) struct TinyCnn {
    conv: Conv2d,
    bn: BatchNorm,
    head: Linear,
}

/// A [`TinyCnn`] whose variables are drawn into `varmap` from `seed`.
pub(crate) fn tiny_cnn(varmap: &VarMap, seed: u64, n_classes: usize) -> TinyCnn {
    let vb = seeded_var_builder(varmap, seed, DType::F32, &Device::Cpu);
    let conv_config = Conv2dConfig { padding: 1, ..Default::default() };
    TinyCnn {
        conv: candle_nn::conv2d(3, 4, 3, conv_config, vb.pp("conv")).unwrap(),
        bn: candle_nn::batch_norm(4, candle_nn::BatchNormConfig::default(), vb.pp("bn")).unwrap(),
        head: candle_nn::linear(4, n_classes, vb.pp("head")).unwrap(),
    }
}

impl wick_train::ModelState for TinyCnn {}

impl ModuleT for TinyCnn {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        let features = self.bn.forward_t(&xs.apply(&self.conv)?, train)?.silu()?;
        features.mean((2, 3))?.apply(&self.head)
    }
}

/// `n_batches` batches of `batch_size` 8x8 images: label 1 images have pixels in [0.55, 1],
/// label 0 images in [0, 0.45]; labels alternate within a batch.
pub(crate) fn bright_dark_batches(
    n_batches: usize,
    batch_size: usize,
    seed: u64,
) -> Vec<(Tensor, Tensor)> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n_batches)
        .map(|_| {
            let labels: Vec<u32> = (0..batch_size).map(|i| (i % 2) as u32).collect();
            let pixels: Vec<f32> = labels
                .iter()
                .flat_map(|&label| {
                    let base = if label == 1 { 0.55 } else { 0.0 };
                    (0..3 * 8 * 8).map(|_| base + 0.45 * rng.random::<f32>()).collect::<Vec<_>>()
                })
                .collect();
            let xs = Tensor::from_vec(pixels, (batch_size, 3, 8, 8), &Device::Cpu).unwrap();
            let ys = Tensor::from_vec(labels, batch_size, &Device::Cpu).unwrap();
            (xs, ys)
        })
        .collect()
}

/// fastai's `Adam` with its defaults over every trainable variable of `varmap`.
pub(crate) fn adam(varmap: &VarMap) -> Box<Adam> {
    let params = optim_params(trainable_params(varmap, wick_models::is_buffer));
    Box::new(Adam::new(params, AdamConfig::fastai_defaults(1e-3)).unwrap())
}

/// The learner config the tests use: cross-entropy, accuracy, the given seed.
pub(crate) fn config(seed: u64) -> LearnerConfig {
    LearnerConfig { loss: Loss::CrossEntropy, metrics: vec![Metric::Accuracy], seed }
}

/// A learner over a [`TinyCnn`] (init seed `init_seed`, 2 classes) and in-memory batches.
pub(crate) fn tiny_learner(
    train: Vec<(Tensor, Tensor)>,
    valid: Vec<(Tensor, Tensor)>,
    init_seed: u64,
) -> Learner<TinyCnn> {
    let varmap = VarMap::new();
    let model = tiny_cnn(&varmap, init_seed, 2);
    let optimizer = adam(&varmap);
    Learner::new(
        model,
        varmap,
        optimizer,
        Box::new(InMemoryBatches::new(train)),
        Box::new(InMemoryBatches::new(valid)),
        config(0),
    )
}

/// Every variable of a VarMap, sorted by name, as flat f32 values.
pub(crate) fn var_values(varmap: &VarMap) -> Vec<(String, Vec<f32>)> {
    let data = varmap.data().lock().unwrap();
    let mut values: Vec<(String, Vec<f32>)> = data
        .iter()
        .map(|(name, var)| {
            (name.clone(), var.as_tensor().flatten_all().unwrap().to_vec1().unwrap())
        })
        .collect();
    values.sort_by(|a, b| a.0.cmp(&b.0));
    values
}

/// The events seen, as fastai names them.
pub(crate) type EventLog = Rc<RefCell<Vec<String>>>;

/// How a [`Probe`] answers an event.
pub(crate) type Reply = Box<dyn FnMut(Event, &FitState) -> CallbackResult>;

/// Records every event (as `"<name>"`) and answers with `reply`.
pub(crate) struct Probe {
    pub(crate) log: EventLog,
    pub(crate) order: i32,
    pub(crate) reply: Reply,
}

impl Probe {
    /// A probe that always continues.
    pub(crate) fn observer(log: &EventLog) -> Self {
        Probe { log: Rc::clone(log), order: 0, reply: Box::new(|_, _| Ok(Flow::Continue)) }
    }

    /// A probe that answers with `reply`.
    pub(crate) fn replying(
        log: &EventLog,
        reply: impl FnMut(Event, &FitState) -> CallbackResult + 'static,
    ) -> Self {
        Probe { log: Rc::clone(log), order: 0, reply: Box::new(reply) }
    }
}

impl Callback for Probe {
    fn name(&self) -> &'static str {
        "probe"
    }

    fn order(&self) -> i32 {
        self.order
    }

    fn on_event(&mut self, event: Event, context: &EventContext<'_>) -> CallbackResult {
        self.log.borrow_mut().push(event.name().to_string());
        (self.reply)(event, context.state)
    }
}
