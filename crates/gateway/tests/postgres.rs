//! The gateway on Postgres + Redis (the distributed mode), including a database outage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use agentmesh_state::testing::{cleanup_redis, fresh_postgres, fresh_redis_prefix, redis_url};
use agentmesh_state::State;
use helpers::{chat_body, error_of, start_on, Options, ADMIN_KEY};
use serde_json::{json, Value};

#[tokio::test]
async fn distributed_state_then_database_outage() {
    let db = fresh_postgres().await;
    let prefix = fresh_redis_prefix();
    let mut config = db.state_config();
    config.redis_url = Some(redis_url());
    config.redis_prefix = prefix.clone();
    let state = State::connect(&config).await.unwrap();
    let gw = start_on(state, tempfile::tempdir().unwrap(), Options::default()).await;

    let (_, key) = gw
        .create_key(json!({"name": "limited", "rpm_limit": 1}))
        .await;
    let ok = gw
        .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
        .await;
    assert_eq!(ok.status(), 200);
    let limited = gw
        .post("/v1/chat/completions", &key, chat_body("chat", "hi"))
        .await;
    assert!(limited.headers().contains_key("retry-after"));
    assert_eq!(error_of(limited, 429).await["code"], "rate_limit_exceeded");

    db.cleanup().await;

    let cached: Value = gw.get("/v1/models", ADMIN_KEY).await.json().await.unwrap();
    assert_eq!(
        cached["object"], "list",
        "a cached key keeps working while the database is down"
    );

    let response = gw
        .post(
            "/v1/chat/completions",
            "am-never-seen-before",
            chat_body("chat", "x"),
        )
        .await;
    assert!(response.headers().contains_key("retry-after"));
    let error = error_of(response, 503).await;
    assert_eq!(
        error["code"], "storage_unavailable",
        "never a 401 when the database is down"
    );

    let ready = gw.client.get(gw.url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    assert_ne!(body["checks"]["database"], "ok");
    cleanup_redis(&prefix).await;
}
