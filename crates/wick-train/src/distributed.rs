//! Data-parallel training (PyTorch DDP's scheme): one rank per device, each with its own copy
//! of the model, training on its slice of every global batch; rank 0's initial weights are
//! broadcast to the others, and after every backward pass each gradient is replaced by its
//! mean over the ranks, so every rank takes the same optimizer step and the copies stay equal.
//!
//! - [`AllReduce`]: the two collectives this needs, on flat 1-D tensors.
//! - [`ThreadGroup`]: an in-memory implementation for ranks that are threads of one process
//!   (the CPU tests, and any CPU experiment).
//! - `NcclGroup` (feature `nccl`): NCCL over CUDA devices, one process per GPU; see
//!   [`nccl`](self::nccl).
//! - [`DataParallel`]: the weight broadcast, and the gradient averaging as the Learner's
//!   [`GradientHook`] ([`crate::Learner::add_gradient_hook`]).
//!
//! Each rank's data is its share of every global batch, built by wick-data's loader
//! (`LoaderConfig::shard`), so a rank decodes only the images it trains on.
//!
//! BatchNorm statistics are per rank (as DDP without SyncBatchNorm), so a model with
//! BatchNorm trained on N ranks matches a one-process run only when N = 1; a model without
//! batch-dependent layers matches it to float rounding (the `distributed` tests).

use std::sync::{Arc, Barrier, Mutex};

use candle::backprop::GradStore;
use candle::{DType, Tensor, Var};

use crate::callback::GradientHook;
use crate::optim::OptimParam;

#[cfg(feature = "nccl")]
pub mod nccl;

/// The collectives of data-parallel training. Every rank calls each method in the same order
/// with tensors of the same length and dtype; the calls block until all ranks have made them.
pub trait AllReduce {
    /// This rank, in `0..world_size`.
    fn rank(&self) -> usize;
    /// The number of ranks.
    fn world_size(&self) -> usize;
    /// The element-wise sum over the ranks of a 1-D tensor, on every rank.
    fn all_reduce_sum(&self, flat: &Tensor) -> candle::Result<Tensor>;
    /// Rank `root`'s 1-D tensor, on every rank.
    fn broadcast(&self, flat: &Tensor, root: usize) -> candle::Result<Tensor>;
}

struct Shared {
    world_size: usize,
    barrier: Barrier,
    slots: Mutex<Vec<Option<Vec<f32>>>>,
}

/// One rank of an in-memory group whose ranks are threads of this process. The sum is taken
/// in rank order, so every rank gets bit-identical results. A rank that stops calling (an
/// error, a panic) leaves the others waiting: tests join every thread.
pub struct ThreadGroup {
    shared: Arc<Shared>,
    rank: usize,
}

impl ThreadGroup {
    /// The `world_size` ranks of a new group; hand one to each thread.
    pub fn new(world_size: usize) -> Vec<ThreadGroup> {
        let shared = Arc::new(Shared {
            world_size,
            barrier: Barrier::new(world_size),
            slots: Mutex::new(vec![None; world_size]),
        });
        (0..world_size).map(|rank| ThreadGroup { shared: Arc::clone(&shared), rank }).collect()
    }

    fn slots(&self) -> candle::Result<std::sync::MutexGuard<'_, Vec<Option<Vec<f32>>>>> {
        self.shared
            .slots
            .lock()
            .map_err(|_| candle::Error::Msg("thread group: a rank panicked".to_string()))
    }

    /// Publishes this rank's values, waits for every rank, reads with `read`, and waits again
    /// so that nobody publishes the next values before everyone has read these.
    fn exchange(
        &self,
        values: Option<Vec<f32>>,
        read: impl FnOnce(&[Option<Vec<f32>>]) -> candle::Result<Vec<f32>>,
    ) -> candle::Result<Vec<f32>> {
        if let Some(values) = values {
            self.slots()?[self.rank] = Some(values);
        }
        self.shared.barrier.wait();
        let result = read(&self.slots()?);
        self.shared.barrier.wait();
        result
    }
}

fn flat_values(flat: &Tensor) -> candle::Result<Vec<f32>> {
    flat.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()
}

fn like(values: Vec<f32>, flat: &Tensor) -> candle::Result<Tensor> {
    let len = values.len();
    Tensor::from_vec(values, len, &candle::Device::Cpu)?
        .to_dtype(flat.dtype())?
        .to_device(flat.device())
}

impl AllReduce for ThreadGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.shared.world_size
    }

    fn all_reduce_sum(&self, flat: &Tensor) -> candle::Result<Tensor> {
        let values = flat_values(flat)?;
        let len = values.len();
        let sum = self.exchange(Some(values), |slots| {
            let mut sum = vec![0f32; len];
            for (rank, slot) in slots.iter().enumerate() {
                let values = slot.as_ref().filter(|v| v.len() == len).ok_or_else(|| {
                    candle::Error::Msg(format!(
                        "thread group: rank {rank} sent no tensor of length {len}"
                    ))
                })?;
                sum.iter_mut().zip(values).for_each(|(s, v)| *s += v);
            }
            Ok(sum)
        })?;
        like(sum, flat)
    }

    fn broadcast(&self, flat: &Tensor, root: usize) -> candle::Result<Tensor> {
        if root >= self.shared.world_size {
            candle::bail!("broadcast: root {root} is not a rank of {}", self.shared.world_size);
        }
        let values = if self.rank == root { Some(flat_values(flat)?) } else { None };
        let len = flat.elem_count();
        let result = self.exchange(values, |slots| {
            slots[root].clone().filter(|v| v.len() == len).ok_or_else(|| {
                candle::Error::Msg(format!("broadcast: root {root} sent no tensor of length {len}"))
            })
        })?;
        like(result, flat)
    }
}

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
    pub fn new(group: Arc<dyn AllReduce>) -> Self {
        Self { group }
    }

    pub fn rank(&self) -> usize {
        self.group.rank()
    }

    pub fn world_size(&self) -> usize {
        self.group.world_size()
    }

    /// Rank 0, the one that writes checkpoints, logs and weights.
    pub fn is_root(&self) -> bool {
        self.rank() == 0
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

#[cfg(test)]
mod tests {
    use super::*;
    use candle::Device;

    #[test]
    fn thread_group_sums_and_broadcasts_on_every_rank() {
        let handles: Vec<_> = ThreadGroup::new(3)
            .into_iter()
            .map(|group| {
                std::thread::spawn(move || -> candle::Result<(Vec<f32>, Vec<f32>)> {
                    let r = group.rank() as f32;
                    let t = Tensor::new(&[r, 10.0 * r], &Device::Cpu)?;
                    let sum = group.all_reduce_sum(&t)?.to_vec1::<f32>()?;
                    let root = group.broadcast(&t, 2)?.to_vec1::<f32>()?;
                    Ok((sum, root))
                })
            })
            .collect();
        for handle in handles {
            let (sum, root) = handle.join().unwrap().unwrap();
            assert_eq!(sum, vec![3.0, 30.0]);
            assert_eq!(root, vec![2.0, 20.0]);
        }
    }
}
