//! The one typed outcome every run ends in (scenario, golden, fuzz case or reproducer), and the
//! classification of a finished task into it.

use crate::error::one_line;
use crate::protocol::{Reply, ReplyEnd};
use crate::session::{ReadFailure, TaskResult};
use crate::worker::resources::{Exceeded, ResourceLimits, Usage};
use crate::worker::{DaemonState, ExitInfo, WorkerError, Workers};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::time::Duration;

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub enum Outcome {
    /// The task completed and its output was what was expected (or nothing was expected of it).
    Passed,
    Mismatch {
        expected: serde_json::Value,
        got: serde_json::Value,
    },
    /// The worker answered -2 with a traceback.
    PythonException {
        #[serde(rename = "type")]
        exc_type: String,
        message: String,
    },
    ProtocolViolation {
        at_byte: u64,
        what: String,
    },
    /// The worker closed the connection (or died) without a complete reply.
    WorkerCrashed {
        pid: i32,
        exit: Option<ExitInfo>,
        detail: String,
    },
    Hang {
        after_ms: u64,
        at_byte: u64,
    },
    DaemonDied {
        exit: Option<ExitInfo>,
        stderr_tail: String,
    },
    LeakedProcess {
        processes: Vec<(i32, String)>,
    },
    /// The task's worker used more than its `expect_resources` allow (see
    /// `worker::resources`), whatever its reply was: that verdict is kept in `reply`.
    ResourceExceeded {
        exceeded: Vec<Exceeded>,
        /// Every process the worker spawned during the task, by pid and command line.
        processes: Vec<(i32, String)>,
        reply: Box<Outcome>,
    },
    /// fakejvm itself failed (could not start Python, bad temp dir...): not a finding about the worker.
    Harness {
        error: String,
    },
}

/// The outcome's name, for expectations, signatures and summaries.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum OutcomeKind {
    Passed,
    Mismatch,
    PythonException,
    ProtocolViolation,
    WorkerCrashed,
    Hang,
    DaemonDied,
    LeakedProcess,
    ResourceExceeded,
    Harness,
}

impl Outcome {
    pub fn kind(&self) -> OutcomeKind {
        match self {
            Outcome::Passed => OutcomeKind::Passed,
            Outcome::Mismatch { .. } => OutcomeKind::Mismatch,
            Outcome::PythonException { .. } => OutcomeKind::PythonException,
            Outcome::ProtocolViolation { .. } => OutcomeKind::ProtocolViolation,
            Outcome::WorkerCrashed { .. } => OutcomeKind::WorkerCrashed,
            Outcome::Hang { .. } => OutcomeKind::Hang,
            Outcome::DaemonDied { .. } => OutcomeKind::DaemonDied,
            Outcome::LeakedProcess { .. } => OutcomeKind::LeakedProcess,
            Outcome::ResourceExceeded { .. } => OutcomeKind::ResourceExceeded,
            Outcome::Harness { .. } => OutcomeKind::Harness,
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Passed => write!(f, "Passed"),
            Outcome::Mismatch { expected, got } => {
                write!(
                    f,
                    "Mismatch: expected {}, got {}",
                    short(expected),
                    short(got)
                )
            }
            Outcome::PythonException { exc_type, message } => {
                write!(f, "PythonException {exc_type}: {message}")
            }
            Outcome::ProtocolViolation { at_byte, what } => {
                write!(f, "ProtocolViolation at byte {at_byte}: {what}")
            }
            Outcome::WorkerCrashed { pid, exit, detail } => {
                write!(f, "WorkerCrashed (pid {pid}")?;
                if let Some(e) = exit {
                    write!(f, ", {e}")?;
                }
                write!(f, "): {detail}")
            }
            Outcome::Hang { after_ms, at_byte } => write!(
                f,
                "Hang: no complete reply after {after_ms} ms (reply stopped at byte {at_byte})"
            ),
            Outcome::DaemonDied { exit, stderr_tail } => {
                write!(f, "DaemonDied")?;
                if let Some(e) = exit {
                    write!(f, " ({e})")?;
                }
                if !stderr_tail.is_empty() {
                    write!(f, ": {}", stderr_tail.lines().last().unwrap_or_default())?;
                }
                Ok(())
            }
            Outcome::LeakedProcess { processes } => {
                write!(f, "LeakedProcess: ")?;
                let list: Vec<String> = processes.iter().map(|(p, c)| format!("{p} {c}")).collect();
                write!(f, "{}", list.join("; "))
            }
            Outcome::ResourceExceeded {
                exceeded,
                processes,
                reply,
            } => {
                let what: Vec<String> = exceeded.iter().map(Exceeded::to_string).collect();
                write!(f, "ResourceExceeded: {}", what.join(", "))?;
                // Their command lines are in the report's process lines and the JSON.
                if !processes.is_empty() {
                    let pids: Vec<String> = processes.iter().map(|(p, _)| p.to_string()).collect();
                    write!(f, " (spawned: pids {})", pids.join(", "))?;
                }
                write!(f, "; the task itself: {reply}")
            }
            Outcome::Harness { error } => write!(f, "harness error: {error}"),
        }
    }
}

