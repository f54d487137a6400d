//! A worker that stops reading its input can never hang a scenario: the request writer has the
//! task's deadline too (issue 10). A real pyspark worker runs a function that sleeps without
//! touching its iterator while fakejvm writes 32 MiB of input, far more than the socket buffers
//! hold, so the writer blocks. Without a deadline on the writer, the second case (fakejvm also
//! stopped reading, SHUT_RD) never ended: nothing told the blocked writer to give up.

mod common;
use common::*;
use fakejvm::scenario::{self, RunOptions, Scenario, Status};
use fakejvm::verdict::Outcome;
use serde_json::json;
use std::path::Path;
use std::time::Duration;

/// Bounds the whole scenario only so that a regression fails instead of blocking the suite; the
/// scenario's own deadline (3 s) is what ends it.
const OUTER_LIMIT: Duration = Duration::from_secs(180);

fn scenario(faults: serde_json::Value, expect: &str) -> Scenario {
    let line = json!({"repeat": "x", "times": 256 * 1024});
    let sc = json!({
        "description": "the function sleeps without reading its input while 32 MiB are written",
        "deadline_ms": 3000,
        "faults": faults,
        "tasks": [{
            "function": "import time\nfunc = lambda split, it: (time.sleep(3600), it)[1]",
            "input": {"encoding": "utf8", "lines": vec![line; 128]},
            "expect": {"outcome": expect}
        }]
    });
    Scenario::parse(&sc.to_string()).unwrap_or_else(|e| panic!("{e}"))
}

async fn run(sc: &Scenario) -> scenario::ScenarioReport {
    let env = env_for(FAMILIES[0]);
    let file = Path::new("worker_stops_reading.json");
    tokio::time::timeout(
        OUTER_LIMIT,
        scenario::run_scenario(&env, file, sc, &RunOptions::default()),
    )
    .await
    .expect("the scenario ended by its own deadline")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_worker_that_stops_reading_is_a_hang_at_the_deadline() {
    let r = run(&scenario(json!([]), "Hang")).await;
    eprintln!("{}", fakejvm::report::scenario_lines(&r));
    assert!(r.leftovers.is_empty(), "leaked: {:?}", r.leftovers);
    assert_eq!(
        r.status,
        Status::Passed,
        "{}",
        fakejvm::report::scenario_lines(&r)
    );
    assert!(
        matches!(r.tasks[0].outcome, Outcome::Hang { .. }),
        "{:?}",
        r.tasks[0].outcome
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn after_fakejvm_stops_reading_too_the_task_still_ends_by_its_deadline() {
    let faults =
        json!([{"kind": "half_close", "at": {"before": "header"}, "direction": "from_worker"}]);
    let r = run(&scenario(faults, "WorkerCrashed")).await;
    eprintln!("{}", fakejvm::report::scenario_lines(&r));
    assert!(r.leftovers.is_empty(), "leaked: {:?}", r.leftovers);
    // The reader stopped at the fault (SHUT_RD), the writer at the deadline, so the task ended.
    // Which outcome the fault's fate check then gives depends on whether the sleeping worker
    // was seen to end within its grace (faults::FATE_GRACE); either names the task's end.
    let t = &r.tasks[0];
    assert!(
        matches!(&t.outcome, Outcome::WorkerCrashed { detail, .. } if detail.contains("SHUT_RD"))
            || matches!(t.outcome, Outcome::Hang { .. }),
        "{:?}",
        t.outcome
    );
}
