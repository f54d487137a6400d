//! PEX files: telling one from an interpreter, and checking that it acts as one.
//!
//! A PEX is a zip application (a `#!` line, then a zip) holding `PEX-INFO`. Built without an
//! entry point it is an interpreter: pex's runtime hands `-c CODE` and `-m MODULE` to Python
//! with the PEX's wheels on sys.path, which is how `PYSPARK_PYTHON=./env.pex` starts
//! `pyspark.daemon` on an executor. Built with one (`pex -m app`, `-e`, `-c`, `--script`) it
//! runs that entry point with our arguments instead, unless `PEX_INTERPRETER=1` is set.

use super::{child, ShippedError};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// A first start lays out every wheel under ~/.cache/pex: pyspark alone is 400 MB.
const FIRST_RUN_LIMIT: Duration = Duration::from_secs(10 * 60);
const SAID: &str = "fakejvm: runs as an interpreter";
/// The end-of-central-directory record: 22 bytes, then a comment of up to 65535.
const EOCD: &[u8; 4] = b"PK\x05\x06";
const CENTRAL_ENTRY: &[u8; 4] = b"PK\x01\x02";
/// Central directories of PEXes with thousands of files are a few hundred KiB.
const CENTRAL_LIMIT: u64 = 64 << 20;

/// Is `path` a zip whose central directory names `PEX-INFO` at its top? Names in the central
/// directory are stored uncompressed, so no inflating is needed.
pub(super) fn is_pex_file(path: &Path) -> io::Result<bool> {
    let mut f = File::open(path)?;
    let len = f.metadata()?.len();
    let tail_len = len.min(22 + 65535);
    f.seek(SeekFrom::Start(len - tail_len))?;
    let mut tail = vec![0; tail_len as usize];
    f.read_exact(&mut tail)?;
    let Some(at) = tail.windows(4).rposition(|w| w == EOCD) else {
        return Ok(false);
    };
    let record = &tail[at..];
    if record.len() < 22 {
        return Ok(false);
    }
    let u32_at = |b: &[u8], i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let cd_size = u64::from(u32_at(record, 12));
    let eocd_pos = len - tail_len + at as u64;
    // Measured back from the record, not from its offset field: a PEX's `#!` line shifts
    // every offset (zip readers allow for that the same way).
    if cd_size > CENTRAL_LIMIT || cd_size > eocd_pos {
        return Ok(false);
    }
    f.seek(SeekFrom::Start(eocd_pos - cd_size))?;
    let mut cd = vec![0; cd_size as usize];
    f.read_exact(&mut cd)?;
    let mut i = 0;
    while i + 46 <= cd.len() && &cd[i..i + 4] == CENTRAL_ENTRY {
        let u16_at = |j: usize| usize::from(u16::from_le_bytes([cd[i + j], cd[i + j + 1]]));
        let (name_len, extra_len, comment_len) = (u16_at(28), u16_at(30), u16_at(32));
        let name = cd.get(i + 46..i + 46 + name_len).unwrap_or_default();
        if name == b"PEX-INFO" {
            return Ok(true);
        }
        i += 46 + name_len + extra_len + comment_len;
    }
    Ok(false)
}

