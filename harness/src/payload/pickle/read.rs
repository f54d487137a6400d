//! Reading: any protocol 0-5 pickle, plain data as itself and other objects as tagged values.

use super::*;

/// Unpickle one value. Reads every protocol (0-5) and what pyspark, cloudpickle, CPython 3.11
/// and Spark's JVM (Pyrolite, protocol 2) write, with Python's semantics for shared references
/// and duplicate dict keys. Python 2 `str` (STRING opcodes) becomes bytes, as pyspark unpickles
/// with `encoding="bytes"`. The calls plain data is spelled with at low protocols (`set([..])`,
/// `bytearray(b"..")`, `_codecs.encode(s, "latin1")`) are made; every other call, and every
/// global, is kept as the pickle says it ([`Value::Object`], [`Value::Global`]) and nothing is
/// imported or run. Refused: opcodes that refer outside the pickle (persistent ids, extension
/// codes, out-of-band buffers), cycles, and nesting past [`MAX_DEPTH`]. Stricter than
/// `pickle.loads` in one way: bytes after STOP are an error, since a frame holds exactly one
/// pickle.
pub fn loads(bytes: &[u8]) -> Result<Value> {
    Decoder::new(bytes).run()
}

pub(super) type NodeId = usize;

/// One Python object under construction. Containers refer to their items by id, so a memo GET
/// or DUP shares the object, and a later APPEND to it is seen by every holder, as in Python.
pub(super) enum Kind {
    Atom(Value),
    List(Vec<NodeId>),
    Tuple(Vec<NodeId>),
    Dict(Vec<(NodeId, NodeId)>),
    Set(Vec<NodeId>),
    FrozenSet(Vec<NodeId>),
    /// A global reference (a class or function).
    Global(Global),
    /// A call the decoder does not make: its parts are other nodes.
    Object {
        callable: NodeId,
        /// A `Tuple` node.
        args: NodeId,
        /// A `Dict` node (NEWOBJ_EX).
        kwargs: Option<NodeId>,
        /// What BUILD gave it.
        state: Option<NodeId>,
        /// A `List` node of what APPEND(S) added, made at the first.
        listitems: Option<NodeId>,
        /// A `List` node of `(key, value)` `Tuple` nodes that SETITEM(S) set, made at the first.
        /// Nested nodes, not flat ids, so nesting counts as it does in the JSON form.
        dictitems: Option<NodeId>,
    },
    /// Moved out into the finished value.
    Taken,
}

impl Kind {
    fn child_count(&self) -> usize {
        match self {
            Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c.len(),
            Kind::Dict(pairs) => 2 * pairs.len(),
            Kind::Object { .. } => self.object_parts().iter().flatten().count(),
            Kind::Atom(_) | Kind::Global(_) | Kind::Taken => 0,
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
            Kind::Object { .. } => self
                .object_parts()
                .into_iter()
                .flatten()
                .nth(i)
                .expect("i < child_count"),
            Kind::Atom(_) | Kind::Global(_) | Kind::Taken => unreachable!("no children"),
        }
    }

    /// An object's parts in the order `build` reads them back.
    fn object_parts(&self) -> [Option<NodeId>; 6] {
        match self {
            Kind::Object {
                callable,
                args,
                kwargs,
                state,
                listitems,
                dictitems,
            } => [
                Some(*callable),
                Some(*args),
                *kwargs,
                *state,
                *listitems,
                *dictitems,
            ],
            _ => [None; 6],
        }
    }
}

pub(super) struct Node {
    kind: Kind,
    /// Byte offset of the opcode that created it, for messages.
    at: usize,
}

#[derive(Clone, Copy)]
pub(super) enum Seen {
    No,
    Active,
    Done { height: usize, cost: u64 },
}

