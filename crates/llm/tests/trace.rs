//! The LLM call's span: GenAI attributes, one child span per attempt, `retry` and
//! `fallback` events, and the matching metrics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_llm::{ChatMessage, CompletionRequest, LlmClient, LlmConfig};
use agentmesh_mock_llm::{MockConfig, MockLlm, Rule};
use agentmesh_telemetry::testing::OtlpReceiver;
use std::time::Duration;

async fn mock(config: MockConfig) -> MockLlm {
    MockLlm::start("127.0.0.1:0".parse().unwrap(), config)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_fallbacks_are_recorded_on_the_llm_span() {
    let receiver = OtlpReceiver::http().await.unwrap();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    let telemetry = agentmesh_telemetry::init("llm-trace-test");

    // "first" answers the first call's first attempt with 503 (a retry), and the second
    // call always with 500 (retries, then a fallback to "second").
    let first_rules = MockConfig::new("m1")
        .with_rule(Rule::status(503).times(1).when_last_user("hello"))
        .with_rule(Rule::status(500).when_last_user("switch"));
    let first = mock(first_rules).await;
    let second = mock(MockConfig::new("m1")).await;
    let mut config = LlmConfig::single("first", &first.base_url(), "m1");
    let mut backup = config.providers[0].clone();
    backup.name = "second".into();
    backup.base_url = second.base_url();
    backup.priority = 9;
    config.providers.push(backup);
    config.backoff_base = Duration::from_millis(5);
    config.backoff_cap = Duration::from_millis(10);
    let client = LlmClient::new(config).unwrap();
    let request = |text: &str| CompletionRequest {
        messages: vec![ChatMessage::new("user", text)],
        ..CompletionRequest::default()
    };

    let answer = client.complete(request("hello")).await.unwrap();
    assert!(!answer.content.is_empty());
    let answer = client.complete(request("switch")).await.unwrap();
    assert!(!answer.content.is_empty());

    let metrics = agentmesh_telemetry::metrics::render();
    assert!(
        metrics.contains("agentmesh_llm_retries_total{provider=\"first\""),
        "{metrics}"
    );
    assert!(
        metrics.contains("agentmesh_llm_fallbacks_total{provider=\"first\""),
        "{metrics}"
    );
    assert!(
        metrics.contains(
            "agentmesh_llm_requests_total{provider=\"second\",model=\"m1\",outcome=\"ok\"}"
        ),
        "{metrics}"
    );
    telemetry.shutdown();

    let spans = receiver.spans();
    let calls: Vec<_> = spans.iter().filter(|s| s.name == "chat m1").collect();
    assert_eq!(calls.len(), 2, "{spans:#?}");
    let has = |span: &&&agentmesh_telemetry::testing::ReceivedSpan, event: &str| {
        span.events.iter().any(|(name, _)| name == event)
    };
    let retried = calls
        .iter()
        .find(|s| has(s, "retry") && !has(s, "fallback"))
        .expect("a call retried on its provider");
    assert_eq!(retried.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(retried.attr("gen_ai.request.model"), Some("m1"));
    assert_eq!(retried.attr("gen_ai.provider.name"), Some("first"));
    assert!(
        retried.attr("gen_ai.usage.input_tokens").is_some(),
        "{retried:?}"
    );
    let attempts = spans
        .iter()
        .filter(|s| s.parent_span_id == retried.span_id)
        .count();
    assert_eq!(attempts, 2, "two attempts on the first provider");

    let fell_back = calls
        .iter()
        .find(|s| has(s, "fallback"))
        .expect("a fallback event");
    assert_eq!(fell_back.attr("gen_ai.provider.name"), Some("second"));
    let (_, attributes) = fell_back
        .events
        .iter()
        .find(|(name, _)| name == "fallback")
        .unwrap();
    assert_eq!(
        attributes.get("gen_ai.provider.name").map(String::as_str),
        Some("first")
    );
}
