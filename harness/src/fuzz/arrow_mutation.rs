//! Structural mutations of the Arrow IPC streams inside a case's data section (UDF tasks of the
//! Arrow eval types, PROTOCOL-UDF.md §4.2): the framing words of a message (continuation marker,
//! metadata length), the flatbuffer `Message` (header type, `bodyLength`, a record batch's
//! `length`, field nodes, buffers, compression, dictionary ids, the schema's field types,
//! nesting and custom metadata), bytes inside one body buffer, whole batches dropped /
//! duplicated / reordered, the `1`/`2`/`0` group markers between streams (4.1+ grouped kinds,
//! and cogroups on every line), and a schema swapped for another seed's.
//!
//! Streams are found by parsing (each message's flatbuffer with `root_as_message`, as pyarrow's
//! `open_stream` walks them), never by guessing offsets. A changed message is re-built with the
//! generated flatbuffer builders arrow-ipc exposes (schemas through its `IpcSchemaEncoder`), so it
//! stays a valid flatbuffer holding exactly the one wrong value; only the framing words
//! (continuation, metadata length) and the group markers are written as raw ints, since that is
//! what they are on the wire. This is what reaches pyarrow's C++ IPC reader through the real
//! worker: a wrong buffer length or offset, a node length past the body, a compression codec on
//! an uncompressed body.

use super::case::Case;
use super::seeds::Seed;
use crate::protocol::SpanKind;
use arbitrary::Arbitrary;
use arrow_ipc::writer::DictionaryTracker;
use arrow_ipc::{
    BodyCompressionArgs, BodyCompressionMethod, Buffer, CompressionType, DictionaryBatchArgs,
    FieldNode, KeyValueArgs, MessageArgs, MessageHeader, MetadataVersion, RecordBatchArgs,
};
use arrow_schema::{DataType, Field, Fields, IntervalUnit, Schema, TimeUnit};
use flatbuffers::{FlatBufferBuilder, WIPOffset};
use std::ops::Range;
use std::sync::Arc;

const CONTINUATION: [u8; 4] = [0xff; 4];

/// An i64 worth trying where a message holds a length, an offset, a count or an id.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Wide {
    Zero,
    MinusOne,
    Min,
    Max,
    /// 2^40: past any body, yet no overflow when added to an offset.
    Big,
    /// Twice the value there (at least 1): past the end by as much as it was.
    Double,
    Half,
    /// The value there, plus or minus a little (off by one past the body).
    Delta(i8),
    Any(i64),
}

impl Wide {
    pub fn resolve(self, current: i64) -> i64 {
        match self {
            Wide::Zero => 0,
            Wide::MinusOne => -1,
            Wide::Min => i64::MIN,
            Wide::Max => i64::MAX,
            Wide::Big => 1 << 40,
            Wide::Double => current.saturating_mul(2).max(1),
            Wide::Half => current / 2,
            Wide::Delta(d) => current.wrapping_add(d as i64),
            Wide::Any(v) => v,
        }
    }

    /// For the 32-bit words (the metadata length): clamped, so Max stays i32::MAX.
    fn resolve_i32(self, current: i32) -> i32 {
        self.resolve(current as i64)
            .clamp(i32::MIN as i64, i32::MAX as i64) as i32
    }
}

/// What takes the place of a message's `FF FF FF FF` continuation marker.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Continuation {
    /// Gone: the pre-0.15 framing (the metadata length first), which readers still accept.
    Removed,
    /// Another word: zero, a near miss, or anything.
    Changed(u32),
}

/// How a schema field's nesting changes.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Nest {
    /// `t` becomes `list<t>` (`large_list`, `fixed_size_list[2]` by `kind`).
    WrapList { kind: u8 },
    /// `t` becomes `struct<t>`.
    WrapStruct,
    /// A list or map becomes its item type, a struct its first child (an empty struct: null).
    Unwrap,
    /// One more child in a struct (or `struct<t, extra>` around anything else).
    AddChild { ty: u8 },
    /// A struct loses its last child.
    DropChild,
    /// `t` wrapped in lists `1 + depth % 64` times: deep nesting for the readers' recursion limits.
    Deep { depth: u8 },
}

/// A length-keeping edit inside one body buffer.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum BodyOp {
    Flip {
        at: u16,
        bit: u8,
    },
    Set {
        at: u16,
        value: u8,
    },
    /// Every byte of the buffer: all-ones validity, offsets far past the data.
    Fill(u8),
}

/// Where custom metadata goes.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum MetadataTarget {
    /// The `Message` table's own custom_metadata (any message).
    Message,
    /// The schema's (pyarrow reads `pandas` from here in `to_pandas`).
    Schema,
    /// One field's (extension type names live here).
    Field(u8),
}

/// One structural change to one Arrow stream (or group marker) of a case.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub struct ArrowMutation {
    /// Which stream of the case (in order over its data frames; for [`ArrowEdit::GroupMarker`],
    /// which marker).
    pub stream: u8,
    pub edit: ArrowEdit,
}

/// The kinds. `msg` counts the stream's messages (the end-of-stream marker last, for the two
/// framing words); `batch` counts its record and dictionary batches; `field` the schema's
/// top-level fields. Every index is taken modulo what is there.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum ArrowEdit {
    Continuation {
        msg: u8,
        to: Continuation,
    },
    MetadataLength {
        msg: u8,
        value: Wide,
    },
    /// The `Message` re-built with another `header_type` over the same header table.
    HeaderType {
        msg: u8,
        to: u8,
    },
    BodyLength {
        msg: u8,
        value: Wide,
    },
    BatchLength {
        batch: u8,
        value: Wide,
    },
    NodeLength {
        batch: u8,
        node: u8,
        value: Wide,
    },
    NullCount {
        batch: u8,
        node: u8,
        value: Wide,
    },
    BufferOffset {
        batch: u8,
        buffer: u8,
        value: Wide,
    },
    BufferLength {
        batch: u8,
        buffer: u8,
        value: Wide,
    },
    /// A `BodyCompression` on a batch whose body is not compressed (LZ4, ZSTD or an unknown codec).
    Compression {
        batch: u8,
        codec: u8,
    },
    /// A dictionary batch's id changed; in a stream without one (fakejvm's own seeds), a field
    /// becomes dictionary-encoded under id `id` with no dictionary ever sent.
    DictionaryId {
        field: u8,
        id: u8,
    },
    FieldType {
        field: u8,
        to: u8,
    },
    Nesting {
        field: u8,
        how: Nest,
    },
    CustomMetadata {
        msg: u8,
        target: MetadataTarget,
        entry: u8,
        long: bool,
    },
    BodyBytes {
        batch: u8,
        buffer: u8,
        op: BodyOp,
    },
    DropBatch {
        batch: u8,
    },
    DuplicateBatch {
        batch: u8,
    },
    SwapBatches {
        a: u8,
        b: u8,
    },
    /// A `1` / `2` in front of a group's stream(s), or the closing `0`, changed (big-endian, as
    /// pyspark's read_int reads it).
    GroupMarker {
        value: Wide,
    },
    /// The stream's schema message swapped for another stream's (this case's or another seed's):
    /// a schema that disagrees with the batches.
    SwapSchema {
        from: u16,
    },
}

