//! JSON, as scenario files spell values.

use super::*;

/// A value from its JSON spelling. Plain JSON: null, bool, integer (beyond i64 too, up to
/// u64), float, string, array (list), object (dict with str keys). An object with exactly one
/// key starting with `$` is a tagged form: `{"$tuple": [..]}`, `{"$bytes": "<hex>"}`,
/// `{"$bytearray": "<hex>"}`, `{"$float": "nan"|"inf"|"-inf"}`, `{"$int": "<decimal>"}`,
/// `{"$dict": [[k, v], ..]}` (any hashable keys), `{"$set": [..]}`, `{"$frozenset": [..]}`.
/// Dicts and sets follow Python: a repeated key keeps the last value. An object holding a
/// `$global` (or `$call`) key is a global or an object, see [`object_from_json`].
pub fn value_from_json(v: &serde_json::Value) -> Result<Value> {
    from_json(v, &mut Vec::new(), 0)
}

/// Where in the JSON we are, rendered as a JSON Pointer only when there is an error.
pub(super) enum Segment<'a> {
    Index(usize),
    Key(&'a str),
}

#[cold]
pub(super) fn json_err<T>(path: &[Segment], what: impl Into<String>) -> Result<T> {
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
pub(super) fn from_json<'a>(
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
        J::Object(map) if map.contains_key(GLOBAL) || map.contains_key(CALL) => {
            object_from_json(map, path, depth + 1)
        }
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

/// The keys of an object's JSON form.
const GLOBAL: &str = "$global";
const CALL: &str = "$call";
const OBJECT_KEYS: [&str; 7] = [
    GLOBAL,
    CALL,
    "args",
    "kwargs",
    "state",
    "listitems",
    "dictitems",
];

/// `{"$global": "module.Name"}` is a global (a class or function by reference);
/// `{"$global": "module.Name", "args": [..]}` an object built by calling it, with optional
/// `"kwargs": {..}` (NEWOBJ_EX), `"state": v` (BUILD), `"listitems": [..]` (APPENDS) and
/// `"dictitems": [[k, v], ..]` (SETITEMS). `$call` instead of `$global` holds a callable that
/// is not a global (a class cloudpickle built by value), and needs `args`. A nested class is
/// `module:Outer.Inner`.
#[inline(never)]
pub(super) fn object_from_json<'a>(
    map: &'a serde_json::Map<String, serde_json::Value>,
    path: &mut Vec<Segment<'a>>,
    depth: usize,
) -> Result<Value> {
    use serde_json::Value as J;
    if let Some(k) = map.keys().find(|k| !OBJECT_KEYS.contains(&k.as_str())) {
        path.push(Segment::Key(k));
        return json_err(
            path,
            format!(
                "unknown key {k:?} beside $global (keys: {})",
                OBJECT_KEYS.join(", ")
            ),
        );
    }
    let callable = match (map.get(GLOBAL), map.get(CALL)) {
        (Some(_), Some(_)) => {
            return json_err(path, "$global and $call are two callables: give one")
        }
        (Some(J::String(text)), None) => {
            path.push(Segment::Key(GLOBAL));
            let g = Global::parse(text).or_else(|e| json_err(path, e))?;
            path.pop();
            Value::Global(Box::new(g))
        }
        (Some(_), None) => {
            path.push(Segment::Key(GLOBAL));
            return json_err(path, "$global takes a string, \"module.Name\"");
        }
        (None, Some(c)) => {
            if !map.contains_key("args") {
                return json_err(
                    path,
                    "$call needs `args` (the call's arguments, [] for none)",
                );
            }
            path.push(Segment::Key(CALL));
            let c = from_json(c, path, depth)?;
            path.pop();
            c
        }
        (None, None) => unreachable!("the caller saw one of the two"),
    };
    if !map.contains_key("args") {
        if let Some(k) = map.keys().find(|k| k.as_str() != GLOBAL) {
            path.push(Segment::Key(k));
            return json_err(
                path,
                "belongs to a call: add `args` (the call's arguments, [] for none); \
                 {\"$global\": ...} alone is a reference to the class or function",
            );
        }
        return Ok(callable);
    }
    // Each member is one level in, and an array member's items one more, as in the JSON.
    let items = |key: &'a str, path: &mut Vec<Segment<'a>>| -> Result<Vec<Value>> {
        let Some(v) = map.get(key) else {
            return Ok(Vec::new());
        };
        path.push(Segment::Key(key));
        let J::Array(list) = v else {
            return json_err(path, format!("{key} takes an array"));
        };
        let out = json_items(list, path, depth + 1)?;
        path.pop();
        Ok(out)
    };
    let args = items("args", path)?;
    let listitems = items("listitems", path)?;
    let mut object = Object::call(callable, args);
    object.listitems = listitems;
    if let Some(k) = map.get("kwargs") {
        path.push(Segment::Key("kwargs"));
        match from_json(k, path, depth)? {
            Value::Dict(pairs) if pairs.iter().all(|(k, _)| matches!(k, Value::Str(_))) => {
                object.kwargs = pairs
            }
            _ => return json_err(path, "kwargs takes an object of keyword arguments"),
        }
        path.pop();
    }
    if let Some(st) = map.get("state") {
        path.push(Segment::Key("state"));
        object.state = Some(from_json(st, path, depth)?);
        path.pop();
    }
    if let Some(d) = map.get("dictitems") {
        path.push(Segment::Key("dictitems"));
        let J::Array(entries) = d else {
            return json_err(path, "dictitems takes an array of [key, value] pairs");
        };
        for (i, entry) in entries.iter().enumerate() {
            path.push(Segment::Index(i));
            let Some(kv) = entry.as_array().filter(|kv| kv.len() == 2) else {
                return json_err(path, "a dictitems entry is a [key, value] array");
            };
            let mut kv = json_items(kv, path, depth + 2)?;
            let v = kv.pop().expect("two items");
            let k = kv.pop().expect("two items");
            object.dictitems.push((k, v));
            path.pop();
        }
        path.pop();
    }
    Ok(Value::Object(Box::new(object)))
}

