//! Plain-data pickles on the Rust side, and the frame layouts of pyspark's RDD serializers.
//!
//! The harness pickles a scenario's values to build worker input, and unpickles what a worker
//! wrote to check its output. Both directions only ever need plain data: None, bool, int
//! (any size), float, str, bytes, bytearray, list, tuple, dict, set and frozenset.
//!
//! Why a codec of our own rather than serde-pickle 1.2 (checked against CPython 3.11 output):
//! - serde-pickle counts memo references per GET, not per use, so a memoized container that is
//!   itself referenced twice fails with "recursive structure found". CPython writes exactly that
//!   for `[t, t]` with `t = (s, s)`, an ordinary shape for RDD rows.
//! - it recurses per nesting level with large frames: 300 nested lists (CPython pickles up to
//!   ~500 lists or ~1000 tuples deep) overflow a 2 MiB thread stack, which aborts the harness.
//! - it keeps dicts in a BTreeMap (Python dicts are ordered, and a function may depend on that)
//!   and turns bytearray into bytes.
//!
//! So `loads` is a small unpickler over an arena (Python's reference semantics, cycles and
//! nesting bounded, no recursion on untrusted structure), and `dumps` writes what CPython 3.11's
//! `pickle.dumps(v, 5)` writes, byte for byte: pyspark frames batches with HIGHEST_PROTOCOL, and
//! AutoBatchedSerializer picks batch sizes from pickle lengths, so our lengths must be CPython's.
//!
//! Byte identity holds for values whose parts are distinct objects, which is what Python gets
//! from `pickle.loads`; CPython's own shared singletons ('' and one-Latin-1-character str,
//! bytes of length 0 or 1) are memoized here exactly as CPython memoizes them. Sets are written
//! in the order held, where CPython uses hash order, so only sets of 0 or 1 element match bytes.

use std::collections::HashMap;

pub use num_bigint::BigInt;

/// Values nest at most this deep (containers on the path from the root to a leaf). CPython 3.11
/// at its default recursion limit pickles 998 nested tuples or 499 nested lists; the bound keeps
/// every recursive walk here (and the derived Drop/Clone) well inside a 2 MiB thread stack.
pub const MAX_DEPTH: usize = 2000;

/// A pickle may share one object many times (memo GETs); expanded into owned values that can
/// grow exponentially with the pickle's length. Past this many bytes (an estimate of the
/// expanded values' memory) `loads` refuses instead of exhausting memory.
pub const MAX_EXPANDED_BYTES: u64 = 1 << 32;

/// A plain-data Python value.
///
/// `Int` holds every integer that fits in i64 and `BigInt` only those that do not, so equal
/// integers are equal values; `loads` and `value_from_json` keep that. `Dict` keeps Python's
/// insertion order and unique keys (Python equality: 1, 1.0 and True are one key). `PartialEq`
/// is structural and order-sensitive (and NaN != NaN); compare `value_to_json` forms for
/// Python's order-insensitive dict and set equality.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    None,
    Bool(bool),
    Int(i64),
    BigInt(BigInt),
    Float(f64),
    Str(String),
    Bytes(Vec<u8>),
    ByteArray(Vec<u8>),
    List(Vec<Value>),
    Tuple(Vec<Value>),
    Dict(Vec<(Value, Value)>),
    Set(Vec<Value>),
    FrozenSet(Vec<Value>),
}

impl Value {
    /// An integer in its canonical variant (`Int` when it fits in i64).
    pub fn int(i: BigInt) -> Value {
        match i64::try_from(&i) {
            Ok(small) => Value::Int(small),
            Err(_) => Value::BigInt(i),
        }
    }

    /// The Python type name, for messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::None => "NoneType",
            Value::Bool(_) => "bool",
            Value::Int(_) | Value::BigInt(_) => "int",
            Value::Float(_) => "float",
            Value::Str(_) => "str",
            Value::Bytes(_) => "bytes",
            Value::ByteArray(_) => "bytearray",
            Value::List(_) => "list",
            Value::Tuple(_) => "tuple",
            Value::Dict(_) => "dict",
            Value::Set(_) => "set",
            Value::FrozenSet(_) => "frozenset",
        }
    }
}

impl From<i64> for Value {
    fn from(i: i64) -> Value {
        Value::Int(i)
    }
}
impl From<bool> for Value {
    fn from(b: bool) -> Value {
        Value::Bool(b)
    }
}
impl From<f64> for Value {
    fn from(f: f64) -> Value {
        Value::Float(f)
    }
}
impl From<&str> for Value {
    fn from(s: &str) -> Value {
        Value::Str(s.to_owned())
    }
}
impl From<String> for Value {
    fn from(s: String) -> Value {
        Value::Str(s)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PickleError {
    #[error("pickle ends at byte {at} while reading {what}: the payload is truncated or is not a pickle")]
    Truncated { at: usize, what: &'static str },
    #[error("unknown pickle opcode 0x{opcode:02x} at byte {at}: the payload is not a pickle, or is corrupted")]
    UnknownOpcode { at: usize, opcode: u8 },
    #[error(
        "pickle opcode {name} at byte {at} builds a Python object that is not plain data; fakejvm \
         decodes None, bool, int, float, str, bytes, bytearray, list, tuple, dict, set and frozenset"
    )]
    NotPlainOpcode { at: usize, name: &'static str },
    #[error(
        "pickle at byte {at} uses {module}.{name}, which is not plain data; have the worker's \
         function return plain values (e.g. tuple(row) instead of a Row)"
    )]
    NotPlainGlobal { at: usize, module: String, name: String },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    #[error("the container built at byte {at} contains itself; a plain value cannot be cyclic")]
    Recursive { at: usize },
    #[error("pickle nests deeper than {MAX_DEPTH} levels (at the container built at byte {at})")]
    TooDeep { at: usize },
    #[error("pickle shares objects so often that its values would take more than {MAX_EXPANDED_BYTES} bytes")]
    TooLarge,
    #[error("the dict or set built at byte {at} gets a {type_name} key or member, which Python cannot hash")]
    Unhashable { at: usize, type_name: &'static str },
    #[error("{len} bytes follow the STOP opcode at byte {at}; a frame holds exactly one pickle")]
    TrailingBytes { at: usize, len: usize },
    #[error("frame {frame}: {source}")]
    InFrame {
        frame: usize,
        #[source]
        source: Box<PickleError>,
    },
    #[error("frame {frame} is NULL (-5), which a {serializer} never writes")]
    UnexpectedNull { frame: usize, serializer: &'static str },
    #[error("frame {frame} holds a pickled {got}, not the list that a batched serializer writes per frame")]
    NotABatch { frame: usize, got: &'static str },
    #[error("frame {frame} is not UTF-8 (first invalid byte at {at}); pyspark would raise UnicodeDecodeError")]
    NotUtf8 { frame: usize, at: usize },
    #[error("JSON value at {path}: {what}")]
    Json { path: String, what: String },
}

type Result<T, E = PickleError> = std::result::Result<T, E>;

/// Pickle opcodes (the names are pickletools').
mod op {
    pub const MARK: u8 = b'(';
    pub const STOP: u8 = b'.';
    pub const POP: u8 = b'0';
    pub const POP_MARK: u8 = b'1';
    pub const DUP: u8 = b'2';
    pub const FLOAT: u8 = b'F';
    pub const INT: u8 = b'I';
    pub const BININT: u8 = b'J';
    pub const BININT1: u8 = b'K';
    pub const LONG: u8 = b'L';
    pub const BININT2: u8 = b'M';
    pub const NONE: u8 = b'N';
    pub const PERSID: u8 = b'P';
    pub const BINPERSID: u8 = b'Q';
    pub const REDUCE: u8 = b'R';
    pub const STRING: u8 = b'S';
    pub const BINSTRING: u8 = b'T';
    pub const SHORT_BINSTRING: u8 = b'U';
    pub const UNICODE: u8 = b'V';
    pub const BINUNICODE: u8 = b'X';
    pub const APPEND: u8 = b'a';
    pub const BUILD: u8 = b'b';
    pub const GLOBAL: u8 = b'c';
    pub const DICT: u8 = b'd';
    pub const EMPTY_DICT: u8 = b'}';
    pub const APPENDS: u8 = b'e';
    pub const GET: u8 = b'g';
    pub const BINGET: u8 = b'h';
    pub const INST: u8 = b'i';
    pub const LONG_BINGET: u8 = b'j';
    pub const LIST: u8 = b'l';
    pub const EMPTY_LIST: u8 = b']';
    pub const OBJ: u8 = b'o';
    pub const PUT: u8 = b'p';
    pub const BINPUT: u8 = b'q';
    pub const LONG_BINPUT: u8 = b'r';
    pub const SETITEM: u8 = b's';
    pub const TUPLE: u8 = b't';
    pub const EMPTY_TUPLE: u8 = b')';
    pub const SETITEMS: u8 = b'u';
    pub const BINFLOAT: u8 = b'G';
    pub const PROTO: u8 = 0x80;
    pub const NEWOBJ: u8 = 0x81;
    pub const EXT1: u8 = 0x82;
    pub const EXT2: u8 = 0x83;
    pub const EXT4: u8 = 0x84;
    pub const TUPLE1: u8 = 0x85;
    pub const TUPLE2: u8 = 0x86;
    pub const TUPLE3: u8 = 0x87;
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const LONG1: u8 = 0x8a;
    pub const LONG4: u8 = 0x8b;
    pub const BINBYTES: u8 = b'B';
    pub const SHORT_BINBYTES: u8 = b'C';
    pub const SHORT_BINUNICODE: u8 = 0x8c;
    pub const BINUNICODE8: u8 = 0x8d;
    pub const BINBYTES8: u8 = 0x8e;
    pub const EMPTY_SET: u8 = 0x8f;
    pub const ADDITEMS: u8 = 0x90;
    pub const FROZENSET: u8 = 0x91;
    pub const NEWOBJ_EX: u8 = 0x92;
    pub const STACK_GLOBAL: u8 = 0x93;
    pub const MEMOIZE: u8 = 0x94;
    pub const FRAME: u8 = 0x95;
    pub const BYTEARRAY8: u8 = 0x96;
    pub const NEXT_BUFFER: u8 = 0x97;
    pub const READONLY_BUFFER: u8 = 0x98;
}

// ---------------------------------------------------------------------------------------------
// Writing: CPython 3.11's C pickler at protocol 5, for plain data.
// ---------------------------------------------------------------------------------------------

/// The pickle of `v`, as CPython 3.11 `pickle.dumps(v, 5)` writes it (see the module docs for
/// when that is byte for byte).
pub fn dumps(v: &Value) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.save(v);
    enc.finish()
}

/// The pickle of the list `items` (a batch), without building a `Value::List` first.
fn dumps_list(items: &[Value]) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.opcode_boundary();
    enc.save_list(items);
    enc.finish()
}

/// CPython frames protocol-4+ pickles in chunks of about 64 KiB; a str/bytes payload of at least
/// that size is written outside any frame.
const FRAME_TARGET: usize = 64 * 1024;
/// A finished frame shorter than this loses its FRAME header (CPython's FRAME_SIZE_MIN).
const FRAME_MIN: usize = 4;
const FRAME_HEADER: usize = 9;
/// CPython appends/sets items in batches of this many (its BATCHSIZE).
const BATCH: usize = 1000;

/// Objects CPython shares by identity, so a second occurrence in one pickle is a memo GET.
#[derive(Hash, PartialEq, Eq)]
enum Singleton {
    Str(Option<char>),
    Bytes(Option<u8>),
}

struct Encoder {
    out: Vec<u8>,
    /// Where the open frame's (reserved) header starts.
    frame_start: Option<usize>,
    memo_len: u32,
    singletons: HashMap<Singleton, u32>,
}

impl Encoder {
    fn new() -> Encoder {
        Encoder { out: vec![op::PROTO, 5], frame_start: None, memo_len: 0, singletons: HashMap::new() }
    }

