//! Logging set-up shared by every agentmesh binary.
//!
//! JSON lines when stderr is not a terminal (containers, CI), human-readable
//! otherwise. The filter comes from `AGENTMESH_LOG`, then `RUST_LOG`, then `info`.

use std::io::IsTerminal;
use tracing_subscriber::{fmt, prelude::*, EnvFilter};

/// Installs the global subscriber once; later calls are ignored, so tests and
/// the embedded mode (several services in one process) can all call it.
pub fn init(service: &'static str) {
    let filter = std::env::var("AGENTMESH_LOG")
        .or_else(|_| std::env::var("RUST_LOG"))
        .unwrap_or_else(|_| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));

    let registry = tracing_subscriber::registry().with(filter);
    let result = if std::io::stderr().is_terminal() {
        registry.with(fmt::layer().with_writer(std::io::stderr).compact()).try_init()
    } else {
        let json = fmt::layer().json().flatten_event(true).with_current_span(true);
        registry.with(json.with_writer(std::io::stderr)).try_init()
    };
    if result.is_ok() {
        tracing::debug!(service, "telemetry initialised");
    }
}
