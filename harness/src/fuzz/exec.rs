//! Running one case against a real worker, five ways:
//! - **fork server** (default): one long-lived `pyspark.daemon`; every case connects, the daemon
//!   forks a fresh worker (about 2.7 ms, no interpreter start), the case runs, the worker exits;
//! - **reuse**: the same daemon with SPARK_REUSE_WORKER, each lane keeps one worker for case
//!   after case, and reconnects only when the worker could not be reused;
//! - **spawn**: a new `python -m pyspark.worker` per case (what fuzzing costs without a fork
//!   server; for the benchmark);
//! - **persistent**: fakejvm's own loop ([`super::server`]) serves case after case in one
//!   process that imported the real `pyspark.worker` once, resetting pyspark's module state in
//!   between and recycling itself when it finds state it cannot reset; one process per lane;
//! - **warm fork**: the same loop forks per case, like the daemon, from a parent that has
//!   imported pyspark.worker (and pandas and pyarrow, with Arrow seeds: see
//!   [`ExecOptions::preload_arrow`]) and called `gc.freeze()`.
//!
//! The last two are not pyspark's own process model, so a campaign re-runs each of their
//! findings on a fork server before it reports it (see `campaign`).
//!
//! A case is written in ONE write on a TCP_NODELAY socket, then (unless a reused worker should
//! read the next case) the write side is half-closed: a truncated request then means "the JVM
//! side went away mid-request", which is what exposes the short-read paths, and a worker
//! waiting for more input gets EOF instead of hanging. Fatal signals are caught by pointing
//! PYTHON_FAULTHANDLER_DIR at a private directory: a worker that dies by SIGSEGV leaves a dump
//! named by its pid (a worker that finishes removes its file itself).

use super::coverage::{CaseLines, Tracer};
use super::dial::Dialer;
use super::server::{Heard, Server, ServerKind, ServerOptions};
use crate::protocol::{decode_requests, Dialect, Reply, ReplyEnd, SpanKind};
use crate::pyenv::PythonEnv;
use crate::session::{
    self, ReadFailure, SessionOptions, TaskResult, Transcript, WritePlan, WriteStep,
};
use crate::verdict::{connect_failure, judge_task, tail_lines, DaemonFate, Outcome, WorkerFacts};
use crate::wire::Limits;
use crate::worker::{
    procs, Connection, DaemonState, LaunchOptions, Mode, ProcessTweaks, WorkerError, Workers,
};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExecMode {
    /// A fresh worker forked by one long-lived daemon per case.
    ForkServer,
    /// SPARK_REUSE_WORKER: one worker per lane, case after case.
    Reuse,
    /// A new `python -m pyspark.worker` per case.
    Spawn,
    /// fakejvm's loop: one process per lane imports pyspark.worker once and serves case after
    /// case, state reset in between (findings are confirmed on a fork server).
    Persistent,
    /// fakejvm's loop forking per case from a parent with pyspark.worker (and pandas and
    /// pyarrow with Arrow seeds) imported and its heap frozen (findings are confirmed on a fork server).
    WarmFork,
}

impl ExecMode {
    pub const ALL: [ExecMode; 5] = [
        ExecMode::ForkServer,
        ExecMode::Reuse,
        ExecMode::Spawn,
        ExecMode::Persistent,
        ExecMode::WarmFork,
    ];

    pub fn name(self) -> &'static str {
        match self {
            ExecMode::ForkServer => "fork-server",
            ExecMode::Reuse => "reuse",
            ExecMode::Spawn => "spawn",
            ExecMode::Persistent => "persistent",
            ExecMode::WarmFork => "warm-fork",
        }
    }

    /// Not pyspark's own way of running workers: a finding must be re-run on a fork server
    /// before it counts.
    pub fn needs_confirmation(self) -> bool {
        matches!(self, ExecMode::Persistent | ExecMode::WarmFork)
    }
}

/// A fuzz case is at most `mutate::MAX_CASE_LEN`; a reply frame far past anything a case can ask
/// for is a finding, and refusing it early keeps a lane's memory small.
pub(crate) const FUZZ_LIMITS: Limits = Limits {
    max_frame_len: 64 * 1024 * 1024,
};

#[derive(Clone, Debug)]
pub struct ExecOptions {
    /// The whole case (write and reply) must finish within this, else it is a Hang.
    pub deadline: Duration,
    /// Bound on one reply frame; a longer one is a protocol finding, never an allocation.
    pub limits: Limits,
    /// RLIMIT_AS of the daemon (its forks inherit it) or of each spawned worker, in MiB. A
    /// mutated length makes some workers allocate what it says before finding the stream short
    /// (pyspark 4.3's init-message reader zero-fills up to 2 GiB, seconds of CPU, before its
    /// EOFError): under a limit that is a quick MemoryError with a signature, not a "hang".
    pub memory_limit_mb: Option<u64>,
    /// Persistent mode: a server exits after this many cases (0: only when its state cannot be
    /// reset).
    pub recycle_after: u64,
    /// Servers import pandas and pyarrow (with pyspark's Arrow serializers) at start, as a
    /// persistent process that ran one Arrow UDF case has them anyway; set when a seed is an
    /// Arrow UDF request, so no case pays a multi-second import on a fresh server. A warm-fork
    /// parent imports them only then too: forking one that has them costs about twice as much
    /// per RDD case.
    pub preload_arrow: bool,
    /// Persistent and warm-fork: trace which lines of pyspark each case runs (see
    /// `super::coverage`); `exec_traced` hands them out.
    pub coverage: Option<Tracer>,
}

/// Cases a persistent server serves before it recycles itself, if nothing made it recycle
/// earlier: its start (importing pyspark.worker, about 0.4 s of CPU) spread over this many.
pub const DEFAULT_RECYCLE_AFTER: u64 = 5000;

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            deadline: Duration::from_secs(2),
            limits: FUZZ_LIMITS,
            memory_limit_mb: None,
            recycle_after: DEFAULT_RECYCLE_AFTER,
            preload_arrow: false,
            coverage: None,
        }
    }
}

