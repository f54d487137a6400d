//! The Arrow data of UDF tasks (PROTOCOL-UDF.md §4.2, §5): input streams from typed columns in the
//! framings of [`InputFraming`], the walk over IPC framing that finds where a stream ends on the
//! socket, and the worker's reply streams as schemas plus JSON rows.
//!
//! Streams go on the socket raw: no pyspark length prefix. Their own length words are
//! little-endian (`FF FF FF FF` + i32 LE metadata length + flatbuffer + body), so the wire
//! reader's big-endian ints do not apply inside them; the pyspark group markers between streams
//! are ordinary big-endian ints.

use crate::protocol::{DataItem, InputFraming};
use crate::wire::{complete, Reader, Status, WireError, WireErrorKind};
use arrow_array::cast::AsArray;
use arrow_array::types::*;
use arrow_array::{Array, ArrayRef, RecordBatch};
use arrow_schema::{ArrowError, DataType, Field, Schema, SchemaRef, TimeUnit};
use serde_json::{json, Value as J};
use std::sync::Arc;

/// The end-of-stream marker: continuation + a zero metadata length.
const END_MARKER: [u8; 8] = [0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0];

/// One IPC stream: the schema and every batch, whole.
pub fn write_stream(schema: &Schema, batches: &[RecordBatch]) -> Result<Vec<u8>, ArrowError> {
    let mut out = vec![];
    {
        let mut w = arrow_ipc::writer::StreamWriter::try_new(&mut out, schema)?;
        for b in batches {
            w.write(b)?;
        }
        w.finish()?;
    }
    Ok(out)
}

/// One unit of a UDF task's Arrow input: the batches of one group (or of the whole task for the
/// ungrouped kinds), and for cogroups the right side's.
#[derive(Clone, Debug)]
pub struct Group {
    pub left: Vec<RecordBatch>,
    /// Cogrouped kinds only.
    pub right: Vec<RecordBatch>,
}

impl Group {
    pub fn of(batches: Vec<RecordBatch>) -> Group {
        Group {
            left: batches,
            right: vec![],
        }
    }
}

/// The data section for `framing` (everything between the command and the final -4): `Raw`
/// items, one per stream (with its group marker in front) plus the closing `0` where there is
/// one, the split [`read_data_section`] reads back. Arrow kinds send no -1, so the request's
/// `end_of_data` must be false.
pub fn data_section(
    framing: InputFraming,
    schema: &Schema,
    right_schema: Option<&Schema>,
    groups: &[Group],
) -> Result<Vec<DataItem>, ArrowError> {
    let marker = |m: i32| m.to_be_bytes().to_vec();
    Ok(match framing {
        InputFraming::Pickled => {
            return Err(ArrowError::InvalidArgumentError(
                "a pickled kind has no Arrow data section".into(),
            ))
        }
        // 3.5/4.0 grouped kinds read each batch as a group, so one batch per group is the JVM's
        // shape there (a group split in two would be two groups).
        InputFraming::BatchPerGroup if groups.iter().any(|g| g.left.len() != 1) => {
            return Err(ArrowError::InvalidArgumentError(
                "pyspark 3.5/4.0 read every record batch of a grouped kind as one group: give \
                 each group exactly one batch (or send the Stream framing on purpose)"
                    .into(),
            ))
        }
        InputFraming::Stream | InputFraming::BatchPerGroup => {
            let all: Vec<RecordBatch> = groups.iter().flat_map(|g| g.left.clone()).collect();
            vec![DataItem::Raw(write_stream(schema, &all)?)]
        }
        InputFraming::Grouped => {
            let mut items = vec![];
            for g in groups {
                let mut b = marker(1);
                b.extend(write_stream(schema, &g.left)?);
                items.push(DataItem::Raw(b));
            }
            items.push(DataItem::Raw(marker(0)));
            items
        }
        InputFraming::Cogrouped => {
            let right_schema = right_schema.unwrap_or(schema);
            let mut items = vec![];
            for g in groups {
                let mut b = marker(2);
                b.extend(write_stream(schema, &g.left)?);
                b.extend(write_stream(right_schema, &g.right)?);
                items.push(DataItem::Raw(b));
            }
            items.push(DataItem::Raw(marker(0)));
            items
        }
    })
}

/// The bytes of one IPC stream at the reader, up to and including its end marker, read message by
/// message as pyarrow's `open_stream` does (never past the end). Partial (the reader unmoved) when
/// the stream has not all arrived.
pub fn read_ipc_stream<'a>(r: &mut Reader<'a>) -> Result<Status<&'a [u8]>, WireError> {
    IpcStreamWalk::default().resume(r)
}

/// A walk over one IPC stream that may arrive in pieces: it remembers the end of the last whole
/// message, so each call on a longer prefix of the same stream walks only the new messages, and a
/// stream of N bytes fed in pieces costs one pass, not one per piece.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IpcStreamWalk {
    /// Bytes from the stream's start that are whole messages already walked.
    walked: usize,
    /// Record batch messages among them.
    batches: u64,
}

impl IpcStreamWalk {
    /// Bytes of whole messages walked so far.
    pub fn walked(&self) -> usize {
        self.walked
    }

    /// Record batch messages walked so far.
    pub fn batches(&self) -> u64 {
        self.batches
    }

