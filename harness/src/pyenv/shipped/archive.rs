//! Packed envs (conda-pack, venv-pack, or a plain tar of an env): unpacked once into
//! `<cache_root>/shipped/<sha256 prefix>/`, keyed by the archive's content, so a rebuilt archive
//! under the same name is unpacked anew and the same bytes under another name are not.
//!
//! The fix-ups are the packers' own: a conda-pack archive carries `bin/conda-unpack`, which
//! rewrites the build machine's prefix in scripts and binaries to where it now lives (its docs:
//! unpack, then run it once), so it runs after the archive is in its final place. A venv-pack
//! archive needs none for a worker: venv-pack already made its scripts and `activate` relocatable,
//! and `bin/python` finds its site-packages from its own location. It holds no interpreter,
//! though: `bin/python` links to the packing machine's base Python, which must exist here at the
//! same path (as on the cluster), and a dangling link is said so.
//!
//! The cache entry is complete when its marker `<key>.json` exists, written last; the unpacking
//! happens in `<key>.tmp` under an exclusive lock, as env provisioning does.

use super::super::{cache_root, child};
use super::ShippedError;
use crate::atomic::{write_atomic, WriteOptions};
use sha2::{Digest, Sha256};
use std::fs::{self, File};
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// tar on a few hundred MB, conda-unpack over every file of the env.
const UNPACK_LIMIT: Duration = Duration::from_secs(20 * 60);

#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Format {
    Gzip,
    Bzip2,
    Xz,
    Zstd,
    Tar,
    Zip,
}

/// Who made the archive, as far as its contents tell.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub enum Packer {
    /// Has `bin/conda-unpack`.
    CondaPack,
    /// Has `pyvenv.cfg`: venv-pack, or a tar of a venv.
    VenvPack,
    /// Anything else with a `bin/python`.
    Tar,
}

impl Packer {
    pub fn name(self) -> &'static str {
        match self {
            Packer::CondaPack => "conda-pack",
            Packer::VenvPack => "venv-pack",
            Packer::Tar => "tar",
        }
    }
}

/// An unpacked archive in the cache.
#[derive(Clone, Debug)]
pub(super) struct Unpacked {
    /// The env's root (where `bin/` is): the cache entry, or the one folder the archive held.
    pub root: PathBuf,
    pub python: PathBuf,
    pub packer: Packer,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct Marker {
    archive: String,
    sha256: String,
    packer: Packer,
    /// The env's root inside the cache entry ("" when the archive's top is the env).
    root: String,
}

/// The archive format of `path` by its first bytes, or None for anything else.
pub(super) fn format_of(path: &Path) -> io::Result<Option<Format>> {
    let mut head = [0u8; 262];
    let mut f = File::open(path)?;
    let mut n = 0;
    while n < head.len() {
        match f.read(&mut head[n..])? {
            0 => break,
            k => n += k,
        }
    }
    let head = &head[..n];
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Some(Format::Gzip)
    } else if head.starts_with(b"BZh") {
        Some(Format::Bzip2)
    } else if head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        Some(Format::Xz)
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some(Format::Zstd)
    } else if head.get(257..262) == Some(b"ustar") {
        Some(Format::Tar)
    } else if head.starts_with(b"PK\x03\x04") {
        Some(Format::Zip)
    } else {
        None
    })
}

