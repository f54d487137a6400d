//! The recording tap: `fakejvm tap` stands in for PYSPARK_PYTHON between a real Spark JVM and
//! the real Python daemon or worker, and records every byte that passes.
//!
//! How Spark's `PythonWorkerFactory` (4.x) starts Python, and what the tap does in between:
//! - daemon: `$PYSPARK_PYTHON -m pyspark.daemon pyspark.worker` with PYTHON_WORKER_FACTORY_SECRET
//!   (TCP) or PYTHON_UNIX_DOMAIN_ENABLED + PYTHON_WORKER_FACTORY_SOCK_DIR (4.1+). The JVM reads a
//!   port (i32) or a socket path (i32 length + UTF-8, which must exist) from stdout, connects per
//!   worker, writes pids to kill on stdin and closes stdin to stop it. The tap starts the real
//!   daemon with the same arguments and environment, reads its announce, listens itself, announces
//!   its own address, and per JVM connection connects to the real daemon and proxies.
//! - direct (spark.python.use.daemon=false): `$PYSPARK_PYTHON -m pyspark.worker` with
//!   PYTHON_WORKER_FACTORY_PORT + SECRET (TCP) or PYTHON_WORKER_FACTORY_SOCK_PATH (4.1+): the
//!   worker connects back to the JVM. The tap listens itself, starts the real worker pointed at
//!   the tap, accepts it, connects to the JVM, and proxies.
//! - anything else (the driver's own uses of PYSPARK_PYTHON): exec'd straight to the real Python.
//!
//! Spark deletes broadcast files after the job, so the tap decodes each request as it passes
//! and copies the files it names while they still exist.
//!
//! The real process leads its own process group (a `worker::Group`), which is SIGKILLed when the
//! tap ends (also on SIGTERM, which is how the JVM's `Process.destroy()` stops a direct worker).

use super::spool::{self, ConnMeta, Exit, Role, TapMeta, Transport};
use super::write_atomic;

use crate::protocol::{BroadcastOp, RequestDecoder, UdfLayout};
use crate::wire::Status;
use crate::worker::{read_daemon_announce, spawn_in_group, DaemonAddr, Group};
use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::process::{Child, Command};

/// `fakejvm tap`: not for people. `fakejvm record` writes a launcher that runs it as PYSPARK_PYTHON.
#[derive(clap::Args, Debug, Clone)]
pub struct TapArgs {
    /// The real Python interpreter (with pyspark) that does the work.
    #[arg(long, value_name = "PATH")]
    pub real_python: PathBuf,
    /// Directory the recording goes to (one `tap-<pid>/` per tap process).
    #[arg(long, value_name = "DIR")]
    pub spool: PathBuf,
    /// pyspark version of the real Python: picks the dialect (and UDF layout) used to decode the
    /// JVM's requests and find broadcast files.
    #[arg(long, value_name = "VERSION")]
    pub pyspark: String,
    /// The arguments the JVM gave PYSPARK_PYTHON.
    #[arg(last = true, allow_hyphen_values = true)]
    pub args: Vec<OsString>,
}

/// How long the real daemon may take to announce its address (it imports pyspark first).
const ANNOUNCE_TIMEOUT: Duration = Duration::from_secs(60);
/// Spark waits 10 s for a direct worker to connect back; the tap waits a little longer for its
/// own worker, so the JVM's timeout is the one that fires.
const CONNECT_BACK_TIMEOUT: Duration = Duration::from_secs(15);
/// After the JVM closed the daemon's stdin: how long the daemon and open connections get.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// Runs the tap; returns the exit status to end with (the real process's). Call it outside any
/// tokio runtime: it builds its own. Prints problems to stderr, which the JVM copies to its log;
/// stdout belongs to the protocol (the daemon's announce).
pub fn tap_main(args: TapArgs) -> u8 {
    let utf8: Option<Vec<String>> = args
        .args
        .iter()
        .map(|a| a.clone().into_string().ok())
        .collect();
    let role = utf8.as_deref().and_then(Role::of_args);
    let Some(role) = role else {
        return exec_real(&args.real_python, &args.args);
    };
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("fakejvm tap: cannot build a tokio runtime: {e}");
            return 70;
        }
    };
    let tap = match Tap::new(args, utf8.unwrap_or_default(), role) {
        Ok(t) => Arc::new(t),
        Err(e) => {
            eprintln!("fakejvm tap: {e}");
            return 70;
        }
    };
    let exit = rt.block_on(async {
        let r = match role {
            Role::Daemon => run_daemon(tap.clone()).await,
            Role::Direct => run_direct(tap.clone()).await,
        };
        match r {
            Ok(exit) => exit,
            Err(e) => {
                eprintln!("fakejvm tap: {e:#}");
                tap.error(format!("{e:#}"));
                None
            }
        }
    });
    tap.finish(exit);
    // Background stdin readers may still block in a thread: leave without waiting for them.
    rt.shutdown_timeout(Duration::from_millis(100));
    match exit {
        Some(Exit::Code(c)) => c as u8,
        Some(Exit::Signal(s)) => (128 + s) as u8,
        None => 70,
    }
}

