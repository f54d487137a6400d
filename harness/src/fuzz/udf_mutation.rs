//! Typed mutations of a UDF task's command section (PROTOCOL-UDF.md §3): the section is decoded
//! with protocol/udf.rs for the seed's pyspark line and eval type, one field changes, and the
//! caller re-encodes the request (mutate.rs, the same re-encoding the header's field mutations
//! use), so every count on the wire stays true to its list and the worker acts on the value:
//! how many UDFs (`assert num_udfs == 1` in the map and grouped kinds), argument offsets past the
//! input columns, keyword names, how many chained functions (none leaves read_single_udf's
//! function unbound), the return type class inside a function's pickle, the runner conf, the
//! extras 4.2+ moved into EvalConf, and the 4.0/4.1 profiler flag.

use super::case::Case;
use crate::protocol::{
    Arg, Dialect, EvalType, Profiler, StateServer, TaskRequest, UdfBody, UdfCommand, UdfLayout,
    EVAL_CONF_KEYS,
};
use crate::wire::{Reader, Status};
use arbitrary::Arbitrary;

/// A new argument offset.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Offset {
    /// The number of input columns plus `0..=3`: the first offsets that index nothing.
    PastColumns(u8),
    /// The last input column (a valid offset, another column than the one there).
    LastColumn,
    MinusOne,
    Min,
    Max,
    Any(i32),
}

impl Offset {
    fn resolve(self, columns: usize) -> i32 {
        let columns = columns.min(i32::MAX as usize - 8) as i32;
        match self {
            Offset::PastColumns(k) => columns + (k % 4) as i32,
            Offset::LastColumn => (columns - 1).max(0),
            Offset::MinusOne => -1,
            Offset::Min => i32::MIN,
            Offset::Max => i32::MAX,
            Offset::Any(v) => v,
        }
    }
}

/// One typed field of the command section. Indexes are taken modulo what is there.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum UdfField {
    /// The UDF list cut or grown (copies of the UDFs there, in turn) to `n % 5`.
    NumUdfs(u8),
    /// One UDF's (or the UDTF's) arguments cut or grown to `n % 6`.
    ArgCount {
        udf: u8,
        n: u8,
    },
    ArgOffset {
        udf: u8,
        arg: u8,
        value: Offset,
    },
    /// A keyword name set, changed or taken away (where the layout sends the `named` flag).
    Keyword {
        udf: u8,
        arg: u8,
        name: u8,
    },
    /// One UDF's chain cut or grown to `n % 4` functions.
    ChainedFuncs {
        udf: u8,
        n: u8,
    },
    /// A `pyspark.sql.types` class inside one function's pickle swapped for another of the same
    /// name length (so the pickle's frame lengths stay true); a UDTF's return type JSON changed.
    ReturnType {
        udf: u8,
        func: u8,
        to: u8,
    },
    /// A runner conf key the worker reads set to a value (or removed), where the task sends the
    /// runner conf (in the section up to 4.1, in the header's map from 4.2).
    RunnerConf {
        key: u8,
        value: u8,
        remove: bool,
    },
    /// What 4.2+ reads from EvalConf (`input_type`, `state_value_schema`, ...), or the same
    /// values where 4.1 and earlier send them in the section.
    EvalConf {
        key: u8,
        value: u8,
    },
    /// 4.0/4.1's `is_profiling` flag and profiler name.
    Profiler(u8),
}

impl UdfField {
    /// The kind's name, as the campaign summary counts it.
    pub fn name(&self) -> &'static str {
        match self {
            UdfField::NumUdfs(_) => "udf.num_udfs",
            UdfField::ArgCount { .. } => "udf.arg_count",
            UdfField::ArgOffset { .. } => "udf.arg_offset",
            UdfField::Keyword { .. } => "udf.keyword",
            UdfField::ChainedFuncs { .. } => "udf.chained_funcs",
            UdfField::ReturnType { .. } => "udf.return_type",
            UdfField::RunnerConf { .. } => "udf.runner_conf",
            UdfField::EvalConf { .. } => "udf.eval_conf",
            UdfField::Profiler(_) => "udf.profiler",
        }
    }
}

