//! The worker's reply, worker -> JVM, decoded incrementally as bytes arrive.
//!
//! Layout (PROTOCOL-BY-VERSION.md §3): data frames until TIMING_DATA (-3); boot, init, finish
//! (and from 4.2 processing) times as longs; memory and disk spill longs; END_OF_DATA_SECTION
//! (-1); accumulator count and pickled updates; then -4 (reusable) or -1 (worker exits).
//! PYTHON_EXCEPTION_THROWN (-2) + traceback may replace any int marker.

use super::Dialect;
use crate::wire::{Reader, Slot, SpecialLength, WireError, WireErrorKind, DEFAULT_MAX_FRAME};
use bytes::{Buf, BytesMut};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyItem {
    Frame(#[serde(with = "super::hex_bytes")] Vec<u8>),
    Null,
    /// START_ARROW_STREAM (-6) and the IPC stream after it, up to its end marker.
    ArrowStream(#[serde(with = "super::hex_bytes")] Vec<u8>),
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timing {
    pub boot_ms: i64,
    pub init_ms: i64,
    pub finish_ms: i64,
    /// pyspark 4.2+.
    pub processing_ms: Option<i64>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyEnd {
    /// The task ran to the end. `final_marker` is -4 when the worker may be reused, -1 when it
    /// refused reuse (the JVM did not send -4) and exits.
    Completed {
        timing: Timing,
        memory_bytes_spilled: i64,
        disk_bytes_spilled: i64,
        #[serde(serialize_with = "hex_list")]
        accumulators: Vec<Vec<u8>>,
        final_marker: i32,
    },
    /// -2 and a traceback: the worker exits after this.
    Exception { traceback: String },
}

fn hex_list<S: serde::Serializer>(v: &[Vec<u8>], s: S) -> Result<S::Ok, S::Error> {
    s.collect_seq(v.iter().map(hex::encode))
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reply {
    /// Data items, unless the decoder was told to only count them (benchmarks).
    pub data: Vec<ReplyItem>,
    pub data_items: u64,
    pub data_bytes: u64,
    pub end: ReplyEnd,
    /// Stream offsets of this reply: [start, end).
    pub start: u64,
    pub end_offset: u64,
}

impl Reply {
    /// The data items as frame payloads, None for a NULL (-5): the shape the pickle decoders take.
    pub fn frames(&self) -> Vec<Option<Vec<u8>>> {
        self.data
            .iter()
            .map(|d| match d {
                ReplyItem::Frame(b) | ReplyItem::ArrowStream(b) => Some(b.clone()),
                ReplyItem::Null => None,
            })
            .collect()
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    Data,
    Timing,
    Accumulators { left: usize },
    Final,
}

/// Keeps partial state between `feed` calls; yields one [`Reply`] per task (several on a reused
/// connection). Errors carry the absolute stream offset.
pub struct ReplyDecoder {
    dialect: Dialect,
    buf: BytesMut,
    /// Absolute offset of `buf[0]`.
    base: u64,
    max_frame: usize,
    keep_data: bool,
    state: State,
    reply_start: u64,
    data: Vec<ReplyItem>,
    data_items: u64,
    data_bytes: u64,
    timing: Option<(Timing, i64, i64)>,
    accumulators: Vec<Vec<u8>>,
}

impl ReplyDecoder {
    pub fn new(dialect: Dialect) -> Self {
        ReplyDecoder {
            dialect,
            buf: BytesMut::new(),
            base: 0,
            max_frame: DEFAULT_MAX_FRAME,
            keep_data: true,
            state: State::Data,
            reply_start: 0,
            data: vec![],
            data_items: 0,
            data_bytes: 0,
            timing: None,
            accumulators: vec![],
        }
    }

    /// Start counting at this absolute offset (e.g. after the pid of a fresh connection).
    pub fn with_base(mut self, base: u64) -> Self {
        self.base = base;
        self.reply_start = base;
        self
    }

    pub fn with_max_frame(mut self, max: usize) -> Self {
        self.max_frame = max;
        self
    }

    /// Count data frames without keeping them (throughput runs).
    pub fn counting_only(mut self) -> Self {
        self.keep_data = false;
        self
    }

    pub fn feed(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Absolute offset of the first byte not yet decoded.
    pub fn offset(&self) -> u64 {
        self.base
    }

    /// Bytes received but not yet part of a decoded item.
    pub fn pending(&self) -> usize {
        self.buf.len()
    }

    /// True between replies: nothing of a next reply has been decoded yet.
    pub fn at_reply_boundary(&self) -> bool {
        self.state == State::Data && self.data_items == 0 && self.buf.is_empty()
    }

    /// Decode as far as the bytes allow. Ok(None): need more bytes.
    pub fn next_reply(&mut self) -> Result<Option<Reply>, WireError> {
        loop {
            let buf = std::mem::take(&mut self.buf);
            let mut r = Reader::new(&buf)
                .with_base(self.base)
                .with_max_frame(self.max_frame);
            let step = self.step(&mut r);
            let used = r.position();
            self.buf = buf;
            match step {
                Ok(done) => {
                    self.buf.advance(used);
                    self.base += used as u64;
                    if let Some(reply) = done {
                        return Ok(Some(reply));
                    }
                }
                Err(e) if e.is_incomplete() => return Ok(None),
                Err(e) => return Err(e),
            }
        }
    }

    /// One item. The reader is only advanced when the item is whole.
    fn step(&mut self, r: &mut Reader) -> Result<Option<Reply>, WireError> {
        match self.state {
            State::Data => {
                let at = r.offset();
                match r.slot("data frame")? {
                    Slot::Bytes(b) => {
                        self.data_items += 1;
                        self.data_bytes += b.len() as u64;
                        if self.keep_data {
                            self.data.push(ReplyItem::Frame(b.to_vec()));
                        }
                    }
                    Slot::Special(SpecialLength::Null) => {
                        self.data_items += 1;
                        if self.keep_data {
                            self.data.push(ReplyItem::Null);
                        }
                    }
                    Slot::Special(SpecialLength::TimingData) => self.state = State::Timing,
                    Slot::Special(SpecialLength::PythonExceptionThrown) => {
                        return self.exception(r, at)
                    }
                    Slot::Special(SpecialLength::StartArrowStream) => {
                        let stream = crate::arrow::read_ipc_stream(r)?;
                        self.data_items += 1;
                        self.data_bytes += stream.len() as u64;
                        if self.keep_data {
                            self.data.push(ReplyItem::ArrowStream(stream.to_vec()));
                        }
                    }
                    Slot::Special(s) => {
                        return Err(r.violation(
                            at,
                            format!("{s} where a data frame or TIMING_DATA belongs"),
                        ))
                    }
                }
                Ok(None)
            }
            State::Timing => {
                // Timing, spills and the -1 after them are taken as one item: none of them can
                // be -2, and a partial read must not half-apply.
                let boot = r.long()?;
                let init = r.long()?;
                let finish = r.long()?;
                let processing = if self.dialect.timing_longs() == 4 {
                    Some(r.long()?)
                } else {
                    None
                };
                let mem = r.long()?;
                let disk = r.long()?;
                let at = r.offset();
                let marker = r.int()?;
                if marker == SpecialLength::PythonExceptionThrown.value() {
                    return self.exception(r, at);
                }
                if marker != SpecialLength::EndOfDataSection.value() {
                    return Err(r.violation(
                        at,
                        format!(
                            "expected END_OF_DATA_SECTION (-1) after timing and spill longs, got {marker} \
                             (a dialect mismatch? {} reads {} timing longs)",
                            self.dialect,
                            self.dialect.timing_longs()
                        ),
                    ));
                }
                let at = r.offset();
                let n = r.int()?;
                if n == SpecialLength::PythonExceptionThrown.value() {
                    return self.exception(r, at);
                }
                if n < 0 || n as usize > self.max_frame / 4 {
                    return Err(r.violation(at, format!("accumulator count {n} is out of range")));
                }
                self.timing = Some((
                    Timing {
                        boot_ms: boot,
                        init_ms: init,
                        finish_ms: finish,
                        processing_ms: processing,
                    },
                    mem,
                    disk,
                ));
                self.state = if n == 0 {
                    State::Final
                } else {
                    State::Accumulators { left: n as usize }
                };
                Ok(None)
            }
            State::Accumulators { left } => {
                let b = r.frame("accumulator update")?;
                self.accumulators.push(b.to_vec());
                self.state = if left == 1 {
                    State::Final
                } else {
                    State::Accumulators { left: left - 1 }
                };
                Ok(None)
            }
            State::Final => {
                let at = r.offset();
                let m = r.int()?;
                if m == SpecialLength::PythonExceptionThrown.value() {
                    return self.exception(r, at);
                }
                if m != SpecialLength::EndOfStream.value()
                    && m != SpecialLength::EndOfDataSection.value()
                {
                    return Err(r.violation(at, format!("final int is {m}, expected END_OF_STREAM (-4) or END_OF_DATA_SECTION (-1)")));
                }
                let (timing, mem, disk) = self
                    .timing
                    .take()
                    .expect("timing decoded before the final int");
                let end = ReplyEnd::Completed {
                    timing,
                    memory_bytes_spilled: mem,
                    disk_bytes_spilled: disk,
                    accumulators: std::mem::take(&mut self.accumulators),
                    final_marker: m,
                };
                Ok(Some(self.finish(end, r.offset())))
            }
        }
    }

    fn exception(&mut self, r: &mut Reader, _at: u64) -> Result<Option<Reply>, WireError> {
        let bytes = r.frame("exception traceback")?;
        let traceback = String::from_utf8_lossy(bytes).into_owned();
        Ok(Some(
            self.finish(ReplyEnd::Exception { traceback }, r.offset()),
        ))
    }

    fn finish(&mut self, end: ReplyEnd, end_offset: u64) -> Reply {
        let reply = Reply {
            data: std::mem::take(&mut self.data),
            data_items: self.data_items,
            data_bytes: self.data_bytes,
            end,
            start: self.reply_start,
            end_offset,
        };
        self.state = State::Data;
        self.data_items = 0;
        self.data_bytes = 0;
        self.timing = None;
        self.reply_start = end_offset;
        reply
    }

    /// Describe where an unexpected end of stream left the decoder.
    pub fn eof_error(&self) -> WireError {
        let what = match self.state {
            State::Data => "in the data section",
            State::Timing => "in the timing block",
            State::Accumulators { .. } => "in the accumulator updates",
            State::Final => "before the final int",
        };
        WireError {
            at_byte: self.base,
            kind: WireErrorKind::Violation(format!(
                "stream ended {what} ({} byte(s) of a partial item pending)",
                self.buf.len()
            )),
        }
    }
}

/// Decode a whole reply stream (e.g. a recorded one). Returns the replies and, when the stream
/// stops short, the error saying where.
pub fn decode_replies(dialect: Dialect, bytes: &[u8]) -> (Vec<Reply>, Option<WireError>) {
    let mut d = ReplyDecoder::new(dialect);
    d.feed(bytes);
    let mut out = vec![];
    loop {
        match d.next_reply() {
            Ok(Some(r)) => out.push(r),
            Ok(None) => {
                let err = (d.pending() > 0 || !d.at_reply_boundary()).then(|| d.eof_error());
                return (out, err);
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use proptest::prelude::*;

    fn reply_bytes(dialect: Dialect) -> Vec<u8> {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, b"one");
        wire::put_frame(&mut b, b"");
        wire::put_special(&mut b, SpecialLength::TimingData);
        for t in 0..dialect.timing_longs() {
            wire::put_long(&mut b, 1000 + t as i64);
        }
        wire::put_long(&mut b, 5);
        wire::put_long(&mut b, 6);
        wire::put_special(&mut b, SpecialLength::EndOfDataSection);
        wire::put_int(&mut b, 1);
        wire::put_frame(&mut b, b"acc");
        wire::put_special(&mut b, SpecialLength::EndOfStream);
        b.to_vec()
    }

    #[test]
    fn decodes_a_reply_fed_one_byte_at_a_time() {
        for d in Dialect::ALL {
            let bytes = reply_bytes(d);
            let mut dec = ReplyDecoder::new(d);
            let mut got = None;
            for (i, b) in bytes.iter().enumerate() {
                dec.feed(&[*b]);
                if let Some(r) = dec.next_reply().unwrap() {
                    assert_eq!(i, bytes.len() - 1);
                    got = Some(r);
                }
            }
            let r = got.expect("a reply");
            assert_eq!(
                r.data,
                vec![ReplyItem::Frame(b"one".to_vec()), ReplyItem::Frame(vec![])]
            );
            match r.end {
                ReplyEnd::Completed {
                    final_marker,
                    accumulators,
                    timing,
                    ..
                } => {
                    assert_eq!(final_marker, -4);
                    assert_eq!(accumulators, vec![b"acc".to_vec()]);
                    assert_eq!(timing.processing_ms.is_some(), d.timing_longs() == 4);
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn wrong_dialect_is_a_violation_with_offset() {
        let bytes = reply_bytes(Dialect::C);
        let (replies, err) = decode_replies(Dialect::A, &bytes);
        assert!(replies.is_empty());
        let e = err.expect("an error");
        assert!(e.to_string().contains("END_OF_DATA_SECTION"), "{e}");
    }

    #[test]
    fn exception_ends_a_reply() {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, b"x");
        wire::put_special(&mut b, SpecialLength::PythonExceptionThrown);
        wire::put_str(
            &mut b,
            "Traceback...\nZeroDivisionError: division by zero\n",
        );
        let (replies, err) = decode_replies(Dialect::A, &b);
        assert!(err.is_none());
        assert!(
            matches!(&replies[0].end, ReplyEnd::Exception { traceback } if traceback.contains("ZeroDivisionError"))
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..17) {
            for d in Dialect::ALL {
                let mut dec = ReplyDecoder::new(d).with_max_frame(1 << 16);
                for c in bytes.chunks(chunk) {
                    dec.feed(c);
                    if dec.next_reply().is_err() { break; }
                }
            }
        }
    }
}
