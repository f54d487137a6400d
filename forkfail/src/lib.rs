//! The syscall fault shim: an LD_PRELOAD library (shim/forkfail.c, compiled by build.rs) that makes
//! `fork()` fail on a schedule in the process that loaded it (the daemon), fails a worker's or the
//! daemon's socket calls (send/recv/close/accept/select/poll), holds a forked child before it can
//! write its pid, and can start a process with its low descriptors taken. Its bytes are embedded
//! here so a fresh clone needs nothing prebuilt: `install` writes them where the caller wants them.
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
/// A file the shim appends one line to per event (see [`LogLine`]).
pub const ENV_LOG: &str = "FAKEJVM_FORKFAIL_LOG";
/// `daemon` (default: the loading process is the daemon, the children it forks are workers) or
/// `worker` (the loading process is a direct worker).
pub const ENV_ROLE: &str = "FAKEJVM_SHIM_ROLE";
/// Call rules separated by `;`, each `<daemon|worker|worker@T> <call> <errno> <schedule>`; see
/// [`CallRule`].
pub const ENV_CALLS: &str = "FAKEJVM_SHIM_CALLS";
/// A file holding the number of the task being started: a worker (a daemon's child right after
/// fork(), a direct worker at load) reads it once and takes the rules tagged `worker@<that task>`.
pub const ENV_TASK_FILE: &str = "FAKEJVM_SHIM_TASK_FILE";
/// `<n> stop` or `<n> stall <ms>`: the child of the daemon's fork n stops itself (SIGSTOP), or
/// sleeps, before fork() returns in it (so before it writes its pid).
pub const ENV_HOLD: &str = "FAKEJVM_SHIM_HOLD";
/// `n`: at load, every free descriptor 3..n-1 is opened on /dev/null (inheritable).
pub const ENV_FILL_FDS: &str = "FAKEJVM_SHIM_FILL_FDS";

/// The calls the shim can fail. `Send` covers send, sendto, sendmsg and write; `Recv` recv,
/// recvfrom, recvmsg and read: only on socket descriptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    Send,
    Recv,
    Close,
    Accept,
    Select,
    Poll,
}

impl Call {
    pub const ALL: [Call; 6] = [
        Call::Send,
        Call::Recv,
        Call::Close,
        Call::Accept,
        Call::Select,
        Call::Poll,
    ];

    /// The name in the scenario format, the shim's rules and its log.
    pub fn name(self) -> &'static str {
        match self {
            Call::Send => "send",
            Call::Recv => "recv",
            Call::Close => "close",
            Call::Accept => "accept",
            Call::Select => "select",
            Call::Poll => "poll",
        }
    }

    pub fn from_name(s: &str) -> Option<Call> {
        Call::ALL.into_iter().find(|c| c.name() == s)
    }

    /// Whether a schedule by bytes means anything for it.
    pub fn moves_bytes(self) -> bool {
        matches!(self, Call::Send | Call::Recv)
    }
}

/// One rule of [`ENV_CALLS`]: in `worker` (else the daemon), fail `call` with `errno` when
/// `when` says (`nth:3,5`, `bytes:<n>`, `bytes:<n>:<k>` (only k calls from there) or
/// `random:<p>:<seed>`). `task`: only in the worker started for that task (see [`ENV_TASK_FILE`]).
#[derive(Clone, Debug, PartialEq)]
pub struct CallRule {
    pub worker: bool,
    pub task: Option<usize>,
    pub call: Call,
    pub errno: i32,
    pub when: String,
}

impl CallRule {
    /// The value of [`ENV_CALLS`] for these rules (the shim takes up to [`MAX_CALL_RULES`]).
    pub fn env_value(rules: &[CallRule]) -> String {
        rules
            .iter()
            .map(|r| {
                let process = match (r.worker, r.task) {
                    (true, Some(t)) => format!("worker@{t}"),
                    (true, None) => "worker".into(),
                    (false, _) => "daemon".into(),
                };
                format!("{process} {} {} {}", r.call.name(), r.errno, r.when)
            })
            .collect::<Vec<_>>()
            .join(";")
    }
}

/// How many call rules the shim takes.
pub const MAX_CALL_RULES: usize = 16;

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
        /// The loading process is a direct worker (else the daemon).
        worker: bool,
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
    /// Call number `ordinal` (of its kind, in `pid`) failed by rule `rule`, via the libc function
    /// `via`, after `bytes_before` bytes of its kind had gone through.
    CallFailed {
        call: Call,
        ordinal: u64,
        pid: i32,
        fd: i32,
        via: String,
        errno: i32,
        bytes_before: u64,
        rule: usize,
        at_ms: u64,
    },
    /// A call was cut from `len` to `to` bytes so that a byte schedule ends exactly at its count.
    CallShortened {
        call: Call,
        ordinal: u64,
        pid: i32,
        fd: i32,
        len: u64,
        to: u64,
        rule: usize,
        at_ms: u64,
    },
    /// The child of fork `ordinal` stopped itself (`stall_ms` None) or began to sleep.
    ChildHeld {
        ordinal: u64,
        pid: i32,
        stall_ms: Option<u64>,
        at_ms: u64,
    },
    ChildResumed {
        ordinal: u64,
        pid: i32,
        at_ms: u64,
    },
    /// `opened` descriptors below `below` were taken at load (`failed`: dup2 refused, e.g. past
    /// RLIMIT_NOFILE).
    Filled {
        pid: i32,
        below: u64,
        opened: u64,
        failed: u64,
        at_ms: u64,
    },
}