    /// Walk on: `r` stands at the stream's start, as on the first call (the walked bytes are not
    /// read again). Complete with the stream's bytes, end marker included, the reader moved past
    /// them; Partial (the reader unmoved, the progress kept) until the end marker has arrived.
    pub fn resume<'a>(&mut self, r: &mut Reader<'a>) -> Result<Status<&'a [u8]>, WireError> {
        let start = r.position();
        let max = r.limits().max_frame_len;
        let mut sub = r.clone();
        complete!(sub.bytes(self.walked));
        loop {
            let msg_at = sub.offset();
            let word = complete!(sub.bytes(4));
            let len_bytes = if word == [0xff; 4] {
                complete!(sub.bytes(4))
            } else {
                // Pre-0.15 streams have no continuation marker.
                word
            };
            let len = i32::from_le_bytes(len_bytes.try_into().expect("4 bytes"));
            if len == 0 {
                break;
            }
            if len < 0 || len as usize > max {
                return Err(sub.error(msg_at, WireErrorKind::ArrowMetadataLength(len)));
            }
            let meta = complete!(sub.bytes(len as usize));
            let msg = arrow_ipc::root_as_message(meta)
                .map_err(|e| sub.error(msg_at, WireErrorKind::ArrowNotAMessage(e.to_string())))?;
            let body = msg.bodyLength();
            if body < 0 || body as u64 > max as u64 {
                return Err(sub.error(msg_at, WireErrorKind::ArrowBodyLength(body)));
            }
            complete!(sub.bytes(body as usize));
            self.walked = sub.position() - start;
            if msg.header_type() == arrow_ipc::MessageHeader::RecordBatch {
                self.batches += 1;
            }
        }
        let len = sub.position() - start;
        let out = complete!(r.bytes(len));
        debug_assert_eq!(r.position(), start + len);
        Ok(Status::Complete(out))
    }
}

/// What a [`DataPart`] of an Arrow data item is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPartKind {
    /// A 4.1+ group: its `1`/`2` marker and its stream(s), the whole data item.
    Group,
    Schema,
    Batch,
    EndOfStream,
}

/// A byte range of one data item (offsets into the item's bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DataPart {
    pub kind: DataPartKind,
    pub start: usize,
    pub end: usize,
}

/// The parts of one Arrow data item as [`data_section`] writes it (a raw stream, or a group
/// marker and its streams), found by walking its IPC messages: where fault positions such as
/// "inside batch K" land. Bytes that are not Arrow (a pickled frame, a cut stream) end the walk
/// quietly: they simply have no parts.
pub fn data_parts(b: &[u8]) -> Vec<DataPart> {
    let word = |at: usize| b.get(at..at + 4).map(|w| [w[0], w[1], w[2], w[3]]);
    let mut parts = vec![];
    let mut at = 0;
    let mut streams = 1;
    if word(0).is_some_and(|w| w != [0xff; 4]) {
        let marker = i32::from_be_bytes(word(0).unwrap_or_default());
        if !matches!(marker, 1 | 2) || word(4) != Some([0xff; 4]) {
            return parts;
        }
        parts.push(DataPart {
            kind: DataPartKind::Group,
            start: 0,
            end: b.len(),
        });
        streams = marker;
        at = 4;
    }
    while streams > 0 && word(at) == Some([0xff; 4]) {
        let Some(len) = word(at + 4).map(i32::from_le_bytes) else {
            break;
        };
        if len == 0 {
            parts.push(DataPart {
                kind: DataPartKind::EndOfStream,
                start: at,
                end: at + 8,
            });
            at += 8;
            streams -= 1;
            continue;
        }
        let meta_end = at + 8 + len.max(0) as usize;
        let Some(message) = b
            .get(at + 8..meta_end)
            .and_then(|m| arrow_ipc::root_as_message(m).ok())
        else {
            break;
        };
        let end = meta_end + message.bodyLength().max(0) as usize;
        if end > b.len() {
            break;
        }
        let kind = match message.header_type() {
            arrow_ipc::MessageHeader::Schema => Some(DataPartKind::Schema),
            arrow_ipc::MessageHeader::RecordBatch => Some(DataPartKind::Batch),
            // Dictionary batches: fakejvm writes none, and they are no position of their own.
            _ => None,
        };
        if let Some(kind) = kind {
            parts.push(DataPart {
                kind,
                start: at,
                end,
            });
        }
        at = end;
    }
    parts
}

/// The Arrow data section of a request, in the split [`data_section`] writes. Stops before the
/// final int; Partial (the reader unmoved) until all of it is there.
pub fn read_data_section(
    framing: InputFraming,
    r: &mut Reader,
) -> Result<Status<Vec<DataItem>>, WireError> {
    let start = r.clone();
    let out = read_data_section_at(framing, r);
    if !matches!(out, Ok(Status::Complete(_))) {
        *r = start;
    }
    out
}

