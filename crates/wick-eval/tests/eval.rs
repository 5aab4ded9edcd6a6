//! Predictions, TTA and interpretation on hand-checkable cases: a "model" whose logits are a
//! fixed function of the image, so every expected probability can be computed by hand.

use candle::{D, Device, ModuleT, Tensor};
use wick_data::{DataLoader, ItemPipeline, LoaderConfig, SplitRule, image_folder};
use wick_eval::{
    Blend, Predictions, TtaConfig, accuracy, confusion_matrix, get_preds, per_class_accuracy,
    plot_confusion_matrix, plot_top_losses, top_k_accuracy, top_losses, tta,
};
use wick_testing::{Tol, assert_close};

/// Logits = [mean red, mean green, mean blue] of the image, scaled by 10: a 3-class "model"
/// that needs no parameters.
struct MeanColour;

impl ModuleT for MeanColour {
    fn forward_t(&self, xs: &Tensor, train: bool) -> candle::Result<Tensor> {
        assert!(!train, "wick-eval must only run models in eval mode");
        xs.mean(D::Minus1)?.mean(D::Minus1)? * 10.0
    }
}

fn write_jpeg(path: &std::path::Path, colour: [u8; 3], size: u32) {
    let data: Vec<u8> = (0..size * size).flat_map(|_| colour).collect();
    let encoder = jpeg_encoder::Encoder::new_file(path, 95).unwrap();
    encoder.encode(&data, size as u16, size as u16, jpeg_encoder::ColorType::Rgb).unwrap();
}

/// Classes r, g, b; each validation folder holds one reddish, one greenish and one bluish image,
/// so exactly one image per class is classified right.
fn dataset() -> (tempfile::TempDir, wick_data::Splits) {
    let dir = tempfile::tempdir().unwrap();
    let colours = [[220u8, 30, 30], [30, 220, 30], [30, 30, 220]];
    for split in ["train", "val"] {
        for class in ["r", "g", "b"] {
            let folder = dir.path().join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for (i, colour) in colours.iter().enumerate() {
                write_jpeg(&folder.join(format!("{i}.jpg")), *colour, 24);
            }
        }
    }
    let splits = image_folder(dir.path(), &SplitRule::official()).unwrap();
    (dir, splits)
}

fn loader(splits: &wick_data::Splits) -> DataLoader {
    DataLoader::new(
        splits.valid.clone(),
        ItemPipeline::chapter7(16),
        LoaderConfig::valid(4, 0),
        Device::Cpu,
    )
    .unwrap()
}

#[test]
fn predictions_are_softmax_in_dataset_order() {
    let (_dir, splits) = dataset();
    let preds = get_preds(&MeanColour, &loader(&splits), 0).unwrap();
    assert_eq!(preds.item_indices, (0..9).collect::<Vec<_>>());
    // Vocab is sorted: b=0, g=1, r=2; files 0.jpg red, 1.jpg green, 2.jpg blue per folder.
    assert_eq!(splits.vocab.classes(), ["b", "g", "r"]);
    assert_eq!(preds.targets, [0, 0, 0, 1, 1, 1, 2, 2, 2]);
    let rows = preds.probs.to_vec2::<f32>().unwrap();
    for row in &rows {
        let sum: f32 = row.iter().sum();
        assert_close("probabilities' sum", sum, 1.0, Tol::abs(1e-5));
    }
    // Item 0 is val/b/0.jpg, a red image: logits 10*[0.863, 0.118, 0.118] (JPEG keeps solid
    // colours within a level), so its class-0 probability is e^8.63 / (e^8.63 + 2 e^1.18) =
    // 0.99884 — the model maps the red mean to class 0 ("b"), so this one is right.
    assert_close("item 0's class-0 probability", rows[0][0], 0.99884, Tol::abs(2e-3));
    // One image per class is right: accuracy 3/9.
    assert_close("accuracy", accuracy(&preds).unwrap(), 1.0 / 3.0, Tol::abs(1e-12));
    assert_close("top-3 accuracy", top_k_accuracy(&preds, 3).unwrap(), 1.0, Tol::abs(1e-12));
    let matrix = confusion_matrix(&preds, 3).unwrap();
    // Rows = actual (b, g, r); columns = predicted. Each folder has one image of each colour.
    assert_eq!(matrix.counts, vec![vec![1, 1, 1], vec![1, 1, 1], vec![1, 1, 1]]);
    let per_class = per_class_accuracy(&matrix);
    assert!(per_class.iter().all(|c| c.correct == 1 && c.total == 3));
}

