//! `fakejvm bench`: throughput of fakejvm driving one real worker, side by side with the same
//! work through a real Spark JVM (local[1]) and through the worker alone reading the identical
//! request bytes from a file. The ratios say how much of the time is fakejvm's own.
//!
//! Three workloads, as a Spark job meets them:
//! - text: textFile-style lines (one UTF-8 frame per line), `map(len)`;
//! - ints: pickled batches of 1024 ints (parallelize's batch size for a list that large),
//!   `map(x + 1)`;
//! - arrow: doubles through a scalar pandas UDF `v + 1`, 10,000 rows per record batch
//!   ([`arrow_row`] says what each side does there).
//!
//! What each side measures: fakejvm, the task on an open daemon connection (request written,
//! every reply frame counted); the worker alone, pyspark's worker entry point over the request
//! file with output to /dev/null (then once more, untimed, into a file that is decoded and
//! checked against fakejvm's reply, so a worker that raised cannot pass for a fast one); Spark,
//! the job's wall time after a warm-up job (so JVM and worker startup are excluded). Spark's `count()` pipelines the counting into the worker, so its
//! worker writes one number where fakejvm's writes every result: the ratio is, if anything,
//! unfavourable to fakejvm.
//!
//! Every figure is the median of [`REPEATS`] timed runs of that side.

mod arrow_row;

use crate::pickle::{self, Value};
use crate::protocol::{decode_replies, DataItem, Dialect, Reply, ReplyEnd, TaskRequest};
use crate::pyenv::{self, CommandSpec, PythonEnv, SerializerSpec};
use crate::session::{self, SessionOptions, Transcript, WritePlan};
use crate::worker::{spawn_in_group, LaunchOptions, Mode, Workers};
use anyhow::{bail, ensure, Context};
use serde::Serialize;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

const GLUE: &str = include_str!("../../python/bench/bench_glue.py");
/// Timed runs per side and row; each figure is their median, so one run that a busy (or shared)
/// machine slowed does not decide a ratio. The glue takes the same count.
pub(crate) const REPEATS: usize = 3;

/// The median of `times` (the upper middle of an even count).
pub(crate) fn median(times: &[f64]) -> f64 {
    let mut t = times.to_vec();
    t.sort_by(f64::total_cmp);
    t.get(t.len() / 2).copied().unwrap_or(0.0)
}
/// parallelize's batch size for a large list (SparkContext._batchSize default).
const PARALLELIZE_BATCH: i32 = 1024;

#[derive(clap::Args, Debug, Clone)]
pub struct BenchArgs {
    /// pyspark version of the cached env to use (e.g. 4.0.5).
    #[arg(long)]
    pub pyspark: Option<String>,
    /// Python interpreter with pyspark (instead of --pyspark).
    #[arg(long, env = "FAKEJVM_PYTHON")]
    pub python: Option<PathBuf>,
    #[command(flatten)]
    pub python_version: crate::pyenv::PythonVersionArg,
    /// Number of text lines.
    #[arg(long, default_value_t = 1_000_000)]
    pub lines: usize,
    /// Bytes per text line.
    #[arg(long, default_value_t = 100)]
    pub line_bytes: usize,
    /// Number of pickled ints.
    #[arg(long, default_value_t = 1_000_000)]
    pub ints: i64,
    /// Number of doubles through the scalar pandas UDF (0: no Arrow row).
    #[arg(long, default_value_t = 10_000_000)]
    pub doubles: usize,
    /// Skip the real Spark JVM comparison (needs Java).
    #[arg(long)]
    pub no_spark: bool,
    /// Skip the worker-alone comparison.
    #[arg(long)]
    pub no_worker_alone: bool,
    /// Print the results as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Workload {
    Text,
    Ints,
    Arrow,
}

