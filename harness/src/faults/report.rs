//! What each fault did, for the verdict: whether it fired, where (span and byte), what was done,
//! what became of the worker and the daemon, and the declared expectations checked against that.

use super::plan::Placement;
use super::process::Observed;
use crate::worker::errno_label;
use serde::Serialize;
use std::fmt;

#[derive(Clone, Debug, Serialize)]
pub struct FaultReport {
    /// Index in the scenario's `faults` list.
    pub index: usize,
    /// The fault in words, e.g. "kill_worker after header".
    pub fault: String,
    /// The task it acted on (None for launch faults).
    pub task: Option<usize>,
    pub placement: Option<Placement>,
    pub fired: bool,
    /// What happened, in order.
    pub events: Vec<Event>,
    /// What became of the task's worker, once the task was over.
    pub worker: Option<Observed>,
    pub daemon: Option<Observed>,
    /// The end of what the daemon and its workers wrote to stderr during the task.
    pub stderr_tail: String,
    pub checks: Vec<Check>,
    /// Fired, performed as declared, and every check held.
    pub ok: bool,
    /// Why it is not ok, in words.
    pub problem: Option<String>,
}

/// Something a fault did or made happen; its text (Display) is what the report prints.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// An action performed at its protocol position (`what` says what was done and seen).
    Action {
        at_ms: u64,
        at_byte: u64,
        what: String,
    },
    /// The fork-failure shim is loaded in the daemon.
    ShimLoaded {
        pid: i32,
        schedule: String,
        errno: i32,
    },
    /// The daemon's fork() number `ordinal` failed (`task` None: after the last task).
    ForkFailed {
        task: Option<usize>,
        ordinal: u64,
        errno: i32,
        injected: bool,
    },
    /// The daemon's fork() number `ordinal` made `child`; `retry_after_ms` is set when it was
    /// the retry after a failure daemon.py retries (EAGAIN, EINTR), measured from that failure.
    Forked {
        task: Option<usize>,
        ordinal: u64,
        child: i32,
        retry_after_ms: Option<u64>,
    },
    /// After the task, the stopped worker was killed as Spark kills a hung one (`error`: it
    /// could not be).
    KilledStopped {
        pid: i32,
        via_daemon: bool,
        error: Option<String>,
    },
    /// A line the worker wrote about its memory limit.
    WorkerStderr { task: usize, line: String },
    /// The RLIMIT_AS soft limit fakejvm set.
    RlimitSet { bytes: u64, daemon: bool },
    /// PYSPARK_EXECUTOR_MEMORY_MB in the environment.
    ExecutorMemory { mb: String, daemon: bool },
    /// The shim failed call number `ordinal` of its kind in `pid` (`process`: "daemon", "worker"
    /// for the task's worker, or "process" for another one), via the libc function `via`.
    CallFailed {
        task: Option<usize>,
        pid: i32,
        process: String,
        call: String,
        via: String,
        ordinal: u64,
        fd: i32,
        errno: i32,
        bytes_before: u64,
    },
    /// The shim cut a call short so that a byte schedule ends exactly at its count.
    CallShortened {
        task: Option<usize>,
        pid: i32,
        call: String,
        ordinal: u64,
        len: u64,
        to: u64,
    },
    /// After a task in which the fault fired: what became of its worker and what fakejvm got.
    TaskThen {
        task: usize,
        pid: Option<i32>,
        worker: Option<Observed>,
        outcome: String,
    },
    /// The child of the daemon's fork `ordinal` held itself before writing its pid: stopped
    /// (`stall_ms` None) or sleeping.
    ChildHeld {
        task: Option<usize>,
        ordinal: u64,
        pid: i32,
        stall_ms: Option<u64>,
    },
    ChildResumed {
        task: Option<usize>,
        ordinal: u64,
        pid: i32,
    },
    /// Descriptors below `below` taken at start in `pid` (`failed`: refused, e.g. past the limit).
    FdsFilled {
        pid: i32,
        below: u64,
        opened: u64,
        failed: u64,
    },
    /// The lowest socket descriptor the daemon held after the last task.
    DaemonSockets {
        pid: i32,
        lowest_fd: Option<i32>,
        open_fds: usize,
    },
    /// The RLIMIT_NOFILE soft limit fakejvm set.
    RlimitNofileSet { limit: u64, daemon: bool },
    /// A process held by the fault was still there after the daemon's shutdown (pid, command
    /// line, state); shutdown's SIGKILL to the group then ended it (`gone`) or not.
    SurvivedShutdown {
        pid: i32,
        cmdline: String,
        state: Option<char>,
        gone: bool,
    },
}

