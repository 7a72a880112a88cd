//! Balanced gRPC pools of the agents, request metadata and the Status -> HTTP mapping.

use crate::config::AgentEndpoints;
use crate::error::{default_type, ApiError};
use agentmesh_agent_runtime::balance::{AgentPool, PoolConfig};
use agentmesh_proto::v1::agent_client::AgentClient;
use axum::http::StatusCode;
use std::time::Duration;
use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::{Code, Status};
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::HealthCheckRequest;

/// Time allowed for health checks and `Describe` calls made by the gateway itself.
const PROBE_TIMEOUT: Duration = Duration::from_secs(2);

/// The agents a request can be routed to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum AgentName {
    Chat,
    Search,
    Data,
}

impl AgentName {
    pub const ALL: [AgentName; 3] = [AgentName::Chat, AgentName::Search, AgentName::Data];

    pub fn parse(name: &str) -> Option<Self> {
        match name {
            "chat" => Some(Self::Chat),
            "search" => Some(Self::Search),
            "data" => Some(Self::Data),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Chat => "chat",
            Self::Search => "search",
            Self::Data => "data",
        }
    }
}

/// One balanced pool per agent: every address behind its name, a concurrency limit.
#[derive(Clone)]
pub struct Agents {
    chat: AgentPool,
    search: AgentPool,
    data: AgentPool,
}

impl Agents {
    pub fn new(endpoints: &AgentEndpoints, pool: &PoolConfig) -> anyhow::Result<Self> {
        let make = |agent: AgentName, url: &str| AgentPool::new(agent.as_str(), url, pool.clone());
        Ok(Self {
            chat: make(AgentName::Chat, &endpoints.chat)?,
            search: make(AgentName::Search, &endpoints.search)?,
            data: make(AgentName::Data, &endpoints.data)?,
        })
    }

    pub fn pool(&self, agent: AgentName) -> &AgentPool {
        match agent {
            AgentName::Chat => &self.chat,
            AgentName::Search => &self.search,
            AgentName::Data => &self.data,
        }
    }

    /// The LLM model an agent reports, or None when it does not answer in time.
    pub async fn describe_model(&self, agent: AgentName) -> Option<String> {
        let call = self.pool(agent).unary(|channel| async move {
            let mut request = tonic::Request::new(agentmesh_proto::v1::DescribeRequest {});
            request.set_timeout(PROBE_TIMEOUT);
            AgentClient::new(channel).describe(request).await
        });
        match tokio::time::timeout(PROBE_TIMEOUT, call).await {
            Ok(Ok(response)) => Some(response.into_inner().model),
            Ok(Err(status)) => {
                tracing::debug!(agent = agent.as_str(), error = %status, "describe failed");
                None
            }
            Err(_) => None,
        }
    }

    /// gRPC health of the agent's `agentmesh.v1.Agent` service on one of its addresses:
    /// Ok or a reason.
    pub async fn health(&self, agent: AgentName) -> Result<(), String> {
        let check = async {
            let channel = self
                .pool(agent)
                .any_channel()
                .await
                .map_err(|e| e.to_string())?;
            let mut request = tonic::Request::new(HealthCheckRequest {
                service: "agentmesh.v1.Agent".into(),
            });
            request.set_timeout(PROBE_TIMEOUT);
            let response = HealthClient::new(channel)
                .check(request)
                .await
                .map_err(|status| status.message().to_string())?;
            match response.into_inner().status() {
                ServingStatus::Serving => Ok(()),
                other => Err(format!("health status {}", other.as_str_name())),
            }
        };
        match tokio::time::timeout(PROBE_TIMEOUT, check).await {
            Err(_) => Err(format!("no answer within {PROBE_TIMEOUT:?}")),
            Ok(result) => result,
        }
    }
}

/// What every call to an agent carries: ids for logs and traces, and the deadline.
#[derive(Debug, Clone)]
pub struct CallContext {
    pub request_id: String,
    pub key_id: String,
    pub traceparent: Option<String>,
    pub timeout: Duration,
}

impl CallContext {
    /// Wraps `message` with metadata and a deadline slightly below the gateway's own,
    /// so that the agent gives up first and reports why.
    pub fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let metadata = request.metadata_mut();
        insert(metadata, "x-request-id", &self.request_id);
        insert(metadata, "x-agentmesh-key-id", &self.key_id);
        // The request span's context when spans are exported, else the client's.
        let injected = agentmesh_telemetry::propagation::inject_metadata(metadata);
        if let Some(traceparent) = self.traceparent.as_ref().filter(|_| !injected) {
            insert(metadata, "traceparent", traceparent);
        }
        request.set_timeout(grpc_deadline(self.timeout));
        request
    }
}

fn insert(metadata: &mut MetadataMap, name: &'static str, value: &str) {
    if let Ok(value) = value.parse::<AsciiMetadataValue>() {
        metadata.insert(name, value);
    }
}

/// The gateway keeps a margin of 2 % (at least 100 ms, at most 1 s, never more than a
/// tenth of a short timeout) to answer after the agent's deadline with the agent's reason.
pub fn grpc_deadline(timeout: Duration) -> Duration {
    let margin = (timeout / 50)
        .clamp(Duration::from_millis(100), Duration::from_secs(1))
        .min(timeout / 10);
    timeout.saturating_sub(margin).max(Duration::from_millis(1))
}

