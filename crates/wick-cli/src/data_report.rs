//! Data accounting: which files under `--data` a run used, per split and class, and every file
//! it did not use with the reason (ignored by rule, skipped as bad before the epochs, or failed
//! while a batch was built). Owns `data_report.json` and its one-line console summary; the
//! same record serves `train`, `eval` and `tta` (the `skipped` list of eval.json / tta.json).
//!
//! Paths are stored relative to the data root, as JSON strings: exact for every UTF-8 name
//! (control characters included). Names that are not UTF-8 are refused by the listing
//! (`name_not_utf8`) and shown here with their invalid bytes as `\xHH`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde_json::{Value, json};
use wick_data::{BadFilePolicy, Excluded, Items, SkipLog, Vocab};

use crate::run_dir::RunDir;

/// Everything known about a run's use of its data folder.
#[derive(Debug, Clone)]
pub(crate) struct DataReport {
    pub(crate) root: PathBuf,
    pub(crate) policy: BadFilePolicy,
    /// Image files found by extension (before the pre-scan).
    pub(crate) listed: usize,
    /// Every entry not used, in the order found (listing, pre-scan, splits, batches).
    pub(crate) excluded: Vec<Excluded>,
    /// Per split: (name, count per class index).
    splits: Vec<(&'static str, BTreeMap<u32, usize>)>,
    classes: Vec<String>,
    /// Items the recipe's `subset` left out, per split.
    pub(crate) subset_left_out: Option<(usize, usize)>,
}

impl DataReport {
    pub(crate) fn new(root: &Path, policy: BadFilePolicy, listed: usize) -> Self {
        DataReport {
            root: root.to_path_buf(),
            policy,
            listed,
            excluded: Vec::new(),
            splits: Vec::new(),
            classes: Vec::new(),
            subset_left_out: None,
        }
    }

    /// Records the split counts (replacing earlier ones).
    pub(crate) fn set_splits(&mut self, vocab: &Vocab, splits: &[(&'static str, &Items)]) {
        self.classes = vocab.classes().to_vec();
        self.splits = splits
            .iter()
            .map(|(name, items)| {
                let mut counts = BTreeMap::new();
                for &label in &items.labels {
                    *counts.entry(label).or_insert(0) += 1;
                }
                (*name, counts)
            })
            .collect();
    }

    /// Adds exclusions not recorded yet (the same path and kind once).
    pub(crate) fn add(&mut self, more: impl IntoIterator<Item = Excluded>) {
        for excluded in more {
            let known = self
                .excluded
                .iter()
                .any(|known| known.path == excluded.path && known.kind == excluded.kind);
            if !known {
                self.excluded.push(excluded);
            }
        }
    }

    /// The bad files (those a bad-file policy applies to), sorted by path.
    pub(crate) fn bad_files(&self) -> Vec<&Excluded> {
        let mut bad: Vec<&Excluded> =
            self.excluded.iter().filter(|excluded| excluded.kind.is_bad_file()).collect();
        bad.sort_by(|a, b| a.path.cmp(&b.path));
        bad
    }

    /// The entries left out by rule, sorted by path.
    fn ignored(&self) -> Vec<&Excluded> {
        let mut ignored: Vec<&Excluded> =
            self.excluded.iter().filter(|excluded| !excluded.kind.is_bad_file()).collect();
        ignored.sort_by(|a, b| a.path.cmp(&b.path));
        ignored
    }

    fn relative(&self, path: &Path) -> String {
        path_text(path.strip_prefix(&self.root).unwrap_or(path))
    }

    fn entry(&self, excluded: &Excluded) -> Value {
        json!({
            "path": self.relative(&excluded.path),
            "kind": excluded.kind.name(),
            "reason": excluded.reason,
        })
    }

    /// Ignored files per lower-cased extension (`.txt`, `no extension`).
    fn ignored_extensions(&self) -> BTreeMap<String, usize> {
        let mut counts = BTreeMap::new();
        for excluded in self.ignored() {
            if excluded.kind == wick_data::Exclusion::OtherExtension {
                let extension = excluded
                    .path
                    .extension()
                    .map(|extension| format!(".{}", extension.to_string_lossy().to_lowercase()))
                    .unwrap_or_else(|| "no extension".to_string());
                *counts.entry(extension).or_insert(0) += 1;
            }
        }
        counts
    }

    /// The report as JSON (what data_report.json holds).
    pub(crate) fn to_json(&self) -> Value {
        let splits: serde_json::Map<String, Value> = self
            .splits
            .iter()
            .map(|(name, counts)| {
                let classes: serde_json::Map<String, Value> = counts
                    .iter()
                    .map(|(label, count)| {
                        let class = self.classes.get(*label as usize).cloned();
                        (class.unwrap_or_else(|| label.to_string()), json!(count))
                    })
                    .collect();
                let total: usize = counts.values().sum();
                (name.to_string(), json!({ "total": total, "classes": classes }))
            })
            .collect();
        json!({
            "data": path_text(&self.root),
            "bad_files": match self.policy { BadFilePolicy::Fail => "fail", BadFilePolicy::Skip => "skip" },
            "image_files_listed": self.listed,
            "splits": splits,
            "subset_left_out": self.subset_left_out.map(|(train, valid)| json!({"train": train, "valid": valid})),
            "skipped": self.bad_files().into_iter().map(|e| self.entry(e)).collect::<Vec<_>>(),
            "ignored": self.ignored().into_iter().map(|e| self.entry(e)).collect::<Vec<_>>(),
            "ignored_extensions": self.ignored_extensions(),
        })
    }

    /// The few numbers result.json carries (the full lists are in data_report.json): the
    /// split sizes, and the skipped files by path.
    pub(crate) fn result_summary(&self) -> Value {
        let report = self.to_json();
        let skipped: Vec<Value> =
            self.bad_files().iter().map(|excluded| json!(self.relative(&excluded.path))).collect();
        json!({
            "report": REPORT_FILE,
            "bad_files": report["bad_files"],
            "splits": report["splits"],
            "skipped_count": skipped.len(),
            "skipped": skipped,
            "ignored_count": self.ignored().len(),
        })
    }

    /// One line for the console, then up to `max_names` names of skipped (first) and ignored
    /// files, one per line.
    pub(crate) fn summary(&self, max_names: usize) -> String {
        let mut parts = Vec::new();
        for (name, counts) in &self.splits {
            let total: usize = counts.values().sum();
            parts.push(format!("{total} {name}"));
        }
        let bad = self.bad_files();
        let ignored = self.ignored();
        let mut line = format!(
            "data: {} image files listed, {} used",
            self.listed,
            if parts.is_empty() { "none yet".to_string() } else { parts.join(" + ") }
        );
        if let Some((train, valid)) = self.subset_left_out {
            line.push_str(&format!(", {} left out by `subset`", train + valid));
        }
        let policy = match self.policy {
            BadFilePolicy::Fail => "fail",
            BadFilePolicy::Skip => "skip",
        };
        line.push_str(&format!(
            "; {} bad file{} (bad_files = \"{policy}\")",
            bad.len(),
            if bad.len() == 1 { "" } else { "s" }
        ));
        line.push_str(&format!(
            "; {} other entr{} ignored",
            ignored.len(),
            plural_y(ignored.len())
        ));
        let extensions = self.ignored_extensions();
        if !extensions.is_empty() {
            let shown: Vec<String> =
                extensions.iter().map(|(extension, n)| format!("{extension} {n}")).collect();
            line.push_str(&format!(" (other extensions: {})", shown.join(", ")));
        }
        let mut text = line;
        for excluded in bad.iter().chain(&ignored).take(max_names) {
            text.push_str(&format!(
                "\n  {} {}: {}",
                if excluded.kind.is_bad_file() { "bad" } else { "ignored" },
                self.relative(&excluded.path),
                excluded.reason
            ));
        }
        let more = bad.len() + ignored.len();
        if more > max_names {
            text.push_str(&format!("\n  ... and {} more", more - max_names));
        }
        text
    }
}

fn plural_y(n: usize) -> &'static str {
    if n == 1 { "y" } else { "ies" }
}

impl DataReport {
    /// Writes `data_report.json` into the run directory (atomically).
    pub(crate) fn write(&self, run_dir: &RunDir) -> anyhow::Result<()> {
        run_dir.write(REPORT_FILE, &serde_json::to_string_pretty(&self.to_json())?)
    }