impl LogLine {
    pub fn parse(line: &str) -> Option<LogLine> {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["loaded", "pid", pid, "role", role, "when", when, "errno", e, "at", t] => {
                Some(LogLine::Loaded {
                    pid: pid.parse().ok()?,
                    worker: *role == "worker",
                    when: when.to_string(),
                    errno: e.parse().ok()?,
                    at_ms: t.parse().ok()?,
                })
            }
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
            ["call", c, n, "pid", pid, "fd", fd, "via", via, "failed", "errno", e, "injected", "after", b, "rule", k, "at", t] => {
                Some(LogLine::CallFailed {
                    call: Call::from_name(c)?,
                    ordinal: n.parse().ok()?,
                    pid: pid.parse().ok()?,
                    fd: fd.parse().ok()?,
                    via: via.to_string(),
                    errno: e.parse().ok()?,
                    bytes_before: b.parse().ok()?,
                    rule: k.parse().ok()?,
                    at_ms: t.parse().ok()?,
                })
            }
            ["call", c, n, "pid", pid, "fd", fd, "via", _, "shortened", len, "to", to, "rule", k, "at", t] => {
                Some(LogLine::CallShortened {
                    call: Call::from_name(c)?,
                    ordinal: n.parse().ok()?,
                    pid: pid.parse().ok()?,
                    fd: fd.parse().ok()?,
                    len: len.parse().ok()?,
                    to: to.parse().ok()?,
                    rule: k.parse().ok()?,
                    at_ms: t.parse().ok()?,
                })
            }
            ["child", n, "pid", pid, "stop", "at", t] => Some(LogLine::ChildHeld {
                ordinal: n.parse().ok()?,
                pid: pid.parse().ok()?,
                stall_ms: None,
                at_ms: t.parse().ok()?,
            }),
            ["child", n, "pid", pid, "stall", ms, "at", t] => Some(LogLine::ChildHeld {
                ordinal: n.parse().ok()?,
                pid: pid.parse().ok()?,
                stall_ms: Some(ms.parse().ok()?),
                at_ms: t.parse().ok()?,
            }),
            ["child", n, "pid", pid, "resumed", "at", t] => Some(LogLine::ChildResumed {
                ordinal: n.parse().ok()?,
                pid: pid.parse().ok()?,
                at_ms: t.parse().ok()?,
            }),
            ["fill", "pid", pid, "below", below, "opened", o, "failed", f, "at", t] => {
                Some(LogLine::Filled {
                    pid: pid.parse().ok()?,
                    below: below.parse().ok()?,
                    opened: o.parse().ok()?,
                    failed: f.parse().ok()?,
                    at_ms: t.parse().ok()?,
                })
            }
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
        let text = "loaded pid 7 role daemon when nth:1,2 errno 11 at 5\nfork 1 pid 7 failed errno 11 injected at 6\nfork 2 pid 7 ok child 9 at 1007\ngarbage\n";
        assert_eq!(
            LogLine::parse_all(text),
            vec![
                LogLine::Loaded {
                    pid: 7,
                    worker: false,
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

    #[test]
    fn call_and_child_lines_parse() {
        let text =
            "call send 3 pid 9 fd 5 via write failed errno 32 injected after 1024 rule 1 at 77\n\
                    call recv 2 pid 9 fd 5 via read shortened 65536 to 10 rule 0 at 78\n\
                    child 2 pid 12 stall 500 at 80\nchild 2 pid 12 resumed at 580\n\
                    fill pid 8 below 1100 opened 1090 failed 0 at 3\n";
        let lines = LogLine::parse_all(text);
        assert_eq!(lines.len(), 5, "{lines:?}");
        assert_eq!(
            lines[0],
            LogLine::CallFailed {
                call: Call::Send,
                ordinal: 3,
                pid: 9,
                fd: 5,
                via: "write".into(),
                errno: 32,
                bytes_before: 1024,
                rule: 1,
                at_ms: 77
            }
        );
        assert!(matches!(lines[1], LogLine::CallShortened { to: 10, .. }));
        assert!(matches!(
            lines[2],
            LogLine::ChildHeld {
                stall_ms: Some(500),
                ..
            }
        ));
        assert!(matches!(
            lines[4],
            LogLine::Filled {
                below: 1100,
                opened: 1090,
                ..
            }
        ));
        let rules = [
            CallRule {
                worker: true,
                task: None,
                call: Call::Send,
                errno: 32,
                when: "nth:3".into(),
            },
            CallRule {
                worker: false,
                task: None,
                call: Call::Accept,
                errno: 24,
                when: "random:0.5:7".into(),
            },
            CallRule {
                worker: true,
                task: Some(2),
                call: Call::Recv,
                errno: 4,
                when: "bytes:100:1".into(),
            },
        ];
        assert_eq!(
            CallRule::env_value(&rules),
            "worker send 32 nth:3;daemon accept 24 random:0.5:7;worker@2 recv 4 bytes:100:1"
        );
    }
}
