//! agentmesh-llm.
