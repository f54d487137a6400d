//! The reproducer file format (JSON, versioned by `format`): one finding, self-contained.
//!
//! A reproducer holds the exact request bytes (base64, with the frame map and, when short, hex),
//! the pyspark and Python versions, the dialect, the worker mode and how the bytes were written,
//! and the outcome and signature it ended in. The campaign writes them (atomically, through
//! report::write_atomic: a crash never leaves half a reproducer); `fakejvm repro` replays them.
//!
//! ```json
//! {
//!   "kind": "fakejvm-reproducer", "format": 1,
//!   "title": "PythonException struct.error at serializers.py:read_int (pyspark 4.0.5)",
//!   "pyspark": "4.0.5", "python": "3.11", "dialect": "A", "mode": "fork_server",
//!   "found_in": "persistent", "confirmed_in": "fork_server",
//!   "close_after_write": true, "deadline_ms": 2000,
//!   "signature": {"kind": "PythonException", "exc_type": "struct.error", "frames": ["..."]},
//!   "signature_id": "3f2a9c1b7d4e", "signature_frames": 1,
//!   "request": {"len": 3, "base64": "AAAA", "hex": "000000",
//!               "frames": [{"kind": "header", "start": 0, "end": 3}]},
//!   "outcome": {...}, "traceback": "...", "minimised": true, ...,
//!   "fault_dump": "Fatal Python error: Segmentation fault ...",        (native crashes)
//!   "native_stack": "Program received signal SIGSEGV ...\n#0  ...",    (or native_stack_missing)
//!   "replay": "fakejvm repro findings/exception-struct_error-3f2a9c1b7d4e.json"
//! }
//! ```

use super::case::Case;
use super::exec::ExecMode;
use super::seeds::RoundTrip;
use super::signature::Signature;
use crate::error::BadInput;
use crate::pickle::FrameKind;
use crate::protocol::{Dialect, Span, SpanKind};
use base64::Engine;
use serde::{Deserialize, Serialize};
use std::path::Path;

