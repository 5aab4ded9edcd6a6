//! `wick eval`, `wick tta`, `wick predict`, `wick summary` and `wick lr-find`: everything that
//! reads a trained model (or builds one to inspect) without training it.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::{D, Device, ModuleT, Tensor};
use serde_json::json;
use wick_data::{BadFilePolicy, DataLoader};
use wick_eval::{
    Blend, accuracy, confusion_matrix, get_preds, per_class_accuracy, plot_confusion_matrix,
    plot_top_losses, top_k_accuracy, top_losses, tta,
};

use crate::data_report::{DataReport, path_text};
use crate::plan::{self, ModelPlan, Plan, PlanArgs};
use crate::recipe::TtaSection;
use crate::run_dir::RunDir;
use crate::train::{load_run, run_data_root};

/// The validation loader of a finished run: its recorded validation images at the last
/// stage's size, pre-scanned under the run's `bad_files` policy like training was, with the
/// report of what was left out (printed; the caller stores it with its results).
fn valid_loader(
    run_dir: &RunDir,
    plan: &Plan,
    data: Option<&str>,
) -> anyhow::Result<(DataLoader, DataReport)> {
    let root = run_data_root(run_dir, data)?;
    let items = run_dir.read_items("valid.txt", &root)?;
    // The images must be the ones the run recorded (another --data, or files changed since).
    let vocab = run_dir.read_vocab()?;
    let fingerprint = crate::run_dir::DataFingerprint::of(&root, &vocab, &[("valid", &items)]);
    let skip = plan.data.bad_files == BadFilePolicy::Skip;
    if let Some(note) = run_dir.check_valid(&fingerprint, skip)? {
        println!("{note}");
    }
    let (items, bad) = wick_data::scan_items(&items, &plan.scan_config())?;
    let mut report = DataReport::new(&root, plan.data.bad_files, items.len() + bad.len());
    report.add(bad);
    plan::check_bad_files(&report, None)?;
    if items.is_empty() {
        bail!("none of the run's {} validation images is usable", report.listed);
    }
    report.set_splits(&vocab, &[("valid", &items)]);
    println!("{}", report.summary(5));
    Ok((plan.eval_loader(items)?, report))
}

/// The files an evaluation left out (pre-scan and mid-pass), as JSON entries.
fn skipped_json(report: &mut DataReport, loader: &DataLoader) -> serde_json::Value {
    for failed in report.add_batch_failures(&[loader.skip_log()]) {
        println!("skipped while loading: {} ({})", failed.path.display(), failed.reason);
    }
    report.to_json()["skipped"].clone()
}

/// `wick eval --run DIR`: accuracy, top-5, per-class accuracy, the confusion matrix and the top
/// losses of a finished run, written to `eval.json`, `confusion.png` and `top_losses.png`.
pub(crate) fn eval(run: &Path, data: Option<&str>, device: &str) -> anyhow::Result<()> {
    let device = plan::device(device)?;
    let run_dir = RunDir::open(run)?;
    let _lock = run_dir.lock("eval")?;
    let (plan, model, _) = load_run(&run_dir, device)?;
    let vocab = run_dir.read_vocab()?;
    let (loader, mut report) = valid_loader(&run_dir, &plan, data)?;
    let preds = get_preds(&model, &loader, 0)?;
    let matrix = confusion_matrix(&preds, model.config().n_out)?;
    let per_class = per_class_accuracy(&matrix);
    let acc = accuracy(&preds)?;
    let top5 = top_k_accuracy(&preds, 5)?;
    println!("{}: accuracy {acc:.4}, top-5 {top5:.4} on {} images", plan.name, preds.targets.len());
    for report in per_class.iter().filter(|r| r.total > 0) {
        println!(
            "  {:<30} {:.4} ({}/{})",
            vocab.name(report.class).map_or_else(|| "?".to_string(), wick_data::display_name),
            report.accuracy(),
            report.correct,
            report.total
        );
    }
    plot_confusion_matrix(
        &wick_eval::ConfusionMatrix {
            counts: matrix.counts[..vocab.len()]
                .iter()
                .map(|row| row[..vocab.len()].to_vec())
                .collect(),
        },
        &vocab,
        &run_dir.path("confusion.png"),
    )?;
    let losses = top_losses(&preds, 9)?;
    plot_top_losses(&losses, loader.items(), &vocab, 128, &run_dir.path("top_losses.png"))?;
    let result = json!({
        "accuracy": acc,
        "top5_accuracy": top5,
        "n_images": preds.targets.len(),
        "skipped": skipped_json(&mut report, &loader),
        "top_losses": losses.iter().map(|row| json!({
            "path": path_text(loader.items().paths[row.item].strip_prefix(&report.root).unwrap_or(&loader.items().paths[row.item])),
            "actual": vocab.name(row.actual),
            "predicted": vocab.name(row.predicted),
            "loss": row.loss,
        })).collect::<Vec<_>>(),
        "per_class": per_class.iter().map(|r| json!({"class": vocab.name(r.class), "correct": r.correct, "total": r.total})).collect::<Vec<_>>(),
    });
    run_dir.write("eval.json", &serde_json::to_string_pretty(&result)?)?;
    println!("wrote eval.json, confusion.png and top_losses.png in {}", run_dir.root.display());
    Ok(())
}

