//! What `run`, `check` and `replay` leave for machines: one typed document per run
//! ([`RunDoc`]), written as the JSON report (`--json`) and the JUnit file (`--junit`), and read
//! back by `fakejvm report merge` (merge.rs) to join the shards of a run.
//!
//! Each scenario file or golden is an [`Entry`]: its typed report as JSON (every field the text
//! report is made from), plus a [`Unit`]: its place in the whole run, its verdict, the verdict
//! text printed for it and its JUnit testcases. The text a merge prints and the JUnit it writes
//! come from these, so they are the ones an unsharded run prints and writes.

use crate::error::{BadInput, HarnessError};
use crate::golden::replay::{GoldenStatus, GoldenSummary};
use crate::golden::GoldenReport;
use crate::junit::{self, Case, Suite};
use crate::report::{self, Summary};
use crate::scenario::{Scenario, ScenarioReport, Status};
use crate::shard::Shard;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// The report flags every running command shares (run, check, replay; later matrix).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct OutputArgs {
    /// Write a machine-readable report here (written atomically): every verdict with its text,
    /// outcomes, versions and the worker's stderr tail; `fakejvm report merge` joins shards' reports.
    #[arg(long, value_name = "PATH")]
    pub json: Option<PathBuf>,
    /// Write a JUnit XML report here (written atomically): one testcase per scenario task or
    /// golden, failures with the verdict text and stderr tail, N/A as skipped.
    #[arg(long, value_name = "PATH")]
    pub junit: Option<PathBuf>,
    /// Run only shard I of N (1 <= I <= N), for N CI runners: the work is split by (scenario
    /// file or golden, pyspark version), the same way every time; `fakejvm report merge` joins
    /// the N JSON reports.
    #[arg(long, value_name = "I/N")]
    pub shard: Option<Shard>,
}

impl OutputArgs {
    pub fn shard(&self) -> Shard {
        self.shard.unwrap_or(Shard::ALL)
    }
}

/// The summary column a scenario or golden counts in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Verdict {
    #[serde(rename = "pass")]
    Pass,
    #[serde(rename = "fail")]
    Fail,
    #[serde(rename = "n/a")]
    NotApplicable,
    /// A golden whose changed replies `--bless` staged.
    #[serde(rename = "blessed")]
    Blessed,
}

/// One scenario file or golden, as merge needs it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Unit {
    /// Its place in the whole run's list (every shard's): the merged report's order.
    pub order: usize,
    pub verdict: Verdict,
    /// The verdict text printed for it.
    pub text: String,
    pub testcases: Vec<Case>,
}

#[derive(Clone, Debug)]
pub struct Entry {
    pub unit: Unit,
    /// The pyspark version it ran against (a golden's recorded one).
    pub pyspark: String,
    /// The typed report as JSON, with the unit's fields beside its own.
    pub json: Value,
}

impl Entry {
    pub fn scenario(order: usize, sc: &Scenario, r: &ScenarioReport) -> Entry {
        let verdict = match r.status {
            Status::Passed => Verdict::Pass,
            Status::Failed => Verdict::Fail,
            Status::NotApplicable { .. } => Verdict::NotApplicable,
        };
        let unit = Unit {
            order,
            verdict,
            text: report::scenario_lines(r),
            testcases: junit::scenario_cases(sc, r),
        };
        Entry::new(unit, r.pyspark.clone(), r)
    }

    pub fn golden(order: usize, r: &GoldenReport) -> Entry {
        let verdict = match r.status {
            GoldenStatus::Passed => Verdict::Pass,
            GoldenStatus::Failed => Verdict::Fail,
            GoldenStatus::NotApplicable { .. } => Verdict::NotApplicable,
            GoldenStatus::Blessed => Verdict::Blessed,
        };
        let unit = Unit {
            order,
            verdict,
            text: r.text(),
            testcases: vec![junit::golden_case(r)],
        };
        Entry::new(unit, r.pyspark.clone(), r)
    }

