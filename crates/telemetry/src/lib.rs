//! agentmesh-telemetry.