fn short(v: &serde_json::Value) -> String {
    let s = v.to_string();
    if s.chars().count() > 200 {
        format!(
            "{}... ({} chars)",
            s.chars().take(200).collect::<String>(),
            s.len()
        )
    } else {
        s
    }
}

/// Type and message of the exception a Python traceback ends in.
///
/// The exception line is the first unindented line after the frames of the *last* traceback
/// (chained exceptions print several), and the message runs from there to the end: pyspark's
/// messages can span lines (PYTHON_VERSION_MISMATCH in 3.5-4.3 ends with a "Please check
/// environment variables" line; any `ValueError("a\nb")` does too), so the last line of the text
/// is not always the exception line. Without a "Traceback" header (a bare "EOFError" written by a
/// dying worker) the last unindented line is taken.
pub fn parse_exception(traceback: &str) -> (String, String) {
    let body = match traceback.rfind(TRACEBACK_HEADER) {
        Some(start) => {
            let after_header = &traceback[start..];
            let mut seen_frame = false;
            let mut offset = 0;
            let mut found = None;
            for line in after_header.split_inclusive('\n').skip(1) {
                let at = TRACEBACK_HEADER.len() + offset;
                offset += line.len();
                if line.starts_with(' ') || line.starts_with('\t') {
                    seen_frame = true;
                } else if seen_frame && !line.trim().is_empty() {
                    found = Some(at);
                    break;
                }
            }
            match found {
                Some(at) => after_header[at..].trim_start_matches(['\r', '\n']),
                None => return unparsed(traceback),
            }
        }
        None => return unparsed(traceback),
    };
    let (first, rest) = body.split_once('\n').unwrap_or((body, ""));
    let first = first.trim_end();
    let rest = rest.trim_end();
    let (exc_type, head) = match first.split_once(": ") {
        Some((t, m)) if is_type_name(t) => (t, m),
        _ if is_type_name(first.trim_end_matches(':')) => (first.trim_end_matches(':'), ""),
        _ => {
            return (
                "<unparsed traceback>".to_owned(),
                body.trim_end().to_owned(),
            )
        }
    };
    let message = if rest.is_empty() {
        head.to_owned()
    } else {
        format!("{head}\n{rest}")
    };
    (exc_type.to_owned(), message)
}

const TRACEBACK_HEADER: &str = "Traceback (most recent call last):";

/// A dotted Python name (`struct.error`, `pyspark.errors.exceptions.base.PySparkRuntimeError`).
fn is_type_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|part| {
            part.chars()
                .next()
                .is_some_and(|c| c.is_alphabetic() || c == '_')
                && part.chars().all(|c| c.is_alphanumeric() || c == '_')
        })
}

/// No traceback header: the last unindented line, "Type: message" or a bare type.
fn unparsed(text: &str) -> (String, String) {
    let line = text
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with(' ') && !l.starts_with('\t'))
        .unwrap_or("")
        .trim();
    match line.split_once(": ") {
        Some((t, m)) if is_type_name(t) => (t.to_owned(), m.to_owned()),
        _ if is_type_name(line) => (line.to_owned(), String::new()),
        _ => ("<unparsed traceback>".to_owned(), line.to_owned()),
    }
}

/// Where the daemon stood when a task or a connect failed.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum DaemonFate {
    /// Direct modes: there is no daemon, so nothing can be blamed on one.
    #[default]
    NoDaemon,
    Running,
    Died {
        exit: Option<ExitInfo>,
        stderr_tail: String,
    },
}

/// What is known about the worker side when a task did not complete, to tell a crash from a
/// daemon death.
#[derive(Clone, Debug, Default)]
pub struct WorkerFacts {
    pub pid: i32,
    pub daemon: DaemonFate,
    /// Direct modes: how the worker process ended, when it did within the wait.
    pub worker_exit: Option<ExitInfo>,
}