    fn new(unit: Unit, pyspark: String, report: &impl Serialize) -> Entry {
        let mut json = serde_json::to_value(report).expect("reports serialize");
        let Value::Object(fields) = serde_json::to_value(&unit).expect("units serialize") else {
            unreachable!("a unit is a JSON object")
        };
        if let Value::Object(obj) = &mut json {
            obj.extend(fields);
        }
        Entry {
            unit,
            pyspark,
            json,
        }
    }

    /// An entry of a JSON report, read back.
    fn read(value: Value, file: &Path, at: &str) -> Result<Entry, BadInput> {
        let unit: Unit = serde_json::from_value(value.clone()).map_err(|e| {
            BadInput::new(
                file,
                format!("{at}: {e} (a report from an older fakejvm? write it again with this one)"),
            )
        })?;
        let pyspark = value
            .get("pyspark")
            .and_then(Value::as_str)
            .ok_or_else(|| BadInput::new(file, format!("{at}: no pyspark version")))?
            .to_string();
        Ok(Entry {
            unit,
            pyspark,
            json: value,
        })
    }
}

/// The scenarios of a run: one env.
#[derive(Clone, Debug)]
pub struct ScenarioPart {
    /// The paths given (files or directories), as given.
    pub paths: Vec<String>,
    pub pyspark: String,
    pub python: String,
    pub python_version: String,
    /// Scenario files in the whole run (every shard).
    pub total: usize,
    pub entries: Vec<Entry>,
}

impl ScenarioPart {
    pub fn summary(&self) -> Summary {
        let mut s = Summary::default();
        for e in &self.entries {
            match e.unit.verdict {
                Verdict::Pass | Verdict::Blessed => s.passed += 1,
                Verdict::Fail => s.failed += 1,
                Verdict::NotApplicable => s.not_applicable += 1,
            }
        }
        s
    }
}

/// The goldens of a run: each replayed against its recorded pyspark version.
#[derive(Clone, Debug)]
pub struct GoldenPart {
    pub paths: Vec<String>,
    /// Goldens in the whole run (every shard).
    pub total: usize,
    pub entries: Vec<Entry>,
}

impl GoldenPart {
    pub fn summary(&self) -> GoldenSummary {
        let mut s = GoldenSummary::default();
        for e in &self.entries {
            match e.unit.verdict {
                Verdict::Pass => s.passed += 1,
                Verdict::Fail => s.failed += 1,
                Verdict::NotApplicable => s.not_applicable += 1,
                Verdict::Blessed => s.blessed += 1,
            }
        }
        s
    }
}

/// The command a report came from: merge uses it to rebuild the run it was a shard of.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RunCommand {
    Run,
    Check,
    Replay,
    Matrix,
}

impl std::fmt::Display for RunCommand {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RunCommand::Run => "run",
            RunCommand::Check => "check",
            RunCommand::Replay => "replay",
            RunCommand::Matrix => "matrix",
        })
    }
}

/// One run (or one shard of it): its scenarios, its goldens or both (`check`).
#[derive(Clone, Debug)]
pub struct RunDoc {
    pub command: RunCommand,
    pub shard: Option<Shard>,
    pub scenarios: Option<ScenarioPart>,
    pub goldens: Option<GoldenPart>,
}

impl RunDoc {
    /// Any failed scenario or golden.
    pub fn failed(&self) -> bool {
        self.entries().any(|e| e.unit.verdict == Verdict::Fail)
    }

    fn entries(&self) -> impl Iterator<Item = &Entry> {
        let s = self.scenarios.iter().flat_map(|p| &p.entries);
        s.chain(self.goldens.iter().flat_map(|p| &p.entries))
    }

    /// What the command printed (each entry's verdict text, in the run's order, and the
    /// summary lines), with `check`'s section headers when both parts are there.
    pub fn text(&self) -> String {
        let both = self.scenarios.is_some() && self.goldens.is_some();
        let mut out = String::new();
        if let Some(s) = &self.scenarios {
            if both {
                out.push_str(&format!("== scenarios ({})\n", s.paths.join(", ")));
            }
            for e in sorted(&s.entries) {
                out.push_str(&e.unit.text);
                out.push('\n');
            }
            out.push_str(&s.summary().line(&s.pyspark));
            out.push('\n');
        }
        if let Some(g) = &self.goldens {
            if both {
                out.push_str(&format!("== goldens ({})\n", g.paths.join(", ")));
            }
            for e in sorted(&g.entries) {
                out.push_str(&e.unit.text);
                out.push('\n');
            }
            out.push_str(&g.summary().lines(&g.paths));
        }
        out
    }

