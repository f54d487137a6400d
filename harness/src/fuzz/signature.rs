//! What makes two findings the same: the outcome kind, the exception type (or the signal), the
//! innermost traceback frames, and for outcomes without a traceback what happened, all
//! normalised: no paths, no line numbers, no pids, no addresses, no byte offsets. A signature
//! is stable across runs and machines with the same pyspark, so a reproducer can check that it
//! replays to the same one.

use crate::verdict::{Outcome, OutcomeKind};
use crate::worker::ExitInfo;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub kind: OutcomeKind,
    /// The Python exception type, or the fatal signal of a crashed worker (from faulthandler).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exc_type: Option<String>,
    /// Innermost traceback frames first, as `file.py:function: code`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub frames: Vec<String>,
    /// For outcomes without a traceback: what happened, numbers taken out.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One frame of a Python traceback (or of a faulthandler dump).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TbFrame {
    /// The file's path as the traceback gave it (not part of the signature).
    pub path: String,
    pub file: String,
    pub function: String,
    pub code: String,
}

impl TbFrame {
    pub fn text(&self) -> String {
        if self.code.is_empty() {
            format!("{}:{}", self.file, self.function)
        } else {
            format!("{}:{}: {}", self.file, self.function, self.code)
        }
    }
}

impl Signature {
    /// One line, the form that is hashed and shown.
    pub fn text(&self) -> String {
        let mut s = format!("{:?}", self.kind);
        if let Some(t) = &self.exc_type {
            s.push(' ');
            s.push_str(t);
        }
        if !self.frames.is_empty() {
            s.push_str(" at ");
            s.push_str(&self.frames.join(" <- "));
        }
        if let Some(d) = &self.detail {
            s.push_str(" | ");
            s.push_str(d);
        }
        s
    }

    /// 12 hex digits of the text's SHA-256: file names and dedupe keys.
    pub fn id(&self) -> String {
        let h = Sha256::digest(self.text().as_bytes());
        hex::encode(&h[..6])
    }

    /// A short slug for file names: kind and exception type.
    pub fn slug(&self) -> String {
        let kind = match self.kind {
            OutcomeKind::PythonException => "exception",
            OutcomeKind::WorkerCrashed => "crash",
            OutcomeKind::Hang => "hang",
            OutcomeKind::DaemonDied => "daemon-died",
            OutcomeKind::ProtocolViolation => "violation",
            OutcomeKind::LeakedProcess => "leak",
            OutcomeKind::ResourceExceeded => "resources",
            OutcomeKind::Mismatch => "wrong-output",
            OutcomeKind::Passed => "passed",
            OutcomeKind::Harness => "harness",
        };
        let mut s = kind.to_string();
        if let Some(t) = &self.exc_type {
            s.push('-');
            // The module stays: struct.error and socket.error are different findings.
            s.extend(
                t.chars()
                    .map(|c| if c == '.' { '_' } else { c })
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_'),
            );
        }
        s
    }

