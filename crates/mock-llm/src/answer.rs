//! Builds the mock's answers in the OpenAI shape: a whole completion or SSE frames.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{json, Value};

use crate::config::{MockToolCall, Rule, ToolDeltas};
use crate::plan::{count_words, Prompt};

/// What the model "says".
pub(crate) enum Answer {
    Text(String),
    /// (id, name, arguments as JSON text)
    Tools(Vec<(String, String, String)>),
}

impl Answer {
    pub fn new(rule: &Rule, prompt: &Prompt, request_no: u64) -> Answer {
        match rule {
            rule if !rule.tool_calls.is_empty() => Answer::Tools(
                rule.tool_calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| tool(c, request_no, i))
                    .collect(),
            ),
            Rule {
                reply: Some(text), ..
            } => Answer::Text(text.clone()),
            _ => Answer::Text(prompt.default_reply()),
        }
    }

    fn finish_reason(&self) -> &'static str {
        match self {
            Answer::Text(_) => "stop",
            Answer::Tools(_) => "tool_calls",
        }
    }

    fn completion_tokens(&self) -> u32 {
        match self {
            Answer::Text(text) => count_words(text),
            Answer::Tools(calls) => calls
                .iter()
                .map(|(_, _, args)| count_words(args).max(1))
                .sum(),
        }
    }
}

