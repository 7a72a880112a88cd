//! Two gateway replicas sharing one Postgres database and one Redis prefix: per-key
//! limits and budgets hold exactly across both, whichever replica a request lands on,
//! and a key rotated on one replica keeps its limit window and spend on the other.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use agentmesh_state::testing::{cleanup_redis, fresh_postgres, TestDb};
use agentmesh_state::State;
use helpers::{chat_body, error_of, start_on, Options, TestGateway, ADMIN_KEY};
use serde_json::{json, Value};

/// Two gateways over the same database and Redis prefix, each with its own fake agents.
async fn replicas() -> (TestGateway, TestGateway, TestDb, String) {
    let db = fresh_postgres().await;
    let config = db.state_config();
    let mut gateways = Vec::new();
    for _ in 0..2 {
        let state = State::connect(&config).await.unwrap();
        let dir = tempfile::tempdir().unwrap();
        gateways.push(start_on(state, dir, Options::default()).await);
    }
    let b = gateways.pop().unwrap();
    let a = gateways.pop().unwrap();
    (a, b, db, config.redis_prefix)
}

type Answer = (u16, reqwest::header::HeaderMap, String);

/// `n` concurrent requests sent alternately to `a` and `b`; every rate-limit 429
/// must carry Retry-After.
async fn burst(a: &TestGateway, b: &TestGateway, key: &str, body: Value, n: usize) -> Vec<Answer> {
    let calls = (0..n).map(|i| {
        let gw = if i % 2 == 0 { a } else { b };
        let body = body.clone();
        async move {
            let response = gw.post("/v1/chat/completions", key, body).await;
            let status = response.status().as_u16();
            let headers = response.headers().clone();
            (status, headers, response.text().await.unwrap())
        }
    });
    let answers = futures::future::join_all(calls).await;
    for (status, headers, text) in &answers {
        assert!(*status == 200 || *status == 429, "{status}: {text}");
        // A spent budget has no time to retry after: TODO(gaps.md#budget-retry-after).
        if *status == 429 && !text.contains("budget_exceeded") {
            assert!(
                headers.contains_key("retry-after"),
                "429 without Retry-After: {text}"
            );
        }
    }
    answers
}

fn count(answers: &[Answer], status: u16) -> usize {
    answers.iter().filter(|(s, _, _)| *s == status).count()
}

fn statuses(answers: &[Answer]) -> Vec<u16> {
    answers.iter().map(|(s, _, _)| *s).collect()
}

