//! The command section of SQL UDF and UDTF tasks (eval types 100-302): what follows the eval type
//! instead of NON_UDF's single command frame. See ../shared/PROTOCOL-UDF.md §3.
//!
//! One layout for every eval type and version; a [`UdfLayout`] (a pyspark minor line, not a
//! request family: 3.5 and 4.0 share family A's preamble but not this section) answers the few
//! questions on which versions and eval types differ. The values here are what is on the wire for
//! that layout: 4.2+ carries the runner conf and the schemas of [`CommandExtras`] in the header's
//! RunnerConf / EvalConf maps instead, and [`UdfCommand::place`] puts them where they belong.

use super::{Dialect, TaskRequest};
use crate::wire::{self, complete, Limits, Reader, Status, WireError, WireErrorKind};
use bytes::BytesMut;
use serde::{Deserialize, Serialize};
use std::fmt;

/// `PythonEvalType` (pyspark util.py; 3.5 rdd.py). Unknown values are kept as `Other` so decode
/// can show them and the fuzzer can send them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EvalType {
    NonUdf,
    SqlBatchedUdf,
    SqlArrowBatchedUdf,
    SqlScalarPandasUdf,
    SqlGroupedMapPandasUdf,
    SqlGroupedAggPandasUdf,
    SqlWindowAggPandasUdf,
    SqlScalarPandasIterUdf,
    SqlMapPandasIterUdf,
    SqlCogroupedMapPandasUdf,
    SqlMapArrowIterUdf,
    SqlGroupedMapPandasUdfWithState,
    SqlGroupedMapArrowUdf,
    SqlCogroupedMapArrowUdf,
    SqlTransformWithStatePandasUdf,
    SqlTransformWithStatePandasInitStateUdf,
    SqlTransformWithStatePythonRowUdf,
    SqlTransformWithStatePythonRowInitStateUdf,
    SqlGroupedMapArrowIterUdf,
    SqlGroupedMapPandasIterUdf,
    SqlGroupedAggPandasIterUdf,
    SqlScalarArrowUdf,
    SqlScalarArrowIterUdf,
    SqlGroupedAggArrowUdf,
    SqlWindowAggArrowUdf,
    SqlGroupedAggArrowIterUdf,
    SqlTableUdf,
    SqlArrowTableUdf,
    SqlArrowUdtf,
    Other(i32),
}

use EvalType as E;

/// Every named eval type: value, pyspark's name, and the first layout that has it.
const EVAL_TYPES: [(EvalType, i32, &str, UdfLayout); 29] = {
    use UdfLayout::*;
    [
        (E::NonUdf, 0, "NON_UDF", Pyspark35),
        (E::SqlBatchedUdf, 100, "SQL_BATCHED_UDF", Pyspark35),
        (
            E::SqlArrowBatchedUdf,
            101,
            "SQL_ARROW_BATCHED_UDF",
            Pyspark35,
        ),
        (
            E::SqlScalarPandasUdf,
            200,
            "SQL_SCALAR_PANDAS_UDF",
            Pyspark35,
        ),
        (
            E::SqlGroupedMapPandasUdf,
            201,
            "SQL_GROUPED_MAP_PANDAS_UDF",
            Pyspark35,
        ),
        (
            E::SqlGroupedAggPandasUdf,
            202,
            "SQL_GROUPED_AGG_PANDAS_UDF",
            Pyspark35,
        ),
        (
            E::SqlWindowAggPandasUdf,
            203,
            "SQL_WINDOW_AGG_PANDAS_UDF",
            Pyspark35,
        ),
        (
            E::SqlScalarPandasIterUdf,
            204,
            "SQL_SCALAR_PANDAS_ITER_UDF",
            Pyspark35,
        ),
        (
            E::SqlMapPandasIterUdf,
            205,
            "SQL_MAP_PANDAS_ITER_UDF",
            Pyspark35,
        ),
        (
            E::SqlCogroupedMapPandasUdf,
            206,
            "SQL_COGROUPED_MAP_PANDAS_UDF",
            Pyspark35,
        ),
        (
            E::SqlMapArrowIterUdf,
            207,
            "SQL_MAP_ARROW_ITER_UDF",
            Pyspark35,
        ),
        (
            E::SqlGroupedMapPandasUdfWithState,
            208,
            "SQL_GROUPED_MAP_PANDAS_UDF_WITH_STATE",
            Pyspark35,
        ),
        (
            E::SqlGroupedMapArrowUdf,
            209,
            "SQL_GROUPED_MAP_ARROW_UDF",
            Pyspark40,
        ),
        (
            E::SqlCogroupedMapArrowUdf,
            210,
            "SQL_COGROUPED_MAP_ARROW_UDF",
            Pyspark40,
        ),
        (
            E::SqlTransformWithStatePandasUdf,
            211,
            "SQL_TRANSFORM_WITH_STATE_PANDAS_UDF",
            Pyspark40,
        ),
        (
            E::SqlTransformWithStatePandasInitStateUdf,
            212,
            "SQL_TRANSFORM_WITH_STATE_PANDAS_INIT_STATE_UDF",
            Pyspark40,
        ),
        (
            E::SqlTransformWithStatePythonRowUdf,
            213,
            "SQL_TRANSFORM_WITH_STATE_PYTHON_ROW_UDF",
            Pyspark41,
        ),
        (
            E::SqlTransformWithStatePythonRowInitStateUdf,
            214,
            "SQL_TRANSFORM_WITH_STATE_PYTHON_ROW_INIT_STATE_UDF",
            Pyspark41,
        ),
        (
            E::SqlGroupedMapArrowIterUdf,
            215,
            "SQL_GROUPED_MAP_ARROW_ITER_UDF",
            Pyspark41,
        ),
        (
            E::SqlGroupedMapPandasIterUdf,
            216,
            "SQL_GROUPED_MAP_PANDAS_ITER_UDF",
            Pyspark41,
        ),
        (
            E::SqlGroupedAggPandasIterUdf,
            217,
            "SQL_GROUPED_AGG_PANDAS_ITER_UDF",
            Pyspark42,
        ),
        (E::SqlScalarArrowUdf, 250, "SQL_SCALAR_ARROW_UDF", Pyspark41),
        (
            E::SqlScalarArrowIterUdf,
            251,
            "SQL_SCALAR_ARROW_ITER_UDF",
            Pyspark41,
        ),
        (
            E::SqlGroupedAggArrowUdf,
            252,
            "SQL_GROUPED_AGG_ARROW_UDF",
            Pyspark41,
        ),
        (
            E::SqlWindowAggArrowUdf,
            253,
            "SQL_WINDOW_AGG_ARROW_UDF",
            Pyspark41,
        ),
        (
            E::SqlGroupedAggArrowIterUdf,
            254,
            "SQL_GROUPED_AGG_ARROW_ITER_UDF",
            Pyspark42,
        ),
        (E::SqlTableUdf, 300, "SQL_TABLE_UDF", Pyspark35),
        (E::SqlArrowTableUdf, 301, "SQL_ARROW_TABLE_UDF", Pyspark35),
        (E::SqlArrowUdtf, 302, "SQL_ARROW_UDTF", Pyspark41),
    ]
};

