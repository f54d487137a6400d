//! The UDF task form of a scenario (`"udf": {...}` instead of `"function"`): an eval type by
//! name, its functions with Spark DDL return types, and the input as a schema plus rows (or
//! groups, or cogroups), turned into the request a Spark JVM would send for it, and the reply
//! turned back into rows. Documented in scenarios/README.md, "UDF tasks".
//!
//! The request is built from what a user writes, the way the JVM builds it from a query plan:
//! - the input columns take the shape the eval type's JVM operator gives them (PROTOCOL-UDF.md
//!   §4.3): `_0, _1, ...` for the scalar, agg and window kinds; the schema's own names for
//!   grouped map and cogroups; one struct column `struct` for mapInPandas/mapInArrow and grouped
//!   map Arrow;
//! - argument offsets default to what the JVM sends for a UDF over all input columns, including
//!   the `[n, k, keys.., values..]` block of the grouped map kinds (§3.8);
//! - the runner conf starts from the JVM's defaults (§6);
//! - the data section is framed as the worker's line reads it (§4.2), unless `framing_of` asks
//!   for another line's framing on purpose.

use crate::arrow::{self, Group};
use crate::pickle::{self, pyrolite, Value};
use crate::protocol::{
    Arg, ChainedFunc, DataItem, EvalType, InputFraming, ReplyItem, TaskRequest, Udf, UdfBody,
    UdfCommand, UdfLayout, Udtf,
};
use crate::pyenv::UdfFunctionSpec;
use crate::sqltype::SqlType;
use arrow_array::{ArrayRef, RecordBatch};
use serde::{Deserialize, Serialize};
use serde_json::Value as J;
use std::collections::BTreeMap;

/// The JVM's `spark.sql.execution.arrow.maxRecordsPerBatch` default.
pub const DEFAULT_MAX_RECORDS_PER_BATCH: i64 = 10_000;
/// The session time zone a UDF task runs under unless its conf says otherwise. A JVM sends its
/// own default zone; a test pins one so that runs on any machine agree.
pub const DEFAULT_TIME_ZONE: &str = "UTC";
const TIME_ZONE_KEY: &str = "spark.sql.session.timeZone";

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdfTask {
    /// pyspark's PythonEvalType name, e.g. "SQL_SCALAR_PANDAS_UDF" (or its number).
    pub eval_type: EvalTypeName,
    /// The UDFs of read_udfs kinds, each with its own arguments (one for most queries).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub udfs: Vec<UdfSpec>,
    /// The handler of the UDTF kinds (300-302), instead of `udfs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub udtf: Option<UdtfSpec>,
    /// Runner conf entries on top of the JVM's defaults (time zone, assign columns by name,
    /// safe conversion, window bounds).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub conf: BTreeMap<String, String>,
    pub input: UdfInput,
    /// Frame the data section as this pyspark line's worker reads it ("4.0") instead of the
    /// target's: the framing changes of 4.1 sent to the wrong side on purpose.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub framing_of: Option<LineName>,
}

/// An eval type given by name; the names are pyspark's (`PythonEvalType`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EvalTypeName(pub EvalType);

impl TryFrom<String> for EvalTypeName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        match s.parse::<EvalType>()? {
            EvalType::NonUdf => {
                Err("NON_UDF (0) is an RDD task: give `function` instead of `udf`".into())
            }
            EvalType::Other(v) => Err(format!("{v} is no eval type pyspark 3.5-4.3 has")),
            e => Ok(EvalTypeName(e)),
        }
    }
}

impl From<EvalTypeName> for String {
    fn from(e: EvalTypeName) -> String {
        e.0.name().unwrap_or_default().to_owned()
    }
}

/// The runner conf of an Arrow UDF task as a Spark JVM of each line sends it, in its order
/// (`ArrowPythonRunner.getPythonRunnerConfMap` and successors; recorded from real JVMs:
/// golden/pyspark-*/udf_pandas_tokenizer). The session zone is pinned to UTC here, where a JVM
/// sends its own. `maxRecordsPerBatch` is not among them: the JVM cuts the batches itself.
fn jvm_default_conf(layout: UdfLayout) -> Vec<(&'static str, &'static str)> {
    const SAFELY: &str = "spark.sql.execution.pandas.convertToArrowArraySafely";
    const BY_NAME: &str = "spark.sql.legacy.execution.pandas.groupedMap.assignColumnsByName";
    const LARGE_VAR: &str = "spark.sql.execution.arrow.useLargeVarTypes";
    let mut conf = match layout {
        UdfLayout::Pyspark35 | UdfLayout::Pyspark40 => vec![
            (TIME_ZONE_KEY, DEFAULT_TIME_ZONE),
            (BY_NAME, "true"),
            (SAFELY, "false"),
        ],
        // 4.1 turned safe conversion on by default.
        _ => vec![
            (
                "spark.sql.legacy.execution.pythonUDTF.pandas.conversion.enabled",
                "false",
            ),
            (TIME_ZONE_KEY, DEFAULT_TIME_ZONE),
            ("spark.sql.execution.pyspark.binaryAsBytes", "true"),
            (
                "spark.sql.execution.pythonUDF.pandas.intToDecimalCoercionEnabled",
                "false",
            ),
            (SAFELY, "true"),
            (BY_NAME, "true"),
            (LARGE_VAR, "false"),
            (
                "spark.sql.legacy.execution.pythonUDF.pandas.conversion.enabled",
                "false",
            ),
        ],
    };
    if layout == UdfLayout::Pyspark40 {
        conf.push((LARGE_VAR, "false"));
    }
    if layout >= UdfLayout::Pyspark42 {
        conf.push((
            "spark.sql.execution.pythonUDF.pandas.preferIntExtensionDtype",
            "false",
        ));
    }
    if layout >= UdfLayout::Pyspark43 {
        conf.push((
            "spark.sql.execution.pythonUDF.mapInBatch.legacy.acceptAnyIterable.enabled",
            "true",
        ));
    }
    conf
}

