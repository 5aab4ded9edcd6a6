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
//! <out>/checkpoint.safetensors the run's one checkpoint (every stage's fits counted end to
//!                              end): rerunning the command resumes from it, inside any stage;
//!                              kept after the last epoch, when a rerun trains nothing
//! <out>/stage-<i>/             metrics.jsonl, loss.png, schedule.png (that stage's fits,
//!                              rewritten after each of its epochs) and show_batch.png
//! <out>/provenance.json        fingerprints of the data (the item list: paths, labels, sizes),
//!                              of the validation images and of the recipe, to refuse other
//!                              data later
//! <out>/.lock                  held (flock) by the one process writing the run; names it
//! ```
//!
//! One writer per run: `train`, `eval` and `tta` take an exclusive lock on `<out>/.lock` and a
//! second process fails at once, naming the holder. While holding it, temporary files left by
//! killed processes (`.<name>.tmp-<pid>`) are removed. Every file is written atomically (a
//! temporary sibling, fsynced, renamed) and the folder fsynced after the rename.

use std::fs::{File, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use serde_json::json;
use sha2::{Digest, Sha256};
use wick_data::{Items, Vocab};

/// The exclusive lock of a run directory, released when dropped (or when the process dies).
#[derive(Debug)]
pub(crate) struct RunLock {
    _file: File,
}

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
        let dir = wick_train::RunFiles::stage_dir(&self.root, index);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// Writes `text` to `name` atomically and durably (the folder is fsynced after the rename).
    pub(crate) fn write(&self, name: &str, text: &str) -> anyhow::Result<()> {
        let path = self.path(name);
        wick_io::write_durably(&path, text.as_bytes())
            .with_context(|| format!("writing {}", path.display()))?;
        let folder = path.parent().unwrap_or(&self.root);
        File::open(folder)
            .and_then(|dir| dir.sync_all())
            .with_context(|| format!("syncing the folder {}", folder.display()))
    }

    /// Takes the run's exclusive lock (`<root>/.lock`) for `command`, or fails at once naming
    /// the process that holds it.
    pub(crate) fn lock(&self, command: &str) -> anyhow::Result<RunLock> {
        let path = self.path(".lock");
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .with_context(|| format!("opening {}", path.display()))?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                let holder = holder.trim();
                bail!(
                    "{} is in use by another wick process ({}): one process writes a run at a \
                     time; wait for it to finish, or use another --out",
                    self.root.display(),
                    if holder.is_empty() { "starting up" } else { holder }
                );
            }
            Err(TryLockError::Error(error)) => {
                return Err(error).with_context(|| format!("locking {}", path.display()));
            }
        }
        let holder = format!("pid {}: wick {command}", std::process::id());
        file.set_len(0)
            .and_then(|()| file.write_all(holder.as_bytes()))
            .and_then(|()| file.sync_all())
            .with_context(|| format!("writing {}", path.display()))?;
        Ok(RunLock { _file: file })
    }

    /// Removes the temporary files (`.<name>.tmp-<pid>`) that killed processes left in the run
    /// and its stage folders; call only while holding the lock. Returns how many were removed.
    pub(crate) fn remove_stale_temporaries(&self) -> anyhow::Result<usize> {
        let mut folders = vec![self.root.clone()];
        for entry in std::fs::read_dir(&self.root)
            .with_context(|| format!("listing {}", self.root.display()))?
            .flatten()
        {
            if entry.file_name().to_string_lossy().starts_with("stage-") && entry.path().is_dir() {
                folders.push(entry.path());
            }
        }
        let mut removed = 0;
        for folder in folders {
            let entries = std::fs::read_dir(&folder)
                .with_context(|| format!("listing {}", folder.display()))?;
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.starts_with('.') && name.contains(".tmp-") && entry.path().is_file() {
                    std::fs::remove_file(entry.path()).with_context(|| {
                        format!("removing the stale temporary file {}", entry.path().display())
                    })?;
                    removed += 1;
                }
            }
        }
        Ok(removed)
    }

    /// A run's `provenance.json`, if it has one.
    pub(crate) fn provenance(&self) -> anyhow::Result<Option<serde_json::Value>> {
        let path = self.path("provenance.json");
        if !path.is_file() {
            return Ok(None);
        }
        let text = self.read("provenance.json")?;
        Ok(Some(
            serde_json::from_str(&text).with_context(|| format!("reading {}", path.display()))?,
        ))
    }

    /// Records the data's fingerprint and the resolved recipe's SHA-256 on the first run, or
    /// checks that a rerun (a resume) sees the same data, saying what changed if not (the
    /// recipe itself is compared key by key against recipe.resolved.toml).
    pub(crate) fn check_or_record_data(
        &self,
        data: &DataFingerprint,
        recipe_text: &str,
    ) -> anyhow::Result<()> {
        let mut provenance = self.provenance()?.unwrap_or_else(|| json!({}));
        if let Some(recorded) = provenance.get("data") {
            if recorded["fingerprint"] != data.fingerprint.as_str() {
                bail!(
                    "{} was trained on other data than {}: {}. Resuming would mix two datasets; \
                     use another --out, or the original --data",
                    self.root.display(),
                    data.root.display(),
                    data.difference(recorded)
                );
            }
            return Ok(());
        }
        provenance["data"] = data.to_json();
        provenance["recipe"] = json!({ "sha256": sha256_hex(recipe_text.as_bytes()) });
        self.write("provenance.json", &serde_json::to_string_pretty(&provenance)?)
    }

    /// Records the fingerprint of the validation images (`valid.txt`'s files) for `eval`/`tta`.
    pub(crate) fn record_valid(&self, valid: &DataFingerprint) -> anyhow::Result<()> {
        let mut provenance = self.provenance()?.unwrap_or_else(|| json!({}));
        provenance["valid"] = valid.to_json();
        self.write("provenance.json", &serde_json::to_string_pretty(&provenance)?)
    }

    /// Checks that the validation images `eval`/`tta` are about to read are the ones the run
    /// recorded (runs from before provenance.json are not checked). With
    /// `changed_files_allowed` (the run's `bad_files = "skip"`), the same list of files whose
    /// contents changed since training passes, with a note to print: those files are decoded
    /// again and skipped, by name, if they no longer decode.
    pub(crate) fn check_valid(
        &self,
        valid: &DataFingerprint,
        changed_files_allowed: bool,
    ) -> anyhow::Result<Option<String>> {
        let Some(recorded) = self.provenance()?.and_then(|p| p.get("valid").cloned()) else {
            return Ok(None);
        };
        if recorded["fingerprint"] == valid.fingerprint.as_str() {
            return Ok(None);
        }
        if changed_files_allowed
            && valid.missing.is_empty()
            && recorded["listing"] == valid.listing.as_str()
        {
            return Ok(Some(format!(
                "note: some validation files under {} changed since training (same names and \
                 classes); bad_files = \"skip\" decodes them again and skips those that fail",
                valid.root.display()
            )));
        }
        {
            bail!(
                "the validation images under {} are not the ones {} was validated on: {}; pass \
                 --data with the run's dataset",
                valid.root.display(),
                self.root.display(),
                valid.difference(&recorded)
            );
        }
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

/// The commit this binary was built from (HEAD of the checkout `cargo` built it in, recorded
/// by build.rs; uncommitted changes are not marked), or "unknown" when built outside one. Not
/// the folder the command runs in: a run names the code that trained it.
pub(crate) fn git_commit() -> String {
    env!("WICK_BUILD_COMMIT").to_string()
}

/// The identity of a list of images: SHA-256 over each file's split, class name, path relative
/// to the data root and size in bytes, plus the per-split counts and the classes for messages.
#[derive(Debug, Clone)]
pub(crate) struct DataFingerprint {
    pub(crate) root: PathBuf,
    pub(crate) fingerprint: String,
    /// The same over split, class and path only (what the item list is, not what the files
    /// hold): a run whose `bad_files = "skip"` evaluates files changed since training, and
    /// skips and names those that no longer decode.
    pub(crate) listing: String,
    pub(crate) classes: Vec<String>,
    pub(crate) counts: Vec<(String, usize)>,
    pub(crate) missing: Vec<PathBuf>,
}

impl DataFingerprint {
    /// Fingerprints `splits` (name, items) labelled with `vocab`, under `root`.
    pub(crate) fn of(root: &Path, vocab: &Vocab, splits: &[(&str, &Items)]) -> Self {
        let mut hasher = Sha256::new();
        let mut listing = Sha256::new();
        let mut missing = Vec::new();
        for (split, items) in splits {
            for (path, label) in items.paths.iter().zip(&items.labels) {
                let relative = path.strip_prefix(root).unwrap_or(path);
                let size = match std::fs::metadata(path) {
                    Ok(metadata) => metadata.len().to_string(),
                    Err(_) => {
                        missing.push(path.clone());
                        "missing".to_string()
                    }
                };
                let class = vocab.name(*label).unwrap_or("?");
                for field in [
                    split.as_bytes(),
                    class.as_bytes(),
                    relative.as_os_str().as_encoded_bytes(),
                    size.as_bytes(),
                ] {
                    hasher.update((field.len() as u64).to_le_bytes());
                    hasher.update(field);
                }
                for field in
                    [split.as_bytes(), class.as_bytes(), relative.as_os_str().as_encoded_bytes()]
                {
                    listing.update((field.len() as u64).to_le_bytes());
                    listing.update(field);
                }
            }
        }
        DataFingerprint {
            root: root.to_path_buf(),
            fingerprint: hex(&hasher.finalize()),
            listing: hex(&listing.finalize()),
            classes: vocab.classes().to_vec(),
            counts: splits.iter().map(|(name, items)| (name.to_string(), items.len())).collect(),
            missing,
        }
    }

    fn to_json(&self) -> serde_json::Value {
        json!({
            "fingerprint": self.fingerprint,
            "listing": self.listing,
            "root": self.root.display().to_string(),
            "classes": self.classes,
            "counts": self.counts.iter().map(|(name, n)| (name.clone(), json!(n))).collect::<serde_json::Map<_, _>>(),
        })
    }

    /// What differs from a recorded fingerprint, in words.
    fn difference(&self, recorded: &serde_json::Value) -> String {
        let mut changes = Vec::new();
        if !self.missing.is_empty() {
            changes.push(format!(
                "{} of its files are missing (first: {})",
                self.missing.len(),
                self.missing[0].display()
            ));
        }
        let classes: Vec<String> = recorded["classes"]
            .as_array()
            .map(|list| list.iter().filter_map(|c| c.as_str().map(str::to_string)).collect())
            .unwrap_or_default();
        if classes != self.classes {
            changes.push(format!(
                "the classes were [{}], now [{}]",
                classes.join(", "),
                self.classes.join(", ")
            ));
        }
        for (name, count) in &self.counts {
            if let Some(before) = recorded["counts"][name].as_u64()
                && before != *count as u64
            {
                changes.push(format!("{before} {name} images then, {count} now"));
            }
        }
        if changes.is_empty() {
            changes.push("the same classes and counts, but other files or file sizes".to_string());
        }
        let root = recorded["root"].as_str().unwrap_or("?");
        format!("recorded data {root}; {}", changes.join("; "))
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn sha256_hex(bytes: &[u8]) -> String {
    hex(&Sha256::digest(bytes))
}

/// Refuses an `--out` inside the data folder: the run's files would be listed as data (a folder
/// of plots becomes a class of a random split).
pub(crate) fn check_out_outside_data(out: &Path, data_root: &Path) -> anyhow::Result<()> {
    let data = data_root
        .canonicalize()
        .with_context(|| format!("resolving the data folder {}", data_root.display()))?;
    let out_abs = absolute_through_existing(out)?;
    if out_abs.starts_with(&data) {
        bail!(
            "--out {} is inside the data folder {}: the run's files would be read as images of \
             the dataset; put the run directory outside it",
            out.display(),
            data_root.display()
        );
    }
    Ok(())
}

/// `path` made absolute with its longest existing prefix canonicalized (symlinks resolved).
fn absolute_through_existing(path: &Path) -> anyhow::Result<PathBuf> {
    let absolute =
        std::path::absolute(path).with_context(|| format!("resolving {}", path.display()))?;
    let mut existing = absolute.as_path();
    let mut rest = Vec::new();
    while !existing.exists() {
        match (existing.parent(), existing.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                existing = parent;
            }
            _ => break,
        }
    }
    let mut resolved = existing.canonicalize().unwrap_or_else(|_| existing.to_path_buf());
    for name in rest.iter().rev() {
        resolved.push(name);
    }
    Ok(resolved)
}

/// What differs between two recipe tables, as `key: old → new` (dotted keys), sorted.
pub(crate) fn recipe_changes(previous: &toml::Table, current: &toml::Table) -> Vec<String> {
    fn flatten(
        prefix: &str,
        value: &toml::Value,
        out: &mut std::collections::BTreeMap<String, String>,
    ) {
        match value {
            toml::Value::Table(table) => {
                for (key, value) in table {
                    let key =
                        if prefix.is_empty() { key.clone() } else { format!("{prefix}.{key}") };
                    flatten(&key, value, out);
                }
            }
            toml::Value::Array(items) if items.iter().all(toml::Value::is_table) => {
                for (index, item) in items.iter().enumerate() {
                    flatten(&format!("{prefix}[{index}]"), item, out);
                }
            }
            other => {
                out.insert(prefix.to_string(), other.to_string());
            }
        }
    }
    let (mut before, mut after) = Default::default();
    flatten("", &toml::Value::Table(previous.clone()), &mut before);
    flatten("", &toml::Value::Table(current.clone()), &mut after);
    let keys: std::collections::BTreeSet<&String> = before.keys().chain(after.keys()).collect();
    keys.into_iter()
        .filter(|key| before.get(*key) != after.get(*key))
        .map(|key| {
            let show = |map: &std::collections::BTreeMap<String, String>| {
                map.get(key).cloned().unwrap_or_else(|| "(absent)".to_string())
            };
            format!("{key}: {} -> {}", show(&before), show(&after))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_recorded_commit_is_the_one_the_binary_was_built_from() {
        let recorded = git_commit();
        // Built here, from this checkout: HEAD of the crate's own folder, wherever the test
        // runs (the working folder of a user's `wick train` plays no part).
        let head = std::process::Command::new("git")
            .args(["rev-parse", "HEAD"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|output| output.status.success())
            .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_string());
        match head {
            Some(head) => assert_eq!(recorded, head),
            None => assert_eq!(recorded, "unknown"),
        }
    }

    #[test]
    fn numbers_read_back_from_run_files_keep_their_digits() {
        // The train losses of reliability/10's reference run (f32 widened to f64, as
        // result.json stores them): numbers read back from a run's JSON and written again must
        // keep every digit. Without
        // serde_json's float_roundtrip, 1.6475884914398193 came back as ...191.
        for text in
            ["1.6475884914398193", "1.3618651628494263", "1.2418403625488281", "1.0828375816345215"]
        {
            let value: serde_json::Value = serde_json::from_str(text).unwrap();
            assert_eq!(value.to_string(), text);
        }
    }

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