    fn finish(mut self) -> Vec<u8> {
        self.write(&[op::STOP]);
        self.commit_frame();
        self.out
    }

    fn write(&mut self, bytes: &[u8]) {
        if self.frame_start.is_none() {
            self.frame_start = Some(self.out.len());
            self.out.extend_from_slice(&[0; FRAME_HEADER]);
        }
        self.out.extend_from_slice(bytes);
    }

    fn commit_frame(&mut self) {
        let Some(start) = self.frame_start.take() else { return };
        let len = self.out.len() - start - FRAME_HEADER;
        if len >= FRAME_MIN {
            self.out[start] = op::FRAME;
            self.out[start + 1..start + FRAME_HEADER].copy_from_slice(&(len as u64).to_le_bytes());
        } else {
            self.out.drain(start..start + FRAME_HEADER);
        }
    }

    /// CPython checks, as it starts to save each object, whether the open frame is full.
    fn opcode_boundary(&mut self) {
        if let Some(start) = self.frame_start {
            if self.out.len() - start - FRAME_HEADER >= FRAME_TARGET {
                self.commit_frame();
            }
        }
    }

    /// A str/bytes/bytearray payload: large ones bypass framing, as CPython's
    /// `_Pickler_write_bytes` does.
    fn write_payload(&mut self, header: &[u8], payload: &[u8]) {
        if payload.len() >= FRAME_TARGET {
            self.commit_frame();
            self.out.extend_from_slice(header);
            self.out.extend_from_slice(payload);
        } else {
            self.write(header);
            self.write(payload);
        }
    }

    fn memoize(&mut self) -> u32 {
        self.write(&[op::MEMOIZE]);
        self.memo_len += 1;
        self.memo_len - 1
    }

    fn write_get(&mut self, idx: u32) {
        match u8::try_from(idx) {
            Ok(small) => self.write(&[op::BINGET, small]),
            Err(_) => {
                let mut b = vec![op::LONG_BINGET];
                b.extend_from_slice(&idx.to_le_bytes());
                self.write(&b);
            }
        }
    }

    fn save(&mut self, v: &Value) {
        self.opcode_boundary();
        match v {
            Value::None => self.write(&[op::NONE]),
            Value::Bool(true) => self.write(&[op::NEWTRUE]),
            Value::Bool(false) => self.write(&[op::NEWFALSE]),
            Value::Int(i) => self.save_int(*i),
            Value::BigInt(b) => self.save_long_bytes(&b.to_signed_bytes_le()),
            Value::Float(f) => {
                let mut b = vec![op::BINFLOAT];
                b.extend_from_slice(&f.to_be_bytes());
                self.write(&b);
            }
            Value::Str(s) => self.save_str(s),
            Value::Bytes(b) => self.save_bytes(b),
            Value::ByteArray(b) => {
                let mut header = vec![op::BYTEARRAY8];
                header.extend_from_slice(&(b.len() as u64).to_le_bytes());
                self.write_payload(&header, b);
                self.memoize();
            }
            Value::List(items) => self.save_list(items),
            Value::Tuple(items) => self.save_tuple(items),
            Value::Dict(pairs) => self.save_dict(pairs),
            Value::Set(items) => self.save_set(items),
            Value::FrozenSet(items) => {
                self.write(&[op::MARK]);
                for item in items {
                    self.save(item);
                }
                self.write(&[op::FROZENSET]);
                self.memoize();
            }
        }
    }

    fn save_int(&mut self, i: i64) {
        if (0..=0xff).contains(&i) {
            self.write(&[op::BININT1, i as u8]);
        } else if (0..=0xffff).contains(&i) {
            let mut b = vec![op::BININT2];
            b.extend_from_slice(&(i as u16).to_le_bytes());
            self.write(&b);
        } else if let Ok(small) = i32::try_from(i) {
            let mut b = vec![op::BININT];
            b.extend_from_slice(&small.to_le_bytes());
            self.write(&b);
        } else {
            self.save_long_bytes(&BigInt::from(i).to_signed_bytes_le());
        }
    }

    /// LONG1/LONG4 with the minimal two's-complement little-endian bytes (pickle's
    /// `encode_long`). Written inside the frame even when long: CPython does not bypass here.
    fn save_long_bytes(&mut self, bytes: &[u8]) {
        let mut b = Vec::with_capacity(bytes.len() + 5);
        match u8::try_from(bytes.len()) {
            Ok(n) => b.extend_from_slice(&[op::LONG1, n]),
            Err(_) => {
                b.push(op::LONG4);
                b.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
            }
        }
        b.extend_from_slice(bytes);
        self.write(&b);
    }

    fn save_str(&mut self, s: &str) {
        let mut chars = s.chars();
        let singleton = match (chars.next(), chars.next()) {
            (None, _) => Some(Singleton::Str(None)),
            (Some(c), None) if (c as u32) < 256 => Some(Singleton::Str(Some(c))),
            _ => None,
        };
        let n = s.len();
        let header = if n <= 0xff {
            vec![op::SHORT_BINUNICODE, n as u8]
        } else if n <= u32::MAX as usize {
            let mut h = vec![op::BINUNICODE];
            h.extend_from_slice(&(n as u32).to_le_bytes());
            h
        } else {
            let mut h = vec![op::BINUNICODE8];
            h.extend_from_slice(&(n as u64).to_le_bytes());
            h
        };
        self.save_memoized_payload(singleton, &header, s.as_bytes());
    }

