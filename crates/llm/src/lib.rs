//! OpenAI-compatible LLM client shared by every agent.

mod types;

pub use types::*;