fn exec_real(python: &Path, args: &[OsString]) -> u8 {
    use std::os::unix::process::CommandExt;
    let err = std::process::Command::new(python).args(args).exec();
    eprintln!("fakejvm tap: could not exec {}: {err}", python.display());
    127
}

/// What one tap process shares between its tasks.
struct Tap {
    args: TapArgs,
    dir: PathBuf,
    /// The requests' layout: the dialect and, within family A, 3.5's or 4.0's UDF section.
    layout: Option<UdfLayout>,
    meta: Mutex<TapMeta>,
    conns: Mutex<Vec<Arc<ConnRecorder>>>,
    copied: Mutex<BTreeSet<i64>>,
}

impl Tap {
    fn new(args: TapArgs, utf8_args: Vec<String>, role: Role) -> anyhow::Result<Tap> {
        let transport = match role {
            Role::Daemon if env_is_true("PYTHON_UNIX_DOMAIN_ENABLED") => Transport::Unix,
            // 4.1+ worker.py takes the socket branch only with SOCK_PATH set and no SECRET.
            Role::Direct
                if std::env::var_os("PYTHON_WORKER_FACTORY_SOCK_PATH").is_some()
                    && std::env::var_os("PYTHON_WORKER_FACTORY_SECRET").is_none() =>
            {
                Transport::Unix
            }
            _ => Transport::Tcp,
        };
        let dir = spool::tap_dir(&args.spool, std::process::id());
        std::fs::create_dir_all(&dir)
            .map_err(|e| anyhow::anyhow!("cannot create the spool dir {}: {e}", dir.display()))?;
        let layout = args
            .pyspark
            .parse::<crate::pyenv::PysparkVersion>()
            .ok()
            .and_then(|v| {
                // Before 3.5 there is no checked UDF layout, but the RDD header is family A's.
                UdfLayout::for_version(v.major, v.minor).or_else(|| {
                    crate::protocol::Dialect::for_version(v.major, v.minor)
                        .map(UdfLayout::default_for)
                })
            });
        let meta = TapMeta {
            role,
            transport,
            args: utf8_args,
            env: spool::worker_env(),
            tap_pid: std::process::id(),
            real_pid: None,
            started_unix_ms: spool::now_unix_us() / 1000,
            ended_unix_ms: None,
            exit: None,
            errors: vec![],
            real_announce: None,
            tap_announce: None,
        };
        let tap = Tap {
            args,
            dir,
            layout,
            meta: Mutex::new(meta),
            conns: Mutex::new(vec![]),
            copied: Mutex::new(BTreeSet::new()),
        };
        if tap.layout.is_none() {
            tap.error(format!(
                "pyspark version {:?} has no known dialect: broadcast files are not copied",
                tap.args.pyspark
            ));
        }
        tap.write_meta();
        Ok(tap)
    }

    fn transport(&self) -> Transport {
        lock(&self.meta).transport
    }

    fn error(&self, e: String) {
        lock(&self.meta).errors.push(e);
    }

