//! `fakejvm replay`: each recorded request, its volatile fields re-filled, goes to a live worker
//! of the recorded pyspark version in the recorded mode (one live connection per recorded one,
//! so a reused worker is reused again); each normalised live reply is compared with the
//! normalised recorded one, frame by frame.
//!
//! A difference fails the golden and prints as a frame-level diff. `--bless` accepts it on
//! purpose: the recorded reply and its text are rewritten (atomically) with the live ones, and
//! what changed is printed. Nothing is rewritten without `--bless`.

use super::format::{self, Golden};
use super::normalise::{self, LiveValues};
use super::record::{reply_text, write_index};
use super::write_atomic;
use super::BadInput;
use crate::pickle;
use crate::protocol::{
    decode_replies, decode_requests, Dialect, Reply, ReplyEnd, ReplyItem, TaskRequest,
};
use crate::pyenv;
use crate::session::{self, ReadFailure, SessionOptions, Transcript, WritePlan};
use crate::verdict::parse_exception;
use crate::worker::{LaunchOptions, Mode, Workers};
use serde::Serialize;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Replay goldens against live workers and compare the replies.
#[derive(clap::Args, Debug, Clone)]
pub struct ReplayArgs {
    /// Golden folders, their index.json files, or directories holding goldens.
    #[arg(required = true, value_name = "PATH")]
    pub paths: Vec<PathBuf>,
    /// Accept changed replies: rewrite each recorded reply that differs (and its text) with the
    /// live one, and print what changed.
    #[arg(long)]
    pub bless: bool,
    /// Use this interpreter for every golden instead of fakejvm's cached env of the recorded
    /// pyspark version (it must have that version).
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Deadline for each task, in milliseconds.
    #[arg(long, default_value_t = 30_000, value_name = "MS")]
    pub deadline_ms: u64,
    /// Goldens replayed at once.
    #[arg(long, short = 'j', default_value_t = 2, value_name = "N")]
    pub jobs: usize,
}

#[derive(Clone, Debug)]
pub struct ReplayOptions {
    pub bless: bool,
    pub python: Option<PathBuf>,
    pub deadline: Duration,
}

