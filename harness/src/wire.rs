//! The primitives of the PythonRDD pipe protocol: big-endian ints, longs, bools, length-prefixed
//! UTF-8 strings and frames, and the negative "special lengths" that stand where a length is
//! expected.
//!
//! Encoding appends to a `BytesMut`. Decoding is a bounds-checked cursor over borrowed bytes that
//! never panics and never trusts a length: a length beyond [`Limits`] is refused before anything
//! is allocated (and a payload beyond it is refused when encoding). Running out of bytes is
//! `Ok(Status::Partial)`, not an error (httparse's Partial/Complete), so incremental decoders
//! stop and resume and real violations stay apart.

use bytes::{BufMut, BytesMut};
use std::fmt;

/// Negative values that replace a length. Values from pyspark's `SpecialLengths`;
/// -7 is not defined on the Python side, -8 exists from pyspark 4.3.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
pub enum SpecialLength {
    EndOfDataSection,
    PythonExceptionThrown,
    TimingData,
    EndOfStream,
    Null,
    StartArrowStream,
    StartOfInitMessage,
}

impl SpecialLength {
    pub const ALL: [SpecialLength; 7] = [
        SpecialLength::EndOfDataSection,
        SpecialLength::PythonExceptionThrown,
        SpecialLength::TimingData,
        SpecialLength::EndOfStream,
        SpecialLength::Null,
        SpecialLength::StartArrowStream,
        SpecialLength::StartOfInitMessage,
    ];

    pub fn value(self) -> i32 {
        match self {
            SpecialLength::EndOfDataSection => -1,
            SpecialLength::PythonExceptionThrown => -2,
            SpecialLength::TimingData => -3,
            SpecialLength::EndOfStream => -4,
            SpecialLength::Null => -5,
            SpecialLength::StartArrowStream => -6,
            SpecialLength::StartOfInitMessage => -8,
        }
    }

    pub fn from_value(v: i32) -> Option<SpecialLength> {
        SpecialLength::ALL.into_iter().find(|s| s.value() == v)
    }

    pub fn name(self) -> &'static str {
        match self {
            SpecialLength::EndOfDataSection => "END_OF_DATA_SECTION",
            SpecialLength::PythonExceptionThrown => "PYTHON_EXCEPTION_THROWN",
            SpecialLength::TimingData => "TIMING_DATA",
            SpecialLength::EndOfStream => "END_OF_STREAM",
            SpecialLength::Null => "NULL",
            SpecialLength::StartArrowStream => "START_ARROW_STREAM",
            SpecialLength::StartOfInitMessage => "START_OF_INIT_MESSAGE",
        }
    }
}

impl fmt::Display for SpecialLength {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.name(), self.value())
    }
}

/// What a length-prefixed slot held: a payload, or one of the special lengths.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Slot<'a> {
    Bytes(&'a [u8]),
    Special(SpecialLength),
}

/// The one bound on a single frame, string or counted run, checked when decoding *and* when
/// encoding (tokio-util's `max_frame_length` idea): one value, carried in `SessionOptions`, the
/// fuzz executor and the fuzz targets, instead of a default per module.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Limits {
    pub max_frame_len: usize,
}

impl Limits {
    /// Larger than anything a real task sends (Spark's own buffers are 64 KiB; a 100k-char line
    /// is ~400 KB), small enough to never OOM us.
    pub const DEFAULT: Limits = Limits {
        max_frame_len: 256 * 1024 * 1024,
    };

    /// The bound that applies to a payload on the wire: a length is an i32 there.
    fn encodable(self) -> usize {
        self.max_frame_len.min(i32::MAX as usize)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits::DEFAULT
    }
}

/// The outcome of a read that may need more bytes (httparse's `Status`): running out of bytes is
/// not invalid data, so it is never an `Err` and `?` cannot turn "wait for more" into a finding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Status<T> {
    /// The bytes so far end inside the item: call again with more.
    Partial,
    Complete(T),
}

impl<T> Status<T> {
    pub fn map<U>(self, f: impl FnOnce(T) -> U) -> Status<U> {
        match self {
            Status::Partial => Status::Partial,
            Status::Complete(t) => Status::Complete(f(t)),
        }
    }

