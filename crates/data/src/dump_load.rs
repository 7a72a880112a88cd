//! Reads a plain-SQL PostgreSQL dump (`pg_dump` without `-Fc`) into typed tables.
//!
//! Nothing in the file is ever executed: the dump is parsed with sqlparser and only
//! its data is kept. CREATE TABLE gives a table's columns and types, INSERT INTO ...
//! VALUES with literal values gives its rows; SET, DROP TABLE and ALTER TABLE ... ADD
//! CONSTRAINT are read and ignored. Any other statement (COPY, DELETE, CREATE
//! FUNCTION, GRANT, ...) refuses the whole dump, naming the statement and its line.
//!
//! Types: smallint / integer / bigint -> integer; numeric / decimal -> decimal, as
//! written; real and double precision -> decimal through the shortest text that reads
//! back as the same float (a `real` 9.80000019 is the float nearest 9.8, so 9.8), which
//! is what the dump's author stored; date -> date; text, character varying, character
//! -> text; bytea columns are left out (binary pictures are no use to SQL questions).

use crate::csv_load::{is_date, validate_table_name, MAX_NAME_LEN};
use crate::error::DataError;
use agentmesh_state::{ColumnInfo, ColumnType, TableData};
use sqlparser::ast::{
    AlterTableOperation, DataType, Expr, ObjectName, ObjectType, SetExpr, Statement, UnaryOperator,
    Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;
use sqlparser::tokenizer::Token;
use std::collections::HashSet;

/// What a dump may contain, for error messages.
pub const ALLOWED: &str = "SET, DROP TABLE, CREATE TABLE, INSERT INTO ... VALUES and \
                           ALTER TABLE ... ADD CONSTRAINT";

/// How a dump column's literals become dataset values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Source {
    Integer,
    Numeric,
    Float32,
    Float64,
    Date,
    Text,
    /// Left out of the dataset (bytea).
    Skip,
}

impl Source {
    fn of(data_type: &DataType) -> Option<Self> {
        use DataType as T;
        Some(match data_type {
            T::SmallInt(_) | T::Int2(_) | T::Int(_) | T::Int4(_) | T::Integer(_) => Self::Integer,
            T::BigInt(_) | T::Int8(_) => Self::Integer,
            T::Numeric(_) | T::Decimal(_) => Self::Numeric,
            T::Real | T::Float4 => Self::Float32,
            T::Double(_) | T::DoublePrecision | T::Float8 | T::Float(_) => Self::Float64,
            T::Date => Self::Date,
            T::Text | T::Varchar(_) | T::CharacterVarying(_) | T::Char(_) | T::Character(_) => {
                Self::Text
            }
            T::Custom(name, _) if name.to_string().eq_ignore_ascii_case("bpchar") => Self::Text,
            T::Bytea => Self::Skip,
            _ => return None,
        })
    }

    fn kind(self) -> ColumnType {
        match self {
            Self::Integer => ColumnType::Integer,
            Self::Numeric | Self::Float32 | Self::Float64 => ColumnType::Decimal,
            Self::Date => ColumnType::Date,
            Self::Text | Self::Skip => ColumnType::Text,
        }
    }
}

struct Table {
    name: String,
    /// Column names and sources, in the dump's order (skipped ones included).
    columns: Vec<(String, Source)>,
    rows: Vec<Vec<Option<String>>>,
}

fn bad(message: impl Into<String>) -> DataError {
    DataError::BadDump(message.into())
}

