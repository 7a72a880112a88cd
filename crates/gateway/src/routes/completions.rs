//! `POST /v1/chat/completions` and `POST /agent/{agent}/chat`.

use super::path_param;
use crate::agents::{error_from_status, AgentName};
use crate::app::AppState;
use crate::auth::Caller;
use crate::body::JsonObject;
use crate::chat::answer::{self, Answer, ChunkBuilder, Sse};
use crate::chat::validate::{self, ChatCall};
use crate::error::ApiError;
use crate::limits::{self, Settlement};
use agentmesh_agent_runtime::balance::{is_transport_failure, BalanceError, Call};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::ChatEvent;
use agentmesh_state::{IdempotencyClaim, StoredResponse};
use axum::extract::rejection::PathRejection;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Status, Streaming};

/// How long the gateway keeps reading an agent's stream after its final event.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const MAX_IDEMPOTENCY_KEY_LEN: usize = 255;

pub async fn openai(
    State(app): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let call = validate::parse(&body, None)?;
    run(app, caller, &headers, call).await
}

pub async fn by_path(
    State(app): State<AppState>,
    path: Result<Path<String>, PathRejection>,
    caller: Caller,
    headers: HeaderMap,
    JsonObject(body): JsonObject,
) -> Result<Response, ApiError> {
    let name = path_param(path)?;
    let agent = AgentName::parse(&name).ok_or_else(|| {
        ApiError::not_found(format!("unknown agent `{name}`: use chat, search or data"))
            .with_code("agent_not_found")
    })?;
    let call = validate::parse(&body, Some(agent))?;
    run(app, caller, &headers, call).await
}

async fn run(
    app: AppState,
    caller: Caller,
    headers: &HeaderMap,
    call: ChatCall,
) -> Result<Response, ApiError> {
    tracing::Span::current().record("agent", call.agent.as_str());
    tracing::Span::current().record("model", call.model.as_str());
    caller.require_agent(call.agent)?;

    let mut claim = None;
    if let Some(key) = idempotency_key(headers)?.filter(|_| !call.stream) {
        match app.state.db.claim_idempotency(&caller.key.id, &key).await? {
            IdempotencyClaim::Done(stored) => return Ok(replay(stored)),
            IdempotencyClaim::InProgress => return Err(in_progress(&key)),
            IdempotencyClaim::Claimed => claim = Some(Claim::new(&app, &caller.key.id, key)),
        }
    }

    let admission = limits::admit(&app, &caller.key, call.estimated_tokens).await?;
    let mut response = if call.stream {
        stream(&app, &caller, call, admission.reserved_usd).await?
    } else {
        let body = complete(&app, &caller, call, admission.reserved_usd)
            .await?
            .to_string();
        if let Some(claim) = claim.take() {
            claim.complete(&body).await;
        }
        json_response(body)
    };
    for (name, value) in admission.headers {
        response.headers_mut().insert(name, value);
    }
    Ok(response)
}

/// An agent stream whose first event arrived, with the balancer's slot it holds.
struct Opened {
    first: ChatEvent,
    rest: Streaming<ChatEvent>,
    /// Counts the stream against the agent's concurrency limit and its address's load
    /// until dropped.
    slot: Call,
}

/// A concurrency slot of the agent, or 503 `agent_overloaded` at once.
fn take_slot(app: &AppState, agent: AgentName) -> Result<Call, ApiError> {
    let pool = app.agents.pool(agent);
    pool.call()
        .map_err(|e| error_from_status(agent.as_str(), &e.to_status()))
}

/// How one attempt on one address ended, when it did not produce a first event.
enum Attempt {
    /// The address could not take the call (refused, reset, gone): try another.
    Retry(Status),
    Fail(ApiError),
}

/// Opens the agent's stream and waits for its first event, so that an early failure
/// is still answered with a proper HTTP status. A transport failure before the first
/// event moves the call to another address; nothing reached the client yet.
async fn open(
    caller: &Caller,
    call: &ChatCall,
    deadline: Instant,
    mut slot: Call,
) -> Result<Opened, ApiError> {
    let agent = call.agent.as_str();
    let balance_error = |e: BalanceError| error_from_status(agent, &e.to_status());
    let mut last = None;
    loop {
        let channel = match slot.next_channel(slot.attempts() > 0).await {
            Ok(Some(channel)) => channel,
            Ok(None) => return Err(last.unwrap_or_else(|| answer::no_address(agent))),
            Err(error) => return Err(balance_error(error)),
        };
        match attempt(channel, caller, call, deadline).await {
            Ok((first, rest)) => {
                return Ok(Opened { first, rest, slot });
            }
            Err(Attempt::Retry(status)) => {
                let address = slot.address();
                tracing::debug!(agent, address = ?address, error = %status, "attempt failed");
                slot.failed();
                last = Some(error_from_status(agent, &status));
            }
            Err(Attempt::Fail(error)) => return Err(error),
        }
    }
}

