//! The core scenarios against a real worker of each request family (A: 4.0, B: 4.1, C: 4.2,
//! D: 4.3): map over pickled batches, textFile UTF-8, a raising task, worker reuse, TaskContext,
//! direct mode (a crash with its exit status, a hang), a daemon that cannot start, a message over
//! several lines, and (4.1+) Unix-domain sockets with direct workers under reuse; and the serialization scenarios (union, textFile
//! mixing).

mod common;
use common::*;
use fakejvm::protocol::Dialect;
use fakejvm::verdict::Outcome;
use fakejvm::worker::ExitInfo;

async fn family(version: &str, expected_dialect: Dialect, not_applicable: &[&str]) {
    let has_uds = !matches!(expected_dialect, Dialect::A);
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

    // Direct modes have no daemon: a worker that dies is WorkerCrashed with its own exit status,
    // one that hangs is a Hang, and reuse never sends a task to a worker that has exited.
    let crash = by_name(&reports, "direct_crash");
    assert!(
        matches!(
            &crash.tasks[0].outcome,
            Outcome::WorkerCrashed {
                exit: Some(ExitInfo::Code(3)),
                ..
            }
        ),
        "{}",
        crash.tasks[0].outcome
    );
    assert!(matches!(
        by_name(&reports, "direct_hang").tasks[0].outcome,
        Outcome::Hang { .. }
    ));
    if has_uds {
        let uds = by_name(&reports, "direct_uds_reuse");
        assert_ne!(
            uds.tasks[0].pid, uds.tasks[1].pid,
            "each direct task runs in a fresh worker"
        );
    }
    let dead = by_name(&reports, "daemon_cannot_start");
    assert!(
        matches!(
            &dead.tasks[0].outcome,
            Outcome::DaemonDied {
                exit: Some(ExitInfo::Code(1)),
                ..
            }
        ),
        "{}",
        dead.tasks[0].outcome
    );
    let multi = by_name(&reports, "multiline_exception");
    assert!(
        matches!(&multi.tasks[0].outcome, Outcome::PythonException { exc_type, message } if exc_type == "ValueError" && message.lines().count() == 2)
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
    family(FAMILIES[0], Dialect::A, &["uds_daemon", "direct_uds_reuse"]).await;
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