impl EvalType {
    /// Every named eval type, in value order.
    pub fn all() -> impl Iterator<Item = EvalType> {
        EVAL_TYPES.iter().map(|e| e.0)
    }

    fn entry(self) -> Option<&'static (EvalType, i32, &'static str, UdfLayout)> {
        EVAL_TYPES.iter().find(|e| e.0 == self)
    }

    pub fn value(self) -> i32 {
        match self {
            EvalType::Other(v) => v,
            named => {
                named
                    .entry()
                    .expect("every named eval type is in the table")
                    .1
            }
        }
    }

    pub fn from_value(v: i32) -> EvalType {
        EVAL_TYPES
            .iter()
            .find(|e| e.1 == v)
            .map_or(EvalType::Other(v), |e| e.0)
    }

    /// pyspark's name (`SQL_SCALAR_PANDAS_UDF`), None for an unknown value.
    pub fn name(self) -> Option<&'static str> {
        self.entry().map(|e| e.2)
    }

    /// The first pyspark line whose worker knows this eval type (None: unknown value).
    pub fn since(self) -> Option<UdfLayout> {
        self.entry().map(|e| e.3)
    }

    /// 300-302 go to `read_udtf`; every other non-zero value to `read_udfs`.
    pub fn is_udtf(self) -> bool {
        matches!(self, E::SqlTableUdf | E::SqlArrowTableUdf | E::SqlArrowUdtf)
    }

    /// 208 and 211-214 keep state through the JVM (a state info column, or a state server the
    /// worker connects to); fakejvm decodes their command section but does not run them.
    pub fn is_stateful(self) -> bool {
        matches!(
            self,
            E::SqlGroupedMapPandasUdfWithState
                | E::SqlTransformWithStatePandasUdf
                | E::SqlTransformWithStatePandasInitStateUdf
                | E::SqlTransformWithStatePythonRowUdf
                | E::SqlTransformWithStatePythonRowInitStateUdf
        )
    }

    fn is_transform_with_state(self) -> bool {
        matches!(self.value(), 211..=214)
    }

    /// Rows travel as pickles (100, 300); every other UDF kind exchanges Arrow streams.
    pub fn is_pickled(self) -> bool {
        matches!(self, E::SqlBatchedUdf | E::SqlTableUdf)
    }

    /// Grouped kinds: each group is one unit of input (a batch up to 4.0, a stream from 4.1).
    pub fn is_grouped(self) -> bool {
        matches!(
            self,
            E::SqlGroupedMapPandasUdf
                | E::SqlGroupedAggPandasUdf
                | E::SqlWindowAggPandasUdf
                | E::SqlGroupedMapArrowUdf
                | E::SqlGroupedMapArrowIterUdf
                | E::SqlGroupedMapPandasIterUdf
                | E::SqlGroupedAggPandasIterUdf
                | E::SqlGroupedAggArrowUdf
                | E::SqlWindowAggArrowUdf
                | E::SqlGroupedAggArrowIterUdf
        )
    }

    pub fn is_cogrouped(self) -> bool {
        matches!(
            self,
            E::SqlCogroupedMapPandasUdf | E::SqlCogroupedMapArrowUdf
        )
    }
}

impl fmt::Display for EvalType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(n) => write!(f, "{n} ({})", self.value()),
            None => write!(f, "unknown eval type {}", self.value()),
        }
    }
}

impl std::str::FromStr for EvalType {
    type Err = String;
    /// pyspark's name, case-insensitive (`sql_batched_udf`), or the number.
    fn from_str(s: &str) -> Result<EvalType, String> {
        if let Ok(v) = s.trim().parse::<i32>() {
            return Ok(EvalType::from_value(v));
        }
        EVAL_TYPES
            .iter()
            .find(|e| e.2.eq_ignore_ascii_case(s.trim()))
            .map(|e| e.0)
            .ok_or_else(|| format!("unknown eval type {s:?}: expected a PythonEvalType name such as SQL_BATCHED_UDF, or its number"))
    }
}

/// A pyspark minor line, as far as the UDF command section is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum UdfLayout {
    Pyspark35,
    Pyspark40,
    Pyspark41,
    Pyspark42,
    Pyspark43,
}

use UdfLayout::*;

impl UdfLayout {
    pub const ALL: [UdfLayout; 5] = [Pyspark35, Pyspark40, Pyspark41, Pyspark42, Pyspark43];

    /// None before 3.5: older UDF sections were never checked against a worker.
    pub fn for_version(major: u32, minor: u32) -> Option<UdfLayout> {
        match (major, minor) {
            (3, 5..) => Some(Pyspark35),
            (4, 0) => Some(Pyspark40),
            (4, 1) => Some(Pyspark41),
            (4, 2) => Some(Pyspark42),
            (4, 3..) | (5.., _) => Some(Pyspark43),
            _ => None,
        }
    }

