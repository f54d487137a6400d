//! The scenario file format (JSON). Documented for users in scenarios/README.md; every struct
//! refuses unknown fields so a typo is an error, not a silently ignored setting.

pub use super::udf::UdfTask;
use crate::error::BadInput;
use crate::faults::Fault;
use crate::pickle::{self, PickleError};
use crate::protocol::UdfLayout;
use crate::pyenv::{PysparkVersion, SerializerSpec};
use crate::verdict::OutcomeKind;
use crate::worker::resources::ResourceLimits;
use crate::worker::{ExitInfo, Mode};
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
    /// Versions this scenario applies to: a pyspark requirement (">=4.1") or
    /// `{"pyspark": ">=4.1", "python": ">=3.12"}`; others report it as not applicable.
    #[serde(default)]
    pub requires: Option<Requires>,
    /// Daemon modes: the module the daemon forks into (its argv[1], Spark's
    /// `spark.python.worker.module`); direct modes: the worker's `-m` module. Default
    /// `pyspark.worker`. `{"each_in": "pyspark"}` runs the scenario once per worker module the
    /// installed pyspark has under that package (see `scenario::modules`).
    #[serde(default)]
    pub worker_module: Option<WorkerModule>,
    /// Daemon modes: the daemon's `-m` module (`spark.python.daemon.module`). Default
    /// `pyspark.daemon`.
    #[serde(default)]
    pub daemon_module: Option<ModuleName>,
    /// Source files fakejvm writes into a fresh folder put first on the daemon's (direct modes:
    /// every worker's) PYTHONPATH before it starts: relative path -> content.
    #[serde(default)]
    pub launch_files: BTreeMap<String, String>,
    /// What the daemon and its workers (direct modes: every worker) wrote to stderr over the
    /// whole scenario, checked after shutdown.
    #[serde(default)]
    pub expect_stderr: Option<StderrExpect>,
    /// Per-task deadline in milliseconds (default 30000).
    #[serde(default)]
    pub deadline_ms: Option<u64>,
    /// How long fakejvm waits for a daemon's worker to send its pid, or a direct worker to
    /// connect back (default 10000, as Spark waits for a direct worker).
    #[serde(default)]
    pub connect_timeout_ms: Option<u64>,
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
    /// An RDD task: Python source that binds `func` to a callable (split_index, iterator) ->
    /// iterable. Empty for a UDF task.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub function: String,
    /// A SQL UDF task instead of `function` (scenarios/README.md, "UDF tasks").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udf: Option<UdfTask>,
    /// A raw request instead of `function` or `udf`: exactly these frames and nothing else, for
    /// worker modules whose protocol is not pyspark.worker's (scenarios/README.md, "Raw requests").
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request: Option<RawRequest>,
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
    /// What this task's worker wrote to stderr while the task ran, and its faulthandler dump.
    #[serde(default)]
    pub expect_stderr: Option<StderrExpect>,
    /// At most this many spawned processes, MiB of RSS, threads (worker::resources); more is a
    /// `ResourceExceeded` verdict.
    #[serde(default)]
    pub expect_resources: Option<ResourceLimits>,
}

/// Text that stderr must (not) hold. `faulthandler_contains` (tasks only) is checked in the
/// worker's faulthandler dump (`PYTHON_FAULTHANDLER_DIR`/<pid>, which fakejvm then sets): the file
/// pyspark's worker leaves when it dies by a signal.
#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StderrExpect {
    #[serde(default)]
    pub contains: Vec<String>,
    #[serde(default)]
    pub not_contains: Vec<String>,
    #[serde(default)]
    pub faulthandler_contains: Option<String>,
}

/// A Python module name as `-m` and pyspark's daemon take it (`pyspark.worker`, `my_pkg.worker`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModuleName(pub String);

impl TryFrom<String> for ModuleName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let ok = !s.is_empty()
            && s.split('.').all(|part| {
                part.chars()
                    .next()
                    .is_some_and(|c| c.is_alphabetic() || c == '_')
                    && part.chars().all(|c| c.is_alphanumeric() || c == '_')
            });
        if ok {
            Ok(ModuleName(s))
        } else {
            Err(format!(
                "{s:?} is not a Python module name (dotted identifiers, e.g. \"my_pkg.worker\")"
            ))
        }
    }
}

impl From<ModuleName> for String {
    fn from(m: ModuleName) -> String {
        m.0
    }
}

/// The scenario's `worker_module`: one module, or every worker module of a package of the
/// installed pyspark, listed when the scenario runs (each its own run and report row).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub enum WorkerModule {
    One(ModuleName),
    EachIn(ModuleSet),
}

/// `{"each_in": "pyspark.sql.worker", "except": ["pyspark.sql.worker.lookup_data_sources"]}`.
#[derive(Clone, Debug, PartialEq)]
pub struct ModuleSet {
    /// The package searched (its subpackages too), as the installed pyspark lays it out.
    pub each_in: ModuleName,
    /// Modules (or `pkg.*` patterns) left out.
    pub except: Vec<ModulePattern>,
}

