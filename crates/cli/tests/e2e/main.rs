//! End-to-end tests: the whole system, driven over HTTP as users drive it.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod batch;
mod flows;
mod helpers;

use flows::Api;
use helpers::{free_addr, wait_ready, workspace_bin, Processes};
use std::process::Command;
use std::time::Duration;

async fn run_flows(api: &Api, backend: &str) {
    flows::load_corpus(api);
    flows::search_ranks_memory_pages_first(api).await;
    flows::data_queries_are_exact_and_read_only(api, backend).await;
    flows::chat_remembers_and_streams(api).await;
    flows::bad_input_gets_clear_errors(api).await;
    flows::openai_client_accepts_the_api(api, backend);
}

/// `agentmesh up` on its embedded defaults: SQLite, memory, built-in mock LLM.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_mode_in_one_process() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = agentmesh_cli::UpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        database_url: None,
        redis_url: None,
        redis_prefix: "unused:".into(),
        llm: "mock".into(),
        mock_script: None,
        quiet: true,
    };
    let running = agentmesh_cli::start(&options).await.expect("start");
    let key = running
        .new_admin_key
        .clone()
        .expect("a first start creates an admin key");
    let saved = std::fs::read_to_string(dir.path().join("admin.key")).expect("saved key");
    assert_eq!(saved.trim(), key);

    let api = Api::new(&running.gateway_url, &key);
    run_flows(&api, "sqlite").await;
    running.shutdown().await.expect("clean shutdown");
}

/// One process per service, talking gRPC, on real Postgres and Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn distributed_processes_on_postgres_and_redis() {
    let db = agentmesh_state::testing::fresh_postgres().await;
    let prefix = agentmesh_state::testing::fresh_redis_prefix();
    let logs = tempfile::tempdir().expect("tempdir");
    let mut procs = Processes::default();

    let mock = free_addr();
    let mut command = Command::new(workspace_bin("agentmesh-mock-llm"));
    command.args(["--listen", &mock.to_string()]);
    procs.spawn("mock-llm", command, logs.path());

    let (chat, search, data, gateway) = (free_addr(), free_addr(), free_addr(), free_addr());
    let admin_key = "am-e2e-distributed-admin-key-0123456789";
    let env = |command: &mut Command| {
        command
            .env("AGENTMESH_DATABASE_URL", db.url())
            .env("AGENTMESH_REDIS_URL", agentmesh_state::testing::redis_url())
            .env("AGENTMESH_REDIS_PREFIX", &prefix)
            .env("AGENTMESH_LLM_BASE_URL", format!("http://{mock}/v1"))
            .env("AGENTMESH_LLM_MODEL", "mock-llm")
            .env("AGENTMESH_SEARCH_URL", format!("http://{search}"))
            .env("AGENTMESH_DATA_URL", format!("http://{data}"))
            .env("AGENTMESH_CHAT_URL", format!("http://{chat}"))
            .env("AGENTMESH_ADMIN_KEY", admin_key)
            .env("AGENTMESH_DATA_DIR", logs.path());
    };
    for (name, addr) in [("search", search), ("data", data), ("chat", chat)] {
        let mut command = Command::new(workspace_bin(&format!("agentmesh-{name}")));
        env(&mut command);
        command.env("AGENTMESH_GRPC_LISTEN", addr.to_string());
        procs.spawn(name, command, logs.path());
    }
    let mut command = Command::new(workspace_bin("agentmesh-gateway"));
    env(&mut command);
    command.env("AGENTMESH_LISTEN", gateway.to_string());
    procs.spawn("gateway", command, logs.path());

    let base = format!("http://{gateway}");
    let ready = wait_ready(&format!("{base}/ready"), Duration::from_secs(60)).await;
    procs.check_alive(logs.path());
    assert!(ready, "the gateway never became ready");

    let api = Api::new(&base, admin_key);
    run_flows(&api, "postgres").await;
    drop(procs);
    db.cleanup().await;
}

/// With no provider configured, `agentmesh up` answers with the local model, streamed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_default_answers_with_the_local_model() {
    let dir = tempfile::tempdir().expect("tempdir");
    let options = agentmesh_cli::UpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.path().to_path_buf(),
        database_url: None,
        redis_url: None,
        redis_prefix: "unused:".into(),
        llm: "local".into(),
        mock_script: None,
        quiet: true,
    };
    std::env::set_var("AGENTMESH_LOCAL_MODEL", helpers::local_model());
    let running = agentmesh_cli::start(&options).await.expect("start");
    let key = running.new_admin_key.clone().expect("admin key");
    let api = Api::new(&running.gateway_url, &key);

    let (status, models) = api.call("GET", "/v1/models", None).await;
    assert_eq!(status, 200, "{models}");
    assert_eq!(
        models["data"][0]["llm_model"], "SmolLM2-135M-Instruct",
        "{models}"
    );

    let body = serde_json::json!({"model": "chat", "stream": true, "max_tokens": 12,
        "temperature": 0, "messages": [{"role": "user", "content": "Say hello."}]});
    let response = api
        .http
        .post(format!("{}/v1/chat/completions", api.base))
        .bearer_auth(&key)
        .json(&body)
        .send()
        .await
        .expect("send");
    assert_eq!(response.status(), 200);
    let text = response.text().await.expect("body");
    let content = flows::streamed_content(&text);
    assert!(!content.trim().is_empty(), "no generated text: {text}");
    assert!(!content.contains("mock"), "{content}");
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    running.shutdown().await.expect("clean shutdown");
}
