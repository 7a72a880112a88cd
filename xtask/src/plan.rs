//! Cluster workflows as plans of commands, run by a [`Runner`].

use anyhow::{bail, Context};
use std::process::Command;

/// The kind cluster's name.
pub const CLUSTER: &str = "agentmesh";
/// The image every chart runs, built locally and loaded into kind.
pub const IMAGE: &str = "agentmesh:dev";

/// A program and its arguments.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmd {
    pub program: String,
    pub args: Vec<String>,
}

impl Cmd {
    pub fn new(program: &str, args: &[&str]) -> Self {
        Self {
            program: program.into(),
            args: args.iter().map(|a| a.to_string()).collect(),
        }
    }
}

impl std::fmt::Display for Cmd {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.program, self.args.join(" "))
    }
}

pub trait Runner {
    /// Whether `tool` is on the PATH.
    fn has(&mut self, tool: &str) -> bool;
    /// Runs to completion; fails on a non-zero exit.
    fn run(&mut self, cmd: &Cmd) -> anyhow::Result<()>;
    /// Runs and returns standard output.
    fn output(&mut self, cmd: &Cmd) -> anyhow::Result<String>;
}

/// Runs commands for real.
pub struct ShellRunner;

impl Runner for ShellRunner {
    fn has(&mut self, tool: &str) -> bool {
        Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .is_ok_and(|o| o.status.success())
    }

    fn run(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        println!("xtask: {cmd}");
        crate::run(Command::new(&cmd.program).args(&cmd.args))
    }

