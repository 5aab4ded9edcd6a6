//! `wick train --data <URL>` end to end, against an HTTP server the test starts on 127.0.0.1:
//! a dataset archive is downloaded, extracted and trained on (and reused without a second
//! request); a hostile archive is refused; a stalled server fails within
//! `WICK_DATA_READ_TIMEOUT`; a catalogue name fetched from `WICK_DATA_BASE_URL` is still
//! checked against the catalogue's md5.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A server that answers every GET with `body` (or, with `stall`, with half of it and then
/// nothing), recording the requested paths.
fn serve(body: Vec<u8>, stall: bool) -> (String, Arc<Mutex<Vec<String>>>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let paths = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&paths);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            let _ = reader.read_line(&mut first);
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
            }
            seen.lock().unwrap().push(first.split(' ').nth(1).unwrap_or_default().to_string());
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            if stall {
                let _ = stream.write_all(&body[..body.len() / 2]);
                let _ = stream.flush();
                std::thread::sleep(Duration::from_secs(120));
            } else {
                let _ = stream.write_all(&body);
            }
        }
    });
    (base, paths)
}

/// A .tgz of `top/{train,val}/{cat,dog}/*.jpg` (tiny solid-colour JPEGs).
fn dataset_archive(dir: &Path) -> Vec<u8> {
    let source = dir.join("src");
    for split in ["train", "val"] {
        for (class_idx, class) in ["cat", "dog"].iter().enumerate() {
            let folder = source.join(split).join(class);
            std::fs::create_dir_all(&folder).unwrap();
            for k in 0..2u8 {
                let image = image::RgbImage::from_fn(16, 16, |x, y| {
                    image::Rgb([class_idx as u8 * 200, (x * 9 + y) as u8 + k * 40, 90])
                });
                image.save(folder.join(format!("{k}.jpg"))).unwrap();
            }
        }
    }
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    builder.append_dir_all("pets", &source).unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

/// A .tgz whose dataset folder holds a symbolic link out of it.
fn hostile_archive() -> Vec<u8> {
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast()));
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Symlink);
    header.set_size(0);
    header.set_mode(0o777);
    builder.append_link(&mut header, "pets/train/stolen", "/etc").unwrap();
    builder.into_inner().unwrap().finish().unwrap()
}

fn recipe(dir: &Path) -> PathBuf {
    let path = dir.join("tiny.toml");
    std::fs::write(
        &path,
        r#"name = "tiny"
seed = 7
[data]
split = "folders"
item_size = 24
size = 16
batch_size = 2
[model]
arch = "xresnet18"
n_out = "classes"
widen = 0.25
[[stage]]
fit = { kind = "one_cycle", epochs = 1, lr_max = 3e-3 }
"#,
    )
    .unwrap();
    path
}

fn wick_train(dir: &Path, data: &str, out: &str, env: &[(&str, &str)]) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_wick"));
    command
        .args(["train", "--threads", "1", "--recipe"])
        .arg(recipe(dir))
        .args(["--data", data, "--out"])
        .arg(dir.join(out))
        .env("WICK_DATA", dir.join("cache"))
        .env("RUST_BACKTRACE", "0")
        .env_remove("WICK_DATA_BASE_URL")
        .env_remove("WICK_DATA_READ_TIMEOUT");
    for (key, value) in env {
        command.env(key, value);
    }
    command.output().unwrap()
}

/// The names directly inside `dir`, sorted.
fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|entries| {
            entries.map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned()).collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[test]
fn train_downloads_extracts_and_reuses_a_url() {
    let dir = tempfile::tempdir().unwrap();
    let (base, paths) = serve(dataset_archive(dir.path()), false);
    let url = format!("{base}/sets/pets.tgz");
    let output = wick_train(dir.path(), &url, "run", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stderr}");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("run/vocab.txt")).unwrap().trim(),
        "cat\ndog"
    );
    assert_eq!(paths.lock().unwrap().as_slice(), ["/sets/pets.tgz"]);
    let cached = names(&dir.path().join("cache"));
    assert_eq!(cached.len(), 3, "{cached:?}");
    assert!(
        cached[0] == "archives"
            && cached[1].starts_with("pets-")
            && cached[2].ends_with(".manifest.json"),
        "{cached:?}"
    );
    // A second run reuses the download and the extraction.
    let output = wick_train(dir.path(), &url, "run2", &[]);
    assert!(output.status.success(), "{}", String::from_utf8_lossy(&output.stderr));
    assert_eq!(paths.lock().unwrap().len(), 1);
    assert!(String::from_utf8_lossy(&output.stderr).contains("checked against its manifest"));
}

#[test]
fn a_hostile_archive_from_a_url_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = serve(hostile_archive(), false);
    let output = wick_train(dir.path(), &format!("{base}/pets.tgz"), "run", &[]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("refused entry \"pets/train/stolen\"") && stderr.contains("symbolic link"),
        "{stderr}"
    );
    assert_eq!(names(&dir.path().join("cache")), ["archives"], "no dataset folder is left");
}

#[test]
fn a_stalled_server_fails_within_the_read_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let (base, _) = serve(vec![0u8; 100_000], true);
    let url = format!("{base}/pets.tgz");
    let started = Instant::now();
    let output = wick_train(dir.path(), &url, "run", &[("WICK_DATA_READ_TIMEOUT", "0.5")]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(started.elapsed() < Duration::from_secs(30), "{:?}", started.elapsed());
    assert!(stderr.contains(&format!("download of {url} failed")), "{stderr}");
    let bad = wick_train(dir.path(), &url, "run", &[("WICK_DATA_READ_TIMEOUT", "never")]);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("WICK_DATA_READ_TIMEOUT"));
}

#[test]
fn a_catalogue_name_from_a_mirror_is_still_md5_checked() {
    let dir = tempfile::tempdir().unwrap();
    let (base, paths) = serve(dataset_archive(dir.path()), false);
    let mirror = format!("{base}/mirror");
    let output =
        wick_train(dir.path(), "imagenette2-160", "run", &[("WICK_DATA_BASE_URL", &mirror)]);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(stderr.contains("checksum mismatch"), "{stderr}");
    assert_eq!(paths.lock().unwrap().as_slice(), ["/mirror/imagenette2-160.tgz"]);
    assert!(!dir.path().join("cache/imagenette2-160").exists());
}
