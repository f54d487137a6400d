//! Against the real thing: a provisioned env's CPython and pyspark.

use super::*;

/// Checks this module against the real thing, both ways, with the interpreter of a
/// provisioned env (FAKEJVM_PYTHON, else pyspark 4.0.5's): CPython loads what `dumps`
/// writes and re-pickles it to the same bytes; `loads` reads CPython's pickles at protocols
/// 0-5; `batched_frames`/`auto_batched_frames` equal what pyspark's own BatchedSerializer and
/// AutoBatchedSerializer write; pyspark's PairDeserializer, CartesianDeserializer and
/// UTF8Deserializer read `pair_frames`/`cartesian_frames`/`utf8_frames` as intended.
#[test]
fn cross_check_with_cpython_and_pyspark() {
    // The env is found the way the binary finds it: FAKEJVM_PYTHON, else pyspark 4.0.5's env
    // under $FAKEJVM_CACHE_DIR for the base Python (FAKEJVM_BASE_PYTHON), provisioned if missing.
    let given = std::env::var_os("FAKEJVM_PYTHON").map(std::path::PathBuf::from);
    let env = crate::pyenv::resolve(given.as_deref(), Some("4.0.5")).unwrap_or_else(|e| {
            panic!(
                "no Python with pyspark 4.0.5: {e}\nprovision it with `cargo run -p fakejvm -- env setup --pyspark 4.0.5` \
                 or set FAKEJVM_PYTHON to a python whose site-packages has pyspark"
            )
        });
    let python = env.python;
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
    let out = std::fs::File::create(dir.join("python.log")).unwrap();
    let mut cmd = std::process::Command::new(python);
    cmd.arg("-c")
        .arg(script)
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .stdout(out.try_clone().unwrap())
        .stderr(out);
    // The one process-group owner: the group is killed when `_group` drops (also on a panic).
    let (mut child, _group) = crate::worker::spawn_in_group(&mut cmd)
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", python.display()));
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

/// Objects fakejvm cannot build, both ways, against the real interpreter and pyspark of a
/// provisioned env: `loads` reads what CPython and pyspark's own serializer (cloudpickle) write
/// for namedtuples, Rows, dataclasses, custom `__reduce__`, NEWOBJ_EX, enums, globals and
/// nestings of them, as the tagged values below; every protocol 0-4 pickle of them reads too;
/// and CPython loads what `dumps` writes for tagged values to the objects they name.
#[test]
fn objects_from_cpython_and_pyspark_read_as_tagged_values() {
    let given = std::env::var_os("FAKEJVM_PYTHON").map(std::path::PathBuf::from);
    let env = crate::pyenv::resolve(given.as_deref(), Some("4.0.5"))
        .unwrap_or_else(|e| panic!("no Python with pyspark 4.0.5: {e}"));
    let dir = tempfile::tempdir().expect("a temp dir");
    std::fs::write(dir.path().join("objs.py"), OBJECTS_PY).unwrap();
    // What the Rust side sends: tagged values CPython must load to the named objects.
    let ours = [
        json!({"$global": "objs.Point", "args": [1, 2]}),
        json!({"$global": "pyspark.sql.types._create_row", "args": [["a", "b"], {"$tuple": [1, "x"]}]}),
        json!({"$global": "datetime.date", "args": [2020, 1, 2]}),
        json!({"$global": "decimal.Decimal", "args": ["1.5"]}),
        json!({"$global": "objs.Custom", "args": ["k"], "state": {"note": "hi"},
               "listitems": [1, 2], "dictitems": [["a", 1]]}),
        json!({"$global": "objs.Kw", "args": [1], "kwargs": {"b": 2}}),
        json!({"$global": "builtins.len"}),
        json!({"$global": "objs:Outer.Inner"}),
        json!({"$global": "objs.D", "args": [5], "state": {"x": 5, "y": "z"}}),
    ];
    let mut out = Vec::new();
    for j in &ours {
        let p = dumps(&value_from_json(j).unwrap());
        out.extend_from_slice(&(p.len() as i32).to_be_bytes());
        out.extend_from_slice(&p);
    }
    std::fs::write(dir.path().join("ours.bin"), out).unwrap();

    run_python(&env.python, OBJECTS_CHECK_PY, dir.path());

    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("report.json")).unwrap()).unwrap();
    assert_eq!(
        report["ours_loaded"],
        serde_json::Value::Array(vec![json!(true); 9]),
        "CPython loads what dumps writes to the objects named (in order: {ours:?})"
    );
    let data = std::fs::read(dir.path().join("theirs.bin")).unwrap();
    let mut frames = Vec::new();
    let mut at = 0;
    while at < data.len() {
        let n = i32::from_be_bytes(data[at..at + 4].try_into().unwrap()) as usize;
        frames.push(&data[at + 4..at + 4 + n]);
        at += 4 + n;
    }
    let names: Vec<&str> = report["names"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n.as_str().unwrap())
        .collect();
    // Per case: protocols 0-5 from pickle.dumps, then pyspark's CPickleSerializer's frame.
    assert_eq!(frames.len(), names.len() * 7);
    let mut got = serde_json::Map::new();
    for (i, name) in names.iter().enumerate() {
        for proto in 0..7 {
            let p = frames[i * 7 + proto];
            let v = loads(p).unwrap_or_else(|e| {
                panic!(
                    "{name}, pickle {proto} (6 = pyspark's): {e}; {}",
                    hex_head(p)
                )
            });
            if proto == 5 {
                got.insert(name.to_string(), value_to_json(&v));
            }
            if proto == 6 && *name != "dynamic_namedtuple" {
                assert_eq!(
                    value_to_json(&v),
                    got[*name],
                    "{name}: pyspark's serializer (cloudpickle) pickles an importable class as pickle does"
                );
            }
        }
    }
    let point = |x: i64, y: i64| json!({"$global": "objs.Point", "args": [x, y]});
    let want = json!({
        "namedtuple": point(1, 2),
        "dataclass": {"$global": "objs.D", "args": [], "state": {"x": 1, "y": "a"}},
        "frozen_slots_dataclass": {"$global": "objs.F", "args": [], "state": [3]},
        "custom_reduce": {"$global": "objs.Custom", "args": ["k"], "state": {"note": "hi"},
                          "listitems": [1, 2], "dictitems": [["a", 1]]},
        "newobj_ex": {"$global": "objs.Kw", "args": [1], "kwargs": {"b": 2}},
        "enum": {"$global": "objs.Color", "args": [1]},
        "nested_class": {"$global": "objs:Outer.Inner"},
        "function": {"$global": "builtins.len"},
        "row": {"$global": "pyspark.sql.types._create_row", "args": [["a", "b"], {"$tuple": [1, "x"]}]},
        "row_without_fields": {"$global": "copyreg._reconstructor",
                               "args": [{"$global": "pyspark.sql.types.Row"}, {"$global": "builtins.tuple"}, {"$tuple": [1, 2]}]},
        "nested": {"rows": [{"$global": "pyspark.sql.types._create_row",
                             "args": [["p", "ds"], {"$tuple": [point(1, 2), [{"$global": "objs.D", "args": [], "state": {"x": 2, "y": "a"}}]]}]}]},
        "shared": [point(1, 2), point(1, 2)],
        "object_key": {"$dict": [[point(0, 0), "origin"]]},
        "date": {"$global": "datetime.date", "args": [{"$bytes": "07e40102"}]},
        "decimal": {"$global": "decimal.Decimal", "args": ["1.5"]},
        "ordered_dict": {"$global": "collections.OrderedDict", "args": [], "dictitems": [["a", 1]]},
        "exception": {"$global": "builtins.ValueError", "args": ["bad"]},
    });
    for (name, want) in want.as_object().unwrap() {
        assert_eq!(&got[name], want, "{name}");
    }
    // A class defined in __main__ is pickled by value by cloudpickle: a call of its
    // skeleton-class maker, then NEWOBJ of that. Kept as `$call`.
    let dynamic = loads(
        frames[names
            .iter()
            .position(|n| *n == "dynamic_namedtuple")
            .unwrap()
            * 7
            + 6],
    )
    .unwrap();
    let j = value_to_json(&dynamic);
    assert_eq!(j["args"], json!([7]), "{j}");
    assert!(
        j["$call"]["$global"]
            .as_str()
            .is_some_and(|g| g.ends_with("cloudpickle._make_skeleton_class")),
        "{j}"
    );
}

