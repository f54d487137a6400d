//! The one typed outcome every run ends in (scenario, golden, fuzz case or reproducer), and the
//! classification of a finished task into it.

use crate::session::{ReadFailure, TaskResult};
use crate::worker::ExitInfo;
use serde::{Deserialize, Serialize};
use std::fmt;

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

/// Type and message from a Python traceback: its last unindented "Type: message" line.
pub fn parse_exception(traceback: &str) -> (String, String) {
    let line = traceback
        .lines()
        .rev()
        .find(|l| !l.trim().is_empty() && !l.starts_with(' ') && !l.starts_with('\t'))
        .unwrap_or("")
        .trim();
    match line.split_once(": ") {
        Some((t, m)) if !t.contains(' ') => (t.to_owned(), m.to_owned()),
        _ if !line.contains(' ') && !line.is_empty() => (line.to_owned(), String::new()),
        _ => ("<unparsed traceback>".to_owned(), line.to_owned()),
    }
}

/// What is known about the worker side when a task did not complete, to tell a crash from a
/// daemon death.
#[derive(Clone, Debug, Default)]
pub struct WorkerFacts {
    pub pid: i32,
    pub daemon_died: Option<(Option<ExitInfo>, String)>,
    pub worker_exit: Option<ExitInfo>,
}

/// The outcome of a task that did not produce a complete reply, or of a -2 reply. A completed
/// reply returns None: its output still has to be compared by the caller.
pub fn classify_failure(result: &TaskResult, facts: &WorkerFacts) -> Option<Outcome> {
    use crate::protocol::ReplyEnd;
    match &result.reply {
        Ok(reply) => match &reply.end {
            ReplyEnd::Exception { traceback } => {
                let (exc_type, message) = parse_exception(traceback);
                Some(Outcome::PythonException { exc_type, message })
            }
            ReplyEnd::Completed { .. } => None,
        },
        Err(failure) => {
            if let Some((exit, stderr_tail)) = &facts.daemon_died {
                return Some(Outcome::DaemonDied {
                    exit: *exit,
                    stderr_tail: stderr_tail.clone(),
                });
            }
            Some(match failure {
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
            })
        }
    }
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
    }
}
