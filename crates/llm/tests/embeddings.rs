//! Embeddings against the mock provider over real HTTP: the same retry, fallback, circuit,
//! key and timeout policies as chat.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use agentmesh_llm::{
    CircuitState, EmbedRequest, LlmClient, LlmConfig, LlmError, Price, ProviderConfig, UsageReport,
};
use agentmesh_mock_llm::{MockConfig, MockLlm, RetryAfter, Rule};

const MODEL: &str = "e1";

async fn mock(config: MockConfig) -> MockLlm {
    let addr: SocketAddr = "127.0.0.1:0".parse().unwrap();
    MockLlm::start(addr, config).await.unwrap()
}

fn provider(mock: &MockLlm, name: &str, priority: u32) -> ProviderConfig {
    let mut p = LlmConfig::single(name, &mock.base_url(), "m1")
        .providers
        .remove(0);
    p.models = vec!["m1".into(), MODEL.into()];
    p.priority = priority;
    p
}

fn config_for(mock: &MockLlm, name: &str) -> LlmConfig {
    let mut config = LlmConfig::single(name, &mock.base_url(), "m1");
    config.providers = vec![provider(mock, name, 0)];
    config.first_token_timeout = Duration::from_secs(5);
    config.idle_timeout = Duration::from_secs(2);
    config.total_timeout = Duration::from_secs(20);
    config.backoff_base = Duration::from_millis(5);
    config.backoff_cap = Duration::from_millis(20);
    config
}

fn texts(inputs: &[&str]) -> EmbedRequest {
    EmbedRequest {
        model: MODEL.into(),
        input: inputs.iter().map(|t| t.to_string()).collect(),
        ..EmbedRequest::default()
    }
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    a.iter().zip(b).map(|(x, y)| x * y).sum()
}

#[tokio::test]
async fn several_inputs_come_back_in_order_with_usage_and_cost() {
    let mock = mock(MockConfig::new("m1")).await;
    let mut config = config_for(&mock, "local");
    let price = Price {
        input_per_mtok: 1_000_000.0,
        output_per_mtok: 5_000_000.0,
    };
    config.prices.insert(MODEL.into(), price);
    let client = LlmClient::new(config).unwrap();
    let seen: Arc<Mutex<Vec<UsageReport>>> = Arc::default();
    let sink = seen.clone();
    client.on_usage(move |r| sink.lock().unwrap().push(r));

    let inputs = [
        "restart a crashed pod",
        "quarterly beverage sales by region",
        "how to restart the pod",
    ];
    let answer = client.embed(texts(&inputs)).await.unwrap();
    assert_eq!(answer.provider, "local");
    assert_eq!(answer.model, MODEL);
    assert_eq!(answer.vectors.len(), 3);
    assert!(answer.vectors.iter().all(|v| v.len() == 256));
    // Same order as the input: each vector is the mock's vector of that text.
    for (text, vector) in inputs.iter().zip(&answer.vectors) {
        assert_eq!(vector, &agentmesh_mock_llm::embedding(text, 256));
    }
    let (pod, sales, restart) = (&answer.vectors[0], &answer.vectors[1], &answer.vectors[2]);
    assert!(cosine(pod, restart) > cosine(pod, sales) + 0.2);
    // The mock counts words: 4 + 5 + 5 prompt tokens, priced as input only.
    assert_eq!(
        (answer.usage.prompt_tokens, answer.usage.completion_tokens),
        (14, 0)
    );
    assert!((answer.usage.cost_usd - 14.0).abs() < 1e-9);
    let reports = seen.lock().unwrap().clone();
    assert_eq!(reports.len(), 1);
    assert_eq!(
        (reports[0].usage, reports[0].estimated),
        (answer.usage, false)
    );

    let body = &mock.requests()[0];
    assert_eq!(body["model"], MODEL);
    assert_eq!(body["input"][2], "how to restart the pod");
    assert!(body.get("messages").is_none());

    let mut asked = texts(&["one"]);
    asked.dimensions = Some(16);
    assert_eq!(client.embed(asked).await.unwrap().vectors[0].len(), 16);
    mock.shutdown().await;
}

#[tokio::test]
async fn no_input_asks_nothing_and_an_unserved_model_is_refused() {
    let mock = mock(MockConfig::new("m1")).await;
    let client = LlmClient::new(config_for(&mock, "local")).unwrap();
    let empty = client.embed(texts(&[])).await.unwrap();
    assert!(empty.vectors.is_empty());
    let mut other = texts(&["x"]);
    other.model = "text-embedding-9".into();
    let err = client.embed(other).await.unwrap_err();
    assert_eq!((err.kind(), err.http_status()), ("unknown_model", 400));
    other = texts(&["x"]);
    other.model = " ".into();
    assert_eq!(
        client.embed(other).await.unwrap_err().kind(),
        "unknown_model"
    );
    assert!(mock.requests().is_empty());
    mock.shutdown().await;
}