impl Default for ReplayOptions {
    fn default() -> Self {
        ReplayOptions {
            bless: false,
            python: None,
            deadline: Duration::from_secs(30),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum GoldenStatus {
    Passed,
    /// Replies differed and were accepted with --bless.
    Blessed,
    Failed,
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
    pub elapsed_ms: u64,
}

impl GoldenReport {
    /// One summary line, then one block per difference or error.
    pub fn text(&self) -> String {
        let tag = match self.status {
            GoldenStatus::Passed => "PASS ",
            GoldenStatus::Blessed => "BLESS",
            GoldenStatus::Failed => "FAIL ",
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
        if !self.leftovers.is_empty() {
            let l: Vec<String> = self
                .leftovers
                .iter()
                .map(|(p, c)| format!("{p} {c}"))
                .collect();
            out.push_str(&format!(
                "\n      leaked processes (killed): {}",
                l.join("; ")
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
        let (decoded, err) = decode_requests(ix.dialect, &req_bytes);
        if let Some(e) = err {
            return Err(BadInput::new(
                &dir.join(&c.request),
                format!("does not decode as dialect {:?}: {e}", ix.dialect),
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
    let dirs = format::collect(&args.paths)?;
    // Every golden is checked before anything runs: one broken file is exit 2, not a failure.
    let mut prepared = vec![];
    for d in &dirs {
        prepared.push(prepare(d)?);
    }
    let opts = ReplayOptions {
        bless: args.bless,
        python: args.python.clone(),
        deadline: Duration::from_millis(args.deadline_ms),
    };
    let reports = replay_prepared(prepared, &opts, args.jobs.max(1), |r| {
        println!("{}", r.text())
    })
    .await;
    let failed = reports
        .iter()
        .filter(|r| r.status == GoldenStatus::Failed)
        .count();
    let blessed = reports
        .iter()
        .filter(|r| r.status == GoldenStatus::Blessed)
        .count();
    println!(
        "{} passed, {blessed} blessed, {failed} failed",
        reports.len() - failed - blessed
    );
    Ok(if failed > 0 { 1 } else { 0 })
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
    mut each: impl FnMut(&GoldenReport),
) -> Vec<GoldenReport> {
    // Tasks on one thread (a LocalSet): the work is waiting on worker processes, not CPU, and
    // the session futures need not be Send.
    let local = tokio::task::LocalSet::new();
    let limit = std::rc::Rc::new(tokio::sync::Semaphore::new(jobs));
    let total = prepared.len();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for (i, p) in prepared.into_iter().enumerate() {
        let (limit, opts, tx) = (limit.clone(), opts.clone(), tx.clone());
        local.spawn_local(async move {
            let _permit = limit
                .acquire()
                .await
                .expect("the semaphore is never closed");
            let _ = tx.send((i, replay_one(p, &opts).await));
        });
    }
    drop(tx);
    let mut done: Vec<Option<GoldenReport>> = (0..total).map(|_| None).collect();
    local
        .run_until(async {
            while let Some((i, report)) = rx.recv().await {
                each(&report);
                done[i] = Some(report);
            }
        })
        .await;
    done.into_iter().flatten().collect()
}

/// Replay one golden folder.
pub async fn replay_golden(dir: &Path, opts: &ReplayOptions) -> Result<GoldenReport, BadInput> {
    Ok(replay_one(prepare(dir)?, opts).await)
}

/// What the live worker sent back for one recorded connection.
struct LiveConn {
    replies: Vec<Result<Reply, String>>,
    /// What the worker wrote after we closed our side following a reusable last reply.
    after_close: Option<Result<Reply, String>>,
    /// The raw reply bytes of each task, then of the answer to the close (after the handshake),
    /// for --bless.
    raw: Vec<Vec<u8>>,
}

async fn replay_one(p: Prepared, opts: &ReplayOptions) -> GoldenReport {
    let started = Instant::now();
    let ix = &p.golden.index;
    let mut report = GoldenReport {
        dir: p.golden.dir.clone(),
        pyspark: ix.pyspark.clone(),
        dialect: ix.dialect,
        mode: ix.mode,
        tasks: ix.connections.iter().map(|c| c.tasks).sum(),
        status: GoldenStatus::Passed,
        differences: vec![],
        errors: vec![],
        leftovers: vec![],
        elapsed_ms: 0,
    };
    match run_live(&p, opts, &mut report).await {
        Ok(live) => {
            let mut changed = vec![];
            for (conn, live) in p.conns.iter().zip(&live) {
                let diffs = compare(conn, live);
                if !diffs.is_empty() {
                    changed.push(conn.id.clone());
                }
                report.differences.extend(diffs);
            }
            if opts.bless && !changed.is_empty() && report.errors.is_empty() {
                match bless(&p, &live, &changed) {
                    Ok(()) => report.status = GoldenStatus::Blessed,
                    Err(e) => report.errors.push(format!("--bless: {e:#}")),
                }
            }
        }
        Err(e) => report.errors.push(format!("{e:#}")),
    }
    if report.status != GoldenStatus::Blessed
        && (!report.differences.is_empty()
            || !report.errors.is_empty()
            || !report.leftovers.is_empty())
    {
        report.status = GoldenStatus::Failed;
    }
    report.elapsed_ms = started.elapsed().as_millis() as u64;
    report
}

async fn run_live(
    p: &Prepared,
    opts: &ReplayOptions,
    report: &mut GoldenReport,
) -> anyhow::Result<Vec<LiveConn>> {
    let ix = &p.golden.index;
    let env = pyenv::resolve(opts.python.as_deref(), Some(&ix.pyspark)).map_err(|e| {
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
    let mut workers = Workers::start(&env.python, launch).await?;
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
                live.replies
                    .push(Err(format!("could not get a worker: {e}")));
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
                Err(failure) => {
                    reusable = false;
                    live.replies.push(Err(describe_failure(&failure)));
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
    let mut dec = crate::protocol::ReplyDecoder::new(dialect).with_base(base);
    dec.feed(&raw);
    let answer = match dec.next_reply() {
        Ok(Some(reply)) if dec.pending() == 0 => Ok(reply),
        Ok(Some(_)) => Err(format!(
            "{} byte(s) more after a whole reply",
            dec.pending()
        )),
        Ok(None) if read.is_err() => Err(format!(
            "still writing after {} ms ({} byte(s) so far)",
            deadline.as_millis(),
            raw.len()
        )),
        Ok(None) => Err(dec.eof_error().to_string()),
        Err(e) => Err(format!("protocol violation: {e}")),
    };
    (Some(answer), raw)
}

fn describe_failure(f: &ReadFailure) -> String {
    match f {
        ReadFailure::Eof { at_byte, what } => {
            format!("the worker closed the connection at reply byte {at_byte} ({what})")
        }
        ReadFailure::Deadline { after_ms, at_byte } => {
            format!("no complete reply after {after_ms} ms (stopped at reply byte {at_byte})")
        }
        ReadFailure::Violation { at_byte, what } => {
            format!("protocol violation at reply byte {at_byte}: {what}")
        }
        ReadFailure::Io { what } => format!("reading the reply failed: {what}"),
    }
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
            if e != g {
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

fn bytes_text(b: Option<&Vec<u8>>) -> String {
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
            Err(_) => format!("pickle (not plain data) hex {}", hex::encode(b)),
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

/// Rewrite the reply file and text of each changed connection with the live replies, then the
/// index; each file atomically. Refused when a live reply is incomplete: only a whole reply can
/// become the golden.
fn bless(p: &Prepared, live: &[LiveConn], changed: &[String]) -> anyhow::Result<()> {
    let mut index = p.golden.index.clone();
    let dialect = index.dialect;
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
        let entry = index
            .connections
            .iter_mut()
            .find(|c| c.id == conn.id)
            .expect("prepared from this index");
        write_atomic(&p.golden.dir.join(&entry.reply), &bytes)?;
        write_atomic(
            &p.golden.dir.join(&entry.reply_text),
            reply_text(dialect, &check).as_bytes(),
        )?;
        entry.reply_spans = check
            .iter()
            .take(tasks)
            .map(|r| [r.start, r.end_offset])
            .collect();
        entry.after_close = check.get(tasks).map(|r| [r.start, r.end_offset]);
        entry.blessed = Some(format::utc_now());
    }
    write_index(&p.golden.dir, &index)
}
