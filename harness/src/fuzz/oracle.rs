//! Which observations are findings.
//!
//! A worker fed a malformed request should fail cleanly: a -2 reply with an exception that says
//! the input was bad (EOFError for a short stream, an unpickling error for a bad pickle, one of
//! pyspark's own error classes, pyarrow's checked refusals such as `ArrowInvalid`). Those are
//! *expected* and configurable ([`ExpectedRule`]). Every other exception type is a finding
//! (`ArrowMemoryError` among them: an allocation believed before it was checked), and so are: a
//! crash (the connection closed without a complete reply; a fatal signal, named from
//! faulthandler's dump or the exit status, is a native crash whose reproducer also gets a native
//! stack, see `native_stack`), a hang past the deadline, the
//! daemon dying, a reply that breaks the protocol, a worker that outlives its case, and a
//! round-trip seed whose output is not its input.

use super::case::Case;
use super::exec::Observation;
use super::seeds::{RoundTrip, Seed};
use super::signature::{innermost_frames, Signature};
use crate::pickle::{self, FrameKind};
use crate::protocol::{ReplyEnd, SpanKind};
use crate::verdict::{Outcome, OutcomeKind};
use crate::wire::{Reader, Slot, SpecialLength, Status};
use serde::{Deserialize, Serialize};

/// An exception that is a clean answer to bad input, not a finding. Written `TYPE`,
/// `TYPE@TEXT` or `*@TEXT`: the type matches by full name or by last dotted part (`UnpicklingError`
/// matches `_pickle.UnpicklingError`; a trailing `*` matches a prefix, `pyspark.errors.*`), and
/// TEXT must appear in some frame of the traceback, written `file.py:function: code` (so
/// `*@pickle.loads(` means "anything raised while unpickling a payload", and
/// `*@<scenario function>:` "anything the task's own function raised").
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedRule {
    pub exc_type: Option<String>,
    pub in_code: Option<String>,
    /// `*@user-code`: raised by the task's own function, not by pyspark's worker machinery.
    #[serde(default)]
    pub user_code: bool,
}

/// pyspark's worker machinery: an exception raised in these files is about the stream. The
/// task's function (a scenario's source, a recorded job's lambda, an RDD API closure from
/// pyspark/rdd.py) is user code.
const MACHINERY: &[&str] = &[
    "worker.py",
    "worker_util.py",
    "serializers.py",
    "util.py",
    "daemon.py",
    "broadcast.py",
    "accumulators.py",
    "taskcontext.py",
    "shuffle.py",
    "files.py",
    "cloudpickle.py",
    "cloudpickle_fast.py",
    "__init__.py",
];

/// The innermost frame that is neither Python's standard library nor another installed library
/// is outside pyspark's worker machinery: the task's own function raised.
///
/// Libraries are skipped because they are called by both: pyarrow raising under pyspark's
/// Arrow serializer (a mutated IPC stream) is about the stream, pandas raising under a
/// scenario's function is about the function. Cython frames (pyarrow's `pyarrow/error.pxi`)
/// carry a relative path; frozen modules (importlib's bootstrap) none at all.
fn raised_in_user_code(traceback: &str) -> bool {
    let frames = innermost_frames(traceback, usize::MAX);
    let library = |p: &str| {
        let pyspark = p.contains("/pyspark/");
        (p.contains("/lib/python3") && !p.contains("-packages/"))
            || p.starts_with("<frozen ")
            || (p.contains("-packages/") && !pyspark)
            || p.ends_with(".pxi")
            || p.ends_with(".pyx")
    };
    match frames.iter().find(|f| !library(&f.path)) {
        Some(f) => !(f.path.contains("/pyspark/") && MACHINERY.contains(&f.file.as_str())),
        None => false,
    }
}