    fn write_meta(&self) {
        let bytes = serde_json::to_vec_pretty(&*lock(&self.meta)).unwrap_or_default();
        if let Err(e) = write_atomic(&self.dir.join(spool::META), &bytes) {
            eprintln!(
                "fakejvm tap: cannot write {}: {e}",
                self.dir.join(spool::META).display()
            );
        }
    }

    fn finish(&self, exit: Option<Exit>) {
        for c in lock(&self.conns).iter() {
            c.close();
        }
        {
            let mut m = lock(&self.meta);
            m.exit = exit;
            m.ended_unix_ms = Some(spool::now_unix_us() / 1000);
        }
        self.write_meta();
    }

    fn new_conn(self: &Arc<Self>) -> std::io::Result<Arc<ConnRecorder>> {
        let mut conns = lock(&self.conns);
        let k = conns.len();
        let open = |what: &str| {
            std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(spool::conn_file(&self.dir, k, what))
        };
        let rec = Arc::new(ConnRecorder {
            tap: Arc::downgrade(self),
            dir: self.dir.clone(),
            state: Mutex::new(ConnState {
                meta: ConnMeta {
                    index: k,
                    opened_unix_us: spool::now_unix_us(),
                    ..ConnMeta::default()
                },
                to_worker_file: open("to_worker.bin")?,
                to_jvm_file: open("to_jvm.bin")?,
                last_was_jvm: false,
                jvm_closed: false,
                requests: match self.layout {
                    Some(_) => RequestTap::Handshake { seen: Vec::new() },
                    None => RequestTap::Off,
                },
            }),
        });
        rec.write_meta();
        conns.push(rec.clone());
        Ok(rec)
    }

    /// Copy broadcast files named by a request, while Spark still has them.
    fn copy_broadcasts(&self, ops: &[BroadcastOp], meta: &mut ConnMeta) {
        for op in ops {
            let BroadcastOp::Add { id, path } = op else {
                continue;
            };
            if !meta.broadcasts.contains(id) {
                meta.broadcasts.push(*id);
            }
            if !lock(&self.copied).insert(*id) {
                continue;
            }
            let Some(path) = path else {
                meta.errors.push(format!(
                    "broadcast {id} came through the decryption server: its value is not recorded"
                ));
                continue;
            };
            let dest = spool::broadcast_file(&self.args.spool, *id);
            if let Err(e) = std::fs::copy(path, &dest) {
                meta.errors
                    .push(format!("copying broadcast {id} from {path}: {e}"));
            }
        }
    }
}

struct ConnRecorder {
    tap: std::sync::Weak<Tap>,
    dir: PathBuf,
    state: Mutex<ConnState>,
}

struct ConnState {
    meta: ConnMeta,
    to_worker_file: std::fs::File,
    to_jvm_file: std::fs::File,
    last_was_jvm: bool,
    /// The JVM has closed its side (EOF on JVM -> worker).
    jvm_closed: bool,
    /// Decodes the JVM -> worker stream as it passes, to find broadcast files in the requests.
    requests: RequestTap,
}

/// How far the tap got in the JVM -> worker stream of a connection. Only the handshake and the
/// header of the request under way are ever held: data frames are dropped as they pass.
enum RequestTap {
    /// The handshake's bytes so far (at most a length and a 4096-byte secret).
    Handshake {
        seen: Vec<u8>,
    },
    Requests(Box<RequestDecoder>),
    /// No dialect, or the stream stopped decoding (noted in the connection's errors).
    Off,
}

/// The longest JVM -> worker handshake: a length and a secret (see spool::handshake_split).
const MAX_HANDSHAKE: usize = 4 + 4096;

#[derive(Clone, Copy, PartialEq, Eq)]
enum Dir {
    ToWorker,
    ToJvm,
}

