//! Maps errors to `tonic::Status` with the metadata the gateway turns into HTTP errors.

use agentmesh_llm::LlmError;
use agentmesh_state::StateError;
use tonic::metadata::{MetadataMap, MetadataValue};
use tonic::{Code, Status};

const HTTP_STATUS: &str = "x-agentmesh-http-status";
const ERROR_TYPE: &str = "x-agentmesh-error-type";
const ERROR_CODE: &str = "x-agentmesh-error-code";
const ERROR_PARAM: &str = "x-agentmesh-error-param";
const RETRY_AFTER: &str = "retry-after";

/// The parts of an OpenAI-shaped error that travel as gRPC metadata.
#[derive(Debug, Default)]
struct ErrorMeta<'a> {
    http: Option<u16>,
    kind: Option<&'a str>,
    code: Option<&'a str>,
    param: Option<&'a str>,
    retry_after_secs: Option<u64>,
}

fn build(code: Code, message: String, meta: ErrorMeta<'_>) -> Status {
    let mut map = MetadataMap::new();
    let http = meta.http.map(|h| h.to_string());
    let retry = meta.retry_after_secs.map(|s| s.to_string());
    let pairs = [
        (HTTP_STATUS, http.as_deref()),
        (ERROR_TYPE, meta.kind),
        (ERROR_CODE, meta.code),
        (ERROR_PARAM, meta.param),
        (RETRY_AFTER, retry.as_deref()),
    ];
    for (key, value) in pairs {
        let Some(value) = value else { continue };
        if let Ok(value) = MetadataValue::try_from(value) {
            map.insert(key, value);
        }
    }
    Status::with_metadata(code, message, map)
}

/// A client mistake (400) naming the offending field when there is one.
pub fn invalid_argument(message: impl Into<String>, param: Option<&str>) -> Status {
    invalid_argument_code(message, None, param)
}

/// A client mistake (400) with a machine-readable error code, e.g. `sql_not_read_only`.
pub fn invalid_argument_code(
    message: impl Into<String>,
    code: Option<&str>,
    param: Option<&str>,
) -> Status {
    let meta = ErrorMeta {
        http: Some(400),
        kind: Some("invalid_request_error"),
        code,
        param,
        ..ErrorMeta::default()
    };
    build(Code::InvalidArgument, message.into(), meta)
}

/// An LLM failure: the status the LLM client chose, `provider_<kind>` as the error code.
pub fn status_from_llm(e: &LlmError) -> Status {
    let (code, http, kind) = match e.http_status() {
        400 => (Code::InvalidArgument, 400, "invalid_request_error"),
        429 => (Code::ResourceExhausted, 429, "rate_limit_error"),
        503 => (Code::Unavailable, 503, "service_unavailable"),
        408 | 504 => (Code::DeadlineExceeded, 504, "timeout_error"),
        _ => (Code::Internal, 502, "upstream_error"),
    };
    let error_code = match e.kind() {
        "auth" => "provider_auth_failed".to_string(),
        other => format!("provider_{other}"),
    };
    let retry_after_secs = e.retry_after().map(|d| d.as_secs().max(1));
    let meta = ErrorMeta {
        http: Some(http),
        kind: Some(kind),
        code: Some(&error_code),
        retry_after_secs,
        ..ErrorMeta::default()
    };
    build(code, e.to_string(), meta)
}

/// A storage failure: outages are 503 with a retry hint, bad input 400, timeouts 504.
pub fn status_from_state(e: &StateError) -> Status {
    let message = e.to_string();
    match e {
        StateError::Unavailable { .. } => {
            let meta = ErrorMeta {
                http: Some(503),
                kind: Some("service_unavailable"),
                code: Some("database_unavailable"),
                retry_after_secs: Some(5),
                ..ErrorMeta::default()
            };
            build(Code::Unavailable, message, meta)
        }
        StateError::NotFound(_) => {
            let meta = ErrorMeta {
                http: Some(404),
                kind: Some("not_found_error"),
                ..ErrorMeta::default()
            };
            build(Code::NotFound, message, meta)
        }
        StateError::Conflict(_) => {
            let meta = ErrorMeta {
                http: Some(409),
                kind: Some("invalid_request_error"),
                code: Some("conflict"),
                ..ErrorMeta::default()
            };
            build(Code::AlreadyExists, message, meta)
        }
        StateError::Invalid(_) => invalid_argument(message, None),
        StateError::Timeout(_) => {
            let meta = ErrorMeta {
                http: Some(504),
                kind: Some("timeout_error"),
                code: Some("query_timeout"),
                ..ErrorMeta::default()
            };
            build(Code::DeadlineExceeded, message, meta)
        }
        StateError::Internal(_) => {
            let meta = ErrorMeta {
                kind: Some("api_error"),
                ..ErrorMeta::default()
            };
            build(Code::Internal, message, meta)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(status: &Status, key: &str) -> Option<String> {
        status
            .metadata()
            .get(key)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    }

    #[test]
    fn invalid_argument_carries_param_and_code() {
        let status = invalid_argument_code("only SELECT", Some("sql_not_read_only"), Some("sql"));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "only SELECT");
        assert_eq!(meta(&status, HTTP_STATUS).as_deref(), Some("400"));
        assert_eq!(
            meta(&status, ERROR_TYPE).as_deref(),
            Some("invalid_request_error")
        );
        assert_eq!(
            meta(&status, ERROR_CODE).as_deref(),
            Some("sql_not_read_only")
        );
        assert_eq!(meta(&status, ERROR_PARAM).as_deref(), Some("sql"));
    }

    #[test]
    fn provider_key_rejection_is_502_naming_the_provider() {
        let e = LlmError::Auth {
            provider: "openai".into(),
            status: 401,
        };
        let status = status_from_llm(&e);
        assert_eq!(meta(&status, HTTP_STATUS).as_deref(), Some("502"));
        assert_eq!(
            meta(&status, ERROR_CODE).as_deref(),
            Some("provider_auth_failed")
        );
        assert!(status.message().contains("openai"));
    }

    #[test]
    fn provider_timeout_is_504() {
        let e = LlmError::Timeout {
            provider: "p".into(),
            what: "first token",
            limit: std::time::Duration::from_secs(3),
        };
        let status = status_from_llm(&e);
        assert_eq!(status.code(), Code::DeadlineExceeded);
        assert_eq!(meta(&status, HTTP_STATUS).as_deref(), Some("504"));
    }

    #[test]
    fn database_outage_is_503_with_retry_after() {
        let e = StateError::Unavailable {
            backend: "postgres",
            message: "refused".into(),
        };
        let status = status_from_state(&e);
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(meta(&status, HTTP_STATUS).as_deref(), Some("503"));
        assert_eq!(meta(&status, RETRY_AFTER).as_deref(), Some("5"));
    }

    #[test]
    fn state_not_found_and_invalid_map_to_client_errors() {
        let status = status_from_state(&StateError::NotFound("doc x".into()));
        assert_eq!(meta(&status, HTTP_STATUS).as_deref(), Some("404"));
        let status = status_from_state(&StateError::Invalid("bad name".into()));
        assert_eq!(status.code(), Code::InvalidArgument);
        assert_eq!(status.message(), "bad name");
    }
}