/// What `wick tta` was asked to do.
pub(crate) struct TtaArgs {
    pub(crate) run: PathBuf,
    pub(crate) out: Option<PathBuf>,
    pub(crate) data: Option<String>,
    pub(crate) device: String,
    /// A recipe whose `[tta]` section gives the settings the flags leave unset.
    pub(crate) recipe: Option<PathBuf>,
    pub(crate) n: Option<usize>,
    pub(crate) beta: Option<f64>,
    /// `true` forces the max blend; `false` leaves it to the recipe.
    pub(crate) use_max: bool,
}

/// The TTA settings `wick tta` puts over the run's plan (whose own come from its recipe's
/// `[tta]`, else fastai's `TtaConfig::default()`): each flag if given, else the `--recipe`'s
/// `[tta]` value.
///
/// # Errors
/// A `--recipe` that does not load or has no `[tta]` section; a beta outside [0, 1].
fn tta_overrides(args: &TtaArgs) -> anyhow::Result<TtaSection> {
    let section = match &args.recipe {
        Some(path) => {
            let (recipe, _) = crate::recipe::load(path, "full")?;
            Some(recipe.tta.with_context(|| {
                format!("{}: no [tta] section (n, beta, use_max) to run", path.display())
            })?)
        }
        None => None,
    };
    if let Some(beta) = args.beta {
        crate::recipe::check_beta(beta).context("--beta")?;
    }
    Ok(TtaSection {
        n: args.n.or(section.as_ref().and_then(|s| s.n)),
        beta: args.beta.or(section.as_ref().and_then(|s| s.beta)),
        use_max: args.use_max.then_some(true).or(section.as_ref().and_then(|s| s.use_max)),
    })
}

/// `wick tta --run DIR`: fastai's `learn.tta()` on a finished run's validation images; writes
/// `result.json` (TTA and plain accuracy) into `--out` (default: the run itself, as
/// `tta.json`).
pub(crate) fn run_tta(args: &TtaArgs) -> anyhow::Result<()> {
    let overrides = tta_overrides(args)?;
    let device = plan::device(&args.device)?;
    let run_dir = RunDir::open(&args.run)?;
    // The folder tta writes into is locked; --out must not hold another run's files.
    let out_dir = match &args.out {
        Some(out) => {
            check_tta_out(out)?;
            Some(RunDir::create(out)?)
        }
        None => None,
    };
    let _lock = out_dir.as_ref().unwrap_or(&run_dir).lock("tta")?;
    let (plan, model, _) = load_run(&run_dir, device)?;
    let config = plan.tta.with(Some(&overrides)).context("tta.beta")?.config();
    let (loader, mut report) = valid_loader(&run_dir, &plan, args.data.as_deref())?;
    let started = std::time::Instant::now();
    let (blended, plain) = tta(&model, &loader, &config)?;
    let (tta_accuracy, plain_accuracy) = (accuracy(&blended)?, accuracy(&plain)?);
    println!(
        "{}: TTA accuracy {tta_accuracy:.4} (plain {plain_accuracy:.4}), {} passes + 1 plain over {} images",
        plan.name,
        config.n,
        plain.targets.len()
    );
    let result = json!({
        "name": "tta",
        "from": args.run.display().to_string(),
        "accuracy": tta_accuracy,
        "plain_accuracy": plain_accuracy,
        "n": config.n,
        "beta": match config.blend { Blend::Lerp { beta } => json!(beta), Blend::Max => json!(null) },
        "use_max": config.blend == Blend::Max,
        "n_images": plain.targets.len(),
        "skipped": skipped_json(&mut report, &loader),
        "seconds": started.elapsed().as_secs_f64(),
    });
    let text = serde_json::to_string_pretty(&result)?;
    match &out_dir {
        Some(out_dir) => out_dir.write("result.json", &text)?,
        None => run_dir.write("tta.json", &text)?,
    }
    Ok(())
}