/// The runner conf keys the worker reads (PROTOCOL-UDF.md §6), on one line or another.
const RUNNER_KEYS: [&str; 16] = [
    "spark.sql.session.timeZone",
    "spark.sql.execution.pandas.convertToArrowArraySafely",
    "spark.sql.legacy.execution.pandas.groupedMap.assignColumnsByName",
    "spark.sql.execution.arrow.maxRecordsPerBatch",
    "pandas_window_bound_types",
    "window_bound_types",
    "spark.sql.execution.arrow.useLargeVarTypes",
    "spark.sql.execution.pythonUDF.arrow.concurrency.level",
    "spark.sql.execution.pyspark.binaryAsBytes",
    "spark.sql.execution.pythonUDF.pandas.intToDecimalCoercionEnabled",
    "spark.sql.legacy.execution.pythonUDF.pandas.conversion.enabled",
    "spark.sql.legacy.execution.pythonUDTF.pandas.conversion.enabled",
    "spark.sql.execution.arrow.maxBytesPerBatch",
    "spark.sql.execution.pythonUDF.pandas.preferIntExtensionDtype",
    "spark.sql.execution.pythonUDF.mapInBatch.legacy.acceptAnyIterable.enabled",
    "spark.sql.pyspark.udf.profiler",
];

/// Values for them: booleans, ints at the edges, time zones real and not, window bounds, junk.
const RUNNER_VALUES: [&str; 17] = [
    "true",
    "false",
    "",
    "0",
    "-1",
    "1",
    "2147483648",
    "abc",
    "UTC",
    "Mars/Olympus_Mons",
    "bounded",
    "unbounded,bounded,unbounded",
    "perf",
    "memory",
    "1e400",
    " ",
    "é",
];

/// Values for the EvalConf keys: schema JSON good and bad, ports, socket paths, offset lists.
const EVAL_VALUES: [&str; 14] = [
    "",
    "{",
    "null",
    r#"{"type":"struct","fields":[]}"#,
    r#"{"type":"struct","fields":[{"name":"x","type":"bogus","nullable":true,"metadata":{}}]}"#,
    r#"{"type":"struct","fields":[{"name":"x","type":"long","nullable":false,"metadata":{}},{"name":"y","type":"string","nullable":true,"metadata":{}}]}"#,
    r#""long""#,
    "-1",
    "0",
    "65536",
    "/nonexistent/fakejvm-state.sock",
    "0,1",
    "-1,99999",
    "x",
];

/// Keyword names: None takes the name away; the last one repeats another argument's name.
const NAMES: [Option<&str>; 8] = [
    None,
    Some("x"),
    Some(""),
    Some("self"),
    Some("é"),
    Some("1bad"),
    Some("lambda"),
    Some("\u{0}"),
];

/// UDTF return types (StructType JSON is what the worker expects).
const UDTF_RETURN_TYPES: [&str; 6] = [
    r#"{"type":"struct","fields":[]}"#,
    r#"{"type":"struct","fields":[{"name":"x","type":"string","nullable":true,"metadata":{}}]}"#,
    r#""long""#,
    r#"{"type":"array","elementType":"long","containsNull":true}"#,
    "{",
    "",
];

/// `pyspark.sql.types` classes grouped by name length: a swap within a group keeps the pickle's
/// byte count, so its FRAME lengths (protocol 4+) stay true.
const TYPE_CLASSES: [&[&str]; 4] = [
    &[
        "NullType", "CharType", "DateType", "ByteType", "LongType", "TimeType",
    ],
    &["FloatType", "ShortType", "ArrayType"],
    &["StringType", "BinaryType", "DoubleType", "StructType"],
    &[
        "VarcharType",
        "BooleanType",
        "DecimalType",
        "IntegerType",
        "StructField",
        "VariantType",
    ],
];

/// The typed request the case holds now: the seed's, with the command section decoded from the
/// case's Command frame (so UDF mutations build on one another), or the seed's section when that
/// frame no longer decodes. None for a seed that is no UDF task.
pub fn current_request(case: &Case, seed: &TaskRequest) -> Option<TaskRequest> {
    let udf = seed.udf.as_ref()?;
    let mut req = seed.clone();
    let frame = case
        .position(crate::protocol::SpanKind::Command)
        .map(|i| &case.frames[i].bytes);
    if let Some(bytes) = frame {
        let mut r = Reader::new(bytes);
        if let Ok(Status::Complete((cmd, conf))) =
            UdfCommand::decode(udf.layout, seed.eval_type, &mut r)
        {
            if r.is_empty() {
                req.udf = Some(cmd);
                if let Some(conf) = conf {
                    req.runner_conf = conf;
                }
            }
        }
    }
    Some(req)
}

