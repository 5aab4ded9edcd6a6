//! End-to-end reliability checks of the `wick` binary for numerics, run folders and recipes
//! (docs/reliability.md): each test builds tiny PNG folders and recipes in a temporary folder,
//! runs `wick` as a user would (with `RUST_BACKTRACE=1` set, as many users have), and checks
//! what is refused, what is kept and what is said. They reproduce the reliability cases 06-10
//! and bug 16 of issue 12.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const WICK: &str = env!("CARGO_BIN_EXE_wick");

/// `n_train` and `n_valid` 40x40 PNGs per class under `root/{train,val}/<class>/`; each class
/// has its own colour, with texture so that batches differ.
fn dataset(root: &Path, classes: &[&str], n_train: usize, n_valid: usize) {
    for (split, n) in [("train", n_train), ("val", n_valid)] {
        for (c, class) in classes.iter().enumerate() {
            let folder = root.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for i in 0..n {
                let base = [(c as u32 * 97) % 256, (c as u32 * 53 + 80) % 256, 200 - c as u32 * 40];
                let image = image::RgbImage::from_fn(40, 40, |x, y| {
                    let t = (x * 7 + y * 13 + i as u32 * 31) % 60;
                    image::Rgb([
                        ((base[0] + t) % 256) as u8,
                        ((base[1] + t / 2) % 256) as u8,
                        ((base[2] + 255 - t) % 256) as u8,
                    ])
                });
                image.save(folder.join(format!("{split}{i}.png"))).unwrap();
            }
        }
    }
}

/// A tiny recipe: xresnet `arch` at widen 0.25, 32 px, batch 4, `epochs` epochs of one-cycle at
/// `lr_max`, a checkpoint every batch.
fn recipe(path: &Path, arch: &str, epochs: usize, lr_max: &str) -> PathBuf {
    std::fs::write(
        path,
        format!(
            "name = \"tiny\"\nseed = 7\n[data]\nsplit = \"folders\"\nitem_size = 40\nsize = 32\n\
             batch_size = 4\n[model]\narch = \"{arch}\"\nn_out = \"classes\"\nwiden = 0.25\n\
             [train]\ncheckpoint_every = 1\n[[stage]]\n\
             fit = {{ kind = \"one_cycle\", epochs = {epochs}, lr_max = {lr_max} }}\n"
        ),
    )
    .unwrap();
    path.to_path_buf()
}

fn command(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
    let mut command = Command::new(WICK);
    command.args(args.iter().map(|a| a.as_ref())).env("RUST_BACKTRACE", "1");
    command
}

fn wick(args: &[&dyn AsRef<std::ffi::OsStr>]) -> Output {
    command(args).output().unwrap()
}

