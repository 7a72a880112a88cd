//! agentmesh-cli.