fn tool(call: &MockToolCall, request_no: u64, i: usize) -> (String, String, String) {
    let arguments = match &call.arguments {
        Value::Null => "{}".to_string(),
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    (
        format!("call_{request_no}_{i}"),
        call.name.clone(),
        arguments,
    )
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn usage(prompt: &Prompt, answer: &Answer) -> Value {
    let completion = answer.completion_tokens();
    json!({
        "prompt_tokens": prompt.prompt_tokens,
        "completion_tokens": completion,
        "total_tokens": prompt.prompt_tokens.saturating_add(completion),
    })
}

/// A whole `chat.completion` object.
pub(crate) fn whole(prompt: &Prompt, answer: &Answer, request_no: u64) -> Value {
    let message = match answer {
        Answer::Text(text) => json!({"role": "assistant", "content": text}),
        Answer::Tools(calls) => {
            let calls: Vec<Value> = calls
                .iter()
                .map(|(id, name, args)| {
                    json!({"id": id, "type": "function",
                           "function": {"name": name, "arguments": args}})
                })
                .collect();
            json!({"role": "assistant", "content": null, "tool_calls": calls})
        }
    };
    json!({
        "id": format!("chatcmpl-mock-{request_no}"),
        "object": "chat.completion",
        "created": now(),
        "model": prompt.model,
        "choices": [{"index": 0, "message": message, "finish_reason": answer.finish_reason()}],
        "usage": usage(prompt, answer),
    })
}

/// The SSE frames of a streamed answer, split into the content part (which faults
/// may cut) and the closing part (finish, usage, `[DONE]`).
pub(crate) struct Frames {
    pub opening: String,
    pub content: Vec<String>,
    pub closing: Vec<String>,
}

pub(crate) fn frames(
    prompt: &Prompt,
    answer: &Answer,
    request_no: u64,
    style: ToolDeltas,
) -> Frames {
    let chunk = |choices: Value, usage: Value| {
        let chunk = json!({
            "id": format!("chatcmpl-mock-{request_no}"),
            "object": "chat.completion.chunk",
            "created": now(),
            "model": prompt.model,
            "choices": choices,
            "usage": usage,
        });
        format!("data: {chunk}\n\n")
    };
    let delta = |delta: Value, finish: Value| {
        chunk(
            json!([{"index": 0, "delta": delta, "finish_reason": finish}]),
            Value::Null,
        )
    };
    let content = match answer {
        Answer::Text(text) => words(text)
            .map(|w| delta(json!({"content": w}), Value::Null))
            .collect(),
        Answer::Tools(calls) => tool_deltas(calls, style)
            .into_iter()
            .map(|d| delta(d, Value::Null))
            .collect(),
    };
    let mut closing = vec![delta(json!({}), json!(answer.finish_reason()))];
    if prompt.include_usage {
        closing.push(chunk(json!([]), usage(prompt, answer)));
    }
    closing.push("data: [DONE]\n\n".to_string());
    Frames {
        opening: delta(json!({"role": "assistant", "content": ""}), Value::Null),
        content,
        closing,
    }
}

/// Word-sized pieces that join back into `text` exactly (each keeps its trailing space).
fn words(text: &str) -> impl Iterator<Item = &str> {
    text.split_inclusive(char::is_whitespace)
}

/// Characters of arguments per delta in the interleaved style.
const PIECE_CHARS: usize = 4;

fn tool_deltas(calls: &[(String, String, String)], style: ToolDeltas) -> Vec<Value> {
    let per_call: Vec<Vec<Value>> = calls
        .iter()
        .enumerate()
        .map(|(index, call)| call_deltas(index, call, style))
        .collect();
    match style {
        ToolDeltas::Split | ToolDeltas::Single => per_call.into_iter().flatten().collect(),
        ToolDeltas::Interleaved => interleave(per_call),
    }
}

/// One call's deltas: split (head with id and name, arguments in two halves), single
/// (everything at once) or interleaved (id, name, then small argument pieces).
fn call_deltas(
    index: usize,
    (id, name, args): &(String, String, String),
    style: ToolDeltas,
) -> Vec<Value> {
    let wrap = |call: Value| json!({"tool_calls": [call]});
    let piece = |text: String| wrap(json!({"index": index, "function": {"arguments": text}}));
    match style {
        ToolDeltas::Single => vec![wrap(json!({"index": index, "id": id, "type": "function",
            "function": {"name": name, "arguments": args}}))],
        ToolDeltas::Split => {
            let head = wrap(json!({"index": index, "id": id, "type": "function",
                "function": {"name": name, "arguments": ""}}));
            std::iter::once(head)
                .chain(split_in_two(args).into_iter().map(piece))
                .collect()
        }
        ToolDeltas::Interleaved => {
            let head = [
                wrap(json!({"index": index, "id": id, "type": "function"})),
                wrap(json!({"index": index, "function": {"name": name}})),
            ];
            let chars: Vec<char> = args.chars().collect();
            let pieces = chars.chunks(PIECE_CHARS).map(|c| piece(c.iter().collect()));
            head.into_iter().chain(pieces).collect()
        }
    }
}

/// Round robin: the first delta of each call, then the second of each, and so on.
fn interleave(lists: Vec<Vec<Value>>) -> Vec<Value> {
    let longest = lists.iter().map(Vec::len).max().unwrap_or(0);
    let mut iters: Vec<_> = lists.into_iter().map(Vec::into_iter).collect();
    (0..longest)
        .flat_map(|_| {
            iters
                .iter_mut()
                .filter_map(Iterator::next)
                .collect::<Vec<_>>()
        })
        .collect()
}

fn split_in_two(text: &str) -> Vec<String> {
    let mid = text
        .char_indices()
        .nth(text.chars().count() / 2)
        .map_or(text.len(), |(i, _)| i);
    let (a, b) = text.split_at(mid);
    [a, b]
        .into_iter()
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Cuts `bytes` inside its first multi-byte character, if it has one.
pub(crate) fn split_inside_char(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let at = bytes.iter().position(|b| *b >= 0xC0)?;
    Some(bytes.split_at(at + 1))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn words_rejoin_exactly() {
        let text = "héllo  wörld\n🌍 end";
        assert_eq!(words(text).collect::<String>(), text);
        assert_eq!(words(text).count(), 5);
    }

    #[test]
    fn split_cuts_inside_a_character() {
        let (a, b) = split_inside_char("aé".as_bytes()).unwrap();
        assert!(std::str::from_utf8(a).is_err());
        assert_eq!([a, b].concat(), "aé".as_bytes());
        assert!(split_inside_char(b"plain").is_none());
    }

    #[test]
    fn tool_frames_carry_id_and_name_once() {
        let prompt = Prompt::parse(
            &json!({"messages": [{"role": "user", "content": "x"}],
            "stream_options": {"include_usage": true}}),
            "m",
        )
        .unwrap();
        let answer = Answer::Tools(vec![
            ("c0".into(), "a".into(), "{\"q\":1}".into()),
            ("c1".into(), "b".into(), "{}".into()),
        ]);
        let f = frames(&prompt, &answer, 7, ToolDeltas::Split);
        let calls: Vec<Value> = f
            .content
            .iter()
            .map(|c| {
                let chunk: Value = serde_json::from_str(c.trim_start_matches("data: ")).unwrap();
                chunk["choices"][0]["delta"]["tool_calls"][0].clone()
            })
            .collect();
        let ids: Vec<&str> = calls.iter().filter_map(|c| c["id"].as_str()).collect();
        assert_eq!(ids, ["c0", "c1"]);
        let names = calls
            .iter()
            .filter(|c| c["function"].get("name").is_some())
            .count();
        assert_eq!(names, 2);
        let args: String = calls
            .iter()
            .filter_map(|c| c["function"]["arguments"].as_str())
            .collect();
        assert_eq!(args, "{\"q\":1}{}");
        assert_eq!(f.content.len(), 6);
        assert!(f.closing[0].contains("tool_calls"));
        assert!(f.closing[1].contains("\"prompt_tokens\":1"));
        assert_eq!(f.closing[2], "data: [DONE]\n\n");
    }
}