pub(super) struct Decoder<'a> {
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
pub(super) struct Memo {
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
            Kind::Global(_) => "global",
            Kind::Object { .. } => "object",
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
                    self.append(vec![item], "APPEND", at)?;
                }
                op::APPENDS => {
                    let new = self.pop_mark(at)?;
                    self.append(new, "APPENDS", at)?;
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
                    self.set_items(vec![(k, v)], "SETITEM", at)?;
                }
                op::SETITEMS => {
                    let items = self.pop_mark(at)?;
                    let new = pairs_of(items)
                        .or_else(|_| self.malformed(at, "SETITEMS with an odd number of items"))?;
                    self.set_items(new, "SETITEMS", at)?;
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
                    let g = self.global_lines("GLOBAL", at)?;
                    self.push(Kind::Global(g), at);
                }
                op::STACK_GLOBAL => {
                    let name = self.pop(at)?;
                    let module = self.pop(at)?;
                    let g = match (&self.nodes[module].kind, &self.nodes[name].kind) {
                        (Kind::Atom(Value::Str(m)), Kind::Atom(Value::Str(n))) => Global::new(m, n),
                        _ => return self.malformed(at, "STACK_GLOBAL needs two str values"),
                    };
                    g.check().or_else(|e| self.malformed(at, e))?;
                    self.push(Kind::Global(g), at);
                }
                op::REDUCE => {
                    let args = self.pop(at)?;
                    let callable = self.pop(at)?;
                    let kind = self.reduce(callable, args, at)?;
                    self.push(kind, at);
                }
                op::NEWOBJ => {
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    self.expect_kind(args, "NEWOBJ arguments", "tuple", at)?;
                    self.push(object(cls, args, None), at);
                }
                op::NEWOBJ_EX => {
                    let kwargs = self.pop(at)?;
                    let args = self.pop(at)?;
                    let cls = self.pop(at)?;
                    self.expect_kind(args, "NEWOBJ_EX arguments", "tuple", at)?;
                    self.expect_kind(kwargs, "NEWOBJ_EX keyword arguments", "dict", at)?;
                    self.push(object(cls, args, Some(kwargs)), at);
                }
                // Protocols 0 and 1: `module name` then the marked arguments (INST), or the
                // class first among them (OBJ); both are `cls(*args)`.
                op::INST => {
                    let g = self.global_lines("INST", at)?;
                    let items = self.pop_mark(at)?;
                    let cls = self.new_node(Kind::Global(g), at);
                    let args = self.new_node(Kind::Tuple(items), at);
                    self.push(object(cls, args, None), at);
                }
                op::OBJ => {
                    let mut items = self.pop_mark(at)?;
                    if items.is_empty() {
                        return self.malformed(at, "OBJ needs a class after its MARK");
                    }
                    let cls = items.remove(0);
                    let args = self.new_node(Kind::Tuple(items), at);
                    self.push(object(cls, args, None), at);
                }
                op::BUILD => {
                    let state = self.pop(at)?;
                    let obj = self.top(at)?;
                    let name = self.kind_name(obj);
                    match &mut self.nodes[obj].kind {
                        Kind::Object {
                            state: s @ None, ..
                        } => *s = Some(state),
                        Kind::Object { .. } => {
                            return self.malformed(at, "a second BUILD on one object")
                        }
                        _ => {
                            return self.malformed(
                                at,
                                format!("BUILD sets the state of a {name}, which has none"),
                            )
                        }
                    }
                }

                op::EXT1
                | op::EXT2
                | op::EXT4
                | op::PERSID
                | op::BINPERSID
                | op::NEXT_BUFFER
                | op::READONLY_BUFFER => {
                    return Err(PickleError::ExternalOpcode {
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

    /// REDUCE: `callable(*args)`. The few calls plain data is spelled with are made (see
    /// `plain_call`); every other call is kept as an object.
    fn reduce(&self, callable: NodeId, args: NodeId, at: usize) -> Result<Kind> {
        self.expect_kind(args, "REDUCE arguments", "tuple", at)?;
        if let (Kind::Global(g), Kind::Tuple(items)) =
            (&self.nodes[callable].kind, &self.nodes[args].kind)
        {
            if let Some(kind) = self.plain_call(g, items) {
                return Ok(kind);
            }
        }
        Ok(object(callable, args, None))
    }

    /// Protocols < 4 spell set/frozenset as `set([...])`, protocols < 3 spell bytes as
    /// `_codecs.encode(str, 'latin1')`, protocols < 5 spell bytearray as `bytearray(bytes)`, and
    /// Pyrolite (Spark's JVM) writes Java byte[] as `bytearray(str, 'latin-1')`. None for any
    /// other call, or these with arguments they are never pickled with: those stay objects.
    fn plain_call(&self, g: &Global, args: &[NodeId]) -> Option<Kind> {
        let atom = |i: usize| match args.get(i).map(|&id| &self.nodes[id].kind) {
            Some(Kind::Atom(v)) => Some(v),
            _ => None,
        };
        let name = g.name.as_str();
        match (g.module.as_str(), name, args.len()) {
            ("builtins", "set", 0) => Some(Kind::Set(Vec::new())),
            ("builtins", "frozenset", 0) => Some(Kind::FrozenSet(Vec::new())),
            ("builtins", "set" | "frozenset", 1) => {
                // set(iterable) copies the items now; later changes to the list do not show.
                let items = match &self.nodes[args[0]].kind {
                    Kind::List(c) | Kind::Tuple(c) | Kind::Set(c) | Kind::FrozenSet(c) => c.clone(),
                    _ => return None,
                };
                Some(if name == "set" {
                    Kind::Set(items)
                } else {
                    Kind::FrozenSet(items)
                })
            }
            ("builtins", "bytes", 0) => Some(Kind::Atom(Value::Bytes(Vec::new()))),
            ("builtins", "bytearray", 0) => Some(Kind::Atom(Value::ByteArray(Vec::new()))),
            ("builtins", "bytes" | "bytearray", 1 | 2) => {
                let data = match (atom(0), atom(1)) {
                    (Some(Value::Bytes(b) | Value::ByteArray(b)), None) if args.len() == 1 => {
                        b.clone()
                    }
                    (Some(Value::Str(s)), Some(Value::Str(enc))) => encode_str(s, enc).ok()?,
                    _ => return None,
                };
                Some(Kind::Atom(if name == "bytes" {
                    Value::Bytes(data)
                } else {
                    Value::ByteArray(data)
                }))
            }
            ("_codecs", "encode", 2) => match (atom(0), atom(1)) {
                (Some(Value::Str(s)), Some(Value::Str(enc))) => {
                    Some(Kind::Atom(Value::Bytes(encode_str(s, enc).ok()?)))
                }
                _ => None,
            },
            _ => None,
        }
    }

    /// GLOBAL's and INST's two text lines: module and name.
    fn global_lines(&mut self, opcode: &'static str, at: usize) -> Result<Global> {
        let module = String::from_utf8_lossy(self.line("a global's module")?).into_owned();
        let name = String::from_utf8_lossy(self.line("a global's name")?).into_owned();
        let g = Global::new(&module, &name);
        g.check()
            .or_else(|e| self.malformed(at, format!("{opcode}: {e}")))?;
        Ok(g)
    }

    /// `what` must be a node of kind `want` ("tuple" or "dict").
    fn expect_kind(&self, id: NodeId, what: &str, want: &str, at: usize) -> Result<()> {
        let got = self.kind_name(id);
        let ok = matches!(
            (&self.nodes[id].kind, want),
            (Kind::Tuple(_), "tuple") | (Kind::Dict(_), "dict")
        );
        if ok {
            Ok(())
        } else {
            self.malformed(at, format!("{what} are a {got}, not a {want}"))
        }
    }

    /// APPEND(S): to a list, or to an object's listitems (pickle calls its `append`/`extend`).
    fn append(&mut self, new: Vec<NodeId>, opcode: &str, at: usize) -> Result<()> {
        let target = self.top(at)?;
        let name = self.kind_name(target);
        let list = match &self.nodes[target].kind {
            Kind::List(_) => target,
            Kind::Object { listitems, .. } => match *listitems {
                Some(list) => list,
                None => {
                    let list = self.new_node(Kind::List(Vec::new()), at);
                    if let Kind::Object { listitems, .. } = &mut self.nodes[target].kind {
                        *listitems = Some(list);
                    }
                    list
                }
            },
            _ => return self.malformed(at, format!("{opcode} to a {name}")),
        };
        if let Kind::List(items) = &mut self.nodes[list].kind {
            items.extend(new);
        }
        Ok(())
    }

    /// SETITEM(S): into a dict, or into an object's dictitems (pickle calls `obj[k] = v`).
    fn set_items(&mut self, new: Vec<(NodeId, NodeId)>, opcode: &str, at: usize) -> Result<()> {
        let target = self.top(at)?;
        let name = self.kind_name(target);
        match &mut self.nodes[target].kind {
            Kind::Dict(pairs) => {
                pairs.extend(new);
                return Ok(());
            }
            Kind::Object { .. } => {}
            _ => return self.malformed(at, format!("{opcode} on a {name}")),
        }
        let pairs: Vec<NodeId> = new
            .into_iter()
            .map(|(k, v)| self.new_node(Kind::Tuple(vec![k, v]), at))
            .collect();
        let list = match &self.nodes[target].kind {
            Kind::Object {
                dictitems: Some(list),
                ..
            } => *list,
            _ => {
                let list = self.new_node(Kind::List(Vec::new()), at);
                if let Kind::Object { dictitems, .. } = &mut self.nodes[target].kind {
                    *dictitems = Some(list);
                }
                list
            }
        };
        if let Kind::List(items) = &mut self.nodes[list].kind {
            items.extend(pairs);
        }
        Ok(())
    }

    // -- from the object graph to owned values --
    //
    // Both passes walk with explicit stacks: the structure is the pickle's to choose, and a
    // recursive walk in a debug build overflows a 2 MiB stack at about 350 levels.

    fn finish(mut self, root: NodeId) -> Result<Value> {
        let refs = self.measure(root)?;
        self.build(root, &refs)
    }

    /// First pass: reject cycles, nesting past MAX_DEPTH and exponential expansion before
    /// allocating anything, and count how often each object is used so the
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
                    (Seen::No, Kind::Global(g)) => {
                        let cost = VALUE_SIZE
                            + std::mem::size_of::<Global>() as u64
                            + (g.module.len() + g.name.len()) as u64;
                        seen[id] = Seen::Done { height: 0, cost };
                        done = Some((0, cost));
                    }
                    (Seen::No, Kind::Taken) => {
                        return self.malformed(node.at, "internal: object used before it was built")
                    }
                    (Seen::No, _) => {
                        if open.len() + 1 > MAX_DEPTH {
                            return Err(PickleError::TooDeep { at: node.at });
                        }
                        seen[id] = Seen::Active;
                        let own = match node.kind {
                            Kind::Object { .. } => std::mem::size_of::<Object>() as u64,
                            _ => 0,
                        };
                        open.push(Open {
                            id,
                            next: 0,
                            height: 0,
                            cost: VALUE_SIZE + own,
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
                        Kind::Global(g) => {
                            done = Some(keep(id, Value::Global(Box::new(g)), &mut shared))
                        }
                        Kind::Taken => {
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
                kind @ Kind::Object { .. } => {
                    let object = object_value(&kind, top.items)
                        .or_else(|what| self.malformed(at, format!("internal: {what}")))?;
                    Value::Object(Box::new(object))
                }
                Kind::Atom(_) | Kind::Global(_) | Kind::Taken => {
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

/// An object's value from its parts, built in `Kind::object_parts` order.
fn object_value(kind: &Kind, items: Vec<Value>) -> Result<Object, &'static str> {
    let Kind::Object {
        kwargs,
        state,
        listitems,
        dictitems,
        ..
    } = kind
    else {
        return Err("not an object");
    };
    let mut items = items.into_iter();
    let callable = items.next().ok_or("an object without its callable")?;
    let Some(Value::Tuple(args)) = items.next() else {
        return Err("an object's arguments are not a tuple");
    };
    let mut object = Object::call(callable, args);
    if kwargs.is_some() {
        let Some(Value::Dict(pairs)) = items.next() else {
            return Err("an object's keyword arguments are not a dict");
        };
        object.kwargs = pairs;
    }
    if state.is_some() {
        object.state = items.next();
    }
    if listitems.is_some() {
        let Some(Value::List(list)) = items.next() else {
            return Err("an object's listitems are not a list");
        };
        object.listitems = list;
    }
    if dictitems.is_some() {
        let Some(Value::List(pairs)) = items.next() else {
            return Err("an object's dictitems are not a list");
        };
        for pair in pairs {
            let Value::Tuple(kv) = pair else {
                return Err("an object's dictitem is not a pair");
            };
            let Ok([k, v]) = <[Value; 2]>::try_from(kv) else {
                return Err("an object's dictitem is not a pair");
            };
            object.dictitems.push((k, v));
        }
    }
    Ok(object)
}

pub(super) fn opcode_name(code: u8) -> &'static str {
    match code {
        op::EXT1 => "EXT1 (extension code)",
        op::EXT2 => "EXT2 (extension code)",
        op::EXT4 => "EXT4 (extension code)",
        op::PERSID => "PERSID (persistent id)",
        op::BINPERSID => "BINPERSID (persistent id)",
        op::NEXT_BUFFER => "NEXT_BUFFER (out-of-band buffer)",
        op::READONLY_BUFFER => "READONLY_BUFFER (out-of-band buffer)",
        _ => "?",
    }
}

/// A call's node: `callable(*args)`, or with `kwargs` NEWOBJ_EX's `cls.__new__(cls, *args, **kwargs)`.
pub(super) fn object(callable: NodeId, args: NodeId, kwargs: Option<NodeId>) -> Kind {
    Kind::Object {
        callable,
        args,
        kwargs,
        state: None,
        listitems: None,
        dictitems: None,
    }
}

pub(super) fn pairs_of(items: Vec<NodeId>) -> Result<Vec<(NodeId, NodeId)>, ()> {
    if !items.len().is_multiple_of(2) {
        return Err(());
    }
    Ok(items.chunks(2).map(|p| (p[0], p[1])).collect())
}

pub(super) fn parse_ascii<T: std::str::FromStr>(text: &[u8]) -> Option<T> {
    std::str::from_utf8(text).ok()?.trim().parse().ok()
}

/// Pickled str payloads are UTF-8 written with "surrogatepass", so a lone surrogate (legal in
/// a Python str, impossible in a Rust String) arrives as ED A0..BF xx.
pub(super) fn utf8(b: &[u8], at: usize) -> Result<String> {
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

pub(super) fn encode_str(s: &str, encoding: &str) -> Result<Vec<u8>, String> {
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
pub(super) fn escape_decode(s: &[u8]) -> Vec<u8> {
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
pub(super) fn raw_unicode_escape_decode(s: &[u8]) -> Result<String, String> {
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
