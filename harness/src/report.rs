//! Verdicts to text for people; reports are written atomically. The JSON report and JUnit file
//! are made in outputs.rs and junit.rs.

use crate::atomic::{self, WriteOptions};
use crate::scenario::{ScenarioReport, Status, TaskReport};
use crate::verdict::Outcome;
use serde::{Deserialize, Serialize};
use std::path::Path;

/// A task that spawned more processes than this lists the first ones only in the text report.
const MAX_PROCESS_LINES: usize = 16;

/// One line per scenario, then the details a person needs for a failure.
pub fn scenario_lines(r: &ScenarioReport) -> String {
    let tag = match &r.status {
        Status::Passed => "PASS",
        Status::Failed => "FAIL",
        Status::NotApplicable { .. } => "N/A ",
    };
    let mut out = format!(
        "{tag}  {}  [{} | pyspark {} | dialect {:?} | {:?}] {} ms",
        r.file, r.name, r.pyspark, r.dialect, r.mode, r.elapsed_ms
    );
    if let Status::NotApplicable { why } = &r.status {
        out.push_str(&format!("\n      not applicable: {why}"));
    }
    for t in &r.tasks {
        if let Some(p) = task_outcome_problem(t) {
            out.push_str(&format!("\n      task {}: {p}", t.index));
        }
        // A raw request to a worker module: what it answered (and then did) is the finding.
        if t.raw_request && t.ok {
            out.push_str(&format!(
                "\n      task {}: {}",
                t.index,
                answer_line(&t.outcome, t.worker_end.as_ref())
            ));
        }
        if let Some(n) = &t.note {
            out.push_str(&format!("\n      task {}: known behaviour, {n}", t.index));
        }
        for u in &t.stderr_unmet {
            out.push_str(&format!("\n      task {}: expect_stderr: {u}", t.index));
        }
        if let Some(u) = &t.resources {
            out.push_str(&format!("\n      task {}: used: {}", t.index, u.summary()));
            for p in u.processes.iter().take(MAX_PROCESS_LINES) {
                out.push_str(&format!("\n        {}", p.line()));
            }
            if u.processes.len() > MAX_PROCESS_LINES {
                out.push_str(&format!(
                    "\n        ... and {} more (all in the JSON report)",
                    u.processes.len() - MAX_PROCESS_LINES
                ));
            }
        }
    }
    for n in &r.notes {
        out.push_str(&format!("\n      note: {n}"));
    }
    for u in &r.stderr_unmet {
        out.push_str(&format!("\n      expect_stderr: {u}"));
    }
    if !r.faults.is_empty() {
        out.push('\n');
        out.push_str(&crate::faults::fault_lines(&r.faults));
    }
    out.push_str(&leftovers_line(&r.leftovers));
    if r.status == Status::Failed && !r.stderr_tail.is_empty() {
        out.push_str("\n      worker stderr (tail):");
        for l in r
            .stderr_tail
            .lines()
            .rev()
            .take(8)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
        {
            out.push_str(&format!("\n        {l}"));
        }
    }
    out
}

/// What was wrong with a failed task's outcome, in words ("expected X, got Y"); None when the
/// outcome was the expected one (the task may still fail its `expect_stderr` checks).
pub fn task_outcome_problem(t: &TaskReport) -> Option<String> {
    match &t.outcome {
        // A mismatch already says what was expected and what came instead.
        Outcome::Mismatch { .. } if !t.ok => Some(t.outcome.to_string()),
        // Only stderr failed: the outcome itself was the expected one.
        _ if !t.ok && t.stderr_unmet.is_empty() => {
            Some(format!("expected {}, got {}", t.expected, t.outcome))
        }
        _ => None,
    }
}

/// One line for a worker module's answer: the outcome's first line, at most 200 characters,
/// and what became of the worker.
fn answer_line(outcome: &Outcome, end: Option<&crate::scenario::WorkerEnd>) -> String {
    let text = outcome.to_string();
    // An exception without a message ("EOFError: ") reads better as its type alone.
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_end_matches([' ', ':']);
    let mut line: String = first.chars().take(200).collect();
    if line.len() < first.len() || text.lines().nth(1).is_some() {
        line.push_str(" ...");
    }
    if let Some(end) = end {
        line.push_str(&format!("; {end}"));
    }
    line
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Summary {
    pub passed: usize,
    pub failed: usize,
    pub not_applicable: usize,
}

impl Summary {
    pub fn of(reports: &[ScenarioReport]) -> Summary {
        let mut s = Summary::default();
        for r in reports {
            match r.status {
                Status::Passed => s.passed += 1,
                Status::Failed => s.failed += 1,
                Status::NotApplicable { .. } => s.not_applicable += 1,
            }
        }
        s
    }

    pub fn line(&self, pyspark: &str) -> String {
        format!(
            "{} passed, {} failed, {} not applicable (pyspark {pyspark})",
            self.passed, self.failed, self.not_applicable
        )
    }
}

/// A report, reproducer or fuzz state file: [`atomic::write_atomic`] with [`WriteOptions::REPORT`].
pub fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    atomic::write_atomic(path, bytes, WriteOptions::REPORT)
}

/// "\n      leaked processes (killed): pid cmdline; ...", or nothing when none leaked: the same
/// line for scenario and golden reports.
pub(crate) fn leftovers_line(leftovers: &[(i32, String)]) -> String {
    if leftovers.is_empty() {
        return String::new();
    }
    let l: Vec<String> = leftovers.iter().map(|(p, c)| format!("{p} {c}")).collect();
    format!("\n      leaked processes (killed): {}", l.join("; "))
}
