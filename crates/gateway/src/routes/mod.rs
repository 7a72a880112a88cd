//! HTTP handlers, one module per resource.

pub mod admin;
pub mod completions;
pub mod conversations;
pub mod datasets;
pub mod documents;
pub mod models;
pub mod ops;

use crate::agents::{error_from_status, AgentName, CallContext};
use crate::app::AppState;
use crate::error::ApiError;
use axum::extract::rejection::PathRejection;
use axum::extract::Path;
use axum::http::StatusCode;
use std::future::Future;
use tonic::transport::Channel;

/// Runs one unary agent call within the caller's timeout, on the agent's balanced pool
/// (another address when one refuses the call), mapping its failure for the client.
pub async fn unary<M, T, F, Fut>(
    app: &AppState,
    agent: AgentName,
    context: CallContext,
    message: M,
    call: F,
) -> Result<T, ApiError>
where
    M: Clone,
    F: Fn(Channel, tonic::Request<M>) -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let timeout = context.timeout;
    let attempts = app
        .agents
        .pool(agent)
        .unary(|channel| call(channel, context.request(message.clone())));
    let timed = crate::metrics::agent_time(tokio::time::timeout(timeout, attempts));
    let result = match timed.await {
        Ok(Ok(response)) => return Ok(response.into_inner()),
        Ok(Err(status)) => error_from_status(agent.as_str(), &status),
        Err(_) => ApiError::new(
            StatusCode::GATEWAY_TIMEOUT,
            format!("agent {} did not answer within {timeout:?}", agent.as_str()),
        )
        .with_code("timeout"),
    };
    app.metrics
        .agent_error(agent.as_str(), result.status.as_u16());
    Err(result)
}

/// A path parameter, with axum's rejection in the OpenAI shape.
pub fn path_param(path: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    path.map(|Path(value)| value)
        .map_err(|rejection| ApiError::bad_request(rejection.body_text(), None))
}
