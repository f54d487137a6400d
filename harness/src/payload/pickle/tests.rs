//! The codec's own tests: CPython's captured bytes, JSON forms, frame layouts, properties.

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
    let pairs = |x: &[(Value, Value)], y: &[(Value, Value)]| {
        x.len() == y.len()
            && x.iter()
                .zip(y)
                .all(|((k1, v1), (k2, v2))| identical(k1, k2) && identical(v1, v2))
    };
    match (a, b) {
        (Value::Object(x), Value::Object(y)) => {
            identical(&x.callable, &y.callable)
                && all(&x.args, &y.args)
                && pairs(&x.kwargs, &y.kwargs)
                && match (&x.state, &y.state) {
                    (Some(p), Some(q)) => identical(p, q),
                    (p, q) => p.is_none() && q.is_none(),
                }
                && all(&x.listitems, &y.listitems)
                && pairs(&x.dictitems, &y.dictitems)
        }
        (Value::Float(x), Value::Float(y)) => {
            (x.is_nan() && y.is_nan()) || x.to_bits() == y.to_bits()
        }
        (Value::List(x), Value::List(y))
        | (Value::Tuple(x), Value::Tuple(y))
        | (Value::Set(x), Value::Set(y))
        | (Value::FrozenSet(x), Value::FrozenSet(y)) => all(x, y),
        (Value::Dict(x), Value::Dict(y)) => pairs(x, y),
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

/// What CPython 3.11 wrote for objects fakejvm cannot build: kept as the pickle says.
#[test]
fn loads_keeps_objects_as_the_pickle_says() {
    // datetime.date(2020, 1, 2): REDUCE of the class with its packed bytes.
    let date = h(
        "80059520000000000000008c086461746574696d65948c0464617465949394430407e4010294859452942e",
    );
    assert_eq!(
        value_to_json(&loads(&date).unwrap()),
        json!({"$global": "datetime.date", "args": [{"$bytes": "07e40102"}]})
    );
    // collections.OrderedDict(a=1): an empty call, then SETITEM on the object.
    let odict = h(
            "80059529000000000000008c0b636f6c6c656374696f6e73948c0b4f726465726564446963749493942952948c0161944b01732e",
        );
    let v = loads(&odict).unwrap();
    let Value::Object(o) = &v else {
        panic!("{v:?}")
    };
    assert_eq!(
        o.callable,
        Value::Global(Box::new(Global::new("collections", "OrderedDict")))
    );
    assert_eq!(o.dictitems, [(s("a"), Value::Int(1))]);
    assert_eq!(
        value_to_json(&v),
        json!({"$global": "collections.OrderedDict", "args": [], "dictitems": [["a", 1]]})
    );
    assert!(!v.is_plain());
    assert!(Value::List(vec![Value::Int(1)]).is_plain());
}

#[test]
fn loads_rejects_what_it_cannot_hold() {
    // l = []; l.append((l,))
    let cycle = h("80059508000000000000005d9468008594612e");
    assert!(
        matches!(loads(&cycle), Err(PickleError::Recursive { .. })),
        "{:?}",
        loads(&cycle)
    );
    // An object whose state holds itself (BUILD with a memo GET of the object).
    let mut p = vec![op::PROTO, 5, op::GLOBAL];
    p.extend_from_slice(b"m\nC\n");
    p.extend_from_slice(&[
        op::EMPTY_TUPLE,
        op::REDUCE,
        op::MEMOIZE,
        op::BINGET,
        0,
        op::BUILD,
        op::STOP,
    ]);
    assert!(
        matches!(loads(&p), Err(PickleError::Recursive { at: 8 })),
        "{:?}",
        loads(&p)
    );
    assert!(matches!(
        loads(&[op::PROTO, 5, op::NONE, op::BINPERSID]),
        Err(PickleError::ExternalOpcode {
            at: 3,
            name: "BINPERSID (persistent id)"
        })
    ));
    let e = loads(&[op::PROTO, 5, op::NONE, op::EMPTY_DICT, op::NEWOBJ, op::STOP])
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        "malformed pickle at byte 4: NEWOBJ arguments are a dict, not a tuple"
    );
    let e = loads(&[op::PROTO, 5, op::EMPTY_LIST, op::NONE, op::BUILD, op::STOP])
        .unwrap_err()
        .to_string();
    assert!(e.contains("BUILD sets the state of a list"), "{e}");
    let mut empty_module = vec![op::PROTO, 2, op::GLOBAL];
    empty_module.extend_from_slice(b"\nlen\n");
    empty_module.push(op::STOP);
    let e = loads(&empty_module).unwrap_err().to_string();
    assert!(e.contains("a module and a name are both needed"), "{e}");
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

#[test]
fn json_object_forms() {
    let j = json!([
        {"$global": "builtins.len"},
        {"$global": "pkg.mod:Outer.Inner"},
        {"$global": "__builtin__.len"},
        {"$global": "m.P", "args": [1, {"$tuple": []}], "kwargs": {"k": 2}, "state": {"x": null},
         "listitems": [3], "dictitems": [["a", 1], ["a", 2]]},
        {"$call": {"$global": "m.make", "args": ["P"]}, "args": []},
        {"$dict": [["$global", 1]]},
        {"$dict": [[{"$global": "m.P", "args": []}, 1], [{"$global": "m.P", "args": []}, 2]]}
    ]);
    let Value::List(items) = value_from_json(&j).unwrap() else {
        panic!()
    };
    assert_eq!(
        items[1],
        Value::Global(Box::new(Global::new("pkg.mod", "Outer.Inner")))
    );
    assert_eq!(
        items[2], items[0],
        "Python 2's __builtin__ reads as builtins"
    );
    let Value::Object(o) = &items[3] else {
        panic!()
    };
    assert_eq!(o.kwargs, [(s("k"), Value::Int(2))]);
    assert_eq!(
        o.dictitems.len(),
        2,
        "dictitems are calls, not a dict: both kept"
    );
    assert!(matches!(&items[4], Value::Object(o) if matches!(o.callable, Value::Object(_))));
    assert_eq!(items[5], Value::Dict(vec![(s("$global"), Value::Int(1))]));
    let Value::Dict(keys) = &items[6] else {
        panic!()
    };
    assert_eq!(keys.len(), 2, "objects are keys of their own, like NaN");
    // The canonical form reads back to itself; a "$global" str key stays a $dict.
    let canonical = value_to_json(&Value::List(items.clone()));
    assert_eq!(canonical[2], json!({"$global": "builtins.len"}));
    assert_eq!(canonical[5], json!({"$dict": [["$global", 1]]}));
    assert_eq!(
        value_to_json(&value_from_json(&canonical).unwrap()),
        canonical
    );
    let back = dumps(&Value::List(items.clone()));
    assert_eq!(loads(&back).unwrap(), Value::List(items));
}

#[test]
fn json_object_errors_say_where() {
    let err = |j: serde_json::Value| value_from_json(&j).unwrap_err().to_string();
    assert_eq!(
        err(json!([{"$global": "len"}])),
        "JSON value at /0/$global: \"len\" is not module.Name (e.g. \"builtins.len\", \"pkg.mod:Outer.Inner\")"
    );
    assert!(err(json!({"$global": "m.P", "arg": []}))
        .starts_with("JSON value at /arg: unknown key \"arg\""));
    assert!(err(json!({"$global": "m.P", "state": 1})).contains("add `args`"));
    assert!(err(json!({"$global": 5})).contains("$global takes a string"));
    assert!(err(json!({"$call": 5})).contains("$call needs `args`"));
    assert!(err(json!({"$global": "m.P", "$call": 5, "args": []})).contains("give one"));
    assert!(err(json!({"$global": "m.P", "args": {}}))
        .starts_with("JSON value at /args: args takes an array"));
    assert!(err(json!({"$global": "m.P", "args": [], "kwargs": [1]}))
        .contains("kwargs takes an object"));
    assert!(
        err(json!({"$global": "m.P", "args": [], "dictitems": [[1]]}))
            .starts_with("JSON value at /dictitems/0: a dictitems entry")
    );
    assert!(err(json!({"$global": "m.P", "args": [{"$int": "x"}]}))
        .starts_with("JSON value at /args/0/$int:"));
    assert!(err(json!({"$global": ":P"})).contains("both needed"));
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
    let got = decode_frames(FrameKind::Unbatched, &[batch(&[1]), Some(dumps(&s("x")))]).unwrap();
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

/// Values with globals and objects in them (callables named `mN.C`, never the builtins that
/// `loads` turns into plain data).
fn arb_any_value() -> impl Strategy<Value = Value> {
    let global = (0u8..3, prop::sample::select(vec!["C", "Outer.Inner", "f"]))
        .prop_map(|(m, n)| Global::new(&format!("m{m}.sub"), n));
    let leaf = prop_oneof![
        arb_hashable(),
        global.clone().prop_map(|g| Value::Global(Box::new(g))),
    ];
    leaf.prop_recursive(3, 48, 6, move |inner| {
        let pairs = prop::collection::vec((inner.clone(), inner.clone()), 0..3);
        let kwargs = prop::collection::vec(("[a-z]{1,3}", inner.clone()), 0..3).prop_map(|p| {
            dedupe_dict(p.into_iter().map(|(k, v)| (Value::Str(k), v)).collect()).expect("str keys")
        });
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::List),
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Tuple),
            (
                global.clone(),
                prop::collection::vec(inner.clone(), 0..3),
                kwargs,
                prop::option::of(inner.clone()),
                prop::collection::vec(inner.clone(), 0..3),
                pairs,
            )
                .prop_map(|(g, args, kwargs, state, listitems, dictitems)| {
                    Value::Object(Box::new(Object {
                        callable: Value::Global(Box::new(g)),
                        args,
                        kwargs,
                        state,
                        listitems,
                        dictitems,
                    }))
                }),
        ]
    })
}

proptest! {
    #[test]
    fn objects_round_trip_through_dumps_and_json(v in arb_any_value()) {
        let back = loads(&dumps(&v)).unwrap();
        prop_assert!(identical(&back, &v), "{:?} came back as {:?}", v, back);
        let j = value_to_json(&v);
        prop_assert_eq!(value_to_json(&value_from_json(&j).unwrap()), j);
    }

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
    /// REDUCE of the supported globals on odd arguments, objects built, appended to and given
    /// state out of order.
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
        Just(b"cm\nC\n".to_vec()), Just(b"im\nC\n".to_vec()), Just(vec![op::OBJ]), Just(vec![op::NEWOBJ]), Just(vec![op::NEWOBJ_EX]),
        Just(vec![op::BUILD]),
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

mod cross_check;
