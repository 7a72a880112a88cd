//! Turns an uploaded CSV file into a typed table: header names sanitized, column
//! types inferred from every value, ragged rows refused with their line number.

use crate::error::DataError;
use agentmesh_state::{ColumnInfo, ColumnType, TableData};
use std::collections::HashSet;

/// Longest table or column name (Postgres' identifier limit).
pub const MAX_NAME_LEN: usize = 63;

/// Checks a table name: `[a-z][a-z0-9_]*`, at most 63 bytes, not a system prefix.
pub fn validate_table_name(name: &str) -> Result<(), DataError> {
    let bad = |why: &str| Err(DataError::BadName(format!("dataset name {name:?} {why}")));
    let mut bytes = name.bytes();
    match bytes.next() {
        None => return Err(DataError::BadName("dataset name must not be empty".into())),
        Some(b) if !b.is_ascii_lowercase() => return bad("must start with a lowercase letter"),
        Some(_) => {}
    }
    if !bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_') {
        return bad("may contain only lowercase letters, digits and underscores");
    }
    if name.len() > MAX_NAME_LEN {
        return bad("is longer than 63 characters");
    }
    if name.starts_with("pg_") || name.starts_with("sqlite_") {
        return bad("uses a reserved prefix (pg_, sqlite_)");
    }
    Ok(())
}

/// Parses `bytes` (UTF-8 CSV, header first) into table `name`.
pub fn parse_csv(name: &str, bytes: &[u8]) -> Result<TableData, DataError> {
    validate_table_name(name)?;
    let text = decode(bytes)?;
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(false)
        .flexible(true)
        .from_reader(text.as_bytes());
    let mut records = reader.records();

    let header = match records.next() {
        None => return Err(DataError::BadCsv("csv has no header row".into())),
        Some(r) => r.map_err(csv_error)?,
    };
    let names = column_names(header.iter());
    let mut rows = Vec::new();
    for record in records {
        let record = record.map_err(csv_error)?;
        if record.len() == 1 && record.get(0).is_some_and(str::is_empty) {
            continue;
        }
        if record.len() != names.len() {
            let line = record.position().map_or(0, |p| p.line());
            let msg = format!(
                "csv line {line} has {} fields, the header has {}",
                record.len(),
                names.len()
            );
            return Err(DataError::BadCsv(msg));
        }
        rows.push(record.iter().map(cell).collect::<Vec<_>>());
    }
    Ok(typed_table(name, names, rows))
}

fn decode(bytes: &[u8]) -> Result<&str, DataError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(DataError::BadCsv("csv is empty".into()));
    }
    if bytes.contains(&0) {
        return Err(DataError::BadCsv(
            "csv looks binary (it contains NUL bytes)".into(),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        let line = bytes[..e.valid_up_to()]
            .iter()
            .filter(|b| **b == b'\n')
            .count()
            + 1;
        DataError::BadCsv(format!(
            "csv is not UTF-8 text (invalid bytes on line {line})"
        ))
    })?;
    Ok(text.trim_start_matches('\u{feff}'))
}

fn csv_error(e: csv::Error) -> DataError {
    let line = e
        .position()
        .map(|p| format!(" on line {}", p.line()))
        .unwrap_or_default();
    DataError::BadCsv(format!("csv cannot be parsed{line}: {e}"))
}

fn cell(value: &str) -> Option<String> {
    (!value.is_empty()).then(|| value.to_string())
}

/// Lowercase `[a-z][a-z0-9_]*` names, unique (`name_2`, ...), `column_N` when nothing is left.
fn column_names<'a>(raw: impl Iterator<Item = &'a str>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut names = Vec::new();
    for (i, header) in raw.enumerate() {
        let base = sanitize(header).unwrap_or_else(|| format!("column_{}", i + 1));
        let mut name = base.clone();
        let mut n = 2;
        while !seen.insert(name.clone()) {
            name = format!("{base}_{n}");
            n += 1;
        }
        names.push(name);
    }
    names
}

