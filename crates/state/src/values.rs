//! Dataset cells and identifiers: parsing CSV text into typed SQL values.

use crate::{ColumnType, Result, StateError, TableData};
use chrono::NaiveDate;

/// One typed cell of a dataset row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Int(Option<i64>),
    /// Canonical decimal text (`-12.50`): exact, never through a float.
    Decimal(Option<String>),
    Real(Option<f64>),
    Date(Option<NaiveDate>),
    Text(Option<String>),
}

/// Quotes an identifier for SQL (`"name"`, inner quotes doubled).
pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Checks the table name and columns before anything is written.
pub(crate) fn validate_table(table: &TableData) -> Result<()> {
    let name = &table.name;
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_lowercase());
    let rest_ok = chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if !first_ok || !rest_ok || name.len() > 63 {
        return Err(StateError::Invalid(format!(
            "invalid dataset name {name:?}: use [a-z][a-z0-9_]*, at most 63 bytes"
        )));
    }
    if table.columns.is_empty() {
        return Err(StateError::Invalid(
            "a dataset needs at least one column".into(),
        ));
    }
    let mut seen = std::collections::HashSet::new();
    for col in &table.columns {
        if col.name.is_empty() || col.name.len() > 63 || col.name.contains('\0') {
            return Err(StateError::Invalid(format!(
                "invalid column name {:?}",
                col.name
            )));
        }
        if !seen.insert(col.name.to_lowercase()) {
            return Err(StateError::Invalid(format!(
                "duplicate column name {:?}",
                col.name
            )));
        }
    }
    Ok(())
}

/// Parses every row into typed cells; a value that does not fit its column is an error
/// naming the row (1-based, header excluded) and the column.
pub(crate) fn typed_rows(table: &TableData) -> Result<Vec<Vec<Cell>>> {
    let width = table.columns.len();
    let mut out = Vec::with_capacity(table.rows.len());
    for (i, row) in table.rows.iter().enumerate() {
        if row.len() != width {
            return Err(StateError::Invalid(format!(
                "row {} has {} values, expected {width}",
                i + 1,
                row.len()
            )));
        }
        let cells = row.iter().zip(&table.columns).map(|(value, col)| {
            parse_cell(value.as_deref(), col.kind).map_err(|what| {
                StateError::Invalid(format!("row {} column {:?}: {what}", i + 1, col.name))
            })
        });
        out.push(cells.collect::<Result<Vec<_>>>()?);
    }
    Ok(out)
}

fn parse_cell(value: Option<&str>, kind: ColumnType) -> Result<Cell, String> {
    let Some(text) = value else {
        return Ok(match kind {
            ColumnType::Integer => Cell::Int(None),
            ColumnType::Decimal => Cell::Decimal(None),
            ColumnType::Real => Cell::Real(None),
            ColumnType::Date => Cell::Date(None),
            ColumnType::Text => Cell::Text(None),
        });
    };
    match kind {
        ColumnType::Integer => text
            .trim()
            .parse::<i64>()
            .map(|v| Cell::Int(Some(v)))
            .map_err(|_| format!("{text:?} is not an integer")),
        ColumnType::Decimal => canonical_decimal(text)
            .map(|v| Cell::Decimal(Some(v)))
            .ok_or_else(|| format!("{text:?} is not a decimal number")),
        ColumnType::Real => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Cell::Real(Some(v))),
            _ => Err(format!("{text:?} is not a finite number")),
        },
        ColumnType::Date => NaiveDate::parse_from_str(text.trim(), "%Y-%m-%d")
            .map(|d| Cell::Date(Some(d)))
            .map_err(|_| format!("{text:?} is not a date (YYYY-MM-DD)")),
        ColumnType::Text => Ok(Cell::Text(Some(text.to_owned()))),
    }
}

/// `[+-]digits[.digits]` (either side may be empty, not both) as `-12.50`: sign kept only
/// when negative, integer part without leading zeros, scale (trailing zeros) kept.
pub(crate) fn canonical_decimal(text: &str) -> Option<String> {
    let text = text.trim();
    let (negative, body) = match text.as_bytes().first()? {
        b'-' => (true, &text[1..]),
        b'+' => (false, &text[1..]),
        _ => (false, text),
    };
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    if (int.is_empty() && frac.is_empty()) || !digits(int) || !digits(frac) {
        return None;
    }
    let int = int.trim_start_matches('0');
    let zero = int.is_empty() && frac.bytes().all(|b| b == b'0');
    let mut out = String::with_capacity(text.len() + 1);
    if negative && !zero {
        out.push('-');
    }
    out.push_str(if int.is_empty() { "0" } else { int });
    if !frac.is_empty() {
        out.push('.');
        out.push_str(frac);
    }
    Some(out)
}