    fn save_bytes(&mut self, b: &[u8]) {
        let singleton = match b {
            [] => Some(Singleton::Bytes(None)),
            [one] => Some(Singleton::Bytes(Some(*one))),
            _ => None,
        };
        let n = b.len();
        let header = if n <= 0xff {
            vec![op::SHORT_BINBYTES, n as u8]
        } else if n <= u32::MAX as usize {
            let mut h = vec![op::BINBYTES];
            h.extend_from_slice(&(n as u32).to_le_bytes());
            h
        } else {
            let mut h = vec![op::BINBYTES8];
            h.extend_from_slice(&(n as u64).to_le_bytes());
            h
        };
        self.save_memoized_payload(singleton, &header, b);
    }

    fn save_memoized_payload(&mut self, singleton: Option<Singleton>, header: &[u8], payload: &[u8]) {
        if let Some(idx) = singleton.as_ref().and_then(|s| self.singletons.get(s)) {
            let idx = *idx;
            self.write_get(idx);
            return;
        }
        self.write_payload(header, payload);
        let idx = self.memoize();
        if let Some(s) = singleton {
            self.singletons.insert(s, idx);
        }
    }

    fn save_tuple(&mut self, items: &[Value]) {
        if items.is_empty() {
            // The empty tuple is a singleton CPython never memoizes.
            self.write(&[op::EMPTY_TUPLE]);
            return;
        }
        if items.len() <= 3 {
            for item in items {
                self.save(item);
            }
            self.write(&[op::TUPLE1 + items.len() as u8 - 1]);
        } else {
            self.write(&[op::MARK]);
            for item in items {
                self.save(item);
            }
            self.write(&[op::TUPLE]);
        }
        self.memoize();
    }

    fn save_list(&mut self, items: &[Value]) {
        self.write(&[op::EMPTY_LIST]);
        self.memoize();
        if let [one] = items {
            self.save(one);
            self.write(&[op::APPEND]);
            return;
        }
        for chunk in items.chunks(BATCH) {
            self.write(&[op::MARK]);
            for item in chunk {
                self.save(item);
            }
            self.write(&[op::APPENDS]);
        }
    }

    fn save_dict(&mut self, pairs: &[(Value, Value)]) {
        self.write(&[op::EMPTY_DICT]);
        self.memoize();
        if let [(k, v)] = pairs {
            self.save(k);
            self.save(v);
            self.write(&[op::SETITEM]);
            return;
        }
        if pairs.is_empty() {
            return;
        }
        for chunk in pairs.chunks(BATCH) {
            self.write(&[op::MARK]);
            for (k, v) in chunk {
                self.save(k);
                self.save(v);
            }
            self.write(&[op::SETITEMS]);
        }
        // CPython's dict loop is a do-while that stops after a short batch, so a size that is a
        // multiple of BATCH ends in one extra, empty MARK SETITEMS.
        if pairs.len() % BATCH == 0 {
            self.write(&[op::MARK, op::SETITEMS]);
        }
    }

    fn save_set(&mut self, items: &[Value]) {
        self.write(&[op::EMPTY_SET]);
        self.memoize();
        if items.is_empty() {
            return;
        }
        for chunk in items.chunks(BATCH) {
            self.write(&[op::MARK]);
            for item in chunk {
                self.save(item);
            }
            self.write(&[op::ADDITEMS]);
        }
        // Same do-while shape as dicts.
        if items.len() % BATCH == 0 {
            self.write(&[op::MARK, op::ADDITEMS]);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Reading: any protocol 0-5 pickle of plain data.
// ---------------------------------------------------------------------------------------------

/// Unpickle one plain-data value. Reads every protocol (0-5) and what pyspark, CPython 3.11
/// and Spark's JVM (Pyrolite, protocol 2) write for plain data, with Python's semantics for
/// shared references and duplicate dict keys. Python 2 `str` (STRING opcodes) becomes bytes,
/// as pyspark unpickles with `encoding="bytes"`. Stricter than `pickle.loads` in one way:
/// bytes after STOP are an error, since a frame holds exactly one pickle.
pub fn loads(bytes: &[u8]) -> Result<Value> {
    Decoder::new(bytes).run()
}

type NodeId = usize;

/// One Python object under construction. Containers refer to their items by id, so a memo GET
/// or DUP shares the object, and a later APPEND to it is seen by every holder, as in Python.
enum Kind {
    Atom(Value),
    List(Vec<NodeId>),
    Tuple(Vec<NodeId>),
    Dict(Vec<(NodeId, NodeId)>),
    Set(Vec<NodeId>),
    FrozenSet(Vec<NodeId>),
    /// A global reference; plain data only calls a few (set, frozenset, bytearray, bytes,
    /// _codecs.encode) through REDUCE.
    Global { module: String, name: String },
    /// Moved out into the finished value.
    Taken,
}

impl Kind {
    fn child_count(&self) -> usize {
        match self {
            Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c.len(),
            Kind::Dict(pairs) => 2 * pairs.len(),
            Kind::Atom(_) | Kind::Global { .. } | Kind::Taken => 0,
        }
    }

    fn child(&self, i: usize) -> NodeId {
        match self {
            Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c[i],
            Kind::Dict(pairs) => {
                let (k, v) = pairs[i / 2];
                if i % 2 == 0 {
                    k
                } else {
                    v
                }
            }
            Kind::Atom(_) | Kind::Global { .. } | Kind::Taken => unreachable!("no children"),
        }
    }
}

struct Node {
    kind: Kind,
    /// Byte offset of the opcode that created it, for messages.
    at: usize,
}

#[derive(Clone, Copy)]
enum Seen {
    No,
    Active,
    Done { height: usize, cost: u64 },
}

struct Decoder<'a> {
    bytes: &'a [u8],
    pos: usize,
    nodes: Vec<Node>,
    stack: Vec<NodeId>,
    /// Stack lengths at each MARK (Python's metastack).
    marks: Vec<usize>,
    memo: HashMap<u64, NodeId>,
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder { bytes, pos: 0, nodes: Vec::new(), stack: Vec::new(), marks: Vec::new(), memo: HashMap::new() }
    }

    // -- reading arguments; every length is checked against what is left --

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        if self.bytes.len() - self.pos < n {
            return Err(PickleError::Truncated { at: self.pos, what });
        }
        let s = &self.bytes[self.pos..self.pos + n];
        self.pos += n;
        Ok(s)
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.take(1, what)?[0])
    }

