//! `expect_stderr`: what the daemon and its workers wrote to stderr, and a worker's faulthandler
//! dump, against what a scenario expects.
//!
//! stderr reaches fakejvm through a pipe drained on its own task, so a line the worker wrote
//! just before its reply may still be in the pipe when the reply is in: a task's `contains` is
//! waited for up to a limit (never a fixed sleep), while `not_contains` judges what arrived by
//! then. The scenario-level expectation is checked after shutdown, when every drain has ended.

use super::model::StderrExpect;
use crate::worker::Workers;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long a task's expected stderr text or faulthandler dump is waited for.
const ARRIVAL_LIMIT: Duration = Duration::from_secs(2);

/// What of `e` the text does not satisfy, one line each (empty: all met). `whose` names the
/// stream for the messages ("task 0's worker", "the daemon and its workers").
pub(super) fn unmet(text: &str, e: &StderrExpect, whose: &str) -> Vec<String> {
    let mut out = vec![];
    for t in &e.contains {
        if !text.contains(t.as_str()) {
            out.push(format!("{whose} stderr does not contain {t:?}"));
        }
    }
    for t in &e.not_contains {
        if text.contains(t.as_str()) {
            out.push(format!("{whose} stderr contains {t:?}"));
        }
    }
    out
}

/// One task's expectation: stderr written since byte `mark` of the workers' stderr, and the
/// faulthandler dump `<dir>/<pid>` of its worker.
pub(super) async fn unmet_for_task(
    workers: &Workers,
    mark: usize,
    e: &StderrExpect,
    task: usize,
    pid: Option<i32>,
    faulthandler_dir: Option<&Path>,
) -> Vec<String> {
    let since = |w: &Workers| {
        let all = w.stderr();
        String::from_utf8_lossy(all.get(mark..).unwrap_or_default()).into_owned()
    };
    let until = Instant::now() + ARRIVAL_LIMIT;
    let whose = format!("task {task}'s");
    let mut problems = unmet(&since(workers), e, &whose);
    while problems.iter().any(|p| p.contains("does not contain")) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(20)).await;
        problems = unmet(&since(workers), e, &whose);
    }
    if let Some(want) = &e.faulthandler_contains {
        match (pid, faulthandler_dir) {
            (Some(pid), Some(dir)) => {
                let file = dir.join(pid.to_string());
                let mut dump = String::new();
                loop {
                    dump = std::fs::read_to_string(&file).unwrap_or(dump);
                    if dump.contains(want.as_str()) || Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                if !dump.contains(want.as_str()) {
                    problems.push(if dump.is_empty() {
                        format!("task {task}'s worker {pid} left no faulthandler dump ({}): it did not die by a fatal signal, or exited cleanly and removed it", file.display())
                    } else {
                        format!("task {task}'s faulthandler dump does not contain {want:?}: {}", dump.lines().next().unwrap_or(""))
                    });
                }
            }
            _ => problems.push(format!(
                "task {task}: no worker pid to find its faulthandler dump by"
            )),
        }
    }
    problems
}