async fn attempt(
    channel: Channel,
    caller: &Caller,
    call: &ChatCall,
    deadline: Instant,
) -> Result<(ChatEvent, Streaming<ChatEvent>), Attempt> {
    let agent = call.agent.as_str();
    let failed = |status: Status| {
        if is_transport_failure(&status) {
            Attempt::Retry(status)
        } else {
            Attempt::Fail(error_from_status(agent, &status))
        }
    };
    let request = caller.call().request(call.request.clone());
    let mut client = AgentClient::new(channel);
    let opened = tokio::time::timeout_at(deadline, client.chat(request)).await;
    let mut events = match opened {
        Err(_) => return Err(Attempt::Fail(answer::timeout_error(agent))),
        Ok(Err(status)) => return Err(failed(status)),
        Ok(Ok(response)) => response.into_inner(),
    };
    match tokio::time::timeout_at(deadline, events.next()).await {
        Err(_) => Err(Attempt::Fail(answer::timeout_error(agent))),
        Ok(None) => Err(Attempt::Fail(answer::no_final(agent))),
        Ok(Some(Err(status))) => Err(failed(status)),
        Ok(Some(Ok(first))) => Ok((first, events)),
    }
}

async fn complete(
    app: &AppState,
    caller: &Caller,
    call: ChatCall,
    reserved_usd: f64,
) -> Result<serde_json::Value, ApiError> {
    let agent = call.agent.as_str();
    let deadline = Instant::now() + caller.timeout;
    let answer = Answer::new(&call.model, agent);
    let mut settlement = Settlement::new(
        app,
        &caller.request_id,
        &caller.key,
        agent,
        call.estimated_tokens,
        reserved_usd,
    );

    let collected = crate::metrics::agent_time(collect_answer(
        app,
        caller,
        &call,
        deadline,
        &mut settlement,
        &answer,
    ))
    .await;
    match collected {
        Ok(collected) => {
            settlement.finish(200);
            Ok(collected.into_completion(&answer))
        }
        Err(error) => {
            app.metrics.agent_error(agent, error.status.as_u16());
            settlement.finish(error.status.as_u16());
            Err(error)
        }
    }
}

/// Reads a whole answer. Nothing reached the client yet, so an answer cut by the
/// transport (the replica died) is asked again of another address.
async fn collect_answer(
    app: &AppState,
    caller: &Caller,
    call: &ChatCall,
    deadline: Instant,
    settlement: &mut Settlement,
    answer: &Answer,
) -> Result<answer::Collected, ApiError> {
    let mut slot = take_slot(app, call.agent)?;
    loop {
        let opened = open(caller, call, deadline, slot).await?;
        let cut = Arc::new(Mutex::new(None::<Status>));
        let seen = cut.clone();
        let events = futures::stream::once(async { Ok(opened.first) })
            .chain(opened.rest)
            .inspect(move |item| {
                if let (Err(status), Ok(mut cut)) = (item, seen.lock()) {
                    *cut = Some(status.clone());
                }
            });
        let result = answer::collect(Box::pin(events), deadline, settlement, answer).await;
        let by_transport = cut
            .lock()
            .ok()
            .and_then(|cut| cut.as_ref().map(is_transport_failure))
            .unwrap_or(false);
        slot = opened.slot;
        match result {
            Err(error) if by_transport && slot.can_retry() => {
                tracing::info!(agent = answer.agent, address = ?slot.address(), error = %error,
                    "answer cut, retrying");
                slot.failed();
            }
            other => return other,
        }
    }
}