/// What happened to one case.
#[derive(Clone, Debug)]
pub struct Observation {
    pub outcome: Outcome,
    /// The -2 traceback, or the faulthandler dump of a worker killed by a fatal signal.
    pub traceback: Option<String>,
    pub pid: Option<i32>,
    /// The complete reply, when there was one (the round-trip oracle reads its data).
    pub reply: Option<Reply>,
    pub close_after_write: bool,
    pub elapsed: Duration,
    /// The daemon was found dead and restarted during this case.
    pub daemon_restarted: bool,
    /// The case ran on a worker that had already run an earlier case (reuse mode).
    pub reused_worker: bool,
    /// For a hang: what the worker was doing when the deadline passed (read from /proc before
    /// it was killed), which tells a worker blocked on a read from one busy computing.
    pub worker_at_deadline: Option<String>,
}

impl Observation {
    /// A case on worker `pid` before anything is known.
    fn of(pid: i32, close_after_write: bool) -> Observation {
        Observation {
            outcome: Outcome::Passed,
            traceback: None,
            pid: Some(pid).filter(|p| *p > 0),
            reply: None,
            close_after_write,
            elapsed: Duration::ZERO,
            daemon_restarted: false,
            reused_worker: false,
            worker_at_deadline: None,
        }
    }

    /// A complete reply (ending in -2, or in a final marker) judged; the traceback kept.
    fn judge_reply(&mut self, result: &TaskResult, reply: &Reply) {
        if let ReplyEnd::Exception { traceback } = &reply.end {
            self.traceback = Some(traceback.clone());
        }
        self.outcome = judge_task(
            result,
            &WorkerFacts {
                pid: self.pid.unwrap_or(0),
                ..WorkerFacts::default()
            },
            |_| Outcome::Passed,
        );
        self.reply = Some(reply.clone());
    }
}

/// How long a worker may live after its case before it counts as leaked (campaign and repro).
pub const LEAK_GRACE: Duration = Duration::from_secs(5);

/// Per-lane state: the reused connection, if any.
#[derive(Default)]
pub struct Lane {
    kept: Option<KeptWorker>,
}

/// A reused worker's connection, kept between cases of one lane.
struct KeptWorker {
    conn: Connection,
    /// Reply offset where the next case's reply starts (session::run_task's `base`).
    reply_base: u64,
    /// The executor's daemon generation it was forked under: a worker of a restarted daemon's
    /// predecessor is not reused.
    daemon_generation: u64,
}

/// A worker whose case ended: it should be gone within the leak grace period.
struct Watched {
    pid: i32,
    since: Instant,
    bytes: Arc<Vec<u8>>,
    /// Persistent mode: the process group of the server whose case left this child (0: a
    /// worker forked by the daemon or warm server, watched as its child).
    group: i32,
}

/// What owns the processes of the daemon-like modes: pyspark's daemon (fork server, reuse), the
/// direct workers (spawn), or fakejvm's warm fork server.
enum Host {
    Workers(Workers),
    Warm(Server),
}

impl Host {
    async fn start(exec: &ExecStart<'_>) -> anyhow::Result<Host> {
        Ok(match exec.mode {
            ExecMode::WarmFork => {
                Host::Warm(Server::start(exec.env, ServerKind::WarmFork, exec.server).await?)
            }
            _ => Host::Workers(Workers::start(&exec.env.python, exec.launch.clone()).await?),
        })
    }

    /// With coverage: the lines a warm fork server's imports ran.
    fn take_startup(&mut self) -> Option<CaseLines> {
        match self {
            Host::Workers(_) => None,
            Host::Warm(s) => s.startup.take(),
        }
    }

    fn pid(&self) -> Option<i32> {
        match self {
            Host::Workers(w) => w.daemon_pid(),
            Host::Warm(s) => Some(s.pid),
        }
    }

    fn dialer(&self, launch: &LaunchOptions, secret: &str) -> Option<Dialer> {
        match self {
            Host::Workers(w) => dialer_for(w, launch),
            Host::Warm(s) => Some(Dialer {
                addr: s.addr.clone(),
                secret: secret.to_string(),
                daemon_pid: s.pid,
                timeout: launch.connect_timeout,
            }),
        }
    }

    async fn connect(&mut self, dialer: Option<&Dialer>) -> Result<Connection, WorkerError> {
        match (self, dialer) {
            (Host::Workers(w), _) => w.connect().await,
            (Host::Warm(_), Some(d)) => d.connect().await,
            (Host::Warm(_), None) => Err(WorkerError::WrongMode {
                what: "a warm fork server without its address",
                mode: Mode::Daemon,
            }),
        }
    }

    fn running(&mut self) -> bool {
        match self {
            Host::Workers(w) => w.daemon_state() == DaemonState::Running,
            Host::Warm(s) => s.exited().is_none(),
        }
    }

    async fn facts(&mut self, pid: Option<i32>, settle: Duration) -> WorkerFacts {
        match self {
            Host::Workers(w) => WorkerFacts::gather(w, pid, settle).await,
            Host::Warm(s) => WorkerFacts {
                pid: pid.unwrap_or(0),
                daemon: match s.wait_exit(settle).await {
                    Some(exit) => DaemonFate::Died {
                        exit: Some(exit),
                        stderr_tail: tail_lines(s.stderr_tail(8000).as_bytes(), 20),
                    },
                    None => DaemonFate::Running,
                },
                worker_exit: None,
            },
        }
    }

    async fn kill_worker(&mut self, pid: i32) -> bool {
        match self {
            Host::Workers(w) => w.kill_worker(pid).await.is_ok(),
            Host::Warm(s) => s.kill_child(pid),
        }
    }

    async fn shutdown(self, grace: Duration) -> Vec<(i32, String)> {
        match self {
            Host::Workers(w) => w.shutdown(grace).await.leftovers,
            Host::Warm(s) => s.shutdown(grace).await,
        }
    }
}