fn sanitize(header: &str) -> Option<String> {
    let mut out = String::new();
    for c in header.trim().chars().flat_map(char::to_lowercase) {
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.ends_with('_') {
            out.push('_');
        }
    }
    let mut out = out.trim_matches('_').to_string();
    if out.is_empty() {
        return None;
    }
    if !out.starts_with(|c: char| c.is_ascii_lowercase()) {
        out.insert_str(0, "c_");
    }
    out.truncate(MAX_NAME_LEN);
    Some(out)
}

fn typed_table(name: &str, names: Vec<String>, mut rows: Vec<Vec<Option<String>>>) -> TableData {
    let mut columns = Vec::with_capacity(names.len());
    for (i, name) in names.into_iter().enumerate() {
        let kind = infer(rows.iter().filter_map(|r| r[i].as_deref()));
        if kind != ColumnType::Text {
            for row in &mut rows {
                row[i] = row[i].take().map(|v| v.trim().to_string());
            }
        }
        columns.push(ColumnInfo { name, kind });
    }
    TableData {
        name: name.to_string(),
        columns,
        rows,
    }
}

/// The narrowest type that holds every value: integer, then decimal (plain digits with
/// a point), then real (a number written with an exponent); date when every value is
/// `YYYY-MM-DD`; text for anything else, mixes of dates and numbers, and columns of NULLs.
pub fn infer<'a>(values: impl Iterator<Item = &'a str>) -> ColumnType {
    let mut kind = None;
    for value in values {
        let Some(this) = kind_of(value.trim()) else {
            return ColumnType::Text;
        };
        kind = match widen(kind, this) {
            Some(k) => Some(k),
            None => return ColumnType::Text,
        };
    }
    kind.unwrap_or(ColumnType::Text)
}

/// The type one value asks for; None is text.
fn kind_of(value: &str) -> Option<ColumnType> {
    if has_leading_zero(value) {
        None
    } else if is_integer(value) {
        Some(ColumnType::Integer)
    } else if is_decimal(value) {
        Some(ColumnType::Decimal)
    } else if is_real(value) {
        Some(ColumnType::Real)
    } else if is_date(value) {
        Some(ColumnType::Date)
    } else {
        None
    }
}

/// The type holding both; None when only text does.
fn widen(known: Option<ColumnType>, next: ColumnType) -> Option<ColumnType> {
    use ColumnType::{Date, Decimal, Integer, Real};
    let rank = |k| match k {
        Integer => Some(0),
        Decimal => Some(1),
        Real => Some(2),
        _ => None,
    };
    let Some(known) = known else {
        return Some(next);
    };
    match (known, next) {
        (Date, Date) => Some(Date),
        (a, b) => match (rank(a), rank(b)) {
            (Some(x), Some(y)) => Some(if x >= y { a } else { b }),
            _ => None,
        },
    }
}

/// Numbers with leading zeros (codes, zip codes) stay text so no digit is lost.
fn has_leading_zero(v: &str) -> bool {
    let digits = v.trim_start_matches(['-', '+']);
    digits.len() > 1 && digits.starts_with('0') && !digits.starts_with("0.")
}

fn is_integer(v: &str) -> bool {
    v.parse::<i64>().is_ok()
}

/// `[+-]digits.digits` (one side may be empty): money and measures; kept exact.
fn is_decimal(v: &str) -> bool {
    let body = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac)
}

/// A number written with an exponent (`6.02e23`).
fn is_real(v: &str) -> bool {
    let plain = v
        .bytes()
        .all(|b| b.is_ascii_digit() || b"+-.eE".contains(&b));
    plain && v.contains(['e', 'E']) && v.parse::<f64>().is_ok_and(f64::is_finite)
}

