//! The user flows every deployment shape must pass, written once.

use crate::helpers::{cli, python, repo_root, shared_data};
use serde_json::{json, Value};

/// Pages that answer "why was my pod OOMKilled".
const MEMORY_PAGES: &[&str] = &[
    "tasks__configure-pod-container__assign-memory-resource.md",
    "concepts__configuration__manage-resources-containers.md",
    "tasks__debug__debug-application__determine-reason-pod-failure.md",
    "concepts__scheduling-eviction__node-pressure-eviction.md",
];

pub struct Api {
    pub base: String,
    pub key: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str, key: &str) -> Self {
        Self {
            base: base.to_string(),
            key: key.to_string(),
            http: reqwest::Client::new(),
        }
    }

    pub async fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
        let mut request = self.http.request(method, format!("{}{path}", self.base));
        request = request.bearer_auth(&self.key);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("send");
        let status = response.status().as_u16();
        let text = response.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    pub async fn raw(&self, path: &str, content_type: &str, body: &'static [u8]) -> (u16, Value) {
        let response = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .body(body)
            .send()
            .await
            .expect("send");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }
}

/// Asserts the OpenAI error shape and returns the message.
pub fn error_message(body: &Value) -> String {
    let error = body
        .get("error")
        .unwrap_or_else(|| panic!("not an error body: {body}"));
    assert!(
        error.get("type").and_then(Value::as_str).is_some(),
        "no type: {body}"
    );
    assert!(
        error.get("code").is_some() && error.get("param").is_some(),
        "shape: {body}"
    );
    error["message"].as_str().expect("message").to_string()
}

pub fn load_corpus(api: &Api) {
    let docs = shared_data().join("k8s-docs");
    let out = cli(
        &api.base,
        &api.key,
        &["docs", "ingest", docs.to_str().expect("path")],
    );
    assert!(out.contains("60 documents stored, 0 failed"), "{out}");
    let northwind = shared_data().join("northwind");
    let out = cli(
        &api.base,
        &api.key,
        &["data", "load", northwind.to_str().expect("path")],
    );
    assert!(out.contains("12 datasets stored, 0 failed"), "{out}");
}

pub async fn search_ranks_memory_pages_first(api: &Api) {
    let body = json!({"query": "my pod was killed because it ran out of memory", "top_k": 5});
    let (status, found) = api.call("POST", "/v1/search", Some(body)).await;
    assert_eq!(status, 200, "{found}");
    let first = found["results"][0]["document_id"]
        .as_str()
        .expect("a result");
    assert!(
        MEMORY_PAGES.contains(&first),
        "first result {first}: {found}"
    );
    for field in ["document_id", "title", "source", "heading", "text", "score"] {
        assert!(
            found["results"][0].get(field).is_some(),
            "no {field}: {found}"
        );
    }

    let question = json!({"model": "search",
        "messages": [{"role": "user", "content": "Why was my container OOMKilled?"}]});
    let (status, answer) = api
        .call("POST", "/v1/chat/completions", Some(question))
        .await;
    assert_eq!(status, 200, "{answer}");
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(text.contains("Sources:"), "{text}");
    assert!(
        MEMORY_PAGES.iter().any(|p| text.contains(p)),
        "cites no memory page: {text}"
    );
}

pub async fn data_queries_are_exact_and_read_only(api: &Api, backend: &str) {
    let sql = revenue_sql(backend);
    let path = "/v1/datasets/order_details/query";
    let (status, result) = api.call("POST", path, Some(json!({"sql": sql}))).await;
    assert_eq!(status, 200, "{result}");
    assert_eq!(result["rows"][0][0].as_f64(), Some(1265793.04), "{result}");
    assert_eq!(result["row_count"], 1);
    assert_eq!(result["truncated"], false);

    for bad in [
        "DELETE FROM order_details",
        "SELECT 1; SELECT 2",
        "WITH x AS (DELETE FROM order_details RETURNING *) SELECT * FROM x",
    ] {
        let (status, body) = api.call("POST", path, Some(json!({"sql": bad}))).await;
        assert_eq!(status, 400, "{bad}: {body}");
        error_message(&body);
    }
    let count = json!({"sql": "SELECT count(*) FROM order_details"});
    let (_, rows) = api.call("POST", path, Some(count)).await;
    assert_eq!(rows["rows"][0][0], 2155, "rows changed: {rows}");

    let question = json!({"model": "data", "messages": [{"role": "user", "content": sql}]});
    let (status, answer) = api
        .call("POST", "/v1/chat/completions", Some(question))
        .await;
    assert_eq!(status, 200, "{answer}");
    let text = answer["choices"][0]["message"]["content"]
        .as_str()
        .expect("content");
    assert!(text.contains("1265793.04"), "{text}");
}

pub fn revenue_sql(backend: &str) -> &'static str {
    if backend == "postgres" {
        "SELECT round(sum(unit_price*quantity*(1-discount))::numeric, 2) FROM order_details"
    } else {
        "SELECT round(sum(unit_price*quantity*(1-discount)), 2) FROM order_details"
    }
}