#[tokio::test]
async fn three_429s_with_retry_after_are_waited_out() {
    let mut config = MockConfig::new("m1");
    for secs in [1, 0, 1] {
        let mut limited = Rule::status(429).times(1);
        limited.retry_after = Some(RetryAfter::Seconds(secs));
        config = config.with_rule(limited);
    }
    let mock = mock(config).await;
    let mut client_config = config_for(&mock, "busy");
    client_config.max_attempts = 4;
    let client = LlmClient::new(client_config).unwrap();

    let started = Instant::now();
    let answer = client.embed(texts(&["a", "b"])).await.unwrap();
    assert_eq!(answer.vectors.len(), 2);
    assert_eq!(mock.requests().len(), 4);
    let arrivals = mock.arrivals();
    let gap = |i: usize| arrivals[i + 1] - arrivals[i];
    assert!(gap(0) >= Duration::from_secs(1), "{:?}", gap(0));
    assert!(gap(1) < Duration::from_millis(500), "{:?}", gap(1));
    assert!(gap(2) >= Duration::from_secs(1), "{:?}", gap(2));
    assert!(started.elapsed() >= Duration::from_secs(2));
    mock.shutdown().await;
}

#[tokio::test]
async fn rejected_key_falls_back_and_the_last_error_names_its_provider() {
    let refusing = mock(MockConfig::new("m1").with_rule(Rule::status(401))).await;
    let healthy = mock(MockConfig::new("m1")).await;
    let mut config = config_for(&refusing, "first");
    config.providers.push(provider(&healthy, "second", 1));
    let client = LlmClient::new(config).unwrap();
    let answer = client.embed(texts(&["hello"])).await.unwrap();
    assert_eq!(answer.provider, "second");
    assert_eq!(
        (refusing.requests().len(), healthy.requests().len()),
        (1, 1)
    );

    let also_refusing = mock(MockConfig::new("m1").with_rule(Rule::status(403))).await;
    let mut config = config_for(&refusing, "first");
    config.providers.push(provider(&also_refusing, "second", 1));
    let client = LlmClient::new(config).unwrap();
    let err = client.embed(texts(&["hello"])).await.unwrap_err();
    assert!(matches!(err, LlmError::Auth { status: 403, .. }), "{err}");
    assert!(
        err.to_string()
            .starts_with("provider second rejected our API key"),
        "{err}"
    );
    assert_eq!(err.http_status(), 502);
    assert_eq!(refusing.requests().len(), 2);
    refusing.shutdown().await;
    healthy.shutdown().await;
    also_refusing.shutdown().await;
}

#[tokio::test]
async fn bad_request_is_passed_back_without_retry_or_fallback() {
    let strict = mock(MockConfig::new("m1")).await;
    let backup = mock(MockConfig::new("m1")).await;
    let mut config = config_for(&strict, "strict");
    config.providers.push(provider(&backup, "backup", 1));
    let client = LlmClient::new(config).unwrap();
    let mut asked = texts(&["x"]);
    asked.dimensions = Some(0); // the mock refuses it with a 400 naming the field
    let err = client.embed(asked).await.unwrap_err();
    assert!(matches!(err, LlmError::BadRequest { .. }), "{err}");
    assert_eq!(err.http_status(), 400);
    assert!(err.to_string().contains("dimensions must be"), "{err}");
    assert_eq!((strict.requests().len(), backup.requests().len()), (1, 0));
    strict.shutdown().await;
    backup.shutdown().await;
}

