//! Logs, traces and metrics set-up shared by every agentmesh binary.
//!
//! - Logs: JSON lines when stderr is not a terminal (containers, CI), human-readable
//!   otherwise; the filter comes from `AGENTMESH_LOG`, then `RUST_LOG`, then `info`.
//! - Traces: OpenTelemetry spans exported over OTLP (gRPC or HTTP/protobuf) when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set; the W3C
//!   trace context travels in and out of every hop ([`propagation`]).
//! - Metrics: one Prometheus registry per process, fed through the `metrics` facade and
//!   rendered by [`metrics::render`]; gRPC servers count their calls with [`grpc`].

mod logs;
mod otlp;

pub mod grpc;
pub mod metrics;
pub mod net;
pub mod propagation;
#[cfg(feature = "testing")]
pub mod testing;

pub use otlp::{OtlpProtocol, OtlpSettings};

use opentelemetry_sdk::trace::SdkTracerProvider;
use std::sync::atomic::{AtomicBool, Ordering};
use tracing_subscriber::prelude::*;

/// Set once the first [`init`] installed the global subscriber.
static INSTALLED: AtomicBool = AtomicBool::new(false);

/// Keeps the trace exporter alive. [`Telemetry::shutdown`] (or dropping it) flushes the
/// spans still buffered, so hold it until the process has stopped serving.
#[must_use = "dropping the guard shuts tracing down: keep it until shutdown"]
#[derive(Debug, Default)]
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// True when spans are exported over OTLP.
    pub fn exporting(&self) -> bool {
        self.provider.is_some()
    }

    /// Flushes buffered spans and stops the exporter (bounded by the exporter's timeout).
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        let Some(provider) = self.provider.take() else {
            return;
        };
        let flush = move || provider.shutdown();
        let result = match tokio::runtime::Handle::try_current() {
            Ok(handle) if handle.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(flush)
            }
            _ => flush(),
        };
        match result {
            Ok(()) => tracing::debug!("spans flushed"),
            Err(error) => eprintln!("agentmesh: flushing spans failed: {error}"),
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Installs logging and, when configured, span export; also records the build info
/// metric. Only the first call in a process installs anything (tests and the embedded
/// mode run several services in one process); later calls return an inert guard.
/// With gRPC export this must run inside a Tokio runtime.
pub fn init(service: &'static str) -> Telemetry {
    metrics::install();
    metrics::record_build_info(service);
    if INSTALLED.swap(true, Ordering::SeqCst) {
        return Telemetry::default();
    }
    propagation::install_propagator();

    let (provider, otlp_problem) = match OtlpSettings::from_env() {
        Ok(None) => (None, None),
        Ok(Some(settings)) => match otlp::tracer_provider(&settings, service) {
            Ok(provider) => (Some((provider, settings)), None),
            Err(problem) => (None, Some(problem)),
        },
        Err(problem) => (None, Some(problem)),
    };
    let otel_layer = provider.as_ref().map(|(p, _)| otlp::layer(p, service));
    let installed = tracing_subscriber::registry()
        .with(otel_layer)
        .with(logs::layer())
        .try_init()
        .is_ok();

    if let Some(problem) = otlp_problem {
        tracing::warn!(service, %problem, "span export disabled");
    }
    let Some((provider, settings)) = provider else {
        tracing::debug!(service, "telemetry initialised without span export");
        return Telemetry::default();
    };
    if !installed {
        let _ = provider.shutdown();
        return Telemetry::default();
    }
    tracing::info!(
        service,
        endpoint = %settings.endpoint,
        protocol = settings.protocol.as_str(),
        "exporting spans over otlp"
    );
    Telemetry {
        provider: Some(provider),
    }
}

/// Adds an event to `span`'s exported span only (no log line): retries, fallbacks and
/// other per-request detail an operator reads in the trace. Does nothing when spans are
/// not exported.
pub fn span_event(span: &tracing::Span, name: &'static str, attributes: &[(&'static str, String)]) {
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    let attributes = attributes
        .iter()
        .map(|(key, value)| opentelemetry::KeyValue::new(*key, value.clone()))
        .collect();
    span.add_event(name, attributes);
}

/// Renames `span`'s exported span (its name is fixed once the span has started, e.g. an
/// HTTP span named after the route matched while it ran). Does nothing when spans are
/// not exported.
pub fn rename_span(span: &tracing::Span, name: String) {
    use opentelemetry::trace::TraceContextExt;
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    span.context().span().update_name(name);
}