/// Parses `bytes` into one table per CREATE TABLE, in the dump's order.
pub fn parse_dump(bytes: &[u8]) -> Result<Vec<TableData>, DataError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|e| bad(format!("the dump is not UTF-8 text: {e}")))?
        .trim_start_matches('\u{feff}');
    let dialect = PostgreSqlDialect {};
    let mut parser = Parser::new(&dialect)
        .try_with_sql(text)
        .map_err(|e| bad(format!("the dump cannot be read as SQL: {e}")))?;
    let mut tables: Vec<Table> = Vec::new();
    loop {
        while parser.consume_token(&Token::SemiColon) {}
        let next = parser.peek_token();
        if next.token == Token::EOF {
            break;
        }
        let line = next.span.start.line;
        let label = statement_label(&parser);
        if !allowed_start(&label) {
            return Err(refused(&label, line));
        }
        let statement = parser.parse_statement().map_err(|e| {
            bad(format!(
                "dump statement {label} on line {line} cannot be parsed: {e}"
            ))
        })?;
        apply(statement, &label, line, &mut tables)?;
        let after = parser.peek_token();
        if !matches!(after.token, Token::SemiColon | Token::EOF) {
            return Err(bad(format!(
                "dump statement {label} on line {line} does not end with ';' (line {})",
                after.span.start.line
            )));
        }
    }
    if tables.is_empty() {
        return Err(bad("the dump creates no table (no CREATE TABLE statement)"));
    }
    tables.into_iter().map(finish).collect()
}

/// The statement's leading keywords, as a person would name it: `DELETE`, `CREATE FUNCTION`.
fn statement_label(parser: &Parser) -> String {
    let words: Vec<String> = parser
        .peek_tokens::<6>()
        .iter()
        .map_while(|t| match t {
            Token::Word(w) => Some(w.value.to_ascii_uppercase()),
            _ => None,
        })
        .collect();
    let Some(first) = words.first() else {
        return "(not a statement)".into();
    };
    let mut label = first.clone();
    if ["CREATE", "DROP", "ALTER"].contains(&first.as_str()) {
        let filler = [
            "OR",
            "REPLACE",
            "TEMP",
            "TEMPORARY",
            "UNLOGGED",
            "GLOBAL",
            "LOCAL",
        ];
        if let Some(object) = words[1..].iter().find(|w| !filler.contains(&w.as_str())) {
            label = format!("{label} {object}");
        }
    }
    label
}

fn allowed_start(label: &str) -> bool {
    ["SET", "DROP TABLE", "CREATE TABLE", "INSERT", "ALTER TABLE"].contains(&label)
}

fn refused(label: &str, line: u64) -> DataError {
    bad(format!(
        "dump statement {label} on line {line} is not allowed: a dump may hold only {ALLOWED}"
    ))
}

fn apply(
    statement: Statement,
    label: &str,
    line: u64,
    tables: &mut Vec<Table>,
) -> Result<(), DataError> {
    match statement {
        Statement::Set(_) => Ok(()),
        Statement::Drop {
            object_type: ObjectType::Table,
            ..
        } => Ok(()),
        Statement::AlterTable { operations, .. }
            if operations
                .iter()
                .all(|op| matches!(op, AlterTableOperation::AddConstraint { .. })) =>
        {
            Ok(())
        }
        Statement::CreateTable(create) => {
            if create.query.is_some() || create.like.is_some() || create.clone.is_some() {
                return Err(bad(format!(
                    "CREATE TABLE on line {line} must list its columns (no AS, LIKE or CLONE)"
                )));
            }
            let table = new_table(&create.name, &create.columns, line)?;
            if tables.iter().any(|t| t.name == table.name) {
                return Err(bad(format!(
                    "CREATE TABLE on line {line} creates table {} a second time",
                    table.name
                )));
            }
            tables.push(table);
            Ok(())
        }
        Statement::Insert(insert) => {
            let name = match &insert.table {
                sqlparser::ast::TableObject::TableName(name) => table_name(name, line)?,
                other => return Err(bad(format!("INSERT on line {line} into {other}"))),
            };
            let Some(table) = tables.iter_mut().find(|t| t.name == name) else {
                return Err(bad(format!(
                    "INSERT on line {line} into table {name}, which the dump does not create \
                     before it"
                )));
            };
            let simple = insert.on.is_none()
                && insert.returning.is_none()
                && insert.assignments.is_empty()
                && insert.or.is_none();
            let values = insert
                .source
                .as_ref()
                .filter(|q| q.with.is_none() && q.order_by.is_none() && q.limit_clause.is_none());
            match (simple, values.map(|q| q.body.as_ref())) {
                (true, Some(SetExpr::Values(values))) => {
                    add_rows(table, &insert.columns, &values.rows, line)
                }
                _ => Err(bad(format!(
                    "INSERT on line {line}: only INSERT INTO table [(columns)] VALUES (...) \
                     with literal values is allowed"
                ))),
            }
        }
        _ => Err(refused(label, line)),
    }
}

