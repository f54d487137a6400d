//! The task request, JVM -> worker: one layout, with the dialect deciding the few differences.
//!
//! Order (see ../shared/PROTOCOL-BY-VERSION.md §1): split index, python version, task context
//! (flat in A/B, JSON in C/D), files dir and includes, broadcasts, eval type, conf maps (C/D),
//! command, data frames, -1, final int. In D everything up to the command is one init message.

use super::*;
use crate::wire::{self, Reader, Slot, SpecialLength, WireError};
use bytes::BytesMut;
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

    pub fn data_frames(&self) -> usize {
        self.spans
            .iter()
            .filter(|s| matches!(s.kind, SpanKind::Data(_)))
            .count()
    }
}

impl Dialect {
    /// Encode one task request.
    pub fn encode_request(self, req: &TaskRequest) -> EncodedRequest {
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
        self.encode_header(req, &mut head);
        let header_len = head.len();
        self.encode_command(req, &mut head);

        if self.wraps_init_message() {
            wire::put_special(&mut buf, SpecialLength::StartOfInitMessage);
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
                    DataItem::Frame(b) => wire::put_frame(&mut buf, b),
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
        out
    }

    fn encode_header(self, req: &TaskRequest, buf: &mut BytesMut) {
        wire::put_int(buf, req.split_index);
        if req.split_index == -1 {
            // The worker exits at once (a test hook); nothing else is read.
            return;
        }
        wire::put_str(buf, &req.python_version);
        let ctx = &req.context;
        if self.json_context() {
            wire::put_str(buf, &self.context_json(ctx).to_string());
        } else {
            wire::put_bool(buf, ctx.is_barrier);
            if ctx.is_barrier || self.always_sends_barrier_fields() {
                let conn = ctx.barrier.clone().unwrap_or(ConnInfo::Port {
                    port: 0,
                    secret: String::new(),
                });
                self.put_conn_info(buf, &conn);
            }
            wire::put_int(buf, ctx.stage_id);
            wire::put_int(buf, ctx.partition_id);
            wire::put_int(buf, ctx.attempt_number);
            wire::put_long(buf, ctx.task_attempt_id);
            wire::put_int(buf, ctx.cpus);
            wire::put_int(buf, ctx.resources.len() as i32);
            for r in &ctx.resources {
                wire::put_str(buf, &r.key);
                wire::put_str(buf, &r.name);
                wire::put_int(buf, r.addresses.len() as i32);
                for a in &r.addresses {
                    wire::put_str(buf, a);
                }
            }
            put_string_map(buf, &ctx.local_properties);
        }
        wire::put_str(buf, &req.spark_files_dir);
        wire::put_int(buf, req.includes.len() as i32);
        for i in &req.includes {
            wire::put_str(buf, i);
        }
        let b = &req.broadcasts;
        wire::put_bool(buf, b.decryption_server.is_some());
        wire::put_int(buf, b.ops.len() as i32);
        if let Some(server) = &b.decryption_server {
            self.put_conn_info(buf, server);
        }
        for op in &b.ops {
            match op {
                BroadcastOp::Add { id, path } => {
                    wire::put_long(buf, *id);
                    if b.decryption_server.is_none() {
                        wire::put_str(buf, path.as_deref().unwrap_or(""));
                    }
                }
                // `-1 - id` (not `-id - 1`): the same value, and it cannot overflow for any i64.
                BroadcastOp::Remove { id } => wire::put_long(buf, -1 - id),
            }
        }
        wire::put_int(buf, req.eval_type.value());
        if self.has_conf_maps() {
            put_string_map(buf, &req.runner_conf);
            put_string_map(buf, &req.eval_conf);
        }
    }

    fn encode_command(self, req: &TaskRequest, buf: &mut BytesMut) {
        match (&req.udf, req.split_index) {
            (_, -1) => {}
            (Some(udf), _) => udf.encode(req.eval_type, &req.runner_conf, buf),
            (None, _) => wire::put_frame(buf, &req.command),
        }
    }

    fn put_conn_info(self, buf: &mut BytesMut, conn: &ConnInfo) {
        match conn {
            ConnInfo::Port { port, secret } => {
                wire::put_int(buf, *port);
                wire::put_str(buf, secret);
            }
            // Family A has no path form; a path there is sent as the B+ shape anyway, which is
            // exactly the cross-version mistake a scenario may want to provoke.
            ConnInfo::Path(p) => {
                wire::put_int(buf, -1);
                wire::put_str(buf, p);
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

fn put_string_map(buf: &mut BytesMut, m: &[(String, String)]) {
    wire::put_int(buf, m.len() as i32);
    for (k, v) in m {
        wire::put_str(buf, k);
        wire::put_str(buf, v);
    }
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

/// Decode a stream of one or more requests (several when a worker is reused). Returns the
/// requests that decoded and, if the stream does not end on a request boundary, the error
/// (with its offset) that stopped it.
pub fn decode_requests(dialect: Dialect, bytes: &[u8]) -> (Vec<DecodedRequest>, Option<WireError>) {
    decode_requests_as(UdfLayout::default_for(dialect), bytes)
}

/// `decode_requests` for one pyspark line: UDF command sections differ within a family (3.5 and
/// 4.0 are both family A).
pub fn decode_requests_as(
    layout: UdfLayout,
    bytes: &[u8],
) -> (Vec<DecodedRequest>, Option<WireError>) {
    let mut r = Reader::new(bytes);
    let mut out = vec![];
    while !r.is_empty() {
        match layout.dialect().decode_one(layout, &mut r) {
            Ok(d) => out.push(d),
            Err(e) => return (out, Some(e)),
        }
    }
    (out, None)
}

impl Dialect {
    fn decode_one(self, layout: UdfLayout, r: &mut Reader) -> Result<DecodedRequest, WireError> {
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
            let marker = r.int()?;
            if marker != SpecialLength::StartOfInitMessage.value() {
                return Err(r.violation(
                    at,
                    format!("expected START_OF_INIT_MESSAGE (-8), got {marker}"),
                ));
            }
            let len_at = r.offset();
            let len = r.int()?;
            if len < 0 || len as usize > r.max_frame() {
                return Err(
                    r.violation(len_at, format!("init message length {len} is out of range"))
                );
            }
            spans.push(Span {
                kind: SpanKind::InitPrefix,
                start: (outer_base) as usize,
                end: r.offset() as usize,
            });
            let base = r.offset();
            Some((base, r.bytes(len as usize, "init message")?))
        } else {
            None
        };
        let mut inner;
        let h: &mut Reader = match init_window {
            Some((base, window)) => {
                inner = Reader::new(window)
                    .with_base(base)
                    .with_max_frame(r.max_frame());
                &mut inner
            }
            None => r,
        };

        let start = h.offset();
        req.split_index = h.int()?;
        if req.split_index == -1 {
            spans.push(Span {
                kind: SpanKind::Header,
                start: start as usize,
                end: h.offset() as usize,
            });
            return Ok(DecodedRequest {
                request: req,
                context_json,
                spans,
            });
        }
        req.python_version = h.string("python version")?;
        if self.json_context() {
            let at = h.offset();
            let text = h.string("task context JSON")?;
            req.context = parse_context_json(&text).map_err(|e| h.violation(at, e))?;
            context_json = Some(text);
        } else {
            let ctx = &mut req.context;
            ctx.is_barrier = h.bool()?;
            if ctx.is_barrier || self.always_sends_barrier_fields() {
                let conn = self.read_conn_info(h)?;
                if ctx.is_barrier {
                    ctx.barrier = Some(conn);
                }
            }
            ctx.stage_id = h.int()?;
            ctx.partition_id = h.int()?;
            ctx.attempt_number = h.int()?;
            ctx.task_attempt_id = h.long()?;
            ctx.cpus = h.int()?;
            for _ in 0..h.count("resource count", 12)? {
                let key = h.string("resource key")?;
                let name = h.string("resource name")?;
                let n = h.count("resource address count", 4)?;
                let addresses = (0..n)
                    .map(|_| h.string("resource address"))
                    .collect::<Result<_, _>>()?;
                ctx.resources.push(Resource {
                    key,
                    name,
                    addresses,
                });
            }
            ctx.local_properties = read_string_map(h, "local property count")?;
        }
        req.spark_files_dir = h.string("spark files dir")?;
        for _ in 0..h.count("include count", 4)? {
            req.includes.push(h.string("include")?);
        }
        let has_server = h.bool()?;
        let n = h.count("broadcast count", 8)?;
        if has_server {
            req.broadcasts.decryption_server = Some(self.read_conn_info(h)?);
        }
        for _ in 0..n {
            let id = h.long()?;
            if id >= 0 {
                let path = if has_server {
                    None
                } else {
                    Some(h.string("broadcast path")?)
                };
                req.broadcasts.ops.push(BroadcastOp::Add { id, path });
            } else {
                req.broadcasts.ops.push(BroadcastOp::Remove { id: -1 - id });
            }
        }
        req.eval_type = EvalType::from_value(h.int()?);
        if self.has_conf_maps() {
            req.runner_conf = read_string_map(h, "runner conf count")?;
            req.eval_conf = read_string_map(h, "eval conf count")?;
        }
        spans.push(Span {
            kind: SpanKind::Header,
            start: start as usize,
            end: h.offset() as usize,
        });
        let start = h.offset();
        if req.eval_type == EvalType::NonUdf {
            req.command = h.frame("command")?.to_vec();
        } else {
            let (udf, conf) = UdfCommand::decode(layout, req.eval_type, h)?;
            req.runner_conf = conf.unwrap_or(req.runner_conf);
            req.udf = Some(udf);
        }
        spans.push(Span {
            kind: SpanKind::Command,
            start: start as usize,
            end: h.offset() as usize,
        });
        if let Some((_, window)) = init_window {
            if !h.is_empty() {
                let at = h.offset();
                return Err(h.violation(
                    at,
                    format!(
                        "{} unread byte(s) at the end of the init message",
                        window.len() - h.position()
                    ),
                ));
            }
        }

        // Arrow kinds: raw IPC streams (and group markers), no -1.
        let framing = layout.input_framing(req.eval_type);
        let arrow = req.udf.is_some() && framing != InputFraming::Pickled;
        if arrow {
            let mut at = r.offset() as usize;
            req.data = crate::arrow::read_data_section(framing, r)?;
            for (k, item) in req.data.iter().enumerate() {
                let DataItem::Raw(b) = item else { continue };
                let (start, end) = (at, at + b.len());
                spans.push(Span {
                    kind: SpanKind::Data(k),
                    start,
                    end,
                });
                at = end;
            }
        }
        // The data section, then -1 and the final int.
        loop {
            if arrow {
                break;
            }
            let start = r.offset();
            match r.slot("data frame")? {
                Slot::Bytes(b) => req.data.push(DataItem::Frame(b.to_vec())),
                Slot::Special(SpecialLength::Null) => req.data.push(DataItem::Null),
                Slot::Special(SpecialLength::EndOfDataSection) => {
                    req.end_of_data = true;
                    spans.push(Span {
                        kind: SpanKind::EndOfData,
                        start: start as usize,
                        end: r.offset() as usize,
                    });
                    break;
                }
                Slot::Special(s) => {
                    return Err(r.violation(start, format!("{s} in the data section")))
                }
            }
            let k = req.data.len() - 1;
            spans.push(Span {
                kind: SpanKind::Data(k),
                start: start as usize,
                end: r.offset() as usize,
            });
        }
        let start = r.offset();
        req.final_marker = Some(r.int()?);
        spans.push(Span {
            kind: SpanKind::FinalMarker,
            start: start as usize,
            end: r.offset() as usize,
        });
        Ok(DecodedRequest {
            request: req,
            context_json,
            spans,
        })
    }

    fn read_conn_info(self, r: &mut Reader) -> Result<ConnInfo, WireError> {
        let port = r.int()?;
        if port == -1 && self.conn_info_may_be_path() {
            Ok(ConnInfo::Path(r.string("socket path")?))
        } else {
            Ok(ConnInfo::Port {
                port,
                secret: r.string("secret")?,
            })
        }
    }
}

fn read_string_map(r: &mut Reader, what: &'static str) -> Result<Vec<(String, String)>, WireError> {
    let n = r.count(what, 8)?;
    (0..n)
        .map(|_| Ok((r.string("key")?, r.string("value")?)))
        .collect()
}

fn parse_context_json(text: &str) -> Result<TaskContext, String> {
    let v: serde_json::Value =
        serde_json::from_str(text).map_err(|e| format!("task context is not JSON: {e}"))?;
    let int = |k: &str| {
        v.get(k)
            .and_then(|x| x.as_i64())
            .ok_or_else(|| format!("task context JSON lacks integer {k:?}"))
    };
    let barrier = match (v.get("connInfo"), v.get("secret")) {
        (Some(serde_json::Value::Number(p)), s) => Some(ConnInfo::Port {
            port: p.as_i64().unwrap_or(0) as i32,
            secret: s.and_then(|s| s.as_str()).unwrap_or("").to_owned(),
        }),
        (Some(serde_json::Value::String(p)), _) => Some(ConnInfo::Path(p.clone())),
        _ => None,
    };
    let mut resources = vec![];
    if let Some(obj) = v.get("resources").and_then(|r| r.as_object()) {
        for (key, info) in obj {
            resources.push(Resource {
                key: key.clone(),
                name: info
                    .get("name")
                    .and_then(|n| n.as_str())
                    .unwrap_or(key)
                    .to_owned(),
                addresses: info
                    .get("addresses")
                    .and_then(|a| a.as_array())
                    .map(|a| {
                        a.iter()
                            .map(|x| x.as_str().unwrap_or_default().to_owned())
                            .collect()
                    })
                    .unwrap_or_default(),
            });
        }
    }
    let local_properties = v
        .get("localProperties")
        .and_then(|p| p.as_object())
        .map(|o| {
            o.iter()
                .map(|(k, v)| (k.clone(), v.as_str().unwrap_or_default().to_owned()))
                .collect()
        })
        .unwrap_or_default();
    Ok(TaskContext {
        is_barrier: v
            .get("isBarrier")
            .and_then(|b| b.as_bool())
            .unwrap_or(false),
        barrier,
        stage_id: int("stageId")? as i32,
        partition_id: int("partitionId")? as i32,
        attempt_number: int("attemptNumber")? as i32,
        task_attempt_id: int("taskAttemptId")?,
        cpus: int("cpus")? as i32,
        cpu_amount: v.get("cpuAmount").map(|a| match a {
            serde_json::Value::String(s) => s.clone(),
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
