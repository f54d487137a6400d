//! Serialization round-trips against a REAL worker (issue 3): whatever fakejvm encodes, an
//! identity function in pyspark hands back unchanged, for every input encoding, for arbitrary
//! Unicode through the textFile (UTF-8) path, and for zip's and cartesian's paired streams.
//!
//! The cases are drawn by proptest from a fixed seed (reproducible), and all cases of one
//! property run as the tasks of ONE scenario on one reused daemon connection
//! (SPARK_REUSE_WORKER): one worker start per property instead of one per case keeps the suite
//! fast. A failing task names its case index and the input that went in.
//!
//! Families A (4.0.5) and D (4.3.0) are covered: they bracket the request-format changes.

mod common;
use common::*;
use fakejvm::pickle;
use fakejvm::pyenv::PythonEnv;
use fakejvm::scenario::{self, RunOptions, Scenario, Status};
use proptest::prelude::*;
use proptest::strategy::ValueTree;
use proptest::test_runner::TestRunner;
use serde_json::{json, Value as J};
use std::path::Path;

const CASES: usize = 24;
const IDENTITY: &str = "func = lambda split, it: it";

/// Plain values in the scenario JSON form (tagged forms for tuples, bytes and big ints). Dict
/// keys avoid a leading `$`, which the JSON form reserves for tags. Floats are finite: NaN is
/// never equal to itself, so it cannot be checked by equality.
fn plain_value() -> impl Strategy<Value = J> {
    let leaf = prop_oneof![
        Just(J::Null),
        any::<bool>().prop_map(J::from),
        any::<i64>().prop_map(J::from),
        (any::<i128>(), any::<bool>()).prop_map(|(i, neg)| {
            // Beyond i64: pickled as LONG1 by CPython, a separate path from small ints.
            let big = i.unsigned_abs().saturating_add(1u128 << 64);
            json!({"$int": format!("{}{big}", if neg { "-" } else { "" })})
        }),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(J::from),
        any::<String>().prop_map(J::from),
        proptest::collection::vec(any::<u8>(), 0..40)
            .prop_map(|b| json!({"$bytes": hex::encode(b)})),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..6).prop_map(J::Array),
            proptest::collection::vec(inner.clone(), 0..6).prop_map(|v| json!({"$tuple": v})),
            proptest::collection::btree_map("[a-z]{0,6}", inner, 0..5)
                .prop_map(|m| J::Object(m.into_iter().collect())),
        ]
    })
}

/// Lines a textFile can hold, weighted toward what breaks text paths: NUL, astral-plane
/// characters, combining marks, and (sometimes) a 100k-character line.
fn text_line() -> impl Strategy<Value = Option<String>> {
    let tricky = prop_oneof![
        Just("\0".to_string()),
        Just("a\u{0}b".to_string()),
        Just("𝄞😀\u{10FFFF}".to_string()),
        Just("e\u{0301}\u{0327}\u{20DD}".to_string()),
        Just("\u{FEFF}bom\r\n\t".to_string()),
        Just("\u{FFFD}\u{200D}\u{2028}".to_string()),
    ];
    prop_oneof![
        6 => any::<String>().prop_map(Some),
        3 => proptest::collection::vec(tricky, 1..4).prop_map(|v| Some(v.concat())),
        1 => (any::<char>(), 1usize..3).prop_map(|(c, k)| Some(std::iter::repeat_n(c, 100_000 / k).collect())),
        1 => Just(None),
    ]
}

/// `CASES` draws of `strategy`, reproducible: proptest's deterministic runner, fixed seed.
fn draw<S: Strategy>(strategy: S) -> Vec<S::Value> {
    let mut runner = TestRunner::deterministic();
    (0..CASES)
        .map(|_| strategy.new_tree(&mut runner).expect("strategy").current())
        .collect()
}

/// Runs the tasks as one reused-connection scenario and fails with every failing case's input.
async fn run_cases(env: &PythonEnv, name: &str, tasks: Vec<J>) {
    let sc: Scenario = serde_json::from_value(json!({
        "name": name,
        "reuse": true,
        "deadline_ms": 60000,
        "tasks": tasks,
    }))
    .expect("scenario JSON");
    let file = Path::new("tests/roundtrip.rs");
    let report = scenario::run_scenario(env, file, &sc, &RunOptions::default()).await;
    assert!(
        report.leftovers.is_empty(),
        "{name}: leaked processes {:?}",
        report.leftovers
    );
    if report.status != Status::Passed {
        let mut msg = format!(
            "{name} on pyspark {}:\n{}\n",
            env.pyspark,
            fakejvm::report::scenario_lines(&report)
        );
        for t in report.tasks.iter().filter(|t| !t.ok) {
            let input = serde_json::to_string(&sc.tasks[t.index].input).unwrap_or_default();
            let head: String = input.chars().take(2000).collect();
            msg += &format!("case {}: {:?}\n  input: {head}\n", t.index, t.outcome);
        }
        panic!("{msg}");
    }
    assert_eq!(
        report.tasks.len(),
        sc.tasks.len(),
        "{name}: not every case ran"
    );
}