/// Unquoted names fold to lowercase, as Postgres does; the last part of `public.t` counts.
fn ident_name(ident: &sqlparser::ast::Ident) -> String {
    match ident.quote_style {
        None => ident.value.to_lowercase(),
        Some(_) => ident.value.clone(),
    }
}

fn table_name(name: &ObjectName, line: u64) -> Result<String, DataError> {
    let ident = name.0.last().and_then(|part| part.as_ident());
    let Some(ident) = ident else {
        return Err(bad(format!("line {line}: {name} is not a table name")));
    };
    let name = ident_name(ident);
    validate_table_name(&name).map_err(|e| bad(format!("line {line}: {e}")))?;
    Ok(name)
}

fn new_table(
    name: &ObjectName,
    columns: &[sqlparser::ast::ColumnDef],
    line: u64,
) -> Result<Table, DataError> {
    let name = table_name(name, line)?;
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(columns.len());
    for column in columns {
        let col = ident_name(&column.name);
        let usable = !col.is_empty() && col.len() <= MAX_NAME_LEN && !col.contains('\0');
        if !usable || !seen.insert(col.to_lowercase()) {
            return Err(bad(format!(
                "CREATE TABLE {name} on line {line}: column name {col:?} is empty, too long \
                 or repeated"
            )));
        }
        let Some(source) = Source::of(&column.data_type) else {
            return Err(bad(format!(
                "CREATE TABLE {name} on line {line}: column {col} has type {}, which a \
                 dataset cannot hold (integers, numeric, real, double precision, date, \
                 text, character varying and bytea can)",
                column.data_type
            )));
        };
        out.push((col, source));
    }
    if out.iter().all(|(_, s)| *s == Source::Skip) {
        return Err(bad(format!(
            "CREATE TABLE {name} on line {line} has no column a dataset can hold"
        )));
    }
    Ok(Table {
        name,
        columns: out,
        rows: Vec::new(),
    })
}

fn add_rows(
    table: &mut Table,
    listed: &[sqlparser::ast::Ident],
    rows: &[Vec<Expr>],
    line: u64,
) -> Result<(), DataError> {
    let positions: Vec<usize> = if listed.is_empty() {
        (0..table.columns.len()).collect()
    } else {
        let find = |ident: &sqlparser::ast::Ident| {
            let name = ident_name(ident);
            table
                .columns
                .iter()
                .position(|(c, _)| *c == name)
                .ok_or_else(|| {
                    bad(format!(
                        "INSERT INTO {} on line {line} names column {name}, which the table \
                     does not have",
                        table.name
                    ))
                })
        };
        listed.iter().map(find).collect::<Result<_, _>>()?
    };
    for row in rows {
        if row.len() != positions.len() {
            return Err(bad(format!(
                "INSERT INTO {} on line {line} has a row of {} values for {} columns",
                table.name,
                row.len(),
                positions.len()
            )));
        }
        let mut values = vec![None; table.columns.len()];
        for (expr, &at) in row.iter().zip(&positions) {
            let (column, source) = &table.columns[at];
            let where_ = || format!("INSERT INTO {} on line {line}, column {column}", table.name);
            let literal = literal(expr)
                .ok_or_else(|| bad(format!("{}: {expr} is not a literal value", where_())))?;
            values[at] =
                convert(literal, *source).map_err(|why| bad(format!("{}: {why}", where_())))?;
        }
        table.rows.push(values);
    }
    Ok(())
}

