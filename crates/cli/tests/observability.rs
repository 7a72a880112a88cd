//! Observability of a running system (`agentmesh up` as a real process): one trace per
//! request across the gateway, the agents and the LLM provider, GenAI attributes, spans
//! flushed at shutdown, Prometheus text that `promtool` accepts, and logs free of keys
//! and prompts.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_mock_llm::{MockConfig, MockLlm, Rule};
use agentmesh_telemetry::testing::{OtlpReceiver, ReceivedSpan};
use serde_json::{json, Value};
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const ADMIN_KEY: &str = "am-admin-0bs3rv4b1l1ty-s3cr3t-k3y";
const PROVIDER_KEY: &str = "sk-provider-7e1emetry-s3cr3t";
const PROMPT: &str = "zebra-quartz-41 tell me about the weather";
const TOOL_PROMPT: &str = "look it up: kiwi-basalt-77 how do pods restart";
/// The W3C parent a client sends with the tool-call request.
const CLIENT_TRACE: &str = "5b8aa5a2d2c872e8321cf37308d69df2";
const CLIENT_PARENT: &str = "00-5b8aa5a2d2c872e8321cf37308d69df2-051581bf3cb55c13-01";

fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

/// The `agentmesh up` process; killed if the test fails before stopping it.
struct System {
    child: Child,
    base: String,
    dir: tempfile::TempDir,
}

impl Drop for System {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl System {
    fn start(otlp: &str, provider_url: &str) -> System {
        let dir = tempfile::tempdir().unwrap();
        let listen = free_addr();
        let stdout = std::fs::File::create(dir.path().join("stdout.log")).unwrap();
        let stderr = std::fs::File::create(dir.path().join("stderr.log")).unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
            .args(["up", "--quiet", "--listen", &listen.to_string()])
            .arg("--data-dir")
            .arg(dir.path().join("data"))
            .env_remove("AGENTMESH_DATABASE_URL")
            .env_remove("AGENTMESH_REDIS_URL")
            .env_remove("AGENTMESH_CONFIG")
            .env_remove("OTEL_SERVICE_NAME")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            .env("AGENTMESH_ADMIN_KEY", ADMIN_KEY)
            .env("AGENTMESH_LLM_BASE_URL", provider_url)
            .env("AGENTMESH_LLM_MODEL", "mock-model")
            .env("AGENTMESH_LLM_API_KEY", PROVIDER_KEY)
            .env("AGENTMESH_LOG", "info")
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", otlp)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf")
            // Nothing leaves before shutdown: the spans asserted on were flushed by it.
            .env("OTEL_BSP_SCHEDULE_DELAY", "600000")
            .stdout(Stdio::from(stdout))
            .stderr(Stdio::from(stderr))
            .spawn()
            .expect("start agentmesh up");
        System {
            child,
            base: format!("http://{listen}"),
            dir,
        }
    }

    fn logs(&self) -> String {
        let read = |name| std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default();
        format!("{}{}", read("stdout.log"), read("stderr.log"))
    }

