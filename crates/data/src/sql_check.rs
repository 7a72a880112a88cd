//! Decides whether SQL may run: one read-only query over registered datasets only.
//! The database still runs it in a read-only transaction; this check gives the client
//! a clear refusal before anything reaches storage.

use crate::error::DataError;
use sqlparser::ast::{Expr, ObjectName, Query, SetExpr, Statement, Visit, Visitor};
use sqlparser::dialect::{Dialect, PostgreSqlDialect, SQLiteDialect};
use sqlparser::parser::Parser;
use std::collections::HashSet;
use std::ops::ControlFlow;

pub const NOT_READ_ONLY: &str = "sql_not_read_only";
pub const MULTIPLE_STATEMENTS: &str = "sql_multiple_statements";
pub const UNKNOWN_TABLE: &str = "sql_unknown_table";
pub const SYNTAX_ERROR: &str = "sql_syntax_error";

/// Function name prefixes and names that reach outside the datasets (files, server
/// settings, sequences, sleeping, extensions).
const DENIED_PREFIXES: [&str; 4] = ["pg_", "lo_", "dblink", "txid_"];
const DENIED_FUNCTIONS: [&str; 12] = [
    "set_config",
    "current_setting",
    "nextval",
    "setval",
    "query_to_xml",
    "table_to_xml",
    "database_to_xml",
    "cursor_to_xml",
    "load_extension",
    "readfile",
    "writefile",
    "randomblob",
];

/// Checks `sql` with the dialect of `backend` (`postgres` or `sqlite`); `datasets`
/// holds the registered table names.
pub fn check_sql(sql: &str, backend: &str, datasets: &HashSet<String>) -> Result<(), DataError> {
    let dialect: Box<dyn Dialect> = match backend {
        "postgres" => Box::new(PostgreSqlDialect {}),
        _ => Box::new(SQLiteDialect {}),
    };
    let statements = Parser::parse_sql(dialect.as_ref(), sql)
        .map_err(|e| DataError::sql(SYNTAX_ERROR, format!("sql cannot be parsed: {e}")))?;
    let statement = match statements.as_slice() {
        [] => return Err(DataError::sql(SYNTAX_ERROR, "sql is empty")),
        [one] => one,
        many => {
            let msg = format!("sql must be exactly one statement, got {}", many.len());
            return Err(DataError::sql(MULTIPLE_STATEMENTS, msg));
        }
    };
    if !matches!(statement, Statement::Query(_)) {
        let msg = "only read-only queries (SELECT, WITH, VALUES) may run";
        return Err(DataError::sql(NOT_READ_ONLY, msg));
    }

    let mut checker = Checker::default();
    if let ControlFlow::Break(e) = statement.visit(&mut checker) {
        return Err(e);
    }
    checker.unknown_table(datasets).map_or(Ok(()), Err)
}

#[derive(Default)]
struct Checker {
    relations: Vec<ObjectName>,
    ctes: HashSet<String>,
}

impl Checker {
    fn unknown_table(&self, datasets: &HashSet<String>) -> Option<DataError> {
        for relation in &self.relations {
            let parts: Vec<String> = relation
                .0
                .iter()
                .map(|p| {
                    p.as_ident()
                        .map_or_else(|| p.to_string(), |i| i.value.to_lowercase())
                })
                .collect();
            let known = match parts.as_slice() {
                [name] => datasets.contains(name) || self.ctes.contains(name),
                _ => false,
            };
            if !known {
                let msg = format!(
                    "table {relation} is not a registered dataset (known: {})",
                    sorted(datasets)
                );
                return Some(DataError::sql(UNKNOWN_TABLE, msg));
            }
        }
        None
    }
}

fn sorted(names: &HashSet<String>) -> String {
    let mut names: Vec<_> = names.iter().map(String::as_str).collect();
    names.sort_unstable();
    if names.is_empty() {
        "none".into()
    } else {
        names.join(", ")
    }
}

impl Visitor for Checker {
    type Break = DataError;

    fn pre_visit_statement(&mut self, statement: &Statement) -> ControlFlow<DataError> {
        if matches!(statement, Statement::Query(_)) {
            return ControlFlow::Continue(());
        }
        ControlFlow::Break(DataError::sql(NOT_READ_ONLY, "sql may not modify data"))
    }

    fn pre_visit_query(&mut self, query: &Query) -> ControlFlow<DataError> {
        if !query.locks.is_empty() {
            let msg = "locking clauses (FOR UPDATE / FOR SHARE) are not allowed";
            return ControlFlow::Break(DataError::sql(NOT_READ_ONLY, msg));
        }
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                self.ctes.insert(cte.alias.name.value.to_lowercase());
            }
        }
        self.check_set_expr(&query.body)
    }

    fn pre_visit_relation(&mut self, relation: &ObjectName) -> ControlFlow<DataError> {
        self.relations.push(relation.clone());
        ControlFlow::Continue(())
    }

    fn pre_visit_expr(&mut self, expr: &Expr) -> ControlFlow<DataError> {
        let Expr::Function(f) = expr else {
            return ControlFlow::Continue(());
        };
        let name = f
            .name
            .0
            .last()
            .map(|p| p.to_string().to_lowercase())
            .unwrap_or_default();
        let name = name.trim_matches('"');
        let denied =
            DENIED_FUNCTIONS.contains(&name) || DENIED_PREFIXES.iter().any(|p| name.starts_with(p));
        if denied {
            let msg = format!("function {name} is not allowed in dataset queries");
            return ControlFlow::Break(DataError::sql(NOT_READ_ONLY, msg));
        }
        ControlFlow::Continue(())
    }
}