fn when(task: &Option<usize>) -> String {
    match task {
        Some(t) => format!("task {t}"),
        None => "after the last task".into(),
    }
}

impl fmt::Display for Event {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Event::Action {
                at_ms,
                at_byte,
                what,
            } => write!(f, "at {at_ms} ms, request byte {at_byte}: {what}"),
            Event::ShimLoaded {
                pid,
                schedule,
                errno,
            } => {
                write!(f, "the shim is loaded in the daemon (pid {pid}), failing {schedule} with errno {errno} ({})", errno_label(*errno))
            }
            Event::ForkFailed {
                task,
                ordinal,
                errno,
                injected,
            } => {
                let how = if *injected {
                    "injected"
                } else {
                    "a real failure, not injected"
                };
                write!(
                    f,
                    "{}: fork #{ordinal} failed with errno {errno} ({}), {how}",
                    when(task),
                    errno_label(*errno)
                )
            }
            Event::Forked {
                task,
                ordinal,
                child,
                retry_after_ms,
            } => {
                write!(
                    f,
                    "{}: fork #{ordinal} succeeded: worker {child}",
                    when(task)
                )?;
                match retry_after_ms {
                    Some(ms) => write!(f, ", {ms} ms after the failed fork (the daemon's retry)"),
                    None => Ok(()),
                }
            }
            Event::KilledStopped {
                pid,
                via_daemon,
                error,
            } => {
                let how = if *via_daemon {
                    "its pid on the daemon's stdin"
                } else {
                    "SIGKILL to its group"
                };
                match error {
                    None => write!(f, "after the task: killed the stopped worker {pid} ({how}), as Spark does with a hung worker"),
                    Some(e) => write!(f, "after the task: could not kill the stopped worker {pid}: {e}"),
                }
            }
            Event::WorkerStderr { task, line } => {
                write!(f, "task {task}: the worker wrote to stderr: {line}")
            }
            Event::RlimitSet { bytes, daemon } => {
                let on = if *daemon {
                    "the daemon (its forked workers inherit it)"
                } else {
                    "each direct worker"
                };
                write!(
                    f,
                    "fakejvm set the RLIMIT_AS soft limit to {bytes} bytes on {on}"
                )
            }
            Event::ExecutorMemory { mb, daemon } => {
                let on = if *daemon {
                    "the daemon's environment (each forked worker reads it)"
                } else {
                    "each direct worker's environment"
                };
                write!(f, "PYSPARK_EXECUTOR_MEMORY_MB={mb} in {on}")
            }
            Event::CallFailed {
                task,
                pid,
                process,
                call,
                via,
                ordinal,
                fd,
                errno,
                bytes_before,
            } => {
                write!(f, "{}: {process} {pid}: {call} #{ordinal} ({via}", when(task))?;
                if *fd >= 0 {
                    write!(f, " on socket fd {fd}")?;
                }
                write!(
                    f,
                    ") failed with errno {errno} ({}), injected",
                    errno_label(*errno)
                )?;
                if call == "send" || call == "recv" {
                    write!(f, ", after {bytes_before} byte(s) of {call}")?;
                }
                Ok(())
            }
            Event::CallShortened {
                task,
                pid,
                call,
                ordinal,
                len,
                to,
            } => write!(
                f,
                "{}: pid {pid}: {call} #{ordinal} of {len} byte(s) cut to {to}, to end at the byte count",
                when(task)
            ),
            Event::TaskThen {
                task,
                pid,
                worker,
                outcome,
            } => {
                write!(f, "task {task} then: ")?;
                if let (Some(p), Some(w)) = (pid, worker) {
                    write!(f, "worker {p} {w}; ")?;
                }
                write!(f, "fakejvm got: {outcome}")
            }
            Event::ChildHeld {
                task,
                ordinal,
                pid,
                stall_ms,
            } => match stall_ms {
                None => write!(
                    f,
                    "{}: the child {pid} of fork #{ordinal} stopped itself (SIGSTOP) before writing its pid",
                    when(task)
                ),
                Some(ms) => write!(
                    f,
                    "{}: the child {pid} of fork #{ordinal} sleeps {ms} ms before writing its pid",
                    when(task)
                ),
            },
            Event::ChildResumed { task, ordinal, pid } => write!(
                f,
                "{}: the child {pid} of fork #{ordinal} went on",
                when(task)
            ),
            Event::FdsFilled {
                pid,
                below,
                opened,
                failed,
            } => {
                write!(f, "pid {pid} started with descriptors 0..{} open ({opened} of them /dev/null, inheritable)", below.saturating_sub(1))?;
                if *failed > 0 {
                    write!(f, "; {failed} could not be opened")?;
                }
                Ok(())
            }
            Event::DaemonSockets {
                pid,
                lowest_fd,
                open_fds,
            } => match lowest_fd {
                Some(fd) => write!(f, "after the last task the daemon {pid} held {open_fds} descriptors; its lowest socket is fd {fd}"),
                None => write!(f, "after the last task the daemon {pid} held {open_fds} descriptors, no socket"),
            },
            Event::RlimitNofileSet { limit, daemon } => {
                let on = if *daemon {
                    "the daemon (its forked workers inherit it)"
                } else {
                    "each direct worker"
                };
                write!(f, "fakejvm set the RLIMIT_NOFILE soft limit to {limit} on {on}")
            }
            Event::SurvivedShutdown {
                pid,
                cmdline,
                state,
                gone,
            } => {
                let state = match state {
                    Some('T') => "stopped".to_string(),
                    Some('S') => "sleeping".to_string(),
                    Some(s) => format!("state {s}"),
                    None => "state unknown".to_string(),
                };
                write!(f, "after the daemon's shutdown pid {pid} `{cmdline}` was still there ({state}); ")?;
                if *gone {
                    write!(f, "SIGKILL to its group ended it")
                } else {
                    write!(f, "it is STILL ALIVE after SIGKILL")
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

impl FaultReport {
    pub fn new(index: usize, fault: String, task: Option<usize>) -> FaultReport {
        FaultReport {
            index,
            fault,
            task,
            placement: None,
            fired: false,
            events: vec![],
            worker: None,
            daemon: None,
            stderr_tail: String::new(),
            checks: vec![],
            ok: false,
            problem: None,
        }
    }

    /// Sets `ok` and `problem` from what is recorded; `error` is a failure to perform the fault.
    pub fn settle(&mut self, error: Option<String>) {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, saw {}", c.what, c.expected, c.observed))
            .collect();
        self.problem = if !self.fired {
            Some(error.unwrap_or_else(|| "never fired".into()))
        } else if let Some(e) = error {
            Some(format!("not performed as declared: {e}"))
        } else if !failed.is_empty() {
            Some(failed.join("; "))
        } else {
            None
        };
        self.ok = self.problem.is_none();
    }
}

/// Text for people: one header line per fault, then its events, fates, checks and stderr tail,
/// indented to sit under a scenario line of `report::scenario_lines`.
pub fn fault_lines(reports: &[FaultReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let state = match (r.ok, r.fired) {
            (true, _) => "ok",
            (false, true) => "FAILED",
            (false, false) => "NOT FIRED",
        };
        let mut head = format!("      fault #{} {}", r.index, r.fault);
        if let Some(t) = r.task {
            head.push_str(&format!(" [task {t}"));
            if let Some(p) = &r.placement {
                head.push_str(&format!(
                    ", span {} +{}, request byte {}",
                    p.span, p.offset_in_span, p.byte
                ));
            }
            head.push(']');
        }
        out.push_str(&format!("{head}: {state}\n"));
        for e in &r.events {
            out.push_str(&format!("        {e}\n"));
        }
        let mut fates = vec![];
        if let Some(w) = &r.worker {
            fates.push(format!("worker {w}"));
        }
        if let Some(d) = &r.daemon {
            fates.push(format!("daemon {d}"));
        }
        if !fates.is_empty() {
            out.push_str(&format!("        then: {}\n", fates.join("; ")));
        }
        for c in &r.checks {
            out.push_str(&format!(
                "        check {}: expected {}, saw {} ({})\n",
                c.what,
                c.expected,
                c.observed,
                if c.ok { "ok" } else { "FAILED" }
            ));
        }
        if let Some(p) = &r.problem {
            out.push_str(&format!("        problem: {p}\n"));
        }
        let tail: Vec<&str> = r
            .stderr_tail
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if !tail.is_empty() {
            out.push_str("        stderr:\n");
            for l in &tail[tail.len().saturating_sub(4)..] {
                out.push_str(&format!("          {l}\n"));
            }
        }
    }
    out.trim_end().to_string()
}