/// Classes for the object cross-check, imported by both the pickling and the loading side.
const OBJECTS_PY: &str = r#"
import collections, dataclasses, enum

Point = collections.namedtuple("Point", "x y")

@dataclasses.dataclass
class D:
    x: int
    y: str = "a"

@dataclasses.dataclass(frozen=True, slots=True)
class F:
    x: int

class Custom:
    """__reduce__'s five-tuple: a call, then state, listitems and dictitems."""
    def __init__(self, k=None):
        self.k, self.items, self.map, self.state = k, [], {}, None
    def __reduce__(self):
        return (Custom, (self.k,), {"note": "hi"}, iter(self.items), iter(self.map.items()))
    def append(self, x):
        self.items.append(x)
    def extend(self, xs):
        self.items.extend(xs)
    def __setitem__(self, k, v):
        self.map[k] = v
    def __setstate__(self, s):
        self.state = s
    def __eq__(self, o):
        return type(o) is Custom and vars(self) == vars(o)

class Kw:
    """Keyword-only arguments to __new__: pickled by NEWOBJ_EX."""
    def __new__(cls, a, *, b):
        o = super().__new__(cls)
        o.a, o.b = a, b
        return o
    def __getnewargs_ex__(self):
        return (self.a,), {"b": self.b}
    def __getstate__(self):
        return None
    def __eq__(self, o):
        return type(o) is Kw and (self.a, self.b) == (o.a, o.b)

