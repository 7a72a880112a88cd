//! agentmesh-chat.
