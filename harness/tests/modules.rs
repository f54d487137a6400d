//! The worker-module suite (scenarios/modules) against real workers of families A (4.0.5) to D
//! (4.3.0): every worker module the installed pyspark ships, each its own report row, each
//! held to the contract it owes the JVM (connect back or be forked, authenticate, send its
//! pid, answer a request it cannot use with a clean -2 traceback, exit), with each version's
//! and module's known behaviour stated; no process of the suite is left.
//!
//! `FAKEJVM_MODULES_FILTER=<substring>` runs only the scenarios whose file name contains it.

mod common;
use common::*;
use fakejvm::pyenv;
use fakejvm::scenario::{ScenarioReport, WorkerEnd};
use fakejvm::verdict::Outcome;
use fakejvm::worker::ExitInfo;

const SUITE: Suite = Suite {
    dir: "scenarios/modules",
    filter_var: "FAKEJVM_MODULES_FILTER",
};

/// The facts the suite exists to show, beyond "passed".
fn checks(version: &str, reports: &[ScenarioReport]) {
    let env = env_for(version);
    let listed = pyenv::worker_modules(&env, "pyspark").unwrap().modules;
    let direct: Vec<&ScenarioReport> = reports
        .iter()
        .filter(|r| r.name.starts_with("direct_contract["))
        .collect();
    if direct.is_empty() {
        return; // filtered out
    }
    // One row per module the installed pyspark has, named by it: nothing listed by hand.
    let ran: Vec<&str> = direct
        .iter()
        .map(|r| r.worker_module.as_deref().unwrap())
        .collect();
    assert_eq!(ran, listed, "pyspark {version}");
    for r in &direct {
        assert_eq!(
            r.name,
            format!("direct_contract[{}]", r.worker_module.as_deref().unwrap())
        );
    }
    // A planner module: connected back with the secret, wrote its own pid, answered the wrong
    // Python version with -2 at once (the connection still open) and exited 255.
    let udtf = SUITE
        .named(reports, "direct_contract[pyspark.sql.worker.analyze_udtf]")
        .unwrap();
    assert!(
        udtf.notes
            .iter()
            .any(|n| n.contains("connected back") && n.contains("its own")),
        "{:?}",
        udtf.notes
    );
    let t = &udtf.tasks[1];
    assert!(
        matches!(&t.outcome, Outcome::PythonException { message, .. } if message.contains("PYTHON_VERSION_MISMATCH")),
        "{:?}",
        t.outcome
    );
    assert_eq!(
        t.worker_end,
        Some(WorkerEnd::Exited {
            exit: ExitInfo::Code(255)
        })
    );
    // 4.1's filter-pushdown module never writes its pid: the -2 of its timeout traceback
    // arrives where the pid belongs.
    if version == "4.1.4" {
        let r = SUITE
            .named(
                reports,
                "direct_contract[pyspark.sql.worker.data_source_pushdown_filters]",
            )
            .unwrap();
        assert!(
            matches!(&r.tasks[0].outcome, Outcome::ProtocolViolation { what, .. } if what.contains("pid was -2")),
            "{:?}",
            r.tasks[0].outcome
        );
    }
    // The daemon route: the same module forked by pyspark.daemon, gone after its answer.
    if let Some(d) = SUITE.named(reports, "daemon_contract[pyspark.sql.worker.analyze_udtf]") {
        assert!(
            d.notes.iter().any(|n| n.contains("the daemon forked")),
            "{:?}",
            d.notes
        );
        assert_eq!(d.tasks[0].worker_end, Some(WorkerEnd::Gone));
    }
}

async fn suite(version: &str) {
    let reports = SUITE.run(version, &[]).await;
    checks(version, &reports);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_suite_family_a_pyspark_4_0() {
    suite(FAMILIES[0]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_suite_family_b_pyspark_4_1() {
    suite(FAMILIES[1]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_suite_family_c_pyspark_4_2() {
    suite(FAMILIES[2]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modules_suite_family_d_pyspark_4_3() {
    suite(FAMILIES[3]).await;
}
