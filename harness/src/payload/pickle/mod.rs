//! Pickles on the Rust side, and the frame layouts of pyspark's RDD serializers.
//!
//! The harness pickles a scenario's values to build worker input, and unpickles what a worker
//! wrote to check its output. Plain data is held as itself: None, bool, int (any size), float,
//! str, bytes, bytearray, list, tuple, dict, set and frozenset. Everything else a pickle can
//! hold (a class or function by reference, an object built by REDUCE, NEWOBJ, NEWOBJ_EX, INST
//! or OBJ, with its BUILD state and appended items: namedtuples, pyspark Rows, dataclasses,
//! datetimes, Decimals, classes with their own `__reduce__`) is held as what the pickle says,
//! [`Value::Global`] and [`Value::Object`], never run: fakejvm cannot build a Python object, and
//! would not import a module a worker named.
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
//! Byte identity holds for the plain objects `pickle.loads` gives Python (what a worker holds
//! after unpickling its input): equal parts are distinct objects, except CPython's singletons
//! ('', one-Latin-1-character str, b''), which are memoized here as CPython memoizes them. Data
//! built otherwise in Python may share more objects (e.g. one literal used twice) and pickle
//! shorter. Sets are written in the order held, where CPython uses hash order, so only sets of 0
//! or 1 element are sure to match bytes. Objects are written as calls (REDUCE), which CPython
//! loads to the same object but does not always write (a namedtuple is NEWOBJ there).

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

/// A Python value: plain data as itself, any other object as the pickle spelled it.
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
    /// A class or function pickled by reference (GLOBAL, STACK_GLOBAL): `{"$global": "m.Name"}`.
    Global(Box<Global>),
    /// An object pickle builds by calling something: `{"$global": "m.Name", "args": [...]}`.
    Object(Box<Object>),
}

/// A module-level name, as pickle refers to a class or function. `name` is a qualified name
/// for a nested class (`Outer.Inner`, protocol 4+), so the text form puts a colon after the
/// module then (`pkg.mod:Outer.Inner`), and a dot otherwise (`pkg.mod.Name`).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Global {
    pub module: String,
    pub name: String,
}

impl Global {
    /// Python 3 reads protocol 0-2's Python 2 module names as their Python 3 ones
    /// (`_compat_pickle`); the two that pickles of objects use are mapped here, so a name reads
    /// the same from every protocol.
    pub fn new(module: &str, name: &str) -> Global {
        let module = match module {
            "__builtin__" => "builtins",
            "copy_reg" => "copyreg",
            other => other,
        };
        Global {
            module: module.to_owned(),
            name: name.to_owned(),
        }
    }

    /// `module.Name`, or `module:Outer.Inner` when the name is qualified.
    pub fn parse(text: &str) -> Result<Global, String> {
        let (module, name) = match text.split_once(':') {
            Some(parts) => parts,
            None => text.rsplit_once('.').ok_or_else(|| {
                format!(
                    "{text:?} is not module.Name (e.g. \"builtins.len\", \"pkg.mod:Outer.Inner\")"
                )
            })?,
        };
        let g = Global::new(module, name);
        g.check().map(|()| g)
    }

    /// A module and name that can be written down and read back: both non-empty, no colon.
    pub fn check(&self) -> Result<(), String> {
        if self.module.is_empty() || self.name.is_empty() {
            return Err(format!(
                "global {:?} . {:?}: a module and a name are both needed",
                self.module, self.name
            ));
        }
        if self.module.contains(':') || self.name.contains(':') {
            return Err(format!(
                "global {:?} . {:?}: a module or name holds a colon, which no importable name has",
                self.module, self.name
            ));
        }
        Ok(())
    }
}

impl std::fmt::Display for Global {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let sep = if self.name.contains('.') { ':' } else { '.' };
        write!(f, "{}{sep}{}", self.module, self.name)
    }
}

/// An object as its pickle builds it: `callable(*args)` (REDUCE, INST, OBJ) or
/// `callable.__new__(callable, *args, **kwargs)` (NEWOBJ, NEWOBJ_EX), then `listitems` appended
/// (APPEND/APPENDS), `dictitems` set (SETITEM/SETITEMS) and `state` given to `__setstate__` or
/// the instance dict (BUILD), in that order, as CPython's pickler writes `__reduce__`'s answer.
/// The two kinds of call are one here: which one CPython uses is the class's business
/// (`__reduce__` vs `__getnewargs__`), not the value's.
#[derive(Clone, Debug, PartialEq)]
pub struct Object {
    /// Usually a [`Value::Global`]; anything else (a class cloudpickle built by value) is
    /// written `{"$call": ...}`.
    pub callable: Value,
    pub args: Vec<Value>,
    /// NEWOBJ_EX's keyword arguments (none for every other call).
    pub kwargs: Vec<(Value, Value)>,
    pub state: Option<Value>,
    pub listitems: Vec<Value>,
    pub dictitems: Vec<(Value, Value)>,
}

