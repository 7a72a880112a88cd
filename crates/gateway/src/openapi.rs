//! A hand-written OpenAPI 3.1 document: every route, its body, and every error it can
//! answer, with the headers that go with them.

use serde_json::{json, Map, Value};

/// Who may call a route and what stands between the caller and the agent.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// Chat completions: key, scope, rate limit and budget, agent call, deadline.
    Inference,
    /// Document and dataset routes: key, scope, agent call.
    Agent,
    /// Conversations: key, database.
    Stored,
    /// Admin keys only.
    Admin,
    /// No key.
    Ops,
}

struct Route {
    method: &'static str,
    path: &'static str,
    summary: &'static str,
    kind: Kind,
    /// Component schema of the JSON body, if the route takes one.
    body: Option<&'static str>,
    success: &'static str,
    /// Answers a 404 for a missing resource (beyond an unknown route).
    not_found: bool,
}

const fn route(method: &'static str, path: &'static str, summary: &'static str) -> Route {
    Route {
        method,
        path,
        summary,
        kind: Kind::Agent,
        body: None,
        success: "200",
        not_found: false,
    }
}

const fn kind(mut r: Route, kind: Kind) -> Route {
    r.kind = kind;
    r
}

const fn body(mut r: Route, schema: &'static str) -> Route {
    r.body = Some(schema);
    r
}

const fn created(mut r: Route) -> Route {
    r.success = "201";
    r
}

const fn may_miss(mut r: Route) -> Route {
    r.not_found = true;
    r
}

const ROUTES: &[Route] = &[
    may_miss(kind(
        body(
            route(
                "post",
                "/v1/chat/completions",
                "Chat completion; `model` names the agent",
            ),
            "ChatRequest",
        ),
        Kind::Inference,
    )),
    may_miss(kind(
        body(
            route(
                "post",
                "/agent/{agent}/chat",
                "Chat completion, agent chosen by path",
            ),
            "ChatRequest",
        ),
        Kind::Inference,
    )),
    route(
        "get",
        "/v1/models",
        "The agents, with the LLM model each uses",
    ),
    may_miss(route("get", "/v1/models/{id}", "One agent as a model")),
    created(body(
        route(
            "post",
            "/v1/documents",
            "Ingest a document (same id replaces it: 200)",
        ),
        "DocumentRequest",
    )),
    route("get", "/v1/documents", "List documents"),
    may_miss(route("delete", "/v1/documents/{id}", "Delete a document")),
    body(
        route("post", "/v1/search", "Ranked passages for a query (no LLM)"),
        "SearchRequest",
    ),
    created(body(
        route(
            "post",
            "/v1/datasets",
            "Upload a CSV dataset, or a PostgreSQL dump of tables (.sql; multipart, or JSON)",
        ),
        "DatasetRequest",
    )),
    route("get", "/v1/datasets", "List datasets"),
    may_miss(body(
        route(
            "post",
            "/v1/datasets/{name}/query",
            "Run read-only SQL (no LLM)",
        ),
        "QueryRequest",
    )),
    may_miss(kind(
        route("get", "/v1/conversations/{id}", "A stored conversation"),
        Kind::Stored,
    )),
    may_miss(kind(
        route("delete", "/v1/conversations/{id}", "Delete a conversation"),
        Kind::Stored,
    )),
    created(kind(
        body(
            route(
                "post",
                "/admin/keys",
                "Create an API key (the secret is shown once)",
            ),
            "KeyRequest",
        ),
        Kind::Admin,
    )),
    kind(
        route("get", "/admin/keys", "List API keys (never secrets)"),
        Kind::Admin,
    ),
    may_miss(kind(
        route("post", "/admin/keys/{id}/rotate", "Replace a key's secret"),
        Kind::Admin,
    )),
    may_miss(kind(
        route("delete", "/admin/keys/{id}", "Revoke a key"),
        Kind::Admin,
    )),
    kind(
        route("get", "/admin/usage", "Usage per key and day (?key_id=)"),
        Kind::Admin,
    ),
    kind(route("get", "/health", "Process alive"), Kind::Ops),
    kind(
        route(
            "get",
            "/ready",
            "Dependencies usable and not draining (503 otherwise)",
        ),
        Kind::Ops,
    ),
    kind(route("get", "/metrics", "Prometheus metrics"), Kind::Ops),
    kind(route("get", "/openapi.json", "This document"), Kind::Ops),
];

