//! [`AllReduce`] over NCCL (feature `nccl`): one process per GPU, as PyTorch DDP and candle's
//! `llama_multiprocess` example run it. Rank 0 makes an [`NcclId`] and hands its 128 bytes to
//! the other ranks (the `wick` CLI passes them through a file); each rank then joins with
//! [`NcclGroup::new`] on its CUDA device. Collectives run on the candle device's stream, so
//! they are ordered with the kernels around them without extra synchronisation.

use candle::backend::BackendStorage;
use candle::cuda_backend::CudaDType;
use candle::cuda_backend::cudarc::driver::CudaSlice;
use candle::cuda_backend::cudarc::nccl::safe::{Comm, Id, ReduceOp};
use candle::{CpuStorage, CudaStorage, CustomOp1, DType, Device, Layout, Shape, Tensor};

use super::AllReduce;

/// The rendezvous token of an NCCL group: made by rank 0, copied to every other rank.
#[derive(Clone, Copy)]
pub struct NcclId(Id);

impl NcclId {
    /// A fresh id (rank 0 only).
    pub fn new() -> candle::Result<Self> {
        Id::new().map(NcclId).map_err(|e| candle::Error::Msg(format!("ncclGetUniqueId: {e:?}")))
    }

    /// The id's 128 bytes, to send to the other ranks.
    pub fn to_bytes(&self) -> [u8; 128] {
        self.0.internal().map(|c| c as u8)
    }

    /// The id rank 0 made, from its bytes.
    pub fn from_bytes(bytes: &[u8; 128]) -> Self {
        NcclId(Id::uninit(bytes.map(|b| b as std::ffi::c_char)))
    }
}

/// One rank of an NCCL group on one CUDA device.
pub struct NcclGroup {
    comm: Comm,
    rank: usize,
    world_size: usize,
}

impl NcclGroup {
    /// Joins the group `id` as `rank` of `world_size` on `device` (a CUDA device). Blocks until
    /// every rank has joined.
    pub fn new(
        device: &Device,
        rank: usize,
        world_size: usize,
        id: NcclId,
    ) -> candle::Result<Self> {
        let cuda = device.as_cuda_device()?;
        let comm = Comm::from_rank(cuda.cuda_stream(), rank, world_size, id.0)
            .map_err(|e| candle::Error::Msg(format!("ncclCommInitRank (rank {rank}): {e:?}")))?;
        Ok(Self { comm, rank, world_size })
    }
}

impl AllReduce for NcclGroup {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world_size
    }

    fn all_reduce_sum(&self, flat: &Tensor) -> candle::Result<Tensor> {
        flat.to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&Collective { comm: &self.comm, kind: Kind::AllReduceSum })?
            .to_dtype(flat.dtype())
    }

    fn broadcast(&self, flat: &Tensor, root: usize) -> candle::Result<Tensor> {
        flat.to_dtype(DType::F32)?
            .contiguous()?
            .apply_op1_no_bwd(&Collective { comm: &self.comm, kind: Kind::Broadcast { root } })?
            .to_dtype(flat.dtype())
    }
}

#[derive(Debug, Clone, Copy)]
enum Kind {
    AllReduceSum,
    Broadcast { root: usize },
}

/// A collective as a candle op on a contiguous 1-D f32 CUDA tensor, into a new buffer.
struct Collective<'a> {
    comm: &'a Comm,
    kind: Kind,
}

impl CustomOp1 for Collective<'_> {
    fn name(&self) -> &'static str {
        "wick-nccl"
    }

    fn cpu_fwd(&self, _: &CpuStorage, _: &Layout) -> candle::Result<(CpuStorage, Shape)> {
        candle::bail!("NCCL collectives need CUDA tensors; for CPU ranks use ThreadGroup")
    }

    fn cuda_fwd(
        &self,
        storage: &CudaStorage,
        layout: &Layout,
    ) -> candle::Result<(CudaStorage, Shape)> {
        let Some((start, end)) = layout.contiguous_offsets() else {
            candle::bail!("NCCL collectives take contiguous tensors");
        };
        let device = storage.device();
        let input = f32::as_cuda_slice(storage)?.slice(start..end);
        let mut out: CudaSlice<f32> = device.alloc_zeros::<f32>(end - start)?;
        let status = match self.kind {
            Kind::AllReduceSum => self.comm.all_reduce(&input, &mut out, &ReduceOp::Sum),
            Kind::Broadcast { root } => {
                let root = i32::try_from(root).map_err(candle::Error::wrap)?;
                self.comm.broadcast(Some(&input), &mut out, root)
            }
        };
        status.map_err(|e| candle::Error::Msg(format!("NCCL {:?}: {e:?}", self.kind)))?;
        Ok((CudaStorage::wrap_cuda_slice(out, device.clone()), layout.shape().clone()))
    }
}
