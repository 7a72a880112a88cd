//! The client against the mock provider over real HTTP: retries, fallback, stream faults.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use std::sync::{Arc, Mutex};

use agentmesh_llm::{
    ChatMessage, CircuitState, CompletionBuilder, CompletionRequest, LlmClient, LlmConfig,
    LlmError, LlmEvent, Price, ProviderConfig, Secret, ToolSpec, UsageOutcome, UsageReport,
};
use agentmesh_mock_llm::{MockConfig, MockLlm, RetryAfter, Rule, ToolDeltas};
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
        "provider acme rejected our API key (status 401): the key is invalid or expired; \
         check or rotate it"
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
    config.circuit_failures = 10; // this test is about fallback; the circuit has its own
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

/// A second provider at `mock`, tried after the first.
fn backup(mock: &MockLlm, name: &str, priority: u32) -> ProviderConfig {
    let mut p = LlmConfig::single(name, &mock.base_url(), "m1")
        .providers
        .remove(0);
    p.priority = priority;
    p
}

/// Usage reports collected from the client's sink.
fn collect_usage(client: &LlmClient) -> Arc<Mutex<Vec<UsageReport>>> {
    let seen = Arc::new(Mutex::new(Vec::new()));
    let sink = seen.clone();
    client.on_usage(move |report| sink.lock().unwrap().push(report));
    seen
}

