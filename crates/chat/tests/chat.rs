//! The chat agent over gRPC: memory across calls, tools over gRPC, nothing stored on failure.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use agentmesh_agent_testing as helpers;

use agentmesh_agent_runtime::Peers;
use agentmesh_mock_llm::{MockConfig, MockToolCall, Rule};
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

async fn start_data_with_table(config: MockConfig) -> Running {
    let (state, dir) = sqlite_state().await;
    let serve = |ctx, listener, stop: tokio::sync::oneshot::Receiver<()>| {
        agentmesh_data::serve(ctx, listener, async move {
            let _ = stop.await;
        })
    };
    let running = start(serve, config, state, dir, Peers::default()).await;
    let channel = Channel::from_shared(running.url.clone())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let csv = RegisterDatasetRequest {
        name: "orders".into(),
        csv: b"id,total\n1,10\n2,32\n".to_vec(),
    };
    data_client::DataClient::new(channel)
        .register_dataset(csv)
        .await
        .unwrap();
    running
}

fn tool_results(events: &[chat_event::Event]) -> Vec<ToolResult> {
    events
        .iter()
        .filter_map(|e| match e {
            chat_event::Event::ToolResult(r) => Some(r.clone()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn two_tool_calls_of_one_turn_run_in_parallel_and_a_failure_goes_to_the_model() {
    // Each data answer waits 400 ms on its model: run one after the other, the two
    // calls could never be in the data agent's model at the same time.
    let slow_sql = Rule {
        delay_ms: Some(400),
        ..Rule::reply("```sql\nSELECT sum(total) AS revenue FROM orders\n```")
    };
    let data = start_data_with_table(
        MockConfig::new(MODEL)
            .with_rule(slow_sql.when_last_user("revenue"))
            .with_rule(Rule::reply("Revenue is 42.")),
    )
    .await;

    let calls = Rule {
        tool_calls: vec![
            MockToolCall {
                name: "query_data".into(),
                arguments: json!({"question": "total revenue of orders?"}),
            },
            MockToolCall {
                name: "query_data".into(),
                arguments: json!({"question": "revenue, again, to compare"}),
            },
            MockToolCall {
                name: "search_documents".into(),
                arguments: json!({"query": "refund policy"}),
            },
        ],
        ..Rule::default()
    };
    let answer = Rule {
        any_contains: Some("search failed".into()),
        ..Rule::reply("Revenue is 42; the documents could not be searched.")
    };
    let config = MockConfig::new(MODEL)
        .with_rule(calls.when_last_user("compare"))
        .with_rule(answer);
    let peers = Peers {
        search: Some("http://127.0.0.1:9".into()),
        data: Some(data.url.clone()),
    };
    let chat = start_chat(config, peers).await;
    let mut client = agent(&chat.url).await;

    let events = ask(&mut client, "Compare revenue and the refund policy", "").await;
    let results = tool_results(&events);
    assert_eq!(results.len(), 3, "{results:?}");
    let failed: Vec<_> = results.iter().filter(|r| r.is_error).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].name, "search_documents");
    for ok in results.iter().filter(|r| !r.is_error) {
        assert!(ok.content.contains("| 42"), "{}", ok.content);
    }
    assert_eq!(
        data.mock.in_flight_max(),
        2,
        "both data calls were in flight at once"
    );
    assert_eq!(
        text(&events),
        "Revenue is 42; the documents could not be searched."
    );

    let log = mock_log(&chat.mock);
    assert_eq!(log.len(), 2, "one tool round, then the answer");
    let second: serde_json::Value = serde_json::from_str(&log[1]).unwrap();
    let messages = second["messages"].as_array().unwrap();
    let tool_ids: Vec<&serde_json::Value> = messages
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| &m["tool_call_id"])
        .collect();
    let call_ids: Vec<&serde_json::Value> = messages
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .map(|c| &c["id"])
        .collect();
    assert_eq!(call_ids.len(), 3);
    assert_eq!(tool_ids, call_ids, "results answer calls in call order");
    assert!(log[1].contains("error: search failed"), "{}", log[1]);
}

async fn ask_with_id(
    client: &mut AgentClient<Channel>,
    text: &str,
    conversation: &str,
    request_id: &str,
) -> (Vec<chat_event::Event>, Option<tonic::Status>) {
    let mut request = tonic::Request::new(chat_request(vec![user(text)], conversation));
    let metadata = request.metadata_mut();
    metadata.insert("x-request-id", request_id.parse().unwrap());
    metadata.insert("x-agentmesh-key-id", "key-test".parse().unwrap());
    collect(client.chat(request).await.unwrap().into_inner()).await
}

#[tokio::test]
async fn a_retried_request_stores_its_turn_once_and_replays_the_answer() {
    let cut = Rule {
        cut_after_chunks: Some(1),
        times: Some(1),
        ..Rule::reply("half an answer that never ends")
    };
    let config = MockConfig::new(MODEL)
        .with_rule(cut)
        .with_rule(Rule::reply("Paris is the capital."));
    let chat = start_chat(config, Peers::default()).await;
    let mut client = agent(&chat.url).await;
    let stored = |chat: &Running| {
        let db = chat.state.db.clone();
        async move {
            let conv = db.load_conversation("conv-retry").await.unwrap();
            conv.map(|c| c.messages.len()).unwrap_or(0)
        }
    };

    let (_, error) = ask_with_id(&mut client, "Capital of France?", "conv-retry", "r-1").await;
    assert!(error.is_some(), "the first attempt dies mid-answer");
    assert_eq!(stored(&chat).await, 0);

    let (first, error) = ask_with_id(&mut client, "Capital of France?", "conv-retry", "r-1").await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&first), "Paris is the capital.");
    assert_eq!(stored(&chat).await, 2);

    let (again, error) = ask_with_id(&mut client, "Capital of France?", "conv-retry", "r-1").await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(text(&again), "Paris is the capital.");
    assert_eq!(stored(&chat).await, 2, "the retry stored nothing");
    assert_eq!(
        mock_log(&chat.mock).len(),
        2,
        "the retry did not call the model"
    );
    assert!(matches!(again.last(), Some(chat_event::Event::Final(_))));

    let (_, error) = ask_with_id(&mut client, "And of Spain?", "conv-retry", "r-2").await;
    assert!(error.is_none(), "{error:?}");
    assert_eq!(stored(&chat).await, 4, "a new request id is a new turn");
}
