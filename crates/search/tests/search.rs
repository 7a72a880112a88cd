//! The search agent over gRPC: the Kubernetes corpus, ranking, cited answers, refusals.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_agent_testing as helpers;

use agentmesh_agent_runtime::Peers;
use agentmesh_mock_llm::{MockConfig, Rule};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::*;
use helpers::*;
use tonic::transport::Channel;

#[path = "search/vectors.rs"]
mod vectors;

const CORPUS: &str = "../../../shared/data/k8s-docs";
const OOM_QUESTION: &str =
    "container status says OOMKilled, exit code 137. what does that mean and what should I change?";
const MEMORY_PAGES: [&str; 2] = [
    "tasks__configure-pod-container__assign-memory-resource",
    "concepts__configuration__manage-resources-containers",
];

fn corpus_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CORPUS)
}

async fn start_search(config: MockConfig) -> Running {
    let (state, dir) = sqlite_state().await;
    let serve = |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| {
        agentmesh_search::serve(ctx, listener, async move {
            let _ = stop.await;
        })
    };
    start(serve, config, state, dir, Peers::default()).await
}

async fn clients(url: &str) -> (SearchClient<Channel>, AgentClient<Channel>) {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    (
        SearchClient::new(channel.clone()),
        AgentClient::new(channel),
    )
}

/// Ingests every page of the corpus (not its SOURCE.md), id = file stem.
async fn ingest_corpus(search: &mut SearchClient<Channel>) -> usize {
    let mut count = 0;
    for entry in std::fs::read_dir(corpus_dir()).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.ends_with(".md") || name == "SOURCE.md" {
            continue;
        }
        let req = IngestRequest {
            id: name.trim_end_matches(".md").to_string(),
            title: String::new(),
            text: std::fs::read_to_string(&path).unwrap(),
            source: name.clone(),
            metadata_json: String::new(),
        };
        let resp = search.ingest(req).await.unwrap().into_inner();
        assert!(resp.chunks > 0, "{name} produced no chunks");
        count += 1;
    }
    count
}

