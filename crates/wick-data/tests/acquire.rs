//! Acquisition against a real HTTP server on 127.0.0.1 (started by the test, serving a small
//! .tgz the test builds): download, resume of a partial file, md5 mismatch, stalled and cut
//! connections; extraction of hostile archives (every refused kind of entry, modes, symlink
//! chains), damaged archives (gzip CRC, truncation at every point, missing end-of-archive
//! marker), limits; and the cache: keyed by content, checked against its manifest, cleaned of
//! a killed run's staging folders, shared by concurrent runs. Reproduces
//! `cases/reliability/00`-`03`, `10` (extraction part) and `bugs/15`.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tar::EntryType;
use wick_data::{
    AcquireConfig, DataError, DownloadConfig, Expected, ExtractConfig, Progress, ReuseCheck,
    Source, download, extract_tgz, md5_file, untar_data,
};

/// How the test server answers.
#[derive(Clone, Copy)]
enum Behaviour {
    /// Serve the body, honouring `Range` requests if asked to.
    Normal { honour_range: bool },
    /// Announce the whole body, send `after` bytes, then stall (never close).
    Stall { after: usize },
    /// Announce the whole body, send `after` bytes, then close the connection.
    Cut { after: usize },
    /// Accept the connection and never answer.
    Silent,
    /// Answer a range request with `206` but the whole body from byte 0.
    WrongRange,
}

/// A request's path and `Range` start.
type Request = (String, Option<String>);

/// A one-file HTTP/1.1 server on a free loopback port. It records each request's path and
/// `Range` header.
struct Server {
    base: String,
    url: String,
    requests: Arc<Mutex<Vec<Request>>>,
}

fn serve(body: Vec<u8>, honour_range: bool) -> Server {
    serve_as(body, Behaviour::Normal { honour_range })
}

fn serve_as(body: Vec<u8>, behaviour: Behaviour) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let url = format!("{base}/data.tgz");
    let requests = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&requests);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut range = None;
            let mut path = String::new();
            loop {
                let mut line = String::new();
                if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                    break;
                }
                if path.is_empty() {
                    path = line.split(' ').nth(1).unwrap_or_default().to_string();
                }
                if let Some(value) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                    range = Some(value.trim().trim_end_matches('-').to_string());
                }
            }
            seen.lock().unwrap().push((path, range.clone()));
            let full = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            match behaviour {
                Behaviour::Silent => {
                    std::thread::sleep(Duration::from_secs(60));
                    continue;
                }
                Behaviour::Stall { after } => {
                    let _ = stream.write_all(full.as_bytes());
                    let _ = stream.write_all(&body[..after]);
                    let _ = stream.flush();
                    std::thread::sleep(Duration::from_secs(60));
                    continue;
                }
                Behaviour::Cut { after } => {
                    let _ = stream.write_all(full.as_bytes());
                    let _ = stream.write_all(&body[..after]);
                    continue;
                }
                Behaviour::WrongRange => {
                    let head = format!(
                        "HTTP/1.1 206 Partial Content\r\nContent-Length: {}\r\nContent-Range: bytes 0-{}/{}\r\nConnection: close\r\n\r\n",
                        body.len(),
                        body.len() - 1,
                        body.len()
                    );
                    let _ = stream.write_all(head.as_bytes());
                    let _ = stream.write_all(&body);
                    continue;
                }
                Behaviour::Normal { .. } => {}
            }
            let honour_range = matches!(behaviour, Behaviour::Normal { honour_range: true });
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
                full
            };
            let _ = stream.write_all(head.as_bytes());
            if !head.starts_with("HTTP/1.1 416") {
                let _ = stream.write_all(&body[start.min(body.len())..]);
            }
        }
    });
    Server { base, url, requests }
}

fn config() -> AcquireConfig {
    AcquireConfig::default()
}

/// A .tgz with a single top folder `mini/` holding a tiny image tree, like fastai's archives.
fn good_archive(dir: &Path) -> PathBuf {
    image_archive(dir, "mini", &["a", "b"], &dir.join("mini.tgz"))
}

/// `archive`: a .tgz of a top folder `top` with a `train/` and `val/` image tree of `classes`.
fn image_archive(dir: &Path, top: &str, classes: &[&str], archive: &Path) -> PathBuf {
    let source = dir.join(format!("src-{}", classes.join("")));
    if !source.exists() {
        common::image_tree(&source, classes, 2, 8);
    }
    std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
    let file = std::fs::File::create(archive).unwrap();
    let mut builder =
        tar::Builder::new(flate2::write::GzEncoder::new(file, flate2::Compression::fast()));
    builder.append_dir_all(top, &source).unwrap();
    builder.into_inner().unwrap().finish().unwrap();
    archive.to_path_buf()
}

