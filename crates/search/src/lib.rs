//! agentmesh-search.
