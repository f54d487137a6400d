//! Building the command line and environment of a Python process, and draining its output.
//!
//! Environment policy: the child starts from an EMPTY environment plus a short pass-through list.
//! Spark's executor passes its whole environment, but ours is a developer's shell or a CI job,
//! and several variables there change what pyspark does: PYTHONPATH (which pyspark is imported),
//! PYTHONOPTIMIZE (strips the `assert`s pyspark 4.3 uses as protocol checks), SPARK_REUSE_WORKER
//! (a truthiness test: any value turns reuse on), PYTHON_WORKER_FACTORY_SOCK_PATH (sends the 4.1+
//! direct worker down the Unix-socket branch), PYSPARK_*, SPARK_PREFER_IPV6. A run must not depend
//! on who started it, so everything the worker sees is listed here or in `extra_env`. Of what the
//! executor adds, PYTHONUNBUFFERED and OMP_NUM_THREADS are set here for every process.

use std::io;
use std::path::Path;
use std::sync::{Arc, Mutex};
use tokio::io::{AsyncRead, AsyncReadExt};
use tokio::process::Command;
use tokio::task::JoinHandle;

/// Taken from our environment when set: what a process needs to run at all (PATH for anything it
/// spawns, HOME for libraries that look there, locale and TZ for text and time, TMPDIR for temp files).
pub const PASS_THROUGH_ENV: [&str; 7] =
    ["PATH", "HOME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR"];

/// What varies per process: set by `LaunchOptions` for the daemon (its forks inherit it) and per
/// direct worker by `ProcessTweaks`, so faults can target one process.
#[derive(Clone, Debug, Default)]
pub struct ProcessTweaks {
    /// Added after (and so overriding) everything else we set.
    pub extra_env: Vec<(String, String)>,
    /// RLIMIT_AS soft limit in bytes, set between fork and exec.
    pub rlimit_as: Option<u64>,
    /// RLIMIT_NOFILE soft limit (at most the hard limit), set between fork and exec.
    pub rlimit_nofile: Option<u64>,
    /// Run the interpreter under this program (a debugger), which gets the environment and
    /// starts `python ARGS` itself; our process group and its kill cover both.
    pub wrapper: Option<Wrapper>,
}

/// A command put in front of `python ARGS`: `program args... python ARGS`, e.g.
/// `gdb -batch -ex run -ex bt --args` (fuzz::native_stack).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Wrapper {
    pub program: std::path::PathBuf,
    pub args: Vec<String>,
}

pub(crate) fn python_command(
    python: &Path,
    args: &[&str],
    protocol_env: &[(&str, String)],
    tweaks: &ProcessTweaks,
) -> Command {
    let mut cmd = match &tweaks.wrapper {
        Some(w) => {
            let mut c = Command::new(&w.program);
            c.args(&w.args).arg(python);
            c
        }
        None => Command::new(python),
    };
    cmd.args(args).env_clear();
    for name in PASS_THROUGH_ENV {
        if let Some(value) = std::env::var_os(name) {
            cmd.env(name, value);
        }
    }
    // Spark sets "YES" (any non-empty value means unbuffered): prints reach the pipe at once.
    cmd.env("PYTHONUNBUFFERED", "YES");
    // The executor sets OMP_NUM_THREADS to its cores for Python workers (SPARK-28843, Spark 3+,
    // unless spark.executorEnv sets it); every golden under golden/ recorded "1". Without it
    // numpy's OpenBLAS, which pyspark.worker imports, starts a thread per CPU in the daemon.
    // A golden's own value (replay_env) or extra_env override this.
    cmd.env("OMP_NUM_THREADS", "1");
    for (k, v) in protocol_env {
        cmd.env(k, v);
    }
    for (k, v) in &tweaks.extra_env {
        cmd.env(k, v);
    }
    cmd.stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // Its own process group and our mark come from `groups::spawn_in_group`, which starts it.
    let limits: Vec<(libc::__rlimit_resource_t, u64)> = [
        (libc::RLIMIT_AS, tweaks.rlimit_as),
        (libc::RLIMIT_NOFILE, tweaks.rlimit_nofile),
    ]
    .into_iter()
    .filter_map(|(r, v)| Some((r, v?)))
    .collect();
    if !limits.is_empty() {
        // SAFETY: runs in the forked child before exec; getrlimit/setrlimit are async-signal-safe
        // and the closure allocates nothing (it only reads the vector built before the fork).
        unsafe {
            cmd.pre_exec(move || {
                for &(resource, limit) in &limits {
                    set_soft_limit(resource, limit)?;
                }
                Ok(())
            });
        }
    }
    cmd
}

/// Sets a soft limit, capped at the hard one: lowering the hard limit is not needed, and raising
/// it needs a privilege.
fn set_soft_limit(resource: libc::__rlimit_resource_t, limit: u64) -> io::Result<()> {
    let mut current = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct we pass.
    unsafe {
        if libc::getrlimit(resource, &mut current) != 0 {
            return Err(io::Error::last_os_error());
        }
        let wanted = libc::rlimit {
            rlim_cur: limit.min(current.rlim_max),
            rlim_max: current.rlim_max,
        };
        if libc::setrlimit(resource, &wanted) != 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Everything read from a set of pipes, in arrival order. Bounded: past `CAPTURE_LIMIT` bytes
/// we keep draining (a full pipe would block the writer) but only count what we drop.
#[derive(Clone, Default)]
pub(crate) struct Capture(Arc<Mutex<CaptureBuf>>);

#[derive(Default)]
struct CaptureBuf {
    bytes: Vec<u8>,
    dropped: u64,
}

pub const CAPTURE_LIMIT: usize = 64 * 1024 * 1024;

impl Capture {
    fn push(&self, chunk: &[u8]) {
        let mut buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let room = CAPTURE_LIMIT.saturating_sub(buf.bytes.len());
        let keep = room.min(chunk.len());
        buf.bytes.extend_from_slice(&chunk[..keep]);
        buf.dropped += (chunk.len() - keep) as u64;
    }

    pub(super) fn snapshot(&self) -> Vec<u8> {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .bytes
            .clone()
    }

    pub(super) fn dropped(&self) -> u64 {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).dropped
    }

    /// The last `max` bytes as text, for error messages.
    pub(super) fn tail(&self, max: usize) -> String {
        let buf = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let start = buf.bytes.len().saturating_sub(max);
        String::from_utf8_lossy(&buf.bytes[start..]).into_owned()
    }
}

/// Copies `from` into `into` until EOF. Runs in the background for the life of the process (and of
/// any forked worker holding the same pipe); it is awaited with a deadline, or aborted, at shutdown.
pub(crate) fn drain<R>(mut from: R, into: Capture) -> JoinHandle<()>
where
    R: AsyncRead + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        let mut chunk = vec![0u8; 16 * 1024];
        loop {
            match from.read(&mut chunk).await {
                Ok(0) | Err(_) => break,
                Ok(n) => into.push(&chunk[..n]),
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capture_keeps_order_and_a_tail() {
        let c = Capture::default();
        c.push(b"hello ");
        c.push(b"world");
        assert_eq!(c.snapshot(), b"hello world");
        assert_eq!(c.tail(5), "world");
        assert_eq!(c.dropped(), 0);
    }
}
