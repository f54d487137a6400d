//! Scenarios over worker modules: `"worker_module": {"each_in": "pyspark"}` runs a scenario once
//! for every worker module the installed pyspark has under a package (listed by the target
//! interpreter, so a new version's new module is covered without editing the scenario), each
//! run its own report row named by its module; and what each module's handshake showed.
//!
//! How Spark's JVM starts these modules (read in apache/spark, 3.5-4.x): the planner runners
//! (`PythonPlannerRunner`: UDTF analysis, data source create / plan read / write / commit /
//! filter pushdown / lookup, the streaming sink commit) call `createPythonWorker(pythonExec,
//! workerModule, ...)` with `spark.python.use.daemon` (default true): a daemon started as
//! `python -m pyspark.daemon <workerModule>`, or with the daemon off a direct
//! `python -m <workerModule>` that connects back with PYTHON_WORKER_FACTORY_PORT / SECRET.
//! `StreamingPythonRunner` (foreachBatch, query listeners, the transformWithState driver
//! worker) always starts a direct worker (`createSimpleWorker`), sends the Python version, a
//! session id (when it has one) and the function, and reads one int: 0, or an error code and a
//! message. Every module's `__main__` connects back, answers the secret and writes its own pid.

use super::model::{Scenario, WorkerModule};
use crate::pyenv::{self, PythonEnv};
use crate::worker::{Connection, Mode, Workers};
use std::path::Path;

/// The module `sc` runs as its worker: `pyspark.worker` unless it names one. A scenario whose
/// `each_in` was not expanded yet has none ([`expand`] first).
pub fn worker_module_of(sc: &Scenario) -> Option<&str> {
    match &sc.worker_module {
        None => Some(DEFAULT_WORKER_MODULE),
        Some(WorkerModule::One(m)) => Some(&m.0),
        Some(WorkerModule::EachIn(_)) => None,
    }
}

pub const DEFAULT_WORKER_MODULE: &str = "pyspark.worker";

/// Why a scenario's `each_in` could not be listed.
#[derive(Debug, thiserror::Error)]
pub enum ExpandError {
    /// The scenario's fault (bad input): the package is not in this pyspark, or holds no worker
    /// module that `except` leaves in.
    #[error("{0}")]
    Scenario(String),
    /// The interpreter could not list them (fakejvm's or the env's failure).
    #[error("worker_module.each_in: {0}")]
    Env(#[from] pyenv::EnvError),
}

/// `sc` as the runs it stands for: itself, or with `each_in` one copy per worker module of the
/// env's pyspark (named `<name>[<module>]`, `except` left out). A scenario whose `requires`
/// excludes this env is returned as it is (it reports N/A). Checked before any worker starts.
pub fn expand(env: &PythonEnv, file: &Path, sc: &Scenario) -> Result<Vec<Scenario>, ExpandError> {
    let Some(WorkerModule::EachIn(set)) = &sc.worker_module else {
        return Ok(vec![sc.clone()]);
    };
    if sc
        .requires
        .as_ref()
        .is_some_and(|r| !r.matches(env.pyspark, &env.python_version))
    {
        return Ok(vec![sc.clone()]);
    }
    let package = &set.each_in.0;
    let found = pyenv::worker_modules(env, package)?;
    if found.missing {
        return Err(ExpandError::Scenario(format!(
            "worker_module.each_in: pyspark {} has no package or module {package:?}: name one it has, or add \"requires\" for the versions that have it",
            env.pyspark
        )));
    }
    let chosen: Vec<&String> = found
        .modules
        .iter()
        .filter(|m| !set.except.iter().any(|p| p.matches(m)))
        .collect();
    if chosen.is_empty() {
        return Err(ExpandError::Scenario(format!(
            "worker_module.each_in: pyspark {} has no worker module under {package:?} (a module with `main(infile, outfile)` and a `__main__` block){}",
            env.pyspark,
            if found.modules.is_empty() { String::new() } else { format!(" that `except` leaves in (found: {})", found.modules.join(", ")) }
        )));
    }
    let base = sc.name.clone().unwrap_or_else(|| {
        file.file_stem()
            .unwrap_or_default()
            .to_string_lossy()
            .into_owned()
    });
    Ok(chosen
        .into_iter()
        .map(|m| {
            let mut one = sc.clone();
            one.name = Some(format!("{base}[{m}]"));
            one.worker_module = Some(WorkerModule::One(
                crate::scenario::ModuleName::try_from(m.clone())
                    .expect("the glue lists dotted module names"),
            ));
            one
        })
        .collect())
}

/// What the handshake of a scenario's first connection showed, for a scenario that names its
/// worker module: whether the worker connected back and authenticated, and whose pid it sent.
pub(crate) fn handshake_note(
    module: &str,
    mode: Mode,
    conn: &Connection,
    workers: &Workers,
) -> String {
    let pid = conn.pid;
    match mode {
        Mode::Direct | Mode::DirectUds => {
            let auth = if mode == Mode::Direct {
                "sent the secret (fakejvm answered \"ok\")"
            } else {
                "sent no secret (none on a Unix socket)"
            };
            let whose = if workers.process_groups().contains(&pid) {
                "its own, the process fakejvm started"
            } else {
                "NOT the pid of the process fakejvm started"
            };
            format!("handshake: {module} connected back, {auth}, then wrote pid {pid} ({whose})")
        }
        Mode::Daemon | Mode::Uds => {
            let auth = if mode == Mode::Daemon {
                "; the forked worker took the secret and answered \"ok\""
            } else {
                " (no secret on a Unix socket)"
            };
            format!(
                "handshake: the daemon forked a worker for {module} and wrote its pid {pid}{auth}"
            )
        }
    }
}