impl ConnRecorder {
    /// Called with each chunk BEFORE it is forwarded, so the order recorded here is the order in
    /// which each side could have seen the bytes.
    fn record(&self, dir: Dir, chunk: &[u8]) {
        let mut st = lock(&self.state);
        let st = &mut *st;
        let res = match dir {
            Dir::ToWorker => {
                if st.last_was_jvm {
                    st.meta
                        .turns
                        .push((st.meta.to_worker_bytes, st.meta.to_jvm_bytes));
                }
                st.last_was_jvm = false;
                st.meta.to_worker_bytes += chunk.len() as u64;
                st.to_worker_file.write_all(chunk)
            }
            Dir::ToJvm => {
                st.last_was_jvm = true;
                st.meta.to_jvm_bytes += chunk.len() as u64;
                st.to_jvm_file.write_all(chunk)
            }
        };
        if let Err(e) = res {
            st.meta.errors.push(format!("writing the spool: {e}"));
        }
        if dir == Dir::ToWorker {
            self.scan_requests(st, chunk);
        }
    }

    /// Feed the JVM's bytes to the request decoder and copy the broadcasts of every request
    /// that completes.
    fn scan_requests(&self, st: &mut ConnState, chunk: &[u8]) {
        let Some(tap) = self.tap.upgrade() else {
            return;
        };
        let Some(layout) = tap.layout else { return };
        match &mut st.requests {
            RequestTap::Off => return,
            RequestTap::Handshake { seen } => {
                seen.extend_from_slice(chunk);
                let Some(len) = spool::to_worker_handshake_len(tap.transport(), seen) else {
                    return;
                };
                if len > MAX_HANDSHAKE {
                    st.meta.errors.push(format!("the JVM's handshake claims {len} bytes: requests are not decoded, broadcasts not copied"));
                    st.requests = RequestTap::Off;
                    return;
                }
                if seen.len() < len {
                    return;
                }
                let mut dec = RequestDecoder::new_as(layout)
                    .with_base(len as u64)
                    .headers_only();
                dec.feed(&seen[len..]);
                st.requests = RequestTap::Requests(Box::new(dec));
            }
            RequestTap::Requests(dec) => dec.feed(chunk),
        }
        let RequestTap::Requests(dec) = &mut st.requests else {
            return;
        };
        loop {
            match dec.next_request() {
                Ok(Status::Complete(r)) => {
                    tap.copy_broadcasts(&r.request.broadcasts.ops, &mut st.meta)
                }
                Ok(Status::Partial) => break,
                Err(e) => {
                    st.meta.errors.push(format!("the JVM's requests do not decode as {layout} ({e}): later broadcasts are not copied"));
                    st.requests = RequestTap::Off;
                    break;
                }
            }
        }
    }

    fn close(&self) {
        {
            let mut st = lock(&self.state);
            if st.meta.closed_unix_us.is_some() {
                return;
            }
            st.meta.closed_unix_us = Some(spool::now_unix_us());
        }
        self.write_meta();
    }

    fn error(&self, e: String) {
        lock(&self.state).meta.errors.push(e);
    }

    fn jvm_closed(&self) -> bool {
        lock(&self.state).jvm_closed
    }