/// A literal: None for NULL, else its text.
fn literal(expr: &Expr) -> Option<Option<String>> {
    match expr {
        Expr::Value(v) => match &v.value {
            Value::Null => Some(None),
            Value::Number(n, _) => Some(Some(n.clone())),
            Value::SingleQuotedString(s) | Value::EscapedStringLiteral(s) => Some(Some(s.clone())),
            Value::Boolean(b) => Some(Some(b.to_string())),
            _ => None,
        },
        Expr::UnaryOp { op, expr } => match (op, literal(expr)?) {
            (UnaryOperator::Minus, Some(n)) if n.starts_with(|c: char| c.is_ascii_digit()) => {
                Some(Some(format!("-{n}")))
            }
            (UnaryOperator::Plus, Some(n)) if n.starts_with(|c: char| c.is_ascii_digit()) => {
                Some(Some(n))
            }
            _ => None,
        },
        Expr::Nested(inner) => literal(inner),
        Expr::Cast { expr, .. } => literal(expr),
        _ => None,
    }
}

fn convert(value: Option<String>, source: Source) -> Result<Option<String>, String> {
    let Some(text) = value else {
        return Ok(None);
    };
    let text = text.as_str();
    let out = match source {
        Source::Skip => return Ok(None),
        Source::Text => text.to_owned(),
        Source::Integer => text
            .trim()
            .parse::<i64>()
            .map_err(|_| format!("{text:?} is not an integer"))?
            .to_string(),
        Source::Numeric => match is_plain_decimal(text.trim()) {
            true => text.trim().to_owned(),
            false => float_text(text, |v| {
                v.parse::<f64>()
                    .ok()
                    .filter(|f| f.is_finite())
                    .map(|f| f.to_string())
            })?,
        },
        Source::Float32 => float_text(text, |v| {
            v.parse::<f32>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f.to_string())
        })?,
        Source::Float64 => float_text(text, |v| {
            v.parse::<f64>()
                .ok()
                .filter(|f| f.is_finite())
                .map(|f| f.to_string())
        })?,
        Source::Date if is_date(text.trim()) => text.trim().to_owned(),
        Source::Date => return Err(format!("{text:?} is not a date (YYYY-MM-DD)")),
    };
    Ok(Some(out))
}

fn float_text(text: &str, shortest: impl Fn(&str) -> Option<String>) -> Result<String, String> {
    shortest(text.trim()).ok_or_else(|| format!("{text:?} is not a finite number"))
}

fn is_plain_decimal(v: &str) -> bool {
    let body = v.strip_prefix(['-', '+']).unwrap_or(v);
    let (int, frac) = body.split_once('.').unwrap_or((body, ""));
    let digits = |s: &str| s.bytes().all(|b| b.is_ascii_digit());
    !(int.is_empty() && frac.is_empty()) && digits(int) && digits(frac)
}

