//! The tap's on-disk spool: what one tap process (one daemon, or one direct worker) saw, written
//! as it happens so that a tap killed by the JVM still leaves its bytes behind.
//!
//! One directory per tap process, `<spool>/tap-<pid>/`:
//! - `meta.json`: role, transport, arguments, the worker-relevant environment, pids, exit;
//!   written at start and rewritten at the end.
//! - `conn-<k>.to_worker.bin` / `conn-<k>.to_jvm.bin`: every byte of connection k, both ways,
//!   including the handshake (split off later by [`handshake_split`]).
//! - `conn-<k>.json`: when it opened and closed, and the turns (see [`ConnMeta::turns`]).
//! - `stdin.bin`: what the JVM wrote to the daemon's stdin (pids to kill).
//! - `stdout.bin` / `stderr.bin`: the real process's output (after the announce).
//!
//! Broadcast files (copied while Spark still has them) go to `<spool>/broadcast-<id>.bin`,
//! shared by every tap of the recording.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// What the JVM asked PYSPARK_PYTHON to run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// `-m pyspark.daemon [pyspark.worker]`: one process, a connection per worker it forks.
    Daemon,
    /// `-m pyspark.worker` (spark.python.use.daemon=false): one process, one connection.
    Direct,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    Tcp,
    /// pyspark 4.1+ with spark.python.unix.domain.socket.enabled: no auth on the socket.
    Unix,
}

impl Role {
    /// The role for PYSPARK_PYTHON's arguments, or None for anything else (run straight).
    pub fn of_args(args: &[String]) -> Option<Role> {
        match args {
            [m, module, ..] if m == "-m" && module == "pyspark.daemon" => Some(Role::Daemon),
            [m, module] if m == "-m" && module == "pyspark.worker" => Some(Role::Direct),
            _ => None,
        }
    }
}

/// How a process ended (kept apart from worker::ExitInfo so the spool format is ours).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Exit {
    Code(i32),
    Signal(i32),
}