/// Appends one entry whose name, type, link target and mode are written byte for byte (the
/// tar crate's safe setters would refuse them); names over 100 bytes get a GNU long-name
/// record first.
fn raw(
    builder: &mut tar::Builder<Vec<u8>>,
    name: &str,
    kind: EntryType,
    link: &str,
    mode: u32,
    data: &[u8],
) {
    if name.len() > 100 {
        let mut long = tar::Header::new_gnu();
        long.as_old_mut().name[..13].copy_from_slice(b"././@LongLink");
        long.set_entry_type(EntryType::GNULongName);
        long.set_mode(0o644);
        long.set_size(name.len() as u64 + 1);
        long.set_cksum();
        let mut bytes = name.as_bytes().to_vec();
        bytes.push(0);
        builder.append(&long, &bytes[..]).unwrap();
    }
    let mut header = tar::Header::new_gnu();
    let short = &name.as_bytes()[..name.len().min(100)];
    header.as_old_mut().name[..short.len()].copy_from_slice(short);
    header.as_old_mut().linkname[..link.len()].copy_from_slice(link.as_bytes());
    header.set_entry_type(kind);
    if kind == EntryType::GNUSparse {
        header.as_gnu_mut().unwrap().set_real_size(data.len() as u64);
    }
    header.set_mode(mode);
    header.set_size(data.len() as u64);
    header.set_cksum();
    builder.append(&header, data).unwrap();
}

fn dir_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str) {
    raw(builder, name, EntryType::Directory, "", 0o755, b"");
}

fn file_entry(builder: &mut tar::Builder<Vec<u8>>, name: &str, data: &[u8]) {
    raw(builder, name, EntryType::Regular, "", 0o644, data);
}

/// A pax extended header record that sets `key` for the next entry.
fn pax(builder: &mut tar::Builder<Vec<u8>>, key: &str, value: &str) {
    let body = format!(" {key}={value}\n");
    let mut length = body.len() + 1;
    while length.to_string().len() + body.len() != length {
        length = length.to_string().len() + body.len();
    }
    raw(
        builder,
        "PaxHeaders/entry",
        EntryType::XHeader,
        "",
        0o644,
        format!("{length}{body}").as_bytes(),
    );
}

/// The tar stream `fill` writes, with its end-of-archive marker.
fn tar_bytes(fill: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> Vec<u8> {
    let mut builder = tar::Builder::new(Vec::new());
    fill(&mut builder);
    builder.into_inner().unwrap()
}

fn gzip(bytes: &[u8], level: flate2::Compression) -> Vec<u8> {
    let mut encoder = flate2::write::GzEncoder::new(Vec::new(), level);
    encoder.write_all(bytes).unwrap();
    encoder.finish().unwrap()
}

fn write_tgz(path: &Path, fill: impl FnOnce(&mut tar::Builder<Vec<u8>>)) -> PathBuf {
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(path, gzip(&tar_bytes(fill), flate2::Compression::fast())).unwrap();
    path.to_path_buf()
}

/// Every path under `dir` (recursively), as `relative -> is a symlink`; empty if `dir` is
/// missing.
fn listing(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(folder) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&folder) else { continue };
        for entry in entries.flatten() {
            let path = entry.path();
            out.push(path.strip_prefix(dir).unwrap().display().to_string());
            if path.is_dir() && !path.is_symlink() {
                stack.push(path);
            }
        }
    }
    out.sort();
    out
}

fn hostile_suite(tars: &Path, outside: &Path) -> Vec<(&'static str, PathBuf, &'static str)> {
    let out = outside.display().to_string();
    let out_rel = outside.strip_prefix("/").unwrap().display().to_string();
    let chain = |b: &mut tar::Builder<Vec<u8>>| {
        let deep = "a/a2/a3/a4/a5/a6";
        for depth in 1..=6 {
            dir_entry(b, &deep.split('/').take(depth).collect::<Vec<_>>().join("/"));
        }
        raw(b, &format!("{deep}/up"), EntryType::Symlink, "../../../../../..", 0o777, b"");
        raw(b, &format!("{deep}/up/root"), EntryType::Symlink, "../../../../../..", 0o777, b"");
        file_entry(b, "a/readme.txt", b"hello");
    };
    let mut suite = Vec::new();
    let mut add =
        |name: &'static str, entry: &'static str, fill: &dyn Fn(&mut tar::Builder<Vec<u8>>)| {
            suite.push((name, write_tgz(&tars.join(format!("{name}.tgz")), fill), entry));
        };
    add("dotdot", "ds/../../escaped_dotdot.txt", &|b| {
        dir_entry(b, "ds");
        file_entry(b, "ds/ok.txt", b"x");
        file_entry(b, "ds/../../escaped_dotdot.txt", b"PWNED");
    });
    let absolute: &'static str = Box::leak(format!("{out}/escaped_absolute.txt").into_boxed_str());
    add("absolute", absolute, &|b| {
        dir_entry(b, "ds");
        file_entry(b, absolute, b"PWNED");
    });
    let abs_target = out.clone();
    add("symlink_abs_then_write", "ds/evil", &move |b| {
        dir_entry(b, "ds");
        raw(b, "ds/evil", EntryType::Symlink, &abs_target, 0o777, b"");
        file_entry(b, "ds/evil/pwned.txt", b"PWNED");
    });
    add("symlink_rel_then_write", "ds/evil", &|b| {
        dir_entry(b, "ds");
        raw(b, "ds/evil", EntryType::Symlink, "../../outside", 0o777, b"");
        file_entry(b, "ds/evil/pwned.txt", b"PWNED");
    });
    let secret = format!("{out}/secret.txt");
    add("hardlink_abs", "ds/passwd", &move |b| {
        dir_entry(b, "ds");
        raw(b, "ds/passwd", EntryType::Link, &secret, 0o644, b"");
    });
    add("hardlink_rel", "ds/passwd", &|b| {
        dir_entry(b, "ds");
        raw(b, "ds/passwd", EntryType::Link, "../../outside/secret.txt", 0o644, b"");
    });
    add("symlink_chain_escape", "a/a2/a3/a4/a5/a6/up", &chain);
    let through = format!("a/a2/a3/a4/a5/a6/up/root/{out_rel}/pwned_chain.txt");
    add("symlink_chain_then_write", "a/a2/a3/a4/a5/a6/up", &move |b| {
        chain(b);
        file_entry(b, &through, b"PWNED");
    });
    add("duplicate", "ds/x.txt", &|b| {
        dir_entry(b, "ds");
        file_entry(b, "ds/x.txt", b"first");
        file_entry(b, "ds/x.txt", b"second");
    });
    add("dup_file_then_symlink", "ds/x.txt", &|b| {
        dir_entry(b, "ds");
        file_entry(b, "ds/x.txt", b"first");
        raw(b, "ds/x.txt", EntryType::Symlink, "y", 0o777, b"");
    });
    add("file_then_folder", "ds/x/y.txt", &|b| {
        dir_entry(b, "ds");
        file_entry(b, "ds/x", b"first");
        file_entry(b, "ds/x/y.txt", b"second");
    });
    add("fifo", "ds/fifo", &|b| {
        dir_entry(b, "ds");
        raw(b, "ds/fifo", EntryType::Fifo, "", 0o644, b"");
    });
    add("chardev", "ds/null", &|b| {
        dir_entry(b, "ds");
        raw(b, "ds/null", EntryType::Char, "", 0o644, b"");
    });
    add("sparse", "ds/sparse", &|b| {
        dir_entry(b, "ds");
        raw(b, "ds/sparse", EntryType::GNUSparse, "", 0o644, b"");
    });
    add("pax_path", "../../escaped_pax.txt", &|b| {
        dir_entry(b, "ds");
        pax(b, "path", "../../escaped_pax.txt");
        file_entry(b, "ds/innocent.txt", b"PWNED");
    });
    let long: &'static str =
        Box::leak(format!("ds/{}/../../../escaped_long.txt", "x".repeat(120)).into_boxed_str());
    add("gnu_longname", long, &|b| {
        dir_entry(b, "ds");
        file_entry(b, long, b"PWNED");
    });
    suite
}