    /// Adds the files the loaders behind `logs` failed on mid-epoch; returns how many are new.
    pub(crate) fn add_batch_failures(&mut self, logs: &[SkipLog]) -> Vec<Excluded> {
        let before = self.excluded.len();
        for log in logs {
            self.add(log.list());
        }
        self.excluded[before..].to_vec()
    }
}

/// The report's file name in a run directory.
pub(crate) const REPORT_FILE: &str = "data_report.json";

/// A path as text: exact when it is UTF-8, else with each invalid byte written `\xHH`.
pub(crate) fn path_text(path: &Path) -> String {
    let bytes = path.as_os_str().as_encoded_bytes();
    let mut text = String::new();
    for chunk in bytes.utf8_chunks() {
        text.push_str(chunk.valid());
        for byte in chunk.invalid() {
            text.push_str(&format!("\\x{byte:02x}"));
        }
    }
    text
}

/// The error a `bad_files = "fail"` run stops with when the pre-scan found bad files.
pub(crate) fn fail_message(report: &DataReport, report_path: Option<&Path>) -> String {
    let bad = report.bad_files();
    let first: Vec<String> = bad
        .iter()
        .take(5)
        .map(|excluded| format!("  {}: {}", excluded.path.display(), excluded.reason))
        .collect();
    format!(
        "{} bad file{} under {} (bad_files = \"fail\"):\n{}{}\nfix or remove {}, or set \
         bad_files = \"skip\" in the recipe's [data] to leave {} out{}",
        bad.len(),
        if bad.len() == 1 { "" } else { "s" },
        report.root.display(),
        first.join("\n"),
        if bad.len() > 5 { format!("\n  ... and {} more", bad.len() - 5) } else { String::new() },
        if bad.len() == 1 { "it" } else { "them" },
        if bad.len() == 1 { "it" } else { "them" },
        report_path.map(|path| format!(" (all listed in {})", path.display())).unwrap_or_default()
    )
}
