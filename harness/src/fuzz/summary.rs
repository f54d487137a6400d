//! `summary.json` and the terminal lines at the end of a campaign: this run's figures and all
//! runs' together, the seeds, the findings (newest marked), and what was left behind.

use super::exec::ExecMode;
use super::seeds::SeedReport;
use super::state::{ExpectedRecord, NotConfirmedRecord, State};
use crate::error::HarnessError;
use crate::protocol::Dialect;
use serde::Serialize;
use std::collections::{BTreeMap, HashSet};
use std::path::Path;

pub const SUMMARY_FILE: &str = "summary.json";
/// The most frequent clean outcomes the summary lists.
const EXPECTED_SHOWN: usize = 30;

#[derive(Clone, Debug, Default, Serialize)]
pub struct Figures {
    pub execs: u64,
    pub elapsed_ms: u64,
    pub execs_per_sec: f64,
    pub minimise_runs: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct FindingSummary {
    pub id: String,
    pub signature: String,
    pub count: u64,
    pub file: String,
    pub minimised: bool,
    pub flaky: bool,
    pub len: usize,
    pub new: bool,
    /// A native crash: the first lines of its reproducer's native stack.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub native_stack: Vec<String>,
    /// A native crash whose reproducer has no native stack: why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub native_stack_missing: Option<String>,
}

#[derive(Clone, Debug, Serialize)]
pub struct CampaignSummary {
    pub fakejvm: &'static str,
    pub out: String,
    pub pyspark: String,
    pub python: String,
    pub dialect: Dialect,
    pub mode: ExecMode,
    pub jobs: usize,
    /// This run, then all runs of this --out together.
    pub run: Figures,
    pub total: Figures,
    pub resumed: bool,
    pub seeds: SeedReport,
    pub corpus: usize,
    pub daemon_restarts: u64,
    pub harness_errors: u64,
    pub findings: Vec<FindingSummary>,
    pub new_findings: usize,
    /// The most frequent clean outcomes (expected exceptions and passes).
    pub expected: Vec<ExpectedRecord>,
    /// Processes of ours alive after the campaign's shutdown (then killed): must be empty.
    pub leftover_processes: Vec<(i32, String)>,
    /// Processes of the daemon's group that outlived their case with no case known (killed).
    pub unattributed_leaks: Vec<(i32, String)>,
    /// Persistent and warm-fork campaigns: what the fork server did not reproduce (dropped).
    pub not_confirmed: NotConfirmed,
    /// Persistent campaigns: why servers recycled themselves (or were discarded), with counts.
    pub recycles: BTreeMap<String, u64>,
    /// Persistent campaigns: servers started in this run.
    pub servers_started: u64,
    /// The daemons this run started (pid = process group id), for checking that nothing of
    /// theirs is left.
    pub daemon_pgids: Vec<i32>,
    /// This run's applied mutations by kind (`arrow.*`: Arrow streams, `udf.*`: UDF command
    /// fields, `field.*`: header fields, the rest by frame): which mutators a run used.
    pub mutations: BTreeMap<String, u64>,
    /// Why the campaign stopped early, if it did.
    pub aborted: Option<String>,
    /// With --coverage or --coverage-blind: lines of pyspark reached, per file, over time.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub coverage: Option<super::coverage::CoverageSummary>,
}

/// Findings of another executor that the fork server did not reproduce.
#[derive(Clone, Debug, Default, Serialize)]
pub struct NotConfirmed {
    /// Cases.
    pub cases: u64,
    pub signatures: Vec<NotConfirmedRecord>,
}

impl CampaignSummary {
    /// A few lines for the terminal.
    pub fn text(&self) -> String {
        let mut s = format!(
            "fuzz: pyspark {} | dialect {:?} | {} x{} | {} execs in {:.1} s = {:.0} execs/s | corpus {} | {} finding(s), {} new{}\n",
            self.pyspark,
            self.dialect,
            self.mode.name(),
            self.jobs,
            self.run.execs,
            self.run.elapsed_ms as f64 / 1000.0,
            self.run.execs_per_sec,
            self.corpus,
            self.findings.len(),
            self.new_findings,
            if self.resumed { format!(" (resumed: {} execs in total)", self.total.execs) } else { String::new() },
        );
        s.push_str(&format!(
            "  seeds: {} built-in, {} scenario task(s), {} golden request(s)\n",
            self.seeds.builtin, self.seeds.scenario_tasks, self.seeds.golden_requests
        ));
        // Goldens of other request families are left out by design: one line for all of them.
        if !self.seeds.other_dialect.is_empty() {
            s.push_str(&format!(
                "    left out: {} golden(s) recorded in other dialects\n",
                self.seeds.other_dialect.len()
            ));
        }
        if !self.mutations.is_empty() {
            let family = |prefix: &str| {
                let of: Vec<u64> = self
                    .mutations
                    .iter()
                    .filter(|(k, _)| k.starts_with(prefix))
                    .map(|(_, n)| *n)
                    .collect();
                format!(
                    "{} {} in {} kind(s)",
                    prefix.trim_end_matches('.'),
                    of.iter().sum::<u64>(),
                    of.len()
                )
            };
            s.push_str(&format!(
                "  mutations: {} applied ({}, {}; by kind in summary.json)\n",
                self.mutations.values().sum::<u64>(),
                family("arrow."),
                family("udf."),
            ));
        }
        let rest = &self.seeds.skipped;
        for why in rest.iter().take(8) {
            s.push_str(&format!("    left out: {why}\n"));
        }
        if rest.len() > 8 {
            s.push_str(&format!(
                "    left out: {} more (see summary.json)\n",
                rest.len() - 8
            ));
        }
        for f in &self.findings {
            let state = if f.flaky {
                "flaky"
            } else if f.minimised {
                "minimised"
            } else {
                "raw"
            };
            s.push_str(&format!(
                "  {:>6}x  {}  [{} {} B]  {}\n",
                f.count, f.file, state, f.len, f.signature
            ));
            for line in &f.native_stack {
                s.push_str(&format!("           native  {line}\n"));
            }
            if let Some(why) = &f.native_stack_missing {
                s.push_str(&format!("           native  stack missing: {why}\n"));
            }
        }
        if self.mode.needs_confirmation() {
            s.push_str(&format!(
                "  not confirmed: {} (case(s) of {} signature(s) the fork server did not reproduce; dropped)\n",
                self.not_confirmed.cases,
                self.not_confirmed.signatures.len()
            ));
            for r in self.not_confirmed.signatures.iter().take(5) {
                s.push_str(&format!(
                    "  {:>6}x  not confirmed: {}  (fork server: {})\n",
                    r.count, r.text, r.daemon_said
                ));
            }
        }
        if !self.recycles.is_empty() {
            let all: Vec<String> = self
                .recycles
                .iter()
                .map(|(why, n)| format!("{n}x {why}"))
                .collect();
            s.push_str(&format!(
                "  servers: {} started; recycled: {}\n",
                self.servers_started,
                all.join("; ")
            ));
        }
        if !self.leftover_processes.is_empty() {
            s.push_str(&format!(
                "  LEAKED after shutdown: {:?}\n",
                self.leftover_processes
            ));
        }
        if !self.unattributed_leaks.is_empty() {
            s.push_str(&format!(
                "  outlived their case (no case known, killed): {:?}\n",
                self.unattributed_leaks
            ));
        }
        if let Some(c) = &self.coverage {
            s.push_str(&c.text());
            s.push('\n');
        }
        if let Some(a) = &self.aborted {
            s.push_str(&format!("  aborted: {a}\n"));
        }
        s.push_str(&format!(
            "  summary: {}",
            Path::new(&self.out).join(SUMMARY_FILE).display()
        ));
        s
    }
}

impl Figures {
    pub(crate) fn of(execs: u64, elapsed_ms: u64, minimise_runs: u64) -> Figures {
        let execs_per_sec = if elapsed_ms == 0 {
            0.0
        } else {
            execs as f64 * 1000.0 / elapsed_ms as f64
        };
        Figures {
            execs,
            elapsed_ms,
            execs_per_sec,
            minimise_runs,
        }
    }
}

/// Every finding of `st`, the most frequent first; `new_ids` are those first seen in this run.
pub(crate) fn findings(st: &State, new_ids: &HashSet<String>) -> Vec<FindingSummary> {
    let mut findings: Vec<FindingSummary> = st
        .findings
        .iter()
        .map(|(id, f)| FindingSummary {
            id: id.clone(),
            signature: f.text.clone(),
            count: f.count,
            file: f.file.clone(),
            minimised: f.minimised,
            flaky: f.flaky,
            len: f.len,
            new: new_ids.contains(id),
            native_stack: vec![],
            native_stack_missing: None,
        })
        .collect();
    findings.sort_by(|a, b| b.count.cmp(&a.count).then(a.file.cmp(&b.file)));
    findings
}

/// Native crashes: the head of the native stack (or why there is none) from each one's
/// reproducer in `out`.
pub(crate) fn add_native_stacks(findings: &mut [FindingSummary], out: &Path) {
    for f in findings {
        let Ok(r) = super::reproducer::Reproducer::load(&out.join(&f.file)) else {
            continue;
        };
        if !super::native_stack::is_native_crash(&r.signature) {
            continue;
        }
        match &r.native_stack {
            Some(stack) => {
                f.native_stack = super::native_stack::head(stack, super::native_stack::HEAD_LINES)
            }
            None => f.native_stack_missing = r.native_stack_missing.clone(),
        }
    }
}

/// The signatures of `st` the fork server did not reproduce, the most frequent first.
pub(crate) fn not_confirmed(st: &State) -> NotConfirmed {
    let mut signatures: Vec<NotConfirmedRecord> = st.not_confirmed.values().cloned().collect();
    signatures.sort_by_key(|r| std::cmp::Reverse(r.count));
    NotConfirmed {
        cases: signatures.iter().map(|r| r.count).sum(),
        signatures,
    }
}

/// The most frequent clean outcomes of `st`.
pub(crate) fn top_expected(st: &State) -> Vec<ExpectedRecord> {
    let mut expected: Vec<ExpectedRecord> = st.expected.values().cloned().collect();
    expected.sort_by_key(|e| std::cmp::Reverse(e.count));
    expected.truncate(EXPECTED_SHOWN);
    expected
}

impl CampaignSummary {
    /// Write `out/summary.json`.
    pub(crate) fn write(&self, out: &Path) -> Result<(), HarnessError> {
        let path = out.join(SUMMARY_FILE);
        let mut bytes = serde_json::to_vec_pretty(self)
            .map_err(|e| HarnessError::new(format!("cannot serialise the summary: {e}")))?;
        bytes.push(b'\n');
        crate::report::write_atomic(&path, &bytes).map_err(|e| HarnessError::io("write", &path, e))
    }
}