    fn write_meta(&self) {
        let (k, bytes) = {
            let st = lock(&self.state);
            (
                st.meta.index,
                serde_json::to_vec_pretty(&st.meta).unwrap_or_default(),
            )
        };
        let path = spool::conn_file(&self.dir, k, "json");
        if let Err(e) = write_atomic(&path, &bytes) {
            if let Some(tap) = self.tap.upgrade() {
                tap.error(format!("writing {}: {e}", path.display()));
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Daemon

async fn run_daemon(tap: Arc<Tap>) -> anyhow::Result<Option<Exit>> {
    let transport = tap.transport();
    let mut cmd = Command::new(&tap.args.real_python);
    cmd.args(&tap.args.args);
    let mut real = Real::spawn(cmd, true)?;
    lock(&tap.meta).real_pid = Some(real.group.pgid());
    tap.write_meta();
    let mut real_stdout = real.child.stdout.take().expect("piped");
    let real_stderr = real.child.stderr.take().expect("piped");
    let real_stdin = real.child.stdin.take().expect("piped");
    tokio::spawn(tee(
        tap.clone(),
        real_stderr,
        std_fd(2),
        tap.dir.join("stderr.bin"),
    ));

    // Where the real daemon listens, and where we listen in its place.
    let (announce, _raw) = read_daemon_announce(
        &mut real_stdout,
        transport == Transport::Unix,
        ANNOUNCE_TIMEOUT,
    )
    .await;
    let real_addr = match announce {
        Err(e) => {
            // Let the JVM see the daemon's own complaint (it reads our stderr on failure).
            tokio::time::sleep(Duration::from_millis(200)).await;
            anyhow::bail!("reading the real daemon's announce: {e}");
        }
        Ok(DaemonAddr::Tcp(port)) => Addr::Tcp(SocketAddr::new(loopback(), port)),
        Ok(DaemonAddr::Unix(path)) => Addr::Unix(path),
    };
    let listener = Listener::bind_like(&real_addr).await?;
    {
        let mut m = lock(&tap.meta);
        m.real_announce = Some(real_addr.to_string());
        m.tap_announce = Some(listener.addr.to_string());
    }
    tap.write_meta();
    let mut stdout = std_fd(1);
    stdout.write_all(&listener.addr.announce_bytes()).await?;
    stdout.flush().await?;
    // Forked workers inherit the daemon's stdout (prints, 4.1+ JSON logs): keep passing it on.
    tokio::spawn(tee(
        tap.clone(),
        real_stdout,
        stdout,
        tap.dir.join("stdout.bin"),
    ));

    let (stdin_closed_tx, mut stdin_closed) = tokio::sync::watch::channel(false);
    let (stdin_back_tx, stdin_back) = tokio::sync::oneshot::channel();
    tokio::spawn(forward_stdin(
        tap.clone(),
        real_stdin,
        stdin_closed_tx,
        stdin_back_tx,
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut proxies = tokio::task::JoinSet::new();
    let why = loop {
        tokio::select! {
            accepted = listener.accept() => {
                let jvm = match accepted {
                    Ok(s) => s,
                    Err(e) => { tap.error(format!("accepting a JVM connection: {e}")); continue; }
                };
                let tap2 = tap.clone();
                let addr = real_addr.clone();
                proxies.spawn(async move {
                    let rec = match tap2.new_conn() {
                        Ok(r) => r,
                        Err(e) => { tap2.error(format!("opening spool files: {e}")); return; }
                    };
                    match addr.connect().await {
                        Ok(daemon) => proxy(rec.clone(), jvm, daemon).await,
                        Err(e) => rec.error(format!("connecting to the real daemon at {addr}: {e}")),
                    }
                    rec.close();
                });
            }
            _ = stdin_closed.wait_for(|c| *c) => break "the JVM closed the daemon's stdin",
            status = real.child.wait() => {
                real.group.mark_reaped();
                let exit = status.map(Exit::from_status).ok();
                tap.error(format!("the real daemon exited on its own ({exit:?})"));
                break "the real daemon exited";
            }
            _ = sigterm.recv() => break "SIGTERM",
        }
    };
    tracing::debug!("tap: daemon ends: {why}");
    // Spark closes its idle workers' sockets, then stops the daemon (stdin closed, or SIGTERM),
    // which SIGHUPs its workers at once. A reused worker answers the close (an EOFError
    // traceback that the JVM never reads): let the connections finish before the daemon is
    // told, so the recording holds that answer every time instead of when the race allows.
    let _ = tokio::time::timeout(Duration::from_secs(2), async {
        while proxies.join_next().await.is_some() {}
    })
    .await;
    match why {
        "SIGTERM" => {
            real.group.signal_leader(libc::SIGTERM);
        }
        // Handed back before `stdin_closed` fired; dropping it closes the daemon's stdin.
        "the JVM closed the daemon's stdin" => drop(stdin_back.await),
        _ => {}
    }
    let exit = real.wait_for(SHUTDOWN_GRACE).await;
    // The daemon SIGHUPs its forked workers when it stops; their sockets close, and so do our
    // proxies. Anything still open after the grace is cut.
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while proxies.join_next().await.is_some() {}
    })
    .await;
    proxies.abort_all();
    real.kill_group();
    Ok(exit)
}

/// Copies our stdin (pids the JVM asks to kill) to the real daemon's. At EOF it signals `closed`
/// and hands the daemon's stdin back instead of closing it: closing it is the daemon's shutdown,
/// which the caller times.
async fn forward_stdin(
    tap: Arc<Tap>,
    real_stdin: tokio::process::ChildStdin,
    closed: tokio::sync::watch::Sender<bool>,
    give_back: tokio::sync::oneshot::Sender<tokio::process::ChildStdin>,
) {
    let log = tap.dir.join("stdin.bin");
    // A daemon that has gone cannot take kill requests; `tee` keeps reading until EOF anyway.
    let real_stdin = tee(tap, std_fd(0), real_stdin, log).await;
    let _ = give_back.send(real_stdin);
    let _ = closed.send(true);
}

// ---------------------------------------------------------------------------------------------
// Direct worker

async fn run_direct(tap: Arc<Tap>) -> anyhow::Result<Option<Exit>> {
    let transport = tap.transport();
    let jvm_addr = match transport {
        Transport::Tcp => {
            let port: u16 = env_str("PYTHON_WORKER_FACTORY_PORT")
                .and_then(|p| p.parse().ok())
                .ok_or_else(|| anyhow::anyhow!("PYTHON_WORKER_FACTORY_PORT is not set to a port: the JVM did not start a direct worker"))?;
            Addr::Tcp(SocketAddr::new(loopback(), port))
        }
        Transport::Unix => Addr::Unix(PathBuf::from(
            env_str("PYTHON_WORKER_FACTORY_SOCK_PATH").unwrap_or_default(),
        )),
    };
    let listener = Listener::bind_like(&jvm_addr).await?;
    {
        let mut m = lock(&tap.meta);
        m.real_announce = Some(jvm_addr.to_string());
        m.tap_announce = Some(listener.addr.to_string());
    }
    let mut cmd = Command::new(&tap.args.real_python);
    cmd.args(&tap.args.args);
    match &listener.addr {
        Addr::Tcp(a) => cmd.env("PYTHON_WORKER_FACTORY_PORT", a.port().to_string()),
        Addr::Unix(p) => cmd.env("PYTHON_WORKER_FACTORY_SOCK_PATH", p),
    };
    // Spark leaves a direct worker's stdin as an open pipe; ours is that pipe.
    let mut real = Real::spawn(cmd, false)?;
    lock(&tap.meta).real_pid = Some(real.group.pgid());
    tap.write_meta();
    tokio::spawn(tee(
        tap.clone(),
        real.child.stdout.take().expect("piped"),
        std_fd(1),
        tap.dir.join("stdout.bin"),
    ));
    tokio::spawn(tee(
        tap.clone(),
        real.child.stderr.take().expect("piped"),
        std_fd(2),
        tap.dir.join("stderr.bin"),
    ));

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let worker = tokio::select! {
        a = tokio::time::timeout(CONNECT_BACK_TIMEOUT, listener.accept()) => match a {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => { tap.error(format!("accepting the real worker: {e}")); None }
            Err(_) => { tap.error(format!("the real worker did not connect within {CONNECT_BACK_TIMEOUT:?}")); None }
        },
        status = real.child.wait() => {
            real.group.mark_reaped();
            tap.error(format!("the real worker exited before connecting ({:?})", status.map(Exit::from_status).ok()));
            None
        }
        _ = sigterm.recv() => { real.group.signal_leader(libc::SIGTERM); None }
    };
    drop(listener);
    if let Some(worker) = worker {
        let rec = tap.new_conn()?;
        match jvm_addr.connect().await {
            Ok(jvm) => {
                tokio::select! {
                    _ = proxy(rec.clone(), jvm, worker) => {}
                    _ = sigterm.recv() => { real.group.signal_leader(libc::SIGTERM); }
                }
            }
            Err(e) => rec.error(format!("connecting to the JVM at {jvm_addr}: {e}")),
        }
        rec.close();
    }
    let exit = real.wait_for(SHUTDOWN_GRACE).await;
    real.kill_group();
    Ok(exit)
}

// ---------------------------------------------------------------------------------------------
// Sockets

#[derive(Clone, Debug)]
enum Addr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Addr::Tcp(a) => write!(f, "{a}"),
            Addr::Unix(p) => write!(f, "{}", p.display()),
        }
    }
}

impl Addr {
    /// What a daemon prints on stdout: the port as an i32, or the path as i32 length + UTF-8.
    fn announce_bytes(&self) -> Vec<u8> {
        match self {
            Addr::Tcp(a) => (a.port() as i32).to_be_bytes().to_vec(),
            Addr::Unix(p) => {
                let s = p.to_string_lossy();
                let mut v = (s.len() as i32).to_be_bytes().to_vec();
                v.extend_from_slice(s.as_bytes());
                v
            }
        }
    }

