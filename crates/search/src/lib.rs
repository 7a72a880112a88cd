//! The search agent: document ingestion, full-text ranking, cited answers.

pub mod chunk;
pub mod front_matter;
