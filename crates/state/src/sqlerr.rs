//! Mapping sqlx errors to [`StateError`] in terms a caller can act on.

use crate::StateError;
use std::time::Duration;

/// Errors of agentmesh's own statements: outages are `Unavailable`, unique
/// violations `Conflict`, anything else `Internal`.
pub(crate) fn map(backend: &'static str) -> impl Fn(sqlx::Error) -> StateError {
    move |err| classify(backend, err)
}

pub(crate) fn classify(backend: &'static str, err: sqlx::Error) -> StateError {
    match err {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => StateError::Unavailable {
            backend,
            message: err.to_string(),
        },
        sqlx::Error::Database(db) if db.is_unique_violation() => {
            StateError::Conflict(db.message().to_owned())
        }
        sqlx::Error::Database(db) if is_busy(backend, db.code().as_deref()) => {
            StateError::Unavailable {
                backend,
                message: db.message().to_owned(),
            }
        }
        other => StateError::Internal(format!("{backend}: {other}")),
    }
}

/// Errors of a user's dataset query: a database's complaint about the SQL is
/// `Invalid` with its own message, a cancelled statement is `Timeout`.
pub(crate) fn classify_query(
    backend: &'static str,
    timeout: Duration,
    err: sqlx::Error,
) -> StateError {
    match err {
        sqlx::Error::Database(db) => match db.code().as_deref() {
            // Postgres query_canceled (statement_timeout); SQLite SQLITE_INTERRUPT.
            Some("57014") | Some("9") => StateError::Timeout(timeout),
            code if is_busy(backend, code) => StateError::Unavailable {
                backend,
                message: db.message().to_owned(),
            },
            _ => StateError::Invalid(db.message().to_owned()),
        },
        sqlx::Error::ColumnDecode { .. } | sqlx::Error::Decode(_) => {
            StateError::Invalid(err.to_string())
        }
        other => classify(backend, other),
    }
}

/// SQLite BUSY / LOCKED (all extended codes) and Postgres connection classes.
fn is_busy(backend: &str, code: Option<&str>) -> bool {
    let Some(code) = code else { return false };
    if backend == "sqlite" {
        return code.parse::<i32>().is_ok_and(|c| matches!(c & 0xff, 5 | 6));
    }
    code.starts_with("08") || code == "57P01" || code == "57P03"
}
