//! Streams as readable text, frame by frame, so a person can read any captured stream
//! (`fakejvm decode`, and the decoded form stored beside each golden).

use crate::pickle;
use crate::protocol::{
    decode_replies, decode_requests, decode_requests_as, BroadcastOp, ConnInfo, DataItem,
    DecodedRequest, Dialect, Reply, ReplyEnd, ReplyItem, SpanKind, UdfLayout,
};
use crate::wire::WireError;
use serde::{Deserialize, Serialize};
use std::fmt::Write;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum StreamDirection {
    /// JVM -> worker: task requests.
    Request,
    /// Worker -> JVM: replies.
    Reply,
}

/// A decoded stream: what decoded, and where decoding stopped if it did not reach the end.
#[derive(Debug, Serialize)]
pub struct Decoded {
    pub dialect: Dialect,
    pub direction: StreamDirection,
    pub requests: Vec<DecodedRequest>,
    pub replies: Vec<Reply>,
    pub error: Option<WireError>,
}

/// `--pyspark X.Y[.Z]` as the UDF layout of that line: the family alone cannot tell 3.5's command
/// section from 4.0's. Any patch (or none) is accepted: the layout changes with the minor line.
pub fn parse_udf_layout(text: &str) -> Result<UdfLayout, String> {
    let bad =
        || format!("{text:?} is not a pyspark version: expected X.Y or X.Y.Z, e.g. 3.5 or 4.0.5");
    let parts: Vec<&str> = text.trim().split('.').collect();
    if !(2..=3).contains(&parts.len())
        || parts
            .iter()
            .any(|p| p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()))
    {
        return Err(bad());
    }
    let major: u32 = parts[0].parse().map_err(|_| bad())?;
    let minor: u32 = parts[1].parse().map_err(|_| bad())?;
    UdfLayout::for_version(major, minor).ok_or_else(|| {
        format!("pyspark {major}.{minor}: fakejvm knows UDF streams from 3.5 on (for an older RDD stream use --dialect)")
    })
}

/// `decode` for one pyspark line: UDF command sections differ inside a family (3.5 and 4.0 are
/// both A; `decode` reads A's as 4.0's).
pub fn decode_as(layout: UdfLayout, direction: StreamDirection, bytes: &[u8]) -> Decoded {
    let mut d = decode(layout.dialect(), direction, &[]);
    match direction {
        StreamDirection::Request => (d.requests, d.error) = decode_requests_as(layout, bytes),
        StreamDirection::Reply => (d.replies, d.error) = decode_replies(layout.dialect(), bytes),
    }
    d
}

pub fn decode(dialect: Dialect, direction: StreamDirection, bytes: &[u8]) -> Decoded {
    let mut d = Decoded {
        dialect,
        direction,
        requests: vec![],
        replies: vec![],
        error: None,
    };
    match direction {
        StreamDirection::Request => {
            let (reqs, err) = decode_requests(dialect, bytes);
            d.requests = reqs;
            d.error = err;
        }
        StreamDirection::Reply => {
            let (replies, err) = decode_replies(dialect, bytes);
            d.replies = replies;
            d.error = err;
        }
    }
    d
}

impl Decoded {
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for (i, r) in self.requests.iter().enumerate() {
            request_text(&mut out, i, r);
        }
        for (i, r) in self.replies.iter().enumerate() {
            reply_text(&mut out, i, r);
        }
        if let Some(e) = &self.error {
            let _ = writeln!(out, "error {e}");
        }
        out
    }
}

