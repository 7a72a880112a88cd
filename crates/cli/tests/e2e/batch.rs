//! `agentmesh batch run` against a running system whose provider fails some requests.

use crate::helpers::mock_options;
use serde_json::{json, Value};
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const CONCURRENCY: usize = 4;
const TASKS: usize = 200;

fn write_tasks(path: &Path, prefix: &str) {
    let lines: Vec<String> = (0..TASKS)
        .map(|i| {
            json!({"custom_id": format!("{prefix}-{i:03}"), "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "chat", "messages": [
                    {"role": "user", "content": format!("{prefix}-{i:03}: reply briefly")}]}})
            .to_string()
        })
        .collect();
    std::fs::write(path, lines.join("\n") + "\n").expect("write tasks");
}

fn batch_command(base: &str, key: &str, input: &Path, output: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_agentmesh"));
    command
        .args(["batch", "run"])
        .arg(input)
        .arg("--output")
        .arg(output)
        .args(["--concurrency", &CONCURRENCY.to_string(), "--json"])
        .env("AGENTMESH_URL", base)
        .env("AGENTMESH_API_KEY", key);
    command
}

/// custom_id -> status code of every parsable result line.
fn results(output: &Path) -> Vec<(String, Option<u64>)> {
    let text = std::fs::read_to_string(output).unwrap_or_default();
    text.lines()
        .filter_map(|line| serde_json::from_str::<Value>(line).ok())
        .map(|v| {
            let id = v["custom_id"].as_str().unwrap_or_default().to_string();
            (
                id,
                v.pointer("/response/status_code").and_then(Value::as_u64),
            )
        })
        .collect()
}

fn assert_one_success_per_task(output: &Path, prefix: &str) {
    let results = results(output);
    assert_eq!(results.len(), TASKS, "one line per task");
    let ids: HashSet<&String> = results.iter().map(|(id, _)| id).collect();
    assert_eq!(ids.len(), TASKS, "a custom_id appears twice");
    for (id, status) in &results {
        assert!(id.starts_with(prefix), "{id}");
        assert_eq!(*status, Some(200), "{id} did not succeed");
    }
}

/// How many requests the provider received for each task.
fn provider_counts(requests: &[Value], prefix: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for request in requests {
        let text = request.to_string();
        for i in 0..TASKS {
            let id = format!("{prefix}-{i:03}");
            if text.contains(&format!("{id}:")) {
                *counts.entry(id).or_default() += 1;
            }
        }
    }
    counts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_are_bounded_complete_and_resumable() {
    let dir = tempfile::tempdir().expect("tempdir");
    let script = dir.path().join("mock.json");
    let rules = json!({"model": "mock-llm", "chunk_delay_ms": 10, "rules": [
        {"any_contains": "faulty-050:", "status": 500, "times": 3},
        {"any_contains": "faulty-100:", "status": 429, "retry_after": 1, "times": 3},
    ]});
    std::fs::write(&script, rules.to_string()).expect("script");
    let mut options = mock_options(dir.path());
    options.mock_script = Some(script);
    let running = agentmesh_cli::start(&options).await.expect("start");
    let key = running.new_admin_key.clone().expect("admin key");
    let base = running.gateway_url.clone();
    let mock = running.mock().expect("mock provider");

    // 200 tasks while the provider fails some with 500 and 429.
    let (input, output) = (
        dir.path().join("faulty.jsonl"),
        dir.path().join("faulty.out"),
    );
    write_tasks(&input, "faulty");
    let done = batch_command(&base, &key, &input, &output)
        .output()
        .expect("batch");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    let summary: Value = serde_json::from_slice(&done.stdout).expect("summary json");
    assert_eq!(summary["succeeded"], TASKS, "{summary}");
    assert_one_success_per_task(&output, "faulty");
    let max = mock.in_flight_max();
    assert!(
        max <= CONCURRENCY,
        "{max} requests in flight at the provider"
    );
    // Each faulty task: three attempts by the LLM client fail, the agent answers 502, the
    // batch sends it again and the fourth provider request succeeds.
    let counts = provider_counts(&mock.requests(), "faulty");
    assert_eq!(counts.get("faulty-050"), Some(&4), "500s: {counts:?}");
    assert_eq!(counts.get("faulty-100"), Some(&4), "429s: {counts:?}");

    // Killed half-way, then run again: nothing that succeeded is sent twice.
    let (input, output) = (
        dir.path().join("resume.jsonl"),
        dir.path().join("resume.out"),
    );
    write_tasks(&input, "resume");
    let mut child = batch_command(&base, &key, &input, &output)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn batch");
    let started = Instant::now();
    while results(&output).len() < 40 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "batch made no progress"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().expect("kill");
    child.wait().expect("wait");
    let first_run: Vec<String> = results(&output)
        .into_iter()
        .filter(|(_, status)| *status == Some(200))
        .map(|(id, _)| id)
        .collect();
    assert!(
        first_run.len() < TASKS,
        "the batch finished before it was killed"
    );
    let before = provider_counts(&mock.requests(), "resume");

    let done = batch_command(&base, &key, &input, &output)
        .output()
        .expect("batch");
    assert!(
        done.status.success(),
        "{}",
        String::from_utf8_lossy(&done.stderr)
    );
    assert_one_success_per_task(&output, "resume");
    let after = provider_counts(&mock.requests(), "resume");
    for id in &first_run {
        assert_eq!(
            before.get(id),
            after.get(id),
            "{id} was sent again after it succeeded"
        );
    }
    running.shutdown().await.expect("shutdown");
}
