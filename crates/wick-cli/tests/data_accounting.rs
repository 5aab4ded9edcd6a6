//! Data accounting end to end through the `wick` binary (issue 12 §1; the reproducers
//! bugs/08-other-formats, bugs/13-skip-policy and reliability/04-bad-files-skip-silent): every
//! file under `--data` is used, ignored or skipped with its reason in `data_report.json` and on
//! the console; `bad_files` decides before the first epoch; eval and tta follow the run's
//! policy; stored paths read back exactly.

use std::path::{Path, PathBuf};
use std::process::Output;

use serde_json::Value;

const RECIPE: &str = r#"
name = "tiny"
seed = 42
[data]
split = "folders"
item_size = 48
size = 32
batch_size = BATCH
min_scale = 0.75
normalize = true
threads = 2
POLICY
[model]
arch = "xresnet18"
n_out = "classes"
widen = 0.25
[[stage]]
fit = { kind = "one_cycle", epochs = 1, lr_max = 3e-3 }
"#;

fn recipe(dir: &Path, name: &str, batch_size: usize, skip: bool) -> PathBuf {
    let text = RECIPE
        .replace("BATCH", &batch_size.to_string())
        .replace("POLICY", if skip { "bad_files = \"skip\"" } else { "" });
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap();
    path
}

/// A reddish (class 0) or bluish (class 1) picture with some texture.
fn picture(class: usize, n: usize) -> image::RgbImage {
    image::RgbImage::from_fn(48, 48, |x, y| {
        let noise = ((x * 7 + y * 13 + n as u32 * 31) % 40) as u8;
        if class == 0 {
            image::Rgb([200, 40 + noise, 40])
        } else {
            image::Rgb([40, 60 + noise, 200])
        }
    })
}

fn save(path: &Path, image: &image::RgbImage, format: image::ImageFormat) {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    let mut bytes = std::io::Cursor::new(Vec::new());
    image.write_to(&mut bytes, format).unwrap();
    std::fs::write(path, bytes.into_inner()).unwrap();
}

/// `root/{train,val}/{a_red,b_blue}/` with `n_train` and `n_val` JPEGs per class.
fn dataset(root: &Path, n_train: usize, n_val: usize) {
    for (class, name) in ["a_red", "b_blue"].iter().enumerate() {
        for n in 0..n_train {
            let path = root.join(format!("train/{name}/t{n:02}.jpg"));
            save(&path, &picture(class, n), image::ImageFormat::Jpeg);
        }
        for n in 0..n_val {
            let path = root.join(format!("val/{name}/v{n:02}.jpg"));
            save(&path, &picture(class, 100 + n), image::ImageFormat::Jpeg);
        }
    }
}

fn wick(args: &[&std::ffi::OsStr], work: &Path) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_wick"))
        .args(args)
        .env("WICK_DATA", work.join("cache"))
        .env("RUST_BACKTRACE", "0")
        .output()
        .expect("run wick")
}

