//! Spark SQL types as users write them (DDL: `double`, `array<string>`,
//! `struct<id:bigint,mean:double>`, or a schema `k bigint, v double`), in the two forms a UDF task
//! needs: Spark's JSON form (what `pyspark.sql.types._parse_datatype_json_string` reads, so the
//! glue can build a return type without a JVM, which 3.5 would need to parse DDL) and the Arrow
//! type the JVM's `ArrowUtils` writes the column as.

use arrow_schema::{DataType, Field, Fields, TimeUnit};
use serde_json::{json, Value as J};
use std::fmt;
use std::sync::Arc;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SqlType {
    Null,
    Boolean,
    Byte,
    Short,
    Int,
    Long,
    Float,
    Double,
    String,
    Binary,
    Date,
    /// Session-zoned: the JVM tags the Arrow column with the session time zone.
    Timestamp,
    TimestampNtz,
    Decimal {
        precision: u8,
        scale: i8,
    },
    Array(Box<SqlType>),
    Map(Box<SqlType>, Box<SqlType>),
    Struct(Vec<(String, SqlType)>),
}

#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("type {text:?} does not parse at character {at}: {what}")]
pub struct DdlError {
    pub text: String,
    pub at: usize,
    pub what: String,
}

impl SqlType {
    /// A type (`array<string>`) or a schema (`k bigint, v double`, read as a struct).
    pub fn parse(text: &str) -> Result<SqlType, DdlError> {
        let mut p = Parser { text, pos: 0 };
        p.skip_ws();
        // A schema: a name followed by a type, as a comma list.
        let save = p.pos;
        let first = p.ident();
        p.skip_ws();
        let schema = first.is_some() && !p.at_end() && !p.peek_is(&['<', '('][..]);
        p.pos = save;
        let t = if schema {
            SqlType::Struct(p.fields(None)?)
        } else {
            p.ty()?
        };
        p.skip_ws();
        if !p.at_end() {
            return Err(p.err("unexpected text after the type"));
        }
        Ok(t)
    }

    /// Spark's JSON form (`DataType.jsonValue()`).
    pub fn to_json(&self) -> J {
        match self {
            SqlType::Null => json!("void"),
            SqlType::Boolean => json!("boolean"),
            SqlType::Byte => json!("byte"),
            SqlType::Short => json!("short"),
            SqlType::Int => json!("integer"),
            SqlType::Long => json!("long"),
            SqlType::Float => json!("float"),
            SqlType::Double => json!("double"),
            SqlType::String => json!("string"),
            SqlType::Binary => json!("binary"),
            SqlType::Date => json!("date"),
            SqlType::Timestamp => json!("timestamp"),
            SqlType::TimestampNtz => json!("timestamp_ntz"),
            SqlType::Decimal { precision, scale } => json!(format!("decimal({precision},{scale})")),
            SqlType::Array(e) => {
                json!({"type": "array", "elementType": e.to_json(), "containsNull": true})
            }
            SqlType::Map(k, v) => json!({
                "type": "map", "keyType": k.to_json(), "valueType": v.to_json(),
                "valueContainsNull": true
            }),
            SqlType::Struct(fields) => json!({
                "type": "struct",
                "fields": fields.iter().map(|(n, t)| json!({
                    "name": n, "type": t.to_json(), "nullable": true, "metadata": {}
                })).collect::<Vec<_>>()
            }),
        }
    }

    /// The Arrow type of a column of this type; `time_zone` is the session zone timestamps are
    /// tagged with.
    pub fn to_arrow(&self, time_zone: &str) -> DataType {
        match self {
            SqlType::Null => DataType::Null,
            SqlType::Boolean => DataType::Boolean,
            SqlType::Byte => DataType::Int8,
            SqlType::Short => DataType::Int16,
            SqlType::Int => DataType::Int32,
            SqlType::Long => DataType::Int64,
            SqlType::Float => DataType::Float32,
            SqlType::Double => DataType::Float64,
            SqlType::String => DataType::Utf8,
            SqlType::Binary => DataType::Binary,
            SqlType::Date => DataType::Date32,
            SqlType::Timestamp => {
                DataType::Timestamp(TimeUnit::Microsecond, Some(time_zone.into()))
            }
            SqlType::TimestampNtz => DataType::Timestamp(TimeUnit::Microsecond, None),
            SqlType::Decimal { precision, scale } => DataType::Decimal128(*precision, *scale),
            SqlType::Array(e) => {
                DataType::List(Arc::new(Field::new("element", e.to_arrow(time_zone), true)))
            }
            SqlType::Map(k, v) => {
                let entries = Fields::from(vec![
                    Field::new("key", k.to_arrow(time_zone), false),
                    Field::new("value", v.to_arrow(time_zone), true),
                ]);
                DataType::Map(
                    Arc::new(Field::new("entries", DataType::Struct(entries), false)),
                    false,
                )
            }
            SqlType::Struct(fields) => DataType::Struct(
                fields
                    .iter()
                    .map(|(n, t)| Field::new(n, t.to_arrow(time_zone), true))
                    .collect(),
            ),
        }
    }
}

