//! The mock spoken to over real HTTP with reqwest.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;

use agentmesh_mock_llm::{MockConfig, MockLlm, Rule};
use futures::StreamExt;
use serde_json::{json, Value};

async fn start(config: MockConfig) -> MockLlm {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MockLlm::start(addr, config).await.unwrap()
}

fn ask(text: &str) -> Value {
    json!({"model": "m1", "messages": [{"role": "system", "content": "be brief"},
                                      {"role": "user", "content": text}]})
}

async fn post(mock: &MockLlm, body: &Value) -> reqwest::Response {
    let url = format!("{}/chat/completions", mock.base_url());
    reqwest::Client::new()
        .post(url)
        .json(body)
        .send()
        .await
        .unwrap()
}

/// The data payloads of an SSE body.
fn payloads(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|event| event.strip_prefix("data: "))
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn whole_answer_is_honest_and_counts_words() {
    let mock = start(MockConfig::new("m1")).await;
    assert!(mock.base_url().starts_with("http://127.0.0.1:"));
    let response = post(&mock, &ask("How many pods run?")).await;
    assert_eq!(response.status(), 200);
    let body: Value = response.json().await.unwrap();
    let content = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(
        content,
        "This is the mock LLM (no real model is configured). You asked: How many pods run?"
    );
    assert_eq!(body["choices"][0]["finish_reason"], "stop");
    assert_eq!(body["model"], "m1");
    assert_eq!(body["usage"]["prompt_tokens"], 6);
    assert_eq!(
        body["usage"]["completion_tokens"],
        content.split_whitespace().count()
    );
    assert_eq!(mock.requests().len(), 1);
    assert_eq!(
        mock.requests()[0]["messages"][1]["content"],
        "How many pods run?"
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn stream_sends_words_then_finish_usage_and_done() {
    let mock = start(MockConfig::new("m1").with_rule(Rule::reply("one two three"))).await;
    let mut body = ask("hi");
    body["stream"] = json!(true);
    body["stream_options"] = json!({"include_usage": true});
    let response = post(&mock, &body).await;
    assert_eq!(response.headers()["content-type"], "text/event-stream");
    let events = payloads(&response.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let words: Vec<&str> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(words, ["", "one ", "two ", "three"]);
    let finish = chunks
        .iter()
        .find(|c| c["choices"][0]["finish_reason"] == "stop");
    assert!(finish.is_some());
    let usage = &chunks.last().unwrap()["usage"];
    assert_eq!(
        (
            usage["prompt_tokens"].as_u64(),
            usage["completion_tokens"].as_u64()
        ),
        (Some(3), Some(3))
    );

    // Without include_usage no chunk carries usage.
    body["stream_options"] = json!({"include_usage": false});
    let text = post(&mock, &body).await.text().await.unwrap();
    assert!(!text.contains("prompt_tokens"));
    mock.shutdown().await;
}

#[tokio::test]
async fn status_rule_sends_retry_after_then_runs_out() {
    let mut rule = Rule::status(429).times(1);
    rule.retry_after = Some(agentmesh_mock_llm::RetryAfter::Seconds(3));
    rule.message = Some("slow down".into());
    let mock = start(MockConfig::new("m1").with_rule(rule)).await;
    let response = post(&mock, &ask("hi")).await;
    assert_eq!(response.status(), 429);
    assert_eq!(response.headers()["retry-after"], "3");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["error"]["message"], "slow down");
    assert_eq!(post(&mock, &ask("hi")).await.status(), 200);
    mock.shutdown().await;
}

#[tokio::test]
async fn tool_call_rule_needs_tools_and_yields_to_tool_results() {
    let rule = Rule::tool_call("query_data", json!({"sql": "select 1"}));
    let mock = start(MockConfig::new("m1").with_rule(rule)).await;
    let tools = json!([{"type": "function", "function": {"name": "query_data", "parameters": {}}}]);
    let mut body = ask("sales?");
    body["tools"] = tools.clone();
    let answer: Value = post(&mock, &body).await.json().await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "tool_calls");
    let call = &answer["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["function"]["name"], "query_data");
    assert_eq!(call["function"]["arguments"], "{\"sql\":\"select 1\"}");

    let with_result = json!({"model": "m1", "tools": tools, "messages": [
        {"role": "user", "content": "sales?"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "42 orders"}]});
    let answer: Value = post(&mock, &with_result).await.json().await.unwrap();
    let content = answer["choices"][0]["message"]["content"].as_str().unwrap();
    assert!(
        content.ends_with("The tool returned: 42 orders"),
        "{content}"
    );
    // Without tools offered the rule does not apply.
    let answer: Value = post(&mock, &ask("sales?")).await.json().await.unwrap();
    assert_eq!(answer["choices"][0]["finish_reason"], "stop");
    mock.shutdown().await;
}

#[tokio::test]
async fn split_utf8_sends_partial_characters() {
    let rule = Rule {
        split_utf8: true,
        ..Rule::reply("héllo wörld")
    };
    let mock = start(MockConfig::new("m1").with_rule(rule)).await;
    let mut body = ask("hi");
    body["stream"] = json!(true);
    let mut stream = post(&mock, &body).await.bytes_stream();
    let (mut reads, mut invalid, mut all) = (0, 0, Vec::new());
    while let Some(read) = stream.next().await {
        let read = read.unwrap();
        reads += 1;
        invalid += usize::from(std::str::from_utf8(&read).is_err());
        all.extend_from_slice(&read);
    }
    assert!(invalid >= 2, "{invalid} of {reads} reads cut a character");
    let text = String::from_utf8(all).unwrap();
    assert!(text.contains("\"héllo \"") && text.ends_with("data: [DONE]\n\n"));
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_models_are_listed() {
    let mock = start(MockConfig::new("m1")).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let client = reqwest::Client::new();
    let response = client.post(&url).body("{oops").send().await.unwrap();
    assert_eq!(response.status(), 400);
    let body: Value = response.json().await.unwrap();
    assert!(body["error"]["message"]
        .as_str()
        .unwrap()
        .contains("not valid JSON"));
    let response = post(&mock, &json!({"messages": "hi"})).await;
    assert_eq!(response.status(), 400);

    let models: Value = client
        .get(format!("{}/models", mock.base_url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(models["data"][0]["id"], "m1");
    mock.shutdown().await;
}

#[tokio::test]
async fn hang_holds_the_request_and_shutdown_ends_it() {
    let rule = Rule {
        hang: true,
        ..Rule::default()
    };
    let mock = start(MockConfig::new("m1").with_rule(rule)).await;
    let url = format!("{}/chat/completions", mock.base_url());
    let pending = tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .json(&ask("hi"))
            .send()
            .await
            .map(|r| r.status())
    });
    // Poll until the mock has seen the request, then check it is still unanswered.
    for _ in 0..100 {
        if mock.in_flight_max() == 1 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    assert_eq!(mock.in_flight_max(), 1);
    assert!(!pending.is_finished());
    let started = std::time::Instant::now();
    mock.shutdown().await;
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
    let status = pending.await.unwrap();
    assert!(status.map(|s| s == 503).unwrap_or(true));
}
