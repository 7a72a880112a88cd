//! The gateway over HTTP: auth, validation, completions, streams, limits, admin, data routes.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use helpers::{chat_body, error_of, sse_data, start, start_with, Options, ADMIN_KEY};
use serde_json::{json, Value};
use std::time::Duration;

#[tokio::test]
async fn auth_failures_say_why() {
    let gw = start().await;
    let body = chat_body("chat", "hi");

    let missing = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&body)
        .send()
        .await
        .unwrap();
    let error = error_of(missing, 401).await;
    assert_eq!(error["code"], "missing_api_key");
    assert!(error["message"].as_str().unwrap().contains("missing"));

    let error = error_of(
        gw.post("/v1/chat/completions", "am-nope", body.clone())
            .await,
        401,
    )
    .await;
    assert_eq!(error["code"], "invalid_api_key");
    assert!(error["message"].as_str().unwrap().contains("unknown"));

    let expired = "am-expired-key-000000000000";
    gw.insert_key(expired, |k| {
        k.expires_at = Some(chrono::Utc::now() - chrono::TimeDelta::hours(1))
    })
    .await;
    let error = error_of(
        gw.post("/v1/chat/completions", expired, body.clone()).await,
        401,
    )
    .await;
    assert_eq!(error["code"], "expired_api_key");
    assert!(
        error["message"].as_str().unwrap().contains("expired at 20"),
        "{error}"
    );

    let (id, revoked) = gw.create_key(json!({"name": "soon revoked"})).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &revoked, body.clone())
            .await
            .status(),
        200
    );
    let response = gw
        .client
        .delete(gw.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let error = error_of(
        gw.post("/v1/chat/completions", &revoked, body.clone())
            .await,
        401,
    )
    .await;
    assert_eq!(error["code"], "revoked_api_key");
    assert!(error["message"].as_str().unwrap().contains("revoked at"));

    let api_key_header = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .header("api-key", ADMIN_KEY)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(api_key_header.status(), 200);
}

#[tokio::test]
async fn scopes_are_enforced() {
    let gw = start().await;
    let (_, search_only) = gw
        .create_key(json!({"name": "s", "scopes": ["search"]}))
        .await;

    let error = error_of(
        gw.post(
            "/v1/chat/completions",
            &search_only,
            chat_body("chat", "hi"),
        )
        .await,
        403,
    )
    .await;
    assert_eq!(error["code"], "insufficient_scope");
    assert_eq!(
        gw.post(
            "/v1/chat/completions",
            &search_only,
            chat_body("search", "hi")
        )
        .await
        .status(),
        200
    );
    error_of(
        gw.post("/agent/data/chat", &search_only, chat_body("x", "hi"))
            .await,
        403,
    )
    .await;
    error_of(gw.get("/v1/datasets", &search_only).await, 403).await;
    error_of(gw.get("/admin/keys", &search_only).await, 403).await;
    assert_eq!(gw.get("/v1/documents", &search_only).await.status(), 200);

    let (_, all) = gw.create_key(json!({"name": "all"})).await;
    assert_eq!(
        gw.post("/agent/data/chat", &all, chat_body("ignored", "hi"))
            .await
            .status(),
        200
    );
}