/// Rows per multi-row INSERT: bounded by the bind-parameter limit of both backends.
pub(crate) fn batch_rows(columns: usize) -> usize {
    (30_000 / columns.max(1)).clamp(1, 1_000)
}

/// A JSON number from a decimal string when the number says exactly the same value;
/// otherwise (more digits than a float holds, NaN) the decimal string itself, so that
/// no digit is silently rounded away.
pub(crate) fn decimal_json(text: &str) -> serde_json::Value {
    let exact = match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) if !n.is_f64() => Some(n),
        Ok(n) => n
            .as_f64()
            .filter(|f| same_decimal(&f.to_string(), text))
            .map(|_| n),
        Err(_) => None,
    };
    match exact {
        Some(n) => serde_json::Value::Number(n),
        None => serde_json::Value::String(text.to_owned()),
    }
}

/// True when both decimal strings denote the same value (trailing zeros aside).
fn same_decimal(a: &str, b: &str) -> bool {
    let strip = |s: &str| -> Option<String> {
        let s = canonical_decimal(s)?;
        Some(match s.contains('.') {
            true => s.trim_end_matches('0').trim_end_matches('.').to_owned(),
            false => s,
        })
    };
    let (a, b) = (strip(a), strip(b));
    a.is_some() && a == b
}

/// A JSON number from a float; NaN and infinities (no JSON form) become strings.
pub(crate) fn float_json(v: f64) -> serde_json::Value {
    serde_json::Number::from_f64(v)
        .map(serde_json::Value::Number)
        .unwrap_or_else(|| serde_json::Value::String(v.to_string()))
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::ColumnInfo;

    fn table(rows: Vec<Vec<Option<&str>>>) -> TableData {
        TableData {
            name: "t".into(),
            columns: vec![
                ColumnInfo {
                    name: "a".into(),
                    kind: ColumnType::Integer,
                },
                ColumnInfo {
                    name: "b".into(),
                    kind: ColumnType::Real,
                },
            ],
            rows: rows
                .into_iter()
                .map(|r| r.into_iter().map(|v| v.map(str::to_owned)).collect())
                .collect(),
        }
    }

    #[test]
    fn parses_and_names_bad_cells() {
        let ok = typed_rows(&table(vec![vec![Some("1"), None]])).unwrap();
        assert_eq!(ok, vec![vec![Cell::Int(Some(1)), Cell::Real(None)]]);
        let err = typed_rows(&table(vec![vec![Some("x"), None]])).unwrap_err();
        assert!(err.to_string().contains("row 1 column \"a\""), "{err}");
    }

    #[test]
    fn rejects_bad_names() {
        let mut t = table(vec![]);
        t.name = "Bad-Name".into();
        assert!(validate_table(&t).is_err());
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn decimals_become_numbers_only_when_exact() {
        assert_eq!(decimal_json("1265793.04"), serde_json::json!(1265793.04));
        assert_eq!(decimal_json("1265793.0390"), serde_json::json!(1265793.039));
        assert_eq!(decimal_json("14"), serde_json::json!(14));
        assert_eq!(decimal_json("-0.50"), serde_json::json!(-0.5));
        assert_eq!(decimal_json("NaN"), serde_json::json!("NaN"));
        let long = "12345678901234567890.123456789";
        assert_eq!(decimal_json(long), serde_json::json!(long));
    }

    #[test]
    fn canonical_decimals() {
        let cases = [
            ("14", Some("14")),
            (" +007.50 ", Some("7.50")),
            ("-.5", Some("-0.5")),
            ("5.", Some("5")),
            ("-0.00", Some("0.00")),
            ("1e3", None),
            (".", None),
            ("", None),
            ("1.2.3", None),
            ("--1", None),
        ];
        for (text, want) in cases {
            assert_eq!(canonical_decimal(text).as_deref(), want, "{text:?}");
        }
    }

    #[test]
    fn decimal_and_date_cells() {
        let mut t = table(vec![]);
        t.columns[0].kind = ColumnType::Decimal;
        t.columns[1].kind = ColumnType::Date;
        t.rows = vec![vec![Some("19.90".into()), Some("1997-01-31".into())]];
        let date = NaiveDate::from_ymd_opt(1997, 1, 31);
        assert_eq!(
            typed_rows(&t).unwrap(),
            vec![vec![Cell::Decimal(Some("19.90".into())), Cell::Date(date)]]
        );
        t.rows = vec![vec![Some("1,5".into()), None]];
        assert!(typed_rows(&t).is_err());
        t.rows = vec![vec![None, Some("1997-02-30".into())]];
        let err = typed_rows(&t).unwrap_err().to_string();
        assert!(err.contains("not a date"), "{err}");
    }
}
