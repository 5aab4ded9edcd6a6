//! Code-hygiene rules checked by `cargo test -p xtask` (and `cargo xtask tidy`), so that no
//! rule depends on a reviewer's memory: every Rust file opens with a `//!` paragraph saying
//! what it owns; no test is ignored or expected to panic; no debugging leftovers.
//!
//! Printing in library crates is forbidden by the workspace lints (`print_stdout`,
//! `print_stderr`), which clippy enforces; this file checks what lints cannot.

use std::path::{Path, PathBuf};

/// One broken rule: the file and what is wrong with it.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
}

/// Checks every `.rs` file under the workspace's `crates/`, `xtask/` and `tests/` folders.
pub(crate) fn check_workspace(root: &Path) -> Vec<Violation> {
    let mut files = Vec::new();
    for dir in ["crates", "xtask", "tests"] {
        collect_rust_files(&root.join(dir), &mut files);
    }
    files.sort();
    let mut violations = Vec::new();
    for path in files {
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(error) => {
                violations.push(Violation { path, message: format!("unreadable: {error}") });
                continue;
            }
        };
        for message in check_file(&text) {
            violations.push(Violation { path: path.clone(), message });
        }
    }
    violations
}

fn collect_rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name();
        if name == "target" || name.to_string_lossy().starts_with('.') {
            continue;
        }
        if path.is_dir() {
            collect_rust_files(&path, out);
        } else if path.extension().is_some_and(|ext| ext == "rs") {
            out.push(path);
        }
    }
}

/// The rules for one file's text. The forbidden patterns are spelled with `concat!` so that
/// this file does not trip its own check.
fn check_file(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    if !text.trim_start().starts_with("//!") {
        problems.push("does not open with a `//!` doc saying what the file owns".to_string());
    }
    let forbidden = [
        (concat!("#[", "ignore"), "ignored test: tests either run or are deleted"),
        (concat!("#[", "should_panic"), "should_panic test: assert on a returned error instead"),
        (concat!("dbg", "!("), "dbg! left in"),
        (concat!("todo", "!("), "todo! left in"),
        (concat!("unimplemented", "!("), "unimplemented! left in"),
    ];
    for (line_idx, line) in text.lines().enumerate() {
        for (pattern, why) in forbidden {
            if line.contains(pattern) {
                problems.push(format!("line {}: {why}", line_idx + 1));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_is_tidy() {
        let root = crate::project_root();
        let violations = check_workspace(&root);
        let report: Vec<String> = violations
            .iter()
            .map(|violation| format!("{}: {}", violation.path.display(), violation.message))
            .collect();
        assert!(report.is_empty(), "tidy violations:\n{}", report.join("\n"));
    }

    #[test]
    fn rules_catch_what_they_claim() {
        assert!(check_file("//! owns x\nfn main() {}\n").is_empty());
        assert_eq!(check_file("fn main() {}\n").len(), 1);
        let ignored = format!("//! x\n{}]\nfn t() {{}}\n", concat!("#[", "ignore"));
        assert_eq!(
            check_file(&ignored),
            vec!["line 2: ignored test: tests either run or are deleted"]
        );
    }
}
