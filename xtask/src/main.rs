//! Developer workflows: `cargo xtask test | lint | up | down | compose`.
//!
//! Small on purpose: it checks for the tools a workflow needs, says clearly
//! what is missing, and shells out.

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[derive(Parser)]
#[command(about = "agentmesh developer workflows")]
struct Cli {
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Start Postgres and Redis if needed, set up the Python client, run every test.
    Test {
        /// Extra arguments for the test runner (a filter, for example).
        args: Vec<String>,
    },
    /// rustfmt and clippy, warnings as errors.
    Lint,
    /// Create a kind cluster, build and load the images, install the umbrella chart.
    Up,
    /// Delete the kind cluster.
    Down,
    /// Build the images and start everything with docker compose.
    Compose,
}

fn main() -> anyhow::Result<()> {
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    match Cli::parse().command {
        Task::Test { args } => test(&root, &args),
        Task::Lint => lint(),
        Task::Up => kind_up(),
        Task::Down => {
            need("kind", "https://kind.sigs.k8s.io/docs/user/quick-start/#installation")?;
            run(Command::new("kind").args(["delete", "cluster", "--name", "agentmesh"]))
        }
        Task::Compose => {
            need("docker", "a Docker engine with the compose plugin")?;
            run(Command::new("docker").args(["compose", "--profile", "mock", "up", "--build", "-d"]))
        }
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    ensure_postgres()?;
    ensure_redis()?;
    let python = ensure_python_client(root)?;
    println!("xtask: building every binary (the end-to-end tests start them)");
    run(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;

    let mut command = if has("cargo-nextest") {
        let mut c = Command::new("cargo");
        c.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
        c
    } else {
        let mut c = Command::new("cargo");
        c.args(["test", "--workspace", "--no-fail-fast"]);
        c
    };
    command.args(args).env("AGENTMESH_TEST_PYTHON", python);
    run(&mut command)
}

fn lint() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy", "--workspace", "--all-targets", "--", "-D", "warnings",
    ]))
}

fn kind_up() -> anyhow::Result<()> {
    need("docker", "a Docker engine (kind runs Kubernetes in containers)")?;
    need("kind", "https://kind.sigs.k8s.io/docs/user/quick-start/#installation")?;
    need("helm", "https://helm.sh/docs/intro/install/")?;
    need("kubectl", "https://kubernetes.io/docs/tasks/tools/")?;
    run(Command::new("kind").args([
        "create", "cluster", "--name", "agentmesh", "--config", "deploy/kind/cluster.yaml",
    ]))?;
    run(Command::new("docker").args([
        "build", "-f", "deploy/docker/Dockerfile", "-t", "agentmesh:dev", ".",
    ]))?;
    run(Command::new("kind").args(["load", "docker-image", "agentmesh:dev", "--name", "agentmesh"]))?;
    run(Command::new("helm").args(["dependency", "update", "deploy/helm/agentmesh"]))?;
    run(Command::new("helm").args([
        "upgrade", "--install", "agentmesh", "deploy/helm/agentmesh", "--wait",
        "--set", "global.image.tag=dev",
    ]))
}

/// Postgres on 127.0.0.1:5432, started from the Debian cluster when it is down.
fn ensure_postgres() -> anyhow::Result<()> {
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
fn ensure_redis() -> anyhow::Result<()> {
    if std::env::var("AGENTMESH_TEST_REDIS_URL").is_ok() || reachable(6379) {
        return Ok(());
    }
    println!("xtask: Redis is not reachable on 127.0.0.1:6379, starting it");
    need("redis-server", "apt-get install redis-server")?;
    run(Command::new("redis-server").args([
        "--daemonize", "yes", "--bind", "127.0.0.1", "--port", "6379", "--save", "",
        "--appendonly", "no",
    ]))?;
    wait_for(6379, "Redis")
}

/// A virtualenv under target/ with the official `openai` package, for the
/// acceptance tests that drive the gateway the way users do.
fn ensure_python_client(root: &Path) -> anyhow::Result<PathBuf> {
    let venv = root.join("target/pyenv");
    let python = venv.join("bin/python");
    let ready = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    if ready {
        return Ok(python);
    }
    println!("xtask: installing the openai Python package into {}", venv.display());
    need("python3", "apt-get install python3 python3-venv")?;
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python).args(["-m", "pip", "install", "--quiet", "openai>=1.40"]))?;
    Ok(python)
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

fn has(tool: &str) -> bool {
    Command::new(tool).arg("--version").output().is_ok()
        || (tool == "cargo-nextest"
            && Command::new("cargo").args(["nextest", "--version"]).output()
                .is_ok_and(|o| o.status.success()))
}

fn need(tool: &str, how: &str) -> anyhow::Result<()> {
    if Command::new("sh").arg("-c").arg(format!("command -v {tool}")).output()
        .is_ok_and(|o| o.status.success())
    {
        return Ok(());
    }
    bail!("`{tool}` is not installed; install {how}")
}

fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command.status().with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
