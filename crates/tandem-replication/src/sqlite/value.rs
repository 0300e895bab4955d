//! SQLite values and their canonical JSON form, the form rows travel in.
//!
//! A row is a JSON object with its columns in declared order: NULL → `null`, INTEGER →
//! number, TEXT → string, BLOB → `{"$blob": "<hex>"}` and REAL → `{"$real": "<shortest
//! decimal that reads back to the same double>"}` (`inf`, `-inf` for the infinities).
//! The encoding and the decoding are done here in Rust, from and into native values,
//! because SQLite's own float-to-text conversions do not keep every double exactly.
//! Equal rows have equal text on both nodes.

use serde_json::Value as Json;
use sqlx::sqlite::SqliteRow;
use sqlx::{Row, TypeInfo, ValueRef};

use crate::error::{Error, Result};

/// One SQLite value with its storage class.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    Null,
    Int(i64),
    Real(f64),
    Text(String),
    Blob(Vec<u8>),
}

impl Value {
    fn json(&self, out: &mut String) {
        match self {
            Value::Null => out.push_str("null"),
            Value::Int(i) => out.push_str(&i.to_string()),
            Value::Real(r) => {
                out.push_str("{\"$real\":\"");
                out.push_str(&format!("{r:?}"));
                out.push_str("\"}");
            }
            Value::Text(t) => push_json_str(out, t),
            Value::Blob(b) => {
                out.push_str("{\"$blob\":\"");
                out.push_str(&hex::encode_upper(b));
                out.push_str("\"}");
            }
        }
    }

    fn from_json(v: &Json) -> Result<Value, String> {
        Ok(match v {
            Json::Null => Value::Null,
            Json::Bool(b) => Value::Int(i64::from(*b)),
            Json::Number(n) => match n.as_i64() {
                Some(i) => Value::Int(i),
                None => Value::Real(
                    n.as_f64()
                        .ok_or_else(|| format!("number {n} out of range"))?,
                ),
            },
            Json::String(s) => Value::Text(s.clone()),
            Json::Object(map) => {
                if let Some(hex) = map.get("$blob").and_then(Json::as_str) {
                    Value::Blob(hex::decode(hex).map_err(|e| format!("bad $blob: {e}"))?)
                } else if let Some(r) = map.get("$real") {
                    match r {
                        Json::String(s) => {
                            Value::Real(s.parse().map_err(|_| format!("bad $real {s:?}"))?)
                        }
                        Json::Number(n) => Value::Real(n.as_f64().unwrap_or(f64::NAN)),
                        _ => return Err("bad $real".into()),
                    }
                } else {
                    return Err("an object that is neither $blob nor $real".into());
                }
            }
            Json::Array(_) => return Err("an array is not a column value".into()),
        })
    }

    /// Adds the value to a query as a parameter.
    pub(crate) fn bind<'q>(
        self,
        q: sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments>,
    ) -> sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments> {
        match self {
            Value::Null => q.bind(None::<i64>),
            Value::Int(i) => q.bind(i),
            Value::Real(r) => q.bind(r),
            Value::Text(t) => q.bind(t),
            Value::Blob(b) => q.bind(b),
        }
    }
}

/// Appends `text` as a JSON string, escaped as `serde_json` prints a `Json::String`
/// (the canonical form), without copying it into one first: the sender of a
/// from-sync encodes every text of every row.
fn push_json_str(out: &mut String, text: &str) {
    match serde_json::to_string(text) {
        Ok(quoted) => out.push_str(&quoted),
        // Not reached (a string always serializes); the slower way says the same.
        Err(_) => out.push_str(&Json::String(text.to_owned()).to_string()),
    }
}

/// The canonical JSON object of `values` under `columns`.
pub(crate) fn encode(columns: &[String], values: &[Value]) -> String {
    let mut out = String::from("{");
    for (i, (c, v)) in columns.iter().zip(values).enumerate() {
        if i > 0 {
            out.push(',');
        }
        push_json_str(&mut out, c);
        out.push(':');
        v.json(&mut out);
    }
    out.push('}');
    out
}

