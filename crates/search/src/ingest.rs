//! Checks an ingest request and turns it into a document and its chunks.

use crate::chunk::chunk_markdown;
use crate::front_matter::split_front_matter;
use agentmesh_agent_runtime::invalid_argument;
use agentmesh_proto::v1::IngestRequest;
use agentmesh_state::{NewChunk, NewDocument};
use serde_json::{Map, Value};
use tonic::Status;

/// Largest document accepted, in bytes.
pub const MAX_TEXT_BYTES: usize = 2 * 1024 * 1024;
const MAX_TITLE_CHARS: usize = 500;
const MAX_ID_CHARS: usize = 200;

/// A validated document ready to store.
#[derive(Debug)]
pub struct Prepared {
    pub doc: NewDocument,
    pub chunks: Vec<NewChunk>,
}

/// Validates `req` (each refusal names its field) and chunks its text.
pub fn prepare(req: IngestRequest) -> Result<Prepared, Status> {
    check_text(&req.text)?;
    let extra = parse_metadata(&req.metadata_json)?;
    let (mut metadata, body) = split_front_matter(&req.text);
    let title = pick_title(&req.title, &metadata)?;
    let id = pick_id(&req.id)?;
    metadata.extend(extra);

    let chunks: Vec<NewChunk> = chunk_markdown(&title, body)
        .into_iter()
        .map(|c| NewChunk {
            heading: c.heading,
            text: c.text,
        })
        .collect();
    if chunks.is_empty() {
        return Err(invalid_argument(
            "text has no content besides front matter",
            Some("text"),
        ));
    }
    let doc = NewDocument {
        id,
        title,
        source: req.source,
        metadata: Value::Object(metadata),
    };
    Ok(Prepared { doc, chunks })
}

fn check_text(text: &str) -> Result<(), Status> {
    if text.trim().is_empty() {
        return Err(invalid_argument("text must not be empty", Some("text")));
    }
    if text.len() > MAX_TEXT_BYTES {
        let msg = format!(
            "text is {} bytes, the limit is {MAX_TEXT_BYTES}",
            text.len()
        );
        return Err(invalid_argument(msg, Some("text")));
    }
    let control = text
        .chars()
        .filter(|c| c.is_control() && !matches!(c, '\n' | '\r' | '\t'));
    let control = control.count();
    if text.contains('\0') || control * 20 > text.chars().count() {
        return Err(invalid_argument(
            "text looks binary, not text or Markdown",
            Some("text"),
        ));
    }
    Ok(())
}

fn parse_metadata(raw: &str) -> Result<Map<String, Value>, Status> {
    if raw.trim().is_empty() {
        return Ok(Map::new());
    }
    match serde_json::from_str::<Value>(raw) {
        Ok(Value::Object(map)) => Ok(map),
        Ok(_) => Err(invalid_argument(
            "metadata must be a JSON object",
            Some("metadata"),
        )),
        Err(e) => Err(invalid_argument(
            format!("metadata is not JSON: {e}"),
            Some("metadata"),
        )),
    }
}

/// The request's title, else the front matter's.
fn pick_title(requested: &str, front: &Map<String, Value>) -> Result<String, Status> {
    let from_front = front
        .get("title")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let title = Some(requested.trim())
        .filter(|t| !t.is_empty())
        .unwrap_or(from_front.trim());
    if title.is_empty() {
        return Err(invalid_argument("title must not be empty", Some("title")));
    }
    if title.chars().count() > MAX_TITLE_CHARS {
        let msg = format!("title is longer than {MAX_TITLE_CHARS} characters");
        return Err(invalid_argument(msg, Some("title")));
    }
    Ok(title.to_string())
}

/// The requested id, checked to be usable in a URL path, or a new UUID.
fn pick_id(requested: &str) -> Result<String, Status> {
    if requested.is_empty() {
        return Ok(uuid::Uuid::new_v4().to_string());
    }
    let bad_char = requested
        .chars()
        .any(|c| c.is_whitespace() || c.is_control() || c == '/');
    if bad_char || requested.chars().count() > MAX_ID_CHARS {
        let msg = format!(
            "id must be at most {MAX_ID_CHARS} characters without spaces, control characters \
             or '/'"
        );
        return Err(invalid_argument(msg, Some("id")));
    }
    Ok(requested.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(title: &str, text: &str) -> IngestRequest {
        IngestRequest {
            title: title.into(),
            text: text.into(),
            ..IngestRequest::default()
        }
    }

    fn param(status: &Status) -> String {
        let value = status.metadata().get("x-agentmesh-error-param").unwrap();
        value.to_str().unwrap().to_string()
    }

    #[test]
    fn front_matter_becomes_metadata_and_supplies_the_title() {
        let text = "---\ntitle: Pod QoS\nweight: 3\n---\n## Classes\nGuaranteed pods.\n";
        let mut r = req("", text);
        r.metadata_json = r#"{"team": "infra"}"#.into();
        let prepared = prepare(r).unwrap();
        assert_eq!(prepared.doc.title, "Pod QoS");
        assert_eq!(prepared.doc.metadata["weight"], 3);
        assert_eq!(prepared.doc.metadata["team"], "infra");
        assert_eq!(prepared.chunks[0].heading, "Pod QoS > Classes");
        assert!(uuid::Uuid::parse_str(&prepared.doc.id).is_ok());
    }

    #[test]
    fn refusals_name_the_field() {
        assert_eq!(param(&prepare(req("t", "  ")).unwrap_err()), "text");
        assert_eq!(param(&prepare(req("", "plain text")).unwrap_err()), "title");
        assert_eq!(param(&prepare(req("t", "a\0b")).unwrap_err()), "text");
        let big = "x".repeat(MAX_TEXT_BYTES + 1);
        assert_eq!(param(&prepare(req("t", &big)).unwrap_err()), "text");
        let mut r = req("t", "text");
        r.metadata_json = "[1]".into();
        assert_eq!(param(&prepare(r).unwrap_err()), "metadata");
        let mut r = req("t", "text");
        r.id = "a/b".into();
        assert_eq!(param(&prepare(r).unwrap_err()), "id");
    }

    #[test]
    fn front_matter_only_is_refused() {
        let err = prepare(req("t", "---\ntitle: x\n---\n\n")).unwrap_err();
        assert_eq!(param(&err), "text");
    }
}
