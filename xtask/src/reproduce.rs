//! `cargo xtask reproduce chapter7`: builds the release `wick` binary and runs every recipe of
//! `recipes/<chapter>/` with one profile, then writes `report.md`, the same content as one
//! self-contained `report.html` (pictures inlined; `report_html`), and `report.json` comparing
//! each result with the book and with the accepted band in `recipes/<chapter>/expected.toml`.
//! Finished experiments are skipped and an interrupted one resumes (the binary resumes from
//! its checkpoint), so rerunning the command continues where it stopped. It never trains in
//! this process.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// What to reproduce.
#[derive(Debug, Clone)]
pub(crate) struct ReproduceOptions {
    pub(crate) chapter: String,
    pub(crate) profile: String,
    pub(crate) data: Option<PathBuf>,
    pub(crate) out: PathBuf,
    pub(crate) device: String,
    pub(crate) cuda: bool,
    pub(crate) seed: Option<u64>,
    /// Run only these experiments (and what they need).
    pub(crate) only: Vec<String>,
}

/// The chapter-7 experiments in the chapter's order; other recipes follow alphabetically.
const CHAPTER7_ORDER: [&str; 6] =
    ["baseline", "normalize", "progressive", "tta", "mixup", "label_smoothing"];

/// One experiment's recipe, as far as the orchestrator needs it.
#[derive(Debug, Clone)]
struct Experiment {
    name: String,
    recipe: PathBuf,
    /// `from = "..."`: an evaluation of another experiment's model (TTA).
    from: Option<String>,
    book_accuracy: Option<f64>,
    book_source: String,
    /// One sentence on what the experiment does (the recipe's `description`).
    description: String,
}

fn experiments(dir: &Path) -> anyhow::Result<Vec<Experiment>> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry?.path();
        let is_recipe = path.extension().is_some_and(|e| e == "toml")
            && path.file_stem().is_some_and(|s| s != "expected");
        if !is_recipe {
            continue;
        }
        let table: toml::Table = std::fs::read_to_string(&path)?
            .parse()
            .with_context(|| format!("parsing {}", path.display()))?;
        let name = table
            .get("name")
            .and_then(toml::Value::as_str)
            .with_context(|| format!("{} has no name", path.display()))?
            .to_string();
        let book = table.get("book").and_then(toml::Value::as_table);
        found.push(Experiment {
            name,
            from: table.get("from").and_then(toml::Value::as_str).map(str::to_string),
            book_accuracy: book.and_then(|b| b.get("accuracy")).and_then(toml::Value::as_float),
            book_source: book
                .and_then(|b| b.get("source"))
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_string(),
            description: table
                .get("description")
                .and_then(toml::Value::as_str)
                .unwrap_or("")
                .to_string(),
            recipe: path,
        });
    }
    found.sort_by_key(|e| {
        (CHAPTER7_ORDER.iter().position(|n| *n == e.name).unwrap_or(usize::MAX), e.name.clone())
    });
    Ok(found)
}