/// What `Host::start` needs.
struct ExecStart<'a> {
    env: &'a PythonEnv,
    mode: ExecMode,
    launch: &'a LaunchOptions,
    server: &'a ServerOptions,
}

/// What an executor's shutdown found.
#[derive(Clone, Debug, Default)]
pub struct ExecShutdown {
    /// Processes of ours still alive at the end of the grace period (then killed).
    pub leftovers: Vec<(i32, String)>,
}

/// A persistent server that recycled itself leaving children: kept (its group not killed) until
/// the leak grace period of those children is over, so they are judged like a forked worker's.
struct Retired {
    server: Server,
    until: Instant,
}

/// A process that outlived its case.
#[derive(Clone, Debug)]
pub struct Leak {
    pub pid: i32,
    pub cmdline: String,
    /// The case its worker ran; None for a process found in the daemon's group with no case
    /// known (e.g. a grandchild re-parented to init after its worker exited).
    pub bytes: Option<Arc<Vec<u8>>>,
}

/// How often `leaked` scans the whole daemon process group (reading all of /proc).
const GROUP_SCAN_EVERY: Duration = Duration::from_secs(2);

pub struct Executor {
    pub env: PythonEnv,
    pub dialect: Dialect,
    pub mode: ExecMode,
    opts: ExecOptions,
    session: SessionOptions,
    launch: LaunchOptions,
    /// Persistent and warm-fork servers: the secret, limits and recycle count.
    server: ServerOptions,
    workers: tokio::sync::Mutex<Option<Host>>,
    /// Bumped on every daemon restart: a lane's reused connection to an older daemon is dropped.
    generation: AtomicU64,
    daemon_pid: AtomicI32,
    restarts: AtomicU64,
    faulthandler: tempfile::TempDir,
    /// Holds the persistent / warm-fork loop's file.
    _script_dir: tempfile::TempDir,
    /// With coverage: where warm-fork children leave their case's lines (a file per pid).
    covdir: Option<tempfile::TempDir>,
    /// With coverage: lines of cases run through `exec` (not `exec_traced`) and of servers'
    /// start-ups, until `take_unclaimed_coverage`.
    unclaimed: Mutex<CaseLines>,
    watch: Mutex<VecDeque<Watched>>,
    /// Workers we hold a connection to: a case in flight, or kept by a lane for reuse.
    in_flight: Mutex<HashSet<i32>>,
    last_group_scan: Mutex<Instant>,
    /// Every daemon this executor started (each leads its own process group).
    daemons: Mutex<Vec<i32>>,
    /// Daemon modes: connects without the `workers` lock (see fuzz::dial).
    dialer: Mutex<Option<Dialer>>,
    /// Persistent mode: idle servers (a lane takes one per case and gives it back).
    pool: Mutex<Vec<Server>>,
    retired: Mutex<Vec<Retired>>,
    /// Persistent mode: every live server, by process group, with its pid.
    servers: Mutex<HashMap<i32, i32>>,
    /// Persistent mode: why servers recycled themselves, by reason (numbers taken out).
    recycles: Mutex<BTreeMap<String, u64>>,
    servers_started: AtomicU64,
}

impl Executor {
    pub async fn start(
        env: PythonEnv,
        dialect: Dialect,
        mode: ExecMode,
        opts: ExecOptions,
    ) -> anyhow::Result<Executor> {
        let faulthandler = fault_dump_dir()?;
        let fault_env = (
            "PYTHON_FAULTHANDLER_DIR".to_string(),
            faulthandler.path().display().to_string(),
        );
        let rlimit_as = opts
            .memory_limit_mb
            .map(|mb| mb.saturating_mul(1024 * 1024));
        let script_dir = fault_dump_dir()?;
        let covdir = match (&opts.coverage, mode.needs_confirmation()) {
            (Some(_), true) => Some(fault_dump_dir()?),
            _ => None,
        };
        let server = ServerOptions {
            script: super::server::write_loop(script_dir.path())?,
            secret: hex::encode(rand::random::<[u8; 32]>()),
            recycle_after: opts.recycle_after,
            preload_arrow: opts.preload_arrow,
            tweaks: ProcessTweaks {
                extra_env: vec![fault_env.clone()],
                rlimit_as,
                rlimit_nofile: None,
                wrapper: None,
            },
            start_timeout: Duration::from_secs(30),
            tracing: opts
                .coverage
                .clone()
                .zip(covdir.as_ref().map(|d| d.path().to_path_buf())),
        };
        let launch = LaunchOptions {
            mode: if mode == ExecMode::Spawn {
                Mode::Direct
            } else {
                Mode::Daemon
            },
            reuse: mode == ExecMode::Reuse,
            extra_env: vec![fault_env],
            connect_timeout: Duration::from_secs(10),
            rlimit_as,
            ..LaunchOptions::default()
        };
        let mut unclaimed = CaseLines::new();
        let host = if mode == ExecMode::Persistent {
            None
        } else {
            let mut h = Host::start(&ExecStart {
                env: &env,
                mode,
                launch: &launch,
                server: &server,
            })
            .await?;
            if let Some(lines) = h.take_startup() {
                merge_lines(&mut unclaimed, lines);
            }
            Some(h)
        };
        let workers_daemon = host.as_ref().and_then(Host::pid);
        let dialer = host
            .as_ref()
            .and_then(|h| h.dialer(&launch, &server.secret));
        #[allow(clippy::needless_update)] // robust to fields added later
        let session = SessionOptions {
            deadline: opts.deadline,
            record_transcript: false,
            count_only: false,
            limits: opts.limits,
            ..SessionOptions::default()
        };
        let exec = Executor {
            env,
            dialect,
            mode,
            opts,
            session,
            launch,
            server,
            daemon_pid: AtomicI32::new(workers_daemon.unwrap_or(0)),
            workers: tokio::sync::Mutex::new(host),
            generation: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            faulthandler,
            _script_dir: script_dir,
            covdir,
            unclaimed: Mutex::new(unclaimed),
            watch: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(HashSet::new()),
            last_group_scan: Mutex::new(Instant::now()),
            daemons: Mutex::new(workers_daemon.into_iter().collect()),
            dialer: Mutex::new(dialer),
            pool: Mutex::new(Vec::new()),
            retired: Mutex::new(Vec::new()),
            servers: Mutex::new(HashMap::new()),
            recycles: Mutex::new(BTreeMap::new()),
            servers_started: AtomicU64::new(0),
        };
        if mode == ExecMode::Persistent {
            // One server up front: a broken env fails here, as a daemon that will not start does.
            let s = exec.start_server().await?;
            exec.give_back(s);
        }
        Ok(exec)
    }

