//! The gRPC server every agent runs: its routes plus health and reflection.

use std::future::Future;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tonic_health::ServingStatus;

/// Serves `routes` plus `grpc.health.v1.Health` (each of `served` set SERVING, then
/// NOT_SERVING once `shutdown` resolves) and reflection, then drains in-flight calls.
pub async fn serve_grpc(
    name: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    served: &[&'static str],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let (reporter, health) = tonic_health::server::health_reporter();
    for service in served {
        reporter
            .set_service_status(*service, ServingStatus::Serving)
            .await;
    }
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(agentmesh_proto::v1::FILE_DESCRIPTOR_SET)
        .build_v1()?;

    let names: Vec<&'static str> = served.to_vec();
    let stop = async move {
        shutdown.await;
        tracing::info!(agent = name, "shutting down");
        for service in names {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
    };

    let addr = listener.local_addr()?;
    tracing::info!(agent = name, %addr, "grpc listening");
    tonic::transport::Server::builder()
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(TcpListenerStream::new(listener), stop)
        .await?;
    tracing::info!(agent = name, "grpc stopped");
    Ok(())
}
