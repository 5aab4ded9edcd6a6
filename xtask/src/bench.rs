//! `cargo xtask bench <suite>`: runs wick's benchmark binaries (release profile, via
//! `cargo bench`) and, in the same command, the Python reference stack
//! (`scripts/anchor_bench.py`, wick's copy of `../shared/bench/anchor_bench.py`, or the suite's own torch script), then prints one table
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
    /// `scripts/anchor_bench.py` (wick's copy of `../shared/bench/anchor_bench.py`).
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
    // The Python anchor's counterpart of each wick case (none for the 48-px and three-pass
    // cases, which the ratio column then leaves empty).
    let anchor_case = |case: &str| match case {
        "decode" => Some("jpeg_decode"),
        "decode_resize160" => Some("jpeg_r160"),
        "train128" => Some("jpeg_tvaug128"),
        "train224" => Some("jpeg_tvaug224"),
        _ => None,
    };
    let what = |case: &str| -> String {
        match case {
            "decode" => "decode to RGB",
            "decode_resize160" => "decode + resize to 160 (PIL: short side 160)",
            "train128" => {
                "full train pipeline to 128 (torchvision: RRC+flip+rotate+jitter+normalize)"
            }
            "train224" => "full train pipeline to 224 (same)",
            "train48_96" => "full train pipeline, Resize(96) to 48 (the official profile)",
            "train224_three_pass" => "full train pipeline to 224 in fastai's order (three_pass)",
            "train48_96_three_pass" => "Resize(96) to 48 in fastai's order (three_pass)",
            other => other,
        }
        .to_string()
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
        let python = anchor_case(case)
            .and_then(|anchor| reference.get(&(src.clone(), anchor.to_string())).copied());
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

/// What `cargo xtask bench models` measures.
#[derive(Debug, Clone)]
pub(crate) struct ModelsOptions {
    /// `train<depth>_<size>` / `infer<depth>_<size>`.
    pub(crate) cases: Vec<String>,
    pub(crate) batches: Vec<usize>,
    /// Timed steps per process.
    pub(crate) steps: usize,
    /// Untimed steps per process before them.
    pub(crate) warmup: usize,
    /// Times each (case, batch) runs on each side, alternating wick and PyTorch.
    pub(crate) rounds: usize,
    /// Skip (case, batch) pairs whose images × pixels exceed this (memory).
    pub(crate) max_batch_pixels: usize,
    /// Also a separate profiled run of this case, by kernel and by convolution shape.
    pub(crate) profile: Option<String>,
    /// The batch size of that run.
    pub(crate) profile_batch: usize,
}

/// The step times of one (case, batch) on one side, over every round.
#[derive(Debug, Default, Clone)]
struct Side {
    times: Vec<f64>,
    peak_mb: Option<f64>,
}

impl Side {
    fn add(&mut self, times: &[f64], peak_mb: Option<f64>) {
        self.times.extend_from_slice(times);
        self.peak_mb = match (self.peak_mb, peak_mb) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }

    /// (median, first quartile, third quartile) of the step times, in images/s for `batch`.
    fn rates(&self, batch: usize) -> Option<(f64, f64, f64)> {
        let mut times = self.times.clone();
        if times.is_empty() {
            return None;
        }
        times.sort_by(f64::total_cmp);
        let at = |q: f64| {
            let position = q * (times.len() - 1) as f64;
            let (low, high) = (position.floor() as usize, position.ceil() as usize);
            times[low] + (times[high] - times[low]) * (position - low as f64)
        };
        let rate = |t: f64| batch as f64 / t;
        // A slower quartile of times is a lower rate.
        Some((rate(at(0.5)), rate(at(0.75)), rate(at(0.25))))
    }
}

fn step_times(line: &Value) -> Vec<f64> {
    line["step_times_s"]
        .as_array()
        .map(|times| times.iter().filter_map(Value::as_f64).collect())
        .unwrap_or_default()
}

fn case_pixels(case: &str) -> Option<usize> {
    case.rsplit_once('_').and_then(|(_, size)| size.parse::<usize>().ok()).map(|s| s * s)
}

/// The models suite: xresnet training steps (forward, loss, backward, Adam) and inference,
/// wick beside PyTorch running the same architecture (`anchor_bench.py`). Every (case, batch)
/// runs `rounds` times on each side in its own process, wick and PyTorch alternating (A B A
/// B), so drift of a shared machine falls on both; each process warms up, then times `steps`
/// steps; the table gives the median and the interquartile range of all timed steps and each
/// side's peak resident memory. The per-kernel profile is a separate, untimed run.
pub(crate) fn models(
    root: &Path,
    options: &BenchOptions,
    models: &ModelsOptions,
) -> anyhow::Result<String> {
    let steps = models.steps.to_string();
    let warmup = models.warmup.to_string();
    // Build once, then one process per case.
    json_lines(cargo().current_dir(root).args(MODELS_BENCH).arg("--no-run"))?;
    let mut runs: Vec<(String, usize)> = Vec::new();
    let mut skipped: Vec<String> = Vec::new();
    for case in &models.cases {
        let pixels = case_pixels(case).with_context(|| {
            format!("case {case}: expected train<depth>_<size> or infer<depth>_<size>")
        })?;
        for &batch in &models.batches {
            if batch * pixels > models.max_batch_pixels {
                skipped.push(format!("{case} at batch {batch}"));
            } else {
                runs.push((case.clone(), batch));
            }
        }
    }
    let mut wick: BTreeMap<(String, usize), Side> = BTreeMap::new();
    let mut torch: BTreeMap<(String, usize), Side> = BTreeMap::new();
    for round in 0..models.rounds {
        for (case, batch) in &runs {
            eprintln!("round {}/{}: {case} batch {batch}", round + 1, models.rounds);
            let batch_text = batch.to_string();
            let lines = models_bench(
                root,
                &["--case", case, "--batch", &batch_text, "--steps", &steps, "--warmup", &warmup],
            )?;
            for line in lines.iter().filter(|l| l["bench"] == "models") {
                wick.entry((case.clone(), *batch))
                    .or_default()
                    .add(&step_times(line), line["peak_rss_mb"].as_f64());
            }
            if let Some(python) = &options.python {
                let (times, peak) =
                    anchor_case(python, &options.anchor, case, *batch, &steps, &warmup)?;
                torch.entry((case.clone(), *batch)).or_default().add(&times, peak);
            }
        }
    }
    let mut table = format!(
        "Each side: {} process(es) per row, alternating wick and PyTorch, {} warm-up + {} timed steps each; \
         images/s of the median step, [interquartile range]. A training step is forward, \
         cross-entropy, backward and Adam (fastai's defaults) on both sides.\n\n\
         | case | batch | wick img/s | PyTorch img/s | wick/PyTorch | wick peak MB | PyTorch peak MB |\n|---|---|---|---|---|---|---|\n",
        models.rounds, models.warmup, models.steps
    );
    let dash = || "–".to_string();
    for (case, batch) in &runs {
        let key = (case.clone(), *batch);
        let w = wick.get(&key).and_then(|side| side.rates(*batch));
        let t = torch.get(&key).and_then(|side| side.rates(*batch));
        let cell = |rates: Option<(f64, f64, f64)>| {
            rates.map(|(m, lo, hi)| format!("{m:.2} [{lo:.2}–{hi:.2}]")).unwrap_or_else(dash)
        };
        let ratio = match (w, t) {
            (Some((w, ..)), Some((t, ..))) => format!("{:.2}x", w / t),
            _ => dash(),
        };
        let peak = |map: &BTreeMap<(String, usize), Side>| {
            map.get(&key)
                .and_then(|side| side.peak_mb)
                .map(|p| format!("{p:.0}"))
                .unwrap_or_else(dash)
        };
        table.push_str(&format!(
            "| {case} | {batch} | {} | {} | {ratio} | {} | {} |\n",
            cell(w),
            cell(t),
            peak(&wick),
            peak(&torch)
        ));
    }
    if !skipped.is_empty() {
        table.push_str(&format!(
            "\nNot run (over --max-batch-pixels, memory): {}.\n",
            skipped.join(", ")
        ));
    }
    if let Some(case) = &models.profile {
        let batch = models.profile_batch.to_string();
        let lines = models_bench(
            root,
            &[
                "--case",
                case,
                "--batch",
                &batch,
                "--steps",
                &steps,
                "--warmup",
                &warmup,
                "--profile",
            ],
        )?;
        table.push_str(&format!(
            "\nA training step of {case}, batch {batch}, by wick-nn kernel: the mean of {steps} \
             steps of a separate profiled run (the profiler's own cost is in it; it is not timed \
             above):\n\n| op | ms | calls |\n|---|---|---|\n"
        ));
        for op in lines.iter().filter(|l| l["bench"] == "models-ops") {
            table.push_str(&format!(
                "| {} | {:.1} | {} |\n",
                op["op"].as_str().unwrap_or("?"),
                op["ms"].as_f64().unwrap_or(f64::NAN),
                op["calls"]
            ));
        }
        // PyTorch's side profiles training steps only (`--op-split`).
        let torch = match &options.python {
            Some(python) if case.starts_with("train") => {
                anchor_conv_split(python, &options.anchor, case, &batch, &steps, &warmup)?
            }
            _ => Vec::new(),
        };
        table.push_str(&conv_split_table(&lines, &torch));
    }
    Ok(table)
}

/// The step's convolutions shape by shape, wick's profiled passes beside PyTorch's
/// (`anchor_bench.py --op-split`; empty without Python): ms per step, forward and backward
/// (wick's input and weight gradients together, as PyTorch's `convolution_backward` computes
/// them), most time first.
fn conv_split_table(wick: &[Value], torch: &[Value]) -> String {
    // conv -> [wick forward, wick backward, PyTorch forward, PyTorch backward], and calls.
    let mut rows: BTreeMap<String, ([Option<f64>; 4], f64)> = BTreeMap::new();
    for line in wick.iter().chain(torch).filter(|l| l["bench"] == "models-conv") {
        let (Some(conv), Some(ms)) = (line["conv"].as_str(), line["ms"].as_f64()) else {
            continue;
        };
        let is_torch = line["impl"] == "pytorch";
        let forward = line["op"] == "wick-conv2d" || line["pass"] == "forward";
        let slot = usize::from(is_torch) * 2 + usize::from(!forward);
        let (times, calls) = rows.entry(conv.to_string()).or_default();
        times[slot] = Some(times[slot].unwrap_or(0.0) + ms);
        if forward && !is_torch {
            *calls = line["calls"].as_f64().unwrap_or(f64::NAN);
        }
    }
    let mut rows: Vec<_> = rows.into_iter().collect();
    let wick_total = |t: &[Option<f64>; 4]| t[0].unwrap_or(0.0) + t[1].unwrap_or(0.0);
    rows.sort_by(|a, b| wick_total(&b.1.0).total_cmp(&wick_total(&a.1.0)));
    let cell = |v: Option<f64>| v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into());
    // PyTorch's time over wick's, both passes, where both sides have both passes.
    let ratio = |t: &[Option<f64>; 4]| match (t[0].zip(t[1]), t[2].zip(t[3])) {
        (Some((wf, wb)), Some((tf, tb))) if wf + wb > 0.0 => Some((wf + wb, tf + tb)),
        _ => None,
    };
    let mut table = String::from(
        "\nIts convolutions shape by shape (nn bench case names), ms per step, wick's profiled \
         passes beside PyTorch's (`anchor_bench.py --op-split`: the same steps under \
         torch.profiler, `aten::convolution` and `aten::convolution_backward` inclusive); \
         backward is both gradients; \"all\" sums each column, its ratio over the shapes both \
         sides ran:\n\n| convolution | calls | wick forward | PyTorch forward | \
         wick backward | PyTorch backward | PyTorch/wick (both passes) |\n|---|---|---|---|---|---|---|\n",
    );
    // One table row: the four passes in column order, and the ratio of a (wick, PyTorch) pair.
    let row = |name: &str, calls: &str, t: &[Option<f64>; 4], pair: Option<(f64, f64)>| {
        let ratio = pair.map(|(w, p)| format!("{:.2}", p / w)).unwrap_or_else(|| "–".into());
        let calls = if calls.is_empty() { String::new() } else { format!("{calls} ") };
        format!(
            "| {name} | {calls}| {} | {} | {} | {} | {ratio} |\n",
            cell(t[0]),
            cell(t[2]),
            cell(t[1]),
            cell(t[3])
        )
    };
    let mut sums = [None::<f64>; 4];
    let (mut both_wick, mut both_torch) = (0.0, 0.0);
    for (conv, (times, calls)) in &rows {
        for (sum, t) in sums.iter_mut().zip(times) {
            if let Some(t) = t {
                *sum = Some(sum.unwrap_or(0.0) + t);
            }
        }
        let pair = ratio(times);
        if let Some((w, t)) = pair {
            (both_wick, both_torch) = (both_wick + w, both_torch + t);
        }
        table.push_str(&row(conv, &calls.to_string(), times, pair));
    }
    let all = (both_wick > 0.0).then_some((both_wick, both_torch));
    table.push_str(&row("all", "", &sums, all));
    table
}

