//! `cargo xtask bench <suite>`: runs wick's benchmark binaries (release profile, via
//! `cargo bench`) and, in the same command, the Python reference stack
//! (`../shared/bench/anchor_bench.py` or the suite's own torch script), then prints one table
//! with the ratios and writes it into `docs/performance.md` between the suite's markers.
//! Ratios are only ever computed between numbers measured in this one run.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, bail};
use serde_json::Value;

/// Options shared by every suite.
#[derive(Debug, Clone)]
pub(crate) struct BenchOptions {
    /// Python with torch/torchvision/fastai/Pillow; `None` skips the reference side.
    pub(crate) python: Option<PathBuf>,
    /// `../shared/bench/anchor_bench.py`.
    pub(crate) anchor: PathBuf,
    /// Imagenette folder for the data suite.
    pub(crate) data: PathBuf,
    /// Images per source in the data suite.
    pub(crate) count: usize,
    /// Write the table into docs/performance.md.
    pub(crate) write_docs: bool,
    /// The command line, recorded beside the table.
    pub(crate) command_line: String,
}

/// Finds the reference Python: `$WICK_PYTHON`, then `.venv-anchor/bin/python` in the
/// repository (git-ignored; see docs/performance.md for how to create it), then `python3` if
/// it can import torch.
pub(crate) fn find_python(root: &Path) -> Option<PathBuf> {
    let candidates = std::env::var_os("WICK_PYTHON")
        .map(PathBuf::from)
        .into_iter()
        .chain([root.join(".venv-anchor/bin/python"), PathBuf::from("python3")]);
    candidates.into_iter().find(|python| {
        Command::new(python)
            .args(["-c", "import torch"])
            .output()
            .map(|out| out.status.success())
            .unwrap_or(false)
    })
}

/// Runs a command and returns the JSON objects among its stdout lines.
pub(crate) fn json_lines(command: &mut Command) -> anyhow::Result<Vec<Value>> {
    let rendered = format!("{command:?}");
    eprintln!("$ {rendered}");
    let output = command
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| format!("running {rendered}"))?;
    if !output.status.success() {
        bail!("{rendered} failed with {}", output.status);
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Ok(text
        .lines()
        .filter_map(|line| serde_json::from_str::<Value>(line.trim()).ok())
        .filter(Value::is_object)
        .collect())
}

fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// The data suite (issue: wick-data pipeline vs PIL/torchvision).
pub(crate) fn data(root: &Path, options: &BenchOptions) -> anyhow::Result<String> {
    let train_dir = options.data.join("train");
    if !train_dir.is_dir() {
        bail!("{} is not an Imagenette folder with train/ (pass --data)", options.data.display());
    }
    let synthetic = root.join("target/bench-jpegs-500x375");
    let count = options.count.to_string();
    let wick = json_lines(
        cargo()
            .current_dir(root)
            .args(["bench", "--quiet", "-p", "wick-data", "--bench", "data", "--"])
            .args([
                "--dir".as_ref(),
                train_dir.as_os_str(),
                "--make-jpegs".as_ref(),
                synthetic.as_os_str(),
                "--count".as_ref(),
                count.as_ref(),
            ]),
    )?;
    let mut reference: BTreeMap<(String, String), f64> = BTreeMap::new();
    if let Some(python) = &options.python {
        for dir in [&train_dir, &synthetic] {
            let lines = json_lines(Command::new(python).arg(&options.anchor).args([
                "--cases",
                "jpeg_decode,jpeg_r160,jpeg_tvaug128,jpeg_tvaug224",
                "--jpeg-dir",
                &dir.to_string_lossy(),
                "--jpeg-count",
                &count,
                "--no-env",
            ]))?;
            for line in lines {
                if let (Some(case), Some(rate)) =
                    (line["case"].as_str(), line["images_per_s"].as_f64())
                {
                    reference.insert((dir.to_string_lossy().into_owned(), case.to_string()), rate);
                }
            }
        }
    }
    let anchor_case = |case: &str| match case {
        "decode" => "jpeg_decode",
        "decode_resize160" => "jpeg_r160",
        "train128" => "jpeg_tvaug128",
        _ => "jpeg_tvaug224",
    };
    let what = |case: &str| match case {
        "decode" => "decode to RGB",
        "decode_resize160" => "decode + resize to 160 (PIL: short side 160)",
        "train128" => "full train pipeline to 128 (torchvision: RRC+flip+rotate+jitter+normalize)",
        _ => "full train pipeline to 224 (same)",
    };
    let mut rows: BTreeMap<(String, String), (Option<f64>, Option<f64>)> = BTreeMap::new();
    for line in &wick {
        let (Some(src), Some(case), Some(threads), Some(rate)) = (
            line["src"].as_str(),
            line["case"].as_str(),
            line["threads"].as_u64(),
            line["images_per_s"].as_f64(),
        ) else {
            continue;
        };
        let entry = rows.entry((src.to_string(), case.to_string())).or_default();
        if threads == 1 { entry.0 = Some(rate) } else { entry.1 = Some(rate) }
    }
    let mut table = String::from(
        "| source | case | wick 1 thread (img/s) | wick 2 threads (img/s) | Python 1 process (img/s) | wick/Python per core |\n|---|---|---|---|---|---|\n",
    );
    for ((src, case), (one, two)) in &rows {
        let python = reference.get(&(src.clone(), anchor_case(case).to_string())).copied();
        let ratio = match (one, python) {
            (Some(one), Some(python)) => format!("{:.2}x", one / python),
            _ => "–".to_string(),
        };
        let label = if src.contains("bench-jpegs") {
            "synthetic 500x375 q90"
        } else {
            "imagenette2-224 train"
        };
        table.push_str(&format!(
            "| {label} | {} | {} | {} | {} | {ratio} |\n",
            what(case),
            fmt_rate(*one),
            fmt_rate(*two),
            fmt_rate(python)
        ));
    }
    Ok(table)
}

fn fmt_rate(rate: Option<f64>) -> String {
    rate.map(|r| format!("{r:.0}")).unwrap_or_else(|| "–".to_string())
}

/// Replaces the text between `<!-- bench:NAME:start -->` and `<!-- bench:NAME:end -->` in
/// docs/performance.md (appending a new section if the markers are missing).
pub(crate) fn write_section(root: &Path, name: &str, body: &str) -> anyhow::Result<()> {
    let path = root.join("docs/performance.md");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|_| "# Performance\n".to_string());
    let (start, end) =
        (format!("<!-- bench:{name}:start -->"), format!("<!-- bench:{name}:end -->"));
    let section = format!("{start}\n{body}{end}");
    let updated = match (text.find(&start), text.find(&end)) {
        (Some(s), Some(e)) if e > s => {
            format!("{}{}{}", &text[..s], section, &text[e + end.len()..])
        }
        _ => format!("{}\n{}\n", text.trim_end(), section),
    };
    let temporary = path.with_extension("md.tmp");
    std::fs::write(&temporary, updated)
        .with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, &path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

/// A header stating when, where and how a table was measured.
pub(crate) fn provenance(options: &BenchOptions, python_used: bool) -> String {
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%d %H:%M UTC")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".to_string());
    let cores = std::thread::available_parallelism().map(usize::from).unwrap_or(1);
    format!(
        "Measured {date} on {cpu} ({cores} cores) by `{}`{}.\n\n",
        options.command_line,
        if python_used { "" } else { " (no Python reference found: wick only)" }
    )
}

