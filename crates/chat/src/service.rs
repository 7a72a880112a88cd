//! The chat agent's `Agent` service: memory, tool rounds, exactly-once persistence.

use crate::memory::{assemble, CONTEXT_BUDGET_TOKENS};
use crate::tools::Tools;
use crate::turns::{self, StoredTurn, TurnKey};
use agentmesh_agent_runtime::{
    add_usage, delta_event, final_event, forward_llm_stream, invalid_argument, spawn_events,
    status_from_state, usage_event, validate_messages, AgentContext, EventSink, EventStream,
    RequestMeta,
};
use agentmesh_llm::{ChatMessage, CompletionRequest, ToolCall, Usage};
use agentmesh_proto::v1::agent_server::Agent;
use agentmesh_proto::v1::*;
use agentmesh_state::NewMessage;
use tonic::{Request, Response, Status};

pub const AGENT_NAME: &str = "chat";
/// Rounds in which the model may call tools; one more round must answer.
pub const MAX_TOOL_ROUNDS: usize = 3;
const MAX_CONVERSATION_ID_CHARS: usize = 200;
/// Request metadata naming a client retry; preferred over `x-request-id`.
const IDEMPOTENCY_KEY_HEADER: &str = "idempotency-key";

#[derive(Clone)]
pub struct ChatAgent {
    ctx: AgentContext,
    tools: Tools,
}

impl ChatAgent {
    /// Fails only when a peer URL is malformed; peers are connected on first use.
    pub fn new(ctx: AgentContext) -> anyhow::Result<Self> {
        let tools = Tools::new(&ctx.peers)?;
        Ok(Self { ctx, tools })
    }
}

fn check_conversation_id(id: &str) -> Result<(), Status> {
    let bad = id.chars().count() > MAX_CONVERSATION_ID_CHARS
        || id.chars().any(|c| c.is_control() || c.is_whitespace());
    if bad {
        let msg = format!(
            "conversation_id must be at most {MAX_CONVERSATION_ID_CHARS} characters without \
             spaces or control characters"
        );
        return Err(invalid_argument(msg, Some("conversation_id")));
    }
    Ok(())
}

#[tonic::async_trait]
impl Agent for ChatAgent {
    type ChatStream = EventStream;

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<EventStream>, Status> {
        let meta = RequestMeta::from_metadata(request.metadata());
        let span = meta.span(AGENT_NAME, "Chat");
        let retry_id = request
            .metadata()
            .get(IDEMPOTENCY_KEY_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or(&meta.request_id)
            .to_string();
        let req = request.into_inner();
        validate_messages(&req.messages)?;
        check_conversation_id(&req.conversation_id)?;
        if !req.messages.iter().any(|m| m.role == "user") {
            return Err(invalid_argument(
                "a user message is required",
                Some("messages"),
            ));
        }
        let agent = self.clone();
        let user = req.messages.iter().rev().find(|m| m.role == "user");
        let user = user.map_or("", |m| m.content.as_str());
        let key = TurnKey::new(&req.conversation_id, &meta.key_id, &retry_id, user);
        let stream = spawn_events(span, move |sink| async move {
            agent.answer(req, meta, key, sink).await
        });
        Ok(Response::new(stream))
    }

    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let meta = RequestMeta::from_metadata(request.metadata());
        let _span = meta.span(AGENT_NAME, "Describe").entered();
        Ok(Response::new(DescribeResponse {
            name: AGENT_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.ctx.llm.default_model().into(),
            tools: self.tools.names(),
        }))
    }
}

/// What the rounds produced, for persistence and the closing events.
struct Outcome {
    answer: String,
    usage: Usage,
    finish_reason: String,
    model: String,
}

impl ChatAgent {
    async fn answer(
        &self,
        req: ChatRequest,
        meta: RequestMeta,
        key: Option<TurnKey>,
        sink: EventSink,
    ) -> Result<(), Status> {
        let conversation = req.conversation_id.clone();
        let messages = self.context_messages(&req, &meta).await?;
        if let Some(done) = self.stored_turn(key.as_ref()).await? {
            tracing::info!(conversation_id = %conversation, "turn replayed");
            sink.send(delta_event(done.answer)).await?;
            sink.send(usage_event(&Usage::default())).await?;
            return sink
                .send(final_event(&done.finish_reason, &done.model, &conversation))
                .await;
        }
        let mut outcome = self.run_rounds(&req, messages, &meta, &sink).await?;
        if outcome.model.is_empty() {
            outcome.model = self.ctx.llm.default_model().to_string();
        }

        if !conversation.is_empty() {
            self.persist(&req, &meta, key.as_ref(), &outcome).await?;
        }
        sink.send(usage_event(&outcome.usage)).await?;
        sink.send(final_event(
            &outcome.finish_reason,
            &outcome.model,
            &conversation,
        ))
        .await
    }

    /// The turn a previous attempt of this request stored, if any.
    async fn stored_turn(&self, key: Option<&TurnKey>) -> Result<Option<StoredTurn>, Status> {
        let Some(key) = key else {
            return Ok(None);
        };
        let db = self.ctx.state.db.as_ref();
        turns::find(db, key)
            .await
            .map_err(|e| status_from_state(&e))
    }

