//! Writing: CPython 3.11's C pickler at protocol 5, for plain data; objects as calls.

use super::*;

/// The pickle of `v`, as CPython 3.11 `pickle.dumps(v, 5)` writes it (see the module docs for
/// when that is byte for byte).
pub fn dumps(v: &Value) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.save(v);
    enc.finish()
}

/// The pickle of the list `items` (a batch), without building a `Value::List` first.
pub(super) fn dumps_list(items: &[Value]) -> Vec<u8> {
    let mut enc = Encoder::new();
    enc.opcode_boundary();
    enc.save_list(items);
    enc.finish()
}

/// CPython frames protocol-4+ pickles in chunks of about 64 KiB; a str/bytes payload of at least
/// that size is written outside any frame.
pub(super) const FRAME_TARGET: usize = 64 * 1024;
/// A finished frame shorter than this loses its FRAME header (CPython's FRAME_SIZE_MIN).
pub(super) const FRAME_MIN: usize = 4;
pub(super) const FRAME_HEADER: usize = 9;
/// CPython appends/sets items in batches of this many (its BATCHSIZE).
pub(super) const BATCH: usize = 1000;

/// Objects CPython shares by identity even after `pickle.loads`, so a second occurrence in one
/// pickle is a memo GET: '' and one-character Latin-1 str (the unpickler decodes through
/// CPython's str cache) and b'' (the empty bytes singleton). One-byte bytes are cached too, but
/// the unpickler allocates them fresh, so after `loads` they are distinct objects.
#[derive(Hash, PartialEq, Eq)]
pub(super) enum Singleton {
    Str(Option<char>),
    EmptyBytes,
}

pub(super) struct Encoder {
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
            Value::Global(g) => self.save_global(g),
            Value::Object(o) => self.save_object(o),
        }
    }

    /// As CPython's `save_global` at protocol 4+: module and name as (memoized) str, then
    /// STACK_GLOBAL.
    fn save_global(&mut self, g: &Global) {
        self.save_str(&g.module);
        self.save_str(&g.name);
        self.write(&[op::STACK_GLOBAL]);
        self.memoize();
    }

    /// `callable(*args)` by REDUCE (NEWOBJ_EX, `callable.__new__(callable, *args, **kwargs)`,
    /// when there are keyword arguments), then listitems, dictitems and state in the order of
    /// CPython's `save_reduce`. CPython writes some objects otherwise (a namedtuple by NEWOBJ);
    /// it loads these to the same object when `callable(*args)` builds it.
    fn save_object(&mut self, o: &Object) {
        self.save(&o.callable);
        self.save_tuple(&o.args);
        if o.kwargs.is_empty() {
            self.write(&[op::REDUCE]);
        } else {
            self.save_dict(&o.kwargs);
            self.write(&[op::NEWOBJ_EX]);
        }
        self.memoize();
        for chunk in o.listitems.chunks(BATCH) {
            self.write(&[op::MARK]);
            for item in chunk {
                self.save(item);
            }
            self.write(&[op::APPENDS]);
        }
        for chunk in o.dictitems.chunks(BATCH) {
            self.write(&[op::MARK]);
            for (k, v) in chunk {
                self.save(k);
                self.save(v);
            }
            self.write(&[op::SETITEMS]);
        }
        if let Some(state) = &o.state {
            self.save(state);
            self.write(&[op::BUILD]);
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
pub(super) struct OpArg {
    bytes: [u8; 9],
    len: usize,
}

impl std::ops::Deref for OpArg {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

pub(super) fn with_arg(opcode: u8, arg: &[u8]) -> OpArg {
    let mut bytes = [0; 9];
    bytes[0] = opcode;
    bytes[1..1 + arg.len()].copy_from_slice(arg);
    OpArg {
        bytes,
        len: 1 + arg.len(),
    }
}

/// A str/bytes opcode with the narrowest length that fits: one byte, four, or eight.
pub(super) fn sized(n: usize, [short, long, huge]: [u8; 3]) -> OpArg {
    if let Ok(small) = u8::try_from(n) {
        with_arg(short, &[small])
    } else if let Ok(medium) = u32::try_from(n) {
        with_arg(long, &medium.to_le_bytes())
    } else {
        with_arg(huge, &(n as u64).to_le_bytes())
    }
}
