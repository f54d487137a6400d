//! SQL UDF tasks against REAL workers through the daemon (issue 11): the command section of
//! `protocol::udf`, function pickles built by the target pyspark, the Arrow data of `arrow`, and
//! the replies decoded back to values. One daemon per pinned version; each eval type is one task
//! on a fresh forked worker.

mod common;
use common::*;
use fakejvm::arrow::{self, Group};
use fakejvm::decode::StreamDirection;
use fakejvm::pickle::{self, Value};
use fakejvm::protocol::{
    decode_requests_as, Arg, ChainedFunc, DataItem, Dialect, EvalType, InputFraming, Profiler,
    ReplyEnd, ReplyItem, Udf, UdfBody, UdfCommand, UdfLayout, Udtf,
};
use fakejvm::pyenv::{build_udf_functions, PythonEnv, UdfFunctionSpec};
use fakejvm::session::{self, SessionOptions, Transcript, WritePlan};
use fakejvm::sqltype::SqlType;
use fakejvm::worker::{LaunchOptions, Workers};
use serde_json::{json, Value as J};
use std::sync::Arc;
use std::time::Duration;

const DOUBLE: &str = r#""double""#;
const ID_V: &str = r#"{"type":"struct","fields":[{"name":"id","type":"long","nullable":true,"metadata":{}},{"name":"v","type":"double","nullable":true,"metadata":{}}]}"#;
const K_V: &str = r#"{"type":"struct","fields":[{"name":"k","type":"long","nullable":true,"metadata":{}},{"name":"v","type":"double","nullable":true,"metadata":{}}]}"#;

/// What came back: pickled values (100) or the rows of every Arrow stream (the rest).
#[derive(Debug)]
enum Output {
    Pickled(Vec<J>),
    Arrow {
        schemas: Vec<String>,
        rows: Vec<J>,
    },
    /// The worker's -2 traceback, and how many Arrow streams (-6) came before it.
    Raised(String, usize),
}

struct Case {
    eval: EvalType,
    /// (source binding `func`, return type JSON) per chained function of the one UDF.
    function: (&'static str, &'static str),
    offsets: Vec<i32>,
    data: Vec<DataItem>,
    end_of_data: bool,
    runner_conf: Vec<(String, String)>,
    /// 101: the input StructType JSON (4.1: in the command; 4.2+: EvalConf `input_type`).
    input_schema: Option<String>,
    /// 300-302: the UDTF's name and return StructType JSON; `function` binds the class.
    udtf: Option<(&'static str, &'static str)>,
    /// Functions chained after `function` (each with its return type).
    chain: Vec<(&'static str, &'static str)>,
    /// Keyword names of the arguments (4.0+), by position.
    names: Vec<Option<&'static str>>,
    profiler: Option<Profiler>,
    /// Data deliberately in another version's framing: fakejvm's own decoder must refuse it.
    foreign_framing: bool,
    /// 302: the table-argument offsets (4.1: in the command; 4.2+: EvalConf).
    table_offsets: Option<Vec<i32>>,
}

impl Case {
    fn new(eval: EvalType, function: (&'static str, &'static str), offsets: Vec<i32>) -> Case {
        Case {
            eval,
            function,
            offsets,
            data: vec![],
            end_of_data: true,
            runner_conf: vec![],
            input_schema: None,
            udtf: None,
            chain: vec![],
            names: vec![],
            profiler: None,
            foreign_framing: false,
            table_offsets: None,
        }
    }
}

fn layout_of(env: &PythonEnv) -> UdfLayout {
    UdfLayout::for_version(env.pyspark.major, env.pyspark.minor).expect("a UDF layout")
}

fn doubles(v: &[f64]) -> Arc<dyn arrow_array::Array> {
    Arc::new(arrow_array::Float64Array::from(v.to_vec()))
}

fn longs(v: &[i64]) -> Arc<dyn arrow_array::Array> {
    Arc::new(arrow_array::Int64Array::from(v.to_vec()))
}

/// SQL_BATCHED_UDF: rows as one pickled tuple of 1-tuples, then -1 (PROTOCOL-UDF.md §8.2).
fn batched_squares() -> Case {
    let rows = Value::Tuple(
        [1.0, 2.0, 3.0]
            .iter()
            .map(|x| Value::Tuple(vec![Value::Float(*x)]))
            .collect(),
    );
    Case {
        data: vec![DataItem::Frame(pickle::dumps(&rows))],
        ..Case::new(
            EvalType::SqlBatchedUdf,
            ("func = lambda x: x ** 2", DOUBLE),
            vec![0],
        )
    }
}

fn arrow_case(
    layout: UdfLayout,
    eval: EvalType,
    function: (&'static str, &'static str),
    offsets: Vec<i32>,
    groups: Vec<Group>,
) -> Case {
    let schema = groups[0].left[0].schema();
    let right = groups[0].right.first().map(|b| b.schema());
    let framing = layout.input_framing(eval);
    let data = arrow::data_section(framing, &schema, right.as_deref(), &groups).unwrap();
    Case {
        data,
        end_of_data: false,
        ..Case::new(eval, function, offsets)
    }
}

fn scalar_pandas_plus_one(layout: UdfLayout) -> Case {
    let batch = arrow::positional_batch(vec![doubles(&[1.0, 2.5, -3.0])]).unwrap();
    arrow_case(
        layout,
        EvalType::SqlScalarPandasUdf,
        ("func = lambda v: v + 1", DOUBLE),
        vec![0],
        vec![Group::of(vec![batch])],
    )
}

