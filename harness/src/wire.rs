//! The primitives of the PythonRDD pipe protocol: big-endian ints, longs, bools, length-prefixed
//! UTF-8 strings and frames, and the negative "special lengths" that stand where a length is
//! expected.
//!
//! Encoding appends to a `BytesMut`. Decoding is a bounds-checked cursor over borrowed bytes that
//! never panics and never trusts a length: a length beyond `max_frame` is refused before anything
//! is allocated, and running out of bytes is `Incomplete` (wait for more), kept apart from real
//! violations so incremental decoders can stop and resume (the tokio-util codec / httparse way).

use bytes::{BufMut, BytesMut};
use std::fmt;

/// Default bound on a single frame or string: larger than anything a real task sends
/// (Spark's own buffers are 64 KiB; a 100k-char line is ~400 KB), small enough to never OOM us.
pub const DEFAULT_MAX_FRAME: usize = 256 * 1024 * 1024;

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

/// A frame: int length, then the payload. Panics only if the payload exceeds i32::MAX bytes,
/// which the JVM cannot send either.
pub fn put_frame(buf: &mut BytesMut, payload: &[u8]) {
    let len = i32::try_from(payload.len()).expect("frame longer than i32::MAX cannot be sent");
    buf.put_i32(len);
    buf.put_slice(payload);
}

pub fn put_str(buf: &mut BytesMut, s: &str) {
    put_frame(buf, s.as_bytes());
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

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error, serde::Serialize)]
pub enum WireErrorKind {
    /// The stream ended (for now) in the middle of an item.
    #[error("incomplete {what}: needed {needed} more byte(s)")]
    Incomplete { what: &'static str, needed: usize },
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
    #[error("{0}")]
    Violation(String),
}

impl WireError {
    pub fn is_incomplete(&self) -> bool {
        matches!(self.kind, WireErrorKind::Incomplete { .. })
    }
}

/// A bounds-checked cursor. `base` is the absolute stream offset of `buf[0]`, so errors point
/// into the whole stream even when the buffer is a window of it.
#[derive(Clone, Debug)]
pub struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    base: u64,
    max_frame: usize,
}

