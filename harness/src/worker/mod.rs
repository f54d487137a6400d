//! Launching and owning real pyspark workers, the way Spark's `PythonWorkerFactory` does.
//!
//! Two ways to get a worker, each over TCP or (pyspark 4.1+) a Unix domain socket:
//! - **daemon** (Spark's default on Linux): one `python -m pyspark.daemon pyspark.worker` announces
//!   where it listens on its stdout; each connection to it forks a worker.
//! - **direct** (`spark.python.use.daemon=false`): per connection we listen, spawn
//!   `python -m pyspark.worker` and wait for it to connect back.
//!
//! The byte-level exchanges are in [`handshake`]; process groups and their cleanup in [`groups`];
//! the environment policy and output draining in [`spawn`]. Every child leads its own process
//! group and every group is SIGKILLed when [`Workers`] is dropped (also while unwinding a panic).

mod groups;
mod handshake;
pub(crate) mod procs;
pub mod resources;
mod spawn;

pub use groups::{
    install_interrupt_handler, kill_all_registered, kill_marked, kill_marked_groups,
    leftover_processes, owner_token, registered_groups, spawn_in_group, Group, GroupCommand,
    OWNER_ENV, TEST_RUN_ENV,
};
pub use handshake::errno_label;
pub(crate) use handshake::ERRNOS;
pub use spawn::{ProcessTweaks, Wrapper, CAPTURE_LIMIT, PASS_THROUGH_ENV};

pub(crate) use handshake::Deadline;
pub(crate) use spawn::python_command;
use spawn::Capture;
use std::collections::BTreeMap;
use std::net::Ipv4Addr;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinHandle;
use tokio::time::{timeout, timeout_at, Instant};

/// How workers are started and reached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// `pyspark.daemon` on 127.0.0.1, secret auth per connection.
    Daemon,
    /// A direct `pyspark.worker` per connection, connecting back to 127.0.0.1 with the secret.
    Direct,
    /// `pyspark.daemon` on a Unix domain socket, no auth (pyspark >= 4.1; older daemons ignore the
    /// switch and print a TCP port, which `start` reports as such).
    Uds,
    /// A direct `pyspark.worker` connecting back over a Unix domain socket, no auth (pyspark >= 4.1).
    DirectUds,
}

impl Mode {
    pub fn uses_daemon(self) -> bool {
        matches!(self, Mode::Daemon | Mode::Uds)
    }

    pub fn is_unix_socket(self) -> bool {
        matches!(self, Mode::Uds | Mode::DirectUds)
    }
}

#[derive(Clone, Debug)]
pub struct LaunchOptions {
    pub mode: Mode,
    /// Sets SPARK_REUSE_WORKER=1. pyspark tests it for truthiness as a string, so ANY non-empty
    /// value (even "0") enables reuse; leaving it unset is the only way to disable it.
    pub reuse: bool,
    /// Added to every process we start (the daemon passes it on to its forks), after our own
    /// variables, so it can override them. E.g. PYSPARK_EXECUTOR_MEMORY_MB, LD_PRELOAD.
    pub extra_env: Vec<(String, String)>,
    /// Deadline for every connect + handshake (a worker's pid, a direct worker's connect-back).
    /// Spark waits 10 s for a direct worker to connect back.
    pub connect_timeout: Duration,
    /// Deadline for the daemon to announce its port or socket on stdout (default 60 s, as
    /// Spark 4.x waits for a daemon).
    pub start_timeout: Duration,
    /// RLIMIT_AS soft limit for every process we start (forked workers inherit the daemon's).
    pub rlimit_as: Option<u64>,
    /// The daemon's `-m` module (Spark's `spark.python.daemon.module`); None: `pyspark.daemon`.
    pub daemon_module: Option<String>,
    /// The module the daemon forks into (its argv[1], `spark.python.worker.module`) or a direct
    /// worker's `-m` module; None: `pyspark.worker`.
    pub worker_module: Option<String>,
    /// RLIMIT_NOFILE soft limit for every process we start (at most the hard limit; forked
    /// workers inherit the daemon's).
    pub rlimit_nofile: Option<u64>,
}

impl Default for LaunchOptions {
    fn default() -> Self {
        LaunchOptions {
            mode: Mode::Daemon,
            reuse: false,
            extra_env: vec![],
            connect_timeout: Duration::from_secs(10),
            start_timeout: Duration::from_secs(60),
            rlimit_as: None,
            daemon_module: None,
            worker_module: None,
            rlimit_nofile: None,
        }
    }
}

/// The daemon, as `Workers::daemon_state` sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DaemonState {
    /// Direct modes.
    NoDaemon,
    Running,
    Exited(ExitInfo),
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum ExitInfo {
    Code(i32),
    Signal(i32),
}

impl ExitInfo {
    fn from_status(status: std::process::ExitStatus) -> ExitInfo {
        match (status.code(), status.signal()) {
            (Some(code), _) => ExitInfo::Code(code),
            (None, Some(sig)) => ExitInfo::Signal(sig),
            // Neither: only possible for stopped/continued statuses, which wait() never returns.
            (None, None) => ExitInfo::Code(-1),
        }
    }
}

impl std::fmt::Display for ExitInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ExitInfo::Code(c) => write!(f, "exit status {c}"),
            ExitInfo::Signal(s) => write!(f, "killed by signal {s}"),
        }
    }
}

fn errno_of(value: &i32) -> String {
    errno_label(*value)
}

fn show_exit(exit: &Option<ExitInfo>) -> String {
    exit.map(|e| e.to_string())
        .unwrap_or_else(|| "still running".into())
}