    /// The JUnit suites: one for the scenarios, one per pyspark version of the goldens.
    pub fn suites(&self) -> Vec<Suite> {
        let mut common = vec![("command".to_string(), self.command.to_string())];
        if let Some(s) = self.shard {
            common.push(("shard".into(), s.to_string()));
        }
        common.push(("fakejvm".into(), env!("CARGO_PKG_VERSION").into()));
        let mut suites = vec![];
        if let Some(s) = &self.scenarios {
            let mut properties = vec![
                ("pyspark".to_string(), s.pyspark.clone()),
                ("python".into(), s.python_version.clone()),
                ("python_path".into(), s.python.clone()),
                ("paths".into(), s.paths.join(" ")),
            ];
            properties.extend(common.iter().cloned());
            suites.push(Suite {
                name: format!(
                    "fakejvm scenarios: pyspark {}, python {}",
                    s.pyspark, s.python_version
                ),
                properties,
                cases: sorted(&s.entries)
                    .flat_map(|e| e.unit.testcases.iter().cloned())
                    .collect(),
            });
        }
        if let Some(g) = &self.goldens {
            let mut versions: Vec<&str> = g.entries.iter().map(|e| e.pyspark.as_str()).collect();
            versions.sort_by_key(|v| version_key(v));
            versions.dedup();
            for v in versions {
                let mut properties = vec![
                    ("pyspark".to_string(), v.to_string()),
                    ("paths".into(), g.paths.join(" ")),
                ];
                properties.extend(common.iter().cloned());
                suites.push(Suite {
                    name: format!("fakejvm goldens: pyspark {v}"),
                    properties,
                    cases: sorted(&g.entries)
                        .filter(|e| e.pyspark == v)
                        .flat_map(|e| e.unit.testcases.iter().cloned())
                        .collect(),
                });
            }
        }
        suites
    }

    pub fn to_json(&self) -> Value {
        let fakejvm = env!("CARGO_PKG_VERSION").to_string();
        let s = self.scenarios.as_ref();
        let g = self.goldens.as_ref();
        let doc = DocJson {
            fakejvm,
            command: self.command,
            shard: self.shard,
            pyspark: s.map(|s| s.pyspark.clone()),
            python: s.map(|s| s.python.clone()),
            summary: s.map(ScenarioPart::summary),
            scenarios: s.map(|s| sorted(&s.entries).map(|e| e.json.clone()).collect()),
            scenario_run: s.map(|s| ScenarioRunJson {
                paths: s.paths.clone(),
                python_version: s.python_version.clone(),
                total: s.total,
            }),
            goldens: g.map(|g| sorted(&g.entries).map(|e| e.json.clone()).collect()),
            golden_run: g.map(|g| GoldenRunJson {
                paths: g.paths.clone(),
                total: g.total,
                summary: g.summary(),
            }),
        };
        serde_json::to_value(doc).expect("a report serializes")
    }

    /// A JSON report read back: one run, or each of the runs of a merged report.
    pub fn read(file: &Path) -> Result<Vec<RunDoc>, BadInput> {
        let bytes =
            std::fs::read(file).map_err(|e| BadInput::new(file, format!("cannot read: {e}")))?;
        let value: Value = serde_json::from_slice(&bytes)
            .map_err(|e| BadInput::new(file, format!("is not JSON: {e}")))?;
        match value.get("runs") {
            Some(Value::Array(runs)) => runs
                .iter()
                .enumerate()
                .map(|(i, r)| RunDoc::from_json(r.clone(), file, &format!("runs[{i}]")))
                .collect(),
            _ => Ok(vec![RunDoc::from_json(value, file, "the report")?]),
        }
    }