pub(crate) fn reproduce(root: &Path, options: &ReproduceOptions) -> anyhow::Result<()> {
    let recipes = root.join("recipes").join(&options.chapter);
    let mut all = experiments(&recipes)?;
    if !options.only.is_empty() {
        let mut wanted: Vec<String> = options.only.clone();
        // An evaluation needs the experiment it evaluates.
        for experiment in &all {
            if wanted.contains(&experiment.name)
                && let Some(from) = &experiment.from
                && !wanted.contains(from)
            {
                wanted.push(from.clone());
            }
        }
        if let Some(unknown) =
            options.only.iter().find(|name| !all.iter().any(|e| &e.name == *name))
        {
            bail!(
                "--only {unknown}: no such experiment in {} ({})",
                recipes.display(),
                all.iter().map(|e| e.name.as_str()).collect::<Vec<_>>().join(", ")
            );
        }
        all.retain(|e| wanted.contains(&e.name));
    }
    let data = resolve_data(root, options.data.as_deref())?;
    let wick = build_wick(root, options.cuda)?;
    let out = root.join(&options.out);
    std::fs::create_dir_all(&out).with_context(|| format!("creating {}", out.display()))?;
    if options.profile == "full" && options.device == "cpu" {
        eprintln!(
            "warning: the full profile is chapter 7 at GPU scale (xresnet50 at 224 px): on a CPU expect days \
             (about 5 h per epoch on 2 cores at PyTorch's speed). Use --profile quick, or --device cuda:0."
        );
    }
    let total_epochs: usize = all.iter().filter(|e| e.from.is_none()).count() * 5;
    eprintln!(
        "{} experiments, profile {}, about {total_epochs} epochs in all; data {}",
        all.len(),
        options.profile,
        data.display()
    );
    for experiment in &all {
        let dir = out.join(&experiment.name);
        if dir.join("result.json").is_file() {
            eprintln!(
                "== {}: finished earlier ({})",
                experiment.name,
                dir.join("result.json").display()
            );
            continue;
        }
        eprintln!("== {}", experiment.name);
        let status = match &experiment.from {
            Some(from) => {
                // `wick tta` reads the recipe's [tta] section itself.
                let mut command = Command::new(&wick);
                command
                    .arg("tta")
                    .arg("--run")
                    .arg(out.join(from))
                    .arg("--out")
                    .arg(&dir)
                    .arg("--recipe")
                    .arg(&experiment.recipe)
                    .arg("--device")
                    .arg(&options.device);
                run(&mut command)?
            }
            None => {
                let mut command = Command::new(&wick);
                command
                    .arg("train")
                    .arg("--recipe")
                    .arg(&experiment.recipe)
                    .arg("--profile")
                    .arg(&options.profile)
                    .arg("--data")
                    .arg(&data)
                    .arg("--out")
                    .arg(&dir)
                    .arg("--device")
                    .arg(&options.device);
                if let Some(seed) = options.seed {
                    command.arg("--seed").arg(seed.to_string());
                }
                let status = run(&mut command)?;
                if status.success() {
                    run(Command::new(&wick)
                        .arg("eval")
                        .arg("--run")
                        .arg(&dir)
                        .arg("--device")
                        .arg(&options.device))?
                } else {
                    status
                }
            }
        };
        if status.code() == Some(130) {
            bail!("{} was interrupted; rerun the same command to resume it", experiment.name);
        }
        if !status.success() {
            bail!("{} failed ({status}); rerun the same command to resume it", experiment.name);
        }
    }
    let expected = load_expected(&recipes.join("expected.toml"), &options.profile)?;
    let outside = write_report(&out, &all, &expected, options)?;
    eprintln!(
        "wrote {}, {} (self-contained: open it in a browser) and {}",
        out.join("report.md").display(),
        out.join("report.html").display(),
        out.join("report.json").display()
    );
    if !outside.is_empty() {
        bail!("outside their accepted band: {}", outside.join(", "));
    }
    Ok(())
}

/// `--data`, or the chapter's dataset (full-size imagenette2) from wick's cache, or a download
/// — failing fast, before any build, when there is no network.
pub(crate) fn resolve_data(root: &Path, data: Option<&Path>) -> anyhow::Result<PathBuf> {
    if let Some(data) = data {
        let path = if data.is_absolute() { data.to_path_buf() } else { root.join(data) };
        if !path.exists() {
            bail!("--data {}: no such file or folder", path.display());
        }
        return Ok(path);
    }
    let cache = std::env::var_os("WICK_DATA")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("XDG_CACHE_HOME").map(|d| PathBuf::from(d).join("wick")))
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/wick")))
        .unwrap_or_else(|| PathBuf::from(".wick-data"));
    let cached = cache.join("imagenette2");
    if cached.is_dir() {
        return Ok(cached);
    }
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&("s3.amazonaws.com", 443))
        .ok()
        .and_then(|mut addrs| addrs.next())
        .is_some_and(|addr| {
            std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)).is_ok()
        });
    if !reachable {
        bail!(
            "no network to download Imagenette (s3.amazonaws.com unreachable) and no copy in {}.\n\
             Point at a local copy: cargo xtask reproduce chapter7 --data PATH (a folder with train/ and val/, \
             or imagenette2.tgz), e.g. --data ../shared/data/imagenette2-224",
            cached.display()
        );
    }
    // The binary downloads it (resumable, checksummed) when given the dataset's name.
    Ok(PathBuf::from("imagenette2"))
}

pub(crate) fn build_wick(root: &Path, cuda: bool) -> anyhow::Result<PathBuf> {
    let mut command = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).args(["build", "--release", "-p", "wick-cli"]);
    if cuda {
        // cuDNN for the convolutions: candle's own CUDA conv backward is a naive kernel.
        command.args(["--features", "cuda,cudnn"]);
    }
    let status = run(&mut command)?;
    if !status.success() {
        bail!("building the release wick binary failed");
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    Ok(target.join("release/wick"))
}

pub(crate) fn run(command: &mut Command) -> anyhow::Result<std::process::ExitStatus> {
    eprintln!("$ {command:?}");
    command.status().with_context(|| format!("running {command:?}"))
}