impl TryFrom<serde_json::Value> for WorkerModule {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let name = |v: &serde_json::Value, what: &str| match v {
            serde_json::Value::String(s) => ModuleName::try_from(s.clone()),
            other => Err(format!("{what}: {other} is not a module name string")),
        };
        match &v {
            serde_json::Value::String(_) => Ok(WorkerModule::One(name(&v, "worker_module")?)),
            serde_json::Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| *k != "each_in" && *k != "except") {
                    return Err(format!(
                        "unknown field `{k}`: expected `each_in` and optionally `except`"
                    ));
                }
                let each_in = o
                    .get("each_in")
                    .ok_or("give `each_in`: the package whose worker modules to run, e.g. \"pyspark.sql.worker\"")
                    .map_err(String::from)
                    .and_then(|v| name(v, "each_in"))?;
                let except = match o.get("except") {
                    None => vec![],
                    Some(serde_json::Value::Array(items)) => items
                        .iter()
                        .enumerate()
                        .map(|(j, item)| match item {
                            serde_json::Value::String(s) => ModulePattern::try_from(s.clone())
                                .map_err(|e| format!("except[{j}]: {e}")),
                            other => Err(format!("except[{j}]: {other} is not a module name string")),
                        })
                        .collect::<Result<_, _>>()?,
                    Some(other) => {
                        return Err(format!("except: {other} is not a list of module names"))
                    }
                };
                for (j, p) in except.iter().enumerate() {
                    if !p.within(&each_in.0) {
                        return Err(format!(
                            "except[{j}]: {:?} is not inside {:?}, so it could never be left out",
                            p.as_str(),
                            each_in.0
                        ));
                    }
                }
                Ok(WorkerModule::EachIn(ModuleSet { each_in, except }))
            }
            other => Err(format!(
                "{other} is neither a module name (\"pyspark_mine.worker\") nor {{\"each_in\": \"pyspark.sql.worker\"}}"
            )),
        }
    }
}

impl From<WorkerModule> for serde_json::Value {
    fn from(m: WorkerModule) -> Self {
        match m {
            WorkerModule::One(m) => m.0.into(),
            WorkerModule::EachIn(set) => {
                let mut o = serde_json::Map::new();
                o.insert("each_in".into(), set.each_in.0.into());
                if !set.except.is_empty() {
                    let except: Vec<serde_json::Value> =
                        set.except.into_iter().map(|p| p.0.into()).collect();
                    o.insert("except".into(), except.into());
                }
                o.into()
            }
        }
    }
}

/// A module name, or `pkg.*` for every module under `pkg` (any depth): what `except` and
/// `expect_by_version[].module` match a worker module against.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ModulePattern(String);

impl TryFrom<String> for ModulePattern {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        let name = s.strip_suffix(".*").unwrap_or(&s).to_owned();
        ModuleName::try_from(name).map_err(|_| {
            format!("{s:?} is not a module name or a `package.*` pattern (e.g. \"pyspark.sql.worker.*\")")
        })?;
        Ok(ModulePattern(s))
    }
}

impl From<ModulePattern> for String {
    fn from(p: ModulePattern) -> String {
        p.0
    }
}

impl ModulePattern {
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// `pyspark.sql.worker.*` matches `pyspark.sql.worker.analyze_udtf` (and deeper), not
    /// `pyspark.sql.worker` itself; a plain name matches only itself.
    pub fn matches(&self, module: &str) -> bool {
        match self.0.strip_suffix(".*") {
            Some(pkg) => module
                .strip_prefix(pkg)
                .is_some_and(|rest| rest.starts_with('.')),
            None => self.0 == module,
        }
    }

    /// Whether every module this matches lies inside `package`.
    fn within(&self, package: &str) -> bool {
        let name = self.0.strip_suffix(".*").unwrap_or(&self.0);
        name.strip_prefix(package)
            .is_some_and(|rest| rest.starts_with('.'))
    }
}

/// A task's raw request: exactly these frames, in order, then (`then`) either nothing more,
/// as a JVM waits for its answer, or a half-close.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RawRequest {
    pub frames: Vec<RawFrame>,
    #[serde(default)]
    pub then: RequestEnd,
}

/// What fakejvm does once a raw request's frames are written.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RequestEnd {
    /// Keep the connection open and read the answer, as a JVM does.
    #[default]
    Wait,
    /// shutdown(SHUT_WR): the worker reads EOF where more of its request belongs.
    HalfClose,
}

/// The versions a scenario applies to: pyspark's, and optionally the interpreter's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "serde_json::Value", into = "serde_json::Value")]
pub struct Requires {
    pub pyspark: Option<VersionReq>,
    pub python: Option<VersionReq>,
}

