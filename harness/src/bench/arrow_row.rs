//! The Arrow row of `fakejvm bench`: N doubles `0.0, 1.0, ...` through a scalar pandas UDF
//! (SQL_SCALAR_PANDAS_UDF, `func = lambda v: v + 1`, returning double), cut into record batches
//! of `spark.sql.execution.arrow.maxRecordsPerBatch` rows in one IPC stream, as a Spark job's
//! `ArrowEvalPython` feeds its worker.
//!
//! Every side runs a warm-up task of the same UDF ([`WARMUP_ROWS`]) first and times the second
//! task only, because the first pandas UDF in a worker imports pandas and pyarrow (about a second
//! on a busy machine) and a reused Spark worker has done that before the timed job: fakejvm on
//! the same connection of a reused daemon worker (after [`GC_PAUSE`]), the worker alone over the
//! warm-up file first in the same process, Spark with a warm-up job.
//!
//! fakejvm's time covers writing the request, reading the reply and decoding every batch of the
//! reply stream (arrow-rs's IPC decoder over the received bytes, no copy of the aligned buffers);
//! the rows are counted from the decoded batches and the first and last value checked. The worker
//! alone writes its reply to /dev/null (an untimed second run is checked the same way). Spark's
//! job sums the UDF's output in the JVM (a `count()` could prune the UDF away), so its JVM reads
//! every reply batch too.
//!
//! Over the socket the reply's last 64 bytes (the stream's end and the timing block) often come
//! some 40 ms after the last batch: the worker's socket has Nagle on, so its short trailer waits
//! for the ACK of the last batch, which the receiving kernel delays. A Spark executor meets the
//! same wait; the worker alone, writing to a file, does not.

use crate::arrow::{self, Group};
use crate::protocol::{Dialect, EvalType, Reply, ReplyEnd, ReplyItem, Udf, UdfCommand, UdfLayout};
use crate::pyenv::{build_udf_functions, PythonEnv, UdfFunctionSpec};
use crate::session::{self, SessionOptions, Transcript, WritePlan};
use crate::worker::{LaunchOptions, Mode, Workers};
use anyhow::{bail, ensure, Context};
use arrow_array::cast::AsArray;
use arrow_array::types::Float64Type;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `spark.sql.execution.arrow.maxRecordsPerBatch` of the row (Spark's default is also 10,000).
pub(super) const MAX_RECORDS_PER_BATCH: i64 = 10_000;
/// Rows of the warm-up task: two full batches. A smaller one leaves the first full-size batch of
/// the timed task some 80 ms slower (pyspark 4.0.5 on a daemon worker: paths that pandas and
/// pyarrow take only for longer arrays, met once per process).
pub(super) const WARMUP_ROWS: usize = 2 * MAX_RECORDS_PER_BATCH as usize;
const FUNCTION: &str = "func = lambda v: v + 1";
/// Between the warm-up and the timed task. A reused daemon worker runs `gc.collect()` after each
/// task (pyspark daemon.py, 3.5-4.3), some 60 ms with pandas and pyarrow loaded; a request sent at
/// once would time it, where Spark's driver takes longer than that to start its next job.
const GC_PAUSE: Duration = Duration::from_secs(1);

/// The two requests of the row, encoded as fakejvm sends them.
pub(super) struct ArrowJob {
    pub(super) dialect: Dialect,
    pub(super) warmup: Vec<u8>,
    pub(super) request: Vec<u8>,
    pub(super) records: u64,
    /// Bytes of the request's IPC stream.
    pub(super) data_bytes: u64,
}

/// What the timed reply held, counted from its decoded batches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct ArrowReplyCount {
    pub(super) streams: u64,
    pub(super) batches: u64,
    pub(super) rows: u64,
}

pub(super) fn build(env: &PythonEnv, doubles: usize, files_dir: &str) -> anyhow::Result<ArrowJob> {
    let layout = UdfLayout::for_version(env.pyspark.major, env.pyspark.minor)
        .with_context(|| format!("pyspark {} has no known UDF layout", env.pyspark))?;
    let pickle = build_udf_functions(
        env,
        &[UdfFunctionSpec {
            function: FUNCTION.into(),
            return_type: r#""double""#.into(),
            udtf: false,
        }],
    )?
    .pop()
    .context("no function pickle was built")?;
    let encode = |n: usize| -> anyhow::Result<(Vec<u8>, u64)> {
        let eval = EvalType::SqlScalarPandasUdf;
        let values: Vec<f64> = (0..n).map(|i| i as f64).collect();
        let column = Arc::new(arrow_array::Float64Array::from(values));
        let batch = arrow::positional_batch(vec![column])?;
        let batches = arrow::split_batch(&batch, MAX_RECORDS_PER_BATCH);
        let data = arrow::data_section(
            layout.input_framing(eval),
            &batch.schema(),
            None,
            &[Group::of(batches)],
        )?;
        let data_bytes = data
            .iter()
            .map(|d| match d {
                crate::protocol::DataItem::Raw(b) => b.len() as u64,
                _ => 0,
            })
            .sum();
        let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], pickle.clone())]);
        let conf = vec![
            ("spark.sql.session.timeZone".into(), "UTC".into()),
            (
                "spark.sql.execution.arrow.maxRecordsPerBatch".into(),
                MAX_RECORDS_PER_BATCH.to_string(),
            ),
        ];
        let mut req = cmd.place(&env.python_version, eval, conf);
        req.spark_files_dir = files_dir.into();
        req.data = data;
        // Arrow kinds end their data with the stream's own end marker, no -1.
        req.end_of_data = false;
        if layout.dialect() == Dialect::D {
            req.context.cpu_amount = Some("1".into());
        }
        Ok((layout.dialect().encode_request(&req).bytes, data_bytes))
    };
    let (warmup, _) = encode(WARMUP_ROWS)?;
    let (request, data_bytes) = encode(doubles)?;
    Ok(ArrowJob {
        dialect: layout.dialect(),
        warmup,
        request,
        records: doubles as u64,
        data_bytes,
    })
}

