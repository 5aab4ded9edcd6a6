//! Code-hygiene rules checked by `cargo test -p xtask` (and `cargo xtask tidy`), so that no
//! rule depends on a reviewer's memory: every Rust file opens with a `//!` paragraph saying
//! what it owns; no test is ignored or expected to panic; no debugging leftovers.
//!
//! Printing in library crates is forbidden by the workspace lints (`print_stdout`,
//! `print_stderr`), which clippy enforces; this file checks what lints cannot, including the
//! crate graph of docs/ARCHITECTURE.md (which workspace crates each crate may depend on),
//! that the training loop and evaluation never name a model or a dataset, that the loop
//! itself (`learner.rs`) never names a training feature (MixUp, mixed precision and data
//! parallelism plug in as a callback, a model wrapper and a gradient hook), that device code
//! stays in wick-nn, that only wick-render draws (the drawing libraries, the PNG encoder,
//! the font), and that `vendor/` holds only patched crates wired in by `[patch.crates-io]`.

use std::path::{Path, PathBuf};

/// One broken rule: the file and what is wrong with it.
#[derive(Debug)]
pub(crate) struct Violation {
    pub(crate) path: PathBuf,
    pub(crate) message: String,
}

/// The workspace crates each crate's `[dependencies]` may name (docs/ARCHITECTURE.md,
/// "Invariants"): dependencies run one way, from the binary down to data and ops; dev-
/// dependencies are free. `None`: any (the CLI joins everything).
const ALLOWED_WORKSPACE_DEPENDENCIES: [(&str, Option<&[&str]>); 12] = [
    ("wick-io", Some(&[])),
    ("wick-data", Some(&[])),
    ("wick-nn", Some(&[])),
    ("wick-metrics", Some(&[])),
    ("wick-render", Some(&["wick-io"])),
    ("wick-models", Some(&["wick-nn", "wick-io"])),
    ("wick-train", Some(&["wick-data", "wick-io", "wick-nn", "wick-metrics", "wick-render"])),
    ("wick-eval", Some(&["wick-data", "wick-metrics", "wick-render"])),
    ("wick-export", Some(&["wick-models"])),
    ("wick-cli", None),
    ("wick-testing", Some(&[])),
    ("xtask", Some(&[])),
];

/// External crates a crate must not depend on: wick-data never imports candle-nn.
const FORBIDDEN_EXTERNAL_DEPENDENCIES: [(&str, &str); 1] = [("wick-data", "candle-nn")];

/// Rendering has one owner: only wick-render depends on the drawing libraries and the font
/// rasteriser (docs/ARCHITECTURE.md).
const RENDER_CRATE: &str = "wick-render";
const RENDER_ONLY_DEPENDENCIES: [&str; 3] = ["plotters", "ab_glyph", "font8x8"];

/// Code that encodes a PNG or embeds a font: allowed only in wick-render's sources (one PNG
/// encoder, one font). Spelled with `concat!` so that this file does not trip its own check.
const RENDER_ONLY_CODE: [&str; 5] = [
    concat!("Png", "Encoder"),
    concat!("codecs", "::png"),
    concat!(".write", "_to("),
    concat!("save_with", "_format"),
    concat!(".tt", "f\")"),
];

/// Crates whose code (comments aside) never names a model or a dataset: the loop and the
/// evaluation are model- and dataset-agnostic.
const AGNOSTIC_CRATES: [&str; 2] = ["wick-train", "wick-eval"];
const MODEL_AND_DATASET_NAMES: [&str; 3] = ["xresnet", "imagenette", "imagewoof"];

/// The file of the training loop, and the features it must not name in code (comments aside),
/// compared case-insensitively: each is a callback, a model wrapper or a gradient hook, so the
/// loop has no `if mixup`-style branch (docs/ARCHITECTURE.md, "Invariants").
const LOOP_FILE: &str = "crates/wick-train/src/learner.rs";
const LOOP_FEATURE_NAMES: [&str; 7] =
    ["mixup", "cutmix", "mixed", "precision", "bf16", "dataparallel", "data_parallel"];

/// Device code lives only in wick-nn (docs/ARCHITECTURE.md, "Only wick-nn holds device
/// code"): no other crate's code (comments aside) reads a backend's storage, names cudarc or
/// branches on the device kind. xtask's CUDA build tooling is not device code and is exempt.
const DEVICE_CODE_CRATE: &str = "crates/wick-nn";
const DEVICE_CODE_NAMES: [&str; 5] =
    ["CpuStorage", "CudaStorage", "cudarc", "is_cpu()", "is_cuda()"];

