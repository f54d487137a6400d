//! Drives one task over one connection: a writer and a reader run at the same time, because the
//! worker does not flush its reply until it has read the final -4 (and a large reply fills the
//! socket buffers while the request is still being written).
//!
//! Nothing here knows about scenarios: bytes go out per a [`WritePlan`], bytes come back into a
//! [`ReplyDecoder`], and the result is a [`TaskResult`] with a [`Transcript`].

use crate::protocol::{Dialect, Reply, ReplyDecoder};
use crate::wire::{Limits, Status, WireError};
use bytes::{Bytes, BytesMut};
use serde::{Deserialize, Serialize};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{mpsc, oneshot, watch};

/// How the request bytes are put on the socket. Faults compile to these steps; a plain task is
/// one `Write` of everything.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStep {
    /// Write this range of the request, in chunks of at most `chunk` bytes (None: one write).
    Write {
        start: usize,
        end: usize,
        chunk: Option<usize>,
    },
    Pause(#[serde(with = "duration_ms")] Duration),
    /// Half-close: the worker sees EOF on its input but can still write.
    ShutdownWrite,
    /// Stop writing and leave the socket as it is.
    Stop,
    /// Hand action `i` (a process or socket fault placed at this point of the request) to whoever
    /// runs the task's actions, and wait until it is done: the action happens exactly here, while
    /// the reader keeps reading.
    Action(usize),
}

/// The writer's request to perform an action; answer on `done` when it has been performed.
#[derive(Debug)]
pub struct ActionRequest {
    pub index: usize,
    /// Request bytes written so far.
    pub at_byte: u64,
    /// Microseconds since the task started.
    pub at_us: u64,
    pub done: oneshot::Sender<AfterAction>,
}

/// What the session does once an action is done.
#[derive(Clone, Debug, PartialEq)]
pub enum AfterAction {
    Continue,
    /// Stop writing and reading now (the caller is about to close or reset the connection); the
    /// reply ends in `ReadFailure::Io` carrying `why`.
    EndTask {
        why: String,
    },
    /// Stop reading now (the reply ends in `ReadFailure::Io` carrying `why`) but write the rest of
    /// the plan: the JVM side stopped receiving, the worker cannot tell. The writer still stops at
    /// the task's deadline, so a worker that then stops reading too cannot hold the task.
    StopReading {
        why: String,
    },
}

/// Why the reader was told to stop.
#[derive(Clone, Debug, PartialEq)]
enum Abort {
    EndTask(String),
    StopReading(String),
}

impl Abort {
    fn why(&self) -> &str {
        match self {
            Abort::EndTask(w) | Abort::StopReading(w) => w,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WritePlan {
    pub steps: Vec<WriteStep>,
}

impl WritePlan {
    pub fn whole(len: usize) -> WritePlan {
        WritePlan {
            steps: vec![WriteStep::Write {
                start: 0,
                end: len,
                chunk: None,
            }],
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    ToWorker,
    FromWorker,
}

#[derive(Clone, Debug, Serialize)]
pub struct Event {
    /// Microseconds since the task started.
    pub at_us: u64,
    pub dir: Direction,
    /// Shared with the buffers the bytes were sent from or read into: recording copies nothing.
    #[serde(serialize_with = "hex_bytes")]
    pub bytes: Bytes,
}

fn hex_bytes<S: serde::Serializer>(b: &Bytes, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&hex::encode(b))
}

/// Bytes both ways with timestamps, in the order they happened.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Transcript {
    pub events: Vec<Event>,
}

impl Transcript {
    pub fn sent(&self) -> Vec<u8> {
        self.bytes(Direction::ToWorker)
    }
    pub fn received(&self) -> Vec<u8> {
        self.bytes(Direction::FromWorker)
    }
    fn bytes(&self, dir: Direction) -> Vec<u8> {
        self.events
            .iter()
            .filter(|e| e.dir == dir)
            .flat_map(|e| e.bytes.iter().copied())
            .collect()
    }
}

/// Why no complete reply arrived.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFailure {
    /// The worker closed its end; `at_byte` is how far the reply got, `what` where it stopped.
    Eof {
        at_byte: u64,
        what: String,
    },
    /// Nothing completed the reply before the deadline.
    Deadline {
        after_ms: u64,
        at_byte: u64,
    },
    /// The reply broke the protocol.
    Violation {
        at_byte: u64,
        what: String,
    },
    Io {
        what: String,
    },
}

#[derive(Clone, Debug, Serialize)]
pub struct TaskResult {
    pub reply: Result<Reply, ReadFailure>,
    /// An error of the writer (e.g. a reset because the worker died mid-request): a fact for the
    /// verdict, not an outcome by itself.
    pub write_error: Option<String>,
    pub bytes_sent: u64,
    pub elapsed_ms: u64,
}

#[derive(Clone, Debug)]
pub struct SessionOptions {
    /// The whole task (write and read) must finish within this.
    pub deadline: Duration,
    pub record_transcript: bool,
    /// Throughput runs: count reply frames without keeping them.
    pub count_only: bool,
    /// Bounds every reply frame (and a fuzz case's own frames); see [`Limits`].
    pub limits: Limits,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            deadline: Duration::from_secs(30),
            record_transcript: true,
            count_only: false,
            limits: Limits::DEFAULT,
        }
    }
}