pub async fn chat_remembers_and_streams(api: &Api) {
    let id = format!("e2e-{}", std::process::id());
    for content in ["My name is Ada.", "What is my name?"] {
        let body = json!({"model": "chat", "conversation_id": id,
            "messages": [{"role": "user", "content": content}]});
        let (status, answer) = api.call("POST", "/v1/chat/completions", Some(body)).await;
        assert_eq!(status, 200, "{answer}");
    }
    let (status, conversation) = api
        .call("GET", &format!("/v1/conversations/{id}"), None)
        .await;
    assert_eq!(status, 200, "{conversation}");
    let messages = conversation["messages"].as_array().expect("messages");
    assert_eq!(messages.len(), 4, "{conversation}");
    assert_eq!(messages[0]["content"], "My name is Ada.");
    assert_eq!(messages[1]["role"], "assistant");

    let body = json!({"model": "chat", "stream": true,
        "messages": [{"role": "user", "content": "stream please"}]});
    let response = api
        .http
        .post(format!("{}/agent/chat/chat", api.base))
        .bearer_auth(&api.key)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap_or("")
        .starts_with("text/event-stream"));
    let text = response.text().await.expect("body");
    assert!(text.contains("chat.completion.chunk"), "{text}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");

    let (status, _) = api
        .call("DELETE", &format!("/v1/conversations/{id}"), None)
        .await;
    assert_eq!(status, 200);
    let (status, body) = api
        .call("GET", &format!("/v1/conversations/{id}"), None)
        .await;
    assert_eq!(status, 404, "{body}");
}

pub async fn bad_input_gets_clear_errors(api: &Api) {
    let chat = "/v1/chat/completions";
    let (status, body) = api.raw(chat, "application/json", b"{not json").await;
    assert_eq!(status, 400, "{body}");
    error_message(&body);

    let cases = [
        (json!({"model": "chat"}), 400, "messages"),
        (json!({"model": "chat", "messages": []}), 400, "messages"),
        (json!({"model": "chat", "messages": "hi"}), 400, "messages"),
        (
            json!({"model": 7, "messages": [{"role": "user", "content": "x"}]}),
            400,
            "model",
        ),
        (
            json!({"model": "nope", "messages": [{"role": "user", "content": "x"}]}),
            404,
            "model",
        ),
        (
            json!({"model": "chat", "messages": [{"role": "wizard", "content": "x"}]}),
            400,
            "role",
        ),
    ];
    for (body, want, mentions) in cases {
        let (status, answer) = api.call("POST", chat, Some(body.clone())).await;
        assert_eq!(status, want, "{body}: {answer}");
        let message = error_message(&answer);
        let param = answer["error"]["param"].as_str().unwrap_or("");
        assert!(
            message.contains(mentions) || param.contains(mentions),
            "{body}: {answer}"
        );
    }

    let empty = json!({"name": "empty_table", "csv": ""});
    let (status, body) = api.call("POST", "/v1/datasets", Some(empty)).await;
    assert_eq!(status, 400, "{body}");
    let ragged = json!({"name": "ragged_table", "csv": "a,b\n1,2\n3\n"});
    let (status, body) = api.call("POST", "/v1/datasets", Some(ragged)).await;
    assert_eq!(status, 400, "{body}");
    assert!(error_message(&body).contains('3'), "no line number: {body}");
    let (_, list) = api.call("GET", "/v1/datasets", None).await;
    assert!(
        !list.to_string().contains("ragged_table"),
        "half-stored: {list}"
    );
    let (status, body) = api
        .raw("/v1/datasets", "text/csv", b"\x00\x01\x02\xff")
        .await;
    assert!((400..500).contains(&status), "{status} {body}");

    let anonymous = Api::new(&api.base, "");
    let (status, body) = anonymous.call("GET", "/v1/models", None).await;
    assert_eq!(status, 401, "{body}");
    let stranger = Api::new(&api.base, "am-unknown-key");
    let (status, body) = stranger.call("GET", "/v1/models", None).await;
    assert_eq!(status, 401, "{body}");
    assert!(
        error_message(&body).to_lowercase().contains("unknown"),
        "{body}"
    );

    let health = reqwest::get(format!("{}/health", api.base))
        .await
        .expect("health");
    assert_eq!(health.status(), 200, "the gateway stopped serving");
}

/// The official OpenAI Python client, as users drive the gateway.
pub fn openai_client_accepts_the_api(api: &Api, backend: &str) {
    let script = repo_root().join("crates/cli/tests/openai_acceptance.py");
    let output = std::process::Command::new(python())
        .arg(script)
        .args([&api.base, &api.key, backend])
        .output()
        .expect("run python");
    assert!(
        output.status.success(),
        "openai acceptance failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// The text of an SSE answer's content deltas, joined.
pub fn streamed_content(sse: &str) -> String {
    sse.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .filter_map(|data| serde_json::from_str::<Value>(data).ok())
        .filter_map(|event| {
            event["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_string)
        })
        .collect()
}
