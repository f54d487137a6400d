//! The lifecycle suite (scenarios/lifecycle) against real workers of families A (4.0.5) to D
//! (4.3.0): the shim's syscall faults inside the worker and the daemon (send/recv/close, accept,
//! select/poll), descriptor pressure (1,100 inherited descriptors, a low RLIMIT_NOFILE) and a
//! forked child held before its pid, each with its checked outcome; every fault fired, and no
//! process of the suite is left, stopped children included.
//!
//! `FAKEJVM_LIFECYCLE_FILTER=<substring>` runs only the scenarios whose file name contains it.

mod common;
use common::*;
use fakejvm::faults::{fault_lines, Event, Observed};
use fakejvm::scenario::{self, RunOptions, Scenario, ScenarioReport, Status};
use fakejvm::verdict::Outcome;
use std::time::{Duration, Instant};

fn filter() -> String {
    std::env::var("FAKEJVM_LIFECYCLE_FILTER").unwrap_or_default()
}

async fn run_suite(version: &str) -> Vec<ScenarioReport> {
    let env = env_for(version);
    let files = scenario::collect_files(&[repo_root().join("scenarios/lifecycle")])
        .expect("scenarios/lifecycle");
    let chosen: Vec<_> = files
        .iter()
        .filter(|f| f.to_string_lossy().contains(&filter()))
        .collect();
    assert!(
        !chosen.is_empty(),
        "FAKEJVM_LIFECYCLE_FILTER={:?} matches none of the {} lifecycle scenarios",
        filter(),
        files.len()
    );
    let mut out = vec![];
    for f in chosen {
        let s = Scenario::load(f).unwrap_or_else(|e| panic!("{e}"));
        let r = scenario::run_scenario(&env, f, &s, &RunOptions::default()).await;
        eprintln!("{}", fakejvm::report::scenario_lines(&r));
        if !r.faults.is_empty() {
            eprintln!("{}", fault_lines(&r.faults));
        }
        out.push(r);
    }
    out
}

/// Every pid the reports name (daemons, task workers, children a fault held) and every process
/// in a daemon's group is gone; a stopped process counts as alive.
fn assert_nothing_left(reports: &[ScenarioReport]) {
    let groups: Vec<i32> = reports.iter().filter_map(|r| r.daemon_pid).collect();
    let mut pids: Vec<i32> = reports
        .iter()
        .flat_map(|r| r.tasks.iter().filter_map(|t| t.pid))
        .collect();
    for r in reports {
        for f in &r.faults {
            for e in &f.events {
                if let Event::ChildHeld { pid, .. } | Event::CallFailed { pid, .. } = e {
                    pids.push(*pid);
                }
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let alive: Vec<String> = std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
            .filter_map(|pid| {
                let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
                let rest: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
                let (state, pgrp) = (rest.first()?.to_string(), rest.get(2)?.parse::<i32>().ok()?);
                let ours = groups.contains(&pgrp) || pids.contains(&pid);
                (ours && state != "Z").then(|| format!("pid {pid} group {pgrp} state {state}"))
            })
            .collect();
        if alive.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "processes of the lifecycle suite are still alive: {alive:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn named<'a>(reports: &'a [ScenarioReport], name: &str) -> Option<&'a ScenarioReport> {
    let found = reports.iter().find(|r| r.name == name);
    assert!(
        found.is_some() || !filter().is_empty(),
        "no scenario named {name}"
    );
    found
}

async fn suite(version: &str, not_applicable: &[&str]) -> Vec<ScenarioReport> {
    let reports = run_suite(version).await;
    assert_nothing_left(&reports);
    let mut problems = vec![];
    for r in &reports {
        if !r.leftovers.is_empty() {
            problems.push(format!("{} leaked processes: {:?}", r.name, r.leftovers));
        }
        match &r.status {
            Status::Passed if not_applicable.contains(&r.name.as_str()) => {
                problems.push(format!("{} ran but was expected N/A", r.name))
            }
            Status::NotApplicable { why } if !not_applicable.contains(&r.name.as_str()) => {
                problems.push(format!("{} was N/A: {why}", r.name))
            }
            Status::Failed => problems.push(format!(
                "{}\n{}",
                fakejvm::report::scenario_lines(r),
                fault_lines(&r.faults)
            )),
            _ => {}
        }
        for f in &r.faults {
            if !(f.fired && f.ok) {
                problems.push(format!("{}: fault #{} {:?}", r.name, f.index, f.problem));
            }
        }
    }
    assert!(
        problems.is_empty(),
        "pyspark {version}: {} problem(s):\n{}",
        problems.len(),
        problems.join("\n")
    );
    reports
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
