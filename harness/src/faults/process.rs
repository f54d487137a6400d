//! Performing a task's actions while its session runs, and looking at processes afterwards.
//!
//! The session's writer stops at an action's position and waits; [`Performer::serve`] does the
//! action (a signal, a write to the daemon's stdin, a socket option, another connection) and
//! answers, so every action happens at exactly its protocol position while the reader goes on.

use super::plan::{Action, TaskPlan};
use super::sockfd;
use super::spec::Fate;
use crate::session::{ActionRequest, AfterAction};
use crate::worker::{Connection, ExitInfo, Mode, WorkerError, Workers};
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// How long an action waits to see its effect (a worker gone, a daemon exited) before it reports
/// what it saw and lets the writer go on.
const EFFECT_WAIT: Duration = Duration::from_secs(2);

/// How long a failed connection waits for the daemon to end when the daemon closed it: daemon.py
/// exits (status 1) after a failed fork retry, some time after the socket closed.
const DAEMON_FATE_WAIT: Duration = Duration::from_secs(5);

/// One action that was performed.
#[derive(Clone, Debug, Serialize)]
pub struct Fired {
    pub fault: usize,
    /// Request bytes written when it happened.
    pub at_byte: u64,
    /// Milliseconds since the task started.
    pub at_ms: u64,
    /// What was done and what was seen right after.
    pub what: String,
    /// The action could not be done as declared (the fault is then failed).
    pub error: Option<String>,
    /// It ended the task (close, reset) or its reading (SHUT_RD): no reply was read after it.
    pub ended_task: bool,
}

pub struct Performer<'a> {
    pub workers: &'a mut Workers,
    pub worker_pid: i32,
    pub plan: &'a TaskPlan,
    pub fired: Vec<Fired>,
    /// Connections opened by `open_connection`, closed when the task is over.
    pub extra: Vec<Connection>,
}

impl<'a> Performer<'a> {
    pub fn new(workers: &'a mut Workers, worker_pid: i32, plan: &'a TaskPlan) -> Self {
        Performer {
            workers,
            worker_pid,
            plan,
            fired: vec![],
            extra: vec![],
        }
    }

    /// Serves the writer's action requests until the session drops its sender.
    pub async fn serve(
        mut self,
        mut rx: mpsc::Receiver<ActionRequest>,
    ) -> (Vec<Fired>, Vec<Connection>) {
        while let Some(req) = rx.recv().await {
            let Some(planned) = self.plan.actions.get(req.index).cloned() else {
                let _ = req.done.send(AfterAction::EndTask {
                    why: format!("the plan has no action {}", req.index),
                });
                continue;
            };
            let (what, error, after) = self.perform(planned.action, req.at_byte).await;
            let ended_task = !matches!(after, AfterAction::Continue);
            self.fired.push(Fired {
                fault: planned.fault,
                at_byte: req.at_byte,
                at_ms: req.at_us / 1000,
                what,
                error,
                ended_task,
            });
            let _ = req.done.send(after);
        }
        (self.fired, self.extra)
    }

