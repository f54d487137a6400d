//! Running one case against a real worker, three ways:
//! - **fork server** (default): one long-lived `pyspark.daemon`; every case connects, the daemon
//!   forks a fresh worker (about 2.7 ms, no interpreter start), the case runs, the worker exits;
//! - **reuse**: the same daemon with SPARK_REUSE_WORKER, each lane keeps one worker for case
//!   after case, and reconnects only when the worker could not be reused;
//! - **spawn**: a new `python -m pyspark.worker` per case (what fuzzing costs without a fork
//!   server; for the benchmark).
//!
//! A case is written in ONE write on a TCP_NODELAY socket, then (unless a reused worker should
//! read the next case) the write side is half-closed: a truncated request then means "the JVM
//! side went away mid-request", which is what exposes the short-read paths, and a worker
//! waiting for more input gets EOF instead of hanging. Fatal signals are caught by pointing
//! PYTHON_FAULTHANDLER_DIR at a private directory: a worker that dies by SIGSEGV leaves a dump
//! named by its pid (a worker that finishes removes its file itself).

use super::dial::Dialer;
use crate::protocol::{decode_requests, Dialect, Reply, ReplyEnd, SpanKind};
use crate::pyenv::PythonEnv;
use crate::session::{self, SessionOptions, Transcript, WritePlan, WriteStep};
use crate::verdict::{connect_failure, judge_task, Outcome, WorkerFacts};
use crate::wire::Limits;
use crate::worker::{procs, Connection, DaemonState, LaunchOptions, Mode, Workers};
use serde::{Deserialize, Serialize};
use std::collections::{HashSet, VecDeque};
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
}

impl ExecMode {
    pub fn name(self) -> &'static str {
        match self {
            ExecMode::ForkServer => "fork-server",
            ExecMode::Reuse => "reuse",
            ExecMode::Spawn => "spawn",
        }
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
}

