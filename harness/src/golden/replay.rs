//! `fakejvm replay`: each recorded request, its volatile fields re-filled, goes to a live worker
//! of the recorded pyspark version in the recorded mode (one live connection per recorded one,
//! so a reused worker is reused again); each normalised live reply is compared with the
//! normalised recorded one, frame by frame.
//!
//! A difference fails the golden and prints as a frame-level diff. `--bless` stages the live
//! replies beside the recorded ones as pending files with a readable diff; `--review` shows them,
//! `--accept` moves them in and `--reject` drops them (bless.rs). A golden is never rewritten by
//! a replay, and a golden with pending files fails until they are accepted or rejected.

use super::bless::{self, NewReply};
use super::format::{self, Golden};
use super::normalise::{self, LiveValues};
use crate::error::BadInput;
use crate::outputs::{self, Entry, GoldenPart, OutputArgs, RunDoc};
use crate::pickle;
use crate::protocol::{
    decode_replies, decode_requests_as, Dialect, Reply, ReplyEnd, ReplyItem, TaskRequest,
};
use crate::pyenv;
use crate::session::{self, SessionOptions, Transcript, WritePlan};
use crate::shard::Shard;
use crate::verdict::{
    connect_failure, judge_task, parse_exception, tail_lines, Outcome, WorkerFacts,
};
use crate::worker::{LaunchOptions, Mode, Workers};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a failed task waits for the daemon's (or a direct worker's) fate before it is judged.
const SETTLE: Duration = Duration::from_secs(2);

/// Replay goldens against live workers and compare the replies.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Golden folders, their index.json files, or directories holding goldens.
    #[arg(value_name = "PATH", default_value = "golden")]
    pub paths: Vec<PathBuf>,
    /// Stage each changed reply for review: the live reply is written beside the recorded one
    /// (`c0.reply.bin.new`...) with a readable diff (`pending.diff.txt`); the golden itself is
    /// left as it is. Refused for a golden whose replay had errors or leaked processes.
    #[arg(long, conflicts_with_all = ["review", "accept", "accept_all", "reject", "reject_all"])]
    pub bless: bool,
    /// Show the pending changes under PATH (what --bless staged); replays nothing.
    #[arg(long, conflicts_with_all = ["accept", "accept_all", "reject", "reject_all"])]
    pub review: bool,
    /// Accept the pending change of one golden: its folder, or the end of its path
    /// (`pyspark-4.0.5/map_parallelize`). Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with_all = ["accept_all", "reject", "reject_all"])]
    pub accept: Vec<String>,
    /// Accept every pending change under PATH.
    #[arg(long, conflicts_with_all = ["reject", "reject_all"])]
    pub accept_all: bool,
    /// Drop the pending change of one golden (named as for --accept). Repeatable.
    #[arg(long, value_name = "NAME", conflicts_with = "reject_all")]
    pub reject: Vec<String>,
    /// Drop every pending change under PATH.
    #[arg(long)]
    pub reject_all: bool,
    /// Use this interpreter instead of fakejvm's cached env of each golden's recorded pyspark
    /// version; goldens of another pyspark version are N/A.
    #[arg(long, env = "FAKEJVM_PYTHON", value_name = "PATH")]
    pub python: Option<PathBuf>,
    #[command(flatten)]
    pub python_version: crate::pyenv::PythonVersionArg,
    /// Deadline for each task, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub deadline_ms: u64,
    /// Goldens replayed at once.
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub jobs: usize,
    #[command(flatten)]
    pub out: OutputArgs,
}

