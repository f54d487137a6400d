//! A fuzz case: request bytes cut into typed frames, the spans the encoder (or the request
//! decoder, for recorded streams) reported. Mutation and minimisation work frame by frame, so a
//! finding reads as "the 3rd data frame has length -7", not as "byte 412 is 0xf9".

use crate::protocol::{Dialect, EncodedRequest, Span, SpanKind};
use crate::wire::SpecialLength;
use serde::{Deserialize, Serialize};

/// One frame of a case: what the span was in the seed, and its bytes now.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    pub kind: SpanKind,
    #[serde(with = "hex_vec")]
    pub bytes: Vec<u8>,
    /// A mutation changed this frame: minimisation looks for the culprit bytes here first, and
    /// the round-trip oracle only judges cases whose header and command are untouched.
    #[serde(default)]
    pub touched: bool,
}

/// A request as frames. Concatenated in order they are exactly the bytes sent.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    /// Index of the seed this case descends from (into the campaign's seed list); None for
    /// bytes with no known seed (a leaked worker's case, a reproducer read back).
    pub seed: Option<usize>,
    pub frames: Vec<Frame>,
}

/// What a data frame slot holds, read from its first four bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameShape {
    /// An int length that matches the payload that follows.
    Framed { len: usize },
    /// A special length alone (e.g. NULL, -5).
    Special(SpecialLength),
    /// Anything else: a length that does not match, or fewer than 4 bytes.
    Raw,
}

impl Case {
    /// Frames from an encoder's spans. Bytes outside every span (none, for our encoder) stay
    /// with the frame before them so nothing is lost.
    pub fn from_encoded(seed: Option<usize>, enc: &EncodedRequest) -> Case {
        Case::from_spans(seed, &enc.bytes, &enc.spans)
    }

    pub fn from_spans(seed: Option<usize>, bytes: &[u8], spans: &[Span]) -> Case {
        let mut spans: Vec<Span> = spans
            .iter()
            .copied()
            .filter(|s| s.start <= s.end && s.end <= bytes.len())
            .collect();
        spans.sort_by_key(|s| s.start);
        let mut frames: Vec<Frame> = vec![];
        let mut at = 0;
        for s in spans {
            if s.start < at {
                continue; // overlapping span: keep the first
            }
            if s.start > at {
                match frames.last_mut() {
                    Some(f) => f.bytes.extend_from_slice(&bytes[at..s.start]),
                    None => frames.push(Frame {
                        kind: SpanKind::Header,
                        bytes: bytes[at..s.start].to_vec(),
                        touched: false,
                    }),
                }
            }
            frames.push(Frame {
                kind: s.kind,
                bytes: bytes[s.start..s.end].to_vec(),
                touched: false,
            });
            at = s.end;
        }
        if at < bytes.len() {
            match frames.last_mut() {
                Some(f) => f.bytes.extend_from_slice(&bytes[at..]),
                None => frames.push(Frame {
                    kind: SpanKind::Header,
                    bytes: bytes[at..].to_vec(),
                    touched: false,
                }),
            }
        }
        Case { seed, frames }
    }

