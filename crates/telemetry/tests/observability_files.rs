//! The files in `deploy/observability/`: promtool accepts the rules and their unit tests
//! pass (the error-rate alert fires on synthetic series), and every metric the rules and
//! the dashboard use is one the code records.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PROMTOOL").map_or_else(|| "promtool".into(), PathBuf::from);
    let found = Command::new(&path).arg("--version").output();
    found.is_ok_and(|o| o.status.success()).then_some(path)
}

fn run_promtool(args: &[&str]) {
    let Some(promtool) = promtool() else {
        eprintln!("!!!! SKIPPED promtool {args:?}: promtool is not installed !!!!");
        return;
    };
    let output = Command::new(promtool)
        .args(args)
        .current_dir(repo())
        .output()
        .unwrap();
    assert!(
        output.status.success(),
        "promtool {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
}

#[test]
fn alert_rules_pass_promtool_check_and_their_unit_tests() {
    run_promtool(&[
        "check",
        "rules",
        "deploy/observability/prometheus-rules.yaml",
    ]);
    run_promtool(&[
        "test",
        "rules",
        "deploy/observability/tests/prometheus-rules.test.yaml",
    ]);
}

/// Every `agentmesh_*` word in `text`.
fn metric_words(text: &str) -> BTreeSet<String> {
    let mut words = BTreeSet::new();
    let mut rest = text;
    while let Some(start) = rest.find("agentmesh_") {
        let tail = &rest[start..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        words.insert(tail[..end].to_string());
        rest = &tail[end..];
    }
    words
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
}

/// Metric names written as string literals in the crates' sources.
fn recorded_names() -> BTreeSet<String> {
    let mut files = Vec::new();
    for krate in std::fs::read_dir(repo().join("crates")).unwrap() {
        let src = krate.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut names = BTreeSet::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap();
        for word in metric_words(&text) {
            if text.contains(&format!("\"{word}\"")) {
                names.insert(word);
            }
        }
    }
    names
}

#[test]
fn rules_and_dashboard_use_only_recorded_metrics() {
    let recorded = recorded_names();
    assert!(
        recorded.contains("agentmesh_gateway_requests_total"),
        "{recorded:?}"
    );
    let dir = repo().join("deploy/observability");
    let rules = std::fs::read_to_string(dir.join("prometheus-rules.yaml")).unwrap();
    let dashboard = std::fs::read_to_string(dir.join("grafana-dashboard.json")).unwrap();
    let mut unknown = Vec::new();
    for word in metric_words(&rules)
        .into_iter()
        .chain(metric_words(&dashboard))
    {
        let base = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|suffix| word.strip_suffix(suffix))
            .filter(|base| recorded.contains(*base))
            .unwrap_or(&word);
        if !recorded.contains(base) {
            unknown.push(word);
        }
    }
    assert!(unknown.is_empty(), "not recorded by any crate: {unknown:?}");
}