impl TryFrom<serde_json::Value> for Requires {
    type Error = String;
    fn try_from(v: serde_json::Value) -> Result<Self, String> {
        let req = |v: &serde_json::Value| match v {
            serde_json::Value::String(s) => VersionReq::try_from(s.clone()).map(Some),
            _ => Err(format!(
                "{v} is not a version requirement string such as \">=4.1\""
            )),
        };
        match &v {
            serde_json::Value::String(_) => Ok(Requires {
                pyspark: req(&v)?,
                python: None,
            }),
            serde_json::Value::Object(o) => {
                if let Some(k) = o.keys().find(|k| *k != "pyspark" && *k != "python") {
                    return Err(format!(
                        "unknown field `{k}` in requires: expected `pyspark` and/or `python`"
                    ));
                }
                let r = Requires {
                    pyspark: o.get("pyspark").map(req).transpose()?.flatten(),
                    python: o.get("python").map(req).transpose()?.flatten(),
                };
                if r.pyspark.is_none() && r.python.is_none() {
                    return Err("requires: give `pyspark` and/or `python`".into());
                }
                Ok(r)
            }
            _ => Err(
                "requires is \">=4.1\" or {\"pyspark\": \">=4.1\", \"python\": \">=3.12\"}".into(),
            ),
        }
    }
}

impl From<Requires> for serde_json::Value {
    fn from(r: Requires) -> Self {
        match (r.pyspark, r.python) {
            (Some(p), None) => p.as_str().into(),
            (p, py) => {
                let mut o = serde_json::Map::new();
                if let Some(p) = p {
                    o.insert("pyspark".into(), p.as_str().into());
                }
                if let Some(py) = py {
                    o.insert("python".into(), py.as_str().into());
                }
                o.into()
            }
        }
    }
}

impl Requires {
    /// `python` is the interpreter's "MAJOR.MINOR".
    pub fn matches(&self, pyspark: PysparkVersion, python: &str) -> bool {
        self.pyspark.as_ref().is_none_or(|r| r.matches(pyspark))
            && self
                .python
                .as_ref()
                .is_none_or(|r| r.matches_parts(python_parts(python)))
    }

    /// `pyspark >=4.1, python >=3.12`.
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(p) = &self.pyspark {
            parts.push(format!("pyspark {}", p.as_str()));
        }
        if let Some(p) = &self.python {
            parts.push(format!("python {}", p.as_str()));
        }
        parts.join(", ")
    }
}

/// "3.11" (or "3.11.7") as [3, 11, 0] ([3, 11, 7]).
pub fn python_parts(v: &str) -> [u32; 3] {
    let mut out = [0; 3];
    for (o, p) in out.iter_mut().zip(v.trim().split('.')) {
        *o = p.parse().unwrap_or(0);
    }
    out
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

#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
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
    /// The interpreter's "MAJOR.MINOR" as a string frame, as the JVM sends the Python version.
    PythonVersion,
}

#[derive(Clone, Debug, Deserialize, Serialize, Default, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Expect {
    /// The task completes and outputs exactly these values (tagged JSON forms allowed).
    #[serde(default)]
    pub values: Option<Vec<serde_json::Value>>,
    /// A UDF task completes and outputs exactly these rows, each a list of column values.
    #[serde(default)]
    pub rows: Option<Vec<serde_json::Value>>,
    /// With `rows` of an Arrow kind: the reply streams' schema, e.g. `_0: double`.
    #[serde(default)]
    pub schema: Option<String>,
    /// The task fails with this Python exception.
    #[serde(default)]
    pub exception: Option<ExpectException>,
    /// The task ends in this outcome (for crashes, hangs, violations).
    #[serde(default)]
    pub outcome: Option<OutcomeKind>,
    /// With `outcome` WorkerCrashed or DaemonDied: how the process ended, `{"code": 3}` or
    /// `{"signal": 9}`.
    #[serde(default)]
    pub exit: Option<ExitInfo>,
    /// The task completes and its reply's data frames are these, as bytes (alone, or besides
    /// `values` or `rows`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frames: Option<super::FramesExpect>,
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
    /// The pyspark versions this applies to (at least one of `pyspark` and `python`).
    #[serde(default)]
    pub pyspark: Option<VersionReq>,
    /// The interpreter versions ("MAJOR.MINOR") this applies to.
    #[serde(default)]
    pub python: Option<VersionReq>,
    /// The worker modules this applies to (a name or `pkg.*`), matched against the scenario's
    /// worker module (default `pyspark.worker`; with `each_in`, each module of the run).
    #[serde(default)]
    pub module: Option<ModulePattern>,
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
        self.matches_parts([v.major, v.minor, v.patch])
    }

    pub fn matches_parts(&self, have: [u32; 3]) -> bool {
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
    /// Exactly one of values / rows / exception / outcome; `frames` alone or besides values
    /// or rows (it checks a completed reply).
    pub fn check(&self) -> Result<(), String> {
        let n = self.values.is_some() as u8
            + self.rows.is_some() as u8
            + self.exception.is_some() as u8
            + self.outcome.is_some() as u8;
        if self.frames.is_some() && (self.exception.is_some() || self.outcome.is_some()) {
            return Err(
                "`frames` checks a completed reply's data: not with `exception` or `outcome`"
                    .into(),
            );
        }
        if n == 1 || (n == 0 && self.frames.is_some()) {
            Ok(())
        } else {
            Err("needs exactly one of `values`, `rows`, `exception` or `outcome` (`frames` goes alone or besides `values` or `rows`)".into())
        }
    }

    /// What a completed task is checked for, as the verdict names it ("output values and
    /// frames"); None when only the outcome is.
    pub fn output_checks(&self) -> Option<String> {
        let parts: Vec<&str> = [
            (self.values.is_some(), "values"),
            (self.rows.is_some(), "rows"),
            (self.frames.is_some(), "frames"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, name)| *name)
        .collect();
        (!parts.is_empty()).then(|| format!("output {}", parts.join(" and ")))
    }

    /// Only the reply's frames are checked: the data is not decoded to judge the task.
    pub fn frames_only(&self) -> bool {
        self.frames.is_some() && self.values.is_none() && self.rows.is_none()
    }
}

