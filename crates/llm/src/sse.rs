//! Incremental server-sent-events decoding of a chat completions stream into [`LlmEvent`]s.
//!
//! Bytes are buffered and split on `\n`; only whole lines are decoded as UTF-8, so a
//! character cut across two network reads is never garbled.

use std::borrow::Cow;
use std::collections::HashMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;

use crate::usage::price_for;
use crate::{LlmEvent, Price, Usage};

/// Why the stream cannot be read further (the caller wraps it with the provider name).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct StreamFault(pub String);

/// Splits bytes into SSE `data` payloads.
#[derive(Debug, Default)]
pub(crate) struct SseLines {
    buf: Vec<u8>,
    data: Option<String>,
}

impl SseLines {
    /// Feeds bytes; returns the payloads of every event completed by them. The consumed
    /// lines leave the buffer in one move at the end (not one per line).
    pub fn push(&mut self, bytes: &[u8]) -> Result<Vec<String>, StreamFault> {
        self.buf.extend_from_slice(bytes);
        let mut payloads = Vec::new();
        let mut start = 0;
        let buf = std::mem::take(&mut self.buf);
        let mut result = Ok(());
        while let Some(len) = buf[start..].iter().position(|b| *b == b'\n') {
            let line = &buf[start..start + len];
            start += len + 1;
            let Ok(line) = std::str::from_utf8(line) else {
                result = Err(StreamFault("stream line is not valid UTF-8".into()));
                break;
            };
            self.line(line.strip_suffix('\r').unwrap_or(line), &mut payloads);
        }
        self.buf = buf;
        self.buf.drain(..start);
        result.map(|()| payloads)
    }

    /// The end of the body: a last event without its blank line still counts.
    pub fn finish(&mut self) -> Result<Vec<String>, StreamFault> {
        let mut payloads = Vec::new();
        if !self.buf.is_empty() {
            let rest = std::mem::take(&mut self.buf);
            let line = String::from_utf8(rest)
                .map_err(|_| StreamFault("stream ended inside a UTF-8 character".into()))?;
            self.line(line.trim_end_matches('\r'), &mut payloads);
        }
        payloads.extend(self.data.take());
        Ok(payloads)
    }

    fn line(&mut self, line: &str, payloads: &mut Vec<String>) {
        if line.is_empty() {
            payloads.extend(self.data.take());
            return;
        }
        let Some(value) = line.strip_prefix("data:") else {
            return; // comments (`:`), `event:`, `id:` and `retry:` carry nothing we use
        };
        let value = value.strip_prefix(' ').unwrap_or(value);
        match &mut self.data {
            Some(data) => {
                data.push('\n');
                data.push_str(value);
            }
            None => self.data = Some(value.to_string()),
        }
    }
}

/// Turns chunk payloads into events and knows whether the stream finished properly.
#[derive(Debug)]
pub(crate) struct ChunkDecoder {
    prices: Arc<HashMap<String, Price>>,
    asked: String,
    /// The model the provider names in its chunks (the one asked for until it does).
    model: String,
    finish_reason: Option<String>,
    done: bool,
}

impl ChunkDecoder {
    pub fn new(model: &str, prices: Arc<HashMap<String, Price>>) -> ChunkDecoder {
        ChunkDecoder {
            prices,
            asked: model.to_string(),
            model: model.to_string(),
            finish_reason: None,
            done: false,
        }
    }

    pub fn is_done(&self) -> bool {
        self.done
    }

    /// The model that answered, as the provider named it (else the one asked for).
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The price of the answering model, falling back to the one asked for.
    pub fn price(&self) -> Price {
        price_for(&self.prices, &self.model, &self.asked)
    }