#[tokio::test]
async fn oom_question_ranks_a_memory_page_first_and_the_answer_cites_it() {
    let rule = Rule {
        system_contains: Some("numbered passages".into()),
        ..Rule::reply("The container used more memory than its limit and was killed [1].")
    };
    let agent = start_search(MockConfig::new(MODEL).with_rule(rule)).await;
    let (mut search, mut chat) = clients(&agent.url).await;
    let ingested = ingest_corpus(&mut search).await;
    assert_eq!(ingested, 59);
    let listed = search
        .list(ListDocumentsRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.documents.len(), 59);
    let qos = listed
        .documents
        .iter()
        .find(|d| d.id.ends_with("pod-qos"))
        .unwrap();
    assert_eq!(qos.title, "Pod Quality of Service Classes");

    let query = SearchQueryRequest {
        query: OOM_QUESTION.into(),
        top_k: 0,
    };
    let results = search.query(query).await.unwrap().into_inner().results;
    assert!(
        !results.is_empty() && results.len() <= 5,
        "{} results",
        results.len()
    );
    let top = &results[0];
    assert!(
        MEMORY_PAGES.contains(&top.document_id.as_str()),
        "top hit {}",
        top.document_id
    );

    let stream = chat
        .chat(chat_request(vec![user(OOM_QUESTION)], ""))
        .await
        .unwrap();
    let (events, error) = collect(stream.into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    let answer = text(&events);
    assert!(
        answer.starts_with("The container used more memory"),
        "{answer}"
    );
    let sources = answer.split("\n\nSources:\n").nth(1).unwrap_or_default();
    let first = sources.lines().next().unwrap_or_default();
    let named = format!(" {} ({}) — ", top.title, top.document_id);
    assert!(
        first.starts_with("[1]") && first.contains(&named),
        "{answer}"
    );

    let citations = events.iter().find_map(|e| match e {
        chat_event::Event::Citations(c) => Some(c.citations.clone()),
        _ => None,
    });
    let citations = citations.expect("a citations event");
    assert_eq!(citations.len(), 1);
    assert_eq!(citations[0].document_id, top.document_id);
    assert!(
        matches!(events.last(), Some(chat_event::Event::Final(f)) if f.finish_reason == "stop")
    );
    assert!(events
        .iter()
        .any(|e| matches!(e, chat_event::Event::Usage(_))));

    let log = mock_log(&agent.mock);
    assert_eq!(log.len(), 1);
    assert!(
        log[0].contains("OOMKilled") && log[0].contains("[1] "),
        "{}",
        log[0]
    );
}

#[tokio::test]
async fn unanswerable_question_says_so_without_calling_the_model() {
    let agent = start_search(MockConfig::new(MODEL)).await;
    let (mut search, mut chat) = clients(&agent.url).await;
    let doc = IngestRequest {
        title: "Pods".into(),
        text: "# Pods\n\nA pod groups containers.\n".into(),
        ..IngestRequest::default()
    };
    let id = search.ingest(doc).await.unwrap().into_inner().id;
    assert!(!id.is_empty());

    let stream = chat
        .chat(chat_request(vec![user("zebra migration patterns")], ""))
        .await;
    let (events, error) = collect(stream.unwrap().into_inner()).await;
    assert!(error.is_none());
    assert!(
        text(&events).starts_with("No ingested document covers"),
        "{}",
        text(&events)
    );
    assert!(matches!(events.last(), Some(chat_event::Event::Final(_))));
    assert!(agent.mock.requests().is_empty());
}

#[tokio::test]
async fn same_id_replaces_and_delete_removes() {
    let agent = start_search(MockConfig::new(MODEL)).await;
    let (mut search, _) = clients(&agent.url).await;
    let doc = |text: &str| IngestRequest {
        id: "runbook".into(),
        title: "Runbook".into(),
        text: text.into(),
        ..IngestRequest::default()
    };
    let first = search
        .ingest(doc("## Restart\nrestart the gateway"))
        .await
        .unwrap()
        .into_inner();
    assert!(!first.replaced);
    let second = search
        .ingest(doc("## Scale\nscale the workers"))
        .await
        .unwrap()
        .into_inner();
    assert!(second.replaced);
    let hits = search
        .query(SearchQueryRequest {
            query: "gateway".into(),
            top_k: 3,
        })
        .await
        .unwrap()
        .into_inner()
        .results;
    assert!(hits.is_empty(), "old chunks are gone");
    let deleted = search
        .delete(DeleteDocumentRequest {
            id: "runbook".into(),
        })
        .await
        .unwrap();
    assert!(deleted.into_inner().deleted);
    let again = search
        .delete(DeleteDocumentRequest {
            id: "runbook".into(),
        })
        .await
        .unwrap();
    assert!(!again.into_inner().deleted);
}

#[tokio::test]
async fn bad_requests_are_invalid_argument_naming_the_field() {
    let agent = start_search(MockConfig::new(MODEL)).await;
    let (mut search, mut chat) = clients(&agent.url).await;

    let empty = IngestRequest {
        title: "t".into(),
        ..IngestRequest::default()
    };
    let status = search.ingest(empty).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "text");

    let binary = IngestRequest {
        title: "t".into(),
        text: "\u{1}\u{2}\u{3}\u{4}".into(),
        ..IngestRequest::default()
    };
    let status = search.ingest(binary).await.unwrap_err();
    assert!(status.message().contains("binary"), "{}", status.message());

    let status = search
        .query(SearchQueryRequest::default())
        .await
        .unwrap_err();
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "query");

    let status = chat.chat(chat_request(vec![], "")).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert_eq!(meta(&status, "x-agentmesh-error-param"), "messages");
    assert_eq!(meta(&status, "x-agentmesh-http-status"), "400");

    let bad_role = Message {
        role: "robot".into(),
        content: "hi".into(),
        ..Message::default()
    };
    let status = chat
        .chat(chat_request(vec![bad_role], ""))
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::InvalidArgument);

    let described = chat
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.name, "search");
    assert_eq!(described.model, MODEL);
}

#[tokio::test]
async fn health_reports_each_service_serving() {
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::{health_client::HealthClient, HealthCheckRequest};
    let agent = start_search(MockConfig::new(MODEL)).await;
    let channel = Channel::from_shared(agent.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = HealthClient::new(channel);
    for service in ["agentmesh.v1.Agent", "agentmesh.v1.Search"] {
        let req = HealthCheckRequest {
            service: service.into(),
        };
        let status = health.check(req).await.unwrap().into_inner().status;
        assert_eq!(status, ServingStatus::Serving as i32, "{service}");
    }
    let unknown = HealthCheckRequest {
        service: "agentmesh.v1.Data".into(),
    };
    assert_eq!(
        health.check(unknown).await.unwrap_err().code(),
        tonic::Code::NotFound
    );
}
