//! Structural mutations of a [`Case`], drawn with `arbitrary` from random bytes.
//!
//! Each mutation names its target by frame, not by byte: a length or special length in place of
//! a frame's length, an int where the header holds a count or id, a typed header field
//! re-encoded through the dialect (eval type, python version, barrier, conf maps...), a
//! truncation, a dropped / duplicated / swapped frame, a NULL or other special length in the
//! data section, frames spliced in from another seed, and byte edits inside one frame (with or
//! without keeping its length field true). UDF tasks add two families: the Arrow streams of their
//! data section changed by structure ([`super::arrow_mutation`]) and their command section
//! changed by typed field ([`super::udf_mutation`]).

use super::arrow_mutation::{self, ArrowMutation};
use super::case::{Case, Frame, FrameShape};
use super::seeds::Seed;
use super::udf_mutation::{self, UdfField};
use crate::protocol::{
    BroadcastOp, ConnInfo, DataItem, Dialect, EvalType, Resource, SpanKind, TaskRequest,
};
use crate::wire::SpecialLength;
use arbitrary::{Arbitrary, Unstructured};

/// Cases never grow past this: a fuzz case is about framing, not volume.
pub const MAX_CASE_LEN: usize = 256 * 1024;

/// An int worth trying where the worker reads a length, a count or an id.
#[derive(Arbitrary, Clone, Copy, Debug, PartialEq, Eq)]
pub enum IntChoice {
    /// One of pyspark's special lengths (-1 END_OF_DATA_SECTION ... -8 START_OF_INIT_MESSAGE).
    Special(u8),
    /// A negative that no special length uses (-7, -9, -100...).
    Undefined(u8),
    Zero,
    One,
    Max,
    Min,
    /// 2^28: more than any frame, less than i32::MAX.
    Big,
    /// The value already there, plus or minus a little.
    Delta(i8),
    Any(i32),
}

impl IntChoice {
    pub fn resolve(self, current: i32) -> i32 {
        match self {
            IntChoice::Special(n) => {
                SpecialLength::ALL[n as usize % SpecialLength::ALL.len()].value()
            }
            IntChoice::Undefined(n) => [-7, -9, -10, -100, -65536][n as usize % 5],
            IntChoice::Zero => 0,
            IntChoice::One => 1,
            IntChoice::Max => i32::MAX,
            IntChoice::Min => i32::MIN,
            IntChoice::Big => 1 << 28,
            IntChoice::Delta(d) => current.wrapping_add(d as i32),
            IntChoice::Any(v) => v,
        }
    }
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum ByteOp {
    Flip {
        at: u16,
        bit: u8,
    },
    Set {
        at: u16,
        value: u8,
    },
    Insert {
        at: u16,
        bytes: [u8; 4],
        n: u8,
    },
    Delete {
        at: u16,
        n: u8,
    },
    /// Repeat a chunk in place (grows strings, pickles, counts of items).
    Repeat {
        at: u16,
        n: u8,
        times: u8,
    },
}

/// A typed field of the request, changed and re-encoded: the header stays well-formed, so the
/// worker gets past the framing and acts on the value.
#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Field {
    SplitIndex(IntChoice),
    PythonVersion(u8),
    Barrier { port: IntChoice, path: bool },
    ContextInt { which: u8, value: IntChoice },
    TaskAttemptId(i64),
    Resources { n: u8, addresses: u8 },
    LocalProperties { n: u8, long: bool },
    Includes(u8),
    Broadcasts { add: u8, remove: u8, server: bool },
    EvalType(u8),
    Conf { runner: u8, eval: u8 },
    CpuAmount(u8),
}

