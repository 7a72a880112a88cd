//! Dataset cells and identifiers: parsing CSV text into typed SQL values.

use crate::{ColumnType, Result, StateError, TableData};

/// One typed cell of a dataset row.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Cell {
    Int(Option<i64>),
    Real(Option<f64>),
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
            ColumnType::Real => Cell::Real(None),
            ColumnType::Text => Cell::Text(None),
        });
    };
    match kind {
        ColumnType::Integer => text
            .trim()
            .parse::<i64>()
            .map(|v| Cell::Int(Some(v)))
            .map_err(|_| format!("{text:?} is not an integer")),
        ColumnType::Real => match text.trim().parse::<f64>() {
            Ok(v) if v.is_finite() => Ok(Cell::Real(Some(v))),
            _ => Err(format!("{text:?} is not a finite number")),
        },
        ColumnType::Text => Ok(Cell::Text(Some(text.to_owned()))),
    }
}

/// Rows per multi-row INSERT: bounded by the bind-parameter limit of both backends.
pub(crate) fn batch_rows(columns: usize) -> usize {
    (30_000 / columns.max(1)).clamp(1, 1_000)
}

/// A JSON number from a decimal string, or the string itself when it does not fit.
pub(crate) fn decimal_json(text: &str) -> serde_json::Value {
    match serde_json::from_str::<serde_json::Number>(text) {
        Ok(n) => serde_json::Value::Number(n),
        Err(_) => serde_json::Value::String(text.to_owned()),
    }
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
    fn decimals_become_numbers() {
        assert_eq!(decimal_json("1265793.04"), serde_json::json!(1265793.04));
        assert_eq!(decimal_json("NaN"), serde_json::json!("NaN"));
    }
}