/// An accepted band for one experiment and profile.
#[derive(Debug, Clone)]
struct Band {
    low: f64,
    high: f64,
    note: String,
}

fn load_expected(path: &Path, profile: &str) -> anyhow::Result<BTreeMap<String, Band>> {
    let mut bands = BTreeMap::new();
    if !path.is_file() {
        return Ok(bands);
    }
    let table: toml::Table = std::fs::read_to_string(path)?
        .parse()
        .with_context(|| format!("parsing {}", path.display()))?;
    let Some(profile_table) = table.get(profile).and_then(toml::Value::as_table) else {
        return Ok(bands);
    };
    for (name, value) in profile_table {
        let band = value
            .as_table()
            .with_context(|| format!("{}: [{profile}.{name}] must be a table", path.display()))?;
        let number = |key: &str| {
            band.get(key).and_then(|v| v.as_float().or_else(|| v.as_integer().map(|i| i as f64)))
        };
        let (Some(low), Some(high)) = (number("low"), number("high")) else {
            bail!("{}: [{profile}.{name}] needs low and high", path.display());
        };
        let note = band.get("measured").and_then(toml::Value::as_str).unwrap_or("").to_string();
        bands.insert(name.clone(), Band { low, high, note });
    }
    Ok(bands)
}

fn read_json(path: &Path) -> Option<Value> {
    std::fs::read_to_string(path).ok().and_then(|text| serde_json::from_str(&text).ok())
}

fn minutes(seconds: f64) -> String {
    format!("{}:{:02}", (seconds / 60.0) as u64, (seconds % 60.0) as u64)
}

/// `Time: 2:08 (training batches 79%, validation batches 6%, waiting for data 1%, other 14%).`
/// from a run's `result.json` (`seconds` and the `time_split` that `wick train` writes), or
/// `None` when the run has no split (it resumed from an older wick's checkpoint).
fn time_split_sentence(result: &Value) -> Option<String> {
    let seconds = result["seconds"].as_f64().filter(|&s| s > 0.0)?;
    let split = &result["time_split"];
    let parts = [
        ("training batches", "train_batches"),
        ("validation batches", "valid_batches"),
        ("waiting for data", "data_wait"),
        ("other", "other"),
    ];
    let shares = parts
        .iter()
        .map(|(name, key)| Some(format!("{name} {:.0}%", 100.0 * split[key].as_f64()? / seconds)))
        .collect::<Option<Vec<_>>>()?;
    Some(format!("Time: {} ({}).", minutes(seconds), shares.join(", ")))
}

