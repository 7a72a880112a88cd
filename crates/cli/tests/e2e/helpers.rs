//! Starting the system for end-to-end tests: in one process, or as separate processes.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn shared_data() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let from_env = std::env::var("AGENTMESH_SHARED_DATA").map(PathBuf::from);
    from_env.unwrap_or_else(|_| manifest.join("../../../shared/data"))
}

pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// A binary of the workspace, built by `cargo xtask test` (or `cargo build --bins`).
pub fn workspace_bin(name: &str) -> PathBuf {
    let cli = PathBuf::from(env!("CARGO_BIN_EXE_agentmesh"));
    let path = cli.with_file_name(name);
    assert!(
        path.exists(),
        "{} is missing: build every binary first (`cargo build --workspace --bins`)",
        path.display()
    );
    path
}

pub fn free_addr() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
    listener.local_addr().expect("addr")
}

/// Child processes killed when dropped, so a failing test leaves none behind.
#[derive(Default)]
pub struct Processes {
    children: Vec<(String, Child)>,
}

impl Processes {
    pub fn spawn(&mut self, name: &str, mut command: Command, log_dir: &Path) {
        let log = std::fs::File::create(log_dir.join(format!("{name}.log"))).expect("log");
        let child = command
            .stdout(Stdio::from(log.try_clone().expect("log")))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.children.push((name.to_string(), child));
    }

    /// Fails with the process's log when it exited early.
    pub fn check_alive(&mut self, log_dir: &Path) {
        for (name, child) in &mut self.children {
            if let Ok(Some(status)) = child.try_wait() {
                let log = std::fs::read_to_string(log_dir.join(format!("{name}.log")))
                    .unwrap_or_default();
                panic!("{name} exited with {status}:\n{log}");
            }
        }
    }
}

impl Drop for Processes {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Polls until `url` answers 200 or the deadline passes.
pub async fn wait_ready(url: &str, timeout: Duration) -> bool {
    let client = reqwest::Client::new();
    let start = Instant::now();
    while start.elapsed() < timeout {
        if let Ok(response) = client.get(url).send().await {
            if response.status().is_success() {
                return true;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    false
}

/// Runs the `agentmesh` CLI against a gateway and returns its stdout.
pub fn cli(base: &str, key: &str, args: &[&str]) -> String {
    let output = Command::new(env!("CARGO_BIN_EXE_agentmesh"))
        .args(args)
        .env("AGENTMESH_URL", base)
        .env("AGENTMESH_API_KEY", key)
        .output()
        .expect("run agentmesh");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "agentmesh {args:?} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    stdout
}

/// The Python interpreter that has the official `openai` package.
pub fn python() -> String {
    let python = std::env::var("AGENTMESH_TEST_PYTHON").unwrap_or_else(|_| "python3".into());
    let ok = Command::new(&python)
        .args(["-c", "import openai"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "{python} cannot import openai: run the tests with `cargo xtask test`"
    );
    python
}

/// The local model file: AGENTMESH_LOCAL_MODEL, or fetched by scripts/fetch-model.sh
/// (which `cargo xtask test` runs first).
pub fn local_model() -> PathBuf {
    if let Some(path) = std::env::var_os("AGENTMESH_LOCAL_MODEL") {
        return PathBuf::from(path);
    }
    let output = Command::new("bash")
        .arg(repo_root().join("scripts/fetch-model.sh"))
        .current_dir(repo_root())
        .output()
        .expect("run scripts/fetch-model.sh");
    assert!(output.status.success(), "fetch-model.sh failed: {output:?}");
    let printed = String::from_utf8_lossy(&output.stdout);
    let path = repo_root().join(printed.lines().last().unwrap_or("").trim());
    assert!(
        path.is_file(),
        "fetch-model.sh printed no model path: {printed}"
    );
    path
}

/// `agentmesh up` options for a test: embedded state in `dir`, the mock provider.
pub fn mock_options(dir: &Path) -> agentmesh_cli::UpOptions {
    agentmesh_cli::UpOptions {
        listen: "127.0.0.1:0".parse().expect("addr"),
        data_dir: dir.to_path_buf(),
        database_url: None,
        redis_url: None,
        redis_prefix: "unused:".into(),
        llm: "mock".into(),
        mock_script: None,
        quiet: true,
    }
}
