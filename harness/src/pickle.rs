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
//! Byte identity holds for the objects `pickle.loads` gives Python (what a worker holds after
//! unpickling its input): equal parts are distinct objects, except CPython's singletons ('',
//! one-Latin-1-character str, b''), which are memoized here as CPython memoizes them. Data built
//! otherwise in Python may share more objects (e.g. one literal used twice) and pickle shorter.
//! Sets are written in the order held, where CPython uses hash order, so only sets of 0 or 1
//! element are sure to match bytes.

use std::collections::HashMap;

pub use num_bigint::BigInt;

/// Values nest at most this deep (containers on the path from the root to a leaf). CPython 3.11
/// at its default recursion limit pickles up to 499 nested lists or dicts (998 tuples), so a
/// batch of such values fits. The bound keeps every recursive walk over a value, here and in
/// serde_json (whose derived Clone overflows a 2 MiB debug-build stack at about 700 levels),
/// inside the 2 MiB stacks of test and tokio worker threads.
pub const MAX_DEPTH: usize = 500;

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
    NotPlainGlobal {
        at: usize,
        module: String,
        name: String,
    },
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
    UnexpectedNull {
        frame: usize,
        serializer: &'static str,
    },
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

/// Objects CPython shares by identity even after `pickle.loads`, so a second occurrence in one
/// pickle is a memo GET: '' and one-character Latin-1 str (the unpickler decodes through
/// CPython's str cache) and b'' (the empty bytes singleton). One-byte bytes are cached too, but
/// the unpickler allocates them fresh, so after `loads` they are distinct objects.
#[derive(Hash, PartialEq, Eq)]
enum Singleton {
    Str(Option<char>),
    EmptyBytes,
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
        Encoder {
            out: vec![op::PROTO, 5],
            frame_start: None,
            memo_len: 0,
            singletons: HashMap::new(),
        }
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
        let Some(start) = self.frame_start.take() else {
            return;
        };
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
            Err(_) => self.write(&with_arg(op::LONG_BINGET, &idx.to_le_bytes())),
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
            Value::Float(f) => self.write(&with_arg(op::BINFLOAT, &f.to_be_bytes())),
            Value::Str(s) => self.save_str(s),
            Value::Bytes(b) => self.save_bytes(b),
            Value::ByteArray(b) => {
                self.write_payload(
                    &with_arg(op::BYTEARRAY8, &(b.len() as u64).to_le_bytes()),
                    b,
                );
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
            self.write(&with_arg(op::BININT2, &(i as u16).to_le_bytes()));
        } else if let Ok(small) = i32::try_from(i) {
            self.write(&with_arg(op::BININT, &small.to_le_bytes()));
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
        let header = sized(
            s.len(),
            [op::SHORT_BINUNICODE, op::BINUNICODE, op::BINUNICODE8],
        );
        self.save_memoized_payload(singleton, &header, s.as_bytes());
    }

    fn save_bytes(&mut self, b: &[u8]) {
        let singleton = b.is_empty().then_some(Singleton::EmptyBytes);
        let header = sized(b.len(), [op::SHORT_BINBYTES, op::BINBYTES, op::BINBYTES8]);
        self.save_memoized_payload(singleton, &header, b);
    }