    fn fixed<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        Ok(self.take(N, what)?.try_into().expect("length checked"))
    }

    fn len_u64(&mut self, what: &'static str) -> Result<usize> {
        let n = u64::from_le_bytes(self.fixed(what)?);
        // A length past the end is truncation, whatever its size; never allocate from it.
        usize::try_from(n).map_err(|_| PickleError::Truncated { at: self.pos, what })
    }

    fn line(&mut self, what: &'static str) -> Result<&'a [u8]> {
        let rest = &self.bytes[self.pos..];
        let n = rest.iter().position(|&b| b == b'\n').ok_or(PickleError::Truncated { at: self.pos, what })?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    // -- the stack --

    fn malformed<T>(&self, at: usize, what: impl Into<String>) -> Result<T> {
        Err(PickleError::Malformed { at, what: what.into() })
    }

    fn new_node(&mut self, kind: Kind, at: usize) -> NodeId {
        self.nodes.push(Node { kind, at });
        self.nodes.len() - 1
    }

    fn push(&mut self, kind: Kind, at: usize) {
        let id = self.new_node(kind, at);
        self.stack.push(id);
    }

    fn push_atom(&mut self, v: Value, at: usize) {
        self.push(Kind::Atom(v), at);
    }

    fn frame_base(&self) -> usize {
        self.marks.last().copied().unwrap_or(0)
    }

    fn pop(&mut self, at: usize) -> Result<NodeId> {
        if self.stack.len() <= self.frame_base() {
            return self.malformed(at, "stack underflow (an opcode needs a value the pickle never pushed)");
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top(&self, at: usize) -> Result<NodeId> {
        if self.stack.len() <= self.frame_base() {
            return self.malformed(at, "stack underflow (an opcode needs a value the pickle never pushed)");
        }
        Ok(*self.stack.last().expect("checked non-empty"))
    }

    fn pop_mark(&mut self, at: usize) -> Result<Vec<NodeId>> {
        let Some(base) = self.marks.pop() else {
            return self.malformed(at, "an opcode needs a MARK and there is none");
        };
        Ok(self.stack.split_off(base))
    }

    fn memo_put(&mut self, key: u64, at: usize) -> Result<()> {
        let top = self.top(at)?;
        self.memo.insert(key, top);
        Ok(())
    }

    fn memo_get(&mut self, key: u64, at: usize) -> Result<()> {
        match self.memo.get(&key) {
            Some(&id) => {
                self.stack.push(id);
                Ok(())
            }
            None => self.malformed(at, format!("memo key {key} was never stored")),
        }
    }

    /// The container on top of the stack, for APPEND/SETITEM/ADDITEMS.
    fn target(&mut self, at: usize) -> Result<&mut Kind> {
        let id = self.top(at)?;
        Ok(&mut self.nodes[id].kind)
    }

    fn kind_name(&self, id: NodeId) -> &'static str {
        match &self.nodes[id].kind {
            Kind::Atom(v) => v.type_name(),
            Kind::List(_) => "list",
            Kind::Tuple(_) => "tuple",
            Kind::Dict(_) => "dict",
            Kind::Set(_) => "set",
            Kind::FrozenSet(_) => "frozenset",
            Kind::Global { .. } => "global",
            Kind::Taken => "taken",
        }
    }

    // -- the opcode loop --

    fn run(mut self) -> Result<Value> {
        loop {
            let at = self.pos;
            let code = self.u8("an opcode (the pickle has no STOP)")?;
            match code {
                op::PROTO => {
                    let v = self.u8("the protocol number")?;
                    if v > 5 {
                        return self.malformed(at, format!("unsupported pickle protocol {v} (CPython 3.11 reads 0-5)"));
                    }
                }
                op::FRAME => {
                    let n = self.len_u64("a FRAME length")?;
                    if n > self.bytes.len() - self.pos {
                        return Err(PickleError::Truncated { at, what: "a FRAME's announced contents" });
                    }
                }
                op::STOP => {
                    let root = self.pop(at)?;
                    if self.pos != self.bytes.len() {
                        return Err(PickleError::TrailingBytes { at, len: self.bytes.len() - self.pos });
                    }
                    return self.finish(root);
                }
                op::MARK => self.marks.push(self.stack.len()),
                op::POP => {
                    if self.stack.len() > self.frame_base() {
                        self.stack.pop();
                    } else {
                        self.pop_mark(at)?;
                    }
                }
                op::POP_MARK => {
                    self.pop_mark(at)?;
                }
                op::DUP => {
                    let top = self.top(at)?;
                    self.stack.push(top);
                }

                op::PUT => {
                    let key = self.line("a PUT key")?;
                    let Some(key) = parse_ascii::<u64>(key) else {
                        return self.malformed(at, "PUT key is not a non-negative integer");
                    };
                    self.memo_put(key, at)?;
                }
                op::BINPUT => {
                    let key = self.u8("a BINPUT key")?;
                    self.memo_put(key.into(), at)?;
                }
                op::LONG_BINPUT => {
                    let key = u32::from_le_bytes(self.fixed("a LONG_BINPUT key")?);
                    self.memo_put(key.into(), at)?;
                }
                op::MEMOIZE => {
                    let key = self.memo.len() as u64;
                    self.memo_put(key, at)?;
                }
                op::GET => {
                    let key = self.line("a GET key")?;
                    let Some(key) = parse_ascii::<u64>(key) else {
                        return self.malformed(at, "GET key is not a non-negative integer");
                    };
                    self.memo_get(key, at)?;
                }
                op::BINGET => {
                    let key = self.u8("a BINGET key")?;
                    self.memo_get(key.into(), at)?;
                }
                op::LONG_BINGET => {
                    let key = u32::from_le_bytes(self.fixed("a LONG_BINGET key")?);
                    self.memo_get(key.into(), at)?;
                }

                op::NONE => self.push_atom(Value::None, at),
                op::NEWTRUE => self.push_atom(Value::Bool(true), at),
                op::NEWFALSE => self.push_atom(Value::Bool(false), at),
                op::INT => {
                    // Protocol 0 spells booleans as INT 01 / 00.
                    let v = match self.line("an INT")? {
                        b"01" => Value::Bool(true),
                        b"00" => Value::Bool(false),
                        text => self.parse_int(text, at)?,
                    };
                    self.push_atom(v, at);
                }
                op::LONG => {
                    let text = self.line("a LONG")?;
                    let text = text.strip_suffix(b"L").unwrap_or(text);
                    let v = self.parse_int(text, at)?;
                    self.push_atom(v, at);
                }
                op::FLOAT => {
                    let text = self.line("a FLOAT")?;
                    let Some(f) = parse_ascii::<f64>(text) else {
                        return self.malformed(at, format!("FLOAT {:?} is not a number", String::from_utf8_lossy(text)));
                    };
                    self.push_atom(Value::Float(f), at);
                }
                op::BININT => {
                    let v = i32::from_le_bytes(self.fixed("a BININT")?);
                    self.push_atom(Value::Int(v.into()), at);
                }
                op::BININT1 => {
                    let v = self.u8("a BININT1")?;
                    self.push_atom(Value::Int(v.into()), at);
                }
                op::BININT2 => {
                    let v = u16::from_le_bytes(self.fixed("a BININT2")?);
                    self.push_atom(Value::Int(v.into()), at);
                }
                op::LONG1 => {
                    let n = self.u8("a LONG1 length")?;
                    let b = self.take(n.into(), "a LONG1's bytes")?;
                    self.push_atom(Value::int(BigInt::from_signed_bytes_le(b)), at);
                }
                op::LONG4 => {
                    let n = i32::from_le_bytes(self.fixed("a LONG4 length")?);
                    let Ok(n) = usize::try_from(n) else {
                        return self.malformed(at, "LONG4 with a negative byte count");
                    };
                    let b = self.take(n, "a LONG4's bytes")?;
                    self.push_atom(Value::int(BigInt::from_signed_bytes_le(b)), at);
                }
                op::BINFLOAT => {
                    let v = f64::from_be_bytes(self.fixed("a BINFLOAT")?);
                    self.push_atom(Value::Float(v), at);
                }

                op::STRING => {
                    let text = self.line("a STRING")?;
                    let v = match text {
                        [q, inner @ .., q2] if q == q2 && (*q == b'\'' || *q == b'"') => escape_decode(inner),
                        _ => return self.malformed(at, "the STRING opcode argument must be quoted"),
                    };
                    self.push_atom(Value::Bytes(v), at);
                }
                op::BINSTRING => {
                    let n = i32::from_le_bytes(self.fixed("a BINSTRING length")?);
                    let Ok(n) = usize::try_from(n) else {
                        return self.malformed(at, "BINSTRING with a negative length");
                    };
                    let b = self.take(n, "a BINSTRING's bytes")?.to_vec();
                    self.push_atom(Value::Bytes(b), at);
                }
                op::SHORT_BINSTRING => {
                    let n = self.u8("a SHORT_BINSTRING length")?;
                    let b = self.take(n.into(), "a SHORT_BINSTRING's bytes")?.to_vec();
                    self.push_atom(Value::Bytes(b), at);
                }
                op::UNICODE => {
                    let text = self.line("a UNICODE")?;
                    let s = raw_unicode_escape_decode(text).or_else(|e| self.malformed(at, e))?;
                    self.push_atom(Value::Str(s), at);
                }
                op::SHORT_BINUNICODE => {
                    let n = self.u8("a SHORT_BINUNICODE length")?;
                    let b = self.take(n.into(), "a SHORT_BINUNICODE's bytes")?;
                    let s = utf8(b, at)?;
                    self.push_atom(Value::Str(s), at);
                }
                op::BINUNICODE => {
                    let n = u32::from_le_bytes(self.fixed("a BINUNICODE length")?);
                    let b = self.take(n as usize, "a BINUNICODE's bytes")?;
                    let s = utf8(b, at)?;
                    self.push_atom(Value::Str(s), at);
                }
                op::BINUNICODE8 => {
                    let n = self.len_u64("a BINUNICODE8 length")?;
                    let b = self.take(n, "a BINUNICODE8's bytes")?;
                    let s = utf8(b, at)?;
                    self.push_atom(Value::Str(s), at);
                }
                op::SHORT_BINBYTES => {
                    let n = self.u8("a SHORT_BINBYTES length")?;
                    let b = self.take(n.into(), "a SHORT_BINBYTES's bytes")?.to_vec();
                    self.push_atom(Value::Bytes(b), at);
                }
                op::BINBYTES => {
                    let n = u32::from_le_bytes(self.fixed("a BINBYTES length")?);
                    let b = self.take(n as usize, "a BINBYTES's bytes")?.to_vec();
                    self.push_atom(Value::Bytes(b), at);
                }
                op::BINBYTES8 => {
                    let n = self.len_u64("a BINBYTES8 length")?;
                    let b = self.take(n, "a BINBYTES8's bytes")?.to_vec();
                    self.push_atom(Value::Bytes(b), at);
                }
                op::BYTEARRAY8 => {
                    let n = self.len_u64("a BYTEARRAY8 length")?;
                    let b = self.take(n, "a BYTEARRAY8's bytes")?.to_vec();
                    self.push_atom(Value::ByteArray(b), at);
                }

                op::EMPTY_TUPLE => self.push(Kind::Tuple(Vec::new()), at),
                op::TUPLE1 | op::TUPLE2 | op::TUPLE3 => {
                    let n = usize::from(code - op::TUPLE1) + 1;
                    if self.stack.len() < self.frame_base() + n {
                        return self.malformed(at, format!("TUPLE{n} needs {n} values on the stack"));
                    }
                    let items = self.stack.split_off(self.stack.len() - n);
                    self.push(Kind::Tuple(items), at);
                }
                op::TUPLE => {
                    let items = self.pop_mark(at)?;
                    self.push(Kind::Tuple(items), at);
                }
                op::EMPTY_LIST => self.push(Kind::List(Vec::new()), at),
                op::LIST => {
                    let items = self.pop_mark(at)?;
                    self.push(Kind::List(items), at);
                }
                op::APPEND => {
                    let item = self.pop(at)?;
                    let list = self.top(at)?;
                    match &mut self.nodes[list].kind {
                        Kind::List(items) => items.push(item),
                        _ => return self.malformed(at, format!("APPEND to a {}", self.kind_name(list))),
                    }
                }
                op::APPENDS => {
                    let new = self.pop_mark(at)?;
                    let list = self.top(at)?;
                    match &mut self.nodes[list].kind {
                        Kind::List(items) => items.extend(new),
                        _ => return self.malformed(at, format!("APPENDS to a {}", self.kind_name(list))),
                    }
                }
                op::EMPTY_DICT => self.push(Kind::Dict(Vec::new()), at),
                op::DICT => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs_of(items).or_else(|_| self.malformed(at, "DICT with an odd number of items"))?;
                    self.push(Kind::Dict(pairs), at);
                }
                op::SETITEM => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let dict = self.top(at)?;
                    match self.target(at)? {
                        Kind::Dict(pairs) => pairs.push((k, v)),
                        _ => return self.malformed(at, format!("SETITEM on a {}", self.kind_name(dict))),
                    }
                }
                op::SETITEMS => {
                    let items = self.pop_mark(at)?;
                    let new = pairs_of(items).or_else(|_| self.malformed(at, "SETITEMS with an odd number of items"))?;
                    let dict = self.top(at)?;
                    match self.target(at)? {
                        Kind::Dict(pairs) => pairs.extend(new),
                        _ => return self.malformed(at, format!("SETITEMS on a {}", self.kind_name(dict))),
                    }
                }
                op::EMPTY_SET => self.push(Kind::Set(Vec::new()), at),
                op::ADDITEMS => {
                    let new = self.pop_mark(at)?;
                    let set = self.top(at)?;
                    match self.target(at)? {
                        Kind::Set(items) => items.extend(new),
                        _ => return self.malformed(at, format!("ADDITEMS on a {}", self.kind_name(set))),
                    }
                }
                op::FROZENSET => {
                    let items = self.pop_mark(at)?;
                    self.push(Kind::FrozenSet(items), at);
                }

                op::GLOBAL => {
                    let module = String::from_utf8_lossy(self.line("a GLOBAL module")?).into_owned();
                    let name = String::from_utf8_lossy(self.line("a GLOBAL name")?).into_owned();
                    self.push(Kind::Global { module, name }, at);
                }
                op::STACK_GLOBAL => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    match (&self.nodes[module].kind, &self.nodes[name].kind) {
                        (Kind::Atom(Value::Str(m)), Kind::Atom(Value::Str(n))) => {
                            let (module, name) = (m.clone(), n.clone());
                            self.push(Kind::Global { module, name }, at);
                        }
                        _ => return self.malformed(at, "STACK_GLOBAL needs two str values"),
                    }
                }
                op::REDUCE => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    let kind = self.reduce(callable, args, at)?;
                    self.push(kind, at);
                }

                op::INST | op::OBJ | op::NEWOBJ | op::NEWOBJ_EX | op::BUILD | op::EXT1 | op::EXT2 | op::EXT4
                | op::PERSID | op::BINPERSID | op::NEXT_BUFFER | op::READONLY_BUFFER => {
                    return Err(PickleError::NotPlainOpcode { at, name: opcode_name(code) });
                }
                other => return Err(PickleError::UnknownOpcode { at, opcode: other }),
            }
        }
    }

    fn parse_int(&self, text: &[u8], at: usize) -> Result<Value> {
        match parse_ascii::<BigInt>(text) {
            Some(i) => Ok(Value::int(i)),
            None => self.malformed(at, format!("{:?} is not a decimal integer", String::from_utf8_lossy(text))),
        }
    }

    /// The few calls plain data needs: protocols < 4 spell set/frozenset as `set([...])`,
    /// protocols < 3 spell bytes as `_codecs.encode(str, 'latin1')`, protocols < 5 spell
    /// bytearray as `bytearray(bytes)`, and Pyrolite (Spark's JVM) writes Java byte[] as
    /// `bytearray(str, 'latin-1')`.
    fn reduce(&self, callable: NodeId, args: NodeId, at: usize) -> Result<Kind> {
        let Kind::Global { module, name } = &self.nodes[callable].kind else {
            return self.malformed(at, format!("REDUCE calls a {}", self.kind_name(callable)));
        };
        let Kind::Tuple(args) = &self.nodes[args].kind else {
            return self.malformed(at, format!("REDUCE arguments are a {}, not a tuple", self.kind_name(args)));
        };
        let builtin = module == "builtins" || module == "__builtin__";
        let not_plain = || PickleError::NotPlainGlobal { at, module: module.clone(), name: name.clone() };
        let atom = |i: usize| match args.get(i).map(|&id| &self.nodes[id].kind) {
            Some(Kind::Atom(v)) => Some(v),
            _ => None,
        };
        match (builtin, name.as_str(), args.len()) {
            (true, "set" | "frozenset", 0) => {
                Ok(if name == "set" { Kind::Set(Vec::new()) } else { Kind::FrozenSet(Vec::new()) })
            }
            (true, "set" | "frozenset", 1) => {
                // set(iterable) copies the items now; later changes to the list do not show.
                let items = match &self.nodes[args[0]].kind {
                    Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c.clone(),
                    _ => return self.malformed(at, format!("{name}() of a {}", self.kind_name(args[0]))),
                };
                Ok(if name == "set" { Kind::Set(items) } else { Kind::FrozenSet(items) })
            }
            (true, "bytes", 0) => Ok(Kind::Atom(Value::Bytes(Vec::new()))),
            (true, "bytearray", 0) => Ok(Kind::Atom(Value::ByteArray(Vec::new()))),
            (true, "bytes" | "bytearray", 1 | 2) => {
                let data = match (atom(0), atom(1)) {
                    (Some(Value::Bytes(b) | Value::ByteArray(b)), None) if args.len() == 1 => b.clone(),
                    (Some(Value::Str(s)), Some(Value::Str(enc))) => encode_str(s, enc).or_else(|e| self.malformed(at, e))?,
                    _ => return self.malformed(at, format!("{name}() with arguments fakejvm does not read")),
                };
                Ok(Kind::Atom(if name == "bytes" { Value::Bytes(data) } else { Value::ByteArray(data) }))
            }
            _ if module == "_codecs" && name == "encode" => match (atom(0), atom(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc))) if args.len() == 2 => {
                    Ok(Kind::Atom(Value::Bytes(encode_str(s, enc).or_else(|e| self.malformed(at, e))?)))
                }
                _ => self.malformed(at, "_codecs.encode with arguments other than (str, encoding)"),
            },
            _ => Err(not_plain()),
        }
    }

    // -- from the object graph to owned values --

    fn finish(mut self, root: NodeId) -> Result<Value> {
        let mut seen = vec![Seen::No; self.nodes.len()];
        let mut refs = vec![0u32; self.nodes.len()];
        refs[root] = 1;
        self.measure(root, 0, &mut seen, &mut refs)?;
        let mut cache = HashMap::new();
        self.build(root, &refs, &mut cache)
    }

    /// First pass: reject cycles, nesting past MAX_DEPTH, non-plain globals and exponential
    /// expansion before allocating anything, and count how often each object is used so the
    /// second pass copies only shared ones. Recursion depth is bounded by MAX_DEPTH.
    fn measure(&self, id: NodeId, above: usize, seen: &mut [Seen], refs: &mut [u32]) -> Result<(usize, u64)> {
        const VALUE_SIZE: u64 = std::mem::size_of::<Value>() as u64;
        let node = &self.nodes[id];
        match seen[id] {
            Seen::Done { height, cost } => {
                if above + height > MAX_DEPTH {
                    return Err(PickleError::TooDeep { at: node.at });
                }
                return Ok((height, cost));
            }
            Seen::Active => return Err(PickleError::Recursive { at: node.at }),
            Seen::No => {}
        }
        let (height, cost) = match &node.kind {
            Kind::Atom(v) => {
                let payload = match v {
                    Value::Str(s) => s.len(),
                    Value::Bytes(b) | Value::ByteArray(b) => b.len(),
                    _ => 0,
                };
                (0, VALUE_SIZE + payload as u64)
            }
            Kind::Global { module, name } => {
                return Err(PickleError::NotPlainGlobal { at: node.at, module: module.clone(), name: name.clone() });
            }
            Kind::Taken => return self.malformed(node.at, "internal: object used before it was built"),
            container => {
                if above + 1 > MAX_DEPTH {
                    return Err(PickleError::TooDeep { at: node.at });
                }
                seen[id] = Seen::Active;
                let (mut height, mut cost) = (0, VALUE_SIZE);
                for i in 0..container.child_count() {
                    let child = container.child(i);
                    refs[child] = refs[child].saturating_add(1);
                    let (h, c) = self.measure(child, above + 1, seen, refs)?;
                    height = height.max(h);
                    cost = cost.saturating_add(c);
                }
                (height + 1, cost)
            }
        };
        if cost > MAX_EXPANDED_BYTES {
            return Err(PickleError::TooLarge);
        }
        seen[id] = Seen::Done { height, cost };
        Ok((height, cost))
    }

    /// Second pass: build each object once; an object used n > 1 times is kept until its
    /// n-th use, which takes it. Recursion depth is bounded by the first pass.
    fn build(&mut self, id: NodeId, refs: &[u32], cache: &mut HashMap<NodeId, (Value, u32)>) -> Result<Value> {
        if let Some((value, left)) = cache.get_mut(&id) {
            *left -= 1;
            if *left == 0 {
                return Ok(cache.remove(&id).expect("present").0);
            }
            return Ok(value.clone());
        }
        let at = self.nodes[id].at;
        let kind = std::mem::replace(&mut self.nodes[id].kind, Kind::Taken);
        let mut build_all = |ids: Vec<NodeId>, this: &mut Self| -> Result<Vec<Value>> {
            ids.into_iter().map(|c| this.build(c, refs, cache)).collect()
        };
        let value = match kind {
            Kind::Atom(v) => v,
            Kind::List(ids) => Value::List(build_all(ids, self)?),
            Kind::Tuple(ids) => Value::Tuple(build_all(ids, self)?),
            Kind::Set(ids) => Value::Set(dedupe_set(build_all(ids, self)?).map_err(|type_name| PickleError::Unhashable { at, type_name })?),
            Kind::FrozenSet(ids) => {
                Value::FrozenSet(dedupe_set(build_all(ids, self)?).map_err(|type_name| PickleError::Unhashable { at, type_name })?)
            }
            Kind::Dict(pairs) => {
                let mut built = Vec::with_capacity(pairs.len());
                for (k, v) in pairs {
                    let k = self.build(k, refs, cache)?;
                    let v = self.build(v, refs, cache)?;
                    built.push((k, v));
                }
                Value::Dict(dedupe_dict(built).map_err(|type_name| PickleError::Unhashable { at, type_name })?)
            }
            Kind::Global { .. } | Kind::Taken => return self.malformed(at, "internal: object built twice"),
        };
        if refs[id] > 1 {
            cache.insert(id, (value.clone(), refs[id] - 1));
        }
        Ok(value)
    }
}

