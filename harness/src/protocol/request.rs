//! The task request, JVM -> worker: one layout, with the dialect deciding the few differences.
//!
//! Order (see ../shared/PROTOCOL-BY-VERSION.md §1): split index, python version, task context
//! (flat in A/B, JSON in C/D), files dir and includes, broadcasts, eval type, conf maps (C/D),
//! command, data frames, -1, final int. In D everything up to the command is one init message.

use super::*;
use crate::wire::{
    self, complete, ContextProblem, Limits, Reader, SlotLen, SpecialLength, Status, WireError,
    WireErrorKind,
};
use bytes::{Buf, BytesMut};
use serde_json::json;

/// Which part of an encoded request a byte range holds; faults and the fuzzer place themselves
/// by these spans, not by hand-picked byte offsets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SpanKind {
    /// Everything before the command (in D: inside the init message).
    Header,
    /// D only: the -8 marker and the init message length.
    InitPrefix,
    Command,
    /// The k-th item of the data section (0-based).
    Data(usize),
    EndOfData,
    FinalMarker,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Span {
    pub kind: SpanKind,
    pub start: usize,
    pub end: usize,
}

/// Request bytes plus the map of what each range is.
#[derive(Clone, Debug, Default)]
pub struct EncodedRequest {
    pub bytes: Vec<u8>,
    pub spans: Vec<Span>,
}

impl EncodedRequest {
    pub fn span(&self, kind: SpanKind) -> Option<Span> {
        self.spans.iter().copied().find(|s| s.kind == kind)
    }
}

impl Dialect {
    /// Encode one task request that fakejvm built itself (seeds, goldens, fuzz cases, scenario
    /// requests once their file was checked with [`Dialect::try_encode_request`]).
    ///
    /// Panics on a frame past [`Limits::DEFAULT`]: none of those sources can hold one.
    pub fn encode_request(self, req: &TaskRequest) -> EncodedRequest {
        self.try_encode_request(req, Limits::DEFAULT)
            .unwrap_or_else(|e| panic!("a request fakejvm built does not encode: {e}"))
    }

    /// Encode one task request; a frame or string past `limits` is refused (with its offset in
    /// the request) instead of being sent.
    pub(crate) fn try_encode_request(
        self,
        req: &TaskRequest,
        limits: Limits,
    ) -> Result<EncodedRequest, WireError> {
        let mut out = EncodedRequest::default();
        let mut buf = BytesMut::new();
        let mark = |buf: &BytesMut, kind: SpanKind, start: usize, spans: &mut Vec<Span>| {
            spans.push(Span {
                kind,
                start,
                end: buf.len(),
            });
        };

        // The header (and in D the command) is built on its own so D can wrap it.
        let mut head = BytesMut::new();
        self.encode_header(req, &mut head, limits)?;
        let header_len = head.len();
        self.encode_command(req, &mut head, limits)?;

        if self.wraps_init_message() {
            wire::put_special(&mut buf, SpecialLength::StartOfInitMessage);
            if head.len() > limits.max_frame_len {
                return Err(WireError {
                    at_byte: 4,
                    kind: WireErrorKind::TooLong {
                        what: "init message",
                        len: head.len() as i64,
                        max: limits.max_frame_len,
                    },
                });
            }
            wire::put_int(&mut buf, head.len() as i32);
            mark(&buf, SpanKind::InitPrefix, 0, &mut out.spans);
        }
        let start = buf.len();
        buf.extend_from_slice(&head[..header_len]);
        mark(&buf, SpanKind::Header, start, &mut out.spans);
        let start = buf.len();
        buf.extend_from_slice(&head[header_len..]);
        mark(&buf, SpanKind::Command, start, &mut out.spans);

        if req.split_index != -1 {
            for (k, item) in req.data.iter().enumerate() {
                let start = buf.len();
                match item {
                    DataItem::Frame(b) => wire::put_frame(&mut buf, b, limits)?,
                    DataItem::Null => wire::put_special(&mut buf, SpecialLength::Null),
                    DataItem::Raw(b) => buf.extend_from_slice(b),
                }
                mark(&buf, SpanKind::Data(k), start, &mut out.spans);
            }
            if req.end_of_data {
                let start = buf.len();
                wire::put_special(&mut buf, SpecialLength::EndOfDataSection);
                mark(&buf, SpanKind::EndOfData, start, &mut out.spans);
            }
            if let Some(m) = req.final_marker {
                let start = buf.len();
                wire::put_int(&mut buf, m);
                mark(&buf, SpanKind::FinalMarker, start, &mut out.spans);
            }
        }
        out.bytes = buf.to_vec();
        Ok(out)
    }

