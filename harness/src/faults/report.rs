//! What each fault did, for the verdict: whether it fired, where (span and byte), what was done,
//! what became of the worker and the daemon, and the declared expectations checked against that.

use super::plan::Placement;
use serde::Serialize;

#[derive(Clone, Debug, Serialize)]
pub struct FaultReport {
    /// Index in the scenario's `faults` list.
    pub index: usize,
    /// The fault in words, e.g. "kill_worker after header".
    pub fault: String,
    /// The task it acted on (None for launch faults).
    pub task: Option<usize>,
    pub placement: Option<Placement>,
    pub fired: bool,
    /// What happened, in order.
    pub events: Vec<String>,
    /// What became of the task's worker, once the task was over.
    pub worker: Option<String>,
    pub daemon: Option<String>,
    /// The end of what the daemon and its workers wrote to stderr during the task.
    pub stderr_tail: String,
    pub checks: Vec<Check>,
    /// Fired, performed as declared, and every check held.
    pub ok: bool,
    /// Why it is not ok, in words.
    pub problem: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct Check {
    pub what: String,
    pub expected: String,
    pub observed: String,
    pub ok: bool,
}

impl FaultReport {
    pub fn new(index: usize, fault: String, task: Option<usize>) -> FaultReport {
        FaultReport {
            index,
            fault,
            task,
            placement: None,
            fired: false,
            events: vec![],
            worker: None,
            daemon: None,
            stderr_tail: String::new(),
            checks: vec![],
            ok: false,
            problem: None,
        }
    }

    /// Sets `ok` and `problem` from what is recorded; `error` is a failure to perform the fault.
    pub fn settle(&mut self, error: Option<String>) {
        let failed: Vec<String> = self
            .checks
            .iter()
            .filter(|c| !c.ok)
            .map(|c| format!("{}: expected {}, saw {}", c.what, c.expected, c.observed))
            .collect();
        self.problem = if !self.fired {
            Some(error.unwrap_or_else(|| "never fired".into()))
        } else if let Some(e) = error {
            Some(format!("not performed as declared: {e}"))
        } else if !failed.is_empty() {
            Some(failed.join("; "))
        } else {
            None
        };
        self.ok = self.problem.is_none();
    }
}

/// Text for people: one header line per fault, then its events, fates, checks and stderr tail,
/// indented to sit under a scenario line of `report::scenario_lines`.
pub fn fault_lines(reports: &[FaultReport]) -> String {
    let mut out = String::new();
    for r in reports {
        let state = match (r.ok, r.fired) {
            (true, _) => "ok",
            (false, true) => "FAILED",
            (false, false) => "NOT FIRED",
        };
        let mut head = format!("      fault #{} {}", r.index, r.fault);
        if let Some(t) = r.task {
            head.push_str(&format!(" [task {t}"));
            if let Some(p) = &r.placement {
                head.push_str(&format!(
                    ", span {} +{}, request byte {}",
                    super::spec::span_name(p.span),
                    p.offset_in_span,
                    p.byte
                ));
            }
            head.push(']');
        }
        out.push_str(&format!("{head}: {state}\n"));
        for e in &r.events {
            out.push_str(&format!("        {e}\n"));
        }
        let mut fates = vec![];
        if let Some(w) = &r.worker {
            fates.push(format!("worker {w}"));
        }
        if let Some(d) = &r.daemon {
            fates.push(format!("daemon {d}"));
        }
        if !fates.is_empty() {
            out.push_str(&format!("        then: {}\n", fates.join("; ")));
        }
        for c in &r.checks {
            out.push_str(&format!(
                "        check {}: expected {}, saw {} ({})\n",
                c.what,
                c.expected,
                c.observed,
                if c.ok { "ok" } else { "FAILED" }
            ));
        }
        if let Some(p) = &r.problem {
            out.push_str(&format!("        problem: {p}\n"));
        }
        let tail: Vec<&str> = r
            .stderr_tail
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        if !tail.is_empty() {
            out.push_str("        stderr:\n");
            for l in &tail[tail.len().saturating_sub(4)..] {
                out.push_str(&format!("          {l}\n"));
            }
        }
    }
    out.trim_end().to_string()
}
