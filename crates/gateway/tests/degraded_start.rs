//! A gateway started while Postgres is down: it listens, says which dependency is
//! missing, answers 503 + Retry-After (never 401) for what needs the database, serves
//! keys already in the shared Redis cache, and becomes whole when Postgres appears.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use agentmesh_gateway::{AgentEndpoints, GatewayConfig};
use agentmesh_state::testing::proxy::Proxy;
use agentmesh_state::testing::{self, cleanup_redis, fresh_postgres};
use agentmesh_state::{hash_secret, NewApiKey, State, StateConfig};
use helpers::{chat_body, error_of, start_agents, FakeAgent, FakeData, ADMIN_KEY};
use serde_json::Value;
use std::time::{Duration, Instant};
use tokio::net::TcpListener;

const CACHED_SECRET: &str = "am-degraded-cached-secret-0001";

fn cached_key(id: &str) -> NewApiKey {
    NewApiKey {
        id: id.into(),
        name: "cached".into(),
        prefix: CACHED_SECRET[..11].into(),
        secret_hash: hash_secret(CACHED_SECRET),
        scopes: vec![],
        rpm_limit: None,
        tpm_limit: None,
        budget_usd: None,
        expires_at: None,
    }
}

async fn get(client: &reqwest::Client, url: &str, key: &str) -> reqwest::Response {
    client.get(url).bearer_auth(key).send().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn starts_degraded_while_postgres_is_down_and_recovers() {
    let db = fresh_postgres().await;
    let direct = db.state_config();
    let prefix = direct.redis_prefix.clone();

    // Before the outage: the key exists and sits in the shared key cache.
    let before = State::connect(&direct).await.unwrap();
    let key = before
        .db
        .create_key(cached_key("key_cached"))
        .await
        .unwrap();
    before
        .hot
        .cache_key(&hash_secret(CACHED_SECRET), &key, Duration::from_secs(300))
        .await
        .unwrap();
    drop(before);

    let mut proxy = Proxy::closed(&testing::postgres_target());
    let config = StateConfig {
        database_url: proxy.url_through(db.url()),
        ..direct.clone()
    };
    let state = State::start(&config)
        .await
        .expect("starts with postgres down");
    let agents = start_agents(FakeAgent::default(), FakeData::default()).await;
    let gateway_config = GatewayConfig {
        agents: AgentEndpoints {
            chat: agents.clone(),
            search: agents.clone(),
            data: agents,
        },
        admin_key: Some(ADMIN_KEY.into()),
        ..GatewayConfig::default()
    };
    agentmesh_gateway::ensure_admin_key(&state, &gateway_config, |_| {
        panic!("a configured admin key is stored, never generated")
    })
    .await
    .unwrap();
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(agentmesh_gateway::serve(
        gateway_config,
        state,
        listener,
        async move {
            let _ = stopped.await;
        },
    ));
    let client = reqwest::Client::new();
    let url = |path: &str| format!("{base}{path}");

    let ready = client.get(url("/ready")).send().await.unwrap();
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("database (postgres)"), "{message}");
    let database = body["checks"]["database"].as_str().unwrap();
    assert!(database.starts_with("postgres unavailable"), "{database}");
    assert_eq!(body["checks"]["chat"], "ok");

    let served = client
        .post(url("/v1/chat/completions"))
        .bearer_auth(CACHED_SECRET)
        .json(&chat_body("chat", "hi"))
        .send()
        .await
        .unwrap();
    assert_eq!(served.status(), 200, "a cached key keeps working");

    for (path, secret) in [
        ("/admin/keys", ADMIN_KEY),
        ("/v1/models", "am-never-seen-before-000000"),
        ("/v1/conversations/c1", CACHED_SECRET),
    ] {
        let response = get(&client, &url(path), secret).await;
        assert!(response.headers().contains_key("retry-after"), "{path}");
        let error = error_of(response, 503).await;
        assert_eq!(error["code"], "storage_unavailable", "{path}: never a 401");
    }

    proxy.restart();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = client.get(url("/ready")).send().await.unwrap().status();
        let admin = get(&client, &url("/admin/keys"), ADMIN_KEY).await.status();
        if ready == 200 && admin == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "not recovered: ready {ready}, admin {admin}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let missing = get(&client, &url("/v1/conversations/c1"), CACHED_SECRET).await;
    assert_eq!(missing.status(), 404, "the database answers again");

    let _ = stop.send(());
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}

/// The `agentmesh-gateway` binary itself: started with Postgres down it listens and is
/// not ready (instead of exiting), and once Postgres is up it migrates, stores the
/// configured admin key and serves, without a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gateway_binary_starts_while_postgres_is_down() {
    let db = fresh_postgres().await;
    let mut proxy = Proxy::closed(&testing::postgres_target());
    let prefix = testing::fresh_redis_prefix();
    let agents = start_agents(FakeAgent::default(), FakeData::default()).await;
    let port = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dir = tempfile::tempdir().unwrap();
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_agentmesh-gateway"))
        .env("AGENTMESH_LISTEN", format!("127.0.0.1:{port}"))
        .env("AGENTMESH_DATA_DIR", dir.path())
        .env("AGENTMESH_DATABASE_URL", proxy.url_through(db.url()))
        .env("AGENTMESH_REDIS_URL", testing::redis_url())
        .env("AGENTMESH_REDIS_PREFIX", &prefix)
        .env("AGENTMESH_ADMIN_KEY", ADMIN_KEY)
        .env("AGENTMESH_CHAT_URL", &agents)
        .env("AGENTMESH_SEARCH_URL", &agents)
        .env("AGENTMESH_DATA_URL", &agents)
        .env("AGENTMESH_LOG", "warn")
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let client = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{port}");

    let deadline = Instant::now() + Duration::from_secs(30);
    let ready = loop {
        if let Ok(response) = client.get(format!("{base}/ready")).send().await {
            break response;
        }
        let exited = gateway.try_wait().unwrap();
        assert!(exited.is_none(), "the gateway exited: {exited:?}");
        assert!(Instant::now() < deadline, "the gateway never listened");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(ready.status(), 503);
    let body: Value = ready.json().await.unwrap();
    let message = body["error"]["message"].as_str().unwrap();
    assert!(message.contains("database (postgres)"), "{message}");
    let admin = get(&client, &format!("{base}/admin/keys"), ADMIN_KEY).await;
    assert!(admin.headers().contains_key("retry-after"));
    assert_eq!(error_of(admin, 503).await["code"], "storage_unavailable");

    proxy.restart();
    loop {
        let ready = client.get(format!("{base}/ready")).send().await.unwrap();
        let admin = get(&client, &format!("{base}/admin/keys"), ADMIN_KEY).await;
        if ready.status() == 200 && admin.status() == 200 {
            break;
        }
        assert!(
            Instant::now() < deadline + Duration::from_secs(30),
            "not recovered: ready {}, admin {}",
            ready.status(),
            admin.status()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.kill().await.unwrap();
    cleanup_redis(&prefix).await;
    db.cleanup().await;
}