/// Decodes every Arrow stream of the reply and counts its rows; the values must be the input's
/// plus one (`0.0, 1.0, ...` in, `1.0, 2.0, ...` out), checked at both ends.
pub(super) fn count_reply(reply: &Reply, records: u64) -> anyhow::Result<ArrowReplyCount> {
    if let ReplyEnd::Exception { traceback } = &reply.end {
        bail!("the worker raised:\n{traceback}");
    }
    let mut count = ArrowReplyCount {
        streams: 0,
        batches: 0,
        rows: 0,
    };
    let (mut first, mut last) = (None, None);
    for item in &reply.data {
        let ReplyItem::ArrowStream(bytes) = item else {
            bail!("a pickled item in the reply of a scalar pandas UDF: {item:?}");
        };
        let table = arrow::decode_shared_stream(bytes.clone()).context("the reply stream")?;
        count.streams += 1;
        for b in &table.batches {
            count.batches += 1;
            count.rows += b.num_rows() as u64;
            let Some(col) = b.columns().first() else {
                bail!("a reply batch without columns");
            };
            let col = col
                .as_primitive_opt::<Float64Type>()
                .with_context(|| format!("a reply column of {}, not double", col.data_type()))?;
            if !col.is_empty() {
                first = first.or(Some(col.value(0)));
                last = Some(col.value(col.len() - 1));
            }
        }
    }
    ensure!(
        count.rows == records,
        "the reply holds {} rows for {records} input rows",
        count.rows
    );
    if records > 0 {
        let want = (Some(1.0), Some(records as f64));
        ensure!(
            (first, last) == want,
            "the reply's first and last values are {first:?} and {last:?}, not {want:?}"
        );
    }
    Ok(count)
}

/// The warm-up task, then the timed one, on one connection of a daemon with worker reuse on.
pub(super) async fn through_fakejvm(
    env: &PythonEnv,
    job: &ArrowJob,
) -> anyhow::Result<(f64, ArrowReplyCount)> {
    let mut workers = Workers::start(
        &env.python,
        LaunchOptions {
            mode: Mode::Daemon,
            reuse: true,
            ..LaunchOptions::default()
        },
    )
    .await?;
    let outcome = async {
        let mut conn = workers.connect().await?;
        let opts = SessionOptions {
            deadline: Duration::from_secs(600),
            record_transcript: false,
            ..SessionOptions::default()
        };
        let mut base = conn.handshake_in.len() as u64;
        let mut timed = None;
        let runs = std::iter::once((&job.warmup, false))
            .chain(std::iter::repeat_n((&job.request, true), super::REPEATS));
        let mut times = vec![];
        for (request, is_timed) in runs {
            let started = Instant::now();
            let result = session::run_task(
                &mut conn.reader,
                &mut conn.writer,
                job.dialect,
                request,
                &WritePlan::whole(request.len()),
                base,
                &opts,
                &mut Transcript::default(),
            )
            .await;
            let what = if is_timed {
                "the timed task"
            } else {
                "the warm-up task"
            };
            let reply = match result.reply {
                Ok(reply) => reply,
                Err(e) => bail!("{what} did not complete: {e:?}"),
            };
            let records = if is_timed {
                job.records
            } else {
                WARMUP_ROWS as u64
            };
            let count = count_reply(&reply, records).with_context(|| what.to_string())?;
            let elapsed = started.elapsed().as_secs_f64();
            if let ReplyEnd::Completed { final_marker, .. } = reply.end {
                // -1: the worker refused reuse and exits; the timed task would meet a dead socket.
                ensure!(
                    final_marker == crate::wire::SpecialLength::EndOfStream.value(),
                    "the worker did not stay for a second task (final marker {final_marker})"
                );
            }
            base = reply.end_offset;
            if is_timed {
                times.push(elapsed);
                timed = Some((super::median(&times), count));
            }
            tokio::time::sleep(GC_PAUSE).await;
        }
        timed.context("no timed task")
    }
    .await;
    workers.shutdown(Duration::from_secs(2)).await;
    outcome
}
