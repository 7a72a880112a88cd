//! Runs a small GGUF model (SmolLM2-135M-Instruct by default) in-process on the CPU.
//!
//! [`LocalModel`] speaks the LLM client's types: a [`CompletionRequest`] in, the same
//! [`LlmEvent`] stream as a remote provider out, with usage counted by the model's own
//! tokenizer. Generation runs on one dedicated thread per loaded model, one request at a
//! time, behind a bounded queue that refuses new work at once when full.
//!
//! [`CompletionRequest`]: agentmesh_llm::CompletionRequest
//! [`LlmEvent`]: agentmesh_llm::LlmEvent

#![cfg_attr(test, allow(clippy::unwrap_used, clippy::expect_used, clippy::panic))]

mod error;
mod gguf;
mod model;
mod sampling;
pub mod server;
mod stop;
mod template;
mod tokenizer;
mod worker;

use std::path::PathBuf;

pub use error::LocalError;
pub use model::LocalModel;

/// File name of the default model, as `scripts/fetch-model.sh` places it.
pub const DEFAULT_MODEL_FILE: &str = "SmolLM2-135M-Instruct.Q4_1.gguf";

/// How a model is run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalOptions {
    /// Requests that may wait while one generates; one more is refused at once.
    pub queue_capacity: usize,
    /// Seed of the sampler (request n uses seed + n); greedy decoding ignores it.
    pub seed: u64,
    /// Upper bound on prompt plus answer tokens (also capped by the model and by 4096).
    pub max_context: usize,
}

impl Default for LocalOptions {
    fn default() -> Self {
        LocalOptions {
            queue_capacity: 8,
            seed: 299_792_458,
            max_context: 4096,
        }
    }
}

impl LocalOptions {
    fn check(&self) -> Result<(), LocalError> {
        if self.max_context < 16 {
            return Err(LocalError::Options(format!(
                "max_context must be at least 16 tokens, got {}",
                self.max_context
            )));
        }
        Ok(())
    }
}

/// `AGENTMESH_LOCAL_MODEL` when set (even if the file is missing, so loading names it);
/// else the first existing file among `$AGENTMESH_DATA_DIR/models/` (default
/// `.agentmesh/models/`) and `target/models/`.
pub fn default_model_path() -> Option<PathBuf> {
    let set = |name: &str| std::env::var_os(name).filter(|value| !value.is_empty());
    if let Some(path) = set("AGENTMESH_LOCAL_MODEL") {
        return Some(PathBuf::from(path));
    }
    let data_dir = set("AGENTMESH_DATA_DIR").map_or_else(|| ".agentmesh".into(), PathBuf::from);
    [data_dir.join("models"), PathBuf::from("target/models")]
        .into_iter()
        .map(|dir| dir.join(DEFAULT_MODEL_FILE))
        .find(|path| path.is_file())
}

/// Asks candle to keep the weights as f16 instead of Q4_1 blocks: prompts are read
/// about nine times faster and tokens generated twice as fast, for ~300 MB more
/// memory. candle reads this only from the environment, so binaries call this first
/// thing in `main`, before any thread exists. `AGENTMESH_LOCAL_QUANTIZED=1` keeps
/// the quantized weights (less memory, slower).
pub fn prefer_fast_weights() {
    let keep_quantized = std::env::var_os("AGENTMESH_LOCAL_QUANTIZED").is_some();
    if !keep_quantized && std::env::var_os("CANDLE_DEQUANTIZE_ALL_F16").is_none() {
        std::env::set_var("CANDLE_DEQUANTIZE_ALL_F16", "1");
    }
}
