//! Drives one task over one connection: a writer and a reader run at the same time, because the
//! worker does not flush its reply until it has read the final -4 (and a large reply fills the
//! socket buffers while the request is still being written).
//!
//! Nothing here knows about scenarios: bytes go out per a [`WritePlan`], bytes come back into a
//! [`ReplyDecoder`], and the result is a [`TaskResult`] with a [`Transcript`].

use crate::protocol::{Dialect, Reply, ReplyDecoder};
use crate::wire::WireError;
use serde::Serialize;
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;

/// How the request bytes are put on the socket. Faults compile to these steps; a plain task is
/// one `Write` of everything.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WriteStep {
    /// Write this range of the request, in chunks of at most `chunk` bytes (None: one write).
    Write { start: usize, end: usize, chunk: Option<usize> },
    Pause(#[serde(with = "duration_ms")] Duration),
    /// Half-close: the worker sees EOF on its input but can still write.
    ShutdownWrite,
    /// Stop writing and leave the socket as it is.
    Stop,
}

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct WritePlan {
    pub steps: Vec<WriteStep>,
}

impl WritePlan {
    pub fn whole(len: usize) -> WritePlan {
        WritePlan { steps: vec![WriteStep::Write { start: 0, end: len, chunk: None }] }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
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
    #[serde(serialize_with = "hex_bytes")]
    pub bytes: Vec<u8>,
}

fn hex_bytes<S: serde::Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
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
        self.events.iter().filter(|e| e.dir == dir).flat_map(|e| e.bytes.iter().copied()).collect()
    }
}

/// Why no complete reply arrived.
#[derive(Clone, Debug, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReadFailure {
    /// The worker closed its end; `at_byte` is how far the reply got, `what` where it stopped.
    Eof { at_byte: u64, what: String },
    /// Nothing completed the reply before the deadline.
    Deadline { after_ms: u64, at_byte: u64 },
    /// The reply broke the protocol.
    Violation { at_byte: u64, what: String },
    Io { what: String },
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
    pub max_frame: usize,
}

impl Default for SessionOptions {
    fn default() -> Self {
        SessionOptions {
            deadline: Duration::from_secs(30),
            record_transcript: true,
            count_only: false,
            max_frame: crate::wire::DEFAULT_MAX_FRAME,
        }
    }
}

/// One task on a connection. `reply_base` is the stream offset where this reply starts (after
/// the pid on a fresh connection, after the previous reply on a reused one).
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
    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.deadline;
    let (done_tx, done_rx) = watch::channel(false);
    let mut sent_events = vec![];
    let mut recv_events = vec![];

    let write = write_plan(writer, request, plan, done_rx, started, opts.record_transcript, &mut sent_events);
    let read = async {
        let r = read_reply(reader, dialect, reply_base, opts, started, &mut recv_events, deadline).await;
        let _ = done_tx.send(true);
        r
    };
    let ((bytes_sent, write_error), reply) = tokio::join!(write, read);

    if opts.record_transcript {
        let mut events: Vec<Event> = sent_events.into_iter().chain(recv_events).collect();
        events.sort_by_key(|e| e.at_us);
        transcript.events.extend(events);
    }
    TaskResult { reply, write_error, bytes_sent, elapsed_ms: started.elapsed().as_millis() as u64 }
}

async fn write_plan<W: AsyncWrite + Unpin + ?Sized>(
    w: &mut W,
    request: &[u8],
    plan: &WritePlan,
    mut done: watch::Receiver<bool>,
    started: Instant,
    record: bool,
    events: &mut Vec<Event>,
) -> (u64, Option<String>) {
    let mut sent = 0u64;
    for step in &plan.steps {
        // Once the reader is finished (reply, EOF or deadline) nothing more is written: a worker
        // that died or answered early must not keep us blocked on a full socket buffer.
        if *done.borrow() {
            break;
        }
        let res: std::io::Result<()> = match step {
            WriteStep::Write { start, end, chunk } => {
                let range = &request[(*start).min(request.len())..(*end).min(request.len())];
                let size = chunk.unwrap_or(range.len()).max(1);
                let mut res = Ok(());
                for piece in range.chunks(size) {
                    let r = tokio::select! {
                        r = w.write_all(piece) => r.and(w.flush().await),
                        _ = done.wait_for(|d| *d) => break,
                    };
                    if let Err(e) = r {
                        res = Err(e);
                        break;
                    }
                    sent += piece.len() as u64;
                    if record {
                        events.push(Event { at_us: started.elapsed().as_micros() as u64, dir: Direction::ToWorker, bytes: piece.to_vec() });
                    }
                }
                res
            }
            WriteStep::Pause(d) => {
                tokio::select! {
                    _ = tokio::time::sleep(*d) => {},
                    _ = done.wait_for(|d| *d) => {},
                }
                Ok(())
            }
            WriteStep::ShutdownWrite => w.shutdown().await,
            WriteStep::Stop => break,
        };
        if let Err(e) = res {
            return (sent, Some(format!("writing the request failed after {sent} bytes: {e}")));
        }
    }
    (sent, None)
}

async fn read_reply<R: AsyncRead + Unpin + ?Sized>(
    r: &mut R,
    dialect: Dialect,
    base: u64,
    opts: &SessionOptions,
    started: Instant,
    events: &mut Vec<Event>,
    deadline: tokio::time::Instant,
) -> Result<Reply, ReadFailure> {
    let mut dec = ReplyDecoder::new(dialect).with_base(base).with_max_frame(opts.max_frame);
    if opts.count_only {
        dec = dec.counting_only();
    }
    let mut buf = vec![0u8; 256 * 1024];
    loop {
        match dec.next_reply() {
            Ok(Some(reply)) => return Ok(reply),
            Ok(None) => {}
            Err(e) => return Err(violation(e)),
        }
        let n = match tokio::time::timeout_at(deadline, r.read(&mut buf)).await {
            Err(_) => {
                return Err(ReadFailure::Deadline {
                    after_ms: started.elapsed().as_millis() as u64,
                    at_byte: dec.offset() + dec.pending() as u64,
                })
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionReset => 0,
            Ok(Err(e)) => return Err(ReadFailure::Io { what: e.to_string() }),
            Ok(Ok(n)) => n,
        };
        if n == 0 {
            let e = dec.eof_error();
            return Err(ReadFailure::Eof { at_byte: dec.offset() + dec.pending() as u64, what: e.kind.to_string() });
        }
        if opts.record_transcript {
            events.push(Event { at_us: started.elapsed().as_micros() as u64, dir: Direction::FromWorker, bytes: buf[..n].to_vec() });
        }
        dec.feed(&buf[..n]);
    }
}

fn violation(e: WireError) -> ReadFailure {
    ReadFailure::Violation { at_byte: e.at_byte, what: e.kind.to_string() }
}

mod duration_ms {
    pub fn serialize<S: serde::Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }
}