    fn encode_header(
        self,
        req: &TaskRequest,
        buf: &mut BytesMut,
        limits: Limits,
    ) -> Result<(), WireError> {
        let put_str = |buf: &mut BytesMut, s: &str| wire::put_str(buf, s, limits);
        wire::put_int(buf, req.split_index);
        if req.split_index == -1 {
            // The worker exits at once (a test hook); nothing else is read.
            return Ok(());
        }
        put_str(buf, &req.python_version)?;
        let ctx = &req.context;
        if self.json_context() {
            put_str(buf, &self.context_json(ctx).to_string())?;
        } else {
            wire::put_bool(buf, ctx.is_barrier);
            if ctx.is_barrier || self.always_sends_barrier_fields() {
                let conn = ctx.barrier.clone().unwrap_or(ConnInfo::Port {
                    port: 0,
                    secret: String::new(),
                });
                self.put_conn_info(buf, &conn, limits)?;
            }
            wire::put_int(buf, ctx.stage_id);
            wire::put_int(buf, ctx.partition_id);
            wire::put_int(buf, ctx.attempt_number);
            wire::put_long(buf, ctx.task_attempt_id);
            wire::put_int(buf, ctx.cpus);
            wire::put_int(buf, ctx.resources.len() as i32);
            for r in &ctx.resources {
                put_str(buf, &r.key)?;
                put_str(buf, &r.name)?;
                wire::put_int(buf, r.addresses.len() as i32);
                for a in &r.addresses {
                    put_str(buf, a)?;
                }
            }
            put_string_map(buf, &ctx.local_properties, limits)?;
        }
        put_str(buf, &req.spark_files_dir)?;
        wire::put_int(buf, req.includes.len() as i32);
        for i in &req.includes {
            put_str(buf, i)?;
        }
        let b = &req.broadcasts;
        wire::put_bool(buf, b.decryption_server.is_some());
        wire::put_int(buf, b.ops.len() as i32);
        if let Some(server) = &b.decryption_server {
            self.put_conn_info(buf, server, limits)?;
        }
        for op in &b.ops {
            match op {
                BroadcastOp::Add { id, path } => {
                    wire::put_long(buf, *id);
                    if b.decryption_server.is_none() {
                        put_str(buf, path.as_deref().unwrap_or(""))?;
                    }
                }
                // `-1 - id` (not `-id - 1`): the same value, and it cannot overflow for any i64.
                BroadcastOp::Remove { id } => wire::put_long(buf, -1 - id),
            }
        }
        wire::put_int(buf, req.eval_type.value());
        if self.has_conf_maps() {
            put_string_map(buf, &req.runner_conf, limits)?;
            put_string_map(buf, &req.eval_conf, limits)?;
        }
        Ok(())
    }

    fn encode_command(
        self,
        req: &TaskRequest,
        buf: &mut BytesMut,
        limits: Limits,
    ) -> Result<(), WireError> {
        match (&req.udf, req.split_index) {
            (_, -1) => Ok(()),
            (Some(udf), _) => udf.encode(req.eval_type, &req.runner_conf, buf, limits),
            (None, _) => wire::put_frame(buf, &req.command, limits),
        }
    }

    fn put_conn_info(
        self,
        buf: &mut BytesMut,
        conn: &ConnInfo,
        limits: Limits,
    ) -> Result<(), WireError> {
        match conn {
            ConnInfo::Port { port, secret } => {
                wire::put_int(buf, *port);
                wire::put_str(buf, secret, limits)
            }
            // Family A has no path form; a path there is sent as the B+ shape anyway, which is
            // exactly the cross-version mistake a scenario may want to provoke.
            ConnInfo::Path(p) => {
                wire::put_int(buf, -1);
                wire::put_str(buf, p, limits)
            }
        }
    }

    /// The 4.2+ JSON task context. 4.3 reads `connInfo`, `secret` and `cpuAmount` unconditionally
    /// (KeyError without them), so they are always present here.
    fn context_json(self, ctx: &TaskContext) -> serde_json::Value {
        let (conn, secret) = match &ctx.barrier {
            Some(ConnInfo::Port { port, secret }) => (json!(port), json!(secret)),
            Some(ConnInfo::Path(p)) => (json!(p), serde_json::Value::Null),
            None => (serde_json::Value::Null, serde_json::Value::Null),
        };
        let resources: serde_json::Map<String, serde_json::Value> = ctx
            .resources
            .iter()
            .map(|r| {
                (
                    r.key.clone(),
                    json!({"name": r.name, "addresses": r.addresses}),
                )
            })
            .collect();
        let props: serde_json::Map<String, serde_json::Value> = ctx
            .local_properties
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect();
        let mut v = json!({
            "isBarrier": ctx.is_barrier,
            "stageId": ctx.stage_id,
            "partitionId": ctx.partition_id,
            "attemptNumber": ctx.attempt_number,
            "taskAttemptId": ctx.task_attempt_id,
            "cpus": ctx.cpus,
            "resources": resources,
            "localProperties": props,
            "connInfo": conn,
            "secret": secret,
        });
        let amount = ctx
            .cpu_amount
            .clone()
            .or_else(|| (self == Dialect::D).then(|| ctx.cpus.to_string()));
        if let Some(a) = amount {
            v["cpuAmount"] = json!(a);
        }
        v
    }
}

