//! OpenAI-compatible LLM client shared by every agent.
//!
//! One [`LlmClient`] holds the providers of a deployment. Each call picks the providers
//! serving its model by priority, skips those whose circuit is open, retries what is worth
//! retrying, falls back to the next provider, and reports usage with cost (to the caller and
//! to a [`UsageSink`], dropped streams included). Streams decode SSE incrementally and
//! always end with `LlmEvent::Done` or an error item. [`LlmClient::embed`] asks for
//! embeddings under the same policies.

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod assemble;
mod circuit;
mod client;
mod config;
mod config_file;
mod error;
mod events;
mod keys;
pub mod metrics;
mod retry;
mod sse;
mod trace;
mod types;
mod usage;
mod wire;

pub use assemble::CompletionBuilder;
pub use circuit::CircuitState;
pub use client::{EventStream, LlmClient};
pub use config::{LlmConfig, Price, ProviderConfig, Secret, DEFAULT_MODEL};
pub use error::LlmError;
pub use retry::parse_retry_after;
pub use types::*;
pub use usage::{UsageOutcome, UsageReport, UsageSink};