/// The vendored-copy rule (docs/ARCHITECTURE.md, "vendor/ holds only patched published
/// crates"): every folder in `vendor/` is a crate wired in by the root manifest's
/// `[patch.crates-io]` and described in `vendor/README.md`, and the workspace excludes
/// `vendor`, so that a copy is never built, linted or tested as wick's own code.
pub(crate) fn check_vendor(root: &Path) -> Vec<Violation> {
    let manifest_path = root.join("Cargo.toml");
    let violation = |path: &Path, message: String| Violation { path: path.to_path_buf(), message };
    let manifest: toml::Table = match std::fs::read_to_string(&manifest_path)
        .map_err(|e| e.to_string())
        .and_then(|text| text.parse().map_err(|e: toml::de::Error| e.to_string()))
    {
        Ok(manifest) => manifest,
        Err(error) => return vec![violation(&manifest_path, format!("unreadable: {error}"))],
    };
    let mut folders: Vec<String> = std::fs::read_dir(root.join("vendor"))
        .map(|entries| {
            entries
                .flatten()
                .filter(|e| e.path().is_dir())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    folders.sort();
    if folders.is_empty() {
        return Vec::new();
    }
    let mut violations = Vec::new();
    let excluded = manifest
        .get("workspace")
        .and_then(|w| w.get("exclude"))
        .and_then(|e| e.as_array())
        .is_some_and(|e| e.iter().any(|v| v.as_str() == Some("vendor")));
    if !excluded {
        violations.push(violation(
            &manifest_path,
            "vendor/ holds crates but [workspace] does not exclude \"vendor\"".to_string(),
        ));
    }
    let patch = manifest.get("patch").and_then(|p| p.get("crates-io")).and_then(|c| c.as_table());
    let readme = std::fs::read_to_string(root.join("vendor/README.md")).unwrap_or_default();
    for folder in folders {
        let path = root.join("vendor").join(&folder);
        let patched = patch.is_some_and(|table| {
            table.values().any(|entry| {
                entry.get("path").and_then(|p| p.as_str()) == Some(&format!("vendor/{folder}"))
            })
        });
        if !patched {
            violations.push(violation(
                &path,
                format!("vendor/{folder} is not a [patch.crates-io] entry of the root Cargo.toml"),
            ));
        }
        if !readme.contains(&format!("`vendor/{folder}`")) {
            violations.push(violation(
                &path,
                format!("vendor/README.md does not describe `vendor/{folder}` and its changes"),
            ));
        }
    }
    violations
}

/// The dependency rules over every `crates/*/Cargo.toml` and `xtask/Cargo.toml`.
pub(crate) fn check_dependency_rules(root: &Path) -> Vec<Violation> {
    let mut manifests: Vec<PathBuf> = std::fs::read_dir(root.join("crates"))
        .map(|entries| entries.flatten().map(|e| e.path().join("Cargo.toml")).collect())
        .unwrap_or_default();
    manifests.push(root.join("xtask/Cargo.toml"));
    manifests.retain(|path| path.is_file());
    manifests.sort();
    let mut violations = Vec::new();
    for path in manifests {
        let violation = |message: String| Violation { path: path.clone(), message };
        let manifest: toml::Table = match std::fs::read_to_string(&path)
            .map_err(|e| e.to_string())
            .and_then(|text| text.parse().map_err(|e: toml::de::Error| e.to_string()))
        {
            Ok(manifest) => manifest,
            Err(error) => {
                violations.push(violation(format!("unreadable manifest: {error}")));
                continue;
            }
        };
        let name = manifest
            .get("package")
            .and_then(|p| p.get("name"))
            .and_then(|n| n.as_str())
            .unwrap_or_default()
            .to_string();
        let dependencies: Vec<String> = manifest
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|table| table.keys().cloned().collect())
            .unwrap_or_default();
        let Some((_, allowed)) = ALLOWED_WORKSPACE_DEPENDENCIES.iter().find(|(c, _)| *c == name)
        else {
            violations.push(violation(format!(
                "crate {name} has no entry in tidy's ALLOWED_WORKSPACE_DEPENDENCIES: add it \
                 there and to docs/ARCHITECTURE.md"
            )));
            continue;
        };
        for dependency in &dependencies {
            let workspace = dependency.starts_with("wick-");
            if let Some(allowed) = allowed
                && workspace
                && !allowed.contains(&dependency.as_str())
            {
                violations.push(violation(format!(
                    "{name} depends on {dependency}; it may depend on {allowed:?} only \
                     (docs/ARCHITECTURE.md)"
                )));
            }
            if FORBIDDEN_EXTERNAL_DEPENDENCIES.contains(&(name.as_str(), dependency.as_str())) {
                violations.push(violation(format!("{name} must not depend on {dependency}")));
            }
            if name != RENDER_CRATE && RENDER_ONLY_DEPENDENCIES.contains(&dependency.as_str()) {
                violations.push(violation(format!(
                    "{name} depends on {dependency}: only {RENDER_CRATE} draws (docs/ARCHITECTURE.md)"
                )));
            }
        }
    }
    violations
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
        let relative = path.strip_prefix(root).unwrap_or(&path);
        let agnostic = AGNOSTIC_CRATES
            .iter()
            .any(|krate| relative.starts_with(Path::new("crates").join(krate).join("src")));
        if agnostic {
            for message in check_agnostic(&text) {
                violations.push(Violation { path: path.clone(), message });
            }
        }
        if relative.starts_with("crates") && !relative.starts_with(DEVICE_CODE_CRATE) {
            for message in check_device_code(&text) {
                violations.push(Violation { path: path.clone(), message });
            }
        }
        if relative == Path::new(LOOP_FILE) {
            for message in check_loop(&text) {
                violations.push(Violation { path: path.clone(), message });
            }
        }
        let library_source = relative.starts_with("crates")
            && relative.components().nth(2).is_some_and(|part| part.as_os_str() == "src");
        let render_crate = relative.starts_with(Path::new("crates").join(RENDER_CRATE));
        if library_source && !render_crate {
            for message in check_render_only(&text) {
                violations.push(Violation { path: path.clone(), message });
            }
        }
    }
    violations.extend(check_dependency_rules(root));
    violations.extend(check_vendor(root));
    violations
}

