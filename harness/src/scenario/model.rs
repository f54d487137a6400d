//! The scenario file format (JSON). Documented for users in scenarios/README.md; every struct
//! refuses unknown fields so a typo is an error, not a silently ignored setting.

use crate::faults::Fault;
use crate::pyenv::{PysparkVersion, SerializerSpec};
use crate::verdict::OutcomeKind;
use crate::worker::Mode;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::Path;

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    /// Defaults to the file name without `.json`.
    #[serde(default)]
    pub name: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    /// How the worker is launched: daemon (Spark's default on Linux), direct, or uds (4.1+).
    #[serde(default = "default_mode")]
    pub mode: Mode,
    /// SPARK_REUSE_WORKER: tasks after the first run on the same connection when the worker
    /// answered -4.
    #[serde(default)]
    pub reuse: bool,
    /// Versions this scenario applies to, e.g. ">=4.1"; others report it as not applicable.
    #[serde(default)]
    pub requires: Option<VersionReq>,
    /// Per-task deadline in milliseconds (default 30000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// Extra environment for the daemon or worker.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Faults to inject (see scenarios/README.md, "Faults"): at launch, or at a protocol
    /// position of one task's request.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<Fault>,
    pub tasks: Vec<Task>,
}

fn default_mode() -> Mode {
    Mode::Daemon
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Task {
    #[serde(default)]
    pub split_index: i32,
    #[serde(default)]
    pub context: ContextSpec,
    /// Files written into the task's spark files dir (name -> content).
    #[serde(default)]
    pub files: BTreeMap<String, String>,
    /// Names (in the files dir) the worker puts on sys.path.
    #[serde(default)]
    pub includes: Vec<String>,
    #[serde(default)]
    pub broadcasts: Vec<BroadcastSpec>,
    /// Python source that binds `func` to a callable (split_index, iterator) -> iterable.
    pub function: String,
    #[serde(default)]
    pub input: Input,
    /// The command's deserializer; by default the one matching `input.encoding`.
    #[serde(default)]
    pub deserializer: Option<SerializerSpec>,
    /// The command's serializer for the output (default auto_batched, as RDD jobs use).
    #[serde(default)]
    pub serializer: Option<SerializerSpec>,
    pub expect: Expect,
    /// Version-specific expectations, first match wins; `note` states the known behaviour.
    #[serde(default)]
    pub expect_by_version: Vec<VersionedExpect>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ContextSpec {
    #[serde(default)]
    pub stage_id: i32,
    #[serde(default)]
    pub partition_id: i32,
    #[serde(default)]
    pub attempt_number: i32,
    #[serde(default)]
    pub task_attempt_id: i64,
    #[serde(default = "one")]
    pub cpus: i32,
    /// name -> addresses, in file order (order matters: 3.4-4.1 keep only the last one).
    #[serde(default)]
    pub resources: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub local_properties: serde_json::Map<String, serde_json::Value>,
    #[serde(default)]
    pub barrier: bool,
}

fn one() -> i32 {
    1
}

impl Default for ContextSpec {
    fn default() -> Self {
        ContextSpec {
            stage_id: 0,
            partition_id: 0,
            attempt_number: 0,
            task_attempt_id: 0,
            cpus: 1,
            resources: Default::default(),
            local_properties: Default::default(),
            barrier: false,
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BroadcastSpec {
    pub id: i64,
    /// The value, pickled into a file whose path is sent (JSON with the tagged forms of
    /// scenarios/README.md).
    pub value: serde_json::Value,
}

/// The task's input partition and how it is encoded on the wire.
#[derive(Clone, Debug, Deserialize, Serialize, Default)]
#[serde(tag = "encoding", rename_all = "snake_case", deny_unknown_fields)]
pub enum Input {
    /// No data frames, just -1.
    #[default]
    Empty,
    /// BatchedSerializer(CPickle, batch_size): pickled lists of up to batch_size values; -1
    /// means one frame with everything.
    PickleBatched {
        batch_size: i32,
        #[serde(default)]
        values: Vec<serde_json::Value>,
        #[serde(default)]
        range: Option<(i64, i64)>,
    },
    /// AutoBatchedSerializer(CPickle): batches grow 1, 2, 4... toward 64 KiB frames.
    AutoBatched {
        #[serde(default)]
        values: Vec<serde_json::Value>,
        #[serde(default)]
        range: Option<(i64, i64)>,
    },
    /// CPickleSerializer: one pickled value per frame.
    Pickle {
        #[serde(default)]
        values: Vec<serde_json::Value>,
        #[serde(default)]
        range: Option<(i64, i64)>,
    },
    /// textFile: one UTF-8 frame per line, null -> NULL (-5).
    Utf8 { lines: Vec<Line> },
    /// Frames exactly as given.
    Raw { frames: Vec<RawFrame> },
    /// The data frames an earlier task of this scenario output, byte for byte: a second stage
    /// reading what the first one wrote (e.g. a reserialized union).
    OutputOf { task: usize },
}

impl Input {
    /// The values of a pickle input: `values` as given, then `range` [start, end) of ints
    /// (for inputs too large to spell out).
    pub fn pickle_values(
        values: &[serde_json::Value],
        range: &Option<(i64, i64)>,
    ) -> Vec<serde_json::Value> {
        let mut out = values.to_vec();
        if let Some((a, b)) = range {
            out.extend((*a..*b).map(serde_json::Value::from));
        }
        out
    }
}

/// A textFile line: a string, null, or a generated long line.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Line {
    Text(String),
    Null(()),
    Repeat { repeat: String, times: usize },
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum RawFrame {
    /// A frame (length + bytes) with a hex payload.
    Hex(String),
    /// A frame with a UTF-8 payload.
    Text(String),
    /// A length alone: a special length such as -5, or any int.
    Int(i32),
    /// Bytes with no length in front (breaks framing on purpose).
    Bytes(String),
}

#[derive(Clone, Debug, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The task completes and outputs exactly these values (tagged JSON forms allowed).
    #[serde(default)]
    pub values: Option<Vec<serde_json::Value>>,
    /// The task fails with this Python exception.
    #[serde(default)]
    pub exception: Option<ExpectException>,
    /// The task ends in this outcome (for crashes, hangs, violations).
    #[serde(default)]
    pub outcome: Option<OutcomeKind>,
}

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ExpectException {
    #[serde(rename = "type")]
    pub exc_type: String,
    #[serde(default)]
    pub message_contains: Option<String>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VersionedExpect {
    pub pyspark: VersionReq,
    pub expect: Expect,
    /// What this version does differently, stated in the verdict when this expectation applies.
    pub note: String,
}

/// A version requirement: comma-separated comparisons, e.g. ">=4.1", "<4.2", ">=3.4,<4.2",
/// "4.1" (any 4.1.x).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VersionReq {
    text: String,
    parts: Vec<(Op, Vec<u32>)>,
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Op {
    Lt,
    Le,
    Gt,
    Ge,
    Eq,
}

impl TryFrom<String> for VersionReq {
    type Error = String;
    fn try_from(text: String) -> Result<Self, String> {
        let mut parts = vec![];
        for p in text.split(',').map(str::trim) {
            let (op, rest) = if let Some(r) = p.strip_prefix("<=") {
                (Op::Le, r)
            } else if let Some(r) = p.strip_prefix(">=") {
                (Op::Ge, r)
            } else if let Some(r) = p.strip_prefix('<') {
                (Op::Lt, r)
            } else if let Some(r) = p.strip_prefix('>') {
                (Op::Gt, r)
            } else if let Some(r) = p.strip_prefix("==") {
                (Op::Eq, r)
            } else {
                (Op::Eq, p.strip_prefix('=').unwrap_or(p))
            };
            let nums: Result<Vec<u32>, _> = rest.trim().split('.').map(str::parse).collect();
            match nums {
                Ok(n) if !n.is_empty() && n.len() <= 3 => parts.push((op, n)),
                _ => return Err(format!("bad version requirement {text:?}: expected e.g. \">=4.1\", \"<4.2\" or \">=3.4,<4.2\"")),
            }
        }
        Ok(VersionReq { text, parts })
    }
}

impl From<VersionReq> for String {
    fn from(v: VersionReq) -> String {
        v.text
    }
}

impl VersionReq {
    pub fn matches(&self, v: PysparkVersion) -> bool {
        let have = [v.major, v.minor, v.patch];
        self.parts.iter().all(|(op, want)| {
            // Compare only as many components as were written: "4.1" matches 4.1.x.
            let ord = have[..want.len()].cmp(&want[..]);
            match op {
                Op::Lt => ord.is_lt(),
                Op::Le => ord.is_le(),
                Op::Gt => ord.is_gt(),
                Op::Ge => ord.is_ge(),
                Op::Eq => ord.is_eq(),
            }
        })
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }
}

impl Expect {
    /// Exactly one of values / exception / outcome.
    pub fn check(&self) -> Result<(), String> {
        let n = self.values.is_some() as u8
            + self.exception.is_some() as u8
            + self.outcome.is_some() as u8;
        if n == 1 {
            Ok(())
        } else {
            Err("`expect` needs exactly one of `values`, `exception` or `outcome`".into())
        }
    }
}

/// Why a scenario file could not be used: always names the file.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ScenarioError {
    pub file: String,
    pub problem: String,
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let err = |problem: String| ScenarioError {
            file: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Scenario::parse(&text).map_err(err)
    }

    pub fn parse(text: &str) -> Result<Scenario, String> {
        let mut s: Scenario = serde_json::from_str(text).map_err(|e| {
            if e.is_eof() {
                format!(
                    "truncated JSON (ends at line {}, column {})",
                    e.line(),
                    e.column()
                )
            } else {
                e.to_string()
            }
        })?;
        s.validate()?;
        if let Some(name) = &mut s.name {
            *name = name.trim().to_owned();
        }
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.tasks.is_empty() {
            return Err("`tasks` is empty: a scenario needs at least one task".into());
        }
        crate::faults::validate(&self.faults, self.mode, self.tasks.len())?;
        let sets_memory = self
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ExecutorMemory { .. }));
        if sets_memory && self.env.contains_key("PYSPARK_EXECUTOR_MEMORY_MB") {
            return Err("PYSPARK_EXECUTOR_MEMORY_MB is set both in `env` and by an `executor_memory` fault: keep one".into());
        }
        let preloads = self
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ForkFail { .. }));
        if preloads && self.env.contains_key("LD_PRELOAD") {
            return Err("LD_PRELOAD is set in `env`, but a `fork_fail` fault preloads its own shim: remove one".into());
        }
        for (i, t) in self.tasks.iter().enumerate() {
            let at = |m: String| format!("task {i}: {m}");
            if t.function.trim().is_empty() {
                return Err(at(
                    "`function` is empty: give Python source that binds `func`".into(),
                ));
            }
            t.expect.check().map_err(at)?;
            if let Input::OutputOf { task } = t.input {
                if task >= i {
                    return Err(at(format!(
                        "input `output_of` task {task} must be an earlier task (0..{i})"
                    )));
                }
            }
            for v in &t.expect_by_version {
                v.expect
                    .check()
                    .map_err(|m| at(format!("expect_by_version {:?}: {m}", v.pyspark.as_str())))?;
            }
            for (k, v) in &t.context.resources {
                let ok = v
                    .as_array()
                    .is_some_and(|a| a.iter().all(|x| x.is_string()));
                if !ok {
                    return Err(at(format!(
                        "resource {k:?} must be a list of address strings"
                    )));
                }
            }
            for (k, v) in &t.context.local_properties {
                if !v.is_string() {
                    return Err(at(format!("local property {k:?} must be a string")));
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &str) -> PysparkVersion {
        s.parse().unwrap()
    }

    #[test]
    fn version_requirements() {
        let r = VersionReq::try_from("<4.2".to_string()).unwrap();
        assert!(r.matches(v("4.1.4")) && r.matches(v("3.5.9")) && !r.matches(v("4.2.1")));
        let r = VersionReq::try_from(">=3.4,<4.2".to_string()).unwrap();
        assert!(r.matches(v("4.0.5")) && !r.matches(v("4.3.0")));
        let r = VersionReq::try_from("4.1".to_string()).unwrap();
        assert!(r.matches(v("4.1.4")) && !r.matches(v("4.0.5")));
        assert!(VersionReq::try_from("four".to_string()).is_err());
    }

    #[test]
    fn unknown_fields_and_missing_function_are_refused() {
        let e = Scenario::parse(r#"{"tasks":[{"function":"func = lambda s, it: it","expect":{"values":[]},"bogus":1}]}"#).unwrap_err();
        assert!(e.contains("bogus"), "{e}");
        let e = Scenario::parse(r#"{"tasks":[{"expect":{"values":[]}}]}"#).unwrap_err();
        assert!(e.contains("function"), "{e}");
        let e = Scenario::parse(r#"{"tasks":[{"function":"x""#).unwrap_err();
        assert!(e.contains("truncated"), "{e}");
    }

    #[test]
    fn faults_are_checked_against_mode_and_tasks() {
        let base = |faults: &str, mode: &str| {
            format!(
                r#"{{"mode":"{mode}","faults":[{faults}],"tasks":[{{"function":"func = lambda s, it: it","expect":{{"values":[]}}}}]}}"#
            )
        };
        let s = Scenario::parse(&base(
            r#"{"kind":"kill_worker","at":{"after":"header"}}"#,
            "daemon",
        ))
        .unwrap();
        assert_eq!(s.faults.len(), 1);
        let e = Scenario::parse(&base(
            r#"{"kind":"kill_worker","task":1,"at":{"after":"header"}}"#,
            "daemon",
        ))
        .unwrap_err();
        assert!(e.contains("task 1 does not exist"), "{e}");
        let e = Scenario::parse(&base(
            r#"{"kind":"fork_fail","errno":"ENOMEM","schedule":"every"}"#,
            "direct",
        ))
        .unwrap_err();
        assert!(e.contains("needs a daemon"), "{e}");
        let e = Scenario::parse(&base(r#"{"kind":"reset","at":{"after":"header"}}"#, "uds"))
            .unwrap_err();
        assert!(e.contains("TCP"), "{e}");
    }

    #[test]
    fn inputs_parse() {
        let s = Scenario::parse(
            r#"{"tasks":[{"function":"func = lambda s, it: it",
                "input":{"encoding":"utf8","lines":["a",null,{"repeat":"é","times":3}]},
                "expect":{"values":["a",null,"ééé"]}}]}"#,
        )
        .unwrap();
        assert!(matches!(&s.tasks[0].input, Input::Utf8 { lines } if lines.len() == 3));
        let s = Scenario::parse(
            r#"{"tasks":[{"function":"func = lambda s, it: it",
                "input":{"encoding":"pickle_batched","batch_size":2,"range":[0,10]},
                "expect":{"outcome":"Passed"}}]}"#,
        )
        .unwrap();
        assert!(matches!(
            &s.tasks[0].input,
            Input::PickleBatched {
                batch_size: 2,
                range: Some((0, 10)),
                ..
            }
        ));
    }
}