    pub fn deadline(&self) -> Duration {
        self.opts.deadline
    }

    /// Every daemon started so far (their pids are their process group ids).
    pub fn daemon_pids(&self) -> Vec<i32> {
        self.daemons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The current daemon's pid (0 in spawn mode).
    pub fn daemon_pid(&self) -> i32 {
        self.daemon_pid.load(Ordering::Relaxed)
    }

    pub fn daemon_restarts(&self) -> u64 {
        self.restarts.load(Ordering::Relaxed)
    }

    /// Persistent mode: why servers recycled themselves so far, by reason, with counts.
    pub fn recycles(&self) -> BTreeMap<String, u64> {
        self.recycles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// Persistent mode: servers started so far (one per lane, plus one per recycle or crash).
    pub fn servers_started(&self) -> u64 {
        self.servers_started.load(Ordering::Relaxed)
    }

    /// Live processes this executor runs besides forked workers: the daemon or warm server, or
    /// every persistent server (for CPU accounting).
    pub fn server_pids(&self) -> Vec<i32> {
        let mut pids: Vec<i32> = self
            .servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .copied()
            .collect();
        pids.extend(Some(self.daemon_pid()).filter(|p| *p > 0));
        pids
    }

    /// Whether the write side is half-closed after the case. Always, except in reuse mode for a
    /// case that is exactly one complete request ending in -4: that worker should stay for the
    /// next case. A pure function of the bytes and the mode, so replays do the same.
    pub fn close_after_write(mode: ExecMode, dialect: Dialect, bytes: &[u8]) -> bool {
        if mode != ExecMode::Reuse {
            return true;
        }
        let (reqs, err) = decode_requests(dialect, bytes);
        let complete = err.is_none()
            && reqs.len() == 1
            && reqs[0].request.final_marker == Some(-4)
            && reqs[0]
                .spans
                .iter()
                .any(|s| s.kind == SpanKind::FinalMarker);
        !complete
    }

    /// Run one case on this lane (reusing its worker when the mode allows). With coverage, the
    /// lines it ran are kept for `take_unclaimed_coverage`.
    pub async fn exec(&self, lane: &mut Lane, bytes: Arc<Vec<u8>>) -> Observation {
        let (obs, lines) = self.exec_traced(lane, bytes).await;
        if let Some(lines) = lines {
            merge_lines(
                &mut self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()),
                lines,
            );
        }
        obs
    }

    /// The lines of pyspark that servers' start-ups and the cases run through `exec` reached
    /// since the last call (seed calibration's, say), merged.
    pub fn take_unclaimed_coverage(&self) -> CaseLines {
        std::mem::take(&mut *self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// `exec`, and with coverage the lines of pyspark the case ran (None: not traced, or the
    /// case ended without its server or child reporting them, e.g. a crash or a hang).
    pub async fn exec_traced(
        &self,
        lane: &mut Lane,
        bytes: Arc<Vec<u8>>,
    ) -> (Observation, Option<CaseLines>) {
        if self.mode == ExecMode::Persistent {
            return self.exec_persistent(bytes).await;
        }
        let obs = self.exec_forked(lane, bytes).await;
        let lines = match (&self.covdir, obs.pid) {
            (Some(dir), Some(pid)) if child_reports(&obs.outcome) => {
                take_child_lines(dir.path(), pid, self.opts.deadline).await
            }
            _ => None,
        };
        (obs, lines)
    }

    /// A case on a worker the daemon (or warm fork server) forked, or a spawned one.
    async fn exec_forked(&self, lane: &mut Lane, bytes: Arc<Vec<u8>>) -> Observation {
        let started = Instant::now();
        let close = Executor::close_after_write(self.mode, self.dialect, &bytes);
        let generation = self.generation.load(Ordering::Relaxed);
        let reused = match lane.kept.take() {
            Some(k) if k.daemon_generation == generation => Some((k.conn, k.reply_base)),
            Some(k) => {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&k.conn.pid);
                None
            }
            None => None,
        };
        let reused_worker = reused.is_some();
        let (mut conn, base) = match reused {
            Some(c) => c,
            None => match self.connect(started, close).await {
                Ok(c) => {
                    let base = c.handshake_in.len() as u64;
                    (c, base)
                }
                Err(obs) => return obs,
            },
        };
        let pid = conn.pid;
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(pid);
        if let Some(dir) = &self.covdir {
            // A file an earlier child of the same pid left too late: not this case's lines.
            let _ = std::fs::remove_file(dir.path().join(pid.to_string()));
        }
        let result = self.run_case(&mut conn, &bytes, close, base).await;

        let mut obs = Observation {
            reused_worker,
            ..Observation::of(pid, close)
        };
        let mut keep = None;
        match &result.reply {
            Ok(reply) => {
                obs.judge_reply(&result, reply);
                if let ReplyEnd::Completed {
                    final_marker: -4, ..
                } = reply.end
                {
                    if self.mode == ExecMode::Reuse && !close {
                        keep = Some(reply.end_offset);
                    }
                }
            }
            Err(_) => {
                // Spawn mode runs direct workers: wait for the worker's exit status. The fork
                // server's daemon is looked at without waiting (a dying daemon is found by the
                // next connect), so a crash costs no time.
                let settle = if self.mode == ExecMode::Spawn {
                    Duration::from_secs(2)
                } else {
                    Duration::ZERO
                };
                let facts = self.facts(Some(pid), settle).await;
                obs.outcome = judge_task(&result, &facts, |_| Outcome::Harness {
                    error: "a failed read judged as a completed reply".into(),
                });
                if matches!(obs.outcome, Outcome::DaemonDied { .. }) {
                    obs.daemon_restarted = self.restart().await;
                }
                if matches!(obs.outcome, Outcome::WorkerCrashed { .. }) {
                    obs.traceback = self.take_fault_dump(pid);
                }
                if matches!(obs.outcome, Outcome::Hang { .. }) {
                    obs.worker_at_deadline = process_state(pid);
                }
                if matches!(obs.outcome, Outcome::Hang { .. }) && self.mode != ExecMode::Spawn {
                    // Closing the socket ends a worker blocked on a read; one that is busy gets killed.
                    drop(conn);
                    let mut guard = self.workers.lock().await;
                    if let Some(w) = guard.as_mut() {
                        let _ = w.kill_worker(pid).await;
                    }
                    self.in_flight
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .remove(&pid);
                    let _ = self.take_fault_dump(pid);
                    obs.elapsed = started.elapsed();
                    return obs;
                }
            }
        }
        match keep {
            // A kept worker stays "held": alive by design, never a leak.
            Some(end) => {
                lane.kept = Some(KeptWorker {
                    conn,
                    reply_base: end,
                    daemon_generation: generation,
                })
            }
            None => {
                self.in_flight
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&pid);
                drop(conn);
                if self.mode != ExecMode::Spawn {
                    self.watch
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .push_back(Watched {
                            pid,
                            since: Instant::now(),
                            bytes: bytes.clone(),
                            group: 0,
                        });
                }
            }
        }
        obs.elapsed = started.elapsed();
        obs
    }

    /// Run a case on a fresh worker (minimisation, confirmation, replay), whatever the mode.
    pub async fn exec_fresh(&self, bytes: Arc<Vec<u8>>) -> Observation {
        let mut lane = Lane::default();
        self.exec(&mut lane, bytes).await
    }

    /// Write the case in one write (then half-close unless a reused worker should stay) and read
    /// the reply, within the deadline.
    async fn run_case(
        &self,
        conn: &mut Connection,
        bytes: &[u8],
        close: bool,
        base: u64,
    ) -> TaskResult {
        let mut steps = vec![WriteStep::Write {
            start: 0,
            end: bytes.len(),
            chunk: None,
        }];
        if close {
            steps.push(WriteStep::ShutdownWrite);
        }
        let mut transcript = Transcript::default();
        session::run_task(
            &mut conn.reader,
            &mut conn.writer,
            self.dialect,
            bytes,
            &WritePlan { steps },
            base,
            &self.session,
            &mut transcript,
        )
        .await
    }

    /// Persistent mode: one case on an idle server of the pool (a new one when none is idle).
    /// The server says on its side channel when it is ready for the next case (or why it
    /// recycles); a server that hangs, crashes or stops answering is not given back.
    async fn exec_persistent(&self, bytes: Arc<Vec<u8>>) -> (Observation, Option<CaseLines>) {
        let mut started = Instant::now();
        let mut server = match self.take_server().await {
            Ok(s) => s,
            Err(e) => {
                let obs = Observation {
                    outcome: Outcome::Harness {
                        error: format!("no persistent server: {e}"),
                    },
                    elapsed: started.elapsed(),
                    ..Observation::of(0, true)
                };
                return (obs, None);
            }
        };
        // A server started for this case: its start-up is not the case's time (calibration
        // drops seeds slower than half the deadline).
        started = started.max(server.ready_at);
        let dialer = Dialer {
            addr: server.addr.clone(),
            secret: self.server.secret.clone(),
            // The server writes its own pid where a forked worker's goes: a child of ours.
            daemon_pid: std::process::id() as i32,
            timeout: self.launch.connect_timeout,
        };
        let mut conn = match dialer.connect().await {
            Ok(c) => c,
            Err(e) => {
                let exit = server.wait_exit(Duration::from_secs(1)).await;
                let facts = WorkerFacts {
                    pid: server.pid,
                    daemon: DaemonFate::NoDaemon,
                    worker_exit: exit,
                };
                let obs = Observation {
                    outcome: connect_failure(e, &facts),
                    elapsed: started.elapsed(),
                    ..Observation::of(server.pid, true)
                };
                self.discard(server, "would not take a connection").await;
                return (obs, None);
            }
        };
        let pid = conn.pid;
        let base = conn.handshake_in.len() as u64;
        let result = self.run_case(&mut conn, &bytes, true, base).await;
        drop(conn);
        let mut obs = Observation::of(pid, true);
        obs.reused_worker = server.served > 0;
        let mut lines = None;
        match &result.reply {
            Ok(reply) => {
                obs.judge_reply(&result, reply);
                // The reply is complete: wait for the server's word that its state is reset.
                match server.hear(self.opts.deadline).await {
                    Heard::Event(mut ev) if ev.done.is_some() => {
                        lines = ev.cov.take();
                        self.after_case(server, ev, &bytes).await
                    }
                    Heard::Event(ev) => {
                        tracing::warn!("persistent server {}: unexpected {ev:?}", server.pid);
                        self.discard(server, "said something other than done").await
                    }
                    Heard::Gone => self.discard(server, "exited after its case").await,
                    Heard::Silent => {
                        server.kill();
                        self.discard(server, "no word after its case").await
                    }
                }
            }
            Err(ReadFailure::Deadline { .. }) => {
                obs.outcome = judge_task(&result, &WorkerFacts::default(), |_| Outcome::Passed);
                obs.worker_at_deadline = process_state(pid);
                server.kill();
                let _ = server.wait_exit(Duration::from_secs(2)).await;
                let _ = self.take_fault_dump(pid);
                self.discard(server, "hung").await;
            }
            Err(_) => {
                // Alive (it says done) or dead (its side channel closes): the exit status says how.
                let heard = server.hear(Duration::from_secs(2)).await;
                let alive = matches!(&heard, Heard::Event(ev) if ev.done.is_some());
                let exit = if alive {
                    None
                } else {
                    server.wait_exit(Duration::from_secs(2)).await
                };
                let facts = WorkerFacts {
                    pid,
                    daemon: DaemonFate::NoDaemon,
                    worker_exit: exit,
                };
                obs.outcome = judge_task(&result, &facts, |_| Outcome::Harness {
                    error: "a failed read judged as a completed reply".into(),
                });
                if matches!(obs.outcome, Outcome::WorkerCrashed { .. }) {
                    obs.traceback = self.take_fault_dump(pid);
                }
                match heard {
                    Heard::Event(mut ev) if alive => {
                        lines = ev.cov.take();
                        self.after_case(server, ev, &bytes).await
                    }
                    _ => {
                        if exit.is_some() {
                            self.restarts.fetch_add(1, Ordering::Relaxed);
                        } else {
                            server.kill();
                        }
                        self.discard(server, "died in its case").await
                    }
                }
            }
        }
        obs.elapsed = started.elapsed();
        (obs, lines)
    }

    /// An idle persistent server, or a new one.
    async fn take_server(&self) -> anyhow::Result<Server> {
        loop {
            let next = self.pool.lock().unwrap_or_else(|p| p.into_inner()).pop();
            match next {
                Some(mut s) => {
                    if s.exited().is_none() {
                        return Ok(s);
                    }
                    self.discard(s, "exited while idle").await
                }
                None => return self.start_server().await,
            }
        }
    }

    async fn start_server(&self) -> anyhow::Result<Server> {
        let mut s = Server::start(&self.env, ServerKind::Persistent, &self.server).await?;
        if let Some(lines) = s.startup.take() {
            merge_lines(
                &mut self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()),
                lines,
            );
        }
        self.servers_started.fetch_add(1, Ordering::Relaxed);
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(s.pgid(), s.pid);
        self.daemons
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(s.pgid());
        Ok(s)
    }