impl WorkerFacts {
    /// Look at the processes after a failure. A daemon that is dying (its forks failed, it was
    /// killed a moment ago) may not be reapable yet, so in daemon modes this waits up to `settle`
    /// for it to exit before calling it running; a direct worker is waited for up to `settle` too.
    /// `settle` is a limit, not a sleep: an exit ends the wait at once.
    pub async fn gather(workers: &mut Workers, pid: Option<i32>, settle: Duration) -> WorkerFacts {
        let mut facts = WorkerFacts {
            pid: pid.unwrap_or(0),
            ..WorkerFacts::default()
        };
        if workers.mode().uses_daemon() {
            facts.daemon = match workers.wait_daemon_exit(settle).await {
                DaemonState::Exited(exit) => DaemonFate::Died {
                    exit: Some(exit),
                    stderr_tail: tail_lines(&workers.stderr(), 20),
                },
                DaemonState::Running => DaemonFate::Running,
                DaemonState::NoDaemon => DaemonFate::NoDaemon,
            };
        } else if let Some(pid) = pid {
            facts.worker_exit = workers.wait_direct_worker(pid, settle).await;
        }
        facts
    }
}

/// The one judge of a finished task, for scenarios, goldens, fuzz cases and reproducers alike:
/// a -2 reply is a PythonException, an incomplete one a crash, hang, violation or daemon death;
/// a completed reply is handed to `compare` (the caller's expectation: values, recorded frames, or
/// nothing).
pub fn judge_task(
    result: &TaskResult,
    facts: &WorkerFacts,
    compare: impl FnOnce(&Reply) -> Outcome,
) -> Outcome {
    match &result.reply {
        Ok(reply) => match &reply.end {
            ReplyEnd::Exception { traceback } => {
                let (exc_type, message) = parse_exception(traceback);
                Outcome::PythonException { exc_type, message }
            }
            ReplyEnd::Completed { .. } => compare(reply),
        },
        Err(failure) => {
            if let DaemonFate::Died { exit, stderr_tail } = &facts.daemon {
                return Outcome::DaemonDied {
                    exit: *exit,
                    stderr_tail: stderr_tail.clone(),
                };
            }
            match failure {
                ReadFailure::Eof { at_byte, what } => Outcome::WorkerCrashed {
                    pid: facts.pid,
                    exit: facts.worker_exit,
                    detail: format!("connection closed at reply byte {at_byte}, {what}"),
                },
                ReadFailure::Io { what } => Outcome::WorkerCrashed {
                    pid: facts.pid,
                    exit: facts.worker_exit,
                    detail: format!("reading the reply failed: {what}"),
                },
                ReadFailure::Deadline { after_ms, at_byte } => Outcome::Hang {
                    after_ms: *after_ms,
                    at_byte: *at_byte,
                },
                ReadFailure::Violation { at_byte, what } => Outcome::ProtocolViolation {
                    at_byte: *at_byte,
                    what: what.clone(),
                },
            }
        }
    }
}

/// What a task's worker used, judged after its reply (`reply`, from [`judge_task`] or
/// [`connect_failure`]): a limit of `expect_resources` it broke makes the task
/// `ResourceExceeded` whatever the reply was (the scenario asked for the limit; the reply's own
/// verdict is kept inside), and processes it spawned that outlived the task (killed since) turn a
/// task that passed into `LeakedProcess`. fakejvm's own failure stays `Harness`.
pub fn judge_resources(reply: Outcome, usage: &Usage, limits: Option<&ResourceLimits>) -> Outcome {
    if reply.kind() == OutcomeKind::Harness {
        return reply;
    }
    let exceeded = limits.map(|l| l.check(usage)).unwrap_or_default();
    if !exceeded.is_empty() {
        return Outcome::ResourceExceeded {
            exceeded,
            processes: usage.process_list(),
            reply: Box::new(reply),
        };
    }
    let outlived = usage.outlived();
    if reply == Outcome::Passed && !outlived.is_empty() {
        return Outcome::LeakedProcess {
            processes: outlived,
        };
    }
    reply
}