/// Why a scenario file could not be used: always names the file, and the field when one is at
/// fault (`tasks[0].input.values[2]`).
#[derive(Debug, thiserror::Error)]
#[error("{file}: {problem}")]
pub struct ScenarioError {
    pub file: String,
    pub problem: String,
}

impl From<ScenarioError> for BadInput {
    fn from(e: ScenarioError) -> BadInput {
        BadInput::msg(e)
    }
}

/// A `range` of ints is spelled out in memory before it is pickled: more than this many values
/// is a typo, not a test.
const MAX_RANGE: i64 = 10_000_000;
/// A generated text line (`repeat` x `times`) is one frame; fakejvm's readers refuse frames
/// past 256 MiB (wire::MAX_FRAME), so a longer one could not be a sensible request either.
const MAX_LINE_BYTES: usize = 256 << 20;

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        let err = |problem: String| ScenarioError {
            file: path.display().to_string(),
            problem,
        };
        let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
        Scenario::parse(&text).map_err(err)
    }

    /// Parse and check every field and value: the problem comes back as one line, starting with
    /// the path of the field at fault.
    pub fn parse(text: &str) -> Result<Scenario, String> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut s: Scenario = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let e = e.into_inner();
            if e.is_eof() {
                format!(
                    "truncated JSON (ends at line {}, column {})",
                    e.line(),
                    e.column()
                )
            } else if path == "." || path.is_empty() {
                e.to_string()
            } else {
                format!("{path}: {e}")
            }
        })?;
        de.end().map_err(|e| e.to_string())?;
        s.validate()?;
        if let Some(name) = &mut s.name {
            *name = name.trim().to_owned();
        }
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.tasks.is_empty() {
            return Err("tasks: empty: a scenario needs at least one task".into());
        }
        if self.connect_timeout_ms == Some(0) {
            return Err("connect_timeout_ms: 0 would fail every connection".into());
        }
        if self.deadline_ms == Some(0) {
            return Err("deadline_ms: 0 would make every task a Hang".into());
        }
        for (k, v) in &self.env {
            check_env(&format!("env.{k:?}"), k, v)?;
        }
        for name in self.launch_files.keys() {
            check_relative_path(&format!("launch_files.{name:?}"), name)?;
        }
        if self.daemon_module.is_some() && !self.mode.uses_daemon() {
            return Err(format!(
                "daemon_module: mode {:?} starts no daemon (use worker_module for the direct worker's module)",
                self.mode
            ));
        }
        if let Some(e) = &self.expect_stderr {
            e.validate("expect_stderr")?;
            if e.faulthandler_contains.is_some() {
                return Err("expect_stderr.faulthandler_contains: a faulthandler dump belongs to one worker: put it in a task's expect_stderr".into());
            }
        }
        crate::faults::validate(&self.faults, self.mode, self.tasks.len())
            .map_err(|m| format!("faults: {m}"))?;
        let sets_memory = self
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ExecutorMemory { .. }));
        if sets_memory && self.env.contains_key("PYSPARK_EXECUTOR_MEMORY_MB") {
            return Err("env.PYSPARK_EXECUTOR_MEMORY_MB: set both in `env` and by an `executor_memory` fault: keep one".into());
        }
        let preloads = self
            .faults
            .iter()
            .any(|f| matches!(f, Fault::ForkFail { .. }));
        if preloads && self.env.contains_key("LD_PRELOAD") {
            return Err("env.LD_PRELOAD: set in `env`, but a `fork_fail` fault preloads its own shim: remove one".into());
        }
        for (i, t) in self.tasks.iter().enumerate() {
            t.validate(&format!("tasks[{i}]"), i)?;
            let pins_exit = std::iter::once(&t.expect)
                .chain(t.expect_by_version.iter().map(|v| &v.expect))
                .any(|e| e.exit.is_some() && !matches!(e.outcome, Some(OutcomeKind::DaemonDied)));
            if t.request.is_some() && pins_exit && self.mode.uses_daemon() {
                return Err(format!("tasks[{i}].expect.exit: a daemon's forked worker is not fakejvm's child, so its exit status is unknown; pin it in a direct mode"));
            }
            if let Some(r) = &t.request {
                check_raw_positions(&self.faults, i, r.frames.len())?;
            }
            // An eval type newer than the oldest line fakejvm speaks must say which versions it
            // is for; which version lacks it is checked against the env before a run
            // (`Scenario::check_for`).
            if let Some(u) = &t.udf {
                let since = u.eval().since();
                let pins_pyspark = self.requires.as_ref().is_some_and(|r| r.pyspark.is_some());
                if !pins_pyspark && since > Some(UdfLayout::Pyspark35) {
                    let since = since.map_or("?", |l| l.version());
                    return Err(format!("tasks[{i}].udf.eval_type: {} exists from pyspark {since}: add \"requires\": \">={since}\"", u.eval()));
                }
            }
        }
        Ok(())
    }

    /// Problems only a pyspark version shows: a UDF kind (or keyword arguments) the version's
    /// worker does not have although `requires` lets the scenario run on it. Bad input: checked
    /// before any worker starts.
    pub fn check_for(&self, version: PysparkVersion, python: &str) -> Result<(), String> {
        if self
            .requires
            .as_ref()
            .is_some_and(|r| !r.matches(version, python))
        {
            return Ok(());
        }
        let Some(layout) = UdfLayout::for_version(version.major, version.minor) else {
            return Ok(());
        };
        for (i, t) in self.tasks.iter().enumerate() {
            if let Some(why) = t
                .udf
                .as_ref()
                .and_then(|u| u.unsupported_on(layout, &format!("tasks[{i}].udf")))
            {
                return Err(format!("{why} (pyspark {version})"));
            }
        }
        Ok(())
    }
}