/// Code lines (comments aside) that name a model or a dataset.
fn check_agnostic(text: &str) -> Vec<String> {
    lines_naming(
        text,
        &MODEL_AND_DATASET_NAMES,
        Case::Insensitive,
        "this crate is model- and dataset-agnostic",
    )
}

/// Code lines (comments aside) outside wick-nn that hold device code.
fn check_device_code(text: &str) -> Vec<String> {
    lines_naming(
        text,
        &DEVICE_CODE_NAMES,
        Case::Sensitive,
        "device code lives only in wick-nn (an op or a collective there, called from here)",
    )
}

/// Code lines (comments aside) of the loop that name a training feature.
fn check_loop(text: &str) -> Vec<String> {
    lines_naming(
        text,
        &LOOP_FEATURE_NAMES,
        Case::Insensitive,
        "the loop has no feature branches (make it a callback, a model wrapper or a gradient hook)",
    )
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Sensitive,
    Insensitive,
}

/// `line N: names NAME: WHY` for each code line (the part before `//`) containing one of
/// `names` (the first that matches).
fn lines_naming(text: &str, names: &[&str], case: Case, why: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        let code = if case == Case::Insensitive { code.to_lowercase() } else { code.to_string() };
        if let Some(name) = names.iter().find(|name| code.contains(*name)) {
            problems.push(format!("line {}: names {name}: {why}", line_idx + 1));
        }
    }
    problems
}

