//! Data parallelism on CPU threads (`wick_train::distributed`): two ranks over a
//! `ThreadGroup`, each training on its half of every batch, end with identical weights, equal
//! to a one-process run on the whole batches to float rounding; the broadcast makes a rank
//! that started from other weights start from rank 0's.

use std::sync::Arc;

use candle::{DType, Device, ModuleT, Tensor};
use candle_nn::{Conv2d, Conv2dConfig, Linear, VarMap};
use wick_models::seeded_var_builder;
use wick_train::{DataParallel, InMemoryBatches, Learner, ThreadGroup, trainable_params};

use crate::common::values;
use crate::tiny::{adam, bright_dark_batches, config};
use wick_testing::{Tol, assert_close};

/// conv3x3 → SiLU → mean → linear: no BatchNorm, so a sharded batch gives the same gradient
/// as the whole batch.
struct NoBatchNorm {
    conv: Conv2d,
    head: Linear,
}

fn model(varmap: &VarMap, seed: u64) -> NoBatchNorm {
    let vb = seeded_var_builder(varmap, seed, DType::F32, &Device::Cpu);
    NoBatchNorm {
        conv: candle_nn::conv2d(
            3,
            4,
            3,
            Conv2dConfig { padding: 1, ..Default::default() },
            vb.pp("conv"),
        )
        .unwrap(),
        head: candle_nn::linear(4, 2, vb.pp("head")).unwrap(),
    }
}

impl wick_train::ModelState for NoBatchNorm {}

impl ModuleT for NoBatchNorm {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle::Result<Tensor> {
        xs.apply(&self.conv)?.silu()?.mean((2, 3))?.apply(&self.head)
    }
}

/// Trains 2 epochs of 3 batches of 8 with Adam at a constant 1e-2; returns the weights.
fn train(seed: u64, rank: Option<(DataParallel, usize)>) -> Vec<Vec<f64>> {
    let varmap = VarMap::new();
    let net = model(&varmap, seed);
    let batches = bright_dark_batches(3, 8, 5);
    let valid = InMemoryBatches::new(bright_dark_batches(1, 8, 6));
    // A rank trains on its contiguous share of every batch (what wick-data's loader shard
    // builds for real data).
    let batches = match &rank {
        Some((dp, world)) => batches
            .into_iter()
            .map(|(xs, ys)| {
                let per_rank = xs.dim(0).unwrap() / world;
                let start = dp.rank() * per_rank;
                (xs.narrow(0, start, per_rank).unwrap(), ys.narrow(0, start, per_rank).unwrap())
            })
            .collect(),
        None => batches,
    };
    let train: Box<dyn wick_train::BatchSource> = Box::new(InMemoryBatches::new(batches));
    let mut learner =
        Learner::new(net, varmap.clone(), adam(&varmap), train, Box::new(valid), config(1));
    if let Some((dp, _)) = rank {
        dp.broadcast_vars(&trainable_params(&varmap, wick_models::is_buffer)).unwrap();
        learner.add_gradient_hook(Box::new(dp));
    }
    learner.fit(2, 1e-2).unwrap();
    trainable_params(&varmap, wick_models::is_buffer)
        .iter()
        .map(|(_, var)| values(var.as_tensor()))
        .collect()
}

#[test]
fn two_ranks_on_half_batches_match_one_process_on_whole_batches() {
    let single = train(11, None);
    let handles: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                // Rank 1 starts from other weights: the broadcast must replace them.
                let seed = if wick_train::AllReduce::rank(&group) == 0 { 11 } else { 99 };
                train(seed, Some((DataParallel::new(Arc::new(group)), 2)))
            })
        })
        .collect();
    let ranks: Vec<Vec<Vec<f64>>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(ranks[0], ranks[1], "the ranks' weights differ");
    for (i, (got, want)) in ranks[0].iter().zip(&single).enumerate() {
        assert_close(
            &format!("parameter {i}"),
            got,
            want,
            Tol { abs: 1e-5, rel: 1e-4, of_scale: 0.0 },
        );
    }
    // And training moved the weights (the comparison is not of two initialisations).
    let initial: Vec<Vec<f64>> = {
        let varmap = VarMap::new();
        let _ = model(&varmap, 11);
        trainable_params(&varmap, wick_models::is_buffer)
            .iter()
            .map(|(_, var)| values(var.as_tensor()))
            .collect()
    };
    assert_ne!(initial, single);
}

#[test]
fn averaging_replaces_each_gradient_by_the_mean() {
    let handles: Vec<_> = ThreadGroup::new(2)
        .into_iter()
        .map(|group| {
            std::thread::spawn(move || {
                let rank = wick_train::AllReduce::rank(&group) as f32;
                let dp = DataParallel::new(Arc::new(group));
                let w = candle::Var::new(&[1f32, 2.0], &Device::Cpu).unwrap();
                let loss = (w.as_tensor() * (rank + 1.0) as f64).unwrap().sum_all().unwrap();
                let mut grads = loss.backward().unwrap();
                let params = wick_train::optim_params(vec![("w".to_string(), w.clone())]);
                dp.average_gradients(&params, &mut grads).unwrap();
                grads.get(w.as_tensor()).unwrap().to_vec1::<f32>().unwrap()
            })
        })
        .collect();
    for handle in handles {
        // Rank gradients 1 and 2 per element: mean 1.5.
        assert_eq!(handle.join().unwrap(), vec![1.5, 1.5]);
    }
}