fn put_string_map(
    buf: &mut BytesMut,
    m: &[(String, String)],
    limits: Limits,
) -> Result<(), WireError> {
    wire::put_int(buf, m.len() as i32);
    for (k, v) in m {
        wire::put_str(buf, k, limits)?;
        wire::put_str(buf, v, limits)?;
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Decoding (for `fakejvm decode`, goldens and the fuzzer's structure)

/// A request read back from bytes, with the spans of its parts (absolute offsets).
#[derive(Clone, Debug, Serialize)]
pub struct DecodedRequest {
    pub request: TaskRequest,
    /// C/D: the task context JSON exactly as sent.
    pub context_json: Option<String>,
    pub spans: Vec<Span>,
}

impl DecodedRequest {
    /// Stream offsets of the whole request: [start, end).
    pub fn range(&self) -> (usize, usize) {
        let start = self.spans.iter().map(|s| s.start).min().unwrap_or(0);
        let end = self.spans.iter().map(|s| s.end).max().unwrap_or(0);
        (start, end)
    }
}

/// Decode a stream of one or more requests (several when a worker is reused). Returns the
/// requests that decoded and, if the stream does not end on a request boundary, the error
/// (with its offset) that stopped it: a violation, or `Truncated` for a stream cut short.
pub fn decode_requests(dialect: Dialect, bytes: &[u8]) -> (Vec<DecodedRequest>, Option<WireError>) {
    decode_requests_as(UdfLayout::default_for(dialect), bytes)
}

/// `decode_requests` for one pyspark line: UDF command sections differ within a family (3.5 and
/// 4.0 are both family A).
pub fn decode_requests_as(
    layout: UdfLayout,
    bytes: &[u8],
) -> (Vec<DecodedRequest>, Option<WireError>) {
    decode_requests_in(RequestDecoder::new_as(layout), bytes, Limits::DEFAULT)
}

pub fn decode_requests_with(
    dialect: Dialect,
    bytes: &[u8],
    limits: Limits,
) -> (Vec<DecodedRequest>, Option<WireError>) {
    decode_requests_in(RequestDecoder::new(dialect), bytes, limits)
}

fn decode_requests_in(
    d: RequestDecoder,
    bytes: &[u8],
    limits: Limits,
) -> (Vec<DecodedRequest>, Option<WireError>) {
    let mut d = d.with_limits(limits);
    d.feed(bytes);
    d.whole = true;
    let mut out = vec![];
    loop {
        match d.next_request() {
            Ok(Status::Complete(r)) => out.push(r),
            Ok(Status::Partial) => return (out, (!d.at_request_boundary()).then(|| d.eof_error())),
            Err(e) => return (out, Some(e)),
        }
    }
}

/// Where the request decoder is between calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum DecodeState {
    /// Everything up to and including the command: decoded as one item (in D it is one init
    /// message anyway; in A-C it is small next to the data).
    Head,
    /// The next int is a data frame's length, or a marker.
    DataHead,
    /// A data frame of this many bytes.
    DataBody(usize),
    /// Only looking at headers: `left` bytes of the data frame at `start` are dropped as they come.
    Skip {
        left: usize,
        start: u64,
    },
    /// Arrow kinds: the raw IPC streams (and group markers) of the data section, decoded as one
    /// item once all of it is buffered; no -1 follows.
    ArrowData(InputFraming),
    Final,
}

/// The request side's incremental decoder, built like [`super::ReplyDecoder`]: bytes are fed as
/// they arrive, `next_request` answers `Partial` until a whole request is there, and the bytes
/// of decoded items are dropped. Spans are absolute stream offsets.
pub struct RequestDecoder {
    dialect: Dialect,
    /// UDF command sections differ within a family (3.5 and 4.0 are both A).
    layout: UdfLayout,
    limits: Limits,
    keep_data: bool,
    buf: BytesMut,
    /// Absolute offset of `buf[0]`.
    base: u64,
    state: DecodeState,
    current: Option<DecodedRequest>,
    /// Data items of the current request so far (kept or not).
    items: usize,
    /// The whole stream was fed at once (`decode_requests`).
    whole: bool,
}

impl RequestDecoder {
    pub fn new(dialect: Dialect) -> Self {
        RequestDecoder::new_as(UdfLayout::default_for(dialect))
    }

    /// The decoder for one pyspark line.
    pub fn new_as(layout: UdfLayout) -> Self {
        RequestDecoder {
            dialect: layout.dialect(),
            layout,
            limits: Limits::DEFAULT,
            keep_data: true,
            buf: BytesMut::new(),
            base: 0,
            state: DecodeState::Head,
            current: None,
            items: 0,
            whole: false,
        }
    }

    /// Start counting at this absolute offset (e.g. after the handshake).
    pub fn with_base(mut self, base: u64) -> Self {
        self.base = base;
        self
    }

    pub fn with_limits(mut self, limits: Limits) -> Self {
        self.limits = limits;
        self
    }

    /// Decode headers and spans but drop data frames as they come, so memory stays bounded by
    /// the largest header, not by the data (the recording tap only wants the broadcasts).
    pub fn headers_only(mut self) -> Self {
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

    /// True between requests: nothing of a next request has been received.
    pub(crate) fn at_request_boundary(&self) -> bool {
        self.state == DecodeState::Head && self.buf.is_empty()
    }

    pub fn next_request(&mut self) -> Result<Status<DecodedRequest>, WireError> {
        loop {
            if let Some(done) = complete!(self.step()) {
                return Ok(Status::Complete(done));
            }
        }
    }

    fn consume(&mut self, n: usize) {
        self.buf.advance(n);
        self.base += n as u64;
    }

    fn current(&mut self) -> &mut DecodedRequest {
        self.current
            .as_mut()
            .expect("a request is under way past its head")
    }

    fn span(&mut self, kind: SpanKind, start: u64) {
        let end = self.base as usize;
        self.current().spans.push(Span {
            kind,
            start: start as usize,
            end,
        });
    }

    fn step(&mut self) -> Result<Status<Option<DecodedRequest>>, WireError> {
        match self.state {
            DecodeState::Head => {
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let head = complete!(self.dialect.decode_head(self.layout, &mut r));
                let used = r.position();
                self.consume(used);
                if head.request.split_index == -1 {
                    return Ok(Status::Complete(Some(head)));
                }
                let framing = self.layout.input_framing(head.request.eval_type);
                let arrow = head.request.udf.is_some() && framing != InputFraming::Pickled;
                self.current = Some(head);
                self.items = 0;
                self.state = if arrow {
                    DecodeState::ArrowData(framing)
                } else {
                    DecodeState::DataHead
                };
                Ok(Status::Complete(None))
            }
            DecodeState::DataHead => {
                let start = self.base;
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let len = complete!(r.slot_len("data frame"));
                let next = match len {
                    SlotLen::Bytes(n) if self.keep_data => {
                        if !self.whole {
                            // Room for the frame once its length passed the limit (not for a
                            // whole stream given at once: the missing bytes will never come).
                            self.buf.reserve((4 + n).saturating_sub(self.buf.len()));
                        }
                        DecodeState::DataBody(n)
                    }
                    SlotLen::Bytes(n) => DecodeState::Skip { left: n, start },
                    SlotLen::Special(SpecialLength::Null) => DecodeState::DataHead,
                    SlotLen::Special(SpecialLength::EndOfDataSection) => DecodeState::Final,
                    SlotLen::Special(marker) => {
                        return Err(r.error(
                            start,
                            WireErrorKind::UnexpectedMarker {
                                marker,
                                place: "in the data section",
                            },
                        ))
                    }
                };
                self.consume(4);
                match len {
                    SlotLen::Special(SpecialLength::Null) => {
                        self.push_data(Some(DataItem::Null), start)
                    }
                    SlotLen::Special(_) => {
                        self.current().request.end_of_data = true;
                        self.span(SpanKind::EndOfData, start);
                    }
                    SlotLen::Bytes(_) => {}
                }
                self.state = next;
                Ok(Status::Complete(None))
            }
            DecodeState::DataBody(n) => {
                if self.buf.len() < n {
                    return Ok(Status::Partial);
                }
                let start = self.base - 4;
                let frame = self.buf.split_to(n).to_vec();
                self.base += n as u64;
                self.push_data(Some(DataItem::Frame(frame)), start);
                self.state = DecodeState::DataHead;
                Ok(Status::Complete(None))
            }
            DecodeState::Skip { left, start } => {
                let k = left.min(self.buf.len());
                if k == 0 && left > 0 {
                    return Ok(Status::Partial);
                }
                self.consume(k);
                if k < left {
                    self.state = DecodeState::Skip {
                        left: left - k,
                        start,
                    };
                } else {
                    self.push_data(None, start);
                    self.state = DecodeState::DataHead;
                }
                Ok(Status::Complete(None))
            }
            DecodeState::ArrowData(framing) => {
                let mut r = Reader::new(&self.buf)
                    .with_base(self.base)
                    .with_limits(self.limits);
                let items = complete!(crate::arrow::read_data_section(framing, &mut r));
                for item in items {
                    let start = self.base;
                    if let DataItem::Raw(b) = &item {
                        self.consume(b.len());
                    }
                    self.push_data(Some(item), start);
                }
                self.state = DecodeState::Final;
                Ok(Status::Complete(None))
            }
            DecodeState::Final => {
                let start = self.base;
                let mut r = Reader::new(&self.buf).with_base(self.base);
                let m = complete!(r.int());
                self.consume(4);
                self.current().request.final_marker = Some(m);
                self.span(SpanKind::FinalMarker, start);
                self.state = DecodeState::Head;
                Ok(Status::Complete(self.current.take()))
            }
        }
    }

    /// The k-th data item and its span; None when data is not kept.
    fn push_data(&mut self, item: Option<DataItem>, start: u64) {
        let k = self.items;
        self.items += 1;
        if let Some(item) = item.filter(|_| self.keep_data) {
            self.current().request.data.push(item);
        }
        self.span(SpanKind::Data(k), start);
    }

    /// The error for a stream that is over (EOF, or the end of a file) where the decoder stands.
    pub fn eof_error(&self) -> WireError {
        let place = match self.state {
            DecodeState::Head => "in the header or the command",
            DecodeState::DataHead | DecodeState::ArrowData(_) => "in the data section",
            DecodeState::DataBody(_) | DecodeState::Skip { .. } => "inside a data frame",
            DecodeState::Final => "before the final int",
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

impl Dialect {
    /// Everything before the data: the header and the command (in D, the init message).
    fn decode_head(
        self,
        layout: UdfLayout,
        r: &mut Reader,
    ) -> Result<Status<DecodedRequest>, WireError> {
        let mut spans = vec![];
        let mut req = TaskRequest::non_udf("", vec![], vec![]);
        req.final_marker = None;
        req.end_of_data = false;
        let mut context_json = None;

        // In D the header is its own byte window; parse it with a reader bounded to it so a
        // field that runs past the declared length is reported as such.
        let outer_base = r.offset();
        let init_window = if self.wraps_init_message() {
            let at = r.offset();
            let marker = complete!(r.int());
            if marker != SpecialLength::StartOfInitMessage.value() {
                return Err(r.error(at, WireErrorKind::NoInitMessage(marker)));
            }
            let len_at = r.offset();
            let len = complete!(r.int());
            if len < 0 || len as usize > r.limits().max_frame_len {
                return Err(r.error(len_at, WireErrorKind::InitLength(len)));
            }
            spans.push(Span {
                kind: SpanKind::InitPrefix,
                start: outer_base as usize,
                end: r.offset() as usize,
            });
            let base = r.offset();
            Some((base, complete!(r.bytes(len as usize))))
        } else {
            None
        };
        let mut inner;
        let h: &mut Reader = match init_window {
            Some((base, window)) => {
                inner = Reader::new(window).with_base(base).with_limits(r.limits());
                &mut inner
            }
            None => r,
        };
        // Inside the init window, running out of bytes is not "wait for more": the window is
        // whole, so the declared length was too short.
        macro_rules! field {
            ($e:expr) => {
                match $e? {
                    Status::Complete(v) => v,
                    Status::Partial if init_window.is_some() => {
                        return Err(h.error(
                            h.offset(),
                            WireErrorKind::Truncated {
                                place: "inside the init message",
                                pending: h.remaining(),
                            },
                        ))
                    }
                    Status::Partial => return Ok(Status::Partial),
                }
            };
        }

        let start = h.offset();
        req.split_index = field!(h.int());
        if req.split_index == -1 {
            spans.push(Span {
                kind: SpanKind::Header,
                start: start as usize,
                end: h.offset() as usize,
            });
            return Ok(Status::Complete(DecodedRequest {
                request: req,
                context_json,
                spans,
            }));
        }
        req.python_version = field!(h.string("python version"));
        if self.json_context() {
            let at = h.offset();
            let text = field!(h.string("task context JSON"));
            req.context = parse_context_json(&text)
                .map_err(|p| h.error(at, WireErrorKind::TaskContext(p)))?;
            context_json = Some(text);
        } else {
            let ctx = &mut req.context;
            ctx.is_barrier = field!(h.bool());
            if ctx.is_barrier || self.always_sends_barrier_fields() {
                let conn = field!(self.read_conn_info(h));
                if ctx.is_barrier {
                    ctx.barrier = Some(conn);
                }
            }
            ctx.stage_id = field!(h.int());
            ctx.partition_id = field!(h.int());
            ctx.attempt_number = field!(h.int());
            ctx.task_attempt_id = field!(h.long());
            ctx.cpus = field!(h.int());
            for _ in 0..field!(h.count("resource count", 12)) {
                let key = field!(h.string("resource key"));
                let name = field!(h.string("resource name"));
                let n = field!(h.count("resource address count", 4));
                let mut addresses = Vec::with_capacity(n.min(64));
                for _ in 0..n {
                    addresses.push(field!(h.string("resource address")));
                }
                ctx.resources.push(Resource {
                    key,
                    name,
                    addresses,
                });
            }
            ctx.local_properties = field!(read_string_map(h, "local property count"));
        }
        req.spark_files_dir = field!(h.string("spark files dir"));
        for _ in 0..field!(h.count("include count", 4)) {
            req.includes.push(field!(h.string("include")));
        }
        let has_server = field!(h.bool());
        let n = field!(h.count("broadcast count", 8));
        if has_server {
            req.broadcasts.decryption_server = Some(field!(self.read_conn_info(h)));
        }
        for _ in 0..n {
            let id = field!(h.long());
            if id >= 0 {
                let path = if has_server {
                    None
                } else {
                    Some(field!(h.string("broadcast path")))
                };
                req.broadcasts.ops.push(BroadcastOp::Add { id, path });
            } else {
                req.broadcasts.ops.push(BroadcastOp::Remove { id: -1 - id });
            }
        }
        req.eval_type = EvalType::from_value(field!(h.int()));
        if self.has_conf_maps() {
            req.runner_conf = field!(read_string_map(h, "runner conf count"));
            req.eval_conf = field!(read_string_map(h, "eval conf count"));
        }
        spans.push(Span {
            kind: SpanKind::Header,
            start: start as usize,
            end: h.offset() as usize,
        });
        let start = h.offset();
        if req.eval_type == EvalType::NonUdf {
            req.command = field!(h.frame("command")).to_vec();
        } else {
            let (udf, conf) = field!(UdfCommand::decode(layout, req.eval_type, h));
            req.runner_conf = conf.unwrap_or(req.runner_conf);
            req.udf = Some(udf);
        }
        spans.push(Span {
            kind: SpanKind::Command,
            start: start as usize,
            end: h.offset() as usize,
        });
        if init_window.is_some() && !h.is_empty() {
            return Err(h.error(
                h.offset(),
                WireErrorKind::InitMessageTrailing(h.remaining()),
            ));
        }
        Ok(Status::Complete(DecodedRequest {
            request: req,
            context_json,
            spans,
        }))
    }

    fn read_conn_info(self, r: &mut Reader) -> Result<Status<ConnInfo>, WireError> {
        let port = complete!(r.int());
        if port == -1 && self.conn_info_may_be_path() {
            Ok(r.string("socket path")?.map(ConnInfo::Path))
        } else {
            Ok(r.string("secret")?
                .map(|secret| ConnInfo::Port { port, secret }))
        }
    }
}

fn read_string_map(
    r: &mut Reader,
    what: &'static str,
) -> Result<Status<Vec<(String, String)>>, WireError> {
    let n = complete!(r.count(what, 8));
    let mut out = Vec::with_capacity(n.min(64));
    for _ in 0..n {
        let k = complete!(r.string("key"));
        let v = complete!(r.string("value"));
        out.push((k, v));
    }
    Ok(Status::Complete(out))
}

/// The 4.2+ task context as pyspark's worker reads it. Ints the JVM writes as Java ints must
/// fit 32 bits, and the strings must be strings: anything else cannot have come from a JVM and
/// would read differently in Python, so it is a violation, not a value to guess.
fn parse_context_json(text: &str) -> Result<TaskContext, ContextProblem> {
    use serde_json::Value;
    let v: Value =
        serde_json::from_str(text).map_err(|e| ContextProblem::NotJson(e.to_string()))?;
    let long = |k: &'static str| {
        v.get(k)
            .and_then(|x| x.as_i64())
            .ok_or(ContextProblem::MissingInt(k))
    };
    let int = |k: &'static str| -> Result<i32, ContextProblem> {
        let value = long(k)?;
        i32::try_from(value).map_err(|_| ContextProblem::IntOutOfRange {
            key: k.to_owned(),
            value,
        })
    };
    let string = |x: &Value, what: String| {
        x.as_str()
            .map(str::to_owned)
            .ok_or(ContextProblem::NotAString(what))
    };
    let barrier = match (v.get("connInfo"), v.get("secret")) {
        (Some(Value::Number(p)), s) => {
            let value = p.as_i64().ok_or_else(|| ContextProblem::IntOutOfRange {
                key: "connInfo".into(),
                value: i64::MAX,
            })?;
            let port = i32::try_from(value).map_err(|_| ContextProblem::IntOutOfRange {
                key: "connInfo".into(),
                value,
            })?;
            let secret = match s {
                None | Some(Value::Null) => String::new(),
                Some(s) => string(s, "secret".into())?,
            };
            Some(ConnInfo::Port { port, secret })
        }
        (Some(Value::String(p)), _) => Some(ConnInfo::Path(p.clone())),
        _ => None,
    };
    let mut resources = vec![];
    if let Some(obj) = v.get("resources").and_then(|r| r.as_object()) {
        for (key, info) in obj {
            let name = match info.get("name") {
                None => key.clone(),
                Some(n) => string(n, format!("resources.{key}.name"))?,
            };
            let mut addresses = vec![];
            if let Some(a) = info.get("addresses").and_then(|a| a.as_array()) {
                for (i, x) in a.iter().enumerate() {
                    addresses.push(string(x, format!("resources.{key}.addresses[{i}]"))?);
                }
            }
            resources.push(Resource {
                key: key.clone(),
                name,
                addresses,
            });
        }
    }
    let mut local_properties = vec![];
    if let Some(o) = v.get("localProperties").and_then(|p| p.as_object()) {
        for (k, x) in o {
            local_properties.push((k.clone(), string(x, format!("localProperties.{k}"))?));
        }
    }
    Ok(TaskContext {
        is_barrier: v
            .get("isBarrier")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        barrier,
        stage_id: int("stageId")?,
        partition_id: int("partitionId")?,
        attempt_number: int("attemptNumber")?,
        task_attempt_id: long("taskAttemptId")?,
        cpus: int("cpus")?,
        cpu_amount: v.get("cpuAmount").map(|a| match a {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        }),
        resources,
        local_properties,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample(dialect: Dialect) -> TaskRequest {
        let mut req = TaskRequest::non_udf(
            "3.11",
            vec![0x80, 5, 1, 2, 3],
            vec![
                DataItem::Frame(b"abc".to_vec()),
                DataItem::Null,
                DataItem::Frame(vec![]),
            ],
        );
        req.split_index = 3;
        req.context = TaskContext {
            stage_id: 7,
            partition_id: 3,
            attempt_number: 1,
            task_attempt_id: 1 << 40,
            cpus: 2,
            cpu_amount: (dialect == Dialect::D).then(|| "2".into()),
            resources: vec![Resource {
                key: "gpu".into(),
                name: "gpu".into(),
                addresses: vec!["0".into(), "1".into()],
            }],
            local_properties: vec![("a".into(), "é😀".into())],
            ..TaskContext::default()
        };
        req.includes = vec!["lib.zip".into()];
        req.broadcasts.ops = vec![
            BroadcastOp::Add {
                id: 4,
                path: Some("/tmp/b4".into()),
            },
            BroadcastOp::Remove { id: 2 },
        ];
        if dialect.has_conf_maps() {
            req.runner_conf = vec![("k".into(), "v".into())];
        }
        req
    }

    /// Arrow data sections (no -1, raw streams) through the incremental decoder: a byte at a
    /// time, with data dropped, and followed by a second request on the same stream.
    #[test]
    fn arrow_requests_decode_incrementally_on_every_layout() {
        use crate::arrow::{data_section, positional_batch, Group};
        let col = std::sync::Arc::new(arrow_array::Float64Array::from(vec![1.0, 2.0]));
        let batch = positional_batch(vec![col]).unwrap();
        let groups = [
            Group::of(vec![batch.clone()]),
            Group::of(vec![batch.clone()]),
        ];
        for layout in UdfLayout::ALL {
            for eval in [
                EvalType::SqlScalarPandasUdf,
                EvalType::SqlGroupedAggPandasUdf,
            ] {
                let cmd = UdfCommand::udfs(layout, vec![Udf::simple(&[0], vec![0x80, 5, b'.'])]);
                let mut req = cmd.place("3.11", eval, vec![]);
                req.context.cpu_amount = (layout.dialect() == Dialect::D).then(|| "1".into());
                req.data = data_section(layout.input_framing(eval), &batch.schema(), None, &groups)
                    .unwrap();
                req.end_of_data = false;
                let enc = layout.dialect().encode_request(&req);
                let mut bytes = enc.bytes.clone();
                bytes.extend_from_slice(&enc.bytes);

                let mut dec = RequestDecoder::new_as(layout);
                let mut got = vec![];
                for b in &bytes {
                    dec.feed(&[*b]);
                    while let Status::Complete(r) = dec.next_request().unwrap() {
                        got.push(r);
                    }
                }
                assert_eq!(got.len(), 2, "{layout} {eval}");
                assert!(dec.at_request_boundary());
                assert_eq!(got[0].request, req, "{layout} {eval}");
                assert_eq!(got[0].spans, enc.spans, "{layout} {eval}");
                let n = enc.bytes.len();
                assert_eq!(got[1].range(), (n, 2 * n));

                let mut dec = RequestDecoder::new_as(layout).headers_only();
                dec.feed(&bytes);
                let Status::Complete(h) = dec.next_request().unwrap() else {
                    panic!("{layout} {eval}: partial")
                };
                assert!(h.request.data.is_empty());
                assert_eq!(h.spans, enc.spans, "{layout} {eval}");

                let cut = enc
                    .spans
                    .iter()
                    .find(|s| s.kind == SpanKind::Data(0))
                    .unwrap();
                let (_, err) = decode_requests_as(layout, &enc.bytes[..cut.end - 1]);
                assert!(
                    matches!(
                        err.expect("an error").kind,
                        WireErrorKind::Truncated {
                            place: "in the data section",
                            ..
                        }
                    ),
                    "{layout} {eval}"
                );
            }
        }
    }

    #[test]
    fn every_dialect_decodes_what_it_encodes() {
        for d in Dialect::ALL {
            let req = sample(d);
            let enc = d.encode_request(&req);
            let (dec, err) = decode_requests(d, &enc.bytes);
            assert!(err.is_none(), "{err:?}");
            assert_eq!(dec.len(), 1);
            assert_eq!(dec[0].request, req, "dialect {d}");
            assert_eq!(dec[0].spans, enc.spans, "dialect {d}");
        }
    }

    #[test]
    fn families_differ_on_the_wire() {
        let bytes: Vec<Vec<u8>> = Dialect::ALL
            .iter()
            .map(|d| d.encode_request(&sample(*d)).bytes)
            .collect();
        for i in 0..4 {
            for j in i + 1..4 {
                assert_ne!(bytes[i], bytes[j]);
            }
        }
        // A sends barrier port 0 and "" for a non-barrier task; B does not.
        let a = Dialect::A.encode_request(&sample(Dialect::A)).bytes;
        let b = Dialect::B.encode_request(&sample(Dialect::A)).bytes;
        assert_eq!(a.len(), b.len() + 8);
        // D starts with -8.
        let d = Dialect::D.encode_request(&sample(Dialect::D)).bytes;
        assert_eq!(&d[..4], &(-8i32).to_be_bytes());
    }

    #[test]
    fn extreme_broadcast_ids_do_not_overflow() {
        // Found by the in-process fuzzer: a removal of i64::MIN overflowed `-id - 1`.
        let mut req = sample(Dialect::A);
        req.broadcasts.ops = vec![BroadcastOp::Remove { id: i64::MAX }];
        let enc = Dialect::A.encode_request(&req);
        let (dec, err) = decode_requests(Dialect::A, &enc.bytes);
        assert!(err.is_none());
        assert_eq!(
            dec[0].request.broadcasts.ops,
            vec![BroadcastOp::Remove { id: i64::MAX }]
        );
    }

    #[test]
    fn reused_connection_streams_hold_several_requests() {
        for d in Dialect::ALL {
            let mut bytes = d.encode_request(&sample(d)).bytes;
            bytes.extend(d.encode_request(&sample(d)).bytes);
            assert_eq!(decode_requests(d, &bytes).0.len(), 2);
        }
    }

    #[test]
    fn fed_a_byte_at_a_time_the_decoder_finds_the_same_requests() {
        for d in Dialect::ALL {
            let mut bytes = d.encode_request(&sample(d)).bytes;
            bytes.extend(d.encode_request(&sample(d)).bytes);
            let (whole, err) = decode_requests(d, &bytes);
            assert!(err.is_none(), "{err:?}");
            for keep in [true, false] {
                let mut dec = RequestDecoder::new(d);
                if !keep {
                    dec = dec.headers_only();
                }
                let mut got = vec![];
                for b in &bytes {
                    dec.feed(&[*b]);
                    while let Status::Complete(r) = dec.next_request().unwrap() {
                        got.push(r);
                    }
                }
                assert!(dec.at_request_boundary());
                assert_eq!(got.len(), 2, "dialect {d}");
                for (g, w) in got.iter().zip(&whole) {
                    assert_eq!(g.spans, w.spans, "dialect {d}");
                    assert_eq!(g.request.broadcasts, w.request.broadcasts);
                    assert_eq!(g.request.data.is_empty(), !keep);
                }
            }
        }
    }

    #[test]
    fn a_cut_stream_is_truncated_not_a_violation() {
        for d in Dialect::ALL {
            let bytes = d.encode_request(&sample(d)).bytes;
            for cut in 1..bytes.len() {
                let (reqs, err) = decode_requests(d, &bytes[..cut]);
                assert!(reqs.is_empty());
                let e = err.expect("an error");
                assert!(
                    matches!(e.kind, WireErrorKind::Truncated { .. }),
                    "dialect {d}, cut {cut}: {e}"
                );
            }
        }
    }

    fn with_context_json(d: Dialect, patch: impl Fn(&mut serde_json::Value)) -> Vec<u8> {
        let req = sample(d);
        let mut v = d.context_json(&req.context);
        patch(&mut v);
        let mut b = BytesMut::new();
        wire::put_int(&mut b, req.split_index);
        wire::put_str(&mut b, "3.11", Limits::DEFAULT).unwrap();
        wire::put_str(&mut b, &v.to_string(), Limits::DEFAULT).unwrap();
        b.to_vec()
    }

    #[test]
    fn task_context_ints_past_32_bits_and_non_strings_are_violations_at_the_json() {
        let d = Dialect::C;
        type Patch = fn(&mut serde_json::Value);
        let cases: [(&str, Patch, ContextProblem); 3] = [
            (
                "stageId",
                |v| v["stageId"] = json!(1i64 << 33),
                ContextProblem::IntOutOfRange {
                    key: "stageId".into(),
                    value: 1 << 33,
                },
            ),
            (
                "property",
                |v| v["localProperties"]["a"] = json!(5),
                ContextProblem::NotAString("localProperties.a".into()),
            ),
            (
                "address",
                |v| v["resources"]["gpu"]["addresses"] = json!(["0", null]),
                ContextProblem::NotAString("resources.gpu.addresses[1]".into()),
            ),
        ];
        for (name, patch, want) in cases {
            let bytes = with_context_json(d, patch);
            let (_, err) = decode_requests(d, &bytes);
            let e = err.expect(name);
            // split index (4) + "3.11" (8): the JSON string starts at byte 12.
            assert_eq!(e.at_byte, 12, "{name}: {e}");
            assert_eq!(e.kind, WireErrorKind::TaskContext(want), "{name}");
        }
    }

    proptest! {
        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
            for d in Dialect::ALL {
                let _ = decode_requests(d, &bytes);
            }
        }

        #[test]
        fn decoding_mutated_requests_never_panics(idx in any::<prop::sample::Index>(), byte in any::<u8>(), cut in any::<prop::sample::Index>()) {
            for d in Dialect::ALL {
                let mut bytes = d.encode_request(&sample(d)).bytes;
                let i = idx.index(bytes.len());
                bytes[i] = byte;
                let c = cut.index(bytes.len() + 1);
                let _ = decode_requests(d, &bytes[..c]);
            }
        }
    }
}
