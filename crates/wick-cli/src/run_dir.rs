//! The run directory: everything a run leaves behind, so that a result can be traced to its
//! inputs and a later command (eval, tta, predict, a resumed train) can pick it up.
//!
//! ```text
//! <out>/recipe.resolved.toml   the recipe with its profile merged and the seed fixed
//! <out>/run.json               seed, profile, device, data folder, git commit, command line
//! <out>/vocab.txt              class names, one per line, in index order
//! <out>/valid.txt              the validation images of the last stage (relative to the data)
//! <out>/model.safetensors      the final weights (PyTorch state-dict names)
//! <out>/result.json            final metrics and every stage's epoch table
//! <out>/stage-<i>/             metrics.jsonl, loss.png, schedule.png, checkpoint.safetensors,
//!                              model.safetensors and done.json once the stage finished
//! ```

use std::path::{Path, PathBuf};

use anyhow::Context;
use wick_data::{Items, Vocab};

/// A run directory.
#[derive(Debug, Clone)]
pub(crate) struct RunDir {
    pub(crate) root: PathBuf,
}

impl RunDir {
    pub(crate) fn create(root: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(root)
            .with_context(|| format!("creating the run directory {}", root.display()))?;
        Ok(RunDir { root: root.to_path_buf() })
    }

    pub(crate) fn open(root: &Path) -> anyhow::Result<Self> {
        if !root.join("recipe.resolved.toml").is_file() {
            anyhow::bail!(
                "{} is not a wick run directory (no recipe.resolved.toml)",
                root.display()
            );
        }
        Ok(RunDir { root: root.to_path_buf() })
    }

    pub(crate) fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    pub(crate) fn stage(&self, index: usize) -> anyhow::Result<PathBuf> {
        let dir = self.root.join(format!("stage-{index}"));
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes `text` to `name` atomically.
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.path(name);
        wick_data::write_atomic(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))
    }

    pub(crate) fn read(&self, name: &str) -> anyhow::Result<String> {
        let path = self.path(name);
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))
    }

    pub(crate) fn write_vocab(&self, vocab: &Vocab) -> anyhow::Result<()> {
        self.write("vocab.txt", &(vocab.classes().join("\n") + "\n"))
    }

    pub(crate) fn read_vocab(&self) -> anyhow::Result<Vocab> {
        let text = self.read("vocab.txt")?;
        Ok(Vocab::new(text.lines().filter(|line| !line.is_empty()).map(str::to_string)))
    }

    /// Writes the validation images as `<class index>\t<path relative to data_root>`.
    pub(crate) fn write_items(
        &self,
        name: &str,
        items: &Items,
        data_root: &Path,
    ) -> anyhow::Result<()> {
        let mut text = String::new();
        for (path, label) in items.paths.iter().zip(&items.labels) {
            let relative = path.strip_prefix(data_root).unwrap_or(path);
            text.push_str(&format!("{label}\t{}\n", relative.display()));
        }
        self.write(name, &text)
    }

    pub(crate) fn read_items(&self, name: &str, data_root: &Path) -> anyhow::Result<Items> {
        let mut items = Items::default();
        for (line_idx, line) in self.read(name)?.lines().enumerate() {
            let (label, path) = line.split_once('\t').with_context(|| {
                format!("{name} line {}: expected `label<TAB>path`", line_idx + 1)
            })?;
            items.labels.push(
                label.parse().with_context(|| {
                    format!("{name} line {}: bad label {label:?}", line_idx + 1)
                })?,
            );
            items.paths.push(data_root.join(path));
        }
        Ok(items)
    }
}

/// The commit of the working tree the command runs in, if it is a git checkout.
pub(crate) fn git_commit() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "HEAD"])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".to_string())
}
