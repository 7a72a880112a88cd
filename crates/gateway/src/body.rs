//! Request body extraction and field checks that answer every mistake with a 400 naming it.

use crate::app::AppState;
use crate::error::ApiError;
use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use axum::http::{header, StatusCode};
use serde_json::{Map, Value};

/// A JSON object body. Wrong content type -> 415, too large -> 413, bad JSON -> 400.
pub struct JsonObject(pub Map<String, Value>);

impl FromRequest<AppState> for JsonObject {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &AppState) -> Result<Self, Self::Rejection> {
        if !is_json(req.headers().get(header::CONTENT_TYPE)) {
            return Err(ApiError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "Content-Type must be application/json",
            )
            .with_code("unsupported_media_type"));
        }
        let bytes = read_bytes(req, state).await?;
        parse_object(&bytes).map(JsonObject)
    }
}

/// True for `application/json` and `application/*+json`, with any parameters.
pub fn is_json(value: Option<&header::HeaderValue>) -> bool {
    let Some(value) = value.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    let mime = value
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    mime == "application/json" || (mime.starts_with("application/") && mime.ends_with("+json"))
}

/// Buffers the body within the configured limit.
pub async fn read_bytes(req: Request, state: &AppState) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state)
        .await
        .map_err(|rejection| from_rejection(rejection.status(), rejection.body_text(), state))
}

/// Turns one of axum's own rejections into the OpenAI shape.
pub fn from_rejection(status: StatusCode, text: String, state: &AppState) -> ApiError {
    if status == StatusCode::PAYLOAD_TOO_LARGE {
        let limit = state.config.max_body_bytes;
        return ApiError::new(
            status,
            format!("request body exceeds the limit of {limit} bytes"),
        )
        .with_code("body_too_large");
    }
    ApiError::new(status, text)
}

pub fn parse_object(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::bad_request(
            "request body is empty: expected a JSON object",
            None,
        ));
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(ApiError::bad_request(
            "request body must be a JSON object",
            None,
        )),
        Err(e) => Err(
            ApiError::bad_request(format!("request body is not valid JSON: {e}"), None)
                .with_code("invalid_json"),
        ),
    }
}

/// Typed access to an object's fields; `null` counts as absent.
pub struct Fields<'a> {
    map: &'a Map<String, Value>,
    /// Prefix for nested names (`messages[2].`), empty at the top level.
    prefix: String,
}

impl<'a> Fields<'a> {
    pub fn new(map: &'a Map<String, Value>) -> Self {
        Self {
            map,
            prefix: String::new(),
        }
    }

    pub fn nested(map: &'a Map<String, Value>, prefix: String) -> Self {
        Self { map, prefix }
    }