    /// The seed this case descends from, if it is one of `seeds`.
    pub fn seed_in<'a>(&self, seeds: &'a [super::seeds::Seed]) -> Option<&'a super::seeds::Seed> {
        self.seed.and_then(|i| seeds.get(i))
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len());
        for f in &self.frames {
            out.extend_from_slice(&f.bytes);
        }
        out
    }

    pub fn len(&self) -> usize {
        self.frames.iter().map(|f| f.bytes.len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The spans of `to_bytes()`, for reproducer files and for reading a finding.
    pub fn spans(&self) -> Vec<Span> {
        let mut at = 0;
        self.frames
            .iter()
            .map(|f| {
                let s = Span {
                    kind: f.kind,
                    start: at,
                    end: at + f.bytes.len(),
                };
                at = s.end;
                s
            })
            .collect()
    }

    pub fn position(&self, kind: SpanKind) -> Option<usize> {
        self.frames.iter().position(|f| f.kind == kind)
    }

    /// Frames that hold the data section (items, -1, the final int), in order.
    pub fn data_range(&self) -> std::ops::Range<usize> {
        let first = self
            .frames
            .iter()
            .position(|f| {
                matches!(
                    f.kind,
                    SpanKind::Data(_) | SpanKind::EndOfData | SpanKind::FinalMarker
                )
            })
            .unwrap_or(self.frames.len());
        first..self.frames.len()
    }

    /// Renumber data frames 0, 1, 2... after frames were added, dropped or moved.
    pub fn renumber(&mut self) {
        let mut k = 0;
        for f in &mut self.frames {
            if let SpanKind::Data(_) = f.kind {
                f.kind = SpanKind::Data(k);
                k += 1;
            }
        }
    }

    /// In dialect D the header and command travel inside one init message whose length sits in
    /// the InitPrefix frame. A mutation that resizes them but did not aim at that length keeps it
    /// right, so the worker gets past the wrapper and reads the mutated field.
    pub fn fix_init_length(&mut self, dialect: Dialect) {
        if !dialect.wraps_init_message() {
            return;
        }
        let Some(p) = self.position(SpanKind::InitPrefix) else {
            return;
        };
        if self.frames[p].bytes.len() != 8 {
            return;
        }
        let inner: usize = self
            .frames
            .iter()
            .filter(|f| matches!(f.kind, SpanKind::Header | SpanKind::Command))
            .map(|f| f.bytes.len())
            .sum();
        self.frames[p].bytes[4..8].copy_from_slice(&(inner as i32).to_be_bytes());
    }
}

impl Frame {
    pub fn shape(&self) -> FrameShape {
        let Some(head) = self.bytes.get(..4) else {
            return FrameShape::Raw;
        };
        let len = i32::from_be_bytes([head[0], head[1], head[2], head[3]]);
        if len < 0 {
            return match SpecialLength::from_value(len) {
                Some(s) if self.bytes.len() == 4 => FrameShape::Special(s),
                _ => FrameShape::Raw,
            };
        }
        if len as usize + 4 == self.bytes.len() {
            FrameShape::Framed { len: len as usize }
        } else {
            FrameShape::Raw
        }
    }

    /// The payload of a well-framed frame (after its length).
    pub fn payload(&self) -> Option<&[u8]> {
        match self.shape() {
            FrameShape::Framed { .. } => Some(&self.bytes[4..]),
            _ => None,
        }
    }
}

pub(crate) mod hex_vec {
    use serde::{Deserialize, Deserializer, Serializer};
    pub(crate) fn serialize<S: Serializer>(b: &[u8], s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&hex::encode(b))
    }
    pub(crate) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u8>, D::Error> {
        let s = String::deserialize(d)?;
        hex::decode(s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{DataItem, TaskRequest};

    fn request() -> TaskRequest {
        TaskRequest::non_udf(
            "3.11",
            vec![0x80, 5, 0x4e, 0x2e],
            vec![DataItem::Frame(b"ab".to_vec()), DataItem::Null],
        )
    }

    #[test]
    fn frames_concatenate_to_the_encoded_bytes() {
        for d in Dialect::ALL {
            let enc = d.encode_request(&request());
            let case = Case::from_encoded(Some(0), &enc);
            assert_eq!(case.to_bytes(), enc.bytes);
            assert_eq!(case.spans(), enc.spans);
            let data: Vec<FrameShape> = case
                .frames
                .iter()
                .filter(|f| matches!(f.kind, SpanKind::Data(_)))
                .map(Frame::shape)
                .collect();
            assert_eq!(
                data,
                vec![
                    FrameShape::Framed { len: 2 },
                    FrameShape::Special(SpecialLength::Null)
                ]
            );
        }
    }

    #[test]
    fn init_length_follows_a_resized_header_in_d() {
        let enc = Dialect::D.encode_request(&request());
        let mut case = Case::from_encoded(Some(0), &enc);
        let h = case.position(SpanKind::Header).unwrap();
        case.frames[h].bytes.extend_from_slice(&[1, 2, 3]);
        case.fix_init_length(Dialect::D);
        let bytes = case.to_bytes();
        let len = i32::from_be_bytes(bytes[4..8].try_into().unwrap()) as usize;
        assert_eq!(
            len,
            bytes.len() - 8 - (enc.bytes.len() - enc.span(SpanKind::Command).unwrap().end)
        );
    }

    #[test]
    fn gaps_between_spans_are_kept() {
        let bytes = b"abcdefgh".to_vec();
        let spans = [
            Span {
                kind: SpanKind::Header,
                start: 0,
                end: 2,
            },
            Span {
                kind: SpanKind::Command,
                start: 4,
                end: 6,
            },
        ];
        let case = Case::from_spans(Some(0), &bytes, &spans);
        assert_eq!(case.to_bytes(), bytes);
    }
}