impl Checker {
    fn check_set_expr(&mut self, body: &SetExpr) -> ControlFlow<DataError> {
        match body {
            SetExpr::Select(select) if select.into.is_some() => {
                let msg = "SELECT ... INTO creates a table and is not allowed";
                ControlFlow::Break(DataError::sql(NOT_READ_ONLY, msg))
            }
            SetExpr::SetOperation { left, right, .. } => {
                self.check_set_expr(left)?;
                self.check_set_expr(right)
            }
            SetExpr::Insert(_) | SetExpr::Update(_) | SetExpr::Delete(_) | SetExpr::Merge(_) => {
                ControlFlow::Break(DataError::sql(NOT_READ_ONLY, "sql may not modify data"))
            }
            SetExpr::Table(table) => {
                let name = table.table_name.clone().unwrap_or_default();
                let mut parts = Vec::new();
                if let Some(schema) = &table.schema_name {
                    parts.push(sqlparser::ast::Ident::new(schema));
                }
                parts.push(sqlparser::ast::Ident::new(name));
                self.relations.push(ObjectName::from(parts));
                ControlFlow::Continue(())
            }
            _ => ControlFlow::Continue(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn datasets() -> HashSet<String> {
        ["order_details".to_string(), "products".to_string()].into()
    }

    fn code(sql: &str, backend: &str) -> Option<&'static str> {
        match check_sql(sql, backend, &datasets()) {
            Ok(()) => None,
            Err(DataError::Sql { code, .. }) => Some(code),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn accepts_the_revenue_query_on_both_dialects() {
        let pg = "SELECT round(sum(unit_price*quantity*(1-discount))::numeric, 2) \
                  FROM order_details";
        assert_eq!(code(pg, "postgres"), None);
        let lite = "SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details";
        assert_eq!(code(lite, "sqlite"), None);
    }

    #[test]
    fn accepts_ctes_joins_unions_and_values() {
        let sql = "WITH big AS (SELECT * FROM order_details WHERE quantity > 10) \
                   SELECT p.product_id, count(*) FROM big JOIN products p USING (product_id) \
                   GROUP BY 1 UNION ALL SELECT 0, 0";
        assert_eq!(code(sql, "postgres"), None);
        assert_eq!(code("VALUES (1, 2)", "sqlite"), None);
        assert_eq!(code("select * from ORDER_DETAILS limit 3;", "sqlite"), None);
    }

    #[test]
    fn refuses_writes() {
        assert_eq!(
            code("DELETE FROM order_details", "postgres"),
            Some(NOT_READ_ONLY)
        );
        assert_eq!(
            code("DROP TABLE order_details", "sqlite"),
            Some(NOT_READ_ONLY)
        );
        assert_eq!(
            code("INSERT INTO products VALUES (1)", "postgres"),
            Some(NOT_READ_ONLY)
        );
        let into = "SELECT * INTO copy FROM order_details";
        assert_eq!(code(into, "postgres"), Some(NOT_READ_ONLY));
        let lock = "SELECT * FROM order_details FOR UPDATE";
        assert_eq!(code(lock, "postgres"), Some(NOT_READ_ONLY));
    }

    #[test]
    fn refuses_writes_inside_ctes() {
        let sql = "WITH gone AS (DELETE FROM order_details RETURNING *) SELECT * FROM gone";
        assert_eq!(code(sql, "postgres"), Some(NOT_READ_ONLY));
    }

    #[test]
    fn refuses_two_statements() {
        let sql = "SELECT 1 FROM products; DELETE FROM products";
        assert_eq!(code(sql, "postgres"), Some(MULTIPLE_STATEMENTS));
    }

    #[test]
    fn refuses_unknown_and_system_tables() {
        assert_eq!(
            code("SELECT * FROM api_keys", "postgres"),
            Some(UNKNOWN_TABLE)
        );
        assert_eq!(
            code("SELECT * FROM pg_catalog.pg_user", "postgres"),
            Some(UNKNOWN_TABLE)
        );
        assert_eq!(
            code("SELECT * FROM sqlite_master", "sqlite"),
            Some(UNKNOWN_TABLE)
        );
        let sub = "SELECT * FROM products WHERE product_id IN (SELECT id FROM secrets)";
        assert_eq!(code(sub, "postgres"), Some(UNKNOWN_TABLE));
    }

    #[test]
    fn refuses_dangerous_functions_and_garbage() {
        let sql = "SELECT pg_read_file('/etc/passwd')";
        assert_eq!(code(sql, "postgres"), Some(NOT_READ_ONLY));
        assert_eq!(
            code("SELECT pg_sleep(100)", "postgres"),
            Some(NOT_READ_ONLY)
        );
        assert_eq!(code("SELEC 1", "postgres"), Some(SYNTAX_ERROR));
        assert_eq!(code("  ", "sqlite"), Some(SYNTAX_ERROR));
    }
}