    pub fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    pub fn get(&self, field: &str) -> Option<&'a Value> {
        self.map.get(field).filter(|v| !v.is_null())
    }

    fn wrong_type(&self, field: &str, expected: &str) -> ApiError {
        let name = self.name(field);
        ApiError::bad_request(format!("`{name}` must be {expected}"), Some(&name))
    }

    pub fn missing(&self, field: &str) -> ApiError {
        let name = self.name(field);
        ApiError::bad_request(format!("missing required field `{name}`"), Some(&name))
    }

    pub fn invalid(&self, field: &str, message: impl std::fmt::Display) -> ApiError {
        let name = self.name(field);
        ApiError::bad_request(format!("`{name}` {message}"), Some(&name))
    }

    pub fn opt_str(&self, field: &str) -> Result<Option<&'a str>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.as_str())),
            Some(_) => Err(self.wrong_type(field, "a string")),
        }
    }

    /// A required string that is not blank.
    pub fn str(&self, field: &str) -> Result<&'a str, ApiError> {
        match self.opt_str(field)? {
            None => Err(self.missing(field)),
            Some(s) if s.trim().is_empty() => Err(self.invalid(field, "must not be empty")),
            Some(s) => Ok(s),
        }
    }

    pub fn opt_bool(&self, field: &str) -> Result<Option<bool>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(_) => Err(self.wrong_type(field, "a boolean")),
        }
    }

    pub fn opt_f64(&self, field: &str) -> Result<Option<f64>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Number(n)) => n
                .as_f64()
                .map(Some)
                .ok_or_else(|| self.wrong_type(field, "a number")),
            Some(_) => Err(self.wrong_type(field, "a number")),
        }
    }

    /// A number within `min..=max`.
    pub fn opt_range(&self, field: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
        let value = self.opt_f64(field)?;
        match value {
            Some(v) if !(min..=max).contains(&v) => {
                Err(self.invalid(field, format!("must be between {min} and {max}, got {v}")))
            }
            _ => Ok(value),
        }
    }

    /// A whole number within `min..=max`.
    pub fn opt_int(&self, field: &str, min: u64, max: u64) -> Result<Option<u64>, ApiError> {
        let Some(value) = self.get(field) else {
            return Ok(None);
        };
        let Some(number) = value
            .as_i64()
            .map(i128::from)
            .or(value.as_u64().map(i128::from))
        else {
            return Err(self.wrong_type(field, "an integer"));
        };
        if number < i128::from(min) || number > i128::from(max) {
            return Err(self.invalid(
                field,
                format!("must be between {min} and {max}, got {number}"),
            ));
        }
        Ok(u64::try_from(number).ok())
    }

    pub fn opt_object(&self, field: &str) -> Result<Option<&'a Map<String, Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(map)),
            Some(_) => Err(self.wrong_type(field, "an object")),
        }
    }

    pub fn opt_array(&self, field: &str) -> Result<Option<&'a Vec<Value>>, ApiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Array(items)) => Ok(Some(items)),
            Some(_) => Err(self.wrong_type(field, "an array")),
        }
    }

    /// An optional list of strings.
    pub fn opt_strings(&self, field: &str) -> Result<Option<Vec<String>>, ApiError> {
        let Some(items) = self.opt_array(field)? else {
            return Ok(None);
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                _ => Err(self.wrong_type(&format!("{field}[{i}]"), "a string")),
            })
            .collect::<Result<Vec<_>, _>>()
            .map(Some)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;
    use serde_json::json;

    fn object(value: Value) -> Map<String, Value> {
        match value {
            Value::Object(map) => map,
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn field_errors_name_the_field() {
        let map = object(json!({"name": 3, "n": 2.5, "t": 9, "empty": " "}));
        let fields = Fields::new(&map);
        assert_eq!(
            fields.str("name").unwrap_err().param.as_deref(),
            Some("name")
        );
        assert!(fields
            .str("missing")
            .unwrap_err()
            .message
            .contains("missing required"));
        assert!(fields
            .opt_int("n", 1, 1)
            .unwrap_err()
            .message
            .contains("integer"));
        assert!(fields
            .opt_range("t", 0.0, 2.0)
            .unwrap_err()
            .message
            .contains("between"));
        assert!(fields.str("empty").unwrap_err().message.contains("empty"));
    }

    #[test]
    fn parse_rejects_non_objects_and_bad_json() {
        assert!(parse_object(b"[1]").is_err());
        assert!(parse_object(b"{")
            .unwrap_err()
            .message
            .contains("not valid JSON"));
        assert!(parse_object(b"").unwrap_err().message.contains("empty"));
        assert!(parse_object(br#"{"a":1}"#).is_ok());
    }

    #[test]
    fn json_content_types() {
        let value = |s: &'static str| header::HeaderValue::from_static(s);
        assert!(is_json(Some(&value("application/json; charset=utf-8"))));
        assert!(is_json(Some(&value("application/merge-patch+json"))));
        assert!(!is_json(Some(&value("text/plain"))));
        assert!(!is_json(None));
    }
}