/// The defaults, and why each is a clean failure.
pub(crate) const DEFAULT_EXPECTED: &[(&str, &str)] = &[
    ("EOFError", "the stream ended early and the worker said so"),
    ("UnpicklingError", "a payload is not a pickle"),
    ("*@pickle.loads(", "anything a corrupt pickle raises while it is being loaded"),
    ("*@unpickler.load()", "the same, through pyspark's restricted unpickler"),
    ("pyspark.errors.*", "pyspark's own error classes (e.g. PYTHON_VERSION_MISMATCH)"),
    ("SystemExit", "split index -1 is pyspark's test hook for an immediate exit"),
    ("*@user-code", "the task's own function raised (a seed that raises on purpose, or a function given odd values)"),
    ("ArrowInvalid", "pyarrow refused a malformed Arrow stream or value cleanly"),
    ("ArrowTypeError", "pyarrow: a type that does not fit (a schema that disagrees with its batch)"),
    ("ArrowNotImplementedError", "pyarrow: a type, compression or feature it does not read"),
    ("ArrowIndexError", "pyarrow: an offset or index out of range, checked"),
    ("ArrowKeyError", "pyarrow: an unknown field or dictionary id, checked"),
    ("ArrowCapacityError", "pyarrow: a length past what an array can hold, checked"),
    ("ArrowSerializationError", "pyarrow: an IPC message it cannot read, checked"),
];

/// pyarrow's errors that stay findings whatever the defaults: a failed allocation (a length
/// believed before it was checked) is not a clean refusal. Signals are never exceptions.
pub(crate) const ARROW_FINDINGS: &[&str] = &["ArrowMemoryError"];

impl ExpectedRule {
    pub fn parse(text: &str) -> Result<ExpectedRule, String> {
        let (t, code) = match text.split_once('@') {
            Some((t, c)) => (t.trim(), Some(c.to_string())),
            None => (text.trim(), None),
        };
        if code.as_deref() == Some("") {
            return Err(format!(
                "expected-exception rule {text:?}: nothing after '@'"
            ));
        }
        let user_code = code.as_deref() == Some("user-code");
        let code = if user_code { None } else { code };
        let exc_type = match t {
            "" | "*" => None,
            t if t.chars().all(|c| c.is_alphanumeric() || matches!(c, '_' | '.' | '*')) => Some(t.to_string()),
            _ => return Err(format!("expected-exception rule {text:?}: {t:?} is not an exception type name (write TYPE, TYPE@CODE or *@CODE)")),
        };
        if exc_type.is_none() && code.is_none() && !user_code {
            return Err(format!(
                "expected-exception rule {text:?} would match every exception"
            ));
        }
        Ok(ExpectedRule {
            exc_type,
            in_code: code,
            user_code,
        })
    }

    pub fn defaults() -> Vec<ExpectedRule> {
        DEFAULT_EXPECTED
            .iter()
            .map(|(r, _)| ExpectedRule::parse(r).expect("default rules parse"))
            .collect()
    }

    pub fn matches(&self, exc_type: &str, traceback: &str) -> bool {
        let last = exc_type.rsplit('.').next().unwrap_or(exc_type);
        if ARROW_FINDINGS.contains(&last) && self.exc_type.as_deref() != Some(last) {
            // Only a rule naming it (`--expect-exception ArrowMemoryError`) expects it.
            return false;
        }
        let type_ok = match &self.exc_type {
            None => true,
            Some(p) if p.ends_with('*') => exc_type.starts_with(&p[..p.len() - 1]),
            Some(p) => exc_type == p || exc_type.rsplit('.').next() == Some(p.as_str()),
        };
        let code_ok = match &self.in_code {
            None => true,
            Some(c) => innermost_frames(traceback, usize::MAX)
                .iter()
                .any(|f| f.text().contains(c.as_str())),
        };
        type_ok && code_ok && (!self.user_code || raised_in_user_code(traceback))
    }
}

