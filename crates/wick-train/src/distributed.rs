//! Data-parallel training (PyTorch DDP's scheme): one rank per device, each with its own copy
//! of the model, training on its slice of every global batch; rank 0's initial weights are
//! broadcast to the others, and after every backward pass each gradient is replaced by its
//! mean over the ranks, so every rank takes the same optimizer step and the copies stay equal.
//!
//! - [`AllReduce`], [`ThreadGroup`] and, with the `nccl` feature, `NcclGroup`: the collectives,
//!   which are device code and live in wick-nn (`wick_nn::collective`), re-exported here.
//! - [`DataParallel`]: the weight broadcast, and the gradient averaging as the Learner's
//!   [`GradientHook`] ([`crate::Learner::add_gradient_hook`]).
//!
//! Each rank's data is its share of every global batch, built by wick-data's loader
//! (`LoaderConfig::shard`), so a rank decodes only the images it trains on.
//!
//! BatchNorm statistics are per rank (as DDP without SyncBatchNorm), so a model with
//! BatchNorm trained on N ranks matches a one-process run only when N = 1; a model without
//! batch-dependent layers matches it to float rounding (the `distributed` tests).

use std::sync::Arc;

use candle::backprop::GradStore;
use candle::{DType, Tensor, Var};

use crate::callback::GradientHook;
use crate::optim::OptimParam;

pub use wick_nn::collective::{AllReduce, ThreadGroup};

/// Data parallelism for a Learner: the weight broadcast at the start and the gradient
/// averaging after every backward pass, over one [`AllReduce`] group.
#[derive(Clone)]
pub struct DataParallel {
    group: Arc<dyn AllReduce>,
}

impl std::fmt::Debug for DataParallel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DataParallel(rank {} of {})", self.rank(), self.world_size())
    }
}

impl DataParallel {
    /// Data parallelism over `group` (one [`DataParallel`] per rank, each with its rank's
    /// handle of the same group).
    pub fn new(group: Arc<dyn AllReduce>) -> Self {
        Self { group }
    }

    /// This process's rank in the group, `0..world_size()`; rank 0 is the broadcast source.
    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    /// The number of ranks in the group (1 for a single process).
    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Sets every variable (parameters and buffers) to rank 0's value. `vars` must list the
    /// same variables in the same order on every rank (sort them by name).
    pub fn broadcast_vars(&self, vars: &[(String, Var)]) -> candle::Result<()> {
        let tensors: Vec<Tensor> = vars.iter().map(|(_, var)| var.as_tensor().clone()).collect();
        let flat = flatten(&tensors)?;
        let Some(flat) = flat else { return Ok(()) };
        let root = self.group.broadcast(&flat, 0)?;
        for ((_, var), value) in vars.iter().zip(unflatten(&root, &tensors)?) {
            var.set(&value)?;
        }
        Ok(())
    }

    /// Replaces the gradient of every parameter in `grads` by its mean over the ranks (one
    /// all-reduce of all gradients concatenated). A parameter without a gradient on this rank
    /// contributes zeros and gets none.
    pub fn average_gradients(
        &self,
        params: &[OptimParam],
        grads: &mut GradStore,
    ) -> candle::Result<()> {
        let mut local = Vec::with_capacity(params.len());
        for param in params {
            local.push(match grads.get(param.var.as_tensor()) {
                Some(grad) => grad.to_dtype(DType::F32)?,
                None => param.var.as_tensor().zeros_like()?.to_dtype(DType::F32)?,
            });
        }
        let Some(flat) = flatten(&local)? else { return Ok(()) };
        let mean = (self.group.all_reduce_sum(&flat)? / self.world_size() as f64)?;
        for (param, value) in params.iter().zip(unflatten(&mean, &local)?) {
            if grads.get(param.var.as_tensor()).is_some() {
                grads.insert(param.var.as_tensor(), value.to_dtype(param.var.dtype())?);
            }
        }
        Ok(())
    }
}

/// DDP's gradient all-reduce: after every backward pass each gradient becomes its mean over the
/// ranks, before `after_backward`. The caller gives each rank its share of the data
/// (wick-data's `LoaderConfig::shard`) and starts every rank from the same weights
/// ([`DataParallel::broadcast_vars`]).
impl GradientHook for DataParallel {
    fn name(&self) -> &'static str {
        "averaging gradients over the ranks"
    }

    fn after_backward(&self, params: &[OptimParam], grads: &mut GradStore) -> candle::Result<()> {
        self.average_gradients(params, grads)
    }
}

/// All tensors as one contiguous 1-D f32 tensor (None for none).
fn flatten(tensors: &[Tensor]) -> candle::Result<Option<Tensor>> {
    if tensors.is_empty() {
        return Ok(None);
    }
    let flats = tensors
        .iter()
        .map(|t| t.detach().to_dtype(DType::F32)?.flatten_all())
        .collect::<candle::Result<Vec<_>>>()?;
    Ok(Some(Tensor::cat(&flats, 0)?))
}

/// The inverse of [`flatten`]: pieces with the shapes and dtypes of `like`.
fn unflatten(flat: &Tensor, like: &[Tensor]) -> candle::Result<Vec<Tensor>> {
    let mut offset = 0;
    like.iter()
        .map(|t| {
            let n = t.elem_count();
            let piece = flat.narrow(0, offset, n)?.reshape(t.shape())?.to_dtype(t.dtype())?;
            offset += n;
            Ok(piece)
        })
        .collect()
}