/// Code lines (comments aside) that encode a PNG or embed a font outside wick-render.
fn check_render_only(text: &str) -> Vec<String> {
    let mut problems = Vec::new();
    for (line_idx, line) in text.lines().enumerate() {
        let code = line.split("//").next().unwrap_or_default();
        if let Some(pattern) = RENDER_ONLY_CODE.iter().find(|pattern| code.contains(*pattern)) {
            problems.push(format!(
                "line {}: `{pattern}`: pictures are encoded and fonts embedded only in \
                 {RENDER_CRATE}",
                line_idx + 1
            ));
        }
    }
    problems
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
    fn vendor_rule_catches_an_unlisted_copy() {
        let dir = std::env::temp_dir().join(format!("wick-tidy-vendor-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("vendor/foo")).unwrap();
        let write = |manifest: &str, readme: &str| {
            std::fs::write(dir.join("Cargo.toml"), manifest).unwrap();
            std::fs::write(dir.join("vendor/README.md"), readme).unwrap();
        };
        let good = "[workspace]\nexclude = [\"vendor\"]\n\n[patch.crates-io]\n\
                    foo = { path = \"vendor/foo\" }\n";
        write(good, "## foo (`vendor/foo`)\n");
        assert!(check_vendor(&dir).is_empty(), "{:?}", check_vendor(&dir));
        write(
            "[workspace]\n\n[patch.crates-io]\nfoo = { path = \"vendor/foo\" }\n",
            "`vendor/foo`",
        );
        let messages: Vec<String> = check_vendor(&dir).into_iter().map(|v| v.message).collect();
        assert_eq!(messages.len(), 1, "{messages:?}");
        assert!(messages[0].contains("does not exclude"), "{messages:?}");
        write(good, "nothing here\n");
        let messages: Vec<String> = check_vendor(&dir).into_iter().map(|v| v.message).collect();
        assert!(messages.len() == 1 && messages[0].contains("README"), "{messages:?}");
        write("[workspace]\nexclude = [\"vendor\"]\n", "`vendor/foo`");
        let messages: Vec<String> = check_vendor(&dir).into_iter().map(|v| v.message).collect();
        assert!(messages.len() == 1 && messages[0].contains("patch"), "{messages:?}");
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn dependency_rules_catch_a_backward_dependency() {
        let dir = std::env::temp_dir().join(format!("wick-tidy-{}", std::process::id()));
        let manifest = |name: &str, deps: &str| {
            let crate_dir = dir.join("crates").join(name);
            std::fs::create_dir_all(&crate_dir).unwrap();
            let text = format!("[package]\nname = \"{name}\"\n\n[dependencies]\n{deps}\n");
            std::fs::write(crate_dir.join("Cargo.toml"), text).unwrap();
        };
        manifest("wick-nn", "candle = \"1\"\n");
        manifest("wick-models", "wick-nn.workspace = true\n");
        assert!(check_dependency_rules(&dir).is_empty());
        // wick-data reaching up to the loop, and importing candle-nn; an unknown crate.
        manifest("wick-data", "wick-train.workspace = true\ncandle-nn = \"0.11\"\n");
        manifest("wick-new", "");
        // A second drawing library outside the render crate; the render crate may.
        manifest("wick-train", "plotters = \"0.3\"\n");
        manifest("wick-render", "plotters = \"0.3\"\nwick-io.workspace = true\n");
        let messages: Vec<String> =
            check_dependency_rules(&dir).into_iter().map(|v| v.message).collect();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(messages.len(), 4, "{messages:?}");
        assert_eq!(messages[0], "wick-data must not depend on candle-nn");
        assert!(messages[1].starts_with("wick-data depends on wick-train"), "{messages:?}");
        assert!(messages[2].starts_with("crate wick-new has no entry"), "{messages:?}");
        assert!(messages[3].starts_with("wick-train depends on plotters"), "{messages:?}");
        assert_eq!(
            check_render_only(&format!(
                "//! x\n// a {} in a comment\nlet e = image::{}::new(w);\n",
                RENDER_ONLY_CODE[0], RENDER_ONLY_CODE[1]
            )),
            [format!(
                "line 3: `{}`: pictures are encoded and fonts embedded only in wick-render",
                RENDER_ONLY_CODE[1]
            )]
        );
        assert_eq!(
            check_agnostic(
                "//! about xresnet\nlet x = 1; // an xresnet\nlet m = XResNet::new();\n"
            ),
            ["line 3: names xresnet: this crate is model- and dataset-agnostic"]
        );
    }

    #[test]
    fn device_code_rule_catches_storage_and_device_branches() {
        let text = concat!(
            "//! An optimizer; its CpuStorage loop is in wick-nn.\n",
            "let fusable = wick_nn::ops::fused_step_supported(&t);\n",
            "let (CpuStorage::F32(p), _) = (a, b) else { return };\n",
            "if var.device().is_cuda() { x } // is_cpu() in a comment is fine\n",
        );
        let problems = check_device_code(text);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].starts_with("line 3: names CpuStorage"), "{problems:?}");
        assert!(problems[1].starts_with("line 4: names is_cuda()"), "{problems:?}");
    }

    #[test]
    fn loop_rule_catches_a_feature_branch() {
        let loop_text = concat!(
            "//! The loop; MixUp is a callback.\n",
            "let loss = self.loss.forward_targets(&logits, &ys);\n",
            "if let Some(m) = &batch.mixed_labels {}\n",
            "let x = self.config.precision.cast_input(&xs); // Precision\n",
            "if let Some(dp) = &self.data_parallel {}\n",
        );
        let problems = check_loop(loop_text);
        assert_eq!(problems.len(), 3, "{problems:?}");
        assert!(problems[0].starts_with("line 3: names mixed"), "{problems:?}");
        assert!(problems[1].starts_with("line 4: names precision"), "{problems:?}");
        assert!(problems[2].starts_with("line 5: names data_parallel"), "{problems:?}");
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