/// One workload's figures. Seconds are None when that side was skipped or failed (`notes` says).
#[derive(Clone, Debug, Serialize)]
pub struct WorkloadResult {
    pub workload: Workload,
    pub records: u64,
    /// Data-section bytes of the request (frames with their lengths).
    pub data_bytes: u64,
    pub fakejvm_s: f64,
    /// Data items of fakejvm's reply (for arrow: Arrow streams).
    pub reply_frames: u64,
    /// Arrow only: rows of fakejvm's reply, counted from its decoded record batches.
    pub reply_rows: Option<u64>,
    /// Arrow only: record batches of fakejvm's reply.
    pub reply_batches: Option<u64>,
    pub worker_alone_s: Option<f64>,
    pub spark_s: Option<f64>,
}

impl WorkloadResult {
    fn mb_per_s(&self, s: f64) -> f64 {
        self.data_bytes as f64 / 1e6 / s
    }
    fn records_per_s(&self, s: f64) -> f64 {
        self.records as f64 / s
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct BenchReport {
    pub pyspark: String,
    pub results: Vec<WorkloadResult>,
    pub notes: Vec<String>,
}

/// The work of one workload: the command and the input, as fakejvm sends them.
struct Job {
    workload: Workload,
    spec: CommandSpec,
    data: Vec<DataItem>,
    records: u64,
}

fn text_job(lines: usize, line_bytes: usize) -> Job {
    // Printable, varied content (not one repeated byte) so nothing is unrealistically cheap.
    let line: Vec<u8> = (0..line_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    Job {
        workload: Workload::Text,
        spec: CommandSpec {
            function: "func = lambda split, it: map(len, it)".into(),
            deserializer: SerializerSpec::Utf8,
            serializer: SerializerSpec::AutoBatched,
        },
        data: (0..lines).map(|_| DataItem::Frame(line.clone())).collect(),
        records: lines as u64,
    }
}

fn ints_job(n: i64) -> Job {
    let values: Vec<Value> = (0..n).map(Value::Int).collect();
    Job {
        workload: Workload::Ints,
        spec: CommandSpec {
            function: "func = lambda split, it: (x + 1 for x in it)".into(),
            deserializer: SerializerSpec::Batched {
                size: PARALLELIZE_BATCH,
            },
            serializer: SerializerSpec::AutoBatched,
        },
        data: pickle::batched_frames(&values, PARALLELIZE_BATCH)
            .into_iter()
            .map(DataItem::Frame)
            .collect(),
        records: n as u64,
    }
}

fn data_bytes(data: &[DataItem]) -> u64 {
    data.iter()
        .map(|d| match d {
            DataItem::Frame(b) => 4 + b.len() as u64,
            DataItem::Null => 4,
            DataItem::Raw(b) => b.len() as u64,
        })
        .sum()
}

pub async fn bench_cmd(args: BenchArgs) -> anyhow::Result<u8> {
    let want = pyenv::Want::new(args.pyspark.as_deref(), args.python_version.python_version);
    let env = pyenv::resolve_with(args.python.as_deref(), &want)?;
    let report = run_bench(&env, &args).await?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", render(&report));
    }
    Ok(0)
}

pub(crate) async fn run_bench(env: &PythonEnv, args: &BenchArgs) -> anyhow::Result<BenchReport> {
    let dialect = Dialect::for_version(env.pyspark.major, env.pyspark.minor)
        .with_context(|| format!("pyspark {} has no known request dialect", env.pyspark))?;
    let tmp = tempfile::Builder::new()
        .prefix("fakejvm-bench-")
        .tempdir()?;
    let glue = tmp.path().join("bench_glue.py");
    std::fs::write(&glue, GLUE)?;
    let jobs = [text_job(args.lines, args.line_bytes), ints_job(args.ints)];
    let commands = pyenv::build_commands(
        env,
        &jobs.iter().map(|j| j.spec.clone()).collect::<Vec<_>>(),
    )?;
    let mut notes = vec![];
    let mut results = vec![];

    for (job, command) in jobs.into_iter().zip(commands) {
        let data_bytes = data_bytes(&job.data);
        let (workload, records) = (job.workload, job.records);
        let request = dialect.encode_request(&TaskRequest::non_udf(
            &env.python_version,
            command,
            job.data,
        ));
        let mut times = vec![];
        let mut reply_frames = 0;
        for _ in 0..REPEATS {
            let (s, frames) = through_fakejvm(env, dialect, &request.bytes)
                .await
                .with_context(|| format!("{workload:?} through fakejvm"))?;
            times.push(s);
            reply_frames = frames;
        }
        let fakejvm_s = median(&times);
        if reply_frames == 0 {
            bail!("{workload:?}: the worker replied with no data frames; the benchmark measured nothing");
        }
        let worker_alone_s = if args.no_worker_alone {
            None
        } else {
            let alone = Alone {
                env,
                glue: &glue,
                dir: tmp.path(),
                dialect,
            };
            let same_count = |reply: &Reply| {
                ensure!(
                    reply.data_items == reply_frames,
                    "{} reply frames where fakejvm got {reply_frames}",
                    reply.data_items
                );
                Ok(())
            };
            alone
                .run(workload, &request.bytes, None, same_count)
                .await
                .map_err(|e| notes.push(format!("{workload:?} worker alone failed: {e:#}")))
                .ok()
        };
        results.push(WorkloadResult {
            workload,
            records,
            data_bytes,
            fakejvm_s,
            reply_frames,
            reply_rows: None,
            reply_batches: None,
            worker_alone_s,
            spark_s: None,
        });
    }

    if args.doubles > 0 {
        let job = arrow_row::build(env, args.doubles, &tmp.path().to_string_lossy())?;
        let (fakejvm_s, count) = arrow_row::through_fakejvm(env, &job)
            .await
            .context("Arrow through fakejvm")?;
        let worker_alone_s = if args.no_worker_alone {
            None
        } else {
            let alone = Alone {
                env,
                glue: &glue,
                dir: tmp.path(),
                dialect: job.dialect,
            };
            let same_rows = |reply: &Reply| {
                let got = arrow_row::count_reply(reply, job.records)?;
                ensure!(got == count, "{got:?} where fakejvm got {count:?}");
                Ok(())
            };
            alone
                .run(Workload::Arrow, &job.request, Some(&job.warmup), same_rows)
                .await
                .map_err(|e| notes.push(format!("Arrow worker alone failed: {e:#}")))
                .ok()
        };
        results.push(WorkloadResult {
            workload: Workload::Arrow,
            records: job.records,
            data_bytes: job.data_bytes,
            fakejvm_s,
            reply_frames: count.streams,
            reply_rows: Some(count.rows),
            reply_batches: Some(count.batches),
            worker_alone_s,
            spark_s: None,
        });
    }

    if !args.no_spark {
        let text = tmp.path().join("lines.txt");
        write_text_file(&text, args.lines, args.line_bytes)?;
        let (n, doubles) = (args.ints.to_string(), args.doubles.to_string());
        let max_records = arrow_row::MAX_RECORDS_PER_BATCH.to_string();
        match run_glue(
            env,
            &glue,
            &[
                "spark",
                &REPEATS.to_string(),
                &text.to_string_lossy(),
                &n,
                &doubles,
                &max_records,
            ],
            Duration::from_secs(900),
        )
        .await
        {
            Ok(v) => {
                for w in &mut results {
                    let key = match w.workload {
                        Workload::Text => "text_seconds",
                        Workload::Ints => "ints_seconds",
                        Workload::Arrow => "arrow_seconds",
                    };
                    w.spark_s = v[key].as_f64();
                }
            }
            Err(e) => notes.push(format!(
                "Spark local[1] failed (needs Java 17+ on PATH): {e:#}"
            )),
        }
    }
    Ok(BenchReport {
        pyspark: env.pyspark.to_string(),
        results,
        notes,
    })
}

/// The worker alone over request files; the reply of its untimed second run is decoded and
/// checked, so a worker that raised (it writes a traceback and exits) never passes for a fast one.
struct Alone<'a> {
    env: &'a PythonEnv,
    glue: &'a Path,
    dir: &'a Path,
    dialect: Dialect,
}

impl Alone<'_> {
    async fn run(
        &self,
        workload: Workload,
        request: &[u8],
        warmup: Option<&[u8]>,
        check: impl FnOnce(&Reply) -> anyhow::Result<()>,
    ) -> anyhow::Result<f64> {
        let file = |ext: &str| self.dir.join(format!("{workload:?}.{ext}"));
        let (req, out) = (file("request"), file("reply"));
        std::fs::write(&req, request)?;
        let mut args = vec![
            "worker".to_string(),
            REPEATS.to_string(),
            req.display().to_string(),
            out.display().to_string(),
        ];
        if let Some(w) = warmup {
            let path = file("warmup");
            std::fs::write(&path, w)?;
            args.push(path.display().to_string());
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let v = run_glue(self.env, self.glue, &args, Duration::from_secs(600)).await?;
        let seconds = v["seconds"]
            .as_f64()
            .context("the glue printed no seconds")?;
        let bytes = std::fs::read(&out)?;
        let (replies, err) = decode_replies(self.dialect, &bytes);
        let reply = match (replies.as_slice(), err) {
            ([reply], None) => reply,
            (_, Some(e)) => bail!("its reply does not decode: {e}"),
            (r, None) => bail!("{} replies to one request", r.len()),
        };
        if let ReplyEnd::Exception { traceback } = &reply.end {
            bail!("the worker raised:\n{traceback}");
        }
        check(reply)?;
        Ok(seconds)
    }
}

/// One task on a fresh daemon connection; times the task only (not the daemon's startup).
async fn through_fakejvm(
    env: &PythonEnv,
    dialect: Dialect,
    request: &[u8],
) -> anyhow::Result<(f64, u64)> {
    let mut workers = Workers::start(
        &env.python,
        LaunchOptions {
            mode: Mode::Daemon,
            ..LaunchOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut conn = workers.connect().await?;
        let opts = SessionOptions {
            deadline: Duration::from_secs(600),
            record_transcript: false,
            count_only: true,
            ..SessionOptions::default()
        };
        let base = conn.handshake_in.len() as u64;
        let started = Instant::now();
        let result = session::run_task(
            &mut conn.reader,
            &mut conn.writer,
            dialect,
            request,
            &WritePlan::whole(request.len()),
            base,
            &opts,
            &mut Transcript::default(),
        )
        .await;
        let elapsed = started.elapsed().as_secs_f64();
        match result.reply {
            Ok(reply) => anyhow::Ok((elapsed, reply.data_items)),
            Err(e) => bail!("the task did not complete: {e:?}"),
        }
    }
    .await;
    workers.shutdown(Duration::from_secs(2)).await;
    outcome
}

/// The glue in a group of its own, with the Spark driver's JVM (the JVM's own pyspark daemon
/// leaves the group, but carries our mark for the interrupt handler, and stops when the JVM goes).
/// On a deadline the group is killed while the leader is still unreaped, so the id is still ours.
async fn run_glue(
    env: &PythonEnv,
    glue: &Path,
    args: &[&str],
    limit: Duration,
) -> anyhow::Result<serde_json::Value> {
    let mut cmd = tokio::process::Command::new(&env.python);
    cmd.arg(glue)
        .args(args)
        .env("PYSPARK_PYTHON", &env.python)
        .env("PYSPARK_DRIVER_PYTHON", &env.python);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let (mut child, mut group) =
        spawn_in_group(&mut cmd).with_context(|| format!("starting {}", env.python.display()))?;
    let stdout = read_all(child.stdout.take());
    let stderr = read_all(child.stderr.take());
    let status = match tokio::time::timeout(limit, child.wait()).await {
        Ok(status) => status?,
        Err(_) => {
            group.signal(libc::SIGKILL);
            let _ = child.wait().await;
            group.mark_reaped();
            bail!("bench glue {args:?} did not finish within {limit:?}");
        }
    };
    group.mark_reaped();
    // Whatever the glue left in its group goes with the Group; the pipes then reach EOF, unless a
    // process outside the group holds them, which is not worth more than a few seconds.
    drop(group);
    let collect = |h: tokio::task::JoinHandle<Vec<u8>>| async move {
        tokio::time::timeout(Duration::from_secs(5), h)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default()
    };
    let (stdout, stderr) = (collect(stdout).await, collect(stderr).await);
    if !status.success() {
        let err = String::from_utf8_lossy(&stderr);
        let tail: String = err
            .lines()
            .rev()
            .take(15)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        bail!("bench glue {args:?} exited with {status}:\n{tail}");
    }
    let stdout = String::from_utf8_lossy(&stdout);
    let last = stdout.lines().last().unwrap_or_default();
    serde_json::from_str(last)
        .with_context(|| format!("bench glue {args:?} printed no JSON result: {stdout:?}"))
}

fn read_all<R: tokio::io::AsyncRead + Unpin + Send + 'static>(
    pipe: Option<R>,
) -> tokio::task::JoinHandle<Vec<u8>> {
    tokio::spawn(async move {
        let mut all = vec![];
        if let Some(mut pipe) = pipe {
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut pipe, &mut all).await;
        }
        all
    })
}

