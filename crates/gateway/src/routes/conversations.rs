//! Conversations stored by the chat agent, read and deleted straight from the database.
//!
//! A key sees only the conversations it created; admin keys see all of them.

use super::path_param;
use crate::agents::AgentName;
use crate::app::AppState;
use crate::auth::Caller;
use crate::error::ApiError;
use agentmesh_state::Conversation;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

pub async fn get_one(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let conversation = load(&app, &caller, &path_param(path)?).await?;
    let value = serde_json::to_value(&conversation)
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()))?;
    Ok(Json(value))
}

pub async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = path_param(path)?;
    load(&app, &caller, &id).await?;
    if !app.state.db.delete_conversation(&id).await? {
        return Err(not_found(&id));
    }
    Ok(Json(json!({"id": id, "deleted": true})))
}

async fn load(app: &AppState, caller: &Caller, id: &str) -> Result<Conversation, ApiError> {
    caller.require_agent(AgentName::Chat)?;
    let conversation = app.state.db.load_conversation(id).await?;
    match conversation {
        Some(c) if caller.key.is_admin() || c.key_id == caller.key.id => Ok(c),
        _ => Err(not_found(id)),
    }
}

fn not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("conversation `{id}` not found"))
        .with_code("conversation_not_found")
}