pub const KIND: &str = "fakejvm-reproducer";
/// Bumped when a field changes meaning; `fakejvm repro` refuses other formats.
pub const FORMAT: u32 = 1;
/// Requests up to this long also carry their hex, to paste into a bug report.
const HEX_UP_TO: usize = 512;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reproducer {
    pub kind: String,
    pub format: u32,
    /// One line for a bug report title.
    pub title: String,
    pub pyspark: String,
    /// Python major.minor of the worker (it is also inside the request bytes).
    pub python: String,
    pub dialect: Dialect,
    /// How `fakejvm repro` runs it: where it was confirmed (a fork server for findings of the
    /// persistent and warm-fork executors), else where it was found.
    pub mode: ExecMode,
    /// The executor the campaign found it in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub found_in: Option<ExecMode>,
    /// Where it was re-run and ended in the same signature before it was reported: a fork server
    /// for the persistent and warm-fork executors (a finding that does not reproduce there is
    /// dropped), a fresh worker of the campaign's own mode otherwise. None: not re-run yet.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub confirmed_in: Option<ExecMode>,
    /// The write side was half-closed after the request (see fuzz::exec).
    pub close_after_write: bool,
    pub deadline_ms: u64,
    /// The address-space limit the workers ran under (MiB); absent: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_limit_mb: Option<u64>,
    pub signature: Signature,
    pub signature_id: String,
    /// How many traceback frames the signature keeps.
    pub signature_frames: usize,
    pub request: RequestBytes,
    /// Round-trip findings: how the data section and the output are read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub round_trip: Option<RoundTripSpec>,
    /// The outcome as fakejvm reported it when found (informational).
    pub outcome: serde_json::Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traceback: Option<String>,
    /// A hang: what the worker was doing at the deadline (state, kernel wait, CPU, RSS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worker_at_deadline: Option<String>,
    /// A worker killed by a fatal signal: faulthandler's dump, whole ("Fatal Python error:
    /// Segmentation fault", then the Python frames of every thread, innermost first).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fault_dump: Option<String>,
    /// A native crash: the backtrace of the crashing thread, from a re-run under gdb of the
    /// minimised case on a direct worker (fuzz::native_stack): the stop line, then `#0 ...`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_stack: Option<String>,
    /// A native crash without `native_stack`: why (gdb not on PATH, no crash under gdb, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub native_stack_missing: Option<String>,
    pub minimised: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub minimise: Option<serde_json::Value>,
    /// Length of the case as first found.
    pub original_len: usize,
    pub found: Found,
    /// The command that replays it.
    pub replay: String,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequestBytes {
    pub len: usize,
    pub base64: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hex: Option<String>,
    pub frames: Vec<FrameRef>,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FrameRef {
    pub kind: SpanKind,
    pub start: usize,
    pub end: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Found {
    /// UTC, RFC 3339.
    pub at: String,
    /// The seed the case descends from.
    pub seed: String,
    /// The campaign exec that found it.
    pub exec: u64,
    /// How many times the campaign hit this signature when the file was last written.
    pub count: u64,
}

/// `pickle::FrameKind`, spelled for files.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    Batched,
    Unbatched,
    Utf8,
    Raw,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoundTripSpec {
    pub input: Framing,
    pub output: Framing,
}

impl From<FrameKind> for Framing {
    fn from(k: FrameKind) -> Framing {
        match k {
            FrameKind::Batched => Framing::Batched,
            FrameKind::Unbatched => Framing::Unbatched,
            FrameKind::Utf8 => Framing::Utf8,
            FrameKind::Raw => Framing::Raw,
        }
    }
}

impl From<Framing> for FrameKind {
    fn from(k: Framing) -> FrameKind {
        match k {
            Framing::Batched => FrameKind::Batched,
            Framing::Unbatched => FrameKind::Unbatched,
            Framing::Utf8 => FrameKind::Utf8,
            Framing::Raw => FrameKind::Raw,
        }
    }
}

impl From<RoundTrip> for RoundTripSpec {
    fn from(r: RoundTrip) -> RoundTripSpec {
        RoundTripSpec {
            input: r.input.into(),
            output: r.output.into(),
        }
    }
}

impl From<RoundTripSpec> for RoundTrip {
    fn from(r: RoundTripSpec) -> RoundTrip {
        RoundTrip {
            input: r.input.into(),
            output: r.output.into(),
        }
    }
}

/// The reproducer's file name for a signature, e.g. `exception-struct_error-3f2a9c1b7d4e.json`:
/// one file per signature, so a finding found again rewrites its own file.
pub fn file_name(sig: &Signature) -> String {
    format!("{}-{}.json", sig.slug(), sig.id())
}

impl RequestBytes {
    pub fn of(case: &Case) -> RequestBytes {
        let bytes = case.to_bytes();
        RequestBytes {
            len: bytes.len(),
            base64: base64::engine::general_purpose::STANDARD.encode(&bytes),
            hex: (bytes.len() <= HEX_UP_TO).then(|| hex::encode(&bytes)),
            frames: case
                .spans()
                .into_iter()
                .map(|s| FrameRef {
                    kind: s.kind,
                    start: s.start,
                    end: s.end,
                })
                .collect(),
        }
    }
}

impl Reproducer {
    /// Read and check a reproducer file. Every problem is one line naming the file.
    pub fn load(path: &Path) -> Result<Reproducer, BadInput> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| BadInput::new(path, format!("cannot read: {e}")))?;
        Reproducer::parse(&text).map_err(|e| BadInput::new(path, e))
    }

    pub fn parse(text: &str) -> Result<Reproducer, String> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| format!("not JSON: {e}"))?;
        match v.get("kind").and_then(|k| k.as_str()) {
            Some(KIND) => {}
            Some(other) => return Err(format!("kind is {other:?}, not a {KIND} file")),
            None => return Err(format!("no \"kind\": {KIND:?}: not a fakejvm reproducer")),
        }
        match v.get("format").and_then(|f| f.as_u64()) {
            Some(f) if f == FORMAT as u64 => {}
            Some(f) => return Err(format!("format {f} is not the one this fakejvm reads ({FORMAT}): replay it with the fakejvm that wrote it")),
            None => return Err("no numeric \"format\"".into()),
        }
        // The field at fault first, as in scenario files.
        let r: Reproducer = serde_path_to_error::deserialize(v)
            .map_err(|e| format!("not a valid reproducer: {}: {}", e.path(), e.inner()))?;
        let bytes = r.bytes()?;
        let mut at = 0;
        for (i, f) in r.request.frames.iter().enumerate() {
            if f.start != at || f.end < f.start || f.end > bytes.len() {
                return Err(format!("request frame {i} ({:?}) spans {}..{}, which does not follow on at byte {at} within {} bytes", f.kind, f.start, f.end, bytes.len()));
            }
            at = f.end;
        }
        if at != bytes.len() && !r.request.frames.is_empty() {
            return Err(format!(
                "request frames cover {at} of {} bytes",
                bytes.len()
            ));
        }
        if r.signature.id() != r.signature_id {
            return Err(format!(
                "signature_id {} does not match the signature (its id is {}): was the file edited?",
                r.signature_id,
                r.signature.id()
            ));
        }
        Ok(r)
    }

    /// The request bytes, checked against `request.len` (and `hex` when present).
    pub fn bytes(&self) -> Result<Vec<u8>, String> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(self.request.base64.trim())
            .map_err(|e| format!("request.base64 is not base64: {e}"))?;
        if bytes.len() != self.request.len {
            return Err(format!(
                "request.base64 holds {} bytes but request.len says {}",
                bytes.len(),
                self.request.len
            ));
        }
        if let Some(h) = &self.request.hex {
            if hex::decode(h).ok().as_deref() != Some(&bytes[..]) {
                return Err("request.hex and request.base64 differ".into());
            }
        }
        Ok(bytes)
    }

    /// The request as frames again (for judging round trips and for reading).
    pub fn case(&self) -> Result<Case, String> {
        let bytes = self.bytes()?;
        let spans: Vec<Span> = self
            .request
            .frames
            .iter()
            .map(|f| Span {
                kind: f.kind,
                start: f.start,
                end: f.end,
            })
            .collect();
        Ok(Case::from_spans(None, &bytes, &spans))
    }

    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let mut bytes = serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?;
        bytes.push(b'\n');
        crate::report::write_atomic(path, &bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::fuzz::case::Frame;
    use crate::verdict::OutcomeKind;

    pub(crate) fn sample() -> Reproducer {
        let case = Case {
            seed: None,
            frames: vec![Frame {
                kind: SpanKind::Header,
                bytes: vec![0, 0, 0],
                touched: true,
            }],
        };
        let signature = Signature {
            kind: OutcomeKind::PythonException,
            exc_type: Some("struct.error".into()),
            frames: vec!["serializers.py:read_int".into()],
            detail: None,
        };
        Reproducer {
            kind: KIND.into(),
            format: FORMAT,
            title: "t".into(),
            pyspark: "4.0.5".into(),
            python: "3.11".into(),
            dialect: Dialect::A,
            mode: ExecMode::ForkServer,
            found_in: Some(ExecMode::Persistent),
            confirmed_in: Some(ExecMode::ForkServer),
            close_after_write: true,
            deadline_ms: 2000,
            memory_limit_mb: Some(1024),
            signature_id: signature.id(),
            signature,
            signature_frames: 1,
            request: RequestBytes::of(&case),
            round_trip: None,
            outcome: serde_json::json!({"kind": "PythonException"}),
            traceback: None,
            worker_at_deadline: None,
            fault_dump: Some("Fatal Python error: Segmentation fault\n".into()),
            native_stack: Some(
                "Program received signal SIGSEGV, Segmentation fault.\n#0  f ()".into(),
            ),
            native_stack_missing: None,
            minimised: true,
            minimise: None,
            original_len: 100,
            found: Found {
                at: "2026-01-01T00:00:00Z".into(),
                seed: "s".into(),
                exec: 1,
                count: 1,
            },
            replay: "fakejvm repro x.json".into(),
        }
    }

    #[test]
    fn saves_and_loads_the_same() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let r = sample();
        r.save(&p).unwrap();
        assert_eq!(Reproducer::load(&p).unwrap(), r);
        assert_eq!(r.case().unwrap().to_bytes(), vec![0, 0, 0]);
    }

    #[test]
    fn broken_files_are_one_line_naming_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("r.json");
        let good = serde_json::to_value(sample()).unwrap();
        let cases: Vec<(serde_json::Value, &str)> = vec![
            (serde_json::json!({"kind": "x"}), "not a fakejvm-reproducer"),
            (
                {
                    let mut v = good.clone();
                    v["format"] = 9.into();
                    v
                },
                "format 9",
            ),
            (
                {
                    let mut v = good.clone();
                    v["request"]["base64"] = "!!".into();
                    v
                },
                "not base64",
            ),
            (
                {
                    let mut v = good.clone();
                    v["request"]["len"] = 4.into();
                    v
                },
                "request.len",
            ),
            (
                {
                    let mut v = good.clone();
                    v["signature_id"] = "000000000000".into();
                    v
                },
                "signature_id",
            ),
            (
                {
                    let mut v = good.clone();
                    v["request"]["frames"][0]["end"] = 9.into();
                    v
                },
                "frame 0",
            ),
            (
                {
                    let mut v = good.clone();
                    v["extra"] = 1.into();
                    v
                },
                "unknown field",
            ),
        ];
        for (v, want) in cases {
            std::fs::write(&p, v.to_string()).unwrap();
            let e = Reproducer::load(&p).unwrap_err().to_string();
            assert!(
                e.starts_with(&p.display().to_string()) && e.contains(want),
                "{e}"
            );
            assert_eq!(e.lines().count(), 1, "{e}");
        }
        std::fs::write(&p, "{\"kind\":").unwrap();
        assert!(Reproducer::load(&p)
            .unwrap_err()
            .to_string()
            .contains("not JSON"));
        assert!(Reproducer::load(&dir.path().join("missing.json"))
            .unwrap_err()
            .to_string()
            .contains("cannot read"));
    }
}