    async fn perform(
        &mut self,
        action: Action,
        at_byte: u64,
    ) -> (String, Option<String>, AfterAction) {
        let pid = self.worker_pid;
        let daemon_mode = self.workers.mode().uses_daemon();
        match action {
            Action::KillWorker => {
                let how = if daemon_mode {
                    "wrote its pid to the daemon's stdin"
                } else {
                    "sent SIGKILL to its process group"
                };
                match self.workers.kill_worker(pid).await {
                    Ok(()) => {
                        let seen = wait_worker_gone(pid, EFFECT_WAIT).await;
                        (
                            format!("killed worker {pid}: {how}; {seen}"),
                            None,
                            AfterAction::Continue,
                        )
                    }
                    Err(e) => (
                        format!("could not kill worker {pid}"),
                        Some(e.to_string()),
                        AfterAction::Continue,
                    ),
                }
            }
            Action::StopWorker => {
                // SAFETY: kill(2) with a pid we know to be our worker; no memory is involved.
                if unsafe { libc::kill(pid, libc::SIGSTOP) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return (
                        format!("could not SIGSTOP worker {pid}"),
                        Some(e.to_string()),
                        AfterAction::Continue,
                    );
                }
                let stopped = wait_until(EFFECT_WAIT, || proc_state(pid) == Some('T')).await;
                let seen = if stopped {
                    "it is stopped (state T)".to_string()
                } else {
                    format!("its state is {:?}", proc_state(pid))
                };
                (
                    format!("sent SIGSTOP to worker {pid}; {seen}"),
                    None,
                    AfterAction::Continue,
                )
            }
            Action::SignalDaemon(sig) => {
                let Some(dpid) = self.workers.daemon_pid() else {
                    return (
                        "no daemon to signal".into(),
                        Some("signal_daemon needs a daemon mode".into()),
                        AfterAction::Continue,
                    );
                };
                // SAFETY: kill(2) with the daemon's pid, which we own.
                if unsafe { libc::kill(dpid, sig) } != 0 {
                    let e = std::io::Error::last_os_error();
                    return (
                        format!("could not signal daemon {dpid}"),
                        Some(e.to_string()),
                        AfterAction::Continue,
                    );
                }
                let seen = self.wait_daemon_exit(EFFECT_WAIT).await;
                (
                    format!(
                        "sent {} to daemon {dpid}; {seen}",
                        super::spec::Signal::new(sig)
                    ),
                    None,
                    AfterAction::Continue,
                )
            }
            Action::CloseDaemonStdin => {
                self.workers.close_daemon_stdin();
                let seen = self.wait_daemon_exit(EFFECT_WAIT).await;
                (
                    format!("closed the daemon's stdin; {seen}"),
                    None,
                    AfterAction::Continue,
                )
            }
            Action::OpenConnection => {
                let started = Instant::now();
                match self.workers.connect().await {
                    Ok(c) => {
                        let what = format!(
                            "opened another connection: the daemon forked worker {} in {} ms",
                            c.pid,
                            started.elapsed().as_millis()
                        );
                        self.extra.push(c);
                        (what, None, AfterAction::Continue)
                    }
                    // Failing to connect is what some scenarios are about (a fork failure): an event, not an error.
                    Err(e) => {
                        let failed_ms = started.elapsed().as_millis();
                        // A failed fork ends daemon.py (its retry failed too), but the daemon's
                        // exit can come well after its socket closed on a busy machine. Wait for
                        // its fate (within a limit) before the writer goes on, so the task's end
                        // is judged knowing whether the daemon died.
                        let closed =
                            matches!(e, WorkerError::Closed { .. } | WorkerError::Io { .. });
                        let seen = if closed && daemon_mode {
                            format!("; {}", self.wait_daemon_exit(DAEMON_FATE_WAIT).await)
                        } else {
                            String::new()
                        };
                        (
                            format!(
                                "opening another connection failed after {failed_ms} ms: {e}{seen}"
                            ),
                            None,
                            AfterAction::Continue,
                        )
                    }
                }
            }
            Action::Close => (
                format!(
                    "stopped writing at request byte {at_byte} and closed the connection (FIN)"
                ),
                None,
                AfterAction::EndTask {
                    why: format!("fakejvm closed the connection at request byte {at_byte} (fault)"),
                },
            ),
            Action::Reset => {
                let end = AfterAction::EndTask {
                    why: format!("fakejvm reset the connection at request byte {at_byte} (fault)"),
                };
                match sockfd::our_end_of(pid).and_then(|fd| sockfd::set_linger_zero(fd).map_err(|e| format!("setsockopt SO_LINGER: {e}"))) {
                    Ok(()) => (format!("stopped writing at request byte {at_byte}, set SO_LINGER 0 and closed the connection (RST)"), None, end),
                    Err(e) => (format!("stopped writing at request byte {at_byte} and closed the connection with a FIN, not a reset"), Some(e), end),
                }
            }
            Action::ShutRead => {
                let why = format!("fakejvm shut down its receiving side (SHUT_RD) at request byte {at_byte} and read no more (fault)");
                match sockfd::our_end_of(pid).and_then(|fd| sockfd::shutdown_read(fd).map_err(|e| format!("shutdown(SHUT_RD): {e}"))) {
                    Ok(()) => (
                        format!("shut down our receiving side (SHUT_RD) at request byte {at_byte} and stopped reading; the rest of the request is still written"),
                        None,
                        AfterAction::StopReading { why },
                    ),
                    Err(e) => ("could not shut down our receiving side".into(), Some(e), AfterAction::StopReading { why }),
                }
            }
        }
    }

