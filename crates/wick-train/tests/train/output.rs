//! The files a run leaves: metrics.jsonl (one JSON object per epoch, across fits), the loss and
//! schedule PNGs written by RunFiles, and the lr_find plot (the charts themselves are
//! wick-render's, tested there).

use image::Rgb;
use wick_train::{
    FineTune, LrFindConfig, LrFinderSchedule, RunFiles, metrics_jsonl, write_lr_find_plot,
};

use crate::tiny::{bright_dark_batches, tiny_learner};

/// Reads a PNG back: its size and how many pixels have `color`.
fn png_summary(path: &std::path::Path, color: Rgb<u8>) -> (u32, u32, usize, u64) {
    let bytes = std::fs::metadata(path).unwrap().len();
    let image = image::open(path).unwrap().to_rgb8();
    let matching = image.pixels().filter(|p| **p == color).count();
    (image.width(), image.height(), matching, bytes)
}

#[test]
fn run_files_after_fine_tune() {
    let dir = tempfile::tempdir().unwrap();
    let mut learner = tiny_learner(bright_dark_batches(3, 4, 1), bright_dark_batches(1, 4, 2), 0);
    learner.add_callback(Box::new(RunFiles::new(dir.path())));
    learner.fine_tune(FineTune::fastai_defaults(2, 1e-3)).unwrap();

    // One line per epoch: 1 frozen + 2 unfrozen, numbered within each fit.
    let text = std::fs::read_to_string(dir.path().join(RunFiles::METRICS)).unwrap();
    assert_eq!(text, metrics_jsonl(learner.recorder()));
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    let prefixes =
        ["{\"fit\":0,\"epoch\":0,", "{\"fit\":1,\"epoch\":0,", "{\"fit\":1,\"epoch\":1,"];
    for (line, prefix) in lines.iter().zip(prefixes) {
        assert!(line.starts_with(prefix), "{line}");
        for key in [
            "\"train_loss\":",
            "\"valid_loss\":",
            "\"accuracy\":",
            "\"seconds\":",
            "\"time\":\"00:0",
        ] {
            assert!(line.contains(key), "{key} missing in {line}");
        }
        assert!(line.ends_with("\"}"), "{line}");
        assert!(!line.contains("null"), "{line}");
    }

    // The plots: 800x480 loss plot (train line in the first palette colour), 800x640 schedule
    // plot (two 320-px panels), both with a real amount of drawing.
    let blue = wick_render::PALETTE[0];
    let (width, height, blue_pixels, bytes) =
        png_summary(&dir.path().join(RunFiles::LOSS_PLOT), blue);
    assert_eq!((width, height), (800, 480));
    assert!(blue_pixels > 200 && bytes > 2_000, "{blue_pixels} px, {bytes} bytes");
    let (width, height, blue_pixels, bytes) =
        png_summary(&dir.path().join(RunFiles::SCHEDULE_PLOT), blue);
    assert_eq!((width, height), (800, 640));
    assert!(blue_pixels > 200 && bytes > 2_000, "{blue_pixels} px, {bytes} bytes");
}

#[test]
fn lr_find_plot_marks_the_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let mut learner = tiny_learner(bright_dark_batches(8, 4, 1), bright_dark_batches(1, 4, 2), 0);
    let config = LrFindConfig {
        schedule: LrFinderSchedule { num_it: 40, ..LrFinderSchedule::fastai_defaults() },
        ..LrFindConfig::fastai_defaults()
    };
    let result = learner.lr_find(config).unwrap();
    let path = dir.path().join("lr_find.png");
    write_lr_find_plot(&path, &result).unwrap();
    let red = wick_render::PALETTE[3];
    let (width, height, red_pixels, _) = png_summary(&path, red);
    assert_eq!((width, height), (800, 480));
    assert!(result.valley().is_ok());
    assert!(red_pixels > 50, "valley marker: {red_pixels} px");
}