    async fn wait_ready(&mut self, client: &reqwest::Client) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(90) {
            if let Ok(Some(status)) = self.child.try_wait() {
                panic!("agentmesh up exited with {status}:\n{}", self.logs());
            }
            let ready = client.get(format!("{}/ready", self.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        panic!("agentmesh up not ready in 90 s:\n{}", self.logs());
    }

    /// SIGTERM, then waits for a clean exit.
    fn stop(&mut self) {
        let pid = self.child.id().to_string();
        let sent = Command::new("kill").args(["-TERM", &pid]).status().unwrap();
        assert!(sent.success());
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                assert!(status.success(), "exit {status}:\n{}", self.logs());
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no exit after SIGTERM:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A pass-through in front of the mock provider that keeps each request's `traceparent`.
struct Recorder {
    url: String,
    traceparents: Arc<Mutex<Vec<String>>>,
}

async fn recording_proxy(upstream: String) -> Recorder {
    let traceparents = Arc::new(Mutex::new(Vec::new()));
    let seen = traceparents.clone();
    let client = reqwest::Client::new();
    let forward = move |request: axum::extract::Request| {
        let (client, seen, upstream) = (client.clone(), seen.clone(), upstream.clone());
        async move {
            let (parts, body) = request.into_parts();
            if let Some(value) = parts.headers.get("traceparent") {
                let value = value.to_str().unwrap_or_default().to_string();
                seen.lock().unwrap().push(value);
            }
            let body = axum::body::to_bytes(body, 1 << 24).await.unwrap();
            let url = format!("{upstream}{}", parts.uri.path());
            let mut headers = parts.headers.clone();
            headers.remove("host");
            let answer = client.post(url).headers(headers).body(body).send().await;
            let answer = answer.unwrap();
            let status = answer.status();
            let headers = answer.headers().clone();
            let mut response =
                axum::response::Response::new(axum::body::Body::from_stream(answer.bytes_stream()));
            *response.status_mut() = status;
            *response.headers_mut() = headers;
            response
        }
    };
    let router = axum::Router::new().fallback(forward);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    Recorder { url, traceparents }
}

async fn post(client: &reqwest::Client, url: &str, key: &str, body: Value) -> reqwest::Response {
    client
        .post(url)
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap()
}

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PROMTOOL").map_or_else(|| "promtool".into(), PathBuf::from);
    let found = Command::new(&path).arg("--version").output();
    found.is_ok_and(|o| o.status.success()).then_some(path)
}

/// `promtool check metrics` on `text`; skipped, loudly, only when promtool is missing.
fn check_metrics(what: &str, text: &str, dir: &Path) {
    let Some(promtool) = promtool() else {
        eprintln!("!!!! SKIPPED promtool check of {what}: promtool is not installed !!!!");
        return;
    };
    let file = dir.join(format!("{what}.prom"));
    std::fs::write(&file, text).unwrap();
    let output = Command::new(promtool)
        .args(["check", "metrics"])
        .stdin(std::fs::File::open(&file).unwrap())
        .output()
        .unwrap();
    let problems = String::from_utf8_lossy(&output.stdout).to_string()
        + &String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success() && problems.trim().is_empty(),
        "promtool check metrics on {what}:\n{problems}\n{text}"
    );
}

fn in_trace<'a>(spans: &'a [ReceivedSpan], trace: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.trace_id == trace).collect()
}

