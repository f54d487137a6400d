//! The core scenarios against a real worker of each request family (A: 4.0, B: 4.1, C: 4.2,
//! D: 4.3): map over pickled batches, textFile UTF-8, a raising task, worker reuse, TaskContext,
//! direct mode and (4.1+) Unix-domain sockets; and the serialization scenarios (union, textFile
//! mixing).

mod common;
use common::*;
use fakejvm::protocol::Dialect;
use fakejvm::verdict::Outcome;

async fn family(version: &str, expected_dialect: Dialect, not_applicable: &[&str]) {
    let env = env_for(version);
    let reports = run_dir(&env, "scenarios/core").await;
    // Union and textFile deserializer mixing: same expectations in every family.
    assert_all_passed(&run_dir(&env, "scenarios/serialization").await, &[]);
    for r in &reports {
        assert_eq!(r.dialect, expected_dialect, "{}", r.name);
    }
    assert_all_passed(&reports, not_applicable);

    // The raising task is a typed PythonException, not just "a failure".
    let raises = by_name(&reports, "raises");
    assert!(
        matches!(&raises.tasks[0].outcome, Outcome::PythonException { exc_type, .. } if exc_type == "ZeroDivisionError")
    );

    // Both reused tasks ran in one worker process.
    let reuse = by_name(&reports, "reuse_two_tasks");
    assert_eq!(reuse.tasks.len(), 2);
    assert_eq!(
        reuse.tasks[0].pid, reuse.tasks[1].pid,
        "the second task must reuse the first task's worker"
    );

    // The resources quirk is stated for the versions that have it, and only for them.
    let ctx = by_name(&reports, "task_context");
    let note = ctx.tasks[0].note.clone().unwrap_or_default();
    let has_quirk = matches!(expected_dialect, Dialect::A | Dialect::B);
    assert_eq!(
        note.contains("only the last resource survives"),
        has_quirk,
        "pyspark {version}: note {note:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_a_pyspark_4_0() {
    family(FAMILIES[0], Dialect::A, &["uds_daemon"]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_b_pyspark_4_1() {
    family(FAMILIES[1], Dialect::B, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_c_pyspark_4_2() {
    family(FAMILIES[2], Dialect::C, &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn family_d_pyspark_4_3() {
    family(FAMILIES[3], Dialect::D, &[]).await;
}
