//! `wick train --gpus N`: data-parallel training over NCCL, one process per GPU (feature
//! `nccl`; wick-train's `distributed` module holds the algorithm, wick-nn's `collective` the NCCL group). The command runs itself
//! again as N rank processes (`--rank i --world-size N --device cuda:i`, the other flags
//! unchanged) and waits for them. Rank 0 makes the NCCL id and writes its 128 bytes to
//! `<out>/.nccl-id`; the other ranks wait for the file, as candle's `llama_multiprocess`
//! example does; then every rank joins the group on its GPU. Rank 0 alone writes the run
//! directory, checkpoints and progress; every rank reads them when resuming.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};

use crate::train::{TrainArgs, TrainOutcome};

/// This process's place in a data-parallel run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct RankSpec {
    pub(crate) rank: usize,
    pub(crate) world_size: usize,
}

/// Where rank 0 leaves the NCCL id.
pub(crate) fn id_path(out: &Path) -> PathBuf {
    out.join(".nccl-id")
}

/// Runs `gpus` rank processes of this `wick train` and waits for all of them.
pub(crate) fn launch(gpus: usize, args: &TrainArgs) -> anyhow::Result<TrainOutcome> {
    if !cfg!(feature = "nccl") {
        bail!("--gpus needs NCCL: this wick was built without it (rebuild with --features nccl)");
    }
    if gpus == 0 {
        bail!("--gpus must be at least 1");
    }
    std::fs::create_dir_all(&args.out)
        .with_context(|| format!("creating {}", args.out.display()))?;
    let id_file = id_path(&args.out);
    if id_file.exists() {
        std::fs::remove_file(&id_file)
            .with_context(|| format!("removing {}", id_file.display()))?;
    }
    let exe = std::env::current_exe().context("finding the wick binary")?;
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    let threads = args.threads.unwrap_or_else(|| (cores / gpus).max(1));
    let mut children: Vec<Child> = Vec::new();
    for rank in 0..gpus {
        let mut command = Command::new(&exe);
        command
            .arg("train")
            .arg("--recipe")
            .arg(&args.recipe_path)
            .arg("--data")
            .arg(&args.data)
            .arg("--out")
            .arg(&args.out)
            .args(["--profile", &args.profile])
            .args(["--device", &format!("cuda:{rank}")])
            .args(["--threads", &threads.to_string()])
            .args(["--rank", &rank.to_string(), "--world-size", &gpus.to_string()]);
        if let Some(seed) = args.seed {
            command.args(["--seed", &seed.to_string()]);
        }
        if rank != 0 {
            command.stdout(Stdio::null());
        }
        match command.spawn() {
            Ok(child) => children.push(child),
            Err(error) => {
                stop(&mut children);
                return Err(error).context(format!("starting rank {rank}"));
            }
        }
    }
    wait_all(children)
}

/// Waits for every rank; the first failure stops the others.
fn wait_all(mut children: Vec<Child>) -> anyhow::Result<TrainOutcome> {
    let mut codes: Vec<Option<i32>> = vec![None; children.len()];
    loop {
        for (rank, child) in children.iter_mut().enumerate() {
            if codes[rank].is_none()
                && let Some(status) = child.try_wait()?
            {
                codes[rank] = Some(status.code().unwrap_or(-1));
            }
        }
        if let Some((rank, code)) = codes
            .iter()
            .enumerate()
            .find_map(|(r, c)| c.filter(|c| *c != 0 && *c != 130).map(|c| (r, c)))
        {
            stop(&mut children);
            bail!("rank {rank} failed (exit code {code}); the other ranks were stopped");
        }
        if codes.iter().all(Option::is_some) {
            return Ok(if codes.contains(&Some(130)) {
                TrainOutcome::Interrupted
            } else {
                TrainOutcome::Finished
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Kills the ranks this launcher started that are still running.
fn stop(children: &mut [Child]) {
    for child in children.iter_mut() {
        if matches!(child.try_wait(), Ok(None)) {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Joins the NCCL group of this rank on `device` (rank 0 writes the id, the others read it).
#[cfg(feature = "nccl")]
pub(crate) fn join(
    spec: RankSpec,
    device: &candle::Device,
    out: &Path,
) -> anyhow::Result<wick_train::DataParallel> {
    use wick_nn::collective::nccl::{NcclGroup, NcclId};
    let path = id_path(out);
    let id = if spec.rank == 0 {
        let id = NcclId::new()?;
        let partial = path.with_extension("partial");
        std::fs::write(&partial, id.to_bytes())?;
        std::fs::rename(&partial, &path)?;
        id
    } else {
        let deadline = std::time::Instant::now() + Duration::from_secs(300);
        loop {
            if let Ok(bytes) = std::fs::read(&path)
                && let Ok(bytes) = <[u8; 128]>::try_from(bytes.as_slice())
            {
                break NcclId::from_bytes(&bytes);
            }
            if std::time::Instant::now() > deadline {
                bail!(
                    "rank {}: no NCCL id from rank 0 in {} after 300 s",
                    spec.rank,
                    path.display()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let group = NcclGroup::new(device, spec.rank, spec.world_size, id)?;
    // An NCCL communicator is neither Send nor Sync: this rank's training thread is the only
    // one that ever touches it; DataParallel shares groups through an Arc for ThreadGroup.
    #[allow(clippy::arc_with_non_send_sync)]
    Ok(wick_train::DataParallel::new(std::sync::Arc::new(group)))
}

/// Without NCCL there is no group to join.
#[cfg(not(feature = "nccl"))]
pub(crate) fn join(
    _spec: RankSpec,
    _device: &candle::Device,
    _out: &Path,
) -> anyhow::Result<wick_train::DataParallel> {
    bail!("--rank needs NCCL: this wick was built without it (rebuild with --features nccl)")
}