fn train(recipe: &Path, data: &Path, out: &Path, extra: &[&str]) -> Output {
    let mut command = command(&[
        &"train",
        &"--recipe",
        &recipe,
        &"--data",
        &data,
        &"--out",
        &out,
        &"--threads",
        &"1",
    ]);
    command.args(extra);
    command.output().unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

fn stdout(output: &Output) -> String {
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// The run succeeded.
fn ok(output: &Output) {
    assert!(output.status.success(), "{}\n{}", stdout(output), stderr(output));
}

/// The command failed with one paragraph on stderr (no backtrace although RUST_BACKTRACE=1)
/// containing every one of `needles`.
fn refused(output: &Output, needles: &[&str]) -> String {
    let text = stderr(output);
    assert!(!output.status.success(), "expected a failure: {}\n{text}", stdout(output));
    assert!(text.starts_with("error: "), "{text}");
    assert_eq!(text.trim_end().lines().count(), 1, "one paragraph: {text}");
    assert!(!text.contains("backtrace") && !text.contains("Backtrace"), "{text}");
    for needle in needles {
        assert!(text.contains(needle), "expected {needle:?} in: {text}");
    }
    text
}

/// The tensors of a safetensors file by name: (dtype, shape, bytes).
fn tensors(path: &Path) -> Vec<(String, String, Vec<usize>, Vec<u8>)> {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<_> = file
        .tensors()
        .into_iter()
        .map(|(name, view)| {
            (name, format!("{:?}", view.dtype()), view.shape().to_vec(), view.data().to_vec())
        })
        .collect();
    out.sort();
    out
}

/// Overwrites the first f32 of tensor `name` with NaN in place, header untouched (as a bit flip
/// or a buggy tool would).
fn poke_nan(path: &Path, name: &str) {
    poke(path, name, f32::NAN);
}

/// Overwrites the first f32 of tensor `name` with `value` in place, header untouched.
fn poke(path: &Path, name: &str, value: f32) {
    let mut bytes = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(bytes[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&bytes[8..8 + n]).unwrap();
    let start = header[name]["data_offsets"][0].as_u64().unwrap() as usize + 8 + n;
    bytes[start..start + 4].copy_from_slice(&value.to_le_bytes());
    std::fs::write(path, bytes).unwrap();
}

/// Rewrites a safetensors file without its metadata (a foreign export) and with the first value
/// of `name` set to NaN.
fn foreign_with_nan(path: &Path, name: &str) {
    let bytes = std::fs::read(path).unwrap();
    let file = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut owned: Vec<(String, safetensors::Dtype, Vec<usize>, Vec<u8>)> = file
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    let entry = owned.iter_mut().find(|(n, ..)| n == name).unwrap();
    entry.3[..4].copy_from_slice(&f32::NAN.to_le_bytes());
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = owned
        .iter()
        .map(|(n, dtype, shape, data)| {
            (n.clone(), safetensors::tensor::TensorView::new(*dtype, shape.clone(), data).unwrap())
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn first_image(data: &Path) -> PathBuf {
    let folder = data.join("val").join("a");
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(folder).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files[0].clone()
}

fn temporaries(run: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for folder in [run.to_path_buf(), run.join("stage-0")] {
        if let Ok(entries) = std::fs::read_dir(folder) {
            for entry in entries.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if name.contains(".tmp") {
                    found.push(name);
                }
            }
        }
    }
    found
}

/// Case 07 and 08(b): weights of another architecture, corrupted weights and NaN weights are
/// refused by predict, eval and tta, naming the tensor or the architecture; `tta --beta nan` is
/// refused; predict answers each image or names its error, and fails if any failed.
#[test]
fn weights_are_checked_before_any_prediction() {
    let dir = tempfile::tempdir().unwrap();
    let (data, work) = (dir.path().join("data"), dir.path());
    dataset(&data, &["a", "b"], 4, 2);
    let r18 = recipe(&work.join("r18.toml"), "xresnet18", 1, "3e-3");
    let r34 = recipe(&work.join("r34.toml"), "xresnet34", 1, "3e-3");
    let (run18, run34) = (work.join("run18"), work.join("run34"));
    ok(&train(&r18, &data, &run18, &[]));
    ok(&train(&r34, &data, &run34, &[]));
    let image = first_image(&data);
    let model = run18.join("model.safetensors");
    let good = std::fs::read(&model).unwrap();

    // Several paths: one answer per image, the bad ones named, exit status 1.
    let missing = work.join("no-such.png");
    let not_image = work.join("r18.toml");
    let output = wick(&[&"predict", &"--run", &run18, &image, &missing, &not_image]);
    assert_eq!(output.status.code(), Some(1), "{}", stderr(&output));
    assert!(stdout(&output).starts_with(&format!("{}: ", image.display())), "{}", stdout(&output));
    let errors = stderr(&output);
    assert!(errors.contains(&format!("{}: error:", missing.display())), "{errors}");
    assert!(errors.contains(&format!("{}: error:", not_image.display())), "{errors}");
    assert!(errors.contains("2 of 3 images failed"), "{errors}");

    // xresnet34's weights in an xresnet18 run.
    std::fs::copy(run34.join("model.safetensors"), &model).unwrap();
    refused(&wick(&[&"predict", &"--run", &run18, &image]), &["arch xresnet34", "arch xresnet18"]);
    refused(&wick(&[&"eval", &"--run", &run18]), &["arch xresnet34"]);

    // One NaN written over a weight: named. One finite weight changed: the checksum.
    std::fs::write(&model, &good).unwrap();
    poke_nan(&model, "11.bias");
    refused(&wick(&[&"eval", &"--run", &run18]), &["model.safetensors", "11.bias", "non-finite"]);
    std::fs::write(&model, &good).unwrap();
    poke(&model, "11.bias", 0.123);
    refused(&wick(&[&"eval", &"--run", &run18]), &["checksum mismatch", "model.safetensors"]);
    // The same NaN in a file without wick's metadata: refused naming the tensor.
    std::fs::write(&model, &good).unwrap();
    foreign_with_nan(&model, "11.bias");
    refused(&wick(&[&"eval", &"--run", &run18]), &["11.bias", "non-finite"]);
    refused(&wick(&[&"tta", &"--run", &run18, &"--n", &"1"]), &["11.bias", "non-finite"]);
    refused(&wick(&[&"predict", &"--run", &run18, &image]), &["11.bias", "non-finite"]);
    assert!(!run18.join("eval.json").exists() && !run18.join("tta.json").exists());

    // A NaN blend weight.
    std::fs::write(&model, &good).unwrap();
    refused(&wick(&[&"tta", &"--run", &run18, &"--beta", &"nan"]), &["--beta", "NaN", "[0, 1]"]);
    ok(&wick(&[&"eval", &"--run", &run18]));
}

/// Case 08(c) and 08(a): a diverging fit stops with an error and the checkpoint it keeps is
/// finite; a NaN written into a checkpoint is refused when resuming.
#[test]
fn a_non_finite_state_is_never_kept_or_resumed() {
    let dir = tempfile::tempdir().unwrap();
    let (data, work) = (dir.path().join("data"), dir.path());
    dataset(&data, &["a", "b"], 6, 2);
    let wild = recipe(&work.join("wild.toml"), "xresnet18", 3, "1e6");
    let run = work.join("wild");
    let output = train(&wild, &data, &run, &[]);
    assert!(!output.status.success(), "{}", stdout(&output));
    let text = stderr(&output);
    assert!(text.contains("non-finite") || text.contains("diverged"), "{text}");
    assert!(!run.join("model.safetensors").exists());
    let checkpoint = run.join("checkpoint.safetensors");
    if checkpoint.exists() {
        for (name, dtype, _, bytes) in tensors(&checkpoint) {
            if dtype == "F32" {
                assert!(
                    bytes
                        .chunks_exact(4)
                        .all(|b| f32::from_le_bytes(b.try_into().unwrap()).is_finite()),
                    "{name} is not finite in the kept checkpoint"
                );
            }
        }
        // The kept checkpoint given a NaN: the rerun refuses it, naming the file.
        poke_nan(&checkpoint, "model.11.bias");
        refused(&train(&wild, &data, &run, &[]), &["model.11.bias", "non-finite"]);
    }
}

/// Sends `signal` to the child once `file` exists, `times` times in a row as fast as `kill`
/// runs (GNU `timeout -s INT` delivers one interrupt twice: to the process and to its group),
/// and waits for it.
fn signal_when(
    child: &mut std::process::Child,
    file: &Path,
    signal: &str,
    times: usize,
) -> Option<i32> {
    let started = Instant::now();
    while !file.exists() && child.try_wait().unwrap().is_none() {
        assert!(started.elapsed() < Duration::from_secs(300), "no checkpoint appeared");
        std::thread::sleep(Duration::from_millis(5));
    }
    for _ in 0..times {
        let _ = Command::new("kill").args([signal, &child.id().to_string()]).status();
    }
    child.wait().unwrap().code()
}

/// Cases 06, 10 and bug 16: a run interrupted by SIGTERM resumes to the same model file, byte
/// for byte (num_batches_tracked included), and leaves no temporary file; meanwhile another
/// dataset, another seed, a second writer, a NaN in the checkpoint, `tta --out` over the run and
/// `--out` inside `--data` are all refused without touching the run.
#[test]
fn a_resumed_run_is_exact_and_guarded() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (data_a, data_b) = (work.join("dsA"), work.join("dsB"));
    dataset(&data_a, &["a", "b"], 8, 2);
    dataset(&data_b, &["c", "d"], 8, 2);
    let r = recipe(&work.join("r.toml"), "xresnet18", 3, "3e-3");
    let (reference, run) = (work.join("ref"), work.join("run"));
    let output = train(&r, &data_a, &reference, &[]);
    ok(&output);
    // Where the run's seconds went: the console's line and result.json's split, whose parts
    // add up to the run's seconds.
    assert!(stdout(&output).contains("time: ") && stdout(&output).contains("waiting for data"));
    let split_sum = |path: &Path| {
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        let parts = ["data_wait", "train_batches", "valid_batches", "other"];
        let sum: f64 = parts.iter().map(|part| result["time_split"][part].as_f64().unwrap()).sum();
        assert!(result["time_split"]["train_batches"].as_f64().unwrap() > 0.0);
        (sum, result["seconds"].as_f64().unwrap())
    };
    let (sum, seconds) = split_sum(&reference.join("result.json"));
    assert!((sum - seconds).abs() < 1e-6 && seconds > 0.0, "{sum} vs {seconds}");

    let mut child = command(&[
        &"train",
        &"--recipe",
        &r,
        &"--data",
        &data_a,
        &"--out",
        &run,
        &"--threads",
        &"1",
    ])
    .stdout(std::fs::File::create(work.join("interrupted.log")).unwrap())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let code = signal_when(&mut child, &run.join("checkpoint.safetensors"), "-TERM", 2);
    assert_eq!(code, Some(130), "SIGTERM saves a checkpoint and exits 130");
    // Delivered twice at once, it is still one interrupt: the batch ends and is saved.
    let log = std::fs::read_to_string(work.join("interrupted.log")).unwrap();
    assert!(log.contains("saved: rerun the same command to resume"), "{log}");
    // What a kill -9 mid-write leaves behind.
    std::fs::write(run.join(".checkpoint.safetensors.tmp-4000000"), b"partial").unwrap();
    let vocab = std::fs::read_to_string(run.join("vocab.txt")).unwrap();

    // Another dataset, another seed: refused, saying what changed.
    refused(&train(&r, &data_b, &run, &[]), &["classes were [a, b], now [c, d]"]);
    refused(&train(&r, &data_a, &run, &["--seed", "8"]), &["seed: 7 -> 8"]);
    // A second writer: refused at once, naming the holder.
    let lock = std::fs::OpenOptions::new().write(true).open(run.join(".lock")).unwrap();
    lock.try_lock().unwrap();
    refused(&train(&r, &data_a, &run, &[]), &["in use by another wick process"]);
    drop(lock);
    // A NaN in the checkpoint.
    let checkpoint = run.join("checkpoint.safetensors");
    let saved = std::fs::read(&checkpoint).unwrap();
    poke_nan(&checkpoint, "model.11.bias");
    refused(&train(&r, &data_a, &run, &[]), &["model.11.bias", "non-finite"]);
    poke(&checkpoint, "model.11.bias", 0.123);
    refused(&train(&r, &data_a, &run, &[]), &["checksum mismatch"]);
    std::fs::write(&checkpoint, saved).unwrap();
    assert_eq!(std::fs::read_to_string(run.join("vocab.txt")).unwrap(), vocab);

    // The resume finishes with the uninterrupted run's model, byte for byte, and its time split
    // covers the seconds from before the interrupt too (the checkpoint keeps it).
    let output = train(&r, &data_a, &run, &[]);
    ok(&output);
    assert!(stdout(&output).contains("waiting for data"), "{}", stdout(&output));
    let (sum, seconds) = split_sum(&run.join("result.json"));
    assert!((sum - seconds).abs() < 1e-6, "{sum} vs {seconds}");
    let (resumed, uninterrupted) =
        (tensors(&run.join("model.safetensors")), tensors(&reference.join("model.safetensors")));
    let differing: Vec<&String> =
        resumed.iter().zip(&uninterrupted).filter(|(a, b)| a != b).map(|(a, _)| &a.0).collect();
    assert_eq!(resumed.len(), uninterrupted.len());
    assert!(differing.is_empty(), "tensors that differ after the resume: {differing:?}");
    assert_eq!(
        std::fs::read(run.join("model.safetensors")).unwrap(),
        std::fs::read(reference.join("model.safetensors")).unwrap()
    );
    assert!(temporaries(&run).is_empty(), "{:?}", temporaries(&run));
    let table = |path: &Path| {
        let result: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        result["stages"][0]["fits"][0]["epochs"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| (e["train_loss"].clone(), e["valid_loss"].clone(), e["accuracy"].clone()))
            .collect::<Vec<_>>()
    };
    assert_eq!(table(&run.join("result.json")), table(&reference.join("result.json")));

    // A finished run rerun on other data, evaluated on other data, or given as tta --out.
    refused(&train(&r, &data_b, &run, &[]), &["classes were [a, b], now [c, d]"]);
    refused(&wick(&[&"eval", &"--run", &run, &"--data", &data_b]), &["validation images"]);
    let result = std::fs::read(run.join("result.json")).unwrap();
    refused(&wick(&[&"tta", &"--run", &run, &"--out", &run, &"--n", &"1"]), &["training run"]);
    assert_eq!(std::fs::read(run.join("result.json")).unwrap(), result);
    ok(&wick(&[&"eval", &"--run", &run]));

    // --out inside --data: refused before anything is created there.
    let inside = data_a.join("runs/x");
    refused(&train(&r, &data_a, &inside, &[]), &["inside the data folder"]);
    assert!(!data_a.join("runs").exists());
}

/// A tiny progressive recipe as chapter 7 writes it: one-cycle at 32 px, then new data at
/// 40 px on a new random split and `fine_tune(1)`, with MixUp (whose draws come from each
/// stage's seed), a checkpoint every batch.
fn progressive_recipe(path: &Path) -> PathBuf {
    std::fs::write(
        path,
        "name = \"tiny-progressive\"\nseed = 7\n[data]\nsplit = \"random\"\nvalid_pct = 0.25\n\
         item_size = 40\nsize = 32\nbatch_size = 4\n[model]\narch = \"xresnet18\"\n\
         n_out = \"classes\"\nwiden = 0.25\n[train]\ncheckpoint_every = 1\nmixup = 0.4\n\
         [[stage]]\nfit = { kind = \"one_cycle\", epochs = 1, lr_max = 3e-3 }\n\
         [[stage]]\nsize = 40\nnew_split = true\n\
         fit = { kind = \"fine_tune\", epochs = 1, base_lr = 1e-3 }\n",
    )
    .unwrap();
    path.to_path_buf()
}

/// The `position` of a checkpoint: `[fit_index, epoch, batch, data_epoch, n_epoch,
/// n_train_batches]`.
fn checkpoint_position(path: &Path) -> Vec<i64> {
    let (_, _, _, bytes) =
        tensors(path).into_iter().find(|(name, ..)| name == "position").expect("a position");
    bytes.chunks_exact(8).map(|b| i64::from_le_bytes(b.try_into().unwrap())).collect()
}

/// Issue 14: a two-stage run has one checkpoint; interrupted inside its second stage, the rerun
/// resumes there and ends with the uninterrupted run's model, byte for byte; a finished run
/// rerun trains nothing and keeps its files; a run folder with an older wick's per-stage
/// checkpoints is refused, not trained again from the start.
#[test]
fn a_progressive_run_resumes_inside_its_second_stage() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let data = work.join("data");
    dataset(&data, &["a", "b"], 8, 2);
    let r = progressive_recipe(&work.join("progressive.toml"));
    let (reference, run) = (work.join("ref"), work.join("run"));
    ok(&train(&r, &data, &reference, &[]));
    for stage in ["stage-0", "stage-1"] {
        for file in ["metrics.jsonl", "loss.png", "schedule.png", "show_batch.png"] {
            assert!(reference.join(stage).join(file).is_file(), "{stage}/{file}");
        }
        assert!(!reference.join(stage).join("checkpoint.safetensors").exists());
        assert!(!reference.join(stage).join("done.json").exists());
    }
    // Stage 1's table holds its own two fits (fine_tune's frozen and unfrozen epochs).
    let result: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(reference.join("result.json")).unwrap())
            .unwrap();
    assert_eq!(result["stages"][1]["fits"].as_array().unwrap().len(), 2);

    let mut child =
        command(&[&"train", &"--recipe", &r, &"--data", &data, &"--out", &run, &"--threads", &"1"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap();
    // Stage 1's data is built (its show_batch.png drawn) as the stage starts.
    let code = signal_when(&mut child, &run.join("stage-1/show_batch.png"), "-TERM", 1);
    assert_eq!(code, Some(130), "SIGTERM saves a checkpoint and exits 130");
    let position = checkpoint_position(&run.join("checkpoint.safetensors"));
    assert!(position[0] >= 1, "the checkpoint is inside stage 1 (fits 1 and 2): {position:?}");
    let output = train(&r, &data, &run, &[]);
    ok(&output);
    assert!(stdout(&output).contains("resuming from"), "{}", stdout(&output));
    let model = std::fs::read(run.join("model.safetensors")).unwrap();
    assert_eq!(model, std::fs::read(reference.join("model.safetensors")).unwrap());
    // Each stage's plot shows that stage's losses only, the resumed ones as the uninterrupted.
    for plot in ["stage-0/loss.png", "stage-1/loss.png", "stage-1/schedule.png"] {
        let read = |run: &Path| std::fs::read(run.join(plot)).unwrap();
        assert!(read(&run) == read(&reference), "{plot} differs after the resume");
    }

    // Rerun once finished: nothing trains, the files stay.
    let result = std::fs::read(run.join("result.json")).unwrap();
    let output = train(&r, &data, &run, &[]);
    ok(&output);
    assert!(stdout(&output).contains("every stage finished earlier"), "{}", stdout(&output));
    assert!(!stdout(&output).contains("epoch     train_loss"), "{}", stdout(&output));
    assert_eq!(std::fs::read(run.join("model.safetensors")).unwrap(), model);
    assert_eq!(std::fs::read(run.join("result.json")).unwrap(), result);

    // A folder left by a wick that kept a checkpoint per stage.
    std::fs::remove_file(run.join("checkpoint.safetensors")).unwrap();
    std::fs::write(run.join("stage-1/done.json"), b"{}").unwrap();
    refused(&train(&r, &data, &run, &[]), &["stage-1/done.json", "older wick"]);
}

/// Case 09: values out of range are refused naming the key, before the run folder exists, so a
/// fixed recipe can reuse the folder; a u64 seed round-trips.
#[test]
fn recipes_are_validated_before_the_run_folder_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let work = dir.path();
    let (data, one) = (work.join("ds"), work.join("one"));
    dataset(&data, &["a", "b"], 4, 2);
    dataset(&one, &["a"], 4, 2);
    let good = recipe(&work.join("good.toml"), "xresnet18", 1, "3e-3");
    let text = std::fs::read_to_string(&good).unwrap();
    let cases = [
        ("epochs = 1", "epochs = 0", "stage[0].fit.epochs = 0"),
        ("widen = 0.25", "widen = 0.0", "model.widen = 0"),
        ("checkpoint_every = 1", "checkpoint_every = 1\nwd = -5.0", "train.wd = -5"),
        (
            "checkpoint_every = 1",
            "checkpoint_every = 1\nloss = \"label_smoothing\"\nlabel_smoothing_eps = 5.0",
            "train.label_smoothing_eps = 5",
        ),
        ("[[stage]]", "[[stage]]\nbatch_size = 0", "stage[0].batch_size = 0"),
        ("batch_size = 4", "batch_size = \"4\"", "data.batch_size"),
    ];
    let out = work.join("out");
    for (index, (from, to, expected)) in cases.iter().enumerate() {
        let path = work.join(format!("bad{index}.toml"));
        std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        refused(&train(&path, &data, &out, &[]), &[expected]);
        assert!(!out.exists(), "{to}: the run folder was written");
    }
    refused(&train(&good, &one, &out, &[]), &["at least 2 classes"]);
    assert!(!out.exists());
    // The fixed recipe runs in the same --out, with the largest seed, and eval reads it back.
    ok(&train(&good, &data, &out, &["--seed", "18446744073709551615"]));
    let resolved = std::fs::read_to_string(out.join("recipe.resolved.toml")).unwrap();
    assert!(resolved.contains("seed = \"18446744073709551615\""), "{resolved}");
    ok(&wick(&[&"eval", &"--run", &out]));
}

/// A candle error (a 0-pixel input to a convolution) is one paragraph although
/// RUST_BACKTRACE=1 is set; `--debug` adds the backtrace.
#[test]
fn errors_are_one_paragraph_unless_debug() {
    let summary: [&dyn AsRef<std::ffi::OsStr>; 7] =
        [&"summary", &"--arch", &"xresnet18", &"--n-out", &"2", &"--size", &"0"];
    refused(&wick(&summary), &["conv2d", "larger than the padded input"]);
    let mut debug: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&"--debug"];
    debug.extend(summary);
    let output = wick(&debug);
    assert!(!output.status.success());
    assert!(stderr(&output).lines().count() > 3, "{}", stderr(&output));
}