fn read_data_section_at(
    framing: InputFraming,
    r: &mut Reader,
) -> Result<Status<Vec<DataItem>>, WireError> {
    match framing {
        InputFraming::Pickled => Err(r.error(r.offset(), WireErrorKind::NoArrowSection)),
        InputFraming::Stream | InputFraming::BatchPerGroup => {
            Ok(Status::Complete(vec![DataItem::Raw(
                complete!(read_ipc_stream(r)).to_vec(),
            )]))
        }
        InputFraming::Grouped | InputFraming::Cogrouped => {
            let streams = if framing == InputFraming::Grouped {
                1
            } else {
                2
            };
            let mut items = vec![];
            loop {
                let at = r.offset();
                let n = complete!(r.int());
                if n == 0 {
                    items.push(DataItem::Raw(0i32.to_be_bytes().to_vec()));
                    return Ok(Status::Complete(items));
                }
                if n != streams {
                    return Err(r.error(at, WireErrorKind::BadGroupMarker { got: n, streams }));
                }
                let mut b = n.to_be_bytes().to_vec();
                for _ in 0..streams {
                    b.extend_from_slice(complete!(read_ipc_stream(r)));
                }
                items.push(DataItem::Raw(b));
            }
        }
    }
}

/// A decoded IPC stream.
#[derive(Clone, Debug)]
pub struct Table {
    pub schema: SchemaRef,
    pub batches: Vec<RecordBatch>,
}

impl Table {
    /// Every row of every batch as a JSON array of column values ([`value_at`]).
    pub fn rows(&self) -> Vec<J> {
        self.batches.iter().flat_map(batch_rows).collect()
    }

    /// `_0: double, _1: list<utf8>`: the schema as one line.
    pub fn schema_line(&self) -> String {
        self.schema
            .fields()
            .iter()
            .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Decode one complete IPC stream (e.g. from [`read_ipc_stream`]).
pub fn decode_stream(bytes: &[u8]) -> Result<Table, ArrowError> {
    // try_new, not try_new_buffered: nothing here may read past the end marker.
    let reader = arrow_ipc::reader::StreamReader::try_new(std::io::Cursor::new(bytes), None)?;
    let schema = reader.schema();
    let batches = reader.collect::<Result<Vec<_>, _>>()?;
    Ok(Table { schema, batches })
}

/// [`decode_stream`] for a stream handed out as shared bytes (e.g. a reply's
/// `ReplyItem::ArrowStream`): the batches' buffers are slices of those bytes, not copies (arrow
/// copies only a buffer misaligned for its type).
pub fn decode_shared_stream(bytes: bytes::Bytes) -> Result<Table, ArrowError> {
    let mut buf = arrow_buffer::Buffer::from(bytes);
    let mut decoder = arrow_ipc::reader::StreamDecoder::new();
    let mut batches = vec![];
    while !buf.is_empty() {
        if let Some(b) = decoder.decode(&mut buf)? {
            batches.push(b);
        }
    }
    decoder.finish()?;
    let schema = decoder
        .schema()
        .ok_or_else(|| ArrowError::IpcError("an IPC stream without a schema".into()))?;
    Ok(Table { schema, batches })
}

/// A read from bytes that are all there is: Partial means cut short.
fn whole<T>(r: &Reader, s: Result<Status<T>, WireError>) -> Result<T, WireError> {
    match s? {
        Status::Complete(v) => Ok(v),
        Status::Partial => Err(r.error(
            r.offset(),
            WireErrorKind::Truncated {
                place: "inside an Arrow stream",
                pending: r.remaining(),
            },
        )),
    }
}

/// [`read_ipc_stream`] over bytes that are all there is.
fn whole_stream<'a>(r: &mut Reader<'a>) -> Result<&'a [u8], WireError> {
    let s = read_ipc_stream(r);
    whole(r, s)
}

/// The streams of a request's data section, split per group (cogroups: left and right in turn).
pub fn decode_data_section(items: &[DataItem]) -> Result<Vec<Table>, String> {
    let mut out = vec![];
    for item in items {
        let DataItem::Raw(b) = item else {
            return Err("an Arrow data section holds raw streams, not frames".into());
        };
        let mut r = Reader::new(b);
        // A group marker (big-endian 1 or 2) never starts an IPC stream (FF FF FF FF).
        if b.len() >= 4 && b[..4] != [0xff; 4] {
            let marker = r.int();
            whole(&r, marker).map_err(|e| e.to_string())?;
        }
        while !r.is_empty() {
            let s = whole_stream(&mut r).map_err(|e| e.to_string())?;
            out.push(decode_stream(s).map_err(|e| e.to_string())?);
        }
    }
    Ok(out)
}

/// `START_ARROW_STREAM + 412-byte Arrow stream: _0: double, 2 batch(es), rows [[2.0],[15.0]]`:
/// one line for decode and replay, rows cut at 200 characters.
pub fn stream_summary(bytes: &[u8]) -> String {
    match decode_stream(bytes) {
        Ok(t) => {
            let mut rows = J::Array(t.rows()).to_string();
            if rows.len() > 200 {
                let cut = (0..=200)
                    .rev()
                    .find(|&i| rows.is_char_boundary(i))
                    .unwrap_or(0);
                rows.truncate(cut);
                rows.push_str("...");
            }
            format!(
                "START_ARROW_STREAM + {}-byte Arrow stream: {}, {} batch(es), rows {rows}",
                bytes.len(),
                t.schema_line(),
                t.batches.len()
            )
        }
        Err(e) => format!(
            "START_ARROW_STREAM + {}-byte Arrow stream that does not decode: {e}",
            bytes.len()
        ),
    }
}

