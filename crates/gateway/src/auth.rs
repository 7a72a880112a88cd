//! API key authentication and scope checks, as axum extractors.

use crate::agents::{AgentName, CallContext};
use crate::app::{AppState, RequestId};
use crate::error::ApiError;
use agentmesh_state::{hash_secret, ApiKey};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use chrono::Utc;
use std::time::Duration;

/// How long a key found in the database stays in the hot cache.
const KEY_CACHE_TTL: Duration = Duration::from_secs(30);
/// `touch_key` is skipped when the key was used more recently than this.
const TOUCH_INTERVAL: chrono::TimeDelta = chrono::TimeDelta::seconds(60);
/// Header that shortens the request's deadline (milliseconds).
pub const TIMEOUT_HEADER: &str = "x-agentmesh-timeout-ms";

/// An authenticated request: the key and what calls on its behalf carry.
#[derive(Debug, Clone)]
pub struct Caller {
    pub key: ApiKey,
    pub request_id: String,
    pub traceparent: Option<String>,
    pub timeout: Duration,
}

impl Caller {
    /// 403 unless the key may call `agent`.
    pub fn require_agent(&self, agent: AgentName) -> Result<(), ApiError> {
        if self.key.allows_agent(agent.as_str()) {
            return Ok(());
        }
        Err(ApiError::forbidden(format!(
            "API key {} is not allowed to use agent {} (scopes: {})",
            self.key.prefix,
            agent.as_str(),
            self.key.scopes.join(", ")
        )))
    }

    pub fn call(&self) -> CallContext {
        CallContext {
            request_id: self.request_id.clone(),
            key_id: self.key.id.clone(),
            traceparent: self.traceparent.clone(),
            timeout: self.timeout,
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let timeout = request_timeout(&parts.headers, app.config.request_timeout)?;
        let secret = presented_secret(&parts.headers)?;
        let key = authenticate(app, secret).await?;
        tracing::Span::current().record("key_id", key.id.as_str());
        let request_id = parts
            .extensions
            .get::<RequestId>()
            .map(|id| id.0.clone())
            .unwrap_or_default();
        let traceparent = parts
            .headers
            .get("traceparent")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        Ok(Caller {
            key,
            request_id,
            traceparent,
            timeout,
        })
    }
}

/// A caller whose key has the `admin` scope.
pub struct Admin(pub Caller);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, app: &AppState) -> Result<Self, ApiError> {
        let caller = Caller::from_request_parts(parts, app).await?;
        if !caller.key.is_admin() {
            return Err(ApiError::forbidden(format!(
                "API key {} lacks the admin scope",
                caller.key.prefix
            )));
        }
        Ok(Admin(caller))
    }
}

/// The secret from `Authorization: Bearer …` or `api-key: …`.
fn presented_secret(headers: &HeaderMap) -> Result<&str, ApiError> {
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().map_err(|_| malformed())?.trim();
        let (scheme, secret) = value.split_once(' ').ok_or_else(malformed)?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return Err(malformed());
        }
        let secret = secret.trim();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    if let Some(value) = headers.get("api-key") {
        let secret = value.to_str().map_err(|_| malformed())?.trim();
        if !secret.is_empty() {
            return Ok(secret);
        }
    }
    Err(ApiError::unauthorized(
        "missing API key: send it as `Authorization: Bearer <key>`",
        "missing_api_key",
    ))
}

fn malformed() -> ApiError {
    ApiError::unauthorized(
        "malformed Authorization header: expected `Bearer <key>`",
        "invalid_authorization_header",
    )
}

/// Finds the key by the hash of its secret (hot cache first) and checks it is usable.
async fn authenticate(app: &AppState, secret: &str) -> Result<ApiKey, ApiError> {
    let hash = hash_secret(secret);
    let key = match app.state.hot.cached_key(&hash).await {
        Ok(Some(key)) => key,
        Ok(None) => load_key(app, &hash).await?,
        Err(error) => {
            tracing::debug!(%error, "key cache lookup failed");
            load_key(app, &hash).await?
        }
    };
    app.remember_key_hash(&key.id, &hash);
    check_usable(&key)?;
    touch(app, &key);
    Ok(key)
}