/// Exactly `YYYY-MM-DD`, and a day that exists.
pub(crate) fn is_date(v: &str) -> bool {
    let b = v.as_bytes();
    let shape = b.len() == 10
        && b[4] == b'-'
        && b[7] == b'-'
        && b.iter()
            .enumerate()
            .all(|(i, c)| i == 4 || i == 7 || c.is_ascii_digit());
    shape && chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn infers_integer_decimal_and_text_with_nulls() {
        let csv = b"Order ID,Unit Price,Name,Notes\n1,14,Tofu,\n2,9.8,Chai,\"a, b\"\n";
        let table = parse_csv("orders", csv).unwrap();
        let cols: Vec<_> = table
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        assert_eq!(
            cols,
            [
                ("order_id", ColumnType::Integer),
                ("unit_price", ColumnType::Decimal),
                ("name", ColumnType::Text),
                ("notes", ColumnType::Text),
            ]
        );
        assert_eq!(table.rows[0][3], None);
        assert_eq!(table.rows[1][3].as_deref(), Some("a, b"));
    }

    #[test]
    fn ragged_row_reports_its_line() {
        let err = parse_csv("t", b"a,b\n1,2\n3\n4,5\n").unwrap_err();
        assert_eq!(
            err,
            DataError::BadCsv("csv line 3 has 1 fields, the header has 2".into())
        );
    }

    #[test]
    fn empty_binary_and_non_utf8_files_are_refused() {
        assert_eq!(
            parse_csv("t", b"").unwrap_err(),
            DataError::BadCsv("csv is empty".into())
        );
        assert!(parse_csv("t", b"a\0b\n")
            .unwrap_err()
            .to_string()
            .contains("binary"));
        let err = parse_csv("t", b"a,b\n1,\xff\xfe\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("not UTF-8") && err.contains("line 2"), "{err}");
    }

    #[test]
    fn names_are_sanitized_and_unique() {
        let names = column_names(["ID", "id", "2nd value", "", "Ünïcode!"].into_iter());
        assert_eq!(names, ["id", "id_2", "c_2nd_value", "column_4", "n_code"]);
    }

    #[test]
    fn bad_table_names_are_refused() {
        for name in [
            "",
            "Orders",
            "1st",
            "order-details",
            "pg_users",
            &"a".repeat(64),
        ] {
            assert!(
                matches!(validate_table_name(name), Err(DataError::BadName(_))),
                "{name}"
            );
        }
        assert!(validate_table_name("order_details").is_ok());
    }

    #[test]
    fn leading_zero_codes_stay_text() {
        assert_eq!(infer(["00501", "12345"].into_iter()), ColumnType::Text);
        assert_eq!(infer(["0", "0.5", "-3"].into_iter()), ColumnType::Decimal);
        assert_eq!(infer(["nan"].into_iter()), ColumnType::Text);
        assert_eq!(infer(std::iter::empty()), ColumnType::Text);
    }

    #[test]
    fn infers_decimal_real_and_date() {
        use ColumnType::*;
        let cases: [(&[&str], ColumnType); 12] = [
            (&["1", "-2", "+3"], Integer),
            (&["14", "9.80", "-0.5"], Decimal),
            (&["1.5", "2e3"], Real),
            (&["1e-3", "7"], Real),
            (&["1996-07-04", " 1998-05-06 "], Date),
            (&["1996-07-04", "n/a"], Text),
            (&["1996-07-04", "12"], Text),
            (&["1996-02-30"], Text),
            (&["1996-7-4"], Text),
            (&["19960704"], Integer),
            (&["1.", ".5"], Decimal),
            (&["12.5", "0012.5"], Text),
        ];
        for (values, want) in cases {
            assert_eq!(infer(values.iter().copied()), want, "{values:?}");
        }
    }

    #[test]
    fn money_and_dates_from_csv_with_empty_values() {
        let csv = b"id,paid,on\n1,19.99,1997-01-02\n2,,\n3,5,1996-12-31\n";
        let table = parse_csv("payments", csv).unwrap();
        let kinds: Vec<_> = table.columns.iter().map(|c| c.kind).collect();
        assert_eq!(
            kinds,
            [ColumnType::Integer, ColumnType::Decimal, ColumnType::Date]
        );
        assert_eq!(table.rows[1], vec![Some("2".into()), None, None]);
    }
}