/// One data item of [`data_section`]'s split, for decode: its group marker and each stream.
pub fn data_item_text(b: &[u8]) -> String {
    if b == [0, 0, 0, 0] {
        return "0: no more groups".into();
    }
    let (mut text, body) = match b {
        [0xff, 0xff, 0xff, 0xff, ..] => (String::new(), b),
        [m0, m1, m2, m3, rest @ ..] => (
            format!(
                "group marker {}; ",
                i32::from_be_bytes([*m0, *m1, *m2, *m3])
            ),
            rest,
        ),
        _ => return format!("raw {} bytes", b.len()),
    };
    let mut r = Reader::new(body);
    while !r.is_empty() {
        match whole_stream(&mut r) {
            Ok(s) => {
                let line = stream_summary(s);
                text.push_str(line.trim_start_matches("START_ARROW_STREAM + "));
                text.push_str("; ");
            }
            Err(e) => {
                text.push_str(&format!(
                    "{} bytes that are no Arrow stream ({e})",
                    r.remaining()
                ));
                break;
            }
        }
    }
    text.trim_end_matches("; ").to_owned()
}

pub fn batch_rows(batch: &RecordBatch) -> Vec<J> {
    (0..batch.num_rows())
        .map(|i| J::Array(batch.columns().iter().map(|c| value_at(c, i)).collect()))
        .collect()
}

/// One value as JSON: numbers, strings and booleans as themselves; binary as `{"$bytes": hex}`
/// (the scenario JSON form); decimals as strings; dates as days and timestamps as integers in the
/// column's unit (the type says which); lists as arrays, structs as objects, maps as arrays of
/// `[key, value]`.
pub fn value_at(a: &ArrayRef, i: usize) -> J {
    if a.is_null(i) {
        return J::Null;
    }
    macro_rules! prim {
        ($t:ty) => {
            json!(a.as_primitive::<$t>().value(i))
        };
    }
    match a.data_type() {
        DataType::Null => J::Null,
        DataType::Boolean => json!(a.as_boolean().value(i)),
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        DataType::Float32 => prim!(Float32Type),
        DataType::Float64 => prim!(Float64Type),
        DataType::Date32 => prim!(Date32Type),
        DataType::Date64 => prim!(Date64Type),
        DataType::Timestamp(TimeUnit::Second, _) => prim!(TimestampSecondType),
        DataType::Timestamp(TimeUnit::Millisecond, _) => prim!(TimestampMillisecondType),
        DataType::Timestamp(TimeUnit::Microsecond, _) => prim!(TimestampMicrosecondType),
        DataType::Timestamp(TimeUnit::Nanosecond, _) => prim!(TimestampNanosecondType),
        DataType::Decimal128(_, scale) => {
            json!(decimal_string(
                a.as_primitive::<Decimal128Type>().value(i),
                *scale
            ))
        }
        DataType::Utf8 => json!(a.as_string::<i32>().value(i)),
        DataType::LargeUtf8 => json!(a.as_string::<i64>().value(i)),
        DataType::Binary => json!({"$bytes": hex::encode(a.as_binary::<i32>().value(i))}),
        DataType::LargeBinary => json!({"$bytes": hex::encode(a.as_binary::<i64>().value(i))}),
        DataType::List(_) => {
            let v = a.as_list::<i32>().value(i);
            J::Array((0..v.len()).map(|k| value_at(&v, k)).collect())
        }
        DataType::LargeList(_) => {
            let v = a.as_list::<i64>().value(i);
            J::Array((0..v.len()).map(|k| value_at(&v, k)).collect())
        }
        DataType::Struct(fields) => {
            let s = a.as_struct();
            J::Object(
                fields
                    .iter()
                    .zip(s.columns())
                    .map(|(f, c)| (f.name().clone(), value_at(c, i)))
                    .collect(),
            )
        }
        DataType::Map(_, _) => {
            let m = a.as_map();
            let entries = m.value(i);
            let (k, v) = (entries.column(0), entries.column(1));
            J::Array(
                (0..entries.len())
                    .map(|e| json!([value_at(k, e), value_at(v, e)]))
                    .collect(),
            )
        }
        other => json!({"$unsupported": type_name(other)}),
    }
}

fn decimal_string(v: i128, scale: i8) -> String {
    if scale <= 0 {
        return format!("{v}{}", "0".repeat((-scale) as usize));
    }
    let digits = v.unsigned_abs().to_string();
    let scale = scale as usize;
    let padded = format!("{digits:0>width$}", width = scale + 1);
    let (int, frac) = padded.split_at(padded.len() - scale);
    format!("{}{int}.{frac}", if v < 0 { "-" } else { "" })
}

