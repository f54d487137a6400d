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