#[test]
fn hostile_archives_are_refused_naming_the_entry_and_leave_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let outside = dir.path().join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("secret.txt"), "SECRET").unwrap();
    let suite = hostile_suite(&dir.path().join("tars"), &outside);
    assert_eq!(suite.len(), 16);
    for (name, archive, entry) in suite {
        let cache = dir.path().join(format!("cache_{name}"));
        let error =
            untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap_err();
        assert!(matches!(error, DataError::UnsafeArchiveEntry { .. }), "{name}: {error}");
        assert!(error.to_string().contains(&format!("{entry:?}")), "{name}: {error}");
        assert_eq!(
            listing(&cache),
            Vec::<String>::new(),
            "{name}: nothing may be left in the cache"
        );
        assert_eq!(listing(&outside), ["secret.txt"], "{name}: nothing may be written outside");
        assert_eq!(std::fs::read_to_string(outside.join("secret.txt")).unwrap(), "SECRET");
        // The same archive through the primitive.
        let dest = dir.path().join(format!("dest_{name}"));
        assert!(extract_tgz(&archive, &dest, &ExtractConfig::default()).is_err(), "{name}");
        assert!(!dest.exists(), "{name}");
    }
    let escaped: Vec<String> = listing(dir.path())
        .into_iter()
        .filter(|path| path.contains("escaped") || path.contains("pwned"))
        .collect();
    assert_eq!(escaped, Vec::<String>::new());
}

#[test]
fn archive_modes_never_reach_the_file_system() {
    let dir = tempfile::tempdir().unwrap();
    let archive = write_tgz(&dir.path().join("setuid.tgz"), |b| {
        raw(b, "ds", EntryType::Directory, "", 0o7777, b"");
        raw(b, "ds/run.sh", EntryType::Regular, "", 0o6777, b"#!/bin/sh\necho hi\n");
        raw(b, "ds/open/data.txt", EntryType::Regular, "", 0o777, b"x");
    });
    let root =
        untar_data(&Source::local(&archive), &dir.path().join("cache"), &config(), &mut |_| {})
            .unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for (path, at_most) in [
            (root.clone(), 0o755),
            (root.join("run.sh"), 0o644),
            (root.join("open"), 0o755),
            (root.join("open/data.txt"), 0o644),
        ] {
            let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o7777;
            assert_eq!(mode & !at_most, 0, "{}: mode {mode:o}", path.display());
            assert_eq!(mode & 0o600, 0o600 & mode, "{}", path.display());
        }
    }
    assert_eq!(std::fs::read_to_string(root.join("run.sh")).unwrap(), "#!/bin/sh\necho hi\n");
}

