//! The state layer's one error type.

/// What went wrong in storage, in terms a caller can map to a status.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The backend cannot be reached or timed out: callers answer 503.
    #[error("{backend} unavailable: {message}")]
    Unavailable {
        backend: &'static str,
        message: String,
    },
    #[error("not found: {0}")]
    NotFound(String),
    #[error("conflict: {0}")]
    Conflict(String),
    /// The caller's input cannot be stored or run (bad SQL, bad name): callers answer 400.
    #[error("{0}")]
    Invalid(String),
    /// A query ran past its statement timeout.
    #[error("query timed out after {0:?}")]
    Timeout(std::time::Duration),
    #[error("internal storage error: {0}")]
    Internal(String),
}