impl ReplayArgs {
    /// A plain replay of `paths` (no --bless, review or accept), with the defaults of the flags.
    pub fn replay(paths: Vec<PathBuf>, python: Option<PathBuf>) -> ReplayArgs {
        ReplayArgs {
            paths,
            bless: false,
            review: false,
            accept: vec![],
            accept_all: false,
            reject: vec![],
            reject_all: false,
            python,
            python_version: Default::default(),
            deadline_ms: 30_000,
            jobs: 2,
            out: OutputArgs::default(),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub bless: bool,
    pub python: Option<PathBuf>,
    /// The CPython of the cached envs (`--python-version`); None: the base interpreter's.
    pub python_version: Option<pyenv::PythonMinor>,
    pub deadline: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            bless: false,
            python: None,
            python_version: None,
            deadline: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoldenStatus {
    Passed,
    /// Replies differed and --bless staged the live ones for review (bless.rs).
    Blessed,
    Failed,
    /// Not replayed: the given interpreter has another pyspark than the recorded one.
    NotApplicable {
        why: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct GoldenReport {
    pub dir: PathBuf,
    pub pyspark: String,
    pub dialect: Dialect,
    pub mode: Mode,
    pub tasks: usize,
    pub status: GoldenStatus,
    pub differences: Vec<Difference>,
    /// Things that kept the replay from comparing at all (no env, worker would not start...).
    pub errors: Vec<String>,
    /// Processes of ours still alive after shutdown (then killed).
    pub leftovers: Vec<(i32, String)>,
    /// Pending files in the golden's folder: staged by this --bless, or left by an earlier one
    /// (then the golden fails until they are accepted or rejected).
    pub pending: Vec<String>,
    /// One typed outcome per recorded task, the same `Outcome` scenarios and fuzz cases end in:
    /// Passed when its live reply matched, Mismatch when it differed, or what kept it from
    /// completing (WorkerCrashed, Hang, DaemonDied...). Empty when the golden did not run.
    pub outcomes: Vec<Outcome>,
    /// The end of what the daemon and its workers wrote to stderr (empty when none ran).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub stderr_tail: String,
    pub elapsed_ms: u64,
}

/// The counts a replay ends with.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GoldenSummary {
    pub passed: usize,
    pub blessed: usize,
    pub failed: usize,
    pub not_applicable: usize,
}

impl GoldenSummary {
    /// The summary line, and where to review what --bless staged (`paths` as given).
    pub fn lines(&self, paths: &[String]) -> String {
        let mut out = format!(
            "{} passed, {} blessed, {} failed, {} n/a\n",
            self.passed, self.blessed, self.failed, self.not_applicable
        );
        if self.blessed > 0 {
            out.push_str(&format!("review the staged changes: fakejvm replay --review {}; then --accept NAME, --accept-all or --reject NAME\n", paths.join(" ")));
        }
        out
    }
}

impl GoldenReport {
    /// The report of a golden that has not run yet.
    fn new(golden: &Golden) -> GoldenReport {
        let ix = &golden.index;
        GoldenReport {
            dir: golden.dir.clone(),
            pyspark: ix.pyspark.clone(),
            dialect: ix.dialect,
            mode: ix.mode,
            tasks: ix.connections.iter().map(|c| c.tasks).sum(),
            status: GoldenStatus::Passed,
            differences: vec![],
            errors: vec![],
            leftovers: vec![],
            pending: vec![],
            outcomes: vec![],
            stderr_tail: String::new(),
            elapsed_ms: 0,
        }
    }

    /// One summary line, then one block per difference or error.
    pub fn text(&self) -> String {
        let tag = match &self.status {
            GoldenStatus::Passed => "PASS ",
            GoldenStatus::Blessed => "BLESS",
            GoldenStatus::Failed => "FAIL ",
            GoldenStatus::NotApplicable { .. } => "N/A  ",
        };
        let mut out = format!(
            "{tag} {}  [pyspark {} | dialect {:?} | {:?} | {} task(s)] {} ms",
            self.dir.display(),
            self.pyspark,
            self.dialect,
            self.mode,
            self.tasks,
            self.elapsed_ms
        );
        for d in &self.differences {
            for l in d.to_string().lines() {
                out.push_str("\n      ");
                out.push_str(l);
            }
        }
        for e in &self.errors {
            out.push_str(&format!("\n      error: {e}"));
        }
        out.push_str(&crate::report::leftovers_line(&self.leftovers));
        if let GoldenStatus::NotApplicable { why } = &self.status {
            out.push_str(&format!("\n      {why}"));
        }
        if !self.pending.is_empty() {
            let dir = self.dir.display();
            let what = if self.status == GoldenStatus::Blessed {
                "staged for review"
            } else {
                "pending from an earlier --bless"
            };
            out.push_str(&format!(
                "\n      {what}: {}\n      review: fakejvm replay --review {dir}; then --accept {dir} or --reject {dir}",
                self.pending.join(", ")
            ));
        }
        out
    }
}

/// One way a live reply differs from the recorded one, located by connection, reply (task) and
/// frame index.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Difference {
    pub conn: String,
    pub reply: usize,
    /// "data[3]", "accumulator[0]", "end", "exception", "reply".
    pub at: String,
    pub expected: String,
    pub got: String,
}

impl fmt::Display for Difference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} reply {} {}:", self.conn, self.reply, self.at)?;
        writeln!(f, "  expected: {}", self.expected)?;
        write!(f, "  got:      {}", self.got)
    }
}

/// A golden loaded and decoded: everything checked before any worker starts, so a broken golden
/// is bad input (exit 2), not a failed replay.
struct Prepared {
    golden: Golden,
    conns: Vec<PreparedConn>,
}

struct PreparedConn {
    id: String,
    requests: Vec<TaskRequest>,
    recorded: Vec<Reply>,
    /// The recorded answer to the JVM closing the connection (see format::Connection::after_close).
    after_close: Option<Reply>,
}