/// Writes report.md, report.html and report.json; returns the experiments outside their band.
fn write_report(
    out: &Path,
    all: &[Experiment],
    bands: &BTreeMap<String, Band>,
    options: &ReproduceOptions,
) -> anyhow::Result<Vec<String>> {
    let mut md = String::new();
    let mut rows = Vec::new();
    let mut outside = Vec::new();
    writeln!(md, "# Chapter 7 reproduced with wick — profile `{}`\n", options.profile)?;
    writeln!(
        md,
        "Command: `cargo xtask {}`\n",
        std::env::args().skip(1).collect::<Vec<_>>().join(" ")
    )?;
    writeln!(md, "| experiment | accuracy | accepted band | book | difference | time |")?;
    writeln!(md, "|---|---|---|---|---|---|")?;
    for experiment in all {
        let dir = out.join(&experiment.name);
        let result = read_json(&dir.join("result.json")).unwrap_or(Value::Null);
        let accuracy = result["accuracy"].as_f64();
        let band = bands.get(&experiment.name);
        let inside = match (accuracy, band) {
            (Some(a), Some(b)) => Some(a >= b.low && a <= b.high),
            _ => None,
        };
        if inside == Some(false) {
            outside.push(experiment.name.clone());
        }
        let fmt = |v: Option<f64>| v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".to_string());
        let band_text = band
            .map(|b| {
                format!(
                    "[{:.3}, {:.3}]{}",
                    b.low,
                    b.high,
                    if inside == Some(false) { " **outside**" } else { "" }
                )
            })
            .unwrap_or_else(|| "–".to_string());
        let difference = match (accuracy, experiment.book_accuracy) {
            (Some(a), Some(b)) => format!("{:+.4}", a - b),
            _ => "–".to_string(),
        };
        let seconds = result["seconds"].as_f64();
        writeln!(
            md,
            "| {} | {} | {} | {} | {} | {} |",
            experiment.name,
            fmt(accuracy),
            band_text,
            fmt(experiment.book_accuracy),
            difference,
            seconds.map(minutes).unwrap_or_else(|| "–".to_string())
        )?;
        rows.push(json!({
            "experiment": experiment.name,
            "accuracy": accuracy,
            "band": band.map(|b| json!({"low": b.low, "high": b.high, "measured": b.note})),
            "inside_band": inside,
            "book_accuracy": experiment.book_accuracy,
            "book_source": experiment.book_source,
            "seconds": seconds,
            "result": result,
        }));
    }
    writeln!(
        md,
        "\nBook numbers: the stored outputs of fastbook's chapter 7 notebook, \"Training a State-of-the-Art Model\" \
        ([07_sizing_and_tta.ipynb](https://github.com/fastai/fastbook/blob/master/07_sizing_and_tta.ipynb)), made on a GPU with xresnet50 at 224 px; \
        only the `full` profile is comparable with them. Bands come from `recipes/{}/expected.toml` (measured over several seeds).",
        options.chapter
    )?;
    for experiment in all {
        let dir = out.join(&experiment.name);
        let Some(result) = read_json(&dir.join("result.json")) else { continue };
        writeln!(md, "\n## {}\n", experiment.name)?;
        if !experiment.description.is_empty() {
            writeln!(md, "{}\n", experiment.description)?;
        }
        if let Some(source) = Some(&experiment.book_source).filter(|s| !s.is_empty()) {
            writeln!(md, "Book: {source}.\n")?;
        }
        if experiment.from.is_some() {
            writeln!(
                md,
                "TTA accuracy {:.4} (plain pass {:.4}).",
                result["accuracy"].as_f64().unwrap_or(f64::NAN),
                result["plain_accuracy"].as_f64().unwrap_or(f64::NAN)
            )?;
            continue;
        }
        for stage in result["stages"].as_array().into_iter().flatten() {
            writeln!(
                md,
                "Stage {} ({} px, batch size {}):\n",
                stage["stage"], stage["size"], stage["batch_size"]
            )?;
            for table in stage["tables"].as_array().into_iter().flatten() {
                writeln!(md, "```\n{}\n```\n", table.as_str().unwrap_or(""))?;
            }
            let stage_dir = format!("{}/stage-{}", experiment.name, stage["stage"]);
            writeln!(md, "![loss]({stage_dir}/loss.png) ![schedule]({stage_dir}/schedule.png)\n")?;
        }
        if let Some(sentence) = time_split_sentence(&result) {
            writeln!(md, "{sentence}\n")?;
        }
        if let Some(eval) = read_json(&dir.join("eval.json")) {
            writeln!(
                md,
                "Validation: accuracy {:.4}, top-5 {:.4}.\n",
                eval["accuracy"].as_f64().unwrap_or(f64::NAN),
                eval["top5_accuracy"].as_f64().unwrap_or(f64::NAN)
            )?;
            writeln!(
                md,
                "![confusion matrix]({0}/confusion.png) ![top losses]({0}/top_losses.png)",
                experiment.name
            )?;
        }
    }
    atomic_write(&out.join("report.md"), &md)?;
    let title = format!("Chapter 7 reproduced with wick — profile {}", options.profile);
    let (html, missing) = crate::report_html::report_html(&md, out, &title);
    for path in &missing {
        eprintln!(
            "report.html: picture {} could not be inlined (missing or not an image)",
            path.display()
        );
    }
    atomic_write(&out.join("report.html"), &html)?;
    let report =
        json!({ "chapter": options.chapter, "profile": options.profile, "experiments": rows });
    atomic_write(&out.join("report.json"), &serde_json::to_string_pretty(&report)?)?;
    Ok(outside)
}

fn atomic_write(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("tmp");
    std::fs::write(&temporary, text).with_context(|| format!("writing {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_split_sentence_gives_each_part_as_a_share_of_the_run() {
        let result = json!({
            "seconds": 128.0,
            "time_split": {"train_batches": 101.12, "valid_batches": 7.68, "data_wait": 1.28,
                           "other": 17.92},
        });
        assert_eq!(
            time_split_sentence(&result).unwrap(),
            "Time: 2:08 (training batches 79%, validation batches 6%, waiting for data 1%, other 14%)."
        );
        // A run resumed from an older wick's checkpoint has no split; a run of no seconds has no shares.
        assert_eq!(time_split_sentence(&json!({"seconds": 128.0, "time_split": null})), None);
        assert_eq!(
            time_split_sentence(&json!({"seconds": 0.0, "time_split": result["time_split"]})),
            None
        );
    }
}
