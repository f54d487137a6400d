//! The worker's reply, worker -> JVM, decoded incrementally as bytes arrive.
//!
//! Layout (PROTOCOL-BY-VERSION.md §3): data frames until TIMING_DATA (-3); boot, init, finish
//! (and from 4.2 processing) times as longs; memory and disk spill longs; END_OF_DATA_SECTION
//! (-1); accumulator count and pickled updates; then -4 (reusable) or -1 (worker exits).
//! PYTHON_EXCEPTION_THROWN (-2) + traceback may replace any int marker.

use super::Dialect;
use crate::wire::{
    self, complete, Limits, Reader, SlotLen, SpecialLength, Status, WireError, WireErrorKind,
};
use bytes::{Buf, Bytes, BytesMut};
use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReplyItem {
    /// A frame as handed out by the decoder: it shares the received bytes, no copy.
    Frame(#[serde(with = "super::hex_bytes")] Bytes),
    Null,
    /// START_ARROW_STREAM (-6) and the IPC stream after it, up to its end marker; shares the
    /// received bytes like `Frame`.
    ArrowStream(#[serde(with = "super::hex_bytes")] Bytes),
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
        accumulators: Vec<Bytes>,
        final_marker: i32,
    },
    /// -2 and a traceback: the worker exits after this.
    Exception { traceback: String },
}

fn hex_list<S: serde::Serializer>(v: &[Bytes], s: S) -> Result<S::Ok, S::Error> {
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
    /// The data items as frame payloads, None for a NULL (-5): the shape the pickle decoders
    /// take. The frames are shared, not copied.
    pub fn frames(&self) -> Vec<Option<Bytes>> {
        self.data
            .iter()
            .map(|d| match d {
                ReplyItem::Frame(b) | ReplyItem::ArrowStream(b) => Some(b.clone()),
                ReplyItem::Null => None,
            })
            .collect()
    }
}

/// Where the decoder is between calls (tokio-util's `DecodeState`): a frame's length is read
/// and checked once, then its body is waited for without reading the length again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    /// The next int is a data frame's length, or a marker.
    DataHead,
    /// A data frame of this many bytes; room for it is reserved.
    DataBody(usize),
    /// Counting only: this many bytes of a data frame are still to be dropped as they come.
    Skip(usize),
    /// START_ARROW_STREAM is at the front of the buffer and its IPC stream after it, walked this
    /// far: a stream that arrives in many reads is walked once, not from its start on each read.
    ArrowStream(crate::arrow::IpcStreamWalk),
    Timing,
    Accumulators {
        left: usize,
    },
    Final,
    /// After -2: the traceback frame.
    Exception,
}

/// Keeps partial state between `feed` calls; yields one [`Reply`] per task (several on a reused
/// connection). Errors carry the absolute stream offset. Frames are split off the receive
/// buffer as [`Bytes`] (no copy per frame).
pub struct ReplyDecoder {
    dialect: Dialect,
    /// Received bytes not yet part of a decoded item.
    buf: BytesMut,
    /// Absolute offset of `buf[0]`.
    base: u64,
    limits: Limits,
    keep_data: bool,
    state: DecodeState,
    reply_start: u64,
    data: Vec<ReplyItem>,
    data_items: u64,
    data_bytes: u64,
    timing: Option<(Timing, i64, i64)>,
    accumulators: Vec<Bytes>,
    /// The whole stream was fed at once (`decode_replies`).
    whole: bool,
}

impl ReplyDecoder {
    pub fn new(dialect: Dialect) -> Self {
        ReplyDecoder {
            dialect,
            buf: BytesMut::new(),
            base: 0,
            limits: Limits::DEFAULT,
            keep_data: true,
            state: DecodeState::DataHead,
            reply_start: 0,
            data: vec![],
            data_items: 0,
            data_bytes: 0,
            timing: None,
            accumulators: vec![],
            whole: false,
        }
    }