fn train(recipe: &Path, data: &Path, out: &Path, work: &Path) -> Output {
    wick(
        &[
            "train".as_ref(),
            "--recipe".as_ref(),
            recipe.as_os_str(),
            "--data".as_ref(),
            data.as_os_str(),
            "--out".as_ref(),
            out.as_os_str(),
        ],
        work,
    )
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn ok(output: Output) -> String {
    let all = text(&output);
    assert!(output.status.success(), "wick failed:\n{all}");
    all
}

fn json(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn paths_of(list: &Value) -> Vec<String> {
    list.as_array().unwrap().iter().map(|e| e["path"].as_str().unwrap().to_string()).collect()
}

/// The bad files of reliability/04's `mkbad.py` and bugs/13's truncated JPEGs.
fn add_bad_files(root: &Path) {
    let good = std::fs::read(root.join("train/a_red/t00.jpg")).unwrap();
    let a = root.join("train/a_red");
    std::fs::write(a.join("corrupt_train.jpg"), &good[..good.len() / 2]).unwrap();
    std::fs::write(a.join("bad_zero_bytes.jpg"), b"").unwrap();
    std::fs::write(a.join("bad_text.JPEG"), b"not an image\n").unwrap();
    let mut garbage = vec![0xFF, 0xD8, 0xFF];
    garbage.extend((0..8).flat_map(|_| 0..=255u8));
    std::fs::write(a.join("bad_garbage.jpg"), garbage).unwrap();
    std::fs::write(a.join("notes.txt"), b"a note").unwrap();
    #[cfg(unix)]
    std::os::unix::fs::symlink(a.join("moved_away.jpg"), a.join("dangling.jpg")).unwrap();
    std::fs::write(root.join("val/b_blue/corrupt_val.jpg"), &good[..good.len() / 2]).unwrap();
}

#[test]
fn bad_files_are_taken_out_before_the_epoch_and_reported_everywhere() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    dataset(&data, 8, 2);
    add_bad_files(&data);

    // bad_files = "fail" (the default): the run stops before training, naming the files.
    let fail = train(
        &recipe(work.path(), "fail.toml", 4, false),
        &data,
        &work.path().join("run-fail"),
        work.path(),
    );
    let all = text(&fail);
    assert!(!fail.status.success(), "{all}");
    for name in ["corrupt_train.jpg", "bad_zero_bytes.jpg", "dangling.jpg", "data_report.json"] {
        assert!(all.contains(name), "{name} not named:\n{all}");
    }
    assert!(all.contains("bad_files = \"skip\""), "{all}");
    assert!(!work.path().join("run-fail/model.safetensors").exists());
    let report = json(&work.path().join("run-fail/data_report.json"));
    assert_eq!(report["skipped"].as_array().unwrap().len(), 6, "{report}");

    // bad_files = "skip" with batch size 2: the bad files are out before the epoch is built.
    let run = work.path().join("run");
    let all = ok(train(&recipe(work.path(), "skip.toml", 2, true), &data, &run, work.path()));
    assert!(all.contains("16 training / 4 validation images"), "{all}");
    assert!(all.contains("6 bad files"), "the console summary counts them:\n{all}");
    assert!(all.contains("corrupt_train.jpg"), "the console names the first ones:\n{all}");
    let report = json(&run.join("data_report.json"));
    let mut skipped = paths_of(&report["skipped"]);
    skipped.sort();
    assert_eq!(
        skipped,
        [
            "train/a_red/bad_garbage.jpg",
            "train/a_red/bad_text.JPEG",
            "train/a_red/bad_zero_bytes.jpg",
            "train/a_red/corrupt_train.jpg",
            "train/a_red/dangling.jpg",
            "val/b_blue/corrupt_val.jpg",
        ]
    );
    for entry in report["skipped"].as_array().unwrap() {
        assert!(!entry["reason"].as_str().unwrap().is_empty(), "{entry}");
    }
    let dangling = report["skipped"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["path"] == "train/a_red/dangling.jpg")
        .unwrap();
    assert_eq!(dangling["kind"], "dangling_link");
    assert_eq!(paths_of(&report["ignored"]), ["train/a_red/notes.txt"]);
    assert_eq!(report["ignored_extensions"][".txt"], 1);
    assert_eq!(report["splits"]["train"]["total"], 16);
    assert_eq!(report["splits"]["train"]["classes"]["a_red"], 8);
    assert_eq!(report["splits"]["valid"]["classes"]["b_blue"], 2);
    let result = json(&run.join("result.json"));
    assert_eq!(result["data"]["skipped_count"], 6);
    let valid_list = std::fs::read_to_string(run.join("valid.txt")).unwrap();
    assert_eq!(valid_list.lines().count(), 4);
    assert!(!valid_list.contains("corrupt"));

    // eval and tta follow the run's policy: a validation file broken since is skipped, named.
    let broken = data.join("val/a_red/v01.jpg");
    std::fs::write(&broken, b"\xFF\xD8\xFF broken since training").unwrap();
    let run_arg = run.as_os_str();
    let all = ok(wick(&["eval".as_ref(), "--run".as_ref(), run_arg], work.path()));
    assert!(all.contains("v01.jpg"), "{all}");
    let eval = json(&run.join("eval.json"));
    assert_eq!(eval["n_images"], 3);
    assert_eq!(paths_of(&eval["skipped"]), ["val/a_red/v01.jpg"]);
    ok(wick(
        &["tta".as_ref(), "--run".as_ref(), run_arg, "--n".as_ref(), "1".as_ref()],
        work.path(),
    ));
    let tta = json(&run.join("tta.json"));
    assert_eq!(tta["n_images"], 3);
    assert_eq!(paths_of(&tta["skipped"]), ["val/a_red/v01.jpg"]);
    // predict too: the bad image is reported and the good one predicted.
    let good = data.join("val/a_red/v00.jpg");
    let all = ok(wick(
        &["predict".as_ref(), "--run".as_ref(), run_arg, broken.as_os_str(), good.as_os_str()],
        work.path(),
    ));
    assert!(all.contains("v01.jpg: skipped"), "{all}");
    assert!(all.contains("v00.jpg: a_red") || all.contains("v00.jpg: b_blue"), "{all}");

    // A validation set whose every file is bad leaves nothing silently: the run says so.
    let empty = work.path().join("empty");
    dataset(&empty, 4, 1);
    for n in 0..8 {
        std::fs::write(empty.join(format!("val/a_red/zero_{n}.jpg")), b"").unwrap();
    }
    let all = ok(train(
        &recipe(work.path(), "skip4.toml", 4, true),
        &empty,
        &work.path().join("run-empty"),
        work.path(),
    ));
    assert!(all.contains("8 bad files"), "{all}");
}

#[test]
fn other_formats_are_read_by_their_bytes_and_other_files_counted() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    dataset(&data, 2, 1);
    let formats = [
        ("o.webp", image::ImageFormat::WebP),
        ("o.bmp", image::ImageFormat::Bmp),
        ("o.gif", image::ImageFormat::Gif),
        ("o.tif", image::ImageFormat::Tiff),
        ("webp_named.jpg", image::ImageFormat::WebP),
    ];
    for (class, name) in ["a_red", "b_blue"].iter().enumerate() {
        for (file, format) in formats {
            save(&data.join(format!("train/{name}/{file}")), &picture(class, 50), format);
        }
    }
    std::fs::write(data.join("README.md"), "about the data").unwrap();
    std::fs::write(data.join("train/labels.csv"), "a,b").unwrap();
    let run = work.path().join("run");
    let all = ok(train(&recipe(work.path(), "r.toml", 4, false), &data, &run, work.path()));
    assert!(all.contains("14 training / 2 validation images"), "{all}");
    assert!(all.contains(".csv 1, .md 1"), "the console counts other extensions:\n{all}");
    let report = json(&run.join("data_report.json"));
    assert_eq!(report["splits"]["train"]["total"], 14);
    assert_eq!(report["skipped"].as_array().unwrap().len(), 0);
    assert_eq!(paths_of(&report["ignored"]), ["README.md", "train/labels.csv"]);

    let probe = data.join("train/a_red/webp_named.jpg");
    let all = ok(wick(
        &["predict".as_ref(), "--run".as_ref(), run.as_os_str(), probe.as_os_str()],
        work.path(),
    ));
    assert!(
        all.contains("webp_named.jpg: a_red") || all.contains("webp_named.jpg: b_blue"),
        "{all}"
    );
}

