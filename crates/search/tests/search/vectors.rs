//! Vector similarity blended into ranking (mock-llm's hashed word + trigram vectors), its
//! fallback to full text when the embeddings provider fails, and vectors following
//! re-ingestion and deletion; each on SQLite and on Postgres.

use super::clients;
use agentmesh_agent_testing::{start, Running, MODEL};
use agentmesh_mock_llm::{embedding, MockConfig, Rule};
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::*;
use agentmesh_search::SearchConfig;
use agentmesh_state::testing::{self, TestDb};
use agentmesh_state::State;
use std::time::{Duration, Instant};
use tonic::transport::Channel;

/// The page says "NodePort"; the question says "node port": no full-text term in common
/// (neither stemmer splits the compound), but the words share most of their trigrams.
const NODEPORT_PAGE: &str = "## Exposure\nA NodePort service listens on every machine of \
                             the cluster and forwards traffic to its pods.\n";
const NODEPORT_QUESTION: &str = "node port";
const VOLUME_PAGE: &str = "## Claims\nA persistent volume claim asks the cluster for storage \
                           that outlives any single pod.\n";

const DIM: usize = 1024;

enum Backend {
    Sqlite,
    Postgres,
}

struct Env {
    state: State,
    db: Option<TestDb>,
}

impl Env {
    async fn new(backend: Backend) -> (Env, tempfile::TempDir) {
        match backend {
            Backend::Sqlite => {
                let (state, dir) = agentmesh_agent_testing::sqlite_state().await;
                (Env { state, db: None }, dir)
            }
            Backend::Postgres => {
                let db = testing::fresh_postgres().await;
                let state = State::connect(&db.state_config()).await.unwrap();
                let dir = tempfile::tempdir().unwrap();
                (
                    Env {
                        state,
                        db: Some(db),
                    },
                    dir,
                )
            }
        }
    }

    /// The agent with `config` over this state.
    async fn agent(&self, mock: MockConfig, config: SearchConfig) -> Running {
        let dir = tempfile::tempdir().unwrap();
        let serve = move |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| async move {
            let stop = async move {
                let _ = stop.await;
            };
            agentmesh_search::serve_with(ctx, &config, listener, stop).await
        };
        start(serve, mock, self.state.clone(), dir, Default::default()).await
    }

    async fn finish(self) {
        drop(self.state);
        if let Some(db) = self.db {
            db.cleanup().await;
        }
    }
}

/// The mock with 1024 dimensions: at its default 256, hash collisions between unrelated
/// words are as strong as the shared trigrams of "node port" and "NodePort".
fn mock() -> MockConfig {
    MockConfig {
        embedding_dim: DIM,
        ..MockConfig::new(MODEL)
    }
}

/// Cosine of the mock's vectors for `a` and `b`, as the agent will see them.
fn similarity(a: &str, b: &str) -> f64 {
    agentmesh_search::embeddings::cosine(&embedding(a, DIM), &embedding(b, DIM))
}

fn with_vectors(query_timeout: Duration) -> SearchConfig {
    SearchConfig {
        embeddings_model: Some(MODEL.into()),
        query_timeout,
    }
}

fn page(id: &str, title: &str, text: &str) -> IngestRequest {
    IngestRequest {
        id: id.into(),
        title: title.into(),
        text: text.into(),
        ..IngestRequest::default()
    }
}

async fn ask(search: &mut SearchClient<Channel>, query: &str) -> Vec<Passage> {
    let req = SearchQueryRequest {
        query: query.into(),
        top_k: 5,
    };
    search.query(req).await.unwrap().into_inner().results
}

fn ids(results: &[Passage]) -> Vec<&str> {
    results.iter().map(|p| p.document_id.as_str()).collect()
}