    /// The request's messages with the stored conversation fitted in.
    async fn context_messages(
        &self,
        req: &ChatRequest,
        meta: &RequestMeta,
    ) -> Result<Vec<ChatMessage>, Status> {
        if req.conversation_id.is_empty() {
            return Ok(assemble(&req.messages, &[], usize::MAX));
        }
        let db = &self.ctx.state.db;
        let stored = db
            .load_conversation(&req.conversation_id)
            .await
            .map_err(|e| status_from_state(&e))?;
        let history = match stored {
            Some(c)
                if !c.key_id.is_empty() && !meta.key_id.is_empty() && c.key_id != meta.key_id =>
            {
                let msg = format!("conversation {} not found", req.conversation_id);
                return Err(Status::not_found(msg));
            }
            Some(c) => c.messages,
            None => Vec::new(),
        };
        tracing::debug!(stored = history.len(), "conversation loaded");
        Ok(assemble(&req.messages, &history, CONTEXT_BUDGET_TOKENS))
    }

    /// Calls the model, running the tools it asks for, up to `MAX_TOOL_ROUNDS` rounds.
    /// The calls of one round run concurrently; their results go back in call order.
    async fn run_rounds(
        &self,
        req: &ChatRequest,
        mut messages: Vec<ChatMessage>,
        meta: &RequestMeta,
        sink: &EventSink,
    ) -> Result<Outcome, Status> {
        let mut outcome = Outcome {
            answer: String::new(),
            usage: Usage::default(),
            finish_reason: "stop".into(),
            model: String::new(),
        };
        for round in 0..=MAX_TOOL_ROUNDS {
            let tools = if round < MAX_TOOL_ROUNDS {
                self.tools.specs()
            } else {
                Vec::new()
            };
            let llm_req = CompletionRequest {
                messages: messages.clone(),
                temperature: req.temperature,
                top_p: req.top_p,
                max_tokens: req.max_tokens,
                stop: req.stop.clone(),
                tools,
                deadline: meta.llm_deadline(),
                ..CompletionRequest::default()
            };
            let out = forward_llm_stream(&self.ctx.llm, llm_req, sink, true).await?;
            add_usage(&mut outcome.usage, &out.usage);
            outcome.answer.push_str(&out.text);
            outcome.model = out.model;
            if !out.finish_reason.is_empty() {
                outcome.finish_reason = out.finish_reason;
            }
            let calls = named_calls(out.tool_calls, round);
            if calls.is_empty() {
                break;
            }
            tracing::debug!(round, calls = calls.len(), "tool round");
            let assistant = ChatMessage {
                role: "assistant".into(),
                content: (!out.text.is_empty()).then_some(out.text),
                tool_calls: calls.clone(),
                ..ChatMessage::default()
            };
            messages.push(assistant);
            let runs = calls.iter().map(|call| self.run_tool(call, meta, sink));
            for result in futures::future::join_all(runs).await {
                messages.push(result?);
            }
            outcome.finish_reason = "stop".into();
        }
        Ok(outcome)
    }

    async fn run_tool(
        &self,
        call: &ToolCall,
        meta: &RequestMeta,
        sink: &EventSink,
    ) -> Result<ChatMessage, Status> {
        let output = self.tools.call(call, meta).await;
        tracing::info!(tool = %call.name, is_error = output.is_error, "tool called");
        let result = ToolResult {
            tool_call_id: call.id.clone(),
            name: call.name.clone(),
            content: output.content.clone(),
            is_error: output.is_error,
        };
        sink.send(ChatEvent {
            event: Some(chat_event::Event::ToolResult(result)),
        })
        .await?;
        let content = if output.is_error {
            format!("error: {}", output.content)
        } else {
            output.content
        };
        Ok(ChatMessage {
            role: "tool".into(),
            content: Some(content),
            tool_call_id: Some(call.id.clone()),
            name: Some(call.name.clone()),
            ..ChatMessage::default()
        })
    }

    /// Stores the new user message and the answer together, or neither, once per request.
    async fn persist(
        &self,
        req: &ChatRequest,
        meta: &RequestMeta,
        key: Option<&TurnKey>,
        outcome: &Outcome,
    ) -> Result<(), Status> {
        let user = req.messages.iter().rev().find(|m| m.role == "user");
        let user = user.map(|m| m.content.clone()).unwrap_or_default();
        let turn = [
            NewMessage {
                role: "user".into(),
                content: user,
            },
            NewMessage {
                role: "assistant".into(),
                content: outcome.answer.clone(),
            },
        ];
        let record = StoredTurn {
            answer: outcome.answer.clone(),
            model: outcome.model.clone(),
            finish_reason: outcome.finish_reason.clone(),
        };
        let db = self.ctx.state.db.as_ref();
        let conversation = &req.conversation_id;
        let stored = turns::store(db, key, conversation, &meta.key_id, &turn, &record)
            .await
            .map_err(|e| status_from_state(&e))?;
        tracing::debug!(conversation_id = %conversation, stored, "turn persisted");
        Ok(())
    }
}

/// Drops nameless pieces and gives id-less calls an id, so results can refer to them.
fn named_calls(calls: Vec<ToolCall>, round: usize) -> Vec<ToolCall> {
    calls
        .into_iter()
        .filter(|c| !c.name.is_empty())
        .enumerate()
        .map(|(i, mut c)| {
            if c.id.is_empty() {
                c.id = format!("call_{round}_{i}");
            }
            c
        })
        .collect()
}