/// The nn suite: wick-nn's ops, candle's stock ops and PyTorch on the same shapes.
pub(crate) fn nn(root: &Path, options: &BenchOptions, quick: bool) -> anyhow::Result<String> {
    let mut args = vec!["bench", "--quiet", "-p", "wick-nn", "--bench", "nn", "--"];
    if quick {
        args.push("--quick");
    }
    let mut lines = json_lines(cargo().current_dir(root).args(&args))?;
    if let Some(python) = &options.python {
        let mut command = Command::new(python);
        command.arg(root.join("crates/wick-nn/benches/torch_nn.py"));
        if quick {
            command.arg("--quick");
        }
        lines.extend(json_lines(&mut command)?);
    }
    // case -> impl -> line
    let mut cases: Vec<String> = Vec::new();
    let mut by_case: BTreeMap<(String, String), Value> = BTreeMap::new();
    for line in lines.into_iter().filter(|l| l["bench"] == "nn") {
        let (Some(case), Some(implementation)) = (line["case"].as_str(), line["impl"].as_str())
        else {
            continue;
        };
        if !cases.iter().any(|c| c == case) {
            cases.push(case.to_string());
        }
        by_case.insert((case.to_string(), implementation.to_string()), line.clone());
    }
    let mut table = String::from(
        "| case | kind | wick fwd | candle fwd | torch fwd | wick fwd+bwd | candle fwd+bwd | torch fwd+bwd | wick/torch fwd+bwd |\n|---|---|---|---|---|---|---|---|---|\n",
    );
    let (mut log_sum, mut n) = (0.0, 0);
    for case in &cases {
        let get = |implementation: &str| by_case.get(&(case.clone(), implementation.to_string()));
        let kind = get("wick").and_then(|l| l["kind"].as_str()).unwrap_or("?");
        let (fwd_key, fwdbwd_key, unit) = if kind == "conv" {
            ("fwd_gflops", "fwdbwd_gflops", "GFLOP/s")
        } else {
            ("fwd_gbps", "fwdbwd_gbps", "GB/s")
        };
        let value =
            |implementation: &str, key: &str| get(implementation).and_then(|l| l[key].as_f64());
        let ratio = match (value("wick", fwdbwd_key), value("torch", fwdbwd_key)) {
            (Some(w), Some(t)) if t > 0.0 => {
                if kind == "conv" {
                    log_sum += (w / t).ln();
                    n += 1;
                }
                format!("{:.2}x", w / t)
            }
            _ => "–".to_string(),
        };
        let cell = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".to_string());
        table.push_str(&format!(
            "| {case} | {kind} ({unit}) | {} | {} | {} | {} | {} | {} | {ratio} |\n",
            cell(value("wick", fwd_key)),
            cell(value("candle", fwd_key)),
            cell(value("torch", fwd_key)),
            cell(value("wick", fwdbwd_key)),
            cell(value("candle", fwdbwd_key)),
            cell(value("torch", fwdbwd_key)),
        ));
    }
    if n > 0 {
        table.push_str(&format!(
            "\nGeometric mean of wick/torch forward+backward over the {n} conv cases: {:.2}x.\n",
            (log_sum / n as f64).exp()
        ));
    }
    Ok(table)
}

