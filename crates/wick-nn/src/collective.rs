//! The collectives of data-parallel training, on flat 1-D tensors: the [`AllReduce`] trait,
//! [`ThreadGroup`] for ranks that are threads of one process (the CPU tests, any CPU
//! experiment) and, with the `nccl` feature, [`nccl::NcclGroup`] over CUDA devices, one process
//! per GPU. wick-train's `DataParallel` runs its weight broadcast and gradient averaging over
//! any of them. They are device code, so they live here (docs/ARCHITECTURE.md, "Only wick-nn
//! holds device code").

use std::sync::{Arc, Barrier, Mutex};

use candle::{DType, Tensor};

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
