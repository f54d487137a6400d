//! One process of fakejvm's own Python loop (`harness/python/fakejvm_persist.py`), run by the
//! target env's interpreter: a **persistent** server (every case in one process that imported
//! the real `pyspark.worker` once) or a **warm fork server** (a fork per case from a parent that
//! imported pyspark.worker, pandas and pyarrow and froze its heap).
//!
//! Per connection either one speaks the daemon's handshake (pid, then the secret and "ok") and
//! runs the real `pyspark.daemon.worker()`, so [`super::dial::Dialer`] reaches it like the daemon
//! and the case bytes are those a daemon-forked worker reads, over a Unix socket in the
//! executor's directory (its ready line says where; a port when the path is too long for
//! sun_path). Its own messages travel on a side
//! channel that never touches a pyspark socket: JSON lines on its stdout (ready, one `done` per
//! persistent case, recycle notices), and its stdin, whose EOF asks it to shut down.

use crate::pyenv::PythonEnv;
use crate::worker::{
    leftover_processes, procs, spawn_in_group, DaemonAddr, ExitInfo, Group, ProcessTweaks,
};
use serde::Deserialize;
use std::os::unix::process::ExitStatusExt;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout};
use tokio::time::{timeout, Instant};

/// The loop, embedded so the binary works from any directory; written to a file of the
/// executor's (see [`write_loop`]) and run as `python .../fakejvm_persist.py MODE N`, a command
/// line short enough to read in a leak report and to find with pgrep.
pub(crate) const LOOP: &str = include_str!("../../python/fakejvm_persist.py");
pub const LOOP_FILE: &str = "fakejvm_persist.py";

/// Write the loop into `dir`; the path to give [`ServerOptions::script`].
pub fn write_loop(dir: &std::path::Path) -> std::io::Result<std::path::PathBuf> {
    let path = dir.join(LOOP_FILE);
    std::fs::write(&path, LOOP)?;
    Ok(path)
}

/// How much of a server's stderr is kept (the tail is what a report quotes).
const STDERR_KEEP: usize = 64 * 1024;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ServerKind {
    Persistent,
    WarmFork,
}

impl ServerKind {
    fn arg(self) -> &'static str {
        match self {
            ServerKind::Persistent => "persistent",
            ServerKind::WarmFork => "warm-fork",
        }
    }
}

/// What every server of an executor is started with.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The loop's file (see [`write_loop`]).
    pub script: std::path::PathBuf,
    /// PYTHON_WORKER_FACTORY_SECRET: `pyspark.daemon.worker()` checks the JVM's secret against it.
    pub secret: String,
    /// Persistent: exit after this many cases (0: never for that reason).
    pub recycle_after: u64,
    /// Persistent: import pandas and pyarrow at start.
    pub preload_arrow: bool,
    /// RLIMIT_AS and extra environment (PYTHON_FAULTHANDLER_DIR), as for the daemon.
    pub tweaks: ProcessTweaks,
    /// For the ready line.
    pub start_timeout: Duration,
    /// Coverage: the tracer, and the directory warm-fork children leave their lines in.
    pub tracing: Option<(super::coverage::Tracer, std::path::PathBuf)>,
}

/// One line of the side channel.
#[derive(Clone, Debug, Default, Deserialize)]
pub struct Event {
    /// Where it listens: a Unix socket in the executor's directory, or a port where the path
    /// would not fit.
    pub ready: Option<DaemonAddr>,
    pub pid: Option<i32>,
    pub threads: Option<u32>,
    pub modules: Option<u32>,
    /// Persistent: cases served so far, after one more.
    pub done: Option<u64>,
    /// `daemon.worker()`'s return code (None: an exception escaped it).
    pub code: Option<i32>,
    /// The status a daemon-forked child would have exited with.
    pub status: Option<i32>,
    /// The server exits after this case, and why.
    pub recycle: Option<String>,
    /// Live child processes the case left (with a recycle).
    #[serde(default)]
    pub children: Vec<i32>,
    pub error: Option<String>,
    /// With coverage: the lines of pyspark the case ran (ready line: its imports ran).
    pub cov: Option<super::coverage::CaseLines>,
}

/// What reading the side channel gave.
#[derive(Debug)]
pub enum Heard {
    Event(Event),
    /// The server closed its stdout: it exited (or is exiting).
    Gone,
    /// Nothing within the wait.
    Silent,
}

pub struct Server {
    pub kind: ServerKind,
    pub pid: i32,
    pub addr: DaemonAddr,
    /// Native threads the server had when it said it was ready.
    pub threads: u32,
    child: Child,
    group: Group,
    stdin: Option<ChildStdin>,
    events: Lines<BufReader<ChildStdout>>,
    stderr: Arc<Mutex<Vec<u8>>>,
    exit: Option<ExitInfo>,
    /// Persistent: cases this process served.
    pub served: u64,
    /// When it said it was ready.
    pub ready_at: std::time::Instant,
    /// With coverage: the lines pyspark's imports ran at its start, until taken.
    pub startup: Option<super::coverage::CaseLines>,
}

fn exit_info(status: std::process::ExitStatus) -> ExitInfo {
    match (status.code(), status.signal()) {
        (Some(c), _) => ExitInfo::Code(c),
        (None, Some(s)) => ExitInfo::Signal(s),
        (None, None) => ExitInfo::Code(-1),
    }
}