#[test]
fn a_symlink_chain_is_refused_and_nothing_outside_is_read() {
    // cases/reliability/01: every link is lexically inside, yet `up/ds/train/stolen` would
    // point at a private folder outside the cache.
    let dir = tempfile::tempdir().unwrap();
    let private = dir.path().join("outside_private");
    common::image_tree(&private, &["p"], 1, 8);
    let jpg = std::fs::read(private.join("train/p/p_000.JPEG")).unwrap();
    let deep = "ds/a2/a3/a4/a5/a6/a7";
    let target = format!("{}{}", "../".repeat(10), private.strip_prefix("/").unwrap().display());
    let archive = write_tgz(&dir.path().join("evil.tgz"), |b| {
        for depth in 1..=7 {
            dir_entry(b, &deep.split('/').take(depth).collect::<Vec<_>>().join("/"));
        }
        raw(b, &format!("{deep}/up"), EntryType::Symlink, "../../../../../../..", 0o777, b"");
        for split in ["train", "val"] {
            for class in ["cat", "dog"] {
                for k in 0..3 {
                    file_entry(b, &format!("ds/{split}/{class}/{k}.jpg"), &jpg);
                }
            }
        }
        raw(b, &format!("{deep}/up/ds/train/stolen"), EntryType::Symlink, &target, 0o777, b"");
    });
    let cache = dir.path().join("cache");
    let error = untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap_err();
    assert!(
        error.to_string().contains("ds/a2/a3/a4/a5/a6/a7/up")
            && error.to_string().contains("symbolic link"),
        "{error}"
    );
    assert_eq!(listing(&cache), Vec::<String>::new());
}

/// A plain tar of a small tree `ds/` with five files of distinct, incompressible-looking bytes.
fn five_files() -> (Vec<u8>, Vec<Vec<u8>>) {
    let contents: Vec<Vec<u8>> = (0..5u32)
        .map(|k| (0..3000u32).map(|i| ((i * 31 + k * 101) % 251) as u8).collect())
        .collect();
    let bytes = tar_bytes(|b| {
        dir_entry(b, "ds");
        for (k, data) in contents.iter().enumerate() {
            file_entry(b, &format!("ds/c{}/{k}.bin", k % 2), data);
        }
    });
    (bytes, contents)
}

#[test]
fn a_bad_gzip_crc_is_an_error_and_leaves_nothing() {
    // cases/reliability/02 crc_bad: a stored (level 0) gzip with one content byte flipped;
    // the deflate stream stays valid, only the CRC32 trailer disagrees.
    let dir = tempfile::tempdir().unwrap();
    let (plain, contents) = five_files();
    let mut stored = gzip(&plain, flate2::Compression::none());
    let needle = &contents[3][1000..1016];
    let at = stored.windows(needle.len()).position(|window| window == needle).unwrap();
    stored[at + 5] ^= 0xff;
    let archive = dir.path().join("crc_bad.tgz");
    std::fs::write(&archive, &stored).unwrap();
    let cache = dir.path().join("cache");
    let error = untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap_err();
    assert!(matches!(error, DataError::CorruptArchive { .. }), "{error}");
    assert!(error.to_string().contains("crc_bad.tgz"), "{error}");
    assert_eq!(listing(&cache), Vec::<String>::new());
    // The intact stored archive extracts, byte for byte.
    std::fs::write(&archive, gzip(&plain, flate2::Compression::none())).unwrap();
    let root = untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(root.join("c1/3.bin")).unwrap(), contents[3]);
}