#[tokio::test]
async fn every_bad_input_is_a_4xx_naming_the_field() {
    let gw = start().await;
    let user = json!([{"role": "user", "content": "hi"}]);
    let cases: Vec<(Value, u16, Option<&str>)> = vec![
        (json!({"messages": user}), 400, Some("model")),
        (json!({"model": 5, "messages": user}), 400, Some("model")),
        (
            json!({"model": "gpt-4o", "messages": user}),
            404,
            Some("model"),
        ),
        (json!({"model": "chat"}), 400, Some("messages")),
        (
            json!({"model": "chat", "messages": []}),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "chat", "messages": {"role": "user"}}),
            400,
            Some("messages"),
        ),
        (
            json!({"model": "chat", "messages": ["hi"]}),
            400,
            Some("messages[0]"),
        ),
        (
            json!({"model": "chat", "messages": [{"content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        (
            json!({"model": "chat", "messages": [{"role": "king", "content": "x"}]}),
            400,
            Some("messages[0].role"),
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user"}]}),
            400,
            Some("messages[0].content"),
        ),
        (
            json!({"model": "chat", "messages": [{"role": "user", "content": 1}]}),
            400,
            Some("messages[0].content"),
        ),
        (
            json!({"model": "chat",
                   "messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
            400,
            Some("messages[0].content[0].type"),
        ),
        (
            json!({"model": "chat", "messages": [{"role": "tool", "content": "x"}]}),
            400,
            Some("messages[0].tool_call_id"),
        ),
        (
            json!({"model": "chat", "messages": user, "temperature": 2.5}),
            400,
            Some("temperature"),
        ),
        (
            json!({"model": "chat", "messages": user, "temperature": "hot"}),
            400,
            Some("temperature"),
        ),
        (
            json!({"model": "chat", "messages": user, "top_p": 1.5}),
            400,
            Some("top_p"),
        ),
        (
            json!({"model": "chat", "messages": user, "max_tokens": 0}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"model": "chat", "messages": user, "max_tokens": 1.5}),
            400,
            Some("max_tokens"),
        ),
        (
            json!({"model": "chat", "messages": user, "n": 3}),
            400,
            Some("n"),
        ),
        (
            json!({"model": "chat", "messages": user, "stream": 1}),
            400,
            Some("stream"),
        ),
        (
            json!({"model": "chat", "messages": user, "stream_options": {"include_usage": "y"}}),
            400,
            Some("stream_options.include_usage"),
        ),
        (
            json!({"model": "chat", "messages": user, "stop": 3}),
            400,
            Some("stop"),
        ),
        (
            json!({"model": "chat", "messages": user, "conversation_id": ""}),
            400,
            Some("conversation_id"),
        ),
        (
            json!({"model": "chat", "messages": user, "metadata": "x"}),
            400,
            Some("metadata"),
        ),
    ];
    for (body, status, param) in cases {
        let response = gw
            .post("/v1/chat/completions", ADMIN_KEY, body.clone())
            .await;
        let error = error_of(response, status).await;
        assert_eq!(error["param"].as_str(), param, "{body} -> {error}");
    }
    let error = error_of(
        gw.post(
            "/v1/chat/completions",
            ADMIN_KEY,
            json!({"model": "x", "messages": user}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "model_not_found");
    assert_eq!(
        gw.agent.seen.lock().unwrap().chat_calls,
        0,
        "no bad input reached an agent"
    );
}

#[tokio::test]
async fn axum_rejections_come_out_in_the_openai_shape() {
    let gw = start_with(Options {
        max_body_bytes: 4096,
        ..Options::default()
    })
    .await;
    let post = |body: &'static str, content_type: &'static str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .header("content-type", content_type)
            .body(body)
            .send()
    };

    let error = error_of(post("{\"model\": ", "application/json").await.unwrap(), 400).await;
    assert!(error["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    error_of(post("[]", "application/json").await.unwrap(), 400).await;
    error_of(post("", "application/json").await.unwrap(), 400).await;
    error_of(post("{}", "text/plain").await.unwrap(), 415).await;

    let big =
        json!({"model": "chat", "messages": [{"role": "user", "content": "x".repeat(10_000)}]});
    let error = error_of(gw.post("/v1/chat/completions", ADMIN_KEY, big).await, 413).await;
    assert_eq!(error["code"], "body_too_large");

    error_of(gw.get("/v1/nothing-here", ADMIN_KEY).await, 404).await;
    error_of(gw.get("/v1/chat/completions", ADMIN_KEY).await, 405).await;
    let error = error_of(
        gw.post("/agent/poet/chat", ADMIN_KEY, chat_body("x", "hi"))
            .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "agent_not_found");
    let bad_timeout = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("x-agentmesh-timeout-ms", "soon")
        .json(&chat_body("chat", "hi"))
        .send()
        .await
        .unwrap();
    error_of(bad_timeout, 400).await;
}

#[tokio::test]
async fn completion_has_openai_shape_and_passes_ids() {
    let gw = start().await;
    let mut body = chat_body("chat", "hello");
    body["conversation_id"] = json!("conv-7");
    body["metadata"] = json!({"team": "x"});
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("x-request-id", "req-abc")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(response.headers()["x-request-id"], "req-abc");
    let value: Value = response.json().await.unwrap();

    assert!(value["id"].as_str().unwrap().starts_with("chatcmpl-"));
    assert_eq!(value["object"], "chat.completion");
    assert_eq!(value["model"], "chat");
    assert!(value["created"].as_i64().unwrap() > 1_700_000_000);
    assert_eq!(value["choices"][0]["message"]["role"], "assistant");
    assert_eq!(value["choices"][0]["message"]["content"], "Hello world");
    assert_eq!(value["choices"][0]["finish_reason"], "stop");
    assert_eq!(value["usage"]["prompt_tokens"], 5);
    assert_eq!(value["usage"]["completion_tokens"], 2);
    assert_eq!(value["usage"]["total_tokens"], 7);
    assert_eq!(value["conversation_id"], "conv-7");

    let seen = gw.agent.seen.lock().unwrap();
    assert_eq!(seen.request_ids, vec!["req-abc".to_string()]);
    assert!(seen.key_ids[0].starts_with("key_"), "{:?}", seen.key_ids);
    assert!(seen.timeouts[0].is_some(), "a gRPC deadline is sent");
    assert_eq!(seen.requests[0].metadata_json, r#"{"team":"x"}"#);
    assert_eq!(seen.requests[0].conversation_id, "conv-7");
    assert_eq!(seen.cancelled, 0, "a complete answer is read to its end");
}

#[tokio::test]
async fn generated_request_id_is_on_every_response() {
    let gw = start().await;
    let health = gw.client.get(gw.url("/health")).send().await.unwrap();
    assert!(!health.headers()["x-request-id"].is_empty());
    let unknown = gw.client.get(gw.url("/nope")).send().await.unwrap();
    assert!(!unknown.headers()["x-request-id"].is_empty());
}

#[tokio::test]
async fn tool_activity_is_an_extension_not_tool_calls() {
    let gw = start().await;
    let value: Value = gw
        .post(
            "/v1/chat/completions",
            ADMIN_KEY,
            chat_body("chat", "tools"),
        )
        .await
        .json()
        .await
        .unwrap();
    let message = &value["choices"][0]["message"];
    assert!(message.get("tool_calls").is_none(), "{value}");
    assert_eq!(value["tool_events"][0]["type"], "call");
    assert_eq!(value["tool_events"][1]["type"], "result");
    assert_eq!(value["citations"][0]["document_id"], "pods");
}

#[tokio::test]
async fn stream_sends_chunks_usage_and_done() {
    let gw = start().await;
    let mut body = chat_body("search", "tools");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = gw.post("/v1/chat/completions", ADMIN_KEY, body).await;
    assert_eq!(response.status(), 200);
    assert!(response.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/event-stream"));
    let events = sse_data(&response.text().await.unwrap());

    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks
        .iter()
        .all(|c| c["object"] == "chat.completion.chunk" && c["model"] == "search"));
    assert_eq!(
        chunks[0]["choices"][0]["delta"],
        json!({"role": "assistant", "content": ""})
    );
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(text, "Pods are small.");
    assert!(chunks
        .iter()
        .all(|c| c["choices"][0]["delta"].get("tool_calls").is_none()));
    assert!(chunks
        .iter()
        .any(|c| c["choices"][0]["delta"]["agentmesh_tool"]["type"] == "call"));

    let finish = &chunks[chunks.len() - 2];
    assert_eq!(finish["choices"][0]["finish_reason"], "stop");
    assert_eq!(finish["citations"][0]["title"], "Pods");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"]["total_tokens"], 7);
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage_chunk() {
    let gw = start().await;
    let mut body = chat_body("chat", "hi");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", ADMIN_KEY, body)
        .await
        .text()
        .await
        .unwrap();
    let events = sse_data(&text);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert!(last.get("usage").is_none());
}

#[tokio::test]
async fn mid_stream_error_is_the_last_event() {
    let gw = start().await;
    let mut body = chat_body("chat", "fail-mid");
    body["stream"] = json!(true);
    let response = gw.post("/v1/chat/completions", ADMIN_KEY, body).await;
    assert_eq!(response.status(), 200);
    let events = sse_data(&response.text().await.unwrap());
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "provider_auth_failed");
    assert_eq!(last["error"]["type"], "upstream_error");
    assert!(events.iter().any(|e| e.contains("partial")));

    let mut cut = chat_body("chat", "no-final");
    cut["stream"] = json!(true);
    let events = sse_data(
        &gw.post("/v1/chat/completions", ADMIN_KEY, cut)
            .await
            .text()
            .await
            .unwrap(),
    );
    let last: Value = serde_json::from_str(events.last().unwrap()).unwrap();
    assert_eq!(last["error"]["code"], "incomplete_answer");
}

#[tokio::test]
async fn early_agent_error_keeps_its_http_status() {
    let gw = start().await;
    let error = error_of(
        gw.post(
            "/v1/chat/completions",
            ADMIN_KEY,
            chat_body("chat", "fail-early"),
        )
        .await,
        502,
    )
    .await;
    assert_eq!(error["code"], "provider_auth_failed");
    assert_eq!(error["message"], "provider primary rejected our API key");

    let mut body = chat_body("chat", "fail-early");
    body["stream"] = json!(true);
    error_of(gw.post("/v1/chat/completions", ADMIN_KEY, body).await, 502).await;
}

#[tokio::test]
async fn client_timeout_becomes_504() {
    let gw = start().await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("x-agentmesh-timeout-ms", "300")
        .json(&chat_body("chat", "slow:3000"))
        .send()
        .await
        .unwrap();
    let error = error_of(response, 504).await;
    assert_eq!(error["type"], "timeout_error");
}

#[tokio::test]
async fn rate_limit_answers_429_with_headers() {
    let gw = start().await;
    let (_, key) = gw
        .create_key(json!({"name": "limited", "rpm_limit": 2}))
        .await;
    for _ in 0..2 {
        let ok = gw
            .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
            .await;
        assert_eq!(ok.status(), 200);
        assert_eq!(ok.headers()["x-ratelimit-limit-requests"], "2");
    }
    let limited = gw
        .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
        .await;
    let headers = limited.headers().clone();
    let error = error_of(limited, 429).await;
    assert_eq!(error["code"], "rate_limit_exceeded");
    assert!(
        headers["retry-after"]
            .to_str()
            .unwrap()
            .parse::<u64>()
            .unwrap()
            >= 1
    );
    assert_eq!(headers["x-ratelimit-limit-requests"], "2");
    assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
    assert!(headers["x-ratelimit-reset-requests"]
        .to_str()
        .unwrap()
        .ends_with('s'));
}

#[tokio::test]
async fn exhausted_budget_answers_429() {
    let gw = start().await;
    let (_, key) = gw
        .create_key(json!({"name": "broke", "budget_usd": 0}))
        .await;
    let error = error_of(
        gw.post("/v1/chat/completions", &key, chat_body("chat", "hi"))
            .await,
        429,
    )
    .await;
    assert_eq!(error["code"], "budget_exceeded");
}

/// Each answer of the fake agent costs $0.001, the default reservation. Concurrent
/// requests reserve before they run, so a $0.005 budget admits exactly five of twenty,
/// and once they are settled the key stays refused.
#[tokio::test]
async fn concurrent_requests_cannot_spend_past_the_budget() {
    let gw = start().await;
    let (_, key) = gw
        .create_key(json!({"name": "thrifty", "budget_usd": 0.005}))
        .await;
    let calls = (0..20).map(|_| gw.post("/v1/chat/completions", &key, chat_body("chat", "hi")));
    let statuses: Vec<u16> = futures::future::join_all(calls)
        .await
        .iter()
        .map(|r| r.status().as_u16())
        .collect();
    let ok = statuses.iter().filter(|s| **s == 200).count();
    let refused = statuses.iter().filter(|s| **s == 429).count();
    assert_eq!((ok, refused), (5, 15), "{statuses:?}");

    let error = error_of(
        gw.post("/v1/chat/completions", &key, chat_body("chat", "hi"))
            .await,
        429,
    )
    .await;
    assert_eq!(error["code"], "budget_exceeded");
    let refused = gw
        .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
        .await;
    assert_eq!(refused.headers()["x-should-retry"], "false");
    assert!(refused.headers().get("retry-after").is_none());
    assert!(
        error["message"]
            .as_str()
            .unwrap()
            .contains("$0.0050 of its $0.0050"),
        "{error}"
    );
}

#[tokio::test]
async fn usage_is_recorded_per_request() {
    let gw = start().await;
    let (id, key) = gw.create_key(json!({"name": "metered"})).await;
    assert_eq!(
        gw.post("/v1/chat/completions", &key, chat_body("chat", "hi"))
            .await
            .status(),
        200
    );
    let mut body = chat_body("chat", "hi");
    body["stream"] = json!(true);
    let _ = gw
        .post("/v1/chat/completions", &key, body)
        .await
        .text()
        .await
        .unwrap();

    let mut requests = 0;
    for _ in 0..50 {
        let value: Value = gw
            .get(&format!("/admin/usage?key_id={id}"), ADMIN_KEY)
            .await
            .json()
            .await
            .unwrap();
        requests = value["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["requests"].as_u64().unwrap())
            .sum();
        if requests == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(requests, 2);
}

#[tokio::test]
async fn admin_key_lifecycle() {
    let gw = start().await;
    let response = gw
        .post(
            "/admin/keys",
            ADMIN_KEY,
            json!({
                "name": "ci", "scopes": ["chat", "search"], "rpm_limit": 10, "tpm_limit": 5000,
                "budget_usd": 2.5, "expires_at": "2999-01-01T00:00:00Z"
            }),
        )
        .await;
    assert_eq!(response.status(), 201);
    let created: Value = response.json().await.unwrap();
    let id = created["id"].as_str().unwrap().to_string();
    let secret = created["key"].as_str().unwrap().to_string();
    assert!(secret.starts_with("am-"));
    assert_eq!(created["scopes"], json!(["chat", "search"]));
    assert_eq!(created["rpm_limit"], 10);
    assert_eq!(created["budget_usd"], 2.5);
    assert!(secret.starts_with(created["prefix"].as_str().unwrap()));

    let listed: Value = gw.get("/admin/keys", ADMIN_KEY).await.json().await.unwrap();
    let entries = listed["data"].as_array().unwrap();
    assert!(entries.iter().any(|k| k["id"] == id.as_str()));
    assert!(
        entries.iter().all(|k| k.get("key").is_none()),
        "never secrets"
    );
    assert!(!listed.to_string().contains(&secret));

    assert_eq!(
        gw.post("/v1/chat/completions", &secret, chat_body("chat", "hi"))
            .await
            .status(),
        200
    );
    let rotated: Value = gw
        .post(&format!("/admin/keys/{id}/rotate"), ADMIN_KEY, json!({}))
        .await
        .json()
        .await
        .unwrap();
    let new_secret = rotated["key"].as_str().unwrap();
    assert_eq!(rotated["id"], id.as_str());
    assert_eq!(rotated["rpm_limit"], 10);
    assert_ne!(new_secret, secret);
    let error = error_of(
        gw.post("/v1/chat/completions", &secret, chat_body("chat", "hi"))
            .await,
        401,
    )
    .await;
    assert_eq!(error["code"], "invalid_api_key");
    assert_eq!(
        gw.post("/v1/chat/completions", new_secret, chat_body("chat", "hi"))
            .await
            .status(),
        200
    );

    let revoked = gw
        .client
        .delete(gw.url(&format!("/admin/keys/{id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(revoked.status(), 200);
    let value: Value = revoked.json().await.unwrap();
    assert!(value["revoked_at"].is_string());
    let error = error_of(
        gw.post("/v1/chat/completions", new_secret, chat_body("chat", "hi"))
            .await,
        401,
    )
    .await;
    assert_eq!(error["code"], "revoked_api_key");

    let missing = gw
        .client
        .delete(gw.url("/admin/keys/key_nope"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    error_of(missing, 404).await;
    let bad = [
        (json!({"name": "x", "scopes": ["root"]}), "scopes[0]"),
        (json!({"name": "x", "rpm_limit": 0}), "rpm_limit"),
        (json!({"name": "x", "expires_at": "tomorrow"}), "expires_at"),
        (json!({"scopes": []}), "name"),
    ];
    for (body, param) in bad {
        let error = error_of(gw.post("/admin/keys", ADMIN_KEY, body).await, 400).await;
        assert_eq!(error["param"], param);
    }
}

#[tokio::test]
async fn idempotency_key_replays_the_first_answer() {
    let gw = start().await;
    let send = || {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "order-42")
            .json(&chat_body("chat", "hi"))
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), 200);
    let first_body = first.text().await.unwrap();
    let second = send().await.unwrap();
    assert_eq!(second.status(), 200);
    assert_eq!(second.headers()["idempotent-replayed"], "true");
    assert_eq!(second.text().await.unwrap(), first_body);
    assert_eq!(
        gw.agent.seen.lock().unwrap().chat_calls,
        1,
        "the agent ran once"
    );

    let failing = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("idempotency-key", "order-43")
        .json(&chat_body("chat", "fail-early"));
    assert_eq!(failing.send().await.unwrap().status(), 502);
    let mut released = false;
    for _ in 0..50 {
        let retry = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "order-43")
            .json(&chat_body("chat", "hi"))
            .send()
            .await
            .unwrap();
        if retry.status() == 200 {
            released = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(released, "a failed request releases its idempotency claim");
}

#[tokio::test]
async fn models_list_agents_with_their_llm() {
    let gw = start().await;
    let value: Value = gw.get("/v1/models", ADMIN_KEY).await.json().await.unwrap();
    assert_eq!(value["object"], "list");
    let ids: Vec<&str> = value["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["chat", "search", "data"]);
    assert!(value["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["llm_model"] == "fake-llm"
            && m["owned_by"] == "agentmesh"
            && m["object"] == "model"));
    let one: Value = gw
        .get("/v1/models/data", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(one["id"], "data");
    error_of(gw.get("/v1/models/gpt-4", ADMIN_KEY).await, 404).await;
}

#[tokio::test]
async fn unreachable_agents_mean_503_and_not_ready() {
    let gw = start_with(Options {
        agents_down: true,
        ..Options::default()
    })
    .await;
    let value: Value = gw.get("/v1/models", ADMIN_KEY).await.json().await.unwrap();
    assert!(value["data"]
        .as_array()
        .unwrap()
        .iter()
        .all(|m| m["llm_model"].is_null()));
    let response = gw
        .post("/v1/chat/completions", ADMIN_KEY, chat_body("chat", "hi"))
        .await;
    assert!(response.headers().contains_key("retry-after"));
    error_of(response, 503).await;

    let ready = gw.client.get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_eq!(body["checks"]["database"], "ok");
    assert_ne!(body["checks"]["chat"], "ok");
}

#[tokio::test]
async fn documents_and_search_go_to_the_search_agent() {
    let gw = start().await;
    let response = gw
        .post(
            "/v1/documents",
            ADMIN_KEY,
            json!({"title": "Pods", "text": "# Pods"}),
        )
        .await;
    assert_eq!(response.status(), 201);
    let value: Value = response.json().await.unwrap();
    assert_eq!(value["chunks"], 2);
    let error = error_of(
        gw.post("/v1/documents", ADMIN_KEY, json!({"title": "x"}))
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "text");

    let listed: Value = gw
        .get("/v1/documents", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(listed["data"][0]["metadata"]["lang"], "en");

    let found: Value = gw
        .post(
            "/v1/search",
            ADMIN_KEY,
            json!({"query": "pods", "top_k": 3}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(found["results"][0]["text"], "about pods");
    assert_eq!(found["results"][0]["score"], 3.0);
    let error = error_of(
        gw.post("/v1/search", ADMIN_KEY, json!({"query": "x", "top_k": 0}))
            .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "top_k");

    let deleted = gw
        .client
        .delete(gw.url("/v1/documents/pods"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    let missing = gw
        .client
        .delete(gw.url("/v1/documents/missing"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    error_of(missing, 404).await;
}

#[tokio::test]
async fn datasets_upload_and_query() {
    let gw = start().await;
    let json_upload = gw
        .post(
            "/v1/datasets",
            ADMIN_KEY,
            json!({"name": "orders", "csv": "id\n1\n2\n"}),
        )
        .await;
    assert_eq!(json_upload.status(), 201);

    let form = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(b"id\n1\n".to_vec()).file_name("order_details.csv"),
    );
    let response = gw
        .client
        .post(gw.url("/v1/datasets"))
        .bearer_auth(ADMIN_KEY)
        .multipart(form)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 201);
    let value: Value = response.json().await.unwrap();
    assert_eq!(value["name"], "order_details");
    assert_eq!(gw.data.registered.lock().unwrap().len(), 2);

    let empty = reqwest::multipart::Form::new().part(
        "file",
        reqwest::multipart::Part::bytes(Vec::new()).file_name("empty.csv"),
    );
    let response = gw
        .client
        .post(gw.url("/v1/datasets"))
        .bearer_auth(ADMIN_KEY)
        .multipart(empty)
        .send()
        .await
        .unwrap();
    assert_eq!(error_of(response, 400).await["param"], "file");
    let binary = reqwest::multipart::Form::new().text("name", "blob").part(
        "file",
        reqwest::multipart::Part::bytes(vec![0x89, 0x50, 0x00, 0xff]).file_name("x.csv"),
    );
    let response = gw
        .client
        .post(gw.url("/v1/datasets"))
        .bearer_auth(ADMIN_KEY)
        .multipart(binary)
        .send()
        .await
        .unwrap();
    assert!(error_of(response, 400).await["message"]
        .as_str()
        .unwrap()
        .contains("binary"));
    let error = error_of(
        gw.post(
            "/v1/datasets",
            ADMIN_KEY,
            json!({"name": "Bad Name", "csv": "a\n1"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(error["param"], "name");

    let error = error_of(
        gw.post(
            "/v1/datasets/nope/query",
            ADMIN_KEY,
            json!({"sql": "select 1"}),
        )
        .await,
        404,
    )
    .await;
    assert_eq!(error["code"], "dataset_not_found");

    let table = agentmesh_state::TableData {
        name: "orders".into(),
        columns: vec![agentmesh_state::ColumnInfo {
            name: "id".into(),
            kind: agentmesh_state::ColumnType::Integer,
        }],
        rows: vec![vec![Some("1".into())]],
    };
    gw.state.db.create_dataset(&table).await.unwrap();
    let value: Value = gw
        .post(
            "/v1/datasets/orders/query",
            ADMIN_KEY,
            json!({"sql": "select id from orders"}),
        )
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(
        value,
        json!({"columns": ["id"], "rows": [[1], [2]], "row_count": 2, "truncated": false})
    );
    let error = error_of(
        gw.post(
            "/v1/datasets/orders/query",
            ADMIN_KEY,
            json!({"sql": "delete from orders"}),
        )
        .await,
        400,
    )
    .await;
    assert_eq!(error["code"], "sql_not_read_only");
    assert_eq!(error["param"], "sql");
}

#[tokio::test]
async fn conversations_come_from_the_database() {
    let gw = start().await;
    let (owner_id, owner) = gw.create_key(json!({"name": "owner"})).await;
    let (_, other) = gw.create_key(json!({"name": "other"})).await;
    error_of(gw.get("/v1/conversations/c1", &owner).await, 404).await;

    let messages = [agentmesh_state::NewMessage {
        role: "user".into(),
        content: "hi".into(),
    }];
    gw.state
        .db
        .append_messages("c1", &owner_id, &messages)
        .await
        .unwrap();
    let value: Value = gw
        .get("/v1/conversations/c1", &owner)
        .await
        .json()
        .await
        .unwrap();
    assert_eq!(value["messages"][0]["content"], "hi");
    error_of(gw.get("/v1/conversations/c1", &other).await, 404).await;

    let deleted = gw
        .client
        .delete(gw.url("/v1/conversations/c1"))
        .bearer_auth(&owner)
        .send()
        .await
        .unwrap();
    assert_eq!(deleted.status(), 200);
    error_of(gw.get("/v1/conversations/c1", &owner).await, 404).await;
}

#[tokio::test]
async fn operations_endpoints() {
    let gw = start().await;
    let health: Value = gw
        .client
        .get(gw.url("/health"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health, json!({"status": "ok"}));
    let ready = gw.client.get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 200);

    let _ = gw.get("/v1/models", ADMIN_KEY).await;
    let metrics = gw
        .client
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    // One registry per process: other tests of this binary count too.
    assert!(
        metrics.contains(
            r#"agentmesh_gateway_requests_total{route="/v1/models",method="GET",status="200"} "#
        ),
        "{metrics}"
    );
    assert!(metrics.contains("agentmesh_gateway_requests_in_flight"));

    let openapi: Value = gw
        .client
        .get(gw.url("/openapi.json"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(openapi["paths"]["/v1/chat/completions"]["post"].is_object());
    assert!(openapi["paths"]["/admin/keys/{id}/rotate"]["post"].is_object());
}

#[tokio::test]
async fn shutdown_lets_in_flight_requests_finish() {
    let mut gw = start().await;
    let request = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .json(&chat_body("chat", "slow:600"))
        .send();
    let pending = tokio::spawn(request);
    tokio::time::sleep(Duration::from_millis(200)).await;
    gw.shutdown();
    let response = pending.await.unwrap().unwrap();
    assert_eq!(response.status(), 200);
    let value: Value = response.json().await.unwrap();
    assert_eq!(value["choices"][0]["message"]["content"], "Hello world");
    let served = tokio::time::timeout(Duration::from_secs(5), &mut gw.served).await;
    assert!(
        matches!(served, Ok(Ok(Ok(())))),
        "serve returns after draining"
    );
    assert!(
        gw.client.get(gw.url("/health")).send().await.is_err(),
        "no longer accepting"
    );
}

#[tokio::test]
async fn bootstrap_generates_one_admin_key_when_none_is_configured() {
    let dir = tempfile::tempdir().unwrap();
    let state =
        agentmesh_state::State::connect(&agentmesh_state::StateConfig::embedded(dir.path()))
            .await
            .unwrap();
    let config = agentmesh_gateway::GatewayConfig::default();
    let secret = agentmesh_gateway::bootstrap_admin_key(&state, &config)
        .await
        .unwrap();
    let secret = secret.expect("a new admin key");
    assert!(secret.starts_with("am-"));
    let key = state
        .db
        .find_key_by_hash(&agentmesh_state::hash_secret(&secret))
        .await
        .unwrap();
    assert!(key.unwrap().is_admin());
    let again = agentmesh_gateway::bootstrap_admin_key(&state, &config)
        .await
        .unwrap();
    assert!(again.is_none(), "only once");

    let configured = agentmesh_gateway::GatewayConfig {
        admin_key: Some("am-from-env-0000000000".into()),
        ..Default::default()
    };
    assert!(agentmesh_gateway::bootstrap_admin_key(&state, &configured)
        .await
        .unwrap()
        .is_none());
    assert!(agentmesh_gateway::bootstrap_admin_key(&state, &configured)
        .await
        .unwrap()
        .is_none());
    let keys = state.db.list_keys().await.unwrap();
    assert_eq!(keys.len(), 2, "the configured key is stored once");
}

#[tokio::test]
async fn keep_alive_comments_while_the_agent_is_quiet() {
    let keepalive = Duration::from_millis(100);
    let gw = start_with(Options {
        keepalive,
        ..Options::default()
    })
    .await;
    let mut body = chat_body("chat", "pause:450");
    body["stream"] = json!(true);
    let text = gw
        .post("/v1/chat/completions", ADMIN_KEY, body)
        .await
        .text()
        .await
        .unwrap();
    assert!(text.contains(": keep-alive\n"), "{text}");
    assert_eq!(sse_data(&text).last().unwrap(), "[DONE]");
}

#[tokio::test]
async fn client_going_away_cancels_the_agent_call_and_records_499() {
    let gw = start().await;
    let (id, key) = gw.create_key(json!({"name": "impatient"})).await;
    let mut body = chat_body("chat", "pause:5000");
    body["stream"] = json!(true);
    let mut response = gw.post("/v1/chat/completions", &key, body).await;
    assert_eq!(response.status(), 200);
    let first = response.chunk().await.unwrap().unwrap();
    assert!(String::from_utf8_lossy(&first).contains("chat.completion.chunk"));
    drop(response);

    let mut cancelled = 0;
    let mut recorded = 0;
    for _ in 0..60 {
        cancelled = gw.agent.seen.lock().unwrap().cancelled;
        let usage = gw.state.db.usage_summary(Some(&id)).await.unwrap();
        recorded = usage.iter().map(|row| row.requests).sum::<u64>();
        if cancelled == 1 && recorded == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        cancelled, 1,
        "the agent's stream was dropped before its end"
    );
    assert_eq!(recorded, 1, "the abandoned request still has its usage row");
}

#[tokio::test]
async fn idempotency_key_in_progress_is_409() {
    let gw = start().await;
    let send = |prompt: &str| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(ADMIN_KEY)
            .header("idempotency-key", "order-77")
            .json(&chat_body("chat", prompt))
            .send()
    };
    let first = send("slow:800");
    let second = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        send("hi").await
    };
    let (first, second) = tokio::join!(first, second);
    assert_eq!(first.unwrap().status(), 200);
    let second = second.unwrap();
    assert!(second.headers().contains_key("x-request-id"));
    let error = error_of(second, 409).await;
    assert_eq!(error["code"], "idempotency_in_progress");
    assert_eq!(error["type"], "invalid_request_error");
    assert!(error["message"].as_str().unwrap().contains("order-77"));
}

#[tokio::test]
async fn a_full_agent_answers_503_at_once_with_retry_after() {
    let gw = start_with(Options {
        max_concurrency: 1,
        ..Options::default()
    })
    .await;
    let mut body = chat_body("chat", "pause:1500");
    body["stream"] = json!(true);
    let holding = gw.post("/v1/chat/completions", ADMIN_KEY, body).await;
    assert_eq!(holding.status(), 200, "the first call takes the only slot");

    let started = std::time::Instant::now();
    let refused = gw
        .post("/v1/chat/completions", ADMIN_KEY, chat_body("chat", "hi"))
        .await;
    let waited = started.elapsed();
    assert_eq!(refused.headers()["retry-after"], "1");
    let error = error_of(refused, 503).await;
    assert_eq!(error["code"], "agent_overloaded");
    assert_eq!(error["type"], "service_unavailable");
    assert!(error["message"].as_str().unwrap().contains("chat"));
    assert!(
        waited < Duration::from_millis(500),
        "no queueing: {waited:?}"
    );
    let search = gw
        .post("/v1/search", ADMIN_KEY, json!({"query": "pods"}))
        .await;
    assert_eq!(search.status(), 200, "other agents have their own limit");

    let text = holding.text().await.unwrap();
    assert!(text.contains("[DONE]"), "{text}");
    let again = gw
        .post("/v1/chat/completions", ADMIN_KEY, chat_body("chat", "hi"))
        .await;
    assert_eq!(
        again.status(),
        200,
        "the slot is free once the stream ended"
    );
}

#[tokio::test]
async fn client_timeout_sets_a_shorter_grpc_deadline() {
    let gw = start().await;
    let response = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(ADMIN_KEY)
        .header("x-agentmesh-timeout-ms", "5000")
        .json(&chat_body("chat", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let seen = gw.agent.seen.lock().unwrap();
    let sent = seen.timeouts[0].clone().unwrap();
    let sent = agentmesh_agent_runtime::parse_grpc_timeout(&sent).unwrap();
    assert!(sent <= Duration::from_millis(4900), "{sent:?}");
    assert!(sent >= Duration::from_millis(4000), "{sent:?}");
}

#[tokio::test]
async fn openapi_documents_routes_that_exist() {
    let gw = start().await;
    let doc: Value = gw
        .get("/openapi.json", ADMIN_KEY)
        .await
        .json()
        .await
        .unwrap();
    let paths = doc["paths"].as_object().unwrap();
    let mut operations = 0;
    for (path, methods) in paths {
        let concrete = path.replace("{agent}", "chat").replace(['{', '}'], "");
        for (method, operation) in methods.as_object().unwrap() {
            operations += 1;
            assert!(operation["responses"]["400"].is_object(), "{method} {path}");
            let url = gw.url(&concrete);
            let request = match method.as_str() {
                "get" => gw.client.get(url),
                "delete" => gw.client.delete(url),
                "post" => gw.client.post(url).json(&json!({})),
                other => panic!("unexpected method {other}"),
            };
            let response = request.bearer_auth(ADMIN_KEY).send().await.unwrap();
            let status = response.status().as_u16();
            let text = response.text().await.unwrap();
            assert_ne!(status, 405, "{method} {path}: {text}");
            assert!(!text.contains("unknown_route"), "{method} {path}: {text}");
        }
    }
    assert_eq!(operations, 22, "every route of the router is documented");
}