fn opcode_name(code: u8) -> &'static str {
    match code {
        op::INST => "INST",
        op::OBJ => "OBJ",
        op::NEWOBJ => "NEWOBJ",
        op::NEWOBJ_EX => "NEWOBJ_EX",
        op::BUILD => "BUILD",
        op::EXT1 => "EXT1",
        op::EXT2 => "EXT2",
        op::EXT4 => "EXT4",
        op::PERSID => "PERSID",
        op::BINPERSID => "BINPERSID",
        op::NEXT_BUFFER => "NEXT_BUFFER (out-of-band buffer)",
        op::READONLY_BUFFER => "READONLY_BUFFER (out-of-band buffer)",
        _ => "?",
    }
}

fn pairs_of(items: Vec<NodeId>) -> Result<Vec<(NodeId, NodeId)>, ()> {
    if items.len() % 2 != 0 {
        return Err(());
    }
    Ok(items.chunks(2).map(|p| (p[0], p[1])).collect())
}

fn parse_ascii<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// Pickled str payloads are UTF-8 written with "surrogatepass", so a lone surrogate (legal in
/// a Python str, impossible in a Rust String) arrives as ED A0..BF xx.
fn utf8(b: &[u8], at: usize) -> Result<String> {
    match std::str::from_utf8(b) {
        Ok(s) => Ok(s.to_owned()),
        Err(e) => {
            let bad = e.valid_up_to();
            let what = if b.get(bad) == Some(&0xed) && b.get(bad + 1).is_some_and(|&c| c >= 0xa0) {
                "a str holding a lone surrogate (U+D800-U+DFFF), which fakejvm values cannot hold"
            } else {
                "a str whose bytes are not UTF-8"
            };
            Err(PickleError::Malformed { at, what: format!("{what} (byte {bad} of the str)") })
        }
    }
}