impl Task {
    /// Every field of task number `index`, whose path in the file is `at`.
    fn validate(&self, at: &str, index: usize) -> Result<(), String> {
        if let Some(r) = &self.request {
            self.validate_raw_request(at, r)?;
        }
        match &self.udf {
            _ if self.request.is_some() => {}
            Some(u) => {
                if !self.function.is_empty() {
                    return Err(format!(
                        "{at}.function: a UDF task has its functions in `udf`: remove `function`"
                    ));
                }
                if !matches!(self.input, Input::Empty) {
                    return Err(format!(
                        "{at}.input: a UDF task's input is `udf.input` (schema and rows)"
                    ));
                }
                if self.deserializer.is_some() || self.serializer.is_some() {
                    return Err(format!("{at}: `deserializer` and `serializer` are for RDD tasks; a UDF's eval type fixes its serializers"));
                }
                u.validate(&format!("{at}.udf"))?;
                let values = std::iter::once(&self.expect)
                    .chain(self.expect_by_version.iter().map(|v| &v.expect))
                    .any(|e| e.values.is_some());
                if values {
                    return Err(format!(
                        "{at}.expect.values: a UDF task outputs rows: expect `rows`"
                    ));
                }
            }
            None => {
                if self.function.trim().is_empty() {
                    return Err(format!(
                        "{at}.function: empty or missing: give Python source that binds `func` (or a `udf`)"
                    ));
                }
                let rows = std::iter::once(&self.expect)
                    .chain(self.expect_by_version.iter().map(|v| &v.expect))
                    .any(|e| e.rows.is_some());
                if rows {
                    return Err(format!(
                        "{at}.expect.rows: only UDF tasks output rows: expect `values`"
                    ));
                }
            }
        }
        for name in self.files.keys() {
            if name.is_empty()
                || name == "."
                || name == ".."
                || name.contains('/')
                || name.contains('\0')
            {
                return Err(format!(
                    "{at}.files.{name:?}: a file name in the task's files dir, without `/`"
                ));
            }
        }
        for (j, b) in self.broadcasts.iter().enumerate() {
            // The protocol sends a negative id for "remove broadcast -id-1".
            if b.id < 0 {
                return Err(format!("{at}.broadcasts[{j}].id: {} is negative; a negative id means \"remove\" on the wire", b.id));
            }
            check_value(&format!("{at}.broadcasts[{j}].value"), &b.value)?;
        }
        self.input.validate(&format!("{at}.input"), index)?;
        let raw = self.request.is_some();
        self.expect.validate(&format!("{at}.expect"), raw)?;
        for (k, v) in self.expect_by_version.iter().enumerate() {
            let here = format!("{at}.expect_by_version[{k}]");
            v.expect.validate(&format!("{here}.expect"), raw)?;
            if v.pyspark.is_none() && v.python.is_none() && v.module.is_none() {
                return Err(format!(
                    "{here}: give `pyspark`, `python` and/or `module`: the versions or worker modules this applies to"
                ));
            }
            if v.note.trim().is_empty() {
                return Err(format!(
                    "{here}.note: empty: say what this version does differently"
                ));
            }
        }
        if let Some(e) = &self.expect_stderr {
            e.validate(&format!("{at}.expect_stderr"))?;
        }
        match &self.expect_resources {
            Some(l) => l.validate(&format!("{at}.expect_resources"))?,
            None => {
                let wanted = std::iter::once(("expect", &self.expect))
                    .chain(
                        self.expect_by_version
                            .iter()
                            .map(|v| ("expect_by_version[].expect", &v.expect)),
                    )
                    .find(|(_, e)| e.outcome == Some(OutcomeKind::ResourceExceeded));
                if let Some((field, _)) = wanted {
                    return Err(format!("{at}.{field}.outcome: ResourceExceeded needs the task's `expect_resources` (the limits it breaks)"));
                }
            }
        }
        for (k, v) in &self.context.resources {
            let ok = v
                .as_array()
                .is_some_and(|a| a.iter().all(|x| x.is_string()));
            if !ok {
                return Err(format!(
                    "{at}.context.resources.{k:?}: must be a list of address strings"
                ));
            }
        }
        for (k, v) in &self.context.local_properties {
            if !v.is_string() {
                return Err(format!(
                    "{at}.context.local_properties.{k:?}: must be a string"
                ));
            }
        }
        Ok(())
    }
}