/// A pyspark minor line, "3.5" to "4.3".
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct LineName(pub UdfLayout);

impl TryFrom<String> for LineName {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        UdfLayout::ALL
            .into_iter()
            .find(|l| l.version() == s.trim())
            .map(LineName)
            .ok_or_else(|| format!("{s:?} is not a pyspark line fakejvm speaks UDFs for: one of 3.5, 4.0, 4.1, 4.2, 4.3"))
    }
}

impl From<LineName> for String {
    fn from(l: LineName) -> String {
        l.0.version().to_owned()
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdfSpec {
    /// Python source that binds `func` to the user function.
    pub function: String,
    /// Spark DDL: `double`, `array<string>`, `struct<id:bigint,mean:double>`.
    pub return_type: String,
    /// Offsets into the input columns, each a number or `{"offset": 1, "name": "x"}` (a keyword
    /// argument, 4.0+). Default: every input column, in the shape the eval type sends them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ArgSpec>>,
    /// Functions applied after `function`, first to last (`udf(udf(x))`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub chain: Vec<ChainSpec>,
    /// Window UDFs (203, 253): the frame kind. Bounded UDFs take two leading offsets, the
    /// begin and end index columns.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub window: Option<WindowBound>,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ArgSpec {
    Offset(i32),
    Named { offset: i32, name: String },
}

impl ArgSpec {
    fn arg(&self) -> Arg {
        match self {
            ArgSpec::Offset(o) => Arg::positional(*o),
            ArgSpec::Named { offset, name } => Arg {
                offset: *offset,
                name: Some(name.clone()),
            },
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainSpec {
    pub function: String,
    pub return_type: String,
}

#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WindowBound {
    Bounded,
    Unbounded,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdtfSpec {
    /// Python source that binds `func` to the UDTF class (with `eval`, maybe `terminate`).
    pub handler: String,
    /// The output row type, a struct in DDL: `struct<a:double,b:double>` or `a double, b double`.
    pub return_type: String,
    /// The UDTF's name (4.0+ send it).
    #[serde(default = "default_udtf_name")]
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Vec<ArgSpec>>,
}

fn default_udtf_name() -> String {
    "udtf".into()
}

/// The task's input: the columns the JVM feeds the UDF (the child plan's output, or the UDF's
/// argument expressions), as a DDL schema and JSON rows.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct UdfInput {
    /// `id bigint, v double`.
    pub schema: String,
    /// The rows of an ungrouped kind, each a list with one value per column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Vec<J>>>,
    /// The grouped kinds: the rows of each group, in the order the JVM sends the groups.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Vec<Vec<J>>>>,
    /// The cogrouped kinds: per group, the left and the right side's rows.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cogroups: Option<Vec<CoGroup>>,
    /// The right side's schema of a cogroup (default: `schema`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub right_schema: Option<String>,
    /// The grouping key columns (indexes into the schema) of grouped map and cogroup kinds, for
    /// the default argument offsets. Default: column 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub keys: Option<Vec<usize>>,
    /// `spark.sql.execution.arrow.maxRecordsPerBatch`: the JVM cuts the input into batches of at
    /// most this many rows (10000; 0 or less: no limit). Also sent in the runner conf.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_records_per_batch: Option<i64>,
    /// `rows` sent this many times over (large inputs without a large file; default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub times: Option<usize>,
}

/// How much of the input to spell out: all of it for the request, or one copy of every row and
/// generated cell when the file is only being checked.
#[derive(Clone, Copy, PartialEq)]
enum Build {
    Check,
    Full,
}

/// A generated string cell `{"$repeat": "x", "times": N}` is at most this long.
const MAX_REPEAT_BYTES: usize = 1 << 30;
/// All generated cells of an input, `times` included: a typo past this is no test.
const MAX_INPUT_BYTES: usize = 4 << 30;

/// `rows` as the request holds them: repeated `times` over, generated cells spelled out.
fn spelled(at: &str, rows: &[Vec<J>], times: usize, build: Build) -> Result<Vec<Vec<J>>, String> {
    let times = if build == Build::Full { times } else { 1 };
    let mut once = Vec::with_capacity(rows.len());
    for (i, row) in rows.iter().enumerate() {
        let mut cells = Vec::with_capacity(row.len());
        for (c, v) in row.iter().enumerate() {
            cells.push(match v.get("$repeat") {
                Some(text) => {
                    let bad = || format!("{at}[{i}][{c}]: a generated cell is {{\"$repeat\": \"text\", \"times\": N}}");
                    let text = text.as_str().ok_or_else(bad)?;
                    let n = v.get("times").and_then(J::as_u64).ok_or_else(bad)? as usize;
                    if v.as_object().is_some_and(|o| o.len() != 2) {
                        return Err(bad());
                    }
                    if text.len().saturating_mul(n) > MAX_REPEAT_BYTES {
                        return Err(format!("{at}[{i}][{c}]: {n} x {} bytes is over {MAX_REPEAT_BYTES} bytes", text.len()));
                    }
                    J::String(text.repeat(if build == Build::Full { n } else { n.min(1) }))
                }
                None => v.clone(),
            });
        }
        once.push(cells);
    }
    let mut out = Vec::with_capacity(once.len() * times);
    for _ in 1..times {
        out.extend(once.iter().cloned());
    }
    out.extend(once);
    Ok(out)
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoGroup {
    pub left: Vec<Vec<J>>,
    pub right: Vec<Vec<J>>,
}

/// How the JVM lays out the input columns of an eval type (PROTOCOL-UDF.md §4.3).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Shape {
    /// Pickled row tuples (100, 300).
    Pickled,
    /// Arrow columns `_0`, `_1`, ...
    Positional,
    /// Arrow columns under the schema's names.
    Named,
    /// One Arrow struct column `struct` holding the schema's columns.
    Wrapped,
}

fn shape(eval: EvalType) -> Shape {
    use EvalType as E;
    match eval {
        E::SqlBatchedUdf | E::SqlTableUdf => Shape::Pickled,
        E::SqlMapPandasIterUdf
        | E::SqlMapArrowIterUdf
        | E::SqlGroupedMapArrowUdf
        | E::SqlGroupedMapArrowIterUdf => Shape::Wrapped,
        E::SqlGroupedMapPandasUdf
        | E::SqlGroupedMapPandasIterUdf
        | E::SqlCogroupedMapPandasUdf
        | E::SqlCogroupedMapArrowUdf => Shape::Named,
        _ => Shape::Positional,
    }
}

/// Grouped map kinds pass `[n, k, keys.., values..]` blocks, not plain column offsets.
fn takes_key_block(eval: EvalType) -> bool {
    use EvalType as E;
    matches!(
        eval,
        E::SqlGroupedMapPandasUdf
            | E::SqlGroupedMapPandasIterUdf
            | E::SqlGroupedMapArrowUdf
            | E::SqlGroupedMapArrowIterUdf
            | E::SqlCogroupedMapPandasUdf
            | E::SqlCogroupedMapArrowUdf
    )
}

fn is_window(eval: EvalType) -> bool {
    matches!(
        eval,
        EvalType::SqlWindowAggPandasUdf | EvalType::SqlWindowAggArrowUdf
    )
}

/// A parsed schema: its columns' names and types.
struct Columns(Vec<(String, SqlType)>);

impl Columns {
    fn parse(at: &str, text: &str) -> Result<Columns, String> {
        match SqlType::parse(text).map_err(|e| format!("{at}: {e}"))? {
            SqlType::Struct(fields) if !fields.is_empty() => Ok(Columns(fields)),
            other => Err(format!(
                "{at}: {other} is one type, not a schema: write columns as `name type, ...`"
            )),
        }
    }
}

impl UdfTask {
    pub fn eval(&self) -> EvalType {
        self.eval_type.0
    }

    /// The functions the target pyspark pickles for this task, in order: each UDF's function then
    /// its chain, or the UDTF's class.
    pub fn function_specs(&self) -> Vec<UdfFunctionSpec> {
        if let Some(t) = &self.udtf {
            return vec![UdfFunctionSpec {
                function: t.handler.clone(),
                return_type: ddl_json(&t.return_type),
                udtf: true,
            }];
        }
        self.udfs
            .iter()
            .flat_map(|u| {
                std::iter::once((&u.function, &u.return_type))
                    .chain(u.chain.iter().map(|c| (&c.function, &c.return_type)))
            })
            .map(|(f, t)| UdfFunctionSpec {
                function: f.clone(),
                return_type: ddl_json(t),
                udtf: false,
            })
            .collect()
    }

    /// Every field, without a pyspark version; `at` is the task's `udf` path.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        let eval = self.eval();
        if eval.is_stateful() {
            return Err(format!("{at}.eval_type: {eval} keeps state through the JVM (a state info column or a state server), which fakejvm does not play: it decodes such requests but cannot run them"));
        }
        match (&self.udtf, eval.is_udtf()) {
            (None, true) => {
                return Err(format!(
                    "{at}.udtf: {eval} runs a UDTF: give `udtf` (handler, return_type)"
                ))
            }
            (Some(_), false) => {
                return Err(format!(
                    "{at}.udtf: {eval} is no UDTF kind: give `udfs` instead"
                ))
            }
            (Some(_), true) if !self.udfs.is_empty() => {
                return Err(format!(
                    "{at}.udfs: a UDTF task has one `udtf` and no `udfs`"
                ))
            }
            (None, false) if self.udfs.is_empty() => {
                return Err(format!(
                    "{at}.udfs: empty: give at least one UDF (function, return_type)"
                ))
            }
            _ => {}
        }
        for (i, u) in self.udfs.iter().enumerate() {
            let here = format!("{at}.udfs[{i}]");
            check_source(&format!("{here}.function"), &u.function)?;
            SqlType::parse(&u.return_type).map_err(|e| format!("{here}.return_type: {e}"))?;
            for (j, c) in u.chain.iter().enumerate() {
                check_source(&format!("{here}.chain[{j}].function"), &c.function)?;
                SqlType::parse(&c.return_type)
                    .map_err(|e| format!("{here}.chain[{j}].return_type: {e}"))?;
            }
            match (is_window(eval), u.window) {
                (true, None) => {
                    return Err(format!(
                        "{here}.window: a window UDF needs \"bounded\" or \"unbounded\""
                    ))
                }
                (false, Some(_)) => {
                    return Err(format!("{here}.window: only for window UDFs (203, 253)"))
                }
                _ => {}
            }
            if u.window == Some(WindowBound::Bounded) && u.args.is_none() {
                return Err(format!("{here}.args: a bounded window UDF takes the begin and end index columns first: give them, e.g. [1, 2, 0]"));
            }
            let struct_out = matches!(SqlType::parse(&u.return_type), Ok(SqlType::Struct(_)));
            if (takes_key_block(eval) || shape(eval) == Shape::Wrapped) && !struct_out {
                return Err(format!("{here}.return_type: {eval} returns rows: give a struct, e.g. `struct<id:bigint,v:double>` or `id bigint, v double`"));
            }
        }
        if let Some(t) = &self.udtf {
            check_source(&format!("{at}.udtf.handler"), &t.handler)?;
            Columns::parse(&format!("{at}.udtf.return_type"), &t.return_type)?;
        }
        let input = &self.input;
        let here = format!("{at}.input");
        let grouped = eval.is_grouped();
        let cogrouped = eval.is_cogrouped();
        let given = [
            ("rows", input.rows.is_some(), !grouped && !cogrouped),
            ("groups", input.groups.is_some(), grouped),
            ("cogroups", input.cogroups.is_some(), cogrouped),
        ];
        for (name, present, wanted) in given {
            if present && !wanted {
                let what = given.iter().find(|g| g.2).map_or("", |g| g.0);
                return Err(format!(
                    "{here}.{name}: {eval} takes `{what}`, not `{name}`"
                ));
            }
            if !present && wanted {
                return Err(format!("{here}.{name}: {eval} needs `{name}`"));
            }
        }
        if input.right_schema.is_some() && !cogrouped {
            return Err(format!("{here}.right_schema: only for cogrouped kinds"));
        }
        if input.keys.is_some() && !takes_key_block(eval) {
            return Err(format!(
                "{here}.keys: only for grouped map and cogroup kinds (their offsets name the keys)"
            ));
        }
        if self.udfs.iter().any(|u| u.args.is_some()) && input.keys.is_some() {
            return Err(format!(
                "{here}.keys: give either `keys` or the UDF's own `args`, not both"
            ));
        }
        if input.times.is_some() && input.rows.is_none() {
            return Err(format!(
                "{here}.times: repeats `rows`: only for ungrouped kinds"
            ));
        }
        let generated: usize = input
            .rows
            .iter()
            .flatten()
            .flatten()
            .filter_map(|v| {
                let text = v.get("$repeat")?.as_str()?.len();
                Some(text.saturating_mul(v.get("times")?.as_u64()? as usize))
            })
            .fold(0usize, usize::saturating_add);
        if generated.saturating_mul(input.times.unwrap_or(1)) > MAX_INPUT_BYTES {
            return Err(format!(
                "{here}: the generated input is over {MAX_INPUT_BYTES} bytes"
            ));
        }
        if input.max_records_per_batch == Some(0) {
            return Err(format!(
                "{here}.max_records_per_batch: 0: give a positive limit, or -1 for none"
            ));
        }
        // Build the data section for the newest line the eval type exists in: that checks every
        // row against the schema with the same code that builds the real one.
        self.data_section(UdfLayout::Pyspark43, &here, Build::Check)?;
        self.offsets_check(at)?;
        Ok(())
    }

    /// Every argument offset points at an input column.
    fn offsets_check(&self, at: &str) -> Result<(), String> {
        let eval = self.eval();
        if takes_key_block(eval) {
            return Ok(());
        }
        let n = self.columns(&format!("{at}.input.schema"))?.0.len() as i32;
        let n = if shape(eval) == Shape::Wrapped { 1 } else { n };
        let lists = self
            .udfs
            .iter()
            .enumerate()
            .filter_map(|(i, u)| u.args.as_ref().map(|a| (format!("{at}.udfs[{i}].args"), a)))
            .chain(
                self.udtf
                    .iter()
                    .filter_map(|t| t.args.as_ref().map(|a| (format!("{at}.udtf.args"), a))),
            );
        for (here, args) in lists {
            for (j, a) in args.iter().enumerate() {
                let o = a.arg().offset;
                if o < 0 || o >= n {
                    return Err(format!(
                        "{here}[{j}]: offset {o} is not an input column (0..{n})"
                    ));
                }
            }
        }
        Ok(())
    }

    fn columns(&self, at: &str) -> Result<Columns, String> {
        Columns::parse(at, &self.input.schema)
    }

    fn time_zone(&self) -> &str {
        self.conf
            .get(TIME_ZONE_KEY)
            .map_or(DEFAULT_TIME_ZONE, String::as_str)
    }

    fn max_records(&self) -> i64 {
        self.input
            .max_records_per_batch
            .unwrap_or(DEFAULT_MAX_RECORDS_PER_BATCH)
    }

    /// What a version must have to run this task; the problem when it does not, naming the field.
    /// `None` when `layout` runs it.
    pub fn unsupported_on(&self, layout: UdfLayout, at: &str) -> Option<String> {
        let eval = self.eval();
        if !layout.has(eval) {
            let since = eval.since().map_or("?", |l| l.version());
            return Some(format!("{at}.eval_type: {eval} exists from pyspark {since}, not in {layout}: add \"requires\": \">={since}\" to the scenario"));
        }
        let named = self
            .udfs
            .iter()
            .flat_map(|u| u.args.iter().flatten())
            .chain(self.udtf.iter().flat_map(|t| t.args.iter().flatten()))
            .any(|a| matches!(a, ArgSpec::Named { .. }));
        let names_on_wire = if eval.is_udtf() {
            layout.udtf_extras()
        } else {
            layout.named_args(eval)
        };
        if named && !names_on_wire {
            return Some(format!("{at}: keyword arguments of {eval} are not on the wire in {layout}: restrict the scenario with \"requires\""));
        }
        None
    }

    /// The request for `layout`'s worker; `pickles` are what [`Self::function_specs`] built, in
    /// order. Context, files and broadcasts are the caller's.
    pub fn request(
        &self,
        layout: UdfLayout,
        python_version: &str,
        pickles: Vec<Vec<u8>>,
    ) -> Result<TaskRequest, String> {
        let eval = self.eval();
        let columns = self.columns("input.schema")?;
        let mut pickles = pickles.into_iter();
        let mut cmd = if let Some(t) = &self.udtf {
            let n = columns.0.len() as i32;
            UdfCommand {
                layout,
                extras: Default::default(),
                body: UdfBody::Udtf(Udtf {
                    args: args_or(&t.args, || (0..n).map(Arg::positional).collect()),
                    partition_child_indexes: vec![],
                    analyze_result: None,
                    handler: pickles.next().ok_or("no pickle for the UDTF")?,
                    return_type: ddl_json(&t.return_type),
                    name: layout.udtf_extras().then(|| t.name.clone()),
                }),
            }
        } else {
            let mut udfs = vec![];
            for u in &self.udfs {
                let funcs = (0..1 + u.chain.len())
                    .map(|_| pickles.next().map(|pickle| ChainedFunc { pickle }))
                    .collect::<Option<Vec<_>>>()
                    .ok_or("fewer pickles than functions")?;
                udfs.push(Udf {
                    args: args_or(&u.args, || self.default_args(&columns)),
                    funcs,
                    result_id: None,
                });
            }
            UdfCommand::udfs(layout, udfs)
        };
        // The JVM names its input for 101 (and 301 on 4.1) in the command or the EvalConf.
        if matches!(
            eval,
            EvalType::SqlArrowBatchedUdf | EvalType::SqlArrowTableUdf
        ) {
            let positional = SqlType::Struct(
                columns
                    .0
                    .iter()
                    .enumerate()
                    .map(|(i, (_, t))| (format!("_{i}"), t.clone()))
                    .collect(),
            );
            cmd.extras.input_schema = Some(positional.to_json().to_string());
        }
        if eval == EvalType::SqlArrowUdtf {
            cmd.extras.table_arg_offsets = Some(vec![]);
        }
        let mut req = cmd.place(python_version, eval, self.runner_conf(layout));
        req.data = self.data_section(
            self.framing_of.map_or(layout, |l| l.0),
            "input",
            Build::Full,
        )?;
        // Pickled kinds end their rows with -1; Arrow streams end themselves.
        req.end_of_data = eval.is_pickled();
        Ok(req)
    }

    /// The runner conf a real JVM of `layout`'s line sends (recorded in golden/pyspark-*/udf_*:
    /// none for the pickled kinds), the window bounds, then `conf` (which overrides in place).
    fn runner_conf(&self, layout: UdfLayout) -> Vec<(String, String)> {
        let mut conf: Vec<(String, String)> = if self.eval().is_pickled() {
            vec![]
        } else {
            jvm_default_conf(layout)
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let mut set = |k: &str, v: String| match conf.iter_mut().find(|(key, _)| key == k) {
            Some(entry) => entry.1 = v,
            None => conf.push((k.to_string(), v)),
        };
        if is_window(self.eval()) {
            let bounds: Vec<&str> = self
                .udfs
                .iter()
                .map(|u| match u.window {
                    Some(WindowBound::Bounded) => "bounded",
                    _ => "unbounded",
                })
                .collect();
            set(layout.window_bound_key(), bounds.join(","));
        }
        for (k, v) in &self.conf {
            set(k, v.clone());
        }
        conf
    }

    /// What the JVM sends for a UDF over every input column.
    fn default_args(&self, columns: &Columns) -> Vec<Arg> {
        let eval = self.eval();
        let m = columns.0.len() as i32;
        if takes_key_block(eval) {
            let keys: Vec<i32> = self
                .input
                .keys
                .clone()
                .unwrap_or_else(|| vec![0])
                .iter()
                .map(|&k| k as i32)
                .collect();
            let block = |m: i32| {
                let k = keys.len() as i32;
                let mut b = vec![1 + k + m, k];
                b.extend(&keys);
                b.extend(0..m);
                b
            };
            let mut offsets = block(m);
            if eval.is_cogrouped() {
                let right = self
                    .input
                    .right_schema
                    .as_deref()
                    .and_then(|s| Columns::parse("", s).ok())
                    .map_or(m, |c| c.0.len() as i32);
                offsets.extend(block(right));
            }
            return offsets.into_iter().map(Arg::positional).collect();
        }
        if shape(eval) == Shape::Wrapped {
            return vec![Arg::positional(0)];
        }
        (0..m).map(Arg::positional).collect()
    }

    /// The data section as `layout`'s worker reads it; problems name the field under `at`.
    fn data_section(
        &self,
        layout: UdfLayout,
        at: &str,
        build: Build,
    ) -> Result<Vec<DataItem>, String> {
        let eval = self.eval();
        let columns = self.columns(&format!("{at}.schema"))?;
        let input = &self.input;
        let times = input.times.unwrap_or(1);
        let rows = spelled(
            &format!("{at}.rows"),
            input.rows.as_deref().unwrap_or_default(),
            times,
            build,
        )?;
        if shape(eval) == Shape::Pickled {
            let mut values = vec![];
            for (i, row) in rows.iter().enumerate() {
                let here = format!("{at}.rows[{i}]");
                check_width(&here, row, &columns)?;
                let cells = row
                    .iter()
                    .zip(&columns.0)
                    .map(|(v, (name, t))| {
                        pickled_cell(t, v).map_err(|e| format!("{here}: column {name}: {e}"))
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                values.push(Value::Tuple(cells));
            }
            return Ok(pyrolite::row_frames(&values)
                .into_iter()
                .map(DataItem::Frame)
                .collect());
        }
        let tz = self.time_zone();
        let framing = layout.input_framing(eval);
        let max = self.max_records();
        let batch = |here: &str, rows: &[Vec<J>], cols: &Columns| -> Result<RecordBatch, String> {
            arrow_batch(here, rows, cols, shape(eval), tz)
        };
        let split = |b: RecordBatch| match framing {
            // Up to 4.0 every batch is a group: a group is never split.
            InputFraming::BatchPerGroup => vec![b],
            _ => arrow::split_batch(&b, max),
        };
        let (groups, right_cols) = if let Some(cogroups) = &input.cogroups {
            let right = match &input.right_schema {
                Some(s) => Columns::parse(&format!("{at}.right_schema"), s)?,
                None => self.columns(&format!("{at}.schema"))?,
            };
            let mut groups = vec![];
            for (i, g) in cogroups.iter().enumerate() {
                groups.push(Group {
                    left: vec![batch(
                        &format!("{at}.cogroups[{i}].left"),
                        &g.left,
                        &columns,
                    )?],
                    right: vec![batch(
                        &format!("{at}.cogroups[{i}].right"),
                        &g.right,
                        &right,
                    )?],
                });
            }
            (groups, Some(right))
        } else if let Some(gs) = &input.groups {
            let mut groups = vec![];
            for (i, rows) in gs.iter().enumerate() {
                let here = format!("{at}.groups[{i}]");
                let rows = spelled(&here, rows, 1, build)?;
                groups.push(Group::of(split(batch(&here, &rows, &columns)?)));
            }
            (groups, None)
        } else {
            let b = batch(&format!("{at}.rows"), &rows, &columns)?;
            (vec![Group::of(arrow::split_batch(&b, max))], None)
        };
        // An empty group list still needs the stream's schema: build it from no rows.
        let schema = batch(at, &[], &columns)?.schema();
        let right_schema = match &right_cols {
            Some(c) => Some(batch(at, &[], c)?.schema()),
            None => None,
        };
        arrow::data_section(framing, &schema, right_schema.as_deref(), &groups)
            .map_err(|e| format!("{at}: {e}"))
    }
}

fn args_or(given: &Option<Vec<ArgSpec>>, default: impl FnOnce() -> Vec<Arg>) -> Vec<Arg> {
    match given {
        Some(a) => a.iter().map(ArgSpec::arg).collect(),
        None => default(),
    }
}

/// DDL as Spark's JSON form; validation has parsed it already.
fn ddl_json(ddl: &str) -> String {
    SqlType::parse(ddl)
        .map(|t| t.to_json().to_string())
        .unwrap_or_default()
}

fn check_source(at: &str, src: &str) -> Result<(), String> {
    if src.trim().is_empty() {
        Err(format!("{at}: empty: give Python source that binds `func`"))
    } else {
        Ok(())
    }
}

fn check_width(at: &str, row: &[J], columns: &Columns) -> Result<(), String> {
    if row.len() == columns.0.len() {
        Ok(())
    } else {
        Err(format!(
            "{at}: {} values, but the schema has {} columns",
            row.len(),
            columns.0.len()
        ))
    }
}

/// One Arrow batch of `rows` in the eval type's column shape.
fn arrow_batch(
    at: &str,
    rows: &[Vec<J>],
    columns: &Columns,
    shape: Shape,
    tz: &str,
) -> Result<RecordBatch, String> {
    for (i, row) in rows.iter().enumerate() {
        check_width(&format!("{at}[{i}]"), row, columns)?;
    }
    let mut arrays: Vec<(&str, ArrayRef)> = vec![];
    for (c, (name, t)) in columns.0.iter().enumerate() {
        let values: Vec<J> = rows.iter().map(|r| r[c].clone()).collect();
        let a = arrow::array_from_json(&t.to_arrow(tz), &values)
            .map_err(|e| format!("{at}: column {name} ({t}): {e}"))?;
        arrays.push((name, a));
    }
    let b = match shape {
        Shape::Positional => arrow::positional_batch(arrays.into_iter().map(|(_, a)| a).collect()),
        Shape::Named => arrow::named_batch(arrays),
        Shape::Wrapped => arrow::struct_batch(arrays),
        Shape::Pickled => unreachable!("pickled kinds have no Arrow input"),
    };
    b.map_err(|e| format!("{at}: {e}"))
}

/// A cell of a pickled row as `EvaluatePython.toJava` hands it to Pyrolite.
fn pickled_cell(t: &SqlType, v: &J) -> Result<Value, String> {
    let bad = || format!("{v} is not a {t} value");
    if v.is_null() {
        return Ok(Value::None);
    }
    Ok(match t {
        SqlType::Boolean => Value::Bool(v.as_bool().ok_or_else(bad)?),
        SqlType::Byte | SqlType::Short | SqlType::Int | SqlType::Long => {
            Value::Int(v.as_i64().ok_or_else(bad)?)
        }
        SqlType::Float | SqlType::Double => Value::Float(v.as_f64().ok_or_else(bad)?),
        SqlType::String => Value::Str(v.as_str().ok_or_else(bad)?.to_owned()),
        SqlType::Binary => {
            let h = v.get("$bytes").and_then(J::as_str).ok_or_else(bad)?;
            Value::ByteArray(hex::decode(h).map_err(|_| bad())?)
        }
        SqlType::Array(e) => Value::List(
            v.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|x| pickled_cell(e, x))
                .collect::<Result<_, _>>()?,
        ),
        // A list of [key, value] pairs, as Arrow map columns are written and read.
        SqlType::Map(k, val) => Value::Dict(
            v.as_array()
                .ok_or_else(bad)?
                .iter()
                .map(|pair| match pair.as_array().map(Vec::as_slice) {
                    Some([key, x]) => Ok((pickled_cell(k, key)?, pickled_cell(val, x)?)),
                    _ => Err(format!("{pair} is not a [key, value] pair")),
                })
                .collect::<Result<_, String>>()?,
        ),
        // Pyrolite pickles these through pyspark's own reducers (Row, datetime, Decimal), whose
        // bytes no run has checked yet (PROTOCOL-UDF.md §4.1).
        other => {
            return Err(format!(
                "{other} columns of pickled kinds (100, 300) are not built yet: use an Arrow kind"
            ))
        }
    })
}

/// The reply's output as rows: pickled results (100, 300), or every Arrow stream's rows, with
/// the schema of the Arrow streams (`_0: double`).
pub struct ReplyRows {
    pub rows: Vec<J>,
    pub schema: Option<String>,
}

impl UdfTask {
    pub fn reply_rows(&self, data: &[ReplyItem]) -> Result<ReplyRows, String> {
        let eval = self.eval();
        let mut rows = vec![];
        if eval.is_pickled() {
            for item in data {
                let ReplyItem::Frame(b) = item else {
                    return Err(format!("{item:?} in the reply of a pickled kind"));
                };
                let Value::List(values) = pickle::loads(b).map_err(|e| e.to_string())? else {
                    return Err("a reply frame that is not a pickled list".into());
                };
                for v in values {
                    match (eval, v) {
                        // 300: per input row, the tuple of its output row tuples.
                        (EvalType::SqlTableUdf, Value::Tuple(out)) => {
                            for row in out {
                                rows.push(row_json(row));
                            }
                        }
                        // 100 with several UDFs: one tuple per row.
                        (_, v @ Value::Tuple(_)) if self.udfs.len() > 1 => rows.push(row_json(v)),
                        (_, v) => rows.push(J::Array(vec![pickle::value_to_json(&v)])),
                    }
                }
            }
            return Ok(ReplyRows { rows, schema: None });
        }
        let mut schema = None;
        for item in data {
            let ReplyItem::ArrowStream(b) = item else {
                return Err(format!("{item:?} in the reply of an Arrow kind"));
            };
            let t = arrow::decode_stream(b).map_err(|e| e.to_string())?;
            let line = t.schema_line();
            match &schema {
                Some(s) if s != &line => {
                    return Err(format!(
                        "reply streams disagree on their schema: {s} / {line}"
                    ))
                }
                _ => schema = Some(line),
            }
            rows.extend(t.rows());
        }
        Ok(ReplyRows { rows, schema })
    }
}

fn row_json(v: Value) -> J {
    match v {
        Value::Tuple(items) | Value::List(items) => {
            J::Array(items.iter().map(pickle::value_to_json).collect())
        }
        other => J::Array(vec![pickle::value_to_json(&other)]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn task(json: &str) -> Result<UdfTask, String> {
        let t: UdfTask = serde_json::from_str(json).map_err(|e| e.to_string())?;
        t.validate("udf")?;
        Ok(t)
    }

    #[test]
    fn grouped_map_offsets_are_the_key_block() {
        let t = task(
            r#"{"eval_type":"SQL_GROUPED_MAP_PANDAS_UDF",
            "udfs":[{"function":"func = lambda pdf: pdf","return_type":"k bigint, v double"}],
            "input":{"schema":"k bigint, v double","groups":[[[1,1.0]],[[2,2.0]]]}}"#,
        )
        .unwrap();
        let c = t.columns("s").unwrap();
        let offsets: Vec<i32> = t.default_args(&c).iter().map(|a| a.offset).collect();
        assert_eq!(offsets, [4, 1, 0, 0, 1]);
    }

    #[test]
    fn bad_fields_name_their_path() {
        let e = task(r#"{"eval_type":"SQL_NOPE","udfs":[],"input":{"schema":"v double"}}"#)
            .unwrap_err();
        assert!(e.contains("unknown eval type"), "{e}");
        let e = task(
            r#"{"eval_type":"SQL_GROUPED_AGG_PANDAS_UDF",
            "udfs":[{"function":"func = lambda v: v.mean()","return_type":"double"}],
            "input":{"schema":"v double","rows":[[1.0]]}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("udf.input.rows: "), "{e}");
        let e = task(
            r#"{"eval_type":"SQL_SCALAR_PANDAS_UDF",
            "udfs":[{"function":"func = lambda v: v","return_type":"dubble"}],
            "input":{"schema":"v double","rows":[]}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("udf.udfs[0].return_type: "), "{e}");
        let e = task(
            r#"{"eval_type":"SQL_SCALAR_PANDAS_UDF",
            "udfs":[{"function":"func = lambda v: v","return_type":"double"}],
            "input":{"schema":"v double","rows":[[1.0],["x"]]}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("udf.input.rows: column v (double): "), "{e}");
        let e = task(
            r#"{"eval_type":"SQL_BATCHED_UDF",
            "udfs":[{"function":"func = lambda v: v","return_type":"double"}],
            "input":{"schema":"v double","rows":[[1.0, 2.0]]}}"#,
        )
        .unwrap_err();
        assert!(e.starts_with("udf.input.rows[0]: 2 values"), "{e}");
    }
}