impl Exit {
    pub fn from_status(status: std::process::ExitStatus) -> Exit {
        use std::os::unix::process::ExitStatusExt;
        match (status.code(), status.signal()) {
            (Some(c), _) => Exit::Code(c),
            (None, Some(s)) => Exit::Signal(s),
            (None, None) => Exit::Code(-1),
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct TapMeta {
    pub role: Role,
    pub transport: Transport,
    /// PYSPARK_PYTHON's arguments as the JVM gave them.
    pub args: Vec<String>,
    /// Spark's and Python's variables from the environment the JVM gave (see [`worker_env`]).
    pub env: BTreeMap<String, String>,
    pub tap_pid: u32,
    /// The real daemon or worker.
    pub real_pid: Option<i32>,
    pub started_unix_ms: u64,
    pub ended_unix_ms: Option<u64>,
    pub exit: Option<Exit>,
    /// What went wrong in the tap itself (the job may still have succeeded).
    pub errors: Vec<String>,
    /// What the real daemon announced and what the tap announced in its place.
    pub real_announce: Option<String>,
    pub tap_announce: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConnMeta {
    pub index: usize,
    pub opened_unix_us: u64,
    pub closed_unix_us: Option<u64>,
    pub to_worker_bytes: u64,
    pub to_jvm_bytes: u64,
    /// Every moment the JVM started writing again after the worker had written: the pair
    /// (to_worker offset, to_jvm offset) at that moment, raw stream offsets. The JVM does not
    /// pipeline tasks on a connection, so each new request starts at one of these: an account of
    /// the framing that does not come from our decoder.
    pub turns: Vec<(u64, u64)>,
    /// Broadcast ids whose files this connection's requests named.
    pub broadcasts: Vec<i64>,
    pub errors: Vec<String>,
}

pub const META: &str = "meta.json";

pub fn tap_dir(spool: &Path, tap_pid: u32) -> PathBuf {
    spool.join(format!("tap-{tap_pid}"))
}

pub fn conn_file(dir: &Path, k: usize, what: &str) -> PathBuf {
    dir.join(format!("conn-{k}.{what}"))
}

pub fn broadcast_file(spool: &Path, id: i64) -> PathBuf {
    spool.join(format!("broadcast-{id}.bin"))
}

/// Variables the JVM sets for Python workers, and Python's own: kept in the recording. Anything
/// else in the JVM's environment (which is the driver's: HOME, PATH, tokens...) is none of the
/// golden's business and is never written down.
pub(crate) fn is_worker_env(name: &str) -> bool {
    name.starts_with("SPARK_")
        || name.starts_with("PYSPARK_")
        || name.starts_with("PYTHON")
        || name == "OMP_NUM_THREADS"
}

/// The worker-relevant environment of this process, with the auth secret masked.
pub fn worker_env() -> BTreeMap<String, String> {
    std::env::vars_os()
        .filter_map(|(k, v)| Some((k.into_string().ok()?, v.to_string_lossy().into_owned())))
        .filter(|(k, _)| is_worker_env(k))
        .map(|(k, v)| {
            if k == "PYTHON_WORKER_FACTORY_SECRET" {
                (k, "<secret>".to_owned())
            } else {
                (k, v)
            }
        })
        .collect()
}

/// Where the handshake ends in each direction of a connection, and the worker's pid.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeSplit {
    /// Bytes of the JVM -> worker stream that belong to the handshake.
    pub to_worker: usize,
    /// Bytes of the worker -> JVM stream that belong to the handshake.
    pub to_jvm: usize,
    pub pid: i32,
}

/// The handshake's shape, as Spark's PythonWorkerFactory and pyspark's daemon.py / worker.py
/// exchange it (no auth at all on Unix sockets, 4.1+):
/// - daemon, TCP: worker -> JVM pid (i32) then "ok" (string); JVM -> worker the secret (string)
/// - daemon, Unix: worker -> JVM pid (i32)
/// - direct, TCP: worker -> JVM the secret (string) then pid (i32); JVM -> worker "ok" (string)
/// - direct, Unix: worker -> JVM pid (i32)
///
/// Err says what did not fit, with the offset.
pub fn handshake_split(
    role: Role,
    transport: Transport,
    to_worker: &[u8],
    to_jvm: &[u8],
) -> Result<HandshakeSplit, String> {
    let string_len = |b: &[u8], at: usize, what: &str| -> Result<usize, String> {
        let len = int_at(b, at)
            .ok_or_else(|| format!("{what}: stream ends before its length at byte {at}"))?;
        if !(0..=4096).contains(&len) {
            return Err(format!(
                "{what}: length {len} at byte {at} is not a handshake string"
            ));
        }
        let end = at + 4 + len as usize;
        if end > b.len() {
            return Err(format!(
                "{what}: stream ends inside it (needs {end} bytes, has {})",
                b.len()
            ));
        }
        Ok(end)
    };
    let pid_at = |b: &[u8], at: usize| {
        int_at(b, at).ok_or_else(|| format!("pid: stream ends before byte {}", at + 4))
    };
    match (role, transport) {
        (Role::Daemon, Transport::Tcp) => {
            let pid = pid_at(to_jvm, 0)?;
            let ok_end = string_len(to_jvm, 4, "auth reply")?;
            if &to_jvm[8..ok_end] != b"ok" {
                return Err(format!(
                    "auth reply is {:?}, not \"ok\"",
                    String::from_utf8_lossy(&to_jvm[8..ok_end])
                ));
            }
            Ok(HandshakeSplit {
                to_worker: string_len(to_worker, 0, "secret")?,
                to_jvm: ok_end,
                pid,
            })
        }
        (Role::Direct, Transport::Tcp) => {
            let secret_end = string_len(to_jvm, 0, "secret from the worker")?;
            let pid = pid_at(to_jvm, secret_end)?;
            let ok_end = string_len(to_worker, 0, "auth reply")?;
            Ok(HandshakeSplit {
                to_worker: ok_end,
                to_jvm: secret_end + 4,
                pid,
            })
        }
        (_, Transport::Unix) => Ok(HandshakeSplit {
            to_worker: 0,
            to_jvm: 4,
            pid: pid_at(to_jvm, 0)?,
        }),
    }
}

/// Bytes of the JVM -> worker handshake that can be known before they all arrived: None until
/// the length prefix of the secret / "ok" has arrived.
pub fn to_worker_handshake_len(transport: Transport, to_worker: &[u8]) -> Option<usize> {
    match transport {
        Transport::Unix => Some(0),
        Transport::Tcp => {
            let len = int_at(to_worker, 0)?;
            Some(4 + len.max(0) as usize)
        }
    }
}

fn int_at(b: &[u8], at: usize) -> Option<i32> {
    let s = b.get(at..at + 4)?;
    Some(i32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

pub fn now_unix_us() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(text: &str) -> Vec<u8> {
        let mut v = (text.len() as i32).to_be_bytes().to_vec();
        v.extend_from_slice(text.as_bytes());
        v
    }

    #[test]
    fn daemon_tcp_handshake_is_pid_then_ok_against_the_secret() {
        let mut to_jvm = 4242i32.to_be_bytes().to_vec();
        to_jvm.extend(s("ok"));
        to_jvm.extend([0, 0, 0, 7]);
        let mut to_worker = s("abcdef");
        to_worker.extend([0, 0, 0, 0]);
        let h = handshake_split(Role::Daemon, Transport::Tcp, &to_worker, &to_jvm).unwrap();
        assert_eq!(
            h,
            HandshakeSplit {
                to_worker: 10,
                to_jvm: 10,
                pid: 4242
            }
        );
    }

    #[test]
    fn direct_tcp_handshake_is_secret_then_pid_against_ok() {
        let mut to_jvm = s("secret");
        to_jvm.extend(77i32.to_be_bytes());
        let to_worker = s("ok");
        let h = handshake_split(Role::Direct, Transport::Tcp, &to_worker, &to_jvm).unwrap();
        assert_eq!(
            h,
            HandshakeSplit {
                to_worker: 6,
                to_jvm: 14,
                pid: 77
            }
        );
    }

    #[test]
    fn unix_sockets_have_only_a_pid() {
        let h = handshake_split(Role::Daemon, Transport::Unix, &[], &9i32.to_be_bytes()).unwrap();
        assert_eq!(
            h,
            HandshakeSplit {
                to_worker: 0,
                to_jvm: 4,
                pid: 9
            }
        );
    }

    #[test]
    fn a_wrong_auth_reply_is_named() {
        let mut to_jvm = 1i32.to_be_bytes().to_vec();
        to_jvm.extend(s("err"));
        let e = handshake_split(Role::Daemon, Transport::Tcp, &s("x"), &to_jvm).unwrap_err();
        assert!(e.contains("\"err\""), "{e}");
    }

    #[test]
    fn roles_come_from_the_module() {
        let a = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(
            Role::of_args(&a(&["-m", "pyspark.daemon", "pyspark.worker"])),
            Some(Role::Daemon)
        );
        assert_eq!(
            Role::of_args(&a(&["-m", "pyspark.daemon"])),
            Some(Role::Daemon)
        );
        assert_eq!(
            Role::of_args(&a(&["-m", "pyspark.worker"])),
            Some(Role::Direct)
        );
        assert_eq!(Role::of_args(&a(&["-c", "print(1)"])), None);
        assert_eq!(Role::of_args(&a(&[])), None);
    }
}
