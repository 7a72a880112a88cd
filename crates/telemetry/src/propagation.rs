//! W3C trace context (`traceparent`, `tracestate`) in and out of HTTP headers and gRPC
//! metadata, so that one request is one trace across the gateway, the agents and the
//! LLM providers.
//!
//! When spans are not exported, spans carry no OpenTelemetry context: the inject
//! functions then add nothing and return false, and callers forward the `traceparent`
//! they received so that logs still correlate.

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry::Context;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tracing_opentelemetry::OpenTelemetrySpanExt;

pub const TRACEPARENT: &str = "traceparent";

pub(crate) fn install_propagator() {
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
}

struct Metadata<'a>(&'a MetadataMap);
struct MetadataMut<'a>(&'a mut MetadataMap);
struct Headers<'a>(&'a http::HeaderMap);
struct HeadersMut<'a>(&'a mut http::HeaderMap);

impl Extractor for Metadata<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                tonic::metadata::KeyRef::Ascii(k) => Some(k.as_str()),
                tonic::metadata::KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

impl Injector for MetadataMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let key = MetadataKey::from_bytes(key.as_bytes());
        if let (Ok(key), Ok(value)) = (key, MetadataValue::try_from(value.as_str())) {
            self.0.insert(key, value);
        }
    }
}

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

impl Injector for HeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let name = http::HeaderName::from_bytes(key.as_bytes());
        if let (Ok(name), Ok(value)) = (name, http::HeaderValue::from_str(&value)) {
            self.0.insert(name, value);
        }
    }
}

/// The context of the current `tracing` span, when it has a valid OpenTelemetry span.
fn current() -> Option<Context> {
    let context = tracing::Span::current().context();
    context.span().span_context().is_valid().then_some(context)
}

/// Writes the current span's trace context into outgoing gRPC metadata.
/// Returns false (and writes nothing) when there is no exported span.
pub fn inject_metadata(map: &mut MetadataMap) -> bool {
    let Some(context) = current() else {
        return false;
    };
    TraceContextPropagator::new().inject_context(&context, &mut MetadataMut(map));
    true
}

/// Writes the current span's trace context into outgoing HTTP headers.
/// Returns false (and writes nothing) when there is no exported span.
pub fn inject_headers(headers: &mut http::HeaderMap) -> bool {
    let Some(context) = current() else {
        return false;
    };
    TraceContextPropagator::new().inject_context(&context, &mut HeadersMut(headers));
    true
}

/// The trace context headers of the current span (empty when nothing is exported);
/// handy for HTTP clients such as reqwest: `request.headers(trace_headers())`.
pub fn trace_headers() -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    inject_headers(&mut headers);
    headers
}

/// The remote parent carried by incoming gRPC metadata.
pub fn extract_metadata(map: &MetadataMap) -> Context {
    TraceContextPropagator::new().extract(&Metadata(map))
}

/// The remote parent carried by incoming HTTP headers.
pub fn extract_headers(headers: &http::HeaderMap) -> Context {
    TraceContextPropagator::new().extract(&Headers(headers))
}

/// Makes `span` a child of the remote parent in `headers`, if they carry a valid one.
/// Call it right after creating the span, before entering it.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &http::HeaderMap) {
    set_remote_parent(span, extract_headers(headers));
}

/// Makes `span` a child of the remote parent in `map`, if it carries a valid one.
pub fn set_parent_from_metadata(span: &tracing::Span, map: &MetadataMap) {
    set_remote_parent(span, extract_metadata(map));
}

/// Makes `span` a child of a `traceparent` value, if it is a valid one.
pub fn set_parent_from_traceparent(span: &tracing::Span, traceparent: Option<&str>) {
    let Some(value) = traceparent else {
        return;
    };
    let mut headers = http::HeaderMap::new();
    if let Ok(value) = http::HeaderValue::from_str(value) {
        headers.insert(TRACEPARENT, value);
        set_parent_from_headers(span, &headers);
    }
}

fn set_remote_parent(span: &tracing::Span, parent: Context) {
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
}

/// The trace id (32 hex digits) of `span`, when it is exported.
pub fn trace_id(span: &tracing::Span) -> Option<String> {
    let context = span.context();
    let span_context = context.span().span_context().clone();
    span_context
        .is_valid()
        .then(|| span_context.trace_id().to_string())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    const PARENT: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn remote_parents_are_read_from_headers_and_metadata() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, PARENT.parse().unwrap());
        let context = extract_headers(&headers);
        let span = context.span();
        let trace_id = span.span_context().trace_id().to_string();
        assert_eq!(trace_id, "4bf92f3577b34da6a3ce929d0e0e4736");

        let mut map = MetadataMap::new();
        map.insert(TRACEPARENT, PARENT.parse().unwrap());
        let context = extract_metadata(&map);
        assert!(context.span().span_context().is_remote());
    }

    #[test]
    fn garbage_is_no_parent_and_nothing_is_injected_without_a_span() {
        let mut headers = http::HeaderMap::new();
        headers.insert(TRACEPARENT, "00-zz-yy-01".parse().unwrap());
        assert!(!extract_headers(&headers).span().span_context().is_valid());
        let mut map = MetadataMap::new();
        assert!(!inject_metadata(&mut map));
        assert!(map.is_empty());
        assert!(trace_headers().is_empty());
    }
}
