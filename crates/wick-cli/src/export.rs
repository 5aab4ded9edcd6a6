//! `wick export --run DIR --format onnx|safetensors`: a finished run's model in a form that
//! runs without wick. ONNX (wick-export) is checked before it is written: tract runs it on
//! seeded test images and must reproduce wick's own logits. Safetensors is the state dict under
//! PyTorch's names with a JSON sidecar (architecture, classes, preprocessing) that
//! `scripts/load_export_fastai.py` loads into fastai's xresnet.

use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use candle::{DType, Device, ModuleT, Tensor};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;
use wick_data::{IMAGENET_MEAN, IMAGENET_STD, Normalize};
use wick_export::{OnnxExportConfig, Preprocessing, run_onnx, xresnet_to_onnx};
use wick_io::write_durably;

use crate::run_dir::RunDir;
use crate::train::load_run;

/// The formats `wick export` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum ExportFormat {
    /// A standard ONNX model (opset 17), preprocessing inside.
    Onnx,
    /// PyTorch state-dict names in safetensors, plus a JSON sidecar.
    Safetensors,
}

/// Images the ONNX check runs through both wick and tract.
const CHECK_IMAGES: usize = 4;
/// How far tract's logits may be from wick's, relative to the largest logit (at least 1):
/// both compute in f32, in different orders.
const CHECK_TOLERANCE: f32 = 1e-4;

/// `wick export`: writes the run's model to `out` (default `<run>/model.onnx` or
/// `<run>/export/model.safetensors` + `model.json`).
pub(crate) fn export(run: &Path, format: ExportFormat, out: Option<&Path>) -> anyhow::Result<()> {
    let device = Device::Cpu;
    let run_dir = RunDir::open(run)?;
    let (plan, model, varmap) = load_run(&run_dir, device.clone())?;
    let vocab = run_dir.read_vocab()?;
    let config = model.config().clone();
    let arch = plan.model.arch.clone();
    let size = plan.last_stage().data.size as usize;
    let normalize = plan.data.normalize.then_some((IMAGENET_MEAN, IMAGENET_STD));
    let class_names: Vec<String> = (0..config.n_out)
        .map(|k| {
            vocab
                .name(k as u32)
                .map_or_else(|| format!("(extra output {k})"), wick_data::display_name)
        })
        .collect();
    let tensors = wick_models::state_dict(&model, &varmap)?;
    match format {
        ExportFormat::Onnx => {
            let export = OnnxExportConfig {
                preprocessing: Preprocessing { size, normalize },
                class_names,
                arch: arch.clone(),
                metadata: vec![
                    ("recipe".to_string(), plan.name.clone()),
                    ("seed".to_string(), plan.seed.to_string()),
                ],
            };
            let bytes = xresnet_to_onnx(&config, &tensors, &export)?;
            // The check: seeded uint8 images through wick (byte/255, Normalize, eval forward)
            // and through tract on the exported graph.
            let mut rng = ChaCha8Rng::seed_from_u64(plan.seed);
            let pixels: Vec<u8> =
                (0..CHECK_IMAGES * size * size * 3).map(|_| rng.random::<u8>()).collect();
            let xs = Tensor::from_vec(pixels.clone(), (CHECK_IMAGES, size, size, 3), &device)?
                .to_dtype(DType::F32)?
                .permute((0, 3, 1, 2))?
                .contiguous()?;
            let mut xs = (xs / 255.0)?;
            if plan.data.normalize {
                xs = Normalize::imagenet(&device)?.forward(&xs)?;
            }
            let expected: Vec<Vec<f32>> = model.forward_t(&xs, false)?.to_vec2()?;
            let actual = run_onnx(&bytes, &pixels, CHECK_IMAGES, size)?;
            let scale = expected.iter().flatten().fold(1f32, |m, v| m.max(v.abs()));
            let difference =
                actual.iter().flatten().zip(expected.iter().flatten()).fold(0f32, |m, (a, e)| {
                    // NaN anywhere makes the difference NaN (f32::max would skip it).
                    let d = (a - e).abs();
                    if m.is_nan() || d.is_nan() { f32::NAN } else { m.max(d) }
                });
            if difference.is_nan() || difference > CHECK_TOLERANCE * scale {
                bail!(
                    "the exported ONNX model does not reproduce wick's logits: largest \
                     difference {difference:.3e} (tolerance {:.1e}); nothing was written",
                    CHECK_TOLERANCE * scale
                );
            }
            let path = out.map(Path::to_path_buf).unwrap_or_else(|| run_dir.path("model.onnx"));
            write_durably(&path, &bytes).with_context(|| format!("writing {}", path.display()))?;
            println!(
                "wrote {} ({:.1} MB): ONNX opset {}, input `image` uint8 RGB (N, {size}, {size}, 3), \
                 outputs `logits` and `probabilities` (N, {}); {} on {CHECK_IMAGES} test images, \
                 tract reproduces wick's logits within {difference:.1e}",
                path.display(),
                bytes.len() as f64 / 1e6,
                wick_export::onnx::OPSET,
                config.n_out,
                arch,
            );
        }
        ExportFormat::Safetensors => {
            let dir = out.map(Path::to_path_buf).unwrap_or_else(|| run_dir.path("export"));
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let weights: PathBuf = dir.join("model.safetensors");
            wick_models::save_weights(&model, &varmap, &weights)
                .with_context(|| format!("writing {}", weights.display()))?;
            let sidecar = json!({
                "format": "wick-export-1",
                "weights": "model.safetensors",
                "arch": arch,
                "n_out": config.n_out,
                "widen": config.widen,
                "classes": class_names,
                "input_size": size,
                "preprocessing": {
                    "resize": format!("shorter side to {size}, centre crop {size}x{size} (fastai's validation transform)"),
                    "to_float": "pixel / 255 (fastai's IntToFloatTensor), RGB, NCHW",
                    "normalize": normalize.map(|(mean, std)| json!({ "mean": mean, "std": std })),
                },
                "pytorch": format!(
                    "fastai.vision.models.xresnet.{arch}(n_out={}, widen={}) then load_state_dict; see scripts/load_export_fastai.py",
                    config.n_out, config.widen
                ),
                "recipe": plan.name,
                "seed": plan.seed,
            });
            let sidecar_path = dir.join("model.json");
            write_durably(&sidecar_path, serde_json::to_string_pretty(&sidecar)?.as_bytes())
                .with_context(|| format!("writing {}", sidecar_path.display()))?;
            println!(
                "wrote {} and {} (PyTorch state-dict names; load with scripts/load_export_fastai.py)",
                weights.display(),
                sidecar_path.display()
            );
        }
    }
    Ok(())
}
