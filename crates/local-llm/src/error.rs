//! Why a local model could not be loaded.

use std::path::PathBuf;

/// A load-time failure; every variant names the file so an operator knows what to fix.
#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "local model file {} does not exist (run scripts/fetch-model.sh or set \
         AGENTMESH_LOCAL_MODEL)",
        .path.display()
    )]
    NotFound { path: PathBuf },

    #[error("cannot read local model file {}: {source}", .path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{} is not a GGUF file (it does not start with the GGUF magic)", .path.display())]
    NotGguf { path: PathBuf },

    #[error("{} is a damaged or unreadable GGUF file: {message}", .path.display())]
    InvalidGguf { path: PathBuf, message: String },

    #[error(
        "{}: architecture {architecture:?} is not supported (only llama-architecture models)",
        .path.display()
    )]
    UnsupportedArchitecture { path: PathBuf, architecture: String },

    #[error("{}: unsupported quantization: {message}", .path.display())]
    UnsupportedQuantization { path: PathBuf, message: String },

    #[error("{}: cannot build the tokenizer from the GGUF metadata: {message}", .path.display())]
    Tokenizer { path: PathBuf, message: String },

    #[error("{}: unsupported chat template: {message}", .path.display())]
    ChatTemplate { path: PathBuf, message: String },

    #[error("{}: cannot load the model weights: {message}", .path.display())]
    Weights { path: PathBuf, message: String },

    #[error("invalid local model options: {0}")]
    Options(String),

    #[error("cannot start the generation thread: {0}")]
    Thread(std::io::Error),

    #[error("cannot tokenize text: {0}")]
    Encode(String),
}