impl Object {
    /// `callable(*args)` with nothing else.
    pub fn call(callable: Value, args: Vec<Value>) -> Object {
        Object {
            callable,
            args,
            kwargs: Vec::new(),
            state: None,
            listitems: Vec::new(),
            dictitems: Vec::new(),
        }
    }
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
            Value::Global(_) => "global",
            Value::Object(_) => "object",
        }
    }

    /// Plain data all the way down: no [`Value::Global`] or [`Value::Object`] anywhere in it.
    pub fn is_plain(&self) -> bool {
        let mut todo = vec![self];
        while let Some(v) = todo.pop() {
            match v {
                Value::Global(_) | Value::Object(_) => return false,
                Value::List(items)
                | Value::Tuple(items)
                | Value::Set(items)
                | Value::FrozenSet(items) => todo.extend(items),
                Value::Dict(pairs) => todo.extend(pairs.iter().flat_map(|(k, v)| [k, v])),
                _ => {}
            }
        }
        true
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
        "pickle opcode {name} at byte {at} refers to something outside the pickle (a persistent \
         id, an entry of copyreg's extension registry, an out-of-band buffer), which fakejvm \
         cannot read"
    )]
    ExternalOpcode { at: usize, name: &'static str },
    #[error("malformed pickle at byte {at}: {what}")]
    Malformed { at: usize, what: String },
    #[error("the container or object built at byte {at} contains itself; fakejvm values cannot hold a cycle")]
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
    pub(super) const MARK: u8 = b'(';
    pub(super) const STOP: u8 = b'.';
    pub(super) const POP: u8 = b'0';
    pub(super) const POP_MARK: u8 = b'1';
    pub(super) const DUP: u8 = b'2';
    pub(super) const FLOAT: u8 = b'F';
    pub(super) const INT: u8 = b'I';
    pub(super) const BININT: u8 = b'J';
    pub(super) const BININT1: u8 = b'K';
    pub(super) const LONG: u8 = b'L';
    pub(super) const BININT2: u8 = b'M';
    pub(super) const NONE: u8 = b'N';
    pub(super) const PERSID: u8 = b'P';
    pub(super) const BINPERSID: u8 = b'Q';
    pub(super) const REDUCE: u8 = b'R';
    pub(super) const STRING: u8 = b'S';
    pub(super) const BINSTRING: u8 = b'T';
    pub(super) const SHORT_BINSTRING: u8 = b'U';
    pub(super) const UNICODE: u8 = b'V';
    pub(super) const BINUNICODE: u8 = b'X';
    pub(super) const APPEND: u8 = b'a';
    pub(super) const BUILD: u8 = b'b';
    pub(super) const GLOBAL: u8 = b'c';
    pub(super) const DICT: u8 = b'd';
    pub(super) const EMPTY_DICT: u8 = b'}';
    pub(super) const APPENDS: u8 = b'e';
    pub(super) const GET: u8 = b'g';
    pub(super) const BINGET: u8 = b'h';
    pub(super) const INST: u8 = b'i';
    pub(super) const LONG_BINGET: u8 = b'j';
    pub(super) const LIST: u8 = b'l';
    pub(super) const EMPTY_LIST: u8 = b']';
    pub(super) const OBJ: u8 = b'o';
    pub(super) const PUT: u8 = b'p';
    pub(super) const BINPUT: u8 = b'q';
    pub(super) const LONG_BINPUT: u8 = b'r';
    pub(super) const SETITEM: u8 = b's';
    pub(super) const TUPLE: u8 = b't';
    pub(super) const EMPTY_TUPLE: u8 = b')';
    pub(super) const SETITEMS: u8 = b'u';
    pub(super) const BINFLOAT: u8 = b'G';
    pub(super) const PROTO: u8 = 0x80;
    pub(super) const NEWOBJ: u8 = 0x81;
    pub(super) const EXT1: u8 = 0x82;
    pub(super) const EXT2: u8 = 0x83;
    pub(super) const EXT4: u8 = 0x84;
    pub(super) const TUPLE1: u8 = 0x85;
    pub(super) const TUPLE2: u8 = 0x86;
    pub(super) const TUPLE3: u8 = 0x87;
    pub(super) const NEWTRUE: u8 = 0x88;
    pub(super) const NEWFALSE: u8 = 0x89;
    pub(super) const LONG1: u8 = 0x8a;
    pub(super) const LONG4: u8 = 0x8b;
    pub(super) const BINBYTES: u8 = b'B';
    pub(super) const SHORT_BINBYTES: u8 = b'C';
    pub(super) const SHORT_BINUNICODE: u8 = 0x8c;
    pub(super) const BINUNICODE8: u8 = 0x8d;
    pub(super) const BINBYTES8: u8 = 0x8e;
    pub(super) const EMPTY_SET: u8 = 0x8f;
    pub(super) const ADDITEMS: u8 = 0x90;
    pub(super) const FROZENSET: u8 = 0x91;
    pub(super) const NEWOBJ_EX: u8 = 0x92;
    pub(super) const STACK_GLOBAL: u8 = 0x93;
    pub(super) const MEMOIZE: u8 = 0x94;
    pub(super) const FRAME: u8 = 0x95;
    pub(super) const BYTEARRAY8: u8 = 0x96;
    pub(super) const NEXT_BUFFER: u8 = 0x97;
    pub(super) const READONLY_BUFFER: u8 = 0x98;
}

mod frames;
mod json;
mod keys;
pub mod pyrolite;
mod read;
mod write;

pub use frames::*;
pub use json::*;
use keys::*;
pub use read::*;
pub use write::*;

#[cfg(test)]
mod tests;
