//! Acquisition against a real HTTP server on 127.0.0.1 (started by the test, serving a small
//! .tgz the test builds): download, resume of a partial file, md5 mismatch, atomic and safe
//! extraction (every refused kind of entry), and `untar_data` end to end.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::sync::{Arc, Mutex};

use wick_data::{
    DataError, Expected, Progress, Source, download, extract_tgz, md5_file, untar_data,
};

/// A one-file HTTP/1.1 server on a free loopback port. It records each request's `Range`
/// header and honours it when `honour_range` is set.
struct Server {
    url: String,
    ranges: Arc<Mutex<Vec<Option<String>>>>,
}

fn serve(body: Vec<u8>, honour_range: bool) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/data.tgz", listener.local_addr().unwrap());
    let ranges = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&ranges);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(value.trim().trim_end_matches('-').to_string());
                }
            }
            seen.lock().unwrap().push(range.clone());
            let start: usize =
                range.as_deref().and_then(|r| r.parse().ok()).filter(|_| honour_range).unwrap_or(0);
            let head = if start >= body.len() && start > 0 {
                "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_string()
            } else if start > 0 {
                format!(
                    "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes {}-{}/{}\r\nConnection: close\r\n\r\n",
                    body.len() - start,
                    start,
                    body.len() - 1,
                    body.len()
                )
            } else {
                format!(
                    "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                )
            };
            let _ = stream.write_all(head.as_bytes());
            if !head.starts_with("HTTP/1.1 416") {
                let _ = stream.write_all(&body[start.min(body.len())..]);
            }
        }
    });
    Server { url, ranges }
}

/// A .tgz with a single top folder `mini/` holding a tiny image tree, like fastai's archives.
fn good_archive(dir: &Path) -> std::path::PathBuf {
    let source = dir.join("src/mini");
    common::image_tree(&source, &["a", "b"], 2, 8);
    let path = dir.join("mini.tgz");
    let file = std::fs::File::create(&path).unwrap();
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    builder.append_dir_all("mini", &source).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    path
}

/// A .tgz with one ordinary file and one raw entry whose name, type and link target are
/// written byte for byte (the tar crate's safe setters would refuse them).
fn hostile_archive(dir: &Path, name: &str, kind: tar::EntryType, link: &str) -> std::path::PathBuf {
    let path = dir.join(format!("hostile-{}.tgz", name.replace(['/', '.'], "_")));
    let file = std::fs::File::create(&path).unwrap();
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    let mut ok = tar::Header::new_gnu();
    ok.set_size(2);
    ok.set_mode(0o644);
    ok.set_cksum();
    builder.append_data(&mut ok, "root/ok.txt", &b"ok"[..]).unwrap();
    let mut header = tar::Header::new_old();
    let raw = header.as_old_mut();
    raw.name[..name.len()].copy_from_slice(name.as_bytes());
    raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    header.set_mode(0o644);
    header.set_size(if kind == tar::EntryType::Regular { 4 } else { 0 });
    header.set_cksum();
    let data: &[u8] = if kind == tar::EntryType::Regular { b"evil" } else { b"" };
    builder.append(&header, data).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    path
}

#[test]
fn downloads_verifies_and_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(dir.path().join("reference"), &body).unwrap();
    let md5 = md5_file(&dir.path().join("reference")).unwrap();
    let server = serve(body.clone(), true);
    let dest = dir.path().join("data.tgz");
    let expected = Expected { bytes: Some(body.len() as u64), md5: Some(md5) };
    let mut last = None;
    download(&server.url, &dest, &expected, &mut |p| {
        if let Progress::Download { done, total } = p {
            last = Some((done, total));
        }
    })
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(last, Some((200_000, Some(200_000))));
    // A verified file is reused without another request.
    download(&server.url, &dest, &expected, &mut |_| {}).unwrap();
    assert_eq!(server.ranges.lock().unwrap().len(), 1);
}

