//! scenarios/udf against real workers of every pinned version (issue 11): each UDF kind the
//! version has, from the scenario files, as `fakejvm run scenarios/udf` runs them. Kinds a
//! version lacks are N/A for the reason the file's `requires` gives.

mod common;
use common::*;
use fakejvm::verdict::Outcome;

async fn udf_suite(version: &str, not_applicable: &[&str]) {
    let env = env_for(version);
    let reports = run_dir(&env, "scenarios/udf").await;
    assert_all_passed(&reports, not_applicable);

    // Worker reuse holds for UDF tasks: the seeds' workloads ran on one worker.
    for name in ["grouped_agg_mean", "pandas_tokenizer"] {
        let r = by_name(&reports, name);
        assert_eq!(r.tasks[0].pid, r.tasks[1].pid, "{name}: not reused");
    }
    // A raising UDF is the typed PythonException, with the worker's own type.
    let raises = by_name(&reports, "udf_raises");
    assert!(
        matches!(&raises.tasks[0].outcome, Outcome::PythonException { exc_type, .. } if exc_type == "ValueError"),
        "{}",
        raises.tasks[0].outcome
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_on_3_5_9() {
    udf_suite(
        "3.5.9",
        &[
            "arrow_udfs",
            "arrow_udtf",
            "cogroup_arrow",
            "grouped_framing_change",
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_on_4_0_5() {
    udf_suite(
        "4.0.5",
        &["arrow_udfs", "arrow_udtf", "grouped_framing_change"],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_on_4_1_4() {
    udf_suite("4.1.4", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_on_4_2_1() {
    udf_suite("4.2.1", &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn udf_scenarios_on_4_3_0() {
    udf_suite("4.3.0", &[]).await;
}
