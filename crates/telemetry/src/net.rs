//! Socket settings every agentmesh server applies to the connections it accepts.

/// Small writes (one SSE or gRPC stream event each) leave at once instead of waiting for
/// the previous segment's ACK (Nagle), which the peer's delayed ACK stretches to ~40 ms.
pub fn no_delay(stream: &mut tokio::net::TcpStream) {
    if let Err(error) = stream.set_nodelay(true) {
        tracing::debug!(%error, "cannot set TCP_NODELAY");
    }
}