#[tokio::test]
async fn too_few_vectors_is_a_typed_error_and_falls_back() {
    let short = Rule {
        embeddings_short_by: Some(1),
        ..Rule::default()
    };
    let broken = mock(MockConfig::new("m1").with_rule(short)).await;
    let mut config = config_for(&broken, "broken");
    let client = LlmClient::new(config.clone()).unwrap();
    let err = client.embed(texts(&["a", "b", "c"])).await.unwrap_err();
    assert!(matches!(err, LlmError::InvalidResponse { .. }), "{err}");
    assert_eq!(
        err.to_string(),
        "provider broken sent an answer we cannot read: 2 vectors for 3 inputs"
    );
    assert_eq!(broken.requests().len(), 1);

    let healthy = mock(MockConfig::new("m1")).await;
    config.providers.push(provider(&healthy, "healthy", 1));
    let client = LlmClient::new(config).unwrap();
    let answer = client.embed(texts(&["a", "b", "c"])).await.unwrap();
    assert_eq!(
        (answer.provider.as_str(), answer.vectors.len()),
        ("healthy", 3)
    );
    broken.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn hung_provider_times_out_naming_the_limit_then_falls_over() {
    let hang = Rule {
        hang: true,
        ..Rule::default()
    };
    let hung = mock(MockConfig::new("m1").with_rule(hang)).await;
    let mut config = config_for(&hung, "hung");
    config.first_token_timeout = Duration::from_millis(300);
    config.max_attempts = 1;
    let client = LlmClient::new(config.clone()).unwrap();
    let started = Instant::now();
    let err = client.embed(texts(&["a"])).await.unwrap_err();
    assert!(
        matches!(
            err,
            LlmError::Timeout {
                what: "first byte",
                ..
            }
        ),
        "{err}"
    );
    assert_eq!(
        err.to_string(),
        "provider hung timed out: first byte took longer than 0.3s"
    );
    assert!(started.elapsed() < Duration::from_secs(2));

    // The caller's deadline, when tighter, is the one named.
    config.first_token_timeout = Duration::from_secs(10);
    let client = LlmClient::new(config.clone()).unwrap();
    let mut asked = texts(&["a"]);
    asked.deadline = Some(std::time::Instant::now() + Duration::from_millis(250));
    let err = client.embed(asked).await.unwrap_err();
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

    let healthy = mock(MockConfig::new("m1")).await;
    config.first_token_timeout = Duration::from_millis(300);
    config.providers.push(provider(&healthy, "healthy", 1));
    let client = LlmClient::new(config).unwrap();
    assert_eq!(
        client.embed(texts(&["a"])).await.unwrap().provider,
        "healthy"
    );
    hung.shutdown().await;
    healthy.shutdown().await;
}

#[tokio::test]
async fn circuit_opened_by_chat_or_embeddings_skips_the_provider() {
    let flaky = mock(MockConfig::new("m1").with_rule(Rule::status(500).times(2))).await;
    let healthy = mock(MockConfig::new("m1")).await;
    let mut config = config_for(&flaky, "primary");
    config.max_attempts = 1;
    config.circuit_failures = 2;
    config.circuit_cooldown = Duration::from_millis(400);
    config.providers.push(provider(&healthy, "backup", 1));
    let client = LlmClient::new(config).unwrap();
    let state = |client: &LlmClient| client.circuit_states()[0].1;

    for expected in [CircuitState::Closed, CircuitState::Open] {
        let answer = client.embed(texts(&["a"])).await.unwrap();
        assert_eq!(answer.provider, "backup");
        assert_eq!(state(&client), expected);
    }
    // Open: skipped, not asked.
    client.embed(texts(&["a"])).await.unwrap();
    assert_eq!(flaky.requests().len(), 2);

    tokio::time::sleep(Duration::from_millis(450)).await;
    let probe = client.embed(texts(&["a"])).await.unwrap();
    assert_eq!(probe.provider, "primary");
    assert_eq!(state(&client), CircuitState::Closed);

    // With no other provider, an open circuit is a 503 with a retry hint.
    let broken = mock(MockConfig::new("m1").with_rule(Rule::status(502))).await;
    let mut config = config_for(&broken, "only");
    config.max_attempts = 1;
    config.circuit_failures = 1;
    let client = LlmClient::new(config).unwrap();
    let first = client.embed(texts(&["a"])).await.unwrap_err();
    assert!(
        matches!(first, LlmError::Upstream { status: 502, .. }),
        "{first}"
    );
    let err = client.embed(texts(&["a"])).await.unwrap_err();
    assert_eq!((err.kind(), err.http_status()), ("circuit_open", 503));
    assert!(err.retry_after().is_some());
    assert_eq!(broken.requests().len(), 1);
    flaky.shutdown().await;
    healthy.shutdown().await;
    broken.shutdown().await;
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
    client.embed(texts(&["one"])).await.unwrap();

    mock.set_api_keys(&["sk-rotated-2"]);
    let err = client.embed(texts(&["two"])).await.unwrap_err();
    assert_eq!(err.kind(), "auth");
    assert!(err.to_string().contains("provider keyed"), "{err}");

    std::fs::write(&path, "sk-rotated-2\n").unwrap();
    client.embed(texts(&["three"])).await.unwrap();
    let auth = mock.auth_headers();
    assert_eq!(auth[1].as_deref(), Some("Bearer sk-old"));
    assert_eq!(auth[2].as_deref(), Some("Bearer sk-rotated-2"));
    mock.shutdown().await;
}

#[tokio::test]
async fn rules_select_embeddings_by_their_text() {
    let mut limited = Rule::status(503).when_last_user("flaky").times(1);
    limited.message = Some("overloaded".into());
    let mock = mock(MockConfig::new("m1").with_rule(limited)).await;
    let mut config = config_for(&mock, "local");
    config.max_attempts = 1;
    let client = LlmClient::new(config).unwrap();
    client.embed(texts(&["steady text"])).await.unwrap();
    let err = client
        .embed(texts(&["a", "a FLAKY one"]))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "provider local failed with status 503: overloaded"
    );
    mock.shutdown().await;
}
