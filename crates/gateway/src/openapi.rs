//! A hand-written OpenAPI 3.1 document listing the gateway's routes.

use serde_json::{json, Map, Value};

/// (method, path, summary, needs a key)
const ROUTES: &[(&str, &str, &str, bool)] = &[
    (
        "post",
        "/v1/chat/completions",
        "Chat completion; `model` names the agent",
        true,
    ),
    (
        "post",
        "/agent/{agent}/chat",
        "Chat completion with the agent chosen by path",
        true,
    ),
    (
        "get",
        "/v1/models",
        "The agents, with the LLM model each uses",
        true,
    ),
    ("get", "/v1/models/{id}", "One agent as a model", true),
    (
        "post",
        "/v1/documents",
        "Ingest a document (same id replaces it)",
        true,
    ),
    ("get", "/v1/documents", "List documents", true),
    ("delete", "/v1/documents/{id}", "Delete a document", true),
    (
        "post",
        "/v1/search",
        "Ranked passages for a query (no LLM)",
        true,
    ),
    (
        "post",
        "/v1/datasets",
        "Upload a CSV dataset (multipart or JSON)",
        true,
    ),
    ("get", "/v1/datasets", "List datasets", true),
    (
        "post",
        "/v1/datasets/{name}/query",
        "Run read-only SQL (no LLM)",
        true,
    ),
    (
        "get",
        "/v1/conversations/{id}",
        "A stored conversation",
        true,
    ),
    (
        "delete",
        "/v1/conversations/{id}",
        "Delete a conversation",
        true,
    ),
    (
        "post",
        "/admin/keys",
        "Create an API key (the secret is shown once)",
        true,
    ),
    ("get", "/admin/keys", "List API keys (never secrets)", true),
    (
        "post",
        "/admin/keys/{id}/rotate",
        "Replace a key's secret",
        true,
    ),
    ("delete", "/admin/keys/{id}", "Revoke a key", true),
    (
        "get",
        "/admin/usage",
        "Usage per key and day (?key_id=)",
        true,
    ),
    ("get", "/health", "Process alive", false),
    (
        "get",
        "/ready",
        "Dependencies usable and not draining",
        false,
    ),
    ("get", "/metrics", "Prometheus metrics", false),
    ("get", "/openapi.json", "This document", false),
];

pub fn document() -> Value {
    let mut paths = Map::new();
    for (method, path, summary, secured) in ROUTES {
        let entry = paths.entry(path.to_string()).or_insert_with(|| json!({}));
        let mut operation = json!({
            "summary": summary,
            "responses": {
                "200": {"description": "Success"},
                "default": {"description": "Error", "content": {"application/json": {
                    "schema": {"$ref": "#/components/schemas/Error"}}}},
            },
        });
        if !secured {
            operation["security"] = json!([]);
        }
        entry[*method] = operation;
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "agentmesh gateway", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Error": {"type": "object", "properties": {"error": {
                "type": "object",
                "properties": {
                    "message": {"type": "string"},
                    "type": {"type": "string"},
                    "code": {"type": ["string", "null"]},
                    "param": {"type": ["string", "null"]},
                },
            }}}},
        },
    })
}