/// A body whose agent answer takes `slow_ms` (so every admission of a burst happens
/// before any request settles) and whose token estimate is exactly 100.
fn slow_body(slow_ms: u32) -> Value {
    let prompt = format!("slow:{slow_ms}");
    assert_eq!(prompt.len(), 9, "the estimate below assumes 9 characters");
    let mut body = chat_body("chat", &prompt);
    // 9 characters / 4 + 1 = 3 prompt tokens, plus 97 completion tokens: 100.
    body["max_tokens"] = json!(97);
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_limit_holds_across_replicas() {
    let (a, b, db, prefix) = replicas().await;
    let (_, key) = a.create_key(json!({"name": "rpm", "rpm_limit": 10})).await;

    let answers = burst(&a, &b, &key, chat_body("chat", "hi"), 30).await;
    assert_eq!(count(&answers, 200), 10, "{:?}", statuses(&answers));
    assert_eq!(count(&answers, 429), 20, "{:?}", statuses(&answers));

    for gw in [&a, &b] {
        let limited = gw
            .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
            .await;
        let headers = limited.headers().clone();
        assert_eq!(headers["x-ratelimit-limit-requests"], "10");
        assert_eq!(headers["x-ratelimit-remaining-requests"], "0");
        assert!(headers.contains_key("x-ratelimit-reset-requests"));
        let retry: u64 = headers["retry-after"].to_str().unwrap().parse().unwrap();
        assert!((1..=60).contains(&retry), "{retry}");
        assert_eq!(error_of(limited, 429).await["code"], "rate_limit_exceeded");
    }
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_limit_holds_across_replicas() {
    let (a, b, db, prefix) = replicas().await;
    // Each request is estimated at 100 tokens: 5 fit in 550, the 6th would need 600.
    let (_, key) = a.create_key(json!({"name": "tpm", "tpm_limit": 550})).await;

    let answers = burst(&a, &b, &key, slow_body(3000), 30).await;
    assert_eq!(count(&answers, 200), 5, "{:?}", statuses(&answers));
    assert_eq!(count(&answers, 429), 25, "{:?}", statuses(&answers));
    for (status, headers, text) in answers.iter().filter(|(s, _, _)| *s == 429) {
        assert_eq!(headers["x-ratelimit-limit-tokens"], "550", "{status}");
        let remaining: u64 = headers["x-ratelimit-remaining-tokens"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(remaining < 100, "{remaining}");
        assert!(text.contains("550 tokens"), "{text}");
    }
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}

/// The fake agent charges $0.001 a request and the gateway reserves $0.001 for a key
/// it has not seen cost yet, so a budget of $0.0045 admits exactly 4 requests, however
/// many arrive at once on however many replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn budget_holds_across_replicas() {
    let (a, b, db, prefix) = replicas().await;
    let (_, key) = a
        .create_key(json!({"name": "budget", "budget_usd": 0.0045}))
        .await;

    let answers = burst(&a, &b, &key, slow_body(2000), 30).await;
    assert_eq!(count(&answers, 200), 4, "{:?}", statuses(&answers));
    assert_eq!(count(&answers, 429), 26, "{:?}", statuses(&answers));

    let refused = a
        .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
        .await;
    assert_eq!(error_of(refused, 429).await["code"], "budget_exceeded");
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}

async fn rotate(gw: &TestGateway, id: &str) -> String {
    let response = gw
        .post(&format!("/admin/keys/{id}/rotate"), ADMIN_KEY, json!({}))
        .await;
    assert_eq!(response.status(), 200);
    let value: Value = response.json().await.unwrap();
    value["key"].as_str().unwrap().to_string()
}

async fn status(gw: &TestGateway, key: &str) -> u16 {
    gw.post("/v1/chat/completions", key, chat_body("chat", "hi"))
        .await
        .status()
        .as_u16()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotation_keeps_limit_window_and_spend_across_replicas() {
    let (a, b, db, prefix) = replicas().await;

    let (id, old) = a.create_key(json!({"name": "rpm", "rpm_limit": 5})).await;
    for _ in 0..3 {
        assert_eq!(status(&a, &old).await, 200);
    }
    assert_eq!(status(&b, &old).await, 200, "b has the old secret cached");
    let new = rotate(&a, &id).await;
    let stale = b
        .post("/v1/chat/completions", &old, chat_body("chat", "hi"))
        .await;
    assert_eq!(error_of(stale, 401).await["code"], "invalid_api_key");
    assert_eq!(status(&b, &new).await, 200, "the 5th request of the window");
    let limited = b
        .post("/v1/chat/completions", &new, chat_body("chat", "hi"))
        .await;
    assert_eq!(limited.headers()["x-ratelimit-remaining-requests"], "0");
    assert_eq!(error_of(limited, 429).await["code"], "rate_limit_exceeded");

    let (id, old) = a
        .create_key(json!({"name": "budget", "budget_usd": 0.0025}))
        .await;
    assert_eq!(status(&a, &old).await, 200);
    assert_eq!(status(&a, &old).await, 200);
    let new = rotate(&a, &id).await;
    let refused = b
        .post("/v1/chat/completions", &new, chat_body("chat", "hi"))
        .await;
    let error = error_of(refused, 429).await;
    assert_eq!(error["code"], "budget_exceeded", "{error}");
    assert!(
        error["message"].as_str().unwrap().contains("$0.0020"),
        "{error}"
    );
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}