#[test]
fn stored_paths_round_trip_whatever_the_name() {
    let work = tempfile::tempdir().unwrap();
    let data = work.path().join("data");
    dataset(&data, 4, 0);
    let names = ["tab\there.jpg", "new\nline.jpg", "back\\slash\\n.jpg", "ünï 🐱 .jpg"];
    for (n, name) in names.iter().enumerate() {
        let class = ["a_red", "b_blue"][n % 2];
        save(
            &data.join(format!("val/{class}/{name}")),
            &picture(n % 2, n),
            image::ImageFormat::Jpeg,
        );
    }
    let run = work.path().join("run");
    ok(train(&recipe(work.path(), "r.toml", 4, false), &data, &run, work.path()));
    // eval reads valid.txt back and opens every file: each name must have survived exactly.
    ok(wick(&["eval".as_ref(), "--run".as_ref(), run.as_os_str()], work.path()));
    let eval = json(&run.join("eval.json"));
    assert_eq!(eval["n_images"], 4);
    let mut stored = paths_of(&eval["top_losses"]);
    stored.sort();
    let mut expected: Vec<String> = names
        .iter()
        .enumerate()
        .map(|(n, name)| format!("val/{}/{name}", ["a_red", "b_blue"][n % 2]))
        .collect();
    expected.sort();
    assert_eq!(stored, expected);

    // A name that is not UTF-8 cannot be stored exactly: it is refused, named, up front.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let odd = data.join("train/a_red").join(std::ffi::OsStr::from_bytes(b"caf\xe9.jpg"));
        save(&odd, &picture(0, 9), image::ImageFormat::Jpeg);
        let fail = train(
            &recipe(work.path(), "r.toml", 4, false),
            &data,
            &work.path().join("run2"),
            work.path(),
        );
        let all = text(&fail);
        assert!(!fail.status.success(), "{all}");
        assert!(all.contains("caf") && all.contains("not valid UTF-8"), "{all}");
        let run3 = work.path().join("run3");
        ok(train(&recipe(work.path(), "s.toml", 4, true), &data, &run3, work.path()));
        let report = json(&run3.join("data_report.json"));
        let refused = &report["skipped"][0];
        assert_eq!(refused["path"], "train/a_red/caf\\xe9.jpg");
        assert_eq!(refused["kind"], "name_not_utf8");
    }
}