    /// The layout decode assumes for a family when it is not told the version: the family's
    /// newest line (A: 4.0, whose section differs from 3.5's).
    pub fn default_for(dialect: Dialect) -> UdfLayout {
        match dialect {
            Dialect::A => Pyspark40,
            Dialect::B => Pyspark41,
            Dialect::C => Pyspark42,
            Dialect::D => Pyspark43,
        }
    }

    pub fn dialect(self) -> Dialect {
        match self {
            Pyspark35 | Pyspark40 => Dialect::A,
            Pyspark41 => Dialect::B,
            Pyspark42 => Dialect::C,
            Pyspark43 => Dialect::D,
        }
    }

    pub fn version(self) -> &'static str {
        match self {
            Pyspark35 => "3.5",
            Pyspark40 => "4.0",
            Pyspark41 => "4.1",
            Pyspark42 => "4.2",
            Pyspark43 => "4.3",
        }
    }

    /// Whether this line's worker knows `eval`.
    pub fn has(self, eval: EvalType) -> bool {
        eval.since().is_some_and(|s| s <= self)
    }

    /// Up to 4.1 the runner conf is read inside read_udfs / read_udtf, and only by the Arrow
    /// kinds (100 and 300 have none); from 4.2 `main` reads it for every eval type, in the header.
    pub fn conf_in_command(self, eval: EvalType) -> bool {
        self <= Pyspark41 && !eval.is_pickled() && eval != E::NonUdf
    }

    /// 4.1 sends 101's and 301's input schema as a JSON string after the conf (4.2+: EvalConf
    /// `input_type`).
    pub fn input_schema_in_command(self, eval: EvalType) -> bool {
        self == Pyspark41 && matches!(eval, E::SqlArrowBatchedUdf | E::SqlArrowTableUdf)
    }

    /// 208's state value schema JSON after the conf, up to 4.1 (4.2+: EvalConf).
    pub fn state_schema_in_command(self, eval: EvalType) -> bool {
        self <= Pyspark41 && eval == E::SqlGroupedMapPandasUdfWithState
    }

    /// 211-214: the state server's port and the grouping key schema, in 4.0 and 4.1.
    pub fn state_server_in_command(self, eval: EvalType) -> bool {
        matches!(self, Pyspark40 | Pyspark41) && eval.is_transform_with_state()
    }

    /// 4.1 lets a state server port of -1 announce a Unix socket path.
    pub fn state_server_may_be_path(self) -> bool {
        self == Pyspark41
    }

    /// 4.1 sends 302's table-argument offsets after the conf (4.2+: EvalConf).
    pub fn table_offsets_in_command(self, eval: EvalType) -> bool {
        self == Pyspark41 && eval == E::SqlArrowUdtf
    }

    /// 4.0 and 4.1 send `is_profiling` (+ the profiler name) before `num_udfs`; 4.2 moved it into
    /// RunnerConf.
    pub fn profiling_on_wire(self) -> bool {
        matches!(self, Pyspark40 | Pyspark41)
    }

    /// Whether each argument offset is followed by a `named` bool (+ the keyword): 4.0 for the
    /// scalar, agg and window kinds only, 4.1 adds the Arrow ones, 4.2 every kind.
    pub fn named_args(self, eval: EvalType) -> bool {
        let scalar_like = matches!(
            eval,
            E::SqlBatchedUdf
                | E::SqlArrowBatchedUdf
                | E::SqlScalarPandasUdf
                | E::SqlGroupedAggPandasUdf
                | E::SqlWindowAggPandasUdf
                | E::SqlScalarPandasIterUdf
        );
        let arrow_scalar_like = matches!(
            eval,
            E::SqlScalarArrowUdf
                | E::SqlScalarArrowIterUdf
                | E::SqlGroupedAggArrowUdf
                | E::SqlWindowAggArrowUdf
        );
        match self {
            Pyspark35 => false,
            Pyspark40 => scalar_like,
            Pyspark41 => scalar_like || arrow_scalar_like,
            Pyspark42 | Pyspark43 => true,
        }
    }

    /// A result id (i64) after each UDF's functions: 4.2+ always; 4.0/4.1 only while profiling
    /// with "perf" or "memory".
    pub fn result_id(self, profiler: Option<&Profiler>) -> bool {
        match self {
            Pyspark35 => false,
            Pyspark40 | Pyspark41 => matches!(profiler, Some(Profiler::Perf | Profiler::Memory)),
            Pyspark42 | Pyspark43 => true,
        }
    }

    /// UDTF arguments carry the named flag, partition-child indexes, an optional analyze result
    /// and the UDTF's name from 4.0 on.
    pub fn udtf_extras(self) -> bool {
        self >= Pyspark40
    }

    /// The runner conf key 203/253 read the window bound of each UDF from.
    pub fn window_bound_key(self) -> &'static str {
        if self <= Pyspark40 {
            "pandas_window_bound_types"
        } else {
            "window_bound_types"
        }
    }

    /// How the data section of `eval` is framed on this line (PROTOCOL-UDF.md §4.2).
    pub fn input_framing(self, eval: EvalType) -> InputFraming {
        if eval.is_pickled() || eval == E::NonUdf {
            InputFraming::Pickled
        } else if eval.is_cogrouped() {
            InputFraming::Cogrouped
        } else if eval.is_grouped() {
            // 3.5/4.0 read every record batch of one stream as a group.
            if self <= Pyspark40 {
                InputFraming::BatchPerGroup
            } else {
                InputFraming::Grouped
            }
        } else {
            InputFraming::Stream
        }
    }
}

impl fmt::Display for UdfLayout {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "pyspark {}", self.version())
    }
}

