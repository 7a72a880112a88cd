//! Reads a streamed response body into events, enforcing first-token, idle and total limits.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use tokio::time::Instant;

use crate::client::error_chain;
use crate::sse::{ChunkDecoder, SseLines, StreamFault};
use crate::{LlmConfig, LlmError, LlmEvent, Price};

type Body = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// Owns the response body: dropping the reader closes the connection, which cancels
/// the generation upstream.
pub(crate) struct EventReader {
    provider: String,
    body: Body,
    lines: SseLines,
    chunks: ChunkDecoder,
    pending: VecDeque<LlmEvent>,
    ended: bool,
    /// Until the first event: when the first-token limit runs out.
    first_by: Option<Instant>,
    deadline: Instant,
    first_token: Duration,
    idle: Duration,
    total: Duration,
}

/// Time limits of one streamed attempt.
pub(crate) struct Limits {
    /// When the first-token limit runs out (counted from sending the request).
    pub first_by: Instant,
    /// When the whole call's total limit runs out.
    pub deadline: Instant,
    pub first_token: Duration,
    pub idle: Duration,
    pub total: Duration,
}

impl Limits {
    pub fn new(config: &LlmConfig, first_by: Instant, deadline: Instant) -> Limits {
        Limits {
            first_by,
            deadline,
            first_token: config.first_token_timeout,
            idle: config.idle_timeout,
            total: config.total_timeout,
        }
    }
}

impl EventReader {
    pub fn new(
        provider: &str,
        response: reqwest::Response,
        model: &str,
        price: Price,
        limits: Limits,
    ) -> Self {
        EventReader {
            provider: provider.to_string(),
            body: Box::pin(response.bytes_stream()),
            lines: SseLines::default(),
            chunks: ChunkDecoder::new(model, price),
            pending: VecDeque::new(),
            ended: false,
            first_by: Some(limits.first_by),
            deadline: limits.deadline,
            first_token: limits.first_token,
            idle: limits.idle,
            total: limits.total,
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
                self.decode(payloads)
            }
            Some(Err(e)) => Err(self.fault(StreamFault(error_chain(&e)))),
            None => self.end_of_body(),
        }
    }

    fn decode(&mut self, payloads: Vec<String>) -> Result<(), LlmError> {
        for payload in payloads {
            let events = self.chunks.payload(&payload).map_err(|f| self.fault(f))?;
            self.pending.extend(events);
        }
        self.ended = self.chunks.is_done();
        Ok(())
    }

    fn end_of_body(&mut self) -> Result<(), LlmError> {
        let payloads = self.lines.finish().map_err(|f| self.fault(f))?;
        self.decode(payloads)?;
        let done = self.chunks.finish().map_err(|f| self.fault(f))?;
        self.pending.extend(done);
        self.ended = true;
        Ok(())
    }

    /// The tighter of the first-token (or idle) limit and the total deadline.
    fn wait_limit(&self) -> (Instant, &'static str, Duration) {
        let (until, what, limit) = match self.first_by {
            Some(first_by) => (first_by, "first token", self.first_token),
            None => (Instant::now() + self.idle, "idle", self.idle),
        };
        if self.deadline < until {
            (self.deadline, "total", self.total)
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