    /// The signature of an outcome. `traceback` is the worker's -2 text (or a faulthandler dump
    /// for a crash); `depth` innermost frames are kept.
    pub fn of(outcome: &Outcome, traceback: Option<&str>, depth: usize) -> Signature {
        let frames = || {
            traceback
                .map(|t| {
                    innermost_frames(t, depth)
                        .iter()
                        .map(TbFrame::text)
                        .collect()
                })
                .unwrap_or_default()
        };
        let kind = outcome.kind();
        match outcome {
            Outcome::PythonException { exc_type, .. } => Signature {
                kind,
                exc_type: Some(exc_type.clone()),
                frames: frames(),
                detail: None,
            },
            Outcome::WorkerCrashed { detail, exit, .. } => {
                let signal = traceback
                    .and_then(fatal_signal)
                    .or_else(|| exit_signal(*exit));
                Signature {
                    kind,
                    exc_type: signal,
                    frames: frames(),
                    detail: Some(normalise(detail)),
                }
            }
            Outcome::Hang { .. } => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: None,
            },
            Outcome::ProtocolViolation { what, .. } => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: Some(normalise(what)),
            },
            Outcome::DaemonDied { stderr_tail, .. } => {
                let last = stderr_tail
                    .lines()
                    .rev()
                    .find(|l| !l.trim().is_empty())
                    .unwrap_or("");
                Signature {
                    kind,
                    exc_type: None,
                    frames: vec![],
                    detail: Some(normalise(last)),
                }
            }
            Outcome::LeakedProcess { .. } => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: Some("a worker outlived its case".into()),
            },
            Outcome::ResourceExceeded { exceeded, .. } => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: Some(
                    exceeded
                        .iter()
                        .map(|e| format!("{:?}", e.what))
                        .collect::<Vec<_>>()
                        .join(", "),
                ),
            },
            Outcome::Mismatch { expected, .. } => {
                let what = if expected.is_string() {
                    "the worker accepted a malformed data section"
                } else {
                    "output differs from the round-tripped input"
                };
                Signature {
                    kind,
                    exc_type: None,
                    frames: vec![],
                    detail: Some(what.into()),
                }
            }
            Outcome::Passed => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: None,
            },
            Outcome::Harness { error } => Signature {
                kind,
                exc_type: None,
                frames: vec![],
                detail: Some(normalise(error)),
            },
        }
    }
}

/// Frames of the LAST traceback in `text` (a chained exception prints the cause first), innermost
/// first. Understands both `File "x", line 3, in f` (tracebacks) and `File "x", line 3 in f`
/// (faulthandler).
pub fn innermost_frames(text: &str, depth: usize) -> Vec<TbFrame> {
    let start = text
        .rfind("Traceback (most recent call last):")
        .or_else(|| text.rfind("Current thread"))
        .or_else(|| text.rfind("Stack (most recent call first)"));
    let body = &text[start.unwrap_or(0)..];
    let faulthandler_order = !body.starts_with("Traceback");
    let lines: Vec<&str> = body.lines().collect();
    let mut frames = vec![];
    for (i, line) in lines.iter().enumerate() {
        let t = line.trim_start();
        let Some(rest) = t.strip_prefix("File \"") else {
            continue;
        };
        let Some((path, rest)) = rest.split_once('"') else {
            continue;
        };
        let function = rest.rsplit(" in ").next().unwrap_or("").trim().to_string();
        let file = path.rsplit('/').next().unwrap_or(path).to_string();
        // The code line follows a traceback frame line, indented deeper (4 spaces against 2);
        // carets and `~` marks (Python 3.11+) are not code. Faulthandler dumps have no code
        // lines, and a function without source (e.g. compiled from a string) has none either.
        let code = lines
            .get(i + 1)
            .filter(|l| l.starts_with("    "))
            .map(|l| l.trim())
            .filter(|l| !l.is_empty() && !l.chars().all(|c| matches!(c, '^' | '~' | ' ')))
            .map(normalise_code)
            .unwrap_or_default();
        frames.push(TbFrame {
            path: path.to_string(),
            file,
            function,
            code,
        });
    }
    // Tracebacks list the outermost frame first; faulthandler the innermost.
    if !faulthandler_order {
        frames.reverse();
    }
    frames.truncate(depth);
    frames
}

/// The fatal signals faulthandler reports: number, name, and the words of its
/// "Fatal Python error: ..." line.
pub const FATAL_SIGNALS: [(i32, &str, &str); 5] = [
    (libc::SIGSEGV, "SIGSEGV", "Segmentation fault"),
    (libc::SIGABRT, "SIGABRT", "Aborted"),
    (libc::SIGBUS, "SIGBUS", "Bus error"),
    (libc::SIGFPE, "SIGFPE", "Floating point"),
    (libc::SIGILL, "SIGILL", "Illegal instruction"),
];