    fn output(&mut self, cmd: &Cmd) -> anyhow::Result<String> {
        let out = Command::new(&cmd.program)
            .args(&cmd.args)
            .output()
            .with_context(|| format!("cannot start {cmd}"))?;
        if !out.status.success() {
            bail!(
                "{cmd} failed: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// Prints the plan; assumes every tool is present and no cluster exists yet.
#[derive(Default)]
pub struct DryRunner;

impl Runner for DryRunner {
    fn has(&mut self, _tool: &str) -> bool {
        true
    }

    fn run(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
        println!("{cmd}");
        Ok(())
    }

    fn output(&mut self, cmd: &Cmd) -> anyhow::Result<String> {
        println!("{cmd}");
        Ok(String::new())
    }
}

/// Where each tool comes from, for the message when it is missing.
const TOOLS: &[(&str, &str)] = &[
    (
        "docker",
        "a Docker engine: https://docs.docker.com/engine/install/",
    ),
    (
        "kind",
        "https://kind.sigs.k8s.io/docs/user/quick-start/#installation",
    ),
    ("kubectl", "https://kubernetes.io/docs/tasks/tools/"),
    ("helm", "Helm 3: https://helm.sh/docs/intro/install/"),
];

/// Fails naming every missing tool and where to get it.
pub fn require(runner: &mut dyn Runner, tools: &[&str]) -> anyhow::Result<()> {
    let missing: Vec<String> = TOOLS
        .iter()
        .filter(|(tool, _)| tools.contains(tool) && !runner.has(tool))
        .map(|(tool, how)| format!("  {tool}: {how}"))
        .collect();
    if !missing.is_empty() {
        bail!("missing tools:\n{}", missing.join("\n"));
    }
    Ok(())
}

pub fn up(runner: &mut dyn Runner) -> anyhow::Result<()> {
    require(runner, &["docker", "kind", "kubectl", "helm"])?;
    let clusters = runner.output(&Cmd::new("kind", &["get", "clusters"]))?;
    if !clusters.lines().any(|c| c.trim() == CLUSTER) {
        runner.run(&Cmd::new(
            "kind",
            &[
                "create",
                "cluster",
                "--name",
                CLUSTER,
                "--config",
                "deploy/kind/cluster.yaml",
            ],
        ))?;
    }
    runner.run(&Cmd::new(
        "docker",
        &["build", "-f", "deploy/docker/Dockerfile", "-t", IMAGE, "."],
    ))?;
    runner.run(&Cmd::new(
        "kind",
        &["load", "docker-image", IMAGE, "--name", CLUSTER],
    ))?;
    runner.run(&Cmd::new(
        "helm",
        &["dependency", "update", "deploy/helm/agentmesh"],
    ))?;
    runner.run(&Cmd::new(
        "helm",
        &[
            "upgrade",
            "--install",
            "agentmesh",
            "deploy/helm/agentmesh",
            "--wait",
            "--timeout",
            "10m",
            "--kube-context",
            "kind-agentmesh",
        ],
    ))?;
    runner.run(&Cmd::new(
        "kubectl",
        &[
            "--context",
            "kind-agentmesh",
            "rollout",
            "status",
            "deploy/agentmesh-gateway",
            "--timeout",
            "5m",
        ],
    ))?;
    let key = runner.output(&Cmd::new(
        "kubectl",
        &[
            "--context",
            "kind-agentmesh",
            "get",
            "secret",
            "agentmesh-gateway-admin",
            "-o",
            "go-template={{index .data \"admin-key\" | base64decode}}",
        ],
    ))?;
    println!("agentmesh is up: http://127.0.0.1:8080 (OpenAI base URL http://127.0.0.1:8080/v1)");
    println!(
        "admin key (base64): {}  -> decode with: base64 -d",
        key.trim()
    );
    Ok(())
}

pub fn down(runner: &mut dyn Runner) -> anyhow::Result<()> {
    require(runner, &["kind"])?;
    runner.run(&Cmd::new("kind", &["delete", "cluster", "--name", CLUSTER]))
}

pub fn compose(runner: &mut dyn Runner, action: &str) -> anyhow::Result<()> {
    require(runner, &["docker"])?;
    match action {
        "down" => runner.run(&Cmd::new(
            "docker",
            &["compose", "--profile", "mock", "down"],
        )),
        _ => runner.run(&Cmd::new(
            "docker",
            &[
                "compose",
                "--profile",
                "mock",
                "up",
                "--build",
                "--detach",
                "--wait",
            ],
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Records commands; tools listed in `missing` are absent; `kind get clusters`
    /// answers `clusters`.
    #[derive(Default)]
    struct FakeRunner {
        missing: Vec<&'static str>,
        clusters: String,
        ran: Vec<String>,
    }

    impl Runner for FakeRunner {
        fn has(&mut self, tool: &str) -> bool {
            !self.missing.contains(&tool)
        }

        fn run(&mut self, cmd: &Cmd) -> anyhow::Result<()> {
            self.ran.push(cmd.to_string());
            Ok(())
        }

        fn output(&mut self, cmd: &Cmd) -> anyhow::Result<String> {
            self.ran.push(cmd.to_string());
            Ok(if cmd.args == ["get", "clusters"] {
                self.clusters.clone()
            } else {
                String::new()
            })
        }
    }

    fn programs_and_verbs(ran: &[String]) -> Vec<String> {
        ran.iter()
            .map(|c| c.split(' ').take(2).collect::<Vec<_>>().join(" "))
            .collect()
    }

    #[test]
    fn up_creates_the_cluster_then_builds_loads_and_installs_in_order() {
        let mut runner = FakeRunner::default();
        up(&mut runner).unwrap();
        assert_eq!(
            programs_and_verbs(&runner.ran),
            [
                "kind get",
                "kind create",
                "docker build",
                "kind load",
                "helm dependency",
                "helm upgrade",
                "kubectl --context",
                "kubectl --context",
            ]
        );
        assert!(runner.ran[1].contains("--config deploy/kind/cluster.yaml"));
        assert!(runner.ran[5].contains("--install agentmesh deploy/helm/agentmesh --wait"));
    }

    #[test]
    fn up_reuses_an_existing_cluster() {
        let mut runner = FakeRunner {
            clusters: "other\nagentmesh\n".into(),
            ..Default::default()
        };
        up(&mut runner).unwrap();
        assert!(
            !runner.ran.iter().any(|c| c.starts_with("kind create")),
            "{:?}",
            runner.ran
        );
    }

    #[test]
    fn missing_tools_are_named_with_where_to_get_them_and_nothing_runs() {
        let mut runner = FakeRunner {
            missing: vec!["kind", "helm"],
            ..Default::default()
        };
        let err = up(&mut runner).unwrap_err().to_string();
        assert!(err.contains("kind: https://kind.sigs.k8s.io"), "{err}");
        assert!(err.contains("helm: Helm 3"), "{err}");
        assert!(!err.contains("docker:"), "{err}");
        assert!(runner.ran.is_empty(), "{:?}", runner.ran);
    }

    #[test]
    fn compose_and_down_plans() {
        let mut runner = FakeRunner::default();
        compose(&mut runner, "up").unwrap();
        compose(&mut runner, "down").unwrap();
        down(&mut runner).unwrap();
        assert!(runner.ran[0].starts_with("docker compose --profile mock up"));
        assert_eq!(runner.ran[1], "docker compose --profile mock down");
        assert_eq!(runner.ran[2], "kind delete cluster --name agentmesh");
    }
}