/// The shapes of a UDF task's data section.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputFraming {
    /// Length-prefixed pickles of row tuples, then -1 (100, 300).
    Pickled,
    /// One raw Arrow IPC stream.
    Stream,
    /// One raw Arrow IPC stream, one record batch per group (grouped kinds up to 4.0).
    BatchPerGroup,
    /// Per group `i32 1` + an IPC stream, then `i32 0` (grouped kinds from 4.1).
    Grouped,
    /// Per group `i32 2` + the left and the right stream, then `i32 0`.
    Cogrouped,
}

/// The profiler 4.0/4.1 name on the wire when `is_profiling` is true.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Profiler {
    Perf,
    Memory,
    /// Any other string: the worker accepts it but sends no result ids.
    Other(String),
}

impl Profiler {
    fn wire_name(&self) -> &str {
        match self {
            Profiler::Perf => "perf",
            Profiler::Memory => "memory",
            Profiler::Other(s) => s,
        }
    }

    fn from_wire(s: String) -> Profiler {
        match s.as_str() {
            "perf" => Profiler::Perf,
            "memory" => Profiler::Memory,
            _ => Profiler::Other(s),
        }
    }
}

/// One argument: an offset into the input columns, and (4.0+, where the layout has the flag) the
/// keyword it is passed as.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Arg {
    pub offset: i32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

impl Arg {
    pub fn positional(offset: i32) -> Arg {
        Arg { offset, name: None }
    }
}

/// One function of a UDF's chain: the cloudpickle of `(func, return_type)` the driver wrote.
/// The worker calls the chain first to last and uses the last one's return type.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct ChainedFunc {
    #[serde(with = "super::hex_bytes")]
    pub pickle: Vec<u8>,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Udf {
    pub args: Vec<Arg>,
    pub funcs: Vec<ChainedFunc>,
    /// Sent where [`UdfLayout::result_id`] says so; the encoder writes 0 when it is None there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result_id: Option<i64>,
}

impl Udf {
    /// One function over positional arguments, as `spark.udf.register` builds it.
    pub fn simple(offsets: &[i32], pickle: Vec<u8>) -> Udf {
        Udf {
            args: offsets.iter().map(|&o| Arg::positional(o)).collect(),
            funcs: vec![ChainedFunc { pickle }],
            result_id: None,
        }
    }
}

/// A Python UDTF (300-302): one handler class instead of a list of UDFs.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Udtf {
    pub args: Vec<Arg>,
    /// 4.0+.
    pub partition_child_indexes: Vec<i32>,
    /// 4.0+: the pickled AnalyzeResult, when the UDTF has `analyze`.
    #[serde(default, with = "opt_hex")]
    pub analyze_result: Option<Vec<u8>>,
    /// The cloudpickle of the UDTF class.
    #[serde(with = "super::hex_bytes")]
    pub handler: Vec<u8>,
    /// The return type as StructType JSON.
    pub return_type: String,
    /// 4.0+.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where a 211-214 worker reaches the JVM's state server (4.0/4.1 wire form).
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StateServer {
    Port(i32),
    /// 4.1: sent as port -1 + the path.
    Path(String),
}

/// What 3.5-4.1 send between the runner conf and the functions, per eval type. From 4.2 the same
/// values are EvalConf entries ([`EVAL_CONF_KEYS`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CommandExtras {
    /// 101 and 301 on 4.1: the input StructType JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_schema: Option<String>,
    /// 208: the state value StructType JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_value_schema: Option<String>,
    /// 211-214.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_server: Option<StateServer>,
    /// 211-214: the grouping key StructType JSON.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grouping_key_schema: Option<String>,
    /// 302 on 4.1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table_arg_offsets: Option<Vec<i32>>,
}

/// The EvalConf keys 4.2+ read the [`CommandExtras`] from (4.2.1 `worker.py:EvalConf`).
pub const EVAL_CONF_KEYS: [&str; 5] = [
    "input_type",
    "state_value_schema",
    "state_server_socket_port",
    "grouping_key_schema",
    "table_arg_offsets",
];

#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UdfBody {
    /// read_udfs: 100, 101, 2xx.
    Udfs {
        /// 4.0/4.1 only (`is_profiling` + name).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        profiler: Option<Profiler>,
        udfs: Vec<Udf>,
    },
    /// read_udtf: 300-302.
    Udtf(Udtf),
}

/// The typed command section of a UDF task, as the worker of `layout` reads it.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct UdfCommand {
    pub layout: UdfLayout,
    #[serde(default)]
    pub extras: CommandExtras,
    pub body: UdfBody,
}

impl UdfCommand {
    /// read_udfs kinds: these UDFs, no profiling, nothing extra.
    pub fn udfs(layout: UdfLayout, udfs: Vec<Udf>) -> UdfCommand {
        UdfCommand {
            layout,
            extras: CommandExtras::default(),
            body: UdfBody::Udfs {
                profiler: None,
                udfs,
            },
        }
    }