/// "Fatal Python error: Segmentation fault" -> SIGSEGV, and so on.
pub(crate) fn fatal_signal(dump: &str) -> Option<String> {
    let line = dump
        .lines()
        .find(|l| l.starts_with("Fatal Python error:"))?;
    let what = line.trim_start_matches("Fatal Python error:").trim();
    match FATAL_SIGNALS
        .iter()
        .find(|(_, _, words)| what.contains(words))
    {
        Some((_, name, _)) => Some(name.to_string()),
        None => Some(normalise(what)),
    }
}

/// The name of a fatal signal a process died of (None for any other signal or an exit code):
/// the signal of a crash that left no faulthandler dump (one before pyspark's worker enabled
/// faulthandler), where fakejvm reaped the process itself (spawn, persistent).
pub(crate) fn exit_signal(exit: Option<ExitInfo>) -> Option<String> {
    match exit? {
        ExitInfo::Signal(n) => FATAL_SIGNALS
            .iter()
            .find(|(signo, _, _)| *signo == n)
            .map(|(_, name, _)| name.to_string()),
        ExitInfo::Code(_) => None,
    }
}

fn normalise_code(line: &str) -> String {
    let collapsed: Vec<&str> = line.split_whitespace().collect();
    strip_addresses(&collapsed.join(" "))
}

fn strip_addresses(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(p) = rest.find("0x") {
        out.push_str(&rest[..p]);
        let after = &rest[p + 2..];
        let n = after.chars().take_while(|c| c.is_ascii_hexdigit()).count();
        out.push_str(if n > 0 { "<addr>" } else { "0x" });
        rest = &after[n..];
    }
    out.push_str(rest);
    out
}

