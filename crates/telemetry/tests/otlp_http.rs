//! Spans reach an OTLP/HTTP receiver, children of the caller's `traceparent`, and the
//! guard flushes them at shutdown.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_telemetry::propagation;
use agentmesh_telemetry::testing::OtlpReceiver;
use std::time::Duration;

const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_http_with_the_remote_parent() {
    let receiver = OtlpReceiver::http().await.unwrap();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
    std::env::remove_var("OTEL_SERVICE_NAME");
    let telemetry = agentmesh_telemetry::init("telemetry-http-test");
    assert!(telemetry.exporting());

    let mut headers = http::HeaderMap::new();
    headers.insert("traceparent", PARENT.parse().unwrap());
    let span = tracing::info_span!(target: "agentmesh_test", "agentmesh_probe", request_id = "r-1");
    propagation::set_parent_from_headers(&span, &headers);
    let outgoing = span.in_scope(propagation::trace_headers);
    let sent = outgoing.get("traceparent").unwrap().to_str().unwrap();
    assert!(
        sent.starts_with("00-4bf92f3577b34da6a3ce929d0e0e4736-"),
        "{sent}"
    );
    assert!(
        !sent.contains("00f067aa0ba902b7"),
        "a new span id is sent: {sent}"
    );
    assert_eq!(
        propagation::trace_id(&span).as_deref(),
        Some("4bf92f3577b34da6a3ce929d0e0e4736")
    );
    drop(span);

    telemetry.shutdown();
    let got = receiver
        .wait_for(Duration::from_secs(5), |s| s.name == "agentmesh_probe")
        .await
        .expect("span exported by the time shutdown returns");
    assert_eq!(got.trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");
    assert_eq!(got.parent_span_id, "00f067aa0ba902b7");
    assert_eq!(got.service, "telemetry-http-test");
    assert_eq!(got.attr("request_id"), Some("r-1"));
}