fn prepare(dir: &Path) -> Result<Prepared, BadInput> {
    let golden = Golden::load(dir)?;
    let ix = &golden.index;
    let version: pyenv::PysparkVersion = ix
        .pyspark
        .parse()
        .map_err(|e| BadInput::new(&dir.join(format::INDEX), e))?;
    if Dialect::for_version(version.major, version.minor) != Some(ix.dialect) {
        return Err(BadInput::new(
            &dir.join(format::INDEX),
            format!(
                "dialect {:?} does not belong to pyspark {}",
                ix.dialect, ix.pyspark
            ),
        ));
    }
    let mut conns = vec![];
    for c in &ix.connections {
        let req_bytes = golden.read(&c.request)?;
        let (decoded, err) = decode_requests_as(ix.layout(), &req_bytes);
        if let Some(e) = err {
            return Err(BadInput::new(
                &dir.join(&c.request),
                format!(
                    "does not decode as dialect {:?} ({}): {e}",
                    ix.dialect,
                    ix.layout()
                ),
            ));
        }
        let rep_bytes = golden.read(&c.reply)?;
        let (mut recorded, err) = decode_replies(ix.dialect, &rep_bytes);
        if let Some(e) = err {
            return Err(BadInput::new(
                &dir.join(&c.reply),
                format!("does not decode as dialect {:?}: {e}", ix.dialect),
            ));
        }
        let expected_replies = c.tasks + c.after_close.is_some() as usize;
        if decoded.len() != c.tasks || recorded.len() != expected_replies {
            return Err(BadInput::new(
                &dir.join(format::INDEX),
                format!(
                    "connection {} says {} task(s){}, its files hold {} request(s) and {} reply(ies)",
                    c.id,
                    c.tasks,
                    if c.after_close.is_some() { " and an answer to the close" } else { "" },
                    decoded.len(),
                    recorded.len()
                ),
            ));
        }
        let after_close = if c.after_close.is_some() {
            recorded.pop()
        } else {
            None
        };
        conns.push(PreparedConn {
            id: c.id.clone(),
            requests: decoded.into_iter().map(|d| d.request).collect(),
            recorded,
            after_close,
        });
    }
    Ok(Prepared { golden, conns })
}

pub async fn replay_cmd(args: ReplayArgs) -> anyhow::Result<u8> {
    if args.review
        || args.accept_all
        || args.reject_all
        || !args.accept.is_empty()
        || !args.reject.is_empty()
    {
        let o = &args.out;
        if o.json.is_some() || o.junit.is_some() || o.shard.is_some() {
            return Err(BadInput::msg(
                "--json, --junit and --shard are for a replay; --review, --accept and --reject replay nothing",
            )
            .into());
        }
        return review_cmd(&args);
    }
    let (part, code) = replay_part(&args).await?;
    let doc = RunDoc {
        command: crate::outputs::RunCommand::Replay,
        shard: args.out.shard,
        scenarios: None,
        goldens: Some(part),
    };
    outputs::write(&[doc], &args.out)?;
    Ok(code)
}

/// Replay this shard's share of the goldens under `args.paths`, printing each verdict as it is
/// done and then the summary: the goldens part of the run's report, and the exit code.
pub async fn replay_part(args: &ReplayArgs) -> anyhow::Result<(GoldenPart, u8)> {
    let dirs = format::collect(&args.paths)?;
    // Every golden is checked before anything runs, in every shard: one broken file is exit 2,
    // not a failure.
    let mut prepared = vec![];
    for d in &dirs {
        prepared.push(prepare(d)?);
    }
    let shard = args.out.shard();
    let keys: Vec<(String, String)> = prepared
        .iter()
        .map(|p| {
            (
                p.golden.dir.display().to_string(),
                p.golden.index.pyspark.clone(),
            )
        })
        .collect();
    let total = prepared.len();
    let (order, prepared): (Vec<usize>, Vec<Prepared>) = prepared
        .into_iter()
        .enumerate()
        .zip(shard.picks(&keys))
        .filter_map(|(p, picked)| picked.then_some(p))
        .unzip();
    if shard != Shard::ALL {
        eprintln!(
            "fakejvm: shard {shard} replays {} of {total} golden(s)",
            prepared.len()
        );
    }
    // So is the interpreter or every golden's env (provisioned if missing): a wrong --python is
    // exit 2, an env that will not provision exit 3, each one line, instead of a failed golden per
    // version. With --python, goldens of other versions are N/A, so only it is checked. A shard
    // provisions only the envs of its own goldens.
    if let Some(python) = &args.python {
        pyenv::resolve(Some(python), None)
            .map_err(|e| crate::error::env_failure(Some(python), e))?;
    } else {
        for p in &prepared {
            // A golden of another CPython minor is N/A (see not_applicable): no env for it.
            if other_minor_asked(&p.golden.index, args.python_version.python_version).is_some() {
                continue;
            }
            let index = p.golden.dir.join(format::INDEX);
            let want = pyenv::Want::new(
                Some(&p.golden.index.pyspark),
                args.python_version.python_version,
            );
            pyenv::resolve_with(None, &want)
                .map_err(|e| crate::error::env_failure(Some(&index), e))?;
        }
    }
    let opts = ReplayOptions {
        bless: args.bless,
        python: args.python.clone(),
        python_version: args.python_version.python_version,
        deadline: Duration::from_millis(args.deadline_ms),
    };
    let reports = replay_prepared(prepared, &opts, args.jobs.max(1), |r| {
        println!("{}", r.text())
    })
    .await;
    let part = GoldenPart {
        paths: args.paths.iter().map(|p| p.display().to_string()).collect(),
        total,
        entries: order
            .into_iter()
            .zip(&reports)
            .map(|(i, r)| Entry::golden(i, r))
            .collect(),
    };
    print!("{}", part.summary().lines(&part.paths));
    let failed = reports.iter().any(|r| r.status == GoldenStatus::Failed);
    Ok((part, if failed { 1 } else { 0 }))
}