/// Refuses a `tta --out` folder holding a training run (its result.json would be overwritten)
/// or any result.json that is not an earlier TTA result.
fn check_tta_out(out: &Path) -> anyhow::Result<()> {
    if out.join("recipe.resolved.toml").is_file() {
        bail!(
            "--out {} is a training run's folder: tta would overwrite its result.json; choose \
             another folder (without --out, tta writes tta.json in the run)",
            out.display()
        );
    }
    let result = out.join("result.json");
    if result.is_file() {
        let text = std::fs::read_to_string(&result)
            .with_context(|| format!("reading {}", result.display()))?;
        let previous: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        if previous["name"] != "tta" {
            bail!(
                "--out {}: its result.json is not a tta result; choose another folder",
                out.display()
            );
        }
    }
    Ok(())
}

/// `wick predict --run DIR IMAGE...`: the top-k classes of each image with probabilities, or
/// an error naming the image; returns how many images failed (a broken model fails them all
/// before any is read).
pub(crate) fn predict(
    run: &Path,
    images: &[PathBuf],
    top_k: usize,
    device: &str,
) -> anyhow::Result<usize> {
    let device = plan::device(device)?;
    let run_dir = RunDir::open(run)?;
    let (plan, model, _) = load_run(&run_dir, device)?;
    let device = &plan.device;
    let vocab = run_dir.read_vocab()?;
    let last = plan.stages.len() - 1;
    let pipeline = plan.pipeline(last);
    let normalize = plan.normalize()?;
    // One image: its top classes, `None` when the run's bad-file policy skips it, or an error.
    let predict_one = |image: &Path| -> anyhow::Result<Option<String>> {
        let mut pixels = vec![0f32; pipeline.item_len()];
        // The run's bad-file policy, as in training: fail, or report the file and go on.
        if let Err(error) = pipeline.load_plain(image, &mut pixels) {
            if plan.data.bad_files == BadFilePolicy::Fail {
                return Err(error.into());
            }
            println!("{}: skipped (bad_files = \"skip\"): {error}", image.display());
            return Ok(None);
        }
        let size = pipeline.output_size as usize;
        let mut xs =
            Tensor::from_vec(pixels, (1, 3, size, size), &Device::Cpu)?.to_device(device)?;
        if let Some(normalize) = &normalize {
            xs = normalize.forward(&xs)?;
        }
        let probs = candle_nn::ops::softmax(&model.forward_t(&xs, false)?, D::Minus1)?
            .squeeze(0)?
            .to_device(&Device::Cpu)?
            .to_vec1::<f32>()?;
        if probs.iter().any(|p| !p.is_finite()) {
            bail!("the model's probabilities are not finite (NaN or infinity)");
        }
        let mut ranked: Vec<(usize, f32)> = probs.into_iter().enumerate().collect();
        ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
        let shown: Vec<String> = ranked
            .iter()
            .take(top_k)
            .map(|(class, p)| {
                let name = vocab
                    .name(*class as u32)
                    .map_or_else(|| "(extra output)".to_string(), wick_data::display_name);
                format!("{name} {p:.4}")
            })
            .collect();
        Ok(Some(shown.join(", ")))
    };
    let (mut failed, mut skipped) = (0, 0);
    for image in images {
        match predict_one(image) {
            Ok(Some(line)) => println!("{}: {line}", image.display()),
            Ok(None) => skipped += 1,
            Err(error) => {
                failed += 1;
                eprintln!("{}: error: {}", image.display(), crate::one_paragraph(&error));
            }
        }
    }
    if skipped > 0 {
        println!("{skipped} of {} images skipped as bad files", images.len());
    }
    if failed > 0 {
        eprintln!("{failed} of {} images failed", images.len());
    }
    Ok(failed)
}

/// `wick summary --arch NAME`: per-module output shapes and parameter counts.
pub(crate) fn summary(arch: &str, n_out: usize, size: usize) -> anyhow::Result<()> {
    let config = wick_models::XResNetConfig::named(arch, n_out).with_context(|| {
        format!("--arch {arch}: not one of {}", wick_models::XResNetConfig::names().join(", "))
    })?;
    let (model, varmap) = ModelPlan { config, seed: 0 }.build(&Device::Cpu)?;
    let rows = wick_models::summary(&model, &varmap, size, &Device::Cpu)?;
    println!("{arch} (n_out {n_out}) on a 1x3x{size}x{size} input");
    println!("{:<6} {:<26} {:<22} {:>12}", "index", "module", "output shape", "parameters");
    for row in &rows {
        println!(
            "{:<6} {:<26} {:<22} {:>12}",
            row.index,
            row.kind,
            format!("{:?}", row.output_shape),
            row.params
        );
    }
    println!("total parameters: {}", wick_models::count_params(&varmap, ""));
    Ok(())
}

