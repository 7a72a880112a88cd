//! Admin routes: create, list, rotate and revoke API keys; usage summaries.

use super::path_param;
use crate::app::AppState;
use crate::auth::Admin;
use crate::body::{Fields, JsonObject};
use crate::error::ApiError;
use crate::keys::{generate_key, new_key_id};
use agentmesh_state::{hash_secret, ApiKey, NewApiKey};
use axum::extract::rejection::{PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};
use std::collections::HashMap;

const SCOPES: [&str; 4] = ["chat", "search", "data", "admin"];
const MAX_NAME_LEN: usize = 100;

pub async fn create_key(
    State(app): State<AppState>,
    Admin(admin): Admin,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let (secret, prefix) = generate_key();
    let mut new_key = parse_new_key(&body)?;
    new_key.secret_hash = hash_secret(&secret);
    new_key.prefix = prefix;
    let key = app.state.db.create_key(new_key).await?;
    tracing::info!(key_id = %key.id, by = %admin.key.id, scopes = ?key.scopes, "api key created");
    Ok((StatusCode::CREATED, Json(with_secret(&key, &secret))))
}

fn parse_new_key(body: &serde_json::Map<String, Value>) -> Result<NewApiKey, ApiError> {
    let fields = Fields::new(body);
    let name = fields.str("name")?.trim().to_string();
    if name.chars().count() > MAX_NAME_LEN {
        return Err(fields.invalid("name", format!("must be at most {MAX_NAME_LEN} characters")));
    }
    let limit = u64::from(u32::MAX);
    let budget = fields.opt_f64("budget_usd")?;
    if budget.is_some_and(|b| !b.is_finite() || b < 0.0) {
        return Err(fields.invalid("budget_usd", "must be a number of dollars, zero or more"));
    }
    Ok(NewApiKey {
        id: new_key_id(),
        name,
        prefix: String::new(),
        secret_hash: String::new(),
        scopes: scopes(&fields)?,
        rpm_limit: fields
            .opt_int("rpm_limit", 1, limit)?
            .and_then(|v| u32::try_from(v).ok()),
        tpm_limit: fields
            .opt_int("tpm_limit", 1, limit)?
            .and_then(|v| u32::try_from(v).ok()),
        budget_usd: budget,
        expires_at: expires_at(&fields)?,
    })
}

fn scopes(fields: &Fields<'_>) -> Result<Vec<String>, ApiError> {
    let mut scopes: Vec<String> = Vec::new();
    for (i, scope) in fields
        .opt_strings("scopes")?
        .unwrap_or_default()
        .into_iter()
        .enumerate()
    {
        if !SCOPES.contains(&scope.as_str()) {
            return Err(fields.invalid(
                &format!("scopes[{i}]"),
                format!("must be one of chat, search, data, admin; got {scope:?}"),
            ));
        }
        if !scopes.contains(&scope) {
            scopes.push(scope);
        }
    }
    Ok(scopes)
}

fn expires_at(fields: &Fields<'_>) -> Result<Option<DateTime<Utc>>, ApiError> {
    let Some(text) = fields.opt_str("expires_at")? else {
        return Ok(None);
    };
    let at = DateTime::parse_from_rfc3339(text.trim())
        .map_err(|e| fields.invalid("expires_at", format!("must be an RFC 3339 time: {e}")))?
        .with_timezone(&Utc);
    if at <= Utc::now() {
        return Err(fields.invalid("expires_at", "must be in the future"));
    }
    Ok(Some(at))
}

fn key_json(key: &ApiKey) -> Value {
    json!({
        "id": key.id,
        "object": "api_key",
        "name": key.name,
        "prefix": key.prefix,
        "scopes": key.scopes,
        "rpm_limit": key.rpm_limit,
        "tpm_limit": key.tpm_limit,
        "budget_usd": key.budget_usd,
        "spent_usd": key.spent_usd,
        "expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "created_at": key.created_at,
        "last_used_at": key.last_used_at,
    })
}

fn with_secret(key: &ApiKey, secret: &str) -> Value {
    let mut value = key_json(key);
    value["key"] = json!(secret);
    value
}

pub async fn list_keys(
    State(app): State<AppState>,
    _admin: Admin,
) -> Result<Json<Value>, ApiError> {
    let keys = app.state.db.list_keys().await?;
    let data: Vec<Value> = keys.iter().map(key_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

pub async fn rotate_key(
    State(app): State<AppState>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(path)?;
    let (secret, prefix) = generate_key();
    let key = app
        .state
        .db
        .rotate_key(&id, &hash_secret(&secret), &prefix)
        .await
        .map_err(|e| key_error(e, &id))?;
    invalidate(&app, &id).await;
    tracing::info!(key_id = %id, by = %admin.key.id, "api key rotated");
    Ok(Json(with_secret(&key, &secret)))
}

pub async fn revoke_key(
    State(app): State<AppState>,
    Admin(admin): Admin,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(path)?;
    let key = app
        .state
        .db
        .revoke_key(&id)
        .await
        .map_err(|e| key_error(e, &id))?;
    invalidate(&app, &id).await;
    tracing::info!(key_id = %id, by = %admin.key.id, "api key revoked");
    Ok(Json(key_json(&key)))
}

fn key_error(error: agentmesh_state::StateError, id: &str) -> ApiError {
    match error {
        agentmesh_state::StateError::NotFound(_) => {
            ApiError::not_found(format!("API key `{id}` not found")).with_code("key_not_found")
        }
        other => ApiError::from_state(other),
    }
}

/// Drops every cached entry of the key, whatever secret it was cached under, in this replica
/// and the others, so that the change applies at once everywhere.
async fn invalidate(app: &AppState, key_id: &str) {
    app.forget_key_hash(key_id);
    if let Err(error) = app.state.hot.invalidate_key_id(key_id).await {
        tracing::warn!(key_id, %error, "key cache invalidation failed");
    }
}

pub async fn usage(
    State(app): State<AppState>,
    _admin: Admin,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(params) = query.map_err(|r| ApiError::bad_request(r.body_text(), None))?;
    let key_id = params
        .get("key_id")
        .map(String::as_str)
        .filter(|id| !id.is_empty());
    let rows = app.state.db.usage_summary(key_id).await?;
    let data = serde_json::to_value(&rows)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(json!({"object": "list", "data": data})))
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn parse(value: Value) -> Result<NewApiKey, ApiError> {
        match value {
            Value::Object(map) => parse_new_key(&map),
            _ => panic!("not an object"),
        }
    }

    #[test]
    fn scopes_and_limits_are_checked() {
        let key = parse(json!({"name": "ci", "scopes": ["chat", "chat", "data"], "rpm_limit": 5}))
            .unwrap();
        assert_eq!(key.scopes, vec!["chat", "data"]);
        assert_eq!(key.rpm_limit, Some(5));
        let bad = parse(json!({"name": "ci", "scopes": ["root"]})).unwrap_err();
        assert_eq!(bad.param.as_deref(), Some("scopes[0]"));
        let past = parse(json!({"name": "ci", "expires_at": "2001-01-01T00:00:00Z"})).unwrap_err();
        assert_eq!(past.param.as_deref(), Some("expires_at"));
        let budget = parse(json!({"name": "ci", "budget_usd": -1})).unwrap_err();
        assert_eq!(budget.param.as_deref(), Some("budget_usd"));
        assert_eq!(parse(json!({})).unwrap_err().param.as_deref(), Some("name"));
    }
}
