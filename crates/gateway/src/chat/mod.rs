//! Chat completions: request validation and answer assembly.

pub mod answer;
pub mod validate;