impl<'a> Reader<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Reader {
            buf,
            pos: 0,
            base: 0,
            max_frame: DEFAULT_MAX_FRAME,
        }
    }

    pub fn with_base(mut self, base: u64) -> Self {
        self.base = base;
        self
    }

    pub fn with_max_frame(mut self, max_frame: usize) -> Self {
        self.max_frame = max_frame;
        self
    }

    pub fn max_frame(&self) -> usize {
        self.max_frame
    }

    /// Bytes consumed so far.
    pub fn position(&self) -> usize {
        self.pos
    }

    /// Absolute stream offset of the next byte.
    pub fn offset(&self) -> u64 {
        self.base + self.pos as u64
    }

    pub fn remaining(&self) -> usize {
        self.buf.len() - self.pos
    }

    pub fn is_empty(&self) -> bool {
        self.remaining() == 0
    }

    pub fn rest(&self) -> &'a [u8] {
        &self.buf[self.pos..]
    }

    pub fn error(&self, at: u64, kind: WireErrorKind) -> WireError {
        WireError { at_byte: at, kind }
    }

    /// A violation at the current offset, for callers that check meaning (not framing).
    pub fn violation(&self, at: u64, what: impl Into<String>) -> WireError {
        self.error(at, WireErrorKind::Violation(what.into()))
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        if self.remaining() < n {
            return Err(self.error(
                self.offset(),
                WireErrorKind::Incomplete {
                    what,
                    needed: n - self.remaining(),
                },
            ));
        }
        let out = &self.buf[self.pos..self.pos + n];
        self.pos += n;
        Ok(out)
    }

    pub fn bytes(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], WireError> {
        self.take(n, what)
    }

    pub fn int(&mut self) -> Result<i32, WireError> {
        let b = self.take(4, "int")?;
        Ok(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    pub fn long(&mut self) -> Result<i64, WireError> {
        let b = self.take(8, "long")?;
        Ok(i64::from_be_bytes(b.try_into().expect("8 bytes")))
    }

    pub fn bool(&mut self) -> Result<bool, WireError> {
        let at = self.offset();
        match self.take(1, "bool")?[0] {
            0 => Ok(false),
            1 => Ok(true),
            b => {
                self.pos -= 1;
                Err(self.error(at, WireErrorKind::BadBool(b)))
            }
        }
    }

    /// A length-prefixed slot: payload bytes, or a special length in place of the length.
    /// On `Incomplete` the cursor is left where it was, so the caller can retry with more bytes.
    pub fn slot(&mut self, what: &'static str) -> Result<Slot<'a>, WireError> {
        let start = self.pos;
        let at = self.offset();
        let len = self.int()?;
        if len < 0 {
            return match SpecialLength::from_value(len) {
                Some(s) => Ok(Slot::Special(s)),
                None => {
                    self.pos = start;
                    Err(self.error(at, WireErrorKind::BadLength { what, len }))
                }
            };
        }
        let len = len as usize;
        if len > self.max_frame {
            self.pos = start;
            return Err(self.error(
                at,
                WireErrorKind::TooLong {
                    what,
                    len: len as i64,
                    max: self.max_frame,
                },
            ));
        }
        match self.take(len, what) {
            Ok(b) => Ok(Slot::Bytes(b)),
            Err(e) => {
                self.pos = start;
                Err(e)
            }
        }
    }

    /// A frame that must be a payload (no special length allowed here).
    pub fn frame(&mut self, what: &'static str) -> Result<&'a [u8], WireError> {
        let start = self.pos;
        let at = self.offset();
        match self.slot(what)? {
            Slot::Bytes(b) => Ok(b),
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
    pub fn string(&mut self, what: &'static str) -> Result<String, WireError> {
        let start = self.pos;
        let at = self.offset();
        let b = self.frame(what)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_owned()),
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
    pub fn count(&mut self, what: &'static str, min_item_bytes: usize) -> Result<usize, WireError> {
        let at = self.offset();
        let n = self.int()?;
        if n < 0 {
            self.pos -= 4;
            return Err(self.error(at, WireErrorKind::BadLength { what, len: n }));
        }
        let need = (n as usize).saturating_mul(min_item_bytes.max(1));
        if need > self.max_frame {
            self.pos -= 4;
            return Err(self.error(
                at,
                WireErrorKind::TooLong {
                    what,
                    len: n as i64,
                    max: self.max_frame,
                },
            ));
        }
        Ok(n as usize)
    }
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
        for p in ps {
            match p {
                Prim::Int(v) => put_int(&mut b, *v),
                Prim::Long(v) => put_long(&mut b, *v),
                Prim::Bool(v) => put_bool(&mut b, *v),
                Prim::Str(s) => put_str(&mut b, s),
                Prim::Frame(f) => put_frame(&mut b, f),
                Prim::Special(s) => put_special(&mut b, *s),
            }
        }
        b
    }

    fn decode_as(r: &mut Reader, shape: &Prim) -> Result<Prim, WireError> {
        Ok(match shape {
            Prim::Int(_) => Prim::Int(r.int()?),
            Prim::Long(_) => Prim::Long(r.long()?),
            Prim::Bool(_) => Prim::Bool(r.bool()?),
            Prim::Str(_) => Prim::Str(r.string("string")?),
            Prim::Frame(_) | Prim::Special(_) => match r.slot("frame")? {
                Slot::Bytes(b) => Prim::Frame(b.to_vec()),
                Slot::Special(s) => Prim::Special(s),
            },
        })
    }

    proptest! {
        #[test]
        fn encode_then_decode_is_identity(ps in proptest::collection::vec(prim(), 0..40)) {
            let bytes = encode(&ps);
            let mut r = Reader::new(&bytes);
            for p in &ps {
                prop_assert_eq!(&decode_as(&mut r, p).unwrap(), p);
            }
            prop_assert!(r.is_empty());
        }

        #[test]
        fn truncated_streams_are_incomplete_not_wrong(ps in proptest::collection::vec(prim(), 1..10), cut in any::<prop::sample::Index>()) {
            let bytes = encode(&ps);
            let cut = cut.index(bytes.len());
            let mut r = Reader::new(&bytes[..cut]);
            for p in &ps {
                match decode_as(&mut r, p) {
                    Ok(got) => prop_assert_eq!(&got, p),
                    Err(e) => { prop_assert!(e.is_incomplete(), "{e}"); break; }
                }
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512), ops in proptest::collection::vec(0u8..7, 0..64)) {
            let mut r = Reader::new(&bytes).with_max_frame(1 << 16);
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
        let mut r = Reader::new(&b).with_max_frame(1024);
        let e = r.slot("data frame").unwrap_err();
        assert_eq!(e.at_byte, 0);
        assert!(matches!(e.kind, WireErrorKind::TooLong { len, .. } if len == i32::MAX as i64));
        assert_eq!(r.position(), 0);
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
