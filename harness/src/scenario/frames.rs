//! `expect.frames`: a completed reply's data frames checked as bytes, without decoding them: how
//! many the worker wrote (a batching change shows there first) and, when given, exactly what
//! each holds. The one comparison the scenario runner's judge applies before `values`/`rows`.

use crate::protocol::{Reply, ReplyItem};
use crate::verdict::Outcome;
use serde::{Deserialize, Serialize};

/// `{"count": 3}` and/or `{"data": [{"hex": "..."}, {"text": "..."}, null]}`.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FramesExpect {
    /// Exactly this many data items (a NULL frame counts; an Arrow stream is one item).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<usize>,
    /// Exactly these items, in order; `None` is a NULL (-5) frame.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<Vec<Option<FrameBytes>>>,
}

/// One expected frame's payload, spelled as `input.frames` spells raw input.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum FrameBytes {
    Hex(HexBytes),
    Text(String),
}

impl FrameBytes {
    fn bytes(&self) -> &[u8] {
        match self {
            FrameBytes::Hex(h) => &h.0,
            FrameBytes::Text(t) => t.as_bytes(),
        }
    }
}

/// Bytes written as hex digits in the file; checked when the file is read.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(try_from = "String", into = "String")]
pub struct HexBytes(pub Vec<u8>);

impl TryFrom<String> for HexBytes {
    type Error = String;
    fn try_from(s: String) -> Result<Self, String> {
        hex::decode(&s)
            .map(HexBytes)
            .map_err(|e| format!("{s:?} is not hex ({e})"))
    }
}

impl From<HexBytes> for String {
    fn from(h: HexBytes) -> String {
        hex::encode(h.0)
    }
}

/// A mismatch shows the reply's frames as bytes when they are this small in all, and only
/// their lengths past it, so a report stays readable whatever the worker sent.
const SHOWN_BYTES: usize = 4096;

impl FramesExpect {
    /// `at` is the field's path, e.g. `tasks[0].expect.frames`.
    pub fn validate(&self, at: &str) -> Result<(), String> {
        match (self.count, &self.data) {
            (None, None) => Err(format!(
                "{at}: give `count` (how many data frames) and/or `data` (each frame's bytes)"
            )),
            (Some(n), Some(d)) if n != d.len() => Err(format!(
                "{at}: `count` is {n} but `data` lists {} frame(s)",
                d.len()
            )),
            _ => Ok(()),
        }
    }

    /// None when the reply's data items are what this expects, else the Mismatch to report.
    pub fn compare(&self, reply: &Reply) -> Option<Outcome> {
        let got: Vec<Option<&[u8]>> = reply
            .data
            .iter()
            .map(|d| match d {
                ReplyItem::Frame(b) | ReplyItem::ArrowStream(b) => Some(&b[..]),
                ReplyItem::Null => None,
            })
            .collect();
        let count_ok = self.count.is_none_or(|n| n == got.len());
        let data_ok = self.data.as_ref().is_none_or(|want| {
            want.len() == got.len()
                && want
                    .iter()
                    .zip(&got)
                    .all(|(w, g)| w.as_ref().map(FrameBytes::bytes) == *g)
        });
        if count_ok && data_ok {
            return None;
        }
        Some(Outcome::Mismatch {
            expected: serde_json::json!({ "frames": self }),
            got: serde_json::json!({ "frames": self.shown(&got) }),
        })
    }