/// Identity over each pickle input encoding: batched with arbitrary sizes (incl. -1 =
/// everything in one frame), auto-batched and unbatched.
async fn identity_pickle_encodings(env: &PythonEnv) {
    let cases = draw((
        proptest::collection::vec(plain_value(), 0..40),
        prop_oneof![Just(-1i32), 1i32..9],
    ));
    let mut tasks = vec![];
    for (i, (values, size)) in cases.iter().enumerate() {
        let inputs = [
            json!({"encoding": "pickle_batched", "batch_size": size, "values": values}),
            json!({"encoding": "auto_batched", "values": values}),
            json!({"encoding": "pickle", "values": values}),
        ];
        for input in inputs {
            tasks.push(json!({"split_index": i, "function": IDENTITY, "input": input, "expect": {"values": values}}));
        }
    }
    run_cases(env, "identity_pickle_encodings", tasks).await;
}

/// Arbitrary Unicode through UTF8Deserializer (textFile) comes back unchanged, NULL as None.
async fn identity_utf8(env: &PythonEnv) {
    let cases = draw(proptest::collection::vec(text_line(), 0..12));
    let tasks = cases
        .iter()
        .enumerate()
        .map(|(i, lines)| {
            json!({"split_index": i, "function": IDENTITY,
                   "input": {"encoding": "utf8", "lines": lines}, "expect": {"values": lines}})
        })
        .collect();
    run_cases(env, "identity_utf8", tasks).await;
}

fn hex_frames(frames: &[Vec<u8>]) -> J {
    J::Array(
        frames
            .iter()
            .map(|f| json!({"hex": hex::encode(f)}))
            .collect(),
    )
}

fn to_values(js: &[J]) -> Vec<pickle::Value> {
    js.iter()
        .map(|j| pickle::value_from_json(j).expect("generated value"))
        .collect()
}

/// RDD.zip: equal-length key and value batches on one alternating stream (PairDeserializer)
/// come out as the pairs (k_i, v_i), in order.
async fn zip_pairs(env: &PythonEnv) {
    let cases = draw((1usize..30, 1i32..6).prop_flat_map(|(n, size)| {
        (
            proptest::collection::vec(plain_value(), n..=n),
            proptest::collection::vec(plain_value(), n..=n),
            Just(size),
        )
    }));
    let tasks = cases
        .iter()
        .enumerate()
        .map(|(i, (keys, vals, size))| {
            let frames = pickle::pair_frames(
                &pickle::batched_frames(&to_values(keys), *size),
                &pickle::batched_frames(&to_values(vals), *size),
            );
            let expected: Vec<J> = keys
                .iter()
                .zip(vals)
                .map(|(k, v)| json!({"$tuple": [k, v]}))
                .collect();
            let batched = json!({"kind": "batched", "size": size});
            json!({"split_index": i, "function": IDENTITY,
                   "input": {"encoding": "raw", "frames": hex_frames(&frames)},
                   "deserializer": {"kind": "pair", "key": batched, "value": batched},
                   "expect": {"values": expected}})
        })
        .collect();
    run_cases(env, "zip_pairs", tasks).await;
}

/// RDD.cartesian: every (key batch, value batch) combination (CartesianDeserializer) yields the
/// full product, key batch outer, then value batch, then key, then value.
async fn cartesian_product(env: &PythonEnv) {
    let cases = draw((
        proptest::collection::vec(plain_value(), 0..8),
        proptest::collection::vec(plain_value(), 0..8),
        1i32..4,
        1i32..4,
    ));
    let tasks = cases
        .iter()
        .enumerate()
        .map(|(i, (keys, vals, ks, vs))| {
            let kb: Vec<&[J]> = keys.chunks(*ks as usize).collect();
            let vb: Vec<&[J]> = vals.chunks(*vs as usize).collect();
            let frames = pickle::cartesian_frames(
                &pickle::batched_frames(&to_values(keys), *ks),
                &pickle::batched_frames(&to_values(vals), *vs),
            );
            let mut expected = vec![];
            for k_batch in &kb {
                for v_batch in &vb {
                    for k in k_batch.iter() {
                        for v in v_batch.iter() {
                            expected.push(json!({"$tuple": [k, v]}));
                        }
                    }
                }
            }
            json!({"split_index": i, "function": IDENTITY,
                   "input": {"encoding": "raw", "frames": hex_frames(&frames)},
                   "deserializer": {"kind": "cartesian", "key": {"kind": "batched", "size": ks},
                                    "value": {"kind": "batched", "size": vs}},
                   "expect": {"values": expected}})
        })
        .collect();
    run_cases(env, "cartesian_product", tasks).await;
}

async fn all_properties(version: &str) {
    let env = env_for(version);
    identity_pickle_encodings(&env).await;
    identity_utf8(&env).await;
    zip_pairs(&env).await;
    cartesian_product(&env).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrips_family_a_pyspark_4_0() {
    all_properties(FAMILIES[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roundtrips_family_d_pyspark_4_3() {
    all_properties(FAMILIES[3]).await;
}