fn request_text(out: &mut String, i: usize, d: &DecodedRequest) {
    let r = &d.request;
    let whole = (
        d.spans.first().map(|s| s.start).unwrap_or(0),
        d.spans.last().map(|s| s.end).unwrap_or(0),
    );
    let _ = writeln!(out, "request {i}  bytes {}..{}", whole.0, whole.1);
    for s in &d.spans {
        let at = format!("@{}..{}", s.start, s.end);
        match s.kind {
            SpanKind::InitPrefix => {
                // The init message holds the header and the command.
                let body = d
                    .spans
                    .iter()
                    .filter(|x| matches!(x.kind, SpanKind::Header | SpanKind::Command))
                    .map(|x| x.end - x.start)
                    .sum::<usize>();
                let _ = writeln!(
                    out,
                    "  {at:<16} START_OF_INIT_MESSAGE (-8), init message length {body}"
                );
            }
            SpanKind::Header => {
                let _ = writeln!(out, "  {at:<16} header: split_index {}", r.split_index);
                if r.split_index == -1 {
                    let _ = writeln!(out, "{:21}(split index -1: the worker exits at once)", "");
                    continue;
                }
                let c = &r.context;
                let mut lines = vec![
                    format!("python_version {:?}", r.python_version),
                    format!(
                        "task: stage {} partition {} attempt {} task_attempt_id {} cpus {}{}",
                        c.stage_id,
                        c.partition_id,
                        c.attempt_number,
                        c.task_attempt_id,
                        c.cpus,
                        c.cpu_amount
                            .as_ref()
                            .map(|a| format!(" cpu_amount {a}"))
                            .unwrap_or_default()
                    ),
                    format!(
                        "barrier {}{}",
                        c.is_barrier,
                        c.barrier
                            .as_ref()
                            .map(conn_text)
                            .map(|t| format!(" ({t})"))
                            .unwrap_or_default()
                    ),
                ];
                for res in &c.resources {
                    lines.push(format!(
                        "resource {:?} name {:?} addresses {:?}",
                        res.key, res.name, res.addresses
                    ));
                }
                for (k, v) in &c.local_properties {
                    lines.push(format!("local property {k:?} = {v:?}"));
                }
                if let Some(j) = &d.context_json {
                    lines.push(format!("task context JSON {j}"));
                }
                lines.push(format!(
                    "spark_files_dir {:?}, includes {:?}",
                    r.spark_files_dir, r.includes
                ));
                if let Some(s) = &r.broadcasts.decryption_server {
                    lines.push(format!("broadcast decryption server {}", conn_text(s)));
                }
                for op in &r.broadcasts.ops {
                    lines.push(match op {
                        BroadcastOp::Add { id, path } => format!(
                            "broadcast add {id} {}",
                            path.as_deref()
                                .map(|p| format!("path {p:?}"))
                                .unwrap_or_default()
                        ),
                        BroadcastOp::Remove { id } => format!("broadcast remove {id}"),
                    });
                }
                lines.push(format!(
                    "eval_type {} ({:?})",
                    r.eval_type.value(),
                    r.eval_type
                ));
                if !r.runner_conf.is_empty() || !r.eval_conf.is_empty() || d.context_json.is_some()
                {
                    lines.push(format!(
                        "runner_conf {:?}, eval_conf {:?}",
                        r.runner_conf, r.eval_conf
                    ));
                }
                for l in lines {
                    let _ = writeln!(out, "{:21}{l}", "");
                }
            }
            SpanKind::Command if r.udf.is_some() => {
                let udf = r.udf.as_ref().expect("matched");
                let _ = writeln!(out, "  {at:<16} UDF command section:");
                for l in udf.text_lines(r.eval_type) {
                    let _ = writeln!(out, "{:21}{l}", "");
                }
            }
            SpanKind::Command => {
                let _ = writeln!(
                    out,
                    "  {at:<16} command: {}-byte pickle (func, profiler, deserializer, serializer)",
                    r.command.len()
                );
            }
            SpanKind::Data(k) => {
                let text = match r.data.get(k) {
                    Some(DataItem::Frame(b)) if r.udf.is_some() => {
                        format!("frame {} bytes: {}", b.len(), pickled_rows(b))
                    }
                    Some(DataItem::Frame(b)) => format!("frame {} bytes: {}", b.len(), preview(b)),
                    Some(DataItem::Null) => "NULL (-5)".into(),
                    Some(DataItem::Raw(b)) if r.udf.is_some() => {
                        let mut lines = arrow_item_lines(b).into_iter();
                        let first = lines.next().unwrap_or_default();
                        let _ = writeln!(out, "  {at:<16} data[{k}] {first}");
                        for l in lines {
                            let _ = writeln!(out, "{:21}{l}", "");
                        }
                        continue;
                    }
                    Some(DataItem::Raw(b)) => format!("raw {} bytes {}", b.len(), hex_preview(b)),
                    None => "?".into(),
                };
                let _ = writeln!(out, "  {at:<16} data[{k}] {text}");
            }
            SpanKind::EndOfData => {
                let _ = writeln!(out, "  {at:<16} END_OF_DATA_SECTION (-1)");
            }
            SpanKind::FinalMarker => {
                let m = r.final_marker.unwrap_or(0);
                let name = crate::wire::SpecialLength::from_value(m)
                    .map(|s| s.name())
                    .unwrap_or("not END_OF_STREAM");
                let _ = writeln!(out, "  {at:<16} final int {m} ({name})");
            }
        }
    }
}