async fn paraphrase_found_only_through_vectors(backend: Backend) {
    let services = format!("Service types > Exposure\n{}", &NODEPORT_PAGE[12..]);
    let volumes = format!("Volumes > Claims\n{}", &VOLUME_PAGE[10..]);
    let (near, far) = (
        similarity(NODEPORT_QUESTION, &services),
        similarity(NODEPORT_QUESTION, &volumes),
    );
    assert!(
        near > 0.03 && near > 2.0 * far,
        "shared trigrams: {near} vs {far}"
    );
    let (env, _dir) = Env::new(backend).await;
    let agent = env
        .agent(mock(), with_vectors(Duration::from_secs(5)))
        .await;
    let (mut search, _) = clients(&agent.url).await;
    for req in [
        page("services", "Service types", NODEPORT_PAGE),
        page("volumes", "Volumes", VOLUME_PAGE),
    ] {
        search.ingest(req).await.unwrap();
    }
    let stored = env.state.db.chunk_vectors(MODEL, 100).await.unwrap();
    assert_eq!(stored.len(), 2, "one vector per chunk");
    assert_eq!(stored[0].vector.len(), DIM);

    let plain = env
        .agent(MockConfig::new(MODEL), SearchConfig::default())
        .await;
    let (mut plain_search, _) = clients(&plain.url).await;
    let text_only = ask(&mut plain_search, NODEPORT_QUESTION).await;
    assert!(
        text_only.is_empty(),
        "full text alone: {:?}",
        ids(&text_only)
    );
    assert!(
        plain.mock.requests().is_empty(),
        "no embeddings model, no call"
    );

    let blended = ask(&mut search, NODEPORT_QUESTION).await;
    assert_eq!(
        ids(&blended).first(),
        Some(&"services"),
        "{:?}",
        ids(&blended)
    );
    assert_eq!(blended[0].heading, "Service types > Exposure");

    // A question both sides agree on keeps its page first.
    let both = ask(&mut search, "persistent volume claim storage").await;
    assert_eq!(ids(&both)[0], "volumes");
    drop((agent, plain));
    env.finish().await;
}

#[tokio::test]
async fn paraphrase_found_only_through_vectors_sqlite() {
    paraphrase_found_only_through_vectors(Backend::Sqlite).await;
}

#[tokio::test]
async fn paraphrase_found_only_through_vectors_postgres() {
    paraphrase_found_only_through_vectors(Backend::Postgres).await;
}

/// The process's count of searches answered without vectors because embedding failed.
fn embed_fallbacks() -> f64 {
    let text = agentmesh_telemetry::metrics::render();
    let line = text
        .lines()
        .find(|l| l.starts_with("agentmesh_search_embedding_fallbacks_total{reason=\"embed\"}"));
    line.and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0.0)
}

async fn failing_provider_leaves_full_text(backend: Backend) {
    agentmesh_telemetry::metrics::install();
    let fallbacks = embed_fallbacks();
    let (env, _dir) = Env::new(backend).await;
    let mock = mock()
        .with_rule(Rule::status(500).when_last_user("error out"))
        .with_rule(Rule {
            hang: true,
            ..Rule::reply("").when_last_user("never answer")
        });
    let agent = env
        .agent(mock, with_vectors(Duration::from_millis(400)))
        .await;
    let plain = env
        .agent(MockConfig::new(MODEL), SearchConfig::default())
        .await;
    let (mut search, _) = clients(&agent.url).await;
    let (mut plain_search, _) = clients(&plain.url).await;
    for req in [
        page("services", "Service types", NODEPORT_PAGE),
        page("volumes", "Volumes", VOLUME_PAGE),
    ] {
        search.ingest(req).await.unwrap();
    }

    for question in [
        "volume claim storage, error out",
        "volume claim storage, never answer",
    ] {
        let started = Instant::now();
        let got = ask(&mut search, question).await;
        let elapsed = started.elapsed();
        let expected = ask(&mut plain_search, question).await;
        assert_eq!(got, expected, "{question}: answered from full text alone");
        assert_eq!(ids(&got)[0], "volumes", "{question}");
        assert!(
            elapsed < Duration::from_secs(4),
            "{question} took {elapsed:?}"
        );
    }
    let counted = embed_fallbacks() - fallbacks;
    assert!(counted >= 2.0, "both searches counted: {counted}");
    let asked = agent.mock.requests().len();
    assert!(
        asked >= 3,
        "the 500 is retried, the hang tried: {asked} requests"
    );

    // Once the provider answers again, vectors are back.
    let blended = ask(&mut search, NODEPORT_QUESTION).await;
    assert_eq!(ids(&blended).first(), Some(&"services"), "{blended:?}");

    // A document whose chunks cannot be embedded is refused whole, not stored without them.
    let status = search
        .ingest(page("broken", "Broken", "## X\nplease error out here\n"))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::Internal, "{status:?}");
    let listed = search.list(ListDocumentsRequest {}).await.unwrap();
    assert_eq!(listed.into_inner().documents.len(), 2);
    drop((agent, plain));
    env.finish().await;
}