impl Default for ExecOptions {
    fn default() -> Self {
        ExecOptions {
            deadline: Duration::from_secs(2),
            limits: FUZZ_LIMITS,
            memory_limit_mb: None,
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
    workers: tokio::sync::Mutex<Option<Workers>>,
    /// Bumped on every daemon restart: a lane's reused connection to an older daemon is dropped.
    generation: AtomicU64,
    daemon_pid: AtomicI32,
    restarts: AtomicU64,
    faulthandler: tempfile::TempDir,
    watch: Mutex<VecDeque<Watched>>,
    /// Workers we hold a connection to: a case in flight, or kept by a lane for reuse.
    in_flight: Mutex<HashSet<i32>>,
    last_group_scan: Mutex<Instant>,
    /// Every daemon this executor started (each leads its own process group).
    daemons: Mutex<Vec<i32>>,
    /// Daemon modes: connects without the `workers` lock (see fuzz::dial).
    dialer: Mutex<Option<Dialer>>,
}

impl Executor {
    pub async fn start(
        env: PythonEnv,
        dialect: Dialect,
        mode: ExecMode,
        opts: ExecOptions,
    ) -> anyhow::Result<Executor> {
        let faulthandler = fault_dump_dir()?;
        let launch = LaunchOptions {
            mode: if mode == ExecMode::Spawn {
                Mode::Direct
            } else {
                Mode::Daemon
            },
            reuse: mode == ExecMode::Reuse,
            extra_env: vec![(
                "PYTHON_FAULTHANDLER_DIR".into(),
                faulthandler.path().display().to_string(),
            )],
            connect_timeout: Duration::from_secs(10),
            rlimit_as: opts
                .memory_limit_mb
                .map(|mb| mb.saturating_mul(1024 * 1024)),
            ..LaunchOptions::default()
        };
        let workers = Workers::start(&env.python, launch.clone()).await?;
        let workers_daemon = workers.daemon_pid();
        let dialer = dialer_for(&workers, &launch);
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
            daemon_pid: AtomicI32::new(workers.daemon_pid().unwrap_or(0)),
            workers: tokio::sync::Mutex::new(Some(workers)),
            generation: AtomicU64::new(0),
            restarts: AtomicU64::new(0),
            faulthandler,
            watch: Mutex::new(VecDeque::new()),
            in_flight: Mutex::new(HashSet::new()),
            last_group_scan: Mutex::new(Instant::now()),
            daemons: Mutex::new(workers_daemon.into_iter().collect()),
            dialer: Mutex::new(dialer),
        };
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

    /// Run one case on this lane (reusing its worker when the mode allows).
    pub async fn exec(&self, lane: &mut Lane, bytes: Arc<Vec<u8>>) -> Observation {
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
        let mut steps = vec![WriteStep::Write {
            start: 0,
            end: bytes.len(),
            chunk: None,
        }];
        if close {
            steps.push(WriteStep::ShutdownWrite);
        }
        let mut transcript = Transcript::default();
        let result = session::run_task(
            &mut conn.reader,
            &mut conn.writer,
            self.dialect,
            &bytes,
            &WritePlan { steps },
            base,
            &self.session,
            &mut transcript,
        )
        .await;

        let mut obs = Observation {
            outcome: Outcome::Passed,
            traceback: None,
            pid: Some(pid),
            reply: None,
            close_after_write: close,
            elapsed: Duration::ZERO,
            daemon_restarted: false,
            reused_worker,
            worker_at_deadline: None,
        };
        let mut keep = None;
        match &result.reply {
            Ok(reply) => {
                if let ReplyEnd::Exception { traceback } = &reply.end {
                    obs.traceback = Some(traceback.clone());
                }
                obs.outcome = judge_task(
                    &result,
                    &WorkerFacts {
                        pid,
                        ..WorkerFacts::default()
                    },
                    |_| Outcome::Passed,
                );
                if let ReplyEnd::Completed {
                    final_marker: -4, ..
                } = reply.end
                {
                    if self.mode == ExecMode::Reuse && !close {
                        keep = Some(reply.end_offset);
                    }
                }
                obs.reply = Some(reply.clone());
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
                    Some(w) => w.connect().await,
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
            Some(w) => WorkerFacts::gather(w, pid, settle).await,
            None => WorkerFacts {
                pid: pid.unwrap_or(0),
                ..WorkerFacts::default()
            },
        }
    }

    /// Replace a dead daemon with a new one. True when the new one runs.
    async fn restart(&self) -> bool {
        if self.mode == ExecMode::Spawn {
            return false; // direct workers: there is no daemon to restart
        }
        let mut guard = self.workers.lock().await;
        if let Some(w) = guard.as_mut() {
            if w.daemon_state() == DaemonState::Running {
                return true; // another lane restarted it already
            }
        }
        if let Some(old) = guard.take() {
            let _ = old.shutdown(Duration::from_millis(500)).await;
        }
        match Workers::start(&self.env.python, self.launch.clone()).await {
            Ok(w) => {
                *self.dialer.lock().unwrap_or_else(|p| p.into_inner()) =
                    dialer_for(&w, &self.launch);
                self.daemon_pid
                    .store(w.daemon_pid().unwrap_or(0), Ordering::Relaxed);
                self.daemons
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .extend(w.daemon_pid());
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
        let mut leaks: Vec<Leak> = due
            .into_iter()
            .filter(|w| !in_flight.contains(&w.pid) && procs::live_child_of(w.pid, daemon))
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
        if scan_due && daemon > 1 && self.mode != ExecMode::Spawn {
            for (pid, cmd) in crate::worker::leftover_processes(&[daemon]) {
                let known = pid == daemon
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
            if let Some(w) = guard.as_mut() {
                for l in &leaks {
                    if w.kill_worker(l.pid).await.is_err() {
                        // Not a child of the daemon (a grandchild): it is in our daemon's process
                        // group, which is ours to clean up.
                        unsafe { libc::kill(l.pid, libc::SIGKILL) };
                    }
                }
            }
        }
        leaks
    }

    /// Cases whose workers are still being watched for leaks.
    pub fn watched(&self) -> usize {
        self.watch.lock().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Close reused connections first (drop the lanes), then call this: stops the daemon and
    /// reports what was still alive in its process group.
    pub async fn shutdown(self) -> Option<crate::worker::ShutdownReport> {
        let w = self.workers.into_inner()?;
        Some(w.shutdown(Duration::from_secs(3)).await)
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
