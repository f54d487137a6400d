//! Fault injection: the `faults` list of a scenario, turned into things done to real workers.
//!
//! - [`spec`]: the faults as typed values (what the scenario file says).
//! - [`plan`]: a task's socket and process faults placed at protocol positions (spans of the
//!   encoded request) and compiled into the session's write steps.
//! - [`process`]: the actions performed at those positions while the task runs, and what became
//!   of the worker and the daemon afterwards.
//! - [`sockfd`]: our end of a worker's TCP connection, for SO_LINGER 0 and SHUT_RD.
//! - the `forkfail` crate (a workspace member): the LD_PRELOAD shim that fails the daemon's fork().
//! - [`report`]: one [`FaultReport`] per fault, for the verdict.
//!
//! [`Injector`] ties them together for the scenario runner: launch settings before the daemon
//! starts, a plan per task, the observations after each task, and the reports at the end.

mod plan;
mod process;
mod report;
mod sockfd;
mod spec;

pub use plan::{compile, resolve, Action, Placement, PlannedAction, TaskPlan};
pub use process::{
    has_ended, observe_daemon, observe_worker, proc_state, Fired, Observed, Performer,
};
pub use report::{fault_lines, Check, Event, FaultReport};
pub use sockfd::our_end_of;
pub use spec::{
    span_name, EnvValue, Errno, Fate, FateExpect, Fault, ForkSchedule, Position, Signal, Target,
};

use crate::verdict::Outcome;
use crate::worker::{errno_label, Mode, Workers};
use forkfail::LogLine;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for a process to reach an expected end (a worker noticing a closed socket,
/// a daemon shutting down) before reporting what it is.
const FATE_GRACE: Duration = Duration::from_secs(3);

/// Checks a scenario's faults against its mode and task count, before anything runs.
pub fn validate(faults: &[Fault], mode: Mode, tasks: usize) -> Result<(), String> {
    let mut seen_launch: Vec<&str> = vec![];
    for (i, f) in faults.iter().enumerate() {
        let at = |m: String| format!("fault #{i} ({}): {m}", f.describe());
        let launch_kind = match f {
            Fault::ForkFail { .. } => Some("fork_fail"),
            Fault::RlimitAs { .. } => Some("rlimit_as"),
            Fault::ExecutorMemory { .. } => Some("executor_memory"),
            _ => None,
        };
        if let Some(k) = launch_kind {
            if seen_launch.contains(&k) {
                return Err(at(format!(
                    "only one `{k}` fault per scenario (it configures the launch)"
                )));
            }
            seen_launch.push(k);
            if f.expect().worker.is_some() {
                return Err(at("`expect.worker` applies to task faults; a launch fault can only expect the daemon's fate".into()));
            }
        }
        if let Some(t) = f.task() {
            if t >= tasks {
                return Err(at(format!(
                    "task {t} does not exist (the scenario has {tasks} task(s), counted from 0)"
                )));
            }
        }
        let needs_daemon = matches!(
            f,
            Fault::ForkFail { .. }
                | Fault::SignalDaemon { .. }
                | Fault::CloseDaemonStdin { .. }
                | Fault::OpenConnection { .. }
        );
        if needs_daemon && !mode.uses_daemon() {
            return Err(at(format!(
                "needs a daemon (mode daemon or uds); this scenario's mode is {mode:?}"
            )));
        }
        let needs_tcp = matches!(
            f,
            Fault::Reset { .. }
                | Fault::HalfClose {
                    direction: crate::session::Direction::FromWorker,
                    ..
                }
        );
        if needs_tcp && mode.is_unix_socket() {
            return Err(at(format!(
                "needs a TCP connection (mode daemon or direct); this scenario's mode is {mode:?}"
            )));
        }
        if !mode.uses_daemon() && f.expect().daemon.is_some() {
            return Err(at(format!(
                "`expect.daemon` needs a daemon; this scenario's mode is {mode:?}"
            )));
        }
    }
    Ok(())
}

/// The verdict's words for a fork-failure errno read where the pid belongs.
pub fn errno_as_pid_note(pyspark: &str, value: i32) -> String {
    format!(
        "pyspark {pyspark} daemon defect: fork() failed with errno {value} ({}) and the daemon wrote {value} where \
         the worker's pid belongs, then closed the connection. Spark's JVM only rejects pid < 0, so it would take \
         {value} for a worker pid",
        errno_label(value)
    )
}

struct Shim {
    path: PathBuf,
    log: PathBuf,
    lines_seen: usize,
}

/// A scenario's faults while it runs.
pub struct Injector {
    faults: Vec<Fault>,
    mode: Mode,
    shim: Option<Shim>,
    /// Events of the launch faults (fork attempts, memory-limit lines), by fault index.
    launch_events: Vec<Vec<Event>>,
    /// Wall-clock ms of the last fork failure that daemon.py retries (EAGAIN, EINTR), to show
    /// the retry's delay.
    retried_failure_ms: Option<u64>,
    fork_failures: usize,
    stderr_mark: usize,
    reports: Vec<Option<FaultReport>>,
}

/// What the runner knows when a task is over.
pub struct TaskEnd<'a> {
    pub task: usize,
    /// The task's worker, if it got one.
    pub pid: Option<i32>,
    pub plan: Option<&'a TaskPlan>,
    pub fired: &'a [Fired],
    pub bytes_sent: u64,
}

