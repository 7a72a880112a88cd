//! Developer workflows: `cargo xtask test | lint | up | down | compose | bench`.
//!
//! Small on purpose: it checks for the tools a workflow needs, says clearly
//! what is missing and how to get it, and shells out. Cluster workflows are
//! plans of commands run through a [`Runner`], so `--dry-run` prints the plan
//! and tests check it without Docker or Kubernetes.

mod plan;
mod services;
mod throwaway;

use anyhow::{bail, Context};
use clap::{Parser, Subcommand};
use plan::{DryRunner, Runner, ShellRunner};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Parser)]
#[command(about = "agentmesh developer workflows")]
struct Cli {
    /// Print the commands instead of running them (up, down, compose).
    #[arg(long, global = true)]
    dry_run: bool,
    #[command(subcommand)]
    command: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Throwaway Postgres and Redis when none answers, the Python client, every test.
    Test {
        /// Extra arguments for the test runner (a filter, for example).
        args: Vec<String>,
    },
    /// rustfmt, clippy (warnings as errors), and every Helm chart linted, rendered and validated.
    Lint,
    /// Create the kind cluster if absent, build and load the image, install the umbrella chart.
    Up,
    /// Delete the kind cluster.
    Down,
    /// docker compose up (with the mock provider) or down.
    Compose {
        #[arg(value_parser = ["up", "down"], default_value = "up")]
        action: String,
    },
    /// Criterion benchmarks (release): the gateway's overhead over a direct agent call, the
    /// LLM client's overhead per call and per streamed chunk; `--compare` also measures
    /// agentmesh against the LiteLLM proxy (scripts/compare-python-gateway.sh).
    Bench {
        /// Also run the comparison with the LiteLLM proxy (needs wrk and python3).
        #[arg(long)]
        compare: bool,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let root = workspace_root();
    std::env::set_current_dir(&root)?;
    let mut shell = ShellRunner;
    let mut dry = DryRunner;
    let runner: &mut dyn Runner = if cli.dry_run { &mut dry } else { &mut shell };
    match cli.command {
        Task::Test { args } => test(&root, &args),
        Task::Lint => lint(),
        Task::Up => plan::up(runner),
        Task::Down => plan::down(runner),
        Task::Compose { action } => plan::compose(runner, &action),
        Task::Bench { compare } => bench(compare),
    }
}

fn workspace_root() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(Path::to_path_buf).unwrap_or(manifest)
}

fn test(root: &Path, args: &[String]) -> anyhow::Result<()> {
    let tmp = root.join("target/tmp");
    let mut shell = ShellRunner;
    let mut servers = throwaway::ensure(
        &mut shell,
        &mut throwaway::RealMachine,
        &tmp,
        std::process::id(),
    )?;
    let tested = run_tests(root, args, &servers.env);
    servers.stop(&mut shell);
    tested
}

/// Builds the binaries and runs every test, pointed at the servers in `env`.
fn run_tests(root: &Path, args: &[String], env: &[(String, String)]) -> anyhow::Result<()> {
    let python = services::ensure_python_client(root)?;
    let model = services::ensure_model(root)?;
    println!("xtask: building every binary (the end-to-end tests start them)");
    run(Command::new("cargo").args(["build", "--workspace", "--bins"]))?;

    let mut command = Command::new("cargo");
    if services::has_nextest() {
        command.args(["nextest", "run", "--workspace", "--no-fail-fast"]);
    } else {
        command.args(["test", "--workspace", "--no-fail-fast"]);
    }
    command
        .args(args)
        .env("AGENTMESH_TEST_PYTHON", python)
        .env("AGENTMESH_LOCAL_MODEL", model)
        .envs(env.iter().map(|(name, value)| (name, value)));
    run(&mut command)
}

/// Every benchmark sends traffic to 127.0.0.1 only and stops by itself.
fn bench(compare: bool) -> anyhow::Result<()> {
    for package in ["agentmesh-llm", "agentmesh-gateway"] {
        println!("xtask: benchmarking {package}");
        run(Command::new("cargo").args(["bench", "-p", package]))?;
    }
    if compare {
        run(Command::new("bash").arg("scripts/compare-python-gateway.sh"))?;
    }
    Ok(())
}

fn lint() -> anyhow::Result<()> {
    run(Command::new("cargo").args(["fmt", "--all", "--", "--check"]))?;
    run(Command::new("cargo").args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run(Command::new("bash").arg("deploy/helm/check.sh"))
}

pub(crate) fn run(command: &mut Command) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start {command:?}"))?;
    if !status.success() {
        bail!("{command:?} failed with {status}");
    }
    Ok(())
}
