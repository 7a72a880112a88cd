//! Reads a streamed response body into events, enforcing first-token, idle and total limits,
//! and reports the answer's usage exactly once (estimated when the provider sent none or
//! the caller dropped the stream).

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::client::error_chain;
use crate::sse::{ChunkDecoder, SseLines, StreamFault};
use crate::usage::{estimate, SharedSink, UsageOutcome, UsageReport};
use crate::{LlmError, LlmEvent, Price, Usage};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Reads of the body after `[DONE]`, waiting at most `TRAILING_WAIT` for them all.
const MAX_TRAILING_READS: usize = 4;
const TRAILING_WAIT: Duration = Duration::from_millis(20);
/// How long a dropped, finished stream may take to deliver the end of its body.
const TRAILING_DRAIN: Duration = Duration::from_secs(2);

/// Time limits of one streamed attempt.
pub(crate) struct Limits {
    /// When the first-token limit runs out (counted from sending the request).
    pub first_by: Instant,
    pub first_token: Duration,
    pub idle: Duration,
    /// When the whole call must end, and how to name that limit in an error.
    pub deadline: Instant,
    pub deadline_what: &'static str,
    pub deadline_limit: Duration,
}

/// What the reader needs to report usage.
pub(crate) struct Billing {
    pub sink: SharedSink,
    pub prices: Arc<HashMap<String, Price>>,
    pub prompt_chars: usize,
}

/// Owns the response body: dropping the reader closes the connection, which cancels
/// the generation upstream, and reports the tokens seen so far.
pub(crate) struct EventReader {
    provider: String,
    body: Body,
    lines: SseLines,
    chunks: ChunkDecoder,
    pending: VecDeque<LlmEvent>,
    ended: bool,
    /// The body was read to its end (the connection can go back to the pool).
    body_done: bool,
    /// Until the first event: when the first-token limit runs out.
    first_by: Option<Instant>,
    limits: Limits,
    sink: SharedSink,
    prompt_chars: usize,
    completion_chars: usize,
    /// The provider's own count, once it sent one.
    usage: Option<Usage>,
    reported: bool,
}

impl EventReader {
    pub fn new(
        provider: &str,
        response: reqwest::Response,
        model: &str,
        billing: Billing,
        limits: Limits,
    ) -> Self {
        EventReader {
            provider: provider.to_string(),
            body: Box::pin(response.bytes_stream()),
            lines: SseLines::default(),
            chunks: ChunkDecoder::new(model, billing.prices),
            pending: VecDeque::new(),
            ended: false,
            body_done: false,
            first_by: Some(limits.first_by),
            limits,
            sink: billing.sink,
            prompt_chars: billing.prompt_chars,
            completion_chars: 0,
            usage: None,
            reported: false,
        }
    }

    /// The next event, an error (then nothing more), or None after `Done`.
    pub async fn next_event(&mut self) -> Option<Result<LlmEvent, LlmError>> {
        loop {
            if let Some(event) = self.pending.pop_front() {
                self.first_by = None;
                return Some(Ok(event));
            }
            if self.ended {
                return None;
            }
            if let Err(err) = self.read().await {
                self.ended = true;
                self.pending.clear();
                self.report(UsageOutcome::Failed);
                return Some(Err(err));
            }
        }
    }

    /// The error for a body that ended before giving any event.
    pub fn ended_early(&self) -> LlmError {
        self.fault(StreamFault("the stream ended before any event".into()))
    }

    /// One read from the network, decoded into pending events.
    async fn read(&mut self) -> Result<(), LlmError> {
        let (until, what, limit) = self.wait_limit();
        let next = tokio::time::timeout_at(until, self.body.next()).await;
        let next = next.map_err(|_| LlmError::Timeout {
            provider: self.provider.clone(),
            what,
            limit,
        })?;
        match next {
            Some(Ok(bytes)) => {
                let payloads = self.lines.push(&bytes).map_err(|f| self.fault(f))?;
                self.decode(payloads)?;
                if self.ended && !self.body_done {
                    self.finish_body().await;
                }
                Ok(())
            }
            Some(Err(e)) => Err(self.fault(StreamFault(error_chain(&e)))),
            None => {
                self.body_done = true;
                self.end_of_body()
            }
        }
    }

