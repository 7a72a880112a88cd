//! The gRPC server every agent runs: its routes plus health and reflection.

use crate::env::drain_period_from_env;
use std::future::Future;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::StreamExt;
use tonic_health::ServingStatus;

/// Serves `routes` plus `grpc.health.v1.Health` (each of `served` set SERVING, then
/// NOT_SERVING once `shutdown` resolves) and reflection, then drains in-flight calls
/// for at most `AGENTMESH_DRAIN_SECONDS` (default 30).
pub async fn serve_grpc(
    name: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    served: &[&'static str],
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> anyhow::Result<()> {
    let drain = drain_period_from_env()?;
    serve_grpc_draining(name, listener, routes, served, shutdown, drain).await
}

/// [`serve_grpc`] with an explicit drain period: once `shutdown` resolves, health says
/// NOT_SERVING at once, no new connection is accepted, open streams run to their end
/// for at most `drain`, then the server stops (cutting what still runs).
pub async fn serve_grpc_draining(
    name: &'static str,
    listener: TcpListener,
    routes: tonic::service::Routes,
    served: &[&'static str],
    shutdown: impl Future<Output = ()> + Send + 'static,
    drain: Duration,
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
    let (draining_tx, mut draining_rx) = tokio::sync::watch::channel(false);
    let stop = async move {
        shutdown.await;
        tracing::info!(agent = name, drain_seconds = drain.as_secs(), "draining");
        for service in names {
            reporter
                .set_service_status(service, ServingStatus::NotServing)
                .await;
        }
        reporter
            .set_service_status("", ServingStatus::NotServing)
            .await;
        let _ = draining_tx.send(true);
    };
    let drain_over = async move {
        let _ = draining_rx.wait_for(|draining| *draining).await;
        tokio::time::sleep(drain).await;
    };

    let addr = listener.local_addr()?;
    tracing::info!(agent = name, %addr, "grpc listening");
    let server = tonic::transport::Server::builder()
        .layer(agentmesh_telemetry::grpc::GrpcMetricsLayer::new(name))
        .add_routes(routes)
        .add_service(health)
        .add_service(reflection)
        .serve_with_incoming_shutdown(accept_no_delay(listener), stop);
    tokio::select! {
        served = server => served?,
        () = drain_over => tracing::warn!(agent = name, "drain period over, cutting calls"),
    }
    tracing::info!(agent = name, "grpc stopped");
    Ok(())
}

/// Accepted connections with TCP_NODELAY: tonic sets it only on listeners it binds.
fn accept_no_delay(
    listener: TcpListener,
) -> impl tokio_stream::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        let mut stream = accepted?;
        agentmesh_telemetry::net::no_delay(&mut stream);
        Ok(stream)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic_health::pb::health_client::HealthClient;
    use tonic_health::pb::HealthCheckRequest;

    #[tokio::test]
    async fn shutdown_says_not_serving_at_once_then_drains_within_the_period() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let routes = tonic::service::RoutesBuilder::default().routes();
        let drain = Duration::from_millis(500);
        let server = tokio::spawn(serve_grpc_draining(
            "test",
            listener,
            routes,
            &["agentmesh.v1.Agent"],
            async move {
                let _ = stopped.await;
            },
            drain,
        ));
        let channel = tonic::transport::Channel::from_shared(url)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let request = HealthCheckRequest {
            service: "agentmesh.v1.Agent".into(),
        };
        // Watch is a stream that never ends by itself: it stands for a long answer.
        let mut watch = HealthClient::new(channel)
            .watch(request)
            .await
            .unwrap()
            .into_inner();
        let first = watch.message().await.unwrap().unwrap();
        assert_eq!(first.status(), ServingStatus::Serving.into());

        let started = std::time::Instant::now();
        stop.send(()).unwrap();
        let next = tokio::time::timeout(Duration::from_millis(300), watch.message())
            .await
            .expect("the status changes at once")
            .unwrap()
            .unwrap();
        assert_eq!(next.status(), ServingStatus::NotServing.into());

        let served = tokio::time::timeout(Duration::from_secs(3), server)
            .await
            .expect("the server stops once the drain period is over");
        served.unwrap().unwrap();
        let took = started.elapsed();
        assert!(
            took >= drain,
            "the open stream was given the drain period: {took:?}"
        );
    }
}