fn encode_str(s: &str, encoding: &str) -> Result<Vec<u8>, String> {
    match encoding.to_ascii_lowercase().replace('_', "-").as_str() {
        "latin1" | "latin-1" | "iso-8859-1" | "iso8859-1" => s
            .chars()
            .map(|c| u8::try_from(c as u32).map_err(|_| format!("{c:?} is not latin-1")))
            .collect(),
        "utf8" | "utf-8" => Ok(s.as_bytes().to_vec()),
        other => Err(format!("encoding {other:?} is not one plain-data pickles use")),
    }
}

/// Python's `codecs.escape_decode`, for protocol-0 STRING arguments.
fn escape_decode(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' || i + 1 == s.len() {
            out.push(s[i]);
            i += 1;
            continue;
        }
        let c = s[i + 1];
        i += 2;
        match c {
            b'\n' => {}
            b'\\' | b'\'' | b'"' => out.push(c),
            b'a' => out.push(7),
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                let mut digits = 1;
                while digits < 3 && i < s.len() && (b'0'..=b'7').contains(&s[i]) {
                    v = v * 8 + u32::from(s[i] - b'0');
                    i += 1;
                    digits += 1;
                }
                out.push(v as u8);
            }
            b'x' if i + 2 <= s.len() && s[i..i + 2].iter().all(u8::is_ascii_hexdigit) => {
                out.push(u8::from_str_radix(std::str::from_utf8(&s[i..i + 2]).expect("hex digits"), 16).expect("hex"));
                i += 2;
            }
            _ => out.extend_from_slice(&[b'\\', c]),
        }
    }
    out
}

/// Python's raw-unicode-escape decoding, for protocol-0 UNICODE arguments: latin-1 bytes, with
/// \uXXXX and \UXXXXXXXX escapes when the backslash is not itself escaped.
fn raw_unicode_escape_decode(s: &[u8]) -> Result<String, String> {
    let mut out = String::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        if s[i] != b'\\' {
            out.push(char::from(s[i]));
            i += 1;
            continue;
        }
        let run = s[i..].iter().take_while(|&&b| b == b'\\').count();
        for _ in 0..run - 1 {
            out.push('\\');
        }
        i += run - 1;
        let digits = match s.get(i + 1) {
            Some(b'u') if run % 2 == 1 => 4,
            Some(b'U') if run % 2 == 1 => 8,
            _ => {
                out.push('\\');
                i += 1;
                continue;
            }
        };
        let hex = s.get(i + 2..i + 2 + digits).ok_or("truncated \\u escape in UNICODE")?;
        let code = std::str::from_utf8(hex).ok().and_then(|h| u32::from_str_radix(h, 16).ok()).ok_or("bad \\u escape in UNICODE")?;
        out.push(char::from_u32(code).ok_or("UNICODE holds a lone surrogate or a code point past U+10FFFF")?);
        i += 2 + digits;
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// Python equality for dict keys and set members.
// ---------------------------------------------------------------------------------------------

/// What Python's hash/eq sees: 1 == 1.0 == True; NaN equals nothing; frozensets ignore order.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
enum HashKey {
    None,
    Int(BigInt),
    Float(u64),
    Nan(usize),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<HashKey>),
    FrozenSet(Vec<HashKey>),
}