fn conn_text(c: &ConnInfo) -> String {
    match c {
        ConnInfo::Port { port, secret } => format!("port {port} secret {secret:?}"),
        ConnInfo::Path(p) => format!("socket path {p:?}"),
    }
}

fn reply_text(out: &mut String, i: usize, r: &Reply) {
    let _ = writeln!(out, "reply {i}  bytes {}..{}", r.start, r.end_offset);
    for (k, item) in r.data.iter().enumerate() {
        let text = match item {
            ReplyItem::Frame(b) => format!("frame {} bytes: {}", b.len(), preview(b)),
            ReplyItem::Null => "NULL (-5)".into(),
            ReplyItem::ArrowStream(b) => {
                let mut lines = arrow_stream_lines(b).into_iter();
                let first = lines.next().unwrap_or_default();
                let _ = writeln!(out, "  data[{k}] START_ARROW_STREAM (-6) + {first}");
                for l in lines {
                    let _ = writeln!(out, "    {l}");
                }
                continue;
            }
        };
        let _ = writeln!(out, "  data[{k}] {text}");
    }
    if r.data.is_empty() && r.data_items > 0 {
        let _ = writeln!(
            out,
            "  {} data frames, {} bytes (not kept)",
            r.data_items, r.data_bytes
        );
    }
    match &r.end {
        ReplyEnd::Completed {
            timing,
            memory_bytes_spilled,
            disk_bytes_spilled,
            accumulators,
            final_marker,
        } => {
            let processing = timing
                .processing_ms
                .map(|p| format!(" processing {p}"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  TIMING_DATA (-3) boot {} init {} finish {}{processing}",
                timing.boot_ms, timing.init_ms, timing.finish_ms
            );
            let _ = writeln!(
                out,
                "  spilled: memory {memory_bytes_spilled} disk {disk_bytes_spilled}"
            );
            let _ = writeln!(
                out,
                "  END_OF_DATA_SECTION (-1), {} accumulator update(s)",
                accumulators.len()
            );
            for a in accumulators {
                let _ = writeln!(out, "    update {} bytes: {}", a.len(), preview(a));
            }
            let name = if *final_marker == -4 {
                "END_OF_STREAM: reusable"
            } else {
                "END_OF_DATA_SECTION: worker exits"
            };
            let _ = writeln!(out, "  final int {final_marker} ({name})");
        }
        ReplyEnd::Exception { traceback } => {
            let _ = writeln!(out, "  PYTHON_EXCEPTION_THROWN (-2), traceback:");
            for l in traceback.lines() {
                let _ = writeln!(out, "    | {l}");
            }
        }
    }
}

/// Rows shown per stream before the rest is only counted: a golden's text stays readable.
const MAX_ROWS_SHOWN: usize = 50;

/// One Arrow IPC stream: a line with its size, schema and counts, then one line per row (by
/// batch), so a changed row is a changed line in a golden's text and in `--bless`'s diff.
fn arrow_stream_lines(b: &[u8]) -> Vec<String> {
    let t = match crate::arrow::decode_stream(b) {
        Ok(t) => t,
        Err(e) => {
            return vec![format!(
                "{}-byte Arrow stream that does not decode: {e}",
                b.len()
            )]
        }
    };
    let total: usize = t.batches.iter().map(|x| x.num_rows()).sum();
    let mut lines = vec![format!(
        "{}-byte Arrow stream: {}; {} batch(es), {total} row(s)",
        b.len(),
        t.schema_line(),
        t.batches.len()
    )];
    let mut shown = 0;
    for (i, batch) in t.batches.iter().enumerate() {
        for (j, row) in crate::arrow::batch_rows(batch).into_iter().enumerate() {
            if shown == MAX_ROWS_SHOWN {
                lines.push(format!("... {} more row(s)", total - shown));
                return lines;
            }
            lines.push(format!("batch {i} row {j}: {}", clip(&row.to_string())));
            shown += 1;
        }
    }
    lines
}

/// One item of an Arrow data section (as `arrow::read_data_section` splits it): a group marker
/// (`1` + stream, `2` + left + right, `0` for no more groups) or a bare stream.
fn arrow_item_lines(b: &[u8]) -> Vec<String> {
    use crate::wire::{Reader, Status};
    let mut r = Reader::new(b);
    let mut lines = vec![];
    if b.len() >= 4 && b[..4] != [0xff; 4] {
        let m = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
        let _ = r.bytes(4);
        lines.push(match m {
            0 => "group marker 0: no more groups".into(),
            1 => "group marker 1: one stream follows".into(),
            2 => "group marker 2: a cogroup's left and right streams follow".into(),
            m => format!("group marker {m}"),
        });
    }
    while !r.is_empty() {
        match crate::arrow::read_ipc_stream(&mut r) {
            Ok(Status::Complete(s)) => lines.extend(arrow_stream_lines(s)),
            Ok(Status::Partial) => {
                lines.push(format!(
                    "{} byte(s) of an Arrow stream cut short",
                    r.remaining()
                ));
                break;
            }
            Err(e) => {
                lines.push(format!(
                    "{} byte(s) that are no Arrow stream ({e})",
                    r.remaining()
                ));
                break;
            }
        }
    }
    if lines.is_empty() {
        lines.push("empty".into());
    }
    lines
}

/// 100/300 input: the JVM (Pyrolite) pickles each batch as a tuple of row tuples; shown as rows
/// of values, like Arrow rows.
fn pickled_rows(b: &[u8]) -> String {
    let rows = match pickle::loads(b) {
        Ok(pickle::Value::Tuple(rows) | pickle::Value::List(rows)) => rows,
        _ => return preview(b),
    };
    let as_rows: Option<Vec<serde_json::Value>> = rows
        .iter()
        .map(|r| match r {
            pickle::Value::Tuple(cols) | pickle::Value::List(cols) => Some(
                serde_json::Value::Array(cols.iter().map(pickle::value_to_json).collect()),
            ),
            _ => None,
        })
        .collect();
    match as_rows {
        Some(v) => format!(
            "{} pickled row(s) {}",
            v.len(),
            clip(&serde_json::Value::Array(v).to_string())
        ),
        None => preview(b),
    }
}

/// A payload as a person would want to see it: a pickle's value, else text, else hex.
fn preview(b: &[u8]) -> String {
    if b.first() == Some(&0x80) {
        if let Ok(v) = pickle::loads(b) {
            return format!("pickle {}", clip(&pickle::value_to_json(&v).to_string()));
        }
        return format!("pickle (not plain data) {}", hex_preview(b));
    }
    match std::str::from_utf8(b) {
        Ok(s) => format!("utf8 {}", clip(&format!("{s:?}"))),
        Err(_) => hex_preview(b),
    }
}

fn hex_preview(b: &[u8]) -> String {
    if b.len() > 48 {
        format!("hex {}... ({} bytes)", hex::encode(&b[..48]), b.len())
    } else {
        format!("hex {}", hex::encode(b))
    }
}

fn clip(s: &str) -> String {
    if s.chars().count() > 160 {
        format!(
            "{}... ({} chars)",
            s.chars().take(160).collect::<String>(),
            s.chars().count()
        )
    } else {
        s.to_owned()
    }
}