#[cold]
pub(super) fn too_deep<T>(path: &[Segment]) -> Result<T> {
    json_err(path, format!("nests deeper than {MAX_DEPTH} levels"))
}

/// The items of a container at nesting `depth`.
pub(super) fn json_items<'a>(
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

pub(super) fn from_tag<'a>(
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
pub(super) fn str_dict_from_json<'a>(
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
pub(super) fn set_from_json<'a>(
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
pub(super) fn dict_from_json<'a>(
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
pub(super) fn scalar_from_json(v: &serde_json::Value) -> Value {
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
pub(super) fn scalar_tag(tag: &str, inner: &serde_json::Value, path: &[Segment]) -> Result<Value> {
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
                    "unknown tag {other:?} (tags: $tuple $bytes $bytearray $float $int $dict $set $frozenset $global); \
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
        Value::Global(g) => tagged(GLOBAL, serde_json::Value::String(g.to_string())),
        Value::Object(o) => object_to_json(o),
        scalar => scalar_to_json(scalar),
    }
}

pub(super) fn tagged(tag: &str, inner: serde_json::Value) -> serde_json::Value {
    let mut map = serde_json::Map::with_capacity(1);
    map.insert(tag.to_owned(), inner);
    serde_json::Value::Object(map)
}

#[inline(never)]
pub(super) fn scalar_to_json(v: &Value) -> serde_json::Value {
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
        Value::List(_)
        | Value::Tuple(_)
        | Value::Dict(_)
        | Value::Set(_)
        | Value::FrozenSet(_)
        | Value::Global(_)
        | Value::Object(_) => {
            unreachable!("containers are value_to_json's")
        }
    }
}

/// The inverse of `object_from_json`; empty parts are left out.
#[inline(never)]
pub(super) fn object_to_json(o: &Object) -> serde_json::Value {
    use serde_json::Value as J;
    let mut map = serde_json::Map::new();
    match &o.callable {
        Value::Global(g) => map.insert(GLOBAL.into(), J::String(g.to_string())),
        other => map.insert(CALL.into(), value_to_json(other)),
    };
    map.insert(
        "args".into(),
        J::Array(o.args.iter().map(value_to_json).collect()),
    );
    if !o.kwargs.is_empty() {
        map.insert("kwargs".into(), dict_to_json(&o.kwargs));
    }
    if let Some(state) = &o.state {
        map.insert("state".into(), value_to_json(state));
    }
    if !o.listitems.is_empty() {
        map.insert(
            "listitems".into(),
            J::Array(o.listitems.iter().map(value_to_json).collect()),
        );
    }
    if !o.dictitems.is_empty() {
        let pairs = o
            .dictitems
            .iter()
            .map(|(k, v)| J::Array(vec![value_to_json(k), value_to_json(v)]))
            .collect();
        map.insert("dictitems".into(), J::Array(pairs));
    }
    J::Object(map)
}

pub(super) fn members_to_json(items: &[Value]) -> serde_json::Value {
    let mut members: Vec<serde_json::Value> = items.iter().map(value_to_json).collect();
    members.sort_by_cached_key(|m| m.to_string());
    serde_json::Value::Array(members)
}

pub(super) fn dict_to_json(pairs: &[(Value, Value)]) -> serde_json::Value {
    use serde_json::Value as J;
    let str_keys = pairs.iter().all(|(k, _)| matches!(k, Value::Str(_)));
    // A lone "$..." key would read back as a tag, and a "$global" or "$call" key as an object.
    let tag_like = matches!(pairs, [(Value::Str(k), _)] if k.starts_with('$'))
        || pairs
            .iter()
            .any(|(k, _)| matches!(k, Value::Str(k) if k == GLOBAL || k == CALL));
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
