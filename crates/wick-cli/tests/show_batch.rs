//! `wick show-batch` (fastai's `dls.show_batch()`) end to end: the first training batch of a
//! stage, augmented and with `Normalize` undone, is drawn into a PNG grid; `--valid` draws the
//! validation batch; a stage the recipe lacks is refused by number; `wick train` leaves the
//! same picture in every stage folder.

use std::path::Path;
use std::process::Output;

const RECIPE: &str = r#"
name = "colours"
seed = 3
[data]
split = "folders"
item_size = 48
size = 32
batch_size = 8
normalize = true
[model]
arch = "xresnet18"
n_out = "classes"
widen = 0.25
[[stage]]
fit = { kind = "one_cycle", epochs = 1, lr_max = 3e-3 }
"#;

/// `train/{blue,red}/` with 4 pictures each (one batch of 8 holds all) and `val/{blue,red}/` with 1: pure red or blue
/// with a little texture, so the drawn grid's colours can be checked.
fn dataset(root: &Path) {
    for (class, rgb) in [("red", [220u8, 30, 30]), ("blue", [30, 30, 220])] {
        for (split, n) in [("train", 4), ("val", 1)] {
            for i in 0..n {
                let image = image::RgbImage::from_fn(48, 48, |x, y| {
                    let t = ((x + y + i) % 5) as u8;
                    image::Rgb([rgb[0] - t, rgb[1] + t, rgb[2] - t])
                });
                let path = root.join(format!("{split}/{class}/{i}.png"));
                std::fs::create_dir_all(path.parent().unwrap()).unwrap();
                image.save(&path).unwrap();
            }
        }
    }
}

fn wick(args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wick")).args(args).output().expect("run wick")
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// How many pixels of the picture are clearly red and clearly blue.
fn red_and_blue(path: &Path) -> (usize, usize) {
    let image = image::open(path).unwrap().to_rgb8();
    let red = image.pixels().filter(|p| p[0] > 150 && p[2] < 90).count();
    let blue = image.pixels().filter(|p| p[2] > 150 && p[0] < 90).count();
    (red, blue)
}

#[test]
fn show_batch_draws_the_stage_batch_and_train_keeps_one_per_stage() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    dataset(&data);
    let recipe = work.path().join("colours.toml");
    std::fs::write(&recipe, RECIPE).unwrap();
    let (recipe, data) = (recipe.to_str().unwrap(), data.to_str().unwrap());

    let train_png = work.path().join("train.png");
    let output = wick(&[
        "show-batch",
        "--recipe",
        recipe,
        "--data",
        data,
        "--out",
        train_png.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("8 train images of stage 0 at 32 px"), "{}", text(&output));
    // A 3x3 grid of the 32-px images enlarged to 128-px tiles (so that names fit under them),
    // in the pictures' own colours (Normalize undone: a normalised red would draw as
    // near-black or clipped colours, not as red).
    let (width, height) = image::image_dimensions(&train_png).unwrap();
    assert!(width >= 3 * 128 && height >= 3 * 128, "{width}x{height}");
    let (red, blue) = red_and_blue(&train_png);
    assert!(red > 200 && blue > 200, "red {red}, blue {blue} pixels");

    let valid_png = work.path().join("valid.png");
    let output = wick(&[
        "show-batch",
        "--recipe",
        recipe,
        "--data",
        data,
        "--valid",
        "--out",
        valid_png.to_str().unwrap(),
    ]);
    assert!(output.status.success(), "{}", text(&output));
    assert!(text(&output).contains("2 valid images"), "{}", text(&output));

    let output = wick(&["show-batch", "--recipe", recipe, "--data", data, "--stage", "1"]);
    assert!(!output.status.success());
    assert!(text(&output).contains("--stage 1: the recipe has 1 stage(s)"), "{}", text(&output));

    let run = work.path().join("run");
    let output =
        wick(&["train", "--recipe", recipe, "--data", data, "--out", run.to_str().unwrap()]);
    assert!(output.status.success(), "{}", text(&output));
    let (red, blue) = red_and_blue(&run.join("stage-0/show_batch.png"));
    assert!(red > 200 && blue > 200, "the run's picture: red {red}, blue {blue} pixels");
}
