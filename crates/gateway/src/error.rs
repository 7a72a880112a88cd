//! The gateway's one error type and its OpenAI-shaped HTTP rendering.

use agentmesh_state::StateError;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

/// Seconds a client should wait after a 503 when nobody said otherwise.
const DEFAULT_RETRY_AFTER: u64 = 1;

/// An error answered to a client as `{"error": {"message", "type", "code", "param"}}`.
/// Boxed, so that `Result<_, ApiError>` stays one pointer wide on the happy path.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}: {}", .0.status, .0.message)]
pub struct ApiError(Box<ErrorParts>);

/// The parts of an [`ApiError`], reachable through `Deref`.
#[derive(Debug, Clone)]
pub struct ErrorParts {
    pub status: StatusCode,
    pub message: String,
    pub kind: String,
    pub code: Option<String>,
    pub param: Option<String>,
    pub retry_after: Option<u64>,
    pub headers: Vec<(HeaderName, HeaderValue)>,
}

impl std::ops::Deref for ApiError {
    type Target = ErrorParts;

    fn deref(&self) -> &ErrorParts {
        &self.0
    }
}

impl std::ops::DerefMut for ApiError {
    fn deref_mut(&mut self) -> &mut ErrorParts {
        &mut self.0
    }
}

impl ApiError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> Self {
        Self(Box::new(ErrorParts {
            status,
            message: message.into(),
            kind: default_type(status).to_string(),
            code: None,
            param: None,
            retry_after: None,
            headers: Vec::new(),
        }))
    }

    /// 400 naming the offending field.
    pub fn bad_request(message: impl Into<String>, param: Option<&str>) -> Self {
        let mut error = Self::new(StatusCode::BAD_REQUEST, message);
        error.param = param.map(str::to_string);
        error
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::new(StatusCode::NOT_FOUND, message).with_code("not_found")
    }

    pub fn unauthorized(message: impl Into<String>, code: &str) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message).with_code(code)
    }

    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message).with_code("insufficient_scope")
    }

    pub fn unavailable(message: impl Into<String>, retry_after: u64) -> Self {
        let mut error = Self::new(StatusCode::SERVICE_UNAVAILABLE, message);
        error.retry_after = Some(retry_after);
        error
    }

    pub fn with_code(mut self, code: &str) -> Self {
        self.code = Some(code.to_string());
        self
    }

    pub fn with_type(mut self, kind: &str) -> Self {
        self.kind = kind.to_string();
        self
    }

    pub fn with_param(mut self, param: &str) -> Self {
        self.param = Some(param.to_string());
        self
    }

    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers.push((name, value));
        self
    }

    /// The `{"error": {...}}` body, also used as the last SSE event of a failed stream.
    pub fn body(&self) -> Value {
        json!({
            "error": {
                "message": self.message,
                "type": self.kind,
                "code": self.code,
                "param": self.param,
            }
        })
    }

    /// Maps a storage failure; `what` names the missing thing for NotFound.
    pub fn from_state(error: StateError) -> Self {
        match error {
            StateError::Unavailable { backend, .. } => {
                tracing::warn!(backend, error = %error, "storage unavailable");
                Self::unavailable(format!("{backend} is unavailable, retry shortly"), 2)
                    .with_code("storage_unavailable")
            }
            StateError::NotFound(what) => Self::not_found(format!("not found: {what}")),
            StateError::Conflict(what) => {
                Self::new(StatusCode::CONFLICT, what).with_code("conflict")
            }
            StateError::Invalid(message) => Self::bad_request(message, None),
            StateError::Timeout(limit) => Self::new(
                StatusCode::GATEWAY_TIMEOUT,
                format!("storage query timed out after {limit:?}"),
            ),
            StateError::Internal(message) => {
                tracing::error!(error = %message, "storage internal error");
                Self::new(StatusCode::INTERNAL_SERVER_ERROR, "internal storage error")
            }
        }
    }
}

impl From<StateError> for ApiError {
    fn from(error: StateError) -> Self {
        Self::from_state(error)
    }
}

/// The OpenAI error `type` that goes with a status when nobody chose one.
pub fn default_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        429 => "rate_limit_error",
        499 => "cancelled",
        502 => "upstream_error",
        503 => "service_unavailable",
        504 => "timeout_error",
        400..=498 => "invalid_request_error",
        _ => "api_error",
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = self.body();
        let parts = *self.0;
        let mut response = (parts.status, axum::Json(body)).into_response();
        let headers = response.headers_mut();
        let retry_after = match parts.retry_after {
            Some(seconds) => Some(seconds),
            None if parts.status == StatusCode::SERVICE_UNAVAILABLE => Some(DEFAULT_RETRY_AFTER),
            None => None,
        };
        if let Some(seconds) = retry_after {
            headers.insert(http::header::RETRY_AFTER, HeaderValue::from(seconds.max(1)));
        }
        for (name, value) in parts.headers {
            headers.insert(name, value);
        }
        response
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn body_has_openai_shape() {
        let error = ApiError::bad_request("messages must not be empty", Some("messages"));
        let body = error.body();
        assert_eq!(body["error"]["type"], "invalid_request_error");
        assert_eq!(body["error"]["param"], "messages");
        assert!(body["error"]["code"].is_null());
    }

    #[test]
    fn unavailable_storage_is_503_with_retry_after() {
        let error = ApiError::from_state(StateError::Unavailable {
            backend: "postgres",
            message: "connection refused".into(),
        });
        let response = error.into_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(response.headers()[http::header::RETRY_AFTER], "2");
    }
}
