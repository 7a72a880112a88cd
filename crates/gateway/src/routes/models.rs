//! `GET /v1/models`: one entry per agent, with the LLM model it reports.

use super::path_param;
use crate::agents::AgentName;
use crate::app::AppState;
use crate::auth::Caller;
use crate::chat::validate::model_agent;
use crate::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::Json;
use serde_json::{json, Value};

pub async fn list(State(app): State<AppState>, _caller: Caller) -> Json<Value> {
    let entries = AgentName::ALL.map(|agent| entry(&app, agent));
    let data = futures::future::join_all(entries).await;
    Json(json!({"object": "list", "data": data}))
}

pub async fn get_one(
    State(app): State<AppState>,
    _caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    let agent = model_agent(&path_param(path)?)?;
    Ok(Json(entry(&app, agent).await))
}

/// `llm_model` is null when the agent does not answer `Describe`.
async fn entry(app: &AppState, agent: AgentName) -> Value {
    let llm_model = app.agents.describe_model(agent).await;
    json!({
        "id": agent.as_str(),
        "object": "model",
        "created": app.started_at,
        "owned_by": "agentmesh",
        "llm_model": llm_model,
    })
}
