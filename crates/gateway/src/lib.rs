//! agentmesh-gateway.