impl fmt::Display for SqlType {
    /// Back to DDL (`struct<id:bigint,v:double>`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SqlType::Null => write!(f, "void"),
            SqlType::Boolean => write!(f, "boolean"),
            SqlType::Byte => write!(f, "tinyint"),
            SqlType::Short => write!(f, "smallint"),
            SqlType::Int => write!(f, "int"),
            SqlType::Long => write!(f, "bigint"),
            SqlType::Float => write!(f, "float"),
            SqlType::Double => write!(f, "double"),
            SqlType::String => write!(f, "string"),
            SqlType::Binary => write!(f, "binary"),
            SqlType::Date => write!(f, "date"),
            SqlType::Timestamp => write!(f, "timestamp"),
            SqlType::TimestampNtz => write!(f, "timestamp_ntz"),
            SqlType::Decimal { precision, scale } => write!(f, "decimal({precision},{scale})"),
            SqlType::Array(e) => write!(f, "array<{e}>"),
            SqlType::Map(k, v) => write!(f, "map<{k},{v}>"),
            SqlType::Struct(fs) => {
                write!(f, "struct<")?;
                for (i, (n, t)) in fs.iter().enumerate() {
                    write!(f, "{}{n}:{t}", if i > 0 { "," } else { "" })?;
                }
                write!(f, ">")
            }
        }
    }
}

impl std::str::FromStr for SqlType {
    type Err = DdlError;
    fn from_str(s: &str) -> Result<SqlType, DdlError> {
        SqlType::parse(s)
    }
}

struct Parser<'a> {
    text: &'a str,
    pos: usize,
}