#[derive(Arbitrary, Clone, Debug, PartialEq, Eq)]
pub enum Mutation {
    /// The length in front of a frame (command, data item).
    Length {
        frame: u16,
        value: IntChoice,
    },
    /// A 4-byte window inside a frame: with `small` it lands where a small int already sits
    /// (a count, a string length, an id), else anywhere.
    Int {
        frame: u16,
        at: u16,
        small: bool,
        value: IntChoice,
    },
    Field(Field),
    /// Send only frames before `frame` and the first `keep` bytes of it; the rest never comes.
    Truncate {
        frame: u16,
        keep: u16,
    },
    Drop {
        frame: u16,
    },
    Duplicate {
        frame: u16,
    },
    Swap {
        a: u16,
        b: u16,
    },
    /// A NULL (-5) in the data section before data item `at`.
    InsertNull {
        at: u16,
    },
    /// A special length alone in the data section.
    InsertSpecial {
        at: u16,
        special: u8,
    },
    /// All data items of another seed in place of this one's.
    SpliceData {
        seed: u16,
    },
    /// One frame of another seed, inserted at `at`.
    SpliceFrame {
        seed: u16,
        frame: u16,
        at: u16,
    },
    Bytes {
        frame: u16,
        op: ByteOp,
        keep_length: bool,
    },
    FinalMarker(IntChoice),
    NoFinalMarker,
    NoEndOfData,
    /// A structural change to an Arrow IPC stream of the data section (UDF tasks of the Arrow
    /// eval types).
    Arrow(ArrowMutation),
    /// A typed field of a UDF task's command section, re-encoded.
    Udf(UdfField),
}

impl Field {
    pub fn name(&self) -> &'static str {
        match self {
            Field::SplitIndex(_) => "field.split_index",
            Field::PythonVersion(_) => "field.python_version",
            Field::Barrier { .. } => "field.barrier",
            Field::ContextInt { .. } => "field.context_int",
            Field::TaskAttemptId(_) => "field.task_attempt_id",
            Field::Resources { .. } => "field.resources",
            Field::LocalProperties { .. } => "field.local_properties",
            Field::Includes(_) => "field.includes",
            Field::Broadcasts { .. } => "field.broadcasts",
            Field::EvalType(_) => "field.eval_type",
            Field::Conf { .. } => "field.conf",
            Field::CpuAmount(_) => "field.cpu_amount",
        }
    }
}

impl Mutation {
    /// The kind's name, as the campaign summary counts it (`arrow.*` and `udf.*` for the two
    /// UDF families, `field.*` for header fields).
    pub fn name(&self) -> &'static str {
        match self {
            Mutation::Length { .. } => "length",
            Mutation::Int { .. } => "int",
            Mutation::Field(f) => f.name(),
            Mutation::Truncate { .. } => "truncate",
            Mutation::Drop { .. } => "drop",
            Mutation::Duplicate { .. } => "duplicate",
            Mutation::Swap { .. } => "swap",
            Mutation::InsertNull { .. } => "insert_null",
            Mutation::InsertSpecial { .. } => "insert_special",
            Mutation::SpliceData { .. } => "splice_data",
            Mutation::SpliceFrame { .. } => "splice_frame",
            Mutation::Bytes { .. } => "bytes",
            Mutation::FinalMarker(_) => "final_marker",
            Mutation::NoFinalMarker => "no_final_marker",
            Mutation::NoEndOfData => "no_end_of_data",
            Mutation::Arrow(m) => m.edit.name(),
            Mutation::Udf(f) => f.name(),
        }
    }
}

/// What a mutation may draw on besides the case.
pub struct Context<'a> {
    pub dialect: Dialect,
    pub seeds: &'a [Seed],
    /// Edit bytes inside the command (the cloudpickled function). Off by default in campaigns:
    /// the JVM passes the command through untouched, and a corrupted one only reaches
    /// cloudpickle (an unpickling error, expected) or CPython running broken bytecode (a
    /// SIGSEGV in the task's own function): executions that cannot find a protocol bug. The
    /// command's length, truncation, dropping and splicing stay on either way.
    pub mutate_command: bool,
}

/// Draw 1-4 mutations and apply them. Returns the names of those that applied, in order (empty:
/// try another draw).
pub fn mutate(case: &mut Case, ctx: &Context, rng: &mut impl rand::Rng) -> Vec<&'static str> {
    let mut raw = [0u8; 256];
    rng.fill(&mut raw[..]);
    let mut u = Unstructured::new(&raw);
    let n = 1 + u.int_in_range(0..=3u8).unwrap_or(0) as usize;
    // Arrow and UDF kinds are two variants among many: drawn like the rest they would be one
    // draw in ten on the cases they exist for, and a 20-kind Arrow family would hardly be used.
    // A case with Arrow data draws an Arrow kind half the time; a UDF task a UDF field a quarter.
    let arrow = arrow_mutation::has_arrow(case);
    let udf = case
        .seed_in(ctx.seeds)
        .and_then(|s| s.request.as_ref())
        .is_some_and(|r| r.udf.is_some());
    let mut applied = vec![];
    for _ in 0..n {
        let drawn = match u.int_in_range(0..=3u8).unwrap_or(3) {
            0 | 1 if arrow => ArrowMutation::arbitrary(&mut u).map(Mutation::Arrow),
            2 if udf => UdfField::arbitrary(&mut u).map(Mutation::Udf),
            _ => Mutation::arbitrary(&mut u),
        };
        let Ok(m) = drawn else {
            break;
        };
        if apply(case, &m, ctx) {
            applied.push(m.name());
        }
    }
    applied
}

