//! The fork-failure shim: an LD_PRELOAD library (shim/forkfail.c, compiled by build.rs) that makes
//! `fork()` fail on a schedule in the one process that loaded it. Its bytes are embedded here so a
//! fresh clone needs nothing prebuilt: `install` writes them where the caller wants them.
//!
//! The schedule and errno are given by environment, read once when the library loads; the names
//! and the grammar are the constants below.

use std::io;
use std::path::{Path, PathBuf};

/// The shared object, as built for this target (empty where the shim is not supported).
pub const SHIM: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/libforkfail.so"));

/// The file name `install` uses. The shim removes every LD_PRELOAD entry containing
/// "libforkfail" at load, so this name must keep that word.
pub const FILE_NAME: &str = "libforkfail.so";

/// `every`, `nth:1,2` (1-based ordinals of fork calls in the loading process) or
/// `random:<probability>:<seed>`.
pub const ENV_WHEN: &str = "FAKEJVM_FORKFAIL_WHEN";
/// The errno a failing fork() sets, as a decimal number.
pub const ENV_ERRNO: &str = "FAKEJVM_FORKFAIL_ERRNO";
/// A file the shim appends one line to per fork() call (see [`LogLine`]).
pub const ENV_LOG: &str = "FAKEJVM_FORKFAIL_LOG";

/// Whether this build has a usable shim (Linux only).
pub fn available() -> bool {
    !SHIM.is_empty()
}

/// Writes the shim into `dir` and returns its path, for LD_PRELOAD.
pub fn install(dir: &Path) -> io::Result<PathBuf> {
    if !available() {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the fork-failure shim is built for Linux only",
        ));
    }
    let path = dir.join(FILE_NAME);
    std::fs::write(&path, SHIM)?;
    Ok(path)
}

/// One line of the shim's log. `at_ms` is wall-clock time in ms since the epoch.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LogLine {
    Loaded {
        pid: i32,
        when: String,
        errno: i32,
        at_ms: u64,
    },
    /// fork() number `ordinal` in `pid` made `child`.
    Forked {
        ordinal: u64,
        pid: i32,
        child: i32,
        at_ms: u64,
    },
    /// fork() number `ordinal` failed; `injected` is false when libc itself failed.
    Failed {
        ordinal: u64,
        pid: i32,
        errno: i32,
        injected: bool,
        at_ms: u64,
    },
}

impl LogLine {
    pub fn parse(line: &str) -> Option<LogLine> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["loaded", "pid", pid, "when", when, "errno", e, "at", t] => Some(LogLine::Loaded {
                pid: pid.parse().ok()?,
                when: when.to_string(),
                errno: e.parse().ok()?,
                at_ms: t.parse().ok()?,
            }),
            ["fork", n, "pid", pid, "ok", "child", c, "at", t] => Some(LogLine::Forked {
                ordinal: n.parse().ok()?,
                pid: pid.parse().ok()?,
                child: c.parse().ok()?,
                at_ms: t.parse().ok()?,
            }),
            ["fork", n, "pid", pid, "failed", "errno", e, how, "at", t] => Some(LogLine::Failed {
                ordinal: n.parse().ok()?,
                pid: pid.parse().ok()?,
                errno: e.parse().ok()?,
                injected: *how == "injected",
                at_ms: t.parse().ok()?,
            }),
            _ => None,
        }
    }

    /// Every parsable line of a log file's text.
    pub fn parse_all(text: &str) -> Vec<LogLine> {
        text.lines().filter_map(LogLine::parse).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    #[cfg(target_os = "linux")]
    fn the_shim_is_embedded_and_is_an_elf_shared_object() {
        assert!(available());
        assert_eq!(&SHIM[..4], b"\x7fELF");
    }

    #[test]
    fn log_lines_parse() {
        let text = "loaded pid 7 when nth:1,2 errno 11 at 5\nfork 1 pid 7 failed errno 11 injected at 6\nfork 2 pid 7 ok child 9 at 1007\ngarbage\n";
        assert_eq!(
            LogLine::parse_all(text),
            vec![
                LogLine::Loaded {
                    pid: 7,
                    when: "nth:1,2".into(),
                    errno: 11,
                    at_ms: 5
                },
                LogLine::Failed {
                    ordinal: 1,
                    pid: 7,
                    errno: 11,
                    injected: true,
                    at_ms: 6
                },
                LogLine::Forked {
                    ordinal: 2,
                    pid: 7,
                    child: 9,
                    at_ms: 1007
                },
            ]
        );
    }
}
