//! OpenAI-compatible LLM client shared by every agent.
//!
//! One [`LlmClient`] holds the providers of a deployment. Each call picks the providers
//! serving its model by priority, retries what is worth retrying, falls back to the next
//! provider, and reports usage with cost. Streams decode SSE incrementally and always end
//! with `LlmEvent::Done` or an error item.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod assemble;
mod client;
mod config;
mod error;
mod events;
mod keys;
mod retry;
mod sse;
mod types;
mod wire;

pub use assemble::CompletionBuilder;
pub use client::{EventStream, LlmClient};
pub use config::{LlmConfig, Price, ProviderConfig, Secret, DEFAULT_MODEL};
pub use error::LlmError;
pub use retry::parse_retry_after;
pub use types::*;
