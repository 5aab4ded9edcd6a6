//! `wick show-batch`: fastai's `dls.show_batch()` from the command line — the first batch a
//! recipe's stage would train on (or validate on, with `--valid`), augmented exactly as the
//! loader makes it, drawn as a captioned grid PNG, so a user can check the augmentation
//! before training. `wick train` writes the same picture for every stage of a run.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::Device;
use wick_data::{DataLoader, Normalize, Vocab};

use crate::plan::{self, Plan, PlanArgs};

/// fastai's `show_batch` default, `max_n = 9`.
pub(crate) const MAX_ITEMS: usize = 9;

/// The smallest tile drawn, in pixels.
const MIN_TILE: u32 = 128;

/// What `wick show-batch` was asked for.
pub(crate) struct ShowBatchArgs {
    pub(crate) recipe: PathBuf,
    pub(crate) profile: String,
    pub(crate) data: String,
    pub(crate) stage: usize,
    pub(crate) valid: bool,
    pub(crate) out: Option<PathBuf>,
}

/// Draws the first batch of `loader` (its epoch 0, as the first epoch of the fit sees it) into
/// `path`, undoing `Normalize` for display. Returns the number of images drawn.
pub(crate) fn draw_first_batch(
    loader: &DataLoader,
    vocab: &Vocab,
    normalize: bool,
    path: &Path,
) -> anyhow::Result<usize> {
    let batch = loader.epoch(0).next().context("the loader has no batch to show")??;
    let normalize = if normalize { Some(Normalize::imagenet(&Device::Cpu)?) } else { None };
    let batch = wick_data::Batch {
        xs: batch.xs.to_device(&Device::Cpu)?,
        ys: batch.ys.to_device(&Device::Cpu)?,
        ..batch
    };
    let pictures = wick_data::batch_images(&batch, vocab, normalize.as_ref(), MAX_ITEMS)?;
    let (_, _, height, width) = batch.xs.dims4()?;
    // fastai's layout: a square-ish grid, each image titled with its class name.
    let columns = (pictures.len() as f64).sqrt().ceil() as u32;
    // fastai draws each image at a fixed figure size whatever its pixels: small images (a 32-px
    // stage) are enlarged to MIN_TILE so that their class names fit under them.
    let tile = (height.max(width) as u32).max(MIN_TILE);
    let mut grid = wick_render::ImageGrid::new(columns, tile, 2);
    let drawn = pictures.len();
    for (image, name) in pictures {
        grid.push(image, vec![name]);
    }
    grid.save_png(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(drawn)
}

/// `wick show-batch --recipe R --data D [--stage N] [--valid] [--out FILE]`.
pub(crate) fn run(args: &ShowBatchArgs) -> anyhow::Result<()> {
    let (recipe, _) = crate::recipe::load(&args.recipe, &args.profile)?;
    let plan = Plan::resolve(recipe, PlanArgs::on(Device::Cpu)).with_context(|| {
        format!("{}: show the batch of a recipe that trains", args.recipe.display())
    })?;
    if args.stage >= plan.stages.len() {
        bail!(
            "--stage {}: the recipe has {} stage(s), numbered from 0",
            args.stage,
            plan.stages.len()
        );
    }
    let data_root = plan::resolve_data(&args.data, &mut crate::download_progress())?;
    let mut dataset = plan.dataset(&data_root)?;
    plan::check_bad_files(&dataset.report, None)?;
    // The split the stage trains on: the first stage's, or the last new split before it.
    let splits = plan.splits(&mut dataset, plan.stages[args.stage].split_stage)?;
    let (train, valid) = plan.loaders(args.stage, &splits)?;
    let split = if args.valid { "valid" } else { "train" };
    let path = args.out.clone().unwrap_or_else(|| {
        PathBuf::from(format!("show_batch-{}-stage{}-{split}.png", plan.name, args.stage))
    });
    let loader = if args.valid { &valid } else { &train };
    let shown = draw_first_batch(loader, &splits.vocab, plan.data.normalize, &path)?;
    println!(
        "wrote {}: {shown} {split} images of stage {} at {} px, as the first batch of the fit \
         sees them",
        path.display(),
        args.stage,
        plan.stages[args.stage].data.size
    );
    Ok(())
}