    fn from_json(value: Value, file: &Path, at: &str) -> Result<RunDoc, BadInput> {
        let doc: DocJson = serde_json::from_value(value).map_err(|e| {
            BadInput::new(
                file,
                format!("{at} is not a fakejvm JSON report: {e} (write it with `--json` of run, check, replay or matrix)"),
            )
        })?;
        let entries = |list: Option<Vec<Value>>, what: &str| {
            list.unwrap_or_default()
                .into_iter()
                .enumerate()
                .map(|(i, v)| Entry::read(v, file, &format!("{at}: {what}[{i}]")))
                .collect::<Result<Vec<_>, _>>()
        };
        let scenarios = match doc.scenario_run {
            None if doc.scenarios.as_ref().is_some_and(|s| !s.is_empty()) => {
                return Err(BadInput::new(
                    file,
                    format!("{at} has scenarios but no scenario_run (a report from an older fakejvm? write it again with this one)"),
                ))
            }
            None => None,
            Some(head) => {
                let missing = |what: &str| BadInput::new(file, format!("{at}: no {what}"));
                Some(ScenarioPart {
                    paths: head.paths,
                    pyspark: doc.pyspark.ok_or_else(|| missing("pyspark"))?,
                    python: doc.python.ok_or_else(|| missing("python"))?,
                    python_version: head.python_version,
                    total: head.total,
                    entries: entries(doc.scenarios, "scenarios")?,
                })
            }
        };
        let goldens = match doc.golden_run {
            None if doc.goldens.as_ref().is_some_and(|g| !g.is_empty()) => {
                return Err(BadInput::new(
                    file,
                    format!("{at} has goldens but no golden_run"),
                ))
            }
            None => None,
            Some(head) => Some(GoldenPart {
                paths: head.paths,
                total: head.total,
                entries: entries(doc.goldens, "goldens")?,
            }),
        };
        Ok(RunDoc {
            command: doc.command,
            shard: doc.shard,
            scenarios,
            goldens,
        })
    }
}

/// Write the JSON report and the JUnit file asked for. Several runs (a merge of runs of several
/// versions) go into one JSON report as `{"runs": [...]}` and into one JUnit file.
pub fn write(docs: &[RunDoc], out: &OutputArgs) -> anyhow::Result<()> {
    if let Some(path) = &out.json {
        let value = match docs {
            [one] => one.to_json(),
            many => serde_json::json!({
                "fakejvm": env!("CARGO_PKG_VERSION"),
                "command": "merge",
                "runs": many.iter().map(RunDoc::to_json).collect::<Vec<_>>(),
            }),
        };
        let bytes = serde_json::to_vec_pretty(&value)?;
        report::write_atomic(path, &bytes)
            .map_err(|e| HarnessError::io("write the JSON report", path, e))?;
    }
    if let Some(path) = &out.junit {
        let suites: Vec<Suite> = docs.iter().flat_map(RunDoc::suites).collect();
        junit::write(path, &suites)
            .map_err(|e| HarnessError::io("write the JUnit report", path, e))?;
    }
    Ok(())
}

fn sorted(entries: &[Entry]) -> impl Iterator<Item = &Entry> {
    let mut v: Vec<&Entry> = entries.iter().collect();
    v.sort_by_key(|e| e.unit.order);
    v.into_iter()
}

/// Versions in numeric order ("4.10" after "4.9"); text that is no version after them.
pub(crate) fn version_key(v: &str) -> (Option<crate::pyenv::PysparkVersion>, String) {
    (v.parse().ok(), v.to_string())
}

/// The JSON report. `pyspark`, `python`, `summary` and `scenarios` are where they were before
/// sharding; the rest is what merge needs.
#[derive(Serialize, Deserialize)]
struct DocJson {
    fakejvm: String,
    command: RunCommand,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    shard: Option<Shard>,
    /// The scenarios' env.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pyspark: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    python: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    summary: Option<Summary>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scenarios: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    scenario_run: Option<ScenarioRunJson>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    goldens: Option<Vec<Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    golden_run: Option<GoldenRunJson>,
}

#[derive(Serialize, Deserialize)]
struct ScenarioRunJson {
    paths: Vec<String>,
    python_version: String,
    total: usize,
}

#[derive(Serialize, Deserialize)]
struct GoldenRunJson {
    paths: Vec<String>,
    total: usize,
    summary: GoldenSummary,
}