    async fn connect(&self) -> std::io::Result<Stream> {
        let fut = async {
            Ok(match self {
                Addr::Tcp(a) => {
                    let s = TcpStream::connect(a).await?;
                    s.set_nodelay(true)?;
                    Stream::Tcp(s)
                }
                Addr::Unix(p) => Stream::Unix(UnixStream::connect(p).await?),
            })
        };
        tokio::time::timeout(Duration::from_secs(10), fut)
            .await
            .unwrap_or_else(|_| {
                Err(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "connect timed out after 10 s",
                ))
            })
    }
}

fn loopback() -> IpAddr {
    // Spark's SPARK_PREFER_IPV6 makes pyspark bind and connect to ::1 instead of 127.0.0.1.
    if env_is_true("SPARK_PREFER_IPV6") {
        IpAddr::V6(Ipv6Addr::LOCALHOST)
    } else {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }
}

struct Listener {
    inner: ListenerKind,
    addr: Addr,
}

enum ListenerKind {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Listen the way `like` does: TCP on the same loopback address, or a Unix socket in the
    /// same directory (Spark passes that directory to the daemon; paths must stay short).
    async fn bind_like(like: &Addr) -> anyhow::Result<Listener> {
        match like {
            Addr::Tcp(a) => {
                let l = TcpListener::bind(SocketAddr::new(a.ip(), 0)).await?;
                let addr = Addr::Tcp(l.local_addr()?);
                Ok(Listener {
                    inner: ListenerKind::Tcp(l),
                    addr,
                })
            }
            Addr::Unix(p) => {
                let dir = p
                    .parent()
                    .filter(|d| !d.as_os_str().is_empty())
                    .unwrap_or(Path::new("/tmp"));
                let path = dir.join(format!(
                    ".fakejvm-tap-{}-{}.sock",
                    std::process::id(),
                    hex::encode(rand::random::<[u8; 4]>())
                ));
                let l = UnixListener::bind(&path)
                    .map_err(|e| anyhow::anyhow!("listening on {}: {e}", path.display()))?;
                Ok(Listener {
                    inner: ListenerKind::Unix(l),
                    addr: Addr::Unix(path),
                })
            }
        }
    }

