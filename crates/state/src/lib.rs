//! agentmesh-state.
