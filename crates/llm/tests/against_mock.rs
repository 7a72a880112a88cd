//! The client against the mock provider over real HTTP: retries, fallback, stream faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use agentmesh_llm::{
    ChatMessage, CompletionBuilder, CompletionRequest, LlmClient, LlmConfig, LlmError, LlmEvent,
    Price, ProviderConfig, Secret, ToolSpec,
};
use agentmesh_mock_llm::{MockConfig, MockLlm, RetryAfter, Rule};
use futures::StreamExt;

async fn mock(config: MockConfig) -> MockLlm {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MockLlm::start(addr, config).await.unwrap()
}

fn config_for(mock: &MockLlm, name: &str) -> LlmConfig {
    let mut config = LlmConfig::single(name, &mock.base_url(), "m1");
    config.first_token_timeout = Duration::from_secs(5);
    config.idle_timeout = Duration::from_secs(2);
    config.total_timeout = Duration::from_secs(20);
    config
}

fn ask(text: &str) -> CompletionRequest {
    CompletionRequest {
        messages: vec![ChatMessage::new("user", text)],
        ..CompletionRequest::default()
    }
}

/// Every item of a stream, errors included.
async fn drain(client: &LlmClient, req: CompletionRequest) -> Vec<Result<LlmEvent, LlmError>> {
    client.stream(req).await.unwrap().collect().await
}

#[tokio::test]
async fn complete_reads_answer_usage_and_cost() {
    let mock = mock(MockConfig::new("m1").with_rule(Rule::reply("four words of reply"))).await;
    let mut config = config_for(&mock, "local");
    let price = Price {
        input_per_mtok: 1_000_000.0,
        output_per_mtok: 2_000_000.0,
    };
    config.prices.insert("m1".into(), price);
    let client = LlmClient::new(config).unwrap();

    let completion = client.complete(ask("two words")).await.unwrap();
    assert_eq!(completion.content, "four words of reply");
    assert_eq!(completion.finish_reason, "stop");
    assert_eq!(
        (
            completion.usage.prompt_tokens,
            completion.usage.completion_tokens
        ),
        (2, 4)
    );
    assert!((completion.usage.cost_usd - 10.0).abs() < 1e-9);
    assert_eq!(mock.requests()[0]["model"], "m1");
    assert_eq!(mock.requests()[0]["stream"], false);
    mock.shutdown().await;
}