/// One task on a connection. `reply_base` is the stream offset where this reply starts (after
/// the pid on a fresh connection, after the previous reply on a reused one).
#[allow(clippy::too_many_arguments)]
pub async fn run_task<R, W>(
    reader: &mut R,
    writer: &mut W,
    dialect: Dialect,
    request: &[u8],
    plan: &WritePlan,
    reply_base: u64,
    opts: &SessionOptions,
    transcript: &mut Transcript,
) -> TaskResult
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    run_task_with_actions(
        reader, writer, dialect, request, plan, reply_base, opts, transcript, None,
    )
    .await
}

/// `run_task` for a plan with `WriteStep::Action`s: each is sent on `actions` and the writer waits
/// for its answer. Whoever holds the receiver must serve it concurrently with this future (it
/// ends when this future drops the sender). A plan with actions but no sender stops writing there
/// and reports it as a write error.
#[allow(clippy::too_many_arguments)]
pub async fn run_task_with_actions<R, W>(
    reader: &mut R,
    writer: &mut W,
    dialect: Dialect,
    request: &[u8],
    plan: &WritePlan,
    reply_base: u64,
    opts: &SessionOptions,
    transcript: &mut Transcript,
    actions: Option<mpsc::Sender<ActionRequest>>,
) -> TaskResult
where
    R: AsyncRead + Unpin + ?Sized,
    W: AsyncWrite + Unpin + ?Sized,
{
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let (done_tx, done_rx) = watch::channel(false);
    // Set by the writer when an action ends the task or the reading: the reader stops with this reason.
    let (abort_tx, abort_rx) = watch::channel::<Option<Abort>>(None);
    let stopped_reading = abort_rx.clone();
    let mut sent_events = vec![];
    let mut recv_events = vec![];

    let write = async {
        let w = Writer {
            done: done_rx,
            started,
            deadline,
            record: opts.record_transcript,
            actions,
            abort: abort_tx,
        };
        w.run(writer, request, plan, &mut sent_events).await
    };
    let read = async {
        let r = read_reply(
            reader,
            dialect,
            reply_base,
            opts,
            started,
            &mut recv_events,
            deadline,
            abort_rx,
        )
        .await;
        // After StopReading the writer goes on: it is not told that the reader is done.
        if !matches!(*stopped_reading.borrow(), Some(Abort::StopReading(_))) {
            let _ = done_tx.send(true);
        }
        r
    };
    let ((bytes_sent, write_error), reply) = tokio::join!(write, read);

    if opts.record_transcript {
        let mut events: Vec<Event> = sent_events.into_iter().chain(recv_events).collect();
        events.sort_by_key(|e| e.at_us);
        transcript.events.extend(events);
    }
    TaskResult {
        reply,
        write_error,
        bytes_sent,
        elapsed_ms: started.elapsed().as_millis() as u64,
    }
}

/// The writing half of a task: follows the plan, stops as soon as the reader is finished, and at
/// the task's deadline whatever it is waiting for (a worker that stopped reading, an action).
struct Writer {
    done: watch::Receiver<bool>,
    started: Instant,
    deadline: tokio::time::Instant,
    record: bool,
    actions: Option<mpsc::Sender<ActionRequest>>,
    abort: watch::Sender<Option<Abort>>,
}