class Color(enum.Enum):
    RED = 1

class Outer:
    class Inner:
        pass
"#;

const OBJECTS_CHECK_PY: &str = r#"
import collections, datetime, decimal, json, pickle, struct, sys
d = sys.argv[1]
sys.path.insert(0, d)
import objs
from pyspark.sql import Row
from pyspark.serializers import CPickleSerializer

def frames(name):
    data, out, i = open(f"{d}/{name}", "rb").read(), [], 0
    while i < len(data):
        (n,) = struct.unpack(">i", data[i:i + 4]); i += 4
        out.append(data[i:i + n]); i += n
    return out

custom = objs.Custom("k"); custom.append(1); custom.append(2); custom["a"] = 1
loaded_custom = objs.Custom("k"); loaded_custom.items = [1, 2]; loaded_custom.map = {"a": 1}
loaded_custom.state = {"note": "hi"}
p = objs.Point(1, 2)
Dynamic = collections.namedtuple("Dynamic", "a")
cases = [
    ("namedtuple", objs.Point(1, 2)),
    ("dataclass", objs.D(1)),
    ("frozen_slots_dataclass", objs.F(3)),
    ("custom_reduce", custom),
    ("newobj_ex", objs.Kw(1, b=2)),
    ("enum", objs.Color.RED),
    ("nested_class", objs.Outer.Inner),
    ("function", len),
    ("row", Row(a=1, b="x")),
    ("row_without_fields", Row(1, 2)),
    ("nested", {"rows": [Row(p=objs.Point(1, 2), ds=[objs.D(2)])]}),
    ("shared", [p, p]),
    ("object_key", {objs.Point(0, 0): "origin"}),
    ("date", datetime.date(2020, 1, 2)),
    ("decimal", decimal.Decimal("1.5")),
    ("ordered_dict", collections.OrderedDict(a=1)),
    ("exception", ValueError("bad")),
    ("dynamic_namedtuple", Dynamic(7)),
]
ser = CPickleSerializer()
with open(f"{d}/theirs.bin", "wb") as f:
    for name, o in cases:
        for proto in range(6):
            try:
                b = pickle.dumps(o, proto)
            except Exception:
                b = pickle.dumps(None, proto)  # Dynamic is not importable: pickle refuses it
            f.write(struct.pack(">i", len(b))); f.write(b)
        b = ser.dumps(o)
        f.write(struct.pack(">i", len(b))); f.write(b)

expected = [
    lambda o: o == objs.Point(1, 2) and type(o) is objs.Point,
    lambda o: o == Row(a=1, b="x") and o.__fields__ == ["a", "b"],
    lambda o: o == datetime.date(2020, 1, 2),
    lambda o: o == decimal.Decimal("1.5"),
    lambda o: o == loaded_custom,
    lambda o: o == objs.Kw(1, b=2),
    lambda o: o is len,
    lambda o: o is objs.Outer.Inner,
    lambda o: o == objs.D(x=5, y="z"),
]
ours = [pickle.loads(b) for b in frames("ours.bin")]
report = {
    "names": [n for n, _ in cases],
    "ours_loaded": [bool(check(o)) for check, o in zip(expected, ours)],
}
json.dump(report, open(f"{d}/report.json", "w"))
"#;
