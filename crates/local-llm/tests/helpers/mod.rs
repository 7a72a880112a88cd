//! Finds (or fetches) the model file and loads it once per test binary.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use agentmesh_llm::{ChatMessage, CompletionRequest};
use agentmesh_local_llm::{default_model_path, LocalModel, LocalOptions, DEFAULT_MODEL_FILE};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// The model file: `default_model_path()`, else the workspace's data dir, else whatever
/// `scripts/fetch-model.sh` puts in place. Panics with the reason when none works.
pub fn model_path() -> PathBuf {
    static PATH: OnceLock<PathBuf> = OnceLock::new();
    PATH.get_or_init(|| {
        if let Some(path) = default_model_path() {
            return path;
        }
        let root = workspace_root();
        let data_dir = std::env::var_os("AGENTMESH_DATA_DIR")
            .map_or_else(|| root.join(".agentmesh"), PathBuf::from);
        let local = data_dir.join("models").join(DEFAULT_MODEL_FILE);
        if local.is_file() {
            return local;
        }
        fetch(&root)
    })
    .clone()
}

fn fetch(root: &Path) -> PathBuf {
    let output = Command::new("bash")
        .arg("scripts/fetch-model.sh")
        .current_dir(root)
        .output()
        .expect("cannot run scripts/fetch-model.sh");
    assert!(
        output.status.success(),
        "the model file is missing and scripts/fetch-model.sh failed ({}): {}\n\
         set AGENTMESH_LOCAL_MODEL to a GGUF file or run the script by hand",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = root.join(printed.lines().last().unwrap_or_default().trim());
    assert!(
        path.is_file(),
        "fetch-model.sh printed {path:?}, which is no file"
    );
    path
}

/// One model shared by the tests that only need answers (they queue behind each other).
pub fn shared_model() -> LocalModel {
    static MODEL: OnceLock<LocalModel> = OnceLock::new();
    MODEL
        .get_or_init(|| fresh_model(LocalOptions::default()))
        .clone()
}

/// A model of its own, for tests that watch the queue.
pub fn fresh_model(options: LocalOptions) -> LocalModel {
    let path = model_path();
    LocalModel::load(&path, options).unwrap_or_else(|err| panic!("loading {path:?}: {err}"))
}

pub fn ask(question: &str, max_tokens: u32) -> CompletionRequest {
    CompletionRequest {
        messages: vec![ChatMessage::new("user", question)],
        max_tokens: Some(max_tokens),
        ..CompletionRequest::default()
    }
}
