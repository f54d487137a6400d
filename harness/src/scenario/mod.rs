//! Scenarios: a JSON file says what to send, how to launch the worker and what to expect; the
//! runner turns it into requests, drives real workers through `session`, and compares.

mod frames;
mod model;
mod modules;
mod run;
mod stderr;
mod udf;

pub use frames::{FrameBytes, FramesExpect, HexBytes};
pub use model::*;
pub use modules::{expand, worker_module_of, ExpandError, DEFAULT_WORKER_MODULE};
pub use run::{
    build_request, build_tasks, collect_files, command_spec, run_scenario, Built, RunOptions,
    ScenarioReport, Status, TaskReport, WorkerEnd,
};
pub use udf::{
    ReplyRows, UdfInput, UdfSpec, UdtfSpec, DEFAULT_MAX_RECORDS_PER_BATCH, DEFAULT_TIME_ZONE,
};

/// The env flavor a set of scenarios needs: lean (pyspark and py4j) unless a task is a UDF.
/// Only UDF tasks import pandas or pyarrow; RDD tasks are pickled functions over pickled or raw
/// data. `run`, `check` and `matrix` all choose this way.
pub fn env_flavor<'a>(scenarios: impl IntoIterator<Item = &'a Scenario>) -> crate::pyenv::Flavor {
    let needs_full = scenarios
        .into_iter()
        .any(|s| s.tasks.iter().any(|t| t.udf.is_some()));
    if needs_full {
        crate::pyenv::Flavor::Full
    } else {
        crate::pyenv::Flavor::Lean
    }
}