/// What one executed case amounts to.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict {
    /// Something to report.
    Finding(Signature, Outcome),
    /// A clean failure or a pass; the signature still tells behaviours apart (corpus growth).
    Expected(Signature),
    /// fakejvm itself failed; not about the worker.
    Harness(String),
}

pub struct Judge {
    pub expected: Vec<ExpectedRule>,
    pub depth: usize,
}

impl Judge {
    /// `seed` is the case's seed, for the round-trip oracle.
    pub fn judge(&self, obs: &Observation, case: &Case, seed: Option<&Seed>) -> Verdict {
        let outcome = match &obs.outcome {
            Outcome::Harness { error } => return Verdict::Harness(error.clone()),
            Outcome::Passed => match round_trip_check(obs, case, seed) {
                Some(mismatch) => mismatch,
                None => Outcome::Passed,
            },
            other => other.clone(),
        };
        let sig = Signature::of(&outcome, obs.traceback.as_deref(), self.depth);
        match &outcome {
            Outcome::Passed => Verdict::Expected(sig),
            Outcome::PythonException { .. } => {
                let tb = obs.traceback.as_deref().unwrap_or("");
                let exc_type = sig.exc_type.as_deref().unwrap_or("");
                if self.expected.iter().any(|r| r.matches(exc_type, tb)) {
                    Verdict::Expected(sig)
                } else {
                    Verdict::Finding(sig, outcome)
                }
            }
            _ => Verdict::Finding(sig, outcome),
        }
    }

    /// The signature alone (minimisation and replay compare these).
    pub fn signature(&self, obs: &Observation, case: &Case, seed: Option<&Seed>) -> Signature {
        match self.judge(obs, case, seed) {
            Verdict::Finding(s, _) | Verdict::Expected(s) => s,
            Verdict::Harness(e) => Signature {
                kind: OutcomeKind::Harness,
                exc_type: None,
                frames: vec![],
                detail: Some(e),
            },
        }
    }
}

/// The round-trip oracle: for an identity seed whose header and command were left alone, the
/// completed task's output values must be the values of the data section sent. None: nothing
/// to report (not a round-trip case, equal, or the reference cannot judge it).
fn round_trip_check(obs: &Observation, case: &Case, seed: Option<&Seed>) -> Option<Outcome> {
    let seed = seed?;
    let rt = seed.round_trip?;
    let reply = obs.reply.as_ref()?;
    let ReplyEnd::Completed { .. } = &reply.end else {
        return None;
    };
    let head = |c: &Case| -> Vec<Vec<u8>> {
        c.frames
            .iter()
            .filter(|f| {
                matches!(
                    f.kind,
                    SpanKind::InitPrefix | SpanKind::Header | SpanKind::Command
                )
            })
            .map(|f| f.bytes.clone())
            .collect()
    };
    if head(case) != head(&seed.case) {
        return None;
    }
    let data: Vec<u8> = case.frames[case.data_range()]
        .iter()
        .flat_map(|f| f.bytes.iter().copied())
        .collect();
    let got_frames = reply.frames();
    let got = pickle::decode_frames(rt.output, &got_frames).ok()?;
    let got_json = serde_json::Value::Array(got.iter().map(pickle::value_to_json).collect());
    match reference_values(rt, &data) {
        Reference::Values(expected) => {
            let expected =
                serde_json::Value::Array(expected.iter().map(pickle::value_to_json).collect());
            (expected != got_json).then_some(Outcome::Mismatch {
                expected,
                got: got_json,
            })
        }
        Reference::Malformed(why) => Some(Outcome::Mismatch {
            expected: serde_json::Value::String(format!("a failure: {why}")),
            got: got_json,
        }),
        Reference::Unjudged => None,
    }
}

enum Reference {
    Values(Vec<pickle::Value>),
    /// The data section breaks the framing: a worker that completes anyway made something up.
    Malformed(String),
    /// Framing is fine but fakejvm's own pickle reader cannot read a payload, or reads an
    /// object whose unpickled form it cannot know: no verdict.
    Unjudged,
}