fn hash_key(v: &Value, nans: &mut usize) -> Result<HashKey, &'static str> {
    Ok(match v {
        Value::None => HashKey::None,
        Value::Bool(b) => HashKey::Int(BigInt::from(u8::from(*b))),
        Value::Int(i) => HashKey::Int(BigInt::from(*i)),
        Value::BigInt(b) => HashKey::Int(b.clone()),
        Value::Float(f) if f.is_nan() => {
            *nans += 1;
            HashKey::Nan(*nans)
        }
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => HashKey::Int(integral_f64(*f)),
        Value::Float(f) => HashKey::Float(f.to_bits()),
        Value::Str(s) => HashKey::Str(s.clone()),
        Value::Bytes(b) => HashKey::Bytes(b.clone()),
        Value::Tuple(items) => HashKey::Tuple(items.iter().map(|i| hash_key(i, nans)).collect::<Result<_, _>>()?),
        Value::FrozenSet(items) => {
            let mut keys = items.iter().map(|i| hash_key(i, nans)).collect::<Result<Vec<_>, _>>()?;
            keys.sort();
            keys.dedup();
            HashKey::FrozenSet(keys)
        }
        other => return Err(other.type_name()),
    })
}

/// An integral, finite float as the exact integer it equals.
fn integral_f64(f: f64) -> BigInt {
    if f.abs() < 9.0e18 {
        return BigInt::from(f as i64);
    }
    // |f| >= 2^63: mantissa * 2^exponent with exponent > 0.
    let bits = f.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as usize - 1075;
    let mantissa = (bits & ((1 << 52) - 1)) | (1 << 52);
    let magnitude = BigInt::from(mantissa) << exponent;
    if f < 0.0 {
        -magnitude
    } else {
        magnitude
    }
}

/// Python's dict insertion: a repeated key keeps its first key object and position, and takes
/// the last value. Err names an unhashable key's type.
fn dedupe_dict(pairs: Vec<(Value, Value)>) -> Result<Vec<(Value, Value)>, &'static str> {
    let mut nans = 0;
    let mut index: HashMap<HashKey, usize> = HashMap::with_capacity(pairs.len());
    let mut out: Vec<(Value, Value)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match index.entry(hash_key(&k, &mut nans)?) {
            std::collections::hash_map::Entry::Occupied(e) => out[*e.get()].1 = v,
            std::collections::hash_map::Entry::Vacant(e) => {
                e.insert(out.len());
                out.push((k, v));
            }
        }
    }
    Ok(out)
}

/// Python's set insertion: a repeated member keeps the first.
fn dedupe_set(items: Vec<Value>) -> Result<Vec<Value>, &'static str> {
    let mut nans = 0;
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if seen.insert(hash_key(&item, &mut nans)?) {
            out.push(item);
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// JSON, as scenario files spell values.
// ---------------------------------------------------------------------------------------------

/// A value from its JSON spelling. Plain JSON: null, bool, integer (beyond i64 too, up to
/// u64), float, string, array (list), object (dict with str keys). An object with exactly one
/// key starting with `$` is a tagged form: `{"$tuple": [..]}`, `{"$bytes": "<hex>"}`,
/// `{"$bytearray": "<hex>"}`, `{"$float": "nan"|"inf"|"-inf"}`, `{"$int": "<decimal>"}`,
/// `{"$dict": [[k, v], ..]}` (any hashable keys), `{"$set": [..]}`, `{"$frozenset": [..]}`.
/// Dicts and sets follow Python: a repeated key keeps the last value.
pub fn value_from_json(v: &serde_json::Value) -> Result<Value> {
    from_json(v, &mut String::new(), 0)
}

fn json_err<T>(path: &str, what: impl Into<String>) -> Result<T> {
    let path = if path.is_empty() { "the top level".to_owned() } else { path.to_owned() };
    Err(PickleError::Json { path, what: what.into() })
}

fn with_segment<T>(path: &mut String, segment: &str, f: impl FnOnce(&mut String) -> T) -> T {
    let len = path.len();
    path.push('/');
    // JSON Pointer escaping, so the path can be pasted into tools.
    path.push_str(&segment.replace('~', "~0").replace('/', "~1"));
    let out = f(path);
    path.truncate(len);
    out
}

fn from_json(v: &serde_json::Value, path: &mut String, depth: usize) -> Result<Value> {
    use serde_json::Value as J;
    let nested = |v: &J, path: &mut String| -> Result<Vec<Value>> {
        let J::Array(items) = v else { return json_err(path, "expected an array") };
        if depth + 1 > MAX_DEPTH {
            return json_err(path, format!("nests deeper than {MAX_DEPTH} levels"));
        }
        items.iter().enumerate().map(|(i, item)| with_segment(path, &i.to_string(), |p| from_json(item, p, depth + 1))).collect()
    };
    Ok(match v {
        J::Null => Value::None,
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => {
            if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::BigInt(BigInt::from(u))
            } else {
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        J::String(s) => Value::Str(s.clone()),
        J::Array(_) => Value::List(nested(v, path)?),
        J::Object(map) if map.len() == 1 && map.keys().next().is_some_and(|k| k.starts_with('$')) => {
            let (tag, inner) = map.iter().next().expect("one entry");
            with_segment(path, tag, |path| from_tagged(tag, inner, path, depth, &nested))?
        }
        J::Object(map) => {
            if depth + 1 > MAX_DEPTH {
                return json_err(path, format!("nests deeper than {MAX_DEPTH} levels"));
            }
            let mut pairs = Vec::with_capacity(map.len());
            for (k, item) in map {
                let value = with_segment(path, k, |p| from_json(item, p, depth + 1))?;
                pairs.push((Value::Str(k.clone()), value));
            }
            Value::Dict(pairs)
        }
    })
}

fn from_tagged(
    tag: &str,
    inner: &serde_json::Value,
    path: &mut String,
    depth: usize,
    nested: &dyn Fn(&serde_json::Value, &mut String) -> Result<Vec<Value>>,
) -> Result<Value> {
    use serde_json::Value as J;
    let text = |path: &str| match inner {
        J::String(s) => Ok(s.as_str()),
        _ => json_err(path, format!("{tag} takes a string")),
    };
    Ok(match tag {
        "$tuple" => Value::Tuple(nested(inner, path)?),
        "$bytes" | "$bytearray" => {
            let b = hex::decode(text(path)?).or_else(|e| json_err(path, format!("{tag} takes hex digits: {e}")))?;
            if tag == "$bytes" {
                Value::Bytes(b)
            } else {
                Value::ByteArray(b)
            }
        }
        "$float" => {
            let s = text(path)?;
            let f = match s.to_ascii_lowercase().as_str() {
                "nan" => f64::NAN,
                "inf" | "+inf" | "infinity" => f64::INFINITY,
                "-inf" | "-infinity" => f64::NEG_INFINITY,
                other => other.parse().or_else(|_| json_err(path, format!("{s:?} is not nan, inf, -inf or a decimal float")))?,
            };
            Value::Float(f)
        }
        "$int" => match inner {
            J::Number(n) if n.is_i64() || n.is_u64() => from_json(inner, path, depth)?,
            _ => {
                let s = text(path)?;
                let i = s.trim().parse::<BigInt>().or_else(|_| json_err(path, format!("{s:?} is not a decimal integer")))?;
                Value::int(i)
            }
        },
        "$dict" => {
            let J::Array(entries) = inner else { return json_err(path, "$dict takes an array of [key, value] pairs") };
            if depth + 1 > MAX_DEPTH {
                return json_err(path, format!("nests deeper than {MAX_DEPTH} levels"));
            }
            let mut pairs = Vec::with_capacity(entries.len());
            for (i, entry) in entries.iter().enumerate() {
                let pair = with_segment(path, &i.to_string(), |p| match entry {
                    J::Array(kv) if kv.len() == 2 => Ok((
                        with_segment(p, "0", |p| from_json(&kv[0], p, depth + 1))?,
                        with_segment(p, "1", |p| from_json(&kv[1], p, depth + 1))?,
                    )),
                    _ => json_err(p, "a $dict entry is a [key, value] array"),
                })?;
                pairs.push(pair);
            }
            Value::Dict(dedupe_dict(pairs).or_else(|t| json_err(path, format!("a {t} cannot be a dict key (Python cannot hash it)")))?)
        }
        "$set" | "$frozenset" => {
            let items = dedupe_set(nested(inner, path)?).or_else(|t| json_err(path, format!("a {t} cannot be a set member (Python cannot hash it)")))?;
            if tag == "$set" {
                Value::Set(items)
            } else {
                Value::FrozenSet(items)
            }
        }
        other => {
            return json_err(
                path,
                format!(
                    "unknown tag {other:?} (tags: $tuple $bytes $bytearray $float $int $dict $set $frozenset); \
                     a dict with that single key is spelled {{\"$dict\": [[{other:?}, ...]]}}"
                ),
            )
        }
    })
}

/// The canonical JSON spelling of a value, the inverse of `value_from_json`: equal Python
/// values get equal JSON (dicts with str keys become objects, which compare regardless of
/// order; `$dict` entries and set members are sorted), and `value_from_json` reads it back.
pub fn value_to_json(v: &Value) -> serde_json::Value {
    use serde_json::{json, Value as J};
    let sorted = |items: &mut Vec<J>| items.sort_by_cached_key(|j| j.to_string());
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::BigInt(b) => json!({"$int": b.to_string()}),
        Value::Float(f) if f.is_nan() => json!({"$float": "nan"}),
        Value::Float(f) if f.is_infinite() => json!({"$float": if *f > 0.0 { "inf" } else { "-inf" }}),
        Value::Float(f) => serde_json::Number::from_f64(*f).map(J::Number).unwrap_or(J::Null),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => json!({"$bytes": hex::encode(b)}),
        Value::ByteArray(b) => json!({"$bytearray": hex::encode(b)}),
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect()),
        Value::Tuple(items) => json!({"$tuple": items.iter().map(value_to_json).collect::<Vec<_>>()}),
        Value::Dict(pairs) => {
            let str_keys = pairs.iter().all(|(k, _)| matches!(k, Value::Str(_)));
            // A lone "$..." key would read back as a tag.
            let tag_like = matches!(pairs.as_slice(), [(Value::Str(k), _)] if k.starts_with('$'));
            if str_keys && !tag_like {
                J::Object(
                    pairs
                        .iter()
                        .map(|(k, v)| match k {
                            Value::Str(k) => (k.clone(), value_to_json(v)),
                            _ => unreachable!("all keys are str"),
                        })
                        .collect(),
                )
            } else {
                let mut entries: Vec<J> = pairs.iter().map(|(k, v)| J::Array(vec![value_to_json(k), value_to_json(v)])).collect();
                entries.sort_by_cached_key(|e| e[0].to_string());
                json!({ "$dict": entries })
            }
        }
        Value::Set(items) | Value::FrozenSet(items) => {
            let mut members: Vec<J> = items.iter().map(value_to_json).collect();
            sorted(&mut members);
            let tag = if matches!(v, Value::Set(_)) { "$set" } else { "$frozenset" };
            json!({ tag: members })
        }
    }
}

