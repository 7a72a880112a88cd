//! Spans reach an OTLP gRPC receiver when `OTEL_EXPORTER_OTLP_PROTOCOL=grpc`, and
//! gRPC metadata carries the context between services.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_telemetry::propagation;
use agentmesh_telemetry::testing::OtlpReceiver;
use std::time::Duration;
use tonic::metadata::MetadataMap;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_are_exported_over_grpc_and_metadata_links_them() {
    let receiver = OtlpReceiver::grpc().await.unwrap();
    std::env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", &receiver.endpoint);
    std::env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
    let telemetry = agentmesh_telemetry::init("telemetry-grpc-test");
    assert!(telemetry.exporting());

    let caller = tracing::info_span!(target: "agentmesh_test", "agentmesh_caller");
    let mut metadata = MetadataMap::new();
    assert!(caller.in_scope(|| propagation::inject_metadata(&mut metadata)));
    let callee = tracing::info_span!(target: "agentmesh_test", "agentmesh_callee");
    propagation::set_parent_from_metadata(&callee, &metadata);
    let caller_trace = propagation::trace_id(&caller).unwrap();
    drop(callee);
    drop(caller);

    telemetry.shutdown();
    let callee = receiver
        .wait_for(Duration::from_secs(5), |s| s.name == "agentmesh_callee")
        .await
        .expect("callee span exported");
    let caller = receiver
        .wait_for(Duration::from_secs(5), |s| s.name == "agentmesh_caller")
        .await
        .expect("caller span exported");
    assert_eq!(callee.trace_id, caller_trace);
    assert_eq!(callee.parent_span_id, caller.span_id);
    assert_eq!(caller.service, "telemetry-grpc-test");
}
