//! The chat agent over gRPC: memory across calls, tools over gRPC, nothing stored on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use agentmesh_agent_runtime::Peers;
use agentmesh_mock_llm::{MockConfig, Rule};
use agentmesh_proto::v1::agent_client::AgentClient;
use agentmesh_proto::v1::search_client::SearchClient;
use agentmesh_proto::v1::*;
use helpers::*;
use serde_json::json;
use tonic::transport::Channel;

async fn start_chat(config: MockConfig, peers: Peers) -> Running {
    let (state, dir) = sqlite_state().await;
    let serve = |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| {
        agentmesh_chat::serve(ctx, listener, async move {
            let _ = stop.await;
        })
    };
    start(serve, config, state, dir, peers).await
}

async fn start_search() -> Running {
    let (state, dir) = sqlite_state().await;
    let serve = |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| {
        agentmesh_search::serve(ctx, listener, async move {
            let _ = stop.await;
        })
    };
    start(serve, MockConfig::new(MODEL), state, dir, Peers::default()).await
}

async fn agent(url: &str) -> AgentClient<Channel> {
    let channel = Channel::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    AgentClient::new(channel)
}

async fn ask(
    client: &mut AgentClient<Channel>,
    text: &str,
    conversation: &str,
) -> Vec<chat_event::Event> {
    let mut request = tonic::Request::new(chat_request(vec![user(text)], conversation));
    request
        .metadata_mut()
        .insert("x-request-id", "req-test".parse().unwrap());
    request
        .metadata_mut()
        .insert("x-agentmesh-key-id", "key-test".parse().unwrap());
    let (events, error) = collect(client.chat(request).await.unwrap().into_inner()).await;
    assert!(error.is_none(), "{error:?}");
    events
}

#[tokio::test]
async fn remembers_a_fact_across_calls_with_the_same_conversation() {
    let config = MockConfig::new(MODEL)
        .with_rule(Rule {
            any_contains: Some("teal".into()),
            ..Rule::reply("Your favourite colour is teal.").when_last_user("which colour")
        })
        .with_rule(Rule::reply("Noted."));
    let chat = start_chat(config, Peers::default()).await;
    let mut client = agent(&chat.url).await;

    let first = ask(&mut client, "My favourite colour is teal.", "conv-1").await;
    assert_eq!(text(&first), "Noted.");
    let second = ask(&mut client, "Which colour do I like?", "conv-1").await;
    assert_eq!(text(&second), "Your favourite colour is teal.");
    match second.last() {
        Some(chat_event::Event::Final(f)) => assert_eq!(f.conversation_id, "conv-1"),
        other => panic!("last event {other:?}"),
    }

    let log = mock_log(&chat.mock);
    assert_eq!(log.len(), 2);
    assert!(!log[0].contains("Noted."));
    assert!(log[1].contains("My favourite colour is teal.") && log[1].contains("Noted."));

    let stored = chat
        .state
        .db
        .load_conversation("conv-1")
        .await
        .unwrap()
        .unwrap();
    let roles: Vec<_> = stored.messages.iter().map(|m| m.role.as_str()).collect();
    assert_eq!(roles, ["user", "assistant", "user", "assistant"]);
    assert_eq!(stored.key_id, "key-test");

    let other = ask(&mut client, "Which colour do I like?", "conv-2").await;
    assert_ne!(
        text(&other),
        "Your favourite colour is teal.",
        "conversations are separate"
    );
}

#[tokio::test]
async fn calls_the_search_agent_when_the_model_asks() {
    let search = start_search().await;
    let channel = Channel::from_shared(search.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let doc = IngestRequest {
        id: "memory-limits".into(),
        title: "Assign Memory Resources".into(),
        text: "## Exceed a limit\nA container that uses more memory than its limit is \
               OOMKilled by the kubelet.\n"
            .into(),
        ..IngestRequest::default()
    };
    SearchClient::new(channel).ingest(doc).await.unwrap();

    let call = Rule::tool_call(
        "search_documents",
        json!({"query": "OOMKilled memory limit"}),
    );
    let answer = Rule {
        any_contains: Some("OOMKilled by the kubelet".into()),
        ..Rule::reply("It ran out of memory; raise its memory limit.")
    };
    let config = MockConfig::new(MODEL).with_rule(call.when_last_user("oomkilled"));
    let peers = Peers {
        search: Some(search.url.clone()),
        data: None,
    };
    let chat = start_chat(config.with_rule(answer), peers).await;
    let mut client = agent(&chat.url).await;

    let events = ask(&mut client, "Why was my pod OOMKilled?", "").await;
    let call = events.iter().find_map(|e| match e {
        chat_event::Event::ToolCall(c) => Some(c.clone()),
        _ => None,
    });
    assert_eq!(call.expect("tool_call event").name, "search_documents");
    let result = events.iter().find_map(|e| match e {
        chat_event::Event::ToolResult(r) => Some(r.clone()),
        _ => None,
    });
    let result = result.expect("tool_result event");
    assert!(!result.is_error, "{}", result.content);
    assert!(
        result
            .content
            .contains("Assign Memory Resources (memory-limits)"),
        "{}",
        result.content
    );
    assert_eq!(
        text(&events),
        "It ran out of memory; raise its memory limit."
    );

    let log = mock_log(&chat.mock);
    assert_eq!(log.len(), 2);
    assert!(
        log[0].contains("search_documents"),
        "tools offered: {}",
        log[0]
    );
    assert!(log[1].contains("is OOMKilled by the kubelet"), "{}", log[1]);
}

#[tokio::test]
async fn a_failing_tool_is_reported_to_the_model_not_a_crash() {
    let call = Rule::tool_call("query_data", json!({"question": "total revenue?"}));
    let config = MockConfig::new(MODEL).with_rule(call.when_last_user("revenue"));
    let peers = Peers {
        search: None,
        data: Some("http://127.0.0.1:9".into()),
    };
    let chat = start_chat(config, peers).await;
    let mut client = agent(&chat.url).await;

    let events = ask(&mut client, "What is the total revenue?", "").await;
    let result = events.iter().find_map(|e| match e {
        chat_event::Event::ToolResult(r) => Some(r.clone()),
        _ => None,
    });
    assert!(result.expect("tool_result event").is_error);
    assert!(matches!(events.last(), Some(chat_event::Event::Final(_))));
    let log = mock_log(&chat.mock);
    assert!(log[1].contains("query_data failed"), "{}", log[1]);
}

#[tokio::test]
async fn a_broken_stream_stores_nothing() {
    let rule = Rule {
        cut_after_chunks: Some(1),
        ..Rule::reply("one two three four five six")
    };
    let chat = start_chat(MockConfig::new(MODEL).with_rule(rule), Peers::default()).await;
    let mut client = agent(&chat.url).await;

    let request = chat_request(vec![user("tell me something")], "conv-cut");
    let (_, error) = collect(client.chat(request).await.unwrap().into_inner()).await;
    assert!(error.is_some(), "the cut stream ends with an error");
    let stored = chat.state.db.load_conversation("conv-cut").await.unwrap();
    assert!(
        stored.is_none_or(|c| c.messages.is_empty()),
        "nothing stored"
    );

    let described = client
        .describe(DescribeRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(described.name, "chat");
    assert!(described.tools.is_empty());
}