/// Apply one mutation; false when it does not apply to this case (then nothing changed).
pub fn apply(case: &mut Case, m: &Mutation, ctx: &Context) -> bool {
    let mut next = case.clone();
    if !apply_to(&mut next, m, ctx) || next.len() > MAX_CASE_LEN {
        return false;
    }
    *case = next;
    true
}

fn apply_to(case: &mut Case, m: &Mutation, ctx: &Context) -> bool {
    if case.frames.is_empty() {
        return false;
    }
    let pick = |i: u16, n: usize| i as usize % n.max(1);
    let nframes = case.frames.len();
    let mut fix_init = true;
    let changed = match m {
        Mutation::Length { frame, value } => {
            let i = pick(*frame, nframes);
            fix_init = case.frames[i].kind != SpanKind::InitPrefix;
            set_int(&mut case.frames[i], 0, *value)
        }
        Mutation::Int {
            frame,
            at,
            small,
            value,
        } => {
            let i = pick(*frame, nframes);
            fix_init = case.frames[i].kind != SpanKind::InitPrefix;
            let payload_locked = case.frames[i].kind == SpanKind::Command && !ctx.mutate_command;
            let f = &case.frames[i];
            let at = if *small {
                let spots: Vec<usize> = (0..f.bytes.len().saturating_sub(3))
                    .filter(|&p| (0..=4096).contains(&read_i32(&f.bytes, p)))
                    .collect();
                if spots.is_empty() {
                    return false;
                }
                spots[*at as usize % spots.len()]
            } else {
                *at as usize % f.bytes.len().saturating_sub(3).max(1)
            };
            if payload_locked && at != 0 {
                return false;
            }
            set_int(&mut case.frames[i], at, *value)
        }
        Mutation::Field(field) => apply_field(case, field, ctx),
        Mutation::Truncate { frame, keep } => {
            let i = pick(*frame, nframes);
            let f = &mut case.frames[i];
            let keep = *keep as usize % (f.bytes.len() + 1);
            f.bytes.truncate(keep);
            f.touched = true;
            case.frames.truncate(i + 1);
            if case.frames[i].bytes.is_empty() {
                case.frames.pop();
            }
            fix_init = false;
            true
        }
        Mutation::Drop { frame } => {
            let i = pick(*frame, nframes);
            case.frames.remove(i);
            mark_neighbour(case, i);
            true
        }
        Mutation::Duplicate { frame } => {
            let i = pick(*frame, nframes);
            let mut f = case.frames[i].clone();
            f.touched = true;
            case.frames.insert(i + 1, f);
            true
        }
        Mutation::Swap { a, b } => {
            let (a, b) = (pick(*a, nframes), pick(*b, nframes));
            if a == b {
                return false;
            }
            case.frames.swap(a, b);
            case.frames[a].touched = true;
            case.frames[b].touched = true;
            true
        }
        Mutation::InsertNull { at } => insert_data(
            case,
            *at,
            SpecialLength::Null.value().to_be_bytes().to_vec(),
        ),
        Mutation::InsertSpecial { at, special } => {
            let s = SpecialLength::ALL[*special as usize % SpecialLength::ALL.len()];
            insert_data(case, *at, s.value().to_be_bytes().to_vec())
        }
        Mutation::SpliceData { seed } => {
            let Some(other) = ctx.seeds.get(pick(*seed, ctx.seeds.len())) else {
                return false;
            };
            let theirs: Vec<Frame> = other
                .case
                .frames
                .iter()
                .filter(|f| matches!(f.kind, SpanKind::Data(_)))
                .cloned()
                .map(|mut f| {
                    f.touched = true;
                    f
                })
                .collect();
            let first = case.data_range().start;
            case.frames.retain(|f| !matches!(f.kind, SpanKind::Data(_)));
            let at = first.min(case.frames.len());
            case.frames.splice(at..at, theirs);
            true
        }
        Mutation::SpliceFrame { seed, frame, at } => {
            let Some(other) = ctx.seeds.get(pick(*seed, ctx.seeds.len())) else {
                return false;
            };
            if other.case.frames.is_empty() {
                return false;
            }
            let mut f = other.case.frames[pick(*frame, other.case.frames.len())].clone();
            f.touched = true;
            let at = pick(*at, nframes + 1);
            case.frames.insert(at, f);
            true
        }
        Mutation::Bytes {
            frame,
            op,
            keep_length,
        } => {
            let i = pick(*frame, nframes);
            if case.frames[i].kind == SpanKind::Command && !ctx.mutate_command {
                return false;
            }
            fix_init = case.frames[i].kind != SpanKind::InitPrefix;
            bytes_op(&mut case.frames[i], op, *keep_length)
        }
        Mutation::FinalMarker(value) => match case.position(SpanKind::FinalMarker) {
            Some(i) => set_int(&mut case.frames[i], 0, *value),
            None => false,
        },
        Mutation::NoFinalMarker => remove_kind(case, SpanKind::FinalMarker),
        Mutation::NoEndOfData => remove_kind(case, SpanKind::EndOfData),
        Mutation::Arrow(m) => arrow_mutation::apply(case, m, ctx.seeds),
        Mutation::Udf(field) => {
            let Some(seed) = case.seed_in(ctx.seeds).and_then(|s| s.request.as_ref()) else {
                return false;
            };
            let Some(mut req) = udf_mutation::current_request(case, seed) else {
                return false;
            };
            let columns = arrow_mutation::input_columns(case);
            if !udf_mutation::apply(&mut req, ctx.dialect, field, columns) {
                return false;
            }
            put_head(case, req, ctx.dialect);
            true
        }
    };
    if !changed {
        return false;
    }
    case.renumber();
    if fix_init {
        case.fix_init_length(ctx.dialect);
    }
    true
}