/// `--review`, `--accept`, `--reject`: nothing is replayed.
fn review_cmd(args: &ReplayArgs) -> anyhow::Result<u8> {
    let pending = bless::pending_goldens(&args.paths)?;
    if args.review {
        for d in &pending {
            println!("== {}", d.display());
            print!("{}", bless::review_text(d));
        }
        println!("{} golden(s) with pending changes", pending.len());
        return Ok(0);
    }
    let accepting = args.accept_all || !args.accept.is_empty();
    let names = if accepting {
        &args.accept
    } else {
        &args.reject
    };
    let all = if accepting {
        args.accept_all
    } else {
        args.reject_all
    };
    // Every name is checked before any golden changes.
    let chosen: Vec<PathBuf> = if all {
        pending
    } else {
        names
            .iter()
            .map(|n| bless::select(&pending, n))
            .collect::<Result<_, _>>()?
    };
    for d in &chosen {
        if accepting {
            let conns = bless::accept(d)?;
            println!("ACCEPT {} ({})", d.display(), conns.join(", "));
        } else {
            let files = bless::discard(d)?;
            println!("REJECT {} ({} file(s) removed)", d.display(), files.len());
        }
    }
    println!(
        "{} golden(s) {}",
        chosen.len(),
        if accepting { "accepted" } else { "rejected" }
    );
    Ok(0)
}

/// Replay several goldens, `jobs` at a time; `each` sees every report as it is done.
pub async fn replay_all(
    dirs: &[PathBuf],
    opts: &ReplayOptions,
    jobs: usize,
    each: impl FnMut(&GoldenReport),
) -> Result<Vec<GoldenReport>, BadInput> {
    let mut prepared = vec![];
    for d in dirs {
        prepared.push(prepare(d)?);
    }
    Ok(replay_prepared(prepared, opts, jobs.max(1), each).await)
}

async fn replay_prepared(
    prepared: Vec<Prepared>,
    opts: &ReplayOptions,
    jobs: usize,
    each: impl FnMut(&GoldenReport),
) -> Vec<GoldenReport> {
    let jobs_list = prepared
        .into_iter()
        .map(|p| {
            let opts = opts.clone();
            (GoldenReport::new(&p.golden), async move {
                replay_one(p, &opts).await
            })
        })
        .collect();
    run_jobs(jobs_list, jobs, each).await
}

/// Runs each golden's replay, `jobs` at a time, and returns one report per golden in order. A
/// replay that panics becomes a Failed report (its `before` with the panic as an error): a
/// golden never drops out of the count.
async fn run_jobs<F>(
    list: Vec<(GoldenReport, F)>,
    jobs: usize,
    mut each: impl FnMut(&GoldenReport),
) -> Vec<GoldenReport>
where
    F: std::future::Future<Output = GoldenReport> + 'static,
{
    // Tasks on one thread (a LocalSet): the work is waiting on worker processes, not CPU, and
    // the session futures need not be Send.
    let local = tokio::task::LocalSet::new();
    let limit = std::rc::Rc::new(tokio::sync::Semaphore::new(jobs.max(1)));
    let mut done: Vec<Option<GoldenReport>> = (0..list.len()).map(|_| None).collect();
    local
        .run_until(async {
            let mut set = tokio::task::JoinSet::new();
            let mut slot = std::collections::HashMap::new();
            let mut before = vec![];
            for (i, (report, fut)) in list.into_iter().enumerate() {
                let limit = limit.clone();
                let handle = set.spawn_local(async move {
                    let _permit = limit
                        .acquire()
                        .await
                        .expect("the semaphore is never closed");
                    fut.await
                });
                slot.insert(handle.id(), i);
                before.push(Some(report));
            }
            while let Some(joined) = set.join_next_with_id().await {
                let (i, report) = match joined {
                    Ok((id, report)) => (slot[&id], report),
                    Err(e) => {
                        let i = slot[&e.id()];
                        let mut report = before[i].take().expect("each task ends once");
                        report.status = GoldenStatus::Failed;
                        report
                            .errors
                            .push(format!("the replay panicked: {}", panic_text(e)));
                        (i, report)
                    }
                };
                each(&report);
                done[i] = Some(report);
            }
        })
        .await;
    done.into_iter()
        .map(|r| r.expect("every task was joined"))
        .collect()
}

fn panic_text(e: tokio::task::JoinError) -> String {
    if !e.is_panic() {
        return e.to_string();
    }
    let payload = e.into_panic();
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "(a panic without a message)".into())
}

/// Replay one golden folder.
pub async fn replay_golden(dir: &Path, opts: &ReplayOptions) -> Result<GoldenReport, BadInput> {
    Ok(replay_one(prepare(dir)?, opts).await)
}

/// What the live worker sent back for one recorded connection.
struct LiveConn {
    /// Each task's reply, or the outcome that kept it from completing (judged by verdict, as for
    /// scenarios and fuzz cases).
    replies: Vec<Result<Reply, Outcome>>,
    /// What the worker wrote after we closed our side following a reusable last reply.
    after_close: Option<Result<Reply, String>>,
    /// The raw reply bytes of each task, then of the answer to the close (after the handshake),
    /// for --bless.
    raw: Vec<Vec<u8>>,
}