// ---------------------------------------------------------------------------------------------
// pyspark's frame layouts (pyspark/serializers.py; the same in 3.5.9, 4.0.5, 4.1.4, 4.2.1,
// 4.3.0 except where noted).
// ---------------------------------------------------------------------------------------------

/// BatchedSerializer(CPickleSerializer(), batch_size).dump_stream: each frame pickles a list.
/// `batch_size` -1 (UNLIMITED) gives exactly one frame, even for no values. For any other
/// size below 1 this mirrors pyspark 3.5-4.1, whose counting loop never reaches the size: one
/// frame with every value, none when there are none. (pyspark 4.2+ slices with islice
/// instead: size 0 writes no frames at all, and a negative size raises ValueError.)
pub fn batched_frames(values: &[Value], batch_size: i32) -> Vec<Vec<u8>> {
    match usize::try_from(batch_size) {
        _ if batch_size == -1 => vec![dumps_list(values)],
        Ok(n) if n > 0 => values.chunks(n).map(dumps_list).collect(),
        _ if values.is_empty() => Vec::new(),
        _ => vec![dumps_list(values)],
    }
}

/// AutoBatchedSerializer(CPickleSerializer()).dump_stream, bestSize 64 KiB: batches start at
/// one value, double after a frame shorter than 64 KiB, and halve (down to 1) after one longer
/// than 640 KiB. Frame lengths decide the batches, hence `dumps`' byte-for-byte CPython output.
pub fn auto_batched_frames(values: &[Value]) -> Vec<Vec<u8>> {
    const BEST: usize = 1 << 16;
    let mut frames = Vec::new();
    let (mut batch, mut rest) = (1usize, values);
    while !rest.is_empty() {
        let (now, later) = rest.split_at(batch.min(rest.len()));
        let frame = dumps_list(now);
        if frame.len() < BEST {
            batch = batch.saturating_mul(2);
        } else if frame.len() > BEST * 10 && batch > 1 {
            batch /= 2;
        }
        frames.push(frame);
        rest = later;
    }
    frames
}

/// CPickleSerializer.dump_stream: one pickled value per frame.
pub fn unbatched_frames(values: &[Value]) -> Vec<Vec<u8>> {
    values.iter().map(dumps).collect()
}

/// UTF8Deserializer's input (textFile lines): UTF-8 frames; None is sent as NULL (-5).
pub fn utf8_frames(lines: &[Option<String>]) -> Vec<Option<Vec<u8>>> {
    lines.iter().map(|l| l.as_ref().map(|s| s.as_bytes().to_vec())).collect()
}

/// PairDeserializer's input (RDD.zip): key batch i, then value batch i, alternating on one
/// stream, as the JVM writes each (key bytes, value bytes) pair. PairDeserializer pairs them
/// with zip() and raises ValueError when two paired batches differ in length. If one side has
/// more batches, its extra frames follow in order (pyspark keeps alternating over them).
/// CartesianDeserializer reads the same alternation; for RDD.cartesian the JVM sends every
/// (key batch, value batch) combination: see `cartesian_frames`.
pub fn pair_frames(keys: &[Vec<u8>], values: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(keys.len() + values.len());
    for (k, v) in keys.iter().zip(values) {
        out.push(k.clone());
        out.push(v.clone());
    }
    let common = keys.len().min(values.len());
    out.extend(keys[common..].iter().cloned());
    out.extend(values[common..].iter().cloned());
    out
}

/// CartesianDeserializer's input (RDD.cartesian): the JVM's cartesian product of the two
/// sides' batches, each combination sent as key batch then value batch.
pub fn cartesian_frames(keys: &[Vec<u8>], values: &[Vec<u8>]) -> Vec<Vec<u8>> {
    let mut out = Vec::with_capacity(2 * keys.len() * values.len());
    for k in keys {
        for v in values {
            out.push(k.clone());
            out.push(v.clone());
        }
    }
    out
}

/// How a worker's output serializer laid out its frames.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FrameKind {
    /// BatchedSerializer or AutoBatchedSerializer over CPickle: each frame a pickled list.
    Batched,
    /// CPickleSerializer: each frame one pickled value.
    Unbatched,
    /// UTF-8 text per frame (NULL is None).
    Utf8,
    /// NoOpSerializer: raw bytes per frame (NULL is None).
    Raw,
}

/// The values a worker wrote, from its output frames (`None` = a NULL (-5) frame): batches are
/// flattened, text becomes `Str`, raw payloads `Bytes`.
pub fn decode_frames(kind: FrameKind, frames: &[Option<Vec<u8>>]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (frame, payload) in frames.iter().enumerate() {
        let in_frame = |e: PickleError| PickleError::InFrame { frame, source: Box::new(e) };
        match (kind, payload) {
            (FrameKind::Batched, None) => return Err(PickleError::UnexpectedNull { frame, serializer: "batched pickle serializer" }),
            (FrameKind::Unbatched, None) => return Err(PickleError::UnexpectedNull { frame, serializer: "CPickleSerializer" }),
            (FrameKind::Utf8 | FrameKind::Raw, None) => out.push(Value::None),
            (FrameKind::Batched, Some(b)) => match loads(b).map_err(in_frame)? {
                Value::List(items) => out.extend(items),
                other => return Err(PickleError::NotABatch { frame, got: other.type_name() }),
            },
            (FrameKind::Unbatched, Some(b)) => out.push(loads(b).map_err(in_frame)?),
            (FrameKind::Utf8, Some(b)) => match std::str::from_utf8(b) {
                Ok(s) => out.push(Value::Str(s.to_owned())),
                Err(e) => return Err(PickleError::NotUtf8 { frame, at: e.valid_up_to() }),
            },
            (FrameKind::Raw, Some(b)) => out.push(Value::Bytes(b.clone())),
        }
    }
    Ok(out)
}

/// A short human-readable hex dump, used in test failure messages.
#[cfg(test)]
fn hex_head(b: &[u8]) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    for byte in b.iter().take(64) {
        let _ = write!(s, "{byte:02x}");
    }
    if b.len() > 64 {
        let _ = write!(s, "... ({} bytes)", b.len());
    }
    s
}