    fn save_memoized_payload(
        &mut self,
        singleton: Option<Singleton>,
        header: &[u8],
        payload: &[u8],
    ) {
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
        if pairs.len().is_multiple_of(BATCH) {
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
        if items.len().is_multiple_of(BATCH) {
            self.write(&[op::MARK, op::ADDITEMS]);
        }
    }
}

/// An opcode and its argument, on the stack: the encoder writes one per value, and allocating
/// each made dumps twice as slow.
struct OpArg {
    bytes: [u8; 9],
    len: usize,
}

impl std::ops::Deref for OpArg {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

fn with_arg(opcode: u8, arg: &[u8]) -> OpArg {
    let mut bytes = [0; 9];
    bytes[0] = opcode;
    bytes[1..1 + arg.len()].copy_from_slice(arg);
    OpArg {
        bytes,
        len: 1 + arg.len(),
    }
}

/// A str/bytes opcode with the narrowest length that fits: one byte, four, or eight.
fn sized(n: usize, [short, long, huge]: [u8; 3]) -> OpArg {
    if let Ok(small) = u8::try_from(n) {
        with_arg(short, &[small])
    } else if let Ok(medium) = u32::try_from(n) {
        with_arg(long, &medium.to_le_bytes())
    } else {
        with_arg(huge, &(n as u64).to_le_bytes())
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
    Global {
        module: String,
        name: String,
    },
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
                if i.is_multiple_of(2) {
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
    memo: Memo,
}

/// Python's unpickler memo. Keys are dense in practice (MEMOIZE counts up, BINPUT is a byte),
/// so mostly a vector: hashing every key cost a quarter of the decoding time.
#[derive(Default)]
struct Memo {
    dense: Vec<Option<NodeId>>,
    /// Keys far past the dense part, which only a hand-made pickle would use.
    sparse: HashMap<u64, NodeId>,
    len: usize,
}

impl Memo {
    fn insert(&mut self, key: u64, id: NodeId) {
        let old = match usize::try_from(key) {
            Ok(k) if k < self.dense.len() + 1024 => {
                if k >= self.dense.len() {
                    self.dense.resize(k + 1, None);
                }
                self.dense[k].replace(id)
            }
            _ => self.sparse.insert(key, id),
        };
        if old.is_none() {
            self.len += 1;
        }
    }

    fn get(&self, key: u64) -> Option<NodeId> {
        match usize::try_from(key) {
            Ok(k) if k < self.dense.len() => self.dense[k],
            _ => self.sparse.get(&key).copied(),
        }
    }
}

impl<'a> Decoder<'a> {
    fn new(bytes: &'a [u8]) -> Decoder<'a> {
        Decoder {
            bytes,
            pos: 0,
            nodes: Vec::new(),
            stack: Vec::new(),
            marks: Vec::new(),
            memo: Memo::default(),
        }
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
        let n = rest
            .iter()
            .position(|&b| b == b'\n')
            .ok_or(PickleError::Truncated { at: self.pos, what })?;
        self.pos += n + 1;
        Ok(&rest[..n])
    }

    // -- the stack --

    fn malformed<T>(&self, at: usize, what: impl Into<String>) -> Result<T> {
        Err(PickleError::Malformed {
            at,
            what: what.into(),
        })
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
            return self.malformed(
                at,
                "stack underflow (an opcode needs a value the pickle never pushed)",
            );
        }
        Ok(self.stack.pop().expect("checked non-empty"))
    }

    fn top(&self, at: usize) -> Result<NodeId> {
        if self.stack.len() <= self.frame_base() {
            return self.malformed(
                at,
                "stack underflow (an opcode needs a value the pickle never pushed)",
            );
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
        match self.memo.get(key) {
            Some(id) => {
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
                        return self.malformed(
                            at,
                            format!("unsupported pickle protocol {v} (CPython 3.11 reads 0-5)"),
                        );
                    }
                }
                op::FRAME => {
                    let n = self.len_u64("a FRAME length")?;
                    if n > self.bytes.len() - self.pos {
                        return Err(PickleError::Truncated {
                            at,
                            what: "a FRAME's announced contents",
                        });
                    }
                }
                op::STOP => {
                    let root = self.pop(at)?;
                    if self.pos != self.bytes.len() {
                        return Err(PickleError::TrailingBytes {
                            at,
                            len: self.bytes.len() - self.pos,
                        });
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
                    let key = self.memo.len as u64;
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
                        return self.malformed(
                            at,
                            format!("FLOAT {:?} is not a number", String::from_utf8_lossy(text)),
                        );
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
                        [q, inner @ .., q2] if q == q2 && (*q == b'\'' || *q == b'"') => {
                            escape_decode(inner)
                        }
                        _ => {
                            return self.malformed(at, "the STRING opcode argument must be quoted")
                        }
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
                        return self
                            .malformed(at, format!("TUPLE{n} needs {n} values on the stack"));
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
                        _ => {
                            return self
                                .malformed(at, format!("APPEND to a {}", self.kind_name(list)))
                        }
                    }
                }
                op::APPENDS => {
                    let new = self.pop_mark(at)?;
                    let list = self.top(at)?;
                    match &mut self.nodes[list].kind {
                        Kind::List(items) => items.extend(new),
                        _ => {
                            return self
                                .malformed(at, format!("APPENDS to a {}", self.kind_name(list)))
                        }
                    }
                }
                op::EMPTY_DICT => self.push(Kind::Dict(Vec::new()), at),
                op::DICT => {
                    let items = self.pop_mark(at)?;
                    let pairs = pairs_of(items)
                        .or_else(|_| self.malformed(at, "DICT with an odd number of items"))?;
                    self.push(Kind::Dict(pairs), at);
                }
                op::SETITEM => {
                    let v = self.pop(at)?;
                    let k = self.pop(at)?;
                    let dict = self.top(at)?;
                    match self.target(at)? {
                        Kind::Dict(pairs) => pairs.push((k, v)),
                        _ => {
                            return self
                                .malformed(at, format!("SETITEM on a {}", self.kind_name(dict)))
                        }
                    }
                }
                op::SETITEMS => {
                    let items = self.pop_mark(at)?;
                    let new = pairs_of(items)
                        .or_else(|_| self.malformed(at, "SETITEMS with an odd number of items"))?;
                    let dict = self.top(at)?;
                    match self.target(at)? {
                        Kind::Dict(pairs) => pairs.extend(new),
                        _ => {
                            return self
                                .malformed(at, format!("SETITEMS on a {}", self.kind_name(dict)))
                        }
                    }
                }
                op::EMPTY_SET => self.push(Kind::Set(Vec::new()), at),
                op::ADDITEMS => {
                    let new = self.pop_mark(at)?;
                    let set = self.top(at)?;
                    match self.target(at)? {
                        Kind::Set(items) => items.extend(new),
                        _ => {
                            return self
                                .malformed(at, format!("ADDITEMS on a {}", self.kind_name(set)))
                        }
                    }
                }
                op::FROZENSET => {
                    let items = self.pop_mark(at)?;
                    self.push(Kind::FrozenSet(items), at);
                }

                op::GLOBAL => {
                    let module =
                        String::from_utf8_lossy(self.line("a GLOBAL module")?).into_owned();
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

                op::INST
                | op::OBJ
                | op::NEWOBJ
                | op::NEWOBJ_EX
                | op::BUILD
                | op::EXT1
                | op::EXT2
                | op::EXT4
                | op::PERSID
                | op::BINPERSID
                | op::NEXT_BUFFER
                | op::READONLY_BUFFER => {
                    return Err(PickleError::NotPlainOpcode {
                        at,
                        name: opcode_name(code),
                    });
                }
                other => return Err(PickleError::UnknownOpcode { at, opcode: other }),
            }
        }
    }

    fn parse_int(&self, text: &[u8], at: usize) -> Result<Value> {
        match parse_ascii::<BigInt>(text) {
            Some(i) => Ok(Value::int(i)),
            None => self.malformed(
                at,
                format!(
                    "{:?} is not a decimal integer",
                    String::from_utf8_lossy(text)
                ),
            ),
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
            return self.malformed(
                at,
                format!(
                    "REDUCE arguments are a {}, not a tuple",
                    self.kind_name(args)
                ),
            );
        };
        let builtin = module == "builtins" || module == "__builtin__";
        let not_plain = || PickleError::NotPlainGlobal {
            at,
            module: module.clone(),
            name: name.clone(),
        };
        let atom = |i: usize| match args.get(i).map(|&id| &self.nodes[id].kind) {
            Some(Kind::Atom(v)) => Some(v),
            _ => None,
        };
        match (builtin, name.as_str(), args.len()) {
            (true, "set" | "frozenset", 0) => Ok(if name == "set" {
                Kind::Set(Vec::new())
            } else {
                Kind::FrozenSet(Vec::new())
            }),
            (true, "set" | "frozenset", 1) => {
                // set(iterable) copies the items now; later changes to the list do not show.
                let items = match &self.nodes[args[0]].kind {
                    Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c.clone(),
                    _ => {
                        return self
                            .malformed(at, format!("{name}() of a {}", self.kind_name(args[0])))
                    }
                };
                Ok(if name == "set" {
                    Kind::Set(items)
                } else {
                    Kind::FrozenSet(items)
                })
            }
            (true, "bytes", 0) => Ok(Kind::Atom(Value::Bytes(Vec::new()))),
            (true, "bytearray", 0) => Ok(Kind::Atom(Value::ByteArray(Vec::new()))),
            (true, "bytes" | "bytearray", 1 | 2) => {
                let data = match (atom(0), atom(1)) {
                    (Some(Value::Bytes(b) | Value::ByteArray(b)), None) if args.len() == 1 => {
                        b.clone()
                    }
                    (Some(Value::Str(s)), Some(Value::Str(enc))) => {
                        encode_str(s, enc).or_else(|e| self.malformed(at, e))?
                    }
                    _ => {
                        return self.malformed(
                            at,
                            format!("{name}() with arguments fakejvm does not read"),
                        )
                    }
                };
                Ok(Kind::Atom(if name == "bytes" {
                    Value::Bytes(data)
                } else {
                    Value::ByteArray(data)
                }))
            }
            _ if module == "_codecs" && name == "encode" => match (atom(0), atom(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc))) if args.len() == 2 => Ok(Kind::Atom(
                    Value::Bytes(encode_str(s, enc).or_else(|e| self.malformed(at, e))?),
                )),
                _ => self.malformed(
                    at,
                    "_codecs.encode with arguments other than (str, encoding)",
                ),
            },
            _ => Err(not_plain()),
        }
    }

    // -- from the object graph to owned values --
    //
    // Both passes walk with explicit stacks: the structure is the pickle's to choose, and a
    // recursive walk in a debug build overflows a 2 MiB stack at about 350 levels.

    fn finish(mut self, root: NodeId) -> Result<Value> {
        let refs = self.measure(root)?;
        self.build(root, &refs)
    }

    /// First pass: reject cycles, nesting past MAX_DEPTH, non-plain globals and exponential
    /// expansion before allocating anything, and count how often each object is used so the
    /// second pass copies only the shared ones.
    fn measure(&self, root: NodeId) -> Result<Vec<u32>> {
        const VALUE_SIZE: u64 = std::mem::size_of::<Value>() as u64;
        struct Open {
            id: NodeId,
            next: usize,
            height: usize,
            cost: u64,
        }
        let mut seen = vec![Seen::No; self.nodes.len()];
        let mut refs = vec![0u32; self.nodes.len()];
        refs[root] = 1;
        let mut open: Vec<Open> = Vec::new();
        let mut visit = Some(root);
        loop {
            // A finished object's (height, cost), to add to its container.
            let mut done = None;
            if let Some(id) = visit.take() {
                let node = &self.nodes[id];
                match (seen[id], &node.kind) {
                    (Seen::Done { height, cost }, _) => {
                        if open.len() + height > MAX_DEPTH {
                            return Err(PickleError::TooDeep { at: node.at });
                        }
                        done = Some((height, cost));
                    }
                    (Seen::Active, _) => return Err(PickleError::Recursive { at: node.at }),
                    (Seen::No, Kind::Atom(v)) => {
                        let payload = match v {
                            Value::Str(s) => s.len(),
                            Value::Bytes(b) | Value::ByteArray(b) => b.len(),
                            _ => 0,
                        };
                        seen[id] = Seen::Done {
                            height: 0,
                            cost: VALUE_SIZE + payload as u64,
                        };
                        done = Some((0, VALUE_SIZE + payload as u64));
                    }
                    (Seen::No, Kind::Global { module, name }) => {
                        return Err(PickleError::NotPlainGlobal {
                            at: node.at,
                            module: module.clone(),
                            name: name.clone(),
                        });
                    }
                    (Seen::No, Kind::Taken) => {
                        return self.malformed(node.at, "internal: object used before it was built")
                    }
                    (Seen::No, _) => {
                        if open.len() + 1 > MAX_DEPTH {
                            return Err(PickleError::TooDeep { at: node.at });
                        }
                        seen[id] = Seen::Active;
                        open.push(Open {
                            id,
                            next: 0,
                            height: 0,
                            cost: VALUE_SIZE,
                        });
                    }
                }
            }
            if let Some((height, cost)) = done {
                let Some(parent) = open.last_mut() else {
                    return Ok(refs);
                };
                parent.height = parent.height.max(height);
                parent.cost = parent.cost.saturating_add(cost);
                if parent.cost > MAX_EXPANDED_BYTES {
                    return Err(PickleError::TooLarge);
                }
            }
            let Some(top) = open.last_mut() else {
                return Ok(refs);
            };
            let kind = &self.nodes[top.id].kind;
            if top.next < kind.child_count() {
                let child = kind.child(top.next);
                top.next += 1;
                refs[child] = refs[child].saturating_add(1);
                visit = Some(child);
                continue;
            }
            let top = open.pop().expect("non-empty");
            let (height, cost) = (top.height + 1, top.cost);
            seen[top.id] = Seen::Done { height, cost };
            match open.last_mut() {
                None => return Ok(refs),
                Some(parent) => {
                    parent.height = parent.height.max(height);
                    parent.cost = parent.cost.saturating_add(cost);
                    if parent.cost > MAX_EXPANDED_BYTES {
                        return Err(PickleError::TooLarge);
                    }
                }
            }
        }
    }

    /// Second pass: build each object once; an object used n > 1 times is kept until its
    /// n-th use, which takes it.
    fn build(&mut self, root: NodeId, refs: &[u32]) -> Result<Value> {
        struct Open {
            id: NodeId,
            kind: Kind,
            next: usize,
            items: Vec<Value>,
        }
        let mut shared: HashMap<NodeId, (Value, u32)> = HashMap::new();
        let keep = |id: NodeId, value: Value, shared: &mut HashMap<NodeId, (Value, u32)>| {
            if refs[id] > 1 {
                shared.insert(id, (value.clone(), refs[id] - 1));
            }
            value
        };
        let mut open: Vec<Open> = Vec::new();
        let mut visit = Some(root);
        loop {
            let mut done = None;
            if let Some(id) = visit.take() {
                // Only objects used more than once are ever kept in `shared`.
                if let Some((value, left)) = if refs[id] > 1 {
                    shared.get_mut(&id)
                } else {
                    None
                } {
                    *left -= 1;
                    done = Some(if *left == 0 {
                        shared.remove(&id).expect("present").0
                    } else {
                        value.clone()
                    });
                } else {
                    match std::mem::replace(&mut self.nodes[id].kind, Kind::Taken) {
                        Kind::Atom(v) => done = Some(keep(id, v, &mut shared)),
                        Kind::Global { .. } | Kind::Taken => {
                            return self
                                .malformed(self.nodes[id].at, "internal: object built twice")
                        }
                        kind => {
                            let items = Vec::with_capacity(kind.child_count());
                            open.push(Open {
                                id,
                                kind,
                                next: 0,
                                items,
                            });
                        }
                    }
                }
            }
            if let Some(value) = done {
                match open.last_mut() {
                    None => return Ok(value),
                    Some(parent) => parent.items.push(value),
                }
            }
            let top = open.last_mut().expect("a container is open");
            if top.next < top.kind.child_count() {
                visit = Some(top.kind.child(top.next));
                top.next += 1;
                continue;
            }
            let top = open.pop().expect("non-empty");
            let at = self.nodes[top.id].at;
            let unhashable = |type_name| PickleError::Unhashable { at, type_name };
            let value = match top.kind {
                Kind::List(_) => Value::List(top.items),
                Kind::Tuple(_) => Value::Tuple(top.items),
                Kind::Set(_) => Value::Set(dedupe_set(top.items).map_err(unhashable)?),
                Kind::FrozenSet(_) => Value::FrozenSet(dedupe_set(top.items).map_err(unhashable)?),
                Kind::Dict(_) => {
                    let mut items = top.items.into_iter();
                    let mut pairs = Vec::with_capacity(items.len() / 2);
                    while let (Some(k), Some(v)) = (items.next(), items.next()) {
                        pairs.push((k, v));
                    }
                    Value::Dict(dedupe_dict(pairs).map_err(unhashable)?)
                }
                Kind::Atom(_) | Kind::Global { .. } | Kind::Taken => {
                    unreachable!("only containers are opened")
                }
            };
            let value = keep(top.id, value, &mut shared);
            match open.last_mut() {
                None => return Ok(value),
                Some(parent) => parent.items.push(value),
            }
        }
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
    if !items.len().is_multiple_of(2) {
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
            Err(PickleError::Malformed {
                at,
                what: format!("{what} (byte {bad} of the str)"),
            })
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
        other => Err(format!(
            "encoding {other:?} is not one plain-data pickles use"
        )),
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
                out.push(
                    u8::from_str_radix(std::str::from_utf8(&s[i..i + 2]).expect("hex digits"), 16)
                        .expect("hex"),
                );
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
        let hex = s
            .get(i + 2..i + 2 + digits)
            .ok_or("truncated \\u escape in UNICODE")?;
        let code = std::str::from_utf8(hex)
            .ok()
            .and_then(|h| u32::from_str_radix(h, 16).ok())
            .ok_or("bad \\u escape in UNICODE")?;
        out.push(
            char::from_u32(code)
                .ok_or("UNICODE holds a lone surrogate or a code point past U+10FFFF")?,
        );
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
        Value::Tuple(items) => HashKey::Tuple(
            items
                .iter()
                .map(|i| hash_key(i, nans))
                .collect::<Result<_, _>>()?,
        ),
        Value::FrozenSet(items) => {
            let mut keys = items
                .iter()
                .map(|i| hash_key(i, nans))
                .collect::<Result<Vec<_>, _>>()?;
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
    from_json(v, &mut Vec::new(), 0)
}

/// Where in the JSON we are, rendered as a JSON Pointer only when there is an error.
enum Segment<'a> {
    Index(usize),
    Key(&'a str),
}

#[cold]
fn json_err<T>(path: &[Segment], what: impl Into<String>) -> Result<T> {
    let mut pointer = String::new();
    for segment in path {
        pointer.push('/');
        match segment {
            Segment::Index(i) => pointer.push_str(&i.to_string()),
            // JSON Pointer escaping, so the path can be pasted into tools.
            Segment::Key(k) => pointer.push_str(&k.replace('~', "~0").replace('/', "~1")),
        }
    }
    if pointer.is_empty() {
        pointer.push_str("the top level");
    }
    if pointer.len() > 160 {
        let cut = pointer.ceil_char_boundary(pointer.len() - 120);
        pointer = format!(
            "{}...{}",
            &pointer[..pointer.floor_char_boundary(30)],
            &pointer[cut..]
        );
    }
    Err(PickleError::Json {
        path: pointer,
        what: what.into(),
    })
}

/// Recurses once per nesting level (with `json_items` and, for tags, `from_tag`), so these
/// three keep their frames small and leave scalars, errors and rare shapes to helpers.
/// `depth` counts the containers around `v`.
fn from_json<'a>(
    v: &'a serde_json::Value,
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Value> {
    use serde_json::Value as J;
    if depth >= MAX_DEPTH && (v.is_array() || v.is_object()) {
        return too_deep(path);
    }
    match v {
        J::Array(items) => Ok(Value::List(json_items(items, path, depth + 1)?)),
        J::Object(map) => match map.iter().next() {
            Some((tag, inner)) if map.len() == 1 && tag.starts_with('$') => {
                path.push(Segment::Key(tag));
                let value = from_tag(tag, inner, path, depth + 1);
                path.pop();
                value
            }
            _ => str_dict_from_json(map, path, depth + 1),
        },
        scalar => Ok(scalar_from_json(scalar)),
    }
}

#[cold]
fn too_deep<T>(path: &[Segment]) -> Result<T> {
    json_err(path, format!("nests deeper than {MAX_DEPTH} levels"))
}

/// The items of a container at nesting `depth`.
fn json_items<'a>(
    items: &'a [serde_json::Value],
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Vec<Value>> {
    let mut out = Vec::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        path.push(Segment::Index(i));
        out.push(from_json(item, path, depth)?);
        path.pop();
    }
    Ok(out)
}

fn from_tag<'a>(
    tag: &str,
    inner: &'a serde_json::Value,
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Value> {
    use serde_json::Value as J;
    match (tag, inner) {
        ("$tuple", J::Array(items)) => Ok(Value::Tuple(json_items(items, path, depth)?)),
        ("$set", J::Array(items)) => Ok(Value::Set(set_from_json(items, path, depth)?)),
        ("$frozenset", J::Array(items)) => Ok(Value::FrozenSet(set_from_json(items, path, depth)?)),
        ("$dict", J::Array(entries)) => dict_from_json(entries, path, depth),
        _ => scalar_tag(tag, inner, path),
    }
}

#[inline(never)]
fn str_dict_from_json<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Value> {
    let mut pairs = Vec::with_capacity(map.len());
    for (k, item) in map {
        path.push(Segment::Key(k));
        let value = from_json(item, path, depth)?;
        path.pop();
        pairs.push((Value::Str(k.clone()), value));
    }
    Ok(Value::Dict(pairs))
}

#[inline(never)]
fn set_from_json<'a>(
    items: &'a [serde_json::Value],
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Vec<Value>> {
    let items = json_items(items, path, depth)?;
    dedupe_set(items).or_else(|t| {
        json_err(
            path,
            format!("a {t} cannot be a set member (Python cannot hash it)"),
        )
    })
}

#[inline(never)]
fn dict_from_json<'a>(
    entries: &'a [serde_json::Value],
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Value> {
    let mut pairs = Vec::with_capacity(entries.len());
    for (i, entry) in entries.iter().enumerate() {
        path.push(Segment::Index(i));
        let Some(kv) = entry.as_array().filter(|kv| kv.len() == 2) else {
            return json_err(path, "a $dict entry is a [key, value] array");
        };
        let mut kv = json_items(kv, path, depth)?;
        let v = kv.pop().expect("two items");
        let k = kv.pop().expect("two items");
        pairs.push((k, v));
        path.pop();
    }
    let pairs = dedupe_dict(pairs).or_else(|t| {
        json_err(
            path,
            format!("a {t} cannot be a dict key (Python cannot hash it)"),
        )
    })?;
    Ok(Value::Dict(pairs))
}

#[inline(never)]
fn scalar_from_json(v: &serde_json::Value) -> Value {
    use serde_json::Value as J;
    match v {
        J::Bool(b) => Value::Bool(*b),
        J::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => Value::Int(i),
            (None, Some(u)) => Value::BigInt(BigInt::from(u)),
            // Without serde_json's arbitrary_precision, every other number is an f64.
            (None, None) => Value::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        J::String(s) => Value::Str(s.clone()),
        _ => Value::None,
    }
}

/// The tags that are not containers, and every tag given the wrong shape.
#[inline(never)]
fn scalar_tag(tag: &str, inner: &serde_json::Value, path: &[Segment]) -> Result<Value> {
    use serde_json::Value as J;
    let text = || match inner {
        J::String(s) => Ok(s.as_str()),
        _ => json_err(path, format!("{tag} takes a string")),
    };
    Ok(match tag {
        "$tuple" | "$set" | "$frozenset" | "$dict" => return json_err(path, format!("{tag} takes an array")),
        "$bytes" | "$bytearray" => {
            let b = hex::decode(text()?).or_else(|e| json_err(path, format!("{tag} takes hex digits: {e}")))?;
            if tag == "$bytes" {
                Value::Bytes(b)
            } else {
                Value::ByteArray(b)
            }
        }
        "$float" => {
            let s = text()?;
            Value::Float(match s.to_ascii_lowercase().as_str() {
                "nan" => f64::NAN,
                "inf" | "+inf" | "infinity" => f64::INFINITY,
                "-inf" | "-infinity" => f64::NEG_INFINITY,
                other => other
                    .parse()
                    .or_else(|_| json_err(path, format!("{s:?} is not nan, inf, -inf or a decimal float")))?,
            })
        }
        "$int" => match inner {
            J::Number(n) if n.is_i64() || n.is_u64() => scalar_from_json(inner),
            _ => {
                let s = text()?;
                Value::int(
                    s.trim()
                        .parse::<BigInt>()
                        .or_else(|_| json_err(path, format!("{s:?} is not a decimal integer")))?,
                )
            }
        },
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
    use serde_json::Value as J;
    // Containers only here, the rest in helpers: this function recurses once per nesting
    // level, so its stack frame is kept small.
    match v {
        Value::List(items) => J::Array(items.iter().map(value_to_json).collect()),
        Value::Tuple(items) => tagged(
            "$tuple",
            J::Array(items.iter().map(value_to_json).collect()),
        ),
        Value::Dict(pairs) => dict_to_json(pairs),
        Value::Set(items) => tagged("$set", members_to_json(items)),
        Value::FrozenSet(items) => tagged("$frozenset", members_to_json(items)),
        scalar => scalar_to_json(scalar),
    }
}

fn tagged(tag: &str, inner: serde_json::Value) -> serde_json::Value {
    let mut map = serde_json::Map::with_capacity(1);
    map.insert(tag.to_owned(), inner);
    serde_json::Value::Object(map)
}

#[inline(never)]
fn scalar_to_json(v: &Value) -> serde_json::Value {
    use serde_json::Value as J;
    match v {
        Value::None => J::Null,
        Value::Bool(b) => J::Bool(*b),
        Value::Int(i) => J::from(*i),
        Value::BigInt(b) => tagged("$int", J::String(b.to_string())),
        Value::Float(f) if f.is_nan() => tagged("$float", J::from("nan")),
        Value::Float(f) if f.is_infinite() => {
            tagged("$float", J::from(if *f > 0.0 { "inf" } else { "-inf" }))
        }
        Value::Float(f) => serde_json::Number::from_f64(*f)
            .map(J::Number)
            .unwrap_or(J::Null),
        Value::Str(s) => J::String(s.clone()),
        Value::Bytes(b) => tagged("$bytes", J::String(hex::encode(b))),
        Value::ByteArray(b) => tagged("$bytearray", J::String(hex::encode(b))),
        Value::List(_) | Value::Tuple(_) | Value::Dict(_) | Value::Set(_) | Value::FrozenSet(_) => {
            unreachable!("containers are value_to_json's")
        }
    }
}

fn members_to_json(items: &[Value]) -> serde_json::Value {
    let mut members: Vec<serde_json::Value> = items.iter().map(value_to_json).collect();
    members.sort_by_cached_key(|m| m.to_string());
    serde_json::Value::Array(members)
}

fn dict_to_json(pairs: &[(Value, Value)]) -> serde_json::Value {
    use serde_json::Value as J;
    let str_keys = pairs.iter().all(|(k, _)| matches!(k, Value::Str(_)));
    // A lone "$..." key would read back as a tag.
    let tag_like = matches!(pairs, [(Value::Str(k), _)] if k.starts_with('$'));
    if str_keys && !tag_like {
        let mut map = serde_json::Map::with_capacity(pairs.len());
        for (k, v) in pairs {
            if let Value::Str(k) = k {
                map.insert(k.clone(), value_to_json(v));
            }
        }
        return J::Object(map);
    }
    let mut entries: Vec<J> = pairs
        .iter()
        .map(|(k, v)| J::Array(vec![value_to_json(k), value_to_json(v)]))
        .collect();
    entries.sort_by_cached_key(|e| e[0].to_string());
    tagged("$dict", J::Array(entries))
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
    const UNLIMITED_BATCH_SIZE: i32 = -1;
    if batch_size == UNLIMITED_BATCH_SIZE {
        return vec![dumps_list(values)];
    }
    match usize::try_from(batch_size) {
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
    lines
        .iter()
        .map(|l| l.as_ref().map(|s| s.as_bytes().to_vec()))
        .collect()
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
pub fn decode_frames<B: AsRef<[u8]>>(kind: FrameKind, frames: &[Option<B>]) -> Result<Vec<Value>> {
    let mut out = Vec::new();
    for (frame, payload) in frames.iter().enumerate() {
        let in_frame = |e: PickleError| PickleError::InFrame {
            frame,
            source: Box::new(e),
        };
        match (kind, payload.as_ref().map(|b| b.as_ref())) {
            (FrameKind::Batched, None) => {
                return Err(PickleError::UnexpectedNull {
                    frame,
                    serializer: "batched pickle serializer",
                })
            }
            (FrameKind::Unbatched, None) => {
                return Err(PickleError::UnexpectedNull {
                    frame,
                    serializer: "CPickleSerializer",
                })
            }
            (FrameKind::Utf8 | FrameKind::Raw, None) => out.push(Value::None),
            (FrameKind::Batched, Some(b)) => match loads(b).map_err(in_frame)? {
                Value::List(items) => out.extend(items),
                other => {
                    return Err(PickleError::NotABatch {
                        frame,
                        got: other.type_name(),
                    })
                }
            },
            (FrameKind::Unbatched, Some(b)) => out.push(loads(b).map_err(in_frame)?),
            (FrameKind::Utf8, Some(b)) => match std::str::from_utf8(b) {
                Ok(s) => out.push(Value::Str(s.to_owned())),
                Err(e) => {
                    return Err(PickleError::NotUtf8 {
                        frame,
                        at: e.valid_up_to(),
                    })
                }
            },
            (FrameKind::Raw, Some(b)) => out.push(Value::Bytes(b.to_vec())),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use proptest::strategy::ValueTree;
    use serde_json::json;

    /// Structural equality that also matches NaN with NaN (Value's PartialEq follows Python's
    /// nan != nan) and tells -0.0 from 0.0.
    fn identical(a: &Value, b: &Value) -> bool {
        let all = |x: &[Value], y: &[Value]| {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| identical(p, q))
        };
        match (a, b) {
            (Value::Float(x), Value::Float(y)) => {
                (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
            }
            (Value::List(x), Value::List(y))
            | (Value::Tuple(x), Value::Tuple(y))
            | (Value::Set(x), Value::Set(y))
            | (Value::FrozenSet(x), Value::FrozenSet(y)) => all(x, y),
            (Value::Dict(x), Value::Dict(y)) => {
                x.len() == y.len()
                    && x.iter()
                        .zip(y)
                        .all(|((k1, v1), (k2, v2))| identical(k1, k2) && identical(v1, v2))
            }
            _ => a == b,
        }
    }

    /// A payload's first bytes in hex, for failure messages.
    fn hex_head(b: &[u8]) -> String {
        let head = hex::encode(&b[..b.len().min(64)]);
        if b.len() > 64 {
            format!("{head}... ({} bytes)", b.len())
        } else {
            head
        }
    }

    /// A value's Debug form, cut for failure messages.
    fn short(v: &Value) -> String {
        let text = format!("{v:?}");
        match text.char_indices().nth(200) {
            Some((cut, _)) => format!("{}... ({} chars)", &text[..cut], text.len()),
            None => text,
        }
    }

    fn h(s: &str) -> Vec<u8> {
        hex::decode(s).expect("hex")
    }

    fn s(x: &str) -> Value {
        Value::Str(x.to_owned())
    }

    fn big(x: &str) -> Value {
        Value::int(x.parse().expect("decimal"))
    }

    // ---- loads: real CPython 3.11 output (captured with the pyspark-4.0.5 env's python) ----

    #[test]
    fn loads_reads_memoized_containers_used_twice() {
        // s = "abc"; t = (s, s); pickle.dumps([t, t], 5): serde-pickle 1.2 fails on this with
        // "recursive structure found".
        let v = loads(&h(
            "80059511000000000000005d94288c0361626394680186946802652e",
        ))
        .unwrap();
        let t = Value::Tuple(vec![s("abc"), s("abc")]);
        assert_eq!(v, Value::List(vec![t.clone(), t]));
    }

    #[test]
    fn loads_reads_the_briefs_example() {
        // pickle.dumps([1, 2**70, (1, "é"), b"x", None, 1.5, {"a": [1]}], 5)
        let p = h("80059535000000000000005d94284b018a090000000000000000404b018c02c3a9948694430178944e473ff80000000000007d948c0161945d944b016173652e");
        let expected = Value::List(vec![
            Value::Int(1),
            big("1180591620717411303424"),
            Value::Tuple(vec![Value::Int(1), s("é")]),
            Value::Bytes(b"x".to_vec()),
            Value::None,
            Value::Float(1.5),
            Value::Dict(vec![(s("a"), Value::List(vec![Value::Int(1)]))]),
        ]);
        assert_eq!(loads(&p).unwrap(), expected);
        assert_eq!(dumps(&expected), p, "dumps writes CPython's bytes");
    }

    /// The same list pickled by CPython 3.11 with protocols 0 to 5: sets through
    /// `builtins.set` REDUCE (< 4), bytes through `_codecs.encode` (< 3), bytearray through
    /// REDUCE (< 5), text opcodes and PUT/GET memo (0), STACK_GLOBAL (4).
    #[test]
    fn loads_reads_every_protocol() {
        let protocols = [
            "286c70300a635f5f6275696c74696e5f5f0a7365740a70310a28286c70320a49310a6149320a617470330a5270340a61635f5f6275696c74696e5f5f0a66726f7a656e7365740a70350a28286c70360a49330a617470370a5270380a61635f636f646563730a656e636f64650a70390a285678790a7031300a566c6174696e310a7031310a747031320a527031330a61635f5f6275696c74696e5f5f0a62797465730a7031340a2874527031350a61635f5f6275696c74696e5f5f0a6279746561727261790a7031360a2867390a2856ff5c75303030300a7031370a6731310a747031380a527031390a747032300a527032310a614930310a614930300a614c313138303539313632303731373431313330333432344c0a614c2d313138303539313632303731373431313330333432344c0a6156e95c75303130315c5530303031663630300a7032320a6146312e350a61466e616e0a614e612874612849310a747032330a6128647032340a566b0a7032350a2849310a49320a747032360a73612e",
            "5d710028635f5f6275696c74696e5f5f0a7365740a7101285d7102284b014b0265747103527104635f5f6275696c74696e5f5f0a66726f7a656e7365740a7105285d71064b0361747107527108635f636f646563730a656e636f64650a71092858020000007879710a58060000006c6174696e31710b74710c52710d635f5f6275696c74696e5f5f0a62797465730a710e2952710f635f5f6275696c74696e5f5f0a6279746561727261790a7110286809285803000000c3bf007111680b7471125271137471145271154930310a4930300a4c313138303539313632303731373431313330333432344c0a4c2d313138303539313632303731373431313330333432344c0a5808000000c3a9c481f09f98807116473ff8000000000000477ff80000000000004e29284b017471177d711858010000006b7119284b014b0274711a73652e",
            "80025d710028635f5f6275696c74696e5f5f0a7365740a71015d7102284b014b0265857103527104635f5f6275696c74696e5f5f0a66726f7a656e7365740a71055d71064b0361857107527108635f636f646563730a656e636f64650a710958020000007879710a58060000006c6174696e31710b86710c52710d635f5f6275696c74696e5f5f0a62797465730a710e2952710f635f5f6275696c74696e5f5f0a6279746561727261790a711068095803000000c3bf007111680b86711252711385711452711588898a090000000000000000408a090000000000000000c05808000000c3a9c481f09f98807116473ff8000000000000477ff80000000000004e294b018571177d711858010000006b71194b014b0286711a73652e",
            "80035d710028636275696c74696e730a7365740a71015d7102284b014b0265857103527104636275696c74696e730a66726f7a656e7365740a71055d71064b03618571075271084302787971094300710a636275696c74696e730a6279746561727261790a710b4302ff00710c85710d52710e88898a090000000000000000408a090000000000000000c05808000000c3a9c481f09f9880710f473ff8000000000000477ff80000000000004e294b018571107d711158010000006b71124b014b0286711373652e",
            "80049584000000000000005d94288f94284b014b0290284b03919443027879944300948c086275696c74696e73948c096279746561727261799493944302ff00948594529488898a090000000000000000408a090000000000000000c08c08c3a9c481f09f988094473ff8000000000000477ff80000000000004e294b0185947d948c016b944b014b02869473652e",
            "8005956e000000000000005d94288f94284b014b0290284b0391944302787994430094960200000000000000ff009488898a090000000000000000408a090000000000000000c08c08c3a9c481f09f988094473ff8000000000000477ff80000000000004e294b0185947d948c016b944b014b02869473652e",
        ];
        // [{1, 2}, frozenset({3}), b"xy", b"", bytearray(b"\xff\x00"), True, False, 2**70, -2**70,
        //  "é\u0101😀", 1.5, nan, None, (), (1,), {"k": (1, 2)}]
        let expected = Value::List(vec![
            Value::Set(vec![Value::Int(1), Value::Int(2)]),
            Value::FrozenSet(vec![Value::Int(3)]),
            Value::Bytes(b"xy".to_vec()),
            Value::Bytes(vec![]),
            Value::ByteArray(vec![0xff, 0]),
            Value::Bool(true),
            Value::Bool(false),
            big("1180591620717411303424"),
            big("-1180591620717411303424"),
            s("é\u{101}😀"),
            Value::Float(1.5),
            Value::Float(f64::NAN),
            Value::None,
            Value::Tuple(vec![]),
            Value::Tuple(vec![Value::Int(1)]),
            Value::Dict(vec![(
                s("k"),
                Value::Tuple(vec![Value::Int(1), Value::Int(2)]),
            )]),
        ]);
        for (proto, p) in protocols.iter().enumerate() {
            let got = loads(&h(p)).unwrap_or_else(|e| panic!("protocol {proto}: {e}"));
            assert!(identical(&got, &expected), "protocol {proto}: {got:?}");
        }
    }

    #[test]
    fn loads_reads_pyrolite_bytearrays() {
        // Spark's JVM (Pyrolite, protocol 2) writes a Java byte[] as bytearray(str, "latin-1").
        let mut p = vec![op::PROTO, 2, op::GLOBAL];
        p.extend_from_slice(b"__builtin__\nbytearray\n");
        p.extend_from_slice(&[op::BINUNICODE, 2, 0, 0, 0, 0xc3, 0xbf]); // "ÿ"
        p.extend_from_slice(&[op::BINUNICODE, 7, 0, 0, 0]);
        p.extend_from_slice(b"latin-1");
        p.extend_from_slice(&[op::TUPLE2, op::REDUCE, op::STOP]);
        assert_eq!(loads(&p).unwrap(), Value::ByteArray(vec![0xff]));
    }

    #[test]
    fn loads_follows_python_reference_semantics() {
        // l = []; t = (l,); l.append(1): the tuple sees the list's later items.
        let p = [
            op::PROTO,
            5,
            op::EMPTY_LIST,
            op::MEMOIZE,
            op::TUPLE1,
            op::BINGET,
            0,
            op::BININT1,
            1,
            op::APPEND,
            op::POP,
            op::STOP,
        ];
        assert_eq!(
            loads(&p).unwrap(),
            Value::Tuple(vec![Value::List(vec![Value::Int(1)])])
        );
        // set(l) copies: a later append to l does not reach the set.
        let mut p = vec![op::PROTO, 2, op::GLOBAL];
        p.extend_from_slice(b"builtins\nset\n");
        p.extend_from_slice(&[
            op::EMPTY_LIST,
            op::BINPUT,
            0,
            op::TUPLE1,
            op::REDUCE,
            op::BINGET,
            0,
            op::BININT1,
            7,
            op::APPEND,
            op::POP,
            op::STOP,
        ]);
        assert_eq!(loads(&p).unwrap(), Value::Set(vec![]));
    }

    #[test]
    fn loads_keeps_dict_order_and_python_key_equality() {
        let d = Value::Dict(vec![
            (s("b"), Value::Int(1)),
            (Value::Int(1), s("first")),
            (s("a"), Value::Int(2)),
            (Value::Bool(true), s("second")),
            (Value::Float(1.0), s("third")),
        ]);
        // As Python's {"b": 1, 1: "first", "a": 2, True: "second", 1.0: "third"}.
        let expected = Value::Dict(vec![
            (s("b"), Value::Int(1)),
            (Value::Int(1), s("third")),
            (s("a"), Value::Int(2)),
        ]);
        assert_eq!(loads(&dumps(&d)).unwrap(), expected);
        let set = Value::Set(vec![
            Value::Float(2.0),
            Value::Int(2),
            Value::Float(f64::NAN),
            Value::Float(f64::NAN),
        ]);
        let back = loads(&dumps(&set)).unwrap();
        assert!(
            identical(
                &back,
                &Value::Set(vec![
                    Value::Float(2.0),
                    Value::Float(f64::NAN),
                    Value::Float(f64::NAN)
                ])
            ),
            "{back:?}"
        );
    }

    #[test]
    fn loads_rejects_what_is_not_plain_data() {
        // l = []; l.append((l,))
        let cycle = h("80059508000000000000005d9468008594612e");
        assert!(
            matches!(loads(&cycle), Err(PickleError::Recursive { .. })),
            "{:?}",
            loads(&cycle)
        );
        // datetime.date(2020, 1, 2)
        let date = h("80059520000000000000008c086461746574696d65948c0464617465949394430407e4010294859452942e");
        match loads(&date) {
            Err(PickleError::NotPlainGlobal { module, name, .. }) => {
                assert_eq!((module.as_str(), name.as_str()), ("datetime", "date"))
            }
            other => panic!("{other:?}"),
        }
        // collections.OrderedDict(a=1) ends in SETITEM on an object.
        let odict = h(
            "80059529000000000000008c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c0161944b01732e",
        );
        assert!(
            matches!(loads(&odict), Err(PickleError::NotPlainGlobal { .. })),
            "{:?}",
            loads(&odict)
        );
        assert!(matches!(
            loads(&[op::PROTO, 5, op::NEWOBJ]),
            Err(PickleError::NotPlainOpcode {
                at: 2,
                name: "NEWOBJ"
            })
        ));
        assert!(matches!(
            loads(&[0xff]),
            Err(PickleError::UnknownOpcode {
                at: 0,
                opcode: 0xff
            })
        ));
        let unhashable = [
            op::PROTO,
            5,
            op::EMPTY_DICT,
            op::EMPTY_LIST,
            op::NONE,
            op::SETITEM,
            op::STOP,
        ];
        assert!(matches!(
            loads(&unhashable),
            Err(PickleError::Unhashable {
                at: 2,
                type_name: "list"
            })
        ));
        // A lone surrogate, as CPython writes "\ud800" (surrogatepass).
        let surrogate = [
            op::PROTO,
            5,
            op::SHORT_BINUNICODE,
            3,
            0xed,
            0xa0,
            0x80,
            op::STOP,
        ];
        let e = loads(&surrogate).unwrap_err().to_string();
        assert!(e.contains("lone surrogate"), "{e}");
    }

    #[test]
    fn loads_errors_say_where() {
        let p = dumps(&Value::List(vec![s("hello"), Value::Int(70000)]));
        for cut in 0..p.len() {
            let e = loads(&p[..cut]).unwrap_err();
            assert!(
                matches!(e, PickleError::Truncated { .. }),
                "cut at {cut}: {e}"
            );
        }
        let mut trailing = p.clone();
        trailing.push(0);
        assert!(matches!(
            loads(&trailing),
            Err(PickleError::TrailingBytes { len: 1, .. })
        ));
        // A length that claims more than there is: an error, never an allocation of that size.
        let huge = [
            op::PROTO,
            5,
            op::BINBYTES8,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0xff,
            0x7f,
            op::STOP,
        ];
        assert!(matches!(
            loads(&huge),
            Err(PickleError::Truncated { at: 11, .. })
        ));
        let e = loads(&[op::PROTO, 5, op::BINGET, 9, op::STOP])
            .unwrap_err()
            .to_string();
        assert_eq!(e, "malformed pickle at byte 2: memo key 9 was never stored");
    }

    /// Nesting at MAX_DEPTH goes through every walk here and in serde_json inside a 2 MiB stack
    /// (test and tokio worker threads); one level more is an error, not a stack overflow.
    #[test]
    fn deep_nesting_is_bounded_and_safe() {
        std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let nest = |n: usize| {
                    let mut p = vec![op::PROTO, 5, op::NONE];
                    p.extend(std::iter::repeat_n(op::TUPLE1, n));
                    p.push(op::STOP);
                    p
                };
                let v = loads(&nest(MAX_DEPTH)).expect("MAX_DEPTH levels decode");
                let again = loads(&dumps(&v)).expect("and round-trip");
                assert!(identical(&v, &again));
                assert_eq!(v.clone(), again);
                let j = value_to_json(&v);
                assert_eq!(j.clone(), j);
                assert!(j.to_string().len() > MAX_DEPTH);
                assert_eq!(value_from_json(&j).unwrap(), v);
                assert!(matches!(
                    loads(&nest(MAX_DEPTH + 1)),
                    Err(PickleError::TooDeep { .. })
                ));
                let deeper = serde_json::json!({"$tuple": [j]});
                assert!(matches!(
                    value_from_json(&deeper),
                    Err(PickleError::Json { .. })
                ));
                let mut deep_list = vec![op::PROTO, 5];
                deep_list.extend(std::iter::repeat_n(op::EMPTY_LIST, 100_000));
                deep_list.extend(std::iter::repeat_n(op::APPEND, 99_999));
                deep_list.push(op::STOP);
                assert!(matches!(
                    loads(&deep_list),
                    Err(PickleError::TooDeep { .. })
                ));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    #[test]
    fn exponential_sharing_is_refused_quickly() {
        // x0 = []; x(i+1) = [x(i), x(i)]: 60 doublings would be 2^60 lists.
        let mut p = vec![op::PROTO, 5, op::EMPTY_LIST, op::MEMOIZE];
        for i in 0..60u32 {
            p.extend_from_slice(&[op::EMPTY_LIST, op::MARK, op::LONG_BINGET]);
            p.extend_from_slice(&i.to_le_bytes());
            p.push(op::LONG_BINGET);
            p.extend_from_slice(&i.to_le_bytes());
            p.extend_from_slice(&[op::APPENDS, op::MEMOIZE]);
        }
        p.push(op::STOP);
        let started = std::time::Instant::now();
        assert!(matches!(loads(&p), Err(PickleError::TooLarge)));
        assert!(started.elapsed() < std::time::Duration::from_secs(1));
    }

    // ---- dumps: CPython's exact bytes ----

    #[test]
    fn dumps_matches_cpython_bytes() {
        // Captured from CPython 3.11: pickle.dumps(v, 5), v built by pickle.loads.
        let cases: Vec<(Value, &str)> = vec![
            (Value::Int(1), "80054b012e"),
            (s(""), "80059504000000000000008c00942e"),
            (Value::Bytes(vec![]), "80059504000000000000004300942e"),
            (Value::List(vec![]), "80055d942e"),
            (Value::Int(-1), "80059506000000000000004affffffff2e"),
            (Value::Tuple(vec![]), "8005292e"),
            (Value::Set(vec![]), "80058f942e"),
            (Value::FrozenSet(vec![]), "80059504000000000000002891942e"),
            (Value::ByteArray(b"ab".to_vec()), "8005950d000000000000009602000000000000006162942e"),
            // '', one-Latin-1-character str and b'' are CPython singletons: memo GETs.
            (
                Value::List(vec![
                    s("a"),
                    s("a"),
                    s("é"),
                    s("é"),
                    s("\u{101}"),
                    s("\u{101}"),
                    Value::Bytes(vec![]),
                    Value::Bytes(vec![]),
                    Value::Bytes(vec![7]),
                    Value::Bytes(vec![7]),
                ]),
                "80059529000000000000005d94288c01619468018c02c3a99468028c02c481948c02c4819443009468054301079443010794652e",
            ),
            (big("-9223372036854775809"), "8005950c000000000000008a09ffffffffffffff7fff2e"),
            (Value::Int(i64::MIN), "8005950b000000000000008a0800000000000000802e"),
            (Value::Int(65536), "80059506000000000000004a000001002e"),
            (Value::Int(-129), "80059506000000000000004a7fffffff2e"),
            (Value::Float(-0.0), "8005950a000000000000004780000000000000002e"),
            (Value::Dict(vec![(s("k"), Value::None)]), "80059509000000000000007d948c016b944e732e"),
            (
                Value::Tuple(vec![Value::Int(1), Value::Int(2), Value::Int(3), Value::Int(4)]),
                "8005950c00000000000000284b014b024b034b0474942e",
            ),
        ];
        for (v, expected) in &cases {
            assert_eq!(hex::encode(dumps(v)), *expected, "{v:?}");
            assert!(identical(&loads(&h(expected)).unwrap(), v), "{v:?}");
        }
    }

    #[test]
    fn dumps_batches_like_cpython() {
        // (length, last 8 bytes) of CPython 3.11 pickle.dumps(v, 5). Lists: one item is APPEND,
        // more go in MARK..APPENDS batches of 1000. Dicts and sets end in an extra empty
        // batch when their size is a multiple of 1000.
        let nones = |n: usize| Value::List(vec![Value::None; n]);
        let dict = |n: i64| Value::Dict((0..n).map(|i| (Value::Int(i), Value::None)).collect());
        let set = |n: i64| Value::Set((0..n).map(Value::Int).collect());
        let cases = [
            (nones(1), 16, "0000005d944e612e"),
            (nones(1000), 1016, "4e4e4e4e4e4e652e"),
            (nones(1001), 1019, "4e4e4e65284e652e"),
            (dict(1), 18, "007d944b004e732e"),
            (dict(1000), 3762, "4de7034e7528752e"),
            (dict(1001), 3766, "75284de8034e752e"),
            (set(1), 18, "008f94284b00902e"),
            (set(1000), 2762, "034de7039028902e"),
            (set(2000), 5764, "074dcf079028902e"),
        ];
        for (v, len, tail) in cases {
            let p = dumps(&v);
            assert_eq!(
                (p.len(), hex::encode(&p[p.len() - 8..])),
                (len, tail.to_owned()),
                "{}",
                hex_head(&p)
            );
        }
    }

    #[test]
    fn dumps_frames_like_cpython() {
        // CPython 3.11: pickle.dumps(["x" * 70000, "y"], 5) leaves the 3 bytes before the big
        // payload unframed, writes the payload outside any frame, then frames the 7-byte rest.
        let p = dumps(&Value::List(vec![s(&"x".repeat(70000)), s("y")]));
        assert_eq!(p.len(), 70026);
        assert_eq!(
            &p[..10],
            &[
                0x80,
                5,
                op::EMPTY_LIST,
                op::MEMOIZE,
                op::MARK,
                op::BINUNICODE,
                0x70,
                0x11,
                1,
                0
            ]
        );
        assert_eq!(&p[70010..70019], &[op::FRAME, 7, 0, 0, 0, 0, 0, 0, 0]);
        // pickle.dumps(list(range(30000)), 5): frames of 65537 and 24270 bytes.
        let p = dumps(&Value::List((0..30000).map(Value::Int).collect()));
        assert_eq!(p.len(), 89827);
        assert_eq!(&p[2..11], &[op::FRAME, 0x01, 0x00, 0x01, 0, 0, 0, 0, 0]);
        assert_eq!(&p[65548..65557], &[op::FRAME, 0xce, 0x5e, 0, 0, 0, 0, 0, 0]);
    }

    // ---- JSON ----

    #[test]
    fn json_tagged_forms() {
        let j = json!([
            null, true, 7, 18446744073709551615u64, 1.5, "é😀", [1],
            {"a": 1, "$b": 2},
            {"$tuple": [1, {"$tuple": []}]},
            {"$bytes": "00FF"}, {"$bytearray": ""},
            {"$float": "nan"}, {"$float": "-inf"}, {"$float": "1e3"},
            {"$int": "-123456789012345678901234567890"}, {"$int": "5"},
            {"$dict": [[1, "a"], [{"$tuple": [1, 2]}, "b"], ["$x", null]]},
            {"$dict": [["$tuple", 1]]},
            {"$set": [3, 1, 3]}, {"$frozenset": []}
        ]);
        let v = value_from_json(&j).unwrap();
        let Value::List(items) = &v else { panic!() };
        assert_eq!(items[3], big("18446744073709551615"));
        assert_eq!(
            items[7],
            Value::Dict(vec![(s("a"), Value::Int(1)), (s("$b"), Value::Int(2))])
        );
        assert_eq!(
            items[8],
            Value::Tuple(vec![Value::Int(1), Value::Tuple(vec![])])
        );
        assert_eq!(items[9], Value::Bytes(vec![0, 255]));
        assert_eq!(items[10], Value::ByteArray(vec![]));
        assert!(matches!(items[11], Value::Float(f) if f.is_nan()));
        assert_eq!(items[12], Value::Float(f64::NEG_INFINITY));
        assert_eq!(items[13], Value::Float(1000.0));
        assert_eq!(items[14], big("-123456789012345678901234567890"));
        assert_eq!(items[15], Value::Int(5));
        assert_eq!(items[17], Value::Dict(vec![(s("$tuple"), Value::Int(1))]));
        assert_eq!(items[18], Value::Set(vec![Value::Int(3), Value::Int(1)]));
        // The canonical form: sets and $dict entries sorted, lone "$" keys kept as $dict.
        let canonical = value_to_json(&v);
        assert_eq!(canonical[3], json!({"$int": "18446744073709551615"}));
        assert_eq!(canonical[9], json!({"$bytes": "00ff"}));
        assert_eq!(canonical[13], json!(1000.0));
        assert_eq!(canonical[15], json!(5));
        assert_eq!(
            canonical[16],
            json!({"$dict": [["$x", null], [1, "a"], [{"$tuple": [1, 2]}, "b"]]})
        );
        assert_eq!(canonical[17], json!({"$dict": [["$tuple", 1]]}));
        assert_eq!(canonical[18], json!({"$set": [1, 3]}));
        assert_eq!(
            value_to_json(&value_from_json(&canonical).unwrap()),
            canonical
        );
    }

    #[test]
    fn json_errors_say_where() {
        let err = |j: serde_json::Value| value_from_json(&j).unwrap_err().to_string();
        assert_eq!(
            err(json!([1, {"k": {"$bytes": "zz"}}])),
            "JSON value at /1/k/$bytes: $bytes takes hex digits: Invalid character 'z' at position 0"
        );
        assert!(err(json!({"$tupel": []})).contains("unknown tag \"$tupel\""));
        assert!(err(json!({"$dict": [[[1], 2]]})).contains("a list cannot be a dict key"));
        assert!(err(json!({"$set": [{"$set": []}]})).contains("a set cannot be a set member"));
        assert!(err(json!({"$dict": [[1]]})).starts_with("JSON value at /$dict/0: a $dict entry"));
        assert!(err(json!({"$int": "1.5"})).contains("not a decimal integer"));
    }

    // ---- frame layouts ----

    #[test]
    fn batched_frames_follow_pyspark() {
        let ints = |n: i64| (0..n).map(Value::Int).collect::<Vec<_>>();
        let lens = |frames: Vec<Vec<u8>>| {
            frames
                .iter()
                .map(|f| match loads(f).unwrap() {
                    Value::List(items) => items.len(),
                    other => panic!("{other:?}"),
                })
                .collect::<Vec<_>>()
        };
        assert_eq!(lens(batched_frames(&ints(7), 3)), [3, 3, 1]);
        assert_eq!(lens(batched_frames(&ints(7), -1)), [7]);
        assert_eq!(
            lens(batched_frames(&[], -1)),
            [0],
            "UNLIMITED writes one frame even when empty"
        );
        assert_eq!(lens(batched_frames(&[], 2)), Vec::<usize>::new());
        // pyspark 3.5-4.1: a size that the counting loop never reaches.
        assert_eq!(lens(batched_frames(&ints(5), 0)), [5]);
        assert_eq!(lens(batched_frames(&ints(5), -2)), [5]);
        assert_eq!(lens(batched_frames(&[], 0)), Vec::<usize>::new());
        // AutoBatched: 1, 2, 4, ... while frames stay under 64 KiB.
        assert_eq!(
            lens(auto_batched_frames(&ints(100))),
            [1, 2, 4, 8, 16, 32, 37]
        );
        let big = vec![s(&"x".repeat(700_000)); 3];
        assert_eq!(lens(auto_batched_frames(&big)), [1, 1, 1]);
        let frames = unbatched_frames(&ints(3));
        assert_eq!(
            frames.iter().map(|f| loads(f).unwrap()).collect::<Vec<_>>(),
            ints(3)
        );
    }

    #[test]
    fn text_and_pair_frames() {
        assert_eq!(
            utf8_frames(&[Some("é".into()), None]),
            [Some("é".as_bytes().to_vec()), None]
        );
        let (k, v) = (
            vec![b"k0".to_vec(), b"k1".to_vec()],
            vec![b"v0".to_vec(), b"v1".to_vec()],
        );
        let names = |f: Vec<Vec<u8>>| {
            f.into_iter()
                .map(|b| String::from_utf8(b).unwrap())
                .collect::<Vec<_>>()
        };
        assert_eq!(names(pair_frames(&k, &v)), ["k0", "v0", "k1", "v1"]);
        assert_eq!(names(pair_frames(&k, &v[..1])), ["k0", "v0", "k1"]);
        assert_eq!(
            names(cartesian_frames(&k, &v)),
            ["k0", "v0", "k0", "v1", "k1", "v0", "k1", "v1"]
        );
    }

    #[test]
    fn decode_frames_by_kind() {
        let batch = |vs: &[i64]| {
            Some(dumps(&Value::List(
                vs.iter().copied().map(Value::Int).collect(),
            )))
        };
        let got = decode_frames(
            FrameKind::Batched,
            &[batch(&[1, 2]), batch(&[]), batch(&[3])],
        )
        .unwrap();
        assert_eq!(got, [Value::Int(1), Value::Int(2), Value::Int(3)]);
        let got =
            decode_frames(FrameKind::Unbatched, &[batch(&[1]), Some(dumps(&s("x")))]).unwrap();
        assert_eq!(got, [Value::List(vec![Value::Int(1)]), s("x")]);
        let got = decode_frames(FrameKind::Utf8, &[Some(b"a".to_vec()), None]).unwrap();
        assert_eq!(got, [s("a"), Value::None]);
        let got = decode_frames(FrameKind::Raw, &[Some(vec![0xff]), None]).unwrap();
        assert_eq!(got, [Value::Bytes(vec![0xff]), Value::None]);

        let err =
            |kind, frames: &[Option<Vec<u8>>]| decode_frames(kind, frames).unwrap_err().to_string();
        assert_eq!(
            err(FrameKind::Batched, &[batch(&[1]), None]),
            "frame 1 is NULL (-5), which a batched pickle serializer never writes"
        );
        assert_eq!(
            err(
                FrameKind::Batched,
                &[batch(&[1]), Some(dumps(&Value::Int(1)))]
            ),
            "frame 1 holds a pickled int, not the list that a batched serializer writes per frame"
        );
        assert_eq!(
            err(FrameKind::Unbatched, &[Some(vec![op::PROTO, 5, op::NONE])]),
            "frame 0: pickle ends at byte 3 while reading an opcode (the pickle has no STOP): the payload is truncated or is not a pickle"
        );
        assert!(err(FrameKind::Utf8, &[Some(vec![b'a', 0xff])])
            .starts_with("frame 0 is not UTF-8 (first invalid byte at 1)"));
    }

    // ---- properties ----

    fn arb_hashable() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::None),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::Int),
            any::<i128>().prop_map(|i| Value::int(BigInt::from(i))),
            any::<f64>().prop_map(Value::Float),
            ".{0,8}".prop_map(Value::Str),
            prop::collection::vec(any::<u8>(), 0..8).prop_map(Value::Bytes),
        ];
        leaf.prop_recursive(2, 8, 3, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Tuple),
                prop::collection::vec(inner, 0..3)
                    .prop_map(|v| Value::FrozenSet(dedupe_set(v).expect("hashable"))),
            ]
        })
    }

    fn arb_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            arb_hashable(),
            prop::collection::vec(any::<u8>(), 0..300).prop_map(Value::ByteArray),
            prop::collection::vec(any::<char>(), 0..300)
                .prop_map(|c| Value::Str(c.into_iter().collect())),
            (1u32..80).prop_map(|bits| Value::int(BigInt::from(3u8).pow(bits * 20))),
        ];
        leaf.prop_recursive(4, 64, 8, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::List),
                prop::collection::vec(inner.clone(), 0..8).prop_map(Value::Tuple),
                prop::collection::vec((arb_hashable(), inner), 0..8)
                    .prop_map(|p| Value::Dict(dedupe_dict(p).expect("hashable"))),
                prop::collection::vec(arb_hashable(), 0..8)
                    .prop_map(|v| Value::Set(dedupe_set(v).expect("hashable"))),
            ]
        })
    }

    proptest! {
        #[test]
        fn dumps_then_loads_is_identity(v in arb_value()) {
            let back = loads(&dumps(&v)).unwrap();
            prop_assert!(identical(&back, &v), "{:?} came back as {:?}", v, back);
        }

        #[test]
        fn json_round_trips_canonically(v in arb_value()) {
            let j = value_to_json(&v);
            let back = value_from_json(&j).unwrap();
            prop_assert_eq!(value_to_json(&back), j);
            // Not through text: serde_json without its float_roundtrip feature parses some
            // floats one ULP off (-3.1372620998469386e-124 reads as -3.137262099846938e-124).
        }

        #[test]
        fn batches_hold_the_values_in_order(vs in prop::collection::vec(arb_value(), 0..40), n in -1i32..6) {
            let frames: Vec<Option<Vec<u8>>> = batched_frames(&vs, n).into_iter().map(Some).collect();
            let back = decode_frames(FrameKind::Batched, &frames).unwrap();
            prop_assert!(identical(&Value::List(back), &Value::List(vs.clone())));
            let frames: Vec<Option<Vec<u8>>> = auto_batched_frames(&vs).into_iter().map(Some).collect();
            let back = decode_frames(FrameKind::Batched, &frames).unwrap();
            prop_assert!(identical(&Value::List(back), &Value::List(vs)));
        }

        #[test]
        fn loads_never_panics_on_garbage(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
            let _ = loads(&bytes);
        }

        /// Valid opcodes in random order: stack and memo misuse, cycles through the memo,
        /// REDUCE of the supported globals on odd arguments.
        #[test]
        fn loads_never_panics_on_opcode_soup(ops in prop::collection::vec(prop_oneof![
            Just(vec![op::MARK]), Just(vec![op::POP]), Just(vec![op::POP_MARK]), Just(vec![op::DUP]),
            Just(vec![op::NONE]), Just(vec![op::BININT1, 1]), Just(vec![op::SHORT_BINUNICODE, 1, b'a']),
            Just(vec![op::EMPTY_LIST]), Just(vec![op::APPEND]), Just(vec![op::APPENDS]), Just(vec![op::LIST]),
            Just(vec![op::EMPTY_DICT]), Just(vec![op::SETITEM]), Just(vec![op::SETITEMS]), Just(vec![op::DICT]),
            Just(vec![op::EMPTY_SET]), Just(vec![op::ADDITEMS]), Just(vec![op::FROZENSET]),
            Just(vec![op::EMPTY_TUPLE]), Just(vec![op::TUPLE]), Just(vec![op::TUPLE1]), Just(vec![op::TUPLE2]), Just(vec![op::TUPLE3]),
            Just(vec![op::MEMOIZE]), (0u8..4).prop_map(|k| vec![op::BINGET, k]), (0u8..4).prop_map(|k| vec![op::BINPUT, k]),
            Just(b"cbuiltins\nset\n".to_vec()), Just(b"c__builtin__\nbytearray\n".to_vec()), Just(b"c_codecs\nencode\n".to_vec()),
            Just(vec![op::STACK_GLOBAL]), Just(vec![op::REDUCE]), Just(vec![op::BINFLOAT, 0x7f, 0xf8, 0, 0, 0, 0, 0, 0]),
        ], 0..40)) {
            let mut p = vec![op::PROTO, 5];
            p.extend(ops.into_iter().flatten());
            p.push(op::STOP);
            let _ = loads(&p);
        }

        #[test]
        fn loads_never_panics_on_damaged_pickles(v in arb_value(), edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4)) {
            let mut p = dumps(&v);
            for (at, byte) in edits {
                let i = at.index(p.len());
                p[i] = byte;
            }
            let _ = loads(&p);
        }
    }

    // ---- against real CPython and pyspark ----

    /// Checks this module against the real thing, both ways, with the interpreter of a
    /// provisioned env (FAKEJVM_PYTHON, else pyspark 4.0.5's): CPython loads what `dumps`
    /// writes and re-pickles it to the same bytes; `loads` reads CPython's pickles at protocols
    /// 0-5; `batched_frames`/`auto_batched_frames` equal what pyspark's own BatchedSerializer and
    /// AutoBatchedSerializer write; pyspark's PairDeserializer, CartesianDeserializer and
    /// UTF8Deserializer read `pair_frames`/`cartesian_frames`/`utf8_frames` as intended.
    #[test]
    fn cross_check_with_cpython_and_pyspark() {
        let python = match std::env::var_os("FAKEJVM_PYTHON") {
            Some(p) => std::path::PathBuf::from(p),
            None => dirs::home_dir()
                .expect("a home directory")
                .join(".cache/fakejvm/envs/pyspark-4.0.5-py3.11/bin/python"),
        };
        assert!(
            python.exists(),
            "no Python with pyspark at {}: provision the pyspark 4.0.5 env (see the README) or set FAKEJVM_PYTHON \
             to a python whose site-packages has pyspark",
            python.display()
        );
        let dir = tempfile::tempdir().expect("a temp dir");
        let path = |name: &str| dir.path().join(name);

        // Values for the round trip: fixed edge cases, then generated ones (a fixed seed, so a
        // failure reproduces).
        let mut corpus = vec![
            Value::List(vec![
                s("a"),
                s("a"),
                s(""),
                s(""),
                Value::Bytes(vec![]),
                Value::Bytes(vec![]),
                Value::Bytes(vec![1]),
                Value::Bytes(vec![1]),
            ]),
            Value::Float(f64::NAN),
            Value::List(vec![
                Value::Float(f64::INFINITY),
                Value::Float(f64::NEG_INFINITY),
                Value::Float(-0.0),
            ]),
            big("-340282366920938463463374607431768211457"),
            Value::int(BigInt::from(7u8).pow(2000)),
            s("😀\u{10ffff}\0é"),
            Value::Tuple(vec![
                Value::Tuple(vec![Value::Tuple(vec![s("deep")])]),
                Value::Tuple(vec![]),
            ]),
            Value::List(vec![
                s(&"x".repeat(70_000)),
                s("y"),
                Value::Bytes(vec![7; 65_536]),
                Value::ByteArray(vec![8; 65_535]),
            ]),
            Value::Dict(
                (0..2000)
                    .map(|i| (Value::Int(i), Value::Tuple(vec![s("v"), Value::Int(i)])))
                    .collect(),
            ),
            Value::Set((0..1000).map(Value::Int).collect()),
            Value::Dict(vec![
                (Value::Tuple(vec![Value::Int(1), s("k")]), Value::None),
                (Value::FrozenSet(vec![]), Value::List(vec![])),
            ]),
        ];
        let mut runner = proptest::test_runner::TestRunner::deterministic();
        let strategy = arb_value();
        for _ in 0..300 {
            corpus.push(strategy.new_tree(&mut runner).expect("a value").current());
        }
        // CPython writes set members in hash order; only compare bytes where order cannot differ.
        fn order_free(v: &Value) -> bool {
            match v {
                Value::Set(items) | Value::FrozenSet(items) => {
                    items.len() <= 1 && items.iter().all(order_free)
                }
                Value::List(items) | Value::Tuple(items) => items.iter().all(order_free),
                Value::Dict(pairs) => pairs.iter().all(|(k, v)| order_free(k) && order_free(v)),
                _ => true,
            }
        }
        // Mixed data for the batch framings: ints, tuples, and strings large enough to cross
        // AutoBatchedSerializer's 64 KiB and 640 KiB thresholds (growing, then halving).
        let mut batch_values: Vec<Value> = (1..=1000).map(Value::Int).collect();
        batch_values.extend(
            (0..50).map(|i| Value::Tuple(vec![Value::Int(i), s(&"r".repeat(i as usize * 37))])),
        );
        batch_values.extend((0..40).map(|i| s(&"b".repeat(20_000 + i * 9_000))));
        batch_values.extend((0..3000).map(|i| Value::Float(i as f64 / 3.0)));
        batch_values.extend((0..12).map(|_| s(&"c".repeat(300_000))));
        let keys: Vec<Value> = (0..10).map(Value::Int).collect();
        let vals: Vec<Value> = (0..10).map(|i| s(&format!("v{i}"))).collect();
        let lines = vec![
            Some("é".to_owned()),
            None,
            Some(String::new()),
            Some("x".repeat(100_000)),
        ];

        let write_frames = |name: &str, frames: &[Option<Vec<u8>>]| {
            let mut out = Vec::new();
            for f in frames {
                match f {
                    Some(b) => {
                        out.extend_from_slice(&(b.len() as i32).to_be_bytes());
                        out.extend_from_slice(b);
                    }
                    None => out.extend_from_slice(&(-5i32).to_be_bytes()),
                }
            }
            std::fs::write(path(name), out).expect("write a test input");
        };
        let some = |frames: Vec<Vec<u8>>| frames.into_iter().map(Some).collect::<Vec<_>>();
        write_frames("corpus.bin", &some(unbatched_frames(&corpus)));
        write_frames("batch_values.bin", &some(unbatched_frames(&batch_values)));
        let key_batches = batched_frames(&keys, 3);
        let val_batches = batched_frames(&vals, 3);
        write_frames("pairs.bin", &some(pair_frames(&key_batches, &val_batches)));
        write_frames(
            "cartesian.bin",
            &some(cartesian_frames(&key_batches, &val_batches)),
        );
        write_frames("lines.bin", &utf8_frames(&lines));

        run_python(&python, CROSS_CHECK_PY, dir.path());

        let read_frames = |name: &str| -> Vec<Vec<u8>> {
            let data = std::fs::read(path(name))
                .unwrap_or_else(|e| panic!("{name} from the Python side: {e}"));
            let mut frames = Vec::new();
            let mut at = 0;
            while at < data.len() {
                let n = i32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
                frames.push(data[at + 4..at + 4 + n].to_vec());
                at += 4 + n;
            }
            frames
        };
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(path("report.json")).unwrap()).unwrap();
        let pyspark_version = report["pyspark"].as_str().unwrap().to_owned();
        let islice_batching = {
            let mut parts = pyspark_version
                .split('.')
                .map(|p| p.parse::<u32>().unwrap_or(0));
            (parts.next().unwrap_or(0), parts.next().unwrap_or(0)) >= (4, 2)
        };

        // 1. CPython re-pickles what it loaded from `dumps` to the same bytes.
        let same = report["same_bytes"].as_array().unwrap();
        assert_eq!(same.len(), corpus.len());
        for (i, (v, same)) in corpus.iter().zip(same).enumerate() {
            if order_free(v) {
                assert_eq!(
                    same,
                    &json!(true),
                    "value {i}: CPython re-pickles {} differently",
                    short(v)
                );
            }
        }
        // 2. `loads` reads CPython's pickles of every value at protocols 0-5.
        let redumped = read_frames("redump.bin");
        assert_eq!(redumped.len(), corpus.len() * 6);
        for (i, p) in redumped.iter().enumerate() {
            let (v, proto) = (&corpus[i / 6], i % 6);
            let got = loads(p).unwrap_or_else(|e| {
                panic!(
                    "value {}, protocol {proto}: {e}; pickle {}",
                    i / 6,
                    hex_head(p)
                )
            });
            assert_eq!(
                value_to_json(&got),
                value_to_json(v),
                "value {}, protocol {proto}",
                i / 6
            );
            if order_free(v) && proto == 5 {
                assert!(identical(&got, v), "value {}: {}", i / 6, short(&got));
            }
        }
        // 3. Batch framings equal pyspark's own, byte for byte.
        let check = |name: &str, ours: Vec<Vec<u8>>| {
            let theirs = read_frames(&format!("{name}.bin"));
            let sizes = |f: &[Vec<u8>]| f.iter().map(Vec::len).collect::<Vec<_>>();
            assert_eq!(
                sizes(&ours),
                sizes(&theirs),
                "{name}: frame sizes differ from pyspark {pyspark_version}'s"
            );
            assert!(
                ours == theirs,
                "{name}: frame bytes differ from pyspark {pyspark_version}'s"
            );
            let decoded = decode_frames(FrameKind::Batched, &some(theirs)).unwrap();
            assert!(
                identical(&Value::List(decoded), &Value::List(batch_values.clone())),
                "{name}: decode_frames"
            );
        };
        check("auto", auto_batched_frames(&batch_values));
        for n in [-1, 1, 2, 3, 7, 10, 1000] {
            check(&format!("batched_{n}"), batched_frames(&batch_values, n));
        }
        assert_eq!(read_frames("batched_empty_-1.bin"), batched_frames(&[], -1));
        assert_eq!(read_frames("auto_empty.bin"), auto_batched_frames(&[]));
        if islice_batching {
            // 4.2+: islice(it, 0) ends the loop at once; a negative size raises.
            assert_eq!(read_frames("batched_0.bin"), Vec::<Vec<u8>>::new());
            assert_eq!(report["batched_-2"], json!("ValueError"));
        } else {
            check("batched_0", batched_frames(&batch_values, 0));
            check("batched_-2", batched_frames(&batch_values, -2));
        }
        // 4. pyspark's deserializers read our pair, cartesian and text framings.
        let zipped: Vec<Value> = keys
            .iter()
            .zip(&vals)
            .map(|(k, v)| Value::Tuple(vec![k.clone(), v.clone()]))
            .collect();
        assert_eq!(
            loads(&std::fs::read(path("pairs_out.pkl")).unwrap()).unwrap(),
            Value::List(zipped)
        );
        // Every (key batch, value batch) combination, each expanded to its product.
        let mut product = Vec::new();
        for key_batch in keys.chunks(3) {
            for val_batch in vals.chunks(3) {
                for k in key_batch {
                    for v in val_batch {
                        product.push(Value::Tuple(vec![k.clone(), v.clone()]));
                    }
                }
            }
        }
        assert_eq!(
            loads(&std::fs::read(path("cartesian_out.pkl")).unwrap()).unwrap(),
            Value::List(product)
        );
        let texts: Vec<Value> = lines
            .iter()
            .map(|l| l.clone().map(Value::Str).unwrap_or(Value::None))
            .collect();
        assert_eq!(
            loads(&std::fs::read(path("lines_out.pkl")).unwrap()).unwrap(),
            Value::List(texts)
        );
    }

    /// Runs `script` with `dir` as its argument, in its own process group, killed (group and
    /// all) if it outlives its deadline or the test panics.
    fn run_python(python: &std::path::Path, script: &str, dir: &std::path::Path) {
        use std::os::unix::process::CommandExt;
        struct KillGroup(i32);
        impl Drop for KillGroup {
            fn drop(&mut self) {
                // SAFETY: killpg only sends a signal; the group is the child we spawned.
                unsafe { libc::killpg(self.0, libc::SIGKILL) };
            }
        }
        let out = std::fs::File::create(dir.join("python.log")).unwrap();
        let mut child = std::process::Command::new(python)
            .arg("-c")
            .arg(script)
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
        let _group = KillGroup(child.id() as i32);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        let status = loop {
            if let Some(status) = child.try_wait().unwrap() {
                break status;
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "{} did not finish the cross-check within 180 s",
                    python.display()
                );
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        let log = std::fs::read_to_string(dir.join("python.log")).unwrap_or_default();
        assert!(
            status.success(),
            "{} failed ({status}):\n{log}",
            python.display()
        );
    }

    /// The Python half of the cross-check: reads frames (i32 length, payload; -5 = NULL) that
    /// the Rust half wrote, and answers with pyspark's own serializers.
    const CROSS_CHECK_PY: &str = r#"
import io, json, pickle, struct, sys
import pyspark
from pyspark.serializers import (AutoBatchedSerializer, BatchedSerializer, CartesianDeserializer,
                                 CPickleSerializer, PairDeserializer, UTF8Deserializer)

d = sys.argv[1]

def read_frames(name):
    data, out, i = open(f"{d}/{name}", "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack(">i", data[i:i + 4]); i += 4
        if n == -5:
            out.append(None)
            continue
        out.append(data[i:i + n]); i += n
    return out

def write_frames(name, frames):
    with open(f"{d}/{name}", "wb") as f:
        for fr in frames:
            f.write(struct.pack(">i", len(fr))); f.write(fr)

def stream_frames(raw):
    out, i = [], 0
    while i < len(raw):
        (n,) = struct.unpack(">i", raw[i:i + 4]); i += 4
        out.append(raw[i:i + n]); i += n
    return out

report = {"pyspark": pyspark.__version__, "python": sys.version}
corpus = read_frames("corpus.bin")
objs = [pickle.loads(p) for p in corpus]
report["same_bytes"] = [pickle.dumps(o, 5) == p for o, p in zip(objs, corpus)]
write_frames("redump.bin", [pickle.dumps(o, proto) for o in objs for proto in range(6)])

values = [pickle.loads(p) for p in read_frames("batch_values.bin")]
def dump(name, ser, vals):
    buf = io.BytesIO()
    try:
        ser.dump_stream(iter(vals), buf)
    except ValueError:
        report[name] = "ValueError"
        return
    write_frames(name + ".bin", stream_frames(buf.getvalue()))
dump("auto", AutoBatchedSerializer(CPickleSerializer()), values)
dump("auto_empty", AutoBatchedSerializer(CPickleSerializer()), [])
for n in [-1, 1, 2, 3, 7, 10, 1000, 0, -2]:
    dump(f"batched_{n}", BatchedSerializer(CPickleSerializer(), n), values)
dump("batched_empty_-1", BatchedSerializer(CPickleSerializer(), -1), [])

def load_all(deser, name):
    raw = open(f"{d}/{name}", "rb").read() + struct.pack(">i", -1)
    return list(deser.load_stream(io.BytesIO(raw)))
batched = BatchedSerializer(CPickleSerializer())
with open(f"{d}/pairs_out.pkl", "wb") as f:
    pickle.dump(load_all(PairDeserializer(batched, batched), "pairs.bin"), f, 5)
with open(f"{d}/cartesian_out.pkl", "wb") as f:
    pickle.dump(load_all(CartesianDeserializer(batched, batched), "cartesian.bin"), f, 5)
with open(f"{d}/lines_out.pkl", "wb") as f:
    pickle.dump(load_all(UTF8Deserializer(), "lines.bin"), f, 5)
json.dump(report, open(f"{d}/report.json", "w"))
"#;
}