    /// The value, or None for Partial.
    pub fn complete(self) -> Option<T> {
        match self {
            Status::Partial => None,
            Status::Complete(t) => Some(t),
        }
    }
}

/// `?` for `Result<Status<T>, WireError>` inside a function returning one: the value when
/// complete, else the enclosing function returns `Ok(Status::Partial)`.
macro_rules! complete {
    ($e:expr) => {
        match $e? {
            $crate::wire::Status::Complete(v) => v,
            $crate::wire::Status::Partial => return Ok($crate::wire::Status::Partial),
        }
    };
}
pub(crate) use complete;

// ---------------------------------------------------------------------------------------------
// Encoding

pub fn put_int(buf: &mut BytesMut, v: i32) {
    buf.put_i32(v);
}

pub fn put_long(buf: &mut BytesMut, v: i64) {
    buf.put_i64(v);
}

pub fn put_bool(buf: &mut BytesMut, v: bool) {
    buf.put_u8(v as u8);
}

pub fn put_special(buf: &mut BytesMut, s: SpecialLength) {
    buf.put_i32(s.value());
}

/// A frame: int length, then the payload. A payload past the limit (or past i32::MAX, which the
/// JVM cannot send either) is refused with the buffer untouched; `at_byte` is where it would
/// have started in `buf`.
pub fn put_frame(buf: &mut BytesMut, payload: &[u8], limits: Limits) -> Result<(), WireError> {
    if payload.len() > limits.encodable() {
        return Err(WireError {
            at_byte: buf.len() as u64,
            kind: WireErrorKind::TooLong {
                what: "frame to send",
                len: payload.len() as i64,
                max: limits.encodable(),
            },
        });
    }
    buf.put_i32(payload.len() as i32);
    buf.put_slice(payload);
    Ok(())
}

pub fn put_str(buf: &mut BytesMut, s: &str, limits: Limits) -> Result<(), WireError> {
    put_frame(buf, s.as_bytes(), limits)
}

// ---------------------------------------------------------------------------------------------
// Decoding

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[error("at byte {at_byte}: {kind}")]
pub struct WireError {
    /// Absolute offset in the stream of the first byte of the item that failed.
    pub at_byte: u64,
    pub kind: WireErrorKind,
}

/// What was wrong at `at_byte`. Framing kinds first, then the meaning-level ones the request and
/// reply decoders raise; none of them means "need more bytes" (that is `Status::Partial`).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum WireErrorKind {
    #[error("{what} length {len} exceeds the limit of {max} bytes")]
    TooLong {
        what: &'static str,
        len: i64,
        max: usize,
    },
    #[error("{what}: unexpected length {len}")]
    BadLength { what: &'static str, len: i32 },
    #[error("bool byte is {0}, not 0 or 1")]
    BadBool(u8),
    #[error("{what} is not valid UTF-8 ({detail})")]
    BadUtf8 { what: &'static str, detail: String },
    /// The stream is over (EOF, or the end of a recorded file) inside an item: only raised by
    /// whoever knows no more bytes will come, never by a read.
    #[error("stream ended {place} ({pending} byte(s) of a partial item pending)")]
    Truncated { place: &'static str, pending: usize },
    #[error("{marker} {place}")]
    UnexpectedMarker {
        marker: SpecialLength,
        place: &'static str,
    },
    /// An Arrow IPC message's metadata length (little-endian, inside the stream).
    #[error("Arrow metadata length {0} is out of range")]
    ArrowMetadataLength(i32),
    #[error("Arrow message metadata is not a flatbuffer Message: {0}")]
    ArrowNotAMessage(String),
    #[error("Arrow body length {0} is out of range")]
    ArrowBodyLength(i64),
    #[error("a pickled kind has no Arrow data section")]
    NoArrowSection,
    /// 4.1+ grouped framings: each group starts with its stream count, the end with 0.
    #[error("group marker {got} where {streams} (a group) or 0 (the end) belongs")]
    BadGroupMarker { got: i32, streams: i32 },
    #[error("{0} has no UDF command section to decode")]
    NoUdfSection(crate::protocol::EvalType),
    #[error(
        "expected END_OF_DATA_SECTION (-1) after timing and spill longs, got {got} \
         (a dialect mismatch? this dialect reads {timing_longs} timing longs)"
    )]
    TimingNotClosed { got: i32, timing_longs: usize },
    #[error("accumulator count {0} is out of range")]
    AccumulatorCount(i32),
    #[error("final int is {0}, expected END_OF_STREAM (-4) or END_OF_DATA_SECTION (-1)")]
    BadFinalInt(i32),
    #[error("expected START_OF_INIT_MESSAGE (-8), got {0}")]
    NoInitMessage(i32),
    #[error("init message length {0} is out of range")]
    InitLength(i32),
    #[error("{0} unread byte(s) at the end of the init message")]
    InitMessageTrailing(usize),
    #[error("task context JSON: {0}")]
    TaskContext(ContextProblem),
}