#[test]
fn a_tar_without_its_end_marker_or_with_trailing_bytes_is_an_error() {
    // cases/reliability/02 tarcut: a valid gzip of a tar cut at an entry boundary.
    let dir = tempfile::tempdir().unwrap();
    let (plain, _) = five_files();
    let one_entry = 512 + 3000usize.div_ceil(512) * 512;
    let cut = &plain[..plain.len() - 1024 - 2 * one_entry];
    let cases = [
        ("tarcut", gzip(cut, flate2::Compression::fast()), "end-of-archive"),
        (
            "one_zero_block",
            gzip(&plain[..plain.len() - 512], flate2::Compression::fast()),
            "end-of-archive",
        ),
        (
            "garbage_after_end",
            gzip(&[&plain[..], b"junk"].concat(), flate2::Compression::fast()),
            "after the end-of-archive",
        ),
        (
            "junk_after_gzip",
            [gzip(&plain, flate2::Compression::fast()), b"junk".to_vec()].concat(),
            "",
        ),
    ];
    for (name, bytes, reason) in cases {
        let archive = dir.path().join(format!("{name}.tgz"));
        std::fs::write(&archive, bytes).unwrap();
        let cache = dir.path().join(format!("cache_{name}"));
        let error =
            untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap_err();
        assert!(matches!(error, DataError::CorruptArchive { .. }), "{name}: {error}");
        assert!(error.to_string().contains(reason), "{name}: {error}");
        assert_eq!(listing(&cache), Vec::<String>::new(), "{name}");
    }
    // Concatenated gzip members and an uncompressed tar are read like tar(1) reads them.
    let half = plain.len() / 2;
    let members = [
        gzip(&plain[..half], flate2::Compression::fast()),
        gzip(&plain[half..], flate2::Compression::fast()),
    ]
    .concat();
    for (name, bytes) in [("members", members), ("plain", plain.clone())] {
        let archive = dir.path().join(format!("{name}.tar"));
        std::fs::write(&archive, bytes).unwrap();
        let root = untar_data(
            &Source::local(&archive),
            &dir.path().join("cache_ok"),
            &config(),
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(listing(&root).len(), 2 + 5, "{name}: c0, c1 and five files");
    }
}

#[test]
fn every_truncation_of_an_archive_is_an_error_and_leaves_nothing() {
    // cases/bugs/15 (1): a partly downloaded .tgz cut anywhere from 5% to 95%.
    let dir = tempfile::tempdir().unwrap();
    let full = std::fs::read(good_archive(dir.path())).unwrap();
    for percent in (5..100).step_by(10) {
        let archive = dir.path().join("probe/ds.tgz");
        std::fs::create_dir_all(archive.parent().unwrap()).unwrap();
        std::fs::write(&archive, &full[..full.len() * percent / 100]).unwrap();
        let cache = dir.path().join("cache");
        let error =
            untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap_err();
        assert!(matches!(error, DataError::CorruptArchive { .. }), "cut at {percent}%: {error}");
        assert_eq!(listing(&cache), Vec::<String>::new(), "cut at {percent}%");
    }
    // One byte short is still short.
    let archive = dir.path().join("probe/ds.tgz");
    std::fs::write(&archive, &full[..full.len() - 1]).unwrap();
    assert!(
        untar_data(&Source::local(&archive), &dir.path().join("cache"), &config(), &mut |_| {})
            .is_err()
    );
}

/// The class folders of a dataset root's `train/`.
fn classes(root: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(root.join("train"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn the_cache_is_keyed_by_content_not_by_file_name() {
    // cases/reliability/03 and bugs/15 (2)-(4).
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let two = image_archive(dir.path(), "data", &["a_red", "b_blue"], &dir.path().join("a/ds.tgz"));
    let two_bytes = std::fs::read(&two).unwrap();
    // A failed half archive first, then the full one under the same name.
    std::fs::write(&two, &two_bytes[..two_bytes.len() / 2]).unwrap();
    assert!(untar_data(&Source::local(&two), &cache, &config(), &mut |_| {}).is_err());
    std::fs::write(&two, &two_bytes).unwrap();
    let first = untar_data(&Source::local(&two), &cache, &config(), &mut |_| {}).unwrap();
    assert_eq!(classes(&first), ["a_red", "b_blue"]);
    // The same name in another folder, other content.
    let three = image_archive(
        dir.path(),
        "data",
        &["a_red", "b_blue", "c_green"],
        &dir.path().join("b/ds.tgz"),
    );
    let other = untar_data(&Source::local(&three), &cache, &config(), &mut |_| {}).unwrap();
    assert_ne!(other, first);
    assert_eq!(classes(&other), ["a_red", "b_blue", "c_green"]);
    // The first path re-created with the three-class dataset (an updated export).
    std::fs::copy(&three, &two).unwrap();
    let mut events = Vec::new();
    let updated =
        untar_data(&Source::local(&two), &cache, &config(), &mut |e| events.push(e)).unwrap();
    assert_eq!(classes(&updated), ["a_red", "b_blue", "c_green"]);
    assert_eq!(updated, other, "same bytes, same cache entry");
    assert!(events.iter().any(|e| matches!(e, Progress::Reuse { .. })), "{events:?}");
    assert!(!events.iter().any(|e| matches!(e, Progress::Extract { .. })), "{events:?}");
    // And the original bytes again find their own extraction.
    std::fs::write(&two, &two_bytes).unwrap();
    assert_eq!(untar_data(&Source::local(&two), &cache, &config(), &mut |_| {}).unwrap(), first);
    let name = first.file_name().unwrap().to_string_lossy().into_owned();
    assert!(name.starts_with("ds-") && name.len() == "ds-".len() + 16, "{name}");
}

#[test]
fn a_cached_dataset_that_no_longer_matches_its_manifest_is_extracted_again() {
    let dir = tempfile::tempdir().unwrap();
    let archive = good_archive(dir.path());
    let cache = dir.path().join("cache");
    let root = untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap();
    let manifest =
        cache.join(format!("{}.manifest.json", root.file_name().unwrap().to_string_lossy()));
    let text = std::fs::read_to_string(&manifest).unwrap();
    assert!(text.contains("train/a/a_000.JPEG") && text.contains("sha256"), "{text}");
    let original = std::fs::read(root.join("train/a/a_000.JPEG")).unwrap();
    let tampers: [(&str, &dyn Fn()); 4] = [
        ("missing file", &|| std::fs::remove_file(root.join("train/a/a_000.JPEG")).unwrap()),
        ("extra file", &|| std::fs::write(root.join("train/a/extra.JPEG"), b"x").unwrap()),
        ("resized file", &|| std::fs::write(root.join("val/b/b_001.JPEG"), b"short").unwrap()),
        ("lost manifest", &|| std::fs::remove_file(&manifest).unwrap()),
    ];
    for (what, tamper) in tampers {
        tamper();
        let mut events = Vec::new();
        let again =
            untar_data(&Source::local(&archive), &cache, &config(), &mut |e| events.push(e))
                .unwrap();
        assert_eq!(again, root, "{what}");
        assert!(events.iter().any(|e| matches!(e, Progress::Replace { .. })), "{what}: {events:?}");
        assert!(events.iter().any(|e| matches!(e, Progress::Extract { .. })), "{what}: {events:?}");
        assert_eq!(std::fs::read(root.join("train/a/a_000.JPEG")).unwrap(), original, "{what}");
        assert!(!root.join("train/a/extra.JPEG").exists(), "{what}");
    }
    // Same-size changes need the contents check.
    std::fs::write(root.join("train/a/a_000.JPEG"), vec![0u8; original.len()]).unwrap();
    let mut events = Vec::new();
    untar_data(&Source::local(&archive), &cache, &config(), &mut |e| events.push(e)).unwrap();
    assert!(events.iter().any(|e| matches!(e, Progress::Reuse { .. })), "sizes match: {events:?}");
    let contents = AcquireConfig {
        extract: ExtractConfig { reuse_check: ReuseCheck::Contents, ..ExtractConfig::default() },
        ..AcquireConfig::default()
    };
    let mut events = Vec::new();
    untar_data(&Source::local(&archive), &cache, &contents, &mut |e| events.push(e)).unwrap();
    assert!(
        events.iter().any(
            |e| matches!(e, Progress::Replace { reason, .. } if reason.contains("a_000.JPEG"))
        ),
        "{events:?}"
    );
    assert_eq!(std::fs::read(root.join("train/a/a_000.JPEG")).unwrap(), original);
    assert_eq!(
        listing(&cache).iter().filter(|p| !p.contains('/')).collect::<Vec<_>>(),
        [
            root.file_name().unwrap().to_string_lossy().as_ref(),
            manifest.file_name().unwrap().to_string_lossy().as_ref()
        ]
    );
}

#[test]
fn a_catalogue_name_never_resolves_to_an_unverified_archive() {
    // cases/reliability/03: a local imagenette2-160.tgz that is not the catalogue's.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    let impostor = image_archive(
        dir.path(),
        "imagenette2-160",
        &["x", "y", "z"],
        &dir.path().join("a/imagenette2-160.tgz"),
    );
    let mut events = Vec::new();
    let local =
        untar_data(&Source::local(&impostor), &cache, &config(), &mut |e| events.push(e)).unwrap();
    assert_eq!(classes(&local), ["x", "y", "z"]);
    assert_ne!(local, cache.join("imagenette2-160"));
    assert!(
        events
            .iter()
            .any(|e| matches!(e, Progress::NotCatalogue { name, .. } if name == "imagenette2-160")),
        "{events:?}"
    );
    // The catalogue name, from a mirror serving those same bytes: refused by the md5.
    let server = serve(std::fs::read(&impostor).unwrap(), true);
    let source = wick_data::IMAGENETTE_160.source_at(&format!("{}/mirror/", server.base));
    let error = untar_data(&source, &cache, &config(), &mut |_| {}).unwrap_err();
    assert!(matches!(error, DataError::Checksum { .. }), "{error}");
    assert!(!cache.join("imagenette2-160").exists());
    assert_eq!(server.requests.lock().unwrap()[0].0, "/mirror/imagenette2-160.tgz");
}

#[test]
fn leftovers_of_a_killed_extraction_are_cleaned_by_the_next_run_and_live_ones_kept() {
    // cases/reliability/10 (extraction part). A killed extraction leaves its staging folder
    // and its lock file; the lock itself dies with the process. A live one holds its lock.
    let dir = tempfile::tempdir().unwrap();
    let cache = dir.path().join("cache");
    for name in ["dead-0123456789abcdef", "live-0123456789abcdef"] {
        std::fs::create_dir_all(cache.join(format!(".{name}.extracting-4000000/tree/ds/train")))
            .unwrap();
        std::fs::write(
            cache.join(format!(".{name}.extracting-4000000/tree/ds/train/big.bin")),
            vec![0u8; 4096],
        )
        .unwrap();
        std::fs::write(cache.join(format!(".{name}.lock")), b"").unwrap();
    }
    std::fs::create_dir_all(cache.join(".dead-0123456789abcdef.stale-4000001/x")).unwrap();
    std::fs::create_dir_all(cache.join(".old.tmp-77/ds")).unwrap();
    let unrelated = ["notes.tmp-12.txt", ".hidden", "user-folder.extracting-3"];
    for name in unrelated {
        std::fs::write(cache.join(name), b"keep").unwrap();
    }
    let live_lock = std::fs::File::options()
        .read(true)
        .write(true)
        .open(cache.join(".live-0123456789abcdef.lock"))
        .unwrap();
    live_lock.lock().unwrap();

    let archive = good_archive(dir.path());
    let mut cleaned = Vec::new();
    untar_data(&Source::local(&archive), &cache, &config(), &mut |e| {
        if let Progress::Cleaned { path } = e {
            cleaned.push(path.file_name().unwrap().to_string_lossy().into_owned());
        }
    })
    .unwrap();
    cleaned.sort();
    assert_eq!(
        cleaned,
        [
            ".dead-0123456789abcdef.extracting-4000000",
            ".dead-0123456789abcdef.stale-4000001",
            ".old.tmp-77"
        ]
    );
    let left = listing(&cache);
    assert!(
        left.contains(
            &".live-0123456789abcdef.extracting-4000000/tree/ds/train/big.bin".to_string()
        ),
        "{left:?}"
    );
    assert!(!left.iter().any(|p| p.starts_with(".dead")), "{left:?}");
    for name in unrelated {
        assert_eq!(std::fs::read(cache.join(name)).unwrap(), b"keep", "{name}");
    }
    // Once its owner is gone (the lock released, as on kill -9), the next run cleans it.
    drop(live_lock);
    untar_data(&Source::local(&archive), &cache, &config(), &mut |_| {}).unwrap();
    assert!(!listing(&cache).iter().any(|p| p.starts_with(".live")), "{:?}", listing(&cache));
}

#[test]
fn concurrent_runs_extract_once_and_share_the_result() {
    let dir = tempfile::tempdir().unwrap();
    let archive = good_archive(dir.path());
    let cache = dir.path().join("cache");
    let extractions = Arc::new(Mutex::new(0));
    let roots: Vec<PathBuf> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let extractions = Arc::clone(&extractions);
                let (archive, cache) = (&archive, &cache);
                scope.spawn(move || {
                    untar_data(&Source::local(archive), cache, &config(), &mut |e| {
                        if matches!(e, Progress::Extract { .. }) {
                            *extractions.lock().unwrap() += 1;
                        }
                    })
                    .unwrap()
                })
            })
            .collect();
        handles.into_iter().map(|handle| handle.join().unwrap()).collect()
    });
    assert!(roots.iter().all(|root| root == &roots[0]));
    assert_eq!(*extractions.lock().unwrap(), 1);
    assert_eq!(
        listing(&cache).iter().filter(|p| !p.contains('/')).count(),
        2,
        "{:?}",
        listing(&cache)
    );
}