/// Change one field of `req` (a UDF task of `dialect`); `columns` is how many input columns the
/// data has, when known. False when the field is not on this task's wire or nothing changed.
pub fn apply(
    req: &mut TaskRequest,
    dialect: Dialect,
    field: &UdfField,
    columns: Option<usize>,
) -> bool {
    let eval = req.eval_type;
    let Some(cmd) = req.udf.as_mut() else {
        return false;
    };
    let layout = cmd.layout;
    let pick = |i: u8, n: usize| -> Option<usize> { (n > 0).then(|| i as usize % n) };
    match field {
        UdfField::NumUdfs(n) => {
            let UdfBody::Udfs { udfs, .. } = &mut cmd.body else {
                return false;
            };
            let target = *n as usize % 5;
            if target == udfs.len() || udfs.is_empty() {
                return false;
            }
            *udfs = (0..target).map(|i| udfs[i % udfs.len()].clone()).collect();
            true
        }
        UdfField::ArgCount { udf, n } => {
            let Some(args) = args_of(cmd, *udf) else {
                return false;
            };
            let target = *n as usize % 6;
            if target == args.len() {
                return false;
            }
            let old = args.clone();
            *args = (0..target)
                .map(|i| match old.len() {
                    0 => Arg::positional(i as i32),
                    n => old[i % n].clone(),
                })
                .collect();
            true
        }
        UdfField::ArgOffset { udf, arg, value } => {
            let Some(args) = args_of(cmd, *udf) else {
                return false;
            };
            let columns = columns.unwrap_or_else(|| {
                args.iter()
                    .map(|a| a.offset.max(0) as usize + 1)
                    .max()
                    .unwrap_or(0)
            });
            let Some(k) = pick(*arg, args.len()) else {
                return false;
            };
            let v = value.resolve(columns);
            if args[k].offset == v {
                return false;
            }
            args[k].offset = v;
            true
        }
        UdfField::Keyword { udf, arg, name } => {
            let named = match &cmd.body {
                UdfBody::Udfs { .. } => layout.named_args(eval),
                UdfBody::Udtf(_) => layout.udtf_extras(),
            };
            let Some(args) = args_of(cmd, *udf).filter(|_| named) else {
                return false;
            };
            let Some(k) = pick(*arg, args.len()) else {
                return false;
            };
            let mut new = NAMES[*name as usize % (NAMES.len() + 1)..]
                .first()
                .map(|n| n.map(String::from))
                // One past the list: another argument's name (or "x"), twice in one call.
                .unwrap_or_else(|| {
                    let other = args
                        .iter()
                        .enumerate()
                        .find(|(i, a)| *i != k && a.name.is_some());
                    Some(
                        other
                            .and_then(|(_, a)| a.name.clone())
                            .unwrap_or_else(|| "x".into()),
                    )
                });
            if new == args[k].name {
                new = if new.is_some() {
                    None
                } else {
                    Some("x".into())
                };
            }
            args[k].name = new;
            true
        }
        UdfField::ChainedFuncs { udf, n } => {
            let UdfBody::Udfs { udfs, .. } = &mut cmd.body else {
                return false;
            };
            let Some(u) = pick(*udf, udfs.len()).map(|i| &mut udfs[i]) else {
                return false;
            };
            let target = *n as usize % 4;
            if target == u.funcs.len() || u.funcs.is_empty() {
                return false;
            }
            let old = std::mem::take(&mut u.funcs);
            u.funcs = (0..target).map(|i| old[i % old.len()].clone()).collect();
            true
        }
        UdfField::ReturnType { udf, func, to } => match &mut cmd.body {
            UdfBody::Udtf(t) => {
                let new = UDTF_RETURN_TYPES[*to as usize % UDTF_RETURN_TYPES.len()];
                if t.return_type == new {
                    return false;
                }
                t.return_type = new.into();
                true
            }
            UdfBody::Udfs { udfs, .. } => {
                let Some(u) = pick(*udf, udfs.len()).map(|i| &mut udfs[i]) else {
                    return false;
                };
                let Some(f) = pick(*func, u.funcs.len()).map(|i| &mut u.funcs[i]) else {
                    return false;
                };
                swap_type_class(&mut f.pickle, *to)
            }
        },
        UdfField::RunnerConf { key, value, remove } => {
            if !(layout.conf_in_command(eval) || dialect.has_conf_maps()) {
                return false;
            }
            let key = RUNNER_KEYS[*key as usize % RUNNER_KEYS.len()];
            let conf = &mut req.runner_conf;
            if *remove {
                let n = conf.len();
                conf.retain(|(k, _)| k != key);
                return conf.len() != n;
            }
            set(
                conf,
                key,
                RUNNER_VALUES[*value as usize % RUNNER_VALUES.len()],
            )
        }
        UdfField::EvalConf { key, value } => {
            let v = EVAL_VALUES[*value as usize % EVAL_VALUES.len()];
            if dialect.has_conf_maps() {
                let key = EVAL_CONF_KEYS[*key as usize % EVAL_CONF_KEYS.len()];
                return set(&mut req.eval_conf, key, v);
            }
            set_extra(cmd, layout, eval, *key, v)
        }
        UdfField::Profiler(i) => {
            let UdfBody::Udfs { profiler, udfs } = &mut cmd.body else {
                return false;
            };
            if !layout.profiling_on_wire() {
                return false;
            }
            let new = [
                None,
                Some(Profiler::Perf),
                Some(Profiler::Memory),
                Some(Profiler::Other("fakejvm".into())),
            ][*i as usize % 4]
                .clone();
            if *profiler == new {
                return false;
            }
            *profiler = new;
            // "perf" and "memory" make 4.0/4.1 send a result id after each UDF's functions.
            let ids = layout.result_id(profiler.as_ref());
            for u in udfs.iter_mut() {
                u.result_id = if ids { u.result_id.or(Some(0)) } else { None };
            }
            true
        }
    }
}

