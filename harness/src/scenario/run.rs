//! Scenario -> requests -> real worker -> verdict.

use super::model::*;
use super::modules::{handshake_note, worker_module_of};
use super::udf::ReplyRows;
use crate::faults::{self, FaultReport, Injector, Performer, TaskEnd};
use crate::pickle::{self, FrameKind};
use crate::protocol::UdfLayout;
use crate::protocol::{
    BroadcastOp, DataItem, Dialect, EncodedRequest, ReplyEnd, ReplyItem, Resource, Span, SpanKind,
    TaskContext, TaskRequest,
};
use crate::pyenv::{self, CommandSpec, PythonEnv, SerializerSpec};
use crate::session::{self, SessionOptions, Transcript, WriteStep};
use crate::verdict::{
    connect_failure, judge_resources, judge_task, tail_lines, Outcome, OutcomeKind, WorkerFacts,
};
use crate::worker::resources::{Sampler, Usage, OUTLIVE_GRACE};
use crate::worker::{Connection, ExitInfo, LaunchOptions, Mode, WorkerError, Workers};
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Clone, Debug, Default)]
pub struct RunOptions {
    /// Force a dialect instead of the one of the env's pyspark version.
    pub dialect: Option<Dialect>,
    /// Overrides every scenario's per-task deadline.
    pub deadline: Option<Duration>,
    pub keep_transcripts: bool,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Status {
    Passed,
    Failed,
    /// The scenario's `requires` excludes this pyspark version (stated, never silent).
    NotApplicable {
        why: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskReport {
    pub index: usize,
    pub outcome: Outcome,
    /// The expectation that applied, in words.
    pub expected: String,
    pub ok: bool,
    /// `expect_stderr` checks that failed (each fails the task).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stderr_unmet: Vec<String>,
    /// A known, version-specific behaviour that this run showed (from `expect_by_version`).
    pub note: Option<String>,
    /// The decoded output values, when the task completed.
    pub output: Option<serde_json::Value>,
    pub pid: Option<i32>,
    /// The task sent a raw request (`request`) to a worker module.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub raw_request: bool,
    /// A raw-request task that got an answer: what became of its worker then (a worker module
    /// serves one request and exits).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_end: Option<WorkerEnd>,
    pub elapsed_ms: u64,
    /// What the worker used while the task ran (none when no worker was connected).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub resources: Option<Usage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transcript: Option<Transcript>,
}

/// A worker's fate after it answered a raw request and fakejvm closed the connection, within
/// [`SETTLE`].
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum WorkerEnd {
    /// A direct worker, fakejvm's child: how it ended.
    Exited {
        exit: ExitInfo,
    },
    /// A daemon's forked worker: gone (only the daemon learns its exit status).
    Gone,
    StillRunning {
        after_ms: u64,
    },
}

impl std::fmt::Display for WorkerEnd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WorkerEnd::Exited { exit } => write!(f, "the worker then ended ({exit})"),
            WorkerEnd::Gone => write!(f, "the worker was gone once the connection closed"),
            WorkerEnd::StillRunning { after_ms } => write!(
                f,
                "the worker was still running {after_ms} ms after the connection closed"
            ),
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ScenarioReport {
    pub file: String,
    pub name: String,
    pub pyspark: String,
    pub dialect: Dialect,
    pub mode: Mode,
    /// The worker module this run used, when the scenario names one (`worker_module`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub worker_module: Option<String>,
    #[serde(flatten)]
    pub status: Status,
    pub tasks: Vec<TaskReport>,
    /// What each declared fault did (empty without faults); a fault that did not fire or whose
    /// expectations failed fails the scenario.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub faults: Vec<FaultReport>,
    /// Processes of ours still alive after shutdown (then killed): a failure of the scenario.
    pub leftovers: Vec<(i32, String)>,
    /// What pyspark does with what the scenario asked for, where that is not what was asked
    /// (e.g. a worker module the daemon ignores).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The scenario's `expect_stderr` checks that failed.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stderr_unmet: Vec<String>,
    /// The daemon's pid (its process group holds every worker it forked).
    pub daemon_pid: Option<i32>,
    pub daemon_exit: Option<ExitInfo>,
    pub stderr_tail: String,
    pub elapsed_ms: u64,
}

impl ScenarioReport {
    /// The report of `sc` before any task ran: no tasks, no daemon, nothing measured.
    pub fn blank(
        file: &Path,
        sc: &Scenario,
        pyspark: &pyenv::PysparkVersion,
        dialect: Dialect,
        status: Status,
    ) -> ScenarioReport {
        let name = sc.name.clone().unwrap_or_else(|| {
            file.file_stem()
                .unwrap_or_default()
                .to_string_lossy()
                .into_owned()
        });
        ScenarioReport {
            file: file.display().to_string(),
            name,
            pyspark: pyspark.to_string(),
            dialect,
            mode: sc.mode,
            worker_module: sc
                .worker_module
                .is_some()
                .then(|| worker_module_of(sc).map(str::to_owned))
                .flatten(),
            status,
            tasks: vec![],
            faults: vec![],
            leftovers: vec![],
            notes: vec![],
            stderr_unmet: vec![],
            daemon_pid: None,
            daemon_exit: None,
            stderr_tail: String::new(),
            elapsed_ms: 0,
        }
    }
}

/// Scenario files under the given paths: files as given, directories searched recursively for
/// `*.json`, sorted so runs are repeatable.
pub fn collect_files(paths: &[PathBuf]) -> Result<Vec<PathBuf>, ScenarioError> {
    let mut out = vec![];
    for p in paths {
        if p.is_dir() {
            let mut found = vec![];
            walk(p, &mut found).map_err(|e| ScenarioError {
                file: p.display().to_string(),
                problem: format!("cannot list: {e}"),
            })?;
            found.sort();
            out.extend(found);
        } else if p.exists() {
            out.push(p.clone());
        } else {
            return Err(ScenarioError {
                file: p.display().to_string(),
                problem: "no such file or directory".into(),
            });
        }
    }
    Ok(out)
}

fn walk(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for e in std::fs::read_dir(dir)? {
        let p = e?.path();
        if p.is_dir() {
            walk(&p, out)?;
        } else if p.extension().is_some_and(|x| x == "json") {
            out.push(p);
        }
    }
    Ok(())
}

pub async fn run_scenario(
    env: &PythonEnv,
    file: &Path,
    sc: &Scenario,
    opts: &RunOptions,
) -> ScenarioReport {
    let started = Instant::now();
    let dialect = opts
        .dialect
        .or_else(|| Dialect::for_version(env.pyspark.major, env.pyspark.minor));
    // Only shown for N/A reports when no family speaks this version.
    let mut report = ScenarioReport::blank(
        file,
        sc,
        &env.pyspark,
        dialect.unwrap_or(Dialect::D),
        Status::Passed,
    );
    let Some(dialect) = dialect else {
        report.status = Status::NotApplicable {
            why: format!(
                "fakejvm speaks pyspark 3.3 and later, this is {}",
                env.pyspark
            ),
        };
        return report;
    };
    if let Some(why) = not_applicable(env, sc, dialect) {
        report.status = Status::NotApplicable { why };
        return report;
    }
    if let Err(e) = run_tasks(env, sc, dialect, opts, &mut report).await {
        let (expect, _) = sc
            .tasks
            .get(report.tasks.len())
            .map(|t| effective_expectation(t, env, worker_module_of(sc).unwrap_or_default()))
            .unwrap_or_default();
        let index = report.tasks.len();
        report.tasks.push(judge(
            index,
            Outcome::Harness {
                error: format!("{e:#}"),
            },
            None,
            &expect,
            None,
            None,
            Instant::now(),
            None,
        ));
    }
    let all_ok = report.tasks.iter().all(|t| t.ok)
        && report.leftovers.is_empty()
        && report.stderr_unmet.is_empty()
        && report.faults.iter().all(|f| f.ok);
    report.status = if all_ok {
        Status::Passed
    } else {
        Status::Failed
    };
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

fn not_applicable(env: &PythonEnv, sc: &Scenario, dialect: Dialect) -> Option<String> {
    if let Some(req) = &sc.requires {
        if !req.matches(env.pyspark, &env.python_version) {
            let this = if req.python.is_some() {
                format!("pyspark {} on python {}", env.pyspark, env.python_version)
            } else {
                env.pyspark.to_string()
            };
            return Some(format!("needs {}, this is {this}", req.describe()));
        }
    }
    if sc.mode == Mode::Uds && !dialect.has_unix_sockets() {
        return Some(format!(
            "Unix-domain-socket workers exist from pyspark 4.1, this is {}",
            env.pyspark
        ));
    }
    None
}

async fn run_tasks(
    env: &PythonEnv,
    sc: &Scenario,
    dialect: Dialect,
    opts: &RunOptions,
    report: &mut ScenarioReport,
) -> anyhow::Result<()> {
    let Some(module) = worker_module_of(sc) else {
        anyhow::bail!("fakejvm: worker_module each_in reached the runner unexpanded (scenario::expand lists the modules first)");
    };
    let built = build_tasks(env, sc)?;
    let tmp = tempfile::Builder::new()
        .prefix("fakejvm-scenario-")
        .tempdir()?;
    let mut injector = Injector::new(&sc.faults, sc.mode, tmp.path())?;

    let mut extra_env: Vec<(String, String)> =
        sc.env.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
    extra_env.extend(injector.launch_env());
    if !sc.launch_files.is_empty() {
        // First on sys.path, before the scenario's own PYTHONPATH (if any) and site-packages.
        let dir = tmp.path().join("launch");
        for (name, content) in &sc.launch_files {
            let path = dir.join(name);
            if let Some(parent) = path.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::write(&path, content)?;
        }
        let path = match sc.env.get("PYTHONPATH") {
            Some(theirs) => format!("{}:{theirs}", dir.display()),
            None => dir.display().to_string(),
        };
        extra_env.retain(|(k, _)| k != "PYTHONPATH");
        extra_env.push(("PYTHONPATH".into(), path));
    }
    let wants_dump = sc.tasks.iter().any(|t| {
        t.expect_stderr
            .as_ref()
            .is_some_and(|e| e.faulthandler_contains.is_some())
    });
    let faulthandler_dir = match sc.env.get("PYTHON_FAULTHANDLER_DIR") {
        Some(theirs) => Some(PathBuf::from(theirs)),
        None if wants_dump => {
            let dir = tmp.path().join("faulthandler");
            std::fs::create_dir_all(&dir)?;
            extra_env.push(("PYTHON_FAULTHANDLER_DIR".into(), dir.display().to_string()));
            Some(dir)
        }
        None => None,
    };
    report.notes = module_notes(env, sc);
    let launch = LaunchOptions {
        mode: sc.mode,
        reuse: sc.reuse,
        extra_env,
        rlimit_as: injector.rlimit_as(),
        daemon_module: sc.daemon_module.clone().map(|m| m.0),
        worker_module: sc.worker_module.is_some().then(|| module.to_owned()),
        rlimit_nofile: injector.rlimit_nofile(),
        // The scenario's connect_timeout_ms is for a worker's pid or connect-back
        // (scenarios/README.md); the daemon's start has its own deadline (start_timeout).
        connect_timeout: sc.connect_timeout_ms.map_or(
            LaunchOptions::default().connect_timeout,
            Duration::from_millis,
        ),
        ..LaunchOptions::default()
    };
    let mut workers = match Workers::start(&env.python, launch).await {
        Ok(w) => w,
        Err(e) => {
            // A daemon that dies at launch is what every task of the scenario meets.
            let outcome = connect_failure(e, &WorkerFacts::default());
            if let Outcome::DaemonDied { exit, stderr_tail } = &outcome {
                report.daemon_exit = *exit;
                report.stderr_tail = stderr_tail.clone();
            }
            for (i, task) in sc.tasks.iter().enumerate() {
                let (expect, note) = effective_expectation(task, env, module);
                report.tasks.push(judge(
                    i,
                    outcome.clone(),
                    None,
                    &expect,
                    note,
                    None,
                    Instant::now(),
                    None,
                ));
            }
            return Ok(());
        }
    };
    let session_opts = SessionOptions {
        deadline: opts
            .deadline
            .unwrap_or(Duration::from_millis(sc.deadline_ms.unwrap_or(30_000))),
        record_transcript: true,
        ..SessionOptions::default()
    };

    let mut conn: Option<(Connection, u64)> = None;
    let mut shown_handshake = false;
    // Each task's output frames, for later tasks whose input is `output_of`.
    let mut outputs: Vec<Vec<DataItem>> = vec![];
    for (i, (task, built)) in sc.tasks.iter().zip(built).enumerate() {
        let started = Instant::now();
        let stderr_mark = workers.stderr().len();
        let (expect, mut note) = effective_expectation(task, env, module);
        let encoded = match &task.request {
            Some(raw) => encode_raw_request(raw, env),
            None => dialect.encode_request(&build_request(
                task,
                env,
                built,
                &tmp.path().join(format!("task{i}")),
                &outputs,
            )?),
        };
        let mut plan = injector
            .plan(i, &encoded)
            .map_err(|e| anyhow::anyhow!("task {i}: {e}"))?;
        if task
            .request
            .as_ref()
            .is_some_and(|r| r.then == RequestEnd::HalfClose)
        {
            // After the frames, unless a fault already ended the writing there.
            let ended = plan
                .write
                .steps
                .iter()
                .any(|s| matches!(s, WriteStep::ShutdownWrite | WriteStep::Stop));
            if !ended {
                plan.write.steps.push(WriteStep::ShutdownWrite);
            }
        }
        injector.task_started(&workers, i)?;

        if conn.is_none() {
            match workers.connect().await {
                Ok(c) => {
                    let base = c.handshake_in.len() as u64;
                    if sc.worker_module.is_some() && !shown_handshake {
                        report
                            .notes
                            .push(handshake_note(module, sc.mode, &c, &workers));
                        shown_handshake = true;
                    }
                    conn = Some((c, base));
                }
                Err(e) => {
                    outputs.push(vec![]);
                    if let WorkerError::ErrnoAsPid { value } = &e {
                        note.get_or_insert_with(|| {
                            faults::errno_as_pid_note(&env.pyspark.to_string(), *value)
                        });
                    }
                    let facts = WorkerFacts::gather(&mut workers, None, SETTLE).await;
                    let mut outcome = connect_failure(e, &facts);
                    let end = TaskEnd {
                        task: i,
                        pid: None,
                        plan: Some(&plan),
                        fired: &[],
                        bytes_sent: 0,
                        outcome: Some(&outcome),
                    };
                    if let Some(o) = injector.task_ended(&mut workers, end).await {
                        outcome = o;
                    }
                    let mut judged = judge(i, outcome, None, &expect, note, None, started, None);
                    judged.raw_request = task.request.is_some();
                    report.tasks.push(judged);
                    continue;
                }
            }
        }
        let (c, base) = conn.as_mut().expect("connected above");
        let pid = c.pid;
        let sampler = Sampler::start(workers.worker_os_pid(pid));
        let mut transcript = Transcript::default();
        // The session writes and reads; the performer does the plan's actions (process and socket
        // faults) when the writer reaches them. Without faults the performer has nothing to do.
        let (actions_tx, actions_rx) = tokio::sync::mpsc::channel(1);
        let performer = Performer::new(&mut workers, pid, &plan);
        let (result, (fired, extra_connections)) = tokio::join!(
            session::run_task_with_actions(
                &mut c.reader,
                &mut c.writer,
                dialect,
                &encoded.bytes,
                &plan.write,
                *base,
                &session_opts,
                &mut transcript,
                Some(actions_tx),
            ),
            performer.serve(actions_rx),
        );
        drop(extra_connections);

        let facts = if result.reply.is_err() {
            WorkerFacts::gather(&mut workers, Some(pid), SETTLE).await
        } else {
            WorkerFacts::default()
        };
        outputs.push(match &result.reply {
            Ok(r) => r
                .data
                .iter()
                .map(|d| match d {
                    ReplyItem::Frame(b) => DataItem::Frame(b.to_vec()),
                    ReplyItem::Null => DataItem::Null,
                    ReplyItem::ArrowStream(b) => DataItem::Raw(b.to_vec()),
                })
                .collect(),
            Err(_) => vec![],
        });
        let mut output = None;
        let mut outcome = judge_task(&result, &facts, |reply| {
            // A raw request's answer is the module's own: complete is all there is to check.
            if task.request.is_some() {
                return Outcome::Passed;
            }
            if let Some(mismatch) = expect.frames.as_ref().and_then(|f| f.compare(reply)) {
                return mismatch;
            }
            if let Some(udf) = &task.udf {
                return match udf.reply_rows(&reply.data) {
                    Ok(got) => {
                        output = Some(serde_json::Value::Array(got.rows.clone()));
                        compare_rows(&expect, udf, got)
                    }
                    // Frames alone are judged on their bytes: data that does not decode passes.
                    Err(_) if expect.frames_only() => Outcome::Passed,
                    Err(e) => Outcome::ProtocolViolation {
                        at_byte: reply.start,
                        what: format!("the UDF's output does not decode: {e}"),
                    },
                };
            }
            match pickle::decode_frames(frame_kind(task), &reply.frames()) {
                Ok(values) => {
                    let got = serde_json::Value::Array(
                        values.iter().map(pickle::value_to_json).collect(),
                    );
                    output = Some(got.clone());
                    compare_values(&expect, got)
                }
                Err(_) if expect.frames_only() => Outcome::Passed,
                Err(e) => Outcome::ProtocolViolation {
                    at_byte: reply.start,
                    what: format!("output frames do not decode: {e}"),
                },
            }
        });

        // Keep the connection only when the worker said it can be reused (-4).
        // Only a daemon's forked worker loops for another task: a direct worker (TCP or Unix
        // socket) runs one task and exits, whatever SPARK_REUSE_WORKER says.
        let reusable = sc.reuse
            && task.request.is_none()
            && sc.mode.uses_daemon()
            && matches!(&result.reply, Ok(r) if matches!(r.end, ReplyEnd::Completed { final_marker: -4, .. }));
        if reusable {
            *base = result.reply.as_ref().map(|r| r.end_offset).unwrap_or(*base);
        } else {
            // Closed before the faults' observations, which may wait for the worker to notice.
            conn = None;
        }
        // A worker module serves one request and ends once the JVM is done with it: a daemon's
        // forked worker waits for the connection to close (`while sock.recv(1024)` in
        // daemon.py), a direct one exits on its own. Watched after the close, as a JVM closes.
        let worker_end = match (&task.request, &result.reply) {
            (Some(_), Ok(_)) => Some(worker_end(&mut workers, pid).await),
            _ => None,
        };
        if !injector.is_empty() {
            let end = TaskEnd {
                task: i,
                pid: Some(pid),
                plan: Some(&plan),
                fired: &fired,
                bytes_sent: result.bytes_sent,
                outcome: Some(&outcome),
            };
            if let Some(o) = injector.task_ended(&mut workers, end).await {
                outcome = o;
            }
        }
        let usage = sampler.finish(OUTLIVE_GRACE).await;
        outcome = judge_resources(outcome, &usage, task.expect_resources.as_ref());
        let transcript = opts.keep_transcripts.then_some(transcript);
        let mut judged = judge(
            i,
            outcome,
            output,
            &expect,
            note,
            Some(pid),
            started,
            transcript,
        );
        judged.raw_request = task.request.is_some();
        if let Some(end) = worker_end {
            judged.worker_end = Some(end);
            if let Some(want) = expect.exit.filter(|_| !ends_a_process(&judged.outcome)) {
                judged.ok &= end == WorkerEnd::Exited { exit: want };
                judged.expected.push_str(&format!(", then {want}"));
            }
        }
        if let Some(e) = &task.expect_stderr {
            judged.stderr_unmet = super::stderr::unmet_for_task(
                &workers,
                stderr_mark,
                e,
                i,
                Some(pid),
                faulthandler_dir.as_deref(),
            )
            .await;
            judged.ok &= judged.stderr_unmet.is_empty();
        }
        judged.resources = Some(usage);
        report.tasks.push(judged);
    }
    drop(conn);

    if !injector.is_empty() {
        injector.finish(&mut workers).await;
    }
    let shutdown = workers.shutdown(Duration::from_secs(5)).await;
    // A child a fault held (stopped) outlives the daemon by design: that fault reports it.
    report.leftovers = injector.after_shutdown(shutdown.leftovers.clone()).await;
    report.faults = injector.into_reports();
    report.daemon_pid = shutdown.daemon_pid;
    report.daemon_exit = shutdown.daemon_exit;
    report.stderr_tail = tail_lines(&shutdown.stderr, 20);
    if let Some(e) = &sc.expect_stderr {
        report.stderr_unmet = super::stderr::unmet(
            &String::from_utf8_lossy(&shutdown.stderr),
            e,
            "the daemon's and its workers'",
        );
    }
    Ok(())
}

/// pyspark's rule for the worker module its daemon forks into (daemon.py): 3.5 ignores its argv
/// and always runs `pyspark.worker`; 4.0 and later import argv[1] only when the name starts with
/// "pyspark" (so a wrapper must be named e.g. `pyspark_mine.worker`), 4.0/4.1 once at daemon
/// start, 4.2+ in every forked worker. A direct worker runs whatever `-m` names.
fn module_notes(env: &PythonEnv, sc: &Scenario) -> Vec<String> {
    let Some(WorkerModule::One(m)) = sc.worker_module.as_ref().filter(|_| sc.mode.uses_daemon())
    else {
        return vec![];
    };
    let v = env.pyspark;
    if (v.major, v.minor) < (4, 0) {
        vec![format!("pyspark {v}'s daemon ignores its arguments and always forks into pyspark.worker: worker_module {} is not used", m.0)]
    } else if !m.0.starts_with("pyspark") {
        vec![format!("pyspark {v}'s daemon imports the worker module only when its name starts with \"pyspark\" (daemon.py): {} is ignored and pyspark.worker runs", m.0)]
    } else {
        vec![]
    }
}

/// How long a failure waits for the daemon's (or a direct worker's) fate before judging: a limit,
/// not a sleep.
const SETTLE: Duration = Duration::from_secs(2);

/// What the target pyspark built for one task: an RDD task's command, or a UDF task's function
/// pickles (in [`UdfTask::function_specs`] order).
#[derive(Clone, Debug)]
pub enum Built {
    Command(Vec<u8>),
    Functions(Vec<Vec<u8>>),
    /// A raw request needs nothing built: see [`encode_raw_request`].
    Raw,
}

/// Everything every task of `sc` needs from the target pyspark, in two glue runs at most (both
/// cached on disk). A function that does not compile is the scenario's fault: the caller reports
/// it as bad input before any worker starts.
pub fn build_tasks(env: &PythonEnv, sc: &Scenario) -> Result<Vec<Built>, pyenv::EnvError> {
    let rdd: Vec<CommandSpec> = sc
        .tasks
        .iter()
        .filter(|t| t.udf.is_none() && t.request.is_none())
        .map(command_spec)
        .collect();
    let functions: Vec<_> = sc
        .tasks
        .iter()
        .filter_map(|t| t.udf.as_ref())
        .flat_map(UdfTask::function_specs)
        .collect();
    let mut commands = pyenv::build_commands(env, &rdd)?.into_iter();
    let mut pickles = pyenv::build_udf_functions(env, &functions)?.into_iter();
    Ok(sc
        .tasks
        .iter()
        .map(|t| match (&t.udf, &t.request) {
            (_, Some(_)) => Built::Raw,
            (None, None) => Built::Command(commands.next().unwrap_or_default()),
            (Some(u), None) => {
                Built::Functions(pickles.by_ref().take(u.function_specs().len()).collect())
            }
        })
        .collect())
}

pub fn command_spec(task: &Task) -> CommandSpec {
    CommandSpec {
        function: task.function.clone(),
        deserializer: task
            .deserializer
            .clone()
            .unwrap_or_else(|| default_deserializer(&task.input)),
        serializer: task
            .serializer
            .clone()
            .unwrap_or(SerializerSpec::AutoBatched),
    }
}

fn default_deserializer(input: &Input) -> SerializerSpec {
    match input {
        Input::Empty | Input::AutoBatched { .. } => SerializerSpec::AutoBatched,
        Input::PickleBatched { batch_size, .. } => SerializerSpec::Batched { size: *batch_size },
        Input::Pickle { .. } => SerializerSpec::Pickle,
        Input::Utf8 { .. } => SerializerSpec::Utf8,
        Input::Raw { .. } => SerializerSpec::NoOp,
        // What an earlier task wrote with the default serializer.
        Input::OutputOf { .. } => SerializerSpec::AutoBatched,
    }
}

fn frame_kind(task: &Task) -> FrameKind {
    match task
        .serializer
        .as_ref()
        .unwrap_or(&SerializerSpec::AutoBatched)
    {
        SerializerSpec::Pickle => FrameKind::Unbatched,
        SerializerSpec::Utf8 => FrameKind::Utf8,
        SerializerSpec::NoOp => FrameKind::Raw,
        _ => FrameKind::Batched,
    }
}

/// The expectation of `task` for this env and worker `module`: the first `expect_by_version`
/// entry that matches, with its note, else `expect`.
fn effective_expectation(task: &Task, env: &PythonEnv, module: &str) -> (Expect, Option<String>) {
    let python = python_parts(&env.python_version);
    for v in &task.expect_by_version {
        let applies = v.pyspark.as_ref().is_none_or(|r| r.matches(env.pyspark))
            && v.python.as_ref().is_none_or(|r| r.matches_parts(python))
            && v.module.as_ref().is_none_or(|p| p.matches(module));
        if applies {
            let mut this = if v.python.is_some() {
                format!("pyspark {} on python {}", env.pyspark, env.python_version)
            } else {
                format!("pyspark {}", env.pyspark)
            };
            if v.module.is_some() {
                this = format!("{module} on {this}");
            }
            return (v.expect.clone(), Some(format!("{this}: {}", v.note)));
        }
    }
    (task.expect.clone(), None)
}

/// The typed request for a task; files and broadcast pickles are written under `dir`.
pub fn build_request(
    task: &Task,
    env: &PythonEnv,
    built: Built,
    dir: &Path,
    outputs: &[Vec<DataItem>],
) -> anyhow::Result<TaskRequest> {
    let files_dir = dir.join("files");
    std::fs::create_dir_all(&files_dir)?;
    for (name, content) in &task.files {
        std::fs::write(files_dir.join(name), content)?;
    }
    let udf_layout = UdfLayout::for_version(env.pyspark.major, env.pyspark.minor);
    let mut req = match (built, &task.udf) {
        (Built::Command(command), None) => TaskRequest::non_udf(
            &env.python_version,
            command,
            input_items(&task.input, outputs, &env.python_version)?,
        ),
        (Built::Functions(pickles), Some(udf)) => {
            let layout = udf_layout.ok_or_else(|| {
                anyhow::anyhow!(
                    "fakejvm speaks UDF tasks from pyspark 3.5, this is {}",
                    env.pyspark
                )
            })?;
            udf.request(layout, &env.python_version, pickles)
                .map_err(anyhow::Error::msg)?
        }
        _ => anyhow::bail!("fakejvm: a task was built as another kind (RDD, UDF or raw request)"),
    };
    req.split_index = task.split_index;
    let c = &task.context;
    req.context = TaskContext {
        is_barrier: c.barrier,
        barrier: None,
        stage_id: c.stage_id,
        partition_id: c.partition_id,
        attempt_number: c.attempt_number,
        task_attempt_id: c.task_attempt_id,
        cpus: c.cpus,
        // 4.3's SQL workers read the task's CPU amount from the context JSON.
        cpu_amount: (task.udf.is_some() && udf_layout.is_some_and(|l| l.dialect() == Dialect::D))
            .then(|| c.cpus.to_string()),
        resources: c
            .resources
            .iter()
            .map(|(k, v)| Resource {
                key: k.clone(),
                name: k.clone(),
                addresses: v
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|a| a.as_str().map(str::to_owned))
                    .collect(),
            })
            .collect(),
        local_properties: c
            .local_properties
            .iter()
            .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
            .collect(),
    };
    req.spark_files_dir = files_dir.display().to_string();
    req.includes = task.includes.clone();
    for b in &task.broadcasts {
        let path = dir.join(format!("broadcast_{}", b.id));
        let value = pickle::value_from_json(&b.value)?;
        std::fs::write(&path, pickle::dumps(&value))?;
        req.broadcasts.ops.push(BroadcastOp::Add {
            id: b.id,
            path: Some(path.display().to_string()),
        });
    }
    Ok(req)
}

fn input_items(
    input: &Input,
    outputs: &[Vec<DataItem>],
    python_version: &str,
) -> anyhow::Result<Vec<DataItem>> {
    let values = |vs: &[serde_json::Value],
                  range: &Option<(i64, i64)>|
     -> anyhow::Result<Vec<pickle::Value>> {
        Input::pickle_values(vs, range)
            .iter()
            .map(|v| Ok(pickle::value_from_json(v)?))
            .collect()
    };
    let frames = |f: Vec<Vec<u8>>| f.into_iter().map(DataItem::Frame).collect::<Vec<_>>();
    Ok(match input {
        Input::Empty => vec![],
        Input::PickleBatched {
            batch_size,
            values: vs,
            range,
        } => frames(pickle::batched_frames(&values(vs, range)?, *batch_size)),
        Input::AutoBatched { values: vs, range } => {
            frames(pickle::auto_batched_frames(&values(vs, range)?))
        }
        Input::Pickle { values: vs, range } => {
            frames(pickle::unbatched_frames(&values(vs, range)?))
        }
        Input::Utf8 { lines } => {
            let lines: Vec<Option<String>> = lines
                .iter()
                .map(|l| match l {
                    Line::Text(s) => Some(s.clone()),
                    Line::Null(()) => None,
                    Line::Repeat { repeat, times } => Some(repeat.repeat(*times)),
                })
                .collect();
            pickle::utf8_frames(&lines)
                .into_iter()
                .map(|f| f.map(DataItem::Frame).unwrap_or(DataItem::Null))
                .collect()
        }
        Input::Raw { frames } => frames
            .iter()
            .map(|f| {
                Ok(match f {
                    RawFrame::Hex(h) => DataItem::Frame(hex::decode(h)?),
                    RawFrame::Text(t) => DataItem::Frame(t.as_bytes().to_vec()),
                    RawFrame::Int(i) => DataItem::Raw(i.to_be_bytes().to_vec()),
                    RawFrame::Bytes(h) => DataItem::Raw(hex::decode(h)?),
                    RawFrame::PythonVersion => DataItem::Frame(python_version.as_bytes().to_vec()),
                })
            })
            .collect::<anyhow::Result<_>>()?,
        Input::OutputOf { task } => outputs.get(*task).cloned().ok_or_else(|| {
            anyhow::anyhow!("input output_of task {task}: that task produced no output")
        })?,
    })
}

/// A UDF task's rows (and schema, when the expectation names one) against `expect.rows`.
/// Pickled results compare through the pickle value model, so tagged forms in the expectation
/// match; Arrow rows compare as the JSON `arrow::value_at` gives.
fn compare_rows(expect: &Expect, udf: &UdfTask, got: ReplyRows) -> Outcome {
    let Some(rows) = &expect.rows else {
        return Outcome::Passed;
    };
    let expected_rows = if udf.eval().is_pickled() {
        let canonical: Result<Vec<_>, _> = rows
            .iter()
            .map(|v| pickle::value_from_json(v).map(|p| pickle::value_to_json(&p)))
            .collect();
        match canonical {
            Ok(r) => r,
            Err(e) => {
                return Outcome::Harness {
                    error: format!("expect.rows passed validation but does not convert: {e}"),
                }
            }
        }
    } else {
        rows.clone()
    };
    let schema_ok = expect
        .schema
        .as_ref()
        .is_none_or(|s| got.schema.as_deref().unwrap_or("") == s.as_str());
    if schema_ok && expected_rows == got.rows {
        return Outcome::Passed;
    }
    let mut expected = serde_json::json!({ "rows": expected_rows });
    let mut got_json = serde_json::json!({ "rows": got.rows });
    if let Some(s) = &expect.schema {
        expected["schema"] = s.as_str().into();
        got_json["schema"] = got.schema.into();
    }
    Outcome::Mismatch {
        expected,
        got: got_json,
    }
}

fn compare_values(expect: &Expect, got: serde_json::Value) -> Outcome {
    let Some(expected) = &expect.values else {
        return Outcome::Passed;
    };
    // Canonicalise the expectation through the pickle value model so tagged forms
    // ({"$tuple": ...}) compare equal to what the worker produced. Scenario::parse checked
    // every value, so a failure here is fakejvm's, never a Mismatch.
    let expected: Result<Vec<_>, _> = expected
        .iter()
        .map(|v| pickle::value_from_json(v).map(|p| pickle::value_to_json(&p)))
        .collect();
    let expected = match expected {
        Ok(values) => serde_json::Value::Array(values),
        Err(e) => {
            return Outcome::Harness {
                error: format!("expect.values passed validation but does not convert: {e}"),
            }
        }
    };
    if expected == got {
        Outcome::Passed
    } else {
        Outcome::Mismatch { expected, got }
    }
}

#[allow(clippy::too_many_arguments)]
fn judge(
    index: usize,
    outcome: Outcome,
    output: Option<serde_json::Value>,
    expect: &Expect,
    note: Option<String>,
    pid: Option<i32>,
    started: Instant,
    transcript: Option<Transcript>,
) -> TaskReport {
    let (expected, ok) = if let Some(checks) = expect.output_checks() {
        (checks, outcome == Outcome::Passed)
    } else if let Some(x) = &expect.exception {
        let ok = match &outcome {
            Outcome::PythonException { exc_type, message } => {
                let type_ok =
                    exc_type == &x.exc_type || exc_type.ends_with(&format!(".{}", x.exc_type));
                type_ok
                    && x.message_contains
                        .as_ref()
                        .is_none_or(|m| message.contains(m.as_str()))
            }
            _ => false,
        };
        let mut what = format!("PythonException {}", x.exc_type);
        if let Some(m) = &x.message_contains {
            what.push_str(&format!(" containing {m:?}"));
        }
        (what, ok)
    } else {
        let kind = expect.outcome.unwrap_or(OutcomeKind::Passed);
        let exit = match &outcome {
            Outcome::WorkerCrashed { exit, .. } | Outcome::DaemonDied { exit, .. } => *exit,
            _ => None,
        };
        // On a raw request, `exit` after any other answer is checked against the worker's end.
        let pins_crash = matches!(kind, OutcomeKind::WorkerCrashed | OutcomeKind::DaemonDied);
        match expect.exit.filter(|_| pins_crash) {
            Some(want) => (
                format!("{kind:?} with {want}"),
                outcome.kind() == kind && exit == Some(want),
            ),
            None => (format!("{kind:?}"), outcome.kind() == kind),
        }
    };
    TaskReport {
        index,
        outcome,
        expected,
        ok,
        stderr_unmet: vec![],
        note,
        output,
        pid,
        worker_end: None,
        raw_request: false,
        elapsed_ms: started.elapsed().as_millis() as u64,
        resources: None,
        transcript,
    }
}

fn ends_a_process(outcome: &Outcome) -> bool {
    matches!(
        outcome,
        Outcome::WorkerCrashed { .. } | Outcome::DaemonDied { .. }
    )
}

/// A raw request's bytes: each frame as the wire writes it, each its own `data` span (so faults
/// name them `{"data": K}`).
pub(crate) fn encode_raw_request(raw: &RawRequest, env: &PythonEnv) -> EncodedRequest {
    let mut out = EncodedRequest::default();
    for (k, f) in raw.frames.iter().enumerate() {
        let start = out.bytes.len();
        let framed = |payload: &[u8], bytes: &mut Vec<u8>| {
            bytes.extend_from_slice(&(payload.len() as i32).to_be_bytes());
            bytes.extend_from_slice(payload);
        };
        match f {
            // Checked as hex when the file was loaded.
            RawFrame::Hex(h) => framed(&hex::decode(h).unwrap_or_default(), &mut out.bytes),
            RawFrame::Text(t) => framed(t.as_bytes(), &mut out.bytes),
            RawFrame::PythonVersion => framed(env.python_version.as_bytes(), &mut out.bytes),
            RawFrame::Int(i) => out.bytes.extend_from_slice(&i.to_be_bytes()),
            RawFrame::Bytes(h) => out.bytes.extend(hex::decode(h).unwrap_or_default()),
        }
        out.spans.push(Span {
            kind: SpanKind::Data(k),
            start,
            end: out.bytes.len(),
        });
    }
    out
}

/// What became of `pid` within [`SETTLE`] after it answered: a direct worker's exit status, or
/// for a daemon's forked worker whether it is gone.
async fn worker_end(workers: &mut Workers, pid: i32) -> WorkerEnd {
    if workers.mode().uses_daemon() {
        let until = Instant::now() + SETTLE;
        loop {
            if crate::worker::procs::stat(pid).is_none_or(|s| s.is_dead()) {
                return WorkerEnd::Gone;
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    } else if let Some(exit) = workers.wait_direct_worker(pid, SETTLE).await {
        return WorkerEnd::Exited { exit };
    }
    WorkerEnd::StillRunning {
        after_ms: SETTLE.as_millis() as u64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_raw_request_is_its_frames_each_a_data_span() {
        let env = PythonEnv {
            python: "python3".into(),
            pyspark: "4.0.5".parse().unwrap(),
            python_version: "3.11".into(),
            pyspark_dir: "/nonexistent".into(),
            flavor: None,
        };
        let raw = RawRequest {
            frames: vec![
                RawFrame::PythonVersion,
                RawFrame::Int(-1),
                RawFrame::Hex("c328".into()),
                RawFrame::Bytes("ff".into()),
                RawFrame::Text("é".into()),
            ],
            then: RequestEnd::Wait,
        };
        let e = encode_raw_request(&raw, &env);
        assert_eq!(
            hex::encode(&e.bytes),
            "00000004332e3131ffffffff00000002c328ff00000002c3a9"
        );
        let spans: Vec<(SpanKind, usize, usize)> =
            e.spans.iter().map(|s| (s.kind, s.start, s.end)).collect();
        assert_eq!(
            spans,
            vec![
                (SpanKind::Data(0), 0, 8),
                (SpanKind::Data(1), 8, 12),
                (SpanKind::Data(2), 12, 18),
                (SpanKind::Data(3), 18, 19),
                (SpanKind::Data(4), 19, 25),
            ]
        );
    }
}