impl Task {
    /// A raw-request task sends its frames and nothing else: no function, UDF, input or files.
    fn validate_raw_request(&self, at: &str, r: &RawRequest) -> Result<(), String> {
        if !self.function.is_empty() || self.udf.is_some() {
            return Err(format!(
                "{at}.request: a raw-request task has no `function` or `udf`: remove them"
            ));
        }
        let others = [
            ("input", !matches!(self.input, Input::Empty)),
            ("deserializer", self.deserializer.is_some()),
            ("serializer", self.serializer.is_some()),
            ("broadcasts", !self.broadcasts.is_empty()),
            ("files", !self.files.is_empty()),
            ("includes", !self.includes.is_empty()),
        ];
        if let Some((field, _)) = others.iter().find(|(_, set)| *set) {
            return Err(format!(
                "{at}.{field}: a raw request sends only its `request.frames`: remove `{field}`"
            ));
        }
        for (j, f) in r.frames.iter().enumerate() {
            match f {
                RawFrame::Hex(h) => check_hex(&format!("{at}.request.frames[{j}].hex"), h)?,
                RawFrame::Bytes(h) => check_hex(&format!("{at}.request.frames[{j}].bytes"), h)?,
                RawFrame::Text(_) | RawFrame::Int(_) | RawFrame::PythonVersion => {}
            }
        }
        let decoded = std::iter::once(&self.expect)
            .chain(self.expect_by_version.iter().map(|v| &v.expect))
            .any(|e| e.values.is_some() || e.rows.is_some());
        if decoded {
            return Err(format!(
                "{at}.expect: a raw request's answer is not decoded as output: expect an `exception` or an `outcome`"
            ));
        }
        if r.frames.is_empty() && r.then == RequestEnd::Wait {
            return Err(format!(
                "{at}.request: no frames and `then: wait` sends nothing and waits for nothing: add frames or `\"then\": \"half_close\"`"
            ));
        }
        Ok(())
    }
}

impl Input {
    /// The input of task number `index`, at path `at`.
    fn validate(&self, at: &str, index: usize) -> Result<(), String> {
        match self {
            Input::Empty => Ok(()),
            Input::PickleBatched { values, range, .. }
            | Input::AutoBatched { values, range }
            | Input::Pickle { values, range } => {
                check_values(&format!("{at}.values"), values)?;
                if let Some((a, b)) = range {
                    if a > b {
                        return Err(format!("{at}.range: [{a}, {b}) starts after it ends"));
                    }
                    if b.saturating_sub(*a) > MAX_RANGE {
                        return Err(format!(
                            "{at}.range: [{a}, {b}) holds more than {MAX_RANGE} values"
                        ));
                    }
                }
                Ok(())
            }
            Input::Utf8 { lines } => {
                for (j, l) in lines.iter().enumerate() {
                    if let Line::Repeat { repeat, times } = l {
                        if repeat
                            .len()
                            .checked_mul(*times)
                            .is_none_or(|n| n > MAX_LINE_BYTES)
                        {
                            return Err(format!("{at}.lines[{j}]: {times} x {} bytes is longer than a frame may be ({MAX_LINE_BYTES} bytes)", repeat.len()));
                        }
                    }
                }
                Ok(())
            }
            Input::Raw { frames } => {
                for (j, f) in frames.iter().enumerate() {
                    match f {
                        RawFrame::Hex(h) => check_hex(&format!("{at}.frames[{j}].hex"), h)?,
                        RawFrame::Bytes(h) => check_hex(&format!("{at}.frames[{j}].bytes"), h)?,
                        RawFrame::Text(_) | RawFrame::Int(_) | RawFrame::PythonVersion => {}
                    }
                }
                Ok(())
            }
            Input::OutputOf { task } => {
                if *task >= index {
                    return Err(format!(
                        "{at}.task: output_of task {task} must be an earlier task (0..{index})"
                    ));
                }
                Ok(())
            }
        }
    }
}