#[test]
fn a_partial_download_resumes_with_a_range_request() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..100_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(dir.path().join("reference"), &body).unwrap();
    let md5 = md5_file(&dir.path().join("reference")).unwrap();
    let dest = dir.path().join("data.tgz");
    std::fs::write(dir.path().join("data.tgz.part"), &body[..30_000]).unwrap();
    let server = serve(body.clone(), true);
    download(
        &server.url,
        &dest,
        &Expected { bytes: Some(100_000), md5: Some(md5.clone()) },
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.ranges.lock().unwrap().as_slice(), [Some("30000".to_string())]);
    assert!(!dir.path().join("data.tgz.part").exists());

    // A server that ignores ranges answers 200: the partial file is restarted, not appended.
    let dest = dir.path().join("again.tgz");
    std::fs::write(dir.path().join("again.tgz.part"), &body[..30_000]).unwrap();
    let server = serve(body.clone(), false);
    download(&server.url, &dest, &Expected { bytes: Some(100_000), md5: Some(md5) }, &mut |_| {})
        .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn a_checksum_mismatch_is_an_error_and_the_file_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(vec![1u8; 5000], true);
    let dest = dir.path().join("data.tgz");
    let expected =
        Expected { bytes: Some(5000), md5: Some("00000000000000000000000000000000".to_string()) };
    let error = download(&server.url, &dest, &expected, &mut |_| {}).unwrap_err();
    assert!(matches!(error, DataError::Checksum { .. }), "{error}");
    assert!(
        error.to_string().contains("data.tgz") && error.to_string().contains("00000000"),
        "{error}"
    );
    assert!(!dest.exists());
    assert!(!dir.path().join("data.tgz.part").exists());
    let wrong_size = Expected { bytes: Some(4999), md5: None };
    assert!(download(&server.url, &dest, &wrong_size, &mut |_| {}).is_err());
    assert!(!dest.exists());
}

#[test]
fn extraction_is_atomic_and_unwraps_the_single_top_folder() {
    let dir = tempfile::tempdir().unwrap();
    let archive = good_archive(dir.path());
    let dest = dir.path().join("out/mini");
    extract_tgz(&archive, &dest).unwrap();
    assert!(dest.join("train/a/a_000.JPEG").is_file());
    assert!(dest.join("val/b/b_001.JPEG").is_file());
    let leftovers: Vec<_> = std::fs::read_dir(dir.path().join("out"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers, ["mini"], "no temporary folder is left behind");
    let error = extract_tgz(&archive, &dest).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
}

#[test]
fn extraction_refuses_entries_that_escape() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("/tmp/wick-evil.txt", tar::EntryType::Regular, "", "absolute"),
        ("root/../../evil.txt", tar::EntryType::Regular, "", ".."),
        ("root/link", tar::EntryType::Symlink, "../../outside", "symbolic link"),
        ("root/abs-link", tar::EntryType::Symlink, "/etc/passwd", "symbolic link"),
        ("root/hard", tar::EntryType::Link, "../outside", "hard link"),
        ("root/fifo", tar::EntryType::Fifo, "", "entry type"),
    ];
    for (name, kind, link, reason) in cases {
        let archive = hostile_archive(dir.path(), name, kind, link);
        let dest = dir.path().join(format!("dest-{}", name.replace(['/', '.'], "_")));
        let error = extract_tgz(&archive, &dest).unwrap_err();
        assert!(matches!(error, DataError::UnsafeArchiveEntry { .. }), "{name}: {error}");
        assert!(
            error.to_string().contains(name) && error.to_string().contains(reason),
            "{name}: {error}"
        );
        assert!(!dest.exists(), "{name}: nothing may be left at the destination");
    }
    assert!(!Path::new("/tmp/wick-evil.txt").exists());
    // A symbolic link that stays inside the archive is fine.
    let archive = hostile_archive(dir.path(), "root/inner-link", tar::EntryType::Symlink, "ok.txt");
    extract_tgz(&archive, &dir.path().join("fine")).unwrap();
    let mut text = String::new();
    std::fs::File::open(dir.path().join("fine/inner-link"))
        .unwrap()
        .read_to_string(&mut text)
        .unwrap();
    assert_eq!(text, "ok");
}

#[test]
fn untar_data_downloads_extracts_and_then_reuses() {
    let dir = tempfile::tempdir().unwrap();
    let archive = good_archive(dir.path());
    let bytes = std::fs::read(&archive).unwrap();
    let server = serve(bytes.clone(), true);
    let source = Source::Remote {
        name: "mini".into(),
        url: server.url.clone(),
        bytes: Some(bytes.len() as u64),
        md5: Some(md5_file(&archive).unwrap()),
    };
    let cache = dir.path().join("cache");
    let mut events = Vec::new();
    let root = untar_data(&source, &cache, &mut |p| events.push(p)).unwrap();
    assert_eq!(root, cache.join("mini"));
    assert!(root.join("train/b/b_000.JPEG").is_file());
    assert!(events.iter().any(|e| matches!(e, Progress::Extract { .. })));
    assert_eq!(untar_data(&source, &cache, &mut |_| {}).unwrap(), root);
    assert_eq!(server.ranges.lock().unwrap().len(), 1, "the second call needs no network");

    // Offline use: a local archive or folder.
    let local =
        untar_data(&Source::local(&archive), &dir.path().join("cache2"), &mut |_| {}).unwrap();
    assert!(local.join("val/a/a_001.JPEG").is_file());
    assert_eq!(untar_data(&Source::local(&root), &cache, &mut |_| {}).unwrap(), root);
    let missing =
        untar_data(&Source::LocalFolder(dir.path().join("nope")), &cache, &mut |_| {}).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}