impl Parser<'_> {
    fn err(&self, what: impl Into<String>) -> DdlError {
        DdlError {
            text: self.text.to_owned(),
            at: self.text[..self.pos].chars().count(),
            what: what.into(),
        }
    }

    fn rest(&self) -> &str {
        &self.text[self.pos..]
    }

    fn at_end(&self) -> bool {
        self.pos >= self.text.len()
    }

    fn peek_is(&self, chars: &[char]) -> bool {
        self.rest().starts_with(chars)
    }

    fn skip_ws(&mut self) {
        let n = self.rest().len() - self.rest().trim_start().len();
        self.pos += n;
    }

    fn eat(&mut self, c: char) -> bool {
        self.skip_ws();
        if self.rest().starts_with(c) {
            self.pos += c.len_utf8();
            true
        } else {
            false
        }
    }

    fn expect(&mut self, c: char) -> Result<(), DdlError> {
        if self.eat(c) {
            Ok(())
        } else {
            Err(self.err(format!("expected {c:?}")))
        }
    }

    /// A name: letters, digits, `_`; or a `backquoted` name.
    fn ident(&mut self) -> Option<String> {
        self.skip_ws();
        if let Some(r) = self.rest().strip_prefix('`') {
            let end = r.find('`')?;
            let name = r[..end].to_owned();
            self.pos += end + 2;
            return Some(name);
        }
        let n = self
            .rest()
            .find(|c: char| !(c.is_alphanumeric() || c == '_'))
            .unwrap_or(self.rest().len());
        if n == 0 {
            return None;
        }
        let name = self.rest()[..n].to_owned();
        self.pos += n;
        Some(name)
    }

    fn number(&mut self) -> Result<i64, DdlError> {
        self.skip_ws();
        let n = self
            .rest()
            .find(|c: char| !(c.is_ascii_digit() || c == '-'))
            .unwrap_or(self.rest().len());
        let v = self.rest()[..n]
            .parse()
            .map_err(|_| self.err("expected a number"))?;
        self.pos += n;
        Ok(v)
    }

    fn ty(&mut self) -> Result<SqlType, DdlError> {
        let start = self.pos;
        let Some(name) = self.ident() else {
            return Err(self.err("expected a type name"));
        };
        let t = match name.to_ascii_lowercase().as_str() {
            "void" | "null" => SqlType::Null,
            "boolean" | "bool" => SqlType::Boolean,
            "tinyint" | "byte" => SqlType::Byte,
            "smallint" | "short" => SqlType::Short,
            "int" | "integer" => SqlType::Int,
            "bigint" | "long" => SqlType::Long,
            "float" | "real" => SqlType::Float,
            "double" => SqlType::Double,
            "string" => SqlType::String,
            "varchar" | "char" => {
                // varchar(n) / char(n) reach Python as strings.
                self.expect('(')?;
                self.number()?;
                self.expect(')')?;
                SqlType::String
            }
            "binary" => SqlType::Binary,
            "date" => SqlType::Date,
            "timestamp" | "timestamp_ltz" => SqlType::Timestamp,
            "timestamp_ntz" => SqlType::TimestampNtz,
            "decimal" | "dec" | "numeric" => {
                if self.eat('(') {
                    let p = self.number()?;
                    let s = if self.eat(',') { self.number()? } else { 0 };
                    self.expect(')')?;
                    if !(1..=38).contains(&p) || s < 0 || s > p {
                        self.pos = start;
                        return Err(self.err(format!(
                            "decimal({p},{s}): precision must be 1..38 and scale 0..precision"
                        )));
                    }
                    SqlType::Decimal {
                        precision: p as u8,
                        scale: s as i8,
                    }
                } else {
                    SqlType::Decimal {
                        precision: 10,
                        scale: 0,
                    }
                }
            }
            "array" => {
                self.expect('<')?;
                let e = self.ty()?;
                self.expect('>')?;
                SqlType::Array(Box::new(e))
            }
            "map" => {
                self.expect('<')?;
                let k = self.ty()?;
                self.expect(',')?;
                let v = self.ty()?;
                self.expect('>')?;
                SqlType::Map(Box::new(k), Box::new(v))
            }
            "struct" => {
                self.expect('<')?;
                if self.eat('>') {
                    SqlType::Struct(vec![])
                } else {
                    let fs = self.fields(Some('>'))?;
                    self.expect('>')?;
                    SqlType::Struct(fs)
                }
            }
            other => {
                self.pos = start;
                self.skip_ws();
                return Err(self.err(format!("unknown type {other:?}")));
            }
        };
        Ok(t)
    }

    /// `name[:] type, ...` up to `end` (or the end of the text).
    fn fields(&mut self, end: Option<char>) -> Result<Vec<(String, SqlType)>, DdlError> {
        let mut out: Vec<(String, SqlType)> = vec![];
        loop {
            let Some(name) = self.ident() else {
                return Err(self.err("expected a field name"));
            };
            self.eat(':');
            let t = self.ty()?;
            if out.iter().any(|(n, _)| n.eq_ignore_ascii_case(&name)) {
                return Err(self.err(format!("field {name:?} appears twice")));
            }
            out.push((name, t));
            self.skip_ws();
            if !self.eat(',') {
                break;
            }
        }
        let _ = end;
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ddl_reads_as_spark_json() {
        let cases = [
            ("double", json!("double")),
            ("BIGINT", json!("long")),
            (
                "array<string>",
                json!({"type":"array","elementType":"string","containsNull":true}),
            ),
            ("decimal(10, 2)", json!("decimal(10,2)")),
            ("decimal", json!("decimal(10,0)")),
            (
                "struct<id:bigint,mean:double>",
                json!({"type":"struct","fields":[
                    {"name":"id","type":"long","nullable":true,"metadata":{}},
                    {"name":"mean","type":"double","nullable":true,"metadata":{}}]}),
            ),
            (
                "k bigint, v double",
                json!({"type":"struct","fields":[
                    {"name":"k","type":"long","nullable":true,"metadata":{}},
                    {"name":"v","type":"double","nullable":true,"metadata":{}}]}),
            ),
            (
                "map<string, int>",
                json!({"type":"map","keyType":"string","valueType":"integer","valueContainsNull":true}),
            ),
        ];
        for (ddl, want) in cases {
            assert_eq!(SqlType::parse(ddl).unwrap().to_json(), want, "{ddl}");
        }
    }

    #[test]
    fn bad_ddl_says_where() {
        for (ddl, at) in [
            ("dubble", 0),
            ("array<string", 12),
            ("struct<a int, a int>", 19),
            ("decimal(50,2)", 0),
            ("map<string>", 10),
            ("", 0),
        ] {
            let e = SqlType::parse(ddl).unwrap_err();
            assert_eq!(e.at, at, "{ddl}: {e}");
        }
    }

    #[test]
    fn arrow_types_follow_the_jvm() {
        let t = SqlType::parse("struct<ts:timestamp,w:array<string>>").unwrap();
        assert_eq!(
            crate::arrow::type_name(&t.to_arrow("America/Los_Angeles")),
            "struct<ts: timestamp[us, America/Los_Angeles], w: list<utf8>>"
        );
    }

    fn sql_type() -> impl Strategy<Value = SqlType> {
        let leaf = prop_oneof![
            Just(SqlType::Boolean),
            Just(SqlType::Byte),
            Just(SqlType::Int),
            Just(SqlType::Long),
            Just(SqlType::Double),
            Just(SqlType::String),
            Just(SqlType::Binary),
            Just(SqlType::Date),
            Just(SqlType::Timestamp),
            Just(SqlType::TimestampNtz),
            (1u8..=38)
                .prop_flat_map(|p| (Just(p), 0..=p as i8))
                .prop_map(|(precision, scale)| SqlType::Decimal { precision, scale }),
        ];
        leaf.prop_recursive(3, 16, 4, |inner| {
            prop_oneof![
                inner.clone().prop_map(|t| SqlType::Array(Box::new(t))),
                (inner.clone(), inner.clone())
                    .prop_map(|(k, v)| SqlType::Map(Box::new(k), Box::new(v))),
                proptest::collection::btree_map("[a-z_][a-z0-9_]{0,5}", inner, 1..4)
                    .prop_map(|m| SqlType::Struct(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn display_parses_back(t in sql_type()) {
            prop_assert_eq!(SqlType::parse(&t.to_string()).unwrap(), t);
        }

        #[test]
        fn arbitrary_text_never_panics(s in ".{0,40}") {
            let _ = SqlType::parse(&s);
        }
    }
}