impl ArrowEdit {
    /// The kind's name, as the campaign summary counts it.
    pub fn name(&self) -> &'static str {
        match self {
            ArrowEdit::Continuation { .. } => "arrow.continuation",
            ArrowEdit::MetadataLength { .. } => "arrow.metadata_length",
            ArrowEdit::HeaderType { .. } => "arrow.header_type",
            ArrowEdit::BodyLength { .. } => "arrow.body_length",
            ArrowEdit::BatchLength { .. } => "arrow.batch_length",
            ArrowEdit::NodeLength { .. } => "arrow.node_length",
            ArrowEdit::NullCount { .. } => "arrow.null_count",
            ArrowEdit::BufferOffset { .. } => "arrow.buffer_offset",
            ArrowEdit::BufferLength { .. } => "arrow.buffer_length",
            ArrowEdit::Compression { .. } => "arrow.compression",
            ArrowEdit::DictionaryId { .. } => "arrow.dictionary_id",
            ArrowEdit::FieldType { .. } => "arrow.field_type",
            ArrowEdit::Nesting { .. } => "arrow.nesting",
            ArrowEdit::CustomMetadata { .. } => "arrow.custom_metadata",
            ArrowEdit::BodyBytes { .. } => "arrow.body_bytes",
            ArrowEdit::DropBatch { .. } => "arrow.drop_batch",
            ArrowEdit::DuplicateBatch { .. } => "arrow.duplicate_batch",
            ArrowEdit::SwapBatches { .. } => "arrow.swap_batches",
            ArrowEdit::GroupMarker { .. } => "arrow.group_marker",
            ArrowEdit::SwapSchema { .. } => "arrow.swap_schema",
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Finding the streams.

/// One IPC message of a stream, as offsets into its data frame's bytes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub start: usize,
    /// It begins with `FF FF FF FF` (else it is in the pre-0.15 framing).
    pub continuation: bool,
    /// The flatbuffer and its padding (what the metadata length counts).
    pub meta: Range<usize>,
    pub body: Range<usize>,
    pub header: MessageHeader,
}

impl Message {
    pub fn end(&self) -> usize {
        self.body.end
    }

    fn len_at(&self) -> usize {
        self.meta.start - 4
    }

    fn has_batch(&self) -> bool {
        matches!(
            self.header,
            MessageHeader::RecordBatch | MessageHeader::DictionaryBatch
        )
    }
}

/// One IPC stream inside a data frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stream {
    /// Index into the case's frames.
    pub frame: usize,
    pub messages: Vec<Message>,
    /// The end-of-stream marker (continuation + zero length), when the stream has one.
    pub end_marker: Option<Range<usize>>,
}

impl Stream {
    fn schema(&self) -> Option<&Message> {
        self.messages
            .iter()
            .find(|m| m.header == MessageHeader::Schema)
    }

    fn batches(&self) -> Vec<&Message> {
        self.messages.iter().filter(|m| m.has_batch()).collect()
    }

    fn range(&self) -> Range<usize> {
        let start = self.messages.first().map(|m| m.start);
        let start = start.or(self.end_marker.as_ref().map(|e| e.start));
        let end = self.end_marker.as_ref().map(|e| e.end);
        let end = end.or(self.messages.last().map(Message::end));
        start.unwrap_or(0)..end.unwrap_or(0)
    }
}

/// The Arrow layout of a case: its streams and its group markers (frame, offset).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub streams: Vec<Stream>,
    pub markers: Vec<(usize, usize)>,
}

impl Layout {
    pub fn of(case: &Case) -> Layout {
        let mut out = Layout::default();
        let mut four_byte = vec![];
        for (i, f) in case.frames.iter().enumerate() {
            if !matches!(f.kind, SpanKind::Data(_)) {
                continue;
            }
            let b = &f.bytes;
            let word = |at: usize| b.get(at..at + 4);
            // A 4.1+ group (or any cogroup) begins with its marker, then a stream.
            let mut at = 0;
            if b.len() >= 8
                && word(0) != Some(&CONTINUATION[..])
                && word(4) == Some(&CONTINUATION[..])
            {
                out.markers.push((i, 0));
                at = 4;
            } else if b.len() == 4 {
                four_byte.push(i);
                continue;
            }
            while let Some(s) = parse_stream(b, at, i) {
                at = s.range().end;
                let ended = s.end_marker.is_some();
                out.streams.push(s);
                if !ended || at >= b.len() {
                    break;
                }
            }
        }
        // A lone int in the data section of a case with streams: the closing `0` (or a marker
        // an earlier mutation left alone in its frame).
        if !out.streams.is_empty() {
            out.markers.extend(four_byte.into_iter().map(|i| (i, 0)));
        }
        out
    }
}