async fn stream(
    app: &AppState,
    caller: &Caller,
    call: ChatCall,
    reserved_usd: f64,
) -> Result<Response, ApiError> {
    let agent = call.agent.as_str();
    let deadline = Instant::now() + caller.timeout;
    let settlement = Settlement::new(
        app,
        &caller.request_id,
        &caller.key,
        agent,
        call.estimated_tokens,
        reserved_usd,
    );
    let opening = async { open(caller, &call, deadline, take_slot(app, call.agent)?).await };
    let opened = match crate::metrics::agent_time(opening).await {
        Ok(opened) => opened,
        Err(error) => {
            app.metrics.agent_error(agent, error.status.as_u16());
            settlement.finish(error.status.as_u16());
            return Err(error);
        }
    };
    let builder = ChunkBuilder::new(Answer::new(&call.model, agent), call.include_usage);
    let events = sse_events(app.clone(), builder, settlement, opened, deadline);

    let keep_alive = KeepAlive::new()
        .interval(app.config.keepalive)
        .text("keep-alive");
    let mut response = axum::response::Sse::new(events)
        .keep_alive(keep_alive)
        .into_response();
    response
        .headers_mut()
        .insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The SSE body. Dropping it (client gone) drops the gRPC stream, which cancels the
/// agent's work, and the settlement, which records the request with status 499.
fn sse_events(
    app: AppState,
    mut builder: ChunkBuilder,
    mut settlement: Settlement,
    opened: Opened,
    deadline: Instant,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let agent = builder.agent().to_string();
    let Opened {
        first,
        mut rest,
        slot,
    } = opened;
    async_stream::stream! {
        let _slot = slot;
        yield Ok(sse(builder.opening()));
        let mut next = Some(first);
        loop {
            let event = match next.take() {
                Some(event) => event,
                None => match tokio::time::timeout_at(deadline, rest.next()).await {
                    Ok(Some(Ok(event))) => event,
                    failure => {
                        let error = stream_failure(failure, &agent);
                        app.metrics.agent_error(&agent, error.status.as_u16());
                        settlement.finish(error.status.as_u16());
                        yield Ok(Event::default().data(error.body().to_string()));
                        return;
                    }
                },
            };
            let (out, done) = builder.on_event(event, &mut settlement);
            for item in out {
                yield Ok(sse(item));
            }
            if done {
                settlement.finish(200);
                let _ = tokio::time::timeout(DRAIN_TIMEOUT, rest.count()).await;
                return;
            }
        }
    }
}

type Next = Result<Option<Result<ChatEvent, tonic::Status>>, tokio::time::error::Elapsed>;

fn stream_failure(failure: Next, agent: &str) -> ApiError {
    match failure {
        Err(_) => answer::timeout_error(agent),
        Ok(Some(Err(status))) => error_from_status(agent, &status),
        Ok(_) => answer::no_final(agent),
    }
}

fn sse(item: Sse) -> Event {
    match item {
        Sse::Json(value) => Event::default().data(value.to_string()),
        Sse::Done => Event::default().data("[DONE]"),
    }
}

fn json_response(body: String) -> Response {
    ([(header::CONTENT_TYPE, "application/json")], body).into_response()
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map(str::trim).unwrap_or("");
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY_LEN {
        return Err(ApiError::bad_request(
            "Idempotency-Key must be 1 to 255 visible ASCII characters",
            Some("Idempotency-Key"),
        ));
    }
    Ok(Some(key.to_string()))
}

fn replay(stored: StoredResponse) -> Response {
    let status = StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK);
    let mut response = (status, stored.body).into_response();
    let headers = response.headers_mut();
    if let Ok(content_type) = HeaderValue::from_str(&stored.content_type) {
        headers.insert(header::CONTENT_TYPE, content_type);
    }
    headers.insert("idempotent-replayed", HeaderValue::from_static("true"));
    response
}

fn in_progress(key: &str) -> ApiError {
    ApiError::new(
        StatusCode::CONFLICT,
        format!("a request with Idempotency-Key {key:?} is still in progress; retry later"),
    )
    .with_code("idempotency_in_progress")
}

/// An idempotency claim, released if the request does not complete (error, client gone).
struct Claim {
    app: AppState,
    key_id: String,
    key: String,
    done: bool,
}

impl Claim {
    fn new(app: &AppState, key_id: &str, key: String) -> Self {
        Self {
            app: app.clone(),
            key_id: key_id.to_string(),
            key,
            done: false,
        }
    }

    async fn complete(mut self, body: &str) {
        let stored = StoredResponse {
            status: 200,
            content_type: "application/json".into(),
            body: body.to_string(),
        };
        let db = &self.app.state.db;
        match db
            .complete_idempotency(&self.key_id, &self.key, &stored)
            .await
        {
            Ok(()) => self.done = true,
            Err(error) => tracing::warn!(%error, "idempotency record not stored"),
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if self.done || tokio::runtime::Handle::try_current().is_err() {
            return;
        }
        let db = self.app.state.db.clone();
        let (key_id, key) = (
            std::mem::take(&mut self.key_id),
            std::mem::take(&mut self.key),
        );
        tokio::spawn(async move {
            if let Err(error) = db.release_idempotency(&key_id, &key).await {
                tracing::warn!(%error, "idempotency claim not released");
            }
        });
    }
}