fn read_i32(b: &[u8], at: usize) -> i32 {
    i32::from_be_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

/// Overwrite the int at `at` (a frame shorter than 4 bytes gets one written in full).
fn set_int(f: &mut Frame, at: usize, value: IntChoice) -> bool {
    if f.bytes.len() < at + 4 {
        if at != 0 {
            return false;
        }
        f.bytes = value.resolve(0).to_be_bytes().to_vec();
    } else {
        let v = value.resolve(read_i32(&f.bytes, at));
        f.bytes[at..at + 4].copy_from_slice(&v.to_be_bytes());
    }
    f.touched = true;
    true
}

/// After a frame went away, the frame now in its place (or the last one) is where the worker
/// meets the change.
fn mark_neighbour(case: &mut Case, i: usize) {
    let n = case.frames.len();
    if n > 0 {
        case.frames[i.min(n - 1)].touched = true;
    }
}

/// A new data item before the `at`-th one (or before -1 / the final int when past the end).
fn insert_data(case: &mut Case, at: u16, bytes: Vec<u8>) -> bool {
    let data: Vec<usize> = case
        .frames
        .iter()
        .enumerate()
        .filter(|(_, f)| matches!(f.kind, SpanKind::Data(_)))
        .map(|(i, _)| i)
        .collect();
    let end = case
        .frames
        .iter()
        .position(|f| matches!(f.kind, SpanKind::EndOfData | SpanKind::FinalMarker))
        .unwrap_or(case.frames.len());
    let slot = at as usize % (data.len() + 1);
    let pos = data.get(slot).copied().unwrap_or(end);
    case.frames.insert(
        pos,
        Frame {
            kind: SpanKind::Data(0),
            bytes,
            touched: true,
        },
    );
    true
}

fn remove_kind(case: &mut Case, kind: SpanKind) -> bool {
    match case.position(kind) {
        Some(i) => {
            case.frames.remove(i);
            mark_neighbour(case, i);
            true
        }
        None => false,
    }
}

fn bytes_op(f: &mut Frame, op: &ByteOp, keep_length: bool) -> bool {
    // With keep_length the edit stays inside the payload of a well-framed frame and the length
    // is rewritten after it; the worker then reads a well-framed, wrong payload.
    let framed = keep_length && matches!(f.shape(), FrameShape::Framed { .. });
    let lo = if framed { 4 } else { 0 };
    let len = f.bytes.len();
    let spot = |at: u16, extra: usize| lo + at as usize % (len - lo + extra).max(1);
    match op {
        ByteOp::Flip { at, bit } => {
            if len <= lo {
                return false;
            }
            let p = spot(*at, 0);
            f.bytes[p] ^= 1 << (bit % 8);
        }
        ByteOp::Set { at, value } => {
            if len <= lo {
                return false;
            }
            let p = spot(*at, 0);
            f.bytes[p] = *value;
        }
        ByteOp::Insert { at, bytes, n } => {
            let p = spot(*at, 1).min(len);
            let n = 1 + *n as usize % 4;
            f.bytes.splice(p..p, bytes[..n].iter().copied());
        }
        ByteOp::Delete { at, n } => {
            if len <= lo {
                return false;
            }
            let p = spot(*at, 0);
            let n = (1 + *n as usize % 8).min(len - p);
            f.bytes.drain(p..p + n);
        }
        ByteOp::Repeat { at, n, times } => {
            if len <= lo {
                return false;
            }
            let p = spot(*at, 0);
            let n = (1 + *n as usize % 64).min(len - p);
            let chunk = f.bytes[p..p + n].to_vec();
            let times = 1 + *times as usize % 8;
            let insert: Vec<u8> = chunk.iter().copied().cycle().take(n * times).collect();
            f.bytes.splice(p..p, insert);
        }
    }
    if framed {
        let n = (f.bytes.len() - 4) as i32;
        f.bytes[..4].copy_from_slice(&n.to_be_bytes());
    }
    f.touched = true;
    true
}

const PYTHON_VERSIONS: [&str; 6] = ["3.10", "2.7", "", "3.11x", "3.1", "é"];
/// 0 NON_UDF, 100/101 SQL batched, 200-212 pandas/Arrow, 300-302 table UDFs, and junk.
const EVAL_TYPES: [i32; 12] = [0, 100, 101, 102, 200, 201, 204, 211, 300, 301, -1, 9999];
const CPU_AMOUNTS: [&str; 5] = ["1", "0.5", "abc", "", "1e400"];

/// Change one typed field of the seed's request and put the re-encoded header (and, in D, the
/// init prefix) in place of the case's; the data frames the case has now stay.
fn apply_field(case: &mut Case, field: &Field, ctx: &Context) -> bool {
    let Some(mut req) = case.seed_in(ctx.seeds).and_then(|s| s.request.clone()) else {
        return false;
    };
    let d = ctx.dialect;
    match field {
        Field::SplitIndex(v) => req.split_index = v.resolve(req.split_index),
        Field::PythonVersion(i) => {
            req.python_version = PYTHON_VERSIONS[*i as usize % PYTHON_VERSIONS.len()].into()
        }
        Field::Barrier { port, path } => {
            req.context.is_barrier = true;
            req.context.barrier = Some(if *path && d.conn_info_may_be_path() {
                ConnInfo::Path("/nonexistent/fakejvm-barrier.sock".into())
            } else {
                ConnInfo::Port {
                    port: port.resolve(0),
                    secret: "s".into(),
                }
            });
        }
        Field::ContextInt { which, value } => {
            let c = &mut req.context;
            let slot = match which % 4 {
                0 => &mut c.stage_id,
                1 => &mut c.partition_id,
                2 => &mut c.attempt_number,
                _ => &mut c.cpus,
            };
            *slot = value.resolve(*slot);
        }
        Field::TaskAttemptId(v) => req.context.task_attempt_id = *v,
        Field::Resources { n, addresses } => {
            req.context.resources = (0..n % 5)
                .map(|i| Resource {
                    key: format!("r{i}"),
                    name: format!("r{i}"),
                    addresses: (0..addresses % 4).map(|a| a.to_string()).collect(),
                })
                .collect();
        }
        Field::LocalProperties { n, long } => {
            let v = if *long { "v".repeat(5000) } else { "v".into() };
            req.context.local_properties = (0..n % 40)
                .map(|i| (format!("spark.k{i}"), v.clone()))
                .collect();
        }
        Field::Includes(n) => {
            req.includes = (0..n % 4).map(|i| format!("missing-{i}.zip")).collect()
        }
        Field::Broadcasts {
            add,
            remove,
            server,
        } => {
            let mut ops: Vec<BroadcastOp> = (0..add % 3)
                .map(|i| BroadcastOp::Add {
                    id: i as i64,
                    path: (!server).then(|| format!("/nonexistent/broadcast_{i}")),
                })
                .collect();
            ops.extend((0..remove % 3).map(|i| BroadcastOp::Remove { id: 100 + i as i64 }));
            req.broadcasts.ops = ops;
            // Port 1 on loopback: nothing listens there, so the worker's connect fails at once.
            req.broadcasts.decryption_server = server.then(|| ConnInfo::Port {
                port: 1,
                secret: "s".into(),
            });
        }
        Field::EvalType(i) => {
            req.eval_type = EvalType::from_value(EVAL_TYPES[*i as usize % EVAL_TYPES.len()])
        }
        Field::Conf { runner, eval } => {
            if !d.has_conf_maps() {
                return false;
            }
            req.runner_conf = (0..runner % 4)
                .map(|i| (format!("spark.r{i}"), "1".into()))
                .collect();
            req.eval_conf = (0..eval % 4)
                .map(|i| (format!("spark.e{i}"), "x".into()))
                .collect();
        }
        Field::CpuAmount(i) => {
            if !d.json_context() {
                return false;
            }
            req.context.cpu_amount = Some(CPU_AMOUNTS[*i as usize % CPU_AMOUNTS.len()].into());
        }
    }
    put_head(case, req, d);
    true
}

/// Put the encoding of `req` in place of the case's init prefix, header and command; the data
/// frames the case has now stay. The one way a typed request goes back into a case, for header
/// fields and UDF fields alike. A frame counts as touched if it was, or if its bytes changed.
fn put_head(case: &mut Case, mut req: TaskRequest, d: Dialect) {
    let is_head = |k: SpanKind| {
        matches!(
            k,
            SpanKind::InitPrefix | SpanKind::Header | SpanKind::Command
        )
    };
    // Encode with no data; only the frames before the data section are taken.
    req.data = vec![DataItem::Frame(vec![])];
    let fresh = Case::from_encoded(case.seed, &d.encode_request(&req));
    let mut head: Vec<Frame> = fresh
        .frames
        .into_iter()
        .filter(|f| is_head(f.kind))
        .collect();
    for f in head.iter_mut() {
        f.touched = match case.frames.iter().find(|o| o.kind == f.kind) {
            Some(old) => old.touched || old.bytes != f.bytes,
            None => true,
        };
    }
    case.frames.retain(|f| !is_head(f.kind));
    // split index -1 ends the request after the header: the worker reads nothing more.
    if req.split_index == -1 {
        head.retain(|f| f.kind != SpanKind::Command);
    }
    case.frames.splice(0..0, head);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::TaskRequest;
    use rand::SeedableRng;

    fn seed(d: Dialect) -> Seed {
        let mut req = TaskRequest::non_udf(
            "3.11",
            vec![0x80, 5, 0x4e, 0x2e],
            vec![
                DataItem::Frame(b"abc".to_vec()),
                DataItem::Frame(b"de".to_vec()),
            ],
        );
        req.context.local_properties = vec![("k".into(), "v".into())];
        let case = Case::from_encoded(Some(0), &d.encode_request(&req));
        Seed {
            name: "t".into(),
            request: Some(req),
            case,
            round_trip: None,
        }
    }

    #[test]
    fn a_null_lands_in_the_data_section() {
        let s = seed(Dialect::A);
        let mut case = s.case.clone();
        let seeds = [s.clone()];
        let ctx = Context {
            dialect: Dialect::A,
            seeds: &seeds,
            mutate_command: true,
        };
        assert!(apply(&mut case, &Mutation::InsertNull { at: 1 }, &ctx));
        let kinds: Vec<SpanKind> = case.frames.iter().map(|f| f.kind).collect();
        assert_eq!(
            kinds,
            vec![
                SpanKind::Header,
                SpanKind::Command,
                SpanKind::Data(0),
                SpanKind::Data(1),
                SpanKind::Data(2),
                SpanKind::EndOfData,
                SpanKind::FinalMarker
            ]
        );
        assert_eq!(
            case.frames[3].shape(),
            FrameShape::Special(SpecialLength::Null)
        );
    }

    #[test]
    fn a_length_mutation_puts_the_value_in_front_of_the_frame() {
        let s = seed(Dialect::A);
        let seeds = [s.clone()];
        let ctx = Context {
            dialect: Dialect::A,
            seeds: &seeds,
            mutate_command: true,
        };
        let mut case = s.case.clone();
        assert!(apply(
            &mut case,
            &Mutation::Length {
                frame: 2,
                value: IntChoice::Undefined(0)
            },
            &ctx
        ));
        assert_eq!(&case.frames[2].bytes[..4], &(-7i32).to_be_bytes());
        assert_eq!(case.len(), s.case.len());
    }

    #[test]
    fn field_mutations_keep_the_rest_decodable() {
        for d in Dialect::ALL {
            let s = seed(d);
            let seeds = [s.clone()];
            let ctx = Context {
                dialect: d,
                seeds: &seeds,
                mutate_command: true,
            };
            let mut case = s.case.clone();
            assert!(apply(
                &mut case,
                &Mutation::Field(Field::LocalProperties { n: 3, long: false }),
                &ctx
            ));
            let (reqs, err) = crate::protocol::decode_requests(d, &case.to_bytes());
            assert!(err.is_none(), "{d:?}: {err:?}");
            assert_eq!(reqs[0].request.context.local_properties.len(), 3, "{d:?}");
            assert_eq!(
                reqs[0].request.data,
                s.request.as_ref().unwrap().data,
                "{d:?}"
            );
        }
    }

    #[test]
    fn byte_edits_that_keep_the_length_stay_well_framed() {
        let s = seed(Dialect::D);
        let seeds = [s.clone()];
        let ctx = Context {
            dialect: Dialect::D,
            seeds: &seeds,
            mutate_command: true,
        };
        let mut case = s.case.clone();
        let i = case.position(SpanKind::Data(0)).unwrap();
        let op = ByteOp::Insert {
            at: 0,
            bytes: [1, 2, 3, 4],
            n: 2,
        };
        assert!(apply(
            &mut case,
            &Mutation::Bytes {
                frame: i as u16,
                op,
                keep_length: true
            },
            &ctx
        ));
        assert_eq!(case.frames[i].shape(), FrameShape::Framed { len: 6 });
        let (reqs, err) = crate::protocol::decode_requests(Dialect::D, &case.to_bytes());
        assert!(err.is_none(), "{err:?}");
        assert_eq!(reqs.len(), 1);
    }

    #[test]
    fn the_command_payload_is_left_alone_unless_asked() {
        let s = seed(Dialect::A);
        let seeds = [s.clone()];
        let i = s.case.position(SpanKind::Command).unwrap() as u16;
        let flip = Mutation::Bytes {
            frame: i,
            op: ByteOp::Flip { at: 9, bit: 1 },
            keep_length: true,
        };
        let int = Mutation::Int {
            frame: i,
            at: 2,
            small: false,
            value: IntChoice::Zero,
        };
        let length = Mutation::Length {
            frame: i,
            value: IntChoice::Zero,
        };
        for m in [&flip, &int] {
            let mut case = s.case.clone();
            assert!(
                !apply(
                    &mut case,
                    m,
                    &Context {
                        dialect: Dialect::A,
                        seeds: &seeds,
                        mutate_command: false
                    }
                ),
                "{m:?}"
            );
            assert_eq!(case, s.case);
            assert!(
                apply(
                    &mut case,
                    m,
                    &Context {
                        dialect: Dialect::A,
                        seeds: &seeds,
                        mutate_command: true
                    }
                ),
                "{m:?}"
            );
        }
        let mut case = s.case.clone();
        assert!(apply(
            &mut case,
            &length,
            &Context {
                dialect: Dialect::A,
                seeds: &seeds,
                mutate_command: false
            }
        ));
    }

    /// A scalar pandas UDF task of 4.0 (family A) over one double column, its data section a
    /// real Arrow stream of two batches.
    fn udf_seed() -> Seed {
        use crate::arrow::{data_section, positional_batch, Group};
        use crate::protocol::{InputFraming, Udf, UdfCommand, UdfLayout};
        use std::sync::Arc;
        let col: arrow_array::ArrayRef =
            Arc::new(arrow_array::Float64Array::from(vec![Some(1.0), None]));
        let batch = positional_batch(vec![col]).unwrap();
        let groups = [Group::of(vec![batch.clone(), batch.clone()])];
        let data = data_section(InputFraming::Stream, &batch.schema(), None, &groups).unwrap();
        let cmd = UdfCommand::udfs(
            UdfLayout::Pyspark40,
            vec![Udf::simple(&[0], vec![0x80, 5, b'N', b'.'])],
        );
        let mut req = cmd.place("3.11", EvalType::SqlScalarPandasUdf, vec![]);
        req.data = data;
        req.end_of_data = false;
        let case = Case::from_encoded(Some(0), &Dialect::A.encode_request(&req));
        Seed {
            name: "udf".into(),
            request: Some(req),
            case,
            round_trip: None,
        }
    }

    #[test]
    fn udf_seeds_draw_arrow_and_udf_kinds_and_report_them() {
        let s = udf_seed();
        let seeds = [s.clone()];
        let ctx = Context {
            dialect: Dialect::A,
            seeds: &seeds,
            mutate_command: false,
        };
        let mut rng = rand::rngs::StdRng::seed_from_u64(3);
        let mut names = std::collections::BTreeSet::new();
        for _ in 0..2000 {
            let mut case = s.case.clone();
            for _ in 0..3 {
                names.extend(mutate(&mut case, &ctx, &mut rng));
            }
            assert!(case.len() <= MAX_CASE_LEN);
        }
        let arrow = names.iter().filter(|n| n.starts_with("arrow.")).count();
        let udf = names.iter().filter(|n| n.starts_with("udf.")).count();
        // Every Arrow kind applies to this stream, but for the group marker (4.1+ grouped kinds
        // and cogroups) and the schema swap (one schema among the seeds) only after another
        // mutation made one (a lone int in the data section, a second schema).
        assert!(arrow >= 18, "{names:?}");
        assert!(udf >= 6, "{names:?}");
        // An RDD seed never gets either.
        let r = seed(Dialect::A);
        let seeds = [r.clone()];
        let ctx = Context {
            dialect: Dialect::A,
            seeds: &seeds,
            mutate_command: true,
        };
        for _ in 0..500 {
            let mut case = r.case.clone();
            for n in mutate(&mut case, &ctx, &mut rng) {
                assert!(!n.starts_with("arrow.") && !n.starts_with("udf."), "{n}");
            }
        }
    }

    #[test]
    fn a_udf_field_is_re_encoded_into_the_command_frame() {
        let s = udf_seed();
        let seeds = [s.clone()];
        let ctx = Context {
            dialect: Dialect::A,
            seeds: &seeds,
            mutate_command: false,
        };
        let mut case = s.case.clone();
        // Two in a row build on each other: the second decodes the first's command.
        assert!(apply(&mut case, &Mutation::Udf(UdfField::NumUdfs(3)), &ctx));
        assert!(apply(
            &mut case,
            &Mutation::Udf(UdfField::ChainedFuncs { udf: 2, n: 0 }),
            &ctx
        ));
        let i = case.position(SpanKind::Command).unwrap();
        assert!(case.frames[i].touched);
        let req = udf_mutation::current_request(&case, s.request.as_ref().unwrap()).unwrap();
        let Some(crate::protocol::UdfBody::Udfs { udfs, .. }) = req.udf.map(|u| u.body) else {
            panic!("no UDFs");
        };
        assert_eq!(udfs.len(), 3);
        assert_eq!(
            udfs.iter().map(|u| u.funcs.len()).collect::<Vec<_>>(),
            vec![1, 1, 0]
        );
        // The data section is the seed's, byte for byte.
        let data = |c: &Case| c.frames[c.data_range()].to_vec();
        assert_eq!(data(&case), data(&s.case));
    }

    #[test]
    fn random_mutation_never_panics_and_stays_bounded() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for d in Dialect::ALL {
            let s = seed(d);
            let seeds = [s.clone(), seed(Dialect::A)];
            let ctx = Context {
                dialect: d,
                seeds: &seeds,
                mutate_command: true,
            };
            for _ in 0..3000 {
                let mut case = s.case.clone();
                for _ in 0..5 {
                    mutate(&mut case, &ctx, &mut rng);
                }
                assert!(case.len() <= MAX_CASE_LEN);
            }
        }
    }
}