/// The stream that starts at `at` in `b`, as far as its messages parse; None if not even one does.
fn parse_stream(b: &[u8], at: usize, frame: usize) -> Option<Stream> {
    let word = |p: usize| b.get(p..p + 4).map(|w| [w[0], w[1], w[2], w[3]]);
    let mut messages = vec![];
    let mut end_marker = None;
    let mut p = at;
    while let Some(w) = word(p) {
        let continuation = w == CONTINUATION;
        let len_at = if continuation { p + 4 } else { p };
        let Some(len) = word(len_at).map(i32::from_le_bytes) else {
            break;
        };
        if len == 0 {
            if continuation {
                end_marker = Some(p..p + 8);
            }
            break;
        }
        if len < 0 {
            break;
        }
        let meta = len_at + 4..len_at + 4 + len as usize;
        let Some(msg) = b
            .get(meta.clone())
            .and_then(|m| arrow_ipc::root_as_message(m).ok())
        else {
            break;
        };
        let body_len = msg.bodyLength();
        if body_len < 0 || meta.end as u64 + body_len as u64 > b.len() as u64 {
            break;
        }
        let body = meta.end..meta.end + body_len as usize;
        messages.push(Message {
            start: p,
            continuation,
            header: msg.header_type(),
            meta,
            body: body.clone(),
        });
        p = body.end;
    }
    if messages.is_empty() && end_marker.is_none() {
        return None;
    }
    Some(Stream {
        frame,
        messages,
        end_marker,
    })
}

/// The case has at least one Arrow stream in its data section.
pub fn has_arrow(case: &Case) -> bool {
    !Layout::of(case).streams.is_empty()
}

/// The number of top-level columns of the case's first stream's schema: how many input columns
/// a UDF's argument offsets index.
pub fn input_columns(case: &Case) -> Option<usize> {
    let layout = Layout::of(case);
    let s = layout.streams.first()?;
    let m = s.schema()?;
    let bytes = &case.frames[s.frame].bytes[m.meta.clone()];
    let msg = arrow_ipc::root_as_message(bytes).ok()?;
    Some(msg.header_as_schema()?.fields()?.len())
}

// ---------------------------------------------------------------------------------------------
// A message as plain values, and back to a flatbuffer through the generated builders.

#[derive(Clone, Debug)]
struct Batch {
    length: i64,
    nodes: Vec<FieldNode>,
    buffers: Vec<Buffer>,
    compression: Option<(CompressionType, BodyCompressionMethod)>,
    variadic: Option<Vec<i64>>,
}

#[derive(Clone, Debug)]
enum Header {
    Schema(Schema),
    Batch(Batch),
    Dictionary {
        id: i64,
        data: Option<Batch>,
        is_delta: bool,
    },
    /// A header this module does not re-build (tensors, NONE): only the Message's own fields
    /// change, and the header goes.
    Other,
}

#[derive(Clone, Debug)]
struct Model {
    version: MetadataVersion,
    header_type: MessageHeader,
    header: Header,
    body_length: i64,
    custom_metadata: Vec<(String, String)>,
    /// The schema encoder numbers dictionary fields from this id on.
    first_dict_id: u8,
}

impl Batch {
    fn read(b: arrow_ipc::RecordBatch) -> Batch {
        Batch {
            length: b.length(),
            nodes: b
                .nodes()
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default(),
            buffers: b
                .buffers()
                .map(|v| v.iter().copied().collect())
                .unwrap_or_default(),
            compression: b.compression().map(|c| (c.codec(), c.method())),
            variadic: b.variadicBufferCounts().map(|v| v.iter().collect()),
        }
    }

    fn build<'a>(&self, fbb: &mut FlatBufferBuilder<'a>) -> WIPOffset<arrow_ipc::RecordBatch<'a>> {
        let nodes = fbb.create_vector(&self.nodes[..]);
        let buffers = fbb.create_vector(&self.buffers[..]);
        let compression = self.compression.map(|(codec, method)| {
            arrow_ipc::BodyCompression::create(fbb, &BodyCompressionArgs { codec, method })
        });
        let variadic = self
            .variadic
            .as_ref()
            .map(|v| fbb.create_vector(v.as_slice()));
        arrow_ipc::RecordBatch::create(
            fbb,
            &RecordBatchArgs {
                length: self.length,
                nodes: Some(nodes),
                buffers: Some(buffers),
                compression,
                variadicBufferCounts: variadic,
            },
        )
    }
}