/// `wick lr-find`: fastai's `lr_find` on the first stage of a recipe; writes `lr_find.png`.
pub(crate) fn lr_find(
    recipe_path: &Path,
    profile: &str,
    data: &str,
    out: &Path,
    device: &str,
) -> anyhow::Result<()> {
    let (recipe, _) = crate::recipe::load(recipe_path, profile)?;
    let device = plan::device(device)?;
    let plan = Plan::resolve(recipe, PlanArgs::on(device)).with_context(|| {
        format!("recipe {}: no stage to find a learning rate for", recipe_path.display())
    })?;
    let root = plan::resolve_data(data, &mut crate::download_progress())?;
    let mut dataset = plan.dataset(&root)?;
    println!("{}", dataset.report.summary(5));
    plan::check_bad_files(&dataset.report, None)?;
    let splits = plan.splits(&mut dataset, 0)?;
    let (train, valid) = plan.loaders(0, &splits)?;
    let (model, varmap) = plan.model(splits.vocab.len())?.build(&plan.device)?;
    // The recipe's optimizer, precision and loss, as `wick train` uses them (fastai's lr_find
    // runs the Learner as it is configured).
    let mut learner = plan.learner(model, varmap, Box::new(train), Box::new(valid))?;
    learner.add_callback(Box::new(crate::progress::Progress::new(format!(
        "lr_find on {}",
        plan.name
    ))));
    let result = learner.lr_find(wick_train::LrFindConfig::fastai_defaults())?;
    let run_dir = RunDir::create(out)?;
    wick_train::write_lr_find_plot(&run_dir.path("lr_find.png"), &result)?;
    println!(
        "lr_find: valley {:.2e}, minimum/10 {:.2e}, steep {:.2e} ({} batches); plot {}",
        result.valley()?,
        result.minimum()?,
        result.steep()?,
        result.lrs.len(),
        run_dir.path("lr_find.png").display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(
        recipe: Option<PathBuf>,
        n: Option<usize>,
        beta: Option<f64>,
        use_max: bool,
    ) -> TtaArgs {
        TtaArgs {
            run: PathBuf::from("run"),
            out: None,
            data: None,
            device: "cpu".to_string(),
            recipe,
            n,
            beta,
            use_max,
        }
    }

    /// The settings `wick tta` runs with over a run whose recipe has no `[tta]`.
    fn tta_config(args: &TtaArgs) -> anyhow::Result<wick_eval::TtaConfig> {
        Ok(plan::TtaPlan::default().with(Some(&tta_overrides(args)?))?.config())
    }

    fn recipe(dir: &Path, tta: &str) -> PathBuf {
        let path = dir.join("tta.toml");
        std::fs::write(&path, format!("name = \"tta\"\nfrom = \"progressive\"\n{tta}")).unwrap();
        path
    }

    #[test]
    fn tta_settings_come_from_flags_then_the_recipe_then_fastai() {
        let dir = tempfile::tempdir().unwrap();
        // Neither: fastai's tta(n=4, beta=0.25, use_max=False).
        let config = tta_config(&args(None, None, None, false)).unwrap();
        assert_eq!((config.n, config.blend), (4, Blend::Lerp { beta: 0.25 }));
        // The recipe's [tta] (the chapter's recipes/chapter7/tta.toml reads like this).
        let path = recipe(dir.path(), "[tta]\nn = 8\nbeta = 0.5\n");
        let config = tta_config(&args(Some(path.clone()), None, None, false)).unwrap();
        assert_eq!((config.n, config.blend), (8, Blend::Lerp { beta: 0.5 }));
        // A flag wins over the recipe, the rest still comes from it.
        let config = tta_config(&args(Some(path), Some(2), None, false)).unwrap();
        assert_eq!((config.n, config.blend), (2, Blend::Lerp { beta: 0.5 }));
        // use_max from the recipe; n unset there falls back to fastai's.
        let path = recipe(dir.path(), "[tta]\nuse_max = true\n");
        let config = tta_config(&args(Some(path), None, None, false)).unwrap();
        assert_eq!((config.n, config.blend), (4, Blend::Max));
    }

    #[test]
    fn tta_settings_refuse_a_bad_beta_and_a_recipe_without_tta() {
        let error = tta_config(&args(None, None, Some(1.5), false)).unwrap_err();
        assert!(format!("{error:#}").contains("--beta"), "{error:#}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("baseline.toml");
        std::fs::write(
            &path,
            "name = \"b\"\n[data]\nsplit = \"random\"\nitem_size = 8\nsize = 8\nbatch_size = 2\n\
             [model]\narch = \"xresnet18\"\nn_out = \"classes\"\n[[stage]]\nfit = { kind = \"one_cycle\", epochs = 1, lr_max = 1e-3 }\n",
        )
        .unwrap();
        let error = tta_config(&args(Some(path), None, None, false)).unwrap_err();
        assert!(format!("{error:#}").contains("no [tta] section"), "{error:#}");
    }
}