#[tokio::test]
async fn failing_provider_leaves_full_text_sqlite() {
    failing_provider_leaves_full_text(Backend::Sqlite).await;
}

#[tokio::test]
async fn failing_provider_leaves_full_text_postgres() {
    failing_provider_leaves_full_text(Backend::Postgres).await;
}

async fn reingest_replaces_vectors(backend: Backend) {
    let (env, _dir) = Env::new(backend).await;
    let agent = env
        .agent(mock(), with_vectors(Duration::from_secs(5)))
        .await;
    let (mut search, _) = clients(&agent.url).await;
    let first = page("runbook", "Runbook", NODEPORT_PAGE);
    search.ingest(first).await.unwrap();
    assert_eq!(ids(&ask(&mut search, NODEPORT_QUESTION).await), ["runbook"]);

    let second = format!("{VOLUME_PAGE}\n## Backups\nSnapshots copy the claim nightly.\n");
    let replaced = search
        .ingest(page("runbook", "Runbook", &second))
        .await
        .unwrap()
        .into_inner();
    assert!(replaced.replaced);
    let stored = env.state.db.chunk_vectors(MODEL, 100).await.unwrap();
    assert_eq!(stored.len(), 2, "the new chunks' vectors only");
    let texts = env
        .state
        .db
        .chunks_by_id(&stored.iter().map(|v| v.chunk_id).collect::<Vec<_>>())
        .await
        .unwrap();
    for (id, chunk) in &texts {
        let vector = &stored.iter().find(|v| v.chunk_id == *id).unwrap().vector;
        let expected = embedding(&format!("{}\n{}", chunk.heading, chunk.text), DIM);
        assert_eq!(vector, &expected, "vector of {:?}", chunk.heading);
    }
    let old = ask(&mut search, NODEPORT_QUESTION).await;
    assert!(
        old.iter().all(|p| !p.text.contains("NodePort")),
        "old passage gone: {old:?}"
    );

    search
        .delete(DeleteDocumentRequest {
            id: "runbook".into(),
        })
        .await
        .unwrap();
    assert!(env
        .state
        .db
        .chunk_vectors(MODEL, 100)
        .await
        .unwrap()
        .is_empty());
    assert!(ask(&mut search, "volume claim").await.is_empty());
    drop(agent);
    env.finish().await;
}

#[tokio::test]
async fn reingest_replaces_vectors_sqlite() {
    reingest_replaces_vectors(Backend::Sqlite).await;
}

#[tokio::test]
async fn reingest_replaces_vectors_postgres() {
    reingest_replaces_vectors(Backend::Postgres).await;
}

#[tokio::test]
async fn an_embeddings_model_no_provider_serves_stops_the_agent_at_start() {
    let (state, _dir) = agentmesh_agent_testing::sqlite_state().await;
    let llm = agentmesh_llm::LlmClient::new(agentmesh_llm::LlmConfig::single(
        "mock",
        "http://127.0.0.1:9",
        MODEL,
    ))
    .unwrap();
    let ctx = agentmesh_agent_runtime::AgentContext {
        state,
        llm,
        peers: Default::default(),
    };
    let config = SearchConfig {
        embeddings_model: Some("no-such-embedder".into()),
        ..SearchConfig::default()
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let served = agentmesh_search::serve_with(ctx, &config, listener, async {}).await;
    let message = format!("{:#}", served.unwrap_err());
    assert!(
        message.contains("AGENTMESH_EMBEDDINGS_MODEL=\"no-such-embedder\"")
            && message.contains("no configured LLM provider serves"),
        "{message}"
    );
}