/// The values the data section holds, read the way the seed's deserializer reads them.
fn reference_values(rt: RoundTrip, data: &[u8]) -> Reference {
    let mut r = Reader::new(data);
    let mut items: Vec<Option<&[u8]>> = vec![];
    loop {
        match r.slot("data frame") {
            Ok(Status::Complete(Slot::Bytes(b))) => items.push(Some(b)),
            Ok(Status::Complete(Slot::Special(SpecialLength::Null))) => items.push(None),
            Ok(Status::Complete(Slot::Special(SpecialLength::EndOfDataSection))) => break,
            Ok(Status::Complete(Slot::Special(s))) => {
                return Reference::Malformed(format!("{s} in the data section"))
            }
            Ok(Status::Partial) => {
                return Reference::Malformed(
                    "the data section ends inside an item, before END_OF_DATA_SECTION".into(),
                )
            }
            Err(e) => return Reference::Malformed(format!("the data section does not frame: {e}")),
        }
    }
    // A NULL among pickled batches is a TypeError in the worker, never a completed task.
    if rt.input == FrameKind::Batched && items.iter().any(Option::is_none) {
        return Reference::Malformed("a NULL among pickled batches".into());
    }
    match pickle::decode_frames(rt.input, &items) {
        // An object is what the worker's unpickler builds by running a call fakejvm only
        // records (a mutated GLOBAL may name any function), so its re-pickled form is unknown.
        Ok(v) if v.iter().all(pickle::Value::is_plain) => Reference::Values(v),
        Ok(_) => Reference::Unjudged,
        Err(_) if rt.input == FrameKind::Utf8 => {
            Reference::Malformed("a text frame is not UTF-8".into())
        }
        Err(_) => Reference::Unjudged,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BAD_PICKLE: &str = "Traceback (most recent call last):\n  File \"/p/worker.py\", line 5, in main\n    func, profiler, deserializer, serializer = read_command(pickleSer, infile)\n  File \"/p/serializers.py\", line 500, in loads\n    return cloudpickle.loads(obj, encoding=encoding)\nKeyError: 120\n";

    #[test]
    fn rules_parse_and_match() {
        let rules = ExpectedRule::defaults();
        let any = |t: &str, tb: &str| rules.iter().any(|r| r.matches(t, tb));
        assert!(any("EOFError", ""));
        assert!(any("_pickle.UnpicklingError", ""));
        assert!(any("KeyError", BAD_PICKLE), "raised while unpickling");
        assert!(any(
            "pyspark.errors.exceptions.base.PySparkRuntimeError",
            ""
        ));
        assert!(!any("struct.error", ""));
        assert!(!any("KeyError", "Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/worker.py\", line 5, in main\n    x = d[k]\nKeyError: 1\n"));
        assert!(ExpectedRule::parse("*").is_err());
        assert!(ExpectedRule::parse("Value Error").is_err());
        assert_eq!(
            ExpectedRule::parse("ValueError@read(").unwrap(),
            ExpectedRule {
                exc_type: Some("ValueError".into()),
                in_code: Some("read(".into()),
                user_code: false
            }
        );
        let user = "Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/serializers.py\", line 274, in dump_stream\n    vs = list(x)\n  File \"/home/me/jobs.py\", line 3, in <lambda>\n    x * 2\nTypeError: bad\n";
        assert!(any("TypeError", user), "raised by the job's lambda");
        let in_rdd = user.replace("/home/me/jobs.py", "/e/site-packages/pyspark/rdd.py");
        assert!(
            any("TypeError", &in_rdd),
            "an RDD API closure is the task's function"
        );
        let machinery = "Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/serializers.py\", line 274, in dump_stream\n    vs = list(itertools.islice(iterator, batch))\n  File \"/usr/lib/python3.11/itertools.py\", line 1, in f\n    x\nTypeError: 'NoneType' object is not iterable\n";
        assert!(
            !any("TypeError", machinery),
            "the NULL-in-batch TypeError is a finding"
        );
        let import = "Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/worker.py\", line 9, in main\n    import x\n  File \"<frozen importlib._bootstrap_external>\", line 1, in _path_stat\nValueError: embedded null byte\n";
        assert!(
            !any("ValueError", import),
            "an include path pyspark put on sys.path is not user code"
        );
    }

    /// A pyarrow error raised while pyspark's Arrow serializer reads the stream.
    fn arrow_tb(exc: &str) -> String {
        format!("Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/worker.py\", line 9, in main\n    process()\n  File \"/e/site-packages/pyspark/sql/pandas/serializers.py\", line 120, in load_stream\n    for batch in reader:\n  File \"pyarrow/ipc.pxi\", line 700, in pyarrow.lib.RecordBatchReader.read_next_batch\n  File \"pyarrow/error.pxi\", line 92, in pyarrow.lib.check_status\n{exc}: bad\n")
    }

    #[test]
    fn pyarrows_clean_errors_are_expected_and_its_memory_error_is_not() {
        let rules = ExpectedRule::defaults();
        let any = |t: &str, tb: &str| rules.iter().any(|r| r.matches(t, tb));
        for t in [
            "pyarrow.lib.ArrowInvalid",
            "pyarrow.lib.ArrowTypeError",
            "pyarrow.lib.ArrowNotImplementedError",
            "pyarrow.lib.ArrowIndexError",
            "pyarrow.lib.ArrowKeyError",
            "pyarrow.lib.ArrowCapacityError",
            "pyarrow.lib.ArrowSerializationError",
        ] {
            assert!(any(t, &arrow_tb(t)), "{t}");
        }
        for t in ARROW_FINDINGS {
            let full = format!("pyarrow.lib.{t}");
            assert!(
                !any(&full, &arrow_tb(&full)),
                "{t} raised under pyspark's serializer is not the task's function"
            );
            let in_func = arrow_tb(&full).replace(
                "  File \"pyarrow/ipc.pxi\"",
                "  File \"<scenario function>\", line 2, in func\n  File \"pyarrow/ipc.pxi\"",
            );
            assert!(
                !any(&full, &in_func),
                "{t} stays a finding even when the task's function called pyarrow"
            );
            let named = ExpectedRule::parse(t).unwrap();
            assert!(named.matches(&full, ""), "a rule naming {t} expects it");
        }
        // Without the defaults (--no-default-expected) an Arrow error is a finding again.
        let none: Vec<ExpectedRule> = vec![];
        assert!(!none
            .iter()
            .any(|r| r.matches("pyarrow.lib.ArrowInvalid", "")));
        // pandas raising under the task's own function is still the function's.
        let in_pandas = "Traceback (most recent call last):\n  File \"/e/site-packages/pyspark/worker.py\", line 9, in main\n    process()\n  File \"<scenario function>\", line 2, in func\n  File \"/e/site-packages/pandas/core/frame.py\", line 3, in __getitem__\n    raise KeyError(key)\nKeyError: 'x'\n";
        assert!(any("KeyError", in_pandas));
    }

    #[test]
    fn reference_reads_frames_like_the_worker() {
        let rt = RoundTrip {
            input: FrameKind::Utf8,
            output: FrameKind::Batched,
        };
        let mut data = vec![];
        data.extend(2i32.to_be_bytes());
        data.extend(b"hi");
        data.extend((-5i32).to_be_bytes());
        data.extend((-1i32).to_be_bytes());
        match reference_values(rt, &data) {
            Reference::Values(v) => assert_eq!(
                v,
                vec![pickle::Value::Str("hi".into()), pickle::Value::None]
            ),
            _ => panic!("not values"),
        }
        data[3] = 9; // length 9, only 2 bytes follow before -5 -1
        assert!(matches!(
            reference_values(rt, &data[..6]),
            Reference::Malformed(_)
        ));
    }
}