impl Injector {
    /// Installs the fork-failure shim into `scratch` when a `fork_fail` fault asks for it.
    pub fn new(faults: &[Fault], mode: Mode, scratch: &Path) -> anyhow::Result<Injector> {
        let shim = if faults.iter().any(|f| matches!(f, Fault::ForkFail { .. })) {
            let path = forkfail::install(scratch).map_err(|e| {
                anyhow::anyhow!(
                    "installing the fork-failure shim into {}: {e}",
                    scratch.display()
                )
            })?;
            Some(Shim {
                path,
                log: scratch.join("forkfail.log"),
                lines_seen: 0,
            })
        } else {
            None
        };
        Ok(Injector {
            faults: faults.to_vec(),
            mode,
            shim,
            launch_events: vec![vec![]; faults.len()],
            retried_failure_ms: None,
            fork_failures: 0,
            stderr_mark: 0,
            reports: vec![None; faults.len()],
        })
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// Environment for the daemon (daemon modes) or each direct worker.
    pub fn launch_env(&self) -> Vec<(String, String)> {
        let mut env = vec![];
        for f in &self.faults {
            match f {
                Fault::ForkFail {
                    errno, schedule, ..
                } => {
                    let shim = self
                        .shim
                        .as_ref()
                        .expect("installed in new() for fork_fail");
                    env.push(("LD_PRELOAD".into(), shim.path.display().to_string()));
                    env.push((forkfail::ENV_WHEN.into(), schedule.shim_value()));
                    env.push((forkfail::ENV_ERRNO.into(), errno.0.to_string()));
                    env.push((forkfail::ENV_LOG.into(), shim.log.display().to_string()));
                }
                Fault::ExecutorMemory { mb, .. } => {
                    env.push(("PYSPARK_EXECUTOR_MEMORY_MB".into(), mb.0.clone()))
                }
                _ => {}
            }
        }
        env
    }

    pub fn rlimit_as(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::RlimitAs { bytes, .. } => Some(*bytes),
            _ => None,
        })
    }

    pub fn plan(
        &self,
        task: usize,
        req: &crate::protocol::EncodedRequest,
    ) -> Result<TaskPlan, String> {
        plan::compile(&self.faults, task, req)
    }

    /// Marks where the task's stderr starts.
    pub fn task_started(&mut self, workers: &Workers) {
        self.stderr_mark = workers.stderr().len();
    }

    /// After a task (and after dropping its connection if it is not reused): cleans up a stopped
    /// worker, records fork attempts and memory-limit lines, observes the worker and the daemon,
    /// and reports the task's faults. Returns the task's outcome when a fault closed the
    /// connection: then no reply could be read and the outcome is what the worker did.
    pub async fn task_ended(&mut self, workers: &mut Workers, end: TaskEnd<'_>) -> Option<Outcome> {
        let stderr = workers.stderr();
        let new_stderr =
            String::from_utf8_lossy(stderr.get(self.stderr_mark..).unwrap_or_default())
                .into_owned();
        self.stderr_mark = stderr.len();
        self.read_fork_log(Some(end.task));
        self.note_memory_lines(end.task, &new_stderr);

        let mine: Vec<usize> = (0..self.faults.len())
            .filter(|&i| self.faults[i].task() == Some(end.task))
            .collect();
        if mine.is_empty() {
            return None;
        }
        let ended_by = end.fired.iter().find(|f| f.ended_task);
        let want_worker = if ended_by.is_some() {
            Some(Fate::Gone)
        } else {
            mine.iter().find_map(|&i| self.faults[i].expect().worker)
        };
        let want_daemon = mine.iter().find_map(|&i| self.faults[i].expect().daemon);
        let worker = match end.pid {
            Some(pid) => Some(observe_worker(workers, pid, want_worker, FATE_GRACE).await),
            None => None,
        };
        let daemon = observe_daemon(workers, want_daemon, FATE_GRACE).await;

        // Seen stopped above; now killed the way Spark kills a hung worker, so nothing is left behind.
        let mut extra_events: Vec<(usize, Event)> = vec![];
        for f in end.fired {
            if matches!(self.faults[f.fault], Fault::StopWorker { .. }) {
                if let Some(pid) = end.pid.filter(|p| !has_ended(*p)) {
                    let via_daemon = workers.mode().uses_daemon();
                    let error = workers.kill_worker(pid).await.err().map(|e| e.to_string());
                    extra_events.push((
                        f.fault,
                        Event::KilledStopped {
                            pid,
                            via_daemon,
                            error,
                        },
                    ));
                }
            }
        }

        for &i in &mine {
            let fault = &self.faults[i];
            let mut r = FaultReport::new(i, fault.describe(), Some(end.task));
            r.placement = end
                .plan
                .and_then(|p| p.placements.iter().find(|(fi, _)| *fi == i))
                .map(|(_, p)| p.clone());
            let mut error = None;
            let fired: Vec<&Fired> = end.fired.iter().filter(|f| f.fault == i).collect();
            if end.pid.is_none() {
                error = Some(format!(
                    "never fired: task {} got no worker (connecting to it failed)",
                    end.task
                ));
            } else if !fired.is_empty() {
                r.fired = true;
                for f in &fired {
                    r.events.push(Event::Action {
                        at_ms: f.at_ms,
                        at_byte: f.at_byte,
                        what: f.what.clone(),
                    });
                    if let Some(e) = &f.error {
                        error = Some(e.clone());
                    }
                }
            } else if let Some(p) = &r.placement {
                // Faults done by the writer itself (pauses, pieces, SHUT_WR) fired if it got there.
                let reached = match fault {
                    Fault::SplitWrites { .. } => end.bytes_sent > p.byte as u64,
                    _ => end.bytes_sent >= p.byte as u64,
                };
                let is_action = end
                    .plan
                    .is_some_and(|pl| pl.actions.iter().any(|a| a.fault == i));
                r.fired = reached && !is_action;
                if !r.fired {
                    error = Some(format!(
                        "never fired: the reply ended (or the connection broke) after {} request byte(s) were written, \
                         before the writer performed the fault at byte {}",
                        end.bytes_sent, p.byte
                    ));
                }
            } else {
                error = Some("never fired".into());
            }
            r.events.extend(
                extra_events
                    .iter()
                    .filter(|(fi, _)| *fi == i)
                    .map(|(_, e)| e.clone()),
            );
            r.worker = worker;
            r.daemon = daemon;
            r.stderr_tail = tail(&new_stderr, 12);
            check(&mut r, "worker", fault.expect().worker, worker);
            check(&mut r, "daemon", fault.expect().daemon, daemon);
            r.settle(error);
            self.reports[i] = Some(r);
        }

        let f = ended_by?;
        let place = end
            .plan
            .and_then(|p| p.placements.iter().find(|(fi, _)| *fi == f.fault))
            .map(|(_, p)| p.to_string())
            .unwrap_or_default();
        let pid = end.pid.unwrap_or(0);
        Some(match worker {
            Some(Observed::Ended { exit }) => Outcome::WorkerCrashed {
                pid,
                exit,
                detail: format!(
                    "{} [{place}]; no reply could be read after that; the worker then ended",
                    f.what
                ),
            },
            _ => Outcome::Hang {
                after_ms: FATE_GRACE.as_millis() as u64,
                at_byte: 0,
            },
        })
    }

    /// After the last task, before shutdown: reports for the launch faults (and for task faults
    /// whose task never ran).
    pub async fn finish(&mut self, workers: &mut Workers) {
        self.read_fork_log(None);
        let stderr = workers.stderr();
        let rest = String::from_utf8_lossy(stderr.get(self.stderr_mark..).unwrap_or_default())
            .into_owned();
        for i in 0..self.faults.len() {
            if self.reports[i].is_some() {
                continue;
            }
            let fault = self.faults[i].clone();
            let mut r = FaultReport::new(i, fault.describe(), fault.task());
            let error = match &fault {
                Fault::ForkFail { .. } => {
                    r.fired = self.fork_failures > 0;
                    (!r.fired).then(|| "never fired: no fork() of the daemon was failed (were there fewer forks than the schedule names?)".to_string())
                }
                Fault::RlimitAs { bytes, .. } => {
                    r.fired = true;
                    r.events.push(Event::RlimitSet {
                        bytes: *bytes,
                        daemon: self.mode.uses_daemon(),
                    });
                    None
                }
                Fault::ExecutorMemory { mb, .. } => {
                    r.fired = true;
                    r.events.push(Event::ExecutorMemory {
                        mb: mb.0.clone(),
                        daemon: self.mode.uses_daemon(),
                    });
                    None
                }
                _ => Some(format!(
                    "never fired: task {} did not run",
                    fault.task().unwrap_or(0)
                )),
            };
            r.events.extend(self.launch_events[i].iter().cloned());
            let want = fault.expect().daemon;
            let daemon = observe_daemon(workers, want, FATE_GRACE).await;
            r.daemon = daemon;
            r.stderr_tail = tail(&rest, 12);
            check(&mut r, "daemon", want, daemon);
            r.settle(error);
            self.reports[i] = Some(r);
        }
    }

    pub fn into_reports(self) -> Vec<FaultReport> {
        self.reports.into_iter().flatten().collect()
    }

    fn fault_index(&self, pred: impl Fn(&Fault) -> bool) -> Option<usize> {
        self.faults.iter().position(pred)
    }

    /// New lines of the shim's log become events of the fork_fail fault (`task` None: after the
    /// last task).
    fn read_fork_log(&mut self, task: Option<usize>) {
        let Some(i) = self.fault_index(|f| matches!(f, Fault::ForkFail { .. })) else {
            return;
        };
        let Some(shim) = self.shim.as_mut() else {
            return;
        };
        let text = std::fs::read_to_string(&shim.log).unwrap_or_default();
        let lines = LogLine::parse_all(&text);
        let new: Vec<LogLine> = lines.iter().skip(shim.lines_seen).cloned().collect();
        shim.lines_seen = lines.len();
        for line in new {
            let event = match line {
                LogLine::Loaded {
                    pid,
                    when: schedule,
                    errno,
                    ..
                } => Event::ShimLoaded {
                    pid,
                    schedule,
                    errno,
                },
                LogLine::Failed {
                    ordinal,
                    errno,
                    injected,
                    at_ms,
                    ..
                } => {
                    self.fork_failures += injected as usize;
                    // daemon.py (every version) sleeps 1 s and forks once more after these two.
                    self.retried_failure_ms = [libc::EAGAIN, libc::EINTR]
                        .contains(&errno)
                        .then_some(at_ms);
                    Event::ForkFailed {
                        task,
                        ordinal,
                        errno,
                        injected,
                    }
                }
                LogLine::Forked {
                    ordinal,
                    child,
                    at_ms,
                    ..
                } => {
                    let retry_after_ms = self
                        .retried_failure_ms
                        .take()
                        .map(|t| at_ms.saturating_sub(t));
                    Event::Forked {
                        task,
                        ordinal,
                        child,
                        retry_after_ms,
                    }
                }
            };
            self.launch_events[i].push(event);
        }
    }

    /// pyspark prints what it does with PYSPARK_EXECUTOR_MEMORY_MB to the worker's stderr.
    fn note_memory_lines(&mut self, task: usize, stderr: &str) {
        let Some(i) = self
            .fault_index(|f| matches!(f, Fault::ExecutorMemory { .. } | Fault::RlimitAs { .. }))
        else {
            return;
        };
        for l in stderr.lines() {
            let l = l.trim();
            if l.contains("mem limits")
                || l.contains("memory limit")
                || l.starts_with("MemoryError")
            {
                self.launch_events[i].push(Event::WorkerStderr {
                    task,
                    line: l.to_string(),
                });
            }
        }
    }
}

fn check(r: &mut FaultReport, what: &str, want: Option<Fate>, seen: Option<Observed>) {
    let Some(want) = want else { return };
    let (observed, ok) = match seen {
        Some(o) => (o.to_string(), o.satisfies(want)),
        None => ("nothing (no such process)".to_string(), false),
    };
    r.checks.push(Check {
        what: what.into(),
        expected: want.to_string(),
        observed,
        ok,
    });
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
