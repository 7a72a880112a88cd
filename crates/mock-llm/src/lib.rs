//! agentmesh-mock-llm.
