//! Rows as the JVM pickles them for SQL_BATCHED_UDF and SQL_TABLE_UDF (PROTOCOL-UDF.md §4.1):
//! Pyrolite's `Pickler` at protocol 2, an `Object[]` of row `Object[]`s, which Python reads as a
//! tuple of tuples. Protocol 2 has no FRAME, no SHORT_BINUNICODE and no MEMOIZE, so this is a
//! writer of its own rather than a mode of [`super::dumps`] (CPython's protocol 5).
//!
//! Pyrolite memoizes (BINPUT after containers and strings) so that a second reference to the
//! same Java object is a BINGET; the JVM's rows never share objects that way, so nothing is
//! memoized here and the worker unpickles the same values.

use super::{op, Value};

/// How many rows the JVM puts in one pickle (`BatchEvalPythonExec`, `BatchEvalPythonUDTFExec`).
pub const JVM_ROWS_PER_BATCH: usize = 100;

/// One pickle of `rows` (each a `Value::Tuple` of the row's argument columns), protocol 2.
pub fn dumps_rows(rows: &[Value]) -> Vec<u8> {
    let mut out = vec![op::PROTO, 2];
    save_tuple(&mut out, rows);
    out.push(op::STOP);
    out
}

/// The frames of a pickled data section: [`JVM_ROWS_PER_BATCH`] rows per pickle.
pub fn row_frames(rows: &[Value]) -> Vec<Vec<u8>> {
    rows.chunks(JVM_ROWS_PER_BATCH).map(dumps_rows).collect()
}

fn save(out: &mut Vec<u8>, v: &Value) {
    match v {
        Value::None => out.push(op::NONE),
        Value::Bool(true) => out.push(op::NEWTRUE),
        Value::Bool(false) => out.push(op::NEWFALSE),
        Value::Int(i) => save_int(out, *i),
        Value::BigInt(b) => save_long_bytes(out, &b.to_signed_bytes_le()),
        Value::Float(f) => {
            out.push(op::BINFLOAT);
            out.extend_from_slice(&f.to_be_bytes());
        }
        Value::Str(s) => {
            out.push(op::BINUNICODE);
            out.extend_from_slice(&(s.len() as u32).to_le_bytes());
            out.extend_from_slice(s.as_bytes());
        }
        // Java byte[] pickles as bytearray (Pyrolite's put_bytes); protocol 2 has no BINBYTES,
        // so it is `bytearray(latin1_str, 'latin-1')` by REDUCE.
        Value::Bytes(b) | Value::ByteArray(b) => {
            out.push(op::GLOBAL);
            out.extend_from_slice(b"__builtin__\nbytearray\n");
            let latin1: String = b.iter().map(|&c| c as char).collect();
            save(out, &Value::Str(latin1));
            save(out, &Value::Str("latin-1".into()));
            out.push(op::TUPLE2);
            out.push(op::REDUCE);
        }
        Value::Tuple(items) => save_tuple(out, items),
        Value::List(items) | Value::Set(items) | Value::FrozenSet(items) => {
            out.push(op::EMPTY_LIST);
            if !items.is_empty() {
                out.push(op::MARK);
                items.iter().for_each(|i| save(out, i));
                out.push(op::APPENDS);
            }
        }
        Value::Dict(pairs) => {
            out.push(op::EMPTY_DICT);
            if !pairs.is_empty() {
                out.push(op::MARK);
                for (k, v) in pairs {
                    save(out, k);
                    save(out, v);
                }
                out.push(op::SETITEMS);
            }
        }
        // Rows are typed by their schema, so no JVM row holds these; written as Pyrolite
        // writes a Java object it has a constructor for: GLOBAL, arguments, REDUCE.
        Value::Global(g) => save_global(out, g),
        Value::Object(o) => {
            save(out, &o.callable);
            save_tuple(out, &o.args);
            if o.kwargs.is_empty() {
                out.push(op::REDUCE);
            } else {
                // Keyword arguments exist from protocol 4 only (NEWOBJ_EX); CPython reads
                // every opcode whatever the PROTO header says.
                save(out, &Value::Dict(o.kwargs.clone()));
                out.push(op::NEWOBJ_EX);
            }
            if !o.listitems.is_empty() {
                out.push(op::MARK);
                o.listitems.iter().for_each(|i| save(out, i));
                out.push(op::APPENDS);
            }
            if !o.dictitems.is_empty() {
                out.push(op::MARK);
                for (k, v) in &o.dictitems {
                    save(out, k);
                    save(out, v);
                }
                out.push(op::SETITEMS);
            }
            if let Some(state) = &o.state {
                save(out, state);
                out.push(op::BUILD);
            }
        }
    }
}

fn save_global(out: &mut Vec<u8>, g: &super::Global) {
    out.push(op::GLOBAL);
    for part in [&g.module, &g.name] {
        out.extend_from_slice(part.as_bytes());
        out.push(b'\n');
    }
}

fn save_tuple(out: &mut Vec<u8>, items: &[Value]) {
    match items.len() {
        0 => out.push(op::EMPTY_TUPLE),
        n @ 1..=3 => {
            items.iter().for_each(|i| save(out, i));
            out.push(op::TUPLE1 + n as u8 - 1);
        }
        _ => {
            out.push(op::MARK);
            items.iter().for_each(|i| save(out, i));
            out.push(op::TUPLE);
        }
    }
}

fn save_int(out: &mut Vec<u8>, i: i64) {
    if (0..=0xff).contains(&i) {
        out.extend_from_slice(&[op::BININT1, i as u8]);
    } else if (0..=0xffff).contains(&i) {
        out.push(op::BININT2);
        out.extend_from_slice(&(i as u16).to_le_bytes());
    } else if let Ok(small) = i32::try_from(i) {
        out.push(op::BININT);
        out.extend_from_slice(&small.to_le_bytes());
    } else {
        save_long_bytes(out, &super::BigInt::from(i).to_signed_bytes_le());
    }
}

fn save_long_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.push(op::LONG1);
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pickle::loads;

    #[test]
    fn rows_read_back_as_tuples_of_tuples() {
        let rows = vec![
            Value::Tuple(vec![Value::Float(1.5), Value::Str("é".into())]),
            Value::Tuple(vec![Value::None, Value::Int(-70000)]),
            Value::Tuple(vec![
                Value::Int(1 << 40),
                Value::List(vec![Value::Bool(true)]),
                Value::Dict(vec![(Value::Str("k".into()), Value::Int(3))]),
                Value::Tuple(vec![]),
            ]),
        ];
        let b = dumps_rows(&rows);
        assert_eq!(&b[..2], &[0x80, 2]);
        assert_eq!(loads(&b).unwrap(), Value::Tuple(rows));
    }

    #[test]
    fn a_hundred_rows_per_frame() {
        let rows: Vec<Value> = (0..250)
            .map(|i| Value::Tuple(vec![Value::Int(i)]))
            .collect();
        let frames = row_frames(&rows);
        assert_eq!(frames.len(), 3);
        let Value::Tuple(last) = loads(&frames[2]).unwrap() else {
            panic!("a tuple")
        };
        assert_eq!(last.len(), 50);
    }
}
