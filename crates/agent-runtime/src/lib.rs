//! agentmesh-agent-runtime.