impl Expect {
    /// Exactly one of values / exception / outcome, each well formed; `at` is its path. `raw`:
    /// the task is a raw request, whose `exit` may follow any answer (how the worker then ended).
    fn validate(&self, at: &str, raw: bool) -> Result<(), String> {
        self.check().map_err(|m| format!("{at}: {m}"))?;
        if let Some(values) = &self.values {
            check_values(&format!("{at}.values"), values)?;
        }
        if let Some(f) = &self.frames {
            f.validate(&format!("{at}.frames"))?;
        }
        if let Some(rows) = &self.rows {
            for (j, r) in rows.iter().enumerate() {
                let Some(cells) = r.as_array() else {
                    return Err(format!(
                        "{at}.rows[{j}]: a row is a list of column values, e.g. [1.0]"
                    ));
                };
                check_values(&format!("{at}.rows[{j}]"), cells)?;
            }
        }
        if self.schema.is_some() && self.rows.is_none() {
            return Err(format!("{at}.schema: only together with `rows`"));
        }
        if let Some(x) = &self.exception {
            if x.exc_type.trim().is_empty() {
                return Err(format!(
                    "{at}.exception.type: empty: name the exception, e.g. \"ValueError\""
                ));
            }
        }
        let ends_a_process = matches!(
            self.outcome,
            Some(OutcomeKind::WorkerCrashed | OutcomeKind::DaemonDied)
        );
        if self.exit.is_some() && !ends_a_process && !raw {
            return Err(format!(
                "{at}.exit: only with `outcome` WorkerCrashed or DaemonDied (how that process ended), or on a raw-request task"
            ));
        }
        Ok(())
    }
}

/// A value in the tagged JSON of scenarios/README.md, at path `at`.
fn check_value(at: &str, v: &serde_json::Value) -> Result<(), String> {
    match pickle::value_from_json(v) {
        Ok(_) => Ok(()),
        Err(PickleError::Json { path, what }) if path == "the top level" => {
            Err(format!("{at}: {what}"))
        }
        Err(PickleError::Json { path, what }) => Err(format!("{at} (at {path}): {what}")),
        Err(e) => Err(format!("{at}: {e}")),
    }
}

fn check_values(at: &str, values: &[serde_json::Value]) -> Result<(), String> {
    values
        .iter()
        .enumerate()
        .try_for_each(|(j, v)| check_value(&format!("{at}[{j}]"), v))
}

fn check_hex(at: &str, h: &str) -> Result<(), String> {
    hex::decode(h)
        .map(drop)
        .map_err(|e| format!("{at}: {h:?} is not hex ({e})"))
}

impl StderrExpect {
    fn validate(&self, at: &str) -> Result<(), String> {
        let texts = self
            .contains
            .iter()
            .map(|t| ("contains", t))
            .chain(self.not_contains.iter().map(|t| ("not_contains", t)))
            .chain(
                self.faulthandler_contains
                    .iter()
                    .map(|t| ("faulthandler_contains", t)),
            );
        for (field, t) in texts {
            if t.is_empty() {
                return Err(format!(
                    "{at}.{field}: an empty text matches anything: give the text to look for"
                ));
            }
        }
        if self.contains.is_empty()
            && self.not_contains.is_empty()
            && self.faulthandler_contains.is_none()
        {
            return Err(format!(
                "{at}: empty: give `contains`, `not_contains` or `faulthandler_contains`"
            ));
        }
        Ok(())
    }
}

/// A raw request's only spans are its frames (`{"data": K}`): a fault of task `task` placed
/// anywhere else could never fire.
fn check_raw_positions(faults: &[Fault], task: usize, frames: usize) -> Result<(), String> {
    use crate::faults::{Position, Target};
    use crate::protocol::SpanKind;
    for (i, f) in faults.iter().enumerate() {
        if f.task() != Some(task) {
            continue;
        }
        let mut positions: Vec<&Position> = f.at().into_iter().collect();
        if let Fault::SplitWrites { from, to, .. } = f {
            positions.extend(from.iter().chain(to.iter()));
        }
        for p in positions {
            let (Position::Before(t) | Position::After(t) | Position::Inside { span: t, .. }) = p;
            let ok = matches!(t, Target::Span(SpanKind::Data(k)) if *k < frames);
            if !ok {
                return Err(format!(
                    "faults: fault #{i} ({}): task {task} is a raw request of {frames} frame(s): name one of its frames, {{\"data\": 0}} to {{\"data\": {}}}, not {t}",
                    f.describe(),
                    frames.saturating_sub(1)
                ));
            }
        }
    }
    Ok(())
}

/// A path under a folder fakejvm makes: relative, without `..`, NUL or empty parts.
fn check_relative_path(at: &str, name: &str) -> Result<(), String> {
    let bad = name.is_empty()
        || name.starts_with('/')
        || name.contains('\0')
        || name
            .split('/')
            .any(|p| p.is_empty() || p == "." || p == "..");
    if bad {
        Err(format!(
            "{at}: a relative path such as \"my_worker.py\" or \"pkg/__init__.py\", without `..`"
        ))
    } else {
        Ok(())
    }
}