/// `anchor_bench.py --op-split` for `case`: its `models-conv` lines.
fn anchor_conv_split(
    python: &Path,
    anchor: &Path,
    case: &str,
    batch: &str,
    steps: &str,
    warmup: &str,
) -> anyhow::Result<Vec<Value>> {
    let mut command = Command::new(python);
    command.arg(anchor).args([
        "--cases",
        case,
        "--op-split",
        "--no-isolate",
        "--no-env",
        "--bs",
        batch,
        "--steps",
        steps,
        "--warmup",
        warmup,
    ]);
    json_lines(&mut command)
}

/// `cargo bench` of wick-train's models bench (release profile).
const MODELS_BENCH: [&str; 6] = ["bench", "--quiet", "-p", "wick-train", "--bench", "models"];

/// One process of the models bench with `args` after `--`; its JSON lines.
fn models_bench(root: &Path, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    json_lines(cargo().current_dir(root).args(MODELS_BENCH).arg("--").args(args))
}

/// One case of the PyTorch reference in its own process: its timed step times and its peak
/// resident memory in MB (from `/usr/bin/time`, so the interpreter and torch's libraries are
/// in it, as they are in a user's process).
fn anchor_case(
    python: &Path,
    anchor: &Path,
    case: &str,
    batch: usize,
    steps: &str,
    warmup: &str,
) -> anyhow::Result<(Vec<f64>, Option<f64>)> {
    let mut command = Command::new("/usr/bin/time");
    command.args(["-f", "peak_rss_kb=%M"]).arg(python).arg(anchor).args([
        "--cases",
        case,
        "--no-isolate",
        "--no-env",
        "--bs",
        &batch.to_string(),
        "--steps",
        steps,
        "--min-steps",
        steps,
        "--warmup",
        warmup,
        "--budget",
        "1e9",
    ]);
    eprintln!("$ {command:?}");
    let output = command
        .stderr(std::process::Stdio::piped())
        .output()
        .with_context(|| format!("running {command:?}"))?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        bail!("{command:?} failed with {}:\n{stderr}", output.status);
    }
    let peak = stderr
        .lines()
        .find_map(|l| l.strip_prefix("peak_rss_kb="))
        .and_then(|kb| kb.trim().parse::<f64>().ok())
        .map(|kb| kb / 1024.0);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let times = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|line| line["images_per_s"].is_number())
        .map(|line| step_times(&line))
        .with_context(|| format!("{command:?} printed no case result"))?;
    Ok((times, peak))
}