#[test]
fn entry_count_and_size_limits_are_enforced() {
    let dir = tempfile::tempdir().unwrap();
    let archive = write_tgz(&dir.path().join("many.tgz"), |b| {
        dir_entry(b, "ds");
        for k in 0..4 {
            file_entry(b, &format!("ds/{k}.bin"), &vec![7u8; 1000]);
        }
    });
    let limits = |max_entries, max_entry_bytes, max_total_bytes| AcquireConfig {
        extract: ExtractConfig {
            max_entries,
            max_entry_bytes,
            max_total_bytes,
            ..ExtractConfig::default()
        },
        ..AcquireConfig::default()
    };
    for (config, entry, reason) in [
        (limits(4, 1000, 4000), "ds/3.bin", "max_entries"),
        (limits(5, 999, 4000), "ds/0.bin", "max_entry_bytes"),
        (limits(5, 1000, 3999), "ds/3.bin", "max_total_bytes"),
    ] {
        let cache = dir.path().join(format!("cache_{reason}"));
        let error = untar_data(&Source::local(&archive), &cache, &config, &mut |_| {}).unwrap_err();
        assert!(matches!(error, DataError::UnsafeArchiveEntry { .. }), "{error}");
        assert!(error.to_string().contains(entry) && error.to_string().contains(reason), "{error}");
        assert_eq!(listing(&cache), Vec::<String>::new());
    }
    let root = untar_data(
        &Source::local(&archive),
        &dir.path().join("ok"),
        &limits(5, 1000, 4000),
        &mut |_| {},
    )
    .unwrap();
    assert_eq!(listing(&root).len(), 4);
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
    download(&server.url, &dest, &expected, &DownloadConfig::default(), &mut |p| {
        if let Progress::Download { done, total } = p {
            last = Some((done, total));
        }
    })
    .unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(last, Some((200_000, Some(200_000))));
    // A verified file is reused without another request.
    download(&server.url, &dest, &expected, &DownloadConfig::default(), &mut |_| {}).unwrap();
    assert_eq!(server.requests.lock().unwrap().len(), 1);
    assert_eq!(listing(dir.path()), ["data.tgz", "reference"], "no lock or part file is left");
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
    let expected = Expected { bytes: Some(100_000), md5: Some(md5.clone()) };
    download(&server.url, &dest, &expected, &DownloadConfig::default(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
    assert_eq!(server.requests.lock().unwrap()[0].1, Some("30000".to_string()));
    assert!(!dir.path().join("data.tgz.part").exists());

    // A server that ignores ranges answers 200: the partial file is restarted, not appended.
    let dest = dir.path().join("again.tgz");
    std::fs::write(dir.path().join("again.tgz.part"), &body[..30_000]).unwrap();
    let server = serve(body.clone(), false);
    download(&server.url, &dest, &expected, &DownloadConfig::default(), &mut |_| {}).unwrap();
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn a_resume_answered_with_another_range_starts_over() {
    let dir = tempfile::tempdir().unwrap();
    let body: Vec<u8> = (0..50_000u32).map(|i| (i % 241) as u8).collect();
    let dest = dir.path().join("data.tgz");
    let part = dir.path().join("data.tgz.part");
    std::fs::write(&part, &body[..20_000]).unwrap();
    let server = serve_as(body.clone(), Behaviour::WrongRange);
    let error =
        download(&server.url, &dest, &Expected::default(), &DownloadConfig::default(), &mut |_| {})
            .unwrap_err();
    assert!(matches!(error, DataError::Download { .. }), "{error}");
    assert!(error.to_string().contains("resume at byte 20000"), "{error}");
    assert!(!part.exists() && !dest.exists(), "the partial file is not trusted");
    let server = serve(body.clone(), true);
    download(&server.url, &dest, &Expected::default(), &DownloadConfig::default(), &mut |_| {})
        .unwrap();
    assert_eq!(server.requests.lock().unwrap()[0].1, None, "started from the beginning");
    assert_eq!(std::fs::read(&dest).unwrap(), body);
}

#[test]
fn a_stalled_or_silent_server_is_an_error_not_a_hang() {
    let dir = tempfile::tempdir().unwrap();
    let body = vec![5u8; 50_000];
    let quick = DownloadConfig {
        connect_timeout: Duration::from_secs(5),
        read_timeout: Duration::from_millis(300),
    };
    for (what, behaviour) in
        [("stall", Behaviour::Stall { after: 20_000 }), ("silent", Behaviour::Silent)]
    {
        let server = serve_as(body.clone(), behaviour);
        let dest = dir.path().join(format!("{what}.tgz"));
        let started = Instant::now();
        let error =
            download(&server.url, &dest, &Expected::default(), &quick, &mut |_| {}).unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(10), "{what}: {:?}", started.elapsed());
        assert!(matches!(error, DataError::Download { .. }), "{what}: {error}");
        assert!(error.to_string().contains(&server.url), "{what}: {error}");
        assert!(!dest.exists(), "{what}");
    }
    // The stalled transfer's bytes are kept and a later attempt resumes from them.
    let part = dir.path().join("stall.tgz.part");
    assert_eq!(std::fs::metadata(&part).unwrap().len(), 20_000);
    let server = serve(body.clone(), true);
    download(&server.url, &dir.path().join("stall.tgz"), &Expected::default(), &quick, &mut |_| {})
        .unwrap();
    assert_eq!(server.requests.lock().unwrap()[0].1, Some("20000".to_string()));
    assert_eq!(std::fs::read(dir.path().join("stall.tgz")).unwrap(), body);
}

#[test]
fn a_body_shorter_than_announced_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve_as(vec![9u8; 40_000], Behaviour::Cut { after: 10_000 });
    let dest = dir.path().join("cut.tgz");
    let error =
        download(&server.url, &dest, &Expected::default(), &DownloadConfig::default(), &mut |_| {})
            .unwrap_err();
    assert!(matches!(error, DataError::Download { .. }), "{error}");
    assert!(!dest.exists());
    assert_eq!(std::fs::metadata(dir.path().join("cut.tgz.part")).unwrap().len(), 10_000);
}

#[test]
fn a_checksum_mismatch_is_an_error_and_the_file_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let server = serve(vec![1u8; 5000], true);
    let dest = dir.path().join("data.tgz");
    let expected =
        Expected { bytes: Some(5000), md5: Some("00000000000000000000000000000000".to_string()) };
    let error = download(&server.url, &dest, &expected, &DownloadConfig::default(), &mut |_| {})
        .unwrap_err();
    assert!(matches!(error, DataError::Checksum { .. }), "{error}");
    assert!(
        error.to_string().contains("data.tgz") && error.to_string().contains("00000000"),
        "{error}"
    );
    assert!(!dest.exists());
    assert!(!dir.path().join("data.tgz.part").exists());
    let wrong_size = Expected { bytes: Some(4999), md5: None };
    assert!(
        download(&server.url, &dest, &wrong_size, &DownloadConfig::default(), &mut |_| {}).is_err()
    );
    assert!(!dest.exists());
}