/// The values of `columns` in the JSON object `text` (missing members are NULL).
pub(crate) fn decode(columns: &[String], text: &str) -> Result<Vec<Value>> {
    let bad = |problem: String| Error::Protocol(format!("row {text:.200}: {problem}"));
    let json: Json = serde_json::from_str(text).map_err(|e| bad(e.to_string()))?;
    let Json::Object(map) = json else {
        return Err(bad("not a JSON object".into()));
    };
    columns
        .iter()
        .map(|c| match map.get(c) {
            None => Ok(Value::Null),
            Some(v) => Value::from_json(v).map_err(|p| bad(format!("column {c}: {p}"))),
        })
        .collect()
}

/// The native values of columns `first..first + n` of a result row.
pub(crate) fn read_row(row: &SqliteRow, first: usize, n: usize) -> Result<Vec<Value>> {
    (first..first + n)
        .map(|i| {
            let fail = |e| Error::db(format!("reading column {i} of a row"))(e);
            let raw = row.try_get_raw(i).map_err(fail)?;
            if raw.is_null() {
                return Ok(Value::Null);
            }
            let class = raw.type_info().name().to_ascii_uppercase();
            Ok(match class.as_str() {
                "INTEGER" => Value::Int(row.try_get(i).map_err(fail)?),
                "REAL" => Value::Real(row.try_get(i).map_err(fail)?),
                "BLOB" => Value::Blob(row.try_get(i).map_err(fail)?),
                _ => Value::Text(row.try_get(i).map_err(fail)?),
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn texts_are_quoted_as_json_strings_print(text in any::<String>()) {
            let mut out = String::new();
            push_json_str(&mut out, &text);
            prop_assert_eq!(out, Json::String(text).to_string());
        }
    }

    fn value() -> impl Strategy<Value = Value> {
        prop_oneof![
            Just(Value::Null),
            any::<i64>().prop_map(Value::Int),
            any::<f64>()
                .prop_filter("NaN is stored as NULL", |r| !r.is_nan())
                .prop_map(Value::Real),
            ".{0,12}".prop_map(Value::Text),
            proptest::collection::vec(any::<u8>(), 0..12).prop_map(Value::Blob),
        ]
    }

    proptest! {
        #[test]
        fn rows_round_trip_exactly(values in proptest::collection::vec(value(), 1..6)) {
            let columns: Vec<String> = (0..values.len()).map(|i| format!("c{i}")).collect();
            let text = encode(&columns, &values);
            let back = decode(&columns, &text).unwrap();
            prop_assert_eq!(back.len(), values.len());
            for (a, b) in values.iter().zip(&back) {
                match (a, b) {
                    (Value::Real(x), Value::Real(y)) => prop_assert_eq!(x.to_bits(), y.to_bits()),
                    _ => prop_assert_eq!(a, b),
                }
            }
            // Canonical: encoding the decoded row gives the same text.
            prop_assert_eq!(encode(&columns, &back), text);
        }

        #[test]
        fn any_text_decodes_or_errors(text in ".{0,64}") {
            let _ = decode(&["a".to_owned()], &text);
        }
    }

    #[test]
    fn sqlite_trigger_json_decodes() {
        let columns: Vec<String> = ["i", "r", "t", "b", "n"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect();
        let v = decode(
            &columns,
            r#"{"i":-9223372036854775808,"r":{"$real":0.3},"t":"x","b":{"$blob":"00FF"},"n":null}"#,
        )
        .unwrap();
        assert_eq!(
            v,
            [
                Value::Int(i64::MIN),
                Value::Real(0.3),
                Value::Text("x".into()),
                Value::Blob(vec![0, 255]),
                Value::Null
            ]
        );
    }
}
