//! Documents and passage search, served by the search agent.

use super::{path_param, unary};
use crate::agents::AgentName;
use crate::app::AppState;
use crate::auth::Caller;
use crate::body::{Fields, JsonObject};
use crate::error::ApiError;
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::{
    DeleteDocumentRequest, Document, IngestRequest, ListDocumentsRequest, SearchQueryRequest,
};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

const MAX_TOP_K: u64 = 50;
const DEFAULT_TOP_K: u32 = 5;

pub async fn ingest(
    State(app): State<AppState>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    caller.require_agent(AgentName::Search)?;
    let fields = Fields::new(&body);
    let request = IngestRequest {
        id: fields.opt_str("id")?.unwrap_or_default().trim().to_string(),
        title: fields.str("title")?.to_string(),
        text: fields.str("text")?.to_string(),
        source: fields.opt_str("source")?.unwrap_or_default().to_string(),
        metadata_json: fields
            .opt_object("metadata")?
            .map(|m| Value::Object(m.clone()).to_string())
            .unwrap_or_default(),
    };
    let stored = unary(
        &app,
        AgentName::Search,
        caller.call(),
        request,
        |ch, req| async { SearchClient::new(ch).ingest(req).await },
    )
    .await?;
    let status = if stored.replaced {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    let body = json!({"id": stored.id, "chunks": stored.chunks, "replaced": stored.replaced});
    Ok((status, Json(body)))
}

pub async fn list(State(app): State<AppState>, caller: Caller) -> Result<Json<Value>, ApiError> {
    caller.require_agent(AgentName::Search)?;
    let message = ListDocumentsRequest {};
    let listed = unary(
        &app,
        AgentName::Search,
        caller.call(),
        message,
        |ch, req| async { SearchClient::new(ch).list(req).await },
    )
    .await?;
    let data: Vec<Value> = listed.documents.iter().map(document_json).collect();
    Ok(Json(json!({"object": "list", "data": data})))
}

fn document_json(doc: &Document) -> Value {
    let metadata = serde_json::from_str::<Value>(&doc.metadata_json).unwrap_or_else(|_| json!({}));
    json!({
        "id": doc.id,
        "title": doc.title,
        "source": doc.source,
        "chunks": doc.chunks,
        "metadata": metadata,
        "created_at": doc.created_at,
    })
}

pub async fn remove(
    State(app): State<AppState>,
    caller: Caller,
    path: Result<Path<String>, PathRejection>,
) -> Result<Json<Value>, ApiError> {
    caller.require_agent(AgentName::Search)?;
    let id = path_param(path)?;
    let message = DeleteDocumentRequest { id: id.clone() };
    let deleted = unary(
        &app,
        AgentName::Search,
        caller.call(),
        message,
        |ch, req| async { SearchClient::new(ch).delete(req).await },
    )
    .await?;
    if !deleted.deleted {
        return Err(ApiError::not_found(format!("document `{id}` not found"))
            .with_code("document_not_found"));
    }
    Ok(Json(json!({"id": id, "deleted": true})))
}

pub async fn search(
    State(app): State<AppState>,
    caller: Caller,
    JsonObject(body): JsonObject,
) -> Result<Json<Value>, ApiError> {
    caller.require_agent(AgentName::Search)?;
    let fields = Fields::new(&body);
    let query = fields.str("query")?.to_string();
    let top_k = fields.opt_int("top_k", 1, MAX_TOP_K)?;
    let top_k = top_k
        .and_then(|k| u32::try_from(k).ok())
        .unwrap_or(DEFAULT_TOP_K);
    let message = SearchQueryRequest { query, top_k };
    let found = unary(
        &app,
        AgentName::Search,
        caller.call(),
        message,
        |ch, req| async { SearchClient::new(ch).query(req).await },
    )
    .await?;
    let results: Vec<Value> = found
        .results
        .iter()
        .map(|p| {
            json!({"document_id": p.document_id, "title": p.title, "source": p.source,
                   "heading": p.heading, "text": p.text, "score": p.score})
        })
        .collect();
    Ok(Json(json!({"results": results})))
}
