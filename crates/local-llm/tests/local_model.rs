//! Runs the real model file: tokenizer, decoding, stop strings, limits, cancellation, usage.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod helpers;

use std::time::{Duration, Instant};

use agentmesh_llm::{ChatMessage, CompletionRequest, LlmError, LlmEvent};
use agentmesh_local_llm::{LocalError, LocalModel, LocalOptions};
use futures::StreamExt;
use helpers::{ask, fresh_model, shared_model};

#[test]
fn tokenizer_round_trips_text_including_non_ascii() {
    let model = shared_model();
    for text in [
        "héllo 世界 123",
        "  leading spaces, tabs\tand\nnew lines\n\n",
        "emoji 🦀 and accents: naïve café, Ünïcödé",
        "<|im_start|> is plain text here",
    ] {
        let ids = model.encode(text).unwrap();
        assert!(!ids.is_empty());
        assert_eq!(model.decode(&ids), text);
        assert_eq!(model.count_tokens(text), ids.len());
    }
}

#[test]
fn digits_are_split_one_by_one_and_markers_are_not_special_in_text() {
    let model = shared_model();
    assert_eq!(model.encode("123").unwrap().len(), 3);
    let ids = model.encode("<|im_start|>").unwrap();
    assert!(
        !ids.contains(&1),
        "text must not produce the control id: {ids:?}"
    );
}

#[test]
fn model_name_comes_from_the_file() {
    assert_eq!(shared_model().model_name(), "SmolLM2-135M-Instruct");
    assert!(shared_model().default_system_prompt().contains("SmolLM"));
}

#[tokio::test]
async fn greedy_decoding_is_deterministic() {
    let model = shared_model();
    let first = model
        .complete(ask("What is the capital of France?", 12))
        .await
        .unwrap();
    let second = model
        .complete(ask("What is the capital of France?", 12))
        .await
        .unwrap();
    assert!(!first.content.trim().is_empty());
    assert_eq!(first.content, second.content);
    assert_eq!(first.model, "SmolLM2-135M-Instruct");
    println!("answer: {:?}", first.content);
}

#[tokio::test]
async fn max_tokens_is_respected() {
    let model = shared_model();
    let answer = model
        .complete(ask("Write a long poem about the sea.", 5))
        .await
        .unwrap();
    assert_eq!(answer.finish_reason, "length");
    assert_eq!(answer.usage.completion_tokens, 5);
}

#[tokio::test]
async fn a_stop_sequence_stops_generation() {
    let model = shared_model();
    let question = "Write a long poem about the sea.";
    let free = model.complete(ask(question, 16)).await.unwrap();
    let words: Vec<&str> = free.content.split_whitespace().collect();
    assert!(
        words.len() >= 3,
        "too short to test stops: {:?}",
        free.content
    );
    let stop = words[2].to_string();

    let mut req = ask(question, 16);
    req.stop = vec![stop.clone()];
    let stopped = model.complete(req).await.unwrap();
    assert_eq!(stopped.finish_reason, "stop");
    assert!(!stopped.content.contains(&stop), "{:?}", stopped.content);
    let cut = free.content.find(&stop).unwrap();
    assert_eq!(stopped.content, free.content[..cut]);
}

#[tokio::test]
async fn usage_counts_match_the_tokenizer() {
    let model = shared_model();
    let question = "Name three colours.";
    let answer = model.complete(ask(question, 6)).await.unwrap();

    // ChatML: <|im_start|>{role}\n{content}<|im_end|>\n per turn, then <|im_start|>assistant\n.
    let turn = |role: &str, content: &str| {
        1 + model.count_tokens(&format!("{role}\n{content}")) + 1 + model.count_tokens("\n")
    };
    let expected = turn("system", model.default_system_prompt())
        + turn("user", question)
        + 1
        + model.count_tokens("assistant\n");
    assert_eq!(answer.usage.prompt_tokens as usize, expected);
    assert_eq!(answer.usage.completion_tokens, 6);
    assert_eq!(
        model.count_tokens(&answer.content),
        6,
        "{:?}",
        answer.content
    );
    assert_eq!(answer.usage.cost_usd, 0.0);
}