fn check_env(at: &str, key: &str, value: &str) -> Result<(), String> {
    if key.is_empty() || key.contains('=') || key.contains('\0') {
        return Err(format!("{at}: not a variable name"));
    }
    if value.contains('\0') {
        return Err(format!("{at}: the value holds a NUL byte"));
    }
    Ok(())
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

    #[test]
    fn worker_modules_and_raw_requests_parse() {
        let s = Scenario::parse(
            r#"{"mode":"direct","worker_module":{"each_in":"pyspark","except":["pyspark.sql.connect.*","pyspark.worker"]},
                "tasks":[{"request":{"frames":["python_version",{"int":-1},{"hex":"c328"}],"then":"half_close"},
                          "expect":{"exception":{"type":"EOFError"},"exit":{"code":255}},
                          "expect_by_version":[{"module":"pyspark.sql.worker.*","expect":{"outcome":"Hang"},"note":"n"}]}]}"#,
        )
        .unwrap();
        let Some(WorkerModule::EachIn(set)) = &s.worker_module else {
            panic!("{:?}", s.worker_module)
        };
        assert_eq!(set.each_in.0, "pyspark");
        assert!(set.except[0].matches("pyspark.sql.connect.streaming.worker.listener_worker"));
        assert!(!set.except[0].matches("pyspark.sql.connect"));
        assert!(!set.except[0].matches("pyspark.sql.connector.x"));
        assert!(
            set.except[1].matches("pyspark.worker") && !set.except[1].matches("pyspark.worker2")
        );
        let r = s.tasks[0].request.as_ref().unwrap();
        assert_eq!(r.then, RequestEnd::HalfClose);
        assert_eq!(r.frames[0], RawFrame::PythonVersion);
        // A plain name is one module, as before; `then` defaults to waiting, as a JVM does.
        let s = Scenario::parse(
            r#"{"mode":"direct","worker_module":"pyspark_mine.worker","tasks":[{"request":{"frames":[{"text":"0.0"}]},"expect":{"outcome":"PythonException"}}]}"#,
        )
        .unwrap();
        assert_eq!(
            s.worker_module,
            Some(WorkerModule::One(ModuleName("pyspark_mine.worker".into())))
        );
        assert_eq!(s.tasks[0].request.as_ref().unwrap().then, RequestEnd::Wait);
        // `except` must lie inside `each_in`; `exit` after an answer is a direct worker's only.
        let e = Scenario::parse(
            r#"{"worker_module":{"each_in":"pyspark.sql.worker","except":["pyspark.sql.workers.x"]},"tasks":[{"request":{"frames":[{"int":1}]},"expect":{"outcome":"Hang"}}]}"#,
        )
        .unwrap_err();
        assert!(
            e.starts_with("worker_module: except[0]") && e.contains("not inside"),
            "{e}"
        );
        let e = Scenario::parse(
            r#"{"tasks":[{"request":{"frames":[{"int":1}]},"expect":{"outcome":"PythonException","exit":{"code":255}}}]}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("tasks[0].expect.exit"), "{e}");
    }

    #[test]
    fn every_bundled_scenario_loads() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios");
        let files = crate::scenario::collect_files(&[root]).unwrap();
        assert!(files.len() > 20, "{} scenario files", files.len());
        for f in files {
            Scenario::load(&f).unwrap_or_else(|e| panic!("{e}"));
        }
    }

    #[test]
    fn a_bad_value_names_its_field_path() {
        let task = |fields: &str| {
            format!(r#"{{"tasks":[{{"function":"func = lambda s, it: it",{fields}}}]}}"#)
        };
        let e = Scenario::parse(&task(
            r#""input":{"encoding":"pickle","values":[1,{"$int":"x"}]},"expect":{"values":[]}"#,
        ))
        .unwrap_err();
        assert!(
            e.starts_with("tasks[0].input.values[1] (at /$int): "),
            "{e}"
        );
        let e = Scenario::parse(&task(r#""expect":{"values":[{"$bytes":"0"}]}"#)).unwrap_err();
        assert!(
            e.starts_with("tasks[0].expect.values[0] (at /$bytes): "),
            "{e}"
        );
        let e = Scenario::parse(&task(r#""expect":{"outcome":"Nope"}"#)).unwrap_err();
        assert!(
            e.starts_with("tasks[0].expect.outcome: unknown variant `Nope`"),
            "{e}"
        );
        let e = Scenario::parse(&task(r#""expect":{}"#)).unwrap_err();
        assert!(e.starts_with("tasks[0].expect: needs exactly one"), "{e}");
        let e = Scenario::parse(&task(r#""input":{"encoding":"utf8","lines":[{"repeat":"xx","times":200000000}]},"expect":{"values":[]}"#)).unwrap_err();
        assert!(e.starts_with("tasks[0].input.lines[0]: "), "{e}");
        let e = Scenario::parse(&format!("{} x", task(r#""expect":{"values":[]}"#))).unwrap_err();
        assert!(e.contains("trailing characters"), "{e}");
    }
}