    /// After `[DONE]`, reads the body's end (waiting at most `TRAILING_WAIT`) so that the
    /// connection goes back to the pool rather than being closed when the reader is dropped.
    async fn finish_body(&mut self) {
        let drain = async {
            for _ in 0..MAX_TRAILING_READS {
                match self.body.next().await {
                    Some(Ok(_)) => {}
                    Some(Err(_)) => return,
                    None => {
                        self.body_done = true;
                        return;
                    }
                }
            }
        };
        let _ = tokio::time::timeout(TRAILING_WAIT, drain).await;
    }

    fn decode(&mut self, payloads: Vec<String>) -> Result<(), LlmError> {
        for payload in payloads {
            let events = self.chunks.payload(&payload).map_err(|f| self.fault(f))?;
            events.into_iter().for_each(|e| self.accept(e));
        }
        self.ended = self.chunks.is_done();
        Ok(())
    }

    fn end_of_body(&mut self) -> Result<(), LlmError> {
        let payloads = self.lines.finish().map_err(|f| self.fault(f))?;
        self.decode(payloads)?;
        let done = self.chunks.finish().map_err(|f| self.fault(f))?;
        done.into_iter().for_each(|e| self.accept(e));
        self.ended = true;
        Ok(())
    }

    /// Counts what an event says, and puts an estimated `Usage` before `Done` when the
    /// provider sent none.
    fn accept(&mut self, event: LlmEvent) {
        match &event {
            LlmEvent::Delta(text) => self.completion_chars += text.chars().count(),
            LlmEvent::ToolCall {
                name, arguments, ..
            } => {
                let name = name.as_deref().map_or(0, |n| n.chars().count());
                self.completion_chars += name + arguments.chars().count();
            }
            LlmEvent::Usage(usage) => self.usage = Some(*usage),
            LlmEvent::Done { .. } => {
                if self.usage.is_none() {
                    self.pending.push_back(LlmEvent::Usage(self.estimate()));
                }
                self.report(UsageOutcome::Finished);
            }
        }
        self.pending.push_back(event);
    }

    fn estimate(&self) -> Usage {
        estimate(
            self.prompt_chars,
            self.completion_chars,
            &self.chunks.price(),
        )
    }

    fn report(&mut self, outcome: UsageOutcome) {
        if self.reported {
            return;
        }
        self.reported = true;
        let (usage, estimated) = match self.usage {
            Some(usage) => (usage, false),
            None => (self.estimate(), true),
        };
        self.sink.record(UsageReport {
            provider: self.provider.clone(),
            model: self.chunks.model().to_string(),
            usage,
            estimated,
            outcome,
        });
    }

    /// The tighter of the first-token (or idle) limit and the call's deadline.
    fn wait_limit(&self) -> (Instant, &'static str, Duration) {
        let l = &self.limits;
        let (until, what, limit) = match self.first_by {
            Some(first_by) => (first_by, "first token", l.first_token),
            None => (Instant::now() + l.idle, "idle", l.idle),
        };
        if l.deadline < until {
            (l.deadline, l.deadline_what, l.deadline_limit)
        } else {
            (until, what, limit)
        }
    }

    fn fault(&self, fault: StreamFault) -> LlmError {
        LlmError::Stream {
            provider: self.provider.clone(),
            message: fault.0,
        }
    }
}

impl Drop for EventReader {
    fn drop(&mut self) {
        self.report(UsageOutcome::Dropped);
        // A finished answer whose body end has not arrived yet: read it in the background
        // (briefly) so the connection goes back to the pool. An unfinished one is dropped
        // at once, which cancels it upstream.
        if self.chunks.is_done() && !self.body_done {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                let mut body =
                    std::mem::replace(&mut self.body, Box::pin(futures::stream::empty()));
                runtime.spawn(async move {
                    let drain = async { while let Some(Ok(_)) = body.next().await {} };
                    let _ = tokio::time::timeout(TRAILING_DRAIN, drain).await;
                });
            }
        }
    }
}