/// The models suite: xresnet train steps and inference, wick beside PyTorch + the reference
/// xresnet (`anchor_bench.py`), each case in its own process so peak memory is its own.
pub(crate) fn models(root: &Path, options: &BenchOptions, steps: usize) -> anyhow::Result<String> {
    let cases = [
        "train50_128",
        "train50_224",
        "train18_64",
        "train18_128",
        "infer50_128",
        "infer50_224",
        "infer18_64",
        "infer18_128",
    ];
    let steps_text = steps.to_string();
    let mut wick: BTreeMap<String, Value> = BTreeMap::new();
    let mut ops: Vec<Value> = Vec::new();
    // Build once, then one process per case.
    json_lines(cargo().current_dir(root).args([
        "bench",
        "--quiet",
        "-p",
        "wick-train",
        "--bench",
        "models",
        "--no-run",
    ]))?;
    for case in cases {
        let mut args = vec![
            "bench",
            "--quiet",
            "-p",
            "wick-train",
            "--bench",
            "models",
            "--",
            "--case",
            case,
            "--steps",
            &steps_text,
        ];
        if case == "train50_128" {
            args.push("--profile");
        }
        for line in json_lines(cargo().current_dir(root).args(&args))? {
            match line["bench"].as_str() {
                Some("models") => {
                    wick.insert(case.to_string(), line);
                }
                Some("models-ops") => ops.push(line),
                _ => {}
            }
        }
    }
    // The anchor's cases (it has no train18_64 / infer50_128 / infer18_*).
    let mut torch: BTreeMap<String, (f64, Option<f64>)> = BTreeMap::new();
    if let Some(python) = &options.python {
        for (case, anchor_case) in [
            ("train50_128", "train50_128"),
            ("train50_224", "train50_224"),
            ("train18_128", "train18_128"),
            ("infer50_224", "infer50_224"),
            ("train50_64", "train50_64"),
        ] {
            let mut command = Command::new("/usr/bin/time");
            command.args(["-f", "peak_rss_kb=%M"]).arg(python).arg(&options.anchor).args([
                "--cases",
                anchor_case,
                "--no-isolate",
                "--no-env",
                "--steps",
                &steps_text,
            ]);
            let output = command
                .stderr(std::process::Stdio::piped())
                .output()
                .with_context(|| format!("running {command:?}"))?;
            let stdout = String::from_utf8_lossy(&output.stdout);
            let stderr = String::from_utf8_lossy(&output.stderr);
            let peak = stderr
                .lines()
                .find_map(|l| l.strip_prefix("peak_rss_kb="))
                .and_then(|kb| kb.trim().parse::<f64>().ok())
                .map(|kb| kb / 1024.0);
            for line in stdout.lines().filter_map(|l| serde_json::from_str::<Value>(l).ok()) {
                if let Some(rate) = line["images_per_s"].as_f64() {
                    torch.insert(case.to_string(), (rate, peak));
                }
            }
        }
    }
    let mut table = String::from(
        "| case | wick img/s (fwd+bwd) | wick img/s (+Adam step) | PyTorch img/s (+Adam step) | wick/PyTorch | wick peak MB | PyTorch peak MB |\n|---|---|---|---|---|---|---|\n",
    );
    for case in cases {
        let Some(line) = wick.get(case) else { continue };
        let train = case.starts_with("train");
        let fwdbwd = line["images_per_s"].as_f64().unwrap_or(f64::NAN);
        let with_adam = if train { line["with_adam_images_per_s"].as_f64() } else { None };
        let comparable = if train { with_adam } else { Some(fwdbwd) };
        let reference = torch.get(case);
        let ratio = match (comparable, reference) {
            (Some(w), Some((t, _))) => format!("{:.2}x", w / t),
            _ => "–".to_string(),
        };
        table.push_str(&format!(
            "| {case} | {fwdbwd:.2} | {} | {} | {ratio} | {:.0} | {} |\n",
            with_adam.map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".to_string()),
            reference.map(|(t, _)| format!("{t:.2}")).unwrap_or_else(|| "–".to_string()),
            line["peak_rss_mb"].as_f64().unwrap_or(f64::NAN),
            reference
                .and_then(|(_, p)| *p)
                .map(|p| format!("{p:.0}"))
                .unwrap_or_else(|| "–".to_string()),
        ));
    }
    if !ops.is_empty() {
        table.push_str("\nOne training step of xresnet50 at 128 px, batch 32, by wick-nn kernel (wall clock; kernels run on both cores):\n\n| op | ms | calls |\n|---|---|---|\n");
        for op in &ops {
            table.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                op["op"].as_str().unwrap_or("?"),
                op["ms"].as_f64().unwrap_or(f64::NAN),
                op["calls"]
            ));
        }
    }
    Ok(table)
}