fn write_text_file(path: &Path, lines: usize, line_bytes: usize) -> anyhow::Result<()> {
    let mut line: Vec<u8> = (0..line_bytes).map(|i| b'a' + (i % 26) as u8).collect();
    line.push(b'\n');
    let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
    for _ in 0..lines {
        f.write_all(&line)?;
    }
    f.flush()?;
    Ok(())
}

pub fn render(r: &BenchReport) -> String {
    let mut s = format!("fakejvm bench, pyspark {}\n", r.pyspark);
    s += &format!(
        "{:<6} {:>10} {:>9} {:>10} {:>9} {:>12} {:>12} {:>14} {:>12}\n",
        "load", "records", "MB", "side", "seconds", "MB/s", "records/s", "reply", "fakejvm/x"
    );
    for w in &r.results {
        let sides = [
            ("fakejvm", Some(w.fakejvm_s)),
            ("worker", w.worker_alone_s),
            ("spark", w.spark_s),
        ];
        for (name, secs) in sides {
            let Some(t) = secs else { continue };
            let ratio = if name == "fakejvm" {
                "-".to_string()
            } else {
                format!("{:.2}", w.fakejvm_s / t)
            };
            let reply = if name != "fakejvm" {
                String::new()
            } else if let Some(rows) = w.reply_rows {
                format!("{rows} rows")
            } else {
                w.reply_frames.to_string()
            };
            s += &format!(
                "{:<6} {:>10} {:>9.1} {:>10} {:>9.3} {:>12.1} {:>12.0} {:>14} {:>12}\n",
                format!("{:?}", w.workload).to_lowercase(),
                w.records,
                w.data_bytes as f64 / 1e6,
                name,
                t,
                w.mb_per_s(t),
                w.records_per_s(t),
                reply,
                ratio
            );
        }
    }
    s += "fakejvm/x is fakejvm's time over that side's (1.00 = as fast; below 1 = fakejvm faster).\n";
    for n in &r.notes {
        s += &format!("note: {n}\n");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(lines: usize, ints: i64, spark: bool) -> BenchArgs {
        BenchArgs {
            pyspark: None,
            python: None,
            python_version: Default::default(),
            lines,
            line_bytes: 100,
            ints,
            doubles: 0,
            no_spark: !spark,
            no_worker_alone: false,
            json: false,
        }
    }

    fn env() -> PythonEnv {
        let v = std::env::var("FAKEJVM_BENCH_PYSPARK").unwrap_or_else(|_| "4.0.5".into());
        pyenv::resolve(None, Some(&v)).expect("a cached pyspark env (fakejvm env setup)")
    }

    /// Small sizes: every side runs and counts what it was given.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn small_bench_runs_fakejvm_and_worker_alone() {
        let r = run_bench(&env(), &args(2000, 3000, false)).await.unwrap();
        assert!(r.notes.is_empty(), "{:?}", r.notes);
        assert_eq!(r.results[0].records, 2000);
        assert_eq!(r.results[0].data_bytes, 2000 * 104);
        assert!(r
            .results
            .iter()
            .all(|w| w.reply_frames > 0 && w.worker_alone_s.is_some()));
        eprintln!("{}", render(&r));
    }
}