/// Every error status the gateway answers, and when.
const ERRORS: &[(&str, &str)] = &[
    (
        "400",
        "Bad body, parameter or header; `param` names the field",
    ),
    (
        "401",
        "Missing, unknown, expired or revoked API key; the message says which",
    ),
    (
        "403",
        "The key lacks the agent's scope, or is not an admin key",
    ),
    ("404", "Unknown route, model, agent or resource"),
    ("405", "Method not allowed on this route"),
    (
        "409",
        "A request with the same Idempotency-Key is still in progress",
    ),
    ("413", "Body over the size limit"),
    ("415", "Body is not JSON (or multipart where allowed)"),
    (
        "429",
        "Rate limit or budget exceeded; see Retry-After and x-ratelimit-*",
    ),
    (
        "502",
        "An LLM provider failed for good or refused our provider key; names it",
    ),
    (
        "503",
        "Agent overloaded (`agent_overloaded`) or a dependency down; see Retry-After",
    ),
    (
        "504",
        "The agent or its provider did not answer in time; names the limit",
    ),
];

fn errors_of(route: &Route) -> Vec<&'static str> {
    let mut codes = vec!["400", "404", "405"];
    if route.kind != Kind::Ops {
        codes.extend(["401", "403", "503"]);
    }
    if route.method == "post" {
        codes.extend(["413", "415"]);
    }
    match route.kind {
        Kind::Inference => codes.extend(["409", "429", "502", "504"]),
        Kind::Agent => codes.extend(["502", "504"]),
        Kind::Stored => codes.push("504"),
        Kind::Admin | Kind::Ops => {}
    }
    if route.path == "/ready" {
        codes.push("503");
    }
    codes.sort_unstable();
    codes.dedup();
    codes
}

fn error_response(code: &str) -> Value {
    let description = ERRORS
        .iter()
        .find(|(c, _)| *c == code)
        .map_or("Error", |(_, d)| *d);
    let mut headers = json!({"x-request-id": {"$ref": "#/components/headers/RequestId"}});
    if matches!(code, "429" | "503") {
        headers["Retry-After"] = json!({"$ref": "#/components/headers/RetryAfter"});
    }
    if code == "429" {
        for name in RATE_HEADERS {
            headers[name] = json!({"$ref": "#/components/headers/RateLimit"});
        }
    }
    json!({
        "description": description,
        "headers": headers,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    })
}

const RATE_HEADERS: [&str; 6] = [
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
    "x-ratelimit-limit-tokens",
    "x-ratelimit-remaining-tokens",
    "x-ratelimit-reset-tokens",
];

fn success_response(route: &Route) -> Value {
    let mut response = json!({
        "description": "Success",
        "headers": {"x-request-id": {"$ref": "#/components/headers/RequestId"}},
    });
    if route.kind == Kind::Inference {
        response["description"] = json!(
            "A chat.completion object, or with `stream: true` SSE chunks ending in \
             `data: [DONE]`; a failure after the stream started is a last event \
             `data: {\"error\": {...}}`"
        );
        response["content"] = json!({
            "application/json": {"schema": {"$ref": "#/components/schemas/ChatCompletion"}},
            "text/event-stream": {"schema": {"type": "string"}},
        });
        for name in RATE_HEADERS {
            response["headers"][name] = json!({"$ref": "#/components/headers/RateLimit"});
        }
    }
    response
}

fn parameters(route: &Route) -> Vec<Value> {
    let mut out: Vec<Value> = route
        .path
        .split('/')
        .filter_map(|part| part.strip_prefix('{')?.strip_suffix('}'))
        .map(|name| {
            json!({"name": name, "in": "path", "required": true,
                           "schema": {"type": "string"}})
        })
        .collect();
    if route.kind != Kind::Ops {
        out.push(json!({"$ref": "#/components/parameters/Timeout"}));
    }
    if route.kind == Kind::Inference {
        out.push(json!({"$ref": "#/components/parameters/IdempotencyKey"}));
    }
    out.push(json!({"$ref": "#/components/parameters/RequestId"}));
    out
}

fn operation(route: &Route) -> Value {
    let mut responses = Map::new();
    responses.insert(route.success.into(), success_response(route));
    for code in errors_of(route) {
        responses.insert(code.into(), error_response(code));
    }
    let mut operation = json!({
        "summary": route.summary,
        "parameters": parameters(route),
        "responses": responses,
    });
    if let Some(schema) = route.body {
        operation["requestBody"] = json!({"required": true, "content": {"application/json": {
            "schema": {"$ref": format!("#/components/schemas/{schema}")}}}});
    }
    if route.kind == Kind::Ops {
        operation["security"] = json!([]);
    }
    operation
}