    /// The reply's items in this expectation's spelling: text where it expects text and the
    /// frame is UTF-8, hex otherwise; only lengths when they are large.
    fn shown(&self, got: &[Option<&[u8]>]) -> serde_json::Value {
        let total: usize = got.iter().flatten().map(|b| b.len()).sum();
        if total > SHOWN_BYTES {
            let lengths: Vec<serde_json::Value> = got
                .iter()
                .map(|g| g.map_or(serde_json::Value::Null, |b| b.len().into()))
                .collect();
            return serde_json::json!({ "count": got.len(), "lengths": lengths });
        }
        let data: Vec<Option<FrameBytes>> = got
            .iter()
            .enumerate()
            .map(|(i, g)| {
                g.map(|b| {
                    let wants_text = matches!(
                        self.data.as_ref().and_then(|d| d.get(i)),
                        Some(Some(FrameBytes::Text(_)))
                    );
                    match std::str::from_utf8(b) {
                        Ok(t) if wants_text => FrameBytes::Text(t.to_owned()),
                        _ => FrameBytes::Hex(HexBytes(b.to_vec())),
                    }
                })
            })
            .collect();
        serde_json::json!({ "count": got.len(), "data": data })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::{ReplyEnd, Timing};
    use bytes::Bytes;

    fn reply(items: Vec<ReplyItem>) -> Reply {
        Reply {
            data_items: items.len() as u64,
            data_bytes: 0,
            data: items,
            end: ReplyEnd::Completed {
                timing: Timing {
                    boot_ms: 0,
                    init_ms: 0,
                    finish_ms: 0,
                    processing_ms: None,
                },
                memory_bytes_spilled: 0,
                disk_bytes_spilled: 0,
                accumulators: vec![],
                final_marker: -4,
            },
            start: 0,
            end_offset: 0,
        }
    }

    fn expect(json: serde_json::Value) -> FramesExpect {
        serde_json::from_value(json).unwrap()
    }

    #[test]
    fn count_and_bytes_are_compared_as_sent() {
        let r = reply(vec![
            ReplyItem::Frame(Bytes::from_static(b"ab")),
            ReplyItem::Null,
            ReplyItem::Frame(Bytes::from_static(&[0, 0xff])),
        ]);
        assert_eq!(expect(serde_json::json!({"count": 3})).compare(&r), None);
        let exact = expect(serde_json::json!({"data": [{"text": "ab"}, null, {"hex": "00FF"}]}));
        assert_eq!(exact.compare(&r), None);
        let Some(Outcome::Mismatch { expected, got }) =
            expect(serde_json::json!({"count": 2})).compare(&r)
        else {
            panic!("a mismatch")
        };
        assert_eq!(expected, serde_json::json!({"frames": {"count": 2}}));
        assert_eq!(
            got,
            serde_json::json!({"frames": {"count": 3, "data": [{"hex": "6162"}, null, {"hex": "00ff"}]}})
        );
        let Some(Outcome::Mismatch { got, .. }) =
            expect(serde_json::json!({"data": [{"text": "ab"}, null, {"text": "x"}]})).compare(&r)
        else {
            panic!("a mismatch")
        };
        assert_eq!(
            got["frames"]["data"],
            serde_json::json!([{"text": "ab"}, null, {"hex": "00ff"}])
        );
    }

    #[test]
    fn large_replies_show_lengths() {
        let r = reply(vec![ReplyItem::Frame(Bytes::from(vec![
            7;
            SHOWN_BYTES + 1
        ]))]);
        let Some(Outcome::Mismatch { got, .. }) =
            expect(serde_json::json!({"count": 0})).compare(&r)
        else {
            panic!("a mismatch")
        };
        assert_eq!(
            got,
            serde_json::json!({"frames": {"count": 1, "lengths": [SHOWN_BYTES + 1]}})
        );
    }

    #[test]
    fn bad_expectations_are_refused() {
        assert!(expect(serde_json::json!({}))
            .validate("e")
            .unwrap_err()
            .contains("give `count`"));
        assert!(expect(serde_json::json!({"count": 1, "data": []}))
            .validate("e")
            .unwrap_err()
            .contains("`count` is 1 but `data` lists 0"));
        let e =
            serde_json::from_value::<FramesExpect>(serde_json::json!({"data": [{"hex": "zz"}]}))
                .unwrap_err()
                .to_string();
        assert!(e.contains("\"zz\" is not hex"), "{e}");
    }
}