/// The one mapping of a failed start or connect (daemon launch, fork, handshake, direct worker
/// connecting back) to an outcome.
pub fn connect_failure(err: WorkerError, facts: &WorkerFacts) -> Outcome {
    match err {
        // fakejvm could not even run the interpreter: not a finding about pyspark.
        WorkerError::Spawn { .. }
        | WorkerError::WrongMode { .. }
        | WorkerError::UnknownWorker { .. } => Outcome::Harness {
            error: one_line(&err.to_string()),
        },
        WorkerError::ErrnoAsPid { .. }
        | WorkerError::NegativePid { .. }
        | WorkerError::BadPort { .. }
        | WorkerError::BadSocketPath { .. } => Outcome::ProtocolViolation {
            at_byte: 0,
            what: err.to_string(),
        },
        WorkerError::DaemonDied { exit, stderr_tail } => Outcome::DaemonDied { exit, stderr_tail },
        WorkerError::WorkerExited {
            pid,
            exit,
            stderr_tail,
        } => Outcome::WorkerCrashed {
            pid,
            exit,
            detail: format!(
                "ended before it connected back: {}",
                stderr_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("no stderr")
                    .trim()
            ),
        },
        // A worker that never sends its pid (or never answers auth) hangs before the task.
        WorkerError::Timeout { after, .. } => match &facts.daemon {
            DaemonFate::Died { exit, stderr_tail } => Outcome::DaemonDied {
                exit: *exit,
                stderr_tail: stderr_tail.clone(),
            },
            _ => Outcome::Hang {
                after_ms: after.as_millis() as u64,
                at_byte: 0,
            },
        },
        other => match &facts.daemon {
            DaemonFate::Died { exit, stderr_tail } => Outcome::DaemonDied {
                exit: *exit,
                stderr_tail: stderr_tail.clone(),
            },
            _ => Outcome::WorkerCrashed {
                pid: facts.pid,
                exit: facts.worker_exit,
                detail: format!("connecting failed: {}", one_line(&other.to_string())),
            },
        },
    }
}

/// The last `n` lines of a process's output.
pub fn tail_lines(bytes: &[u8], n: usize) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exception_type_and_message_come_from_the_last_line() {
        let tb = "Traceback (most recent call last):\n  File \"x.py\", line 1, in f\n    1/0\nZeroDivisionError: division by zero\n";
        assert_eq!(
            parse_exception(tb),
            ("ZeroDivisionError".into(), "division by zero".into())
        );
        let tb = "Traceback...\n  File ...\npyspark.errors.exceptions.base.PySparkRuntimeError: [X] bad: thing\n";
        assert_eq!(
            parse_exception(tb).0,
            "pyspark.errors.exceptions.base.PySparkRuntimeError"
        );
        assert_eq!(
            parse_exception("Traceback\nEOFError\n"),
            ("EOFError".into(), String::new())
        );
        assert_eq!(
            parse_exception("EOFError\n"),
            ("EOFError".into(), String::new())
        );
    }

    #[test]
    fn a_message_over_several_lines_is_kept_whole() {
        let tb = "Traceback (most recent call last):\n  File \"/p/worker_util.py\", line 77, in check_python_version\n    raise PySparkRuntimeError(\npyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version: 3.11 than that in driver: 3.10.\nPlease check environment variables PYSPARK_PYTHON and PYSPARK_DRIVER_PYTHON are correctly set.\n";
        let (t, m) = parse_exception(tb);
        assert_eq!(t, "pyspark.errors.exceptions.base.PySparkRuntimeError");
        assert!(
            m.starts_with("[PYTHON_VERSION_MISMATCH] Python in worker"),
            "{m}"
        );
        assert!(m.ends_with("are correctly set."), "{m}");
        let tb = "Traceback (most recent call last):\n  File \"<scenario function>\", line 2, in f\nValueError: first line\nsecond line\n";
        assert_eq!(
            parse_exception(tb),
            ("ValueError".into(), "first line\nsecond line".into())
        );
    }

    #[test]
    fn the_last_of_chained_tracebacks_counts() {
        let tb = "Traceback (most recent call last):\n  File \"a.py\", line 1, in f\nKeyError: 'k'\n\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"a.py\", line 3, in f\nValueError: outer\n";
        assert_eq!(parse_exception(tb), ("ValueError".into(), "outer".into()));
    }

    #[test]
    fn a_direct_worker_is_not_a_daemon() {
        let result = TaskResult {
            reply: Err(ReadFailure::Eof {
                at_byte: 9,
                what: "before the final int".into(),
            }),
            write_error: None,
            bytes_sent: 0,
            elapsed_ms: 0,
        };
        let facts = WorkerFacts {
            pid: 7,
            daemon: DaemonFate::NoDaemon,
            worker_exit: Some(ExitInfo::Code(3)),
        };
        let o = judge_task(&result, &facts, |_| Outcome::Passed);
        assert!(
            matches!(
                o,
                Outcome::WorkerCrashed {
                    pid: 7,
                    exit: Some(ExitInfo::Code(3)),
                    ..
                }
            ),
            "{o}"
        );
        let dead = WorkerFacts {
            pid: 7,
            daemon: DaemonFate::Died {
                exit: Some(ExitInfo::Code(1)),
                stderr_tail: String::new(),
            },
            worker_exit: None,
        };
        assert_eq!(
            judge_task(&result, &dead, |_| Outcome::Passed).kind(),
            OutcomeKind::DaemonDied
        );
    }
}