pub fn document() -> Value {
    let mut paths = Map::new();
    for route in ROUTES {
        let entry = paths
            .entry(route.path.to_string())
            .or_insert_with(|| json!({}));
        entry[route.method] = operation(route);
    }
    json!({
        "openapi": "3.1.0",
        "info": {"title": "agentmesh gateway", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": components(),
    })
}

fn components() -> Value {
    json!({
        "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        "headers": {
            "RequestId": {"description": "Echoed from the request or generated",
                          "schema": {"type": "string"}},
            "RetryAfter": {"description": "Seconds to wait before retrying",
                           "schema": {"type": "integer"}},
            "RateLimit": {"description": "Limit, remaining or reset of the key's window",
                          "schema": {"type": "string"}},
        },
        "parameters": {
            "Timeout": {"name": "x-agentmesh-timeout-ms", "in": "header",
                        "description": "Shortens the request's deadline (milliseconds)",
                        "schema": {"type": "integer", "minimum": 1}},
            "IdempotencyKey": {"name": "Idempotency-Key", "in": "header",
                               "description": "A retried request returns the first result",
                               "schema": {"type": "string", "maxLength": 255}},
            "RequestId": {"name": "x-request-id", "in": "header",
                          "schema": {"type": "string", "maxLength": 128}},
        },
        "schemas": schemas(),
    })
}

fn schemas() -> Value {
    let string = json!({"type": "string"});
    json!({
        "Error": {"type": "object", "required": ["error"], "properties": {"error": {
            "type": "object",
            "required": ["message", "type", "code", "param"],
            "properties": {
                "message": string,
                "type": string,
                "code": {"type": ["string", "null"]},
                "param": {"type": ["string", "null"]},
            },
        }}},
        "ChatRequest": {"type": "object", "required": ["model", "messages"], "properties": {
            "model": {"type": "string", "enum": ["chat", "search", "data"]},
            "messages": {"type": "array", "minItems": 1, "items": {"type": "object",
                "required": ["role"], "properties": {
                    "role": {"enum": ["system", "user", "assistant", "tool"]},
                    "content": {"type": ["string", "null"]},
                    "tool_call_id": string, "name": string}}},
            "stream": {"type": "boolean"},
            "stream_options": {"type": "object",
                               "properties": {"include_usage": {"type": "boolean"}}},
            "temperature": {"type": "number"}, "top_p": {"type": "number"},
            "max_tokens": {"type": "integer"}, "stop": {},
            "conversation_id": string, "metadata": {"type": "object"},
        }},
        "ChatCompletion": {"type": "object", "properties": {
            "id": string, "object": {"const": "chat.completion"}, "model": string,
            "choices": {"type": "array"}, "usage": {"type": "object"},
            "conversation_id": string, "citations": {"type": "array"},
            "tool_events": {"type": "array"},
        }},
        "DocumentRequest": {"type": "object", "required": ["title", "text"], "properties": {
            "id": string, "title": string, "text": string, "source": string,
            "metadata": {"type": "object"}}},
        "SearchRequest": {"type": "object", "required": ["query"], "properties": {
            "query": string, "top_k": {"type": "integer", "minimum": 1, "maximum": 50}}},
        "DatasetRequest": {"oneOf": [
            {"type": "object", "required": ["name", "csv"], "properties": {
                "name": string, "csv": string}},
            {"type": "object", "required": ["dump"], "properties": {"dump": string}}]},
        "QueryRequest": {"type": "object", "required": ["sql"], "properties": {"sql": string}},
        "KeyRequest": {"type": "object", "required": ["name"], "properties": {
            "name": string,
            "scopes": {"type": "array",
                       "items": {"enum": ["chat", "search", "data", "admin"]}},
            "rpm_limit": {"type": "integer", "minimum": 1},
            "tpm_limit": {"type": "integer", "minimum": 1},
            "budget_usd": {"type": "number", "exclusiveMinimum": 0},
            "expires_at": {"type": "string", "format": "date-time"}}},
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    #[test]
    fn every_operation_lists_its_errors_with_headers() {
        let doc = document();
        let chat = &doc["paths"]["/v1/chat/completions"]["post"]["responses"];
        for code in [
            "200", "400", "401", "403", "404", "409", "413", "429", "502", "503", "504",
        ] {
            assert!(chat[code].is_object(), "chat completions lacks {code}");
        }
        assert!(chat["429"]["headers"]["Retry-After"].is_object());
        assert!(chat["429"]["headers"]["x-ratelimit-remaining-tokens"].is_object());
        assert!(chat["503"]["headers"]["Retry-After"].is_object());
        let health = &doc["paths"]["/health"]["get"];
        assert_eq!(health["security"], json!([]));
        assert!(health["responses"]["401"].is_null(), "no key, no 401");
        let created = &doc["paths"]["/admin/keys"]["post"]["responses"];
        assert!(created["201"].is_object());
    }

    #[test]
    fn every_documented_status_has_a_description() {
        for route in ROUTES {
            for code in errors_of(route) {
                assert!(ERRORS.iter().any(|(c, _)| *c == code), "{code}");
            }
        }
    }
}