#[tokio::test]
async fn stream_asks_for_usage_and_ends_with_done() {
    let mock = mock(MockConfig::new("m1").with_rule(Rule::reply("a streamed reply"))).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let events: Vec<LlmEvent> = drain(&client, ask("hi"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let completion = CompletionBuilder::from_events(&events);
    assert_eq!(completion.content, "a streamed reply");
    assert_eq!(completion.usage.completion_tokens, 3);
    assert_eq!(
        events.last(),
        Some(&LlmEvent::Done {
            finish_reason: "stop".into(),
            model: "m1".into()
        })
    );
    assert_eq!(mock.requests()[0]["stream_options"]["include_usage"], true);
    mock.shutdown().await;
}

#[tokio::test]
async fn rate_limit_is_retried_after_the_asked_wait() {
    let mut limited = Rule::status(429).times(2);
    limited.retry_after = Some(RetryAfter::Seconds(1));
    let mock = mock(MockConfig::new("m1").with_rule(limited)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();

    let started = Instant::now();
    let completion = client.complete(ask("hi")).await.unwrap();
    assert!(completion.content.starts_with("This is the mock LLM"));
    assert_eq!(mock.requests().len(), 3);
    // Two waits of the one second the provider asked for.
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    mock.shutdown().await;
}

#[tokio::test]
async fn rate_limit_exhausted_reports_provider_and_wait() {
    let mut limited = Rule::status(429);
    limited.retry_after = Some(RetryAfter::Seconds(0));
    let mock = mock(MockConfig::new("m1").with_rule(limited)).await;
    let client = LlmClient::new(config_for(&mock, "busy-one")).unwrap();
    let err = client.complete(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::RateLimited { .. }), "{err}");
    assert_eq!(err.provider(), Some("busy-one"));
    assert_eq!(err.http_status(), 502);
    assert_eq!(mock.requests().len(), 3);
    mock.shutdown().await;
}

#[tokio::test]
async fn rejected_key_is_not_retried_and_names_provider() {
    let mock = mock(MockConfig::new("m1").with_rule(Rule::status(401))).await;
    let mut config = config_for(&mock, "acme");
    config.providers[0].api_key = Some(Secret::new("sk-test-1"));
    let client = LlmClient::new(config).unwrap();
    let err = client.stream(ask("hi")).await.err().unwrap();
    assert_eq!(
        err.to_string(),
        "provider acme rejected our API key (status 401): check or rotate the key"
    );
    assert_eq!(err.http_status(), 502);
    assert_eq!(mock.requests().len(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn bad_request_is_passed_back_without_retry() {
    let mut rule = Rule::status(422);
    rule.message = Some("max_tokens is too large".into());
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let err = client.complete(ask("hi")).await.unwrap_err();
    assert_eq!(err.http_status(), 400);
    assert!(err.to_string().contains("max_tokens is too large"));
    assert_eq!(mock.requests().len(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn cut_stream_ends_with_an_error_not_silence() {
    let rule = Rule {
        cut_after_chunks: Some(2),
        ..Rule::reply("one two three four")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let items = drain(&client, ask("hi")).await;
    assert_eq!(items[0].as_ref().unwrap(), &LlmEvent::Delta("one ".into()));
    assert_eq!(items[1].as_ref().unwrap(), &LlmEvent::Delta("two ".into()));
    let err = items[2].as_ref().unwrap_err();
    assert_eq!(err.kind(), "stream");
    assert_eq!(err.provider(), Some("local"));
    assert_eq!(items.len(), 3);
    // Content reached the caller, so the stream was not retried.
    assert_eq!(mock.requests().len(), 1);
    mock.shutdown().await;
}

#[tokio::test]
async fn split_utf8_survives() {
    let text = "héllo wörld — ünïcödé 🌍 ok";
    let rule = Rule {
        split_utf8: true,
        ..Rule::reply(text)
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let events: Vec<LlmEvent> = drain(&client, ask("hi"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(CompletionBuilder::from_events(&events).content, text);
    mock.shutdown().await;
}

#[tokio::test]
async fn falls_back_from_failing_provider_by_priority() {
    let broken = mock(MockConfig::new("m1").with_rule(Rule::status(500))).await;
    let healthy = mock(MockConfig::new("m1").with_rule(Rule::reply("from the backup"))).await;
    let mut config = config_for(&broken, "primary");
    let backup = ProviderConfig {
        name: "backup".into(),
        base_url: healthy.base_url(),
        priority: 1,
        ..config.providers[0].clone()
    };
    config.providers.insert(0, backup); // config order differs from priority order
    config.providers[1].priority = 0;
    let client = LlmClient::new(config).unwrap();

    let completion = client.complete(ask("hi")).await.unwrap();
    assert_eq!(completion.content, "from the backup");
    assert_eq!(broken.requests().len(), 3);
    assert_eq!(healthy.requests().len(), 1);

    let events: Vec<LlmEvent> = drain(&client, ask("hi"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(
        CompletionBuilder::from_events(&events).content,
        "from the backup"
    );
    assert_eq!(broken.requests().len(), 6);
    broken.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn first_token_timeout_then_retry_succeeds() {
    let hang = Rule {
        hang: true,
        ..Rule::default()
    }
    .times(1);
    let mock = mock(
        MockConfig::new("m1")
            .with_rule(hang)
            .with_rule(Rule::reply("late")),
    )
    .await;
    let mut config = config_for(&mock, "local");
    config.first_token_timeout = Duration::from_millis(300);
    let client = LlmClient::new(config).unwrap();
    let events: Vec<LlmEvent> = drain(&client, ask("hi"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    assert_eq!(CompletionBuilder::from_events(&events).content, "late");
    assert_eq!(mock.requests().len(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn idle_stream_times_out_with_what_and_limit() {
    let rule = Rule {
        hang_after_chunks: Some(1),
        ..Rule::reply("one two three")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let mut config = config_for(&mock, "local");
    config.idle_timeout = Duration::from_millis(300);
    let client = LlmClient::new(config).unwrap();
    let items = drain(&client, ask("hi")).await;
    assert_eq!(items[0].as_ref().unwrap(), &LlmEvent::Delta("one ".into()));
    let err = items[1].as_ref().unwrap_err();
    assert!(
        matches!(err, LlmError::Timeout { what: "idle", .. }),
        "{err}"
    );
    assert_eq!(err.http_status(), 504);
    assert_eq!(items.len(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn dropping_a_stream_closes_the_upstream_request() {
    let rule = Rule {
        delay_ms: Some(50),
        ..Rule::reply("a b c d e f g h i j k l m n o p")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let mut stream = client.stream(ask("hi")).await.unwrap();
    assert!(matches!(stream.next().await, Some(Ok(LlmEvent::Delta(_)))));
    assert_eq!(mock.in_flight(), 1);
    drop(stream);
    // The mock stops counting the request once the server drops its body.
    let deadline = Instant::now() + Duration::from_secs(2);
    while mock.in_flight() > 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(mock.in_flight(), 0);
    mock.shutdown().await;
}

#[tokio::test]
async fn tool_calls_stream_and_assemble() {
    let rule = Rule::tool_call("query_data", serde_json::json!({"sql": "select 1"}));
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let mut req = ask("sales?");
    req.tools.push(ToolSpec {
        name: "query_data".into(),
        description: "run read-only SQL".into(),
        parameters: serde_json::json!({"type": "object"}),
    });
    let events: Vec<LlmEvent> = drain(&client, req.clone())
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let streamed = CompletionBuilder::from_events(&events);
    assert_eq!(streamed.finish_reason, "tool_calls");
    assert_eq!(streamed.tool_calls[0].name, "query_data");
    assert_eq!(streamed.tool_calls[0].arguments, "{\"sql\":\"select 1\"}");
    let whole = client.complete(req).await.unwrap();
    assert_eq!(
        whole.tool_calls[0].arguments,
        streamed.tool_calls[0].arguments
    );
    assert_eq!(mock.requests()[0]["tools"][0]["type"], "function");
    mock.shutdown().await;
}

#[tokio::test]
async fn unreachable_provider_is_a_connect_error() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/v1", listener.local_addr().unwrap());
    drop(listener);
    let mut config = LlmConfig::single("gone", &url, "m1");
    config.max_attempts = 2;
    let client = LlmClient::new(config).unwrap();
    let err = client.complete(ask("hi")).await.unwrap_err();
    assert_eq!(err.kind(), "connect");
    assert!(
        err.to_string().starts_with("could not reach provider gone"),
        "{err}"
    );
}
