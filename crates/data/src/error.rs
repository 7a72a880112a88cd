//! The data agent's errors and how each reaches the client.

use agentmesh_agent_runtime::{invalid_argument, invalid_argument_code};
use tonic::Status;

/// Why a dataset or a query was refused; every variant is the client's to fix.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum DataError {
    /// The dataset name is not a usable table name.
    #[error("{0}")]
    BadName(String),
    /// The CSV file cannot be read as a table.
    #[error("{0}")]
    BadCsv(String),
    /// The PostgreSQL dump holds something other than table definitions and data.
    #[error("{0}")]
    BadDump(String),
    /// The SQL was refused before running; `code` is the OpenAI error code.
    #[error("{message}")]
    Sql { code: &'static str, message: String },
}

impl DataError {
    pub(crate) fn sql(code: &'static str, message: impl Into<String>) -> Self {
        Self::Sql {
            code,
            message: message.into(),
        }
    }

    pub fn to_status(&self) -> Status {
        match self {
            Self::BadName(m) => invalid_argument(m.clone(), Some("name")),
            Self::BadCsv(m) => invalid_argument(m.clone(), Some("csv")),
            Self::BadDump(m) => invalid_argument(m.clone(), Some("dump")),
            Self::Sql { code, message } => {
                invalid_argument_code(message.clone(), Some(code), Some("sql"))
            }
        }
    }
}