impl Writer {
    async fn run<W: AsyncWrite + Unpin + ?Sized>(
        mut self,
        w: &mut W,
        request: &[u8],
        plan: &WritePlan,
        events: &mut Vec<Event>,
    ) -> (u64, Option<String>) {
        let started = self.started;
        let deadline = self.deadline;
        let past_deadline = |sent: u64, waiting: &str| {
            Some(format!("the task's deadline passed while {waiting}: writing stopped after {sent} request bytes"))
        };
        // One copy of the request for the transcript; every event is a slice of it.
        let shared = if self.record {
            Bytes::copy_from_slice(request)
        } else {
            Bytes::new()
        };
        let mut sent = 0u64;
        for step in &plan.steps {
            // Once the reader is finished (reply, EOF or deadline) nothing more is written: a worker
            // that died or answered early must not keep us blocked on a full socket buffer.
            if *self.done.borrow() {
                break;
            }
            let done = &mut self.done;
            let res: std::io::Result<()> = match step {
                WriteStep::Write { start, end, chunk } => {
                    let (from, to) = (
                        (*start).min(request.len()),
                        (*end).min(request.len()).max((*start).min(request.len())),
                    );
                    let size = chunk.unwrap_or(to - from).max(1);
                    let mut res = Ok(());
                    let mut at = from;
                    while at < to {
                        let piece = &request[at..(at + size).min(to)];
                        let written = async {
                            w.write_all(piece).await?;
                            w.flush().await
                        };
                        let r = tokio::select! {
                            r = tokio::time::timeout_at(deadline, written) => r,
                            _ = done.wait_for(|d| *d) => break,
                        };
                        match r {
                            Err(_) => {
                                return (
                                    sent,
                                    past_deadline(sent, "the worker took no more of the request"),
                                )
                            }
                            Ok(Err(e)) => {
                                res = Err(e);
                                break;
                            }
                            Ok(Ok(())) => {}
                        }
                        sent += piece.len() as u64;
                        if self.record {
                            let bytes = shared.slice(at..at + piece.len());
                            events.push(Event {
                                at_us: started.elapsed().as_micros() as u64,
                                dir: Direction::ToWorker,
                                bytes,
                            });
                        }
                        at += piece.len();
                    }
                    res
                }
                WriteStep::Pause(d) => {
                    let until = (tokio::time::Instant::now() + *d).min(deadline);
                    tokio::select! {
                        _ = tokio::time::sleep_until(until) => {},
                        _ = done.wait_for(|d| *d) => {},
                    }
                    Ok(())
                }
                WriteStep::ShutdownWrite => match tokio::time::timeout_at(deadline, w.shutdown())
                    .await
                {
                    Ok(r) => r,
                    Err(_) => return (sent, past_deadline(sent, "half-closing the connection")),
                },
                WriteStep::Stop => break,
                WriteStep::Action(index) => {
                    let Some(tx) = &self.actions else {
                        return (sent, Some(format!("the write plan has action {index} but nobody performs actions; stopped after {sent} bytes")));
                    };
                    let (done_tx, done_rx) = oneshot::channel();
                    let req = ActionRequest {
                        index: *index,
                        at_byte: sent,
                        at_us: started.elapsed().as_micros() as u64,
                        done: done_tx,
                    };
                    // The performer is gone (or dropped the answer): nothing sensible can follow.
                    let performed = async {
                        match tx.send(req).await {
                            Ok(()) => done_rx.await.ok(),
                            Err(_) => None,
                        }
                    };
                    let Ok(after) = tokio::time::timeout_at(deadline, performed).await else {
                        return (
                            sent,
                            past_deadline(sent, &format!("action {index} was being performed")),
                        );
                    };
                    match after {
                        Some(AfterAction::Continue) => Ok(()),
                        Some(AfterAction::EndTask { why }) => {
                            let _ = self.abort.send(Some(Abort::EndTask(why)));
                            break;
                        }
                        Some(AfterAction::StopReading { why }) => {
                            let _ = self.abort.send(Some(Abort::StopReading(why)));
                            Ok(())
                        }
                        None => {
                            return (
                                sent,
                                Some(format!(
                                    "action {index} was not performed; stopped after {sent} bytes"
                                )),
                            )
                        }
                    }
                }
            };
            if let Err(e) = res {
                return (
                    sent,
                    Some(format!(
                        "writing the request failed after {sent} bytes: {e}"
                    )),
                );
            }
        }
        (sent, None)
    }
}