    async fn accept(&self) -> std::io::Result<Stream> {
        match &self.inner {
            ListenerKind::Tcp(l) => {
                let (s, _) = l.accept().await?;
                s.set_nodelay(true)?;
                Ok(Stream::Tcp(s))
            }
            ListenerKind::Unix(l) => Ok(Stream::Unix(l.accept().await?.0)),
        }
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Addr::Unix(p) = &self.addr {
            let _ = std::fs::remove_file(p);
        }
    }
}

enum Stream {
    Tcp(TcpStream),
    Unix(UnixStream),
}

type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

impl Stream {
    fn split(self) -> (BoxRead, BoxWrite) {
        match self {
            Stream::Tcp(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
            Stream::Unix(s) => {
                let (r, w) = s.into_split();
                (Box::new(r), Box::new(w))
            }
        }
    }
}

/// Both directions at once until both have ended; each EOF is passed on as a half-close, so
/// whoever closes first is seen closing by the other side, as without the tap.
async fn proxy(rec: Arc<ConnRecorder>, jvm: Stream, worker: Stream) {
    let (jr, jw) = jvm.split();
    let (wr, ww) = worker.split();
    let a = pump(rec.clone(), Dir::ToWorker, jr, ww);
    let b = pump(rec.clone(), Dir::ToJvm, wr, jw);
    tokio::join!(a, b);
}

async fn pump(rec: Arc<ConnRecorder>, dir: Dir, mut from: BoxRead, mut to: BoxWrite) {
    let mut buf = vec![0u8; 64 * 1024];
    let mut deliver = true;
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break,
            Err(e) => {
                rec.error(format!("reading {}: {e}", dir_name(dir)));
                break;
            }
        };
        rec.record(dir, &buf[..n]);
        if deliver {
            if let Err(e) = to.write_all(&buf[..n]).await {
                // A worker answering the JVM's close writes to a socket the JVM has shut: that
                // answer is still recorded (the point of the tap); anything else is worth a note.
                if !(dir == Dir::ToJvm && rec.jvm_closed()) {
                    rec.error(format!("passing on {}: {e}", dir_name(dir)));
                }
                deliver = false;
            }
        }
    }
    if dir == Dir::ToWorker {
        lock(&rec.state).jvm_closed = true;
    }
    let _ = to.shutdown().await;
}