    /// A whole request for `eval` with everything in its place for the layout: the runner conf
    /// in the command (up to 4.1) or the header (4.2+), the extras in the command or as EvalConf,
    /// result ids where 4.2+ requires them. The data section is the caller's.
    pub fn place(
        mut self,
        python_version: &str,
        eval: EvalType,
        runner_conf: Vec<(String, String)>,
    ) -> TaskRequest {
        let mut req = TaskRequest::non_udf(python_version, vec![], vec![]);
        req.eval_type = eval;
        req.runner_conf = runner_conf;
        let l = self.layout;
        if l <= Pyspark41 {
            // Only what this line's worker reads for `eval`: the request then is what the wire
            // holds, and decodes back equal.
            let x = &mut self.extras;
            if !l.input_schema_in_command(eval) {
                x.input_schema = None;
            }
            if !l.state_schema_in_command(eval) {
                x.state_value_schema = None;
            }
            if !l.state_server_in_command(eval) {
                x.state_server = None;
                x.grouping_key_schema = None;
            }
            if !l.table_offsets_in_command(eval) {
                x.table_arg_offsets = None;
            }
            if !l.conf_in_command(eval) {
                req.runner_conf.clear();
            }
        } else {
            let x = std::mem::take(&mut self.extras);
            let port = x.state_server.map(|s| match s {
                StateServer::Port(p) => p.to_string(),
                StateServer::Path(p) => p,
            });
            let offsets = x.table_arg_offsets.map(|o| {
                o.iter()
                    .map(|i| i.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            });
            let values = [
                x.input_schema,
                x.state_value_schema,
                port,
                x.grouping_key_schema,
                offsets,
            ];
            for (k, v) in EVAL_CONF_KEYS.iter().zip(values) {
                if let Some(v) = v {
                    req.eval_conf.push((k.to_string(), v));
                }
            }
        }
        if let UdfBody::Udfs { udfs, profiler } = &mut self.body {
            if self.layout.result_id(profiler.as_ref()) {
                for u in udfs.iter_mut() {
                    u.result_id.get_or_insert(0);
                }
            }
        }
        req.udf = Some(self);
        req
    }

    /// Write the section that follows the eval type (and, 4.2+, the header's conf maps).
    /// `runner_conf` is written here only where the layout reads it inside the section.
    pub fn encode(
        &self,
        eval: EvalType,
        runner_conf: &[(String, String)],
        buf: &mut BytesMut,
        limits: Limits,
    ) -> Result<(), WireError> {
        let l = self.layout;
        let x = &self.extras;
        if l.conf_in_command(eval) {
            wire::put_int(buf, runner_conf.len() as i32);
            for (k, v) in runner_conf {
                wire::put_str(buf, k, limits)?;
                wire::put_str(buf, v, limits)?;
            }
        }
        if l.input_schema_in_command(eval) {
            wire::put_str(buf, x.input_schema.as_deref().unwrap_or_default(), limits)?;
        }
        if l.state_schema_in_command(eval) {
            wire::put_str(
                buf,
                x.state_value_schema.as_deref().unwrap_or_default(),
                limits,
            )?;
        }
        if l.state_server_in_command(eval) {
            match &x.state_server {
                Some(StateServer::Path(p)) => {
                    wire::put_int(buf, -1);
                    wire::put_str(buf, p, limits)?;
                }
                Some(StateServer::Port(p)) => wire::put_int(buf, *p),
                None => wire::put_int(buf, 0),
            }
            wire::put_str(
                buf,
                x.grouping_key_schema.as_deref().unwrap_or_default(),
                limits,
            )?;
        }
        if l.table_offsets_in_command(eval) {
            let offsets = x.table_arg_offsets.as_deref().unwrap_or_default();
            wire::put_int(buf, offsets.len() as i32);
            for o in offsets {
                wire::put_int(buf, *o);
            }
        }
        match &self.body {
            UdfBody::Udfs { profiler, udfs } => {
                if l.profiling_on_wire() {
                    wire::put_bool(buf, profiler.is_some());
                    if let Some(p) = profiler {
                        wire::put_str(buf, p.wire_name(), limits)?;
                    }
                }
                wire::put_int(buf, udfs.len() as i32);
                for u in udfs {
                    put_args(buf, &u.args, l.named_args(eval), limits)?;
                    wire::put_int(buf, u.funcs.len() as i32);
                    for f in &u.funcs {
                        wire::put_frame(buf, &f.pickle, limits)?;
                    }
                    if l.result_id(profiler.as_ref()) {
                        wire::put_long(buf, u.result_id.unwrap_or(0));
                    }
                }
            }
            UdfBody::Udtf(t) => {
                put_args(buf, &t.args, l.udtf_extras(), limits)?;
                if l.udtf_extras() {
                    wire::put_int(buf, t.partition_child_indexes.len() as i32);
                    for i in &t.partition_child_indexes {
                        wire::put_int(buf, *i);
                    }
                    wire::put_bool(buf, t.analyze_result.is_some());
                    if let Some(a) = &t.analyze_result {
                        wire::put_frame(buf, a, limits)?;
                    }
                }
                wire::put_frame(buf, &t.handler, limits)?;
                wire::put_str(buf, &t.return_type, limits)?;
                if l.udtf_extras() {
                    wire::put_str(buf, t.name.as_deref().unwrap_or_default(), limits)?;
                }
            }
        }
        Ok(())
    }

    /// Read the section back. Returns the command and, where the layout reads it inside the
    /// section, the runner conf.
    #[allow(clippy::type_complexity)]
    pub fn decode(
        layout: UdfLayout,
        eval: EvalType,
        r: &mut Reader,
    ) -> Result<Status<(UdfCommand, Option<Vec<(String, String)>>)>, WireError> {
        let l = layout;
        if eval == E::NonUdf || eval.name().is_none() {
            return Err(r.error(r.offset(), WireErrorKind::NoUdfSection(eval)));
        }
        let conf = if l.conf_in_command(eval) {
            let n = complete!(r.count("runner conf count", 8));
            let mut conf = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let k = complete!(r.string("conf key"));
                let v = complete!(r.string("conf value"));
                conf.push((k, v));
            }
            Some(conf)
        } else {
            None
        };
        let mut x = CommandExtras::default();
        if l.input_schema_in_command(eval) {
            x.input_schema = Some(complete!(r.string("input schema JSON")));
        }
        if l.state_schema_in_command(eval) {
            x.state_value_schema = Some(complete!(r.string("state value schema JSON")));
        }
        if l.state_server_in_command(eval) {
            let port = complete!(r.int());
            x.state_server = Some(if port == -1 && l.state_server_may_be_path() {
                StateServer::Path(complete!(r.string("state server socket path")))
            } else {
                StateServer::Port(port)
            });
            x.grouping_key_schema = Some(complete!(r.string("grouping key schema JSON")));
        }
        if l.table_offsets_in_command(eval) {
            let n = complete!(r.count("table argument offset count", 4));
            x.table_arg_offsets = Some(complete!(read_ints(r, n)));
        }
        let body = if eval.is_udtf() {
            let args = complete!(read_args(r, l.udtf_extras()));
            let mut t = Udtf {
                args,
                partition_child_indexes: vec![],
                analyze_result: None,
                handler: vec![],
                return_type: String::new(),
                name: None,
            };
            if l.udtf_extras() {
                let n = complete!(r.count("partition child index count", 4));
                t.partition_child_indexes = complete!(read_ints(r, n));
                if complete!(r.bool()) {
                    t.analyze_result = Some(complete!(r.frame("analyze result")).to_vec());
                }
            }
            t.handler = complete!(r.frame("UDTF handler pickle")).to_vec();
            t.return_type = complete!(r.string("UDTF return type JSON"));
            if l.udtf_extras() {
                t.name = Some(complete!(r.string("UDTF name")));
            }
            UdfBody::Udtf(t)
        } else {
            let profiler = if l.profiling_on_wire() && complete!(r.bool()) {
                Some(Profiler::from_wire(complete!(r.string("profiler"))))
            } else {
                None
            };
            // Each UDF takes at least its two counts.
            let n = complete!(r.count("UDF count", 8));
            let mut udfs = Vec::with_capacity(n.min(64));
            for _ in 0..n {
                let args = complete!(read_args(r, l.named_args(eval)));
                let k = complete!(r.count("chained function count", 4));
                let mut funcs = Vec::with_capacity(k.min(64));
                for _ in 0..k {
                    funcs.push(ChainedFunc {
                        pickle: complete!(r.frame("UDF function pickle")).to_vec(),
                    });
                }
                let result_id = if l.result_id(profiler.as_ref()) {
                    Some(complete!(r.long()))
                } else {
                    None
                };
                udfs.push(Udf {
                    args,
                    funcs,
                    result_id,
                });
            }
            UdfBody::Udfs { profiler, udfs }
        };
        Ok(Status::Complete((
            UdfCommand {
                layout,
                extras: x,
                body,
            },
            conf,
        )))
    }
}