/// The arguments of UDF `udf` (or of the UDTF).
fn args_of(cmd: &mut UdfCommand, udf: u8) -> Option<&mut Vec<Arg>> {
    match &mut cmd.body {
        UdfBody::Udfs { udfs, .. } => {
            let n = udfs.len();
            (n > 0).then(|| &mut udfs[udf as usize % n].args)
        }
        UdfBody::Udtf(t) => Some(&mut t.args),
    }
}

/// Set `key` to `value` in a conf list (replacing, or appending); false if it was so already.
fn set(conf: &mut Vec<(String, String)>, key: &str, value: &str) -> bool {
    match conf.iter_mut().find(|(k, _)| k == key) {
        Some((_, v)) if v == value => false,
        Some((_, v)) => {
            *v = value.into();
            true
        }
        None => {
            conf.push((key.into(), value.into()));
            true
        }
    }
}

/// Up to 4.1: the EvalConf values' places inside the section, those this line reads for `eval`.
fn set_extra(cmd: &mut UdfCommand, layout: UdfLayout, eval: EvalType, key: u8, v: &str) -> bool {
    let x = &mut cmd.extras;
    let mut slots: Vec<&mut Option<String>> = vec![];
    if layout.input_schema_in_command(eval) {
        slots.push(&mut x.input_schema);
    }
    if layout.state_schema_in_command(eval) {
        slots.push(&mut x.state_value_schema);
    }
    let server = layout.state_server_in_command(eval);
    if server {
        slots.push(&mut x.grouping_key_schema);
    }
    let offsets = layout.table_offsets_in_command(eval);
    let n = slots.len() + usize::from(server) + usize::from(offsets);
    if n == 0 {
        return false;
    }
    let k = key as usize % n;
    if k < slots.len() {
        let slot = &mut slots[k];
        if slot.as_deref() == Some(v) {
            return false;
        }
        **slot = Some(v.into());
        return true;
    }
    drop(slots);
    if server && k == n - 1 - usize::from(offsets) {
        let new = match v.parse::<i32>() {
            Ok(p) => StateServer::Port(p),
            Err(_) if layout.state_server_may_be_path() => StateServer::Path(v.into()),
            Err(_) => StateServer::Port(v.len() as i32 - 1),
        };
        if x.state_server.as_ref() == Some(&new) {
            return false;
        }
        x.state_server = Some(new);
        return true;
    }
    let new: Vec<i32> = v.split(',').filter_map(|s| s.trim().parse().ok()).collect();
    if x.table_arg_offsets.as_ref() == Some(&new) {
        return false;
    }
    x.table_arg_offsets = Some(new);
    true
}

