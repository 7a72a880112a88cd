//! agentmesh-data.