impl ChainedFunc {
    /// The `pyspark.sql.types` classes the pickle refers to, in order (`ArrayType, StringType`
    /// for `array<string>`): the return type as far as it can be told without unpickling, which
    /// needs the target pyspark. Read from the module/name string pairs that STACK_GLOBAL takes.
    pub fn type_classes(&self) -> Vec<String> {
        let strings = short_strings(&self.pickle);
        let mut out: Vec<String> = vec![];
        for pair in strings.windows(2) {
            if pair[0] == "pyspark.sql.types" && !out.contains(&pair[1]) {
                out.push(pair[1].clone());
            }
        }
        out
    }
}

/// The SHORT_BINUNICODE (0x8c) strings of a pickle, scanned loosely (a stray 0x8c inside other
/// data can only add a bogus string, never hide a real one for long).
fn short_strings(p: &[u8]) -> Vec<String> {
    let mut out = vec![];
    let mut i = 0;
    while i + 1 < p.len() {
        if p[i] == 0x8c {
            let n = p[i + 1] as usize;
            if let Some(b) = p.get(i + 2..i + 2 + n) {
                if let Ok(s) = std::str::from_utf8(b) {
                    out.push(s.to_owned());
                    i += 2 + n;
                    continue;
                }
            }
        }
        i += 1;
    }
    out
}

impl UdfCommand {
    /// The section for `fakejvm decode`, one line per item.
    pub fn text_lines(&self, eval: EvalType) -> Vec<String> {
        let mut lines = vec![format!("{eval} as {}", self.layout)];
        let x = &self.extras;
        for (what, v) in [
            ("input schema", &x.input_schema),
            ("state value schema", &x.state_value_schema),
            ("grouping key schema", &x.grouping_key_schema),
        ] {
            if let Some(v) = v {
                lines.push(format!("{what} {v}"));
            }
        }
        if let Some(s) = &x.state_server {
            lines.push(format!("state server {s:?}"));
        }
        if let Some(o) = &x.table_arg_offsets {
            lines.push(format!("table argument offsets {o:?}"));
        }
        let args_text = |args: &[Arg]| {
            args.iter()
                .map(|a| match &a.name {
                    Some(n) => format!("{n}={}", a.offset),
                    None => a.offset.to_string(),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        match &self.body {
            UdfBody::Udfs { profiler, udfs } => {
                if let Some(p) = profiler {
                    lines.push(format!("profiler {:?}", p.wire_name()));
                }
                for (i, u) in udfs.iter().enumerate() {
                    lines.push(format!("udf {i}: args [{}]", args_text(&u.args)));
                    for (k, f) in u.funcs.iter().enumerate() {
                        lines.push(format!(
                            "  function {k}: {}-byte pickle (func, return type); types {}",
                            f.pickle.len(),
                            f.type_classes().join(", ")
                        ));
                    }
                    if let Some(r) = u.result_id {
                        lines.push(format!("  result id {r}"));
                    }
                }
                if eval.is_stateful() {
                    lines.push(
                        "stateful kind: fakejvm decodes this section but does not run it (no state server)".into(),
                    );
                }
            }
            UdfBody::Udtf(t) => {
                lines.push(format!(
                    "udtf {:?}: args [{}], partition child indexes {:?}, analyze result {}",
                    t.name.as_deref().unwrap_or(""),
                    args_text(&t.args),
                    t.partition_child_indexes,
                    t.analyze_result
                        .as_ref()
                        .map_or("none".into(), |a| format!("{} bytes", a.len()))
                ));
                lines.push(format!(
                    "  handler: {}-byte pickle of the class",
                    t.handler.len()
                ));
                lines.push(format!("  return type {}", t.return_type));
            }
        }
        lines
    }
}

fn put_args(
    buf: &mut BytesMut,
    args: &[Arg],
    named: bool,
    limits: Limits,
) -> Result<(), WireError> {
    wire::put_int(buf, args.len() as i32);
    for a in args {
        wire::put_int(buf, a.offset);
        if named {
            wire::put_bool(buf, a.name.is_some());
            if let Some(n) = &a.name {
                wire::put_str(buf, n, limits)?;
            }
        }
    }
    Ok(())
}

fn read_args(r: &mut Reader, named: bool) -> Result<Status<Vec<Arg>>, WireError> {
    let n = complete!(r.count("argument count", 4));
    let mut args = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let offset = complete!(r.int());
        let name = if named && complete!(r.bool()) {
            Some(complete!(r.string("keyword argument name")))
        } else {
            None
        };
        args.push(Arg { offset, name });
    }
    Ok(Status::Complete(args))
}

fn read_ints(r: &mut Reader, n: usize) -> Result<Status<Vec<i32>>, WireError> {
    let mut v = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        v.push(complete!(r.int()));
    }
    Ok(Status::Complete(v))
}

mod opt_hex {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(super) fn serialize<S: Serializer>(b: &Option<Vec<u8>>, s: S) -> Result<S::Ok, S::Error> {
        match b {
            Some(b) => s.serialize_some(&hex::encode(b)),
            None => s.serialize_none(),
        }
    }
    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<u8>>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|s| hex::decode(s).map_err(serde::de::Error::custom))
            .transpose()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{decode_requests_as, DataItem};
    use proptest::prelude::*;

