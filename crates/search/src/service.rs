//! The search agent's gRPC services: `Search` (ingest, list, delete, query) and `Agent`.

use crate::answer;
use crate::embeddings::{self, Embedder, SearchConfig, VectorFailure, MAX_SCAN};
use crate::ingest::prepare;
use crate::rank;
use agentmesh_agent_runtime::{
    delta_event, final_event, forward_llm_stream, invalid_argument, last_user_message,
    spawn_events, status_from_llm, status_from_state, usage_event, validate_messages, AgentContext,
    EventSink, EventStream, RequestMeta,
};
use agentmesh_llm::{CompletionRequest, Usage};
use agentmesh_proto::v1::agent_server::Agent;
use agentmesh_proto::v1::search_server::Search;
use agentmesh_proto::v1::*;
use agentmesh_state::ScoredChunk;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;
use tonic::{Request, Response, Status};
use tracing::Instrument;

pub const AGENT_NAME: &str = "search";
/// Passages retrieved when the caller does not say.
pub const DEFAULT_TOP_K: usize = 5;
pub const MAX_TOP_K: usize = 50;

/// Serves both services over one shared context.
#[derive(Clone)]
pub struct SearchAgent {
    ctx: AgentContext,
    /// Present when an embeddings model is configured.
    embedder: Option<Arc<Embedder>>,
}

impl SearchAgent {
    /// Full-text ranking only.
    pub fn new(ctx: AgentContext) -> Self {
        Self::with_config(ctx, &SearchConfig::default())
    }

    /// Blends vector similarity in when `config` names an embeddings model.
    pub fn with_config(ctx: AgentContext, config: &SearchConfig) -> Self {
        let embedder = config.embeddings_model.as_ref().map(|model| {
            let llm = ctx.llm.clone();
            Arc::new(Embedder::new(llm, model.clone(), config.query_timeout))
        });
        Self { ctx, embedder }
    }

    /// The `top_k` best passages, ranked with their documents' other hits. With an
    /// embeddings model, the full-text and vector rankings are fused first; the vector
    /// side failing leaves the full-text ranking alone, never an error.
    async fn retrieve(
        &self,
        query: &str,
        top_k: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<ScoredChunk>, Status> {
        let db = &self.ctx.state.db;
        let pool = rank::candidates(top_k);
        let Some(embedder) = &self.embedder else {
            let hits = db
                .search_chunks(query, pool)
                .await
                .map_err(|e| status_from_state(&e))?;
            return Ok(rank::by_document(query, hits, top_k));
        };
        let (hits, vector) = tokio::join!(
            db.search_chunks(query, pool),
            self.vector_hits(embedder, query, pool, deadline)
        );
        let hits = hits.map_err(|e| status_from_state(&e))?;
        let hits = match vector {
            Ok(vector) => {
                embedder.succeeded();
                embeddings::fuse(hits, vector)
            }
            Err(failure) => {
                embedder.failed(&failure);
                hits
            }
        };
        Ok(rank::by_document(query, hits, top_k))
    }

    /// The `n` chunks whose vectors are nearest the question's, scored by cosine.
    async fn vector_hits(
        &self,
        embedder: &Embedder,
        query: &str,
        n: usize,
        deadline: Option<Instant>,
    ) -> Result<Vec<ScoredChunk>, VectorFailure> {
        let db = &self.ctx.state.db;
        let (question, stored) = tokio::join!(
            embedder.query(query, deadline),
            db.chunk_vectors(embedder.model(), MAX_SCAN + 1)
        );
        let question = question.map_err(VectorFailure::Embed)?;
        let stored = stored.map_err(VectorFailure::Store)?;
        if stored.len() > MAX_SCAN {
            return Err(VectorFailure::TooManyVectors);
        }
        let nearest = embeddings::nearest(&question, &stored, n);
        let ids: Vec<i64> = nearest.iter().map(|(id, _)| *id).collect();
        let found = db.chunks_by_id(&ids).await.map_err(VectorFailure::Store)?;
        let mut chunks: HashMap<i64, ScoredChunk> = found.into_iter().collect();
        let ranked = nearest.into_iter().filter_map(|(id, similarity)| {
            let mut chunk = chunks.remove(&id)?;
            chunk.score = similarity;
            Some(chunk)
        });
        Ok(ranked.collect())
    }
}

fn span<T>(req: &Request<T>, rpc: &'static str) -> tracing::Span {
    RequestMeta::from_metadata(req.metadata()).span(AGENT_NAME, rpc)
}

#[tonic::async_trait]
impl Search for SearchAgent {
    async fn ingest(
        &self,
        request: Request<IngestRequest>,
    ) -> Result<Response<IngestResponse>, Status> {
        let span = span(&request, "Ingest");
        async move {
            let deadline = RequestMeta::from_metadata(request.metadata()).llm_deadline();
            let prepared = prepare(request.into_inner())?;
            let (id, chunks) = (prepared.doc.id.clone(), prepared.chunks.len());
            let db = &self.ctx.state.db;
            let stored = match &self.embedder {
                None => db.upsert_document(prepared.doc, prepared.chunks).await,
                Some(embedder) => {
                    let vectors = embedder
                        .chunks(&prepared.chunks, deadline)
                        .await
                        .map_err(|e| status_from_llm(&e))?;
                    db.upsert_document_with_vectors(prepared.doc, prepared.chunks, vectors)
                        .await
                }
            };
            let replaced = stored.map_err(|e| status_from_state(&e))?;
            let vectors = self.embedder.is_some();
            tracing::info!(document_id = %id, chunks, replaced, vectors, "document ingested");
            let chunks = u32::try_from(chunks).unwrap_or(u32::MAX);
            Ok(Response::new(IngestResponse {
                id,
                chunks,
                replaced,
            }))
        }
        .instrument(span)
        .await
    }

