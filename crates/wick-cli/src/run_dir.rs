//! The run directory: everything a run leaves behind, so that a result can be traced to its
//! inputs and a later command (eval, tta, predict, a resumed train) can pick it up.
//!
//! ```text
//! <out>/recipe.resolved.toml   the recipe with its profile merged and the seed fixed
//! <out>/run.json               seed, profile, device, data folder, git commit, command line
//! <out>/vocab.txt              class names, one per line, in index order
//! <out>/valid.txt              the validation images of the last stage (relative to the data;
//!                              `\`, tab, CR, LF escaped, so every UTF-8 name reads back exactly)
//! <out>/data_report.json       every file used, ignored or skipped, with its reason
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

    /// Writes the class names one per line, escaped as paths are ([`escape_path`]).
    pub(crate) fn write_vocab(&self, vocab: &Vocab) -> anyhow::Result<()> {
        let mut text = String::new();
        for class in vocab.classes() {
            text.push_str(&escape_path(Path::new(class))?);
            text.push('\n');
        }
        self.write("vocab.txt", &text)
    }

    pub(crate) fn read_vocab(&self) -> anyhow::Result<Vocab> {
        let text = self.read("vocab.txt")?;
        let classes = text
            .lines()
            .filter(|line| !line.is_empty())
            .map(|line| unescape_path(line).into_os_string().into_string().unwrap_or_default());
        Ok(Vocab::new(classes))
    }

    /// Writes the validation images as `<class index>\t<path relative to data_root>`, the path
    /// escaped by [`escape_path`] so that any file name reads back exactly.
    ///
    /// # Errors
    /// A path that is not UTF-8 (the listing never yields one), or the write failing.
    pub(crate) fn write_items(
        &self,
        name: &str,
        items: &Items,
        data_root: &Path,
    ) -> anyhow::Result<()> {
        let mut text = String::new();
        for (path, label) in items.paths.iter().zip(&items.labels) {
            let relative = path.strip_prefix(data_root).unwrap_or(path);
            text.push_str(&format!("{label}\t{}\n", escape_path(relative)?));
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
            items.paths.push(data_root.join(unescape_path(path)));
        }
        Ok(items)
    }
}

/// A relative path as one line of text: `\\`, tab, newline and carriage return are written
/// `\\\\`, `\\t`, `\\n`, `\\r`; everything else as is.
///
/// # Errors
/// The path is not valid UTF-8 (named in the message).
pub(crate) fn escape_path(path: &Path) -> anyhow::Result<String> {
    let text = path.to_str().with_context(|| {
        format!("{}: the file name is not valid UTF-8 and cannot be stored", path.display())
    })?;
    let mut escaped = String::with_capacity(text.len());
    for character in text.chars() {
        match character {
            '\\' => escaped.push_str("\\\\"),
            '\t' => escaped.push_str("\\t"),
            '\n' => escaped.push_str("\\n"),
            '\r' => escaped.push_str("\\r"),
            other => escaped.push(other),
        }
    }
    Ok(escaped)
}

/// The inverse of [`escape_path`]. A backslash before any other character is kept as is, so
/// lists written before paths were escaped read back unchanged unless a name held `\\\\`,
/// `\\t`, `\\n` or `\\r`.
pub(crate) fn unescape_path(text: &str) -> PathBuf {
    let mut path = String::with_capacity(text.len());
    let mut characters = text.chars().peekable();
    while let Some(character) = characters.next() {
        if character == '\\' {
            let replacement = match characters.peek() {
                Some('\\') => Some('\\'),
                Some('t') => Some('\t'),
                Some('n') => Some('\n'),
                Some('r') => Some('\r'),
                _ => None,
            };
            if let Some(replacement) = replacement {
                characters.next();
                path.push(replacement);
                continue;
            }
        }
        path.push(character);
    }
    PathBuf::from(path)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stored_paths_round_trip_whatever_the_name() {
        let names = [
            "train/a/plain.jpg",
            "train/a/tab\there.jpg",
            "train/a/new\nline.jpg",
            "train/a/cr\rx.jpg",
            "train/a/back\\slash\\n.jpg",
            "train/a/trailing\\",
            "train/a/ünï cödé 🐱.jpg",
            "train/a/  spaces .jpg",
        ];
        for name in names {
            let escaped = escape_path(Path::new(name)).unwrap();
            assert!(!escaped.contains(['\t', '\n', '\r']), "{escaped:?}");
            assert_eq!(unescape_path(&escaped), PathBuf::from(name), "{name:?}");
        }
        // Lists written before escaping existed read back unchanged.
        assert_eq!(unescape_path("train/a\\b.jpg"), PathBuf::from("train/a\\b.jpg"));
    }

    #[cfg(unix)]
    #[test]
    fn a_name_that_is_not_utf8_is_refused_by_name() {
        use std::os::unix::ffi::OsStrExt;
        let path = Path::new(std::ffi::OsStr::from_bytes(b"train/a/bad\xffname.jpg"));
        let error = escape_path(path).unwrap_err().to_string();
        assert!(error.contains("bad") && error.contains("not valid UTF-8"), "{error}");
    }

    #[test]
    fn the_validation_list_round_trips_through_the_run_directory() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let root = Path::new("/data/set");
        let items = Items {
            paths: vec![root.join("val/a/x\ny.jpg"), root.join("val/b/t\tz\\.jpg")],
            labels: vec![0, 1],
        };
        run.write_items("valid.txt", &items, root).unwrap();
        assert_eq!(run.read_items("valid.txt", root).unwrap(), items);
        let vocab = Vocab::new(["a\nb".to_string(), "c\\d".to_string(), "e\tf".to_string()]);
        run.write_vocab(&vocab).unwrap();
        assert_eq!(run.read_vocab().unwrap(), vocab);
    }
}