fn grouped_agg_mean(layout: UdfLayout) -> Case {
    let g = |v: &[f64]| Group::of(vec![arrow::positional_batch(vec![doubles(v)]).unwrap()]);
    arrow_case(
        layout,
        EvalType::SqlGroupedAggPandasUdf,
        ("func = lambda v: v.mean()", DOUBLE),
        vec![0],
        vec![g(&[1.0, 2.0, 3.0]), g(&[10.0, 20.0])],
    )
}

fn map_in_pandas(layout: UdfLayout) -> Case {
    let batch =
        arrow::struct_batch(vec![("id", longs(&[1, 2])), ("v", doubles(&[0.5, 1.5]))]).unwrap();
    arrow_case(
        layout,
        EvalType::SqlMapPandasIterUdf,
        (
            "def func(it):\n    for pdf in it:\n        yield pdf.assign(v=pdf.v * 10)\n",
            ID_V,
        ),
        vec![0],
        vec![Group::of(vec![batch])],
    )
}

/// groupBy("k").applyInPandas over (k, v): offsets [n, k, key.., values..] (§3.8).
fn apply_in_pandas(layout: UdfLayout) -> Case {
    let g = |k: i64, v: &[f64]| {
        let ks = vec![k; v.len()];
        Group::of(vec![arrow::named_batch(vec![
            ("k", longs(&ks)),
            ("v", doubles(v)),
        ])
        .unwrap()])
    };
    arrow_case(
        layout,
        EvalType::SqlGroupedMapPandasUdf,
        ("func = lambda pdf: pdf.assign(v=pdf.v.mean())", K_V),
        vec![4, 1, 0, 0, 1],
        vec![g(1, &[1.0, 2.0, 3.0]), g(2, &[10.0, 20.0])],
    )
}

/// Runs every case as one task on its own forked worker of one daemon; returns the outputs in
/// order. A worker exception fails with its traceback.
async fn run_cases(version: &str, cases: &[Case]) -> Vec<Output> {
    let env = env_for(version);
    let layout = layout_of(&env);
    let specs: Vec<Vec<UdfFunctionSpec>> = cases
        .iter()
        .map(|c| {
            std::iter::once(c.function)
                .chain(c.chain.iter().copied())
                .map(|(function, return_type)| UdfFunctionSpec {
                    function: function.into(),
                    return_type: return_type.into(),
                    udtf: c.udtf.is_some(),
                })
                .collect()
        })
        .collect();
    let flat: Vec<UdfFunctionSpec> = specs.iter().flatten().cloned().collect();
    let mut built = build_udf_functions(&env, &flat)
        .unwrap_or_else(|e| panic!("{e}"))
        .into_iter();
    let pickles: Vec<Vec<Vec<u8>>> = specs
        .iter()
        .map(|s| built.by_ref().take(s.len()).collect())
        .collect();
    let mut workers = Workers::start(&env.python, LaunchOptions::default())
        .await
        .unwrap_or_else(|e| panic!("{version}: {e}"));
    let mut outputs = vec![];
    for (case, funcs) in cases.iter().zip(pickles) {
        let pickle = funcs[0].clone();
        let mut udf = Udf::simple(&case.offsets, pickle.clone());
        udf.funcs = funcs
            .into_iter()
            .map(|pickle| ChainedFunc { pickle })
            .collect();
        for (arg, name) in udf.args.iter_mut().zip(&case.names) {
            arg.name = name.map(Into::into);
        }
        let mut cmd = UdfCommand::udfs(layout, vec![udf]);
        if let UdfBody::Udfs { profiler, .. } = &mut cmd.body {
            profiler.clone_from(&case.profiler);
        }
        if let Some((name, return_type)) = case.udtf {
            cmd.body = UdfBody::Udtf(Udtf {
                args: case.offsets.iter().map(|&o| Arg::positional(o)).collect(),
                partition_child_indexes: vec![],
                analyze_result: None,
                handler: pickle,
                return_type: return_type.into(),
                name: layout.udtf_extras().then(|| name.into()),
            });
        }
        cmd.extras.input_schema = case.input_schema.clone();
        cmd.extras.table_arg_offsets = case.table_offsets.clone();
        let mut req = cmd.place(&env.python_version, case.eval, case.runner_conf.clone());
        req.spark_files_dir = "/tmp".into();
        req.data = case.data.clone();
        req.end_of_data = case.end_of_data;
        let dialect = layout.dialect();
        if dialect == Dialect::D {
            req.context.cpu_amount = Some("1".into());
        }
        let bytes = dialect.encode_request(&req).bytes;
        // What we send decodes back to what we meant.
        let (decoded, err) = decode_requests_as(layout, &bytes);
        if case.foreign_framing {
            let err = err.expect("the foreign framing decodes as an error");
            assert!(err.to_string().contains("group marker -1"), "{err}");
        } else {
            assert!(err.is_none(), "{version} {}: {err:?}", case.eval);
            assert_eq!(decoded[0].request, req, "{version} {}", case.eval);
        }
        let mut c = workers.connect().await.unwrap_or_else(|e| panic!("{e}"));
        let opts = SessionOptions {
            deadline: Duration::from_secs(60),
            ..SessionOptions::default()
        };
        let result = session::run_task(
            &mut c.reader,
            &mut c.writer,
            dialect,
            &bytes,
            &WritePlan::whole(bytes.len()),
            c.handshake_in.len() as u64,
            &opts,
            &mut Transcript::default(),
        )
        .await;
        let what = format!("{version} {}", case.eval);
        let reply = result
            .reply
            .unwrap_or_else(|e| panic!("{what}: no complete reply: {e:?}"));
        if std::env::var_os("FAKEJVM_UDF_DUMP").is_some() {
            let d = fakejvm::decode::decode_as(layout, StreamDirection::Request, &bytes);
            eprintln!("{what}:\n{}", d.to_text());
        }
        outputs.push(if let ReplyEnd::Exception { traceback } = &reply.end {
            eprintln!("{what}: the worker raised:\n{traceback}");
            let streams = reply
                .data
                .iter()
                .filter(|i| matches!(i, ReplyItem::ArrowStream(_)))
                .count();
            Output::Raised(traceback.clone(), streams)
        } else if case.eval.is_pickled() {
            let mut values = vec![];
            for item in &reply.data {
                let ReplyItem::Frame(b) = item else {
                    panic!("{what}: {item:?} in a pickled reply")
                };
                match pickle::loads(b).unwrap_or_else(|e| panic!("{what}: {e}")) {
                    Value::List(vs) => values.extend(vs.iter().map(pickle::value_to_json)),
                    other => panic!("{what}: a frame of {}, not a list", other.type_name()),
                }
            }
            Output::Pickled(values)
        } else {
            let mut schemas = vec![];
            let mut rows = vec![];
            for item in &reply.data {
                let ReplyItem::ArrowStream(b) = item else {
                    panic!("{what}: {item:?} in an Arrow reply")
                };
                let t = arrow::decode_stream(b).unwrap_or_else(|e| panic!("{what}: {e}"));
                schemas.push(t.schema_line());
                rows.extend(t.rows());
            }
            Output::Arrow { schemas, rows }
        });
    }
    let report = workers.shutdown(Duration::from_secs(5)).await;
    assert!(report.leftovers.is_empty(), "{:?}", report.leftovers);
    outputs
}

