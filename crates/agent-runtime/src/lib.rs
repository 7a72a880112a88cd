//! What every agentmesh agent server shares: context, gRPC server, errors, request metadata.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

pub mod balance;
mod env;
mod llm_stream;
mod metrics;
mod request;
mod server;
mod sink;
mod status;

pub use env::{
    connect_state_from_env, drain_period_from_env, listen_addr_from_env, llm_from_env,
    shutdown_signal, DEFAULT_DRAIN,
};
pub use llm_stream::{add_usage, forward_llm_stream, StreamOutcome};
pub use metrics::{serve_metrics_from_env, METRICS_LISTEN_ENV};
pub use request::{
    delta_event, final_event, last_user_message, llm_messages, parse_grpc_timeout, usage_event,
    validate_messages, EventStream, RequestMeta, KEY_ID_HEADER, REQUEST_ID_HEADER, TIMEOUT_HEADER,
    TRACEPARENT_HEADER,
};
pub use server::{serve_grpc, serve_grpc_draining};
pub use sink::{spawn_events, EventSink};
pub use status::{invalid_argument, invalid_argument_code, status_from_llm, status_from_state};

/// Everything an agent needs to answer: storage, the LLM client and its peers.
#[derive(Clone)]
pub struct AgentContext {
    pub state: agentmesh_state::State,
    pub llm: agentmesh_llm::LlmClient,
    /// gRPC endpoints of the other agents (chat offers them as tools).
    pub peers: Peers,
}

/// gRPC endpoints (`http://host:port`) of the other agents; None: not offered.
#[derive(Clone, Default, Debug)]
pub struct Peers {
    pub search: Option<String>,
    pub data: Option<String>,
}
