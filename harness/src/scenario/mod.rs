//! Scenarios: a JSON file says what to send, how to launch the worker and what to expect; the
//! runner turns it into requests, drives real workers through `session`, and compares.

mod model;
mod run;

pub use model::*;
pub use run::{
    build_request, collect_files, command_spec, run_scenario, RunOptions, ScenarioReport, Status,
    TaskReport,
};