/// Digits become `N` (offsets, pids, lengths), paths lose their directories, space is collapsed.
pub fn normalise(s: &str) -> String {
    let s = strip_addresses(s);
    let mut out = String::with_capacity(s.len());
    let mut in_digits = false;
    for c in s.chars() {
        if c.is_ascii_digit() {
            if !in_digits {
                out.push('N');
            }
            in_digits = true;
        } else {
            in_digits = false;
            out.push(c);
        }
    }
    let words: Vec<String> = out
        .split_whitespace()
        .map(|w| {
            if w.contains('/') && w.len() > 1 {
                w.rsplit('/').next().unwrap_or(w).to_string()
            } else {
                w.to_string()
            }
        })
        .collect();
    words.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    const STRUCT_ERROR: &str = "Traceback (most recent call last):\n  File \"/x/site-packages/pyspark/worker.py\", line 1968, in main\n    split_index = read_int(infile)\n                  ^^^^^^^^^^^^^^^^\n  File \"/x/site-packages/pyspark/serializers.py\", line 596, in read_int\n    return struct.unpack(\"!i\", length)[0]\n           ^^^^^^^^^^^^^^^^^^^^^^^^^^^^\nstruct.error: unpack requires a buffer of 4 bytes\n";

    #[test]
    fn frames_are_innermost_first_without_paths_or_line_numbers() {
        let f = innermost_frames(STRUCT_ERROR, 2);
        assert_eq!(
            f[0].text(),
            "serializers.py:read_int: return struct.unpack(\"!i\", length)[0]"
        );
        assert_eq!(
            f[1].text(),
            "worker.py:main: split_index = read_int(infile)"
        );
        let o = Outcome::PythonException {
            exc_type: "struct.error".into(),
            message: "unpack requires a buffer of 4 bytes".into(),
        };
        let s = Signature::of(&o, Some(STRUCT_ERROR), 1);
        assert_eq!(s.text(), "PythonException struct.error at serializers.py:read_int: return struct.unpack(\"!i\", length)[0]");
        assert_eq!(s.slug(), "exception-struct_error");
        assert_eq!(s.id().len(), 12);
        // Another path and line numbers: the same signature.
        let moved = STRUCT_ERROR
            .replace("/x/site-packages", "/elsewhere")
            .replace("596", "601");
        assert_eq!(Signature::of(&o, Some(&moved), 1), s);
    }

    #[test]
    fn a_multi_line_message_still_gives_the_type() {
        let tb = "Traceback (most recent call last):\n  File \"/p/worker_util.py\", line 77, in check_python_version\n    raise PySparkRuntimeError(\npyspark.errors.exceptions.base.PySparkRuntimeError: [PYTHON_VERSION_MISMATCH] Python in worker has different version.\nPlease check environment variables PYSPARK_PYTHON and PYSPARK_DRIVER_PYTHON are correctly set.\n";
        let (exc_type, message) = crate::verdict::parse_exception(tb);
        let o = Outcome::PythonException { exc_type, message };
        assert_eq!(
            Signature::of(&o, Some(tb), 1).exc_type.as_deref(),
            Some("pyspark.errors.exceptions.base.PySparkRuntimeError")
        );
    }

    #[test]
    fn a_frame_without_source_has_no_code() {
        let tb = "Traceback (most recent call last):\n  File \"/p/serializers.py\", line 274, in dump_stream\n    vs = list(x)\n  File \"<scenario function>\", line 3, in func\nZeroDivisionError: integer division or modulo by zero\n";
        let f = innermost_frames(tb, 2);
        assert_eq!(f[0].text(), "<scenario function>:func");
        assert_eq!(f[1].text(), "serializers.py:dump_stream: vs = list(x)");
    }

    #[test]
    fn the_last_of_chained_tracebacks_counts() {
        let tb = format!("{STRUCT_ERROR}\nDuring handling of the above exception, another exception occurred:\n\nTraceback (most recent call last):\n  File \"/p/worker.py\", line 9, in main\n    raise ValueError()\nValueError\n");
        let f = innermost_frames(&tb, 3);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].function, "main");
    }

    #[test]
    fn faulthandler_dumps_give_the_signal_and_frames() {
        let dump = "Fatal Python error: Segmentation fault\n\nCurrent thread 0x00007f (most recent call first):\n  File \"/p/serializers.py\", line 12 in loads\n  File \"/p/worker.py\", line 40 in main\n";
        assert_eq!(fatal_signal(dump).as_deref(), Some("SIGSEGV"));
        let abort = dump.replace("Segmentation fault", "Aborted");
        assert_eq!(fatal_signal(&abort).as_deref(), Some("SIGABRT"));
        let f = innermost_frames(dump, 2);
        assert_eq!(f[0].text(), "serializers.py:loads");
        assert_eq!(f[1].text(), "worker.py:main");
    }

    #[test]
    fn details_lose_numbers_and_paths() {
        assert_eq!(
            normalise("connection closed at reply byte 1234, stream ended in /tmp/x/y"),
            "connection closed at reply byte N, stream ended in y"
        );
        assert_eq!(normalise("object at 0x7f00ab"), "object at <addr>");
    }

    #[test]
    fn a_crash_without_a_dump_takes_its_signal_from_the_exit_status() {
        let crash = |exit| Outcome::WorkerCrashed {
            pid: 7,
            exit,
            detail: "connection closed at reply byte 0".into(),
        };
        let sig = Signature::of(&crash(Some(ExitInfo::Signal(libc::SIGSEGV))), None, 1);
        assert_eq!(sig.exc_type.as_deref(), Some("SIGSEGV"));
        assert_eq!(sig.slug(), "crash-SIGSEGV");
        // SIGKILL is fakejvm's (or the OOM killer's), not a crash of the worker's own.
        let killed = Signature::of(&crash(Some(ExitInfo::Signal(libc::SIGKILL))), None, 1);
        assert_eq!(killed.exc_type, None);
        let exited = Signature::of(&crash(Some(ExitInfo::Code(3))), None, 1);
        assert_eq!(exited.exc_type, None);
        // The dump wins: it is there in every executor, the exit status only in some.
        let dump = "Fatal Python error: Aborted\n\nCurrent thread 0x1 (most recent call first):\n  File \"/p/worker.py\", line 4 in main\n";
        let both = Signature::of(&crash(Some(ExitInfo::Signal(libc::SIGABRT))), Some(dump), 1);
        assert_eq!(both.exc_type.as_deref(), Some("SIGABRT"));
        assert_eq!(both.frames, vec!["worker.py:main".to_string()]);
    }
}