#[allow(clippy::too_many_arguments)]
async fn read_reply<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    dialect: Dialect,
    base: u64,
    opts: &SessionOptions,
    started: Instant,
    events: &mut Vec<Event>,
    deadline: tokio::time::Instant,
    mut abort: watch::Receiver<Option<Abort>>,
) -> Result<Reply, ReadFailure> {
    let mut dec = ReplyDecoder::new(dialect)
        .with_base(base)
        .with_limits(opts.limits);
    if opts.count_only {
        dec = dec.counting_only();
    }
    // With a transcript, reads land in `chunk` and each is frozen into a `Bytes` the transcript
    // keeps while the decoder gets a copy; without one, reads land in the decoder's own buffer.
    let mut chunk = BytesMut::new();
    loop {
        match dec.next_reply() {
            Ok(Status::Complete(reply)) => return Ok(reply),
            Ok(Status::Partial) => {}
            Err(e) => return Err(violation(e)),
        }
        let target: &mut BytesMut = if opts.record_transcript {
            &mut chunk
        } else {
            dec.read_buf()
        };
        if target.capacity() - target.len() < MIN_READ_ROOM {
            target.reserve(READ_BLOCK);
        }
        let read = tokio::select! {
            r = tokio::time::timeout_at(deadline, r.read_buf(target)) => r,
            // Err means the writer finished without ending the task: keep reading.
            Ok(why) = abort.wait_for(|a| a.is_some()) => {
                return Err(ReadFailure::Io { what: why.as_ref().map(|a| a.why().to_string()).unwrap_or_default() });
            }
        };
        let n = match read {
            Err(_) => {
                return Err(ReadFailure::Deadline {
                    after_ms: started.elapsed().as_millis() as u64,
                    at_byte: dec.offset() + dec.pending() as u64,
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Ok(Err(e)) => {
                return Err(ReadFailure::Io {
                    what: e.to_string(),
                })
            }
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            let e = dec.eof_error();
            return Err(ReadFailure::Eof {
                at_byte: dec.offset() + dec.pending() as u64,
                what: e.kind.to_string(),
            });
        }
        if opts.record_transcript {
            let bytes = chunk.split().freeze();
            dec.feed(&bytes);
            events.push(Event {
                at_us: started.elapsed().as_micros() as u64,
                dir: Direction::FromWorker,
                bytes,
            });
        }
    }
}

/// Reads go into blocks of this size; consecutive reads share a block until less than
/// `MIN_READ_ROOM` is left, so a transcript of many small reads holds few allocations.
const READ_BLOCK: usize = 256 * 1024;
const MIN_READ_ROOM: usize = 16 * 1024;

fn violation(e: WireError) -> ReadFailure {
    ReadFailure::Violation {
        at_byte: e.at_byte,
        what: e.kind.to_string(),
    }
}

mod duration_ms {
    pub(super) fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a plan against an in-memory "worker" that reads everything and never answers; the
    /// performer answers every action with `after`. Returns the result and what the worker got.
    async fn run_with(
        plan: WritePlan,
        after: Option<AfterAction>,
    ) -> (TaskResult, Vec<u8>, Vec<usize>) {
        let request: Vec<u8> = (0u8..20).collect();
        let (ours, theirs) = tokio::io::duplex(1024);
        let (mut r, mut w) = tokio::io::split(ours);
        let worker = tokio::spawn(async move {
            let (mut wr, _ww) = tokio::io::split(theirs);
            let mut got = vec![];
            let _ = wr.read_to_end(&mut got).await;
            got
        });
        let opts = SessionOptions {
            deadline: Duration::from_millis(300),
            ..SessionOptions::default()
        };
        let mut t = Transcript::default();
        let (tx, mut rx) = mpsc::channel::<ActionRequest>(1);
        let performer = async move {
            let mut seen = vec![];
            while let Some(req) = rx.recv().await {
                seen.push(req.at_byte as usize);
                let _ = req
                    .done
                    .send(after.clone().unwrap_or(AfterAction::Continue));
            }
            seen
        };
        let actions = Some(tx);
        let (result, seen) = tokio::join!(
            run_task_with_actions(
                &mut r,
                &mut w,
                Dialect::A,
                &request,
                &plan,
                0,
                &opts,
                &mut t,
                actions
            ),
            performer
        );
        drop((r, w));
        (result, worker.await.unwrap(), seen)
    }

    fn plan(steps: Vec<WriteStep>) -> WritePlan {
        WritePlan { steps }
    }

    #[tokio::test]
    async fn an_action_happens_at_its_byte_and_writing_goes_on() {
        let p = plan(vec![
            WriteStep::Write {
                start: 0,
                end: 7,
                chunk: Some(2),
            },
            WriteStep::Action(0),
            WriteStep::Write {
                start: 7,
                end: 20,
                chunk: None,
            },
        ]);
        let (result, got, seen) = run_with(p, None).await;
        assert_eq!(seen, vec![7]);
        assert_eq!(got, (0u8..20).collect::<Vec<_>>());
        assert!(
            matches!(result.reply, Err(ReadFailure::Deadline { .. })),
            "{:?}",
            result.reply
        );
    }

    #[tokio::test]
    async fn ending_the_task_stops_both_sides_with_the_reason() {
        let p = plan(vec![
            WriteStep::Write {
                start: 0,
                end: 5,
                chunk: None,
            },
            WriteStep::Action(0),
            WriteStep::Write {
                start: 5,
                end: 20,
                chunk: None,
            },
        ]);
        let (result, got, _) = run_with(
            p,
            Some(AfterAction::EndTask {
                why: "closed by the plan".into(),
            }),
        )
        .await;
        assert_eq!(got, vec![0, 1, 2, 3, 4]);
        assert_eq!(result.bytes_sent, 5);
        assert!(
            matches!(&result.reply, Err(ReadFailure::Io { what }) if what == "closed by the plan"),
            "{:?}",
            result.reply
        );
    }

    #[tokio::test]
    async fn stopping_the_reader_still_writes_the_rest() {
        let p = plan(vec![
            WriteStep::Action(0),
            WriteStep::Pause(Duration::from_millis(20)),
            WriteStep::Write {
                start: 0,
                end: 20,
                chunk: Some(3),
            },
        ]);
        let (result, got, _) = run_with(
            p,
            Some(AfterAction::StopReading {
                why: "SHUT_RD".into(),
            }),
        )
        .await;
        assert_eq!(got.len(), 20);
        assert!(
            matches!(&result.reply, Err(ReadFailure::Io { what }) if what == "SHUT_RD"),
            "{:?}",
            result.reply
        );
    }

    #[tokio::test]
    async fn after_stop_reading_a_worker_that_reads_nothing_cannot_hold_the_writer() {
        // The "worker" end is kept open but never read: after 64 bytes the writer is blocked, as
        // on a socket whose peer stopped reading. Only the task's deadline can end it.
        let request = vec![7u8; 4096];
        let (ours, theirs) = tokio::io::duplex(64);
        let (mut r, mut w) = tokio::io::split(ours);
        let opts = SessionOptions {
            deadline: Duration::from_millis(300),
            ..SessionOptions::default()
        };
        let p = plan(vec![
            WriteStep::Action(0),
            WriteStep::Write {
                start: 0,
                end: request.len(),
                chunk: Some(512),
            },
        ]);
        let (tx, mut rx) = mpsc::channel::<ActionRequest>(1);
        let performer = async move {
            while let Some(req) = rx.recv().await {
                let _ = req.done.send(AfterAction::StopReading {
                    why: "SHUT_RD".into(),
                });
            }
        };
        let mut t = Transcript::default();
        let task = run_task_with_actions(
            &mut r,
            &mut w,
            Dialect::A,
            &request,
            &p,
            0,
            &opts,
            &mut t,
            Some(tx),
        );
        // The outer limit only turns a regression into a failure instead of a stuck test.
        let (result, ()) = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::join!(task, performer)
        })
        .await
        .expect("the task ended by its own deadline");
        drop(theirs);
        assert!(
            matches!(&result.reply, Err(ReadFailure::Io { what }) if what == "SHUT_RD"),
            "{:?}",
            result.reply
        );
        let err = result.write_error.expect("a write error");
        assert!(
            err.contains("deadline passed while the worker took no more of the request"),
            "{err}"
        );
        assert!(result.bytes_sent < request.len() as u64);
        // What was sent is in the transcript, as slices of the request.
        assert_eq!(t.sent().len() as u64, result.bytes_sent);
    }

    #[tokio::test]
    async fn an_action_without_a_performer_is_a_write_error() {
        let request = [0u8; 4];
        let (ours, _theirs) = tokio::io::duplex(64);
        let (mut r, mut w) = tokio::io::split(ours);
        let opts = SessionOptions {
            deadline: Duration::from_millis(100),
            ..SessionOptions::default()
        };
        let p = plan(vec![
            WriteStep::Write {
                start: 0,
                end: 2,
                chunk: None,
            },
            WriteStep::Action(3),
        ]);
        let result = run_task(
            &mut r,
            &mut w,
            Dialect::A,
            &request,
            &p,
            0,
            &opts,
            &mut Transcript::default(),
        )
        .await;
        assert!(
            result
                .write_error
                .as_deref()
                .is_some_and(|e| e.contains("action 3")),
            "{:?}",
            result.write_error
        );
        assert_eq!(result.bytes_sent, 2);
    }
}