    /// Events carried by one `data` payload. Payloads after `[DONE]` are ignored.
    pub fn payload(&mut self, data: &str) -> Result<Vec<LlmEvent>, StreamFault> {
        if self.done {
            return Ok(Vec::new());
        }
        if data.trim() == "[DONE]" {
            return Ok(vec![self.done_event()]);
        }
        // The usual chunk is read without building a JSON tree; anything unusual (odd
        // types, an error object) goes the general way.
        if let Ok(chunk) = serde_json::from_str::<FastChunk<'_>>(data) {
            return Ok(self.fast_chunk(chunk));
        }
        let chunk: Value = serde_json::from_str(data)
            .map_err(|e| StreamFault(format!("chunk is not JSON ({e})")))?;
        if let Some(error) = chunk.get("error") {
            return Err(StreamFault(format!(
                "provider sent an error: {}",
                error_text(error)
            )));
        }
        if let Some(model) = chunk.get("model").and_then(Value::as_str) {
            self.set_model(model);
        }
        let mut events = Vec::new();
        let choices = chunk.get("choices").and_then(Value::as_array);
        for choice in choices.into_iter().flatten() {
            self.choice(choice, &mut events);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            events.push(LlmEvent::Usage(parse_usage(usage, &self.price())));
        }
        Ok(events)
    }

    fn set_model(&mut self, model: &str) {
        if self.model != model {
            model.clone_into(&mut self.model);
        }
    }

    fn fast_chunk(&mut self, chunk: FastChunk<'_>) -> Vec<LlmEvent> {
        if let Some(model) = chunk.model.as_deref() {
            self.set_model(model);
        }
        let mut events = Vec::new();
        for choice in chunk.choices.into_iter().flatten() {
            if let Some(reason) = choice.finish_reason {
                self.finish_reason = Some(reason.into_owned());
            }
            let Some(delta) = choice.delta else {
                continue;
            };
            if let Some(text) = delta.content.filter(|t| !t.is_empty()) {
                events.push(LlmEvent::Delta(text.into_owned()));
            }
            let calls = delta.tool_calls.iter().flatten().enumerate();
            events.extend(calls.map(tool_call_delta));
        }
        if let Some(usage) = chunk.usage {
            events.push(LlmEvent::Usage(parse_usage(&usage, &self.price())));
        }
        events
    }

    /// The end of the body: `Done` if the answer was finished, else a fault.
    pub fn finish(&mut self) -> Result<Option<LlmEvent>, StreamFault> {
        if self.done {
            return Ok(None);
        }
        if self.finish_reason.is_some() {
            return Ok(Some(self.done_event()));
        }
        Err(StreamFault(
            "the stream ended before the answer was finished".into(),
        ))
    }

    fn done_event(&mut self) -> LlmEvent {
        self.done = true;
        LlmEvent::Done {
            finish_reason: self.finish_reason.clone().unwrap_or_else(|| "stop".into()),
            model: self.model.clone(),
        }
    }

    fn choice(&mut self, choice: &Value, events: &mut Vec<LlmEvent>) {
        if let Some(reason) = choice.get("finish_reason").and_then(Value::as_str) {
            self.finish_reason = Some(reason.to_string());
        }
        let Some(delta) = choice.get("delta") else {
            return;
        };
        if let Some(text) = delta.get("content").and_then(Value::as_str) {
            if !text.is_empty() {
                events.push(LlmEvent::Delta(text.to_string()));
            }
        }
        let calls = delta.get("tool_calls").and_then(Value::as_array);
        events.extend(calls.into_iter().flatten().enumerate().map(tool_call_delta));
    }
}

/// A chunk in the usual shape, strings borrowed from the payload where possible. A chunk
/// with an `error` member is refused here, so the general path reports it.
#[derive(Deserialize)]
struct FastChunk<'a> {
    #[serde(borrow, default)]
    model: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    choices: Option<Vec<FastChoice<'a>>>,
    #[serde(default)]
    usage: Option<Value>,
    #[serde(default, deserialize_with = "no_error")]
    #[allow(dead_code)] // only its absence matters
    error: (),
}

#[derive(Deserialize)]
struct FastChoice<'a> {
    #[serde(borrow, default)]
    finish_reason: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    delta: Option<FastDelta<'a>>,
}

#[derive(Deserialize)]
struct FastDelta<'a> {
    #[serde(borrow, default)]
    content: Option<Cow<'a, str>>,
    #[serde(default)]
    tool_calls: Option<Vec<Value>>,
}

/// Fails on any `error` member (even null), sending the chunk down the general path.
fn no_error<'de, D: serde::Deserializer<'de>>(_: D) -> Result<(), D::Error> {
    Err(serde::de::Error::custom("an error chunk"))
}

