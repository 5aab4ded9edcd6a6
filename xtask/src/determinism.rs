//! `cargo xtask determinism`: the end-to-end reproducibility check. It trains one recipe
//! (by default `recipes/determinism.toml`, one epoch of xresnet18 at 64 px on 15% of
//! Imagenette) several times with the same seed — twice at the machine's default thread count
//! and once on a single thread — with the release `wick`, and requires every run's
//! `model.safetensors` to be byte-identical and every epoch row to be equal. One more run is
//! killed with SIGKILL once its first mid-epoch checkpoint exists and is then resumed by
//! rerunning the same command: it must end with the same bytes too. The promise it checks is
//! stated in README.md and docs/ARCHITECTURE.md ("Reproducibility").

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};

/// What `cargo xtask determinism` was asked to do.
#[derive(Debug, Clone)]
pub(crate) struct DeterminismOptions {
    pub(crate) recipe: PathBuf,
    pub(crate) data: PathBuf,
    pub(crate) out: PathBuf,
    /// `RAYON_NUM_THREADS` of each run; 0 leaves the machine's default.
    pub(crate) threads: Vec<usize>,
    /// Also kill a run after its first checkpoint and resume it.
    pub(crate) kill_and_resume: bool,
}

pub(crate) fn determinism(root: &Path, options: &DeterminismOptions) -> anyhow::Result<()> {
    if options.threads.len() < 2 {
        bail!("--threads needs at least two runs to compare, got {:?}", options.threads);
    }
    let data = crate::reproduce::resolve_data(root, Some(&options.data))?;
    let wick = crate::reproduce::build_wick(root, false)?;
    let out = root.join(&options.out);
    let mut runs = Vec::new();
    let train = |dir: &Path, threads: usize| {
        let mut command = Command::new(&wick);
        command
            .arg("train")
            .arg("--recipe")
            .arg(root.join(&options.recipe))
            .arg("--data")
            .arg(&data)
            .arg("--out")
            .arg(dir);
        if threads > 0 {
            command.env("RAYON_NUM_THREADS", threads.to_string());
        }
        command
    };
    let fresh = |dir: &Path| -> anyhow::Result<()> {
        if dir.exists() {
            std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
        }
        Ok(())
    };
    for (index, &threads) in options.threads.iter().enumerate() {
        let label = if threads == 0 { "default".to_string() } else { threads.to_string() };
        let dir = out.join(format!("run-{index}-threads-{label}"));
        fresh(&dir)?;
        let status = crate::reproduce::run(&mut train(&dir, threads))?;
        if !status.success() {
            bail!("training run {index} ({label} threads) failed ({status})");
        }
        runs.push((label, dir));
    }
    if options.kill_and_resume {
        let dir = out.join("run-killed-and-resumed");
        fresh(&dir)?;
        let mut command = train(&dir, 0);
        eprintln!("$ {command:?}  (killed with SIGKILL after its first checkpoint)");
        let mut child = command.spawn().with_context(|| format!("running {command:?}"))?;
        // The run's one checkpoint (every stage's fits counted end to end).
        let checkpoint = dir.join("checkpoint.safetensors");
        let started = std::time::Instant::now();
        let killed = loop {
            if let Some(status) = child.try_wait()? {
                bail!("the run to be killed finished first ({status}): no kill was tested");
            }
            if checkpoint.is_file() {
                // A moment past the checkpoint, so that the kill lands mid-batch.
                std::thread::sleep(std::time::Duration::from_millis(1500));
                child.kill()?;
                child.wait()?;
                break started.elapsed();
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        };
        eprintln!("killed after {:.1} s; resuming", killed.as_secs_f64());
        let status = crate::reproduce::run(&mut train(&dir, 0))?;
        if !status.success() {
            bail!("the resumed run failed ({status})");
        }
        runs.push(("default, killed and resumed".to_string(), dir));
    }
    let read = |dir: &Path, name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
    };
    let (first_label, first_dir) = &runs[0];
    let reference_model = read(first_dir, "model.safetensors")?;
    let reference_epochs = epoch_rows(first_dir)?;
    println!("| run | threads | epoch rows | model.safetensors |");
    println!("|---|---|---|---|");
    println!(
        "| 0 | {first_label} | {} | {} bytes |",
        reference_epochs.join("; "),
        reference_model.len()
    );
    let mut differ = Vec::new();
    for (index, (label, dir)) in runs.iter().enumerate().skip(1) {
        let model = read(dir, "model.safetensors")?;
        let epochs = epoch_rows(dir)?;
        let same_model = model == reference_model;
        println!(
            "| {index} | {label} | {} | {} |",
            epochs.join("; "),
            if same_model { "identical to run 0" } else { "DIFFERS from run 0" }
        );
        if !same_model || epochs != reference_epochs {
            differ.push(format!("run {index} ({label} threads)"));
        }
    }
    if !differ.is_empty() {
        bail!("not reproducible: {} differ from run 0", differ.join(", "));
    }
    println!("determinism: {} runs bit-identical", runs.len());
    Ok(())
}

/// The epoch rows of a run's `metrics.jsonl` (losses and metrics, without the wall time).
fn epoch_rows(dir: &Path) -> anyhow::Result<Vec<String>> {
    let path =
        find_metrics(dir).with_context(|| format!("no metrics.jsonl under {}", dir.display()))?;
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut rows = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let mut value: serde_json::Value = serde_json::from_str(line)
            .with_context(|| format!("{}: not JSON: {line}", path.display()))?;
        if let Some(object) = value.as_object_mut() {
            object.retain(|key, _| !key.contains("time") && !key.contains("seconds"));
        }
        rows.push(value.to_string());
    }
    Ok(rows)
}

/// `metrics.jsonl` in the run folder or in its stage folders (the last stage's).
fn find_metrics(dir: &Path) -> Option<PathBuf> {
    let direct = dir.join("metrics.jsonl");
    if direct.is_file() {
        return Some(direct);
    }
    let mut stages: Vec<PathBuf> = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.join("metrics.jsonl").is_file())
        .collect();
    stages.sort();
    stages.pop().map(|p| p.join("metrics.jsonl"))
}