/// Run the PEX once as Spark would run PYSPARK_PYTHON (`-c CODE`). If it answers as Python,
/// fine (and its wheels are laid out now, under a generous limit, so later probes are quick).
/// If not, ask it again with `PEX_INTERPRETER=1` which entry point it has, to say so.
pub(super) fn check_runs_as_interpreter(pex: &Path) -> Result<(), ShippedError> {
    let run = |interpreter: bool, code: &str| {
        let mut cmd = Command::new(pex);
        cmd.arg("-c").arg(code);
        // What our shell has set must not change what the PEX does on an executor.
        for name in ["PEX_INTERPRETER", "PEX_MODULE", "PEX_SCRIPT"] {
            cmd.env_remove(name);
        }
        if interpreter {
            cmd.env("PEX_INTERPRETER", "1");
        }
        let ran =
            child::run(cmd, None, FIRST_RUN_LIMIT, None).map_err(|source| ShippedError::Io {
                action: "run",
                path: pex.to_path_buf(),
                source,
            })?;
        if ran.status.is_none() {
            return Err(ShippedError::Timeout {
                what: format!("the first run of {}", pex.display()),
                after: FIRST_RUN_LIMIT,
            });
        }
        Ok(ran)
    };
    let ran = run(false, &format!("print({SAID:?})"))?;
    if ran.succeeded() && String::from_utf8_lossy(&ran.stdout).contains(SAID) {
        return Ok(());
    }
    let said = crate::error::one_line(&ran.tail());
    let read_entry_point = "import json, os, zipfile\n\
        p = os.environ['PEX']\n\
        t = open(os.path.join(p, 'PEX-INFO')).read() if os.path.isdir(p) else zipfile.ZipFile(p).read('PEX-INFO')\n\
        i = json.loads(t)\n\
        print(i.get('entry_point') or i.get('script') or '')";
    let entry_point = run(true, read_entry_point)
        .ok()
        .filter(|r| r.succeeded())
        .map(|r| String::from_utf8_lossy(&r.stdout).trim().to_string())
        .filter(|e| !e.is_empty());
    Err(match entry_point {
        Some(entry_point) => ShippedError::PexEntryPoint {
            path: pex.to_path_buf(),
            entry_point,
        },
        None => ShippedError::PexNotInterpreter {
            path: pex.to_path_buf(),
            said,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// A zip with one stored entry named `name`, behind a `#!` line as a PEX has.
    fn zipapp(name: &str) -> tempfile::NamedTempFile {
        let mut f = tempfile::NamedTempFile::new().unwrap();
        let shebang = b"#!/usr/bin/env python3\n";
        let body = b"{}";
        let n = name.len() as u16;
        let mut local = b"PK\x03\x04".to_vec();
        local.extend([20, 0, 0, 0, 0, 0, 0, 0, 0, 0]); // version, flags, stored, time, date
        local.extend([0; 4]); // crc (not checked here)
        local.extend((body.len() as u32).to_le_bytes());
        local.extend((body.len() as u32).to_le_bytes());
        local.extend(n.to_le_bytes());
        local.extend([0, 0]);
        local.extend(name.as_bytes());
        local.extend(body);
        let mut central = b"PK\x01\x02".to_vec();
        central.extend([20, 0, 20, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        central.extend([0; 4]);
        central.extend((body.len() as u32).to_le_bytes());
        central.extend((body.len() as u32).to_le_bytes());
        central.extend(n.to_le_bytes());
        central.extend([0; 12]); // extra, comment, disk, internal attrs, external attrs
        central.extend(0u32.to_le_bytes()); // local header offset
        central.extend(name.as_bytes());
        let mut eocd = EOCD.to_vec();
        eocd.extend([0, 0, 0, 0, 1, 0, 1, 0]);
        eocd.extend((central.len() as u32).to_le_bytes());
        eocd.extend((local.len() as u32).to_le_bytes());
        eocd.extend([0, 0]);
        for part in [&shebang[..], &local, &central, &eocd] {
            f.write_all(part).unwrap();
        }
        f
    }

    #[test]
    fn a_pex_is_a_zip_naming_pex_info() {
        assert!(is_pex_file(zipapp("PEX-INFO").path()).unwrap());
        assert!(!is_pex_file(zipapp("__main__.py").path()).unwrap());
        let mut script = tempfile::NamedTempFile::new().unwrap();
        script
            .write_all(b"#!/bin/sh\nexec python3 \"$@\"\n")
            .unwrap();
        assert!(!is_pex_file(script.path()).unwrap());
        let empty = tempfile::NamedTempFile::new().unwrap();
        assert!(!is_pex_file(empty.path()).unwrap());
    }
}