    async fn delete(
        &self,
        request: Request<DeleteDocumentRequest>,
    ) -> Result<Response<DeleteDocumentResponse>, Status> {
        let span = span(&request, "Delete");
        async move {
            let id = request.into_inner().id;
            if id.is_empty() {
                return Err(invalid_argument("id must not be empty", Some("id")));
            }
            let db = &self.ctx.state.db;
            let deleted = db
                .delete_document(&id)
                .await
                .map_err(|e| status_from_state(&e))?;
            Ok(Response::new(DeleteDocumentResponse { deleted }))
        }
        .instrument(span)
        .await
    }

    async fn list(
        &self,
        request: Request<ListDocumentsRequest>,
    ) -> Result<Response<ListDocumentsResponse>, Status> {
        let span = span(&request, "List");
        async move {
            let docs = self
                .ctx
                .state
                .db
                .list_documents()
                .await
                .map_err(|e| status_from_state(&e))?;
            let documents = docs
                .into_iter()
                .map(|d| Document {
                    id: d.id,
                    title: d.title,
                    source: d.source,
                    chunks: d.chunks,
                    metadata_json: d.metadata.to_string(),
                    created_at: d.created_at.to_rfc3339(),
                })
                .collect();
            Ok(Response::new(ListDocumentsResponse { documents }))
        }
        .instrument(span)
        .await
    }

    async fn query(
        &self,
        request: Request<SearchQueryRequest>,
    ) -> Result<Response<SearchQueryResponse>, Status> {
        let span = span(&request, "Query");
        async move {
            let deadline = RequestMeta::from_metadata(request.metadata()).llm_deadline();
            let req = request.into_inner();
            if req.query.trim().is_empty() {
                return Err(invalid_argument("query must not be empty", Some("query")));
            }
            let top_k = match req.top_k as usize {
                0 => DEFAULT_TOP_K,
                k => k.min(MAX_TOP_K),
            };
            let results = self
                .retrieve(&req.query, top_k, deadline)
                .await?
                .into_iter()
                .map(passage)
                .collect();
            Ok(Response::new(SearchQueryResponse { results }))
        }
        .instrument(span)
        .await
    }
}

fn passage(c: ScoredChunk) -> Passage {
    Passage {
        document_id: c.document_id,
        title: c.title,
        source: c.source,
        heading: c.heading,
        text: c.text,
        score: c.score,
    }
}

#[tonic::async_trait]
impl Agent for SearchAgent {
    type ChatStream = EventStream;

    async fn chat(&self, request: Request<ChatRequest>) -> Result<Response<EventStream>, Status> {
        let span = span(&request, "Chat");
        let deadline = RequestMeta::from_metadata(request.metadata()).llm_deadline();
        let req = request.into_inner();
        validate_messages(&req.messages)?;
        let question = last_user_message(&req.messages)?.to_string();
        let agent = self.clone();
        let stream = spawn_events(span, move |sink| async move {
            agent.answer(req, question, deadline, sink).await
        });
        Ok(Response::new(stream))
    }

    async fn describe(
        &self,
        request: Request<DescribeRequest>,
    ) -> Result<Response<DescribeResponse>, Status> {
        let _span = span(&request, "Describe").entered();
        Ok(Response::new(DescribeResponse {
            name: AGENT_NAME.into(),
            version: env!("CARGO_PKG_VERSION").into(),
            model: self.ctx.llm.default_model().into(),
            tools: Vec::new(),
        }))
    }
}

impl SearchAgent {
    async fn answer(
        &self,
        req: ChatRequest,
        question: String,
        deadline: Option<Instant>,
        sink: EventSink,
    ) -> Result<(), Status> {
        let passages = self.retrieve(&question, DEFAULT_TOP_K, deadline).await?;
        tracing::debug!(passages = passages.len(), "retrieved");
        if passages.is_empty() {
            sink.send(delta_event(answer::NOTHING_FOUND)).await?;
            sink.send(usage_event(&Usage::default())).await?;
            let model = self.ctx.llm.default_model();
            return sink
                .send(final_event("stop", model, &req.conversation_id))
                .await;
        }

        let llm_req = CompletionRequest {
            messages: answer::prompt(&question, &passages),
            temperature: req.temperature,
            top_p: req.top_p,
            max_tokens: req.max_tokens,
            stop: req.stop,
            deadline,
            ..CompletionRequest::default()
        };
        let out = forward_llm_stream(&self.ctx.llm, llm_req, &sink, false).await?;

        let used = answer::used(&out.text, passages.len());
        sink.send(delta_event(answer::sources_text(&passages, &used)))
            .await?;
        sink.send(citations_event(&passages, &used)).await?;
        sink.send(usage_event(&out.usage)).await?;
        let model = if out.model.is_empty() {
            self.ctx.llm.default_model()
        } else {
            &out.model
        };
        let reason = if out.finish_reason.is_empty() {
            "stop"
        } else {
            &out.finish_reason
        };
        sink.send(final_event(reason, model, &req.conversation_id))
            .await
    }
}

fn citations_event(passages: &[ScoredChunk], used: &[usize]) -> ChatEvent {
    let citations = used
        .iter()
        .filter_map(|n| passages.get(n - 1))
        .map(|p| Citation {
            document_id: p.document_id.clone(),
            title: p.title.clone(),
            source: p.source.clone(),
            heading: p.heading.clone(),
            score: p.score,
        })
        .collect();
    ChatEvent {
        event: Some(chat_event::Event::Citations(Citations { citations })),
    }
}
