//! The official `openai` Python package, used as a normal client, against the gateway.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use helpers::*;
use serde_json::json;
use std::path::PathBuf;

/// `AGENTMESH_TEST_PYTHON` (set by `cargo xtask test`), else the workspace's pyenv.
fn python() -> PathBuf {
    if let Ok(path) = std::env::var("AGENTMESH_TEST_PYTHON") {
        return PathBuf::from(path);
    }
    let pyenv = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/pyenv/bin/python");
    assert!(
        pyenv.exists(),
        "no Python with the openai package: set AGENTMESH_TEST_PYTHON or run `cargo xtask test`"
    );
    pyenv
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_package_sees_typed_errors() {
    let gw = start().await;
    let expired = gw
        .insert_key("am-expired-0123456789abcdef", |key| {
            key.expires_at = Some(chrono::Utc::now() - chrono::Duration::hours(1));
        })
        .await;
    assert!(!expired.is_empty());
    let (revoked_id, revoked) = gw.create_key(json!({"name": "gone"})).await;
    let response = gw
        .client
        .delete(gw.url(&format!("/admin/keys/{revoked_id}")))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success());
    let (_, search_only) = gw
        .create_key(json!({"name": "search", "scopes": ["search"]}))
        .await;
    let (_, limited) = gw
        .create_key(json!({"name": "limited", "rpm_limit": 1}))
        .await;

    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/python/openai_errors.py");
    let output = tokio::process::Command::new(python())
        .arg(script)
        .env("AGENTMESH_URL", &gw.url)
        .env("ADMIN_KEY", ADMIN_KEY)
        .env("EXPIRED_KEY", "am-expired-0123456789abcdef")
        .env("REVOKED_KEY", revoked)
        .env("SEARCH_ONLY_KEY", search_only)
        .env("LIMITED_KEY", limited)
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "stdout:\n{stdout}\nstderr:\n{stderr}"
    );
    eprintln!("{stdout}");
    let checks = [
        "completion",
        "stream",
        "expired 401",
        "revoked 401",
        "unknown 401",
        "scope 403",
        "rate_limit 429",
        "retry_after",
        "unknown_model 404",
        "unknown_model_get 404",
        "empty_messages 400",
        "provider 502",
        "mid_stream",
    ];
    for check in checks {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with(&format!("ok {check}"))),
            "{check} missing from:\n{stdout}"
        );
    }
}