#[test]
fn tta_blends_augmented_and_plain_passes_like_fastai() {
    let (_dir, splits) = dataset();
    let valid = loader(&splits);
    let config = TtaConfig { n: 3, ..TtaConfig::default() };
    let (blended, plain) = tta(&MeanColour, &valid, &config).unwrap();
    assert_eq!(
        plain.probs.to_vec2::<f32>().unwrap(),
        get_preds(&MeanColour, &valid, 0).unwrap().probs.to_vec2::<f32>().unwrap()
    );
    // Rebuild the blend by hand from the same passes: 0.75 * mean(augmented) + 0.25 * plain.
    let augmented_loader = valid
        .with(
            *valid.pipeline(),
            LoaderConfig {
                mode: wick_data::Mode::Train,
                shuffle: false,
                drop_last: false,
                ..*valid.config()
            },
        )
        .unwrap();
    let passes: Vec<Tensor> = (0..3)
        .map(|pass| {
            get_preds(&MeanColour, &augmented_loader, config.seed_epoch + pass).unwrap().probs
        })
        .collect();
    let mean = Tensor::stack(&passes, 0).unwrap().mean(0).unwrap();
    let expected = ((mean * 0.75).unwrap() + (&plain.probs * 0.25).unwrap()).unwrap();
    let diff = (&blended.probs - &expected)
        .unwrap()
        .abs()
        .unwrap()
        .max_all()
        .unwrap()
        .to_scalar::<f32>()
        .unwrap();
    assert!(diff < 1e-6, "{diff}");
    // Lighting makes augmented passes differ from the plain one.
    assert_ne!(passes[0].to_vec2::<f32>().unwrap(), plain.probs.to_vec2::<f32>().unwrap());
    let (maxed, _) =
        tta(&MeanColour, &valid, &TtaConfig { n: 3, blend: Blend::Max, ..config }).unwrap();
    let max_expected =
        Tensor::stack(&passes, 0).unwrap().max(0).unwrap().maximum(&plain.probs).unwrap();
    assert_eq!(maxed.probs.to_vec2::<f32>().unwrap(), max_expected.to_vec2::<f32>().unwrap());
}

/// A "model" whose logits are NaN for every image.
struct Broken;

impl ModuleT for Broken {
    fn forward_t(&self, xs: &Tensor, _train: bool) -> candle::Result<Tensor> {
        MeanColour.forward_t(xs, false)? * f64::NAN
    }
}

#[test]
fn non_finite_predictions_are_errors_or_misses() {
    let (_dir, splits) = dataset();
    let valid = loader(&splits);
    // get_preds and tta refuse a NaN prediction, naming the file.
    let error = get_preds(&Broken, &valid, 0).unwrap_err().to_string();
    assert!(error.contains("b/0.jpg") && error.contains("not finite"), "{error}");
    let error = tta(&Broken, &valid, &TtaConfig::default()).unwrap_err().to_string();
    assert!(error.contains("not finite"), "{error}");
    // A NaN or out-of-range beta is refused before any pass.
    for beta in [f64::NAN, -0.1, 1.5, f64::INFINITY] {
        let config = TtaConfig { n: 1, blend: Blend::Lerp { beta }, ..TtaConfig::default() };
        let error = tta(&MeanColour, &valid, &config).unwrap_err().to_string();
        assert!(error.contains("beta") && error.contains("[0, 1]"), "{beta}: {error}");
    }
    // Predictions built elsewhere: a row with a NaN is never a hit, whatever k.
    let probs =
        Tensor::new(&[[f32::NAN, 0.1, 0.1], [0.2, 0.7, f32::NAN], [0.1, 0.1, 0.8]], &Device::Cpu)
            .unwrap();
    let preds = Predictions { probs, targets: vec![0, 1, 2], item_indices: vec![0, 1, 2] };
    assert_close("accuracy", accuracy(&preds).unwrap(), 1.0 / 3.0, Tol::abs(1e-12));
    assert_close("top-3 accuracy", top_k_accuracy(&preds, 3).unwrap(), 1.0 / 3.0, Tol::abs(1e-12));
}

#[test]
fn top_losses_and_pictures() {
    let probs =
        Tensor::new(&[[0.7f32, 0.2, 0.1], [0.1, 0.1, 0.8], [0.05, 0.9, 0.05]], &Device::Cpu)
            .unwrap();
    let preds = Predictions { probs, targets: vec![0, 1, 1], item_indices: vec![3, 4, 5] };
    let worst = top_losses(&preds, 2).unwrap();
    // -ln 0.1 = 2.3026 (item 4, predicted 2), then -ln 0.7 = 0.3567 (item 3).
    assert_eq!((worst[0].item, worst[0].predicted, worst[0].actual), (4, 2, 1));
    assert_close("worst loss", worst[0].loss, std::f64::consts::LN_10, Tol::abs(1e-5)); // -ln 0.1
    assert_close("second loss", worst[1].loss, 0.356_675, Tol::abs(1e-5));

    let (dir, splits) = dataset();
    let preds = get_preds(&MeanColour, &loader(&splits), 0).unwrap();
    let png = dir.path().join("confusion.png");
    plot_confusion_matrix(&confusion_matrix(&preds, 3).unwrap(), &splits.vocab, &png).unwrap();
    assert!(image::open(&png).unwrap().width() > 3 * 44);
    let grid = dir.path().join("top_losses.png");
    plot_top_losses(&top_losses(&preds, 4).unwrap(), &splits.valid, &splits.vocab, 32, &grid)
        .unwrap();
    let picture = image::open(&grid).unwrap().to_rgb8();
    // 2x2 tiles of 32 px + 4 px margins each side; a title line above; under each tile three
    // caption lines (prediction, actual, loss / probability) of 12 px and 2 px of space.
    let line = wick_render::line_height(12.0);
    assert_eq!(line, 12);
    assert_eq!((picture.width(), picture.height()), (2 * 40, (line + 4) + 2 * (40 + 3 * line + 2)));
    let caption_ink = (0..picture.width())
        .flat_map(|x| (line + 4 + 40..line + 4 + 40 + 3 * line).map(move |y| (x, y)))
        .filter(|&(x, y)| picture.get_pixel(x, y).0[0] < 128)
        .count();
    assert!(caption_ink > 30, "{caption_ink} dark caption pixels");
}