    fn request(layout: UdfLayout, eval: EvalType, cmd: UdfCommand) -> TaskRequest {
        let mut req = cmd.place("3.11", eval, vec![]);
        req.spark_files_dir = "/tmp".into();
        let framing = layout.input_framing(eval);
        if framing == InputFraming::Pickled {
            req.data = vec![DataItem::Frame(vec![0x80, 2, b'N', b'.'])];
        } else {
            use crate::arrow::{data_section, positional_batch, Group};
            let col = std::sync::Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
            let batch = positional_batch(vec![col]).unwrap();
            let groups = [Group {
                left: vec![batch.clone()],
                right: vec![batch.clone()],
            }];
            req.data = data_section(framing, &batch.schema(), None, &groups).unwrap();
            req.end_of_data = false;
        }
        // 4.3's context JSON always carries cpuAmount, so it decodes as set.
        req.context.cpu_amount = (layout.dialect() == Dialect::D).then(|| "1".into());
        req
    }

    #[test]
    fn names_and_values_round_trip() {
        for e in EvalType::all() {
            assert_eq!(EvalType::from_value(e.value()), e);
            assert_eq!(e.name().unwrap().parse::<EvalType>().unwrap(), e);
        }
        assert_eq!(EvalType::from_value(9999), EvalType::Other(9999));
        assert_eq!(
            "sql_scalar_pandas_udf".parse(),
            Ok(EvalType::SqlScalarPandasUdf)
        );
        assert!("SQL_NOPE".parse::<EvalType>().is_err());
        assert!(!UdfLayout::Pyspark40.has(EvalType::SqlScalarArrowUdf));
        assert!(UdfLayout::Pyspark41.has(EvalType::SqlScalarArrowUdf));
        assert!(!UdfLayout::Pyspark41.has(EvalType::SqlGroupedAggArrowIterUdf));
    }