    /// Start counting at this absolute offset (e.g. after the pid of a fresh connection).
    pub fn with_base(mut self, base: u64) -> Self {
        self.base = base;
        self.reply_start = base;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
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

    /// The receive buffer: bytes appended here (e.g. by `AsyncReadExt::read_buf`) are fed, with
    /// no copy in between.
    pub fn read_buf(&mut self) -> &mut BytesMut {
        &mut self.buf
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
    pub(crate) fn at_reply_boundary(&self) -> bool {
        self.state == DecodeState::DataHead && self.data_items == 0 && self.buf.is_empty()
    }

    /// Decode as far as the bytes allow.
    pub fn next_reply(&mut self) -> Result<Status<Reply>, WireError> {
        loop {
            if let Some(reply) = complete!(self.step()) {
                return Ok(Status::Complete(reply));
            }
        }
    }

    /// Room for an item of `len` bytes at the front of the buffer, reserved once its length
    /// passed the limit so its bytes land without regrowing. Not for a whole stream given at once:
    /// there the missing bytes will never come.
    fn reserve_item(&mut self, len: usize) {
        if !self.whole {
            self.buf.reserve(len.saturating_sub(self.buf.len()));
        }
    }

    /// arrow-rs decodes a buffer in place only when it is aligned for its type (8 bytes for
    /// doubles); otherwise it copies it, buffer by buffer, which for a large reply costs more than
    /// all else fakejvm does with it. A stream right after its -6 starts 4 bytes into whatever
    /// the reads filled, so it is moved to the front of a fresh allocation (16-aligned), where
    /// growing the buffer keeps it: BytesMut reallocates, or moves the data to the front.
    fn align_for_arrow(&mut self) {
        if !(self.buf.as_ptr() as usize).is_multiple_of(16) {
            let mut fresh = BytesMut::with_capacity(self.buf.len().max(64 * 1024));
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.base += n as u64;
    }

    fn split(&mut self, n: usize) -> Bytes {
        self.base += n as u64;
        self.buf.split_to(n).freeze()
    }

    /// A whole frame (length and payload), split off; room is reserved once the length is known.
    fn take_frame(&mut self, what: &'static str) -> Result<Status<Bytes>, WireError> {
        let mut r = Reader::new(&self.buf)
            .with_base(self.base)
            .with_limits(self.limits);
        let at = r.offset();
        match complete!(r.slot_len(what)) {
            SlotLen::Special(s) => Err(r.error(
                at,
                WireErrorKind::BadLength {
                    what,
                    len: s.value(),
                },
            )),
            SlotLen::Bytes(n) => {
                if self.buf.len() < 4 + n {
                    self.reserve_item(4 + n);
                    return Ok(Status::Partial);
                }
                self.consume(4);
                Ok(Status::Complete(self.split(n)))
            }
        }
    }

    /// One item: Complete(None) when it made progress, Complete(Some) when a reply ended. The
    /// buffer is only advanced past whole items.
    fn step(&mut self) -> Result<Status<Option<Reply>>, WireError> {
        match self.state {
            DecodeState::DataHead => {
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let at = r.offset();
                let next = match complete!(r.slot_len("data frame")) {
                    SlotLen::Bytes(n) => {
                        self.data_items += 1;
                        self.data_bytes += n as u64;
                        if self.keep_data {
                            self.reserve_item(4 + n);
                            DecodeState::DataBody(n)
                        } else {
                            DecodeState::Skip(n)
                        }
                    }
                    SlotLen::Special(SpecialLength::Null) => {
                        self.data_items += 1;
                        if self.keep_data {
                            self.data.push(ReplyItem::Null);
                        }
                        DecodeState::DataHead
                    }
                    SlotLen::Special(SpecialLength::TimingData) => DecodeState::Timing,
                    SlotLen::Special(SpecialLength::PythonExceptionThrown) => {
                        DecodeState::Exception
                    }
                    SlotLen::Special(SpecialLength::StartArrowStream) => {
                        self.consume(4);
                        self.align_for_arrow();
                        self.state = DecodeState::ArrowStream(Default::default());
                        return Ok(Status::Complete(None));
                    }
                    SlotLen::Special(marker) => {
                        return Err(r.error(
                            at,
                            WireErrorKind::UnexpectedMarker {
                                marker,
                                place: "where a data frame or TIMING_DATA belongs",
                            },
                        ))
                    }
                };
                self.consume(4);
                self.state = next;
                Ok(Status::Complete(None))
            }
            DecodeState::DataBody(n) => {
                if self.buf.len() < n {
                    return Ok(Status::Partial);
                }
                let frame = self.split(n);
                self.data.push(ReplyItem::Frame(frame));
                self.state = DecodeState::DataHead;
                Ok(Status::Complete(None))
            }
            DecodeState::ArrowStream(mut walk) => {
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let walked = walk.resume(&mut r);
                self.state = DecodeState::ArrowStream(walk);
                let n = complete!(walked).len();
                let stream = self.split(n);
                self.data_items += 1;
                self.data_bytes += n as u64;
                if self.keep_data {
                    self.data.push(ReplyItem::ArrowStream(stream));
                }
                self.state = DecodeState::DataHead;
                Ok(Status::Complete(None))
            }
            DecodeState::Skip(n) => {
                let k = n.min(self.buf.len());
                if k == 0 && n > 0 {
                    return Ok(Status::Partial);
                }
                self.consume(k);
                self.state = if k == n {
                    DecodeState::DataHead
                } else {
                    DecodeState::Skip(n - k)
                };
                Ok(Status::Complete(None))
            }
            DecodeState::Timing => {
                // Timing, spills and the -1 after them are taken as one item: none of them can
                // be -2, and a partial read must not half-apply.
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let boot = complete!(r.long());
                let init = complete!(r.long());
                let finish = complete!(r.long());
                let processing = if self.dialect.timing_longs() == 4 {
                    Some(complete!(r.long()))
                } else {
                    None
                };
                let mem = complete!(r.long());
                let disk = complete!(r.long());
                let at = r.offset();
                let marker = complete!(r.int());
                if marker == SpecialLength::PythonExceptionThrown.value() {
                    let used = r.position();
                    self.consume(used);
                    self.state = DecodeState::Exception;
                    return Ok(Status::Complete(None));
                }
                if marker != SpecialLength::EndOfDataSection.value() {
                    let timing_longs = self.dialect.timing_longs();
                    return Err(r.error(
                        at,
                        WireErrorKind::TimingNotClosed {
                            got: marker,
                            timing_longs,
                        },
                    ));
                }
                let at = r.offset();
                let n = complete!(r.int());
                let used = r.position();
                if n == SpecialLength::PythonExceptionThrown.value() {
                    self.consume(used);
                    self.state = DecodeState::Exception;
                    return Ok(Status::Complete(None));
                }
                if n < 0 || n as usize > self.limits.max_frame_len / 4 {
                    return Err(r.error(at, WireErrorKind::AccumulatorCount(n)));
                }
                self.consume(used);
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
                    DecodeState::Final
                } else {
                    DecodeState::Accumulators { left: n as usize }
                };
                Ok(Status::Complete(None))
            }
            DecodeState::Accumulators { left } => {
                let b = complete!(self.take_frame("accumulator update"));
                self.accumulators.push(b);
                self.state = if left == 1 {
                    DecodeState::Final
                } else {
                    DecodeState::Accumulators { left: left - 1 }
                };
                Ok(Status::Complete(None))
            }
            DecodeState::Final => {
                let mut r = Reader::new(&self.buf).with_base(self.base);
                let at = r.offset();
                let m = complete!(r.int());
                if m == SpecialLength::PythonExceptionThrown.value() {
                    self.consume(4);
                    self.state = DecodeState::Exception;
                    return Ok(Status::Complete(None));
                }
                if m != SpecialLength::EndOfStream.value()
                    && m != SpecialLength::EndOfDataSection.value()
                {
                    return Err(r.error(at, WireErrorKind::BadFinalInt(m)));
                }
                self.consume(4);
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
                Ok(Status::Complete(Some(self.finish(end))))
            }
            DecodeState::Exception => {
                let bytes = complete!(self.take_frame("exception traceback"));
                let traceback = String::from_utf8_lossy(&bytes).into_owned();
                Ok(Status::Complete(Some(
                    self.finish(ReplyEnd::Exception { traceback }),
                )))
            }
        }
    }

    fn finish(&mut self, end: ReplyEnd) -> Reply {
        let end_offset = self.base;
        let reply = Reply {
            data: std::mem::take(&mut self.data),
            data_items: self.data_items,
            data_bytes: self.data_bytes,
            end,
            start: self.reply_start,
            end_offset,
        };
        self.state = DecodeState::DataHead;
        self.data_items = 0;
        self.data_bytes = 0;
        self.timing = None;
        self.accumulators.clear();
        self.reply_start = end_offset;
        reply
    }

    /// The error for a stream that is over (EOF) where the decoder stands.
    pub fn eof_error(&self) -> WireError {
        let place = match self.state {
            // Inside an Arrow stream too: the marker is not consumed before the stream is whole.
            DecodeState::DataHead | DecodeState::ArrowStream(_) => "in the data section",
            DecodeState::DataBody(_) | DecodeState::Skip(_) => "inside a data frame",
            DecodeState::Timing => "in the timing block",
            DecodeState::Accumulators { .. } => "in the accumulator updates",
            DecodeState::Final => "before the final int",
            DecodeState::Exception => "in the exception traceback",
        };
        WireError {
            at_byte: self.base,
            kind: WireErrorKind::Truncated {
                place,
                pending: self.buf.len(),
            },
        }
    }
}

/// Decode a whole reply stream (e.g. a recorded one). Returns the replies and, when the stream
/// stops short or breaks the protocol, the error saying where.
pub fn decode_replies(dialect: Dialect, bytes: &[u8]) -> (Vec<Reply>, Option<WireError>) {
    decode_replies_with(dialect, bytes, Limits::DEFAULT)
}

pub fn decode_replies_with(
    dialect: Dialect,
    bytes: &[u8],
    limits: Limits,
) -> (Vec<Reply>, Option<WireError>) {
    let mut d = ReplyDecoder::new(dialect).with_limits(limits);
    d.feed(bytes);
    d.whole = true;
    let mut out = vec![];
    loop {
        match d.next_reply() {
            Ok(Status::Complete(r)) => out.push(r),
            Ok(Status::Partial) => {
                let err = (!d.at_reply_boundary()).then(|| d.eof_error());
                return (out, err);
            }
            Err(e) => return (out, Some(e)),
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Encoding: a reply as the worker writes it (goldens store normalised replies, and the decoder
// is checked against recorded bytes through it).

impl Dialect {
    /// One reply, appended to `out`: the inverse of the decoder for one reply.
    pub(crate) fn encode_reply(
        self,
        r: &Reply,
        out: &mut BytesMut,
        limits: Limits,
    ) -> Result<(), WireError> {
        for item in &r.data {
            match item {
                ReplyItem::Frame(b) => wire::put_frame(out, b, limits)?,
                ReplyItem::Null => wire::put_special(out, SpecialLength::Null),
                ReplyItem::ArrowStream(b) => {
                    wire::put_special(out, SpecialLength::StartArrowStream);
                    out.extend_from_slice(b);
                }
            }
        }
        match &r.end {
            ReplyEnd::Completed {
                timing,
                memory_bytes_spilled,
                disk_bytes_spilled,
                accumulators,
                final_marker,
            } => {
                wire::put_special(out, SpecialLength::TimingData);
                wire::put_long(out, timing.boot_ms);
                wire::put_long(out, timing.init_ms);
                wire::put_long(out, timing.finish_ms);
                if self.timing_longs() == 4 {
                    wire::put_long(out, timing.processing_ms.unwrap_or(0));
                }
                wire::put_long(out, *memory_bytes_spilled);
                wire::put_long(out, *disk_bytes_spilled);
                wire::put_special(out, SpecialLength::EndOfDataSection);
                wire::put_int(out, accumulators.len() as i32);
                for a in accumulators {
                    wire::put_frame(out, a, limits)?;
                }
                wire::put_int(out, *final_marker);
            }
            ReplyEnd::Exception { traceback } => {
                wire::put_special(out, SpecialLength::PythonExceptionThrown);
                wire::put_str(out, traceback, limits)?;
            }
        }
        Ok(())
    }

    /// Several replies, as one stream.
    pub fn encode_replies(self, replies: &[Reply], limits: Limits) -> Result<Vec<u8>, WireError> {
        let mut out = BytesMut::new();
        for r in replies {
            self.encode_reply(r, &mut out, limits)?;
        }
        Ok(out.to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire;
    use proptest::prelude::*;

    const L: Limits = Limits::DEFAULT;

    fn reply_bytes(dialect: Dialect) -> Vec<u8> {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, b"one", L).unwrap();
        wire::put_frame(&mut b, b"", L).unwrap();
        wire::put_special(&mut b, SpecialLength::TimingData);
        for t in 0..dialect.timing_longs() {
            wire::put_long(&mut b, 1000 + t as i64);
        }
        wire::put_long(&mut b, 5);
        wire::put_long(&mut b, 6);
        wire::put_special(&mut b, SpecialLength::EndOfDataSection);
        wire::put_int(&mut b, 1);
        wire::put_frame(&mut b, b"acc", L).unwrap();
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
                if let Status::Complete(r) = dec.next_reply().unwrap() {
                    assert_eq!(i, bytes.len() - 1);
                    got = Some(r);
                }
            }
            let r = got.expect("a reply");
            assert_eq!(
                r.data,
                vec![
                    ReplyItem::Frame(Bytes::from_static(b"one")),
                    ReplyItem::Frame(Bytes::new())
                ]
            );
            match r.end {
                ReplyEnd::Completed {
                    final_marker,
                    accumulators,
                    timing,
                    ..
                } => {
                    assert_eq!(final_marker, -4);
                    assert_eq!(accumulators, vec![Bytes::from_static(b"acc")]);
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
        assert!(
            matches!(
                e.kind,
                WireErrorKind::TimingNotClosed {
                    timing_longs: 3,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn exception_ends_a_reply() {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, b"x", L).unwrap();
        wire::put_special(&mut b, SpecialLength::PythonExceptionThrown);
        wire::put_str(
            &mut b,
            "Traceback...\nZeroDivisionError: division by zero\n",
            L,
        )
        .unwrap();
        let (replies, err) = decode_replies(Dialect::A, &b);
        assert!(err.is_none());
        assert!(
            matches!(&replies[0].end, ReplyEnd::Exception { traceback } if traceback.contains("ZeroDivisionError"))
        );
    }

    #[test]
    fn frames_share_the_received_bytes() {
        let bytes = reply_bytes(Dialect::A);
        let mut dec = ReplyDecoder::new(Dialect::A);
        dec.feed(&bytes);
        let Status::Complete(r) = dec.next_reply().unwrap() else {
            panic!("a whole reply")
        };
        let ReplyItem::Frame(one) = &r.data[0] else {
            panic!("a frame")
        };
        // A frame split off the receive buffer, not a copy: a second reply decoded from the
        // same stream hands out its own slice, and the first stays valid.
        assert_eq!(&one[..], b"one");
        assert_eq!(r.end_offset, bytes.len() as u64);
        assert!(dec.at_reply_boundary());
    }

    #[test]
    fn a_frame_longer_than_the_limit_is_refused_at_its_length() {
        let mut b = BytesMut::new();
        wire::put_frame(&mut b, b"ok", L).unwrap();
        wire::put_int(&mut b, 1000);
        let mut dec = ReplyDecoder::new(Dialect::A)
            .with_base(10)
            .with_limits(Limits { max_frame_len: 999 });
        dec.feed(&b);
        let e = dec.next_reply().unwrap_err();
        assert_eq!(e.at_byte, 16);
        assert!(
            matches!(
                e.kind,
                WireErrorKind::TooLong {
                    len: 1000,
                    max: 999,
                    ..
                }
            ),
            "{e}"
        );
    }

    #[test]
    fn counting_only_drops_frames_as_they_come() {
        let bytes = reply_bytes(Dialect::B);
        let mut dec = ReplyDecoder::new(Dialect::B).counting_only();
        let mut got = None;
        for c in bytes.chunks(2) {
            dec.feed(c);
            if let Status::Complete(r) = dec.next_reply().unwrap() {
                got = Some(r);
            }
        }
        let r = got.expect("a reply");
        assert!(r.data.is_empty());
        assert_eq!((r.data_items, r.data_bytes), (2, 3));
    }

    #[test]
    fn the_encoder_is_the_inverse_of_the_decoder() {
        for d in Dialect::ALL {
            let bytes = reply_bytes(d);
            let (replies, err) = decode_replies(d, &bytes);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(d.encode_replies(&replies, L).unwrap(), bytes);
        }
    }

    /// A reply of the Arrow kinds: -6, a whole IPC stream (little-endian framing inside), then
    /// the usual timing block.
    fn arrow_reply_bytes(dialect: Dialect) -> (Vec<u8>, Vec<u8>) {
        use crate::arrow::{positional_batch, write_stream};
        let col = std::sync::Arc::new(arrow_array::Float64Array::from(vec![Some(2.0), None]));
        let batch = positional_batch(vec![col]).unwrap();
        let stream = write_stream(&batch.schema(), &[batch.clone(), batch]).unwrap();
        let mut b = BytesMut::new();
        wire::put_special(&mut b, SpecialLength::StartArrowStream);
        b.extend_from_slice(&stream);
        b.extend_from_slice(&reply_bytes(dialect)[4 + 3 + 4..]);
        (b.to_vec(), stream)
    }

    #[test]
    fn an_arrow_stream_is_partial_until_all_of_it_is_buffered() {
        for d in Dialect::ALL {
            let (bytes, stream) = arrow_reply_bytes(d);
            let mut dec = ReplyDecoder::new(d);
            let mut got = None;
            for (i, b) in bytes.iter().enumerate() {
                dec.feed(&[*b]);
                if let Status::Complete(r) = dec.next_reply().unwrap() {
                    assert_eq!(i, bytes.len() - 1);
                    got = Some(r);
                }
                if i < 4 + stream.len() - 1 {
                    // The -6 is consumed once read (so the stream can start aligned), the
                    // stream only when it is whole.
                    let marker = if i >= 3 { 4 } else { 0 };
                    assert_eq!(
                        dec.offset(),
                        marker,
                        "nothing but the marker consumed before the stream is whole"
                    );
                }
            }
            let r = got.expect("a reply");
            assert_eq!(
                r.data,
                vec![ReplyItem::ArrowStream(Bytes::from(stream.clone()))]
            );
            assert_eq!((r.data_items, r.data_bytes), (1, stream.len() as u64));
            let (whole, err) = decode_replies(d, &bytes);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(whole, vec![r]);
            assert_eq!(d.encode_replies(&whole, L).unwrap(), bytes);
            // Cut inside the stream: the stream is over in the data section.
            let (_, err) = decode_replies(d, &bytes[..4 + stream.len() / 2]);
            assert!(
                matches!(
                    err.expect("an error").kind,
                    WireErrorKind::Truncated {
                        place: "in the data section",
                        ..
                    }
                ),
                "{d}"
            );
        }
    }

    /// A reply of one Arrow stream with `batches` of doubles (value lists), then the timing block.
    fn arrow_reply_of(dialect: Dialect, batches: &[Vec<Option<f64>>]) -> (Vec<u8>, Vec<u8>) {
        use crate::arrow::{positional_batch, write_stream};
        let batches: Vec<_> = batches
            .iter()
            .map(|v| {
                let col = std::sync::Arc::new(arrow_array::Float64Array::from(v.clone()));
                positional_batch(vec![col]).unwrap()
            })
            .collect();
        let schema = batches.first().map(|b| b.schema()).unwrap_or_else(|| {
            positional_batch(vec![std::sync::Arc::new(arrow_array::Float64Array::from(
                Vec::<f64>::new(),
            ))])
            .unwrap()
            .schema()
        });
        let stream = write_stream(&schema, &batches).unwrap();
        let mut b = BytesMut::new();
        wire::put_special(&mut b, SpecialLength::StartArrowStream);
        b.extend_from_slice(&stream);
        b.extend_from_slice(&reply_bytes(dialect)[4 + 3 + 4..]);
        (b.to_vec(), stream)
    }

    /// Feeds `bytes` in `chunk`-sized pieces, decoding after each; every reply and the first error.
    fn decode_in_chunks(
        d: Dialect,
        bytes: &[u8],
        chunk: usize,
        mut after_feed: impl FnMut(&ReplyDecoder, usize),
    ) -> (Vec<Reply>, Option<WireError>) {
        let mut dec = ReplyDecoder::new(d);
        let mut out = vec![];
        let mut fed = 0;
        for c in bytes.chunks(chunk) {
            dec.feed(c);
            fed += c.len();
            loop {
                match dec.next_reply() {
                    Ok(Status::Complete(r)) => out.push(r),
                    Ok(Status::Partial) => break,
                    Err(e) => return (out, Some(e)),
                }
            }
            after_feed(&dec, fed);
        }
        (out, None)
    }

    #[test]
    fn reply_streams_start_aligned_for_arrow_whatever_came_before() {
        // Frames of odd lengths before the stream leave it at any offset of the read buffer.
        for pad in 0..8usize {
            let batches: Vec<Vec<Option<f64>>> = vec![(0..64).map(|i| Some(i as f64)).collect(); 3];
            let (stream_reply, _) = arrow_reply_of(Dialect::A, &batches);
            let mut bytes = (pad as i32).to_be_bytes().to_vec();
            bytes.extend(std::iter::repeat_n(7u8, pad));
            bytes.extend_from_slice(&stream_reply);
            for chunk in [bytes.len(), 13, 4096] {
                let (replies, err) = decode_in_chunks(Dialect::A, &bytes, chunk, |_, _| {});
                assert!(err.is_none(), "{err:?}");
                let ReplyItem::ArrowStream(b) = &replies[0].data[1] else {
                    panic!("{:?}", replies[0].data)
                };
                assert_eq!(b.as_ptr() as usize % 16, 0, "pad {pad}, chunks of {chunk}");
            }
        }
    }

    #[test]
    fn a_long_arrow_stream_is_walked_once_as_it_arrives() {
        let batches: Vec<Vec<Option<f64>>> = (0..50)
            .map(|k| (0..100).map(|i| Some((k * 100 + i) as f64)).collect())
            .collect();
        let (bytes, stream) = arrow_reply_of(Dialect::C, &batches);
        // One batch message: its metadata and 100 doubles; the walk may lag the bytes by no more.
        let message = stream.len() / batches.len() + 64;
        let mut last = 0;
        let (replies, err) = decode_in_chunks(Dialect::C, &bytes, 97, |dec, fed| {
            if let DecodeState::ArrowStream(walk) = dec.state {
                assert!(walk.walked() >= last, "the walk never goes back");
                assert!(
                    walk.walked() + 4 + message >= fed.min(4 + stream.len()),
                    "walked {} of {fed} fed",
                    walk.walked()
                );
                last = walk.walked();
                assert_eq!(
                    dec.offset(),
                    4,
                    "only the -6 is consumed until the stream is whole"
                );
            }
        });
        assert!(err.is_none(), "{err:?}");
        assert!(last > stream.len() / 2, "the walk kept its progress");
        let (whole, err) = decode_replies(Dialect::C, &bytes);
        assert!(err.is_none(), "{err:?}");
        assert_eq!(replies, whole);
        assert_eq!(
            replies[0].data,
            vec![ReplyItem::ArrowStream(Bytes::from(stream.clone()))]
        );
        let t = crate::arrow::decode_stream(&stream).unwrap();
        assert_eq!(t.batches.len(), 50);
        assert_eq!(t.rows().len(), 5000);
    }

    #[test]
    fn a_broken_message_is_found_where_it_starts_even_mid_walk() {
        let batches = vec![vec![Some(1.0)], vec![Some(2.0)], vec![Some(3.0)]];
        let (mut bytes, stream) = arrow_reply_of(Dialect::A, &batches);
        // Break the metadata length of the stream's last message (the end marker's zero length).
        let end_marker = 4 + stream.len() - 4;
        bytes[end_marker..end_marker + 4].copy_from_slice(&(-7i32).to_le_bytes());
        let (_, whole) = decode_replies(Dialect::A, &bytes);
        let whole = whole.expect("an error");
        assert!(
            matches!(whole.kind, WireErrorKind::ArrowMetadataLength(-7)),
            "{whole}"
        );
        assert_eq!(whole.at_byte, (end_marker - 4) as u64);
        let (_, chunked) = decode_in_chunks(Dialect::A, &bytes, 5, |_, _| {});
        assert_eq!(chunked, Some(whole));
    }

    #[test]
    fn a_stream_cut_short_is_truncated_with_the_place() {
        let bytes = reply_bytes(Dialect::A);
        let (_, err) = decode_replies(Dialect::A, &bytes[..bytes.len() - 2]);
        let e = err.expect("an error");
        assert!(
            matches!(
                e.kind,
                WireErrorKind::Truncated {
                    place: "before the final int",
                    pending: 2
                }
            ),
            "{e}"
        );
    }

    proptest! {
        #[test]
        fn arrow_replies_fed_in_pieces_agree_with_whole(
            batches in proptest::collection::vec(
                proptest::collection::vec(proptest::option::of(-1e6f64..1e6), 0..40), 0..6),
            chunk in 1usize..200,
        ) {
            for d in [Dialect::A, Dialect::D] {
                let (bytes, stream) = arrow_reply_of(d, &batches);
                let (whole, err) = decode_replies(d, &bytes);
                prop_assert!(err.is_none(), "{:?}", err);
                let (pieces, err) = decode_in_chunks(d, &bytes, chunk, |_, _| {});
                prop_assert!(err.is_none(), "{:?}", err);
                prop_assert_eq!(&whole, &pieces);
                prop_assert_eq!(
                    &pieces[0].data,
                    &vec![ReplyItem::ArrowStream(Bytes::from(stream))]
                );
            }
        }
    }

    proptest! {
        #[test]
        fn chunked_decoding_agrees_with_whole(bytes in proptest::collection::vec(any::<u8>(), 0..300), chunk in 1usize..17) {
            for d in Dialect::ALL {
                let limits = Limits { max_frame_len: 1 << 16 };
                let (whole, whole_err) = decode_replies_with(d, &bytes, limits);
                let mut dec = ReplyDecoder::new(d).with_limits(limits);
                let mut pieces = vec![];
                let mut piece_err = None;
                'feed: for c in bytes.chunks(chunk) {
                    dec.feed(c);
                    loop {
                        match dec.next_reply() {
                            Ok(Status::Complete(r)) => pieces.push(r),
                            Ok(Status::Partial) => break,
                            Err(e) => { piece_err = Some(e); break 'feed; }
                        }
                    }
                }
                prop_assert_eq!(&whole, &pieces);
                if let Some(e) = whole_err.filter(|e| !matches!(e.kind, WireErrorKind::Truncated { .. })) {
                    prop_assert_eq!(Some(e), piece_err);
                }
            }
        }
    }
}
