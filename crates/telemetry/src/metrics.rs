//! The process's Prometheus registry. Every crate records through the `metrics` facade
//! (names `agentmesh_<subsystem>_<name>_{total,seconds,bytes}`, bounded labels, each
//! crate describing its own in a `metrics.rs`), and [`render`] turns all of it into the
//! text exposition format. Durations (`*_seconds`) and sizes (`*_bytes`) are histograms.

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::future::Future;
use std::sync::OnceLock;

/// The `Content-Type` of [`render`]'s output.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Upper bounds of duration histograms: from a fast cache hit to a long LLM stream.
pub const SECONDS_BUCKETS: [f64; 14] = [
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
];
/// Upper bounds of size histograms: 256 B to 16 MiB.
pub const BYTES_BUCKETS: [f64; 8] = [
    256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0, 16777216.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process-wide recorder (once; later calls do nothing). Metrics recorded
/// before it are lost, so services call it when they start.
pub fn install() {
    handle();
}

fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE.get_or_init(build).as_ref()
}

fn build() -> Option<PrometheusHandle> {
    let builder = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), &SECONDS_BUCKETS)
        .and_then(|b| b.set_buckets_for_metric(Matcher::Suffix("_bytes".into()), &BYTES_BUCKETS));
    match builder.and_then(PrometheusBuilder::install_recorder) {
        Ok(handle) => Some(handle),
        Err(error) => {
            tracing::warn!(%error, "metrics recorder not installed");
            None
        }
    }
}

/// Every metric of the process in the Prometheus text format.
pub fn render() -> String {
    match handle() {
        Some(handle) => {
            handle.run_upkeep();
            handle.render()
        }
        None => "# metrics recorder unavailable in this process\n".to_string(),
    }
}

/// `agentmesh_build_info{service, version} 1`, described once.
pub fn record_build_info(service: &'static str) {
    metrics::describe_gauge!(
        "agentmesh_build_info",
        "Always 1; labels name the service and its version."
    );
    let version = env!("CARGO_PKG_VERSION");
    metrics::gauge!("agentmesh_build_info", "service" => service, "version" => version).set(1.0);
}

async fn scrape() -> impl axum::response::IntoResponse {
    ([(http::header::CONTENT_TYPE, CONTENT_TYPE)], render())
}

/// `GET /metrics` (and nothing else) for processes without another HTTP server.
pub fn router() -> axum::Router {
    axum::Router::new().route("/metrics", axum::routing::get(scrape))
}

/// Serves [`router`] on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    install();
    axum::serve(listener, router())
        .with_graceful_shutdown(shutdown)
        .await
}
