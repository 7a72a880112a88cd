//! Metrics of a gRPC server, as a tower layer: calls by method and status code, their
//! duration (to the end of the response stream) and the calls in flight.
//!
//! Labels stay bounded: a path the server does not know (answered `Unimplemented`) is
//! counted as method `unknown`.

use http_body::{Body, Frame};
use pin_project_lite::pin_project;
use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Instant;
use tonic::Code;

pub const REQUESTS: &str = "agentmesh_grpc_requests_total";
pub const DURATION: &str = "agentmesh_grpc_request_duration_seconds";
pub const IN_FLIGHT: &str = "agentmesh_grpc_requests_in_flight";

/// Describes the gRPC server metrics (once per process is enough; repeats are harmless).
pub fn describe() {
    metrics::describe_counter!(REQUESTS, "gRPC calls answered, by agent, method and code.");
    metrics::describe_histogram!(
        DURATION,
        metrics::Unit::Seconds,
        "gRPC call duration to the end of the response stream."
    );
    metrics::describe_gauge!(IN_FLIGHT, "gRPC calls being served, by agent.");
}

/// Wraps every call of a tonic server; `agent` labels its series.
#[derive(Debug, Clone, Copy)]
pub struct GrpcMetricsLayer {
    agent: &'static str,
}

impl GrpcMetricsLayer {
    pub fn new(agent: &'static str) -> Self {
        describe();
        Self { agent }
    }
}

impl<S> tower::Layer<S> for GrpcMetricsLayer {
    type Service = GrpcMetrics<S>;

    fn layer(&self, inner: S) -> GrpcMetrics<S> {
        GrpcMetrics {
            inner,
            agent: self.agent,
        }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcMetrics<S> {
    inner: S,
    agent: &'static str,
}

impl<S, ReqBody, ResBody> tower::Service<http::Request<ReqBody>> for GrpcMetrics<S>
where
    S: tower::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
    ResBody: Body,
{
    type Response = http::Response<MeteredBody<ResBody>>;
    type Error = S::Error;
    type Future = MeteredFuture<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let call = CallTracker::start(self.agent, request.uri().path());
        MeteredFuture {
            inner: self.inner.call(request),
            call: Some(call),
        }
    }
}

pin_project! {
    /// The response future; hands the tracker to the body.
    pub struct MeteredFuture<F> {
        #[pin]
        inner: F,
        call: Option<CallTracker>,
    }
}

impl<F, B, E> Future for MeteredFuture<F>
where
    F: Future<Output = Result<http::Response<B>, E>>,
{
    type Output = Result<http::Response<MeteredBody<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = ready!(this.inner.poll(cx));
        let mut call = this.call.take();
        Poll::Ready(result.map(|response| {
            if let (Some(call), Some(code)) = (call.as_mut(), status_of(response.headers())) {
                call.code = Some(code);
            }
            response.map(|inner| MeteredBody { inner, call })
        }))
    }
}

pin_project! {
    /// The response body; the call is recorded when its trailers pass or it is dropped.
    pub struct MeteredBody<B> {
        #[pin]
        inner: B,
        call: Option<CallTracker>,
    }
}

impl<B: Body> Body for MeteredBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                let code = frame.trailers_ref().and_then(status_of);
                if let (Some(call), Some(code)) = (this.call.as_mut(), code) {
                    call.code = Some(code);
                }
            }
            Some(Err(_)) => {
                if let Some(call) = this.call.as_mut() {
                    call.code.get_or_insert(Code::Internal);
                }
            }
            None => drop(this.call.take()),
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}

fn status_of(headers: &http::HeaderMap) -> Option<Code> {
    let value = headers.get("grpc-status")?.to_str().ok()?;
    value.trim().parse::<i32>().ok().map(Code::from_i32)
}

/// One call in flight; recorded exactly once, on drop.
pub struct CallTracker {
    agent: &'static str,
    method: String,
    started: Instant,
    /// None when the stream ended without a status: the client went away.
    code: Option<Code>,
}

impl CallTracker {
    fn start(agent: &'static str, path: &str) -> Self {
        metrics::gauge!(IN_FLIGHT, "agent" => agent).increment(1.0);
        Self {
            agent,
            method: path.to_string(),
            started: Instant::now(),
            code: None,
        }
    }
}

impl Drop for CallTracker {
    fn drop(&mut self) {
        let code = self.code.unwrap_or(Code::Cancelled);
        let method = if code == Code::Unimplemented {
            "unknown".to_string()
        } else {
            std::mem::take(&mut self.method)
        };
        let code = code_name(code);
        let seconds = self.started.elapsed().as_secs_f64();
        metrics::gauge!(IN_FLIGHT, "agent" => self.agent).decrement(1.0);
        let labels = [
            ("agent", self.agent.to_string()),
            ("method", method),
            ("code", code.into()),
        ];
        metrics::counter!(REQUESTS, &labels).increment(1);
        metrics::histogram!(DURATION, &labels).record(seconds);
    }
}

/// The canonical upper-case name of a status code, as gRPC tools print it.
pub fn code_name(code: Code) -> &'static str {
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}