/// Unpack `archive` into the cache unless this content already is, and find its interpreter.
pub(super) fn unpack(archive: &Path, format: Format) -> Result<Unpacked, ShippedError> {
    let bad = |problem: String| ShippedError::BadArchive {
        path: archive.to_path_buf(),
        problem,
    };
    if format == Format::Zip {
        return Err(bad("a zip archive: fakejvm unpacks tar archives (conda-pack and venv-pack write .tar.gz by default); unzip it and pass the directory".into()));
    }
    let io = |action: &'static str, path: &Path| {
        let path = path.to_path_buf();
        move |source| ShippedError::Io {
            action,
            path,
            source,
        }
    };
    let sha256 = hash_file(archive).map_err(io("read", archive))?;
    let key = &sha256[..16];
    let shipped = cache_root().join("shipped");
    let entry = shipped.join(key);
    let marker = shipped.join(format!("{key}.json"));
    if let Some(done) = finished(&entry, &marker) {
        return Ok(done);
    }
    fs::create_dir_all(&shipped).map_err(io("create", &shipped))?;
    let lock_path = shipped.join(format!(".lock-{key}"));
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(io("open the lock file", &lock_path))?;
    if lock.try_lock().is_err() {
        eprintln!(
            "fakejvm: waiting for another fakejvm to finish unpacking {}...",
            archive.display()
        );
        lock.lock().map_err(io("lock", &lock_path))?;
    }
    if let Some(done) = finished(&entry, &marker) {
        return Ok(done);
    }
    // We hold the lock: leftovers are a crashed attempt's.
    let building = shipped.join(format!("{key}.tmp"));
    for stale in [&building, &entry] {
        if stale.exists() {
            fs::remove_dir_all(stale).map_err(io("remove the stale unpacking", stale))?;
        }
    }
    let size = fs::metadata(archive).map(|m| m.len()).unwrap_or(0);
    eprintln!(
        "fakejvm: unpacking {} ({} MB) into {} (once for this content)...",
        archive.display(),
        size >> 20,
        entry.display()
    );
    fs::create_dir_all(&building).map_err(io("create", &building))?;
    let mut tar = Command::new("tar");
    // GNU tar finds the compression itself; it drops leading `/` and refuses `..` members.
    tar.arg("-xf")
        .arg(archive)
        .arg("-C")
        .arg(&building)
        .arg("--no-same-owner");
    let ran = child::run(tar, None, UNPACK_LIMIT, None).map_err(io("run tar on", archive))?;
    match ran.status {
        None => {
            return Err(ShippedError::Timeout {
                what: format!("unpacking {}", archive.display()),
                after: UNPACK_LIMIT,
            })
        }
        Some(_) if !ran.succeeded() => {
            let _ = fs::remove_dir_all(&building);
            return Err(bad(format!(
                "tar cannot unpack it ({:?}): {}",
                format,
                crate::error::one_line(&ran.tail())
            )));
        }
        Some(_) => {}
    }
    let Some(inside) = env_root(&building) else {
        let held = listing(&building);
        let _ = fs::remove_dir_all(&building);
        return Err(bad(format!(
            "it holds no env: no bin/python at its top or in its one top folder (it holds {held})"
        )));
    };
    fs::rename(&building, &entry).map_err(io("move the unpacked env into", &entry))?;
    let root = entry.join(&inside);
    let packer = if root.join("bin/conda-unpack").is_file() {
        Packer::CondaPack
    } else if root.join("pyvenv.cfg").is_file() {
        Packer::VenvPack
    } else {
        Packer::Tar
    };
    let python = root.join("bin").join("python");
    if !python.exists() {
        let target = fs::read_link(&python)
            .map(|t| t.display().to_string())
            .unwrap_or_else(|_| "nothing".into());
        return Err(bad(format!(
            "its bin/python links to {target}, which this machine does not have: a {} archive holds no interpreter, so the cluster needs that Python at that very path (or pack with `venv-pack --python-prefix`)",
            packer.name()
        )));
    }
    if packer == Packer::CondaPack {
        let mut fix = Command::new(&python);
        fix.arg(root.join("bin/conda-unpack"));
        let ran = child::run(fix, None, UNPACK_LIMIT, None).map_err(io("run", &python))?;
        if !ran.succeeded() {
            return Err(bad(format!(
                "its conda-unpack failed ({}): {}",
                ran.status_text(),
                crate::error::one_line(&ran.tail())
            )));
        }
    }
    let record = Marker {
        archive: archive.display().to_string(),
        sha256,
        packer,
        root: inside.display().to_string(),
    };
    let bytes = serde_json::to_vec_pretty(&record).expect("a marker serializes");
    write_atomic(&marker, &bytes, WriteOptions::CACHE).map_err(io("write", &marker))?;
    Ok(Unpacked {
        root,
        python,
        packer,
    })
}

fn finished(entry: &Path, marker: &Path) -> Option<Unpacked> {
    let m: Marker = serde_json::from_slice(&fs::read(marker).ok()?).ok()?;
    let root = entry.join(&m.root);
    let python = root.join("bin").join("python");
    python.exists().then_some(Unpacked {
        root,
        python,
        packer: m.packer,
    })
}

/// Where `bin/python` is, relative to `dir`: at its top (conda-pack, venv-pack), or in its one
/// top folder (`tar czf env.tar.gz env/`).
fn env_root(dir: &Path) -> Option<PathBuf> {
    let has_python = |d: &Path| fs::symlink_metadata(d.join("bin").join("python")).is_ok();
    if has_python(dir) {
        return Some(PathBuf::new());
    }
    let entries: Vec<_> = fs::read_dir(dir).ok()?.flatten().collect();
    match entries.as_slice() {
        [one] if one.path().is_dir() && has_python(&one.path()) => Some(one.file_name().into()),
        _ => None,
    }
}

fn listing(dir: &Path) -> String {
    let mut names: Vec<String> = fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    if names.is_empty() {
        return "nothing".into();
    }
    let more = names.len().saturating_sub(8);
    names.truncate(8);
    let mut text = names.join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn hash_file(path: &Path) -> io::Result<String> {
    let mut f = File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0; 1 << 20];
    loop {
        match f.read(&mut buf)? {
            0 => break,
            n => hasher.update(&buf[..n]),
        }
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_are_told_by_their_first_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            fs::write(&p, bytes).unwrap();
            format_of(&p).unwrap()
        };
        assert_eq!(file("a", &[0x1f, 0x8b, 8, 0]), Some(Format::Gzip));
        assert_eq!(file("b", b"BZh91AY"), Some(Format::Bzip2));
        assert_eq!(file("c", b"PK\x03\x04rest"), Some(Format::Zip));
        let mut tar = vec![0u8; 512];
        tar[257..262].copy_from_slice(b"ustar");
        assert_eq!(file("d", &tar), Some(Format::Tar));
        assert_eq!(file("e", b"#!/usr/bin/env python3\n"), None);
        assert_eq!(file("f", b"\x7fELF"), None);
        assert_eq!(file("g", b""), None);
    }

    #[test]
    fn the_env_root_is_the_top_or_its_one_folder() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(env_root(dir.path()), None);
        fs::create_dir_all(dir.path().join("env/bin")).unwrap();
        fs::write(dir.path().join("env/bin/python"), "").unwrap();
        assert_eq!(env_root(dir.path()), Some(PathBuf::from("env")));
        fs::create_dir_all(dir.path().join("bin")).unwrap();
        fs::write(dir.path().join("bin/python"), "").unwrap();
        assert_eq!(env_root(dir.path()), Some(PathBuf::new()));
    }
}