async fn load_key(app: &AppState, hash: &str) -> Result<ApiKey, ApiError> {
    let found = app.state.db.find_key_by_hash(hash).await.map_err(|error| {
        tracing::warn!(%error, "key lookup failed");
        ApiError::unavailable(
            "cannot verify the API key right now: storage is unavailable",
            2,
        )
        .with_code("storage_unavailable")
    })?;
    let Some(key) = found else {
        return Err(ApiError::unauthorized(
            "unknown API key: it does not exist or was rotated",
            "invalid_api_key",
        ));
    };
    if let Err(error) = app.state.hot.cache_key(hash, &key, KEY_CACHE_TTL).await {
        tracing::debug!(%error, "key cache store failed");
    }
    Ok(key)
}

fn check_usable(key: &ApiKey) -> Result<(), ApiError> {
    if let Some(at) = key.revoked_at {
        return Err(ApiError::unauthorized(
            format!("API key {} was revoked at {}", key.prefix, at.to_rfc3339()),
            "revoked_api_key",
        ));
    }
    if let Some(at) = key.expires_at.filter(|at| *at <= Utc::now()) {
        return Err(ApiError::unauthorized(
            format!("API key {} expired at {}", key.prefix, at.to_rfc3339()),
            "expired_api_key",
        ));
    }
    Ok(())
}

/// Records the use in the background, at most once per `TOUCH_INTERVAL` per replica
/// (the cached key's `last_used_at` is as old as the cache entry, so it cannot tell);
/// a failure only costs a stale `last_used_at`.
fn touch(app: &AppState, key: &ApiKey) {
    let recent = key
        .last_used_at
        .is_some_and(|at| Utc::now() - at < TOUCH_INTERVAL);
    let interval = TOUCH_INTERVAL.to_std().unwrap_or(Duration::from_secs(60));
    if recent || !app.should_touch(&key.id, interval) {
        return;
    }
    let db = app.state.db.clone();
    let id = key.id.clone();
    tokio::spawn(async move {
        if let Err(error) = db.touch_key(&id).await {
            tracing::debug!(key_id = %id, %error, "touch key failed");
        }
    });
}

/// The configured timeout, shortened by `x-agentmesh-timeout-ms` when present.
pub fn request_timeout(headers: &HeaderMap, configured: Duration) -> Result<Duration, ApiError> {
    let Some(value) = headers.get(TIMEOUT_HEADER) else {
        return Ok(configured);
    };
    let millis = value
        .to_str()
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .filter(|ms| *ms > 0)
        .ok_or_else(|| {
            ApiError::new(
                StatusCode::BAD_REQUEST,
                format!("header {TIMEOUT_HEADER} must be a positive number of milliseconds"),
            )
            .with_param(TIMEOUT_HEADER)
        })?;
    Ok(Duration::from_millis(millis).min(configured))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(*name, value.parse().unwrap());
        }
        map
    }

    #[test]
    fn secret_from_bearer_or_api_key() {
        let bearer = headers(&[("authorization", "Bearer am-123")]);
        assert_eq!(presented_secret(&bearer).unwrap(), "am-123");
        let lower = headers(&[("authorization", "bearer  am-456 ")]);
        assert_eq!(presented_secret(&lower).unwrap(), "am-456");
        let api_key = headers(&[("api-key", "am-789")]);
        assert_eq!(presented_secret(&api_key).unwrap(), "am-789");
        let basic = headers(&[("authorization", "Basic abc")]);
        assert_eq!(
            presented_secret(&basic).unwrap_err().code.as_deref(),
            Some("invalid_authorization_header")
        );
        let none = presented_secret(&HeaderMap::new()).unwrap_err();
        assert_eq!(none.code.as_deref(), Some("missing_api_key"));
    }

    #[test]
    fn timeout_header_only_shortens() {
        let configured = Duration::from_secs(120);
        let short = headers(&[(TIMEOUT_HEADER, "1500")]);
        assert_eq!(
            request_timeout(&short, configured).unwrap(),
            Duration::from_millis(1500)
        );
        let long = headers(&[(TIMEOUT_HEADER, "999999999")]);
        assert_eq!(request_timeout(&long, configured).unwrap(), configured);
        let bad = headers(&[(TIMEOUT_HEADER, "soon")]);
        assert_eq!(request_timeout(&bad, configured).unwrap_err().status, 400);
    }
}
