//! The lifecycle suite (scenarios/lifecycle) against real workers of families A (4.0.5) to D
//! (4.3.0): the shim's syscall faults inside the worker and the daemon (send/recv/close, accept,
//! select/poll), descriptor pressure (1,100 inherited descriptors, a low RLIMIT_NOFILE) and a
//! forked child held before its pid, each with its checked outcome; every fault fired, and no
//! process of the suite is left, stopped children included.
//!
//! `FAKEJVM_LIFECYCLE_FILTER=<substring>` runs only the scenarios whose file name contains it.

mod common;
use common::*;
use fakejvm::faults::{Event, Observed};
use fakejvm::scenario::ScenarioReport;
use fakejvm::verdict::Outcome;

const SUITE: Suite = Suite {
    dir: "scenarios/lifecycle",
    filter_var: "FAKEJVM_LIFECYCLE_FILTER",
};

fn named<'a>(reports: &'a [ScenarioReport], name: &str) -> Option<&'a ScenarioReport> {
    SUITE.named(reports, name)
}

async fn suite(version: &str, not_applicable: &[&str]) -> Vec<ScenarioReport> {
    SUITE.run(version, not_applicable).await
}

/// The facts the issue asks the reports to state, beyond "passed".
fn common_checks(reports: &[ScenarioReport]) {
    // A failed call is reported with the call, its ordinal and errno, then what the worker did.
    if let Some(r) = named(reports, "syscall_send_eio_direct") {
        let events = &r.faults[0].events;
        assert!(
            events.iter().any(|e| matches!(e, Event::CallFailed { call, ordinal: 3, errno: 5, .. } if call == "send")),
            "{events:?}"
        );
        assert!(
            events.iter().any(|e| matches!(
                e,
                Event::TaskThen {
                    worker: Some(Observed::Ended { exit: Some(_) }),
                    ..
                }
            )),
            "a direct worker's exit status is known: {events:?}"
        );
        assert!(!r.faults[0].stderr_tail.is_empty());
    }
    // The byte schedule ends exactly at its count: that many reply bytes reached fakejvm.
    if let Some(r) = named(reports, "syscall_send_enospc_after_bytes") {
        assert!(
            matches!(r.tasks[0].outcome, Outcome::Hang { at_byte: 40, .. }),
            "{:?}",
            r.tasks[0].outcome
        );
    }
    // 1,100 inherited descriptors: the daemon's sockets are numbered past them.
    if let Some(r) = named(reports, "fds_1100_inherited") {
        assert!(
            r.faults[0].events.iter().any(|e| matches!(
                e,
                Event::FdsFilled {
                    below: 1100,
                    failed: 0,
                    ..
                }
            )),
            "{:?}",
            r.faults[0].events
        );
    }
    // The stopped child never wrote its pid (a Hang at connect_timeout_ms), the next task ran,
    // and the kernel continued the child when the daemon's exit orphaned its group.
    if let Some(r) = named(reports, "child_stopped_before_pid") {
        assert!(
            matches!(r.tasks[0].outcome, Outcome::Hang { after_ms: 2000, .. }),
            "{:?}",
            r.tasks[0].outcome
        );
        assert!(r.tasks[1].ok);
    }
    // The sleeping child outlived the daemon: reported by pid and command line, then killed.
    if let Some(r) = named(reports, "child_stalled_past_shutdown") {
        assert!(
            r.faults[0].events.iter().any(|e| matches!(
                e,
                Event::SurvivedShutdown { cmdline, gone: true, .. } if cmdline.contains("pyspark.daemon")
            )),
            "{:?}",
            r.faults[0].events
        );
    }
    resource_checks(reports);
}

/// 4.1 and older wait with select(), 4.2+ with poll(): each scenario applies to its side only.
const SELECT_ONLY: &[&str] = &["syscall_poll_emfile_daemon", "syscall_poll_eintr_daemon"];
const POLL_ONLY: &[&str] = &["syscall_select_emfile_daemon"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_suite_family_a_pyspark_4_0() {
    common_checks(&suite(FAMILIES[0], SELECT_ONLY).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_suite_family_b_pyspark_4_1() {
    common_checks(&suite(FAMILIES[1], SELECT_ONLY).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_suite_family_c_pyspark_4_2() {
    common_checks(&suite(FAMILIES[2], POLL_ONLY).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lifecycle_suite_family_d_pyspark_4_3() {
    common_checks(&suite(FAMILIES[3], POLL_ONLY).await);
}

/// Issue 13 part 9: what each task's worker used is in its verdict; a pool of four is caught by
/// `expect_resources`, and a process left behind is reported and killed. Counts, never timings:
/// the sampler reads /proc every few ms, so a process is seen as long as it lives a moment.
fn resource_checks(reports: &[ScenarioReport]) {
    use fakejvm::worker::resources::Limit;
    for r in reports.iter().filter(|r| r.name.starts_with("resources_")) {
        for t in &r.tasks {
            let u = t
                .resources
                .as_ref()
                .expect("every connected task has figures");
            assert_eq!(Some(u.pid), t.pid, "{}: the worker measured", r.name);
            assert!(
                u.samples >= 2 && u.peak_rss_kib > 0 && u.peak_threads >= 1,
                "{u:?}"
            );
        }
    }
    if let Some(r) = named(reports, "resources_pool_of_four") {
        let (t, u) = (&r.tasks[0], r.tasks[0].resources.as_ref().unwrap());
        match &t.outcome {
            Outcome::ResourceExceeded {
                exceeded,
                processes,
                reply,
            } => {
                assert_eq!(**reply, Outcome::Passed, "the pool's task itself completed");
                assert_eq!(exceeded.len(), 1, "{exceeded:?}");
                assert_eq!((exceeded[0].what, exceeded[0].limit), (Limit::Processes, 0));
                assert!((1..=4).contains(&processes.len()), "{processes:?}");
            }
            other => panic!("expected ResourceExceeded, got {other}"),
        }
        // The pool's processes are the worker's children and were closed with the pool.
        assert!(
            u.processes.iter().all(|p| p.ppid == u.pid && !p.outlived),
            "{:?}",
            u.processes
        );
        assert!(r.tasks[1].resources.as_ref().unwrap().processes.is_empty());
    }
    if let Some(r) = named(reports, "resources_process_left_behind") {
        let u = r.tasks[0].resources.as_ref().unwrap();
        let sleep = u.processes.iter().find(|p| p.cmdline.contains("sleep 300"));
        assert!(
            sleep.is_some_and(|p| p.outlived && p.killed),
            "{:?}",
            u.processes
        );
        assert!(
            matches!(&r.tasks[0].outcome, Outcome::LeakedProcess { processes } if processes.len() == 1),
            "{:?}",
            r.tasks[0].outcome
        );
    }
}
