//! Operations endpoints: liveness, readiness, metrics and the OpenAPI document.

use crate::agents::AgentName;
use crate::app::AppState;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Map, Value};
use std::time::Duration;

const PING_TIMEOUT: Duration = Duration::from_secs(2);

pub async fn health() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

/// 200 when the database and every agent answer; 503 with the reasons otherwise.
/// The hot store is reported but does not decide: the gateway serves without it.
pub async fn ready(State(app): State<AppState>) -> Response {
    if app.is_draining() {
        return not_ready(
            json!({"gateway": "draining"}),
            "the gateway is shutting down",
        );
    }
    let (database, hot, agents) = tokio::join!(
        ping(app.state.db.ping()),
        ping(app.state.hot.ping()),
        futures::future::join_all(AgentName::ALL.map(|agent| app.agents.health(agent))),
    );
    let mut checks = Map::new();
    let mut failed = Vec::new();
    let database_name = format!("database ({})", app.state.db.backend());
    record(
        &mut checks,
        &mut failed,
        "database",
        &database_name,
        database,
    );
    for (agent, result) in AgentName::ALL.iter().zip(agents) {
        record(
            &mut checks,
            &mut failed,
            agent.as_str(),
            agent.as_str(),
            result,
        );
    }
    let hot_status = match hot {
        Ok(()) => "ok".to_string(),
        Err(reason) => format!("degraded: {reason}"),
    };
    checks.insert("hot".into(), json!(hot_status));

    if failed.is_empty() {
        return Json(json!({"status": "ready", "checks": checks})).into_response();
    }
    not_ready(
        Value::Object(checks),
        &format!("not ready: {} unavailable", failed.join(", ")),
    )
}

async fn ping(
    call: impl std::future::Future<Output = agentmesh_state::Result<()>>,
) -> Result<(), String> {
    match tokio::time::timeout(PING_TIMEOUT, call).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(error)) => Err(error.to_string()),
        Err(_) => Err(format!("no answer within {PING_TIMEOUT:?}")),
    }
}

/// Records one check under `name`; a failure is listed as `label` in the message
/// (the database's label names its backend, so an operator sees `postgres`).
fn record(
    checks: &mut Map<String, Value>,
    failed: &mut Vec<String>,
    name: &str,
    label: &str,
    result: Result<(), String>,
) {
    match result {
        Ok(()) => checks.insert(name.into(), json!("ok")),
        Err(reason) => {
            failed.push(label.to_string());
            checks.insert(name.into(), json!(reason))
        }
    };
}

fn not_ready(checks: Value, message: &str) -> Response {
    let body = json!({
        "status": "not_ready",
        "checks": checks,
        "error": {"message": message, "type": "service_unavailable", "code": "not_ready",
                  "param": null},
    });
    let mut response = (StatusCode::SERVICE_UNAVAILABLE, Json(body)).into_response();
    response
        .headers_mut()
        .insert(header::RETRY_AFTER, header::HeaderValue::from(5u32));
    response
}

pub async fn metrics(State(app): State<AppState>) -> Response {
    let content_type = "text/plain; version=0.0.4; charset=utf-8";
    ([(header::CONTENT_TYPE, content_type)], app.metrics.render()).into_response()
}

pub async fn openapi() -> Json<Value> {
    Json(crate::openapi::document())
}