    /// Persistent mode: start servers until `n` are idle (a lane's first case then does not
    /// wait for one). Other modes: nothing.
    pub async fn prestart(&self, n: usize) -> anyhow::Result<()> {
        if self.mode != ExecMode::Persistent {
            return Ok(());
        }
        while self.pool.lock().unwrap_or_else(|p| p.into_inner()).len() < n {
            let s = self.start_server().await?;
            self.give_back(s);
        }
        Ok(())
    }

    fn give_back(&self, s: Server) {
        self.pool.lock().unwrap_or_else(|p| p.into_inner()).push(s);
    }

    /// After a persistent case the server answered `done`: back to the pool, or, when it
    /// recycles, waited for; children it reports are watched like forked workers.
    async fn after_case(&self, mut server: Server, ev: super::server::Event, bytes: &Arc<Vec<u8>>) {
        server.served = ev.done.unwrap_or(server.served + 1);
        let Some(why) = ev.recycle else {
            self.give_back(server);
            return;
        };
        self.count_recycle(&why);
        if ev.children.is_empty() {
            if server.wait_exit(Duration::from_secs(2)).await.is_none() {
                server.kill();
                let _ = server.wait_exit(Duration::from_secs(2)).await;
            }
            self.forget(&server);
            return;
        }
        let now = Instant::now();
        {
            let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            for child in &ev.children {
                watch.push_back(Watched {
                    pid: *child,
                    since: now,
                    bytes: bytes.clone(),
                    group: server.pgid(),
                });
            }
        }
        let _ = server.wait_exit(Duration::from_secs(2)).await;
        self.forget(&server);
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Retired {
                server,
                until: now + LEAK_GRACE + Duration::from_secs(1),
            });
    }

    /// Counted by reason, with numbers taken out ("served N cases").
    fn count_recycle(&self, why: &str) {
        let mut key = String::with_capacity(why.len());
        for c in why.chars() {
            if c.is_ascii_digit() {
                if !key.ends_with('N') {
                    key.push('N');
                }
            } else {
                key.push(c);
            }
        }
        *self
            .recycles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_default() += 1;
    }

    /// A server that will not serve again (killed, crashed, or gone): reaped and forgotten.
    async fn discard(&self, mut server: Server, why: &str) {
        self.count_recycle(&format!("discarded: {why}"));
        if server.wait_exit(Duration::from_millis(500)).await.is_none() {
            server.kill();
            let _ = server.wait_exit(Duration::from_secs(2)).await;
        }
        self.forget(&server);
    }

    fn forget(&self, server: &Server) {
        self.servers
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&server.pgid());
    }

    async fn connect(&self, started: Instant, close: bool) -> Result<Connection, Observation> {
        let fail = |outcome: Outcome, restarted: bool| Observation {
            outcome,
            traceback: None,
            pid: None,
            reply: None,
            close_after_write: close,
            elapsed: started.elapsed(),
            daemon_restarted: restarted,
            reused_worker: false,
            worker_at_deadline: None,
        };
        let dialer = self
            .dialer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let result = match dialer {
            Some(d) => d.connect().await,
            None => {
                let mut guard = self.workers.lock().await;
                match guard.as_mut() {
                    Some(w) => w.connect(None).await,
                    None => {
                        drop(guard);
                        let restarted = self.restart().await;
                        return Err(fail(
                            Outcome::Harness {
                                error: "no daemon: a restart failed earlier".into(),
                            },
                            restarted,
                        ));
                    }
                }
            }
        };
        let e = match result {
            Ok(c) => return Ok(c),
            Err(e) => e,
        };
        // A daemon killed a moment ago may not be reapable yet: give it a moment to show its fate.
        let facts = self.facts(None, Duration::from_secs(1)).await;
        let outcome = connect_failure(e, &facts);
        let restarted = matches!(outcome, Outcome::DaemonDied { .. }) && self.restart().await;
        Err(fail(outcome, restarted))
    }

    /// The facts `verdict` judges by, from the executor's `Workers`.
    async fn facts(&self, pid: Option<i32>, settle: Duration) -> WorkerFacts {
        let mut guard = self.workers.lock().await;
        match guard.as_mut() {
            Some(w) => w.facts(pid, settle).await,
            None => WorkerFacts {
                pid: pid.unwrap_or(0),
                ..WorkerFacts::default()
            },
        }
    }

    /// Replace a dead daemon with a new one. True when the new one runs.
    async fn restart(&self) -> bool {
        if matches!(self.mode, ExecMode::Spawn | ExecMode::Persistent) {
            return false; // no daemon to restart: a worker (or server) per case or lane
        }
        let mut guard = self.workers.lock().await;
        if let Some(w) = guard.as_mut() {
            if w.running() {
                return true; // another lane restarted it already
            }
        }
        if let Some(old) = guard.take() {
            let _ = old.shutdown(Duration::from_millis(500)).await;
        }
        let start = ExecStart {
            env: &self.env,
            mode: self.mode,
            launch: &self.launch,
            server: &self.server,
        };
        match Host::start(&start).await {
            Ok(mut w) => {
                if let Some(lines) = w.take_startup() {
                    merge_lines(
                        &mut self.unclaimed.lock().unwrap_or_else(|p| p.into_inner()),
                        lines,
                    );
                }
                *self.dialer.lock().unwrap_or_else(|p| p.into_inner()) =
                    w.dialer(&self.launch, &self.server.secret);
                self.daemon_pid
                    .store(w.pid().unwrap_or(0), Ordering::Relaxed);
                self.daemons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(w.pid());
                *guard = Some(w);
                self.generation.fetch_add(1, Ordering::Relaxed);
                self.restarts.fetch_add(1, Ordering::Relaxed);
                true
            }
            Err(e) => {
                tracing::error!("restarting the daemon failed: {e}");
                false
            }
        }
    }

    /// The faulthandler dump a worker killed by a fatal signal left behind (empty files, from
    /// workers we SIGKILLed, say nothing).
    fn take_fault_dump(&self, pid: i32) -> Option<String> {
        let path = self.faulthandler.path().join(pid.to_string());
        let text = std::fs::read_to_string(&path).ok();
        let _ = std::fs::remove_file(&path);
        text.filter(|t| !t.trim().is_empty())
    }

    /// Workers whose case ended more than `grace` ago and that still run as children of the
    /// daemon (attributed to their case), and, every few seconds, any other process of the
    /// daemon's group older than `grace` that is neither the daemon nor a worker we hold (a
    /// grandchild a task left behind: no case known). All are SIGKILLed once reported.
    pub async fn leaked(&self, grace: Duration) -> Vec<Leak> {
        let daemon = self.daemon_pid.load(Ordering::Relaxed);
        let mut due = vec![];
        let watched: HashSet<i32> = {
            let mut watch = self.watch.lock().unwrap_or_else(|p| p.into_inner());
            while watch.front().is_some_and(|w| w.since.elapsed() >= grace) {
                due.push(watch.pop_front().expect("front exists"));
            }
            watch.iter().map(|w| w.pid).collect()
        };
        let in_flight = self
            .in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        let alive = |w: &Watched| {
            if w.group != 0 {
                procs::stat(w.pid).is_some_and(|s| s.pgrp == w.group && !s.is_dead())
            } else {
                procs::live_child_of(w.pid, daemon)
            }
        };
        let mut leaks: Vec<Leak> = due
            .into_iter()
            .filter(|w| !in_flight.contains(&w.pid) && alive(w))
            .map(|w| Leak {
                pid: w.pid,
                cmdline: procs::cmdline(w.pid),
                bytes: Some(w.bytes),
            })
            .collect();
        let scan_due = {
            let mut last = self
                .last_group_scan
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            let due = last.elapsed() >= GROUP_SCAN_EVERY;
            if due {
                *last = Instant::now();
            }
            due
        };
        let (groups, servers): (Vec<i32>, HashSet<i32>) = if self.mode == ExecMode::Persistent {
            let live = self
                .servers
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let mut groups: Vec<i32> = live.keys().copied().collect();
            groups.extend(
                self.retired
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .iter()
                    .map(|r| r.server.pgid()),
            );
            (groups, live.values().copied().collect())
        } else if daemon > 1 && self.mode != ExecMode::Spawn {
            (vec![daemon], HashSet::from([daemon]))
        } else {
            (vec![], HashSet::new())
        };
        if scan_due && !groups.is_empty() {
            for (pid, cmd) in crate::worker::leftover_processes(&groups) {
                let known = servers.contains(&pid)
                    || in_flight.contains(&pid)
                    || watched.contains(&pid)
                    || leaks.iter().any(|l| l.pid == pid);
                if !known
                    && procs::stat(pid)
                        .and_then(|s| s.age())
                        .is_some_and(|age| age > grace)
                {
                    leaks.push(Leak {
                        pid,
                        cmdline: cmd,
                        bytes: None,
                    });
                }
            }
        }
        if !leaks.is_empty() {
            let mut guard = self.workers.lock().await;
            for l in &leaks {
                let killed = match guard.as_mut() {
                    Some(w) => w.kill_worker(l.pid).await,
                    None => false,
                };
                if !killed {
                    // Not a child of the daemon (a grandchild, or a persistent case's child): it
                    // is in a process group of ours, which is ours to clean up.
                    unsafe { libc::kill(l.pid, libc::SIGKILL) };
                }
            }
        }
        // Recycled servers kept for their children's grace period: done with.
        let now = Instant::now();
        self.retired
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|r| r.until > now);
        leaks
    }

    /// Cases whose workers are still being watched for leaks.
    pub fn watched(&self) -> usize {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Close reused connections first (drop the lanes), then call this: stops the daemon (or
    /// every persistent server) and reports what was still alive in their process groups.
    pub async fn shutdown(self) -> Option<ExecShutdown> {
        let grace = Duration::from_secs(3);
        let mut leftovers = vec![];
        let servers: Vec<Server> = self
            .pool
            .into_inner()
            .unwrap_or_else(|p| p.into_inner())
            .into_iter()
            .chain(
                self.retired
                    .into_inner()
                    .unwrap_or_else(|p| p.into_inner())
                    .into_iter()
                    .map(|r| r.server),
            )
            .collect();
        let any = !servers.is_empty();
        for s in servers {
            leftovers.extend(s.shutdown(grace).await);
        }
        match self.workers.into_inner() {
            Some(w) => leftovers.extend(w.shutdown(grace).await),
            None if !any => return None,
            None => {}
        }
        Some(ExecShutdown { leftovers })
    }
}

/// Merge `more` into `into`, each file's lines sorted and once.
fn merge_lines(into: &mut CaseLines, more: CaseLines) {
    for (file, lines) in more {
        let have = into.entry(file).or_default();
        have.extend(lines);
        have.sort_unstable();
        have.dedup();
    }
}

/// Whether a warm-fork child ends such a case by writing its lines: not one killed by a signal
/// or at the deadline, nor one that never ran (no connection, the server gone).
fn child_reports(outcome: &Outcome) -> bool {
    !matches!(
        outcome,
        Outcome::Hang { .. }
            | Outcome::WorkerCrashed { .. }
            | Outcome::DaemonDied { .. }
            | Outcome::Harness { .. }
    )
}

/// The lines a warm-fork child `pid` wrote to `dir` once its connection closed (renamed into
/// place whole), waited for up to `limit`; the file is removed.
async fn take_child_lines(dir: &std::path::Path, pid: i32, limit: Duration) -> Option<CaseLines> {
    let path = dir.join(pid.to_string());
    let until = Instant::now() + limit;
    loop {
        match std::fs::read(&path) {
            Ok(bytes) => {
                let _ = std::fs::remove_file(&path);
                return serde_json::from_slice(&bytes).ok();
            }
            Err(_) if Instant::now() < until => {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Err(_) => {
                tracing::debug!("warm-fork child {pid}: no coverage within {limit:?}");
                return None;
            }
        }
    }
}

/// Where workers leave faulthandler dumps. Every worker creates, and on a clean exit removes, a
/// file there, hundreds of times a second: on tmpfs (/dev/shm) that costs no disk journal.
fn fault_dump_dir() -> std::io::Result<tempfile::TempDir> {
    let builder = || {
        let mut b = tempfile::Builder::new();
        b.prefix("fakejvm-fuzz-faults-");
        b
    };
    let shm = std::path::Path::new("/dev/shm");
    match shm.is_dir().then(|| builder().tempdir_in(shm)) {
        Some(Ok(dir)) => Ok(dir),
        _ => builder().tempdir(),
    }
}

/// TCP daemon modes get a lock-free dialer; direct workers are started by `Workers` itself.
fn dialer_for(w: &Workers, launch: &LaunchOptions) -> Option<Dialer> {
    if launch.mode != Mode::Daemon {
        return None;
    }
    Dialer::new(
        w.daemon_announce(),
        w.secret(),
        w.daemon_pid()?,
        launch.connect_timeout,
    )
}

/// One line on what a process is doing, from /proc: its scheduler state, the kernel function it
/// sleeps in, its CPU time so far and its resident memory. None once it is gone.
fn process_state(pid: i32) -> Option<String> {
    let s = procs::stat(pid)?;
    let hz = procs::clock_ticks();
    // SAFETY: sysconf only reads a system constant.
    let page = (unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64).max(1.0);
    let other = s.state.to_string();
    let state = match s.state {
        'R' => "R (running: busy, not waiting for input)",
        'S' => "S (sleeping)",
        'D' => "D (uninterruptible sleep)",
        'T' | 't' => "T (stopped)",
        'Z' => "Z (exited, not reaped)",
        _ => &other,
    };
    let wchan = std::fs::read_to_string(format!("/proc/{pid}/wchan")).unwrap_or_default();
    let wchan = if wchan.is_empty() || wchan == "0" {
        "-".to_string()
    } else {
        wchan
    };
    Some(format!(
        "state {state}, in {wchan}, user {:.2} s, system {:.2} s, RSS {:.0} MiB",
        s.utime as f64 / hz,
        s.stime as f64 / hz,
        s.rss_pages as f64 * page / (1024.0 * 1024.0)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataItem, TaskRequest};

    #[test]
    fn reuse_keeps_the_write_side_open_only_for_complete_requests() {
        let req = TaskRequest::non_udf(
            "3.11",
            vec![0x80, 5, 0x4e, 0x2e],
            vec![DataItem::Frame(b"x".to_vec())],
        );
        for d in Dialect::ALL {
            let bytes = d.encode_request(&req).bytes;
            assert!(
                !Executor::close_after_write(ExecMode::Reuse, d, &bytes),
                "{d:?}"
            );
            assert!(
                Executor::close_after_write(ExecMode::Reuse, d, &bytes[..bytes.len() - 1]),
                "{d:?}"
            );
            assert!(
                Executor::close_after_write(ExecMode::ForkServer, d, &bytes),
                "{d:?}"
            );
        }
    }

    #[test]
    fn process_state_is_one_line_from_proc() {
        let line = process_state(std::process::id() as i32).expect("our own state");
        // The test harness's main thread (the one /proc/PID/stat describes) may be asleep.
        assert!(
            line.starts_with("state R") || line.starts_with("state S"),
            "{line}"
        );
        assert!(
            line.contains(", user ") && line.contains(", system "),
            "{line}"
        );
        assert!(line.contains("MiB"), "{line}");
        assert_eq!(process_state(-1), None);
    }
}