fn finish(table: Table) -> Result<TableData, DataError> {
    let keep: Vec<usize> = (0..table.columns.len())
        .filter(|&i| table.columns[i].1 != Source::Skip)
        .collect();
    let columns = keep
        .iter()
        .map(|&i| ColumnInfo {
            name: table.columns[i].0.clone(),
            kind: table.columns[i].1.kind(),
        })
        .collect();
    let rows = table
        .rows
        .into_iter()
        .map(|mut row| keep.iter().map(|&i| row[i].take()).collect())
        .collect();
    Ok(TableData {
        name: table.name,
        columns,
        rows,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: &str = "SET client_encoding = 'UTF8';\n\
        DROP TABLE IF EXISTS t;\n\
        CREATE TABLE t (\n  id smallint NOT NULL,\n  price real,\n  exact numeric(10,2),\n  \
        day date,\n  name character varying(20),\n  pic bytea\n);\n\
        INSERT INTO t VALUES (1, 9.80000019, 19.90, '1997-01-02', 'it''s', '\\x');\n\
        INSERT INTO t (name, id) VALUES ('b', -2), (NULL, 3);\n\
        ALTER TABLE ONLY t\n    ADD CONSTRAINT pk_t PRIMARY KEY (id);\n";

    #[test]
    fn reads_tables_types_and_rows() {
        let tables = parse_dump(SMALL.as_bytes()).unwrap();
        assert_eq!(tables.len(), 1);
        let t = &tables[0];
        let cols: Vec<_> = t
            .columns
            .iter()
            .map(|c| (c.name.as_str(), c.kind))
            .collect();
        use ColumnType::*;
        assert_eq!(
            cols,
            [
                ("id", Integer),
                ("price", Decimal),
                ("exact", Decimal),
                ("day", Date),
                ("name", Text)
            ]
        );
        let s = |v: &str| Some(v.to_string());
        assert_eq!(
            t.rows,
            vec![
                vec![s("1"), s("9.8"), s("19.90"), s("1997-01-02"), s("it's")],
                vec![s("-2"), None, None, None, s("b")],
                vec![s("3"), None, None, None, None],
            ]
        );
    }

    #[test]
    fn refuses_other_statements_naming_kind_and_line() {
        let cases = [
            ("DELETE FROM t;", "DELETE on line 15"),
            ("COPY t FROM PROGRAM 'curl http://x';", "COPY on line 15"),
            (
                "CREATE FUNCTION f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql;",
                "CREATE FUNCTION on line 15",
            ),
            ("GRANT ALL ON t TO public;", "GRANT on line 15"),
            ("SELECT pg_sleep(10);", "SELECT on line 15"),
            ("DROP SCHEMA public CASCADE;", "DROP SCHEMA on line 15"),
            ("ALTER TABLE t OWNER TO postgres;", "ALTER TABLE on line 15"),
            (
                "CREATE OR REPLACE VIEW v AS SELECT 1;",
                "CREATE VIEW on line 15",
            ),
        ];
        for (statement, want) in cases {
            let dump = format!("{SMALL}{statement}\n");
            let err = parse_dump(dump.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{statement}: {err}");
        }
    }

    #[test]
    fn refuses_non_literal_and_bad_values() {
        let cases = [
            (
                "INSERT INTO t (id) VALUES (pg_read_file('/etc/passwd'));",
                "not a literal",
            ),
            ("INSERT INTO t (id) SELECT 1;", "literal values"),
            ("INSERT INTO t (id) VALUES ('x');", "not an integer"),
            ("INSERT INTO t (day) VALUES ('yesterday');", "not a date"),
            ("INSERT INTO u VALUES (1);", "does not create"),
            ("INSERT INTO t (nope) VALUES (1);", "does not have"),
            ("INSERT INTO t VALUES (1);", "1 values for 6 columns"),
            ("CREATE TABLE t (a int);", "a second time"),
            ("CREATE TABLE j (a jsonb);", "cannot hold"),
        ];
        for (statement, want) in cases {
            let dump = format!("{SMALL}{statement}\n");
            let err = parse_dump(dump.as_bytes()).unwrap_err().to_string();
            assert!(err.contains(want), "{statement}: {err}");
        }
        let err = parse_dump(b"SET x = 1;").unwrap_err().to_string();
        assert!(err.contains("creates no table"), "{err}");
    }

    fn northwind(file: &str) -> Vec<u8> {
        let dir = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../../shared/data/northwind/"
        );
        std::fs::read(format!("{dir}{file}")).unwrap()
    }

    /// The dump's float4 prices come back as the decimals the CSV export holds.
    #[test]
    fn northwind_dump_matches_the_csv_export() {
        let tables = parse_dump(&northwind("northwind-postgres.sql")).unwrap();
        let names: Vec<_> = tables.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names.len(), 14, "{names:?}");
        for (name, rows) in [("orders", 830), ("order_details", 2155)] {
            let table = tables.iter().find(|t| t.name == name).unwrap();
            assert_eq!(table.rows.len(), rows, "{name}");
        }
        let details = tables.iter().find(|t| t.name == "order_details").unwrap();
        let csv =
            crate::csv_load::parse_csv("order_details", &northwind("order_details.csv")).unwrap();
        assert_eq!(details.columns, csv.columns);
        assert_eq!(details.rows, csv.rows);
        let categories = tables.iter().find(|t| t.name == "categories").unwrap();
        assert!(categories.columns.iter().all(|c| c.name != "picture"));
    }
}