/// Why a 4.2+ task context JSON does not hold what pyspark's worker reads from it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ContextProblem {
    #[error("not JSON ({0})")]
    NotJson(String),
    #[error("lacks integer {0:?}")]
    MissingInt(&'static str),
    /// The JVM sends these as Java ints: a wider value cannot have come from it.
    #[error("{key:?} is {value}, outside the 32-bit range the JVM sends")]
    IntOutOfRange { key: String, value: i64 },
    /// pyspark reads these as strings; anything else would not be one in Python either.
    #[error("{0} is not a string")]
    NotAString(String),
}

/// A bounds-checked cursor. `base` is the absolute stream offset of `buf[0]`, so errors point
/// into the whole stream even when the buffer is a window of it. A read that returns `Partial`
/// leaves the cursor where it was.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    limits: Limits,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
            limits: Limits::DEFAULT,
        }
    }

    pub fn with_base(mut self, base: u64) -> Self {
        self.base = base;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Absolute offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn error(&self, at: u64, kind: WireErrorKind) -> WireError {
        WireError { at_byte: at, kind }
    }

    fn take(&mut self, n: usize) -> Status<&'a [u8]> {
        if self.remaining() < n {
            return Status::Partial;
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Status::Complete(out)
    }

    /// `n` raw bytes (the caller has bounded `n`).
    pub fn bytes(&mut self, n: usize) -> Result<Status<&'a [u8]>, WireError> {
        Ok(self.take(n))
    }

    pub fn int(&mut self) -> Result<Status<i32>, WireError> {
        Ok(self
            .take(4)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]])))
    }

    pub fn long(&mut self) -> Result<Status<i64>, WireError> {
        Ok(self
            .take(8)
            .map(|b| i64::from_be_bytes(b.try_into().expect("8 bytes"))))
    }

    pub fn bool(&mut self) -> Result<Status<bool>, WireError> {
        let at = self.offset();
        match complete!(Ok::<_, WireError>(self.take(1)))[0] {
            0 => Ok(Status::Complete(false)),
            1 => Ok(Status::Complete(true)),
            b => {
                self.pos -= 1;
                Err(self.error(at, WireErrorKind::BadBool(b)))
            }
        }
    }

    /// The length of a slot: a payload length (checked against the limit before anything is
    /// read or allocated), or a special length in its place. Shared with incremental decoders
    /// that read the payload themselves.
    pub fn slot_len(&mut self, what: &'static str) -> Result<Status<SlotLen>, WireError> {
        let at = self.offset();
        let len = complete!(self.int());
        if len < 0 {
            return match SpecialLength::from_value(len) {
                Some(s) => Ok(Status::Complete(SlotLen::Special(s))),
                None => {
                    self.pos -= 4;
                    Err(self.error(at, WireErrorKind::BadLength { what, len }))
                }
            };
        }
        let len = len as usize;
        if len > self.limits.max_frame_len {
            self.pos -= 4;
            return Err(self.error(
                at,
                WireErrorKind::TooLong {
                    what,
                    len: len as i64,
                    max: self.limits.max_frame_len,
                },
            ));
        }
        Ok(Status::Complete(SlotLen::Bytes(len)))
    }

    /// A length-prefixed slot: payload bytes, or a special length in place of the length.
    pub fn slot(&mut self, what: &'static str) -> Result<Status<Slot<'a>>, WireError> {
        let start = self.pos;
        match complete!(self.slot_len(what)) {
            SlotLen::Special(s) => Ok(Status::Complete(Slot::Special(s))),
            SlotLen::Bytes(n) => match self.take(n) {
                Status::Complete(b) => Ok(Status::Complete(Slot::Bytes(b))),
                Status::Partial => {
                    self.pos = start;
                    Ok(Status::Partial)
                }
            },
        }
    }

    /// A frame that must be a payload (no special length allowed here).
    pub fn frame(&mut self, what: &'static str) -> Result<Status<&'a [u8]>, WireError> {
        let start = self.pos;
        let at = self.offset();
        match complete!(self.slot(what)) {
            Slot::Bytes(b) => Ok(Status::Complete(b)),
            Slot::Special(s) => {
                self.pos = start;
                Err(self.error(
                    at,
                    WireErrorKind::BadLength {
                        what,
                        len: s.value(),
                    },
                ))
            }
        }
    }

    /// A UTF-8 string (int length + bytes). The JVM never sends NULL where the worker reads
    /// protocol strings, so -5 here is a violation; use `slot` where NULL is legal.
    pub fn string(&mut self, what: &'static str) -> Result<Status<String>, WireError> {
        let start = self.pos;
        let at = self.offset();
        let b = complete!(self.frame(what));
        match std::str::from_utf8(b) {
            Ok(s) => Ok(Status::Complete(s.to_owned())),
            Err(e) => {
                self.pos = start;
                Err(self.error(
                    at,
                    WireErrorKind::BadUtf8 {
                        what,
                        detail: e.to_string(),
                    },
                ))
            }
        }
    }

    /// A count that drives a loop: refused when negative or absurd, so a fuzzed count can't make
    /// the decoder spin or allocate (each counted item takes at least `min_item_bytes`).
    pub fn count(
        &mut self,
        what: &'static str,
        min_item_bytes: usize,
    ) -> Result<Status<usize>, WireError> {
        let at = self.offset();
        let n = complete!(self.int());
        if n < 0 {
            self.pos -= 4;
            return Err(self.error(at, WireErrorKind::BadLength { what, len: n }));
        }
        let need = (n as usize).saturating_mul(min_item_bytes.max(1));
        if need > self.limits.max_frame_len {
            self.pos -= 4;
            return Err(self.error(
                at,
                WireErrorKind::TooLong {
                    what,
                    len: n as i64,
                    max: self.limits.max_frame_len,
                },
            ));
        }
        Ok(Status::Complete(n as usize))
    }
}

/// A slot's length as read, before its payload.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotLen {
    Bytes(usize),
    Special(SpecialLength),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[derive(Clone, Debug, PartialEq)]
    enum Prim {
        Int(i32),
        Long(i64),
        Bool(bool),
        Str(String),
        Frame(Vec<u8>),
        Special(SpecialLength),
    }

    fn prim() -> impl Strategy<Value = Prim> {
        prop_oneof![
            any::<i32>().prop_map(Prim::Int),
            any::<i64>().prop_map(Prim::Long),
            any::<bool>().prop_map(Prim::Bool),
            any::<String>().prop_map(Prim::Str),
            proptest::collection::vec(any::<u8>(), 0..300).prop_map(Prim::Frame),
            proptest::sample::select(SpecialLength::ALL.to_vec()).prop_map(Prim::Special),
        ]
    }

    fn encode(ps: &[Prim]) -> BytesMut {
        let mut b = BytesMut::new();
        let l = Limits::DEFAULT;
        for p in ps {
            match p {
                Prim::Int(v) => put_int(&mut b, *v),
                Prim::Long(v) => put_long(&mut b, *v),
                Prim::Bool(v) => put_bool(&mut b, *v),
                Prim::Str(s) => put_str(&mut b, s, l).unwrap(),
                Prim::Frame(f) => put_frame(&mut b, f, l).unwrap(),
                Prim::Special(s) => put_special(&mut b, *s),
            }
        }
        b
    }

    fn decode_as(r: &mut Reader, shape: &Prim) -> Result<Status<Prim>, WireError> {
        Ok(Status::Complete(match shape {
            Prim::Int(_) => Prim::Int(complete!(r.int())),
            Prim::Long(_) => Prim::Long(complete!(r.long())),
            Prim::Bool(_) => Prim::Bool(complete!(r.bool())),
            Prim::Str(_) => Prim::Str(complete!(r.string("string"))),
            Prim::Frame(_) | Prim::Special(_) => match complete!(r.slot("frame")) {
                Slot::Bytes(b) => Prim::Frame(b.to_vec()),
                Slot::Special(s) => Prim::Special(s),
            },
        }))
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(ps in proptest::collection::vec(prim(), 0..40)) {
            let bytes = encode(&ps);
            let mut r = Reader::new(&bytes);
            for p in &ps {
                prop_assert_eq!(&decode_as(&mut r, p).unwrap(), &Status::Complete(p.clone()));
            }
            prop_assert!(r.is_empty());
        }

        #[test]
        fn truncated_streams_are_partial_not_wrong(ps in proptest::collection::vec(prim(), 1..10), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&ps);
            let cut = cut.index(bytes.len());
            let mut r = Reader::new(&bytes[..cut]);
            for p in &ps {
                let before = r.position();
                match decode_as(&mut r, p) {
                    Ok(Status::Complete(got)) => prop_assert_eq!(&got, p),
                    Ok(Status::Partial) => { prop_assert_eq!(r.position(), before); break; }
                    Err(e) => prop_assert!(false, "a cut stream gave an error: {e}"),
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), ops in proptest::collection::vec(0u8..7, 0..64)) {
            let mut r = Reader::new(&bytes).with_limits(Limits { max_frame_len: 1 << 16 });
            for op in ops {
                let _ = match op {
                    0 => r.int().map(|_| ()),
                    1 => r.long().map(|_| ()),
                    2 => r.bool().map(|_| ()),
                    3 => r.string("s").map(|_| ()),
                    4 => r.slot("f").map(|_| ()),
                    5 => r.count("c", 4).map(|_| ()),
                    _ => r.frame("f").map(|_| ()),
                };
                prop_assert!(r.position() <= bytes.len());
            }
        }
    }

    #[test]
    fn oversized_length_is_refused_before_reading() {
        let mut b = BytesMut::new();
        put_int(&mut b, i32::MAX);
        let mut r = Reader::new(&b).with_limits(Limits {
            max_frame_len: 1024,
        });
        let e = r.slot("data frame").unwrap_err();
        assert_eq!(e.at_byte, 0);
        assert!(matches!(e.kind, WireErrorKind::TooLong { len, .. } if len == i32::MAX as i64));
        assert_eq!(r.position(), 0);
    }

    #[test]
    fn the_same_limit_refuses_a_frame_to_send() {
        let mut b = BytesMut::new();
        put_int(&mut b, 1);
        let e = put_frame(&mut b, &[0; 11], Limits { max_frame_len: 10 }).unwrap_err();
        assert_eq!(e.at_byte, 4);
        assert!(
            matches!(
                e.kind,
                WireErrorKind::TooLong {
                    len: 11,
                    max: 10,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(b.len(), 4, "nothing of a refused frame is written");
        put_frame(&mut b, &[0; 10], Limits { max_frame_len: 10 }).unwrap();
    }

    #[test]
    fn unknown_negative_length_is_a_bad_length_with_offset() {
        let mut b = BytesMut::new();
        put_int(&mut b, 7);
        put_int(&mut b, -7);
        let mut r = Reader::new(&b).with_base(100);
        r.int().unwrap();
        let e = r.slot("data frame").unwrap_err();
        assert_eq!(e.at_byte, 104);
        assert_eq!(
            e.kind,
            WireErrorKind::BadLength {
                what: "data frame",
                len: -7
            }
        );
    }

    #[test]
    fn special_lengths_round_trip() {
        for s in SpecialLength::ALL {
            assert_eq!(SpecialLength::from_value(s.value()), Some(s));
        }
        assert_eq!(SpecialLength::from_value(-7), None);
    }
}
