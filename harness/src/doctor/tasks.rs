//! The four small tasks `fakejvm doctor` runs through the shipped env, as a scenario: a real
//! daemon started with that interpreter, one connection per task, the replies judged by
//! `scenario::run_scenario` like any scenario's.

use crate::pyenv::PythonEnv;
use crate::scenario::{self, RunOptions, Scenario, ScenarioReport};
use std::path::Path;

/// One kind of task the checklist has a line for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Probe {
    Rdd,
    SqlUdf,
    PandasUdf,
    ArrowUdf,
}

impl Probe {
    pub(super) const ALL: [Probe; 4] =
        [Probe::Rdd, Probe::SqlUdf, Probe::PandasUdf, Probe::ArrowUdf];

    pub(super) fn label(self) -> &'static str {
        match self {
            Probe::Rdd => "RDD task",
            Probe::SqlUdf => "SQL UDF",
            Probe::PandasUdf => "pandas UDF",
            Probe::ArrowUdf => "Arrow UDF",
        }
    }

    /// What the task is, in the driver's words.
    pub(super) fn what(self) -> &'static str {
        match self {
            Probe::Rdd => "rdd.map(lambda x: x * 2) over [1, 2, 3]",
            Probe::SqlUdf => "udf(lambda x: x ** 2, 'double') over 2 rows (SQL_BATCHED_UDF)",
            Probe::PandasUdf => "@pandas_udf('double') lambda s: s + 1 (SQL_SCALAR_PANDAS_UDF)",
            Probe::ArrowUdf => "@arrow_udf('double') pc.add(a, 1) (SQL_SCALAR_ARROW_UDF)",
        }
    }

    /// The task as scenario JSON (scenarios/README.md), with what a working env answers.
    fn task_json(self) -> &'static str {
        match self {
            Probe::Rdd => {
                r#"{"function": "func = lambda split, it: (x * 2 for x in it)",
                    "input": {"encoding": "pickle_batched", "batch_size": 3, "values": [1, 2, 3]},
                    "expect": {"values": [2, 4, 6]}}"#
            }
            Probe::SqlUdf => {
                r#"{"udf": {"eval_type": "SQL_BATCHED_UDF",
                            "udfs": [{"function": "func = lambda x: x ** 2", "return_type": "double"}],
                            "input": {"schema": "value double", "rows": [[1.0], [2.5]]}},
                    "expect": {"rows": [[1.0], [6.25]]}}"#
            }
            Probe::PandasUdf => {
                r#"{"udf": {"eval_type": "SQL_SCALAR_PANDAS_UDF",
                            "udfs": [{"function": "func = lambda s: s + 1", "return_type": "double"}],
                            "input": {"schema": "v double", "rows": [[1.0], [2.5]]}},
                    "expect": {"rows": [[2.0], [3.5]]}}"#
            }
            Probe::ArrowUdf => {
                r#"{"udf": {"eval_type": "SQL_SCALAR_ARROW_UDF",
                            "udfs": [{"function": "import pyarrow.compute as pc\nfunc = lambda a: pc.add(a, 1)", "return_type": "double"}],
                            "input": {"schema": "v double", "rows": [[1.0], [2.5]]}},
                    "expect": {"rows": [[2.0], [3.5]]}}"#
            }
        }
    }
}

/// The scenario holding `probes`, in order. The Arrow UDF exists from pyspark 4.1, and a scenario
/// with it must say so; the caller only includes it for such a pyspark.
pub(super) fn scenario(probes: &[Probe]) -> Scenario {
    let tasks: Vec<&str> = probes.iter().map(|p| p.task_json()).collect();
    let requires = if probes.contains(&Probe::ArrowUdf) {
        r#""requires": ">=4.1","#
    } else {
        ""
    };
    // Generous bounds, not speeds: a PEX's daemon takes seconds to announce its port (pex
    // resolves its sys.path on every start, so the default 10 s connect timeout is tight on a
    // loaded machine), and its first worker may import pandas and pyarrow from a cold cache.
    let text = format!(
        r#"{{"name": "doctor", "description": "fakejvm doctor's checks", {requires} "deadline_ms": 120000, "connect_timeout_ms": 120000, "tasks": [{}]}}"#,
        tasks.join(",")
    );
    Scenario::parse(&text).unwrap_or_else(|e| panic!("doctor's built-in scenario: {e}"))
}

/// Build and run `sc` with the shipped env's interpreter. Building the commands is the target
/// pyspark's own work (cloudpickle), so an env that cannot is reported, not a fakejvm failure.
pub(super) async fn run(env: &PythonEnv, sc: &Scenario) -> Result<ScenarioReport, String> {
    scenario::build_tasks(env, sc).map_err(|e| {
        format!(
            "the env cannot build the tasks' commands: {}",
            crate::error::one_line(&e.to_string())
        )
    })?;
    Ok(scenario::run_scenario(env, Path::new("fakejvm doctor"), sc, &RunOptions::default()).await)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_probe_is_a_valid_scenario_task() {
        let sc = scenario(&Probe::ALL);
        assert_eq!(sc.tasks.len(), 4);
        let rdd_only = scenario(&[Probe::Rdd, Probe::SqlUdf]);
        assert!(rdd_only.requires.is_none() && rdd_only.tasks.len() == 2);
    }
}