fn dir_name(d: Dir) -> &'static str {
    match d {
        Dir::ToWorker => "JVM -> worker",
        Dir::ToJvm => "worker -> JVM",
    }
}

/// Pass `from` on to `to` until EOF, keeping a copy in the spool file `log`; returns `to`. A copy
/// that cannot be written is an error in the tap's meta (once: the recording is incomplete from
/// there), and the bytes still go on. Nor does a failing `to` stop the copy: whoever is gone on
/// that side (the JVM, a daemon that died) has its own story in the recording.
async fn tee<R, W>(tap: Arc<Tap>, mut from: R, mut to: W, log: PathBuf) -> W
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut file = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log)
    {
        Ok(f) => Some(f),
        Err(e) => {
            tap.error(format!(
                "opening {}: {e}; what passes there is not recorded",
                log.display()
            ));
            None
        }
    };
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match from.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if let Some(f) = file.as_mut() {
                    if let Err(e) = f.write_all(&buf[..n]) {
                        tap.error(format!(
                            "writing {}: {e}; the rest of it is not recorded",
                            log.display()
                        ));
                        file = None;
                    }
                }
                let _ = to.write_all(&buf[..n]).await;
                let _ = to.flush().await;
            }
        }
    }
    to
}

// ---------------------------------------------------------------------------------------------
// The real process

/// The real daemon or worker, in a process group of its own (a `worker::Group`, which SIGKILLs
/// whatever is left of it on drop).
struct Real {
    child: Child,
    group: Group,
}

impl Real {
    fn spawn(mut cmd: Command, pipe_stdin: bool) -> anyhow::Result<Real> {
        cmd.stdin(if pipe_stdin {
            std::process::Stdio::piped()
        } else {
            std::process::Stdio::inherit()
        })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
        let (child, group) = spawn_in_group(&mut cmd)
            .map_err(|e| anyhow::anyhow!("starting the real Python: {e}"))?;
        Ok(Real { child, group })
    }

    async fn wait_for(&mut self, grace: Duration) -> Option<Exit> {
        match tokio::time::timeout(grace, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.group.mark_reaped();
                Some(Exit::from_status(status))
            }
            _ => None,
        }
    }

    fn kill_group(&mut self) {
        self.group.signal(libc::SIGKILL);
        if let Ok(Some(_)) = self.child.try_wait() {
            self.group.mark_reaped();
        }
    }
}

// ---------------------------------------------------------------------------------------------

/// One of our standard streams as an async file (a dup of the fd, so closing it leaves ours open).
/// tokio's file I/O runs on its blocking pool, so a slow reader on the JVM side never stalls the
/// proxies.
fn std_fd(fd: i32) -> tokio::fs::File {
    use std::os::fd::FromRawFd;
    // SAFETY: dup returns a new descriptor that nothing else owns.
    let dup = unsafe { libc::dup(fd) };
    if dup < 0 {
        // No such stream (the JVM always gives all three): /dev/null reads EOF and takes writes.
        let null = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/null")
            .expect("/dev/null");
        return tokio::fs::File::from_std(null);
    }
    tokio::fs::File::from_std(unsafe { std::fs::File::from_raw_fd(dup) })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn env_str(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// pyspark compares these case-insensitively with "true"; the JVM sends "True".
fn env_is_true(name: &str) -> bool {
    env_str(name).is_some_and(|v| v.eq_ignore_ascii_case("true"))
}