    /// PROTOCOL-UDF.md §8.2: `lambda x: x ** 2` as SQL_BATCHED_UDF, offset 0, no conf.
    #[test]
    fn batched_udf_bytes_before_the_pickle_match_the_probe() {
        let pickle = vec![0x80, 5, b'.'];
        let cases = [
            (Pyspark35, 94, "00000001 00000001 00000000 00000001"),
            (Pyspark40, 96, "00 00000001 00000001 00000000 00 00000001"),
            (Pyspark41, 88, "00 00000001 00000001 00000000 00 00000001"),
        ];
        for (layout, before, section) in cases {
            let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], pickle.clone())]);
            let req = request(layout, EvalType::SqlBatchedUdf, cmd);
            let bytes = layout.dialect().encode_request(&req).bytes;
            let at = bytes
                .windows(pickle.len())
                .position(|w| w == pickle)
                .unwrap();
            // The doc counts the command frame's length as "before the pickle".
            assert_eq!(at, before, "{layout}");
            let section = hex::decode(section.replace(' ', "")).unwrap();
            assert_eq!(
                &bytes[at - 4 - section.len()..at - 4],
                &section[..],
                "{layout}"
            );
        }
        // 4.2+: the result id follows the function.
        for layout in [Pyspark42, Pyspark43] {
            let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], pickle.clone())]);
            let req = request(layout, EvalType::SqlBatchedUdf, cmd);
            let bytes = layout.dialect().encode_request(&req).bytes;
            let at = bytes.windows(3).position(|w| w == pickle).unwrap() + 3;
            assert_eq!(&bytes[at..at + 8], &[0; 8], "{layout}");
        }
    }

    /// §8.3 / §8.5: the conf count comes first up to 4.1; 205 has no named flag on 4.0/4.1.
    #[test]
    fn arrow_kinds_carry_conf_and_named_flags_per_layout() {
        let pickle = vec![0x80, 5, b'.'];
        let section = |layout, eval| {
            let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], pickle.clone())]);
            let mut b = BytesMut::new();
            cmd.encode(eval, &[], &mut b, Limits::DEFAULT).unwrap();
            let at = b.windows(pickle.len()).position(|w| w == pickle).unwrap();
            hex::encode(&b[..at - 4])
        };
        let e200 = EvalType::SqlScalarPandasUdf;
        let e205 = EvalType::SqlMapPandasIterUdf;
        assert_eq!(
            section(Pyspark35, e200),
            "00000000000000010000000100000000".to_owned() + "00000001"
        );
        assert_eq!(
            section(Pyspark40, e200),
            "00000000".to_owned() + "00" + "00000001" + "00000001" + "0000000000" + "00000001"
        );
        assert_eq!(
            section(Pyspark40, e205),
            "00000000".to_owned() + "00" + "00000001" + "00000001" + "00000000" + "00000001"
        );
        assert_eq!(section(Pyspark41, e205), section(Pyspark40, e205));
        assert_eq!(
            section(Pyspark42, e205),
            "00000001".to_owned() + "00000001" + "0000000000" + "00000001"
        );
    }

    fn schema_json() -> impl Strategy<Value = String> {
        "[a-z{}:\" ,]{0,30}"
    }

    fn args() -> impl Strategy<Value = Vec<Arg>> {
        proptest::collection::vec(
            (any::<i32>(), proptest::option::of("[a-z_]{1,8}"))
                .prop_map(|(offset, name)| Arg { offset, name }),
            0..4,
        )
    }

    fn pickle() -> impl Strategy<Value = Vec<u8>> {
        proptest::collection::vec(any::<u8>(), 0..40)
    }

    /// A command with every field the layout sends for `eval`, and none it does not.
    fn command(layout: UdfLayout, eval: EvalType) -> impl Strategy<Value = UdfCommand> {
        let extras = (
            schema_json(),
            schema_json(),
            prop_oneof![
                any::<i32>().prop_map(StateServer::Port),
                "/[a-z]{1,9}".prop_map(StateServer::Path)
            ],
            schema_json(),
            proptest::collection::vec(any::<i32>(), 0..4),
        )
            .prop_map(move |(input, state, mut server, key, offsets)| {
                if let StateServer::Port(-1) = server {
                    server = StateServer::Port(0);
                }
                if let (StateServer::Path(_), false) = (&server, layout.state_server_may_be_path())
                {
                    server = StateServer::Port(7);
                }
                CommandExtras {
                    input_schema: layout.input_schema_in_command(eval).then_some(input),
                    state_value_schema: layout.state_schema_in_command(eval).then_some(state),
                    state_server: layout.state_server_in_command(eval).then_some(server),
                    grouping_key_schema: layout.state_server_in_command(eval).then_some(key),
                    table_arg_offsets: layout.table_offsets_in_command(eval).then_some(offsets),
                }
            });
        let udf = (
            args(),
            proptest::collection::vec(pickle(), 0..3),
            any::<i64>(),
        );
        let profiler = proptest::option::of(prop_oneof![
            Just(Profiler::Perf),
            Just(Profiler::Memory),
            "[a-z]{0,5}".prop_map(Profiler::from_wire),
        ]);
        let udfs = (profiler, proptest::collection::vec(udf, 0..3)).prop_map(move |(p, us)| {
            let p = p.filter(|_| layout.profiling_on_wire());
            let named = layout.named_args(eval);
            let udfs = us
                .into_iter()
                .map(|(mut args, funcs, rid)| {
                    if !named {
                        args.iter_mut().for_each(|a| a.name = None);
                    }
                    Udf {
                        args,
                        funcs: funcs
                            .into_iter()
                            .map(|pickle| ChainedFunc { pickle })
                            .collect(),
                        result_id: layout.result_id(p.as_ref()).then_some(rid),
                    }
                })
                .collect();
            UdfBody::Udfs { profiler: p, udfs }
        });
        let udtf = (
            args(),
            proptest::collection::vec(any::<i32>(), 0..3),
            proptest::option::of(pickle()),
            pickle(),
            schema_json(),
            "[a-z]{0,6}",
        )
            .prop_map(
                move |(mut args, parts, analyze, handler, return_type, name)| {
                    let extra = layout.udtf_extras();
                    if !extra {
                        args.iter_mut().for_each(|a| a.name = None);
                    }
                    UdfBody::Udtf(Udtf {
                        args,
                        partition_child_indexes: if extra { parts } else { vec![] },
                        analyze_result: analyze.filter(|_| extra),
                        handler,
                        return_type,
                        name: extra.then_some(name),
                    })
                },
            );
        let body = if eval.is_udtf() {
            udtf.boxed()
        } else {
            udfs.boxed()
        };
        (extras, body).prop_map(move |(extras, body)| UdfCommand {
            layout,
            extras,
            body,
        })
    }

    fn layout_and_eval() -> impl Strategy<Value = (UdfLayout, EvalType)> {
        let pairs: Vec<(UdfLayout, EvalType)> = UdfLayout::ALL
            .iter()
            .flat_map(|&l| {
                EvalType::all()
                    .filter(move |&e| e != EvalType::NonUdf && l.has(e))
                    .map(move |e| (l, e))
            })
            .collect();
        proptest::sample::select(pairs)
    }

    fn conf() -> impl Strategy<Value = Vec<(String, String)>> {
        proptest::collection::vec(("[a-z.]{1,12}", ".{0,8}"), 0..3)
    }

    proptest! {
        #[test]
        fn every_layout_and_eval_type_decodes_what_it_encodes(
            (layout, eval, cmd, conf) in layout_and_eval().prop_flat_map(|(l, e)| (Just(l), Just(e), command(l, e), conf()))
        ) {
            let mut req = request(layout, eval, cmd);
            // Up to 4.1 the pickled kinds have no conf on the wire at all.
            if layout.conf_in_command(eval) || layout >= Pyspark42 {
                req.runner_conf = conf;
            }
            let enc = layout.dialect().encode_request(&req);
            let (dec, err) = decode_requests_as(layout, &enc.bytes);
            prop_assert!(err.is_none(), "{err:?}");
            prop_assert_eq!(dec.len(), 1);
            prop_assert_eq!(&dec[0].request, &req);
        }

        #[test]
        fn decoding_mutated_udf_requests_never_panics(
            (layout, eval, cmd) in layout_and_eval().prop_flat_map(|(l, e)| (Just(l), Just(e), command(l, e))),
            idx in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>(),
        ) {
            let mut bytes = layout.dialect().encode_request(&request(layout, eval, cmd)).bytes;
            let i = idx.index(bytes.len());
            bytes[i] = byte;
            let c = cut.index(bytes.len() + 1);
            for l in UdfLayout::ALL {
                let _ = decode_requests_as(l, &bytes[..c]);
            }
        }
    }
}