fn names(spans: &[&ReceivedSpan]) -> Vec<String> {
    spans
        .iter()
        .map(|s| format!("{} ({})", s.name, s.service))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_trace_per_request_metrics_and_clean_logs() {
    let receiver = OtlpReceiver::http().await.unwrap();
    let mut mock_config = MockConfig::new("mock-model").with_rule(
        Rule::tool_call("search_documents", json!({"query": "pods"})).when_last_user("look it up"),
    );
    mock_config.api_keys = vec![PROVIDER_KEY.to_string()];
    let mock = MockLlm::start("127.0.0.1:0".parse().unwrap(), mock_config)
        .await
        .unwrap();
    let proxy = recording_proxy(format!("http://{}", mock.addr())).await;
    let provider_url = format!("{}/v1", proxy.url);

    let mut system = System::start(&receiver.endpoint, &provider_url);
    let client = reqwest::Client::new();
    system.wait_ready(&client).await;
    let base = system.base.clone();

    let doc =
        json!({"title": "Pods", "text": "# Pods\nA pod restarts its containers.", "id": "pods"});
    let stored = post(&client, &format!("{base}/v1/documents"), ADMIN_KEY, doc).await;
    assert!(
        stored.status().is_success(),
        "{}",
        stored.text().await.unwrap()
    );
    let created = post(
        &client,
        &format!("{base}/admin/keys"),
        ADMIN_KEY,
        json!({"name": "observer", "scopes": ["chat"]}),
    )
    .await;
    let created: Value = created.json().await.unwrap();
    let user_key = created["key"].as_str().expect("new key").to_string();

    let chat = |content: &str| {
        let message = json!({"role": "user", "content": content});
        json!({"model": "chat", "messages": [message]})
    };
    let plain = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&user_key)
        .header("x-request-id", "obs-plain-1")
        .json(&chat(PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(plain.status(), 200, "{}", plain.text().await.unwrap());
    let with_tool = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(&user_key)
        .header("traceparent", CLIENT_PARENT)
        .json(&chat(TOOL_PROMPT))
        .send()
        .await
        .unwrap();
    assert_eq!(
        with_tool.status(),
        200,
        "{}",
        with_tool.text().await.unwrap()
    );
    let calls = mock.requests().len();
    assert!(
        calls >= 3,
        "expected a tool round trip, the mock saw {calls} calls"
    );

    let metrics = client.get(format!("{base}/metrics")).send().await.unwrap();
    let metrics = metrics.text().await.unwrap();
    for name in [
        "agentmesh_build_info",
        "agentmesh_gateway_requests_total",
        "agentmesh_gateway_overhead_seconds_bucket",
        "agentmesh_grpc_requests_total",
        "agentmesh_grpc_requests_in_flight",
        "agentmesh_llm_requests_total",
        "agentmesh_llm_time_to_first_token_seconds_bucket",
        "agentmesh_llm_input_tokens_total",
        "agentmesh_llm_circuit_state",
        "agentmesh_state_degraded",
    ] {
        assert!(
            metrics.contains(name),
            "{name} missing from /metrics:\n{metrics}"
        );
    }
    check_metrics("gateway", &metrics, system.dir.path());

    system.stop();
    assert!(receiver.spans().len() > 3, "spans flushed at shutdown");
    let spans = receiver.spans();

    // The plain request: a root span at the gateway, then chat, then the LLM.
    let gateway = spans
        .iter()
        .find(|s| {
            s.attr("request_id") == Some("obs-plain-1")
                && s.kind == 2
                && s.name.contains("/v1/chat/completions")
        })
        .unwrap_or_else(|| {
            panic!(
                "no gateway span: {:?}",
                names(&spans.iter().collect::<Vec<_>>())
            )
        });
    assert_eq!(gateway.name, "POST /v1/chat/completions");
    assert_eq!(gateway.attr("http.response.status_code"), Some("200"));
    let trace = in_trace(&spans, &gateway.trace_id);
    let chat_rpc = trace
        .iter()
        .find(|s| s.name == "chat Chat")
        .unwrap_or_else(|| panic!("no chat span in {:?}", names(&trace)));
    assert_eq!(
        chat_rpc.parent_span_id, gateway.span_id,
        "chat is the gateway's child"
    );
    assert_eq!(chat_rpc.attr("agent"), Some("chat"));
    let llm = trace
        .iter()
        .find(|s| s.attr("gen_ai.operation.name") == Some("chat"))
        .unwrap_or_else(|| panic!("no LLM span in {:?}", names(&trace)));
    assert_eq!(llm.kind, 3, "LLM span is a client span");
    assert_eq!(llm.attr("gen_ai.request.model"), Some("mock-model"));
    assert!(
        llm.attr("gen_ai.response.model")
            .is_some_and(|m| !m.is_empty()),
        "{llm:?}"
    );
    assert!(
        llm.attr("gen_ai.usage.input_tokens")
            .is_some_and(|t| t.parse::<u64>().unwrap() > 0),
        "{llm:?}"
    );
    assert!(llm.attr("gen_ai.usage.output_tokens").is_some(), "{llm:?}");
    assert!(
        llm.attr("gen_ai.response.finish_reasons")
            .is_some_and(|f| !f.is_empty()),
        "{llm:?}"
    );
    let attempt = trace
        .iter()
        .find(|s| s.name.starts_with("attempt ") && s.parent_span_id == llm.span_id);
    assert!(
        attempt.is_some(),
        "attempt span under the LLM span: {:?}",
        names(&trace)
    );
    let sent = proxy.traceparents.lock().unwrap().clone();
    assert!(
        sent.iter().any(|t| t.contains(&gateway.trace_id)),
        "the provider saw the trace in `traceparent`: {sent:?}"
    );

    // The tool call: the client's trace continues through chat into the search agent.
    let trace = in_trace(&spans, CLIENT_TRACE);
    let root = trace
        .iter()
        .find(|s| s.name == "POST /v1/chat/completions")
        .unwrap_or_else(|| panic!("client trace lost: {:?}", names(&trace)));
    assert_eq!(
        root.parent_span_id, "051581bf3cb55c13",
        "gateway span continues the client's"
    );
    assert!(
        trace.iter().any(|s| s.name == "chat Chat"),
        "{:?}",
        names(&trace)
    );
    assert!(
        trace
            .iter()
            .any(|s| s.attr("agent") == Some("search") && s.kind == 2),
        "search agent spans in the same trace: {:?}",
        names(&trace)
    );
    let llm_calls = trace
        .iter()
        .filter(|s| s.attr("gen_ai.operation.name") == Some("chat"))
        .count();
    assert!(
        llm_calls >= 2,
        "both LLM calls of the tool round trip: {:?}",
        names(&trace)
    );

    // Logs: JSON lines at info, with no key and no prompt in them.
    let logs = system.logs();
    assert!(logs.contains("exporting spans over otlp"), "{logs}");
    let json_lines = logs
        .lines()
        .filter(|l| serde_json::from_str::<Value>(l).is_ok())
        .count();
    assert!(json_lines > 5, "JSON log lines: {json_lines}\n{logs}");
    for secret in [
        ADMIN_KEY,
        PROVIDER_KEY,
        user_key.as_str(),
        "zebra-quartz-41",
        "kiwi-basalt-77",
    ] {
        assert!(
            !logs.contains(secret),
            "{secret:?} leaked into the logs:\n{logs}"
        );
    }
}

/// Each agent binary serves `/metrics` on `AGENTMESH_METRICS_LISTEN`, and promtool
/// accepts it once a call was counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_binaries_serve_promtool_clean_metrics() {
    let mock = MockLlm::start(
        "127.0.0.1:0".parse().unwrap(),
        MockConfig::new("mock-model"),
    )
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    for agent in ["chat", "search", "data"] {
        let name = format!("agentmesh-{agent}");
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_agentmesh")).with_file_name(&name);
        assert!(
            bin.exists(),
            "{} is missing: build every binary first (`cargo build --workspace --bins`)",
            bin.display()
        );
        let (grpc, metrics) = (free_addr(), free_addr());
        let log = std::fs::File::create(dir.path().join(format!("{agent}.log"))).unwrap();
        let child = Command::new(&bin)
            .env("AGENTMESH_GRPC_LISTEN", grpc.to_string())
            .env("AGENTMESH_METRICS_LISTEN", metrics.to_string())
            .env("AGENTMESH_DATA_DIR", dir.path().join(agent))
            .env_remove("AGENTMESH_DATABASE_URL")
            .env_remove("AGENTMESH_REDIS_URL")
            .env("AGENTMESH_LLM_BASE_URL", mock.base_url())
            .env("AGENTMESH_LLM_MODEL", "mock-model")
            .env("AGENTMESH_SEARCH_URL", "")
            .env("AGENTMESH_DATA_URL", "")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap();
        let mut system = System {
            child,
            base: format!("http://{metrics}"),
            dir: tempfile::tempdir().unwrap(),
        };
        let text = scrape_after_health_check(&mut system, grpc).await;
        let counted = format!(
            "agentmesh_grpc_requests_total{{agent=\"{agent}\",\
             method=\"/grpc.health.v1.Health/Check\",code=\"OK\"}}"
        );
        assert!(text.contains(&counted), "{counted} missing:\n{text}");
        assert!(text.contains("agentmesh_state_degraded"), "{text}");
        check_metrics(&name, &text, dir.path());
        system.stop();
    }
}

/// Waits for the agent's health check to answer, then reads its `/metrics`.
async fn scrape_after_health_check(system: &mut System, grpc: SocketAddr) -> String {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;
    let start = Instant::now();
    loop {
        if let Ok(Some(status)) = system.child.try_wait() {
            panic!("agent exited with {status}");
        }
        let url = format!("http://{grpc}");
        let channel = tonic::transport::Endpoint::from_shared(url)
            .unwrap()
            .connect()
            .await;
        if let Ok(mut client) = channel.map(HealthClient::new) {
            let request = HealthCheckRequest {
                service: String::new(),
            };
            if client.check(request).await.is_ok() {
                break;
            }
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "agent not serving in 60 s"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let scraped = reqwest::get(format!("{}/metrics", system.base))
        .await
        .unwrap();
    assert_eq!(scraped.status(), 200);
    scraped.text().await.unwrap()
}