/// Swap one `pyspark.sql.types` class name (a SHORT_BINUNICODE string of the pickle) for another
/// of the same length: the function's return type as the worker unpickles it. `to` picks the
/// occurrence (for `array<string>`, the array or its element) and the new class.
fn swap_type_class(pickle: &mut [u8], to: u8) -> bool {
    // (offset of the string's bytes, its group, its index in the group)
    let mut found = vec![];
    let mut i = 0;
    while i + 1 < pickle.len() {
        if pickle[i] == 0x8c {
            let n = pickle[i + 1] as usize;
            if let Some(s) = pickle.get(i + 2..i + 2 + n) {
                for (g, names) in TYPE_CLASSES.iter().enumerate() {
                    if let Some(k) = names.iter().position(|c| c.as_bytes() == s) {
                        found.push((i + 2, g, k));
                    }
                }
            }
        }
        i += 1;
    }
    if found.is_empty() {
        return false;
    }
    let (at, g, k) = found[(to as usize / 8) % found.len()];
    let names = TYPE_CLASSES[g];
    let new = names[(k + 1 + to as usize % (names.len() - 1)) % names.len()];
    pickle[at..at + new.len()].copy_from_slice(new.as_bytes());
    true
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ChainedFunc, Udf, Udtf};

    /// `(func, LongType())` as cloudpickle writes the type's class: module and name strings.
    fn pickle_with(class: &str) -> Vec<u8> {
        let mut p = vec![0x80, 5, 0x95, 0, 0, 0, 0, 0, 0, 0, 0];
        for s in ["pyspark.sql.types", class] {
            p.push(0x8c);
            p.push(s.len() as u8);
            p.extend_from_slice(s.as_bytes());
            p.push(0x94);
        }
        p.extend_from_slice(&[0x93, b'.']);
        p
    }

    fn request(layout: UdfLayout, eval: EvalType) -> TaskRequest {
        let udfs = vec![
            Udf::simple(&[0, 1], pickle_with("LongType")),
            Udf::simple(&[1], pickle_with("StringType")),
        ];
        UdfCommand::udfs(layout, udfs).place(
            "3.11",
            eval,
            vec![("spark.sql.session.timeZone".into(), "UTC".into())],
        )
    }

    fn udfs(req: &TaskRequest) -> &[Udf] {
        match &req.udf.as_ref().unwrap().body {
            UdfBody::Udfs { udfs, .. } => udfs,
            UdfBody::Udtf(_) => panic!("a UDTF"),
        }
    }

    #[test]
    fn every_field_applies_where_its_line_sends_it() {
        let cases: Vec<(UdfLayout, EvalType, UdfField)> = vec![
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::NumUdfs(3),
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::ArgCount { udf: 0, n: 5 },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::ArgOffset {
                    udf: 0,
                    arg: 1,
                    value: Offset::PastColumns(0),
                },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::Keyword {
                    udf: 0,
                    arg: 0,
                    name: 1,
                },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::ChainedFuncs { udf: 0, n: 0 },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::ReturnType {
                    udf: 0,
                    func: 0,
                    to: 3,
                },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::RunnerConf {
                    key: 0,
                    value: 9,
                    remove: false,
                },
            ),
            (
                UdfLayout::Pyspark41,
                EvalType::SqlArrowBatchedUdf,
                UdfField::EvalConf { key: 0, value: 1 },
            ),
            (
                UdfLayout::Pyspark43,
                EvalType::SqlScalarPandasUdf,
                UdfField::EvalConf { key: 0, value: 1 },
            ),
            (
                UdfLayout::Pyspark40,
                EvalType::SqlScalarPandasUdf,
                UdfField::Profiler(1),
            ),
        ];
        for (layout, eval, field) in cases {
            let d = layout.dialect();
            let before = request(layout, eval);
            let mut req = before.clone();
            assert!(apply(&mut req, d, &field, Some(2)), "{field:?} on {layout}");
            assert_ne!(req, before, "{field:?}");
            // The section re-encodes and decodes back to the changed value.
            let enc = d.encode_request(&req);
            let span = enc.span(crate::protocol::SpanKind::Command).unwrap();
            let mut r = Reader::new(&enc.bytes[span.start..span.end]);
            let Ok(Status::Complete((cmd, conf))) = UdfCommand::decode(layout, eval, &mut r) else {
                panic!("{field:?}: the section does not decode");
            };
            assert!(r.is_empty(), "{field:?}");
            assert_eq!(Some(cmd), req.udf, "{field:?}");
            if layout.conf_in_command(eval) {
                assert_eq!(conf.as_ref(), Some(&req.runner_conf), "{field:?}");
            }
        }
    }

    #[test]
    fn fields_off_the_wire_do_not_apply() {
        // 3.5 sends no keyword names and no profiler; 100 sends no runner conf before 4.2.
        let mut req = request(UdfLayout::Pyspark35, EvalType::SqlScalarPandasUdf);
        assert!(!apply(
            &mut req,
            Dialect::A,
            &UdfField::Keyword {
                udf: 0,
                arg: 0,
                name: 1
            },
            None
        ));
        assert!(!apply(&mut req, Dialect::A, &UdfField::Profiler(1), None));
        let mut req = request(UdfLayout::Pyspark40, EvalType::SqlBatchedUdf);
        assert!(!apply(
            &mut req,
            Dialect::A,
            &UdfField::RunnerConf {
                key: 0,
                value: 0,
                remove: false
            },
            None
        ));
        // An RDD task has no section at all.
        let mut rdd = TaskRequest::non_udf("3.11", vec![1], vec![]);
        assert!(!apply(&mut rdd, Dialect::A, &UdfField::NumUdfs(0), None));
    }

    #[test]
    fn counts_follow_the_lists() {
        let mut req = request(UdfLayout::Pyspark40, EvalType::SqlScalarPandasUdf);
        assert!(apply(&mut req, Dialect::A, &UdfField::NumUdfs(4), None));
        assert_eq!(udfs(&req).len(), 4);
        assert_eq!(udfs(&req)[2], udfs(&req)[0]);
        assert!(apply(
            &mut req,
            Dialect::A,
            &UdfField::ChainedFuncs { udf: 1, n: 0 },
            None
        ));
        assert!(udfs(&req)[1].funcs.is_empty());
        assert!(apply(
            &mut req,
            Dialect::A,
            &UdfField::ArgOffset {
                udf: 0,
                arg: 0,
                value: Offset::PastColumns(1)
            },
            Some(2)
        ));
        assert_eq!(udfs(&req)[0].args[0].offset, 3);
    }

    #[test]
    fn a_return_type_swap_keeps_the_pickle_length() {
        let mut p = pickle_with("LongType");
        let before = p.clone();
        assert!(swap_type_class(&mut p, 0));
        assert_eq!(p.len(), before.len());
        let f = ChainedFunc { pickle: p };
        assert_eq!(f.type_classes(), vec!["TimeType".to_string()]);
        let mut none = vec![0x80, 5, b'N', b'.'];
        assert!(!swap_type_class(&mut none, 0));
    }

    #[test]
    fn a_udtf_has_its_return_type_and_arguments_changed() {
        let t = Udtf {
            args: vec![Arg::positional(0)],
            partition_child_indexes: vec![],
            analyze_result: None,
            handler: vec![0x80, 5, b'N', b'.'],
            return_type: r#"{"type":"struct","fields":[]}"#.into(),
            name: Some("t".into()),
        };
        let cmd = UdfCommand {
            layout: UdfLayout::Pyspark40,
            extras: Default::default(),
            body: UdfBody::Udtf(t),
        };
        let mut req = cmd.place("3.11", EvalType::SqlTableUdf, vec![]);
        assert!(!apply(&mut req, Dialect::A, &UdfField::NumUdfs(3), None));
        assert!(apply(
            &mut req,
            Dialect::A,
            &UdfField::ReturnType {
                udf: 0,
                func: 0,
                to: 2
            },
            None
        ));
        assert!(apply(
            &mut req,
            Dialect::A,
            &UdfField::Keyword {
                udf: 0,
                arg: 0,
                name: 3
            },
            None
        ));
        let UdfBody::Udtf(t) = &req.udf.as_ref().unwrap().body else {
            panic!()
        };
        assert_eq!(t.return_type, r#""long""#);
        assert_eq!(t.args[0].name.as_deref(), Some("self"));
    }
}