fn tool_call_delta((position, call): (usize, &Value)) -> LlmEvent {
    let text = |v: Option<&Value>| v.and_then(Value::as_str).map(str::to_string);
    let function = call.get("function");
    let index = call
        .get("index")
        .and_then(Value::as_u64)
        .unwrap_or(position as u64);
    LlmEvent::ToolCall {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        id: text(call.get("id")).filter(|id| !id.is_empty()),
        name: text(function.and_then(|f| f.get("name"))).filter(|n| !n.is_empty()),
        arguments: text(function.and_then(|f| f.get("arguments"))).unwrap_or_default(),
    }
}

/// Reads an OpenAI `usage` object and prices it.
pub(crate) fn parse_usage(usage: &Value, price: &Price) -> Usage {
    let count = |name: &str| {
        let n = usage.get(name).and_then(Value::as_u64).unwrap_or(0);
        u32::try_from(n).unwrap_or(u32::MAX)
    };
    let (prompt_tokens, completion_tokens) = (count("prompt_tokens"), count("completion_tokens"));
    Usage {
        prompt_tokens,
        completion_tokens,
        cost_usd: price.cost(prompt_tokens, completion_tokens),
    }
}

/// The message of an OpenAI error object, or the JSON itself.
pub(crate) fn error_text(error: &Value) -> String {
    match error.get("message").and_then(Value::as_str) {
        Some(message) => message.to_string(),
        None => error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs the whole pipeline over the given network reads.
    fn decode(reads: &[&[u8]]) -> Result<Vec<LlmEvent>, StreamFault> {
        let mut lines = SseLines::default();
        let price = Price {
            input_per_mtok: 1.0,
            output_per_mtok: 2.0,
        };
        let prices = Arc::new(HashMap::from([("asked".to_string(), price)]));
        let mut chunks = ChunkDecoder::new("asked", prices);
        let mut events = Vec::new();
        for read in reads {
            for payload in lines.push(read)? {
                events.extend(chunks.payload(&payload)?);
            }
        }
        for payload in lines.finish()? {
            events.extend(chunks.payload(&payload)?);
        }
        events.extend(chunks.finish()?);
        Ok(events)
    }

    fn content(text: &str) -> String {
        let choice = serde_json::json!({"index": 0, "delta": {"content": text}});
        let chunk = serde_json::json!({"model": "m1", "choices": [choice]});
        format!("data: {chunk}\n\n")
    }

    const FINISH: &str =
        "data: {\"choices\":[{\"index\":0,\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n";

    #[test]
    fn utf8_split_across_reads_stays_whole() {
        let body = format!(
            "{}{}{FINISH}data: [DONE]\n\n",
            content("héllo "),
            content("wörld 🌍")
        );
        let bytes = body.as_bytes();
        // Cut inside every multi-byte character, one read per byte for good measure.
        let reads: Vec<&[u8]> = bytes.chunks(1).collect();
        let events = decode(&reads).unwrap();
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                LlmEvent::Delta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "héllo wörld 🌍");
        assert_eq!(
            events.last(),
            Some(&LlmEvent::Done {
                finish_reason: "stop".into(),
                model: "m1".into()
            })
        );
    }

    #[test]
    fn many_events_per_read_and_unusual_chunks_decode_alike() {
        // Escapes, a numeric model and a non-object delta take the general path; a whole
        // body in one read and the same body a byte at a time give the same events.
        let odd = "data: {\"model\": 5, \"choices\": [{\"delta\": {\"content\": \"b\"}}]}\n\n";
        let skipped = "data: {\"choices\": [{\"delta\": \"x\"}]}\n\n";
        let body = [
            content("caf\u{e9} \\ \"q\""),
            odd.into(),
            skipped.into(),
            content("c"),
        ]
        .concat()
            + FINISH
            + "data: [DONE]\n\n";
        let whole = decode(&[body.as_bytes()]).unwrap();
        let bytes: Vec<&[u8]> = body.as_bytes().chunks(1).collect();
        assert_eq!(decode(&bytes).unwrap(), whole);
        let texts: Vec<&str> = whole
            .iter()
            .filter_map(|e| match e {
                LlmEvent::Delta(t) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(texts, ["caf\u{e9} \\ \"q\"", "b", "c"]);
        assert!(matches!(whole.last(), Some(LlmEvent::Done { model, .. }) if model == "m1"));
    }

    #[test]
    fn crlf_lines_and_comments_are_handled() {
        let body = ": keep-alive\r\ndata: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\r\n\r\n\
                    data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"length\"}]}\r\n\r\n\
                    data: [DONE]\r\n\r\n";
        let events = decode(&[body.as_bytes()]).unwrap();
        assert_eq!(events[0], LlmEvent::Delta("hi".into()));
        assert_eq!(
            events[1],
            LlmEvent::Done {
                finish_reason: "length".into(),
                model: "asked".into()
            }
        );
        assert_eq!(events.len(), 2);
    }

    #[test]
    fn tool_call_deltas_keep_index_and_first_id_name() {
        let delta = |call: serde_json::Value| {
            let chunk = serde_json::json!({"choices": [{"delta": {"tool_calls": [call]}}]});
            format!("data: {chunk}\n\n")
        };
        let first = |index, id, name, args| {
            serde_json::json!({"index": index, "id": id, "type": "function",
                               "function": {"name": name, "arguments": args}})
        };
        let more =
            |index, args| serde_json::json!({"index": index, "function": {"arguments": args}});
        let body = [
            delta(first(0, "call_a", "search_documents", "")),
            delta(first(1, "call_b", "query_data", "{\"sql\":")),
            delta(more(0, "{\"query\":\"pods\"}")),
            delta(more(1, "\"select 1\"}")),
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"tool_calls\"}]}\n\n".into(),
            "data: [DONE]\n\n".into(),
        ]
        .concat();
        let events = decode(&[body.as_bytes()]).unwrap();
        let call = |index, id: Option<&str>, name: Option<&str>, args: &str| LlmEvent::ToolCall {
            index,
            id: id.map(String::from),
            name: name.map(String::from),
            arguments: args.into(),
        };
        assert_eq!(
            events,
            vec![
                call(0, Some("call_a"), Some("search_documents"), ""),
                call(1, Some("call_b"), Some("query_data"), "{\"sql\":"),
                call(0, None, None, "{\"query\":\"pods\"}"),
                call(1, None, None, "\"select 1\"}"),
                LlmEvent::Done {
                    finish_reason: "tool_calls".into(),
                    model: "asked".into()
                },
            ]
        );
        let completion = crate::CompletionBuilder::from_events(&events);
        assert_eq!(completion.tool_calls.len(), 2);
        assert_eq!(completion.tool_calls[0].arguments, "{\"query\":\"pods\"}");
        assert_eq!(completion.tool_calls[1].name, "query_data");
        assert_eq!(completion.tool_calls[1].arguments, "{\"sql\":\"select 1\"}");
    }

    #[test]
    fn usage_chunk_is_priced_and_comes_before_done() {
        let usage = r#"{"choices":[],"usage":{"prompt_tokens":1000,"completion_tokens":500}}"#;
        let body = format!("{}{FINISH}data: {usage}\n\ndata: [DONE]\n\n", content("ok"));
        let events = decode(&[body.as_bytes()]).unwrap();
        let LlmEvent::Usage(usage) = &events[1] else {
            panic!("no usage: {events:?}")
        };
        assert_eq!((usage.prompt_tokens, usage.completion_tokens), (1000, 500));
        assert!((usage.cost_usd - 0.002).abs() < 1e-12);
        assert!(matches!(events[2], LlmEvent::Done { .. }));
    }

    #[test]
    fn missing_done_and_finish_is_an_error() {
        let body = format!("{}{}", content("half an "), content("answ"));
        let err = decode(&[body.as_bytes()]).unwrap_err();
        assert!(err.0.contains("ended before"), "{err:?}");
    }

    #[test]
    fn finish_without_done_is_accepted() {
        let body = format!("{}{FINISH}", content("ok"));
        let events = decode(&[body.as_bytes()]).unwrap();
        assert!(matches!(events.last(), Some(LlmEvent::Done { .. })));
    }

    #[test]
    fn error_chunk_and_garbage_are_faults() {
        let body = "data: {\"error\":{\"message\":\"model overloaded\"}}\n\n";
        let err = decode(&[body.as_bytes()]).unwrap_err();
        assert!(err.0.contains("model overloaded"));
        let err = decode(&[b"data: {not json\n\n"]).unwrap_err();
        assert!(err.0.contains("not JSON"));
    }

    #[test]
    fn stream_ending_mid_character_is_a_fault() {
        let mut lines = SseLines::default();
        assert!(lines
            .push("data: é".as_bytes().split_at(7).0)
            .unwrap()
            .is_empty());
        assert!(lines.finish().is_err());
    }
}