#[tokio::test]
async fn a_stream_sends_deltas_then_usage_then_done() {
    let model = shared_model();
    let mut stream = model.stream(ask("Say hello.", 4)).await.unwrap();
    let mut events = Vec::new();
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    let n = events.len();
    assert!(n >= 3, "{events:?}");
    assert!(events[..n - 2]
        .iter()
        .all(|e| matches!(e, LlmEvent::Delta(_))));
    assert!(matches!(events[n - 2], LlmEvent::Usage(_)));
    assert!(matches!(&events[n - 1], LlmEvent::Done { .. }));
}

#[tokio::test]
async fn dropping_the_stream_stops_generation() {
    let model = fresh_model(LocalOptions::default());
    let question = "Count from 1 to 100, separated by commas.";

    // Undisturbed, greedy decoding of this prompt runs to the limit.
    let full = model.complete(ask(question, 40)).await.unwrap();
    assert_eq!(full.finish_reason, "length", "{:?}", full.content);

    let before = model.generated_tokens();
    let mut stream = model.stream(ask(question, 40)).await.unwrap();
    let first = stream.next().await.unwrap().unwrap();
    assert!(matches!(first, LlmEvent::Delta(_)));
    drop(stream);

    let dropped_at = Instant::now();
    while model.queue_depth() > 0 {
        assert!(
            dropped_at.elapsed() < Duration::from_secs(2),
            "generation did not stop"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let made = model.generated_tokens() - before;
    assert!(
        made < 40,
        "generated {made} tokens after the stream was dropped"
    );
}

#[tokio::test]
async fn a_full_queue_is_refused_at_once() {
    let model = fresh_model(LocalOptions {
        queue_capacity: 1,
        ..LocalOptions::default()
    });
    let mut running = model
        .stream(ask("Count from 1 to 100.", 200))
        .await
        .unwrap();
    running.next().await.unwrap().unwrap();
    let _waiting = model.stream(ask("Hi", 1)).await.unwrap();

    let refused_at = Instant::now();
    let err = model.stream(ask("Hi", 1)).await.err().unwrap();
    assert!(refused_at.elapsed() < Duration::from_millis(100));
    assert!(
        matches!(err, LlmError::Upstream { status: 503, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("busy"), "{err}");
}

#[tokio::test]
async fn bad_requests_are_refused_with_reasons() {
    let model = shared_model();
    let empty = CompletionRequest::default();
    let hot = CompletionRequest {
        temperature: Some(5.0),
        ..ask("Hi", 2)
    };
    let zero = ask("Hi", 0);
    for req in [empty, hot, zero] {
        let err = model.complete(req).await.err().unwrap();
        assert_eq!(err.http_status(), 400, "{err}");
    }

    let long = "word ".repeat(5000);
    let req = CompletionRequest {
        messages: vec![ChatMessage::new("user", long)],
        ..CompletionRequest::default()
    };
    let err = model.complete(req).await.err().unwrap();
    assert!(err.to_string().contains("tokens"), "{err}");
}

#[tokio::test]
async fn sampling_with_temperature_and_top_p_answers() {
    let model = shared_model();
    let req = CompletionRequest {
        temperature: Some(0.8),
        top_p: Some(0.9),
        ..ask("Tell me a fact about cats.", 6)
    };
    let answer = model.complete(req).await.unwrap();
    assert!(answer.usage.completion_tokens >= 1);
    assert!(!answer.finish_reason.is_empty());
}

#[test]
fn loading_a_missing_file_names_it() {
    let err = load_err("/nonexistent/dir/model.gguf");
    assert!(matches!(err, LocalError::NotFound { .. }), "{err}");
    assert!(
        err.to_string().contains("/nonexistent/dir/model.gguf"),
        "{err}"
    );
}

#[test]
fn loading_a_file_that_is_not_gguf_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("weights.bin");
    std::fs::write(&path, "{\"not\": \"a model\"}").unwrap();
    let err = load_err(path.to_str().unwrap());
    assert!(matches!(err, LocalError::NotGguf { .. }), "{err}");
    assert!(err.to_string().contains("weights.bin"), "{err}");
    assert!(err.to_string().contains("not a GGUF file"), "{err}");
}

fn load_err(path: &str) -> LocalError {
    match LocalModel::load(std::path::Path::new(path), LocalOptions::default()) {
        Ok(_) => panic!("{path} loaded"),
        Err(err) => err,
    }
}