async fn replay_one(p: Prepared, opts: &ReplayOptions) -> GoldenReport {
    let started = Instant::now();
    let mut report = GoldenReport::new(&p.golden);
    if let Some(why) = not_applicable(&p.golden.index, opts) {
        report.status = GoldenStatus::NotApplicable { why };
        return report;
    }
    let mut changed = vec![];
    let live = match run_live(&p, opts, &mut report).await {
        Ok(live) => {
            for (conn, live) in p.conns.iter().zip(&live) {
                let diffs = compare(conn, live);
                report.outcomes.extend(task_outcomes(conn, live, &diffs));
                if !diffs.is_empty() {
                    changed.push(conn.id.clone());
                }
                report.differences.extend(diffs);
            }
            Some(live)
        }
        Err(e) => {
            report.errors.push(format!("{e:#}"));
            None
        }
    };
    let failed =
        !report.differences.is_empty() || !report.errors.is_empty() || !report.leftovers.is_empty();
    report.status = if failed {
        GoldenStatus::Failed
    } else {
        GoldenStatus::Passed
    };
    match live.filter(|_| opts.bless) {
        // Only a clean replay may become a golden: errors or leaked processes mean the live
        // replies may not be what the worker normally says.
        Some(_) if !report.errors.is_empty() || !report.leftovers.is_empty() => {
            report.errors.push(
                "--bless refused: the replay had errors or leaked processes; nothing was staged"
                    .into(),
            );
        }
        Some(live) if !changed.is_empty() => match new_replies(&p, &live, &changed)
            .and_then(|new| bless::stage(&p.golden, &new, &report.differences))
        {
            Ok(files) => {
                report.pending = files;
                report.status = GoldenStatus::Blessed;
            }
            Err(e) => report.errors.push(format!("--bless: {e:#}")),
        },
        // Matches again: an earlier bless's pending change is obsolete (insta drops it too).
        Some(_) => {
            if let Err(e) = bless::discard(&p.golden.dir) {
                report.errors.push(format!("--bless: {e:#}"));
                report.status = GoldenStatus::Failed;
            }
        }
        None => {}
    }
    if !opts.bless {
        report.pending = bless::pending(&p.golden.dir);
        if !report.pending.is_empty() {
            report.status = GoldenStatus::Failed;
        }
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

/// Goldens that cannot pass in the env asked for: with an interpreter given, goldens of other
/// pyspark versions; and goldens recorded on another CPython minor, whose request carries the
/// driver's Python version that every worker compares with its own (PYTHON_VERSION_MISMATCH).
fn not_applicable(ix: &format::Index, opts: &ReplayOptions) -> Option<String> {
    let recorded = recorded_minor(&ix.python);
    let other_python = |here: &str, how: &str| {
        Some(format!(
            "recorded with Python {} and its request says so; {how} is Python {here}, which the \
             worker refuses as a version mismatch: replay it on Python {recorded}, or record it \
             again with `fakejvm record --python-version {here}`",
            ix.python
        ))
    };
    if let Some(want) = other_minor_asked(ix, opts.python_version) {
        return other_python(&want, "the env asked for");
    }
    let python = opts.python.as_deref()?;
    match pyenv::resolve(Some(python), None) {
        Ok(env) if env.pyspark.to_string() != ix.pyspark => Some(format!(
            "recorded with pyspark {}; the given interpreter {} has pyspark {}",
            ix.pyspark,
            python.display(),
            env.pyspark
        )),
        Ok(env) if env.python_version != recorded => {
            other_python(&env.python_version, "the given interpreter")
        }
        // Probed before any golden ran (replay_cmd); a failure now shows up in run_live.
        _ => None,
    }
}

/// The CPython minor asked for (`--python-version`), when it is not the one `ix` was recorded
/// with: every golden of it is N/A.
fn other_minor_asked(ix: &format::Index, want: Option<pyenv::PythonMinor>) -> Option<String> {
    let want = want?.to_string();
    (want != recorded_minor(&ix.python)).then_some(want)
}

/// "3.11" of a recorded "3.11.7".
fn recorded_minor(python: &str) -> String {
    python.splitn(3, '.').take(2).collect::<Vec<_>>().join(".")
}

async fn run_live(
    p: &Prepared,
    opts: &ReplayOptions,
    report: &mut GoldenReport,
) -> anyhow::Result<Vec<LiveConn>> {
    let ix = &p.golden.index;
    let want = pyenv::Want::new(Some(&ix.pyspark), opts.python_version);
    let env = pyenv::resolve_with(opts.python.as_deref(), &want).map_err(|e| {
        anyhow::anyhow!(
            "no Python env with pyspark {}: {e}\n(get it with `fakejvm env setup --pyspark {}`)",
            ix.pyspark,
            ix.pyspark
        )
    })?;
    let files_dir = tempfile::Builder::new()
        .prefix("fakejvm-replay-files-")
        .tempdir()?;
    let launch = LaunchOptions {
        mode: ix.mode,
        reuse: ix.reuse,
        extra_env: normalise::replay_env(&ix.worker_env),
        ..LaunchOptions::default()
    };
    let mut workers = match Workers::start(&env.python, launch).await {
        Ok(w) => w,
        // A daemon that dies at launch is judged like any other failure to get a worker.
        Err(e) => match connect_failure(e, &WorkerFacts::default()) {
            Outcome::Harness { error } => anyhow::bail!("{error}"),
            o => {
                report.outcomes = vec![o; report.tasks];
                anyhow::bail!("{}", report.outcomes[0])
            }
        },
    };
    let live_values = LiveValues {
        spark_files_dir: files_dir.path().to_path_buf(),
        broadcasts: normalise::broadcast_files(&p.golden.dir, &ix.broadcasts),
        secret: Some(workers.secret().to_owned()),
    };
    let session_opts = SessionOptions {
        deadline: opts.deadline,
        record_transcript: true,
        ..SessionOptions::default()
    };

    let mut out = vec![];
    for conn in &p.conns {
        let mut live = LiveConn {
            replies: vec![],
            after_close: None,
            raw: vec![],
        };
        let mut c = match workers.connect().await {
            Ok(c) => c,
            Err(e) => {
                let facts = WorkerFacts::gather(&mut workers, None, SETTLE).await;
                live.replies.push(Err(connect_failure(e, &facts)));
                out.push(live);
                continue;
            }
        };
        let mut base = c.handshake_in.len() as u64;
        let mut reusable = false;
        for req in &conn.requests {
            let req = normalise::refill_request(req, &live_values);
            let bytes = ix.dialect.encode_request(&req).bytes;
            let mut transcript = Transcript::default();
            let result = session::run_task(
                &mut c.reader,
                &mut c.writer,
                ix.dialect,
                &bytes,
                &WritePlan::whole(bytes.len()),
                base,
                &session_opts,
                &mut transcript,
            )
            .await;
            live.raw.push(transcript.received());
            let failed = match &result.reply {
                Ok(_) => None,
                Err(_) => {
                    let facts = WorkerFacts::gather(&mut workers, Some(c.pid), SETTLE).await;
                    Some(judge_task(&result, &facts, |_| Outcome::Passed))
                }
            };
            match result.reply {
                Ok(reply) => {
                    base = reply.end_offset;
                    reusable = matches!(
                        reply.end,
                        ReplyEnd::Completed {
                            final_marker: -4,
                            ..
                        }
                    );
                    live.replies.push(Ok(reply));
                    if !reusable {
                        break;
                    }
                }
                Err(_) => {
                    reusable = false;
                    live.replies.push(Err(failed.expect("judged above")));
                    break;
                }
            }
        }
        // The JVM closes a worker's connection when it is done with it (at the latest when the
        // SparkContext stops); a worker still waiting for a task answers that too.
        if reusable && live.replies.len() == conn.requests.len() {
            let (answer, raw) = close_and_drain(
                &mut c.reader,
                &mut c.writer,
                ix.dialect,
                base,
                opts.deadline,
            )
            .await;
            live.after_close = answer;
            live.raw.push(raw);
        }
        out.push(live);
    }
    let shutdown = workers.shutdown(Duration::from_secs(3)).await;
    report.stderr_tail = tail_lines(&shutdown.stderr, 20);
    report.leftovers = shutdown.leftovers;
    drop(files_dir);
    Ok(out)
}

/// Half-close our side (the worker sees EOF where the next split index belongs) and read what
/// it writes until it closes: None when it writes nothing.
async fn close_and_drain<R, W>(
    r: &mut R,
    w: &mut W,
    dialect: Dialect,
    base: u64,
    deadline: Duration,
) -> (Option<Result<Reply, String>>, Vec<u8>)
where
    R: tokio::io::AsyncRead + Unpin + ?Sized,
    W: tokio::io::AsyncWrite + Unpin + ?Sized,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = w.shutdown().await;
    let mut raw = vec![];
    let read = tokio::time::timeout(deadline, async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            match r.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => raw.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    if raw.is_empty() && read.is_ok() {
        return (None, raw);
    }
    use crate::wire::Status;
    let mut dec = crate::protocol::ReplyDecoder::new(dialect).with_base(base);
    dec.feed(&raw);
    let answer = match dec.next_reply() {
        Ok(Status::Complete(reply)) if dec.pending() == 0 => Ok(reply),
        Ok(Status::Complete(_)) => Err(format!(
            "{} byte(s) more after a whole reply",
            dec.pending()
        )),
        Ok(Status::Partial) if read.is_err() => Err(format!(
            "still writing after {} ms ({} byte(s) so far)",
            deadline.as_millis(),
            raw.len()
        )),
        Ok(Status::Partial) => Err(dec.eof_error().to_string()),
        Err(e) => Err(format!("protocol violation: {e}")),
    };
    (Some(answer), raw)
}

/// The typed outcome of each recorded task of a connection, from its live reply and the
/// differences found in it.
fn task_outcomes(conn: &PreparedConn, live: &LiveConn, diffs: &[Difference]) -> Vec<Outcome> {
    (0..conn.recorded.len())
        .map(|k| match live.replies.get(k) {
            Some(Err(o)) => o.clone(),
            None => Outcome::Harness {
                error: "not sent: the worker could not take this task after the previous reply"
                    .into(),
            },
            Some(Ok(_)) => {
                let mine: Vec<&Difference> = diffs.iter().filter(|d| d.reply == k).collect();
                if mine.is_empty() {
                    Outcome::Passed
                } else {
                    let side = |f: fn(&Difference) -> &String| {
                        serde_json::Value::Object(
                            mine.iter()
                                .map(|d| (d.at.clone(), serde_json::Value::String(f(d).clone())))
                                .collect(),
                        )
                    };
                    Outcome::Mismatch {
                        expected: side(|d| &d.expected),
                        got: side(|d| &d.got),
                    }
                }
            }
        })
        .collect()
}

/// Frame-level comparison of normalised replies: data frames by index, then the end of the
/// reply (exception type and message, or spills, accumulator updates and the final int).
fn compare(conn: &PreparedConn, live: &LiveConn) -> Vec<Difference> {
    let mut out = vec![];
    let diff = |reply: usize, at: String, expected: String, got: String| Difference {
        conn: conn.id.clone(),
        reply,
        at,
        expected,
        got,
    };
    for (k, recorded) in conn.recorded.iter().enumerate() {
        let expected = normalise::normalise_reply(recorded);
        let got = match live.replies.get(k) {
            Some(Ok(r)) => normalise::normalise_reply(r),
            Some(Err(why)) => {
                out.push(diff(
                    k,
                    "reply".into(),
                    summary(&expected),
                    format!("no reply: {why}"),
                ));
                break;
            }
            None => {
                out.push(diff(
                    k,
                    "reply".into(),
                    summary(&expected),
                    "not sent: the worker could not take this task after the previous reply".into(),
                ));
                break;
            }
        };
        let n = expected.data.len().max(got.data.len());
        for i in 0..n {
            let (e, g) = (expected.data.get(i), got.data.get(i));
            if !same_item(e, g) {
                out.push(diff(k, format!("data[{i}]"), item_text(e), item_text(g)));
            }
        }
        match (&expected.end, &got.end) {
            (ReplyEnd::Exception { traceback: e }, ReplyEnd::Exception { traceback: g }) => {
                if parse_exception(e) != parse_exception(g) {
                    out.push(diff(
                        k,
                        "exception".into(),
                        e.trim().to_owned(),
                        g.trim().to_owned(),
                    ));
                }
            }
            (
                ReplyEnd::Completed {
                    memory_bytes_spilled: em,
                    disk_bytes_spilled: ed,
                    accumulators: ea,
                    final_marker: ef,
                    ..
                },
                ReplyEnd::Completed {
                    memory_bytes_spilled: gm,
                    disk_bytes_spilled: gd,
                    accumulators: ga,
                    final_marker: gf,
                    ..
                },
            ) => {
                for i in 0..ea.len().max(ga.len()) {
                    let (e, g) = (ea.get(i), ga.get(i));
                    if e != g {
                        out.push(diff(
                            k,
                            format!("accumulator[{i}]"),
                            bytes_text(e),
                            bytes_text(g),
                        ));
                    }
                }
                if (em, ed) != (gm, gd) {
                    out.push(diff(
                        k,
                        "spills".into(),
                        format!("memory {em} disk {ed}"),
                        format!("memory {gm} disk {gd}"),
                    ));
                }
                if ef != gf {
                    out.push(diff(k, "final int".into(), ef.to_string(), gf.to_string()));
                }
            }
            (e, g) => out.push(diff(k, "end".into(), end_text(e), end_text(g))),
        }
    }
    // Only when every task was answered: otherwise the close was never reached.
    if out.is_empty() {
        let k = conn.recorded.len();
        match (&conn.after_close, &live.after_close) {
            (None, None) => {}
            (Some(e), Some(Ok(g))) => {
                let (e, g) = (normalise::normalise_reply(e), normalise::normalise_reply(g));
                if e != g {
                    out.push(diff(k, "after the close".into(), summary(&e), summary(&g)));
                }
            }
            (e, g) => out.push(diff(
                k,
                "after the close".into(),
                e.as_ref()
                    .map(|r| summary(&normalise::normalise_reply(r)))
                    .unwrap_or_else(|| "nothing".into()),
                match g {
                    None => "nothing".into(),
                    Some(Ok(r)) => summary(&normalise::normalise_reply(r)),
                    Some(Err(why)) => why.clone(),
                },
            )),
        }
    }
    out
}

/// Two reply items say the same: equal bytes, or equal values. Arrow streams compare as their
/// decoded schema (names, types, nullability; not metadata) and rows batch by batch, since
/// padding and schema metadata may differ between writers; pickles compare as the values they
/// load to (memo and framing opcodes aside).
fn same_item(e: Option<&ReplyItem>, g: Option<&ReplyItem>) -> bool {
    match (e, g) {
        _ if e == g => true,
        (Some(ReplyItem::ArrowStream(a)), Some(ReplyItem::ArrowStream(b))) => {
            match (arrow_value(a), arrow_value(b)) {
                (Some(x), Some(y)) => x == y,
                _ => false,
            }
        }
        (Some(ReplyItem::Frame(a)), Some(ReplyItem::Frame(b))) => {
            match (pickle::loads(a), pickle::loads(b)) {
                (Ok(x), Ok(y)) => x == y,
                _ => false,
            }
        }
        _ => false,
    }
}

/// An Arrow stream as what it says: each field's name, type and nullability, and the rows of each
/// batch as JSON values.
#[derive(PartialEq)]
struct ArrowValue {
    fields: Vec<(String, String, bool)>,
    batches: Vec<Vec<serde_json::Value>>,
}

/// None when the stream does not decode.
fn arrow_value(b: &[u8]) -> Option<ArrowValue> {
    let t = crate::arrow::decode_stream(b).ok()?;
    let fields = t
        .schema
        .fields()
        .iter()
        .map(|f| {
            (
                f.name().clone(),
                format!("{:?}", f.data_type()),
                f.is_nullable(),
            )
        })
        .collect();
    let batches = t.batches.iter().map(crate::arrow::batch_rows).collect();
    Some(ArrowValue { fields, batches })
}

fn summary(r: &Reply) -> String {
    format!("{} data frame(s), then {}", r.data.len(), end_text(&r.end))
}

fn end_text(e: &ReplyEnd) -> String {
    match e {
        ReplyEnd::Completed {
            accumulators,
            final_marker,
            ..
        } => {
            format!(
                "completed ({} accumulator update(s), final int {final_marker})",
                accumulators.len()
            )
        }
        ReplyEnd::Exception { traceback } => format!("exception {}", traceback.trim()),
    }
}

fn item_text(i: Option<&ReplyItem>) -> String {
    match i {
        None => "(no frame)".into(),
        Some(ReplyItem::Null) => "NULL (-5)".into(),
        Some(ReplyItem::Frame(b)) => format!("frame {} bytes: {}", b.len(), preview(b)),
        Some(ReplyItem::ArrowStream(b)) => crate::arrow::stream_summary(b),
    }
}

fn bytes_text(b: Option<&bytes::Bytes>) -> String {
    match b {
        None => "(none)".into(),
        Some(b) => format!("{} bytes: {}", b.len(), preview(b)),
    }
}

/// A pickle's value, else text, else hex: enough to see what changed.
fn preview(b: &[u8]) -> String {
    let text = if b.first() == Some(&0x80) {
        match pickle::loads(b) {
            Ok(v) => format!("pickle {}", pickle::value_to_json(&v)),
            Err(_) => format!("pickle (does not decode) hex {}", hex::encode(b)),
        }
    } else {
        match std::str::from_utf8(b) {
            Ok(s) => format!("utf8 {s:?}"),
            Err(_) => format!("hex {}", hex::encode(b)),
        }
    };
    if text.chars().count() > 200 {
        format!(
            "{}... ({} chars)",
            text.chars().take(200).collect::<String>(),
            text.chars().count()
        )
    } else {
        text
    }
}

/// The live replies of each changed connection, checked: only a whole reply can become the
/// golden.
fn new_replies(
    p: &Prepared,
    live: &[LiveConn],
    changed: &[String],
) -> anyhow::Result<Vec<NewReply>> {
    let dialect = p.golden.index.dialect;
    let mut out = vec![];
    for (conn, live) in p.conns.iter().zip(live) {
        if !changed.contains(&conn.id) {
            continue;
        }
        let mut replies: Vec<Reply> = live
            .replies
            .iter()
            .map(|r| {
                r.clone().map_err(|why| {
                    anyhow::anyhow!("{}: cannot bless an incomplete reply: {why}", conn.id)
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if replies.len() != conn.requests.len() {
            anyhow::bail!(
                "{}: the live worker answered {} of {} task(s)",
                conn.id,
                replies.len(),
                conn.requests.len()
            );
        }
        let tasks = replies.len();
        if let Some(answer) = &live.after_close {
            replies.push(answer.clone().map_err(|why| {
                anyhow::anyhow!(
                    "{}: cannot bless an incomplete answer to the close: {why}",
                    conn.id
                )
            })?);
        }
        let bytes: Vec<u8> = live.raw.concat();
        let (check, err) = decode_replies(dialect, &bytes);
        if err.is_some() || check.len() != replies.len() {
            anyhow::bail!(
                "{}: the live reply bytes do not decode back into {} replies",
                conn.id,
                replies.len()
            );
        }
        out.push(NewReply {
            conn: conn.id.clone(),
            bytes,
            replies: check,
            tasks,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(name: &str) -> GoldenReport {
        GoldenReport {
            dir: PathBuf::from(name),
            pyspark: "4.0.5".into(),
            dialect: Dialect::A,
            mode: Mode::Daemon,
            tasks: 1,
            status: GoldenStatus::Passed,
            differences: vec![],
            errors: vec![],
            leftovers: vec![],
            pending: vec![],
            outcomes: vec![],
            stderr_tail: String::new(),
            elapsed_ms: 0,
        }
    }

    /// A golden whose replay panics is a Failed report in its place, never a missing one.
    #[tokio::test]
    async fn a_replay_that_panics_is_a_failed_report() {
        type Job = std::pin::Pin<Box<dyn std::future::Future<Output = GoldenReport>>>;
        let jobs: Vec<(GoldenReport, Job)> = vec![
            (report("a"), Box::pin(async { report("a") })),
            (report("b"), Box::pin(async { panic!("decoder exploded") })),
            (report("c"), Box::pin(async { report("c") })),
        ];
        let mut seen = 0;
        let reports = run_jobs(jobs, 2, |_| seen += 1).await;
        assert_eq!(seen, 3);
        let names: Vec<String> = reports
            .iter()
            .map(|r| r.dir.display().to_string())
            .collect();
        assert_eq!(names, ["a", "b", "c"]);
        assert_eq!(reports[1].status, GoldenStatus::Failed);
        assert!(
            reports[1]
                .errors
                .iter()
                .any(|e| e.contains("panicked: decoder exploded")),
            "{:?}",
            reports[1].errors
        );
        assert_eq!(
            (reports[0].status.clone(), reports[2].status.clone()),
            (GoldenStatus::Passed, GoldenStatus::Passed)
        );
    }
}
