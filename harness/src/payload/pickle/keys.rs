//! Python equality for dict keys and set members.

use super::*;

/// What Python's hash/eq sees: 1 == 1.0 == True; NaN equals nothing; frozensets ignore order; a
/// global is one object wherever it is named. An object's equality is its class's `__eq__`,
/// which fakejvm cannot run, so each object is a key of its own, like NaN: keys Python kept
/// apart stay apart.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(super) enum HashKey {
    None,
    Int(BigInt),
    Float(u64),
    /// Equal to nothing else (NaN, an object): numbered in order of appearance.
    Unique(usize),
    Str(String),
    Bytes(Vec<u8>),
    Tuple(Vec<HashKey>),
    FrozenSet(Vec<HashKey>),
    Global(Global),
}

pub(super) fn hash_key(v: &Value, uniques: &mut usize) -> Result<HashKey, &'static str> {
    Ok(match v {
        Value::None => HashKey::None,
        Value::Bool(b) => HashKey::Int(BigInt::from(u8::from(*b))),
        Value::Int(i) => HashKey::Int(BigInt::from(*i)),
        Value::BigInt(b) => HashKey::Int(b.clone()),
        Value::Float(f) if f.is_nan() => {
            *uniques += 1;
            HashKey::Unique(*uniques)
        }
        Value::Object(_) => {
            *uniques += 1;
            HashKey::Unique(*uniques)
        }
        Value::Global(g) => HashKey::Global((**g).clone()),
        Value::Float(f) if f.is_finite() && f.fract() == 0.0 => HashKey::Int(integral_f64(*f)),
        Value::Float(f) => HashKey::Float(f.to_bits()),
        Value::Str(s) => HashKey::Str(s.clone()),
        Value::Bytes(b) => HashKey::Bytes(b.clone()),
        Value::Tuple(items) => HashKey::Tuple(
            items
                .iter()
                .map(|i| hash_key(i, uniques))
                .collect::<Result<_, _>>()?,
        ),
        Value::FrozenSet(items) => {
            let mut keys = items
                .iter()
                .map(|i| hash_key(i, uniques))
                .collect::<Result<Vec<_>, _>>()?;
            keys.sort();
            keys.dedup();
            HashKey::FrozenSet(keys)
        }
        other => return Err(other.type_name()),
    })
}

/// An integral, finite float as the exact integer it equals.
pub(super) fn integral_f64(f: f64) -> BigInt {
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
pub(super) fn dedupe_dict(pairs: Vec<(Value, Value)>) -> Result<Vec<(Value, Value)>, &'static str> {
    let mut uniques = 0;
    let mut index: HashMap<HashKey, usize> = HashMap::with_capacity(pairs.len());
    let mut out: Vec<(Value, Value)> = Vec::with_capacity(pairs.len());
    for (k, v) in pairs {
        match index.entry(hash_key(&k, &mut uniques)?) {
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
pub(super) fn dedupe_set(items: Vec<Value>) -> Result<Vec<Value>, &'static str> {
    let mut uniques = 0;
    let mut seen = std::collections::HashSet::with_capacity(items.len());
    let mut out = Vec::with_capacity(items.len());
    for item in items {
        if seen.insert(hash_key(&item, &mut uniques)?) {
            out.push(item);
        }
    }
    Ok(out)
}
