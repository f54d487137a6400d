//! Fault injection: the `faults` list of a scenario, turned into things done to real workers.
//!
//! - [`spec`]: the faults as typed values (what the scenario file says).
//! - [`plan`]: a task's socket and process faults placed at protocol positions (spans of the
//!   encoded request) and compiled into the session's write steps.
//! - [`process`]: the actions performed at those positions while the task runs, and what became
//!   of the worker and the daemon afterwards.
//! - [`sockfd`]: our end of a worker's TCP connection, for SO_LINGER 0 and SHUT_RD.
//! - the `forkfail` crate (a workspace member): the LD_PRELOAD shim that fails the daemon's fork()
//!   and the daemon's or a worker's socket calls, holds a forked child before its pid, and starts
//!   a process with its low descriptors taken.
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
    span_name, CallSchedule, EnvValue, Errno, Fate, FateExpect, Fault, ForkSchedule, Position,
    ShimProcess, Signal, Syscall, Target,
};

use crate::verdict::Outcome;
use crate::worker::{errno_label, Mode, Workers};
use forkfail::{CallRule, LogLine};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long to wait for a process to reach an expected end (a worker noticing a closed socket,
/// a daemon shutting down) before reporting what it is.
const FATE_GRACE: Duration = Duration::from_secs(3);

/// The most `open_descriptors` may ask for: past it a scenario is a typo, not a test.
const MAX_OPEN_DESCRIPTORS: u32 = 65_536;

/// Checks a scenario's faults against its mode and task count, before anything runs.
pub fn validate(faults: &[Fault], mode: Mode, tasks: usize) -> Result<(), String> {
    let mut seen_launch: Vec<&str> = vec![];
    let syscalls = faults
        .iter()
        .filter(|f| matches!(f, Fault::SyscallFail { .. }))
        .count();
    if syscalls > forkfail::MAX_CALL_RULES {
        return Err(format!(
            "faults: {syscalls} `syscall_fail` faults; the shim takes at most {}",
            forkfail::MAX_CALL_RULES
        ));
    }
    let open_count = faults.iter().find_map(|f| match f {
        Fault::OpenDescriptors { count, .. } => Some(*count),
        _ => None,
    });
    for (i, f) in faults.iter().enumerate() {
        let at = |m: String| format!("fault #{i} ({}): {m}", f.describe());
        let launch_kind = match f {
            Fault::ForkFail { .. } => Some("fork_fail"),
            Fault::RlimitAs { .. } => Some("rlimit_as"),
            Fault::ExecutorMemory { .. } => Some("executor_memory"),
            Fault::OpenDescriptors { .. } => Some("open_descriptors"),
            Fault::RlimitNofile { .. } => Some("rlimit_nofile"),
            Fault::StopChild { .. } => Some("stop_child"),
            _ => None,
        };
        // What these hold is a worker: the failing one, or the stopped child.
        let expects_a_worker = matches!(
            f,
            Fault::SyscallFail {
                process: ShimProcess::Worker,
                ..
            } | Fault::StopChild { .. }
        );
        if let Some(k) = launch_kind {
            if seen_launch.contains(&k) {
                return Err(at(format!(
                    "only one `{k}` fault per scenario (it configures the launch)"
                )));
            }
            seen_launch.push(k);
        }
        if f.task().is_none() && f.expect().worker.is_some() && !expects_a_worker {
            return Err(at("`expect.worker` applies to task faults, a worker's `syscall_fail` and `stop_child`; this launch fault can only expect the daemon's fate".into()));
        }
        match f {
            Fault::SyscallFail {
                process,
                task,
                call,
                errno,
                schedule,
                ..
            } => {
                if let Some(t) = task {
                    if *process == ShimProcess::Daemon {
                        return Err(at("`task` picks a task's worker; the daemon serves every task (leave `task` out with \"process\": \"daemon\")".into()));
                    }
                    if *t >= tasks {
                        return Err(at(format!(
                            "task {t} does not exist (the scenario has {tasks} task(s), counted from 0)"
                        )));
                    }
                }
                if matches!(schedule, CallSchedule::AfterBytes { .. }) && !call.shim().moves_bytes()
                {
                    return Err(at(format!(
                        "`after_bytes` needs a call that moves bytes (send or recv), not {}",
                        call.name()
                    )));
                }
                if errno.0 == libc::EINTR && schedule.fails_forever() {
                    return Err(at("CPython retries a call that fails with EINTR (PEP 475): failing every one from some point on would spin forever; use `nth` or a probability below 1".into()));
                }
                if *process == ShimProcess::Worker
                    && matches!(call, Syscall::Accept | Syscall::Select | Syscall::Poll)
                {
                    return Err(at(format!(
                        "a worker makes no {} calls of its own; accept, select and poll are the daemon's (\"process\": \"daemon\")",
                        call.name()
                    )));
                }
                if *process == ShimProcess::Daemon && !mode.uses_daemon() {
                    return Err(at(format!(
                        "`process: daemon` needs a daemon (mode daemon or uds); this scenario's mode is {mode:?}"
                    )));
                }
            }
            Fault::OpenDescriptors { count, .. } if !(4..=MAX_OPEN_DESCRIPTORS).contains(count) => {
                return Err(at(format!(
                    "`count` {count} is outside 4..={MAX_OPEN_DESCRIPTORS} (0, 1 and 2 are always open; 1100 is past select()'s 1024)"
                )));
            }
            Fault::RlimitNofile { limit, .. } => {
                if *limit == 0 {
                    return Err(at("`limit` 0 leaves no descriptor at all; a process needs 0, 1 and 2 to start".into()));
                }
                if let Some(count) = open_count.filter(|c| u64::from(*c) >= *limit) {
                    return Err(at(format!(
                        "`limit` {limit} is not above open_descriptors' {count}: the descriptors could not be opened"
                    )));
                }
            }
            Fault::StopChild { fork, stall_ms, .. } => {
                if *fork == 0 {
                    return Err(at("`fork` counts the daemon's forks from 1".into()));
                }
                if *stall_ms == Some(0) {
                    return Err(at(
                        "`stall_ms` 0 holds nothing; leave it out to SIGSTOP the child".into(),
                    ));
                }
            }
            _ => {}
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
                | Fault::StopChild { .. }
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
    /// Where the number of the task being started is written, for faults that name a task.
    task_file: Option<PathBuf>,
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
    /// Per fault: what the shim did for it (failed calls, held children, filled descriptors).
    shim_fired: Vec<usize>,
    /// Per `syscall_fail`: its worker's fate after the first task it fired in, and that task's
    /// stderr.
    first_fate: Vec<Option<Observed>>,
    first_stderr: Vec<Option<String>>,
    /// Per `stop_child`: the child it held, and whether it went on.
    held: Vec<Option<(i32, bool)>>,
    /// Per `stop_child`: it sleeps (`stall_ms`) rather than stops.
    stalls: Vec<bool>,
    /// Per `open_descriptors`: descriptors that could not be taken.
    fill_failed: Vec<u64>,
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
    /// What the task came to (before a fault that closed the connection re-judges it).
    pub outcome: Option<&'a Outcome>,
}

/// Faults that need the LD_PRELOAD shim in the daemon (or direct worker).
fn needs_shim(f: &Fault) -> bool {
    matches!(
        f,
        Fault::ForkFail { .. }
            | Fault::SyscallFail { .. }
            | Fault::OpenDescriptors { .. }
            | Fault::StopChild { .. }
    )
}

/// How long a worker whose call failed is given to end before its state is reported, when the
/// scenario expects nothing of it (a limit: most end at once, a reused one never does).
const WORKER_THEN_WAIT: Duration = Duration::from_secs(1);

/// The RLIMIT_NOFILE soft limit of this process, which its children inherit.
fn current_nofile_soft() -> u64 {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass and touches nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut r) } == 0 {
        r.rlim_cur
    } else {
        0
    }
}

impl Injector {
    /// Installs the shim into `scratch` when a fault needs it.
    pub fn new(faults: &[Fault], mode: Mode, scratch: &Path) -> anyhow::Result<Injector> {
        let shim = if faults.iter().any(needs_shim) {
            let path = forkfail::install(scratch).map_err(|e| {
                anyhow::anyhow!(
                    "installing the syscall fault shim into {}: {e}",
                    scratch.display()
                )
            })?;
            let scoped = faults
                .iter()
                .any(|f| matches!(f, Fault::SyscallFail { task: Some(_), .. }));
            Some(Shim {
                path,
                log: scratch.join("forkfail.log"),
                lines_seen: 0,
                task_file: scoped.then(|| scratch.join("forkfail.task")),
            })
        } else {
            None
        };
        let n = faults.len();
        Ok(Injector {
            faults: faults.to_vec(),
            mode,
            shim,
            launch_events: vec![vec![]; n],
            retried_failure_ms: None,
            fork_failures: 0,
            shim_fired: vec![0; n],
            first_fate: vec![None; n],
            first_stderr: vec![None; n],
            held: vec![None; n],
            stalls: faults
                .iter()
                .map(|f| {
                    matches!(
                        f,
                        Fault::StopChild {
                            stall_ms: Some(_),
                            ..
                        }
                    )
                })
                .collect(),
            fill_failed: vec![0; n],
            stderr_mark: 0,
            reports: vec![None; n],
        })
    }

    pub fn is_empty(&self) -> bool {
        self.faults.is_empty()
    }

    /// Environment for the daemon (daemon modes) or each direct worker.
    pub fn launch_env(&self) -> Vec<(String, String)> {
        let mut env = vec![];
        if let Some(shim) = &self.shim {
            env.push(("LD_PRELOAD".into(), shim.path.display().to_string()));
            env.push((forkfail::ENV_LOG.into(), shim.log.display().to_string()));
            if !self.mode.uses_daemon() {
                env.push((forkfail::ENV_ROLE.into(), "worker".into()));
            }
            let rules = self.call_rules();
            if !rules.is_empty() {
                env.push((forkfail::ENV_CALLS.into(), CallRule::env_value(&rules)));
            }
            if let Some(f) = &shim.task_file {
                env.push((forkfail::ENV_TASK_FILE.into(), f.display().to_string()));
            }
        }
        for f in &self.faults {
            match f {
                Fault::ForkFail {
                    errno, schedule, ..
                } => {
                    env.push((forkfail::ENV_WHEN.into(), schedule.shim_value()));
                    env.push((forkfail::ENV_ERRNO.into(), errno.0.to_string()));
                }
                Fault::ExecutorMemory { mb, .. } => {
                    env.push(("PYSPARK_EXECUTOR_MEMORY_MB".into(), mb.0.clone()))
                }
                Fault::OpenDescriptors { count, .. } => {
                    env.push((forkfail::ENV_FILL_FDS.into(), count.to_string()))
                }
                Fault::StopChild { fork, stall_ms, .. } => {
                    let how = match stall_ms {
                        None => format!("{fork} stop"),
                        Some(ms) => format!("{fork} stall {ms}"),
                    };
                    env.push((forkfail::ENV_HOLD.into(), how));
                }
                _ => {}
            }
        }
        env
    }

    /// The shim's call rules, one per `syscall_fail` in order: rule k is the k-th of them.
    fn call_rules(&self) -> Vec<CallRule> {
        self.faults
            .iter()
            .filter_map(|f| match f {
                Fault::SyscallFail {
                    process,
                    task,
                    call,
                    errno,
                    schedule,
                    ..
                } => Some(CallRule {
                    worker: *process == ShimProcess::Worker,
                    task: *task,
                    call: call.shim(),
                    errno: errno.0,
                    when: schedule.shim_value(),
                }),
                _ => None,
            })
            .collect()
    }

    /// The fault index of the shim's call rule `k`.
    fn rule_fault(&self, k: usize) -> Option<usize> {
        self.faults
            .iter()
            .enumerate()
            .filter(|(_, f)| matches!(f, Fault::SyscallFail { .. }))
            .nth(k)
            .map(|(i, _)| i)
    }

    pub fn rlimit_as(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::RlimitAs { bytes, .. } => Some(*bytes),
            _ => None,
        })
    }

    /// RLIMIT_NOFILE soft limit for the launch: `rlimit_nofile`'s, or room above the descriptors
    /// `open_descriptors` takes when the current limit has none (many shells start at 1024).
    pub fn rlimit_nofile(&self) -> Option<u64> {
        self.faults.iter().find_map(|f| match f {
            Fault::RlimitNofile { limit, .. } => Some(*limit),
            Fault::OpenDescriptors { count, .. } => {
                let wanted = u64::from(*count) + 1024;
                (current_nofile_soft() < wanted).then_some(wanted)
            }
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

    /// Marks where the task's stderr starts and, before its worker is forked or started, tells
    /// the shim which task it is for (faults that name a task). A worker already connected (a
    /// reused one) keeps the task it was made for.
    pub fn task_started(&mut self, workers: &Workers, task: usize) -> anyhow::Result<()> {
        self.stderr_mark = workers.stderr().len();
        if let Some(path) = self.shim.as_ref().and_then(|s| s.task_file.as_ref()) {
            // Written whole and renamed, so a child never reads half a number.
            let tmp = path.with_extension("next");
            std::fs::write(&tmp, task.to_string())
                .and_then(|()| std::fs::rename(&tmp, path))
                .map_err(|e| {
                    anyhow::anyhow!("writing the shim's task file {}: {e}", path.display())
                })?;
        }
        Ok(())
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
        let fired_now = self.read_shim_log(Some(end.task), workers.daemon_pid(), end.pid);
        self.note_memory_lines(end.task, &new_stderr);
        self.after_calls_failed(workers, &end, &fired_now, &new_stderr)
            .await;

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
        self.read_shim_log(None, workers.daemon_pid(), None);
        let stderr = workers.stderr();
        let rest = String::from_utf8_lossy(stderr.get(self.stderr_mark..).unwrap_or_default())
            .into_owned();
        for i in 0..self.faults.len() {
            if self.reports[i].is_some() {
                continue;
            }
            let fault = self.faults[i].clone();
            let acted_on = match &fault {
                Fault::SyscallFail { task, .. } => *task,
                _ => fault.task(),
            };
            let mut r = FaultReport::new(i, fault.describe(), acted_on);
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
                Fault::SyscallFail { process, call, .. } => {
                    r.fired = self.shim_fired[i] > 0;
                    r.worker = self.first_fate[i];
                    (!r.fired).then(|| format!("never fired: no {} of the {process} was failed (did it make fewer calls, or move fewer bytes, than the schedule names?)", call.name()))
                }
                Fault::OpenDescriptors { count, .. } => {
                    r.fired = self.shim_fired[i] > 0;
                    if let Some(pid) = workers
                        .daemon_pid()
                        .filter(|_| workers.daemon_exit().is_none())
                    {
                        self.launch_events[i].push(daemon_sockets(pid));
                    }
                    if !r.fired {
                        Some(format!(
                            "never fired: no process reported taking descriptors below {count}"
                        ))
                    } else if self.fill_failed[i] > 0 {
                        Some(format!("{} descriptor(s) below {count} could not be opened (RLIMIT_NOFILE's hard limit?)", self.fill_failed[i]))
                    } else {
                        None
                    }
                }
                Fault::RlimitNofile { limit, .. } => {
                    r.fired = true;
                    r.events.push(Event::RlimitNofileSet {
                        limit: *limit,
                        daemon: self.mode.uses_daemon(),
                    });
                    None
                }
                Fault::StopChild { fork, .. } => {
                    r.fired = self.held[i].is_some();
                    (!r.fired)
                        .then(|| format!("never fired: the daemon made fewer than {fork} fork(s)"))
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
            r.stderr_tail = self.first_stderr[i]
                .clone()
                .unwrap_or_else(|| tail(&rest, 12));
            check(&mut r, "daemon", want, daemon);
            if matches!(fault, Fault::SyscallFail { .. }) {
                let seen = r.worker;
                check(&mut r, "worker", fault.expect().worker, seen);
            }
            r.settle(error);
            self.reports[i] = Some(r);
        }
    }

    /// After the daemon's shutdown: a child a `stop_child` fault held is expected to survive it
    /// (a stopped process gets its SIGHUP only when continued). Such a leftover is reported by
    /// that fault, with its command line, checked gone (shutdown SIGKILLs the group; SIGKILL ends
    /// a stopped process too), killed here if it is not, and taken off the scenario's
    /// leftovers. Every other leftover stays there and fails the scenario.
    pub async fn after_shutdown(
        &mut self,
        mut leftovers: Vec<(i32, String)>,
    ) -> Vec<(i32, String)> {
        // What the shim logged during the shutdown (a held child that went on, say).
        let seen: Vec<usize> = self.launch_events.iter().map(Vec::len).collect();
        self.read_shim_log(None, None, None);
        for (i, from) in seen.into_iter().enumerate() {
            let new = self.launch_events[i][from..].to_vec();
            if let Some(r) = self.reports[i].as_mut() {
                r.events.extend(new);
            }
        }
        for i in 0..self.faults.len() {
            let Some((pid, resumed)) = self.held[i] else {
                continue;
            };
            let listed = leftovers.iter().position(|(p, _)| *p == pid);
            let survived = listed.is_some() || !has_ended(pid);
            let observed = if survived {
                let cmdline = match listed {
                    Some(k) => leftovers.remove(k).1,
                    None => crate::worker::procs::cmdline(pid),
                };
                let mut gone = wait_gone(pid, FATE_GRACE).await;
                if !gone && listed.is_some() {
                    // SAFETY: kill(2) only; the pid was in our own process group a moment ago.
                    unsafe { libc::kill(pid, libc::SIGKILL) };
                    gone = wait_gone(pid, FATE_GRACE).await;
                }
                if let Some(r) = self.reports[i].as_mut() {
                    r.events.push(Event::SurvivedShutdown {
                        pid,
                        cmdline,
                        state: Some(if resumed || self.stalls[i] { 'S' } else { 'T' }),
                        gone,
                    });
                    if !gone {
                        r.ok = false;
                        r.problem =
                            Some(format!("the held child {pid} is still alive after SIGKILL"));
                    }
                }
                Observed::Alive {
                    state: if resumed || self.stalls[i] { 'S' } else { 'T' },
                }
            } else {
                Observed::Ended { exit: None }
            };
            let Some(r) = self.reports[i].as_mut() else {
                continue;
            };
            r.worker = Some(observed);
            let want = self.faults[i].expect().worker;
            let before = r.checks.len();
            check(
                r,
                "worker (the held child, after the daemon's shutdown)",
                want,
                Some(observed),
            );
            if let Some(c) = r.checks.get(before).filter(|c| !c.ok) {
                let failed = format!("{}: expected {}, saw {}", c.what, c.expected, c.observed);
                r.ok = false;
                r.problem = Some(match r.problem.take() {
                    Some(p) => format!("{p}; {failed}"),
                    None => failed,
                });
            }
        }
        leftovers
    }

    /// After a task in which a `syscall_fail` fired: what became of the task's worker, and what
    /// fakejvm got.
    async fn after_calls_failed(
        &mut self,
        workers: &mut Workers,
        end: &TaskEnd<'_>,
        fired_now: &[usize],
        stderr: &str,
    ) {
        for &i in fired_now {
            let Fault::SyscallFail {
                process, expect, ..
            } = &self.faults[i]
            else {
                continue;
            };
            let pid = end.pid.filter(|_| *process == ShimProcess::Worker);
            let worker = match pid {
                Some(pid) => {
                    let (want, grace) = match expect.worker {
                        Some(w) => (w, FATE_GRACE),
                        None => (Fate::Gone, WORKER_THEN_WAIT),
                    };
                    Some(observe_worker(workers, pid, Some(want), grace).await)
                }
                None => None,
            };
            self.launch_events[i].push(Event::TaskThen {
                task: end.task,
                pid,
                worker,
                outcome: end
                    .outcome
                    .map(|o| o.to_string())
                    .unwrap_or_else(|| "no outcome".into()),
            });
            if self.first_stderr[i].is_none() {
                self.first_fate[i] = worker;
                self.first_stderr[i] = Some(tail(stderr, 12));
            }
        }
    }

    pub fn into_reports(self) -> Vec<FaultReport> {
        self.reports.into_iter().flatten().collect()
    }

    fn fault_index(&self, pred: impl Fn(&Fault) -> bool) -> Option<usize> {
        self.faults.iter().position(pred)
    }

    /// New lines of the shim's log become events of their faults (`task` None: after the last
    /// task). Returns the `syscall_fail` faults that failed a call in these lines.
    fn read_shim_log(
        &mut self,
        task: Option<usize>,
        daemon: Option<i32>,
        worker: Option<i32>,
    ) -> Vec<usize> {
        let Some(shim) = self.shim.as_mut() else {
            return vec![];
        };
        let text = std::fs::read_to_string(&shim.log).unwrap_or_default();
        let lines = LogLine::parse_all(&text);
        let new: Vec<LogLine> = lines.iter().skip(shim.lines_seen).cloned().collect();
        shim.lines_seen = lines.len();
        let fork_fault = self.fault_index(|f| matches!(f, Fault::ForkFail { .. }));
        let stop_fault = self.fault_index(|f| matches!(f, Fault::StopChild { .. }));
        let fill_fault = self.fault_index(|f| matches!(f, Fault::OpenDescriptors { .. }));
        let mut fired = vec![];
        for line in new {
            let (fault, event) = match line {
                LogLine::Loaded {
                    pid,
                    when: schedule,
                    errno,
                    ..
                } => (
                    fork_fault,
                    Event::ShimLoaded {
                        pid,
                        schedule,
                        errno,
                    },
                ),
                LogLine::Failed {
                    ordinal,
                    errno,
                    injected,
                    at_ms,
                    ..
                } => {
                    if fork_fault.is_some() {
                        self.fork_failures += injected as usize;
                    }
                    // daemon.py (every version) sleeps 1 s and forks once more after these two.
                    self.retried_failure_ms = [libc::EAGAIN, libc::EINTR]
                        .contains(&errno)
                        .then_some(at_ms);
                    (
                        fork_fault,
                        Event::ForkFailed {
                            task,
                            ordinal,
                            errno,
                            injected,
                        },
                    )
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
                    (
                        fork_fault,
                        Event::Forked {
                            task,
                            ordinal,
                            child,
                            retry_after_ms,
                        },
                    )
                }
                LogLine::CallFailed {
                    call,
                    ordinal,
                    pid,
                    fd,
                    via,
                    errno,
                    bytes_before,
                    rule,
                    ..
                } => {
                    let fault = self.rule_fault(rule);
                    let process = if Some(pid) == daemon {
                        "daemon"
                    } else if Some(pid) == worker || !self.mode.uses_daemon() {
                        "worker"
                    } else {
                        "process"
                    };
                    // A call failed in an earlier task's worker, logged late (its last reads
                    // after we closed): it fired, but not in this task.
                    let late = process == "process" && worker.is_some();
                    if let Some(i) = fault {
                        self.shim_fired[i] += 1;
                        if !late && !fired.contains(&i) {
                            fired.push(i);
                        }
                    }
                    (
                        fault,
                        Event::CallFailed {
                            task,
                            pid,
                            process: process.into(),
                            call: call.name().into(),
                            via,
                            ordinal,
                            fd,
                            errno,
                            bytes_before,
                        },
                    )
                }
                LogLine::CallShortened {
                    call,
                    ordinal,
                    pid,
                    len,
                    to,
                    rule,
                    ..
                } => (
                    self.rule_fault(rule),
                    Event::CallShortened {
                        task,
                        pid,
                        call: call.name().into(),
                        ordinal,
                        len,
                        to,
                    },
                ),
                LogLine::ChildHeld {
                    ordinal,
                    pid,
                    stall_ms,
                    ..
                } => {
                    if let Some(i) = stop_fault {
                        self.held[i] = Some((pid, false));
                    }
                    (
                        stop_fault,
                        Event::ChildHeld {
                            task,
                            ordinal,
                            pid,
                            stall_ms,
                        },
                    )
                }
                LogLine::ChildResumed { ordinal, pid, .. } => {
                    if let Some(i) = stop_fault {
                        self.held[i] = Some((pid, true));
                    }
                    (stop_fault, Event::ChildResumed { task, ordinal, pid })
                }
                LogLine::Filled {
                    pid,
                    below,
                    opened,
                    failed,
                    ..
                } => {
                    if let Some(i) = fill_fault {
                        self.shim_fired[i] += 1;
                        self.fill_failed[i] += failed;
                    }
                    (
                        fill_fault,
                        Event::FdsFilled {
                            pid,
                            below,
                            opened,
                            failed,
                        },
                    )
                }
            };
            if let Some(i) = fault {
                self.launch_events[i].push(event);
            }
        }
        fired
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

/// The daemon's descriptors now: how many, and the lowest that is a socket.
fn daemon_sockets(pid: i32) -> Event {
    let mut open_fds = 0;
    let mut lowest_fd = None;
    if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
        for e in dir.flatten() {
            open_fds += 1;
            let is_socket = std::fs::read_link(e.path())
                .is_ok_and(|t| t.to_string_lossy().starts_with("socket:"));
            let fd = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok());
            if let (true, Some(fd)) = (is_socket, fd) {
                lowest_fd = Some(lowest_fd.map_or(fd, |l: i32| l.min(fd)));
            }
        }
    }
    Event::DaemonSockets {
        pid,
        lowest_fd,
        open_fds,
    }
}

async fn wait_gone(pid: i32, limit: Duration) -> bool {
    let until = std::time::Instant::now() + limit;
    while !has_ended(pid) {
        if std::time::Instant::now() >= until {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}