impl Server {
    /// Start one and wait for its ready line.
    pub async fn start(
        env: &PythonEnv,
        kind: ServerKind,
        opts: &ServerOptions,
    ) -> anyhow::Result<Server> {
        let recycle = opts.recycle_after.to_string();
        let script = opts.script.display().to_string();
        let preload = if opts.preload_arrow { "arrow" } else { "-" };
        let (tracer, covdir) = match &opts.tracing {
            Some((t, dir)) => (t.args(), dir.display().to_string()),
            None => (["-".to_string(), "-".to_string()], "-".to_string()),
        };
        let args = [
            script.as_str(),
            kind.arg(),
            recycle.as_str(),
            preload,
            &tracer[0],
            &tracer[1],
            &covdir,
        ];
        let protocol_env = [("PYTHON_WORKER_FACTORY_SECRET", opts.secret.clone())];
        let mut cmd =
            crate::worker::python_command(&env.python, &args, &protocol_env, &opts.tweaks);
        let (mut child, group) = spawn_in_group(&mut cmd).map_err(|e| {
            anyhow::anyhow!(
                "could not start {} for the {} executor: {e}",
                env.python.display(),
                kind.arg()
            )
        })?;
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("stdout is piped");
        let stderr = Arc::new(Mutex::new(Vec::new()));
        if let Some(mut err) = child.stderr.take() {
            let keep = stderr.clone();
            tokio::spawn(async move {
                let mut chunk = vec![0u8; 8192];
                while let Ok(n) = err.read(&mut chunk).await {
                    if n == 0 {
                        break;
                    }
                    let mut k = keep.lock().unwrap_or_else(|p| p.into_inner());
                    k.extend_from_slice(&chunk[..n]);
                    if k.len() > 2 * STDERR_KEEP {
                        let cut = k.len() - STDERR_KEEP;
                        k.drain(..cut);
                    }
                }
            });
        }
        let pid = group.pgid();
        let mut server = Server {
            kind,
            pid,
            addr: DaemonAddr::Tcp(0),
            threads: 0,
            child,
            group,
            stdin,
            events: BufReader::new(stdout).lines(),
            stderr,
            exit: None,
            served: 0,
            ready_at: std::time::Instant::now(),
            startup: None,
        };
        match server.hear(opts.start_timeout).await {
            Heard::Event(Event {
                ready: Some(addr),
                threads,
                cov,
                ..
            }) => {
                server.addr = addr;
                server.threads = threads.unwrap_or(0);
                server.startup = cov;
                server.ready_at = std::time::Instant::now();
                Ok(server)
            }
            Heard::Event(Event { error: Some(e), .. }) => {
                anyhow::bail!("the {} server would not start: {e}", kind.arg())
            }
            other => {
                let exit = server.wait_exit(Duration::from_secs(1)).await;
                anyhow::bail!(
                    "the {} server did not say it was ready ({other:?}, {}); its stderr ends with:\n{}",
                    kind.arg(),
                    exit.map(|e| e.to_string()).unwrap_or_else(|| "still running".into()),
                    server.stderr_tail(2000)
                )
            }
        }
    }

    /// The next side-channel line, within `wait`.
    pub async fn hear(&mut self, wait: Duration) -> Heard {
        loop {
            match timeout(wait, self.events.next_line()).await {
                Err(_) => return Heard::Silent,
                Ok(Ok(Some(line))) => match serde_json::from_str::<Event>(&line) {
                    Ok(e) => return Heard::Event(e),
                    // Not ours (the loop writes nothing else there): skip it.
                    Err(_) => {
                        tracing::warn!("{} server: {line:?} on the side channel", self.kind.arg())
                    }
                },
                Ok(_) => return Heard::Gone,
            }
        }
    }

    /// How it ended, waiting up to `limit` (an exit ends the wait at once).
    pub async fn wait_exit(&mut self, limit: Duration) -> Option<ExitInfo> {
        if self.exit.is_none() {
            if let Ok(Ok(status)) = timeout(limit, self.child.wait()).await {
                self.exit = Some(exit_info(status));
                self.group.mark_reaped();
            }
        }
        self.exit
    }

    /// Exited already? Never waits.
    pub fn exited(&mut self) -> Option<ExitInfo> {
        if self.exit.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                self.exit = Some(exit_info(status));
                self.group.mark_reaped();
            }
        }
        self.exit
    }

    pub fn stderr_tail(&self, max: usize) -> String {
        let k = self.stderr.lock().unwrap_or_else(|p| p.into_inner());
        let start = k.len().saturating_sub(max);
        String::from_utf8_lossy(&k[start..]).into_owned()
    }

    /// Warm fork: SIGKILL one of its forked children (checked to be one, so a reused pid is safe).
    pub fn kill_child(&self, pid: i32) -> bool {
        if !procs::live_child_of(pid, self.pid) {
            return false;
        }
        // SAFETY: kill only sends a signal, to a live child of our own server.
        unsafe { libc::kill(pid, libc::SIGKILL) == 0 }
    }

    /// SIGKILL the whole group at once (a hung persistent case).
    pub fn kill(&mut self) {
        self.group.signal(libc::SIGKILL);
    }

    pub fn pgid(&self) -> i32 {
        self.group.pgid()
    }

    /// Live processes of its group other than the server itself.
    pub fn others(&self) -> Vec<(i32, String)> {
        leftover_processes(&[self.pgid()])
            .into_iter()
            .filter(|(p, _)| *p != self.pid)
            .collect()
    }

    /// Close its stdin (the loop's shutdown signal), wait up to `grace` for it and its group to
    /// go, then SIGKILL what is left and reap. Returns what was still alive before the kill.
    pub async fn shutdown(mut self, grace: Duration) -> Vec<(i32, String)> {
        let until = Instant::now() + grace;
        drop(self.stdin.take());
        let _ = self.wait_exit(grace).await;
        let pgid = self.pgid();
        let mut left = leftover_processes(&[pgid]);
        while !left.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            left = leftover_processes(&[pgid]);
        }
        self.group.signal(libc::SIGKILL);
        let _ = self.wait_exit(Duration::from_secs(3)).await;
        left
    }
}