/// A short Arrow type name: `double`, `utf8`, `list<utf8>`, `struct<id: int64, v: double>`.
pub fn type_name(t: &DataType) -> String {
    match t {
        DataType::Float64 => "double".into(),
        DataType::Float32 => "float".into(),
        DataType::List(f) | DataType::LargeList(f) => format!(
            "{}<{}>",
            if matches!(t, DataType::List(_)) {
                "list"
            } else {
                "large_list"
            },
            type_name(f.data_type())
        ),
        DataType::Struct(fs) => format!(
            "struct<{}>",
            fs.iter()
                .map(|f| format!("{}: {}", f.name(), type_name(f.data_type())))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        DataType::Timestamp(unit, tz) => {
            let unit = match unit {
                TimeUnit::Second => "s",
                TimeUnit::Millisecond => "ms",
                TimeUnit::Microsecond => "us",
                TimeUnit::Nanosecond => "ns",
            };
            match tz {
                Some(tz) => format!("timestamp[{unit}, {tz}]"),
                None => format!("timestamp[{unit}]"),
            }
        }
        other => other.to_string().to_ascii_lowercase(),
    }
}

// ---------------------------------------------------------------------------------------------
// Typed columns from JSON values (the scenario form), for building input.

/// A column of `dt` from JSON values: null for None; numbers; strings; `{"$bytes": hex}` for
/// binary; decimals as strings or numbers; dates as days and timestamps as integers in the
/// type's unit; arrays for lists; objects for structs.
pub fn array_from_json(dt: &DataType, values: &[J]) -> Result<ArrayRef, String> {
    use arrow_array::builder::*;
    let bad = |v: &J| format!("{v} is not a {} value", type_name(dt));
    macro_rules! prim {
        ($b:ty, $get:expr) => {{
            let mut b = <$b>::with_capacity(values.len());
            for v in values {
                if v.is_null() {
                    b.append_null();
                } else {
                    let x = $get(v).ok_or_else(|| bad(v))?;
                    b.append_value(x.try_into().map_err(|_| bad(v))?);
                }
            }
            Arc::new(b.finish()) as ArrayRef
        }};
    }
    Ok(match dt {
        DataType::Boolean => prim!(BooleanBuilder, J::as_bool),
        DataType::Int8 => prim!(Int8Builder, J::as_i64),
        DataType::Int16 => prim!(Int16Builder, J::as_i64),
        DataType::Int32 => prim!(Int32Builder, J::as_i64),
        DataType::Int64 => prim!(Int64Builder, J::as_i64),
        DataType::Float32 => {
            let mut b = Float32Builder::with_capacity(values.len());
            for v in values {
                match v {
                    J::Null => b.append_null(),
                    v => b.append_value(v.as_f64().ok_or_else(|| bad(v))? as f32),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Float64 => prim!(Float64Builder, J::as_f64),
        DataType::Date32 => prim!(Date32Builder, J::as_i64),
        DataType::Timestamp(TimeUnit::Microsecond, tz) => {
            let mut b = TimestampMicrosecondBuilder::with_capacity(values.len())
                .with_timezone_opt(tz.clone());
            for v in values {
                match v {
                    J::Null => b.append_null(),
                    v => b.append_value(v.as_i64().ok_or_else(|| bad(v))?),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Decimal128(p, s) => {
            let mut b = Decimal128Builder::with_capacity(values.len())
                .with_precision_and_scale(*p, *s)
                .map_err(|e| e.to_string())?;
            for v in values {
                match v {
                    J::Null => b.append_null(),
                    v => {
                        let text = match v {
                            J::String(t) => t.clone(),
                            J::Number(n) => n.to_string(),
                            _ => return Err(bad(v)),
                        };
                        b.append_value(parse_decimal(&text, *s).ok_or_else(|| bad(v))?);
                    }
                }
            }
            Arc::new(b.finish())
        }
        DataType::Utf8 => {
            let mut b = StringBuilder::new();
            for v in values {
                match v {
                    J::Null => b.append_null(),
                    J::String(s) => b.append_value(s),
                    v => return Err(bad(v)),
                }
            }
            Arc::new(b.finish())
        }
        DataType::Binary => {
            let mut b = BinaryBuilder::new();
            for v in values {
                match v {
                    J::Null => b.append_null(),
                    v => {
                        let h = v.get("$bytes").and_then(J::as_str).ok_or_else(|| bad(v))?;
                        b.append_value(hex::decode(h).map_err(|_| bad(v))?);
                    }
                }
            }
            Arc::new(b.finish())
        }
        DataType::List(f) => {
            let mut flat = vec![];
            let mut offsets = vec![0i32];
            let mut valid = vec![];
            for v in values {
                match v {
                    J::Null => valid.push(false),
                    J::Array(items) => {
                        flat.extend(items.iter().cloned());
                        valid.push(true);
                    }
                    v => return Err(bad(v)),
                }
                offsets.push(flat.len() as i32);
            }
            let child = array_from_json(f.data_type(), &flat)?;
            Arc::new(
                arrow_array::ListArray::try_new(
                    f.clone(),
                    arrow_buffer::OffsetBuffer::new(offsets.into()),
                    child,
                    Some(valid.into()),
                )
                .map_err(|e| e.to_string())?,
            )
        }
        DataType::Struct(fields) => {
            let mut columns = vec![];
            for f in fields {
                let col: Vec<J> = values
                    .iter()
                    .map(|v| v.get(f.name()).cloned().unwrap_or(J::Null))
                    .collect();
                columns.push(array_from_json(f.data_type(), &col)?);
            }
            for v in values {
                if !(v.is_null() || v.is_object()) {
                    return Err(bad(v));
                }
            }
            let valid: Vec<bool> = values.iter().map(|v| !v.is_null()).collect();
            Arc::new(
                arrow_array::StructArray::try_new(fields.clone(), columns, Some(valid.into()))
                    .map_err(|e| e.to_string())?,
            )
        }
        // As `value_at` reads them back: a list of [key, value] pairs (keys may be any type).
        DataType::Map(entries, sorted) => {
            let DataType::Struct(kv) = entries.data_type() else {
                return Err(format!("{} has no key/value struct", type_name(dt)));
            };
            let (mut keys, mut vals, mut offsets, mut valid) = (vec![], vec![], vec![0i32], vec![]);
            for v in values {
                match v {
                    J::Null => valid.push(false),
                    J::Array(pairs) => {
                        for p in pairs {
                            match p.as_array().map(Vec::as_slice) {
                                Some([k, x]) if !k.is_null() => {
                                    keys.push(k.clone());
                                    vals.push(x.clone());
                                }
                                _ => {
                                    return Err(format!(
                                    "{v}: a map is a list of [key, value] pairs with non-null keys"
                                ))
                                }
                            }
                        }
                        valid.push(true);
                    }
                    v => return Err(bad(v)),
                }
                offsets.push(keys.len() as i32);
            }
            let columns = vec![
                array_from_json(kv[0].data_type(), &keys)?,
                array_from_json(kv[1].data_type(), &vals)?,
            ];
            let entries_array = arrow_array::StructArray::try_new(kv.clone(), columns, None)
                .map_err(|e| e.to_string())?;
            Arc::new(
                arrow_array::MapArray::try_new(
                    entries.clone(),
                    arrow_buffer::OffsetBuffer::new(offsets.into()),
                    entries_array,
                    Some(valid.into()),
                    *sorted,
                )
                .map_err(|e| e.to_string())?,
            )
        }
        other => {
            return Err(format!(
                "columns of type {} are not built yet",
                type_name(other)
            ))
        }
    })
}

fn parse_decimal(text: &str, scale: i8) -> Option<i128> {
    let (neg, t) = match text.strip_prefix('-') {
        Some(t) => (true, t),
        None => (false, text),
    };
    let (int, frac) = t.split_once('.').unwrap_or((t, ""));
    let scale = scale.max(0) as usize;
    if frac.len() > scale || int.is_empty() && frac.is_empty() {
        return None;
    }
    let digits = format!("{int}{frac:0<scale$}");
    if !digits.chars().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let v: i128 = digits.parse().ok()?;
    Some(if neg { -v } else { v })
}

/// `batch` cut into batches of at most `max_records` rows, as the JVM cuts its input at
/// `spark.sql.execution.arrow.maxRecordsPerBatch` (0 or less: no limit). An empty batch stays one.
pub fn split_batch(batch: &RecordBatch, max_records: i64) -> Vec<RecordBatch> {
    let n = batch.num_rows();
    if max_records <= 0 || n as i64 <= max_records {
        return vec![batch.clone()];
    }
    let step = max_records as usize;
    (0..n)
        .step_by(step)
        .map(|at| batch.slice(at, step.min(n - at)))
        .collect()
}

/// A batch of nullable columns named `_0`, `_1`, ...: the input of the scalar, agg and window
/// kinds (the JVM names the UDF input expressions so).
pub fn positional_batch(columns: Vec<ArrayRef>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = columns
        .iter()
        .enumerate()
        .map(|(i, c)| Field::new(format!("_{i}"), c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
}

/// A batch with one struct column named `struct` holding `columns`: the input of
/// mapInPandas/mapInArrow (205, 207) and grouped map Arrow (209, 215).
pub fn struct_batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
        .collect();
    let s = arrow_array::StructArray::try_new(
        fields.into(),
        columns.into_iter().map(|(_, c)| c).collect(),
        None,
    )?;
    let field = Field::new("struct", s.data_type().clone(), true);
    RecordBatch::try_new(Arc::new(Schema::new(vec![field])), vec![Arc::new(s)])
}

/// A batch of named columns: the input of grouped map pandas (201, 216) and cogroups (206, 210),
/// where the names reach the user's DataFrame.
pub fn named_batch(columns: Vec<(&str, ArrayRef)>) -> Result<RecordBatch, ArrowError> {
    let fields: Vec<Field> = columns
        .iter()
        .map(|(n, c)| Field::new(*n, c.data_type().clone(), true))
        .collect();
    RecordBatch::try_new(
        Arc::new(Schema::new(fields)),
        columns.into_iter().map(|(_, c)| c).collect(),
    )
}

pub fn is_end_marker(b: &[u8]) -> bool {
    b == END_MARKER
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn doubles(v: &[Option<f64>]) -> ArrayRef {
        Arc::new(arrow_array::Float64Array::from(v.to_vec()))
    }

    #[test]
    fn data_parts_find_batches_and_groups() {
        let b = positional_batch(vec![doubles(&[Some(1.0), None, Some(3.0)])]).unwrap();
        let batches = split_batch(&b, 1);
        let stream = write_stream(&b.schema(), &batches).unwrap();
        let kinds: Vec<DataPartKind> = data_parts(&stream).iter().map(|p| p.kind).collect();
        use DataPartKind::*;
        assert_eq!(kinds, [Schema, Batch, Batch, Batch, EndOfStream]);
        let parts = data_parts(&stream);
        assert_eq!(parts.last().unwrap().end, stream.len());
        // A group item: the marker, then the stream; the group spans the whole item.
        let mut group = 1i32.to_be_bytes().to_vec();
        group.extend(&stream);
        let parts = data_parts(&group);
        assert_eq!(
            (parts[0].kind, parts[0].start, parts[0].end),
            (Group, 0, group.len())
        );
        assert_eq!(parts[1].start, 4);
        // Not Arrow: no parts.
        assert!(data_parts(&[0, 0, 0, 3, 0x80, 5, 1]).is_empty());
        assert!(data_parts(&stream[..stream.len() / 2]).len() < 5);
    }

    #[test]
    fn streams_end_exactly_at_their_marker() {
        let b = positional_batch(vec![doubles(&[Some(1.0), None, Some(3.0)])]).unwrap();
        let s = write_stream(&b.schema(), &[b.clone(), b.clone()]).unwrap();
        assert!(is_end_marker(&s[s.len() - 8..]));
        let mut bytes = s.clone();
        bytes.extend((-4i32).to_be_bytes());
        let mut r = Reader::new(&bytes);
        assert_eq!(read_ipc_stream(&mut r).unwrap(), Status::Complete(&s[..]));
        assert_eq!(r.int().unwrap(), Status::Complete(-4));
        // Any cut short of the end is incomplete, not wrong.
        for cut in 0..s.len() {
            let mut r = Reader::new(&s[..cut]);
            assert_eq!(
                read_ipc_stream(&mut r).unwrap(),
                Status::Partial,
                "cut {cut}"
            );
            assert_eq!(r.position(), 0);
        }
        let t = decode_stream(&s).unwrap();
        assert_eq!(t.schema_line(), "_0: double");
        assert_eq!(
            t.rows(),
            vec![
                json!([1.0]),
                json!([null]),
                json!([3.0]),
                json!([1.0]),
                json!([null]),
                json!([3.0])
            ]
        );
    }

    #[test]
    fn a_resumed_walk_reads_only_what_came_since() {
        let batches: Vec<RecordBatch> = (0..4)
            .map(|k| positional_batch(vec![doubles(&[Some(k as f64); 10])]).unwrap())
            .collect();
        let s = write_stream(&batches[0].schema(), &batches).unwrap();
        let mut walk = IpcStreamWalk::default();
        let half = s.len() / 2;
        assert_eq!(
            walk.resume(&mut Reader::new(&s[..half])).unwrap(),
            Status::Partial
        );
        let walked = walk.walked();
        assert!(walked > 0 && walked <= half, "{walked} of {half}");
        assert!(walk.batches() >= 1);
        // The walked bytes are not read again: a resumed walk over garbage there still ends.
        let mut spoiled = s.clone();
        spoiled[..walked].fill(0xee);
        let mut r = Reader::new(&spoiled);
        let got = walk.resume(&mut r).unwrap();
        assert_eq!(got.complete().map(<[u8]>::len), Some(s.len()));
        assert_eq!(r.position(), s.len());
        assert_eq!(walk.batches(), 4);
    }

    #[test]
    fn shared_streams_decode_as_copied_ones() {
        let b = positional_batch(vec![doubles(&[Some(1.5), None, Some(-2.0)])]).unwrap();
        let s = write_stream(&b.schema(), &[b.clone(), b.slice(1, 2)]).unwrap();
        let shared = decode_shared_stream(bytes::Bytes::from(s.clone())).unwrap();
        let copied = decode_stream(&s).unwrap();
        assert_eq!(shared.schema, copied.schema);
        assert_eq!(shared.batches, copied.batches);
        assert!(decode_shared_stream(bytes::Bytes::from(s[..s.len() - 3].to_vec())).is_err());
    }

    #[test]
    fn every_framing_reads_back_in_the_split_it_was_written() {
        let g = |v: &[f64]| Group {
            left: vec![positional_batch(vec![doubles(
                &v.iter().map(|x| Some(*x)).collect::<Vec<_>>(),
            )])
            .unwrap()],
            right: vec![positional_batch(vec![doubles(&[Some(7.0)])]).unwrap()],
        };
        let groups = [g(&[1.0, 2.0, 3.0]), g(&[10.0, 20.0])];
        let schema = groups[0].left[0].schema();
        for framing in [
            InputFraming::Stream,
            InputFraming::BatchPerGroup,
            InputFraming::Grouped,
            InputFraming::Cogrouped,
        ] {
            let items = data_section(framing, &schema, None, &groups).unwrap();
            let bytes: Vec<u8> = items
                .iter()
                .flat_map(|i| match i {
                    DataItem::Raw(b) => b.clone(),
                    _ => unreachable!(),
                })
                .collect();
            let mut r = Reader::new(&bytes);
            assert_eq!(
                read_data_section(framing, &mut r).unwrap(),
                Status::Complete(items.clone()),
                "{framing:?}"
            );
            assert!(r.is_empty());
            let tables = decode_data_section(&items).unwrap();
            let rows: Vec<J> = tables.iter().flat_map(|t| t.rows()).collect();
            match framing {
                InputFraming::Cogrouped => assert_eq!(tables.len(), 4),
                InputFraming::Grouped => assert_eq!(tables.len(), 2),
                _ => {
                    assert_eq!(tables.len(), 1);
                    assert_eq!(tables[0].batches.len(), 2);
                }
            }
            assert_eq!(rows[0], json!([1.0]));
        }
        // 3.5/4.0 would read a split group as two groups.
        let split = Group::of(vec![groups[0].left[0].clone(), groups[0].left[0].clone()]);
        assert!(data_section(InputFraming::BatchPerGroup, &schema, None, &[split]).is_err());
        // §8.4: the 4.1+ framing starts with a big-endian 1 and ends with a 0.
        let items = data_section(InputFraming::Grouped, &schema, None, &groups).unwrap();
        let DataItem::Raw(first) = &items[0] else {
            unreachable!()
        };
        assert_eq!(&first[..8], &[0, 0, 0, 1, 0xff, 0xff, 0xff, 0xff]);
        assert_eq!(items.last(), Some(&DataItem::Raw(vec![0, 0, 0, 0])));
    }

    #[test]
    fn typed_columns_from_json_come_back_as_the_same_json() {
        use arrow_schema::Fields;
        let cases: Vec<(DataType, J)> = vec![
            (DataType::Boolean, json!([true, null, false])),
            (DataType::Int64, json!([1, null, -9007199254740993i64])),
            (DataType::Int32, json!([1, 2147483647, null])),
            (DataType::Float64, json!([1.5, null, -0.0])),
            (DataType::Utf8, json!(["a b", null, "😀"])),
            (DataType::Binary, json!([{"$bytes": "00ff"}, null])),
            (DataType::Date32, json!([0, 19000, null])),
            (
                DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
                json!([0, 1700000000000000i64, null]),
            ),
            (
                DataType::Decimal128(10, 2),
                json!(["1.50", "-0.05", null, "12345678.90"]),
            ),
            (
                DataType::List(Arc::new(Field::new("element", DataType::Utf8, true))),
                json!([["a", "b"], [], null, [null]]),
            ),
            (
                DataType::Struct(Fields::from(vec![
                    Field::new("id", DataType::Int64, true),
                    Field::new("v", DataType::Float64, true),
                ])),
                json!([{"id": 1, "v": 0.5}, null, {"id": null, "v": 2.0}]),
            ),
        ];
        for (dt, values) in cases {
            let values = values.as_array().unwrap().clone();
            let a = array_from_json(&dt, &values).unwrap();
            let back: Vec<J> = (0..a.len()).map(|i| value_at(&a, i)).collect();
            assert_eq!(back, values, "{dt}");
            // And through an IPC stream.
            let b = positional_batch(vec![a]).unwrap();
            let t = decode_stream(&write_stream(&b.schema(), &[b]).unwrap()).unwrap();
            let col: Vec<J> = t.rows().into_iter().map(|r| r[0].clone()).collect();
            assert_eq!(col, values, "{dt}");
        }
        assert!(array_from_json(&DataType::Int64, &[json!("x")]).is_err());
        assert!(array_from_json(&DataType::Int8, &[json!(300)]).is_err());
    }

    #[test]
    fn udf_requests_with_arrow_data_decode_as_encoded() {
        use crate::protocol::{decode_requests_as, EvalType, Udf, UdfCommand, UdfLayout};
        let groups = [
            Group::of(vec![positional_batch(vec![doubles(&[
                Some(1.0),
                Some(2.0),
            ])])
            .unwrap()]),
            Group::of(vec![positional_batch(vec![doubles(&[Some(10.0)])]).unwrap()]),
        ];
        let schema = groups[0].left[0].schema();
        for layout in UdfLayout::ALL {
            for eval in [
                EvalType::SqlScalarPandasUdf,
                EvalType::SqlGroupedAggPandasUdf,
            ] {
                let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], vec![0x80, 5, b'.'])]);
                let mut req = cmd.place("3.11", eval, vec![("k".into(), "v".into())]);
                if layout.dialect() == crate::protocol::Dialect::D {
                    req.context.cpu_amount = Some("1".into());
                }
                req.data =
                    data_section(layout.input_framing(eval), &schema, None, &groups).unwrap();
                req.end_of_data = false;
                let enc = layout.dialect().encode_request(&req);
                let (dec, err) = decode_requests_as(layout, &enc.bytes);
                assert!(err.is_none(), "{layout} {eval}: {err:?}");
                assert_eq!(dec[0].request, req, "{layout} {eval}");
                assert_eq!(dec[0].spans, enc.spans, "{layout} {eval}");
            }
        }
    }

    #[test]
    fn batches_split_at_max_records() {
        let b = positional_batch(vec![doubles(&[Some(1.0), Some(2.0), Some(3.0)])]).unwrap();
        let sizes = |m| {
            split_batch(&b, m)
                .iter()
                .map(|b| b.num_rows())
                .collect::<Vec<_>>()
        };
        assert_eq!(sizes(2), vec![2, 1]);
        assert_eq!(sizes(1), vec![1, 1, 1]);
        assert_eq!(sizes(3), vec![3]);
        assert_eq!(sizes(0), vec![3]);
        let rows: Vec<J> = split_batch(&b, 2).iter().flat_map(batch_rows).collect();
        assert_eq!(rows, batch_rows(&b));
    }

    proptest! {
        #[test]
        fn reading_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            for f in [InputFraming::Stream, InputFraming::Grouped, InputFraming::Cogrouped] {
                let mut r = Reader::new(&bytes).with_limits(crate::wire::Limits { max_frame_len: 1 << 16 });
                let _ = read_data_section(f, &mut r);
            }
            let _ = decode_stream(&bytes);
        }

        #[test]
        fn double_columns_round_trip(v in proptest::collection::vec(proptest::option::of(any::<f64>().prop_filter("not NaN", |f| !f.is_nan())), 0..50)) {
            let b = positional_batch(vec![doubles(&v)]).unwrap();
            let s = write_stream(&b.schema(), &[b]).unwrap();
            let mut r = Reader::new(&s);
            prop_assert_eq!(read_ipc_stream(&mut r).unwrap().complete().map(|b| b.len()), Some(s.len()));
            let t = decode_stream(&s).unwrap();
            let got: Vec<Option<f64>> = t.rows().iter().map(|r| r[0].as_f64()).collect();
            prop_assert_eq!(got, v);
        }
    }
}