#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    #[error("could not start `{} {args}`: {source}; check that the interpreter path exists and is executable", .python.display())]
    Spawn {
        python: PathBuf,
        args: String,
        source: std::io::Error,
    },

    #[error("I/O error while {during}: {source}")]
    Io {
        during: &'static str,
        source: std::io::Error,
    },

    #[error("timed out after {after:?} while {what}; the Python side is alive but silent (raise LaunchOptions::connect_timeout if the machine is just slow)")]
    Timeout { what: &'static str, after: Duration },

    #[error("the other side closed the connection while {during}, after {} byte(s) {got:02x?}", .got.len())]
    Closed { during: &'static str, got: Vec<u8> },

    #[error("the daemon died ({}); its stderr ends with:\n{stderr_tail}", show_exit(.exit))]
    DaemonDied {
        exit: Option<ExitInfo>,
        stderr_tail: String,
    },

    #[error("direct worker {pid} ended ({}) before it connected back; stderr ends with:\n{stderr_tail}", show_exit(.exit))]
    WorkerExited {
        pid: i32,
        exit: Option<ExitInfo>,
        stderr_tail: String,
    },

    #[error("the daemon wrote errno {value} ({}) where a pid belongs: its fork() failed and it closed the socket. \
             Spark's JVM check `pid < 0` would accept it as a pid; no live child of the daemon has pid {value}", errno_of(.value))]
    ErrnoAsPid { value: i32 },

    #[error("the worker's pid was {value}; Spark's JVM rejects pid < 0 (\"failed to launch worker with code {value}\")")]
    NegativePid { value: i32 },

    #[error("the daemon's stdout began with {value} (0x{value:08x}), not a TCP port in 1..=65535; something printed to \
             stdout before the daemon (a sitecustomize.py, a .pth file, PYTHONSTARTUP?)")]
    BadPort { value: i32 },

    #[error("the daemon did not announce a usable Unix socket path: {why} (raw bytes {raw:02x?})")]
    BadSocketPath { why: String, raw: Vec<u8> },

    #[error("while {during}: length {value} is outside 0..={max}")]
    BadLength {
        during: &'static str,
        value: i32,
        max: i32,
    },

    #[error("the worker answered the secret with \"err\": it was rejected (is PYTHON_WORKER_FACTORY_SECRET overridden in extra_env?)")]
    AuthRejected,

    #[error("the worker answered the secret with {:?}, neither \"ok\" nor \"err\"", String::from_utf8_lossy(.reply))]
    BadAuthReply { reply: Vec<u8> },

    #[error("the direct worker sent the secret {got:?}, which is not the one we gave it")]
    WrongSecretFromWorker { got: String },

    #[error("{what} does not apply in {mode:?} mode")]
    WrongMode { what: &'static str, mode: Mode },

    #[error("pid {pid} is not a worker of ours (not a live child of the daemon, nor a direct worker we started)")]
    UnknownWorker { pid: i32 },
}

/// One connected worker, ready for the task request. The socket has TCP_NODELAY on: with Nagle a
/// small trailer write after the data costs about 40 ms per task.
pub struct Connection {
    /// The pid the worker reported (for kill_worker and for checking the process).
    pub pid: i32,
    pub reader: Box<dyn tokio::io::AsyncRead + Send + Unpin>,
    pub writer: Box<dyn tokio::io::AsyncWrite + Send + Unpin>,
    /// Raw handshake bytes from the worker (pid, auth reply / secret), for transcripts.
    pub handshake_in: Vec<u8>,
    /// Raw handshake bytes we sent (secret / auth reply).
    pub handshake_out: Vec<u8>,
}

impl std::fmt::Debug for Connection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connection")
            .field("pid", &self.pid)
            .field("handshake_in", &self.handshake_in)
            .field("handshake_out", &self.handshake_out)
            .finish_non_exhaustive()
    }
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct DirectExit {
    pub pid: i32,
    pub exit: Option<ExitInfo>,
    /// True if it was still running at the end of the grace period and got SIGKILL.
    pub killed: bool,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct ShutdownReport {
    pub daemon_pid: Option<i32>,
    /// Normally Code(1): daemon.py exits with 1 even after a clean stdin-close shutdown
    /// (`shutdown(0)` runs inside `finally: shutdown(1)`; seen in 4.0 to 4.3).
    pub daemon_exit: Option<ExitInfo>,
    /// True if the daemon was still running at the end of the grace period and got SIGKILL.
    pub daemon_killed: bool,
    pub direct: Vec<DirectExit>,
    /// Processes still alive in our groups at the end of the grace period, before the final SIGKILL.
    pub leftovers: Vec<(i32, String)>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    /// Output past CAPTURE_LIMIT that was drained but not kept.
    pub dropped_output_bytes: u64,
    pub took_ms: u64,
}

/// Where a daemon listens, as it announced it on stdout (or fakejvm's own loop, as it said in
/// its ready line, a port or a path: see fuzz::server).
#[derive(Clone, Debug, PartialEq, Eq, serde::Deserialize)]
#[serde(untagged)]
pub enum DaemonAddr {
    Tcp(u16),
    Unix(PathBuf),
}

struct Daemon {
    child: Child,
    pid: i32,
    group: Group,
    /// Closing it is the daemon's shutdown signal; pids written to it get SIGKILLed.
    stdin: Option<ChildStdin>,
    addr: Option<DaemonAddr>,
    exit: Option<ExitInfo>,
}

struct DirectChild {
    child: Child,
    group: Group,
    /// The pid the worker reported after the handshake (normally the same as ours).
    reported_pid: Option<i32>,
    /// Kept open like Spark's ProcessBuilder pipe: nothing is written, nothing is closed early.
    _stdin: Option<ChildStdin>,
    drains: Vec<JoinHandle<()>>,
    exit: Option<ExitInfo>,
}

/// Owns the daemon (daemon modes) or the direct workers (direct modes), and their process groups.
pub struct Workers {
    python: PathBuf,
    opts: LaunchOptions,
    /// 32 random bytes as hex, like Spark's SocketAuthHelper secret. Unused on Unix sockets.
    secret: String,
    /// Unix-socket modes: the daemon's PYTHON_WORKER_FACTORY_SOCK_DIR, or where we listen for
    /// direct workers. Removed (with any socket left in it) on drop.
    sock_dir: Option<tempfile::TempDir>,
    daemon: Option<Daemon>,
    /// Keyed by the OS pid of the child we spawned.
    direct: BTreeMap<i32, DirectChild>,
    daemon_announce: Vec<u8>,
    stdout: Capture,
    stderr: Capture,
    drains: Vec<JoinHandle<()>>,
}

/// How long a failed connect waits for the daemon's fate before blaming the worker.
const DAEMON_FATE_WAIT: Duration = Duration::from_secs(3);

const DAEMON_MODULE: &str = "pyspark.daemon";
const WORKER_MODULE: &str = "pyspark.worker";

impl Workers {
    /// Daemon modes: spawn the daemon and read where it listens (port or socket path) from its
    /// stdout, within `connect_timeout`. Direct modes: nothing is started until `connect`.
    pub async fn start(python: &Path, opts: LaunchOptions) -> Result<Workers, WorkerError> {
        let sock_dir = if opts.mode.is_unix_socket() {
            let dir = tempfile::Builder::new()
                .prefix("fakejvm-uds-")
                .tempdir()
                .map_err(|source| WorkerError::Io {
                    during: "creating a directory for Unix sockets",
                    source,
                })?;
            Some(dir)
        } else {
            None
        };
        let mut workers = Workers {
            python: python.to_path_buf(),
            secret: hex::encode(rand::random::<[u8; 32]>()),
            opts,
            sock_dir,
            daemon: None,
            direct: BTreeMap::new(),
            daemon_announce: vec![],
            stdout: Capture::default(),
            stderr: Capture::default(),
            drains: vec![],
        };
        if workers.opts.mode.uses_daemon() {
            // `workers` owns the child from here on, so an error below still kills it on drop.
            workers.start_daemon().await?;
        }
        Ok(workers)
    }

    fn launch_tweaks(&self) -> ProcessTweaks {
        ProcessTweaks {
            extra_env: self.opts.extra_env.clone(),
            rlimit_as: self.opts.rlimit_as,
            rlimit_nofile: self.opts.rlimit_nofile,
            wrapper: None,
        }
    }

    fn reuse_env(&self) -> Option<(&'static str, String)> {
        self.opts
            .reuse
            .then(|| ("SPARK_REUSE_WORKER", "1".to_string()))
    }

    /// Every child of ours starts here: its own process group, registered for Ctrl-C.
    /// `-m pyspark.daemon pyspark.worker`, as PythonWorkerFactory starts the daemon.
    fn daemon_args(&self) -> Vec<&str> {
        vec![
            "-m",
            self.opts.daemon_module.as_deref().unwrap_or(DAEMON_MODULE),
            self.opts.worker_module.as_deref().unwrap_or(WORKER_MODULE),
        ]
    }

    fn worker_args(&self) -> Vec<&str> {
        vec![
            "-m",
            self.opts.worker_module.as_deref().unwrap_or(WORKER_MODULE),
        ]
    }

    fn spawn(
        &self,
        cmd: &mut tokio::process::Command,
        args: &[&str],
    ) -> Result<(Child, Group), WorkerError> {
        spawn_in_group(cmd).map_err(|source| WorkerError::Spawn {
            python: self.python.clone(),
            args: args.join(" "),
            source,
        })
    }

    fn deadline(&self) -> Deadline {
        Deadline {
            at: Instant::now() + self.opts.connect_timeout,
            budget: self.opts.connect_timeout,
        }
    }

    async fn start_daemon(&mut self) -> Result<(), WorkerError> {
        // As Spark 4.1+ does: the secret only on TCP; on a Unix socket the switch and the directory.
        let mut env: Vec<(&str, String)> = match (self.opts.mode, &self.sock_dir) {
            (Mode::Uds, Some(dir)) => vec![
                ("PYTHON_UNIX_DOMAIN_ENABLED", "True".into()),
                (
                    "PYTHON_WORKER_FACTORY_SOCK_DIR",
                    dir.path().display().to_string(),
                ),
            ],
            _ => vec![("PYTHON_WORKER_FACTORY_SECRET", self.secret.clone())],
        };
        env.extend(self.reuse_env());
        let args = self.daemon_args();
        let mut cmd = spawn::python_command(&self.python, &args, &env, &self.launch_tweaks());
        let (mut child, group) = self.spawn(&mut cmd, &args)?;
        let pid = group.pgid;
        let stdin = child.stdin.take();
        let mut stdout = child.stdout.take().expect("stdout is piped");
        if let Some(err) = child.stderr.take() {
            self.drains.push(spawn::drain(err, self.stderr.clone()));
        }
        self.daemon = Some(Daemon {
            child,
            pid,
            group,
            stdin,
            addr: None,
            exit: None,
        });

        // The daemon's start (interpreter, imports) is not what `connect_timeout` bounds: a
        // scenario's short connect timeout is for a worker's pid or connect-back, and a busy
        // machine can take seconds to import pyspark.
        let budget = self.opts.start_timeout;
        let deadline = Deadline {
            at: Instant::now() + budget,
            budget,
        };
        let mut raw = vec![];
        let announced = read_announce(&mut stdout, self.opts.mode, &deadline, &mut raw).await;
        self.daemon_announce = raw;
        // Forked workers inherit this pipe: someone must keep reading it or their prints block.
        self.drains.push(spawn::drain(stdout, self.stdout.clone()));
        match announced {
            Ok(addr) => {
                self.daemon.as_mut().expect("set above").addr = Some(addr);
                Ok(())
            }
            Err(e @ (WorkerError::Closed { .. } | WorkerError::Io { .. })) => {
                Err(self.blame_daemon(e).await)
            }
            Err(e) => Err(e),
        }
    }

    /// If the daemon has died (or dies within a moment), that is the real story behind `err`.
    /// The wait is a limit, not a sleep: on a busy machine a daemon whose second fork just failed
    /// can take well over half a second to be reapable.
    async fn blame_daemon(&mut self, err: WorkerError) -> WorkerError {
        match self.wait_daemon_exit(DAEMON_FATE_WAIT).await {
            DaemonState::Exited(exit) => {
                // Let the stderr drain catch the traceback written just before the exit: its pipe
                // closes with the daemon unless a forked worker still holds it.
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until && !self.drains.iter().all(|d| d.is_finished()) {
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                WorkerError::DaemonDied {
                    exit: Some(exit),
                    stderr_tail: self.stderr.tail(4000),
                }
            }
            _ => err,
        }
    }

    /// Daemon modes: connect, read the forked worker's pid, check it is really a child of the
    /// daemon (see `ErrnoAsPid`), then authenticate on TCP. Direct modes: listen, spawn
    /// `pyspark.worker`, accept its connection, check its secret, read its pid.
    pub async fn connect(&mut self) -> Result<Connection, WorkerError> {
        self.connect_with(&ProcessTweaks::default()).await
    }

    /// `connect` with per-process environment and limits for the one direct worker started for
    /// this connection. Daemon modes fork every worker from the daemon, so only empty tweaks apply.
    pub async fn connect_with(
        &mut self,
        tweaks: &ProcessTweaks,
    ) -> Result<Connection, WorkerError> {
        if self.opts.mode.uses_daemon() {
            if !tweaks.extra_env.is_empty()
                || tweaks.rlimit_as.is_some()
                || tweaks.rlimit_nofile.is_some()
                || tweaks.wrapper.is_some()
            {
                return Err(WorkerError::WrongMode {
                    what: "per-connection env, rlimit or wrapper (forked workers inherit the daemon's; set them in LaunchOptions)",
                    mode: self.opts.mode,
                });
            }
            let r = self.connect_daemon().await;
            match r {
                Err(e @ (WorkerError::Closed { .. } | WorkerError::Io { .. })) => {
                    Err(self.blame_daemon(e).await)
                }
                other => other,
            }
        } else {
            self.connect_direct(tweaks).await
        }
    }

    async fn connect_daemon(&mut self) -> Result<Connection, WorkerError> {
        let deadline = self.deadline();
        let d = self
            .daemon
            .as_ref()
            .expect("daemon modes start the daemon in start()");
        let daemon_pid = d.pid;
        let addr = d
            .addr
            .as_ref()
            .expect("start() fails unless the daemon announced an address");
        // pyspark 4.1+'s Unix-socket daemon reads no secret (it is started without one).
        let secret = match addr {
            DaemonAddr::Tcp(_) => Some(self.secret.as_str()),
            DaemonAddr::Unix(_) => None,
        };
        dial_daemon(addr, secret, daemon_pid, &deadline).await
    }

    async fn connect_direct(&mut self, tweaks: &ProcessTweaks) -> Result<Connection, WorkerError> {
        let deadline = self.deadline();
        let mut env: Vec<(&str, String)> = vec![];
        let listener = match &self.sock_dir {
            None => {
                let l = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
                    .await
                    .map_err(|source| WorkerError::Io {
                        during: "listening on 127.0.0.1 for a direct worker",
                        source,
                    })?;
                let port = l
                    .local_addr()
                    .map_err(|source| WorkerError::Io {
                        during: "reading our listening port",
                        source,
                    })?
                    .port();
                env.push(("PYTHON_WORKER_FACTORY_PORT", port.to_string()));
                env.push(("PYTHON_WORKER_FACTORY_SECRET", self.secret.clone()));
                Listener::Tcp(l)
            }
            Some(dir) => {
                // pyspark 4.1+ takes the Unix-socket branch only when the SECRET is unset.
                let path = dir
                    .path()
                    .join(format!(".{}.sock", hex::encode(rand::random::<[u8; 8]>())));
                let l = UnixListener::bind(&path).map_err(|source| WorkerError::Io {
                    during: "listening on a Unix socket for a direct worker",
                    source,
                })?;
                env.push((
                    "PYTHON_WORKER_FACTORY_SOCK_PATH",
                    path.display().to_string(),
                ));
                env.push(("PYTHON_UNIX_DOMAIN_ENABLED", "True".into()));
                Listener::Unix(l, path)
            }
        };
        env.extend(self.reuse_env());
        let mut all = self.launch_tweaks();
        all.extra_env.extend(tweaks.extra_env.iter().cloned());
        all.rlimit_as = tweaks.rlimit_as.or(all.rlimit_as);
        all.rlimit_nofile = tweaks.rlimit_nofile.or(all.rlimit_nofile);
        all.wrapper = tweaks.wrapper.clone();

        let args = self.worker_args();
        let mut cmd = spawn::python_command(&self.python, &args, &env, &all);
        let (mut child, group) = self.spawn(&mut cmd, &args)?;
        let pid = group.pgid;
        let mut drains = vec![];
        if let Some(out) = child.stdout.take() {
            drains.push(spawn::drain(out, self.stdout.clone()));
        }
        if let Some(err) = child.stderr.take() {
            drains.push(spawn::drain(err, self.stderr.clone()));
        }
        let _stdin = child.stdin.take();
        self.direct.insert(
            pid,
            DirectChild {
                child,
                group,
                reported_pid: None,
                _stdin,
                drains,
                exit: None,
            },
        );

        let result = self.accept_direct(pid, listener, &deadline).await;
        match result {
            Ok(conn) => {
                self.direct
                    .get_mut(&pid)
                    .expect("inserted above")
                    .reported_pid = Some(conn.pid);
                Ok(conn)
            }
            Err(e) => {
                // A worker that failed its handshake is of no use; don't leave it waiting.
                if let Some(c) = self.direct.get(&pid) {
                    c.group.signal(libc::SIGKILL);
                }
                Err(e)
            }
        }
    }

    async fn accept_direct(
        &mut self,
        pid: i32,
        listener: Listener,
        deadline: &Deadline,
    ) -> Result<Connection, WorkerError> {
        let during = "waiting for the direct worker to connect back";
        let secret = self.secret.clone();
        let stderr = self.stderr.clone();
        let c = self
            .direct
            .get_mut(&pid)
            .expect("inserted by connect_direct");
        // Watch the child too: a worker that dies at import should fail fast, not after the timeout.
        let accepted = tokio::select! {
            r = listener.accept() => r.map_err(|source| WorkerError::Io { during, source })?,
            status = c.child.wait() => {
                let exit = status.ok().map(ExitInfo::from_status);
                c.exit = exit;
                c.group.leader_reaped = exit.is_some();
                // Its pipes close with it; give the drains a moment to take the last words.
                for d in c.drains.iter_mut() {
                    let _ = timeout(Duration::from_millis(500), d).await;
                }
                // A JoinHandle awaited to completion must not be polled again (shutdown drains
                // the rest): it panics.
                c.drains.retain(|d| !d.is_finished());
                return Err(WorkerError::WorkerExited { pid, exit, stderr_tail: stderr.tail(4000) });
            }
            _ = tokio::time::sleep_until(deadline.at) => {
                return Err(WorkerError::Timeout { what: during, after: deadline.budget });
            }
        };
        match accepted {
            Accepted::Tcp(mut s) => {
                s.set_nodelay(true).map_err(|source| WorkerError::Io {
                    during: "setting TCP_NODELAY",
                    source,
                })?;
                let hs = handshake::with_direct_worker(&mut s, Some(&secret), deadline).await?;
                Ok(tcp_connection(s, hs))
            }
            Accepted::Unix(mut s) => {
                let hs = handshake::with_direct_worker(&mut s, None, deadline).await?;
                Ok(unix_connection(s, hs))
            }
        }
    }

    /// Daemon modes: write the pid on the daemon's stdin (Spark's stopWorker); the daemon SIGKILLs
    /// it. Refused unless the pid is a live child of the daemon, since the daemon would kill any
    /// pid it is given. Direct modes: SIGKILL the worker's process group.
    pub async fn kill_worker(&mut self, pid: i32) -> Result<(), WorkerError> {
        if self.opts.mode.uses_daemon() {
            let daemon_pid = self.daemon_pid().expect("daemon modes have a daemon");
            match procs::stat(pid) {
                Some(s) if s.ppid == daemon_pid && !s.is_dead() => {}
                _ => return Err(WorkerError::UnknownWorker { pid }),
            }
            self.write_daemon_stdin(&pid.to_be_bytes()).await
        } else {
            let c = self
                .direct
                .iter()
                .find(|(os_pid, c)| **os_pid == pid || c.reported_pid == Some(pid))
                .map(|(_, c)| c)
                .ok_or(WorkerError::UnknownWorker { pid })?;
            c.group.signal(libc::SIGKILL);
            Ok(())
        }
    }

    /// Raw bytes to the daemon's stdin, for fault plans (each i32 there is a pid to SIGKILL; a
    /// partial int waits for the rest). `kill_worker` is the checked way.
    pub(crate) async fn write_daemon_stdin(&mut self, bytes: &[u8]) -> Result<(), WorkerError> {
        let deadline = self.deadline();
        let mode = self.opts.mode;
        let d = self.daemon.as_mut().ok_or(WorkerError::WrongMode {
            what: "writing to the daemon's stdin",
            mode,
        })?;
        let during = "writing to the daemon's stdin";
        let Some(stdin) = d.stdin.as_mut() else {
            return Err(WorkerError::Closed {
                during,
                got: vec![],
            });
        };
        let r = match timeout_at(deadline.at, async {
            stdin.write_all(bytes).await?;
            stdin.flush().await
        })
        .await
        {
            Err(_) => Err(WorkerError::Timeout {
                what: during,
                after: deadline.budget,
            }),
            Ok(r) => r.map_err(|source| WorkerError::Io { during, source }),
        };
        match r {
            Err(e @ WorkerError::Io { .. }) => Err(self.blame_daemon(e).await),
            other => other,
        }
    }

    /// Closes the daemon's stdin: its shutdown signal (it SIGHUPs its group and exits, with
    /// status 1). A process fault in its own right; `shutdown` does it too.
    pub fn close_daemon_stdin(&mut self) {
        if let Some(d) = self.daemon.as_mut() {
            d.stdin = None;
        }
    }

    pub fn daemon_pid(&self) -> Option<i32> {
        self.daemon.as_ref().map(|d| d.pid)
    }

    /// What the daemon printed on stdout before anything else: the port or the socket path, raw.
    pub fn daemon_announce(&self) -> &[u8] {
        &self.daemon_announce
    }

    /// The secret given to the daemon or to direct workers on TCP. Unix-socket modes do not pass
    /// it on (as Spark 4.1+ does not): there the socket file's permissions are the only guard.
    pub fn secret(&self) -> &str {
        &self.secret
    }

    pub fn mode(&self) -> Mode {
        self.opts.mode
    }

    /// Whether there is a daemon and whether it still runs. Direct modes have none: a failure
    /// there is never the daemon's.
    pub fn daemon_state(&mut self) -> DaemonState {
        let Some(d) = self.daemon.as_mut() else {
            return DaemonState::NoDaemon;
        };
        if d.exit.is_none() {
            if let Ok(Some(status)) = d.child.try_wait() {
                d.exit = Some(ExitInfo::from_status(status));
                d.group.leader_reaped = true;
            }
        }
        match d.exit {
            Some(exit) => DaemonState::Exited(exit),
            None => DaemonState::Running,
        }
    }

    /// `daemon_state`, but a running daemon is given up to `limit` to exit: one whose forks just
    /// failed or that was just killed is not reapable at once (seen under load with the
    /// fork-twice fault). Ends as soon as the daemon exits.
    pub async fn wait_daemon_exit(&mut self, limit: Duration) -> DaemonState {
        let state = self.daemon_state();
        if state != DaemonState::Running || limit.is_zero() {
            return state;
        }
        let d = self.daemon.as_mut().expect("a running daemon");
        if let Ok(Ok(status)) = timeout(limit, d.child.wait()).await {
            d.exit = Some(ExitInfo::from_status(status));
            d.group.leader_reaped = true;
            // Let the stderr drain catch the traceback written just before the exit.
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.daemon_state()
    }

    pub fn daemon_exit(&mut self) -> Option<ExitInfo> {
        match self.daemon_state() {
            DaemonState::Exited(exit) => Some(exit),
            _ => None,
        }
    }

    /// Everything drained so far from the daemon's stdout (after its announce) and from every
    /// direct worker's stdout, in arrival order. Forked workers write here too.
    pub fn stdout(&self) -> Vec<u8> {
        self.stdout.snapshot()
    }

    pub fn stderr(&self) -> Vec<u8> {
        self.stderr.snapshot()
    }

    /// Direct modes: wait up to `timeout` for a worker we started to exit, and say how.
    /// `pid` may be our child's pid or the pid the worker reported.
    pub async fn wait_direct_worker(&mut self, pid: i32, limit: Duration) -> Option<ExitInfo> {
        let c = self
            .direct
            .iter_mut()
            .find(|(os_pid, c)| **os_pid == pid || c.reported_pid == Some(pid))?
            .1;
        if c.exit.is_none() {
            if let Ok(Ok(status)) = timeout(limit, c.child.wait()).await {
                c.exit = Some(ExitInfo::from_status(status));
                c.group.leader_reaped = true;
            }
        }
        c.exit
    }

    /// The OS pid of the worker that reported `pid`: in daemon modes the pid itself (the
    /// daemon's child sends its own), in direct modes the process fakejvm started.
    pub fn worker_os_pid(&self, pid: i32) -> i32 {
        self.direct
            .iter()
            .find(|(os_pid, c)| **os_pid == pid || c.reported_pid == Some(pid))
            .map_or(pid, |(os_pid, _)| *os_pid)
    }

    /// The process groups we own now: the daemon's, and one per direct worker.
    pub fn process_groups(&self) -> Vec<i32> {
        self.daemon
            .iter()
            .map(|d| d.group.pgid)
            .chain(self.direct.values().map(|c| c.group.pgid))
            .collect()
    }

    /// Ends everything, politely first: closes the daemon's stdin (its shutdown signal) and sends
    /// SIGTERM to direct workers (what Spark's `destroy()` does), waits up to `grace` for them and
    /// for every process in our groups to go, records what is still alive, then SIGKILLs the groups
    /// and reaps. Never waits much longer than `grace` plus a few seconds for the kill to land.
    pub async fn shutdown(mut self, grace: Duration) -> ShutdownReport {
        let started = Instant::now();
        let until = started + grace;
        let pgids = self.process_groups();
        self.close_daemon_stdin();
        for c in self.direct.values() {
            if c.exit.is_none() {
                c.group.signal(libc::SIGTERM);
            }
        }

        if let Some(d) = self.daemon.as_mut() {
            if d.exit.is_none() {
                if let Ok(Ok(status)) = timeout_at(until, d.child.wait()).await {
                    d.exit = Some(ExitInfo::from_status(status));
                    d.group.leader_reaped = true;
                }
            }
        }
        for c in self.direct.values_mut() {
            if c.exit.is_none() {
                if let Ok(Ok(status)) = timeout_at(until, c.child.wait()).await {
                    c.exit = Some(ExitInfo::from_status(status));
                    c.group.leader_reaped = true;
                }
            }
        }
        // Forked workers get SIGHUP from the exiting daemon; let them finish dying.
        let mut leftovers = leftover_processes(&pgids);
        while !leftovers.is_empty() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
            leftovers = leftover_processes(&pgids);
        }

        let daemon_killed = self.daemon.as_ref().is_some_and(|d| d.exit.is_none());
        let killed_direct: Vec<i32> = self
            .direct
            .iter()
            .filter(|(_, c)| c.exit.is_none())
            .map(|(p, _)| *p)
            .collect();
        self.kill_and_reap().await;

        // The pipes reach EOF once every process holding them is gone.
        let mut drains: Vec<JoinHandle<()>> = std::mem::take(&mut self.drains);
        for c in self.direct.values_mut() {
            drains.append(&mut c.drains);
        }
        for mut d in drains {
            if timeout(Duration::from_secs(1), &mut d).await.is_err() {
                d.abort();
            }
        }

        let report = ShutdownReport {
            daemon_pid: self.daemon_pid(),
            daemon_exit: self.daemon.as_ref().and_then(|d| d.exit),
            daemon_killed,
            direct: self
                .direct
                .iter()
                .map(|(pid, c)| DirectExit {
                    pid: *pid,
                    exit: c.exit,
                    killed: killed_direct.contains(pid),
                })
                .collect(),
            leftovers,
            stdout: self.stdout.snapshot(),
            stderr: self.stderr.snapshot(),
            dropped_output_bytes: self.stdout.dropped() + self.stderr.dropped(),
            took_ms: started.elapsed().as_millis() as u64,
        };
        // Everything is reaped; dropping the groups unregisters them.
        self.daemon = None;
        self.direct.clear();
        report
    }

    async fn kill_and_reap(&mut self) {
        let reap_by = Instant::now() + Duration::from_secs(3);
        let children = self
            .daemon
            .iter_mut()
            .map(|d| (&mut d.child, &mut d.group, &mut d.exit))
            .chain(
                self.direct
                    .values_mut()
                    .map(|c| (&mut c.child, &mut c.group, &mut c.exit)),
            );
        for (child, group, exit) in children {
            group.signal(libc::SIGKILL);
            if exit.is_none() {
                if let Ok(Ok(status)) = timeout_at(reap_by, child.wait()).await {
                    *exit = Some(ExitInfo::from_status(status));
                    group.leader_reaped = true;
                }
            }
        }
    }
}

impl Drop for Workers {
    /// SIGKILL every group we own, reap the children (briefly; forked workers are reaped by init),
    /// forget the groups. Runs on panics too; cannot await, so it polls.
    fn drop(&mut self) {
        let until = std::time::Instant::now() + Duration::from_secs(1);
        let children = self
            .daemon
            .iter_mut()
            .map(|d| (&mut d.child, &mut d.group))
            .chain(
                self.direct
                    .values_mut()
                    .map(|c| (&mut c.child, &mut c.group)),
            );
        for (child, group) in children {
            group.signal(libc::SIGKILL);
            while std::time::Instant::now() < until {
                match child.try_wait() {
                    Ok(None) => std::thread::sleep(Duration::from_millis(5)),
                    Ok(Some(_)) => {
                        group.mark_reaped();
                        break;
                    }
                    Err(_) => break,
                }
            }
        }
        // Each Group forgets itself (and kills what is left, if still ours) as the fields drop.
        for d in self
            .drains
            .iter()
            .chain(self.direct.values().flat_map(|c| c.drains.iter()))
        {
            d.abort();
        }
    }
}

enum Listener {
    Tcp(TcpListener),
    /// The path is removed when the listener goes: Spark deletes it after one accept.
    Unix(UnixListener, PathBuf),
}

enum Accepted {
    Tcp(TcpStream),
    Unix(UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<Accepted> {
        match self {
            Listener::Tcp(l) => Ok(Accepted::Tcp(l.accept().await?.0)),
            Listener::Unix(l, _) => Ok(Accepted::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Listener::Unix(_, path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

/// `read_announce` within `limit`, for the recording tap (which reads the real daemon's stdout
/// as the JVM would); returns the raw bytes read too.
pub(crate) async fn read_daemon_announce<R: tokio::io::AsyncRead + Unpin>(
    stdout: &mut R,
    unix_socket: bool,
    limit: Duration,
) -> (Result<DaemonAddr, WorkerError>, Vec<u8>) {
    let deadline = Deadline {
        at: Instant::now() + limit,
        budget: limit,
    };
    let mut raw = vec![];
    let mode = if unix_socket { Mode::Uds } else { Mode::Daemon };
    let r = read_announce(stdout, mode, &deadline, &mut raw).await;
    (r, raw)
}

/// Reads where the daemon listens. TCP: one i32 port. Unix socket: an i32 length and a UTF-8 path.
async fn read_announce<R: tokio::io::AsyncRead + Unpin>(
    stdout: &mut R,
    mode: Mode,
    deadline: &Deadline,
    raw: &mut Vec<u8>,
) -> Result<DaemonAddr, WorkerError> {
    let during = "reading where the daemon listens from its stdout";
    let first = handshake::read_i32(stdout, deadline, during, raw).await?;
    if mode != Mode::Uds {
        return match u16::try_from(first) {
            Ok(port) if port >= 1 => Ok(DaemonAddr::Tcp(port)),
            _ => Err(WorkerError::BadPort { value: first }),
        };
    }
    if !(1..=handshake::MAX_SOCKET_PATH).contains(&first) {
        let why = if (1..=65535).contains(&first) {
            format!(
                "a path length of {first} is implausible; it looks like a TCP port: pyspark before 4.1 ignores \
                 PYTHON_UNIX_DOMAIN_ENABLED and listens on TCP (use Mode::Daemon for it)"
            )
        } else {
            format!(
                "a path length of {first} is outside 1..={}",
                handshake::MAX_SOCKET_PATH
            )
        };
        return Err(WorkerError::BadSocketPath {
            why,
            raw: raw.clone(),
        });
    }
    let mut body = vec![0u8; first as usize];
    handshake::read_exact_by(stdout, &mut body, deadline, during, raw).await?;
    let path = String::from_utf8(body).map_err(|_| WorkerError::BadSocketPath {
        why: "the path is not UTF-8".into(),
        raw: raw.clone(),
    })?;
    let path = PathBuf::from(path);
    // Spark checks the same: a path that does not exist is bad data on stdout.
    if !path.exists() {
        return Err(WorkerError::BadSocketPath {
            why: format!("{} does not exist", path.display()),
            raw: raw.clone(),
        });
    }
    Ok(DaemonAddr::Unix(path))
}

/// A connection to a daemon, without holding its `Workers` (the fuzzer's lanes dial
/// concurrently): connect, read the forked worker's pid, check it, authenticate with `secret`
/// (None: pyspark's Unix-socket daemon, which expects none).
pub(crate) async fn dial_daemon(
    addr: &DaemonAddr,
    secret: Option<&str>,
    daemon_pid: i32,
    deadline: &Deadline,
) -> Result<Connection, WorkerError> {
    fn bounded<T>(
        r: Result<std::io::Result<T>, tokio::time::error::Elapsed>,
        during: &'static str,
        deadline: &Deadline,
    ) -> Result<T, WorkerError> {
        match r {
            Err(_) => Err(WorkerError::Timeout {
                what: during,
                after: deadline.budget,
            }),
            Ok(r) => r.map_err(|source| WorkerError::Io { during, source }),
        }
    }
    match addr {
        DaemonAddr::Tcp(port) => {
            let during = "connecting to the daemon's TCP port";
            let connect = TcpStream::connect((Ipv4Addr::LOCALHOST, *port));
            let mut s = bounded(timeout_at(deadline.at, connect).await, during, deadline)?;
            s.set_nodelay(true).map_err(|source| WorkerError::Io {
                during: "setting TCP_NODELAY",
                source,
            })?;
            let hs = handshake::with_daemon(&mut s, secret, daemon_pid, deadline).await?;
            Ok(tcp_connection(s, hs))
        }
        DaemonAddr::Unix(path) => {
            let during = "connecting to the daemon's Unix socket";
            let connect = UnixStream::connect(path);
            let mut s = bounded(timeout_at(deadline.at, connect).await, during, deadline)?;
            let hs = handshake::with_daemon(&mut s, secret, daemon_pid, deadline).await?;
            Ok(unix_connection(s, hs))
        }
    }
}

fn tcp_connection(s: TcpStream, hs: handshake::Handshake) -> Connection {
    let (r, w) = s.into_split();
    Connection {
        pid: hs.pid,
        reader: Box::new(QuickAck(r)),
        writer: Box::new(w),
        handshake_in: hs.inbound,
        handshake_out: hs.outbound,
    }
}

/// The read half of a TCP connection that ACKs what it reads at once (TCP_QUICKACK, re-armed
/// before every read: Linux drops out of quick-ACK mode on its own). A worker's socket has Nagle
/// on, so after a large reply its small trailer (-3, the timing longs, -4) waits for the ACK of
/// the data before it; a delayed ACK holds it about 40 ms. A JVM meets the same wait; fakejvm
/// need not, and every task of a large reply ends that much sooner. Bytes are unchanged.
struct QuickAck(tokio::net::tcp::OwnedReadHalf);

impl tokio::io::AsyncRead for QuickAck {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd owned by the stream, and a c_int option value of the
        // advertised size. A failure only loses the speed-up, so its result is ignored.
        unsafe {
            libc::setsockopt(
                self.0.as_ref().as_raw_fd(),
                libc::IPPROTO_TCP,
                libc::TCP_QUICKACK,
                &one as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
        std::pin::Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

fn unix_connection(s: UnixStream, hs: handshake::Handshake) -> Connection {
    let (r, w) = s.into_split();
    Connection {
        pid: hs.pid,
        reader: Box::new(r),
        writer: Box::new(w),
        handshake_in: hs.inbound,
        handshake_out: hs.outbound,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_missing_interpreter_is_a_spawn_error_that_names_it() {
        let err = match Workers::start(Path::new("/nonexistent/python"), LaunchOptions::default())
            .await
        {
            Err(e) => e,
            Ok(_) => panic!("started a daemon from a missing interpreter"),
        };
        assert!(matches!(err, WorkerError::Spawn { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("/nonexistent/python -m pyspark.daemon pyspark.worker"),
            "{err}"
        );
    }

    /// A stand-in "interpreter" script (it ignores `-m pyspark.daemon`) that prints text where the
    /// port belongs, as a chatty sitecustomize.py would.
    #[tokio::test]
    async fn garbage_on_stdout_is_a_bad_port_and_nothing_is_left_behind() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("python");
        let pidfile = dir.path().join("pid");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\necho $$ > {}\nprintf 'hello'\nsleep 30\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = match Workers::start(&fake, LaunchOptions::default()).await {
            Err(e) => e,
            Ok(_) => panic!("accepted 'hell' as a port"),
        };
        assert!(
            matches!(err, WorkerError::BadPort { value: 0x6865_6c6c }),
            "{err}"
        );
        assert!(err.to_string().contains("sitecustomize"), "{err}");
        let pid: i32 = std::fs::read_to_string(&pidfile)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        assert_eq!(leftover_processes(&[pid]), vec![]);
    }

    #[tokio::test]
    async fn a_daemon_that_exits_before_announcing_is_daemon_died_with_its_stderr() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("python");
        std::fs::write(
            &fake,
            "#!/bin/sh\necho 'No module named pyspark' >&2\nexit 3\n",
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let err = match Workers::start(&fake, LaunchOptions::default()).await {
            Err(e) => e,
            Ok(_) => panic!("started"),
        };
        match &err {
            WorkerError::DaemonDied { exit, stderr_tail } => {
                assert_eq!(*exit, Some(ExitInfo::Code(3)));
                assert!(stderr_tail.contains("No module named pyspark"), "{err}");
            }
            other => panic!("expected DaemonDied, got {other}"),
        }
    }

    #[tokio::test]
    async fn a_silent_daemon_times_out_and_its_group_is_killed() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("python");
        let pidfile = dir.path().join("pids");
        std::fs::write(
            &fake,
            format!(
                "#!/bin/sh\nsleep 30 &\necho $$ $! > {}\nwait\n",
                pidfile.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let opts = LaunchOptions {
            start_timeout: Duration::from_millis(500),
            ..Default::default()
        };
        let err = match Workers::start(&fake, opts).await {
            Err(e) => e,
            Ok(_) => panic!("started"),
        };
        assert!(matches!(err, WorkerError::Timeout { .. }), "{err}");
        let pids: Vec<i32> = std::fs::read_to_string(&pidfile)
            .unwrap()
            .split_whitespace()
            .map(|p| p.parse().unwrap())
            .collect();
        assert_eq!(
            pids.len(),
            2,
            "the script records itself and its background sleep"
        );
        // The shell is the group leader; its `sleep` child is in the same group.
        assert_eq!(leftover_processes(&[pids[0]]), vec![]);
        assert!(!registered_groups().contains(&pids[0]));
    }
}
