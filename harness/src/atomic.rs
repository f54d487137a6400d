//! Writing a file so that a reader (or a crash) never sees half of it: the bytes go to a temporary
//! file beside the target, which is then renamed over it. What was there stays whole until the
//! new file is. Every file fakejvm writes for later (reports, reproducers, fuzz state, goldens,
//! the env marker, cached commands) goes through [`write_atomic`].

use std::io::{self, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

/// How a file is written. The constants name the cases fakejvm has.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WriteOptions {
    /// Permission bits of the new file; None keeps the temporary file's 0600.
    pub mode: Option<u32>,
    /// Create the parent directory (and its parents) first.
    pub create_dir: bool,
    /// fsync the file before the rename, so that after a power cut the name points at the whole
    /// new file rather than at an empty one.
    pub sync: bool,
}

impl WriteOptions {
    /// Reports, reproducers and fuzz state: what a person or CI reads after a run. Private to the
    /// user (they may hold worker output), synced, the directory made if need be.
    pub const REPORT: WriteOptions = WriteOptions {
        mode: None,
        create_dir: true,
        sync: true,
    };
    /// Golden files and the tap's spool: meant to be committed and read by anyone (0644); their
    /// directory exists already (a missing one is a bug worth an error).
    pub const SHARED: WriteOptions = WriteOptions {
        mode: Some(0o644),
        create_dir: false,
        sync: false,
    };
    /// The env cache (the completeness marker, built commands): rebuilt when lost, so no fsync.
    pub const CACHE: WriteOptions = WriteOptions {
        mode: None,
        create_dir: true,
        sync: false,
    };
}

pub fn write_atomic(path: &Path, bytes: &[u8], opts: WriteOptions) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    if opts.create_dir {
        std::fs::create_dir_all(dir)?;
    }
    let mut tmp = tempfile::Builder::new()
        .prefix(".fakejvm-")
        .tempfile_in(dir)?;
    tmp.write_all(bytes)?;
    if let Some(mode) = opts.mode {
        std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
    }
    if opts.sync {
        tmp.as_file().sync_all()?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_whole_files_with_the_mode_asked_for() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/x.json");
        assert!(
            write_atomic(&path, b"{}", WriteOptions::SHARED).is_err(),
            "SHARED does not make directories"
        );
        write_atomic(&path, b"one", WriteOptions::REPORT).unwrap();
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o600
        );
        write_atomic(&path, b"two", WriteOptions::SHARED).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"two");
        assert_eq!(
            std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let names: Vec<_> = std::fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            names,
            vec![std::ffi::OsString::from("x.json")],
            "no temporary file is left behind"
        );
    }
}