    async fn wait_daemon_exit(&mut self, limit: Duration) -> String {
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(exit) = self.workers.daemon_exit() {
                return format!(
                    "the daemon ended ({exit}) {} ms later",
                    started.elapsed().as_millis()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        format!(
            "the daemon was still running {} ms later",
            limit.as_millis()
        )
    }
}

/// The state letter of /proc/<pid>/stat (R, S, T, Z...), None when there is no such process.
pub fn proc_state(pid: i32) -> Option<char> {
    crate::worker::procs::stat(pid).map(|s| s.state)
}

/// Ended: no such process, or a zombie waiting to be reaped.
pub fn has_ended(pid: i32) -> bool {
    matches!(proc_state(pid), None | Some('Z' | 'X' | 'x'))
}

async fn wait_until(limit: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let started = Instant::now();
    loop {
        if cond() {
            return true;
        }
        if started.elapsed() >= limit {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_worker_gone(pid: i32, limit: Duration) -> String {
    let started = Instant::now();
    if wait_until(limit, || has_ended(pid)).await {
        format!("it was gone {} ms later", started.elapsed().as_millis())
    } else {
        format!(
            "it was still there {} ms later (state {:?})",
            limit.as_millis(),
            proc_state(pid)
        )
    }
}

/// What became of a process.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Observed {
    Alive {
        state: char,
    },
    /// Ended; the status is known only for processes fakejvm started.
    Ended {
        exit: Option<ExitInfo>,
    },
}

impl Observed {
    pub fn satisfies(&self, want: Fate) -> bool {
        match (want, self) {
            (Fate::Alive, Observed::Alive { .. }) => true,
            (Fate::Gone, Observed::Ended { .. }) => true,
            (
                Fate::Exit(c),
                Observed::Ended {
                    exit: Some(ExitInfo::Code(got)),
                },
            ) => c == *got,
            (
                Fate::Signal(s),
                Observed::Ended {
                    exit: Some(ExitInfo::Signal(got)),
                },
            ) => s.0 == *got,
            _ => false,
        }
    }
}

impl std::fmt::Display for Observed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Observed::Alive { state: 'T' } => write!(f, "alive, stopped"),
            Observed::Alive { state } => write!(f, "alive (state {state})"),
            Observed::Ended { exit: Some(e) } => write!(f, "ended ({e})"),
            Observed::Ended { exit: None } => write!(
                f,
                "ended (a child of the daemon: its exit status is not ours to read)"
            ),
        }
    }
}

/// Waits up to `grace` for the worker to reach `want` when that is an ended state (a fault's
/// effect can take a moment), then says what it is.
pub async fn observe_worker(
    workers: &mut Workers,
    pid: i32,
    want: Option<Fate>,
    grace: Duration,
) -> Observed {
    let wait_for_end = matches!(want, Some(Fate::Gone | Fate::Exit(_) | Fate::Signal(_)));
    let limit = if wait_for_end { grace } else { Duration::ZERO };
    if matches!(workers.mode(), Mode::Direct | Mode::DirectUds) {
        if let Some(exit) = workers.wait_direct_worker(pid, limit).await {
            return Observed::Ended { exit: Some(exit) };
        }
    } else {
        wait_until(limit, || has_ended(pid)).await;
    }
    match proc_state(pid) {
        None | Some('Z' | 'X' | 'x') => Observed::Ended { exit: None },
        Some(state) => Observed::Alive { state },
    }
}

/// The daemon's state, waiting up to `grace` for it to end when that is what is expected.
pub async fn observe_daemon(
    workers: &mut Workers,
    want: Option<Fate>,
    grace: Duration,
) -> Option<Observed> {
    workers.daemon_pid()?;
    let started = Instant::now();
    let wait_for_end = matches!(want, Some(Fate::Gone | Fate::Exit(_) | Fate::Signal(_)));
    loop {
        if let Some(exit) = workers.daemon_exit() {
            return Some(Observed::Ended { exit: Some(exit) });
        }
        if !wait_for_end || started.elapsed() >= grace {
            return Some(Observed::Alive {
                state: proc_state(workers.daemon_pid()?).unwrap_or('?'),
            });
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fates_match_observations() {
        let alive = Observed::Alive { state: 'S' };
        let gone = Observed::Ended { exit: None };
        let exit1 = Observed::Ended {
            exit: Some(ExitInfo::Code(1)),
        };
        let killed = Observed::Ended {
            exit: Some(ExitInfo::Signal(9)),
        };
        assert!(alive.satisfies(Fate::Alive) && !alive.satisfies(Fate::Gone));
        assert!(gone.satisfies(Fate::Gone) && !gone.satisfies(Fate::Exit(1)));
        assert!(
            exit1.satisfies(Fate::Exit(1))
                && exit1.satisfies(Fate::Gone)
                && !exit1.satisfies(Fate::Exit(0))
        );
        assert!(killed.satisfies(Fate::Signal(super::super::spec::Signal::new(9))));
    }

    #[test]
    fn our_own_state_is_running_and_a_missing_pid_has_ended() {
        let me = std::process::id() as i32;
        assert!(matches!(proc_state(me), Some('R' | 'S')));
        assert!(has_ended(i32::MAX));
    }
}