async fn eventually(what: &str, limit: Duration, check: impl Fn() -> bool) {
    let deadline = Instant::now() + limit;
    while !check() {
        assert!(Instant::now() < deadline, "not within {limit:?}: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn three_429s_with_retry_after_1_2_3_are_waited_out_in_order() {
    let limited = |secs| {
        let mut rule = Rule::status(429).times(1);
        rule.retry_after = Some(RetryAfter::Seconds(secs));
        rule
    };
    let config = MockConfig::new("m1")
        .with_rule(limited(1))
        .with_rule(limited(2))
        .with_rule(limited(3))
        .with_rule(Rule::reply("at last"));
    let mock = mock(config).await;
    let mut config = config_for(&mock, "local");
    config.max_attempts = 4;
    let client = LlmClient::new(config).unwrap();

    let completion = client.complete(ask("hi")).await.unwrap();
    assert_eq!(completion.content, "at last");
    let at = mock.arrivals();
    assert_eq!(at.len(), 4);
    for (i, asked) in [1u64, 2, 3].into_iter().enumerate() {
        let gap = at[i + 1] - at[i];
        let asked = Duration::from_secs(asked);
        assert!(
            gap >= asked - Duration::from_millis(10),
            "wait {i}: {gap:?} < {asked:?}"
        );
        assert!(
            gap < asked + Duration::from_millis(700),
            "wait {i}: {gap:?} >> {asked:?}"
        );
    }
    mock.shutdown().await;
}

#[tokio::test]
async fn rejected_key_falls_back_and_the_last_error_names_its_provider() {
    let refusing = mock(MockConfig::new("m1").with_rule(Rule::status(401))).await;
    let also_refusing = mock(MockConfig::new("m1").with_rule(Rule::status(403))).await;
    let mut config = config_for(&refusing, "first");
    config.providers.push(backup(&also_refusing, "second", 1));
    let client = LlmClient::new(config).unwrap();
    let err = client.complete(ask("hi")).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 403, .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("provider second rejected our API key"),
        "{err}"
    );
    assert!(err.to_string().contains("invalid or expired"), "{err}");
    // Not retried on either provider.
    assert_eq!(
        (refusing.requests().len(), also_refusing.requests().len()),
        (1, 1)
    );

    let healthy = mock(MockConfig::new("m1").with_rule(Rule::reply("from the backup"))).await;
    let mut config = config_for(&refusing, "first");
    config.providers.push(backup(&healthy, "second", 1));
    let client = LlmClient::new(config).unwrap();
    assert_eq!(
        client.complete(ask("hi")).await.unwrap().content,
        "from the backup"
    );
    assert_eq!(refusing.requests().len(), 2);
    refusing.shutdown().await;
    also_refusing.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn key_file_rewritten_mid_run_is_used_by_the_next_call() {
    let mock = mock(MockConfig::new("m1")).await;
    mock.set_api_keys(&["sk-old"]);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("api-key");
    std::fs::write(&path, "sk-old\n").unwrap();
    let mut config = config_for(&mock, "keyed");
    config.providers[0].api_key_file = Some(path.clone());
    let client = LlmClient::new(config).unwrap();
    client.complete(ask("one")).await.unwrap();

    // The provider revokes the old key; until the file changes, calls are refused.
    mock.set_api_keys(&["sk-rotated-2"]);
    let err = client.complete(ask("two")).await.unwrap_err();
    assert_eq!(err.kind(), "auth");
    assert!(err.to_string().contains("provider keyed"), "{err}");

    std::fs::write(&path, "sk-rotated-2\n").unwrap();
    let stream = drain(&client, ask("three")).await;
    assert!(stream.iter().all(Result::is_ok));
    let auth = mock.auth_headers();
    assert_eq!(auth[0].as_deref(), Some("Bearer sk-old"));
    assert_eq!(auth[1].as_deref(), Some("Bearer sk-old"));
    assert_eq!(auth[2].as_deref(), Some("Bearer sk-rotated-2"));
    mock.shutdown().await;
}

#[tokio::test]
async fn stream_cut_after_three_chunks_yields_an_error_event() {
    let rule = Rule {
        cut_after_chunks: Some(3),
        ..Rule::reply("one two three four five")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let usage = collect_usage(&client);
    let items = drain(&client, ask("hi")).await;
    assert_eq!(items.len(), 4, "{items:?}");
    assert!(items[..3]
        .iter()
        .all(|i| matches!(i, Ok(LlmEvent::Delta(_)))));
    assert_eq!(items[3].as_ref().unwrap_err().kind(), "stream");
    let reports = usage.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(reports[0].outcome, UsageOutcome::Failed);
    assert!(reports[0].estimated);
    assert_eq!(reports[0].usage.completion_tokens, 4); // "one two three " is 14 chars
    mock.shutdown().await;
}

#[tokio::test]
async fn dropped_stream_is_cancelled_upstream_and_its_partial_usage_reported() {
    let rule = Rule {
        delay_ms: Some(50),
        ..Rule::reply("a b c d e f g h i j k l m n o p")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let mut config = config_for(&mock, "local");
    config.prices.insert(
        "m1".into(),
        Price {
            input_per_mtok: 1_000_000.0,
            output_per_mtok: 1_000_000.0,
        },
    );
    let client = LlmClient::new(config).unwrap();
    let usage = collect_usage(&client);
    let mut stream = client.stream(ask("count to twenty")).await.unwrap();
    assert_eq!(
        stream.next().await.unwrap().unwrap(),
        LlmEvent::Delta("a ".into())
    );
    assert_eq!(mock.cancelled(), 0);
    drop(stream);
    eventually("mock sees the cancellation", Duration::from_secs(1), || {
        mock.cancelled() == 1
    })
    .await;
    let reports = usage.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    let report = &reports[0];
    assert_eq!(
        (report.outcome, report.estimated),
        (UsageOutcome::Dropped, true)
    );
    assert_eq!(report.provider, "local");
    // "count to twenty" is 15 characters: 4 tokens; "a " is 1.
    assert_eq!(
        (report.usage.prompt_tokens, report.usage.completion_tokens),
        (4, 1)
    );
    assert!((report.usage.cost_usd - 5.0).abs() < 1e-9);
    mock.shutdown().await;
}

#[tokio::test]
async fn japanese_split_inside_characters_arrives_byte_exact() {
    let text = "東京の天気は晴れです。 明日は雨が降るでしょう。 ありがとう";
    let rule = Rule {
        split_utf8: true,
        ..Rule::reply(text)
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let events: Vec<LlmEvent> = drain(&client, ask("天気は?"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let content = CompletionBuilder::from_events(&events).content;
    assert_eq!(content.as_bytes(), text.as_bytes());
    mock.shutdown().await;
}

#[tokio::test]
async fn circuit_opens_skips_provider_probes_after_cooldown_and_closes() {
    let flaky = mock(MockConfig::new("m1").with_rule(Rule::status(500).times(3))).await;
    let healthy = mock(MockConfig::new("m1").with_rule(Rule::reply("from the backup"))).await;
    let mut config = config_for(&flaky, "primary");
    config.max_attempts = 1;
    config.circuit_failures = 2;
    config.circuit_cooldown = Duration::from_millis(400);
    config.providers.push(backup(&healthy, "backup", 1));
    let client = LlmClient::new(config).unwrap();
    let state = |client: &LlmClient| client.circuit_states()[0].1;
    let answer =
        |client: LlmClient| async move { client.complete(ask("hi")).await.unwrap().content };

    for expected in [CircuitState::Closed, CircuitState::Open] {
        assert_eq!(answer(client.clone()).await, "from the backup");
        assert_eq!(state(&client), expected);
    }
    assert_eq!(flaky.requests().len(), 2);
    // Open: the primary is skipped, not asked.
    assert_eq!(answer(client.clone()).await, "from the backup");
    assert_eq!(flaky.requests().len(), 2);

    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(state(&client), CircuitState::HalfOpen);
    // The probe fails (third 500): open again, the next call skips it at once.
    assert_eq!(answer(client.clone()).await, "from the backup");
    assert_eq!(flaky.requests().len(), 3);
    assert_eq!(state(&client), CircuitState::Open);
    answer(client.clone()).await;
    assert_eq!(flaky.requests().len(), 3);

    tokio::time::sleep(Duration::from_millis(450)).await;
    let probe = answer(client.clone()).await;
    assert!(probe.starts_with("This is the mock LLM"), "{probe}");
    assert_eq!(state(&client), CircuitState::Closed);
    assert_eq!(
        client.circuit_states()[1],
        ("backup".into(), CircuitState::Closed)
    );
    flaky.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn every_circuit_open_is_a_503_with_a_retry_hint() {
    let broken = mock(MockConfig::new("m1").with_rule(Rule::status(502))).await;
    let mut config = config_for(&broken, "only");
    config.max_attempts = 1;
    config.circuit_failures = 1;
    let client = LlmClient::new(config).unwrap();
    let first = client.complete(ask("hi")).await.unwrap_err();
    assert!(
        matches!(first, LlmError::Upstream { status: 502, .. }),
        "{first}"
    );
    let err = client.stream(ask("hi")).await.err().unwrap();
    assert!(matches!(err, LlmError::CircuitOpen { .. }), "{err}");
    assert_eq!((err.http_status(), err.kind()), (503, "circuit_open"));
    assert_eq!(err.provider(), Some("only"));
    let hint = err.retry_after().unwrap();
    assert!(
        hint > Duration::from_secs(25) && hint <= Duration::from_secs(30),
        "{hint:?}"
    );
    assert_eq!(broken.requests().len(), 1);
    broken.shutdown().await;
}

#[tokio::test]
async fn missing_stream_usage_is_estimated_and_cost_uses_the_answering_model() {
    let rule = Rule {
        omit_usage: true,
        response_model: Some("m1-2025-01-01".into()),
        ..Rule::reply("twelve chars")
    };
    let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
    let mut config = config_for(&mock, "local");
    let price = |per| Price {
        input_per_mtok: per,
        output_per_mtok: per,
    };
    config.prices.insert("m1".into(), price(1_000_000.0));
    config
        .prices
        .insert("m1-2025-01-01".into(), price(2_000_000.0));
    let client = LlmClient::new(config).unwrap();
    let usage = collect_usage(&client);

    let events: Vec<LlmEvent> = drain(&client, ask("hello"))
        .await
        .into_iter()
        .map(Result::unwrap)
        .collect();
    let LlmEvent::Usage(estimated) = events[events.len() - 2] else {
        panic!("no usage before done: {events:?}");
    };
    // "hello": 2 tokens; "twelve chars": 3 tokens; priced as the answering model.
    assert_eq!(
        (estimated.prompt_tokens, estimated.completion_tokens),
        (2, 3)
    );
    assert!((estimated.cost_usd - 10.0).abs() < 1e-9, "{estimated:?}");
    let report = usage.lock().unwrap()[0].clone();
    assert_eq!(
        (report.outcome, report.estimated),
        (UsageOutcome::Finished, true)
    );
    assert_eq!(report.model, "m1-2025-01-01");

    // A whole answer with usage from the provider: not estimated, same pricing rule.
    let whole = client.complete(ask("two words")).await.unwrap();
    assert_eq!(whole.model, "m1-2025-01-01");
    assert_eq!(
        (whole.usage.prompt_tokens, whole.usage.completion_tokens),
        (2, 2)
    );
    assert!(
        (whole.usage.cost_usd - 8.0).abs() < 1e-9,
        "{:?}",
        whole.usage
    );
    let report = usage.lock().unwrap()[1].clone();
    assert!(!report.estimated);
    mock.shutdown().await;
}

#[tokio::test]
async fn hung_provider_without_streaming_fails_over_on_first_byte_limit() {
    let hung = mock(MockConfig::new("m1").with_rule(Rule {
        hang: true,
        ..Rule::default()
    }))
    .await;
    let healthy = mock(MockConfig::new("m1").with_rule(Rule::reply("from the backup"))).await;
    let mut config = config_for(&hung, "hung");
    config.first_token_timeout = Duration::from_millis(300);
    config.max_attempts = 2;
    config.providers.push(backup(&healthy, "backup", 1));
    let client = LlmClient::new(config).unwrap();
    let started = Instant::now();
    assert_eq!(
        client.complete(ask("hi")).await.unwrap().content,
        "from the backup"
    );
    let took = started.elapsed();
    assert!(
        took >= Duration::from_millis(600) && took < Duration::from_secs(3),
        "{took:?}"
    );
    assert_eq!(hung.requests().len(), 2);
    eventually(
        "abandoned requests seen as cancelled",
        Duration::from_secs(1),
        || hung.cancelled() == 2,
    )
    .await;
    hung.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn caller_deadline_bounds_every_attempt() {
    let slow = Rule {
        first_byte_delay_ms: Some(5_000),
        ..Rule::reply("too late")
    };
    let mock = mock(MockConfig::new("m1").with_rule(slow)).await;
    let client = LlmClient::new(config_for(&mock, "slow")).unwrap();
    for streamed in [false, true] {
        let req = CompletionRequest {
            deadline: Some(Instant::now() + Duration::from_millis(400)),
            ..ask("hi")
        };
        let started = Instant::now();
        let err = if streamed {
            client.stream(req).await.err().unwrap()
        } else {
            client.complete(req).await.unwrap_err()
        };
        let took = started.elapsed();
        assert!(
            matches!(
                err,
                LlmError::Timeout {
                    what: "deadline",
                    ..
                }
            ),
            "{err}"
        );
        assert_eq!(err.http_status(), 504);
        assert!(
            took >= Duration::from_millis(390) && took < Duration::from_millis(1500),
            "{took:?}"
        );
    }
    // One attempt each: no retry can fit in what is left of the caller's deadline.
    assert_eq!(mock.requests().len(), 2);
    mock.shutdown().await;
}

#[tokio::test]
async fn parallel_tool_calls_assemble_in_every_delta_style() {
    for style in [
        ToolDeltas::Single,
        ToolDeltas::Split,
        ToolDeltas::Interleaved,
    ] {
        let mut rule = Rule::tool_call("search_documents", serde_json::json!({"query": "pods"}));
        rule.tool_calls.push(agentmesh_mock_llm::MockToolCall {
            name: "query_data".into(),
            arguments: serde_json::json!({"sql": "select count(*) from orders"}),
        });
        rule.tool_deltas = style;
        let mock = mock(MockConfig::new("m1").with_rule(rule)).await;
        let client = LlmClient::new(config_for(&mock, "local")).unwrap();
        let mut req = ask("how many?");
        for name in ["search_documents", "query_data"] {
            req.tools.push(ToolSpec {
                name: name.into(),
                description: String::new(),
                parameters: serde_json::json!({"type": "object"}),
            });
        }
        let events: Vec<LlmEvent> = drain(&client, req)
            .await
            .into_iter()
            .map(Result::unwrap)
            .collect();
        let pieces = events
            .iter()
            .filter(|e| matches!(e, LlmEvent::ToolCall { .. }))
            .count();
        let calls = CompletionBuilder::from_events(&events).tool_calls;
        assert_eq!(calls.len(), 2, "{style:?}");
        assert_eq!(calls[0].name, "search_documents", "{style:?}");
        assert_eq!(calls[0].arguments, r#"{"query":"pods"}"#, "{style:?}");
        assert_eq!(calls[1].name, "query_data", "{style:?}");
        assert_eq!(
            calls[1].arguments, r#"{"sql":"select count(*) from orders"}"#,
            "{style:?}"
        );
        assert!(calls[0].id.starts_with("call_") && calls[0].id != calls[1].id);
        match style {
            ToolDeltas::Single => assert_eq!(pieces, 2),
            ToolDeltas::Split => assert_eq!(pieces, 6),
            ToolDeltas::Interleaved => assert!(pieces > 10, "{pieces}"),
        }
        mock.shutdown().await;
    }
}

#[tokio::test]
async fn configuration_file_drives_the_client() {
    let mock = mock(MockConfig::new("m1").with_rule(Rule::reply("configured"))).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("agentmesh.toml");
    let text = format!(
        "[llm]\ndefault_model = \"m1\"\ntimeouts = {{ total = \"10s\" }}\n\
         [[llm.providers]]\nname = \"from-file\"\nbase_url = \"{}\"\nmodels = [\"m1\"]\n",
        mock.base_url()
    );
    std::fs::write(&path, text).unwrap();
    let config = LlmConfig::load(Some(&path)).unwrap().unwrap();
    assert_eq!(config.total_timeout, Duration::from_secs(10));
    let client = LlmClient::new(config).unwrap();
    assert_eq!(
        client.complete(ask("hi")).await.unwrap().content,
        "configured"
    );

    std::fs::write(&path, "[llm]\nproviders = []\nretries = 3\n").unwrap();
    let err = LlmConfig::load(Some(&path)).unwrap_err().to_string();
    assert!(
        err.contains("retries") && err.contains("agentmesh.toml"),
        "{err}"
    );
    let missing = LlmConfig::load(Some(&dir.path().join("nope.toml"))).unwrap_err();
    assert!(missing.to_string().contains("nope.toml"), "{missing}");
    mock.shutdown().await;
}
