//! The log layer: JSON lines when stderr is not a terminal, compact text otherwise.

use std::io::IsTerminal;
use tracing::Subscriber;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::{fmt, EnvFilter, Layer};

/// The filter from `AGENTMESH_LOG`, then `RUST_LOG`, then `info`; an invalid one
/// falls back to `info` rather than silencing the process.
pub fn filter() -> EnvFilter {
    let directives = std::env::var("AGENTMESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    EnvFilter::try_new(&directives).unwrap_or_else(|_| EnvFilter::new("info"))
}

/// Logs filtered on their own, so that the log level does not decide which spans are
/// exported.
pub fn layer<S>() -> Box<dyn Layer<S> + Send + Sync>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
{
    if std::io::stderr().is_terminal() {
        let text = fmt::layer().with_writer(std::io::stderr).compact();
        return text.with_filter(filter()).boxed();
    }
    let json = fmt::layer()
        .json()
        .flatten_event(true)
        .with_current_span(true)
        .with_writer(std::io::stderr);
    json.with_filter(filter()).boxed()
}