#[test]
fn extraction_is_atomic_and_unwraps_the_single_top_folder() {
    let dir = tempfile::tempdir().unwrap();
    let archive = good_archive(dir.path());
    let dest = dir.path().join("out/mini");
    extract_tgz(&archive, &dest, &ExtractConfig::default()).unwrap();
    assert!(dest.join("train/a/a_000.JPEG").is_file());
    assert!(dest.join("val/b/b_001.JPEG").is_file());
    assert_eq!(
        listing(&dir.path().join("out")).iter().filter(|p| !p.contains('/')).collect::<Vec<_>>(),
        ["mini"]
    );
    let error = extract_tgz(&archive, &dest, &ExtractConfig::default()).unwrap_err();
    assert!(error.to_string().contains("already exists"), "{error}");
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
    let root = untar_data(&source, &cache, &config(), &mut |p| events.push(p)).unwrap();
    assert_eq!(root, cache.join("mini"));
    assert!(root.join("train/b/b_000.JPEG").is_file());
    assert!(events.iter().any(|e| matches!(e, Progress::Extract { .. })));
    assert_eq!(untar_data(&source, &cache, &config(), &mut |_| {}).unwrap(), root);
    assert_eq!(server.requests.lock().unwrap().len(), 1, "the second call needs no network");

    // A URL without a known checksum: fetched once, extracted by content.
    let by_url = Source::url(&server.url).unwrap();
    let fetched = untar_data(&by_url, &cache, &config(), &mut |_| {}).unwrap();
    assert!(fetched.join("val/a/a_001.JPEG").is_file());
    assert!(fetched.file_name().unwrap().to_string_lossy().starts_with("data-"));
    assert_eq!(untar_data(&by_url, &cache, &config(), &mut |_| {}).unwrap(), fetched);
    assert_eq!(server.requests.lock().unwrap().len(), 2);

    // Offline use: a local archive or folder.
    let local =
        untar_data(&Source::local(&archive), &dir.path().join("cache2"), &config(), &mut |_| {})
            .unwrap();
    assert!(local.join("val/a/a_001.JPEG").is_file());
    assert_eq!(untar_data(&Source::local(&root), &cache, &config(), &mut |_| {}).unwrap(), root);
    let missing =
        untar_data(&Source::LocalFolder(dir.path().join("nope")), &cache, &config(), &mut |_| {})
            .unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
    let bad_name =
        Source::Remote { name: "../up".into(), url: server.url.clone(), bytes: None, md5: None };
    assert!(matches!(
        untar_data(&bad_name, &cache, &config(), &mut |_| {}),
        Err(DataError::InvalidConfig { .. })
    ));
}