impl Model {
    /// None when the flatbuffer does not parse, or its schema is not one arrow-rs can convert.
    fn read(meta: &[u8]) -> Option<Model> {
        let msg = arrow_ipc::root_as_message(meta).ok()?;
        let header = match msg.header_type() {
            MessageHeader::Schema => {
                Header::Schema(arrow_ipc::convert::try_fb_to_schema(msg.header_as_schema()?).ok()?)
            }
            MessageHeader::RecordBatch => Header::Batch(Batch::read(msg.header_as_record_batch()?)),
            MessageHeader::DictionaryBatch => {
                let d = msg.header_as_dictionary_batch()?;
                Header::Dictionary {
                    id: d.id(),
                    data: d.data().map(Batch::read),
                    is_delta: d.isDelta(),
                }
            }
            _ => Header::Other,
        };
        let custom_metadata = msg
            .custom_metadata()
            .map(|v| {
                v.iter()
                    .map(|kv| {
                        (
                            kv.key().unwrap_or_default().to_string(),
                            kv.value().unwrap_or_default().to_string(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Model {
            version: msg.version(),
            header_type: msg.header_type(),
            header,
            body_length: msg.bodyLength(),
            custom_metadata,
            first_dict_id: 0,
        })
    }

    /// The finished flatbuffer.
    fn build(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::new();
        let header = match &self.header {
            Header::Schema(s) => {
                // The encoder numbers dictionary-encoded fields in order from the tracker's
                // next id (it refuses to encode one without a tracker).
                let mut tracker = DictionaryTracker::new(false);
                for _ in 0..self.first_dict_id {
                    tracker.next_dict_id();
                }
                let off = arrow_ipc::convert::IpcSchemaEncoder::new()
                    .with_dictionary_tracker(&mut tracker)
                    .schema_to_fb_offset(&mut fbb, s);
                Some(off.as_union_value())
            }
            Header::Batch(b) => Some(b.build(&mut fbb).as_union_value()),
            Header::Dictionary { id, data, is_delta } => {
                let data = data.as_ref().map(|d| d.build(&mut fbb));
                let off = arrow_ipc::DictionaryBatch::create(
                    &mut fbb,
                    &DictionaryBatchArgs {
                        id: *id,
                        data,
                        isDelta: *is_delta,
                    },
                );
                Some(off.as_union_value())
            }
            Header::Other => None,
        };
        let custom_metadata = (!self.custom_metadata.is_empty()).then(|| {
            let kvs: Vec<_> = self
                .custom_metadata
                .iter()
                .map(|(k, v)| {
                    let key = Some(fbb.create_string(k));
                    let value = Some(fbb.create_string(v));
                    arrow_ipc::KeyValue::create(&mut fbb, &KeyValueArgs { key, value })
                })
                .collect();
            fbb.create_vector(&kvs[..])
        });
        let root = arrow_ipc::Message::create(
            &mut fbb,
            &MessageArgs {
                version: self.version,
                header_type: self.header_type,
                header,
                bodyLength: self.body_length,
                custom_metadata,
            },
        );
        fbb.finish(root, None);
        fbb.finished_data().to_vec()
    }

    fn batch_mut(&mut self) -> Option<&mut Batch> {
        match &mut self.header {
            Header::Batch(b) => Some(b),
            Header::Dictionary { data, .. } => data.as_mut(),
            _ => None,
        }
    }

    fn schema_mut(&mut self) -> Option<&mut Schema> {
        match &mut self.header {
            Header::Schema(s) => Some(s),
            _ => None,
        }
    }
}

/// A message's bytes with `meta` as its flatbuffer: the continuation (if it had one), the
/// little-endian metadata length, the flatbuffer padded so the body starts 8-aligned (as
/// arrow's writers pad), then `body`.
fn frame_message(continuation: bool, meta: &[u8], body: &[u8]) -> Vec<u8> {
    let prefix = if continuation { 8 } else { 4 };
    let padded = (prefix + meta.len()).div_ceil(8) * 8 - prefix;
    let mut out = Vec::with_capacity(prefix + padded + body.len());
    if continuation {
        out.extend_from_slice(&CONTINUATION);
    }
    out.extend_from_slice(&(padded as i32).to_le_bytes());
    out.extend_from_slice(meta);
    out.resize(prefix + padded, 0);
    out.extend_from_slice(body);
    out
}

// ---------------------------------------------------------------------------------------------
// Applying.

/// Apply one mutation; false when it does not apply (no Arrow data, no such part, no change).
/// `seeds` are where [`ArrowEdit::SwapSchema`] finds other schemas.
pub fn apply(case: &mut Case, m: &ArrowMutation, seeds: &[Seed]) -> bool {
    let layout = Layout::of(case);
    if layout.streams.is_empty() {
        return false;
    }
    let pick = |i: usize, n: usize| i % n.max(1);
    if let ArrowEdit::GroupMarker { value } = &m.edit {
        let Some(&(frame, at)) = layout
            .markers
            .get(pick(m.stream as usize, layout.markers.len()))
        else {
            return false;
        };
        let b = &mut case.frames[frame].bytes;
        let current = i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let v = value.resolve_i32(current);
        if v == current {
            return false;
        }
        b[at..at + 4].copy_from_slice(&v.to_be_bytes());
        case.frames[frame].touched = true;
        return true;
    }
    let s = &layout.streams[pick(m.stream as usize, layout.streams.len())];
    let frame = s.frame;
    let bytes = case.frames[frame].bytes.clone();
    let Some((range, new)) = edit_stream(&bytes, s, &m.edit, seeds, &layout, case) else {
        return false;
    };
    if bytes[range.clone()] == new[..] {
        return false;
    }
    let f = &mut case.frames[frame];
    f.bytes.splice(range, new);
    f.touched = true;
    true
}

/// The byte range of the frame to replace, and what goes there.
fn edit_stream(
    b: &[u8],
    s: &Stream,
    edit: &ArrowEdit,
    seeds: &[Seed],
    layout: &Layout,
    case: &Case,
) -> Option<(Range<usize>, Vec<u8>)> {
    let pick = |i: u8, n: usize| -> Option<usize> { (n > 0).then(|| i as usize % n) };
    let batches = s.batches();
    // The message slots of the two framing words: every message, then the end marker.
    let slots = s.messages.len() + usize::from(s.end_marker.is_some());
    // Re-build message `m` with `change` applied to its model; the body stays as it is.
    let rebuild = |m: &Message, change: &dyn Fn(&mut Model) -> Option<()>| {
        let mut model = Model::read(&b[m.meta.clone()])?;
        change(&mut model)?;
        let new = frame_message(m.continuation, &model.build(), &b[m.body.clone()]);
        Some((m.start..m.end(), new))
    };
    let batch = |i: u8| pick(i, batches.len()).map(|k| batches[k]);
    match edit {
        ArrowEdit::Continuation { msg, to } => {
            let k = pick(*msg, slots)?;
            let (start, has) = match s.messages.get(k) {
                Some(m) => (m.start, m.continuation),
                None => (s.end_marker.clone()?.start, true),
            };
            match to {
                Continuation::Removed if has => Some((start..start + 4, vec![])),
                // A message already without one: put a wrong one in front.
                Continuation::Removed => Some((start..start, 0xffff_fffeu32.to_le_bytes().into())),
                Continuation::Changed(w) if has => Some((start..start + 4, w.to_le_bytes().into())),
                Continuation::Changed(w) => Some((start..start, w.to_le_bytes().into())),
            }
        }
        ArrowEdit::MetadataLength { msg, value } => {
            let k = pick(*msg, slots)?;
            let at = match s.messages.get(k) {
                Some(m) => m.len_at(),
                None => s.end_marker.clone()?.start + 4,
            };
            let current = i32::from_le_bytes(b[at..at + 4].try_into().ok()?);
            let v = value.resolve_i32(current);
            Some((at..at + 4, v.to_le_bytes().into()))
        }
        ArrowEdit::HeaderType { msg, to } => {
            let m = &s.messages[pick(*msg, s.messages.len())?];
            // 0-5 are the union's members (NONE, Schema, DictionaryBatch, RecordBatch, Tensor,
            // SparseTensor); 6 and 7 are past its end.
            let mut t = MessageHeader(to % 8);
            if t == m.header {
                t = MessageHeader((t.0 + 1) % 8);
            }
            rebuild(m, &|model| {
                model.header_type = t;
                Some(())
            })
        }
        ArrowEdit::BodyLength { msg, value } => {
            let m = &s.messages[pick(*msg, s.messages.len())?];
            rebuild(m, &|model| {
                model.body_length = value.resolve(model.body_length);
                Some(())
            })
        }
        ArrowEdit::BatchLength { batch: i, value } => rebuild(batch(*i)?, &|model| {
            let bt = model.batch_mut()?;
            bt.length = value.resolve(bt.length);
            Some(())
        }),
        ArrowEdit::NodeLength {
            batch: i,
            node,
            value,
        }
        | ArrowEdit::NullCount {
            batch: i,
            node,
            value,
        } => {
            let lengths = matches!(edit, ArrowEdit::NodeLength { .. });
            rebuild(batch(*i)?, &|model| {
                let bt = model.batch_mut()?;
                let k = pick(*node, bt.nodes.len())?;
                let n = &mut bt.nodes[k];
                if lengths {
                    *n = FieldNode::new(value.resolve(n.length()), n.null_count());
                } else {
                    *n = FieldNode::new(n.length(), value.resolve(n.null_count()));
                }
                Some(())
            })
        }
        ArrowEdit::BufferOffset {
            batch: i,
            buffer,
            value,
        }
        | ArrowEdit::BufferLength {
            batch: i,
            buffer,
            value,
        } => {
            let offsets = matches!(edit, ArrowEdit::BufferOffset { .. });
            rebuild(batch(*i)?, &|model| {
                let bt = model.batch_mut()?;
                let k = pick(*buffer, bt.buffers.len())?;
                let x = &mut bt.buffers[k];
                if offsets {
                    *x = Buffer::new(value.resolve(x.offset()), x.length());
                } else {
                    *x = Buffer::new(x.offset(), value.resolve(x.length()));
                }
                Some(())
            })
        }
        ArrowEdit::Compression { batch: i, codec } => {
            let codec = [
                CompressionType::LZ4_FRAME,
                CompressionType::ZSTD,
                CompressionType(2),
                CompressionType(-1),
            ][*codec as usize % 4];
            rebuild(batch(*i)?, &|model| {
                let bt = model.batch_mut()?;
                bt.compression = Some((codec, BodyCompressionMethod::BUFFER));
                Some(())
            })
        }
        ArrowEdit::DictionaryId { field, id } => {
            let dict = s
                .messages
                .iter()
                .find(|m| m.header == MessageHeader::DictionaryBatch);
            if let Some(m) = dict {
                return rebuild(m, &|model| match &mut model.header {
                    Header::Dictionary { id: old, .. } => {
                        *old = old.wrapping_add(1 + *id as i64);
                        Some(())
                    }
                    _ => None,
                });
            }
            rebuild(s.schema()?, &|model| {
                model.first_dict_id = *id;
                edit_field(model.schema_mut()?, *field, |f| {
                    let dt = f.data_type().clone();
                    if matches!(dt, DataType::Dictionary(..)) {
                        return None;
                    }
                    Some(f.clone().with_data_type(DataType::Dictionary(
                        Box::new(DataType::Int32),
                        Box::new(dt),
                    )))
                })
            })
        }
        ArrowEdit::FieldType { field, to } => rebuild(s.schema()?, &|model| {
            edit_field(model.schema_mut()?, *field, |f| {
                let mut t = type_choice(*to);
                if &t == f.data_type() {
                    t = type_choice(to.wrapping_add(1));
                }
                Some(f.clone().with_data_type(t))
            })
        }),
        ArrowEdit::Nesting { field, how } => rebuild(s.schema()?, &|model| {
            edit_field(model.schema_mut()?, *field, |f| {
                Some(f.clone().with_data_type(nest(f, *how)?))
            })
        }),
        ArrowEdit::CustomMetadata {
            msg,
            target,
            entry,
            long,
        } => {
            let (key, mut value) = metadata_entry(*entry);
            if *long {
                value.push_str(&" ".repeat(4096));
            }
            match target {
                MetadataTarget::Message => {
                    let m = &s.messages[pick(*msg, s.messages.len())?];
                    rebuild(m, &|model| {
                        model.custom_metadata.push((key.into(), value.clone()));
                        Some(())
                    })
                }
                MetadataTarget::Schema => rebuild(s.schema()?, &|model| {
                    model.schema_mut()?.metadata.insert(key, value.clone());
                    Some(())
                }),
                MetadataTarget::Field(i) => rebuild(s.schema()?, &|model| {
                    edit_field(model.schema_mut()?, *i, |f| {
                        let mut f = f.clone();
                        f.metadata_mut().insert(key, value.clone());
                        Some(f)
                    })
                }),
            }
        }
        ArrowEdit::BodyBytes {
            batch: i,
            buffer,
            op,
        } => {
            let m = batch(*i)?;
            let model = Model::read(&b[m.meta.clone()])?;
            let bt = match &model.header {
                Header::Batch(bt) => bt,
                Header::Dictionary { data, .. } => data.as_ref()?,
                _ => return None,
            };
            // The buffers that have bytes inside this body.
            let spans: Vec<Range<usize>> = bt
                .buffers
                .iter()
                .filter_map(|x| {
                    let start = usize::try_from(x.offset()).ok()?;
                    let len = usize::try_from(x.length()).ok()?;
                    let end = start.checked_add(len)?.min(m.body.len());
                    (start < end).then(|| m.body.start + start..m.body.start + end)
                })
                .collect();
            let r = spans.get(pick(*buffer, spans.len())?)?.clone();
            let mut bytes = b[r.clone()].to_vec();
            let n = bytes.len();
            match op {
                BodyOp::Flip { at, bit } => bytes[*at as usize % n] ^= 1 << (bit % 8),
                BodyOp::Set { at, value } => bytes[*at as usize % n] = *value,
                BodyOp::Fill(v) => bytes.fill(*v),
            }
            Some((r, bytes))
        }
        ArrowEdit::DropBatch { batch: i } => {
            let m = batch(*i)?;
            Some((m.start..m.end(), vec![]))
        }
        ArrowEdit::DuplicateBatch { batch: i } => {
            let m = batch(*i)?;
            Some((m.end()..m.end(), b[m.start..m.end()].to_vec()))
        }
        ArrowEdit::SwapBatches { a, b: bb } => {
            let (x, y) = (pick(*a, batches.len())?, pick(*bb, batches.len())?);
            let y = if x == y { (x + 1) % batches.len() } else { y };
            let (x, y) = (x.min(y), x.max(y));
            if x == y {
                return None;
            }
            let (mx, my) = (batches[x], batches[y]);
            // Messages are back to back: rejoin [x, between, y] as [y, between, x].
            let mut out = b[my.start..my.end()].to_vec();
            out.extend_from_slice(&b[mx.end()..my.start]);
            out.extend_from_slice(&b[mx.start..mx.end()]);
            Some((mx.start..my.end(), out))
        }
        ArrowEdit::SwapSchema { from } => {
            let mine = s.schema()?;
            let current = &b[mine.start..mine.end()];
            let mut others: Vec<Vec<u8>> = vec![];
            let mut add = |case: &Case, layout: &Layout| {
                for o in &layout.streams {
                    if let Some(m) = o.schema() {
                        let bytes = &case.frames[o.frame].bytes[m.start..m.end()];
                        if bytes != current && !others.iter().any(|x| x == bytes) {
                            others.push(bytes.to_vec());
                        }
                    }
                }
            };
            add(case, layout);
            for seed in seeds {
                add(&seed.case, &Layout::of(&seed.case));
            }
            let other = others.get(*from as usize % others.len().max(1))?;
            Some((mine.start..mine.end(), other.clone()))
        }
        ArrowEdit::GroupMarker { .. } => None,
    }
}

/// Replace top-level field `i` of `schema` with what `change` makes of it.
fn edit_field(
    schema: &mut Schema,
    i: u8,
    change: impl FnOnce(&Field) -> Option<Field>,
) -> Option<()> {
    let n = schema.fields().len();
    if n == 0 {
        return None;
    }
    let k = i as usize % n;
    let mut fields: Vec<Field> = schema.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields[k] = change(&fields[k])?;
    schema.fields = Fields::from(fields);
    Some(())
}

/// Types worth putting where another was: every physical layout the IPC reader knows.
fn type_choice(i: u8) -> DataType {
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    let types = [
        DataType::Null,
        DataType::Boolean,
        DataType::Int8,
        DataType::Int32,
        DataType::Int64,
        DataType::UInt64,
        DataType::Float16,
        DataType::Float32,
        DataType::Float64,
        DataType::Utf8,
        DataType::LargeUtf8,
        DataType::Binary,
        DataType::LargeBinary,
        DataType::FixedSizeBinary(3),
        DataType::Date32,
        DataType::Date64,
        DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
        DataType::Timestamp(TimeUnit::Nanosecond, None),
        DataType::Time64(TimeUnit::Nanosecond),
        DataType::Duration(TimeUnit::Microsecond),
        DataType::Interval(IntervalUnit::MonthDayNano),
        DataType::Decimal128(38, 18),
        DataType::Decimal256(76, 10),
        DataType::List(item(DataType::Int64)),
        DataType::LargeList(item(DataType::Utf8)),
        DataType::FixedSizeList(item(DataType::Float64), 2),
        DataType::Struct(Fields::empty()),
        DataType::Struct(Fields::from(vec![Field::new("a", DataType::Int64, true)])),
        DataType::Map(
            Arc::new(Field::new_struct(
                "entries",
                vec![
                    Field::new("key", DataType::Utf8, false),
                    Field::new("value", DataType::Int64, true),
                ],
                false,
            )),
            false,
        ),
        DataType::Utf8View,
        DataType::BinaryView,
        DataType::RunEndEncoded(
            Arc::new(Field::new("run_ends", DataType::Int32, false)),
            Arc::new(Field::new("values", DataType::Float64, true)),
        ),
    ];
    types[i as usize % types.len()].clone()
}

/// `f`'s type re-nested; None when the change does not apply to it.
fn nest(f: &Field, how: Nest) -> Option<DataType> {
    let dt = f.data_type().clone();
    let item = |t: DataType| Arc::new(Field::new_list_field(t, true));
    Some(match how {
        Nest::WrapList { kind } => match kind % 3 {
            0 => DataType::List(item(dt)),
            1 => DataType::LargeList(item(dt)),
            _ => DataType::FixedSizeList(item(dt), 2),
        },
        Nest::WrapStruct => DataType::Struct(Fields::from(vec![f.clone()])),
        Nest::Unwrap => match dt {
            DataType::List(c)
            | DataType::LargeList(c)
            | DataType::FixedSizeList(c, _)
            | DataType::Map(c, _) => c.data_type().clone(),
            DataType::Struct(fields) => fields
                .first()
                .map(|c| c.data_type().clone())
                .unwrap_or(DataType::Null),
            _ => return None,
        },
        Nest::AddChild { ty } => {
            let extra = Field::new("fakejvm_extra", type_choice(ty), true);
            match dt {
                DataType::Struct(fields) => {
                    let mut v: Vec<Field> = fields.iter().map(|c| c.as_ref().clone()).collect();
                    v.push(extra);
                    DataType::Struct(Fields::from(v))
                }
                _ => DataType::Struct(Fields::from(vec![f.clone(), extra])),
            }
        }
        Nest::DropChild => match dt {
            DataType::Struct(fields) if !fields.is_empty() => {
                let v: Vec<Field> = fields.iter().map(|c| c.as_ref().clone()).collect();
                DataType::Struct(Fields::from(v[..v.len() - 1].to_vec()))
            }
            _ => return None,
        },
        Nest::Deep { depth } => {
            let mut t = dt;
            for _ in 0..=(depth % 64) {
                t = DataType::List(item(t));
            }
            t
        }
    })
}

/// Keys readers act on: pandas' metadata (read by `to_pandas`), extension type names and their
/// parameters (pyarrow's registered extension types, an unknown one), and plain junk.
fn metadata_entry(i: u8) -> (&'static str, String) {
    const ENTRIES: [(&str, &str); 12] = [
        ("pandas", "{"),
        ("pandas", "{}"),
        (
            "pandas",
            r#"{"index_columns":[{"kind":"range","name":null,"start":0,"stop":1000000000000,"step":0}],"columns":[],"pandas_version":"2.0.0"}"#,
        ),
        (
            "pandas",
            r#"{"index_columns":["__index_level_0__"],"columns":[{"name":"_0","field_name":"_0","pandas_type":"categorical","numpy_type":"int8","metadata":{"num_categories":-1,"ordered":false}}],"pandas_version":"2.0.0"}"#,
        ),
        ("ARROW:extension:name", "arrow.uuid"),
        ("ARROW:extension:name", "arrow.json"),
        ("ARROW:extension:name", "arrow.fixed_shape_tensor"),
        ("ARROW:extension:name", "arrow.bool8"),
        ("ARROW:extension:name", "fakejvm.unknown"),
        ("ARROW:extension:metadata", r#"{"shape":[-1,0]}"#),
        ("", ""),
        ("spark", "\u{0}\u{ff}"),
    ];
    let (k, v) = ENTRIES[i as usize % ENTRIES.len()];
    (k, v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::arrow::{data_section, positional_batch, Group};
    use crate::protocol::{DataItem, Dialect, InputFraming, TaskRequest};
    use arrow_array::{ArrayRef, Float64Array, StringArray};

    /// A case whose data section is real Arrow written by payload/arrow.rs: two columns (double
    /// with a null, string), `batches` batches, in `framing`.
    fn arrow_case(framing: InputFraming, groups: usize) -> Case {
        let batch = |k: usize| {
            let d: ArrayRef = Arc::new(Float64Array::from(vec![Some(k as f64), None, Some(2.5)]));
            let s: ArrayRef = Arc::new(StringArray::from(vec![Some("a"), Some("bé"), None]));
            positional_batch(vec![d, s]).unwrap()
        };
        let schema = batch(0).schema();
        let gs: Vec<Group> = (0..groups).map(|k| Group::of(vec![batch(k)])).collect();
        let gs = if matches!(framing, InputFraming::Cogrouped) {
            gs.into_iter()
                .map(|g| Group {
                    right: g.left.clone(),
                    left: g.left,
                })
                .collect()
        } else {
            gs
        };
        let data = data_section(framing, &schema, None, &gs).unwrap();
        let mut req = TaskRequest::non_udf("3.11", vec![0x80, 5, b'N', b'.'], data);
        req.end_of_data = false;
        Case::from_encoded(Some(0), &Dialect::A.encode_request(&req))
    }

    fn seed_of(case: Case) -> Seed {
        Seed {
            name: "t".into(),
            request: None,
            case,
            round_trip: None,
        }
    }

    /// One of each kind, with indexes that land on something in [`arrow_case`].
    fn every_kind() -> Vec<ArrowEdit> {
        use ArrowEdit::*;
        vec![
            Continuation {
                msg: 1,
                to: super::Continuation::Removed,
            },
            MetadataLength {
                msg: 0,
                value: Wide::Delta(8),
            },
            HeaderType { msg: 1, to: 1 },
            BodyLength {
                msg: 1,
                value: Wide::Double,
            },
            BatchLength {
                batch: 0,
                value: Wide::Big,
            },
            NodeLength {
                batch: 0,
                node: 1,
                value: Wide::Delta(5),
            },
            NullCount {
                batch: 0,
                node: 0,
                value: Wide::Max,
            },
            BufferOffset {
                batch: 0,
                buffer: 1,
                value: Wide::Delta(-8),
            },
            BufferLength {
                batch: 0,
                buffer: 3,
                value: Wide::Double,
            },
            Compression { batch: 0, codec: 1 },
            DictionaryId { field: 1, id: 7 },
            FieldType { field: 0, to: 9 },
            Nesting {
                field: 1,
                how: Nest::WrapList { kind: 0 },
            },
            CustomMetadata {
                msg: 0,
                target: MetadataTarget::Schema,
                entry: 2,
                long: false,
            },
            BodyBytes {
                batch: 0,
                buffer: 4,
                op: BodyOp::Fill(0xff),
            },
            DropBatch { batch: 1 },
            DuplicateBatch { batch: 0 },
            SwapBatches { a: 0, b: 1 },
            GroupMarker {
                value: Wide::MinusOne,
            },
            SwapSchema { from: 0 },
        ]
    }

    /// A case of another schema, for SwapSchema.
    fn other_seed() -> Seed {
        let a: ArrayRef = Arc::new(arrow_array::Int64Array::from(vec![1, 2]));
        let batch = positional_batch(vec![a]).unwrap();
        let data = data_section(
            InputFraming::Stream,
            &batch.schema(),
            None,
            &[Group::of(vec![batch])],
        )
        .unwrap();
        let mut req = TaskRequest::non_udf("3.11", vec![], data);
        req.end_of_data = false;
        seed_of(Case::from_encoded(
            Some(1),
            &Dialect::A.encode_request(&req),
        ))
    }

    #[test]
    fn streams_are_found_in_every_framing() {
        for (framing, streams, markers) in [
            (InputFraming::Stream, 1, 0),
            (InputFraming::Grouped, 2, 3),
            (InputFraming::Cogrouped, 4, 3),
        ] {
            let case = arrow_case(framing, 2);
            let l = Layout::of(&case);
            assert_eq!(l.streams.len(), streams, "{framing:?}");
            assert_eq!(l.markers.len(), markers, "{framing:?}");
            for s in &l.streams {
                assert!(s.end_marker.is_some());
                assert_eq!(s.messages[0].header, MessageHeader::Schema);
            }
            assert_eq!(input_columns(&case), Some(2));
        }
        // Stream framing, two batches in one stream.
        let l = Layout::of(&arrow_case(InputFraming::Stream, 2));
        assert_eq!(l.streams[0].batches().len(), 2);
        // An RDD case has none.
        let req = TaskRequest::non_udf("3.11", vec![1], vec![DataItem::Frame(b"abc".to_vec())]);
        let rdd = Case::from_encoded(Some(0), &Dialect::A.encode_request(&req));
        assert!(!has_arrow(&rdd));
    }

    #[test]
    fn every_kind_applies_to_a_real_stream_and_changes_it() {
        let seeds = [other_seed()];
        for edit in every_kind() {
            // The markers exist in the 4.1+ grouped framing only.
            let framing = if matches!(edit, ArrowEdit::GroupMarker { .. }) {
                InputFraming::Grouped
            } else {
                InputFraming::Stream
            };
            let before = arrow_case(framing, 2);
            let mut case = before.clone();
            let m = ArrowMutation {
                stream: 0,
                edit: edit.clone(),
            };
            assert!(apply(&mut case, &m, &seeds), "{edit:?} did not apply");
            assert_ne!(case.to_bytes(), before.to_bytes(), "{edit:?}");
            assert!(case.frames.iter().any(|f| f.touched), "{edit:?}");
        }
    }

    /// The kinds that re-build a flatbuffer leave one that parses, holding the changed value.
    #[test]
    fn rebuilt_messages_still_parse_as_flatbuffers() {
        let seeds = [other_seed()];
        for edit in every_kind() {
            let rebuilt = matches!(
                edit,
                ArrowEdit::BodyLength { .. }
                    | ArrowEdit::BatchLength { .. }
                    | ArrowEdit::NodeLength { .. }
                    | ArrowEdit::NullCount { .. }
                    | ArrowEdit::BufferOffset { .. }
                    | ArrowEdit::BufferLength { .. }
                    | ArrowEdit::Compression { .. }
                    | ArrowEdit::DictionaryId { .. }
                    | ArrowEdit::FieldType { .. }
                    | ArrowEdit::Nesting { .. }
                    | ArrowEdit::CustomMetadata { .. }
            );
            if !rebuilt {
                continue;
            }
            let mut case = arrow_case(InputFraming::Stream, 2);
            let m = ArrowMutation {
                stream: 0,
                edit: edit.clone(),
            };
            assert!(apply(&mut case, &m, &seeds), "{edit:?}");
            // Unless the body length changed, the walk finds every message again.
            let l = Layout::of(&case);
            let s = &l.streams[0];
            let b = &case.frames[s.frame].bytes;
            for msg in &s.messages {
                assert!(
                    arrow_ipc::root_as_message(&b[msg.meta.clone()]).is_ok(),
                    "{edit:?}"
                );
                assert_eq!((msg.meta.start) % 8, 0, "{edit:?}: metadata not 8-aligned");
            }
            if !matches!(edit, ArrowEdit::BodyLength { .. }) {
                assert_eq!(s.messages.len(), 3, "{edit:?}");
                assert!(s.end_marker.is_some(), "{edit:?}");
            }
        }
    }

    /// A changed header type is a well-built flatbuffer whose union says one table and holds
    /// another: the verifier may refuse it (that is the point), the raw read shows the new type.
    #[test]
    fn a_changed_header_type_is_read_as_the_new_type() {
        let before = arrow_case(InputFraming::Stream, 1);
        let s = Layout::of(&before).streams[0].clone();
        let at = s.messages[1].start;
        let mut case = before.clone();
        let m = ArrowMutation {
            stream: 0,
            edit: ArrowEdit::HeaderType { msg: 1, to: 1 },
        };
        assert!(apply(&mut case, &m, &[]));
        let b = &case.frames[s.frame].bytes;
        let len = i32::from_le_bytes(b[at + 4..at + 8].try_into().unwrap()) as usize;
        // SAFETY: the bytes are a flatbuffer the builder finished; only the union tag lies, and
        // only the tag is read.
        let msg = unsafe { arrow_ipc::root_as_message_unchecked(&b[at + 8..at + 8 + len]) };
        assert_eq!(msg.header_type(), MessageHeader::Schema);
        assert_eq!(msg.bodyLength(), (s.messages[1].body.len()) as i64);
    }

    #[test]
    fn a_changed_value_is_the_one_read_back() {
        let mut case = arrow_case(InputFraming::Stream, 1);
        let m = ArrowMutation {
            stream: 0,
            edit: ArrowEdit::NodeLength {
                batch: 0,
                node: 1,
                value: Wide::Any(99),
            },
        };
        assert!(apply(&mut case, &m, &[]));
        let l = Layout::of(&case);
        let s = &l.streams[0];
        let meta = &case.frames[s.frame].bytes[s.batches()[0].meta.clone()];
        let msg = arrow_ipc::root_as_message(meta).unwrap();
        let rb = msg.header_as_record_batch().unwrap();
        let nodes: Vec<(i64, i64)> = rb
            .nodes()
            .unwrap()
            .iter()
            .map(|n| (n.length(), n.null_count()))
            .collect();
        assert_eq!(nodes, vec![(3, 1), (99, 1)]);
        assert_eq!(rb.length(), 3);

        // A field type change reads back as that type.
        let mut case = arrow_case(InputFraming::Stream, 1);
        let m = ArrowMutation {
            stream: 0,
            edit: ArrowEdit::FieldType { field: 0, to: 9 },
        };
        assert!(apply(&mut case, &m, &[]));
        let l = Layout::of(&case);
        let s = &l.streams[0];
        let meta = &case.frames[s.frame].bytes[s.messages[0].meta.clone()];
        let msg = arrow_ipc::root_as_message(meta).unwrap();
        let schema = arrow_ipc::convert::try_fb_to_schema(msg.header_as_schema().unwrap()).unwrap();
        assert_eq!(schema.field(0).data_type(), &DataType::Utf8);
        assert_eq!(schema.field(1).data_type(), &DataType::Utf8);
    }

    #[test]
    fn batch_order_edits_keep_a_stream_arrow_rs_reads() {
        let before = arrow_case(InputFraming::Stream, 2);
        let rows = |c: &Case| {
            let l = Layout::of(c);
            let s = &l.streams[0];
            let b = &c.frames[s.frame].bytes[s.range()];
            crate::arrow::decode_stream(b).unwrap().rows()
        };
        let mut swapped = before.clone();
        let m = ArrowMutation {
            stream: 0,
            edit: ArrowEdit::SwapBatches { a: 0, b: 1 },
        };
        assert!(apply(&mut swapped, &m, &[]));
        let (r0, r1) = (rows(&before), rows(&swapped));
        assert_eq!(r0.len(), r1.len());
        assert_eq!(r0[..3], r1[3..]);
        let mut dup = before.clone();
        let m = ArrowMutation {
            stream: 0,
            edit: ArrowEdit::DuplicateBatch { batch: 1 },
        };
        assert!(apply(&mut dup, &m, &[]));
        assert_eq!(rows(&dup).len(), 9);
    }

    #[test]
    fn arbitrary_mutations_never_panic() {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        let seeds = [
            other_seed(),
            seed_of(arrow_case(InputFraming::Cogrouped, 2)),
        ];
        for framing in [
            InputFraming::Stream,
            InputFraming::Grouped,
            InputFraming::Cogrouped,
        ] {
            for _ in 0..400 {
                let mut case = arrow_case(framing, 2);
                for _ in 0..6 {
                    let mut raw = [0u8; 64];
                    rng.fill(&mut raw[..]);
                    let mut u = arbitrary::Unstructured::new(&raw);
                    if let Ok(m) = ArrowMutation::arbitrary(&mut u) {
                        apply(&mut case, &m, &seeds);
                    }
                }
            }
        }
    }
}