#[cfg(test)]
mod tests {
    use super::conv_split_table;
    use serde_json::json;

    /// wick's two gradients add into "backward"; a shape only one side ran gets no ratio and
    /// stays out of the "all" ratio; the rows come most wick time first.
    #[test]
    fn conv_split_table_lines_up_both_sides() {
        let wick = [
            json!({"bench": "models-conv", "impl": "wick", "op": "wick-conv2d", "conv": "c3x3_64_12", "ms": 2.0, "calls": 4.0}),
            json!({"bench": "models-conv", "impl": "wick", "op": "wick-conv2d-backward-input", "conv": "c3x3_64_12", "ms": 3.0, "calls": 4.0}),
            json!({"bench": "models-conv", "impl": "wick", "op": "wick-conv2d-backward-weight", "conv": "c3x3_64_12", "ms": 5.0, "calls": 4.0}),
            json!({"bench": "models-conv", "impl": "wick", "op": "wick-conv2d", "conv": "c1x1_64_128_6", "ms": 1.0, "calls": 1.0}),
            json!({"bench": "models-conv", "impl": "wick", "op": "wick-conv2d-backward-weight", "conv": "c1x1_64_128_6", "ms": 1.0, "calls": 1.0}),
            json!({"bench": "models-ops", "op": "wick-conv2d", "ms": 99.0, "calls": 5.0}),
        ];
        let torch = [
            json!({"bench": "models-conv", "impl": "pytorch", "conv": "c3x3_64_12", "pass": "forward", "ms": 4.0, "calls": 4.0}),
            json!({"bench": "models-conv", "impl": "pytorch", "conv": "c3x3_64_12", "pass": "backward", "ms": 11.0, "calls": 4.0}),
            json!({"case": "train18_48", "kind": "op_split"}),
        ];
        let table = conv_split_table(&wick, &torch);
        let rows: Vec<&str> = table
            .lines()
            .filter(|l| {
                (l.starts_with("| c") && !l.starts_with("| convolution")) || l.starts_with("| all")
            })
            .collect();
        assert_eq!(rows[0], "| c3x3_64_12 | 4 | 2.0 | 4.0 | 8.0 | 11.0 | 1.50 |");
        assert_eq!(rows[1], "| c1x1_64_128_6 | 1 | 1.0 | – | 1.0 | – | – |");
        assert_eq!(rows[2], "| all | | 3.0 | 4.0 | 9.0 | 11.0 | 1.50 |");
        assert!(conv_split_table(&wick, &[]).contains("| all | | 3.0 | – | 9.0 | – | – |"));
    }
}