/// Maps an agent's Status to the client's error, following CONTRACTS.md.
pub fn error_from_status(agent: &str, status: &Status) -> ApiError {
    let metadata = status.metadata();
    let text = |name: &str| {
        metadata
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let explicit = text("x-agentmesh-http-status")
        .and_then(|s| s.trim().parse::<u16>().ok())
        .filter(|code| (400..=599).contains(code))
        .and_then(|code| StatusCode::from_u16(code).ok());

    let (status_code, message) = match explicit {
        Some(code) => (code, status.message().to_string()),
        None => mapped(agent, status),
    };
    let mut error = ApiError::new(status_code, message);
    error.kind =
        text("x-agentmesh-error-type").unwrap_or_else(|| default_type(status_code).to_string());
    error.code = text("x-agentmesh-error-code");
    error.param = text("x-agentmesh-error-param");
    error.retry_after = text("retry-after").and_then(|s| s.trim().parse::<u64>().ok());
    error
}

fn mapped(agent: &str, status: &Status) -> (StatusCode, String) {
    let message = status.message().to_string();
    match status.code() {
        Code::InvalidArgument | Code::FailedPrecondition | Code::OutOfRange => {
            (StatusCode::BAD_REQUEST, message)
        }
        Code::Unauthenticated => (StatusCode::UNAUTHORIZED, message),
        Code::PermissionDenied => (StatusCode::FORBIDDEN, message),
        Code::NotFound => (StatusCode::NOT_FOUND, message),
        Code::AlreadyExists => (StatusCode::CONFLICT, message),
        Code::ResourceExhausted => (StatusCode::TOO_MANY_REQUESTS, message),
        Code::Unavailable => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("agent {agent} is unavailable: {message}"),
        ),
        Code::DeadlineExceeded => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("agent {agent} did not answer in time: {message}"),
        ),
        // A live request only sees Cancelled when the agent's server gave up at the
        // deadline (tonic reports an expired grpc-timeout so): the client still waits.
        Code::Cancelled => (
            StatusCode::GATEWAY_TIMEOUT,
            format!("agent {agent} cancelled the request at its deadline: {message}"),
        ),
        _ => (
            StatusCode::BAD_GATEWAY,
            format!("agent {agent} failed: {message}"),
        ),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests {
    use super::*;

    fn with_metadata(status: &mut Status, pairs: &[(&'static str, &str)]) {
        for (name, value) in pairs {
            status.metadata_mut().insert(*name, value.parse().unwrap());
        }
    }

    #[test]
    fn metadata_decides_status_type_code_param_and_retry() {
        let mut status = Status::unavailable("provider openai rejected our key");
        with_metadata(
            &mut status,
            &[
                ("x-agentmesh-http-status", "502"),
                ("x-agentmesh-error-type", "upstream_error"),
                ("x-agentmesh-error-code", "provider_auth_failed"),
                ("retry-after", "7"),
            ],
        );
        let error = error_from_status("chat", &status);
        assert_eq!(error.status, StatusCode::BAD_GATEWAY);
        assert_eq!(error.message, "provider openai rejected our key");
        assert_eq!(error.kind, "upstream_error");
        assert_eq!(error.code.as_deref(), Some("provider_auth_failed"));
        assert_eq!(error.retry_after, Some(7));
    }

    #[test]
    fn codes_map_without_metadata() {
        let cases = [
            (Status::invalid_argument("x"), 400),
            (Status::failed_precondition("x"), 400),
            (Status::unauthenticated("x"), 401),
            (Status::permission_denied("x"), 403),
            (Status::not_found("x"), 404),
            (Status::already_exists("x"), 409),
            (Status::resource_exhausted("x"), 429),
            (Status::unavailable("x"), 503),
            (Status::deadline_exceeded("x"), 504),
            (Status::cancelled("x"), 504),
            (Status::internal("boom"), 502),
            (Status::unknown("boom"), 502),
        ];
        for (status, expected) in cases {
            let error = error_from_status("data", &status);
            assert_eq!(error.status.as_u16(), expected, "{status:?}");
        }
        let error = error_from_status("data", &Status::internal("boom"));
        assert_eq!(error.message, "agent data failed: boom");
    }

    #[test]
    fn invalid_http_status_metadata_is_ignored() {
        let mut status = Status::not_found("no such dataset");
        with_metadata(&mut status, &[("x-agentmesh-http-status", "200")]);
        assert_eq!(
            error_from_status("data", &status).status,
            StatusCode::NOT_FOUND
        );
    }

    #[test]
    fn deadline_keeps_a_margin() {
        assert_eq!(
            grpc_deadline(Duration::from_secs(60)),
            Duration::from_secs(59)
        );
        assert_eq!(
            grpc_deadline(Duration::from_secs(10)),
            Duration::from_millis(9800)
        );
        assert_eq!(
            grpc_deadline(Duration::from_secs(2)),
            Duration::from_millis(1900)
        );
        assert_eq!(
            grpc_deadline(Duration::from_millis(500)),
            Duration::from_millis(450)
        );
    }
}