fn assert_pickled(out: &Output, want: J) {
    match out {
        Output::Pickled(v) => assert_eq!(J::Array(v.clone()), want),
        other => panic!("expected pickled values, got {other:?}"),
    }
}

fn assert_arrow(out: &Output, schema: &str, want: J) {
    match out {
        Output::Arrow { schemas, rows } => {
            assert!(
                schemas.iter().all(|s| s == schema),
                "{schemas:?} != {schema}"
            );
            assert_eq!(J::Array(rows.clone()), want);
        }
        other => panic!("expected Arrow rows, got {other:?}"),
    }
}

/// The five kinds every pinned version has: 100, 200, 202, 205, 201.
async fn common_kinds(version: &str) {
    let layout = layout_of(&env_for(version));
    let cases = [
        batched_squares(),
        scalar_pandas_plus_one(layout),
        grouped_agg_mean(layout),
        map_in_pandas(layout),
        apply_in_pandas(layout),
    ];
    let out = run_cases(version, &cases).await;
    assert_pickled(&out[0], json!([1.0, 4.0, 9.0]));
    assert_arrow(&out[1], "_0: double", json!([[2.0], [3.5], [-2.0]]));
    // One row per group, in group order.
    assert_arrow(&out[2], "_0: double", json!([[2.0], [15.0]]));
    // 205 and 201 answer with one struct column `_0` holding the return schema's fields.
    assert_arrow(
        &out[3],
        "_0: struct<id: int64, v: double>",
        json!([[{"id": 1, "v": 5.0}], [{"id": 2, "v": 15.0}]]),
    );
    let kv = |k: i64, v: f64| json!([{"k": k, "v": v}]);
    assert_arrow(
        &out[4],
        "_0: struct<k: int64, v: double>",
        json!([kv(1, 2.0), kv(1, 2.0), kv(1, 2.0), kv(2, 15.0), kv(2, 15.0)]),
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_udf_kinds_on_3_5_9() {
    common_kinds("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_udf_kinds_on_4_0_5() {
    common_kinds("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_udf_kinds_on_4_1_4() {
    common_kinds("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_udf_kinds_on_4_2_1() {
    common_kinds("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn common_udf_kinds_on_4_3_0() {
    common_kinds("4.3.0").await;
}

// ---------------------------------------------------------------------------------------------
// More kinds, and the versions that have them.

const K_V_W: &str = r#"{"type":"struct","fields":[{"name":"k","type":"long","nullable":true,"metadata":{}},{"name":"v","type":"double","nullable":true,"metadata":{}},{"name":"w","type":"double","nullable":true,"metadata":{}}]}"#;
const A_B: &str = r#"{"type":"struct","fields":[{"name":"a","type":"double","nullable":true,"metadata":{}},{"name":"b","type":"double","nullable":true,"metadata":{}}]}"#;
const IN_DOUBLE: &str =
    r#"{"type":"struct","fields":[{"name":"_0","type":"double","nullable":true,"metadata":{}}]}"#;

fn scalar_doubles(layout: UdfLayout, eval: EvalType, function: &'static str) -> Case {
    let batch = arrow::positional_batch(vec![doubles(&[1.0, 2.5, -3.0])]).unwrap();
    arrow_case(
        layout,
        eval,
        (function, DOUBLE),
        vec![0],
        vec![Group::of(vec![batch])],
    )
}

fn two_groups(layout: UdfLayout, eval: EvalType, function: &'static str) -> Case {
    let g = |v: &[f64]| Group::of(vec![arrow::positional_batch(vec![doubles(v)]).unwrap()]);
    arrow_case(
        layout,
        eval,
        (function, DOUBLE),
        vec![0],
        vec![g(&[1.0, 2.0, 3.0]), g(&[10.0, 20.0])],
    )
}

fn cogroup_merge(layout: UdfLayout) -> Case {
    let left = arrow::named_batch(vec![("k", longs(&[1, 1])), ("v", doubles(&[1.0, 2.0]))]);
    let right = arrow::named_batch(vec![("k", longs(&[1])), ("w", doubles(&[5.0]))]);
    arrow_case(
        layout,
        EvalType::SqlCogroupedMapPandasUdf,
        ("func = lambda l, r: l.merge(r, on='k')", K_V_W),
        // One [n, k, keys.., values..] block per side.
        vec![4, 1, 0, 0, 1, 4, 1, 0, 0, 1],
        vec![Group {
            left: vec![left.unwrap()],
            right: vec![right.unwrap()],
        }],
    )
}

fn udtf_doubler() -> Case {
    let rows = Value::Tuple(vec![
        Value::Tuple(vec![Value::Float(1.0)]),
        Value::Tuple(vec![Value::Float(2.0)]),
    ]);
    Case {
        data: vec![DataItem::Frame(pickle::dumps(&rows))],
        udtf: Some(("doubler", A_B)),
        ..Case::new(
            EvalType::SqlTableUdf,
            (
                "class func:\n    def eval(self, x):\n        yield x, x * 2\n",
                A_B,
            ),
            vec![0],
        )
    }
}

async fn more_kinds(version: &str) {
    let layout = layout_of(&env_for(version));
    let mut cases = vec![
        Case {
            input_schema: Some(IN_DOUBLE.into()),
            ..scalar_doubles(
                layout,
                EvalType::SqlArrowBatchedUdf,
                "func = lambda x: x * 2",
            )
        },
        scalar_doubles(
            layout,
            EvalType::SqlScalarPandasIterUdf,
            "def func(it):\n    for v in it:\n        yield v + 1\n",
        ),
        Case {
            function: ("def func(it):\n    yield from it\n", ID_V),
            eval: EvalType::SqlMapArrowIterUdf,
            ..map_in_pandas(layout)
        },
        cogroup_merge(layout),
        Case {
            runner_conf: vec![(layout.window_bound_key().into(), "unbounded".into())],
            ..two_groups(
                layout,
                EvalType::SqlWindowAggPandasUdf,
                "func = lambda v: v.mean()",
            )
        },
        Case {
            function: ("def func(x):\n    raise ValueError('boom')\n", DOUBLE),
            ..batched_squares()
        },
        udtf_doubler(),
    ];
    if layout >= UdfLayout::Pyspark40 {
        let g = |k: i64, v: &[f64]| {
            let ks = vec![k; v.len()];
            Group::of(vec![arrow::struct_batch(vec![
                ("k", longs(&ks)),
                ("v", doubles(v)),
            ])
            .unwrap()])
        };
        cases.push(arrow_case(
            layout,
            EvalType::SqlGroupedMapArrowUdf,
            ("func = lambda t: t", K_V),
            vec![4, 1, 0, 0, 1],
            vec![g(1, &[1.0, 2.0]), g(2, &[10.0])],
        ));
    }
    if layout >= UdfLayout::Pyspark41 {
        cases.push(scalar_doubles(
            layout,
            EvalType::SqlScalarArrowUdf,
            "import pyarrow.compute as pc\nfunc = lambda a: pc.add(a, 1)",
        ));
        cases.push(two_groups(
            layout,
            EvalType::SqlGroupedAggArrowUdf,
            "import pyarrow.compute as pc\nfunc = lambda a: pc.mean(a)",
        ));
        // 4.0's framing (one stream, a batch per group) sent to a 4.1+ worker.
        cases.push(Case {
            foreign_framing: true,
            ..two_groups(
                UdfLayout::Pyspark40,
                EvalType::SqlGroupedAggPandasUdf,
                "func = lambda v: v.mean()",
            )
        });
    }
    let out = run_cases(version, &cases).await;
    let doubled = json!([[2.0], [5.0], [-6.0]]);
    assert_arrow(&out[0], "_0: double", doubled);
    assert_arrow(&out[1], "_0: double", json!([[2.0], [3.5], [-2.0]]));
    assert_arrow(
        &out[2],
        "_0: struct<id: int64, v: double>",
        json!([[{"id": 1, "v": 0.5}], [{"id": 2, "v": 1.5}]]),
    );
    assert_arrow(
        &out[3],
        "_0: struct<k: int64, v: double, w: double>",
        json!([[{"k": 1, "v": 1.0, "w": 5.0}], [{"k": 1, "v": 2.0, "w": 5.0}]]),
    );
    // Unbounded: the group's mean on each of its rows.
    assert_arrow(
        &out[4],
        "_0: double",
        json!([[2.0], [2.0], [2.0], [15.0], [15.0]]),
    );
    match &out[5] {
        Output::Raised(tb, _) => assert!(tb.contains("ValueError: boom"), "{tb}"),
        other => panic!("expected the worker's ValueError, got {other:?}"),
    }
    // One frame per input row, holding the tuple of its output rows.
    let t = |v: J| json!({"$tuple": v});
    assert_pickled(
        &out[6],
        json!([
            t(json!([t(json!([1.0, 2.0]))])),
            t(json!([t(json!([2.0, 4.0]))]))
        ]),
    );
    if layout >= UdfLayout::Pyspark40 {
        let kv = |k: i64, v: f64| json!([{"k": k, "v": v}]);
        assert_arrow(
            &out[7],
            "_0: struct<k: int64, v: double>",
            json!([kv(1, 1.0), kv(1, 2.0), kv(2, 10.0)]),
        );
    }
    if layout >= UdfLayout::Pyspark41 {
        assert_arrow(&out[8], "_0: double", json!([[2.0], [3.5], [-2.0]]));
        assert_arrow(&out[9], "_0: double", json!([[2.0], [15.0]]));
        // PROTOCOL-UDF.md §4.4: 4.1 reads the continuation marker as the count (-1); 4.2+ skip
        // negative counts and read the metadata length 0x78000000 big-endian.
        let count = if layout == UdfLayout::Pyspark41 {
            "-1"
        } else {
            "2013265920"
        };
        match &out[10] {
            Output::Raised(tb, _) => assert!(
                tb.contains(&format!(
                    "[INVALID_NUMBER_OF_DATAFRAMES_IN_GROUP] Invalid number of dataframes in group {count}"
                )),
                "{tb}"
            ),
            other => panic!("expected the framing error, got {other:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_udf_kinds_on_3_5_9() {
    more_kinds("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_udf_kinds_on_4_0_5() {
    more_kinds("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_udf_kinds_on_4_1_4() {
    more_kinds("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_udf_kinds_on_4_2_1() {
    more_kinds("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_udf_kinds_on_4_3_0() {
    more_kinds("4.3.0").await;
}

// ---------------------------------------------------------------------------------------------
// The 4.0+ command-section features: keyword arguments, chained functions, the profiling flag.

async fn command_features(version: &str) {
    let layout = layout_of(&env_for(version));
    let mut cases = vec![Case {
        // Chained: the worker applies them first to last.
        chain: vec![("func = lambda y: y * 10", DOUBLE)],
        ..Case {
            function: ("func = lambda x: x + 1", DOUBLE),
            ..batched_squares()
        }
    }];
    if layout >= UdfLayout::Pyspark40 {
        cases.push(Case {
            function: ("def func(a=100.0, b=0.0):\n    return a - b\n", DOUBLE),
            names: vec![Some("b")],
            ..batched_squares()
        });
        cases.push(Case {
            names: vec![Some("v")],
            function: ("def func(v):\n    return v * 3\n", DOUBLE),
            ..scalar_pandas_plus_one(layout)
        });
    }
    if layout.profiling_on_wire() {
        cases.push(Case {
            profiler: Some(Profiler::Perf),
            ..batched_squares()
        });
    }
    let out = run_cases(version, &cases).await;
    assert_pickled(&out[0], json!([20.0, 30.0, 40.0]));
    if layout >= UdfLayout::Pyspark40 {
        // The only argument is passed as b=: a keeps its default.
        assert_pickled(&out[1], json!([99.0, 98.0, 97.0]));
        assert_arrow(&out[2], "_0: double", json!([[3.0], [7.5], [-9.0]]));
    }
    if layout.profiling_on_wire() {
        assert_pickled(&out[3], json!([1.0, 4.0, 9.0]));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_command_features_on_3_5_9() {
    command_features("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_command_features_on_4_0_5() {
    command_features("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_command_features_on_4_1_4() {
    command_features("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_command_features_on_4_2_1() {
    command_features("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_command_features_on_4_3_0() {
    command_features("4.3.0").await;
}

// ---------------------------------------------------------------------------------------------
// The Arrow-native and iterator kinds of 4.0+ / 4.1+ / 4.2+, the Arrow UDTF, and column types.

const ARRAY_STRING: &str = r#"{"type":"array","elementType":"string","containsNull":true}"#;
const LONG: &str = r#""long""#;

fn kv_struct_groups() -> Vec<Group> {
    let g = |k: i64, v: &[f64]| {
        let ks = vec![k; v.len()];
        Group::of(vec![arrow::struct_batch(vec![
            ("k", longs(&ks)),
            ("v", doubles(v)),
        ])
        .unwrap()])
    };
    vec![g(1, &[1.0, 2.0]), g(2, &[10.0])]
}

fn kv_named_groups() -> Vec<Group> {
    let g = |k: i64, v: &[f64]| {
        let ks = vec![k; v.len()];
        Group::of(vec![arrow::named_batch(vec![
            ("k", longs(&ks)),
            ("v", doubles(v)),
        ])
        .unwrap()])
    };
    vec![g(1, &[1.0, 2.0]), g(2, &[10.0])]
}

/// (case, expected schema line, expected rows) for the kinds `layout` has beyond the common ones.
fn newer_kinds(layout: UdfLayout) -> Vec<(Case, &'static str, J)> {
    let kv = |k: i64, v: f64| json!([{"k": k, "v": v}]);
    let kv_rows = json!([kv(1, 1.0), kv(1, 2.0), kv(2, 10.0)]);
    let mut out = vec![];
    // Types: a tokenizer str -> array<string> with a null, and a timestamp under a non-UTC
    // session time zone. The JVM tags the Arrow column with the session zone; the worker
    // converts to it before pandas sees the value. (Run: a column tagged "UTC" gives hour 16 on
    // 3.5-4.1, which convert with the runner conf's zone, but 0 on 4.2 and 4.3, which keep the
    // column's own zone: from 4.2 the tag, not the conf, decides.)
    let text: Arc<dyn arrow_array::Array> = Arc::new(arrow_array::StringArray::from(vec![
        Some("a b"),
        Some("c"),
        None,
    ]));
    // The return type from DDL, as a scenario spells it.
    let array_string = SqlType::parse("array<string>")
        .unwrap()
        .to_json()
        .to_string();
    assert_eq!(array_string, ARRAY_STRING);
    out.push((
        arrow_case(
            layout,
            EvalType::SqlScalarPandasUdf,
            (
                "func = lambda s: s.str.split(' ')",
                Box::leak(array_string.into_boxed_str()),
            ),
            vec![0],
            vec![Group::of(
                vec![arrow::positional_batch(vec![text]).unwrap()],
            )],
        ),
        "_0: list<utf8>",
        json!([[["a", "b"]], [["c"]], [null]]),
    ));
    let ts: Arc<dyn arrow_array::Array> = Arc::new(
        arrow_array::TimestampMicrosecondArray::from(vec![0, 3_600_000_000])
            .with_timezone("America/Los_Angeles"),
    );
    out.push((
        Case {
            runner_conf: vec![(
                "spark.sql.session.timeZone".into(),
                "America/Los_Angeles".into(),
            )],
            ..arrow_case(
                layout,
                EvalType::SqlScalarPandasUdf,
                ("func = lambda t: t.dt.hour", LONG),
                vec![0],
                vec![Group::of(vec![arrow::positional_batch(vec![ts]).unwrap()])],
            )
        },
        "_0: int64",
        json!([[16], [17]]),
    ));
    let utc: Arc<dyn arrow_array::Array> = Arc::new(
        arrow_array::TimestampMicrosecondArray::from(vec![0, 3_600_000_000]).with_timezone("UTC"),
    );
    out.push((
        Case {
            runner_conf: vec![(
                "spark.sql.session.timeZone".into(),
                "America/Los_Angeles".into(),
            )],
            ..arrow_case(
                layout,
                EvalType::SqlScalarPandasUdf,
                ("func = lambda t: t.dt.hour", LONG),
                vec![0],
                vec![Group::of(vec![arrow::positional_batch(vec![utc]).unwrap()])],
            )
        },
        "_0: int64",
        if layout >= UdfLayout::Pyspark42 {
            json!([[0], [1]])
        } else {
            json!([[16], [17]])
        },
    ));
    if layout >= UdfLayout::Pyspark40 {
        let left = arrow::named_batch(vec![("k", longs(&[1, 1])), ("v", doubles(&[1.0, 2.0]))]);
        let right = arrow::named_batch(vec![("k", longs(&[1])), ("v", doubles(&[5.0]))]);
        out.push((
            arrow_case(
                layout,
                EvalType::SqlCogroupedMapArrowUdf,
                ("func = lambda l, r: l", K_V),
                vec![4, 1, 0, 0, 1, 4, 1, 0, 0, 1],
                vec![Group {
                    left: vec![left.unwrap()],
                    right: vec![right.unwrap()],
                }],
            ),
            "_0: struct<k: int64, v: double>",
            json!([kv(1, 1.0), kv(1, 2.0)]),
        ));
    }
    if layout >= UdfLayout::Pyspark41 {
        out.push((
            scalar_doubles(
                layout,
                EvalType::SqlScalarArrowIterUdf,
                "import pyarrow.compute as pc\ndef func(it):\n    for a in it:\n        yield pc.add(a, 1)\n",
            ),
            "_0: double",
            json!([[2.0], [3.5], [-2.0]]),
        ));
        out.push((
            Case {
                runner_conf: vec![(layout.window_bound_key().into(), "unbounded".into())],
                ..two_groups(
                    layout,
                    EvalType::SqlWindowAggArrowUdf,
                    "import pyarrow.compute as pc\nfunc = lambda a: pc.mean(a)",
                )
            },
            "_0: double",
            json!([[2.0], [2.0], [2.0], [15.0], [15.0]]),
        ));
        out.push((
            arrow_case(
                layout,
                EvalType::SqlGroupedMapArrowIterUdf,
                ("def func(it):\n    yield from it\n", K_V),
                vec![4, 1, 0, 0, 1],
                kv_struct_groups(),
            ),
            "_0: struct<k: int64, v: double>",
            kv_rows.clone(),
        ));
        out.push((
            arrow_case(
                layout,
                EvalType::SqlGroupedMapPandasIterUdf,
                ("def func(it):\n    yield from it\n", K_V),
                vec![4, 1, 0, 0, 1],
                kv_named_groups(),
            ),
            "_0: struct<k: int64, v: double>",
            kv_rows.clone(),
        ));
    }
    if layout >= UdfLayout::Pyspark42 {
        out.push((
            two_groups(
                layout,
                EvalType::SqlGroupedAggPandasIterUdf,
                "def func(it):\n    t = 0.0\n    for s in it:\n        t += s.sum()\n    return t\n",
            ),
            "_0: double",
            json!([[6.0], [30.0]]),
        ));
        out.push((
            two_groups(
                layout,
                EvalType::SqlGroupedAggArrowIterUdf,
                "import pyarrow.compute as pc\ndef func(it):\n    t = 0.0\n    for a in it:\n        t += pc.sum(a).as_py()\n    return t\n",
            ),
            "_0: double",
            json!([[6.0], [30.0]]),
        ));
    }
    // A bounded window: two leading offsets name the begin and end index columns (int32) the
    // JVM computes per row; here each row's window is the previous and the current row.
    let ints = |v: &[i32]| -> Arc<dyn arrow_array::Array> {
        Arc::new(arrow_array::Int32Array::from(v.to_vec()))
    };
    let batch = arrow::positional_batch(vec![
        doubles(&[1.0, 2.0, 3.0]),
        ints(&[0, 0, 1]),
        ints(&[1, 2, 3]),
    ])
    .unwrap();
    out.push((
        Case {
            runner_conf: vec![(layout.window_bound_key().into(), "bounded".into())],
            ..arrow_case(
                layout,
                EvalType::SqlWindowAggPandasUdf,
                ("func = lambda v: v.mean()", DOUBLE),
                vec![1, 2, 0],
                vec![Group::of(vec![batch])],
            )
        },
        "_0: double",
        json!([[1.0], [1.5], [2.5]]),
    ));
    if layout >= UdfLayout::Pyspark41 {
        let batch = arrow::positional_batch(vec![doubles(&[1.0, 2.0])]).unwrap();
        out.push((
            Case {
                udtf: Some(("arrow_doubler", A_B)),
                table_offsets: Some(vec![]),
                ..arrow_case(
                    layout,
                    EvalType::SqlArrowUdtf,
                    (
                        "import pyarrow as pa\nimport pyarrow.compute as pc\n\nclass func:\n    def eval(self, x):\n        yield pa.table({'a': x, 'b': pc.multiply(x, 2)})\n",
                        A_B,
                    ),
                    vec![0],
                    vec![Group::of(vec![batch])],
                )
            },
            "_0: struct<a: double, b: double>",
            json!([[{"a": 1.0, "b": 2.0}], [{"a": 2.0, "b": 4.0}]]),
        ));
    }
    // The Arrow UDTF of 3.5-4.3: Arrow in, Arrow out, the class as the handler.
    let batch = arrow::positional_batch(vec![doubles(&[1.0, 2.0])]).unwrap();
    out.push((
        Case {
            udtf: Some(("doubler", A_B)),
            input_schema: Some(IN_DOUBLE.into()),
            ..arrow_case(
                layout,
                EvalType::SqlArrowTableUdf,
                (
                    "class func:\n    def eval(self, x):\n        yield x, x * 2\n",
                    A_B,
                ),
                vec![0],
                vec![Group::of(vec![batch])],
            )
        },
        "_0: struct<a: double, b: double>",
        json!([[{"a": 1.0, "b": 2.0}], [{"a": 2.0, "b": 4.0}]]),
    ));
    out
}

async fn newer(version: &str) {
    let layout = layout_of(&env_for(version));
    let (cases, wants): (Vec<Case>, Vec<(&str, J)>) = newer_kinds(layout)
        .into_iter()
        .map(|(c, s, r)| (c, (s, r)))
        .unzip();
    let out = run_cases(version, &cases).await;
    for ((case, (schema, rows)), got) in cases.iter().zip(wants).zip(&out) {
        eprintln!("{version} {}: {got:?}", case.eval);
        assert_arrow(got, schema, rows);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_udf_kinds_and_types_on_3_5_9() {
    newer("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_udf_kinds_and_types_on_4_0_5() {
    newer("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_udf_kinds_and_types_on_4_1_4() {
    newer("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_udf_kinds_and_types_on_4_2_1() {
    newer("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn newer_udf_kinds_and_types_on_4_3_0() {
    newer("4.3.0").await;
}

// ---------------------------------------------------------------------------------------------
// How the reply is shaped around the data (PROTOCOL-UDF.md §5).

async fn reply_shapes(version: &str) {
    let layout = layout_of(&env_for(version));
    let two_batches = |v: &[f64]| {
        let b = arrow::positional_batch(vec![doubles(v)]).unwrap();
        arrow::split_batch(&b, 2)
    };
    let empty = arrow::positional_batch(vec![doubles(&[])]).unwrap();
    let no_batches = arrow::data_section(
        InputFraming::Stream,
        &empty.schema(),
        None,
        &[Group::of(vec![])],
    )
    .unwrap();
    let mut cases = vec![
        // No input batch at all: no -6 and no stream, straight to the trailer.
        Case {
            data: no_batches,
            ..arrow_case(
                layout,
                EvalType::SqlScalarPandasUdf,
                ("func = lambda v: v + 1", DOUBLE),
                vec![0],
                vec![Group::of(vec![empty.clone()])],
            )
        },
        // One batch of no rows: a -6 stream holding one batch of no rows.
        arrow_case(
            layout,
            EvalType::SqlScalarPandasUdf,
            ("func = lambda v: v + 1", DOUBLE),
            vec![0],
            vec![Group::of(vec![empty])],
        ),
        // A raise after the first output batch: the stream is ended, then -2.
        arrow_case(
            layout,
            EvalType::SqlScalarPandasIterUdf,
            (
                "def func(it):\n    for i, v in enumerate(it):\n        if i:\n            raise ValueError('second batch')\n        yield v + 1\n",
                DOUBLE,
            ),
            vec![0],
            vec![Group::of(two_batches(&[1.0, 2.0, 3.0]))],
        ),
        // maxRecordsPerBatch = 2: the input in two batches, the output too.
        arrow_case(
            layout,
            EvalType::SqlScalarPandasUdf,
            ("func = lambda v: v * 2", DOUBLE),
            vec![0],
            vec![Group::of(two_batches(&[1.0, 2.0, 3.0]))],
        ),
    ];
    if layout >= UdfLayout::Pyspark41 {
        // 4.1+ take a group split over several batches.
        cases.push(arrow_case(
            layout,
            EvalType::SqlGroupedAggPandasUdf,
            ("func = lambda v: v.mean()", DOUBLE),
            vec![0],
            vec![
                Group::of(two_batches(&[1.0, 2.0, 3.0])),
                Group::of(two_batches(&[10.0, 20.0])),
            ],
        ));
    }
    let out = run_cases(version, &cases).await;
    match &out[0] {
        Output::Arrow { schemas, rows } => {
            assert!(schemas.is_empty() && rows.is_empty(), "{out:?}")
        }
        other => panic!("expected no Arrow output, got {other:?}"),
    }
    assert_arrow(&out[1], "_0: double", json!([]));
    let out = &out[1..];
    match &out[1] {
        Output::Raised(tb, streams) => {
            assert!(tb.contains("ValueError: second batch"), "{tb}");
            assert_eq!(*streams, 1, "the first batch's stream, ended, before -2");
        }
        other => panic!("expected the worker's ValueError, got {other:?}"),
    }
    assert_arrow(&out[2], "_0: double", json!([[2.0], [4.0], [6.0]]));
    if let Output::Arrow { .. } = &out[2] {
        let batches = arrow_batches(&out[2]);
        assert_eq!(batches, 1, "one reply stream");
    }
    if layout >= UdfLayout::Pyspark41 {
        assert_arrow(&out[3], "_0: double", json!([[2.0], [15.0]]));
    }
}

fn arrow_batches(out: &Output) -> usize {
    match out {
        Output::Arrow { schemas, .. } => schemas.len(),
        _ => 0,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_reply_shapes_on_3_5_9() {
    reply_shapes("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_reply_shapes_on_4_0_5() {
    reply_shapes("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_reply_shapes_on_4_1_4() {
    reply_shapes("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_reply_shapes_on_4_2_1() {
    reply_shapes("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_reply_shapes_on_4_3_0() {
    reply_shapes("4.3.0").await;
}

// ---------------------------------------------------------------------------------------------
// Column types through a real worker untouched: mapInArrow (207) hands the batches back as they
// came, so what fakejvm writes, pyarrow reads and writes back, and fakejvm reads again must equal
// the input, nulls included.

const TYPED: &str = r#"{"type":"struct","fields":[
{"name":"b","type":"boolean","nullable":true,"metadata":{}},
{"name":"i","type":"integer","nullable":true,"metadata":{}},
{"name":"l","type":"long","nullable":true,"metadata":{}},
{"name":"d","type":"double","nullable":true,"metadata":{}},
{"name":"s","type":"string","nullable":true,"metadata":{}},
{"name":"bin","type":"binary","nullable":true,"metadata":{}},
{"name":"day","type":"date","nullable":true,"metadata":{}},
{"name":"ts","type":"timestamp","nullable":true,"metadata":{}},
{"name":"dec","type":"decimal(10,2)","nullable":true,"metadata":{}},
{"name":"words","type":{"type":"array","elementType":"string","containsNull":true},"nullable":true,"metadata":{}},
{"name":"pair","type":{"type":"struct","fields":[{"name":"id","type":"long","nullable":true,"metadata":{}},{"name":"v","type":"double","nullable":true,"metadata":{}}]},"nullable":true,"metadata":{}}]}"#;

async fn typed_identity(version: &str) {
    use arrow_schema::{DataType as T, Field, Fields, TimeUnit};
    let layout = layout_of(&env_for(version));
    let utf8_list = T::List(Arc::new(Field::new("element", T::Utf8, true)));
    let pair = T::Struct(Fields::from(vec![
        Field::new("id", T::Int64, true),
        Field::new("v", T::Float64, true),
    ]));
    let columns: Vec<(&str, T, J)> = vec![
        ("b", T::Boolean, json!([true, null, false])),
        ("i", T::Int32, json!([1, -2147483648, null])),
        ("l", T::Int64, json!([null, 9007199254740993i64, -1])),
        ("d", T::Float64, json!([1.5, -0.25, null])),
        ("s", T::Utf8, json!(["a b", null, "😀 é"])),
        (
            "bin",
            T::Binary,
            json!([{"$bytes": "00ff"}, {"$bytes": ""}, null]),
        ),
        ("day", T::Date32, json!([0, null, 19000])),
        (
            "ts",
            T::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            json!([1_700_000_000_123_456i64, null, 0]),
        ),
        (
            "dec",
            T::Decimal128(10, 2),
            json!(["1.50", null, "-12345678.90"]),
        ),
        ("words", utf8_list, json!([["a", null], [], null])),
        (
            "pair",
            pair,
            json!([{"id": 1, "v": 0.5}, null, {"id": null, "v": 2.0}]),
        ),
    ];
    let arrays: Vec<(&str, Arc<dyn arrow_array::Array>)> = columns
        .iter()
        .map(|(n, t, v)| {
            (
                *n,
                arrow::array_from_json(t, v.as_array().unwrap()).unwrap(),
            )
        })
        .collect();
    let batch = arrow::struct_batch(arrays).unwrap();
    let want: Vec<J> = (0..3)
        .map(|row| {
            let obj: serde_json::Map<String, J> = columns
                .iter()
                .map(|(n, _, v)| (n.to_string(), v[row].clone()))
                .collect();
            json!([obj])
        })
        .collect();
    let case = arrow_case(
        layout,
        EvalType::SqlMapArrowIterUdf,
        ("def func(it):\n    yield from it\n", TYPED),
        vec![0],
        vec![Group::of(vec![batch])],
    );
    let out = run_cases(version, &[case]).await;
    match &out[0] {
        Output::Arrow { rows, schemas } => {
            eprintln!("{version}: {schemas:?}");
            assert_eq!(rows, &want);
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_through_map_in_arrow_on_3_5_9() {
    typed_identity("3.5.9").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_through_map_in_arrow_on_4_0_5() {
    typed_identity("4.0.5").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_through_map_in_arrow_on_4_1_4() {
    typed_identity("4.1.4").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_through_map_in_arrow_on_4_2_1() {
    typed_identity("4.2.1").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn typed_columns_through_map_in_arrow_on_4_3_0() {
    typed_identity("4.3.0").await;
}

#[test]
fn ddl_gives_the_json_the_cases_spell_out() {
    let json = |ddl: &str| SqlType::parse(ddl).unwrap().to_json();
    let parsed = |text: &str| serde_json::from_str::<J>(text).unwrap();
    assert_eq!(json("struct<k:bigint,v:double>"), parsed(K_V));
    assert_eq!(json("id long, v double"), parsed(ID_V));
    assert_eq!(json("a double, b double"), parsed(A_B));
    assert_eq!(
        json("struct<b:boolean,i:int,l:bigint,d:double,s:string,bin:binary,day:date,ts:timestamp,dec:decimal(10,2),words:array<string>,pair:struct<id:bigint,v:double>>"),
        parsed(TYPED)
    );
}
